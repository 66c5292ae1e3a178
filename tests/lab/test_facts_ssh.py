"""Facts and SSH on real hosts: what `fab facts` shows, one command per host, strict host keys, a hostile
inventory refused before any connection, unknown and stopped hosts, sudo for a non-root user."""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from conftest import certfab_cli
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from labhelpers import (
    SshdLog,
    host_blocks,
    inventory_copy,
    known_hosts_without,
    one_error_line,
    scanned_host_key,
    ssh_fingerprint,
    with_known_hosts,
)

from certfab.facts import FACTS_SCRIPT, facts_context
from certfab.facts_view import facts_text
from certfab.fleet import HostSession, run_fleet, run_on_host
from certfab.gather import read_facts
from certfab.inventory import Inventory, load_inventory
from certfab.lab import Lab
from certfab.protocol import parse_frames
from certfab.remote_scripts import render_script

HOSTS = ("web1", "web2")


@pytest.fixture(scope="module")
def hosts(module_hosts: tuple[str, ...], lab: Lab) -> Iterator[tuple[str, ...]]:
    """web1 and web2, pristine at the start and again at the end (the smoke tests use them too)."""
    assert module_hosts == HOSTS
    yield module_hosts
    for name in module_hosts:
        lab.reset_host(name)


# ------------------------------------------------------------------------------------------ helpers


def nginx_versions(lab: Lab, name: str) -> tuple[str, str]:
    """nginx version and the OpenSSL it runs with, read on the host with `nginx -V`."""
    output = lab.host_exec(name, ["nginx", "-V"]).stderr
    version = re.search(r"nginx version: nginx/(\S+)", output)
    openssl = re.search(r"running with (OpenSSL \S+)", output) or re.search(r"built with (OpenSSL \S+)", output)
    assert version and openssl, output
    return version.group(1), openssl.group(1)


