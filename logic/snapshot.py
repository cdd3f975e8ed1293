"""The per-portfolio risk snapshot the monitor computes on every tick, and the flat history point kept of it.

Schema (read by the alert rules as dotted paths, and by the dashboard)::

    portfolio_id  str
    ts            float   epoch seconds the snapshot was computed
    version       int     market version of the prices used (the tick's version)
    market_ts     float   when the daemon wrote those prices
    equity, cash, market_value, gross_exposure, net_exposure, leverage          floats (leverage null if
                                                                              equity <= 0 with exposure, or
                                                                              the valuation is incomplete)
    pnl           {unrealized, realized, daily, total}
    var           {var95, var99, cvar95, cvar99, stressed_var99, limit, confidence, utilization, horizon_days,
                   stressed_limit_var, stressed_limit, stressed_utilization}
    drawdown      {daily, weekly, max}                      fractions <= 0; null when the valuation is incomplete
    concentration {hhi, largest_share, largest_ticker}      all three null when the valuation is incomplete
    margin        {level, used, maintenance}                level null for a cash account; all three null for a
                                                            margin account whose valuation is incomplete
    data          {market_age_seconds, missing_prices}
    trading_state a TradingState: ACTIVE | REDUCING | HALTED
    positions     [{ticker, qty, avg_price, last, market_value, weight, unrealized_pnl, realized_pnl,
                    mfe, mae}]                              weight null for an open position while the valuation
                                                            is incomplete
    var_method    a VarMethod: normal | student_t | fhs, the method of every VaR / CVaR figure above
    component_var {ticker: dollars} each held ticker's share of the VaR at the limit's confidence and horizon
    backtest      the continuous VaR backtest as the backtest runner last stored it (logic.backtest_monitor.section_for;
                  market_version: the bar it is of) or null

Definitions:

- VaR / CVaR: by the portfolio's method (``Settings.var_method_for``: :mod:`logic.var_methods`), one day =
  ``settings.model.bars_per_day`` one-bar horizons (square-root of time), from the EWMA matrix of the market
  snapshot (``normal``: parametric; ``student_t``: the same scale with Student-t quantiles, degrees of freedom
  fitted to the stored window of standardized returns; ``fhs``: that window rescaled to today's volatility,
  revalued on the book); ``stressed_var99`` is always a normal VaR, of the worse of two crisis scenarios: the
  stressed matrix (correlations floored) and today's correlations with every volatility multiplied by
  ``model.stress_vol_multiplier`` (:func:`engine.math_logic.stressed_portfolio_sigma`).
  Computed on dollar exposures so a book with equity <= 0 still shows its risk. ``var.limit`` is the portfolio's VaR
  limit, ``var.confidence`` its confidence, ``var.horizon_days`` its horizon (``var_horizon_days``), and
  ``var.utilization`` the VaR at that confidence and horizon divided by the limit; ``component_var`` splits that
  VaR by ticker (Euler allocation; under ``fhs`` the positions' losses in the VaR scenario), the shares sum to it.
  The 1-day ``var95`` ... ``stressed_var99`` are reported figures, not what any limit is measured on.
- Stressed VaR against its limit: ``var.stressed_limit_var`` is the stressed VaR on the basis the gate enforces
  ``limits.stressed_var_limit`` on (the limit's confidence and horizon: :func:`logic.limits.limit_stressed_var`,
  the gate's own function), ``var.stressed_limit`` that limit (null when the portfolio sets none) and
  ``var.stressed_utilization`` their ratio (null without a limit). A rule or gauge on stressed VaR against the
  limit reads these, never ``stressed_var99`` (99%, one day: below the gate's figure at a 10-day horizon, above
  it at 95% over one day).
- ``pnl.unrealized`` sums positions with a usable price; ``pnl.realized`` is the portfolio's realized P&L;
  ``pnl.total`` their sum; ``pnl.daily`` is equity minus the day's opening equity: the previous session's
  close, i.e. the last equity observed at prices printed while the market was open (``MarketCalendar.closes``:
  a tick's bar time decides, so the closing bar counts though the monitor sees it after the close), so an
  overnight gap counts and an extended-hours tick or an evening re-mark never becomes the open; the last equity
  seen when no close is known (see ``Store.update_peaks``). With ``market.calendar = "24/7"`` the market never
  closes: the open is the last equity seen before the day started.
- Drawdowns: ``daily`` / ``weekly`` = equity / peak of the day (week) - 1, where a day is a session of
  ``market.calendar`` (it starts at the session's open and runs to the next open: the time after a close
  belongs to the session that closed) and a week the calendar's week (from its first session's open),
  engine/sessions.py; with ``market.calendar = "24/7"`` a day starts at ``monitor.day_reset_hour`` in
  ``monitor.timezone`` and a week on Monday at that hour. A new day's (week's) peak starts at max(previous
  close, first equity of the period), so a gap down from the close is a drawdown; ``max`` is the worst drawdown
  from the running all-time peak seen so far (every observation, extended hours too).
- Capital flows and model reloads: a book sync that changes cash or quantities (``warmup.py --sync``,
  engine/book.py) moves the opening equity and every peak by the equity it adds or removes at the current
  marks, so it is not P&L and no drawdown (the worst drawdown recorded stays); reloading the market model
  (engine/reload.py) keeps the opening equity, the peaks and the worst drawdown, and prices it changes show as
  P&L (a re-mark). Only a replay's first bar (its data clock restarted) starts the drawdowns afresh.
- ``concentration.hhi``: Herfindahl index of gross-exposure shares; ``largest_share``: the largest absolute
  position value over equity (the measure ``limits.max_concentration`` caps; null when equity <= 0);
  ``largest_ticker`` its ticker.
- Margin accounts: ``used`` = initial margin on gross exposure, ``level`` = equity / used x 100 (%),
  ``maintenance`` = maintenance margin on gross exposure. Cash accounts: level null, used and maintenance 0.
- ``mfe`` / ``mae``: highest / lowest unrealized P&L of the position since it was opened (0 for a flat one).
- A held ticker without a usable price is listed in ``data.missing_prices``; its value counts as 0 (and its
  ``last`` is null) in ``equity``, the exposures, P&L and VaR, so the valuation is *incomplete*: ``equity`` is that
  of the priced positions and cash only (an unpriced short counted at 0 adds its whole value, an unpriced long
  removes it). Figures that would take such an equity for the book's are null rather than made up:
  ``pnl.daily``, every ``drawdown``, ``leverage``, every ``concentration`` figure, each open position's
  ``weight`` and, for a margin account, ``margin.level``, ``margin.used`` and ``margin.maintenance`` (the level
  is equity over initial margin on the gross exposure: both sides miss the position, so an unpriced short could
  read 600% on a book at 110%, the margin breaker's trigger; a book whose largest position lost its price reads a
  leverage and a largest share far below its own, and on the other positions only, so even the largest ticker
  and the HHI are of another book). A null there is *missing data* to the alert rules (their stale-data policy:
  ``keep`` holds an active margin, drawdown, leverage or concentration alert through the gap, logic/lifecycle.py
  ``condition``), not "does not apply". Nor does an incomplete valuation move
  the equity peaks: the day / week / all-time peaks, the worst drawdown, the session's close and the last equity
  seen stay as the last complete valuation left them (``MonitoringStore._PEAKS_LUA``), so a phantom equity never
  becomes a peak and the drawdowns resume, when the price returns, from the peaks of real valuations.

Every float is finite (JSON has no NaN/inf): a value that is not becomes null.

The typed record is :class:`engine.records.Snapshot` (:func:`snapshot_record`, then :func:`build_snapshot` sets
its ``var_method``, ``component_var`` and ``backtest``); its ``to_dict()`` is the form stored and evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from engine import math_logic
from engine.defaults import REPORTED_CONFIDENCES
from engine.market_model import MarketModel, reorder
from engine.records import (
    AccountType,
    Snapshot,
    TradingState,
    VarMethod,
)
from engine.sessions import wall_clock_period_ids
from engine.settings import Limits, Model
from engine.store import EquityPeaks, Excursion, Float64Array, MarketHeader, PortfolioState, TradingStatus
from engine.store.history import HISTORY_FIELDS as STORED_HISTORY_FIELDS
from logic.limits import limit_stressed_var
from logic.valuation import Valuation
from logic.var_methods import RiskModel, risk_model

HISTORY_FIELDS: tuple[str, ...] = STORED_HISTORY_FIELDS
"""The snapshot metrics kept in the history, one field each (dotted paths as in alert rules); the table with each
field's aggregation in the downsampled tiers is :data:`engine.store.history.HISTORY_COLUMNS`."""


