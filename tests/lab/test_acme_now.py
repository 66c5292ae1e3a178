"""ACME as it is now, on the real hosts web21..web23: the current certbot in the lab's image, Debian's 2.1 beside it."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from conftest import certfab_cli
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys
from labhelpers import inventory_copy, snapshot, tree_changes

from certfab.lab import Lab, layout

HOST = "web21"


def certbot_version(lab: Lab, image: str) -> tuple[int, ...]:
    """The version `docker run --rm IMAGE --version` prints on the host."""
    out = lab.host_exec(HOST, ["docker", "run", "--rm", image, "--version"]).stdout
    match = re.fullmatch(r"certbot (\d+)\.(\d+)\.(\d+)\s*", out)
    assert match is not None, out
    return tuple(int(part) for part in match.groups())


def test_the_lab_default_image_carries_a_current_certbot_tagged_with_its_version(
    lab: Lab, module_hosts: tuple[str, ...]
) -> None:
    version = certbot_version(lab, layout.CERTBOT_IMAGE)
    assert version >= (4, 1, 0)
    assert layout.CERTBOT_IMAGE == "certbot/certbot:v" + ".".join(map(str, version))
    assert f"image: {layout.CERTBOT_IMAGE}" in lab.info.inventory.read_text()


def test_the_current_image_has_the_rfc2136_dns_plugin(lab: Lab, module_hosts: tuple[str, ...]) -> None:
    out = lab.host_exec(HOST, ["docker", "run", "--rm", layout.CERTBOT_IMAGE, "plugins"]).stdout
    assert "* dns-rfc2136" in out, out


@pytest.mark.parametrize("image", [layout.LEGACY_CERTBOT_IMAGE])
def test_debian_certbot_stays_as_a_second_image(lab: Lab, module_hosts: tuple[str, ...], image: str) -> None:
    assert certbot_version(lab, image)[:2] == (2, 1)


# --- 160-hour certificates: kept by bootstrap, not renewed by the renewal script, judged ok -----------

SHORT_LIFETIME = 160 * 3600
# web22 runs the lab's current certbot, web23 Debian's 2.1 (whose own rule renews at a fixed 30 days left).
SHORT_HOSTS = {"web22": layout.CERTBOT_IMAGE, "web23": layout.LEGACY_CERTBOT_IMAGE}
SCRIPT = "/usr/local/sbin/certfab-renew"


def pinned_images(data: dict[str, Any]) -> None:
    """Each short-lifetime host on its own certbot image."""
    for host, image in SHORT_HOSTS.items():
        data["hosts"][host]["certbot"] = {"image": image}


def host_mails(lab: Lab, host: str) -> list[EmailMessage]:
    """Mail a host sent (the lab's SMTP server is shared)."""
    address = lab.info.host(host).address
    return [m for m in lab.mails() if f"'{address}'" in str(m.get("X-Peer", ""))
            or str(m.get("Subject", "")).startswith(f"[certfab] {host}:")]


def disk_serial(lab: Lab, host: str) -> int:
    """Serial of the host's lineage certificate on disk."""
    pem = lab.host_path(host, f"/etc/letsencrypt/live/{host}/cert.pem").read_bytes()
    return x509.load_pem_x509_certificate(pem).serial_number


@pytest.fixture(scope="module")
def short_lived(lab: Lab, module_hosts: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Pebble issuing 160-hour certificates; web22 and web23 bootstrapped under it. Yields the inventory."""
    lab.set_cert_lifetime(SHORT_LIFETIME)
    try:
        inventory = inventory_copy(lab, tmp_path_factory.mktemp("short"), pinned_images)
        result = certfab_cli(lab, "fab", "-H", ",".join(SHORT_HOSTS), "bootstrap", inventory=inventory)
        assert result.returncode == 0, result.stdout + result.stderr
        yield inventory
    finally:
        lab.set_cert_lifetime(layout.CERTIFICATE_VALIDITY_SECONDS)


@pytest.mark.parametrize("host", list(SHORT_HOSTS))
def test_a_160_hour_certificate_is_not_renewed_by_the_renewal_script(lab: Lab, short_lived: Path, host: str) -> None:
    pem = lab.host_path(host, f"/etc/letsencrypt/live/{host}/cert.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(hours=160)
    conf = lab.host_path(host, f"/etc/letsencrypt/renewal/{host}.conf").read_text()
    assert re.search(r"^renew_before_expiry = 7[89] hours$", conf, re.MULTILINE), conf
    serial, issued, mails = disk_serial(lab, host), lab.pebble_issued_count(), len(host_mails(lab, host))
    for _ in range(2):
        run = lab.host_exec(host, f"{SCRIPT} >/dev/null", check=False, timeout=300)
        assert run.returncode == 0, run.stderr
        status = json.loads(lab.host_path(host, "/var/lib/certfab/status.json").read_text())
        assert status["result"] == "nothing-due" and status["renewed"] == [], status
    assert disk_serial(lab, host) == serial
    assert lab.pebble_issued_count() == issued
    time.sleep(1)  # mail goes out synchronously; a second is plenty for a stray one to arrive
    assert len(host_mails(lab, host)) == mails


def test_bootstrap_again_keeps_the_160_hour_certificates(lab: Lab, short_lived: Path) -> None:
    issued = lab.pebble_issued_count()
    result = certfab_cli(lab, "fab", "-H", ",".join(SHORT_HOSTS), "bootstrap", inventory=short_lived)
    assert result.returncode == 0, result.stdout + result.stderr
    assert lab.pebble_issued_count() == issued


def test_report_expiry_judges_160_hour_certificates_ok(lab: Lab, short_lived: Path) -> None:
    result = certfab_cli(lab, "fab", "report-expiry", "--limit", ",".join(SHORT_HOSTS), "--json",
                         inventory=short_lived)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert {(row["host"], row["status"]) for row in rows} == {(host, "ok") for host in SHORT_HOSTS}, rows


@pytest.mark.parametrize("host", list(SHORT_HOSTS))
def test_a_due_160_hour_certificate_is_renewed_once(lab: Lab, short_lived: Path, host: str) -> None:
    """Due (a margin longer than its lifetime): renewed, reloaded and mailed once; then nothing is due."""
    conf = f"/etc/letsencrypt/renewal/{host}.conf"
    original = lab.host_path(host, conf).read_text()
    serial, issued, mails = disk_serial(lab, host), lab.pebble_issued_count(), len(host_mails(lab, host))
    lab.host_exec(host, f"sed -i 's/^renew_before_expiry = .*/renew_before_expiry = 200 hours/' {conf}")
    try:
        run = lab.host_exec(host, f"{SCRIPT} >/dev/null", check=False, timeout=300)
        assert run.returncode == 0, run.stderr
        status = json.loads(lab.host_path(host, "/var/lib/certfab/status.json").read_text())
        assert status["result"] == "renewed" and status["renewed"] == [host], status
    finally:
        text = lab.host_path(host, conf).read_text()
        lab.host_path(host, conf).write_text(text.replace("renew_before_expiry = 200 hours", next(
            line for line in original.splitlines() if line.startswith("renew_before_expiry"))))
    assert disk_serial(lab, host) != serial and lab.pebble_issued_count() == issued + 1
    run = lab.host_exec(host, f"{SCRIPT} >/dev/null", check=False, timeout=300)
    assert run.returncode == 0, run.stderr
    status = json.loads(lab.host_path(host, "/var/lib/certfab/status.json").read_text())
    assert status["result"] == "nothing-due", status
    assert lab.pebble_issued_count() == issued + 1
    deadline = time.monotonic() + 10
    while len(host_mails(lab, host)) < mails + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [m["Subject"] for m in host_mails(lab, host)[mails:]] == [f"[certfab] {host}: renewal OK"]


# --- ACME profiles against Pebble 2.4, which advertises none ------------------------------------------

PROFILE_HOST = "web21"
TREES = ("/etc/nginx", "/etc/letsencrypt", "/etc/certfab", "/etc/cron.d", "/usr/local/sbin", "/var/lib/certfab")


def with_profile(profile: str, required: bool, image: str | None = None) -> Callable[[dict[str, Any]], None]:
    """An inventory edit: web21's site asks for an ACME profile (on another certbot image if given)."""

    def edit(data: dict[str, Any]) -> None:
        data["hosts"][PROFILE_HOST]["sites"][0]["acme"] = {"profile": profile, "profile_required": required}
        if image is not None:
            data["hosts"][PROFILE_HOST]["certbot"] = {"image": image}

    return edit


def bootstrap_row(lab: Lab, inventory: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`fab -H web21 bootstrap --json`, and its one recap row."""
    result = certfab_cli(lab, "fab", "-H", PROFILE_HOST, "bootstrap", "--json", inventory=inventory)
    rows = json.loads(result.stdout)
    assert isinstance(rows, list) and len(rows) == 1, result.stdout + result.stderr
    return result, rows[0]


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (None, f"{PROFILE_HOST}: site {PROFILE_HOST}: acme.profile shortlived is required, but the ACME server "
               f"{layout.ACME_DIRECTORY} cannot give it: it offers no profile shortlived (offered: none); "
               "nothing was changed"),
        (layout.LEGACY_CERTBOT_IMAGE, f"{PROFILE_HOST}: site {PROFILE_HOST}: acme.profile shortlived needs certbot "
                                      f">= 4.0, but {layout.LEGACY_CERTBOT_IMAGE} is certbot 2.1"),
    ],
)
def test_a_profile_the_ca_or_certbot_cannot_give_is_one_line_and_changes_nothing(
    lab: Lab, module_hosts: tuple[str, ...], tmp_path: Path, image: str | None, expected: str
) -> None:
    inventory = inventory_copy(lab, tmp_path, with_profile("shortlived", True, image))
    before, issued = snapshot(lab, PROFILE_HOST, TREES), lab.pebble_issued_count()
    result, row = bootstrap_row(lab, inventory)
    assert result.returncode != 0
    assert row["status"] == "failed" and row["error"] == expected, row
    assert tree_changes(before, snapshot(lab, PROFILE_HOST, TREES)) == {}
    assert lab.pebble_issued_count() == issued


def test_a_preferred_profile_the_ca_lacks_falls_back_and_says_so(
    lab: Lab, module_hosts: tuple[str, ...], tmp_path: Path
) -> None:
    inventory = inventory_copy(lab, tmp_path, with_profile("tlsserver", False))
    issued = lab.pebble_issued_count()
    result, row = bootstrap_row(lab, inventory)
    assert result.returncode == 0, result.stdout + result.stderr
    assert row["status"] == "changed", row
    warning = (f"{PROFILE_HOST}: site {PROFILE_HOST}: preferred ACME profile tlsserver not offered by "
               f"{layout.ACME_DIRECTORY}: it offers no profile tlsserver (offered: none); certbot falls back to "
               "the server's default profile")
    assert warning in row["warnings"], row
    assert lab.pebble_issued_count() == issued + 1
    conf = lab.host_path(PROFILE_HOST, f"/etc/letsencrypt/renewal/{PROFILE_HOST}.conf").read_text()
    assert re.search(r"^preferred_profile = tlsserver$", conf, re.MULTILINE), conf
    # The lineage now records the profile it asked for: the next run orders nothing.
    result, row = bootstrap_row(lab, inventory)
    assert result.returncode == 0 and row["status"] == "ok", row
    assert lab.pebble_issued_count() == issued + 1


def test_a_change_of_key_type_reissues_once(lab: Lab, module_hosts: tuple[str, ...], tmp_path: Path) -> None:
    """After the preferred-profile test web21 holds an ECDSA certificate; RSA is asked for now."""

    def rsa(data: dict[str, Any]) -> None:
        with_profile("tlsserver", False)(data)
        data["acme"]["key_type"] = "rsa"

    inventory = inventory_copy(lab, tmp_path, rsa)
    issued = lab.pebble_issued_count()
    result, row = bootstrap_row(lab, inventory)
    assert result.returncode == 0, result.stdout + result.stderr
    assert row["certificates"] == {PROFILE_HOST: "issued"}, row
    assert any("key type changed (ecdsa -> rsa)" in change for change in row["changes"]), row
    pem = lab.host_path(PROFILE_HOST, f"/etc/letsencrypt/live/{PROFILE_HOST}/cert.pem").read_bytes()
    assert isinstance(x509.load_pem_x509_certificate(pem).public_key(), rsa_keys.RSAPublicKey)
    assert lab.pebble_issued_count() == issued + 1
    result, row = bootstrap_row(lab, inventory)
    assert result.returncode == 0 and row["status"] == "ok", row
    assert lab.pebble_issued_count() == issued + 1


# --- the fleet's rate-limit guard -----------------------------------------------------------------------

LIMITED_HOST = "web22"
SITES_ONE_DOMAIN = (("one", "web22.test"), ("two", "www.web22.test"), ("three", "shop.web22.test"))


def managed_sites(host: str, sites: tuple[tuple[str, str], ...], limit: int | None = None) -> Callable[[dict[str, Any]], None]:
    """An inventory edit: the host serves these one-name managed sites (and the rate limit, if given)."""

    def edit(data: dict[str, Any]) -> None:
        data["hosts"][host]["sites"] = [{"name": name, "domains": [domain], "root": f"/var/www/{host}"}
                                        for name, domain in sites]
        if limit is not None:
            data["acme"]["rate_limits"] = {"per_registered_domain": limit}

    return edit


def plain_host(lab: Lab, host: str) -> None:
    """A pristine host without its lab site, so certfab writes a server block per managed site."""
    lab.reset_host(host)
    lab.host_exec(host, f"rm /etc/nginx/sites-enabled/{host} && nginx -s reload")


def own_state(tmp_path: Path) -> dict[str, str]:
    """An operator state directory (the order history) of this test alone."""
    return {"CERTFAB_STATE_DIR": str(tmp_path / "state")}


def refusals(stderr: str) -> list[str]:
    """The rate-limit guard's lines on stderr."""
    return [line for line in stderr.splitlines() if ": refused: " in line]


def test_the_rate_limit_guard_orders_what_fits_and_refuses_the_rest(
    lab: Lab, module_hosts: tuple[str, ...], tmp_path: Path
) -> None:
    plain_host(lab, LIMITED_HOST)
    inventory = inventory_copy(lab, tmp_path, managed_sites(LIMITED_HOST, SITES_ONE_DOMAIN, limit=2))
    env = own_state(tmp_path)
    issued = lab.pebble_issued_count()
    result = certfab_cli(lab, "fab", "-H", LIMITED_HOST, "bootstrap", inventory=inventory, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = refusals(result.stderr)
    assert re.fullmatch(r"web22: site three: refused: registered domain web22\.test has 2 new certificates in the "
                        r"last 7 days \(limit 2\); the window frees up at \d{4}-\d\d-\d\d \d\d:\d\d UTC", line), line
    assert lab.pebble_issued_count() == issued + 2
    live = lab.host_path(LIMITED_HOST, "/etc/letsencrypt/live")
    assert sorted(p.name for p in live.iterdir() if p.is_dir()) == ["one", "two"]

    listed = certfab_cli(lab, "fab", "history", "--json", inventory=inventory, env=env)
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert doc["path"] == str(tmp_path / "state" / "history.sqlite")
    events = [(e["kind"], e["site"], e["registered_domains"]) for e in doc["events"]]
    assert sorted(events) == sorted([
        ("refused", "three", ["web22.test"]), ("order", "one", ["web22.test"]), ("order", "two", ["web22.test"]),
        ("issued", "one", ["web22.test"]), ("issued", "two", ["web22.test"]),
    ]), events

    # A plan asks the guard too: the same refusal, as a forecast, and nothing recorded.
    history = tmp_path / "state" / "history.sqlite"
    recorded = history.read_bytes()
    planned = certfab_cli(lab, "fab", "-H", LIMITED_HOST, "plan", "--json", inventory=inventory, env=env)
    assert planned.returncode == 1, planned.stdout + planned.stderr
    [plan] = json.loads(planned.stdout)
    [forecast] = plan["refused"]
    assert forecast.startswith("web22: site three: would be refused: registered domain web22.test has 2 new "), plan
    assert [c["site"] for c in plan["certificates"] if c["action"] != "keep"] == ["three"], plan
    assert history.read_bytes() == recorded and lab.pebble_issued_count() == issued + 2
    # Without any history yet, a plan creates none.
    fresh = {"CERTFAB_STATE_DIR": str(tmp_path / "fresh-state")}
    assert certfab_cli(lab, "fab", "-H", LIMITED_HOST, "plan", inventory=inventory, env=fresh).returncode == 0
    assert not (tmp_path / "fresh-state" / "history.sqlite").exists()

    again = certfab_cli(lab, "fab", "-H", LIMITED_HOST, "bootstrap", inventory=inventory, env=env)
    assert again.returncode == 1, again.stdout + again.stderr
    assert [line.split("; the window")[0] for line in refusals(again.stderr)] == [line.split("; the window")[0]]
    assert lab.pebble_issued_count() == issued + 2


ELSEWHERE_HOST = "web23"
# Its DNS name points at web21; only web23's own /etc/hosts says otherwise, so certfab's self-test passes
# and the CA's validation fails.
ELSEWHERE = "www.web21.test"


def validation_attempts(lab: Lab) -> int:
    """How often Pebble has tried to validate the name that resolves elsewhere."""
    return len(re.findall(rf"http://{re.escape(ELSEWHERE)}(?::80)?/\.well-known/acme-challenge/", lab.pebble_log()))


def test_a_failed_validation_is_not_retried_within_the_backoff_unless_forced(
    lab: Lab, module_hosts: tuple[str, ...], tmp_path: Path
) -> None:
    plain_host(lab, ELSEWHERE_HOST)
    address = lab.info.host(ELSEWHERE_HOST).address
    lab.host_exec(ELSEWHERE_HOST, f"printf '%s\\t%s\\n' {address} {ELSEWHERE} >> /etc/hosts")
    inventory = inventory_copy(lab, tmp_path, managed_sites(ELSEWHERE_HOST, (("elsewhere", ELSEWHERE),)))
    env = own_state(tmp_path)

    first = certfab_cli(lab, "fab", "-H", ELSEWHERE_HOST, "bootstrap", inventory=inventory, env=env)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "the CA could not validate" in first.stdout + first.stderr
    attempts = validation_attempts(lab)
    assert attempts > 0, lab.pebble_log()[-2000:]

    second = certfab_cli(lab, "fab", "-H", ELSEWHERE_HOST, "bootstrap", inventory=inventory, env=env)
    assert second.returncode == 1, second.stdout + second.stderr
    [line] = refusals(second.stderr)
    assert line.startswith(f"web23: site elsewhere: refused: validation of {ELSEWHERE} failed 1 time(s), last at "), line
    assert line.endswith("(--force orders anyway)"), line
    assert validation_attempts(lab) == attempts

    forced = certfab_cli(lab, "fab", "-H", ELSEWHERE_HOST, "bootstrap", "--force", inventory=inventory, env=env)
    assert forced.returncode == 1 and refusals(forced.stderr) == [], forced.stdout + forced.stderr
    assert validation_attempts(lab) > attempts
    kinds = [e["kind"] for e in json.loads(certfab_cli(lab, "fab", "history", "--json", env=env).stdout)["events"]]
    assert kinds.count("failed-validation") == 2 and kinds.count("refused") == 1, kinds


def test_a_dh_group_left_by_an_earlier_dhparam_bits_goes(lab: Lab, module_hosts: tuple[str, ...],
                                                        tmp_path: Path) -> None:
    plain_host(lab, LIMITED_HOST)

    def old_profile(bits: int) -> Callable[[dict[str, Any]], None]:
        def edit(data: dict[str, Any]) -> None:
            managed_sites(LIMITED_HOST, SITES_ONE_DOMAIN[:1])(data)
            data["hosts"][LIMITED_HOST]["tls"] = {"profile": "old", "dhparam_bits": bits}
        return edit

    def group(bits: int) -> Path:
        return lab.host_path(LIMITED_HOST, f"/etc/nginx/certfab/ffdhe{bits}.pem")

    env = own_state(tmp_path)
    (tmp_path / "2048").mkdir()
    first = inventory_copy(lab, tmp_path / "2048", old_profile(2048))
    done = certfab_cli(lab, "fab", "-H", LIMITED_HOST, "bootstrap", inventory=first, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert group(2048).is_file()
    (tmp_path / "3072").mkdir()
    second = inventory_copy(lab, tmp_path / "3072", old_profile(3072))
    changed = certfab_cli(lab, "fab", "-H", LIMITED_HOST, "bootstrap", "--json", inventory=second, env=env)
    assert changed.returncode == 0, changed.stdout + changed.stderr
    [row] = json.loads(changed.stdout)
    assert "removed /etc/nginx/certfab/ffdhe2048.pem" in row["changes"], row
    assert not group(2048).exists() and group(3072).is_file()
    options = lab.host_path(LIMITED_HOST, "/etc/nginx/certfab/tls-options.conf").read_text()
    assert "ssl_dhparam /etc/nginx/certfab/ffdhe3072.pem;" in options
    assert lab.host_exec(LIMITED_HOST, "nginx -t 2>&1").stdout.strip().endswith("test is successful")
    before = snapshot(lab, LIMITED_HOST, TREES)
    again = certfab_cli(lab, "fab", "-H", LIMITED_HOST, "bootstrap", "--json", inventory=second, env=env)
    assert again.returncode == 0 and json.loads(again.stdout)[0]["changes"] == [], again.stdout
    assert snapshot(lab, LIMITED_HOST, TREES) == before
