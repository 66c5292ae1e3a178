"""The renewal script's status file as a typed value (pure).

certfab-renew writes /var/lib/certfab/status.json after every run; facts, the expiry report and
renew-now read it. It is host data: every field is checked for its type, and what does not fit is
left out rather than trusted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Results that need nothing from the operator.
RESULTS_OK = ("renewed", "nothing-due")
_KNOWN = ("time", "result", "renewed", "hook_missed", "certbot_exit", "nginx_test", "reload", "holder",
          "message", "exit")


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _names(value: object) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


@dataclass(frozen=True)
class LockHolder:
    """The renewal run that held the lock when a run found it busy."""

    pid: int
    since: str


@dataclass(frozen=True)
class RenewalStatus:
    """One renewal run as certfab-renew recorded it (plus renew-now's exit code, when it ran it)."""

    result: str
    time: str | None = None
    renewed: tuple[str, ...] = ()
    hook_missed: tuple[str, ...] = ()
    certbot_exit: int | None = None
    nginx_test: str | None = None
    reload: str | None = None
    message: str = ""
    holder: LockHolder | None = None
    exit: int | None = None
    # Fields a newer script wrote that this version does not know: kept for the JSON outputs.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.result in RESULTS_OK

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RenewalStatus:
        holder = data.get("holder")
        lock_holder = None
        if isinstance(holder, Mapping) and _int(holder.get("pid")) is not None:
            lock_holder = LockHolder(int(holder["pid"]), _text(holder.get("since")) or "")
        return cls(
            result=(_text(data.get("result")) or "unknown"),
            time=_text(data.get("time")) if not isinstance(data.get("time"), (int, float)) else str(data.get("time")),
            renewed=_names(data.get("renewed")),
            hook_missed=_names(data.get("hook_missed")),
            certbot_exit=_int(data.get("certbot_exit")),
            nginx_test=_text(data.get("nginx_test")),
            reload=_text(data.get("reload")),
            message=_text(data.get("message")) or "",
            holder=lock_holder,
            exit=_int(data.get("exit")),
            extra={k: v for k, v in data.items() if k not in _KNOWN},
        )

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = dict(self.extra)
        document.update({
            "time": self.time, "result": self.result, "renewed": list(self.renewed),
            "hook_missed": list(self.hook_missed), "certbot_exit": self.certbot_exit,
            "nginx_test": self.nginx_test, "reload": self.reload, "message": self.message,
        })
        if self.holder is not None or self.result == "busy":
            document["holder"] = {"pid": self.holder.pid, "since": self.holder.since} if self.holder else None
        if self.exit is not None:
            document["exit"] = self.exit
        return document


def parse_status(text: str) -> RenewalStatus | None:
    """status.json's text as a RenewalStatus; an unreadable file is a status of its own."""
    try:
        loaded = json.loads(text)
    except ValueError:
        return RenewalStatus("unreadable", message="status.json is not valid JSON")
    return RenewalStatus.from_mapping(loaded) if isinstance(loaded, dict) else None


def as_status(value: RenewalStatus | Mapping[str, Any] | None) -> RenewalStatus | None:
    """A status given as a value or as its JSON mapping."""
    if value is None or isinstance(value, RenewalStatus):
        return value
    return RenewalStatus.from_mapping(value)
