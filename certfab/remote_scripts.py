"""Remote scripts: templates under templates/remote/, rendered with the guard, run by `sh -s`.

Rendering is pure; `run_local` runs a rendered script on this machine against a sandbox root, so
tests exercise the very scripts certfab sends to hosts.
"""

from __future__ import annotations

import os
import subprocess

from certfab.includes import DENIED_PREFIXES
from certfab.protocol import Reply, new_nonce, parse_frames
from certfab.templating import render

SCRIPT_DIR = "remote"


def render_script(name: str, *, nonce: str, root: str = "", **context: object) -> str:
    """templates/remote/<name> with the protocol's nonce and the sandbox root ('' on real hosts)."""
    if root and not root.startswith("/"):
        raise ValueError(f"sandbox root {root!r} must be an absolute path")
    # Where private keys live, from the one list the controller checks too.
    return render(f"{SCRIPT_DIR}/{name}", nonce=nonce, root=root.rstrip("/"),
                  denied_prefixes=DENIED_PREFIXES, **context)


def run_local(name: str, *, root: str, timeout: float = 60, env: dict[str, str] | None = None,
              **context: object) -> Reply:
    """Run a remote script here with `sh -s` against the sandbox `root` (for tests)."""
    nonce = new_nonce()
    script = render_script(name, nonce=nonce, root=root, **context)
    result = subprocess.run(
        ["/bin/sh", "-s"], input=script.encode("utf-8", errors="surrogateescape"), capture_output=True,
        timeout=timeout, check=False, env={**os.environ, **(env or {})},
    )
    return Reply(result.returncode, parse_frames(result.stdout, nonce),
                 result.stderr.decode("utf-8", errors="replace"))