class ExecSpy:
    """Counts every command a real SSH channel is asked to run (exec, shell, subsystem), per peer."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        for method in ("exec_command", "invoke_shell", "invoke_subsystem"):
            monkeypatch.setattr(paramiko.Channel, method, self._wrap(getattr(paramiko.Channel, method), method))

    def _wrap(self, original: Callable[..., Any], method: str) -> Callable[..., Any]:
        spy = self

        def recording(channel: paramiko.Channel, *args: Any, **kwargs: Any) -> Any:
            peer = channel.get_transport().getpeername()[0]
            with spy.lock:
                spy.calls.append((peer, f"{method} {args[0] if args else ''}"))
            return original(channel, *args, **kwargs)

        return recording

    def to(self, address: str) -> list[str]:
        return [command for peer, command in self.calls if peer == address]


class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it accepts (and closes them)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> int:
        """Stop listening, after taking any connection still queued; return the number accepted."""
        time.sleep(0.3)
        self.stopping.set()
        self.thread.join()
        self.sock.close()
        return self.accepted


def marker_pipeline(marker: str) -> Callable[[HostSession], str]:
    """A pipeline that leaves a marker file on the host: proof that commands ran there."""

    def pipeline(session: HostSession) -> str:
        session.remote.check(f"touch {marker}")
        return "ran"

    return pipeline


# ------------------------------------------------------------------------------------ facts output


def test_facts_text_shows_nginx_sites_runtime_certificates_and_crontab(lab: Lab, hosts: tuple[str, ...]) -> None:
    cron_line = "17 4 * * * /usr/bin/true certfab-facts-test"
    lab.host_exec("web1", ["crontab", "-"], input=f"# a comment\n{cron_line}\n")
    try:
        result = certfab_cli(lab, "fab", "facts", "--limit", "web1,web2")
    finally:
        lab.host_exec("web1", ["crontab", "-r"])
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr
    blocks = host_blocks(result.stdout)
    assert list(blocks) == ["web1", "web2"]
    image = load_inventory(lab.info.inventory).host("web1").certbot.image
    for name in hosts:
        block = blocks[name]
        nginx, openssl = nginx_versions(lab, name)
        assert block.splitlines()[0].startswith(f"{name} ({name}): Debian")
        assert f"nginx {nginx} with {openssl}, SNI yes, config test: ok" in block
        assert (
            f"server {name}.test www.{name}.test  listen 80, [::]:80  [/etc/nginx/sites-enabled/{name}:"
            in block
        )
        docker = lab.host_exec(name, ["docker", "version", "--format", "{{.Server.Version}}"]).stdout.strip()
        assert f"container runtime: docker {docker}; certbot image {image} present" in block
        assert "certificates: none" in block
        assert "not root" not in block
    assert "crontab: 1 entries" in blocks["web1"]
    assert f"    {cron_line}" in blocks["web1"].splitlines()
    assert "a comment" not in blocks["web1"]
    assert "crontab: 0 entries" in blocks["web2"]


def test_readme_command_fab_H_web2_facts_shows_its_nginx_and_server_names(
    lab: Lab, hosts: tuple[str, ...]
) -> None:
    # Exactly the README's line, run from the repository root with the relative inventory path.
    result = certfab_cli(lab, "fab", "-H", "web2", "facts", env={"CERTFAB_INVENTORY": "lab/inventory.yaml"})
    assert result.returncode == 0, result.stderr
    assert list(host_blocks(result.stdout)) == ["web2"]
    nginx, _ = nginx_versions(lab, "web2")
    assert f"nginx {nginx} with OpenSSL" in result.stdout
    assert "server web2.test www.web2.test  listen 80, [::]:80" in result.stdout
    assert "web1" not in result.stdout


def test_facts_json_carries_the_same_facts_as_the_text(lab: Lab, hosts: tuple[str, ...]) -> None:
    as_json = certfab_cli(lab, "fab", "facts", "--limit", "web1,web2", "--json")
    as_text = certfab_cli(lab, "fab", "facts", "--limit", "web1,web2")
    assert as_json.returncode == 0, as_json.stderr
    assert as_text.returncode == 0, as_text.stderr
    summaries = json.loads(as_json.stdout)
    assert [item["host"] for item in summaries] == ["web1", "web2"]
    for item in summaries:
        name = item["host"]
        nginx, openssl = nginx_versions(lab, name)
        assert item["hostname"] == name
        assert item["uid"] == 0
        assert item["nginx"]["version"] == nginx
        assert item["nginx"]["openssl"] == openssl
        assert item["nginx"]["sni"] is True
        assert item["nginx"]["config_test"] == "ok"
        assert f"/etc/nginx/sites-enabled/{name}" in item["nginx"]["files"]
        assert [(b["server_names"], b["listens"]) for b in item["nginx"]["server_blocks"]] == [
            ([f"{name}.test", f"www.{name}.test"], ["80", "[::]:80"])
        ]
        runtime = item["container_runtime"]
        assert (runtime["name"], runtime["present"], runtime["answers"], runtime["image_present"]) == (
            "docker", True, True, True
        )
        assert item["certificates"] == []
        assert item["crontab"] == []
        assert item["certfab_files"] == []
        assert item["unfinished_run"] is False
        # The text is a rendering of exactly this data.
        assert facts_text(item) == host_blocks(as_text.stdout)[name]


def test_facts_costs_one_connection_and_one_command_per_include_level(
    lab: Lab, hosts: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory = load_inventory(lab.info.inventory)
    spy = ExecSpy(monkeypatch)
    logs = {name: SshdLog(lab, name) for name in hosts}
    outcomes = run_fleet([inventory.host(name) for name in hosts], inventory, read_facts)
    for outcome in outcomes:
        address = inventory.host(outcome.host).address
        assert not outcome.failed, outcome.error
        # The facts with the main file, then the files its includes name (a pristine host's includes
        # name no further files): every script goes on stdin, nothing of it on the command line.
        assert outcome.commands == 2
        assert spy.to(address) == ["exec_command /bin/sh -s"] * 2, spy.to(address)
        assert outcome.value is not None
        assert outcome.value["nginx"]["server_blocks"][0]["server_names"] == [
            f"{outcome.host}.test", f"www.{outcome.host}.test"
        ]
        assert len(logs[outcome.host].logins()) == 1, logs[outcome.host].lines()

    # The CLI too: one login per host (sshd's own count).
    logs = {name: SshdLog(lab, name) for name in hosts}
    result = certfab_cli(lab, "fab", "facts", "--limit", "web1,web2")
    assert result.returncode == 0, result.stderr
    for name in hosts:
        assert len(logs[name].logins()) == 1, logs[name].lines()


def test_facts_reads_public_certificates_and_never_a_private_key(
    lab: Lab, hosts: tuple[str, ...], tmp_path: Path
) -> None:
    # A certbot-shaped lineage: live/ links into archive/, with a private key next to the certificate.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "probe.web1.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=60))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("probe.web1.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    archive = lab.host_path("web1", "/etc/letsencrypt/archive/probe")
    live = lab.host_path("web1", "/etc/letsencrypt/live/probe")
    archive.mkdir(parents=True)
    live.mkdir(parents=True)
    (archive / "cert1.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (archive / "privkey1.pem").write_bytes(key_pem)
    for part in ("cert", "privkey"):
        (live / f"{part}.pem").symlink_to(f"../../archive/probe/{part}1.pem")
    try:
        result = certfab_cli(lab, "fab", "-H", "web1", "facts", "--json")
        assert result.returncode == 0, result.stderr
        [summary] = json.loads(result.stdout)
        [certificate] = summary["certificates"]
        assert certificate["name"] == "probe"
        assert certificate["domains"] == ["probe.web1.test"]
        assert certificate["not_after"].startswith(cert.not_valid_after_utc.date().isoformat())
        text = certfab_cli(lab, "fab", "-H", "web1", "facts")
        assert "certificate probe: probe.web1.test until " in text.stdout

        # Everything the facts command printed on the host: no private key in any form.
        inventory = load_inventory(lab.info.inventory)

        def raw(session: HostSession) -> str:
            script = render_script(FACTS_SCRIPT, nonce="0", **facts_context(session.host))
            return session.remote.check(script).stdout

        [outcome] = run_fleet([inventory.host("web1")], inventory, raw)
        assert outcome.value is not None, outcome.error
        frames = parse_frames(outcome.value.encode("utf-8", "surrogateescape"), "0")
        assert [f.body for f in frames if f.name == "cert" and f.arg == "probe"] == [
            cert.public_bytes(serialization.Encoding.PEM)]
        assert "PRIVATE KEY" not in outcome.value
        assert base64.b64encode(key_pem).decode()[:40] not in outcome.value
        # Inside every frame (files travel in a tar archive), no key either.
        key_body = b"".join(key_pem.splitlines()[1:-1])
        for frame in frames:
            assert b"PRIVATE KEY" not in frame.body and key_body not in frame.body.replace(b"\n", b"")
    finally:
        shutil.rmtree(archive.parent.parent / "archive")
        shutil.rmtree(live.parent.parent / "live")


# --------------------------------------------------------------------------------------- host keys


def test_unknown_host_key_is_refused_with_its_fingerprint_and_nothing_runs(
    lab: Lab, hosts: tuple[str, ...], tmp_path: Path
) -> None:
    expected = ssh_fingerprint(scanned_host_key(lab, "web2"))
    known_hosts = known_hosts_without(lab, tmp_path, "web2")
    before = known_hosts.read_bytes()
    inventory_file = inventory_copy(lab, tmp_path, with_known_hosts(known_hosts))
    log = SshdLog(lab, "web2")

    result = certfab_cli(lab, "fab", "-H", "web2", "facts", inventory=inventory_file)
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_error_line(result.stderr)
    assert "web2" in line and "unknown host key" in line
    assert expected in line
    assert "--accept-new" in line
    assert str(known_hosts) in line
    assert result.stdout == ""
    assert known_hosts.read_bytes() == before

    # Through the API, with a pipeline that would leave a marker: it is never called.
    marker = "/root/certfab-facts-test-marker"
    inventory = load_inventory(inventory_file)
    outcome = run_on_host(inventory.host("web2"), inventory, marker_pipeline(marker))
    assert outcome.failed and outcome.exit_code == 2 and outcome.commands == 0
    assert expected in (outcome.error or "")
    assert not lab.host_path("web2", marker).exists()
    # sshd saw the connections end before authentication; nobody logged in.
    lines = log.wait_for(r"\[preauth\]")
    assert any("[preauth]" in line for line in lines), lines
    assert log.logins() == [], lines

    # --accept-new records the key in the inventory's known_hosts and runs.
    accepted = certfab_cli(lab, "fab", "-H", "web2", "facts", "--accept-new", inventory=inventory_file)
    assert accepted.returncode == 0, accepted.stderr
    assert "server web2.test www.web2.test" in accepted.stdout
    assert f"web2: recorded new host key ssh-ed25519 {expected}" in accepted.stderr
    recorded = known_hosts.read_text()
    assert recorded.startswith(before.decode())
    assert recorded[len(before):] == f"{lab.info.host('web2').address} {scanned_host_key(lab, 'web2')}\n"
    assert len(log.logins()) == 1

    # From now on the key is known: no option needed, nothing more recorded.
    again = certfab_cli(lab, "fab", "-H", "web2", "facts", inventory=inventory_file)
    assert again.returncode == 0, again.stderr
    assert "server web2.test www.web2.test" in again.stdout
    assert "recorded" not in again.stderr
    assert known_hosts.read_text() == recorded


def test_accept_new_creates_a_missing_known_hosts_file(
    lab: Lab, hosts: tuple[str, ...], tmp_path: Path
) -> None:
    known_hosts = tmp_path / "ssh" / "known_hosts"
    inventory_file = inventory_copy(lab, tmp_path, with_known_hosts(known_hosts))
    refused = certfab_cli(lab, "fab", "facts", "--limit", "web1,web2", inventory=inventory_file)
    assert refused.returncode == 2
    assert str(known_hosts) in refused.stderr and "--accept-new" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not known_hosts.exists()
    accepted = certfab_cli(lab, "fab", "facts", "--limit", "web1,web2", "--accept-new", inventory=inventory_file)
    assert accepted.returncode == 0, accepted.stderr
    assert list(host_blocks(accepted.stdout)) == ["web1", "web2"]
    lines = sorted(known_hosts.read_text().splitlines())
    assert lines == sorted(f"{lab.info.host(n).address} {scanned_host_key(lab, n)}" for n in hosts)


@pytest.mark.parametrize("accept_new", [False, True], ids=["strict", "accept-new"])
def test_changed_host_key_is_refused_even_with_accept_new(
    lab: Lab, hosts: tuple[str, ...], tmp_path: Path, accept_new: bool
) -> None:
    real = ssh_fingerprint(scanned_host_key(lab, "web2"))
    impostor = (
        ed25519.Ed25519PrivateKey.generate().public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    )
    recorded = ssh_fingerprint(impostor)
    known_hosts = known_hosts_without(lab, tmp_path, "web2")
    with open(known_hosts, "a") as handle:
        handle.write(f"{lab.info.host('web2').address} {impostor}\n")
    before = known_hosts.read_bytes()
    inventory_file = inventory_copy(lab, tmp_path, with_known_hosts(known_hosts))
    log = SshdLog(lab, "web2")

    options = ["--accept-new"] if accept_new else []
    result = certfab_cli(lab, "fab", "-H", "web2", "facts", *options, inventory=inventory_file)
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_error_line(result.stderr)
    assert "HOST KEY CHANGED" in line
    assert recorded in line and real in line
    assert line.index(recorded) < line.index(real), "expected (recorded) key first, then the one offered"
    assert f"ssh-keygen -R {lab.info.host('web2').address} -f {known_hosts}" in line
    assert result.stdout == ""
    assert known_hosts.read_bytes() == before

    marker = "/root/certfab-facts-test-marker"
    inventory = load_inventory(inventory_file)
    outcome = run_on_host(inventory.host("web2"), inventory, marker_pipeline(marker), accept_new=accept_new)
    assert outcome.failed and outcome.exit_code == 2 and outcome.commands == 0
    assert "HOST KEY CHANGED" in (outcome.error or "")
    assert not lab.host_path("web2", marker).exists()
    assert known_hosts.read_bytes() == before
    lines = log.wait_for(r"\[preauth\]")
    assert log.logins() == [], lines


# --------------------------------------------------------------------------------- bad inventories


def _set(path: tuple[str | int, ...], value: object) -> Callable[[dict[str, Any]], None]:
    """An inventory edit setting one field (missing mappings on the way are created)."""

    def edit(data: dict[str, Any]) -> None:
        node: Any = data
        for part in path[:-1]:
            node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
        node[path[-1]] = value

    return edit


PWNED = "PWNED_PATH"

HOSTILE = [
    (("hosts", "web1", "sites", 0, "domains", 0), "web1.test;reboot", "hosts.web1.sites[0].domains[0]"),
    (("hosts", "web1", "sites", 0, "domains", 1), f"$(touch {PWNED})", "hosts.web1.sites[0].domains[1]"),
    (("hosts", "web1", "sites", 0, "name"), "../../etc/passwd", "hosts.web1.sites[0].name"),
    (("hosts", "web1", "user"), f"root`touch {PWNED}`", "hosts.web1.user"),
    (("hosts", "web1", "webroot"), f"/var/www/x;touch {PWNED}", "hosts.web1.webroot"),
    (("hosts", "web1", "certbot", "image"), "certbot/certbot:v2.1.0 && reboot", "hosts.web1.certbot.image"),
    (("hosts", "web1", "key_file"), f"/tmp/$(touch {PWNED})", "hosts.web1.key_file"),
    (("defaults", "renewal", "admin_email"), "ops@lab.test\nMAILTO=x@evil.test", "defaults.renewal.admin_email"),
    (("hosts", "web1", "address"), "127.0.0.1;reboot", "hosts.web1.address"),
]


@pytest.fixture
def listener() -> Iterator[Listener]:
    """A local socket web1's inventory entry points at, to see whether anything connects."""
    server = Listener()
    yield server
    server.close()


