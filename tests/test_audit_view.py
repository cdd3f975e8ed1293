"""The Audit page's view (issue 14): every fill, refused execution, refused check made from the dashboard,
trading-state change, rule change, limit change, acknowledgement and automated action, merged newest first,
filtered by portfolio, actor, kind and time, exported as CSV with its as-of time, and still there after a
re-seed, a reset and a sync."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import warmup
from engine.archive import Archiver
from engine.corporate_actions import apply_split
from engine.dividends import apply_dividend
from engine.errors import CorruptDataError
from engine.records import Role
from engine.settings import Settings
from engine.store import AuditTrail, PortfolioKeys, Store
from engine.store import audit as store_audit
from logic import views
from logic.access import Identity, local_identity
from logic.views.audit import (
    FIRM_WIDE,
    AuditEntry,
    AuditFilter,
    AuditKind,
    audit_csv,
    audit_frame,
    audit_view,
    entries_from_trail,
    filter_entries,
    fmt_money,
    fmt_pct,
    window_filter,
)

from .alerts_support import rule, snapshot
from .conftest import TEST_CONFIG, merge, to_toml

T0 = 1_700_000_000.0
APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
TRADER = Identity("https://idp.example", "trader-7", email="t@example.com", roles=frozenset({Role.TRADER}),
                  portfolios=frozenset({"main"}))  # fmt: skip
RISK = Identity("https://idp.example", "risk-1", email="r@example.com", roles=frozenset({Role.RISK_MANAGER}))
VIEWER = Identity("https://idp.example", "viewer-1", email="v@example.com", roles=frozenset({Role.VIEWER}))
DD_HALT = rule("drawdown_halt", "drawdown.daily", "<=", -0.05, "CRITICAL", description="Daily drawdown beyond 5%",
               actions=["set_state:HALTED"])  # fmt: skip


class Clock:
    """The desk's injected clock: every call is one second later (rows get distinct, ordered times)."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def desk_settings(make_settings: Any) -> Settings:
    settings: Settings = make_settings({"alert_rules": [DD_HALT]})
    return settings


@pytest.fixture
def desk(store: Store, desk_settings: Settings) -> views.Desk:
    warmup.seed(store, desk_settings, now=T0)
    return views.Desk(store.client, desk_settings, clock=Clock(T0))


def by_kind(entries: list[AuditEntry], kind: AuditKind) -> list[AuditEntry]:
    return [e for e in entries if e.kind == kind]


def act_on_every_kind(desk: views.Desk) -> None:
    """One of every audited action, through the views the pages call (and the alert engine the monitor runs)."""
    approved = views.check_ticket(desk, "main", "AAA", "BUY", 10, TRADER)
    assert approved["status"] == "APPROVED"  # an approved check records nothing
    refused = views.check_ticket(desk, "main", "AAA", "BUY", 200_000, TRADER)  # over max_order_qty 100,000
    assert refused["status"] == "REJECTED"
    assert views.execute_ticket(desk, "main", "AAA", "BUY", 10, "order-1", TRADER)["status"] == "FILLED"
    assert views.execute_ticket(desk, "main", "AAA", "BUY", 200_000, "order-2", TRADER)["status"] == "REJECTED"
    seen = views.limits_view(desk, "main")
    views.change_limits(desk, "main", {"var_limit": "15000", "max_concentration": "0.2"}, RISK, "tighter", seen)
    views.save_rule(desk, rule("var_in_use", "var.utilization", ">=", 0.5, "HIGH"), RISK, "watch VaR")
    views.save_rule(desk, rule("var_in_use", "var.utilization", ">=", 0.6, "HIGH"), RISK, "less noise")
    views.change_trading_state(desk, "hedge", "REDUCING", "desk review", RISK)
    engine = desk.alert_engine()
    now = desk.clock()
    engine.evaluate("main", snapshot(now=now, var__utilization=0.9, drawdown__daily=-0.06), now)
    views.acknowledge_alert(desk, "main", "var_in_use", TRADER, "looking at it")
    views.firm_switch(desk, "HALT ALL", RISK, "end of day")
    apply_dividend(desk.store, "AAA", Decimal("0.25"), settings=desk.settings, actor="ops", now=desk.clock())


