"""View model of the Performance page (``dashboard/screens/performance.py``): Sharpe, Sortino, Calmar and Kelly of
the portfolio's equity history, the HHI concentration band, the liquidity-adjusted VaR, the VaR trend against
the limit, and the Monte Carlo fan of the portfolio's value over the limit's horizon.

The computations are :mod:`logic.performance`'s; this module only reads the store and the market model, and
the stream daemon's heartbeat for the clock the ratios are annualised in (:func:`ratio_time`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine import math_logic
from engine.clocks import STREAM_COMPONENT, ClockMode
from engine.defaults import REPORTED_CONFIDENCES
from engine.errors import StoreEmptyError
from logic import performance
from logic.backtest_monitor import feed_bar_model_bars
from logic.snapshot import usable_prices
from logic.valuation import value_portfolio
from logic.views.common import Desk, float_or_none, latest_snapshot
from logic.views.limits import live_limits
from logic.views.memo import Memo, array_key
from logic.views.overview import HISTORY_WINDOWS, history_frame

PERFORMANCE_WINDOWS: dict[str, float] = HISTORY_WINDOWS
"""Windows of the history the ratios and the VaR trend are computed over (the Overview's)."""
PERFORMANCE_DEFAULT_WINDOW = "1 day"

VAR_TREND_COLUMNS = ("time", "var95", "var99", "limit")

FAN_MEMO = Memo(16)
"""The Monte Carlo fan and VaR per (exposures, covariance, equity, horizon, confidence, paths, seed)."""


@dataclass(frozen=True, eq=False)
class PerformanceView:
    portfolio_id: str
    window_seconds: float
    stats: performance.PerformanceStats
    concentration: performance.Concentration
    liquidity: performance.LiquidityAdjustedVar | None
    liquidity_reason: str | None
    """Why there is no liquidity-adjusted VaR (no snapshot from the monitor yet), else None."""
    var_trend: pd.DataFrame
    """time (UTC), var95, var99 (one day, from the monitor's history) and limit (the portfolio's VaR limit)."""
    var_limit: float
    var_confidence: float
    fan: performance.FanChart | None
    fan_reason: str | None
    mc_var: float | None
    """Monte Carlo VaR at the limit's confidence and horizon (``math_logic.get_monte_carlo_var``, same seed)."""

    @property
    def annualisation(self) -> str | None:
        """How the ratios were annualised, in words (:func:`annualisation_text`); None when they were not."""
        return annualisation_text(self.stats)

    @property
    def liquidity_frame(self) -> pd.DataFrame:
        """ticker, qty, price, cost: one row per position the liquidation would trade."""
        rows = [] if self.liquidity is None else self.liquidity.costs
        return pd.DataFrame(
            [(c.ticker, c.qty, c.price, c.cost) for c in rows], columns=["ticker", "qty", "price", "cost"]
        )

    @property
    def fan_frame(self) -> pd.DataFrame:
        """day, then one column per percentile (``p1``, ``p5``, ...): the fan chart's bands."""
        if self.fan is None:
            return pd.DataFrame(columns=["day"])
        data = {"day": self.fan.days} | {f"p{q:g}": v for q, v in self.fan.bands.items()}
        return pd.DataFrame(data)


def ratio_time(desk: Desk) -> performance.TradingTime:
    """The time the ratios are measured and annualised in (:func:`logic.performance.trading_time`), for the
    stream daemon that runs: its heartbeat says whether it plays the compressed demo clock (``clock``), at how
    many wall seconds a bar (``interval``) and how many model bars a feed bar spans (``feed_bar_model_bars``);
    without a heartbeat, the settings' ``model.demo_clock_seconds`` decides."""
    beat = desk.store.read_heartbeat(STREAM_COMPONENT) or {}
    mode = beat.get("clock")
    try:
        interval: float | None = float(beat["interval"]) if "interval" in beat else None
    except ValueError:
        interval = None
    if interval is not None and not (math.isfinite(interval) and interval >= 0):
        interval = None
    return performance.trading_time(
        desk.settings,
        compressed=None if mode is None else mode == ClockMode.COMPRESSED,
        wall_seconds_per_bar=interval,
        bars_per_version=feed_bar_model_bars(desk.store),
    )


def annualisation_text(stats: performance.PerformanceStats) -> str | None:
    """How the ratios were annualised, in words (None when they were not): the window's length in the time
    of the model and the periods a year it gives."""
    time, length, p = stats.time, stats.elapsed, stats.periods_per_year
    if length is None or p is None or stats.spacing_seconds is None:
        return None
    per_return = f"{length / stats.observations:,.3g} bars per return"
    if time.basis is performance.TimeBasis.SESSIONS and time.sessions is not None:
        return (
            f"over {length:,.1f} model bars of trading time ({time.sessions.name} sessions; nights, weekends and "
            f"holidays count nothing), so {p:,.0f} periods a year ({time.units_per_year:,.0f} bars a year, as the "
            f"VaR, / {per_return})"
        )
    if time.basis is performance.TimeBasis.MODEL_BARS:
        return (
            f"over {length:,.1f} model bars played by the compressed demo clock, so {p:,.0f} periods a year "
            f"({time.units_per_year:,.0f} bars a year / {per_return})"
        )
    return (
        f"one every {stats.spacing_seconds:,.3g} s on average, so {p:,.0f} periods a year (a 24/7 market: "
        "365.25 days x 86,400 s / spacing)"
    )


def var_trend_frame(history: pd.DataFrame, limit: float) -> pd.DataFrame:
    """VaR 95/99 of the monitor's history points with the limit beside each."""
    if history.empty or "var.var95" not in history:
        return pd.DataFrame(columns=list(VAR_TREND_COLUMNS))
    low, high = REPORTED_CONFIDENCES
    return pd.DataFrame(
        {
            "time": history["time"],
            "var95": history[f"var.var{low * 100:.0f}"],
            "var99": history[f"var.var{high * 100:.0f}"],
            "limit": float(limit),
        }
    )


def performance_view(
    desk: Desk,
    portfolio_id: str,
    window_seconds: float,
    *,
    seed: int = performance.FAN_SEED,
    n_paths: int = performance.FAN_PATHS,
) -> PerformanceView:
    """Ratios and VaR trend over the last ``window_seconds`` of history; concentration, LVaR and the fan of
    the book now."""
    settings = desk.settings
    limits = live_limits(desk, portfolio_id)
    history = history_frame(desk, portfolio_id, window_seconds)
    ts, equity, versions, low, high = performance.equity_band_series(history.to_dict("records"))
    booked = desk.store.read_flows(portfolio_id, float(ts[0]), float(ts[-1])) if ts.size else []
    flows = performance.step_flows(ts, [f[0] for f in booked], [f[1] for f in booked])
    stats = performance.performance_stats(
        ts, equity, time=ratio_time(desk), versions=versions, low=low, high=high, flows=flows
    )  # time-weighted: without the capital flows the book syncs booked; the drawdown of a downsampled window from
    # its buckets' lows and highs (logic/performance.py)

    rm = desk.risk_manager(portfolio_id)
    state = rm.get_portfolio_state()
    if state is None:
        raise rm.last_error or StoreEmptyError("no portfolio in the store")
    model = desk.market_model()
    valuation = value_portfolio(state, model.header)
    ok = usable_prices(valuation)
    exposures = np.where(ok, valuation.market_values, 0.0)
    held = np.flatnonzero(exposures != 0.0)

    snapshot = latest_snapshot(desk, portfolio_id)
    liquidity, liquidity_reason = None, None
    if valuation.missing:
        liquidity_reason = f"no usable price for {', '.join(valuation.missing)}"
    elif snapshot is None:
        liquidity_reason = "no risk snapshot from the monitor yet: start it with python -m logic.monitor"
    else:
        var = snapshot.get("var") or {}
        figures = {c: float_or_none(var.get(f"var{c * 100:.0f}")) for c in REPORTED_CONFIDENCES}
        if any(v is None for v in figures.values()):
            liquidity_reason = "the monitor's snapshot has no VaR"
        else:
            costs = performance.liquidation_costs(
                valuation.tickers,
                np.where(ok, valuation.qty, 0.0),
                np.where(ok, valuation.prices, 0.0),
                model.daily_vol,
                settings.universe.assets,
                settings.model.liquidity_impact_coef,
            )
            liquidity = performance.LiquidityAdjustedVar(
                var={c: float(v) for c, v in figures.items() if v is not None}, costs=costs
            )

    horizon_bars = settings.model.bars_per_day * limits.var_horizon_days
    fan, fan_reason, mc_var = None, None, None
    if valuation.missing:
        fan_reason = f"no usable price for {', '.join(valuation.missing)}"
    else:
        dollars = exposures[held]
        cov = model.cov[np.ix_(held, held)]
        bars_per_day, confidence, value = settings.model.bars_per_day, limits.var_confidence, valuation.equity

        def simulate() -> tuple[performance.FanChart, float]:
            fan = performance.fan_chart(dollars, cov, value, horizon_bars, bars_per_day, n_paths=n_paths, seed=seed)
            mc, _ = math_logic.get_monte_carlo_var(
                dollars, cov, 1.0, confidence, horizon_bars, performance.MC_VAR_SIMS, seed, validate=False
            )
            return fan, mc

        # seeded, so a function of its inputs: every session and rerun on the same book and market shares one run
        key = (*array_key(dollars, cov), float(value), float(horizon_bars), float(bars_per_day), float(confidence),
               n_paths, seed)  # fmt: skip
        fan, mc_var = FAN_MEMO.get(key, simulate)

    return PerformanceView(
        portfolio_id=portfolio_id,
        window_seconds=window_seconds,
        stats=stats,
        concentration=performance.concentration(exposures),
        liquidity=liquidity,
        liquidity_reason=liquidity_reason,
        var_trend=var_trend_frame(history, float(limits.var_limit)),
        var_limit=float(limits.var_limit),
        var_confidence=float(limits.var_confidence),
        fan=fan,
        fan_reason=fan_reason,
        mc_var=mc_var,
    )
