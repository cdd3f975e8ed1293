"""Performance read-outs (logic/performance.py, logic/views/performance.py, the Performance page): ratios of the
equity history against closed forms and loops written here, annualisation from the real spacing of the points,
the HHI bands at their boundaries, LVaR against costs computed here, and the Monte Carlo fan."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import streamlit as st
from scipy.stats import norm

from engine import math_logic
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings
from engine.store import Store
from logic import performance
from logic.performance import ConcentrationBand, hhi_band, performance_stats
from logic.views import Desk, performance_view

from .test_dashboard import (
    _point_app_at,
    arr,
    assert_clean,
    charts,
    joined,
    metric,
    money,
    monitor_snapshots,
    open_page,
    run_bars,
)

DAY = performance.SECONDS_PER_YEAR / 252
"""Mean spacing of business-daily closes: 252 a year (weekends and holidays skipped)."""


def equity_from(returns: list[float], start: float = 100.0) -> np.ndarray:
    out = [start]
    for r in returns:
        out.append(out[-1] * (1.0 + r))
    return np.array(out)


def worst_drawdown(equity: np.ndarray) -> float:
    """Loop form of the maximum drawdown, written independently of math_logic."""
    peak, worst = equity[0], 0.0
    for e in equity:
        peak = max(peak, e)
        worst = min(worst, e / peak - 1.0)
    return float(worst)


# -- ratios against closed forms -----------------------------------------------------------------------------


def test_ratios_of_alternating_daily_returns_equal_their_closed_forms() -> None:
    # Arrange: returns a, b, a, b, ... one a day (the mean and population deviation have closed forms)
    a, b, n = -0.01, 0.02, 20
    returns = [a, b] * (n // 2)
    equity = equity_from(returns)
    ts = 1_700_000_000.0 + DAY * np.arange(n + 1)
    # Act
    s = performance_stats(ts, equity)
    # Assert
    mean, std = (a + b) / 2, abs(a - b) / 2
    assert s.observations == n and s.spacing_seconds == pytest.approx(DAY, rel=1e-12)
    assert s.periods_per_year == pytest.approx(252, rel=1e-9)
    assert s.sharpe.value == pytest.approx(mean / std * math.sqrt(252), rel=1e-12)
    assert s.sortino.value == pytest.approx(mean / math.sqrt(a * a / 2) * math.sqrt(252), rel=1e-12)
    assert s.kelly.value == pytest.approx(mean / std**2, rel=1e-12)
    cagr = (equity[-1] / equity[0]) ** (252 / n) - 1.0
    assert s.annual_return.value == pytest.approx(cagr, rel=1e-12)
    assert s.calmar.value == pytest.approx(cagr / abs(worst_drawdown(equity)), rel=1e-12)
    assert s.max_drawdown.value == pytest.approx(worst_drawdown(equity), rel=1e-12)
    assert s.annual_volatility.value == pytest.approx(std * math.sqrt(252), rel=1e-12)
    assert s.reason is None


def test_two_returns_are_enough_and_give_the_two_point_closed_form() -> None:
    r1, r2 = 0.03, -0.01
    s = performance_stats([0.0, DAY, 2 * DAY], equity_from([r1, r2]))
    assert s.observations == 2
    assert s.sharpe.value == pytest.approx((r1 + r2) / abs(r1 - r2) * math.sqrt(252), rel=1e-12)
    assert s.kelly.value == pytest.approx(((r1 + r2) / 2) / ((r1 - r2) / 2) ** 2, rel=1e-12)
    assert s.max_drawdown.value == pytest.approx(r2, rel=1e-12)


def test_one_return_is_too_few_and_every_ratio_says_why() -> None:
    s = performance_stats([0.0, DAY], [100.0, 101.0])
    assert s.observations == 1
    assert all(r.value is None for r in s.ratios)
    assert s.reason is not None and "1 return(s)" in s.reason and "at least 2" in s.reason
    assert s.sharpe.reason == s.reason and s.sharpe.text() == "n/a"
    empty = performance_stats([], [])
    assert empty.observations == 0 and empty.start_ts is None and empty.sharpe.value is None


def test_constant_returns_have_no_sharpe_sortino_calmar_or_kelly_but_a_closed_form_growth() -> None:
    r, n = 0.001, 30
    s = performance_stats(DAY * np.arange(n + 1), equity_from([r] * n))
    assert s.sharpe.value is None and "do not vary" in (s.sharpe.reason or "")
    assert s.kelly.value is None and "do not vary" in (s.kelly.reason or "")
    assert s.sortino.value is None and "no return below 0" in (s.sortino.reason or "")
    assert s.calmar.value is None and s.calmar.reason == "no drawdown in the window"
    assert s.annual_return.value == pytest.approx((1 + r) ** 252 - 1, rel=1e-9)
    assert s.annual_volatility.value == 0.0 and s.max_drawdown.value == 0.0


def test_a_minute_spaced_series_annualises_with_1440_periods_a_day() -> None:
    returns = [0.0002, -0.0001, 0.0003, -0.0002, 0.0001]
    equity = equity_from(returns)
    daily = performance_stats(DAY * np.arange(6), equity)
    minute = performance_stats(60.0 * np.arange(6), equity)
    assert daily.periods_per_year == pytest.approx(252, rel=1e-15)
    assert minute.periods_per_year == performance.SECONDS_PER_YEAR / 60.0  # around the clock: 525 960
    r = np.array(returns)
    assert minute.sharpe.value == pytest.approx(r.mean() / r.std() * math.sqrt(525_960), rel=1e-12)
    assert daily.sharpe.value is not None and daily.sortino.value is not None
    assert minute.sharpe.value == pytest.approx(daily.sharpe.value * math.sqrt(DAY / 60.0), rel=1e-12)
    assert minute.sortino.value == pytest.approx(daily.sortino.value * math.sqrt(DAY / 60.0), rel=1e-12)
    assert minute.kelly.value == pytest.approx(daily.kelly.value, rel=1e-12)  # Kelly has no time unit


def test_weekday_closes_annualise_from_their_calendar_span_not_an_assumed_bar() -> None:
    # 52 weeks of Monday-Friday closes: 260 returns over 364 calendar days (weekend gaps included)
    days = np.array([w * 7 + d for w in range(52) for d in range(5)] + [364], dtype=np.float64)
    rng = np.random.default_rng(3)
    equity = equity_from(list(rng.normal(0.0, 0.01, days.size - 1)))
    s = performance_stats(days * 86_400.0, equity)
    assert s.observations == 260
    assert s.periods_per_year == pytest.approx(260 * 365.25 / 364, rel=1e-12)


def test_irregular_spacing_uses_the_mean_spacing_of_the_real_timestamps() -> None:
    ts = [0.0, 60.0, 180.0, 200.0, 600.0]  # a gap: the monitor was down for a while
    s = performance_stats(ts, [100.0, 100.5, 100.2, 100.4, 100.1])
    assert s.spacing_seconds == 150.0
    assert s.periods_per_year == pytest.approx(performance.SECONDS_PER_YEAR / 150.0, rel=1e-15)
    assert s.annual_return.value is None or math.isfinite(s.annual_return.value)


def test_a_window_too_short_to_annualise_says_so_instead_of_overflowing() -> None:
    s = performance_stats([0.0, 1.0, 2.0], [100.0, 150.0, 140.0])
    assert s.calmar.value is None and "overflows" in (s.calmar.reason or "")
    assert s.sharpe.value is not None  # the other ratios still stand


def test_equity_at_or_below_zero_or_no_elapsed_time_gives_a_reason() -> None:
    assert "equity was <= 0" in (performance_stats([0, 1, 2], [100.0, 0.0, 5.0]).reason or "")
    assert "same time" in (performance_stats([5, 5, 5], [100.0, 101.0, 99.0]).reason or "")
    with pytest.raises(ValueError, match="time order"):
        performance_stats([2, 1, 3], [100.0, 101.0, 99.0])


def test_equity_points_sorts_by_time_and_skips_points_without_equity() -> None:
    points: list[dict[str, Any]] = [
        {"ts": 30.0, "equity": 103.0},
        {"ts": 10.0, "equity": 101.0},
        {"ts": 20.0, "equity": None},
        {"ts": 25.0, "equity": float("nan")},
        {"ts": 5.0, "equity": 100.0},
    ]
    ts, equity = performance.equity_points(points)
    assert ts.tolist() == [5.0, 10.0, 30.0] and equity.tolist() == [100.0, 101.0, 103.0]


def test_periods_per_year_refuses_a_non_positive_spacing() -> None:
    with pytest.raises(ValueError, match="spacing_seconds"):
        performance.periods_per_year(0.0)


# -- concentration bands -------------------------------------------------------------------------------------


def test_hhi_bands_change_exactly_at_the_doj_ftc_thresholds() -> None:
    assert hhi_band(0.0) is ConcentrationBand.LOW
    assert hhi_band(math.nextafter(0.15, 0.0)) is ConcentrationBand.LOW
    assert hhi_band(0.15) is ConcentrationBand.MODERATE
    assert hhi_band(0.25) is ConcentrationBand.MODERATE
    assert hhi_band(math.nextafter(0.25, 1.0)) is ConcentrationBand.HIGH
    assert hhi_band(1.0) is ConcentrationBand.HIGH
    with pytest.raises(ValueError):
        hhi_band(-0.1)


def test_concentration_of_books_on_the_band_boundaries() -> None:
    four_equal = performance.concentration([10.0, -10.0, 10.0, 10.0])  # HHI = 4 · (1/4)² = 0.25 exactly
    assert four_equal.hhi == 0.25 and four_equal.band is ConcentrationBand.MODERATE
    assert four_equal.equivalent_positions == 4.0 and four_equal.largest_share == 0.25
    ten_equal = performance.concentration([1.0] * 10)  # 0.1
    assert ten_equal.band is ConcentrationBand.LOW
    two = performance.concentration([3.0, 1.0])  # 0.75² + 0.25² = 0.625
    assert two.hhi == pytest.approx(0.625) and two.band is ConcentrationBand.HIGH
    assert performance.concentration([]).equivalent_positions is None


# -- liquidity-adjusted VaR ----------------------------------------------------------------------------------


def independent_cost(qty: float, price: float, bps: float, adv: float, vol: float, k: float) -> float:
    """Half the quoted spread on every share plus k · σ_d · sqrt(|q| / ADV) of the notional."""
    q = abs(qty)
    return price * bps / 1e4 / 2 * q + k * vol * math.sqrt(q / adv) * price * q


def test_lvar_is_the_var_plus_the_cost_of_liquidating_every_position(settings: Settings) -> None:
    assets = settings.universe.assets
    tickers = ("AAA", "BBB", "CCC", "ZZZ")  # ZZZ: not in the universe, the default liquidity
    qty = [1000.0, 0.0, -300.0, 50.0]
    prices = [101.0, 49.0, 210.0, 7.0]
    vols = [0.012, 0.02, 0.015, 0.05]
    k = 0.1
    costs = performance.liquidation_costs(tickers, qty, prices, vols, assets, k)
    assert [c.ticker for c in costs] == ["AAA", "CCC", "ZZZ"]  # a flat position costs nothing to liquidate
    expected = [
        independent_cost(1000, 101.0, 2.0, 1_000_000, 0.012, k),
        independent_cost(-300, 210.0, 2.0, 500_000, 0.015, k),
        independent_cost(50, 7.0, 2.0, 5_000_000, 0.05, k),  # the settings' default ADV and spread
    ]
    assert [c.cost for c in costs] == pytest.approx(expected, rel=1e-12)
    lvar = performance.LiquidityAdjustedVar(var={0.95: 10_000.0, 0.99: 14_000.0}, costs=costs)
    assert lvar.cost == pytest.approx(sum(expected), rel=1e-12)
    assert lvar.lvar(0.95) == pytest.approx(10_000.0 + sum(expected), rel=1e-12)
    assert lvar.lvar(0.99) == pytest.approx(14_000.0 + sum(expected), rel=1e-12)


# -- Monte Carlo fan -----------------------------------------------------------------------------------------


def test_fan_bands_are_ordered_and_start_at_the_current_value() -> None:
    cov = np.array([[1e-6, 3e-7, 0.0], [3e-7, 4e-6, -1e-7], [0.0, -1e-7, 2e-6]])
    fan = performance.fan_chart([50_000.0, -20_000.0, 30_000.0], cov, 250_000.0, 390.0, 390.0, seed=3)
    levels = np.array([fan.bands[q] for q in performance.FAN_PERCENTILES])
    assert levels.shape == (7, performance.FAN_STEPS + 1)
    assert (np.diff(levels, axis=0) >= 0).all()  # 1% <= 5% <= ... <= 99% at every step
    assert (levels[:, 0] == 250_000.0).all() and fan.median[0] == 250_000.0
    assert (levels[-1, 1:] > levels[0, 1:]).all()  # the fan opens after step 0
    assert fan.days[0] == 0.0 and fan.days[-1] == pytest.approx(1.0) and fan.horizon_days == 1.0


def test_the_monte_carlo_paths_are_reproducible_with_a_seed() -> None:
    cov = np.array([[2e-6, 1e-7], [1e-7, 3e-6]])
    one = math_logic.monte_carlo_value_paths([1e5, 2e5], cov, 1e6, 10, 39.0, 300, seed=7)
    two = math_logic.monte_carlo_value_paths([1e5, 2e5], cov, 1e6, 10, 39.0, 300, seed=7)
    other = math_logic.monte_carlo_value_paths([1e5, 2e5], cov, 1e6, 10, 39.0, 300, seed=8)
    assert np.array_equal(one, two) and not np.array_equal(one, other)
    assert one.shape == (300, 11) and (one[:, 0] == 1e6).all()


def test_one_asset_paths_have_the_lognormal_percentiles() -> None:
    # V_T = V_0 + x (exp(σ sqrt(h) Z) - 1) is increasing in Z for x > 0: its p-th percentile maps back to z_p.
    sigma2, h, x, v0 = 4e-6, 390.0, 80_000.0, 100_000.0
    paths = math_logic.monte_carlo_value_paths([x], [[sigma2]], v0, 8, h / 8, 40_000, seed=1)
    z = np.log1p((paths[:, -1] - v0) / x) / math.sqrt(sigma2 * h)
    for p in (0.01, 0.05, 0.5, 0.95, 0.99):
        assert np.quantile(z, p) == pytest.approx(norm.ppf(p), abs=0.05)


def test_monte_carlo_paths_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="steps"):
        math_logic.monte_carlo_value_paths([1.0], [[1e-4]], 1.0, 0)
    with pytest.raises(ValueError, match="n_paths"):
        math_logic.monte_carlo_value_paths([1.0], [[1e-4]], 1.0, 3, n_paths=0)
    with pytest.raises(ValueError, match="bars_per_step"):
        math_logic.monte_carlo_value_paths([1.0], [[1e-4]], 1.0, 3, bars_per_step=0.0)


# -- the view on a real store --------------------------------------------------------------------------------


def daily_history(store: Store, pid: str, returns: list[float], t0: float) -> tuple[np.ndarray, list[dict]]:
    """History points one day apart, written through the monitor's own store call."""
    equity = equity_from(returns, 1_000_000.0)
    points = []
    for i, e in enumerate(equity):
        point = {"ts": t0 + i * DAY, "equity": float(e), "var.var95": 1000.0 + i, "var.var99": 1500.0 + i}
        store.record_snapshot(
            pid, {"version": i}, point, ts=t0 + i * DAY, retention_seconds=365 * DAY, max_points=10_000
        )
        points.append(point)
    return equity, points


