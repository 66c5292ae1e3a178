"""The inventory: a typed, frozen model of inventory.yaml, with its loader and validator.

Every problem is reported as an `InventoryError` (exit code 2) whose message is one line:
``<file>: <field path>: <value repr> <what is wrong>``.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import math
import os
import re
import reprlib
import stat
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn, TypeVar

import yaml

from certfab import validate
from certfab.errors import InventoryError
from certfab.ratelimit import Limits
from certfab.tlsdefaults import DHPARAM_BITS, HSTS_PRELOAD_MIN_AGE, PROFILES

__all__ = [
    "ACME_SERVERS",
    "DEFAULT_CERTBOT_IMAGE",
    "ENV_VAR",
    "AcmeSettings",
    "CertbotSettings",
    "Dns01Settings",
    "Host",
    "Inventory",
    "RenewalSettings",
    "Secret",
    "Site",
    "SshSettings",
    "TlsSettings",
    "inventory_path",
    "load_inventory",
    "parse_inventory",
]

ACME_SERVERS = {
    "production": "https://acme-v02.api.letsencrypt.org/directory",
    "staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
DEFAULT_CERTBOT_IMAGE = "certbot/certbot:v5.1.0"
ENV_VAR = "CERTFAB_INVENTORY"
DEFAULT_FILE = "inventory.yaml"
MAX_DOMAINS = 100  # Let's Encrypt's limit of names per certificate
MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_CREDENTIALS_BYTES = 64 * 1024
CHALLENGES = ("http-01", "dns-01")

T = TypeVar("T")
FieldPath = tuple[str | int, ...]


# ---------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Site:
    """One certificate lineage on a host, with the names it covers and optional managed content.

    A DNS-01 site is validated through DNS: it may hold wildcard names and needs no port 80; a managed
    one gets a port-80 redirect block only when `redirect` is set.
    """

    name: str
    domains: tuple[str, ...]
    root: str | None = None
    upstream: str | None = None
    # The ACME profile to ask for (None: the CA's default) and whether the order fails without it.
    profile: str | None = None
    profile_required: bool = False
    challenge: str = "http-01"
    redirect: bool = True

    @property
    def managed(self) -> bool:
        """Tell whether certfab may write a server block for this site (it has root or upstream)."""
        return self.root is not None or self.upstream is not None

    @property
    def dns01(self) -> bool:
        """Whether the CA validates this site through DNS (no HTTP challenge, no self-test)."""
        return self.challenge == "dns-01"


@dataclass(frozen=True)
class Secret:
    """File content that must never be shown: its repr is a digest, never the text."""

    text: str = field(repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8", errors="surrogateescape")).hexdigest()

    def __repr__(self) -> str:
        return f"Secret(sha256={self.sha256})"


@dataclass(frozen=True)
class Dns01Settings:
    """How a host's DNS-01 sites are validated: certbot's DNS plugin, its credentials and image.

    `credentials` is the plugin's credentials file, read from the operator's machine; it is
    installed on the host (root, 0600) for certbot and its renewals.
    """

    plugin: str
    credentials_path: Path
    credentials: Secret
    propagation_seconds: int | None
    image: str


@dataclass(frozen=True)
class CertbotSettings:
    """How certbot is run on a host: the pinned image and the container runtime."""

    image: str
    runtime: str


@dataclass(frozen=True)
class RenewalSettings:
    """The renewal job on a host: who is mailed, how often and when it runs."""

    admin_email: str
    times_per_day: int
    hour: int | None
    mail_on_success: bool


@dataclass(frozen=True)
class TlsSettings:
    """The TLS profile and HSTS settings applied to a host's sites."""

    profile: str
    hsts_max_age: int
    hsts_include_subdomains: bool
    hsts_preload: bool
    dhparam_bits: int | None


@dataclass(frozen=True)
class Host:
    """A managed nginx server, with everything needed to reach and configure it."""

    name: str
    address: str
    port: int
    user: str
    key_file: Path | None
    sudo: bool
    webroot: str
    groups: tuple[str, ...]
    sites: tuple[Site, ...]
    certbot: CertbotSettings
    renewal: RenewalSettings
    tls: TlsSettings
    forward_agent: bool = False
    jump: str | None = None
    ssh_fields_set: frozenset[str] = frozenset()
    # Set when the host has a DNS-01 site.
    dns01: Dns01Settings | None = None

    @property
    def domains(self) -> tuple[str, ...]:
        """Return all domains of all sites of this host, in inventory order."""
        return tuple(domain for site in self.sites for domain in site.domains)


@dataclass(frozen=True)
class AcmeSettings:
    """The ACME account and server used for every host."""

    email: str
    server: str
    server_name: str
    ca_bundle: Path | None
    trust_roots: Path | None
    key_type: str
    profile: str | None = None
    profile_required: bool = False
    rate_limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class SshSettings:
    """How SSH connections are checked, how long they may take, and which OpenSSH client config is read."""

    known_hosts: Path
    connect_timeout: float
    command_timeout: float
    config_file: Path | None = None


