"""logic/decisions.py edges the mutation run of issue 12 found untested: fees in basis points on a large
notional, and positions of a single share (closing, flipping), against hand-computed exact Decimals."""

from __future__ import annotations

from decimal import Decimal

from engine.records import Position, Side
from engine.settings import Fees
from logic.decisions import book_fill, commission


def test_a_fee_in_basis_points_is_charged_on_the_whole_notional() -> None:
    fees = Fees(per_share=Decimal(0), bps=Decimal(10), minimum=Decimal(0))

    assert commission(fees, 10_000, Decimal(100)) == Decimal("1000.00")  # 10 bp of 1,000,000


def test_closing_a_single_share_long_realizes_its_gain() -> None:
    booking = book_fill(Position(qty=1, avg_price=Decimal(100)), Side.SELL, 1, Decimal(110), Decimal(1))

    assert booking.position == Position(qty=0, avg_price=Decimal(0), realized_pnl=Decimal(10))
    assert booking.realized == Decimal(10)


def test_flipping_a_single_share_long_opens_the_short_at_the_fill_price() -> None:
    booking = book_fill(Position(qty=1, avg_price=Decimal(100)), Side.SELL, 3, Decimal(90), Decimal(0))

    assert booking.position.qty == -2 and booking.position.avg_price == Decimal(90)
    assert booking.realized == Decimal(-10)


def test_reducing_a_long_to_one_share_keeps_its_average() -> None:
    booking = book_fill(Position(qty=10, avg_price=Decimal(100)), Side.SELL, 9, Decimal(120), Decimal(0))

    assert booking.position.qty == 1 and booking.position.avg_price == Decimal(100)
    assert booking.realized == Decimal(180)
