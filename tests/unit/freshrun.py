"""Python code run in fresh interpreters one after another, as separate certfab commands would run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[2]


def outputs_of_runs(code: str, state: Path, *, runs: int = 2, stdin: str | None = None) -> list[str]:
    """What `code` printed in each of `runs` fresh processes sharing the operator state directory `state`."""
    env = {**os.environ, "CERTFAB_STATE_DIR": str(state)}
    return [subprocess.run([sys.executable, "-c", code], cwd=REPO_DIR, env=env, input=stdin, capture_output=True,
                           text=True, check=True).stdout.strip() for _ in range(runs)]