def _point_web1_at(listener: Listener) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["hosts"]["web1"]["address"] = "127.0.0.1"
        data["hosts"]["web1"]["port"] = listener.port

    return edit


def test_the_listener_sees_a_connection_from_a_clean_inventory(
    lab: Lab, hosts: tuple[str, ...], tmp_path: Path, listener: Listener
) -> None:
    # Control for the test below: the same setup without a hostile value does connect.
    inventory_file = inventory_copy(lab, tmp_path, _point_web1_at(listener))
    result = certfab_cli(lab, "fab", "-H", "web1", "facts", inventory=inventory_file)
    assert result.returncode == 1, result.stdout + result.stderr
    line = one_error_line(result.stderr)
    assert line.startswith(f"error: web1 (127.0.0.1:{listener.port}): cannot connect")
    assert listener.close() >= 1


@pytest.mark.parametrize(("path", "value", "field"), HOSTILE, ids=[h[2] for h in HOSTILE])
def test_hostile_inventory_value_is_refused_before_any_connection(
    lab: Lab, hosts: tuple[str, ...], tmp_path: Path, listener: Listener,
    path: tuple[str | int, ...], value: str, field: str,
) -> None:
    pwned = tmp_path / "pwned"
    value = value.replace(PWNED, str(pwned))

    def edit(data: dict[str, Any]) -> None:
        _point_web1_at(listener)(data)
        _set(path, value)(data)

    inventory_file = inventory_copy(lab, tmp_path, edit)
    for args in (["-H", "web1", "facts"], ["facts"], ["facts", "--limit", "web2"]):
        result = certfab_cli(lab, "fab", *args, inventory=inventory_file)
        assert result.returncode == 2, result.stdout + result.stderr
        line = one_error_line(result.stderr)
        assert line.startswith(f"error: {inventory_file}: {field}: "), line
        assert repr(value)[:12] in line  # long values are shortened in the message
        assert result.stdout == ""
    assert listener.close() == 0
    assert not pwned.exists()


