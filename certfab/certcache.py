"""Certificate summaries kept between runs, for the readers of the expiry report.

certfab.certs reads certificates (pure); this keeps what it read in the operator's state directory
(certfab.opstate), by a digest of the certificate's bytes and of the code that reads them, so a report
of certificates already seen loads no X.509 support at all. Nothing is kept for input that holds a
private key: it is refused, every time.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

from certfab import certs
from certfab.certs import CertInfo
from certfab.opstate import read_cached, write_cached

_CACHE_KIND = "certs"
_SEEN: dict[str, CertInfo] = {}


def parse_pem(pem: str | bytes) -> CertInfo:
    """certfab.certs.parse_pem, remembered."""
    return _summary("pem", pem.encode("ascii", "replace") if isinstance(pem, str) else bytes(pem))


def parse_der(der: bytes) -> CertInfo:
    """certfab.certs.parse_der, remembered."""
    return _summary("der", bytes(der))


def _summary(form: str, data: bytes) -> CertInfo:
    if b"PRIVATE KEY" in data:
        return _read(form, data)  # refused there, every time: nothing about it is kept
    key = hashlib.sha256(b"\0".join((_reader_digest().encode(), form.encode(), data))).hexdigest()
    known = _SEEN.get(key) or _read_summary(key)
    if known is None:
        known = _read(form, data)
        write_cached(_CACHE_KIND, key, json.dumps(_to_json(known)).encode())
    _SEEN[key] = known
    return known


def _read(form: str, data: bytes) -> CertInfo:
    return certs.parse_pem(data) if form == "pem" else certs.parse_der(data)


@lru_cache(maxsize=1)
def _reader_digest() -> str:
    """The code that turns bytes into a summary: certfab.certs and certfab.x509info."""
    here = Path(__file__).resolve().parent
    return hashlib.sha256(b"".join((here / name).read_bytes() for name in ("certs.py", "x509info.py"))).hexdigest()


def _to_json(info: CertInfo) -> dict[str, object]:
    return {"names": list(info.names), "issuer": info.issuer, "serial": info.serial,
            "not_before": info.not_before.isoformat(), "not_after": info.not_after.isoformat(),
            "key_type": info.key_type, "sha256": info.sha256, "lifetime": info.lifetime.total_seconds()}


def _read_summary(key: str) -> CertInfo | None:
    data = read_cached(_CACHE_KIND, key)
    if data is None:
        return None
    try:
        doc = json.loads(data)
        return CertInfo(names=tuple(str(n) for n in doc["names"]), issuer=str(doc["issuer"]),
                        serial=str(doc["serial"]), not_before=datetime.fromisoformat(doc["not_before"]),
                        not_after=datetime.fromisoformat(doc["not_after"]), key_type=str(doc["key_type"]),
                        sha256=str(doc["sha256"]), lifetime=timedelta(seconds=float(doc["lifetime"])))
    except (ValueError, KeyError, TypeError):
        return None  # a damaged entry: read the certificate again
