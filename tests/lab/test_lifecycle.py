"""A site's whole life on real hosts: HSTS where locations set their own headers, remove-site (with
revocation), uninstall, and lint (with --fix) on a hand-written HTTPS server."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

import labhelpers
import pytest
from conftest import certfab_cli
from labhelpers import http_get, http_pages, https_get

from certfab.lab import Lab

WEB19, WEB20 = "web19", "web20"
WEB19_DOMAINS = ("web19.test", "www.web19.test")
HSTS = "max-age=63072000; includeSubDomains"
SITE_FILE = "/etc/nginx/sites-available/{host}"
# Every place certfab writes to on a host (certbot's own tree aside).
CERTFAB_PATHS = ("/etc/nginx/certfab", "/etc/certfab", "/var/lib/certfab", "/usr/local/sbin/certfab-renew",
                 "/etc/cron.d/certfab")

# A site whose locations set headers of their own: nginx sends none of the server's add_header there.
HEADERS_SITE = """\
# web19.test -- static pages with per-location headers (cache, CORS, CSP).
server {
	listen 80;
	server_name web19.test www.web19.test;

	root /var/www/web19;
	index index.html;
	add_header X-Site web19;

	location / {
		try_files $uri $uri/ =404;
	}

	location /static/ {
		add_header Cache-Control "public, max-age=3600";
		try_files $uri =404;
	}

	location = /api {
		add_header Access-Control-Allow-Origin "*";
		default_type text/plain;
		return 200 "api\\n";
	}

	location /docs/ {
		add_header Content-Security-Policy "default-src 'self'";
		location /docs/old/ {
			add_header X-Old yes;
			try_files $uri =404;
		}
		try_files $uri =404;
	}
}
"""
# path -> the header that location sets itself (name, value)
OWN_HEADERS = {
    "/": ("X-Site", "web19"),
    "/index.html": ("X-Site", "web19"),
    "/static/a.css": ("Cache-Control", "public, max-age=3600"),
    "/api": ("Access-Control-Allow-Origin", "*"),
    "/docs/page.html": ("Content-Security-Policy", "default-src 'self'"),
    "/docs/old/page.html": ("X-Old", "yes"),
}
PAGES = {
    "static/a.css": "body { color: black; }\n",
    "docs/page.html": "<p>docs</p>\n",
    "docs/old/page.html": "<p>old docs</p>\n",
}


def fab(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return certfab_cli(lab, "fab", *args)


def fab_ok(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    result = fab(lab, *args)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def reload_nginx(lab: Lab, host: str) -> None:
    lab.host_exec(host, "nginx -t 2>&1 && nginx -s reload")


def own_header_pages(lab: Lab, host: str, domains: tuple[str, ...]) -> dict[tuple[str, str], tuple[int, bytes]]:
    """Every page of the headers site, over plain HTTP."""
    return http_pages(lab.info.host(host).address, domains, OWN_HEADERS)


@dataclass(frozen=True)
class HeadersSite:
    """web19 with the headers site, before and after its bootstrap."""

    site_text: str
    pages_before: dict[tuple[str, str], tuple[int, bytes]]


@pytest.fixture(scope="module")
def web19_headers_site(lab: Lab, module_hosts: tuple[str, ...]) -> HeadersSite:
    assert WEB19 in module_hosts
    lab.host_path(WEB19, SITE_FILE.format(host=WEB19)).write_text(HEADERS_SITE)
    for rel, body in PAGES.items():
        page = lab.host_path(WEB19, f"/var/www/web19/{rel}")
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(body)
    reload_nginx(lab, WEB19)
    deadline = time.monotonic() + 20
    pages = own_header_pages(lab, WEB19, WEB19_DOMAINS)
    while any(status != 200 for status, _ in pages.values()) and time.monotonic() < deadline:
        time.sleep(0.3)  # nginx reloads asynchronously: old workers may still answer for a moment
        pages = own_header_pages(lab, WEB19, WEB19_DOMAINS)
    assert all(status == 200 for status, _ in pages.values()), [k for k, (s, _) in pages.items() if s != 200]
    fab_ok(lab, "-H", WEB19, "bootstrap")
    return HeadersSite(HEADERS_SITE, pages)


def test_locations_with_their_own_headers_get_hsts_and_keep_their_headers(
    lab: Lab, web19_headers_site: HeadersSite
) -> None:
    address = lab.info.host(WEB19).address
    for domain in WEB19_DOMAINS:
        for path, (name, value) in OWN_HEADERS.items():
            resp, _ = https_get(address, domain, lab.info.pebble_root, path)
            assert resp.headers.get("Strict-Transport-Security") == HSTS, f"https://{domain}{path}"
            assert resp.headers.get(name) == value, f"https://{domain}{path}: {name}"
            assert (resp.status, resp.body) == web19_headers_site.pages_before[(domain, path)], path
    text = lab.host_path(WEB19, SITE_FILE.format(host=WEB19)).read_text()
    # one include per location that sets headers, none in `location /`
    assert text.count("include /etc/nginx/certfab/hsts.conf;") == 4, text
    # a second run changes nothing, and lint finds nothing to say about what certfab wrote
    again = fab_ok(lab, "-H", WEB19, "bootstrap")
    assert "no change" in again.stdout, again.stdout
    linted = fab_ok(lab, "-H", WEB19, "lint")
    assert f"{WEB19}: clean" in linted.stdout, linted.stdout


def pebble_cert_status(lab: Lab, serial: int) -> dict[str, object]:
    """What Pebble's management interface says about a certificate it issued."""
    import json
    import ssl
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(lab.info.pebble_ca))
    url = f"https://{lab.info.bridge_address}:15000/cert-status-by-serial/{serial:x}"
    with urllib.request.urlopen(url, context=ctx, timeout=10) as response:
        data: dict[str, object] = json.loads(response.read())
    return data


