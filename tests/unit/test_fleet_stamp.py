"""Fleet scheduling without hosts (stop, Ctrl-C), the recap, and the no-change stamp's pure parts."""

from __future__ import annotations

import base64
import json
import os
import signal
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from certfactory import make_certificate

from certfab.bootstrap import BootstrapResult
from certfab.facts import parse_facts
from certfab.fleet import Progress, Stop, ctrl_c_stops, run_fleet
from certfab.inventory import Inventory, Site, load_inventory
from certfab.outcome import HostOutcome
from certfab.protocol import Frame, Reply
from certfab.recap import host_status, recap_rows, write_run_log
from certfab.stamp import (
    MAX_TRUST,
    STAMP_VERSION,
    Observed,
    Unchanged,
    input_key,
    parse_probe,
    recheck_time,
    stamp_text,
)

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)

INVENTORY = """\
version: 1
acme: {email: admin@example.com, server: staging}
defaults:
  certbot: {image: "certbot/certbot:v5.1.0"}
  renewal: {admin_email: ops@example.com}
hosts:
  alpha:
    address: 192.0.2.10
    sites: [{name: shop, domains: [shop.example.com, www.shop.example.com]}]
  beta:
    address: 192.0.2.11
    sites: [{name: blog, domains: [blog.example.com]}]
"""


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    path = tmp_path / "inventory.yaml"
    path.write_text(INVENTORY)
    return load_inventory(path)


def certificate(names: list[str], not_before: datetime, not_after: datetime) -> str:
    """A self-signed PEM certificate for `names` valid in the given window."""
    return make_certificate(names, not_before=not_before, not_after=not_after)


def facts_with_certs(certs: dict[str, str], *extra: Frame) -> Reply:
    """A facts answer holding only these lineages (and any extra frames)."""
    frames = [Frame("cert", name, pem.encode()) for name, pem in certs.items()]
    return Reply(0, (*extra, *frames, Frame("done", "", b"")))


NO_FACTS = Reply(0, ())


# --------------------------------------------------------------------------- fleet


def test_stop_keeps_the_first_reason() -> None:
    stop = Stop()
    assert not stop.is_set()
    stop.request("canary web1 failed")
    stop.request("interrupted")
    assert stop.is_set() and stop.reason == "canary web1 failed"


def test_ctrl_c_sets_the_stop_flag_instead_of_raising() -> None:
    # Python's own handler, as an operator's terminal gives it: a run started in the background
    # inherits SIGINT ignored, and ctrl_c_stops rightly leaves an ignored signal alone.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        stop = Stop()
        with ctrl_c_stops(stop):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        assert stop.is_set() and stop.reason == "interrupted" and stop.presses == 2
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_ctrl_c_leaves_a_callers_handler_alone() -> None:
    seen: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        stop = Stop()
        with ctrl_c_stops(stop):
            os.kill(os.getpid(), signal.SIGINT)
        assert seen == [signal.SIGINT] and not stop.is_set()
    finally:
        signal.signal(signal.SIGINT, previous)


class Recorder(Progress):
    """Remembers every finished host."""

    def __init__(self) -> None:
        self.finished: list[tuple[str, bool]] = []

    def done(self, host: str, outcome: HostOutcome[object]) -> None:
        self.finished.append((host, outcome.started))


def test_a_stopped_fleet_starts_no_host(inventory: Inventory) -> None:
    stop = Stop()
    stop.request("canary alpha failed")
    progress = Recorder()

    def never(session: object) -> None:
        raise AssertionError("no host may start")

    outcomes = run_fleet(inventory.hosts, inventory, never, stop=stop, progress=progress)

    assert [(o.host, o.started, o.error, o.commands) for o in outcomes] == [
        ("alpha", False, "alpha: not started (canary alpha failed)", 0),
        ("beta", False, "beta: not started (canary alpha failed)", 0),
    ]
    assert progress.finished == [("alpha", False), ("beta", False)]


# --------------------------------------------------------------------------- recap


def test_recap_rows_name_not_started_hosts_and_keep_errors_on_one_line() -> None:
    outcomes: list[HostOutcome[BootstrapResult]] = [
        HostOutcome("a", value=BootstrapResult("a", certificates={"a": "kept"})),
        HostOutcome("b", value=BootstrapResult("b", applied=["created /x"], certificates={"b": "issued"})),
        HostOutcome("c", error="c: nginx -t failed:\n  [emerg] unknown directive\n", exit_code=1),
        HostOutcome("d", error="d: not started (interrupted)", started=False),
    ]
    assert [host_status(o) for o in outcomes] == ["ok", "changed", "failed", "not started"]
    rows = recap_rows(outcomes)
    assert rows[2]["error"] == "c: nginx -t failed: [emerg] unknown directive"
    assert rows[0]["certificates"] == {"a": "kept"} and rows[1]["certificates"] == {"b": "issued"}


def test_run_logs_of_the_same_second_do_not_overwrite_each_other(tmp_path: Path) -> None:
    first = write_run_log([{"host": "a"}], "deploy-all", tmp_path, meta={"interrupted": False})
    second = write_run_log([{"host": "b"}], "deploy-all", tmp_path, meta={"interrupted": True})
    assert first != second
    assert json.loads(first.read_text())["hosts"] == [{"host": "a"}]
    document = json.loads(second.read_text())
    assert document["interrupted"] is True and document["kind"] == "deploy-all"


