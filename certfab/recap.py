"""The end-of-run recap: one line per host, as a table for people or JSON for programs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from certfab.outcome import HostOutcome
from certfab.reports_out import tighten_private_files, write_new_text
from certfab.textsafe import for_terminal

if TYPE_CHECKING:  # the executor's result type; importing it would load the SSH layer
    from rich.table import Table

    from certfab.bootstrap import BootstrapResult


HostStatus = Literal["ok", "changed", "would change", "failed", "not started"]


def host_status(outcome: HostOutcome[BootstrapResult]) -> HostStatus:
    """ok, changed, would change, failed or not started."""
    if not outcome.started:
        return "not started"
    if outcome.failed:
        return "failed"
    assert outcome.value is not None
    if outcome.value.planned:
        return "would change" if outcome.value.changed else "ok"
    return "changed" if outcome.value.changed else "ok"


@dataclass(frozen=True)
class RecapRow:
    """One host's line of a bootstrap, plan or deploy-all recap."""

    host: str
    status: HostStatus
    changes: tuple[str, ...]  # what changed, or in check mode what would change
    done: tuple[str, ...]  # what this run did change on the host (empty in check mode)
    certificates: Mapping[str, str]
    warnings: tuple[str, ...]
    error: str | None
    seconds: float
    remote_commands: int

    @classmethod
    def of(cls, outcome: HostOutcome[BootstrapResult]) -> RecapRow:
        value = outcome.value
        return cls(
            host=outcome.host,
            status=host_status(outcome),
            changes=tuple(value.changes) if value else (),
            done=tuple(value.applied) if value and not value.planned else (),
            certificates=dict(value.certificates) if value else {},
            warnings=tuple(value.warnings) if value else (),
            error=" ".join(outcome.error.split()) if outcome.error else None,
            seconds=round(outcome.seconds, 2),
            remote_commands=outcome.commands,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host, "status": self.status, "changes": list(self.changes), "done": list(self.done),
            "certificates": dict(self.certificates), "warnings": list(self.warnings), "error": self.error,
            "seconds": self.seconds, "remote_commands": self.remote_commands,
        }


def recap_rows(outcomes: list[HostOutcome[BootstrapResult]]) -> list[dict[str, Any]]:
    """One JSON-ready row per host (the run log's and --json's element)."""
    return [RecapRow.of(outcome).to_json() for outcome in outcomes]


def fleet_exit_code(outcomes: list[HostOutcome[Any]], *, interrupted: bool) -> int:
    """130 after Ctrl-C; else the highest exit code of a failed host (a refused key or option, 2,
    outranks a failed host, 1), 0 when every host succeeded."""
    if interrupted:
        return 130
    return max((o.exit_code or 1 for o in outcomes if o.failed), default=0)


def recap_table(rows: list[dict[str, Any]], title: str) -> Table:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    for column in ("host", "status", "certificates", "details"):
        table.add_column(column)
    colours = {"ok": "green", "changed": "yellow", "would change": "yellow", "failed": "red", "not started": "dim"}
    for row in rows:
        certs = ", ".join(f"{k} {v}" for k, v in sorted(row["certificates"].items())) or "-"
        if row["error"]:
            done = row.get("done", [])
            details = row["error"] + (f" (done before the failure: {'; '.join(done)})" if done else "")
        elif row["changes"]:
            details = "; ".join(row["changes"][:4]) + (f" (+{len(row['changes']) - 4} more)" if len(row["changes"]) > 4 else "")
        else:
            details = "no change"
        status = row["status"]
        # Host output such as nginx's "[emerg]" must show as it is, not be read as markup.
        table.add_row(row["host"], f"[{colours.get(status, 'white')}]{status}[/]", escape(for_terminal(certs)),
                      escape(for_terminal(details)))
    return table


def write_run_log(rows: list[dict[str, Any]], kind: str, directory: Path = Path("reports"),
                  meta: dict[str, Any] | None = None) -> Path:
    """Keep a JSON log of the run under reports/ (mode 0600, never overwriting another run's log)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    document = {"kind": kind, "time": stamp, **(meta or {}), "hosts": rows}
    text = json.dumps(document, indent=2) + "\n"
    for attempt in range(1000):
        path = directory / (f"{kind}-{stamp}.json" if attempt == 0 else f"{kind}-{stamp}-{attempt}.json")
        if write_new_text(path, text):
            tighten_private_files(directory)
            return path
    raise OSError(f"{directory}: cannot create a new run log for {kind}-{stamp}")
