"""What a fleet run leaves for each host: a value, or the one-line error that stopped it (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

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
    started: bool = True

    @property
    def failed(self) -> bool:
        return self.error is not None
