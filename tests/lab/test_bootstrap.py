"""`fab bootstrap` on real hosts: HTTPS from a plain site, idempotence, minimal edits, rollback, plan."""

from __future__ import annotations

import difflib
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import labhelpers
import pytest
import yaml
from conftest import VENV_BIN, certfab_cli
from cryptography import x509
from labhelpers import http_get, http_pages, https_get, tree_changes

from certfab.inventory import load_inventory
from certfab.lab import Lab

WEB3, WEB4 = "web3", "web4"
WEB3_DOMAINS = ("web3.test", "www.web3.test")
WEB4_DOMAINS = ("web4.test", "www.web4.test")
SHOP_DOMAINS = ("shop.web4.test",)
# What bootstrap may write, and where certbot keeps its certificates.
CERTFAB_TREES = (
    "/etc/nginx",
    "/etc/certfab",
    "/var/lib/certfab",
    "/usr/local/sbin",
    "/etc/cron.d",
    "/etc/letsencrypt",
)
PAGES = ("/", "/index.html")
HSTS_MAX_AGE = 63072000

def snapshot(lab: Lab, host: str, paths: tuple[str, ...] = CERTFAB_TREES) -> dict[str, str]:
    """Every file, directory and symlink under `paths` on the host, with mode, owner and sha256."""
    return labhelpers.snapshot(lab, host, paths)


def host_text(lab: Lab, host: str, path: str) -> str:
    """A file's text on the host."""
    return lab.host_path(host, path).read_text()


def pebble_validations(lab: Lab, names: tuple[str, ...]) -> int:
    """How many HTTP-01 validations Pebble started for these names (authz reuse is off in the lab)."""
    log = lab.pebble_log()
    return sum(log.count(f'Value:"{name}"}}') for name in names)


def fetch_pages(address: str, domains: tuple[str, ...]) -> dict[tuple[str, str], tuple[int, bytes]]:
    """Status and body of every test page of every domain, over plain HTTP."""
    return http_pages(address, domains, PAGES)


def san_names(cert: x509.Certificate) -> list[str]:
    """The DNS names of a certificate."""
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return ext.value.get_values_for_type(x509.DNSName)


