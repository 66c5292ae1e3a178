"""Plumbing shared by the Invoke tasks: options, host selection, errors, progress, recap."""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from invoke.context import Context
from invoke.exceptions import Exit

from certfab.errors import CertfabError
from certfab.fleet import Progress
from certfab.inventory import Host, Inventory, load_inventory
from certfab.outcome import HostOutcome
from certfab.textsafe import for_terminal

if TYPE_CHECKING:
    from rich.console import Console, Group
    from rich.live import Live

F = TypeVar("F", bound=Callable[..., Any])


class _LazyConsole:
    """A rich Console made on first use: a run that prints only JSON or plain lines never loads rich."""

    def __init__(self, to_stderr: bool) -> None:
        self.to_stderr = to_stderr
        self._console: Console | None = None

    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            # Without a terminal rich assumes 80 columns, which folds report tables; logs can be wider.
            probe = Console(stderr=self.to_stderr)
            self._console = Console(stderr=self.to_stderr, highlight=False,
                                    width=None if probe.is_terminal else 200)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console(), name)


stdout: Any = _LazyConsole(False)
stderr: Any = _LazyConsole(True)


def say(line: str) -> None:
    """One plain line on stderr (host text in it shown escaped)."""
    sys.stderr.write(for_terminal(line) + "\n")
    sys.stderr.flush()


def print_error(message: str) -> None:
    """Print `error: MESSAGE` on stderr as one line: never folded, brackets in it shown as they are."""
    from rich.markup import escape

    stderr.print(f"[bold red]error:[/] {escape(for_terminal(message))}", soft_wrap=True, highlight=False, emoji=False)


class OptionError(CertfabError):
    """A command-line option has a value the task cannot use; nothing was run."""

    exit_code = 2


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
            say("interrupted")
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
    """The task's configuration (sudo password, ...) as a Fabric Config of its own, for `fab` and `inv` alike.

    A copy, not the task's object: a Fabric Connection writes into the config it is given, and worker
    threads clone this copy for each connection. The copy carries no ssh_config rules (certfab.ssh
    resolves routes itself), so `fab` and `inv` connect the same way.
    """
    from certfab.ssh import connection_config

    return connection_config(getattr(c, "config", None))


class LiveProgress(Progress):
    """Live per-host progress on a terminal (counts, running and failed hosts); nothing otherwise."""

    def __init__(self, hosts: list[str], title: str) -> None:
        self.states: dict[str, str] = {host: "waiting" for host in hosts}
        self.details: dict[str, str] = {}
        self.title = title
        self.lock = threading.Lock()
        self.live: Live | None = None
        if sys.stderr.isatty():
            from rich.live import Live

            self.live = Live(self._render(), console=stderr.console(), refresh_per_second=8, transient=True,
                             get_renderable=self._render)

    def _render(self) -> Group:
        from rich.console import Group
        from rich.markup import escape
        from rich.table import Table
        from rich.text import Text

        with self.lock:
            states = dict(self.states)
            details = dict(self.details)
        counts = {name: sum(1 for s in states.values() if s == name)
                  for name in ("waiting", "running", "ok", "failed", "not started")}
        done = counts["ok"] + counts["failed"] + counts["not started"]
        summary = f"{self.title}: {done}/{len(states)} done, {counts['running']} running"
        if counts["waiting"]:
            summary += f", {counts['waiting']} waiting"
        if counts["failed"]:
            summary += f", [red]{counts['failed']} failed[/]"
        if counts["not started"]:
            summary += f", {counts['not started']} not started"
        table = Table(show_header=False, box=None)
        # Running hosts first, then failures; finished and waiting hosts only as counts.
        shown = [h for h, s in states.items() if s == "running"] + [h for h, s in states.items() if s == "failed"]
        room = max(3, stderr.size.height - 4)
        for host in shown[:room]:
            style = "cyan" if states[host] == "running" else "red"
            table.add_row(host, f"[{style}]{escape(details.get(host, ''))}[/]")
        if len(shown) > room:
            table.add_row("…", f"{len(shown) - room} more")
        return Group(Text.from_markup(summary), table)

    def __enter__(self) -> LiveProgress:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def _set(self, host: str, state: str, detail: str) -> None:
        with self.lock:
            self.states[host] = state
            self.details[host] = detail

    def step(self, host: str, message: str) -> None:
        self._set(host, "running", f"{message}…")

    def done(self, host: str, outcome: HostOutcome[Any]) -> None:
        if not outcome.started:
            self._set(host, "not started", "not started")
        elif outcome.failed:
            self._set(host, "failed", outcome.error or "failed")
        else:
            self._set(host, "ok", "done")
        for notice in outcome.notices:
            say(notice)

    def interrupted(self, running: list[str], again: bool) -> None:
        waiting = f"waiting for {', '.join(running)} to finish or roll back" if running else "finishing"
        prefix = "still interrupted" if again else "interrupted"
        say(f"{prefix}: no new host will start; {waiting}")


def exit_with(code: int) -> None:
    """Leave the task with a meaningful exit status."""
    sys.stdout.flush()
    if code:
        raise Exit(code=code)
