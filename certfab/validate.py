"""Pure checks for values that may end up in shell commands, nginx files, paths or certificates.

Every checker takes the raw value, returns it normalised, or raises `Invalid` whose message is meant to
follow the value's repr: ``f"{value!r} {error}"`` reads as one sentence.  The checks are whitelists:
a character is refused unless it is known to be harmless where the value is used.

Internationalised names use IDNA 2008 with UTS 46 mapping when the `idna` package is importable, else the
standard library's IDNA 2003 codec (which, for instance, maps 'ß' to 'ss' instead of keeping it).
"""

from __future__ import annotations

import encodings.idna as _idna2003
import ipaddress
import re
import unicodedata
from collections.abc import Callable
from types import ModuleType

_idna: ModuleType | None
try:  # IDNA 2008 + UTS 46 when the `idna` package is installed; else the stdlib's IDNA 2003
    import idna as _idna_module

    _idna = _idna_module
except ImportError:  # pragma: no cover - depends on the environment
    _idna = None

__all__ = [
    "IDNA_IMPLEMENTATION",
    "Invalid",
    "acme_url",
    "address",
    "dns_name",
    "email",
    "group_name",
    "host_name",
    "host_path",
    "image_ref",
    "local_path",
    "site_name",
    "upstream_url",
    "user_name",
]

IDNA_IMPLEMENTATION = "idna2008" if _idna is not None else "idna2003"


class Invalid(ValueError):
    """A value was refused; the message says what is wrong and reads well after the value's repr."""


class _Reason(Exception):
    """Internal: the detail of why a name was refused, to be wrapped in a field-specific message."""


# Characters that other separators in some scripts map to under IDNA; treated as label separators.
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
# Scripts that may be mixed inside one label (UTS 39 "highly restrictive"), e.g. Japanese names.
_SCRIPT_SETS = (
    frozenset({"Latin", "Han", "Hiragana", "Katakana"}),
    frozenset({"Latin", "Han", "Bopomofo"}),
    frozenset({"Latin", "Han", "Hangul"}),
)
_LDH_LABEL = re.compile(r"[a-z0-9-]+")
_SCRIPT_ALIASES = {"Cjk": "Han", "Ideographic": "Han"}
_NO_SCRIPT = {"Modifier", "Katakana-Hiragana"}


def _string(value: object, expected: str) -> str:
    """Return value if it is a str, else refuse it naming what was expected."""
    if not isinstance(value, str):
        raise Invalid(f"is not a string (expected {expected})")
    return value


def _first_bad_char(value: str, allowed: Callable[[str], bool]) -> str | None:
    """Return the first character of value that `allowed` refuses, or None."""
    for ch in value:
        if not allowed(ch):
            return ch
    return None


def _char_reason(ch: str) -> str:
    """Describe a refused character in a way that stays on one line."""
    hint = "; use lower case" if ch.isascii() and ch.isupper() else ""
    return f"character {ch!r} not allowed{hint}"


