"""Task plumbing that loads certfab's command-line helpers only when a task runs.

`inv -l` and `inv --help TASK` need nothing but the task signatures: rich, Fabric, paramiko,
cryptography and the certfab core are imported by the task body that uses them.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(func: F) -> F:
    """certfab.cli.reports_errors, applied when the task is called rather than when it is defined."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # Invoke turns bytecode writing off for the whole process (its --write-pyc); the core's modules
        # get Python's own choice back (-B, PYTHONDONTWRITEBYTECODE), or a checkout compiles them every run.
        sys.dont_write_bytecode = bool(sys.flags.dont_write_bytecode)
        from certfab.cli import reports_errors as reporting

        return reporting(func)(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
