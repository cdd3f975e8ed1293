"""Crisis semantics of the pre-trade gate (issue 12) on a real redis-server: risk-reducing trades always pass,
liquidation-only orders in HALTED, hedges in REDUCING, and what still refuses a risk cut (fail closed)."""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from scipy import stats

import warmup
from engine.records import Decision, DecisionStatus, ExecutionStatus, OrderIntent, Position, ReasonCode
from engine.settings import settings_from_dict
from engine.store import MarketSnapshot, PortfolioKeys, PortfolioState, Store
from engine.store.keys import REFERENCE_KEY
from logic.action_orders import AUTOMATION
from logic.limits import shrinks_position
from logic.risk_manager import RiskManager

from .conftest import TEST_CONFIG, merge, store_contents

NOW = 1_700_000_000.0
LIQUIDATION = OrderIntent.LIQUIDATION

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
    """The decision's reason codes; every reason also says why in a non-empty sentence."""
    assert all(isinstance(r.message, str) and r.message for r in decision.reasons), decision.reasons
    return {r.code.value for r in decision.reasons}


def set_prices(store: Store, prices: dict[str, float], ts: float = NOW) -> None:
    snap = store.read_market()
    new, price_ts = snap.prices.copy(), snap.price_ts.copy()
    for ticker, price in prices.items():
        new[snap.tickers.index(ticker)] = price
        price_ts[snap.tickers.index(ticker)] = ts
    store.write_market(
        MarketSnapshot(
            version=snap.version + 1, ts=ts, tickers=snap.tickers, prices=new, price_ts=price_ts, cov=snap.cov
        )
    )


def set_positions(store: Store, portfolio_id: str, positions: dict[str, int], cash: str | None = None) -> None:
    state = store.read_portfolio(portfolio_id)
    held = {t: Position(qty=q, avg_price=Decimal(100)) for t, q in positions.items()}
    new_cash = Decimal(cash) if cash is not None else state.cash
    store.write_portfolio(PortfolioState(**{**state.__dict__, "positions": held, "cash": new_cash}))


# -- the definition ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("q0", "q1", "shrinks"),
    [(100, 40, True), (100, 0, True), (-100, -1, True), (100, 100, False), (100, 101, False), (100, -50, False),
     (0, 0, False), (0, 5, False), (-100, 50, False)],
)  # fmt: skip
def test_shrinking_means_a_smaller_absolute_position_on_the_same_side(q0: int, q1: int, shrinks: bool) -> None:
    assert shrinks_position(q0, q1) is shrinks


# -- HALTED and liquidation-only orders ----------------------------------------------------------------------


def test_halted_refuses_a_trader_order_even_when_it_cuts_risk(desk: Desk) -> None:
    rm = desk()
    rm.set_trading_state("HALTED", "kill switch", "risk-officer")

    decision = rm.check("AAA", 10, "SELL")

    assert codes(decision) == {"TRADING_HALTED"} and decision.intent == OrderIntent.TRADE
    assert decision.max_qty_allowed == 0


def test_halted_accepts_a_liquidation_order_that_shrinks_the_position_and_books_it(desk: Desk) -> None:
    rm = desk()
    rm.set_trading_state("HALTED", "daily drawdown breaker", "auto:drawdown_halt")

    result = rm.execute("AAA", 400, "SELL", actor="auto:margin_critical", intent=LIQUIDATION, automation=AUTOMATION)

    assert result.fill is not None and result.fill.position_after == 600
    assert result.fill.position_before == 1000 and result.fill.avg_price_before == Decimal(100)
    assert result.decision.intent == LIQUIDATION and result.decision.trading_state == "HALTED"
    logged = rm.trade_log(1)[0]
    assert logged["actor"] == "auto:margin_critical" and logged["decision"]["intent"] == "liquidation"


