"""The same figure is measured on the basis the gate enforces: the stressed VaR the alert, the traffic light and the
Overview gauge compare with ``stressed_var_limit`` is the gate's (the limit's confidence and horizon, not the
one-day 99% ``stressed_var99``), a VaR gauge shows a "% of limit" only from ``var.utilization`` (the limit's
confidence and horizon), and every VaR label names its horizon. Real Redis, the real monitor in both paths
(vectorised and per portfolio), the shipped rule from riskdesk.toml, Streamlit AppTest for the pages; figures
checked against the closed form ``z_c · max(sqrt(xᵀΣˢx), m·sqrt(xᵀΣx)) · sqrt(bars_per_day · days)``."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterator
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import warmup
from dashboard import components as ui
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings, settings_from_dict
from engine.store import Store
from logic import analytics
from logic.alerts import build_alert_engine
from logic.monitor import Monitor
from logic.risk_manager import RiskManager
from logic.views import overview as ov
from logic.views.common import Desk

from .alerts_support import T0, snapshot
from .conftest import TEST_CONFIG, merge
from .e2e_stack import toml_dumps

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "dashboard" / "app.py"
HOLDINGS = {"AAA": 1000, "CCC": 500}
STRESSED_CAP = 25_000.0
BOOKS: list[dict[str, Any]] = [
    # VaR limit at 99% / 10 days, the book already above it (the gate refuses a buy)
    {"id": "v10", "account_type": "cash", "cash": "500000.00", "holdings": HOLDINGS,
     "limits": {"var_limit": 15000, "var_confidence": 0.99, "var_horizon_days": 10.0}},
    # stressed-VaR limit at 95% / 10 days: its stressed VaR there is above 25,000, its 99% one-day one below
    {"id": "s10", "account_type": "cash", "cash": "500000.00", "holdings": HOLDINGS,
     "limits": {"var_limit": 1e9, "var_confidence": 0.95, "var_horizon_days": 10.0,
                "stressed_var_limit": STRESSED_CAP}},
    # the same limits under the other VaR methods (the stressed VaR is normal under every method)
    {"id": "s10t", "account_type": "cash", "cash": "500000.00", "holdings": HOLDINGS, "var_method": "student_t",
     "limits": {"var_limit": 1e9, "var_confidence": 0.95, "var_horizon_days": 10.0,
                "stressed_var_limit": STRESSED_CAP}},
    {"id": "s10f", "account_type": "margin", "cash": "500000.00", "holdings": {"AAA": 1000, "CCC": -500},
     "initial_margin": 0.5, "maintenance_margin": 0.25, "var_method": "fhs",
     "limits": {"var_limit": 1e9, "var_confidence": 0.975, "var_horizon_days": 0.5,
                "stressed_var_limit": 9_000}},
    # the defaults (95%, 1 day); its stressed limit is set at run time between its 95% and 99% figures
    {"id": "d1", "account_type": "cash", "cash": "500000.00", "holdings": HOLDINGS},
]  # fmt: skip
SHIPPED = {r["id"]: r for r in tomllib.loads((ROOT / "riskdesk.toml").read_text())["alert_rules"]}
STRESSED_RULE = SHIPPED["stressed_var"]


def book_settings(**extra: Any) -> Settings:
    return settings_from_dict(merge(TEST_CONFIG, {"portfolios": BOOKS, "model": {"fhs_window": 500}, **extra}))


def closed_form(store: Store, settings: Settings, holdings: dict[str, int], confidence: float, days: float) -> float:
    """Stressed VaR in dollars from the stored matrices, computed here: the worse of the crisis matrix and of
    today's covariance at ``stress_vol_multiplier`` times the volatilities, at ``confidence`` over ``days``."""
    snap = store.read_market()
    _, tickers, stressed = store.read_stressed()
    assert tickers == snap.tickers
    x = np.array([holdings.get(t, 0) * snap.prices[i] for i, t in enumerate(snap.tickers)])
    m = settings.model.stress_vol_multiplier
    sigma = max(math.sqrt(x @ stressed @ x), m * math.sqrt(x @ snap.cov @ x))
    return NormalDist().inv_cdf(confidence) * sigma * math.sqrt(settings.model.bars_per_day * days)


