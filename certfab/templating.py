"""Jinja2 rendering of the files certfab writes on hosts, with a guard against unsafe values.

Jinja itself loads with the first template rendered: a run whose scripts all come from the rendered
script cache (certfab.remote_scripts) never imports it.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from certfab.errors import CertfabError

if TYPE_CHECKING:
    import jinja2


def _templates_dir() -> Path:
    """templates/ inside the installed package (a wheel ships it there), else the checkout's top-level one."""
    package = Path(__file__).resolve().parent
    installed = package / "templates"
    return installed if installed.is_dir() else package.parent / "templates"


# Every template is read from here: host files, remote scripts and the HTML report.
TEMPLATES_DIR = _templates_dir()

# Characters that could end a directive, open a block, start a comment or expand a variable once a
# value lands in an nginx file or a shell script.
UNSAFE_CHARS = frozenset(";{}$`\"'\\#")


class UnsafeValueError(CertfabError):
    """A value about to be rendered into an nginx or shell file contains an unsafe character."""


class Trusted(str):
    """A string that a template may render verbatim (already quoted or built by certfab itself)."""


def trusted(value: str) -> Trusted:
    """Mark a string as safe to render without the unsafe-character guard."""
    return Trusted(value)


def unsafe_char(value: str) -> str | None:
    """Return the first character of value that is unsafe for nginx or shell, or None."""
    for char in value:
        if char in UNSAFE_CHARS or char.isspace() or not char.isprintable():
            return char
    return None


def check_safe(value: str) -> str:
    """Return value unchanged, or raise UnsafeValueError if it holds an unsafe character."""
    bad = unsafe_char(value)
    if bad is not None:
        raise UnsafeValueError(
            f"refusing to render {value!r} into a host file: character {bad!r} is unsafe for nginx or shell"
        )
    return value


def _finalize(autoescape: bool, value: object) -> object:
    """Check every `{{ ... }}` result before it is written into a non-HTML template."""
    if autoescape:
        # HTML output is escaped by Jinja itself; the guard is for nginx and shell files.
        return value
    if isinstance(value, Trusted):
        return value
    if value is None or isinstance(value, bool):
        raise UnsafeValueError(f"refusing to render {value!r} into a host file: a template value is missing")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (str, Path)):
        return check_safe(str(value))
    raise UnsafeValueError(f"refusing to render a {type(value).__name__} into a host file: expected text")


def _shell_quote(value: object) -> Trusted:
    """Jinja filter `shq`: quote a value for a POSIX shell (the result is safe by construction)."""
    if value is None or isinstance(value, bool):
        raise UnsafeValueError(f"refusing to shell-quote {value!r}: a template value is missing")
    text = str(value)
    if "\0" in text:
        raise UnsafeValueError("refusing to shell-quote a value containing a NUL byte")
    return Trusted(shlex.quote(text))


def _to_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if value is None or isinstance(value, bool):
        raise UnsafeValueError(f"refusing to encode {value!r}: a template value is missing")
    return str(value).encode("utf-8", errors="surrogateescape")


def _base64_filter(value: object) -> Trusted:
    """Jinja filter `b64`: a value as one base64 word (only [A-Za-z0-9+/=], safe anywhere)."""
    return Trusted(base64.b64encode(_to_bytes(value)).decode("ascii"))


def _base64_lines_filter(value: object) -> Trusted:
    """Jinja filter `b64lines`: base64 in 76-column lines, for a here-document of any size."""
    return Trusted(base64.encodebytes(_to_bytes(value)).decode("ascii"))


def _trusted_filter(value: object) -> Trusted:
    """Jinja filter `trusted`: render a value verbatim (only for text built by certfab itself)."""
    return Trusted(str(value))


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    """Compiled templates kept between runs, so a command does not compile the same scripts again.

    Jinja's per-user directory in the temp dir (created 0700, refused unless it is the user's own). An
    entry holds only while both its template and this module (the environment's options) are unchanged;
    None where no safe directory for it exists.
    """
    import jinja2

    module_digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()

    class CompiledTemplates(jinja2.FileSystemBytecodeCache):
        def get_source_checksum(self, source: str) -> str:
            return hashlib.sha256(f"{module_digest}\0{source}".encode("utf-8", "surrogateescape")).hexdigest()

    try:
        return CompiledTemplates(pattern="certfab-%s.cache")
    except (OSError, RuntimeError):
        return None


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """Return the one Jinja2 environment for every template in TEMPLATES_DIR (host files and the HTML report).

    Files named *.html.j2 are autoescaped; every other template gets the unsafe-value guard.
    """
    import jinja2

    @jinja2.pass_eval_context
    def finalize(eval_ctx: jinja2.nodes.EvalContext, value: object) -> object:
        return _finalize(eval_ctx.autoescape, value)

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html", "htm", "xml", "html.j2", "htm.j2", "xml.j2"),
            disabled_extensions=("conf", "sh", "conf.j2", "sh.j2", "j2"),
            default_for_string=False,
            default=False,
        ),
        finalize=finalize,
        bytecode_cache=_bytecode_cache(),
    )
    env.filters["shq"] = _shell_quote
    env.filters["trusted"] = _trusted_filter
    env.filters["b64"] = _base64_filter
    env.filters["b64lines"] = _base64_lines_filter
    return env


def render(name: str, **ctx: object) -> str:
    """Render templates/<name> with ctx; raises UnsafeValueError on an unsafe value."""
    return environment().get_template(name).render(**ctx)
