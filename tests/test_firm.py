"""The firm view and the desk-wide kill switch (logic/firm.py, logic/views/firm.py, the Firm page), on a real
seeded Redis: firm VaR against an independent computation, HALT ALL / REDUCE ALL in one transaction with one
audit record, all or nothing, and the page's buttons under Streamlit's AppTest."""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest
import redis
import streamlit as st
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as stg
from streamlit.testing.v1 import AppTest

from dashboard.components import md
from engine.errors import CorruptDataError
from engine.records import MAX_ACTOR_LENGTH, OrderIntent, Position
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings
from engine.store import GLOBAL_AUDIT_KEY, PortfolioKeys, Store
from logic.access import local_identity
from logic.action_orders import AUTOMATION
from logic.firm import Firm
from logic.risk_manager import RiskManager

from .conftest import TEST_CONFIG
from .e2e_stack import toml_dumps

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"


def prices_and_cov(store: Store) -> tuple[list[str], dict[str, float], np.ndarray]:
    market = store.read_market()
    return list(market.tickers), dict(zip(market.tickers, market.prices.tolist(), strict=True)), market.cov


def exposures(store: Store, portfolio_id: str) -> np.ndarray:
    tickers, prices, _ = prices_and_cov(store)
    book = store.read_portfolio(portfolio_id).positions
    return np.array([book[t].qty * prices[t] if t in book else 0.0 for t in tickers])


def var_of(x: np.ndarray, cov: np.ndarray, settings: Settings) -> float:
    """z_c sqrt(h x'Σx): the delta-normal VaR, written out here."""
    z = NormalDist().inv_cdf(settings.limits.var_confidence)
    h = settings.model.bars_per_day * settings.limits.var_horizon_days
    return z * math.sqrt(h * float(x @ cov @ x))


def rebook(store: Store, portfolio_id: str, holdings: dict[str, int]) -> None:
    _, prices, _ = prices_and_cov(store)
    old = store.read_portfolio(portfolio_id)
    positions = {t: Position(q, Decimal(repr(prices[t]))) for t, q in holdings.items() if q}
    store.write_portfolio(dataclasses.replace(old, positions=positions))


def states(store: Store) -> dict[str, str]:
    return {pid: store.read_trading_state(pid).state for pid in store.portfolio_ids()}


def firm_records(store: Store) -> list[dict[str, Any]]:
    return [r for r in store.read_stream_json(GLOBAL_AUDIT_KEY, 100) if r["action"] in ("halt_all", "reduce_all")]


# -- firm risk -----------------------------------------------------------------------------------------------


def test_firm_var_is_the_var_of_the_summed_exposures_and_at_most_the_sum_of_stand_alone_vars(
    seeded_store: Store, settings: Settings
) -> None:
    risk = Firm(seeded_store.client, settings).risk()
    _, _, cov = prices_and_cov(seeded_store)
    x_main, x_hedge = exposures(seeded_store, "main"), exposures(seeded_store, "hedge")
    assert risk.firm_var == pytest.approx(var_of(x_main + x_hedge, cov, settings), rel=1e-12)
    by_pid = {p.portfolio_id: p for p in risk.portfolios}
    assert by_pid["main"].var == pytest.approx(var_of(x_main, cov, settings), rel=1e-12)
    assert by_pid["hedge"].var == pytest.approx(var_of(x_hedge, cov, settings), rel=1e-12)
    assert risk.standalone_var_sum == pytest.approx(by_pid["main"].var + by_pid["hedge"].var, rel=1e-12)
    assert risk.standalone_var_sum >= risk.firm_var and risk.diversification >= 0


def test_exposure_by_ticker_sums_longs_and_shorts_across_portfolios(seeded_store: Store, settings: Settings) -> None:
    rebook(seeded_store, "hedge", {"AAA": -400, "DDD": -1000})  # AAA long in main, short here
    risk = Firm(seeded_store.client, settings).risk()
    rows = {e.ticker: e for e in risk.exposures}
    assert (rows["AAA"].gross, rows["AAA"].net) == (pytest.approx(140_000.0), pytest.approx(60_000.0))
    assert (rows["AAA"].long, rows["AAA"].short, rows["AAA"].portfolios) == (100_000.0, -40_000.0, 2)
    assert (rows["DDD"].gross, rows["DDD"].net) == (pytest.approx(25_000.0), pytest.approx(-25_000.0))
    assert [e.ticker for e in risk.exposures] == sorted(rows, key=lambda t: -rows[t].gross)
    assert risk.gross_exposure == pytest.approx(sum(e.gross for e in risk.exposures))