def refresh(store: Store, settings: Settings, *, vectorised: bool, engine: Any = None) -> dict[str, Any]:
    name = "fast" if vectorised else "loop"
    monitor = Monitor(
        store, settings, lambda: T0 + 1.0, engine, consumer=name, idle_refresh_seconds=0, vectorised=vectorised
    )
    return monitor.refresh()


@pytest.fixture
def books(store: Store) -> tuple[Store, Settings]:
    settings = book_settings()
    warmup.seed(store, settings, now=T0)
    return store, settings


# -- the snapshot's figures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "per_portfolio"])
def test_the_snapshot_carries_the_gates_stressed_var_at_95_10_days_beside_the_99_one_day_figure(
    books: tuple[Store, Settings], vectorised: bool
) -> None:
    # Arrange: s10's limits are 95% / 10 days, stressed limit 25,000
    store, settings = books
    at_limit = closed_form(store, settings, HOLDINGS, 0.95, 10.0)
    one_day_99 = closed_form(store, settings, HOLDINGS, 0.99, 1.0)
    assert one_day_99 < STRESSED_CAP < at_limit  # the old alert and gauge said "47% of limit" here

    # Act
    var = refresh(store, settings, vectorised=vectorised)["s10"]["var"]

    # Assert: the gate's basis, and its ratio to the limit; the one-day 99% figure still there for its readers
    assert var["stressed_limit_var"] == pytest.approx(at_limit, rel=1e-9)
    assert var["stressed_var99"] == pytest.approx(one_day_99, rel=1e-9)
    assert var["stressed_limit"] == STRESSED_CAP and var["horizon_days"] == 10.0
    assert var["stressed_utilization"] == pytest.approx(at_limit / STRESSED_CAP, rel=1e-9)
    z95, z99 = NormalDist().inv_cdf(0.95), NormalDist().inv_cdf(0.99)
    assert var["stressed_limit_var"] / var["stressed_var99"] == pytest.approx(z95 * math.sqrt(10) / z99, rel=1e-9)
    # the gate refuses for this very figure, and its stress test reports the same number
    rm = RiskManager(store.client, "s10", settings, clock=lambda: T0 + 1.0)
    decision = rm.check_trade_impact("AAA", 100, "BUY")
    assert decision["status"] == "REJECTED"
    assert [r["code"] for r in decision["reasons"]] == ["STRESSED_VAR"]
    assert f"from {at_limit:,.0f} to" in decision["reasons"][0]["message"]
    assert rm.stress_test()["stressed_var"] == pytest.approx(var["stressed_limit_var"], rel=1e-9)
    # a portfolio without a stressed limit: the figure, no limit, no utilization
    plain = refresh(store, settings, vectorised=vectorised)["v10"]["var"]
    assert plain["stressed_limit"] is None and plain["stressed_utilization"] is None
    assert plain["stressed_limit_var"] == pytest.approx(closed_form(store, settings, HOLDINGS, 0.99, 10.0), rel=1e-9)


def test_both_monitor_paths_write_the_same_stressed_figures_under_every_method(books: tuple[Store, Settings]) -> None:
    store, settings = books
    loop = refresh(store, settings, vectorised=False)
    fast = refresh(store, settings, vectorised=True)
    assert sorted(loop) == sorted(fast) == sorted(b["id"] for b in BOOKS)
    fields = ("stressed_var99", "stressed_limit_var", "stressed_limit", "stressed_utilization", "horizon_days")
    for pid in loop:
        want, got = loop[pid]["var"], fast[pid]["var"]
        assert want.keys() == got.keys(), pid
        for name in fields:
            if want[name] is None:
                assert got[name] is None, (pid, name)
            else:
                assert math.isclose(got[name], want[name], rel_tol=1e-12, abs_tol=0.0), (pid, name)
    # the FHS and Student-t books: the stressed VaR at their own limit's basis (normal under every method)
    assert loop["s10t"]["var"]["stressed_limit_var"] == pytest.approx(loop["s10"]["var"]["stressed_limit_var"])
    short = {"AAA": 1000, "CCC": -500}
    assert loop["s10f"]["var"]["stressed_limit_var"] == pytest.approx(
        closed_form(store, settings, short, 0.975, 0.5), rel=1e-9
    )


