"""Reading certificates with cryptography: the part of certfab.certs that needs X.509 support."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from certfab.certs import _CURVES, CertificateError, CertInfo, PrivateKeyRefused


def parse_pem(pem: str | bytes) -> CertInfo:
    """Summarise the first certificate of a PEM text (a leaf or a full chain)."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else bytes(pem)
    _refuse_private_key(data)
    start = data.find(b"-----BEGIN CERTIFICATE-----")
    if start < 0:
        raise CertificateError("no PEM certificate found (expected '-----BEGIN CERTIFICATE-----')")
    end_marker = b"-----END CERTIFICATE-----"
    end = data.find(end_marker, start)
    if end < 0:
        raise CertificateError("PEM certificate is truncated (no '-----END CERTIFICATE-----')")
    block = data[start : end + len(end_marker)]
    try:
        cert = x509.load_pem_x509_certificate(block)
    except ValueError as exc:
        raise CertificateError(f"unreadable PEM certificate: {exc}") from exc
    return _summarise(cert)


def parse_der(der: bytes) -> CertInfo:
    """Summarise one DER-encoded certificate (as served in a TLS handshake)."""
    data = bytes(der)
    _refuse_private_key(data)
    try:
        cert = x509.load_der_x509_certificate(data)
    except ValueError as exc:
        if _is_der_private_key(data):
            raise PrivateKeyRefused("refusing to read a private key: pass only the certificate") from None
        raise CertificateError(f"unreadable DER certificate: {exc}") from exc
    return _summarise(cert)


def _refuse_private_key(data: bytes) -> None:
    """Raise if the data holds a PEM private key (of any kind, encrypted or not)."""
    if b"PRIVATE KEY" in data:
        raise PrivateKeyRefused("refusing to read a private key: pass only the certificate (fullchain.pem)")


def _is_der_private_key(data: bytes) -> bool:
    """Whether bytes that are not a certificate are a DER private key."""
    try:
        serialization.load_der_private_key(data, password=None)
    except TypeError:
        return True  # an encrypted key: it needs a password, so it is a key
    except (ValueError, UnsupportedAlgorithm):
        return False
    return True


def _summarise(cert: x509.Certificate) -> CertInfo:
    """Turn a loaded certificate into a CertInfo."""
    not_before = cert.not_valid_before_utc
    not_after = cert.not_valid_after_utc
    der = cert.public_bytes(serialization.Encoding.DER)
    return CertInfo(
        names=_names(cert),
        issuer=_issuer(cert.issuer),
        serial=format(cert.serial_number, "x"),
        not_before=not_before,
        not_after=not_after,
        key_type=_key_type(cert),
        sha256=hashlib.sha256(der).hexdigest(),
        lifetime=not_after - not_before,
    )


def _names(cert: x509.Certificate) -> tuple[str, ...]:
    """DNS and IP subject alternative names, falling back to the subject CN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return tuple(_attr(cert.subject, NameOID.COMMON_NAME))
    names: list[str] = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return tuple(names)


def _issuer(name: x509.Name) -> str:
    """A short issuer label: 'CN (O)', 'CN', 'O' or the RFC 4514 string."""
    cn = _attr(name, NameOID.COMMON_NAME)
    org = _attr(name, NameOID.ORGANIZATION_NAME)
    if cn and org:
        return f"{cn[0]} ({org[0]})"
    if cn or org:
        return (cn or org)[0]
    return name.rfc4514_string()


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    """String values of one attribute type in a name."""
    return [str(a.value) for a in name.get_attributes_for_oid(oid)]


def _key_type(cert: x509.Certificate) -> str:
    """Human label of the certificate's public key, e.g. 'ECDSA P-256' or 'RSA 2048'."""
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {_CURVES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA {key.key_size}"
    return type(key).__name__


