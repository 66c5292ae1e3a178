"""Invoke tasks for the lab of real test hosts: lab.up, lab.down, lab.status, lab.dns-add, lab.dns-clear."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from invoke.collection import Collection
from invoke.context import Context
from invoke.tasks import task

from .deferred import reports_errors

if TYPE_CHECKING:
    from certfab.lab.control import Progress


def _progress() -> Progress:
    """A progress printer that prefixes each line with the seconds elapsed."""
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[lab {time.monotonic() - started:5.1f}s] {message}", flush=True)

    return say


@task(help={"hosts": "number of test hosts web1..webN (1-50, default 2)",
            "cert-lifetime": "validity of the certificates Pebble issues, e.g. 160h or 45d (default 90d)",
            "podman": "make the last K hosts run podman instead of dockerd (default 0)"})
@reports_errors
def up(c: Context, hosts: int = 2, cert_lifetime: str = "90d", podman: int = 0) -> None:
    """Bring up the lab: bridge, Pebble, DNS, SMTP and N hosts; writes lab/inventory.yaml."""
    from certfab import lab
    from certfab.lab.pebble import parse_lifetime

    info = lab.up(hosts, progress=_progress(), cert_lifetime=parse_lifetime(cert_lifetime), podman=podman)
    print(f"lab up: {', '.join(f'{h.name}={h.address}' for h in info.hosts)}; inventory {info.inventory}")


@task
@reports_errors
def down(c: Context) -> None:
    """Stop every lab process and remove the lab's namespaces, links and host trees."""
    from certfab import lab

    lab.down(progress=_progress())


@task
@reports_errors
def status(c: Context) -> None:
    """Show whether the lab, its services and each host are up."""
    from certfab import lab

    print(lab.status())


@task(
    name="dns-add",
    help={
        "name": "a name in the lab zone, e.g. shop.test",
        "addresses": "IPv4 addresses, comma-separated (several make a round-robin name)",
    },
)
@reports_errors
def dns_add(c: Context, name: str, addresses: str) -> None:
    """Publish A records for a lab name in the lab DNS, replacing the name's earlier ones."""
    from certfab import lab
    from certfab.errors import LabError

    listed = [part for part in addresses.replace(",", " ").split() if part]
    if not listed:
        raise LabError("lab.dns-add needs at least one address (lab.dns-clear removes a name)")
    lab.set_dns(name, *listed)
    print(f"{name} -> {', '.join(listed)}")


@task(name="dns-clear", help={"name": "a name in the lab zone"})
@reports_errors
def dns_clear(c: Context, name: str) -> None:
    """Remove a lab name's A records from the lab DNS."""
    from certfab import lab

    lab.clear_dns(name)
    print(f"{name} removed")


ns = Collection("lab", up, down, status, dns_add, dns_clear)
