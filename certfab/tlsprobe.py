"""Look at what a server really serves: its TLS leaf, verification, HSTS and the HTTP redirect.

Every probe connects to a given address (so a host is checked directly, whatever DNS says) while
sending the site's name as SNI and Host. Network problems come back as readable strings, never raised.
"""

from __future__ import annotations

import functools
import http.client
import socket
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from certfab.certcache import parse_der
from certfab.certs import CertificateError, CertInfo

DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class ServedCert:
    """The leaf certificate a server presented for one name, or why it could not be read."""

    der: bytes
    info: CertInfo | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether a certificate was read."""
        return self.error is None and self.info is not None


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a verified HTTPS request: chain + hostname check, status and HSTS header."""

    ok: bool
    error: str | None
    leaf: CertInfo | None
    hsts: str | None
    status: int | None


@dataclass(frozen=True)
class RedirectResult:
    """Outcome of a plain HTTP request that is expected to redirect to HTTPS."""

    status: int | None
    location: str | None
    error: str | None = None


# A wildcard is checked through one name under it (an SNI name cannot hold `*`).
WILDCARD_PROBE_LABEL = "certfab-probe"


def probe_name(domain: str) -> str:
    """The name to ask a server for: the domain itself, or for `*.example.com` a name it covers."""
    return WILDCARD_PROBE_LABEL + domain[1:] if domain.startswith("*.") else domain


def fetch_served(
    address: str, port: int = 443, sni: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> ServedCert:
    """Read the leaf certificate served at address:port for `sni`, without verifying it."""
    sni = None if sni is None else probe_name(sni)
    ctx = _unverified_context()
    try:
        with (
            socket.create_connection((address, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=sni) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError) as exc:
        return ServedCert(b"", None, _describe(exc, address, port, timeout))
    if not der:
        return ServedCert(b"", None, f"{address}:{port} presented no certificate")
    try:
        info = parse_der(der)
    except CertificateError as exc:
        return ServedCert(der, None, f"served certificate is unreadable: {exc}")
    return ServedCert(der, info)


class ServedProbes:
    """What a server serves for each of some names, fetched in the background from the moment it is made.

    The report starts these handshakes before its SSH read of the host, so the two waits overlap;
    a name asked for later that was not fetched up front is fetched then.
    """

    def __init__(self, address: str, names: Iterable[str], port: int = 443, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._address, self._port, self._timeout = address, port, timeout
        self._results: dict[str, ServedCert] = {}
        self._thread = threading.Thread(target=self._fetch_all, args=(tuple(dict.fromkeys(names)),), daemon=True)
        self._thread.start()

    def _fetch_all(self, names: tuple[str, ...]) -> None:
        for name in names:
            self._results[name] = fetch_served(self._address, self._port, name, self._timeout)

    def get(self, name: str) -> ServedCert:
        """The certificate served for `name` (waits for the background fetches first)."""
        self._thread.join()
        if name not in self._results:
            self._results[name] = fetch_served(self._address, self._port, name, self._timeout)
        return self._results[name]


def verify_https(
    address: str,
    sni: str,
    trust_roots: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    port: int = 443,
    path: str = "/",
) -> VerifyResult:
    """GET https://sni/ from address:port, verifying the chain (trust_roots or system store) and name."""
    try:
        ctx = ssl.create_default_context(cafile=str(trust_roots) if trust_roots else None)
    except (OSError, ssl.SSLError) as exc:
        return VerifyResult(False, f"cannot load trust roots {trust_roots}: {exc}", None, None, None)
    conn = _PinnedHTTPSConnection(address, sni, port, timeout, ctx)
    leaf: CertInfo | None = None
    try:
        conn.connect()
        leaf = _peer_info(conn.sock)
        conn.request("GET", path, headers=_headers(sni))
        resp = conn.getresponse()
        status, hsts = resp.status, resp.getheader("Strict-Transport-Security")
        resp.close()
    except ssl.SSLCertVerificationError as exc:
        served = fetch_served(address, port, sni, timeout)
        return VerifyResult(False, _describe(exc, address, port, timeout), served.info, None, None)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return VerifyResult(False, _describe(exc, address, port, timeout), leaf, None, None)
    finally:
        conn.close()
    return VerifyResult(True, None, leaf, hsts, status)


def probe_redirect(
    address: str, name: str, timeout: float = DEFAULT_TIMEOUT, port: int = 80, path: str = "/"
) -> RedirectResult:
    """GET http://name/ from address:port without following redirects; status, Location or error."""
    conn = _PinnedHTTPConnection(address, name, port, timeout)
    try:
        conn.request("GET", path, headers=_headers(name))
        resp = conn.getresponse()
        result = RedirectResult(resp.status, resp.getheader("Location"))
        resp.close()
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return RedirectResult(None, None, _describe(exc, address, port, timeout))
    finally:
        conn.close()
    return result


def check_redirect(
    address: str, name: str, timeout: float = DEFAULT_TIMEOUT, port: int = 80
) -> tuple[int | None, str | None]:
    """(status, Location) of http://name/ served at address; (None, None) if it could not be fetched."""
    result = probe_redirect(address, name, timeout, port)
    return result.status, result.location


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP connection to a fixed address that still names the site in Host."""

    def __init__(self, address: str, name: str, port: int, timeout: float) -> None:
        super().__init__(name, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        """Connect to the pinned address instead of resolving the name."""
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS connection to a fixed address that sends the site name as SNI and checks it."""

    def __init__(self, address: str, sni: str, port: int, timeout: float, ctx: ssl.SSLContext) -> None:
        super().__init__(sni, port, timeout=timeout, context=ctx)
        self._address = address
        self._ctx = ctx

    def connect(self) -> None:
        """Connect to the pinned address and handshake with SNI = the site name."""
        raw = socket.create_connection((self._address, self.port), self.timeout)
        try:
            self.sock = self._ctx.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


@functools.lru_cache(maxsize=1)
def _unverified_context() -> ssl.SSLContext:
    """A client context that accepts any certificate: used only to read what is served.

    One for the whole run (contexts are safe to share between threads; making one per handshake
    costs more than the handshake's own client work).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _peer_info(sock: socket.socket | None) -> CertInfo | None:
    """The verified peer's leaf as CertInfo, if one can be read."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    der = sock.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        return parse_der(der)
    except CertificateError:
        return None


def _headers(name: str) -> dict[str, str]:
    """Request headers naming the site; no keep-alive, no compression."""
    return {"Host": name, "User-Agent": "certfab-probe", "Accept": "*/*", "Connection": "close"}


def _describe(exc: BaseException, address: str, port: int, timeout: float) -> str:
    """One readable line for a network or TLS failure."""
    where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{where}: certificate verify failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"{where}: TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"{where}: timed out after {timeout:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return f"{where}: connection refused"
    if isinstance(exc, ConnectionResetError):
        return f"{where}: connection reset by peer"
    if isinstance(exc, socket.gaierror):
        return f"{where}: cannot resolve address: {exc.strerror or exc}"
    if isinstance(exc, http.client.HTTPException):
        return f"{where}: bad HTTP response: {type(exc).__name__} {exc}".rstrip()
    if isinstance(exc, OSError):
        return f"{where}: {exc.strerror or exc}"
    return f"{where}: {exc}"
