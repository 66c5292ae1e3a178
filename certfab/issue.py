"""The HTTP-01 self-test and certbot runs in a container, as one remote script (templates/remote/issue.sh.j2).

HTTP-01 sites are validated through the webroot; DNS-01 sites through certbot's DNS plugin, whose
credentials file certfab installed on the host beforehand (it is mounted read-only, never read here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from certfab.inventory import Host, Inventory, Site
from certfab.paths import ACME_CA, LETSENCRYPT_LIVE, dns_credentials_path, renewal_conf
from certfab.protocol import Reply
from certfab.shared import shared_sites, url_host
from certfab.transaction import EXITS, ancestors, lock_context

EXIT_SELFTEST_FAILED = 30
EXIT_IMAGE_MISSING = 31
EXIT_CERTBOT_FAILED = 32


_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.\d+)?(?:[-.+].*)?")
# certbot asks the CA for a profile (--preferred-profile, --required-profile) from this version on.
PROFILES_FROM = (4, 0)


def certbot_version(text: str) -> tuple[int, int] | None:
    """(major, minor) of a version like `5.8.0`, or of an image's tag like `certbot/certbot:v2.1.0`."""
    tag = text.rsplit(":", 1)[1] if ":" in text.rsplit("/", 1)[-1] else text
    match = _VERSION.fullmatch(tag.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def container_command(host: Host, *, acme_ca: bool) -> list[str]:
    """`docker run` (or podman) with the volumes certbot needs on this host."""
    args = [
        host.certbot.runtime, "run", "--rm", "--network", "host",
        "-v", "/etc/letsencrypt:/etc/letsencrypt",
        "-v", "/var/lib/letsencrypt:/var/lib/letsencrypt",
        "-v", "/var/log/letsencrypt:/var/log/letsencrypt",
        "-v", f"{host.webroot}:{host.webroot}",
    ]
    if acme_ca:
        args += ["-v", f"{ACME_CA}:{ACME_CA}:ro", "-e", f"REQUESTS_CA_BUNDLE={ACME_CA}"]
    if host.dns01 is not None:
        credentials = dns_credentials_path(host.dns01.plugin)
        args += ["-v", f"{credentials}:{credentials}:ro"]
    args.append(host.certbot.image)
    return args


def certonly_args(site: Site, host: Host, inventory: Inventory, *, force: bool) -> list[str]:
    """certbot arguments for one site's certificate: all its domains as SANs, named after the site."""
    args = ["certonly", *authenticator_args(site, host), "--cert-name", site.name]
    args += [
        "--non-interactive", "--agree-tos", "-m", inventory.acme.email,
        "--server", inventory.acme.server, "--key-type", inventory.acme.key_type,
        "--expand", "--no-random-sleep-on-renew",
    ]
    if force:
        args.append("--force-renewal")
    if site.profile is not None:
        # certbot keeps the profile in the lineage's renewal configuration: renewals ask for it too.
        args += ["--required-profile" if site.profile_required else "--preferred-profile", site.profile]
    for domain in site.domains:
        args += ["-d", domain]
    return args


def authenticator_args(site: Site, host: Host) -> list[str]:
    """How certbot proves control: the webroot (HTTP-01), or the host's DNS plugin (DNS-01).

    certbot stores these in the lineage's renewal config, so `certbot renew` on the host repeats them.
    """
    if not site.dns01:
        return ["--webroot", "-w", host.webroot]
    assert host.dns01 is not None  # the inventory requires DNS-01 settings for a DNS-01 site
    plugin = host.dns01.plugin
    args = [f"--dns-{plugin}", f"--dns-{plugin}-credentials", dns_credentials_path(plugin)]
    if host.dns01.propagation_seconds is not None:
        args += [f"--dns-{plugin}-propagation-seconds", str(host.dns01.propagation_seconds)]
    return args


def issue_context(run_id: str, host: Host, inventory: Inventory, orders: list[tuple[Site, bool]],
                  *, acme_ca: bool) -> dict[str, object]:
    """What templates/remote/issue.sh.j2 needs: self-test every domain, then one certbot run per order.

    It answers with an `issued` frame (argument: the site, body: the new cert.pem) per certificate,
    followed by `renewal-conf` (the site; certbot's renewal configuration of the lineage),
    `selftest-failed` (domain; what the probe got), `certbot-failed` (site; the tail of certbot's
    output) or `image-missing` (the pull's last line).
    """
    base = container_command(host, acme_ca=acme_ca)
    return {
        **lock_context(run_id),
        "exits": {**EXITS, "image_missing": EXIT_IMAGE_MISSING, "selftest": EXIT_SELFTEST_FAILED,
                  "certbot": EXIT_CERTBOT_FAILED},
        "runtime": host.certbot.runtime,
        "image": host.certbot.image,
        "webroot": host.webroot,
        "webroot_parents": ancestors(host.webroot),
        # Only HTTP-01 names are self-tested: a DNS-01 site may have no port 80 at all.
        "domains": [domain for site, _force in orders if not site.dns01 for domain in site.domains],
        # A shared site's names must answer on every backend, each asked directly at its own address.
        "backend_probes": backend_probes(inventory, [site for site, _force in orders if not site.dns01]),
        "orders": [
            {"site": site.name, "cert": f"{LETSENCRYPT_LIVE}/{site.name}/cert.pem",
             "renewal_conf": renewal_conf(site.name),
             "command": base + certonly_args(site, host, inventory, force=force)}
            for site, force in orders
        ],
    }


def backend_probes(inventory: Inventory, sites: list[Site]) -> list[dict[str, str]]:
    """(domain, backend, address) for every name of every shared site ordered, on every backend."""
    everything = shared_sites(inventory)
    return [
        {"domain": domain, "backend": backend.name, "address": url_host(backend.address)}
        for site in sites if site.name in everything
        for backend in everything[site.name].backends
        for domain in site.domains
    ]


@dataclass(frozen=True)
class IssueResult:
    """What the issue script reported: new certificates (public PEM) and failures."""

    issued: dict[str, str]
    renewal_confs: dict[str, str]
    selftest_failures: list[str]
    certbot_failures: list[str]
    image_missing: str | None
    # Per site: the names the CA failed to validate (certbot's Domain lines), for the back-off.
    failed_validations: dict[str, tuple[str, ...]] = field(default_factory=dict)


# certbot before 5 says Domain:, later versions Identifier: (names and IP addresses alike).
_PROBLEM = re.compile(r"^ *(Domain|Identifier|Type|Detail): *(.*)$")
_NAMED = ("Domain", "Identifier")


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)


