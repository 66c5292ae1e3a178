"""One host from plain nginx to strong HTTPS: facts, plan, apply as a transaction, verify."""

from __future__ import annotations

import difflib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from certfab.certs import parse_pem
from certfab.desired import (
    CertDecision,
    changed_writes,
    current_files,
    decide_certificate,
    desired_state,
    preflight,
    updated_facts_files,
)
from certfab.errors import ApplyError, CertfabError, ConnectError, PreflightError
from certfab.facts import HostFacts
from certfab.fleet import HostSession
from certfab.gather import gather, read_host, stamp_if_converged, write_stamp
from certfab.hostlock import HostLock
from certfab.issue import issue_context, parse_issue_reply
from certfab.nginxconf import NginxConfError
from certfab.remote import Remote
from certfab.stamp import Unchanged, input_key
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


@dataclass
class BootstrapResult:
    """The recap of one host: what changed, what was planned, what was kept."""

    host: str
    changes: list[str] = field(default_factory=list)
    certificates: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    planned: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def new_run_id() -> str:
    return f"certfab-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def read_acme_ca(path: Path | None) -> str | None:
    """The ACME server's CA bundle (public certificates only) to install on hosts."""
    if path is None:
        return None
    text = path.read_text(encoding="ascii", errors="replace")
    if "PRIVATE KEY" in text:
        raise CertfabError(f"{path}: acme.ca_bundle contains a private key; give only certificates")
    return text


def file_diffs(writes: list[FileWrite], before: dict[str, str]) -> list[str]:
    """Unified diffs of every planned write against the host's current files."""
    diffs = []
    for write in writes:
        old = before.get(write.path)
        diffs.append(
            "".join(
                difflib.unified_diff(
                    (old or "").splitlines(keepends=True),
                    write.content.splitlines(keepends=True),
                    fromfile=write.path if old is not None else "/dev/null",
                    tofile=write.path,
                )
            )
        )
    return diffs


def _describe(writes: list[FileWrite], before: dict[str, str]) -> list[str]:
    return [f"{'updated' if w.path in before else 'created'} {w.path}" for w in writes]


class HostRun:
    """State of one bootstrap on one host: its remote seam, lock and run id."""

    def __init__(self, session: HostSession, *, acme_ca_pem: str | None, now: datetime) -> None:
        self.session = session
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
        self.result = BootstrapResult(session.host.name)

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
            self.result.changes.append("finished the commit of an unfinished earlier run")
        else:
            self.result.changes.append("rolled back an unfinished earlier run")
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

    def verify(self, sites: list[str], expected: dict[str, str]) -> list[str]:
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
                )
        return problems

    def switch(self, writes: list[FileWrite], https_sites: list[str], expected: dict[str, str], what: str,
               *, commit: bool = True) -> None:
        """Apply, verify the HTTPS sites touched, then commit (or leave open) or roll back."""
        self.apply(writes, what)
        problems = self.verify(https_sites, expected) if https_sites else []
        if problems:
            self.rollback("verification failed: " + "; ".join(problems[:3]))
        if commit:
            self.commit()


def expected_fingerprints(facts: HostFacts, issued: dict[str, str]) -> dict[str, str]:
    """sha256 of the certificate each site should serve: the new one, or the one on disk."""
    result = {name: parse_pem(lineage.cert_pem).sha256 for name, lineage in facts.lineages.items()}
    result.update({name: parse_pem(pem).sha256 for name, pem in issued.items()})
    return result


