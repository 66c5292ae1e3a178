"""deploy-all on web8, web9 and web10: parallel runs, a stopped host, canary, check, no-change cost, Ctrl-C."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import labhelpers
import pytest
import yaml
from conftest import REPO_DIR, VENV_BIN, certfab_cli
from cryptography import x509

from certfab.lab import Lab

HOSTS = ("web8", "web9", "web10")
LIMIT = ",".join(HOSTS)
# Everything certfab may write on a host, its own state included.
TREES = ("/etc/nginx", "/etc/letsencrypt", "/etc/certfab", "/var/lib/certfab", "/usr/local/sbin", "/etc/cron.d",
         "/var/spool/cron", "/var/www")
# The same without certfab's own state directory (a run that changes nothing may refresh its stamp there).
CONFIG_TREES = tuple(t for t in TREES if t != "/var/lib/certfab")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def domains(lab: Lab, host: str) -> tuple[str, ...]:
    """The names the lab inventory gives a host's one site."""
    return lab.info.host(host).domains


def snapshot(lab: Lab, host: str, trees: tuple[str, ...] = TREES) -> dict[str, str]:
    """Every entry under `trees` on a host: kind, mode, owner and content hash (links by target)."""
    return labhelpers.snapshot(lab, host, trees)


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Paths that differ between two snapshots."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def validations(lab: Lab, hosts: tuple[str, ...] = HOSTS) -> int:
    """HTTP-01 validations Pebble started for these hosts' names (authz reuse is off in the lab)."""
    log = lab.pebble_log()
    return sum(log.count(f'Value:"{name}"}}') for host in hosts for name in domains(lab, host))


