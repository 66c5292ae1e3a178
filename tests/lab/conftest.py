"""Fixtures for tests on real lab hosts: a session-wide lab of at least three hosts."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from certfab import lab as labkit

REPO_DIR = Path(__file__).resolve().parents[2]
LAB_TESTS = Path(__file__).resolve().parent
MIN_HOSTS = 3


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/lab with `lab`, so `-m "not lab"` skips them."""
    for item in items:
        if LAB_TESTS in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab() -> Iterator[labkit.Lab]:
    """A running lab with >= 3 hosts (a healthy one is reused); torn down unless CERTFAB_LAB_KEEP=1."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("lab tests need root on Linux")
    info = labkit.running(REPO_DIR)
    if info is None or len(info.hosts) < MIN_HOSTS:
        info = labkit.up(MIN_HOSTS, REPO_DIR)
    yield labkit.Lab(info)
    if os.environ.get("CERTFAB_LAB_KEEP") != "1":
        labkit.down(REPO_DIR)
