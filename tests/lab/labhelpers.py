"""Helpers shared by lab test modules: what a host's file trees hold, and how they changed."""

from __future__ import annotations

import json

from certfab.lab import Lab

# The file tree as seen on the host: path -> kind, mode, owner and sha256 (or a symlink's target).
_SNAPSHOT = r"""
import hashlib, json, os, stat, sys
out = {}
for root in sys.argv[1:]:
    if not os.path.lexists(root):
        out[root] = "absent"
        continue
    paths = [root]
    if os.path.isdir(root) and not os.path.islink(root):
        for d, dirs, files in os.walk(root):
            paths += [os.path.join(d, n) for n in dirs + files]
    for p in paths:
        st = os.lstat(p)
        meta = f"{stat.S_IMODE(st.st_mode):o} {st.st_uid}:{st.st_gid}"
        if stat.S_ISLNK(st.st_mode):
            out[p] = "link -> " + os.readlink(p)
        elif stat.S_ISDIR(st.st_mode):
            out[p] = "dir " + meta
        elif stat.S_ISREG(st.st_mode):
            with open(p, "rb") as f:
                out[p] = "file " + meta + " " + hashlib.sha256(f.read()).hexdigest()
        else:
            out[p] = "other " + meta
print(json.dumps(out, sort_keys=True))
"""


def snapshot(lab: Lab, host: str, paths: tuple[str, ...]) -> dict[str, str]:
    """Every file, directory and symlink under `paths` on the host, with mode, owner and sha256."""
    result = lab.host_exec(host, ["python3", "-c", _SNAPSHOT, *paths])
    data: dict[str, str] = json.loads(result.stdout)
    return data


def tree_changes(before: dict[str, str], after: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    """Paths whose entry differs between two snapshots: path -> (before, after)."""
    return {
        p: (before.get(p), after.get(p))
        for p in sorted(before.keys() | after.keys())
        if before.get(p) != after.get(p)
    }
