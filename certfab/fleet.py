"""Running one pipeline per host, many hosts at once, without barriers between steps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fabric import Config

from certfab.errors import CertfabError
from certfab.inventory import Host, Inventory
from certfab.remote import Remote
from certfab.ssh import open_connection

T = TypeVar("T")


@dataclass
class HostOutcome(Generic[T]):
    """What happened on one host: a value, or the one-line error that stopped it."""

    host: str
    value: T | None = None
    error: str | None = None
    exit_code: int = 0
    seconds: float = 0.0
    commands: int = 0
    notices: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.error is not None


class Progress:
    """Receives per-host progress; the default says nothing."""

    def step(self, host: str, message: str) -> None:
        """A host started a new step."""

    def done(self, host: str, outcome: HostOutcome[Any]) -> None:
        """A host finished."""


@dataclass
class HostSession:
    """What a pipeline gets: the inventory entry, the remote seam, and a way to report progress."""

    host: Host
    remote: Remote
    inventory: Inventory
    progress: Progress

    def step(self, message: str) -> None:
        self.progress.step(self.host.name, message)


def connect(host: Host, inventory: Inventory, *, accept_new: bool, config: Config | None) -> tuple[Remote, list[str]]:
    """Open a host's connection and wrap it in the remote seam."""
    conn = open_connection(host, inventory, accept_new=accept_new, config=config)
    notices = [conn.certfab_notice] if hasattr(conn, "certfab_notice") else []
    return Remote(host, conn, inventory.ssh.command_timeout), notices


def run_on_host(
    host: Host,
    inventory: Inventory,
    pipeline: Callable[[HostSession], T],
    *,
    accept_new: bool = False,
    config: Config | None = None,
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
        outcome.value = pipeline(HostSession(host, remote, inventory, progress))
    except CertfabError as exc:
        outcome.error = str(exc)
        outcome.exit_code = exc.exit_code
    except KeyboardInterrupt:
        outcome.error = f"{host.name}: interrupted"
        raise
    finally:
        if remote is not None:
            outcome.commands = remote.commands_run
            remote.close()
        outcome.seconds = time.monotonic() - started
        progress.done(host.name, outcome)
    return outcome


def run_fleet(
    hosts: Iterable[Host],
    inventory: Inventory,
    pipeline: Callable[[HostSession], T],
    *,
    parallel: int = 10,
    accept_new: bool = False,
    config: Config | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> list[HostOutcome[T]]:
    """Run a pipeline on every host with at most `parallel` at once; each host goes at its own pace.

    When `stop` is set (Ctrl-C), no new host is started; running hosts finish on their own.
    """
    hosts = list(hosts)
    stop = stop or threading.Event()
    outcomes: dict[str, HostOutcome[T]] = {}
    pending = iter(hosts)
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="certfab") as pool:
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
            try:
                finished, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:
                stop.set()
                continue
            for future in finished:
                host = running.pop(future)
                try:
                    outcomes[host.name] = future.result()
                except KeyboardInterrupt:
                    outcomes[host.name] = HostOutcome(host.name, error=f"{host.name}: interrupted")
                start_next()
    for host in hosts:
        outcomes.setdefault(host.name, HostOutcome(host.name, error=f"{host.name}: not started (stopped)"))
    return [outcomes[host.name] for host in hosts]