@pytest.mark.parametrize(
    ("ticker", "qty", "side"),
    [("AAA", 10, "BUY"), ("CCC", 1, "BUY")],
    ids=["grows a long", "opens a position"],
)
def test_a_liquidation_order_that_does_not_shrink_is_refused_liquidation_only(
    desk: Desk, ticker: str, qty: int, side: str
) -> None:
    rm = desk()
    rm.set_trading_state("HALTED", "kill switch", "risk-officer")

    decision = rm.check(ticker, qty, side, intent=LIQUIDATION)

    assert codes(decision) == {"LIQUIDATION_ONLY"}
    assert "shrink" in decision.reasons[0].message


def test_a_liquidation_order_may_not_flip_a_margin_position(desk: Desk) -> None:
    rm = desk({"limits": {"max_concentration": 1.0}}, portfolio_id="hedge")  # DDD -1000
    rm.set_trading_state("HALTED", "kill switch", "risk-officer")

    assert codes(rm.check("DDD", 1001, "BUY", intent=LIQUIDATION)) == {"LIQUIDATION_ONLY"}
    flat = rm.check("DDD", 1001, "BUY", intent=LIQUIDATION)
    assert flat.max_qty_allowed == 1000  # buying back the whole short is the most a liquidation may do
    assert rm.check("DDD", 1000, "BUY", intent=LIQUIDATION).approved


def test_a_liquidation_order_is_also_liquidation_only_when_trading_is_active(desk: Desk) -> None:
    rm = desk()

    assert codes(rm.check("AAA", 10, "BUY", intent=LIQUIDATION)) == {"LIQUIDATION_ONLY"}
    assert rm.check("AAA", 10, "SELL", intent="liquidation").approved  # the plain string is accepted


def test_an_unknown_intent_is_refused(desk: Desk) -> None:
    decision = desk().check("AAA", 10, "SELL", intent="yolo")  # type: ignore[arg-type]

    assert codes(decision) == {"LIQUIDATION_ONLY"} and "intent" in decision.reasons[0].message


def test_an_unreadable_trading_state_refuses_liquidation_orders_too(desk: Desk, store: Store) -> None:
    rm = desk()
    store.client.delete(rm.store.trading_watch_keys("main")[2])

    assert codes(rm.check("AAA", 10, "SELL", intent=LIQUIDATION)) == {"TRADING_HALTED"}


def test_the_issue_scenario_a_crashed_halted_margin_book_can_still_be_cut(desk: Desk, store: Store) -> None:
    # hedge: CCC 300 long, DDD 1000 short. CCC falls 30% (outside the 10% collar), the book is HALTED, and the
    # margin level is below the floor; the automation's liquidation-only SELL of CCC must pass every limit
    rm = desk({"limits": {"var_limit": 1000, "max_concentration": 0.05}}, portfolio_id="hedge")
    set_positions(store, "hedge", {"CCC": 3000, "DDD": -1000}, cash="-340000")
    set_prices(store, {"CCC": 140.0})
    rm.set_trading_state("HALTED", "drawdown breaker", "auto:drawdown_halt")
    buy = rm.check("CCC", 10, "BUY")
    assert {"TRADING_HALTED", "PRICE_COLLAR", "VAR_LIMIT", "CONCENTRATION"} <= codes(buy)
    assert buy.margin_level_after is not None and buy.margin_level_after < 120.0

    cut = rm.execute("CCC", 1000, "SELL", actor="auto:margin_critical", intent=LIQUIDATION, automation=AUTOMATION)

    assert cut.fill is not None, cut.decision.reasons
    assert cut.fill.position_after == 2000


# -- risk-reducing trades are never refused by a limit ------------------------------------------------------


def test_a_sale_cutting_a_long_passes_the_collar_but_a_purchase_does_not(desk: Desk, store: Store) -> None:
    rm = desk()
    set_prices(store, {"AAA": 80.0})  # -20% from the reference, collar 10%

    assert rm.check("AAA", 1000, "SELL").approved
    assert codes(rm.check("AAA", 10, "BUY")) == {"PRICE_COLLAR"}


