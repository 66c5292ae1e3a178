"""The lab itself works: pinned-key SSH, the plain HTTP site, real HTTP-01 issuance, mail, stop/start."""

from __future__ import annotations

import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from cryptography import x509

from certfab.inventory import load_inventory
from certfab.lab import Lab, layout


def ssh(
    lab: Lab, name: str, *command: str, known_hosts: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command on a lab host with the OpenSSH client, host key checked against lab/known_hosts."""
    info = lab.info
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(info.key_file),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts or info.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=5",
            f"root@{info.host(name).address}",
            *command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def http_get(address: str, host_header: str) -> tuple[int, str]:
    """GET / from an address with a given Host header, ignoring any proxy settings."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"http://{address}/", headers={"Host": host_header})
    with opener.open(request, timeout=10) as response:
        return response.status, response.read().decode()


def test_lab_inventory_loads_and_lists_every_host(lab: Lab) -> None:
    inventory = load_inventory(lab.info.inventory)
    assert [host.name for host in inventory.hosts] == list(lab.info.host_names)
    assert inventory.groups["lab"] == lab.info.host_names
    assert inventory.acme.server == lab.info.acme_directory
    assert inventory.acme.ca_bundle == lab.info.pebble_ca
    assert inventory.acme.trust_roots == lab.info.pebble_root
    web1 = inventory.host("web1")
    assert web1.address == "10.77.0.11"
    assert web1.sites[0].domains == ("web1.test", "www.web1.test")
    assert web1.key_file == lab.info.key_file


@pytest.mark.parametrize("name", ["web1", "web2"])
def test_ssh_with_pinned_host_key_runs_commands(lab: Lab, name: str) -> None:
    result = ssh(lab, name, "hostname")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == name


def test_ssh_refuses_a_host_missing_from_known_hosts(lab: Lab, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    result = ssh(lab, "web1", "true", known_hosts=empty)
    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr


def test_plain_http_site_names_its_host(lab: Lab) -> None:
    status, body = http_get(lab.info.host("web1").address, "web1.test")
    assert status == 200
    assert "Hello from web1" in body


def test_certbot_in_docker_gets_a_certificate_from_pebble_over_http01(lab: Lab) -> None:
    info = lab.info
    before = lab.pebble_issued_count()
    try:
        result = lab.host_exec(
            "web1",
            [
                "docker",
                "run",
                "--rm",
                "--network",
                "host",
                "-v",
                "/etc/letsencrypt:/etc/letsencrypt",
                "-v",
                "/var/lib/letsencrypt:/var/lib/letsencrypt",
                "-v",
                "/var/log/letsencrypt:/var/log/letsencrypt",
                "-v",
                "/var/www/web1:/var/www/web1",
                "-v",
                f"{info.pebble_ca}:/etc/certfab/acme-ca.pem:ro",
                "-e",
                "REQUESTS_CA_BUNDLE=/etc/certfab/acme-ca.pem",
                layout.CERTBOT_IMAGE,
                "certonly",
                "--webroot",
                "-w",
                "/var/www/web1",
                "-d",
                "web1.test",
                "--server",
                info.acme_directory,
                "--agree-tos",
                "-m",
                "a@lab.test",
                "--non-interactive",
            ],
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert lab.pebble_issued_count() == before + 1
        assert "Attempting to validate w/ HTTP: http://web1.test:80/" in lab.pebble_log()

        chain = x509.load_pem_x509_certificates(
            lab.host_path("web1", "/etc/letsencrypt/live/web1.test/fullchain.pem").read_bytes()
        )
        leaf = chain[0]
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == ["web1.test"]
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert 89 <= lifetime.days <= 91
        root = x509.load_pem_x509_certificate(info.pebble_root.read_bytes())
        assert chain[-1].issuer == root.subject
        chain[-1].verify_directly_issued_by(root)

        access_log = lab.host_exec("web1", ["cat", "/var/log/nginx/web1.access.log"]).stdout
        assert "/.well-known/acme-challenge/" in access_log
        assert "Pebble-VA" in access_log
    finally:
        lab.reset_host("web1")

    assert list(lab.host_path("web1", "/etc/letsencrypt").iterdir()) == []
    assert lab.host_exec("web1", "crontab -l", check=False).returncode != 0
    after_reset = ssh(lab, "web1", "hostname")
    assert after_reset.returncode == 0, after_reset.stderr


def test_sendmail_on_a_host_reaches_the_lab_mailbox(lab: Lab) -> None:
    subject = f"lab smoke {uuid.uuid4().hex}"
    lab.host_exec("web1", ["sendmail", "-t"], input=f"To: ops@lab.test\nSubject: {subject}\n\nHello.\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [m for m in lab.mails() if m["Subject"] == subject]
        if found:
            break
        time.sleep(0.1)
    assert found, "the message did not arrive"
    assert found[0]["To"] == "ops@lab.test"
    assert found[0]["From"] == "root@web1.test"


def test_stopped_host_refuses_ssh_and_returns_with_the_same_host_key(lab: Lab) -> None:
    lab.stop_host("web2")
    try:
        assert ssh(lab, "web2", "true").returncode == 255
        with pytest.raises(OSError):
            http_get(lab.info.host("web2").address, "web2.test")
    finally:
        lab.start_host("web2")
    result = ssh(lab, "web2", "hostname")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "web2"
