"""Certificate summaries kept between runs: equal to a fresh reading, never kept for a key, and a run
that has seen its certificates loads no X.509 support."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from certfactory import make_certificate
from freshrun import outputs_of_runs

from certfab import certcache, certs, x509info
from certfab.certcache import parse_der, parse_pem
from certfab.certs import PrivateKeyRefused

NOT_AFTER = datetime(2027, 3, 1, 12, 0, tzinfo=timezone.utc)
KEY_PEM = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("CERTFAB_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("CERTFAB_NO_CACHE", raising=False)
    monkeypatch.setattr(certcache, "_SEEN", {})
    yield tmp_path / "state"


def entries(state: Path) -> list[Path]:
    directory = state / "cache" / "certs"
    return sorted(p for p in directory.iterdir() if not p.name.startswith(".")) if directory.is_dir() else []


def test_a_kept_summary_equals_a_fresh_reading(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pem = make_certificate(["a.example", "www.a.example"], not_after=NOT_AFTER, lifetime=timedelta(hours=160))
    first = parse_pem(pem)
    assert len(entries(state)) == 1
    monkeypatch.setattr(certcache, "_SEEN", {})  # as a new process: from the file
    monkeypatch.setattr(x509info, "parse_pem", None)  # would fail if it were called
    again = parse_pem(pem)
    assert again == first == x509info_fresh(pem)
    assert again.not_after.tzinfo is not None and again.lifetime == timedelta(hours=160)


def x509info_fresh(pem: str) -> certs.CertInfo:
    import importlib

    return importlib.reload(x509info).parse_pem(pem)


def test_the_same_certificate_as_der_is_read_once_more_then_kept(state: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pem = make_certificate(["b.example"], not_after=NOT_AFTER)
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    assert parse_der(der) == parse_pem(pem)
    assert len(entries(state)) == 2


def test_nothing_is_kept_for_a_private_key(state: Path) -> None:
    for _ in range(2):
        with pytest.raises(PrivateKeyRefused):
            parse_pem(make_certificate(["c.example"], not_after=NOT_AFTER) + KEY_PEM)
    assert entries(state) == []


def test_a_damaged_entry_is_read_again(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pem = make_certificate(["d.example"], not_after=NOT_AFTER)
    first = parse_pem(pem)
    [entry] = entries(state)
    entry.write_text('{"names": 5}')
    monkeypatch.setattr(certcache, "_SEEN", {})
    assert parse_pem(pem) == first


def test_a_run_that_has_seen_its_certificates_loads_no_x509_support(state: Path) -> None:
    pem = make_certificate(["e.example"], not_after=NOT_AFTER)
    code = (
        "import sys\n"
        "from certfab.certcache import parse_pem\n"
        "info = parse_pem(sys.stdin.read())\n"
        "print(info.names[0], 'cryptography.x509' in sys.modules)\n"
    )
    assert outputs_of_runs(code, state, stdin=pem) == ["e.example True", "e.example False"]
