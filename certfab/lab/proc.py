"""Running commands, starting daemons that outlive us, and ending them by pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from certfab.errors import LabError

CLEAN_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
}

# Children started by this process, reaped when found dead so they do not linger as zombies.
_children: dict[int, subprocess.Popen[bytes]] = {}


def _tail(text: str, lines: int = 5) -> str:
    """Last lines of a command's output, on one line."""
    kept = [line.strip() for line in text.strip().splitlines()[-lines:] if line.strip()]
    return " | ".join(kept)


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = 600,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command with captured text output; LabError when it fails and check is set."""
    try:
        result = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            check=False,
        )
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]}: command not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv)}: no result after {timeout} s") from exc
    if check and result.returncode != 0:
        detail = _tail(result.stderr) or _tail(result.stdout)
        raise LabError(f"{' '.join(argv)} failed with exit status {result.returncode}: {detail}")
    return result


def spawn(
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start a daemon in its own session (it outlives us), output appended to log; return its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        try:
            child = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env if env is not None else CLEAN_ENV),
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        except FileNotFoundError as exc:
            raise LabError(f"{argv[0]}: command not found") from exc
    _children[child.pid] = child
    return child.pid


def reap() -> None:
    """Collect the exit status of dead children we started."""
    for pid, child in list(_children.items()):
        if child.poll() is not None:
            # Several threads may reap at once (hosts are reset in parallel).
            _children.pop(pid, None)


@dataclass(frozen=True)
class PidRecord:
    """A process identity that survives pid reuse: pid plus its start time in clock ticks."""

    pid: int
    start: int


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name, or None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """Start time of a live (non-zombie) process, None if it is gone."""
    reap()
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def record(pid: int) -> PidRecord:
    """Identity of a process that was just started."""
    started = start_time(pid)
    if started is None:
        raise LabError(f"process {pid} exited right after it was started")
    return PidRecord(pid, started)


def is_alive(rec: PidRecord) -> bool:
    """Whether the recorded process is still the one running under that pid."""
    return start_time(rec.pid) == rec.start


def write_pid_file(path: Path, rec: PidRecord) -> None:
    """Record a process we started."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{rec.pid} {rec.start}\n")
    tmp.replace(path)


def read_pid_file(path: Path) -> PidRecord | None:
    """The process recorded in a pid file, None if the file is missing or unreadable."""
    try:
        pid_text, start_text = path.read_text().split()
        return PidRecord(int(pid_text), int(start_text))
    except (OSError, ValueError):
        return None


def live_pid(path: Path) -> int | None:
    """Pid of the recorded process if it is still running."""
    rec = read_pid_file(path)
    return rec.pid if rec is not None and is_alive(rec) else None


def _all_pids() -> list[int]:
    """Pids of every process on the machine."""
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _parent(pid: int) -> int | None:
    """Parent pid of a process, None if it is gone."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields is not None else None


def cmdline(pid: int) -> list[str]:
    """Arguments of a process (empty if it is gone or a kernel thread)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def exe(pid: int) -> str | None:
    """Executable of a process, None if it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def cwd(pid: int) -> str | None:
    """Working directory of a process, None if it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def find_pids(match: Callable[[int], bool]) -> set[int]:
    """Live processes for which match(pid) is true, never this process or its ancestors."""
    spared = {os.getpid()}
    parent = os.getppid()
    while parent > 1 and parent not in spared:
        spared.add(parent)
        parent = _parent(parent) or 0
    found = set()
    for pid in _all_pids():
        if pid not in spared and start_time(pid) is not None:
            try:
                if match(pid):
                    found.add(pid)
            except OSError:
                continue
    return found


def pids_with_mounts_from(markers: Sequence[str]) -> set[int]:
    """Processes in another mount namespace where a mount's source path contains one of the markers."""
    own = os.stat("/proc/self/ns/mnt")
    # Never the machine's own mount namespace, whatever is mounted in it.
    verdict: dict[tuple[int, int], bool] = {(own.st_dev, own.st_ino): False}
    found: set[int] = set()
    for pid in _all_pids():
        try:
            ns = os.stat(f"/proc/{pid}/ns/mnt")
        except OSError:
            continue
        key = (ns.st_dev, ns.st_ino)
        if key not in verdict:
            try:
                lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
            except OSError:
                continue
            roots = (line.split()[3] for line in lines if len(line.split()) > 4)
            verdict[key] = any(marker in root for root in roots for marker in markers)
        if verdict[key]:
            found.add(pid)
    return found


def pids_in_netns(netns: Path | str) -> set[int]:
    """Processes whose network namespace is the given handle, plus all their descendants."""
    try:
        target = os.stat(netns)
    except OSError:
        return set()
    found: set[int] = set()
    for pid in _all_pids():
        try:
            ns = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if (ns.st_ino, ns.st_dev) == (target.st_ino, target.st_dev):
            found.add(pid)
    return found | descendants(found)


def descendants(roots: Iterable[int]) -> set[int]:
    """All processes below the given ones in the process tree."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        parent = _parent(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def terminate(pids: Iterable[int], *, grace: float = 5.0) -> None:
    """End processes: SIGTERM, then SIGKILL whatever is still alive after the grace period."""
    targets = {pid: start_time(pid) for pid in set(pids)}
    records = [PidRecord(pid, start) for pid, start in targets.items() if start is not None]
    for rec in records:
        try:
            os.kill(rec.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        records = [rec for rec in records if is_alive(rec)]
        if not records:
            return
        time.sleep(0.05)
    for rec in records:
        if is_alive(rec):
            try:
                os.kill(rec.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(is_alive(rec) for rec in records):
        time.sleep(0.05)


def stop_recorded(path: Path, *, grace: float = 5.0) -> bool:
    """End the process recorded in a pid file (if it still runs) and remove the file."""
    rec = read_pid_file(path)
    stopped = False
    if rec is not None and is_alive(rec):
        terminate([rec.pid], grace=grace)
        stopped = True
    path.unlink(missing_ok=True)
    return stopped


def port_open(host: str, port: int, *, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to host:port is accepted."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(what: str, ready: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> None:
    """Poll a zero-argument predicate until it is true; LabError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        if time.monotonic() > deadline:
            raise LabError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(interval)
