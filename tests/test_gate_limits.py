"""Every limit of the pre-trade gate at its boundary, on a real redis-server: exactly at the limit passes, one
share (one cent, one second) over is refused with the limit's code, and the refused order's ``max_qty_allowed``
is the last quantity that passed.

Fees are zero in most tests here, so equity and notional are exact and the boundary quantity can be computed in
closed form (written in each test); where a figure is a float of the gate's own risk model (VaR, concentration),
the limit is set to the gate's figure for the boundary quantity, itself checked against an independent
computation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from scipy import stats

import warmup
from engine.records import Decision, DecisionStatus, ExecutionStatus, Position, ReasonCode
from engine.settings import settings_from_dict
from engine.store import MarketSnapshot, PortfolioState, Store
from engine.store.keys import STRESSED_KEY
from logic.risk_manager import RiskManager
from logic.snapshot import period_ids

from .conftest import TEST_CONFIG, merge

NOW = 1_700_000_000.0
NO_FEES = {"fees": {"per_share": "0", "bps": "0", "minimum": "0"}}
"""Zero commission: cash, notional and equity after a trade are exact."""
BARS_PER_DAY = TEST_CONFIG["model"]["bars_per_day"]
UTC = ZoneInfo("UTC")
"""TEST_CONFIG's monitor timezone (the day starts at midnight)."""

Desk = Callable[..., RiskManager]


@pytest.fixture
def desk(store: Store) -> Desk:
    """A manager over a store seeded once with TEST_CONFIG at NOW, with its own limits/fees overrides."""

    def build(override: dict[str, Any] | None = None, portfolio_id: str = "main", now: float = NOW) -> RiskManager:
        settings = settings_from_dict(merge(TEST_CONFIG, override or {}))
        if store.schema_version() is None:
            warmup.seed(store, settings, now=NOW)
        return RiskManager(store.client, portfolio_id, settings, clock=lambda: now)

    return build


def codes(decision: Decision) -> set[str]:
    """The decision's reason codes; every reason also says why in a non-empty sentence."""
    assert all(isinstance(r.message, str) and r.message for r in decision.reasons), decision.reasons
    return {r.code.value for r in decision.reasons}


def assert_boundary(rm: RiskManager, ticker: str, side: str, at: int, code: ReasonCode) -> Decision:
    """``at`` shares pass; ``at + 1`` are refused with ``code`` alone and offered ``at`` as max_qty_allowed."""
    passing = rm.check(ticker, at, side)
    assert passing.status == DecisionStatus.APPROVED, passing.reasons
    assert passing.max_qty_allowed is None  # only refused orders are sized
    over = rm.check(ticker, at + 1, side)
    assert over.status == DecisionStatus.REJECTED
    assert codes(over) == {code.value}
    assert over.max_qty_allowed == at
    return over


def set_prices(store: Store, prices: dict[str, float], ts: float = NOW) -> None:
    snap = store.read_market()
    new = snap.prices.copy()
    price_ts = snap.price_ts.copy()
    for ticker, price in prices.items():
        new[snap.tickers.index(ticker)] = price
        price_ts[snap.tickers.index(ticker)] = ts
    store.write_market(
        MarketSnapshot(
            version=snap.version + 1, ts=ts, tickers=snap.tickers, prices=new, price_ts=price_ts, cov=snap.cov
        )
    )


def set_cash(store: Store, portfolio_id: str, cash: str) -> None:
    state = store.read_portfolio(portfolio_id)
    store.write_portfolio_state(PortfolioState(**{**state.__dict__, "cash": Decimal(cash)}))


def independent_var(x: np.ndarray, cov: np.ndarray, confidence: float = 0.95) -> float:
    return float(stats.norm.ppf(confidence) * math.sqrt(x @ cov @ x) * math.sqrt(BARS_PER_DAY))


