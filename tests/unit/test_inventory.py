"""The inventory loader: every invalid value gives one precise line; valid files give a typed model."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certfab.errors import InventoryError
from certfab.inventory import (
    ACME_SERVERS,
    DEFAULT_CERTBOT_IMAGE,
    Host,
    Inventory,
    _load_yaml,
    inventory_path,
    load_inventory,
    parse_inventory,
)

REPO = Path(__file__).resolve().parents[2]
F = "inventory.yaml: "
DELETE = object()
HOST_KEYS = (
    "address, groups, sites, user, port, key_file, forward_agent, jump, sudo, webroot, certbot, renewal, tls, acme, dns01"
)
TOP_KEYS = "version, ssh, acme, defaults, groups, hosts"


def base() -> dict[str, Any]:
    """Return a small valid inventory, as YAML would load it."""
    return {
        "acme": {"email": "admin@example.com"},
        "defaults": {"renewal": {"admin_email": "ops@example.com"}},
        "groups": {"europe": ["web1", "web2"]},
        "hosts": {
            "web1": {
                "address": "203.0.113.10",
                "sites": [{"name": "shop", "domains": ["shop.example.com", "www.shop.example.com"]}],
            },
            "web2": {"sites": [{"name": "blog", "domains": ["blog.example.com"], "root": "/srv/blog"}]},
        },
    }


def mutate(data: dict[str, Any], path: tuple[Any, ...], value: object) -> dict[str, Any]:
    """Return a copy of data with the value at path replaced (or deleted with DELETE)."""
    out = copy.deepcopy(data)
    node: Any = out
    for part in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            node = node[part]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


def parse(data: object) -> Inventory:
    """Parse data as if read from ./inventory.yaml."""
    return parse_inventory(data, Path("inventory.yaml"))


def error_of(data: object) -> str:
    """Return the one-line message parse() raises for data."""
    with pytest.raises(InventoryError) as info:
        parse(data)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.exit_code == 2
    return message


TWO_SITES = [
    {"name": "shop", "domains": ["shop.example.com"]},
    {"name": "shop2", "domains": ["shop.example.com"]},
]

# (path, value, expected message); "<base>" stands for the inventory's directory.
BAD: list[tuple[tuple[Any, ...], object, str]] = [
    # top level
    ((), [], F + f"[] is not a mapping (expected keys: {TOP_KEYS})"),
    ((), None, F + "the inventory is empty; it needs at least 'acme' and 'hosts'"),
    (("host",), {}, F + f"'host' is not a known key; did you mean 'hosts'? (known keys: {TOP_KEYS})"),
    (("version",), 2, F + "version: 2 is not a supported version (only 1)"),
    (("version",), True, F + "version: True is not a supported version (only 1)"),
    # ssh
    (
        ("ssh",),
        [],
        F + "ssh: [] is not a mapping (expected keys: known_hosts, connect_timeout, command_timeout, config_file)",
    ),
    (
        ("ssh", "conect_timeout"),
        5,
        F + "ssh: 'conect_timeout' is not a known key; did you mean 'connect_timeout'? "
        "(known keys: known_hosts, connect_timeout, command_timeout, config_file)",
    ),
    (
        ("ssh", "known_hosts"),
        "~/$HOME/kh",
        F + "ssh.known_hosts: '~/$HOME/kh' is not a valid file path (character '$' not allowed)",
    ),
    (("ssh", "connect_timeout"), 0, F + "ssh.connect_timeout: 0 is not a number of seconds greater than 0"),
    (
        ("ssh", "connect_timeout"),
        math.inf,
        F + "ssh.connect_timeout: inf is not a number of seconds greater than 0",
    ),
    # Below one second Fabric would truncate the timeout to 0, which means no timeout at all.
    (("ssh", "connect_timeout"), 0.5, F + "ssh.connect_timeout: 0.5 must be at least 1 second"),
    (("ssh", "connect_timeout"), 0.999, F + "ssh.connect_timeout: 0.999 must be at least 1 second"),
    (
        ("ssh", "config_file"),
        "~/$HOME/ssh_config",
        F + "ssh.config_file: '~/$HOME/ssh_config' is not a valid file path (character '$' not allowed)",
    ),
    (("ssh", "command_timeout"), "900", F + "ssh.command_timeout: '900' is not a number of seconds"),
    (("ssh", "command_timeout"), False, F + "ssh.command_timeout: False is not a number of seconds"),
    # acme
    (
        ("acme",),
        DELETE,
        F + "key 'acme' is required (at least acme.email, the ACME account e-mail address)",
    ),
    (("acme", "email"), DELETE, F + "acme: key 'email' is required (the ACME account e-mail address)"),
    (
        ("acme", "email"),
        "admin",
        F
        + "acme.email: 'admin' is not a valid e-mail address (expected exactly one '@', as in admin@example.com)",
    ),
    (
        ("acme", "email"),
        "admin@example.com;reboot",
        F
        + "acme.email: 'admin@example.com;reboot' is not a valid e-mail address (domain: character ';' not allowed)",
    ),
    (
        ("acme", "email"),
        "ad min@example.com",
        F + "acme.email: 'ad min@example.com' is not a valid e-mail address (character ' ' not allowed)",
    ),
    (
        ("acme", "server"),
        "http://acme.example.com/dir",
        F
        + "acme.server: 'http://acme.example.com/dir' uses http://; the ACME server must be reached over https://",
    ),
    (("acme", "server"), "prod", F + "acme.server: 'prod' is not production, staging or an https:// URL"),
    (
        ("acme", "server"),
        "https://acme.example.com/dir?x=$(id)",
        F + "acme.server: 'https://acme.example.com/dir?x=$(id)' is not a valid ACME directory URL "
        "(character '?' not allowed)",
    ),
    (
        ("acme", "ca_bundle"),
        "missing.pem",
        F + "acme.ca_bundle: 'missing.pem' does not exist (looked for <base>/missing.pem)",
    ),
    (("acme", "trust_roots"), ".", F + "acme.trust_roots: '.' is not a regular file (<base>)"),
    (("acme", "key_type"), "ed25519", F + "acme.key_type: 'ed25519' is not one of: ecdsa, rsa"),
    # defaults: connection
    (
        ("defaults", "address"),
        "x",
        F
        + "defaults: 'address' is not a known key (known keys: user, port, key_file, forward_agent, jump, sudo, "
        "webroot, certbot, renewal, tls, acme, dns01)",
    ),
    (
        ("defaults", "user"),
        "root;id",
        F + "defaults.user: 'root;id' is not a valid user name (character ';' not allowed)",
    ),
    (
        ("defaults", "user"),
        "-oops",
        F + "defaults.user: '-oops' is not a valid user name (must not start with '-')",
    ),
    (("defaults", "port"), 0, F + "defaults.port: 0 is out of range (1-65535)"),
    (("defaults", "port"), "22", F + "defaults.port: '22' is not an integer (remove the quotes)"),
    (("defaults", "port"), True, F + "defaults.port: True is not an integer (it is a boolean)"),
    (("defaults", "port"), None, F + "defaults.port: None is not an integer"),
    (
        ("defaults", "forward_agent"),
        "yes",
        F + "defaults.forward_agent: 'yes' is not a boolean (use true or false)",
    ),
    (
        ("hosts", "web1", "forward_agent"),
        "false",
        F + "hosts.web1.forward_agent: 'false' is not a boolean (write true or false without quotes)",
    ),
    (
        ("defaults", "jump"),
        "admin@bastion:22x",
        F + "defaults.jump: 'admin@bastion:22x' has a port that is not a number in 1-65535",
    ),
    (
        ("hosts", "web1", "jump"),
        "root;id@bastion",
        F + "hosts.web1.jump: 'root;id@bastion' is not a valid user name (character ';' not allowed)",
    ),
    (
        ("hosts", "web1", "jump"),
        "[fe80::1",
        F + "hosts.web1.jump: '[fe80::1' is not [user@]address[:port] (write IPv6 addresses as [address]:port)",
    ),
    (
        ("hosts", "web1", "jump"),
        2222,
        F + "hosts.web1.jump: 2222 is not a jump host (a host name of this inventory, or [user@]address[:port])",
    ),
    (("hosts", "web1", "jump"), "web1", F + "hosts.web1.jump: 'web1' jumps in a loop (web1 -> web1); "
     "a jump host must be reachable without it"),
    (("defaults", "sudo"), "yes", F + "defaults.sudo: 'yes' is not a boolean (use true or false)"),
    (
        ("defaults", "sudo"),
        "true",
        F + "defaults.sudo: 'true' is not a boolean (write true or false without quotes)",
    ),
    (("defaults", "sudo"), 1, F + "defaults.sudo: 1 is not a boolean (use true or false)"),
    (
        ("defaults", "key_file"),
        "keys/none",
        F + "defaults.key_file: 'keys/none' does not exist (looked for <base>/keys/none)",
    ),
    (
        ("defaults", "webroot"),
        "var/www",
        F
        + "defaults.webroot: 'var/www' is not a valid path on the host (must be absolute, starting with '/')",
    ),
    (
        ("defaults", "webroot"),
        "/var/www/$(reboot)",
        F
        + "defaults.webroot: '/var/www/$(reboot)' is not a valid path on the host (character '$' not allowed)",
    ),
    (
        ("defaults", "webroot"),
        "/var/www/../etc",
        F + "defaults.webroot: '/var/www/../etc' is not a valid path on the host ('..' not allowed)",
    ),
    (
        ("defaults", "webroot"),
        "/var/www le",
        F + "defaults.webroot: '/var/www le' is not a valid path on the host (character ' ' not allowed)",
    ),
    (
        ("defaults", "webroot"),
        "/var/www:/etc",
        F + "defaults.webroot: '/var/www:/etc' is not a valid path on the host (character ':' not allowed)",
    ),
    # defaults: certbot
    (
        ("defaults", "certbot", "image"),
        "certbot/certbot:latest",
        F + "defaults.certbot.image: 'certbot/certbot:latest' uses the tag 'latest'; pin a version, "
        "e.g. certbot/certbot:v5.1.0",
    ),
    (
        ("defaults", "certbot", "image"),
        "certbot/certbot",
        F
        + "defaults.certbot.image: 'certbot/certbot' has no tag; pin a version, e.g. certbot/certbot:v5.1.0",
    ),
    (
        ("defaults", "certbot", "image"),
        "certbot/certbot:v5;id",
        F
        + "defaults.certbot.image: 'certbot/certbot:v5;id' is not a valid image reference (character ';' not allowed)",
    ),
    (
        ("defaults", "certbot", "runtime"),
        "lxc",
        F + "defaults.certbot.runtime: 'lxc' is not one of: docker, podman",
    ),
    (
        ("defaults", "certbot", "version"),
        "5",
        F + "defaults.certbot: 'version' is not a known key (known keys: image, runtime)",
    ),
    # defaults: renewal
    (
        ("defaults", "renewal", "admin_email"),
        DELETE,
        F + "hosts.web1.renewal: key 'admin_email' is required (where renewal mails go); "
        "set it here or in defaults.renewal",
    ),
    (
        ("defaults", "renewal", "admin_email"),
        "ops@$(hostname).example.com",
        F + "defaults.renewal.admin_email: 'ops@$(hostname).example.com' is not a valid e-mail address "
        "(domain: character '$' not allowed)",
    ),
    (
        ("defaults", "renewal", "times_per_day"),
        3,
        F + "defaults.renewal.times_per_day: 3 is out of range (1-2)",
    ),
    (("defaults", "renewal", "hour"), 24, F + "defaults.renewal.hour: 24 is out of range (0-23)"),
    (
        ("defaults", "renewal", "hour"),
        "3",
        F + "defaults.renewal.hour: '3' is not an integer (remove the quotes)",
    ),
    (
        ("defaults", "renewal", "mail_on_success"),
        "no",
        F + "defaults.renewal.mail_on_success: 'no' is not a boolean (use true or false)",
    ),
    # defaults: tls
    (
        ("defaults", "tls", "profile"),
        "Modern",
        F + "defaults.tls.profile: 'Modern' is not one of: modern, intermediate, old",
    ),
    (
        ("defaults", "tls", "hsts_max_age"),
        -1,
        F + "defaults.tls.hsts_max_age: -1 is out of range (0-2147483647)",
    ),
    (
        ("defaults", "tls", "hsts_include_subdomains"),
        "on",
        F + "defaults.tls.hsts_include_subdomains: 'on' is not a boolean (use true or false)",
    ),
    (
        ("defaults", "tls"),
        {"hsts_preload": True, "hsts_include_subdomains": False},
        F + "hosts.web1.tls: hsts_preload needs hsts_include_subdomains: true and hsts_max_age >= 31536000",
    ),
    (
        ("defaults", "tls", "dhparam_bits"),
        1024,
        F + "defaults.tls.dhparam_bits: 1024 is not one of: null, 2048, 3072, 4096",
    ),
    (
        ("defaults", "tls", "dhparam_bits"),
        True,
        F + "defaults.tls.dhparam_bits: True is not one of: null, 2048, 3072, 4096",
    ),
    # groups
    (("groups",), "europe", F + "groups: 'europe' is not a mapping of group names to lists of host names"),
    (
        ("groups", "europe"),
        ["web1", "web9"],
        F + "groups.europe[1]: 'web9' is not a host in this inventory (known hosts: web1, web2)",
    ),
    (("groups", "europe"), ["web1", "web1"], F + "groups.europe[1]: 'web1' is listed twice"),
    (("groups", "europe"), "web1", F + "groups.europe: 'web1' is not a list (expected a list of names)"),
    (
        ("groups", "web1"),
        ["web2"],
        F + "groups: 'web1' is also a host name; group and host names must differ",
    ),
    (
        ("groups", "Europe"),
        ["web1"],
        F + "groups: 'Europe' is not a valid group name (character 'E' not allowed; use lower case)",
    ),
    # hosts
    (("hosts",), DELETE, F + "key 'hosts' is required (the servers to manage, by name)"),
    (("hosts",), {}, F + "hosts: {} is not a mapping of host names to hosts (at least one host)"),
    (
        ("hosts", "Web 1"),
        {},
        F + "hosts: 'Web 1' is not a valid host name (character 'W' not allowed; use lower case)",
    ),
    (
        ("hosts", "web1;reboot"),
        {},
        F + "hosts: 'web1;reboot' is not a valid host name (character ';' not allowed)",
    ),
    (("hosts", 1), {}, F + "hosts: 1 is not a string (expected a host name)"),
    (
        ("hosts", "web_3"),
        {},
        F
        + "hosts.web_3: has no 'address' and its name 'web_3' is not a valid address (character '_' not allowed); "
        "set address",
    ),
    (
        ("hosts", "web1", "adress"),
        "203.0.113.10",
        F + f"hosts.web1: 'adress' is not a known key; did you mean 'address'? (known keys: {HOST_KEYS})",
    ),
    (
        ("hosts", "web1", "address"),
        "203.0.113.10; reboot",
        F + "hosts.web1.address: '203.0.113.10; reboot' is not a valid address (character ';' not allowed)",
    ),
    (
        ("hosts", "web1", "address"),
        "-oProxyCommand",
        F + "hosts.web1.address: '-oProxyCommand' is not a valid address (must not start with '-')",
    ),
    (
        ("hosts", "web2", "address"),
        "203.0.113.10",
        F + "hosts.web2.address: '203.0.113.10' is already the address of host 'web1' (same port 22)",
    ),
    (
        ("hosts", "web1", "groups"),
        ["web2"],
        F + "hosts.web1.groups[0]: 'web2' is a host name; group and host names must differ",
    ),
    (
        ("hosts", "web1", "groups"),
        "europe",
        F + "hosts.web1.groups: 'europe' is not a list (expected a list of names)",
    ),
    (("hosts", "web1", "port"), 65536, F + "hosts.web1.port: 65536 is out of range (1-65535)"),
    (
        ("hosts", "web1", "tls", "profile"),
        "fast",
        F + "hosts.web1.tls.profile: 'fast' is not one of: modern, intermediate, old",
    ),
    # sites
    (
        ("hosts", "web1", "sites"),
        {"name": "shop"},
        F + "hosts.web1.sites: {'name': 'shop'} is not a list (expected a list of sites)",
    ),
    (
        ("hosts", "web1", "sites", 0),
        None,
        F + "hosts.web1.sites[0]: None is not a mapping (expected keys: name, domains, root, upstream, acme, challenge, redirect)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains"),
        DELETE,
        F + "hosts.web1.sites[0]: key 'domains' is required (a site needs a name and its domains)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domain"),
        ["x.example.com"],
        F + "hosts.web1.sites[0]: 'domain' is not a known key; did you mean 'domains'? "
        "(known keys: name, domains, root, upstream, acme, challenge, redirect)",
    ),
    (
        ("hosts", "web1", "sites", 0, "name"),
        "shop/../../etc",
        F + "hosts.web1.sites[0].name: 'shop/../../etc' is not a valid site name (character '/' not allowed)",
    ),
    (
        ("hosts", "web1", "sites", 0, "name"),
        "Shop",
        F
        + "hosts.web1.sites[0].name: 'Shop' is not a valid site name (character 'S' not allowed; use lower case)",
    ),
    (
        ("hosts", "web1", "sites", 0, "name"),
        "a" * 64,
        F + f"hosts.web1.sites[0].name: '{'a' * 64}' is not a valid site name (64 characters; at most 63)",
    ),
    (
        ("hosts", "web1", "sites"),
        TWO_SITES[:1] + [{"name": "shop", "domains": ["x.example.com"]}],
        F + "hosts.web1.sites[1].name: 'shop' is already the name of sites[0]",
    ),
    (
        ("hosts", "web1", "sites"),
        TWO_SITES,
        F + "hosts.web1.sites[1].domains[0]: 'shop.example.com' is already in site 'shop' (sites[0]); "
        "a domain may be in only one site per host",
    ),
    (
        ("hosts", "web2", "sites", 0, "upstream"),
        "http://127.0.0.1:8080",
        F + "hosts.web2.sites[0]: both 'root' and 'upstream' are set; a managed site has one or the other",
    ),
    (
        ("hosts", "web2", "sites", 0, "root"),
        "srv/blog",
        F
        + "hosts.web2.sites[0].root: 'srv/blog' is not a valid path on the host (must be absolute, starting with '/')",
    ),
    (
        ("hosts", "web2", "sites", 0, "root"),
        "/",
        F + "hosts.web2.sites[0].root: '/' is not a valid path on the host (must not be '/')",
    ),
    (
        ("hosts", "web2", "sites", 0, "root"),
        "/srv/blog;",
        F
        + "hosts.web2.sites[0].root: '/srv/blog;' is not a valid path on the host (character ';' not allowed)",
    ),
    (
        ("hosts", "web1", "sites", 0, "upstream"),
        "ftp://127.0.0.1",
        F + "hosts.web1.sites[0].upstream: 'ftp://127.0.0.1' is not a valid upstream URL "
        "(must start with http:// or https://)",
    ),
    (
        ("hosts", "web1", "sites", 0, "upstream"),
        "http://127.0.0.1:8080/$uri",
        F + "hosts.web1.sites[0].upstream: 'http://127.0.0.1:8080/$uri' is not a valid upstream URL "
        "(character '$' not allowed)",
    ),
    (
        ("hosts", "web1", "sites", 0, "upstream"),
        "http://127.0.0.1:99999",
        F + "hosts.web1.sites[0].upstream: 'http://127.0.0.1:99999' is not a valid upstream URL "
        "(port '99999' is not 1-65535)",
    ),
    # domains
    (
        ("hosts", "web1", "sites", 0, "domains"),
        [],
        F + "hosts.web1.sites[0].domains: [] is empty; list at least one domain",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains"),
        "shop.example.com",
        F + "hosts.web1.sites[0].domains: 'shop.example.com' is not a list (expected a list of DNS names)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains"),
        ["shop.example.com", "SHOP.example.com."],
        F + "hosts.web1.sites[0].domains[1]: 'SHOP.example.com.' is listed twice (also domains[0])",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 1),
        "ex;ample.com",
        F
        + "hosts.web1.sites[0].domains[1]: 'ex;ample.com' is not a valid DNS name (character ';' not allowed)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        "*.example.com",
        F + "hosts.web1.sites[0].domains[0]: '*.example.com' is a wildcard; wildcards need challenge: dns-01 "
        "(HTTP-01 cannot validate them)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        "p\u0430ypal.com",
        F
        + "hosts.web1.sites[0].domains[0]: 'p\u0430ypal.com' is not a valid DNS name (label 'p\u0430ypal' mixes "
        "Latin and Cyrillic letters, as look-alike names do: '\u0430' is CYRILLIC SMALL LETTER A)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        "xn--pypal-4ve.com",
        F
        + "hosts.web1.sites[0].domains[0]: 'xn--pypal-4ve.com' is not a valid DNS name (label 'p\u0430ypal' mixes "
        "Latin and Cyrillic letters, as look-alike names do: '\u0430' is CYRILLIC SMALL LETTER A)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        "xn--abc.com",
        F
        + "hosts.web1.sites[0].domains[0]: 'xn--abc.com' is not a valid DNS name (label 'xn--abc' is not valid punycode)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        "ab--cd.example.com",
        F + "hosts.web1.sites[0].domains[0]: 'ab--cd.example.com' is not a valid DNS name "
        "(label 'ab--cd' has '--' in positions 3-4, reserved for IDNs)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        "localhost",
        F + "hosts.web1.sites[0].domains[0]: 'localhost' is not a valid DNS name "
        "(needs at least two labels, like example.com)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        "a" * 64 + ".com",
        F + f"hosts.web1.sites[0].domains[0]: '{'a' * 64}.com' is not a valid DNS name "
        f"(label '{'a' * 20}...' is 64 characters; at most 63)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        "shop..example.com",
        F
        + "hosts.web1.sites[0].domains[0]: 'shop..example.com' is not a valid DNS name (empty label ('..'))",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        "-shop.example.com",
        F
        + "hosts.web1.sites[0].domains[0]: '-shop.example.com' is not a valid DNS name (must not start with '-')",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        "shop-.example.com",
        F + "hosts.web1.sites[0].domains[0]: 'shop-.example.com' is not a valid DNS name "
        "(label 'shop-' starts or ends with '-')",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        "shop.example.com\nreturn 200",
        F + "hosts.web1.sites[0].domains[0]: 'shop.example.com\\nreturn 200' is not a valid DNS name "
        "(character '\\n' not allowed)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        "$(reboot).example.com",
        F
        + "hosts.web1.sites[0].domains[0]: '$(reboot).example.com' is not a valid DNS name (character '$' not allowed)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        "`id`.example.com",
        F
        + "hosts.web1.sites[0].domains[0]: '`id`.example.com' is not a valid DNS name (character '`' not allowed)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        "shop.example.com#",
        F
        + "hosts.web1.sites[0].domains[0]: 'shop.example.com#' is not a valid DNS name (character '#' not allowed)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        'sh"op.example.com',
        F
        + "hosts.web1.sites[0].domains[0]: 'sh\"op.example.com' is not a valid DNS name (character '\"' not allowed)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        "{shop}.example.com",
        F
        + "hosts.web1.sites[0].domains[0]: '{shop}.example.com' is not a valid DNS name (character '{' not allowed)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        "sh\\op.example.com",
        F + "hosts.web1.sites[0].domains[0]: 'sh\\\\op.example.com' is not a valid DNS name "
        "(character '\\\\' not allowed)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        "shop_1.example.com",
        F
        + "hosts.web1.sites[0].domains[0]: 'shop_1.example.com' is not a valid DNS name (character '_' not allowed)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        "sh\u200bop.example.com",
        F + "hosts.web1.sites[0].domains[0]: 'sh\\u200bop.example.com' is not a valid DNS name "
        "(character '\\u200b' not allowed)",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        "192.0.2.1",
        F + "hosts.web1.sites[0].domains[0]: '192.0.2.1' is an IP address; certificates here are issued for "
        "DNS names only",
    ),
    (
        ("hosts", "web1", "sites", 0, "domains", 0),
        42,
        F + "hosts.web1.sites[0].domains[0]: 42 is not a string (expected a DNS name)",
    ),
]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test with a fresh temporary directory as the current directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    BAD,
    ids=[f"{i}-{'.'.join(map(str, p))}" for i, (p, _, _) in enumerate(BAD)],
)
def test_bad_value_gives_one_precise_line(
    in_tmp: Path, path: tuple[Any, ...], value: object, expected: str
) -> None:
    data = value if path == () else mutate(base(), path, value)
    assert error_of(data) == expected.replace("<base>", str(in_tmp))


def test_too_many_domains() -> None:
    domains = [f"d{i}.example.com" for i in range(101)]
    message = error_of(mutate(base(), ("hosts", "web1", "sites", 0, "domains"), domains))
    assert message.startswith(F + "hosts.web1.sites[0].domains: ['d0.example.com', ")
    assert message.endswith("has 101 names; a certificate holds at most 100")


def test_name_longer_than_253() -> None:
    name = ".".join(["a" * 60] * 4) + ".example.com"  # 255 characters
    message = error_of(mutate(base(), ("hosts", "web1", "sites", 0, "domains", 0), name))
    assert message.startswith(F + "hosts.web1.sites[0].domains[0]: 'aaaa")
    assert message.endswith("is not a valid DNS name (255 characters; at most 253)")


def test_bad_table_covers_every_field() -> None:
    fields = {".".join(str(p) for p in path if not isinstance(p, int)) for path, _, _ in BAD}
    for wanted in [
        "version",
        "ssh.known_hosts",
        "ssh.connect_timeout",
        "ssh.command_timeout",
        "ssh.config_file",
        "acme.email",
        "acme.server",
        "acme.ca_bundle",
        "acme.trust_roots",
        "acme.key_type",
        "defaults.user",
        "defaults.port",
        "defaults.key_file",
        "defaults.forward_agent",
        "defaults.jump",
        "defaults.sudo",
        "defaults.webroot",
        "defaults.certbot.image",
        "defaults.certbot.runtime",
        "defaults.renewal.admin_email",
        "defaults.renewal.times_per_day",
        "defaults.renewal.hour",
        "defaults.renewal.mail_on_success",
        "defaults.tls.profile",
        "defaults.tls.hsts_max_age",
        "defaults.tls.hsts_include_subdomains",
        "defaults.tls",
        "defaults.tls.dhparam_bits",
        "groups.europe",
        "hosts.web1.address",
        "hosts.web1.groups",
        "hosts.web1.sites.name",
        "hosts.web1.sites.domains",
        "hosts.web2.sites.root",
        "hosts.web1.sites.upstream",
    ]:
        assert wanted in fields, wanted
    assert len(BAD) >= 40


# ---------------------------------------------------------------------------------------------- good path


def test_builtin_defaults_are_applied() -> None:
    inv = parse(base())
    web2 = inv.host("web2")
    assert web2.address == "web2"
    assert (web2.user, web2.port, web2.key_file, web2.sudo) == ("root", 22, None, False)
    assert web2.webroot == "/var/www/letsencrypt"
    assert (web2.certbot.image, web2.certbot.runtime) == (DEFAULT_CERTBOT_IMAGE, "docker")
    assert web2.renewal.admin_email == "ops@example.com"
    assert (web2.renewal.times_per_day, web2.renewal.hour, web2.renewal.mail_on_success) == (2, None, True)
    assert web2.tls.profile == "intermediate"
    assert (web2.tls.hsts_max_age, web2.tls.hsts_include_subdomains, web2.tls.hsts_preload) == (
        63072000,
        True,
        False,
    )
    assert web2.tls.dhparam_bits is None
    assert inv.acme.server == ACME_SERVERS["production"]
    assert (inv.acme.server_name, inv.acme.key_type, inv.acme.ca_bundle, inv.acme.trust_roots) == (
        "production",
        "ecdsa",
        None,
        None,
    )
    assert (inv.ssh.connect_timeout, inv.ssh.command_timeout) == (10.0, 900.0)
    assert inv.ssh.known_hosts == Path("~/.ssh/known_hosts").expanduser()
    assert inv.path == Path.cwd() / "inventory.yaml"


def test_host_overrides_defaults_key_by_key() -> None:
    data = base()
    data["defaults"].update(
        {
            "user": "deploy",
            "tls": {"hsts_max_age": 300, "profile": "old"},
            "renewal": {"admin_email": "ops@example.com", "hour": 3},
        }
    )
    data["hosts"]["web1"].update(
        {"user": "admin", "port": 2222, "sudo": True, "tls": {"profile": "modern"}, "renewal": {"hour": None}}
    )
    inv = parse(data)
    web1, web2 = inv.hosts
    assert (web1.user, web1.port, web1.sudo) == ("admin", 2222, True)
    assert (web1.tls.profile, web1.tls.hsts_max_age) == ("modern", 300)
    assert web1.renewal.hour is None  # an explicit null overrides the defaults' 3
    assert (web2.user, web2.tls.profile, web2.renewal.hour) == ("deploy", "old", 3)
    assert web1.renewal.admin_email == "ops@example.com"


def test_ssh_fields_set_name_what_the_inventory_gives_so_ssh_config_fills_only_the_rest() -> None:
    data = base()
    data["defaults"]["user"] = "deploy"
    data["hosts"]["web1"].update({"port": 2222, "jump": "admin@[2001:db8::7]:2200", "forward_agent": True})
    inv = parse(data)
    web1, web2 = inv.hosts
    assert web1.ssh_fields_set == frozenset({"user", "port", "jump"})
    assert (web1.jump, web1.forward_agent) == ("admin@[2001:db8::7]:2200", True)
    assert web2.ssh_fields_set == frozenset({"user"})
    assert (web2.jump, web2.forward_agent, web2.port) == (None, False, 22)
    assert inv.ssh.config_file == Path("~/.ssh/config").expanduser()


def test_jump_through_another_inventory_host_and_loops_refused() -> None:
    data = base()
    data["hosts"]["web2"]["jump"] = "web1"
    assert parse(data).host("web2").jump == "web1"
    data["hosts"]["web1"]["jump"] = "web2"
    assert error_of(data) == (
        F + "hosts.web1.jump: 'web2' jumps in a loop (web1 -> web2 -> web1); a jump host must be reachable "
        "without it"
    )


def test_ssh_config_file_null_reads_none() -> None:
    data = base()
    data["ssh"] = {"config_file": None, "connect_timeout": 1}
    inv = parse(data)
    assert inv.ssh.config_file is None
    assert inv.ssh.connect_timeout == 1.0


def test_idn_and_normalisation() -> None:
    data = mutate(
        base(),
        ("hosts", "web1", "sites", 0, "domains"),
        ["bücher.example", "WWW.Shop.Example.com.", "xn--bcher-kva.de"],
    )
    data = mutate(data, ("acme", "email"), "admin@bücher.example")
    inv = parse(data)
    assert inv.host("web1").sites[0].domains == (
        "xn--bcher-kva.example",
        "www.shop.example.com",
        "xn--bcher-kva.de",
    )
    assert inv.acme.email == "admin@xn--bcher-kva.example"
    assert inv.host("web1").domains == (
        "xn--bcher-kva.example",
        "www.shop.example.com",
        "xn--bcher-kva.de",
    )


def test_idn_in_two_sites_is_one_domain() -> None:
    sites = [
        {"name": "a", "domains": ["bücher.example"]},
        {"name": "b", "domains": ["xn--bcher-kva.example"]},
    ]
    message = error_of(mutate(base(), ("hosts", "web1", "sites"), sites))
    assert message == (
        F + "hosts.web1.sites[1].domains[0]: 'xn--bcher-kva.example' is already in site 'a' (sites[0]); "
        "a domain may be in only one site per host"
    )


def test_scripts_that_belong_together_are_accepted() -> None:
    domains = ["日本語テスト.jp", "ελληνικά.example", "пример.example"]
    inv = parse(mutate(base(), ("hosts", "web1", "sites", 0, "domains"), domains))
    assert all(d.startswith("xn--") for d in inv.host("web1").domains)


def test_managed_sites() -> None:
    data = mutate(base(), ("hosts", "web1", "sites", 0, "upstream"), "HTTP://127.0.0.1:8080/app/")
    inv = parse(data)
    shop = inv.host("web1").sites[0]
    assert shop.upstream == "http://127.0.0.1:8080/app/" and shop.root is None and shop.managed
    blog = inv.host("web2").sites[0]
    assert blog.root == "/srv/blog" and blog.managed
    plain = parse(base()).host("web1").sites[0]
    assert not plain.managed


def test_acme_servers() -> None:
    assert parse(mutate(base(), ("acme", "server"), "staging")).acme.server == ACME_SERVERS["staging"]
    custom = parse(mutate(base(), ("acme", "server"), "https://10.77.0.1:14000/dir")).acme
    assert (custom.server, custom.server_name) == ("https://10.77.0.1:14000/dir", "custom")
    same = parse(mutate(base(), ("acme", "server"), ACME_SERVERS["production"])).acme
    assert same.server_name == "production"


def test_model_is_frozen() -> None:
    inv = parse(base())
    with pytest.raises(dataclasses.FrozenInstanceError):
        inv.hosts[0].port = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        inv.groups["x"] = ("web1",)  # type: ignore[index]
    hash(inv)


def test_yaml_null_sections_mean_empty() -> None:
    data = base()
    data.update({"ssh": None, "groups": None})
    data["hosts"]["web3"] = None
    inv = parse(data)
    assert inv.host("web3").sites == ()
    assert dict(inv.groups) == {}
    assert inv.ssh.connect_timeout == 10.0


# ---------------------------------------------------------------------------------------------- groups, select


def fleet() -> Inventory:
    """Return an inventory with groups declared both ways."""
    data = base()
    data["hosts"]["web3"] = {"address": "198.51.100.3", "groups": ["us", "europe"]}
    data["hosts"]["web4"] = {"address": "198.51.100.3", "port": 2222, "groups": ["us"]}
    data["groups"]["empty"] = []
    return parse(data)


def test_groups_are_merged_in_inventory_order() -> None:
    inv = fleet()
    assert dict(inv.groups) == {"europe": ("web1", "web2", "web3"), "empty": (), "us": ("web3", "web4")}
    assert inv.host("web3").groups == ("europe", "us")
    assert inv.host("web1").groups == ("europe",)


def names(hosts: tuple[Host, ...]) -> list[str]:
    """Return the names of hosts."""
    return [host.name for host in hosts]


def test_select() -> None:
    inv = fleet()
    assert names(inv.select(None)) == ["web1", "web2", "web3", "web4"]
    assert names(inv.select("us")) == ["web3", "web4"]
    assert names(inv.select(" web4 , europe ")) == ["web1", "web2", "web3", "web4"]
    assert names(inv.select("web2,WEB1")) == ["web1", "web2"]


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (
            "asia",
            "unknown host or group 'asia'; known groups: europe, empty, us; known hosts: web1, web2, web3, web4",
        ),
        (
            "europe,web9",
            "unknown host or group 'web9'; known groups: europe, empty, us; known hosts: web1, web2, web3, web4",
        ),
        (" , ", "empty selection ' , '; name groups or hosts, separated by commas"),
        ("empty", "'empty' selects no hosts (its groups are empty)"),
    ],
)
def test_select_errors(limit: str, expected: str) -> None:
    with pytest.raises(InventoryError) as info:
        fleet().select(limit)
    assert str(info.value) == expected


def test_host_lookup() -> None:
    inv = fleet()
    assert inv.host("web2").name == "web2"
    with pytest.raises(InventoryError, match=r"^unknown host 'web9'; known hosts: web1, web2, web3, web4$"):
        inv.host("web9")


def test_host_for_address() -> None:
    data = base()
    data["hosts"]["v6"] = {"address": "2001:db8::1"}
    data["hosts"]["named"] = {"address": "Edge.Example.net"}
    inv = parse(data)
    assert inv.host_for_address("web2").name == "web2"  # by name, address defaults to the name
    assert inv.host_for_address("203.0.113.10").name == "web1"
    assert inv.host_for_address("2001:0db8:0::1").name == "v6"
    assert inv.host_for_address("edge.example.net").name == "named"
    with pytest.raises(
        InventoryError, match=r"^no host named '10.0.0.1' or with that address; known hosts: "
    ):
        inv.host_for_address("10.0.0.1")
    with pytest.raises(
        InventoryError, match=r"is the address of several hosts \(web3, web4\); use a host name"
    ):
        fleet().host_for_address("198.51.100.3")


def test_name_matches_before_address() -> None:
    data = base()
    data["hosts"]["web3"] = {"address": "web1"}  # odd, but the name must win
    assert parse(data).host_for_address("web1").name == "web1"


# ---------------------------------------------------------------------------------------------- files


def write(path: Path, text: str) -> Path:
    """Write text to path, creating directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = """\
acme: {email: admin@example.com}
defaults: {renewal: {admin_email: ops@example.com}}
hosts:
  web1:
    sites: [{name: shop, domains: [shop.example.com]}]
"""


