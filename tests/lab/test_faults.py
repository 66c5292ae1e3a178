"""Fault injection on real hosts (web11, web12): each case injects its fault for real and checks the outcome.

The matrix in docs/FAULTS.md lists every case with what it injects and what was observed. Faults are
injected inside the hosts' own namespaces (iptables, mounts, docker, files) or on the machine for what
the operator sees (known_hosts, inventory, stopped hosts, cut SSH sessions); nothing is mocked.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import json
import os
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import labhelpers
import pytest
import yaml
from conftest import VENV_BIN, certfab_cli
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from certfab.facts import FACTS_SCRIPT, REPORT_SCRIPT, facts_context, report_context
from certfab.inventory import load_inventory
from certfab.issue import issue_context
from certfab.lab import Lab, layout, proc
from certfab.remote_scripts import render_script
from certfab.stamp import probe_context

A, B = "web11", "web12"
LAB_DOMAINS = {A: ("web11.test", "www.web11.test"), B: ("web12.test", "www.web12.test")}
FAULT_DIR = "/root/.certfab-faults"  # /root is a private tree of each host, visible from the machine
BROKEN_CONF = "/etc/nginx/conf.d/zz-certfab-faults-broken.conf"
WATCHED_TREES = ("/etc/nginx", "/etc/certfab", "/usr/local/sbin", "/etc/cron.d")
HIDDEN_IMAGE = "certfab-faults/hidden:1"
IMAGE = layout.CERTBOT_IMAGE

# Every CLI output of this module, checked at the end for private key material.
OUTPUTS: list[str] = []
# What each case observed, written to reports/faults-observed.json for docs/FAULTS.md.
OBSERVED: dict[str, list[str]] = {}


def observe(case: str, *what: object) -> None:
    """Keep what a case observed (error lines, counts) for the fault matrix."""
    OBSERVED.setdefault(case, []).extend(str(item) for item in what)


# --- helpers ----------------------------------------------------------------------------------------


def cli(lab: Lab, tool: str, *args: str, inventory: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `fab`/`inv` as an operator would and keep its output for the private-key check."""
    result = certfab_cli(lab, tool, *args, inventory=inventory)
    OUTPUTS.append(result.stdout + result.stderr)
    return result


def bootstrap(lab: Lab, host: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`fab -H host bootstrap --json`: the process and the host's recap row."""
    result = cli(lab, "fab", "-H", host, "bootstrap", "--json", *extra)
    rows = json.loads(result.stdout)
    assert [row["host"] for row in rows] == [host], result.stdout + result.stderr
    return result, rows[0]


def sh(lab: Lab, host: str, command: str, check: bool = True) -> str:
    """Run a shell command inside a host; its stdout."""
    return lab.host_exec(host, command, check=check).stdout


def fresh(lab: Lab, host: str) -> None:
    """Put a host back to pristine plain HTTP, with no firewall rules and its certbot image in place."""
    sh(lab, host, "iptables -F INPUT; iptables -F OUTPUT", check=False)
    sh(lab, host, f"if docker image inspect {HIDDEN_IMAGE} >/dev/null 2>&1; then "
                  f"docker tag {HIDDEN_IMAGE} {IMAGE} && docker rmi {HIDDEN_IMAGE}; fi")
    lab.reset_host(host)


def snapshot(lab: Lab, host: str, trees: tuple[str, ...] = WATCHED_TREES) -> dict[str, str]:
    """Every file, link and directory under `trees` as the host sees it: content hash, mode and owner."""
    return labhelpers.snapshot(lab, host, trees)


def nginx_test_ok(lab: Lab, host: str) -> bool:
    """Whether `nginx -t` passes on the host."""
    return lab.host_exec(host, ["nginx", "-t"], check=False).returncode == 0


def nginx_workers(lab: Lab, host: str) -> set[int]:
    """Pids of the host's live nginx workers (a reload replaces them).

    Workers an earlier reload retired linger a moment after the new ones start: wait (up to 10 s)
    until no more than `worker_processes auto` (one per CPU) are left, so they are not counted.
    """
    master = int(sh(lab, host, "cat /run/nginx.pid").strip())
    deadline = time.monotonic() + 10
    while True:
        workers = {pid for pid in proc.descendants([master]) if "worker process" in " ".join(proc.cmdline(pid))}
        if len(workers) <= (os.cpu_count() or 1) or time.monotonic() > deadline:
            return workers
        time.sleep(0.1)


def http_get(lab: Lab, host: str, domain: str) -> tuple[int, str]:
    """GET http://domain/ from the host's address (no redirects followed): status and body."""
    address = lab.info.host(host).address
    with socket.create_connection((address, 80), timeout=10) as conn:
        conn.sendall(f"GET / HTTP/1.0\r\nHost: {domain}\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    return int(head.split()[1]), body


def port_open(lab: Lab, host: str, port: int) -> bool:
    """Whether the host accepts TCP connections on a port."""
    return proc.port_open(lab.info.host(host).address, port, timeout=2)


def served_sha256(lab: Lab, host: str, domain: str) -> str:
    """sha256 of the certificate the host serves for a domain (a real TLS handshake)."""
    context = ssl.create_default_context(cafile=str(lab.info.pebble_root))
    with socket.create_connection((lab.info.host(host).address, 443), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=domain) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def disk_sha256(lab: Lab, host: str) -> str:
    """sha256 of the site's current certificate on the host's disk."""
    pem = lab.host_path(host, f"/etc/letsencrypt/live/{host}/cert.pem").read_bytes()
    return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)).hexdigest()


def acme_validations(lab: Lab, host: str) -> int:
    """HTTP-01 validations Pebble made for the host's domains: one per domain per ACME order."""
    log = lab.pebble_log()
    return sum(len(re.findall(rf'Pulled a task .*Value:"{re.escape(d)}"', log)) for d in LAB_DOMAINS[host])


