"""What a site's nginx files held before certfab edited them, so remove-site can give them back (pure).

When bootstrap edits a site's existing files it records, per file, the text before its first edit and
the text after its last one, in /var/lib/certfab/origin/SITE.json (0600; nginx text only, the files
certfab already reads, never a key). remove-site restores the recorded text byte for byte when the
file still holds what certfab left; otherwise it reverses certfab's own changes only (a three-way,
line-based inverse) and refuses when someone edited the very lines certfab changed.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from certfab.paths import STATE_DIR

ORIGIN_DIR = f"{STATE_DIR}/origin"
_VERSION = 1


def origin_path(site: str) -> str:
    """Where the record of one site lives on the host."""
    return f"{ORIGIN_DIR}/{site}.json"


@dataclass(frozen=True)
class OriginFile:
    """One file certfab edited for a site: its text before certfab and as certfab left it."""

    path: str
    before: str
    after: str


@dataclass(frozen=True)
class Origin:
    """Every file certfab edited for one site."""

    site: str
    files: tuple[OriginFile, ...]

    def file(self, path: str) -> OriginFile | None:
        return next((f for f in self.files if f.path == path), None)


def render_origin(origin: Origin) -> str:
    """The record as JSON (bytes a file held that are not UTF-8 survive as escaped surrogates)."""
    return json.dumps({
        "version": _VERSION,
        "site": origin.site,
        "files": [{"path": f.path, "before": f.before, "after": f.after} for f in origin.files],
    }, indent=1, sort_keys=True) + "\n"


def parse_origin(text: str | None, site: str) -> Origin | None:
    """A record read from the host (hostile data): None unless it is well-formed and names `site`."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("version") != _VERSION or data.get("site") != site:
        return None
    files = data.get("files")
    if not isinstance(files, list):
        return None
    found: list[OriginFile] = []
    for entry in files:
        if not isinstance(entry, dict):
            return None
        path, before, after = entry.get("path"), entry.get("before"), entry.get("after")
        if not (isinstance(path, str) and path.startswith("/") and isinstance(before, str)
                and isinstance(after, str)):
            return None
        found.append(OriginFile(path, before, after))
    return Origin(site, tuple(found))


def invert(before: str, after: str, current: str) -> str | None:
    """`current` with certfab's change (`before` -> `after`) taken back; None when they overlap.

    `before` exactly when nothing else changed; otherwise each of certfab's hunks is reversed where
    the lines it wrote are still there, unchanged and together, and the rest of `current` is kept.
    """
    if current == after:
        return before
    a, b, c = (t.splitlines(keepends=True) for t in (after, before, current))
    a_to_c: dict[int, int] = {}
    for block in difflib.SequenceMatcher(None, a, c, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            a_to_c[block.a + k] = block.b + k
    replacements: list[tuple[int, int, list[str]]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        if i2 > i1:
            if any(i not in a_to_c for i in range(i1, i2)):
                return None
            c1, c2 = a_to_c[i1], a_to_c[i2 - 1] + 1
            if c2 - c1 != i2 - i1:
                return None
        elif i1 in a_to_c:
            c1 = c2 = a_to_c[i1]
        elif i1 > 0 and i1 - 1 in a_to_c:
            c1 = c2 = a_to_c[i1 - 1] + 1
        elif i1 == 0:
            c1 = c2 = 0
        elif i1 == len(a):
            c1 = c2 = len(c)
        else:
            return None
        replacements.append((c1, c2, b[j1:j2]))
    for c1, c2, lines in sorted(replacements, reverse=True):
        c[c1:c2] = lines
    return "".join(c)


def updated_origin(existing: Origin | None, site: str, pre: Mapping[str, str], post: Mapping[str, str]) -> Origin | None:
    """The record after a run edits a site's files from `pre` to `post` (by real path).

    A file edited for the first time records `pre`; a file edited again keeps its first text, rebased
    onto any change someone else made in between (or, when that cannot be separated, what it held
    just before this run). Returns None when there is nothing to record.
    """
    files = {f.path: f for f in existing.files} if existing is not None else {}
    for path, new_text in post.items():
        old_text = pre.get(path)
        if old_text is None or old_text == new_text:
            continue
        known = files.get(path)
        if known is None:
            files[path] = OriginFile(path, old_text, new_text)
            continue
        first = known.before if old_text == known.after else invert(known.before, known.after, old_text)
        files[path] = OriginFile(path, first if first is not None else old_text, new_text)
    if not files:
        return None
    return Origin(site, tuple(files[p] for p in sorted(files)))
