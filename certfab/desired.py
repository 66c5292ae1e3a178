"""From inventory and facts to the desired files and certificates of a host (pure)."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from certfab import nginxconf, origin, renewal, renewalconf, tls
from certfab.certs import SHORT_LIFETIME, parse_pem, renew_before_expiry
from certfab.errors import PreflightError
from certfab.facts import ConfigFile, HostFacts
from certfab.inventory import AcmeSettings, Host, Inventory, RenewalSettings, Site
from certfab.issue import PROFILES_FROM, certbot_version
from certfab.paths import (
    ACME_CA,
    ACME_INCLUDE,
    CRON_FILE,
    DNS_CREDENTIALS_DIR,
    HSTS_INCLUDE,
    MANAGED_SITE_DIR,
    NGINX_CERTFAB_DIR,
    RENEW_ENV,
    RENEW_SCRIPT,
    TLS_OPTIONS,
    dns_credentials_path,
    renewal_conf,
)
from certfab.shared import Role, acme_include_path, lineage_dir, role_of, url_host
from certfab.tls import managed_site_path, site_include_path
from certfab.transaction import FileWrite, expect_as_read, text_sha256

# Bootstrap renews early when less than this fraction of a certificate's lifetime is left.


# "await": a peer of a shared site has no usable copy yet; it never orders, the issuer's lineage comes by sync.
CertAction = Literal["keep", "issue", "renew", "change-names", "await"]
# Why a certificate is kept or ordered, for people (reason) and for programs (cause).
CertCause = Literal["valid", "no-certificate", "unreadable", "names-changed", "expired", "lifetime-left",
                    "server-changed", "key-type-changed", "profile-changed", "from-issuer",
                    "challenge-changed"]


def lineage_challenge(conf: str) -> str | None:
    """The challenge a lineage renews with, from certbot's renewal config (None: not stated)."""
    authenticator = renewalconf.renewal_params(conf).get("authenticator")
    if not authenticator:
        return None
    return "dns-01" if authenticator.startswith("dns-") else "http-01"


@dataclass(frozen=True)
class CertDecision:
    """Whether a site needs an ACME order, and why."""

    site: str
    action: CertAction
    reason: str
    cause: CertCause = "valid"

    @property
    def needs_order(self) -> bool:
        return self.action not in ("keep", "await")

    @property
    def ready(self) -> bool:
        """The site has a certificate to serve now."""
        return self.action == "keep"


# certbot stores the profile it was asked for in the renewal configuration from this version on.
_PROFILE_STORED_FROM = (4, 1)


def _changed_order(site: Site, acme: AcmeSettings | None, key_type: str, conf: str) -> CertDecision | None:
    """A renewal when the lineage was ordered from another ACME server, key type or profile than asked now."""
    if acme is None or not conf.strip():
        return None
    params = renewalconf.renewal_params(conf)
    server = params.get("server")
    if server and server.rstrip("/") != acme.server.rstrip("/"):
        return CertDecision(site.name, "renew", f"ACME server changed ({server} -> {acme.server})", "server-changed")
    have_type = "ecdsa" if key_type.startswith("ECDSA") else "rsa" if key_type.startswith("RSA") else key_type
    if have_type != acme.key_type:
        return CertDecision(site.name, "renew", f"key type changed ({have_type} -> {acme.key_type})",
                            "key-type-changed")
    version = certbot_version(renewalconf.top_level(conf).get("version", ""))
    if version is not None and version >= _PROFILE_STORED_FROM:
        have = params.get("required_profile") or params.get("preferred_profile") or None
        if have != site.profile:
            return CertDecision(site.name, "renew", f"ACME profile changed ({have or 'default'} -> "
                                f"{site.profile or 'default'})", "profile-changed")
    return None


def serves_live(site: Site, facts: HostFacts, role: Role) -> bool:
    """Whether nginx reads the site's certificate from certbot's lineage (else from certfab's copy).

    A peer always serves its copy. An issuer serves its lineage, or, when it has none yet but holds a
    copy (it took over from a removed issuer), that copy until it orders the next certificate.
    """
    if role == "peer":
        return False
    return site.name in facts.lineages or site.name not in facts.shared_copies


