"""lint's rules and safe fixes on configuration text (pure): each finding with file:line, fixes that
leave nothing fixable behind."""

from __future__ import annotations

from dataclasses import replace

from test_desired import facts_with

from certfab.lint import dhparam_bits, dhparam_paths, exit_code, fixes, lint_facts
from certfab.tls import ffdhe_pem

FFDHE2048 = ffdhe_pem(2048)
WEAK_DH = {"/etc/ssl/dhparam-1024.pem": 1024}

MAIN = "/etc/nginx/nginx.conf"
SITE = "/etc/nginx/sites-enabled/legacy"
NGINX_CONF = "events {}\nhttp {\n\tssl_protocols TLSv1 TLSv1.1 TLSv1.2;\n\tinclude /etc/nginx/sites-enabled/*;\n}\n"
LEGACY = """\
server {
	listen 443 http2;
	server_name legacy.test;
	ssl on;
	ssl_certificate /etc/ssl/legacy/fullchain.pem;
	ssl_certificate_key /etc/ssl/legacy/privkey.pem;
	ssl_stapling on;
	ssl_stapling_verify on;
	ssl_ciphers HIGH:!aNULL:!MD5;
	ssl_dhparam /etc/ssl/dhparam-1024.pem;
	location /static/ {
		add_header Cache-Control "max-age=60";
	}
	if ($scheme = http) {
		return 301 https://$host$request_uri;
	}
}
server {
	listen 80 default_server;
	server_name a.test;
}
server {
	listen 80 default_server;
	server_name b.test;
}
"""


def legacy_facts(version: tuple[int, ...] = (1, 22, 1)):  # type: ignore[no-untyped-def]
    base = facts_with({MAIN: NGINX_CONF, SITE: LEGACY})
    assert base.nginx is not None
    return replace(base, nginx=replace(base.nginx, version=version))


def test_every_rule_reports_its_file_and_line() -> None:
    found = {(f.rule, f.file, f.line) for f in lint_facts(legacy_facts((1, 25, 3)), dhparams=WEAK_DH)}
    assert found == {
        ("listen-http2", SITE, 2),
        ("ssl-on", SITE, 4),
        ("ocsp-stapling", SITE, 7),
        ("ocsp-stapling", SITE, 8),
        ("old-protocols", MAIN, 3),
        ("weak-ciphers", SITE, 9),
        ("weak-dhparam", SITE, 10),
        ("no-hsts", SITE, 1),
        ("hsts-dropped", SITE, 11),
        ("scheme-if", SITE, 14),
        ("duplicate-default", SITE, 23),
    }
    assert exit_code(lint_facts(legacy_facts())) == 2
    assert dhparam_paths(legacy_facts()) == ["/etc/ssl/dhparam-1024.pem"]


def test_dh_parameters_are_judged_by_their_size() -> None:
    assert dhparam_bits(FFDHE2048) == 2048
    assert dhparam_bits("not a pem") is None
    strong = {"/etc/ssl/dhparam-1024.pem": 2048}
    assert "weak-dhparam" not in {f.rule for f in lint_facts(legacy_facts(), dhparams=strong)}
    unread = {f.problem for f in lint_facts(legacy_facts(), dhparams={}) if f.rule == "weak-dhparam"}
    assert unread == {"ssl_dhparam names a file certfab could not read as DH parameters"}


def test_listen_http2_is_fine_before_1_25_1() -> None:
    assert "listen-http2" not in {f.rule for f in lint_facts(legacy_facts((1, 22, 1)))}


def test_fixes_leave_only_what_needs_a_person() -> None:
    before = legacy_facts((1, 25, 3))
    changed = fixes(before, dhparams=WEAK_DH)
    assert set(changed) == {MAIN, SITE}
    assert "ssl on" not in changed[SITE] and "ssl_stapling" not in changed[SITE]
    assert "listen 443 ssl;" in changed[SITE] and "\thttp2 on;\n" in changed[SITE]
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in changed[MAIN]
    after = facts_with(changed | {p: t for p, t in {MAIN: NGINX_CONF, SITE: LEGACY}.items() if p not in changed})
    assert after.nginx is not None
    after = replace(after, nginx=replace(after.nginx, version=(1, 25, 3)))
    left = {f.rule for f in lint_facts(after)}
    assert left == {"scheme-if", "duplicate-default"}
    assert fixes(after) == {}


def test_a_clean_https_server_is_clean() -> None:
    clean = ("server {\n\tlisten 443 ssl;\n\tssl_protocols TLSv1.2 TLSv1.3;\n"
             '\tadd_header Strict-Transport-Security "max-age=63072000" always;\n}\n')
    found = lint_facts(facts_with({MAIN: "events {}\nhttp {\n\tinclude /etc/nginx/sites-enabled/*;\n}\n",
                                   SITE: clean}))
    assert found == [] and exit_code(found) == 0
