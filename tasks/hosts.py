"""Tasks that work on managed hosts."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from invoke.context import Context
from invoke.tasks import task

from .deferred import reports_errors

# Only names for annotations here: each task imports the core it runs (see tasks/deferred.py).
if TYPE_CHECKING:
    from certfab.bootstrap import BootstrapResult
    from certfab.fleet import HostSession
    from certfab.inventory import Host, Inventory
    from certfab.renewal_status import RenewalStatus
    from certfab.report import CertRecord

__all__ = ["bootstrap", "deploy_all", "facts", "history", "plan", "renew_now", "report_expiry", "sync"]

_HELP = {
    "inventory": "inventory file (default: $CERTFAB_INVENTORY or ./inventory.yaml)",
    "limit": "comma-separated groups or hosts (default: all hosts)",
    "accept_new": "record host keys seen for the first time (changed keys are always refused)",
    "json": "print JSON instead of text",
    "parallel": "how many hosts to work on at once",
    "check": "change nothing: print the diffs and certificate requests a run would make",
    "canary": "run this many hosts first and stop if any of them fails",
    "format": "output on stdout: table (default), json or csv",
    "html": "also write a self-contained HTML page with a timeline to this file",
    "prometheus": "also write node_exporter textfile metrics to this file",
    "mail": "send one digest of the report to this address (SMTP from --smtp)",
    "smtp": "SMTP server for --mail as HOST[:PORT] (default: $CERTFAB_SMTP or localhost:25)",
    "warn_days": "warn below this many days left (default: below 30% of the lifetime)",
    "critical_days": "critical below this many days left (default: below 15% of the lifetime)",
    "force": "order even within the back-off after a failed validation (rate limits still apply)",
    "days": "how many days of history to show (default 7)",
}


def helps(*names: str) -> dict[str, str]:
    """Help texts for a task's options (Invoke consumes the dict it is given)."""
    return {name: _HELP[name] for name in names}


@task(help=helps("inventory", "limit", "accept_new", "json", "parallel"))
@reports_errors
def facts(c: Context, inventory: str | None = None, limit: str | None = None, accept_new: bool = False,
          json_: bool = False, parallel: int = 10) -> None:
    """Show what certfab sees on hosts: OS, nginx, server blocks, runtime, certificates, cron."""
    from certfab.cli import LiveProgress, exit_with, fabric_config, inventory_for, print_error, target_hosts
    from certfab.facts_view import facts_text
    from certfab.fleet import run_fleet
    from certfab.gather import read_facts
    from certfab.textsafe import for_terminal

    inv = inventory_for(c, inventory)
    hosts = target_hosts(c, inv, limit)

    with LiveProgress([h.name for h in hosts], "facts") as progress:
        outcomes = run_fleet(hosts, inv, read_facts, parallel=parallel, accept_new=accept_new,
                             config=fabric_config(c), progress=progress)
    # Plain text, not a console: nothing folded, no markup or :emoji: read into host data.
    if json_:
        sys.stdout.write(json.dumps([o.value if o.value is not None else {"host": o.host, "error": o.error}
                                     for o in outcomes], indent=2) + "\n")
    else:
        for outcome in outcomes:
            if outcome.value is not None:
                sys.stdout.write(for_terminal(facts_text(outcome.value)) + "\n")
    sys.stdout.flush()
    failed = [o for o in outcomes if o.failed]
    for outcome in failed:
        print_error(outcome.error or f"{outcome.host}: failed")
    exit_with(max((o.exit_code for o in failed), default=0))