def site_certificate(site: Site, facts: HostFacts, role: Role) -> str | None:
    """The PEM of the certificate the site serves (or would serve) on this host, None if it has none."""
    if serves_live(site, facts, role):
        lineage = facts.lineages.get(site.name)
        return lineage.cert_pem if lineage is not None else None
    return facts.shared_copies.get(site.name)


def decide_certificate(site: Site, facts: HostFacts, now: datetime, acme: AcmeSettings | None = None, *,
                       role: Role = "alone") -> CertDecision:
    """Keep a valid certificate with exactly the site's names, server, key type and profile; else say what to order.

    A peer of a shared site never orders: without a valid copy of the issuer's lineage it waits for it.
    """
    pem = site_certificate(site, facts, role)
    if role == "peer":
        return _decide_copy(site, pem, now)
    if pem is None:
        return CertDecision(site.name, "issue", "no certificate yet", "no-certificate")
    try:
        info = parse_pem(pem)
    except ValueError as exc:
        return CertDecision(site.name, "issue", f"existing certificate unreadable ({exc})", "unreadable")
    wanted, have = set(site.domains), set(info.names)
    if wanted != have:
        added = ", ".join(sorted(wanted - have)) or "-"
        removed = ", ".join(sorted(have - wanted)) or "-"
        return CertDecision(site.name, "change-names", f"names changed (+{added}; -{removed})", "names-changed")
    if info.not_after <= now:
        return CertDecision(site.name, "renew", "certificate expired", "expired")
    lineage = facts.lineages.get(site.name) if serves_live(site, facts, role) else None
    renews_with = lineage_challenge(lineage.renewal_conf) if lineage is not None else None
    if renews_with is not None and renews_with != site.challenge:
        # Its renewals would keep the old challenge (e.g. HTTP-01 on a host now closed to the CA).
        return CertDecision(site.name, "renew", f"challenge changed ({renews_with} -> {site.challenge})",
                            "challenge-changed")
    changed = _changed_order(site, acme, info.key_type, lineage.renewal_conf) if lineage is not None else None
    if changed is not None:
        return changed
    if info.renewal_due(now):
        return CertDecision(site.name, "renew", f"{info.days_left(now):.1f} days left of "
                            f"{info.lifetime.total_seconds() / 86400:g}", "lifetime-left")
    return CertDecision(site.name, "keep", f"valid until {info.not_after:%Y-%m-%d}, names unchanged", "valid")


def _decide_copy(site: Site, pem: str | None, now: datetime) -> CertDecision:
    """A peer serves its copy while it is valid with the site's names; otherwise it waits for the issuer's."""
    waiting = "the issuer's certificate comes with the next deploy-all or sync"
    if pem is None:
        return CertDecision(site.name, "await", f"no copy of the shared certificate yet; {waiting}", "from-issuer")
    try:
        info = parse_pem(pem)
    except ValueError:
        return CertDecision(site.name, "await", f"its copy is unreadable; {waiting}", "from-issuer")
    if set(info.names) != set(site.domains) or info.not_after <= now:
        return CertDecision(site.name, "await", f"its copy is expired or has other names; {waiting}", "from-issuer")
    return CertDecision(site.name, "keep", f"copy of the shared certificate, valid until {info.not_after:%Y-%m-%d}",
                        "valid")


def renewal_conf_write(site: str, cert_pem: str, conf: str) -> FileWrite | None:
    """The lineage's renewal configuration with a renewal margin that fits its certificate's lifetime
    (and certbot's automatic renewal on).

    certbot 2.x renews at a fixed 30 days left, so a 6-day certificate would be renewed on every run; the
    margin written here (a third of the lifetime, half under 10 days) is what certbot >= 4.0 does by
    itself, and certbot >= 4.1 still renews earlier when the CA's renewal information says so.
    None when the file already says so, or when the certificate or the file cannot be read.
    """
    if not conf.strip():
        return None
    try:
        info = parse_pem(cert_pem)
    except ValueError:
        return None
    wanted = renewalconf.with_renew_before_expiry(conf, renew_before_expiry(info.lifetime))
    # A site managed again after remove-site --keep-certificate: certbot renews its lineage again.
    if not renewalconf.autorenew(wanted):
        wanted = renewalconf.with_autorenew(wanted, True)
    if wanted == conf:
        return None
    return expect_as_read([FileWrite(renewal_conf(site), wanted, None)], {renewal_conf(site): conf})[0]


