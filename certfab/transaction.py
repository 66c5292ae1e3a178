"""On-host transactions: stage every file, journal, switch by rename, test, reload; or roll back.

Originals are kept as hard links beside each file (hidden names, so nginx's `*` globs never
include them), which makes both the switch and the rollback plain renames: they need no free
space and cannot leave a file half-written. The journal under /var/lib/certfab lets the next
run roll back a transaction that a lost connection or Ctrl-C left open.
"""

from __future__ import annotations

import base64
import posixpath
import shlex
from dataclasses import dataclass

from certfab.paths import JOURNAL, STATE_DIR

EXIT_STAGE_FAILED = 20
EXIT_NGINX_TEST_FAILED = 21
EXIT_RELOAD_FAILED = 22
EXIT_JOURNAL_OPEN = 23
EXIT_NOT_LOCKED = 24
EXIT_APPLY_BUSY = 25
APPLY_LOCK = f"{STATE_DIR}/apply.lock"


@dataclass(frozen=True)
class FileWrite:
    """A file's complete desired content; mode None keeps the existing file's mode and owner."""

    path: str
    content: str
    mode: str | None = "0644"


def _hidden(path: str, kind: str) -> str:
    directory, name = posixpath.split(path)
    return posixpath.join(directory, f".certfab-{kind}.{name}")


RELOAD_NGINX = r"""
reload_nginx() {
    if [ -d /run/systemd/system ] && systemctl is-active --quiet nginx 2>/dev/null; then
        systemctl reload nginx
    elif command -v service >/dev/null 2>&1 && service nginx status >/dev/null 2>&1; then
        service nginx reload
    else
        nginx -s reload
    fi
}
"""

# Restores every journalled file by rename; used for a failed apply and for recovery.
RESTORE = r"""
restore_journal() {
    j="$1"
    [ -d "$j" ] || return 0
    for entry in "$j"/*.path; do
        [ -e "$entry" ] || continue
        n="${entry%.path}"
        target=$(cat "$entry")
        backup=$(cat "$n.backup")
        temp=$(cat "$n.temp")
        rm -f -- "$temp"
        if [ -e "$n.existed" ]; then
            if [ -e "$backup" ]; then mv -f -- "$backup" "$target"; fi
        elif [ -e "$n.absent" ]; then
            rm -f -- "$target"
        fi
    done
    if [ -f "$j/dirs" ]; then
        sort -r "$j/dirs" | while IFS= read -r d; do rmdir -- "$d" 2>/dev/null; done
    fi
    rm -rf -- "$j"
}
"""

PREAMBLE = f"""set -u
umask 022
LC_ALL=C; export LC_ALL
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH
mkdir -p {STATE_DIR}
chmod 0700 {STATE_DIR}
"""


def lock_check(run_id: str) -> str:
    """Shell lines that stop a script unless this run holds the host lock."""
    return (
        f"owner=$(cat {STATE_DIR}/lock.owner 2>/dev/null)\n"
        f"if [ \"$owner\" != {shlex.quote(run_id)} ]; then echo \"certfab lock is not held by this run\" >&2; "
        f"exit {EXIT_NOT_LOCKED}; fi\n"
    )


def apply_lock(wait_seconds: int = 300) -> str:
    """Shell lines that hold the apply lock for the rest of the script.

    A script whose SSH session was cut keeps running on the host (nothing tells it), after the host
    lock has gone with the session: the next run's rollback must wait for it, not race it.
    """
    return (
        f"exec 8>>{APPLY_LOCK} && flock -w {wait_seconds} 8 || "
        f"{{ echo 'an earlier certfab transaction is still running on this host' >&2; exit {EXIT_APPLY_BUSY}; }}\n"
    )


