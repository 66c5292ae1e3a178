"""Pure rendering of the TLS side of nginx: Mozilla profiles, per-site includes, managed server blocks."""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from cryptography.hazmat.primitives.asymmetric import dh

from certfab import paths
from certfab.errors import InventoryError, PreflightError
from certfab.templating import render
from certfab.tlsdefaults import DEFAULT_DHPARAM_BITS, DHPARAM_BITS, HSTS_PRELOAD_MIN_AGE, PROFILES

Version = tuple[int, ...]
Http2Style = Literal["directive", "listen"]
Phase = Literal["http", "https"]


CERTFAB_NGINX_DIR = paths.NGINX_CERTFAB_DIR
TLS_OPTIONS_PATH = paths.TLS_OPTIONS
ACME_INCLUDE_PATH = paths.ACME_INCLUDE
DHPARAM_PATH = paths.DHPARAM
LETSENCRYPT_LIVE = paths.LETSENCRYPT_LIVE
DEFAULT_WEBROOT = paths.DEFAULT_WEBROOT


def site_include_path(site_name: str) -> str:
    """Return the path of a site's server-context include on the host."""
    return f"{CERTFAB_NGINX_DIR}/site-{site_name}.conf"


def managed_site_path(site_name: str) -> str:
    """Return the path of a managed site's server blocks on the host."""
    return f"/etc/nginx/conf.d/certfab-{site_name}.conf"


# Mozilla server-side TLS guideline 6.0, "intermediate": ECDHE only, AEAD only.
INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)

# Guideline 6.0 dropped "old"; this is the last published one (5.8), DHE included.
OLD_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256",
    "DHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES256-SHA384",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "DHE-RSA-AES128-SHA256",
    "DHE-RSA-AES256-SHA256",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA256",
    "AES256-SHA256",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
)

# Preferred order first; each curve with the first OpenSSL version that knows it.
CURVES: tuple[tuple[str, Version], ...] = (
    ("X25519MLKEM768", (3, 5, 0)),
    ("X25519", (1, 1, 0)),
    ("prime256v1", (0,)),
    ("secp384r1", (0,)),
)

# RFC 7919 appendix A, the ffdhe groups (generator 2) by size in bits: the DH parameters certfab writes
# for `tls.dhparam_bits` (named groups: nothing to generate, nothing secret, checked by clients).
FFDHE_PRIMES: dict[int, int] = {
    2048: int(
        "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695"
        "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A"
        "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935"
        "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A"
        "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4"
        "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61"
        "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005"
        "C58EF1837D1683B2C6F34A26C1B2EFFA886B423861285C97FFFFFFFFFFFFFFFF",
        16,
    ),
    3072: int(
        "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695"
        "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A"
        "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935"
        "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A"
        "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4"
        "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61"
        "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005"
        "C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B"
        "BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C"
        "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF"
        "5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E"
        "0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B66C62E37FFFFFFFFFFFFFFFF",
        16,
    ),
    4096: int(
        "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695"
        "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A"
        "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935"
        "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A"
        "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4"
        "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61"
        "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005"
        "C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B"
        "BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C"
        "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF"
        "5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E"
        "0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B669E1EF16E6F52C3164DF4FB"
        "7930E9E4E58857B6AC7D5F42D69F6D187763CF1D5503400487F55BA57E31CC7A"
        "7135C886EFB4318AED6A1E012D9E6832A907600A918130C46DC778F971AD0038"
        "092999A333CB8B7A1A1DB93D7140003C2A4ECEA9F98D0ACC0A8291CDCEC97DCF"
        "8EC9B55A7F88A46B4DB5A851F44182E1C68A007E5E655F6AFFFFFFFFFFFFFFFF",
        16,
    ),
}
FFDHE_G = 2
FFDHE2048_P = FFDHE_PRIMES[2048]
FFDHE2048_G = FFDHE_G


def parse_version(s: str) -> Version:
    """Turn '1.22.1' or '3.0.11' or '1.1.1w' into a tuple of ints for comparisons."""
    parts: list[int] = []
    for piece in s.strip().split("."):
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    if not parts:
        raise ValueError(f"not a version number: {s!r}")
    return tuple(parts)


