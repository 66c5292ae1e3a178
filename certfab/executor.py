"""Carrying out a host's plan: the host lock, transactions (apply, verify, commit or roll back),
certificate orders, the HTTPS switch and the no-change stamp. The one module of bootstrap that
changes hosts; it is loaded only when a host has something to do.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from certfab.bootstrap import BootstrapResult, admit_orders
from certfab.certs import parse_pem
from certfab.desired import changed_writes, current_files, desired_state, renewal_conf_write
from certfab.errors import ApplyError, ConnectError
from certfab.facts import HostFacts
from certfab.fleet import HostSession
from certfab.gather import gather, stamp_if_converged, write_stamp
from certfab.hostlock import HostLock
from certfab.issue import EXIT_IMAGE_MISSING, issue_context, parse_issue_reply
from certfab.plan import CertificateDecision, Plan
from certfab.ratelimit import Order
from certfab.remote import Remote
from certfab.stamp import Observed
from certfab.transaction import (
    EXIT_NGINX_TEST_FAILED,
    EXIT_RELOAD_FAILED,
    EXIT_STAGE_FAILED,
    EXIT_UNSAFE_DIR,
    ChangedOnHostError,
    FileWrite,
    apply_context,
    commit_context,
    expect_as_read,
    rollback_context,
    shown,
)
from certfab.verify import verify_site

if TYPE_CHECKING:
    from certfab.history import RateGuard

IMAGE_SCRIPT = "image.sh.j2"


def new_run_id() -> str:
    return f"certfab-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def _describe(writes: list[FileWrite], before: dict[str, str]) -> list[str]:
    return [f"{'removed' if w.remove else 'updated' if w.path in before else 'created'} {w.path}" for w in writes]


class HostRun:
    """State of one bootstrap on one host: its remote seam, lock and run id."""

    def __init__(self, session: HostSession, *, acme_ca_pem: str | None, now: datetime,
                 result: BootstrapResult, guard: RateGuard | None = None) -> None:
        self.session = session
        self.guard = guard
        self.host = session.host
        self.inventory = session.inventory
        self.remote: Remote = session.remote
        self.acme_ca_pem = acme_ca_pem
        self.now = now
        self.run_id = new_run_id()
        self.lock: HostLock | None = None
        self.journal_open = False
        # Transactions in this run's open journal, and the files they already backed up.
        self.transactions = 0
        self.journaled: set[str] = set()
        self.result = result

    def take_lock(self) -> None:
        if self.lock is None:
            self.session.step("locking")
            self.lock = HostLock(self.remote, self.run_id)
            self.lock.acquire()

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def recover(self, facts: HostFacts) -> HostFacts:
        """Finish or roll back what an interrupted run left half-done, before anything else."""
        self.take_lock()
        self.session.step("rolling back an unfinished run")
        reply = self.remote.check_script("rollback.sh.j2", what="rolling back an unfinished run",
                                         context=rollback_context())
        if reply.has("committed"):
            self.result.applied.append("finished the commit of an unfinished earlier run")
        else:
            self.result.applied.append("rolled back an unfinished earlier run")
        return gather(self.remote)

    def apply(self, writes: list[FileWrite], what: str) -> None:
        """Switch files as one transaction on the host; the journal stays open until commit().

        While this run's journal is still open (ACME plumbing awaiting its HTTPS switch), the files
        join it, so a failure restores everything to what it was before the run.
        """
        self.session.step(what)
        extend = self.journal_open
        context = apply_context(self.run_id, writes, extend=extend, tx=self.transactions if extend else 0,
                                journaled=self.journaled)
        try:
            reply = self.remote.script("apply.sh.j2", what=what, context=context)
        except ConnectError as exc:
            raise ConnectError(f"{exc}; the next run rolls back the open transaction first") from None
        if reply.ok and reply.has("applied"):
            self.journal_open = True
            self.transactions += 1
            self.journaled |= {w.path for w in writes}
            return
        changed = reply.get("changed")
        if changed is not None:
            kept = ""
            if extend:
                self._undo_open_journal()
                kept = "; this run's earlier changes were rolled back"
            raise ChangedOnHostError(f"{self.host.name}: {shown(changed.arg)} changed since its facts were read; "
                                     f"nothing was written{kept}")
        if extend:
            # The earlier transaction of this run is still open: undo it too, whatever failed.
            self._undo_open_journal()
        detail = " ".join((reply.text("nginx-test-failed") or reply.text("reload-failed")
                           or reply.last_error_line()).split())[:400] or "no output"
        if reply.exited == EXIT_NGINX_TEST_FAILED:
            raise ApplyError(f"{self.host.name}: nginx -t failed after {what}: {detail}; "
                             "every file was restored, nginx still runs the old configuration")
        if reply.exited == EXIT_RELOAD_FAILED:
            raise ApplyError(f"{self.host.name}: nginx reload failed after {what}: {detail}; every file was restored")
        if reply.exited in (EXIT_STAGE_FAILED, EXIT_UNSAFE_DIR):
            raise ApplyError(f"{self.host.name}: {what}: {detail}" + ("" if "nothing was" in detail or "restored" in detail
                                                                     else "; nothing was changed"))
        raise ApplyError(f"{self.host.name}: {what} failed (exit {reply.exited}): {detail}")

    def _undo_open_journal(self) -> None:
        self.remote.check_script("rollback.sh.j2", what="rolling back", context=rollback_context())
        self.journal_open = False
        self.transactions = 0
        self.journaled = set()

    def commit(self) -> None:
        if self.journal_open:
            self.remote.check_script("commit.sh.j2", what="committing", context=commit_context(self.run_id))
            self.journal_open = False
            self.transactions = 0
            self.journaled = set()

    def rollback(self, reason: str) -> None:
        self.session.step("rolling back")
        self._undo_open_journal()
        raise ApplyError(f"{self.host.name}: {reason}; every file was restored and nginx reloaded on the old config")

    def verify(self, sites: list[str], expected: dict[str, str],
               probe_paths: Mapping[str, tuple[str, ...]] | None = None) -> list[str]:
        self.session.step("verifying over HTTPS")
        problems: list[str] = []
        for site in self.host.sites:
            if site.name in sites:
                problems += verify_site(
                    self.host, site,
                    trust_roots=self.inventory.acme.trust_roots,
                    expected_sha256=expected.get(site.name),
                    hsts_expected=self.host.tls.hsts_max_age > 0,
                    timeout=self.inventory.ssh.connect_timeout,
                    paths=(probe_paths or {}).get(site.name, ()),
                )
        return problems

    def switch(self, writes: list[FileWrite], https_sites: list[str], expected: dict[str, str], what: str,
               *, commit: bool = True, probe_paths: Mapping[str, tuple[str, ...]] | None = None) -> None:
        """Apply, verify the HTTPS sites touched, then commit (or leave open) or roll back."""
        self.apply(writes, what)
        problems = self.verify(https_sites, expected, probe_paths) if https_sites else []
        if problems:
            self.rollback("verification failed: " + "; ".join(problems[:3]))
        if commit:
            self.commit()


def expected_fingerprints(facts: HostFacts, issued: dict[str, str]) -> dict[str, str]:
    """sha256 of the certificate each site should serve: the new one, or the one on disk."""
    # A shared site's copy counts where certbot has no lineage of that name (a peer, or a new issuer).
    result = {name: parse_pem(pem).sha256 for name, pem in facts.shared_copies.items()}
    result.update({name: parse_pem(lineage.cert_pem).sha256 for name, lineage in facts.lineages.items()})
    result.update({name: parse_pem(pem).sha256 for name, pem in issued.items()})
    return result


def _pull_image(run: HostRun) -> None:
    """Pull the certbot image the host lacks, before anything changes; ApplyError when it cannot be had."""
    host = run.host
    run.session.step(f"pulling {host.certbot.image}")
    reply = run.remote.script(IMAGE_SCRIPT, what="pulling the certbot image", runtime=host.certbot.runtime,
                              image=host.certbot.image, exit_missing=EXIT_IMAGE_MISSING)
    missing = reply.get("image-missing")
    if missing is not None or not reply.ok:
        why = " ".join(missing.text.split()) if missing is not None else reply.last_error_line()
        raise ApplyError(f"{host.name}: certbot image {host.certbot.image} is missing and could not be pulled: "
                         f"{''.join(c if c.isprintable() else ' ' for c in why)}")
    run.result.applied.append(f"pulled {host.certbot.image}")


def _admitted_orders(run: HostRun, plan: Plan) -> tuple[tuple[CertificateDecision, ...], list[Order]]:
    """The plan's orders the rate-limit guard lets through (refusals go to the result), and their records."""
    if run.guard is None or not plan.orders:
        return plan.orders, []
    allowed = admit_orders(run.guard, run.result, plan, forecast=False)
    sites = {order.site for order in allowed}
    return tuple(o for o in plan.orders if o.site in sites), allowed


