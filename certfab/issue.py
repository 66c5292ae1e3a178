"""The HTTP-01 self-test and certbot runs in a container, as one remote script (pure rendering)."""

from __future__ import annotations

import base64
import re
import shlex
from dataclasses import dataclass

from certfab.inventory import Host, Inventory, Site
from certfab.paths import ACME_CA
from certfab.transaction import PREAMBLE, lock_check

EXIT_SELFTEST_FAILED = 30
EXIT_IMAGE_MISSING = 31
EXIT_CERTBOT_FAILED = 32


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
    args.append(host.certbot.image)
    return args


def certonly_args(site: Site, host: Host, inventory: Inventory, *, force: bool) -> list[str]:
    """certbot arguments for one site's certificate: all its domains as SANs, named after the site."""
    args = [
        "certonly", "--webroot", "-w", host.webroot, "--cert-name", site.name,
        "--non-interactive", "--agree-tos", "-m", inventory.acme.email,
        "--server", inventory.acme.server, "--key-type", inventory.acme.key_type,
        "--expand", "--no-random-sleep-on-renew",
    ]
    if force:
        args.append("--force-renewal")
    for domain in site.domains:
        args += ["-d", domain]
    return args


SELFTEST = r"""
fetch() {
    if command -v curl >/dev/null 2>&1; then curl -sS -m 10 -o - "$1" 2>&1
    elif command -v wget >/dev/null 2>&1; then wget -q -T 10 -O - "$1" 2>&1
    elif command -v python3 >/dev/null 2>&1; then
        python3 -c 'import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1],timeout=10).read().decode(),end="")' "$1" 2>&1 | tail -n 1
    else echo "no curl, wget or python3 on the host"; fi
}
# nginx applies a reload asynchronously (old workers answer for a moment, longer on big configurations):
# a wrong answer is retried, within one shared budget of about 5 s so that real failures stay quick.
retries=10
probe_until() {
    while :; do
        got=$(fetch "$1" | head -c 300 | tr -cd '\40-\176')
        [ "$got" = "$2" ] && return 0
        [ "$retries" -gt 0 ] || return 1
        retries=$((retries - 1))
        sleep 0.5 2>/dev/null || sleep 1
    done
}
"""


