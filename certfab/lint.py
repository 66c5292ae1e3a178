"""What is wrong with the TLS configuration already on a host, and the safe fixes (pure).

`lint` reads a host's facts (its nginx files as certfab reads them, cron, timers) and lists each finding
with its file:line, the problem and the fix. `fixes` turns the fixable ones into new file texts, which
certfab.linting applies through bootstrap's transaction.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from certfab.facts import HostFacts
from certfab.includes import denied
from certfab.nginx.lexer import Statement, parse_text
from certfab.nginx.model import glob_match, has_magic, resolve_path
from certfab.paths import HSTS_INCLUDE
from certfab.tls import INTERMEDIATE_CIPHERS

Severity = Literal["error", "warning"]
HSTS_MIN_AGE = 31536000  # a year: what the HSTS preload list and Mozilla's guideline ask for
HSTS_FIX_AGE = 63072000
WEAK_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1")
# OpenSSL cipher words that name suites without forward secrecy or without AEAD.
_WEAK_CIPHER_WORDS = re.compile(r"(^|[:+])(ALL|DEFAULT|HIGH|MEDIUM|LOW|RSA|kRSA|AES|AES128|AES256|SHA|SHA1|3DES|DES|"
                                r"RC4|CAMELLIA|SEED|IDEA|COMPLEMENTOFALL)($|[:+])")


@dataclass(frozen=True)
class Finding:
    """One problem at one place, how to fix it, and whether `lint --fix` can."""

    rule: str
    severity: Severity
    file: str
    line: int
    problem: str
    fix: str
    fixable: bool = False

    @property
    def where(self) -> str:
        """file:line, or the file (a timer, a cron file) when no line applies."""
        return f"{self.file}:{self.line}" if self.line else self.file

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "severity": self.severity, "file": self.file, "line": self.line,
                "problem": self.problem, "fix": self.fix, "fixable": self.fixable}


@dataclass(frozen=True)
class Directive:
    """A directive with the file it is written in."""

    file: str
    st: Statement

    @property
    def name(self) -> str:
        return self.st.directive

    @property
    def args(self) -> list[str]:
        return [a.value for a in self.st.args]

    @property
    def line(self) -> int:
        return self.st.name.line


@dataclass
class _Server:
    file: str
    st: Statement
    directives: list[Directive] = field(default_factory=list)
    # location and `if` blocks at any depth, with the directives written directly in each
    locations: list[tuple[Directive, list[Directive]]] = field(default_factory=list)

    @property
    def listens(self) -> list[Directive]:
        return [d for d in self.directives if d.name == "listen"]

    def first(self, name: str) -> Directive | None:
        return next((d for d in self.directives if d.name == name), None)

    @property
    def https(self) -> bool:
        ssl_on = any(d.name == "ssl" and d.args[:1] == ["on"] for d in self.directives)
        return ssl_on or any("ssl" in d.args[1:] for d in self.listens)


class _Config:
    """The host's nginx files, walked with includes resolved: http-level directives and server blocks."""

    def __init__(self, files: Mapping[str, str], main: str, prefix: str) -> None:
        self.files = files
        self.prefix = prefix
        self.parsed = {path: parse_text(text, path) for path, text in files.items()}
        self.http: list[Directive] = []
        self.servers: list[_Server] = []
        self._walk(main, self.parsed.get(main, []), (), None, (main,))

    def _includes(self, arg: str) -> list[str]:
        pattern = resolve_path(self.prefix, arg)
        if has_magic(pattern):
            return sorted(p for p in self.files if glob_match(pattern, p))
        return [pattern] if pattern in self.files else []

    def _walk(self, path: str, stmts: list[Statement], ctx: tuple[str, ...], server: _Server | None,
              stack: tuple[str, ...]) -> None:
        for st in stmts:
            if st.is_comment:
                continue
            if st.directive == "include" and st.children is None and st.args:
                for inc in self._includes(st.args[0].value):
                    if inc not in stack:
                        self._walk(inc, self.parsed[inc], ctx, server, stack + (inc,))
                continue
            if st.children is not None:
                if st.directive == "server" and ctx == ("http",):
                    found = _Server(path, st)
                    self.servers.append(found)
                    self._walk(path, st.children, ctx + ("server",), found, stack)
                elif server is not None and st.directive in ("location", "if"):
                    own: list[Directive] = []
                    server.locations.append((Directive(path, st), own))
                    self._collect(path, st.children, own, stack)
                    self._walk(path, st.children, ctx + (st.directive,), server, stack)
                else:
                    self._walk(path, st.children, ctx + (st.directive,), server, stack)
                continue
            if ctx == ("http",):
                self.http.append(Directive(path, st))
            elif ctx == ("http", "server") and server is not None:
                server.directives.append(Directive(path, st))

    def _collect(self, path: str, stmts: list[Statement], out: list[Directive], stack: tuple[str, ...]) -> None:
        """Directives written directly in a location (through includes too), not in nested blocks."""
        for st in stmts:
            if st.is_comment or st.children is not None:
                continue
            if st.directive == "include" and st.args:
                for inc in self._includes(st.args[0].value):
                    if inc not in stack:
                        self._collect(inc, self.parsed[inc], out, stack + (inc,))
                continue
            out.append(Directive(path, st))

    def effective(self, server: _Server, name: str) -> Directive | None:
        """A directive as the server sees it: its own, or the http level's."""
        return server.first(name) or next((d for d in self.http if d.name == name), None)