def main_exposures(store: Store, extra_aaa: int = 0) -> np.ndarray:
    """main holds AAA 1000 @ 100 and BBB 2000 @ 50 (TEST_CONFIG), plus ``extra_aaa`` shares of AAA."""
    snap = store.read_market()
    x = np.zeros(len(snap.tickers))
    x[snap.tickers.index("AAA")] = (1000 + extra_aaa) * 100.0
    x[snap.tickers.index("BBB")] = 2000 * 50.0
    return x


# -- the limits that were there before issue 12 --------------------------------------------------------------


def test_var_limit_passes_a_trade_ending_exactly_at_it_and_refuses_one_share_more(desk: Desk, store: Store) -> None:
    probe = desk().check("AAA", 100, "BUY")
    np.testing.assert_allclose(
        probe.var_after, independent_var(main_exposures(store, 100), store.read_market().cov), rtol=1e-10
    )
    rm = desk({"limits": {"var_limit": repr(probe.var_after)}})

    over = assert_boundary(rm, "AAA", "BUY", 100, ReasonCode.VAR_LIMIT)

    assert over.var_after is not None and over.var_after > probe.var_after


def test_the_var_limit_uses_the_configured_confidence(desk: Desk, store: Store) -> None:
    rm = desk({"limits": {"var_confidence": 0.99}})
    cov = store.read_market().cov

    decision = rm.check("AAA", 100, "BUY")

    np.testing.assert_allclose(decision.var_before, independent_var(main_exposures(store), cov, 0.99), rtol=1e-10)
    np.testing.assert_allclose(decision.var_after, independent_var(main_exposures(store, 100), cov, 0.99), rtol=1e-10)
    x, i = main_exposures(store), store.read_market().tickers.index("AAA")
    marginal = float(stats.norm.ppf(0.99)) * (cov @ x)[i] / math.sqrt(x @ cov @ x) * math.sqrt(BARS_PER_DAY)
    np.testing.assert_allclose(decision.marginal_var, marginal, rtol=1e-10)


def test_concentration_limit_passes_exactly_at_it_and_refuses_one_share_more(desk: Desk, store: Store) -> None:
    probe = desk(NO_FEES).check("AAA", 2000, "BUY")
    assert probe.concentration_after == pytest.approx(3000 * 100.0 / 1_200_000.0, rel=1e-15)  # 0.25
    rm = desk({**NO_FEES, "limits": {"max_concentration": probe.concentration_after}})

    assert_boundary(rm, "AAA", "BUY", 2000, ReasonCode.CONCENTRATION)


def test_concentration_limit_five_percent_looser_would_let_the_next_share_through(desk: Desk) -> None:
    # the hand-made mutant of issue 12 (limit x 1.05) must be caught: the share after the boundary is well
    # inside 5% of it, so only the exact comparison refuses it
    rm = desk({**NO_FEES, "limits": {"max_concentration": 0.25}})  # AAA (1000 + q) x 100 / 1.2M

    over = rm.check("AAA", 2001, "BUY")

    assert codes(over) == {"CONCENTRATION"}
    assert over.concentration_after is not None and 0.25 < over.concentration_after < 0.25 * 1.05


def test_max_order_notional_passes_exactly_at_it_and_refuses_one_share_more(desk: Desk) -> None:
    rm = desk({"limits": {"max_order_notional": 5000}})  # AAA at 100.00

    assert_boundary(rm, "AAA", "BUY", 50, ReasonCode.MAX_NOTIONAL)


def test_max_order_notional_to_the_cent(desk: Desk, store: Store) -> None:
    rm = desk({"limits": {"max_order_notional": "5000.50"}})  # 50 x 100.01 = 5000.50 exactly
    set_prices(store, {"AAA": 100.01})

    assert rm.check("AAA", 50, "BUY").approved
    tight = desk({"limits": {"max_order_notional": "5000.49"}})
    assert codes(tight.check("AAA", 50, "BUY")) == {"MAX_NOTIONAL"}


