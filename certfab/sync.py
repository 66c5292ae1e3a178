"""Bringing the peers of shared sites up to date with their issuer's lineage.

Three steps, each a parallel run: read every backend's certificate of each shared site (public halves,
one command per host); read the full lineage (key included) from the issuers that have a lagging peer;
install it on each lagging peer as one transaction (switch, nginx -t, reload, check the served
certificate from here, commit or roll back). The key goes from one SSH channel to another through
this process's memory: never to a file, a log or a report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from certfab.bootstrap import BootstrapResult
from certfab.errors import ApplyError, CertfabError, RemoteError
from certfab.fleet import HostSession, Progress, Stop, run_fleet
from certfab.inventory import Host, Inventory
from certfab.outcome import HostOutcome
from certfab.paths import LETSENCRYPT_LIVE, SHARED_LINEAGES
from certfab.shared import (
    COPY_FILES,
    Lineage,
    MaterialError,
    SharedSite,
    cert_sha256,
    check_lineage,
    copy_writes,
    shared_sites,
)

READ_SCRIPT = "shared-read.sh.j2"


@dataclass(frozen=True)
class BackendState:
    """One backend's certificates of its shared sites: certbot's lineage and certfab's copy (PEM)."""

    live: dict[str, str]
    copies: dict[str, str]
    material: dict[str, Lineage] = field(default_factory=dict)

    def serving(self, site: str, *, issuer: bool) -> str | None:
        """The certificate the site's lineage holds here: an issuer's own (or its copy), a peer's copy."""
        if issuer:
            return self.live.get(site) or self.copies.get(site)
        return self.copies.get(site)


def read_state(session: HostSession, sites: list[str], material: Iterable[str] = ()) -> BackendState:
    """One command: the host's certificates of `sites`, and the whole lineage of the `material` sites."""
    reply = session.remote.script(READ_SCRIPT, what="reading shared certificates", sites=sites,
                                  material=list(material), live=LETSENCRYPT_LIVE, copies=SHARED_LINEAGES)
    if not reply.has("done"):
        raise RemoteError(f"{session.host.name}: reading shared certificates: the answer is incomplete "
                          f"(exit {reply.exited}): {reply.last_error_line()}")
    live = {f.arg: f.body.decode("ascii", errors="replace") for f in reply.all("live-cert")}
    copies = {f.arg: f.body.decode("ascii", errors="replace") for f in reply.all("copy-cert")}
    files: dict[str, dict[str, str]] = {}
    for frame in reply.all("material"):
        site, _, name = frame.arg.partition("/")
        if name in COPY_FILES:
            files.setdefault(site, {})[name] = frame.body.decode("ascii", errors="replace")
    lineages = {}
    for site in material:
        try:
            lineages[site] = check_lineage(site, files.get(site, {}))
        except MaterialError as exc:
            raise CertfabError(f"{session.host.name}: {exc}") from None
    return BackendState(live, copies, lineages)


def install_copies(session: HostSession, lineages: list[Lineage], verify: frozenset[str],
                   result: BootstrapResult, issuers: dict[str, str]) -> BootstrapResult:
    """Install lineage copies on a peer as one transaction; sites in `verify` must then serve them."""
    from certfab.executor import HostRun

    run = HostRun(session, acme_ca_pem=None, now=datetime.now(timezone.utc), result=result)
    try:
        run.take_lock()
        writes = [w for lineage in lineages for w in copy_writes(lineage)]
        names = ", ".join(lineage.site for lineage in lineages)
        run.switch(writes, sorted(verify), {lineage.site: lineage.sha256 for lineage in lineages},
                   f"installing the shared certificate of {names}")
    finally:
        run.release()
    for lineage in lineages:
        result.certificates[lineage.site] = "copied"
        result.applied.append(f"installed shared certificate {lineage.site} ({lineage.sha256[:16]}…) "
                              f"from {issuers[lineage.site]}")
    return result


@dataclass
class SyncPlan:
    """What a sync found: per peer, the shared sites whose copy lags behind its issuer."""

    lagging: dict[str, list[str]] = field(default_factory=dict)
    first: dict[str, set[str]] = field(default_factory=dict)  # peers with no copy yet (not HTTPS yet)
    errors: dict[str, list[str]] = field(default_factory=dict)
    current: dict[str, list[str]] = field(default_factory=dict)