def test_every_kind_of_audited_action_is_a_row_with_its_actor_newest_first(desk: views.Desk) -> None:
    act_on_every_kind(desk)

    view = audit_view(desk)
    entries = list(view.entries)

    assert [e.ts for e in entries] == sorted((e.ts for e in entries), reverse=True)
    (check,) = by_kind(entries, AuditKind.REFUSED_CHECK)
    assert (check.portfolio, check.actor) == ("main", "https://idp.example|trader-7")
    assert "BUY 200,000 AAA" in check.summary and "BAD_QUANTITY" in check.summary
    fills = [e for e in by_kind(entries, AuditKind.FILL) if e.actor == TRADER.actor]
    assert len(fills) == 1 and fills[0].summary.startswith("BUY 10 AAA @ USD 100.00")
    assert "order order-1" in fills[0].detail
    (order,) = by_kind(entries, AuditKind.REFUSED_ORDER)
    assert order.actor == TRADER.actor and "BAD_QUANTITY" in order.summary and "order-2" in order.detail
    (limit,) = by_kind(entries, AuditKind.LIMIT_CHANGE)
    assert limit.actor == RISK.actor and limit.detail == "tighter"
    assert "VaR limit: USD 20,000.00 → USD 15,000.00" in limit.summary
    assert "Max concentration: 50% → 20%" in limit.summary and "(version 1)" in limit.summary
    rules = by_kind(entries, AuditKind.RULE_CHANGE)
    assert [r.summary for r in rules][0] == "rule var_in_use updated: threshold: 0.5 → 0.6"
    assert rules[1].summary.startswith("rule var_in_use added: metric var.utilization")
    assert {r.portfolio for r in rules} == {FIRM_WIDE} and {r.detail for r in rules} == {"watch VaR", "less noise"}
    states = {(e.portfolio, e.actor, e.summary) for e in by_kind(entries, AuditKind.TRADING_STATE)}
    assert ("hedge", RISK.actor, "ACTIVE → REDUCING") in states
    assert ("main", "auto:drawdown_halt", "ACTIVE → HALTED") in states  # the circuit breaker's own change
    assert ("main", RISK.actor, "HALTED kept (HALT ALL)") in states
    assert ("hedge", RISK.actor, "REDUCING → HALTED (HALT ALL)") in states
    automated = by_kind(entries, AuditKind.AUTOMATED)
    assert automated and {e.actor for e in automated} == {"auto:drawdown_halt"}
    assert any("set_state:HALTED (done)" in e.summary for e in automated)
    (ack,) = by_kind(entries, AuditKind.ACKNOWLEDGEMENT)
    assert (ack.portfolio, ack.actor, ack.detail) == ("main", TRADER.actor, "looking at it")
    assert ack.summary == "acknowledged alert var_in_use (HIGH)"
    assert list(view.table.columns) == ["time", "portfolio", "actor", "kind", "summary", "detail"]
    assert len(view.table) == len(entries) == view.matched
    assert TRADER.actor in view.actors and RISK.actor in view.actors


def test_a_check_without_an_identity_or_approved_records_nothing(desk: views.Desk) -> None:
    views.check_ticket(desk, "main", "AAA", "BUY", 200_000)  # no identity: an API call, not the Trade page
    views.check_ticket(desk, "main", "AAA", "BUY", 10, local_identity("ops"))  # approved
    views.check_ticket(desk, "main", "AAA", "SELL", 100_001, local_identity("ops"))  # one share over the limit

    refused = by_kind(list(audit_view(desk).entries), AuditKind.REFUSED_CHECK)

    assert [(e.actor, e.summary) for e in refused] == [("local:ops", "check of SELL 100,001 AAA refused: BAD_QUANTITY")]


def test_a_viewers_refused_checks_never_touch_the_audit_stream_of_changes(desk: views.Desk) -> None:
    seen = views.limits_view(desk, "main")
    views.change_limits(desk, "main", {"var_limit": "19000"}, RISK, "tighten after review", seen)
    views.change_trading_state(desk, "main", "REDUCING", "drill", RISK)
    audit = PortfolioKeys("main").audit
    changes = desk.client.xrange(audit)
    actions = [json.loads(fields[b"json"])["action"] for _, fields in changes]
    assert actions == ["seed", "set_limits", "set_trading_state"]

    for _ in range(300):  # a viewer may check (a check trades nothing); each one is refused
        assert views.check_ticket(desk, "main", "AAA", "BUY", 10**9, VIEWER)["status"] == "REJECTED"

    assert desk.client.xrange(audit) == changes  # the same records, and no other
    assert desk.client.xlen(PortfolioKeys("main").checks) == 300
    assert len(views.limits_view(desk, "main").history) == 1  # the Limits page's change history
    assert "set_trading_state" in set(views.trading_state_view(desk, "main").audit["action"])  # the System page