def test_the_view_computes_the_ratios_from_the_stored_history_at_its_real_spacing(
    seeded_store: Store, settings: Settings, redis_client: Any
) -> None:
    returns = [0.01, -0.005, 0.004, -0.002, 0.006, -0.003]
    t0 = 1_700_000_000.0
    equity, points = daily_history(seeded_store, "main", returns, t0)
    now = t0 + len(returns) * DAY
    desk = Desk(redis_client, settings, clock=lambda: now)
    view = performance_view(desk, "main", 7 * DAY)
    s = view.stats
    assert s.observations == len(returns) and s.periods_per_year == pytest.approx(252, rel=1e-9)
    r = np.array(returns)
    expected = r.mean() / math.sqrt(((r - r.mean()) ** 2).mean()) * math.sqrt(252)
    assert s.sharpe.value == pytest.approx(expected, rel=1e-9)
    assert view.var_trend["var95"].tolist() == [p["var.var95"] for p in points]
    assert view.var_trend["var99"].tolist() == [p["var.var99"] for p in points]
    assert (view.var_trend["limit"] == float(settings.limits_for("main").var_limit)).all()
    # a window that holds one return only: the ratios say why they are missing
    short = performance_view(desk, "main", 1.5 * DAY)
    assert short.stats.observations == 1 and short.stats.sharpe.value is None
    # the book now: AAA 1000 x 100 and BBB 2000 x 50, two equal positions
    assert view.concentration.hhi == pytest.approx(0.5) and view.concentration.band is ConcentrationBand.HIGH
    assert view.liquidity is None and "monitor" in (view.liquidity_reason or "")  # no snapshot with a VaR
    assert view.fan is not None and view.fan.median[0] == 1_000_000.0 + 1000 * 100.0 + 2000 * 50.0  # cash + book


