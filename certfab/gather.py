"""Reading hosts: facts, nginx's files, the no-change stamp, certificates for the report.

The I/O half of certfab.facts and certfab.stamp: every function here runs remote scripts through
the seam (certfab.remote); what they parse and decide is pure and lives there.
"""

from __future__ import annotations

import posixpath
from datetime import datetime
from typing import TYPE_CHECKING, Any

from certfab import includes
from certfab.errors import CertfabError, RemoteError
from certfab.facts import (
    FACTS_SCRIPT,
    MAX_INCLUDE_ROUNDS,
    NGINX_FILES_SCRIPT,
    REPORT_SCRIPT,
    ConfigFile,
    HostFacts,
    facts_context,
    parse_facts,
    report_context,
    take_file_frames,
)
from certfab.inventory import Inventory
from certfab.paths import STATE_DIR
from certfab.protocol import Reply
from certfab.remote import Remote

if TYPE_CHECKING:  # what the pipelines return; loaded when they run (the report needs no stamp)
    from certfab.fleet import HostSession
    from certfab.report import CertRecord
    from certfab.stamp import Observed, Unchanged


def read_nginx_files(remote: Remote, reply: Reply) -> tuple[dict[str, ConfigFile], dict[str, str]]:
    """Every file nginx loads, from the main file the facts read, one include level per command.

    Returns the files read and those refused (path: why). Only paths that `include` directives of
    files already read name are asked for; key files and key locations are refused on the host and
    dropped again here.
    """
    files: dict[str, ConfigFile] = {}
    refused: dict[str, str] = {}
    expanded: dict[str, tuple[str, ...]] = {}
    main = reply.text("nginx-conf")
    if not main:
        return files, refused
    conf_prefix = posixpath.dirname(main)
    current = reply
    for _ in range(MAX_INCLUDE_ROUNDS):
        take_file_frames(current, files, refused, expanded)
        found = includes.scan({p: f.text for p, f in files.items()}, main, conf_prefix, expanded)
        for path, f in list(files.items()):
            if includes.is_key_file(path, found) or includes.is_key_file(f.real_path, found):
                del files[path]
                refused[path] = "is a private key location"
        if not found.patterns:
            break
        current = remote.check_script(
            NGINX_FILES_SCRIPT, what="reading nginx files", patterns=list(found.patterns),
            key_paths=list(found.key_paths), key_dirs=list(found.key_dirs),
        )
    return files, refused


def _complete(reply: Reply, what: str, host: str) -> Reply:
    if not reply.has("done") and not reply.has("unchanged"):
        raise RemoteError(f"{host}: {what}: the answer is incomplete (exit {reply.exited}): {reply.last_error_line()}")
    return reply


def gather(remote: Remote, *, nginx: bool = True) -> HostFacts:
    """Read a host's facts: one command, plus one per include level of its nginx configuration."""
    reply = _complete(remote.script(FACTS_SCRIPT, what="reading facts", context=facts_context(remote.host, nginx=nginx)),
                      "reading facts", remote.host.name)
    files, refused = read_nginx_files(remote, reply) if nginx else ({}, {})
    return parse_facts(remote.host.name, reply, files, refused)


def gather_for_report(remote: Remote) -> HostFacts:
    """Read what the expiry report needs with exactly one remote command."""
    reply = _complete(remote.script(REPORT_SCRIPT, what="reading certificates", context=report_context()),
                      "reading certificates", remote.host.name)
    return parse_facts(remote.host.name, reply)


def read_host(remote: Remote, *, key: str | None, now: datetime) -> Unchanged | Observed:
    """Unchanged (one command) if the stamp for `key` holds, else every fact (key None: always)."""
    from certfab.stamp import parse_probe, probe_context

    reply = remote.script(FACTS_SCRIPT, what="reading facts", context=probe_context(remote.host, key=key, now=now))
    if not reply.has("unchanged") and not reply.has("done"):
        raise RemoteError(f"{remote.host.name}: reading facts: the answer is incomplete "
                          f"(exit {reply.exited}): {reply.last_error_line()}")
    if reply.has("unchanged"):
        return parse_probe(remote.host.name, reply)
    files, refused = read_nginx_files(remote, reply)
    return parse_probe(remote.host.name, reply, files, refused)


