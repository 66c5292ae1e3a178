"""Which files nginx loads: the include tree, resolved from file contents certfab already holds.

certfab reads the main configuration file first, then, round by round, exactly the files that the
`include` directives of files already read name (patterns expanded on the host like glob(3)). No
comment, file name or command output can add a file to that list: only a directive nginx obeys can.
Pure: the reading itself is facts.read_nginx_files.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from certfab.nginx.lexer import Statement

# Where private keys live: never read, whatever a configuration says (checked again on the host).
DENIED_PREFIXES = ("/etc/letsencrypt", "/etc/ssl/private")
# Directives that name private keys; their files are never read.
KEY_DIRECTIVES = frozenset({"ssl_certificate_key", "proxy_ssl_certificate_key", "grpc_ssl_certificate_key",
                            "uwsgi_ssl_certificate_key", "ssl_password_file", "proxy_ssl_password_file",
                            "ssl_session_ticket_key", "ssl_stapling_file"})


def denied(path: str) -> bool:
    """Whether a path lies where private keys live."""
    norm = posixpath.normpath(path)
    return any(norm == prefix or norm.startswith(prefix + "/") for prefix in DENIED_PREFIXES)


def resolve(conf_prefix: str, path: str) -> str:
    """An include or key argument as the absolute path nginx opens: relative to the main file's directory."""
    if not path.startswith("/"):
        path = posixpath.join(conf_prefix, path)
    return posixpath.normpath(path)


@dataclass(frozen=True)
class IncludeScan:
    """What the files read so far ask for next."""

    patterns: tuple[str, ...]  # absolute include patterns not yet expanded on the host
    key_paths: tuple[str, ...]  # every private key path the files read so far name
    key_dirs: tuple[str, ...]  # directories of key paths built from variables: all of it counts as keys
    unparsable: tuple[str, ...]  # files that do not parse (their includes are unknown)


@lru_cache(maxsize=256)
def _parsed(text: str, path: str) -> list[Statement]:
    # The parser (and crossplane) load only when a configuration is read, not on the no-change path.
    from certfab.nginx.lexer import parse_text

    return parse_text(text, path)


def scan(files: Mapping[str, str], main: str, conf_prefix: str, expanded: Mapping[str, tuple[str, ...]]) -> IncludeScan:
    """Walk the include tree from `main` through the files read; list what to read next."""
    from certfab.nginx.lexer import walk_statements
    from certfab.nginx.model import NginxConfError

    pending: list[str] = []
    keys: list[str] = []
    key_dirs: list[str] = []
    broken: list[str] = []
    visited: set[str] = set()

    def visit(path: str) -> None:
        if path in visited or path not in files:
            return
        visited.add(path)
        try:
            stmts = _parsed(files[path], path)
        except NginxConfError:
            broken.append(path)
            return
        for st in walk_statements(stmts):
            if st.is_comment or not st.args:
                continue
            arg = st.args[0].value
            if st.directive in KEY_DIRECTIVES:
                if arg.startswith(("data:", "engine:")):
                    continue
                if "$" in arg:
                    # A variable in the path: everything under its fixed directory counts as a key.
                    key_dirs.append(posixpath.dirname(resolve(conf_prefix, arg.split("$", 1)[0] + "x")))
                else:
                    keys.append(resolve(conf_prefix, arg))
            elif st.directive == "include" and st.children is None:
                pattern = resolve(conf_prefix, arg)
                if pattern in expanded:
                    for match in expanded[pattern]:
                        visit(match)
                elif pattern not in pending:
                    pending.append(pattern)

    visit(main)
    return IncludeScan(tuple(pending), tuple(dict.fromkeys(keys)), tuple(dict.fromkeys(key_dirs)), tuple(broken))


def is_key_file(path: str, scan_result: IncludeScan) -> bool:
    """Whether a path (as named or resolved) is one the configuration names as a private key."""
    norm = posixpath.normpath(path)
    return (denied(norm) or norm in scan_result.key_paths
            or any(norm.startswith(d.rstrip("/") + "/") for d in scan_result.key_dirs))
