"""The remote protocol: frames that host content cannot forge, and the real nginx-reading script
run against a sandbox root full of hostile names and planted keys."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certfab import includes
from certfab.protocol import Frame, ProtocolError, encode_frame, parse_frames
from certfab.remote_scripts import render_script, run_local
from certfab.templating import UnsafeValueError
from certfab.textsafe import for_terminal

NONCE = "0123456789abcdef"
KEY = b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n"

# --------------------------------------------------------------------------- frames


@given(name=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True), arg=st.text(), body=st.binary())
def test_frames_round_trip_any_bytes(name: str, arg: str, body: bytes) -> None:
    data = encode_frame(NONCE, name, arg, body) + encode_frame(NONCE, "done", "", b"")
    frames = parse_frames(data, NONCE)
    assert frames[0] == Frame(name, arg.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape"), body)
    assert frames[1].name == "done"


def test_content_that_mimics_a_frame_stays_inside_its_frame() -> None:
    forged = f"\n@{NONCE} nginx-file L2V0Yy9zaGFkb3c=\nAAAA\n".encode()
    frames = parse_frames(encode_frame(NONCE, "nginx-file", "/etc/nginx/x.conf", forged), NONCE)
    assert len(frames) == 1 and frames[0].body == forged


@pytest.mark.parametrize("data, why", [
    (b"hello\n", "not a certfab frame"),
    (b"@ffffffffffffffff state \nAAAA\n", "not a certfab frame"),
    (f"@{NONCE} state \n".encode(), "no body"),
    (f"@{NONCE} state \nnot base64!\n".encode(), "not base64"),
    (f"@{NONCE} State \nAAAA\n".encode(), "malformed"),
    (f"@{NONCE} state x y\nAAAA\n".encode(), "malformed"),
    (f"@{NONCE} state \nAAAA".encode(), "middle of a line"),
])
def test_anything_but_frames_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        parse_frames(data, NONCE)


def test_host_values_reach_scripts_only_quoted() -> None:
    script = render_script("nginx-files.sh.j2", nonce=NONCE, patterns=["/etc/nginx/$(reboot)'x`id`"],
                           key_paths=["/k; rm -rf /"], key_dirs=[])
    assert "expand '/etc/nginx/$(reboot)'\"'\"'x`id`'" in script
    assert "\"$R\"'/k; rm -rf /'" in script
    with pytest.raises(UnsafeValueError):
        render_script("nginx-files.sh.j2", nonce=NONCE, patterns=[], max_file_bytes="1; reboot")


# --------------------------------------------------------------------------- reading nginx files


def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """A root with /etc/nginx, key locations, and a canary directory outside it."""
    root = tmp_path / "root"
    canary = tmp_path / "outside"
    canary.mkdir(parents=True)
    (canary / "keep").write_text("untouched\n")
    for d in ("etc/nginx/sites-enabled", "etc/nginx/snippets", "etc/ssl/private", "etc/letsencrypt/live/a",
              "srv/keys"):
        (root / d).mkdir(parents=True)
    (root / "etc/ssl/private/snakeoil.key").write_bytes(KEY)
    (root / "etc/letsencrypt/live/a/privkey.pem").write_bytes(KEY)
    (root / "srv/keys/site.key").write_bytes(b"not pem but named as a key\n")
    return root, canary


def read(root: Path, patterns: list[str], key_paths: tuple[str, ...] = (), key_dirs: tuple[str, ...] = ()) -> dict[str, object]:
    reply = run_local("nginx-files.sh.j2", root=str(root), patterns=patterns, key_paths=list(key_paths),
                      key_dirs=list(key_dirs))
    assert reply.ok, reply.stderr
    assert reply.has("done")
    return {
        "files": {f.arg: f.body for f in reply.all("nginx-file")},
        "refused": {f.arg: f.text for f in reply.all("nginx-refused")},
        "matches": [(f.arg, f.text) for f in reply.all("nginx-match")],
        "stderr": reply.stderr,
    }


def test_globs_match_like_glob3_and_files_come_back_byte_exact(tmp_path: Path) -> None:
    root, _ = sandbox(tmp_path)
    sites = root / "etc/nginx/sites-enabled"
    (sites / "b.conf").write_bytes(b"server { listen 80; }\n# caf\xe9\r\n")
    (sites / "a.conf").write_bytes(b"no newline at the end")
    (sites / ".hidden").write_bytes(b"dotfiles are not matched\n")
    got = read(root, ["/etc/nginx/sites-enabled/*", "/etc/nginx/missing.conf"])
    assert got["matches"] == [("/etc/nginx/sites-enabled/*", "/etc/nginx/sites-enabled/a.conf"),
                              ("/etc/nginx/sites-enabled/*", "/etc/nginx/sites-enabled/b.conf")]
    assert got["files"] == {"/etc/nginx/sites-enabled/a.conf": b"no newline at the end",
                            "/etc/nginx/sites-enabled/b.conf": b"server { listen 80; }\n# caf\xe9\r\n"}


def test_key_locations_symlinks_to_keys_and_non_files_are_refused_unread(tmp_path: Path) -> None:
    root, _ = sandbox(tmp_path)
    snippets = root / "etc/nginx/snippets"
    (snippets / "tls.conf").symlink_to(root / "etc/ssl/private/snakeoil.key")
    (snippets / "le.conf").symlink_to(root / "etc/letsencrypt/live/a/privkey.pem")
    (snippets / "named.conf").symlink_to(root / "srv/keys/site.key")
    (snippets / "pem.conf").write_bytes(b"# pasted by mistake\n" + KEY)
    os.mkfifo(snippets / "fifo.conf")  # reading it would hang the script
    (snippets / "dir.conf").mkdir()
    got = read(root, ["/etc/nginx/snippets/*.conf", "/etc/ssl/private/snakeoil.key"],
               key_paths=("/srv/keys/site.key",))
    assert got["files"] == {}
    refused = got["refused"]
    assert isinstance(refused, dict)
    assert set(refused) == {f"/etc/nginx/snippets/{n}.conf" for n in ("tls", "le", "named", "pem", "fifo", "dir")} \
        | {"/etc/ssl/private/snakeoil.key"}
    assert "private key" in refused["/etc/nginx/snippets/tls.conf"]
    assert "private key" in refused["/etc/nginx/snippets/pem.conf"]
    assert "regular file" in refused["/etc/nginx/snippets/fifo.conf"]


def test_key_directories_from_variables_are_refused(tmp_path: Path) -> None:
    root, _ = sandbox(tmp_path)
    (root / "srv/keys/other.conf").write_text("server {}\n")
    got = read(root, ["/srv/keys/*.conf"], key_dirs=("/srv/keys",))
    assert got["files"] == {} and "/srv/keys/other.conf" in got["refused"]  # type: ignore[operator]


HOSTILE_NAMES = ["it's.conf", 'say "hi".conf', "$(touch PWNED).conf", "`touch PWNED`.conf", "-delete",
                 "--exec=rm.conf", "sp ace.conf", "new\nline.conf", "ünï©ødé.conf", "a;b|c&d.conf",
                 f"@{NONCE} nginx-file x.conf", "# configuration file x:", "*.conf", "[x].conf"]


def test_hostile_file_names_are_data(tmp_path: Path) -> None:
    root, canary = sandbox(tmp_path)
    sites = root / "etc/nginx/sites-enabled"
    for index, name in enumerate(HOSTILE_NAMES):
        (sites / name).write_bytes(f"# file {index}\n".encode())
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        got = read(root, ["/etc/nginx/sites-enabled/*", f"/etc/nginx/sites-enabled/{HOSTILE_NAMES[2]}"])
    finally:
        os.chdir(cwd)
    files = got["files"]
    assert isinstance(files, dict)
    assert set(files) == {f"/etc/nginx/sites-enabled/{n}" for n in HOSTILE_NAMES}
    for index, name in enumerate(HOSTILE_NAMES):
        assert files[f"/etc/nginx/sites-enabled/{name}"] == f"# file {index}\n".encode()
    assert not list(tmp_path.rglob("PWNED")), "a file name ran as a command"
    assert (canary / "keep").read_text() == "untouched\n"
    assert sorted(p.name for p in sites.iterdir()) == sorted(HOSTILE_NAMES)


names = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1,
                max_size=30).filter(lambda n: n not in (".", "..") and not n.startswith("."))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names, content=st.binary(max_size=2000))
def test_any_name_and_content_is_read_byte_exactly_and_nothing_else_changes(
    tmp_path: Path, name: str, content: bytes
) -> None:
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    root, canary = sandbox(base)
    target = root / "etc/nginx/sites-enabled" / name
    try:
        target.write_bytes(content)
    except OSError:
        return  # a name this file system refuses
    before = snapshot(base)
    got = read(root, ["/etc/nginx/sites-enabled/*"])
    expected = {} if b"PRIVATE KEY" in content else {f"/etc/nginx/sites-enabled/{name}": content}
    assert got["files"] == expected
    assert snapshot(base) == before


def snapshot(base: Path) -> dict[str, tuple[int, int, bytes]]:
    found = {}
    for path in sorted(base.rglob("*")):
        info = path.lstat()
        body = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
        found[str(path)] = (info.st_mode, info.st_size, body)
    return found


# --------------------------------------------------------------------------- the include tree


def test_only_include_directives_add_files_never_comments() -> None:
    main = ("# configuration file /etc/ssl/private/snakeoil.key:\n"
            "events {}\nhttp {\n  include sites/*.conf; # include /etc/shadow;\n"
            "  server { listen 443 ssl; ssl_certificate_key /srv/keys/site.key;"
            " ssl_certificate_key keys/$ssl_server_name.key; }\n}\n")
    found = includes.scan({"/etc/nginx/nginx.conf": main}, "/etc/nginx/nginx.conf", "/etc/nginx", {})
    assert found.patterns == ("/etc/nginx/sites/*.conf",)
    assert found.key_paths == ("/srv/keys/site.key",)
    assert found.key_dirs == ("/etc/nginx/keys",)
    assert includes.is_key_file("/etc/nginx/keys/a.key", found)
    assert includes.is_key_file("/etc/letsencrypt/live/x/privkey.pem", found)
    assert not includes.is_key_file("/etc/nginx/sites/a.conf", found)


def test_relative_includes_resolve_against_the_main_files_directory() -> None:
    files = {"/opt/nginx/conf/nginx.conf": "http { include vhosts/*.conf; }\n",
             "/opt/nginx/conf/vhosts/a.conf": "include ../extra.conf;\n"}
    expanded = {"/opt/nginx/conf/vhosts/*.conf": ("/opt/nginx/conf/vhosts/a.conf",)}
    found = includes.scan(files, "/opt/nginx/conf/nginx.conf", "/opt/nginx/conf", expanded)
    assert found.patterns == ("/opt/extra.conf",) or found.patterns == ("/opt/nginx/extra.conf",)


# --------------------------------------------------------------------------- host text on a terminal


@pytest.mark.parametrize("raw, shown", [
    ("# \x1b[2K\x1b[1Ahidden\n", "# \\x1b[2K\\x1b[1Ahidden\n"),
    ("ok\rfake line", "ok\\rfake line"),
    ("bell\x07 del\x7f c1\x9b", "bell\\x07 del\\x7f c1\\x9b"),
    ("rtl \u202eevil", "rtl \\u202eevil"),
    ("tabs\tand\nnewlines stay, ünïcode too", "tabs\tand\nnewlines stay, ünïcode too"),
])
def test_control_characters_from_hosts_are_shown_not_obeyed(raw: str, shown: str) -> None:
    assert for_terminal(raw) == shown
