"""Performance read-outs (logic/performance.py, logic/views/performance.py, the Performance page): ratios of the
equity history against closed forms and loops written here, annualisation from the real spacing of the points in
the model's time (trading time of the exchange calendar, calendar time for 24/7, model bars of the compressed
demo clock), the HHI bands at their boundaries, LVaR against costs computed here, and the Monte Carlo fan."""

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
from engine.clocks import STREAM_COMPONENT
from engine.redis_server import EmbeddedRedis
from engine.sessions import sessions_for
from engine.settings import Settings
from engine.store import Store
from logic import performance
from logic.performance import ConcentrationBand, TimeBasis, TradingTime, hhi_band, performance_stats
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
"""Calendar seconds between points 252 of which make a calendar year (the 24/7 rule)."""

XNYS = sessions_for("XNYS")
LIVE = {"model": {"demo_clock_seconds": None}}
"""Settings override: a live feed, one model bar per ``model.bar_seconds`` of wall time (the tests' settings
play the compressed clock as fast as possible)."""


def session(date: str) -> tuple[float, float]:
    """Open and close (epoch seconds) of the XNYS session of ``date``."""
    i = XNYS.dates.index(date)
    return float(XNYS.opens[i]), float(XNYS.closes[i])


def session_closes(first: str, last: str) -> np.ndarray:
    i, j = XNYS.dates.index(first), XNYS.dates.index(last)
    return XNYS.closes[i : j + 1].astype(np.float64)


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
    with pytest.raises(ValueError, match="spacing must be > 0"):
        performance.periods_per_year(0.0)


# -- annualisation in the model's time -----------------------------------------------------------------------


def xnys_time(make_settings: Any) -> TradingTime:
    time = performance.trading_time(make_settings(LIVE))
    assert time.basis is TimeBasis.SESSIONS and time.sessions is XNYS
    return time


