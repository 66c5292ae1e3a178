"""TLS rendering: Mozilla profiles per host, site includes, managed sites, and a real `nginx -t` when possible."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from certfactory import write_self_signed
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dh

from certfab import tls
from certfab.errors import InventoryError, PreflightError
from certfab.templating import UnsafeValueError, render, trusted

DEBIAN12 = tls.HostTls(nginx_version=(1, 22, 1), openssl_version=(3, 0, 11))
NGINX_NEW_OPENSSL35 = tls.HostTls(nginx_version=(1, 27, 4), openssl_version=(3, 5, 1))
DHPARAM = "/etc/nginx/certfab/ffdhe2048.pem"
FORBIDDEN = re.compile(r"^\s*(ssl_stapling|ssl_stapling_verify|ssl_trusted_certificate|resolver|ssl\s+on)\b", re.MULTILINE)


def directives(text: str) -> dict[str, str]:
    """Map directive name -> arguments for the non-comment lines of a flat include."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert line.endswith(";"), line
        name, _, args = line[:-1].partition(" ")
        assert name not in out, f"duplicate directive {name}"
        out[name] = args
    return out


class TestVersions:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [("1.22.1", (1, 22, 1)), ("3.0.11", (3, 0, 11)), ("1.1.1w", (1, 1, 1)), ("3.5.0-beta1", (3, 5, 0)),
         ("1.25", (1, 25))],
    )
    def test_parse_version(self, text: str, expected: tuple[int, ...]) -> None:
        assert tls.parse_version(text) == expected

    def test_parse_version_refuses_garbage(self) -> None:
        with pytest.raises(ValueError):
            tls.parse_version("unknown")

    def test_parse_nginx_v_prefers_running_library(self) -> None:
        out = (
            "nginx version: nginx/1.22.1\n"
            "built by gcc 12.2.0 (Debian 12.2.0-14)\n"
            "built with OpenSSL 3.0.22 25 Aug 2026 (running with OpenSSL 3.0.19 27 Jan 2026)\n"
            "TLS SNI support enabled\n"
        )
        assert tls.parse_nginx_v(out) == tls.HostTls((1, 22, 1), (3, 0, 19))

    def test_parse_nginx_v_built_only(self) -> None:
        out = "nginx version: nginx/1.27.4 (Ubuntu)\nbuilt with OpenSSL 3.5.0 8 Apr 2025\n"
        assert tls.parse_nginx_v(out) == tls.HostTls((1, 27, 4), (3, 5, 0))

    def test_parse_nginx_v_other_library(self) -> None:
        host = tls.parse_nginx_v("nginx version: openresty/1.21.4.1\nbuilt with LibreSSL 3.8.2\n")
        assert host.tls_library == "LibreSSL"
        assert "X25519MLKEM768" not in tls.supported_curves(host)

    def test_parse_nginx_v_without_tls(self) -> None:
        with pytest.raises(PreflightError):
            tls.parse_nginx_v("nginx version: nginx/1.22.1\nbuilt by gcc 12\n")
        with pytest.raises(PreflightError):
            tls.parse_nginx_v("bash: nginx: command not found\n")


