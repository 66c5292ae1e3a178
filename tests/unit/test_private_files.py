"""Run logs and reports hold host text (crontab lines can carry credentials): they are 0600 from the start."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from certfab import reports_out
from certfab.recap import write_run_log
from certfab.report import build_report, to_json
from certfab.reports_out import save_report, write_text


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """Umask 0: the modes must come from certfab, not from a careful shell."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def modes_before_visible(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Modes of files at the moment they get their final name (rename or link)."""
    seen: list[int] = []

    def watching(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(source: str | Path, target: str | Path, *args: Any, **kwargs: Any) -> Any:
            seen.append(mode(Path(source)))
            return real(source, target, *args, **kwargs)
        return call

    monkeypatch.setattr(reports_out.os, "replace", watching(os.replace))
    monkeypatch.setattr(reports_out.os, "link", watching(os.link))
    return seen


def test_write_text_creates_a_private_file(tmp_path: Path, modes_before_visible: list[int]) -> None:
    target = tmp_path / "report.html"
    write_text(target, "<p>web1: 0 3 * * * curl -u admin:secret https://example.net</p>\n")
    assert mode(target) == 0o600
    assert modes_before_visible == [0o600]  # never visible with a wider mode, not chmod'ed afterwards
    assert target.read_text().startswith("<p>web1:")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_write_text_tightens_a_wider_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.prom"
    target.write_text("old\n")
    target.chmod(0o644)
    write_text(target, "certfab_certificate_days_left 12\n")
    assert mode(target) == 0o600
    assert target.read_text() == "certfab_certificate_days_left 12\n"


def test_write_text_creates_missing_directories_0700(tmp_path: Path) -> None:
    target = tmp_path / "out" / "html" / "report.html"
    write_text(target, "x")
    assert mode(tmp_path / "out") == 0o700 and mode(tmp_path / "out" / "html") == 0o700
    assert mode(target) == 0o600


def test_save_report_files_are_private(tmp_path: Path, modes_before_visible: list[int]) -> None:
    reports = tmp_path / "reports"
    report = build_report([])
    saved = save_report(report, reports)
    assert mode(reports) == 0o700
    assert saved.name.startswith("expiry-") and saved.suffix == ".json"
    assert {p.name: mode(p) for p in reports.iterdir()} == {saved.name: 0o600, "latest.json": 0o600}
    assert modes_before_visible == [0o600, 0o600]
    assert json.loads((reports / "latest.json").read_text()) == json.loads(to_json(report))


def test_save_report_tightens_older_reports_but_leaves_the_directory(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir(mode=0o755)
    older = reports / "expiry-20260101T000000Z.json"
    older.write_text("{}\n")
    older.chmod(0o644)
    notes = reports / "README.txt"
    notes.write_text("the operator's own file\n")
    notes.chmod(0o644)
    save_report(build_report([]), reports)
    assert mode(older) == 0o600
    assert mode(notes) == 0o644  # not certfab's
    assert mode(reports) == 0o755  # the operator's directory, as they made it


def test_run_log_is_private(tmp_path: Path, modes_before_visible: list[int]) -> None:
    rows = [{"host": "web1", "warnings": ["crontab: 0 3 * * * backup --password=hunter2"]}]
    log = write_run_log(rows, "bootstrap", tmp_path / "reports")
    assert mode(tmp_path / "reports") == 0o700
    assert mode(log) == 0o600
    assert modes_before_visible == [0o600]
    assert json.loads(log.read_text())["hosts"] == rows
    assert [p.name for p in (tmp_path / "reports").iterdir()] == [log.name]  # no temp file left


def test_run_logs_never_overwrite_and_older_logs_are_tightened(tmp_path: Path) -> None:
    older = tmp_path / "deploy-all-20260101T000000Z.json"
    older.write_text("{}\n")
    older.chmod(0o644)
    first = write_run_log([{"host": "a"}], "deploy-all", tmp_path)
    second = write_run_log([{"host": "b"}], "deploy-all", tmp_path)
    assert first != second
    assert json.loads(first.read_text())["hosts"] == [{"host": "a"}]
    assert {mode(p) for p in (first, second, older)} == {0o600}


def test_run_log_without_hard_links_is_still_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(source: str | Path, target: str | Path) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(reports_out.os, "link", no_links)
    log = write_run_log([{"host": "a"}], "plan", tmp_path)
    assert mode(log) == 0o600
    assert json.loads(log.read_text())["kind"] == "plan"
    assert [p.name for p in tmp_path.iterdir()] == [log.name]
