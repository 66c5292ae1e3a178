"""Hostile bytes on real hosts (web15, web16): bootstrap converts what it safely can and refuses the rest
with one clear line, never runs a command from a name, never writes through a planted symlink, and never
overwrites a file edited since its facts were read."""

from __future__ import annotations

import json
import shlex
import subprocess
from typing import Any

import labhelpers
from conftest import certfab_cli

from certfab.inventory import load_inventory
from certfab.lab import Lab

A, B = "web15", "web16"
SITES = "/etc/nginx/sites-available"
ENABLED = "/etc/nginx/sites-enabled"
# What certfab may change on a host; everything else must stay as it was.
WATCHED = ("/etc/nginx", "/etc/certfab", "/etc/cron.d", "/usr/local/sbin", "/var/www", "/root", "/tmp")
# A name with quotes, spaces, `$()` and backticks: any of them expanded would create a `pwned` file.
HOSTILE_NAME = "it's a \"site\" $(touch pwned-dollar) `touch pwned-tick` ; touch pwned-semi"
FAULTS = "/root/.certfab-hostile"


def sh(lab: Lab, host: str, command: str, check: bool = True) -> str:
    return lab.host_exec(host, command, check=check).stdout


def bootstrap(lab: Lab, host: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = certfab_cli(lab, "fab", "-H", host, "bootstrap", "--json")
    rows = json.loads(result.stdout)
    assert [row["host"] for row in rows] == [host], result.stdout + result.stderr
    row: dict[str, Any] = rows[0]
    return result, row


def snapshot(lab: Lab, host: str, trees: tuple[str, ...] = WATCHED) -> dict[str, str]:
    """Every entry under `trees` on the host: kind, mode, owner and content hash (or link target)."""
    return labhelpers.snapshot(lab, host, trees)


def pwned(lab: Lab, host: str) -> list[str]:
    """Files a command taken from a file name would have created, anywhere on the host's trees."""
    out = sh(lab, host, "find / -xdev -name 'pwned*' 2>/dev/null; "
                        "find /root /tmp /etc /var/www /var/lib/certfab -name 'pwned*' 2>/dev/null; true")
    return sorted(set(out.split()))


def nginx_test_ok(lab: Lab, host: str) -> bool:
    return lab.host_exec(host, ["nginx", "-t"], check=False).returncode == 0


def leftovers(lab: Lab, host: str) -> list[str]:
    """Hidden staged files or backups, or an open journal: what a clean end leaves none of."""
    out = sh(lab, host, "find /etc/nginx /etc/certfab /usr/local/sbin /etc/cron.d -name '.certfab-*' 2>/dev/null; "
                        "ls -d /var/lib/certfab/journal /var/lib/certfab/journal.staging 2>/dev/null; true")
    return out.split("\n") if out.strip() else []


def serves_https(lab: Lab, host: str) -> bool:
    address = lab.info.host(host).address
    out = sh(lab, host, f"curl -s -o /dev/null -w '%{{http_code}}' --cacert /etc/certfab/acme-ca.pem "
                        f"--resolve {host}.test:443:{address} https://{host}.test/ || "
                        f"python3 -c 'print(0)'", check=False)
    return out.strip() not in ("", "0", "000")


def test_a_site_file_named_with_quotes_spaces_and_command_substitutions(
    lab: Lab, module_hosts: tuple[str, ...]
) -> None:
    """Expect: bootstrap converts the site (or refuses it in one line); no command from the name ran."""
    assert A in module_hosts
    quoted = shlex.quote(f"{SITES}/{HOSTILE_NAME}")
    sh(lab, A, f"mv {SITES}/{A} {quoted} && rm -f {ENABLED}/{A} && ln -s {quoted} {shlex.quote(f'{ENABLED}/{HOSTILE_NAME}')}"
               " && nginx -t 2>/dev/null && nginx -s reload")
    result, row = bootstrap(lab, A)
    assert pwned(lab, A) == [], "a command taken from a file name ran"
    if row["status"] in ("ok", "changed"):
        text = lab.host_path(A, f"{SITES}/{HOSTILE_NAME}").read_text()
        assert "listen 443 ssl" in text and "certfab" in text
        assert nginx_test_ok(lab, A) and leftovers(lab, A) == []
    else:
        error = row["error"] or ""
        assert "\n" not in error and error.startswith(f"{A}: "), error
        assert nginx_test_ok(lab, A) and leftovers(lab, A) == []


def test_a_megabyte_site_file_is_bootstrapped_end_to_end(lab: Lab, module_hosts: tuple[str, ...]) -> None:
    """Expect: the script carries the whole file on stdin; HTTPS works; the site's other bytes are kept."""
    assert B in module_hosts
    lab.reset_host(B)
    path = lab.host_path(B, f"{SITES}/{B}")
    padding = "".join(f"# padding line {i:06d} " + "x" * 90 + "\n" for i in range(10_000))
    path.write_text(path.read_text() + padding)
    assert path.stat().st_size > 1_000_000
    result, row = bootstrap(lab, B)
    assert result.returncode == 0 and row["status"] == "changed", result.stdout + result.stderr
    text = path.read_text()
    assert padding in text and "listen 443 ssl" in text
    assert row["certificates"] == {B: "issued"}
    assert nginx_test_ok(lab, B) and leftovers(lab, B) == []
    assert serves_https(lab, B)


def test_a_symlinked_challenge_directory_is_refused_and_its_target_untouched(
    lab: Lab, module_hosts: tuple[str, ...]
) -> None:
    """Injects: webroot/.well-known/acme-challenge -> a root-only directory. Expect: refused in one line
    naming it, no self-test token written there, its mode and contents unchanged, no order made."""
    lab.reset_host(A)
    webroot = load_inventory(lab.info.inventory).host(A).webroot
    challenge = f"{webroot}/.well-known/acme-challenge"
    target = f"{FAULTS}/root-only"
    sh(lab, A, f"mkdir -p {target} && chmod 0700 {target} && echo secret > {target}/keep && "
               f"mkdir -p {webroot}/.well-known && ln -s {target} {challenge}")
    before = snapshot(lab, A, (FAULTS,))
    result, row = bootstrap(lab, A)
    assert result.returncode == 1
    assert row["error"] == f"{A}: {challenge} is a symlink; no certificate was requested", row["error"]
    assert snapshot(lab, A, (FAULTS,)) == before
    assert nginx_test_ok(lab, A) and leftovers(lab, A) == []
    sh(lab, A, f"rm -f {challenge}; rm -rf {FAULTS}")


def test_a_site_file_edited_between_facts_and_apply_is_not_overwritten(
    lab: Lab, module_hosts: tuple[str, ...]
) -> None:
    """Injects: the site file edited after the facts were read, when apply takes its lock (a flock wrapper
    early on root's PATH). Expect: one line naming the file, nothing written, the edit intact."""
    lab.reset_host(B)
    site = f"{SITES}/{B}"
    wrapper = f"""#!/bin/sh
# Test fault: edit the site once, when a certfab apply script takes its lock.
if [ "${{1:-}}" = "-w" ] && [ "${{3:-}}" = 8 ] && [ -e {FAULTS}/armed ]; then
    rm -f {FAULTS}/armed
    printf '# edited by hand while certfab ran\\n' >> {site}
fi
exec /usr/bin/flock "$@"
"""
    sh(lab, B, f"mkdir -p {FAULTS} && : > {FAULTS}/armed")
    lab.host_path(B, "/usr/local/sbin/flock").write_text(wrapper)
    lab.host_path(B, "/usr/local/sbin/flock").chmod(0o755)
    try:
        original = lab.host_path(B, site).read_text()
        before = snapshot(lab, B, ("/etc/nginx", "/etc/certfab", "/etc/cron.d"))
        result, row = bootstrap(lab, B)
        assert result.returncode == 1
        assert row["error"] == f"{B}: {site} changed since its facts were read; nothing was written", row["error"]
        assert lab.host_path(B, site).read_text() == original + "# edited by hand while certfab ran\n"
        after = snapshot(lab, B, ("/etc/nginx", "/etc/certfab", "/etc/cron.d"))
        changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
        assert changed == {site}, changed
        assert leftovers(lab, B) == [] and nginx_test_ok(lab, B)
    finally:
        lab.host_path(B, "/usr/local/sbin/flock").unlink(missing_ok=True)
        sh(lab, B, f"rm -rf {FAULTS}", check=False)
