"""The price sanity check (``limits.price_sanity_factor``, ``PRICE_SANITY``) on a real redis-server.

A feed that starts quoting in cents passes the stream's jump filter on its second print; the collar then refuses
purchases, but it is waived for a risk cut, which booked a sale at 100x. The sanity check is never waived: a last
price more than ``factor`` times, or less than 1/``factor`` of, the collar's reference refuses every order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import warmup
from engine.records import Decision, ExecutionStatus, OrderIntent, ReasonCode
from engine.settings import settings_from_dict
from engine.store import MarketSnapshot, PortfolioKeys, Store
from logic.actions import ResponseRunner
from logic.limits import WAIVED_WHEN_REDUCING_RISK
from logic.risk_manager import RiskManager

from .conftest import TEST_CONFIG, merge, store_contents

NOW = 1_700_000_000.0
LIQUIDATION = OrderIntent.LIQUIDATION
SANITY = ReasonCode.PRICE_SANITY.value

Desk = Callable[..., RiskManager]


@pytest.fixture
def desk(store: Store) -> Desk:
    def build(override: dict[str, Any] | None = None, portfolio_id: str = "main") -> RiskManager:
        settings = settings_from_dict(merge(TEST_CONFIG, override or {}))
        if store.schema_version() is None:
            warmup.seed(store, settings, now=NOW)
        return RiskManager(store.client, portfolio_id, settings, clock=lambda: NOW)

    return build


def codes(decision: Decision) -> set[str]:
    assert all(isinstance(r.message, str) and r.message for r in decision.reasons), decision.reasons
    return {r.code.value for r in decision.reasons}


def set_prices(store: Store, prices: dict[str, float]) -> None:
    snap = store.read_market()
    new, price_ts = snap.prices.copy(), snap.price_ts.copy()
    for ticker, price in prices.items():
        new[snap.tickers.index(ticker)] = price
        price_ts[snap.tickers.index(ticker)] = NOW
    store.write_market(
        MarketSnapshot(
            version=snap.version + 1, ts=NOW, tickers=snap.tickers, prices=new, price_ts=price_ts, cov=snap.cov
        )
    )


def set_reference(store: Store, ticker: str, reference: float) -> None:
    snap = store.read_market()
    refs = np.array([store.read_reference_prices()[t] for t in snap.tickers], dtype=float)
    refs[snap.tickers.index(ticker)] = reference
    store.write_reference_prices(snap.tickers, refs, NOW)


def assert_refused_writing_only_the_refusal(store: Store, rm: RiskManager, order: Callable[[], Any]) -> Any:
    """Runs ``order`` (an execution); it must be refused, leaving the store as it was apart from the refusal's
    trade-log record."""
    client = store.client
    log = PortfolioKeys(rm.portfolio_id).trades.encode()
    before = store_contents(client)
    result = order()
    after = store_contents(client)
    assert {k: v for k, v in after.items() if k != log} == {k: v for k, v in before.items() if k != log}
    return result


# -- the review's case: a feed in cents ------------------------------------------------------------------------


def test_a_feed_quoting_in_cents_cannot_book_a_risk_reducing_sale_at_100x(desk: Desk, store: Store) -> None:
    rm = desk()
    set_prices(store, {"AAA": 10_000.0})  # reference 100: the feed now quotes cents

    refused = assert_refused_writing_only_the_refusal(
        store, rm, lambda: rm.execute("AAA", 40, "SELL", client_order_id="s1")
    )

    assert refused.status == ExecutionStatus.REJECTED and refused.fill is None
    assert {r.code for r in refused.reasons} == {ReasonCode.PRICE_SANITY}  # the collar is waived, this is not
    assert refused.decision.max_qty_allowed == 0  # no quantity passes on this price
    message = refused.reasons[0].message
    assert "10000.0" in message and "100.0" in message and "more than 10x" in message
    assert "limits.price_sanity_factor on the Limits page; audited" in message
    assert store.read_order("main", "s1") is None
    assert store.read_portfolio("main").positions["AAA"].qty == 1000
    assert rm.trade_log(1)[0]["status"] == ExecutionStatus.REJECTED
    buy = rm.check("AAA", 10, "BUY")
    assert {"PRICE_COLLAR", SANITY} <= codes(buy) and buy.max_qty_allowed == 0


# -- exactly at the factor and one unit beyond, both ways ------------------------------------------------------


@pytest.mark.parametrize(
    ("portfolio", "ticker", "side", "price", "approved"),
    [
        ("main", "AAA", "SELL", 1000.0, True),  # reference 100: exactly 10x
        ("main", "AAA", "SELL", 1000.0001, False),
        ("main", "AAA", "SELL", 10.0, True),  # exactly 1/10
        ("main", "AAA", "SELL", 9.9999, False),
        ("hedge", "DDD", "BUY", 250.0, True),  # short DDD, reference 25: buying back at exactly 10x
        ("hedge", "DDD", "BUY", 250.0001, False),
        ("hedge", "DDD", "BUY", 2.5, True),
        ("hedge", "DDD", "BUY", 2.4999, False),
    ],
)
def test_a_risk_reducing_order_passes_exactly_at_the_factor_and_is_refused_one_unit_beyond(
    desk: Desk, store: Store, portfolio: str, ticker: str, side: str, price: float, approved: bool
) -> None:
    rm = desk(portfolio_id=portfolio)
    set_prices(store, {ticker: price})

    decision = rm.check(ticker, 40, side)

    assert decision.approved is approved, decision.reasons
    assert codes(decision) == (set() if approved else {SANITY})
    if not approved:
        assert decision.max_qty_allowed == 0
        assert f"last {Decimal(repr(price))}" in decision.reasons[0].message


@pytest.mark.parametrize(
    ("reference", "price", "approved"),
    [(0.3, 0.9, True), (0.3, 0.9001, False), (0.9, 0.3, True), (0.9, 0.2999, False)],
    ids=["x3 at", "x3 beyond", "/3 at", "/3 beyond"],
)
def test_the_factor_is_compared_on_the_decimals_written_not_on_binary_floats(
    desk: Desk, store: Store, reference: float, price: float, approved: bool
) -> None:
    # as floats 3 * 0.3 is 0.8999999999999999 and 0.9 / 0.3 is 3.0000000000000004: both exact cases were refused
    rm = desk({"limits": {"price_sanity_factor": 3}})
    set_reference(store, "AAA", reference)
    set_prices(store, {"AAA": price})

    decision = rm.check("AAA", 40, "SELL")

    assert decision.reference_price == reference
    assert codes(decision) == (set() if approved else {SANITY})


# -- no waiver: every kind of order --------------------------------------------------------------------------


def test_no_state_or_intent_waives_the_sanity_check(desk: Desk, store: Store) -> None:
    rm = desk()
    set_prices(store, {"AAA": 10_000.0})
    assert codes(rm.check("AAA", 40, "SELL")) == {SANITY}  # ACTIVE, risk-reducing

    rm.set_trading_state("REDUCING", "drawdown", "risk-officer")
    assert codes(rm.check("AAA", 40, "SELL")) == {SANITY}
    assert codes(rm.check("AAA", 40, "SELL", intent=LIQUIDATION)) == {SANITY}

    rm.set_trading_state("HALTED", "kill switch", "risk-officer")
    liquidation = rm.check("AAA", 40, "SELL", intent=LIQUIDATION)
    assert codes(liquidation) == {SANITY} and liquidation.max_qty_allowed == 0
    assert codes(rm.check("AAA", 40, "SELL")) == {"TRADING_HALTED", SANITY}
    assert codes(rm.check("BBB", 40, "SELL", intent=LIQUIDATION)) == set()  # a sane ticker still liquidates


def test_an_automated_flatten_refuses_the_leg_on_an_absurd_price_and_closes_the_others(
    desk: Desk, store: Store
) -> None:
    rm = desk()
    rm.set_trading_state("HALTED", "drawdown breaker", "auto:dd")
    set_prices(store, {"AAA": 5.0})  # reference 100: a twentieth, a bad print

    outcome = ResponseRunner(lambda pid: rm).run(
        "main", {"action_id": "a1", "action": "flatten", "actor": "auto:dd", "reason": "drawdown"}
    )

    assert not outcome.ok
    assert [(r["ticker"], r["codes"]) for r in outcome.details["refused"]] == [("AAA", [SANITY])]
    positions = store.read_portfolio("main").positions
    assert positions["AAA"].qty == 1000 and "BBB" not in positions


def test_the_sanity_check_is_not_among_the_limits_a_risk_cut_waives() -> None:
    assert ReasonCode.PRICE_SANITY not in WAIVED_WHEN_REDUCING_RISK


# -- the fix the message names, and what it cannot judge -----------------------------------------------------


def test_a_risk_manager_widening_the_factor_lets_a_real_move_trade(desk: Desk, store: Store) -> None:
    rm = desk()
    set_prices(store, {"AAA": 10_000.0})  # say a real 100x move
    assert codes(rm.check("AAA", 40, "SELL")) == {SANITY}

    rm.set_limits({"price_sanity_factor": 100}, "risk-manager", "AAA reverse split 100:1")

    assert rm.check("AAA", 40, "SELL").approved  # exactly 100x, the collar waived for the risk cut
    assert codes(rm.check("AAA", 40, "BUY")) >= {"PRICE_COLLAR"} and SANITY not in codes(rm.check("AAA", 40, "BUY"))


@pytest.mark.parametrize("reference", [float("nan"), 0.0, -1.0], ids=["nan", "zero", "negative"])
def test_without_a_usable_reference_the_sanity_check_cannot_judge_and_the_collar_refuses_adding_trades(
    desk: Desk, store: Store, reference: float
) -> None:
    rm = desk()
    set_reference(store, "AAA", reference)
    set_prices(store, {"AAA": 10_000.0})

    sale = rm.check("AAA", 40, "SELL")
    buy = rm.check("AAA", 10, "BUY")

    assert sale.approved and sale.reference_price is None  # today's behaviour: a risk cut passes
    assert "PRICE_COLLAR" in codes(buy) and SANITY not in codes(buy)


def test_the_readme_lists_every_reason_code() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    listed = set(re.findall(r"`([A-Z_]+)`", readme))
    assert {code.value for code in ReasonCode} <= listed