def test_a_cut_that_raises_var_above_the_limit_still_passes(desk: Desk, store: Store) -> None:
    # DDD -1000 (25k) hedges CCC 3000 long (600k, correlation 0.3): buying DDD back shrinks the short and
    # raises the VaR
    desk(portfolio_id="hedge")
    set_positions(store, "hedge", {"CCC": 3000, "DDD": -1000})
    probe = desk(portfolio_id="hedge").check("DDD", 500, "BUY")
    assert probe.delta_var is not None and probe.delta_var > 0
    rm = desk({"limits": {"var_limit": probe.var_before, "max_concentration": 1.0}}, portfolio_id="hedge")

    assert rm.check("DDD", 500, "BUY").approved
    assert codes(rm.check("CCC", 1, "BUY")) == {"VAR_LIMIT"}


def test_every_new_limit_breached_at_once_still_lets_a_cut_through(desk: Desk, store: Store) -> None:
    rm = desk(
        {
            "limits": {
                "var_limit": 1,
                "stressed_var_limit": 1,
                "max_concentration": 0.01,
                "max_gross_leverage": 0.01,
                "max_position_qty": 1,
                "max_daily_loss": 1,
                "min_margin_level_after": 10_000.0,
            }
        },
        portfolio_id="hedge",
    )  # no opening equity today either: the daily-loss limit fails closed

    grow = rm.check("CCC", 1, "BUY")
    assert codes(grow) == {
        "VAR_LIMIT", "STRESSED_VAR", "CONCENTRATION", "LEVERAGE", "POSITION_LIMIT", "DAILY_LOSS", "MARGIN_FLOOR"
    }  # fmt: skip
    assert grow.max_qty_allowed == 0

    assert rm.check("CCC", 300, "SELL").approved
    assert rm.check("DDD", 999, "BUY").approved


def test_a_flip_is_not_risk_reducing_even_when_it_lowers_var_and_gross(desk: Desk, store: Store) -> None:
    rm = desk({"limits": {"var_limit": 1, "reducing_allows_hedges": False}}, portfolio_id="hedge")
    set_positions(store, "hedge", {"AAA": 1000})

    flip = rm.check("AAA", 1500, "SELL")  # +1000 -> -500: VaR and gross fall, but the short 500 is new risk

    assert flip.delta_var is not None and flip.delta_var < 0 and flip.position_after == -500
    assert codes(flip) == {"VAR_LIMIT"}  # the short alone (AAA flat: VaR 0) is above the $1 limit
    assert flip.max_qty_allowed == 1000
    assert rm.check("AAA", 1000, "SELL").approved  # the closing part: risk-reducing, every limit waived
    rm.set_trading_state("REDUCING", "drawdown", "monitor")
    assert codes(rm.check("AAA", 1500, "SELL")) == {"VAR_LIMIT", "REDUCING_ONLY"}
    assert codes(rm.check("AAA", 2000, "SELL")) == {"VAR_LIMIT", "REDUCING_ONLY"}  # -> -1000: same size
    assert codes(rm.check("AAA", 1500, "SELL", intent=LIQUIDATION)) == {"LIQUIDATION_ONLY", "VAR_LIMIT"}


def test_reducing_approves_selling_exactly_the_position_and_refuses_one_share_more_writing_nothing(
    desk: Desk, store: Store
) -> None:
    # the review's case: hedge CCC +300 / DDD -1000, REDUCING without hedges; a SELL 450 (-> short 150) lowers
    # VaR and gross exposure, and was approved as "risk-reducing"
    rm = desk({"limits": {"reducing_allows_hedges": False}}, portfolio_id="hedge")
    rm.set_trading_state("REDUCING", "drawdown breach", "risk-manager")
    client = store.client
    before = store_contents(client)

    flat = rm.check("CCC", 300, "SELL")
    one_more = rm.check("CCC", 301, "SELL")
    review = rm.check("CCC", 450, "SELL")

    assert flat.approved and flat.position_after == 0
    assert codes(one_more) == {"REDUCING_ONLY"} and one_more.max_qty_allowed == 300
    assert "flip" in one_more.reasons[0].message
    assert review.delta_var is not None and review.delta_var < 0  # lower VaR and gross: still refused
    assert codes(review) == {"REDUCING_ONLY"} and review.max_qty_allowed == 300
    assert store_contents(client) == before  # checks write nothing

    refused = rm.execute("CCC", 301, "SELL", client_order_id="flip-1")

    assert refused.status == ExecutionStatus.REJECTED and refused.fill is None
    assert {r.code for r in refused.reasons} == {ReasonCode.REDUCING_ONLY}
    trade_log = PortfolioKeys("hedge").trades.encode()
    after = store_contents(client)
    assert {k: v for k, v in after.items() if k != trade_log} == {k: v for k, v in before.items() if k != trade_log}
    assert store.read_order("hedge", "flip-1") is None  # only the refusal's trade-log record was written
    assert rm.execute("CCC", 300, "SELL", client_order_id="flat-1").fill is not None
    assert "CCC" not in store.read_portfolio("hedge").positions