def test_books_that_offset_exactly_have_no_firm_var_but_their_stand_alone_vars(
    seeded_store: Store, settings: Settings
) -> None:
    rebook(seeded_store, "hedge", {"AAA": -1000, "BBB": -2000})  # main's book, mirrored
    risk = Firm(seeded_store.client, settings).risk()
    assert risk.firm_var == pytest.approx(0.0, abs=1e-6)
    assert risk.standalone_var_sum == pytest.approx(2 * risk.portfolios[0].var, rel=1e-12) and risk.diversification > 0
    assert all(e.net == 0.0 for e in risk.exposures)


@hsettings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    main=stg.dictionaries(stg.sampled_from("ABCD"), stg.integers(0, 5000), max_size=4),
    hedge=stg.dictionaries(stg.sampled_from("ABCD"), stg.integers(-5000, 5000), max_size=4),
)
def test_diversification_is_never_negative(
    seeded_store: Store, settings: Settings, main: dict[str, int], hedge: dict[str, int]
) -> None:
    rebook(seeded_store, "main", {t * 3: q for t, q in main.items()})
    rebook(seeded_store, "hedge", {t * 3: q for t, q in hedge.items()})
    risk = Firm(seeded_store.client, settings).risk()
    _, _, cov = prices_and_cov(seeded_store)
    total = exposures(seeded_store, "main") + exposures(seeded_store, "hedge")
    assert risk.firm_var == pytest.approx(var_of(total, cov, settings), rel=1e-9, abs=1e-6)
    assert risk.standalone_var_sum >= risk.firm_var - 1e-6


def test_worst_drawdowns_and_lights_come_from_the_monitor_snapshots(seeded_store: Store, settings: Settings) -> None:
    from .alerts_support import snapshot

    for pid, drawdown in (("main", -0.02), ("hedge", -0.07)):
        snap = snapshot(pid, drawdown__daily=drawdown)
        seeded_store.record_snapshot(pid, snap, {"ts": snap["ts"]}, ts=snap["ts"], retention_seconds=60, max_points=9)
    rule = {"id": "dd", "metric": "drawdown.daily", "op": "<=", "threshold": -0.05, "severity": "CRITICAL"}
    firm = Firm(seeded_store.client, dataclasses.replace(settings, alert_rules=(settings_rule(rule),)))
    risk = firm.risk()
    assert [p.portfolio_id for p in risk.worst_drawdowns()] == ["hedge", "main"]
    lights = {p.portfolio_id: {light.area: light.level for light in p.lights} for p in risk.portfolios}
    assert lights["hedge"]["Drawdown"] == "red" and lights["main"]["Drawdown"] == "green"


def settings_rule(data: dict[str, Any]) -> Any:
    from engine.settings import AlertRule

    return AlertRule(**data)


# -- the kill switch -----------------------------------------------------------------------------------------


def test_halt_all_halts_every_portfolio_with_one_audit_record_naming_the_actor(
    seeded_store: Store, settings: Settings
) -> None:
    firm = Firm(seeded_store.client, settings, clock=lambda: 1234.5)
    changes = firm.halt_all("alice", "market closed by the exchange")
    assert states(seeded_store) == {"main": "HALTED", "hedge": "HALTED"}
    assert changes == {pid: {"previous": "ACTIVE", "state": "HALTED"} for pid in ("main", "hedge")}
    (record,) = firm_records(seeded_store)
    assert (record["actor"], record["action"], record["reason"], record["ts"]) == (
        "alice", "halt_all", "market closed by the exchange", 1234.5,
    )  # fmt: skip
    assert record["portfolios"] == changes
    status = seeded_store.read_trading_state("hedge")
    assert (status.actor, status.reason) == ("alice", "market closed by the exchange")
    assert firm.last_action() == record


def test_halt_all_writes_every_state_inside_one_multi(
    seeded_store: Store, settings: Settings, redis_server: EmbeddedRedis
) -> None:
    seen: list[str] = []
    ready = threading.Event()
    watcher = redis.Redis.from_url(redis_server.url, decode_responses=True)

    def watch() -> None:
        with watcher.monitor() as m:
            ready.set()
            for command in m.listen():
                seen.append(command["command"])
                if command["command"].upper() == "EXEC":
                    return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert ready.wait(10)
    Firm(seeded_store.client, settings).halt_all("alice", "drill")
    thread.join(10)
    watcher.close()
    words = [c.split()[0].upper() for c in seen]
    start, end = words.index("MULTI"), words.index("EXEC")
    inside = seen[start:end]
    for pid in ("main", "hedge"):
        key = PortfolioKeys(pid).trading_state
        assert any(c.startswith("HSET") and key in c for c in inside)
        assert not any(c.startswith("HSET") and key in c for c in seen[:start])
    assert sum(c.startswith("XADD") and GLOBAL_AUDIT_KEY in c for c in inside) == 1