def nginx_files_mentioning(lab: Lab, host: str, needle: str) -> str:
    return lab.host_exec(host, ["sh", "-c", 'grep -rlF -- "$1" /etc/nginx || true', "sh", needle]).stdout.strip()


def test_remove_site_is_refused_while_the_inventory_lists_it(lab: Lab, web19_headers_site: HeadersSite) -> None:
    before = labhelpers.snapshot(lab, WEB19, ("/etc/nginx", "/etc/letsencrypt") + CERTFAB_PATHS)
    result = fab(lab, "-H", WEB19, "remove-site", "web19")
    assert result.returncode == 2, result.stderr
    assert "still lists web19" in labhelpers.one_error_line(result.stderr)
    assert labhelpers.snapshot(lab, WEB19, ("/etc/nginx", "/etc/letsencrypt") + CERTFAB_PATHS) == before
    # --check shows what it would do and does nothing
    planned = fab_ok(lab, "-H", WEB19, "remove-site", "web19", "--force", "--check")
    assert f"--- {SITE_FILE.format(host=WEB19)}" in planned.stdout, planned.stdout
    assert "would delete certificate web19" in planned.stdout
    assert labhelpers.snapshot(lab, WEB19, ("/etc/nginx", "/etc/letsencrypt") + CERTFAB_PATHS) == before


