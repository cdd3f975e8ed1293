"""Crisis semantics of the pre-trade gate: what counts as risk-reducing, and the desk limits added for issue 12.

A trade is **risk-reducing** (:func:`shrinks_position`) when it shrinks the absolute position without flipping it.
A flip is not, even when it lowers VaR and gross exposure: the quantity it opens on the other side is new risk
(:mod:`logic.checks` measures it from the book with the ticker flat). A risk-reducing trade is never refused by the
limits in :data:`WAIVED_WHEN_REDUCING_RISK` (collar, VaR, stressed VaR, concentration, margin, margin floor,
leverage, daily loss, position limit, REDUCING): SEC 15c3-5 and ESMA RTS 6 ask that controls never prevent risk
reduction. It is still refused for bad input, unknown tickers, missing or stale prices, a price beyond the sanity
factor of the collar's reference (``PRICE_SANITY``: a price that cannot be true is no price to cut risk at), store
errors, HALTED (for a trader's order), cash-account inventory and cash, the fat-finger limits and the order rate.

Each check here appends its coded reason when the trade *adds* to what the limit bounds, the convention of the
VaR, concentration and margin checks of :mod:`logic.checks`:

============================  =============================================================================
``max_gross_leverage``        gross_after / equity_after > limit and the gross exposure grows
``stressed_var_limit``        stressed VaR after > limit and the trade adds stressed VaR
``max_daily_loss``            equity now - day-open equity <= -limit (loss reached): every trade that is not
                              risk-reducing (the day open is the monitor's, ``pf:{id}:peaks`` ``day_open``;
                              unknown, e.g. no snapshot yet today, fails closed while the limit is set)
``max_position_qty`` /        |q1| > the ticker's limit and |q1| > |q0|
``position_limits``
``min_margin_level_after``    margin level after < floor and the gross exposure grows; margin level is the
                              alert rules' ``margin.level``: equity / (gross x initial_margin) x 100
============================  =============================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from engine import math_logic
from engine.errors import StoreError
from engine.market_model import MarketModel, MarketModelCache
from engine.records import Float64Array, Reason, ReasonCode
from engine.settings import Limits
from engine.store import Store
from logic.decisions import reason

RATIO_SLACK = 1e-12
"""Relative slack of a limit on a ratio of money (margin level, gross leverage, concentration). The ratio is
computed in floats from decimal money and lands an ulp or two off a limit it is exactly at: a margin level of
exactly 150% read 149.99999999999997 and was refused at a 150% floor. One share or one cent moves a ratio by far
more than this, so one unit over a limit is still refused."""


def ratio_above(value: float, limit: float) -> bool:
    """``value`` is above ``limit`` by more than float noise (:data:`RATIO_SLACK`)."""
    return value > limit + RATIO_SLACK * abs(limit)


def ratio_below(value: float, floor: float) -> bool:
    """``value`` is below ``floor`` by more than float noise (:data:`RATIO_SLACK`)."""
    return value < floor - RATIO_SLACK * abs(floor)


WAIVED_WHEN_REDUCING_RISK: frozenset[ReasonCode] = frozenset(
    {
        ReasonCode.PRICE_COLLAR,
        ReasonCode.VAR_LIMIT,
        ReasonCode.STRESSED_VAR,
        ReasonCode.CONCENTRATION,
        ReasonCode.MARGIN,
        ReasonCode.MARGIN_FLOOR,
        ReasonCode.LEVERAGE,
        ReasonCode.DAILY_LOSS,
        ReasonCode.POSITION_LIMIT,
        ReasonCode.REDUCING_ONLY,
    }
)
"""The refusals a risk-reducing trade never gets (every other reason still refuses it)."""

VALIDATED_MATRICES = 8
"""Stressed matrices whose validation result is remembered (a new one comes with each warm-up or market)."""
DayOpen = Callable[[float], float | None]
"""``now -> equity at the open of the day containing now`` (None when unknown)."""


def shrinks_position(q0: int, q1: int) -> bool:
    """The absolute position gets smaller and does not flip side: ``q0 * q1 >= 0 and |q1| < |q0|``."""
    return q0 * q1 >= 0 and abs(q1) < abs(q0)


def position_cap(limits: Limits, ticker: str) -> int | None:
    """The ticker's absolute position limit in shares (its ``position_limits`` entry, else the global one)."""
    return limits.position_limits.get(ticker, limits.max_position_qty)