def _bootstrap_fleet(c: Context, hosts: tuple[Host, ...], inv: Inventory, *, check: bool, accept_new: bool,
                     parallel: int, json_: bool, canary: int = 0, title: str = "bootstrap",
                     force: bool = False) -> None:
    """Bootstrap (or plan) hosts in parallel, print the recap and exit with its status."""
    from certfab.bootstrap import bootstrap_host, read_acme_ca
    from certfab.cli import LiveProgress, OptionError, exit_with, fabric_config, say, stderr, stdout
    from certfab.fleet import Stop, ctrl_c_stops, run_with_canary
    from certfab.recap import fleet_exit_code, recap_rows, recap_table, write_run_log
    from certfab.textsafe import for_terminal

    if parallel < 1:
        raise OptionError(f"--parallel: {parallel} is not a positive number of hosts")
    if canary < 0:
        raise OptionError(f"--canary: {canary} is not a number of hosts")
    acme_ca = read_acme_ca(inv.acme.ca_bundle)
    directory = None
    if any(site.profile is not None for host in hosts for site in host.sites):
        from certfab.acmefetch import fetch_directory

        directory = fetch_directory(inv.acme.server, inv.acme.ca_bundle)
    from certfab.history import History, RateGuard

    # A plan asks the guard too, on the history read-only: an order it would refuse shows as refused.
    guard = RateGuard(History(read_only=check), inv.acme.rate_limits, force=force)
    config = fabric_config(c)
    stop = Stop()

    from certfab.shared import shared_sites
    from certfab.sync import deploy_shared, hold_for

    # Shared sites: the first pass holds the issuers' orders until every backend answers the challenge.
    passes = {"first": not check and title == "deploy-all" and bool(shared_sites(inv))}

    def pipeline(session: HostSession) -> BootstrapResult:
        hold = hold_for(session.inventory, session.host) if passes["first"] else frozenset()
        return bootstrap_host(session, check=check, acme_ca_pem=acme_ca, directory=directory, guard=guard,
                              hold=hold)

    # Ctrl-C starts no new host; running ones finish (commit or roll back) and the recap says so.
    with ctrl_c_stops(stop), LiveProgress([h.name for h in hosts], title) as progress:
        outcomes = run_with_canary(hosts, inv, pipeline, canary=canary, stop=stop, parallel=parallel,
                                   accept_new=accept_new, config=config, progress=progress)
        if passes["first"] and not stop.is_set():
            passes["first"] = False
            outcomes = deploy_shared(inv, hosts, outcomes, pipeline, parallel=parallel, accept_new=accept_new,
                                     config=config, progress=progress, stop=stop)
    interrupted = stop.is_set() and stop.reason == "interrupted"
    rows = recap_rows(outcomes)
    log = write_run_log(rows, "plan" if check else title,
                        meta={"check": check, "parallel": parallel, "canary": canary, "interrupted": interrupted})
    if json_ and title == "plan":
        # The plans themselves: file changes with their diffs, certificate decisions, warnings.
        plans = [{**o.value.plan.to_json(), "refused": list(o.value.refused), "error": None}
                 if o.value is not None and o.value.plan is not None
                 else {"host": o.host, "empty": None, "error": row["error"]} for o, row in zip(outcomes, rows)]
        sys.stdout.write(json.dumps(plans, indent=2) + "\n")
    elif json_:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        if check:
            # Raw text: a console would expand tabs and fold long lines, and the diffs would not apply.
            for outcome in outcomes:
                if outcome.value is not None:
                    diffs = "".join(outcome.value.diffs)
                    # Byte-exact into a file or pipe (the diffs apply); control characters shown on a terminal.
                    sys.stdout.write(for_terminal(diffs) if sys.stdout.isatty() else diffs)
                    sys.stdout.writelines(f"{outcome.host}: {for_terminal(r)}\n" for r in outcome.value.requests)
                    plan = outcome.value.plan
                    if plan is not None and plan.empty:
                        sys.stdout.write(f"{outcome.host}: no change: {for_terminal(plan.why_empty)}\n")
            sys.stdout.flush()
        for outcome in outcomes:
            for warning in (outcome.value.warnings if outcome.value else []):
                from rich.markup import escape

                stderr.print(f"[yellow]warning:[/] {escape(for_terminal(warning))}", highlight=False, emoji=False)
        stdout.print(recap_table(rows, f"{title} recap"))
    refused = [line for o in outcomes if o.value is not None for line in o.value.refused]
    for line in refused:
        sys.stderr.write(for_terminal(line) + "\n")
    say(f"run log: {log}")
    exit_with(max(fleet_exit_code(outcomes, interrupted=interrupted), 1 if refused else 0))


@task(help=helps("inventory", "limit", "accept_new", "json", "parallel", "check", "force"))
@reports_errors
def bootstrap(c: Context, inventory: str | None = None, limit: str | None = None, check: bool = False,
              accept_new: bool = False, json_: bool = False, parallel: int = 10, force: bool = False) -> None:
    """Set up ACME, certificates, strong HTTPS and renewal on hosts (idempotent, transactional)."""
    from certfab.cli import inventory_for, target_hosts

    inv = inventory_for(c, inventory)
    _bootstrap_fleet(c, target_hosts(c, inv, limit), inv, check=check, accept_new=accept_new,
                     parallel=parallel, json_=json_, force=force)