def test_the_trail_merges_refused_checks_from_their_own_stream_in_time_order(desk: views.Desk) -> None:
    views.check_ticket(desk, "main", "AAA", "BUY", 10**9, VIEWER)
    seen = views.limits_view(desk, "main")
    views.change_limits(desk, "main", {"var_limit": "19000"}, RISK, "tighten after review", seen)
    views.check_ticket(desk, "main", "AAA", "SELL", 10**9, VIEWER)
    views.change_trading_state(desk, "main", "REDUCING", "drill", RISK)
    views.check_ticket(desk, "main", "BBB", "BUY", 10**9, VIEWER)

    kinds = {AuditKind.REFUSED_CHECK, AuditKind.LIMIT_CHANGE, AuditKind.TRADING_STATE}
    rows = [e for e in audit_view(desk).entries if e.portfolio == "main" and e.kind in kinds]

    assert [e.kind for e in rows] == [
        AuditKind.REFUSED_CHECK, AuditKind.TRADING_STATE, AuditKind.REFUSED_CHECK, AuditKind.LIMIT_CHANGE,
        AuditKind.REFUSED_CHECK,
    ]  # fmt: skip
    assert [e.ts for e in rows] == sorted((e.ts for e in rows), reverse=True)
    checks = by_kind(rows, AuditKind.REFUSED_CHECK)
    assert all(e.source.startswith(f"{PortfolioKeys('main').checks}#") for e in checks)
    assert {e.actor for e in checks} == {VIEWER.actor}
    assert "check of BUY 1,000,000,000 BBB refused" in checks[0].summary


