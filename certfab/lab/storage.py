"""Hosts' docker storage: kept across runs, and seeded by hard links so the image is imported only once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from certfab.lab import layout, proc

SEED = layout.DOCKER_CACHE / "seed"


def image_identity() -> str | None:
    """Identity (tag, size, mtime) of every cached rootfs tar, None while one is not built."""
    lines = []
    for tag, tar in layout.IMAGES:
        try:
            st = tar.stat()
        except FileNotFoundError:
            return None
        lines.append(f"{tag} {st.st_size} {st.st_mtime_ns}\n")
    return "".join(lines)


def _marker(storage: Path) -> Path:
    """File recording which rootfs tar a docker storage holds the image of."""
    return storage.with_name(storage.name + ".image")


def _holds(storage: Path, identity: str | None) -> bool:
    """Whether a storage directory holds the image imported from the tar with that identity."""
    marker = _marker(storage)
    return identity is not None and storage.is_dir() and marker.is_file() and marker.read_text() == identity


def host_ready(name: str, identity: str | None) -> bool:
    """Whether a host's storage already holds the current image."""
    return _holds(layout.image_storage(name), identity)


def mark_imported(name: str, identity: str) -> None:
    """Record that a host's storage now holds the image of the current tar."""
    _marker(layout.image_storage(name)).write_text(identity)


def wipe(name: str) -> None:
    """Empty a host's image storage (stale image or none): its runtime starts from scratch."""
    storage = layout.image_storage(name)
    _marker(storage).unlink(missing_ok=True)
    if storage.exists():
        shutil.rmtree(storage)
    storage.mkdir(mode=0o710, parents=True)


def seed_ready(identity: str | None) -> bool:
    """Whether a seed storage for the current image exists."""
    return _holds(SEED, identity)


def _copy_storage(source: Path, target: Path) -> None:
    """Copy the image parts of a docker storage: layers as hard links, image metadata as real copies."""
    target.mkdir(mode=0o710, parents=True, exist_ok=True)
    # Layer files are only ever read (overlayfs copies up on write), so hard links are safe and instant;
    # databases and engine-id are not copied: each dockerd makes its own.
    proc.run(["cp", "-a", "--link", str(source / "overlay2"), str(target / "overlay2")])
    proc.run(["cp", "-a", str(source / "image"), str(target / "image")])


def make_seed(name: str, identity: str) -> None:
    """Keep a copy of a host's freshly imported image storage as the seed for other hosts."""
    tmp = SEED.with_name(".seed.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    _copy_storage(layout.docker_storage(name), tmp)
    _marker(SEED).unlink(missing_ok=True)
    if SEED.exists():
        shutil.rmtree(SEED)
    os.rename(tmp, SEED)
    _marker(SEED).write_text(identity)


def seed_host(name: str, identity: str) -> None:
    """Give a (stopped) host a storage holding the image, from the seed."""
    wipe(name)
    _copy_storage(SEED, layout.docker_storage(name))
    mark_imported(name, identity)