def test_relative_paths_resolve_against_inventory_dir(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = in_tmp / "home"
    monkeypatch.setenv("HOME", str(home))
    write(in_tmp / "conf" / "keys" / "id_ed25519", "key")
    write(home / "pebble.pem", "pem")
    write(in_tmp / "roots.pem", "pem")
    text = MINIMAL.replace(
        "acme: {email: admin@example.com}",
        "acme: {email: admin@example.com, ca_bundle: ~/pebble.pem, trust_roots: ../roots.pem}\n"
        "ssh: {known_hosts: state/known_hosts}",
    ).replace("defaults: {", "defaults: {key_file: keys/id_ed25519, ")
    write(in_tmp / "conf" / "inventory.yaml", text)
    inv = load_inventory("conf/inventory.yaml")
    assert inv.path == in_tmp / "conf" / "inventory.yaml"
    assert inv.host("web1").key_file == in_tmp / "conf" / "keys" / "id_ed25519"
    assert inv.acme.ca_bundle == home / "pebble.pem"
    assert inv.acme.trust_roots == in_tmp / "roots.pem"
    assert inv.ssh.known_hosts == in_tmp / "conf" / "state" / "known_hosts"  # need not exist


def test_errors_name_the_file_as_given(in_tmp: Path) -> None:
    write(in_tmp / "conf" / "fleet.yaml", MINIMAL.replace("shop.example.com", "shop;.example.com"))
    with pytest.raises(InventoryError) as info:
        load_inventory("conf/fleet.yaml")
    assert str(info.value) == (
        "conf/fleet.yaml: hosts.web1.sites[0].domains[0]: 'shop;.example.com' is not a valid DNS name "
        "(character ';' not allowed)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "hosts: [\n",
            "inventory.yaml:2:1: invalid YAML: expected the node content, but found '<stream end>'",
        ),
        (
            "acme:\n  email: a@b.com\n   x: 1\n",
            "inventory.yaml:3:5: invalid YAML: mapping values are not allowed here",
        ),
        ("acme: {email: a@b.com}\nacme: {}\n", "inventory.yaml:2:1: invalid YAML: duplicate key 'acme'"),
        (
            "a: !!python/object:os.system {}\n",
            "inventory.yaml:1:4: invalid YAML: could not determine a constructor",
        ),
        ("", "inventory.yaml: the inventory is empty; it needs at least 'acme' and 'hosts'"),
        ("- 1\n", "inventory.yaml: [1] is not a mapping"),
        (
            MINIMAL + "    sudo: yes\n",
            "inventory.yaml: hosts.web1.sudo: 'yes' is not a boolean (use true or false)",
        ),
        (MINIMAL + "    sudo: True\n", None),
        ("\x00", "inventory.yaml: invalid YAML: unacceptable character #x0000"),
    ],
)
def test_yaml_problems_are_one_line(in_tmp: Path, text: str, expected: str | None) -> None:
    write(in_tmp / "inventory.yaml", text)
    if expected is None:
        assert load_inventory("inventory.yaml").host("web1").sudo is True
        return
    with pytest.raises(InventoryError) as info:
        load_inventory("inventory.yaml")
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(expected)


