"""Where reports go on the operator's machine: files under reports/, other files, a mail."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from certfab.errors import CertfabError

if TYPE_CHECKING:  # the report module loads only when a report is saved or mailed (not for run logs)
    from certfab.report import Report

REPORTS_DIR = Path("reports")

# Reports and run logs hold host text (crontab lines can carry credentials): only the operator reads them.
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def make_private_dir(directory: Path) -> None:
    """Create a missing directory, and missing parents, as 0700; an existing one is left as it is."""
    missing = []
    current = directory
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, PRIVATE_DIR_MODE)
        except FileExistsError:
            pass


def tighten_private_files(directory: Path, pattern: str = "*.json") -> None:
    """Take group and other access away from certfab's older files in a directory (written by older versions)."""
    for path in directory.glob(pattern):
        try:
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and info.st_mode & 0o077:
                os.chmod(path, stat.S_IMODE(info.st_mode) & 0o700)
        except OSError:
            continue


def _private_temp(target: Path, text: str) -> str:
    """A temp file beside target holding text, created 0600 (mkstemp's mode) before any byte is written."""
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    except BaseException:
        os.unlink(temp)
        raise
    return temp


def write_text(path: str | Path, text: str) -> Path:
    """Write a file atomically (private temp file beside it, then rename): mode 0600, also over a wider file."""
    target = Path(path)
    try:
        make_private_dir(target.parent)
        temp = _private_temp(target, text)
        try:
            os.replace(temp, target)
        except BaseException:
            os.unlink(temp)
            raise
    except OSError as exc:
        raise CertfabError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target


def write_new_text(path: Path, text: str) -> bool:
    """Create path atomically with text (mode 0600) unless it exists; False when it does."""
    make_private_dir(path.parent)
    temp = _private_temp(path, text)
    try:
        os.link(temp, path)  # atomic, and refuses to replace an existing file
    except FileExistsError:
        return False
    except OSError:
        # No hard links on this file system: exclusive create, still 0600 from the start.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    finally:
        os.unlink(temp)
    return True


def save_report(report: Report, directory: Path = REPORTS_DIR) -> Path:
    """Keep every run as reports/expiry-<UTC time>.json and reports/latest.json."""
    from certfab.report import to_json

    text = to_json(report)
    stamp = report.generated_at.strftime("%Y%m%dT%H%M%SZ")
    saved = write_text(directory / f"expiry-{stamp}.json", text)
    write_text(directory / "latest.json", text)
    tighten_private_files(directory)
    return saved


def send_digest(report: Report, to: str, smtp: str | None) -> None:
    """Mail one digest of the fleet's report through an SMTP server."""
    server = smtp or os.environ.get("CERTFAB_SMTP") or "localhost:25"
    host, _, port = server.partition(":")
    sender = os.environ.get("CERTFAB_MAIL_FROM", "certfab@" + (os.uname().nodename or "localhost"))
    import smtplib

    from certfab.report import digest_mail

    message = digest_mail(report, to, sender)
    try:
        with smtplib.SMTP(host, int(port or 25), timeout=30) as client:
            client.send_message(message)
    except (OSError, smtplib.SMTPException, ValueError) as exc:
        raise CertfabError(f"--mail: cannot send the digest through {server}: {exc}") from None
