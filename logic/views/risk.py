"""View models of the Risk page (``dashboard/screens/risk.py``): correlation and exposure with component VaR,
stress tests, the what-if basket, the VaR surface over two positions and the VaR backtest (the last two
computed by :mod:`logic.analytics`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import CorruptDataError, RiskdeskError, StoreEmptyError
from engine.records import AccountType
from logic.valuation import value_portfolio
from logic.views.common import Desk, InputError, float_or_none
from logic.views.limits import live_limits
from logic.views.trade import priced_positions

# -- the VaR method -------------------------------------------------------------------------------------------

METHOD_LABELS = {
    "normal": "normal (parametric, EWMA covariance)",
    "student_t": "Student-t (EWMA covariance, fitted tails)",
    "fhs": "filtered historical simulation",
}
"""How a page names each :class:`engine.records.VarMethod`."""


def method_caption(desk: Desk, portfolio_id: str) -> str:
    """The line a page shows under a VaR figure: which method it comes from."""
    method = str(desk.settings.var_method_for(portfolio_id))
    return f"VaR method: {METHOD_LABELS.get(method, method)}"


# -- exposure and VaR ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExposureView:
    correlation: pd.DataFrame
    """Correlation of the tickers' one-bar returns (ticker x ticker)."""
    exposures: pd.DataFrame
    """ticker, market_value, weight, daily_vol, component_var, component_share (held tickers), the largest
    component VaR first (ties by ticker)."""
    var: float
    var_limit: float
    var_confidence: float
    method: str = "normal"
    """The VaR method the figures come from (the portfolio's ``var_method``)."""
    horizon_days: float = 1.0
    """The horizon of ``var`` (the limit's ``var_horizon_days``)."""
    missing: tuple[str, ...] = ()
    """Held tickers without a usable price: counted as 0, so ``var`` leaves them out (understated)."""

    @property
    def utilization(self) -> float | None:
        return self.var / self.var_limit if self.var_limit else None

    @property
    def var_label(self) -> str:
        """The VaR figure's label: its confidence and its horizon."""
        days = self.horizon_days
        return f"VaR {self.var_confidence:.0%} ({days:g} day{'' if days == 1 else 's'})"


def exposure_view(desk: Desk, portfolio_id: str) -> ExposureView:
    from engine import math_logic

    rm = desk.risk_manager(portfolio_id)
    # an unpriced position is not valued, and no weight is a share of a partial equity (as the Trade page)
    metrics, totals = priced_positions(rm.get_dashboard_metrics())
    model = desk.market_model()
    snap = model.header
    corr = math_logic.correlation_from_covariance(model.cov, validate=False)
    exposures = metrics.reindex(
        columns=[
            "ticker",
            "qty",
            "market_value",
            "weight",
            "daily_vol",
            "marginal_var",
            "component_var",
            "component_share",
        ]
    )
    # the largest contribution to the VaR first (a hedge's negative one last), ties by ticker
    exposures = exposures.sort_values(
        ["component_var", "ticker"], ascending=[False, True], na_position="last", kind="mergesort"
    ).reset_index(drop=True)
    return ExposureView(
        correlation=pd.DataFrame(corr, index=list(snap.tickers), columns=list(snap.tickers)),
        exposures=exposures,
        var=float(totals.get("var") or 0.0),
        var_limit=float(totals.get("var_limit") or 0.0),
        var_confidence=float(totals.get("var_confidence") or 0.0),
        method=str(desk.settings.var_method_for(portfolio_id)),
        horizon_days=float(totals.get("var_horizon_days") or 1.0),
        missing=tuple(str(t) for t in totals.get("missing_prices") or ()),
    )


# -- stress --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StressView:
    var: float
    stressed_var: float
    stressed_var99: float
    confidence: float
    equity: float
    scenarios: pd.DataFrame
    """name, description, pnl, pnl_pct, equity_after."""
    method: str = "normal"
    """The method of ``var`` (the portfolio's); stressed VaR is the normal VaR of the worse crisis scenario (the
    stressed matrix, or today's correlations at multiplied volatilities)."""
    stressed_var_limit: float | None = None
    """The live ``limits.stressed_var_limit`` ``stressed_var`` is compared with (None: the portfolio sets none)."""
    horizon_days: float = 1.0
    source: Mapping[str, Any] = field(default_factory=dict)
    """What the stressed matrix is computed from (``mkt:{m}:stressed`` meta, its version and read scale)."""

    @property
    def multiple(self) -> float | None:
        """Stressed VaR over VaR at the same confidence."""
        return self.stressed_var / self.var if self.var else None

    @property
    def of_limit(self) -> float | None:
        """Stressed VaR over the stressed-VaR limit (None without one)."""
        return self.stressed_var / self.stressed_var_limit if self.stressed_var_limit else None

    def provenance(self) -> list[str]:
        """Lines saying what the stressed figure is computed from and when that input last changed."""
        return stressed_provenance(self.source, self.confidence, self.horizon_days)


