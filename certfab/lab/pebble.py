"""The lab's ACME server (Pebble) and its TLS certificate."""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certfab.errors import LabError
from certfab.lab import layout, proc

CA_CERT = layout.KEYS_DIR / "lab-ca.pem"
CA_KEY = layout.KEYS_DIR / "lab-ca.key"
SERVER_CERT = layout.PEBBLE_DIR / "cert.pem"
SERVER_KEY = layout.PEBBLE_DIR / "key.pem"
CONFIG = layout.PEBBLE_DIR / "pebble-config.json"

_ISSUED = re.compile(r"Issued certificate serial \S+ for order")


def _now() -> datetime.datetime:
    """Current time, timezone-aware."""
    return datetime.datetime.now(datetime.timezone.utc)


def _write_private(path: Path, data: bytes) -> None:
    """Write a file readable by root only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM of a private key."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ca_usable() -> bool:
    """Whether the stored lab CA exists and stays valid for at least 30 more days."""
    try:
        cert = x509.load_pem_x509_certificate(CA_CERT.read_bytes())
        serialization.load_pem_private_key(CA_KEY.read_bytes(), password=None)
    except (OSError, ValueError):
        return False
    return cert.not_valid_after_utc > _now() + datetime.timedelta(days=30)


def ensure_tls() -> None:
    """Make (or keep) the lab CA and issue a fresh server certificate for Pebble's HTTPS listeners."""
    if not _ca_usable():
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certfab lab CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(hours=1))
            .not_valid_after(_now() + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(CA_KEY, _key_pem(ca_key))
        CA_CERT.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    ca_key_loaded = serialization.load_pem_private_key(CA_KEY.read_bytes(), password=None)
    assert isinstance(ca_key_loaded, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(CA_CERT.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, layout.BRIDGE_ADDRESS)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(hours=1))
        .not_valid_after(_now() + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address(layout.BRIDGE_ADDRESS)),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key_loaded.public_key()), critical=False
        )
        .sign(ca_key_loaded, hashes.SHA256())
    )
    _write_private(SERVER_KEY, _key_pem(key))
    SERVER_CERT.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


_DURATION = re.compile(r"([1-9][0-9]*)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_lifetime(text: str) -> int:
    """Seconds of a certificate lifetime written like `160h`, `45d`, `90m` or `3600s`; LabError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise LabError(f"--cert-lifetime {text!r} is not a duration like 160h, 45d, 90m or 3600s")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not 60 <= seconds <= 5 * 365 * 86400:
        raise LabError(f"--cert-lifetime {text!r} is outside 1 minute .. 5 years")
    return seconds


def configured_lifetime() -> int | None:
    """The certificate lifetime (seconds) in Pebble's current configuration, None without one."""
    try:
        value = json.loads(CONFIG.read_text())["pebble"]["certificateValidityPeriod"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) else None


def write_config(lifetime_seconds: int = layout.CERTIFICATE_VALIDITY_SECONDS) -> None:
    """Write Pebble's configuration (listeners on the bridge, challenges on ports 80/443, the lifetime)."""
    config = {
        "pebble": {
            "listenAddress": f"{layout.BRIDGE_ADDRESS}:{layout.ACME_PORT}",
            "managementListenAddress": f"{layout.BRIDGE_ADDRESS}:{layout.MANAGEMENT_PORT}",
            "certificate": str(SERVER_CERT),
            "privateKey": str(SERVER_KEY),
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "certificateValidityPeriod": lifetime_seconds,
        }
    }
    CONFIG.parent.mkdir(parents=True, exist_ok=True)
    CONFIG.write_text(json.dumps(config, indent=2) + "\n")


def _tls_context() -> ssl.SSLContext:
    """Client context trusting only the lab CA."""
    return ssl.create_default_context(cafile=str(CA_CERT))


def start_pebble() -> None:
    """Start Pebble and wait until its ACME directory answers."""
    env = {
        **proc.CLEAN_ENV,
        "PEBBLE_VA_NOSLEEP": "1",
        "PEBBLE_WFE_NONCEREJECT": "0",
        "PEBBLE_AUTHZREUSE": "0",
    }
    argv = ["/usr/bin/pebble", "-config", str(CONFIG), "-dnsserver", f"{layout.BRIDGE_ADDRESS}:53"]
    pid = proc.spawn(argv, log=layout.PEBBLE_LOG, env=env, cwd=layout.PEBBLE_DIR)
    proc.write_pid_file(layout.pid_file("pebble"), proc.record(pid))
    context = _tls_context()

    def answers() -> bool:
        if proc.live_pid(layout.pid_file("pebble")) is None:
            raise LabError(f"pebble exited at start; see {layout.PEBBLE_LOG}")
        try:
            with urllib.request.urlopen(layout.ACME_DIRECTORY, context=context, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    proc.wait_for("pebble", answers, timeout=30)


def stop_pebble() -> None:
    """Stop Pebble (it keeps all state in memory, so accounts and orders are lost)."""
    proc.stop_recorded(layout.pid_file("pebble"))


def fetch_root() -> bytes:
    """PEM of the root Pebble issues under (a new one at each Pebble start)."""
    url = f"https://{layout.BRIDGE_ADDRESS}:{layout.MANAGEMENT_PORT}/roots/0"
    try:
        with urllib.request.urlopen(url, context=_tls_context(), timeout=10) as response:
            pem = bytes(response.read())
    except (urllib.error.URLError, OSError) as exc:
        raise LabError(f"could not fetch Pebble's root from {url}: {exc}") from exc
    if b"BEGIN CERTIFICATE" not in pem:
        raise LabError(f"{url} did not return a PEM certificate")
    return pem


def log_text() -> str:
    """Pebble's log since the lab came up."""
    try:
        return layout.PEBBLE_LOG.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def issued_count(log: str) -> int:
    """Number of certificates issued according to a Pebble log."""
    return len(_ISSUED.findall(log))