def test_a_flip_is_refused_by_the_collar_that_its_closing_part_passes(desk: Desk, store: Store) -> None:
    rm = desk({"limits": {"reducing_allows_hedges": False}}, portfolio_id="hedge")
    set_prices(store, {"CCC": 260.0})  # +30% from the reference 200, collar 10%

    assert rm.check("CCC", 300, "SELL").approved  # closing: the collar never blocks a risk cut
    active = rm.check("CCC", 301, "SELL")
    assert codes(active) == {"PRICE_COLLAR"} and active.max_qty_allowed == 300
    rm.set_trading_state("REDUCING", "drawdown breach", "risk-manager")
    assert rm.check("CCC", 300, "SELL").approved
    reducing = rm.check("CCC", 450, "SELL")
    assert codes(reducing) == {"PRICE_COLLAR", "REDUCING_ONLY"} and reducing.max_qty_allowed == 300
    assert rm.execute("CCC", 450, "SELL", client_order_id="flip-2").fill is None
    assert store.read_portfolio("hedge").positions["CCC"].qty == 300


def test_the_position_limit_bounds_the_short_a_flip_opens_at_it_and_one_share_over(desk: Desk, store: Store) -> None:
    rm = desk({"limits": {"max_position_qty": 100, "max_concentration": 1.0}}, portfolio_id="hedge")  # CCC +300

    at = rm.check("CCC", 400, "SELL")  # -> -100
    over = rm.check("CCC", 401, "SELL")  # -> -101

    assert at.approved, at.reasons
    assert codes(over) == {"POSITION_LIMIT"} and over.max_qty_allowed == 400


def test_reducing_with_hedges_passes_a_flip_only_while_the_short_it_opens_lowers_var(desk: Desk, store: Store) -> None:
    # AAA +1000 beside CCC +300 (correlation 0.3): with AAA flat, a small AAA short hedges the CCC long
    rm = desk({"limits": {"max_concentration": 1.0}}, portfolio_id="hedge")
    set_positions(store, "hedge", {"AAA": 1000, "CCC": 300})
    rm.set_trading_state("REDUCING", "drawdown", "monitor")
    snap = store.read_market()
    i, c = snap.tickers.index("AAA"), snap.tickers.index("CCC")

    def var_of_short(q: int) -> float:  # the book's VaR with AAA at -q (z sqrt(h) cancels in comparisons)
        x = np.zeros(len(snap.tickers))
        x[i], x[c] = -q * snap.prices[i], 300 * snap.prices[c]
        return math.sqrt(float(x @ snap.cov @ x))

    refused = rm.check("AAA", 3000, "SELL")  # -> -2000: far past the hedge
    best = refused.max_qty_allowed
    assert codes(refused) == {"REDUCING_ONLY"} and best is not None and best > 1000
    assert var_of_short(best - 1000) < var_of_short(0) <= var_of_short(best + 1 - 1000)
    assert rm.check("AAA", best, "SELL").approved
    assert codes(rm.check("AAA", best + 1, "SELL")) == {"REDUCING_ONLY"}
    # the review's flip (CCC +300 -> -150 beside DDD -1000) lowers VaR as a whole, but its short adds VaR
    hedge_book = desk({"limits": {"max_concentration": 1.0}}, portfolio_id="hedge")
    set_positions(store, "hedge", {"CCC": 300, "DDD": -1000})
    flip = hedge_book.check("CCC", 450, "SELL")
    assert flip.delta_var is not None and flip.delta_var < 0
    assert codes(flip) == {"REDUCING_ONLY"} and flip.max_qty_allowed == 300


