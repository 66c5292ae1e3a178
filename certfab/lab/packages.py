"""Debian packages the lab needs on the machine, installed when missing."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from certfab.errors import LabError
from certfab.lab import proc

# Never add `openssl` or `curl` here: installing them upgrades the machine's libssl.
PACKAGES: tuple[str, ...] = (
    "openssh-server",
    "openssh-client",
    "nginx",
    "pebble",
    "debootstrap",
    "cron",
    "docker.io",
    "podman",
    "msmtp-mta",
    "iproute2",
    "iptables",
    # The lab DNS: an authoritative server for the zone `test.` with dynamic updates (nsupdate).
    "bind9",
    "bind9-dnsutils",
)

_POLICY_RC = Path("/usr/sbin/policy-rc.d")


def missing_packages(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Packages from the list that are not installed."""
    result = proc.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", *packages], check=False)
    installed = {
        line.split()[0]
        for line in result.stdout.splitlines()
        if len(line.split()) == 2 and line.split()[1].startswith("ii")
    }
    return [name for name in packages if name not in installed]


def ensure_packages(progress: Callable[[str], None]) -> None:
    """Install the lab's packages if any is missing (apt-get update once, then install)."""
    missing = missing_packages()
    if not missing:
        return
    progress(f"installing {' '.join(missing)}")
    env = {**proc.CLEAN_ENV, "DEBIAN_FRONTEND": "noninteractive"}
    # Keep package scripts from starting machine-wide nginx, sshd or dockerd: the lab runs its own.
    own_policy = not _POLICY_RC.exists()
    if own_policy:
        _POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
        os.chmod(_POLICY_RC, 0o755)
    try:
        proc.run(["apt-get", "update"], env=env, timeout=900)
        proc.run(["apt-get", "install", "-y", *missing], env=env, timeout=1800)
    finally:
        if own_policy:
            _POLICY_RC.unlink(missing_ok=True)
    still = missing_packages()
    if still:
        raise LabError(f"packages still missing after apt-get install: {' '.join(still)}")
