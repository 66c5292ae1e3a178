"""Opening SSH connections from inventory entries, with strict host-key checking."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import paramiko
from fabric import Config, Connection
from paramiko.ssh_exception import NoValidConnectionsError

from certfab.errors import ConnectError, HostKeyError
from certfab.inventory import Host, Inventory

# paramiko's transport thread logs every failure with a traceback on stderr (through logging's last-resort
# handler); certfab reports the same failure as one line, so paramiko's own log goes nowhere by default.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint of a host key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(address: str, port: int) -> str:
    """The name under which OpenSSH and paramiko file a host's key."""
    return address if port == 22 else f"[{address}]:{port}"


class RefuseUnknownKey(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """Refuse a host whose key is not in known_hosts, showing how to trust it."""

    def __init__(self, host: Host, known_hosts: Path) -> None:
        self.host = host
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyError(
            f"{self.host.name} ({hostname}): unknown host key {key.get_name()} {fingerprint(key)}; "
            f"nothing was run. If this fingerprint is right, rerun with --accept-new "
            f"or add the key to {self.known_hosts}"
        )


class AcceptNewKey(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """Record a key seen for the first time (like OpenSSH's accept-new); changed keys stay refused."""

    def __init__(self, host: Host, known_hosts: Path) -> None:
        self.host = host
        self.known_hosts = known_hosts
        self.recorded: str | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with open(self.known_hosts, "a", encoding="ascii") as handle:
            handle.write(line)
        self.recorded = f"{self.host.name}: recorded new host key {key.get_name()} {fingerprint(key)}"


def _reason(exc: Exception) -> str:
    """Why a connection failed, in words (paramiko wraps refused/unreachable in an errno-less error)."""
    if isinstance(exc, NoValidConnectionsError) and exc.errors:
        return "; ".join(sorted({_reason(error) for error in exc.errors.values()}))
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def open_connection(
    host: Host,
    inventory: Inventory,
    *,
    accept_new: bool = False,
    config: Config | None = None,
) -> Connection:
    """Connect to a host (eagerly, so key and login problems surface here as CertfabErrors)."""
    known_hosts = inventory.ssh.known_hosts
    connect_kwargs: dict[str, Any] = {
        "banner_timeout": inventory.ssh.connect_timeout,
        "auth_timeout": inventory.ssh.connect_timeout,
    }
    if host.key_file is not None:
        connect_kwargs["key_filename"] = [str(host.key_file)]
        connect_kwargs["look_for_keys"] = False
    conn = Connection(
        host.address,
        user=host.user,
        port=host.port,
        config=config if config is not None else Config(),
        connect_timeout=inventory.ssh.connect_timeout,
        connect_kwargs=connect_kwargs,
    )
    # Fabric trusts any key by default; replace its client policy before the first packet.
    client = conn.client
    if known_hosts.exists():
        client.load_system_host_keys(str(known_hosts))
    elif not accept_new:
        raise HostKeyError(
            f"{host.name}: known_hosts file {known_hosts} does not exist; nothing was run. "
            "Create it, point ssh.known_hosts at one, or rerun with --accept-new"
        )
    policy: paramiko.MissingHostKeyPolicy = (
        AcceptNewKey(host, known_hosts) if accept_new else RefuseUnknownKey(host, known_hosts)
    )
    client.set_missing_host_key_policy(policy)
    try:
        conn.open()
    except HostKeyError:
        conn.close()
        raise
    except paramiko.BadHostKeyException as exc:
        conn.close()
        raise HostKeyError(
            f"{host.name} ({host.address}): HOST KEY CHANGED: expected {fingerprint(exc.expected_key)}, "
            f"got {exc.key.get_name()} {fingerprint(exc.key)}; nothing was run. If the change is expected, "
            f"remove the old key: ssh-keygen -R {known_hosts_name(host.address, host.port)} -f {known_hosts}"
        ) from None
    except paramiko.AuthenticationException as exc:
        conn.close()
        raise ConnectError(f"{host.name} ({host.address}): authentication as {host.user} failed: {exc}") from None
    except TimeoutError:
        conn.close()
        raise ConnectError(
            f"{host.name} ({host.address}:{host.port}): connection timed out after "
            f"{inventory.ssh.connect_timeout:g}s"
        ) from None
    except (OSError, paramiko.SSHException) as exc:
        conn.close()
        raise ConnectError(f"{host.name} ({host.address}:{host.port}): cannot connect: {_reason(exc)}") from None
    if isinstance(policy, AcceptNewKey) and policy.recorded:
        conn.certfab_notice = policy.recorded
    return conn
