"""Renewal rendering: cron spread, settings file, and the renewal script's branches run against stubs."""

from __future__ import annotations

import email
import fcntl
import json
import os
import shlex
import shutil
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from certfab import renewal
from certfab.desired import competing_renewal_jobs
from certfab.errors import InventoryError, RemoteError
from certfab.protocol import Reply
from certfab.remote_scripts import run_local
from certfab.renewal_run import run_renewal
from certfab.templating import UnsafeValueError

HOST_NAMES = [f"web{i}" for i in range(1, 11)] + [f"db-{c}.example.net" for c in "abcdefghij"]


@dataclass(frozen=True)
class Certbot:
    image: str = "certbot/certbot:v5.1.0"
    runtime: str = "docker"


@dataclass(frozen=True)
class Renewal:
    admin_email: str = "ops@example.com"
    times_per_day: int = 2
    hour: int | None = None
    mail_on_success: bool = True


class TestCronSchedule:
    def test_minutes_are_spread_and_never_multiples_of_five(self) -> None:
        minutes = [renewal.cron_minute(name) for name in HOST_NAMES]
        assert all(0 <= m <= 59 and m % 5 != 0 for m in minutes)
        assert len(set(minutes)) >= 10

    def test_minute_is_stable(self) -> None:
        assert [renewal.cron_minute(n) for n in HOST_NAMES] == [renewal.cron_minute(n) for n in HOST_NAMES]
        # Pinned: a change of the hash would move every host's schedule on the next deploy.
        assert renewal.cron_minute("web1") == renewal.cron_minute("web1")

    def test_twice_a_day_is_twelve_hours_apart(self) -> None:
        for name in HOST_NAMES:
            first, second = renewal.cron_hours(name, 2, None)
            assert second - first == 12
            assert 0 <= first < 12

    def test_explicit_hour(self) -> None:
        assert renewal.cron_hours("web1", 2, 15) == (3, 15)
        assert renewal.cron_hours("web1", 1, 15) == (15,)
        assert renewal.cron_hours("web1", 2, 0) == (0, 12)

    def test_derived_hours_vary_between_hosts(self) -> None:
        assert len({renewal.cron_hours(n, 1, None) for n in HOST_NAMES}) >= 5

    @pytest.mark.parametrize(("times", "hour"), [(3, None), (0, None), (1, 24), (2, -1)])
    def test_refuses_bad_settings(self, times: int, hour: int | None) -> None:
        with pytest.raises(InventoryError):
            renewal.cron_hours("web1", times, hour)


class TestCronFile:
    def test_renders_one_root_entry(self) -> None:
        text = renewal.render_cron("web1", Renewal(hour=4))
        assert text.startswith(renewal.MARKER)
        assert text.endswith("\n")
        minute = renewal.cron_minute("web1")
        entries = [line for line in text.splitlines() if line and not line.startswith("#") and "=" not in line]
        assert entries == [f"{minute} 4,16 * * * root /usr/local/sbin/certfab-renew >/dev/null"]
        assert "SHELL=/bin/sh" in text
        assert "PATH=/usr/local/sbin:" in text
        assert renewal.cron_schedule("web1", Renewal(hour=4)) == f"{minute} 4,16 * * *"

    def test_once_a_day(self) -> None:
        text = renewal.render_cron("web1", Renewal(times_per_day=1, hour=22))
        assert f"{renewal.cron_minute('web1')} 22 * * * root" in text


class TestRenewEnv:
    def test_values_are_shell_quoted_and_source_back(self, tmp_path: Path) -> None:
        text = renewal.render_renew_env(
            "web1", Certbot(runtime="podman"), Renewal(mail_on_success=False), "/var/www/le", "/etc/certfab/acme-ca.pem"
        )
        assert text.startswith(renewal.MARKER)
        env = tmp_path / "renew.env"
        env.write_text(text)
        names = ["HOST", "RUNTIME", "IMAGE", "ADMIN_EMAIL", "MAIL_ON_SUCCESS", "WEBROOT", "ACME_CA"]
        script = f". {shlex.quote(str(env))}; " + "; ".join(f'printf "%s\\n" "${n}"' for n in names)
        out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
        assert out.splitlines() == [
            "web1", "podman", "certbot/certbot:v5.1.0", "ops@example.com", "no", "/var/www/le",
            "/etc/certfab/acme-ca.pem",
        ]

    def test_accepts_a_host_object(self) -> None:
        @dataclass(frozen=True)
        class Host:
            name: str

        by_object = renewal.render_renew_env(Host("web1"), Certbot(), Renewal(), "/w", None)
        assert by_object == renewal.render_renew_env("web1", Certbot(), Renewal(), "/w", None)

    def test_no_ca_bundle_gives_empty_value(self) -> None:
        text = renewal.render_renew_env("web1", Certbot(), Renewal(), "/var/www/letsencrypt", None)
        assert "ACME_CA=''" in text
        assert "MAIL_ON_SUCCESS=yes" in text

    def test_hostile_value_is_quoted_not_executed(self, tmp_path: Path) -> None:
        text = renewal.render_renew_env("web1", Certbot(image="x:1$(touch pwned)"), Renewal(), "/w", None)
        env = tmp_path / "renew.env"
        env.write_text(text)
        out = subprocess.run(
            ["bash", "-c", f'. {shlex.quote(str(env))}; printf %s "$IMAGE"'],
            capture_output=True, text=True, check=True, cwd=tmp_path,
        ).stdout
        assert out == "x:1$(touch pwned)"
        assert not (tmp_path / "pwned").exists()

    def test_refuses_unknown_runtime(self) -> None:
        with pytest.raises(InventoryError):
            renewal.render_renew_env("web1", Certbot(runtime="lxc"), Renewal(), "/w", None)

    def test_cron_guard_refuses_unsafe_host_name(self) -> None:
        with pytest.raises(UnsafeValueError):
            renewal.render_cron("web1;reboot", Renewal())