def issued_on_disk(lab: Lab, host: str) -> int:
    """How many certificates the host's lineage holds (cert1.pem, cert2.pem, ...)."""
    archive = lab.host_path(host, f"/etc/letsencrypt/archive/{host}")
    return len(list(archive.glob("cert*.pem"))) if archive.is_dir() else 0


def missing_certificates(lab: Lab, host: str) -> list[str]:
    """ssl_certificate(_key) paths in the host's nginx configuration that do not exist."""
    dump = sh(lab, host, "nginx -T 2>/dev/null")
    paths = set(re.findall(r"^\s*ssl_certificate(?:_key)?\s+(\S+?);", dump, re.MULTILINE))
    return sorted(p for p in paths if lab.host_exec(host, ["test", "-e", p], check=False).returncode != 0)


def leftovers(lab: Lab, host: str) -> list[str]:
    """certfab's hidden temp/backup files and open journals anywhere they could be left."""
    out = sh(lab, host, "find /etc/nginx /etc/certfab /usr/local/sbin /etc/cron.d -name '.certfab-*' 2>/dev/null; "
                        "ls -d /var/lib/certfab/journal /var/lib/certfab/journal.staging 2>/dev/null; true")
    return out.split()


def sshd_log_offset(host: str) -> int:
    """Current size of the host's sshd log (lab init log), to read what is logged after it."""
    path = layout.LOG_DIR / f"{host}.log"
    return path.stat().st_size if path.exists() else 0


def sshd_log_since(host: str, offset: int) -> list[str]:
    """What the host's sshd logged since `offset`, without the lab's bare port probes.

    The lab checks that sshd listens by opening and closing TCP connections (from any test session);
    those log `kex_exchange_identification` and a `Connection closed` line without `[preauth]`.
    """
    with open(layout.LOG_DIR / f"{host}.log", "rb") as handle:
        handle.seek(offset)
        lines = handle.read().decode(errors="replace").splitlines()
    probe = re.compile(r"kex_exchange_identification: .*|Connection closed by [\d.]+ port \d+")
    return [line.strip() for line in lines if line.strip() and not probe.fullmatch(line.strip())]


def host_mails(lab: Lab, host: str) -> list[EmailMessage]:
    """Mail from one host (the lab's SMTP server is shared)."""
    return [m for m in lab.mails() if str(m.get("Subject", "")).startswith(f"[certfab] {host}:")]


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60, interval: float = 0.02) -> None:
    """Poll until check() is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(interval)


def lab_inventory(lab: Lab, directory: Path, edit: Callable[[dict[str, Any]], None] | None = None,
                  hosts: tuple[str, ...] = (A, B)) -> Path:
    """A copy of the lab inventory with only `hosts`, absolute paths, and `edit` applied."""
    data = yaml.safe_load(lab.info.inventory.read_text())
    data["ssh"]["known_hosts"] = str(lab.info.known_hosts)
    data["acme"]["ca_bundle"] = str(lab.info.pebble_ca)
    data["acme"]["trust_roots"] = str(lab.info.pebble_root)
    data["defaults"]["key_file"] = str(lab.info.key_file)
    data["hosts"] = {name: data["hosts"][name] for name in hosts}
    data["groups"] = {"faults": list(hosts)}
    if edit is not None:
        edit(data)
    path = directory / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return path


class SlowNginx:
    """Makes `nginx -t` on one host sleep while a certfab journal is open and a flag file exists.

    A shell wrapper is bind-mounted over /usr/sbin/nginx in that host's mount namespace only; the
    real binary stays reachable through a second bind mount. It gives a deterministic moment at which
    an apply has switched its files but not yet tested or reloaded them.
    """

    def __init__(self, lab: Lab, host: str, seconds: int, condition: str = "true") -> None:
        self.lab, self.host, self.seconds, self.condition = lab, host, seconds, condition

    def path(self, name: str) -> Path:
        """A file of the wrapper's directory, as seen from the machine."""
        return self.lab.host_path(self.host, f"{FAULT_DIR}/{name}")

    def __enter__(self) -> SlowNginx:
        wrapper = f"""#!/bin/sh
if [ "${{1:-}}" = "-t" ] && [ -e {FAULT_DIR}/slow ] && [ -d /var/lib/certfab/journal ] && {self.condition}; then
    : > {FAULT_DIR}/sleeping
    sleep {self.seconds}
    rm -f {FAULT_DIR}/sleeping
fi
exec {FAULT_DIR}/nginx.real "$@"
"""
        sh(self.lab, self.host, f"mkdir -p {FAULT_DIR} && : > {FAULT_DIR}/nginx.real && "
                                f"mount --bind /usr/sbin/nginx {FAULT_DIR}/nginx.real")
        self.path("nginx").write_text(wrapper)
        self.path("nginx").chmod(0o755)
        sh(self.lab, self.host, f"mount --bind {FAULT_DIR}/nginx /usr/sbin/nginx")
        return self

    def arm(self) -> None:
        """From now on, `nginx -t` sleeps inside an open transaction."""
        self.path("slow").write_text("")

    def disarm(self) -> None:
        """`nginx -t` runs at once again."""
        self.path("slow").unlink(missing_ok=True)

    def sleeping(self) -> bool:
        """Whether an apply is held in `nginx -t` right now."""
        return self.path("sleeping").exists()

    def __exit__(self, *exc: object) -> None:
        self.disarm()
        wait_for("the held nginx -t to finish", lambda: not self.sleeping(), timeout=self.seconds + 30)
        sh(self.lab, self.host, f"umount /usr/sbin/nginx; umount {FAULT_DIR}/nginx.real; rm -rf {FAULT_DIR}",
           check=False)


def session_processes(host: str) -> tuple[set[int], set[proc.PidRecord]]:
    """The host's per-connection sshd processes and the commands they run, found from its sshd master.

    The lab records each host's init pid, which execs sshd; hosts share the machine's process list.
    """
    master = proc.live_pid(layout.pid_file(host))
    assert master is not None, f"{host} is not running"
    below = proc.descendants([master])
    daemons = {pid for pid in below if os.path.basename(proc.exe(pid) or "").startswith("sshd")}
    commands = {proc.record(pid) for pid in proc.descendants(daemons) - daemons if proc.start_time(pid)}
    return daemons, commands