def renewal_schedule(host: Host, facts: HostFacts) -> RenewalSettings:
    """The host's renewal settings, run twice a day once a certificate on it lives under 10 days.

    Twice a day leaves a 160-hour certificate (renewed with 80 hours left) several chances, and is what
    the CA's renewal information (ARI) asks for.
    """
    if host.renewal.times_per_day >= 2:
        return host.renewal
    if any(site.profile == "shortlived" for site in host.sites):
        return replace(host.renewal, times_per_day=2)
    for lineage in facts.lineages.values():
        try:
            lifetime = parse_pem(lineage.cert_pem).lifetime
        except ValueError:
            continue
        if lifetime < SHORT_LIFETIME:
            return replace(host.renewal, times_per_day=2)
    return host.renewal


@dataclass(frozen=True)
class Desired:
    """Every file bootstrap wants on a host, and the sites served over HTTPS in that state."""

    writes: tuple[FileWrite, ...]
    https_sites: frozenset[str]
    # Per HTTPS site, request paths into locations that set headers of their own (verify checks HSTS there).
    probe_paths: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def host_tls(facts: HostFacts) -> tls.HostTls:
    assert facts.nginx is not None
    return tls.HostTls(nginx_version=facts.nginx.version, openssl_version=facts.nginx.openssl_version,
                       tls_library=facts.nginx.tls_library)


def _tree(texts: Mapping[str, str], facts: HostFacts) -> nginxconf.NginxTree:
    assert facts.nginx is not None
    return nginxconf.parse_tree(texts, facts.nginx.conf_path, facts.nginx.prefix)


def served_block(tree: nginxconf.NginxTree, domain: str, port: int) -> nginxconf.ServerBlock | None:
    """The block that names `domain` on `port` (a catch-all default does not count)."""
    match = nginxconf.match_host(tree, domain, port)
    return match.block if match is not None and match.by_name else None


# nginx keeps server names in hash buckets of server_names_hash_bucket_size bytes (default: the CPU's
# cache line, 64 on x86-64); a name longer than the bucket minus 18 bytes makes `nginx -t` fail.
DEFAULT_NAMES_BUCKET = 64
_NAMES_BUCKET = re.compile(r"^\s*server_names_hash_bucket_size\s+(\d+)\s*;", re.MULTILINE)


def server_names_bucket(facts: HostFacts) -> int:
    """The host's server_names_hash_bucket_size, from its nginx files (else the usual default)."""
    assert facts.nginx is not None
    sizes = [int(size) for f in facts.nginx.files.values() for size in _NAMES_BUCKET.findall(f.text)]
    return sizes[-1] if sizes else DEFAULT_NAMES_BUCKET


def _check_name_fits(name: str, site: Site, domain: str, facts: HostFacts) -> None:
    """Refuse a name nginx cannot hash once two server blocks share a port (`nginx -t` would fail)."""
    bucket = server_names_bucket(facts)
    if len(domain) > bucket - 18:
        size = 1 << (len(domain) + 18 - 1).bit_length()
        assert facts.nginx is not None
        raise PreflightError(
            f"{name}: site {site.name}: {domain} has {len(domain)} characters, more than nginx's "
            f"server_names_hash_bucket_size {bucket} holds ({bucket - 18}); add "
            f"`server_names_hash_bucket_size {size};` to the http block of {facts.nginx.conf_path}"
        )


