"""The pre-trade gate while a held ticker has no usable price, on a real redis-server: the equity then counts that
position as 0, so no concentration, leverage, margin or margin-floor check runs on it (no reason made of a partial
equity, ``concentration_after`` and ``margin_level_after`` None) and the order is refused ``MISSING_PRICE`` alone,
as the monitor's snapshot nulls those ratios (logic/snapshot.py). A fully priced book's checks are unchanged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

import warmup
from engine.records import Decision, DecisionStatus, OrderIntent
from engine.settings import settings_from_dict
from engine.store import MarketSnapshot, Store
from logic.risk_manager import RiskManager
from logic.views.trade import deltas_frame, impact_frame, max_qty_offer

from .conftest import TEST_CONFIG, merge

NOW = 1_700_000_000.0
# the colleague's repro book: AAA 100 x 100 = 10,000, BBB 200 x 50 = 10,000, CCC 400 x 200 = 80,000
LONG = {"id": "long", "account_type": "cash", "cash": "20000.00", "holdings": {"CCC": 400, "AAA": 100, "BBB": 200}}

Desk = Callable[..., RiskManager]


@pytest.fixture
def desk(store: Store) -> Desk:
    def build(portfolio: dict[str, Any], override: dict[str, Any] | None = None) -> RiskManager:
        settings = settings_from_dict(merge(TEST_CONFIG, {"portfolios": [portfolio], **(override or {})}))
        warmup.seed(store, settings, now=NOW)
        return RiskManager(store.client, portfolio["id"], settings, clock=lambda: NOW)

    return build


def unprice(store: Store, ticker: str, price: float = float("nan")) -> None:
    """Write a new market snapshot where ``ticker`` has no usable price (the feed lost it)."""
    snap = store.read_market()
    prices = snap.prices.copy()
    prices[snap.tickers.index(ticker)] = price
    store.write_market(
        MarketSnapshot(
            version=snap.version + 1, ts=NOW, tickers=snap.tickers, prices=prices, price_ts=snap.price_ts, cov=snap.cov
        )
    )


def codes(decision: Decision) -> list[str]:
    """The decision's reason codes in order; every reason says why in a non-empty sentence."""
    assert all(isinstance(r.message, str) and r.message for r in decision.reasons), decision.reasons
    return [r.code.value for r in decision.reasons]


@pytest.mark.parametrize("qty", [100, 150])
def test_the_repro_book_is_refused_missing_price_alone_with_no_ratio_of_the_partial_equity(
    desk: Desk, store: Store, qty: int
) -> None:
    rm = desk(LONG)
    priced = rm.check("AAA", qty, "BUY")
    # the true share, all three positions priced: AAA (100 + qty) x 100 over the equity after, cash 20,000 -
    # qty x 100 - fee plus 10,000 + qty x 100 + 10,000 + 80,000: 120,000 - fee (119,999 for the repro's 100)
    fee = max(1.0, 0.01 * qty)
    true_share = (100 + qty) * 100 / (120_000 - fee)
    assert priced.approved and priced.concentration_after == pytest.approx(true_share, rel=1e-12)
    assert true_share < 0.5 and priced.equity_after == pytest.approx(120_000 - fee, abs=1e-9)

    unprice(store, "CCC")
    d = rm.check("AAA", qty, "BUY")
    # the partial equity (CCC at 0) is 40,000 - fee: the old gate read 0.500 (qty 100) as a false CONCENTRATION
    assert (100 + qty) * 100 / (40_000 - fee) > 0.5
    assert d.status == DecisionStatus.REJECTED and codes(d) == ["MISSING_PRICE"]
    assert "CCC" in d.reasons[0].message
    assert d.concentration_after is None and d.margin_level_after is None
    assert d.max_qty_allowed == 0  # nothing passes while a held price is missing: fail closed


@pytest.mark.parametrize(
    ("cash", "floor"),
    [
        # partial equity 9,999 > 0: AAA 20,000 / 9,999 = 200 %, gross 30,000 / 9,999 = 3.0x > 2x, initial
        # margin 15,000 > 9,999, margin level 66.7 % < 150 %: the old gate gave all four reasons
        ("-10000.00", 150.0),
        # partial equity -20,001 <= 0: "no position may grow", "the gross exposure may not grow", margin level
        # -133 % (the true book's 109 % needs the floor off): the old gate gave the same four reasons
        ("-40000.00", 0.0),
    ],
)
def test_a_margin_book_missing_a_price_gets_no_leverage_margin_or_concentration_reason_from_its_partial_equity(
    desk: Desk, store: Store, cash: str, floor: float
) -> None:
    book = {**LONG, "id": "lev", "account_type": "margin", "initial_margin": 0.5, "maintenance_margin": 0.25}
    rm = desk(book, {"limits": {"max_gross_leverage": 2.0, "min_margin_level_after": floor}})
    state = store.read_portfolio("lev")  # borrowed cash (a settings file cannot configure a debit balance)
    store.write_portfolio(replace(state, cash=Decimal(cash)))
    priced = rm.check("AAA", 100, "BUY")
    equity = float(cash) + 100_000 - 1  # the order moves 10,000 from cash to AAA and pays 1 of fee
    gross = 110_000.0
    assert priced.approved, priced.reasons  # the true book: share, leverage and margin level all within limits
    assert priced.concentration_after == pytest.approx(20_000 / equity, rel=1e-12)
    assert priced.margin_level_after == pytest.approx(equity / (gross * 0.5) * 100, rel=1e-12)
    assert gross / equity <= 2.0 and equity >= gross * 0.5 * floor / 100

    # the same order on the partial equity (CCC's 80,000 counted as 0) would read every ratio as breached
    partial, partial_gross = equity - 80_000, gross - 80_000
    assert partial_gross * 0.5 > partial and (partial <= 0 or partial_gross / partial > 2.0)
    unprice(store, "CCC")
    d = rm.check("AAA", 100, "BUY")
    assert codes(d) == ["MISSING_PRICE"]
    assert d.concentration_after is None and d.margin_level_after is None and d.max_qty_allowed == 0


