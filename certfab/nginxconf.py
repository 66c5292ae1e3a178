"""Pure analysis of a host's nginx configuration and minimal, byte-preserving text edits to it.

The configuration arrives as text (what `nginx -T` printed, split per file). crossplane is the
parser of record: every file is validated by `crossplane.parse` and its token stream by
`crossplane.lex`. A small lexer that mirrors crossplane's rules exactly, but also records byte
offsets, is checked token for token against crossplane's output; edits are made only at those
offsets, so everything outside the inserted or changed spans stays byte-identical.

Editing model: every edit function takes the current text of `block.file` and a `ServerBlock`
from a `parse_tree` of that same text, and returns the new text. Parse again after each edit
before making the next one (line numbers move); an edit refuses to guess when the block is no
longer where the tree said it was.

`convert_to_https` decisions, by what the block listens on (only listens written in the block
itself can be edited; a port-80 listen that comes from an included file is refused):

- only port 80 (or no listen at all, which nginx treats as `*:80`): every port-80 listen becomes
  the same address on 443 with `ssl` (and `http2` when asked), other flags kept; the https
  include is added; a marked redirect server block takes over the original port-80 listens.
- port 80 and already 443 on some addresses (a block someone made to serve both): the 443
  listens are kept (gaining `ssl`/`http2` if missing), a port-80 listen whose address already
  has a 443 listen is commented out (it moves to the redirect block), the others become 443 as
  above; the https include and the redirect block are added.
- already 443 but no port 80: only the https include is added (plus `ssl` where missing); no
  redirect block, since no port-80 listen is moved.
- neither 80 nor 443: refused.
- refused as well when the block (or a file it includes) already sets TLS directives that the
  https include provides (`ssl_certificate`, `ssl_protocols`, `ssl on`, ...): nginx would reject
  the duplicates or silently serve the wrong certificate, so the operator must remove them.
- with `tree=` given, `default_server` and socket options (`reuseport`, `ipv6only=`,
  `backlog=`, ...) are dropped from a new 443 listen when another server block already sets them
  on the same address:443, where nginx would reject the duplicate.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
import posixpath
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal

import crossplane

from certfab.errors import CertfabError

__all__ = [
    "HostMatch",
    "Listen",
    "NginxConfError",
    "NginxTree",
    "ServerBlock",
    "SiteProblem",
    "TlsDirective",
    "add_include",
    "block_for_host",
    "check_sites",
    "convert_to_https",
    "match_host",
    "parse_tree",
    "redirect_marker",
    "set_redirect_names",
]


class NginxConfError(CertfabError):
    """The nginx configuration cannot be parsed or cannot be edited safely."""


HTTP_CTX: tuple[str, ...] = ("http",)
SERVER_CTX: tuple[str, ...] = ("http", "server")

REDIRECT_BEGIN = "certfab redirect begin:"
REDIRECT_END = "certfab redirect end:"
_MARKER_RE = re.compile(r"#\s*certfab redirect begin:\s*(\S+)\s*$")
_SITE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

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
_LUA_BLOCKS = frozenset(
    {
        "access_by_lua_block",
        "balancer_by_lua_block",
        "body_filter_by_lua_block",
        "content_by_lua_block",
        "header_filter_by_lua_block",
        "init_by_lua_block",
        "init_worker_by_lua_block",
        "log_by_lua_block",
        "rewrite_by_lua_block",
        "set_by_lua_block",
        "ssl_certificate_by_lua_block",
        "ssl_session_fetch_by_lua_block",
        "ssl_session_store_by_lua_block",
    }
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
        return tuple(o for o in self.options if _is_socket_option(o))


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
    prefix: str = "/etc/nginx"

    def has_include(self, path: str) -> bool:
        """Whether the block includes `path` at server level (relative paths resolved)."""
        target = _resolve(self.prefix, path)
        for inc in self.includes:
            pattern = _resolve(self.prefix, inc)
            if pattern == target or (_has_magic(pattern) and _glob_match(pattern, target)):
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
    prefix: str
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


@dataclass(frozen=True)
class SiteProblem:
    """A preflight finding about a site's domains and the server blocks serving them."""

    site: str
    kind: Literal["missing", "shared-block", "default-only", "duplicate-name", "split-site"]
    severity: Literal["error", "warning"]
    message: str
    domain: str | None = None


def redirect_marker(site: str) -> tuple[str, str]:
    """The begin/end comment lines that frame certfab's redirect block for `site`."""
    return (f"# {REDIRECT_BEGIN} {site}", f"# {REDIRECT_END} {site}")


# --------------------------------------------------------------------------- lexing


@dataclass(frozen=True)
class _Tok:
    value: str
    line: int
    quoted: bool
    start: int
    end: int

    @property
    def is_comment(self) -> bool:
        return not self.quoted and self.value.startswith("#")

    def is_(self, char: str) -> bool:
        return not self.quoted and self.value == char


_Unit = tuple[str, int, int, int]  # (char as crossplane sees it, line, start offset, end offset)


