"""SSH as OpenSSH users expect it, on real hosts: jump hosts checked like targets, agent forwarding only when
the inventory asks, ~/.ssh/config honoured by fab and inv alike, a too-short connect_timeout refused."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import certfab_cli
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
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

from certfab.fleet import HostSession, run_on_host
from certfab.inventory import load_inventory
from certfab.lab import Lab

HOSTS = ("web13", "web14")
JUMP, TARGET = HOSTS


@pytest.fixture(scope="module")
def hosts(module_hosts: tuple[str, ...], lab: Lab) -> Iterator[tuple[str, ...]]:
    assert module_hosts == HOSTS
    assert lab.info.host(JUMP).address == "10.77.0.23"
    assert lab.info.host(TARGET).address == "10.77.0.24"
    yield module_hosts


def edits(*changes: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        for change in changes:
            change(data)

    return edit


def target_jumps_through(jump: str) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["hosts"][TARGET]["jump"] = jump

    return edit


def accepted_from(log: SshdLog) -> list[str]:
    """The client addresses of successful logins (`Accepted publickey for root from ADDRESS port ...`)."""
    return [line.split(" from ", 1)[1].split()[0] for line in log.logins()]


def untouched(log: SshdLog) -> bool:
    """No login, and no connection from the jump host (the lab's own port probes come from 10.77.0.1)."""
    return log.logins() == [] and not any("10.77.0.23" in line for line in log.lines())


def facts_ran(result: subprocess.CompletedProcess[str], name: str) -> bool:
    return f"server {name}.test www.{name}.test" in host_blocks(result.stdout).get(name, "")


# ------------------------------------------------------------------------------------------ jump hosts


def test_target_through_jump_host_works_and_its_traffic_comes_from_the_jump(
    lab: Lab, hosts: tuple[str, ...], tmp_path: Path
) -> None:
    inventory_file = inventory_copy(lab, tmp_path, target_jumps_through(JUMP))
    for tool, args in (("fab", ("-H", TARGET, "facts")), ("inv", ("facts", "--limit", TARGET))):
        jump_log, target_log = SshdLog(lab, JUMP), SshdLog(lab, TARGET)
        result = certfab_cli(lab, tool, *args, inventory=inventory_file)
        assert result.returncode == 0, result.stderr
        assert facts_ran(result, TARGET), result.stdout
        # The target saw its login come from the jump host's address, the jump host from this machine.
        assert accepted_from(target_log) == ["10.77.0.23"], target_log.lines()
        assert accepted_from(jump_log) == ["10.77.0.1"], jump_log.lines()
        forwarded = jump_log.lines()
        assert not any("refused" in line for line in forwarded), forwarded


def test_jump_by_address_user_and_port(lab: Lab, hosts: tuple[str, ...], tmp_path: Path) -> None:
    inventory_file = inventory_copy(lab, tmp_path, target_jumps_through("root@10.77.0.23:22"))
    target_log = SshdLog(lab, TARGET)
    result = certfab_cli(lab, "fab", "-H", TARGET, "facts", inventory=inventory_file)
    assert result.returncode == 0, result.stderr
    assert accepted_from(target_log) == ["10.77.0.23"]


def test_jump_host_with_unknown_key_is_refused_then_accepted_new(
    lab: Lab, hosts: tuple[str, ...], tmp_path: Path
) -> None:
    expected = ssh_fingerprint(scanned_host_key(lab, JUMP))
    known_hosts = known_hosts_without(lab, tmp_path, JUMP)
    before = known_hosts.read_text()
    inventory_file = inventory_copy(lab, tmp_path, edits(with_known_hosts(known_hosts), target_jumps_through(JUMP)))
    jump_log, target_log = SshdLog(lab, JUMP), SshdLog(lab, TARGET)

    refused = certfab_cli(lab, "fab", "-H", TARGET, "facts", inventory=inventory_file)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    line = one_error_line(refused.stderr)
    assert line.startswith(f"error: {TARGET}: jump host {JUMP} (10.77.0.23): unknown host key ssh-ed25519 {expected}")
    assert "nothing was run" in line and "--accept-new" in line
    assert refused.stdout == ""
    assert known_hosts.read_text() == before
    # Nobody logged in on the jump host, and the target was never even reached.
    assert jump_log.logins() == [], jump_log.lines()
    time.sleep(0.5)
    assert untouched(target_log), target_log.lines()

    accepted = certfab_cli(lab, "fab", "-H", TARGET, "facts", "--accept-new", inventory=inventory_file)
    assert accepted.returncode == 0, accepted.stderr
    assert facts_ran(accepted, TARGET)
    assert f"{TARGET}: jump host {JUMP}: recorded new host key ssh-ed25519 {expected}" in accepted.stderr
    # known_hosts gains exactly the jump host's line (the target's was there already).
    after = known_hosts.read_text()
    assert after.startswith(before)
    assert after[len(before):] == f"10.77.0.23 {scanned_host_key(lab, JUMP)}\n"
    assert accepted_from(target_log) == ["10.77.0.23"]

    again = certfab_cli(lab, "fab", "-H", TARGET, "facts", inventory=inventory_file)
    assert again.returncode == 0, again.stderr
    assert "recorded" not in again.stderr
    assert known_hosts.read_text() == after


@pytest.mark.parametrize("accept_new", [False, True], ids=["strict", "accept-new"])
def test_changed_jump_host_key_is_always_refused(
    lab: Lab, hosts: tuple[str, ...], tmp_path: Path, accept_new: bool
) -> None:
    impostor = (
        ed25519.Ed25519PrivateKey.generate().public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    )
    known_hosts = known_hosts_without(lab, tmp_path, JUMP)
    with open(known_hosts, "a") as handle:
        handle.write(f"10.77.0.23 {impostor}\n")
    before = known_hosts.read_bytes()
    inventory_file = inventory_copy(lab, tmp_path, edits(with_known_hosts(known_hosts), target_jumps_through(JUMP)))
    jump_log, target_log = SshdLog(lab, JUMP), SshdLog(lab, TARGET)
    args = ["-H", TARGET, "facts", *(["--accept-new"] if accept_new else [])]
    result = certfab_cli(lab, "fab", *args, inventory=inventory_file)
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_error_line(result.stderr)
    assert f"{TARGET}: jump host {JUMP} (10.77.0.23): HOST KEY CHANGED: expected {ssh_fingerprint(impostor)}" in line
    assert ssh_fingerprint(scanned_host_key(lab, JUMP)) in line
    assert "nothing was run" in line
    assert known_hosts.read_bytes() == before
    assert jump_log.logins() == []
    assert untouched(target_log), target_log.lines()


# ------------------------------------------------------------------------------------------ agent


@pytest.fixture
def local_agent(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A local ssh-agent holding the lab key; SSH_AUTH_SOCK points at it. Yields the key's fingerprint."""
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        key = lab.info.inventory.parent / "id_ed25519"
        env = {**os.environ, "SSH_AUTH_SOCK": str(socket_path)}
        subprocess.run(["ssh-add", str(key)], env=env, check=True, capture_output=True, timeout=30)
        listed = subprocess.run(["ssh-add", "-l"], env=env, check=True, capture_output=True, text=True, timeout=30)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        yield listed.stdout.split()[1]
    finally:
        agent.terminate()
        agent.wait(10)


def agent_seen_by_remote(session: HostSession) -> str:
    """What the remote session knows of an agent: its socket and the keys it lists."""
    result = session.remote.run('echo "sock=${SSH_AUTH_SOCK:-none}"; ssh-add -l 2>&1 || true')
    return result.stdout


def test_agent_forwarding_is_off_by_default(
    lab: Lab, hosts: tuple[str, ...], local_agent: str, tmp_path: Path
) -> None:
    inventory = load_inventory(inventory_copy(lab, tmp_path))
    outcome = run_on_host(inventory.host(TARGET), inventory, agent_seen_by_remote)
    assert not outcome.failed, outcome.error
    assert outcome.value is not None
    assert "sock=none" in outcome.value
    assert local_agent not in outcome.value


def test_agent_forwarding_on_when_the_inventory_enables_it_and_never_to_the_jump(
    lab: Lab, hosts: tuple[str, ...], local_agent: str, tmp_path: Path
) -> None:
    def enable(data: dict[str, Any]) -> None:
        data["hosts"][TARGET]["forward_agent"] = True

    inventory = load_inventory(inventory_copy(lab, tmp_path, enable))
    outcome = run_on_host(inventory.host(TARGET), inventory, agent_seen_by_remote)
    assert not outcome.failed, outcome.error
    assert outcome.value is not None
    assert "sock=/tmp/ssh-" in outcome.value, outcome.value
    assert local_agent in outcome.value  # the remote ssh-add lists the local agent's key

    # Through a jump: the target gets the agent; the jump host itself is never asked for it.
    jump_log = SshdLog(lab, JUMP)
    inventory = load_inventory(inventory_copy(lab, tmp_path, edits(enable, target_jumps_through(JUMP))))
    outcome = run_on_host(inventory.host(TARGET), inventory, agent_seen_by_remote)
    assert not outcome.failed, outcome.error
    assert outcome.value is not None and local_agent in outcome.value
    assert not any("agent" in line.lower() for line in jump_log.lines()), jump_log.lines()


# ------------------------------------------------------------------------------------------ settings


def test_connect_timeout_below_one_second_is_refused_at_load(
    lab: Lab, hosts: tuple[str, ...], tmp_path: Path
) -> None:
    def short(data: dict[str, Any]) -> None:
        data["ssh"]["connect_timeout"] = 0.5

    inventory_file = inventory_copy(lab, tmp_path, short)
    target_log = SshdLog(lab, TARGET)
    for tool, args in (("fab", ("-H", TARGET, "facts")), ("inv", ("facts", "--limit", TARGET))):
        result = certfab_cli(lab, tool, *args, inventory=inventory_file)
        assert result.returncode == 2, result.stdout + result.stderr
        assert one_error_line(result.stderr) == (
            f"error: {inventory_file}: ssh.connect_timeout: 0.5 must be at least 1 second"
        )
    assert target_log.logins() == []


def home_with_ssh_config(tmp_path: Path, text: str) -> dict[str, str]:
    """Environment for fab/inv whose HOME holds .ssh/config with `text` (certfab's default config_file)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".ssh" / "config").write_text(text)
    return {"HOME": str(home)}


def alias_inventory(lab: Lab, tmp_path: Path, **target: Any) -> Path:
    """The lab inventory with no user or key in defaults, and web14's address an ssh_config alias."""

    def edit(data: dict[str, Any]) -> None:
        del data["defaults"]["user"]
        data["defaults"].pop("key_file")
        data["hosts"][TARGET]["address"] = "web14-alias"
        data["hosts"][TARGET].update(target)

    return inventory_copy(lab, tmp_path, edit)


def alias_config(lab: Lab, user: str = "root", port: int = 22, extra: str = "") -> str:
    key = lab.info.inventory.parent / "id_ed25519"
    return (
        f"Host web14-alias\n  HostName 10.77.0.24\n  User {user}\n  Port {port}\n  IdentityFile {key}\n{extra}"
        "Host *\n  IdentitiesOnly yes\n"
    )


def test_ssh_config_hostname_user_port_identity_file_honoured_by_fab_and_inv(
    lab: Lab, hosts: tuple[str, ...], tmp_path: Path
) -> None:
    inventory_file = alias_inventory(lab, tmp_path)
    env = home_with_ssh_config(tmp_path, alias_config(lab))
    for tool, args in (("fab", ("-H", TARGET, "facts")), ("inv", ("facts", "--limit", TARGET))):
        log = SshdLog(lab, TARGET)
        result = certfab_cli(lab, tool, *args, inventory=inventory_file, env=env)
        assert result.returncode == 0, result.stderr
        assert facts_ran(result, TARGET)
        assert accepted_from(log) == ["10.77.0.1"]
        assert "for root from" in log.logins()[0]


def test_ssh_config_user_and_port_really_reach_the_wire(lab: Lab, hosts: tuple[str, ...], tmp_path: Path) -> None:
    inventory_file = alias_inventory(lab, tmp_path)
    for tool, args in (("fab", ("-H", TARGET, "facts")), ("inv", ("facts", "--limit", TARGET))):
        log = SshdLog(lab, TARGET)
        env = home_with_ssh_config(tmp_path, alias_config(lab, user="certfabnobody"))
        result = certfab_cli(lab, tool, *args, inventory=inventory_file, env=env)
        assert result.returncode != 0
        assert "authentication as certfabnobody failed" in result.stderr, result.stderr
        assert any("Invalid user certfabnobody from 10.77.0.1" in line
                   for line in log.wait_for("Invalid user certfabnobody")), log.lines()

        env = home_with_ssh_config(tmp_path, alias_config(lab, port=2222))
        result = certfab_cli(lab, tool, *args, inventory=inventory_file, env=env)
        assert result.returncode != 0
        assert f"{TARGET} (10.77.0.24:2222): cannot connect: Connection refused" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_inventory_values_win_over_ssh_config(lab: Lab, hosts: tuple[str, ...], tmp_path: Path) -> None:
    key = str(lab.info.inventory.parent / "id_ed25519")
    inventory_file = alias_inventory(lab, tmp_path, user="root", port=22, key_file=key)
    env = home_with_ssh_config(tmp_path, alias_config(lab, user="certfabnobody", port=2222))
    log = SshdLog(lab, TARGET)
    result = certfab_cli(lab, "fab", "-H", TARGET, "facts", inventory=inventory_file, env=env)
    assert result.returncode == 0, result.stderr
    assert accepted_from(log) == ["10.77.0.1"]


def test_ssh_config_proxy_jump_goes_through_the_same_host_key_checks(
    lab: Lab, hosts: tuple[str, ...], tmp_path: Path
) -> None:
    known_hosts = known_hosts_without(lab, tmp_path, JUMP)
    inventory_file = inventory_copy(lab, tmp_path, with_known_hosts(known_hosts))
    # ssh_config tries to switch host-key checks off: certfab ignores those options.
    env = home_with_ssh_config(
        tmp_path,
        "Host 10.77.0.24\n  ProxyJump root@10.77.0.23\n  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n  ForwardAgent yes\n",
    )
    jump_log, target_log = SshdLog(lab, JUMP), SshdLog(lab, TARGET)
    refused = certfab_cli(lab, "inv", "facts", "--limit", TARGET, inventory=inventory_file, env=env)
    assert refused.returncode == 2, refused.stderr
    assert "jump host 10.77.0.23 (10.77.0.23): unknown host key ssh-ed25519" in refused.stderr
    assert jump_log.logins() == [] and untouched(target_log), target_log.lines()

    accepted = certfab_cli(lab, "fab", "-H", TARGET, "facts", "--accept-new", inventory=inventory_file, env=env)
    assert accepted.returncode == 0, accepted.stderr
    assert accepted_from(target_log) == ["10.77.0.23"]
    assert known_hosts.read_text().endswith(f"10.77.0.23 {scanned_host_key(lab, JUMP)}\n")
