"""A host's "nothing changed since the last good run" stamp, checked in the same command as facts.

After a run that left a host in its desired state, certfab writes /var/lib/certfab/stamp: a key for
everything on the controller's side that shapes the desired state (inventory entry, ACME settings and
CA, certfab's own code and templates), a hash of the metadata (inode, size, ctime, mode, owner, link
target) of every file that shapes it on the host (nginx's whole tree, certbot's live and renewal
trees, certfab's files, cron, nginx's binary and libraries, the runtime), and the time at which a
certificate decision could change. The next run sends one script: when the key, the hash and the time
still hold, the host answers "unchanged" after one `find`; otherwise the same script goes on to print
every fact. ctime cannot be set from user space, so any edit, copy or rename invalidates the stamp.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

from certfab.certs import parse_pem
from certfab.desired import RENEW_FRACTION, changed_writes, decide_certificate, desired_state, preflight
from certfab.errors import CertfabError
from certfab.facts import HostFacts, facts_script, parse_facts
from certfab.inventory import Host, Inventory
from certfab.paths import CRON_FILE, HOST_CONFIG_DIR, JOURNAL, RENEW_SCRIPT, STATE_DIR
from certfab.remote import Remote

STAMP_FILE = f"{STATE_DIR}/stamp"
STAMP_VERSION = "certfab-stamp 1"
# A full read at least this often, whatever the stamp says.
MAX_TRUST = timedelta(days=7)

# Trees whose metadata is hashed on every run; nginx files outside /etc/nginx are added from `nginx -T`.
WATCHED = (
    "/etc/nginx",
    "/etc/letsencrypt/live",
    "/etc/letsencrypt/renewal",
    HOST_CONFIG_DIR,
    "/etc/cron.d",
    "/var/spool/cron",
    "/etc/systemd/system/timers.target.wants",
    RENEW_SCRIPT,
    CRON_FILE,
)
_HASH = re.compile(r"^[0-9a-f]{32}$")
# md5 of no input: what a find without -printf (busybox) would leave; it proves nothing.
_EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
_PACKAGE_DIR = Path(__file__).resolve().parent
_TEMPLATES_DIR = _PACKAGE_DIR.parent / "templates"


@dataclass(frozen=True)
class Unchanged:
    """The host is as the last good run left it: nothing to read, nothing to do."""

    warnings: tuple[str, ...]


@dataclass(frozen=True)
class Observed:
    """Full facts, and the state hash taken just before they were read (empty if unavailable)."""

    facts: HostFacts
    state: str
    watch: tuple[str, ...]


@lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 of certfab's modules and templates: new code never trusts an old stamp."""
    digest = hashlib.sha256()
    files = sorted(_PACKAGE_DIR.glob("*.py"))
    if _TEMPLATES_DIR.is_dir():
        files += sorted(p for p in _TEMPLATES_DIR.rglob("*") if p.is_file())
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def input_key(host: Host, inventory: Inventory, acme_ca_pem: str | None) -> str:
    """A hash of everything on the controller's side that shapes this host's desired state."""
    acme = inventory.acme
    parts = [
        STAMP_VERSION,
        code_digest(),
        repr((host.name, host.webroot, host.sites, host.certbot, host.renewal, host.tls)),
        repr((acme.email, acme.server, acme.server_name, acme.key_type)),
        acme_ca_pem or "",
    ]
    return hashlib.sha256("\0".join(parts).encode("utf-8", errors="surrogateescape")).hexdigest()


def _state_hash_function() -> str:
    """Shell function printing the md5 of the watched trees' metadata plus the extra paths "$@"."""
    watched = " ".join(shlex.quote(path) for path in WATCHED)
    return (
        "state_hash() {\n"
        f"    find {watched} \"$@\" -printf '%p %y %i %s %C@ %m %U %G %l\\n' 2>/dev/null | md5sum 2>/dev/null\n"
        "}\n"
    )


def probe_script(host: Host, *, key: str | None, now: datetime) -> str:
    """One script: "unchanged" when the stamp holds, else the state hash, its paths and every fact."""
    lines = [
        "LC_ALL=C; export LC_ALL",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH",
        _state_hash_function(),
    ]
    if key is not None:
        lines.append(
            f"""stamp_key=; stamp_state=; stamp_recheck=0; stamp_version=
if [ ! -e {JOURNAL} ] && [ ! -e {JOURNAL}.staging ] && [ -f {STAMP_FILE} ]; then
    while IFS= read -r line; do
        case $line in
            "certfab-stamp "*) stamp_version=$line ;;
            "key "*) stamp_key=${{line#key }} ;;
            "state "*) stamp_state=${{line#state }} ;;
            "recheck "*) stamp_recheck=${{line#recheck }} ;;
            "watch "*) set -- "$@" "${{line#watch }}" ;;
        esac
    done < {STAMP_FILE}
fi
if [ "$stamp_version" = {shlex.quote(STAMP_VERSION)} ] && [ -n "$stamp_state" ] \\
        && [ "$stamp_state" != {_EMPTY_MD5} ] && [ "$stamp_key" = {key} ] \\
        && [ "$stamp_recheck" -gt {int(now.timestamp())} ] 2>/dev/null; then
    now_state=$(state_hash "$@")
    if [ "${{now_state%% *}}" = "$stamp_state" ]; then
        echo certfab-unchanged
        while IFS= read -r line; do case $line in "warn "*) printf '%s\\n' "$line" ;; esac; done < {STAMP_FILE}
        exit 0
    fi
fi"""
        )
    # Watched besides the fixed trees: nginx files outside /etc/nginx (as named, real, and their
    # directories), the nginx binary and the libraries it loads (an OpenSSL update changes what TLS
    # settings fit), and the container runtime.
    lines.append(
        """IFS='
'
set -f
set -- $({ nginx -T 2>/dev/null | sed -n 's/^# configuration file \\(.*\\):$/\\1/p' | while IFS= read -r f; do
    r=$(readlink -f -- "$f" 2>/dev/null || printf '%s' "$f")
    for p in "$f" "${f%/*}" "$r" "${r%/*}"; do case $p in /etc/nginx|/etc/nginx/*|'') ;; *) printf '%s\\n' "$p" ;; esac; done
done
for b in nginx """ + shlex.quote(host.certbot.runtime) + """; do p=$(command -v "$b") && readlink -f -- "$p"; done
p=$(command -v nginx) && ldd "$p" 2>/dev/null | sed -n 's/^.*=> \\(\\/[^ ]*\\) .*$/\\1/p' | while IFS= read -r l; do
    readlink -f -- "$l"; done
} | sort -u)
set +f
unset IFS
now_state=$(state_hash "$@")
printf 'certfab-state %s %s\\n' "${now_state%% *}" "$#"
for p in "$@"; do printf '%s\\n' "$p"; done"""
    )
    return "\n".join(lines) + "\n" + facts_script(host)


