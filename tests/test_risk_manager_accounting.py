"""Exact money arithmetic of a fill (logic/decisions.py): fees, fill prices, average cost, realized P&L."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.settings import Fees
from engine.store import Position
from logic.decisions import (
    book_fill,
    commission,
    fill_price,
    parse_quantity,
    parse_side,
)

D = Decimal


@pytest.mark.parametrize(
    ("qty", "expected"),
    [(1, 1), (100, 100), (100.0, 100), (D("7"), 7), (np.int64(5), 5), (np.float64(3.0), 3)],
)
def test_whole_positive_quantities_are_accepted(qty: object, expected: int) -> None:
    assert parse_quantity(qty, 1000) == (expected, None)


@pytest.mark.parametrize(
    "qty",
    [
        0,
        -1,
        0.5,
        D("1.5"),
        float("nan"),
        float("inf"),
        -float("inf"),
        D("NaN"),
        1e30,
        1001,
        "5",
        b"5",
        None,
        True,
        np.True_,  # a numpy boolean (a bool column of a data editor) is no quantity either, not 1 share
        np.bool_(False),
        [1],
        object(),
    ],
)
def test_everything_else_is_refused_with_a_reason(qty: object) -> None:
    shares, why = parse_quantity(qty, 1000)
    assert shares is None and why


def test_sides_are_buy_or_sell_in_any_case() -> None:
    assert [parse_side(s) for s in ("BUY", "sell", " Buy ", "SHORT", "", None, 1)] == [
        "BUY",
        "SELL",
        "BUY",
        None,
        None,
        None,
        None,
    ]


def test_fill_prices_are_exact_decimals_of_the_float_last_price() -> None:
    assert fill_price(100.1) == D("100.1000")  # not 100.099999999999994315658113919198513031005859375
    assert fill_price(0.123456) == D("0.1235")
    assert fill_price(25.0) == D("25.0000")


@pytest.mark.parametrize(
    ("fees", "qty", "price", "expected"),
    [
        (Fees(D("0.005"), D("0"), D("1.00")), 100, D("50"), D("1.00")),  # 0.50 -> the minimum
        (Fees(D("0.005"), D("0"), D("1.00")), 1001, D("50"), D("5.01")),  # 5.005 rounds half up
        (Fees(D("0"), D("1.5"), D("0")), 10, D("33.3333"), D("0.05")),  # 1.5 bp of 333.333
        (Fees(D("0.01"), D("2"), D("1.00")), 1000, D("100"), D("30.00")),  # 10 + 20
    ],
)
def test_the_commission_is_the_larger_of_the_minimum_and_the_variable_fee_in_cents(
    fees: Fees, qty: int, price: Decimal, expected: Decimal
) -> None:
    assert commission(fees, qty, price) == expected


def test_adding_to_a_position_averages_its_price() -> None:
    booking = book_fill(Position(100, D("10")), "BUY", 50, D("13"), D("1"))

    assert booking.position == Position(150, D("11.00000000"), D("0"))
    assert booking.cash_delta == D("-651") and booking.realized == 0


def test_an_average_that_does_not_terminate_keeps_eight_decimals() -> None:
    booking = book_fill(Position(1, D("1")), "BUY", 2, D("1.0001"), D("0"))

    assert booking.position.avg_price == D("1.00006667")


def test_selling_part_realizes_pnl_at_average_cost_and_keeps_the_average() -> None:
    booking = book_fill(Position(150, D("11"), D("5")), "SELL", 100, D("12.5"), D("1"))

    assert booking.position == Position(50, D("11"), D("155"))
    assert booking.realized == D("150") and booking.cash_delta == D("1249")


def test_closing_flat_resets_the_average() -> None:
    booking = book_fill(Position(50, D("11")), "SELL", 50, D("10"), D("1"))

    assert booking.position.qty == 0 and booking.position.avg_price == 0 and booking.realized == D("-50")


def test_covering_a_short_realizes_the_price_fall() -> None:
    booking = book_fill(Position(-100, D("60")), "BUY", 40, D("50"), D("1"))

    assert booking.position == Position(-60, D("60"), D("400"))
    assert booking.cash_delta == D("-2001")


def test_a_flip_closes_the_old_side_and_opens_the_new_one_at_the_fill_price() -> None:
    booking = book_fill(Position(100, D("50")), "SELL", 150, D("60"), D("2"))

    assert booking.position == Position(-50, D("60"), D("1000"))
    assert booking.cash_delta == D("8998")


def test_opening_from_nothing() -> None:
    assert book_fill(None, "SELL", 10, D("5"), D("1")).position == Position(-10, D("5"), D("0"))


@given(
    q0=st.integers(-10_000, 10_000),
    avg=st.decimals(D("0.01"), D("1000"), places=2),
    qty=st.integers(1, 10_000),
    side=st.sampled_from(("BUY", "SELL")),
    price=st.decimals(D("0.01"), D("1000"), places=4),
    fee=st.decimals(D("0"), D("50"), places=2),
)
def test_cash_plus_holdings_at_the_fill_price_changes_by_minus_the_fee(
    q0: int, avg: Decimal, qty: int, side: str, price: Decimal, fee: Decimal
) -> None:
    before = Position(q0, avg if q0 else D(0))

    booking = book_fill(before if q0 else None, side, qty, price, fee)

    value_change = booking.cash_delta + (booking.position.qty - q0) * price
    assert value_change == -fee
    # realized + unrealized at the fill price equals the unrealized before: P&L is only moved, not made
    unrealized_before = q0 * (price - before.avg_price)
    unrealized_after = booking.position.qty * (price - booking.position.avg_price)
    assert abs(booking.realized + unrealized_after - unrealized_before) <= abs(booking.position.qty) * D(
        "1e-8"
    )