def test_the_view_lvar_adds_the_liquidation_costs_to_the_monitors_var(
    seeded_store: Store, settings: Settings, redis_client: Any
) -> None:
    monitor_snapshots(seeded_store, settings)
    view = performance_view(Desk(redis_client, settings), "main", DAY)
    snapshot = seeded_store.read_snapshot("main")
    assert snapshot is not None
    market = seeded_store.read_market()
    index = {t: i for i, t in enumerate(market.tickers)}
    cost = 0.0
    for ticker, qty in (("AAA", 1000), ("BBB", 2000)):
        i = index[ticker]
        asset = settings.universe.assets[ticker]
        vol = math.sqrt(market.cov[i, i] * settings.model.bars_per_day)
        cost += independent_cost(
            qty, market.prices[i], asset.spread_bps, asset.avg_daily_volume, vol, settings.model.liquidity_impact_coef
        )
    assert view.liquidity is not None
    assert view.liquidity.cost == pytest.approx(cost, rel=1e-9)
    assert view.liquidity.lvar(0.95) == pytest.approx(snapshot["var"]["var95"] + cost, rel=1e-9)
    assert view.liquidity.lvar(0.99) == pytest.approx(snapshot["var"]["var99"] + cost, rel=1e-9)
    assert view.mc_var is not None and view.mc_var > 0
    seeded = performance_view(Desk(redis_client, settings), "main", DAY)
    assert seeded.fan is not None and view.fan is not None
    assert all(np.array_equal(seeded.fan.bands[q], view.fan.bands[q]) for q in performance.FAN_PERCENTILES)


