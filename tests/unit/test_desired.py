"""Desired state and plans from facts, without SSH: facts + inventory in, files and decisions out."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from certfactory import make_certificate

from certfab import tls
from certfab.desired import (
    changed_writes,
    decide_certificate,
    desired_state,
    preflight,
    updated_facts_files,
)
from certfab.errors import PreflightError
from certfab.facts import ConfigFile, HostFacts, Lineage, NginxFacts
from certfab.inventory import Inventory, parse_inventory
from certfab.paths import ACME_INCLUDE
from certfab.tls import managed_site_path, site_include_path

TREE = Path(__file__).parent / "nginx_trees" / "debian"
NOW = datetime(2026, 11, 27, tzinfo=timezone.utc)


def inventory(sites: list[dict[str, object]]) -> Inventory:
    return parse_inventory(
        {
            "acme": {"email": "admin@example.com", "server": "staging"},
            "defaults": {"renewal": {"admin_email": "ops@example.com"}},
            "hosts": {"web1": {"address": "192.0.2.10", "sites": sites}},
        },
        Path("inventory.yaml"),
    )


def facts(lineages: dict[str, Lineage] | None = None) -> HostFacts:
    files = {}
    for path in sorted(TREE.rglob("*")):
        if path.is_file():
            name = "/etc/nginx/" + str(path.relative_to(TREE))
            files[name] = ConfigFile(name, name, path.read_text())
    nginx = NginxFacts(
        version=(1, 22, 1), version_text="1.22.1", openssl_version=(3, 0, 11), openssl_text="OpenSSL 3.0.11",
        sni=True, conf_path="/etc/nginx/nginx.conf", prefix="/etc/nginx", test_ok=True, test_output="",
        files=files,
    )
    return HostFacts(
        host="web1", os_name="Debian", hostname="web1", uid=0, systemd=True,
        tools=frozenset({"flock", "curl"}), nginx=nginx, runtime_present=True, runtime_version="24.0",
        image_present=True, image_id="sha256:x", lineages=lineages or {}, crontab="", cron_d=(),
        competing_renewal=(), owned_files={}, journal="",
    )


def certificate(names: list[str], days: int, left: int) -> str:
    return make_certificate(names, not_after=NOW + timedelta(days=left), lifetime=timedelta(days=days))


EXAMPLE = {"name": "example", "domains": ["example.com", "www.example.com"]}


@pytest.mark.parametrize(
    ("names", "days", "left", "action"),
    [
        (None, 0, 0, "issue"),
        (["example.com", "www.example.com"], 90, 80, "keep"),
        (["www.example.com", "example.com"], 90, 31, "keep"),
        (["example.com", "www.example.com"], 90, 20, "renew"),
        (["example.com", "www.example.com"], 90, -1, "renew"),
        (["example.com"], 90, 80, "change-names"),
        (["example.com", "www.example.com", "old.example.com"], 90, 80, "change-names"),
        (["example.com", "www.example.com"], 6, 3, "keep"),
        (["example.com", "www.example.com"], 6, 1, "renew"),
    ],
)
def test_certificate_decision_is_relative_to_lifetime(names, days, left, action):
    inv = inventory([EXAMPLE])
    lineages = {} if names is None else {"example": Lineage("example", certificate(names, days, left), "")}
    decision = decide_certificate(inv.hosts[0].sites[0], facts(lineages), NOW)
    assert decision.action == action, decision.reason


def test_first_phase_adds_the_acme_include_to_the_sites_block_only():
    inv = inventory([EXAMPLE])
    host_facts = facts()
    desired = desired_state(inv.hosts[0], inv, host_facts, https_sites=frozenset(), acme_ca_pem=None)
    writes = {w.path: w for w in changed_writes(desired, host_facts)}
    edited = writes["/etc/nginx/sites-enabled/example.com"]
    before = host_facts.nginx.files["/etc/nginx/sites-enabled/example.com"].text
    added = [line for line in edited.content.splitlines() if line not in before.splitlines()]
    assert added == [f"\tinclude {ACME_INCLUDE};  # managed by certfab"]
    assert edited.mode is None  # keeps the file's own mode and owner
    assert "/etc/nginx/sites-enabled/default" not in writes
    assert {ACME_INCLUDE, "/usr/local/sbin/certfab-renew", "/etc/cron.d/certfab"} <= set(writes)
    assert writes["/usr/local/sbin/certfab-renew"].mode == "0700"


def test_each_phase_reaches_a_fixed_point():
    inv = inventory([EXAMPLE])
    host = inv.hosts[0]
    current = facts()
    for https in (frozenset(), frozenset({"example"})):
        desired = desired_state(host, inv, current, https_sites=https, acme_ca_pem=None)
        current = updated_facts_files(current, changed_writes(desired, current))
        again = desired_state(host, inv, current, https_sites=https, acme_ca_pem=None)
        assert changed_writes(again, current) == []
    text = current.nginx.files["/etc/nginx/sites-enabled/example.com"].text
    assert "listen 443 ssl http2;" in text and "return 301 https://$host$request_uri;" in text
    assert f"include {site_include_path('example')};" in text
    original = facts().nginx.files["/etc/nginx/sites-enabled/example.com"].text
    marker = "# second site in the same file"
    assert text.split(marker, 1)[1] == original.split(marker, 1)[1]  # the blog block is untouched


def test_managed_site_gets_its_own_file_in_both_phases():
    inv = inventory([{"name": "app", "domains": ["app.example.net"], "upstream": "http://127.0.0.1:8080"}])
    host = inv.hosts[0]
    current = facts()
    http = desired_state(host, inv, current, https_sites=frozenset(), acme_ca_pem=None)
    writes = {w.path: w.content for w in changed_writes(http, current)}
    assert "proxy_pass http://127.0.0.1:8080" in writes[managed_site_path("app")]
    assert "443" not in writes[managed_site_path("app")]
    current = updated_facts_files(current, changed_writes(http, current))
    https = desired_state(host, inv, current, https_sites=frozenset({"app"}), acme_ca_pem=None)
    final = {w.path: w.content for w in changed_writes(https, current)}
    assert "listen 443 ssl" in final[managed_site_path("app")]
    current = updated_facts_files(current, changed_writes(https, current))
    assert changed_writes(desired_state(host, inv, current, https_sites=frozenset({"app"}), acme_ca_pem=None),
                          current) == []


@pytest.mark.parametrize(
    ("sites", "change", "message"),
    [
        ([{"name": "nosite", "domains": ["unknown.example.com"]}], {}, "no port-80 server block serves unknown.example.com"),
        ([{"name": "a", "domains": ["example.com"]}, {"name": "b", "domains": ["www.example.com"]}], {},
         "sites a and b share the server block"),
        ([EXAMPLE], {"uid": 1000}, "do not run as root"),
        ([EXAMPLE], {"runtime_present": False}, "container runtime 'docker' is not installed"),
    ],
)
def test_preflight_refuses_what_it_cannot_do_safely(sites, change, message):
    inv = inventory(sites)
    with pytest.raises(PreflightError, match=message):
        preflight(inv.hosts[0], replace(facts(), **change))


def test_preflight_refuses_a_config_that_already_fails():
    broken = replace(facts(), nginx=replace(facts().nginx, test_ok=False, test_output="nginx: [emerg] bad\nfailed"))
    inv = inventory([EXAMPLE])
    with pytest.raises(PreflightError, match="nginx -t already fails"):
        preflight(inv.hosts[0], broken)


def facts_with(files: dict[str, str], main: str = "/etc/nginx/nginx.conf") -> HostFacts:
    """facts() with other nginx files; `prefix` is the main file's directory, as facts give it."""
    base = facts()
    nginx = replace(
        base.nginx, conf_path=main, prefix=main.rsplit("/", 1)[0],
        files={path: ConfigFile(path, path, text) for path, text in files.items()},
    )
    return replace(base, nginx=nginx)