class KeyOpeners:
    """Which programs open a file, seen with fanotify permission events (the opener waits for our answer).

    A permission event holds the opening process until it is answered, so its executable can always be
    read: nothing can open the watched file unseen while this runs.
    """

    FAN_CLOEXEC, FAN_CLASS_CONTENT, FAN_MARK_ADD, FAN_ALLOW = 0x1, 0x4, 0x1, 0x1
    FAN_OPEN_PERM = 0x00010000
    AT_FDCWD = -100
    EVENT = struct.Struct("IBBHQii")

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
        self.fd = libc.fanotify_init(self.FAN_CLOEXEC | self.FAN_CLASS_CONTENT, os.O_RDONLY)
        assert self.fd >= 0, f"fanotify_init: {os.strerror(ctypes.get_errno())}"
        mark = libc.fanotify_mark(self.fd, self.FAN_MARK_ADD, self.FAN_OPEN_PERM, self.AT_FDCWD, str(path).encode())
        assert mark == 0, f"fanotify_mark {path}: {os.strerror(ctypes.get_errno())}"
        self.openers: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._answer, daemon=True)
        self.thread.start()

    def _answer(self) -> None:
        """Record each opener's executable and command line, then let the open go ahead."""
        while not self.stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(self.fd, 4096)
            for offset in range(0, len(data), self.EVENT.size):
                _len, _vers, _res, _mlen, _mask, event_fd, pid = self.EVENT.unpack_from(data, offset)
                self.openers.append(f"{proc.exe(pid)} {' '.join(proc.cmdline(pid))}")
                os.write(self.fd, struct.pack("iI", event_fd, self.FAN_ALLOW))
                os.close(event_fd)

    def __enter__(self) -> KeyOpeners:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        os.close(self.fd)


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hosts(lab: Lab, module_hosts: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """web11 and web12, pristine; put back in order (DNS, firewall, image) when the module ends."""
    assert module_hosts == (A, B)
    yield A, B
    reports = lab.info.repo_dir / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "faults-observed.json").write_text(json.dumps(OBSERVED, indent=2, ensure_ascii=False) + "\n")
    for name, domains in LAB_DOMAINS.items():
        for domain in domains:
            lab.set_dns(domain, lab.info.host(name).address)
        sh(lab, name, "iptables -F INPUT; iptables -F OUTPUT", check=False)


@pytest.fixture(scope="module")
def issued(lab: Lab, hosts: tuple[str, str]) -> str:
    """web11 bootstrapped from pristine: certificate issued, HTTPS, renewal installed."""
    result, row = bootstrap(lab, A)
    assert result.returncode == 0, result.stdout + result.stderr
    assert row["certificates"] == {A: "issued"}
    return A


# --- re-run after success ---------------------------------------------------------------------------


def test_rerun_after_success_makes_no_acme_order(lab: Lab, issued: str) -> None:
    """Injects: nothing; a second bootstrap of a host that just succeeded. Expect: no ACME order, no write."""
    validations, on_disk = acme_validations(lab, A), issued_on_disk(lab, A)
    assert validations >= 2 and on_disk == 1  # the first run's order really reached Pebble
    before = snapshot(lab, A)
    result, row = bootstrap(lab, A)
    assert result.returncode == 0, result.stdout + result.stderr
    assert row["status"] == "ok" and row["changes"] == [] and row["certificates"] == {A: "kept"}
    assert row["remote_commands"] == 1
    assert acme_validations(lab, A) == validations
    observe("rerun", f"after the first run: {validations} Pebble validations of web11's names so far, "
            f"{on_disk} certificate",
            f"second run: status {row['status']}, {row['remote_commands']} remote command, "
            f"{acme_validations(lab, A) - validations} new validations")
    assert issued_on_disk(lab, A) == on_disk
    assert snapshot(lab, A) == before


# --- private keys -----------------------------------------------------------------------------------


def test_private_keys_are_read_only_by_nginx_on_the_host(lab: Lab, issued: str) -> None:
    """Injects: a fanotify watch on the private key while every read-only task runs.

    Expect: the only program that opens the key is nginx itself (`nginx -t`/`-T` load it to check the
    configuration); no shell, cat or base64 ever reads it, so it cannot travel to the operator.
    """
    key = lab.host_path(A, f"/etc/letsencrypt/live/{A}/privkey.pem").resolve()
    with KeyOpeners(key) as watch:
        for args in (("fab", "-H", A, "facts", "--json"), ("fab", "-H", A, "facts"), ("fab", "-H", A, "plan"),
                     ("fab", "-H", A, "bootstrap"), ("fab", "report-expiry", "--limit", A, "--json")):
            result = cli(lab, *args)
            assert result.returncode in (0, 1), result.stdout + result.stderr
    assert watch.openers, "the watch saw nothing: nginx -t should have loaded the key"
    observe("private-keys", f"{len(watch.openers)} opens of privkey.pem, all by: "
            + ", ".join(sorted({" ".join(o.split()[:3]) for o in watch.openers})))
    assert all(opener.startswith("/usr/sbin/nginx ") for opener in watch.openers), watch.openers
    assert_no_key_material(lab, [A])


def key_material(lab: Lab, host: str) -> list[str]:
    """Strings that would show a host's private key leaked: its PEM body lines and its base64 form."""
    key = lab.host_path(host, f"/etc/letsencrypt/live/{host}/privkey.pem")
    if not key.exists():
        return []
    pem = key.read_bytes()
    body = [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]
    return [*body, base64.b64encode(pem).decode()[:60]]