def test_the_concentration_limit_of_a_fully_priced_book_is_unchanged_at_its_boundary(desk: Desk) -> None:
    # no fees: the equity stays 20,000 = cash 15,000 + BBB 100 x 50, and AAA n x 100 is n / 200 of it
    book = {"id": "edge", "account_type": "cash", "cash": "15000.00", "holdings": {"BBB": 100}}
    rm = desk(book, {"fees": {"per_share": "0", "bps": "0", "minimum": "0"}})
    at = rm.check("AAA", 100, "BUY")
    assert at.approved and at.concentration_after == 0.5  # exactly max_concentration: not above it
    over = rm.check("AAA", 101, "BUY")
    assert codes(over) == ["CONCENTRATION"] and over.concentration_after == 10_100 / 20_000
    assert over.max_qty_allowed == 100


def test_the_boundary_book_missing_a_held_price_refuses_both_sides_of_the_boundary_missing_price_alone(
    desk: Desk, store: Store
) -> None:
    book = {"id": "edge", "account_type": "cash", "cash": "15000.00", "holdings": {"BBB": 100, "DDD": 40}}
    rm = desk(book, {"fees": {"per_share": "0", "bps": "0", "minimum": "0"}})
    assert codes(rm.check("AAA", 101, "BUY")) == []  # DDD's 1,000 lifts the equity to 21,000: 10,100 / 21,000 < 0.5
    unprice(store, "DDD")
    for qty in (100, 101):  # the partial equity 20,000 would put 101 shares one unit over the boundary
        d = rm.check("AAA", qty, "BUY")
        assert codes(d) == ["MISSING_PRICE"] and d.concentration_after is None


def test_risk_reducing_orders_are_unaffected(desk: Desk, store: Store) -> None:
    rm = desk(LONG, {"limits": {"max_concentration": 0.01, "max_gross_leverage": 0.01}})
    assert codes(rm.check("AAA", 1, "BUY")) == ["CONCENTRATION", "LEVERAGE"]  # priced: the limits bind
    assert rm.check("CCC", 100, "SELL").approved  # a cut passes every limit
    unprice(store, "CCC")
    for ticker in ("AAA", "BBB"):  # a cut of a priced position: still refused, missing price never waived
        for intent in (OrderIntent.TRADE, OrderIntent.LIQUIDATION):
            d = rm.check(ticker, 50, "SELL", intent=intent)
            assert codes(d) == ["MISSING_PRICE"] and d.concentration_after is None


def test_the_ticket_and_the_what_if_basket_show_the_ratios_as_not_available(desk: Desk, store: Store) -> None:
    rm = desk(LONG)
    unprice(store, "CCC")
    decision = rm.check("AAA", 100, "BUY").to_dict()
    impact = impact_frame(decision)
    assert "Concentration after" not in set(impact["figure"]) and "Margin level after" not in set(impact["figure"])
    assert "Equity after" in set(impact["figure"]) and not impact["value"].str.contains("None|nan").any()
    assert len(deltas_frame(decision)) == 3 and max_qty_offer(decision) is None

    basket = rm.what_if([{"ticker": "AAA", "qty": 100, "side": "BUY"}, {"ticker": "BBB", "qty": 10, "side": "SELL"}])
    assert basket["status"] == "REJECTED"
    for d in basket["decisions"]:
        assert [r["code"] for r in d["reasons"]] == ["MISSING_PRICE"] and d["concentration_after"] is None


def test_no_daily_loss_is_read_from_a_partial_equity_but_the_priced_book_keeps_its_limit_exactly(
    desk: Desk, store: Store
) -> None:
    # Arrange: the repro book (equity 120,000 priced) with a daily loss limit of 50,000 and today's opening
    # equity stamped as the monitor does; CCC (80,000) unpriced makes the partial equity 40,000: a "loss" of 80,000
    from engine.sessions import market_calendar

    rm = desk(LONG, {"limits": {"max_daily_loss": 50_000}})
    day, week = market_calendar(rm.settings).period_ids(NOW)
    store.update_peaks("long", 170_000.0, day, week)  # today opened 50,000 above the priced equity: at the limit
    assert codes(rm.check("AAA", 1, "BUY")) == ["DAILY_LOSS"]  # exactly at the limit: refused
    store.client.delete("pf:{long}:peaks")
    store.update_peaks("long", 169_999.99, day, week)  # one cent short of it: passes
    assert rm.check("AAA", 1, "BUY").approved

    # Act: the feed loses CCC
    unprice(store, "CCC")
    d = rm.check("AAA", 1, "BUY")

    # Assert: refused for the missing price alone, not for a daily loss of 129,999.99 made of the partial book
    assert codes(d) == ["MISSING_PRICE"]