def test_max_order_qty_passes_exactly_at_it_and_refuses_one_share_more(desk: Desk) -> None:
    rm = desk({"limits": {"max_order_qty": 10}})

    over = assert_boundary(rm, "AAA", "BUY", 10, ReasonCode.BAD_QUANTITY)

    assert over.qty is None  # an invalid quantity is not echoed back as a number


@pytest.mark.parametrize(("inside", "outside"), [(125.0, 125.01), (75.0, 74.99)], ids=["up", "down"])
def test_the_price_collar_passes_exactly_at_it_and_refuses_one_cent_beyond(
    desk: Desk, store: Store, inside: float, outside: float
) -> None:
    rm = desk({"limits": {"price_collar_pct": 0.25}})  # reference 100: 125.00 and 75.00 are exactly 25% away
    set_prices(store, {"AAA": inside})
    assert rm.check("AAA", 10, "BUY").approved

    set_prices(store, {"AAA": outside})
    refused = rm.check("AAA", 10, "BUY")

    assert codes(refused) == {"PRICE_COLLAR"}
    assert refused.max_qty_allowed == 0  # no size of a risk-increasing buy passes the collar


@pytest.mark.parametrize(("inside", "outside"), [(110.0, 110.01), (90.0, 89.99)], ids=["up", "down"])
def test_a_collar_of_ten_percent_passes_a_move_of_exactly_ten_percent_either_way(
    desk: Desk, store: Store, inside: float, outside: float
) -> None:
    # as floats 110 / 100 - 1 is 0.10000000000000009 and 90 / 100 - 1 is -0.09999999999999998: compared that
    # way, the same move passed down and was refused up
    rm = desk({"limits": {"price_collar_pct": 0.10}})  # reference 100
    set_prices(store, {"AAA": inside})
    assert rm.check("AAA", 10, "BUY").approved

    set_prices(store, {"AAA": outside})
    assert codes(rm.check("AAA", 10, "BUY")) == {"PRICE_COLLAR"}


def test_a_price_stamped_in_the_future_passes_up_to_the_age_limit_and_is_refused_beyond_it(
    desk: Desk, store: Store
) -> None:
    # a stamp in the future never grows old: beyond the staleness limit it is refused as unusable (clock skew
    # or bad data), as an old one is
    rm = desk()  # limit 30 s, now = NOW
    set_prices(store, {"AAA": 100.0}, ts=NOW + 30.0)
    assert rm.check("AAA", 10, "BUY").approved

    set_prices(store, {"AAA": 100.0}, ts=NOW + 31.0)
    refused = rm.check("AAA", 10, "BUY")

    assert codes(refused) == {"STALE_PRICE"}
    assert "in the future" in refused.reasons[0].message
    assert desk(now=NOW + 61.0).check("AAA", 10, "BUY").approved  # 30 s old by then: usable again


@pytest.mark.parametrize(("price", "approved"), [(0.00005, False), (0.0000500001, True)], ids=["at", "above"])
def test_a_price_that_would_fill_at_zero_is_refused_and_books_nothing(
    desk: Desk, store: Store, price: float, approved: bool
) -> None:
    # fills are on a 0.0001 grid, half-even: 0.00005 fills at 0.0000 (shares for nothing), just above it at
    # 0.0001
    rm = desk(NO_FEES)
    warmup.add_ticker(store, rm.settings, "PNY", price, 0.3, now=NOW)
    before = store.read_portfolio("main")

    decision = rm.check("PNY", 1000, "BUY")
    fill = rm.execute("PNY", 1000, "BUY", client_order_id="pny-1")

    if approved:
        assert decision.approved and fill.status == ExecutionStatus.FILLED
        assert store.read_portfolio("main").positions["PNY"].avg_price == Decimal("0.0001")
    else:
        assert codes(decision) == {"MISSING_PRICE"} and "smallest fill price" in decision.reasons[0].message
        assert fill.status == ExecutionStatus.REJECTED
        assert store.read_portfolio("main") == before