def test_remove_site_gives_back_the_plain_site_and_revokes(lab: Lab, web19_headers_site: HeadersSite) -> None:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(lab.host_path(WEB19, "/etc/letsencrypt/live/web19/cert.pem").read_bytes())
    assert pebble_cert_status(lab, cert.serial_number).get("Status") == "Valid", pebble_cert_status(lab, cert.serial_number)
    result = fab_ok(lab, "-H", WEB19, "remove-site", "web19", "--revoke", "--force")
    assert "revoked certificate web19" in result.stdout and "deleted certificate web19" in result.stdout
    assert "HSTS" in result.stderr, result.stderr
    # the site file is byte for byte what it was before certfab, and serves the same bytes over HTTP
    site_file = lab.host_path(WEB19, SITE_FILE.format(host=WEB19))
    assert site_file.read_bytes() == web19_headers_site.site_text.encode()
    assert own_header_pages(lab, WEB19, WEB19_DOMAINS) == web19_headers_site.pages_before
    assert nginx_files_mentioning(lab, WEB19, "site-web19.conf") == ""
    assert not lab.host_path(WEB19, "/etc/nginx/certfab/site-web19.conf").exists()
    assert not lab.host_path(WEB19, "/var/lib/certfab/origin/web19.json").exists()
    # the lineage is gone, and the CA says the certificate is revoked
    assert not lab.host_path(WEB19, "/etc/letsencrypt/live/web19").exists()
    assert not lab.host_path(WEB19, "/etc/letsencrypt/renewal/web19.conf").exists()
    assert pebble_cert_status(lab, cert.serial_number).get("Status") == "Revoked", pebble_cert_status(lab, cert.serial_number)
    # a second run finds nothing to do and changes nothing
    before = labhelpers.snapshot(lab, WEB19, ("/etc/nginx", "/etc/letsencrypt") + CERTFAB_PATHS)
    again = fab_ok(lab, "-H", WEB19, "remove-site", "web19", "--revoke", "--force")
    assert "no change" in again.stdout, again.stdout
    assert labhelpers.snapshot(lab, WEB19, ("/etc/nginx", "/etc/letsencrypt") + CERTFAB_PATHS) == before


def test_a_kept_certificate_stays_and_is_no_longer_renewed(lab: Lab, web19_headers_site: HeadersSite) -> None:
    fab_ok(lab, "-H", WEB19, "bootstrap")
    cert_path = lab.host_path(WEB19, "/etc/letsencrypt/live/web19/cert.pem")
    conf_path = lab.host_path(WEB19, "/etc/letsencrypt/renewal/web19.conf")
    cert = cert_path.read_bytes()
    result = fab_ok(lab, "-H", WEB19, "remove-site", "web19", "--keep-certificate", "--force")
    assert "no longer renewed" in result.stderr, result.stderr
    assert cert_path.read_bytes() == cert
    assert "\nautorenew = False\n" in conf_path.read_text()
    assert lab.host_path(WEB19, SITE_FILE.format(host=WEB19)).read_bytes() == web19_headers_site.site_text.encode()
    # Due by its own settings, and still not renewed: certbot honours autorenew = False.
    conf_path.write_text(conf_path.read_text().replace("\nrenew_before_expiry = 30 days\n",
                                                       "\nrenew_before_expiry = 100 days\n"))
    issued = lab.pebble_issued_count()
    renewed = fab(lab, "-H", WEB19, "renew-now")
    assert renewed.returncode in (0, 1), renewed.stderr
    assert lab.pebble_issued_count() == issued and cert_path.read_bytes() == cert
    # A second removal changes nothing.
    before = labhelpers.snapshot(lab, WEB19, ("/etc/nginx", "/etc/letsencrypt") + CERTFAB_PATHS)
    again = fab_ok(lab, "-H", WEB19, "remove-site", "web19", "--keep-certificate", "--force")
    assert "no change" in again.stdout, again.stdout
    assert labhelpers.snapshot(lab, WEB19, ("/etc/nginx", "/etc/letsencrypt") + CERTFAB_PATHS) == before
    # Managed again, the kept lineage is renewed again.
    fab_ok(lab, "-H", WEB19, "bootstrap")
    managed_again = conf_path.read_text()
    assert "autorenew" not in managed_again, managed_again
    assert "renew_before_expiry = 100 days" not in managed_again  # its margin is certfab's again


def test_uninstall_restore_http_gives_back_every_site_and_leaves_nothing(
    lab: Lab, web19_headers_site: HeadersSite
) -> None:
    fab_ok(lab, "-H", WEB19, "bootstrap")
    assert lab.host_path(WEB19, "/etc/letsencrypt/live/web19/cert.pem").is_file()
    result = fab_ok(lab, "-H", WEB19, "uninstall", "--restore-http")
    assert "deleted certificate web19" in result.stdout, result.stdout
    site_file = lab.host_path(WEB19, SITE_FILE.format(host=WEB19))
    assert site_file.read_bytes() == web19_headers_site.site_text.encode()
    assert own_header_pages(lab, WEB19, WEB19_DOMAINS) == web19_headers_site.pages_before
    assert not lab.host_path(WEB19, "/etc/letsencrypt/live/web19").exists()
    left = {p: v for p, v in labhelpers.snapshot(lab, WEB19, CERTFAB_PATHS).items() if v != "absent"}
    assert left == {"/etc/certfab": "dir 755 0:0", "/var/lib/certfab": "dir 700 0:0"}, left
    assert nginx_files_mentioning(lab, WEB19, "certfab/") == ""
    assert_nginx_test_clean(lab, WEB19)
    again = fab_ok(lab, "-H", WEB19, "uninstall", "--restore-http")
    assert "no change" in again.stdout, again.stdout


