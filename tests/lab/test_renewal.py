"""Renewal that never fails silently, on the real host web5: certbot renew, nginx -t, reload, mail, cron."""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import shlex
import socket
import ssl
import time
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
from conftest import certfab_cli
from cryptography import x509

from certfab import renewal
from certfab.lab import Lab

HOST = "web5"
SITE = "web5"
DOMAIN = "web5.test"
SCRIPT = "/usr/local/sbin/certfab-renew"
STATUS = "/var/lib/certfab/status.json"
RENEWAL_CONF = f"/etc/letsencrypt/renewal/{SITE}.conf"
BROKEN_CONF = "/etc/nginx/conf.d/zz-certfab-test-broken.conf"
BLOCK_CA = "OUTPUT -d 10.77.0.1 -p tcp --dport 14000 -j REJECT"
TEST_CRON = "/etc/cron.d/certfab-test"
LOCK = "/var/lib/certfab/renew.lock"
HOOK_MARKER = "/var/lib/certfab/hook/renewed"
# What a renewal run may leave in certfab's state directory (besides what bootstrap put there);
# "pending" lists renewals whose reload is still owed.
RUN_STATE = {"status.json", "renew.lock", "hook", "pending"}


# --- helpers ----------------------------------------------------------------------------------------


def sh(lab: Lab, command: str, check: bool = True) -> str:
    """Run a shell command on the host; its stdout."""
    return lab.host_exec(HOST, command, check=check).stdout


def served_serial(lab: Lab) -> int:
    """Serial of the certificate the host serves for its domain, from a real TLS handshake."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    address = lab.info.host(HOST).address
    with socket.create_connection((address, 443), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def served_after_reload(lab: Lab, expected: int) -> int:
    """The served serial once nginx's new workers answer (a reload lets old workers finish first)."""
    deadline = time.monotonic() + 10
    serial = served_serial(lab)
    while serial != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        serial = served_serial(lab)
    return serial


def disk_serial(lab: Lab) -> int:
    """Serial of the lineage's current certificate on the host's disk."""
    pem = lab.host_path(HOST, f"/etc/letsencrypt/live/{SITE}/cert.pem").read_bytes()
    return x509.load_pem_x509_certificate(pem).serial_number


def status(lab: Lab) -> dict[str, object]:
    """The host's /var/lib/certfab/status.json."""
    data = json.loads(sh(lab, f"cat {STATUS}"))
    assert isinstance(data, dict)
    return data


def make_due(lab: Lab, due: bool) -> None:
    """Make the lab's 90-day certificate due for renewal (renew 100 days before expiry), or not."""
    sh(lab, f"sed -i '/^renew_before_expiry/d' {RENEWAL_CONF}")
    if due:
        sh(lab, f"sed -i '1i renew_before_expiry = 100 days' {RENEWAL_CONF}")


def host_mails(lab: Lab) -> list[EmailMessage]:
    """Mail this host sent (the lab's SMTP server is shared)."""
    address = lab.info.host(HOST).address
    return [m for m in lab.mails() if f"'{address}'" in str(m.get("X-Peer", ""))
            or str(m.get("Subject", "")).startswith(f"[certfab] {HOST}:")]


def message_ids(messages: list[EmailMessage]) -> set[str]:
    """Identities of messages, to tell new ones from old."""
    return {str(m.get("Message-ID")) for m in messages}


def new_mails(lab: Lab, before: set[str], expect: int) -> list[EmailMessage]:
    """This host's mail received since `before` (waiting briefly for `expect` messages)."""
    deadline = time.monotonic() + 10
    while True:
        fresh = [m for m in host_mails(lab) if str(m.get("Message-ID")) not in before]
        if len(fresh) >= expect or time.monotonic() > deadline:
            return fresh
        time.sleep(0.2)


def body(message: EmailMessage) -> str:
    """Plain-text body of a message."""
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