def bootstrap_host(session: HostSession, *, check: bool, acme_ca_pem: str | None,
                   now: datetime | None = None) -> BootstrapResult:
    """Run bootstrap on one connected host (or only plan it with check=True)."""
    run = HostRun(session, acme_ca_pem=acme_ca_pem, now=now or datetime.now(timezone.utc))
    result = run.result
    host = session.host
    try:
        session.step("reading facts")
        # One command: "unchanged" when the host's stamp still holds, else every fact.
        key = None if check else input_key(host, session.inventory, acme_ca_pem)
        seen = read_host(session.remote, key=key, now=run.now)
        if isinstance(seen, Unchanged):
            result.certificates = {s.name: "kept" for s in host.sites}
            result.warnings += seen.warnings
            return result
        facts = seen.facts
        if facts.journal.strip():
            if check:
                result.warnings.append(f"{host.name}: an unfinished earlier run will be rolled back first")
            else:
                facts = run.recover(facts)
        result.warnings += preflight(host, facts)
        decisions: dict[str, CertDecision] = {s.name: decide_certificate(s, facts, run.now) for s in host.sites}
        ready = frozenset(name for name, d in decisions.items() if not d.needs_order)
        orders = [s for s in host.sites if decisions[s.name].needs_order]
        before = current_files(facts)

        all_sites = frozenset(s.name for s in host.sites)
        try:
            desired_a = desired_state(host, session.inventory, facts, https_sites=ready, acme_ca_pem=acme_ca_pem)
            writes_a = expect_as_read(changed_writes(desired_a, facts), before)
            facts_a = updated_facts_files(facts, writes_a)
            # Every edit up to full HTTPS must be possible before a file is written or a certificate ordered.
            desired_full = desired_state(host, session.inventory, facts_a, https_sites=all_sites,
                                         acme_ca_pem=acme_ca_pem)
        except NginxConfError as exc:
            raise PreflightError(f"{host.name}: {exc}") from None

        if check:
            result.planned = True
            final = {w.path: w for w in writes_a}
            final.update({w.path: w for w in changed_writes(desired_full, facts_a)})
            writes = list(final.values())
            result.diffs = file_diffs(writes, before)
            result.changes = _describe(writes, before)
            result.requests = [f"would request a certificate for {site.name} ({', '.join(site.domains)}): "
                               f"{decisions[site.name].reason}" for site in orders]
            result.changes += result.requests
            result.certificates = {n: ("keep" if not d.needs_order else "order") for n, d in decisions.items()}
            return result

        result.certificates = {n: "kept" for n in ready}
        if not writes_a and not orders:
            if key is not None and facts is seen.facts:
                write_stamp(session.remote, key=key, observed=seen, warnings=result.warnings, now=run.now)
            return result
        run.take_lock()
        expected = expected_fingerprints(facts, {})
        plumbing: list[str] = []
        if writes_a:
            # With certificates already on disk this one transaction also carries the HTTPS configuration.
            what = "applying ACME plumbing and HTTPS configuration" if ready else "installing ACME plumbing"
            # With certificates to order, the plumbing stays in this run's open journal until the
            # HTTPS switch has verified, so a failed switch restores every file of the run.
            run.switch(writes_a, sorted(ready), expected, what, commit=not orders)
            plumbing = _describe(writes_a, before)
            result.changes += plumbing
        if not orders:
            if key is not None:
                stamp_if_converged(session.remote, session.inventory, key=key, acme_ca_pem=acme_ca_pem, now=run.now)
            return result

        session.step(f"requesting {len(orders)} certificate(s)")
        forced = [(s, decisions[s.name].action == "renew") for s in orders]
        issue_reply = session.remote.script(
            "issue.sh.j2", what="requesting certificates",
            context=issue_context(run.run_id, host, session.inventory, forced, acme_ca=acme_ca_pem is not None),
        )
        issued = parse_issue_reply(issue_reply)
        if not issued.issued:
            # Nothing to switch to HTTPS: keep the ACME plumbing, so the challenge path can be examined.
            run.commit()
        if issued.image_missing is not None:
            raise ApplyError(f"{host.name}: certbot image {host.certbot.image} is missing and could not be "
                             f"pulled: {issued.image_missing}")
        if issued.selftest_failures:
            raise ApplyError(f"{host.name}: HTTP-01 self-test failed, no certificate was requested: "
                             + "; ".join(issued.selftest_failures))
        for name in issued.issued:
            result.certificates[name] = "issued"
            result.changes.append(f"issued certificate {name} ({decisions[name].reason})")
        if issue_reply.exited == EXIT_UNSAFE_DIR:
            raise ApplyError(f"{host.name}: {issue_reply.last_error_line()}")
        if not issue_reply.ok and not issued.issued:
            detail = "; ".join(issued.certbot_failures) or " ".join(issue_reply.last_error_line().split())[-300:]
            raise ApplyError(f"{host.name}: certbot failed: {detail}")

        https_now = ready | frozenset(issued.issued)
        desired_b = desired_state(host, session.inventory, facts_a, https_sites=https_now, acme_ca_pem=acme_ca_pem)
        writes_b = expect_as_read(changed_writes(desired_b, facts_a), current_files(facts_a))
        if writes_b:
            try:
                run.switch(writes_b, sorted(https_now), expected_fingerprints(facts, issued.issued),
                           "switching to HTTPS")
            except ApplyError as exc:
                # Files are back as they were before this run; the certificates are kept for the next.
                result.changes = [c for c in result.changes if c not in plumbing]
                raise ApplyError(f"{exc}; the new certificates stay in place for the next run") from None
            result.changes += _describe(writes_b, before)
        run.commit()
        if issued.certbot_failures:
            raise ApplyError(f"{host.name}: certbot failed for " + "; ".join(issued.certbot_failures))
        if key is not None:
            stamp_if_converged(session.remote, session.inventory, key=key, acme_ca_pem=acme_ca_pem, now=run.now)
        return result
    except CertfabError as exc:
        # The recap still lists what was committed before the failure.
        exc.partial = result
        raise
    finally:
        run.release()