class _Units:
    """crossplane's character stream (universal newlines, escape pairs, line count) with offsets."""

    def __init__(self, text: str) -> None:
        self._it = self._gen(text)
        self._back: list[_Unit] = []

    @staticmethod
    def _raw(text: str) -> Iterator[tuple[str, int, int]]:
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            if ch == "\r":
                # the file is read in text mode: \r\n and a lone \r both become \n
                if i + 1 < n and text[i + 1] == "\n":
                    yield ("\n", i, i + 2)
                    i += 2
                    continue
                yield ("\n", i, i + 1)
            else:
                yield (ch, i, i + 1)
            i += 1

    def _gen(self, text: str) -> Iterator[_Unit]:
        line = 1
        raw = self._raw(text)
        for ch, start, end in raw:
            if ch == "\\":
                nxt = next(raw, None)
                if nxt is None:
                    return  # crossplane drops a trailing lone backslash
                ch, end = ch + nxt[0], nxt[2]
            if ch.endswith("\n"):
                line += 1
            yield (ch, line, start, end)

    def __iter__(self) -> _Units:
        return self

    def __next__(self) -> _Unit:
        if self._back:
            return self._back.pop()
        return next(self._it)

    def put_back(self, unit: _Unit) -> None:
        self._back.append(unit)


class _EOF(Exception):
    """End of input inside a construct (crossplane silently stops there too)."""


def _next(units: _Units) -> _Unit:
    try:
        return next(units)
    except StopIteration:
        raise _EOF from None


def _lex(text: str) -> list[_Tok]:
    """Tokens exactly as crossplane.lex yields them, plus their byte spans in `text`."""
    out: list[_Tok] = []
    try:
        out.extend(_lex_units(_Units(text)))
    except _EOF:
        pass
    return out


def _lex_units(units: _Units) -> Iterator[_Tok]:
    # Mirrors crossplane.lexer._lex_file_object statement by statement.
    token = ""
    token_line = 0
    token_start = 0
    last_end = 0
    next_is_directive = True
    for char, line, s, e in units:
        if char.isspace():
            if token:
                yield _Tok(token, token_line, False, token_start, last_end)
                if next_is_directive and token in _LUA_BLOCKS:
                    yield from _lex_lua(units, token)
                    next_is_directive = True
                else:
                    next_is_directive = False
                token = ""
            while char.isspace():
                char, line, s, e = _next(units)

        if not token and char == "#":
            start = s
            while not char.endswith("\n"):
                token += char
                last_end = e
                char, _, s, e = _next(units)
            yield _Tok(token, line, False, start, last_end)
            token = ""
            continue

        if not token:
            token_line = line
            token_start = s

        if token and token[-1] == "$" and char == "{":
            next_is_directive = False
            while token[-1] != "}" and not char.isspace():
                token += char
                last_end = e
                char, line, s, e = _next(units)

        if char in ('"', "'"):
            if token:
                token += char
                last_end = e
                continue
            quote = char
            char, line, s, e = _next(units)
            while char != quote:
                token += quote if char == "\\" + quote else char
                char, line, s, e = _next(units)
            yield _Tok(token, token_line, True, token_start, e)
            next_is_directive = False
            token = ""
            continue

        if char in ("{", "}", ";"):
            if token:
                yield _Tok(token, token_line, False, token_start, last_end)
                token = ""
            yield _Tok(char, line, False, s, e)
            next_is_directive = True
            continue

        token += char
        last_end = e


def _lex_lua(units: _Units, directive: str) -> Iterator[_Tok]:
    # Mirrors crossplane.ext.lua.LuaBlockPlugin.lex: the whole block becomes one quoted token.
    if directive == "set_by_lua_block":
        arg = ""
        arg_start = arg_end = 0
        for char, line, s, e in units:
            if char.isspace():
                if arg:
                    yield _Tok(arg, line, False, arg_start, arg_end)
                    break
                while char.isspace():
                    char, line, s, e = _next(units)
            if not arg:
                arg_start = s
            arg += char
            arg_end = e
    while True:
        char, line, s, e = _next(units)
        if not char.isspace():
            break
    if char != "{":
        raise NginxConfError(f"line {line}: expected {{ to start Lua block")
    body_start = s
    depth = 1
    token = ""
    for char, line, s, e in units:
        if char == "-":
            prev = (char, line, s, e)
            char, cline, cs, ce = _next(units)
            if char == "-":
                token += "-"
                while char != "\n":
                    token += char
                    char, line, s, e = _next(units)
            else:
                units.put_back((char, cline, cs, ce))
                char, line, s, e = prev
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char in ('"', "'"):
            quote = char
            token += quote
            char, line, s, e = _next(units)
            while char != quote:
                token += char
                char, line, s, e = _next(units)
        if depth < 0:
            raise NginxConfError(f'line {line}: unexpected "}}" in Lua block')
        if depth == 0:
            yield _Tok(token, line, True, body_start, e)
            yield _Tok(";", line, False, e, e)
            return
        token += char


# --------------------------------------------------------------------------- statements


@dataclass
class _Stmt:
    name: _Tok
    args: list[_Tok]
    term: _Tok | None  # ';' or '{'; None for a comment
    children: list[_Stmt] | None = None
    close: _Tok | None = None

    @property
    def is_comment(self) -> bool:
        return self.term is None

    @property
    def directive(self) -> str:
        return self.name.value

    @property
    def end(self) -> int:
        """Offset just after the statement (its `;` or closing `}`)."""
        if self.close is not None:
            return self.close.end
        if self.term is not None:
            return self.term.end
        return self.name.end


