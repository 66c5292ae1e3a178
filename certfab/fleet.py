"""Running one pipeline per host, many hosts at once, without barriers between steps."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any, TypeVar

import paramiko

from certfab.errors import CertfabError
from certfab.inventory import Host, Inventory
from certfab.outcome import HostOutcome
from certfab.remote import Remote
from certfab.ssh import connection_config, open_connection

T = TypeVar("T")


class Stop(threading.Event):
    """Tells a fleet run to start no more hosts, and why (running hosts always finish)."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = "stopped"
        self.presses = 0

    def request(self, reason: str) -> None:
        """Stop starting hosts; the first reason given is kept."""
        if not self.is_set():
            self.reason = reason
            self.set()


class Progress:
    """Receives per-host progress; the default says nothing."""

    def step(self, host: str, message: str) -> None:
        """A host started a new step."""

    def done(self, host: str, outcome: HostOutcome[Any]) -> None:
        """A host finished."""

    def interrupted(self, running: list[str], again: bool) -> None:
        """Ctrl-C: no new host starts; `running` are left to finish (again: it was pressed before)."""


@dataclass
class HostSession:
    """What a pipeline gets: the inventory entry, the remote seam, and a way to report progress."""

    host: Host
    remote: Remote
    inventory: Inventory
    progress: Progress

    def step(self, message: str) -> None:
        self.progress.step(self.host.name, message)


def connect(host: Host, inventory: Inventory, *, accept_new: bool, config: Any = None) -> tuple[Remote, list[str]]:
    """Open a host's connection and wrap it in the remote seam.

    The remote seam sees the login actually used (ssh_config may give the user), so sudo is decided for it.
    """
    conn = open_connection(host, inventory, accept_new=accept_new, config=config)
    logged_in = replace(host, user=conn.user, port=conn.port)
    return Remote(logged_in, conn, inventory.ssh.command_timeout), list(conn.certfab_notices)


def run_on_host(
    host: Host,
    inventory: Inventory,
    pipeline: Callable[[HostSession], T],
    *,
    accept_new: bool = False,
    config: Any = None,
    progress: Progress | None = None,
) -> HostOutcome[T]:
    """Connect to one host and run a pipeline on it, turning certfab errors into an outcome."""
    progress = progress or Progress()
    outcome: HostOutcome[T] = HostOutcome(host.name)
    started = time.monotonic()
    remote: Remote | None = None
    try:
        progress.step(host.name, "connecting")
        remote, outcome.notices = connect(host, inventory, accept_new=accept_new, config=config)
        outcome.value = pipeline(HostSession(remote.host, remote, inventory, progress))
    except CertfabError as exc:
        outcome.error = one_line(str(exc))
        outcome.exit_code = exc.exit_code
        outcome.value = exc.partial  # type: ignore[assignment]
    except (paramiko.SSHException, OSError, EOFError) as exc:
        outcome.error = one_line(f"{host.name}: connection lost: {str(exc) or type(exc).__name__}")
    except Exception as exc:  # noqa: BLE001 - one host's bug must not stop the others
        outcome.error = one_line(f"{host.name}: unexpected error: {type(exc).__name__}: {exc}")
    finally:
        if remote is not None:
            outcome.commands = remote.commands_run
            with contextlib.suppress(Exception):
                remote.close()
        outcome.seconds = time.monotonic() - started
        progress.done(host.name, outcome)
    return outcome


def one_line(text: str) -> str:
    """An error as one line, whatever the remote side printed."""
    return " ".join(text.split())


@contextlib.contextmanager
def ctrl_c_stops(stop: Stop) -> Iterator[Stop]:
    """While active, Ctrl-C (SIGINT) only asks `stop` to start no more hosts and counts the presses.

    A KeyboardInterrupt raised at a random point of the main thread could lose track of a running
    host or leave it half-done; a flag read by the scheduler cannot. Outside the main thread, or when
    SIGINT is ignored or already handled by a caller, nothing is changed.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield stop
        return

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        stop.presses += 1
        stop.request("interrupted")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def run_fleet(
    hosts: Iterable[Host],
    inventory: Inventory,
    pipeline: Callable[[HostSession], T],
    *,
    parallel: int = 10,
    accept_new: bool = False,
    config: Any = None,
    progress: Progress | None = None,
    stop: Stop | None = None,
) -> list[HostOutcome[T]]:
    """Run a pipeline on every host with at most `parallel` at once; each host goes at its own pace.

    When `stop` is set (Ctrl-C, a failed canary), no new host is started; running hosts finish on
    their own (a bootstrap commits or rolls back), and hosts never started come back as such.
    """
    hosts = list(hosts)
    # Cloned once here; each connection then clones this copy for itself (see ssh.connection_config).
    config = connection_config(config)
    stop = stop if stop is not None else Stop()
    progress = progress or Progress()
    outcomes: dict[str, HostOutcome[T]] = {}
    pending = iter(hosts)
    announced = stop.presses
    with ctrl_c_stops(stop), ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="certfab") as pool:
        running: dict[Future[HostOutcome[T]], Host] = {}

        def start_next() -> bool:
            if stop.is_set():
                return False
            host = next(pending, None)
            if host is None:
                return False
            running[pool.submit(run_on_host, host, inventory, pipeline, accept_new=accept_new,
                                config=config, progress=progress)] = host
            return True

        for _ in range(max(1, parallel)):
            if not start_next():
                break
        while running:
            finished, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
            for future in finished:
                host = running.pop(future)
                outcomes[host.name] = future.result()
                start_next()
            if stop.presses > announced:
                progress.interrupted(sorted(h.name for h in running.values()), again=announced > 0)
                announced = stop.presses
    for host in hosts:
        if host.name not in outcomes:
            outcomes[host.name] = HostOutcome(host.name, error=f"{host.name}: not started ({stop.reason})",
                                              started=False)
            progress.done(host.name, outcomes[host.name])
    return [outcomes[host.name] for host in hosts]


def run_with_canary(
    hosts: tuple[Host, ...] | list[Host],
    inventory: Inventory,
    pipeline: Callable[[HostSession], T],
    *,
    canary: int,
    stop: Stop,
    parallel: int = 10,
    accept_new: bool = False,
    config: Any = None,
    progress: Progress | None = None,
) -> list[HostOutcome[T]]:
    """The first `canary` hosts alone, then the rest unless one of them failed (they come back
    'not started', with the canary named as the reason)."""
    hosts = list(hosts)
    first, rest = (hosts[:canary], hosts[canary:]) if canary > 0 else ([], hosts)
    outcomes: list[HostOutcome[T]] = []
    if first:
        outcomes += run_fleet(first, inventory, pipeline, parallel=parallel, accept_new=accept_new,
                              config=config, progress=progress, stop=stop)
        failed = [o.host for o in outcomes if o.failed]
        if failed:
            stop.request(f"canary {', '.join(failed)} failed")
    outcomes += run_fleet(rest, inventory, pipeline, parallel=parallel, accept_new=accept_new,
                          config=config, progress=progress, stop=stop)
    return outcomes
