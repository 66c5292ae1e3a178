"""What an ACME server advertises in its directory (RFC 8555 section 7.1.1): profiles and renewal information."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from certfab.errors import PreflightError
from certfab.inventory import Host


@dataclass(frozen=True)
class AcmeDirectory:
    """The parts of an ACME directory certfab decides on; error says why it could not be read."""

    url: str
    profiles: frozenset[str] = field(default_factory=frozenset)
    renewal_info: bool = False
    error: str | None = None


def parse_directory(url: str, body: bytes) -> AcmeDirectory:
    """An ACME directory document (JSON): profile names from meta.profiles, renewalInfo from the resources."""
    try:
        doc = json.loads(body)
    except ValueError:
        return AcmeDirectory(url, error="the directory is not JSON")
    if not isinstance(doc, dict):
        return AcmeDirectory(url, error="the directory is not a JSON object")
    meta = doc.get("meta")
    profiles = meta.get("profiles") if isinstance(meta, dict) else None
    names = frozenset(str(name) for name in profiles) if isinstance(profiles, dict) else frozenset()
    return AcmeDirectory(url, names, isinstance(doc.get("renewalInfo"), str))


def check_profiles(host: Host, directory: AcmeDirectory | None) -> list[str]:
    """Warnings for preferred profiles the server lacks; PreflightError for a required one it lacks."""
    warnings: list[str] = []
    if directory is None:
        return warnings
    offered = ", ".join(sorted(directory.profiles)) or "none"
    for site in host.sites:
        if site.profile is None or site.profile in directory.profiles:
            continue
        if directory.error is not None:
            why = f"its directory could not be read ({directory.error})"
        else:
            why = f"it offers no profile {site.profile} (offered: {offered})"
        if site.profile_required:
            raise PreflightError(
                f"{host.name}: site {site.name}: acme.profile {site.profile} is required, but the ACME server "
                f"{directory.url} cannot give it: {why}; nothing was changed"
            )
        warnings.append(
            f"{host.name}: site {site.name}: preferred ACME profile {site.profile} not offered by {directory.url}: "
            f"{why}; certbot falls back to the server's default profile"
        )
    return warnings
