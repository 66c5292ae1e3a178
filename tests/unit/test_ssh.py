"""SSH plumbing without a network: routes from inventory and ssh_config, per-connection Fabric configs
cloned from many threads, and known_hosts lines recorded from many threads and processes at once."""

from __future__ import annotations

import base64
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paramiko
import pytest
from fabric import Config
from invoke.config import Config as InvokeConfig

from certfab.errors import HostKeyError, InventoryError
from certfab.inventory import Inventory, parse_inventory
from certfab.ssh import (
    AcceptNewKey,
    Endpoint,
    HostConnection,
    connection_config,
    fingerprint,
    record_host_key,
    resolve_route,
)

THREADS = 32


def inventory(tmp_path: Path, ssh_config: str | None, **hosts: dict[str, Any]) -> Inventory:
    """An inventory of the given hosts whose ssh.config_file holds `ssh_config` (None: no file)."""
    config_file = tmp_path / "ssh_config"
    if ssh_config is not None:
        config_file.write_text(ssh_config)
    data = {
        "ssh": {"known_hosts": str(tmp_path / "known_hosts"), "config_file": str(config_file)},
        "acme": {"email": "admin@example.com"},
        "defaults": {"renewal": {"admin_email": "ops@example.com"}},
        "hosts": hosts,
    }
    return parse_inventory(data, tmp_path / "inventory.yaml")


def hammer(work: Callable[[int], object], count: int = THREADS * 4) -> list[object]:
    """Run work(i) for many i on many threads released at the same moment; re-raise the first failure."""
    start = threading.Barrier(THREADS)

    def task(index: int) -> object:
        if index < THREADS:
            start.wait()
        return work(index)

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(task, range(count)))


# ------------------------------------------------------------------------------------------ routes


def test_ssh_config_gives_hostname_user_port_and_identity_file_the_inventory_leaves_unset(tmp_path: Path) -> None:
    inv = inventory(
        tmp_path,
        "Host web1\n  HostName 192.0.2.10\n  User deploy\n  Port 2222\n  IdentityFile ~/keys/web1\n",
        web1={},
    )
    route = resolve_route(inv.host("web1"), inv)
    assert (route.address, route.user, route.port) == ("192.0.2.10", "deploy", 2222)
    assert route.key_files == (str(Path("~/keys/web1").expanduser()),)
    assert route.via is None


def test_inventory_values_win_over_ssh_config(tmp_path: Path) -> None:
    key = tmp_path / "id_inventory"
    key.write_text("not read here\n")
    inv = inventory(
        tmp_path,
        "Host web1\n  User deploy\n  Port 2222\n  IdentityFile ~/keys/web1\n  ProxyJump bastion\n",
        web1={"user": "admin", "port": 22, "key_file": str(key), "jump": "none"},
    )
    route = resolve_route(inv.host("web1"), inv)
    assert (route.address, route.user, route.port, route.key_files) == ("web1", "admin", 22, (str(key),))
    assert route.via is None  # jump: none overrides ssh_config's ProxyJump


def test_proxy_jump_hops_are_connected_first_to_last(tmp_path: Path) -> None:
    inv = inventory(
        tmp_path,
        "Host web1\n  ProxyJump ops@outer:2200,inner\nHost inner\n  HostName 10.0.0.2\n  User hop\n",
        web1={"user": "admin"},
    )
    route = resolve_route(inv.host("web1"), inv)
    assert [(hop.label, hop.address, hop.user, hop.port) for hop in route.hops()] == [
        ("jump host outer", "outer", "ops", 2200),
        ("jump host inner", "10.0.0.2", "hop", 22),
        ("web1", "web1", "admin", 22),
    ]


def test_jump_naming_an_inventory_host_uses_that_hosts_settings(tmp_path: Path) -> None:
    inv = inventory(
        tmp_path,
        None,
        bastion={"address": "198.51.100.7", "user": "gate", "port": 2022},
        web1={"address": "10.0.0.5", "jump": "bastion"},
    )
    route = resolve_route(inv.host("web1"), inv)
    assert route.via == Endpoint("jump host bastion", "198.51.100.7", 2022, "gate", ())
    assert (route.address, route.user) == ("10.0.0.5", "root")