def test_a_stale_price_passes_exactly_at_the_age_limit_and_is_refused_one_second_later(desk: Desk) -> None:
    assert desk(now=NOW + 30.0).check("AAA", 10, "BUY").approved  # limit 30 s

    refused = desk(now=NOW + 31.0).check("AAA", 10, "BUY")

    assert codes(refused) == {"STALE_PRICE"}
    assert refused.max_qty_allowed == 0


def test_the_order_rate_passes_the_last_order_of_the_minute_and_refuses_the_next(desk: Desk) -> None:
    rm = desk({"limits": {"max_orders_per_minute": 3}})
    for _ in range(2):
        assert rm.execute("AAA", 1, "BUY").fill is not None

    assert rm.check("AAA", 1, "BUY").approved  # the third of three
    assert rm.execute("AAA", 1, "BUY").fill is not None
    refused = rm.check("AAA", 1, "BUY")

    assert codes(refused) == {"RATE_LIMIT"}
    assert refused.max_qty_allowed == 0


def test_selling_everything_held_passes_and_one_share_more_is_an_oversell(desk: Desk) -> None:
    rm = desk()  # main (cash account) holds 1000 AAA

    over = assert_boundary(rm, "AAA", "SELL", 1000, ReasonCode.OVERSELL)

    assert over.position_before == 1000


def test_a_single_share_held_can_be_sold_and_not_two(desk: Desk, store: Store) -> None:
    rm = desk()
    state = store.read_portfolio("main")
    store.write_position("main", "CCC", Position(qty=1, avg_price=Decimal(150)))
    assert state.positions.get("CCC") is None

    assert_boundary(rm, "CCC", "SELL", 1, ReasonCode.OVERSELL)


def test_a_purchase_costing_exactly_the_cash_passes_and_one_cent_short_is_refused(desk: Desk, store: Store) -> None:
    rm = desk()  # fees 0.01/share, minimum 1.00: 10 CCC at 200 cost 2000.00 + 1.00
    set_cash(store, "main", "2001.00")
    assert rm.check("CCC", 10, "BUY").approved

    set_cash(store, "main", "2000.99")
    refused = rm.check("CCC", 10, "BUY")

    assert codes(refused) == {"INSUFFICIENT_CASH"}
    assert refused.max_qty_allowed == 9  # 9 x 200 + 1.00 = 1801.00


# -- the limits of issue 12 ----------------------------------------------------------------------------------


def test_gross_leverage_passes_exactly_at_it_and_refuses_one_share_more(desk: Desk) -> None:
    # equity 1.2M (no fees), gross 200k + 100 q: 0.5x at q = 4000
    rm = desk({**NO_FEES, "limits": {"max_gross_leverage": 0.5}})

    assert_boundary(rm, "AAA", "BUY", 4000, ReasonCode.LEVERAGE)


def test_gross_leverage_never_refuses_a_trade_that_cuts_the_gross_exposure(desk: Desk) -> None:
    rm = desk({**NO_FEES, "limits": {"max_gross_leverage": 0.1}})  # already 0.167x

    assert codes(rm.check("AAA", 1, "BUY")) == {"LEVERAGE"}
    assert rm.check("AAA", 1, "SELL").approved


def test_the_global_position_limit_passes_exactly_at_it_and_refuses_one_share_more(desk: Desk) -> None:
    rm = desk({"limits": {"max_position_qty": 1500}})  # main holds 1000 AAA

    assert_boundary(rm, "AAA", "BUY", 500, ReasonCode.POSITION_LIMIT)


def test_a_per_ticker_position_limit_overrides_the_global_one(desk: Desk) -> None:
    rm = desk({"limits": {"max_position_qty": 5000, "position_limits": {"AAA": 1200}}})

    assert_boundary(rm, "AAA", "BUY", 200, ReasonCode.POSITION_LIMIT)
    assert_boundary(rm, "BBB", "BUY", 3000, ReasonCode.POSITION_LIMIT)  # BBB 2000 held, global 5000