def test_unknown_host_name_lists_the_known_hosts(lab: Lab, hosts: tuple[str, ...]) -> None:
    result = certfab_cli(lab, "fab", "-H", "nosuchhost", "facts")
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "'nosuchhost'" in line
    # Long lists are cut after 20 names, with the number left out.
    names = lab.info.host_names
    listed = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
    assert "known hosts: " + listed in line
    assert result.stdout == ""


# --------------------------------------------------------------------------------- unreachable host


def test_stopped_host_gets_one_connect_error_line_and_the_others_are_reported(
    lab: Lab, hosts: tuple[str, ...]
) -> None:
    address = lab.info.host("web2").address
    lab.stop_host("web2")
    try:
        result = certfab_cli(lab, "fab", "facts", "--limit", "web1,web2")
        as_json = certfab_cli(lab, "fab", "facts", "--limit", "web1,web2", "--json")
    finally:
        lab.start_host("web2")
    assert result.returncode == 1, result.stdout + result.stderr
    line = one_error_line(result.stderr)
    assert line == f"error: web2 ({address}:22): cannot connect: Connection refused"
    blocks = host_blocks(result.stdout)
    assert list(blocks) == ["web1"]
    assert "server web1.test www.web1.test" in blocks["web1"]

    assert as_json.returncode == 1
    web1, web2 = json.loads(as_json.stdout)
    assert web1["host"] == "web1" and web1["nginx"]["config_test"] == "ok"
    assert web2 == {"host": "web2", "error": f"web2 ({address}:22): cannot connect: Connection refused"}

    # Back up with the same key: facts works again.
    again = certfab_cli(lab, "fab", "-H", "web2", "facts")
    assert again.returncode == 0, again.stderr