@dataclass(slots=True)
class Figures:
    """What the new limits read about one trade (dollars; shares signed)."""

    ticker: str
    q0: int
    q1: int
    equity_before: float
    equity_after: float
    gross_before: float
    gross_after: float
    margin_account: bool
    initial_margin: float


def check_leverage(limits: Limits, f: Figures, reasons: list[Reason]) -> None:
    cap = limits.max_gross_leverage
    if cap is None or f.gross_after <= f.gross_before:
        return
    if f.equity_after <= 0:
        reasons.append(
            reason(ReasonCode.LEVERAGE, f"equity would be {f.equity_after:,.2f}: the gross exposure may not grow")
        )
    elif ratio_above(f.gross_after / f.equity_after, cap):
        reasons.append(
            reason(
                ReasonCode.LEVERAGE,
                f"gross leverage would be {f.gross_after / f.equity_after:.2f}x (gross {f.gross_after:,.0f} / "
                f"equity {f.equity_after:,.0f}; limit {cap:g}x)",
            )
        )


def check_position(limits: Limits, f: Figures, reasons: list[Reason]) -> None:
    cap = position_cap(limits, f.ticker)
    if cap is not None and abs(f.q1) > cap and abs(f.q1) > abs(f.q0):
        reasons.append(
            reason(
                ReasonCode.POSITION_LIMIT,
                f"{f.ticker} position would be {f.q1:+,d} shares (limit ±{cap:,d})",
            )
        )


def check_margin_floor(limits: Limits, f: Figures, reasons: list[Reason]) -> float | None:
    """Appends MARGIN_FLOOR when a trade growing the gross exposure leaves the margin level below the floor;
    returns the margin level after (None for a cash account or no exposure)."""
    if not f.margin_account:
        return None
    used = f.gross_after * f.initial_margin
    level = f.equity_after / used * 100.0 if used > 0 else None
    floor = limits.min_margin_level_after
    if level is not None and ratio_below(level, floor) and f.gross_after > f.gross_before:
        reasons.append(
            reason(
                ReasonCode.MARGIN_FLOOR,
                f"margin level would fall to {level:.1f}% (floor {floor:g}%: equity {f.equity_after:,.0f} / "
                f"initial margin {used:,.0f})",
            )
        )
    return level


def check_stressed_var(
    limits: Limits, before: float | None, after: float | None, why: str | None, reasons: list[Reason]
) -> None:
    """``before``/``after``: stressed VaR in dollars, or None with ``why`` when the stressed matrix is unusable
    (fail closed: the trade is refused unless it reduces risk)."""
    cap = limits.stressed_var_limit
    if cap is None:
        return
    if before is None or after is None:
        reasons.append(reason(ReasonCode.STRESSED_VAR, f"stressed VaR cannot be computed ({why}): fail closed"))
    elif after > float(cap) and after > before:
        reasons.append(
            reason(
                ReasonCode.STRESSED_VAR,
                f"stressed VaR would rise from {before:,.0f} to {after:,.0f}, above the limit {cap:,.0f}",
            )
        )


def check_daily_loss(
    limits: Limits, equity_now: float, day_open: float | None, why: str | None, reasons: list[Reason]
) -> None:
    """Refuses (risk-reducing trades are waived later) once ``equity_now - day_open <= -max_daily_loss``."""
    cap = limits.max_daily_loss
    if cap is None:
        return
    if day_open is None:
        reasons.append(reason(ReasonCode.DAILY_LOSS, f"today's P&L is unknown ({why}): only risk-reducing trades pass"))
        return
    pnl = equity_now - day_open
    if pnl <= -float(cap):
        reasons.append(
            reason(
                ReasonCode.DAILY_LOSS,
                f"today's loss {-pnl:,.2f} reached the daily loss limit {cap:,.2f}: only risk-reducing trades",
            )
        )


