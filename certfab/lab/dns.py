"""The lab DNS: BIND 9 serving the zone `test.` on the bridge address, with TSIG-signed dynamic updates."""

from __future__ import annotations

import base64
import ipaddress
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

from certfab.errors import LabError
from certfab.lab import layout, proc

ZONE = "test."
KEY_NAME = "certfab-lab."
KEY_ALGORITHM = "hmac-sha256"
NAMED = "/usr/sbin/named"
NSUPDATE = "/usr/bin/nsupdate"
DNS_DIR = layout.STATE_DIR / "dns"
CONFIG = DNS_DIR / "named.conf"
KEY_FILE = DNS_DIR / "tsig.key"
ZONE_FILE = DNS_DIR / "test.zone"
LOG = layout.LOG_DIR / "dns.log"
# Short TTLs: tests repoint names and expect every resolver to see the change at once.
TTL = 1

_LABEL = re.compile(r"[a-z0-9*_]([a-z0-9_-]{0,61}[a-z0-9])?")


def _secret() -> str:
    """The TSIG secret in use (base64), made when the lab's DNS configuration is written."""
    match = re.search(r'secret "([A-Za-z0-9+/=]+)";', KEY_FILE.read_text())
    if match is None:
        raise LabError(f"{KEY_FILE} holds no TSIG secret")
    return match.group(1)


def relative_name(name: str) -> str:
    """A lab name's owner inside the zone (`www.web1.test` -> `www.web1`); LabError for any other name."""
    fqdn = name.lower().rstrip(".") + "."
    if not fqdn.endswith("." + ZONE) or not all(_LABEL.fullmatch(p) for p in fqdn[: -len(ZONE) - 1].split(".")):
        raise LabError(f"'{name}' is not a name in the lab zone {ZONE} (e.g. web1.{ZONE.rstrip('.')})")
    return fqdn[: -len(ZONE) - 1]


def _addresses(values: Sequence[str]) -> list[str]:
    """IPv4 addresses, checked; LabError for anything else."""
    result = []
    for value in values:
        try:
            result.append(str(ipaddress.IPv4Address(value)))
        except ValueError as exc:
            raise LabError(f"'{value}' is not an IPv4 address") from exc
    return result


def zone_text(records: Mapping[str, Sequence[str]]) -> str:
    """The zone file: SOA, NS and one A record per (name, address)."""
    lines = [
        f"$ORIGIN {ZONE}",
        f"$TTL {TTL}",
        f"@ IN SOA ns.{ZONE} hostmaster.{ZONE} 1 3600 600 86400 {TTL}",
        f"@ IN NS ns.{ZONE}",
        f"ns IN A {layout.BRIDGE_ADDRESS}",
    ]
    for name, addresses in sorted(records.items()):
        lines += [f"{relative_name(name)} IN A {address}" for address in _addresses(addresses)]
    return "\n".join(lines) + "\n"


def config_text() -> str:
    """named.conf: authoritative only, on the bridge address, updates signed with the lab key."""
    return f"""options {{
    directory "{DNS_DIR}";
    pid-file none;
    session-keyfile none;
    listen-on port 53 {{ {layout.BRIDGE_ADDRESS}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
    allow-query {{ any; }};
}};
controls {{ }};
include "{KEY_FILE}";
zone "{ZONE}" {{
    type primary;
    file "{ZONE_FILE}";
    allow-update {{ key "{KEY_NAME}"; }};
}};
"""


def write_config(records: Mapping[str, Sequence[str]]) -> None:
    """A fresh configuration, key and zone (the previous run's journal dropped) with these A records."""
    DNS_DIR.mkdir(parents=True, exist_ok=True)
    for stale in DNS_DIR.iterdir():
        stale.unlink()
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    KEY_FILE.touch(mode=0o600)
    KEY_FILE.write_text(f'key "{KEY_NAME}" {{\n    algorithm {KEY_ALGORITHM};\n    secret "{secret}";\n}};\n')
    ZONE_FILE.write_text(zone_text(records))
    CONFIG.write_text(config_text())


def start() -> None:
    """Start named (foreground, logging to the lab's dns.log) and wait until it answers on port 53."""
    proc.run(["named-checkconf", "-z", str(CONFIG)])
    pid = proc.spawn([NAMED, "-g", "-4", "-n", "1", "-c", str(CONFIG)], log=LOG, cwd=DNS_DIR)
    proc.write_pid_file(layout.pid_file("dns"), proc.record(pid))

    def answers() -> bool:
        if proc.live_pid(layout.pid_file("dns")) is None:
            raise LabError(f"named exited at start; see {LOG}")
        return proc.port_open(layout.BRIDGE_ADDRESS, 53)

    proc.wait_for("lab DNS (named)", answers, timeout=30)


def is_lab_named(args: Sequence[str]) -> bool:
    """Whether a named command line is the lab's (by its configuration path)."""
    return str(CONFIG) in args


def set_records(name: str, addresses: Sequence[str]) -> None:
    """Replace the A records of a lab name (none: the name is removed) with a signed dynamic update."""
    owner = relative_name(name) + "." + ZONE
    checked = _addresses(addresses)
    script = [f"server {layout.BRIDGE_ADDRESS} 53", f"zone {ZONE}", f"update delete {owner} A"]
    script += [f"update add {owner} {TTL} A {address}" for address in checked]
    script += ["send", ""]
    result = proc.run([NSUPDATE, "-k", str(KEY_FILE)], input="\n".join(script), check=False, timeout=30)
    if result.returncode != 0:
        detail = " | ".join(line for line in (result.stderr + result.stdout).splitlines() if line.strip())
        raise LabError(f"lab DNS refused the update for {name}: {detail or f'exit {result.returncode}'}")


def credentials_text() -> str:
    """certbot's rfc2136 credentials for the lab DNS (server, key name, secret, algorithm)."""
    return (
        f"dns_rfc2136_server = {layout.BRIDGE_ADDRESS}\n"
        "dns_rfc2136_port = 53\n"
        f"dns_rfc2136_name = {KEY_NAME}\n"
        f"dns_rfc2136_secret = {_secret()}\n"
        f"dns_rfc2136_algorithm = {KEY_ALGORITHM.upper()}\n"
    )


def key_path() -> Path:
    """The TSIG key file (named.conf syntax, as nsupdate -k reads it)."""
    return KEY_FILE