@task(help=helps("json", "days"))
@reports_errors
def history(c: Context, json_: bool = False, days: int = 7) -> None:
    """List the orders, issuances, failed validations and refusals certfab recorded on this machine."""
    from datetime import datetime, timedelta, timezone

    from certfab.cli import OptionError
    from certfab.history import History, event_row, history_lines
    from certfab.textsafe import for_terminal

    if days < 1:
        raise OptionError(f"--days: {days} is not a positive number of days")
    store = History()
    events = store.events(datetime.now(timezone.utc) - timedelta(days=days))
    if json_:
        sys.stdout.write(json.dumps({"path": str(store.path), "events": [event_row(e) for e in events]},
                                    indent=2) + "\n")
        return
    sys.stdout.write(f"history: {store.path} ({len(events)} events in the last {days} days)\n")
    sys.stdout.writelines(for_terminal(line) + "\n" for line in history_lines(events))


@task(help=helps("inventory", "limit", "accept_new", "json", "parallel", "force"))
@reports_errors
def plan(c: Context, inventory: str | None = None, limit: str | None = None, accept_new: bool = False,
         json_: bool = False, parallel: int = 10, force: bool = False) -> None:
    """Show what bootstrap would change (diffs, certificate requests) without changing anything."""
    from certfab.cli import inventory_for, target_hosts

    inv = inventory_for(c, inventory)
    _bootstrap_fleet(c, target_hosts(c, inv, limit), inv, check=True, accept_new=accept_new,
                     parallel=parallel, json_=json_, title="plan", force=force)


@task(help=helps("inventory", "limit", "accept_new", "json", "parallel", "check", "canary", "force"))
@reports_errors
def deploy_all(c: Context, inventory: str | None = None, limit: str | None = None, parallel: int = 20,
               canary: int = 0, check: bool = False, accept_new: bool = False, json_: bool = False,
               force: bool = False) -> None:
    """Bootstrap every inventory host (or --limit) in parallel, with progress and a recap."""
    from certfab.cli import inventory_for

    inv = inventory_for(c, inventory)
    hosts = inv.select(limit)
    _bootstrap_fleet(c, hosts, inv, check=check, accept_new=accept_new, parallel=parallel, json_=json_,
                     canary=canary, title="deploy-all", force=force)


@task(help=helps("inventory", "limit", "accept_new", "json", "parallel"))
@reports_errors
def sync(c: Context, inventory: str | None = None, limit: str | None = None, accept_new: bool = False,
         json_: bool = False, parallel: int = 20) -> None:
    """Bring the peers of shared sites up to date with their issuer's certificate (and nothing else)."""
    from certfab.cli import LiveProgress, OptionError, exit_with, fabric_config, inventory_for, say, stdout
    from certfab.fleet import Stop, ctrl_c_stops
    from certfab.recap import fleet_exit_code, recap_rows, recap_table, write_run_log
    from certfab.sync import sync_fleet

    if parallel < 1:
        raise OptionError(f"--parallel: {parallel} is not a positive number of hosts")
    inv = inventory_for(c, inventory)
    hosts = inv.select(limit)
    stop = Stop()
    with ctrl_c_stops(stop), LiveProgress([h.name for h in hosts], "sync") as progress:
        outcomes, _plan = sync_fleet(inv, hosts, parallel=parallel, accept_new=accept_new, config=fabric_config(c),
                                     progress=progress, stop=stop)
    interrupted = stop.is_set() and stop.reason == "interrupted"
    rows = recap_rows(outcomes)
    log = write_run_log(rows, "sync", meta={"parallel": parallel, "interrupted": interrupted})
    if json_:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    elif not outcomes:
        say("no shared site among the selected hosts: nothing to sync")
    else:
        stdout.print(recap_table(rows, "sync recap"))
    say(f"run log: {log}")
    exit_with(fleet_exit_code(outcomes, interrupted=interrupted))


