"""nginx configuration analysis and minimal edits, on real-world-looking config trees."""

from __future__ import annotations

import difflib
import os
import pathlib
import shutil
import subprocess
from collections.abc import Callable, Mapping

import crossplane
import crossplane.errors
import crossplane.lexer
import pytest
from certfactory import write_self_signed
from hypothesis import given, settings
from hypothesis import strategies as st

from certfab.errors import CertfabError
from certfab.nginx.lexer import lex
from certfab.nginxconf import (
    NginxConfError,
    NginxTree,
    ServerBlock,
    add_include,
    block_for_host,
    check_sites,
    convert_to_https,
    match_host,
    parse_tree,
    redirect_marker,
    set_redirect_names,
)

TREES = pathlib.Path(__file__).parent / "nginx_trees"
MAIN = "/etc/nginx/nginx.conf"
ACME = "/etc/nginx/certfab/acme-challenge.conf"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def load(name: str) -> dict[str, str]:
    """A fixture tree as `nginx -T` would report it: absolute path -> exact text."""
    root = TREES / name
    return {
        f"/etc/nginx/{p.relative_to(root).as_posix()}": p.read_bytes().decode()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def site_include(site: str) -> str:
    return f"/etc/nginx/certfab/site-{site}.conf"


def diff(old: str, new: str) -> tuple[list[str], list[str]]:
    """(removed lines, added lines) between two texts, line endings kept."""
    removed: list[str] = []
    added: list[str] = []
    matcher = difflib.SequenceMatcher(a=old.splitlines(True), b=new.splitlines(True), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            removed += old.splitlines(True)[i1:i2]
            added += new.splitlines(True)[j1:j2]
    return removed, added


def block(tree: NginxTree, name: str, port: int = 80) -> ServerBlock:
    found = block_for_host(tree, name, port)
    assert found is not None, name
    return found


def parses_with_crossplane(text: str, tmp_path: pathlib.Path) -> bool:
    path = tmp_path / "check.conf"
    path.write_text(text, newline="")
    payload = crossplane.parse(str(path), single=True, comments=True, check_ctx=False, check_args=False)
    return bool(payload["status"] == "ok")


def edit(
    files: Mapping[str, str],
    host: str,
    change: Callable[[str, ServerBlock, NginxTree], str],
    port: int = 80,
) -> dict[str, str]:
    """Apply one edit to the block serving `host`, re-reading the tree first as callers must."""
    tree = parse_tree(files, MAIN)
    target = block(tree, host, port)
    out = dict(files)
    out[target.file] = change(files[target.file], target, tree)
    return out


def convert(site: str, http2: bool = False) -> Callable[[str, ServerBlock, NginxTree], str]:
    def change(text: str, blk: ServerBlock, tree: NginxTree) -> str:
        return convert_to_https(
            text,
            blk,
            https_include=site_include(site),
            acme_include=ACME,
            http2_in_listen=http2,
            site=site,
            tree=tree,
        )

    return change


def acme(text: str, blk: ServerBlock, tree: NginxTree) -> str:
    return add_include(text, blk, ACME)


# --------------------------------------------------------------------------- parsing


class TestParseTree:
    def test_finds_http_server_blocks_in_include_order(self) -> None:
        tree = parse_tree(load("debian"), MAIN)
        assert [(b.file.rsplit("/", 1)[1], b.line) for b in tree.server_blocks] == [
            ("status.conf", 2),
            ("api.example.org", 7),
            ("default", 21),
            ("example.com", 4),
            ("example.com", 30),
        ]

    def test_upstream_server_lines_are_not_server_blocks(self) -> None:
        tree = parse_tree(load("debian"), MAIN)
        assert all(b.server_names != () or b.listens for b in tree.server_blocks)
        assert not any("127.0.0.1:9000" in lst.raw for b in tree.server_blocks for lst in b.listens)

    def test_server_name_over_several_lines_with_a_comment(self) -> None:
        tree = parse_tree(load("debian"), MAIN)
        assert block(tree, "example.com").server_names == ("example.com", "www.example.com")

    def test_listens_are_read_with_their_flags(self) -> None:
        tree = parse_tree(load("debian"), MAIN)
        default = block(tree, "unknown.invalid")
        assert default.server_names == ("_",)
        v4, v6 = default.listens
        assert (v4.address, v4.port, v4.default_server, v4.ipv6, v4.line) == (None, 80, True, False, 22)
        assert (v6.address, v6.port, v6.default_server, v6.ipv6, v6.raw) == (
            "[::]",
            80,
            True,
            True,
            "[::]:80 default_server",
        )
        api = block(tree, "api.example.org")
        assert api.listens[1].socket_options == ("ipv6only=on",)
        status = next(b for b in tree.server_blocks if b.file.endswith("status.conf"))
        assert [(lst.address, lst.port) for lst in status.listens] == [("127.0.0.1", 8080)]
        assert status.serves_http and not status.serves_https

    @pytest.mark.parametrize(
        ("listen", "address", "port", "ssl", "http2", "default", "ipv6"),
        [
            ("80", None, 80, False, False, False, False),
            ("*:8000", None, 8000, False, False, False, False),
            ("1.2.3.4:80", "1.2.3.4", 80, False, False, False, False),
            ("1.2.3.4", "1.2.3.4", 80, False, False, False, False),
            ("[::]:80 ipv6only=on default_server", "[::]", 80, False, False, True, True),
            ("[::1]", "[::1]", 80, False, False, False, True),
            ("443 ssl http2 default", None, 443, True, True, True, False),
            ("localhost:8443 ssl", "localhost", 8443, True, False, False, False),
            ("unix:/run/app.sock", "unix:/run/app.sock", 0, False, False, False, False),
        ],
    )
    def test_listen_forms(
        self, listen: str, address: str | None, port: int, ssl: bool, http2: bool, default: bool, ipv6: bool
    ) -> None:
        files = {MAIN: f"http {{ server {{ listen {listen}; }} }}\n"}
        (lst,) = parse_tree(files, MAIN).server_blocks[0].listens
        assert (lst.address, lst.port, lst.ssl, lst.http2, lst.default_server, lst.ipv6) == (
            address,
            port,
            ssl,
            http2,
            default,
            ipv6,
        )

    def test_a_block_without_listen_listens_on_80(self) -> None:
        tree = parse_tree(load("legacy"), MAIN)
        (lst,) = block(tree, "old.example.net").listens
        assert lst.implicit and lst.port == 80 and lst.address is None

    def test_listen_and_tls_directives_from_included_files_count(self) -> None:
        tree = parse_tree(load("legacy"), MAIN)
        snip = block(tree, "snip.example.net")
        assert [(lst.port, lst.file) for lst in snip.listens] == [(80, "/etc/nginx/snippets/listen80.conf")]
        shop = block(tree, "shop.example.net")
        assert [d.name for d in shop.tls_directives] == ["ssl_certificate", "ssl_certificate_key"]
        assert shop.has_include("/etc/nginx/snippets/snakeoil.conf")
        assert shop.has_include("snippets/snakeoil.conf")
        assert not shop.has_include(ACME)

    def test_relative_includes_resolve_against_the_prefix_and_record_contexts(self) -> None:
        tree = parse_tree(load("debian"), MAIN)
        assert tree.contexts["/etc/nginx/proxy_params"] == (("http", "server", "location"),)
        assert tree.contexts["/etc/nginx/sites-enabled/default"] == (("http",),)
        assert tree.unmatched_includes == ()

    def test_glob_star_does_not_cross_directories_or_match_dotfiles(self) -> None:
        files = {
            MAIN: "http { include sites/*; }\n",
            "/etc/nginx/sites/a": "server { server_name a; }\n",
            "/etc/nginx/sites/.hidden": "server { server_name hidden; }\n",
            "/etc/nginx/sites/sub/b": "server { server_name b; }\n",
        }
        assert [b.server_names for b in parse_tree(files, MAIN).server_blocks] == [("a",)]

    def test_stream_servers_are_ignored(self) -> None:
        files = {
            MAIN: "stream { server { listen 53 udp; proxy_pass dns; } }\nhttp { server { listen 80; } }\n"
        }
        tree = parse_tree(files, MAIN)
        assert [b.listens[0].port for b in tree.server_blocks] == [80]

    def test_unmatched_exact_include_is_reported(self) -> None:
        tree = parse_tree({MAIN: "http { include /etc/nginx/missing.conf; }\n"}, MAIN)
        assert tree.unmatched_includes == ((MAIN, 1, "/etc/nginx/missing.conf"),)

    def test_parse_error_names_file_and_line(self) -> None:
        files = load("debian")
        files["/etc/nginx/sites-enabled/example.com"] += "server {\n\tlisten 80;\n"
        with pytest.raises(
            NginxConfError, match=r"/etc/nginx/sites-enabled/example.com:\d+: .*expecting"
        ) as exc:
            parse_tree(files, MAIN)
        assert isinstance(exc.value, CertfabError)

    def test_unexpected_brace_names_file_and_line(self) -> None:
        files = {MAIN: "http {\n  server {\n    listen 80;\n  }\n}\n}\n"}
        with pytest.raises(NginxConfError, match=r"^/etc/nginx/nginx.conf:6: unexpected"):
            parse_tree(files, MAIN)

    def test_missing_main_file(self) -> None:
        with pytest.raises(NginxConfError, match="main nginx configuration"):
            parse_tree({}, MAIN)

    def test_certfab_redirect_marker_is_recognised(self) -> None:
        begin, end = redirect_marker("shop")
        files = {MAIN: f"http {{\n{begin}\nserver {{ listen 80; }}\n{end}\nserver {{ listen 81; }}\n}}\n"}
        first, second = parse_tree(files, MAIN).server_blocks
        assert first.is_certfab_redirect and first.redirect_site == "shop"
        assert not second.is_certfab_redirect


# --------------------------------------------------------------------------- host matching


NAMES_CONF = """http {
    server { listen 80; server_name _; }
    server { listen 80; server_name ~^(?<sub>[a-z]+)\\.example\\.org$; }
    server { listen 80; server_name *.example.org; }
    server { listen 80; server_name *.deep.example.org; }
    server { listen 80; server_name mail.*; }
    server { listen 80; server_name www.example.org; }
    server { listen 80; server_name .example.com; }
    server { listen 80 default_server; server_name catchall; }
    server { listen 80; server_name www.example.org; }
    server { listen 8080; server_name www.example.org; }
    server { listen 443 ssl; server_name secure.example.org; }
    server { listen 10.0.0.1:80; server_name only.example.net; }
}
"""


class TestHostMatching:
    @pytest.mark.parametrize(
        ("host", "line", "how"),
        [
            ("www.example.org", 7, "exact"),
            ("WWW.Example.ORG.", 7, "exact"),
            ("a.example.org", 4, "wildcard_head"),
            ("x.deep.example.org", 5, "wildcard_head"),
            ("example.com", 8, "wildcard_head"),
            ("shop.example.com", 8, "wildcard_head"),
            ("mail.example.org", 4, "wildcard_head"),
            ("mail.example.net", 6, "wildcard_tail"),
            ("nothing.invalid", 9, "default_server"),
            ("only.example.net", 13, "exact"),
        ],
    )
    def test_server_name_precedence(self, host: str, line: int, how: str) -> None:
        match = match_host(parse_tree({MAIN: NAMES_CONF}, MAIN), host, 80)
        assert match is not None
        assert (match.block.line, match.how) == (line, how)

    def test_regex_beats_default_but_loses_to_wildcards(self) -> None:
        conf = NAMES_CONF.replace("*.example.org;", "*.other.org;")
        match = match_host(parse_tree({MAIN: conf}, MAIN), "shop.example.org")
        assert match is not None and (match.block.line, match.how) == (3, "regex")

    def test_first_block_on_the_port_when_no_default_server(self) -> None:
        conf = "http {\n server { listen 8080; server_name a; }\n server { listen 8080; server_name b; }\n}\n"
        match = match_host(parse_tree({MAIN: conf}, MAIN), "zzz", 8080)
        assert match is not None and (match.block.line, match.how) == (2, "first")

    def test_port_and_address_are_respected(self) -> None:
        tree = parse_tree({MAIN: NAMES_CONF}, MAIN)
        assert block(tree, "www.example.org", 8080).line == 11
        assert block(tree, "secure.example.org", 443).line == 12
        assert block_for_host(tree, "x", 9999) is None
        by_addr = match_host(tree, "www.example.org", 80, address="10.0.0.1")
        assert by_addr is not None and (by_addr.block.line, by_addr.how) == (13, "first")

    def test_real_tree(self) -> None:
        tree = parse_tree(load("debian"), MAIN)
        assert block(tree, "www.example.com").line == 4
        assert block(tree, "blog.example.com").line == 30
        assert block(tree, "api.example.org").file.endswith("api.example.org")
        assert block(tree, "stranger.example").file.endswith("default")
        assert block(tree, "localhost", 8080).file.endswith("status.conf")


class TestCheckSites:
    def test_clean_sites(self) -> None:
        tree = parse_tree(load("debian"), MAIN)
        sites = {"example": ("example.com", "www.example.com"), "api": ("api.example.org",)}
        assert check_sites(tree, sites) == []

    def test_two_sites_in_one_block_name_both(self) -> None:
        tree = parse_tree(load("debian"), MAIN)
        problems = check_sites(tree, {"apex": ("example.com",), "www": ("www.example.com",)})
        shared = [p for p in problems if p.kind == "shared-block"]
        assert {p.site for p in shared} == {"apex", "www"}
        assert all(p.severity == "error" and "apex, www" in p.message for p in shared)
        assert all("sites-enabled/example.com:4" in p.message for p in shared)

    def test_default_only_domain_is_a_warning(self) -> None:
        tree = parse_tree(load("debian"), MAIN)
        (problem,) = check_sites(tree, {"shop": ("shop.example.com",)})
        assert (problem.kind, problem.severity, problem.domain) == (
            "default-only",
            "warning",
            "shop.example.com",
        )
        assert "sites-enabled/default:21" in problem.message

    def test_missing_when_nothing_listens_on_80(self) -> None:
        tree = parse_tree({MAIN: "http { server { listen 443 ssl; server_name a.example; } }\n"}, MAIN)
        (problem,) = check_sites(tree, {"a": ("a.example",)})
        assert (problem.kind, problem.severity) == ("missing", "error")

    def test_split_site_and_duplicate_names(self) -> None:
        tree = parse_tree({MAIN: NAMES_CONF}, MAIN)
        problems = check_sites(tree, {"org": ("www.example.org", "mail.example.net")})
        kinds = sorted(p.kind for p in problems)
        assert kinds == ["duplicate-name", "split-site"]

    def test_after_conversion_port_80_is_the_redirect_block(self) -> None:
        files = edit(load("debian"), "example.com", convert("example"))
        tree = parse_tree(files, MAIN)
        assert check_sites(tree, {"example": ("example.com", "www.example.com")}) == []
        assert block(tree, "www.example.com").is_certfab_redirect


# --------------------------------------------------------------------------- add_include


class TestAddInclude:
    def test_inserts_one_line_after_the_brace_with_tabs(self, tmp_path: pathlib.Path) -> None:
        files = load("debian")
        path = "/etc/nginx/sites-enabled/example.com"
        new = edit(files, "www.example.com", acme)[path]
        removed, added = diff(files[path], new)
        assert removed == []
        assert added == [f"\tinclude {ACME};  # managed by certfab\n"]
        assert new.splitlines()[4] == added[0].rstrip("\n")
        assert parses_with_crossplane(new, tmp_path)

    def test_spaces_indentation_and_custom_comment(self) -> None:
        files = load("debian")
        tree = parse_tree(files, MAIN)
        api = block(tree, "api.example.org")
        new = add_include(files[api.file], api, "certfab/acme-challenge.conf", comment="ACME challenge")
        assert diff(files[api.file], new) == (
            [],
            ["    include certfab/acme-challenge.conf;  # ACME challenge\n"],
        )

    def test_idempotent_and_recognised_after_reparse(self) -> None:
        once = edit(load("debian"), "blog.example.com", acme)
        twice = edit(once, "blog.example.com", acme)
        assert once == twice
        tree = parse_tree(once, MAIN)
        assert block(tree, "blog.example.com").has_include(ACME)
        assert not block(tree, "example.com").has_include(ACME)

    def test_relative_and_absolute_spellings_are_the_same_include(self) -> None:
        files = edit(load("debian"), "blog.example.com", acme)
        tree = parse_tree(files, MAIN)
        blog = block(tree, "blog.example.com")
        assert add_include(files[blog.file], blog, "certfab/acme-challenge.conf") == files[blog.file]

    def test_other_blocks_and_files_stay_byte_identical(self) -> None:
        files = load("debian")
        path = "/etc/nginx/sites-enabled/example.com"
        new = edit(files, "blog.example.com", acme)
        assert {p for p in files if files[p] != new[p]} == {path}
        head = files[path].split("# second site in the same file")[0]
        assert new[path].startswith(head)

    def test_catch_all_default_server(self) -> None:
        files = load("debian")
        path = "/etc/nginx/sites-enabled/default"
        new = edit(files, "anything.invalid", acme)[path]
        assert diff(files[path], new) == ([], [f"\tinclude {ACME};  # managed by certfab\n"])
        assert new.index(ACME) < new.index("listen 80 default_server")

    def test_one_line_block_is_split_minimally(self, tmp_path: pathlib.Path) -> None:
        files = load("legacy")
        path = "/etc/nginx/sites/30-oneliner.conf"
        new = edit(files, "tiny.example.net", acme)[path]
        assert new == (
            "server {\n"
            f"    include {ACME};  # managed by certfab\n"
            "    listen 80; server_name tiny.example.net; return 204; }"
        )
        assert parses_with_crossplane(new, tmp_path)
        assert edit({**files, path: new}, "tiny.example.net", acme)[path] == new

    def test_comment_after_the_brace_stays_on_its_line(self) -> None:
        text = "http {\n  server { # the site\n    listen 80;\n  }\n}\n"
        files = {MAIN: text}
        new = edit(files, "x", acme)[MAIN]
        assert (
            new
            == f"http {{\n  server {{ # the site\n    include {ACME};  # managed by certfab\n    listen 80;\n  }}\n}}\n"
        )

    def test_crlf_line_endings_are_kept(self) -> None:
        files = {p: t.replace("\n", "\r\n") for p, t in load("debian").items()}
        path = "/etc/nginx/sites-enabled/example.com"
        new = edit(files, "blog.example.com", acme)[path]
        assert diff(files[path], new) == ([], [f"\tinclude {ACME};  # managed by certfab\r\n"])
        assert "\n" not in new.replace("\r\n", "")

    def test_stale_block_is_refused(self) -> None:
        files = load("debian")
        tree = parse_tree(files, MAIN)
        path = "/etc/nginx/sites-enabled/example.com"
        moved = "# a new first line\n" + files[path]
        with pytest.raises(NginxConfError, match="read the configuration again"):
            add_include(moved, block(tree, "blog.example.com"), ACME)


# --------------------------------------------------------------------------- convert_to_https


def redirect_lines(
    site: str, listens: list[str], names: str | None, outer: str = "", unit: str = "\t"
) -> list[str]:
    begin, end = redirect_marker(site)
    lines = [f"{outer}{begin}\n", f"{outer}server {{\n"]
    lines += [f"{outer}{unit}listen {lst};\n" for lst in listens]
    if names:
        lines.append(f"{outer}{unit}server_name {names};\n")
    lines += [
        f"{outer}{unit}include {ACME};\n",
        f"{outer}{unit}location / {{\n",
        f"{outer}{unit}{unit}return 301 https://$host$request_uri;\n",
        f"{outer}{unit}}}\n",
        f"{outer}}}\n",
        f"{outer}{end}\n",
    ]
    return lines


class TestConvertToHttps:
    def test_minimal_diff_on_the_tabbed_site(self, tmp_path: pathlib.Path) -> None:
        files = load("debian")
        path = "/etc/nginx/sites-enabled/example.com"
        new = edit(files, "example.com", convert("example"))[path]
        removed, added = diff(files[path], new)
        assert removed == ["\tlisten 80;\n", "\tlisten [::]:80;\n"]
        assert added == [
            f"\tinclude {site_include('example')};  # managed by certfab\n",
            "\tlisten 443 ssl;\n",
            "\tlisten [::]:443 ssl;\n",
            *redirect_lines(
                "example", ["80", "[::]:80"], "example.com\n\t\twww.example.com".replace("\n\t\t", " ")
            ),
        ]
        assert parses_with_crossplane(new, tmp_path)
        # the second site of the file and everything outside the block are untouched
        tail = files[path].split("# second site in the same file")[1]
        assert new.endswith(tail)
        assert '"braces { and ; semicolons # are fine here"' in new

    def test_idempotent(self) -> None:
        once = edit(load("debian"), "example.com", convert("example"))
        twice = edit(once, "example.com", convert("example"), port=443)
        assert once == twice
        # asking again for the block that serves port 80 finds the redirect block: also a no-op
        assert edit(once, "example.com", convert("example"), port=80) == once
        tree = parse_tree(once, MAIN)
        https = block(tree, "www.example.com", 443)
        assert https.has_include(site_include("example")) and https.serves_https and not https.serves_http
        assert [lst.raw for lst in https.listens] == ["443 ssl", "[::]:443 ssl"]
        redirect = block(tree, "www.example.com", 80)
        assert redirect.is_certfab_redirect and redirect.redirect_site == "example"
        assert redirect.has_include(ACME)
        assert redirect.server_names == ("example.com", "www.example.com")
        # the same (unchanged) block object from the first tree is also a no-op
        tree0 = parse_tree(load("debian"), MAIN)
        blk = block(tree0, "example.com")
        text = once[blk.file]
        assert convert("example")(text, blk, tree0) == text

    def test_http2_and_flags_are_kept(self) -> None:
        files = load("debian")
        path = "/etc/nginx/sites-enabled/default"
        new = edit(files, "catch.all", convert("default", http2=True))[path]
        removed, added = diff(files[path], new)
        assert removed == ["\tlisten 80 default_server;\n", "\tlisten [::]:80 default_server;\n"]
        assert added[:3] == [
            f"\tinclude {site_include('default')};  # managed by certfab\n",
            "\tlisten 443 ssl http2 default_server;\n",
            "\tlisten [::]:443 ssl http2 default_server;\n",
        ]
        assert added[3:] == redirect_lines("default", ["80 default_server", "[::]:80 default_server"], "_")

    def test_ipv6only_and_spaces(self) -> None:
        files = load("debian")
        path = "/etc/nginx/sites-enabled/api.example.org"
        new = edit(files, "api.example.org", convert("api"))[path]
        removed, added = diff(files[path], new)
        assert removed == ["    listen 80;\n", "    listen [::]:80 ipv6only=on;\n"]
        assert added == [
            f"    include {site_include('api')};  # managed by certfab\n",
            "    listen 443 ssl;\n",
            "    listen [::]:443 ssl ipv6only=on;\n",
            *redirect_lines("api", ["80", "[::]:80 ipv6only=on"], "api.example.org", unit="    "),
        ]
        # the upstream block above stays exactly as it was
        assert new.startswith(files[path].split("server {")[0])

    def test_unrelated_status_block_and_files_untouched(self) -> None:
        files = load("debian")
        new = files
        for host, site in [
            ("example.com", "example"),
            ("blog.example.com", "blog"),
            ("api.example.org", "api"),
        ]:
            new = edit(new, host, convert(site))
        changed = {p for p in files if files[p] != new[p]}
        assert changed == {"/etc/nginx/sites-enabled/example.com", "/etc/nginx/sites-enabled/api.example.org"}
        tree = parse_tree(new, MAIN)
        assert [b.is_certfab_redirect for b in tree.server_blocks].count(True) == 3
        assert block(tree, "localhost", 8080).file.endswith("status.conf")

    def test_implicit_listen_gets_an_explicit_443(self) -> None:
        files = load("legacy")
        path = "/etc/nginx/sites/40-nolisten.conf"
        new = edit(files, "old.example.net", convert("old"))[path]
        assert new == (
            "server {\n"
            "  listen 443 ssl;  # managed by certfab\n"
            f"  include {site_include('old')};  # managed by certfab\n"
            "  server_name old.example.net;\n"
            "  root /var/www/old;\n"
            "}\n" + "".join(redirect_lines("old", ["80"], "old.example.net", unit="  "))
        )
        assert edit({**files, path: new}, "old.example.net", convert("old"), port=443)[path] == new

    def test_block_that_already_serves_443_keeps_it_and_moves_port_80(self) -> None:
        files = load("legacy")
        path = "/etc/nginx/sites/10-dual.conf"
        new = edit(files, "dual.example.net", convert("dual"))[path]
        removed, added = diff(files[path], new)
        assert removed == ["    listen 80;\n", "    listen [::]:80;\n"]
        assert added == [
            f"    include {site_include('dual')};  # managed by certfab\n",
            "    # listen 80;  # moved to the certfab redirect block for dual\n",
            "    listen [::]:443 ssl;\n",
            *redirect_lines("dual", ["80", "[::]:80"], "dual.example.net", unit="    "),
        ]
        tree = parse_tree({**files, path: new}, MAIN)
        assert block(tree, "dual.example.net").is_certfab_redirect
        assert edit({**files, path: new}, "dual.example.net", convert("dual"), port=443)[path] == new

    def test_443_only_block_just_gets_the_include(self) -> None:
        files = load("legacy")
        path = "/etc/nginx/sites/60-secure.conf"
        new = edit(files, "secure.example.net", convert("secure"), port=443)[path]
        assert diff(files[path], new) == (
            [],
            [f"    include {site_include('secure')};  # managed by certfab\n"],
        )

    def test_options_another_block_owns_on_443_are_dropped(self) -> None:
        files = load("legacy")
        path = "/etc/nginx/sites/60-secure.conf"
        new = edit(files, "plain.example.net", convert("plain"))[path]
        removed, added = diff(files[path], new)
        assert removed == ["    listen 80 default_server reuseport;\n"]
        assert added[:2] == [
            f"    include {site_include('plain')};  # managed by certfab\n",
            "    listen 443 ssl;\n",
        ]
        assert "    listen 80 default_server reuseport;\n" in added
        assert "    listen 8080;\n" in new  # other ports are left alone

    def test_without_tree_flags_are_kept(self) -> None:
        files = load("legacy")
        tree = parse_tree(files, MAIN)
        plain = block(tree, "plain.example.net")
        new = convert_to_https(
            files[plain.file],
            plain,
            https_include=site_include("plain"),
            acme_include=ACME,
            http2_in_listen=False,
            site="plain",
        )
        assert "    listen 443 ssl default_server reuseport;\n" in new

    def test_one_liner_without_final_newline(self, tmp_path: pathlib.Path) -> None:
        files = load("legacy")
        path = "/etc/nginx/sites/30-oneliner.conf"
        new = edit(files, "tiny.example.net", convert("tiny"))[path]
        begin, end = redirect_marker("tiny")
        assert new.startswith(
            f"server {{\n    include {site_include('tiny')};  # managed by certfab\n"
            "    listen 443 ssl; server_name tiny.example.net; return 204; }\n"
            f"{begin}\nserver {{\n    listen 80;\n"
        )
        assert new.endswith(end) and not new.endswith("\n")
        assert parses_with_crossplane(new, tmp_path)

    def test_crlf_is_kept(self) -> None:
        files = {p: t.replace("\n", "\r\n") for p, t in load("debian").items()}
        path = "/etc/nginx/sites-enabled/example.com"
        new = edit(files, "blog.example.com", convert("blog"))[path]
        assert "\n" not in new.replace("\r\n", "")
        removed, added = diff(files[path], new)
        assert removed == ["\tlisten 80;\r\n", "\tlisten [::]:80;\r\n"]
        assert all(line.endswith("\r\n") for line in added)

    def test_existing_tls_settings_are_refused(self) -> None:
        files = load("legacy")
        with pytest.raises(NginxConfError, match=r"ssl_certificate \(/etc/nginx/snippets/snakeoil.conf:1\)"):
            edit(files, "shop.example.net", convert("shop"))
        direct = {MAIN: "http { server { listen 80; ssl_protocols TLSv1.2; } }\n"}
        with pytest.raises(NginxConfError, match="ssl_protocols"):
            edit(direct, "x", convert("x"))

    def test_port_80_listen_from_an_include_is_refused(self) -> None:
        with pytest.raises(NginxConfError, match=r"snippets/listen80.conf:1; move that listen"):
            edit(load("legacy"), "snip.example.net", convert("snip"))

    def test_neither_80_nor_443_is_refused(self) -> None:
        files = load("debian")
        with pytest.raises(NginxConfError, match="neither port 80 nor 443"):
            edit(files, "localhost", convert("status"), port=8080)

    def test_bad_site_name(self) -> None:
        with pytest.raises(NginxConfError, match="marker"):
            edit(load("debian"), "example.com", convert("bad\nname"))

    def test_redirect_is_not_added_twice(self) -> None:
        """A marker already in the file (block reverted by hand) does not produce a second redirect."""
        once = edit(load("debian"), "blog.example.com", convert("blog"))
        path = "/etc/nginx/sites-enabled/example.com"
        reverted = once[path].replace("\tlisten 443 ssl;\n\tlisten [::]:443 ssl;\n", "\tlisten 80;\n", 1)
        reverted = reverted.replace(f"\tinclude {site_include('blog')};  # managed by certfab\n", "")
        assert not block(parse_tree({**once, path: reverted}, MAIN), "blog.example.com").is_certfab_redirect
        again = edit({**once, path: reverted}, "blog.example.com", convert("blog"))[path]
        assert again.count(redirect_marker("blog")[0]) == 1
        assert again == once[path].replace("\tlisten [::]:443 ssl;\n", "")

    def test_marker_of_a_site_with_a_longer_name_does_not_count(self) -> None:
        begin, end = redirect_marker("blog2")
        files = load("debian")
        path = "/etc/nginx/sites-enabled/example.com"
        files[path] += f"{begin}\nserver {{\n\tlisten 8081;\n}}\n{end}\n"
        new = edit(files, "blog.example.com", convert("blog"))[path]
        assert new.count(redirect_marker("blog")[0] + "\n") == 1

    def test_server_block_nested_in_the_main_file(self, tmp_path: pathlib.Path) -> None:
        text = "events {}\nhttp {\n    server {\n        listen 80;\n        server_name n.example;\n    }}\n"
        new = edit({MAIN: text}, "n.example", convert("n"))[MAIN]
        begin, end = redirect_marker("n")
        assert new == (
            "events {}\nhttp {\n    server {\n"
            f"        include {site_include('n')};  # managed by certfab\n"
            "        listen 443 ssl;\n        server_name n.example;\n    }\n"
            f"    {begin}\n    server {{\n        listen 80;\n        server_name n.example;\n"
            f"        include {ACME};\n        location / {{\n"
            "            return 301 https://$host$request_uri;\n        }\n    }\n"
            f"    {end}\n    }}\n"
        )
        assert parses_with_crossplane(new, tmp_path)


# --------------------------------------------------------------------------- lexer fidelity


def crossplane_tokens(text: str, tmp: pathlib.Path) -> list[tuple[str, int, bool]]:
    tmp.write_text(text, encoding="utf-8", newline="")
    with open(tmp, encoding="utf-8", errors="replace") as fh:
        return [(t, n, q) for t, n, q in crossplane.lexer._lex_file_object(fh)]


TRICKY = [
    'a "x{;#}y" \'q"uote\' b\\;c ${var} d;\n',
    "log_format main '$a \"$b\"' ;# trailing comment without newline",
    "server{listen 80;}# c\r\nx 1;\r\n",
    "content_by_lua_block {\n  ngx.say('}') -- comment }\n  local t = {1}\n}\nnext 1;\n",
    "set_by_lua_block $res { return 32 + math.cos(32) }\n",
    "a b\\\nc;\n",
    "old\rmac\rline;\n",
    "trailing backslash \\",
]


LEX_PIECES = [*"ab #;{}\"'\\\n\r\t$-", "${", "content_by_lua_block ", "set_by_lua_block "]


class TestLexerFidelity:
    @pytest.mark.parametrize("text", TRICKY)
    def test_tricky_inputs(self, text: str, tmp_path: pathlib.Path) -> None:
        ours = lex(text)
        assert [(t.value, t.line, t.quoted) for t in ours] == crossplane_tokens(text, tmp_path / "t.conf")

    def test_fixture_files(self, tmp_path: pathlib.Path) -> None:
        for name in ("debian", "legacy"):
            for path, text in load(name).items():
                ours = [(t.value, t.line, t.quoted) for t in lex(text)]
                assert ours == crossplane_tokens(text, tmp_path / "t.conf"), path

    def test_spans_point_at_the_source_text(self) -> None:
        text = load("debian")["/etc/nginx/sites-enabled/example.com"]
        for tok in lex(text):
            raw = text[tok.start : tok.end]
            if tok.quoted:
                assert raw[0] == raw[-1] and raw[0] in "\"'"
            else:
                assert raw == tok.value

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from(LEX_PIECES), max_size=40).map("".join))
    def test_matches_crossplane_on_random_text(self, text: str) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / "t.conf"
            try:
                theirs: list[tuple[str, int, bool]] | None = crossplane_tokens(text, path)
            except crossplane.errors.NgxParserBaseException:
                theirs = None
        try:
            ours: list[tuple[str, int, bool]] | None = [(t.value, t.line, t.quoted) for t in lex(text)]
        except NginxConfError:
            ours = None
        assert ours == theirs


