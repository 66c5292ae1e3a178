"""Host text shown to people: control characters made visible, so no config can drive the terminal.

An ANSI escape in a comment could hide diff lines, recolour a warning or rewrite the screen; a bare
carriage return could overwrite a line; bidi overrides can reorder what a reader sees.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls, and Unicode's bidirectional overrides/isolates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\r":
        return "\\r"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def for_terminal(text: str) -> str:
    """text with every character that could act on a terminal shown as an escape (\\x1b, \\r, \\u202e)."""
    return _UNSAFE.sub(_visible, text)


def one_line(text: str) -> str:
    """Host text as one visible line."""
    return for_terminal(" ".join(text.split()))
