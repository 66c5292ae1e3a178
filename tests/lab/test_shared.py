"""A shared site on web24, web25 and web26 behind one round-robin name: one certificate and one order for
every backend, the key copied host to host, renewal on the issuer reaching the peers (deploy-all, sync),
a peer that was down catching up, and issuing handed over when the issuer leaves the inventory."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import labhelpers
import pytest
from conftest import REPO_DIR, certfab_cli
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from labhelpers import http_get

from certfab.lab import Lab

HOSTS = ("web24", "web25", "web26")
ISSUER, PEERS = HOSTS[0], HOSTS[1:]
NAMES = ("shop.shared.test", "www.shop.shared.test")
SITE = {"name": "shop", "domains": list(NAMES), "root": "/var/www/shop"}
LIVE = "/etc/letsencrypt/live/shop"
COPY = "/etc/letsencrypt/certfab-shared/shop"
RENEWAL_CONF = "/etc/letsencrypt/renewal/shop.conf"


def write_inventory(lab: Lab, directory: Path, hosts: tuple[str, ...], sites: dict[str, list[Any]] | None = None
                    ) -> Path:
    """The lab inventory with only `hosts`, each declaring the shared site (or `sites[host]`)."""

    def edit(data: dict[str, Any]) -> None:
        data["hosts"] = {name: {**data["hosts"][name], "sites": (sites or {}).get(name, [SITE])} for name in hosts}
        data["groups"] = {"shared": list(hosts)}

    return labhelpers.inventory_copy(lab, directory, edit)


def cli(lab: Lab, inventory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return certfab_cli(lab, "inv", *args, inventory=inventory)


def served(lab: Lab, host: str, name: str) -> x509.Certificate:
    """The certificate `host` serves for `name` (asked at its own address, with SNI), chain verified
    against the lab's Pebble root."""
    context = ssl.create_default_context(cafile=str(lab.info.pebble_root))
    with socket.create_connection((lab.info.host(host).address, 443), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der
    return x509.load_der_x509_certificate(der)


def served_everywhere(lab: Lab, hosts: tuple[str, ...] = HOSTS) -> dict[tuple[str, str], str]:
    """sha256 of the leaf each backend serves for each name."""
    return {(host, name): hashlib.sha256(served(lab, host, name).public_bytes(Encoding.DER)).hexdigest()
            for host in hosts for name in NAMES}


def disk_leaf(lab: Lab, host: str, directory: str) -> str:
    """sha256 of cert.pem in a lineage directory of a host."""
    pem = lab.host_path(host, f"{directory}/cert.pem").read_bytes()
    return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).hexdigest()


def orders(lab: Lab) -> int:
    """Certificates Pebble issued for the shared names (one per order that finished)."""
    return lab.pebble_issued_count()


def renew_on_issuer(lab: Lab, host: str = ISSUER) -> None:
    """Make the issuer's lineage due and run its renewal script, as its cron would."""
    lab.host_exec(host, f"sed -i '/^renew_before_expiry/d' {RENEWAL_CONF} && "
                        f"sed -i '1i renew_before_expiry = 100 days' {RENEWAL_CONF}")
    before = disk_leaf(lab, host, LIVE)
    result = lab.host_exec(host, "/usr/local/sbin/certfab-renew >/dev/null", check=False, timeout=300)
    lab.host_exec(host, f"sed -i '/^renew_before_expiry/d' {RENEWAL_CONF}")
    assert result.returncode == 0, result.stderr
    assert disk_leaf(lab, host, LIVE) != before


def wait_serving(lab: Lab, host: str, sha: str) -> None:
    deadline = time.monotonic() + 15
    while any(v != sha for v in served_everywhere(lab, (host,)).values()):
        assert time.monotonic() < deadline, f"{host} does not serve {sha[:16]}"
        time.sleep(0.2)


