"""Which server block nginx picks for a host name, and what stands in the way of a site (preflight)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from certfab.nginx.model import HostMatch, NginxTree, ServerBlock, SiteProblem
from certfab.nginx.tree import make_listen

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
    probe = make_listen([f"{address}:{port}"], "", 0)
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


# Names that never match a request's host, so they need no certificate: the catch-all spelling
# `_` and the empty name (requests without a Host header).
_NOT_A_HOST = frozenset({"_", ""})


def _normal(name: str) -> str:
    return name.lower().rstrip(".")


def check_sites(
    tree: NginxTree,
    sites: Mapping[str, tuple[str, ...]],
    https_includes: Mapping[str, str] | None = None,
) -> list[SiteProblem]:
    """Preflight: how each site's domains are served, and what stands in the way of HTTPS for them.

    Without `https_includes` only port 80 is looked at; with it (site -> its https include path),
    also what serving the sites over HTTPS needs (`foreign-https`, `foreign-names`, `plain-port`).

    Errors:
    - `missing`: no server block listens on port 80 (callers that write a server block for managed
      sites may treat it, like `default-only`, as expected);
    - `shared-block`: two sites are named in one server block (one block gets one certificate);
    - `foreign-https`: a domain is already served on 443 by a block without that include, which certfab would not touch;
    - `foreign-names`: a block certfab converts (or converted) for a site also names hosts outside
      the site's domains (wildcards, regexes, other names): on 443 they would get a certificate
      that does not cover them, so they are refused rather than moved silently. `_` and `""` match
      no host and are allowed.
    Warnings: `default-only` (only the catch-all default server answers), `duplicate-name`,
    `split-site`, and `plain-port`: a block certfab converts also listens on other plain-HTTP
    ports (a unix socket excepted), where it keeps serving the site without TLS.
    """
    problems: list[SiteProblem] = []
    users: dict[tuple[str, int], list[str]] = {}
    by_key = {(b.file, b.line): b for b in tree.server_blocks}
    all_domains = {_normal(d) for domains in sites.values() for d in domains}
    for site, domains in sites.items():
        include = https_includes.get(site) if https_includes is not None else None
        site_blocks: list[ServerBlock] = []
        converted: list[ServerBlock] = []  # blocks that serve, or will serve, the site over HTTPS
        for domain in domains:
            https: ServerBlock | None = None
            if include is not None:
                on_443 = match_host(tree, domain, 443)
                if on_443 is not None and on_443.by_name:
                    https = on_443.block
                    if not https.has_include(include):
                        problems.append(SiteProblem(
                            site, "foreign-https", "error",
                            f"{domain} is already served over HTTPS by {https.where}, which certfab does "
                            "not manage; remove that block or the domain",
                            domain,
                        ))
                        continue
                    if https not in converted:
                        converted.append(https)
            match = match_host(tree, domain, 80)
            if match is None or not match.by_name:
                if https is not None:
                    continue  # served over HTTPS by the site's own block, with no port 80 to convert
                if match is None:
                    problems.append(SiteProblem(
                        site, "missing", "error",
                        f"no port-80 server block serves {domain}; add it to a server_name", domain,
                    ))
                else:
                    problems.append(SiteProblem(
                        site, "default-only", "warning",
                        f"no port-80 server block serves {domain} by name, only the catch-all default "
                        f"server at {match.block.where}; add it to a server_name",
                        domain,
                    ))
                continue
            block = match.block
            if block.is_certfab_redirect:
                continue
            if match.how == "exact":
                others = [
                    b
                    for b in tree.server_blocks
                    if b is not block
                    and b.listens_on(80)
                    and domain.lower() in map(str.lower, b.server_names)
                ]
                if others:
                    problems.append(SiteProblem(
                        site, "duplicate-name", "warning",
                        f"{domain}: also named in {', '.join(b.where for b in others)}; nginx uses "
                        f"{block.where} and ignores the others",
                        domain,
                    ))
            if block not in site_blocks:
                site_blocks.append(block)
            if block not in converted:
                converted.append(block)
            key = (block.file, block.line)
            if site not in users.setdefault(key, []):
                users[key].append(site)
        if len(site_blocks) > 1:
            problems.append(SiteProblem(
                site, "split-site", "warning",
                f"its domains are served by {len(site_blocks)} server blocks "
                f"({', '.join(b.where for b in site_blocks)}); each needs the certfab includes",
            ))
        if include is not None:
            own = {_normal(d) for d in domains}
            for block in converted:
                problems += _names_and_ports(site, block, own, all_domains - own)
    for key, names in users.items():
        if len(names) > 1:
            where = by_key[key].where
            for site in names:
                problems.append(SiteProblem(
                    site, "shared-block", "error",
                    f"sites {', '.join(names)} share the server block at {where}; "
                    "give each site its own server block",
                    sites=tuple(names), where=where,
                ))
    return problems


def _names_and_ports(
    site: str, block: ServerBlock, own: set[str], other_sites: set[str]
) -> list[SiteProblem]:
    """What a conversion to HTTPS would leave wrong on `block`: names outside the certificate, plain ports."""
    problems: list[SiteProblem] = []
    # a name of another site is reported as a shared block, not here
    foreign = [
        n for n in dict.fromkeys(block.server_names)
        if _normal(n) not in own and _normal(n) not in other_sites and n not in _NOT_A_HOST
    ]
    if foreign:
        problems.append(SiteProblem(
            site, "foreign-names", "error",
            f"{block.where}: the server block also names {' '.join(foreign)}, which the certificate of "
            f"site {site} does not cover; move them to a server block of their own or add them to the site",
            where=block.where,
        ))
    plain = [
        lst for lst in block.listens
        if not lst.ssl and lst.port not in (80, 443) and not (lst.address or "").startswith("unix:")
    ]
    if plain:
        listed = ", ".join(f"{lst.port} ({lst.file}:{lst.line})" for lst in plain)
        problems.append(SiteProblem(
            site, "plain-port", "warning",
            f"{block.where}: the server block also listens on plain-HTTP port {listed}; it keeps serving "
            "the site without TLS there after the conversion to HTTPS",
            where=block.where,
        ))
    return problems
