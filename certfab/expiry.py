"""The fleet's certificates as report records: pure helpers (collecting them is certfab.gather)."""

from __future__ import annotations

from certfab.facts import HostFacts
from certfab.inventory import Host
from certfab.outcome import HostOutcome
from certfab.paths import CRON_FILE, RENEW_SCRIPT
from certfab.report import CertRecord


def cron_present(facts: HostFacts) -> bool:
    return RENEW_SCRIPT in facts.owned_files.get(CRON_FILE, "") or RENEW_SCRIPT in facts.crontab


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