def debian_files(changes: dict[str, str] | None = None) -> dict[str, str]:
    files = {path: f.text for path, f in facts().nginx.files.items()}
    files.update(changes or {})
    return files


CAFE = "cafe.example.com"
LATIN1_SITE = (
    b"# caf\xe9 du coin \xab ne pas toucher \xbb\nserver {\n\tlisten 80;\n\tserver_name cafe.example.com;\n"
    b"\troot /var/www/caf\xe9;\n}\n"
)


def converge(host, inv, current):
    for https in (frozenset(), frozenset(s.name for s in host.sites)):
        desired = desired_state(host, inv, current, https_sites=https, acme_ca_pem=None)
        current = updated_facts_files(current, changed_writes(desired, current))
        assert changed_writes(desired_state(host, inv, current, https_sites=https, acme_ca_pem=None),
                              current) == []
    return current


def test_a_latin1_site_file_is_converted_and_keeps_its_bytes():
    files = debian_files()
    files["/etc/nginx/sites-enabled/cafe"] = LATIN1_SITE.decode("utf-8", errors="surrogateescape")
    inv = inventory([{"name": "cafe", "domains": [CAFE]}])
    current = facts_with(files)
    assert preflight(inv.hosts[0], current) == []
    current = converge(inv.hosts[0], inv, current)
    raw = current.nginx.files["/etc/nginx/sites-enabled/cafe"].text.encode("utf-8", errors="surrogateescape")
    assert raw.startswith(b"# caf\xe9 du coin \xab ne pas toucher \xbb\nserver {\n")
    assert b"\troot /var/www/caf\xe9;\n" in raw and b"listen 443 ssl http2;" in raw


RELATIVE = Path(__file__).parent / "nginx_trees" / "relative"


