"""The record of a site's pre-certfab text and the inverse of certfab's edits (pure)."""

from __future__ import annotations

from certfab.origin import Origin, OriginFile, invert, parse_origin, render_origin, updated_origin

BEFORE = "# site\nserver {\n\tlisten 80;\n\tserver_name a.test;\n\tlocation / { }\n}\n"
AFTER = ("# site\nserver {\n\tinclude /etc/nginx/certfab/site-a.conf;  # managed by certfab\n\tlisten 443 ssl;\n"
         "\tserver_name a.test;\n\tlocation / { }\n}\n# certfab redirect begin: a\nserver {\n}\n"
         "# certfab redirect end: a\n")


def test_unchanged_file_comes_back_byte_for_byte() -> None:
    assert invert(BEFORE, AFTER, AFTER) == BEFORE


def test_an_edit_elsewhere_is_kept_and_certfabs_lines_go() -> None:
    current = "# site, edited by the admin\n" + AFTER.split("\n", 1)[1] + "# appended\n"
    assert invert(BEFORE, AFTER, current) == "# site, edited by the admin\n" + BEFORE.split("\n", 1)[1] + "# appended\n"


def test_an_edit_of_certfabs_own_lines_is_refused() -> None:
    current = AFTER.replace("\tlisten 443 ssl;\n", "\tlisten 8443 ssl;\n")
    assert invert(BEFORE, AFTER, current) is None


def test_record_round_trips_non_utf8_bytes() -> None:
    odd = b"# caf\xe9\n".decode("utf-8", errors="surrogateescape")
    record = Origin("a", (OriginFile("/etc/nginx/sites-available/a", odd + BEFORE, odd + AFTER),))
    assert parse_origin(render_origin(record), "a") == record
    assert parse_origin(render_origin(record), "b") is None
    assert parse_origin('{"version": 1, "site": "a", "files": [{"path": 3}]}', "a") is None
    assert parse_origin("not json", "a") is None


def test_a_later_run_keeps_the_first_text() -> None:
    path = "/etc/nginx/sites-available/a"
    acme = BEFORE.replace("server {\n", "server {\n\tinclude /etc/nginx/certfab/acme-challenge.conf;\n", 1)
    first = updated_origin(None, "a", {path: BEFORE}, {path: acme})
    assert first == Origin("a", (OriginFile(path, BEFORE, acme),))
    second = updated_origin(first, "a", {path: acme}, {path: AFTER})
    assert second == Origin("a", (OriginFile(path, BEFORE, AFTER),))
    assert updated_origin(second, "a", {path: AFTER}, {}) == second
