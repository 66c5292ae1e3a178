"""kill -9 at every step of apply, commit and recovery: the next run's recovery always leaves every
file all-old or all-new, byte for byte, and no journal, staging area or hidden file behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from certfab.protocol import Reply
from certfab.remote_scripts import run_local
from certfab.transaction import (
    ABSENT,
    FileWrite,
    apply_context,
    commit_context,
    rollback_context,
    text_sha256,
)

RUN = "certfab-20260101T000000Z-0123abcd"
KILLED = -9
SITE = "/etc/nginx/sites-available/it's a $(site)"
OTHER = "/etc/nginx/sites-available/other\nsite"
NEW = "/etc/nginx/certfab/new dir/acme-challenge.conf"
OLD = {SITE: "server { listen 80; }\n", OTHER: "server { listen 8080; }\n"}
FIRST = {SITE: "server { include acme; }\n", OTHER: "server { listen 8080; include acme; }\n", NEW: "location {}\n"}
SECOND = {SITE: "server { listen 443 ssl; }\n", NEW: "location { }\n"}


def host(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def sandbox(base: Path) -> Path:
    root = base / "root"
    (root / "var/lib/certfab").mkdir(parents=True)
    (root / "var/lib/certfab/lock.owner").write_text(RUN + "\n")
    host(root, SITE).parent.mkdir(parents=True)
    for path, text in OLD.items():
        host(root, path).write_text(text)
    return root


def state(root: Path) -> dict[str, str | None]:
    """Every file of the test as its text, or None when it does not exist."""
    paths = OLD.keys() | FIRST.keys()
    return {p: host(root, p).read_text() if host(root, p).exists() else None for p in paths}


def all_old() -> dict[str, str | None]:
    return {p: OLD.get(p) for p in OLD.keys() | FIRST.keys()}


def all_first() -> dict[str, str | None]:
    return {p: FIRST.get(p, OLD.get(p)) for p in OLD.keys() | FIRST.keys()}


def clean(root: Path) -> None:
    """Nothing of a transaction is left: no journal, no staging area, no hidden file, no new directory."""
    assert not (root / "var/lib/certfab/journal").exists()
    assert not (root / "var/lib/certfab/journal.staging").exists()
    for dirpath, dirnames, filenames in os.walk(root):
        assert not [n for n in dirnames + filenames if n.startswith(".certfab-")], dirpath


def writes(files: dict[str, str], before: dict[str, str]) -> list[FileWrite]:
    return [FileWrite(p, t, None if p == OTHER else "0644",
                      text_sha256(before[p]) if p in before else ABSENT) for p, t in files.items()]


def apply_first(root: Path, crash_at: int = 0) -> Reply:
    context = apply_context(RUN, writes(FIRST, OLD), test_and_reload=False, crash_at=crash_at)
    return run_local("apply.sh.j2", root=str(root), **context)


def apply_second(root: Path, crash_at: int = 0) -> Reply:
    before = {p: t for p, t in all_first().items() if t is not None}
    context = apply_context(RUN, writes(SECOND, before), test_and_reload=False, extend=True, tx=1,
                            journaled=set(FIRST), crash_at=crash_at)
    return run_local("apply.sh.j2", root=str(root), **context)


def commit(root: Path, crash_at: int = 0) -> Reply:
    return run_local("commit.sh.j2", root=str(root), **commit_context(RUN, crash_at=crash_at))


def recover(root: Path, crash_at: int = 0) -> Reply:
    return run_local("rollback.sh.j2", root=str(root), **rollback_context(reload=False, crash_at=crash_at))


def test_a_crash_at_any_step_of_apply_is_rolled_back_completely(tmp_path: Path) -> None:
    step = 1
    while True:
        root = sandbox(tmp_path / f"apply-{step}")
        reply = apply_first(root, crash_at=step)
        if reply.exited != KILLED:
            assert reply.ok, reply
            break
        assert recover(root).ok
        assert state(root) == all_old(), f"crash at step {step}"
        clean(root)
        step += 1
    assert step > 8, "the apply script has fewer crash points than expected"


def test_a_crash_at_any_step_of_commit_is_finished_or_rolled_back(tmp_path: Path) -> None:
    step = 1
    outcomes = set()
    while True:
        root = sandbox(tmp_path / f"commit-{step}")
        assert apply_first(root).ok
        reply = commit(root, crash_at=step)
        if reply.exited != KILLED:
            assert reply.ok, reply
            assert state(root) == all_first()
            break
        assert recover(root).ok
        after = state(root)
        assert after in (all_old(), all_first()), f"crash at step {step}: mixed state {after}"
        outcomes.add("new" if after == all_first() else "old")
        clean(root)
        step += 1
    assert outcomes == {"old", "new"}


def test_a_crash_at_any_step_of_an_extending_apply_restores_the_state_before_the_run(tmp_path: Path) -> None:
    step = 1
    while True:
        root = sandbox(tmp_path / f"extend-{step}")
        assert apply_first(root).ok
        reply = apply_second(root, crash_at=step)
        if reply.exited != KILLED:
            assert reply.ok, reply
            assert recover(root).ok and state(root) == all_old()
            break
        assert recover(root).ok
        assert state(root) == all_old(), f"crash at step {step}"
        clean(root)
        step += 1
    assert step > 5


@pytest.mark.parametrize("apply_step", [3, 6, 9, 12])
def test_a_crash_during_recovery_is_recovered_by_the_next_recovery(tmp_path: Path, apply_step: int) -> None:
    step = 1
    while True:
        root = sandbox(tmp_path / f"recover-{apply_step}-{step}")
        assert apply_first(root, crash_at=apply_step).exited == KILLED
        reply = recover(root, crash_at=step)
        if reply.exited != KILLED:
            assert reply.ok
            break
        assert recover(root).ok
        assert state(root) == all_old(), f"apply crashed at {apply_step}, recovery at {step}"
        clean(root)
        step += 1


def test_modes_survive_a_rollback(tmp_path: Path) -> None:
    root = sandbox(tmp_path)
    host(root, OTHER).chmod(0o600)
    assert apply_first(root).ok
    assert stat.S_IMODE(host(root, OTHER).stat().st_mode) == 0o600
    assert recover(root).ok
    assert stat.S_IMODE(host(root, OTHER).stat().st_mode) == 0o600
    assert state(root) == all_old()