def plan_sync(shared: dict[str, SharedSite], states: dict[str, BackendState | None],
              peers: set[str]) -> SyncPlan:
    """Which peers lag behind their issuer (pure). `states` None: the host did not answer."""
    plan = SyncPlan()
    for name, site in shared.items():
        issuer_state = states.get(site.issuer.name)
        issuer_sha = cert_sha256(issuer_state.serving(name, issuer=True)) if issuer_state is not None else None
        for peer in site.peers:
            if peer.name not in peers or states.get(peer.name) is None:
                continue
            if issuer_state is None:
                plan.errors.setdefault(peer.name, []).append(
                    f"{name}: its issuer {site.issuer.name} did not answer; the copy stays as it is")
                continue
            if issuer_sha is None:
                plan.errors.setdefault(peer.name, []).append(
                    f"{name}: its issuer {site.issuer.name} has no certificate yet (deploy-all orders it)")
                continue
            state = states[peer.name]
            assert state is not None
            if cert_sha256(state.copies.get(name)) == issuer_sha:
                plan.current.setdefault(peer.name, []).append(name)
                continue
            plan.lagging.setdefault(peer.name, []).append(name)
            if name not in state.copies:
                plan.first.setdefault(peer.name, set()).add(name)
    return plan


def sync_fleet(
    inventory: Inventory,
    selected: tuple[Host, ...],
    *,
    parallel: int,
    accept_new: bool = False,
    config: Any = None,
    progress: Progress | None = None,
    stop: Stop | None = None,
) -> tuple[list[HostOutcome[BootstrapResult]], SyncPlan]:
    """Bring the selected peers of every shared site up to date with their issuer.

    Returns one outcome per backend involved (the issuers are only read) and what was found.
    """
    chosen = {h.name for h in selected}
    shared = {name: site for name, site in shared_sites(inventory).items()
              if any(b.name in chosen for b in site.peers)}
    if not shared:
        return [], SyncPlan()
    hosts = [h for h in inventory.hosts if any(h.name in {b.name for b in s.backends} for s in shared.values())]
    sites_of = {h.name: [n for n, s in shared.items() if h.name in {b.name for b in s.backends}] for h in hosts}

    def read(session: HostSession) -> BackendState:
        session.step("reading shared certificates")
        return read_state(session, sites_of[session.host.name])

    common: dict[str, Any] = {"parallel": parallel, "accept_new": accept_new, "config": config,
                              "progress": progress, "stop": stop}
    first = {o.host: o for o in run_fleet(hosts, inventory, read, **common)}
    states = {name: o.value for name, o in first.items()}
    plan = plan_sync(shared, states, chosen)

    # The issuers of lagging sites: their whole lineage, one command each.
    wanted: dict[str, set[str]] = {}
    for sites in plan.lagging.values():
        for site in sites:
            wanted.setdefault(shared[site].issuer.name, set()).add(site)
    issuers = [h for h in hosts if h.name in wanted]

    def read_material(session: HostSession) -> BackendState:
        session.step("reading the shared lineage")
        return read_state(session, [], sorted(wanted[session.host.name]))

    material: dict[str, Lineage] = {}
    issuer_errors: dict[str, str] = {}
    for read_outcome in run_fleet(issuers, inventory, read_material, **common):
        if read_outcome.value is not None:
            material.update(read_outcome.value.material)
        else:
            for site in wanted[read_outcome.host]:
                issuer_errors[site] = read_outcome.error or f"{read_outcome.host}: failed"

    results = {h.name: BootstrapResult(h.name) for h in hosts}
    for peer, sites in plan.current.items():
        results[peer].certificates.update({site: "kept" for site in sites})
    peers = [h for h in hosts if h.name in plan.lagging]
    issuer_names = {name: site.issuer.name for name, site in shared.items()}

    def install(session: HostSession) -> BootstrapResult:
        name = session.host.name
        lineages = [material[site] for site in plan.lagging[name] if site in material]
        problems = [f"{site}: {issuer_errors[site]}" for site in plan.lagging[name] if site in issuer_errors]
        if lineages:
            session.step("installing shared certificates")
            verify = frozenset(site for site in plan.lagging[name] if site not in plan.first.get(name, set()))
            install_copies(session, lineages, verify & {lineage.site for lineage in lineages}, results[name],
                           issuer_names)
        if problems:
            raise ApplyError(f"{name}: " + "; ".join(problems))
        return results[name]

    installed = {o.host: o for o in run_fleet(peers, inventory, install, **common)}
    outcomes: list[HostOutcome[BootstrapResult]] = []
    for host in hosts:
        base = first[host.name]
        done = installed.get(host.name)
        outcome: HostOutcome[BootstrapResult] = done if done is not None else HostOutcome(
            host.name, error=base.error, exit_code=base.exit_code, seconds=base.seconds, notices=base.notices,
            started=base.started)
        outcome.commands += base.commands
        if not outcome.failed:
            outcome.value = results[host.name]
            errors = plan.errors.get(host.name)
            if errors:
                outcome.error = f"{host.name}: " + "; ".join(errors)
        elif outcome.value is None and states.get(host.name) is not None:
            outcome.value = results[host.name]
        outcomes.append(outcome)
    return outcomes, plan


