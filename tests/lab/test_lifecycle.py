"""A site's whole life on real hosts: HSTS where locations set their own headers, remove-site (with
revocation), uninstall, and lint (with --fix) on a hand-written HTTPS server."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import labhelpers
import pytest
from conftest import certfab_cli
from labhelpers import http_get, https_get

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


def http_pages(lab: Lab, host: str, domains: tuple[str, ...]) -> dict[tuple[str, str], tuple[int, bytes]]:
    address = lab.info.host(host).address
    out = {}
    for domain in domains:
        for path in OWN_HEADERS:
            resp = http_get(address, domain, path)
            out[(domain, path)] = (resp.status, resp.body)
    return out


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
    pages = http_pages(lab, WEB19, WEB19_DOMAINS)
    assert all(status == 200 for status, _ in pages.values()), pages
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
    # a second run changes nothing
    again = fab_ok(lab, "-H", WEB19, "bootstrap")
    assert "no change" in again.stdout, again.stdout
