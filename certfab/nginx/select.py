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