def hold_for(inventory: Inventory, host: Host) -> frozenset[str]:
    """The shared sites a host issues: deploy-all's first pass holds their orders."""
    return frozenset(name for name, site in shared_sites(inventory).items() if site.issuer.name == host.name)


def merge(earlier: HostOutcome[BootstrapResult], later: HostOutcome[BootstrapResult]) -> HostOutcome[BootstrapResult]:
    """One host's outcome over several passes: what each did, the last one's state and error."""
    if earlier.value is not None and later.value is not None:
        value = later.value
        value.applied = earlier.value.applied + value.applied
        value.certificates = {**earlier.value.certificates, **value.certificates}
        value.warnings = list(dict.fromkeys(earlier.value.warnings + value.warnings))
        value.plan = value.plan or earlier.value.plan
    elif later.value is None:
        later.value = earlier.value
    later.commands += earlier.commands
    later.seconds += earlier.seconds
    later.notices = list(dict.fromkeys(earlier.notices + later.notices))
    return later


def deploy_shared(
    inventory: Inventory,
    hosts: tuple[Host, ...],
    outcomes: list[HostOutcome[BootstrapResult]],
    bootstrap: Callable[[HostSession], BootstrapResult],
    *,
    parallel: int,
    accept_new: bool = False,
    config: Any = None,
    progress: Progress | None = None,
    stop: Stop | None = None,
) -> list[HostOutcome[BootstrapResult]]:
    """deploy-all's passes after the first (which held the shared sites' orders), when there are shared sites.

    2. the issuers whose orders were held order them now: every backend has its ACME location, so the
       CA may reach any of them; 3. sync: the peers get the issuer's lineage; 4. peers that got their
       first copy switch the site to HTTPS (a bootstrap again). Hosts that failed stay as they are.
    """
    common: dict[str, Any] = {"parallel": parallel, "accept_new": accept_new, "config": config,
                              "progress": progress, "stop": stop}
    by_host = {o.host: o for o in outcomes}

    def again(names: set[str]) -> None:
        chosen = [h for h in hosts if h.name in names]
        for outcome in run_fleet(chosen, inventory, bootstrap, **common):
            by_host[outcome.host] = merge(by_host[outcome.host], outcome)

    held = {o.host for o in outcomes if not o.failed and o.value is not None
            and "held" in o.value.certificates.values()}
    if held:
        again(held)
    healthy = tuple(h for h in hosts if not by_host[h.name].failed)
    synced, plan = sync_fleet(inventory, healthy, **common)
    for outcome in synced:
        if outcome.host in by_host and (outcome.failed or (outcome.value is not None and outcome.value.applied)):
            by_host[outcome.host] = merge(by_host[outcome.host], outcome)
    again({peer for peer, sites in plan.first.items()
           if peer in by_host and not by_host[peer].failed and sites})
    return [by_host[h.name] for h in hosts]
