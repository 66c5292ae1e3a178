"""Parse public X.509 certificates into small typed summaries; private keys are refused."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from certfab.errors import CertfabError

# Renew (or order anew) once less than this share of a certificate's lifetime is left...
RENEW_FRACTION = 1 / 3
# ...or this share for lifetimes under SHORT_LIFETIME (6-day certificates), as certbot >= 4.0 does.
SHORT_RENEW_FRACTION = 1 / 2
SHORT_LIFETIME = timedelta(days=10)

_CURVES = {
    "secp256r1": "P-256",
    "secp384r1": "P-384",
    "secp521r1": "P-521",
}


class CertificateError(CertfabError, ValueError):
    """The data given is not a readable X.509 certificate."""


class PrivateKeyRefused(CertificateError):
    """The data given contains a private key, which certfab never reads or moves."""


@dataclass(frozen=True)
class CertInfo:
    """What certfab needs to know about one certificate."""

    names: tuple[str, ...]
    issuer: str
    serial: str
    not_before: datetime
    not_after: datetime
    key_type: str
    sha256: str
    lifetime: timedelta

    def days_left(self, now: datetime) -> float:
        """Days from `now` until expiry; negative once expired."""
        return (self.not_after - _aware(now)).total_seconds() / 86400

    def fraction_left(self, now: datetime) -> float:
        """Share of the certificate's lifetime still ahead of `now`, clamped to 0..1."""
        total = self.lifetime.total_seconds()
        if total <= 0:
            return 0.0
        left = (self.not_after - _aware(now)).total_seconds() / total
        return min(1.0, max(0.0, left))

    @property
    def renew_at(self) -> datetime:
        """When the certificate becomes due for renewal (see renewal_margin)."""
        return self.not_after - renewal_margin(self.lifetime)

    def renewal_due(self, now: datetime) -> bool:
        """Whether less than the renewal margin is left at `now`."""
        return _aware(now) > self.renew_at

    def is_expired(self, now: datetime) -> bool:
        """Whether the certificate is no longer valid at `now`."""
        return _aware(now) >= self.not_after


def renewal_margin(lifetime: timedelta) -> timedelta:
    """How long before expiry a certificate is renewed: a third of its lifetime, half under 10 days."""
    return lifetime * (SHORT_RENEW_FRACTION if lifetime < SHORT_LIFETIME else RENEW_FRACTION)


def renew_before_expiry(lifetime: timedelta) -> str:
    """certbot's `renew_before_expiry` for a lineage of that lifetime (whole hours under 10 days, else days)."""
    margin = renewal_margin(lifetime)
    if lifetime < SHORT_LIFETIME:
        return f"{max(1, int(margin.total_seconds() // 3600))} hours"
    return f"{max(1, margin.days)} days"


def parse_pem(pem: str | bytes) -> CertInfo:
    """Summarise the first certificate of a PEM text (a leaf or a full chain)."""
    from certfab import x509info  # cryptography's X.509 support is loaded only when a certificate is read

    return x509info.parse_pem(pem)


def parse_der(der: bytes) -> CertInfo:
    """Summarise one DER-encoded certificate (as served in a TLS handshake)."""
    from certfab import x509info

    return x509info.parse_der(der)


def _aware(now: datetime) -> datetime:
    """Reject naive datetimes, which would silently compare in local time."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("`now` must be timezone-aware (use datetime.now(timezone.utc))")
    return now.astimezone(timezone.utc)
