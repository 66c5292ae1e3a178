"""The one answer format of every remote script: base64 frames that host content cannot forge.

A script prints nothing but frames, two lines each:

    @NONCE NAME ARG      header: NONCE is fresh per script, NAME is certfab's, ARG is base64
    BODY                 base64 of the frame's bytes (possibly empty)

Host content only ever travels base64-encoded, so no file, file name or command output can start a
line of its own, and a header without the script's nonce is refused instead of believed.

Files can travel together: a `files` frame is a tar archive of several host files (one process on the
host for any number of them), a `file` frame one file by its path. Both become, here, the frames the
file's path stands for in FILE_ROUTES, as if the script had sent each on its own; a path that is not
there, or a member that is not a regular file, makes the whole answer a ProtocolError.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import secrets
import tarfile
from dataclasses import dataclass

from certfab.errors import RemoteError
from certfab.paths import CRON_FILE, LETSENCRYPT_LIVE, LETSENCRYPT_RENEWAL, SHARED_LINEAGES, STATUS_FILE

_NAME = re.compile(r"[a-z][a-z0-9-]{0,40}")
_B64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


class ProtocolError(RemoteError):
    """A remote script answered with something that is not a well-formed frame."""


def new_nonce() -> str:
    """A per-script token that only certfab's own frame headers carry."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Frame:
    """One section of a remote script's answer: a name chosen by certfab, an argument, raw bytes."""

    name: str
    arg: str
    body: bytes

    @property
    def text(self) -> str:
        """The body as text; bytes that are not UTF-8 survive a round trip (surrogateescape)."""
        return self.body.decode("utf-8", errors="surrogateescape")


@dataclass(frozen=True)
class Reply:
    """What a remote script answered: its frames, its exit status and its stderr (host text)."""

    exited: int
    frames: tuple[Frame, ...]
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.exited == 0

    def get(self, name: str) -> Frame | None:
        """The first frame called `name`, if any."""
        return next((f for f in self.frames if f.name == name), None)

    def all(self, name: str) -> list[Frame]:
        """Every frame called `name`, in order."""
        return [f for f in self.frames if f.name == name]

    def text(self, name: str, default: str = "") -> str:
        """The body of the first frame called `name` as text, or `default` when there is none."""
        frame = self.get(name)
        return frame.text if frame is not None else default

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def last_error_line(self) -> str:
        """The last non-empty stderr line, or the body of an `error` frame: what to tell the operator."""
        error = self.text("error").strip()
        if error:
            return error.splitlines()[-1]
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else "no output"


# Host paths a script may send as files, and the frame each becomes: (path pattern, frame name, argument),
# the argument being the pattern's one group, or the path itself for "path", or empty.
_LINEAGE = r"([^/]+)"
FILE_ROUTES: tuple[tuple[re.Pattern[str], str, str], ...] = tuple(
    (re.compile(pattern), name, arg) for pattern, name, arg in (
        (re.escape(LETSENCRYPT_LIVE) + f"/{_LINEAGE}/cert\\.pem", "cert", "group"),
        (re.escape(SHARED_LINEAGES) + f"/{_LINEAGE}/cert\\.pem", "shared-cert", "group"),
        (re.escape(LETSENCRYPT_RENEWAL) + f"/{_LINEAGE}\\.conf", "renewal-conf", "group"),
        (re.escape(STATUS_FILE), "status", ""),
        (re.escape(CRON_FILE), "owned-file", "path"),
        ("/var/spool/cron/crontabs/root|/var/spool/cron/root", "crontab", ""),
    )
)


def routed_frame(path: str, body: bytes) -> Frame:
    """The frame a host file stands for (FILE_ROUTES); a path outside them is a ProtocolError."""
    for pattern, name, arg in FILE_ROUTES:
        found = pattern.fullmatch(path)
        if found:
            return Frame(name, found.group(1) if arg == "group" else path if arg == "path" else "", body)
    raise ProtocolError(f"the answer holds a file certfab did not ask for: {path[:80]!r}")


def unpack_files(archive: bytes) -> list[Frame]:
    """A `files` frame's tar archive as one routed frame per member, read in memory only."""
    frames = []
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:", encoding="utf-8",
                          errors="surrogateescape") as tar:
            for member in tar:
                # A sparse member could claim a size far beyond the bytes that came (zeros made up here).
                if not member.isreg() or member.issparse() or member.size > len(archive):
                    raise ProtocolError(f"the file archive holds {member.name[:80]!r}, which is not a plain file")
                data = tar.extractfile(member)
                frames.append(routed_frame("/" + member.name.lstrip("/"), data.read() if data else b""))
    except (tarfile.TarError, EOFError, ValueError) as exc:
        raise ProtocolError(f"the file archive is not a readable tar archive: {exc}") from None
    return frames


def _b64decode(data: bytes, what: str) -> bytes:
    if not _B64.fullmatch(data):
        raise ProtocolError(f"{what} is not base64")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{what} is not valid base64") from None


def parse_frames(data: bytes, nonce: str) -> tuple[Frame, ...]:
    """Split a script's stdout into frames; anything else in it is a ProtocolError.

    A script cut off mid-frame (lost session, full disk) leaves a header without its body line:
    that is refused too, so a partial answer is never mistaken for a complete one.
    """
    prefix = f"@{nonce} ".encode()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    else:
        if data:
            raise ProtocolError("the answer ends in the middle of a line")
    frames: list[Frame] = []
    index = 0
    while index < len(lines):
        header = lines[index]
        if not header.startswith(prefix):
            shown = header[:60].decode("ascii", errors="replace")
            raise ProtocolError(f"unexpected output line {shown!r} (not a certfab frame)")
        fields = header[len(prefix):].split(b" ")
        if len(fields) != 2 or not _NAME.fullmatch(fields[0].decode("ascii", errors="replace")):
            raise ProtocolError("malformed frame header")
        if index + 1 >= len(lines):
            raise ProtocolError(f"frame {fields[0].decode()} has no body (answer cut off)")
        name = fields[0].decode("ascii")
        arg = _b64decode(fields[1], f"the argument of frame {name}").decode("utf-8", errors="surrogateescape")
        body = _b64decode(lines[index + 1], f"the body of frame {name}")
        if name == "files":
            if not body:
                raise ProtocolError("tar on the host sent no archive")
            frames += unpack_files(body)
        elif name == "file":
            frames.append(routed_frame(arg, body))
        else:
            frames.append(Frame(name, arg, body))
        index += 2
    return tuple(frames)


def encode_frame(nonce: str, name: str, arg: str, body: bytes) -> bytes:
    """A frame as a script prints it (for tests and for certfab's own local tools)."""
    return (
        f"@{nonce} {name} ".encode()
        + base64.b64encode(arg.encode("utf-8", errors="surrogateescape"))
        + b"\n"
        + base64.b64encode(body)
        + b"\n"
    )
