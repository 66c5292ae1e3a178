"""`fab report-expiry` on the real hosts web6 and web7: every output checked against real handshakes."""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import re
import shlex
import shutil
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import REPO_DIR, certfab_cli
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from prometheus_client.parser import text_string_to_metric_families

from certfab.facts import REPORT_SCRIPT, report_context
from certfab.fleet import HostSession, run_fleet, run_on_host
from certfab.gather import host_records
from certfab.inventory import Inventory, load_inventory
from certfab.issue import container_command
from certfab.lab import Lab
from certfab.protocol import parse_frames
from certfab.remote import RunResult
from certfab.remote_scripts import render_script

REPORTS = REPO_DIR / "reports"
MAIL_TO = "ops@lab.test"
RENEWED_HOST = "web7"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


# --- helpers ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """What a TLS handshake shows for one name, read without certfab's code."""

    not_after: datetime
    sha256: str


def handshake(address: str, name: str) -> Served:
    """The leaf served at address:443 for `name`: openssl s_client if present, else Python's ssl."""
    if shutil.which("openssl"):
        client = subprocess.run(
            ["openssl", "s_client", "-connect", f"{address}:443", "-servername", name],
            input="", capture_output=True, text=True, timeout=30, check=False,
        )
        shown = subprocess.run(
            ["openssl", "x509", "-noout", "-enddate", "-fingerprint", "-sha256"],
            input=client.stdout, capture_output=True, text=True, timeout=30, check=True,
        ).stdout
        end = re.search(r"^notAfter=(.+)$", shown, re.MULTILINE)
        fingerprint = re.search(r"Fingerprint=([0-9A-F:]+)$", shown, re.MULTILINE)
        assert end and fingerprint, shown
        not_after = datetime.strptime(end.group(1).strip(), "%b %d %H:%M:%S %Y %Z")
        return Served(not_after.replace(tzinfo=timezone.utc), fingerprint.group(1).replace(":", "").lower())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, 443), timeout=10) as raw, context.wrap_socket(
        raw, server_hostname=name
    ) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der
    cert = x509.load_der_x509_certificate(der)
    return Served(cert.not_valid_after_utc, cert.fingerprint(hashes.SHA256()).hex())


def iso(when: datetime) -> str:
    """The report's time format: UTC, seconds, with a Z."""
    return when.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def disk_cert(lab: Lab, host: str) -> x509.Certificate:
    """The lineage's current certificate on the host's disk."""
    pem = lab.host_path(host, f"/etc/letsencrypt/live/{host}/cert.pem").read_bytes()
    return x509.load_pem_x509_certificate(pem)


def report_json(lab: Lab, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    """Run `fab ... report-expiry --json` and parse what it printed."""
    result = certfab_cli(lab, "fab", *args, "--json")
    assert result.returncode in (0, 1, 2), result.stdout + result.stderr
    try:
        doc = json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"report-expiry --json printed no JSON:\n{result.stdout}\n{result.stderr}")
    assert isinstance(doc, dict)
    return result, doc


def rows_by_host(doc: dict[str, object]) -> dict[str, dict[str, object]]:
    """The report's rows keyed by host (one row per host here: one site each)."""
    rows = doc["rows"]
    assert isinstance(rows, list)
    by_host = {row["host"]: row for row in rows}
    assert len(by_host) == len(rows), rows
    return by_host


def saved_report(generated_at: str) -> Path:
    """reports/expiry-<UTC>.json for a report generated at that time."""
    stamp = datetime.fromisoformat(generated_at.replace("Z", "+00:00")).strftime("%Y%m%dT%H%M%SZ")
    return REPORTS / f"expiry-{stamp}.json"


def base64_payloads(text: str) -> list[bytes]:
    """Every long base64 run in a text, decoded (facts come back base64-encoded)."""
    found = []
    for token in re.findall(r"[A-Za-z0-9+/]{40,}={0,2}", text):
        try:
            found.append(base64.b64decode(token + "=" * (-len(token) % 4)))
        except (binascii.Error, ValueError):
            continue
    return found


