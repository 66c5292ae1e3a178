"""The fleet's rate-limit guard, decided from the order history (pure): what may be ordered now, and why not.

Modelled on Let's Encrypt's limits: new certificates per registered domain and certificates per exact set
of names, each over a sliding 7-day window; renewals of an existing lineage do not count against the first
(as at Let's Encrypt). After failed validations of a name, no new order for it until a back-off has passed
(1 min, 10 min, 100 min, then daily, as the integration guide recommends).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Literal

WINDOW = timedelta(days=7)
BACKOFF = (timedelta(minutes=1), timedelta(minutes=10), timedelta(minutes=100), timedelta(days=1))
DEFAULT_PER_REGISTERED_DOMAIN = 50
DEFAULT_PER_NAME_SET = 5

EventKind = Literal["order", "issued", "failed-validation", "refused"]


@dataclass(frozen=True)
class Limits:
    """Certificates allowed per 7 days: new ones per registered domain, and any per exact set of names."""

    per_registered_domain: int = DEFAULT_PER_REGISTERED_DOMAIN
    per_name_set: int = DEFAULT_PER_NAME_SET


@dataclass(frozen=True)
class Event:
    """One entry of the history: an order, an issuance, a failed validation of a name, or a refusal."""

    time: datetime
    kind: EventKind
    host: str
    site: str
    names: tuple[str, ...]  # sorted; a failed validation names the one name that failed
    renewal: bool = False
    detail: str = ""


@dataclass(frozen=True)
class Order:
    """An order certfab is about to make for a site."""

    host: str
    site: str
    names: tuple[str, ...]
    renewal: bool


@lru_cache(maxsize=1)
def _suffixes() -> object:
    """The Public Suffix List shipped with the publicsuffixlist package (offline, loaded once)."""
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def registered_domain(name: str) -> str:
    """The name's registered domain (eTLD+1) by the Public Suffix List; a bare suffix stands for itself."""
    plain = name.lower().rstrip(".").removeprefix("*.")
    private = _suffixes().privatesuffix(plain)  # type: ignore[attr-defined]
    return str(private) if private else plain


def registered_domains(names: Iterable[str]) -> tuple[str, ...]:
    """The distinct registered domains of a set of names, sorted."""
    return tuple(sorted({registered_domain(name) for name in names}))


def name_set(names: Iterable[str]) -> tuple[str, ...]:
    """A set of names as the history keeps it: lower case, sorted, each once."""
    return tuple(sorted({name.lower().rstrip(".") for name in names}))


def _frees_at(times: Sequence[datetime], limit: int) -> datetime:
    """When enough of these (in-window) events leave the window for one more to fit under the limit."""
    ordered = sorted(times)
    return ordered[len(ordered) - limit] + WINDOW


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def backoff_until(failures: Sequence[datetime]) -> datetime | None:
    """The end of the back-off after these consecutive failed validations of a name (None: none)."""
    if not failures:
        return None
    step = BACKOFF[min(len(failures), len(BACKOFF)) - 1]
    return max(failures) + step


def refusal(order: Order, history: Sequence[Event], pending: Sequence[Order], limits: Limits, now: datetime,
            *, force: bool) -> str | None:
    """Why the order must not be made now (one line), or None when it fits.

    history holds the recorded events; pending the orders this run admitted and has not recorded yet.
    """
    names = name_set(order.names)
    since = now - WINDOW
    issued = [e for e in history if e.kind == "issued" and e.time > since]
    where = f"{order.host}: site {order.site}"
    if not order.renewal:
        for domain in registered_domains(names):
            times = [e.time for e in issued if not e.renewal and domain in registered_domains(e.names)]
            times += [now for p in pending if not p.renewal and domain in registered_domains(p.names)]
            if len(times) >= limits.per_registered_domain:
                return (f"{where}: refused: registered domain {domain} has {len(times)} new certificates in the "
                        f"last 7 days (limit {limits.per_registered_domain}); the window frees up at "
                        f"{_when(_frees_at(times, limits.per_registered_domain))}")
    same = [e.time for e in issued if e.names == names] + [now for p in pending if name_set(p.names) == names]
    if len(same) >= limits.per_name_set:
        return (f"{where}: refused: {len(same)} certificates for exactly {', '.join(names)} in the last 7 days "
                f"(limit {limits.per_name_set}); the window frees up at "
                f"{_when(_frees_at(same, limits.per_name_set))}")
    if force:
        return None
    for name in names:
        failures = consecutive_failures(name, history)
        until = backoff_until(failures)
        if until is not None and until > now:
            return (f"{where}: refused: validation of {name} failed {len(failures)} time(s), last at "
                    f"{_when(max(failures))}; no new order before {_when(until)} (--force orders anyway)")
    return None


def consecutive_failures(name: str, history: Sequence[Event]) -> list[datetime]:
    """Times of the failed validations of a name since it was last issued."""
    failures: list[datetime] = []
    for event in sorted(history, key=lambda e: e.time):
        if name not in event.names:
            continue
        if event.kind == "issued":
            failures = []
        elif event.kind == "failed-validation":
            failures.append(event.time)
    return failures


# How far a renewed certificate's notBefore may be from the time the host's renewal run says it ran.
RENEWAL_CLOCK_SLACK = timedelta(days=1)
# Renewals older than this decide nothing (the longest window is 7 days).
RENEWAL_LOOKBACK = timedelta(days=8)


def host_renewal(host: str, site: str, names: Iterable[str], not_before: datetime, *, status_result: str,
                 status_time: str | None, renewed: Sequence[str], now: datetime) -> Event | None:
    """A renewal the host's cron job made, as an `issued` event of the history, or None.

    Host data decides nothing alone: the status file must say its last run renewed this lineage, and the
    certificate on disk must have been issued within a day of that run. The event's time is the
    certificate's own notBefore, so reading the same host twice yields the same event.
    """
    if status_result != "renewed" or site not in renewed or not status_time:
        return None
    try:
        ran = datetime.fromisoformat(status_time.replace("Z", "+00:00"))
    except ValueError:
        return None
    if ran.tzinfo is None or abs(not_before - ran) > RENEWAL_CLOCK_SLACK or not_before < now - RENEWAL_LOOKBACK:
        return None
    return Event(not_before, "issued", host, site, name_set(names), renewal=True,
                 detail="renewed by the host's cron job")