@dataclass(frozen=True, eq=False)
class MarketView:
    """Prices of one tick with the matrices to measure risk with, all aligned with ``header.tickers``."""

    header: MarketHeader
    cov: Float64Array
    """EWMA covariance of one-bar log returns."""
    stressed: Float64Array
    """The crisis covariance (stressed VaR)."""
    model: MarketModel | None = None
    """Where the window of standardized returns and the Student-t degrees of freedom come from (read only when
    a portfolio's method needs them); None: only ``normal`` can be measured."""
    printed_at: float | None = None
    """When the tick's prices were printed (its bar's own time, ``TickEvent.bar_ts``), None for the stored market
    (an idle refresh): whether an equity may be the session's close is decided on it
    (``MarketCalendar.closes``)."""

    @cached_property
    def index(self) -> dict[str, int]:
        """Ticker -> position in the arrays (built once per tick, shared by every portfolio)."""
        return {t: i for i, t in enumerate(self.header.tickers)}

    @cached_property
    def vol(self) -> Float64Array:
        """Today's one-bar volatility of each ticker, ``sqrt(S_ii)``."""
        return np.sqrt(np.clip(np.diagonal(self.cov), 0.0, None))

    @cached_property
    def standardized(self) -> Float64Array:
        """The model's window of standardized returns in ``header.tickers`` order (T, N)."""
        if self.model is None:
            return np.zeros((0, len(self.header.tickers)))
        self.model.method_inputs(VarMethod.FHS)  # raises a clear StoreEmptyError without a window
        if self.model.tickers == self.header.tickers:
            return self.model.standardized
        order = reorder(self.model.tickers, self.header.tickers)
        if order is None:
            return np.zeros((0, len(self.header.tickers)))
        return self.model.standardized[:, order]

    @cached_property
    def observed(self) -> npt.NDArray[np.bool_]:
        """Which entries of :attr:`standardized` are observations (the others are filled by FHS,
        ``math_logic.fhs_fill_missing``), same shape and order."""
        if self.model is None:
            return np.zeros((0, len(self.header.tickers)), dtype=bool)
        self.model.method_inputs(VarMethod.FHS)
        if self.model.tickers == self.header.tickers:
            return self.model.observed
        order = reorder(self.model.tickers, self.header.tickers)
        if order is None:
            return np.zeros((0, len(self.header.tickers)), dtype=bool)
        return self.model.observed[:, order]

    def risk(self, method: VarMethod, held: np.ndarray) -> RiskModel:
        """The one-bar :class:`~logic.var_methods.RiskModel` of ``method`` on the tickers at ``held``."""
        cov = self.cov[np.ix_(held, held)]
        if method is VarMethod.FHS:
            return risk_model(
                method, cov, horizon_bars=1.0, standardized=self.standardized[:, held],
                current_vol=self.vol[held], observed=self.observed[:, held], validate=False,
            )  # fmt: skip
        if method is VarMethod.STUDENT_T:
            if self.model is None:
                raise ValueError("student_t needs the market model's window to fit its degrees of freedom")
            return risk_model(method, cov, horizon_bars=1.0, dof=self.model.dof, validate=False)
        return risk_model(method, cov, horizon_bars=1.0, validate=False)


