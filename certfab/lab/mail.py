"""The lab's SMTP server on the bridge: every host's sendmail delivers into one Maildir."""

from __future__ import annotations

import email.policy
import shutil
import sys
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

from certfab.errors import LabError
from certfab.lab import layout, proc

SMTP_LOG = layout.LOG_DIR / "smtp.log"


def start_smtp() -> None:
    """Start an SMTP server (aiosmtpd, Maildir handler) on the bridge address, port 25."""
    try:
        import aiosmtpd  # noqa: F401  (only checks that the server can run)
    except ImportError as exc:
        raise LabError("the lab's SMTP server needs aiosmtpd: pip install -e '.[test]'") from exc
    for sub in ("cur", "new", "tmp"):
        (layout.MAIL_DIR / sub).mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "aiosmtpd",
        "-n",
        "-l",
        f"{layout.BRIDGE_ADDRESS}:{layout.SMTP_PORT}",
        "-c",
        "aiosmtpd.handlers.Mailbox",
        str(layout.MAIL_DIR),
    ]
    pid = proc.spawn(argv, log=SMTP_LOG, env={**proc.CLEAN_ENV, "PYTHONUNBUFFERED": "1"})
    proc.write_pid_file(layout.pid_file("smtp"), proc.record(pid))

    def listening() -> bool:
        if proc.live_pid(layout.pid_file("smtp")) is None:
            raise LabError(f"the lab SMTP server exited at start; see {SMTP_LOG}")
        return proc.port_open(layout.BRIDGE_ADDRESS, layout.SMTP_PORT)

    proc.wait_for("lab SMTP server", listening, timeout=20)


def _message_files() -> list[Path]:
    """Delivered message files, oldest first (Maildir names start with the delivery time)."""
    files = [
        p
        for sub in ("new", "cur")
        if (layout.MAIL_DIR / sub).is_dir()
        for p in (layout.MAIL_DIR / sub).iterdir()
    ]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))


def mails() -> list[EmailMessage]:
    """Every message the lab SMTP server received, oldest first."""
    parser = BytesParser(policy=email.policy.default)
    messages: list[EmailMessage] = []
    for path in _message_files():
        with open(path, "rb") as handle:
            message = parser.parse(handle)
        assert isinstance(message, EmailMessage)
        messages.append(message)
    return messages


def clear_mails() -> None:
    """Forget every received message."""
    for path in _message_files():
        path.unlink(missing_ok=True)


def wipe() -> None:
    """Remove the Maildir entirely (at lab start)."""
    shutil.rmtree(layout.MAIL_DIR, ignore_errors=True)
