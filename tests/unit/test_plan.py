"""The plan as a value, table-driven and without SSH: facts + inventory in, file changes and
certificate decisions out; an empty plan says why."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from certfactory import make_certificate
from test_desired import EXAMPLE, facts, inventory

from certfab.desired import updated_facts_files
from certfab.facts import HostFacts, Lineage
from certfab.paths import ACME_INCLUDE, CRON_FILE, RENEW_SCRIPT
from certfab.plan import Plan, make_plan
from certfab.transaction import ABSENT

NOW = datetime(2026, 11, 27, tzinfo=timezone.utc)


def plan_for(host_facts: HostFacts, sites: list[dict[str, object]] | None = None) -> Plan:
    inv = inventory(sites if sites is not None else [EXAMPLE])
    return make_plan(inv.host("web1"), inv, host_facts, now=NOW, acme_ca_pem=None)


def lineage(names: list[str], *, left_days: int, lifetime_days: int = 90) -> Lineage:
    pem = make_certificate(names, not_after=NOW + timedelta(days=left_days), lifetime=timedelta(days=lifetime_days))
    return Lineage("example", pem, "")


def converged(plan: Plan, start: HostFacts) -> HostFacts:
    """The facts once the whole plan has been applied."""
    after = updated_facts_files(start, list(plan.plumbing_writes))
    after = updated_facts_files(after, list(plan.https_writes))
    owned = dict(after.owned_files)
    for change in plan.files:
        if after.nginx is None or change.path not in after.nginx.files:
            owned[change.path] = change.after
    return HostFacts(**{**after.__dict__, "owned_files": owned})


@pytest.mark.parametrize("lineages, action, cause", [
    ({}, "issue", "no-certificate"),
    ({"example": lineage(["example.com", "www.example.com"], left_days=80)}, "keep", "valid"),
    ({"example": lineage(["example.com", "www.example.com"], left_days=20)}, "renew", "lifetime-left"),
    ({"example": lineage(["example.com", "www.example.com"], left_days=-1)}, "renew", "expired"),
    ({"example": lineage(["example.com"], left_days=80)}, "change-names", "names-changed"),
])
def test_certificate_decisions_carry_an_action_and_a_cause(lineages: dict[str, Lineage], action: str,
                                                          cause: str) -> None:
    [decision] = plan_for(facts(lineages)).certificates
    assert (decision.site, decision.action, decision.cause) == ("example", action, cause)
    assert decision.domains == ("example.com", "www.example.com")
    assert decision.reason


def test_a_first_plan_writes_plumbing_then_https_and_orders_one_certificate() -> None:
    plan = plan_for(facts())
    assert not plan.empty and plan.why_empty == ""
    by_path = {f.path: f for f in plan.files}
    assert by_path[ACME_INCLUDE].kind == "create" and by_path[ACME_INCLUDE].stage == "plumbing"
    assert "ACME challenge" in by_path[ACME_INCLUDE].why
    assert by_path[CRON_FILE].why == "renewal cron job" and by_path[RENEW_SCRIPT].stage == "plumbing"
    site_file = "/etc/nginx/sites-enabled/example.com"
    assert by_path[site_file].kind == "update" and by_path[site_file].diff.startswith(f"--- {site_file}\n")
    assert [o.site for o in plan.orders] == ["example"]
    # Every write expects the file as the facts saw it: a sha256, or absent.
    assert all(w.expected_sha256 for w in plan.plumbing_writes + plan.https_writes)
    assert any(w.expected_sha256 == ABSENT for w in plan.plumbing_writes)
    assert plan.describe()[-1].startswith("would request a certificate for example (example.com, www.example.com)")


def test_a_host_in_its_desired_state_has_an_empty_plan_that_says_why() -> None:
    valid = {"example": lineage(["example.com", "www.example.com"], left_days=80)}
    start = facts(valid)
    done = converged(plan_for(start), start)
    plan = plan_for(done)
    assert plan.empty and plan.files == () and plan.orders == ()
    assert plan.why_empty.startswith("every file is as desired and no certificate needs ordering")
    assert "example: valid until" in plan.why_empty


def test_an_unfinished_run_is_in_the_plan() -> None:
    plan = plan_for(HostFacts(**{**facts().__dict__, "journal": "open /var/lib/certfab/journal"}))
    assert plan.recovers_unfinished_run and not plan.empty
    assert plan.warnings[0].endswith("an unfinished earlier run will be rolled back first")


def test_the_plan_as_json_has_diffs_and_decisions() -> None:
    document = json.loads(json.dumps(plan_for(facts()).to_json()))
    assert document["host"] == "web1" and document["empty"] is False
    assert {"path", "kind", "stage", "why", "diff"} <= set(document["files"][0])
    assert document["certificates"] == [{
        "site": "example", "domains": ["example.com", "www.example.com"], "action": "issue",
        "cause": "no-certificate", "reason": "no certificate yet",
    }]


RENEWAL_CONF = """\
# renew_before_expiry = 30 days
version = {version}
archive_dir = /etc/letsencrypt/archive/example