def snapshot(lab: Lab) -> tuple[set[str], set[str]]:
    """Entries of /tmp and /var/lib/certfab on the host."""
    tmp = set(sh(lab, "ls -A /tmp").split())
    state = set(sh(lab, "ls -A /var/lib/certfab").split())
    return tmp, state


def assert_no_leftovers(lab: Lab, before: tuple[set[str], set[str]]) -> None:
    """A run left no temporary files in /tmp or /var/lib/certfab."""
    tmp, state = snapshot(lab)
    assert tmp - before[0] == set(), f"left in /tmp: {tmp - before[0]}"
    assert state - before[1] - RUN_STATE == set(), f"left in /var/lib/certfab: {state - before[1]}"
    assert not [name for name in state if name.startswith(".")], f"temporary files in /var/lib/certfab: {state}"


def run_script(lab: Lab) -> tuple[int, str]:
    """Run the installed renewal script as cron would (no TTY, stdout discarded); exit status, stderr."""
    result = lab.host_exec(HOST, f"{SCRIPT} >/dev/null", check=False, timeout=300)
    return result.returncode, result.stderr


def cron_lines(lab: Lab) -> list[str]:
    """Every line that runs the renewal script from any crontab of the host."""
    out = sh(lab, "grep -rs certfab-renew /etc/cron.d /etc/crontab /var/spool/cron/crontabs; "
                  "crontab -l -u root 2>/dev/null | sed 's#^#root-crontab:#'; true")
    return [line for line in out.splitlines() if "certfab-renew" in line and not line.split(":", 1)[1].lstrip().startswith("#")]


@contextlib.contextmanager
def holding_the_lock(lab: Lab) -> Iterator[None]:
    """A process on the host (not a certfab-renew run) holds the renewal lock meanwhile."""
    holder = sh(lab, f"setsid sh -c 'exec 9>>{LOCK}; flock 9; exec sleep 120' "
                     ">/dev/null 2>&1 </dev/null & echo $!").strip()
    try:
        deadline = time.monotonic() + 10
        while lab.host_exec(HOST, f"flock -n {LOCK} true", check=False).returncode == 0:
            assert time.monotonic() < deadline, "the test could not take the renewal lock"
            time.sleep(0.1)
        yield
    finally:
        sh(lab, f"kill {int(holder)}", check=False)


def host_time(lab: Lab) -> datetime.datetime:
    """The host's clock."""
    return datetime.datetime.fromtimestamp(int(sh(lab, "date +%s")), datetime.UTC)


