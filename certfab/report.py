"""Certificate expiry report: classify each certificate and render it as table, JSON, CSV, HTML, Prometheus or mail."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from enum import Enum
from typing import TYPE_CHECKING, Any

from certfab.certs import CertInfo
from certfab.renewal_status import RenewalStatus, as_status
from certfab.templating import environment
from certfab.tlsprobe import ServedCert

if TYPE_CHECKING:  # drawn for people only; JSON, CSV and HTML need no rich
    from rich.table import Table

JSON_SCHEMA = "certfab.report/1"


class Status(str, Enum):
    """Row status, declared from most to least urgent."""

    EXPIRED = "expired"
    CRITICAL = "critical"
    MISMATCH = "mismatch"
    RENEWAL_FAILING = "renewal-failing"
    UNREACHABLE = "unreachable"
    WARN = "warn"
    OK = "ok"

    @property
    def urgency(self) -> int:
        """0 for the most urgent status, growing towards ok."""
        return _ORDER.index(self)

    def __str__(self) -> str:
        return self.value


_ORDER: tuple[Status, ...] = tuple(Status)
_PROBLEMS = frozenset(
    {Status.EXPIRED, Status.CRITICAL, Status.MISMATCH, Status.RENEWAL_FAILING, Status.UNREACHABLE}
)


@dataclass(frozen=True)
class Thresholds:
    """When a certificate becomes warn/critical: a share of its lifetime, or absolute days if given."""

    warn_fraction: float = 0.30
    critical_fraction: float = 0.15
    warn_days: float | None = None
    critical_days: float | None = None
    # cron runs the renewal twice a day: no status for this long means it is not running.
    stale_renewal_days: float = 3.0

    def __post_init__(self) -> None:
        if not 0 <= self.critical_fraction <= self.warn_fraction <= 1:
            raise ValueError("thresholds need 0 <= critical_fraction <= warn_fraction <= 1")
        if (
            self.warn_days is not None
            and self.critical_days is not None
            and self.critical_days > self.warn_days
        ):
            raise ValueError("thresholds need critical_days <= warn_days")

    def limit(self, status: Status) -> str:
        """The threshold of one status (warn or critical) in words: 'critical below 15% of lifetime left'."""
        days, fraction = (
            (self.critical_days, self.critical_fraction)
            if status is Status.CRITICAL
            else (self.warn_days, self.warn_fraction)
        )
        amount = f"{days:g} days" if days is not None else f"{fraction:.0%} of lifetime"
        return f"{status.value} below {amount} left"

    def text(self) -> str:
        """The thresholds in one readable line."""
        return f"{self.limit(Status.WARN)}, {self.limit(Status.CRITICAL)}"

    def describe(self) -> dict[str, float | None]:
        """The thresholds as plain data for reports."""
        return {
            "warn_fraction": self.warn_fraction,
            "critical_fraction": self.critical_fraction,
            "warn_days": self.warn_days,
            "critical_days": self.critical_days,
            "stale_renewal_days": self.stale_renewal_days,
        }


@dataclass(frozen=True)
class CertRecord:
    """Everything gathered about one certificate lineage on one host (or one unreachable host)."""

    host: str
    site: str
    domains: tuple[str, ...] = ()
    disk: CertInfo | None = None
    served: Mapping[str, ServedCert | str] = field(default_factory=dict)
    renewal_status: RenewalStatus | None = None
    cron_present: bool = True
    unreachable_error: str | None = None
    # A shared site (one certificate on several hosts): the host that issues it, and its certificate.
    issuer: str | None = None
    lineage: CertInfo | None = None
    # The certificate on disk is certfab's copy of a shared site's lineage, not a certbot lineage.
    copy: bool = False

    def __post_init__(self) -> None:
        # Given as status.json's mapping (tests, older callers): read it into the typed value.
        object.__setattr__(self, "renewal_status", as_status(self.renewal_status))


@dataclass(frozen=True)
class Row:
    """A record with its verdict: status, the reasons, and time left."""

    record: CertRecord
    status: Status
    notes: tuple[str, ...]
    days_left: float | None
    fraction_left: float | None


@dataclass(frozen=True)
class Report:
    """All rows of one run, most urgent first."""

    generated_at: datetime
    rows: tuple[Row, ...]
    thresholds: Thresholds = Thresholds()

    def counts(self) -> dict[str, int]:
        """Number of rows per status, every status present."""
        found = Counter(row.status for row in self.rows)
        return {status.value: found.get(status, 0) for status in Status}


def evaluate(record: CertRecord, now: datetime, thresholds: Thresholds = Thresholds()) -> Row:
    """Classify one record and explain why; the most urgent finding wins."""
    found: list[Status] = []
    notes: list[str] = []
    disk = record.disk
    days = disk.days_left(now) if disk else None
    fraction = disk.fraction_left(now) if disk else None

    if record.unreachable_error is not None:
        found.append(Status.UNREACHABLE)
        notes.append(f"host unreachable: {record.unreachable_error}")
    if disk is not None:
        expiry = _expiry_status(disk, now, thresholds)
        found.append(expiry)
        if expiry is Status.EXPIRED:
            notes.append(f"expired {_ago(-disk.days_left(now))} ago")
        elif expiry is not Status.OK:
            notes.append(
                f"{_ago(disk.days_left(now))} left, {disk.fraction_left(now):.0%} of its "
                f"{disk.lifetime.total_seconds() / 86400:.0f}-day lifetime ({thresholds.limit(expiry)})"
            )
    elif record.unreachable_error is None:
        found.append(Status.CRITICAL)
        notes.append("no certificate on disk for this site")

    # Names that serve the same other certificate share one note: one fault, one line.
    mismatched: dict[str, list[str]] = {}
    for domain in sorted(record.served):
        served = record.served[domain]
        if isinstance(served, ServedCert) and served.info is not None and disk is not None:
            if served.info.sha256 != disk.sha256:
                mismatched.setdefault(served.info.sha256, []).append(domain)
                continue
        status, note = _served_finding(domain, served)
        if status is not None:
            found.append(status)
        if note:
            notes.append(note)
    for domains in mismatched.values():
        other = record.served[domains[0]]
        assert isinstance(other, ServedCert) and other.info is not None and disk is not None
        found.append(Status.MISMATCH)
        notes.append(_mismatch_note(domains, other.info, disk))

    if record.issuer is not None:
        lagging = _lagging(record)
        if lagging:
            found.append(Status.MISMATCH)
            notes.append(lagging)
        notes.append("shared site: this host issues it" if record.issuer == record.host
                     else f"shared site: {record.issuer} issues it")
        if record.issuer == record.host and record.copy:
            notes.append("it serves the copy it took over: its cron renews the site once deploy-all has ordered "
                         "the next certificate (when this one is due)")

    if record.renewal_status is not None:
        status, note = _renewal_finding(record.renewal_status, now, thresholds)
        if status is not None:
            found.append(status)
        if note:
            notes.append(note)
    elif record.unreachable_error is None:
        notes.append("renewal has not run yet")

    if not record.cron_present and record.unreachable_error is None:
        found.append(Status.WARN)
        notes.append("no certfab cron line: certificates will not renew")

    status = min(found, key=lambda s: s.urgency) if found else Status.OK
    return Row(record, status, tuple(notes), days, fraction)


def _lagging(record: CertRecord) -> str | None:
    """A backend of a shared site whose copy or served certificate is not the issuer's lineage."""
    lineage = record.lineage
    if lineage is None or record.host == record.issuer:
        return None
    stale = sorted(d for d, served in record.served.items()
                   if isinstance(served, ServedCert) and served.info is not None and served.info.sha256 != lineage.sha256)
    if stale:
        return (f"lagging peer: {', '.join(stale)} serve {_short(_served_sha(record, stale[0]))}, not the lineage "
                f"{record.issuer} issued ({_short(lineage.sha256)}); `inv sync` brings it up to date")
    if record.disk is not None and record.disk.sha256 != lineage.sha256:
        return (f"lagging peer: its copy ({_short(record.disk.sha256)}) is not the lineage {record.issuer} issued "
                f"({_short(lineage.sha256)}); `inv sync` brings it up to date")
    return None