# -- the page ------------------------------------------------------------------------------------------------


@pytest.fixture
def app_env(
    redis_server: EmbeddedRedis, seeded_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    """The dashboard pointed at the seeded store (as tests/test_dashboard.py's fixture of the same name)."""
    _point_app_at(monkeypatch, redis_server.url, tmp_path)
    yield seeded_store
    st.cache_resource.clear()


def chart_titled(at: Any, prefix: str) -> dict[str, Any]:
    for spec in charts(at):
        title = spec.get("layout", {}).get("title", {})
        text = title.get("text", "") if isinstance(title, dict) else str(title)
        if text.startswith(prefix):
            return spec
    raise AssertionError(f"no chart titled {prefix!r}")


def test_performance_page_shows_ratios_bands_lvar_var_trend_and_fan(app_env: Store, settings: Settings) -> None:
    run_bars(app_env, settings, bars=30)
    at = open_page("performance")
    assert_clean(at)
    history = app_env.read_history("main")
    assert metric(at, "Returns (observations)") == f"{len(history) - 1:,}"
    assert metric(at, "Sharpe") != "n/a"
    snapshot = app_env.read_snapshot("main")
    assert snapshot is not None
    assert metric(at, "HHI") == f"{snapshot['concentration']['hhi']:.3f}"
    assert "**High**" in joined(at.markdown)  # two positions of about equal value: HHI near 0.5
    lvar95 = float(metric(at, "LVaR 95% (1 day)").removeprefix("USD ").replace(",", ""))
    assert lvar95 > snapshot["var"]["var95"]
    trend = chart_titled(at, "VaR against the limit")
    names = [t["name"] for t in trend["data"]]
    assert names[:2] == ["VaR 95% (1 day)", "VaR 99% (1 day)"] and names[2].startswith("limit")
    assert len(arr(trend["data"][0]["y"])) == len(history)
    assert (arr(trend["data"][2]["y"]) == float(settings.limits_for("main").var_limit)).all()
    fan = chart_titled(at, "Value over")
    median = next(t for t in fan["data"] if t["name"] == "median")
    assert arr(median["y"])[0] == pytest.approx(snapshot["equity"], rel=1e-9)
    assert metric(at, "Value now") == money(arr(median["y"])[0])


def test_performance_page_without_history_says_why_the_ratios_are_missing(app_env: Store) -> None:
    at = open_page("performance")
    assert_clean(at)
    assert metric(at, "Sharpe") == "n/a"
    assert "Ratios n/a" in joined(at.info) and "LVaR n/a" in joined(at.info)
    assert chart_titled(at, "Value over")  # the fan needs only the book and the matrix