def test_the_refused_check_stream_is_bounded(desk: views.Desk, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert store_audit.CHECK_LOG_MAXLEN == 10_000  # far below the change streams' 100,000: a log of questions
    monkeypatch.setattr(store_audit, "CHECK_LOG_MAXLEN", 100)
    audit_before = desk.client.xlen(PortfolioKeys("main").audit)

    for n in range(1_000):
        desk.store.append_check_record("main", {"ts": T0 + n, "actor": VIEWER.actor, "reasons": []})

    # the bound is applied by the archiver, after archiving (engine/archive.py), never by a trim on append
    assert desk.client.xlen(PortfolioKeys("main").checks) == 1_000
    Archiver(desk.store, desk.settings.archive, tmp_path).run_once()
    assert desk.client.xlen(PortfolioKeys("main").checks) == 100
    archived = [line for f in sorted(tmp_path.glob("pf_main_checks/*.jsonl")) for line in f.read_bytes().splitlines()]
    assert [json.loads(line)["record"]["ts"] for line in archived] == [T0 + n for n in range(900)]
    newest = desk.store.read_stream_json(PortfolioKeys("main").checks, count=1)
    assert newest[0]["ts"] == T0 + 999 and newest[0]["action"] == "check_refused"
    assert desk.client.xlen(PortfolioKeys("main").audit) == audit_before


def entry(ts: float, portfolio: str = "main", actor: str = "a", kind: AuditKind = AuditKind.FILL) -> AuditEntry:
    return AuditEntry(ts, portfolio, actor, kind, f"summary {ts}", "", f"src#{ts}")


def test_filters_by_portfolio_actor_kind_and_time_keep_their_bounds() -> None:
    rows = [
        entry(T0, "main", "alice", AuditKind.FILL),
        entry(T0 + 10, "hedge", "bob", AuditKind.LIMIT_CHANGE),
        entry(T0 + 20, FIRM_WIDE, "bob", AuditKind.RULE_CHANGE),
    ]

    def kept(flt: AuditFilter) -> list[float]:
        return [e.ts for e in filter_entries(rows, flt)]

    assert kept(AuditFilter()) == [T0, T0 + 10, T0 + 20]
    assert kept(AuditFilter(portfolios=frozenset({"hedge", FIRM_WIDE}))) == [T0 + 10, T0 + 20]
    assert kept(AuditFilter(actors=frozenset({"alice"}))) == [T0]
    assert kept(AuditFilter(kinds=frozenset({AuditKind.LIMIT_CHANGE, AuditKind.RULE_CHANGE}))) == [T0 + 10, T0 + 20]
    assert kept(AuditFilter(since=T0 + 10)) == [T0 + 10, T0 + 20]  # exactly at the bound: kept
    assert kept(AuditFilter(since=T0 + 10 + 1e-6)) == [T0 + 20]  # a hair after it: the row at T0+10 is out
    assert kept(AuditFilter(until=T0 + 10)) == [T0, T0 + 10]
    assert kept(AuditFilter(until=T0 + 10 - 1e-6)) == [T0]
    hour = window_filter(T0 + 3600, "Last hour", kinds=["fill"])
    assert (hour.since, hour.kinds) == (T0, frozenset({AuditKind.FILL}))
    assert kept(hour) == [T0]
    assert window_filter(T0, "Everything kept").since is None


def test_the_view_filters_what_it_reads(desk: views.Desk) -> None:
    act_on_every_kind(desk)
    everything = audit_view(desk)

    hedge = audit_view(desk, AuditFilter(portfolios=frozenset({"hedge"})))
    trader = audit_view(desk, AuditFilter(actors=frozenset({TRADER.actor}), kinds=frozenset({AuditKind.FILL})))

    assert hedge.entries and {e.portfolio for e in hedge.entries} == {"hedge"}
    assert [e for e in everything.entries if e.portfolio == "hedge"] == list(hedge.entries)
    assert len(trader.entries) == 1 and trader.entries[0].summary.startswith("BUY 10 AAA")


def test_the_csv_names_its_as_of_time_and_holds_the_rows_as_shown(desk: views.Desk) -> None:
    act_on_every_kind(desk)
    view = audit_view(desk, AuditFilter(kinds=frozenset({AuditKind.LIMIT_CHANGE, AuditKind.FILL})))

    data = audit_csv(view).decode("utf-8")

    head, _, body = data.partition("\r\n")
    assert head.startswith(f"# Riskdesk audit trail as of {views.audit.fmt_time(view.as_of)}")
    assert "kinds fill, limit change" in head and f"{len(view.entries)} rows" in head
    table = pd.read_csv(io.StringIO(body), dtype=str, keep_default_na=False)
    assert table.to_dict("records") == view.table.to_dict("records")
    assert "USD 20,000.00 → USD 15,000.00" in body  # money as shown: currency, separators, cents
    assert "None" not in body and "nan" not in body


def test_money_and_ratios_are_formatted_as_a_desk_reads_them() -> None:
    assert fmt_money(Decimal("1234567.891"), "EUR") == "EUR 1,234,567.89"
    assert fmt_money("-5", "USD") == "USD -5.00"
    assert fmt_money(None, "USD") == "–" and fmt_money(float("nan"), "USD") == "–"
    assert fmt_pct(0.2) == "20%" and fmt_pct(0.2022) == "20.22%" and fmt_pct(0.30000001) == "30%"
    trail = AuditTrail(
        portfolios={
            "main": {
                "trades": [],
                "alert_log": [],
                "audit": [
                    {
                        "id": "1-0",
                        "ts": T0,
                        "actor": "x",
                        "action": "set_limits",
                        "version": 3,
                        "reason": "r",
                        "before": {"stressed_var_limit": None, "max_order_qty": 1000},
                        "after": {"stressed_var_limit": "150000", "max_order_qty": 2500},
                    },
                ],  # fmt: skip
            }
        }
    )
    (row,) = entries_from_trail(trail, "CHF")
    assert row.summary == ("Stressed VaR limit: none → CHF 150,000.00; Max order quantity: 1,000 → 2,500 (version 3)")
    assert audit_frame([row]).loc[0, "time"] == "2023-11-14 22:13:20 UTC"


def test_a_reseed_a_reset_and_a_sync_keep_every_record_the_page_shows(
    redis_server: Any, desk: views.Desk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    act_on_every_kind(desk)
    before = {e.source: e for e in audit_view(desk).entries}
    assert {e.kind for e in before.values()} >= set(AuditKind) - {AuditKind.RESOLUTION}
    config = tmp_path / "riskdesk.toml"
    config.write_text(to_toml(merge(TEST_CONFIG, {"alert_rules": [DD_HALT]})), encoding="utf-8")
    monkeypatch.setenv("REDIS_URL", redis_server.url)

    assert warmup.main(["--config", str(config)]) == 0  # a re-seed of a seeded store
    assert warmup.main(["--config", str(config), "--sync"]) == 0
    assert warmup.main(["--config", str(config), "--reset", "--yes"]) == 0  # wipe and seed again

    after = {e.source: e for e in audit_view(desk).entries}
    assert {k: v for k, v in after.items() if k in before} == before  # every record, unchanged
    assert {e.summary.split(":")[0] for e in after.values() if e.kind == AuditKind.MAINTENANCE} >= {"reset", "seed"}

    assert warmup.main(["--config", str(config), "--reset", "--yes", "--wipe-audit"]) == 0  # the one way out
    assert not set(before) & {e.source for e in audit_view(desk).entries}


def audit_page(
    redis_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: str | None = None
) -> AppTest:
    """The Audit page rendered on the test store (paused; ``window``: its time window), checked clean. The caller
    clears Streamlit's resource cache when done."""
    config = tmp_path / "riskdesk.toml"
    config.write_text(to_toml(merge(TEST_CONFIG, {"alert_rules": [DD_HALT]})), encoding="utf-8")
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("RISKDESK_CONFIG", str(config))
    st.cache_resource.clear()
    at = AppTest.from_file(str(APP), default_timeout=30.0)
    at.session_state["refresh"] = "Paused"
    if window is not None:
        at.session_state["au_window"] = window
    at.switch_page("screens/audit.py")
    at.run()
    assert not at.exception and not at.error
    return at


def test_the_audit_page_renders_the_trail_and_its_filters(
    redis_server: Any, desk: views.Desk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    act_on_every_kind(desk)
    try:
        at = audit_page(redis_server, tmp_path, monkeypatch, window="Everything kept")  # records stamped in 2023
        table = at.dataframe[0].value
        assert set(AuditKind) - {AuditKind.RESOLUTION} <= set(table["kind"])
        at.multiselect(key="au_kinds").set_value(["limit change"]).run()
        table = at.dataframe[0].value
        assert list(table["kind"]) == ["limit change"] and table.loc[0, "actor"] == RISK.actor
    finally:
        st.cache_resource.clear()


def test_an_audit_record_that_does_not_decode_is_a_coded_error_naming_its_stream(desk: views.Desk) -> None:
    desk.client.xadd(PortfolioKeys("main").audit, {"json": b"{not json"})

    with pytest.raises(CorruptDataError) as raised:
        audit_view(desk)

    problem = views.problem_from_exception(raised.value)
    assert problem.code == CorruptDataError.code and PortfolioKeys("main").audit in problem.detail


def test_the_page_says_where_older_records_are_archived_once_an_archive_exists(
    redis_server: Any, desk: views.Desk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert audit_view(desk).archive_note == ""  # no archiver has run on this store
    directory = tmp_path / "audit-archive"

    Archiver(desk.store, desk.settings.archive, directory).run_once()

    note = audit_view(desk).archive_note
    assert f"archived to `{directory}`" in note
    assert "last 30 days, at most its newest 100,000 records" in note
    last_run = desk.store.read_archive_state().last_run  # type: ignore[union-attr]
    interval = desk.settings.archive.interval_seconds
    on_time = audit_view(desk, wall=lambda: last_run + 3 * interval).archive_note
    late = audit_view(desk, wall=lambda: last_run + 3 * interval + 1).archive_note
    assert on_time == note and "archiver last ran" not in note  # three runs missed at most: no warning
    assert late.startswith(note) and f"The archiver last ran {3 * interval + 1:,.0f} s ago" in late
    try:
        at = audit_page(redis_server, tmp_path, monkeypatch)
        assert note in [c.value for c in at.caption]
    finally:
        st.cache_resource.clear()


def test_a_split_and_a_dividend_read_as_corporate_actions_in_a_desks_words(
    desk: views.Desk, desk_settings: Settings
) -> None:
    store = desk.store
    apply_dividend(store, "AAA", Decimal("0.25"), settings=desk_settings, actor="ops", reason="Q1 dividend",
                   dividend_id="AAA-q1", now=T0 + 10)  # fmt: skip
    apply_split(store, "AAA", Fraction(2), settings=desk_settings, actor="ops", reason="2-for-1",
                split_id="AAA-2", now=T0 + 20)  # fmt: skip

    rows = by_kind(list(audit_view(desk).entries), AuditKind.CORPORATE_ACTION)

    assert [(e.portfolio, e.summary, e.detail, e.actor) for e in rows] == [
        (views.FIRM_WIDE, "split AAA-2: AAA 2-for-1, last price 99.75 → 49.875; books main", "2-for-1", "ops"),
        ("main", "split AAA-2: AAA 1,000 @ 100 → 2,000 @ 50", "2-for-1", "ops"),
        (views.FIRM_WIDE, "dividend AAA-q1: AAA 0.25 a share, last price 100 → 99.75; books main", "Q1 dividend",
         "ops"),
        ("main", "dividend AAA-q1: 1,000 AAA × USD 0.25 = USD 250.00 received; cash USD 1,000,000.00 → "
         "USD 1,000,250.00", "Q1 dividend", "ops"),
    ]  # fmt: skip
    assert AuditKind.CORPORATE_ACTION in audit_view(desk).kinds  # the page's kind filter offers it