def _script_of(ch: str) -> str | None:
    """Return the script of a letter (from its Unicode name), or None for marks, digits and the like."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    first = unicodedata.name(ch, "UNKNOWN").split(" ")[0].title()
    if first in _NO_SCRIPT:
        return None
    return _SCRIPT_ALIASES.get(first, first)


def _check_scripts(ulabel: str) -> None:
    """Refuse a Unicode label that mixes scripts, the usual trick of look-alike (confusable) names."""
    scripts: dict[str, str] = {}
    for ch in ulabel:
        cat = unicodedata.category(ch)
        if not ch.isascii() and cat[0] not in "LMN":
            raise _Reason(f"character {ch!r} not allowed in an internationalised name")
        script = _script_of(ch)
        if script is not None:
            scripts.setdefault(script, ch)
    if len(scripts) <= 1 or any(set(scripts) <= allowed for allowed in _SCRIPT_SETS):
        return
    names = sorted(scripts, key=lambda s: (s != "Latin", s))
    odd = scripts[names[1]]
    raise _Reason(
        f"label {ulabel!r} mixes {' and '.join(names)} letters, as look-alike names do: "
        f"{odd!r} is {unicodedata.name(odd, '?')}"
    )


def _to_alabel(label: str) -> str:
    """Convert one non-ASCII label to its A-label (xn--...), lower case."""
    try:
        if _idna is not None:
            out = _idna.encode(label, uts46=True, std3_rules=True, transitional=False)
            return bytes(out).decode("ascii")
        return _idna2003.ToASCII(label).decode("ascii").lower()
    except (UnicodeError, ValueError) as exc:
        raise _Reason(f"label {label!r} is not a valid internationalised name: {_one_line(exc)}") from None


def _to_ulabel(alabel: str) -> str:
    """Decode one A-label (xn--...) to Unicode, refusing invalid punycode."""
    try:
        if _idna is not None:
            return str(_idna.decode(alabel))
        return _idna2003.ToUnicode(alabel)
    except (UnicodeError, ValueError):
        raise _Reason(f"label {alabel!r} is not valid punycode") from None


def _one_line(exc: BaseException) -> str:
    """Render an exception's message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _label(label: str) -> str:
    """Check one label of a DNS name and return it as a lower-case ASCII (A-)label."""
    if not label:
        raise _Reason("empty label")
    if label.isascii():
        ascii_label = label.lower()
        if ascii_label[2:4] == "--":
            if not ascii_label.startswith("xn--"):
                raise _Reason(f"label {ascii_label!r} has '--' in positions 3-4, reserved for IDNs")
            ulabel = _to_ulabel(ascii_label)
            _check_scripts(ulabel)
            if _to_alabel(ulabel) != ascii_label:
                raise _Reason(f"label {ascii_label!r} is not a valid IDN A-label")
    else:
        ascii_label = _to_alabel(label)
        # IDNA mapping (NFKC) can turn e.g. a fullwidth ';' into an ASCII one: check the result again.
        if not _LDH_LABEL.fullmatch(ascii_label):
            raise _Reason(f"label {label!r} maps to {ascii_label!r}, which is not a valid label")
        _check_scripts(_to_ulabel(ascii_label))
    if len(ascii_label) > 63:
        raise _Reason(f"label {ascii_label[:20] + '...'!r} is {len(ascii_label)} characters; at most 63")
    if ascii_label.startswith("-") or ascii_label.endswith("-"):
        raise _Reason(f"label {ascii_label!r} starts or ends with '-'")
    return ascii_label


def _dns(value: str, min_labels: int) -> str:
    """Normalise a DNS name (IDN -> A-labels, lower case, no trailing dot) or raise _Reason."""
    if not value:
        raise _Reason("empty")
    for ch in value:
        if ch.isascii():
            if not (ch.isalnum() or ch in ".-"):
                raise _Reason(_char_reason(ch))
        elif unicodedata.category(ch)[0] in "CZ":
            raise _Reason(_char_reason(ch))
    value = value.translate(_DOTS)
    if value.startswith("-"):
        raise _Reason("must not start with '-'")
    if ".." in value:
        raise _Reason("empty label ('..')")
    if value.startswith("."):
        raise _Reason("must not start with '.'")
    value = value.removesuffix(".")
    labels = [_label(label) for label in value.split(".")]
    name = ".".join(labels)
    if len(labels) < min_labels:
        raise _Reason("needs at least two labels, like example.com")
    if len(name) > 253:
        raise _Reason(f"{len(name)} characters; at most 253")
    if labels[-1].isdigit():
        raise _Reason("the last label is all digits")
    return name


