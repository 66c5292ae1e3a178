"""Minimal, byte-preserving text edits to server blocks: includes, HTTPS conversion, redirect names.

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

import itertools
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from certfab.nginx.lexer import Statement, Token, parse_text, walk_statements
from certfab.nginx.model import (
    TLS_DIRECTIVES,
    Listen,
    NginxConfError,
    NginxTree,
    ServerBlock,
    TlsDirective,
    redirect_marker,
    resolve_path,
)
from certfab.nginx.tree import make_listen, marker_site
from certfab.templating import render, trusted

_SITE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

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


def _leading_ws(text: str, tok: Token) -> str | None:
    """The indentation of `tok`'s line when `tok` is the first thing on it, else None."""
    start = _line_start(text, tok.start)
    before = text[start : tok.start]
    return before if before.strip(" \t") == "" else None


def _file_unit(text: str) -> str:
    tabs = len(re.findall(r"(?m)^\t+\S", text))
    spaces = len(re.findall(r"(?m)^ +\S", text))
    return "\t" if tabs > spaces else "    "


def _indents(text: str, st: Statement) -> tuple[str, str]:
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


def _locate(text: str, block: ServerBlock) -> tuple[list[Statement], Statement]:
    """The server statement of `block` in `text`, refusing to guess when it moved."""
    stmts = parse_text(text, block.file)
    found = [
        st
        for st in walk_statements(stmts)
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


def _is_redirect_stmt(stmts: list[Statement], st: Statement) -> bool:
    """Whether `st` is preceded by a certfab redirect marker among its siblings."""
    for siblings in [stmts] + [p.children for p in walk_statements(stmts) if p.children is not None]:
        for index, sibling in enumerate(siblings):
            if sibling is st:
                return marker_site(siblings, index) is not None
    return False


def _direct_names(st: Statement) -> list[str]:
    return [
        a.value
        for c in st.children or []
        if c.directive == "server_name" and not c.is_comment
        for a in c.args
    ]


def _direct_includes(st: Statement) -> list[str]:
    return [
        c.args[0].value for c in st.children or [] if c.directive == "include" and not c.is_comment and c.args
    ]


def _verify(text: str, path: str) -> str:
    parse_text(text, path)  # an edit must never produce something crossplane rejects
    return text


def add_include(text: str, block: ServerBlock, include_path: str, comment: str = "managed by certfab") -> str:
    """Insert `include PATH;  # COMMENT` as the first line inside the block; unchanged if present.

    Raises NginxConfError when the text does not parse or the block is not where `block` says.
    """
    _, st = _locate(text, block)
    target = resolve_path(block.prefix, include_path)
    if block.has_include(include_path) or any(
        resolve_path(block.prefix, inc) == target for inc in _direct_includes(st)
    ):
        return text
    assert st.term is not None
    _, inner = _indents(text, st)
    line = f"{inner}include {_quote(include_path)};" + (f"  # {comment}" if comment else "")
    return _verify(_apply(text, [_insert_after(text, st.term.end, [line], inner)]), block.file)


def _listen_stmts(st: Statement, path: str) -> list[tuple[Statement, Listen]]:
    return [
        (c, make_listen([a.value for a in c.args], path, c.name.line))
        for c in st.children or []
        if c.directive == "listen" and not c.is_comment
    ]


def _new_address(lst: Listen, port: int) -> str:
    if lst.address is None:
        return str(port)
    return f"{lst.address}:{port}"


def _alone_on_lines(text: str, st: Statement) -> bool:
    if _leading_ws(text, st.name) is None:
        return False
    rest = text[st.end : _line_end(text, st.end)].lstrip(" \t")
    return rest == "" or rest.startswith("#")


def _comment_out(text: str, st: Statement, note: str) -> list[_Edit]:
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
    text: str, st: Statement, lst: Listen, *, port: int | None, http2: bool, drop: Sequence[str]
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

    target = resolve_path(block.prefix, https_include)
    has_https = block.has_include(https_include) or any(
        resolve_path(block.prefix, inc) == target for inc in _direct_includes(st)
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
        body = render_redirect_server(
            moved, names, _quote(acme_include), indent=outer, unit=unit, marker=(begin, end)
        ).splitlines()
        edits.append(_insert_after(text, st.close.end, body, _leading_ws(text, st.close) or outer))
    return _verify(_apply(text, edits), block.file)


def render_redirect_server(
    listens: Sequence[str],
    server_names: Sequence[str],
    acme_include: str,
    *,
    indent: str = "",
    unit: str = "    ",
    marker: tuple[str, str] | None = None,
) -> str:
    """certfab's port-80 redirect block (templates/redirect-server.conf.j2), as nginx text.

    `listens` and `server_names` are nginx text already (copied from the operator's block or
    quoted by certfab) and are rendered as they are; managed sites render the same template.
    """
    begin, end = marker if marker is not None else ("", "")
    return render(
        "redirect-server.conf.j2",
        indent=trusted(indent),
        unit=trusted(unit),
        listens=[trusted(listen) for listen in listens],
        server_names=[trusted(name) for name in server_names],
        acme_include=trusted(acme_include),
        marker_begin=trusted(begin),
        marker_end=trusted(end),
    )


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


def _header_contexts(st: Statement) -> list[Statement]:
    """Every `location` and `if` inside `st` (at any depth) that sets an `add_header` of its own.

    nginx sends a level's `add_header` headers only where a nested level sets none: each of these
    drops every header of the levels around it, HSTS included.
    """
    found: list[Statement] = []
    for child in st.children or []:
        if child.is_comment or child.children is None or child.directive not in ("location", "if"):
            continue
        if any(c.directive == "add_header" and not c.is_comment for c in child.children):
            found.append(child)
        found += _header_contexts(child)
    return found


def header_locations(text: str, block: ServerBlock) -> list[tuple[int, str]]:
    """(line, location argument text) of every location/if of `block` that sets its own add_header."""
    _, st = _locate(text, block)
    return [(c.name.line, " ".join(a.value for a in c.args)) for c in _header_contexts(st)]


def add_location_includes(text: str, block: ServerBlock, include_path: str,
                          comment: str = "managed by certfab") -> str:
    """Insert `include PATH;` first in every location/if of `block` that sets its own add_header.

    Unchanged where a location includes it already. Raises NginxConfError like add_include.
    """
    _, st = _locate(text, block)
    target = resolve_path(block.prefix, include_path)
    edits: list[_Edit] = []
    for loc in _header_contexts(st):
        if any(resolve_path(block.prefix, inc) == target for inc in _direct_includes(loc)):
            continue
        assert loc.term is not None
        _, inner = _indents(text, loc)
        line = f"{inner}include {_quote(include_path)};" + (f"  # {comment}" if comment else "")
        edits.append(_insert_after(text, loc.term.end, [line], inner))
    if not edits:
        return text
    return _verify(_apply(text, edits), block.file)


def probe_path(location_args: str) -> str | None:
    """A request path that lands in a location with these arguments, or None (regex, named, `if`)."""
    parts = location_args.split()
    if len(parts) == 2 and parts[0] in ("=", "^~"):
        path = parts[1]
    elif len(parts) == 1 and not parts[0].startswith("@"):
        path = parts[0]
    else:
        return None
    return path if path.startswith("/") and path.isprintable() and " " not in path else None


def revert_https(text: str, path: str, *, site: str, https_include: str, acme_include: str, prefix: str,
                 hsts_include: str = "") -> str:
    """certfab's HTTPS conversion of `site` taken back from one file's text, without a record of the
    text before it: the marked redirect block goes, its port-80 listens return to the blocks they
    came from (in place of the 443 listens certfab made of them), and certfab's includes and its
    added listen lines go. Used by remove-site for sites converted before certfab kept records.
    """
    begin, end = redirect_marker(site)
    marked = re.search(rf"(?ms)^[ \t]*{re.escape(begin)}[ \t]*\r?\n.*?^[ \t]*{re.escape(end)}[ \t]*(\r?\n|\Z)", text)
    moved: list[str] = []
    if marked is not None:
        for stmt in walk_statements(parse_text(marked.group(0), path)):
            if stmt.directive == "listen" and not stmt.is_comment and stmt.args:
                moved.append(" ".join(a.value for a in stmt.args))
        text = text[: marked.start()] + text[marked.end():]
    targets = {resolve_path(prefix, https_include), resolve_path(prefix, acme_include)}
    edits: list[_Edit] = []
    for stmt in walk_statements(parse_text(text, path)):
        if stmt.directive != "server" or stmt.children is None:
            continue
        ours = [c for c in stmt.children if c.directive == "include" and not c.is_comment and c.args
                and resolve_path(prefix, c.args[0].value) in targets]
        if not any(resolve_path(prefix, c.args[0].value) == resolve_path(prefix, https_include) for c in ours):
            ours = [c for c in ours if resolve_path(prefix, c.args[0].value) == resolve_path(prefix, acme_include)]
            edits += [_whole_lines(text, c) for c in ours]
            continue
        edits += [_whole_lines(text, c) for c in ours]
        if hsts_include:
            edits += [_whole_lines(text, c) for c in walk_statements(stmt.children)
                      if c.directive == "include" and not c.is_comment and c.args and c.children is None
                      and resolve_path(prefix, c.args[0].value) == resolve_path(prefix, hsts_include)]
        remaining = list(moved)
        for child in stmt.children:
            if child.directive != "listen" or child.is_comment or not child.args:
                continue
            line_rest = text[child.end:_line_end(text, child.end)]
            if "managed by certfab" in line_rest:
                edits.append(_whole_lines(text, child))
                continue
            lst = make_listen([a.value for a in child.args], path, child.name.line)
            back = next((m for m in remaining if lst.port == 443
                         and replace(make_listen(m.split(), path, 0), port=443).address_key == lst.address_key), None)
            if back is not None:
                remaining.remove(back)
                edits.append(_Edit(child.args[0].start, child.args[-1].end, back))
        note = f"# moved to the certfab redirect block for {site}"
        for match in re.finditer(rf"(?m)^([ \t]*)# (listen [^\n]*?;)[ \t]*{re.escape(note)}[ \t]*$", text):
            edits.append(_Edit(match.start(), match.end(), match.group(1) + match.group(2)))
    return _verify(_apply(text, edits), path) if edits else text


def _whole_lines(text: str, st: Statement) -> _Edit:
    """An edit removing `st` with its line when nothing but a comment shares it, else just `st`."""
    if _alone_on_lines(text, st):
        start = _line_start(text, st.name.start)
        end = _line_end(text, st.end)
        return _Edit(start, end + len(_newline(text, end)) if end < len(text) else end, "")
    return _Edit(st.name.start, st.end, "")
