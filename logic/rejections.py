"""Decisions reached without running the checks, and the guards that turn absurd market data into one.

- A store failure, or an order refused before any check: :func:`store_failure_decision`, built on
  :func:`empty_decision_fields` (REJECTED, no figures).
- Absurd but finite market data (a price of 1e308 replayed past the feed's filter, a variance of 1e300): a price
  above :data:`MAX_BOOKABLE_PRICE` is no usable price (``MISSING_PRICE``); a figure that overflows, or comes
  out non-finite, refuses the order with ``STORE_CORRUPT`` (:func:`non_finite_figures`,
  :func:`not_finite_decision`). The gate never raises on them and never approves on a NaN comparison.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from engine.errors import StoreError
from engine.records import Decision, DecisionStatus, OrderIntent, Reason, ReasonCode
from engine.settings import Limits
from logic.decisions import parse_quantity, parse_side, reason

NOT_FINITE_MESSAGE = "the stored market gives risk figures that are not finite (an absurd price or variance)"
"""Message of the ``STORE_CORRUPT`` rejection of an order whose figures overflow."""
RISK_FIGURES = (
    "notional", "est_fees", "liquidity_cost", "var_before", "var_after", "delta_var", "marginal_var",
    "cash_after", "equity_after", "concentration_after", "margin_level_after",
)  # fmt: skip
"""Decision fields computed from the market; all cleared when one of them is not finite."""


MAX_BOOKABLE_PRICE = 1e18
"""Largest price the books take: its fill (4 decimals) times the largest order stays exact in Decimal's 28-digit
context. A stored price above it (1e308 replayed past the feed's filter) is no usable price: the gate refuses
with ``MISSING_PRICE`` and the monitor skips the portfolios holding it."""


def bookable(price: float) -> bool:
    """``price`` is a finite positive float of at most :data:`MAX_BOOKABLE_PRICE`."""
    return math.isfinite(price) and 0 < price <= MAX_BOOKABLE_PRICE


def non_finite_figures(d: Mapping[str, Any]) -> str | None:
    """The first of :data:`RISK_FIGURES` in ``d`` that is a non-finite float, named, or None."""
    for name in RISK_FIGURES:
        value = d.get(name)
        if isinstance(value, float) and not math.isfinite(value):
            return f"{name} is {value!r}"
    return None


def not_finite_decision(portfolio_id: str, ticker: Any, limits: Limits, now: float, exc: Exception) -> Decision:
    """REJECTED ``STORE_CORRUPT``: the stored market gave figures that cannot be computed (an absurd price or
    variance overflowing a float)."""
    d = empty_decision_fields(portfolio_id, ticker, limits, now)
    d["reasons"] = (reason(ReasonCode.STORE_CORRUPT, f"{NOT_FINITE_MESSAGE} ({type(exc).__name__}: {exc})"),)
    return Decision(**d)


def empty_decision_fields(portfolio_id: str, ticker: Any, limits: Limits, now: float) -> dict[str, Any]:
    """The fields of a :class:`~engine.records.Decision` before any check ran (REJECTED, no figures)."""
    return {
        "status": DecisionStatus.REJECTED,
        "reasons": (),
        "portfolio_id": portfolio_id,
        "ticker": ticker if isinstance(ticker, str) else repr(ticker),
        "side": None,
        "qty": None,
        "price": None,
        "reference_price": None,
        "notional": None,
        "est_fees": None,
        "liquidity_cost": None,
        "var_before": None,
        "var_after": None,
        "delta_var": None,
        "marginal_var": None,
        "var_limit": float(limits.var_limit),
        "var_confidence": limits.var_confidence,
        "var_horizon_days": limits.var_horizon_days,
        "cash_before": None,
        "cash_after": None,
        "position_before": None,
        "position_after": None,
        "equity_after": None,
        "concentration_after": None,
        "margin_level_after": None,
        "trading_state": None,
        "market_version": None,
        "checked_at": now,
        "intent": OrderIntent.TRADE,
        "max_qty_allowed": None,
    }


def store_failure_decision(
    portfolio_id: str, limits: Limits, ticker: Any, qty: Any, side: Any, error: StoreError | None, now: float
) -> Decision:
    """REJECTED for a store failure (or, with ``error=None``, with no reason yet: the caller adds one)."""
    d = empty_decision_fields(portfolio_id, ticker, limits, now)
    shares, _ = parse_quantity(qty, limits.max_order_qty)
    d.update(
        qty=shares,
        side=parse_side(side),
        status=DecisionStatus.REJECTED,
        reasons=(store_reason(error),) if error is not None else (),
    )
    return Decision(**d)


def store_reason(error: StoreError) -> Reason:
    code = error.code if error.code in ReasonCode.__members__ else ReasonCode.STORE_CORRUPT
    message = f"{error.detail} (fix: {error.fix})" if error.fix else error.detail
    return Reason(code=ReasonCode(code), message=message)