# -- the shipped rule ------------------------------------------------------------------------------------------


def test_the_shipped_rule_fires_one_unit_over_the_stressed_limit_on_the_gates_figure_not_at_it(
    store: Store,
) -> None:
    assert (STRESSED_RULE["metric"], STRESSED_RULE["op"]) == ("var.stressed_limit_var", ">")
    settings = settings_from_dict(merge(TEST_CONFIG, {"alert_rules": [STRESSED_RULE]}))
    store.change_limits(
        "main", {"stressed_var_limit": "14000"}, actor="alice", reason="test", now=T0,
        fallback=settings.limits_for("main"),
    )  # fmt: skip
    engine = build_alert_engine(store, settings, clock=lambda: T0)
    # exactly at the limit (and a one-day 99% figure far above it, which the gate does not measure): quiet
    engine.evaluate("main", snapshot(now=T0, var__stressed_limit_var=14000.0, var__stressed_var99=1e9), T0)
    assert engine.active_alerts("main") == []
    # one cent over: fires, at the live limit
    engine.evaluate("main", snapshot(now=T0 + 1, var__stressed_limit_var=14000.01, var__stressed_var99=1.0), T0 + 1)
    (alert,) = engine.active_alerts("main")
    assert (alert["rule_id"], alert["threshold"], alert["value"]) == ("stressed_var", 14000.0, 14000.01)


def test_the_shipped_rule_fires_on_the_monitors_snapshot_when_the_gate_refuses_and_not_when_it_passes(
    books: tuple[Store, Settings],
) -> None:
    # Arrange: d1 at the defaults (95%, 1 day), its stressed limit between its 95% and its 99% one-day figures
    store, settings = books
    settings = book_settings(alert_rules=[STRESSED_RULE])
    d95 = closed_form(store, settings, HOLDINGS, 0.95, 1.0)
    d99 = closed_form(store, settings, HOLDINGS, 0.99, 1.0)
    cap = round((d95 + d99) / 2)
    store.change_limits(
        "d1", {"stressed_var_limit": str(cap)}, actor="alice", reason="test", now=T0,
        fallback=settings.limits_for("d1"),
    )  # fmt: skip
    engine = build_alert_engine(store, settings, clock=lambda: T0 + 1.0)

    # Act
    refresh(store, settings, vectorised=True, engine=engine)

    # Assert: s10 (the gate refuses) alerts; d1 (the gate passes a buy, its 99% one-day figure above the limit)
    # does not
    fired = {a["portfolio_id"] for pid in ("s10", "d1") for a in engine.active_alerts(pid)}
    assert fired == {"s10"}
    clock = lambda: T0 + 1.0  # noqa: E731
    assert (
        RiskManager(store.client, "s10", settings, clock=clock).check_trade_impact("AAA", 1, "BUY")["status"]
        == "REJECTED"
    )
    assert (
        RiskManager(store.client, "d1", settings, clock=clock).check_trade_impact("AAA", 1, "BUY")["status"]
        == "APPROVED"
    )


# -- traffic lights --------------------------------------------------------------------------------------------


def test_the_var_light_covers_stressed_var_at_the_limit_red_one_unit_over_it_only() -> None:
    limits = settings_from_dict(merge(TEST_CONFIG, {"limits": {"stressed_var_limit": 14000}})).limits

    def light(value: float) -> list[tuple[str, str, str]]:
        snap = snapshot(var__stressed_limit_var=value, var__stressed_var99=1e9, var__utilization=0.1)
        return [b for b in analytics.limit_breaches(snap, limits) if "stressed" in b[2]]

    ((area, level, text),) = light(14000.0)
    assert (area, level) == ("VaR", "amber")  # at the limit: the gate still passes (after > limit refuses)
    assert "stressed_var_limit" in text
    assert light(14000.01)[0][1] == "red"
    assert light(11199.99)[0][1] == "green" and light(11200.0)[0][1] == "amber"  # 80% of it
    no_cap = settings_from_dict(TEST_CONFIG).limits
    assert not [
        b for b in analytics.limit_breaches(snapshot(var__stressed_limit_var=1e9), no_cap) if "stressed" in b[2]
    ]
    lights = {li.area: li.level for li in analytics.traffic_lights((), snapshot(var__stressed_limit_var=14000.01),
                                                                   "main", (), limits)}  # fmt: skip
    assert lights["VaR"] == "red"