@dataclass(frozen=True)
class HostTls:
    """What a host's nginx can do with TLS: its version and the TLS library it runs with."""

    nginx_version: Version
    openssl_version: Version
    tls_library: str = "OpenSSL"


_NGINX_VERSION_RE = re.compile(r"nginx version:\s*\S+?/(\d[0-9A-Za-z.]*)")
_TLS_LIB_RE = re.compile(r"(built|running) with (OpenSSL|LibreSSL|BoringSSL)\s*(\d[0-9A-Za-z.]*)?")


def _tls_library(output: str) -> tuple[str, str | None] | None:
    """(name, version) of the TLS library in `nginx -V` output: the one nginx runs with wins."""
    libs = {m.group(1): (m.group(2), m.group(3)) for m in _TLS_LIB_RE.finditer(output)}
    return libs.get("running") or libs.get("built")


def describe_tls_library(output: str) -> str:
    """The TLS library of `nginx -V` output as people read it ("OpenSSL 3.0.19"), or ""."""
    lib = _tls_library(output)
    return " ".join(part for part in lib if part) if lib else ""


def parse_nginx_v(output: str) -> HostTls:
    """Parse `nginx -V` output (stderr) into HostTls; the library nginx runs with wins over the built one."""
    version = _NGINX_VERSION_RE.search(output)
    if version is None:
        raise PreflightError("`nginx -V` printed no version: is nginx installed and on root's PATH?")
    lib = _tls_library(output)
    if lib is None:
        raise PreflightError(
            "nginx was built without a TLS library (no 'built with OpenSSL' in `nginx -V`): "
            "install an nginx with the ssl module, e.g. Debian's nginx package"
        )
    name, lib_version = lib
    return HostTls(
        nginx_version=parse_version(version.group(1)),
        openssl_version=parse_version(lib_version) if lib_version else (0,),
        tls_library=name,
    )


def supported_curves(host: HostTls) -> tuple[str, ...]:
    """Return Mozilla's curve list minus the curves the host's TLS library does not know."""
    if host.tls_library != "OpenSSL":
        # Versions of other libraries are not comparable with OpenSSL's: keep the curves all of them know.
        return ("X25519", "prime256v1", "secp384r1")
    if host.openssl_version < (1, 0, 2):
        return ("prime256v1",)  # a curve list needs OpenSSL 1.0.2
    return tuple(name for name, since in CURVES if host.openssl_version >= since)


def supports_tls13(host: HostTls) -> bool:
    """Say whether the host's nginx and TLS library can speak TLS 1.3."""
    if host.nginx_version < (1, 13, 0):
        return False
    return host.tls_library != "OpenSSL" or host.openssl_version >= (1, 1, 1)


def needs_session_tickets_off(host: HostTls) -> bool:
    """Say whether session tickets must be disabled (nginx < 1.23.2 never rotates the ticket key)."""
    return host.nginx_version < (1, 23, 2)


def needs_dhparam(profile: str) -> bool:
    """Say whether a profile has DHE ciphers and so needs `ssl_dhparam`."""
    _check_profile(profile)
    return profile == "old"


def http2_style(host: HostTls) -> Http2Style:
    """Return how HTTP/2 is switched on: `http2 on;` from nginx 1.25.1, else `listen ... http2`."""
    return "directive" if host.nginx_version >= (1, 25, 1) else "listen"


def _check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise InventoryError(f"unknown TLS profile {profile!r}; known profiles: {', '.join(PROFILES)}")


@dataclass(frozen=True)
class TlsOptions:
    """The directive values of one TLS profile for one host."""

    profile: str
    protocols: tuple[str, ...]
    curves: tuple[str, ...]
    ciphers: tuple[str, ...]
    prefer_server_ciphers: bool
    session_tickets_off: bool
    dhparam_path: str | None