def assert_no_key_material(lab: Lab, hosts: list[str]) -> None:
    """No CLI output, run log, report or mail of these hosts contains private key material."""
    texts = {f"output {i}": text for i, text in enumerate(OUTPUTS)}
    reports = lab.info.repo_dir / "reports"
    for path in sorted(reports.glob("*")) if reports.is_dir() else []:
        if path.is_file():
            texts[str(path)] = path.read_text(errors="replace")
    for host in hosts:
        for index, message in enumerate(host_mails(lab, host)):
            texts[f"mail {host} {index}"] = message.as_string()
    needles = ["PRIVATE KEY", *(n for host in hosts for n in key_material(lab, host))]
    for where, text in texts.items():
        for needle in needles:
            assert needle not in text, f"private key material in {where}"


# --- renewal with a broken nginx configuration --------------------------------------------------------


def make_due(lab: Lab, host: str, due: bool) -> None:
    """Make the host's 90-day certificate due for `certbot renew` (renew 100 days before expiry), or not."""
    conf = f"/etc/letsencrypt/renewal/{host}.conf"
    sh(lab, host, f"sed -i '/^renew_before_expiry/d' {conf}")
    if due:
        sh(lab, host, f"sed -i '1i renew_before_expiry = 100 days' {conf}")


def test_renewal_with_broken_nginx_config_does_not_reload_and_says_so(lab: Lab, issued: str) -> None:
    """Injects: a due certificate and an invalid nginx file. Expect: renewed on disk, no reload, mail, status."""
    served = served_sha256(lab, A, "web11.test")
    workers = nginx_workers(lab, A)
    mails_before = len(host_mails(lab, A))
    make_due(lab, A, True)
    sh(lab, A, f"printf 'certfab_faults_bogus on;\\n' > {BROKEN_CONF}")
    try:
        result = cli(lab, "fab", "-H", A, "renew-now")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "failed" in result.stdout and "nginx -t failed, nginx NOT reloaded" in result.stdout
        status = json.loads(lab.host_path(A, "/var/lib/certfab/status.json").read_text())
        assert status["result"] == "failed" and status["nginx_test"] == "failed" and status["reload"] == "skipped"
        assert status["renewed"] == [A]
        assert "certfab_faults_bogus" in status["message"]
        assert disk_sha256(lab, A) != served, "certbot did not renew"
        assert served_sha256(lab, A, "web11.test") == served, "nginx was reloaded"
        assert nginx_workers(lab, A) == workers, "nginx was reloaded"
        wait_for("the failure mail", lambda: len(host_mails(lab, A)) > mails_before, timeout=15, interval=0.2)
        mail = host_mails(lab, A)[-1]
        assert mail["Subject"] == f"[certfab] {A}: renewal FAILED"
        assert "certfab_faults_bogus" in mail.get_content() and "NOT reloaded" in mail.get_content()
        report = cli(lab, "fab", "report-expiry", "--limit", A, "--json")
        row = json.loads(report.stdout)["rows"][0]
        assert row["status"] in ("renewal-failing", "mismatch"), row
        assert report.returncode == 2
        observe("renewal-broken-nginx", f"renew-now exit {result.returncode}: " + " ".join(result.stdout.split()),
                f"status.json: result {status['result']}, nginx_test {status['nginx_test']}, reload "
                f"{status['reload']}", f"mail: {mail['Subject']}", f"report-expiry: {row['status']}, exit 2; "
                f"notes: {row.get('notes')}", "served certificate unchanged, nginx workers unchanged")
    finally:
        sh(lab, A, f"rm -f {BROKEN_CONF}")
        make_due(lab, A, False)
    # Once the configuration is fixed, the next run reloads the certificate renewed earlier.
    result = cli(lab, "fab", "-H", A, "renew-now")
    assert result.returncode == 0, result.stdout + result.stderr
    # nginx applies a reload asynchronously: new workers take over within a moment.
    wait_for("nginx to serve the renewed certificate",
             lambda: served_sha256(lab, A, "web11.test") == disk_sha256(lab, A), timeout=15, interval=0.2)
    status = json.loads(lab.host_path(A, "/var/lib/certfab/status.json").read_text())
    assert status["result"] == "renewed" and status["reload"] == "ok"


# --- the certbot image is missing -------------------------------------------------------------------


def hide_image(lab: Lab, host: str) -> None:
    """Remove the certbot image's name on the host; no registry can be reached to pull it again."""
    sh(lab, host, f"docker tag {IMAGE} {HIDDEN_IMAGE} && docker rmi {IMAGE}")


def restore_image(lab: Lab, host: str) -> None:
    """Give the certbot image its name back."""
    sh(lab, host, f"docker tag {HIDDEN_IMAGE} {IMAGE} && docker rmi {HIDDEN_IMAGE}")


def test_missing_certbot_image_fails_bootstrap_clearly(lab: Lab, hosts: tuple[str, str]) -> None:
    """Injects: `docker rmi` of the image, no registry reachable. Expect: clear error naming it, no order."""
    validations = acme_validations(lab, B)
    hide_image(lab, B)
    try:
        result, row = bootstrap(lab, B)
        assert result.returncode == 1
        assert row["status"] == "failed"
        assert row["error"].startswith(f"{B}: certbot image {IMAGE} is missing and could not be pulled: ")
        observe("image-missing-bootstrap", row["error"])
        assert acme_validations(lab, B) == validations
        assert nginx_test_ok(lab, B) and missing_certificates(lab, B) == []
        assert http_get(lab, B, "web12.test")[0] == 200
    finally:
        restore_image(lab, B)


