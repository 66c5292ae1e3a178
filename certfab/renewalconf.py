"""certbot's renewal configuration of a lineage (/etc/letsencrypt/renewal/NAME.conf): read, and one setting edited."""

from __future__ import annotations

import configparser
import re

RENEW_BEFORE_EXPIRY = "renew_before_expiry"
_TOP = "certfab-top"
_SETTING = re.compile(rf"^{RENEW_BEFORE_EXPIRY}\s*=.*$", re.MULTILINE)
# certbot writes the default as a comment on the first line of every renewal configuration.
_COMMENTED = re.compile(rf"^#\s*{RENEW_BEFORE_EXPIRY}\s*=.*$", re.MULTILINE)
_SECTION = re.compile(r"^\[", re.MULTILINE)


def _parsed(text: str) -> configparser.ConfigParser:
    """The configuration as configparser reads it; top-level keys land in a section of their own."""
    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",),
                                       comment_prefixes=("#",), inline_comment_prefixes=None)
    try:
        parser.read_string(f"[{_TOP}]\n{text}")
    except configparser.Error:
        return configparser.ConfigParser(interpolation=None)
    return parser


def renewal_params(text: str) -> dict[str, str]:
    """The [renewalparams] section (server, key_type, preferred_profile, ...); empty when unreadable."""
    parser = _parsed(text)
    return dict(parser["renewalparams"]) if parser.has_section("renewalparams") else {}


def top_level(text: str) -> dict[str, str]:
    """The settings before the first section (version, archive_dir, renew_before_expiry, ...)."""
    parser = _parsed(text)
    return dict(parser[_TOP]) if parser.has_section(_TOP) else {}


def renew_before_expiry(text: str) -> str | None:
    """The lineage's own renewal margin (top-level `renew_before_expiry`), None when unset."""
    parser = _parsed(text)
    if not parser.has_section(_TOP):
        return None
    return parser[_TOP].get(RENEW_BEFORE_EXPIRY)


def with_renew_before_expiry(text: str, value: str) -> str:
    """The configuration with `renew_before_expiry = value` at top level; every other byte kept."""
    line = f"{RENEW_BEFORE_EXPIRY} = {value}"
    section = _SECTION.search(text)
    top_end = section.start() if section else len(text)
    top = text[:top_end]
    current = _SETTING.search(top)
    if current is not None:
        return text[: current.start()] + line + text[current.end():]
    comment = _COMMENTED.search(top)
    if comment is not None:
        return text[: comment.end()] + "\n" + line + text[comment.end():]
    return line + "\n" + text


_RENEWALPARAMS = re.compile(r"^\[renewalparams\][ \t]*$", re.MULTILINE)
_AUTORENEW = re.compile(r"^autorenew\s*=.*(?:\n|$)", re.MULTILINE)


def autorenew(text: str) -> bool:
    """Whether certbot renews this lineage (`autorenew` in [renewalparams], true unless set otherwise)."""
    value = renewal_params(text).get("autorenew", "true").strip().lower()
    return value not in ("false", "no", "off", "0")


def with_autorenew(text: str, enabled: bool) -> str:
    """The configuration with certbot's automatic renewal on (the setting dropped: on is certbot's default)
    or off (`autorenew = False` in [renewalparams]); every other byte kept."""
    header = _RENEWALPARAMS.search(text)
    if header is None:
        return text if enabled else text.rstrip("\n") + "\n\n[renewalparams]\nautorenew = False\n"
    body_start = text.find("\n", header.end())
    body_start = len(text) if body_start < 0 else body_start + 1
    following = _SECTION.search(text, body_start)
    body_end = following.start() if following else len(text)
    body = text[body_start:body_end]
    body = _AUTORENEW.sub("", body)
    if not enabled:
        body = "autorenew = False\n" + body
    return text[:body_start] + body + text[body_end:]