def status_time(st: dict[str, object]) -> datetime.datetime:
    """When the run that wrote a status ran."""
    return datetime.datetime.strptime(str(st["time"]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host(lab: Lab, module_hosts: tuple[str, ...]) -> str:
    """web5, bootstrapped with certfab (certificate issued, renewal script and cron installed)."""
    assert HOST in module_hosts
    result = certfab_cli(lab, "fab", "-H", HOST, "bootstrap")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_out_scheduled_run(lab)
    return HOST


def wait_out_scheduled_run(lab: Lab, margin: float = 300) -> None:
    """If the host's own cron job is due within `margin` seconds, let it run first: it would race the tests."""
    entry = next(line.split(":", 1)[1] for line in cron_lines(lab))
    minute, hours = entry.split()[:2]
    now = datetime.datetime.fromtimestamp(int(sh(lab, "date +%s")), datetime.UTC)
    for day in (0, 1):
        for hour in hours.split(","):
            start = (now + datetime.timedelta(days=day)).replace(hour=int(hour), minute=int(minute), second=0)
            wait = (start - now).total_seconds()
            if -60 < wait < margin:
                time.sleep(max(wait, 0) + 30)
    sh(lab, "timeout 300 flock /var/lib/certfab/renew.lock true")


@pytest.fixture
def due(lab: Lab, host: str) -> Iterator[None]:
    """The host's certificate is due for renewal during the test."""
    make_due(lab, True)
    try:
        yield
    finally:
        make_due(lab, False)


# --- tests ------------------------------------------------------------------------------------------


def test_bootstrap_installs_script_settings_and_cron(lab: Lab, host: str) -> None:
    modes = sh(lab, f"stat -c '%U %a %n' {SCRIPT} /etc/certfab/renew.env /etc/cron.d/certfab").splitlines()
    assert modes == [f"root 700 {SCRIPT}", "root 600 /etc/certfab/renew.env", "root 644 /etc/cron.d/certfab"]
    env = sh(lab, "cat /etc/certfab/renew.env")
    assert f"HOST={HOST}" in env and "ADMIN_EMAIL=ops@lab.test" in env


def test_due_certificate_is_renewed_by_the_script(lab: Lab, host: str, due: None) -> None:
    old = served_serial(lab)
    mails_before = message_ids(host_mails(lab))
    files_before = snapshot(lab)

    code, stderr = run_script(lab)

    assert code == 0, stderr
    new = disk_serial(lab)
    assert new != old, "the certificate was not renewed"
    assert served_after_reload(lab, new) == new, "nginx does not serve the renewed certificate"
    st = status(lab)
    assert st["result"] == "renewed", st
    assert st["renewed"] == [SITE]
    assert st["certbot_exit"] == 0 and st["nginx_test"] == "ok" and st["reload"] == "ok"
    [mail] = new_mails(lab, mails_before, 1)
    assert mail["Subject"] == f"[certfab] {HOST}: renewal OK"
    assert mail["To"] == "ops@lab.test"
    text = body(mail)
    assert f"Certificate renewal on {HOST} succeeded" in text
    assert f"Renewed certificates: {SITE}" in text
    assert re.search(rf"^  {SITE}: web5\.test, www\.web5\.test; valid until \w{{3}} +\d+ [\d:]+ \d{{4}} GMT$", text, re.M), text
    assert "nginx configuration test passed; nginx reloaded with: " in text
    assert_no_leftovers(lab, files_before)


def test_renew_now_task_renews_a_due_certificate(lab: Lab, host: str, due: None) -> None:
    old = served_serial(lab)
    mails_before = message_ids(host_mails(lab))
    files_before = snapshot(lab)

    result = certfab_cli(lab, "fab", "-H", HOST, "renew-now")

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{HOST}: renewed (renewed: {SITE}; nginx test ok; exit 0)" in result.stdout
    new = disk_serial(lab)
    assert new != old
    assert served_after_reload(lab, new) == new
    assert status(lab)["result"] == "renewed"
    mails = new_mails(lab, mails_before, 1)
    assert [m["Subject"] for m in mails] == [f"[certfab] {HOST}: renewal OK"]
    assert_no_leftovers(lab, files_before)


def test_nothing_due_renews_nothing_and_sends_no_mail(lab: Lab, host: str) -> None:
    make_due(lab, False)
    old = served_serial(lab)
    mails_before = message_ids(host_mails(lab))
    files_before = snapshot(lab)

    code, stderr = run_script(lab)

    assert code == 0, stderr
    st = status(lab)
    assert st["result"] == "nothing-due", st
    assert st["renewed"] == [] and st["certbot_exit"] == 0
    assert st["nginx_test"] == "skipped" and st["reload"] == "skipped"
    assert served_serial(lab) == old
    result = certfab_cli(lab, "fab", "-H", HOST, "renew-now")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{HOST}: nothing-due (renewed: nothing" in result.stdout
    assert served_serial(lab) == old
    time.sleep(1)  # mail is sent synchronously; a second is plenty for a stray one to show up
    assert new_mails(lab, mails_before, 0) == []
    assert_no_leftovers(lab, files_before)


def test_broken_nginx_config_means_no_reload_and_a_failure_mail(lab: Lab, host: str, due: None) -> None:
    old = served_serial(lab)
    mails_before = message_ids(host_mails(lab))
    files_before = snapshot(lab)
    sh(lab, f"printf 'certfab_test_bogus_directive on;\\n' > {BROKEN_CONF}")
    try:
        code, _ = run_script(lab)

        assert code != 0
        assert disk_serial(lab) != old, "certbot should have renewed the certificate on disk"
        assert served_serial(lab) == old, "nginx was reloaded despite a broken configuration"
        st = status(lab)
        assert st["result"] == "failed" and st["nginx_test"] == "failed", st
        assert st["reload"] == "skipped" and st["renewed"] == [SITE]
        assert 'unknown directive "certfab_test_bogus_directive"' in str(st["message"])
        [mail] = new_mails(lab, mails_before, 1)
        assert mail["Subject"] == f"[certfab] {HOST}: renewal FAILED"
        text = body(mail)
        assert f"Certificate renewal on {HOST} FAILED" in text
        assert 'unknown directive "certfab_test_bogus_directive"' in text
        assert BROKEN_CONF in text
        assert "NOT reloaded" in text
        assert_no_leftovers(lab, files_before)
    finally:
        sh(lab, f"rm -f {BROKEN_CONF}")

    # Once the configuration is fixed, the next run reloads the renewal left pending.
    mails_before = message_ids(host_mails(lab))
    make_due(lab, False)
    code, stderr = run_script(lab)
    assert code == 0, stderr
    assert status(lab)["result"] == "renewed"
    assert served_after_reload(lab, disk_serial(lab)) == disk_serial(lab)
    assert [m["Subject"] for m in new_mails(lab, mails_before, 1)] == [f"[certfab] {HOST}: renewal OK"]


def test_unreachable_ca_fails_loudly(lab: Lab, host: str, due: None) -> None:
    old = served_serial(lab)
    mails_before = message_ids(host_mails(lab))
    files_before = snapshot(lab)
    sh(lab, f"iptables -I {BLOCK_CA}")
    try:
        code, _ = run_script(lab)
    finally:
        sh(lab, f"iptables -D {BLOCK_CA}")

    assert code != 0
    assert served_serial(lab) == old and disk_serial(lab) == old
    st = status(lab)
    assert st["result"] == "failed", st
    assert st["certbot_exit"] not in (0, -1)
    assert st["renewed"] == [] and st["nginx_test"] == "skipped" and st["reload"] == "skipped"
    assert str(st["message"]).startswith("certbot renew exited with status 1: Failed to renew certificate web5")
    [mail] = new_mails(lab, mails_before, 1)
    assert mail["Subject"] == f"[certfab] {HOST}: renewal FAILED"
    text = body(mail)
    assert "Output of certbot renew" in text
    assert f"Failed to renew certificate {SITE}" in text
    assert "Connection refused" in text
    assert_no_leftovers(lab, files_before)
    assert "--dport 14000" not in sh(lab, "iptables -S OUTPUT")

    # The operator's renew-now says the same, with a failing exit status.
    sh(lab, f"iptables -I {BLOCK_CA}")
    try:
        result = certfab_cli(lab, "fab", "-H", HOST, "renew-now")
    finally:
        sh(lab, f"iptables -D {BLOCK_CA}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{HOST}: failed (renewed: nothing; nginx test skipped; exit 1)" in result.stdout
    assert "Failed to renew certificate web5" in result.stdout
    assert len(new_mails(lab, mails_before, 2)) == 2


def test_renew_now_while_another_run_holds_the_lock(lab: Lab, host: str) -> None:
    inode_before = sh(lab, f"stat -c %i {STATUS}").strip()
    with holding_the_lock(lab):
        result = certfab_cli(lab, "fab", "-H", HOST, "renew-now")
    # Not the previous run's result: this run did nothing and says so.
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{HOST}: busy (renewed: nothing" in result.stdout
    assert "another renewal run holds the lock" in result.stdout
    st = status(lab)
    assert st["result"] == "busy", st
    assert sh(lab, f"stat -c %i {STATUS}").strip() != inode_before  # recorded by this run


def test_a_run_that_finds_the_lock_held_records_busy(lab: Lab, host: str, due: None) -> None:
    old = disk_serial(lab)
    inode_before = sh(lab, f"stat -c %i {STATUS}").strip()
    mails_before = message_ids(host_mails(lab))
    started = host_time(lab).replace(microsecond=0)
    with holding_the_lock(lab):
        code, stderr = run_script(lab)
        st = status(lab)
    assert code == 0, stderr
    assert st["result"] == "busy", st
    # This run's own record (status.json is replaced by rename), not the previous one.
    assert sh(lab, f"stat -c %i {STATUS}").strip() != inode_before
    assert status_time(st) >= started
    assert st["holder"] is None  # a plain flock, not a certfab-renew run
    assert st["renewed"] == [] and st["nginx_test"] == "skipped" and st["reload"] == "skipped"
    assert "another renewal run holds the lock" in str(st["message"])
    assert disk_serial(lab) == old, "certbot ran although the lock was held"
    assert sh(lab, f"stat -c %a {STATUS}").strip() == "600"
    time.sleep(1)
    assert new_mails(lab, mails_before, 0) == []
    # Once the lock is free the next run renews as usual.
    code, stderr = run_script(lab)
    assert code == 0, stderr
    assert status(lab)["result"] == "renewed"
    assert served_after_reload(lab, disk_serial(lab)) == disk_serial(lab)


def test_renewal_the_deploy_hook_could_not_record_is_reloaded_and_reported(lab: Lab, host: str, due: None) -> None:
    old = served_serial(lab)
    mails_before = message_ids(host_mails(lab))
    # The hook appends to a file; a directory in its place makes it fail inside the container.
    sh(lab, f"rm -f {HOOK_MARKER} && mkdir {HOOK_MARKER}")
    files_before = snapshot(lab)
    try:
        code, stderr = run_script(lab)
        hook_left = sh(lab, f"find {HOOK_MARKER} -mindepth 1 | wc -l").strip()
    finally:
        sh(lab, f"rm -rf {HOOK_MARKER}")

    assert hook_left == "0", "the hook wrote although its marker was a directory"
    new = disk_serial(lab)
    assert new != old, "the certificate was not renewed"
    assert served_after_reload(lab, new) == new, "nginx was not reloaded for the unrecorded renewal"
    st = status(lab)
    assert code == 0, (stderr, st)
    assert st["result"] == "renewed", st
    assert st["renewed"] == [SITE] and st["hook_missed"] == [SITE]
    assert st["nginx_test"] == "ok" and st["reload"] == "ok"
    assert sh(lab, f"stat -c %a {STATUS}").strip() == "600"
    [mail] = new_mails(lab, mails_before, 1)
    assert mail["Subject"] == f"[certfab] {HOST}: renewal OK"
    text = body(mail)
    assert f"Renewed certificates: {SITE}" in text
    assert f"Not recorded by the deploy hook (found by comparing certificates): {SITE}" in text
    assert_no_leftovers(lab, files_before)


def test_one_cron_entry_after_two_bootstraps(lab: Lab, host: str) -> None:
    result = certfab_cli(lab, "fab", "-H", HOST, "bootstrap")
    assert result.returncode == 0, result.stdout + result.stderr

    lines = cron_lines(lab)
    assert len(lines) == 1, lines
    source, entry = lines[0].split(":", 1)
    assert source == "/etc/cron.d/certfab"
    minute, hours, dom, month, dow, user, command = entry.split(None, 6)
    assert int(minute) % 5 != 0 and int(minute) == renewal.cron_minute(HOST)
    first, second = (int(h) for h in hours.split(","))
    assert second - first == 12
    assert (dom, month, dow, user) == ("*", "*", "*", "root")
    assert command.startswith(SCRIPT)
    # Debian cron reads only root-owned, not group/other-writable files without dots in their names.
    assert sh(lab, "stat -c '%U %a' /etc/cron.d/certfab").strip() == "root 644"
    assert [name for name in sh(lab, "ls -A /etc/cron.d").split() if "certfab" in name] == ["certfab"]


def test_cron_really_starts_the_script(lab: Lab, host: str) -> None:
    assert lab.host_exec(HOST, "kill -0 \"$(cat /run/crond.pid)\"", check=False).returncode == 0, "no cron"
    before = status(lab)["time"]
    mails_before = message_ids(host_mails(lab))
    entry = next(line.split(":", 1)[1] for line in cron_lines(lab))
    command = entry.split(None, 6)[6]
    now = datetime.datetime.fromtimestamp(int(sh(lab, "date +%s")), datetime.UTC)
    # cron rereads /etc/cron.d at the top of each minute: leave it time to see the file first.
    target = now.replace(second=0) + datetime.timedelta(minutes=1 if now.second < 50 else 2)
    cron_file = (
        "SHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        f"{target.minute} {target.hour} * * * root {command}\n"
    )
    sh(lab, f"printf %s {shlex.quote(cron_file)} > {TEST_CRON} && chown root:root {TEST_CRON} && chmod 0644 {TEST_CRON}")
    try:
        deadline = time.monotonic() + (target - now).total_seconds() + 75
        while status(lab)["time"] == before:
            assert time.monotonic() < deadline, f"cron did not run {SCRIPT} at {target:%H:%M} UTC"
            time.sleep(1)
        # Let the run finish: it holds its lock until the end.
        sh(lab, "timeout 120 flock /var/lib/certfab/renew.lock true")
    finally:
        sh(lab, f"rm -f {TEST_CRON}")
    st = status(lab)
    assert st["result"] == "nothing-due", st
    ran_at = datetime.datetime.strptime(str(st["time"]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    assert ran_at >= target
    # Nothing due: no mail, and nothing on stderr that cron would have mailed to root.
    assert new_mails(lab, mails_before, 0) == []


def test_packaged_certbot_cron_job_gives_a_warning(lab: Lab, host: str) -> None:
    packaged = (
        "SHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin\n\n"
        "0 */12 * * * root test -x /usr/bin/certbot -a \\! -d /run/systemd/system && "
        "perl -e 'sleep int(rand(43200))' && certbot -q renew --no-random-sleep-on-renew\n"
    )
    sh(lab, f"printf %s {shlex.quote(packaged)} > /etc/cron.d/certbot")
    try:
        result = certfab_cli(lab, "fab", "-H", HOST, "bootstrap")
        sh(lab, "rm -f /etc/cron.d/certbot")
        sh(lab, "printf '0 3 * * * /usr/bin/certbot renew --quiet\\n' | crontab -")
        from_crontab = certfab_cli(lab, "fab", "-H", HOST, "bootstrap")
    finally:
        sh(lab, "rm -f /etc/cron.d/certbot; crontab -r 2>/dev/null; true")
    assert result.returncode == 0, result.stdout + result.stderr
    output = re.sub(r"\s+", " ", result.stderr)
    assert f"warning: {HOST}: another renewal job would compete with certfab's: /etc/cron.d/certbot;" in output
    assert "remove or disable it" in output
    assert from_crontab.returncode == 0, from_crontab.stdout + from_crontab.stderr
    output = re.sub(r"\s+", " ", from_crontab.stderr)
    assert "would compete with certfab's: root's crontab: 0 3 * * * /usr/bin/certbot renew --quiet" in output
    # certfab left both alone (they are the operator's) and still has its one entry.
    assert [line.split(":", 1)[0] for line in cron_lines(lab)] == ["/etc/cron.d/certfab"]
