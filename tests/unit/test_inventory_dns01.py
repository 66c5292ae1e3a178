"""DNS-01 sites in the inventory: wildcards, the plugin settings, the credentials file (never shown)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from certfab.errors import InventoryError
from certfab.inventory import Inventory, parse_inventory

SECRET = "dns_rfc2136_secret = c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1iZS1zaG93bg==\n"


def inventory(tmp_path: Path, site: dict[str, Any], dns01: dict[str, Any] | None = None) -> dict[str, Any]:
    creds = tmp_path / "rfc2136.ini"
    creds.write_text(SECRET)
    creds.chmod(0o600)
    defaults: dict[str, Any] = {"renewal": {"admin_email": "ops@example.com"},
                                "certbot": {"image": "certbot/certbot:v2.1.0"}}
    if dns01 is not None:
        defaults["dns01"] = dns01
    return {"acme": {"email": "a@example.com"}, "defaults": defaults,
            "hosts": {"web1": {"address": "203.0.113.10", "sites": [site]}}}


def parse(tmp_path: Path, data: dict[str, Any]) -> Inventory:
    return parse_inventory(copy.deepcopy(data), tmp_path / "inventory.yaml")


def error(tmp_path: Path, data: dict[str, Any]) -> str:
    with pytest.raises(InventoryError) as info:
        parse(tmp_path, data)
    assert "\n" not in str(info.value) and info.value.exit_code == 2
    return str(info.value).split(": ", 1)[1]


DNS = {"plugin": "rfc2136", "credentials": "rfc2136.ini", "propagation_seconds": 1}


def test_a_wildcard_dns01_site_is_accepted_with_the_plugin_image(tmp_path: Path) -> None:
    site = {"name": "shop", "domains": ["*.Shop.example.com", "shop.example.com"], "challenge": "dns-01",
            "root": "/srv/shop"}
    host = parse(tmp_path, inventory(tmp_path, site, DNS)).host("web1")
    assert host.sites[0].domains == ("*.shop.example.com", "shop.example.com")
    assert host.sites[0].dns01 and not host.sites[0].redirect
    assert host.dns01 is not None and host.dns01.plugin == "rfc2136"
    assert host.dns01.credentials.text == SECRET
    # certbot renews every lineage of the host from the plugin's image, tagged like certbot's
    assert host.certbot.image == "certbot/dns-rfc2136:v2.1.0"
    assert SECRET.strip() not in repr(host) and "c2VjcmV0" not in repr(host)


def test_an_explicit_image_wins(tmp_path: Path) -> None:
    site = {"name": "shop", "domains": ["shop.example.com"], "challenge": "dns-01"}
    host = parse(tmp_path, inventory(tmp_path, site, {**DNS, "image": "certbot/certbot:v2.1.0"})).host("web1")
    assert host.certbot.image == "certbot/certbot:v2.1.0"


def test_a_digest_pinned_certbot_image_needs_an_explicit_plugin_image(tmp_path: Path) -> None:
    site = {"name": "shop", "domains": ["shop.example.com"], "challenge": "dns-01"}
    data = inventory(tmp_path, site, DNS)
    data["defaults"]["certbot"]["image"] = "certbot/certbot@sha256:" + "a" * 64
    assert error(tmp_path, data).startswith("hosts.web1.dns01: key 'image' is required: no tag to take")


def test_a_wildcard_on_an_http01_site_is_one_line_naming_the_field(tmp_path: Path) -> None:
    site = {"name": "shop", "domains": ["shop.example.com", "*.shop.example.com"]}
    assert error(tmp_path, inventory(tmp_path, site, DNS)) == (
        "hosts.web1.sites[0].domains[1]: '*.shop.example.com' is a wildcard; wildcards need challenge: dns-01 "
        "(HTTP-01 cannot validate them)"
    )


@pytest.mark.parametrize("name", ["*shop.example.com", "*.*.example.com", "a.*.example.com", "*.com"])
def test_malformed_wildcards_are_refused(tmp_path: Path, name: str) -> None:
    site = {"name": "shop", "domains": [name], "challenge": "dns-01"}
    assert error(tmp_path, inventory(tmp_path, site, DNS)).startswith("hosts.web1.sites[0].domains[0]: ")


def test_a_dns01_site_needs_plugin_and_credentials(tmp_path: Path) -> None:
    site = {"name": "shop", "domains": ["shop.example.com"], "challenge": "dns-01"}
    assert error(tmp_path, inventory(tmp_path, site)) == (
        "hosts.web1.dns01: key 'plugin' is required for a DNS-01 site; set it here or in defaults.dns01"
    )
    missing = {**DNS, "credentials": "nowhere.ini"}
    assert error(tmp_path, inventory(tmp_path, site, missing)).startswith(
        "defaults.dns01.credentials: 'nowhere.ini' does not exist"
    )


def test_credentials_are_read_only_for_hosts_with_a_dns01_site(tmp_path: Path) -> None:
    site = {"name": "shop", "domains": ["shop.example.com"]}
    host = parse(tmp_path, inventory(tmp_path, site, {**DNS, "credentials": "nowhere.ini"})).host("web1")
    assert host.dns01 is None and host.certbot.image == "certbot/certbot:v2.1.0"


@pytest.mark.parametrize(("key", "value", "message"), [
    ("plugin", "rfc 2136", "defaults.dns01.plugin: 'rfc 2136' is not a certbot DNS plugin name"),
    ("propagation_seconds", -1, "defaults.dns01.propagation_seconds: -1 is out of range (0-3600)"),
    ("zone", "x", "defaults.dns01: 'zone' is not a known key"),
])
def test_bad_dns01_settings(tmp_path: Path, key: str, value: object, message: str) -> None:
    site = {"name": "shop", "domains": ["shop.example.com"], "challenge": "dns-01"}
    assert error(tmp_path, inventory(tmp_path, site, {**DNS, key: value})).startswith(message)


def test_challenge_and_redirect_values(tmp_path: Path) -> None:
    site = {"name": "shop", "domains": ["shop.example.com"], "challenge": "tls-alpn-01"}
    assert error(tmp_path, inventory(tmp_path, site, DNS)) == (
        "hosts.web1.sites[0].challenge: 'tls-alpn-01' is not one of: http-01, dns-01"
    )
    site = {"name": "shop", "domains": ["shop.example.com"], "redirect": True, "root": "/srv"}
    assert error(tmp_path, inventory(tmp_path, site, DNS)).startswith(
        "hosts.web1.sites[0].redirect: applies to managed DNS-01 sites only"
    )
    site = {"name": "shop", "domains": ["shop.example.com"], "challenge": "dns-01", "root": "/srv", "redirect": True}
    assert parse(tmp_path, inventory(tmp_path, site, DNS)).host("web1").sites[0].redirect
