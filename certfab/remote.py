"""The one seam through which certfab runs anything on a host."""

from __future__ import annotations

import shlex
import threading
import time
from dataclasses import dataclass

from fabric import Connection
from invoke.exceptions import CommandTimedOut

from certfab.errors import ConnectError, RemoteError
from certfab.inventory import Host


@dataclass(frozen=True)
class RunResult:
    """What a remote script printed and how it exited."""

    stdout: str
    stderr: str
    exited: int

    @property
    def ok(self) -> bool:
        return self.exited == 0


class Remote:
    """Runs POSIX shell scripts on one host, as root (directly or through sudo), and counts them."""

    def __init__(self, host: Host, conn: Connection, command_timeout: float) -> None:
        self.host = host
        self.conn = conn
        self.command_timeout = command_timeout
        self.commands_run = 0
        self._lock = threading.Lock()

    @property
    def needs_sudo(self) -> bool:
        return self.host.sudo and self.host.user != "root"

    def run(self, script: str, *, timeout: float | None = None, what: str = "remote command") -> RunResult:
        """Run a script with /bin/sh; never raises for a non-zero exit, only for lost connections."""
        command = "/bin/sh -c " + shlex.quote(script)
        with self._lock:
            self.commands_run += 1
        try:
            if self.needs_sudo:
                result = self.conn.sudo(
                    command, hide=True, warn=True, timeout=timeout or self.command_timeout, in_stream=False
                )
            else:
                result = self.conn.run(
                    command, hide=True, warn=True, timeout=timeout or self.command_timeout, in_stream=False
                )
        except CommandTimedOut:
            raise RemoteError(
                f"{self.host.name}: {what} timed out after {timeout or self.command_timeout:g}s"
            ) from None
        except (OSError, EOFError) as exc:
            raise ConnectError(f"{self.host.name}: connection lost during {what}: {exc}") from None
        if result is None:  # pragma: no cover - only with asynchronous runs
            raise RemoteError(f"{self.host.name}: {what} returned no result")
        if result.exited == -1:
            # No exit status: the session ended under the command, or a signal killed it.
            if self._session_lost():
                raise ConnectError(
                    f"{self.host.name}: connection lost during {what}; its outcome on the host is unknown"
                )
            raise RemoteError(f"{self.host.name}: {what} ended without an exit status (killed by a signal?)")
        return RunResult(result.stdout, result.stderr, result.exited)

    def _session_lost(self) -> bool:
        """Whether the SSH transport is gone (paramiko closes channels just before it says so)."""
        transport = self.conn.client.get_transport()
        deadline = time.monotonic() + 2
        while transport is not None and transport.is_active() and time.monotonic() < deadline:
            time.sleep(0.05)
        return transport is None or not transport.is_active()

    def check(self, script: str, *, timeout: float | None = None, what: str = "remote command") -> RunResult:
        """Run a script and raise RemoteError with its last output line when it fails."""
        result = self.run(script, timeout=timeout, what=what)
        if not result.ok:
            detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
            last = detail[-1] if detail else "no output"
            raise RemoteError(f"{self.host.name}: {what} failed (exit {result.exited}): {last}")
        return result

    def close(self) -> None:
        self.conn.close()
