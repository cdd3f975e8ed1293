"""Reason codes of the pre-trade gate, and the exact money arithmetic of a fill.

Every check of :class:`logic.risk_manager.RiskManager` that fails adds one reason ``{"code", "message"}`` to a
decision; ``code`` is one of :class:`Reason` (stable, for programs and alert rules) and ``message`` is a
sentence a trader can act on. A decision reports *every* failed check, not only the first.

Money conventions (all :class:`~decimal.Decimal`, never float):

- fill price: the last price of the market snapshot, quantized to :data:`PRICE_QUANTUM` (0.0001, half-even);
- notional: ``qty * fill price``, exact (at most 4 decimal places);
- fee: ``max(minimum, per_share * qty + bps * notional / 10_000)`` rounded half-up to the cent;
- cash: ``- notional - fee`` on a BUY, ``+ notional - fee`` on a SELL, exact;
- average price: weighted average on adds, rounded half-even to :data:`AVG_PRICE_QUANTUM` (1e-8); unchanged
  on a reduction; zero when flat; the fill price when a margin position flips side (the new side opens there);
- realized P&L (average cost): ``(fill - avg) * closed qty * sign(old position)``, gross of fees; fees are
  accumulated separately in ``fees_paid`` (net realized = realized - fees).

So ``cash + qty * price`` at the fill price changes by exactly ``-fee``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any

from engine.settings import Fees
from engine.store import Position

PRICE_QUANTUM = Decimal("0.0001")
"""Fill prices are quantized to this (sub-penny precision, as US equities allow below $1)."""
AVG_PRICE_QUANTUM = Decimal("0.00000001")
"""Average cost per share keeps eight decimal places (a weighted average does not terminate)."""
CENT = Decimal("0.01")
"""Fees are charged in whole cents."""

SIDES = ("BUY", "SELL")


class Reason(StrEnum):
    """Why a trade is refused. The value is the stable code stored in decisions and the trade log."""

    UNKNOWN_TICKER = "UNKNOWN_TICKER"
    """The ticker is not in the market snapshot (not in the universe, or not yet added)."""
    BAD_QUANTITY = "BAD_QUANTITY"
    """Quantity is not a positive whole number of shares, is not finite, or exceeds ``max_order_qty``."""
    BAD_SIDE = "BAD_SIDE"
    """Side is neither BUY nor SELL."""
    MISSING_PRICE = "MISSING_PRICE"
    """The ticker (or a held ticker needed for the risk figures) has no usable price: NaN, inf or <= 0."""
    STALE_PRICE = "STALE_PRICE"
    """The last price is older than ``stale_price_seconds``."""
    PRICE_COLLAR = "PRICE_COLLAR"
    """The last price is further than ``price_collar_pct`` from the session reference price (or has none)."""
    MAX_NOTIONAL = "MAX_NOTIONAL"
    """``qty * price`` exceeds ``max_order_notional``."""
    INSUFFICIENT_CASH = "INSUFFICIENT_CASH"
    """Cash account: cost plus fees exceed the cash (cash would go negative)."""
    OVERSELL = "OVERSELL"
    """Cash account: selling more shares than are held."""
    SHORT_NOT_ALLOWED = "SHORT_NOT_ALLOWED"
    """Cash account: selling a ticker that is not held (a short sale)."""
    MARGIN = "MARGIN"
    """Margin account: post-trade initial margin (gross exposure x initial_margin) would exceed equity."""
    VAR_LIMIT = "VAR_LIMIT"
    """Post-trade VaR would exceed ``var_limit`` and the trade adds VaR."""
    CONCENTRATION = "CONCENTRATION"
    """The position would exceed ``max_concentration`` of equity and the trade grows it."""
    RATE_LIMIT = "RATE_LIMIT"
    """More than ``max_orders_per_minute`` fills in the last 60 seconds."""
    TRADING_HALTED = "TRADING_HALTED"
    """The portfolio's trading state is HALTED, or missing/unreadable (fail closed)."""
    REDUCING_ONLY = "REDUCING_ONLY"
    """The trading state is REDUCING and the trade does not reduce the absolute position."""
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    """Redis cannot be reached: nothing is approved (fail closed)."""
    STORE_EMPTY = "STORE_EMPTY"
    """The store holds no market snapshot or no such portfolio: run the warm-up."""
    STORE_CORRUPT = "STORE_CORRUPT"
    """A stored value does not decode, or the covariance is not a valid matrix: fail closed."""
    SCHEMA_MISMATCH = "SCHEMA_MISMATCH"
    """The store was written by another layout version."""
    BAD_ORDER_ID = "BAD_ORDER_ID"
    """execute_trade: client_order_id is not a non-empty string of at most 128 characters."""
    RETRY_EXHAUSTED = "RETRY_EXHAUSTED"
    """execute_trade: concurrent trades kept changing the portfolio; nothing was traded, send it again."""


