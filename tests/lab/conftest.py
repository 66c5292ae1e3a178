"""Fixtures for tests on real lab hosts: a session-wide lab of at least three hosts."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from certfab import lab as labkit

REPO_DIR = Path(__file__).resolve().parents[2]
LAB_TESTS = Path(__file__).resolve().parent
MIN_HOSTS = 28
# The last host of the lab runs podman instead of dockerd (tests find it in LabInfo.podman_hosts).
PODMAN_HOSTS = 1
VENV_BIN = Path(sys.executable).parent
# The operator's state (the order history the rate-limit guard counts) of this test session only.
SESSION_STATE = Path(tempfile.mkdtemp(prefix="certfab-test-state-"))

# Each test module works on its own hosts, so modules never disturb one another.
MODULE_HOSTS = {
    "test_lab_smoke": ("web1", "web2"),
    "test_facts_ssh": ("web1", "web2"),
    "test_bootstrap": ("web3", "web4"),
    "test_renewal": ("web5",),
    "test_report": ("web6", "web7"),
    "test_deploy_all": ("web8", "web9", "web10"),
    "test_faults": ("web11", "web12"),
    "test_hostile_apply": ("web15", "web16"),
    "test_hostile_facts": ("web17", "web18"),
    "test_ssh": ("web13", "web14"),
    "test_acme_now": ("web21", "web22", "web23"),
    "test_lifecycle": ("web19", "web20"),
    "test_dns01": ("web27",),
    "test_shared": ("web24", "web25", "web26"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/lab with `lab`, so `-m "not lab"` skips them."""
    for item in items:
        if LAB_TESTS in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab() -> Iterator[labkit.Lab]:
    """A running lab with >= 12 hosts (a healthy one is reused); torn down unless CERTFAB_LAB_KEEP=1."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("lab tests need root on Linux")
    # A host another test stopped on purpose is no reason to rebuild everyone's lab.
    info = labkit.running(REPO_DIR, allow_stopped_hosts=True)
    if info is None or len(info.hosts) < MIN_HOSTS or len(info.podman_hosts) != PODMAN_HOSTS:
        info = labkit.up(MIN_HOSTS, REPO_DIR, podman=PODMAN_HOSTS)
    yield labkit.Lab(info)
    if os.environ.get("CERTFAB_LAB_KEEP") != "1":
        labkit.down(REPO_DIR)


def certfab_cli(
    lab: labkit.Lab, tool: str, *args: str, inventory: Path | None = None, timeout: float = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `fab` or `inv` from the repo root against the lab inventory, as an operator would."""
    full_env = dict(os.environ)
    full_env["CERTFAB_INVENTORY"] = str(inventory or lab.info.inventory)
    full_env["COLUMNS"] = "200"
    full_env.setdefault("CERTFAB_STATE_DIR", str(SESSION_STATE))
    full_env.update(env or {})
    return subprocess.run(
        [str(VENV_BIN / tool), *args], cwd=REPO_DIR, env=full_env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


@pytest.fixture(scope="module")
def module_hosts(request: pytest.FixtureRequest, lab: labkit.Lab) -> tuple[str, ...]:
    """The hosts this test module owns, reset to a pristine plain-HTTP state before its first test."""
    name = Path(str(request.module.__file__)).stem
    hosts = MODULE_HOSTS[name]
    for host in hosts:
        lab.reset_host(host)
    return hosts