def period_ids(now: float, tz: ZoneInfo, reset_hour: int) -> tuple[str, str]:
    """Ids of the drawdown day and week containing ``now``: ISO dates of the day and of its week's Monday.

    A day starts at ``reset_hour`` local time in ``tz`` (wall clock, so DST shifts follow the local hour); a
    week starts on Monday at that hour: the ``market.calendar = "24/7"`` rule (the monitor asks
    :class:`engine.sessions.MarketCalendar`, which uses the exchange's sessions otherwise).
    """
    return wall_clock_period_ids(now, tz, reset_hour)


def usable_prices(valuation: Valuation) -> np.ndarray:
    """Mask of tickers with a finite positive price."""
    prices = valuation.prices
    with np.errstate(invalid="ignore"):
        return np.isfinite(prices) & (prices > 0)


def open_position_pnl(valuation: Valuation) -> dict[str, tuple[int, float]]:
    """Ticker -> (side +1/-1, unrealized P&L) of every open position with a usable price (MFE/MAE input)."""
    ok = usable_prices(valuation)
    unrealized = valuation.unrealized
    out = {}
    for i in np.flatnonzero((valuation.qty != 0) & ok):
        pnl = float(unrealized[i])
        if math.isfinite(pnl):
            out[valuation.tickers[i]] = (1 if valuation.qty[i] > 0 else -1, pnl)
    return out