def _served_sha(record: CertRecord, domain: str) -> str:
    served = record.served[domain]
    return served.info.sha256 if isinstance(served, ServedCert) and served.info is not None else ""


def link_shared(records: Iterable[CertRecord], issuers: Mapping[str, str]) -> list[CertRecord]:
    """Tell each backend's record of a shared site (site -> issuing host) which host issues it and
    what its lineage holds, so that a lagging peer shows."""
    records = list(records)
    lineages = {r.site: r.disk for r in records if r.site in issuers and r.host == issuers[r.site]}
    return [replace(r, issuer=issuers[r.site], lineage=lineages.get(r.site)) if r.site in issuers else r
            for r in records]


def classify(record: CertRecord, now: datetime, thresholds: Thresholds = Thresholds()) -> Status:
    """The status of one record (see `evaluate` for the reasons)."""
    return evaluate(record, now, thresholds).status


def build_report(
    records: Iterable[CertRecord], now: datetime | None = None, thresholds: Thresholds = Thresholds()
) -> Report:
    """Evaluate every record and sort the rows by urgency, then by days left."""
    now = now or datetime.now(timezone.utc)
    rows = [evaluate(r, now, thresholds) for r in records]
    rows.sort(key=_sort_key)
    return Report(generated_at=now, rows=tuple(rows), thresholds=thresholds)