def test_missing_certbot_image_fails_renewal_with_mail_and_report(lab: Lab, issued: str) -> None:
    """Injects: `docker rmi` of the image on a host due for renewal. Expect: failure mail, status, report."""
    mails_before = len(host_mails(lab, A))
    served = served_sha256(lab, A, "web11.test")
    make_due(lab, A, True)
    hide_image(lab, A)
    try:
        result = cli(lab, "fab", "-H", A, "renew-now", "--json")
        assert result.returncode == 1, result.stdout + result.stderr
        row = json.loads(result.stdout)[0]
        assert row["result"] == "failed" and row["certbot_exit"] != 0
        assert row["message"].startswith("certbot renew exited with status")
        wait_for("the failure mail", lambda: len(host_mails(lab, A)) > mails_before, timeout=15, interval=0.2)
        mail = host_mails(lab, A)[-1]
        assert mail["Subject"] == f"[certfab] {A}: renewal FAILED"
        assert IMAGE in mail.get_content()
        report = cli(lab, "fab", "report-expiry", "--limit", A, "--json")
        row = json.loads(report.stdout)["rows"][0]
        assert row["status"] == "renewal-failing", row
        observe("image-missing-renewal", f"renew-now: result failed, message {json.loads(result.stdout)[0]['message']!r}",
                f"mail: {mail['Subject']}", f"report-expiry: {row['status']}, notes: {row.get('notes')}")
        assert report.returncode == 2
        assert served_sha256(lab, A, "web11.test") == served
    finally:
        restore_image(lab, A)
        make_due(lab, A, False)


# --- an edit makes nginx -t fail ----------------------------------------------------------------------


def add_to_site(lab: Lab, host: str, text: str) -> None:
    """Insert lines into the host's own server block, before its `location /`."""
    path = lab.host_path(host, f"/etc/nginx/sites-available/{host}")
    site = path.read_text()
    assert "\tlocation / {" in site
    path.write_text(site.replace("\tlocation / {", text + "\tlocation / {", 1))
    assert nginx_test_ok(lab, host)


def test_nginx_t_failure_while_adding_acme_include_restores_every_file(lab: Lab, hosts: tuple[str, str]) -> None:
    """Injects: the site already has its own ACME location, so certfab's include duplicates it.

    Expect: nginx -t fails inside the transaction, every file is restored byte for byte, no reload.
    """
    fresh(lab, B)
    add_to_site(lab, B, "\tlocation ^~ /.well-known/acme-challenge/ {\n\t\troot /var/www/web12;\n\t}\n\n")
    before, workers = snapshot(lab, B), nginx_workers(lab, B)
    validations = acme_validations(lab, B)
    result, row = bootstrap(lab, B)
    assert result.returncode == 1
    assert row["error"].startswith(f"{B}: nginx -t failed after installing ACME plumbing: ")
    assert 'duplicate location "/.well-known/acme-challenge/"' in row["error"]
    assert "[emerg]" in row["error"] and "every file was restored, nginx still runs the old configuration" in row["error"]
    observe("nginx-t-acme", row["error"])
    assert snapshot(lab, B) == before
    assert leftovers(lab, B) == []
    assert nginx_workers(lab, B) == workers
    assert http_get(lab, B, "web12.test")[0] == 200
    assert "Hello from web12" in http_get(lab, B, "web12.test")[1]
    assert acme_validations(lab, B) == validations


def test_nginx_t_failure_while_switching_to_https_restores_every_file(lab: Lab, hosts: tuple[str, str]) -> None:
    """Injects: an http-level `ssl_session_cache` zone of another size than the TLS include's (emerg).

    Expect: the HTTPS switch is rolled back byte for byte, no block points at a missing certificate, the
    old HTTP site still serves; once fixed, the next run succeeds with the certificate already issued.
    """
    fresh(lab, B)
    zone = "/etc/nginx/conf.d/zz-certfab-faults-cache.conf"
    sh(lab, B, f"printf 'ssl_session_cache shared:MozSSL:1m;\\n' > {zone} && nginx -t 2>/dev/null")
    pristine = snapshot(lab, B)
    result, row = bootstrap(lab, B)
    assert result.returncode == 1
    assert row["error"].startswith(f"{B}: nginx -t failed after switching to HTTPS: "), row["error"]
    assert 'shared memory zone "MozSSL" conflicts' in row["error"]
    assert "every file was restored, nginx still runs the old configuration" in row["error"]
    assert "the new certificates stay in place" in row["error"]
    # The ACME plumbing of the same run was in the same journal: every file is as before the run.
    assert snapshot(lab, B) == pristine
    assert issued_on_disk(lab, B) == 1
    # The certificate is kept; a second run tries the switch again in its first transaction.
    before, workers = snapshot(lab, B), nginx_workers(lab, B)
    validations = acme_validations(lab, B)
    result, row = bootstrap(lab, B)
    assert result.returncode == 1 and 'shared memory zone "MozSSL" conflicts' in row["error"]
    observe("nginx-t-https", row["error"])
    assert snapshot(lab, B) == before
    assert nginx_workers(lab, B) == workers
    assert leftovers(lab, B) == [] and missing_certificates(lab, B) == []
    assert not port_open(lab, B, 443)
    assert "Hello from web12" in http_get(lab, B, "web12.test")[1]
    # Fixed: the next run switches to HTTPS with the certificate it already has.
    sh(lab, B, f"rm {zone}")
    result, row = bootstrap(lab, B)
    assert result.returncode == 0, result.stdout + result.stderr
    assert row["certificates"] == {B: "kept"}
    assert acme_validations(lab, B) == validations
    assert served_sha256(lab, B, "www.web12.test") == disk_sha256(lab, B)


def test_edit_that_cannot_work_is_refused_before_any_change_or_order(lab: Lab, hosts: tuple[str, str]) -> None:
    """Injects: an ssl_* directive in the site's block that the TLS include would repeat.

    certfab sees this one in its own plan. Expect: refused before any write and before any ACME order.
    """
    fresh(lab, B)
    add_to_site(lab, B, "\tssl_session_timeout 5m;\n\n")
    before, validations = snapshot(lab, B), acme_validations(lab, B)
    result, row = bootstrap(lab, B)
    assert result.returncode == 1
    assert row["error"].startswith(f"{B}: /etc/nginx/sites-enabled/{B}:"), row["error"]
    assert "already sets ssl_session_timeout" in row["error"]
    observe("refused-edit", row["error"])
    assert snapshot(lab, B) == before
    assert acme_validations(lab, B) == validations and issued_on_disk(lab, B) == 0


