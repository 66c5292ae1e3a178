"""certfab installed like a tool: a wheel in a fresh venv runs its tasks from any directory, templates included.

Builds the wheel from the checkout's packaging inputs (copied, so the checkout gets no build/ tree),
installs it with its dependencies into a new venv, and runs `certfab` outside the repository against the
lab (web13, read only).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from certfab.lab import Lab

REPO_DIR = Path(__file__).resolve().parents[2]
PACKAGING_INPUTS = ("pyproject.toml", "README.md", "certfab", "tasks", "templates")
HOST = "web13"


def run(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ directory of a fresh venv holding certfab from a freshly built wheel."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    for name in PACKAGING_INPUTS:
        path = REPO_DIR / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), "."], cwd=source)
    assert built.returncode == 0, built.stderr
    wheels = list((root / "dist").glob("certfab-*.whl"))
    assert len(wheels) == 1
    made = run([sys.executable, "-m", "venv", str(root / "venv")], cwd=root)
    assert made.returncode == 0, made.stderr
    bin_dir = root / "venv" / "bin"
    pip = run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheels[0])], cwd=root, timeout=600)
    assert pip.returncode == 0, pip.stderr
    return bin_dir


def outside_env(lab: Lab) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["CERTFAB_INVENTORY"] = str(lab.info.inventory)
    env["COLUMNS"] = "200"
    return env


def test_the_installed_package_reads_its_own_templates(installed: Path, tmp_path: Path) -> None:
    probe = run([str(installed / "python"), "-c",
                 "from certfab import templating; print(templating.TEMPLATES_DIR)"], cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    templates = Path(probe.stdout.strip())
    assert templates.parent.parent.parent.name.startswith("python"), templates  # .../lib/pythonX.Y/site-packages
    assert templates.parts[-2:] == ("certfab", "templates")
    assert (templates / "report.html.j2").is_file()
    assert (templates / "remote" / "facts.sh.j2").is_file()
    # The task collection lives inside the package: no top-level `tasks` to clash with another project's.
    site_packages = templates.parent.parent
    assert (site_packages / "certfab" / "tasks" / "hosts.py").is_file()
    assert not (site_packages / "tasks").exists()


def test_certfab_lists_the_tasks_from_another_directory(installed: Path, tmp_path: Path, lab: Lab) -> None:
    listed = run([str(installed / "certfab"), "-l"], cwd=tmp_path, env=outside_env(lab))
    assert listed.returncode == 0, listed.stderr
    for name in ("bootstrap", "deploy-all", "facts", "plan", "renew-now", "report-expiry", "lab.up"):
        assert f"  {name} " in listed.stdout
    helped = run([str(installed / "certfab"), "--help", "deploy-all"], cwd=tmp_path, env=outside_env(lab))
    assert helped.returncode == 0, helped.stderr
    assert "--canary" in helped.stdout


def test_certfab_reports_expiry_of_a_lab_host_from_another_directory(installed: Path, tmp_path: Path,
                                                                     lab: Lab) -> None:
    reported = run([str(installed / "certfab"), "report-expiry", "--limit", HOST, "--format", "json"],
                   cwd=tmp_path, env=outside_env(lab))
    # The exit status is the report's verdict (0, 1 or 2), whatever state the host is in.
    assert reported.returncode in (0, 1, 2), reported.stderr
    report = json.loads(reported.stdout)
    rows = [row for row in report["rows"] if row["host"] == HOST]
    assert rows, report
    assert all(row["status"] != "unreachable" for row in rows), rows
    assert list((tmp_path / "reports").glob("expiry-*.json")), "the run's report is saved beside the operator"