def stressed_provenance(source: Mapping[str, Any], confidence: float, horizon_days: float) -> list[str]:
    """The Stress tab's account of the stressed figure: the matrix's source and bar, the stress settings, the
    scaling to the horizon, the matrix version and when it was written (UTC)."""
    version = source.get("version")
    lines = [
        f"Stressed VaR {confidence:.0%}, {horizon_days:g} day(s): the normal (parametric) VaR of today's positions "
        f"on the stored stressed matrix, version {version}, or at today's correlations with every volatility "
        "multiplied by the same factor, whichever is worse (a long/short hedge can gain from raised correlations)."
    ]
    if not source.get("source"):
        lines.append(
            "The matrix was written before its source was recorded (source unknown): a history reload "
            "(`python warmup.py --history FILE`) rebuilds and stamps it."
        )
        return lines
    bpd = float(source.get("bars_per_day") or 0.0)
    lines.append(
        f"Computed from {source['source']} (market version {source.get('market_version')}); every volatility "
        f"x{float(source.get('vol_multiplier', 0.0)):g}, every correlation raised to at least "
        f"{float(source.get('correlation_floor', 0.0)):g}."
    )
    scale = float(source.get("scale", 1.0))
    read_bpd = float(source.get("read_bars_per_day") or bpd)
    unit = f"one model bar ({float(source.get('bar_seconds', 0.0)):g} s, {bpd:g} bars a day)"
    scaling = f"Stored per {unit}; scaled to the horizon by sqrt({read_bpd:g} bars x {horizon_days:g} day(s))."
    if scale != 1.0:
        scaling += f" Written for {bpd:g} bars a day, read at {read_bpd:g}: variances x{scale:.6g}."
    lines.append(scaling)
    written = source.get("written_at")
    when = (
        datetime.fromtimestamp(float(written), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if isinstance(written, int | float)
        else "unknown"
    )
    lines.append(f"This input last changed {when} (by {source.get('actor', '?')}).")
    return lines


def stress_view(desk: Desk, portfolio_id: str, trades: list[dict[str, Any]] | None = None) -> StressView:
    result = desk.risk_manager(portfolio_id).stress_test(trades)
    scenarios = pd.DataFrame(result["scenarios"], columns=["name", "description", "pnl", "pnl_pct", "equity_after"])
    return StressView(
        var=float(result["var"]),
        stressed_var=float(result["stressed_var"]),
        stressed_var99=float(result["stressed_var99"]),
        confidence=float(result["var_confidence"]),
        equity=float(result["equity"]),
        scenarios=scenarios,
        method=str(desk.settings.var_method_for(portfolio_id)),
        stressed_var_limit=result.get("stressed_var_limit"),
        horizon_days=float(result.get("var_horizon_days", 1.0)),
        source=dict(result.get("stressed_source") or {}),
    )


# -- what-if basket ------------------------------------------------------------------------------------------

WHAT_IF_COLUMNS = ("ticker", "side", "qty")


@dataclass(frozen=True)
class WhatIfView:
    status: str
    decisions: pd.DataFrame
    """One row per trade: ticker, side, qty, status, delta_var, var_after, reasons."""
    var_before: float | None
    var_after: float | None
    cash_before: float | None
    cash_after: float | None
    stress: StressView | None
    """Stress of the book after the basket's approved trades (None when it cannot be computed)."""


def basket_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The what-if editor's rows as trades; empty rows are skipped, the rest goes to the checks as typed."""
    trades = []
    for row in rows:
        ticker, side, qty = row.get("ticker"), row.get("side"), row.get("qty")
        if _blank(ticker) and _blank(qty):
            continue
        number = float_or_none(qty)
        trades.append(
            {
                "ticker": None if _blank(ticker) else str(ticker),
                "side": None if _blank(side) else str(side),
                "qty": int(number)
                if number is not None and number.is_integer()
                else (number if number is not None else qty),
            }
        )
    return trades


def _blank(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def what_if_view(desk: Desk, portfolio_id: str, trades: list[dict[str, Any]]) -> WhatIfView:
    """Check a basket cumulatively (nothing is written) and stress the book it would leave."""
    if not trades:
        raise InputError("add at least one trade to the basket")
    rm = desk.risk_manager(portfolio_id)
    result = rm.what_if(trades)
    rows = []
    for trade, d in zip(trades, result["decisions"], strict=True):
        rows.append(
            {
                "ticker": trade["ticker"],
                "side": trade["side"],
                "qty": trade["qty"],
                "status": d["status"],
                "delta_var": d.get("delta_var"),
                "var_after": d.get("var_after"),
                "reasons": "; ".join(f"{r['code']}: {r['message']}" for r in d.get("reasons") or []),
            }
        )
    try:
        stress = stress_view(desk, portfolio_id, trades)
    except RiskdeskError:
        stress = None
    return WhatIfView(
        status=result["status"],
        decisions=pd.DataFrame(rows, columns=["ticker", "side", "qty", "status", "delta_var", "var_after", "reasons"]),
        var_before=result.get("var_before"),
        var_after=result.get("var_after"),
        cash_before=result.get("cash_before"),
        cash_after=result.get("cash_after"),
        stress=stress,
    )


# -- VaR surface and backtest --------------------------------------------------------------------------------

SURFACE_STEPS = 21


def long_only(desk: Desk, portfolio_id: str) -> bool:
    """Whether the portfolio is a cash account (no short positions: what-if and surface offer none)."""
    book = desk.store.read_portfolio(portfolio_id)
    return book is not None and str(book.account_type) == AccountType.CASH


def surface_view(desk: Desk, portfolio_id: str, ticker_a: str, ticker_b: str, steps: int = SURFACE_STEPS) -> Any:
    """VaR (the portfolio's method, the limit's confidence and horizon) over a grid of sizes of two positions
    (logic.analytics)."""
    from logic import analytics
    from logic.risk_models import risk_model_of

    rm = desk.risk_manager(portfolio_id)
    model = desk.market_model()
    snap = model.header
    state = rm.get_portfolio_state()
    if state is None:
        raise rm.last_error or StoreEmptyError("no portfolio in the store")
    valuation = value_portfolio(state, snap)
    if valuation.missing:
        raise CorruptDataError(f"no usable price for {', '.join(valuation.missing)}: cannot draw the surface")
    index = {t: i for i, t in enumerate(snap.tickers)}
    for t in (ticker_a, ticker_b):
        if t not in index:
            raise InputError(f"{t} is not in the market data")
    ia, ib = index[ticker_a], index[ticker_b]
    limits = live_limits(desk, portfolio_id)
    equity = valuation.equity
    qty_a = analytics.qty_grid(float(valuation.qty[ia]), float(snap.prices[ia]), equity, steps)
    qty_b = analytics.qty_grid(float(valuation.qty[ib]), float(snap.prices[ib]), equity, steps)
    if str(state.account_type) == AccountType.CASH:  # a cash account cannot hold a short: the grid stops at 0
        qty_a, qty_b = (_long_only_grid(q) for q in (qty_a, qty_b))
    horizon = desk.settings.model.bars_per_day * limits.var_horizon_days
    return analytics.var_surface(
        np.asarray(valuation.market_values, dtype=float),
        snap.prices,
        model.cov,
        ia,
        ib,
        qty_a,
        qty_b,
        confidence=limits.var_confidence,
        horizon_bars=horizon,
        tickers=(ticker_a, ticker_b),
        model=risk_model_of(model, desk.settings.var_method_for(portfolio_id), horizon),
    )


def _long_only_grid(qty: np.ndarray) -> np.ndarray:
    """The grid's points at or above zero shares, with zero itself when the grid crossed it (the current
    position stays on the grid)."""
    if qty[0] >= 0:
        return qty
    return np.concatenate(([0.0], qty[qty > 0]))


BACKTEST_ROWS = 500
"""Closed horizons of the stored backtest log a page reads (newest; both tracks)."""
BACKTEST_TRACKS: tuple[str, ...] = ("limit", "bar")
"""The stored backtest's tracks: the limit's horizon, one bar (:class:`logic.backtest.Track`)."""


def zone_label(zone: object, observations: int, minimum: int) -> str:
    """What the backtest table shows for a zone: the zone, or why there is none (the rolling window holds
    ``observations``, fewer than the ``minimum`` a zone is given at: ``model.backtest_zone_min_observations``)."""
    if isinstance(zone, str):
        return zone
    return f"no zone before {minimum:,} observation{'s' if minimum != 1 else ''} ({observations:,} so far)"


def backtest_view(desk: Desk, portfolio_id: str) -> Any:
    """The continuous backtest of the portfolio the backtest runner (logic/backtest_runner.py) stored, every
    configured method side by side (:func:`logic.analytics.stored_backtest`), or None when the runner has not
    stored one yet. Each table's
    ``zone`` is :func:`zone_label`'s: a zone, or why there is none yet."""
    from logic import analytics

    summary = desk.store.read_backtest_summary(portfolio_id)
    if summary is None:
        return None
    stored = analytics.stored_backtest(summary, desk.store.read_backtest_observations(portfolio_id, BACKTEST_ROWS))
    minimum = int(summary.get("zone_min_observations", 1))  # a summary naming no minimum zones from the first
    for table in stored.tables.values():
        table["zone"] = [zone_label(z, int(n or 0), minimum)
                         for z, n in zip(table["zone"], table["rolling_observations"], strict=True)]  # fmt: skip
    return stored
