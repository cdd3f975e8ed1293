"""Marking a portfolio to market: equity, weights, margin, missing prices."""

from __future__ import annotations

from decimal import Decimal

import numpy as np

from engine.store import MarketHeader, PortfolioState, Position
from logic.valuation import value_portfolio


def _header(prices: list[float]) -> MarketHeader:
    return MarketHeader(
        version=1, ts=0.0, tickers=("AAA", "BBB", "CCC"), prices=np.array(prices), price_ts=np.zeros(3)
    )


def test_equity_weights_and_unrealized_follow_from_holdings_and_prices() -> None:
    state = PortfolioState(
        "p", "margin", Decimal("1000"),
        {"AAA": Position(10, Decimal("90")), "CCC": Position(-5, Decimal("30"))},
        initial_margin=0.5,
    )  # fmt: skip

    v = value_portfolio(state, _header([100.0, 50.0, 20.0]))

    np.testing.assert_array_equal(v.qty, [10, 0, -5])
    np.testing.assert_array_equal(v.market_values, [1000.0, 0.0, -100.0])
    assert v.equity == 1000 + 1000 - 100
    np.testing.assert_allclose(v.weights, np.array([1000.0, 0.0, -100.0]) / 1900)
    np.testing.assert_allclose(v.unrealized, [100.0, 0.0, 50.0])
    assert v.gross_exposure == 1100 and v.leverage == 1100 / 1900
    assert v.margin_used == 550
    assert v.margin_level == 1900 / 550 * 100
    assert v.missing == ()


def test_a_cash_account_has_no_margin_level_and_missing_prices_are_reported() -> None:
    state = PortfolioState(
        "p", "cash", Decimal("10"), {"AAA": Position(1, Decimal("1")), "ZZZ": Position(3, Decimal("1"))}
    )

    v = value_portfolio(state, _header([float("nan"), 1.0, 1.0]))

    assert v.margin_level is None
    assert v.missing == ("AAA", "ZZZ")
    assert v.market_value == 0.0  # no price, no value: callers must fail closed on `missing`
