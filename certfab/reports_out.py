"""Where reports go on the operator's machine: files under reports/, other files, a mail."""

from __future__ import annotations

import os
import smtplib
import tempfile
from pathlib import Path

from certfab.errors import CertfabError
from certfab.report import Report, digest_mail, to_json

REPORTS_DIR = Path("reports")


def write_text(path: str | Path, text: str) -> Path:
    """Write a file atomically (temp file beside it, then rename)."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except OSError as exc:
        raise CertfabError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target


def save_report(report: Report, directory: Path = REPORTS_DIR) -> Path:
    """Keep every run as reports/expiry-<UTC time>.json and reports/latest.json."""
    text = to_json(report)
    stamp = report.generated_at.strftime("%Y%m%dT%H%M%SZ")
    saved = write_text(directory / f"expiry-{stamp}.json", text)
    write_text(directory / "latest.json", text)
    return saved


def send_digest(report: Report, to: str, smtp: str | None) -> None:
    """Mail one digest of the fleet's report through an SMTP server."""
    server = smtp or os.environ.get("CERTFAB_SMTP") or "localhost:25"
    host, _, port = server.partition(":")
    sender = os.environ.get("CERTFAB_MAIL_FROM", "certfab@" + (os.uname().nodename or "localhost"))
    message = digest_mail(report, to, sender)
    try:
        with smtplib.SMTP(host, int(port or 25), timeout=30) as client:
            client.send_message(message)
    except (OSError, smtplib.SMTPException, ValueError) as exc:
        raise CertfabError(f"--mail: cannot send the digest through {server}: {exc}") from None