def exit_code(report: Report) -> int:
    """0 when everything is ok, 1 when something only warns, 2 for any real problem."""
    statuses = {row.status for row in report.rows}
    if statuses & _PROBLEMS:
        return 2
    if Status.WARN in statuses:
        return 1
    return 0


# --- classification helpers ------------------------------------------------------------------------


def _expiry_status(cert: CertInfo, now: datetime, t: Thresholds) -> Status:
    """Expired / critical / warn / ok from time left, relative to the lifetime unless days are set."""
    days = cert.days_left(now)
    if days <= 0:
        return Status.EXPIRED
    fraction = cert.fraction_left(now)
    critical = days < t.critical_days if t.critical_days is not None else fraction < t.critical_fraction
    if critical:
        return Status.CRITICAL
    warn = days < t.warn_days if t.warn_days is not None else fraction < t.warn_fraction
    return Status.WARN if warn else Status.OK


def _served_finding(domain: str, served: ServedCert | str) -> tuple[Status | None, str | None]:
    """A warning when the certificate served for one name could not be read (mismatches: see evaluate)."""
    if isinstance(served, str):
        return Status.WARN, f"{domain}: served certificate not read: {served}"
    if served.error is not None or served.info is None:
        return Status.WARN, f"{domain}: served certificate not read: {served.error or 'no certificate'}"
    return None, None


def _mismatch_note(domains: Sequence[str], served: CertInfo, disk: CertInfo) -> str:
    """Why names serve another certificate than the one on disk, in one line."""
    names = ", ".join(domains)
    if served.not_before < disk.not_before and set(served.names) == set(disk.names):
        return (
            f"{names}: renewed on disk but nginx was not reloaded: it serves the previous certificate "
            f"({_short(served.sha256)}, expires {served.not_after:%Y-%m-%d %H:%M}) instead of "
            f"{_short(disk.sha256)}"
        )
    return (
        f"{names}: serves another certificate ({_short(served.sha256)}, {served.issuer}, expires "
        f"{served.not_after:%Y-%m-%d %H:%M}) than the one on disk ({_short(disk.sha256)}): another "
        "server block or certificate path answers for this name"
    )


def _renewal_finding(
    status: RenewalStatus, now: datetime, t: Thresholds
) -> tuple[Status | None, str | None]:
    """Read the host's last renewal run from status.json."""
    result = status.result.lower()
    when = _parse_time(status.time)
    message = status.message.strip()
    if result == "failed":
        detail = [f"certbot exit {status.certbot_exit}"] if status.certbot_exit not in (None, 0) else []
        for key, value in (("nginx_test", status.nginx_test), ("reload", status.reload)):
            if value not in (None, "", "ok", "skipped"):
                detail.append(f"{key.replace('_', ' ')} {value}")
        if message:
            detail.append(message)
        at = f" at {when:%Y-%m-%d %H:%M} UTC" if when else ""
        return Status.RENEWAL_FAILING, f"last renewal failed{at}" + (
            f": {'; '.join(detail)}" if detail else ""
        )
    if when is not None and (now - when) > timedelta(days=t.stale_renewal_days):
        return Status.WARN, f"renewal has not run for {_ago((now - when).total_seconds() / 86400)}"
    if when is None:
        return None, "renewal status has no readable time"
    if result == "busy":
        held = f" (pid {status.holder.pid} since {status.holder.since})" if status.holder else ""
        return None, f"the last renewal run found another run holding the lock{held}"
    return None, None