# --- ACME validation fails ----------------------------------------------------------------------------


def test_ca_cannot_reach_port_80_clear_error_then_success(lab: Lab, hosts: tuple[str, str]) -> None:
    """Injects: port 80 rejected for packets from Pebble (10.77.0.1) only, in web11's namespace.

    certfab's self-test (from the host itself) passes, the CA's validation fails. Expect: an error naming
    the domains, no block pointing at a missing certificate, and success once the rule is removed.
    """
    fresh(lab, A)
    rule = "INPUT -p tcp --dport 80 -s 10.77.0.1 -j REJECT --reject-with tcp-reset"
    sh(lab, A, f"iptables -I {rule}")
    try:
        result, row = bootstrap(lab, A)
        assert result.returncode == 1
        error = row["error"]
        assert error.startswith(f"{A}: certbot failed: {A}: the CA could not validate "), error
        for domain in LAB_DOMAINS[A]:
            assert f"{domain} (connection): " in error
        assert "connection refused" in error and "\n" not in error
        observe("ca-port-80", error)
        assert missing_certificates(lab, A) == [] and nginx_test_ok(lab, A)
        assert not port_open(lab, A, 443)
        assert leftovers(lab, A) == []
    finally:
        sh(lab, A, f"iptables -D {rule}")
    # The failed validation started a back-off of one minute; --force orders anyway.
    result, row = bootstrap(lab, A)
    assert result.returncode == 1 and "refused: validation of web11.test failed 1 time(s)" in result.stderr
    result, row = bootstrap(lab, A, "--force")
    assert result.returncode == 0, result.stdout + result.stderr
    assert row["certificates"] == {A: "issued"}
    assert served_sha256(lab, A, "web11.test") == disk_sha256(lab, A)


def test_dns_pointing_elsewhere_fails_the_self_test_without_an_order(lab: Lab, hosts: tuple[str, str]) -> None:
    """Injects: www.web12.test points at an address nobody answers on. Expect: self-test error, no order."""
    fresh(lab, B)
    validations = acme_validations(lab, B)
    lab.set_dns("www.web12.test", "10.77.0.99")
    try:
        result, row = bootstrap(lab, B)
        assert result.returncode == 1
        error = row["error"]
        assert error.startswith(f"{B}: HTTP-01 self-test failed, no certificate was requested: www.web12.test: ")
        assert "web12.test: " not in error.replace("www.web12.test: ", "")  # the other name passed
        observe("dns-elsewhere", error)
        assert acme_validations(lab, B) == validations
        assert missing_certificates(lab, B) == [] and nginx_test_ok(lab, B)
    finally:
        lab.set_dns("www.web12.test", lab.info.host(B).address)
    result, row = bootstrap(lab, B)
    assert result.returncode == 0, result.stdout + result.stderr
    assert row["certificates"] == {B: "issued"}
    assert served_sha256(lab, B, "www.web12.test") == disk_sha256(lab, B)


# --- the SSH connection is cut in the middle of an apply ----------------------------------------------