def write_stamp(remote: Remote, *, key: str, observed: Observed, warnings: list[str], now: datetime) -> bool:
    """Record that the host was found in its desired state (one remote command); False if not possible."""
    from certfab.stamp import STAMP_FILE, STAMP_SCRIPT, stamp_to_write

    stamp = stamp_to_write(remote.host, key=key, observed=observed, warnings=warnings, now=now)
    if stamp is None:
        return False
    text, complete = stamp
    try:
        remote.check_script(STAMP_SCRIPT, what="recording the host's state", state_dir=STATE_DIR,
                            stamp_file=STAMP_FILE, text=text)
    except CertfabError:
        return False  # the run's result stands; the next run simply reads every fact again
    return complete


def stamp_if_converged(
    remote: Remote, inventory: Inventory, *, key: str, acme_ca_pem: str | None, now: datetime
) -> bool:
    """After a run that changed the host: read it again and stamp it only if nothing is left to do."""
    from certfab.desired import changed_writes, decide_certificate, desired_state, preflight
    from certfab.shared import role_of
    from certfab.stamp import Observed

    try:
        observed = read_host(remote, key=None, now=now)
        assert isinstance(observed, Observed)
        warnings = preflight(remote.host, observed.facts)
    except CertfabError:
        return False
    host, facts = remote.host, observed.facts
    if facts.journal.strip():
        return False
    if any(decide_certificate(site, facts, now, inventory.acme, role=role_of(inventory, host, site)).needs_order
           for site in host.sites):
        return False
    desired = desired_state(host, inventory, facts, https_sites=frozenset(s.name for s in host.sites),
                            acme_ca_pem=acme_ca_pem)
    if changed_writes(desired, facts):
        return False
    return write_stamp(remote, key=key, observed=observed, warnings=warnings, now=now)


def host_records(session: HostSession, *, timeout: float = 10.0) -> list[CertRecord]:
    """One record per certificate lineage on the host, with what each of its names serves."""
    from certfab.certcache import parse_pem
    from certfab.certs import CertificateError
    from certfab.expiry import cron_present
    from certfab.report import CertRecord
    from certfab.tlsprobe import ServedProbes

    host = session.host
    # The handshakes for the inventory's names run while the host is read over SSH.
    probes = ServedProbes(host.address, host.domains, timeout=timeout)
    session.step("reading certificates")
    facts = gather_for_report(session.remote)
    session.step("fetching served certificates")
    records = []
    seen = set()
    # certbot's lineages, then the copies of shared sites (a peer's, or an issuer's with no lineage yet).
    certificates = {name: lineage.cert_pem for name, lineage in facts.lineages.items()}
    certificates.update({name: pem for name, pem in facts.shared_copies.items() if name not in certificates})
    for name, pem in certificates.items():
        seen.add(name)
        try:
            disk = parse_pem(pem)
        except CertificateError as exc:
            records.append(CertRecord(host.name, name, unreachable_error=f"{name}: unreadable certificate: {exc}"))
            continue
        served = {}
        for domain in disk.names:
            result = probes.get(domain)
            served[domain] = result if result.ok else (result.error or "no certificate served")
        records.append(CertRecord(host.name, name, tuple(disk.names), disk, served, facts.status, cron_present(facts),
                                  copy=name not in facts.lineages))
    for name, why in facts.refused_certs.items():
        if name not in seen:
            seen.add(name)
            records.append(CertRecord(host.name, name, unreachable_error=f"{name}: certificate not read: {why}"))
    for site in host.sites:
        if site.name not in seen:
            records.append(CertRecord(host.name, site.name, site.domains, None, {}, facts.status, cron_present(facts)))
    return records




def read_facts(session: HostSession) -> dict[str, Any]:
    """The facts pipeline for one host: one remote command, summarised for people and programs."""
    from certfab.facts_view import facts_summary

    session.step("reading facts")
    return facts_summary(gather(session.remote), session.host)