def test_relative_includes_keep_every_server_block():
    main = "/opt/nginx/conf/nginx.conf"
    files = {
        "/opt/nginx/conf/" + str(p.relative_to(RELATIVE)): p.read_text() for p in RELATIVE.rglob("*") if p.is_file()
    }
    inv = inventory([{"name": "shop", "domains": ["shop.example.org", "www.shop.example.org"]},
                     {"name": "wiki", "domains": ["wiki.example.org"]}])
    current = facts_with(files, main)
    assert preflight(inv.hosts[0], current) == []
    current = converge(inv.hosts[0], inv, current)
    for name in ("shop", "wiki"):
        text = current.nginx.files[f"/opt/nginx/conf/sites/{name}.conf"].text
        assert f"include {site_include_path(name)};" in text and "return 301 https://" in text


def test_names_outside_the_certificate_are_refused_in_one_line():
    site = "server {\n\tlisten 80;\n\tserver_name cafe.example.com *.cafe.example.com;\n}\n"
    inv = inventory([{"name": "cafe", "domains": [CAFE]}])
    with pytest.raises(PreflightError) as refused:
        preflight(inv.hosts[0], facts_with(debian_files({"/etc/nginx/sites-enabled/cafe": site})))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("web1: site cafe: /etc/nginx/sites-enabled/cafe:1: the server block also names "
                              "*.cafe.example.com, which the certificate of site cafe does not cover")


def test_other_plain_ports_are_a_warning_before_and_after_https():
    site = "server {\n\tlisten 80;\n\tlisten 8081;\n\tserver_name cafe.example.com;\n}\n"
    inv = inventory([{"name": "cafe", "domains": [CAFE]}])
    current = facts_with(debian_files({"/etc/nginx/sites-enabled/cafe": site}))
    expected = ("web1: site cafe: /etc/nginx/sites-enabled/cafe:1: the server block also listens on plain-HTTP "
                "port 8081 (/etc/nginx/sites-enabled/cafe:3); it keeps serving the site without TLS there")
    (warning,) = preflight(inv.hosts[0], current)
    assert warning.startswith(expected)
    current = converge(inv.hosts[0], inv, current)
    assert "\tlisten 8081;\n" in current.nginx.files["/etc/nginx/sites-enabled/cafe"].text
    (warning,) = preflight(inv.hosts[0], current)
    assert warning.startswith(expected.replace("cafe:3", "cafe:5"))  # two includes came before it


def old_profile_inventory(dhparam_bits: int) -> Inventory:
    """web1 serving EXAMPLE with the `old` TLS profile (DHE ciphers) and that DH group size."""
    return parse_inventory(
        {
            "acme": {"email": "admin@example.com", "server": "staging"},
            "defaults": {"renewal": {"admin_email": "ops@example.com"},
                         "tls": {"profile": "old", "dhparam_bits": dhparam_bits}},
            "hosts": {"web1": {"address": "192.0.2.10", "sites": [EXAMPLE]}},
        },
        Path("inventory.yaml"),
    )


def test_dhparam_bits_picks_the_rfc_7919_group():
    inv = old_profile_inventory(4096)
    desired = desired_state(inv.hosts[0], inv, facts(), https_sites=frozenset({"example"}), acme_ca_pem=None)
    writes = {w.path: w.content for w in desired.writes}
    assert writes["/etc/nginx/certfab/ffdhe4096.pem"] == tls.ffdhe_pem(4096)
    assert "/etc/nginx/certfab/ffdhe2048.pem" not in writes
    assert "ssl_dhparam /etc/nginx/certfab/ffdhe4096.pem;" in writes["/etc/nginx/certfab/tls-options.conf"]


def test_a_dh_group_no_longer_named_goes_with_the_tls_settings_that_drop_it():
    inv = old_profile_inventory(4096)
    old_group = "/etc/nginx/certfab/ffdhe2048.pem"
    start = replace(facts(), owned_files={old_group: tls.ffdhe_pem(2048)})
    desired = desired_state(inv.hosts[0], inv, start, https_sites=frozenset({"example"}), acme_ca_pem=None)
    removals = [w.path for w in changed_writes(desired, start) if w.remove]
    assert removals == [old_group]
    after = updated_facts_files(start, changed_writes(desired, start))
    assert old_group not in after.owned_files and "/etc/nginx/certfab/ffdhe4096.pem" in after.owned_files
    assert changed_writes(desired_state(inv.hosts[0], inv, after, https_sites=frozenset({"example"}),
                                        acme_ca_pem=None), after) == []
    # Only with the TLS settings: a plain-HTTP phase leaves it; a site of the admin's that names it keeps it.
    http_only = desired_state(inv.hosts[0], inv, start, https_sites=frozenset(), acme_ca_pem=None)
    assert not [w for w in http_only.writes if w.remove]
    assert start.nginx is not None
    named = replace(start, nginx=replace(start.nginx, files={**start.nginx.files, "/etc/nginx/sites-enabled/own": ConfigFile(
        "/etc/nginx/sites-enabled/own", "/etc/nginx/sites-enabled/own", f"ssl_dhparam {old_group};\n")}))
    assert not [w for w in desired_state(inv.hosts[0], inv, named, https_sites=frozenset({"example"}),
                                         acme_ca_pem=None).writes if w.remove]
