"""Running the installed renewal script on demand and reading its status file."""

from __future__ import annotations

import json
from typing import Any

from certfab.errors import RemoteError
from certfab.facts import RENEW_SCRIPT, STATE_DIR
from certfab.remote import Remote


def run_renewal(remote: Remote) -> dict[str, Any]:
    """Run certfab-renew on the host (one command) and return its status plus exit code."""
    script = (
        f"[ -x {RENEW_SCRIPT} ] || {{ echo 'certfab-renew is not installed; run bootstrap first' >&2; exit 127; }}\n"
        f"{RENEW_SCRIPT} >/dev/null 2>&1; rc=$?\n"
        f"echo \"@@exit $rc\"; cat {STATE_DIR}/status.json 2>/dev/null\n"
    )
    result = remote.run(script, what="running the renewal script")
    if result.exited == 127:
        raise RemoteError(f"{remote.host.name}: certfab-renew is not installed; run bootstrap first")
    head, _, body = result.stdout.partition("\n")
    status: dict[str, Any] = {}
    try:
        loaded = json.loads(body) if body.strip() else {}
        status = loaded if isinstance(loaded, dict) else {}
    except ValueError:
        status = {"result": "unreadable", "message": "status.json is not valid JSON"}
    status["exit"] = int(head.removeprefix("@@exit ").strip() or 1) if head.startswith("@@exit") else 1
    return status
