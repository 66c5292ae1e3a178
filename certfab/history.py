"""The operator's order history: an SQLite file of every order, issuance, failed validation and refusal.

It lives under the operator's state directory ($CERTFAB_STATE_DIR, else $XDG_STATE_HOME/certfab, else
~/.local/state/certfab) and is shared by every run on this machine, so the rate-limit guard counts the fleet.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from certfab.errors import CertfabError
from certfab.opstate import state_dir
from certfab.ratelimit import Event, Limits, Order, host_renewal, name_set, refusal, registered_domains

if TYPE_CHECKING:
    from certfab.report import CertRecord

FILE_NAME = "history.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    host TEXT NOT NULL,
    site TEXT NOT NULL,
    names TEXT NOT NULL,
    renewal INTEGER NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
"""
# Older events never decide anything (the longest window is 7 days, the longest back-off one day).
KEEP_READING = timedelta(days=8)


def history_path() -> Path:
    """Where the history database is."""
    return state_dir() / FILE_NAME


class History:
    """The history database; safe to share between the threads of one run."""

    def __init__(self, path: Path | None = None, *, read_only: bool = False) -> None:
        """Open (and create) the history; read_only (for plans) creates nothing and records nothing."""
        self.path = path or history_path()
        self.read_only = read_only
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            if read_only:
                if self.path.exists():
                    self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30,
                                               check_same_thread=False, isolation_level=None)
                return
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise CertfabError(f"{self.path}: cannot open the order history: {exc}") from None
        self.path.chmod(0o600)

    def record(self, event: Event) -> None:
        """Add one event (nothing, read-only)."""
        with self._lock:
            if self._db is not None and not self.read_only:
                self._insert(self._db, event)

    @staticmethod
    def _insert(db: sqlite3.Connection, event: Event) -> None:
        db.execute(
            "INSERT INTO events (time, kind, host, site, names, renewal, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (event.time.timestamp(), event.kind, event.host, event.site, " ".join(event.names),
             int(event.renewal), event.detail),
        )

    def record_new(self, events: Sequence[Event]) -> int:
        """Add the events not recorded yet (same kind, host, site and time); how many were added."""
        added = 0
        with self._lock:
            if self._db is None or self.read_only:
                return 0
            for event in events:
                known = self._db.execute(
                    "SELECT 1 FROM events WHERE kind = ? AND host = ? AND site = ? AND time = ?",
                    (event.kind, event.host, event.site, event.time.timestamp()),
                ).fetchone()
                if known is None:
                    self._insert(self._db, event)
                    added += 1
        return added

    def events(self, since: datetime) -> list[Event]:
        """Every event from `since` on, oldest first."""
        with self._lock:
            if self._db is None:
                return []  # read-only and no history yet
            try:
                rows = self._db.execute(
                    "SELECT time, kind, host, site, names, renewal, detail FROM events WHERE time >= ? "
                    "ORDER BY time, id", (since.timestamp(),),
                ).fetchall()
            except sqlite3.Error as exc:
                raise CertfabError(f"{self.path}: cannot read the order history: {exc}") from None
        return [
            Event(datetime.fromtimestamp(t, timezone.utc), kind, host, site, tuple(names.split()), bool(renewal),
                  detail)
            for t, kind, host, site, names, renewal, detail in rows
        ]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()


class RateGuard:
    """Admits orders under the limits, counting the history and this run's admitted orders; records events.

    On a read-only history (a plan) it judges the same way and records nothing.
    """

    def __init__(self, history: History, limits: Limits, *, force: bool) -> None:
        self.history = history
        self.limits = limits
        self.force = force
        self._lock = threading.Lock()
        self._pending: list[Order] = []

    def admit(self, orders: Sequence[Order]) -> tuple[list[Order], list[str]]:
        """The orders that fit (reserved until recorded) and one refusal line for each that does not."""
        allowed: list[Order] = []
        refused: list[str] = []
        with self._lock:
            now = datetime.now(timezone.utc)
            past = self.history.events(now - KEEP_READING)
            for order in orders:
                why = refusal(order, past, self._pending, self.limits, now, force=self.force)
                if why is None:
                    self._pending.append(order)
                    allowed.append(order)
                else:
                    refused.append(why)
                    self.history.record(Event(now, "refused", order.host, order.site, name_set(order.names),
                                              order.renewal, why.split(": refused: ", 1)[-1]))
            for order in allowed:
                self.history.record(Event(now, "order", order.host, order.site, name_set(order.names),
                                          order.renewal))
        return allowed, refused

    def settle(self, order: Order, *, issued: bool, failed_names: Sequence[str] = (), detail: str = "") -> None:
        """Record what became of an admitted order: issued, or which names failed validation."""
        now = datetime.now(timezone.utc)
        with self._lock:
            if order in self._pending:
                self._pending.remove(order)
            if issued:
                self.history.record(Event(now, "issued", order.host, order.site, name_set(order.names),
                                          order.renewal))
            for name in failed_names:
                self.history.record(Event(now, "failed-validation", order.host, order.site, name_set([name]),
                                          order.renewal, detail))


def event_row(event: Event) -> dict[str, object]:
    """An event as JSON-ready data (registered domains included: what the limits count by)."""
    return {
        "time": f"{event.time:%Y-%m-%dT%H:%M:%SZ}",
        "kind": event.kind,
        "host": event.host,
        "site": event.site,
        "names": list(event.names),
        "registered_domains": list(registered_domains(event.names)),
        "renewal": event.renewal,
        "detail": event.detail,
    }


def history_lines(events: Sequence[Event]) -> list[str]:
    """One line per event, oldest first, for people."""
    lines = []
    for event in events:
        renewal = " (renewal)" if event.renewal and event.kind in ("order", "issued") else ""
        detail = f": {event.detail}" if event.detail else ""
        lines.append(f"{event.time:%Y-%m-%d %H:%M:%S} {event.kind:<17} {event.host} {event.site} "
                     f"{','.join(event.names)}{renewal}{detail}")
    return lines


def record_host_renewals(records: Sequence[CertRecord], now: datetime | None = None) -> int:
    """Put the renewals the hosts' cron jobs made lately (as the expiry report read them) into the history.

    The history is opened only when there is something to record; an event already there is not added
    again. How many were added.
    """
    now = now or datetime.now(timezone.utc)
    events = []
    for record in records:
        status = record.renewal_status
        if record.disk is None or status is None or record.copy:
            continue
        event = host_renewal(record.host, record.site, record.disk.names, record.disk.not_before,
                             status_result=status.result, status_time=status.time, renewed=status.renewed, now=now)
        if event is not None:
            events.append(event)
    if not events:
        return 0
    history = History()
    try:
        return history.record_new(events)
    finally:
        history.close()
