"""Running the installed renewal script on demand, reading what it recorded, and saying it (pure parts)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from certfab.errors import RemoteError
from certfab.paths import RENEW_SCRIPT, STATUS_FILE
from certfab.protocol import Reply
from certfab.renewal_status import RenewalStatus, parse_status
from certfab.textsafe import one_line

if TYPE_CHECKING:  # the seam; importing it here would load the SSH layer
    from certfab.outcome import HostOutcome
    from certfab.remote import Remote

RENEW_NOW_SCRIPT = "renew-now.sh.j2"


def run_renewal(remote: Remote) -> RenewalStatus:
    """Run certfab-renew on the host (one command) and return its status with the exit code."""
    reply = remote.script(RENEW_NOW_SCRIPT, what="running the renewal script",
                          renew_script=RENEW_SCRIPT, status_file=STATUS_FILE)
    return read_renewal_reply(remote.host.name, reply)


def read_renewal_reply(host: str, reply: Reply) -> RenewalStatus:
    """What renew-now's script answered, as the run's status."""
    if reply.has("not-installed"):
        raise RemoteError(f"{host}: certfab-renew is not installed; run bootstrap first")
    exit_frame = reply.get("exit")
    if exit_frame is None:
        raise RemoteError(f"{host}: running the renewal script: no answer "
                          f"(exit {reply.exited}): {reply.last_error_line()}")
    code = int(exit_frame.arg) if exit_frame.arg.isdigit() else 1
    if reply.has("stale"):
        return _not_run(code)
    body = reply.text("status")
    status = (parse_status(body) if body.strip() else None) or RenewalStatus("failed", message="no status recorded")
    return replace(status, exit=code)


def _not_run(code: int) -> RenewalStatus:
    """The status of a run that did not get as far as recording one (status.json is an older run's)."""
    if code == 0:
        return RenewalStatus("busy", exit=0,
                             message="another renewal run holds the lock; nothing done now: try again when it has finished")
    return RenewalStatus("failed", exit=code,
                         message=f"certfab-renew exited with status {code} before recording a status; see syslog "
                                 "(tag certfab-renew)")


def renew_now_lines(outcomes: list[HostOutcome[RenewalStatus]]) -> list[str]:
    """renew-now's text for people: one line per host, and the message where it needs reading."""
    lines = []
    for outcome in outcomes:
        status = outcome.value
        if outcome.error or status is None:
            lines.append(f"{outcome.host}: failed {one_line(outcome.error or 'no status')}")
            continue
        renewed = one_line(", ".join(status.renewed)) or "nothing"
        lines.append(f"{outcome.host}: {one_line(status.result)} (renewed: {renewed}; nginx test "
                     f"{one_line(status.nginx_test or 'skipped')}; exit {status.exit})")
        if not status.ok and status.message:
            lines.append(f"  {one_line(status.message)}")
    return lines


def renew_now_rows(outcomes: list[HostOutcome[RenewalStatus]]) -> list[dict[str, object]]:
    """renew-now's JSON: one object per host."""
    return [{"host": o.host, **(o.value.to_json() if o.value is not None else {}), "error": o.error}
            for o in outcomes]


def renew_now_exit(outcomes: list[HostOutcome[RenewalStatus]]) -> int:
    """1 unless every host renewed or had nothing due ("busy" counts: the renewal asked for did not run)."""
    return 1 if any(o.failed or o.value is None or o.value.exit or not o.value.ok for o in outcomes) else 0
