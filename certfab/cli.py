"""Plumbing shared by the Invoke tasks: options, host selection, errors, progress, recap."""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from invoke.context import Context
from invoke.exceptions import Exit
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from certfab.errors import CertfabError
from certfab.fleet import HostOutcome, Progress
from certfab.inventory import Host, Inventory, load_inventory

F = TypeVar("F", bound=Callable[..., Any])


def _console(to_stderr: bool) -> Console:
    # Without a terminal rich assumes 80 columns, which folds report tables; logs can be wider.
    probe = Console(stderr=to_stderr)
    return Console(stderr=to_stderr, highlight=False, width=None if probe.is_terminal else 200)


stdout = _console(False)
stderr = _console(True)


def print_error(message: str) -> None:
    """Print `error: MESSAGE` on stderr as one line: never folded, brackets in it shown as they are."""
    stderr.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False, emoji=False)


def reports_errors(func: F) -> F:
    """Turn CertfabErrors into one line on stderr and their exit status, without a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CertfabError as exc:
            print_error(str(exc))
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            stderr.print("interrupted")
            raise Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def inventory_for(c: Context, explicit: str | None) -> Inventory:
    """Load the inventory named by --inventory, CERTFAB_INVENTORY or ./inventory.yaml."""
    return load_inventory(explicit)


def target_hosts(c: Context, inventory: Inventory, limit: str | None) -> tuple[Host, ...]:
    """Hosts a task runs on: `fab -H name` gives one, otherwise --limit or the whole inventory."""
    named = getattr(c, "host", None)
    if named:
        return (inventory.host_for_address(str(named)),)
    return inventory.select(limit)


def fabric_config(c: Context) -> Any:
    """The task's configuration as a Fabric Config (sudo password, timeouts, ...)."""
    from fabric import Config

    config = getattr(c, "config", None)
    if isinstance(config, Config):
        return config
    if config is None:
        return Config()
    return config.clone(into=Config)


class LiveProgress(Progress):
    """A live per-host status table on a terminal; nothing when output is not a terminal."""

    def __init__(self, hosts: list[str], title: str) -> None:
        self.states: dict[str, str] = {host: "[dim]waiting[/]" for host in hosts}
        self.title = title
        self.lock = threading.Lock()
        self.live: Live | None = None
        if stderr.is_terminal:
            self.live = Live(self._table(), console=stderr, refresh_per_second=8, transient=True)

    def _table(self) -> Table:
        table = Table(title=self.title, show_header=False, box=None)
        for host, state in self.states.items():
            table.add_row(host, state)
        return table

    def __enter__(self) -> LiveProgress:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def _set(self, host: str, state: str) -> None:
        with self.lock:
            self.states[host] = state
            if self.live is not None:
                self.live.update(self._table())

    def step(self, host: str, message: str) -> None:
        self._set(host, f"[cyan]{message}…[/]")

    def done(self, host: str, outcome: HostOutcome[Any]) -> None:
        self._set(host, "[red]failed[/]" if outcome.failed else "[green]done[/]")
        for notice in outcome.notices:
            stderr.print(notice)


def exit_with(code: int) -> None:
    """Leave the task with a meaningful exit status."""
    sys.stdout.flush()
    if code:
        raise Exit(code=code)
