"""DNS-01 on a real host: the lab DNS (BIND 9) and its dynamic updates, then certificates validated through it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from certfab.lab import Lab, layout, proc

HOST = "web27"
REPO_DIR = Path(__file__).resolve().parents[2]


def resolve(lab: Lab, name: str, record: str = "A") -> list[str]:
    """What the lab DNS answers for a name, asked from a host as its resolver would (sorted)."""
    result = lab.host_exec(HOST, ["dig", "+short", "+norecurse", f"@{layout.BRIDGE_ADDRESS}", name, record])
    return sorted(line for line in result.stdout.split() if line)


def test_the_lab_dns_is_bind_with_the_hosts_names(lab: Lab, module_hosts: tuple[str, ...]) -> None:
    """named answers on the bridge address for every host's names, authoritatively."""
    pid = proc.live_pid(layout.pid_file("dns"))
    assert pid is not None and proc.exe(pid) == "/usr/sbin/named"
    assert resolve(lab, f"www.{HOST}.test") == [lab.info.host(HOST).address]
    answer = lab.host_exec(HOST, ["dig", "+norecurse", f"@{layout.BRIDGE_ADDRESS}", f"{HOST}.test"]).stdout
    assert " aa " in answer.split("flags:")[1].split(";")[0] + " "


def test_set_dns_publishes_round_robin_names_and_clears_them(lab: Lab, module_hosts: tuple[str, ...]) -> None:
    """lab.set_dns with several addresses answers all of them; clear_dns removes the name."""
    lab.set_dns("rr.web27.test", "10.77.0.37", "10.77.0.38")
    assert resolve(lab, "rr.web27.test") == ["10.77.0.37", "10.77.0.38"]
    lab.set_dns("rr.web27.test", "10.77.0.39")
    assert resolve(lab, "rr.web27.test") == ["10.77.0.39"]
    lab.clear_dns("rr.web27.test")
    assert resolve(lab, "rr.web27.test") == []


def test_inv_lab_dns_add_publishes_names(lab: Lab, module_hosts: tuple[str, ...]) -> None:
    """`inv lab.dns-add NAME A,B` and `inv lab.dns-clear NAME`, as an operator types them."""
    inv = str(Path(__import__("sys").executable).parent / "inv")
    added = subprocess.run([inv, "lab.dns-add", "cli.web27.test", "10.77.0.41,10.77.0.42"], cwd=REPO_DIR,
                           capture_output=True, text=True, timeout=60, check=False)
    assert added.returncode == 0, added.stdout + added.stderr
    assert resolve(lab, "cli.web27.test") == ["10.77.0.41", "10.77.0.42"]
    refused = subprocess.run([inv, "lab.dns-add", "cli.example.com", "10.77.0.41"], cwd=REPO_DIR,
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0 and "lab zone" in refused.stderr
    cleared = subprocess.run([inv, "lab.dns-clear", "cli.web27.test"], cwd=REPO_DIR,
                             capture_output=True, text=True, timeout=60, check=False)
    assert cleared.returncode == 0, cleared.stdout + cleared.stderr
    assert resolve(lab, "cli.web27.test") == []


def test_an_unsigned_update_is_refused(lab: Lab, module_hosts: tuple[str, ...]) -> None:
    """Only the lab's TSIG key may change the zone."""
    script = f"server {layout.BRIDGE_ADDRESS} 53\nzone test.\nupdate add evil.test. 1 A 10.77.0.66\nsend\n"
    result = lab.host_exec(HOST, ["nsupdate"], check=False, input=script)
    assert result.returncode != 0 and "REFUSED" in result.stdout + result.stderr
    assert resolve(lab, "evil.test") == []


@pytest.fixture(scope="module")
def credentials(lab: Lab) -> Path:
    """The rfc2136 credentials lab.up wrote."""
    path = lab.info.lab_dir / layout.LAB_FILES["dns_credentials"]
    assert path.stat().st_mode & 0o777 == 0o600
    return path
