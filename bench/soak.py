"""Soak: many consecutive no-change `inv deploy-all` runs at full parallelism on a machine kept busy.

Each run is a whole `inv` process, as an operator starts it (CERTFAB_INVENTORY=lab/inventory.yaml,
`--limit` the hosts, `--parallel` = number of hosts, `--json`). While they run, one busy-loop process per
core keeps the CPUs loaded, so thread interleavings differ from an idle machine; each busy loop stops on its
own after --load-minutes even if this script dies, and is stopped by its pid when the soak ends.
A first deploy-all converges the hosts (not counted). Any host failure, a host that changed something,
or a non-zero exit counts as a failure; the summary gives runs, failures and the median seconds per run.
Exits 1 on any failure.

    .venv/bin/python bench/soak.py --runs 30 --hosts web1,web2,web3,web4,web5,web6,web7,web8,web9,web10,web11,web12
    .venv/bin/python bench/soak.py --runs 2 --hosts web13,web14      # a quick try
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parents[1]
INV = REPO_DIR / ".venv" / "bin" / "inv"
INVENTORY = "lab/inventory.yaml"
DEFAULT_HOSTS = ",".join(f"web{i}" for i in range(1, 13))
RUN_TIMEOUT = 900
BUSY_LOOP = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


@dataclass
class RunResult:
    """One deploy-all process: how long it took and what went wrong, per host."""

    seconds: float
    exit_code: int
    problems: list[str] = field(default_factory=list)


def deploy_all(hosts: list[str], *, timeout: float = RUN_TIMEOUT) -> RunResult:
    """Run one `inv deploy-all --json` on the hosts, all at once; judge each host's row."""
    env = {**os.environ, "CERTFAB_INVENTORY": INVENTORY, "COLUMNS": "200"}
    command = [str(INV), "deploy-all", "--limit", ",".join(hosts), "--parallel", str(len(hosts)), "--json"]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return RunResult(time.monotonic() - started, -1, [f"deploy-all did not finish within {timeout:g}s"])
    result = RunResult(time.monotonic() - started, done.returncode)
    try:
        rows: list[dict[str, Any]] = json.loads(done.stdout)
    except json.JSONDecodeError:
        tail = " ".join(done.stderr.strip().splitlines()[-3:])
        result.problems.append(f"exit {done.returncode}, no JSON recap: {tail}")
        return result
    seen = {row.get("host") for row in rows}
    result.problems += [f"{host}: missing from the recap" for host in hosts if host not in seen]
    for row in rows:
        if row.get("error"):
            result.problems.append(str(row["error"]))
        elif row.get("status") != "ok":
            result.problems.append(f"{row.get('host')}: {row.get('status')} {row.get('changes')}")
    if done.returncode and not result.problems:
        result.problems.append(f"exit {done.returncode}: {' '.join(done.stderr.strip().splitlines()[-3:])}")
    if "Traceback" in done.stderr:
        result.problems.append("a traceback on stderr")
    return result


@contextlib.contextmanager
def cores_kept_busy(minutes: float) -> Iterator[int]:
    """One busy-loop process per core, each ending by itself after `minutes`; stopped by pid on exit."""
    count = os.cpu_count() or 1
    loops = [
        subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(minutes * 60)], stdin=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        yield count
    finally:
        for loop in loops:
            if loop.poll() is None:
                loop.terminate()
        for loop in loops:
            try:
                loop.wait(10)
            except subprocess.TimeoutExpired:
                loop.kill()
                loop.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="no-change runs to make (default 30)")
    parser.add_argument("--hosts", default=DEFAULT_HOSTS, help=f"comma list of lab hosts (default {DEFAULT_HOSTS})")
    parser.add_argument("--load-minutes", type=float, default=60.0,
                        help="upper bound on how long the CPU load may last (default 60)")
    args = parser.parse_args(argv)
    hosts = [name.strip() for name in args.hosts.split(",") if name.strip()]
    if args.runs < 1 or not hosts:
        parser.error("need at least one run and one host")

    print(f"soak: converging {len(hosts)} hosts with one deploy-all", flush=True)
    converge = deploy_all(hosts)
    converge.problems = [p for p in converge.problems if ": changed " not in p]  # changing is its job
    if converge.exit_code or converge.problems:
        print(f"soak: the converging run failed (exit {converge.exit_code}): {'; '.join(converge.problems)}")
        return 1

    results: list[RunResult] = []
    with cores_kept_busy(args.load_minutes) as loops:
        print(f"soak: {args.runs} no-change runs at --parallel {len(hosts)}, {loops} busy loops", flush=True)
        for number in range(1, args.runs + 1):
            result = deploy_all(hosts)
            results.append(result)
            state = "ok" if not result.problems else f"FAILED: {'; '.join(result.problems)}"
            print(f"run {number}/{args.runs}: {result.seconds:.1f}s exit {result.exit_code} {state}", flush=True)

    failed = [result for result in results if result.problems or result.exit_code]
    host_failures = sum(len(result.problems) for result in results)
    median = statistics.median(result.seconds for result in results)
    print(f"soak summary: runs {len(results)}, failed runs {len(failed)}, host failures {host_failures}, "
          f"median {median:.2f}s, hosts {len(hosts)} ({','.join(hosts)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