def test_ssh_cut_mid_apply_is_rolled_back_by_the_next_run(lab: Lab, hosts: tuple[str, str]) -> None:
    """Injects: SIGKILL to web11's sshd session processes while the HTTPS switch is inside its transaction.

    `nginx -t` is held inside the open transaction (files switched, not yet tested) so the cut lands at a
    known point. The cut script keeps running on the host, and the next run starts while it still does.
    Expect: nginx keeps serving throughout; the next run waits for the orphaned script, rolls back from
    the on-host journal, then finishes the job without a new ACME order.
    """
    fresh(lab, A)
    cert = f"/etc/letsencrypt/live/{A}/cert.pem"
    with SlowNginx(lab, A, seconds=10, condition=f"[ -e {cert} ]") as slow:
        slow.arm()
        run = subprocess.Popen(
            [str(VENV_BIN / "fab"), "-H", A, "bootstrap"], cwd=lab.info.repo_dir, text=True,
            env={**os.environ, "CERTFAB_INVENTORY": str(lab.info.inventory), "COLUMNS": "200"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            wait_for("the HTTPS switch to reach nginx -t", lambda: slow.sleeping() or run.poll() is not None,
                     timeout=120)
            assert run.poll() is None, run.communicate()[0]
            daemons, commands = session_processes(A)
            assert daemons and commands
            for pid in daemons:
                os.kill(pid, signal.SIGKILL)
            output, _ = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()
        OUTPUTS.append(output)
        assert run.returncode == 1, output
        observe("ssh-cut", f"killed {len(daemons)} sshd session processes; the cut run printed: "
                + " ".join(output.replace("│", " ").split()))
        assert f"{A}: connection lost during switching to HTTPS; its outcome on the host is unknown; the next run " \
               "rolls back the open transaction first" in " ".join(output.replace("│", " ").split()), output
        slow.disarm()
        # The cut apply script is still on the host, held in nginx -t, with its transaction open.
        assert slow.sleeping() and any(proc.is_alive(rec) for rec in commands)
        assert lab.host_path(A, "/var/lib/certfab/journal").is_dir()
        assert http_get(lab, A, "web11.test")[0] == 200  # the old configuration still serves
        validations = acme_validations(lab, A)
        result, row = bootstrap(lab, A)
        assert not any(proc.is_alive(rec) for rec in commands)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rolled back an unfinished earlier run" in row["changes"]
    observe("ssh-cut", "the next run started while the cut script was still held in nginx -t; it waited for it",
            f"next run: {row['status']}; changes: {row['changes']}")
    assert row["certificates"] == {A: "kept"}
    assert acme_validations(lab, A) == validations
    assert leftovers(lab, A) == [] and nginx_test_ok(lab, A)
    assert served_sha256(lab, A, "web11.test") == disk_sha256(lab, A)
    assert http_get(lab, A, "web11.test")[0] == 301


# --- two certfab runs on one host at once -------------------------------------------------------------


def test_second_concurrent_run_is_refused_with_a_clear_message(lab: Lab, hosts: tuple[str, str]) -> None:
    """Injects: a second bootstrap while a first one is inside its transaction. Expect: refused, first ok."""
    fresh(lab, B)
    with SlowNginx(lab, B, seconds=4) as slow:
        slow.arm()
        first = subprocess.Popen(
            [str(VENV_BIN / "fab"), "-H", B, "bootstrap", "--json"], cwd=lab.info.repo_dir, text=True,
            env={**os.environ, "CERTFAB_INVENTORY": str(lab.info.inventory)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            wait_for("the first run to hold its transaction", lambda: slow.sleeping() or first.poll() is not None,
                     timeout=120)
            assert first.poll() is None, first.communicate()
            slow.disarm()
            second, row = bootstrap(lab, B)
            first_out, first_err = first.communicate(timeout=300)
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate()
    OUTPUTS.append(first_out + first_err)
    assert second.returncode == 1
    assert re.fullmatch(rf"{B}: another certfab run \(certfab-\S+\) is working on this host; "
                        "try again when it has finished", row["error"]), row["error"]
    assert first.returncode == 0, first_out + first_err
    observe("concurrent", row["error"], f"first run: exit {first.returncode}")
    assert json.loads(first_out)[0]["certificates"] == {B: "issued"}
    assert leftovers(lab, B) == [] and nginx_test_ok(lab, B)


# --- disk full during apply ---------------------------------------------------------------------------


def test_disk_full_during_apply_rolls_back_without_truncating(lab: Lab, hosts: tuple[str, str]) -> None:
    """Injects: /etc/nginx on a small tmpfs (in web12's mount namespace) with one free page left.

    The first staged file fits, the site's edited file does not. Expect: a clear error, the staged files
    removed, every file intact, nginx untouched.
    """
    fresh(lab, B)
    sh(lab, B, "mkdir -p /tmp/nginx-copy && cp -a /etc/nginx/. /tmp/nginx-copy/ && "
               "mount -t tmpfs -o size=1m,mode=0755 certfab-faults /etc/nginx && cp -a /tmp/nginx-copy/. /etc/nginx/ && "
               "dd if=/dev/zero of=/etc/nginx/.reserve bs=4096 count=1 2>/dev/null && "
               "{ dd if=/dev/zero of=/etc/nginx/.fill bs=4096 2>/dev/null; true; } && rm /etc/nginx/.reserve")
    try:
        assert nginx_test_ok(lab, B)
        before, workers = snapshot(lab, B), nginx_workers(lab, B)
        result, row = bootstrap(lab, B)
        assert result.returncode == 1
        assert re.fullmatch(rf"{B}: installing ACME plumbing: cannot write /etc/nginx/\S+: no space left\? "
                            r"\S+ free on /etc/nginx; nothing was changed", row["error"]), row["error"]
        observe("disk-full", row["error"])
        after = snapshot(lab, B)
        assert after == before
        assert leftovers(lab, B) == []
        assert nginx_workers(lab, B) == workers and nginx_test_ok(lab, B)
        assert "Hello from web12" in http_get(lab, B, "web12.test")[1]
    finally:
        sh(lab, B, "umount /etc/nginx; rm -rf /tmp/nginx-copy", check=False)


# --- one host down during deploy-all ------------------------------------------------------------------


def test_one_host_down_during_deploy_all(lab: Lab, hosts: tuple[str, str], tmp_path: Path) -> None:
    """Injects: web12 stopped (no sshd) while deploy-all runs on web11 and web12.

    Expect: web11 finishes, the recap names web12 with the reason, the exit status is non-zero.
    """
    inventory = lab_inventory(lab, tmp_path)
    lab.stop_host(B)
    try:
        result = cli(lab, "inv", "deploy-all", "--limit", f"{A},{B}", inventory=inventory)
    finally:
        lab.start_host(B)
    assert result.returncode == 1, result.stdout + result.stderr
    rows_shown = {line.split("│")[1].strip(): line for line in result.stdout.splitlines()
                  if line.startswith("│") and line.split("│")[1].strip()}
    assert "failed" in rows_shown[B] and "cannot connect" in rows_shown[B], result.stdout
    assert "failed" not in rows_shown[A], result.stdout
    log = re.search(r"run log: (\S+)", result.stderr)
    assert log is not None
    rows = {row["host"]: row for row in json.loads((lab.info.repo_dir / log.group(1)).read_text())["hosts"]}
    assert rows[A]["error"] is None and rows[A]["status"] in ("ok", "changed")
    assert rows[B]["status"] == "failed"
    assert rows[B]["error"] == f"{B} (10.77.0.22:22): cannot connect: Connection refused"
    observe("host-down", f"exit {result.returncode}; {A}: {rows[A]['status']}; {B}: {rows[B]['error']}")


# --- unknown or changed host key ----------------------------------------------------------------------


def real_fingerprint(lab: Lab, host: str) -> str:
    """SHA256 fingerprint of a lab host's key, from lab/known_hosts."""
    address = lab.info.host(host).address
    for line in lab.info.known_hosts.read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == address:
            digest = hashlib.sha256(base64.b64decode(fields[2])).digest()
            return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
    raise AssertionError(f"{address} not in {lab.info.known_hosts}")


@pytest.mark.parametrize("case", ["unknown", "changed", "changed-accept-new"])
def test_unknown_or_changed_host_key_is_refused_before_any_command(
    lab: Lab, hosts: tuple[str, str], tmp_path: Path, case: str
) -> None:
    """Injects: an empty known_hosts, or one with another key for web11. Expect: refused with fingerprints."""
    known = tmp_path / "known_hosts"
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    known.write_text("" if case == "unknown" else f"10.77.0.21 {other}\n")
    before_known = known.read_text()
    inventory = lab_inventory(lab, tmp_path, lambda data: data["ssh"].update(known_hosts=str(known)))
    offset = sshd_log_offset(A)
    extra = ("--accept-new",) if case == "changed-accept-new" else ()
    result = cli(lab, "fab", "-H", A, "bootstrap", "--json", *extra, inventory=inventory)
    assert result.returncode == 2, result.stdout + result.stderr
    row = json.loads(result.stdout)[0]
    assert row["status"] == "failed" and row["remote_commands"] == 0
    text = row["error"]
    observe(f"host-key-{case}", text)
    real = real_fingerprint(lab, A)
    if case == "unknown":
        assert f"unknown host key ssh-ed25519 {real}; nothing was run" in text, text
    else:
        digest = hashlib.sha256(base64.b64decode(other.split()[1])).digest()
        expected = "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
        assert f"HOST KEY CHANGED: expected {expected}, got ssh-ed25519 {real}; nothing was run" in text, text
    assert known.read_text() == before_known
    # sshd saw the key exchange and nothing after it: no login, so no command.
    assert all(line.endswith("[preauth]") for line in sshd_log_since(A, offset)), sshd_log_since(A, offset)


# --- hostile inventory values -------------------------------------------------------------------------


def set_site(field: str, value: object) -> Callable[[dict[str, Any]], None]:
    """An inventory edit that sets one field of web11's first site."""
    def edit(data: dict[str, Any]) -> None:
        site = data["hosts"][A]["sites"][0]
        if field == "domains":
            site["domains"] = [value, "www.web11.test"]
        else:
            site[field] = value
    return edit


def set_host(field: str, value: object) -> Callable[[dict[str, Any]], None]:
    """An inventory edit that sets one field of web11 (dotted for nested sections)."""
    def edit(data: dict[str, Any]) -> None:
        target = data["hosts"][A]
        *parents, last = field.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = value
    return edit


HOSTILE = {
    "semicolon": (set_site("domains", "web11.test;reboot"), "hosts.web11.sites[0].domains[0]"),
    "command-substitution": (set_site("domains", "$(reboot).web11.test"), "hosts.web11.sites[0].domains[0]"),
    "backticks": (set_site("domains", "`reboot`.web11.test"), "hosts.web11.sites[0].domains[0]"),
    "newline": (set_site("domains", "web11.test\nserver_name evil.test"), "hosts.web11.sites[0].domains[0]"),
    "brace": (set_site("name", "web11{"), "hosts.web11.sites[0].name"),
    "single-quote": (set_host("webroot", "/var/www/le'; reboot; '"), "hosts.web11.webroot"),
    "double-quote": (set_host("renewal.admin_email", 'ops"@lab.test'), "hosts.web11.renewal.admin_email"),
    "dotdot-path": (set_host("webroot", "/var/www/../../etc"), "hosts.web11.webroot"),
    "dotdot-domain": (set_site("domains", "web11..test"), "hosts.web11.sites[0].domains[0]"),
    "leading-dash-domain": (set_site("domains", "-oProxyCommand.test"), "hosts.web11.sites[0].domains[0]"),
    "leading-dash-site": (set_site("name", "-rf"), "hosts.web11.sites[0].name"),
    "confusable": (set_site("domains", "w\u0435b11.test"), "hosts.web11.sites[0].domains[0]"),
    "overlong-label": (set_site("domains", "a" * 64 + ".web11.test"), "hosts.web11.sites[0].domains[0]"),
    "overlong-name": (set_site("domains", ".".join(["a" * 60] * 5) + ".test"), "hosts.web11.sites[0].domains[0]"),
    "image": (set_host("certbot.image", "certbot/certbot:v2.1.0;reboot"), "hosts.web11.certbot.image"),
    "upstream": (set_site("upstream", "http://127.0.0.1:8080/;return 200"), "hosts.web11.sites[0].upstream"),
    "markup-brackets": (set_site("domains", "web11[b].test"), "hosts.web11.sites[0].domains[0]"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_inventory_value_is_refused_before_any_connection(
    lab: Lab, hosts: tuple[str, str], tmp_path: Path, case: str
) -> None:
    """Injects: one hostile value in the inventory. Expect: one clear line, exit 2, no SSH connection."""
    edit, field = HOSTILE[case]
    inventory = lab_inventory(lab, tmp_path, edit)
    offsets = {host: sshd_log_offset(host) for host in (A, B)}
    result = cli(lab, "fab", "-H", A, "bootstrap", inventory=inventory)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {inventory}: {field}: "), lines[0]
    observe(f"hostile-{case}", lines[0].replace(str(inventory), "inventory.yaml"))
    if case == "markup-brackets":
        assert "web11[b].test" in lines[0]
    for host, offset in offsets.items():
        assert sshd_log_since(host, offset) == [], f"{host} was contacted"


# --- private keys, across everything this module ran --------------------------------------------------


def test_no_private_key_material_in_any_output_report_or_mail(lab: Lab, hosts: tuple[str, str]) -> None:
    """Expect: no CLI output of this module, no file under reports/, no mail holds private key material."""
    assert len(OUTPUTS) > 10
    assert_no_key_material(lab, [A, B])


def test_scripts_sent_to_hosts_name_only_public_files(lab: Lab) -> None:
    """Facts, stamp probe, expiry report and issue scripts read cert.pem, never privkey.pem or keys/."""
    inventory = load_inventory(lab.info.inventory)
    host = inventory.host(A)
    now = datetime.now(timezone.utc)
    scripts = {
        "facts": render_script(FACTS_SCRIPT, nonce="0", **facts_context(host)),
        "probe": render_script(FACTS_SCRIPT, nonce="0", **probe_context(host, key="0" * 64, now=now)),
        "report": render_script(REPORT_SCRIPT, nonce="0", **report_context()),
        "issue": render_script("issue.sh.j2", nonce="0",
                               **issue_context("certfab-test", host, inventory, [(host.sites[0], False)], acme_ca=True)),
    }
    for name, script in scripts.items():
        assert "privkey" not in script and "/etc/letsencrypt/keys" not in script, name
        assert "cert.pem" in script or name == "probe", name