def assert_nginx_test_clean(lab: Lab, host: str) -> None:
    """`nginx -t` passes and prints only its two usual lines: no warning of any kind."""
    lines = lab.host_exec(host, "nginx -t 2>&1").stdout.strip().splitlines()
    assert lines == [
        "nginx: the configuration file /etc/nginx/nginx.conf syntax is ok",
        "nginx: configuration file /etc/nginx/nginx.conf test is successful",
    ], lines


@pytest.fixture(scope="module")
def web20_uninstalled(lab: Lab, module_hosts: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    assert WEB20 in module_hosts
    fab_ok(lab, "-H", WEB20, "bootstrap")
    return fab_ok(lab, "-H", WEB20, "uninstall")


def test_uninstall_leaves_no_certfab_file_and_the_site_on_https(
    lab: Lab, web20_uninstalled: subprocess.CompletedProcess[str]
) -> None:
    assert "nothing renews" in web20_uninstalled.stderr, web20_uninstalled.stderr
    left = labhelpers.snapshot(lab, WEB20, CERTFAB_PATHS)
    listing = lab.host_exec(WEB20, "ls -laR /etc/certfab /var/lib/certfab 2>&1", check=False).stdout
    # /etc/certfab and /var/lib/certfab are mount points in a lab host: they stay, empty
    assert {p: v for p, v in left.items() if v != "absent"} == {
        "/etc/certfab": "dir 755 0:0", "/var/lib/certfab": "dir 700 0:0"}, f"{left}\n{listing}"
    assert lab.host_exec(WEB20, "ls /etc/nginx/conf.d").stdout.count("certfab") == 0
    assert nginx_files_mentioning(lab, WEB20, "certfab/") == ""
    assert_nginx_test_clean(lab, WEB20)
    address = lab.info.host(WEB20).address
    for domain in ("web20.test", "www.web20.test"):
        resp, _ = https_get(address, domain, lab.info.pebble_root, "/")
        assert resp.status == 200 and b"Hello from web20" in resp.body
        assert resp.headers.get("Strict-Transport-Security") == HSTS
        assert http_get(address, domain, "/").status == 301
    # a second run is a no-op
    before = labhelpers.snapshot(lab, WEB20, ("/etc/nginx", "/etc/letsencrypt") + CERTFAB_PATHS)
    again = fab_ok(lab, "-H", WEB20, "uninstall")
    assert "no change" in again.stdout, again.stdout
    assert labhelpers.snapshot(lab, WEB20, ("/etc/nginx", "/etc/letsencrypt") + CERTFAB_PATHS) == before


LEGACY_SITE = """\
# web20.test -- HTTPS set up by hand, years ago.
server {
	listen 80;
	server_name web20.test www.web20.test;
	location / {
		return 301 https://$host$request_uri;
	}
}
server {
	listen 443;
	server_name web20.test www.web20.test;
	ssl on;
	ssl_certificate /etc/letsencrypt/live/web20/fullchain.pem;
	ssl_certificate_key /etc/letsencrypt/live/web20/privkey.pem;
	ssl_protocols TLSv1 TLSv1.1 TLSv1.2;
	ssl_ciphers HIGH:!aNULL:!MD5;
	{curves}
	ssl_prefer_server_ciphers off;
	ssl_stapling on;
	ssl_stapling_verify on;
	root /var/www/web20;
	index index.html;
	location / {
		try_files $uri $uri/ =404;
	}
	location /static/ {
		add_header Cache-Control "public, max-age=3600";
		try_files $uri =404;
	}
}
"""


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def sslyze_intermediate(lab: Lab, host: str, domains: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    from conftest import VENV_BIN

    address = lab.info.host(host).address
    sslyze = VENV_BIN / "sslyze"
    command = [str(sslyze)] if sslyze.exists() else [str(VENV_BIN / "python"), "-m", "sslyze"]
    return subprocess.run(
        [*command, "--mozilla_config=intermediate", "--certinfo_ca_file", str(lab.info.pebble_root),
         *[f"{domain}:443{{{address}}}" for domain in domains]],
        capture_output=True, text=True, timeout=300, check=False,
    )


def test_lint_reports_a_hand_written_server_and_fixes_it(
    lab: Lab, web20_uninstalled: subprocess.CompletedProcess[str]
) -> None:
    import json
    import re

    real = lab.host_path(WEB20, SITE_FILE.format(host=WEB20))
    curves = re.search(r"ssl_ecdh_curve [^;]+;", real.read_text())
    assert curves is not None
    legacy = LEGACY_SITE.replace("{curves}", curves.group(0))
    real.write_text(legacy)
    (lab.host_path(WEB20, "/var/www/web20/static")).mkdir(exist_ok=True)
    lab.host_path(WEB20, "/var/www/web20/static/a.css").write_text("body {}\n")
    reload_nginx(lab, WEB20)
    assert "warn" in lab.host_exec(WEB20, "nginx -t 2>&1").stdout  # nginx itself warns about ssl on and stapling

    nginx_path = "/etc/nginx/sites-enabled/web20"
    found = fab(lab, "-H", WEB20, "lint", "--json")
    assert found.returncode == 2, found.stdout + found.stderr
    rows = json.loads(found.stdout)
    got = {(f["rule"], f["file"], f["line"]) for f in rows[0]["findings"]}
    assert got == {
        ("ssl-on", nginx_path, line_of(legacy, "ssl on;")),
        ("old-protocols", nginx_path, line_of(legacy, "ssl_protocols")),
        ("weak-ciphers", nginx_path, line_of(legacy, "ssl_ciphers")),
        ("ocsp-stapling", nginx_path, line_of(legacy, "ssl_stapling on;")),
        ("ocsp-stapling", nginx_path, line_of(legacy, "ssl_stapling_verify")),
        ("no-hsts", nginx_path, line_of(legacy, "listen 443;") - 1),
        ("hsts-dropped", nginx_path, line_of(legacy, "location /static/")),
    }, got
    text = fab(lab, "-H", WEB20, "lint")
    assert text.returncode == 2
    assert f"{WEB20}: {nginx_path}:{line_of(legacy, 'ssl on;')}: error:" in text.stdout, text.stdout

    before = labhelpers.snapshot(lab, WEB20, ("/etc/nginx",))
    shown = fab(lab, "-H", WEB20, "lint", "--fix", "--check")
    assert shown.returncode == 2 and f"+++ {SITE_FILE.format(host=WEB20)}" in shown.stdout, shown.stdout
    assert labhelpers.snapshot(lab, WEB20, ("/etc/nginx",)) == before
    fixed = fab(lab, "-H", WEB20, "lint", "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert f"--- {SITE_FILE.format(host=WEB20)}" in fixed.stdout  # the diff of the fix is shown
    assert_nginx_test_clean(lab, WEB20)
    address = lab.info.host(WEB20).address
    for domain in ("web20.test", "www.web20.test"):
        for path in ("/", "/static/a.css"):
            resp, _ = https_get(address, domain, lab.info.pebble_root, path)
            assert resp.status == 200 and resp.headers.get("Strict-Transport-Security") == HSTS, (domain, path)
    graded = sslyze_intermediate(lab, WEB20, ("web20.test", "www.web20.test"))
    assert graded.returncode == 0, graded.stdout + graded.stderr
    assert "web20.test:443: OK - Compliant." in graded.stdout, graded.stdout
    again = fab(lab, "-H", WEB20, "lint")
    assert again.returncode == 0 and f"{WEB20}: clean" in again.stdout, again.stdout + again.stderr