def test_fail_closed_reasons_still_refuse_a_risk_cut(desk: Desk, store: Store) -> None:
    rm = desk({"limits": {"max_orders_per_minute": 1, "max_order_qty": 500}})

    assert codes(rm.check("AAA", 501, "SELL")) == {"BAD_QUANTITY"}  # fat finger
    assert rm.execute("BBB", 1, "SELL").fill is not None
    assert codes(rm.check("AAA", 10, "SELL", intent=LIQUIDATION)) == {"RATE_LIMIT"}
    set_prices(store, {"AAA": float("nan")})
    assert "MISSING_PRICE" in codes(rm.check("BBB", 10, "SELL", intent=LIQUIDATION))


# -- REDUCING ------------------------------------------------------------------------------------------------


def test_reducing_accepts_a_hedge_that_lowers_var_and_refuses_one_that_raises_it(desk: Desk) -> None:
    rm = desk({"limits": {"max_concentration": 1.0}}, portfolio_id="hedge")  # CCC +60k, DDD -25k
    rm.set_trading_state("REDUCING", "drawdown level 1", "monitor")

    hedge = rm.check("AAA", 100, "SELL")  # opens a short of a ticker correlated with the net long book
    assert hedge.approved and hedge.delta_var is not None and hedge.delta_var < 0

    raise_var = rm.check("AAA", 100, "BUY")
    assert codes(raise_var) == {"REDUCING_ONLY"} and "lower the portfolio VaR" in raise_var.reasons[0].message


def test_reducing_without_hedges_accepts_only_risk_reducing_trades(desk: Desk) -> None:
    rm = desk({"limits": {"max_concentration": 1.0, "reducing_allows_hedges": False}}, portfolio_id="hedge")
    rm.set_trading_state("REDUCING", "drawdown level 1", "monitor")

    assert codes(rm.check("AAA", 100, "SELL")) == {"REDUCING_ONLY"}
    assert rm.check("CCC", 100, "SELL").approved


# -- the decision record ------------------------------------------------------------------------------------


def test_a_decision_round_trips_with_intent_and_max_qty_and_an_old_record_still_decodes(desk: Desk) -> None:
    rm = desk({"limits": {"max_order_notional": 5000}})
    decision = rm.check("AAA", 60, "SELL", intent=LIQUIDATION)
    assert decision.status == DecisionStatus.REJECTED and decision.max_qty_allowed == 50

    assert (decision.portfolio_id, decision.ticker, decision.checked_at) == ("main", "AAA", NOW)
    data = decision.to_dict()
    assert data["intent"] == "liquidation" and data["max_qty_allowed"] == 50
    assert Decision.from_dict(data) == decision

    old = {k: v for k, v in data.items() if k not in ("intent", "max_qty_allowed")}
    decoded = Decision.from_dict(old)
    assert decoded.intent == OrderIntent.TRADE and decoded.max_qty_allowed is None


def test_a_store_failure_decision_still_echoes_the_parsed_order(settings: Any, tmp_path: Any) -> None:
    rm = RiskManager(f"unix://{tmp_path}/nobody.sock", "main", settings, clock=lambda: NOW)

    decision = rm.check("AAA", 10.0, "sell", intent=LIQUIDATION)
    bad = rm.check(7, "ten", "HOLD")

    assert codes(decision) == {"STORE_UNAVAILABLE"} and decision.status == DecisionStatus.REJECTED
    assert decision.portfolio_id == "main"
    assert (decision.ticker, decision.qty, decision.side) == ("AAA", 10, "SELL")
    assert decision.var_limit == float(settings.limits.var_limit) and decision.checked_at == NOW
    assert "fix" in decision.reasons[0].message
    assert (bad.ticker, bad.qty, bad.side) == ("7", None, None)
    assert decision.max_qty_allowed is None  # no price: not sized