# -- the Overview's gauges ------------------------------------------------------------------------------------


def test_without_a_snapshot_the_overview_labels_the_gates_var_with_its_horizon(books: tuple[Store, Settings]) -> None:
    store, settings = books
    desk = Desk(store.client, settings, lambda: T0 + 1.0)
    view = ov.overview_view(desk, "v10")
    assert view.snapshot is None
    (var, cvar) = view.gauges
    gate = RiskManager(store.client, "v10", settings, clock=lambda: T0 + 1.0).check_trade_impact("AAA", 1, "BUY")
    assert var.title == "VaR 99% (10 days)" and var.value == pytest.approx(gate["var_before"], rel=1e-12)
    assert var.limit == 15000.0 and var.of_limit == pytest.approx(gate["var_before"] / 15000.0, rel=1e-12)
    assert cvar.title == "CVaR 99% (10 days)" and cvar.of_limit is None  # CVaR is no use of a VaR limit


@pytest.fixture
def app_env(
    redis_server: EmbeddedRedis, books: tuple[Store, Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Store, Settings]]:
    config = tmp_path / "riskdesk.toml"
    data = merge(TEST_CONFIG, {"portfolios": BOOKS, "model": {"fhs_window": 500}})
    config.write_text(toml_dumps(data), encoding="utf-8")
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("RISKDESK_CONFIG", str(config))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield books
    st.cache_resource.clear()


