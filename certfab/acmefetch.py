"""Reading an ACME server's directory over HTTPS from the operator's machine (once per run)."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path

from certfab.acmedir import AcmeDirectory, parse_directory

MAX_DIRECTORY_BYTES = 1 << 20


def fetch_directory(url: str, ca_bundle: Path | None, *, timeout: float = 10) -> AcmeDirectory:
    """The server's directory, or an AcmeDirectory whose error says why it could not be read."""
    context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle is not None else None)
    request = urllib.request.Request(url, headers={"User-Agent": "certfab"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=timeout) as response:
            body = response.read(MAX_DIRECTORY_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return AcmeDirectory(url, error=" ".join(str(reason).split())[:200])
    if len(body) > MAX_DIRECTORY_BYTES:
        return AcmeDirectory(url, error="the directory is larger than 1 MiB")
    return parse_directory(url, body)
