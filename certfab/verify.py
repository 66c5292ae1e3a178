"""Checking from the operator's machine that a host really serves what bootstrap set up."""

from __future__ import annotations

import time
from pathlib import Path

from certfab.inventory import Host, Site
from certfab.tlsprobe import check_redirect, probe_name, verify_https


def verify_site(host: Host, site: Site, *, trust_roots: Path | None, expected_sha256: str | None,
                hsts_expected: bool, timeout: float = 10.0, settle_seconds: float = 8.0,
                paths: tuple[str, ...] = ()) -> list[str]:
    """Problems with one site's HTTPS, redirect and HSTS; empty when all is well.

    HSTS is checked on `/` and on each of `paths` (locations that set headers of their own).

    nginx applies a reload asynchronously, so each check is retried for a few seconds.
    """
    deadline = time.monotonic() + settle_seconds
    while True:
        problems = _check_once(host, site, trust_roots, expected_sha256, hsts_expected, timeout, paths)
        if not problems or time.monotonic() >= deadline:
            return problems
        time.sleep(0.5)


def _check_once(host: Host, site: Site, trust_roots: Path | None, expected_sha256: str | None,
                hsts_expected: bool, timeout: float, paths: tuple[str, ...]) -> list[str]:
    problems: list[str] = []
    for domain in map(probe_name, site.domains):
        result = verify_https(host.address, domain, trust_roots, timeout)
        if not result.ok:
            problems.append(f"https://{domain}/: {result.error}")
            continue
        if expected_sha256 and result.leaf is not None and result.leaf.sha256 != expected_sha256:
            problems.append(f"https://{domain}/: serves certificate {result.leaf.sha256[:16]}…, not the new one")
        if hsts_expected and not result.hsts:
            problems.append(f"https://{domain}/: no Strict-Transport-Security header")
        for path in paths if hsts_expected else ():
            inner = verify_https(host.address, domain, trust_roots, timeout, path=path)
            if not inner.ok:
                problems.append(f"https://{domain}{path}: {inner.error}")
            elif not inner.hsts:
                problems.append(f"https://{domain}{path}: no Strict-Transport-Security header")
        if site.dns01 and site.managed and not site.redirect:
            continue  # no port-80 block at all (an internal service)
        status, location = check_redirect(host.address, domain, timeout)
        if status not in (301, 308) or not (location or "").startswith(f"https://{domain}/"):
            problems.append(f"http://{domain}/: expected a redirect to https, got {status} {location or ''}".strip())
    return problems