def preflight(host: Host, facts: HostFacts) -> list[str]:
    """Refuse a host that bootstrap cannot handle safely; returns warnings for what is merely odd."""
    name = host.name
    if facts.uid != 0:
        raise PreflightError(f"{name}: commands do not run as root (uid {facts.uid}); set sudo: true for this host")
    if facts.nginx is None:
        raise PreflightError(f"{name}: nginx is not installed or not on PATH")
    if not facts.nginx.sni:
        raise PreflightError(f"{name}: nginx {facts.nginx.version_text} was built without TLS SNI support")
    if not facts.nginx.test_ok:
        last = facts.nginx.test_output.splitlines()[-1:] or ["no output"]
        raise PreflightError(f"{name}: nginx -t already fails before any change: {last[0]}")
    if not facts.runtime_present:
        raise PreflightError(f"{name}: container runtime '{host.certbot.runtime}' is not installed")
    if facts.runtime_version.startswith("Cannot connect") or "error" in facts.runtime_version.lower():
        raise PreflightError(f"{name}: {host.certbot.runtime} does not answer: {facts.runtime_version}")
    version = certbot_version(host.certbot.image)
    for site in host.sites:
        if site.profile is not None and version is not None and version < PROFILES_FROM:
            raise PreflightError(
                f"{name}: site {site.name}: acme.profile {site.profile} needs certbot >= "
                f"{'.'.join(map(str, PROFILES_FROM))}, but {host.certbot.image} is certbot {version[0]}.{version[1]}"
            )
    missing = {"flock", "base64"} - facts.tools - {"base64"}
    if missing:
        raise PreflightError(f"{name}: required tools missing: {', '.join(sorted(missing))}")
    tree = _tree({p: f.text for p, f in facts.nginx.files.items()}, facts)
    warnings: list[str] = [
        f"{name}: {path} was not read: it {why}" for path, why in sorted(facts.nginx.refused_files.items())
    ]
    for site in host.sites:
        for domain in site.domains:
            _check_name_fits(name, site, domain, facts)
    managed = {site.name for site in host.sites if site.managed}
    problems = nginxconf.check_sites(
        tree,
        {site.name: site.domains for site in host.sites},
        {site.name: site_include_path(site.name) for site in host.sites},
    )
    for problem in problems:
        if problem.kind in ("missing", "default-only"):
            # certfab edits only blocks that name a domain (never a catch-all default server);
            # a managed site gets a server block of its own instead
            if problem.site in managed:
                continue
            raise PreflightError(
                f"{name}: site {problem.site}: {problem.message} or declare root/upstream for the site "
                "in the inventory"
            )
        if problem.kind == "shared-block":
            raise PreflightError(
                f"{name}: sites {_and(problem.sites)} share the server block at {problem.where}; "
                "give each site its own server block"
            )
        if problem.severity == "error":
            raise PreflightError(f"{name}: site {problem.site}: {problem.message}")
    warnings += [
        f"{name}: site {p.site}: {p.message}"
        for p in problems
        if p.severity == "warning" and p.kind != "default-only"
    ]
    competing = competing_renewal_jobs(facts.competing_renewal, facts.crontab)
    if competing:
        warnings.append(
            f"{name}: another renewal job would compete with certfab's: {'; '.join(competing)}; remove or "
            "disable it (certfab's own job renews, tests nginx, reloads and mails)"
        )
    return warnings


def _and(names: tuple[str, ...]) -> str:
    return " and ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " and " + names[-1]


def competing_renewal_jobs(found: tuple[str, ...], root_crontab: str) -> list[str]:
    """Renewal jobs besides /etc/cron.d/certfab: packaged cron files or timers, and root crontab lines."""
    jobs = list(found)
    for line in root_crontab.splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#") and ("certbot" in entry or "certfab-renew" in entry):
            jobs.append(f"root's crontab: {entry}")
    return jobs


