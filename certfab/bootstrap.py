"""One host from plain nginx to strong HTTPS: read its facts (or find it unchanged), plan, execute."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from certfab.errors import CertfabError
from certfab.gather import read_host
from certfab.stamp import Unchanged, input_key

if TYPE_CHECKING:
    from certfab.acmedir import AcmeDirectory
    from certfab.fleet import HostSession
    from certfab.history import RateGuard
    from certfab.plan import Plan
    from certfab.ratelimit import Order

# "copied": a peer got its shared site's lineage from the issuer; "awaits": a peer has no copy yet;
# "held": an issuer's order waits for deploy-all's second pass (every backend has its ACME location then).
CertOutcome = Literal["kept", "issued", "keep", "order", "copied", "awaits", "held", "refused"]


@dataclass
class BootstrapResult:
    """The recap of one host: its plan, and what the run did with it."""

    host: str
    plan: Plan | None = None
    # Check mode: the plan was only shown.
    planned: bool = False
    # What this run changed on the host, in order (committed, or finished before a failure).
    applied: list[str] = field(default_factory=list)
    certificates: dict[str, CertOutcome] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # Orders the rate-limit guard refused, one line each (the run exits 1).
    refused: list[str] = field(default_factory=list)

    @property
    def changes(self) -> list[str]:
        """What changed, or in check mode what would change."""
        if self.planned:
            return self.plan.describe() if self.plan is not None else []
        return self.applied

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    @property
    def diffs(self) -> list[str]:
        return [f.diff for f in self.plan.files] if self.planned and self.plan is not None else []

    @property
    def requests(self) -> list[str]:
        return [o.describe() for o in self.plan.orders] if self.planned and self.plan is not None else []


def read_acme_ca(path: Path | None) -> str | None:
    """The ACME server's CA bundle (public certificates only) to install on hosts."""
    if path is None:
        return None
    text = path.read_text(encoding="ascii", errors="replace")
    if "PRIVATE KEY" in text:
        raise CertfabError(f"{path}: acme.ca_bundle contains a private key; give only certificates")
    return text


def admit_orders(guard: RateGuard, result: BootstrapResult, plan: Plan, *, forecast: bool) -> list[Order]:
    """The plan's orders the rate-limit guard admits; each refusal goes to the result as a line, and its
    site is marked refused. A forecast (a plan) words the lines as what would happen."""
    from certfab.ratelimit import Order

    wanted = [Order(result.host, o.site, o.domains, renewal=o.action == "renew") for o in plan.orders]
    allowed, refused = guard.admit(wanted)
    result.refused += [line.replace(": refused: ", ": would be refused: ", 1) if forecast else line
                       for line in refused]
    admitted = {order.site for order in allowed}
    result.certificates.update({o.site: "refused" for o in plan.orders if o.site not in admitted})
    return allowed


def bootstrap_host(session: HostSession, *, check: bool, acme_ca_pem: str | None,
                   now: datetime | None = None, directory: AcmeDirectory | None = None,
                   guard: RateGuard | None = None, hold: frozenset[str] = frozenset()) -> BootstrapResult:
    """Plan one connected host and, unless check=True, carry the plan out.

    directory is the ACME server's directory, read once per run when a site asks for a profile; guard
    admits orders under the fleet's rate limits (shared by every host of the run). Orders for the sites
    in `hold` wait (see certfab.sync.deploy_shared); the result says "held".
    """
    now = now or datetime.now(timezone.utc)
    result = BootstrapResult(session.host.name)
    host = session.host
    session.step("reading facts")
    # One command: "unchanged" when the host's stamp still holds, else every fact.
    key = None if check else input_key(host, session.inventory, acme_ca_pem)
    try:
        seen = read_host(session.remote, key=key, now=now)
    except CertfabError as exc:
        exc.partial = result
        raise
    if isinstance(seen, Unchanged):
        result.certificates = {s.name: "kept" for s in host.sites}
        result.warnings += seen.warnings
        return result
    # Something may change: only now load planning and the executor (the no-change path stays light).
    from certfab.executor import HostRun, execute
    from certfab.plan import make_plan

    run = HostRun(session, acme_ca_pem=acme_ca_pem, now=now, result=result, guard=guard)
    try:
        facts = seen.facts
        if facts.journal.strip() and not check:
            facts = run.recover(facts)
        plan = make_plan(host, session.inventory, facts, now=run.now, acme_ca_pem=acme_ca_pem,
                         directory=directory, hold=hold)
        result.plan = plan
        result.warnings += [w for w in plan.warnings if w not in result.warnings]
        if check:
            result.planned = True
            result.certificates = {c.site: ("order" if c.needs_order else "awaits" if c.action == "await" else "keep")
                                   for c in plan.certificates}
            if guard is not None and plan.orders:
                # What the rate-limit guard would say to these orders now (a plan's guard records nothing).
                admit_orders(guard, result, plan, forecast=True)
            return result
        execute(run, plan, seen if facts is seen.facts else None, key)
        return result
    except CertfabError as exc:
        # The recap still lists what was committed before the failure.
        exc.partial = result
        raise
    finally:
        run.release()
