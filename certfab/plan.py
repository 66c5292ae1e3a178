"""A host's plan as a value: the file writes and certificate decisions that take it from its facts
to its desired state, and why. Pure: no SSH, no I/O; the executor (certfab.bootstrap) carries it out.

A plan has two stages, because HTTPS configuration can only point at certificates that exist:
`plumbing` (ACME challenge include, renewal job, TLS settings, and HTTPS for sites whose certificate
is already valid) and `https` (the HTTPS switch of the sites whose certificates are to be ordered).
"""

from __future__ import annotations

import difflib
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from certfab import paths
from certfab.acmedir import AcmeDirectory, check_profiles
from certfab.desired import (
    CertAction,
    CertCause,
    changed_writes,
    current_files,
    decide_certificate,
    desired_state,
    preflight,
    renewal_conf_write,
    updated_facts_files,
)
from certfab.errors import PreflightError
from certfab.facts import HostFacts
from certfab.inventory import Host, Inventory
from certfab.nginxconf import NginxConfError
from certfab.shared import acme_include_path, role_of
from certfab.tls import managed_site_path, site_include_path
from certfab.transaction import FileWrite, expect_as_read

Stage = Literal["plumbing", "https"]
FileKind = Literal["create", "update", "remove"]


@dataclass(frozen=True)
class FileChange:
    """One file the plan writes: what it holds now (None: absent), what it will hold, and why."""

    path: str
    before: str | None
    after: str
    why: str
    stage: Stage
    # A secret (DNS plugin credentials): before and after hold no content, and the diff says so.
    secret: bool = False
    # The file goes (after is empty).
    removed: bool = False

    @property
    def kind(self) -> FileKind:
        return "remove" if self.removed else "create" if self.before is None else "update"

    @property
    def diff(self) -> str:
        """A unified diff from the host's file to the planned one (raw: tabs and long lines kept)."""
        if self.secret:
            verb = "removed" if self.removed else "created" if self.before is None else "replaced"
            where = "" if self.removed else " (root, 0600)"
            return f"certfab: {self.path}: secret, {verb}{where}; its content is never shown\n"
        return "".join(difflib.unified_diff(
            (self.before or "").splitlines(keepends=True), self.after.splitlines(keepends=True),
            fromfile=self.path if self.before is not None else "/dev/null",
            tofile="/dev/null" if self.removed else self.path,
        ))

    def describe(self) -> str:
        return f"{'removed' if self.removed else 'created' if self.before is None else 'updated'} {self.path}"


@dataclass(frozen=True)
class CertificateDecision:
    """Keep a site's certificate, or order one, and why."""

    site: str
    domains: tuple[str, ...]
    action: CertAction
    cause: CertCause
    reason: str

    @property
    def needs_order(self) -> bool:
        return self.action not in ("keep", "await")

    @property
    def ready(self) -> bool:
        """The site has a certificate to serve now (kept, or a valid copy of a shared one)."""
        return self.action == "keep"

    @property
    def forced(self) -> bool:
        """A renewal of a certificate that is still there asks certbot to replace it."""
        return self.action == "renew"

    def describe(self) -> str:
        if self.action == "await":
            return f"waits for the shared certificate of {self.site}: {self.reason}"
        return f"would request a certificate for {self.site} ({', '.join(self.domains)}): {self.reason}"


@dataclass(frozen=True)
class Plan:
    """Everything a bootstrap of one host would do. Empty means nothing to do, and `why_empty` says why."""

    host: str
    files: tuple[FileChange, ...]
    certificates: tuple[CertificateDecision, ...]
    warnings: tuple[str, ...]
    # An earlier run was cut off mid-apply: the executor first rolls it back (or finishes its commit).
    recovers_unfinished_run: bool
    # For the executor: the first transaction's writes (each expecting the file as the facts saw it),
    # and the facts as they will be once it is applied.
    plumbing_writes: tuple[FileWrite, ...]
    https_writes: tuple[FileWrite, ...]
    facts_after_plumbing: HostFacts
    # Shared sites this host issues whose orders wait until every backend has its ACME location
    # (deploy-all orders them in a second pass).
    held: frozenset[str] = frozenset()
    # Per site, request paths into locations with headers of their own: verify checks HSTS there too.
    probe_paths: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def orders(self) -> tuple[CertificateDecision, ...]:
        return tuple(c for c in self.certificates if c.needs_order and c.site not in self.held)

    @property
    def held_orders(self) -> tuple[CertificateDecision, ...]:
        return tuple(c for c in self.certificates if c.needs_order and c.site in self.held)

    @property
    def ready_sites(self) -> frozenset[str]:
        """Sites whose certificates are kept: they go to HTTPS in the first transaction."""
        return frozenset(c.site for c in self.certificates if c.ready)

    @property
    def empty(self) -> bool:
        return not self.files and not self.orders and not self.recovers_unfinished_run

    @property
    def why_empty(self) -> str:
        if not self.empty:
            return ""
        kept = "; ".join(f"{c.site}: {c.reason}" for c in self.certificates) or "no sites"
        return f"every file is as desired and no certificate needs ordering ({kept})"

    def describe(self) -> list[str]:
        """One line per change, as the recap and --check show them."""
        lines = [change.describe() for change in self.files]
        return lines + [order.describe() for order in self.orders]

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "empty": self.empty,
            "why_empty": self.why_empty or None,
            "recovers_unfinished_run": self.recovers_unfinished_run,
            "files": [
                {"path": f.path, "kind": f.kind, "stage": f.stage, "why": f.why, "diff": f.diff}
                for f in self.files
            ],
            "certificates": [
                {"site": c.site, "domains": list(c.domains), "action": c.action, "cause": c.cause,
                 "reason": c.reason}
                for c in self.certificates
            ],
            "warnings": list(self.warnings),
        }