def test_missing_file_says_how_to_point_at_one(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CERTFAB_INVENTORY", raising=False)
    with pytest.raises(InventoryError) as info:
        load_inventory()
    assert str(info.value) == (
        "inventory.yaml: no such inventory file; point at one with --inventory PATH or CERTFAB_INVENTORY=PATH"
    )
    assert info.value.exit_code == 2


def test_other_file_problems(in_tmp: Path) -> None:
    (in_tmp / "dir.yaml").mkdir()
    with pytest.raises(InventoryError, match=r"^dir.yaml: is a directory, not an inventory file$"):
        load_inventory("dir.yaml")
    (in_tmp / "latin1.yaml").write_bytes(b"acme: {email: caf\xe9@example.com}\n")
    with pytest.raises(InventoryError, match=r"^latin1.yaml: not UTF-8 text \(byte 0xe9 at offset 17\)$"):
        load_inventory("latin1.yaml")


def test_inventory_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CERTFAB_INVENTORY", raising=False)
    assert inventory_path() == Path("inventory.yaml")
    monkeypatch.setenv("CERTFAB_INVENTORY", "lab/inventory.yaml")
    assert inventory_path() == Path("lab/inventory.yaml")
    assert inventory_path(None) == Path("lab/inventory.yaml")
    assert inventory_path("other.yaml") == Path("other.yaml")
    monkeypatch.setenv("CERTFAB_INVENTORY", "")
    assert inventory_path() == Path("inventory.yaml")


def test_load_uses_environment(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(in_tmp / "x" / "fleet.yaml", MINIMAL)
    monkeypatch.setenv("CERTFAB_INVENTORY", "x/fleet.yaml")
    assert load_inventory().path == in_tmp / "x" / "fleet.yaml"


def test_example_inventory_loads() -> None:
    inv = load_inventory(REPO / "inventory.yaml")
    assert [h.name for h in inv.hosts] == ["web1", "web2", "api1", "legacy1"]
    assert inv.acme.server_name == "production"
    assert dict(inv.groups) == {"europe": ("web1", "web2"), "api": ("api1",), "legacy": ("legacy1",)}
    assert "xn--bcher-kva.example.org" in inv.host("web1").domains
    assert inv.host("web2").sites[0].root is not None
    assert inv.host("api1").sites[0].upstream is not None
    assert inv.host("api1").tls.profile == "modern" and inv.host("api1").tls.hsts_max_age == 63072000
    assert inv.host("api1").sites[0].profile == "shortlived" and inv.host("web1").sites[0].profile is None
    assert (inv.acme.rate_limits.per_registered_domain, inv.acme.rate_limits.per_name_set) == (50, 5)
    legacy = inv.host("legacy1")
    assert (legacy.renewal.hour, legacy.tls.profile, legacy.tls.dhparam_bits, legacy.port) == (
        4,
        "old",
        2048,
        2222,
    )


def test_example_inventory_documents_every_field() -> None:
    text = (REPO / "inventory.yaml").read_text(encoding="utf-8")
    for key in [
        "version",
        "known_hosts",
        "connect_timeout",
        "command_timeout",
        "config_file",
        "email",
        "server",
        "ca_bundle",
        "trust_roots",
        "key_type",
        "user",
        "port",
        "key_file",
        "forward_agent",
        "jump",
        "sudo",
        "webroot",
        "image",
        "runtime",
        "admin_email",
        "times_per_day",
        "hour",
        "mail_on_success",
        "profile",
        "profile_required",
        "rate_limits",
        "per_registered_domain",
        "per_name_set",
        "hsts_max_age",
        "hsts_include_subdomains",
        "hsts_preload",
        "dhparam_bits",
        "groups",
        "address",
        "sites",
        "name",
        "domains",
        "root",
        "upstream",
    ]:
        assert f"# {key}:" in text, key


# ---------------------------------------------------------------------------------------------- garbage

KEYS = [
    "version",
    "ssh",
    "acme",
    "defaults",
    "groups",
    "hosts",
    "email",
    "server",
    "sites",
    "domains",
    "name",
    "web1",
    "europe",
    "tls",
    "renewal",
    "certbot",
    "port",
    "root",
    "upstream",
    "address",
    "known_hosts",
]
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(
        ["web1", "shop.example.com", "bücher.example", "/srv/x", "admin@example.com", "..", "-x"]
    )
    | st.binary(max_size=5)
)
garbage = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8) | st.integers(), children, max_size=4)
    ),
    max_leaves=25,
)
SLOW = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_only_inventory_errors(data: object) -> None:
    """Parse data; the only exception allowed is a one-line InventoryError."""
    try:
        parse(data)
    except InventoryError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("inventory.yaml: ")