def test_address_jump_takes_the_targets_user_and_key_unless_given(tmp_path: Path) -> None:
    inv = inventory(tmp_path, None, web1={"user": "admin", "jump": "[2001:db8::1]:2200"})
    hop = resolve_route(inv.host("web1"), inv).via
    assert hop is not None
    assert (hop.address, hop.port, hop.user) == ("2001:db8::1", 2200, "admin")


def test_proxy_command_is_refused_not_run(tmp_path: Path) -> None:
    inv = inventory(tmp_path, "Host web1\n  ProxyCommand nc %h %p\n", web1={})
    with pytest.raises(InventoryError, match="ProxyCommand, which certfab does not run"):
        resolve_route(inv.host("web1"), inv)


def test_bad_port_in_ssh_config_is_one_line(tmp_path: Path) -> None:
    inv = inventory(tmp_path, "Host web1\n  Port http\n", web1={})
    with pytest.raises(InventoryError) as caught:
        resolve_route(inv.host("web1"), inv)
    assert str(caught.value) == f"ssh config {tmp_path / 'ssh_config'}: Port 'http' for 'web1' is not a number in 1-65535"


def test_missing_ssh_config_file_is_empty(tmp_path: Path) -> None:
    inv = inventory(tmp_path, None, web1={})
    route = resolve_route(inv.host("web1"), inv)
    assert (route.address, route.user, route.port, route.key_files, route.via) == ("web1", "root", 22, (), None)


# ------------------------------------------------------------------------------------------ configs


def fab_like_config(tmp_path: Path) -> Config:
    """A Fabric Config as `fab -F FILE -A` builds it: ssh_config rules loaded, agent forwarding asked for."""
    path = tmp_path / "fab_ssh_config"
    path.write_text("Host *\n  ForwardAgent yes\n  ProxyJump evil\n  StrictHostKeyChecking no\n")
    return Config(runtime_ssh_path=str(path), overrides={"forward_agent": True, "sudo": {"password": "s3"}})


def test_connection_config_carries_no_ssh_config_rules_and_keeps_task_settings(tmp_path: Path) -> None:
    source = fab_like_config(tmp_path)
    assert source.base_ssh_config.lookup("web1").get("proxyjump") == "evil"
    config = connection_config(source)
    assert config is not source
    assert config.base_ssh_config.lookup("web1").get("proxyjump") is None
    assert config.sudo.password == "s3"
    conn = HostConnection("10.0.0.5", user="root", port=22, config=config, gateway=False, forward_agent=False)
    assert (conn.gateway, conn.forward_agent, conn.host) == (False, False, "10.0.0.5")


def test_invoke_config_becomes_a_fabric_config_of_its_own() -> None:
    source = InvokeConfig(overrides={"sudo": {"password": "s3"}})
    config = connection_config(source)
    assert isinstance(config, Config)
    assert config.sudo.password == "s3"
    assert config.authentication.strategy_class is None


def test_a_connection_never_writes_into_the_config_it_was_cloned_from(tmp_path: Path) -> None:
    template = connection_config(fab_like_config(tmp_path))
    own = connection_config(template)
    HostConnection("10.0.0.5", config=own, gateway=False, forward_agent=False)
    assert template._modifications == {}
    assert own._modifications == {}


def test_many_threads_clone_and_connect_from_one_template(tmp_path: Path) -> None:
    template = connection_config(fab_like_config(tmp_path))
    rules_before = len(template.base_ssh_config._config)
    configs: list[Config] = []
    lock = threading.Lock()

    def work(index: int) -> tuple[Any, ...]:
        config = connection_config(template)
        conn = HostConnection(f"10.0.{index // 250}.{index % 250 + 1}", user="root", port=22, config=config,
                              gateway=False, forward_agent=False, connect_kwargs={"banner_timeout": 5})
        with lock:
            configs.append(config)
        # What Fabric reads while connecting: it must be there whatever other threads do.
        return (conn.config.authentication.strategy_class, conn.config.gateway, conn.config.sudo.password,
                conn.gateway, conn.forward_agent)

    results = hammer(work, count=THREADS * 8)
    assert set(results) == {(None, None, "s3", False, False)}
    assert len({id(config) for config in configs}) == len(configs)
    assert template._modifications == {}
    assert len(template.base_ssh_config._config) == rules_before


# ------------------------------------------------------------------------------------------ known_hosts


def ecdsa_key() -> paramiko.ECDSAKey:
    return paramiko.ECDSAKey.generate()


