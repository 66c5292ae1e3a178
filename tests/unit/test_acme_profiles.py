"""ACME profiles: what the directory offers, the preflight verdict, and the certbot flags."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from test_desired import EXAMPLE, facts, inventory

from certfab.acmedir import AcmeDirectory, check_profiles, parse_directory
from certfab.desired import preflight
from certfab.errors import PreflightError
from certfab.issue import certonly_args

URL = "https://acme.example/dir"
LE = {"newNonce": "x", "renewalInfo": "https://acme.example/ari",
      "meta": {"profiles": {"classic": "90 days", "tlsserver": "45 days", "shortlived": "160 hours"}}}
PEBBLE_24 = {"newNonce": "x", "meta": {"termsOfService": "data:text/plain,Do%20what%20thou%20wilt"}}


def test_profiles_and_renewal_info_are_read_from_the_directory() -> None:
    le = parse_directory(URL, json.dumps(LE).encode())
    assert le.profiles == {"classic", "tlsserver", "shortlived"} and le.renewal_info and le.error is None
    pebble = parse_directory(URL, json.dumps(PEBBLE_24).encode())
    assert pebble.profiles == frozenset() and not pebble.renewal_info
    assert parse_directory(URL, b"<html>").error == "the directory is not JSON"
    assert parse_directory(URL, b"[1]").error == "the directory is not a JSON object"


def site_with(profile: str | None, required: bool = False) -> dict[str, object]:
    return {**EXAMPLE, "acme": {"profile": profile, "profile_required": required}}


def test_a_preferred_profile_the_server_lacks_is_a_warning_that_says_it_falls_back() -> None:
    host = inventory([site_with("shortlived")]).host("web1")
    [warning] = check_profiles(host, parse_directory(URL, json.dumps(PEBBLE_24).encode()))
    assert warning == (f"web1: site example: preferred ACME profile shortlived not offered by {URL}: it offers no "
                       "profile shortlived (offered: none); certbot falls back to the server's default profile")
    assert check_profiles(host, parse_directory(URL, json.dumps(LE).encode())) == []


def test_a_required_profile_the_server_lacks_is_one_line() -> None:
    host = inventory([site_with("shortlived", True)]).host("web1")
    with pytest.raises(PreflightError) as info:
        check_profiles(host, parse_directory(URL, json.dumps(PEBBLE_24).encode()))
    assert str(info.value) == (f"web1: site example: acme.profile shortlived is required, but the ACME server {URL} "
                               "cannot give it: it offers no profile shortlived (offered: none); nothing was changed")
    with pytest.raises(PreflightError, match="its directory could not be read \\(timed out\\)"):
        check_profiles(host, AcmeDirectory(URL, error="timed out"))


@pytest.mark.parametrize(("profile", "required", "flags"), [
    (None, False, []),
    ("tlsserver", False, ["--preferred-profile", "tlsserver"]),
    ("shortlived", True, ["--required-profile", "shortlived"]),
])
def test_certbot_is_asked_for_the_profile(profile: str | None, required: bool, flags: list[str]) -> None:
    inv = inventory([site_with(profile, required)])
    host = inv.host("web1")
    args = certonly_args(host.sites[0], host, inv, force=False)
    found = [a for i, a in enumerate(args) if a.endswith("-profile") or (i and args[i - 1].endswith("-profile"))]
    assert found == flags


def test_a_profile_with_a_certbot_older_than_4_0_is_a_preflight_error() -> None:
    host = inventory([site_with("shortlived")]).host("web1")
    old = replace(host, certbot=replace(host.certbot, image="certbot/certbot:v2.1.0"))
    with pytest.raises(PreflightError) as info:
        preflight(old, facts())
    assert str(info.value) == ("web1: site example: acme.profile shortlived needs certbot >= 4.0, but "
                               "certbot/certbot:v2.1.0 is certbot 2.1")
    preflight(replace(host, certbot=replace(host.certbot, image="certbot/certbot:v4.0.0")), facts())
