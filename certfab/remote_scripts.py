"""Remote scripts: templates under templates/remote/, rendered with the guard, run by `sh -s`.

Rendering is pure; `run_local` runs a rendered script on this machine against a sandbox root, so
tests exercise the very scripts certfab sends to hosts.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

from certfab.includes import DENIED_PREFIXES
from certfab.opstate import cache_key, read_cached, write_cached
from certfab.protocol import Reply, new_nonce, parse_frames

SCRIPT_DIR = "remote"
# Scripts sent to every host on every run whose values hold nothing secret: kept rendered between runs
# (certfab.opstate), so a run that renders nothing else never loads Jinja. Their values that change
# from one run to the next (the nonce, the time) are filled in after the lookup.
CACHED_SCRIPTS = frozenset({"facts.sh.j2", "report.sh.j2"})
VOLATILE = ("nonce", "now")
_CACHE_KIND = "scripts"


def render_script(name: str, *, nonce: str, root: str = "", **context: object) -> str:
    """templates/remote/<name> with the protocol's nonce and the sandbox root ('' on real hosts)."""
    if root and not root.startswith("/"):
        raise ValueError(f"sandbox root {root!r} must be an absolute path")
    values = {**context, "nonce": nonce, "root": root.rstrip("/")}
    if name in CACHED_SCRIPTS:
        cached = _cached_render(name, values)
        if cached is not None:
            return cached
    return _render(name, values)


def _render(name: str, values: dict[str, object]) -> str:
    from certfab.templating import render

    # Where private keys live, from the one list the controller checks too.
    return render(f"{SCRIPT_DIR}/{name}", denied_prefixes=DENIED_PREFIXES, **values)


def _cached_render(name: str, values: dict[str, object]) -> str | None:
    """The script from the cache (rendered now and kept if it was not there); None if it cannot be kept."""
    volatile = {key: values[key] for key in VOLATILE if key in values}
    try:
        fixed = json.dumps(_canonical({k: v for k, v in values.items() if k not in volatile}), sort_keys=True)
    except TypeError:
        return None
    key = cache_key(_CACHE_KIND, name, fixed)
    entry = read_cached(_CACHE_KIND, key)
    if entry is not None:
        header, _, body = entry.partition(b"\n")
        kept = body.decode("utf-8", "surrogateescape")
        try:
            placeholders = json.loads(header)
        except ValueError:
            placeholders = None
        if isinstance(placeholders, dict) and set(placeholders) == set(volatile) \
                and all(isinstance(token, str) and token in kept for token in placeholders.values()):
            return _fill(kept, placeholders, volatile)
    # Placeholders no template value can hold: fresh random words, each checked to land in the text.
    placeholders = {value_name: f"certfab{value_name}{secrets.token_hex(8)}" for value_name in volatile}
    text = _render(name, {**values, **placeholders})
    if not all(token in text for token in placeholders.values()):
        return None
    write_cached(_CACHE_KIND, key, json.dumps(placeholders).encode() + b"\n" + text.encode("utf-8", "surrogateescape"))
    return _fill(text, placeholders, volatile)


def _fill(text: str, placeholders: dict[str, str], volatile: dict[str, object]) -> str:
    from certfab.templating import check_safe

    for key, token in placeholders.items():
        value = volatile[key]
        # The guard Jinja would have applied to the value itself.
        text = text.replace(token, str(value) if isinstance(value, int) else check_safe(str(value)))
    return text


def _canonical(value: object) -> object:
    """A template value as JSON that tells apart what renders differently (a Trusted string, a Path)."""
    from certfab.templating import Trusted

    if isinstance(value, Trusted):
        return ["trusted", str(value)]
    if isinstance(value, Path):
        return ["path", str(value)]
    if value is None or isinstance(value, (bool, int, float)) or type(value) is str:
        return value
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    if isinstance(value, dict) and all(type(k) is str for k in value):
        return {k: _canonical(v) for k, v in value.items()}
    raise TypeError(f"not kept: {type(value).__name__}")


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
