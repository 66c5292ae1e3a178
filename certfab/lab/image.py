"""The certbot container image, built with debootstrap (no registry needed) and cached as a rootfs tar."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from certfab.errors import LabError
from certfab.lab import layout, proc

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# python3-certbot-dns-rfc2136: DNS-01 through the lab DNS (TSIG-signed dynamic updates).
PACKAGES = "certbot,python3-certbot-dns-rfc2136,python3-cffi-backend,ca-certificates"
# Next to the cached tar: the package list it was built with, so a changed list rebuilds it.
_BUILT_WITH = layout.ROOTFS_TAR.with_name(layout.ROOTFS_TAR.name + ".packages")
# The current certbot's image: Debian's Python only; certbot and its plugins come from PyPI as wheels.
CURRENT_PACKAGES = "python3,ca-certificates"
CURRENT_REQUIREMENTS = tuple(
    f"{name}=={layout.CURRENT_CERTBOT_VERSION}" for name in ("certbot", "acme", "certbot-dns-rfc2136")
)
CURRENT_SITE = "/opt/certbot"
# Wheels for bookworm's Python 3.11 on x86-64, whatever Python the machine runs.
_WHEEL_TARGET = (
    "--only-binary=:all:",
    "--implementation", "cp",
    "--python-version", "3.11",
    "--abi", "cp311",
    "--abi", "abi3",
    "--abi", "none",
    "--platform", "manylinux2014_x86_64",
    "--platform", "manylinux_2_28_x86_64",
    "--platform", "linux_x86_64",
)
_CURRENT_ENTRY = f"""#!/usr/bin/python3
import sys

sys.path.insert(0, "{CURRENT_SITE}")
from certbot.main import main

sys.exit(main())
"""
# Parts of the rootfs a certbot container never reads; dropping them makes each import faster.
_PRUNED = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)


def _deb822_mirrors(text: str) -> list[tuple[list[str], list[str]]]:
    """(URIs, Suites) of each `Types: deb` stanza of a deb822 sources file."""
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split():
            found.append((fields.get("uris", "").split(), fields.get("suites", "").split()))
    return found


def mirror_from_sources(files: dict[str, str]) -> str:
    """The machine's Debian mirror for the main suite, from apt source file contents (path -> text)."""
    for path, text in sorted(files.items()):
        if path.endswith(".sources"):
            for uris, suites in _deb822_mirrors(text):
                if uris and any("-" not in suite for suite in suites):
                    return uris[0]
        elif path.endswith(".list"):
            for line in text.splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "deb":
                    uri_index = 2 if parts[1].startswith("[") else 1
                    suite = parts[uri_index + 1] if len(parts) > uri_index + 1 else ""
                    if "-" not in suite:
                        return parts[uri_index]
    return DEFAULT_MIRROR


def machine_mirror() -> str:
    """The Debian mirror this machine's apt uses."""
    files: dict[str, str] = {}
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in candidates:
        if path.suffix in (".list", ".sources") and path.is_file():
            files[str(path)] = path.read_text(errors="replace")
    return mirror_from_sources(files)


def _debootstrap(rootfs: Path, packages: str) -> None:
    """A minimal Debian rootfs with the given packages."""
    proc.run(
        ["debootstrap", "--variant=minbase", f"--include={packages}", SUITE, str(rootfs), machine_mirror()],
        timeout=1800,
    )


def _fetch_current_wheels() -> Path:
    """The wheels of the current certbot and its plugins for the image's Python, downloaded once and kept."""
    if (layout.CURRENT_WHEELS / ".complete").is_file():
        return layout.CURRENT_WHEELS
    partial = layout.CURRENT_WHEELS.with_name(layout.CURRENT_WHEELS.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    proc.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(partial), *_WHEEL_TARGET,
         *CURRENT_REQUIREMENTS],
        timeout=900,
    )
    (partial / ".complete").write_text("")
    shutil.rmtree(layout.CURRENT_WHEELS, ignore_errors=True)
    partial.replace(layout.CURRENT_WHEELS)
    return layout.CURRENT_WHEELS


def _install_current_certbot(rootfs: Path) -> None:
    """pip-install the kept wheels into the rootfs (no index: offline) and add the certbot entry point."""
    wheels = _fetch_current_wheels()
    proc.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels),
         "--target", str(rootfs / CURRENT_SITE.lstrip("/")), *_WHEEL_TARGET, *CURRENT_REQUIREMENTS],
        env={**proc.CLEAN_ENV, "PIP_CONFIG_FILE": os.devnull},
        timeout=900,
    )
    entry = rootfs / "usr/local/bin/certbot"
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_text(_CURRENT_ENTRY)
    entry.chmod(0o755)


def _prune_and_tar(rootfs: Path, target: Path) -> None:
    """Drop what a container never reads, then tar the rootfs to target atomically."""
    for sub in _PRUNED:
        pruned = rootfs / sub
        if pruned.is_dir():
            shutil.rmtree(pruned)
            pruned.mkdir()
    partial = rootfs.with_name("rootfs.tar")
    proc.run(
        ["tar", "--numeric-owner", "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
         "-C", str(rootfs), "-cf", str(partial), "."],
        timeout=600,
    )
    partial.replace(target)


def discard_stale_rootfs() -> None:
    """Drop a cached Debian rootfs tar built with another package list (hosts then import the new one)."""
    try:
        current = _BUILT_WITH.read_text().strip() == PACKAGES
    except OSError:
        current = False
    if not current:
        layout.ROOTFS_TAR.unlink(missing_ok=True)


def _build(target: Path, fill: Callable[[Path], None], needed: tuple[str, ...]) -> Path:
    """Build one certbot rootfs tar unless it is cached; return its path."""
    if target.is_file():
        return target
    layout.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=layout.CACHE_DIR))
    try:
        rootfs = work / "rootfs"
        fill(rootfs)
        for path in needed:
            if not (rootfs / path).exists():
                raise LabError(f"the certbot image build finished but {rootfs}/{path} is missing")
        _prune_and_tar(rootfs, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def ensure_rootfs_tar() -> Path:
    """Build Debian's certbot (2.1) rootfs tar unless it is cached; return its path."""
    if layout.ROOTFS_TAR.is_file():
        return layout.ROOTFS_TAR
    _build(layout.ROOTFS_TAR, lambda rootfs: _debootstrap(rootfs, PACKAGES),
           ("usr/bin/certbot", "usr/lib/python3/dist-packages/certbot_dns_rfc2136"))
    _BUILT_WITH.write_text(PACKAGES + "\n")
    return layout.ROOTFS_TAR


def ensure_current_rootfs_tar() -> Path:
    """Build the current certbot's rootfs tar (Debian's Python, certbot from PyPI) unless it is cached."""

    def fill(rootfs: Path) -> None:
        _debootstrap(rootfs, CURRENT_PACKAGES)
        _install_current_certbot(rootfs)

    return _build(layout.CURRENT_ROOTFS_TAR, fill,
                  ("usr/local/bin/certbot", CURRENT_SITE.lstrip("/") + "/certbot_dns_rfc2136"))


def ensure_images() -> tuple[Path, ...]:
    """Every certbot rootfs tar the hosts import (built when absent, cached otherwise)."""
    return ensure_current_rootfs_tar(), ensure_rootfs_tar()
