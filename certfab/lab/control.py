"""Bringing the whole lab up and down, its status, and the helpers tests use on running hosts."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from certfab.errors import LabError
from certfab.lab import dns, files, image, layout, mail, network, packages, pebble, proc, storage
from certfab.lab import hosts as hostops

Progress = Callable[[str], None]
SERVICES = ("pebble", "dns", "smtp")


@dataclass(frozen=True)
class LabHost:
    """One lab host as the inventory knows it."""

    name: str
    address: str
    domains: tuple[str, ...]


@dataclass(frozen=True)
class LabInfo:
    """Where a running lab's hosts are and where its files live."""

    repo_dir: Path
    lab_dir: Path
    inventory: Path
    known_hosts: Path
    key_file: Path
    pebble_ca: Path
    pebble_root: Path
    bridge_address: str
    acme_directory: str
    hosts: tuple[LabHost, ...]
    state_dir: Path
    pebble_log: Path
    mail_dir: Path
    log_dir: Path
    # Hosts that run podman instead of dockerd (the last ones of the lab).
    podman_hosts: tuple[str, ...] = ()

    @property
    def host_names(self) -> tuple[str, ...]:
        """Names of the lab hosts, in order."""
        return tuple(host.name for host in self.hosts)

    def host(self, name: str) -> LabHost:
        """The lab host with that name; LabError if there is none."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise LabError(f"no lab host '{name}'; lab hosts: {', '.join(self.host_names)}")


def default_repo_dir() -> Path:
    """The checkout this package lives in (editable install), else the current directory."""
    candidate = Path(__file__).resolve().parents[2]
    return candidate if (candidate / "pyproject.toml").is_file() else Path.cwd()


def _repo(repo_dir: Path | str | None) -> Path:
    """The repository directory to use, absolute."""
    return Path(repo_dir).resolve() if repo_dir is not None else default_repo_dir()


def lab_info(count: int, repo_dir: Path | str | None = None, podman: int = 0) -> LabInfo:
    """LabInfo for a lab of `count` hosts (the last `podman` of them podman hosts) in <repo_dir>/lab."""
    repo = _repo(repo_dir)
    lab_dir = repo / "lab"
    names = [layout.host_name(i) for i in range(1, count + 1)]
    return LabInfo(
        repo_dir=repo,
        lab_dir=lab_dir,
        inventory=lab_dir / layout.LAB_FILES["inventory"],
        known_hosts=lab_dir / layout.LAB_FILES["known_hosts"],
        key_file=lab_dir / layout.LAB_FILES["key_file"],
        pebble_ca=lab_dir / layout.LAB_FILES["pebble_ca"],
        pebble_root=lab_dir / layout.LAB_FILES["pebble_root"],
        bridge_address=layout.BRIDGE_ADDRESS,
        acme_directory=layout.ACME_DIRECTORY,
        hosts=tuple(
            LabHost(name, layout.host_address(layout.host_index(name)), layout.host_domains(name))
            for name in names
        ),
        state_dir=layout.STATE_DIR,
        pebble_log=layout.PEBBLE_LOG,
        mail_dir=layout.MAIL_DIR,
        log_dir=layout.LOG_DIR,
        podman_hosts=tuple(names[len(names) - podman:]) if podman else (),
    )


def _require_root() -> None:
    """Refuse to run where the lab cannot work."""
    if not sys.platform.startswith("linux"):
        raise LabError("the lab needs Linux (network namespaces, bind mounts)")
    if os.geteuid() != 0:
        raise LabError("the lab needs root: run it as root (network namespaces, bind mounts, port 25/53)")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Hold the lab lock so two `up`/`down` runs cannot interleave."""
    layout.STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(layout.LOCK_FILE, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _read_state() -> dict[str, object] | None:
    """What the last successful `up` recorded, None if nothing usable."""
    try:
        state = json.loads(layout.STATE_FILE.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _state_info() -> LabInfo | None:
    """LabInfo recorded by the last successful `up`, None if there is none."""
    state = _read_state()
    if state is None:
        return None
    count, repo, podman = state.get("hosts"), state.get("repo_dir"), state.get("podman", 0)
    if not isinstance(count, int) or not isinstance(repo, str) or not isinstance(podman, int):
        return None
    return lab_info(count, repo, podman)


def _problems(info: LabInfo) -> list[str]:
    """What is wrong with a recorded lab (empty when it is fully up)."""
    found = []
    for service in SERVICES:
        if proc.live_pid(layout.pid_file(service)) is None:
            found.append(f"{service} is not running")
    for host in info.hosts:
        if hostops.leader_pid(host.name) is None:
            found.append(f"{host.name} is stopped")
        elif not proc.port_open(host.address, 22):
            found.append(f"{host.name} does not accept SSH")
    if not proc.port_open(layout.BRIDGE_ADDRESS, layout.ACME_PORT):
        found.append("pebble does not accept connections")
    for path in (info.inventory, info.known_hosts, info.key_file, info.pebble_ca, info.pebble_root):
        if not path.is_file():
            found.append(f"{path} is missing")
    return found


def running(repo_dir: Path | str | None = None, *, allow_stopped_hosts: bool = False) -> LabInfo | None:
    """The running lab if it is healthy and its files are in <repo_dir>/lab, else None.

    With allow_stopped_hosts, a host stopped or being reset on purpose (by a test) does not count.
    """
    info = _state_info()
    if info is None or info.repo_dir != _repo(repo_dir):
        return None
    problems = _problems(info)
    if allow_stopped_hosts:
        problems = [p for p in problems if not p.endswith((" is stopped", " does not accept SSH"))]
    return None if problems else info


def _is_host_name(name: str) -> bool:
    """Whether a name is a valid lab host name."""
    try:
        layout.host_index(name)
    except LabError:
        return False
    return True


def _is_lab_service(pid: int) -> bool:
    """Whether a process is Pebble, the lab DNS or the lab SMTP server, judged by its command line."""
    args = proc.cmdline(pid)
    program = proc.exe(pid)
    if program == "/usr/bin/pebble":
        return str(pebble.CONFIG) in args
    if program == dns.NAMED:
        return dns.is_lab_named(args)
    return "aiosmtpd" in args and str(layout.MAIL_DIR) in args


_HOST_TREE_MARKERS = (f"{layout.HOSTS_DIR}/", f"{layout.DOCKER_CACHE}/", f"{layout.PODMAN_CACHE}/")


def _teardown(say: Progress) -> None:
    """Stop everything the lab started (recorded or left over) and remove its network."""
    proc.reap()
    names = {name for name in network.lab_namespaces() if _is_host_name(name)}
    if layout.RUN_DIR.is_dir():
        names |= {p.stem for p in layout.RUN_DIR.glob("web*.pid") if _is_host_name(p.stem)}
    if names:
        say(f"stopping hosts: {_names(sorted(names, key=layout.host_index))}")
        with ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
            for future in [pool.submit(hostops.stop, name) for name in names]:
                future.result()
    for service in SERVICES:
        if proc.stop_recorded(layout.pid_file(service)):
            say(f"stopped {service}")
    if layout.RUN_DIR.is_dir():
        for leftover in layout.RUN_DIR.glob("*.pid"):
            proc.stop_recorded(leftover)
    # Lab processes whose pid files or namespace handles were lost: services are recognised by the
    # lab paths in their command lines, host processes by the lab's trees mounted in their namespace.
    orphans = proc.find_pids(_is_lab_service)
    orphans |= proc.pids_with_mounts_from(_HOST_TREE_MARKERS) - {os.getpid()}
    if orphans:
        say(f"stopping {len(orphans)} unrecorded lab processes")
        proc.terminate(orphans | proc.descendants(orphans))
    if names or network.bridge_exists() or network.lab_links():
        say("removing lab network")
        network.teardown()
    layout.STATE_FILE.unlink(missing_ok=True)
    if layout.HOSTS_DIR.exists():
        shutil.rmtree(layout.HOSTS_DIR)


def _names(names: Sequence[str]) -> str:
    """A short human list of host names."""
    if len(names) <= 4:
        return ", ".join(names)
    return f"{names[0]}..{names[-1]} ({len(names)} hosts)"


def _first_error(futures: Sequence[Future[None]]) -> None:
    """Wait for every future, then raise the first failure."""
    errors = [future.exception() for future in futures]
    for error in errors:
        if error is not None:
            raise error


def _start_services(names: Sequence[str]) -> None:
    """Lab DNS with the hosts' names, then Pebble (which validates through that DNS)."""
    dns.write_config(
        {
            domain: [layout.host_address(layout.host_index(name))]
            for name in names
            for domain in layout.host_domains(name)
        }
    )
    dns.start()
    layout.PEBBLE_LOG.write_text("")
    pebble.start_pebble()


def _bring_up_host(name: str, authorized_key: str) -> None:
    """Give a host pristine trees, start it and wait until it answers."""
    hostops.populate(name, authorized_key)
    hostops.start(name)
    hostops.wait_ready(name)


def _check_image(name: str, say: Progress) -> None:
    """Make sure a running host holds the certbot image (importing it if needed)."""
    hostops.ensure_image(name, say)


def _seed_and_bring_up(name: str, authorized_key: str, identity: str) -> None:
    """Seed a stopped host's docker storage with the image, then bring it up."""
    storage.seed_host(name, identity)
    _bring_up_host(name, authorized_key)
    hostops.ensure_image(name)


def up(hosts: int = 2, repo_dir: Path | str | None = None, *, progress: Progress | None = None,
       cert_lifetime: int = layout.CERTIFICATE_VALIDITY_SECONDS, podman: int = 0) -> LabInfo:
    """Bring up a lab of `hosts` hosts (reusing a healthy one of that shape); return its info.

    cert_lifetime is the validity (seconds) of the certificates Pebble issues; the last `podman` hosts
    run podman instead of dockerd.
    """
    say: Progress = progress or (lambda _message: None)
    _require_root()
    if not 1 <= hosts <= layout.MAX_HOSTS:
        raise LabError(f"a lab has 1 to {layout.MAX_HOSTS} hosts, not {hosts}")
    if not 0 <= podman <= hosts:
        raise LabError(f"--podman {podman}: between 0 and the number of hosts ({hosts})")
    repo = _repo(repo_dir)
    with _locked():
        current = running(repo)
        if current is not None and len(current.hosts) == hosts and len(current.podman_hosts) == podman:
            say(f"lab already up with {hosts} hosts")
            if pebble.configured_lifetime() != cert_lifetime:
                say(f"restarting Pebble with {cert_lifetime} s certificates")
                _restart_pebble(cert_lifetime, current)
            return current
        started = time.monotonic()
        packages.ensure_packages(say)
        image.discard_stale_rootfs()
        with ThreadPoolExecutor(max_workers=min(32, hosts + 4)) as pool:
            for tag, tar in layout.IMAGES:
                if not tar.is_file():
                    say(f"building the {tag} image (debootstrap) into {tar}")
            rootfs: Future[tuple[Path, ...]] = pool.submit(image.ensure_images)
            _teardown(say)
            info = lab_info(hosts, repo, podman)
            names = list(info.host_names)
            for name in names:
                layout.runtime_file(name).parent.mkdir(parents=True, exist_ok=True)
                layout.runtime_file(name).write_text("podman\n" if name in info.podman_hosts else "docker\n")
            if layout.LOG_DIR.exists():
                shutil.rmtree(layout.LOG_DIR)
            for directory in (layout.RUN_DIR, layout.LOG_DIR, layout.HOSTS_DIR, layout.PEBBLE_DIR):
                directory.mkdir(parents=True, exist_ok=True)
            mail.wipe()
            client_key = files.ensure_client_key(info.lab_dir)
            layout.AUTHORIZED_KEYS.write_text(client_key + "\n")
            host_keys = {layout.host_address(layout.host_index(n)): hostops.ensure_host_key(n) for n in names}
            pebble.ensure_tls()
            pebble.write_config(cert_lifetime)
            say(
                f"network: bridge {layout.BRIDGE} {layout.BRIDGE_ADDRESS}/{layout.PREFIX_LEN}, {len(names)} hosts"
            )
            network.setup(names)
            hostops.ensure_mountpoints()
            # Hosts whose docker storage lacks the current image: one imports it, the rest are seeded
            # from it with hard links (one import instead of N, which matters for the disk and for N=50).
            identity = storage.image_identity()
            stale = [name for name in names if not storage.host_ready(name, identity)]
            for name in stale:
                storage.wipe(name)
            # The seed is a docker storage: podman hosts import the images themselves at their first start.
            stale = [name for name in stale if name not in info.podman_hosts]
            if stale and storage.seed_ready(identity):
                assert identity is not None
                say(f"seeding the certbot image into {_names(stale)}")
                _first_error([pool.submit(storage.seed_host, name, identity) for name in stale])
                stale = []
            later = stale[1:]
            first = [name for name in names if name not in later]
            say("starting DNS, Pebble, SMTP and the hosts")
            jobs: list[Future[None]] = [pool.submit(_start_services, names), pool.submit(mail.start_smtp)]
            jobs += [pool.submit(_bring_up_host, name, client_key) for name in first]
            _first_error(jobs)
            say(f"{_names(first)} answer SSH and HTTP")
            if storage.image_identity() is None:
                say("waiting for the certbot image build")
            rootfs.result()
            identity = storage.image_identity()
            assert identity is not None
            _first_error([pool.submit(_check_image, name, say) for name in first])
            if stale:
                storage.make_seed(stale[0], identity)
            if later:
                say(f"seeding the certbot image into {_names(later)} and starting them")
                _first_error([pool.submit(_seed_and_bring_up, name, client_key, identity) for name in later])
        files.write_pebble_root(info.lab_dir, pebble.fetch_root())
        files.write_dns_credentials(info.lab_dir, dns.credentials_text())
        files.write_lab_files(info.lab_dir, names, host_keys, pebble.CA_CERT.read_bytes(), info.podman_hosts)
        layout.STATE_FILE.write_text(json.dumps({"hosts": hosts, "repo_dir": str(repo), "podman": podman}) + "\n")
        say(f"lab up in {time.monotonic() - started:.1f} s; inventory: {info.inventory}")
        return info


def down(repo_dir: Path | str | None = None, *, progress: Progress | None = None) -> None:
    """Stop every lab process (by pid) and remove the lab's namespaces, links and host trees."""
    say: Progress = progress or (lambda _message: None)
    _require_root()
    del repo_dir  # the lab is one per machine; the lab files in the repo are kept for the next run
    with _locked():
        started = time.monotonic()
        _teardown(say)
        say(f"lab down in {time.monotonic() - started:.1f} s")


def status(repo_dir: Path | str | None = None) -> str:
    """Human-readable state of the lab: services, hosts, files."""
    info = _state_info()
    lines: list[str] = []
    if info is None:
        leftovers = network.lab_namespaces()
        lines.append("lab: down" + (f" (leftover namespaces: {', '.join(leftovers)})" if leftovers else ""))
        return "\n".join(lines)
    problems = _problems(info)
    lines.append(
        f"lab: {'up' if not problems else 'DEGRADED'} ({len(info.hosts)} hosts, files in {info.lab_dir})"
    )
    if info.repo_dir != _repo(repo_dir):
        lines.append(f"note: this lab's files are in {info.lab_dir}, not in {_repo(repo_dir) / 'lab'}")
    for service in SERVICES:
        pid = proc.live_pid(layout.pid_file(service))
        lines.append(f"  {service:<8} {'running, pid ' + str(pid) if pid else 'stopped'}")
    for host in info.hosts:
        pid = hostops.leader_pid(host.name)
        if pid is None:
            lines.append(f"  {host.name:<8} {host.address:<12} stopped")
            continue
        ssh = "ssh ok" if proc.port_open(host.address, 22) else "ssh DOWN"
        http = "http ok" if proc.port_open(host.address, 80) else "http DOWN"
        lines.append(f"  {host.name:<8} {host.address:<12} pid {pid}, {ssh}, {http}")
    lines.append(f"  acme     {info.acme_directory} (issued so far: {pebble_issued_count()})")
    lines.append(f"  inventory {info.inventory}")
    for problem in problems:
        lines.append(f"  problem: {problem}")
    return "\n".join(lines)


# Helpers for tests on a running lab.


def host_exec(
    name: str,
    command: Sequence[str] | str,
    check: bool = True,
    *,
    input: str | None = None,
    timeout: float | None = 600,
) -> subprocess.CompletedProcess[str]:
    """Run a command inside a lab host (argv list, or a string for sh -c); LabError if check fails."""
    layout.host_index(name)
    return hostops.exec_in(name, command, check=check, input=input, timeout=timeout)


def stop_host(name: str) -> None:
    """Stop every process of a host, so SSH to it fails."""
    layout.host_index(name)
    hostops.stop(name)


def start_host(name: str) -> None:
    """Start a stopped host again (same SSH host key, same files) and wait for SSH and dockerd."""
    layout.host_index(name)
    hostops.start(name)
    hostops.wait_ready(name, require_http=False)


def reset_host(name: str) -> None:
    """Put a host back to pristine: plain nginx site, empty /etc/letsencrypt, no certfab files, no crontab."""
    layout.host_index(name)
    key = layout.AUTHORIZED_KEYS.read_text().strip()
    hostops.stop(name)
    hostops.populate(name, key)
    hostops.start(name)
    hostops.wait_ready(name)
    hostops.ensure_image(name)


def host_path(name: str, path: str) -> Path:
    """Where a file of a host's private trees (e.g. /etc/letsencrypt/...) is on the machine."""
    layout.host_index(name)
    return hostops.host_path(name, path)


def pebble_log() -> str:
    """Pebble's log since the lab came up."""
    return pebble.log_text()


def pebble_issued_count() -> int:
    """How many certificates Pebble has issued since the lab came up."""
    return pebble.issued_count(pebble.log_text())


def stop_pebble() -> None:
    """Stop Pebble (its accounts, orders and issuing root are lost)."""
    pebble.stop_pebble()


def _restart_pebble(lifetime_seconds: int, info: LabInfo | None) -> None:
    """Pebble again with another certificate lifetime (accounts, orders and its root are new)."""
    pebble.stop_pebble()
    pebble.write_config(lifetime_seconds)
    pebble.start_pebble()
    if info is not None:
        files.write_pebble_root(info.lab_dir, pebble.fetch_root())


def set_cert_lifetime(lifetime_seconds: int) -> None:
    """Restart Pebble so it issues certificates valid for that many seconds (a no-op when it already does)."""
    if pebble.configured_lifetime() != lifetime_seconds or proc.live_pid(layout.pid_file("pebble")) is None:
        _restart_pebble(lifetime_seconds, _state_info())


def start_pebble() -> None:
    """Start Pebble again and write its new issuing root to <repo>/lab/pebble-root.pem."""
    if proc.live_pid(layout.pid_file("pebble")) is None:
        pebble.start_pebble()
    info = _state_info()
    if info is not None:
        files.write_pebble_root(info.lab_dir, pebble.fetch_root())


def set_dns(name: str, *addresses: str) -> None:
    """Make a name of the lab zone (e.g. `shop.test`) resolve to these IPv4 addresses, replacing its A
    records; several addresses make a round-robin name, none removes the name."""
    dns.set_records(name, addresses)


def clear_dns(name: str) -> None:
    """Remove a lab name's A records."""
    dns.set_records(name, ())


def mails() -> list[EmailMessage]:
    """Every message the lab's SMTP server received, oldest first."""
    return mail.mails()


def clear_mails() -> None:
    """Forget every received message."""
    mail.clear_mails()


@dataclass(frozen=True)
class Lab:
    """A running lab: its info plus the helpers, as one object for test fixtures."""

    info: LabInfo

    def host_exec(
        self,
        name: str,
        command: Sequence[str] | str,
        check: bool = True,
        *,
        input: str | None = None,
        timeout: float | None = 600,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside a lab host."""
        return host_exec(name, command, check, input=input, timeout=timeout)

    def stop_host(self, name: str) -> None:
        """Stop every process of a host."""
        stop_host(name)

    def start_host(self, name: str) -> None:
        """Start a stopped host again."""
        start_host(name)

    def reset_host(self, name: str) -> None:
        """Put a host back to pristine."""
        reset_host(name)

    def host_path(self, name: str, path: str) -> Path:
        """Machine path of a file in a host's private trees."""
        return host_path(name, path)

    def pebble_log(self) -> str:
        """Pebble's log."""
        return pebble_log()

    def pebble_issued_count(self) -> int:
        """Certificates Pebble issued so far."""
        return pebble_issued_count()

    def stop_pebble(self) -> None:
        """Stop Pebble."""
        stop_pebble()

    def start_pebble(self) -> None:
        """Start Pebble and rewrite lab/pebble-root.pem."""
        start_pebble()

    def set_cert_lifetime(self, lifetime_seconds: int) -> None:
        """Restart Pebble with another certificate lifetime."""
        set_cert_lifetime(lifetime_seconds)

    def set_dns(self, name: str, *addresses: str) -> None:
        """Point a lab name at these addresses (several: round robin; none: removed)."""
        set_dns(name, *addresses)

    def clear_dns(self, name: str) -> None:
        """Remove a lab name's A records."""
        clear_dns(name)

    def mails(self) -> list[EmailMessage]:
        """Messages received by the lab SMTP server."""
        return mails()

    def clear_mails(self) -> None:
        """Forget received messages."""
        clear_mails()
