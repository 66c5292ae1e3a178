"""Tasks that take certfab away again: remove-site and uninstall (lint lives here too)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from invoke.context import Context
from invoke.tasks import task

from .deferred import reports_errors
from .hosts import helps

if TYPE_CHECKING:
    from certfab.fleet import HostSession
    from certfab.offboard import OffboardResult
    from certfab.outcome import HostOutcome

__all__ = ["lint", "remove_site", "uninstall"]


def _finish(outcomes: list[HostOutcome[OffboardResult]], *, check: bool) -> None:
    """Print each host's lines and warnings, then exit 0, or with the worst host's status."""
    from certfab.cli import exit_with, print_error, say
    from certfab.offboard import result_lines
    from certfab.textsafe import for_terminal

    for outcome in outcomes:
        if outcome.value is not None:
            for line in result_lines(outcome.value, check=check):
                sys.stdout.write((for_terminal(line) if sys.stdout.isatty() else line) + "\n")
            for warning in outcome.value.warnings:
                say(f"warning: {warning}")
    sys.stdout.flush()
    for outcome in outcomes:
        if outcome.failed:
            print_error(outcome.error or f"{outcome.host}: failed")
    exit_with(max((o.exit_code or 1 for o in outcomes if o.failed), default=0))


@task(help={**helps("inventory", "accept_new", "check"),
            "name": "the site (its certificate name) to take off HTTPS",
            "revoke": "also revoke the certificate at the CA",
            "reason": "revocation reason: unspecified, keycompromise, affiliationchanged, superseded, "
                      "cessationofoperation (default)",
            "keep_certificate": "keep the certificate lineage on the host",
            "force": "remove it even though the inventory still lists it (the next bootstrap brings it back)"})
@reports_errors
def remove_site(c: Context, name: str, inventory: str | None = None, revoke: bool = False,
                reason: str = "cessationofoperation", keep_certificate: bool = False, force: bool = False,
                check: bool = False, accept_new: bool = False) -> None:
    """Bring one site of a host (-H) back to plain HTTP as it was before certfab; delete its certificate."""
    from certfab.cli import OptionError, fabric_config, inventory_for, target_hosts
    from certfab.fleet import run_fleet
    from certfab.offboard import REVOKE_REASONS
    from certfab.offboarding import remove_site as remove
    from certfab.validate import Invalid, site_name

    if not getattr(c, "host", None):
        raise OptionError("remove-site works on one host: name it with -H")
    try:
        site_name(name)
    except Invalid as exc:
        raise OptionError(f"NAME: {name!r} {exc}") from None
    if reason not in REVOKE_REASONS:
        raise OptionError(f"--reason: {reason!r} is not one of {', '.join(REVOKE_REASONS)}")
    if revoke and keep_certificate:
        raise OptionError("--revoke and --keep-certificate contradict each other")
    inv = inventory_for(c, inventory)
    hosts = target_hosts(c, inv, None)
    listed = next((s for s in hosts[0].sites if s.name == name), None)
    if listed is not None and not force:
        raise OptionError(f"{inv.path}: hosts.{hosts[0].name}.sites still lists {name}; remove it there "
                          "first (or pass --force: the next bootstrap would set it up again)")

    def pipeline(session: HostSession) -> OffboardResult:
        return remove(session, name, check=check, revoke_reason=reason if revoke else None,
                      keep_certificate=keep_certificate, listed_domains=listed.domains if listed else ())

    _finish(run_fleet(hosts, inv, pipeline, parallel=1, accept_new=accept_new, config=fabric_config(c)),
            check=check)


@task(help={**helps("inventory", "accept_new", "check"),
            "restore_http": "first bring every site back to plain HTTP (remove-site for each)",
            "keep_certificates": "with --restore-http, keep the certificate lineages"})
@reports_errors
def uninstall(c: Context, inventory: str | None = None, restore_http: bool = False,
              keep_certificates: bool = False, check: bool = False, accept_new: bool = False) -> None:
    """Remove every file certfab installed on a host (-H); sites keep HTTPS, but nothing renews them."""
    from certfab.cli import OptionError, fabric_config, inventory_for, target_hosts
    from certfab.fleet import run_fleet
    from certfab.offboarding import uninstall as take_away

    if not getattr(c, "host", None):
        raise OptionError("uninstall works on one host: name it with -H")
    inv = inventory_for(c, inventory)
    hosts = target_hosts(c, inv, None)

    def pipeline(session: HostSession) -> OffboardResult:
        return take_away(session, check=check, restore_http=restore_http, keep_certificates=keep_certificates)

    _finish(run_fleet(hosts, inv, pipeline, parallel=1, accept_new=accept_new, config=fabric_config(c)),
            check=check)


@task(help={**helps("inventory", "limit", "accept_new", "json", "parallel"),
            "fix": "apply the safe fixes (shown as diffs) as one transaction: nginx -t, reload, rollback on failure",
            "check": "with --fix: only show the diffs of the fixes, change nothing"})
@reports_errors
def lint(c: Context, inventory: str | None = None, limit: str | None = None, fix: bool = False,
         check: bool = False, accept_new: bool = False, json_: bool = False, parallel: int = 10) -> None:
    """List what is wrong with the TLS configuration on hosts (file:line, problem, fix); exit 0/1/2."""
    import json

    from certfab.cli import LiveProgress, exit_with, fabric_config, inventory_for, print_error, target_hosts
    from certfab.fleet import run_fleet
    from certfab.lint import exit_code, findings_lines
    from certfab.linting import lint_host
    from certfab.textsafe import for_terminal

    inv = inventory_for(c, inventory)
    hosts = target_hosts(c, inv, limit)
    with LiveProgress([h.name for h in hosts], "lint") as progress:
        outcomes = run_fleet(hosts, inv, lambda session: lint_host(session, fix=fix, check=check), parallel=parallel,
                             accept_new=accept_new, config=fabric_config(c), progress=progress)
    if json_:
        sys.stdout.write(json.dumps([
            {"host": o.host, "error": o.error,
             "findings": [f.to_json() for f in o.value.findings] if o.value else [],
             "fixed": o.value.fixed if o.value else [], "diffs": o.value.diffs if o.value else []}
            for o in outcomes], indent=2) + "\n")
    else:
        for outcome in outcomes:
            if outcome.value is None:
                continue
            text = "".join(outcome.value.diffs) + "".join(f"{outcome.host}: {line}\n" for line in outcome.value.fixed)
            text += "".join(line + "\n" for line in findings_lines(outcome.host, outcome.value.findings))
            if not outcome.value.findings:
                text += f"{outcome.host}: clean\n"
            sys.stdout.write(for_terminal(text) if sys.stdout.isatty() else text)
    sys.stdout.flush()
    for outcome in outcomes:
        if outcome.failed:
            print_error(outcome.error or f"{outcome.host}: failed")
    worst = max((exit_code(o.value.findings) for o in outcomes if o.value is not None), default=0)
    exit_with(max([worst] + [2 for o in outcomes if o.failed]))
