"""Taking certfab away again, as plans (pure): remove-site (a site back to plain HTTP as it was before
certfab) and uninstall (every file certfab installed removed, its includes inlined so the sites keep
serving HTTPS). certfab.offboarding carries the plans out through the same transaction as bootstrap.
"""

from __future__ import annotations

import difflib
import posixpath
import re
from dataclasses import dataclass, field, replace

from certfab import renewalconf
from certfab.certs import parse_pem
from certfab.desired import current_files, updated_facts_files
from certfab.errors import PreflightError
from certfab.facts import HostFacts
from certfab.nginx.edits import revert_https
from certfab.nginx.lexer import Statement, parse_text, walk_statements
from certfab.nginx.model import redirect_marker, resolve_path
from certfab.origin import ORIGIN_DIR, invert, origin_path, parse_origin
from certfab.paths import (
    ACME_CA,
    ACME_INCLUDE,
    HSTS_INCLUDE,
    MANAGED_SITE_DIR,
    NGINX_CERTFAB_DIR,
    renewal_conf,
)
from certfab.shared import acme_include_path, copy_dir, is_site_acme_include
from certfab.tls import managed_site_path, site_include_path
from certfab.transaction import FileWrite, expect_as_read

# certbot's revocation reasons (RFC 5280 names as certbot spells them).
REVOKE_REASONS = ("unspecified", "keycompromise", "affiliationchanged", "superseded", "cessationofoperation")
_SITE_INCLUDE = re.compile(r"^site-([A-Za-z0-9][A-Za-z0-9._-]*)\.conf$")
_MANAGED_SITE = re.compile(rf"^{re.escape(MANAGED_SITE_DIR)}/certfab-([A-Za-z0-9][A-Za-z0-9._-]*)\.conf$")


@dataclass(frozen=True)
class Change:
    """One file the plan writes or removes: what it holds now and after (None: removed)."""

    path: str
    before: str
    after: str | None

    def describe(self) -> str:
        return f"removed {self.path}" if self.after is None else f"updated {self.path}"


@dataclass(frozen=True)
class Offboarding:
    """What remove-site or uninstall does on one host; empty when there is nothing left to take away."""

    host: str
    changes: tuple[Change, ...]
    writes: tuple[FileWrite, ...]
    # Lineages to delete (certbot delete), and the domains each site served (checked over HTTP after).
    lineages: tuple[str, ...]
    domains: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    # Shared sites whose copy of the issuer's lineage (key included, never read) goes with the site.
    copies: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.writes and not self.lineages and not self.copies


def _site_domains(site: str, facts: HostFacts, listed: tuple[str, ...]) -> tuple[str, ...]:
    lineage = facts.lineages.get(site)
    if lineage is not None:
        try:
            return tuple(parse_pem(lineage.cert_pem).names)
        except ValueError:
            pass
    return listed


def _site_writes(host: str, site: str, facts: HostFacts) -> tuple[dict[str, str | None], list[str]]:
    """New content (None: remove) of every file that holds the site's certfab configuration."""
    current = current_files(facts)
    out: dict[str, str | None] = {}
    warnings: list[str] = []
    shared_acme = acme_include_path(site)
    record = parse_origin(facts.owned_files.get(origin_path(site)), site)
    # A record may only give back nginx files (never certfab's own or any other file it names).
    nginx_texts = {f.real_path: f.text for f in facts.nginx.files.values()} if facts.nginx is not None else {}
    if record is not None:
        for entry in record.files:
            now = nginx_texts.get(entry.path) if entry.path not in facts.owned_files else None
            if now is None:
                warnings.append(f"{host}: site {site}: {entry.path} is no longer part of nginx's configuration; "
                                "left as it is")
                continue
            restored = invert(entry.before, entry.after, now)
            if restored is None:
                raise PreflightError(
                    f"{host}: site {site}: {entry.path} was edited where certfab changed it; take certfab's "
                    "lines out by hand (its redirect block and includes), then run remove-site again"
                )
            if restored != now:
                out[entry.path] = restored
    elif facts.nginx is not None:
        # Converted before certfab kept records: take certfab's lines back (the minimal inverse edit).
        include = site_include_path(site)
        # A shared site's blocks include its own challenge location instead of the common one.
        acme_include = (shared_acme if any(shared_acme in f.text for f in facts.nginx.files.values())
                        else ACME_INCLUDE)
        marker = redirect_marker(site)[0]
        for config in facts.nginx.files.values():
            if config.real_path in out or (include not in config.text and marker not in config.text):
                continue
            if config.real_path in facts.owned_files:
                continue
            reverted = revert_https(config.text, config.path, site=site, https_include=include,
                                    acme_include=acme_include, prefix=facts.nginx.prefix, hsts_include=HSTS_INCLUDE)
            if include in reverted:
                raise PreflightError(f"{host}: site {site}: {config.real_path} still includes {include} in a way "
                                     "certfab did not write; remove it by hand")
            if reverted != config.text:
                out[config.real_path] = reverted
    for path in (site_include_path(site), managed_site_path(site), origin_path(site)):
        if path in current:
            out[path] = None
    # A shared site's challenge location goes once no nginx file includes it any more.
    if shared_acme in current and not any(shared_acme in (out.get(path, text) or "")
                                          for path, text in nginx_texts.items()):
        out[shared_acme] = None
    return out, warnings