class Lookups:
    """Reads beyond the trade view that some limits need, made at most once per evaluation (the sizing search
    of a refused order reuses them).

    ``validated`` (owned by the caller, kept across evaluations): the stressed matrices already validated, per
    (stressed version, market key), with the problem found (None: valid); the O(N³) check runs once per matrix.
    ``vol_multiplier``: ``settings.model.stress_vol_multiplier``, the crisis scenario of today's correlations
    that a stressed VaR is also taken under (:func:`engine.math_logic.stressed_portfolio_sigma`).
    """

    def __init__(
        self,
        limits: Limits,
        models: MarketModelCache,
        horizon_bars: float,
        vol_multiplier: float,
        day_open: DayOpen | None,
        now: float,
        validated: dict[Any, str | None] | None = None,
    ) -> None:
        self.limits = limits
        self.models = models
        self.horizon_bars = horizon_bars
        self.vol_multiplier = vol_multiplier
        self.provider = day_open
        self.now = now
        self.validated: dict[Any, str | None] = {} if validated is None else validated
        self._day: tuple[float | None, str | None] | None = None
        self._stressed: dict[Any, tuple[Float64Array | None, float | None, str | None]] = {}

    def day_open(self) -> tuple[float | None, str | None]:
        """``(equity at today's open, None)`` or ``(None, why it is unknown)``."""
        if self._day is None:
            provider = self.provider
            try:
                value = provider(self.now) if provider is not None else None
            except StoreError as exc:
                self._day = (None, exc.detail)
            except redis.RedisError as exc:
                self._day = (None, f"Redis is unreachable: {exc}")
            else:
                self._day = (value, None) if value is not None else (None, "no opening equity recorded today")
        return self._day

    def stressed(self, model: MarketModel, x: Float64Array) -> tuple[Float64Array | None, float | None, str | None]:
        """``(stressed matrix in the model's order, stressed VaR of x, None)`` or ``(None, None, why)``; the
        matrix is validated (as the stress page does) once per stored version. The stressed VaR is the worse of
        that matrix and of ``model.cov`` at ``vol_multiplier`` times the volatilities (:meth:`stressed_var`)."""
        key = (model.key, id(x))
        if key not in self._stressed:
            self._stressed[key] = self._stressed_var(model, x)
        return self._stressed[key]

    def _stressed_var(
        self, model: MarketModel, x: Float64Array
    ) -> tuple[Float64Array | None, float | None, str | None]:
        try:
            stressed = self.models.stressed(model)
        except StoreError as exc:
            return None, None, exc.detail
        except redis.RedisError as exc:
            return None, None, f"Redis is unreachable: {exc}"
        tag = (stressed.version, stressed.market_key)
        if tag not in self.validated:
            try:
                math_logic.check_covariance(stressed.cov)
            except ValueError as exc:
                self.validated[tag] = f"the stressed matrix is not valid: {exc}"
            else:
                self.validated[tag] = None
            while len(self.validated) > VALIDATED_MATRICES:
                del self.validated[next(iter(self.validated))]
        why = self.validated[tag]
        if why is not None:
            return None, None, why
        return stressed.cov, self.stressed_var(model, stressed.cov, x), None

    def stressed_var(self, model: MarketModel, stressed: Float64Array, x: Float64Array) -> float:
        """Stressed VaR of the exposures ``x`` (the model's order) at the limits' confidence and the gate's
        horizon: the worse of the crisis matrix ``stressed`` (validated by :meth:`stressed`) and of the model's
        covariance with every volatility multiplied. The gate takes it of the book before a trade and of the
        book after it, each on its own."""
        return limit_stressed_var(x, stressed, model.cov, self.limits, self.horizon_bars, self.vol_multiplier)


def limit_stressed_var(
    x: Float64Array,
    stressed: Float64Array,
    cov: Float64Array,
    limits: Limits,
    horizon_bars: float,
    vol_multiplier: float,
) -> float:
    """Stressed VaR of the exposures ``x`` on the basis ``stressed_var_limit`` is enforced on: the limits'
    ``var_confidence`` over ``horizon_bars`` (the limit's ``var_horizon_days`` in bars), the worse of the crisis
    matrix ``stressed`` and of ``cov`` at ``vol_multiplier`` times the volatilities (matrices already
    validated). The gate (:meth:`Lookups.stressed_var`) and the monitor's snapshot (``var.stressed_limit_var``)
    both take it from here, so an alert or a gauge on it measures what the gate refuses."""
    return math_logic.get_stressed_var(
        x, stressed, 1.0, limits.var_confidence, horizon_bars, cov=cov, vol_multiplier=vol_multiplier, validate=False
    )


def read_day_open(
    store: Store, portfolio_id: str, period_ids: Callable[[float], tuple[str, str]], now: float
) -> float | None:
    """The equity at the open of today (the monitor's ``day_open``), or None when the monitor has not written
    today's peaks yet. ``period_ids``: the day and week ids of a time, the monitor's own
    (:meth:`engine.sessions.MarketCalendar.period_ids`: an exchange's session date, or the ``24/7`` rule), so
    that "today" is the day the monitor stamped. Raises the store's typed errors."""
    peaks = store.read_peaks(portfolio_id)
    if peaks is None:
        return None
    day, _week = period_ids(now)
    return peaks.day_open if peaks.day == day else None