def _build(tokens: Sequence[_Tok], path: str) -> list[_Stmt]:
    """Nest tokens into statements the way crossplane's parser does."""
    it = iter(tokens)

    def fail(tok: _Tok | None, why: str) -> NginxConfError:
        where = f"{path}:{tok.line}" if tok is not None else path
        return NginxConfError(f"{where}: {why}")

    def block(opener: _Tok | None) -> tuple[list[_Stmt], _Tok | None]:
        out: list[_Stmt] = []
        for tok in it:
            if tok.is_("}"):
                if opener is None:
                    raise fail(tok, 'unexpected "}"')
                return out, tok
            if tok.is_comment:
                out.append(_Stmt(tok, [], None))
                continue
            if tok.is_("{") or tok.is_(";"):
                raise fail(tok, f'unexpected "{tok.value}"')
            args: list[_Tok] = []
            term = next(it, None)
            while term is not None and (term.quoted or term.value not in ("{", ";", "}")):
                if not term.is_comment:
                    args.append(term)
                term = next(it, None)
            if term is None:
                raise fail(tok, "unexpected end of file")
            if term.is_("}"):
                raise fail(term, 'unexpected "}"')
            if term.is_("{"):
                children, close = block(term)
                out.append(_Stmt(tok, args, term, children, close))
            else:
                out.append(_Stmt(tok, args, term))
        if opener is not None:
            raise fail(opener, 'unexpected end of file, expecting "}"')
        return out, None

    return block(None)[0]


def _walk_stmts(stmts: Sequence[_Stmt]) -> Iterator[_Stmt]:
    for st in stmts:
        yield st
        if st.children is not None:
            yield from _walk_stmts(st.children)


def _crossplane_check(text: str, path: str, tmpdir: str) -> list[_Tok]:
    """Validate `text` with crossplane and return its tokens with offsets."""
    tmp = os.path.join(tmpdir, "nginx.conf")
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as fh:
        fh.write(text)
    payload = crossplane.parse(
        tmp, single=True, comments=True, check_ctx=False, check_args=False, catch_errors=True
    )
    for err in payload.get("errors", []):
        line = err.get("line")
        msg = str(err.get("error", "syntax error"))
        msg = re.sub(r" in " + re.escape(tmp) + r"(:\d+)?$", "", msg)
        where = f"{path}:{line}" if line else path
        raise NginxConfError(f"{where}: {msg}")
    ours = _lex(text)
    theirs = [(str(t), int(n), bool(q)) for t, n, q in crossplane.lex(tmp)]
    mine = [(t.value, t.line, t.quoted) for t in ours]
    if mine != theirs:
        bad = next(
            (a for a, b in zip(mine, theirs) if a != b),
            mine[len(theirs)] if len(mine) > len(theirs) else None,
        )
        line = bad[1] if bad else 0
        raise NginxConfError(
            f"{path}:{line}: cannot map this file's text to nginx tokens exactly; "
            "certfab will not edit it (unusual escaping or line endings?)"
        )
    return ours


def _parse_text(text: str, path: str) -> list[_Stmt]:
    """Validate and parse one file's text into statements."""
    with tempfile.TemporaryDirectory(prefix="certfab-nginx-") as tmpdir:
        tokens = _crossplane_check(text, path, tmpdir)
    return _build(tokens, path)


# --------------------------------------------------------------------------- tree building


def _has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _resolve(prefix: str, path: str) -> str:
    """An include argument as the absolute path nginx opens (relative to the conf prefix)."""
    if not path.startswith("/"):
        path = posixpath.join(prefix, path)
    return posixpath.normpath(path)


def _glob_match(pattern: str, path: str) -> bool:
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


def _split_address(arg: str) -> tuple[str | None, int, bool]:
    """(address or None, port, ipv6) from a listen directive's first argument."""
    if arg.startswith("unix:"):
        return arg, 0, False
    if arg.startswith("["):
        close = arg.find("]")
        if close < 0:
            raise ValueError(arg)
        host, rest = arg[: close + 1], arg[close + 1 :]
        if not rest:
            return host, 80, True
        if not rest.startswith(":") or not rest[1:].isdigit():
            raise ValueError(arg)
        return host, int(rest[1:]), True
    if arg.isdigit():
        return None, int(arg), False
    if ":" in arg:
        host, port = arg.rsplit(":", 1)
        if not port.isdigit():
            raise ValueError(arg)
        return (None if host == "*" else host), int(port), False
    return (None if arg == "*" else arg), 80, False


def _is_socket_option(opt: str) -> bool:
    return any(opt == o or (o.endswith("=") and opt.startswith(o)) for o in _SOCKET_OPTIONS)


def _make_listen(args: Sequence[str], path: str, line: int, ssl_on: bool = False) -> Listen:
    if not args:
        raise NginxConfError(f'{path}:{line}: "listen" needs an address or port')
    try:
        address, port, ipv6 = _split_address(args[0])
    except ValueError:
        raise NginxConfError(f"{path}:{line}: cannot read listen address {args[0]!r}") from None
    flags = tuple(args[1:])
    return Listen(
        raw=" ".join(args),
        address=address,
        port=port,
        ssl="ssl" in flags or ssl_on,
        http2="http2" in flags,
        default_server="default_server" in flags or "default" in flags,
        ipv6=ipv6,
        line=line,
        file=path,
        options=flags,
    )


