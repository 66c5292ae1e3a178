"""Report classification and renderers: JSON, CSV, rich, HTML, Prometheus, mail."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from certfab import report as rp
from certfab.certs import CertInfo
from certfab.report import CertRecord, Status, Thresholds, build_report, classify, evaluate, exit_code
from certfab.tlsprobe import ServedCert

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
OK_RENEWAL = {
    "time": "2026-11-01T03:17:00+00:00",
    "result": "ok",
    "renewed": [],
    "certbot_exit": 0,
    "nginx_test": "skipped",
    "reload": "skipped",
    "message": "no renewal due",
}


def cert(
    lifetime_days: float = 90,
    days_left: float = 60,
    names: tuple[str, ...] = ("a.test",),
    fp: str | None = None,
    key_type: str = "ECDSA P-256",
) -> CertInfo:
    lifetime = timedelta(days=lifetime_days)
    not_after = NOW + timedelta(days=days_left)
    return CertInfo(
        names=names,
        issuer="E6 (Let's Encrypt)",
        serial="4a3f",
        not_before=not_after - lifetime,
        not_after=not_after,
        key_type=key_type,
        sha256=fp or f"{hash((lifetime_days, days_left, names)) & (2**64 - 1):064x}",
        lifetime=lifetime,
    )


def served(info: CertInfo) -> ServedCert:
    return ServedCert(b"\x30", info)


def record(
    host: str = "web1",
    site: str = "a",
    disk: CertInfo | None = None,
    **kw: Any,
) -> CertRecord:
    disk = disk if disk is not None else cert()
    kw.setdefault("served", {n: served(disk) for n in disk.names})
    kw.setdefault("renewal_status", OK_RENEWAL)
    return CertRecord(host=host, site=site, domains=disk.names, disk=disk, **kw)


def unreachable(host: str = "web9", error: str = "ssh: connection timed out") -> CertRecord:
    return CertRecord(host=host, site="", unreachable_error=error)


# --- classification ---------------------------------------------------------------------------------


class TestClassify:
    def test_healthy(self) -> None:
        row = evaluate(record(), NOW)
        assert row.status is Status.OK
        assert row.notes == ()
        assert row.days_left == pytest.approx(60)
        assert row.fraction_left == pytest.approx(60 / 90)

    def test_status_order_is_urgency(self) -> None:
        assert [s.value for s in Status] == [
            "expired",
            "critical",
            "mismatch",
            "renewal-failing",
            "unreachable",
            "warn",
            "ok",
        ]
        assert Status.EXPIRED.urgency < Status.OK.urgency

    def test_mismatch(self) -> None:
        disk = cert(names=("a.test", "www.a.test"))
        other = cert(days_left=3, fp="f" * 64)
        rec = record(disk=disk, served={"a.test": served(disk), "www.a.test": served(other)})
        row = evaluate(rec, NOW)
        assert row.status is Status.MISMATCH
        assert any("www.a.test" in n and "ffffffffffffffff" in n for n in row.notes)

    def test_names_serving_the_same_old_certificate_share_one_note(self) -> None:
        disk = cert(names=("a.test", "www.a.test"), days_left=89, fp="d" * 64)
        previous = cert(names=("a.test", "www.a.test"), days_left=20, fp="p" * 64)
        rec = record(disk=disk, served={"a.test": served(previous), "www.a.test": served(previous)})
        row = evaluate(rec, NOW)
        assert row.status is Status.MISMATCH
        assert len(row.notes) == 1
        assert row.notes[0].startswith("a.test, www.a.test: renewed on disk but nginx was not reloaded")
        assert "pppppppppppppppp" in row.notes[0] and "dddddddddddddddd" in row.notes[0]

    def test_renewal_failing(self) -> None:
        status = dict(OK_RENEWAL, result="failed", certbot_exit=1, message="rate limited")
        row = evaluate(record(renewal_status=status), NOW)
        assert row.status is Status.RENEWAL_FAILING
        assert "certbot exit 1" in row.notes[0] and "rate limited" in row.notes[0]

    def test_unreachable_host_is_one_row(self) -> None:
        row = evaluate(unreachable(), NOW)
        assert row.status is Status.UNREACHABLE
        assert row.notes == ("host unreachable: ssh: connection timed out",)
        assert row.days_left is None

    def test_no_certificate_on_disk_is_critical(self) -> None:
        rec = CertRecord(host="web1", site="new", domains=("n.test",), renewal_status=OK_RENEWAL)
        assert classify(rec, NOW) is Status.CRITICAL

    def test_missing_cron_line_warns(self) -> None:
        row = evaluate(record(cron_present=False), NOW)
        assert row.status is Status.WARN
        assert any("cron" in n for n in row.notes)

    def test_stale_renewal_status_warns(self) -> None:
        status = dict(OK_RENEWAL, time=(NOW - timedelta(days=5)).isoformat())
        row = evaluate(record(renewal_status=status), NOW)
        assert row.status is Status.WARN
        assert "renewal has not run for 5.0 days" in row.notes

    def test_no_renewal_status_is_only_a_note(self) -> None:
        row = evaluate(record(renewal_status=None), NOW)
        assert row.status is Status.OK
        assert row.notes and "renewal" in row.notes[0]

    def test_unreadable_served_certificate_warns(self) -> None:
        row = evaluate(record(served={"a.test": "[10.0.0.1]:443: connection refused"}), NOW)
        assert row.status is Status.WARN
        row = evaluate(record(served={"a.test": ServedCert(b"", None, "timed out")}), NOW)
        assert row.status is Status.WARN

    @pytest.mark.parametrize(
        ("kwargs", "expected"),
        [
            ({"disk": cert(days_left=-1), "served": {"a.test": served(cert(fp="e" * 64))}}, Status.EXPIRED),
            (
                {"disk": cert(days_left=5), "renewal_status": dict(OK_RENEWAL, result="failed")},
                Status.CRITICAL,
            ),
            (
                {
                    "served": {"a.test": served(cert(fp="e" * 64))},
                    "renewal_status": dict(OK_RENEWAL, result="failed"),
                },
                Status.MISMATCH,
            ),
            (
                {"renewal_status": dict(OK_RENEWAL, result="failed"), "cron_present": False},
                Status.RENEWAL_FAILING,
            ),
            ({"unreachable_error": "sudo failed", "disk": cert(days_left=20)}, Status.UNREACHABLE),
        ],
    )
    def test_most_urgent_finding_wins(self, kwargs: dict[str, Any], expected: Status) -> None:
        assert classify(record(**kwargs), NOW) is expected

    def test_thresholds_validation(self) -> None:
        with pytest.raises(ValueError):
            Thresholds(warn_fraction=0.1, critical_fraction=0.2)
        with pytest.raises(ValueError):
            Thresholds(warn_days=5, critical_days=10)

    def test_absolute_thresholds(self) -> None:
        t = Thresholds(warn_days=30, critical_days=10)
        assert classify(record(disk=cert(days_left=25)), NOW, t) is Status.WARN
        assert classify(record(disk=cert(days_left=12)), NOW, t) is Status.WARN
        assert classify(record(disk=cert(days_left=12)), NOW) is Status.CRITICAL  # 12/90 < 0.15
        assert classify(record(disk=cert(days_left=9)), NOW, t) is Status.CRITICAL


def sample_report() -> rp.Report:
    records = [
        record("web1", "a", cert(days_left=60, names=("a.test", "www.a.test"))),
        record("web1", "b", cert(lifetime_days=6, days_left=0.5, names=("b.test",))),
        record("web2", "c", cert(days_left=20, names=("c.test",))),
        record("web2", "d", cert(days_left=-2, names=("d.test",))),
        record("web3", "e", cert(lifetime_days=45, days_left=30, names=("e.test",)), cron_present=False),
        unreachable("web9"),
    ]
    return build_report(records, NOW)


class TestReport:
    def test_sorted_by_urgency_then_days_left(self) -> None:
        rows = sample_report().rows
        assert [(r.record.site, r.status.value) for r in rows] == [
            ("d", "expired"),
            ("b", "critical"),
            ("", "unreachable"),
            ("c", "warn"),
            ("e", "warn"),
            ("a", "ok"),
        ]

    def test_exit_code(self) -> None:
        assert exit_code(sample_report()) == 2
        assert exit_code(build_report([record()], NOW)) == 0
        assert exit_code(build_report([record(cron_present=False)], NOW)) == 1
        assert exit_code(build_report([], NOW)) == 0
        assert exit_code(build_report([unreachable()], NOW)) == 2

    def test_counts(self) -> None:
        counts = sample_report().counts()
        assert list(counts) == [s.value for s in Status]
        assert counts == {
            "expired": 1,
            "critical": 1,
            "mismatch": 0,
            "renewal-failing": 0,
            "unreachable": 1,
            "warn": 2,
            "ok": 1,
        }


# --- renderers --------------------------------------------------------------------------------------


class TestJSON:
    def test_shape(self) -> None:
        doc = json.loads(rp.to_json(sample_report()))
        assert doc["schema"] == "certfab.report/1"
        assert doc["generated_at"] == "2026-11-01T12:00:00Z"
        assert doc["exit_code"] == 2
        assert doc["thresholds"]["warn_fraction"] == 0.30
        assert len(doc["rows"]) == 6
        first = doc["rows"][0]
        assert set(first) == {
            "host",
            "site",
            "domains",
            "status",
            "notes",
            "days_left",
            "fraction_left",
            "certificate",
            "served",
            "renewal",
            "cron_present",
            "unreachable_error",
            "issuer",
        }
        assert first["status"] == "expired"
        assert first["days_left"] == pytest.approx(-2)
        assert first["fraction_left"] == 0.0
        c = first["certificate"]
        assert c["not_after"] == "2026-10-30T12:00:00Z"
        assert re.fullmatch(r"[0-9a-f]{64}", c["sha256"])
        assert c["lifetime_days"] == 90
        assert first["served"]["d.test"] == {
            "ok": True,
            "error": None,
            "sha256": c["sha256"],
            "matches_disk": True,
            "not_after": "2026-10-30T12:00:00Z",
        }
        assert first["renewal"]["result"] == "ok"

    def test_unreachable_row(self) -> None:
        row = json.loads(rp.to_json(sample_report()))["rows"][2]
        assert row["status"] == "unreachable"
        assert row["certificate"] is None and row["days_left"] is None
        assert row["unreachable_error"] == "ssh: connection timed out"

    def test_stable(self) -> None:
        assert rp.to_json(sample_report()) == rp.to_json(sample_report())


class TestCSV:
    def test_shape(self) -> None:
        rows = list(csv.DictReader(io.StringIO(rp.to_csv(sample_report()))))
        assert len(rows) == 6
        assert tuple(rows[0]) == rp.CSV_COLUMNS
        assert rows[0]["status"] == "expired" and rows[0]["days_left"] == "-2.000"
        assert rows[4]["cron_present"] == "no"
        assert rows[2]["sha256"] == ""

    def test_mismatch_column_and_formula_neutralised(self) -> None:
        disk = cert()
        rec = record(
            disk=disk,
            served={"a.test": served(cert(fp="e" * 64))},
            renewal_status=dict(OK_RENEWAL, result="=HYPERLINK(1)"),
        )
        row = next(csv.DictReader(io.StringIO(rp.to_csv(build_report([rec], NOW)))))
        assert row["served_mismatch"] == "a.test"
        assert row["renewal_result"] == "'=HYPERLINK(1)"


class TestRich:
    def test_table(self) -> None:
        table = rp.to_rich_table(sample_report())
        assert table.row_count == 6
        out = io.StringIO()
        Console(file=out, width=250, force_terminal=True, color_system="truecolor").print(table)
        assert "\x1b[1;37;41mexpired" in out.getvalue()
        console = Console(record=True, width=250)
        console.print(table)
        text = console.export_text()
        assert "expired" in text and "web9" in text and "d.test" not in text

    def test_markup_in_values_is_literal(self) -> None:
        table = rp.to_rich_table(build_report([record(site="[bold]x[/bold]")], NOW))
        console = Console(record=True, width=250)
        console.print(table)
        assert "[bold]x[/bold]" in console.export_text()


class TestHTML:
    def test_self_contained_with_timeline(self) -> None:
        html = rp.to_html(sample_report())
        assert html.startswith("<!DOCTYPE html>")
        assert html.count("<svg") == 1
        # one bar per certificate: the unreachable host has none
        assert len(re.findall(r'<rect class="bar ', html)) == 5
        assert 'class="today"' in html
        assert "web2 / d" in html
        assert "#7f1d1d" in html  # expired colour
        assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
        assert "http://" not in html and "https://" not in html
        assert "<script" not in html and "<link" not in html

    def test_escaping(self) -> None:
        rec = record(
            site='<script>alert("x")</script>',
            renewal_status=dict(OK_RENEWAL, result="failed", message="<img src=x>"),
        )
        html = rp.to_html(build_report([rec], NOW))
        assert "<script>" not in html and "<img" not in html
        assert "&lt;script&gt;" in html

    def test_empty_report(self) -> None:
        html = rp.to_html(build_report([], NOW))
        assert "No certificate" in html and "<svg" not in html

    def test_bar_geometry(self) -> None:
        chart = rp.timeline(sample_report())
        assert len(chart["bars"]) == 5
        for bar in chart["bars"]:
            assert chart["label_width"] <= bar["x"] <= chart["plot_right"]
            assert bar["x"] + bar["width"] <= chart["plot_right"] + 0.5
        assert chart["label_width"] < chart["today_x"] < chart["plot_right"]


class TestPrometheus:
    def _families(self, text: str) -> dict[str, Any]:
        return {f.name: f for f in text_string_to_metric_families(text)}

    def test_parses(self) -> None:
        text = rp.to_prometheus(sample_report())
        assert text.endswith("\n")
        fams = self._families(text)
        assert fams["certfab_certificate_expiry_timestamp_seconds"].type == "gauge"
        expiry = {
            s.labels["site"]: s.value for s in fams["certfab_certificate_expiry_timestamp_seconds"].samples
        }
        assert expiry["d"] == (NOW - timedelta(days=2)).timestamp()
        days = {s.labels["site"]: s.value for s in fams["certfab_certificate_days_left"].samples}
        assert days["a"] == pytest.approx(60)
        statuses = {
            (s.labels["host"], s.labels["site"]): s.labels["status"]
            for s in fams["certfab_certificate_status"].samples
        }
        assert statuses[("web2", "d")] == "expired"
        assert statuses[("web9", "")] == "unreachable"
        up = {s.labels["host"]: s.value for s in fams["certfab_host_up"].samples}
        assert up == {"web1": 1, "web2": 1, "web3": 1, "web9": 0}
        results = [
            (s.labels["host"], s.labels["result"]) for s in fams["certfab_renewal_last_result"].samples
        ]
        assert ("web1", "ok") in results
        assert text.count("# HELP certfab_certificate_status ") == 1

    def test_label_escaping(self) -> None:
        host = 'we"ird\\host\nname'
        text = rp.to_prometheus(build_report([record(host=host, site='s"1')], NOW))
        fams = self._families(text)
        sample = fams["certfab_certificate_days_left"].samples[0]
        assert sample.labels == {"host": host, "site": 's"1'}
        assert "\nname" not in text  # the newline is escaped, not literal


class TestMail:
    def test_digest(self) -> None:
        msg = rp.digest_mail(sample_report(), ["ops@example.org", "sre@example.org"], "certfab@example.org")
        assert msg["Subject"] == "certfab: 3 problems, 2 warnings, 1 ok"
        assert msg["To"] == "ops@example.org, sre@example.org"
        assert msg["From"] == "certfab@example.org"
        assert msg.get_content_type() == "text/plain"
        body = msg.get_content()
        assert "[EXPIRED] web2 / d" in body
        assert "host unreachable: ssh: connection timed out" in body
        assert "exit code: 2" in body
        msg.as_string()  # serialises

    def test_all_ok_subject(self) -> None:
        msg = rp.digest_mail(build_report([record()], NOW), "ops@example.org", "certfab@example.org")
        assert msg["Subject"] == "certfab: all 1 certificates ok"