def test_the_first_order_of_a_one_per_minute_limit_fills(desk: Desk) -> None:
    rm = desk({"limits": {"max_orders_per_minute": 1}})

    assert rm.execute("AAA", 1, "SELL").fill is not None
    assert codes(rm.check("AAA", 1, "SELL")) == {"RATE_LIMIT"}


def test_after_a_fill_the_next_check_sees_the_new_holdings_risk(desk: Desk, store: Store) -> None:
    # the book cache is updated from the fill (BookCache.remember_fill): its VaR, value and gross must be those
    # of the new holdings, computed here
    rm = desk({"limits": {"max_gross_leverage": 10.0}})
    assert rm.execute("AAA", 300, "SELL").fill is not None

    after = rm.check("BBB", 1, "BUY")

    snap = store.read_market()
    x = np.zeros(len(snap.tickers))
    x[snap.tickers.index("AAA")] = 700 * 100.0
    x[snap.tickers.index("BBB")] = 2000 * 50.0
    var = float(stats.norm.ppf(0.95)) * math.sqrt(x @ snap.cov @ x) * math.sqrt(390)
    np.testing.assert_allclose(after.var_before, var, rtol=1e-10)
    cash = 1_000_000.0 + 300 * 100.0 - 3.0  # fee 300 x 0.01
    assert after.equity_after == pytest.approx(cash + x.sum() - 1.0, rel=1e-12)  # minus the 1.00 fee


# -- edges the mutation run found untested --------------------------------------------------------------------


def test_a_liquidation_sale_of_a_ticker_not_held_is_refused(desk: Desk) -> None:
    rm = desk({"limits": {"max_concentration": 1.0}}, portfolio_id="hedge")  # margin: a short would be allowed

    decision = rm.check("AAA", 1, "SELL", intent=LIQUIDATION)

    assert codes(decision) == {"LIQUIDATION_ONLY"} and decision.position_before == 0


def test_reducing_refuses_a_same_size_flip_that_leaves_var_unchanged(desk: Desk, store: Store) -> None:
    rm = desk({"limits": {"max_concentration": 1.0}}, portfolio_id="hedge")
    set_positions(store, "hedge", {"AAA": 1000})
    rm.set_trading_state("REDUCING", "drawdown", "monitor")

    flip = rm.check("AAA", 2000, "SELL")  # +1000 -> -1000: VaR and gross unchanged, not a hedge

    assert flip.delta_var == 0.0
    assert codes(flip) == {"REDUCING_ONLY"}


def test_a_same_size_flip_opens_a_new_position_that_the_growth_limits_refuse(desk: Desk, store: Store) -> None:
    # margin account at an 80% margin level (equity 40k, used 50k), concentration far above its limit: a
    # same-size flip leaves the gross exposure as it is, but the short it opens is a new 250%-of-equity position
    rm = desk(
        {"fees": {"per_share": "0", "bps": "0", "minimum": "0"}, "limits": {"max_concentration": 0.1}},
        portfolio_id="hedge",
    )
    set_positions(store, "hedge", {"AAA": 1000}, cash="-60000")

    flip = rm.check("AAA", 2000, "SELL")

    assert flip.margin_level_after == pytest.approx(80.0)
    assert codes(flip) == {"CONCENTRATION", "MARGIN", "MARGIN_FLOOR"}
    # flat, then a short of 10% of the 40k equity: 40 shares at 100 (exactly at the limit), 41 over it
    assert flip.max_qty_allowed == 1040
    assert rm.check("AAA", 1000, "SELL").approved  # going flat is always possible
    assert rm.check("AAA", 1040, "SELL").approved
    assert codes(rm.check("AAA", 1041, "SELL")) == {"CONCENTRATION"}
    assert codes(rm.check("AAA", 1, "BUY")) == {"CONCENTRATION", "MARGIN", "MARGIN_FLOOR"}


def test_with_equity_exactly_zero_no_position_may_grow(desk: Desk, store: Store) -> None:
    rm = desk({"fees": {"per_share": "0", "bps": "0", "minimum": "0"}}, portfolio_id="hedge")
    set_positions(store, "hedge", {"CCC": 300, "DDD": -1000}, cash="-35000")  # 60k - 25k + cash = 0

    grow = rm.check("CCC", 1, "BUY")

    assert grow.equity_after == 0.0 and grow.concentration_after is None
    assert "CONCENTRATION" in codes(grow)
    assert any("equity would be 0.00" in r.message for r in grow.reasons)


