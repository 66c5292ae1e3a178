"""The real issue script against a sandbox webroot: it never follows a symlink planted there, never
writes into a directory another user owns or can write, and never changes the mode of one it did not create."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from certfab.protocol import Reply
from certfab.remote_scripts import run_local
from certfab.transaction import EXIT_UNSAFE_DIR, EXITS, ancestors, lock_context

RUN = "certfab-20260101T000000Z-0123abcd"
WEBROOT = "/srv/webroot"
CHALLENGE = f"{WEBROOT}/.well-known/acme-challenge"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "var/lib/certfab").mkdir(parents=True)
    (root / "var/lib/certfab/lock.owner").write_text(RUN + "\n")
    # A container runtime that has the image: `image inspect` succeeds, nothing else is called.
    runtime = tmp_path / "runtime"
    runtime.write_text("#!/bin/sh\nexit 0\n")
    runtime.chmod(0o755)
    return root


def issue(root: Path, webroot: str = WEBROOT) -> Reply:
    context = {
        **lock_context(RUN), "exits": {**EXITS, "image_missing": 31, "selftest": 30, "certbot": 32},
        "runtime": str(root.parent / "runtime"), "image": "certbot/certbot:test",
        "webroot": webroot, "webroot_parents": ancestors(webroot), "domains": [], "orders": [],
    }
    return run_local("issue.sh.j2", root=str(root), **context)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_missing_webroot_is_created_readable_and_left_empty(root: Path) -> None:
    reply = issue(root)
    assert reply.ok, reply
    for path in (WEBROOT, f"{WEBROOT}/.well-known", CHALLENGE):
        assert mode(root / path.lstrip("/")) == 0o755, path
    assert os.listdir(root / CHALLENGE.lstrip("/")) == []


def test_a_shared_sticky_webroot_keeps_its_mode(root: Path) -> None:
    shared = root / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    assert issue(root, "/tmp").ok
    assert mode(shared) == 0o1777
    assert mode(shared / ".well-known") == 0o755


def test_an_existing_challenge_directory_keeps_its_mode(root: Path) -> None:
    challenge = root / CHALLENGE.lstrip("/")
    challenge.mkdir(parents=True)
    challenge.chmod(0o711)
    assert issue(root).ok
    assert mode(challenge) == 0o711


def test_a_symlinked_challenge_directory_is_refused_and_its_target_untouched(root: Path) -> None:
    secret = root / "root-only"
    secret.mkdir(mode=0o700)
    (secret / "keep").write_text("secret\n")
    well_known = root / f"{WEBROOT}/.well-known".lstrip("/")
    well_known.mkdir(parents=True)
    (well_known / "acme-challenge").symlink_to(secret)
    reply = issue(root)
    assert reply.exited == EXIT_UNSAFE_DIR
    assert reply.last_error_line() == f"{CHALLENGE} is a symlink; no certificate was requested"
    assert os.listdir(secret) == ["keep"] and mode(secret) == 0o700


@pytest.mark.parametrize("how", ["other-owner", "group-writable", "symlink"])
def test_a_well_known_directory_root_does_not_own_alone_is_refused(root: Path, how: str) -> None:
    well_known = root / f"{WEBROOT}/.well-known".lstrip("/")
    if how == "symlink":
        (root / "elsewhere").mkdir()
        well_known.parent.mkdir(parents=True)
        well_known.symlink_to(root / "elsewhere")
    else:
        well_known.mkdir(parents=True)
        if how == "other-owner":
            os.chown(well_known, 1000, 1000)
        else:
            well_known.chmod(0o775)
    reply = issue(root)
    assert reply.exited == EXIT_UNSAFE_DIR
    assert reply.last_error_line().startswith(f"{WEBROOT}/.well-known ")
    assert not (root / CHALLENGE.lstrip("/")).exists() or how == "symlink"
    assert not (root / "elsewhere/acme-challenge").exists()


def test_a_world_writable_webroot_without_the_sticky_bit_is_refused(root: Path) -> None:
    webroot = root / WEBROOT.lstrip("/")
    webroot.mkdir(parents=True)
    webroot.chmod(0o777)
    reply = issue(root)
    assert reply.exited == EXIT_UNSAFE_DIR
    assert reply.last_error_line() == f"{WEBROOT} can be changed by a user other than root; no certificate was requested"
    assert os.listdir(webroot) == [] and mode(webroot) == 0o777
