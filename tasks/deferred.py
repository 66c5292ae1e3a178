"""Task plumbing that loads certfab's command-line helpers only when a task runs.

`inv -l` and `inv --help TASK` need nothing but the task signatures: rich, Fabric, paramiko,
cryptography and the certfab core are imported by the task body that uses them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(func: F) -> F:
    """certfab.cli.reports_errors, applied when the task is called rather than when it is defined."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from certfab.cli import reports_errors as reporting

        return reporting(func)(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
