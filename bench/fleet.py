"""Benchmark deploy-all and report-expiry against a bare SSH sweep on lab hosts.

Brings up a lab of N hosts (certfab.lab.up), resets them, then measures with the same parallelism:
  (a) a bare sweep: open_connection + `true` on every host (the floor any fleet run pays),
  (b) the first deploy-all (run_fleet + bootstrap_host: plumbing, certificates, HTTPS),
  (c) a deploy-all that changes nothing,
  (d) report-expiry (run_fleet + host_records + build_report),
counting remote commands per host and the controller's peak memory. (a), (c) and (d) are measured
--rounds times, interleaved, and compared by their medians. Writes reports/bench-<UTC time>.json and
exits 1 when a goal is missed.

    .venv/bin/python bench/fleet.py --hosts 50
    .venv/bin/python bench/fleet.py --hosts-list web8,web9,web10 --no-lab-up   # hosts of a running lab
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))

from certfab import lab as labkit  # noqa: E402
from certfab.bootstrap import BootstrapResult, bootstrap_host, read_acme_ca  # noqa: E402
from certfab.expiry import unreachable_records  # noqa: E402
from certfab.fleet import HostSession, run_fleet  # noqa: E402
from certfab.gather import host_records  # noqa: E402
from certfab.inventory import Host, Inventory, load_inventory  # noqa: E402
from certfab.outcome import HostOutcome  # noqa: E402
from certfab.remote import RunResult  # noqa: E402
from certfab.report import CertRecord, build_report  # noqa: E402

T = TypeVar("T")

GOALS = {
    "no_change_ratio": 1.5,  # (c)/(a)
    "report_ratio": 1.5,  # (d)/(a)
    "no_change_commands_per_host": 2,
    "report_commands_per_host": 1,
    "peak_memory_mb": 200,
}


@dataclass(frozen=True)
class Phase:
    """One timed fleet run."""

    name: str
    seconds: float
    outcomes: list[HostOutcome[Any]]

    @property
    def failures(self) -> list[str]:
        """One line per host that failed."""
        return [o.error or o.host for o in self.outcomes if o.failed]

    @property
    def commands(self) -> dict[str, int]:
        """Remote commands each host ran."""
        return {o.host: o.commands for o in self.outcomes}


def peak_memory_mb() -> float:
    """The controller's peak resident memory so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(name: str, hosts: list[Host], inventory: Inventory, pipeline: Callable[[HostSession], T],
          parallel: int) -> Phase:
    """Run one pipeline over the fleet and time it."""
    started = time.monotonic()
    outcomes = run_fleet(hosts, inventory, pipeline, parallel=parallel)
    return Phase(name, time.monotonic() - started, list(outcomes))


def bare(session: HostSession) -> RunResult:
    """(a): the cheapest command."""
    return session.remote.run("true", what="true")


def prepare_lab(args: argparse.Namespace, say: Callable[[str], None]) -> tuple[labkit.LabInfo, list[str]]:
    """Bring the lab up (or take the running one) and pick the hosts to measure."""
    if args.no_lab_up:
        # Hosts other than the measured ones may be stopped on purpose (by tests): that is no problem here.
        info = labkit.running(REPO_DIR, allow_stopped_hosts=True)
        if info is None:
            raise SystemExit("no healthy lab is running; start one with `inv lab.up` or drop --no-lab-up")
    else:
        say(f"bringing up a lab of {args.hosts} hosts")
        info = labkit.up(args.hosts, REPO_DIR, progress=lambda message: say(f"  lab: {message}"))
    names = list(info.host_names)
    if args.hosts_list:
        wanted = [name.strip() for name in args.hosts_list.split(",") if name.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise SystemExit(f"--hosts-list: not lab hosts: {', '.join(unknown)}")
        names = wanted
    return info, names


def reset(names: list[str], say: Callable[[str], None]) -> None:
    """Put every measured host back to pristine plain HTTP."""
    say(f"resetting {len(names)} hosts")
    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(labkit.reset_host, name) for name in names]:
            future.result()


def report_fleet(hosts: list[Host], inventory: Inventory, parallel: int) -> Phase:
    """(d): report-expiry through the core API, report built as the task builds it."""
    started = time.monotonic()

    def pipeline(session: HostSession) -> list[CertRecord]:
        return host_records(session, timeout=inventory.ssh.connect_timeout)

    outcomes = run_fleet(hosts, inventory, pipeline, parallel=parallel)
    build_report(unreachable_records(list(outcomes), {h.name: h for h in hosts}))
    return Phase("report", time.monotonic() - started, list(outcomes))


