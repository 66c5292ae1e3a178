"""Lab hosts: private file trees, the per-host init (nginx, cron, dockerd, sshd), stop/start/reset, exec."""

from __future__ import annotations

import grp
import os
import shlex
import shutil
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from certfab.errors import LabError
from certfab.lab import layout, network, proc, storage

NGINX_ETC = Path("/etc/nginx")
SKEL = Path("/usr/share/base-files")

_CRONTAB = """\
# /etc/crontab: system-wide crontab
# Unlike any other crontab you don't have to run the `crontab'
# command to install the new version when you edit this file
# and files in /etc/cron.d. These files also have username fields,
# that none of the other crontabs do.

SHELL=/bin/sh
PATH=/usr/local/sbin:/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin

# Example of job definition:
# .---------------- minute (0 - 59)
# |  .------------- hour (0 - 23)
# |  |  .---------- day of month (1 - 31)
# |  |  |  .------- month (1 - 12) OR jan,feb,mar,apr ...
# |  |  |  |  .---- day of week (0 - 6) (Sunday=0 or 7) OR sun,mon,tue,wed,thu,fri,sat
# |  |  |  |  |
# *  *  *  *  * user-name command to be executed
#
"""

_SITE = """\
# {name}.test -- static pages, served as-is from /var/www/{name}.
# Plain HTTP for now; TLS is still to be set up.
server {{
	listen 80;
{listen6}
	server_name {domains};

	root /var/www/{name};
	index index.html;

	access_log /var/log/nginx/{name}.access.log;
	error_log /var/log/nginx/{name}.error.log;

	location / {{
		try_files $uri $uri/ =404;
	}}
}}
"""

_INDEX = """\
<!DOCTYPE html>
<html>
<head><title>{name}</title></head>
<body>
<h1>Hello from {name}</h1>
<p>This is {name}.test.</p>
</body>
</html>
"""


def _init_script() -> str:
    """The host's init: private mounts, hostname, daemons, then sshd in the foreground."""
    kept = (layout.DOCKER_DIR, layout.PODMAN_DIR)
    dirs = " ".join(shlex.quote(d) for d in layout.PRIVATE_DIRS if d not in kept)
    files = " ".join(shlex.quote(f) for f in layout.PRIVATE_FILES)
    return f"""\
set -u
fs=$1 files=$2 name=$3 sshd_config=$4 dockerd_log=$5 docker_dir=$6 podman_dir=$7 runtime=$8
for dir in {dirs}; do
    mount --bind "$fs$dir" "$dir" || exit 1
done
mount --bind "$docker_dir" {shlex.quote(layout.DOCKER_DIR)} || exit 1
mount --bind "$podman_dir" {shlex.quote(layout.PODMAN_DIR)} || exit 1
for file in {files}; do
    mount --bind "$files/${{file##*/}}" "$file" || exit 1
done
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp || exit 1
hostname "$name" || exit 1
cd /
/usr/sbin/nginx || echo "lab: nginx did not start" >&2
/usr/sbin/cron || echo "lab: cron did not start" >&2
if [ "$runtime" = docker ]; then
    /usr/sbin/dockerd --bridge=none --iptables=false --ip6tables=false \\
        -H unix:///run/docker.sock --pidfile /run/docker.pid </dev/null >>"$dockerd_log" 2>&1 &
fi
exec /usr/sbin/sshd -D -e -f "$sshd_config"
"""


def _sshd_config(name: str) -> str:
    """sshd configuration of a host: its own key, key-only root login, no PAM."""
    address = layout.host_address(layout.host_index(name))
    return f"""\
Port 22
ListenAddress {address}
HostKey {layout.host_keys(name) / "ssh_host_ed25519_key"}
PidFile none
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys {layout.AUTHORIZED_KEYS}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
X11Forwarding no
PrintMotd no
AcceptEnv LANG LC_*
MaxStartups 100:30:200
MaxSessions 50
Subsystem sftp /usr/lib/openssh/sftp-server
"""


def _copy_owner_mode(source: Path, target: Path, default_mode: int = 0o755) -> None:
    """Give target the owner and mode of source (or root and default_mode if source is missing)."""
    try:
        st = source.stat()
        os.chown(target, st.st_uid, st.st_gid)
        os.chmod(target, st.st_mode & 0o7777)
    except FileNotFoundError:
        os.chown(target, 0, 0)
        os.chmod(target, default_mode)


def _nginx_ignore(directory: str, names: list[str]) -> set[str]:
    """What not to copy from the machine's /etc/nginx: enabled sites, conf.d drop-ins, certfab files."""
    if directory in (str(NGINX_ETC / "sites-enabled"), str(NGINX_ETC / "conf.d")):
        return set(names)
    return {"certfab"} if directory == str(NGINX_ETC) else set()