def reason(code: Reason, message: str) -> dict[str, str]:
    """One coded reason of a decision."""
    return {"code": code.value, "message": message}


# -- inputs --------------------------------------------------------------------------------------------------


def parse_quantity(qty: Any, max_qty: int) -> tuple[int | None, str | None]:
    """A whole, positive, finite number of shares up to ``max_qty``: ``(shares, None)`` or ``(None, why)``.

    Integral floats and Decimals (``100.0``) are accepted; strings, booleans, fractions, NaN and inf are not.
    """
    if isinstance(qty, bool) or isinstance(qty, str | bytes) or qty is None:
        return None, f"quantity {qty!r} is not a number of shares"
    try:
        if isinstance(qty, int):
            shares = int(qty)
        elif isinstance(qty, Decimal):
            if not qty.is_finite():
                return None, f"quantity {qty} is not finite"
            if qty != qty.to_integral_value():
                return None, f"quantity {qty} is not a whole number of shares"
            shares = int(qty)
        else:
            value = float(qty)  # numpy scalars and floats
            if not math.isfinite(value):
                return None, f"quantity {qty!r} is not finite"
            if not value.is_integer():
                return None, f"quantity {qty!r} is not a whole number of shares"
            shares = int(value)
    except (TypeError, ValueError, OverflowError):
        return None, f"quantity {qty!r} is not a number of shares"
    if shares <= 0:
        return None, f"quantity must be positive, got {shares}"
    if shares > max_qty:
        return None, f"quantity {shares:,} exceeds the fat-finger limit of {max_qty:,} shares per order"
    return shares, None


def parse_side(side: Any) -> str | None:
    """``"BUY"`` or ``"SELL"`` (case-insensitive), else None."""
    if not isinstance(side, str):
        return None
    normalized = side.strip().upper()
    return normalized if normalized in SIDES else None


# -- money ---------------------------------------------------------------------------------------------------


def fill_price(last: float) -> Decimal:
    """The exact Decimal a market order fills at, from the float last price."""
    # repr() is the shortest string that round-trips the float: no binary noise enters the books
    return Decimal(repr(float(last))).quantize(PRICE_QUANTUM, rounding=ROUND_HALF_EVEN)


def commission(fees: Fees, qty: int, price: Decimal) -> Decimal:
    """``max(minimum, per_share * qty + bps * notional / 10_000)``, rounded half-up to the cent."""
    variable = fees.per_share * qty + fees.bps * (price * qty) / Decimal(10_000)
    return max(fees.minimum, variable).quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Booking:
    """The effect of one fill on one position and on cash."""

    position: Position
    """The position after the fill (qty 0 and avg 0 when it was closed)."""
    realized: Decimal
    """Realized P&L of this fill (average cost, gross of fees)."""
    cash_delta: Decimal
    """Signed change of cash, fee included."""
    notional: Decimal
    fee: Decimal


def book_fill(before: Position | None, side: str, qty: int, price: Decimal, fee: Decimal) -> Booking:
    """Apply a fill of ``qty`` shares at ``price`` to a position (average-cost accounting).

    Notes
    -----
    With signed quantities ``q0`` (before) and ``s = +qty`` (BUY) or ``-qty`` (SELL), ``q1 = q0 + s``:

    - adding (``q0 == 0`` or same sign): ``avg1 = (|q0| avg0 + qty price) / |q1|``;
    - reducing: ``closed = min(qty, |q0|)``, ``realized = (price - avg0) closed sign(q0)``; ``avg1 = avg0``
      while the position keeps its side, 0 when flat, ``price`` when it flips to the other side.
    """
    q0 = before.qty if before else 0
    avg0 = before.avg_price if before else Decimal(0)
    realized_total = before.realized_pnl if before else Decimal(0)
    signed = qty if side == "BUY" else -qty
    q1 = q0 + signed
    notional = price * qty
    realized = Decimal(0)
    if q0 == 0 or (q0 > 0) == (signed > 0):
        avg1 = ((abs(q0) * avg0 + notional) / abs(q1)).quantize(AVG_PRICE_QUANTUM, rounding=ROUND_HALF_EVEN)
    else:
        closed = min(qty, abs(q0))
        realized = (price - avg0) * closed * (1 if q0 > 0 else -1)
        if q1 == 0:
            avg1 = Decimal(0)
        elif (q1 > 0) == (q0 > 0):
            avg1 = avg0
        else:
            avg1 = price
    cash_delta = (-notional if side == "BUY" else notional) - fee
    return Booking(
        position=Position(qty=q1, avg_price=avg1, realized_pnl=realized_total + realized),
        realized=realized,
        cash_delta=cash_delta,
        notional=notional,
        fee=fee,
    )