@task(help=helps("inventory", "limit", "accept_new", "json", "parallel"))
@reports_errors
def renew_now(c: Context, inventory: str | None = None, limit: str | None = None, accept_new: bool = False,
              json_: bool = False, parallel: int = 10) -> None:
    """Run the installed renewal script on hosts now and show its result."""
    from certfab.cli import LiveProgress, exit_with, fabric_config, inventory_for, target_hosts
    from certfab.fleet import run_fleet
    from certfab.renewal_run import renew_now_exit, renew_now_lines, renew_now_rows, run_renewal

    inv = inventory_for(c, inventory)
    hosts = target_hosts(c, inv, limit)

    def pipeline(session: HostSession) -> RenewalStatus:
        session.step("renewing")
        return run_renewal(session.remote)

    with LiveProgress([h.name for h in hosts], "renew-now") as progress:
        outcomes = run_fleet(hosts, inv, pipeline, parallel=parallel, accept_new=accept_new,
                             config=fabric_config(c), progress=progress)
    if json_:
        sys.stdout.write(json.dumps(renew_now_rows(outcomes), indent=2) + "\n")
    else:
        sys.stdout.writelines(line + "\n" for line in renew_now_lines(outcomes))
    sys.stdout.flush()
    exit_with(renew_now_exit(outcomes))


@task(help=helps("inventory", "limit", "accept_new", "json", "parallel", "format", "html", "prometheus", "mail",
                 "smtp", "warn_days", "critical_days"))
@reports_errors
def report_expiry(c: Context, inventory: str | None = None, limit: str | None = None, json_: bool = False,
                  format: str = "table", html: str | None = None, prometheus: str | None = None,
                  mail: str | None = None, smtp: str | None = None, warn_days: float | None = None,
                  critical_days: float | None = None, accept_new: bool = False, parallel: int = 20) -> None:
    """Report every certificate of the fleet (on disk and as served); exit 0 ok, 1 warn, 2 problem."""
    from certfab.cli import (
        LiveProgress,
        exit_with,
        fabric_config,
        inventory_for,
        say,
        stdout,
        target_hosts,
    )
    from certfab.errors import CertfabError
    from certfab.expiry import unreachable_records
    from certfab.fleet import run_fleet
    from certfab.gather import host_records
    from certfab.history import record_host_renewals
    from certfab.report import (
        Thresholds,
        build_report,
        link_shared,
        to_csv,
        to_html,
        to_json,
        to_prometheus,
        to_rich_table,
    )
    from certfab.report import exit_code as report_exit_code
    from certfab.reports_out import save_report, send_digest, write_text
    from certfab.shared import shared_sites

    output_format = "json" if json_ else format
    if output_format not in ("table", "json", "csv"):
        raise CertfabError(f"--format: {format!r} is not one of table, json, csv")
    inv = inventory_for(c, inventory)
    hosts = target_hosts(c, inv, limit)
    try:
        thresholds = Thresholds(warn_days=float(warn_days) if warn_days is not None else None,
                                critical_days=float(critical_days) if critical_days is not None else None)
    except ValueError as exc:
        raise CertfabError(f"--warn-days/--critical-days: {exc}") from None

    def pipeline(session: HostSession) -> list[CertRecord]:
        return host_records(session, timeout=inv.ssh.connect_timeout)

    with LiveProgress([h.name for h in hosts], "report-expiry") as progress:
        outcomes = run_fleet(hosts, inv, pipeline, parallel=parallel, accept_new=accept_new,
                             config=fabric_config(c), progress=progress)
    issuers = {name: site.issuer.name for name, site in shared_sites(inv).items()}
    records = link_shared(unreachable_records(outcomes, {h.name: h for h in hosts}), issuers)
    report = build_report(records, thresholds=thresholds)
    record_host_renewals(records)
    saved = save_report(report)
    if output_format in ("json", "csv"):
        # Raw text: a console would fold long lines and replace :emoji: codes, breaking the format.
        sys.stdout.write(to_json(report) if output_format == "json" else to_csv(report))
        sys.stdout.flush()
    else:
        stdout.print(to_rich_table(report))
        say(f"saved {saved}")
    if html:
        write_text(html, to_html(report))
    if prometheus:
        write_text(prometheus, to_prometheus(report))
    if mail:
        send_digest(report, mail, smtp)
    exit_with(report_exit_code(report))
