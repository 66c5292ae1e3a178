"""The lab network: one bridge on the machine, one network namespace per host, joined by veth pairs."""

from __future__ import annotations

from pathlib import Path

from certfab.errors import LabError
from certfab.lab import layout, proc


def _batch(commands: list[str], *, netns: str | None = None) -> None:
    """Run several `ip` commands in one process (optionally inside a namespace)."""
    if not commands:
        return
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    proc.run(argv, input="\n".join(commands) + "\n")


def bridge_exists() -> bool:
    """Whether the lab bridge is present."""
    return Path(f"/sys/class/net/{layout.BRIDGE}").exists()


def lab_namespaces() -> list[str]:
    """Host names whose lab network namespace exists (leftovers included)."""
    netns_dir = Path("/run/netns")
    if not netns_dir.is_dir():
        return []
    return sorted(
        entry.name.removeprefix(layout.NETNS_PREFIX)
        for entry in netns_dir.iterdir()
        if entry.name.startswith(layout.NETNS_PREFIX)
    )


def lab_links() -> list[str]:
    """Machine-side lab interfaces (veth ends), leftovers included."""
    return sorted(
        entry.name for entry in Path("/sys/class/net").iterdir() if entry.name.startswith(layout.VETH_PREFIX)
    )


def setup(hosts: list[str]) -> None:
    """Create the bridge and, for each host, its namespace, veth pair, address and default route."""
    commands = [
        f"link add {layout.BRIDGE} type bridge",
        f"addr add {layout.BRIDGE_ADDRESS}/{layout.PREFIX_LEN} dev {layout.BRIDGE}",
        f"link set {layout.BRIDGE} up",
    ]
    for name in hosts:
        ns, veth = layout.netns_name(name), layout.veth_name(name)
        commands += [
            f"netns add {ns}",
            f"link add {veth} type veth peer name eth0 netns {ns}",
            f"link set {veth} master {layout.BRIDGE} up",
        ]
    _batch(commands)
    for name in hosts:
        address = layout.host_address(layout.host_index(name))
        _batch(
            [
                "link set lo up",
                f"addr add {address}/{layout.PREFIX_LEN} dev eth0",
                "link set eth0 up",
                f"route add default via {layout.BRIDGE_ADDRESS}",
            ],
            netns=layout.netns_name(name),
        )


def ipv6_available(name: str) -> bool:
    """Whether IPv6 works inside a host's namespace (::1 on its loopback)."""
    result = proc.run(["ip", "-n", layout.netns_name(name), "-6", "addr", "show", "dev", "lo"], check=False)
    return result.returncode == 0 and "::1/128" in result.stdout


def teardown() -> None:
    """Remove every lab namespace, veth and the bridge (processes inside must be ended first)."""
    for name in lab_namespaces():
        proc.run(["ip", "netns", "delete", layout.netns_name(name)], check=False)
    # The kernel drops a deleted namespace (and its veth pair) asynchronously: give it a moment.
    try:
        proc.wait_for("removal of lab interfaces", lambda: not lab_links(), timeout=3)
    except LabError:
        for link in lab_links():
            proc.run(["ip", "link", "delete", link], check=False)
    if bridge_exists():
        proc.run(["ip", "link", "delete", layout.BRIDGE])
    leftovers = lab_namespaces() + lab_links()
    if leftovers:
        raise LabError(f"could not remove lab network leftovers: {', '.join(leftovers)}")
