"""Opening SSH connections from inventory entries, with strict host-key checking, for targets and jump hosts.

Routes are resolved here, not by Fabric: the inventory first, then the OpenSSH client config
(`ssh.config_file`, default ~/.ssh/config) for HostName, User, Port, IdentityFile and ProxyJump. Fabric is
given a configuration that carries no ssh_config at all, so nothing it reads on its own (ForwardAgent,
ProxyCommand, StrictHostKeyChecking, UserKnownHostsFile, ...) can change how certfab connects.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from fabric import Config, Connection
from paramiko.agent import AgentRequestHandler
from paramiko.ssh_exception import NoValidConnectionsError

from certfab import validate
from certfab.errors import ConnectError, HostKeyError, InventoryError
from certfab.inventory import Host, Inventory, JumpSpec, parse_jump

# paramiko's transport thread logs every failure with a traceback on stderr (through logging's last-resort
# handler); certfab reports the same failure as one line, so paramiko's own log goes nowhere by default.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

# Fabric's Config.clone() re-reads ssh_config files into the config being cloned, and a Connection keeps and
# mutates the config it is given: configurations are cloned one at a time, and every connection gets its own.
_CONFIG_LOCK = threading.Lock()
# Threads of this process take this lock, other processes the flock on the file itself.
_KNOWN_HOSTS_LOCK = threading.Lock()
MAX_HOPS = 8


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint of a host key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(address: str, port: int) -> str:
    """The name under which OpenSSH and paramiko file a host's key."""
    return address if port == 22 else f"[{address}]:{port}"


# ---------------------------------------------------------------------------------------------- config


def connection_config(source: Any = None) -> Config:
    """A Fabric Config of its own for one connection (or one task), cloned from `source` under a lock.

    The copy carries no ssh_config rules: routes come from resolve_route, never from Fabric.
    """
    with _CONFIG_LOCK:
        if source is None:
            config = Config(ssh_config=paramiko.SSHConfig())
        elif isinstance(source, Config):
            config = source.clone()
        else:
            config = source.clone(into=Config)
        # An explicit, empty SSHConfig: Fabric applies no rule and never loads a file into this copy.
        config._set(base_ssh_config=paramiko.SSHConfig(), _given_explicit_object=True)
    return config


# ---------------------------------------------------------------------------------------------- routes


@dataclass(frozen=True)
class Endpoint:
    """One SSH server on the way to a host: where to connect, as whom, with which keys, through what."""

    label: str  # how messages name it: "web14", "jump host web13"
    address: str
    port: int
    user: str
    key_files: tuple[str, ...]
    via: Endpoint | None = None

    def hops(self) -> list[Endpoint]:
        """Every server from the first jump host to this one, in the order they are connected."""
        chain: list[Endpoint] = []
        hop: Endpoint | None = self
        while hop is not None:
            chain.append(hop)
            hop = hop.via
        return list(reversed(chain))


def read_ssh_config(path: Path | None) -> paramiko.SSHConfig:
    """Parse the OpenSSH client config (a missing file is an empty one); each connection parses its own."""
    config = paramiko.SSHConfig()
    if path is None:
        return config
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return config
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(f"ssh config {path}: cannot be read ({exc})") from None
    try:
        config.parse(iter(text.splitlines(keepends=True)))
    except Exception as exc:  # noqa: BLE001 - paramiko raises several kinds for a bad line
        raise InventoryError(f"ssh config {path}: {' '.join(str(exc).split()) or type(exc).__name__}") from None
    return config


def _lookup(config: paramiko.SSHConfig, alias: str, path: Path | None) -> dict[str, Any]:
    """ssh_config's options for an alias (keys in lower case), refusing what certfab will not do."""
    try:
        options = dict(config.lookup(alias))
    except Exception as exc:  # noqa: BLE001 - Match exec, bad tokens, ...
        raise InventoryError(f"ssh config {path}: cannot look up {alias!r}: {exc}") from None
    if "proxycommand" in options and str(options["proxycommand"]).lower() != "none":
        raise InventoryError(
            f"ssh config {path}: {alias!r} has ProxyCommand, which certfab does not run; "
            "use ProxyJump or the inventory's jump"
        )
    return options


def _config_port(options: dict[str, Any], alias: str, path: Path | None, default: int) -> int:
    raw = options.get("port")
    if raw is None:
        return default
    if not str(raw).isdigit() or not 1 <= int(raw) <= 65535:
        raise InventoryError(f"ssh config {path}: Port {raw!r} for {alias!r} is not a number in 1-65535")
    return int(raw)


