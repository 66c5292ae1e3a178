"""A DNS-01 host's desired state and plan: credentials as a secret, no challenge location, no port 80."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from certfactory import make_certificate
from test_desired import NOW, facts

from certfab.desired import changed_writes, decide_certificate, desired_state, updated_facts_files
from certfab.facts import Lineage
from certfab.inventory import Inventory, parse_inventory
from certfab.issue import certonly_args, container_command, issue_context
from certfab.paths import RENEW_ENV
from certfab.plan import make_plan
from certfab.tls import managed_site_path
from certfab.transaction import text_sha256

SECRET = "dns_rfc2136_secret = c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1iZS1zaG93bg==\n"
CREDS = "/etc/certfab/dns/rfc2136.ini"
INTERNAL = {"name": "internal", "domains": ["*.internal.example.com", "internal.example.com"],
            "challenge": "dns-01", "root": "/srv/internal"}


def inventory(tmp_path: Path, site: dict[str, object]) -> Inventory:
    (tmp_path / "rfc2136.ini").write_text(SECRET)
    return parse_inventory({
        "acme": {"email": "admin@example.com", "server": "staging"},
        "defaults": {"renewal": {"admin_email": "ops@example.com"},
                     "dns01": {"plugin": "rfc2136", "credentials": "rfc2136.ini", "propagation_seconds": 5}},
        "hosts": {"web1": {"address": "192.0.2.10", "sites": [site]}},
    }, tmp_path / "inventory.yaml")


def test_credentials_are_a_secret_root_only_write_compared_by_sha256(tmp_path: Path) -> None:
    inv = inventory(tmp_path, INTERNAL)
    host, current = inv.hosts[0], facts()
    desired = desired_state(host, inv, current, https_sites=frozenset(), acme_ca_pem=None)
    writes = {w.path: w for w in changed_writes(desired, current)}
    creds = writes[CREDS]
    assert creds.secret and creds.mode == "0600" and creds.content == SECRET
    assert SECRET.strip() not in repr(creds)
    assert f"DNS_CREDENTIALS={CREDS}" in writes[RENEW_ENV].content
    after = updated_facts_files(current, list(writes.values()))
    assert after.secret_files == {CREDS: text_sha256(SECRET)} and CREDS not in after.owned_files
    assert CREDS not in {w.path for w in changed_writes(desired, after)}


def test_a_managed_dns01_site_without_redirect_has_no_port_80_block(tmp_path: Path) -> None:
    inv = inventory(tmp_path, INTERNAL)
    host, current = inv.hosts[0], facts()
    http_phase = desired_state(host, inv, current, https_sites=frozenset(), acme_ca_pem=None)
    assert managed_site_path("internal") not in {w.path for w in http_phase.writes}
    https = desired_state(host, inv, current, https_sites=frozenset({"internal"}), acme_ca_pem=None)
    text = {w.path: w.content for w in https.writes}[managed_site_path("internal")]
    assert "listen 443 ssl" in text and "server_name *.internal.example.com internal.example.com;" in text
    assert "listen 80" not in text and "acme-challenge" not in text


def test_a_requested_redirect_has_no_challenge_location(tmp_path: Path) -> None:
    inv = inventory(tmp_path, {**INTERNAL, "redirect": True})
    host = inv.hosts[0]
    https = desired_state(host, inv, facts(), https_sites=frozenset({"internal"}), acme_ca_pem=None)
    text = {w.path: w.content for w in https.writes}[managed_site_path("internal")]
    assert "listen 80;" in text and "return 301 https://$host$request_uri;" in text
    assert "acme-challenge" not in text


def test_the_plan_never_shows_the_secret(tmp_path: Path) -> None:
    inv = inventory(tmp_path, INTERNAL)
    plan = make_plan(inv.hosts[0], inv, facts(), now=NOW, acme_ca_pem=None)
    change = next(f for f in plan.files if f.path == CREDS)
    assert change.secret and change.kind == "create" and "never shown" in change.diff
    shown = json.dumps(plan.to_json()) + "".join(plan.describe()) + repr(plan.files)
    assert "c2VjcmV0" not in shown
    existing = facts()
    existing = type(existing)(**{**existing.__dict__, "secret_files": {CREDS: "0" * 64}})
    replaced = make_plan(inv.hosts[0], inv, existing, now=NOW, acme_ca_pem=None)
    write = next(w for w in replaced.plumbing_writes if w.path == CREDS)
    assert write.expected_sha256 == "0" * 64  # replaced only if the host's file is still the one read


def test_certbot_uses_the_dns_plugin_and_the_self_test_skips_dns01_names(tmp_path: Path) -> None:
    inv = inventory(tmp_path, INTERNAL)
    host = inv.hosts[0]
    args = certonly_args(host.sites[0], host, inv, force=False)
    assert args[:5] == ["certonly", "--dns-rfc2136", "--dns-rfc2136-credentials", CREDS,
                        "--dns-rfc2136-propagation-seconds"]
    assert "--webroot" not in args and ["-d", "*.internal.example.com"] == args[-4:-2]
    command = container_command(host, acme_ca=False)
    assert f"{CREDS}:{CREDS}:ro" in command and command[-1] == "certbot/dns-rfc2136:v5.1.0"
    context = issue_context("run", host, inv, [(host.sites[0], False)], acme_ca=False)
    assert context["domains"] == []


def test_a_site_moved_to_dns01_is_ordered_again_so_renewals_use_dns(tmp_path: Path) -> None:
    inv = inventory(tmp_path, INTERNAL)
    site = inv.hosts[0].sites[0]
    pem = make_certificate(list(site.domains), not_after=NOW + timedelta(days=80), lifetime=timedelta(days=90))
    webroot = Lineage("internal", pem, "[renewalparams]\nauthenticator = webroot\nwebroot_path = /var/www\n")
    dns = Lineage("internal", pem, "[renewalparams]\nauthenticator = dns-rfc2136\n")
    assert decide_certificate(site, facts({"internal": webroot}), NOW).cause == "challenge-changed"
    assert decide_certificate(site, facts({"internal": dns}), NOW).action == "keep"


def shared_inventory(tmp_path: Path) -> Inventory:
    """web1 and web2 both declaring the internal DNS-01 site: web1 issues it, web2 is a peer."""
    (tmp_path / "rfc2136.ini").write_text(SECRET)
    return parse_inventory({
        "acme": {"email": "admin@example.com", "server": "staging"},
        "defaults": {"renewal": {"admin_email": "ops@example.com"},
                     "dns01": {"plugin": "rfc2136", "credentials": "rfc2136.ini", "propagation_seconds": 5}},
        "hosts": {"web1": {"address": "192.0.2.10", "sites": [INTERNAL]},
                  "web2": {"address": "192.0.2.11", "sites": [INTERNAL]}},
    }, tmp_path / "inventory.yaml")


def test_a_shared_dns01_site_puts_credentials_on_its_issuer_only_and_no_challenge_location_anywhere(
        tmp_path: Path) -> None:
    inv = shared_inventory(tmp_path)
    written = {}
    for host in inv.hosts:
        desired = desired_state(host, inv, facts(), https_sites=frozenset(), acme_ca_pem=None)
        written[host.name] = {w.path: w for w in desired.writes}
    assert CREDS in written["web1"] and f"DNS_CREDENTIALS={CREDS}" in written["web1"][RENEW_ENV].content
    assert CREDS not in written["web2"] and "DNS_CREDENTIALS=''\n" in written["web2"][RENEW_ENV].content
    for paths in written.values():
        assert not [p for p in paths if p.endswith("acme-challenge-internal.conf")], sorted(paths)


def test_credentials_nothing_uses_any_more_are_removed_unless_a_lineage_still_renews_with_them(
        tmp_path: Path) -> None:
    inv = shared_inventory(tmp_path)
    peer = inv.host("web2")
    holding = replace(facts(), secret_files={CREDS: text_sha256(SECRET)})
    desired = desired_state(peer, inv, holding, https_sites=frozenset(), acme_ca_pem=None)
    [removal] = [w for w in changed_writes(desired, holding) if w.path == CREDS]
    assert removal.remove and removal.secret
    after = updated_facts_files(holding, [removal])
    assert CREDS not in after.secret_files
    assert CREDS not in {w.path for w in changed_writes(desired_state(peer, inv, after, https_sites=frozenset(),
                                                                      acme_ca_pem=None), after)}
    # The plan says it, without a byte of the file.
    plan = make_plan(peer, inv, holding, now=NOW, acme_ca_pem=None)
    [change] = [f for f in plan.files if f.path == CREDS]
    assert change.kind == "remove" and change.describe() == f"removed {CREDS}"
    assert change.diff == f"certfab: {CREDS}: secret, removed; its content is never shown\n"
    # A lineage on the host still renews with them (its renewal configuration names them): they stay.
    conf = f"[renewalparams]\nauthenticator = dns-rfc2136\ndns_rfc2136_credentials = {CREDS}\n"
    renewing = replace(holding, lineages={"old": Lineage("old", "", conf)})
    assert CREDS not in {w.path for w in desired_state(peer, inv, renewing, https_sites=frozenset(),
                                                       acme_ca_pem=None).writes}