@dataclass(frozen=True)
class Inventory:
    """A validated inventory; `path` is the absolute path of the file it came from."""

    path: Path
    hosts: tuple[Host, ...]
    groups: Mapping[str, tuple[str, ...]] = field(hash=False)
    acme: AcmeSettings
    ssh: SshSettings

    def host(self, name: str) -> Host:
        """Return the host with this name, or raise InventoryError listing the known ones."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise InventoryError(f"unknown host {name!r}; known hosts: {_names(h.name for h in self.hosts)}")

    def select(self, limit: str | None) -> tuple[Host, ...]:
        """Return the hosts named by a comma list of groups and hosts (None: all), in inventory order."""
        if limit is None:
            return self.hosts
        items = [item.strip() for item in limit.split(",") if item.strip()]
        if not items:
            raise InventoryError(f"empty selection {limit!r}; name groups or hosts, separated by commas")
        host_names = {host.name for host in self.hosts}
        wanted: set[str] = set()
        for item in items:
            key = item.lower()
            if key in self.groups:
                wanted.update(self.groups[key])
            elif key in host_names:
                wanted.add(key)
            else:
                raise InventoryError(
                    f"unknown host or group {item!r}; known groups: {_names(self.groups)}; "
                    f"known hosts: {_names(h.name for h in self.hosts)}"
                )
        selected = tuple(host for host in self.hosts if host.name in wanted)
        if not selected:
            raise InventoryError(f"{limit!r} selects no hosts (its groups are empty)")
        return selected

    def host_for_address(self, name_or_address: str) -> Host:
        """Return the host with this name or, failing that, this address (for `fab -H x`)."""
        key = name_or_address.strip()
        for host in self.hosts:
            if host.name == key.lower():
                return host
        wanted = _address_key(key)
        matches = [host for host in self.hosts if _address_key(host.address) == wanted]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise InventoryError(
                f"{name_or_address!r} is the address of several hosts ({_names(h.name for h in matches)}); "
                "use a host name"
            )
        raise InventoryError(
            f"no host named {name_or_address!r} or with that address; "
            f"known hosts: {_names(h.name for h in self.hosts)}"
        )


def _names(names: Iterable[str], limit: int = 20) -> str:
    """Join names for an error message, shortening long lists."""
    items = list(names)
    if not items:
        return "none"
    if len(items) > limit:
        return ", ".join(items[:limit]) + f", ... ({len(items) - limit} more)"
    return ", ".join(items)


def _address_key(address: str) -> str:
    """Normalise an address for comparison (IP in canonical form, names in lower case)."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address.lower().rstrip(".")


# ---------------------------------------------------------------------------------------------- errors

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]+")
_REPR = reprlib.Repr()
_REPR.maxstring = 80
_REPR.maxother = 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 5
_REPR.maxlevel = 3


def _short_repr(value: object) -> str:
    """Return a repr of value short enough for one line of an error message."""
    return _REPR.repr(value).replace("\n", "\\n").replace("\r", "\\r")


def _render_path(path: FieldPath) -> str:
    """Render a field path as `hosts.web1.sites[0].domains[1]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += ("." if out else "") + part
        else:
            out += f"[{_short_repr(part)}]"
    return out


@dataclass(frozen=True)
class _Reader:
    """What the validators need to know: the file name to report and the directory for relative paths."""

    display: str
    base_dir: Path

    def fail(self, path: FieldPath, value: object, what: str) -> NoReturn:
        """Raise the one-line error for a value that is wrong."""
        raise InventoryError(f"{self._prefix(path)}{_short_repr(value)} {what}")

    def fail_text(self, path: FieldPath, text: str) -> NoReturn:
        """Raise a one-line error about a field that has no single wrong value (e.g. one is missing)."""
        raise InventoryError(f"{self._prefix(path)}{text}")

    def check(self, path: FieldPath, value: object, checker: Callable[[object], T]) -> T:
        """Run a checker from certfab.validate, turning its refusal into an InventoryError."""
        try:
            return checker(value)
        except validate.Invalid as exc:
            self.fail(path, value, str(exc))

    def _prefix(self, path: FieldPath) -> str:
        """Return `<file>: <path>: ` (or just `<file>: ` at the top level)."""
        rendered = _render_path(path)
        return f"{self.display}: {rendered}: " if rendered else f"{self.display}: "


# ---------------------------------------------------------------------------------------------- values


def _mapping(
    r: _Reader, path: FieldPath, value: object, allowed: Sequence[str], *, none_ok: bool = True
) -> dict[str, object]:
    """Check that value is a mapping with only known keys (None counts as empty where allowed)."""
    if value is None and none_ok:
        return {}
    if not isinstance(value, Mapping):
        r.fail(path, value, f"is not a mapping (expected keys: {', '.join(allowed)})")
    out: dict[str, object] = {}
    for key, item in value.items():
        if not isinstance(key, str) or key not in allowed:
            r.fail(path, key, _unknown_key(key, allowed))
        out[key] = item
    return out


def _unknown_key(key: object, allowed: Sequence[str]) -> str:
    """Say that a key is unknown, suggest the nearest known one and list them all."""
    hint = ""
    if isinstance(key, str):
        close = difflib.get_close_matches(key, allowed, n=1)
        if close:
            hint = f"; did you mean {close[0]!r}?"
    return f"is not a known key{hint} (known keys: {', '.join(allowed)})"


def _list(r: _Reader, path: FieldPath, value: object, expected: str) -> list[object]:
    """Check that value is a list."""
    if not isinstance(value, (list, tuple)):
        r.fail(path, value, f"is not a list (expected a list of {expected})")
    return list(value)


def _int(r: _Reader, path: FieldPath, value: object, low: int, high: int) -> int:
    """Check an integer (not a boolean, not a quoted number) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            r.fail(path, value, "is not an integer (remove the quotes)")
        if isinstance(value, bool):
            r.fail(path, value, "is not an integer (it is a boolean)")
        r.fail(path, value, "is not an integer")
    if not low <= value <= high:
        r.fail(path, value, f"is out of range ({low}-{high})")
    return value