def test_a_short_position_limit_counts_absolute_shares(desk: Desk) -> None:
    rm = desk({"limits": {"max_position_qty": 1200, "max_concentration": 1.0}}, portfolio_id="hedge")

    assert_boundary(rm, "DDD", "SELL", 200, ReasonCode.POSITION_LIMIT)  # DDD -1000 -> -1200


def test_the_margin_floor_passes_exactly_at_it_and_refuses_one_share_more(desk: Desk) -> None:
    # hedge: equity 235k, gross 85k, initial margin 50%; buying q AAA at 100: level = 235k / ((85k + 100 q) / 2)
    # = 200% exactly at q = 1500
    rm = desk({**NO_FEES, "limits": {"min_margin_level_after": 200.0, "max_concentration": 1.0}}, portfolio_id="hedge")

    assert rm.check("AAA", 1500, "BUY").margin_level_after == 200.0
    over = assert_boundary(rm, "AAA", "BUY", 1500, ReasonCode.MARGIN_FLOOR)
    assert over.margin_level_after is not None and 100.0 < over.margin_level_after < 200.0


@pytest.mark.parametrize(("price", "cash"), [("90.32", "28817.74"), ("90.6", "28817.95")])
def test_a_margin_level_exactly_at_the_floor_in_decimals_passes_though_floats_read_it_an_ulp_under(
    desk: Desk, store: Store, price: str, cash: str
) -> None:
    """hedge holds CCC 300 @ 200 and DDD -1000 @ 25 (initial margin 50%); buying one AAA at ``price`` with
    ``cash`` leaves the level at exactly 150% (equity cash + 35,000 over half of 85,000 + price), which floats
    read as 149.99999999999997: it was refused MARGIN_FLOOR. A cent less cash is below it, and refused."""
    rm = desk({**NO_FEES, "limits": {"max_concentration": 1.0}}, portfolio_id="hedge")
    set_prices(store, {"AAA": float(price), "CCC": 200.0, "DDD": 25.0})
    state = store.read_portfolio("hedge")
    held = {"CCC": Position(qty=300, avg_price=Decimal(200)), "DDD": Position(qty=-1000, avg_price=Decimal(25))}
    for money, passes in ((cash, True), (str(Decimal(cash) - Decimal("0.01")), False)):
        store.write_portfolio(PortfolioState(**{**state.__dict__, "positions": held, "cash": Decimal(money)}))
        exact = (Decimal(money) + 35_000) / ((85_000 + Decimal(price)) / 2) * 100
        assert (exact == 150) is passes
        decision = rm.check("AAA", 1, "BUY")
        assert decision.status == (DecisionStatus.APPROVED if passes else DecisionStatus.REJECTED), decision.reasons
        assert passes or codes(decision) == {"MARGIN_FLOOR"}


def test_the_default_margin_floor_is_the_warning_level_of_150_percent(desk: Desk) -> None:
    rm = desk({**NO_FEES, "limits": {"max_concentration": 1.0}}, portfolio_id="hedge")
    assert rm.limits.min_margin_level_after == 150.0
    # level 150% at gross 235k / 0.75 = 313,333.33: q = 2283 leaves gross 313,300 (150.016%), 2284 313,400

    over = assert_boundary(rm, "AAA", "BUY", 2283, ReasonCode.MARGIN_FLOOR)

    assert over.margin_level_after == pytest.approx(235_000 / (313_400 * 0.5) * 100, rel=1e-12)


def test_the_initial_margin_check_passes_at_100_percent_and_refuses_one_share_more(desk: Desk) -> None:
    # floor off: the older MARGIN check alone (used margin <= equity); initial margin 100%, so the level is
    # 100% at gross = equity = 235k: q = 1500
    portfolios = [dict(p) for p in TEST_CONFIG["portfolios"]]
    portfolios[1]["initial_margin"] = 1.0
    rm = desk(
        {
            **NO_FEES,
            "limits": {"min_margin_level_after": 0.0, "max_concentration": 1.0},
            "portfolios": portfolios,
        },
        portfolio_id="hedge",
    )

    assert rm.check("AAA", 1500, "BUY").margin_level_after == 100.0
    assert_boundary(rm, "AAA", "BUY", 1500, ReasonCode.MARGIN)