def open_page(page: str, pid: str, tab: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=30.0)
    at.session_state["refresh"] = "Paused"
    at.session_state[ui.PORTFOLIO_KEY] = pid
    if tab is not None:
        at.session_state["risk_tab"] = tab
    at.switch_page(f"screens/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, tuple[str, str | None]]:
    return {m.label: (str(m.value), m.proto.delta or None) for m in at.metric}


def gauge_limits(at: AppTest) -> dict[str, float | None]:
    import json

    specs = [json.loads(e.proto.spec) for e in at.get("plotly_chart")]
    out = {}
    for s in specs:
        trace = s["data"][0]
        if trace["type"] == "indicator":
            out[trace["title"]["text"]] = (trace["gauge"].get("threshold") or {}).get("value")
    return out


def money(value: float) -> str:
    return f"USD {value:,.0f}"


def test_the_overview_gauges_show_a_limits_use_only_on_the_gates_basis(app_env: tuple[Store, Settings]) -> None:
    # Arrange: the monitor's snapshots of v10 (VaR limit 15,000 at 99% / 10 days) and s10 (stressed limit at 95%
    # / 10 days)
    store, settings = app_env
    snaps = refresh(store, settings, vectorised=True)

    # Act / Assert: v10, over its VaR limit (the gate refuses): 112% of it, not "36%" from the one-day 99% VaR
    v = snaps["v10"]["var"]
    at = open_page("overview", "v10")
    shown = metrics(at)
    value, delta = shown["VaR 99% (10 days)"]
    assert value == money(v["utilization"] * 15000.0) and delta == f"{v['utilization']:.0%} of limit"
    assert v["utilization"] > 1.0 and delta == "112% of limit"
    assert shown["VaR 95% (1 day)"] == (money(v["var95"]), None)
    assert shown["VaR 99% (1 day)"] == (money(v["var99"]), None)
    assert shown["Stressed VaR 99% (10 days)"] == (money(v["stressed_limit_var"]), None)  # no stressed limit
    lines = gauge_limits(at)
    assert lines == {"VaR 99% (10 days)": 15000.0, "VaR 95% (1 day)": None, "VaR 99% (1 day)": None,
                     "Stressed VaR 99% (10 days)": None}  # fmt: skip

    # s10: the stressed gauge on the gate's figure, above the limit
    s = snaps["s10"]["var"]
    at = open_page("overview", "s10")
    shown = metrics(at)
    at_limit = closed_form(store, settings, HOLDINGS, 0.95, 10.0)
    value, delta = shown["Stressed VaR 95% (10 days)"]
    assert value == money(at_limit) and delta == f"{at_limit / STRESSED_CAP:.0%} of limit" == "106% of limit"
    assert delta == f"{s['stressed_utilization']:.0%} of limit"
    assert gauge_limits(at)["Stressed VaR 95% (10 days)"] == STRESSED_CAP
    assert "% of limit only where the figure is at the limit's confidence and horizon" in "".join(
        str(c.value) for c in at.caption
    )


def test_at_the_default_basis_the_overview_shows_the_limit_gauge_once(app_env: tuple[Store, Settings]) -> None:
    store, settings = app_env
    v = refresh(store, settings, vectorised=True)["d1"]["var"]
    at = open_page("overview", "d1")
    shown = metrics(at)
    assert shown["VaR 95% (1 day)"] == (money(v["var95"]), f"{v['utilization']:.0%} of limit")
    assert shown["VaR 99% (1 day)"] == (money(v["var99"]), None)
    assert shown["CVaR 95% (1 day)"] == (money(v["cvar95"]), None)
    assert list(gauge_limits(at)) == ["VaR 95% (1 day)", "VaR 99% (1 day)", "CVaR 95% (1 day)",
                                      "Stressed VaR 95% (1 day)"]  # fmt: skip


# -- the Stress tab ----------------------------------------------------------------------------------------------


def test_the_stress_tab_names_the_horizon_of_every_var_figure(app_env: tuple[Store, Settings]) -> None:
    store, settings = app_env
    at = open_page("risk", "s10", tab="Stress")
    shown = metrics(at)
    assert shown["Stressed VaR 95% (10 days)"][0] == money(closed_form(store, settings, HOLDINGS, 0.95, 10.0))
    assert shown["Stressed VaR 99% (10 days)"][0] == money(closed_form(store, settings, HOLDINGS, 0.99, 10.0))
    gate = RiskManager(store.client, "s10", settings, clock=lambda: T0 + 1.0).check_trade_impact("AAA", 1, "BUY")
    assert shown["VaR 95% (10 days)"][0] == money(gate["var_before"])
    assert not any(label in shown for label in ("VaR 95%", "Stressed VaR 95%", "Stressed VaR 99%"))


# -- the Market data light follows the gate's live stale_price_seconds ---------------------------------------------

STALE_RULE = SHIPPED["stale_market_data"]


def shipped_stale_rule_settings(**extra: Any) -> Settings:
    return book_settings(alert_rules=[STALE_RULE], **extra)


def test_the_market_data_light_turns_at_the_live_stale_limit_exactly_where_the_gate_starts_refusing(
    books: tuple[Store, Settings],
) -> None:
    # Arrange: a risk manager cuts d1's stale-price limit to 45 s on the Limits page; the shipped rule still says
    # 150 s. The market was written at T0 (warmup.seed), so at T0 + age every price and the data are age s old.
    store, _ = books
    settings = shipped_stale_rule_settings()
    assert (STALE_RULE["metric"], STALE_RULE["op"], STALE_RULE["threshold"]) == ("data.market_age_seconds", ">", 150)
    store.change_limits(
        "d1", {"stale_price_seconds": 45.0}, actor="alice", reason="test", now=T0,
        fallback=settings.limits_for("d1"),
    )  # fmt: skip
    live = store.limits_or("d1", settings.limits_for("d1"))
    assert live.stale_price_seconds == 45.0

    def at_age(age: float) -> tuple[analytics.Light, set[str]]:
        clock = lambda: T0 + age  # noqa: E731
        snap = Monitor(store, settings, clock, consumer=f"m{age}", idle_refresh_seconds=0).refresh()["d1"]
        assert snap["data"]["market_age_seconds"] == age  # the monitor's figure the light reads
        light = {li.area: li for li in analytics.traffic_lights(settings.alert_rules, snap, "d1", (), live)}
        decision = RiskManager(store.client, "d1", settings, clock=clock).check_trade_impact("AAA", 1, "BUY")
        return light["Market data"], {r["code"] for r in decision["reasons"]}

    # Act / Assert: exactly at the limit the gate passes (it refuses abs(age) > limit) and the light warns amber
    light, codes = at_age(45.0)
    assert "STALE_PRICE" not in codes and light.level == "amber"
    assert light.detail == "market data 45.0 s old against the gate's stale_price_seconds (45.0 s)"
    # one second over: the gate refuses every order for a stale price and the light is red (it was green, "1
    # rule(s) clear", because the shipped rule waits for 150 s)
    light, codes = at_age(46.0)
    assert "STALE_PRICE" in codes and light.level == "red"
    assert light.detail == "market data 46.0 s old against the gate's stale_price_seconds (45.0 s)"
    # well under the limit: green
    light, codes = at_age(10.0)
    assert "STALE_PRICE" not in codes and light.level == "green"


def test_the_market_data_light_is_amber_from_the_documented_fraction_of_the_stale_limit() -> None:
    limits = settings_from_dict(merge(TEST_CONFIG, {"limits": {"stale_price_seconds": 50}})).limits

    def level(age: float) -> str:
        snap = snapshot(data__market_age_seconds=age)
        return next(lvl for area, lvl, _ in analytics.limit_breaches(snap, limits) if area == "Market data")

    edge = analytics.LIMIT_AMBER_FRACTION * 50.0  # 40 s
    assert (level(edge - 0.01), level(edge), level(50.0), level(50.01), level(51.0)) == (
        "green", "amber", "amber", "red", "red",
    )  # fmt: skip
    # a figure the light cannot read (no snapshot field) gives no Market data limit light at all
    assert not [b for b in analytics.limit_breaches({"var": {}}, limits) if b[0] == "Market data"]


def test_a_stale_limit_raised_above_the_rules_150_s_leaves_the_light_to_the_rule_which_still_fires() -> None:
    # the opposite mismatch: the gate would pass a 200 s old price (limit 300 s), the shipped rule alerts at 150 s.
    # The limit part of the light follows the gate (green: 200 < 80% of 300), the rule's breach turns it red.
    settings = shipped_stale_rule_settings(limits={"stale_price_seconds": 300})
    limits = settings.limits
    snap = snapshot(data__market_age_seconds=200.0)
    (market,) = [b for b in analytics.limit_breaches(snap, limits) if b[0] == "Market data"]
    assert market[1] == "green"
    light = {li.area: li for li in analytics.traffic_lights(settings.alert_rules, snap, "main", (), limits)}
    assert light["Market data"].level == "red"  # the rule is HIGH
    assert light["Market data"].detail.startswith(f"{STALE_RULE['description']}: data.market_age_seconds = 200 > 150")


# -- the lights' detail: the figure and the limit in one unit ------------------------------------------------------


def test_the_limit_lights_state_the_figure_and_the_limit_in_the_same_unit() -> None:
    limits = settings_from_dict(
        merge(TEST_CONFIG, {"limits": {"var_limit": 1000, "max_concentration": 0.3, "stressed_var_limit": 14000}})
    ).limits
    snap = snapshot(
        var__utilization=11.38, var__limit=1000.0, var__stressed_limit_var=14000.0,
        concentration__largest_share=0.35, concentration__largest_ticker="AAA",
    )  # fmt: skip
    texts = {(area, level): text for area, level, text in analytics.limit_breaches(snap, limits)}
    # VaR 11.38 x 1,000 = 11,380: no "var.utilization = 11.38 against the gate's var_limit (1)"
    assert texts[("VaR", "red")] == "VaR USD 11,380 at 1,138.0% of the gate's var_limit (USD 1,000)"
    assert texts[("VaR", "amber")] == (
        "stressed VaR USD 14,000 against the gate's stressed_var_limit (USD 14,000) (100.0% of it)"
    )
    assert texts[("Concentration", "red")] == (
        "largest position (AAA) at 35.0% of equity against the gate's max_concentration (30.0%)"
    )
    # the desk's currency; one tenth of a percent over the limit reads as over it (red), in money too
    over = snapshot(var__utilization=1.001, var__limit=60000.0)
    (var,) = [t for a, lvl, t in analytics.limit_breaches(over, limits, "EUR") if a == "VaR" and lvl == "red"]
    assert var == "VaR EUR 60,060 at 100.1% of the gate's var_limit (EUR 60,000)"
    # without the measured limit in the snapshot: the live one
    bare = {"var": {"utilization": 0.5}, "concentration": {"largest_share": 0.1}}
    assert ("VaR", "green", "VaR at 50.0% of the gate's var_limit (USD 1,000)") in analytics.limit_breaches(
        bare, limits
    )


def test_the_overview_light_states_the_var_in_money_against_the_live_limit(app_env: tuple[Store, Settings]) -> None:
    # v10 is over its 15,000 VaR limit at 99% / 10 days (the gate refuses a buy)
    store, settings = app_env
    v = refresh(store, settings, vectorised=True)["v10"]["var"]
    at = open_page("overview", "v10")
    captions = [str(c.value) for c in at.caption]
    pct = f"{v['utilization'] * 100:,.1f}%"
    want = f"VaR USD {v['utilization'] * 15000.0:,.0f} at {pct} of the gate's var\\_limit (USD 15,000)"  # markdown
    assert v["utilization"] > 1.0 and want in captions, captions
    assert not any("var.utilization =" in c for c in captions)


# -- the kill switch's radio goes back to HALTED without a widget-state warning --------------------------------------


def test_the_kill_switch_radio_goes_back_to_halted_after_a_change_without_a_widget_state_warning(
    app_env: tuple[Store, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    from streamlit.elements.lib import policies

    # Streamlit warns once per process (with a stack trace) when a widget given a default (index=) also had its
    # value set through the session state: let it warn again here, and record what it logs
    monkeypatch.setattr(policies, "_shown_default_value_warning", False)
    logged: list[logging.LogRecord] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record)

    handler = Recorder(logging.WARNING)
    policies._LOGGER.addHandler(handler)
    store, _ = app_env
    try:
        at = open_page("system", "d1")
        assert at.radio(key="ts_new_state").value == "HALTED"  # the form's default on first sight
        for state, confirm in (("REDUCING", False), ("ACTIVE", True)):  # a stricter change, then a lift
            at.radio(key="ts_new_state").set_value(state)
            at.text_input(key="ts_reason").input(f"to {state}")
            at = at.button(key="FormSubmitter:trading_state_form-Apply").click().run()
            if confirm:
                at = at.button(key="ts_confirm").click().run()
            assert not at.exception, [e.value for e in at.exception]
            assert store.read_trading_state("d1").state == state
            assert at.radio(key="ts_new_state").value == "HALTED"  # back to the default after each change
            assert at.text_input(key="ts_reason").value == ""
    finally:
        policies._LOGGER.removeHandler(handler)
    assert [r.getMessage() for r in logged] == []


def test_the_market_data_light_ages_with_the_snapshot_when_the_monitor_stops_too(
    books: tuple[Store, Settings],
) -> None:
    # Arrange: the monitor snapshots d1 at T0 + 1 (prices 1 s old), then stops with the feed; stale limit 45 s
    store, _ = books
    settings = shipped_stale_rule_settings()
    store.change_limits(
        "d1", {"stale_price_seconds": 45.0}, actor="alice", reason="test", now=T0,
        fallback=settings.limits_for("d1"),
    )  # fmt: skip
    snap = Monitor(store, settings, lambda: T0 + 1.0, consumer="once", idle_refresh_seconds=0).refresh()["d1"]
    assert snap["data"]["market_age_seconds"] == 1.0

    def light_at(now: float) -> analytics.Light:
        desk = Desk(store.client, settings, clock=lambda: now)
        view = ov.overview_view(desk, "d1")
        return next(li for li in view.lights if li.area == "Market data")

    # Act / Assert: the prices are 1 + (now - (T0 + 1)) s old, as the gate measures them: red one second past 45 s
    assert light_at(T0 + 45.0).level == "amber"  # 45 s old: exactly at the limit
    assert light_at(T0 + 46.0).level == "red"
    assert light_at(T0 + 1000.0).level == "red"  # it stayed green, "market data 1.0 s old"
