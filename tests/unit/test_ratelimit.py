"""The rate-limit guard: registered domains, 7-day windows, renewals, back-off, and the history file."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from certfab.certs import CertInfo
from certfab.history import History, RateGuard, record_host_renewals
from certfab.ratelimit import (
    Event,
    Limits,
    Order,
    backoff_until,
    host_renewal,
    refusal,
    registered_domain,
    registered_domains,
)
from certfab.renewal_status import RenewalStatus
from certfab.report import CertRecord

NOW = datetime(2026, 12, 4, 12, tzinfo=timezone.utc)
LIMITS = Limits(per_registered_domain=2, per_name_set=5)


def issued(names: tuple[str, ...], hours_ago: float, renewal: bool = False) -> Event:
    return Event(NOW - timedelta(hours=hours_ago), "issued", "web1", names[0], tuple(sorted(names)), renewal)


def failed(name: str, minutes_ago: float) -> Event:
    return Event(NOW - timedelta(minutes=minutes_ago), "failed-validation", "web1", "s", (name,))


@pytest.mark.parametrize(("name", "domain"), [
    ("www.shop.example.co.uk", "example.co.uk"),
    ("a.b.example.com", "example.com"),
    ("example.com", "example.com"),
    ("*.example.com", "example.com"),
    ("me.github.io", "me.github.io"),
    ("shop.web22.test", "web22.test"),
])
def test_registered_domain_by_the_public_suffix_list(name: str, domain: str) -> None:
    assert registered_domain(name) == domain


def test_new_certificates_per_registered_domain_are_limited_and_say_when_the_window_frees() -> None:
    history = [issued(("a.example.com",), 30), issued(("b.example.com",), 5)]
    why = refusal(Order("web1", "c", ("c.example.com",), False), history, [], LIMITS, NOW, force=False)
    assert why == ("web1: site c: refused: registered domain example.com has 2 new certificates in the last "
                   "7 days (limit 2); the window frees up at 2026-12-10 06:00 UTC")
    assert refusal(Order("web1", "d", ("d.example.org",), False), history, [], LIMITS, NOW, force=True) is None


def test_renewals_do_not_count_and_are_not_refused_by_the_registered_domain_limit() -> None:
    history = [issued(("a.example.com",), 30), issued(("b.example.com",), 5), issued(("a.example.com",), 1, True)]
    assert refusal(Order("web1", "a", ("a.example.com",), True), history, [], LIMITS, NOW, force=False) is None
    assert registered_domains(["a.example.com", "www.example.com", "x.example.org"]) == ("example.com",
                                                                                        "example.org")


def test_this_runs_admitted_orders_count_and_old_ones_leave_the_window() -> None:
    history = [issued(("a.example.com",), 24 * 8)]
    pending = [Order("web2", "b", ("b.example.com",), False)]
    assert refusal(Order("web1", "c", ("c.example.com",), False), history, pending, LIMITS, NOW, force=False) is None
    pending.append(Order("web2", "d", ("d.example.com",), False))
    assert refusal(Order("web1", "c", ("c.example.com",), False), history, pending, LIMITS, NOW, force=False)


def test_five_certificates_per_exact_name_set_renewals_included() -> None:
    names = ("example.com", "www.example.com")
    history = [issued(names, hours, renewal=True) for hours in (1, 2, 3, 4, 5)]
    why = refusal(Order("web1", "ex", ("www.example.com", "example.com"), True), history, [], LIMITS, NOW,
                  force=True)
    assert why is not None and "5 certificates for exactly example.com, www.example.com" in why


def test_backoff_after_failed_validations_1_10_100_minutes_then_daily() -> None:
    assert backoff_until([]) is None
    steps = [backoff_until([NOW] * n) for n in (1, 2, 3, 4, 9)]
    assert steps == [NOW + timedelta(minutes=1), NOW + timedelta(minutes=10), NOW + timedelta(minutes=100),
                     NOW + timedelta(days=1), NOW + timedelta(days=1)]
    history = [failed("a.example.com", 30), failed("a.example.com", 5)]
    order = Order("web1", "a", ("a.example.com",), False)
    why = refusal(order, history, [], LIMITS, NOW, force=False)
    assert why == ("web1: site a: refused: validation of a.example.com failed 2 time(s), last at 2026-12-04 11:55 UTC; "
                   "no new order before 2026-12-04 12:05 UTC (--force orders anyway)")
    assert refusal(order, history, [], LIMITS, NOW, force=True) is None
    assert refusal(order, history, [], LIMITS, NOW + timedelta(minutes=6), force=False) is None
    # An issuance ends the streak.
    assert refusal(order, [*history, issued(("a.example.com",), 0)], [], Limits(), NOW, force=False) is None


def test_the_guard_records_and_counts_across_runs(tmp_path: Path) -> None:
    path = tmp_path / "state" / "history.sqlite"
    guard = RateGuard(History(path), LIMITS, force=False)
    orders = [Order("web1", site, (f"{site}.example.com",), False) for site in ("a", "b", "c")]
    allowed, refused = guard.admit(orders)
    assert [o.site for o in allowed] == ["a", "b"] and len(refused) == 1 and "site c: refused" in refused[0]
    for order in allowed:
        guard.settle(order, issued=True)
    guard.history.close()
    again = RateGuard(History(path), LIMITS, force=False)
    allowed, refused = again.admit([orders[2]])
    assert allowed == [] and len(refused) == 1
    kinds = [e.kind for e in again.history.events(NOW - timedelta(days=30))]
    assert kinds == ["refused", "order", "order", "issued", "issued", "refused"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_failed_names_are_read_from_old_and_new_certbot_output() -> None:
    from certfab.issue import certbot_failure, failed_domains

    new = ("Certbot failed to authenticate some domains (authenticator: webroot). The Certificate Authority "
           "reported these problems:\n  Identifier: www.web11.test\n  Type:   connection\n  Detail: refused\n\n"
           "  Identifier: web11.test\n  Type:   unauthorized\n  Detail: 404\n")
    old = new.replace("Identifier:", "Domain:")
    for output in (new, old):
        assert failed_domains(output) == ("www.web11.test", "web11.test")
        assert certbot_failure("web11", output) == ("web11: the CA could not validate www.web11.test (connection): "
                                                    "refused; web11.test (unauthorized): 404")


# --------------------------------------------------------------------------- renewals made by the hosts


def cron_record(host: str, site: str, not_before: datetime, *, result: str = "renewed",
                ran: str | None = "2026-12-03T03:17:00Z", renewed: tuple[str, ...] = ("shop",)) -> CertRecord:
    info = CertInfo(names=("www.shop.test", "shop.test"), issuer="CA", serial="1", not_before=not_before,
                    not_after=not_before + timedelta(days=90), key_type="ECDSA P-256", sha256="0" * 64,
                    lifetime=timedelta(days=90))
    status = RenewalStatus(result=result, time=ran, renewed=renewed)
    return CertRecord(host, site, info.names, info, {}, status)


RAN = datetime(2026, 12, 3, 3, 17, tzinfo=timezone.utc)


@pytest.mark.parametrize(("record", "expected"), [
    (cron_record("web1", "shop", RAN - timedelta(minutes=1)), True),
    (cron_record("web1", "shop", RAN - timedelta(minutes=1), result="nothing-due"), False),
    (cron_record("web1", "shop", RAN - timedelta(minutes=1), renewed=("other",)), False),
    (cron_record("web1", "shop", RAN - timedelta(days=3)), False),  # an older certificate: not this run's
    (cron_record("web1", "shop", RAN - timedelta(minutes=1), ran="yesterday"), False),
    (cron_record("web1", "shop", RAN - timedelta(minutes=1), ran=None), False),
    (cron_record("web1", "shop", NOW - timedelta(days=9), ran="2026-11-25T12:00:00Z"), False),  # decides nothing
])
def test_a_host_renewal_needs_its_status_and_its_certificate_to_agree(record: CertRecord, expected: bool) -> None:
    assert record.disk is not None and record.renewal_status is not None
    status = record.renewal_status
    event = host_renewal(record.host, record.site, record.disk.names, record.disk.not_before,
                         status_result=status.result, status_time=status.time, renewed=status.renewed, now=NOW)
    assert (event is not None) == expected
    if event is not None:
        assert event == Event(record.disk.not_before, "issued", "web1", "shop", ("shop.test", "www.shop.test"),
                              renewal=True, detail="renewed by the host's cron job")


def test_host_renewals_are_recorded_once_and_count_for_the_name_set(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTFAB_STATE_DIR", str(tmp_path / "state"))
    records = [cron_record("web1", "shop", RAN - timedelta(minutes=1)),
               cron_record("web2", "shop", RAN, result="nothing-due")]
    assert record_host_renewals(records, NOW) == 1
    assert record_host_renewals(records, NOW) == 0  # read again: the same event, not added twice
    history = History()
    [event] = history.events(NOW - timedelta(days=8))
    assert (event.kind, event.host, event.renewal) == ("issued", "web1", True)
    order = Order("web1", "shop", ("shop.test", "www.shop.test"), renewal=True)
    assert refusal(order, history.events(NOW - timedelta(days=8)), [], Limits(per_name_set=1), NOW,
                   force=False) is not None


def test_nothing_to_record_opens_no_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTFAB_STATE_DIR", str(tmp_path / "state"))
    assert record_host_renewals([cron_record("web1", "shop", RAN, result="nothing-due")], NOW) == 0
    assert not (tmp_path / "state" / "history.sqlite").exists()