# ------------------------------------------------------------------------------------------- sudo

DEPLOY_UID = 4242
DEPLOY_DIR = "/run/certfab-test-deploy"

# /etc/passwd, /etc/shadow, /etc/group and /etc/sudoers.d are the machine's own files, shared by every
# lab host: give web2 private copies, bind-mounted inside its mount namespace only (they vanish with it).
_ADD_DEPLOY = f"""\
set -eu
d={DEPLOY_DIR}
mkdir -p "$d/home/.ssh" "$d/sudoers.d"
cp /etc/passwd /etc/group /etc/shadow "$d/"
echo 'deploy:x:{DEPLOY_UID}:{DEPLOY_UID}:certfab lab test:{DEPLOY_DIR}/home:/bin/sh' >> "$d/passwd"
echo 'deploy:x:{DEPLOY_UID}:' >> "$d/group"
echo 'deploy:*:19000:0:99999:7:::' >> "$d/shadow"
cp -a /etc/sudoers.d/. "$d/sudoers.d/"
echo 'deploy ALL=(ALL) NOPASSWD: ALL' > "$d/sudoers.d/certfab-deploy"
chmod 0440 "$d/sudoers.d/certfab-deploy"
cat > "$d/home/.ssh/authorized_keys"
chmod 0600 "$d/home/.ssh/authorized_keys"
chown -R {DEPLOY_UID}:{DEPLOY_UID} "$d/home"
for f in passwd group shadow; do mount --bind "$d/$f" "/etc/$f"; done
mount --bind "$d/sudoers.d" /etc/sudoers.d
"""

