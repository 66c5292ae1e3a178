"""Files the lab writes into <repo>/lab/: inventory, known_hosts, client key, CA and root PEMs."""

from __future__ import annotations

import os
from pathlib import Path

from certfab.lab import layout, proc


def _atomic_write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Replace a file in one step so readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    # Created with its final mode, so a secret is never readable by others, not even for a moment.
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, mode)
    tmp.replace(path)


def ensure_client_key(lab_dir: Path) -> str:
    """The lab's SSH client public key line (type and base64), generating the key pair once."""
    key = lab_dir / layout.LAB_FILES["key_file"]
    public = key.with_name(key.name + ".pub")
    if not key.exists() or not public.exists():
        lab_dir.mkdir(parents=True, exist_ok=True)
        key.unlink(missing_ok=True)
        public.unlink(missing_ok=True)
        proc.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "certfab-lab", "-f", str(key)])
    parts = public.read_text().split()
    return f"{parts[0]} {parts[1]}"


def known_hosts_text(host_keys: dict[str, str]) -> str:
    """known_hosts lines for address -> `type base64` host keys."""
    return "".join(f"{address} {key}\n" for address, key in sorted(host_keys.items()))


def inventory_text(hosts: list[str], podman_hosts: tuple[str, ...] = (), lab_dir: Path | None = None) -> str:
    """The lab inventory (see INVENTORY format): Pebble as ACME server, every host in group `lab`.

    DNS-01 goes through the lab DNS with the rfc2136 plugin of the lab's certbot image, so a lab site
    needs only `challenge: dns-01`; the credentials path is absolute so that copies of the inventory
    elsewhere still find it.
    """
    credentials = (lab_dir or Path(".")) / layout.LAB_FILES["dns_credentials"]
    lines = [
        "# Lab inventory: rewritten by `inv lab.up`; paths are relative to this file.",
        "version: 1",
        "ssh:",
        f"  known_hosts: {layout.LAB_FILES['known_hosts']}",
        "  connect_timeout: 10",
        "acme:",
        "  email: admin@lab.test",
        f"  server: {layout.ACME_DIRECTORY}",
        f"  ca_bundle: {layout.LAB_FILES['pebble_ca']}",
        f"  trust_roots: {layout.LAB_FILES['pebble_root']}",
        "  # Pebble enforces no rate limits, and the tests order the same names many times a day.",
        "  rate_limits: {per_registered_domain: 100000, per_name_set: 100000}",
        "defaults:",
        "  user: root",
        f"  key_file: {layout.LAB_FILES['key_file']}",
        "  certbot:",
        f"    image: {layout.CERTBOT_IMAGE}",
        "    runtime: docker",
        "  renewal:",
        "    admin_email: ops@lab.test",
        "  dns01:",
        "    plugin: rfc2136",
        f"    credentials: {credentials}",
        "    propagation_seconds: 1",
        f"    image: {layout.CERTBOT_IMAGE}",
        "groups:",
        f"  lab: [{', '.join(hosts)}]",
        "hosts:",
    ]
    for name in hosts:
        lines += [
            f"  {name}:",
            f"    address: {layout.host_address(layout.host_index(name))}",
            *(["    certbot: {runtime: podman}"] if name in podman_hosts else []),
            "    sites:",
            f"      - name: {name}",
            f"        domains: [{', '.join(layout.host_domains(name))}]",
        ]
    return "\n".join(lines) + "\n"


def write_lab_files(lab_dir: Path, hosts: list[str], host_keys: dict[str, str], ca_pem: bytes,
                    podman_hosts: tuple[str, ...] = ()) -> None:
    """Write the inventory, known_hosts and the lab CA next to the client key."""
    _atomic_write(lab_dir / layout.LAB_FILES["known_hosts"], known_hosts_text(host_keys))
    _atomic_write(lab_dir / layout.LAB_FILES["pebble_ca"], ca_pem)
    _atomic_write(lab_dir / layout.LAB_FILES["inventory"], inventory_text(hosts, podman_hosts, lab_dir))


def write_dns_credentials(lab_dir: Path, text: str) -> None:
    """Write certbot's rfc2136 credentials for the lab DNS (readable by root only)."""
    _atomic_write(lab_dir / layout.LAB_FILES["dns_credentials"], text, mode=0o600)


def write_pebble_root(lab_dir: Path, root_pem: bytes) -> None:
    """Write Pebble's current issuing root (changes at every Pebble start)."""
    _atomic_write(lab_dir / layout.LAB_FILES["pebble_root"], root_pem)
