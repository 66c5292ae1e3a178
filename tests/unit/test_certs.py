"""Certificate parsing, private-key refusal, lifetime-relative classification and TLS probes on loopback."""

from __future__ import annotations

import hashlib
import http.server
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certfab import tlsprobe
from certfab.certs import CertificateError, CertInfo, PrivateKeyRefused, parse_der, parse_pem
from certfab.report import CertRecord, Status, Thresholds, classify

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _key(kind: str) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class Issued:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def make_ca(name: str = "certfab test CA") -> Issued:
    key = _key("ec")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(timezone.utc) - timedelta(days=1))
        .not_valid_after(datetime.now(timezone.utc) + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def make_leaf(
    names: tuple[str, ...] = ("a.test",),
    *,
    kind: str = "ec",
    lifetime: timedelta = timedelta(days=90),
    not_before: datetime | None = None,
    issuer: Issued | None = None,
    org: str | None = None,
) -> Issued:
    key = _key(kind)
    not_before = not_before or datetime.now(timezone.utc) - timedelta(hours=1)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    issuer_attrs = [x509.NameAttribute(NameOID.COMMON_NAME, "self")]
    if issuer is not None:
        issuer_name = issuer.cert.subject
    else:
        if org:
            issuer_attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        issuer_name = x509.Name(issuer_attrs)
    signer = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    return Issued(builder.sign(signer, hashes.SHA256()), key)


# --- parsing -----------------------------------------------------------------------------------------


class TestParse:
    def test_ecdsa_pem_fields(self) -> None:
        leaf = make_leaf(("a.test", "www.a.test"), org="Example CA")
        info = parse_pem(leaf.pem)
        assert info.names == ("a.test", "www.a.test")
        assert info.key_type == "ECDSA P-256"
        assert info.issuer == "self (Example CA)"
        assert info.serial == format(leaf.cert.serial_number, "x")
        assert info.sha256 == hashlib.sha256(leaf.der).hexdigest()
        assert info.not_before == leaf.cert.not_valid_before_utc
        assert info.not_after.tzinfo is not None
        assert info.lifetime == timedelta(days=90)

    def test_rsa_and_p384_key_types(self) -> None:
        assert parse_pem(make_leaf(kind="rsa").pem).key_type == "RSA 2048"
        assert parse_pem(make_leaf(kind="p384").pem).key_type == "ECDSA P-384"

    def test_str_and_der_agree(self) -> None:
        leaf = make_leaf()
        assert parse_pem(leaf.pem.decode()) == parse_der(leaf.der)

    def test_first_certificate_of_a_chain(self) -> None:
        ca = make_ca()
        leaf = make_leaf(("chain.test",), issuer=ca)
        info = parse_pem(leaf.pem + ca.pem)
        assert info.names == ("chain.test",)
        assert info.issuer == "certfab test CA"

    def test_days_and_fraction_left(self) -> None:
        start = NOW - timedelta(days=60)
        info = parse_pem(make_leaf(lifetime=timedelta(days=90), not_before=start).pem)
        assert info.days_left(NOW) == pytest.approx(30)
        assert info.fraction_left(NOW) == pytest.approx(1 / 3)
        assert info.fraction_left(NOW + timedelta(days=100)) == 0.0
        assert info.days_left(NOW + timedelta(days=31)) == pytest.approx(-1)
        assert info.is_expired(NOW + timedelta(days=31))

    def test_naive_now_is_rejected(self) -> None:
        info = parse_pem(make_leaf().pem)
        with pytest.raises(ValueError):
            info.days_left(datetime(2026, 1, 1))

    @pytest.mark.parametrize("garbage", [b"", b"hello", b"-----BEGIN CERTIFICATE-----\nAAAA\n"])
    def test_garbage_pem(self, garbage: bytes) -> None:
        with pytest.raises(CertificateError):
            parse_pem(garbage)

    def test_garbage_der(self) -> None:
        with pytest.raises(ValueError):
            parse_der(b"\x30\x03\x02\x01\x01")

    def test_certificate_error_is_a_value_error(self) -> None:
        assert issubclass(PrivateKeyRefused, CertificateError)
        assert issubclass(CertificateError, ValueError)


class TestPrivateKeyRefusal:
    def test_pem_key_alone(self) -> None:
        with pytest.raises(PrivateKeyRefused):
            parse_pem(make_leaf().key_pem)

    def test_pem_key_after_certificate(self) -> None:
        leaf = make_leaf()
        with pytest.raises(PrivateKeyRefused):
            parse_pem(leaf.pem + leaf.key_pem)

    @pytest.mark.parametrize("fmt", ["traditional", "pkcs8"])
    def test_rsa_and_ec_pem_formats(self, fmt: str) -> None:
        form = (
            serialization.PrivateFormat.TraditionalOpenSSL
            if fmt == "traditional"
            else serialization.PrivateFormat.PKCS8
        )
        for kind in ("rsa", "ec"):
            pem = _key(kind).private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())
            with pytest.raises(PrivateKeyRefused):
                parse_pem(pem.decode())

    def test_der_key(self) -> None:
        der = _key("ec").private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        with pytest.raises(PrivateKeyRefused):
            parse_der(der)

    def test_encrypted_der_key(self) -> None:
        der = _key("ec").private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        with pytest.raises(PrivateKeyRefused):
            parse_der(der)

    def test_pem_given_to_parse_der(self) -> None:
        with pytest.raises(PrivateKeyRefused):
            parse_der(make_leaf().key_pem)


