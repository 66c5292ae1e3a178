"""The public names of `certfab.nginx`, for modules that import them from here."""

from __future__ import annotations

from certfab.nginx.edits import (
    add_include,
    add_location_includes,
    convert_to_https,
    header_locations,
    probe_path,
    set_redirect_names,
)
from certfab.nginx.model import (
    HostMatch,
    Listen,
    NginxConfError,
    NginxTree,
    ServerBlock,
    SiteProblem,
    TlsDirective,
    redirect_marker,
)
from certfab.nginx.select import block_for_host, check_sites, match_host
from certfab.nginx.tree import parse_tree

__all__ = [
    "HostMatch",
    "Listen",
    "NginxConfError",
    "NginxTree",
    "ServerBlock",
    "SiteProblem",
    "TlsDirective",
    "add_include",
    "add_location_includes",
    "block_for_host",
    "check_sites",
    "convert_to_https",
    "header_locations",
    "match_host",
    "parse_tree",
    "probe_path",
    "redirect_marker",
    "set_redirect_names",
]