def parse_probe(host: str, output: str) -> Unchanged | Observed:
    """Read what probe_script printed."""
    if output.startswith("certfab-unchanged\n"):
        warnings = []
        for line in output.splitlines()[1:]:
            if line.startswith("warn "):
                warnings.append(base64.b64decode(line[5:]).decode("utf-8", errors="replace"))
        return Unchanged(tuple(warnings))
    first, _, rest = output.partition("\n")
    fields = first.split(" ")
    if len(fields) != 3 or fields[0] != "certfab-state" or not fields[2].isdigit():
        return Observed(parse_facts(host, output), "", ())
    count = int(fields[2])
    lines = rest.split("\n")
    watch, remainder = tuple(lines[:count]), "\n".join(lines[count:])
    state = fields[1] if _HASH.match(fields[1]) and fields[1] != _EMPTY_MD5 else ""
    return Observed(parse_facts(host, remainder), state, watch)


def read_host(remote: Remote, *, key: str | None, now: datetime) -> Unchanged | Observed:
    """With one remote command: Unchanged if the stamp for `key` holds, else every fact (key None: always)."""
    result = remote.check(probe_script(remote.host, key=key, now=now), what="reading facts")
    return parse_probe(remote.host.name, result.stdout)


def recheck_time(host: Host, facts: HostFacts, now: datetime) -> datetime:
    """When a certificate decision for the host's sites could next change (at most MAX_TRUST ahead)."""
    latest = now + MAX_TRUST
    for site in host.sites:
        lineage = facts.lineages.get(site.name)
        if lineage is None:
            return now
        try:
            info = parse_pem(lineage.cert_pem)
        except ValueError:
            return now
        latest = min(latest, info.not_after - info.lifetime * RENEW_FRACTION)
    return latest


def stamp_text(*, key: str, observed: Observed, recheck: datetime, warnings: list[str]) -> str:
    """The stamp file's content."""
    lines = [STAMP_VERSION, f"key {key}", f"state {observed.state}", f"recheck {int(recheck.timestamp())}"]
    lines += [f"warn {base64.b64encode(w.encode('utf-8', errors='replace')).decode()}" for w in warnings]
    lines += [f"watch {path}" for path in observed.watch]
    return "\n".join(lines) + "\n"


def write_stamp(remote: Remote, *, key: str, observed: Observed, warnings: list[str], now: datetime) -> bool:
    """Record that the host was found in its desired state (one remote command); False if not possible."""
    if not observed.state or any("\n" in path for path in observed.watch):
        return False
    recheck = recheck_time(remote.host, observed.facts, now)
    if recheck <= now:
        return False
    text = stamp_text(key=key, observed=observed, recheck=recheck, warnings=warnings)
    script = (
        f"umask 077; mkdir -p {STATE_DIR} && printf '%s' {shlex.quote(text)} > {STAMP_FILE}.tmp "
        f"&& mv -f {STAMP_FILE}.tmp {STAMP_FILE}\n"
    )
    try:
        remote.check(script, what="recording the host's state")
    except CertfabError:
        return False  # the run's result stands; the next run simply reads every fact again
    return True


def stamp_if_converged(
    remote: Remote, inventory: Inventory, *, key: str, acme_ca_pem: str | None, now: datetime
) -> bool:
    """After a run that changed the host: read it again and stamp it only if nothing is left to do."""
    try:
        observed = read_host(remote, key=None, now=now)
        assert isinstance(observed, Observed)
        warnings = preflight(remote.host, observed.facts)
    except CertfabError:
        return False
    host, facts = remote.host, observed.facts
    if facts.journal.strip():
        return False
    if any(decide_certificate(site, facts, now).needs_order for site in host.sites):
        return False
    desired = desired_state(host, inventory, facts, https_sites=frozenset(s.name for s in host.sites),
                            acme_ca_pem=acme_ca_pem)
    if changed_writes(desired, facts):
        return False
    return write_stamp(remote, key=key, observed=observed, warnings=warnings, now=now)