def report(lab: Lab, inventory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    result = cli(lab, inventory, "report-expiry", "--json")
    rows = json.loads(result.stdout)["rows"]
    return {(row["host"], row["site"]): row for row in rows}


@pytest.fixture(scope="module")
def backends(lab: Lab, module_hosts: tuple[str, ...]) -> tuple[str, ...]:
    """The three hosts, pristine, with the shared names resolving to all three (round robin)."""
    assert module_hosts == HOSTS
    for name in NAMES:
        lab.set_dns(name, *(lab.info.host(h).address for h in HOSTS))
    return HOSTS


@pytest.fixture(scope="module")
def inventory(backends: tuple[str, ...], lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_inventory(lab, tmp_path_factory.mktemp("shared"), HOSTS)


def test_same_site_with_other_domains_is_refused_before_any_host_is_contacted(
        lab: Lab, backends: tuple[str, ...], tmp_path: Path) -> None:
    other = {**SITE, "domains": [NAMES[0]]}
    path = write_inventory(lab, tmp_path, HOSTS, {"web24": [SITE], "web25": [other], "web26": [SITE]})
    logs = [labhelpers.SshdLog(lab, host) for host in HOSTS]
    result = cli(lab, path, "deploy-all")
    assert result.returncode == 2
    line = labhelpers.one_error_line(result.stderr)
    assert "hosts.web25.sites[0].domains" in line and "on host web24" in line, line
    assert all(log.logins() == [] for log in logs)


def test_deploy_all_serves_one_certificate_from_every_backend(lab: Lab, inventory: Path) -> None:
    started = time.time()
    before = orders(lab)
    result = cli(lab, inventory, "deploy-all")
    assert result.returncode == 0, result.stdout + result.stderr
    assert orders(lab) == before + 1

    shas = served_everywhere(lab)
    assert len(set(shas.values())) == 1, shas
    leaf = served(lab, ISSUER, NAMES[0])
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    assert sorted(names) == sorted(NAMES)
    assert set(shas.values()) == {disk_leaf(lab, ISSUER, LIVE)}

    # One lineage, renewed by the issuer only; peers hold a copy, the key root's alone everywhere.
    assert lab.host_path(ISSUER, RENEWAL_CONF).is_file()
    for peer in PEERS:
        assert not lab.host_path(peer, RENEWAL_CONF).exists()
        assert not lab.host_path(peer, LIVE).exists()
        assert disk_leaf(lab, peer, COPY) == disk_leaf(lab, ISSUER, LIVE)
    key = lab.host_path(ISSUER, f"{LIVE}/privkey.pem").read_text()
    for host, path in [(ISSUER, f"{LIVE}/privkey.pem"), *((p, f"{COPY}/privkey.pem") for p in PEERS)]:
        mode = lab.host_exec(host, f"stat -L -c '%U %a' {path}").stdout.split()
        assert mode == ["root", "600"], (host, mode)
        assert lab.host_path(host, path).read_text() == key

    # Every backend answers the challenge, each asked at its own address.
    token = secrets.token_hex(16)
    lab.host_exec(ISSUER, f"printf %s {token} > /var/www/letsencrypt/.well-known/acme-challenge/{token}")
    try:
        for host in HOSTS:
            for name in NAMES:
                answer = http_get(lab.info.host(host).address, name, f"/.well-known/acme-challenge/{token}")
                assert (answer.status, answer.body.decode()) == (200, token), (host, name)
    finally:
        lab.host_exec(ISSUER, f"rm -f /var/www/letsencrypt/.well-known/acme-challenge/{token}")

    # The key never reached the operator's disk: no file written since the run holds it.
    body = "".join(line for line in key.splitlines() if "PRIVATE KEY" not in line)[:64]
    assert key_files_since(started, body) == []


def key_files_since(started: float, needle: str) -> list[str]:
    """Files on this machine written since `started` that hold `needle`: the checkout (reports, logs),
    the temporary directories and the user's caches (compiled templates)."""
    found = []
    roots = [REPO_DIR, Path("/tmp"), Path("/var/tmp"), Path(os.path.expanduser("~/.cache"))]
    for root in roots:
        for directory, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in (".venv", ".git", "node_modules", "__pycache__")]
            for name in files:
                path = Path(directory) / name
                try:
                    if path.stat().st_mtime < started or path.stat().st_size > 10_000_000:
                        continue
                    if needle.encode() in path.read_bytes():
                        found.append(str(path))
                except OSError:
                    continue
    return found


def test_a_second_deploy_all_orders_nothing_and_changes_nothing(lab: Lab, inventory: Path) -> None:
    before = orders(lab)
    result = cli(lab, inventory, "deploy-all", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["host"]: row for row in json.loads(result.stdout)}
    assert {h: rows[h]["status"] for h in HOSTS} == dict.fromkeys(HOSTS, "ok")
    assert orders(lab) == before


def test_renewal_on_the_issuer_reaches_every_backend(lab: Lab, inventory: Path) -> None:
    before = orders(lab)
    renew_on_issuer(lab)
    assert orders(lab) == before + 1
    new = disk_leaf(lab, ISSUER, LIVE)
    wait_serving(lab, ISSUER, new)
    assert all(served_everywhere(lab, (p,))[(p, NAMES[0])] != new for p in PEERS)

    # deploy-all brings the peers up to date, without an order.
    result = cli(lab, inventory, "deploy-all")
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(served_everywhere(lab).values()) == {new}
    assert orders(lab) == before + 1

    # Renewed again: `inv sync` alone does it, and a second sync has nothing to do.
    renew_on_issuer(lab)
    newer = disk_leaf(lab, ISSUER, LIVE)
    result = cli(lab, inventory, "sync", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {row["host"]: row for row in json.loads(result.stdout)}
    assert all(rows[p]["status"] == "changed" for p in PEERS), rows
    assert set(served_everywhere(lab).values()) == {newer}
    again = cli(lab, inventory, "sync", "--json")
    assert again.returncode == 0
    assert all(row["status"] == "ok" for row in json.loads(again.stdout))
    assert orders(lab) == before + 2


def test_a_backend_down_during_sync_catches_up_when_back(lab: Lab, inventory: Path) -> None:
    renew_on_issuer(lab)
    new = disk_leaf(lab, ISSUER, LIVE)
    down = PEERS[1]
    lab.stop_host(down)
    try:
        result = cli(lab, inventory, "sync", "--json")
    finally:
        lab.start_host(down)
    assert result.returncode == 1
    rows = {row["host"]: row for row in json.loads(result.stdout)}
    assert rows[down]["status"] == "failed" and rows[PEERS[0]]["status"] == "changed"
    assert set(served_everywhere(lab, (ISSUER, PEERS[0])).values()) == {new}

    found = report(lab, inventory)
    lagging = found[(down, "shop")]
    assert lagging["status"] == "mismatch"
    assert any(note.startswith("lagging peer:") for note in lagging["notes"]), lagging["notes"]
    assert found[(PEERS[0], "shop")]["issuer"] == ISSUER
    assert not any(n.startswith("lagging") for n in found[(PEERS[0], "shop")]["notes"])

    result = cli(lab, inventory, "sync")
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(served_everywhere(lab).values()) == {new}
    assert all(not any(n.startswith("lagging") for n in row["notes"])
               for (host, _site), row in report(lab, inventory).items() if host in HOSTS)


def test_removing_the_issuer_hands_issuing_over_without_an_order(lab: Lab, tmp_path: Path) -> None:
    remaining = PEERS
    for name in NAMES:
        lab.set_dns(name, *(lab.info.host(h).address for h in remaining))
    path = write_inventory(lab, tmp_path, remaining)
    serving = disk_leaf(lab, ISSUER, LIVE)
    before = orders(lab)
    result = cli(lab, path, "deploy-all")
    assert result.returncode == 0, result.stdout + result.stderr
    assert orders(lab) == before
    assert set(served_everywhere(lab, remaining).values()) == {serving}

    # The new issuer answers challenges from its webroot; the other backend passes them to it.
    new_issuer, peer = remaining
    token = secrets.token_hex(16)
    lab.host_exec(new_issuer, "mkdir -p /var/www/letsencrypt/.well-known/acme-challenge && printf %s "
                              f"{token} > /var/www/letsencrypt/.well-known/acme-challenge/{token}")
    try:
        for host in remaining:
            answer = http_get(lab.info.host(host).address, NAMES[0], f"/.well-known/acme-challenge/{token}")
            assert (answer.status, answer.body.decode()) == (200, token), host
    finally:
        lab.host_exec(new_issuer, f"rm -f /var/www/letsencrypt/.well-known/acme-challenge/{token}")
    rows = report(lab, path)
    assert rows[(peer, "shop")]["issuer"] == new_issuer
    assert "shared site: this host issues it" in rows[(new_issuer, "shop")]["notes"]
    assert any("serves the copy it took over" in n for n in rows[(new_issuer, "shop")]["notes"])
    assert re.search(r"ok|warn", rows[(peer, "shop")]["status"])


def test_a_backend_that_cannot_answer_the_challenge_stops_the_order(lab: Lab, backends: tuple[str, ...],
                                                                     tmp_path: Path) -> None:
    blog = {"name": "blog", "domains": ["blog.shared.test"], "root": "/var/www/blog"}
    pair = (ISSUER, PEERS[1])
    lab.set_dns("blog.shared.test", *(lab.info.host(h).address for h in pair))
    path = write_inventory(lab, tmp_path, pair, {h: [blog] for h in pair})
    before = orders(lab)
    lab.stop_host(PEERS[1])
    try:
        result = cli(lab, path, "deploy-all", "--json")
    finally:
        lab.start_host(PEERS[1])
    assert result.returncode == 1
    rows = {row["host"]: row for row in json.loads(result.stdout)}
    error = rows[ISSUER]["error"] or ""
    address = lab.info.host(PEERS[1]).address
    assert "self-test failed" in error and f"blog.shared.test on backend {PEERS[1]} ({address})" in error, error
    assert orders(lab) == before


def test_a_shared_wildcard_through_dns01_is_issued_once_and_only_its_issuer_holds_the_credentials(
        lab: Lab, backends: tuple[str, ...], tmp_path: Path) -> None:
    pair = (ISSUER, PEERS[1])
    for host in pair:
        lab.reset_host(host)
    pool = {"name": "pool", "domains": ["*.pool.shared.test", "pool.shared.test"], "challenge": "dns-01",
            "root": "/var/www/pool"}
    path = write_inventory(lab, tmp_path, pair, {h: [pool] for h in pair})
    before = orders(lab)
    result = cli(lab, path, "deploy-all", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {row["host"]: row for row in json.loads(result.stdout)}
    assert rows[ISSUER]["certificates"] == {"pool": "issued"} and rows[PEERS[1]]["certificates"] == {"pool": "kept"}
    assert orders(lab) == before + 1
    leaves = {(host, name): served(lab, host, name).serial_number
              for host in pair for name in ("anything.pool.shared.test", "pool.shared.test")}
    assert len(set(leaves.values())) == 1, leaves
    credentials = "/etc/certfab/dns/rfc2136.ini"
    assert lab.host_exec(ISSUER, f"stat -c '%U %a' {credentials}").stdout.split() == ["root", "600"]
    assert not lab.host_path(PEERS[1], credentials).exists()
    for host in pair:  # validated through DNS: no challenge location for the site on any backend
        assert not lab.host_path(host, "/etc/nginx/certfab/acme-challenge-pool.conf").exists()
    # Credentials a peer holds (put there by hand, or by an older certfab) go: nothing there uses them.
    planted = lab.host_path(PEERS[1], credentials)
    planted.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    planted.write_bytes(lab.host_path(ISSUER, credentials).read_bytes())
    planted.chmod(0o600)
    cleaned = cli(lab, path, "deploy-all", "--json")
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    rows = {row["host"]: row for row in json.loads(cleaned.stdout)}
    assert rows[PEERS[1]]["changes"] == [f"removed {credentials}"], rows[PEERS[1]]
    assert rows[ISSUER]["status"] == "ok" and not rows[ISSUER]["changes"], rows[ISSUER]
    assert not planted.exists() and lab.host_path(ISSUER, credentials).is_file()
    again = cli(lab, path, "deploy-all", "--json")
    assert again.returncode == 0 and all(row["status"] == "ok" for row in json.loads(again.stdout)), again.stdout
    assert orders(lab) == before + 1