def stressed_var_after(store: Store, extra_aaa: int) -> float:
    _, tickers, cov = store.read_stressed()
    market = store.read_market()
    order = [tickers.index(t) for t in market.tickers]
    return independent_var(main_exposures(store, extra_aaa), cov[np.ix_(order, order)])


def test_stressed_var_limit_passes_at_it_and_refuses_one_share_more(desk: Desk, store: Store) -> None:
    desk()  # seed
    at = stressed_var_after(store, 100)
    # the limit is the independent figure for 100 shares, widened by 1e-12 relative (the gate sums in another
    # order); one share adds ~1e-4 relative
    rm = desk({"limits": {"stressed_var_limit": repr(at * (1 + 1e-12))}})

    assert_boundary(rm, "AAA", "BUY", 100, ReasonCode.STRESSED_VAR)
    assert stressed_var_after(store, 101) > at * (1 + 1e-6)


def hedge_stressed_var_after(store: Store, extra_ccc: int, multiplier: float) -> tuple[float, float]:
    """hedge holds CCC 300 @ 200 and DDD -1000 @ 25 (TEST_CONFIG), plus ``extra_ccc`` shares of CCC: its stressed
    VaR under the rule, the worse of the crisis matrix and of today's covariance at ``multiplier`` times the
    volatilities, and under the crisis matrix alone."""
    _, tickers, stressed = store.read_stressed()
    market = store.read_market()
    order = [tickers.index(t) for t in market.tickers]
    x = np.zeros(len(market.tickers))
    x[market.tickers.index("CCC")] = (300 + extra_ccc) * 200.0
    x[market.tickers.index("DDD")] = -1000 * 25.0
    floored = independent_var(x, stressed[np.ix_(order, order)])
    return max(floored, multiplier * independent_var(x, market.cov)), floored


def test_stressed_var_limit_of_a_long_short_book_takes_the_worse_scenario_at_the_boundary(
    desk: Desk, store: Store
) -> None:
    # Arrange: the long/short hedge book; the floor (0.3 -> 0.6) makes its short DDD leg a better hedge, so the
    # crisis matrix alone gives less than doubled volatilities at today's correlation
    m = desk(portfolio_id="hedge").settings.model.stress_vol_multiplier
    at, floored_at = hedge_stressed_var_after(store, 100, m)
    over, floored_over = hedge_stressed_var_after(store, 101, m)
    assert floored_at < floored_over < at  # under the crisis matrix alone 101 shares would pass
    rm = desk({"limits": {"stressed_var_limit": repr(at * (1 + 1e-12))}}, portfolio_id="hedge")

    # Act / Assert: 100 shares end exactly at the limit, 101 are refused and sized back to 100
    refused = assert_boundary(rm, "CCC", "BUY", 100, ReasonCode.STRESSED_VAR)

    assert over > at * (1 + 1e-6)
    assert f"to {over:,.0f}, above" in refused.reasons[0].message


def test_stressed_var_limit_lets_a_trade_that_lowers_stressed_var_through(desk: Desk, store: Store) -> None:
    desk()
    rm = desk({"limits": {"stressed_var_limit": 1.0}})  # far below today's

    assert codes(rm.check("AAA", 1, "BUY")) == {"STRESSED_VAR"}
    assert rm.check("AAA", 1, "SELL").approved