def _parse_time(value: object) -> datetime | None:
    """An aware UTC datetime from an ISO 8601 string or a UNIX timestamp, else None."""
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, timezone.utc)
        if isinstance(value, str) and value:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _sort_key(row: Row) -> tuple[int, float, str, str]:
    """Urgency first, then least time left (rows without a certificate last), then names."""
    days = row.days_left if row.days_left is not None else float("inf")
    return (row.status.urgency, days, row.record.host, row.record.site)


def _short(fingerprint: str) -> str:
    """The first 16 hex digits of a fingerprint, enough to tell certificates apart."""
    return fingerprint[:16]


def _ago(days: float) -> str:
    """A rough duration: '3.2 days' or '5 hours'."""
    if days >= 1:
        return f"{days:.1f} days"
    return f"{max(days * 24, 0):.0f} hours"


def _iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, seconds precision."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# --- JSON / CSV ------------------------------------------------------------------------------------


def _cert_dict(info: CertInfo | None) -> dict[str, Any] | None:
    """A certificate as plain JSON data."""
    if info is None:
        return None
    return {
        "names": list(info.names),
        "issuer": info.issuer,
        "serial": info.serial,
        "not_before": _iso(info.not_before),
        "not_after": _iso(info.not_after),
        "lifetime_days": round(info.lifetime.total_seconds() / 86400, 3),
        "key_type": info.key_type,
        "sha256": info.sha256,
    }


def _served_dict(served: ServedCert | str, disk: CertInfo | None) -> dict[str, Any]:
    """What was served for one name, as plain JSON data."""
    if isinstance(served, str):
        return {"ok": False, "error": served, "sha256": None, "matches_disk": None, "not_after": None}
    info = served.info
    return {
        "ok": served.ok,
        "error": served.error,
        "sha256": info.sha256 if info else None,
        "matches_disk": (info.sha256 == disk.sha256) if (info and disk) else None,
        "not_after": _iso(info.not_after) if info else None,
    }


def row_dict(row: Row) -> dict[str, Any]:
    """One row as plain JSON data (the element type of the JSON report's `rows`)."""
    rec = row.record
    renewal = rec.renewal_status.to_json() if rec.renewal_status is not None else None
    return {
        "host": rec.host,
        "site": rec.site,
        "domains": list(rec.domains),
        "status": row.status.value,
        "notes": list(row.notes),
        "days_left": _round(row.days_left),
        "fraction_left": _round(row.fraction_left, 4),
        "certificate": _cert_dict(rec.disk),
        "served": {d: _served_dict(rec.served[d], rec.disk) for d in sorted(rec.served)},
        "renewal": renewal,
        "cron_present": rec.cron_present,
        "unreachable_error": rec.unreachable_error,
        "issuer": rec.issuer,
    }