def _optional_int(r: _Reader, path: FieldPath, value: object, low: int, high: int) -> int | None:
    """Check an integer within [low, high], or null."""
    return None if value is None else _int(r, path, value, low, high)


def _bool(r: _Reader, path: FieldPath, value: object) -> bool:
    """Check a real YAML boolean (true/false); quoted strings, yes/no and 0/1 are refused."""
    if not isinstance(value, bool):
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            r.fail(path, value, "is not a boolean (write true or false without quotes)")
        r.fail(path, value, "is not a boolean (use true or false)")
    return value


def _seconds(r: _Reader, path: FieldPath, value: object) -> float:
    """Check a positive, finite number of seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        r.fail(path, value, "is not a number of seconds")
    if not math.isfinite(value) or value <= 0:
        r.fail(path, value, "is not a number of seconds greater than 0")
    return float(value)


def _choice(r: _Reader, path: FieldPath, value: object, choices: Sequence[str]) -> str:
    """Check that value is one of the given strings."""
    if not isinstance(value, str) or value not in choices:
        r.fail(path, value, f"is not one of: {', '.join(choices)}")
    return value


def _local_file(r: _Reader, path: FieldPath, value: object, *, must_exist: bool) -> Path:
    """Resolve a path on this machine (`~` expanded, relative to the inventory's directory)."""
    text = r.check(path, value, validate.local_path)
    resolved = Path(os.path.expanduser(text))
    if not resolved.is_absolute():
        resolved = r.base_dir / resolved
    resolved = Path(os.path.normpath(resolved))
    if must_exist:
        try:
            mode = os.stat(resolved).st_mode
        except FileNotFoundError:
            r.fail(path, value, f"does not exist (looked for {resolved})")
        except OSError as exc:
            r.fail(path, value, f"cannot be read ({exc.strerror}: {resolved})")
        if not stat.S_ISREG(mode):
            r.fail(path, value, f"is not a regular file ({resolved})")
    return resolved


def _optional_file(r: _Reader, path: FieldPath, value: object) -> Path | None:
    """Resolve an optional existing file on this machine (null: none)."""
    return None if value is None else _local_file(r, path, value, must_exist=True)


# ---------------------------------------------------------------------------------------------- sections

_TOP_KEYS = ("version", "ssh", "acme", "defaults", "groups", "hosts")
_SSH_KEYS = ("known_hosts", "connect_timeout", "command_timeout", "config_file")
_ACME_KEYS = ("email", "server", "ca_bundle", "trust_roots", "key_type", "profile", "profile_required",
              "rate_limits")
_RATE_LIMIT_KEYS = ("per_registered_domain", "per_name_set")
_SETTING_KEYS = (
    "user", "port", "key_file", "forward_agent", "jump", "sudo", "webroot", "certbot", "renewal", "tls", "acme",
    "dns01",
)
# Host settings that ssh_config may also give; the inventory's value wins where the inventory sets one.
SSH_CONFIG_FIELDS = ("user", "port", "key_file", "jump")
MIN_CONNECT_TIMEOUT = 1.0
_HOST_KEYS = ("address", "groups", "sites", *_SETTING_KEYS)
_SITE_KEYS = ("name", "domains", "root", "upstream", "acme", "challenge", "redirect")
_SECTION_KEYS = {
    "acme": ("profile", "profile_required"),
    "certbot": ("image", "runtime"),
    "renewal": ("admin_email", "times_per_day", "hour", "mail_on_success"),
    "tls": ("profile", "hsts_max_age", "hsts_include_subdomains", "hsts_preload", "dhparam_bits"),
    "dns01": ("plugin", "credentials", "propagation_seconds", "image"),
}

RUNTIMES = ("docker", "podman")
# Let's Encrypt's certificate profiles (tlsclient ended in 2026); null asks for the CA's default.
ACME_PROFILES = ("classic", "tlsserver", "shortlived")
KEY_TYPES = ("ecdsa", "rsa")

_Parser = Callable[[_Reader, FieldPath, object], Any]


_PLUGIN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def _dns_plugin(r: _Reader, path: FieldPath, value: object) -> str:
    """Check a certbot DNS plugin name as its images and options spell it (rfc2136, route53, ...)."""
    if not isinstance(value, str) or not _PLUGIN.fullmatch(value) or len(value) > 40:
        r.fail(path, value, "is not a certbot DNS plugin name (e.g. rfc2136, cloudflare, route53)")
    return value


def _credentials(r: _Reader, path: FieldPath, value: object) -> tuple[Path, Secret]:
    """Read a DNS plugin's credentials file from this machine (its content is never shown)."""
    resolved = _local_file(r, path, value, must_exist=True)
    try:
        raw = resolved.read_bytes()
    except OSError as exc:
        r.fail(path, value, f"cannot be read ({exc.strerror}: {resolved})")
    if len(raw) > MAX_CREDENTIALS_BYTES:
        r.fail(path, value, f"is larger than {MAX_CREDENTIALS_BYTES // 1024} KiB ({resolved})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        r.fail(path, value, f"is not UTF-8 text ({resolved})")
    return resolved, Secret(text)


def _dns01(r: _Reader, path: FieldPath, merged: Mapping[str, Any], certbot_image: str) -> Dns01Settings:
    """The DNS-01 settings of a host that has a DNS-01 site (plugin and credentials are required)."""
    for key in ("plugin", "credentials"):
        if f"dns01.{key}" not in merged:
            r.fail_text(path + ("dns01",), f"key {key!r} is required for a DNS-01 site; set it here or in "
                        "defaults.dns01")
    plugin = merged["dns01.plugin"]
    where, raw, _text = merged["dns01.credentials"]
    credentials_path, secret = _credentials(r, where, raw)
    image = merged.get("dns01.image")
    if image is None:
        # certbot's DNS plugin images are certbot/dns-<plugin>, tagged like certbot/certbot.
        name = certbot_image.rpartition("/")[2]
        if "@" in name or ":" not in name:
            r.fail_text(path + ("dns01",), f"key 'image' is required: no tag to take from certbot.image "
                        f"{_short_repr(certbot_image)} (name the image with the {plugin} plugin, pinned)")
        image = f"certbot/dns-{plugin}:{name.rpartition(':')[2]}"
    return Dns01Settings(
        plugin=plugin,
        credentials_path=credentials_path,
        credentials=secret,
        propagation_seconds=merged.get("dns01.propagation_seconds"),
        image=image,
    )


def _acme_profile(r: _Reader, path: FieldPath, value: object) -> str | None:
    """Check an ACME profile: null (the CA's default) or one of ACME_PROFILES."""
    if value is None:
        return None
    return _choice(r, path, value, ACME_PROFILES)


def _dhparam(r: _Reader, path: FieldPath, value: object) -> int | None:
    """Check dhparam_bits: null or one of 2048, 3072, 4096."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value not in DHPARAM_BITS:
        r.fail(path, value, "is not one of: null, 2048, 3072, 4096")
    return value


# One parser per host setting; keys of nested sections are "section.key".
_SETTING_PARSERS: dict[str, _Parser] = {
    "user": lambda r, p, v: r.check(p, v, validate.user_name),
    "port": lambda r, p, v: _int(r, p, v, 1, 65535),
    "key_file": _optional_file,
    "forward_agent": _bool,
    "jump": lambda r, p, v: _jump(r, p, v),
    "sudo": _bool,
    "webroot": lambda r, p, v: r.check(p, v, validate.host_path),
    "certbot.image": lambda r, p, v: r.check(p, v, validate.image_ref),
    "certbot.runtime": lambda r, p, v: _choice(r, p, v, RUNTIMES),
    "renewal.admin_email": lambda r, p, v: r.check(p, v, validate.email),
    "renewal.times_per_day": lambda r, p, v: _int(r, p, v, 1, 2),
    "renewal.hour": lambda r, p, v: _optional_int(r, p, v, 0, 23),
    "renewal.mail_on_success": _bool,
    "tls.profile": lambda r, p, v: _choice(r, p, v, PROFILES),
    "acme.profile": lambda r, p, v: _acme_profile(r, p, v),
    "acme.profile_required": _bool,
    "tls.hsts_max_age": lambda r, p, v: _int(r, p, v, 0, 2**31 - 1),
    "tls.hsts_include_subdomains": _bool,
    "tls.hsts_preload": _bool,
    "tls.dhparam_bits": _dhparam,
    "dns01.plugin": lambda r, p, v: _dns_plugin(r, p, v),
    # Checked as a path here; read only for a host that has a DNS-01 site.
    "dns01.credentials": lambda r, p, v: (p, v, r.check(p, v, validate.local_path)),
    "dns01.propagation_seconds": lambda r, p, v: _optional_int(r, p, v, 0, 3600),
    "dns01.image": lambda r, p, v: r.check(p, v, validate.image_ref),
}

_BUILTIN_SETTINGS: dict[str, Any] = {
    "user": "root",
    "port": 22,
    "key_file": None,
    "forward_agent": False,
    "jump": None,
    "sudo": False,
    "webroot": "/var/www/letsencrypt",
    "certbot.image": DEFAULT_CERTBOT_IMAGE,
    "certbot.runtime": "docker",
    "renewal.times_per_day": 2,
    "renewal.hour": None,
    "renewal.mail_on_success": True,
    "tls.profile": "intermediate",
    "tls.hsts_max_age": 63072000,
    "tls.hsts_include_subdomains": True,
    "tls.hsts_preload": False,
    "tls.dhparam_bits": None,
}


def _settings(r: _Reader, path: FieldPath, body: Mapping[str, object]) -> dict[str, Any]:
    """Validate the host settings present in body (defaults or one host) into a flat dict."""
    out: dict[str, Any] = {}
    for key in _SETTING_KEYS:
        if key not in body:
            continue
        value = body[key]
        if key in _SECTION_KEYS:
            section = _mapping(r, path + (key,), value, _SECTION_KEYS[key])
            for sub, sub_value in section.items():
                flat = f"{key}.{sub}"
                out[flat] = _SETTING_PARSERS[flat](r, path + (key, sub), sub_value)
        else:
            out[key] = _SETTING_PARSERS[key](r, path + (key,), value)
    return out


@dataclass(frozen=True)
class JumpSpec:
    """A parsed `jump:` value: an inventory host's name, or `[user@]address[:port]`, or `none`."""

    address: str
    user: str | None = None
    port: int | None = None

    @property
    def direct(self) -> bool:
        """`none`: connect directly, even if ssh_config names a ProxyJump for the host."""
        return self.address == "none" and self.user is None and self.port is None


_JUMP = re.compile(r"(?:(?P<user>[^@]*)@)?(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*))(?::(?P<port>[^:]*))?")


def parse_jump(value: object) -> JumpSpec:
    """Parse a jump value like OpenSSH's ProxyJump (one hop); raise validate.Invalid when it is wrong."""
    if not isinstance(value, str):
        raise validate.Invalid("is not a jump host (a host name of this inventory, or [user@]address[:port])")
    match = _JUMP.fullmatch(value.strip())
    if match is None:
        raise validate.Invalid("is not [user@]address[:port] (write IPv6 addresses as [address]:port)")
    user = None if match["user"] is None else validate.user_name(match["user"])
    address = validate.address(match["v6"] if match["v6"] is not None else match["host"])
    port = None
    if match["port"] is not None:
        if not match["port"].isdigit() or not 1 <= int(match["port"]) <= 65535:
            raise validate.Invalid("has a port that is not a number in 1-65535")
        port = int(match["port"])
    return JumpSpec(address=address, user=user, port=port)


def _jump(r: _Reader, path: FieldPath, value: object) -> str | None:
    """Check a jump host (null: none set here, so ssh_config's ProxyJump may apply)."""
    if value is None:
        return None
    r.check(path, value, parse_jump)
    assert isinstance(value, str)
    return value.strip()


def _connect_timeout(r: _Reader, path: FieldPath, value: object) -> float:
    """Seconds to wait for a connection; below one second paramiko and Fabric would treat it as none."""
    seconds = _seconds(r, path, value)
    if seconds < MIN_CONNECT_TIMEOUT:
        r.fail(path, value, f"must be at least {MIN_CONNECT_TIMEOUT:g} second")
    return seconds


def _ssh(r: _Reader, value: object) -> SshSettings:
    """Validate the ssh section."""
    body = _mapping(r, ("ssh",), value, _SSH_KEYS)
    known_hosts = body.get("known_hosts", "~/.ssh/known_hosts")
    config_file = body.get("config_file", "~/.ssh/config")
    return SshSettings(
        known_hosts=_local_file(r, ("ssh", "known_hosts"), known_hosts, must_exist=False),
        connect_timeout=_connect_timeout(r, ("ssh", "connect_timeout"), body.get("connect_timeout", 10)),
        command_timeout=_seconds(r, ("ssh", "command_timeout"), body.get("command_timeout", 900)),
        config_file=None if config_file is None else _local_file(
            r, ("ssh", "config_file"), config_file, must_exist=False
        ),
    )


def _acme(r: _Reader, top: Mapping[str, object]) -> AcmeSettings:
    """Validate the acme section (required, with at least the account e-mail)."""
    if "acme" not in top:
        r.fail_text((), "key 'acme' is required (at least acme.email, the ACME account e-mail address)")
    body = _mapping(r, ("acme",), top["acme"], _ACME_KEYS)
    if "email" not in body:
        r.fail_text(("acme",), "key 'email' is required (the ACME account e-mail address)")
    email = r.check(("acme", "email"), body["email"], validate.email)
    server_value = body.get("server", "production")
    if isinstance(server_value, str) and server_value in ACME_SERVERS:
        server_name, server = server_value, ACME_SERVERS[server_value]
    elif isinstance(server_value, str) and "://" in server_value:
        server = r.check(("acme", "server"), server_value, validate.acme_url)
        known = {url: name for name, url in ACME_SERVERS.items()}
        server_name = known.get(server, "custom")
    else:
        r.fail(("acme", "server"), server_value, "is not production, staging or an https:// URL")
    return AcmeSettings(
        email=email,
        server=server,
        server_name=server_name,
        ca_bundle=_optional_file(r, ("acme", "ca_bundle"), body.get("ca_bundle")),
        trust_roots=_optional_file(r, ("acme", "trust_roots"), body.get("trust_roots")),
        key_type=_choice(r, ("acme", "key_type"), body.get("key_type", "ecdsa"), KEY_TYPES),
        profile=_acme_profile(r, ("acme", "profile"), body.get("profile")),
        profile_required=_bool(r, ("acme", "profile_required"), body.get("profile_required", False)),
        rate_limits=_rate_limits(r, body.get("rate_limits")),
    )


def _rate_limits(r: _Reader, value: object) -> Limits:
    """Validate acme.rate_limits: certificates per 7 days (Let's Encrypt's 50 and 5 unless set)."""
    path: FieldPath = ("acme", "rate_limits")
    body = _mapping(r, path, value, _RATE_LIMIT_KEYS)
    defaults = Limits()
    return Limits(
        per_registered_domain=_int(r, path + ("per_registered_domain",),
                                   body.get("per_registered_domain", defaults.per_registered_domain), 1, 10**6),
        per_name_set=_int(r, path + ("per_name_set",), body.get("per_name_set", defaults.per_name_set), 1, 10**6),
    )


def _site(r: _Reader, path: FieldPath, value: object) -> Site:
    """Validate one entry of a host's sites list."""
    body = _mapping(r, path, value, _SITE_KEYS, none_ok=False)
    for key in ("name", "domains"):
        if key not in body:
            r.fail_text(path, f"key {key!r} is required (a site needs a name and its domains)")
    name = r.check(path + ("name",), body["name"], validate.site_name)
    raw_domains = _list(r, path + ("domains",), body["domains"], "DNS names")
    if not raw_domains:
        r.fail(path + ("domains",), raw_domains, "is empty; list at least one domain")
    if len(raw_domains) > MAX_DOMAINS:
        r.fail(
            path + ("domains",),
            raw_domains,
            f"has {len(raw_domains)} names; a certificate holds at most {MAX_DOMAINS}",
        )
    challenge = _choice(r, path + ("challenge",), body.get("challenge", "http-01"), CHALLENGES)
    domains: list[str] = []
    for index, raw in enumerate(raw_domains):
        if isinstance(raw, str) and raw.startswith("*") and challenge != "dns-01":
            r.fail(path + ("domains", index), raw, "is a wildcard; wildcards need challenge: dns-01 "
                   "(HTTP-01 cannot validate them)")
        check = validate.wildcard_name if isinstance(raw, str) and raw.startswith("*") else validate.dns_name
        domain = r.check(path + ("domains", index), raw, check)
        if domain in domains:
            r.fail(path + ("domains", index), raw, f"is listed twice (also domains[{domains.index(domain)}])")
        domains.append(domain)
    root = body.get("root")
    upstream = body.get("upstream")
    if root is not None and upstream is not None:
        r.fail_text(path, "both 'root' and 'upstream' are set; a managed site has one or the other")
    redirect = True
    if "redirect" in body:
        redirect = _bool(r, path + ("redirect",), body["redirect"])
        if challenge != "dns-01" or (root is None and upstream is None):
            r.fail_text(path + ("redirect",), "applies to managed DNS-01 sites only (an HTTP-01 site always "
                        "keeps its port-80 block, and an existing block is converted as it is)")
    elif challenge == "dns-01":
        # A DNS-01 site needs no port 80: a managed one gets a redirect block only when asked.
        redirect = False
    own = _settings(r, path, {"acme": body["acme"]}) if "acme" in body else {}
    return Site(
        name=name,
        domains=tuple(domains),
        root=None if root is None else r.check(path + ("root",), root, validate.host_path),
        upstream=None if upstream is None else r.check(path + ("upstream",), upstream, validate.upstream_url),
        challenge=challenge,
        redirect=redirect,
        # Until _host resolves them: what the site itself says (a key missing here means "inherit").
        profile=own.get("acme.profile", _INHERIT),
        profile_required=own.get("acme.profile_required", _INHERIT),
    )


def _sites(r: _Reader, path: FieldPath, value: object) -> tuple[Site, ...]:
    """Validate a host's sites: unique names, and each domain in one site only."""
    if value is None:
        return ()
    sites: list[Site] = []
    owner: dict[str, int] = {}
    for index, raw in enumerate(_list(r, path, value, "sites")):
        site = _site(r, path + (index,), raw)
        for other_index, other in enumerate(sites):
            if other.name == site.name:
                r.fail(path + (index, "name"), site.name, f"is already the name of sites[{other_index}]")
        for d_index, domain in enumerate(site.domains):
            if domain in owner:
                first = owner[domain]
                r.fail(
                    path + (index, "domains", d_index),
                    domain,
                    f"is already in site {sites[first].name!r} (sites[{first}]); "
                    "a domain may be in only one site per host",
                )
            owner[domain] = index
        sites.append(site)
    return tuple(sites)


def _group_list(r: _Reader, path: FieldPath, value: object, check: Callable[[object], str]) -> list[str]:
    """Validate a list of names (group members or a host's groups), refusing repeats."""
    if value is None:
        return []
    names: list[str] = []
    for index, raw in enumerate(_list(r, path, value, "names")):
        name = r.check(path + (index,), raw, check)
        if name in names:
            r.fail(path + (index,), raw, "is listed twice")
        names.append(name)
    return names


# A site's profile setting it does not set itself (resolved by _host from the host, defaults, acme).
_INHERIT: Any = object()


def _resolve_profile(site: Site, merged: Mapping[str, Any]) -> Site:
    """The site with its ACME profile settings taken from itself, else its host, else defaults and acme."""
    profile = merged["acme.profile"] if site.profile is _INHERIT else site.profile
    required = merged["acme.profile_required"] if site.profile_required is _INHERIT else site.profile_required
    return replace(site, profile=profile, profile_required=required)


@dataclass(frozen=True)
class _RawHost:
    """A host validated except for its groups, which need every host first."""

    host: Host
    groups: list[str]


def _host(r: _Reader, name: str, value: object, defaults: Mapping[str, Any]) -> _RawHost:
    """Validate one host: its own fields, merged over `defaults` and the built-in defaults."""
    path: FieldPath = ("hosts", name)
    body = _mapping(r, path, value, _HOST_KEYS)
    if "address" in body:
        address = r.check(path + ("address",), body["address"], validate.address)
    else:
        try:
            address = validate.address(name)
        except validate.Invalid as exc:
            r.fail_text(path, f"has no 'address' and its name {name!r} {exc}; set address")
    own = _settings(r, path, body)
    merged = {**_BUILTIN_SETTINGS, **defaults, **own}
    ssh_fields_set = frozenset(key for key in SSH_CONFIG_FIELDS if key in defaults or key in own)
    if "renewal.admin_email" not in merged:
        r.fail_text(
            path + ("renewal",),
            "key 'admin_email' is required (where renewal mails go); set it here or in defaults.renewal",
        )
    tls = TlsSettings(
        profile=merged["tls.profile"],
        hsts_max_age=merged["tls.hsts_max_age"],
        hsts_include_subdomains=merged["tls.hsts_include_subdomains"],
        hsts_preload=merged["tls.hsts_preload"],
        dhparam_bits=merged["tls.dhparam_bits"],
    )
    if tls.hsts_preload and (not tls.hsts_include_subdomains or tls.hsts_max_age < HSTS_PRELOAD_MIN_AGE):
        r.fail_text(
            path + ("tls",),
            f"hsts_preload needs hsts_include_subdomains: true and hsts_max_age >= {HSTS_PRELOAD_MIN_AGE}",
        )
    sites = _sites(r, path + ("sites",), body.get("sites"))
    dns01 = None
    if any(site.dns01 for site in sites):
        dns01 = _dns01(r, path, merged, merged["certbot.image"])
    host = Host(
        name=name,
        address=address,
        port=merged["port"],
        user=merged["user"],
        key_file=merged["key_file"],
        sudo=merged["sudo"],
        webroot=merged["webroot"],
        groups=(),
        sites=tuple(_resolve_profile(site, merged) for site in sites),
        # certbot renews every lineage of the host in one run: with a DNS-01 site, from the plugin's image.
        certbot=CertbotSettings(image=dns01.image if dns01 is not None else merged["certbot.image"],
                                runtime=merged["certbot.runtime"]),
        renewal=RenewalSettings(
            admin_email=merged["renewal.admin_email"],
            times_per_day=merged["renewal.times_per_day"],
            hour=merged["renewal.hour"],
            mail_on_success=merged["renewal.mail_on_success"],
        ),
        tls=tls,
        forward_agent=merged["forward_agent"],
        jump=merged["jump"],
        ssh_fields_set=ssh_fields_set,
        dns01=dns01,
    )
    return _RawHost(host, _group_list(r, path + ("groups",), body.get("groups"), validate.group_name))


def _hosts(r: _Reader, top: Mapping[str, object], defaults: Mapping[str, Any]) -> list[_RawHost]:
    """Validate the hosts section (required, at least one host, distinct addresses)."""
    if "hosts" not in top:
        r.fail_text((), "key 'hosts' is required (the servers to manage, by name)")
    value = top["hosts"]
    if not isinstance(value, Mapping) or not value:
        r.fail(("hosts",), value, "is not a mapping of host names to hosts (at least one host)")
    raw_hosts: list[_RawHost] = []
    seen: dict[tuple[str, int], str] = {}
    for name, body in value.items():
        r.check(("hosts",), name, validate.host_name)
        raw = _host(r, name, body, defaults)
        where = (_address_key(raw.host.address), raw.host.port)
        if where in seen:
            r.fail(
                ("hosts", name, "address"),
                raw.host.address,
                f"is already the address of host {seen[where]!r} (same port {raw.host.port})",
            )
        seen[where] = name
        raw_hosts.append(raw)
    return raw_hosts


def _check_jumps(r: _Reader, raw_hosts: Sequence[_RawHost]) -> None:
    """Refuse a host that is its own jump host, or a loop of inventory hosts jumping through each other."""
    jumps = {raw.host.name: raw.host.jump for raw in raw_hosts}
    for raw in raw_hosts:
        seen = [raw.host.name]
        hop = raw.host.jump
        while hop is not None and hop in jumps:
            if hop in seen:
                r.fail(
                    ("hosts", raw.host.name, "jump"),
                    raw.host.jump,
                    "jumps in a loop (" + " -> ".join([*seen, hop]) + "); a jump host must be reachable without it",
                )
            seen.append(hop)
            hop = jumps[hop]


def _check_shared_sites(r: _Reader, raw_hosts: Sequence[_RawHost]) -> None:
    """A site name on several hosts is one shared certificate: every host must declare the same domains."""
    first: dict[str, tuple[str, Site]] = {}
    for raw in raw_hosts:
        for index, site in enumerate(raw.host.sites):
            if site.name not in first:
                first[site.name] = (raw.host.name, site)
                continue
            owner, other = first[site.name]
            if set(site.domains) != set(other.domains):
                r.fail(
                    ("hosts", raw.host.name, "sites", index, "domains"),
                    list(site.domains),
                    f"differ from site {site.name!r} on host {owner} ({', '.join(other.domains)}); a site on "
                    "several hosts is one shared certificate: give it the same domains on every host",
                )


def _groups(r: _Reader, value: object, raw_hosts: Sequence[_RawHost]) -> dict[str, tuple[str, ...]]:
    """Merge the groups section with the hosts' own `groups:` into group -> hosts (inventory order)."""
    host_names = [raw.host.name for raw in raw_hosts]
    members: dict[str, set[str]] = {}
    if value is not None and not isinstance(value, Mapping):
        r.fail(("groups",), value, "is not a mapping of group names to lists of host names")
    for group, listed in (value or {}).items():
        name = r.check(("groups",), group, validate.group_name)
        if name in host_names:
            r.fail(("groups",), group, "is also a host name; group and host names must differ")
        path: FieldPath = ("groups", name)
        names = _group_list(r, path, listed, validate.host_name)
        for index, member in enumerate(names):
            if member not in host_names:
                r.fail(
                    path + (index,),
                    member,
                    f"is not a host in this inventory (known hosts: {_names(host_names)})",
                )
        members[name] = set(names)
    for raw in raw_hosts:
        for index, group in enumerate(raw.groups):
            if group in host_names:
                r.fail(
                    ("hosts", raw.host.name, "groups", index),
                    group,
                    "is a host name; group and host names must differ",
                )
            members.setdefault(group, set()).add(raw.host.name)
    return {group: tuple(h for h in host_names if h in hosts) for group, hosts in members.items()}


def parse_inventory(data: object, path: Path) -> Inventory:
    """Validate already-parsed YAML data into an Inventory; `path` is the file name used in messages."""
    display = str(path) if str(path).isprintable() else repr(str(path))
    r = _Reader(display=display, base_dir=Path(os.path.abspath(path)).parent)
    if data is None:
        r.fail_text((), "the inventory is empty; it needs at least 'acme' and 'hosts'")
    top = _mapping(r, (), data, _TOP_KEYS, none_ok=False)
    if "version" in top:
        version = top["version"]
        if isinstance(version, bool) or version != 1:
            r.fail(("version",), version, "is not a supported version (only 1)")
    ssh = _ssh(r, top.get("ssh"))
    acme = _acme(r, top)
    defaults = {
        "acme.profile": acme.profile,
        "acme.profile_required": acme.profile_required,
        **_settings(r, ("defaults",), _mapping(r, ("defaults",), top.get("defaults"), _SETTING_KEYS)),
    }
    raw_hosts = _hosts(r, top, defaults)
    _check_jumps(r, raw_hosts)
    _check_shared_sites(r, raw_hosts)
    groups = _groups(r, top.get("groups"), raw_hosts)
    hosts = tuple(
        replace(raw.host, groups=tuple(g for g, members in groups.items() if raw.host.name in members))
        for raw in raw_hosts
    )
    return Inventory(
        path=Path(os.path.abspath(path)),
        hosts=hosts,
        groups=MappingProxyType(groups),
        acme=acme,
        ssh=ssh,
    )


# ---------------------------------------------------------------------------------------------- files


class _Rules:
    """Refuses duplicate keys and reads only true/false as booleans (YAML 1.2); mixed into both loaders."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        """Build a mapping, refusing a key given twice (PyYAML would silently keep the last)."""
        seen: set[object] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[attr-defined]
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {_short_repr(key)}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)  # type: ignore[misc,no-any-return]


class _Loader(_Rules, yaml.SafeLoader):
    """The safe loader in Python: slower, and the one whose error messages certfab shows."""


# libyaml's parser when PyYAML was built with it (several times faster on a large inventory); the
# constructor and resolver, where the rules live, are the same Python classes either way.
_FastLoader: type[yaml.SafeLoader] = (
    type("_FastLoader", (_Rules, yaml.CSafeLoader), {}) if getattr(yaml, "__with_libyaml__", False) else _Loader
)

# YAML 1.1 also reads yes/no/on/off as booleans (a host or group called `no` would become False).
_LOADERS: tuple[type[yaml.SafeLoader], ...] = tuple(dict.fromkeys((_Loader, _FastLoader)))
for _loader in _LOADERS:
    _loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )


def _yaml_error(display: str, exc: yaml.YAMLError) -> str:
    """Render a YAML error as one line with the line and column where it was found."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        where = f"{display}:{mark.line + 1}:{mark.column + 1}" if mark is not None else display
        return f"{where}: invalid YAML: {' '.join(str(problem).split())}"
    return f"{display}: invalid YAML: {' '.join(str(exc).split())}"


def _load_yaml(text: str, display: str) -> object:
    """Parse YAML text, turning every parser failure into a one-line InventoryError."""
    try:
        try:
            return yaml.load(text, Loader=_FastLoader)  # a SafeLoader
        except yaml.YAMLError:
            if _FastLoader is not _Loader:
                # The Python parser raises the same error in the words the documentation quotes.
                yaml.load(text, Loader=_Loader)
            raise
    except yaml.YAMLError as exc:
        raise InventoryError(_yaml_error(display, exc)) from None
    except RecursionError:
        raise InventoryError(f"{display}: invalid YAML: nested too deeply") from None


def inventory_path(explicit: str | None = None) -> Path:
    """Return the inventory file to use: explicit, else $CERTFAB_INVENTORY, else ./inventory.yaml."""
    chosen = explicit or os.environ.get(ENV_VAR) or DEFAULT_FILE
    return Path(os.path.expanduser(chosen)) if chosen.startswith("~") else Path(chosen)


def load_inventory(path: str | Path | None = None) -> Inventory:
    """Read, parse and validate an inventory file (see inventory_path for how it is found)."""
    file = inventory_path(None) if path is None or str(path) == "" else Path(path)
    display = str(file) if str(file).isprintable() else repr(str(file))
    try:
        size = file.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InventoryError(f"{display}: {size} bytes is too large for an inventory (at most 10 MiB)")
        raw = file.read_bytes()
    except FileNotFoundError:
        raise InventoryError(
            f"{display}: no such inventory file; point at one with --inventory PATH or {ENV_VAR}=PATH"
        ) from None
    except IsADirectoryError:
        raise InventoryError(f"{display}: is a directory, not an inventory file") from None
    except OSError as exc:
        raise InventoryError(f"{display}: cannot read the inventory ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InventoryError(
            f"{display}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None
    return parse_inventory(_load_yaml(text, display), file)