# --------------------------------------------------------------------------- stamp


def test_probe_answer_unchanged_carries_the_warnings() -> None:
    warning = "alpha: another renewal job would compete: /etc/cron.d/certbot"
    reply = Reply(0, (Frame("unchanged", "", b""), Frame("warn", "", warning.encode())))
    assert parse_probe("alpha", reply) == Unchanged((warning,))


def test_probe_answer_with_facts_gives_the_state_and_watched_paths() -> None:
    pem = certificate(["shop.example.com"], NOW - timedelta(days=1), NOW + timedelta(days=89))
    reply = facts_with_certs({"shop": pem}, Frame("watch", "", b"/srv/nginx"),
                             Frame("watch", "", b"/srv/nginx/shop.conf"),
                             Frame("state", "", b"0123456789abcdef0123456789abcdef"))
    observed = parse_probe("alpha", reply)
    assert isinstance(observed, Observed)
    assert observed.state == "0123456789abcdef0123456789abcdef"
    assert observed.watch == ("/srv/nginx", "/srv/nginx/shop.conf")
    assert list(observed.facts.lineages) == ["shop"]


@pytest.mark.parametrize("state", [b"", b"nothex", b"garbage\n0123456789abcdef0123456789abcdef",
                                   b"d41d8cd98f00b204e9800998ecf8427e"])
def test_probe_answer_without_a_usable_state_is_never_stamped(state: bytes) -> None:
    observed = parse_probe("alpha", facts_with_certs({}, Frame("state", "", state)))
    assert isinstance(observed, Observed) and observed.state == ""


def test_stamp_text_lists_key_state_recheck_warnings_and_paths() -> None:
    observed = Observed(parse_facts("alpha", NO_FACTS), "0123456789abcdef0123456789abcdef", ("/srv/a b.conf",))
    text = stamp_text(key="k" * 64, observed=observed, recheck=NOW, warnings=["w;1"])
    assert text.splitlines() == [
        STAMP_VERSION,
        "key " + "k" * 64,
        "state 0123456789abcdef0123456789abcdef",
        f"recheck {int(NOW.timestamp())}",
        "warn " + base64.b64encode(b"w;1").decode(),
        "watch /srv/a b.conf",
    ]


def test_recheck_is_when_a_certificate_would_be_renewed(inventory: Inventory) -> None:
    host = inventory.host("alpha")
    names = ["shop.example.com", "www.shop.example.com"]
    # 90-day certificate issued 57 days ago: bootstrap renews below a third left, at day 60.
    pem = certificate(names, NOW - timedelta(days=57), NOW + timedelta(days=33))
    facts = parse_facts("alpha", facts_with_certs({"shop": pem}))
    assert recheck_time(host, facts, NOW) == NOW + timedelta(days=3)
    # A fresh certificate is trusted for at most MAX_TRUST; a missing one not at all.
    fresh = certificate(names, NOW, NOW + timedelta(days=90))
    assert recheck_time(host, parse_facts("alpha", facts_with_certs({"shop": fresh})), NOW) == NOW + MAX_TRUST
    assert recheck_time(host, parse_facts("alpha", NO_FACTS), NOW) == NOW


def test_input_key_follows_what_shapes_the_desired_state(inventory: Inventory) -> None:
    host = inventory.host("alpha")
    key = input_key(host, inventory, None)
    assert key == input_key(host, inventory, None)
    assert key != input_key(host, inventory, "-----BEGIN CERTIFICATE-----\n")
    assert key != input_key(replace(host, sites=(Site("shop", ("shop.example.com",)),)), inventory, None)
    assert key != input_key(replace(host, tls=replace(host.tls, hsts_max_age=1)), inventory, None)
    assert key != input_key(replace(host, name="gamma"), inventory, None)
    # How certfab reaches the host does not shape what the host should hold.
    assert key == input_key(replace(host, address="192.0.2.99", port=2222), inventory, None)


def test_a_failed_canary_leaves_the_rest_not_started(inventory: Inventory) -> None:
    from certfab.fleet import run_with_canary

    def fail_alpha(session: object) -> None:
        raise AssertionError("never connected")

    stop = Stop()
    # A closed port on loopback: alpha fails at connect at once, so beta never starts.
    hosts = tuple(replace(h, address="127.0.0.1", port=1) for h in inventory.hosts)
    outcomes = run_with_canary(hosts, inventory, fail_alpha, canary=1, stop=stop)
    assert [o.host for o in outcomes] == ["alpha", "beta"]
    assert outcomes[0].failed and outcomes[0].started
    assert not outcomes[1].started and outcomes[1].error == "beta: not started (canary alpha failed)"


def test_the_fleet_exit_code_ranks_interrupts_refusals_and_failures() -> None:
    from certfab.recap import fleet_exit_code

    ok = HostOutcome[object]("a")
    failed = HostOutcome[object]("b", error="b: failed", exit_code=1)
    refused = HostOutcome[object]("c", error="c: unknown host key", exit_code=2)
    assert fleet_exit_code([ok], interrupted=False) == 0
    assert fleet_exit_code([ok, failed], interrupted=False) == 1
    assert fleet_exit_code([failed, refused], interrupted=False) == 2
    assert fleet_exit_code([ok], interrupted=True) == 130