def _hsts_age(directives: list[Directive]) -> int | None:
    """max-age of the Strict-Transport-Security add_header among `directives`, None without one."""
    for d in directives:
        if d.name == "add_header" and len(d.args) >= 2 and d.args[0].lower() == "strict-transport-security":
            found = re.search(r"max-age=(\d+)", d.args[1])
            return int(found.group(1)) if found else 0
    return None


def _weak_ciphers(value: str) -> list[str]:
    """The parts of an ssl_ciphers value that allow suites without forward secrecy or AEAD."""
    weak = []
    for part in value.split(":"):
        word = part.strip()
        if not word or word.startswith(("!", "-", "@")):
            continue
        if _WEAK_CIPHER_WORDS.search(word):
            weak.append(word)
        elif re.fullmatch(r"[A-Z0-9-]+", word) and ("-" in word):
            forward_secret = word.startswith(("ECDHE-", "DHE-", "EDH-", "TLS_"))
            aead = "GCM" in word or "CHACHA20" in word or "CCM" in word
            if not (forward_secret and aead):
                weak.append(word)
    return weak


def dhparam_paths(facts: HostFacts) -> list[str]:
    """Every file an HTTPS server's ssl_dhparam names (absolute), for certfab.linting to read."""
    nginx = facts.nginx
    if nginx is None:
        return []
    config = _Config({p: f.text for p, f in nginx.files.items()}, nginx.conf_path, nginx.prefix)
    found = [config.effective(server, "ssl_dhparam") for server in config.servers if server.https]
    paths = [resolve_path(nginx.prefix, d.args[0]) for d in found if d is not None and d.args]
    return sorted(set(p for p in paths if not denied(p)))


def dhparam_bits(pem: str) -> int | None:
    """The prime's size of a PEM DH PARAMETERS file, None when it is not one."""
    from cryptography.hazmat.primitives.asymmetric import dh
    from cryptography.hazmat.primitives.serialization import load_pem_parameters

    try:
        params = load_pem_parameters(pem.encode("ascii", errors="replace"))
    except (ValueError, TypeError):
        return None
    return params.parameter_numbers().p.bit_length() if isinstance(params, dh.DHParameters) else None


def lint_facts(facts: HostFacts, *, hsts_max_age: int = HSTS_FIX_AGE, include_subdomains: bool = True,
               dhparams: Mapping[str, int | None] | None = None) -> list[Finding]:
    """Every finding on one host, in file order; `dhparams`: bits of each dhparam file (None: unreadable)."""
    findings: list[Finding] = []
    nginx = facts.nginx
    if nginx is not None:
        config = _Config({p: f.text for p, f in nginx.files.items()}, nginx.conf_path, nginx.prefix)
        findings += _lint_servers(config, nginx.version, hsts_value(hsts_max_age, include_subdomains),
                                  dhparams or {})
    for job in facts.competing_renewal:
        findings.append(Finding("competing-renewal", "warning", job.split(" ", 1)[0], 0,
                                f"another renewal job runs besides certfab's: {job}",
                                "disable it (systemctl disable --now certbot.timer, or remove the cron file): "
                                "certfab's job renews, tests nginx, reloads and mails"))
    for number, line in enumerate(facts.crontab.splitlines(), 1):
        entry = line.strip()
        if entry and not entry.startswith("#") and "certbot" in entry:
            findings.append(Finding("competing-renewal", "warning", "root's crontab", number,
                                    f"certbot runs from root's crontab: {entry}",
                                    "remove the line (crontab -e): certfab's job renews, tests nginx and reloads"))
    return sorted(findings, key=lambda f: (f.file, f.line, f.rule))


