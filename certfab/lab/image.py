"""The certbot container image, built with debootstrap (no registry needed) and cached as a rootfs tar."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from certfab.errors import LabError
from certfab.lab import layout, proc

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# python3-certbot-dns-rfc2136: DNS-01 through the lab DNS (TSIG-signed dynamic updates).
PACKAGES = "certbot,python3-certbot-dns-rfc2136,python3-cffi-backend,ca-certificates"
# Next to the cached tar: the package list it was built with, so a changed list rebuilds it.
_BUILT_WITH = layout.ROOTFS_TAR.with_name(layout.ROOTFS_TAR.name + ".packages")
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


def discard_stale_rootfs() -> None:
    """Drop a cached rootfs tar built with another package list (hosts then import the new one)."""
    try:
        current = _BUILT_WITH.read_text().strip() == PACKAGES
    except OSError:
        current = False
    if not current:
        layout.ROOTFS_TAR.unlink(missing_ok=True)


def ensure_rootfs_tar() -> Path:
    """Build the certbot rootfs tar unless it is cached; return its path."""
    if layout.ROOTFS_TAR.is_file():
        return layout.ROOTFS_TAR
    layout.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=layout.CACHE_DIR))
    try:
        rootfs = work / "rootfs"
        proc.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={PACKAGES}",
                SUITE,
                str(rootfs),
                machine_mirror(),
            ],
            timeout=1800,
        )
        for needed in ("usr/bin/certbot", "usr/lib/python3/dist-packages/certbot_dns_rfc2136"):
            if not (rootfs / needed).exists():
                raise LabError(f"debootstrap finished but {rootfs}/{needed} is missing")
        for sub in _PRUNED:
            target = rootfs / sub
            if target.is_dir():
                shutil.rmtree(target)
                target.mkdir()
        partial = work / "rootfs.tar"
        proc.run(
            [
                "tar",
                "--numeric-owner",
                "--exclude=./dev/*",
                "--exclude=./proc/*",
                "--exclude=./sys/*",
                "-C",
                str(rootfs),
                "-cf",
                str(partial),
                ".",
            ],
            timeout=600,
        )
        partial.replace(layout.ROOTFS_TAR)
        _BUILT_WITH.write_text(PACKAGES + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return layout.ROOTFS_TAR