def test_stressed_var_limit_fails_closed_without_a_stressed_matrix(desk: Desk, store: Store) -> None:
    rm = desk({"limits": {"stressed_var_limit": 1e9}})
    store.client.delete(STRESSED_KEY)
    rm.models.clear()

    refused = rm.check("AAA", 1, "BUY")

    assert codes(refused) == {"STRESSED_VAR"} and "cannot be computed" in refused.reasons[0].message
    assert rm.check("AAA", 1, "SELL").approved  # risk-reducing: never refused by a limit


def test_stressed_var_limit_fails_closed_on_a_stressed_matrix_that_is_not_a_covariance(
    desk: Desk, store: Store
) -> None:
    rm = desk({"limits": {"stressed_var_limit": 1e9}})
    version, tickers, cov = store.read_stressed()
    broken = cov.copy()
    broken[0, 0] = -broken[0, 0]  # a negative variance
    store.write_stressed(version + 1, tickers, broken)

    refused = rm.check("AAA", 1, "BUY")

    assert codes(refused) == {"STRESSED_VAR"} and "not valid" in refused.reasons[0].message
    store.write_stressed(version + 2, tickers, cov)  # a new, valid matrix is validated again
    assert rm.check("AAA", 1, "BUY").approved


def open_day(store: Store, portfolio_id: str, equity: float) -> None:
    """Record ``equity`` as today's opening equity, as the monitor's first snapshot of the day does."""
    day, week = period_ids(NOW, UTC, 0)
    store.update_peaks(portfolio_id, equity, day, week)


def test_the_daily_loss_limit_trips_when_the_loss_reaches_it(desk: Desk, store: Store) -> None:
    rm = desk({"limits": {"max_daily_loss": 50_000}})  # equity now 1.2M exactly
    open_day(store, "main", 1_249_999.99)  # lost 49,999.99 today

    assert rm.check("AAA", 10, "BUY").approved
    store.client.flushall()
    rm = desk({"limits": {"max_daily_loss": 50_000}})
    open_day(store, "main", 1_250_000.00)  # lost 50,000.00: the limit is reached

    refused = rm.check("AAA", 10, "BUY")

    assert codes(refused) == {"DAILY_LOSS"} and refused.max_qty_allowed == 0
    assert rm.check("AAA", 10, "SELL").approved  # risk-reducing trades still pass


def test_the_daily_loss_limit_reads_the_day_the_monitor_stamps_on_an_exchange_calendar(
    desk: Desk, store: Store
) -> None:
    # 2023-11-15 03:00 UTC is 22:00 in New York on the 14th: the XNYS session date (the monitor's "today") is
    # 2023-11-14 while the UTC wall-clock date is the 15th; trading outside the session is allowed
    late = datetime(2023, 11, 15, 3, 0, tzinfo=UTC).timestamp()
    override = {"market": {"calendar": "XNYS"}, "limits": {"max_daily_loss": 50_000, "outside_session": "allow"}}
    rm = desk(override, now=late)
    set_prices(store, {"AAA": 100.0}, ts=late)
    store.update_peaks("main", 1_200_000.0, "2023-11-14", "2023-11-13")  # as the monitor stamps it
    assert rm.check("AAA", 10, "BUY").approved

    store.update_peaks("main", 1_200_000.0, "2023-11-15", "2023-11-13")  # a wall-clock day: never the monitor's

    assert codes(rm.check("AAA", 10, "BUY")) == {"DAILY_LOSS"}  # no opening equity of this session: closed


def test_the_daily_loss_limit_fails_closed_when_today_has_no_opening_equity(desk: Desk, store: Store) -> None:
    rm = desk({"limits": {"max_daily_loss": 50_000}})
    assert codes(rm.check("AAA", 10, "BUY")) == {"DAILY_LOSS"}  # the monitor has not opened the day

    yesterday = NOW - 86_400
    day, week = period_ids(yesterday, UTC, 0)
    store.update_peaks("main", 1_200_000.0, day, week)
    assert codes(rm.check("AAA", 10, "BUY")) == {"DAILY_LOSS"}  # yesterday's open is not today's

    assert desk().check("AAA", 10, "BUY").approved  # without the limit nothing is read
