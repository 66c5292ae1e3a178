"""The model of a host's nginx configuration: listens, server blocks, trees, findings, path rules."""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from certfab.errors import CertfabError


class NginxConfError(CertfabError):
    """The nginx configuration cannot be parsed or cannot be edited safely."""


HTTP_CTX: tuple[str, ...] = ("http",)
SERVER_CTX: tuple[str, ...] = ("http", "server")

REDIRECT_BEGIN = "certfab redirect begin:"
REDIRECT_END = "certfab redirect end:"
MARKER_RE = re.compile(r"#\s*certfab redirect begin:\s*(\S+)\s*$")

# Directives the https include provides; having them in the block too would clash.
TLS_DIRECTIVES = frozenset(
    {
        "ssl",
        "ssl_certificate",
        "ssl_certificate_key",
        "ssl_protocols",
        "ssl_ciphers",
        "ssl_prefer_server_ciphers",
        "ssl_session_cache",
        "ssl_session_timeout",
        "ssl_session_tickets",
        "ssl_ecdh_curve",
        "ssl_dhparam",
        "ssl_stapling",
        "ssl_stapling_verify",
        "ssl_trusted_certificate",
        "http2",
    }
)
# listen parameters nginx accepts only once per address:port across all server blocks.
_SOCKET_OPTIONS = (
    "bind",
    "ipv6only=",
    "reuseport",
    "backlog=",
    "rcvbuf=",
    "sndbuf=",
    "deferred",
    "fastopen=",
    "accept_filter=",
    "setfib=",
    "so_keepalive=",
)
# --------------------------------------------------------------------------- public model


@dataclass(frozen=True)
class Listen:
    """One `listen` directive of a server block (or the implicit `listen 80`)."""

    raw: str
    address: str | None
    port: int
    ssl: bool
    http2: bool
    default_server: bool
    ipv6: bool
    line: int
    file: str = ""
    implicit: bool = False
    options: tuple[str, ...] = ()

    @property
    def address_key(self) -> tuple[str, str]:
        """The address as nginx compares it: family plus host, wildcards unified."""
        if self.ipv6:
            return ("v6", (self.address or "[::]").lower())
        if self.address is None or self.address == "0.0.0.0":
            return ("v4", "*")
        return ("v4", self.address.lower())

    @property
    def socket_options(self) -> tuple[str, ...]:
        """The parameters nginx allows on only one listen per address:port."""
        return tuple(o for o in self.options if is_socket_option(o))


@dataclass(frozen=True)
class TlsDirective:
    """A TLS directive found at server level, with where it was written."""

    name: str
    file: str
    line: int


@dataclass(frozen=True)
class ServerBlock:
    """An http `server { }` block with what certfab needs to know about it."""

    file: str
    line: int
    server_names: tuple[str, ...]
    listens: tuple[Listen, ...]
    includes: tuple[str, ...]
    is_certfab_redirect: bool = False
    redirect_site: str | None = None
    tls_directives: tuple[TlsDirective, ...] = ()
    prefix: str = "/etc/nginx"  # the main file's directory: relative include paths resolve against it

    def has_include(self, path: str) -> bool:
        """Whether the block includes `path` at server level (relative paths resolved)."""
        target = resolve_path(self.prefix, path)
        for inc in self.includes:
            pattern = resolve_path(self.prefix, inc)
            if pattern == target or (has_magic(pattern) and glob_match(pattern, target)):
                return True
        return False

    def listens_on(self, port: int) -> bool:
        """Whether some listen of the block is on `port`."""
        return any(lst.port == port for lst in self.listens)

    @property
    def serves_https(self) -> bool:
        """Whether some listen of the block speaks TLS."""
        return any(lst.ssl for lst in self.listens)

    @property
    def serves_http(self) -> bool:
        """Whether some listen of the block speaks plain HTTP."""
        return any(not lst.ssl and not lst.address_key[1].startswith("unix:") for lst in self.listens)

    @property
    def where(self) -> str:
        """`file:line` of the block, for messages."""
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class NginxTree:
    """A parsed configuration: files, the contexts they are included in, and http server blocks."""

    main: str
    prefix: str  # the main file's directory: relative include paths resolve against it
    files: Mapping[str, str] = field(compare=False, repr=False)
    contexts: Mapping[str, tuple[tuple[str, ...], ...]] = field(compare=False, repr=False)
    server_blocks: tuple[ServerBlock, ...] = ()
    unmatched_includes: tuple[tuple[str, int, str], ...] = ()


@dataclass(frozen=True)
class HostMatch:
    """Which server block nginx picks for a Host header, and by which rule."""

    block: ServerBlock
    how: Literal["exact", "wildcard_head", "wildcard_tail", "regex", "default_server", "first"]

    @property
    def by_name(self) -> bool:
        """Whether a server_name matched (not merely the default server of the port)."""
        return self.how not in ("default_server", "first")


ProblemKind = Literal[
    "missing",
    "default-only",
    "duplicate-name",
    "split-site",
    "shared-block",
    "foreign-https",
    "foreign-names",
    "plain-port",
]


@dataclass(frozen=True)
class SiteProblem:
    """A preflight finding about a site's domains and the server blocks serving them."""

    site: str
    kind: ProblemKind
    severity: Literal["error", "warning"]
    message: str
    domain: str | None = None
    # shared-block: every site naming the block, and the block's file:line
    sites: tuple[str, ...] = ()
    where: str = ""


def redirect_marker(site: str) -> tuple[str, str]:
    """The begin/end comment lines that frame certfab's redirect block for `site`."""
    return (f"# {REDIRECT_BEGIN} {site}", f"# {REDIRECT_END} {site}")



def has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def resolve_path(prefix: str, path: str) -> str:
    """An include argument as the absolute path nginx opens: relative to `prefix`, the main file's directory."""
    if not path.startswith("/"):
        path = posixpath.join(prefix, path)
    return posixpath.normpath(path)


def glob_match(pattern: str, path: str) -> bool:
    """Whether glob(3) would list `path` for `pattern`: `*` stays within a path segment."""
    pparts, sparts = pattern.split("/"), path.split("/")
    if len(pparts) != len(sparts):
        return False
    for pat, seg in zip(pparts, sparts):
        if pat == seg:
            continue
        if seg.startswith(".") and not pat.startswith("."):
            return False  # glob(3) hides dotfiles from wildcards
        if not fnmatch.fnmatchcase(seg, pat):
            return False
    return True



def is_socket_option(opt: str) -> bool:
    return any(opt == o or (o.endswith("=") and opt.startswith(o)) for o in _SOCKET_OPTIONS)