def _marker_site(stmts: Sequence[_Stmt], index: int) -> str | None:
    """The site named by a redirect-begin marker right before statement `index`, if any."""
    if index > 0 and stmts[index - 1].is_comment:
        m = _MARKER_RE.match(stmts[index - 1].name.value)
        if m:
            return m.group(1)
    return None


@dataclass
class _ServerAcc:
    file: str
    line: int
    site: str | None
    names: list[str] = field(default_factory=list)
    listens: list[Listen] = field(default_factory=list)
    includes: list[str] = field(default_factory=list)
    tls: list[TlsDirective] = field(default_factory=list)
    ssl_on: bool = False

    def freeze(self, prefix: str) -> ServerBlock:
        listens = [replace(lst, ssl=True) if self.ssl_on else lst for lst in self.listens]
        if not listens:
            listens = [Listen("80", None, 80, self.ssl_on, False, False, False, self.line, self.file, True)]
        return ServerBlock(
            file=self.file,
            line=self.line,
            server_names=tuple(self.names),
            listens=tuple(listens),
            includes=tuple(self.includes),
            is_certfab_redirect=self.site is not None,
            redirect_site=self.site,
            tls_directives=tuple(self.tls),
            prefix=prefix,
        )


class _TreeBuilder:
    def __init__(self, files: Mapping[str, str], prefix: str) -> None:
        self.files = files
        self.prefix = prefix
        self.norm = {posixpath.normpath(p): p for p in files}
        self.parsed: dict[str, list[_Stmt]] = {}
        self.contexts: dict[str, list[tuple[str, ...]]] = {}
        self.blocks: list[ServerBlock] = []
        self.seen: set[tuple[str, int]] = set()
        self.unmatched: list[tuple[str, int, str]] = []

    def stmts(self, path: str) -> list[_Stmt]:
        if path not in self.parsed:
            self.parsed[path] = _parse_text(self.files[path], path)
        return self.parsed[path]

    def include(self, arg: str, path: str, line: int) -> list[str]:
        pattern = _resolve(self.prefix, arg)
        if _has_magic(pattern):
            found = sorted(p for p in self.norm if _glob_match(pattern, p))
        else:
            found = [pattern] if pattern in self.norm else []
        if not found:
            self.unmatched.append((path, line, arg))
        return [self.norm[p] for p in found]

    def visit(self, path: str, ctx: tuple[str, ...], stack: tuple[str, ...]) -> None:
        seen = self.contexts.setdefault(path, [])
        if ctx not in seen:
            seen.append(ctx)
        self.walk(path, self.stmts(path), ctx, None, stack + (path,))

    def walk(
        self,
        path: str,
        stmts: Sequence[_Stmt],
        ctx: tuple[str, ...],
        server: _ServerAcc | None,
        stack: tuple[str, ...],
    ) -> None:
        at_server = server is not None and ctx == SERVER_CTX
        for index, st in enumerate(stmts):
            if st.is_comment:
                continue
            name = st.directive
            args = [a.value for a in st.args]
            line = st.name.line
            if name == "include" and st.children is None and args:
                if at_server and server is not None:
                    server.includes.append(args[0])
                for inc in self.include(args[0], path, line):
                    if inc in stack:
                        continue  # an include loop; nginx would fail on it anyway
                    seen = self.contexts.setdefault(inc, [])
                    if ctx not in seen:
                        seen.append(ctx)
                    self.walk(inc, self.stmts(inc), ctx, server, stack + (inc,))
                continue
            if st.children is not None:
                if name == "server" and ctx == HTTP_CTX:
                    acc = _ServerAcc(path, line, _marker_site(stmts, index))
                    self.walk(path, st.children, SERVER_CTX, acc, stack)
                    if (path, line) not in self.seen:
                        self.seen.add((path, line))
                        self.blocks.append(acc.freeze(self.prefix))
                else:
                    self.walk(path, st.children, ctx + (name,), server, stack)
                continue
            if not at_server or server is None:
                continue
            if name == "listen":
                server.listens.append(_make_listen(args, path, line))
            elif name == "server_name":
                server.names.extend(args)
            elif name in TLS_DIRECTIVES:
                server.tls.append(TlsDirective(name, path, line))
                if name == "ssl" and args and args[0].lower() == "on":
                    server.ssl_on = True


def parse_tree(files: Mapping[str, str], main: str, prefix: str = "/etc/nginx") -> NginxTree:
    """Parse the files nginx -T reported, following includes from `main`.

    Raises NginxConfError naming file:line when a reachable file does not parse.
    """
    builder = _TreeBuilder(files, prefix)
    main_key = builder.norm.get(posixpath.normpath(main))
    if main_key is None:
        raise NginxConfError(f"{main}: the main nginx configuration file is not among the files read")
    builder.visit(main_key, (), ())
    return NginxTree(
        main=main_key,
        prefix=prefix,
        files=MappingProxyType(dict(files)),
        contexts=MappingProxyType({k: tuple(v) for k, v in builder.contexts.items()}),
        server_blocks=tuple(builder.blocks),
        unmatched_includes=tuple(builder.unmatched),
    )


