"""Pure rendering of the renewal side of a host: cron entry, renewal script and its settings file."""

from __future__ import annotations

import hashlib
from typing import Protocol

from certfab import paths
from certfab.errors import InventoryError
from certfab.templating import render

RENEW_SCRIPT_PATH = paths.RENEW_SCRIPT
RENEW_SCRIPT_MODE = 0o700
RENEW_ENV_PATH = paths.RENEW_ENV
RENEW_ENV_MODE = 0o600
CRON_PATH = paths.CRON_FILE
CRON_MODE = 0o644
STATE_DIR = paths.STATE_DIR
STATUS_PATH = paths.STATUS_FILE
LOCK_PATH = f"{STATE_DIR}/renew.lock"
HOOK_DIR = f"{STATE_DIR}/hook"
ACME_CA_PATH = paths.ACME_CA

# First words of every file certfab renders here, so a scan can tell certfab's files from others.
MARKER = "# certfab-managed"

# Minutes that are multiples of 5 are where everybody else's cron jobs pile up.
_QUIET_MINUTES = tuple(m for m in range(60) if m % 5)


class CertbotSettingsLike(Protocol):
    """The container settings the renewal script needs (inventory.CertbotSettings fits)."""

    @property
    def image(self) -> str: ...

    @property
    def runtime(self) -> str: ...


class RenewalSettingsLike(Protocol):
    """The schedule and mail settings of renewal (inventory.RenewalSettings fits)."""

    @property
    def admin_email(self) -> str: ...

    @property
    def times_per_day(self) -> int: ...

    @property
    def hour(self) -> int | None: ...

    @property
    def mail_on_success(self) -> bool: ...


def _digest(host_name: str, purpose: str) -> int:
    """Return a stable integer derived from a host name, independent per purpose."""
    data = f"certfab:{purpose}:{host_name}".encode()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


def cron_minute(host_name: str) -> int:
    """Return the host's renewal minute: stable per host name, spread out, never a multiple of 5."""
    return _QUIET_MINUTES[_digest(host_name, "minute") % len(_QUIET_MINUTES)]


def cron_hours(host_name: str, times_per_day: int, hour: int | None = None) -> tuple[int, ...]:
    """Return the sorted hours of the day renewal runs (twice a day: 12 hours apart)."""
    if times_per_day not in (1, 2):
        raise InventoryError(f"renewal.times_per_day must be 1 or 2, not {times_per_day!r}")
    if hour is None:
        hour = _digest(host_name, "hour") % 24
    elif not 0 <= hour <= 23:
        raise InventoryError(f"renewal.hour must be between 0 and 23, not {hour!r}")
    if times_per_day == 1:
        return (hour,)
    return tuple(sorted({hour, (hour + 12) % 24}))


def cron_schedule(host_name: str, settings: RenewalSettingsLike) -> str:
    """Return the five cron time fields of the host's renewal job."""
    minute = cron_minute(host_name)
    hours = cron_hours(host_name, settings.times_per_day, settings.hour)
    return f"{minute} {','.join(map(str, hours))} * * *"


def render_cron(host_name: str, settings: RenewalSettingsLike) -> str:
    """Render /etc/cron.d/certfab, the single cron entry that runs the renewal script."""
    hours = cron_hours(host_name, settings.times_per_day, settings.hour)
    return render(
        "cron.j2",
        host_name=host_name,
        minute=cron_minute(host_name),
        hours=",".join(map(str, hours)),
        script_path=RENEW_SCRIPT_PATH,
        status_path=STATUS_PATH,
    )


def render_renew_script() -> str:
    """Render /usr/local/sbin/certfab-renew (the same on every host; settings come from renew.env)."""
    return render("certfab-renew.sh.j2")


class NamedHost(Protocol):
    """Anything with a host name (inventory.Host fits)."""

    @property
    def name(self) -> str: ...


def render_renew_env(
    host: str | NamedHost,
    certbot: CertbotSettingsLike,
    renewal: RenewalSettingsLike,
    webroot: str,
    acme_ca_path: str | None = None,
    dns_credentials_path: str | None = None,
) -> str:
    """Render /etc/certfab/renew.env, the shell-quoted settings the renewal script sources."""
    host_name = host if isinstance(host, str) else host.name
    if certbot.runtime not in ("docker", "podman"):
        raise InventoryError(f"certbot.runtime must be docker or podman, not {certbot.runtime!r}")
    return render(
        "renew.env.j2",
        host_name=host_name,
        runtime=certbot.runtime,
        image=certbot.image,
        admin_email=renewal.admin_email,
        mail_on_success="yes" if renewal.mail_on_success else "no",
        webroot=webroot,
        acme_ca=acme_ca_path or "",
        dns_credentials=dns_credentials_path or "",
    )