def plan_removal(host: str, site: str, facts: HostFacts, *, keep_certificate: bool,
                 listed_domains: tuple[str, ...] = ()) -> Offboarding:
    """remove-site: the site's files back to their pre-certfab text, its certfab files and lineage gone."""
    new, warnings = _site_writes(host, site, facts)
    current = current_files(facts)
    changes = tuple(Change(p, current[p], text) for p, text in new.items())
    writes = expect_as_read([FileWrite(p, text or "", None, remove=text is None) for p, text in new.items()],
                            current)
    lineages = (site,) if site in facts.lineages and not keep_certificate else ()
    if keep_certificate and site in facts.lineages:
        # Kept, not renewed: with the site gone, a renewal would fail its validation or renew for nobody.
        conf = facts.lineages[site].renewal_conf
        if conf.strip() and renewalconf.autorenew(conf):
            path = renewal_conf(site)
            changes += (Change(path, conf, renewalconf.with_autorenew(conf, False)),)
            writes += expect_as_read([FileWrite(path, renewalconf.with_autorenew(conf, False), None)], {path: conf})
        if writes:
            warnings.append(f"{host}: certificate {site} stays on the host and is no longer renewed (autorenew = "
                            f"False in {renewal_conf(site)}); it expires on its own, or run remove-site {site} "
                            "again without --keep-certificate to delete it")
    copies = (site,) if site in facts.shared_copies and not keep_certificate else ()
    if keep_certificate and site in facts.shared_copies:
        warnings.append(f"{host}: site {site}: certfab's copy of the shared certificate and its key stay in "
                        f"{copy_dir(site)}")
    return Offboarding(host, changes, tuple(writes), lineages, _site_domains(site, facts, listed_domains),
                       tuple(warnings), copies)


def certfab_sites(facts: HostFacts) -> tuple[str, ...]:
    """Sites certfab configured on a host: its site includes and its records of pre-certfab text."""
    names = set()
    for path in facts.owned_files:
        directory, name = posixpath.split(path)
        match = _SITE_INCLUDE.match(name)
        if directory == NGINX_CERTFAB_DIR and match:
            names.add(match.group(1))
        if directory == ORIGIN_DIR and name.endswith(".json"):
            names.add(name[: -len(".json")])
    return tuple(sorted(names))


def _included_text(path: str, owned: dict[str, str], depth: int = 0) -> str:
    """An include of certfab's as plain directives (its own includes inlined, its header comments dropped)."""
    if depth > 3 or path not in owned:
        raise PreflightError(f"{path} is included but certfab cannot read it; nothing was changed")
    lines: list[str] = []
    for line in owned[path].splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        inner = re.fullmatch(r"include\s+(\S+);", stripped)
        if inner and inner.group(1).startswith(NGINX_CERTFAB_DIR + "/"):
            lines += _included_text(inner.group(1), owned, depth + 1).splitlines()
        else:
            lines.append(stripped)
    return "\n".join(lines)


def _certfab_includes(text: str, path: str, prefix: str) -> list[tuple[Statement, str]]:
    found = []
    for st in walk_statements(parse_text(text, path)):
        if st.directive == "include" and not st.is_comment and st.children is None and st.args:
            target = resolve_path(prefix, st.args[0].value)
            if target.startswith(NGINX_CERTFAB_DIR + "/"):
                found.append((st, target))
    return found


def inline_includes(text: str, path: str, prefix: str, owned: dict[str, str]) -> str:
    """`text` with certfab's ACME include removed and its other includes replaced by what they hold."""
    edits: list[tuple[int, int, str]] = []
    for st, target in _certfab_includes(text, path, prefix):
        start = text.rfind("\n", 0, st.name.start) + 1
        indent = text[start:st.name.start]
        end = text.find("\n", st.end)
        end = len(text) if end < 0 else end + 1
        rest = text[st.end:end].strip()
        whole_line = indent.strip() == "" and (rest == "" or rest.startswith("#"))
        if target == ACME_INCLUDE or is_site_acme_include(target):
            body = ""
        else:
            body = "".join(f"{indent}{line}\n" for line in _included_text(target, owned).splitlines())
        if whole_line:
            edits.append((start, end, body))
        else:
            edits.append((st.name.start, st.end, " ".join(body.split("\n")).strip()))
    for start, end, body in sorted(edits, reverse=True):
        text = text[:start] + body + text[end:]
    return text