def _is_ip(value: str) -> bool:
    """Tell whether value parses as an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def dns_name(value: object) -> str:
    """Check a certificate domain name and return it as lower-case A-labels without a trailing dot."""
    text = _string(value, "a DNS name")
    if "*" in text:
        raise Invalid("is a wildcard; wildcards need a DNS-01 site (challenge: dns-01)")
    if _is_ip(text):
        raise Invalid("is an IP address; certificates here are issued for DNS names only")
    try:
        return _dns(text, min_labels=2)
    except _Reason as why:
        raise Invalid(f"is not a valid DNS name ({why})") from None


def wildcard_name(value: object) -> str:
    """Check a wildcard certificate name (`*.` and a DNS name of at least two labels), normalised."""
    text = _string(value, "a DNS name")
    if not text.startswith("*.") or "*" in text[2:]:
        raise Invalid("is not a valid wildcard (only a whole first label may be `*`, as in *.example.com)")
    return "*." + dns_name(text[2:])


def address(value: object) -> str:
    """Check an address to connect to (IP or host name, one label allowed) and return it normalised."""
    text = _string(value, "an IP address or host name")
    if "%" in text:
        raise Invalid(
            "is not a valid address (character '%' not allowed; scoped IPv6 addresses are not supported)"
        )
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if text.startswith("[") and text.endswith("]"):
        raise Invalid("is not a valid address (write IPv6 addresses without brackets)")
    try:
        return _dns(text, min_labels=1)
    except _Reason as why:
        raise Invalid(f"is not a valid address ({why})") from None


def _token(value: object, what: str, first: str, rest: str, max_len: int, *, lower_hint: bool) -> str:
    """Check a name made of a first-character class and a rest-character class (regex classes)."""
    text = _string(value, f"a {what}")
    if not text:
        raise Invalid(f"is not a valid {what} (empty)")
    first_rx = re.compile(f"[{first}]")
    rest_rx = re.compile(f"[{rest}]")
    if not first_rx.fullmatch(text[0]):
        if text[0] == "-":
            raise Invalid(f"is not a valid {what} (must not start with '-')")
        if rest_rx.fullmatch(text[0]):
            raise Invalid(f"is not a valid {what} (must not start with {text[0]!r})")
        raise Invalid(f"is not a valid {what} ({_char_reason(text[0]) if lower_hint else _bare(text[0])})")
    bad = _first_bad_char(text, lambda ch: bool(rest_rx.fullmatch(ch)))
    if bad is not None:
        raise Invalid(f"is not a valid {what} ({_char_reason(bad) if lower_hint else _bare(bad)})")
    if ".." in text:
        raise Invalid(f"is not a valid {what} ('..' not allowed)")
    if len(text) > max_len:
        raise Invalid(f"is not a valid {what} ({len(text)} characters; at most {max_len})")
    return text


def _bare(ch: str) -> str:
    """Describe a refused character without the lower-case hint."""
    return _char_reason(ch).replace("; use lower case", "")


def host_name(value: object) -> str:
    """Check an inventory host name ([a-z0-9][a-z0-9._-]*), as used with `fab -H`."""
    return _token(value, "host name", "a-z0-9", "a-z0-9._-", 253, lower_hint=True)


def group_name(value: object) -> str:
    """Check an inventory group name (same rules as host names)."""
    return _token(value, "group name", "a-z0-9", "a-z0-9._-", 253, lower_hint=True)


def site_name(value: object) -> str:
    """Check a site name, which names the certificate lineage and files on the host."""
    return _token(value, "site name", "a-z0-9", "a-z0-9._-", 63, lower_hint=True)


def user_name(value: object) -> str:
    """Check a remote login name (POSIX-portable characters, at most 32)."""
    return _token(value, "user name", "A-Za-z_", "A-Za-z0-9_.-", 32, lower_hint=False)


_PATH_CHAR = re.compile(r"[A-Za-z0-9._/+@-]")


def _charset_text(value: object, expected: str, what: str, allowed: re.Pattern[str]) -> str:
    """A non-empty string made only of characters `allowed` matches, or Invalid naming the first bad one."""
    text = _string(value, expected)
    if not text:
        raise Invalid(f"{what} (empty)")
    bad = _first_bad_char(text, lambda ch: bool(allowed.fullmatch(ch)))
    if bad is not None:
        raise Invalid(f"{what} ({_bare(bad)})")
    return text


def host_path(value: object) -> str:
    """Check an absolute path on a managed host; it is used in nginx files and container mounts."""
    what = "is not a valid path on the host"
    text = _charset_text(value, "an absolute path", what, _PATH_CHAR)
    if not text.startswith("/"):
        raise Invalid(f"{what} (must be absolute, starting with '/')")
    if ".." in text:
        raise Invalid(f"{what} ('..' not allowed)")
    if "//" in text:
        raise Invalid(f"{what} (empty component '//')")
    if len(text) > 1024:
        raise Invalid(f"{what} ({len(text)} characters; at most 1024)")
    text = text.rstrip("/")
    if not text:
        raise Invalid(f"{what} (must not be '/')")
    if "." in text.split("/"):
        raise Invalid(f"{what} (component '.' not allowed)")
    return text


_LOCAL_PATH_REFUSED = set("$`;'\"{}\\")


def local_path(value: object) -> str:
    """Check a path on this machine (keys, CA bundles); relative paths and spaces are allowed."""
    text = _string(value, "a file path")
    what = "is not a valid file path"
    if not text:
        raise Invalid(f"{what} (empty)")
    bad = _first_bad_char(
        text, lambda ch: ch not in _LOCAL_PATH_REFUSED and unicodedata.category(ch)[0] != "C"
    )
    if bad is not None:
        raise Invalid(f"{what} ({_bare(bad)})")
    if len(text) > 4096:
        raise Invalid(f"{what} ({len(text)} characters; at most 4096)")
    return text


_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9._+-]")


def email(value: object) -> str:
    """Check a simple `local@domain` address; the domain is normalised like a DNS name."""
    text = _string(value, "an e-mail address")
    what = "is not a valid e-mail address"
    if text.count("@") != 1:
        raise Invalid(f"{what} (expected exactly one '@', as in admin@example.com)")
    local, domain = text.split("@")
    if not local:
        raise Invalid(f"{what} (nothing before '@')")
    bad = _first_bad_char(local, lambda ch: bool(_EMAIL_LOCAL.fullmatch(ch)))
    if bad is not None:
        raise Invalid(f"{what} ({_bare(bad)})")
    if local[0] in ".-" or local.endswith(".") or ".." in local:
        raise Invalid(f"{what} (the part before '@' must not start or end with '.' or '-', nor contain '..')")
    if len(local) > 64:
        raise Invalid(f"{what} ({len(local)} characters before '@'; at most 64)")
    try:
        normal = _dns(domain, min_labels=2)
    except _Reason as why:
        raise Invalid(f"{what} (domain: {why})") from None
    if len(local) + 1 + len(normal) > 254:
        raise Invalid(f"{what} (longer than 254 characters)")
    return f"{local}@{normal}"


_DOMAIN_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_IMAGE_REGISTRY = re.compile(rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?")
_IMAGE_PATH = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_IMAGE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_IMAGE_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_IMAGE_CHAR = re.compile(r"[A-Za-z0-9._/:@-]")


def image_ref(value: object) -> str:
    """Check a pinned container image reference: name:tag, name@sha256:..., or both; never `latest`."""
    what = "is not a valid image reference"
    text = _charset_text(value, "an image reference", what, _IMAGE_CHAR)
    rest, _, digest = text.partition("@")
    if "@" in text and not _IMAGE_DIGEST.fullmatch(digest):
        raise Invalid(f"{what} (digest must be sha256: and 64 lower-case hex digits)")
    name, tag = rest, ""
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        name, tag = rest[:colon], rest[colon + 1 :]
        if not _IMAGE_TAG.fullmatch(tag):
            raise Invalid(f"{what} (tag {tag!r} is not valid)")
    registry, _, repo = name.partition("/")
    # As in docker: the first component names a registry only if it looks like a host name.
    if not repo or not ("." in registry or ":" in registry or registry == "localhost"):
        registry, repo = "", name
    if (
        len(name) > 255
        or not _IMAGE_PATH.fullmatch(repo)
        or (registry and not _IMAGE_REGISTRY.fullmatch(registry))
    ):
        raise Invalid(f"{what} (expected a lower-case name like certbot/certbot:v5.1.0)")
    if not tag and not digest:
        raise Invalid("has no tag; pin a version, e.g. certbot/certbot:v5.1.0")
    if tag.lower() == "latest":
        raise Invalid("uses the tag 'latest'; pin a version, e.g. certbot/certbot:v5.1.0")
    return text


_URL_CHAR = re.compile(r"[A-Za-z0-9._~:/%\[\]-]")
_URL = re.compile(
    r"(?P<scheme>[A-Za-z]+)://(?P<host>\[[^\]/]*\]|[^:/\[\]]*)(?::(?P<port>[^/]*))?(?P<path>/.*)?"
)
_URL_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_URL_PATH = re.compile(r"/[A-Za-z0-9._~/%-]*")


def _url(text: str, what: str, schemes: tuple[str, ...]) -> str:
    """Check a plain URL (scheme, host, optional port and path; no user, query or fragment)."""
    if not text:
        raise Invalid(f"{what} (empty)")
    bad = _first_bad_char(text, lambda ch: bool(_URL_CHAR.fullmatch(ch)))
    if bad is not None:
        raise Invalid(f"{what} ({_bare(bad)})")
    match = _URL.fullmatch(text)
    if match is None or match["scheme"].lower() not in schemes:
        raise Invalid(f"{what} (must start with {' or '.join(s + '://' for s in schemes)})")
    host = match["host"]
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise Invalid(f"{what} ({host!r} is not an IPv6 address)") from None
    elif not _URL_HOST.fullmatch(host) or ".." in host:
        raise Invalid(f"{what} (host {host!r} is not valid)")
    port = match["port"]
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise Invalid(f"{what} (port {port!r} is not 1-65535)")
    path = match["path"] or ""
    if path and (not _URL_PATH.fullmatch(path) or ".." in path):
        raise Invalid(f"{what} (path {path!r} is not valid)")
    netloc = host.lower() + (f":{port}" if port is not None else "")
    return f"{match['scheme'].lower()}://{netloc}{path}"


def upstream_url(value: object) -> str:
    """Check a proxy target for a managed site: http(s)://host[:port][/path]."""
    text = _string(value, "an http:// or https:// URL")
    return _url(text, "is not a valid upstream URL", ("http", "https"))


def acme_url(value: object) -> str:
    """Check an ACME directory URL; only https:// is accepted."""
    text = _string(value, "an https:// URL")
    if text.lower().startswith("http://"):
        raise Invalid("uses http://; the ACME server must be reached over https://")
    return _url(text, "is not a valid ACME directory URL", ("https",))
