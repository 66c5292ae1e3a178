"""Collecting every certificate of the fleet: on disk (one command per host) and as served (TLS)."""

from __future__ import annotations

from certfab.certs import CertificateError, parse_pem
from certfab.facts import HostFacts, gather_for_report
from certfab.fleet import HostOutcome, HostSession
from certfab.inventory import Host
from certfab.paths import CRON_FILE, RENEW_SCRIPT
from certfab.report import CertRecord
from certfab.tlsprobe import fetch_served


def cron_present(facts: HostFacts) -> bool:
    return RENEW_SCRIPT in facts.owned_files.get(CRON_FILE, "") or RENEW_SCRIPT in facts.crontab


def host_records(session: HostSession, *, timeout: float = 10.0) -> list[CertRecord]:
    """One record per certificate lineage on the host, with what each of its names serves."""
    host = session.host
    session.step("reading certificates")
    facts = gather_for_report(session.remote)
    session.step("fetching served certificates")
    records = []
    seen = set()
    for name, lineage in facts.lineages.items():
        seen.add(name)
        try:
            disk = parse_pem(lineage.cert_pem)
        except CertificateError as exc:
            records.append(CertRecord(host.name, name, unreachable_error=f"{name}: unreadable certificate: {exc}"))
            continue
        served = {}
        for domain in disk.names:
            result = fetch_served(host.address, 443, domain, timeout)
            served[domain] = result if result.ok else (result.error or "no certificate served")
        records.append(CertRecord(host.name, name, tuple(disk.names), disk, served, facts.status, cron_present(facts)))
    for site in host.sites:
        if site.name not in seen:
            records.append(CertRecord(host.name, site.name, site.domains, None, {}, facts.status, cron_present(facts)))
    return records


def unreachable_records(outcomes: list[HostOutcome[list[CertRecord]]], hosts: dict[str, Host]) -> list[CertRecord]:
    """All records, with one 'unreachable' row for each host that could not be read."""
    records: list[CertRecord] = []
    for outcome in outcomes:
        if outcome.value is not None:
            records += outcome.value
        else:
            host = hosts[outcome.host]
            records.append(CertRecord(host.name, "", host.domains, unreachable_error=outcome.error or "unreachable"))
    return records
