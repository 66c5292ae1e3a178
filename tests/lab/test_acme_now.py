"""ACME as it is now, on the real hosts web21..web23: the current certbot in the lab's image, Debian's 2.1 beside it."""

from __future__ import annotations

import re

import pytest

from certfab.lab import Lab, layout

HOST = "web21"


def certbot_version(lab: Lab, image: str) -> tuple[int, ...]:
    """The version `docker run --rm IMAGE --version` prints on the host."""
    out = lab.host_exec(HOST, ["docker", "run", "--rm", image, "--version"]).stdout
    match = re.fullmatch(r"certbot (\d+)\.(\d+)\.(\d+)\s*", out)
    assert match is not None, out
    return tuple(int(part) for part in match.groups())


def test_the_lab_default_image_carries_a_current_certbot_tagged_with_its_version(
    lab: Lab, module_hosts: tuple[str, ...]
) -> None:
    version = certbot_version(lab, layout.CERTBOT_IMAGE)
    assert version >= (4, 1, 0)
    assert layout.CERTBOT_IMAGE == "certbot/certbot:v" + ".".join(map(str, version))
    assert f"image: {layout.CERTBOT_IMAGE}" in lab.info.inventory.read_text()


def test_the_current_image_has_the_rfc2136_dns_plugin(lab: Lab, module_hosts: tuple[str, ...]) -> None:
    out = lab.host_exec(HOST, ["docker", "run", "--rm", layout.CERTBOT_IMAGE, "plugins"]).stdout
    assert "* dns-rfc2136" in out, out


@pytest.mark.parametrize("image", [layout.LEGACY_CERTBOT_IMAGE])
def test_debian_certbot_stays_as_a_second_image(lab: Lab, module_hosts: tuple[str, ...], image: str) -> None:
    assert certbot_version(lab, image)[:2] == (2, 1)
