"""remove-site and uninstall as plans (pure): a bootstrapped site's file comes back byte for byte."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_desired import EXAMPLE, facts
from test_plan import converged, lineage, plan_for

from certfab.errors import PreflightError
from certfab.facts import ConfigFile, HostFacts
from certfab.offboard import certfab_sites, plan_removal, plan_uninstall
from certfab.origin import origin_path
from certfab.tls import site_include_path


def bootstrapped() -> tuple[HostFacts, HostFacts]:
    start = facts({"example": lineage(["example.com", "www.example.com"], left_days=80)})
    return start, converged(plan_for(start, [EXAMPLE]), start)


def with_file(host_facts: HostFacts, real_path: str, text: str) -> HostFacts:
    assert host_facts.nginx is not None
    files = {p: replace(f, text=text) if f.real_path == real_path else f for p, f in host_facts.nginx.files.items()}
    return replace(host_facts, nginx=replace(host_facts.nginx, files=files))


def site_file(host_facts: HostFacts) -> ConfigFile:
    assert host_facts.nginx is not None
    return host_facts.nginx.files["/etc/nginx/sites-enabled/example.com"]


def test_bootstrap_records_the_text_before_its_edits_and_remove_site_restores_it() -> None:
    start, after = bootstrapped()
    assert origin_path("example") in after.owned_files
    assert certfab_sites(after) == ("example",)
    plan = plan_removal("web1", "example", after, keep_certificate=False)
    restored = {w.path: w.content for w in plan.writes if not w.remove}
    original = site_file(start)
    assert restored == {original.real_path: original.text}
    assert {w.path for w in plan.writes if w.remove} == {site_include_path("example"), origin_path("example")}
    assert plan.lineages == ("example",)
    assert plan.domains == ("example.com", "www.example.com")


def test_an_admin_edit_elsewhere_survives_and_one_in_certfabs_lines_stops_it() -> None:
    start, after = bootstrapped()
    converted = site_file(after)
    edited = with_file(after, converted.real_path, "# kept by the admin\n" + converted.text)
    plan = plan_removal("web1", "example", edited, keep_certificate=True)
    assert {w.path: w.content for w in plan.writes if not w.remove} == {
        converted.real_path: "# kept by the admin\n" + site_file(start).text}
    assert plan.lineages == ()
    clash = with_file(after, converted.real_path, converted.text.replace("listen 443 ssl", "listen 8443 ssl"))
    with pytest.raises(PreflightError, match="edited where certfab changed it"):
        plan_removal("web1", "example", clash, keep_certificate=False)


def test_nothing_left_means_an_empty_plan() -> None:
    start, _ = bootstrapped()
    assert plan_removal("web1", "example", replace(start, lineages={}), keep_certificate=False).empty


def test_uninstall_inlines_includes_and_removes_every_certfab_file() -> None:
    _, after = bootstrapped()
    plan = plan_uninstall("web1", after, restore_http=False, keep_certificates=False)
    removed = {w.path for w in plan.writes if w.remove}
    assert removed == set(after.owned_files)
    text = next(w.content for w in plan.writes if w.path == site_file(after).real_path)
    assert "/etc/nginx/certfab/" not in text
    assert "ssl_certificate /etc/letsencrypt/live/example/fullchain.pem;" in text
    assert "Strict-Transport-Security" in text and "ssl_protocols TLSv1.2 TLSv1.3;" in text
    assert any("nothing renews" in w for w in plan.warnings)


def test_a_site_converted_without_a_record_gets_certfabs_lines_taken_back() -> None:
    start, after = bootstrapped()
    owned = {p: t for p, t in after.owned_files.items() if p != origin_path("example")}
    plan = plan_removal("web1", "example", replace(after, owned_files=owned), keep_certificate=False)
    text = next(w.content for w in plan.writes if w.path == site_file(after).real_path)
    assert text == site_file(start).text  # here even byte for byte: certfab's edits are that regular


def test_uninstall_keeps_a_managed_site_under_a_name_of_its_own() -> None:
    from certfab.facts import Lineage

    app = {"name": "app", "domains": ["app.example.com"], "root": "/var/www/app"}
    cert = lineage(["app.example.com"], left_days=80)
    start = facts({"example": lineage(["example.com", "www.example.com"], left_days=80),
                   "app": Lineage("app", cert.cert_pem, "")})
    after = converged(plan_for(start, [EXAMPLE, app]), start)
    assert "/etc/nginx/conf.d/certfab-app.conf" in after.owned_files
    plan = plan_uninstall("web1", after, restore_http=False, keep_certificates=False)
    by_path = {w.path: w for w in plan.writes}
    assert by_path["/etc/nginx/conf.d/certfab-app.conf"].remove
    kept = by_path["/etc/nginx/conf.d/app.conf"]
    assert not kept.remove and kept.expected_sha256 == "absent"
    assert "/etc/nginx/certfab/" not in kept.content and "server_name app.example.com;" in kept.content
    assert "ssl_certificate /etc/letsencrypt/live/app/fullchain.pem;" in kept.content


def test_a_peer_of_a_shared_site_drops_its_copy_with_the_site() -> None:
    _, after = bootstrapped()
    peer = replace(after, lineages={}, shared_copies={"example": after.lineages["example"].cert_pem})
    plan = plan_removal("web2", "example", peer, keep_certificate=False)
    assert plan.copies == ("example",) and plan.lineages == ()
    kept = plan_removal("web2", "example", peer, keep_certificate=True)
    assert kept.copies == () and any("certfab-shared/example" in w for w in kept.warnings)


def shared_bootstrapped() -> HostFacts:
    """web1 issuing `example`, which web2 also serves (a shared site), after bootstrap."""
    from pathlib import Path

    from test_desired import NOW

    from certfab.inventory import parse_inventory
    from certfab.plan import make_plan

    inv = parse_inventory({
        "acme": {"email": "admin@example.com", "server": "staging"},
        "defaults": {"renewal": {"admin_email": "ops@example.com"}},
        "hosts": {"web1": {"address": "192.0.2.10", "sites": [EXAMPLE]},
                  "web2": {"address": "192.0.2.11", "sites": [EXAMPLE]}},
    }, Path("inventory.yaml"))
    start = facts({"example": lineage(["example.com", "www.example.com"], left_days=80)})
    return converged(make_plan(inv.host("web1"), inv, start, now=NOW, acme_ca_pem=None), start)


def test_a_shared_sites_challenge_location_goes_with_the_site() -> None:
    from certfab.shared import acme_include_path

    after = shared_bootstrapped()
    acme = acme_include_path("example")
    assert acme in after.owned_files and acme in site_file(after).text
    for owned in (after.owned_files, {p: t for p, t in after.owned_files.items() if p != origin_path("example")}):
        plan = plan_removal("web1", "example", replace(after, owned_files=owned), keep_certificate=False)
        removed = {w.path for w in plan.writes if w.remove}
        assert acme in removed
        text = next(w.content for w in plan.writes if w.path == site_file(after).real_path)
        assert acme not in text
    plan = plan_uninstall("web1", after, restore_http=False, keep_certificates=False)
    text = next(w.content for w in plan.writes if w.path == site_file(after).real_path)
    assert "/etc/nginx/certfab/" not in text and "acme-challenge" not in text


def test_a_kept_certificate_is_no_longer_renewed() -> None:
    _, after = bootstrapped()
    conf = "version = 5.8.0\n[renewalparams]\nauthenticator = webroot\n"
    with_conf = replace(after, lineages={"example": replace(after.lineages["example"], renewal_conf=conf)})
    plan = plan_removal("web1", "example", with_conf, keep_certificate=True)
    [write] = [w for w in plan.writes if w.path == "/etc/letsencrypt/renewal/example.conf"]
    assert write.content == "version = 5.8.0\n[renewalparams]\nautorenew = False\nauthenticator = webroot\n"
    assert plan.lineages == ()
    assert any("no longer renewed" in w for w in plan.warnings)
    # Once switched off, it is not written again.
    done = replace(with_conf, lineages={"example": replace(with_conf.lineages["example"], renewal_conf=write.content)})
    again = plan_removal("web1", "example", done, keep_certificate=True)
    assert not [w for w in again.writes if w.path.startswith("/etc/letsencrypt/")]
