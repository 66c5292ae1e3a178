"""A lock on the host held for a whole run, released when the run's SSH session ends.

A process on the host takes an flock and then waits on its stdin; when the controller closes
the channel, or the connection dies, the process ends and the kernel drops the lock. So a lost
run never leaves a stale lock, and a second run can tell a live run from a crashed one.
"""

from __future__ import annotations

import shlex
import time

import paramiko

from certfab.errors import ConnectError, LockedError
from certfab.paths import STATE_DIR
from certfab.remote import Remote

LOCK_FILE = f"{STATE_DIR}/lock"
OWNER_FILE = f"{STATE_DIR}/lock.owner"


def _holder_script(run_id: str, wait_seconds: int) -> str:
    wait = f"flock -w {wait_seconds} 9" if wait_seconds > 0 else "flock -n 9"
    return (
        f"mkdir -p {STATE_DIR} && chmod 0700 {STATE_DIR} && exec 9>>{LOCK_FILE} || exit 1\n"
        f"if ! {wait}; then echo BUSY; cat {OWNER_FILE} 2>/dev/null; exit 75; fi\n"
        f"printf '%s\\n' {shlex.quote(run_id)} > {OWNER_FILE}.tmp && mv -f {OWNER_FILE}.tmp {OWNER_FILE}\n"
        "echo LOCKED\n"
        "exec cat >/dev/null\n"
    )


class HostLock:
    """Holds the host lock for as long as this object's channel stays open."""

    def __init__(self, remote: Remote, run_id: str, *, wait_seconds: int = 0) -> None:
        self.remote = remote
        self.run_id = run_id
        self.wait_seconds = wait_seconds
        self.channel: paramiko.Channel | None = None

    def acquire(self) -> None:
        """Take the lock or raise LockedError naming the run that holds it."""
        transport = self.remote.conn.client.get_transport()
        if transport is None:
            raise ConnectError(f"{self.remote.host.name}: not connected")
        command = "/bin/sh -c " + shlex.quote(_holder_script(self.run_id, self.wait_seconds))
        sudo_password = None
        if self.remote.needs_sudo:
            command = "sudo -S -p '' " + command
            sudo_password = self.remote.conn.config.sudo.password
        channel = transport.open_session()
        self.remote.commands_run += 1
        channel.exec_command(command)
        if sudo_password:
            channel.sendall((sudo_password + "\n").encode())
        channel.settimeout(self.wait_seconds + self.remote.command_timeout)
        reply = b""
        deadline = time.monotonic() + self.wait_seconds + 60
        while b"LOCKED" not in reply and not channel.exit_status_ready() and time.monotonic() < deadline:
            chunk = channel.recv(4096)
            if not chunk:
                break
            reply += chunk
        if b"LOCKED" in reply:
            self.channel = channel
            return
        text = reply.decode(errors="replace")
        channel.close()
        if "BUSY" in text:
            owner = text.split("BUSY", 1)[1].strip() or "unknown run"
            raise LockedError(
                f"{self.remote.host.name}: another certfab run ({owner}) is working on this host; "
                "try again when it has finished"
            )
        raise LockedError(f"{self.remote.host.name}: could not take the certfab lock: {text.strip() or 'no reply'}")

    def release(self) -> None:
        """Drop the lock by ending the holder process."""
        if self.channel is not None:
            try:
                self.channel.shutdown_write()
                self.channel.close()
            except (OSError, EOFError):
                pass
            self.channel = None