# --- classification with real certificates of different lifetimes ------------------------------------


def _record(info: CertInfo) -> CertRecord:
    status = {"time": (NOW - timedelta(hours=6)).isoformat(), "result": "ok"}
    return CertRecord(host="web1", site="a", domains=info.names, disk=info, renewal_status=status)


def _cert_with(lifetime_days: float, days_left: float, kind: str = "ec") -> CertInfo:
    lifetime = timedelta(days=lifetime_days)
    start = NOW + timedelta(days=days_left) - lifetime
    return parse_pem(make_leaf(kind=kind, lifetime=lifetime, not_before=start).pem)


class TestLifetimeRelativeClassification:
    @pytest.mark.parametrize(
        ("lifetime", "left", "expected"),
        [
            (6, 2.0, Status.OK),  # a third of a short-lived cert left: renewal is due, not late
            (6, 1.5, Status.WARN),
            (6, 0.5, Status.CRITICAL),
            (45, 20, Status.OK),
            (45, 10, Status.WARN),
            (45, 5, Status.CRITICAL),
            (90, 40, Status.OK),
            (90, 20, Status.WARN),
            (90, 2, Status.CRITICAL),
            (90, -1, Status.EXPIRED),
            (6, -0.1, Status.EXPIRED),
        ],
    )
    def test_relative(self, lifetime: float, left: float, expected: Status) -> None:
        info = _cert_with(lifetime, left, kind="rsa" if lifetime == 45 else "ec")
        assert classify(_record(info), NOW) is expected

    def test_two_days_left_means_different_things(self) -> None:
        short, long = _cert_with(6, 2), _cert_with(90, 2)
        assert classify(_record(short), NOW) is Status.OK
        assert classify(_record(long), NOW) is Status.CRITICAL

    def test_absolute_days_option(self) -> None:
        absolute = Thresholds(warn_days=14, critical_days=7)
        assert classify(_record(_cert_with(6, 5.9)), NOW, absolute) is Status.CRITICAL
        assert classify(_record(_cert_with(90, 10)), NOW, absolute) is Status.WARN
        assert classify(_record(_cert_with(90, 20)), NOW, absolute) is Status.OK


# --- TLS probes against a loopback server ------------------------------------------------------------


@dataclass
class TLSServer:
    port: int
    ca_file: Path
    leaf: Issued
    hosts_seen: list[str]


