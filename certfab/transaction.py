"""On-host transactions: check, stage every file, journal, switch by rename, test, reload; or roll back.

Originals are kept as hard links beside each file (hidden names, so nginx's `*` globs never
include them), which makes both the switch and the rollback plain renames: they need no free
space and cannot leave a file half-written. The journal under /var/lib/certfab lets the next
run finish or roll back a transaction that a crash, a lost connection or Ctrl-C left open
(templates/remote/_journal.sh.j2 describes its layout).

Every file replaced carries the sha256 its facts saw: a file changed on the host since then is
left alone, and nothing at all is written.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from certfab.errors import ApplyError
from certfab.paths import STATE_DIR

EXIT_STAGE_FAILED = 20
EXIT_NGINX_TEST_FAILED = 21
EXIT_RELOAD_FAILED = 22
EXIT_JOURNAL_OPEN = 23
EXIT_NOT_LOCKED = 24
EXIT_APPLY_BUSY = 25
EXIT_CHANGED = 26
EXIT_UNSAFE_DIR = 27
APPLY_LOCK = f"{STATE_DIR}/apply.lock"
APPLY_LOCK_WAIT = 300

# expected_sha256 of a file that must not exist yet.
ABSENT = "absent"

EXITS = {
    "stage": EXIT_STAGE_FAILED,
    "nginx_test": EXIT_NGINX_TEST_FAILED,
    "reload": EXIT_RELOAD_FAILED,
    "journal_open": EXIT_JOURNAL_OPEN,
    "not_locked": EXIT_NOT_LOCKED,
    "busy": EXIT_APPLY_BUSY,
    "changed": EXIT_CHANGED,
    "unsafe_dir": EXIT_UNSAFE_DIR,
}

_MODE = re.compile(r"0?[0-7]{3}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Longer names get a hashed hidden name: `.certfab-backup.` plus the name must fit NAME_MAX (255 bytes).
_MAX_PLAIN_NAME = 200


class ChangedOnHostError(ApplyError):
    """A file certfab was about to replace differs from what its facts saw: nothing was written."""


def shown(path: str) -> str:
    """A host path for a one-line message: as it is, or quoted when it holds unprintable characters."""
    return path if path.isprintable() else repr(path)


@dataclass(frozen=True)
class FileWrite:
    """A file's complete desired content; mode None keeps the existing file's mode and owner.

    expected_sha256 is what the file held when its facts were read: a sha256, ABSENT (it must not
    exist), or None (not checked). `remove` deletes the file instead (content unused); the journal
    keeps it until the commit, so a rollback puts it back. A secret's content is never read back,
    shown or diffed: facts carry only its sha256.
    """

    path: str
    content: str = field(repr=False)
    mode: str | None = "0644"
    expected_sha256: str | None = None
    remove: bool = False
    secret: bool = False


def text_sha256(text: str) -> str:
    """sha256 of a file's text as facts read it (byte-exact through surrogateescape)."""
    return hashlib.sha256(text.encode("utf-8", errors="surrogateescape")).hexdigest()


def expect_as_read(writes: Iterable[FileWrite], current: Mapping[str, str],
                   secrets: Mapping[str, str] | None = None) -> list[FileWrite]:
    """The writes, each expecting the file as the facts saw it: its sha256, or absent.

    `secrets` maps the secret files the facts hashed (never read) to their sha256.
    """
    hashed = secrets or {}
    return [
        replace(w, expected_sha256=text_sha256(current[w.path]) if w.path in current
                else hashed.get(w.path, ABSENT))
        for w in writes
    ]


def hidden_path(path: str, kind: str) -> str:
    """A hidden sibling of path for a staged file or a backup (nginx's `*` globs skip dot files)."""
    directory, name = posixpath.split(path)
    if len(name.encode("utf-8", errors="surrogateescape")) > _MAX_PLAIN_NAME:
        name = hashlib.sha256(name.encode("utf-8", errors="surrogateescape")).hexdigest()
    return posixpath.join(directory, f".certfab-{kind}.{name}")


def ancestors(path: str) -> list[str]:
    """Every directory above path, from / down."""
    result = []
    directory = posixpath.dirname(path)
    while True:
        result.append(directory)
        if directory == "/":
            break
        directory = posixpath.dirname(directory)
    return result[::-1]