def _f(value: float | None) -> float | None:
    if value is None:
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def _drawdown(equity: float, peak: float) -> float:
    if not (math.isfinite(peak) and peak > 0 and math.isfinite(equity)):
        return 0.0
    return math_logic.current_drawdown(np.array([peak, equity]))


@dataclass(frozen=True)
class RiskFigures:
    """The risk figures of one book at one tick, dollars (what :func:`risk_figures` computes one portfolio at a
    time and :mod:`logic.batch` for every portfolio at once)."""

    var95: float
    var99: float
    cvar95: float
    cvar99: float
    stressed_var99: float
    limit_var: float
    """VaR at the limit's confidence and horizon (``var.utilization`` = limit_var / limit)."""
    stressed_limit_var: float
    """Stressed VaR at the limit's confidence and horizon: what the gate compares with ``stressed_var_limit``."""
    components: Float64Array
    """Component VaR at the limit's confidence and horizon of each held ticker, in ``held`` order."""


def risk_figures(
    market: MarketView, method: VarMethod, held: np.ndarray, dollars: Float64Array, limits: Limits, model: Model
) -> RiskFigures:
    """The figures of one book: dollar exposures ``dollars`` of the tickers at ``held`` (the reference the
    vectorised monitor is tested against, to 1e-12)."""
    sub = np.ix_(held, held)
    stressed, cov = market.stressed[sub], market.cov[sub]
    day = float(model.bars_per_day)
    horizon = model.bars_per_day * limits.var_horizon_days  # the gate's horizon_bars (logic/risk_manager.py)
    low, high = REPORTED_CONFIDENCES  # reported as var95 / var99 (cvar95 / cvar99, stressed_var99)
    one_bar = market.risk(VarMethod(method), held)
    daily = one_bar.with_horizon(day)
    at_limit = one_bar.with_horizon(horizon)
    components = at_limit.component_var(dollars, limits.var_confidence) if held.size else np.zeros(0, dtype=np.float64)
    return RiskFigures(
        var95=daily.var(dollars, low),
        var99=daily.var(dollars, high),
        cvar95=daily.cvar(dollars, low),
        cvar99=daily.cvar(dollars, high),
        stressed_var99=math_logic.get_stressed_var(
            dollars, stressed, 1.0, high, day, cov=cov, vol_multiplier=model.stress_vol_multiplier, validate=False
        ),
        limit_var=at_limit.var(dollars, limits.var_confidence),
        stressed_limit_var=limit_stressed_var(dollars, stressed, cov, limits, horizon, model.stress_vol_multiplier),
        components=np.asarray(components, dtype=np.float64),
    )


def build_snapshot(
    *, method: VarMethod = VarMethod.NORMAL, backtest: Mapping[str, Any] | None = None, **parts: Any
) -> dict[str, Any]:
    """The snapshot of one portfolio at one tick as stored and evaluated (schema in the module docstring):
    :func:`snapshot_record`'s ``to_dict()`` with ``var_method``, ``component_var`` and ``backtest``.
    ``risk=`` (a :class:`RiskFigures`) passes figures computed beforehand (the vectorised monitor)."""
    components: dict[str, float] = {}
    data = snapshot_dict(method=method, components=components, **parts)
    data["var_method"] = str(method)
    data["component_var"] = components
    data["backtest"] = None if backtest is None else dict(backtest)
    return data


