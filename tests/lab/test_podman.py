"""certbot under podman on the lab's podman host (the last host, which runs podman instead of dockerd)."""

from __future__ import annotations

import datetime
import json
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import certfab_cli
from cryptography import x509
from labhelpers import inventory_copy

from certfab.lab import Lab, layout

SCRIPT = "/usr/local/sbin/certfab-renew"
STATUS = "/var/lib/certfab/status.json"
TEST_CRON = "/etc/cron.d/certfab-test"


@pytest.fixture(scope="module")
def host(lab: Lab) -> Iterator[str]:
    """The lab's podman host, pristine; its images are back under their names afterwards."""
    if not lab.info.podman_hosts:
        pytest.skip("the lab has no podman host (inv lab.up --podman 1)")
    name = lab.info.podman_hosts[-1]
    lab.reset_host(name)
    yield name
    hide_image(lab, name, False)


def sh(lab: Lab, host: str, command: str, check: bool = True) -> str:
    return lab.host_exec(host, command, check=check).stdout


def hide_image(lab: Lab, host: str, hidden: bool) -> None:
    """Take the certbot image's name away (no registry is reachable to pull it), or give it back."""
    hidden_tag = "localhost/certfab-test/hidden:1"
    if hidden:
        sh(lab, host, f"podman tag {layout.CERTBOT_IMAGE} {hidden_tag} && podman rmi {layout.CERTBOT_IMAGE}")
    elif lab.host_exec(host, ["podman", "image", "exists", hidden_tag], check=False).returncode == 0:
        sh(lab, host, f"podman tag {hidden_tag} {layout.CERTBOT_IMAGE} && podman rmi {hidden_tag}")


def disk_serial(lab: Lab, host: str) -> int:
    pem = lab.host_path(host, f"/etc/letsencrypt/live/{host}/cert.pem").read_bytes()
    return x509.load_pem_x509_certificate(pem).serial_number


def test_the_podman_host_runs_no_dockerd_and_podman_has_the_images(lab: Lab, host: str) -> None:
    assert lab.host_exec(host, ["docker", "info"], check=False).returncode != 0
    for image in (layout.CERTBOT_IMAGE, layout.LEGACY_CERTBOT_IMAGE):
        out = sh(lab, host, f"podman run --rm {image} --version")
        assert out.startswith("certbot "), out
    assert "podman" in lab.info.inventory.read_text().split(f"  {host}:", 1)[1].split("\n  web", 1)[0]


def test_an_offline_podman_host_without_the_image_is_a_clear_preflight_error(lab: Lab, host: str) -> None:
    issued = lab.pebble_issued_count()
    hide_image(lab, host, True)
    try:
        result = certfab_cli(lab, "fab", "-H", host, "bootstrap", "--json")
        assert result.returncode == 1, result.stdout + result.stderr
        [row] = json.loads(result.stdout)
        assert row["error"].startswith(f"{host}: certbot image {layout.CERTBOT_IMAGE} is missing and could not "
                                       "be pulled: "), row
        assert row["changes"] == [], row
        assert not lab.host_path(host, "/etc/cron.d/certfab").exists()
        assert lab.pebble_issued_count() == issued
    finally:
        hide_image(lab, host, False)


def test_bootstrap_with_podman_issues_and_serves_https(lab: Lab, host: str) -> None:
    result = certfab_cli(lab, "fab", "-H", host, "bootstrap", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    [row] = json.loads(result.stdout)
    assert row["certificates"] == {host: "issued"}, row
    assert "RUNTIME='podman'" in sh(lab, host, "cat /etc/certfab/renew.env") or \
        "RUNTIME=podman" in sh(lab, host, "cat /etc/certfab/renew.env")


def test_renewal_runs_from_cron_under_podman(lab: Lab, host: str, tmp_path: Path) -> None:
    """A due certificate is renewed by the host's own cron entry, with certbot run by podman."""
    conf = f"/etc/letsencrypt/renewal/{host}.conf"
    serial = disk_serial(lab, host)
    [entry] = [line for line in sh(lab, host, "cat /etc/cron.d/certfab").splitlines()
               if line.strip() and not line.startswith("#") and "certfab-renew" in line]
    command = entry.split(None, 6)[6]
    sh(lab, host, f"sed -i '/^renew_before_expiry/d' {conf} && sed -i '1i renew_before_expiry = 100 days' {conf}")
    now = datetime.datetime.fromtimestamp(int(sh(lab, host, "date +%s")), datetime.UTC)
    # cron rereads /etc/cron.d at the top of each minute: leave it time to see the file first.
    target = now.replace(second=0) + datetime.timedelta(minutes=1 if now.second < 50 else 2)
    cron_file = (
        "SHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        f"{target.minute} {target.hour} * * * root {command}\n"
    )
    sh(lab, host, f"printf %s {shlex.quote(cron_file)} > {TEST_CRON} && chmod 0644 {TEST_CRON}")
    try:
        deadline = time.monotonic() + (target - now).total_seconds() + 150
        while disk_serial(lab, host) == serial:
            assert time.monotonic() < deadline, f"cron did not renew with podman at {target:%H:%M} UTC"
            time.sleep(2)
        sh(lab, host, "timeout 120 flock /var/lib/certfab/renew.lock true")
    finally:
        sh(lab, host, f"rm -f {TEST_CRON}; sed -i '/^renew_before_expiry = 100 days/d' {conf}")
    status: dict[str, Any] = json.loads(sh(lab, host, f"cat {STATUS}"))
    assert status["result"] == "renewed" and status["renewed"] == [host], status
    assert disk_serial(lab, host) != serial


def test_report_expiry_reads_the_podman_host(lab: Lab, host: str, tmp_path: Path) -> None:
    inventory = inventory_copy(lab, tmp_path)
    result = certfab_cli(lab, "fab", "report-expiry", "--limit", host, "--json", inventory=inventory)
    assert result.returncode == 0, result.stdout + result.stderr
    [row] = json.loads(result.stdout)["rows"]
    assert (row["host"], row["status"]) == (host, "ok"), row