def test_a_corrupt_trading_state_stops_halt_all_before_anything_is_written(
    seeded_store: Store, settings: Settings
) -> None:
    seeded_store.client.delete(PortfolioKeys("hedge").trading_state)
    seeded_store.client.set(PortfolioKeys("hedge").trading_state, b"not a hash")
    with pytest.raises(CorruptDataError):
        Firm(seeded_store.client, settings).halt_all("alice", "drill")
    assert seeded_store.read_trading_state("main").state == "ACTIVE"
    assert firm_records(seeded_store) == []
    seeded_store.client.delete(PortfolioKeys("hedge").trading_state)
    seeded_store.client.hset(PortfolioKeys("hedge").trading_state, mapping={"state": "PAUSED", "ts": "0"})
    with pytest.raises(CorruptDataError, match="PAUSED"):
        Firm(seeded_store.client, settings).halt_all("alice", "drill")
    assert seeded_store.read_trading_state("main").state == "ACTIVE" and firm_records(seeded_store) == []


ENTRA_ACTOR = "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0|AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ"
"""A signed-in actor as logic/access.py builds it (issuer|subject) from a Microsoft Entra ID token: 119 characters."""


@pytest.mark.parametrize("actor", [ENTRA_ACTOR, "a" * MAX_ACTOR_LENGTH], ids=["entra-id", "at-the-cap"])
def test_halt_all_by_a_signed_in_actor_of_a_real_identity_provider_halts_every_portfolio(
    seeded_store: Store, settings: Settings, actor: str
) -> None:
    Firm(seeded_store.client, settings).halt_all(actor, "crisis")
    assert states(seeded_store) == {"main": "HALTED", "hedge": "HALTED"}
    (record,) = firm_records(seeded_store)
    assert record["actor"] == actor


@pytest.mark.parametrize(
    ("actor", "reason"), [("", "drill"), ("  ", "drill"), ("alice", ""), ("a" * (MAX_ACTOR_LENGTH + 1), "x")]
)
def test_halt_all_without_an_actor_or_a_reason_changes_nothing(
    seeded_store: Store, settings: Settings, actor: str, reason: str
) -> None:
    with pytest.raises(ValueError):
        Firm(seeded_store.client, settings).halt_all(actor, reason)
    assert states(seeded_store) == {"main": "ACTIVE", "hedge": "ACTIVE"} and firm_records(seeded_store) == []


def test_reduce_all_never_loosens_a_halted_portfolio(seeded_store: Store, settings: Settings) -> None:
    RiskManager(seeded_store.client, "hedge", settings).set_trading_state("HALTED", "breaker", "auto:dd")
    changes = Firm(seeded_store.client, settings).reduce_all("bob", "volatile open")
    assert states(seeded_store) == {"main": "REDUCING", "hedge": "HALTED"}
    assert changes["hedge"] == {"previous": "HALTED", "state": "HALTED"}
    assert seeded_store.read_trading_state("hedge").actor == "auto:dd"  # untouched
    (record,) = firm_records(seeded_store)
    assert record["action"] == "reduce_all" and record["actor"] == "bob"


def test_reduce_all_never_loosens_a_portfolio_without_a_trading_state(seeded_store: Store, settings: Settings) -> None:
    """A missing trading state is HALTED at the gate (fail closed); REDUCE ALL wrote REDUCING over it, and a
    trader's risk-reducing order that was refused went through."""
    seeded_store.client.delete(PortfolioKeys("hedge").trading_state)
    rm = RiskManager(seeded_store.client, "hedge", settings)
    assert "TRADING_HALTED" in [r["code"] for r in rm.check_trade_impact("CCC", 1, "SELL")["reasons"]]
    changes = Firm(seeded_store.client, settings).reduce_all("bob", "volatile open")
    assert changes["hedge"] == {"previous": "MISSING", "state": "MISSING"} and changes["main"]["state"] == "REDUCING"
    assert not seeded_store.client.exists(PortfolioKeys("hedge").trading_state)
    assert "TRADING_HALTED" in [r["code"] for r in rm.check_trade_impact("CCC", 1, "SELL")["reasons"]]
    Firm(seeded_store.client, settings).halt_all("alice", "and now for everyone")  # HALT ALL writes it: HALTED
    assert seeded_store.read_trading_state("hedge").state == "HALTED"


