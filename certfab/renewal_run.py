"""Running the installed renewal script on demand and reading its status file."""

from __future__ import annotations

from typing import Any

from certfab.errors import RemoteError
from certfab.facts import parse_status
from certfab.paths import RENEW_SCRIPT, STATUS_FILE
from certfab.remote import Remote


def run_renewal(remote: Remote) -> dict[str, Any]:
    """Run certfab-renew on the host (one command) and return its status plus exit code."""
    reply = remote.script("renew-now.sh.j2", what="running the renewal script",
                          renew_script=RENEW_SCRIPT, status_file=STATUS_FILE)
    if reply.has("not-installed"):
        raise RemoteError(f"{remote.host.name}: certfab-renew is not installed; run bootstrap first")
    exit_frame = reply.get("exit")
    if exit_frame is None:
        raise RemoteError(f"{remote.host.name}: running the renewal script: no answer "
                          f"(exit {reply.exited}): {reply.last_error_line()}")
    code = int(exit_frame.arg) if exit_frame.arg.isdigit() else 1
    if reply.has("stale"):
        return _not_run(code)
    body = reply.text("status")
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