# --------------------------------------------------------------------------- host matching


def _pcre_to_python(regex: str) -> str:
    # PCRE's named groups (?<name>...) and (?'name'...) are spelled (?P<name>...) in Python.
    regex = re.sub(r"\(\?<(?![=!])", "(?P<", regex)
    return re.sub(r"\(\?'([A-Za-z_]\w*)'", r"(?P<\1>", regex)


def _name_rank(server_name: str, host: str) -> tuple[int, int] | None:
    """(phase, length) when `server_name` matches `host`; lower phase wins, then longer length."""
    name = server_name.lower()
    if name.startswith("~"):
        try:
            return (3, 0) if re.search(_pcre_to_python(server_name[1:]), host, re.IGNORECASE) else None
        except re.error:
            return None
    if name == host:
        return (0, len(name))
    if name.startswith("*."):
        suffix = name[1:]
        return (1, len(suffix)) if host.endswith(suffix) and len(host) > len(suffix) else None
    if name.startswith("."):
        return (1, len(name)) if host.endswith(name) or host == name[1:] else None
    if name.endswith(".*"):
        head = name[:-1]
        return (2, len(head)) if host.startswith(head) and len(host) > len(head) else None
    return None


def _candidates(tree: NginxTree, port: int, address: str | None) -> list[ServerBlock]:
    on_port = [b for b in tree.server_blocks if b.listens_on(port)]
    if address is None:
        return on_port
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"  # a bare IPv6 address
    probe = _make_listen([f"{address}:{port}"], "", 0)
    exact = [
        b for b in on_port if any(l.port == port and l.address_key == probe.address_key for l in b.listens)
    ]
    if exact:
        return exact
    wildcard = ("v6", "[::]") if probe.ipv6 else ("v4", "*")
    return [b for b in on_port if any(l.port == port and l.address_key == wildcard for l in b.listens)]


def match_host(tree: NginxTree, name: str, port: int = 80, address: str | None = None) -> HostMatch | None:
    """Which server block nginx picks for Host `name` on `port`, following server_name precedence.

    Without `address`, every block listening on the port competes (the usual one-address host);
    with it, blocks listening on that exact address win over wildcard ones, as in nginx.
    """
    blocks = _candidates(tree, port, address)
    if not blocks:
        return None
    host = name.lower().rstrip(".")
    hows: tuple[Literal["exact", "wildcard_head", "wildcard_tail", "regex"], ...] = (
        "exact",
        "wildcard_head",
        "wildcard_tail",
        "regex",
    )
    best: tuple[int, int, int] | None = None  # (phase, -length, order)
    for order, block in enumerate(blocks):
        for server_name in block.server_names:
            rank = _name_rank(server_name, host)
            if rank is not None and (best is None or (rank[0], -rank[1], order) < best):
                best = (rank[0], -rank[1], order)
    if best is not None:
        return HostMatch(blocks[best[2]], hows[best[0]])
    for block in blocks:
        if any(l.port == port and l.default_server for l in block.listens):
            return HostMatch(block, "default_server")
    return HostMatch(blocks[0], "first")


def block_for_host(tree: NginxTree, name: str, port: int = 80) -> ServerBlock | None:
    """The server block nginx would pick for Host `name` on `port`, or None if nothing listens."""
    match = match_host(tree, name, port)
    return match.block if match else None


def check_sites(tree: NginxTree, sites: Mapping[str, tuple[str, ...]]) -> list[SiteProblem]:
    """Preflight: how each site's domains are served on port 80, and what stands in the way.

    `missing` (no port-80 server at all) is reported as an error; callers that create a server
    block for managed sites may treat it as expected.
    """
    problems: list[SiteProblem] = []
    users: dict[tuple[str, int], list[str]] = {}
    by_key = {(b.file, b.line): b for b in tree.server_blocks}
    for site, domains in sites.items():
        site_blocks: list[ServerBlock] = []
        for domain in domains:
            match = match_host(tree, domain, 80)
            if match is None:
                problems.append(
                    SiteProblem(
                        site, "missing", "error", f"{domain}: no server block listens on port 80", domain
                    )
                )
                continue
            block = match.block
            if not match.by_name:
                problems.append(
                    SiteProblem(
                        site,
                        "default-only",
                        "warning",
                        f"{domain}: served on port 80 only by the catch-all default server at "
                        f"{block.where}; add it to a server_name",
                        domain,
                    )
                )
            elif match.how == "exact":
                others = [
                    b
                    for b in tree.server_blocks
                    if b is not block
                    and b.listens_on(80)
                    and domain.lower() in map(str.lower, b.server_names)
                ]
                if others:
                    problems.append(
                        SiteProblem(
                            site,
                            "duplicate-name",
                            "warning",
                            f"{domain}: also named in {', '.join(b.where for b in others)}; nginx uses "
                            f"{block.where} and ignores the others",
                            domain,
                        )
                    )
            if block not in site_blocks:
                site_blocks.append(block)
            key = (block.file, block.line)
            if site not in users.setdefault(key, []):
                users[key].append(site)
        if len(site_blocks) > 1:
            problems.append(
                SiteProblem(
                    site,
                    "split-site",
                    "warning",
                    f"site {site}: its domains are served by {len(site_blocks)} server blocks "
                    f"({', '.join(b.where for b in site_blocks)}); each needs the certfab includes",
                )
            )
    for key, names in users.items():
        if len(names) > 1:
            where = by_key[key].where
            for site in names:
                problems.append(
                    SiteProblem(
                        site,
                        "shared-block",
                        "error",
                        f"sites {', '.join(names)} share the server block at {where}; "
                        "give each site its own server block",
                    )
                )
    return problems