def purpose(path: str, host: Host, nginx_files: frozenset[str]) -> str:
    """Why certfab writes a file, in words."""
    fixed = {
        paths.ACME_INCLUDE: "ACME challenge location for every port-80 site",
        paths.TLS_OPTIONS: "TLS settings of the HTTPS server blocks",
        paths.ACME_CA: "CA bundle of the ACME server, for certbot",
        paths.RENEW_ENV: "settings of the renewal job",
        paths.RENEW_SCRIPT: "renewal script (certbot renew, nginx -t, reload, mail)",
        paths.CRON_FILE: "renewal cron job",
        paths.HSTS_INCLUDE: "HSTS header for locations that set headers of their own",
    }
    if path in fixed:
        return fixed[path]
    if host.dns01 is not None and path == paths.dns_credentials_path(host.dns01.plugin):
        return f"credentials of certbot's {host.dns01.plugin} DNS plugin, for DNS-01 (root only)"
    for site in host.sites:
        if path == acme_include_path(site.name):
            return f"ACME challenge location of shared site {site.name}"
        if path == site_include_path(site.name):
            return f"HTTPS settings of site {site.name} (certificate, HSTS)"
        if path == managed_site_path(site.name):
            return f"server blocks of managed site {site.name}"
        if path == paths.renewal_conf(site.name):
            return f"certbot's renewal settings of {site.name} (renewal margin from the certificate's lifetime)"
    if posixpath.basename(path).startswith("ffdhe"):
        return "Diffie-Hellman group for the TLS settings"
    if path in nginx_files:
        return "site file: ACME include, HTTPS server block and redirect (minimal edit)"
    return "file managed by certfab"


def make_plan(host: Host, inventory: Inventory, facts: HostFacts, *, now: datetime,
              acme_ca_pem: str | None, directory: AcmeDirectory | None = None,
              hold: frozenset[str] = frozenset()) -> Plan:
    """The plan for one host from its facts. Raises PreflightError when the host cannot be handled.

    Every edit up to full HTTPS is computed here, before a file is written or a certificate ordered:
    a site whose HTTPS conversion is impossible is refused now, not after an order.
    """
    warnings = list(preflight(host, facts))
    # Before any change: a required profile the CA lacks stops the host here.
    warnings += check_profiles(host, directory)
    warnings += [
        f"{host.name}: site {s.name} is shared and issued by another host, but certbot here still renews a lineage "
        f"of that name ({paths.renewal_conf(s.name)}): two hosts would renew it; delete it here (certbot delete "
        f"--cert-name {s.name})"
        for s in host.sites if role_of(inventory, host, s) == "peer" and s.name in facts.lineages
    ]
    recover = bool(facts.journal.strip())
    if recover:
        warnings.insert(0, f"{host.name}: an unfinished earlier run will be rolled back first")
    decisions = {s.name: decide_certificate(s, facts, now, inventory.acme, role=role_of(inventory, host, s))
                 for s in host.sites}
    ready = frozenset(name for name, d in decisions.items() if d.ready)
    before = current_files(facts)
    try:
        plumbing = expect_as_read(
            changed_writes(desired_state(host, inventory, facts, https_sites=ready, acme_ca_pem=acme_ca_pem), facts),
            before, facts.secret_files,
        )
        # Lineages kept now get their renewal margin here; new ones once certbot has written their file.
        for name in sorted(ready):
            lineage = facts.lineages.get(name)
            conf = renewal_conf_write(name, lineage.cert_pem, lineage.renewal_conf) if lineage else None
            if conf is not None:
                plumbing.append(conf)
                before[conf.path] = lineage.renewal_conf if lineage else ""
        after_plumbing = updated_facts_files(facts, plumbing)
        full = desired_state(host, inventory, after_plumbing, https_sites=frozenset(s.name for s in host.sites),
                             acme_ca_pem=acme_ca_pem)
        https = expect_as_read(changed_writes(full, after_plumbing), current_files(after_plumbing),
                               after_plumbing.secret_files)
    except NginxConfError as exc:
        raise PreflightError(f"{host.name}: {exc}") from None
    nginx_files = frozenset(facts.nginx.files) if facts.nginx is not None else frozenset()
    changes: dict[str, FileChange] = {}
    stages: list[tuple[Stage, list[FileWrite]]] = [("plumbing", plumbing), ("https", https)]
    for stage, writes in stages:
        for write in writes:
            # A file both stages write shows once: as it is now, and as it ends.
            first = changes.get(write.path)
            if write.secret:
                existed = "" if write.path in facts.secret_files else None
                why = ("DNS plugin credentials nothing here uses any more" if write.remove
                       else purpose(write.path, host, nginx_files))
                changes[write.path] = FileChange(write.path, existed, "", why,
                                                 first.stage if first is not None else stage, secret=True,
                                                 removed=write.remove)
                continue
            why = (f"no longer used: {purpose(write.path, host, nginx_files)}" if write.remove
                   else purpose(write.path, host, nginx_files))
            changes[write.path] = FileChange(
                write.path, before.get(write.path), "" if write.remove else write.content, why,
                first.stage if first is not None else stage, removed=write.remove,
            )
    return Plan(
        host=host.name,
        files=tuple(changes.values()),
        certificates=tuple(
            CertificateDecision(s.name, s.domains, decisions[s.name].action, decisions[s.name].cause,
                                decisions[s.name].reason)
            for s in host.sites
        ),
        warnings=tuple(warnings),
        recovers_unfinished_run=recover,
        plumbing_writes=tuple(plumbing),
        https_writes=tuple(https),
        facts_after_plumbing=after_plumbing,
        held=hold,
        probe_paths=full.probe_paths,
    )