def hsts_value(max_age: int, include_subdomains: bool) -> str:
    return f"max-age={max_age}" + ("; includeSubDomains" if include_subdomains else "")


def _weak_dhparam(config: _Config, server: _Server, dhparams: Mapping[str, int | None]) -> tuple[Directive, str] | None:
    """The server's ssl_dhparam and why it is weak, or None when it is at least 2048 bits (or absent)."""
    d = config.effective(server, "ssl_dhparam")
    if d is None or not d.args:
        return None
    bits = dhparams.get(resolve_path(config.prefix, d.args[0]))
    if bits is None:
        return d, "names a file certfab could not read as DH parameters"
    return (d, f"has {bits} bits") if bits < 2048 else None


def _lint_servers(config: _Config, version: tuple[int, ...], hsts: str,
                  dhparams: Mapping[str, int | None]) -> list[Finding]:
    out: list[Finding] = []
    defaults: dict[tuple[str, str], list[Directive]] = {}
    for server in config.servers:
        for listen in server.listens:
            flags = listen.args[1:]
            if "default_server" in flags or "default" in flags:
                address = listen.args[0] if listen.args else "80"
                key = ("[::]" if address.startswith("[") and address.split("]")[0] == "[::" else "*",
                       address.rsplit(":", 1)[-1] if ":" in address else address)
                if ":" in address and not address.startswith(("*:", "0.0.0.0:", "[::]:")):
                    key = (address.rsplit(":", 1)[0], key[1])
                defaults.setdefault(key, []).append(listen)
            if version >= (1, 25, 1) and "http2" in flags:
                out.append(Finding("listen-http2", "warning", listen.file, listen.line,
                                   "`listen ... http2` is deprecated since nginx 1.25.1",
                                   "drop http2 from the listen and add `http2 on;` to the server", True))
        if not server.https:
            continue
        ssl_on = server.first("ssl")
        if ssl_on is not None and ssl_on.args[:1] == ["on"]:
            out.append(Finding("ssl-on", "error", ssl_on.file, ssl_on.line,
                               "`ssl on;` is obsolete (removed in nginx 1.25.1) and makes every listen TLS",
                               "remove it and add `ssl` to the server's listen directives", True))
        for name in ("ssl_stapling", "ssl_stapling_verify"):
            d = config.effective(server, name)
            if d is not None and d.args[:1] == ["on"]:
                out.append(Finding("ocsp-stapling", "warning", d.file, d.line,
                                   f"`{name} on;`: Let's Encrypt runs no OCSP responder since 2025 "
                                   "(nginx warns and staples nothing)", f"remove {name}", True))
        protocols = config.effective(server, "ssl_protocols")
        if protocols is not None and any(p in WEAK_PROTOCOLS for p in protocols.args):
            weak = ", ".join(p for p in protocols.args if p in WEAK_PROTOCOLS)
            out.append(Finding("old-protocols", "error", protocols.file, protocols.line,
                               f"ssl_protocols allows {weak}", "`ssl_protocols TLSv1.2 TLSv1.3;`", True))
        ciphers = config.effective(server, "ssl_ciphers")
        if ciphers is not None and ciphers.args and _weak_ciphers(ciphers.args[0]):
            out.append(Finding("weak-ciphers", "error", ciphers.file, ciphers.line,
                               f"ssl_ciphers allows suites without forward secrecy or AEAD "
                               f"({', '.join(_weak_ciphers(ciphers.args[0])[:4])})",
                               "Mozilla's intermediate list (ECDHE with AES-GCM or ChaCha20-Poly1305)", True))
        weak_dh = _weak_dhparam(config, server, dhparams)
        if weak_dh is not None:
            dhparam, why = weak_dh
            out.append(Finding("weak-dhparam", "error", dhparam.file, dhparam.line, f"ssl_dhparam {why}",
                               "remove ssl_dhparam (ECDHE needs none) or use an RFC 7919 group of 2048 bits or "
                               "more", True))
        age = _hsts_age(server.directives)
        if age is None and not any(d.name == "add_header" for d in server.directives):
            age = _hsts_age(config.http)
        if age is None:
            out.append(Finding("no-hsts", "warning", server.file, server.st.name.line,
                               "HTTPS server without a Strict-Transport-Security header",
                               f'`add_header Strict-Transport-Security "{hsts}" always;`', True))
        elif age < HSTS_MIN_AGE:
            d = next(d for d in server.directives + config.http if d.name == "add_header"
                     and d.args[:1] and d.args[0].lower() == "strict-transport-security")
            out.append(Finding("short-hsts", "warning", d.file, d.line,
                               f"HSTS max-age {age} is under a year", f'`"{hsts}"`', True))
        for location, own in server.locations:
            if any(d.name == "add_header" for d in own) and _hsts_age(own) is None:
                out.append(Finding("hsts-dropped", "warning", location.file, location.line,
                                   f"`{location.name} {' '.join(location.args)}` sets headers of its own, so nginx "
                                   "sends no HSTS there", "repeat the HSTS add_header in it", True))
        for location, _ in server.locations:
            if location.name == "if" and re.search(r"\$scheme\s*=\s*\"?http\b", " ".join(location.args)):
                out.append(Finding("scheme-if", "warning", location.file, location.line,
                                   "`if ($scheme = http)` redirect: every HTTPS request runs it, and HSTS and "
                                   "ACME challenges are easy to get wrong", "a port-80 server block that "
                                   "returns 301 https://$host$request_uri (certfab writes one)"))
    for listens in defaults.values():
        if len(listens) > 1:
            first = listens[0]
            for dup in listens[1:]:
                out.append(Finding("duplicate-default", "error", dup.file, dup.line,
                                   f"a second default_server for {dup.args[0]} (the first is at "
                                   f"{first.file}:{first.line}); nginx -t fails",
                                   "keep default_server on one server block per address:port"))
    return out