_REMOVE_DEPLOY = f"""\
for m in /etc/sudoers.d /etc/passwd /etc/group /etc/shadow; do
    if grep -q " $m " /proc/self/mountinfo; then umount "$m"; fi
done
rm -rf {DEPLOY_DIR}
"""


def _ensure_sudo() -> None:
    """Install sudo on the machine (whose binaries the hosts share) if it is missing, else skip."""
    if shutil.which("sudo"):
        return
    if not shutil.which("apt-get"):
        pytest.skip("sudo is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "sudo"], capture_output=True, text=True,
        env=env, timeout=600, check=False,
    )
    if result.returncode != 0 or not shutil.which("sudo"):
        pytest.skip(f"sudo is not installed and apt-get could not install it: {result.stderr.strip()[-300:]}")


@pytest.fixture
def deploy_user(lab: Lab, hosts: tuple[str, ...]) -> Iterator[str]:
    """A non-root user `deploy` on web2 (lab key, passwordless sudo), removed afterwards."""
    _ensure_sudo()
    lab.host_exec("web2", _ADD_DEPLOY, input=lab.info.key_file.with_suffix(".pub").read_text())
    try:
        check = lab.host_exec("web2", "id -u deploy && sudo -n -u deploy sudo -n id -u", check=False)
        assert check.stdout.split() == [str(DEPLOY_UID), "0"], check.stdout + check.stderr
        yield "deploy"
    finally:
        lab.host_exec("web2", _REMOVE_DEPLOY)
    assert lab.host_exec("web2", "id deploy", check=False).returncode != 0


