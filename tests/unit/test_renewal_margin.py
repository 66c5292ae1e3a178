"""Renewal relative to lifetime: the keep rule, certbot's renew_before_expiry, and the renewal configuration edit."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from certfactory import make_certificate

from certfab import renewalconf
from certfab.certs import parse_pem, renew_before_expiry, renewal_margin
from certfab.desired import renewal_conf_write
from certfab.transaction import text_sha256

NOW = datetime(2026, 12, 4, 12, tzinfo=timezone.utc)
SHORT = timedelta(hours=160)

CONF = """\
# renew_before_expiry = 30 days
version = 2.1.0
archive_dir = /etc/letsencrypt/archive/web1
cert = /etc/letsencrypt/live/web1/cert.pem

# Options used in the renewal process
[renewalparams]
account = 0123
server = https://10.77.0.1:14000/dir
key_type = ecdsa
"""


@pytest.mark.parametrize(
    ("lifetime", "margin"),
    [
        (timedelta(days=90), timedelta(days=30)),
        (timedelta(days=45), timedelta(days=15)),
        (timedelta(days=10), timedelta(days=10) / 3),
        (SHORT, timedelta(hours=80)),
    ],
)
def test_a_third_of_the_lifetime_is_the_margin_and_half_under_ten_days(lifetime: timedelta, margin: timedelta) -> None:
    assert renewal_margin(lifetime) == margin


def test_a_fresh_six_day_certificate_is_kept_and_due_with_half_its_lifetime_left() -> None:
    fresh = parse_pem(make_certificate(["a.test"], not_after=NOW + SHORT, lifetime=SHORT))
    assert not fresh.renewal_due(NOW)
    assert not fresh.renewal_due(NOW + timedelta(hours=79))
    assert fresh.renewal_due(NOW + timedelta(hours=81))


def test_a_ninety_day_certificate_is_due_with_a_third_left() -> None:
    cert = parse_pem(make_certificate(["a.test"], not_after=NOW + timedelta(days=31)))
    assert not cert.renewal_due(NOW)
    assert cert.renewal_due(NOW + timedelta(days=2))


@pytest.mark.parametrize(
    ("lifetime", "value"),
    [(timedelta(days=90), "30 days"), (timedelta(days=45), "15 days"), (SHORT, "80 hours"),
     (SHORT - timedelta(seconds=1), "79 hours")],
)
def test_renew_before_expiry_in_units_certbot_reads(lifetime: timedelta, value: str) -> None:
    assert renew_before_expiry(lifetime) == value


def test_the_setting_goes_under_certbots_comment_and_nothing_else_moves() -> None:
    edited = renewalconf.with_renew_before_expiry(CONF, "80 hours")
    assert edited == CONF.replace("30 days\n", "30 days\nrenew_before_expiry = 80 hours\n", 1)
    assert renewalconf.renew_before_expiry(edited) == "80 hours"
    again = renewalconf.with_renew_before_expiry(edited, "15 days")
    assert again == CONF.replace("30 days\n", "30 days\nrenew_before_expiry = 15 days\n", 1)


def test_without_certbots_comment_the_setting_goes_first() -> None:
    text = CONF.split("\n", 1)[1]
    assert renewalconf.with_renew_before_expiry(text, "5 days") == "renew_before_expiry = 5 days\n" + text


def test_a_setting_inside_a_section_is_not_taken_for_the_top_level_one() -> None:
    text = CONF + "renew_before_expiry = 1 days\n"
    edited = renewalconf.with_renew_before_expiry(text, "30 days")
    assert edited.startswith("# renew_before_expiry = 30 days\nrenew_before_expiry = 30 days\n")
    assert edited.endswith("renew_before_expiry = 1 days\n")


def test_renewal_params_are_read() -> None:
    params = renewalconf.renewal_params(CONF)
    assert params["server"] == "https://10.77.0.1:14000/dir" and params["key_type"] == "ecdsa"
    assert renewalconf.renewal_params("not [ a config") == {}


def test_the_renewal_conf_write_expects_the_file_as_read_and_converges() -> None:
    pem = make_certificate(["a.test"], not_after=NOW + SHORT, lifetime=SHORT)
    write = renewal_conf_write("web1", pem, CONF)
    assert write is not None
    assert write.path == "/etc/letsencrypt/renewal/web1.conf" and write.mode is None
    assert write.expected_sha256 == text_sha256(CONF)
    assert "renew_before_expiry = 80 hours\n" in write.content
    assert renewal_conf_write("web1", pem, write.content) is None
    assert renewal_conf_write("web1", pem, "") is None
    assert renewal_conf_write("web1", "garbage", CONF) is None


def test_autorenew_is_switched_off_in_renewalparams_and_back_on_with_every_other_byte_kept() -> None:
    assert renewalconf.autorenew(CONF)
    off = renewalconf.with_autorenew(CONF, False)
    assert not renewalconf.autorenew(off)
    assert off == CONF.replace("[renewalparams]\n", "[renewalparams]\nautorenew = False\n", 1)
    assert renewalconf.with_autorenew(off, False) == off
    assert renewalconf.with_autorenew(off, True) == CONF
    assert renewalconf.with_autorenew(CONF, True) == CONF
    # A section after [renewalparams] is left alone, and a file without the section gets one.
    tail = CONF + "[acme_renewal_info]\nautorenew = something else\n"
    assert renewalconf.with_autorenew(tail, False).endswith("[acme_renewal_info]\nautorenew = something else\n")
    assert renewalconf.with_autorenew("version = 2.1.0\n", False) == (
        "version = 2.1.0\n\n[renewalparams]\nautorenew = False\n")


def test_a_lineage_managed_again_is_renewed_again() -> None:
    pem = make_certificate(["a.test"], not_after=NOW + timedelta(days=80), lifetime=timedelta(days=90))
    kept = renewalconf.with_autorenew(renewalconf.with_renew_before_expiry(CONF, "30 days"), False)
    write = renewal_conf_write("web1", pem, kept)
    assert write is not None and renewalconf.autorenew(write.content)
    assert "autorenew" not in write.content
    assert renewal_conf_write("web1", pem, write.content) is None