def desired_state(
    host: Host,
    inventory: Inventory,
    facts: HostFacts,
    *,
    https_sites: frozenset[str],
    acme_ca_pem: str | None,
) -> Desired:
    """All files for a host: ACME plumbing for every site, HTTPS for `https_sites`."""
    assert facts.nginx is not None
    nginx_facts = facts.nginx
    texts = {path: f.text for path, f in nginx_facts.files.items()}
    real = {path: f.real_path for path, f in nginx_facts.files.items()}
    writes: dict[str, FileWrite] = {}
    probe_paths: dict[str, tuple[str, ...]] = {}

    def put(path: str, content: str, mode: str = "0644", *, secret: bool = False) -> None:
        writes[path] = FileWrite(path, content, mode, secret=secret)

    version = host_tls(facts)
    http2_in_listen = tls.http2_style(version) == "listen"
    put(ACME_INCLUDE, tls.render_acme_include(host.webroot))
    site_roles = {site.name: role_of(inventory, host, site) for site in host.sites}
    acme_includes = {site.name: ACME_INCLUDE if site_roles[site.name] == "alone" else acme_include_path(site.name)
                     for site in host.sites}
    for site in host.sites:
        if site.dns01:
            continue  # validated through DNS: no challenge location of its own, on any backend
        if site_roles[site.name] == "issuer":
            put(acme_includes[site.name], tls.render_acme_include(host.webroot))
        elif site_roles[site.name] == "peer":
            issuer = next(h for h in inventory.hosts if any(s.name == site.name for s in h.sites))
            put(acme_includes[site.name], tls.render_acme_proxy(site.name, issuer.name, url_host(issuer.address)))
    if acme_ca_pem is not None:
        put(ACME_CA, acme_ca_pem)
    credentials = None
    # Only a host that orders a DNS-01 certificate holds the DNS credentials: peers of a shared site get copies.
    if host.dns01 is not None and any(site.dns01 and site_roles[site.name] != "peer" for site in host.sites):
        credentials = dns_credentials_path(host.dns01.plugin)
        put(credentials, host.dns01.credentials.text, "0600", secret=True)
    for path in unneeded_credentials(facts, keep=credentials):
        writes[path] = FileWrite(path, "", None, remove=True, secret=True)
    put(RENEW_SCRIPT, renewal.render_renew_script(), "0700")
    schedule = renewal_schedule(host, facts)
    put(RENEW_ENV, renewal.render_renew_env(host, host.certbot, schedule, host.webroot,
                                            ACME_CA if acme_ca_pem is not None else None, credentials), "0600")
    put(CRON_FILE, renewal.render_cron(host.name, schedule))
    if https_sites:
        dhparam = None
        if tls.needs_dhparam(host.tls.profile):
            # tls.dhparam_bits picks the RFC 7919 group (ffdhe2048 unless set)
            dhparam = tls.dhparam_path(host.tls.dhparam_bits)
            put(dhparam, tls.ffdhe_pem(host.tls.dhparam_bits))
        put(TLS_OPTIONS, tls.render_tls_options(host.tls.profile, version, dhparam))
        # Written together with the TLS settings that stop naming them.
        for path in unused_dh_groups(facts, keep=dhparam):
            writes[path] = FileWrite(path, "", None, remove=True)

    for site in host.sites:
        https = site.name in https_sites
        if https:
            put(
                site_include_path(site.name),
                tls.render_site_include(
                    site.name,
                    site.domains,
                    lineage_dir=lineage_dir(site.name, live=serves_live(site, facts, site_roles[site.name])),
                    tls_options_path=TLS_OPTIONS,
                    hsts_max_age=host.tls.hsts_max_age,
                    include_subdomains=host.tls.hsts_include_subdomains,
                    preload=host.tls.hsts_preload,
                    http2_style=tls.http2_style(version),
                ),
            )
        tree = _tree(texts, facts)
        existing = [served_block(tree, d, 80) or served_block(tree, d, 443) for d in site.domains]
        managed_file = managed_site_path(site.name)
        if site.managed and (all(b is None for b in existing) or
                             all(b is not None and b.file == managed_file for b in existing)):
            # A DNS-01 site without a redirect has no port-80 block: nothing to serve before its certificate.
            if https or site.redirect:
                put(
                    managed_file,
                    tls.render_managed_site(
                        site.name, site.domains, site.root, site.upstream,
                        phase="https" if https else "http",
                        acme_include=None if site.dns01 else acme_includes[site.name],
                        site_include=site_include_path(site.name),
                        http2_in_listen=http2_in_listen,
                        redirect=site.redirect,
                    ),
                )
            continue
        start = dict(texts)
        # Edit the site's existing blocks one change at a time, re-reading positions after each.
        for _ in range(4 * len(site.domains) + 4):
            tree = _tree(texts, facts)
            try:
                edit = _next_edit(tree, site, https, acme_includes[site.name])
            except PreflightError as exc:
                raise PreflightError(f"{host.name}: {exc}") from None
            if edit is None:
                break
            path, block, kind = edit
            if kind == "acme":
                texts[path] = nginxconf.add_include(texts[path], block, acme_includes[site.name])
            elif kind == "redirect-names":
                names = _redirect_source_names(tree, block, site) or ()
                texts[path] = nginxconf.set_redirect_names(texts[path], block, names)
            else:
                texts[path] = nginxconf.convert_to_https(
                    texts[path], block, https_include=site_include_path(site.name),
                    acme_include=acme_includes[site.name], http2_in_listen=http2_in_listen, site=site.name,
                    tree=tree,
                )
        else:  # pragma: no cover - a non-converging edit is a bug, never a user error
            raise PreflightError(f"{host.name}: site {site.name}: nginx edits did not converge")
        if https and host.tls.hsts_max_age > 0:
            probe_paths[site.name] = _hsts_in_locations(texts, facts, site)
        # What the site's files held before certfab, for remove-site (written with the edits themselves).
        record = origin.updated_origin(
            origin.parse_origin(facts.owned_files.get(origin.origin_path(site.name)), site.name), site.name,
            {real[p]: start[p] for p in texts}, {real[p]: texts[p] for p in texts if texts[p] != start[p]},
        )
        if record is not None and any(texts[p] != start[p] for p in texts):
            put(origin.origin_path(site.name), origin.render_origin(record), "0600")

    if any(paths for paths in probe_paths.values()) or any(HSTS_INCLUDE in text for text in texts.values()):
        put(HSTS_INCLUDE, tls.render_hsts_include(host.tls.hsts_max_age, host.tls.hsts_include_subdomains,
                                                  host.tls.hsts_preload))

    for path, text in texts.items():
        if text != nginx_facts.files[path].text:
            writes[real[path]] = FileWrite(real[path], text, None)
    return Desired(tuple(writes.values()), https_sites, probe_paths)


