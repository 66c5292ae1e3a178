"""Shared sites without SSH: the inventory's rule, roles, what a peer and an issuer plan, the lineage a
peer accepts, which peers lag, and how the report flags them."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from certfactory import self_signed_pair
from cryptography.hazmat.primitives import serialization
from test_desired import NOW, certificate, facts

from certfab import report as rp
from certfab.certs import parse_pem
from certfab.desired import decide_certificate, desired_state
from certfab.errors import InventoryError
from certfab.facts import Lineage as FactsLineage
from certfab.inventory import Inventory, parse_inventory
from certfab.paths import ACME_INCLUDE
from certfab.plan import make_plan
from certfab.shared import (
    MaterialError,
    acme_include_path,
    check_lineage,
    copy_dir,
    copy_writes,
    role_of,
    shared_sites,
)
from certfab.sync import BackendState, plan_sync
from certfab.tls import site_include_path
from certfab.tlsprobe import ServedCert

NAMES = ["shop.example.com", "www.shop.example.com"]
SHOP = {"name": "shop", "domains": NAMES, "root": "/srv/shop"}


def data(**sites: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "acme": {"email": "admin@example.com", "server": "staging"},
        "defaults": {"renewal": {"admin_email": "ops@example.com"}},
        "hosts": {name: {"address": f"192.0.2.{10 + i}", "sites": s} for i, (name, s) in enumerate(sites.items())},
    }


def inventory(**sites: list[dict[str, Any]]) -> Inventory:
    return parse_inventory(data(**sites), Path("inventory.yaml"))


FLEET = {"web1": [SHOP], "web2": [SHOP], "web3": [SHOP, {"name": "blog", "domains": ["blog.example.com"]}]}


class TestInventory:
    def test_same_name_and_domains_on_several_hosts_is_one_shared_site(self) -> None:
        inv = inventory(**FLEET)
        shared = shared_sites(inv)
        assert list(shared) == ["shop"]
        assert [h.name for h in shared["shop"].backends] == ["web1", "web2", "web3"]
        assert shared["shop"].issuer.name == "web1"
        assert [role_of(inv, h, h.sites[0]) for h in inv.hosts] == ["issuer", "peer", "peer"]
        assert role_of(inv, inv.hosts[2], inv.hosts[2].sites[1]) == "alone"

    def test_domains_in_another_order_are_the_same_site(self) -> None:
        inv = inventory(web1=[SHOP], web2=[{**SHOP, "domains": NAMES[::-1]}])
        assert "shop" in shared_sites(inv)

    def test_same_name_with_other_domains_is_one_line_naming_both_hosts(self) -> None:
        with pytest.raises(InventoryError) as info:
            inventory(web1=[SHOP], web2=[{**SHOP, "domains": ["shop.example.com"]}])
        message = str(info.value)
        assert info.value.exit_code == 2
        assert "\n" not in message
        assert message == (
            "inventory.yaml: hosts.web2.sites[0].domains: ['shop.example.com'] differ from site 'shop' on host "
            "web1 (shop.example.com, www.shop.example.com); a site on several hosts is one shared certificate: "
            "give it the same domains on every host"
        )


def peer_facts(copy: str | None = None, live: str | None = None) -> Any:
    f = facts({"shop": FactsLineage("shop", live, "")} if live else None)
    return replace(f, shared_copies={"shop": copy} if copy else {})


class TestDecisions:
    def test_a_peer_never_orders(self) -> None:
        assert decide_certificate(replace_site(), peer_facts(), NOW, role="peer").action == "await"
        old = certificate(NAMES, 90, 10)
        assert decide_certificate(replace_site(), peer_facts(old), NOW, role="peer").action == "keep"
        expired = certificate(NAMES, 90, -1)
        decision = decide_certificate(replace_site(), peer_facts(expired), NOW, role="peer")
        assert decision.action == "await" and not decision.needs_order and not decision.ready

    def test_a_new_issuer_keeps_serving_a_valid_copy_without_an_order(self) -> None:
        copy = certificate(NAMES, 90, 60)
        assert decide_certificate(replace_site(), peer_facts(copy), NOW, role="issuer").action == "keep"
        due = certificate(NAMES, 90, 10)
        assert decide_certificate(replace_site(), peer_facts(due), NOW, role="issuer").action == "renew"

    def test_peer_files_pass_challenges_to_the_issuer_and_serve_the_copy(self) -> None:
        inv = inventory(**FLEET)
        peer = inv.hosts[1]
        copy = certificate(NAMES, 90, 60)
        desired = desired_state(peer, inv, peer_facts(copy), https_sites=frozenset({"shop"}), acme_ca_pem=None)
        files = {w.path: w.content for w in desired.writes}
        proxy = files[acme_include_path("shop")]
        assert "proxy_pass http://192.0.2.10;" in proxy and "proxy_set_header Host $host;" in proxy
        assert f"ssl_certificate_key {copy_dir('shop')}/privkey.pem;" in files[site_include_path("shop")]
        managed = files["/etc/nginx/conf.d/certfab-shop.conf"]
        assert f"include {acme_include_path('shop')};" in managed and f"include {ACME_INCLUDE};" not in managed

    def test_the_issuer_answers_from_its_webroot_and_serves_its_lineage(self) -> None:
        inv = inventory(**FLEET)
        issuer = inv.hosts[0]
        live = certificate(NAMES, 90, 60)
        desired = desired_state(issuer, inv, peer_facts(live=live), https_sites=frozenset({"shop"}),
                                acme_ca_pem=None)
        files = {w.path: w.content for w in desired.writes}
        assert "root /var/www/letsencrypt;" in files[acme_include_path("shop")]
        assert "ssl_certificate /etc/letsencrypt/live/shop/fullchain.pem;" in files[site_include_path("shop")]

    def test_a_peer_that_still_renews_the_site_itself_is_warned_about(self) -> None:
        inv = inventory(**FLEET)
        live = certificate(NAMES, 90, 60)
        plan = make_plan(inv.hosts[1], inv, peer_facts(live, live=live), now=NOW, acme_ca_pem=None)
        assert any("two hosts would renew it" in w for w in plan.warnings), plan.warnings

    def test_held_orders_are_not_orders_yet(self) -> None:
        inv = inventory(**FLEET)
        plan = make_plan(inv.hosts[0], inv, peer_facts(), now=NOW, acme_ca_pem=None, hold=frozenset({"shop"}))
        assert plan.orders == () and [c.site for c in plan.held_orders] == ["shop"]
        assert "shop" not in plan.ready_sites


def replace_site() -> Any:
    return inventory(**FLEET).hosts[1].sites[0]


def lineage_files(names: list[str] = NAMES) -> dict[str, str]:
    now = datetime.now(timezone.utc)
    cert, key = self_signed_pair(names, not_before=now - timedelta(days=1), not_after=now + timedelta(days=60))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return {"cert.pem": pem, "chain.pem": pem, "fullchain.pem": pem + pem, "privkey.pem": key_pem}


class TestLineage:
    def test_a_matching_lineage_becomes_a_copy_with_a_private_key(self) -> None:
        files = lineage_files()
        lineage = check_lineage("shop", files)
        assert files["privkey.pem"] not in repr(lineage) and files["privkey.pem"] not in str(lineage)
        writes = {w.path: w for w in copy_writes(lineage)}
        assert writes[f"{copy_dir('shop')}/privkey.pem"].mode == "0600"
        assert writes[f"{copy_dir('shop')}/fullchain.pem"].mode == "0644"

    @pytest.mark.parametrize("broken", ["missing key", "other key", "not a key", "other fullchain"])
    def test_anything_else_from_the_issuer_is_refused_without_quoting_it(self, broken: str) -> None:
        files = lineage_files()
        other = lineage_files()
        if broken == "missing key":
            del files["privkey.pem"]
        elif broken == "other key":
            files["privkey.pem"] = other["privkey.pem"]
        elif broken == "not a key":
            files["privkey.pem"] = "root:x:0:0:root:/root:/bin/bash\n"
        else:
            files["fullchain.pem"] = other["fullchain.pem"]
        with pytest.raises(MaterialError) as info:
            check_lineage("shop", files)
        assert "PRIVATE" not in str(info.value) and "root:x" not in str(info.value)


class TestSyncPlan:
    def test_peers_whose_copy_differs_from_the_issuer_lag(self) -> None:
        inv = inventory(**FLEET)
        new, old = certificate(NAMES, 90, 80), certificate(NAMES, 90, 20)
        states: dict[str, BackendState | None] = {
            "web1": BackendState({"shop": new}, {}),
            "web2": BackendState({}, {"shop": old}),
            "web3": BackendState({}, {}),
        }
        plan = plan_sync(shared_sites(inv), states, {"web1", "web2", "web3"})
        assert plan.lagging == {"web2": ["shop"], "web3": ["shop"]}
        assert plan.first == {"web3": {"shop"}}
        states["web2"] = BackendState({}, {"shop": new})
        states["web3"] = None
        plan = plan_sync(shared_sites(inv), states, {"web1", "web2", "web3"})
        assert plan.lagging == {} and plan.current == {"web2": ["shop"]}

    def test_an_issuer_without_a_certificate_is_an_error_for_its_peers(self) -> None:
        inv = inventory(**FLEET)
        states: dict[str, BackendState | None] = {"web1": None, "web2": BackendState({}, {}),
                                                  "web3": BackendState({}, {})}
        plan = plan_sync(shared_sites(inv), states, {"web2"})
        assert list(plan.errors) == ["web2"] and "did not answer" in plan.errors["web2"][0]


class TestReport:
    def test_a_lagging_peer_is_a_mismatch_and_the_issuer_is_named(self) -> None:
        new, old = parse_pem(certificate(NAMES, 90, 80)), parse_pem(certificate(NAMES, 90, 20))
        served_new = {d: ServedCert(b"", new) for d in NAMES}
        served_old = {d: ServedCert(b"", old) for d in NAMES}
        records = [
            rp.CertRecord("web1", "shop", tuple(NAMES), new, served_new),
            rp.CertRecord("web2", "shop", tuple(NAMES), new, served_old),
            rp.CertRecord("web3", "shop", tuple(NAMES), new, served_new),
        ]
        rows = {r.record.host: r for r in rp.build_report(rp.link_shared(records, {"shop": "web1"}), now=NOW).rows}
        assert rows["web2"].status is rp.Status.MISMATCH
        assert any(n.startswith("lagging peer:") for n in rows["web2"].notes)
        assert "shared site: web1 issues it" in rows["web3"].notes
        assert "shared site: this host issues it" in rows["web1"].notes
        assert all(not n.startswith("lagging") for n in rows["web3"].notes)

    def test_a_new_issuer_serving_its_copy_says_so(self) -> None:
        info = parse_pem(certificate(NAMES, 90, 80))
        record = rp.CertRecord("web2", "shop", tuple(NAMES), info, {d: ServedCert(b"", info) for d in NAMES},
                               copy=True)
        row = rp.build_report(rp.link_shared([record], {"shop": "web2"}), now=NOW).rows[0]
        assert row.status is rp.Status.OK or row.status is rp.Status.WARN
        assert any("serves the copy it took over" in n for n in row.notes)
