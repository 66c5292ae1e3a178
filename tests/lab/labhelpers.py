"""Helpers shared by lab test modules: what a host's file trees hold and how they changed, requests
to a host's nginx over HTTP and HTTPS, inventory copies, host keys and sshd's log."""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from certfab.lab import Lab

# The file tree as seen on the host: path -> kind, mode, owner and sha256 (or a symlink's target).
_SNAPSHOT = r"""
import hashlib, json, os, stat, sys
out = {}
for root in sys.argv[1:]:
    if not os.path.lexists(root):
        out[root] = "absent"
        continue
    paths = [root]
    if os.path.isdir(root) and not os.path.islink(root):
        for d, dirs, files in os.walk(root):
            paths += [os.path.join(d, n) for n in dirs + files]
    for p in paths:
        st = os.lstat(p)
        meta = f"{stat.S_IMODE(st.st_mode):o} {st.st_uid}:{st.st_gid}"
        if stat.S_ISLNK(st.st_mode):
            out[p] = "link -> " + os.readlink(p)
        elif stat.S_ISDIR(st.st_mode):
            out[p] = "dir " + meta
        elif stat.S_ISREG(st.st_mode):
            with open(p, "rb") as f:
                out[p] = "file " + meta + " " + hashlib.sha256(f.read()).hexdigest()
        else:
            out[p] = "other " + meta
print(json.dumps(out, sort_keys=True))
"""


def snapshot(lab: Lab, host: str, paths: tuple[str, ...]) -> dict[str, str]:
    """Every file, directory and symlink under `paths` on the host, with mode, owner and sha256."""
    result = lab.host_exec(host, ["python3", "-c", _SNAPSHOT, *paths])
    data: dict[str, str] = json.loads(result.stdout)
    return data


def tree_changes(before: dict[str, str], after: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    """Paths whose entry differs between two snapshots: path -> (before, after)."""
    return {
        p: (before.get(p), after.get(p))
        for p in sorted(before.keys() | after.keys())
        if before.get(p) != after.get(p)
    }


@dataclass(frozen=True)
class Response:
    """What a server answered to one request."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes


def http_get(address: str, name: str, path: str = "/", port: int = 80) -> Response:
    """GET http://name:port/path from address (no redirects followed, no proxies)."""
    conn = http.client.HTTPConnection(address, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": name, "Connection": "close"})
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()



def http_pages(address: str, domains: tuple[str, ...], paths: Iterable[str]) -> dict[tuple[str, str], tuple[int, bytes]]:
    """Status and body of every path of every domain, over plain HTTP from address."""
    pages = {}
    for domain in domains:
        for path in paths:
            resp = http_get(address, domain, path)
            pages[(domain, path)] = (resp.status, resp.body)
    return pages

def https_get(address: str, name: str, cafile: Path, path: str = "/") -> tuple[Response, bytes]:
    """GET https://name/path from address, chain and name verified against `cafile`; also the leaf (DER)."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    raw = socket.create_connection((address, 443), timeout=10)
    tls = ctx.wrap_socket(raw, server_hostname=name)
    conn = http.client.HTTPConnection(name, 443, timeout=10)
    conn.sock = tls
    try:
        leaf = tls.getpeercert(binary_form=True)
        assert leaf
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read()), leaf
    finally:
        conn.close()


# ------------------------------------------------------------------ inventories, host keys, sshd logs


def inventory_copy(lab: Lab, directory: Path, edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """A copy of the lab inventory in `directory` (lab file paths made absolute), changed by `edit`."""
    data = yaml.safe_load(lab.info.inventory.read_text())
    lab_dir = lab.info.inventory.parent
    data["ssh"]["known_hosts"] = str(lab_dir / data["ssh"]["known_hosts"])
    data["defaults"]["key_file"] = str(lab_dir / data["defaults"]["key_file"])
    for key in ("ca_bundle", "trust_roots"):
        data["acme"][key] = str(lab_dir / data["acme"][key])
    if edit is not None:
        edit(data)
    path = directory / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def with_known_hosts(path: Path) -> Callable[[dict[str, Any]], None]:
    """An inventory edit pointing ssh.known_hosts at `path`."""

    def edit(data: dict[str, Any]) -> None:
        data["ssh"]["known_hosts"] = str(path)

    return edit


def known_hosts_without(lab: Lab, directory: Path, name: str) -> Path:
    """A copy of lab/known_hosts with every line for one host's address removed."""
    address = lab.info.host(name).address
    lines = [line for line in lab.info.known_hosts.read_text().splitlines() if line.split(" ", 1)[0] != address]
    path = directory / "known_hosts"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def ssh_fingerprint(public_line: str) -> str:
    """SHA256 fingerprint of an OpenSSH public key line, computed by ssh-keygen."""
    result = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", "-"], input=public_line + "\n", capture_output=True,
        text=True, check=True, timeout=30,
    )
    return result.stdout.split()[1]


def scanned_host_key(lab: Lab, name: str) -> str:
    """The host's ed25519 key as its sshd presents it (ssh-keyscan), as `ssh-ed25519 BASE64`."""
    address = lab.info.host(name).address
    result = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-T", "10", address], capture_output=True, text=True, timeout=60,
        check=False,
    )
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == address and parts[1] == "ssh-ed25519":
            return f"{parts[1]} {parts[2]}"
    raise AssertionError(f"ssh-keyscan got no ed25519 key from {address}: {result.stderr}")


class SshdLog:
    """The lines a host's sshd logs from now on (it runs with -e into the lab's per-host log)."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.path = lab.info.log_dir / f"{name}.log"
        self.start = self.path.stat().st_size

    def lines(self) -> list[str]:
        with open(self.path, "rb") as handle:
            handle.seek(self.start)
            return handle.read().decode(errors="replace").splitlines()

    def logins(self) -> list[str]:
        """Successful authentications: without one, no command can have run."""
        return [line for line in self.lines() if line.startswith("Accepted ")]

    def wait_for(self, pattern: str, timeout: float = 10) -> list[str]:
        """Wait until a line matching `pattern` was logged; return the lines so far."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            if any(re.search(pattern, line) for line in lines) or time.monotonic() > deadline:
                return lines
            time.sleep(0.1)


def host_blocks(text: str) -> dict[str, str]:
    """Split `fab facts` text output into one block per host (a host line starts at column 0)."""
    blocks: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line and not line[0].isspace():
            current = blocks.setdefault(line.split(" ", 1)[0], [])
        current.append(line)
    return {name: "\n".join(lines) for name, lines in blocks.items()}


def one_error_line(stderr: str) -> str:
    """The only line on stderr, which must be an `error:` line without a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]