def snapshot_record(**parts: Any) -> Snapshot:
    """The snapshot of one portfolio at one tick as the typed record (arguments of :func:`snapshot_dict`); its
    ``to_dict()`` is :func:`snapshot_dict`'s dict (``var_method`` normal, no component VaR, no backtest)."""
    return Snapshot.from_dict(snapshot_dict(**parts))


def snapshot_dict(
    *,
    portfolio_id: str,
    state: PortfolioState,
    trading_state: TradingStatus | None,
    valuation: Valuation,
    market: MarketView,
    limits: Limits,
    model: Model,
    peaks: EquityPeaks,
    marks: Mapping[str, Excursion],
    now: float,
    method: VarMethod = VarMethod.NORMAL,
    components: dict[str, float] | None = None,
    risk: RiskFigures | None = None,
) -> dict[str, Any]:
    """The snapshot of one portfolio at one tick (schema in the module docstring) in the form of
    :meth:`engine.records.Snapshot.to_dict` up to ``positions``, built as plain dicts (the monitor builds a
    thousand per tick); VaR / CVaR by ``method``.

    ``components``, when given, receives each held ticker's component VaR (limit confidence and horizon).
    ``risk``: the book's figures computed beforehand; by default :func:`risk_figures` of this book."""
    header = market.header
    ok = usable_prices(valuation)
    exposures = np.where(ok, valuation.market_values, 0.0)
    unrealized = np.where(ok, valuation.unrealized, 0.0)
    held = np.flatnonzero(exposures != 0.0)
    if risk is None:
        # Risk on the held sub-matrix: w'Σw with zero weights elsewhere is the same number, at O(k²) not O(N²).
        risk = risk_figures(market, method, held, exposures[held], limits, model)
    if components is not None and held.size:
        shares = risk.components
        components.update({header.tickers[i]: _f(float(c)) or 0.0 for i, c in zip(held, shares, strict=True)})
    var_limit = float(limits.var_limit)
    stressed_cap = None if limits.stressed_var_limit is None else float(limits.stressed_var_limit)

    equity = valuation.equity
    gross = valuation.gross_exposure
    realized = float(state.realized_pnl)
    unrealized_total = float(unrealized.sum())
    margin = valuation.account_type == AccountType.MARGIN
    # else: no P&L from the day open, no drawdown, leverage, concentration, weight or margin figure (docstring)
    complete = valuation.complete
    largest_i = int(np.argmax(np.abs(exposures))) if held.size and complete else None
    largest_share = None
    if largest_i is not None and equity > 0:
        largest_share = abs(float(exposures[largest_i])) / equity

    return {
        "portfolio_id": portfolio_id,
        "ts": float(now),
        "version": int(header.version),
        "market_ts": float(header.ts),
        "equity": _f(equity),
        "cash": float(state.cash),
        "market_value": _f(valuation.market_value),
        "gross_exposure": _f(gross),
        "net_exposure": _f(valuation.market_value),
        "leverage": _f(valuation.leverage) if complete else None,
        "pnl": {
            "unrealized": _f(unrealized_total),
            "realized": realized,
            "daily": _f(equity - peaks.day_open) if complete else None,
            "total": _f(realized + unrealized_total),
        },
        "var": {
            "var95": _f(risk.var95),
            "var99": _f(risk.var99),
            "cvar95": _f(risk.cvar95),
            "cvar99": _f(risk.cvar99),
            "stressed_var99": _f(risk.stressed_var99),
            "limit": var_limit,
            "confidence": float(limits.var_confidence),
            "utilization": _f(risk.limit_var / var_limit),
            "horizon_days": float(limits.var_horizon_days),
            "stressed_limit_var": _f(risk.stressed_limit_var),
            "stressed_limit": stressed_cap,
            "stressed_utilization": None if stressed_cap is None else _f(risk.stressed_limit_var / stressed_cap),
        },
        "drawdown": {
            "daily": _drawdown(equity, peaks.day_peak) if complete else None,
            "weekly": _drawdown(equity, peaks.week_peak) if complete else None,
            "max": min(peaks.max_drawdown, _drawdown(equity, peaks.max_peak)) if complete else None,
        },
        "concentration": {
            "hhi": math_logic.hhi_concentration(exposures) if complete else None,
            "largest_share": _f(largest_share),
            "largest_ticker": header.tickers[largest_i] if largest_i is not None else None,
        },
        "margin": {
            "level": _f(valuation.margin_level) if margin else None,  # None when incomplete (Valuation)
            "used": (_f(valuation.margin_used) if complete else None) if margin else 0.0,
            "maintenance": (_f(gross * valuation.maintenance_margin) if complete else None) if margin else 0.0,
        },
        "data": {
            "market_age_seconds": max(0.0, float(now) - float(header.ts)),
            "missing_prices": list(valuation.missing),
        },
        "trading_state": trading_state.state if trading_state is not None else TradingState.ACTIVE,
        "positions": _positions(state, market, ok, exposures, unrealized, valuation.weights, marks, complete),
    }


