"""DNS-01 on a real host: the lab DNS (BIND 9) and its dynamic updates, then certificates validated through it."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import certfab_cli
from cryptography import x509
from labhelpers import https_get, inventory_copy, one_error_line, snapshot

from certfab.lab import Lab, layout, proc

HOST = "web27"
SITE = "internal"
WILDCARD = "*.web27.test"
# Names the certificate covers that no DNS record or port-80 block exists for: only DNS-01 can prove them.
UNDER_WILDCARD = "anything.web27.test"
REPO_DIR = Path(__file__).resolve().parents[2]
CREDENTIALS = "/etc/certfab/dns/rfc2136.ini"
RENEWAL_CONF = f"/etc/letsencrypt/renewal/{SITE}.conf"
MANAGED = f"/etc/nginx/conf.d/certfab-{SITE}.conf"
# The CA (Pebble, on the bridge address) cannot reach the host's port 80.
CLOSE_PORT_80 = f"INPUT -s {layout.BRIDGE_ADDRESS} -p tcp --dport 80 -j DROP"
# Everything certfab printed during this module, searched for the credentials at the end.
OUTPUTS: list[str] = []
STARTED: list[float] = []


def resolve(lab: Lab, name: str, record: str = "A") -> list[str]:
    """What the lab DNS answers for a name, asked from a host as its resolver would (sorted)."""
    result = lab.host_exec(HOST, ["dig", "+short", "+norecurse", f"@{layout.BRIDGE_ADDRESS}", name, record])
    return sorted(line for line in result.stdout.split() if line)


def test_the_lab_dns_is_bind_with_the_hosts_names(lab: Lab, module_hosts: tuple[str, ...]) -> None:
    """named answers on the bridge address for every host's names, authoritatively."""
    pid = proc.live_pid(layout.pid_file("dns"))
    assert pid is not None and proc.exe(pid) == "/usr/sbin/named"
    assert resolve(lab, f"www.{HOST}.test") == [lab.info.host(HOST).address]
    answer = lab.host_exec(HOST, ["dig", "+norecurse", f"@{layout.BRIDGE_ADDRESS}", f"{HOST}.test"]).stdout
    assert " aa " in answer.split("flags:")[1].split(";")[0] + " "


def test_set_dns_publishes_round_robin_names_and_clears_them(lab: Lab, module_hosts: tuple[str, ...]) -> None:
    """lab.set_dns with several addresses answers all of them; clear_dns removes the name."""
    lab.set_dns("rr.web27.test", "10.77.0.37", "10.77.0.38")
    assert resolve(lab, "rr.web27.test") == ["10.77.0.37", "10.77.0.38"]
    lab.set_dns("rr.web27.test", "10.77.0.39")
    assert resolve(lab, "rr.web27.test") == ["10.77.0.39"]
    lab.clear_dns("rr.web27.test")
    assert resolve(lab, "rr.web27.test") == []