# --------------------------------------------------------------------------- real nginx


def self_signed(tmp: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    return write_self_signed(tmp, [], cert_name="cert.pem", key_name="key.pem", common_name="certfab test")


def nginx_t(
    files: Mapping[str, str], sites: list[str], tmp: pathlib.Path, main_dir: str = "/etc/nginx"
) -> subprocess.CompletedProcess[str]:
    """Write `files` (plus certfab's includes) under tmp with paths rewritten, and run nginx -t.

    Files are written byte-exactly (surrogateescape); the main file is `main_dir`/nginx.conf.
    """
    conf = tmp / "conf"
    tmp.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed(tmp)
    extra = {
        ACME: "location ^~ /.well-known/acme-challenge/ {\n    root /var/www/letsencrypt;\n"
        '    default_type "text/plain";\n    try_files $uri =404;\n}\n'
    }
    for site in sites:
        extra[site_include(site)] = f"ssl_certificate {cert};\nssl_certificate_key {key};\n"
    replacements = [
        *([(main_dir, str(conf))] if main_dir != "/etc/nginx" else []),
        ("/etc/nginx", str(conf)),
        ("/etc/ssl/certs/ssl-cert-snakeoil.pem", str(cert)),
        ("/etc/ssl/private/ssl-cert-snakeoil.key", str(key)),
        ("/var/log/nginx", str(tmp)),
        ("/run/nginx.pid", str(tmp / "nginx.pid")),
    ]
    for path, text in {**files, **extra}.items():
        for old, new in replacements:
            text = text.replace(old, new)
            path = path.replace(old, new)
        target = pathlib.Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8", errors="surrogateescape", newline="")
    assert NGINX is not None
    return subprocess.run(
        [NGINX, "-t", "-p", str(conf), "-c", str(conf / "nginx.conf"), "-e", str(tmp / "error.log")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


needs_nginx = pytest.mark.skipif(
    NGINX is None or not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs nginx and root"
)


@needs_nginx
class TestRealNginx:
    def test_debian_tree_after_edits(self, tmp_path: pathlib.Path) -> None:
        files = load("debian")
        assert nginx_t(files, [], tmp_path / "before").returncode == 0
        files = edit(files, "anything.invalid", acme)
        for host, site in [
            ("example.com", "example"),
            ("blog.example.com", "blog"),
            ("api.example.org", "api"),
        ]:
            files = edit(files, host, acme)
            files = edit(files, host, convert(site, http2=True))
        result = nginx_t(files, ["example", "blog", "api"], tmp_path / "after")
        assert result.returncode == 0, result.stderr
        assert "test is successful" in result.stderr

    def test_legacy_tree_after_edits(self, tmp_path: pathlib.Path) -> None:
        files = load("legacy")
        for host, site, port in [
            ("dual.example.net", "dual", 80),
            ("tiny.example.net", "tiny", 80),
            ("old.example.net", "old", 80),
            ("plain.example.net", "plain", 80),
            ("secure.example.net", "secure", 443),
        ]:
            files = edit(files, host, convert(site, http2=True), port=port)
        assert "    listen 443 ssl http2;\n" in files["/etc/nginx/sites/10-dual.conf"]
        # shop keeps its own certificate settings; snip's listen lives in a snippet: both refused above
        result = nginx_t(files, ["dual", "tiny", "old", "plain", "secure"], tmp_path / "after")
        assert result.returncode == 0, result.stderr


class TestSetRedirectNames:
    """certfab's redirect block follows the names of the HTTPS block it was split from."""

    TEXT = "server {\n\tlisten 80;\n\tserver_name a.example www.a.example;\n\troot /srv/a;\n}\n"

    def converted(self) -> dict[str, str]:
        return edit({MAIN: "events {}\nhttp {\n include site;\n}\n", "/etc/nginx/site": self.TEXT},
                    "a.example", convert("a"))

    def redirect(self, files: Mapping[str, str]) -> ServerBlock:
        [found] = [b for b in parse_tree(files, MAIN).server_blocks if b.is_certfab_redirect]
        return found

    def test_added_name_changes_only_the_server_name_line(self) -> None:
        files = self.converted()
        text = files["/etc/nginx/site"].replace("www.a.example;", "www.a.example new.a.example;", 1)
        names = ("a.example", "www.a.example", "new.a.example")
        new = set_redirect_names(text, self.redirect({**files, "/etc/nginx/site": text}), names)
        removed, added = diff(text, new)
        assert removed == ["\tserver_name a.example www.a.example;\n"]
        assert added == ["\tserver_name a.example www.a.example new.a.example;\n"]
        assert self.redirect({**files, "/etc/nginx/site": new}).server_names == names

    def test_same_names_leave_the_text_alone(self) -> None:
        files = self.converted()
        text = files["/etc/nginx/site"]
        assert set_redirect_names(text, self.redirect(files), ("a.example", "www.a.example")) == text

    def test_only_redirect_blocks_are_edited(self) -> None:
        files = self.converted()
        https = block(parse_tree(files, MAIN), "a.example", 443)
        with pytest.raises(NginxConfError, match="not a certfab redirect block"):
            set_redirect_names(files["/etc/nginx/site"], https, ("x.example",))


# --------------------------------------------------------------------------- trees certfab used to get wrong

LATIN1_SITE = (
    b"# caf\xe9 du coin: written in Latin-1 long ago \xab ne pas toucher \xbb\n"
    b"server {\n"
    b"\tlisten 80;\n"
    b"\tserver_name cafe.example.com;  # \xe9t\xe9 2019\n"
    b"\tadd_header X-Menu \"cr\xe8me br\xfbl\xe9e\" always;\n"
    b"\troot /var/www/caf\xe9;\n"
    b"}\n"
)
RELATIVE_MAIN = "/opt/nginx/conf/nginx.conf"


def load_at(name: str, directory: str) -> dict[str, str]:
    """A fixture tree whose main file is `directory`/nginx.conf."""
    return {path.replace("/etc/nginx", directory, 1): text for path, text in load(name).items()}


def with_latin1_site() -> dict[str, str]:
    files = load("debian")
    files["/etc/nginx/sites-enabled/cafe"] = LATIN1_SITE.decode("utf-8", errors="surrogateescape")
    return files


class TestNonUtf8Bytes:
    def test_a_latin1_file_parses_and_its_bytes_survive_the_edits(self, tmp_path: pathlib.Path) -> None:
        files = with_latin1_site()
        tree = parse_tree(files, MAIN)
        assert block(tree, "cafe.example.com").file == "/etc/nginx/sites-enabled/cafe"
        files = edit(files, "cafe.example.com", acme)
        files = edit(files, "cafe.example.com", convert("cafe"))
        new = files["/etc/nginx/sites-enabled/cafe"].encode("utf-8", errors="surrogateescape")
        removed, added = diff(LATIN1_SITE.decode("latin-1"), new.decode("latin-1"))
        assert removed == ["\tlisten 80;\n"]
        assert added[:3] == [
            f"\tinclude {site_include('cafe')};  # managed by certfab\n",
            f"\tinclude {ACME};  # managed by certfab\n",
            "\tlisten 443 ssl;\n",
        ]
        assert b"\troot /var/www/caf\xe9;\n" in new and b"\xab ne pas toucher \xbb" in new

    def test_a_non_utf8_server_name_is_copied_to_the_redirect_byte_for_byte(self) -> None:
        text = b"http {\nserver {\n    listen 80;\n    server_name caf\xe9.example;\n}\n}\n"
        files = {MAIN: text.decode("utf-8", errors="surrogateescape")}
        tree = parse_tree(files, MAIN)
        (only,) = tree.server_blocks
        new = convert_to_https(files[MAIN], only, https_include=site_include("cafe"), acme_include=ACME,
                               http2_in_listen=False, site="cafe", tree=tree)
        assert new.encode("utf-8", errors="surrogateescape").count(b"server_name caf\xe9.example;") == 2

    @needs_nginx
    def test_nginx_accepts_the_edited_tree(self, tmp_path: pathlib.Path) -> None:
        files = edit(with_latin1_site(), "cafe.example.com", convert("cafe"))
        result = nginx_t(files, ["cafe"], tmp_path)
        assert result.returncode == 0, result.stderr


class TestRelativeIncludes:
    def test_relative_includes_resolve_against_the_main_files_directory(self) -> None:
        tree = parse_tree(load_at("relative", "/opt/nginx/conf"), RELATIVE_MAIN)
        assert tree.prefix == "/opt/nginx/conf"
        assert [b.server_names for b in tree.server_blocks] == [
            ("shop.example.org", "www.shop.example.org"),
            ("wiki.example.org",),
        ]
        assert tree.unmatched_includes == ()
        shop = block(tree, "shop.example.org")
        assert shop.has_include("/opt/nginx/conf/snippets/headers.conf")
        assert tree.contexts["/opt/nginx/conf/snippets/headers.conf"] == (("http", "server"),)

    def test_the_install_prefix_finds_none_of_them(self) -> None:
        # what resolving against `nginx -V`'s --prefix would see: no site at all
        tree = parse_tree(load_at("relative", "/opt/nginx/conf"), RELATIVE_MAIN, "/opt/nginx")
        assert tree.server_blocks == ()

    @needs_nginx
    def test_nginx_accepts_the_edited_tree(self, tmp_path: pathlib.Path) -> None:
        files = load_at("relative", "/opt/nginx/conf")
        for host, site in [("shop.example.org", "shop"), ("wiki.example.org", "wiki")]:
            tree = parse_tree(files, RELATIVE_MAIN)
            target = block(tree, host)
            files[target.file] = add_include(files[target.file], target, ACME)
            tree = parse_tree(files, RELATIVE_MAIN)
            target = block(tree, host)
            files[target.file] = convert_to_https(
                files[target.file], target, https_include=site_include(site), acme_include=ACME,
                http2_in_listen=False, site=site, tree=tree,
            )
        tree = parse_tree(files, RELATIVE_MAIN)
        assert sum(b.is_certfab_redirect for b in tree.server_blocks) == 2
        result = nginx_t(files, ["shop", "wiki"], tmp_path, main_dir="/opt/nginx/conf")
        assert result.returncode == 0, result.stderr


EXTRA_NAMES = """http {
    server {
        listen 80;
        listen 8080;
        listen unix:/run/shop.sock;
        server_name shop.example *.shop.example ~^img\\d+\\.example$ _ "";
    }
    server {
        listen 80;
        server_name blog.example;
    }
}
"""


class TestHttpsReadiness:
    def test_names_outside_the_certificate_are_an_error_naming_the_block(self) -> None:
        tree = parse_tree({MAIN: EXTRA_NAMES}, MAIN)
        problems = check_sites(tree, {"shop": ("shop.example",)}, {"shop": site_include("shop")})
        (names,) = [p for p in problems if p.kind == "foreign-names"]
        assert names.severity == "error" and "\n" not in names.message
        assert names.message.startswith(f"{MAIN}:2: the server block also names *.shop.example ~^img\\d+\\.example$,")

    def test_other_plain_ports_are_a_warning(self) -> None:
        tree = parse_tree({MAIN: EXTRA_NAMES}, MAIN)
        problems = check_sites(tree, {"shop": ("shop.example",)}, {"shop": site_include("shop")})
        (plain,) = [p for p in problems if p.kind == "plain-port"]
        assert plain.severity == "warning"
        assert f"plain-HTTP port 8080 ({MAIN}:4)" in plain.message and "unix" not in plain.message

    def test_names_of_another_site_are_a_shared_block_not_foreign(self) -> None:
        tree = parse_tree({MAIN: "http { server { listen 80; server_name a.example b.example; } }\n"}, MAIN)
        sites = {"a": ("a.example",), "b": ("b.example",)}
        problems = check_sites(tree, sites, {s: site_include(s) for s in sites})
        assert sorted(p.kind for p in problems) == ["shared-block", "shared-block"]

    def test_a_converted_block_is_still_checked(self) -> None:
        files = edit({MAIN: EXTRA_NAMES}, "shop.example", convert("shop"))
        tree = parse_tree(files, MAIN)
        problems = check_sites(tree, {"shop": ("shop.example",)}, {"shop": site_include("shop")})
        assert sorted(p.kind for p in problems) == ["foreign-names", "plain-port"]

    def test_without_https_includes_only_port_80_is_looked_at(self) -> None:
        tree = parse_tree({MAIN: EXTRA_NAMES}, MAIN)
        assert check_sites(tree, {"shop": ("shop.example",)}) == []

    @needs_nginx
    def test_the_plain_port_keeps_serving_after_conversion(self, tmp_path: pathlib.Path) -> None:
        text = EXTRA_NAMES.replace(" *.shop.example ~^img\\d+\\.example$ _ \"\"", "").replace(
            "listen unix:/run/shop.sock;", f"listen unix:{tmp_path}/shop.sock;")
        files = edit({MAIN: "events {}\n" + text}, "shop.example", convert("shop"))
        assert "        listen 8080;\n" in files[MAIN]
        result = nginx_t(files, ["shop"], tmp_path)
        assert result.returncode == 0, result.stderr