def summary(phases: list[Phase]) -> dict[str, Any]:
    """Timings and per-host command counts of repeated phases."""
    seconds = [p.seconds for p in phases]
    commands = [count for p in phases for count in p.commands.values()]
    return {
        "seconds": [round(s, 3) for s in seconds],
        "median_seconds": round(statistics.median(seconds), 3),
        "commands_per_host_max": max(commands, default=0),
        "commands_per_host_min": min(commands, default=0),
        "failures": sorted({f for p in phases for f in p.failures}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=20, help="lab size to bring up (default 20)")
    parser.add_argument("--parallel", type=int, default=20, help="hosts at once, as deploy-all --parallel (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of (a), (c), (d) (median; default 3)")
    parser.add_argument("--hosts-list", help="measure only these lab hosts (comma-separated)")
    parser.add_argument("--no-lab-up", action="store_true", help="use the running lab as it is (no resize)")
    parser.add_argument("--no-reset", action="store_true", help="do not reset the hosts first (b is then no first run)")
    parser.add_argument("--output", type=Path, default=REPO_DIR / "reports", help="directory for bench-<time>.json")
    args = parser.parse_args(argv)
    if args.hosts < 1 or args.parallel < 1 or args.rounds < 1:
        parser.error("--hosts, --parallel and --rounds must be positive")

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    info, names = prepare_lab(args, say)
    inventory = load_inventory(info.inventory)
    hosts = [inventory.host(name) for name in names]
    if not args.no_reset:
        reset(names, say)
    acme_ca = read_acme_ca(inventory.acme.ca_bundle)
    memory_before = peak_memory_mb()

    def deploy(session: HostSession) -> BootstrapResult:
        return bootstrap_host(session, check=False, acme_ca_pem=acme_ca)

    say(f"(b) first deploy-all on {len(hosts)} hosts, parallel {args.parallel}")
    first = timed("first deploy-all", hosts, inventory, deploy, args.parallel)
    sweeps: list[Phase] = []
    no_change: list[Phase] = []
    reports: list[Phase] = []
    for round_number in range(1, args.rounds + 1):
        say(f"round {round_number}/{args.rounds}: (a) bare sweep, (c) no-change deploy-all, (d) report-expiry")
        sweeps.append(timed("bare sweep", hosts, inventory, bare, args.parallel))
        no_change.append(timed("no-change deploy-all", hosts, inventory, deploy, args.parallel))
        reports.append(report_fleet(hosts, inventory, args.parallel))

    a, c, d = summary(sweeps), summary(no_change), summary(reports)
    changed_again = sorted({o.host for p in no_change for o in p.outcomes
                            if o.value is not None and o.value.changed})
    values = {
        "no_change_ratio": c["median_seconds"] / a["median_seconds"],
        "report_ratio": d["median_seconds"] / a["median_seconds"],
        "no_change_commands_per_host": c["commands_per_host_max"],
        "report_commands_per_host": d["commands_per_host_max"],
        "peak_memory_mb": peak_memory_mb(),
    }
    goals = {name: {"value": round(value, 3), "limit": GOALS[name], "ok": value <= GOALS[name]}
             for name, value in values.items()}
    problems = [f"(b) {f}" for f in first.failures] + [f"(a) {f}" for f in a["failures"]]
    problems += [f"(c) {f}" for f in c["failures"]] + [f"(d) {f}" for f in d["failures"]]
    problems += [f"(c) {host}: changed on a run that should change nothing" for host in changed_again]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    document = {
        "kind": "bench-fleet",
        "time": stamp,
        "hosts": len(hosts),
        "host_names": names,
        "parallel": args.parallel,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "a_bare_sweep": a,
        "b_first_deploy": {"seconds": round(first.seconds, 3), "commands_per_host": first.commands,
                           "failures": first.failures},
        "c_no_change_deploy": c,
        "d_report_expiry": d,
        "ratios": {"c/a": round(values["no_change_ratio"], 3), "d/a": round(values["report_ratio"], 3)},
        "peak_memory_mb": {"before_runs": round(memory_before, 1), "after_runs": round(values["peak_memory_mb"], 1)},
        "goals": goals,
        "problems": problems,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"bench-{stamp}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")

    print(f"hosts {len(hosts)}, parallel {args.parallel}, rounds {args.rounds}, {os.cpu_count()} CPUs")
    print(f"(a) bare sweep          median {a['median_seconds']:.2f}s  {a['seconds']}  commands/host {a['commands_per_host_max']}")
    print(f"(b) first deploy-all           {first.seconds:.2f}s  commands/host max {max(first.commands.values(), default=0)}")
    print(f"(c) no-change deploy-all median {c['median_seconds']:.2f}s  {c['seconds']}  commands/host {c['commands_per_host_max']}")
    print(f"(d) report-expiry       median {d['median_seconds']:.2f}s  {d['seconds']}  commands/host {d['commands_per_host_max']}")
    print(f"(c)/(a) = {values['no_change_ratio']:.2f}   (d)/(a) = {values['report_ratio']:.2f}   "
          f"peak memory {values['peak_memory_mb']:.0f} MB")
    for name, goal in goals.items():
        print(f"  {'ok  ' if goal['ok'] else 'MISS'} {name}: {goal['value']} (goal <= {goal['limit']})")
    for problem in problems:
        print(f"  problem: {problem}")
    print(f"written {path.relative_to(REPO_DIR) if path.is_relative_to(REPO_DIR) else path}")
    if not args.no_lab_up:
        print(f"note: the lab now has {len(info.hosts)} hosts; `inv lab.up --hosts 12` restores the test size")
    return 0 if all(goal["ok"] for goal in goals.values()) and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
