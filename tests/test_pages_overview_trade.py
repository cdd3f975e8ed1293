"""The Overview and Trade pages on a bad day: a held ticker without a usable price is warned about and its
figures marked incomplete (never valued at 0 with a loss of its whole cost); a limit changed since the monitor's
last snapshot is what the gauge and the light measure against at once; the drawdown chart's axis holds every
drawdown drawn; the Firm and Risk tables list the largest risk first.

Real Redis (the session's server, seeded by warmup), the real monitor, Streamlit AppTest for the pages; figures
checked against the delta-normal closed form ``z_c · sqrt(xᵀΣx) · sqrt(bars_per_day · days)`` written out here."""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterator
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import warmup
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings, settings_from_dict
from engine.store import MarketSnapshot, Store
from logic.monitor import Monitor
from logic.snapshot import history_point
from logic.views import overview as ov
from logic.views.common import Desk
from logic.views.firm import firm_view
from logic.views.risk import exposure_view
from logic.views.trade import UNPRICED_REASON, positions_view

from .conftest import TEST_CONFIG, merge
from .e2e_stack import toml_dumps

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
CASH = 1_000_000.0
MAIN = {"AAA": 1000, "BBB": 2000}  # TEST_CONFIG's main book, bought at 100 and 50


# -- helpers -------------------------------------------------------------------------------------------------


def set_prices(store: Store, **prices: float) -> None:
    """A new market version with the given tickers at the given prices (any float: NaN, 0), the rest as stored."""
    snap = store.read_market()
    values = snap.prices.copy()
    for ticker, price in prices.items():
        values[snap.tickers.index(ticker)] = price
    store.write_market(
        MarketSnapshot(
            version=snap.version + 1, ts=snap.ts, tickers=snap.tickers, prices=values, price_ts=snap.price_ts,
            cov=snap.cov,
        )
    )  # fmt: skip


def closed_form_var(store: Store, holdings: dict[str, int], confidence: float = 0.95, days: float = 1.0) -> float:
    """Delta-normal VaR of ``holdings`` at the stored prices (an unusable price counts 0) and covariance."""
    market = store.read_market()
    x = np.zeros(len(market.tickers))
    for ticker, qty in holdings.items():
        i = market.tickers.index(ticker)
        price = float(market.prices[i])
        x[i] = qty * price if math.isfinite(price) and price > 0 else 0.0
    return NormalDist().inv_cdf(confidence) * math.sqrt(390 * days * float(x @ market.cov @ x))


def refresh(store: Store, settings: Settings) -> dict[str, Any]:
    Monitor(store, settings).refresh()
    snapshot = store.read_snapshot("main")
    assert snapshot is not None
    return snapshot


def change_limits(store: Store, settings: Settings, **values: Any) -> None:
    """A limit change on the store (what the Limits page writes), after the monitor's last snapshot."""
    store.change_limits(
        "main", dict(values), actor="alice", reason="cut on a bad day", now=time.time(),
        fallback=settings.limits_for("main"),
    )  # fmt: skip