def apply_script(run_id: str, writes: list[FileWrite], *, test_and_reload: bool = True,
                 extend: bool = False) -> str:
    """A script that switches all files at once, tests nginx, reloads, and rolls back on failure.

    It leaves the journal open: the controller verifies from outside, then commits or rolls back.
    With `extend`, the files join this run's open journal instead, so that one rollback returns
    every file to what it was before the run's first transaction.
    """
    lines = [PREAMBLE, RELOAD_NGINX, RESTORE, lock_check(run_id), apply_lock()]
    if extend:
        lines.append(
            f"if [ \"$(cat {JOURNAL}/run 2>/dev/null)\" != {shlex.quote(run_id)} ]; then "
            f"echo 'the transaction to extend is not open' >&2; exit {EXIT_JOURNAL_OPEN}; fi"
        )
    else:
        lines.append(
            f"if [ -e {JOURNAL} ]; then echo 'an earlier transaction is still open' >&2; exit {EXIT_JOURNAL_OPEN}; fi"
        )
    stage = f"{JOURNAL}.staging"
    tag = "x" if extend else ""
    lines.append(f"rm -rf {stage}; mkdir -p {stage}; : > {stage}/dirs")
    lines.append(f"printf '%s\\n' {shlex.quote(run_id)} > {stage}/run")
    lines.append(
        f"fail_stage() {{ echo \"cannot write $1: $2\" >&2; restore_journal {stage}; exit {EXIT_STAGE_FAILED}; }}"
    )
    # 1. Stage: every new file goes to a hidden temp beside its target. Nothing live changes yet.
    for index, write in enumerate(writes):
        target = shlex.quote(write.path)
        temp = shlex.quote(_hidden(write.path, "new"))
        backup = shlex.quote(_hidden(write.path, "backup"))
        directory = shlex.quote(posixpath.dirname(write.path))
        payload = base64.b64encode(write.content.encode("utf-8", errors="surrogateescape")).decode()
        n = f"{stage}/{tag}{index:04d}"
        lines.append(
            f"if [ ! -d {directory} ]; then "
            f"for d in $(p={directory}; while [ ! -d \"$p\" ]; do echo \"$p\"; p=$(dirname \"$p\"); done); "
            f"do echo \"$d\" >> {stage}/dirs; done; "
            f"mkdir -p {directory} || fail_stage {directory} 'cannot create directory'; fi"
        )
        # Markers first: an entry is only acted on once its .path exists. A file already in the
        # journal keeps its first backup (the state before the run); this entry only stages it.
        already = (f"grep -qxF -- {target} {JOURNAL}/*.path 2>/dev/null" if extend else "false")
        lines.append(
            f"rm -f {temp}; if {already}; then : > {n}.journaled; "
            f"else rm -f {backup}; if [ -e {target} ]; then : > {n}.existed; else : > {n}.absent; fi; fi && "
            f"printf '%s\\n' {backup} > {n}.backup && printf '%s\\n' {temp} > {n}.temp && "
            f"printf '%s\\n' {target} > {n}.path || fail_stage {target} 'cannot write the journal'"
        )
        lines.append(
            f"echo {payload} | base64 -d > {temp} 2>/dev/null && "
            f"[ \"$(wc -c < {temp})\" -eq {len(write.content.encode('utf-8', errors='surrogateescape'))} ] "
            f"|| fail_stage {target} \"$(df -h {directory} | tail -n 1 | awk '{{print \"no space left? \"$4\" free on \"$6}}')\""
        )
        if write.mode is None:
            lines.append(
                f"if [ -e {target} ]; then chmod --reference={target} {temp} && chown --reference={target} {temp}; "
                f"else chmod 0644 {temp}; fi || fail_stage {target} 'cannot set mode'"
            )
        else:
            lines.append(f"chmod {write.mode} {temp} && chown root:root {temp} || fail_stage {target} 'cannot set mode'")
    lines.append("sync")
    # 2. Journal: from here on, a crash is rolled back by the next run.
    if extend:
        lines.append(
            f"cat {stage}/dirs >> {JOURNAL}/dirs && rm -f {stage}/dirs {stage}/run && "
            f"mv -- {stage}/* {JOURNAL}/ && rmdir {stage} "
            f"|| fail_stage {JOURNAL} 'cannot extend the journal'"
        )
    else:
        lines.append(f"mv {stage} {JOURNAL} || fail_stage {JOURNAL} 'cannot open the journal'")
    # 3. Switch: hard-link each original aside, rename the new file over it.
    for index, write in enumerate(writes):
        target = shlex.quote(write.path)
        temp = shlex.quote(_hidden(write.path, "new"))
        backup = shlex.quote(_hidden(write.path, "backup"))
        journaled = f"{JOURNAL}/{tag}{index:04d}.journaled"
        lines.append(
            f"if [ ! -e {journaled} ] && [ -e {target} ]; then ln -f {target} {backup} || "
            f"{{ restore_journal {JOURNAL}; echo 'cannot back up {write.path}' >&2; exit {EXIT_STAGE_FAILED}; }}; fi"
        )
        lines.append(f"mv -f {temp} {target}")
    # An extended journal also undoes files an earlier transaction of the run switched and reloaded.
    reload_restored = (" if nginx -t >/dev/null 2>&1; then reload_nginx >/dev/null 2>&1 8>&-; fi;"
                       if extend else "")
    if test_and_reload:
        lines.append(
            "if ! out=$(nginx -t 2>&1); then restore_journal " + JOURNAL + ";" + reload_restored + " "
            "echo \"$out\" >&2; exit " + str(EXIT_NGINX_TEST_FAILED) + "; fi"
        )
        lines.append(
            "if ! out=$(reload_nginx 2>&1 8>&-); then restore_journal " + JOURNAL + "; reload_nginx >/dev/null 2>&1 8>&-; "
            "echo \"$out\" >&2; exit " + str(EXIT_RELOAD_FAILED) + "; fi"
        )
    lines.append("echo certfab-applied")
    return "\n".join(lines) + "\n"


def commit_script(run_id: str) -> str:
    """Close the journal: drop the backups; the new files stay."""
    return (
        PREAMBLE
        + apply_lock()
        + f"""
if [ -d {JOURNAL} ]; then
    for entry in {JOURNAL}/*.path; do
        [ -e "$entry" ] || continue
        rm -f -- "$(cat "${{entry%.path}}.backup")"
    done
    rm -rf {JOURNAL}
fi
echo certfab-committed
"""
    )


def rollback_script(*, reload: bool = True) -> str:
    """Restore every file of an open journal byte for byte, then reload nginx on the old config."""
    script = PREAMBLE + apply_lock() + RELOAD_NGINX + RESTORE + f"""
if [ -d {JOURNAL} ]; then
    restore_journal {JOURNAL}
    echo certfab-rolled-back
else
    echo certfab-nothing-to-roll-back
fi
# A run cut off while staging leaves hidden temp files beside their targets: remove them too.
restore_journal {JOURNAL}.staging
"""
    if reload:
        script += "if nginx -t >/dev/null 2>&1; then reload_nginx >/dev/null 2>&1 8>&- || true; fi\n"
    return script
