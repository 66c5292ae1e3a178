"""Shared sites: one site (same name, same domains) on several hosts, served with one certificate.

The first host of the inventory that declares a shared site issues its certificate (certbot lineage,
renewal from its cron); the other backends are peers. A peer never orders: it holds a copy of the
issuer's lineage (certificate, chain, key) that certfab installs from the issuer, and its ACME
challenge location for the site passes /.well-known/acme-challenge/ to the issuer, so the CA may
validate through any backend, for orders certfab makes and for renewals from the issuer's cron alike.

Pure: no SSH, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from certfab.certs import CertificateError, parse_pem
from certfab.inventory import Host, Inventory, Site
from certfab.paths import LETSENCRYPT_LIVE, NGINX_CERTFAB_DIR, SHARED_LINEAGES
from certfab.transaction import FileWrite

Role = Literal["alone", "issuer", "peer"]
# The files of a lineage copy, as certbot names them in its live directory.
COPY_FILES = ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem")


@dataclass(frozen=True)
class SharedSite:
    """A site declared on several hosts: its backends in inventory order, the first one issuing."""

    name: str
    domains: tuple[str, ...]
    backends: tuple[Host, ...]

    @property
    def issuer(self) -> Host:
        return self.backends[0]

    @property
    def peers(self) -> tuple[Host, ...]:
        return self.backends[1:]


def shared_sites(inventory: Inventory) -> dict[str, SharedSite]:
    """Every site that more than one host declares, by name (the inventory checked their domains agree)."""
    found: dict[str, list[Host]] = {}
    domains: dict[str, tuple[str, ...]] = {}
    for host in inventory.hosts:
        for site in host.sites:
            found.setdefault(site.name, []).append(host)
            domains.setdefault(site.name, site.domains)
    return {name: SharedSite(name, domains[name], tuple(hosts)) for name, hosts in found.items() if len(hosts) > 1}


def role_of(inventory: Inventory, host: Host, site: Site) -> Role:
    """What a host does for one of its sites: serve it alone, issue it for its backends, or be a peer."""
    backends = [h.name for h in inventory.hosts if any(s.name == site.name for s in h.sites)]
    if len(backends) < 2:
        return "alone"
    return "issuer" if backends[0] == host.name else "peer"


def roles(inventory: Inventory, host: Host) -> dict[str, Role]:
    """The role of each of a host's sites."""
    return {site.name: role_of(inventory, host, site) for site in host.sites}


def issuer_of(inventory: Inventory, site: str) -> Host | None:
    """The host that issues a shared site (None for a site not shared)."""
    shared = shared_sites(inventory).get(site)
    return shared.issuer if shared is not None else None


def stamp_view(inventory: Inventory, host: Host) -> tuple[tuple[str, Role, str, tuple[str, ...]], ...]:
    """What of the other hosts shapes this host's desired state: per shared site, its role, issuer and backends."""
    everything = shared_sites(inventory)
    return tuple(
        (site.name, role_of(inventory, host, site), everything[site.name].issuer.address,
         tuple(b.address for b in everything[site.name].backends))
        for site in host.sites if site.name in everything
    )


def copy_dir(site: str) -> str:
    """Where a backend keeps its copy of a shared site's lineage (under /etc/letsencrypt, like every key)."""
    return f"{SHARED_LINEAGES}/{site}"


def lineage_dir(site: str, *, live: bool) -> str:
    """The directory nginx reads a site's certificate and key from: certbot's lineage, or certfab's copy."""
    return f"{LETSENCRYPT_LIVE}/{site}" if live else copy_dir(site)


def acme_include_path(site: str) -> str:
    """The per-site ACME challenge location of a shared site (the same path on every backend)."""
    return f"{NGINX_CERTFAB_DIR}/acme-challenge-{site}.conf"


def is_site_acme_include(path: str) -> bool:
    """Whether a path is a shared site's challenge location (acme_include_path of some site)."""
    directory, name = path.rsplit("/", 1) if "/" in path else ("", path)
    return directory == NGINX_CERTFAB_DIR and name.startswith("acme-challenge-") and name.endswith(".conf")


def url_host(address: str) -> str:
    """An address as the host part of a URL (IPv6 in brackets)."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


class MaterialError(ValueError):
    """What an issuer sent as its lineage is not a certificate with its chain and matching key."""


@dataclass(frozen=True)
class Lineage:
    """A shared site's certificate, chain and key as read from its issuer (held in memory only).

    repr and str never show the key.
    """

    site: str
    cert: str
    chain: str
    fullchain: str
    privkey: str
    sha256: str

    def __repr__(self) -> str:
        return f"Lineage(site={self.site!r}, sha256={self.sha256})"

    __str__ = __repr__


def check_lineage(site: str, files: Mapping[str, str]) -> Lineage:
    """Validate the files an issuer sent: a certificate, its chain, their concatenation and the key that
    matches the certificate. Raises MaterialError (never quoting the key) otherwise."""
    from cryptography.hazmat.primitives import serialization

    missing = [name for name in COPY_FILES if not files.get(name, "").strip()]
    if missing:
        raise MaterialError(f"site {site}: the issuer's lineage lacks {', '.join(missing)}")
    try:
        info = parse_pem(files["cert.pem"])
        parse_pem(files["chain.pem"])
    except (CertificateError, ValueError) as exc:
        raise MaterialError(f"site {site}: the issuer's certificate is unreadable: {exc}") from None
    if parse_pem(files["fullchain.pem"]).sha256 != info.sha256:
        raise MaterialError(f"site {site}: the issuer's fullchain.pem does not start with its cert.pem")
    try:
        key = serialization.load_pem_private_key(files["privkey.pem"].encode("ascii", errors="replace"), None)
    except (ValueError, TypeError):
        raise MaterialError(f"site {site}: the issuer's privkey.pem is not an unencrypted PEM private key") from None
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(files["cert.pem"].encode("ascii", errors="replace"))
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != cert.public_key().public_bytes(der, public):
        raise MaterialError(f"site {site}: the issuer's privkey.pem does not belong to its certificate")
    return Lineage(site, files["cert.pem"], files["chain.pem"], files["fullchain.pem"], files["privkey.pem"],
                   info.sha256)


def copy_writes(lineage: Lineage) -> list[FileWrite]:
    """The files of a peer's copy: public ones 0644, the key 0600 (root's, like every file certfab writes)."""
    directory = copy_dir(lineage.site)
    return [
        FileWrite(f"{directory}/cert.pem", lineage.cert, "0644"),
        FileWrite(f"{directory}/chain.pem", lineage.chain, "0644"),
        FileWrite(f"{directory}/fullchain.pem", lineage.fullchain, "0644"),
        FileWrite(f"{directory}/privkey.pem", lineage.privkey, "0600"),
    ]


def cert_sha256(pem: str | None) -> str | None:
    """sha256 of a PEM certificate's DER form, None when absent or unreadable."""
    if not pem:
        return None
    try:
        return parse_pem(pem).sha256
    except (CertificateError, ValueError):
        return None