def _hsts_in_locations(texts: dict[str, str], facts: HostFacts, site: Site) -> tuple[str, ...]:
    """Include certfab's HSTS header in every location of the site's HTTPS blocks that sets headers of
    its own (nginx drops the server's add_header there); returns request paths into those locations."""
    paths: list[str] = []
    done: set[tuple[str, int]] = set()
    for domain in site.domains:
        tree = _tree(texts, facts)
        block = served_block(tree, domain, 443)
        if block is None or (block.file, block.line) in done or block.is_certfab_redirect:
            continue
        done.add((block.file, block.line))
        texts[block.file] = nginxconf.add_location_includes(texts[block.file], block, HSTS_INCLUDE)
        block = served_block(_tree(texts, facts), domain, 443)
        assert block is not None
        for _, args in nginxconf.header_locations(texts[block.file], block):
            path = nginxconf.probe_path(args)
            if path is not None and path not in paths:
                paths.append(path)
    return tuple(paths)


def _next_edit(
    tree: nginxconf.NginxTree, site: Site, https: bool, acme_include: str
) -> tuple[str, nginxconf.ServerBlock, str] | None:
    for domain in site.domains:
        block = served_block(tree, domain, 80)
        if block is None:
            continue
        if not block.has_include(acme_include) and not site.dns01:
            other = ACME_INCLUDE if acme_include != ACME_INCLUDE else acme_include_path(site.name)
            if block.has_include(other):
                # Two ACME locations in one block would fail `nginx -t`: the site changed between shared and not.
                raise PreflightError(
                    f"site {site.name}: the port-80 block at {block.file}:{block.line} includes {other}; the site "
                    f"is {'now' if acme_include != ACME_INCLUDE else 'no longer'} shared: replace that line with "
                    f"`include {acme_include};`"
                )
            return block.file, block, "acme"
        if https and not block.is_certfab_redirect:
            return block.file, block, "https"
    for block in tree.server_blocks:
        if block.is_certfab_redirect and block.redirect_site == site.name:
            names = _redirect_source_names(tree, block, site)
            if names and names != block.server_names:
                return block.file, block, "redirect-names"
    return None