def assert_no_private_key(text: str, key_pem: str, where: str) -> None:
    """No private key in a text: not as PEM, not base64-wrapped, not its body."""
    assert "PRIVATE KEY" not in text, where
    body = "".join(line for line in key_pem.splitlines() if line and not line.startswith("-----"))
    assert body and body not in text.replace("\n", ""), where
    for payload in base64_payloads(text):
        assert b"PRIVATE KEY" not in payload, where
        assert body.encode() not in payload.replace(b"\n", b""), where


class DomCollector(HTMLParser):
    """The chart bars and table rows of a rendered report page."""

    def __init__(self) -> None:
        super().__init__()
        self.svgs = 0
        self.bars: list[dict[str, str]] = []
        self.rows: list[list[str]] = []
        self._in_svg = self._in_tbody = False
        self._title: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "svg":
            self.svgs += 1
            self._in_svg = True
        elif tag == "rect" and self._in_svg and "bar" in values.get("class", "").split():
            self.bars.append(values)
        elif tag == "title" and self._in_svg and self.bars:
            self._title = []
        elif tag == "tbody":
            self._in_tbody = True
        elif tag == "tr" and self._in_tbody:
            self.rows.append([])
        elif tag == "td" and self._in_tbody:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._in_svg = False
        elif tag == "title" and self._title is not None:
            self.bars[-1]["title"] = "".join(self._title)
            self._title = None
        elif tag == "tbody":
            self._in_tbody = False
        elif tag == "td" and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._title is not None:
            self._title.append(data)
        if self._cell is not None:
            self._cell.append(data)


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inventory(lab: Lab) -> Inventory:
    return load_inventory(lab.info.inventory)