def exit_code(findings: list[Finding]) -> int:
    """0 clean, 1 warnings only, 2 errors."""
    if any(f.severity == "error" for f in findings):
        return 2
    return 1 if findings else 0


# --------------------------------------------------------------------------- fixes


def _line_bounds(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The whole lines from start to end when nothing else (but a comment) shares them."""
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    line_end = len(text) if line_end < 0 else line_end + 1
    if text[line_start:start].strip() or (text[end:line_end].strip() and not text[end:line_end].strip().startswith("#")):
        return None
    return line_start, line_end


def _remove(text: str, st: Statement) -> tuple[int, int, str]:
    bounds = _line_bounds(text, st.name.start, st.end)
    return (bounds[0], bounds[1], "") if bounds else (st.name.start, st.end, "")


def _set_args(st: Statement, value: str) -> tuple[int, int, str]:
    return (st.args[0].start, st.args[-1].end, value)


def _insert_first(text: str, block: Statement, line: str) -> tuple[int, int, str]:
    """`line` as the first line inside `block`, indented like its first directive."""
    assert block.term is not None
    pos = block.term.end
    child = next((c for c in block.children or [] if not c.is_comment), None)
    if child is not None:
        indent = text[text.rfind("\n", 0, child.name.start) + 1:child.name.start]
        if indent.strip():
            indent = "\t"
    else:
        indent = "\t"
    newline = text.find("\n", pos)
    if newline >= 0 and not text[pos:newline].strip():
        return (newline + 1, newline + 1, f"{indent}{line}\n")
    return (pos, pos, f"\n{indent}{line}\n{indent}")


def fixes(facts: HostFacts, *, hsts_max_age: int = HSTS_FIX_AGE, include_subdomains: bool = True,
          dhparams: Mapping[str, int | None] | None = None) -> dict[str, str]:
    """New text of every nginx file a safe fix changes, by the path nginx names (real paths via facts)."""
    nginx = facts.nginx
    if nginx is None:
        return {}
    texts = {p: f.text for p, f in nginx.files.items()}
    config = _Config(texts, nginx.conf_path, nginx.prefix)
    hsts = hsts_value(hsts_max_age, include_subdomains)
    header = f'add_header Strict-Transport-Security "{hsts}" always;'
    edits: dict[str, set[tuple[int, int, str]]] = {}

    def edit(path: str, change: tuple[int, int, str]) -> None:
        edits.setdefault(path, set()).add(change)

    for server in config.servers:
        https = server.https
        for listen in server.listens:
            tokens = listen.st.args
            if nginx.version >= (1, 25, 1) and any(t.value == "http2" for t in tokens[1:]):
                for t in tokens[1:]:
                    if t.value == "http2":
                        start = t.start
                        while start > 0 and texts[listen.file][start - 1] in " \t":
                            start -= 1
                        edit(listen.file, (start, t.end, ""))
                if server.first("http2") is None:
                    edit(server.file, _insert_first(texts[server.file], server.st, "http2 on;"))
        if not https:
            continue
        ssl_on = server.first("ssl")
        if ssl_on is not None and ssl_on.args[:1] == ["on"]:
            edit(ssl_on.file, _remove(texts[ssl_on.file], ssl_on.st))
            for listen in server.listens:
                if "ssl" not in listen.args[1:]:
                    address = listen.st.args[0]
                    edit(listen.file, (address.end, address.end, " ssl"))
        for name in ("ssl_stapling", "ssl_stapling_verify"):
            d = config.effective(server, name)
            if d is not None and d.args[:1] == ["on"]:
                edit(d.file, _remove(texts[d.file], d.st))
        protocols = config.effective(server, "ssl_protocols")
        if protocols is not None and any(p in WEAK_PROTOCOLS for p in protocols.args):
            edit(protocols.file, _set_args(protocols.st, "TLSv1.2 TLSv1.3"))
        ciphers = config.effective(server, "ssl_ciphers")
        if ciphers is not None and ciphers.args and _weak_ciphers(ciphers.args[0]):
            edit(ciphers.file, _set_args(ciphers.st, ":".join(INTERMEDIATE_CIPHERS)))
        weak_dh = _weak_dhparam(config, server, dhparams or {})
        if weak_dh is not None:
            edit(weak_dh[0].file, _remove(texts[weak_dh[0].file], weak_dh[0].st))
        age = _hsts_age(server.directives)
        if age is None and not any(d.name == "add_header" for d in server.directives):
            age = _hsts_age(config.http)
        if age is None:
            edit(server.file, _insert_first(texts[server.file], server.st, header))
        elif age < HSTS_MIN_AGE:
            d = next(d for d in server.directives + config.http if d.name == "add_header"
                     and d.args[:1] and d.args[0].lower() == "strict-transport-security")
            edit(d.file, (d.st.args[1].start, d.st.args[1].end, f'"{hsts}"'))
        for location, own in server.locations:
            if any(d.name == "add_header" for d in own) and _hsts_age(own) is None:
                if any(d.name == "include" and d.args[:1] == [HSTS_INCLUDE] for d in own):
                    continue
                edit(location.file, _insert_first(texts[location.file], location.st, header))
    changed: dict[str, str] = {}
    for path, changes in edits.items():
        text = texts[path]
        ordered = sorted(changes)
        for (_s1, e1, _), (s2, _e2, _) in zip(ordered, ordered[1:]):
            if s2 < e1:
                raise ValueError(f"{path}: overlapping fixes")
        for start, end, new in reversed(ordered):
            text = text[:start] + new + text[end:]
        parse_text(text, path)  # a fix must never produce something nginx's grammar rejects
        changed[path] = text
    return changed


def findings_lines(host: str, findings: list[Finding]) -> Iterator[str]:
    """One line per finding: where, severity, problem, fix."""
    for f in findings:
        yield f"{host}: {f.where}: {f.severity}: {f.problem}; fix: {f.fix}" + (" (lint --fix)" if f.fixable else "")