@dataclass(frozen=True)
class StagedWrite:
    """One write as the apply script needs it."""

    path: str
    temp: str
    backup: str
    content: bytes
    size: int
    mode: str | None
    expected: str | None
    journaled: bool
    remove: bool = False


def _staged(write: FileWrite, journaled: bool) -> StagedWrite:
    if not write.path.startswith("/") or posixpath.normpath(write.path) != write.path:
        raise ValueError(f"{write.path!r}: a host path must be absolute and normal")
    if posixpath.basename(write.path).startswith(".certfab-"):
        raise ApplyError(f"refusing to write {shown(write.path)}: names starting with .certfab- are certfab's "
                         "staged files and backups")
    if write.mode is not None and not _MODE.fullmatch(write.mode):
        raise ValueError(f"{write.path}: mode {write.mode!r} is not an octal file mode")
    expected = write.expected_sha256
    if expected is not None and expected != ABSENT and not _SHA256.fullmatch(expected):
        raise ValueError(f"{write.path}: expected_sha256 {expected!r} is not a sha256")
    content = write.content.encode("utf-8", errors="surrogateescape")
    if write.remove and (expected is None or expected == ABSENT or journaled):
        raise ValueError(f"{write.path}: a removal needs the sha256 of the file as read")
    return StagedWrite(write.path, hidden_path(write.path, "new"), hidden_path(write.path, "backup"),
                       content, len(content), write.mode, expected, journaled, write.remove)


def apply_context(run_id: str, writes: list[FileWrite], *, test_and_reload: bool = True,
                  extend: bool = False, tx: int = 0, journaled: Iterable[str] = (),
                  crash_at: int = 0) -> dict[str, object]:
    """What templates/remote/apply.sh.j2 needs to switch all files at once, test nginx and reload.

    It leaves the journal open: the controller verifies from outside, then commits or rolls back.
    With `extend`, the files join this run's open journal as transaction `tx`, so that one rollback
    returns every file to what it was before the run's first transaction; `journaled` are the paths
    an earlier transaction of the run already backed up. `crash_at` is for the crash tests only.
    """
    paths = [w.path for w in writes]
    if len(set(paths)) != len(paths):
        raise ValueError("a transaction writes each file once")
    if extend != (tx > 0):
        raise ValueError("the first transaction of a run opens the journal, every later one extends it")
    already = frozenset(journaled)
    dirs = list(dict.fromkeys(d for path in paths for d in ancestors(path)))
    return {
        "run_id": run_id,
        "writes": [_staged(w, w.path in already) for w in writes],
        "dirs": dirs,
        "tx": f"t{tx}",
        "extend": extend,
        "test_and_reload": test_and_reload,
        **_common(crash_at),
    }


def commit_context(run_id: str, *, crash_at: int = 0) -> dict[str, object]:
    """What templates/remote/commit.sh.j2 needs to close this run's journal."""
    return {"run_id": run_id, **_common(crash_at)}


def rollback_context(*, reload: bool = True, crash_at: int = 0) -> dict[str, object]:
    """What templates/remote/rollback.sh.j2 needs to undo (or finish committing) an open journal."""
    return {"reload": reload, **_common(crash_at)}


def _common(crash_at: int) -> dict[str, object]:
    return {"state_dir": STATE_DIR, "exits": EXITS, "lock_wait": APPLY_LOCK_WAIT, "crash_at": crash_at}


def lock_context(run_id: str) -> dict[str, object]:
    """What a script that must run under this run's host lock needs (see check_run_lock)."""
    return {"run_id": run_id, **_common(0)}


def lock_check(run_id: str) -> str:
    """Shell lines for a raw script: stop unless this run holds the host lock (templates use check_run_lock)."""
    return (
        f"owner=$(cat {STATE_DIR}/lock.owner 2>/dev/null)\n"
        f"if [ \"$owner\" != {shlex.quote(run_id)} ]; then echo \"certfab lock is not held by this run\" >&2; "
        f"exit {EXIT_NOT_LOCKED}; fi\n"
    )
