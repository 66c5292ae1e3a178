"""One certificate factory for unit tests: self-signed PEM certificates with chosen names and dates."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_certificate(names: list[str], *, not_after: datetime, lifetime: timedelta = timedelta(days=90),
                     not_before: datetime | None = None) -> str:
    """A PEM certificate for `names` (CN = the first), valid from not_before (or not_after - lifetime)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or not_after - lifetime).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def days_from(now: datetime, days: int) -> datetime:
    return now + timedelta(days=days)


UTC = timezone.utc