def read_entries(path: Path) -> list[tuple[str, str, str]]:
    lines = path.read_text(encoding="ascii").splitlines()
    entries = [tuple(line.split(" ")) for line in lines]
    assert all(len(entry) == 3 for entry in entries), lines
    return entries  # type: ignore[return-value]


def test_many_threads_record_distinct_hosts_whole_lines_none_lost(tmp_path: Path) -> None:
    known_hosts = tmp_path / "ssh" / "known_hosts"
    keys = {f"[10.0.0.{i % 250 + 1}]:{2000 + i}": ecdsa_key() for i in range(THREADS * 4)}
    names = list(keys)
    recorded = hammer(lambda i: record_host_key(known_hosts, names[i], keys[names[i]]), count=len(names))
    assert all(recorded)
    entries = read_entries(known_hosts)
    assert sorted(entries) == sorted((name, key.get_name(), key.get_base64()) for name, key in keys.items())
    loaded = paramiko.HostKeys(str(known_hosts))
    for name, key in keys.items():
        assert loaded.lookup(name)[key.get_name()] == key  # type: ignore[index]


def test_many_threads_seeing_one_new_host_record_it_once(tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    key = ecdsa_key()
    recorded = hammer(lambda i: record_host_key(known_hosts, "10.77.0.23", key))
    assert recorded.count(True) == 1
    assert read_entries(known_hosts) == [("10.77.0.23", key.get_name(), key.get_base64())]


def test_accept_new_policies_in_many_threads_notice_only_the_one_that_recorded(tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    key = ecdsa_key()
    policies = [AcceptNewKey(f"web{i}: jump host bastion", known_hosts) for i in range(THREADS)]
    hammer(lambda i: policies[i].missing_host_key(paramiko.SSHClient(), "bastion", key), count=THREADS)
    notices = [policy.recorded for policy in policies if policy.recorded]
    assert len(notices) == 1
    assert notices[0].endswith(f"recorded new host key {key.get_name()} {fingerprint(key)}")
    assert len(read_entries(known_hosts)) == 1


def test_a_different_key_recorded_meanwhile_is_refused_as_changed(tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    first, second = ecdsa_key(), ecdsa_key()
    assert record_host_key(known_hosts, "10.0.0.9", first)
    with pytest.raises(paramiko.BadHostKeyException):
        record_host_key(known_hosts, "10.0.0.9", second)
    assert read_entries(known_hosts) == [("10.0.0.9", first.get_name(), first.get_base64())]


def test_a_file_without_final_newline_gets_a_whole_new_line(tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    old = ecdsa_key()
    known_hosts.write_text(f"10.0.0.1 {old.get_name()} {old.get_base64()}")
    new = ecdsa_key()
    record_host_key(known_hosts, "10.0.0.2", new)
    assert read_entries(known_hosts) == [
        ("10.0.0.1", old.get_name(), old.get_base64()),
        ("10.0.0.2", new.get_name(), new.get_base64()),
    ]


def _record_from_process(path: str, prefix: int, keys: list[str]) -> None:
    """In a child process: record keys (base64 blobs) from several threads."""
    threads = []
    for index, blob in enumerate(keys):
        key = paramiko.ECDSAKey(data=base64.b64decode(blob))
        name = f"[10.1.{prefix}.{index}]:22"
        threads.append(threading.Thread(target=record_host_key, args=(Path(path), name, key)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_several_processes_with_threads_append_without_interleaving(tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    per_process = {prefix: [ecdsa_key().get_base64() for _ in range(16)] for prefix in range(4)}
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=_record_from_process, args=(str(known_hosts), prefix, blobs))
        for prefix, blobs in per_process.items()
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    entries = read_entries(known_hosts)
    expected = {
        (f"[10.1.{prefix}.{index}]:22", "ecdsa-sha2-nistp256", blob)
        for prefix, blobs in per_process.items()
        for index, blob in enumerate(blobs)
    }
    assert len(entries) == len(expected)
    assert set(entries) == expected


def test_a_known_hosts_that_cannot_be_written_is_one_line_and_nothing_runs(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    policy = AcceptNewKey("web1", blocker / "known_hosts")
    with pytest.raises(HostKeyError) as caught:
        policy.missing_host_key(paramiko.SSHClient(), "10.0.0.1", ecdsa_key())
    assert str(caught.value).startswith("web1 (10.0.0.1): cannot record host key ecdsa-sha2-nistp256 SHA256:")
    assert str(caught.value).endswith("nothing was run")
