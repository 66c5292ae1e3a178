"""Tasks that work on managed hosts."""

from __future__ import annotations

import json

from invoke import Context, task

from certfab.cli import LiveProgress, fabric_config, inventory_for, reports_errors, stderr, stdout, target_hosts, exit_with
from certfab.facts import gather
from certfab.facts_view import facts_summary, facts_text
from certfab.fleet import HostSession, run_fleet

__all__ = ["facts"]

_HELP = {
    "inventory": "inventory file (default: $CERTFAB_INVENTORY or ./inventory.yaml)",
    "limit": "comma-separated groups or hosts (default: all hosts)",
    "accept_new": "record host keys seen for the first time (changed keys are always refused)",
    "json": "print JSON instead of text",
    "parallel": "how many hosts to work on at once",
}


def helps(*names: str) -> dict[str, str]:
    """Help texts for a task's options (Invoke consumes the dict it is given)."""
    return {name: _HELP[name] for name in names}


@task(help=helps("inventory", "limit", "accept_new", "json", "parallel"))
@reports_errors
def facts(c: Context, inventory: str | None = None, limit: str | None = None, accept_new: bool = False,
          json_: bool = False, parallel: int = 10) -> None:
    """Show what certfab sees on hosts: OS, nginx, server blocks, runtime, certificates, cron."""
    inv = inventory_for(c, inventory)
    hosts = target_hosts(c, inv, limit)

    def pipeline(session: HostSession) -> dict[str, object]:
        session.step("reading facts")
        return facts_summary(gather(session.remote))

    with LiveProgress([h.name for h in hosts], "facts") as progress:
        outcomes = run_fleet(hosts, inv, pipeline, parallel=parallel, accept_new=accept_new,
                             config=fabric_config(c), progress=progress)
    if json_:
        stdout.print_json(json.dumps([o.value if o.value is not None else {"host": o.host, "error": o.error}
                                      for o in outcomes]))
    else:
        for outcome in outcomes:
            if outcome.value is not None:
                stdout.print(facts_text(outcome.value), markup=False)
    failed = [o for o in outcomes if o.failed]
    for outcome in failed:
        stderr.print(f"[bold red]error:[/] {outcome.error}", highlight=False)
    exit_with(max((o.exit_code for o in failed), default=0))
