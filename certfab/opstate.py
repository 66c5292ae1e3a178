"""The operator's side: certfab's state directory, the identity of its code, and the caches kept there.

The state directory is $CERTFAB_STATE_DIR, else $XDG_STATE_HOME/certfab, else ~/.local/state/certfab.
Caches hold only what certfab can compute again (rendered scripts without secrets, facts of public
certificates), each entry named by a digest of everything it was computed from. A cache that cannot
be used safely (a directory someone else owns or can write, a full disk) is simply not used.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from functools import lru_cache
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_CODE_DIGEST_LOCK = threading.Lock()
# An entry unused this long goes (one made by older code, or for a host long gone).
UNUSED_ENTRY_DAYS = 30
_PRUNED: set[Path] = set()
_PRUNE_LOCK = threading.Lock()


def state_dir() -> Path:
    """The operator's certfab state directory."""
    explicit = os.environ.get("CERTFAB_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "certfab"


def code_digest() -> str:
    """sha256 of certfab's modules and templates: new code never trusts an old stamp or cache entry."""
    # Hosts' threads ask at once: the first computes, the others wait for its answer.
    with _CODE_DIGEST_LOCK:
        return _code_digest()


@lru_cache(maxsize=1)
def _code_digest() -> str:
    from certfab.templating import TEMPLATES_DIR

    digest = hashlib.sha256()
    files = sorted(_PACKAGE_DIR.glob("*.py"))
    # The templates rendered: the checkout's or, installed, the package's own copy.
    if TEMPLATES_DIR.is_dir():
        files += sorted(p for p in TEMPLATES_DIR.rglob("*") if p.is_file())
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_key(*parts: str) -> str:
    """An entry's name: a digest of certfab's code and of everything the entry was computed from."""
    return hashlib.sha256("\0".join((code_digest(), *parts)).encode("utf-8", "surrogateescape")).hexdigest()


def _cache_dir(kind: str) -> Path | None:
    """state_dir()/cache/<kind>, created 0700; None unless every level is ours and closed to others."""
    if os.environ.get("CERTFAB_NO_CACHE"):
        return None
    base = state_dir()
    path = base / "cache" / kind
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        for level in (base, base / "cache", path):
            info = level.lstat()
            if not level.is_dir() or level.is_symlink() or info.st_uid != os.geteuid() or info.st_mode & 0o022:
                return None
    except OSError:
        return None
    return path


def read_cached(kind: str, key: str) -> bytes | None:
    """The entry `key` of cache `kind`, if there is a trustworthy one."""
    directory = _cache_dir(kind)
    if directory is None:
        return None
    try:
        fd = os.open(directory / key, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            return None
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read()
        os.utime(fd)  # in use: not pruned
        return data
    except OSError:
        return None
    finally:
        os.close(fd)


def write_cached(kind: str, key: str, data: bytes) -> None:
    """Keep an entry (whole or not at all: written aside, then renamed); failures only lose the entry."""
    directory = _cache_dir(kind)
    if directory is None:
        return
    _prune(directory)
    try:
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".new-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(temporary, directory / key)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError:
        return


def _prune(directory: Path) -> None:
    """Remove the entries of one cache unused for UNUSED_ENTRY_DAYS (once per process and cache)."""
    with _PRUNE_LOCK:
        if directory in _PRUNED:
            return
        _PRUNED.add(directory)
    cutoff = time.time() - UNUSED_ENTRY_DAYS * 86400
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
    except OSError:
        return
