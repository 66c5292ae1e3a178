"""The real apply, commit and rollback scripts, run with `sh -s` against a sandbox root full of hostile
file names and contents: every byte lands where it should, and nothing outside the sandbox moves."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certfab.protocol import Reply
from certfab.remote_scripts import run_local
from certfab.transaction import (
    ABSENT,
    EXIT_CHANGED,
    EXIT_UNSAFE_DIR,
    FileWrite,
    apply_context,
    commit_context,
    expect_as_read,
    rollback_context,
    text_sha256,
)

RUN = "certfab-20260101T000000Z-0123abcd"
SITES = "/etc/nginx/sites-available"

# Names that break naive quoting, look like options or frames, or run commands when expanded.
HOSTILE_NAMES = [
    "it's", 'say "hi"', "two  spaces", "new\nline", "-rf", "--help", "$(touch PWNED)", "`touch PWNED`",
    "${IFS}x", "a;touch PWNED", "tab\tname", "ünïcødé-ñ", "@0123456789abcdef applied", "*", "?",
    "trailing\n", "back\\slash", "'; touch PWNED; '", "x&&touch PWNED", "-", "..x",
]
NAME = st.one_of(
    st.sampled_from(HOSTILE_NAMES),
    st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=40)
    .filter(lambda n: n not in (".", "..") and not n.startswith(".certfab-")),
)
CONTENT = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda b: b.decode("utf-8", errors="surrogateescape")),
    st.sampled_from(["", "\n", "CERTFAB_DATA\n", "'\"$(touch PWNED)`x`\n", "no newline at end"]),
)
PROPERTY = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def raw(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")


def make_world(base: Path) -> tuple[Path, Path]:
    """A sandbox root holding the host lock of RUN, and an empty canary directory beside it."""
    root = base / "root"
    (root / "var/lib/certfab").mkdir(parents=True)
    (root / "var/lib/certfab/lock.owner").write_text(RUN + "\n")
    (root / SITES.lstrip("/")).mkdir(parents=True)
    canary = base / "canary"
    canary.mkdir()
    return root, canary


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A sandbox root, and a canary directory outside it as the scripts' working directory."""
    root, canary = make_world(tmp_path)
    monkeypatch.chdir(canary)
    return root, canary


