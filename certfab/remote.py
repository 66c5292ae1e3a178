"""The one seam through which certfab runs anything on a host.

Every script goes to `/bin/sh -s` on the channel's stdin, so its size is bounded by nothing but the
host's memory (a script passed as an argument stops at the kernel's argument limit), and nothing of
it appears in the host's process list. Scripts rendered from templates/remote/ answer in frames
(certfab.protocol); `run` exists for the few callers that need raw output.
"""

from __future__ import annotations

import select
import shlex
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import paramiko
from fabric import Connection

from certfab.errors import ConnectError, RemoteError
from certfab.inventory import Host
from certfab.protocol import ProtocolError, Reply, new_nonce, parse_frames
from certfab.remote_scripts import render_script

SHELL = "/bin/sh -s"
# How long sudo may take to ask for and accept a password before the script is sent.
SUDO_TIMEOUT = 30.0


@dataclass(frozen=True)
class RunResult:
    """What a raw remote script printed and how it exited."""

    stdout: str
    stderr: str
    exited: int

    @property
    def ok(self) -> bool:
        return self.exited == 0


class Remote:
    """Runs POSIX shell scripts on one host, as root (directly or through sudo), and counts them."""

    def __init__(self, host: Host, conn: Connection, command_timeout: float, *, root: str = "") -> None:
        self.host = host
        self.conn = conn
        self.command_timeout = command_timeout
        self.root = root
        self.commands_run = 0
        self._lock = threading.Lock()

    @property
    def needs_sudo(self) -> bool:
        return self.host.sudo and self.host.user != "root"

    def _sudo_password(self) -> str | None:
        config = getattr(self.conn, "config", None)
        sudo = getattr(config, "sudo", None) if config is not None else None
        password = getattr(sudo, "password", None) if sudo is not None else None
        return password if isinstance(password, str) and password else None

    def _count(self) -> None:
        with self._lock:
            self.commands_run += 1

    def open_shell(self, what: str) -> tuple[paramiko.Channel, bytes]:
        """A channel running /bin/sh -s as root, ready for its script on stdin; returns early stderr."""
        transport = self.conn.client.get_transport() if self.conn.client is not None else None
        if transport is None or not transport.is_active():
            raise ConnectError(f"{self.host.name}: connection lost before {what}")
        self._count()
        try:
            channel = transport.open_session(timeout=self.command_timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(f"{self.host.name}: connection lost during {what}: {exc}") from None
        password = self._sudo_password() if self.needs_sudo else None
        if not self.needs_sudo:
            channel.exec_command(SHELL)
            return channel, b""
        if password is None:
            # -n: fail at once instead of waiting for a password nobody will type.
            channel.exec_command(f"sudo -n -- {SHELL}")
            return channel, b""
        # sudo reads the password from stdin, then the shell reads the rest: a ready token on stderr
        # says when sudo is done with stdin, so the script never reaches sudo nor the password the shell.
        prompt, ready = f"[certfab-sudo-{new_nonce()}]", f"certfab-ready-{new_nonce()}"
        inner = f"printf '%s\\n' {ready} >&2; exec {SHELL}"
        channel.exec_command(f"sudo -S -p {shlex.quote(prompt)} -- /bin/sh -c {shlex.quote(inner)}")
        return channel, self._await_sudo(channel, prompt.encode(), ready.encode(), password, what)

    def _await_sudo(self, channel: paramiko.Channel, prompt: bytes, ready: bytes, password: str,
                    what: str) -> bytes:
        seen = b""
        prompts = 0
        deadline = time.monotonic() + SUDO_TIMEOUT
        while ready not in seen:
            if time.monotonic() > deadline:
                channel.close()
                raise RemoteError(f"{self.host.name}: sudo did not start a shell for {what} within "
                                  f"{SUDO_TIMEOUT:g}s")
            if channel.recv_stderr_ready():
                seen += channel.recv_stderr(4096)
                if seen.count(prompt) > prompts:
                    prompts = seen.count(prompt)
                    if prompts > 1:
                        channel.close()
                        raise ConnectError(f"{self.host.name}: sudo refused the password for {self.host.user}")
                    channel.sendall(password.encode() + b"\n")
                continue
            if channel.exit_status_ready():
                tail = seen.replace(prompt, b"").decode(errors="replace").strip().splitlines()
                channel.close()
                raise ConnectError(f"{self.host.name}: sudo failed for {self.host.user}: "
                                   f"{tail[-1] if tail else 'no output'}")
            select.select([channel], [], [], 0.2)
        return seen.split(ready, 1)[1].lstrip(b"\n")

    def _exchange(self, script: str, *, timeout: float | None, what: str) -> tuple[int, bytes, bytes]:
        """Send a script on stdin, collect stdout and stderr until the shell exits."""
        limit = timeout or self.command_timeout
        channel, err_head = self.open_shell(what)
        payload = script.encode("utf-8", errors="surrogateescape")
        send_error: list[BaseException] = []

        def send() -> None:
            try:
                channel.sendall(payload)
                channel.shutdown_write()
            except (OSError, EOFError, paramiko.SSHException) as exc:
                send_error.append(exc)

        # The shell may answer before it has read the whole script: write and read at once.
        writer = threading.Thread(target=send, name=f"certfab-stdin-{self.host.name}", daemon=True)
        writer.start()
        out, err = bytearray(), bytearray(err_head)
        deadline = time.monotonic() + limit
        try:
            while True:
                if channel.recv_ready():
                    out += channel.recv(65536)
                    continue
                if channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                    continue
                if channel.exit_status_ready() and channel.eof_received:
                    break
                if channel.closed:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RemoteError(f"{self.host.name}: {what} timed out after {limit:g}s")
                select.select([channel], [], [], min(remaining, 0.5))
            while channel.recv_ready():
                out += channel.recv(65536)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
            exited = channel.recv_exit_status() if channel.exit_status_ready() else -1
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise ConnectError(f"{self.host.name}: connection lost during {what}: {exc}") from None
        finally:
            channel.close()
            writer.join(timeout=5)
        if exited == -1:
            # No exit status: the session ended under the command, or a signal killed it.
            if self._session_lost():
                raise ConnectError(
                    f"{self.host.name}: connection lost during {what}; its outcome on the host is unknown"
                )
            raise RemoteError(f"{self.host.name}: {what} ended without an exit status (killed by a signal?)")
        return exited, bytes(out), bytes(err)

    def run(self, script: str, *, timeout: float | None = None, what: str = "remote command") -> RunResult:
        """Run a raw script with /bin/sh; never raises for a non-zero exit, only for lost connections."""
        exited, out, err = self._exchange(script, timeout=timeout, what=what)
        return RunResult(out.decode("utf-8", errors="surrogateescape"), err.decode("utf-8", errors="replace"),
                         exited)

    def script(self, name: str, *, what: str, timeout: float | None = None,
               context: Mapping[str, object] | None = None, **values: object) -> Reply:
        """Run templates/remote/<name> and read its framed answer; never raises for a non-zero exit."""
        nonce = new_nonce()
        text = render_script(name, nonce=nonce, root=self.root, **{**(context or {}), **values})
        exited, out, err = self._exchange(text, timeout=timeout, what=what)
        try:
            frames = parse_frames(out, nonce)
        except ProtocolError as exc:
            raise ProtocolError(f"{self.host.name}: {what}: {exc}") from None
        return Reply(exited, frames, err.decode("utf-8", errors="replace"))

    def check_script(self, name: str, *, what: str, timeout: float | None = None,
                     context: Mapping[str, object] | None = None, **values: object) -> Reply:
        """Run a remote script and raise RemoteError with its last error line when it fails."""
        reply = self.script(name, what=what, timeout=timeout, context=context, **values)
        if not reply.ok:
            raise RemoteError(f"{self.host.name}: {what} failed (exit {reply.exited}): {reply.last_error_line()}")
        return reply

    def _session_lost(self) -> bool:
        """Whether the SSH transport is gone (paramiko closes channels just before it says so)."""
        transport = self.conn.client.get_transport()
        deadline = time.monotonic() + 2
        while transport is not None and transport.is_active() and time.monotonic() < deadline:
            time.sleep(0.05)
        return transport is None or not transport.is_active()

    def check(self, script: str, *, timeout: float | None = None, what: str = "remote command") -> RunResult:
        """Run a raw script and raise RemoteError with its last output line when it fails."""
        result = self.run(script, timeout=timeout, what=what)
        if not result.ok:
            detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
            last = detail[-1] if detail else "no output"
            raise RemoteError(f"{self.host.name}: {what} failed (exit {result.exited}): {last}")
        return result

    def close(self) -> None:
        self.conn.close()
