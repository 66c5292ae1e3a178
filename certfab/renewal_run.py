"""Running the installed renewal script on demand and reading its status file."""

from __future__ import annotations

from typing import Any

from certfab.errors import RemoteError
from certfab.facts import parse_status
from certfab.paths import RENEW_SCRIPT, STATUS_FILE
from certfab.remote import Remote


def run_renewal(remote: Remote) -> dict[str, Any]:
    """Run certfab-renew on the host (one command) and return its status plus exit code."""
    # The script replaces status.json by rename on every run it makes, so an unchanged inode means
    # this run wrote nothing: another run held the lock (exit 0) or it failed before its first step.
    script = (
        f"[ -x {RENEW_SCRIPT} ] || {{ echo 'certfab-renew is not installed; run bootstrap first' >&2; exit 127; }}\n"
        f"before=$(stat -c %i {STATUS_FILE} 2>/dev/null)\n"
        f"{RENEW_SCRIPT} >/dev/null 2>&1; rc=$?\n"
        f"after=$(stat -c %i {STATUS_FILE} 2>/dev/null)\n"
        f"echo \"@@exit $rc\"; [ \"$before\" = \"$after\" ] && echo '@@stale'\n"
        f"cat {STATUS_FILE} 2>/dev/null\n"
    )
    result = remote.run(script, what="running the renewal script")
    if result.exited == 127:
        raise RemoteError(f"{remote.host.name}: certfab-renew is not installed; run bootstrap first")
    head, _, body = result.stdout.partition("\n")
    code = int(head.removeprefix("@@exit ").strip() or 1) if head.startswith("@@exit") else 1
    stale = body.startswith("@@stale\n") or body == "@@stale"
    if stale:
        return _not_run(code)
    status = (parse_status(body) if body.strip() else None) or {}
    status["exit"] = code
    return status


def _not_run(code: int) -> dict[str, Any]:
    """The status of a run that did not get as far as recording one (status.json is an older run's)."""
    if code == 0:
        return {"result": "busy", "renewed": [], "exit": 0,
                "message": "another renewal run holds the lock; nothing done now: try again when it has finished"}
    return {"result": "failed", "renewed": [], "exit": code,
            "message": f"certfab-renew exited with status {code} before recording a status; see syslog "
                       "(tag certfab-renew)"}