def _as_deploy(sudo: bool) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["hosts"]["web2"]["user"] = "deploy"
        data["hosts"]["web2"]["sudo"] = sudo

    return edit


def test_sudo_lets_a_non_root_user_read_facts_as_root(
    lab: Lab, hosts: tuple[str, ...], tmp_path: Path, deploy_user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain_dir, sudo_dir = tmp_path / "plain", tmp_path / "sudo"
    plain_dir.mkdir()
    sudo_dir.mkdir()

    # Without sudo the same user sees a host it cannot read: facts says so.
    plain = certfab_cli(lab, "fab", "-H", "web2", "facts", inventory=inventory_copy(lab, plain_dir, _as_deploy(False)))
    assert plain.returncode == 0, plain.stderr
    assert f"commands run as uid {DEPLOY_UID}, not root" in plain.stdout
    assert "config test: FAILED" in plain.stdout
    assert "server web2.test" not in plain.stdout

    log = SshdLog(lab, "web2")
    inventory_file = inventory_copy(lab, sudo_dir, _as_deploy(True))
    result = certfab_cli(lab, "fab", "-H", "web2", "facts", "--json", inventory=inventory_file)
    assert result.returncode == 0, result.stderr
    [summary] = json.loads(result.stdout)
    assert summary["uid"] == 0
    assert summary["nginx"]["config_test"] == "ok"
    assert summary["nginx"]["server_blocks"][0]["server_names"] == ["web2.test", "www.web2.test"]
    assert summary["container_runtime"]["answers"] is True
    assert summary["container_runtime"]["image_present"] is True
    logins = log.logins()
    assert len(logins) == 1 and logins[0].startswith("Accepted publickey for deploy "), logins

    # The same commands as for root (facts, then the include level), each run through sudo.
    spy = ExecSpy(monkeypatch)
    inventory: Inventory = load_inventory(inventory_file)
    [outcome] = run_fleet([inventory.host("web2")], inventory, read_facts)
    assert not outcome.failed, outcome.error
    assert outcome.commands == 2
    commands = spy.to(inventory.host("web2").address)
    assert len(commands) == 2 and all(c.startswith("exec_command sudo ") for c in commands), commands