def issue_script(run_id: str, host: Host, inventory: Inventory, orders: list[tuple[Site, bool]],
                 *, acme_ca: bool) -> str:
    """Self-test HTTP-01 for every domain, then run certbot for each order; print the new certificates.

    No order is made unless every domain passes the self-test (failed validations count against
    the CA's rate limits).
    """
    runtime = shlex.quote(host.certbot.runtime)
    image = shlex.quote(host.certbot.image)
    challenge_dir = f"{host.webroot}/.well-known/acme-challenge"
    lines = [PREAMBLE, lock_check(run_id), SELFTEST]
    lines.append(
        f"if ! {runtime} image inspect {image} >/dev/null 2>&1; then "
        f"if ! out=$({runtime} pull {image} 2>&1); then echo \"IMAGE-MISSING $(echo \"$out\" | tail -n 1)\"; "
        f"exit {EXIT_IMAGE_MISSING}; fi; fi"
    )
    lines.append(f"mkdir -p {shlex.quote(challenge_dir)} /etc/letsencrypt /var/lib/letsencrypt /var/log/letsencrypt")
    lines.append(f"chmod 0755 {shlex.quote(host.webroot)} {shlex.quote(host.webroot + '/.well-known')} "
                 f"{shlex.quote(challenge_dir)}")
    lines.append("token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n')")
    lines.append(f"probe={shlex.quote(challenge_dir)}/certfab-selftest-$token")
    lines.append("printf '%s' \"$token\" > \"$probe\"; chmod 0644 \"$probe\"")
    lines.append("failed=0")
    for site, _force in orders:
        for domain in site.domains:
            url = f"http://{domain}/.well-known/acme-challenge/certfab-selftest-"
            lines.append(
                f"if ! probe_until {shlex.quote(url)}\"$token\" \"$token\"; then "
                f"echo \"SELFTEST-FAILED {domain} ${{got:-empty answer}}\"; failed=1; fi"
            )
    lines.append("rm -f \"$probe\"")
    lines.append(f"[ \"$failed\" = 0 ] || exit {EXIT_SELFTEST_FAILED}")
    base = " ".join(shlex.quote(a) for a in container_command(host, acme_ca=acme_ca))
    lines.append("status=0")
    for site, force in orders:
        args = " ".join(shlex.quote(a) for a in certonly_args(site, host, inventory, force=force))
        cert = shlex.quote(f"/etc/letsencrypt/live/{site.name}/cert.pem")
        lines.append(
            f"if out=$({base} {args} 2>&1); then echo \"ISSUED {site.name}\"; "
            f"printf 'CERT {site.name} '; base64 -w0 {cert}; echo; "
            # certbot lists each failed domain as Domain/Type/Detail lines: pass those on, then its last lines.
            f"else printf '%s\\n' \"$out\" | tr -cd '\\11\\12\\40-\\176' | "
            f"sed -n -E 's/^ *(Domain|Type|Detail): *(.*)$/CERTBOT-PROBLEM {site.name} \\1 \\2/p'; "
            f"echo \"CERTBOT-FAILED {site.name} $(printf '%s' \"$out\" | tr -cd '\\11\\12\\40-\\176' | "
            "grep -v '^ *$' | tail -n 4 | tr '\\n' ' ')\"; status=1; fi"
        )
    lines.append(f"[ \"$status\" = 0 ] || exit {EXIT_CERTBOT_FAILED}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class IssueResult:
    """What the issue script reported: new certificates (public PEM) and failures."""

    issued: dict[str, str]
    selftest_failures: list[str]
    certbot_failures: list[str]
    image_missing: str | None


def _problem_text(problems: list[dict[str, str]]) -> str:
    """certbot's per-domain validation problems as one line: `domain (type): detail; ...`."""
    parts = []
    for problem in problems:
        kind = f" ({problem['Type']})" if problem.get("Type") else ""
        parts.append(f"{problem.get('Domain', '?')}{kind}: {problem.get('Detail', 'no detail')}")
    return "the CA could not validate " + "; ".join(parts)


def parse_issue_output(output: str) -> IssueResult:
    issued: dict[str, str] = {}
    selftest: list[str] = []
    certbot: list[str] = []
    image: str | None = None
    problems: dict[str, list[dict[str, str]]] = {}
    for line in output.splitlines():
        if line.startswith("CERTBOT-PROBLEM "):
            name, key, value = (line.removeprefix("CERTBOT-PROBLEM ").split(" ", 2) + ["", ""])[:3]
            site_problems = problems.setdefault(name, [])
            if key == "Domain" or not site_problems:
                site_problems.append({})
            site_problems[-1][key] = value.strip()
            continue
        if line.startswith("CERT "):
            _, name, b64 = (line.split(" ", 2) + [""])[:3]
            issued[name] = base64.b64decode(b64.strip() or b"").decode("ascii", errors="replace")
        elif line.startswith("SELFTEST-FAILED "):
            domain, _, got = line.removeprefix("SELFTEST-FAILED ").partition(" ")
            selftest.append(f"{domain}: the challenge probe over http://{domain}/ got {got.strip()!r}")
        elif line.startswith("CERTBOT-FAILED "):
            name, _, detail = line.removeprefix("CERTBOT-FAILED ").partition(" ")
            if name in problems:
                detail = _problem_text(problems[name])
            certbot.append(name + ": " + re.sub(r"\s+", " ", detail).strip())
        elif line.startswith("IMAGE-MISSING"):
            image = line.removeprefix("IMAGE-MISSING").strip()
    return IssueResult(issued, selftest, certbot, image)
