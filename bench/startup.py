"""Whole commands as an operator starts them, each a fresh process, against a bare SSH sweep process.

Every measured command is its own process (interpreter start, imports, inventory, SSH and output
included), started from the repository with CERTFAB_INVENTORY pointing at the lab inventory:

  sweep          python bench/sweep.py: plain paramiko, strict host keys from the inventory's
                 known_hosts, `true` on every host, one thread per host (the floor)
  deploy-all     inv deploy-all --limit HOSTS --parallel P --json, on hosts that need no change
  report-expiry  fab report-expiry --limit HOSTS --parallel P --format json
  import-invoke  python -c "import invoke" (the floor of a task runner's start)
  inv-list       inv -l

A first deploy-all converges the hosts (not timed). Then each round runs every command once, the
order reversed on every other round (A B C D E, E D C B A, ...), so drift and neighbours' load fall
on both sides alike. Ratios are medians over medians; the median of the rounds' own ratios is shown
beside them. Exits 1 when a goal is missed or a run failed (a host not ok, a change on a no-change
run, an unreachable host in the report).

    .venv/bin/python bench/startup.py --hosts web13,web14            # while developing
    .venv/bin/python bench/startup.py --hosts 20 --runs 9             # web1..web20 of a 20-host lab
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))

from certfab.inventory import load_inventory  # noqa: E402

BIN = Path(sys.executable).parent
RUN_TIMEOUT = 900
# (command, floor it is compared with, highest ratio allowed)
GOALS = (
    ("deploy-all", "sweep", 1.3),
    ("report-expiry", "sweep", 1.5),
    ("inv-list", "import-invoke", 1.2),
)


@dataclass
class Command:
    """One command line, run as a fresh process; `judge` turns its output into problems."""

    name: str
    argv: list[str]
    judge: Callable[[subprocess.CompletedProcess[str]], list[str]]
    seconds: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def run(self, env: dict[str, str]) -> None:
        started = time.perf_counter()
        try:
            done = subprocess.run(self.argv, cwd=REPO_DIR, env=env, capture_output=True, text=True,
                                  timeout=RUN_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            self.problems.append(f"{self.name}: did not finish within {RUN_TIMEOUT}s")
            self.seconds.append(float(RUN_TIMEOUT))
            return
        self.seconds.append(time.perf_counter() - started)
        self.problems += [f"{self.name}: {p}" for p in self.judge(done)]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def exit_zero(done: subprocess.CompletedProcess[str]) -> list[str]:
    if done.returncode:
        return [f"exit {done.returncode}: {' '.join(done.stderr.strip().splitlines()[-3:])}"]
    return []


def deploy_rows(hosts: list[str], *, converging: bool = False) -> Callable[[subprocess.CompletedProcess[str]], list[str]]:
    """Judge a `deploy-all --json`: every host in the recap and ok; unchanged unless converging."""

    def judge(done: subprocess.CompletedProcess[str]) -> list[str]:
        try:
            rows: list[dict[str, Any]] = json.loads(done.stdout)
        except json.JSONDecodeError:
            return [f"exit {done.returncode}, no JSON recap: {' '.join(done.stderr.strip().splitlines()[-3:])}"]
        seen = {row.get("host") for row in rows}
        problems = [f"{host}: missing from the recap" for host in hosts if host not in seen]
        for row in rows:
            if row.get("error"):
                problems.append(str(row["error"]))
            elif row.get("status") != "ok" and not (converging and row.get("status") == "changed"):
                problems.append(f"{row.get('host')}: {row.get('status')} {row.get('changes')}")
        return problems or exit_zero(done)

    return judge


def report_rows(hosts: list[str]) -> Callable[[subprocess.CompletedProcess[str]], list[str]]:
    """Judge a `report-expiry --format json`: every host present and reachable (its exit is the report's)."""

    def judge(done: subprocess.CompletedProcess[str]) -> list[str]:
        try:
            rows: list[dict[str, Any]] = json.loads(done.stdout)["rows"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return [f"exit {done.returncode}, no JSON report: {' '.join(done.stderr.strip().splitlines()[-3:])}"]
        seen = {row.get("host") for row in rows}
        problems = [f"{host}: missing from the report" for host in hosts if host not in seen]
        problems += [f"{row.get('host')}: unreachable {row.get('notes')}" for row in rows
                     if row.get("status") == "unreachable"]
        return problems

    return judge


def host_names(spec: str, known: list[str]) -> list[str]:
    """`web13,web14` as given, or a count N for the first N hosts of the inventory."""
    if spec.isdigit():
        count = int(spec)
        if not 1 <= count <= len(known):
            raise SystemExit(f"--hosts: {count} hosts asked, the inventory has {len(known)}")
        return known[:count]
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise SystemExit(f"--hosts: not in the inventory: {', '.join(unknown) or '(none given)'}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default="web13,web14",
                        help="comma list of inventory hosts, or N for the first N (default web13,web14)")
    parser.add_argument("--runs", type=int, default=7, help="rounds; the goals need at least 7 (default 7)")
    parser.add_argument("--parallel", type=int, default=0,
                        help="--parallel of deploy-all and report-expiry (default: one per host, as the sweep)")
    parser.add_argument("--inventory", type=Path, default=REPO_DIR / "lab" / "inventory.yaml",
                        help="inventory file (default lab/inventory.yaml)")
    parser.add_argument("--only", default="", help="comma list of commands to run (default: all)")
    parser.add_argument("--output", type=Path, default=REPO_DIR / "reports",
                        help="directory for bench-startup-<time>.json")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.parallel < 0:
        parser.error("--runs must be positive and --parallel not negative")

    inventory = load_inventory(args.inventory)
    hosts = host_names(args.hosts, [h.name for h in inventory.hosts])
    parallel = args.parallel or len(hosts)
    targets = []
    for name in hosts:
        host = inventory.host(name)
        if host.key_file is None or host.jump:
            raise SystemExit(f"{name}: the sweep needs a key_file and no jump host")
        targets.append(f"{host.user}@{host.address}:{host.port}")
    key_files = {str(inventory.host(name).key_file) for name in hosts}
    if len(key_files) != 1:
        raise SystemExit("the sweep takes one key file: the hosts name several")
    # Bytecode cached as an installed tool has it (pip compiles on install), in a directory of this run's own.
    pycache = tempfile.mkdtemp(prefix="certfab-bench-pycache-")
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    env.update(CERTFAB_INVENTORY=str(args.inventory.resolve()), COLUMNS="200", PYTHONPYCACHEPREFIX=pycache)
    try:
        return measure(args, hosts, parallel, targets, key_files.pop(), env)
    finally:
        shutil.rmtree(pycache, ignore_errors=True)


def measure(args: argparse.Namespace, hosts: list[str], parallel: int, targets: list[str], key_file: str,
            env: dict[str, str]) -> int:
    """Converge, warm up, run the rounds, print and write the figures; 1 if a goal or a run failed."""
    inventory = load_inventory(args.inventory)
    limit = ",".join(hosts)
    python = sys.executable

    commands = [
        Command("sweep", [python, str(REPO_DIR / "bench" / "sweep.py"), "--known-hosts",
                          str(inventory.ssh.known_hosts), "--key", key_file, *targets], exit_zero),
        Command("deploy-all", [str(BIN / "inv"), "deploy-all", "--limit", limit, "--parallel", str(parallel),
                               "--json"], deploy_rows(hosts)),
        Command("report-expiry", [str(BIN / "fab"), "report-expiry", "--limit", limit, "--parallel", str(parallel),
                                  "--format", "json"], report_rows(hosts)),
        Command("import-invoke", [python, "-c", "import invoke"], exit_zero),
        Command("inv-list", [str(BIN / "inv"), "-l"], exit_zero),
    ]
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        unknown = wanted - {c.name for c in commands}
        if unknown:
            raise SystemExit(f"--only: unknown commands {', '.join(sorted(unknown))}")
        commands = [c for c in commands if c.name in wanted]
    names = {c.name for c in commands}

    if "deploy-all" in names:
        print(f"converging {len(hosts)} hosts with one deploy-all (not timed)", file=sys.stderr, flush=True)
        converge = Command("converge", next(c for c in commands if c.name == "deploy-all").argv,
                           deploy_rows(hosts, converging=True))
        converge.run(env)
        if converge.problems:
            print("\n".join(converge.problems))
            return 1

    # As pip does on install: Invoke never writes bytecode for the task modules it loads itself.
    subprocess.run([python, "-m", "compileall", "-q", "certfab", "tasks", "fabfile.py"], cwd=REPO_DIR, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    # One untimed round writes the other bytecode caches (Python's and the templates').
    for command in commands:
        Command(command.name, command.argv, command.judge).run(env)

    for number in range(args.runs):
        order = commands if number % 2 == 0 else commands[::-1]
        for command in order:
            command.run(env)
        print(f"round {number + 1}/{args.runs}: "
              + "  ".join(f"{c.name} {c.seconds[-1]:.2f}s" for c in commands), file=sys.stderr, flush=True)

    by_name = {c.name: c for c in commands}
    results: dict[str, Any] = {}
    print(f"hosts {len(hosts)} ({limit}), parallel {parallel}, rounds {args.runs}, {os.cpu_count()} CPUs")
    for command in commands:
        print(f"  {command.name:<14} median {command.median:6.3f}s  "
              f"[{', '.join(f'{s:.2f}' for s in command.seconds)}]")
    missed = []
    for name, floor, limit_ratio in GOALS:
        if name not in by_name or floor not in by_name:
            continue
        measured, base = by_name[name], by_name[floor]
        ratio = measured.median / base.median
        paired = statistics.median(m / b for m, b in zip(measured.seconds, base.seconds))
        ok = ratio <= limit_ratio and args.runs >= 7
        if not ok:
            missed.append(name)
        results[f"{name}/{floor}"] = {"ratio": round(ratio, 3), "paired_median": round(paired, 3),
                                      "goal": limit_ratio, "ok": ok}
        note = "" if args.runs >= 7 else " (fewer than 7 rounds: no verdict)"
        print(f"  {'ok  ' if ok else 'MISS'} {name} / {floor} = {ratio:.2f} (rounds' own: {paired:.2f}; "
              f"goal <= {limit_ratio}){note}")
    problems = [p for c in commands for p in c.problems]
    for problem in problems:
        print(f"  problem: {problem}")

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"bench-startup-{stamp}.json"
    path.write_text(json.dumps({
        "kind": "bench-startup", "time": stamp, "hosts": hosts, "parallel": parallel, "rounds": args.runs,
        "cpus": os.cpu_count(),
        "commands": {c.name: {"argv": c.argv, "seconds": [round(s, 4) for s in c.seconds],
                              "median_seconds": round(c.median, 4)} for c in commands},
        "ratios": results, "problems": problems,
    }, indent=2) + "\n")
    print(f"written {path.relative_to(REPO_DIR) if path.is_relative_to(REPO_DIR) else path}")
    return 1 if missed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
