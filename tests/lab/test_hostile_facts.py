"""Host text is data on real hosts: comments that mimic nginx's own file separator, includes and
symlinks that lead to private keys, find options in comments, huge files, terminal escapes.

Whatever a config file says, certfab reads only the files nginx's include directives name, never a
key, runs nothing a host wrote, and shows host text without letting it drive the terminal.
"""

from __future__ import annotations

import base64
import json
import subprocess

import pytest
from conftest import certfab_cli
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from labhelpers import snapshot, tree_changes

from certfab.lab import Lab

A, B = "web17", "web18"
TREES = ("/etc/nginx", "/etc/letsencrypt", "/var/lib/certfab", "/etc/certfab", "/etc/cron.d", "/usr/local/sbin")
SITE = "/etc/nginx/sites-available/{host}"


@pytest.fixture(scope="module")
def hosts(module_hosts: tuple[str, ...]) -> tuple[str, ...]:
    return module_hosts


def new_key_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def plant_keys(lab: Lab, host: str) -> list[bytes]:
    """Private keys where certbot keeps them and where a site's own config names one."""
    keys = []
    for path in ("/etc/letsencrypt/live/planted/privkey.pem", "/etc/nginx/keys/site.key"):
        pem = new_key_pem()
        target = lab.host_path(host, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(pem)
        target.chmod(0o600)
        keys.append(pem)
    return keys


def assert_no_key(keys: list[bytes], *outputs: str) -> None:
    for output in outputs:
        assert "PRIVATE KEY" not in output
        for pem in keys:
            body = b"".join(pem.splitlines()[1:-1]).decode()
            assert body[:32] not in output
            assert base64.b64encode(pem).decode()[:32] not in output


def add_to_site(lab: Lab, host: str, text: str) -> None:
    path = lab.host_path(host, SITE.format(host=host))
    path.write_text(text + path.read_text())


def run(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return certfab_cli(lab, *args)


SEPARATORS = """\
# configuration file /etc/letsencrypt/live/planted/privkey.pem:
# configuration file /etc/nginx/keys/site.key:
# configuration file /etc/ssl/private/ssl-cert-snakeoil.key:
# configuration file -delete:
# configuration file /etc/nginx -delete:
# configuration file /etc/letsencrypt -exec rm -rf {} +:
# configuration file $(touch /tmp/certfab-pwned):
"""


def test_comments_that_mimic_nginx_separators_name_no_file_and_run_nothing(lab: Lab, hosts: tuple[str, ...]) -> None:
    keys = plant_keys(lab, A)
    add_to_site(lab, A, SEPARATORS)
    before = snapshot(lab, A, TREES)
    outputs = []
    facts = run(lab, "fab", "-H", A, "facts", "--json")
    assert facts.returncode == 0, facts.stderr
    [summary] = json.loads(facts.stdout)
    assert summary["nginx"]["files"] == [
        "/etc/nginx/mime.types", "/etc/nginx/nginx.conf", f"/etc/nginx/sites-enabled/{A}",
    ]
    outputs += [facts.stdout, facts.stderr]
    # plan and --check run the stamp probe's find too: it must change nothing at all.
    for args in (("fab", "-H", A, "plan"), ("fab", "-H", A, "bootstrap", "--check"),
                 ("inv", "deploy-all", "--limit", A, "--check")):
        result = run(lab, *args)
        assert result.returncode == 0, result.stderr
        outputs += [result.stdout, result.stderr]
    assert tree_changes(before, snapshot(lab, A, TREES)) == {}
    assert lab.host_exec(A, "ls /tmp/certfab-pwned", check=False).returncode != 0
    assert_no_key(keys, *outputs)


def test_a_real_bootstrap_and_no_change_runs_keep_everything_the_comments_name(lab: Lab, hosts: tuple[str, ...]) -> None:
    keys = [lab.host_path(A, p).read_bytes() for p in ("/etc/letsencrypt/live/planted/privkey.pem",
                                                       "/etc/nginx/keys/site.key")]
    outputs = []
    for _ in range(3):  # converge, then two runs through the no-change stamp probe
        result = run(lab, "inv", "deploy-all", "--limit", A)
        assert result.returncode == 0, result.stdout + result.stderr
        outputs += [result.stdout, result.stderr]
    assert "no change" in outputs[-2]
    after = snapshot(lab, A, TREES)
    assert "/etc/letsencrypt/live/planted/privkey.pem" in after and "/etc/nginx/keys/site.key" in after
    assert len([p for p in after if p.startswith("/etc/nginx/")]) > 10
    assert SEPARATORS in lab.host_path(A, SITE.format(host=A)).read_text()
    assert_no_key(keys, *outputs, *(p.read_text() for p in lab.info.repo_dir.joinpath("reports").glob("*.json")))


def test_includes_and_symlinks_that_lead_to_keys_are_refused_unread(lab: Lab, hosts: tuple[str, ...]) -> None:
    keys = plant_keys(lab, B)
    snippets = lab.host_path(B, "/etc/nginx/hostile")
    snippets.mkdir(exist_ok=True)
    (snippets / "tls.conf").symlink_to("/etc/letsencrypt/live/planted/privkey.pem")
    (snippets / "named.conf").symlink_to("/etc/nginx/keys/site.key")
    (snippets / "pasted.conf").write_bytes(b"# pasted by mistake\n" + new_key_pem())
    add_to_site(lab, B, "include /etc/nginx/hostile/*.conf;\ninclude /etc/letsencrypt/live/planted/privkey.pem;\n")
    facts = run(lab, "fab", "-H", B, "facts", "--json")
    assert facts.returncode == 0, facts.stderr
    [summary] = json.loads(facts.stdout)
    assert not any("hostile" in f or "letsencrypt" in f for f in summary["nginx"]["files"])
    refused = summary["nginx"]["refused_files"]
    assert set(refused) == {"/etc/nginx/hostile/tls.conf", "/etc/nginx/hostile/named.conf",
                            "/etc/nginx/hostile/pasted.conf", "/etc/letsencrypt/live/planted/privkey.pem"}
    assert "private key location" in refused["/etc/nginx/hostile/tls.conf"]
    # nginx cannot load such a configuration: bootstrap refuses on one line and changes nothing.
    before = snapshot(lab, B, TREES)
    result = run(lab, "fab", "-H", B, "bootstrap")
    assert result.returncode != 0
    assert "nginx -t already fails before any change" in result.stdout, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert tree_changes(before, snapshot(lab, B, TREES)) == {}
    assert_no_key(keys, facts.stdout, facts.stderr, result.stdout, result.stderr)
    for name in ("tls.conf", "named.conf", "pasted.conf"):
        (snippets / name).unlink()


def test_a_one_megabyte_site_file_is_read_whole(lab: Lab, hosts: tuple[str, ...]) -> None:
    lab.reset_host(B)
    filler = "".join(f"# {i:07d} {'x' * 100}\n" for i in range(10_000))
    add_to_site(lab, B, filler)
    size = lab.host_path(B, SITE.format(host=B)).stat().st_size
    assert size > 1_000_000
    result = run(lab, "fab", "-H", B, "facts", "--json")
    assert result.returncode == 0, result.stderr
    [summary] = json.loads(result.stdout)
    assert f"/etc/nginx/sites-enabled/{B}" in summary["nginx"]["files"]
    assert summary["nginx"]["server_blocks"][0]["server_names"] == [f"{B}.test", f"www.{B}.test"]


def test_terminal_escapes_in_host_text_are_shown_not_obeyed(lab: Lab, hosts: tuple[str, ...]) -> None:
    lab.reset_host(B)
    # A file name with escapes that would clear the line and recolour the screen; nginx loads it fine.
    name = "/etc/nginx/sites-enabled/esc\x1b[2K\x1b[1A\x1b[32m.conf"
    lab.host_path(B, name).write_text("server {\n\tlisten 8081;\n\tserver_name esc.test;\n}\n")
    result = run(lab, "fab", "-H", B, "facts")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout + result.stderr
    assert "esc\\x1b[2K\\x1b[1A\\x1b[32m.conf:1]" in result.stdout, result.stdout
    # JSON is for programs: the name comes back exactly.
    as_json = run(lab, "fab", "-H", B, "facts", "--json")
    assert name in json.loads(as_json.stdout)[0]["nginx"]["files"]
    lab.host_path(B, name).unlink()
