"""Fixed names, addresses and paths of the lab, shared by every lab module."""

from __future__ import annotations

import re
from pathlib import Path

from certfab.errors import LabError

STATE_DIR = Path("/var/lib/certfab-lab")
CACHE_DIR = Path("/var/cache/certfab-lab")
RUN_DIR = STATE_DIR / "run"
LOG_DIR = STATE_DIR / "logs"
HOSTS_DIR = STATE_DIR / "hosts"
KEYS_DIR = STATE_DIR / "keys"
PEBBLE_DIR = STATE_DIR / "pebble"
MAIL_DIR = STATE_DIR / "mail"
PEBBLE_LOG = STATE_DIR / "pebble.log"
STATE_FILE = STATE_DIR / "state.json"
LOCK_FILE = STATE_DIR / "lock"
AUTHORIZED_KEYS = STATE_DIR / "authorized_keys"
# Debian's certbot (2.1), for hosts pinned to an old certbot; the name predates the second image.
ROOTFS_TAR = CACHE_DIR / "certbot-rootfs.tar"
# The current certbot from PyPI; its wheels are kept so the image rebuilds offline.
CURRENT_CERTBOT_VERSION = "5.8.0"
CURRENT_ROOTFS_TAR = CACHE_DIR / f"certbot-{CURRENT_CERTBOT_VERSION}-rootfs.tar"
CURRENT_WHEELS = CACHE_DIR / f"wheels-certbot-{CURRENT_CERTBOT_VERSION}"
# Each host's /var/lib/docker: a cache kept across runs, so the certbot image is imported only once.
DOCKER_CACHE = CACHE_DIR / "docker"
# The same for hosts that run podman instead of dockerd (their /var/lib/containers).
PODMAN_CACHE = CACHE_DIR / "podman"
RUNTIMES = ("docker", "podman")
# podman needs these here: no CAP_SYS_RESOURCE to raise limits, no systemd for cgroups or events.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=1024:1024"]
log_driver = "k8s-file"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
"""

BRIDGE = "br-certfab"
BRIDGE_ADDRESS = "10.77.0.1"
PREFIX_LEN = 24
NETNS_PREFIX = "certfab-"
VETH_PREFIX = "cfv-"
MAX_HOSTS = 50

ACME_PORT = 14000
MANAGEMENT_PORT = 15000
SMTP_PORT = 25
ACME_DIRECTORY = f"https://{BRIDGE_ADDRESS}:{ACME_PORT}/dir"
CERTBOT_IMAGE = f"certbot/certbot:v{CURRENT_CERTBOT_VERSION}"
LEGACY_CERTBOT_IMAGE = "certbot/certbot:v2.1.0"
# Every image each host holds, with the rootfs tar it is imported from.
IMAGES: tuple[tuple[str, Path], ...] = (
    (CERTBOT_IMAGE, CURRENT_ROOTFS_TAR),
    (LEGACY_CERTBOT_IMAGE, ROOTFS_TAR),
)
CERTIFICATE_VALIDITY_SECONDS = 90 * 24 * 3600

# Lab files written into <repo>/lab/
LAB_FILES = {
    "inventory": "inventory.yaml",
    "known_hosts": "known_hosts",
    "key_file": "id_ed25519",
    "pebble_ca": "pebble-ca.pem",
    "pebble_root": "pebble-root.pem",
    "dns_credentials": "dns-rfc2136.ini",
}

# Trees every host gets a private copy of, bind-mounted over the machine's.
PRIVATE_DIRS: tuple[str, ...] = (
    "/etc/nginx",
    "/etc/letsencrypt",
    "/etc/cron.d",
    "/var/spool/cron",
    "/var/www",
    "/var/log/nginx",
    "/var/lib/nginx",
    "/var/lib/letsencrypt",
    "/var/log/letsencrypt",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/containers",
    "/usr/local/sbin",
    "/root",
    "/run",
    "/etc/certfab",
    "/var/lib/certfab",
)
# Container storage survives a reset so the certbot image need not be imported again.
KEPT_ON_RESET: tuple[str, ...] = ("/var/lib/docker", "/var/lib/containerd", "/var/lib/containers")
DOCKER_DIR = "/var/lib/docker"
PODMAN_DIR = "/var/lib/containers"
# Single files every host gets its own copy of.
PRIVATE_FILES: tuple[str, ...] = (
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/hostname",
    "/etc/msmtprc",
    "/etc/crontab",
    "/etc/containers/containers.conf",
)

_HOST_NAME = re.compile(r"web([1-9][0-9]?)")


def host_name(index: int) -> str:
    """Name of the lab host with the given 1-based index."""
    return f"web{index}"


def host_index(name: str) -> int:
    """1-based index of a lab host name; LabError for anything that is not one."""
    match = _HOST_NAME.fullmatch(name)
    if match is None or int(match.group(1)) > MAX_HOSTS:
        raise LabError(f"'{name}' is not a lab host name (web1..web{MAX_HOSTS})")
    return int(match.group(1))


def host_address(index: int) -> str:
    """IPv4 address of the lab host with the given index."""
    return f"10.77.0.{10 + index}"


def host_domains(name: str) -> tuple[str, str]:
    """DNS names the host's site serves."""
    return (f"{name}.test", f"www.{name}.test")


def netns_name(name: str) -> str:
    """Network namespace of a host."""
    return f"{NETNS_PREFIX}{name}"


def netns_path(name: str) -> Path:
    """Path of the host's network namespace handle."""
    return Path("/run/netns") / netns_name(name)


def veth_name(name: str) -> str:
    """Machine-side end of the host's veth pair (at most 15 characters)."""
    return f"{VETH_PREFIX}{name}"


def host_dir(name: str) -> Path:
    """Directory holding everything private to one host."""
    return HOSTS_DIR / name


def host_fs(name: str) -> Path:
    """Root of the host's private trees: <host_fs>/etc/nginx is the host's /etc/nginx."""
    return host_dir(name) / "fs"


def docker_storage(name: str) -> Path:
    """The host's /var/lib/docker on the machine (kept across runs, like a disk)."""
    return DOCKER_CACHE / name


def podman_storage(name: str) -> Path:
    """The host's /var/lib/containers on the machine (kept across runs, like a disk)."""
    return PODMAN_CACHE / name


def runtime_file(name: str) -> Path:
    """File naming the container runtime a host runs (docker or podman), written by `lab.up`."""
    return host_keys(name) / "runtime"


def host_runtime(name: str) -> str:
    """The container runtime of a host: podman when lab.up made it a podman host, else docker."""
    try:
        runtime = runtime_file(name).read_text().strip()
    except OSError:
        return "docker"
    return runtime if runtime in RUNTIMES else "docker"


def image_storage(name: str) -> Path:
    """Where the host's runtime keeps its images on the machine."""
    return podman_storage(name) if host_runtime(name) == "podman" else docker_storage(name)


def private_source(name: str, directory: str) -> Path:
    """Machine directory mounted as one of the host's private trees."""
    if directory == DOCKER_DIR:
        return docker_storage(name)
    if directory == PODMAN_DIR:
        return podman_storage(name)
    return host_fs(name) / directory.lstrip("/")


def host_files(name: str) -> Path:
    """Directory of the host's private single files (/etc/hosts, ...)."""
    return host_dir(name) / "files"


def host_keys(name: str) -> Path:
    """Directory of the host's SSH host key, kept across resets and runs."""
    return KEYS_DIR / name


def pid_file(service: str) -> Path:
    """Pid file of a lab process (pebble, dns, smtp, or a host name)."""
    return RUN_DIR / f"{service}.pid"
