"""Carrying out remove-site and uninstall on a host: the same host lock and transaction as bootstrap
(diff first, nginx -t, reload, verify, commit or roll back), then certbot in its container."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from certfab.bootstrap import BootstrapResult
from certfab.errors import ApplyError, PreflightError
from certfab.executor import HostRun
from certfab.facts import HostFacts
from certfab.fleet import HostSession
from certfab.gather import gather
from certfab.issue import EXIT_CERTBOT_FAILED, container_command
from certfab.offboard import Offboarding, OffboardResult, plan_removal, plan_uninstall
from certfab.paths import ACME_CA, DNS_CREDENTIALS_DIR, HOST_CONFIG_DIR, NGINX_CERTFAB_DIR
from certfab.shared import copy_dir
from certfab.tlsprobe import probe_name, probe_redirect, verify_https
from certfab.transaction import EXITS, lock_context

REMOVE_SCRIPT = "certbot-remove.sh.j2"
CLEANUP_SCRIPT = "uninstall-cleanup.sh.j2"


def _certbot_context(run: HostRun, lineages: tuple[str, ...], revoke_reason: str | None) -> dict[str, object]:
    host, acme = run.host, run.inventory.acme
    base = container_command(host, acme_ca=acme.ca_bundle is not None)
    return {
        **lock_context(run.run_id),
        "exits": {**EXITS, "certbot": EXIT_CERTBOT_FAILED},
        "runtime": host.certbot.runtime,
        "image": host.certbot.image,
        "lineages": [
            {
                "name": name,
                "renewal_dir": f"/etc/letsencrypt/live/{name}",
                "renewal_conf": f"/etc/letsencrypt/renewal/{name}.conf",
                "revoke": base + ["revoke", "--cert-name", name, "--reason", revoke_reason, "--non-interactive",
                                  "--no-delete-after-revoke", "--server", acme.server] if revoke_reason else None,
                "delete": base + ["delete", "--cert-name", name, "--non-interactive"],
            }
            for name in lineages
        ],
    }


def _still_redirecting(run: HostRun, domains: tuple[str, ...]) -> list[str]:
    """Domains whose plain HTTP still redirects to HTTPS (nginx reloads asynchronously: a few retries)."""
    deadline = time.monotonic() + 8
    while True:
        bad = []
        for domain in domains:
            # A wildcard is asked for through a name under it.
            got = probe_redirect(run.host.address, probe_name(domain), run.inventory.ssh.connect_timeout)
            if got.status in (301, 302, 307, 308) and (got.location or "").startswith("https://"):
                bad.append(domain)
        if not bad or time.monotonic() >= deadline:
            return bad
        time.sleep(0.5)


def _not_served(run: HostRun, domains: tuple[str, ...]) -> list[str]:
    """Problems of domains that should still answer HTTPS with a valid chain (uninstall keeps them)."""
    deadline = time.monotonic() + 8
    while True:
        bad = []
        for domain in domains:
            name = probe_name(domain)
            got = verify_https(run.host.address, name, run.inventory.acme.trust_roots,
                               run.inventory.ssh.connect_timeout)
            if not got.ok:
                bad.append(f"https://{name}/: {got.error}")
        if not bad or time.monotonic() >= deadline:
            return bad
        time.sleep(0.5)


def _carry_out(run: HostRun, plan: Offboarding, result: OffboardResult, what: str, *, revoke_reason: str | None,
               verify_http: bool) -> None:
    if plan.writes:
        run.take_lock()
        run.apply(list(plan.writes), what)
        if verify_http:
            bad = [f"http://{d}/ still redirects to HTTPS" for d in _still_redirecting(run, plan.domains)]
        else:
            bad = _not_served(run, plan.domains)
        if bad:
            run.rollback(bad[0])
        run.commit()
        result.applied += [c.describe() for c in plan.changes]
    if plan.lineages or plan.copies:
        run.take_lock()
        run.session.step("removing certificates")
        context = {**_certbot_context(run, plan.lineages, revoke_reason),
                   "copies": [{"name": name, "dir": copy_dir(name)} for name in plan.copies]}
        reply = run.remote.script(REMOVE_SCRIPT, what="removing certificates", context=context)
        for frame in reply.all("copy-deleted"):
            result.applied.append(f"deleted the copy of shared certificate {frame.arg}")
        for frame in reply.all("revoked"):
            result.applied.append(f"revoked certificate {frame.arg} ({revoke_reason})")
        for frame in reply.all("deleted"):
            result.applied.append(f"deleted certificate {frame.arg}")
        failed = reply.all("revoke-failed") + reply.all("delete-failed")
        if failed or not reply.ok:
            detail = "; ".join(f"{f.arg}: {' '.join(f.text.split())[-300:]}" for f in failed) or reply.last_error_line()
            raise ApplyError(f"{run.host.name}: certbot failed: {detail}")


def _read_recovered(run: HostRun, *, check: bool) -> HostFacts:
    """The host's facts, after rolling back a transaction a lost run left open (not in check mode)."""
    run.session.step("reading facts")
    facts = gather(run.session.remote)
    if facts.journal.strip() and not check:
        facts = run.recover(facts)
    if facts.nginx is None:
        raise PreflightError(f"{run.session.host.name}: nginx is not installed or not on PATH")
    return facts


def remove_site(session: HostSession, site: str, *, check: bool, revoke_reason: str | None,
                keep_certificate: bool, listed_domains: tuple[str, ...] = ()) -> OffboardResult:
    """One site back to plain HTTP as it was before certfab; its certfab files and lineage gone."""
    result = OffboardResult(session.host.name)
    run = HostRun(session, acme_ca_pem=None, now=datetime.now(timezone.utc), result=BootstrapResult(session.host.name))
    try:
        facts = _read_recovered(run, check=check)
        plan = plan_removal(session.host.name, site, facts, keep_certificate=keep_certificate,
                            listed_domains=listed_domains)
        result.plan = plan
        result.warnings += plan.warnings
        if plan.empty or check:
            return result
        if plan.domains:
            result.warnings.append(
                f"{session.host.name}: browsers that saw {', '.join(plan.domains)} remember its HSTS header for "
                f"its max-age and keep asking for HTTPS until it expires"
            )
        _carry_out(run, plan, result, f"removing site {site}", revoke_reason=revoke_reason, verify_http=True)
        return result
    finally:
        run.release()


def uninstall(session: HostSession, *, check: bool, restore_http: bool, keep_certificates: bool) -> OffboardResult:
    """Every file certfab installed removed; sites keep HTTPS (or, with restore_http, go back to HTTP)."""
    result = OffboardResult(session.host.name)
    run = HostRun(session, acme_ca_pem=None, now=datetime.now(timezone.utc), result=BootstrapResult(session.host.name))
    try:
        facts = _read_recovered(run, check=check)
        plan = plan_uninstall(session.host.name, facts, restore_http=restore_http,
                              keep_certificates=keep_certificates)
        result.plan = plan
        result.warnings += plan.warnings
        if plan.empty or check:
            return result
        _carry_out(run, plan, result, "uninstalling certfab", revoke_reason=None, verify_http=restore_http)
        run.take_lock()
        run.remote.check_script(CLEANUP_SCRIPT, what="removing certfab's state",
                                context={**lock_context(run.run_id), "files": [ACME_CA, *sorted(facts.secret_files)],
                                         "empty_dirs": [NGINX_CERTFAB_DIR, DNS_CREDENTIALS_DIR, HOST_CONFIG_DIR]})
        result.applied.append("removed certfab's state directory")
        return result
    finally:
        run.release()
