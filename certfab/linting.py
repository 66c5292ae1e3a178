"""`lint` on a host: read its facts, list the findings; with fix, apply the safe fixes as one
transaction (nginx -t, reload, rollback on failure) and lint again."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import datetime, timezone

from certfab.bootstrap import BootstrapResult
from certfab.executor import HostRun
from certfab.facts import HostFacts
from certfab.fleet import HostSession
from certfab.gather import gather
from certfab.lint import HSTS_FIX_AGE, Finding, dhparam_bits, dhparam_paths, fixes, lint_facts
from certfab.transaction import FileWrite, expect_as_read


@dataclass
class LintResult:
    """A host's findings (after the fixes, when fixing) and the diffs of the fixes applied."""

    host: str
    findings: list[Finding] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)


def read_dhparams(session: HostSession, facts: HostFacts) -> dict[str, int | None]:
    """Bits of every DH parameter file the HTTPS servers name (one remote command, only when there are any)."""
    paths = dhparam_paths(facts)
    if not paths:
        return {}
    reply = session.remote.check_script("dhparam-read.sh.j2", what="reading DH parameters", paths=paths)
    bits: dict[str, int | None] = dict.fromkeys(paths)
    for frame in reply.all("dhparam"):
        if frame.arg in bits:
            bits[frame.arg] = dhparam_bits(frame.text)
    return bits


def lint_host(session: HostSession, *, fix: bool, check: bool = False) -> LintResult:
    """Lint one host; with fix, apply the fixable findings' fixes through the transaction, then lint again
    (with check as well: only show the fixes' diffs)."""
    host = session.host
    session.step("reading facts")
    facts = gather(session.remote)
    age, subdomains = host.tls.hsts_max_age or HSTS_FIX_AGE, host.tls.hsts_include_subdomains
    dhparams = read_dhparams(session, facts)
    result = LintResult(host.name, lint_facts(facts, hsts_max_age=age, include_subdomains=subdomains,
                                              dhparams=dhparams))
    if not fix or not any(f.fixable for f in result.findings) or facts.nginx is None:
        return result
    changed = fixes(facts, hsts_max_age=age, include_subdomains=subdomains, dhparams=dhparams)
    if not changed:
        return result
    files = facts.nginx.files
    writes = expect_as_read([FileWrite(files[p].real_path, text, None) for p, text in changed.items()],
                            {f.real_path: f.text for f in files.values()})
    result.diffs = ["".join(difflib.unified_diff(files[p].text.splitlines(keepends=True), text.splitlines(keepends=True),
                                                 fromfile=files[p].real_path, tofile=files[p].real_path))
                    for p, text in changed.items()]
    if check:
        return result
    run = HostRun(session, acme_ca_pem=None, now=datetime.now(timezone.utc), result=BootstrapResult(host.name))
    try:
        run.take_lock()
        run.apply(writes, "applying lint fixes")
        run.commit()
    finally:
        run.release()
    result.fixed = [f"updated {w.path}" for w in writes]
    facts = gather(session.remote)
    result.findings = lint_facts(facts, hsts_max_age=age, include_subdomains=subdomains,
                                 dhparams=read_dhparams(session, facts))
    return result