def tls_options(profile: str, host: HostTls, dhparam_path: str | None) -> TlsOptions:
    """Compute the TLS directives of a profile for a host (the data behind tls-options.conf)."""
    _check_profile(profile)
    tls13 = supports_tls13(host)
    if profile == "modern" and not tls13:
        raise PreflightError(
            "TLS profile 'modern' needs TLS 1.3 (nginx >= 1.13 with OpenSSL >= 1.1.1): "
            "upgrade nginx/OpenSSL or use profile 'intermediate'"
        )
    if profile == "modern":
        protocols: tuple[str, ...] = ("TLSv1.3",)
        ciphers: tuple[str, ...] = ()
    elif profile == "intermediate":
        protocols = ("TLSv1.2", "TLSv1.3")
        ciphers = INTERMEDIATE_CIPHERS
    else:
        protocols = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
        ciphers = OLD_CIPHERS
        if host.tls_library == "OpenSSL" and host.openssl_version >= (3, 0, 0):
            # OpenSSL 3 refuses TLS 1.0/1.1 (SHA-1 signatures) above security level 0.
            ciphers = (*ciphers, "@SECLEVEL=0")
        if dhparam_path is None:
            raise ValueError("TLS profile 'old' has DHE ciphers: a dhparam path is required")
    if not tls13:
        protocols = tuple(p for p in protocols if p != "TLSv1.3")
    return TlsOptions(
        profile=profile,
        protocols=protocols,
        curves=supported_curves(host),
        ciphers=ciphers,
        prefer_server_ciphers=profile == "old",
        session_tickets_off=needs_session_tickets_off(host),
        dhparam_path=dhparam_path if profile == "old" else None,
    )


def render_tls_options(profile: str, host: HostTls, dhparam_path: str | None) -> str:
    """Render /etc/nginx/certfab/tls-options.conf for a Mozilla profile on a given host."""
    opts = tls_options(profile, host, dhparam_path)
    return render(
        "tls-options.conf.j2",
        profile=opts.profile,
        protocols=opts.protocols,
        curves=":".join(opts.curves),
        ciphers=":".join(opts.ciphers),
        prefer_server_ciphers=opts.prefer_server_ciphers,
        session_tickets_off=opts.session_tickets_off,
        dhparam_path=opts.dhparam_path,
    )


def _der_length(n: int) -> bytes:
    """Encode a DER length."""
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der_integer(value: int) -> bytes:
    """Encode a non-negative DER INTEGER."""
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")  # leading zero byte keeps it positive
    while len(raw) > 1 and raw[0] == 0 and raw[1] < 0x80:
        raw = raw[1:]
    return b"\x02" + _der_length(len(raw)) + raw


@lru_cache(maxsize=len(FFDHE_PRIMES))
def ffdhe_pem(bits: int | None = None) -> str:
    """Return the RFC 7919 group of `bits` (default 2048) as a PEM `DH PARAMETERS` (PKCS #3) block."""
    size = DEFAULT_DHPARAM_BITS if bits is None else bits
    if size not in FFDHE_PRIMES:
        raise InventoryError(f"dhparam_bits must be one of {', '.join(map(str, DHPARAM_BITS))}, not {bits!r}")
    numbers = dh.DHParameterNumbers(FFDHE_PRIMES[size], FFDHE_G)
    numbers.parameters()  # let cryptography validate the group
    # cryptography recognises the named group and would write X9.42 parameters (with q); nginx and
    # `openssl dhparam` users expect the classic PKCS #3 form, so encode SEQUENCE { p, g } directly.
    body = _der_integer(numbers.p) + _der_integer(numbers.g)
    der = b"\x30" + _der_length(len(body)) + body
    b64 = base64.b64encode(der).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "-----BEGIN DH PARAMETERS-----\n" + "\n".join(lines) + "\n-----END DH PARAMETERS-----\n"


def dhparam_path(bits: int | None = None) -> str:
    """Where certfab writes the RFC 7919 group of `bits` (default 2048) on a host."""
    return f"{CERTFAB_NGINX_DIR}/ffdhe{DEFAULT_DHPARAM_BITS if bits is None else bits}.pem"


def ffdhe2048_pem() -> str:
    """Return the RFC 7919 ffdhe2048 group as a PEM `DH PARAMETERS` block."""
    return ffdhe_pem(2048)


def dhparam_command(bits: int, path: str) -> str:
    """Return a shell command that generates custom DH parameters on the host, atomically."""
    if bits not in DHPARAM_BITS:
        raise InventoryError(f"dhparam_bits must be one of {', '.join(map(str, DHPARAM_BITS))}, not {bits!r}")
    tmp = shlex.quote(f"{path}.tmp")
    return f"openssl dhparam -out {tmp} {bits} 2>/dev/null && chmod 0644 {tmp} && mv -f {tmp} {shlex.quote(path)}"


