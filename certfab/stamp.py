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
import posixpath
import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from certfab.certs import parse_pem
from certfab.facts import ConfigFile, HostFacts, facts_context, parse_facts
from certfab.inventory import Host, Inventory
from certfab.opstate import code_digest
from certfab.paths import (
    CRON_FILE,
    HOST_CONFIG_DIR,
    LETSENCRYPT_LIVE,
    RENEW_SCRIPT,
    SHARED_LINEAGES,
    STATE_DIR,
)
from certfab.protocol import Reply
from certfab.shared import stamp_view

STAMP_FILE = f"{STATE_DIR}/stamp"
STAMP_VERSION = "certfab-stamp 2"
STAMP_SCRIPT = "stamp-write.sh.j2"
# A full read at least this often, whatever the stamp says.
MAX_TRUST = timedelta(days=7)

# Trees whose metadata is hashed on every run; nginx files outside /etc/nginx come from the stamp's watch list.
WATCHED = (
    "/etc/nginx",
    LETSENCRYPT_LIVE,
    SHARED_LINEAGES,
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


@dataclass(frozen=True)
class Unchanged:
    """The host is as the last good run left it: nothing to read, nothing to do."""

    warnings: tuple[str, ...]


@dataclass(frozen=True)
class Observed:
    """Full facts, and the state hash taken just before they were read (empty if unavailable)."""

    facts: HostFacts
    state: str
    watch: tuple[str, ...]  # the extra paths the state hash covered, in the order hashed
    binaries: tuple[str, ...] = ()  # nginx's binary, its libraries and the runtime, as found now


def input_key(host: Host, inventory: Inventory, acme_ca_pem: str | None) -> str:
    """A hash of everything on the controller's side that shapes this host's desired state."""
    acme = inventory.acme
    parts = [
        STAMP_VERSION,
        code_digest(),
        # host.dns01's credentials show as their sha256 only: a changed file changes the key.
        repr((host.name, host.webroot, host.sites, host.certbot, host.renewal, host.tls, host.dns01)),
        repr(stamp_view(inventory, host)),
        repr((acme.email, acme.server, acme.server_name, acme.key_type)),
        acme_ca_pem or "",
    ]
    return hashlib.sha256("\0".join(parts).encode("utf-8", errors="surrogateescape")).hexdigest()


def parse_probe(host: str, reply: Reply, nginx_files: dict[str, ConfigFile] | None = None,
                refused: dict[str, str] | None = None) -> Unchanged | Observed:
    """Read what the probing facts script answered (and the nginx files read after it)."""
    if reply.has("unchanged"):
        return Unchanged(tuple(frame.text for frame in reply.all("warn")))
    state = reply.text("state").strip()
    state = state if _HASH.match(state) and state != _EMPTY_MD5 else ""
    watch = tuple(f.text for f in reply.all("watch"))
    binaries = tuple(dict.fromkeys(f.text for f in reply.all("binary")))
    return Observed(parse_facts(host, reply, nginx_files, refused), state, watch, binaries)


def probe_context(host: Host, *, key: str | None, now: datetime) -> dict[str, object]:
    """facts.sh.j2 as a probe: "unchanged" when the stamp for `key` holds, else the state hash and every fact."""
    return {
        **facts_context(host),
        "probe": True,
        "stamp_key": key,
        "stamp_file": STAMP_FILE,
        "stamp_version": STAMP_VERSION,
        "empty_md5": _EMPTY_MD5,
        "watched": list(WATCHED),
        "now": int(now.timestamp()),
    }


def outside_paths(facts: HostFacts) -> tuple[str, ...]:
    """nginx files outside /etc/nginx, as named and resolved, with their directories: the stamp watches them."""
    if facts.nginx is None:
        return ()
    found: list[str] = []
    for f in facts.nginx.files.values():
        for path in (f.path, posixpath.dirname(f.path), f.real_path, posixpath.dirname(f.real_path)):
            if path and path != "/etc/nginx" and not path.startswith("/etc/nginx/") and path not in found:
                found.append(path)
    return tuple(sorted(found))


def recheck_time(host: Host, facts: HostFacts, now: datetime) -> datetime:
    """When a certificate decision for the host's sites could next change (at most MAX_TRUST ahead)."""
    latest = now + MAX_TRUST
    for site in host.sites:
        lineage = facts.lineages.get(site.name)
        # A shared site's peer (or a new issuer) serves certfab's copy of the issuer's lineage.
        pem = lineage.cert_pem if lineage is not None else facts.shared_copies.get(site.name)
        if pem is None:
            return now
        try:
            info = parse_pem(pem)
        except ValueError:
            return now
        latest = min(latest, info.renew_at)
    return latest


def stamp_text(*, key: str, observed: Observed, recheck: datetime, warnings: list[str]) -> str:
    """The stamp file's content."""
    lines = [STAMP_VERSION, f"key {key}", f"state {observed.state}", f"recheck {int(recheck.timestamp())}"]
    lines += [f"warn {base64.b64encode(w.encode('utf-8', errors='replace')).decode()}" for w in warnings]
    lines += [f"watch {path}" for path in observed.watch]
    return "\n".join(lines) + "\n"


def stamp_to_write(host: Host, *, key: str, observed: Observed, warnings: list[str],
                   now: datetime) -> tuple[str, bool] | None:
    """The stamp file's text for a host found in its desired state, and whether it is complete.

    None when no stamp may be written (nothing hashed, a certificate decision due, odd paths). The
    state hash only covers the extra paths the probe was told to watch: when the configuration now
    loads files outside /etc/nginx that it did not watch, the stamp records them but no state, so
    the next run hashes them and stamps for real.
    """
    needed = tuple(dict.fromkeys(outside_paths(observed.facts) + observed.binaries))
    if any("\n" in path or not path.startswith("/") for path in needed):
        return None
    recheck = recheck_time(host, observed.facts, now)
    if recheck <= now or not observed.state:
        return None
    # The next probe hashes the stamp's list as it stands: only a list that is exactly what was hashed
    # now may carry this state; otherwise record the list, no state, and stamp for real next time.
    complete = set(observed.watch) == set(needed)
    pending = replace(observed, state=observed.state if complete else "",
                      watch=observed.watch if complete else needed)
    return stamp_text(key=key, observed=pending, recheck=recheck, warnings=warnings), complete