def test_inv_lab_dns_add_publishes_names(lab: Lab, module_hosts: tuple[str, ...]) -> None:
    """`inv lab.dns-add NAME A,B` and `inv lab.dns-clear NAME`, as an operator types them."""
    inv = str(Path(__import__("sys").executable).parent / "inv")
    added = subprocess.run([inv, "lab.dns-add", "cli.web27.test", "10.77.0.41,10.77.0.42"], cwd=REPO_DIR,
                           capture_output=True, text=True, timeout=60, check=False)
    assert added.returncode == 0, added.stdout + added.stderr
    assert resolve(lab, "cli.web27.test") == ["10.77.0.41", "10.77.0.42"]
    refused = subprocess.run([inv, "lab.dns-add", "cli.example.com", "10.77.0.41"], cwd=REPO_DIR,
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0 and "lab zone" in refused.stderr
    cleared = subprocess.run([inv, "lab.dns-clear", "cli.web27.test"], cwd=REPO_DIR,
                             capture_output=True, text=True, timeout=60, check=False)
    assert cleared.returncode == 0, cleared.stdout + cleared.stderr
    assert resolve(lab, "cli.web27.test") == []


def test_an_unsigned_update_is_refused(lab: Lab, module_hosts: tuple[str, ...]) -> None:
    """Only the lab's TSIG key may change the zone."""
    script = f"server {layout.BRIDGE_ADDRESS} 53\nzone test.\nupdate add evil.test. 1 A 10.77.0.66\nsend\n"
    result = lab.host_exec(HOST, ["nsupdate"], check=False, input=script)
    assert result.returncode != 0 and "REFUSED" in result.stdout + result.stderr
    assert resolve(lab, "evil.test") == []


# --- DNS-01 with certfab ----------------------------------------------------------------------------


def sh(lab: Lab, command: str, check: bool = True) -> str:
    """A shell command on the host; its stdout."""
    return lab.host_exec(HOST, command, check=check).stdout


def only_this_host(site: dict[str, Any]) -> Any:
    """An inventory edit: web27 alone, with one site."""

    def edit(data: dict[str, Any]) -> None:
        data["hosts"] = {HOST: {**data["hosts"][HOST], "sites": [site]}}
        data["groups"] = {"dns": [HOST]}

    return edit


def fab(lab: Lab, inventory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`fab ARGS` against an inventory; its output is kept for the leak check."""
    result = certfab_cli(lab, "fab", *args, inventory=inventory)
    OUTPUTS.append(result.stdout + result.stderr)
    return result


def bootstrap(lab: Lab, inventory: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`fab -H web27 bootstrap --json`: the process and the host's recap row."""
    result = fab(lab, inventory, "-H", HOST, "bootstrap", "--json")
    rows = json.loads(result.stdout)
    assert [row["host"] for row in rows] == [HOST], result.stdout + result.stderr
    return result, rows[0]


def served(lab: Lab, name: str) -> tuple[int, bytes, x509.Certificate]:
    """Status, body and leaf of https://name/ asked from the host's address with SNI, chain verified."""
    response, leaf = https_get(lab.info.host(HOST).address, name, lab.info.pebble_root)
    return response.status, response.body, x509.load_der_x509_certificate(leaf)


def secret_of(lab: Lab) -> str:
    """The TSIG secret in the lab's rfc2136 credentials."""
    text = (lab.info.lab_dir / layout.LAB_FILES["dns_credentials"]).read_text()
    match = re.search(r"^dns_rfc2136_secret = (\S+)$", text, re.M)
    assert match is not None
    return match.group(1)


@pytest.fixture(scope="module")
def internal(lab: Lab, module_hosts: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """web27 as an internal service: no port-80 site at all, port 80 closed to the CA; the inventory."""
    STARTED.append(time.time())
    sh(lab, f"rm -f /etc/nginx/sites-enabled/{HOST} && nginx -s reload")
    sh(lab, f"iptables -I {CLOSE_PORT_80}")
    site = {"name": SITE, "domains": [WILDCARD, f"{HOST}.test"], "challenge": "dns-01", "root": f"/var/www/{HOST}"}
    yield inventory_copy(lab, tmp_path_factory.mktemp("dns01"), only_this_host(site))
    sh(lab, "iptables -F INPUT", check=False)


def test_a_wildcard_on_an_http01_site_is_refused_before_anything_changes(
        lab: Lab, internal: Path, tmp_path: Path) -> None:
    site = {"name": SITE, "domains": [WILDCARD], "root": f"/var/www/{HOST}"}
    path = inventory_copy(lab, tmp_path, only_this_host(site))
    before = snapshot(lab, HOST, ("/etc/nginx", "/etc/letsencrypt", "/etc/certfab"))
    result = fab(lab, path, "-H", HOST, "bootstrap")
    assert result.returncode == 2, result.stdout + result.stderr
    assert one_error_line(result.stderr) == (
        f"error: {path}: hosts.{HOST}.sites[0].domains[0]: '{WILDCARD}' is a wildcard; wildcards need "
        "challenge: dns-01 (HTTP-01 cannot validate them)"
    )
    assert "Traceback" not in result.stderr
    assert snapshot(lab, HOST, ("/etc/nginx", "/etc/letsencrypt", "/etc/certfab")) == before


def test_the_plan_shows_the_credentials_file_but_never_its_content(lab: Lab, internal: Path) -> None:
    result = fab(lab, internal, "-H", HOST, "plan", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    [plan] = json.loads(result.stdout)
    [change] = [f for f in plan["files"] if f["path"] == CREDENTIALS]
    assert change["kind"] == "create" and "never shown" in change["diff"]
    assert secret_of(lab) not in result.stdout + result.stderr


def test_a_wildcard_is_issued_through_dns_and_served_without_port_80(lab: Lab, internal: Path) -> None:
    issued_before = lab.pebble_issued_count()
    result, row = bootstrap(lab, internal)
    assert result.returncode == 0, result.stdout + result.stderr
    assert row["certificates"] == {SITE: "issued"}
    assert lab.pebble_issued_count() == issued_before + 1
    status, body, leaf = served(lab, UNDER_WILDCARD)
    assert status == 200 and f"Hello from {HOST}".encode() in body
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(names.get_values_for_type(x509.DNSName)) == sorted([WILDCARD, f"{HOST}.test"])
    assert served(lab, f"{HOST}.test")[2].serial_number == leaf.serial_number
    assert "authenticator = dns-rfc2136" in sh(lab, f"cat {RENEWAL_CONF}")
    # No port-80 block and no challenge location for the site: it is an internal service.
    config = sh(lab, f"cat {MANAGED}")
    assert "listen 443 ssl" in config and "listen 80" not in config and "acme-challenge" not in config


def test_the_credentials_are_root_only_on_the_host(lab: Lab, internal: Path) -> None:
    assert sh(lab, f"stat -c '%U:%G %a' {CREDENTIALS}").split() == ["root:root", "600"]
    host_copy = lab.host_path(HOST, CREDENTIALS).read_text()
    assert host_copy == (lab.info.lab_dir / layout.LAB_FILES["dns_credentials"]).read_text()
    assert f"DNS_CREDENTIALS={CREDENTIALS}" in sh(lab, "cat /etc/certfab/renew.env")
    facts = fab(lab, internal, "-H", HOST, "facts", "--json")
    assert facts.returncode == 0 and secret_of(lab) not in facts.stdout


def test_a_second_run_changes_nothing_and_orders_nothing(lab: Lab, internal: Path) -> None:
    issued_before = lab.pebble_issued_count()
    before = snapshot(lab, HOST, ("/etc/nginx", "/etc/letsencrypt", "/etc/certfab"))
    result, row = bootstrap(lab, internal)
    assert result.returncode == 0, result.stdout + result.stderr
    assert row["certificates"] == {SITE: "kept"} and not row["done"] and not row["changes"], row
    assert lab.pebble_issued_count() == issued_before
    assert snapshot(lab, HOST, ("/etc/nginx", "/etc/letsencrypt", "/etc/certfab")) == before


def test_the_cron_script_renews_the_wildcard_through_dns(lab: Lab, internal: Path) -> None:
    old = served(lab, UNDER_WILDCARD)[2].serial_number
    sh(lab, f"sed -i '/^renew_before_expiry/d' {RENEWAL_CONF} && sed -i '1i renew_before_expiry = 100 days' "
            f"{RENEWAL_CONF}")
    try:
        run = lab.host_exec(HOST, "/usr/local/sbin/certfab-renew >/dev/null", check=False, timeout=300)
    finally:
        sh(lab, f"sed -i '/^renew_before_expiry/d' {RENEWAL_CONF}")
    assert run.returncode == 0, run.stderr
    status = json.loads(sh(lab, "cat /var/lib/certfab/status.json"))
    assert status["result"] == "renewed" and status["renewed"] == [SITE], status
    deadline = time.monotonic() + 10
    new = served(lab, UNDER_WILDCARD)[2].serial_number
    while new == old and time.monotonic() < deadline:
        time.sleep(0.2)
        new = served(lab, UNDER_WILDCARD)[2].serial_number
    assert new != old, "nginx does not serve the renewed certificate"
    mails = [m for m in lab.mails() if str(m.get("Subject", "")) == f"[certfab] {HOST}: renewal OK"]
    assert mails, "no renewal mail"


def test_the_report_puts_the_hosts_renewal_into_the_order_history(lab: Lab, internal: Path, tmp_path: Path) -> None:
    env = {"CERTFAB_STATE_DIR": str(tmp_path / "state")}
    for _ in range(2):  # read twice, recorded once
        report = certfab_cli(lab, "fab", "report-expiry", "--limit", HOST, "--format", "json", inventory=internal,
                             env=env)
        assert report.returncode in (0, 1), report.stdout + report.stderr
        OUTPUTS.append(report.stdout + report.stderr)
    listed = certfab_cli(lab, "fab", "history", "--json", inventory=internal, env=env)
    assert listed.returncode == 0, listed.stderr
    events = [(e["kind"], e["host"], e["site"], e["renewal"], e["detail"]) for e in json.loads(listed.stdout)["events"]]
    assert events == [("issued", HOST, SITE, True, "renewed by the host's cron job")], events
    leaf = served(lab, UNDER_WILDCARD)[2]
    [event] = json.loads(listed.stdout)["events"]
    assert event["time"] == f"{leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"


def test_uninstall_keeps_the_internal_site_on_https_and_takes_the_credentials(lab: Lab, internal: Path) -> None:
    serial = served(lab, UNDER_WILDCARD)[2].serial_number
    result = fab(lab, internal, "-H", HOST, "uninstall")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing renews" in result.stderr and f"{MANAGED} (a site certfab wrote) is now" in result.stderr
    # The site certfab wrote stays served under a name of its own, wildcard and all, certfab's files gone.
    status, body, leaf = served(lab, UNDER_WILDCARD)
    assert status == 200 and f"Hello from {HOST}".encode() in body and leaf.serial_number == serial
    assert served(lab, f"{HOST}.test")[0] == 200
    assert not lab.host_path(HOST, CREDENTIALS).exists() and not lab.host_path(HOST, MANAGED).exists()
    assert lab.host_path(HOST, f"/etc/nginx/conf.d/{SITE}.conf").is_file()
    assert sh(lab, "grep -rl 'certfab/' /etc/nginx || true").strip() == ""
    assert sh(lab, "nginx -t 2>&1").strip().splitlines()[-1].endswith("test is successful")
    before = snapshot(lab, HOST, ("/etc/nginx", "/etc/letsencrypt", "/etc/certfab"))
    again = fab(lab, internal, "-H", HOST, "uninstall")
    assert again.returncode == 0 and "no change" in again.stdout, again.stdout + again.stderr
    assert snapshot(lab, HOST, ("/etc/nginx", "/etc/letsencrypt", "/etc/certfab")) == before


def test_no_output_or_run_log_holds_the_credentials(lab: Lab, internal: Path) -> None:
    secret = secret_of(lab)
    logs = [p for p in (REPO_DIR / "reports").glob("*.json") if p.stat().st_mtime >= STARTED[0] - 1]
    assert OUTPUTS and logs, "no output or run log to check"
    for text in OUTPUTS + [p.read_text() for p in logs]:
        assert secret not in text