class _Handler(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Host", ""))
        if isinstance(self.connection, ssl.SSLSocket):
            self.send_response(200)
            self.send_header("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
        else:
            self.send_response(301)
            self.send_header("Location", f"https://{self.headers.get('Host', '')}/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def _serve(server: http.server.HTTPServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TLSServer]:
    ca = make_ca()
    leaf = make_leaf(("a.test",), issuer=ca)
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    (tmp_path / "leaf.pem").write_bytes(leaf.pem + ca.pem)
    (tmp_path / "leaf.key").write_bytes(leaf.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    seen: list[str] = []
    handler = type("Handler", (_Handler,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    with _serve(server):
        yield TLSServer(server.server_address[1], tmp_path / "ca.pem", leaf, seen)


@pytest.fixture
def http_server() -> Iterator[tuple[int, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_Handler,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    with _serve(server):
        yield server.server_address[1], seen


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TestTLSProbe:
    def test_fetch_served_reads_the_leaf(self, tls_server: TLSServer) -> None:
        served = tlsprobe.fetch_served("127.0.0.1", tls_server.port, "a.test", timeout=5)
        assert served.error is None and served.ok
        assert served.der == tls_server.leaf.der
        assert served.info is not None
        assert served.info.sha256 == hashlib.sha256(tls_server.leaf.der).hexdigest()
        assert served.info.names == ("a.test",)

    def test_fetch_served_connection_refused(self) -> None:
        served = tlsprobe.fetch_served("127.0.0.1", _free_port(), "a.test", timeout=2)
        assert not served.ok and served.info is None
        assert served.error is not None and "refused" in served.error

    def test_fetch_served_timeout_on_silent_server(self) -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            served = tlsprobe.fetch_served("127.0.0.1", listener.getsockname()[1], "a.test", timeout=0.3)
        assert served.error is not None and "timed out" in served.error

    def test_verify_with_the_ca(self, tls_server: TLSServer) -> None:
        result = tlsprobe.verify_https(
            "127.0.0.1", "a.test", tls_server.ca_file, timeout=5, port=tls_server.port
        )
        assert result.ok, result.error
        assert result.error is None
        assert result.status == 200
        assert result.hsts == "max-age=63072000; includeSubDomains"
        assert result.leaf is not None and result.leaf.names == ("a.test",)
        assert tls_server.hosts_seen == ["a.test"]

    def test_verify_fails_without_the_ca(self, tls_server: TLSServer) -> None:
        result = tlsprobe.verify_https("127.0.0.1", "a.test", None, timeout=5, port=tls_server.port)
        assert not result.ok
        assert result.error is not None and "certificate verify failed" in result.error
        assert result.status is None and result.hsts is None
        # the leaf is still reported, read without verification, to help diagnose
        assert result.leaf is not None and result.leaf.names == ("a.test",)

    def test_verify_fails_for_another_name(self, tls_server: TLSServer) -> None:
        result = tlsprobe.verify_https(
            "127.0.0.1", "b.test", tls_server.ca_file, timeout=5, port=tls_server.port
        )
        assert not result.ok
        assert result.error is not None and "b.test" in result.error

    def test_verify_missing_trust_roots_file(self, tls_server: TLSServer, tmp_path: Path) -> None:
        result = tlsprobe.verify_https(
            "127.0.0.1", "a.test", tmp_path / "missing.pem", timeout=5, port=tls_server.port
        )
        assert not result.ok and result.error is not None and "trust roots" in result.error

    def test_verify_connection_refused(self) -> None:
        result = tlsprobe.verify_https("127.0.0.1", "a.test", None, timeout=2, port=_free_port())
        assert not result.ok and result.error is not None and "refused" in result.error

    def test_check_redirect(self, http_server: tuple[int, list[str]]) -> None:
        port, seen = http_server
        status, location = tlsprobe.check_redirect("127.0.0.1", "a.test", timeout=5, port=port)
        assert (status, location) == (301, "https://a.test/")
        assert seen == ["a.test"]

    def test_check_redirect_unreachable(self) -> None:
        assert tlsprobe.check_redirect("127.0.0.1", "a.test", timeout=2, port=_free_port()) == (None, None)
        result = tlsprobe.probe_redirect("127.0.0.1", "a.test", timeout=2, port=_free_port())
        assert result.status is None and result.error is not None and "refused" in result.error
