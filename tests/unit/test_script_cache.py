"""Rendered fast-path scripts kept between runs: the same text as a fresh render, never a stale or
foreign one, and a run that finds them loads no Jinja."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from freshrun import outputs_of_runs

from certfab import opstate, remote_scripts
from certfab.facts import REPORT_SCRIPT, report_context
from certfab.remote_scripts import CACHED_SCRIPTS, render_script
from certfab.templating import UnsafeValueError, trusted

NONCE = "0123456789abcdef"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("CERTFAB_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("CERTFAB_NO_CACHE", raising=False)
    yield tmp_path / "state"


def entries(state: Path) -> list[Path]:
    directory = state / "cache" / "scripts"
    return sorted(p for p in directory.iterdir() if not p.name.startswith(".")) if directory.is_dir() else []


def fresh(name: str, **values: object) -> str:
    """What Jinja renders, with no cache involved."""
    return remote_scripts._render(name, {**values, "root": str(values.get("root", ""))})


def probe_values(now: int) -> dict[str, object]:
    return {"probe": True, "stamp_key": "k" * 64, "stamp_file": "/var/lib/certfab/stamp", "stamp_version": "2",
            "empty_md5": "d41d8cd98f00b204e9800998ecf8427e", "watched": ["/etc/nginx"], "now": now,
            "journal": "/var/lib/certfab/journal", "status_file": "/var/lib/certfab/status.json",
            "runtime": "docker", "image": "certbot/certbot:v5.8.0", "owned_globs": [],
            "secret_dir": "/etc/certfab/dns", "nginx": False}


def test_a_kept_script_is_exactly_what_jinja_renders_with_this_runs_nonce_and_time(state: Path) -> None:
    first = render_script("facts.sh.j2", nonce=NONCE, **probe_values(1700000000))
    assert len(entries(state)) == 1
    second = render_script("facts.sh.j2", nonce="fedcba9876543210", **probe_values(1800000000))
    assert len(entries(state)) == 1  # found, not rendered again
    assert first == fresh("facts.sh.j2", nonce=NONCE, **probe_values(1700000000))
    assert second == fresh("facts.sh.j2", nonce="fedcba9876543210", **probe_values(1800000000))
    assert "fedcba9876543210" in second and "-gt 1800000000 ]" in second and "certfab" + "nonce" not in second


def test_other_values_are_another_entry(state: Path) -> None:
    render_script("facts.sh.j2", nonce=NONCE, **probe_values(1))
    render_script("facts.sh.j2", nonce=NONCE, **{**probe_values(1), "stamp_key": "j" * 64})
    render_script("facts.sh.j2", nonce=NONCE, root="/sandbox", **probe_values(1))
    assert len(entries(state)) == 3


def test_a_trusted_value_and_a_plain_one_are_not_the_same_entry(state: Path) -> None:
    values = {**probe_values(1), "runtime": trusted("docker")}
    render_script("facts.sh.j2", nonce=NONCE, **values)
    render_script("facts.sh.j2", nonce=NONCE, **probe_values(1))
    assert len(entries(state)) == 2


def test_an_unsafe_value_is_refused_as_jinja_would_refuse_it(state: Path) -> None:
    with pytest.raises(UnsafeValueError):
        fresh("facts.sh.j2", nonce=NONCE, **probe_values("1;reboot"))  # type: ignore[arg-type]
    for _ in range(2):  # found in the cache the second time, and still refused
        with pytest.raises(UnsafeValueError):
            render_script("facts.sh.j2", nonce=NONCE, **probe_values("1;reboot"))  # type: ignore[arg-type]


def test_only_scripts_without_secrets_are_kept(state: Path) -> None:
    assert CACHED_SCRIPTS == {"facts.sh.j2", "report.sh.j2"}
    render_script("hostlock.sh.j2", nonce=NONCE, state_dir="/var/lib/certfab", lock_file="/var/lib/certfab/lock",
                  owner_file="/var/lib/certfab/owner", wait_seconds=1, run_id="run")
    assert entries(state) == []


def test_an_entry_someone_else_could_have_written_is_not_used(state: Path) -> None:
    render_script(REPORT_SCRIPT, nonce=NONCE, **report_context())
    [entry] = entries(state)
    entry.write_bytes(entry.read_bytes().replace(b"emit done", b"reboot; emit done"))
    entry.chmod(0o644)
    assert "reboot" not in render_script(REPORT_SCRIPT, nonce=NONCE, **report_context())
    (state / "cache").chmod(0o777)
    assert "reboot" not in render_script(REPORT_SCRIPT, nonce=NONCE, **report_context())


def test_a_damaged_entry_is_rendered_again(state: Path) -> None:
    render_script(REPORT_SCRIPT, nonce=NONCE, **report_context())
    [entry] = entries(state)
    entry.write_bytes(b"not json\n" + entry.read_bytes())
    assert render_script(REPORT_SCRIPT, nonce=NONCE, **report_context()) == fresh(
        REPORT_SCRIPT, nonce=NONCE, **report_context())


def test_certfab_no_cache_turns_it_off(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTFAB_NO_CACHE", "1")
    render_script(REPORT_SCRIPT, nonce=NONCE, **report_context())
    assert entries(state) == []


def test_unused_entries_are_pruned(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    render_script(REPORT_SCRIPT, nonce=NONCE, **report_context())
    [old] = entries(state)
    os.utime(old, (0, 0))
    monkeypatch.setattr(opstate, "_PRUNED", set())
    render_script("facts.sh.j2", nonce=NONCE, **probe_values(1))
    assert old not in entries(state) and len(entries(state)) == 1


def test_a_run_that_finds_its_scripts_loads_no_jinja(state: Path) -> None:
    code = (
        "import sys\n"
        "from certfab.facts import REPORT_SCRIPT, report_context\n"
        "from certfab.remote_scripts import render_script\n"
        "render_script(REPORT_SCRIPT, nonce='0123456789abcdef', **report_context())\n"
        "print('jinja2' in sys.modules)\n"
    )
    assert outputs_of_runs(code, state) == ["True", "False"]