# --------------------------------------------------------------------------- text editing


@dataclass(frozen=True)
class _Edit:
    start: int
    end: int
    text: str


def _apply(text: str, edits: Sequence[_Edit]) -> str:
    ordered = sorted(edits, key=lambda e: (e.start, e.end))
    for a, b in itertools.pairwise(ordered):
        if b.start < a.end:
            raise NginxConfError("internal error: overlapping edits")
    for edit in reversed(ordered):
        text = text[: edit.start] + edit.text + text[edit.end :]
    return text


def _line_start(text: str, pos: int) -> int:
    return text.rfind("\n", 0, pos) + 1


def _line_end(text: str, pos: int) -> int:
    """Offset of the line's newline sequence (\\r\\n or \\n), or len(text)."""
    eol = text.find("\n", pos)
    if eol < 0:
        return len(text)
    return eol - 1 if eol > 0 and text[eol - 1] == "\r" else eol


def _newline(text: str, pos: int) -> str:
    eol = text.find("\n", pos)
    if eol < 0:
        eol = text.rfind("\n")
    if eol < 0:
        return "\n"
    return "\r\n" if eol > 0 and text[eol - 1] == "\r" else "\n"


def _leading_ws(text: str, tok: _Tok) -> str | None:
    """The indentation of `tok`'s line when `tok` is the first thing on it, else None."""
    start = _line_start(text, tok.start)
    before = text[start : tok.start]
    return before if before.strip(" \t") == "" else None


def _file_unit(text: str) -> str:
    tabs = len(re.findall(r"(?m)^\t+\S", text))
    spaces = len(re.findall(r"(?m)^ +\S", text))
    return "\t" if tabs > spaces else "    "


def _indents(text: str, st: _Stmt) -> tuple[str, str]:
    """(indent of the server line, indent of its directives)."""
    outer = _leading_ws(text, st.name) or ""
    assert st.term is not None
    for child in st.children or []:
        if child.is_comment:
            continue
        inner = _leading_ws(text, child.name)
        if (
            inner is not None
            and child.name.line != st.term.line
            and inner.startswith(outer)
            and inner != outer
        ):
            return outer, inner
        break
    return outer, outer + _file_unit(text)


def _insert_after(text: str, pos: int, lines: Sequence[str], cont_indent: str) -> _Edit:
    """An edit putting `lines` on their own lines right after the token ending at `pos`."""
    nl = _newline(text, pos)
    eol = _line_end(text, pos)
    rest = text[pos:eol]
    if rest.strip(" \t") == "" or rest.lstrip(" \t").startswith("#"):
        if eol == len(text):
            return _Edit(eol, eol, nl + nl.join(lines))  # keeps "no newline at end of file"
        after = eol + len(nl)
        return _Edit(after, after, "".join(line + nl for line in lines))
    ws = len(rest) - len(rest.lstrip(" \t"))
    return _Edit(pos, pos + ws, nl + "".join(line + nl for line in lines) + cont_indent)