def _config_hostname(options: dict[str, Any], alias: str, path: Path | None) -> str:
    raw = options.get("hostname", alias)
    try:
        return validate.address(raw)
    except validate.Invalid as exc:
        raise InventoryError(f"ssh config {path}: HostName {raw!r} for {alias!r} {exc}") from None


def _key_files(options: dict[str, Any]) -> tuple[str, ...]:
    return tuple(os.path.expanduser(str(item)) for item in options.get("identityfile", []))


def resolve_route(host: Host, inventory: Inventory) -> Endpoint:
    """Where and how to connect to a host: inventory values first, then ssh_config, then built-in defaults."""
    config = read_ssh_config(inventory.ssh.config_file)
    return _resolve_host(host, inventory, config, f"{host.name}", depth=0)


def _resolve_host(host: Host, inventory: Inventory, config: paramiko.SSHConfig, label: str, depth: int) -> Endpoint:
    path = inventory.ssh.config_file
    options = _lookup(config, host.address, path)
    explicit = host.ssh_fields_set
    user = host.user if "user" in explicit else str(options.get("user", host.user))
    try:
        user = validate.user_name(user)
    except validate.Invalid as exc:
        raise InventoryError(f"ssh config {path}: User {user!r} for {host.address!r} {exc}") from None
    if "key_file" in explicit:
        key_files: tuple[str, ...] = () if host.key_file is None else (str(host.key_file),)
    else:
        key_files = _key_files(options)
    endpoint = Endpoint(
        label=label,
        address=_config_hostname(options, host.address, path),
        port=host.port if "port" in explicit else _config_port(options, host.address, path, host.port),
        user=user,
        key_files=key_files,
    )
    via: Endpoint | None = None
    if "jump" in explicit and host.jump is not None:
        via = _resolve_jump(parse_jump(host.jump), endpoint, inventory, config, depth + 1)
    elif "proxyjump" in options:
        via = _resolve_proxy_jump(str(options["proxyjump"]), endpoint, host.address, inventory, config, depth + 1)
    return Endpoint(endpoint.label, endpoint.address, endpoint.port, endpoint.user, endpoint.key_files, via)


def _resolve_jump(
    spec: JumpSpec, target: Endpoint, inventory: Inventory, config: paramiko.SSHConfig, depth: int
) -> Endpoint | None:
    """A jump host: an inventory host (with all its settings) or an address (ssh_config, then the target's)."""
    if spec.direct:
        return None
    if depth > MAX_HOPS:
        raise InventoryError(f"{target.label}: more than {MAX_HOPS} jump hosts on the way")
    if spec.user is None and spec.port is None:
        for other in inventory.hosts:
            if other.name == spec.address:
                return _resolve_host(other, inventory, config, f"jump host {other.name}", depth)
    path = inventory.ssh.config_file
    options = _lookup(config, spec.address, path)
    return Endpoint(
        label=f"jump host {spec.address}",
        address=_config_hostname(options, spec.address, path),
        port=spec.port or _config_port(options, spec.address, path, 22),
        user=spec.user or str(options.get("user", target.user)),
        key_files=_key_files(options) or target.key_files,
    )


def _resolve_proxy_jump(
    value: str, target: Endpoint, alias: str, inventory: Inventory, config: paramiko.SSHConfig, depth: int
) -> Endpoint | None:
    """ssh_config's ProxyJump: `none`, or hops separated by commas, connected first to last."""
    via: Endpoint | None = None
    for item in value.split(","):
        try:
            spec = parse_jump(item)
        except validate.Invalid as exc:
            raise InventoryError(
                f"ssh config {inventory.ssh.config_file}: ProxyJump {item!r} for {alias!r} {exc}"
            ) from None
        if spec.direct:
            return None
        hop = _resolve_jump(spec, target, inventory, config, depth)
        if hop is not None:
            # Hops listed in one ProxyJump follow one another; their own ProxyJump is not followed.
            hop = Endpoint(hop.label, hop.address, hop.port, hop.user, hop.key_files, via)
            depth += 1
        via = hop
    return via


# ---------------------------------------------------------------------------------------------- host keys


@contextlib.contextmanager
def _locked_known_hosts(path: Path, *, exclusive: bool) -> Iterator[int]:
    """The known_hosts file open and flock'ed, while no other thread of this process uses it."""
    with _KNOWN_HOSTS_LOCK:
        if exclusive:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        else:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield fd
        finally:
            os.close(fd)


# Parsed known_hosts files, by path and the file's identity: every connection of a run reads the same one.
_PARSED_KNOWN_HOSTS: dict[str, tuple[tuple[int, int, int, int], paramiko.HostKeys]] = {}