def ensure_mountpoints() -> None:
    """Create the machine-side mountpoints the hosts' private trees and files are mounted on."""
    for directory in layout.PRIVATE_DIRS:
        Path(directory).mkdir(mode=0o755, parents=True, exist_ok=True)
    for file in layout.PRIVATE_FILES:
        path = Path(file)
        if not path.exists():
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            path.touch(mode=0o644)


def ensure_host_key(name: str) -> str:
    """The host's ed25519 public key line, generating the key once (it is kept across runs)."""
    key = layout.host_keys(name) / "ssh_host_ed25519_key"
    if not key.exists() or not key.with_suffix(".pub").exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.unlink(missing_ok=True)
        key.with_suffix(".pub").unlink(missing_ok=True)
        proc.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{name}", "-f", str(key)])
    parts = key.with_suffix(".pub").read_text().split()
    return f"{parts[0]} {parts[1]}"


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a small file with the given mode, owned by root."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def populate(name: str, authorized_key: str) -> None:
    """Give a host pristine private trees: plain nginx site, empty letsencrypt, no certfab files."""
    fs, files = layout.host_fs(name), layout.host_files(name)
    for directory in layout.PRIVATE_DIRS:
        target = layout.private_source(name, directory)
        if directory in layout.KEPT_ON_RESET and target.is_dir():
            continue
        if target.exists():
            shutil.rmtree(target)
        if directory == "/etc/nginx":
            shutil.copytree(NGINX_ETC, target, symlinks=True, ignore=_nginx_ignore)
        else:
            target.mkdir(parents=True)
        _copy_owner_mode(Path(directory), target)

    ipv6 = network.ipv6_available(name)
    domains = " ".join(layout.host_domains(name))
    site = _SITE.format(name=name, domains=domains, listen6="\tlisten [::]:80;\n" if ipv6 else "")
    _write(fs / f"etc/nginx/sites-available/{name}", site)
    (fs / f"etc/nginx/sites-enabled/{name}").symlink_to(f"/etc/nginx/sites-available/{name}")
    _write(fs / f"var/www/{name}/index.html", _INDEX.format(name=name))

    placeholder = Path("/etc/cron.d/.placeholder")
    if placeholder.is_file():
        shutil.copy2(placeholder, fs / "etc/cron.d/.placeholder")
    crontabs = fs / "var/spool/cron/crontabs"
    crontabs.mkdir()
    try:
        crontab_gid = grp.getgrnam("crontab").gr_gid
    except KeyError:
        crontab_gid = 0
    os.chown(crontabs, 0, crontab_gid)
    os.chmod(crontabs, 0o1730)

    root = fs / "root"
    for dotfile in ("bashrc", "profile"):
        if (SKEL / f"dot.{dotfile}").is_file():
            shutil.copy(SKEL / f"dot.{dotfile}", root / f".{dotfile}")
    (root / ".ssh").mkdir(mode=0o700)
    _write(root / ".ssh/authorized_keys", authorized_key + "\n", 0o600)

    address = layout.host_address(layout.host_index(name))
    _write(
        files / "hosts",
        f"127.0.0.1\tlocalhost\n{address}\t{name}.test {name}\n\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    )
    _write(files / "resolv.conf", f"nameserver {layout.BRIDGE_ADDRESS}\n")
    _write(files / "hostname", f"{name}\n")
    _write(files / "crontab", _CRONTAB)
    _write(files / "containers.conf", layout.CONTAINERS_CONF)
    layout.podman_storage(name).mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(
        files / "msmtprc",
        "defaults\naccount default\n"
        f"host {layout.BRIDGE_ADDRESS}\nport {layout.SMTP_PORT}\nfrom root@{name}.test\nauth off\ntls off\n",
    )


def leader_pid(name: str) -> int | None:
    """Pid of the host's init (its sshd), None when the host is stopped."""
    return proc.live_pid(layout.pid_file(name))


def _fresh_run(name: str) -> None:
    """Empty the host's /run as a reboot would (stale pid files and sockets)."""
    run = layout.host_fs(name) / "run"
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(mode=0o755, parents=True)
    (run / "sshd").mkdir(mode=0o755)
    (run / "lock").mkdir(mode=0o1777)
    os.chmod(run / "lock", 0o1777)


def start(name: str) -> None:
    """Start a host's processes (no-op if it runs); the caller waits with wait_ready()."""
    if leader_pid(name) is not None:
        return
    if not layout.netns_path(name).exists():
        raise LabError(f"lab host {name} has no network namespace; run `inv lab.up` again")
    _fresh_run(name)
    config = layout.host_dir(name) / "sshd_config"
    _write(config, _sshd_config(name), 0o600)
    argv = [
        "nsenter",
        f"--net={layout.netns_path(name)}",
        "--",
        "unshare",
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        _init_script(),
        f"lab-{name}",
        str(layout.host_fs(name)),
        str(layout.host_files(name)),
        name,
        str(config),
        str(layout.LOG_DIR / f"{name}-dockerd.log"),
        str(layout.docker_storage(name)),
        str(layout.podman_storage(name)),
        layout.host_runtime(name),
    ]
    pid = proc.spawn(argv, log=layout.LOG_DIR / f"{name}.log")
    proc.write_pid_file(layout.pid_file(name), proc.record(pid))


def _docker_answers(name: str) -> bool:
    """Whether the host's dockerd answers a ping on its socket."""
    path = layout.host_fs(name) / "run/docker.sock"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(256)
    except OSError:
        return False


def _log_tail(name: str) -> str:
    """Last lines of the host's init log, for error messages."""
    try:
        lines = (layout.LOG_DIR / f"{name}.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-3:])


def wait_ready(name: str, *, require_http: bool = True, timeout: float = 60) -> None:
    """Wait until the host accepts SSH, its dockerd answers and (if required) nginx serves HTTP."""
    address = layout.host_address(layout.host_index(name))

    def ready() -> bool:
        if leader_pid(name) is None:
            raise LabError(f"lab host {name} exited at start: {_log_tail(name)}")
        return (
            proc.port_open(address, 22)
            and (not require_http or proc.port_open(address, 80))
            # podman has no daemon to wait for
            and (layout.host_runtime(name) == "podman" or _docker_answers(name))
        )

    proc.wait_for(f"lab host {name}", ready, timeout=timeout)


def stop(name: str) -> None:
    """End every process of a host (its init, daemons, sessions, containers), by pid."""
    for _ in range(5):
        pids = proc.pids_in_netns(layout.netns_path(name))
        rec = proc.read_pid_file(layout.pid_file(name))
        if rec is not None and proc.is_alive(rec):
            pids |= {rec.pid} | proc.descendants([rec.pid])
        if not pids:
            break
        proc.terminate(pids, grace=5.0)
    layout.pid_file(name).unlink(missing_ok=True)


def exec_in(
    name: str,
    command: Sequence[str] | str,
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = 600,
) -> subprocess.CompletedProcess[str]:
    """Run a command inside a host's network, mount and UTS namespaces (a string runs via sh -c)."""
    pid = leader_pid(name)
    if pid is None:
        raise LabError(f"lab host {name} is not running")
    argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
    result = proc.run(
        ["nsenter", "-t", str(pid), "-n", "-m", "-u", "--", *argv],
        check=False,
        input=input,
        timeout=timeout,
        env=proc.CLEAN_ENV,
        cwd="/",
    )
    if check and result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-3:]
        raise LabError(
            f"{name}: {shlex.join(argv)} failed with exit status {result.returncode}: {' | '.join(detail)}"
        )
    return result


def ensure_image(name: str, progress: Callable[[str], None] | None = None) -> bool:
    """Make the host's runtime hold every lab certbot image and no containers; True if it imported."""
    runtime = layout.host_runtime(name)
    leftovers = exec_in(name, [runtime, "ps", "-aq"]).stdout.split()
    if leftovers:
        exec_in(name, [runtime, "rm", "-f", *leftovers])
    identity = storage.image_identity()
    if identity is None:
        raise LabError("a certbot rootfs tar is missing; run `inv lab.up` to build it")
    ready = storage.host_ready(name, identity)
    imported = False
    for tag, tar in layout.IMAGES:
        inspect = [runtime, "image", "inspect", "--format", "{{.Id}}", tag]
        present = exec_in(name, inspect, check=False).returncode == 0
        if present and ready:
            continue
        if present:
            exec_in(name, [runtime, "rmi", "-f", tag])
        if progress is not None:
            progress(f"{name}: importing {tag} from {tar} ({runtime})")
        change = 'ENTRYPOINT ["certbot"]'
        exec_in(name, [runtime, "import", "--change", change, str(tar), tag], timeout=600)
        imported = True
    storage.mark_imported(name, identity)
    return imported


def host_path(name: str, path: str) -> Path:
    """Where a path inside a host's private trees lives on the machine."""
    clean = "/" + path.strip("/")
    for directory in layout.PRIVATE_DIRS:
        if clean == directory or clean.startswith(directory + "/"):
            return layout.private_source(name, directory) / clean[len(directory) :].lstrip("/")
    raise LabError(f"{path} is not in a private tree of {name} ({', '.join(layout.PRIVATE_DIRS)})")