def _quote(value: str) -> str:
    if value and not re.search(r"[\s;{}#'\"\\]", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _locate(text: str, block: ServerBlock) -> tuple[list[_Stmt], _Stmt]:
    """The server statement of `block` in `text`, refusing to guess when it moved."""
    stmts = _parse_text(text, block.file)
    found = [
        st
        for st in _walk_stmts(stmts)
        if st.directive == "server"
        and not st.name.quoted
        and st.children is not None
        and st.name.line == block.line
    ]
    wanted = {n.lower() for n in block.server_names}
    found = [st for st in found if {n.lower() for n in _direct_names(st)} <= wanted]
    if len(found) != 1:
        raise NginxConfError(
            f"{block.where}: the server block is no longer there; read the configuration again before editing"
        )
    return stmts, found[0]


def _is_redirect_stmt(stmts: list[_Stmt], st: _Stmt) -> bool:
    """Whether `st` is preceded by a certfab redirect marker among its siblings."""
    for siblings in [stmts] + [p.children for p in _walk_stmts(stmts) if p.children is not None]:
        for index, sibling in enumerate(siblings):
            if sibling is st:
                return _marker_site(siblings, index) is not None
    return False


def _direct_names(st: _Stmt) -> list[str]:
    return [
        a.value
        for c in st.children or []
        if c.directive == "server_name" and not c.is_comment
        for a in c.args
    ]


def _direct_includes(st: _Stmt) -> list[str]:
    return [
        c.args[0].value for c in st.children or [] if c.directive == "include" and not c.is_comment and c.args
    ]


def _verify(text: str, path: str) -> str:
    _parse_text(text, path)  # an edit must never produce something crossplane rejects
    return text


def add_include(text: str, block: ServerBlock, include_path: str, comment: str = "managed by certfab") -> str:
    """Insert `include PATH;  # COMMENT` as the first line inside the block; unchanged if present.

    Raises NginxConfError when the text does not parse or the block is not where `block` says.
    """
    _, st = _locate(text, block)
    target = _resolve(block.prefix, include_path)
    if block.has_include(include_path) or any(
        _resolve(block.prefix, inc) == target for inc in _direct_includes(st)
    ):
        return text
    assert st.term is not None
    _, inner = _indents(text, st)
    line = f"{inner}include {_quote(include_path)};" + (f"  # {comment}" if comment else "")
    return _verify(_apply(text, [_insert_after(text, st.term.end, [line], inner)]), block.file)


def _listen_stmts(st: _Stmt, path: str) -> list[tuple[_Stmt, Listen]]:
    return [
        (c, _make_listen([a.value for a in c.args], path, c.name.line))
        for c in st.children or []
        if c.directive == "listen" and not c.is_comment
    ]


def _new_address(lst: Listen, port: int) -> str:
    if lst.address is None:
        return str(port)
    return f"{lst.address}:{port}"


def _alone_on_lines(text: str, st: _Stmt) -> bool:
    if _leading_ws(text, st.name) is None:
        return False
    rest = text[st.end : _line_end(text, st.end)].lstrip(" \t")
    return rest == "" or rest.startswith("#")


def _comment_out(text: str, st: _Stmt, note: str) -> list[_Edit]:
    """Edits turning a directive into a comment (or removing it when it shares its line)."""
    if not _alone_on_lines(text, st):
        end = st.end
        while end < len(text) and text[end] in " \t":
            end += 1
        return [_Edit(st.name.start, end, "")]
    edits = [_Edit(st.name.start, st.name.start, "# ")]
    newline = text.find("\n", st.name.start)
    while 0 <= newline < st.end:
        first = newline + 1
        while first < len(text) and text[first] in " \t":
            first += 1
        if first < st.end and text[first] not in "\r\n":
            edits.append(_Edit(first, first, "# "))
        newline = text.find("\n", newline + 1)
    if text[st.end : _line_end(text, st.end)].strip(" \t") == "":
        edits.append(_Edit(st.end, st.end, f"  # {note}"))
    return edits


def _rewrite_listen(
    text: str, st: _Stmt, lst: Listen, *, port: int | None, http2: bool, drop: Sequence[str]
) -> list[_Edit]:
    """Edits making a listen directive TLS (optionally moving it to `port`), keeping its other flags."""
    addr = st.args[0]
    edits: list[_Edit] = []
    added = ""
    if port is not None:
        edits.append(_Edit(addr.start, addr.end, _new_address(lst, port)))
    if not lst.ssl:
        added += " ssl"
    if http2 and not lst.http2:
        added += " http2"
    if added:
        # after an existing `ssl` flag, so the line reads `listen 443 ssl http2`
        anchor = next((t for t in st.args[1:] if t.value == "ssl"), addr)
        edits.append(_Edit(anchor.end, anchor.end, added))
    for tok in st.args[1:]:
        if tok.value in drop:
            start = tok.start
            while start > 0 and text[start - 1] in " \t":
                start -= 1
            edits.append(_Edit(start, tok.end, ""))
    return edits


def _colliding_options(tree: NginxTree | None, block: ServerBlock, lst: Listen, port: int) -> list[str]:
    """Flags of a new listen on `port` that another block already sets on the same address:port."""
    if tree is None:
        return []
    key = replace(lst, port=port).address_key
    others = [
        o
        for b in tree.server_blocks
        if (b.file, b.line) != (block.file, block.line)
        for o in b.listens
        if o.port == port and o.address_key == key
    ]
    drop: list[str] = []
    if any(o.default_server for o in others):
        drop += [f for f in lst.options if f in ("default_server", "default")]
    if any(o.socket_options for o in others):
        drop += list(lst.socket_options)
    return drop


def convert_to_https(
    text: str,
    block: ServerBlock,
    *,
    https_include: str,
    acme_include: str,
    http2_in_listen: bool,
    site: str,
    tree: NginxTree | None = None,
) -> str:
    """Make `block` serve HTTPS and add a marked port-80 redirect block after it (see module doc).

    Returns `text` unchanged when the block already listens with ssl on 443 and has the https
    include. Raises NginxConfError when the block cannot be converted safely.
    """
    if not _SITE_RE.fullmatch(site):
        raise NginxConfError(f"site name {site!r} is not usable in a marker comment")
    stmts, st = _locate(text, block)
    assert st.term is not None and st.close is not None
    where = block.where
    if block.is_certfab_redirect or _is_redirect_stmt(stmts, st):
        return text  # the port-80 half of a block certfab already converted
    direct = _listen_stmts(st, block.file)
    indirect = [l for l in block.listens if not l.implicit and l.file != block.file]
    implicit = not direct and not indirect
    all_listens = [lst for _, lst in direct] + indirect

    target = _resolve(block.prefix, https_include)
    has_https = block.has_include(https_include) or any(
        _resolve(block.prefix, inc) == target for inc in _direct_includes(st)
    )
    if has_https and any(l.port == 443 and l.ssl for l in all_listens):
        return text

    ours = posixpath.dirname(target)
    clashes = [
        d for d in block.tls_directives if d.file != block.file and posixpath.dirname(d.file) != ours
    ] + [
        TlsDirective(c.directive, block.file, c.name.line)
        for c in st.children or []
        if not c.is_comment and c.directive in TLS_DIRECTIVES
    ]
    if http2_in_listen:
        clashes = [d for d in clashes if d.name != "http2"]
    if clashes:
        listed = ", ".join(f"{d.name} ({d.file}:{d.line})" for d in clashes)
        raise NginxConfError(
            f"{where}: the server block already sets {listed}; remove them so certfab's include "
            "can provide the TLS settings"
        )
    for lst in indirect:
        if lst.port == 80 or (lst.port == 443 and not lst.ssl):
            raise NginxConfError(
                f"{where}: its listen on port {lst.port} comes from {lst.file}:{lst.line}; "
                "move that listen into the server block so certfab can edit it"
            )
    p80 = [(s, l) for s, l in direct if l.port == 80]
    for _, lst in p80:
        if lst.ssl:
            raise NginxConfError(
                f"{lst.file}:{lst.line}: listen on port 80 with ssl; certfab cannot convert it"
            )
    p443 = [(s, l) for s, l in direct if l.port == 443] + [(None, l) for l in indirect if l.port == 443]
    if not p80 and not implicit and not p443:
        raise NginxConfError(f"{where}: the server block listens on neither port 80 nor 443")
    have_443 = {l.address_key for _, l in p443}

    _, inner = _indents(text, st)
    outer = _leading_ws(text, st.name) or ""
    unit = inner[len(outer) :] if inner.startswith(outer) and inner != outer else _file_unit(text)
    edits: list[_Edit] = []
    head: list[str] = []
    for s, lst in p443:
        if s is not None:
            edits += _rewrite_listen(text, s, lst, port=None, http2=http2_in_listen, drop=())
    moved: list[str] = []
    for s, lst in p80:
        moved.append(" ".join(text[a.start : a.end] for a in s.args))
        if replace(lst, port=443).address_key in have_443:
            edits += _comment_out(text, s, f"moved to the certfab redirect block for {site}")
        else:
            drop = _colliding_options(tree, block, lst, 443)
            edits += _rewrite_listen(text, s, lst, port=443, http2=http2_in_listen, drop=drop)
    if implicit:
        moved.append("80")
        if ("v4", "*") not in have_443:
            flags = " ssl" + (" http2" if http2_in_listen else "")
            head.append(f"{inner}listen 443{flags};  # managed by certfab")
    if not has_https:
        head.append(f"{inner}include {_quote(https_include)};  # managed by certfab")
    if head:
        edits.append(_insert_after(text, st.term.end, head, inner))

    begin, end = redirect_marker(site)
    if moved and not re.search(rf"(?m)^[ \t]*{re.escape(begin)}[ \t]*\r?$", text):
        names = [
            text[a.start : a.end]
            for c in st.children or []
            if c.directive == "server_name" and not c.is_comment
            for a in c.args
        ]
        direct_values = {n.lower() for n in _direct_names(st)}
        names += [_quote(n) for n in block.server_names if n.lower() not in direct_values]
        body = [f"{outer}{begin}", f"{outer}server {{"]
        body += [f"{outer}{unit}listen {m};" for m in moved]
        if names:
            body.append(f"{outer}{unit}server_name {' '.join(names)};")
        body += [
            f"{outer}{unit}include {_quote(acme_include)};",
            f"{outer}{unit}location / {{",
            f"{outer}{unit}{unit}return 301 https://$host$request_uri;",
            f"{outer}{unit}}}",
            f"{outer}}}",
            f"{outer}{end}",
        ]
        edits.append(_insert_after(text, st.close.end, body, _leading_ws(text, st.close) or outer))
    return _verify(_apply(text, edits), block.file)


def set_redirect_names(text: str, block: ServerBlock, names: Sequence[str]) -> str:
    """Make certfab's redirect block `block` name exactly `names`; unchanged if it already does.

    The redirect block must follow the names of the HTTPS block it was split from, or a name the
    operator added there later would reach another port-80 block (no ACME location, no redirect).
    Raises NginxConfError when `block` is not a certfab redirect block or it is not where it was.
    """
    if not block.is_certfab_redirect:
        raise NginxConfError(f"{block.where}: not a certfab redirect block")
    if list(block.server_names) == list(names):
        return text
    _, st = _locate(text, block)
    assert st.term is not None
    found = [c for c in st.children or [] if c.directive == "server_name" and not c.is_comment]
    value = " ".join(_quote(n) for n in names)
    if len(found) > 1:
        raise NginxConfError(f"{block.where}: the certfab redirect block has {len(found)} server_name lines")
    if found and found[0].args:
        args = found[0].args
        return _verify(_apply(text, [_Edit(args[0].start, args[-1].end, value)]), block.file)
    if found:
        return _verify(_apply(text, [_Edit(found[0].name.end, found[0].name.end, " " + value)]), block.file)
    _, inner = _indents(text, st)
    line = f"{inner}server_name {value};"
    return _verify(_apply(text, [_insert_after(text, st.term.end, [line], inner)]), block.file)