def load_known_hosts(client: paramiko.SSHClient, path: Path) -> None:
    """Give one client the keys of known_hosts, never read while a line is being appended.

    The file is parsed once per process and again only when it changed (--accept-new appends to it);
    clients share the parsed keys, which paramiko only reads.
    """
    with _locked_known_hosts(path, exclusive=False) as fd:
        info = os.fstat(fd)
        identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        cached = _PARSED_KNOWN_HOSTS.get(str(path))
        if cached is None or cached[0] != identity:
            keys = paramiko.HostKeys()
            keys.load(str(path))
            cached = _PARSED_KNOWN_HOSTS[str(path)] = (identity, keys)
    client._system_host_keys = cached[1]


def record_host_key(path: Path, name: str, key: paramiko.PKey) -> bool:
    """Append `name key` to known_hosts as one whole line; False if that exact key was already there.

    A different key of the same type recorded meanwhile (another thread or process) is refused as changed.
    """
    line = f"{name} {key.get_name()} {key.get_base64()}\n".encode("ascii")
    with _locked_known_hosts(path, exclusive=True) as fd:
        current = paramiko.HostKeys()
        current.load(str(path))
        known = current.lookup(name) or {}
        if key.get_name() in known:
            if known[key.get_name()] == key:
                return False
            raise paramiko.BadHostKeyException(name, key, known[key.get_name()])
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        while line:
            line = line[os.write(fd, line):]
    return True


