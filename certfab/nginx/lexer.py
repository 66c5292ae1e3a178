"""Tokens and statements of one nginx file, exactly as crossplane reads them, with byte offsets.

crossplane is the parser of record: every file is validated by `crossplane.parse` and its token
stream by `crossplane.lex`. The lexer here mirrors crossplane's rules exactly but also records
offsets; it is checked token for token against crossplane's output, so edits made at those offsets
leave everything else byte-identical.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import crossplane

from certfab.nginx.model import NginxConfError

LUA_BLOCKS = frozenset(
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


# --------------------------------------------------------------------------- lexing


@dataclass(frozen=True)
class Token:
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


def lex(text: str) -> list[Token]:
    """Tokens exactly as crossplane.lex yields them, plus their byte spans in `text`."""
    out: list[Token] = []
    try:
        out.extend(_lex_units(_Units(text)))
    except _EOF:
        pass
    return out


def _lex_units(units: _Units) -> Iterator[Token]:
    # Mirrors crossplane.lexer._lex_file_object statement by statement.
    token = ""
    token_line = 0
    token_start = 0
    last_end = 0
    next_is_directive = True
    for char, line, s, e in units:
        if char.isspace():
            if token:
                yield Token(token, token_line, False, token_start, last_end)
                if next_is_directive and token in LUA_BLOCKS:
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
            yield Token(token, line, False, start, last_end)
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
            yield Token(token, token_line, True, token_start, e)
            next_is_directive = False
            token = ""
            continue

        if char in ("{", "}", ";"):
            if token:
                yield Token(token, token_line, False, token_start, last_end)
                token = ""
            yield Token(char, line, False, s, e)
            next_is_directive = True
            continue

        token += char
        last_end = e


def _lex_lua(units: _Units, directive: str) -> Iterator[Token]:
    # Mirrors crossplane.ext.lua.LuaBlockPlugin.lex: the whole block becomes one quoted token.
    if directive == "set_by_lua_block":
        arg = ""
        arg_start = arg_end = 0
        for char, line, s, e in units:
            if char.isspace():
                if arg:
                    yield Token(arg, line, False, arg_start, arg_end)
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
            yield Token(token, line, True, body_start, e)
            yield Token(";", line, False, e, e)
            return
        token += char


# --------------------------------------------------------------------------- statements


@dataclass
class Statement:
    name: Token
    args: list[Token]
    term: Token | None  # ';' or '{'; None for a comment
    children: list[Statement] | None = None
    close: Token | None = None

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


def _build(tokens: Sequence[Token], path: str) -> list[Statement]:
    """Nest tokens into statements the way crossplane's parser does."""
    it = iter(tokens)

    def fail(tok: Token | None, why: str) -> NginxConfError:
        where = f"{path}:{tok.line}" if tok is not None else path
        return NginxConfError(f"{where}: {why}")

    def block(opener: Token | None) -> tuple[list[Statement], Token | None]:
        out: list[Statement] = []
        for tok in it:
            if tok.is_("}"):
                if opener is None:
                    raise fail(tok, 'unexpected "}"')
                return out, tok
            if tok.is_comment:
                out.append(Statement(tok, [], None))
                continue
            if tok.is_("{") or tok.is_(";"):
                raise fail(tok, f'unexpected "{tok.value}"')
            args: list[Token] = []
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
                out.append(Statement(tok, args, term, children, close))
            else:
                out.append(Statement(tok, args, term))
        if opener is not None:
            raise fail(opener, 'unexpected end of file, expecting "}"')
        return out, None

    return block(None)[0]


def walk_statements(stmts: Sequence[Statement]) -> Iterator[Statement]:
    for st in stmts:
        yield st
        if st.children is not None:
            yield from walk_statements(st.children)


def as_crossplane_reads(value: str) -> str:
    """`value` (decoded with surrogateescape, byte-exact) as crossplane decodes the same bytes.

    crossplane reads files as UTF-8 with replacement characters; certfab keeps undecodable bytes
    as surrogates so it can write them back unchanged. Token boundaries are ASCII, so decoding one
    token's bytes gives what crossplane decoded for it.
    """
    if value.isascii():
        return value
    try:
        raw = value.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:
        return value  # a surrogate no byte decodes to: cannot come from a file
    return raw.decode("utf-8", errors="replace")


def _crossplane_check(text: str, path: str, tmpdir: str) -> list[Token]:
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
    ours = lex(text)
    theirs = [(str(t), int(n), bool(q)) for t, n, q in crossplane.lex(tmp)]
    mine = [(as_crossplane_reads(t.value), t.line, t.quoted) for t in ours]
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


def parse_text(text: str, path: str) -> list[Statement]:
    """Validate and parse one file's text into statements."""
    with tempfile.TemporaryDirectory(prefix="certfab-nginx-") as tmpdir:
        tokens = _crossplane_check(text, path, tmpdir)
    return _build(tokens, path)