@pytest.fixture(scope="module")
def fleet(lab: Lab, module_hosts: tuple[str, ...]) -> tuple[str, ...]:
    """web6 and web7 bootstrapped (certificate issued, HTTPS, renewal installed; renewal not run yet)."""
    result = certfab_cli(lab, "fab", "-H", ",".join(module_hosts), "bootstrap", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return module_hosts


@pytest.fixture(scope="module")
def expected(lab: Lab, fleet: tuple[str, ...]) -> dict[str, dict[str, Served]]:
    """What each host serves for each of its names, by independent handshakes."""
    return {
        host: {name: handshake(lab.info.host(host).address, name) for name in lab.info.host(host).domains}
        for host in fleet
    }


@dataclass(frozen=True)
class Outputs:
    """One `report-expiry` run with every output: CSV on stdout, HTML, Prometheus, a mail."""

    result: subprocess.CompletedProcess[str]
    html: Path
    prometheus: Path
    generated_at: str


@pytest.fixture(scope="module")
def outputs(lab: Lab, fleet: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory) -> Outputs:
    directory = tmp_path_factory.mktemp("report-outputs")
    html, prom = directory / "report.html", directory / "certfab.prom"
    result = certfab_cli(
        lab, "fab", "report-expiry", "--limit", ",".join(fleet), "--format", "csv", "--html", str(html),
        "--prometheus", str(prom), "--mail", MAIL_TO, "--smtp", f"{lab.info.bridge_address}:25",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    stamp = families["certfab_report_generated_timestamp_seconds"].samples[0].value
    return Outputs(result, html, prom, iso(datetime.fromtimestamp(stamp, timezone.utc)))


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, installed with apt if it is missing."""
    found = shutil.which("chromium")
    if found is None:
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        install = ["apt-get", "install", "-y", "-qq", "chromium"]
        done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900, check=False)
        if done.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600, check=False)
            done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900, check=False)
        found = shutil.which("chromium")
        if found is None:
            pytest.skip(f"cannot install chromium with apt-get: {(done.stderr or done.stdout).strip()[-300:]}")
    return found


def run_chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with a throw-away profile and nothing that reaches the network."""
    return subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=180, check=False,
    )


# --- the report on healthy hosts --------------------------------------------------------------------


def test_json_report_matches_independent_handshakes(
    lab: Lab, fleet: tuple[str, ...], expected: dict[str, dict[str, Served]]
) -> None:
    result, doc = report_json(lab, "report-expiry", "--limit", ",".join(fleet))
    assert result.returncode == 0, doc
    assert doc["exit_code"] == 0 and doc["schema"] == "certfab.report/1"
    rows = rows_by_host(doc)
    assert sorted(rows) == sorted(fleet)
    for host in fleet:
        row = rows[host]
        # Freshly bootstrapped: the renewal has not run yet, which is fine and said in a note.
        assert row["status"] == "ok", row["notes"]
        assert row["notes"] == ["renewal has not run yet"]
        assert row["renewal"] is None and row["cron_present"] is True
        cert = row["certificate"]
        assert isinstance(cert, dict)
        assert sorted(cert["names"]) == sorted(lab.info.host(host).domains)
        for name, served in expected[host].items():
            assert cert["not_after"] == iso(served.not_after), name
            assert cert["sha256"] == served.sha256, name
            assert row["served"][name] == {
                "ok": True, "error": None, "sha256": served.sha256, "matches_disk": True,
                "not_after": iso(served.not_after),
            }
        assert cert["sha256"] == disk_cert(lab, host).fingerprint(hashes.SHA256()).hex()

    generated_at = doc["generated_at"]
    assert isinstance(generated_at, str)
    assert json.loads(saved_report(generated_at).read_text()) == doc
    latest = json.loads((REPORTS / "latest.json").read_text())
    # Other modules may report at the same time: latest.json is this run's or a later one.
    assert latest["schema"] == "certfab.report/1" and latest["generated_at"] >= generated_at


def test_one_host_with_H(lab: Lab, fleet: tuple[str, ...], expected: dict[str, dict[str, Served]]) -> None:
    result, doc = report_json(lab, "-H", "web6", "report-expiry")
    assert result.returncode == 0, doc
    rows = rows_by_host(doc)
    assert list(rows) == ["web6"]
    assert rows["web6"]["certificate"]["not_after"] == iso(expected["web6"]["web6.test"].not_after)


def test_table_for_a_person(lab: Lab, fleet: tuple[str, ...], expected: dict[str, dict[str, Served]]) -> None:
    result = certfab_cli(lab, "fab", "report-expiry", "--limit", ",".join(fleet))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for host in fleet:
        expires = expected[host][f"{host}.test"].not_after
        row = next(line for line in lines if f"│ {host} " in line)
        assert "ok" in row and f"{expires:%Y-%m-%d %H:%M}" in row and "renewal has not run yet" in row
    assert "2 ok" in result.stdout and "exit 0" in result.stdout
    assert re.search(r"saved reports/expiry-\d{8}T\d{6}Z\.json", result.stderr)


def test_one_remote_command_per_host(lab: Lab, fleet: tuple[str, ...], inventory: Inventory) -> None:
    outcomes = run_fleet([inventory.host(h) for h in fleet], inventory, host_records, parallel=len(fleet))
    for outcome in outcomes:
        assert outcome.error is None, outcome.error
        assert outcome.commands == 1, outcome.host
        assert outcome.value is not None
        assert [record.site for record in outcome.value] == [outcome.host]


def test_remote_command_reads_no_private_key(lab: Lab, fleet: tuple[str, ...], inventory: Inventory) -> None:
    script = render_script(REPORT_SCRIPT, nonce="0", **report_context())
    # The only mentions of PRIVATE KEY are the guards that refuse to send a file holding one: one grep
    # for every cert.pem, and one per file when that grep could not read them all.
    guards = ("grep -c -s -h -e 'PRIVATE KEY' -- \"$@\"", "grep -q -e 'PRIVATE KEY' -- \"$certfab_f\"")
    assert all(script.count(guard) == 1 for guard in guards)
    unguarded = script
    for guard in guards:
        unguarded = unguarded.replace(guard, "")
    assert "privkey" not in script and "/archive" not in script and "PRIVATE" not in unguarded
    assert not re.search(r"\*[^ ;\"']*\.(pem|key)\b", script), "a glob that could match keys"
    assert not re.search(r"/(etc/letsencrypt|live)/\*(?!/)", script), "a glob over whole lineage dirs"

    key_pem = lab.host_exec("web6", "cat /etc/letsencrypt/live/web6/privkey.pem").stdout
    assert "PRIVATE KEY" in key_pem  # there is a key that could leak

    def read(session: HostSession) -> RunResult:
        return session.remote.run(script, what="report script")

    outcome = run_on_host(inventory.host("web6"), inventory, read)
    assert outcome.error is None and outcome.value is not None, outcome.error
    assert outcome.commands == 1
    output = outcome.value.stdout + outcome.value.stderr
    cert_pem = lab.host_path("web6", "/etc/letsencrypt/live/web6/cert.pem").read_bytes()
    frames = parse_frames(outcome.value.stdout.encode("utf-8", errors="surrogateescape"), "0")
    assert [f.body for f in frames if f.name == "cert" and f.arg == "web6"] == [cert_pem]  # it did come back
    assert_no_private_key(output, key_pem, "remote output")
    for frame in frames:
        assert_no_private_key(frame.text, key_pem, f"frame {frame.name} {frame.arg}")


# --- every output format ----------------------------------------------------------------------------


def test_csv_parses(outputs: Outputs, fleet: tuple[str, ...], expected: dict[str, dict[str, Served]]) -> None:
    rows = list(csv.DictReader(io.StringIO(outputs.result.stdout)))
    assert sorted(row["host"] for row in rows) == sorted(fleet)
    for row in rows:
        served = expected[row["host"]][f"{row['host']}.test"]
        assert row["status"] == "ok" and row["site"] == row["host"]
        assert row["not_after"] == iso(served.not_after) and row["sha256"] == served.sha256
        assert row["served_mismatch"] == "" and row["cron_present"] == "yes"
        assert set(row["names"].split()) == {f"{row['host']}.test", f"www.{row['host']}.test"}


def test_prometheus_parses(outputs: Outputs, fleet: tuple[str, ...], expected: dict[str, dict[str, Served]]) -> None:
    families = {f.name: f for f in text_string_to_metric_families(outputs.prometheus.read_text())}
    expiry = {
        (s.labels["host"], s.labels["site"]): s.value
        for s in families["certfab_certificate_expiry_timestamp_seconds"].samples
    }
    assert expiry == {(h, h): expected[h][f"{h}.test"].not_after.timestamp() for h in fleet}
    status = {(s.labels["host"], s.labels["status"]) for s in families["certfab_certificate_status"].samples}
    assert status == {(h, "ok") for h in fleet}
    up = {s.labels["host"]: s.value for s in families["certfab_host_up"].samples}
    assert up == {h: 1 for h in fleet}


def test_mail_digest_is_delivered_once(lab: Lab, outputs: Outputs, fleet: tuple[str, ...]) -> None:
    def digests() -> list[EmailMessage]:
        return [
            m for m in lab.mails()
            if str(m.get("To", "")) == MAIL_TO and str(m.get("Subject", "")).startswith("certfab: ")
            and f"certfab certificate report, {outputs.generated_at}" in m.get_content()
        ]

    deadline = time.monotonic() + 15
    while not digests() and time.monotonic() < deadline:
        time.sleep(0.5)
    found = digests()
    assert len(found) == 1
    mail = found[0]
    assert mail["Subject"] == "certfab: all 2 certificates ok"
    body = mail.get_content()
    for host in fleet:
        assert f"[OK] {host} / {host}:" in body
    assert "exit code: 0" in body
    assert "PRIVATE KEY" not in body


def test_outputs_hold_no_private_key(lab: Lab, outputs: Outputs, fleet: tuple[str, ...]) -> None:
    saved = saved_report(outputs.generated_at)
    files = {"csv": outputs.result.stdout, "html": outputs.html.read_text(),
             "prometheus": outputs.prometheus.read_text(), "json": saved.read_text()}
    for host in fleet:
        key_pem = lab.host_exec(host, f"cat /etc/letsencrypt/live/{host}/privkey.pem").stdout
        for name, text in files.items():
            assert_no_private_key(text, key_pem, f"{name} output, {host}'s key")


def test_html_renders_in_chromium(
    chromium: str, outputs: Outputs, fleet: tuple[str, ...], tmp_path: Path,
    expected: dict[str, dict[str, Served]],
) -> None:
    url = outputs.html.resolve().as_uri()
    screenshot = tmp_path / "report.png"
    shot = run_chromium(chromium, tmp_path / "profile-shot", f"--screenshot={screenshot}",
                        "--window-size=1400,900", url)
    assert screenshot.is_file(), shot.stderr[-2000:]
    data = screenshot.read_bytes()
    assert png_size(data) == (1400, 900)
    assert len(data) > 20_000, "the screenshot looks blank"

    dumped = run_chromium(chromium, tmp_path / "profile-dom", "--dump-dom", url)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = DomCollector()
    dom.feed(dumped.stdout)
    assert dom.svgs == 1
    assert sorted(bar["title"].split(":")[0] for bar in dom.bars) == sorted(f"{h} / {h}" for h in fleet)
    for bar in dom.bars:
        assert "status-ok" in bar["class"] and float(bar["width"]) > 100
    assert len(dom.rows) == len(fleet)
    cells = {row[1]: row for row in dom.rows}
    for host in fleet:
        row = cells[host]
        assert row[0] == "ok" and row[2] == host
        assert f"{host}.test" in row[3] and f"www.{host}.test" in row[3]
        assert row[5] == f"{expected[host][f'{host}.test'].not_after:%Y-%m-%d %H:%M}"


# --- faults -----------------------------------------------------------------------------------------


def test_renewal_without_reload_is_a_mismatch(
    lab: Lab, fleet: tuple[str, ...], inventory: Inventory, expected: dict[str, dict[str, Served]]
) -> None:
    host = inventory.host(RENEWED_HOST)
    # certbot renew by hand, as a careless admin would: new files on disk, nginx never told.
    command = container_command(host, acme_ca=inventory.acme.ca_bundle is not None) + [
        "renew", "--force-renewal", "--cert-name", RENEWED_HOST, "--non-interactive",
        "--no-random-sleep-on-renew",
    ]
    renewed = lab.host_exec(RENEWED_HOST, shlex.join(command), check=False, timeout=600)
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    new_cert = disk_cert(lab, RENEWED_HOST)
    old = expected[RENEWED_HOST]
    assert new_cert.fingerprint(hashes.SHA256()).hex() != old[f"{RENEWED_HOST}.test"].sha256
    try:
        result, doc = report_json(lab, "report-expiry", "--limit", ",".join(fleet))
        assert result.returncode == 2, doc
        rows = rows_by_host(doc)
        row = rows[RENEWED_HOST]
        assert row["status"] == "mismatch", row["notes"]
        assert row["certificate"]["sha256"] == new_cert.fingerprint(hashes.SHA256()).hex()
        for name, served in row["served"].items():
            assert served["matches_disk"] is False and served["sha256"] == old[name].sha256
        assert any("not reloaded" in note for note in row["notes"]), row["notes"]
        assert rows["web6"]["status"] == "ok"
    finally:
        lab.host_exec(RENEWED_HOST, "nginx -s reload")
    address = lab.info.host(RENEWED_HOST).address
    deadline = time.monotonic() + 20
    while handshake(address, f"{RENEWED_HOST}.test").sha256 != new_cert.fingerprint(hashes.SHA256()).hex():
        assert time.monotonic() < deadline, "nginx still serves the old certificate after a reload"
        time.sleep(0.5)
    result, doc = report_json(lab, "report-expiry", "--limit", ",".join(fleet))
    assert result.returncode == 0, doc


@pytest.fixture
def stopped_web7(lab: Lab, fleet: tuple[str, ...]) -> Iterator[str]:
    lab.stop_host("web7")
    try:
        yield "web7"
    finally:
        lab.start_host("web7")


def test_stopped_host_is_an_unreachable_row(lab: Lab, fleet: tuple[str, ...], stopped_web7: str) -> None:
    result, doc = report_json(lab, "report-expiry", "--limit", ",".join(fleet))
    assert result.returncode == 2, doc
    rows = rows_by_host(doc)
    assert sorted(rows) == sorted(fleet)
    row = rows[stopped_web7]
    assert row["status"] == "unreachable" and row["certificate"] is None
    assert stopped_web7 in str(row["unreachable_error"])
    assert rows["web6"]["status"] == "ok"
    assert doc["counts"]["unreachable"] == 1 and doc["counts"]["ok"] == 1

    table = certfab_cli(lab, "fab", "report-expiry", "--limit", ",".join(fleet))
    assert table.returncode == 2
    line = next(line for line in table.stdout.splitlines() if f"│ {stopped_web7} " in line)
    assert "unreachable" in line
