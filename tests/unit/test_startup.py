"""Start-up: listing tasks loads only Invoke; a wheel carries every template where templating finds it."""

from __future__ import annotations

import os
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import jinja2
import pytest

from certfab import templating

REPO_DIR = Path(__file__).resolve().parents[2]
# Libraries a task imports when it runs; none of them is needed to list or describe tasks.
HEAVY = ("paramiko", "fabric", "rich", "jinja2", "cryptography", "crossplane", "certfab")

LOADED_BY = """
import sys
{setup}
heavy = {heavy!r}
print(" ".join(sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy))))
"""


def heavy_modules_after(setup: str) -> list[str]:
    """The heavy libraries a fresh interpreter has loaded after running `setup` in the repository."""
    code = LOADED_BY.format(setup=setup, heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_DIR, capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\n")[-2].split()


@pytest.mark.parametrize("argv", [["inv", "-l"], ["inv", "--help", "deploy-all"], ["inv", "--help", "lab.up"]])
def test_listing_and_describing_tasks_loads_no_heavy_library(argv: list[str]) -> None:
    setup = f"from invoke.main import program\nprogram.run({argv!r}, exit=False)"
    assert heavy_modules_after(setup) == []


def test_importing_the_task_collection_loads_no_heavy_library() -> None:
    assert heavy_modules_after("import tasks") == []


def test_inv_lists_every_task() -> None:
    result = subprocess.run([sys.executable, "-c", "from invoke.main import program; program.run(['inv', '-l'])"],
                            cwd=REPO_DIR, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in ("bootstrap", "deploy-all", "facts", "plan", "renew-now", "report-expiry", "lab.up"):
        assert f"  {name} " in result.stdout


def test_the_certfab_program_lists_the_same_tasks() -> None:
    result = subprocess.run([sys.executable, "-m", "certfab", "-l"], cwd=REPO_DIR, capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in ("bootstrap", "deploy-all", "report-expiry", "lab.status"):
        assert f"  {name} " in result.stdout


def test_templates_are_found_in_the_checkout() -> None:
    assert templating.TEMPLATES_DIR == REPO_DIR / "templates"
    assert (templating.TEMPLATES_DIR / "report.html.j2").is_file()
    assert (templating.TEMPLATES_DIR / "remote" / "facts.sh.j2").is_file()


def test_the_wheel_maps_every_template_into_the_package() -> None:
    """Each file under templates/ lands in a package of the wheel (a new subdirectory needs a mapping)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((REPO_DIR / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dirs = {REPO_DIR / folder: package for package, folder in setuptools["package-dir"].items()}
    assert set(package_dirs.values()) <= set(setuptools["packages"])
    for path in sorted(p for p in templating.TEMPLATES_DIR.rglob("*") if p.is_file()):
        package = package_dirs.get(path.parent)
        assert package is not None, f"{path.relative_to(REPO_DIR)}: its directory is in no package of the wheel"
        patterns = setuptools["package-data"].get(package, [])
        assert any(fnmatch(path.name, pattern) for pattern in patterns), f"{path.name}: not in {package}'s data"


def test_a_compiled_template_is_used_only_while_its_source_is_unchanged(tmp_path: Path) -> None:
    template = tmp_path / "probe.sh.j2"

    def rendered() -> str:
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(tmp_path)),
                                 bytecode_cache=templating._bytecode_cache())
        return env.get_template("probe.sh.j2").render(name="web1")

    template.write_text("echo {{ name }} one\n")
    assert rendered() == "echo web1 one"
    assert rendered() == "echo web1 one"  # the second process-like environment loads the compiled code
    template.write_text("echo {{ name }} two\n")
    assert rendered() == "echo web1 two"


@pytest.mark.parametrize("python_says_write", [True, False])
def test_a_task_imports_the_core_with_pythons_own_bytecode_setting(python_says_write: bool) -> None:
    """Invoke switches bytecode writing off for the process; a task body gets Python's setting back."""
    code = (
        "import sys\n"
        "from invoke.context import Context\n"
        "from tasks.deferred import reports_errors\n"
        "seen = []\n"
        "def body(c): seen.append(sys.dont_write_bytecode)\n"
        "sys.dont_write_bytecode = True  # as Invoke leaves it\n"
        "reports_errors(body)(Context())\n"
        "print(seen[0])\n"
    )
    flags = [] if python_says_write else ["-B"]
    result = subprocess.run([sys.executable, *flags, "-c", code], cwd=REPO_DIR, capture_output=True, text=True,
                            check=False, timeout=60, env={k: v for k, v in os.environ.items()
                                                          if k != "PYTHONDONTWRITEBYTECODE"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(not python_says_write)