class RefuseUnknownKey(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """Refuse a server whose key is not in known_hosts, showing how to trust it."""

    def __init__(self, who: str, known_hosts: Path) -> None:
        self.who = who
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyError(
            f"{self.who} ({hostname}): unknown host key {key.get_name()} {fingerprint(key)}; "
            f"nothing was run. If this fingerprint is right, rerun with --accept-new "
            f"or add the key to {self.known_hosts}"
        )


class AcceptNewKey(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """Record a key seen for the first time (like OpenSSH's accept-new); changed keys stay refused."""

    def __init__(self, who: str, known_hosts: Path) -> None:
        self.who = who
        self.known_hosts = known_hosts
        self.recorded: str | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        try:
            recorded = record_host_key(self.known_hosts, hostname, key)
        except OSError as exc:
            raise HostKeyError(
                f"{self.who} ({hostname}): cannot record host key {key.get_name()} {fingerprint(key)} in "
                f"{self.known_hosts}: {exc.strerror or exc}; nothing was run"
            ) from None
        if recorded:
            self.recorded = f"{self.who}: recorded new host key {key.get_name()} {fingerprint(key)}"


# ---------------------------------------------------------------------------------------------- connections


class HostConnection(Connection):  # type: ignore[misc]
    """A Fabric connection that also closes the jump hosts it was opened through.

    Fabric turns an attribute set on a connection into a write to its config unless the class declares
    the attribute (Connection.__init__ writes `inline_ssh_env` that way); every attribute set here is
    declared, so the config is only read.
    """

    inline_ssh_env: bool | None = None
    certfab_jumps: tuple[Connection, ...] = ()
    certfab_notices: tuple[str, ...] = ()
    certfab_agent_handlers: list[AgentRequestHandler] | None = None

    def forward_agent_on_every_session(self) -> None:
        """Offer the local agent on every session of this transport, however the session is opened.

        Fabric does so only for sessions it opens itself; certfab's remote seam opens its own on the
        transport, so the hook sits on this connection's transport object (no other connection has it).
        """
        transport = self.client.get_transport()
        open_session = transport.open_session
        handlers: list[AgentRequestHandler] = []
        self.certfab_agent_handlers = handlers

        def opening_with_agent(*args: Any, **kwargs: Any) -> paramiko.Channel:
            channel = open_session(*args, **kwargs)
            handlers.append(AgentRequestHandler(channel))
            return channel

        transport.open_session = opening_with_agent

    def close(self) -> None:
        try:
            super().close()
        finally:
            for handler in self.certfab_agent_handlers or []:
                with contextlib.suppress(Exception):
                    handler.close()
            for jump in reversed(self.certfab_jumps):
                with contextlib.suppress(Exception):
                    jump.close()


def _reason(exc: Exception) -> str:
    """Why a connection failed, in words (paramiko wraps refused/unreachable in an errno-less error)."""
    if isinstance(exc, NoValidConnectionsError) and exc.errors:
        return "; ".join(sorted({_reason(error) for error in exc.errors.values()}))
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def _where(host: Host, hop: Endpoint) -> str:
    """How an error names a server: `web14` for the target, `web14: jump host web13` for a jump."""
    return hop.label if hop.label == host.name else f"{host.name}: {hop.label}"


def _open_hop(
    host: Host, hop: Endpoint, inventory: Inventory, *, accept_new: bool, config: Any, sock: Any,
) -> tuple[HostConnection, str | None]:
    """Connect to one server of a route, over `sock` (a channel through the previous jump) when given."""
    known_hosts = inventory.ssh.known_hosts
    timeout = inventory.ssh.connect_timeout
    who = _where(host, hop)
    connect_kwargs: dict[str, Any] = {"banner_timeout": timeout, "auth_timeout": timeout, "timeout": timeout}
    if hop.key_files:
        connect_kwargs["key_filename"] = list(hop.key_files)
        connect_kwargs["look_for_keys"] = False
    if sock is not None:
        connect_kwargs["sock"] = sock
    conn = HostConnection(
        hop.address,
        user=hop.user,
        port=hop.port,
        config=connection_config(config),
        gateway=False,
        # Fabric's own switch stays off whatever fab -A or the config say; see forward_agent_on_every_session.
        forward_agent=False,
        connect_timeout=None,
        connect_kwargs=connect_kwargs,
    )
    # The timeout is in connect_kwargs as a float; Fabric would truncate its own to whole seconds.
    conn.connect_timeout = None
    # Fabric trusts any key by default; replace its client policy before the first packet.
    client = conn.client
    if known_hosts.exists():
        try:
            load_known_hosts(client, known_hosts)
        except OSError as exc:
            conn.close()
            raise HostKeyError(
                f"{who}: cannot read known_hosts file {known_hosts}: {exc.strerror or exc}; nothing was run"
            ) from None
    elif not accept_new:
        raise HostKeyError(
            f"{who}: known_hosts file {known_hosts} does not exist; nothing was run. "
            "Create it, point ssh.known_hosts at one, or rerun with --accept-new"
        )
    policy: RefuseUnknownKey | AcceptNewKey = (
        AcceptNewKey(who, known_hosts) if accept_new else RefuseUnknownKey(who, known_hosts)
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
            f"{who} ({hop.address}): HOST KEY CHANGED: expected {fingerprint(exc.expected_key)}, "
            f"got {exc.key.get_name()} {fingerprint(exc.key)}; nothing was run. If the change is expected, "
            f"remove the old key: ssh-keygen -R {known_hosts_name(hop.address, hop.port)} -f {known_hosts}"
        ) from None
    except paramiko.AuthenticationException as exc:
        conn.close()
        raise ConnectError(f"{who} ({hop.address}): authentication as {hop.user} failed: {exc}") from None
    except TimeoutError:
        conn.close()
        raise ConnectError(
            f"{who} ({hop.address}:{hop.port}): connection timed out after {timeout:g}s"
        ) from None
    except (OSError, paramiko.SSHException, EOFError) as exc:
        conn.close()
        raise ConnectError(f"{who} ({hop.address}:{hop.port}): cannot connect: {_reason(exc)}") from None
    return conn, policy.recorded if isinstance(policy, AcceptNewKey) else None


def _tunnel(host: Host, jump: Connection, jump_hop: Endpoint, hop: Endpoint, timeout: float) -> paramiko.Channel:
    """A direct-tcpip channel from a jump host to the next server's SSH port."""
    transport = jump.client.get_transport()
    try:
        return transport.open_channel("direct-tcpip", (hop.address, hop.port), ("", 0), timeout=timeout)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise ConnectError(
            f"{_where(host, hop)} ({hop.address}:{hop.port}): cannot connect through "
            f"{jump_hop.label}: {_reason(exc)}"
        ) from None


def open_connection(
    host: Host,
    inventory: Inventory,
    *,
    accept_new: bool = False,
    config: Any = None,
) -> HostConnection:
    """Connect to a host, through its jump hosts (eagerly, so key and login problems surface here).

    Every server on the way is checked against the same known_hosts with the same policy; each gets a
    Fabric Config cloned from `config` for it alone.
    """
    route = resolve_route(host, inventory)
    opened: list[HostConnection] = []
    notices: list[str] = []
    sock: paramiko.Channel | None = None
    hops = route.hops()
    try:
        for index, hop in enumerate(hops):
            if index:
                sock = _tunnel(host, opened[-1], hops[index - 1], hop, inventory.ssh.connect_timeout)
            conn, recorded = _open_hop(host, hop, inventory, accept_new=accept_new, config=config, sock=sock)
            opened.append(conn)
            if recorded:
                notices.append(recorded)
    except BaseException:
        for conn in reversed(opened):
            with contextlib.suppress(Exception):
                conn.close()
        raise
    target = opened[-1]
    # Only the target may get the agent, and only when the inventory says so; never a jump host.
    if host.forward_agent:
        target.forward_agent_on_every_session()
    target.certfab_jumps = tuple(opened[:-1])
    target.certfab_notices = tuple(notices)
    return target