def test_minute_points_over_whole_xnys_sessions_annualise_with_the_models_bars_per_year(make_settings: Any) -> None:
    # Arrange: a point every model bar over three whole XNYS sessions, Thursday, Friday and Monday (an overnight
    # gap, a weekend and the DST change of 2024-03-10 between them): the first session from its open, the next
    # ones from their first bar, so every return is one bar step (the gap's step too) and T = 3 x 390.
    time, model = xnys_time(make_settings), make_settings(LIVE).model
    ts = []
    for k, date in enumerate(("2024-03-07", "2024-03-08", "2024-03-11")):
        start, close = session(date)
        assert close - start == 390 * 60.0
        ts += [start + 60.0 * m for m in range(0 if k == 0 else 1, 391)]
    # equity alternating between two values: returns u, v, u, v, ... whose mean and population deviation are
    # exact closed forms (the per-bar sigma is |u - v| / 2)
    low, high = 1_000_000.0, 1_001_000.0
    equity = np.array([low, high] * (len(ts) // 2) + [low])
    u, v = high / low - 1.0, low / high - 1.0
    sigma, mean = abs(u - v) / 2, (u + v) / 2
    bars_per_year = model.bars_per_day * model.trading_days_per_year
    # Act
    s = performance_stats(np.array(ts), equity, time=time)
    # Assert
    assert s.observations == 3 * 390 and s.elapsed == 3 * 390  # bars of trading time: one per return
    assert s.periods_per_year == bars_per_year == 98_280
    assert s.annual_volatility.value == pytest.approx(sigma * math.sqrt(bars_per_year), rel=1e-12)
    assert s.sharpe.value == pytest.approx(mean / sigma * math.sqrt(bars_per_year), rel=1e-12)
    assert s.sortino.value == pytest.approx(mean / math.sqrt(v * v / 2) * math.sqrt(bars_per_year), rel=1e-12)
    assert s.kelly.value == pytest.approx(mean / sigma**2, rel=1e-12)
    assert s.annual_return.value == 0.0  # the equity ends where it started
    # the first session alone: the same 98,280, where calendar time (the old rule) read 525,960 minutes a year
    one = performance_stats(np.array(ts[:391]), equity[:391], time=time)
    assert one.periods_per_year == bars_per_year
    assert one.annual_volatility.value == pytest.approx(sigma * math.sqrt(bars_per_year), rel=1e-12)
    assert performance_stats(np.array(ts[:391]), equity[:391]).periods_per_year == 525_960


def test_session_closes_annualise_with_the_trading_days_of_a_year(make_settings: Any) -> None:
    # Arrange: the closes of 23 XNYS sessions, 2024-03-04 to 2024-04-04 (weekends, the DST change and Good
    # Friday skipped), returns a, b, a, b, ...: each close-to-close step is one whole session, 390 bars
    time = xnys_time(make_settings)
    ts = session_closes("2024-03-04", "2024-04-04")
    a, b = -0.01, 0.02
    n = ts.size - 1
    returns = [a, b] * (n // 2)
    equity = equity_from(returns)
    # Act
    s = performance_stats(ts, equity, time=time)
    # Assert: the closed forms of the calendar test above at exactly 252 periods a year
    mean, std = (a + b) / 2, abs(a - b) / 2
    assert n == 22 and s.elapsed == 22 * 390 and s.periods_per_year == 252
    assert s.sharpe.value == pytest.approx(mean / std * math.sqrt(252), rel=1e-12)
    assert s.sortino.value == pytest.approx(mean / math.sqrt(a * a / 2) * math.sqrt(252), rel=1e-12)
    assert s.annual_volatility.value == pytest.approx(std * math.sqrt(252), rel=1e-12)
    cagr = (equity[-1] / equity[0]) ** (252 / n) - 1.0
    assert s.annual_return.value == pytest.approx(cagr, rel=1e-12)
    assert s.calmar.value == pytest.approx(cagr / abs(worst_drawdown(equity)), rel=1e-12)
    assert s.kelly.value == pytest.approx(mean / std**2, rel=1e-12)


def test_session_seconds_count_only_open_time_so_a_closed_gap_is_one_bar_step() -> None:
    thu_open, thu_close = session("2024-03-07")
    fri_open, fri_close = session("2024-03-08")
    mon_open, mon_close = session("2024-03-11")
    seconds = performance.session_seconds
    assert seconds(XNYS, thu_open, thu_close) == 23_400.0  # one whole session: 390 minutes
    assert seconds(XNYS, thu_close, fri_open) == 0.0  # the night counts nothing
    assert seconds(XNYS, thu_close - 60.0, fri_open) == 60.0  # last bar of a session to the next open: one bar
    assert seconds(XNYS, thu_close, fri_open + 60.0) == 60.0  # the close to the first bar: one bar
    assert seconds(XNYS, fri_close - 60.0, mon_open) == 60.0  # a weekend adds nothing either
    assert seconds(XNYS, fri_open - 1.0, fri_open + 1.0) == 1.0  # a session starts exactly at its open
    assert seconds(XNYS, fri_close - 1.0, fri_close + 1.0) == 1.0  # and ends exactly at its close
    assert seconds(XNYS, thu_open + 30.0, mon_open + 90.0) == 23_400.0 - 30.0 + 23_400.0 + 90.0
    good_friday = session("2024-03-28")[1], session("2024-04-01")[0]  # 2024-03-29 is a holiday
    assert seconds(XNYS, *good_friday) == 0.0
    early_open, early_close = session("2024-07-03")  # an early close at 13:00: a 3.5 h session
    assert seconds(XNYS, early_open, early_close + 3600.0) == 3.5 * 3600
    with pytest.raises(ValueError, match="outside the XNYS calendar"):
        seconds(XNYS, 0.0, thu_open)


def test_a_window_with_no_trading_time_says_so_and_one_bar_across_the_gap_annualises(make_settings: Any) -> None:
    time = xnys_time(make_settings)
    _, thu_close = session("2024-03-07")
    fri_open, _ = session("2024-03-08")
    night = np.linspace(thu_close, fri_open, 5)  # idle points of a closed market, one at the close and the open
    closed = performance_stats(night, [100.0, 100.0, 100.0, 100.0, 100.5], time=time)
    assert closed.periods_per_year is None and closed.sharpe.value is None
    assert closed.reason is not None and "market was closed over the whole window" in closed.reason
    # one bar before the close added: the window is one bar long (the gap's step), so 2 returns a bar
    edge = performance_stats(np.r_[thu_close - 60.0, night], [99.0, 100.0, 100.0, 100.0, 100.0, 100.5], time=time)
    assert edge.elapsed == 1.0 and edge.periods_per_year == 5 * 98_280
    outside = performance_stats([0.0, 60.0, 120.0], [100.0, 101.0, 100.0], time=time)
    assert outside.reason is not None and "outside the XNYS calendar" in outside.reason


def test_a_24_7_market_keeps_calendar_annualisation(make_settings: Any) -> None:
    live = performance.trading_time(make_settings({**LIVE, "market": {"calendar": "24/7"}}))
    assert live is performance.CALENDAR_TIME and live.units_per_year == performance.SECONDS_PER_YEAR
    returns = [0.0002, -0.0001, 0.0003, -0.0002, 0.0001]
    saturday_night = 1_710_000_000.0  # 2024-03-09 16:00 UTC: XNYS closed, a 24/7 market open
    s = performance_stats(saturday_night + 60.0 * np.arange(6), equity_from(returns), time=live)
    assert s.periods_per_year == performance.SECONDS_PER_YEAR / 60.0  # 525,960 minutes a year
    r = np.array(returns)
    assert s.annual_volatility.value == pytest.approx(r.std() * math.sqrt(525_960), rel=1e-12)
    # the compressed demo clock on a 24/7 market: a calendar year of model bars, the same 525,960
    demo = performance.trading_time(make_settings({"market": {"calendar": "24/7"}}))
    assert demo.basis is TimeBasis.MODEL_BARS and demo.units_per_year == 525_960
    versions = np.arange(6, dtype=np.float64)
    fast = performance_stats(np.linspace(0.0, 0.01, 6), equity_from(returns), time=demo, versions=versions)
    assert fast.periods_per_year == 525_960 and fast.sharpe.value == pytest.approx(s.sharpe.value, rel=1e-12)


def test_the_compressed_demo_clock_counts_the_model_bars_the_daemon_played(make_settings: Any) -> None:
    # Arrange: one bar every 2 wall seconds, the monitor's idle refresh writing a point every 0.5 s between them
    time = performance.trading_time(make_settings({"model": {"demo_clock_seconds": 2.0}}))
    assert time.basis is TimeBasis.MODEL_BARS and time.units_per_year == 98_280 and time.wall_seconds_per_bar == 2.0
    ts = 1_710_000_000.0 + 0.5 * np.arange(41)  # 20 s of wall time: 10 bars
    versions = 7.0 + np.floor(np.arange(41) / 4)  # a new market version every 4th point
    rng = np.random.default_rng(5)
    bar_returns = rng.normal(0.0, 0.001, 10)
    moves = np.zeros(40)
    moves[3::4] = bar_returns  # the point that first sees a new version moves; the idle ones do not
    equity = 1e6 * np.cumprod(np.r_[1.0, 1.0 + moves])
    # Act
    s = performance_stats(ts, equity, time=time, versions=versions)
    # Assert: 40 returns over 10 model bars, so 4 returns a bar and 4 x 98,280 periods a year
    assert s.elapsed == 10.0 and s.periods_per_year == 4 * 98_280
    r = equity[1:] / equity[:-1] - 1.0
    assert s.annual_volatility.value == pytest.approx(r.std() * math.sqrt(4 * 98_280), rel=1e-12)
    # the same variance as the bars alone at 98,280 a year: the flat idle returns add no time
    assert np.sum(r**2) == pytest.approx(np.sum(bar_returns**2), rel=1e-9)
    # without versions: wall seconds / wall seconds per bar, the same 10 bars
    assert performance_stats(ts, equity, time=time).elapsed == 10.0
    # a reseeded store (versions start again) is no count of bars: the wall clock again
    reseeded = np.r_[versions[:20], np.arange(21, dtype=np.float64)]
    assert performance_stats(ts, equity, time=time, versions=reseeded).elapsed == 10.0
    # as fast as possible (0 s a bar) and no version: no model time to measure
    fastest = performance.trading_time(make_settings())
    assert fastest.wall_seconds_per_bar == 0.0
    unknown = performance_stats(ts, equity, time=fastest)
    assert unknown.periods_per_year is None and "no model time" in (unknown.reason or "")
    # every point on one version: no bar was played
    idle = performance_stats(ts, equity, time=fastest, versions=np.full(41, 3.0))
    assert "no model bar was played" in (idle.reason or "")


def test_trading_time_refuses_inconsistent_conventions() -> None:
    with pytest.raises(ValueError, match="units_per_year"):
        TradingTime(TimeBasis.CALENDAR, 1.0, 0.0)
    with pytest.raises(ValueError, match="exchange calendar"):
        TradingTime(TimeBasis.SESSIONS, 60.0, 98_280.0)
    with pytest.raises(ValueError, match="one length"):
        performance_stats([0.0, 1.0, 2.0], [1.0, 2.0, 1.0], versions=[1.0, 2.0])


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


def stored_history(
    store: Store, pid: str, returns: list[float], times: Any, versions: Any = None
) -> tuple[np.ndarray, list[dict]]:
    """History points at ``times`` (with market ``versions`` when given), written through the monitor's own store
    call."""
    equity = equity_from(returns, 1_000_000.0)
    points = []
    for i, (t, e) in enumerate(zip(times, equity, strict=True)):
        point = {"ts": float(t), "equity": float(e), "var.var95": 1000.0 + i, "var.var99": 1500.0 + i}
        if versions is not None:
            point["version"] = float(versions[i])
        store.record_snapshot(pid, {"version": i}, point, ts=float(t), retention_seconds=365 * DAY, max_points=10_000)
        points.append(point)
    return equity, points


def sharpe_of(returns: list[float], periods_per_year: float) -> float:
    r = np.array(returns)
    return float(r.mean() / math.sqrt(((r - r.mean()) ** 2).mean()) * math.sqrt(periods_per_year))


def test_the_view_annualises_the_stored_history_in_trading_time_of_the_exchange_calendar(
    seeded_store: Store, make_settings: Any, redis_client: Any
) -> None:
    # Arrange: seven XNYS session closes, Monday 2024-03-04 to Tuesday 2024-03-12 (a weekend between), live clock
    settings = make_settings(LIVE)
    returns = [0.01, -0.005, 0.004, -0.002, 0.006, -0.003]
    closes = session_closes("2024-03-04", "2024-03-12")
    equity, points = stored_history(seeded_store, "main", returns, closes)
    now = float(closes[-1]) + 3600.0
    desk = Desk(redis_client, settings, clock=lambda: now)
    # Act
    view = performance_view(desk, "main", 10 * 86_400.0)
    # Assert: six whole sessions, 6 x 390 bars of trading time: 252 periods a year (calendar time read 275)
    s = view.stats
    assert s.observations == len(returns) and s.periods_per_year == 252
    assert s.time.basis is TimeBasis.SESSIONS and s.elapsed == 6 * 390
    assert s.sharpe.value == pytest.approx(sharpe_of(returns, 252), rel=1e-9)
    assert view.annualisation is not None and "XNYS sessions" in view.annualisation
    assert "252 periods a year" in view.annualisation and "98,280 bars a year" in view.annualisation
    assert view.var_trend["var95"].tolist() == [p["var.var95"] for p in points]
    assert view.var_trend["var99"].tolist() == [p["var.var99"] for p in points]
    assert (view.var_trend["limit"] == float(settings.limits_for("main").var_limit)).all()
    # a window that holds one return only: the ratios say why they are missing
    short = performance_view(desk, "main", 1.5 * 86_400.0)
    assert short.stats.observations == 1 and short.stats.sharpe.value is None and short.annualisation is None
    # the book now: AAA 1000 x 100 and BBB 2000 x 50, two equal positions
    assert view.concentration.hhi == pytest.approx(0.5) and view.concentration.band is ConcentrationBand.HIGH
    assert view.liquidity is None and "monitor" in (view.liquidity_reason or "")  # no snapshot with a VaR
    assert view.fan is not None and view.fan.median[0] == 1_000_000.0 + 1000 * 100.0 + 2000 * 50.0  # cash + book


def test_the_view_keeps_calendar_time_for_a_24_7_market(
    seeded_store: Store, make_settings: Any, redis_client: Any
) -> None:
    settings = make_settings({**LIVE, "market": {"calendar": "24/7"}})
    returns = [0.01, -0.005, 0.004, -0.002, 0.006, -0.003]
    t0 = 1_700_000_000.0
    stored_history(seeded_store, "main", returns, t0 + DAY * np.arange(len(returns) + 1))
    now = t0 + len(returns) * DAY
    view = performance_view(Desk(redis_client, settings, clock=lambda: now), "main", 7 * DAY)
    s = view.stats
    assert s.observations == len(returns)
    assert s.periods_per_year == pytest.approx(252, rel=1e-12)  # 365.25 days / the points' spacing
    assert s.sharpe.value == pytest.approx(sharpe_of(returns, 252), rel=1e-9)
    assert s.time is performance.CALENDAR_TIME
    assert view.annualisation is not None and "24/7" in view.annualisation


def test_the_view_counts_model_bars_when_the_stream_daemon_plays_the_compressed_clock(
    seeded_store: Store, make_settings: Any, redis_client: Any
) -> None:
    # Arrange: settings that say live, a daemon whose heartbeat says compressed (one bar every 2 s); a point
    # every wall second, a new market version every other point
    settings = make_settings(LIVE)
    returns = [0.001, 0.0, -0.002, 0.0, 0.0015, 0.0, -0.0005, 0.0]
    t0 = 1_710_000_000.0
    times = t0 + np.arange(len(returns) + 1)
    versions = 40 + np.arange(len(returns) + 1) // 2
    stored_history(seeded_store, "main", returns, times, versions)
    now = float(times[-1])
    desk = Desk(redis_client, settings, clock=lambda: now)
    beat = {"ts": now, "clock": "compressed", "interval": 2.0, "feed_bar_model_bars": 1.0}
    seeded_store.write_heartbeat(STREAM_COMPONENT, beat)
    # Act
    view = performance_view(desk, "main", 60.0)
    # Assert: 8 returns over 4 model bars: 2 a bar, 2 x 98,280 periods a year (the wall clock: 31.6 million)
    s = view.stats
    assert s.periods_per_year == 2 * 98_280
    assert s.time.basis is TimeBasis.MODEL_BARS and s.elapsed == 4.0
    assert s.sharpe.value == pytest.approx(sharpe_of(returns, 2 * 98_280), rel=1e-9)
    assert view.annualisation is not None and "compressed demo clock" in view.annualisation
    # a replaying daemon stamps the data's own time: trading time of the calendar again
    seeded_store.write_heartbeat(STREAM_COMPONENT, {**beat, "clock": "replay"})
    assert performance_view(desk, "main", 60.0).stats.time.basis is TimeBasis.SESSIONS


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
    # the tests' daemon plays the compressed clock as fast as possible: the ratios count the bars it played
    versions = [p["version"] for p in history]
    bars = versions[-1] - versions[0]
    periods = (len(history) - 1) * settings.model.bars_per_year / bars
    assert f"over {bars:,.1f} model bars played by the compressed demo clock" in joined(at.caption)
    assert f"so {periods:,.0f} periods a year" in joined(at.caption)
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
