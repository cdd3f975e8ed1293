"""Reason codes of the pre-trade gate, and the exact money arithmetic of a fill.

Every check of :class:`logic.risk_manager.RiskManager` that fails adds one :class:`engine.records.Reason` to a
decision; its ``code`` is one of :class:`engine.records.ReasonCode` (stable, for programs and alert rules) and
``message`` is a sentence a trader can act on. A decision reports *every* failed check, not only the first.

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
from typing import Any

import numpy as np

from engine.records import OrderIntent, Position, Reason, ReasonCode, Side
from engine.settings import Fees

PRICE_QUANTUM = Decimal("0.0001")
"""Fill prices are quantized to this (sub-penny precision, as US equities allow below $1)."""
AVG_PRICE_QUANTUM = Decimal("0.00000001")
"""Average cost per share keeps eight decimal places (a weighted average does not terminate)."""
CENT = Decimal("0.01")
"""Fees are charged in whole cents."""

SIDES: tuple[Side, ...] = tuple(Side)


def reason(code: ReasonCode, message: str) -> Reason:
    """One coded reason of a decision."""
    return Reason(code=code, message=message)


# -- inputs --------------------------------------------------------------------------------------------------


def parse_quantity(qty: Any, max_qty: int) -> tuple[int | None, str | None]:
    """A whole, positive, finite number of shares up to ``max_qty``: ``(shares, None)`` or ``(None, why)``.

    Integral floats and Decimals (``100.0``) are accepted; strings, booleans (numpy's too: ``np.True_`` is no
    Python bool, and ``float`` makes it 1.0), fractions, NaN and inf are not.
    """
    if isinstance(qty, bool | np.bool_ | str | bytes) or qty is None:
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


def parse_intent(intent: Any) -> OrderIntent | None:
    """``OrderIntent.TRADE`` or ``OrderIntent.LIQUIDATION`` from the enum or its value in any case and spacing
    (``" Liquidation"``), else None. The gate and the permission check of the views read an intent by this one
    rule: read two ways, a trader's ``"LIQUIDATION"`` passed the check as a trade and the gate as a liquidation-only
    order, through HALTED."""
    if isinstance(intent, OrderIntent):
        return intent
    if isinstance(intent, str) and intent.strip().lower() in OrderIntent._value2member_map_:
        return OrderIntent(intent.strip().lower())
    return None


def parse_side(side: Any) -> Side | None:
    """``Side.BUY`` or ``Side.SELL`` from ``"buy"``, ``"SELL"``, ... (case-insensitive), else None."""
    if not isinstance(side, str):
        return None
    normalized = side.strip().upper()
    return Side(normalized) if normalized in SIDES else None


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


def book_fill(before: Position | None, side: Side | str, qty: int, price: Decimal, fee: Decimal) -> Booking:
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
    signed = qty if side == Side.BUY else -qty
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
    cash_delta = (-notional if side == Side.BUY else notional) - fee
    return Booking(
        position=Position(qty=q1, avg_price=avg1, realized_pnl=realized_total + realized),
        realized=realized,
        cash_delta=cash_delta,
        notional=notional,
        fee=fee,
    )