def plan_uninstall(host: str, facts: HostFacts, *, restore_http: bool, keep_certificates: bool) -> Offboarding:
    """uninstall: every file certfab installed removed; sites keep HTTPS (includes inlined) or, with
    restore_http, go back to plain HTTP first (remove-site for each)."""
    assert facts.nginx is not None
    warnings: list[str] = []
    lineages: list[str] = []
    copies: list[str] = []
    domains: list[str] = []
    final: dict[str, str | None] = {}
    working = facts
    if restore_http:
        for site in certfab_sites(facts):
            new, found = _site_writes(host, site, working)
            warnings += found
            final.update(new)
            writes = [FileWrite(p, t, None) for p, t in new.items() if t is not None]
            working = updated_facts_files(working, writes)
            working = _without(working, [p for p, t in new.items() if t is None])
            if site in facts.lineages and not keep_certificates:
                lineages.append(site)
            if site in facts.shared_copies and not keep_certificates:
                copies.append(site)
            domains += _site_domains(site, facts, ())
    nginx = working.nginx
    assert nginx is not None
    taken = {f.real_path for f in nginx.files.values()} | set(working.owned_files)
    for config in nginx.files.values():
        if config.real_path in final and final[config.real_path] is None:
            continue
        managed = _MANAGED_SITE.match(config.real_path)
        if config.real_path in working.owned_files and not managed:
            continue  # certfab's own files go
        inlined = inline_includes(config.text, config.path, nginx.prefix, working.owned_files)
        if managed:
            # A site certfab wrote stays served, under a name of the site's own.
            name = f"{MANAGED_SITE_DIR}/{managed.group(1)}.conf"
            while name in taken:
                name = name[: -len(".conf")] + "-site.conf"
            taken.add(name)
            final[name] = inlined
            final[config.real_path] = None
            warnings.append(f"{host}: {config.real_path} (a site certfab wrote) is now {name}")
        elif inlined != config.text:
            final[config.real_path] = inlined
    for path in working.owned_files:
        if path in final or (path == ACME_CA and (lineages or copies)):
            continue  # certbot still needs the ACME server's CA to revoke or delete: removed last
        final[path] = None
    if not restore_http and facts.lineages:
        warnings.append(f"{host}: nothing renews the certificates any more ({', '.join(sorted(facts.lineages))}); "
                        "they expire unless another tool takes over")
    if restore_http and domains:
        warnings.append(f"{host}: browsers that saw {', '.join(domains)} remember its HSTS header for its max-age "
                        "and keep asking for HTTPS until it expires")
    if not restore_http:
        # checked over HTTPS once the includes are inlined
        domains = [d for site in certfab_sites(facts) if site in facts.lineages for d in _site_domains(site, facts, ())]
    current = current_files(facts)
    final = {p: t for p, t in final.items() if p in current or t is not None}
    changes = tuple(Change(p, current.get(p, ""), t) for p, t in final.items())
    writes = expect_as_read([FileWrite(p, t or "", None if p in current else "0644", remove=t is None)
                             for p, t in final.items()], current)
    return Offboarding(host, changes, tuple(writes), tuple(lineages), tuple(domains), tuple(warnings),
                       tuple(copies))


def _without(facts: HostFacts, removed: list[str]) -> HostFacts:
    owned = {p: t for p, t in facts.owned_files.items() if p not in removed}
    nginx = facts.nginx
    if nginx is not None:
        nginx = replace(nginx, files={p: f for p, f in nginx.files.items() if f.real_path not in removed})
    return replace(facts, owned_files=owned, nginx=nginx)


@dataclass
class OffboardResult:
    """What remove-site or uninstall did on one host (or, with check, would do)."""

    host: str
    plan: Offboarding | None = None
    applied: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def result_lines(result: OffboardResult, *, check: bool) -> list[str]:
    """What a run did on one host, one line each (with check: the diffs and what would happen)."""
    plan = result.plan
    lines: list[str] = []
    if plan is None:
        return lines
    if check:
        for change in plan.changes:
            lines.append("".join(difflib.unified_diff(
                change.before.splitlines(keepends=True), (change.after or "").splitlines(keepends=True),
                fromfile=change.path, tofile="/dev/null" if change.after is None else change.path,
            )).rstrip("\n"))
        lines += [f"{result.host}: would delete certificate {name}" for name in plan.lineages]
        lines += [f"{result.host}: would delete the copy of shared certificate {name}" for name in plan.copies]
        if plan.empty:
            lines.append(f"{result.host}: no change: nothing of certfab's is left for this")
        return lines
    if not result.applied:
        return [f"{result.host}: no change: nothing of certfab's is left for this"]
    return [f"{result.host}: {line}" for line in result.applied]
