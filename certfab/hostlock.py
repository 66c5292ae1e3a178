"""A lock on the host held for a whole run, released when the run's SSH session ends.

A process on the host takes an flock and then waits on its stdin; when the controller closes
the channel, or the connection dies, the process ends and the kernel drops the lock. So a lost
run never leaves a stale lock, and a second run can tell a live run from a crashed one.
"""

from __future__ import annotations

import time

import paramiko

from certfab.errors import ConnectError, LockedError
from certfab.paths import STATE_DIR
from certfab.protocol import Frame, new_nonce, parse_frames
from certfab.remote import Remote
from certfab.remote_scripts import render_script

LOCK_FILE = f"{STATE_DIR}/lock"
OWNER_FILE = f"{STATE_DIR}/lock.owner"
HOLDER_SCRIPT = "hostlock.sh.j2"


class HostLock:
    """Holds the host lock for as long as this object's channel stays open."""

    def __init__(self, remote: Remote, run_id: str, *, wait_seconds: int = 0) -> None:
        self.remote = remote
        self.run_id = run_id
        self.wait_seconds = wait_seconds
        self.channel: paramiko.Channel | None = None

    def acquire(self) -> None:
        """Take the lock or raise LockedError naming the run that holds it."""
        host = self.remote.host.name
        nonce = new_nonce()
        script = render_script(HOLDER_SCRIPT, nonce=nonce, root=self.remote.root, state_dir=STATE_DIR,
                               lock_file=LOCK_FILE, owner_file=OWNER_FILE, run_id=self.run_id,
                               wait_seconds=self.wait_seconds)
        channel, _ = self.remote.open_shell("taking the certfab lock")
        # The script goes in whole but stdin stays open: the holder waits on it for the run's end.
        channel.sendall(script.encode())
        channel.settimeout(self.wait_seconds + self.remote.command_timeout)
        reply = b""
        deadline = time.monotonic() + self.wait_seconds + 60
        frames: tuple[Frame, ...] = ()
        try:
            while time.monotonic() < deadline:
                complete = reply[: reply.rfind(b"\n") + 1]
                frames = parse_frames(complete, nonce) if complete.count(b"\n") % 2 == 0 else frames
                if any(f.name in ("locked", "busy") for f in frames):
                    break
                chunk = channel.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except (OSError, EOFError, paramiko.SSHException) as exc:
            channel.close()
            raise ConnectError(f"{host}: connection lost while taking the certfab lock: {exc}") from None
        if any(f.name == "locked" for f in frames):
            self.channel = channel
            return
        channel.close()
        busy = next((f for f in frames if f.name == "busy"), None)
        if busy is not None:
            owner = " ".join(busy.text.split()) or "unknown run"
            raise LockedError(f"{host}: another certfab run ({owner}) is working on this host; "
                              "try again when it has finished")
        raise LockedError(f"{host}: could not take the certfab lock: no answer from the host")

    def release(self) -> None:
        """Drop the lock by ending the holder process."""
        if self.channel is not None:
            try:
                self.channel.shutdown_write()
                self.channel.close()
            except (OSError, EOFError):
                pass
            self.channel = None
