"""One certificate factory for unit tests: self-signed certificates with chosen names and dates,
as PEM text or written where nginx expects a lineage."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed_pair(names: list[str] | tuple[str, ...], *, not_before: datetime, not_after: datetime,
                     common_name: str | None = None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed ECDSA certificate for `names` (SANs; CN = common_name or the first name) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or names[0])])
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                                        critical=False)
    return builder.sign(key, hashes.SHA256()), key


def make_certificate(names: list[str], *, not_after: datetime, lifetime: timedelta = timedelta(days=90),
                     not_before: datetime | None = None) -> str:
    """A PEM certificate for `names`, valid from not_before (or not_after - lifetime) to not_after."""
    cert, _ = self_signed_pair(names, not_before=not_before or not_after - lifetime, not_after=not_after)
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def write_self_signed(directory: Path, names: list[str] | tuple[str, ...], *, days: int = 30,
                      cert_name: str = "fullchain.pem", key_name: str = "privkey.pem",
                      common_name: str | None = None) -> tuple[Path, Path]:
    """A throwaway certificate and key written into `directory` (made if missing), valid for `days`."""
    now = datetime.now(timezone.utc)
    cert, key = self_signed_pair(names, not_before=now - timedelta(minutes=5), not_after=now + timedelta(days=days),
                                 common_name=common_name)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / cert_name, directory / key_name
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