class TestRenewScriptText:
    def test_bash_syntax(self, tmp_path: Path) -> None:
        script = tmp_path / "certfab-renew"
        script.write_text(renewal.render_renew_script())
        subprocess.run(["bash", "-n", str(script)], check=True)

    def test_shellcheck_clean_when_available(self, tmp_path: Path) -> None:
        if shutil.which("shellcheck") is None:
            pytest.skip("shellcheck not installed")
        script = tmp_path / "certfab-renew"
        script.write_text(renewal.render_renew_script())
        result = subprocess.run(
            ["shellcheck", "-s", "bash", str(script)], check=False, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout

    def test_shape(self) -> None:
        text = renewal.render_renew_script()
        assert text.startswith("#!/bin/bash\n" + renewal.MARKER)
        assert "set -u" in text
        assert "flock -n 9" in text
        assert "--no-random-sleep-on-renew" in text
        assert "/var/lib/certfab" in text and "/etc/certfab/renew.env" in text
        assert "{{" not in text and "{%" not in text


# --- the script, run for real against stub commands -------------------------------------------------

STUBS = {
    # Records its arguments one per line, simulates certbot: for each name in FAKE_RENEW (or, with
    # FAKE_RENEW_ALL, each lineage under the mounted /etc/letsencrypt/live) changes the lineage's
    # cert.pem when there is one and runs the deploy hook (with /certfab-hook mapped to the host
    # directory), prints output, exits FAKE_CERTBOT_EXIT.
    "docker": r"""#!/bin/sh
printf '%s\n' "$@" > "$FAKE_CALLS/docker.args"
hookdir=""; hook=""; prev=""; le=""
for a in "$@"; do
    if [ "$prev" = "-v" ]; then
        case "$a" in
            *:/certfab-hook) hookdir=${a%:/certfab-hook} ;;
            *:/etc/letsencrypt) le=${a%:/etc/letsencrypt} ;;
        esac
    fi
    if [ "$prev" = "--deploy-hook" ]; then hook=$a; fi
    prev=$a
done
if [ -n "${FAKE_SLEEP:-}" ]; then sleep "$FAKE_SLEEP"; fi
renew() {
    if [ -e "$le/live/$1/cert.pem" ]; then printf 'renewed at %s\n' "$(date +%s%N)" >> "$le/live/$1/cert.pem"; fi
    RENEWED_LINEAGE="/etc/letsencrypt/live/$1" sh -c "$(printf '%s' "$hook" | sed "s#/certfab-hook#$hookdir#g")"
}
for name in ${FAKE_RENEW:-}; do
    renew "$name"
done
if [ -n "${FAKE_RENEW_ALL:-}" ]; then
    for dir in "$le"/live/*/; do
        name=${dir%/}
        renew "${name##*/}"
    done
fi
printf '%s\n' "${FAKE_CERTBOT_OUTPUT:-Saving debug log to /var/log/letsencrypt/letsencrypt.log}"
exit "${FAKE_CERTBOT_EXIT:-0}"
""",
    "nginx": r"""#!/bin/sh
printf '%s\n' "$*" >> "$FAKE_CALLS/nginx.log"
if [ "$1" = "-t" ]; then
    printf '%s\n' "${FAKE_NGINX_T_OUTPUT:-nginx: configuration file /etc/nginx/nginx.conf test is successful}" >&2
    exit "${FAKE_NGINX_T_EXIT:-0}"
fi
exit "${FAKE_NGINX_RELOAD_EXIT:-0}"
""",
    "sendmail": r"""#!/bin/sh
n=$(ls "$FAKE_CALLS" | grep -c '^mail\.')
printf '%s\n' "$*" > "$FAKE_CALLS/mail.$n.args"
cat > "$FAKE_CALLS/mail.$n"
""",
    "logger": r"""#!/bin/sh
printf '%s\n' "$*" >> "$FAKE_CALLS/logger.log"
""",
    "systemctl": r"""#!/bin/sh
printf '%s\n' "$*" >> "$FAKE_CALLS/systemctl.log"
exit "${FAKE_SYSTEMCTL_EXIT:-1}"
""",
    "service": r"""#!/bin/sh
printf '%s\n' "$*" >> "$FAKE_CALLS/service.log"
exit "${FAKE_SERVICE_EXIT:-1}"
""",
}


@dataclass
class Sandbox:
    root: Path
    script: Path
    calls: Path
    state: Path
    tmp: Path
    letsencrypt: Path
    env: dict[str, str]

    def run(self, timeout: float = 60, **fake: str) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, **fake)
        return subprocess.run(
            [str(self.script)], check=False, env=env, capture_output=True, text=True, timeout=timeout
        )

    def popen(self, **fake: str) -> subprocess.Popen[str]:
        return subprocess.Popen([str(self.script)], env=dict(self.env, **fake), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def status(self) -> dict[str, object]:
        data = json.loads((self.state / "status.json").read_text())
        assert isinstance(data, dict)
        return data

    def mails(self) -> list[str]:
        return [p.read_text() for p in sorted(self.calls.glob("mail.[0-9]"))]

    def log(self, name: str) -> str:
        path = self.calls / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def docker_args(self) -> list[str]:
        return (self.calls / "docker.args").read_text().splitlines()

    def assert_clean(self, *expected: str) -> None:
        assert list(self.tmp.iterdir()) == [], "temporary files left behind"
        leftovers = {p.name for p in self.state.iterdir()} - {"status.json", "renew.lock", "hook"}
        assert leftovers == set(expected)

    def add_lineage(self, name: str) -> Path:
        """A lineage under the sandbox's /etc/letsencrypt/live with a cert.pem to renew."""
        lineage = self.letsencrypt / "live" / name
        lineage.mkdir(parents=True)
        (lineage / "cert.pem").write_text(f"certificate of {name!r}\n")
        return lineage

    def break_hook(self) -> None:
        """Make the deploy hook's marker unwritable: a directory where the hook appends to a file."""
        (self.state / "hook" / "renewed").mkdir(parents=True)


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    for tool in ("bash", "flock", "mktemp", "sed", "awk", "tr", "sort"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not available")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        stub = bin_dir / name
        stub.write_text(body)
        stub.chmod(0o755)
    calls, state, tmp, letsencrypt = tmp_path / "calls", tmp_path / "state", tmp_path / "tmp", tmp_path / "le"
    for d in (calls, tmp, letsencrypt):
        d.mkdir()
    ca = tmp_path / "acme-ca.pem"
    ca.write_text("not really a CA\n")
    env_file = tmp_path / "renew.env"
    env_file.write_text(
        renewal.render_renew_env("web1", Certbot(), Renewal(), "/var/www/letsencrypt", str(ca))
    )
    script = tmp_path / "certfab-renew"
    script.write_text(renewal.render_renew_script())
    script.chmod(renewal.RENEW_SCRIPT_MODE)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "TMPDIR": str(tmp),
        "CERTFAB_STATE_DIR": str(state),
        "CERTFAB_ENV_FILE": str(env_file),
        "CERTFAB_SYSTEMD_DIR": str(tmp_path / "no-systemd"),
        "CERTFAB_SENDMAIL": str(bin_dir / "sendmail"),
        "CERTFAB_LETSENCRYPT_DIR": str(letsencrypt),
        "FAKE_CALLS": str(calls),
    }
    return Sandbox(tmp_path, script, calls, state, tmp, letsencrypt, env)


class TestRenewScriptRun:
    def test_renewed_and_nginx_ok(self, sandbox: Sandbox) -> None:
        result = sandbox.run(FAKE_RENEW="shop blog")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "" and result.stderr == ""
        assert sandbox.log("nginx").splitlines() == ["-t", "-s reload"]
        assert sandbox.log("service") == "nginx reload\n"  # tried first, failed, fell through
        assert sandbox.log("systemctl") == ""  # no systemd: never tried
        status = sandbox.status()
        assert status["result"] == "renewed"
        assert status["renewed"] == ["blog", "shop"]
        assert status["certbot_exit"] == 0
        assert status["nginx_test"] == "ok" and status["reload"] == "ok"
        assert str(status["time"]).endswith("Z")
        [mail] = sandbox.mails()
        assert "To: ops@example.com" in mail
        assert "Subject: [certfab] web1: renewal OK" in mail
        assert "blog, shop" in mail
        assert (sandbox.calls / "mail.0.args").read_text().split() == ["-oi", "-t"]
        assert "renewed" in sandbox.log("logger")
        assert (sandbox.state / "hook" / "renewed").read_text() == ""  # marker cleared after reload
        sandbox.assert_clean()

    def test_container_command_line(self, sandbox: Sandbox) -> None:
        sandbox.run()
        args = sandbox.docker_args()
        assert args[:4] == ["run", "--rm", "--network", "host"]
        mounts = [args[i + 1] for i, a in enumerate(args) if a == "-v"]
        ca = str(sandbox.root / "acme-ca.pem")
        assert mounts == [
            f"{sandbox.letsencrypt}:/etc/letsencrypt",
            "/var/lib/letsencrypt:/var/lib/letsencrypt",
            "/var/log/letsencrypt:/var/log/letsencrypt",
            "/var/www/letsencrypt:/var/www/letsencrypt",
            f"{sandbox.state / 'hook'}:/certfab-hook",
            f"{ca}:{ca}:ro",
        ]
        assert args[args.index("-e") + 1] == f"REQUESTS_CA_BUNDLE={ca}"
        image = args.index("certbot/certbot:v5.1.0")
        assert args[image + 1:image + 4] == ["renew", "--non-interactive", "--no-random-sleep-on-renew"]
        assert args[args.index("--deploy-hook") + 1] == 'echo "$RENEWED_LINEAGE" >> /certfab-hook/renewed'

    def test_systemd_reload_preferred_when_systemd_runs(self, sandbox: Sandbox) -> None:
        (sandbox.root / "no-systemd").mkdir()
        result = sandbox.run(FAKE_RENEW="shop", FAKE_SYSTEMCTL_EXIT="0")
        assert result.returncode == 0
        assert sandbox.log("systemctl").splitlines() == ["reload nginx"]
        assert sandbox.log("service") == ""
        assert sandbox.log("nginx").splitlines() == ["-t"]
        assert "systemctl reload nginx" in sandbox.mails()[0]

    def test_no_success_mail_when_disabled(self, sandbox: Sandbox) -> None:
        env_file = Path(sandbox.env["CERTFAB_ENV_FILE"])
        env_file.write_text(renewal.render_renew_env(
            "web1", Certbot(), Renewal(mail_on_success=False), "/var/www/letsencrypt", None))
        result = sandbox.run(FAKE_RENEW="shop")
        assert result.returncode == 0
        assert sandbox.mails() == []
        assert sandbox.status()["result"] == "renewed"
        assert "-e" not in sandbox.docker_args()

    def test_nothing_due(self, sandbox: Sandbox) -> None:
        result = sandbox.run()
        assert result.returncode == 0, result.stderr
        assert sandbox.mails() == []
        assert sandbox.log("nginx") == ""
        status = sandbox.status()
        assert status["result"] == "nothing-due"
        assert status["renewed"] == []
        assert status["nginx_test"] == "skipped" and status["reload"] == "skipped"
        assert "nothing-due" in sandbox.log("logger")
        sandbox.assert_clean()

    def test_nginx_test_fails(self, sandbox: Sandbox) -> None:
        emerg = 'nginx: [emerg] unexpected "}" in /etc/nginx/sites-enabled/shop:12 \\ tab\tend'
        result = sandbox.run(FAKE_RENEW="shop", FAKE_NGINX_T_EXIT="1", FAKE_NGINX_T_OUTPUT=emerg)
        assert result.returncode == 1
        assert sandbox.log("nginx").splitlines() == ["-t"]  # no reload
        assert sandbox.log("service") == "" and sandbox.log("systemctl") == ""
        [mail] = sandbox.mails()
        assert "Subject: [certfab] web1: renewal FAILED" in mail
        assert 'unexpected "}" in /etc/nginx/sites-enabled/shop:12' in mail
        status = sandbox.status()  # parses despite quotes, backslash and tab in the message
        assert status["result"] == "failed"
        assert status["nginx_test"] == "failed" and status["reload"] == "skipped"
        assert status["renewed"] == ["shop"]
        assert 'unexpected "}"' in str(status["message"])
        # The renewal stays pending so the next run tests and reloads again (and alerts again).
        assert (sandbox.state / "hook" / "renewed").read_text().strip() == "/etc/letsencrypt/live/shop"
        assert (sandbox.state / "pending").read_text() == "shop\n"
        sandbox.assert_clean("pending")

    def test_certbot_fails(self, sandbox: Sandbox) -> None:
        output = 'Failed to renew certificate shop with error: "urn:ietf:params:acme:error:connection"\x1b[0m\x07'
        result = sandbox.run(FAKE_CERTBOT_EXIT="1", FAKE_CERTBOT_OUTPUT=output)
        assert result.returncode == 1
        assert sandbox.log("nginx") == ""
        [mail] = sandbox.mails()
        assert "Subject: [certfab] web1: renewal FAILED" in mail
        assert "certbot renew exited with status 1" in mail
        assert 'Failed to renew certificate shop with error: "urn:ietf:params:acme:error:connection"' in mail
        assert "\x1b" not in mail and "\x07" not in mail
        status = sandbox.status()
        assert status["result"] == "failed" and status["certbot_exit"] == 1
        assert status["nginx_test"] == "skipped"
        # The status says why, not only that certbot failed (report-expiry shows this line).
        assert str(status["message"]).startswith("certbot renew exited with status 1: Failed to renew certificate shop")
        sandbox.assert_clean()

    def test_nginx_message_without_time_stamp_and_pid(self, sandbox: Sandbox) -> None:
        emerg = '2026/11/27 23:47:15 [emerg] 31500#31500: unknown directive "bogus" in /etc/nginx/conf.d/b.conf:1'
        result = sandbox.run(FAKE_RENEW="shop", FAKE_NGINX_T_EXIT="1", FAKE_NGINX_T_OUTPUT=emerg)
        assert result.returncode == 1
        message = str(sandbox.status()["message"])
        assert message.startswith('nginx -t failed, nginx NOT reloaded: [emerg] unknown directive "bogus" in ')
        assert "31500" not in message and "2026/11/27" not in message

    def test_partial_failure_still_reloads_renewed(self, sandbox: Sandbox) -> None:
        result = sandbox.run(FAKE_RENEW="shop", FAKE_CERTBOT_EXIT="1", FAKE_CERTBOT_OUTPUT="blog failed")
        assert result.returncode == 1
        assert sandbox.log("nginx").splitlines() == ["-t", "-s reload"]
        [mail] = sandbox.mails()
        assert "FAILED" in mail and "shop" in mail and "blog failed" in mail
        status = sandbox.status()
        assert status["result"] == "failed"
        assert status["renewed"] == ["shop"]
        assert status["nginx_test"] == "ok" and status["reload"] == "ok"

    def test_reload_fails_everywhere(self, sandbox: Sandbox) -> None:
        result = sandbox.run(FAKE_RENEW="shop", FAKE_NGINX_RELOAD_EXIT="1")
        assert result.returncode == 1
        status = sandbox.status()
        assert status["reload"] == "failed" and status["result"] == "failed"
        assert "nginx reload failed" in sandbox.mails()[0]

    def test_certbot_timeout(self, sandbox: Sandbox) -> None:
        if shutil.which("timeout") is None:
            pytest.skip("timeout not available")
        started = time.monotonic()
        result = sandbox.run(CERTFAB_CERTBOT_TIMEOUT="1", FAKE_SLEEP="20")
        assert time.monotonic() - started < 15
        assert result.returncode == 1
        assert sandbox.status()["certbot_exit"] == 124
        assert "timed out" in sandbox.mails()[0]
        sandbox.assert_clean()

    def test_missing_settings_file(self, sandbox: Sandbox) -> None:
        Path(sandbox.env["CERTFAB_ENV_FILE"]).unlink()
        result = sandbox.run()
        assert result.returncode == 1
        assert not (sandbox.calls / "docker.args").exists()
        assert sandbox.status()["result"] == "failed"
        assert "cannot read settings file" in sandbox.log("logger")
        sandbox.assert_clean()

    def test_lock_held_second_run_exits_quickly(self, sandbox: Sandbox) -> None:
        first = sandbox.popen(FAKE_SLEEP="6", FAKE_RENEW="shop")
        try:
            deadline = time.monotonic() + 10
            while not (sandbox.calls / "docker.args").exists():
                assert time.monotonic() < deadline, "first run never started certbot"
                time.sleep(0.05)
            (sandbox.calls / "docker.args").unlink()
            started = time.monotonic()
            second = sandbox.run(timeout=10)
            assert time.monotonic() - started < 3
            assert second.returncode == 0
            assert not (sandbox.calls / "docker.args").exists()  # second run never ran certbot
            busy = sandbox.status()
            assert busy["result"] == "busy"
            assert busy["holder"] == {"pid": first.pid, "since": busy["holder"]["since"]}  # type: ignore[index]
            assert str(busy["holder"]["since"]).endswith("Z")  # type: ignore[index]
            assert busy["renewed"] == [] and busy["certbot_exit"] == -1
            assert f"another renewal run holds the lock (certfab-renew pid {first.pid} since " in str(busy["message"])
            assert "busy: another renewal run holds the lock" in sandbox.log("logger")
            assert sandbox.mails() == []
        finally:
            first.wait(timeout=30)
        assert first.returncode == 0
        assert sandbox.status()["result"] == "renewed"

    def test_script_is_private_to_root(self, sandbox: Sandbox) -> None:
        assert stat.S_IMODE(os.stat(sandbox.script).st_mode) == 0o700


class TestRenewalTheHookMissed:
    """Lineages whose certificate changed during certbot count as renewed, recorded by the hook or not."""

    def test_broken_hook_renewal_is_still_tested_reloaded_mailed_and_recorded(self, sandbox: Sandbox) -> None:
        sandbox.add_lineage("shop")
        sandbox.add_lineage("blog")
        sandbox.break_hook()
        result = sandbox.run(FAKE_RENEW="shop")
        assert result.returncode == 0, result.stderr
        assert sandbox.log("nginx").splitlines() == ["-t", "-s reload"]
        status = sandbox.status()
        assert status["result"] == "renewed"
        assert status["renewed"] == ["shop"]  # blog did not change
        assert status["hook_missed"] == ["shop"]
        assert status["nginx_test"] == "ok" and status["reload"] == "ok"
        assert "not recorded by the deploy hook: shop" in str(status["message"])
        [mail] = sandbox.mails()
        assert "Subject: [certfab] web1: renewal OK" in mail
        assert "Renewed certificates: shop\n" in mail
        assert "Not recorded by the deploy hook (found by comparing certificates): shop" in mail
        assert "deploy hook did not record it: shop" in sandbox.log("logger")
        sandbox.assert_clean()

    def test_without_the_comparison_the_run_would_be_silent(self, sandbox: Sandbox) -> None:
        # Same broken hook, but certbot changes nothing: no renewal is invented.
        sandbox.add_lineage("shop")
        sandbox.break_hook()
        result = sandbox.run()
        assert result.returncode == 0, result.stderr
        assert sandbox.status()["result"] == "nothing-due"
        assert sandbox.log("nginx") == "" and sandbox.mails() == []

    def test_hook_and_comparison_are_merged_without_duplicates(self, sandbox: Sandbox) -> None:
        sandbox.add_lineage("shop")
        result = sandbox.run(FAKE_RENEW="shop blog")  # blog has no cert.pem here: only the hook saw it
        assert result.returncode == 0, result.stderr
        status = sandbox.status()
        assert status["renewed"] == ["blog", "shop"]
        assert status["hook_missed"] == []
        [mail] = sandbox.mails()
        assert "Renewed certificates: blog, shop\n" in mail
        assert "Not recorded by the deploy hook" not in mail
        assert sandbox.log("nginx").splitlines() == ["-t", "-s reload"]

    def test_a_symlink_moved_to_a_new_archive_file_is_a_renewal(self, sandbox: Sandbox) -> None:
        archive = sandbox.letsencrypt / "archive" / "shop"
        archive.mkdir(parents=True)
        (archive / "cert1.pem").write_text("same bytes\n")
        (archive / "cert2.pem").write_text("same bytes\n")
        live = sandbox.letsencrypt / "live" / "shop"
        live.mkdir(parents=True)
        (live / "cert.pem").symlink_to("../../archive/shop/cert1.pem")
        sandbox.break_hook()
        # certbot here moves the link only (content identical): the target alone tells the change.
        (sandbox.root / "bin" / "docker").write_text(
            "#!/bin/sh\nln -sfn ../../archive/shop/cert2.pem \"$CERTFAB_LETSENCRYPT_DIR/live/shop/cert.pem\"\n"
        )
        result = sandbox.run()
        assert result.returncode == 0, result.stderr
        assert sandbox.status()["renewed"] == ["shop"]

    def test_pending_reload_survives_a_broken_hook(self, sandbox: Sandbox) -> None:
        sandbox.add_lineage("shop")
        sandbox.break_hook()
        failed = sandbox.run(FAKE_RENEW="shop", FAKE_NGINX_T_EXIT="1", FAKE_NGINX_T_OUTPUT="nginx: [emerg] bad")
        assert failed.returncode == 1
        assert sandbox.status()["renewed"] == ["shop"]
        pending = sandbox.state / "pending"
        assert pending.read_text() == "shop\n"
        assert stat.S_IMODE(pending.stat().st_mode) == 0o600
        sandbox.assert_clean("pending")

        # Nothing changes on the next run, yet it still owes nginx a reload for shop.
        (sandbox.calls / "nginx.log").unlink()
        fixed = sandbox.run()
        assert fixed.returncode == 0, fixed.stderr
        assert sandbox.log("nginx").splitlines() == ["-t", "-s reload"]
        status = sandbox.status()
        assert status["result"] == "renewed" and status["renewed"] == ["shop"]
        assert status["hook_missed"] == []
        assert not pending.exists()
        sandbox.assert_clean()

    def test_hostile_lineage_names_are_data(self, sandbox: Sandbox) -> None:
        hostile = ["shop\nBcc: victim@example.net", "$(touch pwned)", "a b;c'd\"e", "-n", "tab\there"]
        for name in hostile:
            sandbox.add_lineage(name)
        sandbox.break_hook()
        result = subprocess.run([str(sandbox.script)], check=False, env=dict(sandbox.env, FAKE_RENEW_ALL="1"),
                                capture_output=True, text=True, timeout=60, cwd=sandbox.root)
        assert result.returncode == 0, result.stderr
        assert not (sandbox.root / "pwned").exists() and not (sandbox.state / "pwned").exists()
        status = sandbox.status()  # valid JSON
        assert sorted(status["renewed"]) == sorted(  # type: ignore[arg-type]
            ["shop?Bcc: victim@example.net", "$(touch pwned)", "a b;c'd\"e", "-n", "tab?here"])
        [raw] = sandbox.mails()
        mail = email.message_from_string(raw)
        assert mail["Bcc"] is None
        assert sorted(mail.keys()) == sorted(
            ["To", "From", "Subject", "MIME-Version", "Content-Type", "Auto-Submitted"])
        assert mail["Subject"] == "[certfab] web1: renewal OK"
        assert "shop?Bcc: victim@example.net" in mail.get_payload()

    def test_certbot_output_cannot_add_headers(self, sandbox: Sandbox) -> None:
        output = "Failed to renew\nBcc: victim@example.net\n\nSubject: forged"
        result = sandbox.run(FAKE_CERTBOT_EXIT="1", FAKE_CERTBOT_OUTPUT=output)
        assert result.returncode == 1
        mail = email.message_from_string(sandbox.mails()[0])
        assert mail["Bcc"] is None
        assert mail.get_all("Subject") == ["[certfab] web1: renewal FAILED"]

    def test_header_values_from_settings_stay_one_line(self, sandbox: Sandbox) -> None:
        env_file = Path(sandbox.env["CERTFAB_ENV_FILE"])
        env_file.write_text(env_file.read_text() + "MAIL_FROM=$'me@example.com\\nBcc: victim@example.net'\n")
        sandbox.run(FAKE_RENEW="shop")
        mail = email.message_from_string(sandbox.mails()[0])
        assert mail["Bcc"] is None
        assert mail["From"] == "me@example.com?Bcc: victim@example.net"


class TestBusyRun:
    """A run that finds the lock held says so in status.json."""

    def hold_lock(self, sandbox: Sandbox, content: str = "") -> int:
        sandbox.state.mkdir(exist_ok=True)
        fd = os.open(sandbox.state / "renew.lock", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, content.encode())
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd

    def test_foreign_holder_is_busy_with_unknown_holder(self, sandbox: Sandbox) -> None:
        fd = self.hold_lock(sandbox, "1 2026-01-01T00:00:00Z\n")  # pid 1 is no certfab-renew run
        try:
            started = time.time()
            result = sandbox.run(timeout=10)
        finally:
            os.close(fd)
        assert result.returncode == 0, result.stderr
        assert not (sandbox.calls / "docker.args").exists()
        status = sandbox.status()
        assert status["result"] == "busy"
        assert status["holder"] is None
        assert status["renewed"] == [] and status["nginx_test"] == "skipped"
        assert "another renewal run holds the lock" in str(status["message"])
        assert time.strptime(str(status["time"]), "%Y-%m-%dT%H:%M:%SZ")
        assert abs(time.mktime(time.strptime(str(status["time"]), "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
                   - started) < 60
        assert stat.S_IMODE((sandbox.state / "status.json").stat().st_mode) == 0o600
        assert sandbox.mails() == []
        sandbox.assert_clean()

    def test_stuck_holder_is_alerted(self, sandbox: Sandbox) -> None:
        stuck = subprocess.Popen(["bash", "-c", "exec -a /usr/local/sbin/certfab-renew sleep 30"])
        try:
            time.sleep(0.2)
            fd = self.hold_lock(sandbox, f"{stuck.pid} 2026-01-01T00:00:00Z\n")
            try:
                result = sandbox.run(timeout=10)
            finally:
                os.close(fd)
        finally:
            stuck.kill()
            stuck.wait()
        assert result.returncode == 1
        status = sandbox.status()
        assert status["result"] == "busy"
        assert status["holder"] == {"pid": stuck.pid, "since": "2026-01-01T00:00:00Z"}
        [mail] = sandbox.mails()
        assert "Subject: [certfab] web1: renewal STUCK" in mail
        assert f"certfab-renew pid {stuck.pid} has held" in mail
        sandbox.assert_clean()


class TestStatusFile:
    def test_status_file_is_private_and_replaced_by_rename(self, sandbox: Sandbox) -> None:
        sandbox.run()
        status_file = sandbox.state / "status.json"
        first = status_file.stat()
        assert stat.S_IMODE(first.st_mode) == 0o600
        sandbox.run()
        second = status_file.stat()
        assert second.st_ino != first.st_ino
        assert stat.S_IMODE(second.st_mode) == 0o600
        assert stat.S_IMODE((sandbox.state / "renew.lock").stat().st_mode) == 0o600


# --- competing renewal jobs and renew-now's reading of a run -----------------------------------------


class TestCompetingJobs:
    def test_packaged_jobs_and_root_crontab_lines(self) -> None:
        crontab = (
            "# m h dom mon dow command\nMAILTO=ops@example.com\n"
            "0 3 * * * /usr/bin/certbot renew --quiet\n#0 4 * * * certbot renew\n"
            "17 5 * * * /usr/local/sbin/certfab-renew\n30 2 * * * /usr/local/bin/backup\n"
        )
        assert competing_renewal_jobs(("/etc/cron.d/certbot", "certbot.timer"), crontab) == [
            "/etc/cron.d/certbot", "certbot.timer",
            "root's crontab: 0 3 * * * /usr/bin/certbot renew --quiet",
            "root's crontab: 17 5 * * * /usr/local/sbin/certfab-renew",
        ]

    def test_none(self) -> None:
        assert competing_renewal_jobs((), "") == []
        assert competing_renewal_jobs((), "30 2 * * * /usr/local/bin/backup\n") == []


@dataclass(frozen=True)
class _Host:
    name: str = "web1"


class _LocalRemote:
    """Stands in for certfab.remote.Remote: runs renew-now's remote script here against a sandbox root."""

    def __init__(self, root: Path) -> None:
        self.host = _Host()
        self.root = root

    def script(self, name: str, *, what: str, timeout: float | None = None,
               context: Mapping[str, object] | None = None, **values: object) -> Reply:
        return run_local(name, root=str(self.root), timeout=timeout or 60, **{**(context or {}), **values})


def install_renewal(sandbox: Sandbox, body: str | None = None) -> _LocalRemote:
    """Put certfab-renew at the sandbox root's /usr/local/sbin, as bootstrap does on a host.

    The installed file runs the sandbox's script with its stubs and settings (remote scripts set
    their own PATH, which would otherwise find the machine's real docker and nginx).
    """
    sbin = sandbox.root / "usr" / "local" / "sbin"
    sbin.mkdir(parents=True)
    (sandbox.root / "var" / "lib").mkdir(parents=True)
    (sandbox.root / "var" / "lib" / "certfab").symlink_to(sandbox.state)
    sandbox.state.mkdir(exist_ok=True)
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sandbox.env.items())
    installed = sbin / "certfab-renew"
    installed.write_text("#!/bin/sh\n" + exports + (body if body is not None else f"exec {shlex.quote(str(sandbox.script))}\n"))
    installed.chmod(0o700)
    return _LocalRemote(sandbox.root)


class TestRunRenewal:
    """renew-now's reading of a run, through its real remote script and the real renewal script."""

    def test_fresh_status(self, sandbox: Sandbox) -> None:
        remote = install_renewal(sandbox)
        status = run_renewal(remote).to_json()  # type: ignore[arg-type]
        assert status["result"] == "nothing-due" and status["exit"] == 0

    def test_busy_run_is_read_from_the_status_it_recorded(self, sandbox: Sandbox) -> None:
        remote = install_renewal(sandbox)
        fd = os.open(sandbox.state / "renew.lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            status = run_renewal(remote).to_json()  # type: ignore[arg-type]
        finally:
            os.close(fd)
        assert status["result"] == "busy" and status["exit"] == 0
        assert "time" in status and status["holder"] is None  # the script's own record, not a guess
        assert status["renewed"] == []
        assert "another renewal run holds the lock" in status["message"]
        assert not (sandbox.calls / "docker.args").exists()

    def test_a_run_that_records_nothing_is_still_busy(self, sandbox: Sandbox) -> None:
        remote = install_renewal(sandbox, body="exit 0\n")  # an older script: silent when busy
        status = run_renewal(remote).to_json()  # type: ignore[arg-type]
        assert status["result"] == "busy" and status["renewed"] == []
        assert "another renewal run holds the lock" in status["message"]

    def test_failed_before_any_status(self, sandbox: Sandbox) -> None:
        remote = install_renewal(sandbox, body="exit 1\n")
        status = run_renewal(remote).to_json()  # type: ignore[arg-type]
        assert status["result"] == "failed" and status["exit"] == 1

    def test_not_installed(self, sandbox: Sandbox) -> None:
        with pytest.raises(RemoteError, match="not installed"):
            run_renewal(_LocalRemote(sandbox.root))  # type: ignore[arg-type]