class TestProfiles:
    def test_intermediate_on_debian12(self) -> None:
        text = tls.render_tls_options("intermediate", DEBIAN12, None)
        d = directives(text)
        assert d["ssl_protocols"] == "TLSv1.2 TLSv1.3"
        assert d["ssl_ciphers"].split(":") == [
            "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
        ]
        assert "DHE-" not in d["ssl_ciphers"].replace("ECDHE-", "")
        assert d["ssl_ecdh_curve"] == "X25519:prime256v1:secp384r1"
        assert d["ssl_prefer_server_ciphers"] == "off"
        assert d["ssl_session_timeout"] == "1d"
        assert d["ssl_session_cache"] == "shared:MozSSL:10m"
        assert d["ssl_session_tickets"] == "off"
        assert "ssl_dhparam" not in d

    def test_header_comment(self) -> None:
        text = tls.render_tls_options("intermediate", DEBIAN12, None)
        header = text.splitlines()[:2]
        assert all(line.startswith("#") for line in header)
        assert "certfab" in header[0] and "intermediate" in header[0]
        assert "Do not edit" in header[1]

    def test_intermediate_with_openssl35_gets_hybrid_pq_curve(self) -> None:
        d = directives(tls.render_tls_options("intermediate", NGINX_NEW_OPENSSL35, None))
        assert d["ssl_ecdh_curve"] == "X25519MLKEM768:X25519:prime256v1:secp384r1"

    @pytest.mark.parametrize(
        ("openssl", "curves"),
        [((3, 0, 11), "X25519:prime256v1:secp384r1"), ((3, 4, 9), "X25519:prime256v1:secp384r1"),
         ((3, 5, 0), "X25519MLKEM768:X25519:prime256v1:secp384r1"), ((1, 0, 2), "prime256v1:secp384r1")],
    )
    def test_curves_follow_openssl(self, openssl: tuple[int, ...], curves: str) -> None:
        host = tls.HostTls((1, 22, 1), openssl)
        assert ":".join(tls.supported_curves(host)) == curves

    @pytest.mark.parametrize(
        ("nginx", "tickets_off"), [((1, 22, 1), True), ((1, 23, 1), True), ((1, 23, 2), False), ((1, 27, 0), False)]
    )
    def test_session_tickets_by_nginx_version(self, nginx: tuple[int, ...], tickets_off: bool) -> None:
        text = tls.render_tls_options("intermediate", tls.HostTls(nginx, (3, 0, 11)), None)
        assert ("ssl_session_tickets off;" in text) is tickets_off

    def test_modern_is_tls13_only(self) -> None:
        d = directives(tls.render_tls_options("modern", NGINX_NEW_OPENSSL35, None))
        assert d["ssl_protocols"] == "TLSv1.3"
        assert "ssl_ciphers" not in d
        assert d["ssl_prefer_server_ciphers"] == "off"
        assert "ssl_session_tickets" not in d

    def test_modern_refused_without_tls13(self) -> None:
        with pytest.raises(PreflightError):
            tls.render_tls_options("modern", tls.HostTls((1, 10, 3), (1, 1, 0)), None)

    def test_old_profile(self) -> None:
        d = directives(tls.render_tls_options("old", DEBIAN12, DHPARAM))
        assert d["ssl_protocols"] == "TLSv1 TLSv1.1 TLSv1.2 TLSv1.3"
        assert "DHE-RSA-AES128-GCM-SHA256" in d["ssl_ciphers"]
        assert d["ssl_ciphers"].endswith(":@SECLEVEL=0")  # OpenSSL 3 needs it for TLS 1.0/1.1
        assert d["ssl_prefer_server_ciphers"] == "on"
        assert d["ssl_dhparam"] == DHPARAM

    def test_old_profile_needs_dhparam(self) -> None:
        with pytest.raises(ValueError):
            tls.render_tls_options("old", DEBIAN12, None)

    def test_dhparam_ignored_without_dhe(self) -> None:
        assert "ssl_dhparam" not in tls.render_tls_options("intermediate", DEBIAN12, DHPARAM)

    def test_needs_dhparam(self) -> None:
        assert [tls.needs_dhparam(p) for p in tls.PROFILES] == [False, False, True]

    def test_unknown_profile(self) -> None:
        with pytest.raises(InventoryError):
            tls.render_tls_options("paranoid", DEBIAN12, None)

    @pytest.mark.parametrize("profile", tls.PROFILES)
    @pytest.mark.parametrize("host", [DEBIAN12, NGINX_NEW_OPENSSL35])
    def test_no_forbidden_directives(self, profile: str, host: tls.HostTls) -> None:
        text = tls.render_tls_options(profile, host, DHPARAM)
        assert FORBIDDEN.search(text) is None
        assert "stapling" not in text