def hsts_value(max_age: int, include_subdomains: bool, preload: bool) -> str | None:
    """Return the Strict-Transport-Security header value, or None when HSTS is off (max-age 0)."""
    if max_age < 0:
        raise InventoryError(f"tls.hsts_max_age must be >= 0, not {max_age}")
    if max_age == 0:
        return None
    if preload and (not include_subdomains or max_age < HSTS_PRELOAD_MIN_AGE):
        raise InventoryError(
            "tls.hsts_preload needs tls.hsts_include_subdomains: true and "
            f"tls.hsts_max_age >= {HSTS_PRELOAD_MIN_AGE} (browser preload list rules)"
        )
    parts = [f"max-age={max_age}"]
    if include_subdomains:
        parts.append("includeSubDomains")
    if preload:
        parts.append("preload")
    return "; ".join(parts)


def render_hsts_include(max_age: int, include_subdomains: bool, preload: bool) -> str:
    """Render /etc/nginx/certfab/hsts.conf: the HSTS header alone, for locations with headers of their own."""
    if hsts_value(max_age, include_subdomains, preload) is None:
        raise InventoryError("tls.hsts_max_age is 0: there is no HSTS header to include")
    return render("hsts.conf.j2", max_age=max_age, include_subdomains=include_subdomains, preload=preload)


def render_site_include(
    site_name: str,
    domains: Sequence[str],
    *,
    lineage_dir: str | None = None,
    tls_options_path: str = TLS_OPTIONS_PATH,
    hsts_max_age: int = 63072000,
    include_subdomains: bool = True,
    preload: bool = False,
    http2_style: Http2Style = "listen",
) -> str:
    """Render /etc/nginx/certfab/site-<SITE>.conf: certificate, TLS options, HSTS, HTTP/2 for one site."""
    lineage = lineage_dir if lineage_dir is not None else f"{LETSENCRYPT_LIVE}/{site_name}"
    hsts = hsts_value(hsts_max_age, include_subdomains, preload)
    return render(
        "site-https.conf.j2",
        site_name=site_name,
        domains=tuple(domains),
        lineage_dir=lineage.rstrip("/"),
        tls_options_path=tls_options_path,
        hsts_max_age=hsts_max_age,
        hsts_include_subdomains=hsts is not None and include_subdomains,
        hsts_preload=hsts is not None and preload,
        hsts=hsts is not None,
        http2_directive=http2_style == "directive",
    )


def render_acme_include(webroot: str = DEFAULT_WEBROOT) -> str:
    """Render /etc/nginx/certfab/acme-challenge.conf serving HTTP-01 challenges from the webroot."""
    return render("acme-challenge.conf.j2", webroot=webroot.rstrip("/") or "/")


def render_acme_proxy(site_name: str, issuer: str, address: str) -> str:
    """Render a peer's ACME location for a shared site: challenges go to the issuing host's port 80."""
    return render("acme-challenge-proxy.conf.j2", site_name=site_name, issuer=issuer, address=address)


def render_managed_site(
    site_name: str,
    domains: Sequence[str],
    root: str | None,
    upstream: str | None,
    phase: Phase,
    acme_include: str | None = ACME_INCLUDE_PATH,
    site_include: str | None = None,
    http2_in_listen: bool = False,
    ipv6: bool = True,
    redirect: bool = True,
) -> str:
    """Render /etc/nginx/conf.d/certfab-<SITE>.conf: plain HTTP before issuance, HTTPS + redirect after.

    Without acme_include (DNS-01) no challenge location is served; without redirect, no port-80 block.
    """
    if (root is None) == (upstream is None):
        raise ValueError(f"managed site {site_name!r} needs exactly one of root or upstream")
    if phase not in ("http", "https"):
        raise ValueError(f"phase must be 'http' or 'https', not {phase!r}")
    if not domains:
        raise ValueError(f"managed site {site_name!r} has no domains")
    return render(
        "managed-site.conf.j2",
        site_name=site_name,
        domains=tuple(domains),
        root=root,
        upstream=upstream,
        phase=phase,
        acme_include=acme_include,
        site_include=site_include if site_include is not None else site_include_path(site_name),
        http2_in_listen=http2_in_listen,
        ipv6=ipv6,
        redirect=redirect,
    )