def _positions(
    state: PortfolioState,
    market: MarketView,
    ok: np.ndarray,
    exposures: Float64Array,
    unrealized: Float64Array,
    weights: Float64Array,
    marks: Mapping[str, Excursion],
    complete: bool = True,
) -> list[dict[str, Any]]:
    """The ``positions`` of a snapshot, by ticker (:meth:`engine.records.SnapshotPosition.to_dict` form): the
    figures of every position gathered from the arrays at once, then one dict each. An open position's weight is
    null when the valuation is not ``complete`` (its equity is not the book's); a flat one's is 0 whatever the
    equity."""
    tickers = sorted(state.positions)
    if not tickers:
        return []
    index = market.index
    found = [index.get(t) for t in tickers]
    at = np.array([-1 if i is None else i for i in found], dtype=np.intp)
    priced = ((at >= 0) & ok[np.maximum(at, 0)]).tolist()
    at = np.maximum(at, 0)
    last, values = market.header.prices[at].tolist(), exposures[at].tolist()
    shares, pnls = weights[at].tolist(), unrealized[at].tolist()
    out = []
    for k, ticker in enumerate(tickers):
        pos = state.positions[ticker]
        mark = marks.get(ticker) if pos.qty != 0 else None
        p = priced[k]
        out.append({
            "ticker": ticker,
            "qty": int(pos.qty),
            "avg_price": float(pos.avg_price),
            "last": _f(last[k]) if p else None,
            "market_value": values[k] if p else 0.0,
            "weight": None if pos.qty != 0 and not complete else _f(shares[k]) if p else 0.0,
            "unrealized_pnl": pnls[k] if p else 0.0,
            "realized_pnl": float(pos.realized_pnl),
            "mfe": mark.mfe if mark is not None else 0.0,
            "mae": mark.mae if mark is not None else 0.0,
        })  # fmt: skip
    return out


_HISTORY_PATHS: tuple[tuple[str, tuple[str, ...]], ...] = tuple((n, tuple(n.split("."))) for n in HISTORY_FIELDS)


def history_point(snapshot: Mapping[str, Any]) -> dict[str, float | int | None]:
    """The flat history record of a snapshot: :data:`HISTORY_FIELDS`, dotted names, numbers or None;
    ``equity_low`` and ``equity_high`` (a snapshot has no such fields) are its ``equity``: a full-resolution
    point's extremes (engine/store/history.py)."""
    point: dict[str, float | int | None] = {}
    for name, path in _HISTORY_PATHS:  # once per portfolio per tick: plain dict lookups first
        node: Any = snapshot
        for part in path:
            node = node.get(part) if type(node) is dict or isinstance(node, Mapping) else None
        kind = type(node)
        if kind is float or kind is int:
            point[name] = node
        else:
            point[name] = node if isinstance(node, int | float) and not isinstance(node, bool) else None
    point["equity_low"] = point["equity_high"] = point["equity"]
    return point