def to_json(report: Report) -> str:
    """The report as stable, indented JSON (schema `certfab.report/1`)."""
    doc = {
        "schema": JSON_SCHEMA,
        "generated_at": _iso(report.generated_at),
        "exit_code": exit_code(report),
        "thresholds": report.thresholds.describe(),
        "counts": report.counts(),
        "rows": [row_dict(row) for row in report.rows],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n"


CSV_COLUMNS = (
    "host",
    "site",
    "status",
    "days_left",
    "fraction_left",
    "not_before",
    "not_after",
    "names",
    "issuer",
    "key_type",
    "serial",
    "sha256",
    "served_mismatch",
    "renewal_result",
    "renewal_time",
    "cron_present",
    "notes",
)


def to_csv(report: Report) -> str:
    """The report as CSV with a header line; lists are space- or '; '-joined."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in report.rows:
        rec, disk = row.record, row.record.disk
        mismatched = [
            d
            for d, s in sorted(rec.served.items())
            if isinstance(s, ServedCert) and s.info and disk and s.info.sha256 != disk.sha256
        ]
        renewal = rec.renewal_status
        values: list[object] = [
            rec.host,
            rec.site,
            row.status.value,
            "" if row.days_left is None else f"{row.days_left:.3f}",
            "" if row.fraction_left is None else f"{row.fraction_left:.4f}",
            _iso(disk.not_before) if disk else "",
            _iso(disk.not_after) if disk else "",
            " ".join(disk.names) if disk else "",
            disk.issuer if disk else "",
            disk.key_type if disk else "",
            disk.serial if disk else "",
            disk.sha256 if disk else "",
            " ".join(mismatched),
            renewal.result if renewal is not None else "",
            (renewal.time or "") if renewal is not None else "",
            "yes" if rec.cron_present else "no",
            "; ".join(row.notes),
        ]
        writer.writerow([_csv_safe(v) for v in values])
    return out.getvalue()


def _csv_safe(value: object) -> str:
    """Neutralise text a spreadsheet would run as a formula (it may come from a remote host)."""
    text = "" if value is None else str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _is_number(text):
        return "'" + text
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- rich table ------------------------------------------------------------------------------------

STATUS_STYLES: dict[Status, str] = {
    Status.EXPIRED: "bold white on red",
    Status.CRITICAL: "bold red",
    Status.MISMATCH: "bold magenta",
    Status.RENEWAL_FAILING: "red",
    Status.UNREACHABLE: "bold yellow",
    Status.WARN: "yellow",
    Status.OK: "green",
}


def summary_line(report: Report) -> str:
    """Counts per status (most urgent first), the thresholds and the exit code, in one line."""
    counts = ", ".join(f"{n} {status}" for status, n in report.counts().items() if n) or "no certificates"
    return f"{counts} · {report.thresholds.text()} · exit {exit_code(report)}"


def to_rich_table(report: Report) -> Table:
    """The report as a rich Table for a person: most urgent first, coloured by status, reasons last."""
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=f"certificates at {report.generated_at.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC",
        caption=summary_line(report),
        caption_justify="left",
    )
    table.add_column("status", no_wrap=True)
    table.add_column("host", no_wrap=True)
    table.add_column("site", no_wrap=True)
    table.add_column("expires (UTC)", no_wrap=True)
    table.add_column("left", justify="right", no_wrap=True)
    table.add_column("issuer", max_width=32)
    table.add_column("notes", ratio=1, min_width=20)
    for row in report.rows:
        rec, disk = row.record, row.record.disk
        style = STATUS_STYLES[row.status]
        left = ""
        if row.days_left is not None:
            left = f"{row.days_left:.1f} d"
            if row.fraction_left is not None and row.days_left > 0:
                left += f" ({row.fraction_left:.0%})"
        # Text() never interprets markup, so names and remote messages are shown as they are.
        table.add_row(
            Text(row.status.value, style=style),
            Text(rec.host),
            Text(rec.site) if rec.site else Text("-", style="dim"),
            Text(f"{disk.not_after:%Y-%m-%d %H:%M}" if disk else ""),
            Text(left, style=style),
            Text(disk.issuer if disk else ""),
            Text("\n".join(row.notes), style="dim" if row.status is Status.OK else ""),
        )
    return table


# --- HTML ------------------------------------------------------------------------------------------

STATUS_COLOURS: dict[Status, str] = {
    Status.EXPIRED: "#7f1d1d",
    Status.CRITICAL: "#dc2626",
    Status.MISMATCH: "#a21caf",
    Status.RENEWAL_FAILING: "#ea580c",
    Status.UNREACHABLE: "#6b7280",
    Status.WARN: "#ca8a04",
    Status.OK: "#16a34a",
}

_CHART_WIDTH = 1000
_LABEL_WIDTH = 260
_BAR_HEIGHT = 18
_BAR_GAP = 8
_AXIS_HEIGHT = 30


def timeline(report: Report) -> dict[str, Any]:
    """Geometry of the SVG timeline: one bar per certificate from not_before to not_after."""
    certs = [row for row in report.rows if row.record.disk is not None]
    now = report.generated_at
    plot_width = _CHART_WIDTH - _LABEL_WIDTH - 20
    if certs:
        start = min(min(r.record.disk.not_before for r in certs if r.record.disk), now)
        end = max(max(r.record.disk.not_after for r in certs if r.record.disk), now)
    else:
        start, end = now - timedelta(days=1), now + timedelta(days=1)
    pad = (end - start) * 0.02 or timedelta(hours=1)
    start, end = start - pad, end + pad
    span = (end - start).total_seconds()

    def x(when: datetime) -> float:
        return round(_LABEL_WIDTH + (when - start).total_seconds() / span * plot_width, 1)

    bars = []
    for i, row in enumerate(certs):
        disk = row.record.disk
        assert disk is not None
        y = _AXIS_HEIGHT + i * (_BAR_HEIGHT + _BAR_GAP)
        x0, x1 = x(disk.not_before), x(disk.not_after)
        bars.append(
            {
                "x": x0,
                "y": y,
                "width": max(round(x1 - x0, 1), 1.0),
                "height": _BAR_HEIGHT,
                "label": f"{row.record.host} / {row.record.site}",
                "label_y": y + _BAR_HEIGHT - 4,
                "status": row.status.value,
                "colour": STATUS_COLOURS[row.status],
                "tooltip": (
                    f"{row.record.host} / {row.record.site}: {row.status.value}, "
                    f"{_iso(disk.not_before)} to {_iso(disk.not_after)}"
                ),
            }
        )
    height = _AXIS_HEIGHT + max(len(certs), 1) * (_BAR_HEIGHT + _BAR_GAP) + 10
    ticks = []
    for k in range(1, 6):  # inner ticks only, so edge labels never spill out of the chart
        when = start + (end - start) * (k / 6)
        ticks.append({"x": x(when), "label": f"{when:%Y-%m-%d}"})
    return {
        "width": _CHART_WIDTH,
        "height": height,
        "label_width": _LABEL_WIDTH,
        "plot_right": _LABEL_WIDTH + plot_width,
        "bars": bars,
        "ticks": ticks,
        "today_x": x(now),
        "today_label": f"today {now:%Y-%m-%d}",
        "today_anchor": "end" if x(now) > _LABEL_WIDTH + plot_width * 0.8 else "start",
    }


def to_html(report: Report) -> str:
    """A single self-contained HTML page: summary, SVG timeline and the table (no external assets)."""
    # The environment autoescapes *.html.j2 (and leaves out the guard meant for host files).
    template = environment().get_template("report.html.j2")
    rows = []
    for row in report.rows:
        data = row_dict(row)
        data["colour"] = STATUS_COLOURS[row.status]
        status = row.record.renewal_status
        when = _parse_time(status.time) if status is not None else None
        data["renewal_when"] = f"{when:%Y-%m-%d %H:%M}" if when else ""
        rows.append(data)
    return template.render(
        generated_at=_iso(report.generated_at),
        counts=report.counts(),
        exit_code=exit_code(report),
        thresholds_text=report.thresholds.text(),
        colours={s.value: c for s, c in STATUS_COLOURS.items()},
        rows=rows,
        chart=timeline(report),
    )


# --- Prometheus ------------------------------------------------------------------------------------

_METRICS: tuple[tuple[str, str], ...] = (
    ("certfab_certificate_expiry_timestamp_seconds", "Certificate notAfter as a UNIX timestamp."),
    ("certfab_certificate_days_left", "Days until the certificate expires (negative once expired)."),
    ("certfab_certificate_lifetime_fraction_left", "Share of the certificate lifetime left (0..1)."),
    ("certfab_certificate_status", "Report status of the certificate (1 for the current status)."),
    ("certfab_renewal_last_result", "Result of the host's last renewal run (1 for the current result)."),
    ("certfab_renewal_last_run_timestamp_seconds", "Time of the host's last renewal run."),
    ("certfab_host_up", "Whether the host could be read (1) or not (0)."),
    ("certfab_report_generated_timestamp_seconds", "When this report was generated."),
)


def to_prometheus(report: Report) -> str:
    """The report in node_exporter textfile format (HELP/TYPE, all gauges)."""
    samples: dict[str, list[str]] = {name: [] for name, _ in _METRICS}

    def add(metric: str, labels: Sequence[tuple[str, str]], value: float) -> None:
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels)
        samples[metric].append(
            f"{metric}{{{text}}} {_number(value)}" if text else f"{metric} {_number(value)}"
        )

    hosts: dict[str, bool] = {}
    renewals: dict[str, RenewalStatus] = {}
    for row in report.rows:
        rec = row.record
        hosts[rec.host] = hosts.get(rec.host, True) and rec.unreachable_error is None
        if rec.renewal_status is not None:
            renewals.setdefault(rec.host, rec.renewal_status)
        ident = (("host", rec.host), ("site", rec.site))
        if rec.disk is not None and row.days_left is not None:
            add("certfab_certificate_expiry_timestamp_seconds", ident, rec.disk.not_after.timestamp())
            add("certfab_certificate_days_left", ident, round(row.days_left, 3))
            add("certfab_certificate_lifetime_fraction_left", ident, round(row.fraction_left or 0.0, 4))
        add("certfab_certificate_status", (*ident, ("status", row.status.value)), 1)
    for host, status in sorted(renewals.items()):
        add(
            "certfab_renewal_last_result",
            (("host", host), ("result", status.result)),
            1,
        )
        when = _parse_time(status.time)
        if when is not None:
            add("certfab_renewal_last_run_timestamp_seconds", (("host", host),), when.timestamp())
    for host, up in sorted(hosts.items()):
        add("certfab_host_up", (("host", host),), 1 if up else 0)
    add("certfab_report_generated_timestamp_seconds", (), report.generated_at.timestamp())

    lines: list[str] = []
    for name, help_text in _METRICS:
        if samples[name]:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples[name]]
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    """Escape a label value for the Prometheus text format."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """A sample value: integers without a fraction, others as shortest float text."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


# --- mail ------------------------------------------------------------------------------------------


def digest_subject(report: Report) -> str:
    """One-line summary used as the mail subject."""
    counts = report.counts()
    total = len(report.rows)
    problems = sum(counts[s.value] for s in Status if s in _PROBLEMS)
    warns = counts[Status.WARN.value]
    if not total:
        return "certfab: no certificates in the report"
    if not problems and not warns:
        return f"certfab: all {total} certificates ok"
    parts = []
    if problems:
        parts.append(f"{problems} problem{'s' if problems != 1 else ''}")
    if warns:
        parts.append(f"{warns} warning{'s' if warns != 1 else ''}")
    parts.append(f"{counts[Status.OK.value]} ok")
    return "certfab: " + ", ".join(parts)


def digest_text(report: Report) -> str:
    """Plain-text digest: counts, then one block per non-ok row, then the ok rows in one line each."""
    lines = [f"certfab certificate report, {_iso(report.generated_at)}", ""]
    counts = report.counts()
    lines.append("  ".join(f"{name}: {n}" for name, n in counts.items() if n) or "no certificates")
    lines.append("")
    for row in report.rows:
        rec, disk = row.record, row.record.disk
        head = (
            f"[{row.status.value.upper()}] {rec.host} / {rec.site}"
            if rec.site
            else f"[{row.status.value.upper()}] {rec.host}"
        )
        if disk is not None and row.days_left is not None:
            head += f": {row.days_left:.1f} days left, expires {disk.not_after:%Y-%m-%d %H:%M} UTC"
        lines.append(head)
        if row.status is not Status.OK:
            if disk is not None:
                lines.append(f"    names: {' '.join(disk.names)}")
            lines += [f"    - {note}" for note in row.notes]
    lines += ["", f"exit code: {exit_code(report)}", ""]
    return "\n".join(lines)


def digest_mail(report: Report, to: str | Sequence[str], sender: str) -> EmailMessage:
    """A plain-text e-mail summarising the report, ready for smtplib's send_message."""
    msg = EmailMessage()
    msg["Subject"] = digest_subject(report)
    msg["From"] = sender
    msg["To"] = to if isinstance(to, str) else ", ".join(to)
    msg["Date"] = format_datetime(report.generated_at.astimezone(timezone.utc))
    msg.set_content(digest_text(report))
    return msg