def deploy(lab: Lab, *args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run `inv deploy-all --limit web8,web9,web10 ARGS` and read the JSON run log it names."""
    result = certfab_cli(lab, "inv", "deploy-all", "--limit", LIMIT, *args, timeout=timeout)
    return result, run_log(result.stderr)


def run_log(stderr: str) -> dict[str, Any]:
    """The run log named on stderr (`run log: reports/...json`)."""
    match = re.search(r"^run log: (\S+)$", stderr, re.MULTILINE)
    assert match, f"no run log named on stderr:\n{stderr}"
    path = Path(match.group(1))
    document: dict[str, Any] = json.loads((path if path.is_absolute() else REPO_DIR / path).read_text())
    assert path.parent.name == "reports"
    return document


def rows(log: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The run log's recap rows by host."""
    return {row["host"]: row for row in log["hosts"]}


def recap_line(stdout: str, host: str) -> str:
    """The recap table's line for a host."""
    for line in stdout.splitlines():
        if re.search(rf"[│|]\s*{re.escape(host)}\s*[│|]", line):
            return line
    raise AssertionError(f"no recap line for {host}:\n{stdout}")


def served_names(lab: Lab, host: str, name: str) -> list[str]:
    """SAN names of the certificate served for `name`, after verifying it against the lab's Pebble root."""
    context = ssl.create_default_context(cafile=str(lab.info.pebble_root))
    with socket.create_connection((lab.info.host(host).address, 443), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der
    cert = x509.load_der_x509_certificate(der)
    return sorted(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                  .get_values_for_type(x509.DNSName))


def assert_https(lab: Lab, host: str) -> None:
    """Every name of the host's site is served over verified HTTPS with a certificate for its names."""
    for name in domains(lab, host):
        assert served_names(lab, host, name) == sorted(domains(lab, host)), name


def assert_nginx_sound(lab: Lab, host: str) -> None:
    """nginx -t passes and no transaction is left open."""
    result = lab.host_exec(host, "nginx -t", check=False)
    assert result.returncode == 0, result.stderr
    for leftover in ("/var/lib/certfab/journal", "/var/lib/certfab/journal.staging"):
        assert not lab.host_path(host, leftover).exists(), f"{host}: {leftover} left open"


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120) -> None:
    """Poll until `check()` holds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def inv_env(lab: Lab) -> dict[str, str]:
    """The environment certfab_cli gives `inv`."""
    return {**os.environ, "CERTFAB_INVENTORY": str(lab.info.inventory), "COLUMNS": "200"}


# --------------------------------------------------------------------------- pristine hosts


def test_check_plans_every_host_and_changes_nothing(lab: Lab, module_hosts: tuple[str, ...]) -> None:
    before = {h: snapshot(lab, h) for h in HOSTS}
    orders = validations(lab)

    result, log = deploy(lab, "--check")

    assert result.returncode == 0, result.stdout + result.stderr
    assert log["check"] is True
    recap = rows(log)
    assert sorted(recap) == sorted(HOSTS)
    for host in HOSTS:
        assert recap[host]["status"] == "would change", recap[host]
        assert recap[host]["certificates"] == {host: "order"}
        assert recap[host]["error"] is None
        assert "would change" in recap_line(result.stdout, host)
    assert "+++ /etc/nginx/certfab/acme-challenge.conf" in result.stdout
    assert {h: changed(before[h], snapshot(lab, h)) for h in HOSTS} == {h: [] for h in HOSTS}
    assert validations(lab) == orders, "a --check run made an ACME order"


def test_canary_stops_after_a_failed_first_host(lab: Lab, module_hosts: tuple[str, ...]) -> None:
    # A real fault: web8's configuration no longer passes `nginx -t`, so its preflight refuses it.
    broken = lab.host_path("web8", "/etc/nginx/conf.d/zz-broken.conf")
    broken.write_text("certfab_no_such_directive on;\n")
    try:
        before = {h: snapshot(lab, h) for h in HOSTS}
        orders = validations(lab)

        result, log = deploy(lab, "--canary", "1")

        assert result.returncode == 1, result.stdout + result.stderr
        recap = rows(log)
        assert recap["web8"]["status"] == "failed"
        assert "nginx -t" in recap["web8"]["error"] and "\n" not in recap["web8"]["error"]
        for host in ("web9", "web10"):
            assert recap[host]["status"] == "not started", recap[host]
            assert recap[host]["remote_commands"] == 0
            assert "canary web8 failed" in recap[host]["error"]
            assert "not started" in recap_line(result.stdout, host)
        assert {h: changed(before[h], snapshot(lab, h)) for h in HOSTS} == {h: [] for h in HOSTS}
        assert validations(lab) == orders
    finally:
        broken.unlink(missing_ok=True)


def test_a_stopped_host_fails_alone(lab: Lab, module_hosts: tuple[str, ...]) -> None:
    lab.stop_host("web10")
    try:
        result, log = deploy(lab)
    finally:
        lab.start_host("web10")

    assert result.returncode == 1, result.stdout + result.stderr
    recap = rows(log)
    assert sorted(recap) == sorted(HOSTS)
    for host in ("web8", "web9"):
        assert recap[host]["status"] == "changed", recap[host]
        assert recap[host]["certificates"] == {host: "issued"}
        assert recap[host]["error"] is None
        assert "issued" in recap_line(result.stdout, host)
        assert_https(lab, host)
        assert_nginx_sound(lab, host)
    failure = recap["web10"]
    assert failure["status"] == "failed"
    assert failure["error"].startswith("web10") and "connect" in failure["error"]
    assert "\n" not in failure["error"]
    line = recap_line(result.stdout, "web10")
    assert "failed" in line and "cannot connect" in line
    # Not a terminal: no progress, only the recap on stdout and the run log's name on stderr.
    assert [line for line in result.stderr.splitlines() if not line.startswith("run log: ")] == []
    assert "connecting" not in result.stdout and "reading facts" not in result.stdout
    assert "\x1b[" not in result.stdout + result.stderr


# --------------------------------------------------------------------------- bootstrapped hosts


@pytest.fixture(scope="module")
def converged(lab: Lab, module_hosts: tuple[str, ...]) -> None:
    """All three hosts bootstrapped (web10 may still need its first run)."""
    result, log = deploy(lab)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {row["status"] for row in log["hosts"]} <= {"ok", "changed"}


def test_second_run_changes_nothing_in_at_most_two_commands(lab: Lab, converged: None) -> None:
    before = {h: snapshot(lab, h, CONFIG_TREES) for h in HOSTS}
    orders = validations(lab)

    result, log = deploy(lab)

    assert result.returncode == 0, result.stdout + result.stderr
    for host, row in rows(log).items():
        assert row["status"] == "ok" and row["changes"] == [] and row["error"] is None, row
        assert row["certificates"] == {host: "kept"}
        assert 1 <= row["remote_commands"] <= 2, row
        assert "no change" in recap_line(result.stdout, host)
    assert {h: changed(before[h], snapshot(lab, h, CONFIG_TREES)) for h in HOSTS} == {h: [] for h in HOSTS}
    assert validations(lab) == orders


def test_check_on_bootstrapped_hosts_changes_nothing(lab: Lab, converged: None) -> None:
    before = {h: snapshot(lab, h) for h in HOSTS}

    result, log = deploy(lab, "--check")

    assert result.returncode == 0, result.stdout + result.stderr
    assert {row["status"] for row in log["hosts"]} == {"ok"}
    assert "+++ " not in result.stdout
    assert {h: changed(before[h], snapshot(lab, h)) for h in HOSTS} == {h: [] for h in HOSTS}


def test_terminal_shows_live_progress(lab: Lab, converged: None) -> None:
    try:
        controller, terminal = pty.openpty()
    except OSError as exc:
        pytest.skip(f"no pseudo-terminal here: {exc}")
    env = {**inv_env(lab), "TERM": "xterm-256color", "LINES": "40"}
    process = subprocess.Popen([str(VENV_BIN / "inv"), "deploy-all", "--limit", LIMIT], cwd=REPO_DIR, env=env,
                               stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    assert process.wait(timeout=120) == 0
    text = ANSI.sub("", b"".join(chunks).decode(errors="replace"))
    assert re.search(r"deploy-all: \d+/3 done", text), text
    assert "deploy-all recap" in text


def copy_inventory(lab: Lab, tmp_path: Path, **ssh: object) -> Path:
    """The lab inventory with other ssh settings, its relative paths made absolute."""
    lab_dir = lab.info.inventory.parent
    data = yaml.safe_load(lab.info.inventory.read_text())
    data["ssh"]["known_hosts"] = str(lab_dir / data["ssh"]["known_hosts"])
    data["ssh"].update(ssh)
    data["defaults"]["key_file"] = str(lab_dir / data["defaults"]["key_file"])
    for key in ("ca_bundle", "trust_roots"):
        data["acme"][key] = str(lab_dir / data["acme"][key])
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_silent_host_times_out_alone(lab: Lab, converged: None, tmp_path: Path) -> None:
    inventory = copy_inventory(lab, tmp_path, connect_timeout=3)
    # web10 swallows every SSH packet: only its own connect timeout can end its part of the run.
    drop = "INPUT -p tcp --dport 22 -j DROP"
    lab.host_exec("web10", f"iptables -I {drop}")
    try:
        result = certfab_cli(lab, "inv", "deploy-all", "--limit", LIMIT, inventory=inventory)
    finally:
        lab.host_exec("web10", f"iptables -D {drop}")

    assert result.returncode == 1, result.stdout + result.stderr
    recap = rows(run_log(result.stderr))
    for host in ("web8", "web9"):
        assert (recap[host]["status"], recap[host]["error"]) == ("ok", None), recap[host]
    assert recap["web10"]["status"] == "failed"
    assert "timed out after 3s" in recap["web10"]["error"], recap["web10"]


def test_drift_after_a_no_change_run_is_put_right(lab: Lab, converged: None) -> None:
    result, log = deploy(lab)
    assert result.returncode == 0 and {row["status"] for row in log["hosts"]} == {"ok"}
    # Harmless on web8 (a comment), harmful on web9 (cron line gone) and web10 (no ACME include).
    with lab.host_path("web8", "/etc/nginx/nginx.conf").open("a") as handle:
        handle.write("# an operator's note\n")
    lab.host_path("web9", "/etc/cron.d/certfab").unlink()
    site = lab.host_path("web10", "/etc/nginx/sites-available/web10")
    text = site.read_text()
    assert "include /etc/nginx/certfab/acme-challenge.conf;" in text
    site.write_text("".join(line for line in text.splitlines(keepends=True) if "acme-challenge.conf" not in line))

    result, log = deploy(lab)

    assert result.returncode == 0, result.stdout + result.stderr
    recap = rows(log)
    assert (recap["web8"]["status"], recap["web8"]["changes"]) == ("ok", [])
    # Read again: the probe, one command per include level of its configuration, the new stamp.
    assert recap["web8"]["remote_commands"] > 2, "web8 was not read again after its nginx.conf changed"
    assert recap["web9"]["status"] == "changed"
    assert "created /etc/cron.d/certfab" in recap["web9"]["changes"]
    assert "/usr/local/sbin/certfab-renew" in lab.host_path("web9", "/etc/cron.d/certfab").read_text()
    assert recap["web10"]["status"] == "changed"
    assert "include /etc/nginx/certfab/acme-challenge.conf;" in site.read_text()
    for host in HOSTS:
        assert_nginx_sound(lab, host)
        assert_https(lab, host)

    result, log = deploy(lab)
    assert result.returncode == 0
    assert [(r["status"], r["changes"]) for r in log["hosts"]] == [("ok", [])] * 3
    assert max(r["remote_commands"] for r in log["hosts"]) <= 2


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_starts_no_new_host_and_lets_the_running_one_finish(lab: Lab, module_hosts: tuple[str, ...]) -> None:
    for host in HOSTS:
        lab.reset_host(host)
    before = {h: snapshot(lab, h) for h in HOSTS}
    lock_owner = lab.host_path("web8", "/var/lib/certfab/lock.owner")
    process = subprocess.Popen(
        [str(VENV_BIN / "inv"), "deploy-all", "--limit", LIMIT, "--parallel", "1"], cwd=REPO_DIR,
        env=inv_env(lab), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Whatever the test runner does with SIGINT, the operator's shell leaves it at its default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        # web8 is the first host: it holds its lock once it starts changing files.
        wait_for("web8 to start changing", lambda: lock_owner.exists() or process.poll() is not None)
        process.send_signal(signal.SIGINT)
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)  # an impatient second Ctrl-C changes nothing
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode not in (0, None), stdout + stderr
    assert "interrupted: no new host will start" in stderr
    log = run_log(stderr)
    assert log["interrupted"] is True
    recap = rows(log)
    assert recap["web8"]["status"] in ("changed", "failed"), recap["web8"]
    for host in ("web9", "web10"):
        assert recap[host]["status"] == "not started", recap[host]
        assert "interrupted" in recap[host]["error"]
        assert changed(before[host], snapshot(lab, host)) == [], f"{host} was touched after Ctrl-C"
    # The running host finished its work (or rolled it back): a sound configuration, nothing left open.
    assert_nginx_sound(lab, "web8")
    assert lab.host_exec("web8", "flock -n /var/lib/certfab/lock true", check=False).returncode == 0
    if recap["web8"]["status"] == "changed":
        assert_https(lab, "web8")