class TestDhParams:
    def test_ffdhe2048_pem_loads(self) -> None:
        pem = tls.ffdhe2048_pem()
        assert pem.startswith("-----BEGIN DH PARAMETERS-----\n")
        params = serialization.load_pem_parameters(pem.encode())
        assert isinstance(params, dh.DHParameters)
        numbers = params.parameter_numbers()
        assert numbers.g == 2
        assert numbers.p.bit_length() == 2048
        assert numbers.p == tls.FFDHE2048_P

    def test_ffdhe2048_matches_openssl_builtin(self, tmp_path: Path) -> None:
        if shutil.which("openssl") is None:
            pytest.skip("openssl not installed")
        out = tmp_path / "ffdhe2048.pem"
        result = subprocess.run(
            ["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "group:ffdhe2048", "-out", str(out)],
            check=False,
            capture_output=True,
        )
        if result.returncode != 0:
            pytest.skip("this openssl has no named ffdhe groups")
        theirs = serialization.load_pem_parameters(out.read_bytes())
        assert isinstance(theirs, dh.DHParameters)
        assert theirs.parameter_numbers().p == tls.FFDHE2048_P

    @pytest.mark.parametrize("bits", tls.DHPARAM_BITS)
    def test_every_size_is_the_rfc_7919_group(self, bits: int, tmp_path: Path) -> None:
        params = serialization.load_pem_parameters(tls.ffdhe_pem(bits).encode())
        assert isinstance(params, dh.DHParameters)
        numbers = params.parameter_numbers()
        assert (numbers.g, numbers.p.bit_length(), numbers.p) == (2, bits, tls.FFDHE_PRIMES[bits])
        # RFC 7919 section 3: p = 2^b - 2^(b-64) + {[2^(b-130) e] + X} * 2^64 - 1
        x = {2048: 560316, 3072: 2625351, 4096: 5736041}[bits]
        assert numbers.p == 2**bits - 2 ** (bits - 64) + (_floor_2n_e(bits - 130) + x) * 2**64 - 1
        if shutil.which("openssl") is not None:
            out = tmp_path / "group.pem"
            made = subprocess.run(
                ["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", f"group:ffdhe{bits}",
                 "-out", str(out)], check=False, capture_output=True,
            )
            if made.returncode == 0:
                theirs = serialization.load_pem_parameters(out.read_bytes())
                assert isinstance(theirs, dh.DHParameters)
                assert theirs.parameter_numbers().p == numbers.p

    def test_default_size_and_paths(self) -> None:
        assert tls.ffdhe_pem(None) == tls.ffdhe2048_pem() == tls.ffdhe_pem(2048)
        assert tls.dhparam_path(None) == DHPARAM
        assert tls.dhparam_path(4096) == "/etc/nginx/certfab/ffdhe4096.pem"
        with pytest.raises(InventoryError, match="dhparam_bits must be one of 2048, 3072, 4096, not 1024"):
            tls.ffdhe_pem(1024)


def _floor_2n_e(n: int) -> int:
    """floor(2^n * e), from the series of e with 64 guard bits."""
    one = 1 << (n + 64)
    total, term, k = 0, one, 0
    while term:
        total += term
        k += 1
        term //= k
    return total >> 64

    def test_dhparam_command(self) -> None:
        cmd = tls.dhparam_command(3072, "/etc/nginx/certfab/dhparam.pem")
        assert cmd.startswith("openssl dhparam -out /etc/nginx/certfab/dhparam.pem.tmp 3072")
        assert cmd.endswith("mv -f /etc/nginx/certfab/dhparam.pem.tmp /etc/nginx/certfab/dhparam.pem")
        with pytest.raises(InventoryError):
            tls.dhparam_command(1024, "/x")


class TestHttp2:
    @pytest.mark.parametrize(
        ("version", "style"),
        [((1, 22, 1), "listen"), ((1, 25, 0), "listen"), ((1, 25, 1), "directive"), ((1, 27, 4), "directive")],
    )
    def test_style_by_version(self, version: tuple[int, ...], style: str) -> None:
        assert tls.http2_style(tls.HostTls(version, (3, 0, 11))) == style


class TestSiteInclude:
    def test_default(self) -> None:
        text = tls.render_site_include("shop", ["shop.example.com", "www.shop.example.com"])
        d = directives(text)
        assert d["ssl_certificate"] == "/etc/letsencrypt/live/shop/fullchain.pem"
        assert d["ssl_certificate_key"] == "/etc/letsencrypt/live/shop/privkey.pem"
        assert d["include"] == "/etc/nginx/certfab/tls-options.conf"
        assert d["add_header"] == 'Strict-Transport-Security "max-age=63072000; includeSubDomains" always'
        assert "http2" not in d
        assert "shop.example.com www.shop.example.com" in text.splitlines()[0]
        assert FORBIDDEN.search(text) is None

    @pytest.mark.parametrize(
        ("max_age", "sub", "preload", "header"),
        [
            (63072000, True, True, '"max-age=63072000; includeSubDomains; preload"'),
            (31536000, False, False, '"max-age=31536000"'),
            (15768000, True, False, '"max-age=15768000; includeSubDomains"'),
        ],
    )
    def test_hsts_variants(self, max_age: int, sub: bool, preload: bool, header: str) -> None:
        text = tls.render_site_include(
            "shop", ["a.example"], hsts_max_age=max_age, include_subdomains=sub, preload=preload
        )
        assert f"add_header Strict-Transport-Security {header} always;" in text

    def test_hsts_off(self) -> None:
        text = tls.render_site_include("shop", ["a.example"], hsts_max_age=0, preload=False)
        assert "Strict-Transport-Security" not in text

    def test_preload_requires_subdomains_and_a_year(self) -> None:
        with pytest.raises(InventoryError):
            tls.render_site_include("s", ["a.example"], include_subdomains=False, preload=True)
        with pytest.raises(InventoryError):
            tls.render_site_include("s", ["a.example"], hsts_max_age=86400, preload=True)

    def test_http2_directive(self) -> None:
        text = tls.render_site_include("shop", ["a.example"], http2_style="directive")
        assert directives(text)["http2"] == "on"

    def test_custom_paths(self) -> None:
        text = tls.render_site_include(
            "shop", ["a.example"], lineage_dir="/srv/le/live/shop/", tls_options_path="/x/tls.conf"
        )
        d = directives(text)
        assert d["ssl_certificate"] == "/srv/le/live/shop/fullchain.pem"
        assert d["include"] == "/x/tls.conf"

    def test_unsafe_domain_refused(self) -> None:
        with pytest.raises(UnsafeValueError):
            tls.render_site_include("shop", ["a.example;", "b"])
        with pytest.raises(UnsafeValueError):
            tls.render_site_include("sh op", ["a.example"])


class TestAcmeInclude:
    def test_location(self) -> None:
        text = tls.render_acme_include("/var/www/letsencrypt")
        body = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        assert body == [
            "location ^~ /.well-known/acme-challenge/ {",
            "root /var/www/letsencrypt;",
            'default_type "text/plain";',
            "try_files $uri =404;",
            "}",
        ]

    @pytest.mark.parametrize("webroot", ["/var/www/le; }", "/var/www/$x", "/var/www/le\nroot /"])
    def test_unsafe_webroot_refused(self, webroot: str) -> None:
        with pytest.raises(UnsafeValueError):
            tls.render_acme_include(webroot)


class TestManagedSite:
    def test_http_phase_static(self) -> None:
        text = tls.render_managed_site("shop", ["a.example", "b.example"], "/var/www/shop", None, "http")
        assert text.count("server {") == 1
        assert "listen 80;" in text and "listen [::]:80;" in text
        assert "server_name a.example b.example;" in text
        assert "include /etc/nginx/certfab/acme-challenge.conf;" in text
        assert "root /var/www/shop;" in text
        assert "443" not in text and "return 301" not in text

    def test_https_phase_proxy(self) -> None:
        text = tls.render_managed_site(
            "api", ["api.example"], None, "http://127.0.0.1:8080", "https", http2_in_listen=True
        )
        https, http = text.split("server {")[1:]
        assert "listen 443 ssl http2;" in https and "listen [::]:443 ssl http2;" in https
        assert "include /etc/nginx/certfab/site-api.conf;" in https
        assert "proxy_pass http://127.0.0.1:8080;" in https
        assert "proxy_set_header Host $host;" in https
        assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in https
        assert "proxy_set_header X-Forwarded-Proto $scheme;" in https
        assert "listen 80;" in http
        assert "include /etc/nginx/certfab/acme-challenge.conf;" in http
        assert "return 301 https://$host$request_uri;" in http
        assert "proxy_pass" not in http

    def test_https_phase_directive_style_and_no_ipv6(self) -> None:
        text = tls.render_managed_site("shop", ["a.example"], "/srv/shop", None, "https", ipv6=False)
        assert "listen 443 ssl;" in text
        assert "[::]" not in text
        assert FORBIDDEN.search(text) is None

    def test_needs_exactly_one_content(self) -> None:
        with pytest.raises(ValueError):
            tls.render_managed_site("s", ["a.example"], None, None, "http")
        with pytest.raises(ValueError):
            tls.render_managed_site("s", ["a.example"], "/srv", "http://x", "http")

    def test_unsafe_upstream_refused(self) -> None:
        with pytest.raises(UnsafeValueError):
            tls.render_managed_site("s", ["a.example"], None, "http://x;}", "http")


class TestGuard:
    def test_trusted_passes(self) -> None:
        assert render("acme-challenge.conf.j2", webroot=trusted("/a b")).count("root /a b;") == 1

    @pytest.mark.parametrize("bad", [None, True, ["x"]])
    def test_non_text_refused(self, bad: object) -> None:
        with pytest.raises(UnsafeValueError):
            render("acme-challenge.conf.j2", webroot=bad)


# --- a real nginx -t on every profile ---------------------------------------------------------------

NGINX = "/usr/sbin/nginx"


def _self_signed(directory: Path, names: list[str]) -> None:
    write_self_signed(directory, names)


def _host_tls() -> tls.HostTls:
    result = subprocess.run([NGINX, "-V"], capture_output=True, text=True, check=True)
    return tls.parse_nginx_v(result.stderr + result.stdout)


@pytest.mark.skipif(not (os.path.exists(NGINX) and os.geteuid() == 0), reason="needs /usr/sbin/nginx and root")
@pytest.mark.parametrize(
    ("profile", "bits"), [*((p, 2048) for p in tls.PROFILES), ("old", 3072), ("old", 4096)]
)
def test_nginx_accepts_rendered_config_without_warnings(tmp_path: Path, profile: str, bits: int) -> None:
    host = _host_tls()
    if profile == "modern" and not tls.supports_tls13(host):
        pytest.skip("this nginx cannot do TLS 1.3")
    style = tls.http2_style(host)
    inc = tmp_path / "certfab"
    inc.mkdir()
    dhparam = inc / f"ffdhe{bits}.pem"
    dhparam.write_text(tls.ffdhe_pem(bits))
    (inc / "tls-options.conf").write_text(tls.render_tls_options(profile, host, str(dhparam)))
    webroot = tmp_path / "webroot"
    (webroot / ".well-known" / "acme-challenge").mkdir(parents=True)
    (inc / "acme-challenge.conf").write_text(tls.render_acme_include(str(webroot)))
    confd = tmp_path / "conf.d"
    confd.mkdir()
    sites = {
        "shop": (["shop.example.test", "www.shop.example.test"], str(tmp_path / "shop"), None, "https"),
        "api": (["api.example.test"], None, "http://127.0.0.1:8080", "https"),
        "new": (["new.example.test"], str(tmp_path / "new"), None, "http"),
    }
    for name, (domains, root, upstream, phase) in sites.items():
        live = tmp_path / "live" / name
        _self_signed(live, domains)
        (inc / f"site-{name}.conf").write_text(
            tls.render_site_include(
                name, domains, lineage_dir=str(live), tls_options_path=str(inc / "tls-options.conf"),
                hsts_max_age=63072000, include_subdomains=True, preload=name == "shop", http2_style=style,
            )
        )
        (confd / f"certfab-{name}.conf").write_text(
            tls.render_managed_site(
                name, domains, root, upstream, phase,  # type: ignore[arg-type]
                acme_include=str(inc / "acme-challenge.conf"), site_include=str(inc / f"site-{name}.conf"),
                http2_in_listen=style == "listen",
            )
        )
    temp = tmp_path / "temp"
    temp.mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"""worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log stderr;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {confd}/*.conf;
}}
"""
    )
    cmd = [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)]
    if host.nginx_version >= (1, 19, 5):
        cmd[2:2] = ["-e", "stderr"]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr and "[emerg]" not in result.stderr, result.stderr
    assert "test is successful" in result.stderr