def run_ok(lab: Lab, *args: str, inventory: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI and insist on exit status 0."""
    result = certfab_cli(lab, "fab", *args, inventory=inventory)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def json_recap(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The single host row of a `--json` recap."""
    rows = json.loads(result.stdout)
    assert isinstance(rows, list) and len(rows) == 1, result.stdout
    row: dict[str, Any] = rows[0]
    return row


def assert_nginx_test_clean(lab: Lab, host: str) -> None:
    """`nginx -t` passes and prints only its two usual lines: no warning of any kind."""
    result = lab.host_exec(host, "nginx -t 2>&1")
    lines = result.stdout.strip().splitlines()
    assert lines == [
        "nginx: the configuration file /etc/nginx/nginx.conf syntax is ok",
        "nginx: configuration file /etc/nginx/nginx.conf test is successful",
    ], result.stdout


def copy_inventory(lab: Lab, tmp_path: Path, sites: dict[str, list[dict[str, Any]]]) -> Path:
    """The lab inventory with other sites for some hosts, its relative paths made absolute."""
    lab_dir = lab.info.inventory.parent
    data = yaml.safe_load(lab.info.inventory.read_text())
    data["ssh"]["known_hosts"] = str(lab_dir / data["ssh"]["known_hosts"])
    data["defaults"]["key_file"] = str(lab_dir / data["defaults"]["key_file"])
    for key in ("ca_bundle", "trust_roots"):
        data["acme"][key] = str(lab_dir / data["acme"][key])
    for host, host_sites in sites.items():
        data["hosts"][host]["sites"] = host_sites
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def assert_served_over_https(
    lab: Lab, host: str, site: str, domains: tuple[str, ...], pages_before: dict[tuple[str, str], tuple[int, bytes]]
) -> None:
    """Every domain answers HTTPS with the site's certificate from disk, chained to Pebble's root,
    with the same pages HTTP served before, and HSTS."""
    address = lab.info.host(host).address
    root = lab.info.pebble_root
    on_disk = x509.load_pem_x509_certificate(
        lab.host_path(host, f"/etc/letsencrypt/live/{site}/cert.pem").read_bytes()
    )
    assert sorted(san_names(on_disk)) == sorted(domains)
    for domain in domains:
        for path in PAGES:
            resp, leaf = https_get(address, domain, root, path)
            assert x509.load_der_x509_certificate(leaf) == on_disk, f"{domain} serves another certificate"
            assert (resp.status, resp.body) == pages_before[(domain, path)], f"https://{domain}{path} differs"
            hsts = resp.headers.get("Strict-Transport-Security", "")
            directives = [d.strip() for d in hsts.split(";")]
            assert f"max-age={HSTS_MAX_AGE}" in directives, f"https://{domain}{path}: HSTS {hsts!r}"
            assert "includeSubDomains" in directives, f"https://{domain}{path}: HSTS {hsts!r}"


def assert_redirects_except_acme(lab: Lab, host: str, domains: tuple[str, ...]) -> None:
    """Plain HTTP redirects to the same URL over HTTPS, but ACME challenge files are served as they are."""
    address = lab.info.host(host).address
    webroot = load_inventory(lab.info.inventory).host(host).webroot
    token = f"labtest-{uuid.uuid4().hex}"
    challenge = f"{webroot}/.well-known/acme-challenge/{token}"
    lab.host_exec(host, f"mkdir -p {webroot}/.well-known/acme-challenge && printf %s {token} > {challenge}")
    try:
        for domain in domains:
            resp = http_get(address, domain, "/some/page.html?a=1&b=2")
            assert resp.status in (301, 308), (domain, resp.status)
            assert resp.headers["Location"] == f"https://{domain}/some/page.html?a=1&b=2"
            acme = http_get(address, domain, f"/.well-known/acme-challenge/{token}")
            assert (acme.status, acme.body) == (200, token.encode()), domain
    finally:
        lab.host_exec(host, ["rm", "-f", challenge])


# --------------------------------------------------------------------------- web3: a plain lab host


def test_check_and_plan_on_a_fresh_host_write_nothing(lab: Lab, module_hosts: tuple[str, ...]) -> None:
    assert WEB3 in module_hosts
    before = snapshot(lab, WEB3, CERTFAB_TREES + ("/var/www",))
    validations = pebble_validations(lab, WEB3_DOMAINS)
    for args in (("bootstrap", "--check"), ("plan",)):
        result = run_ok(lab, "-H", WEB3, *args)
        out = result.stdout
        # unified diffs of what would be written: new files and the edited site
        assert "--- /dev/null\n+++ /etc/nginx/certfab/acme-challenge.conf\n" in out, out
        assert "+++ /etc/nginx/certfab/site-web3.conf\n" in out
        assert "+++ /etc/cron.d/certfab\n" in out
        assert "--- /etc/nginx/sites-available/web3\n+++ /etc/nginx/sites-available/web3\n" in out
        assert re.search(r"(?m)^-\tlisten 80;$", out) and re.search(r"(?m)^\+\tlisten 443 ssl", out)
        assert "+# certfab redirect begin: web3" in out
        # the certificate it would request, with its names
        assert re.search(r"would request a certificate for web3 \(web3\.test, www\.web3\.test\)", out), out
        assert "would change" in out
        assert snapshot(lab, WEB3, CERTFAB_TREES + ("/var/www",)) == before, f"{args} wrote on the host"
    assert pebble_validations(lab, WEB3_DOMAINS) == validations, "a plan must not order certificates"


@dataclass(frozen=True)
class Bootstrapped:
    """web3 after its first bootstrap, and what its plain HTTP site served before."""

    pages_before: dict[tuple[str, str], tuple[int, bytes]]
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def web3_bootstrapped(lab: Lab, module_hosts: tuple[str, ...]) -> Bootstrapped:
    """web3 bootstrapped once from its pristine state; shared by the tests that look at the result."""
    assert WEB3 in module_hosts
    address = lab.info.host(WEB3).address
    pages = fetch_pages(address, WEB3_DOMAINS)
    assert all(status == 200 for status, _ in pages.values())
    assert b"Hello from web3" in pages[("web3.test", "/")][1]
    result = run_ok(lab, "-H", WEB3, "bootstrap")
    return Bootstrapped(pages, result)


def test_bootstrap_serves_every_domain_over_https_with_the_same_content(
    lab: Lab, web3_bootstrapped: Bootstrapped
) -> None:
    assert "changed" in web3_bootstrapped.result.stdout
    assert_served_over_https(lab, WEB3, "web3", WEB3_DOMAINS, web3_bootstrapped.pages_before)
    chain = x509.load_pem_x509_certificates(
        lab.host_path(WEB3, "/etc/letsencrypt/live/web3/fullchain.pem").read_bytes()
    )
    root = x509.load_pem_x509_certificate(lab.info.pebble_root.read_bytes())
    chain[-1].verify_directly_issued_by(root)


def test_openssl_verifies_the_served_chain(lab: Lab, web3_bootstrapped: Bootstrapped) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command on this machine")
    address = lab.info.host(WEB3).address
    for domain in WEB3_DOMAINS:
        result = subprocess.run(
            [openssl, "s_client", "-connect", f"{address}:443", "-servername", domain,
             "-verify_return_error", "-verify_hostname", domain, "-CAfile", str(lab.info.pebble_root)],
            input="", capture_output=True, text=True, timeout=30, check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Verify return code: 0 (ok)" in result.stdout


def test_http_redirects_to_https_except_the_acme_path(lab: Lab, web3_bootstrapped: Bootstrapped) -> None:
    assert_redirects_except_acme(lab, WEB3, WEB3_DOMAINS)


def test_nginx_config_has_no_warning(lab: Lab, web3_bootstrapped: Bootstrapped) -> None:
    assert_nginx_test_clean(lab, WEB3)
    assert lab.host_exec(WEB3, "find /etc/nginx -name '.certfab-*'").stdout == ""


def test_sslyze_finds_the_mozilla_intermediate_profile(lab: Lab, web3_bootstrapped: Bootstrapped) -> None:
    address = lab.info.host(WEB3).address
    sslyze = VENV_BIN / "sslyze"
    command = [str(sslyze)] if sslyze.exists() else [str(VENV_BIN / "python"), "-m", "sslyze"]
    targets = [f"{domain}:443{{{address}}}" for domain in WEB3_DOMAINS]
    result = subprocess.run(
        [*command, "--mozilla_config=intermediate", "--certinfo_ca_file", str(lab.info.pebble_root), *targets],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for domain in WEB3_DOMAINS:
        assert f"{domain}:443: OK - Compliant." in result.stdout, result.stdout


# What a run that changes nothing must leave alone, byte for byte (certfab's own state dir aside).
CONFIG_TREES = ("/etc/nginx", "/etc/certfab", "/usr/local/sbin/certfab-renew", "/etc/cron.d", "/etc/letsencrypt")


def test_second_run_changes_nothing_and_orders_nothing(lab: Lab, web3_bootstrapped: Bootstrapped) -> None:
    before = snapshot(lab, WEB3, CONFIG_TREES)
    validations = pebble_validations(lab, WEB3_DOMAINS)

    row = json_recap(run_ok(lab, "-H", WEB3, "bootstrap", "--json"))
    assert row["status"] == "ok"
    assert row["changes"] == []
    assert row["certificates"] == {"web3": "kept"}
    assert row["error"] is None
    assert row["remote_commands"] == 1

    text = run_ok(lab, "-H", WEB3, "bootstrap").stdout
    line = next(line for line in text.splitlines() if WEB3 in line)
    assert re.search(r"\bok\b", line) and "no change" in line, text

    assert tree_changes(before, snapshot(lab, WEB3, CONFIG_TREES)) == {}
    assert pebble_validations(lab, WEB3_DOMAINS) == validations, "a second run ordered a certificate"


def test_added_name_expands_the_same_lineage(lab: Lab, web3_bootstrapped: Bootstrapped, tmp_path: Path) -> None:
    domains = (*WEB3_DOMAINS, "www2.web3.test")
    address = lab.info.host(WEB3).address
    lab.set_dns("www2.web3.test", address)
    inventory = copy_inventory(lab, tmp_path, {WEB3: [{"name": "web3", "domains": list(domains)}]})
    # Like most Debian hosts, web3 now also has the stock catch-all default site, so a name reaches
    # the site's blocks only where a server_name lists it.
    lab.host_exec(WEB3, "ln -s /etc/nginx/sites-available/default /etc/nginx/sites-enabled/default")
    # What the operator does: serve the new name from the site's own server block too.
    site = lab.host_path(WEB3, "/etc/nginx/sites-available/web3")
    text = site.read_text()
    assert "\tserver_name web3.test www.web3.test;\n" in text
    site.write_text(text.replace("\tserver_name web3.test www.web3.test;", "\tserver_name web3.test www.web3.test "
                                 "www2.web3.test;", 1))
    lab.host_exec(WEB3, "nginx -t && nginx -s reload")
    old = x509.load_pem_x509_certificate(lab.host_path(WEB3, "/etc/letsencrypt/live/web3/cert.pem").read_bytes())

    row = json_recap(run_ok(lab, "-H", WEB3, "bootstrap", "--json", inventory=inventory))
    assert row["status"] == "changed"
    assert row["certificates"] == {"web3": "issued"}

    live = sorted(p.name for p in lab.host_path(WEB3, "/etc/letsencrypt/live").iterdir() if p.is_dir())
    assert live == ["web3"]
    renewal = sorted(p.name for p in lab.host_path(WEB3, "/etc/letsencrypt/renewal").iterdir())
    assert renewal == ["web3.conf"]
    new = x509.load_pem_x509_certificate(lab.host_path(WEB3, "/etc/letsencrypt/live/web3/cert.pem").read_bytes())
    assert new != old
    assert sorted(san_names(new)) == sorted(domains)
    pages = {(d, p): web3_bootstrapped.pages_before[("web3.test", p)] for d in domains for p in PAGES}
    assert_served_over_https(lab, WEB3, "web3", domains, pages)
    assert_redirects_except_acme(lab, WEB3, domains)
    assert_nginx_test_clean(lab, WEB3)

    again = json_recap(run_ok(lab, "-H", WEB3, "bootstrap", "--json", inventory=inventory))
    assert (again["status"], again["changes"], again["remote_commands"]) == ("ok", [], 1)


# --------------------------------------------------------------------------- web4: a hand-written tree

WEB4_SITE = """\
# web4.test -- the main site.
# Maintained by hand: keep these comments.
server {
    # both public names
    listen 80;
    server_name web4.test www.web4.test;   # apex and www

    root /var/www/web4;
    index index.html;

    location / {
        try_files $uri $uri/ =404;
    }

    # health checks from the load balancer
    location = /health { return 200 "web4 ok\\n"; }
}
"""

STATUS_BLOCK = """\
# Internal status page: not a public site, certfab must leave it alone.
server {
\tlisten 127.0.0.1:8080;
\tserver_name status.internal;

\tlocation /nginx_status {
\t\tstub_status;
\t\tallow 127.0.0.1;
\t\tdeny all;
\t}
}
"""

SHOP_SITE = """\
## Shop -- second site on this host.
server {
\tlisten 80;
\tlisten [::]:80;
\tserver_name shop.web4.test;
\troot /var/www/shop;

\tlocation / { try_files $uri $uri/ =404; }   # static only
}

""" + STATUS_BLOCK + """
# end of file
"""

SHOP_INDEX = "<html><body><h1>Shop on web4</h1></body></html>\n"


def web4_sites() -> dict[str, list[dict[str, Any]]]:
    """web4 with two sites: its own names and a shop."""
    return {WEB4: [{"name": "web4", "domains": list(WEB4_DOMAINS)},
                   {"name": "shop", "domains": list(SHOP_DOMAINS)}]}


def write_web4_tree(lab: Lab, extra: dict[str, str] | None = None) -> None:
    """Replace web4's site with a hand-written one, add the shop (with a status block) and `extra` files."""
    files = {"/etc/nginx/sites-available/web4": WEB4_SITE, "/etc/nginx/sites-available/shop": SHOP_SITE,
             "/var/www/shop/index.html": SHOP_INDEX, **(extra or {})}
    for path, text in files.items():
        target = lab.host_path(WEB4, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    # A restart, not a reload: after a reload the old workers still answer for a moment.
    lab.host_exec(WEB4, "ln -sfn /etc/nginx/sites-available/shop /etc/nginx/sites-enabled/shop && nginx -t && "
                        "pid=$(cat /run/nginx.pid) && nginx -s stop && "
                        "while kill -0 $pid 2>/dev/null; do sleep 0.05; done && nginx")
    for domain in SHOP_DOMAINS:
        lab.set_dns(domain, lab.info.host(WEB4).address)


def edits_outside_redirect(old: str, new: str) -> tuple[list[str], list[str]]:
    """Lines removed from `old` and added to `new`, leaving out certfab's marked redirect blocks."""
    removed: list[str] = []
    added: list[str] = []
    in_redirect = False
    for line in difflib.ndiff(old.splitlines(), new.splitlines()):
        tag, content = line[:2], line[2:]
        if tag == "? ":
            continue
        if tag == "+ " and content.startswith("# certfab redirect begin:"):
            in_redirect = True
        if tag == "+ " and in_redirect:
            if content.startswith("# certfab redirect end:"):
                in_redirect = False
            continue
        if tag == "- ":
            removed.append(content)
        elif tag == "+ ":
            added.append(content)
    assert not in_redirect, "unterminated redirect block"
    return removed, added


def redirect_blocks(text: str) -> list[str]:
    """certfab's marked redirect blocks in a file."""
    return re.findall(r"(?ms)^# certfab redirect begin: \S+$.*?^# certfab redirect end: \S+$", text)


@pytest.fixture
def web4_tree(lab: Lab, module_hosts: tuple[str, ...]) -> Iterator[None]:
    """web4 back to pristine, then given the hand-written two-site tree."""
    assert WEB4 in module_hosts
    lab.reset_host(WEB4)
    write_web4_tree(lab)
    yield


def test_two_sites_and_an_unrelated_block_get_minimal_edits(lab: Lab, web4_tree: None, tmp_path: Path) -> None:
    address = lab.info.host(WEB4).address
    inventory = copy_inventory(lab, tmp_path, web4_sites())
    pages = fetch_pages(address, WEB4_DOMAINS + SHOP_DOMAINS)
    assert pages[("shop.web4.test", "/")] == (200, SHOP_INDEX.encode())
    edited = ("/etc/nginx/sites-available/web4", "/etc/nginx/sites-available/shop")
    old = {path: host_text(lab, WEB4, path) for path in edited}
    untouched = snapshot(lab, WEB4, ("/etc/nginx",))

    row = json_recap(run_ok(lab, "-H", WEB4, "bootstrap", "--json", inventory=inventory))
    assert row["status"] == "changed"
    assert row["certificates"] == {"web4": "issued", "shop": "issued"}

    for path in edited:
        new = host_text(lab, WEB4, path)
        removed, added = edits_outside_redirect(old[path], new)
        assert removed and all(line.strip().startswith("listen ") for line in removed), removed
        assert len([a for a in added if a.strip().startswith("listen ")]) == len(removed), added
        assert all(re.fullmatch(r"\s*(listen 443 ssl( http2)?;|listen \[::\]:443 ssl( http2)?;|"
                                r"include /etc/nginx/certfab/\S+;\s+# managed by certfab)", a) for a in added), added
        [redirect] = redirect_blocks(new)
        assert "return 301 https://$host$request_uri;" in redirect
    shop = host_text(lab, WEB4, "/etc/nginx/sites-available/shop")
    assert STATUS_BLOCK in shop and shop.endswith(STATUS_BLOCK + "\n# end of file\n")
    assert "# Maintained by hand: keep these comments." in host_text(lab, WEB4, edited[0])
    # every other file of nginx's own tree is untouched
    after = snapshot(lab, WEB4, ("/etc/nginx",))
    changes = tree_changes(untouched, after)
    assert {p for p in changes if not p.startswith("/etc/nginx/certfab")} == set(edited), changes

    assert_served_over_https(lab, WEB4, "web4", WEB4_DOMAINS, pages)
    assert_served_over_https(lab, WEB4, "shop", SHOP_DOMAINS, pages)
    assert_redirects_except_acme(lab, WEB4, WEB4_DOMAINS + SHOP_DOMAINS)
    assert http_get(address, "web4.test", "/health").status == 301
    assert https_get(address, "web4.test", lab.info.pebble_root, "/health")[0].body == b"web4 ok\n"
    status = lab.host_exec(WEB4, "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/nginx_status")
    assert status.stdout == "200"
    assert_nginx_test_clean(lab, WEB4)

    before_again = snapshot(lab, WEB4, CONFIG_TREES)
    again = json_recap(run_ok(lab, "-H", WEB4, "bootstrap", "--json", inventory=inventory))
    assert (again["status"], again["changes"], again["remote_commands"]) == ("ok", [], 1)
    assert tree_changes(before_again, snapshot(lab, WEB4, CONFIG_TREES)) == {}


# A block someone keeps answering plain HTTP on port 443. It is valid as it is, but once another block
# listens on *:443 with ssl, nginx wants a certificate for it: `nginx -t` fails only after the switch.
LEGACY = """\
# Legacy intranet service: plain HTTP on port 443, for old clients behind the firewall.
server {
    listen 443;
    server_name legacy.internal;
    return 200 "legacy\\n";
}
"""


def test_config_that_breaks_after_the_switch_is_rolled_back(lab: Lab, web4_tree: None, tmp_path: Path) -> None:
    address = lab.info.host(WEB4).address
    legacy = "/etc/nginx/conf.d/legacy.conf"
    write_web4_tree(lab, {legacy: LEGACY})
    inventory = copy_inventory(lab, tmp_path, web4_sites())
    pages = fetch_pages(address, WEB4_DOMAINS + SHOP_DOMAINS)
    pristine = snapshot(lab, WEB4, ("/etc/nginx",))

    def fails_with_nginx_message() -> str:
        result = certfab_cli(lab, "fab", "-H", WEB4, "bootstrap", "--json", inventory=inventory)
        assert result.returncode == 1, result.stdout + result.stderr
        row = json_recap(result)
        assert row["status"] == "failed"
        error = row["error"]
        assert "nginx -t failed" in error, error
        assert '[emerg]' in error and 'no "ssl_certificate" is defined' in error, error
        assert f"{legacy}:2" in error, error
        assert "restored" in error, error
        return str(error)

    # First run: the certificates are issued, then the switch to HTTPS fails nginx -t. The ACME
    # plumbing waited in the same open journal, so every file is back as it was before the run.
    assert "the new certificates stay in place" in fails_with_nginx_message()
    first = snapshot(lab, WEB4, ("/etc/nginx",))
    assert tree_changes(pristine, first) == {}
    assert lab.host_exec(WEB4, "find /etc/nginx -name '.certfab-*'").stdout == ""
    assert lab.host_exec(WEB4, "ls -A /etc/certfab").stdout == ""
    leftovers = "ls -d /var/lib/certfab/journal /usr/local/sbin/certfab-renew /etc/cron.d/certfab 2>/dev/null"
    assert lab.host_exec(WEB4, leftovers, check=False).stdout == ""
    assert lab.host_path(WEB4, "/etc/letsencrypt/live/web4/cert.pem").is_file()

    # Second run: the certificates exist, so all changes are one transaction that fails and leaves
    # every byte of /etc/nginx as it was, without any hidden leftovers and without an ACME order.
    validations = pebble_validations(lab, WEB4_DOMAINS + SHOP_DOMAINS)
    assert "stay in place" not in fails_with_nginx_message()
    assert tree_changes(pristine, snapshot(lab, WEB4, ("/etc/nginx",))) == {}
    assert lab.host_exec(WEB4, "find /etc/nginx -name '.certfab-*'").stdout == ""
    assert pebble_validations(lab, WEB4_DOMAINS + SHOP_DOMAINS) == validations

    # The old sites still answer over plain HTTP, and nginx runs a valid configuration.
    assert fetch_pages(address, WEB4_DOMAINS + SHOP_DOMAINS) == pages
    assert http_get(address, "legacy.internal", "/", port=443).body == b"legacy\n"
    assert lab.host_exec(WEB4, "nginx -t", check=False).returncode == 0