@SLOW
@given(garbage)
def test_garbage_raises_only_inventory_error(data: object) -> None:
    parse_only_inventory_errors(data)


def paths_of(node: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """List every path inside a nested dict/list."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += paths_of(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += paths_of(value, prefix + (index,))
    return out


BASE_PATHS = paths_of(base())


@SLOW
@given(st.sampled_from(BASE_PATHS), garbage)
def test_garbage_anywhere_in_a_valid_inventory(path: tuple[Any, ...], value: object) -> None:
    parse_only_inventory_errors(mutate(base(), path, value))


@SLOW
@given(st.text(alphabet=st.sampled_from(list("acmehostsweb1 :-[]{}'\"!&*\n\t#|>?,.@%`\\")), max_size=80))
def test_garbage_yaml_text_raises_only_inventory_error(text: str) -> None:
    try:
        parse_inventory(_load_yaml(text, "inventory.yaml"), Path("inventory.yaml"))
    except InventoryError as exc:
        assert "\n" not in str(exc)


def test_acme_profile_is_inherited_from_acme_defaults_host_then_site() -> None:
    data = mutate(base(), ("acme", "profile"), "tlsserver")
    data = mutate(data, ("hosts", "web2", "acme"), {"profile": "shortlived", "profile_required": True})
    data["hosts"]["web1"]["sites"].append({"name": "api", "domains": ["api.example.com"],
                                           "acme": {"profile": None}})
    web1, web2 = parse(data).hosts
    assert [(s.name, s.profile, s.profile_required) for s in web1.sites] == [
        ("shop", "tlsserver", False), ("api", None, False)]
    assert [(s.profile, s.profile_required) for s in web2.sites] == [("shortlived", True)]
    assert parse(base()).hosts[0].sites[0].profile is None


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("acme", "profile"), "tlsclient", "acme.profile"),
        (("acme", "profile_required"), "yes", "acme.profile_required"),
        (("defaults", "acme", "profile"), 6, "defaults.acme.profile"),
        (("hosts", "web2", "acme", "profile_required"), 1, "hosts.web2.acme.profile_required"),
        (("hosts", "web2", "sites", 0, "acme"), {"profile": "short"}, "hosts.web2.sites[0].acme.profile"),
        (("hosts", "web2", "sites", 0, "acme"), {"server": "x"}, "hosts.web2.sites[0].acme"),
    ],
)
def test_a_wrong_acme_profile_names_the_field(path: tuple[Any, ...], value: object, field: str) -> None:
    assert error_of(mutate(base(), path, value)).startswith(f"inventory.yaml: {field}: ")