[renewalparams]
account = 1
server = {server}
key_type = ecdsa
{profile}"""
STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


def ordered(*, server: str = STAGING, version: str = "5.8.0", profile: str = "") -> Lineage:
    pem = make_certificate(["example.com", "www.example.com"], not_after=NOW + timedelta(days=80))
    return Lineage("example", pem, RENEWAL_CONF.format(server=server, version=version, profile=profile))


@pytest.mark.parametrize("lineage_, site, action, cause", [
    (ordered(), EXAMPLE, "keep", "valid"),
    (ordered(server="https://acme-v02.api.letsencrypt.org/directory"), EXAMPLE, "renew", "server-changed"),
    (ordered(profile="preferred_profile = shortlived\n"), EXAMPLE, "renew", "profile-changed"),
    (ordered(), {**EXAMPLE, "acme": {"profile": "tlsserver"}}, "renew", "profile-changed"),
    (ordered(profile="preferred_profile = tlsserver\n"), {**EXAMPLE, "acme": {"profile": "tlsserver"}}, "keep",
     "valid"),
    (ordered(profile="required_profile = tlsserver\n"),
     {**EXAMPLE, "acme": {"profile": "tlsserver", "profile_required": True}}, "keep", "valid"),
    # certbot before 4.1 keeps no profile in the file: nothing to compare, so no order on every run.
    (ordered(version="2.1.0"), {**EXAMPLE, "acme": {"profile": "tlsserver"}}, "keep", "valid"),
])
def test_a_change_of_server_or_profile_reissues_once(lineage_: Lineage, site: dict[str, object], action: str,
                                                     cause: str) -> None:
    [decision] = plan_for(facts({"example": lineage_}), [site]).certificates
    assert (decision.action, decision.cause) == (action, cause), decision.reason


def test_a_change_of_key_type_reissues() -> None:
    inv = inventory([EXAMPLE])
    rsa = replace(inv, acme=replace(inv.acme, key_type="rsa"))
    plan = make_plan(rsa.host("web1"), rsa, facts({"example": ordered()}), now=NOW, acme_ca_pem=None)
    assert [(c.action, c.cause) for c in plan.certificates] == [("renew", "key-type-changed")]


def test_a_kept_lineage_gets_its_renewal_margin_in_the_plumbing_transaction() -> None:
    plan = plan_for(facts({"example": ordered()}))
    [conf] = [w for w in plan.plumbing_writes if w.path == "/etc/letsencrypt/renewal/example.conf"]
    assert "\nrenew_before_expiry = 30 days\n" in conf.content and conf.mode is None
    again = plan_for(facts({"example": Lineage("example", ordered().cert_pem, conf.content)}))
    assert conf.path not in {w.path for w in again.plumbing_writes}
    short = Lineage("example", make_certificate(["example.com", "www.example.com"], not_after=NOW + timedelta(
        hours=150), lifetime=timedelta(hours=160)), ordered().renewal_conf)
    plan = plan_for(facts({"example": short}))
    [conf] = [w for w in plan.plumbing_writes if w.path == "/etc/letsencrypt/renewal/example.conf"]
    assert "\nrenew_before_expiry = 80 hours\n" in conf.content



def cron_hours(plan: Plan) -> str:
    cron = next(w for w in plan.plumbing_writes if w.path == CRON_FILE)
    return cron.content.strip().splitlines()[-1].split()[1]


def test_once_a_day_becomes_twice_once_a_certificate_lives_under_ten_days() -> None:
    inv = inventory([EXAMPLE])
    host = inv.host("web1")
    daily = replace(host, renewal=replace(host.renewal, times_per_day=1))
    long_lived = facts({"example": ordered()})
    short = Lineage("example", make_certificate(["example.com", "www.example.com"], not_after=NOW + timedelta(
        hours=150), lifetime=timedelta(hours=160)), ordered().renewal_conf)
    assert "," not in cron_hours(make_plan(daily, inv, long_lived, now=NOW, acme_ca_pem=None))
    assert "," in cron_hours(make_plan(daily, inv, facts({"example": short}), now=NOW, acme_ca_pem=None))


def test_locations_with_headers_of_their_own_get_the_hsts_include_and_are_probed() -> None:
    from dataclasses import replace as with_

    from certfab.facts import ConfigFile
    from certfab.paths import HSTS_INCLUDE

    start = facts({"example": lineage(["example.com", "www.example.com"], left_days=80)})
    assert start.nginx is not None
    path = "/etc/nginx/sites-enabled/example.com"
    text = start.nginx.files[path].text.replace(
        "\tlocation / {\n\t\ttry_files $uri $uri/ =404;\n\t}\n",
        "\tlocation / {\n\t\ttry_files $uri $uri/ =404;\n\t}\n"
        "\tlocation /api/ {\n\t\tadd_header Access-Control-Allow-Origin *;\n\t}\n", 1)
    files = {**start.nginx.files, path: ConfigFile(path, path, text)}
    plan = plan_for(with_(start, nginx=with_(start.nginx, files=files)))
    written = {f.path: f.after for f in plan.files}
    assert 'add_header Strict-Transport-Security "max-age=63072000; includeSubDomains" always;' in written[HSTS_INCLUDE]
    assert "\tlocation /api/ {\n\t\tinclude /etc/nginx/certfab/hsts.conf;  # managed by certfab\n" in written[path]
    assert written[path].count(HSTS_INCLUDE) == 1
    assert plan.probe_paths == {"example": ("/api/",)}
