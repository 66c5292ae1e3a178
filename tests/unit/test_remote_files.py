"""Host files sent together: the `files` archive and the `file` frame, routed to the frames certfab
reads, and the report script run against a sandbox root with a planted key and hostile names."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certfab.facts import REPORT_SCRIPT, parse_facts, report_context
from certfab.protocol import Frame, ProtocolError, encode_frame, parse_frames, routed_frame
from certfab.remote_scripts import render_script, run_local

NONCE = "0123456789abcdef"
KEY_PEM = b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n"


def archive(*members: tuple[str, bytes], kind: bytes = tarfile.REGTYPE) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.type = len(data), kind
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return out.getvalue()


def frames_of(*frames: bytes) -> tuple[Frame, ...]:
    return parse_frames(b"".join(frames), NONCE)


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize("path, frame", [
    ("/etc/letsencrypt/live/a b$(x)/cert.pem", Frame("cert", "a b$(x)", b"x")),
    ("/etc/letsencrypt/certfab-shared/site/cert.pem", Frame("shared-cert", "site", b"x")),
    ("/etc/letsencrypt/renewal/site.conf", Frame("renewal-conf", "site", b"x")),
    ("/var/lib/certfab/status.json", Frame("status", "", b"x")),
    ("/etc/cron.d/certfab", Frame("owned-file", "/etc/cron.d/certfab", b"x")),
    ("/var/spool/cron/crontabs/root", Frame("crontab", "", b"x")),
    ("/var/spool/cron/root", Frame("crontab", "", b"x")),
])
def test_each_file_becomes_the_frame_its_path_stands_for(path: str, frame: Frame) -> None:
    assert routed_frame(path, b"x") == frame


@pytest.mark.parametrize("path", [
    "/etc/letsencrypt/live/site/privkey.pem",
    "/etc/letsencrypt/archive/site/cert1.pem",
    "/etc/letsencrypt/live/a/b/cert.pem",
    "/etc/shadow",
    "/etc/cron.d/certfab.dpkg-old",
])
def test_a_file_certfab_did_not_ask_for_is_refused(path: str) -> None:
    with pytest.raises(ProtocolError, match="did not ask for"):
        routed_frame(path, b"x")
    with pytest.raises(ProtocolError, match="did not ask for"):
        frames_of(encode_frame(NONCE, "files", "", archive((path.lstrip("/"), b"x"))))
    with pytest.raises(ProtocolError, match="did not ask for"):
        routed_frame(path.lstrip("/"), b"x")  # a `file` frame names its absolute path


def test_an_archive_unpacks_in_order_with_exact_bytes() -> None:
    body = b"\xff\x00not utf-8\n"
    data = archive(("etc/letsencrypt/live/s\xe9/cert.pem".encode("utf-8", "surrogateescape").decode("utf-8",
                                                                                                   "surrogateescape"),
                    body), ("var/lib/certfab/status.json", b"{}"))
    frames = frames_of(encode_frame(NONCE, "hostname", "", b"web1\n"), encode_frame(NONCE, "files", "", data),
                       encode_frame(NONCE, "done", "", b""))
    assert [(f.name, f.arg, f.body) for f in frames] == [
        ("hostname", "", b"web1\n"), ("cert", "s\xe9", body), ("status", "", b"{}"), ("done", "", b"")]


@pytest.mark.parametrize("data, why", [
    (b"", "sent no archive"),
    (b"not a tar archive at all" * 30, "not a readable tar archive"),
    (archive(("etc/letsencrypt/live/s/cert.pem", b""), kind=tarfile.SYMTYPE), "not a plain file"),
    (archive(("etc/letsencrypt/live/s/cert.pem", b""), kind=tarfile.DIRTYPE), "not a plain file"),
])
def test_a_broken_or_strange_archive_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        frames_of(encode_frame(NONCE, "files", "", data))


def test_a_member_claiming_more_bytes_than_came_is_refused() -> None:
    data = bytearray(archive(("etc/letsencrypt/live/s/cert.pem", b"abc")))
    header = tarfile.TarInfo.frombuf(bytes(data[:512]), "utf-8", "surrogateescape")
    header.size = 10**9
    data[:512] = header.tobuf(tarfile.GNU_FORMAT)
    with pytest.raises(ProtocolError):
        frames_of(encode_frame(NONCE, "files", "", bytes(data)))


def test_a_single_file_frame_is_routed_by_its_path() -> None:
    frames = frames_of(encode_frame(NONCE, "file", "/etc/letsencrypt/renewal/s.conf", b"conf"))
    assert frames == (Frame("renewal-conf", "s", b"conf"),)
    with pytest.raises(ProtocolError, match="did not ask for"):
        frames_of(encode_frame(NONCE, "file", "/root/.ssh/id_ed25519", b"key"))


# --------------------------------------------------------------------------- the report script


@pytest.fixture
def host_root(tmp_path: Path) -> Path:
    """A sandbox host: two lineages, one cert.pem with a key in it, a shared copy, status, cron, crontab."""
    files = {
        "etc/letsencrypt/live/ok/cert.pem": b"CERT OK\n",
        "etc/letsencrypt/live/ok/privkey.pem": KEY_PEM,
        "etc/letsencrypt/renewal/ok.conf": b"version = 5.8.0\n",
        "etc/letsencrypt/live/leaky/cert.pem": b"CERT\n" + KEY_PEM,
        "etc/letsencrypt/renewal/leaky.conf": b"version = 5.8.0\n",
        "etc/letsencrypt/live/we ird$(id)\xe9/cert.pem".encode().decode("utf-8", "surrogateescape"): b"\xffW\n",
        "etc/letsencrypt/certfab-shared/shop/cert.pem": b"SHARED\n",
        "etc/letsencrypt/certfab-shared/shop/privkey.pem": KEY_PEM,
        "var/lib/certfab/status.json": b"{}\n",
        "etc/cron.d/certfab": b"17 3 * * * root /usr/local/sbin/certfab-renew\n",
        "var/spool/cron/crontabs/root": b"# root's own\n",
    }
    for name, data in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return tmp_path


def expected_frames() -> list[tuple[str, str, bytes]]:
    return [
        ("cert", "ok", b"CERT OK\n"),
        ("cert", "we ird$(id)\xe9".encode().decode("utf-8", "surrogateescape"), b"\xffW\n"),
        ("shared-cert", "shop", b"SHARED\n"),
        ("renewal-conf", "ok", b"version = 5.8.0\n"),
        ("status", "", b"{}\n"),
        ("owned-file", "/etc/cron.d/certfab", b"17 3 * * * root /usr/local/sbin/certfab-renew\n"),
        ("crontab", "", b"# root's own\n"),
    ]


def test_report_script_sends_every_public_file_in_one_archive(host_root: Path) -> None:
    reply = run_local(REPORT_SCRIPT, root=str(host_root), **report_context())
    assert reply.ok, reply.stderr
    names = [f.name for f in reply.frames]
    assert names[0] == "hostname" and names[-1] == "done"
    assert sorted((f.name, f.arg, f.body) for f in reply.frames if f.name not in ("hostname", "done",
                                                                                "cert-refused")) \
        == sorted(expected_frames())
    assert [(f.name, f.arg) for f in reply.frames if f.name == "cert-refused"] == [("cert-refused", "leaky")]
    assert all(b"PRIVATE KEY" not in f.body for f in reply.frames)
    facts = parse_facts("web1", reply)
    assert set(facts.lineages) == {"ok", "we ird$(id)\xe9".encode().decode("utf-8", "surrogateescape")}
    assert facts.refused_certs == {"leaky": "cert.pem holds a private key"}
    assert facts.shared_copies == {"shop": "SHARED\n"} and facts.crontab == "# root's own\n"


def test_without_tar_each_file_is_a_frame_of_its_own(host_root: Path) -> None:
    script = render_script(REPORT_SCRIPT, nonce=NONCE, root=str(host_root), **report_context())
    assert script.count("if command -v tar ") == 1
    # As on a host without tar: the same frames, one `file` frame per file.
    without_tar = script.replace("if command -v tar ", "if command -v certfab-no-such-tar ")
    done = subprocess.run(["/bin/sh", "-s"], input=without_tar.encode("utf-8", "surrogateescape"),
                          capture_output=True, check=True)
    assert b"@" + NONCE.encode() + b" files " not in done.stdout
    frames = parse_frames(done.stdout, NONCE)
    assert sorted((f.name, f.arg, f.body) for f in frames if f.name not in ("hostname", "done", "cert-refused")) \
        == sorted(expected_frames())


def test_a_grep_that_cannot_count_every_file_falls_back_to_one_grep_each(host_root: Path) -> None:
    script = render_script(REPORT_SCRIPT, nonce=NONCE, root=str(host_root), **report_context())
    # As if the one grep had missed a file: its counts no longer match the files, so none is trusted.
    missing = script.replace("certfab_counts=$(grep -c", "certfab_counts=$(: ; grep -c", 1).replace(
        "-- \"$@\")", "-- \"$@\" | sed 1d)", 1)
    assert missing != script
    done = subprocess.run(["/bin/sh", "-s"], input=missing.encode("utf-8", "surrogateescape"),
                          capture_output=True, check=True)
    frames = parse_frames(done.stdout, NONCE)
    assert [(f.name, f.arg) for f in frames if f.name == "cert-refused"] == [("cert-refused", "leaky")]
    assert all(b"PRIVATE KEY" not in f.body for f in frames)
    assert sorted((f.name, f.arg, f.body) for f in frames if f.name not in ("hostname", "done", "cert-refused")) \
        == sorted(expected_frames())


def test_no_crontab_spool_file_in_a_spool_directory_means_no_crontab(host_root: Path) -> None:
    (host_root / "var/spool/cron/crontabs/root").unlink()
    reply = run_local(REPORT_SCRIPT, root=str(host_root), **report_context())
    assert reply.ok and not reply.has("crontab")
    assert parse_facts("web1", reply).crontab == ""


def run_script(script: str) -> tuple[Frame, ...]:
    done = subprocess.run(["/bin/sh", "-s"], input=script.encode("utf-8", "surrogateescape"), capture_output=True,
                          check=True)
    return parse_frames(done.stdout, NONCE)


def test_a_failed_grep_trusts_no_count_and_an_unreadable_file_is_refused(host_root: Path) -> None:
    script = render_script(REPORT_SCRIPT, nonce=NONCE, root=str(host_root), **report_context())
    batch = "certfab_counts=$(grep -c -s -h -e 'PRIVATE KEY' -- \"$@\")"
    single = "grep -q -e 'PRIVATE KEY' -- \"$certfab_f\" 2>/dev/null"
    assert script.count(batch) == 1 and script.count(single) == 1
    # The one grep reports an error (exit 2) after printing a count of 0 for every file.
    failed = script.replace(batch, "certfab_counts=$(for f; do echo 0; done; exit 2)")
    frames = run_script(failed)
    assert [(f.arg, f.text) for f in frames if f.name == "cert-refused"] == [
        ("leaky", "cert.pem holds a private key")]
    assert all(b"PRIVATE KEY" not in f.body for f in frames)
    # A file that its own grep cannot read (exit 2) is refused, not sent.
    unreadable = failed.replace(single, 'case $certfab_f in */ok/*) (exit 2) ;; *) ' + single + ' ;; esac')
    frames = run_script(unreadable)
    refused = sorted((f.arg, f.text) for f in frames if f.name == "cert-refused")
    assert refused == [("leaky", "cert.pem holds a private key"),
                       ("ok", "cert.pem could not be read to check it for a private key")]
    assert not [f for f in frames if f.name in ("cert", "renewal-conf") and f.arg == "ok"]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=4096), flip=st.integers(min_value=0, max_value=2047), byte=st.integers(0, 255))
def test_any_bytes_as_an_archive_are_frames_or_a_protocol_error(data: bytes, flip: int, byte: int) -> None:
    # Random bytes, and a real archive with one byte changed: nothing but frames or a ProtocolError.
    real = bytearray(archive(("etc/letsencrypt/live/s/cert.pem", b"CERT\n"), ("var/lib/certfab/status.json", b"{}")))
    real[flip % len(real)] = byte
    for body in (data, bytes(real)):
        try:
            frames = frames_of(encode_frame(NONCE, "files", "", body))
        except ProtocolError:
            continue
        assert all(f.name in {"cert", "status", "renewal-conf", "shared-cert", "owned-file", "crontab"}
                   for f in frames)
