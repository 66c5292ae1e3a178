"""The include tree of a configuration and the http server blocks found in it."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from certfab.nginx.lexer import Statement, parse_text
from certfab.nginx.model import (
    HTTP_CTX,
    MARKER_RE,
    SERVER_CTX,
    TLS_DIRECTIVES,
    Listen,
    NginxConfError,
    NginxTree,
    ServerBlock,
    TlsDirective,
    glob_match,
    has_magic,
    resolve_path,
)


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




def make_listen(args: Sequence[str], path: str, line: int, ssl_on: bool = False) -> Listen:
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


def marker_site(stmts: Sequence[Statement], index: int) -> str | None:
    """The site named by a redirect-begin marker right before statement `index`, if any."""
    if index > 0 and stmts[index - 1].is_comment:
        m = MARKER_RE.match(stmts[index - 1].name.value)
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
        self.parsed: dict[str, list[Statement]] = {}
        self.contexts: dict[str, list[tuple[str, ...]]] = {}
        self.blocks: list[ServerBlock] = []
        self.seen: set[tuple[str, int]] = set()
        self.unmatched: list[tuple[str, int, str]] = []

    def stmts(self, path: str) -> list[Statement]:
        if path not in self.parsed:
            self.parsed[path] = parse_text(self.files[path], path)
        return self.parsed[path]

    def include(self, arg: str, path: str, line: int) -> list[str]:
        pattern = resolve_path(self.prefix, arg)
        if has_magic(pattern):
            found = sorted(p for p in self.norm if glob_match(pattern, p))
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
        stmts: Sequence[Statement],
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
                    acc = _ServerAcc(path, line, marker_site(stmts, index))
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
                server.listens.append(make_listen(args, path, line))
            elif name == "server_name":
                server.names.extend(args)
            elif name in TLS_DIRECTIVES:
                server.tls.append(TlsDirective(name, path, line))
                if name == "ssl" and args and args[0].lower() == "on":
                    server.ssl_on = True


def parse_tree(files: Mapping[str, str], main: str, prefix: str | None = None) -> NginxTree:
    """Parse the files certfab read, following includes from `main`.

    Relative include paths resolve against `prefix`, by default the directory of `main`: that is
    what nginx does (`nginx -V`'s --prefix, /usr/share/nginx on Debian, plays no part in it).
    Raises NginxConfError naming file:line when a reachable file does not parse.
    """
    if prefix is None:
        prefix = posixpath.dirname(posixpath.normpath(main)) or "/"
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