def test_any_var_increase_above_the_limit_is_refused_even_below_a_dollar(desk: Desk, store: Store) -> None:
    rm = desk({"limits": {"var_limit": 4000}})  # main's VaR is ~4222: already above
    set_prices(store, {"DDD": 0.5})
    snap = store.read_market()
    store.write_reference_prices(snap.tickers, snap.prices, NOW)  # a new session: no collar breach

    tiny = rm.check("DDD", 1, "BUY")

    assert tiny.delta_var is not None and 0 < tiny.delta_var < 1
    assert codes(tiny) == {"VAR_LIMIT"}


def test_a_price_below_one_dollar_is_usable(desk: Desk, store: Store) -> None:
    rm = desk()
    set_prices(store, {"DDD": 0.5})
    snap = store.read_market()
    store.write_reference_prices(snap.tickers, snap.prices, NOW)

    assert rm.check("DDD", 10, "BUY").approved


@pytest.mark.parametrize("reference", [float("nan"), 0.0, -1.0], ids=["nan", "zero", "negative"])
def test_an_unusable_reference_price_fails_the_collar_closed_but_not_a_risk_cut(
    desk: Desk, store: Store, reference: float
) -> None:
    rm = desk()
    snap = store.read_market()
    refs = snap.prices.copy()
    refs[snap.tickers.index("AAA")] = reference
    store.write_reference_prices(snap.tickers, refs, NOW)

    buy = rm.check("AAA", 10, "BUY")

    assert codes(buy) == {"PRICE_COLLAR"} and "no session reference" in buy.reasons[0].message
    assert rm.check("AAA", 10, "SELL").approved


def test_a_reference_price_below_one_dollar_is_usable(desk: Desk, store: Store) -> None:
    rm = desk()
    set_prices(store, {"DDD": 0.5})
    snap = store.read_market()
    refs = snap.prices.copy()
    refs[snap.tickers.index("DDD")] = 0.48  # 0.5 is +4.2% from it: inside the 10% collar
    store.write_reference_prices(snap.tickers, refs, NOW)

    decision = rm.check("DDD", 10, "BUY")

    assert decision.approved and decision.reference_price == 0.48


def test_a_basket_counts_its_own_orders_against_the_rate_limit(desk: Desk) -> None:
    rm = desk({"limits": {"max_orders_per_minute": 2}})

    basket = rm.what_if([("AAA", 1, "SELL"), ("AAA", 1, "SELL"), ("AAA", 1, "SELL")])

    assert [d["status"] for d in basket["decisions"]] == ["APPROVED", "APPROVED", "REJECTED"]
    assert {r["code"] for r in basket["decisions"][2]["reasons"]} == {"RATE_LIMIT"}


@pytest.mark.parametrize("part", ["reference", "rate", "portfolio"])
def test_an_unreadable_part_of_the_trade_view_fails_even_a_risk_cut_closed(desk: Desk, store: Store, part: str) -> None:
    rm = desk()
    keys = PortfolioKeys("main")
    key = {"reference": REFERENCE_KEY, "rate": keys.rate, "portfolio": keys.state}[part]
    store.client.delete(key)
    store.client.set(key, b"not a hash")  # the wrong Redis type

    decision = rm.check("AAA", 10, "SELL", intent=LIQUIDATION)

    assert decision.status == DecisionStatus.REJECTED
    assert codes(decision) & {"STORE_CORRUPT", "STORE_EMPTY"}


def test_an_unreadable_trading_state_says_what_is_wrong_with_it(desk: Desk, store: Store) -> None:
    rm = desk()
    store.client.hset(PortfolioKeys("main").trading_state, "state", "PARTY")

    decision = rm.check("AAA", 10, "SELL")

    assert codes(decision) == {"TRADING_HALTED"}
    assert "PARTY" in decision.reasons[0].message and "missing" not in decision.reasons[0].message
