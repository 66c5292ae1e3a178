"""Unit tests keep the operator's state (order history, caches) in a directory of their own."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def private_state_dir() -> Iterator[None]:
    with tempfile.TemporaryDirectory(prefix="certfab-unit-state-") as state:
        previous = os.environ.get("CERTFAB_STATE_DIR")
        os.environ["CERTFAB_STATE_DIR"] = state
        yield
        if previous is None:
            os.environ.pop("CERTFAB_STATE_DIR", None)
        else:
            os.environ["CERTFAB_STATE_DIR"] = previous
