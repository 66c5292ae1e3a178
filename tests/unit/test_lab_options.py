"""Options of `inv lab.up` that shape what the lab offers: certificate lifetime, image identity."""

from __future__ import annotations

import pytest

from certfab.errors import LabError
from certfab.lab import layout
from certfab.lab.pebble import parse_lifetime


@pytest.mark.parametrize(("text", "seconds"), [("160h", 576000), ("45d", 3888000), ("90m", 5400), ("3600s", 3600)])
def test_cert_lifetime_durations(text: str, seconds: int) -> None:
    assert parse_lifetime(text) == seconds


@pytest.mark.parametrize("text", ["", "160", "1.5h", "-3d", "0h", "10y", "30s", "6000d", "160h;reboot"])
def test_wrong_cert_lifetimes_are_refused(text: str) -> None:
    with pytest.raises(LabError, match="--cert-lifetime"):
        parse_lifetime(text)


def test_the_default_image_is_the_current_certbot_and_debians_stays_beside_it() -> None:
    assert layout.CERTBOT_IMAGE == f"certbot/certbot:v{layout.CURRENT_CERTBOT_VERSION}"
    assert [tag for tag, _tar in layout.IMAGES] == [layout.CERTBOT_IMAGE, layout.LEGACY_CERTBOT_IMAGE]