def failed_domains(output: str) -> tuple[str, ...]:
    """The names certbot says the CA could not validate (its `Domain:` lines)."""
    found = []
    for line in output.splitlines():
        match = _PROBLEM.match(_printable(line))
        if match is not None and match.group(1) in _NAMED and match.group(2).strip():
            found.append(match.group(2).strip().lower())
    return tuple(dict.fromkeys(found))


def certbot_failure(site: str, output: str) -> str:
    """One line for a failed certbot run: its per-domain validation problems, else its last lines."""
    problems: list[dict[str, str]] = []
    lines = [_printable(line) for line in output.splitlines()]
    for line in lines:
        match = _PROBLEM.match(line)
        if match is None:
            continue
        key, value = match.groups()
        if key in _NAMED or not problems:
            problems.append({})
        problems[-1]["Domain" if key in _NAMED else key] = value.strip()
    if problems:
        parts = []
        for problem in problems:
            kind = f" ({problem['Type']})" if problem.get("Type") else ""
            parts.append(f"{problem.get('Domain', '?')}{kind}: {problem.get('Detail', 'no detail')}")
        detail = "the CA could not validate " + "; ".join(parts)
    else:
        detail = " ".join([line for line in lines if line.strip()][-4:])
    return site + ": " + (" ".join(detail.split()) or "no output")


def parse_issue_reply(reply: Reply) -> IssueResult:
    """The issue script's frames as an IssueResult."""
    issued = {frame.arg: frame.body.decode("ascii", errors="replace") for frame in reply.all("issued")}
    confs = {frame.arg: frame.body.decode("utf-8", errors="surrogateescape") for frame in reply.all("renewal-conf")}
    selftest = [
        f"{frame.arg}: the challenge probe over http://{frame.arg}/ got {_printable(frame.text)!r}"
        for frame in reply.all("selftest-failed")
    ] + [
        f"{_printable(frame.arg)}: the challenge probe got {_printable(frame.text)!r}"
        for frame in reply.all("backend-selftest-failed")
    ]
    certbot = [certbot_failure(frame.arg, frame.text) for frame in reply.all("certbot-failed")]
    failed = {frame.arg: failed_domains(frame.text) for frame in reply.all("certbot-failed")}
    image = reply.get("image-missing")
    return IssueResult(issued, confs, selftest, certbot,
                       " ".join(_printable(image.text).split()) if image is not None else None,
                       {site: names for site, names in failed.items() if names})