def open_page(page: str, tab: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=30.0)
    at.session_state["refresh"] = "Paused"
    if tab is not None:
        at.session_state["risk_tab"] = tab
    at.switch_page(f"screens/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, tuple[str, str]]:
    return {m.label: (str(m.value), str(m.proto.delta or "")) for m in at.metric}


def joined(elements: Any) -> str:
    return "\n".join(str(e.value) for e in elements).replace("\\", "")


def charts(at: AppTest) -> list[dict[str, Any]]:
    return [json.loads(e.proto.spec) for e in at.get("plotly_chart")]


def gauge_thresholds(at: AppTest) -> dict[str, float | None]:
    out = {}
    for spec in charts(at):
        trace = spec["data"][0]
        if trace["type"] == "indicator":
            out[trace["title"]["text"]] = (trace["gauge"].get("threshold") or {}).get("value")
    return out


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    for df in at.dataframe:
        if column in df.value.columns:
            return df.value
    raise AssertionError(f"no table with a {column!r} column")


def money(value: float, signed: bool = False) -> str:
    return f"USD {value:{'+' if signed else ''},.0f}"


def light(at: AppTest, area: str) -> str:
    for line in joined(at.markdown).splitlines():
        if f"**{area}**" in line:
            return line
    raise AssertionError(f"no {area} light")


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


# -- 1. an unpriced holding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), 0.0])
def test_the_overview_warns_of_an_unpriced_holding_and_marks_equity_and_var_incomplete(
    app_env: Store, settings: Settings, bad: float
) -> None:
    # Arrange: priced, the page says nothing; then BBB (2,000 shares) loses its price
    refresh(app_env, settings)
    at = open_page("overview")
    assert "Equity" in metrics(at) and "No usable price" not in joined(at.warning)
    set_prices(app_env, BBB=bad)
    refresh(app_env, settings)

    # Act
    at = open_page("overview")

    # Assert: the Risk tab's warning naming the ticker; equity and P&L incomplete, every VaR understated, with the
    # figures of the priced part (cash + 1,000 AAA at 100; the VaR of AAA alone, the closed form)
    warning = joined(at.warning)
    assert "No usable price for BBB" in warning and "understated" in warning
    shown = metrics(at)
    assert shown["Equity — incomplete"][0] == money(CASH + 1000 * 100.0)
    assert "Total P&L — incomplete" in shown and "Equity" not in shown
    assert shown["VaR 95% (1 day) — understated"][0] == money(closed_form_var(app_env, {"AAA": 1000}))
    assert shown["VaR 99% (1 day) — understated"][0] == money(closed_form_var(app_env, {"AAA": 1000}, 0.99))
    assert not [
        label for label in shown if label.startswith(("VaR", "CVaR", "Stressed")) and "understated" not in label
    ]
    assert shown["Daily P&L"][0] == "—"  # the snapshot reports none while a held price is missing

    # the price returns: the marks go
    set_prices(app_env, BBB=50.0)
    refresh(app_env, settings)
    at = open_page("overview")
    assert "No usable price" not in joined(at.warning)
    assert metrics(at)["Equity"][0] == money(CASH + 1000 * 100.0 + 2000 * 50.0)


def test_the_overview_without_a_monitor_sums_the_unrealized_pnl_over_priced_positions_only(
    app_env: Store, settings: Settings
) -> None:
    # AAA up 10 (1,000 shares bought at 100), BBB (2,000 bought at 50) unpriced: +10,000, not 10,000 - 100,000
    set_prices(app_env, AAA=110.0, BBB=float("nan"))
    view = ov.overview_view(Desk(app_env.client, settings), "main")
    assert view.snapshot is None
    assert view.headline["unrealized"] == pytest.approx(1000 * (110.0 - 100.0), abs=1e-9)
    assert view.headline["total_pnl"] == pytest.approx(1000 * (110.0 - 100.0), abs=1e-9)
    assert view.headline["equity"] == pytest.approx(CASH + 1000 * 110.0, abs=1e-9)
    assert view.missing == ("BBB",) and view.incomplete
    assert view.headline["leverage"] is None  # a ratio of the partial equity would understate it
    at = open_page("overview")
    assert "No usable price for BBB" in joined(at.warning)
    assert "Equity — incomplete" in metrics(at)
    assert metrics(at)["Leverage — incomplete"][0] == "-"


@pytest.mark.parametrize("bad", [float("nan"), 0.0])
def test_the_trade_page_does_not_value_an_unpriced_position_and_sums_unrealized_over_priced_ones(
    app_env: Store, settings: Settings, bad: float
) -> None:
    # Arrange: AAA up 10, BBB without a usable price
    set_prices(app_env, AAA=110.0, BBB=bad)

    # Act
    at = open_page("trade")

    # Assert: BBB's value, weight, unrealized P&L and price missing (the dash, with the reason), AAA's as the
    # closed form but its weight missing too (a share of an incomplete equity, as the monitor reports it); the
    # totals over priced positions; a warning naming BBB
    positions = frame_with(at, "unrealized_pnl").set_index("ticker")
    for column in ("last", "market_value", "weight", "unrealized_pnl"):
        assert math.isnan(positions.loc["BBB", column]), column
    assert positions.loc["BBB", "qty"] == 2000
    equity = CASH + 1000 * 110.0
    assert positions.loc["AAA", "market_value"] == pytest.approx(110_000.0)
    assert math.isnan(positions.loc["AAA", "weight"])  # was 110,000 / the priced equity: a partial share
    assert positions.loc["AAA", "unrealized_pnl"] == pytest.approx(10_000.0)
    shown = metrics(at)
    assert shown["Unrealized P&L — incomplete"][0] == money(10_000.0, signed=True)
    assert shown["Equity — incomplete"][0] == money(equity)
    assert "No usable price for BBB" in joined(at.warning)
    table = next(df for df in at.dataframe if "unrealized_pnl" in df.value.columns)
    assert UNPRICED_REASON in str(table.proto)  # the columns' help says why the dash
    view = positions_view(Desk(app_env.client, settings), "main")
    assert view.missing == ("BBB",) and view.totals["unrealized_pnl"] == pytest.approx(10_000.0)


def test_the_trade_page_of_a_fully_priced_book_is_unmarked(app_env: Store) -> None:
    at = open_page("trade")
    shown = metrics(at)
    assert shown["Unrealized P&L"][0] == money(0.0, signed=True) and "Equity" in shown
    assert "No usable price" not in joined(at.warning)
    assert not frame_with(at, "unrealized_pnl")[["market_value", "weight", "unrealized_pnl"]].isna().any().any()


# -- 2. a limit changed since the snapshot ----------------------------------------------------------------------


def cents_up(value: float) -> Decimal:
    return Decimal(repr(value)).quantize(Decimal("0.01"), rounding=ROUND_CEILING)


def test_a_var_limit_cut_is_measured_at_once_at_the_limit_amber_and_a_cent_below_it_red(
    app_env: Store, settings: Settings
) -> None:
    # Arrange: the monitor's snapshot at the 20,000 limit; its VaR (95%, 1 day) is the closed form
    snapshot = refresh(app_env, settings)
    var = closed_form_var(app_env, MAIN)
    measured = snapshot["var"]["utilization"] * snapshot["var"]["limit"]  # the VaR at the limit's basis
    assert measured == pytest.approx(var, rel=1e-9)
    at_limit = cents_up(measured)  # the VaR is at the limit (within the cent): the gate still passes, not red

    for limit, level in ((at_limit, "orange"), (at_limit - Decimal("0.01"), "red")):
        # Act: the limit cut with no monitor tick since
        change_limits(app_env, settings, var_limit=str(limit))
        at = open_page("overview")

        # Assert: the gauge's line and its use are the live limit's, as on the Risk tab; the light follows
        assert app_env.read_snapshot("main")["var"]["limit"] == 20000.0  # no new snapshot
        value, delta = metrics(at)["VaR 95% (1 day)"]
        assert value == money(var) and delta == f"{var / float(limit):.0%} of limit"
        assert gauge_thresholds(at)["VaR 95% (1 day)"] == pytest.approx(float(limit))
        assert f":{level}[●] **VaR**" in light(at, "VaR")
        assert "Limit changed since this snapshot" in joined(at.info) and f"{float(limit):,.0f}" in joined(at.info)
        risk = metrics(open_page("risk", "Exposure & VaR"))
        assert risk["VaR limit"][0] == money(float(limit))


def test_a_stressed_limit_changed_since_the_snapshot_is_drawn_and_used_at_once(
    store: Store, make_settings: Any, redis_server: EmbeddedRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: a stressed-VaR limit of 1,000,000 in the snapshot
    data = merge(TEST_CONFIG, {"limits": {"stressed_var_limit": 1_000_000}})
    settings = settings_from_dict(data)
    warmup.seed(store, settings)
    snapshot = refresh(store, settings)
    stressed = float(snapshot["var"]["stressed_limit_var"])
    config = tmp_path / "riskdesk.toml"
    config.write_text(toml_dumps(data), encoding="utf-8")
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("RISKDESK_CONFIG", str(config))
    st.cache_resource.clear()
    st.cache_data.clear()
    cap = cents_up(stressed)

    for limit, level in ((cap, "orange"), (cap - Decimal("0.01"), "red")):
        # Act: cut to the stressed figure (at it, then a cent below it), no tick since
        change_limits(store, settings, stressed_var_limit=str(limit))
        view = ov.overview_view(Desk(store.client, settings), "main")
        at = open_page("overview")

        # Assert: drawn against the live limit with its use, as the gate measures it
        gauge = view.gauges[-1]
        assert gauge.title == "Stressed VaR 95% (1 day)" and gauge.limit == float(limit)
        assert gauge.of_limit == pytest.approx(stressed / float(limit), rel=1e-12)
        assert gauge_thresholds(at)["Stressed VaR 95% (1 day)"] == pytest.approx(float(limit))
        assert metrics(at)["Stressed VaR 95% (1 day)"][1] == f"{stressed / float(limit):.0%} of limit"
        assert f":{level}[●] **VaR**" in light(at, "VaR")
    st.cache_resource.clear()


def test_a_limit_basis_changed_since_the_snapshot_shows_no_use_of_the_new_limit(
    app_env: Store, settings: Settings
) -> None:
    refresh(app_env, settings)
    change_limits(app_env, settings, var_confidence=0.99)  # the snapshot's figures are at 95%
    view = ov.overview_view(Desk(app_env.client, settings), "main")
    first, *_, last = view.gauges
    assert first.title == "VaR 95% (1 day)" and first.limit is None and first.of_limit is None
    assert last.limit is None and last.of_limit is None
    assert "basis changed since this snapshot" in view.limit_note
    at = open_page("overview")
    assert "of limit" not in "".join(delta for _, delta in metrics(at).values())
    assert "basis changed" in joined(at.info)


def test_an_unchanged_limit_keeps_the_snapshots_own_use_and_says_nothing(app_env: Store, settings: Settings) -> None:
    snapshot = refresh(app_env, settings)
    view = ov.overview_view(Desk(app_env.client, settings), "main")
    assert view.gauges[0].of_limit == snapshot["var"]["utilization"] and view.gauges[0].limit == 20000.0
    assert view.limit_note == ""


# -- 3. the drawdown chart's axis -------------------------------------------------------------------------------


def test_the_drawdown_axis_holds_the_deepest_of_every_series(app_env: Store, settings: Settings) -> None:
    # Arrange: a new day after a bad week (daily -0.5%, weekly -18%, max -25%), one point of an incomplete
    # valuation (null drawdowns) among them
    snapshot = refresh(app_env, settings)
    now = time.time()
    for i, drawdown in enumerate([{"daily": -0.005, "weekly": -0.18, "max": -0.25}] * 4 + [None]):
        s = copy.deepcopy(snapshot)
        s["ts"], s["version"] = now - 100 + i * 10, snapshot["version"] + 1 + i
        s["drawdown"] = drawdown or {"daily": None, "weekly": None, "max": None}
        app_env.record_snapshot("main", s, history_point(s), ts=s["ts"], retention_seconds=86400, max_points=1000)

    # Act
    at = open_page("overview")

    # Assert: the axis reaches a quarter below the max drawdown, the deepest line
    chart = next(c for c in charts(at) if c["layout"].get("title", {}).get("text", "").startswith("Drawdown"))
    low, high = chart["layout"]["yaxis"]["range"]
    assert low == pytest.approx(-0.25 * 1.25) and high == pytest.approx(0.002)


def test_the_drawdown_axis_takes_the_deepest_breaker_or_series_and_skips_nulls() -> None:
    frame = pd.DataFrame(
        {"drawdown.daily": [-0.01, None], "drawdown.weekly": [None, None], "drawdown.max": [-0.04, np.nan]}
    )
    assert ov.drawdown_axis(frame, [-0.05]) == pytest.approx((-0.05 * 1.25, 0.002))  # the breaker is deeper
    assert ov.drawdown_axis(frame, [-0.03]) == pytest.approx((-0.04 * 1.25, 0.002))  # the max series is
    assert ov.drawdown_axis(frame.iloc[1:], []) == (-0.01, 0.002)  # only nulls: the default
    assert ov.drawdown_axis(pd.DataFrame({"drawdown.daily": [0.0]}), []) == (-0.01, 0.002)


# -- 4. largest risk first --------------------------------------------------------------------------------------

BOOKS = {"portfolios": [
    {"id": "a_small", "account_type": "cash", "cash": "1000000.00", "holdings": {"AAA": 10}},
    {"id": "m_twin", "account_type": "cash", "cash": "1000000.00", "holdings": {"CCC": 100}},
    {"id": "b_twin", "account_type": "cash", "cash": "1000000.00", "holdings": {"CCC": 100}},
    {"id": "z_big", "account_type": "cash", "cash": "1000000.00", "holdings": {"AAA": 100, "DDD": 30000}},
]}  # fmt: skip


def test_the_firm_table_lists_the_largest_stand_alone_var_first_ties_by_name(store: Store, make_settings: Any) -> None:
    settings = make_settings(BOOKS)
    warmup.seed(store, settings)
    table = firm_view(Desk(store.client, settings)).portfolios
    expected = {p.id: closed_form_var(store, dict(p.holdings)) for p in settings.portfolios}
    assert list(table["portfolio"]) == ["z_big", "b_twin", "m_twin", "a_small"]
    for pid, var in zip(table["portfolio"], table["VaR (stand-alone)"], strict=True):
        assert var == pytest.approx(expected[pid], rel=1e-9)
    assert list(table["VaR (stand-alone)"]) == sorted(table["VaR (stand-alone)"], reverse=True)


def test_the_risk_exposures_list_the_largest_component_var_first(store: Store, make_settings: Any) -> None:
    settings = make_settings(BOOKS)
    warmup.seed(store, settings)
    exposures = exposure_view(Desk(store.client, settings), "z_big").exposures
    assert list(exposures["ticker"]) == ["DDD", "AAA"]  # alphabetically AAA would come first
    assert exposures["component_var"].is_monotonic_decreasing
    assert exposures["component_var"].sum() == pytest.approx(closed_form_var(store, {"AAA": 100, "DDD": 30000}))