def tree(path: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Every entry under path: its mode and content (files), target (symlinks) or None (dirs)."""
    result: dict[str, tuple[int, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            st_ = full.lstat()
            if stat.S_ISLNK(st_.st_mode):
                result[str(full)] = (st_.st_mode, os.readlink(full))
            elif stat.S_ISDIR(st_.st_mode):
                result[str(full)] = (st_.st_mode, None)
            else:
                result[str(full)] = (st_.st_mode, full.read_bytes())
    return result


def host_tree(root: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """The sandbox's tree without certfab's state directory and its apply lock (the journal stays in)."""
    state = root / "var/lib/certfab"
    return {p: v for p, v in tree(root).items() if p not in (str(state), str(state / "apply.lock"))}


def apply(root: Path, writes: list[FileWrite], **options: object) -> Reply:
    return run_local("apply.sh.j2", root=str(root),
                     **apply_context(RUN, writes, test_and_reload=False, **options))  # type: ignore[arg-type]


def commit(root: Path) -> Reply:
    return run_local("commit.sh.j2", root=str(root), **commit_context(RUN))


def rollback(root: Path) -> Reply:
    return run_local("rollback.sh.j2", root=str(root), **rollback_context(reload=False))


def host(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def assert_no_leftovers(root: Path) -> None:
    """No journal, no staging area, no hidden temp or backup file anywhere in the sandbox."""
    assert not (root / "var/lib/certfab/journal").exists()
    assert not (root / "var/lib/certfab/journal.staging").exists()
    hidden = [p for p in tree(root) if Path(p).name.startswith(".certfab-")]
    assert hidden == []


@PROPERTY
@given(files=st.dictionaries(NAME, st.tuples(st.one_of(st.none(), CONTENT), CONTENT), min_size=1, max_size=5))
def test_hostile_names_and_contents_are_written_and_restored_byte_for_byte(
    files: dict[str, tuple[str | None, str]]
) -> None:
    """Every target holds exactly its new bytes after apply, exactly its old bytes (or nothing) after
    rollback, exactly its new bytes after a commit; nothing else in or outside the sandbox changes."""
    with tempfile.TemporaryDirectory() as base:
        root, canary = make_world(Path(base))
        cwd = os.getcwd()
        os.chdir(canary)
        try:
            check_round_trip(root, canary, files)
        finally:
            os.chdir(cwd)


def check_round_trip(root: Path, canary: Path, files: dict[str, tuple[str | None, str]]) -> None:
    old = {f"{SITES}/{name}": before for name, (before, _after) in files.items()}
    new = {f"{SITES}/{name}": after for name, (_before, after) in files.items()}
    for path, text in old.items():
        if text is not None:
            host(root, path).write_bytes(raw(text))
    untouched = host_tree(root)
    current = {p: t for p, t in old.items() if t is not None}
    writes = expect_as_read([FileWrite(p, t) for p, t in new.items()], current)

    reply = apply(root, writes)
    assert reply.ok and reply.has("applied"), reply
    for path, text in new.items():
        assert host(root, path).read_bytes() == raw(text)
        assert stat.S_IMODE(host(root, path).stat().st_mode) == 0o644
    reply = rollback(root)
    assert reply.ok and reply.has("rolled-back"), reply
    assert host_tree(root) == untouched

    assert apply(root, writes).ok
    reply = commit(root)
    assert reply.ok and reply.has("committed"), reply
    for path, text in new.items():
        assert host(root, path).read_bytes() == raw(text)
    assert_no_leftovers(root)
    assert tree(canary) == {}, "a command from a file name ran"
    assert not Path("/tmp/PWNED").exists()


def test_a_megabyte_file_goes_through_the_script_on_stdin(world: tuple[Path, Path]) -> None:
    root, _ = world
    content = ("server { # " + "x" * 100 + " }\n") * 9000
    assert len(content) > 1_000_000
    path = f"{SITES}/big site's file"
    reply = apply(root, [FileWrite(path, content, expected_sha256=ABSENT)])
    assert reply.ok, reply
    assert commit(root).ok
    assert host(root, path).read_text() == content


def test_a_file_changed_since_its_facts_were_read_stops_the_run_before_anything_is_written(
    world: tuple[Path, Path]
) -> None:
    root, _ = world
    first, second = f"{SITES}/a", f"{SITES}/b it's"
    host(root, first).write_text("a as read\n")
    host(root, second).write_text("b edited by someone else\n")
    untouched = host_tree(root)
    writes = [FileWrite(first, "a new\n", expected_sha256=text_sha256("a as read\n")),
              FileWrite(second, "b new\n", expected_sha256=text_sha256("b as read\n"))]
    reply = apply(root, writes)
    assert reply.exited == EXIT_CHANGED
    changed = reply.get("changed")
    assert changed is not None and changed.arg == second
    assert reply.last_error_line() == f"{second} changed since its facts were read; nothing was written"
    assert host_tree(root) == untouched


def test_a_file_that_appeared_since_its_facts_were_read_is_left_alone(world: tuple[Path, Path]) -> None:
    root, _ = world
    path = f"{SITES}/new"
    host(root, path).write_text("appeared\n")
    untouched = host_tree(root)
    reply = apply(root, [FileWrite(path, "certfab's\n", expected_sha256=ABSENT)])
    assert reply.exited == EXIT_CHANGED
    assert host_tree(root) == untouched


def test_a_target_directory_another_user_can_write_is_refused(world: tuple[Path, Path]) -> None:
    root, _ = world
    shared = host(root, "/srv/shared")
    shared.mkdir(parents=True)
    shared.chmod(0o1777)
    # A planted symlink where the staged file would go: root must not write through it.
    victim = root / "victim"
    victim.write_text("precious\n")
    (shared / ".certfab-new.site.conf").symlink_to(victim)
    untouched = host_tree(root)
    reply = apply(root, [FileWrite("/srv/shared/site.conf", "x\n", expected_sha256=ABSENT)])
    assert reply.exited == EXIT_UNSAFE_DIR
    assert reply.last_error_line() == "/srv/shared is writable by a user other than root; nothing was written"
    assert host_tree(root) == untouched
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777


def test_created_directories_are_removed_again_on_rollback(world: tuple[Path, Path]) -> None:
    root, _ = world
    path = "/etc/nginx/certfab/deep/er/file.conf"
    untouched = host_tree(root)
    assert apply(root, [FileWrite(path, "x")]).ok
    assert stat.S_IMODE(host(root, "/etc/nginx/certfab").stat().st_mode) == 0o755
    assert rollback(root).ok
    assert host_tree(root) == untouched


def test_mode_none_keeps_the_mode_of_the_file_it_replaces(world: tuple[Path, Path]) -> None:
    root, _ = world
    path = f"{SITES}/keep mode"
    host(root, path).write_text("old")
    host(root, path).chmod(0o640)
    assert apply(root, [FileWrite(path, "new", None, text_sha256("old"))]).ok
    assert commit(root).ok
    assert stat.S_IMODE(host(root, path).stat().st_mode) == 0o640


def test_an_extended_journal_rolls_back_to_the_state_before_the_run(world: tuple[Path, Path]) -> None:
    """A second transaction of the run joins the first's journal: one rollback undoes both."""
    root, _ = world
    site, new = f"{SITES}/site", "/etc/nginx/certfab/acme.conf"
    host(root, site).write_text("plain\n")
    untouched = host_tree(root)
    first = [FileWrite(site, "plumbing\n", expected_sha256=text_sha256("plain\n")),
             FileWrite(new, "acme\n", expected_sha256=ABSENT)]
    assert apply(root, first).ok
    second = [FileWrite(site, "https\n", expected_sha256=text_sha256("plumbing\n")),
              FileWrite(new, "acme 2\n", expected_sha256=text_sha256("acme\n"))]
    reply = apply(root, second, extend=True, tx=1, journaled={site, new})
    assert reply.ok, reply
    assert host(root, site).read_text() == "https\n"
    assert rollback(root).ok
    assert host_tree(root) == untouched


def test_a_removal_is_undone_by_rollback_and_final_after_commit(world: tuple[Path, Path]) -> None:
    root, _ = world
    gone, kept = f"{SITES}/old site", f"{SITES}/kept"
    host(root, gone).write_bytes(b"server { listen 80; }\n")
    host(root, kept).write_bytes(b"kept\n")
    before = host_tree(root)
    removal = FileWrite(gone, "", None, remove=True)
    writes = expect_as_read([removal, FileWrite(kept, "new\n", None)],
                            {gone: "server { listen 80; }\n", kept: "kept\n"})
    assert apply(root, writes).ok
    assert not host(root, gone).exists() and host(root, kept).read_bytes() == b"new\n"
    assert rollback(root).ok
    assert host_tree(root) == before
    assert_no_leftovers(root)
    assert apply(root, writes).ok and commit(root).ok
    assert not host(root, gone).exists()
    assert_no_leftovers(root)


def test_a_removal_of_a_file_changed_since_it_was_read_writes_nothing(world: tuple[Path, Path]) -> None:
    root, _ = world
    path = f"{SITES}/site"
    host(root, path).write_bytes(b"edited\n")
    reply = apply(root, [FileWrite(path, "", None, text_sha256("as read\n"), remove=True)])
    assert reply.exited == EXIT_CHANGED
    assert host(root, path).read_bytes() == b"edited\n"


def test_uninstall_cleanup_removes_the_state_and_certfabs_empty_directories(world: tuple[Path, Path]) -> None:
    from certfab.transaction import lock_context

    root, _ = world
    for directory in ("etc/certfab", "etc/nginx/certfab", "var/lib/certfab/origin"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "etc/certfab/acme-ca.pem").write_text("ca\n")
    (root / "etc/nginx/sites-enabled").mkdir(parents=True)
    reply = run_local("uninstall-cleanup.sh.j2", root=str(root), **lock_context(RUN),
                      files=["/etc/certfab/acme-ca.pem"], empty_dirs=["/etc/nginx/certfab", "/etc/certfab"])
    assert reply.ok and reply.has("done"), reply.stderr
    for gone in ("etc/certfab", "etc/nginx/certfab", "var/lib/certfab"):
        assert not (root / gone).exists(), gone
    assert (root / "etc/nginx/sites-enabled").is_dir()