def _redirect_source_names(
    tree: nginxconf.NginxTree, redirect: nginxconf.ServerBlock, site: Site
) -> tuple[str, ...] | None:
    """The server names of the HTTPS block a certfab redirect block was split from (it comes right before)."""
    include = site_include_path(site.name)
    sources = [
        b for b in tree.server_blocks
        if b.file == redirect.file and b.line < redirect.line and not b.is_certfab_redirect and b.has_include(include)
    ]
    return max(sources, key=lambda b: b.line).server_names if sources else None


def unused_dh_groups(facts: HostFacts, *, keep: str | None) -> list[str]:
    """certfab's DH group files (ffdhe*.pem) that neither its TLS settings, about to be written, nor
    any other nginx file name: left by an earlier `tls.dhparam_bits` or TLS profile."""
    assert facts.nginx is not None
    others = [f.text for f in facts.nginx.files.values() if f.real_path != TLS_OPTIONS]
    return sorted(
        path for path in facts.owned_files
        if posixpath.dirname(path) == NGINX_CERTFAB_DIR and re.fullmatch(r"ffdhe\d+\.pem", posixpath.basename(path))
        and path != keep and not any(path in text for text in others)
    )


def unneeded_credentials(facts: HostFacts, *, keep: str | None) -> list[str]:
    """DNS plugin credentials on the host that nothing uses any more: no DNS-01 site of this host orders
    with them, and no certbot lineage on the host names them in its renewal configuration."""
    return sorted(
        path for path in facts.secret_files
        if path.startswith(DNS_CREDENTIALS_DIR + "/") and path != keep
        and not any(path in lineage.renewal_conf for lineage in facts.lineages.values())
    )


def changed_writes(desired: Desired, facts: HostFacts) -> list[FileWrite]:
    """Only the files whose content differs from what is on the host (secrets: by sha256), and the
    removals of files that are there."""
    current = current_files(facts)
    return [
        w for w in desired.writes
        if ((w.path in facts.secret_files or w.path in current) if w.remove
            else facts.secret_files.get(w.path) != text_sha256(w.content) if w.secret
            else current.get(w.path) != w.content)
    ]


def current_files(facts: HostFacts) -> dict[str, str]:
    """Every file certfab may write, by real path, with its current content."""
    files = dict(facts.owned_files)
    if facts.nginx is not None:
        for f in facts.nginx.files.values():
            files[f.real_path] = f.text
    return files


def updated_facts_files(facts: HostFacts, writes: list[FileWrite]) -> HostFacts:
    """Facts as they will be once `writes` are on the host (for planning the next phase)."""
    assert facts.nginx is not None
    by_real = {w.path: w.content for w in writes}
    files = {
        path: replace(f, text=by_real.get(f.real_path, f.text)) for path, f in facts.nginx.files.items()
    }
    owned = dict(facts.owned_files)
    secrets = dict(facts.secret_files)
    for w in writes:
        if w.remove:
            secrets.pop(w.path, None)
            owned.pop(w.path, None)
        elif w.secret:
            secrets[w.path] = text_sha256(w.content)
        elif w.path not in {f.real_path for f in facts.nginx.files.values()}:
            owned[w.path] = w.content
    # New managed-site files become part of nginx's tree through conf.d's include.
    for w in writes:
        if w.path.startswith(MANAGED_SITE_DIR + "/certfab-") and w.path not in files:
            files[w.path] = ConfigFile(w.path, w.path, w.content)
    return replace(facts, nginx=replace(facts.nginx, files=files), owned_files=owned, secret_files=secrets)