def test_after_halt_all_a_trader_order_to_any_portfolio_is_refused(seeded_store: Store, settings: Settings) -> None:
    Firm(seeded_store.client, settings).halt_all("alice", "drill")
    for pid, ticker in (("main", "AAA"), ("hedge", "CCC")):
        result = RiskManager(seeded_store.client, pid, settings).execute_trade(ticker, 1, "SELL", actor="trader")
        assert result["status"] == "REJECTED"
        assert "TRADING_HALTED" in [r["code"] for r in result["reasons"]]


def test_after_halt_all_a_liquidation_only_order_by_the_automation_is_accepted(
    seeded_store: Store, settings: Settings
) -> None:
    Firm(seeded_store.client, settings).halt_all("alice", "drill")
    result = RiskManager(seeded_store.client, "main", settings).execute_trade(
        "AAA", 100, "SELL", client_order_id="auto-1", actor="auto:margin_critical", intent=OrderIntent.LIQUIDATION,
        automation=AUTOMATION,
    )
    assert result["status"] == "FILLED", result["reasons"]
    assert seeded_store.read_portfolio("main").positions["AAA"].qty == 900


# -- the Firm page -------------------------------------------------------------------------------------------


@pytest.fixture
def app_env(
    redis_server: EmbeddedRedis, seeded_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    config = tmp_path / "riskdesk.toml"
    config.write_text(toml_dumps(TEST_CONFIG), encoding="utf-8")
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("RISKDESK_CONFIG", str(config))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield seeded_store
    st.cache_resource.clear()


def open_firm() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=30.0)
    at.session_state["refresh"] = "Paused"
    at.switch_page("screens/firm.py")
    return at.run()


def metric(at: AppTest, label: str) -> str:
    for m in at.metric:
        if m.label == label:
            return str(m.value)
    raise AssertionError(f"no metric {label!r}; have {[m.label for m in at.metric]}")


def test_firm_page_shows_the_firm_figures_and_a_row_per_portfolio(app_env: Store, settings: Settings) -> None:
    at = open_firm()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Firm"]
    risk = Firm(app_env.client, settings).risk()
    assert metric(at, "Firm VaR (95%, 1 day)") == f"USD {risk.firm_var:,.0f}"
    assert metric(at, "Sum of stand-alone VaRs") == f"USD {risk.standalone_var_sum:,.0f}"
    tables = {tuple(df.value.columns)[0]: df.value for df in at.dataframe}
    assert sorted(tables["portfolio"]["portfolio"]) == ["hedge", "main"]
    assert set(tables["ticker"]["ticker"]) == {"AAA", "BBB", "CCC", "DDD"}
    captions = "\n".join(c.value for c in at.caption)
    assert "No desk-wide action recorded" in captions
    assert "normal VaR on today's covariance at the global limits (95%, 1 day)" in captions  # the yardstick said


def test_halt_all_on_the_firm_page_needs_a_confirmation_then_halts_every_portfolio(app_env: Store) -> None:
    at = open_firm()
    at.text_input(key="firm_reason").input("flash crash")
    at.button(key="firm_HALT ALL").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert states(app_env) == {"main": "ACTIVE", "hedge": "ACTIVE"}  # nothing until confirmed
    assert "HALT ALL: every portfolio of the desk" in "\n".join(w.value for w in at.warning)
    at.button(key="firm_confirm").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert states(app_env) == {"main": "HALTED", "hedge": "HALTED"}
    (record,) = firm_records(app_env)
    assert (record["actor"], record["reason"]) == (local_identity().actor, "flash crash")
    assert "ACTIVE → HALTED" in "\n".join(s.value for s in at.success)
    at.run()
    shown = "\n".join(c.value for c in at.caption)
    assert f"Last desk-wide action: **halt\\_all** by {md(local_identity().actor)}" in shown
    assert "2 of 2 portfolios changed" in shown
    result = RiskManager(app_env.client, "hedge").execute_trade("CCC", 1, "BUY", actor="trader")
    assert "TRADING_HALTED" in [r["code"] for r in result["reasons"]]


def test_cancel_on_the_firm_page_changes_nothing_and_a_missing_reason_is_refused(app_env: Store) -> None:
    at = open_firm()
    at.button(key="firm_REDUCE ALL").click().run()
    at.button(key="firm_cancel").click().run()
    assert states(app_env) == {"main": "ACTIVE", "hedge": "ACTIVE"}
    assert not any("every portfolio of the desk" in w.value for w in at.warning)
    at.button(key="firm_REDUCE ALL").click().run()
    at.button(key="firm_confirm").click().run()  # no reason typed
    assert "reason is required" in "\n".join(e.value for e in at.error)
    assert states(app_env) == {"main": "ACTIVE", "hedge": "ACTIVE"} and firm_records(app_env) == []
