"""The lab DNS's zone file and name checks (pure parts of certfab.lab.dns)."""

from __future__ import annotations

import pytest

from certfab.errors import LabError
from certfab.lab import dns


def test_zone_lists_every_address_of_a_round_robin_name() -> None:
    text = dns.zone_text({"shop.test": ["10.77.0.11", "10.77.0.12"], "web1.test.": ["10.77.0.11"]})
    assert "shop IN A 10.77.0.11\nshop IN A 10.77.0.12\n" in text
    assert "web1 IN A 10.77.0.11\n" in text
    assert text.startswith("$ORIGIN test.\n")


@pytest.mark.parametrize("name", ["example.com", "test", "a;b.test", "x.test.evil", "a b.test", "-x.test"])
def test_names_outside_the_lab_zone_are_refused(name: str) -> None:
    with pytest.raises(LabError, match="lab zone"):
        dns.relative_name(name)


def test_addresses_must_be_ipv4() -> None:
    with pytest.raises(LabError, match="IPv4"):
        dns.zone_text({"web1.test": ["10.77.0.11; rm"]})