def execute(run: HostRun, plan: Plan, observed: Observed | None, key: str | None) -> None:
    """Carry out a plan: plumbing (and HTTPS for kept certificates), orders, the HTTPS switch, the stamp."""
    session, host, result = run.session, run.host, run.result
    ready = plan.ready_sites
    result.certificates = {name: "kept" for name in sorted(ready)}
    result.certificates.update({c.site: "awaits" for c in plan.certificates if c.action == "await"})
    result.certificates.update({c.site: "held" for c in plan.held_orders})
    if plan.empty:
        if key is not None and observed is not None:
            write_stamp(session.remote, key=key, observed=observed, warnings=result.warnings, now=run.now)
        return
    orders, admitted = _admitted_orders(run, plan)
    if orders and not plan.facts_after_plumbing.image_present:
        _pull_image(run)
    run.take_lock()
    # The host's files before the run, for "created" or "updated" in the recap.
    before = {f.path: f.before for f in plan.files if f.before is not None}
    expected = expected_fingerprints(plan.facts_after_plumbing, {})
    plumbing: list[str] = []
    if plan.plumbing_writes:
        # With certificates already on disk this one transaction also carries the HTTPS configuration.
        what = "applying ACME plumbing and HTTPS configuration" if ready else "installing ACME plumbing"
        # With certificates to order, the plumbing stays in this run's open journal until the
        # HTTPS switch has verified, so a failed switch restores every file of the run.
        run.switch(list(plan.plumbing_writes), sorted(ready), expected, what, commit=not orders,
                   probe_paths=plan.probe_paths)
        plumbing = _describe(list(plan.plumbing_writes), before)
        result.applied += plumbing
    if not orders:
        if key is not None:
            stamp_if_converged(session.remote, session.inventory, key=key, acme_ca_pem=run.acme_ca_pem, now=run.now)
        return

    session.step(f"requesting {len(orders)} certificate(s)")
    sites = {s.name: s for s in host.sites}
    forced = [(sites[o.site], o.forced) for o in orders]
    issue_reply = session.remote.script(
        "issue.sh.j2", what="requesting certificates",
        context=issue_context(run.run_id, host, session.inventory, forced, acme_ca=run.acme_ca_pem is not None),
    )
    issued = parse_issue_reply(issue_reply)
    if run.guard is not None:
        for order in admitted:
            run.guard.settle(order, issued=order.site in issued.issued,
                             failed_names=issued.failed_validations.get(order.site, ()),
                             detail="; ".join(f for f in issued.certbot_failures if f.startswith(order.site + ":")))
    if not issued.issued:
        # Nothing to switch to HTTPS: keep the ACME plumbing, so the challenge path can be examined.
        run.commit()
    if issued.image_missing is not None:
        raise ApplyError(f"{host.name}: certbot image {host.certbot.image} is missing and could not be "
                         f"pulled: {issued.image_missing}")
    if issued.selftest_failures:
        raise ApplyError(f"{host.name}: HTTP-01 self-test failed, no certificate was requested: "
                         + "; ".join(issued.selftest_failures))
    reasons = {o.site: o.reason for o in orders}
    for name in issued.issued:
        result.certificates[name] = "issued"
        result.applied.append(f"issued certificate {name} ({reasons[name]})")
    if issue_reply.exited == EXIT_UNSAFE_DIR:
        raise ApplyError(f"{host.name}: {issue_reply.last_error_line()}")
    if not issue_reply.ok and not issued.issued:
        detail = "; ".join(issued.certbot_failures) or " ".join(issue_reply.last_error_line().split())[-300:]
        raise ApplyError(f"{host.name}: certbot failed: {detail}")

    https_now = ready | frozenset(issued.issued)
    facts_a = plan.facts_after_plumbing
    if https_now == frozenset(sites):
        writes_b = list(plan.https_writes)
    else:
        # Some orders failed: switch only the sites that have their certificate now.
        desired_b = desired_state(host, session.inventory, facts_a, https_sites=https_now,
                                  acme_ca_pem=run.acme_ca_pem)
        writes_b = expect_as_read(changed_writes(desired_b, facts_a), current_files(facts_a), facts_a.secret_files)
    # certbot has just written the new lineages' renewal configuration: give each its renewal margin.
    for name, pem in sorted(issued.issued.items()):
        conf = renewal_conf_write(name, pem, issued.renewal_confs.get(name, ""))
        if conf is not None:
            writes_b.append(conf)
            before[conf.path] = issued.renewal_confs[name]
    if writes_b:
        try:
            run.switch(writes_b, sorted(https_now), expected_fingerprints(facts_a, issued.issued),
                       "switching to HTTPS", probe_paths=plan.probe_paths)
        except ApplyError as exc:
            # Files are back as they were before this run; the certificates are kept for the next.
            result.applied = [c for c in result.applied if c not in plumbing]
            raise ApplyError(f"{exc}; the new certificates stay in place for the next run") from None
        result.applied += _describe(writes_b, before)
    run.commit()
    if issued.certbot_failures:
        raise ApplyError(f"{host.name}: certbot failed for " + "; ".join(issued.certbot_failures))
    if key is not None:
        stamp_if_converged(session.remote, session.inventory, key=key, acme_ca_pem=run.acme_ca_pem, now=run.now)
