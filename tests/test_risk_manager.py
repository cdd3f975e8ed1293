"""The pre-trade gate on a real redis-server: every rejection reason, exact fills, states, what-if, stress.

Figures are checked against independent computations (numpy and scipy here, not engine.math_logic), and every
rejected check is shown to leave the store byte-for-byte unchanged (DUMP of every key before and after).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
import redis
from scipy import stats

import warmup
from engine.errors import StoreUnavailableError
from engine.market_model import MarketModelCache
from engine.records import Decision, ExecutionResult, ReasonCode
from engine.settings import Settings, settings_from_dict
from engine.store import (
    MARKET_KEY,
    MarketSnapshot,
    PortfolioKeys,
    PortfolioState,
    Store,
    encode_array,
)
from engine.store.portfolio import TRADING_STATE_ATTEMPTS
from logic import execution as execution_module
from logic.risk_manager import DASHBOARD_COLUMNS, RiskManager

from .conftest import TEST_CONFIG, merge, store_contents

NOW = 1_700_000_000.0
"""Seed time of every test here; the manager's clock stands still at it unless a test moves it."""
BARS_PER_DAY = TEST_CONFIG["model"]["bars_per_day"]


# -- helpers -------------------------------------------------------------------------------------------------


def codes(decision: dict[str, Any]) -> set[str]:
    return {r["code"] for r in decision["reasons"]}


def set_market(
    store: Store, prices: dict[str, float] | None = None, *, ts: float = NOW, cov: np.ndarray | None = None
) -> MarketSnapshot:
    """Write a new market snapshot (version + 1) with some prices changed, as the stream daemon would."""
    snap = store.read_market()
    new_prices = snap.prices.copy()
    price_ts = snap.price_ts.copy()
    for ticker, price in (prices or {}).items():
        i = snap.tickers.index(ticker)
        new_prices[i] = price
        price_ts[i] = ts
    new = MarketSnapshot(
        version=snap.version + 1,
        ts=ts,
        tickers=snap.tickers,
        prices=new_prices,
        price_ts=price_ts,
        cov=snap.cov if cov is None else cov,
    )
    store.write_market(new)
    return new


def independent_var(x: np.ndarray, cov: np.ndarray, confidence: float = 0.95, days: float = 1.0) -> float:
    """z · sqrt(xᵀΣx) · sqrt(bars_per_day · days), computed here, not by engine.math_logic."""
    return float(stats.norm.ppf(confidence) * math.sqrt(x @ cov @ x) * math.sqrt(BARS_PER_DAY * days))


def exposures(store: Store, portfolio_id: str) -> np.ndarray:
    snap = store.read_market()
    state = store.read_portfolio(portfolio_id)
    x = np.zeros(len(snap.tickers))
    for ticker, pos in state.positions.items():
        i = snap.tickers.index(ticker)
        x[i] = pos.qty * snap.prices[i]
    return x


@pytest.fixture
def desk(store: Store) -> Callable[..., RiskManager]:
    """Seed the store with TEST_CONFIG (plus overrides) at NOW and return a manager for one portfolio."""

    def build(
        override: dict[str, Any] | None = None,
        portfolio_id: str = "main",
        clock: Callable[[], float] | None = None,
        settings: Settings | None = None,
    ) -> RiskManager:
        settings = settings or settings_from_dict(merge(TEST_CONFIG, override or {}))
        if store.schema_version() is None:
            warmup.seed(store, settings, now=NOW)
        return RiskManager(store.client, portfolio_id, settings, clock=clock or (lambda: NOW))

    return build


@pytest.fixture
def rm(desk: Callable[..., RiskManager]) -> RiskManager:
    return desk()


# -- approvals and their numbers -----------------------------------------------------------------------------


def test_an_ordinary_buy_is_approved_with_var_deltas_matching_an_independent_full_computation(
    rm: RiskManager, store: Store
) -> None:
    snap = store.read_market()
    x_before = exposures(store, "main")

    decision = rm.check_trade_impact("AAA", 100, "BUY")

    assert decision["status"] == "APPROVED" and decision["reasons"] == []
    x_after = x_before.copy()
    x_after[snap.tickers.index("AAA")] += 100 * 100.0
    np.testing.assert_allclose(decision["var_before"], independent_var(x_before, snap.cov), rtol=1e-10)
    np.testing.assert_allclose(decision["var_after"], independent_var(x_after, snap.cov), rtol=1e-10)
    np.testing.assert_allclose(
        decision["delta_var"], decision["var_after"] - decision["var_before"], rtol=1e-9
    )
    # marginal VaR per dollar: z (Σx)_i / σ · sqrt(390)
    i = snap.tickers.index("AAA")
    sigma = math.sqrt(x_before @ snap.cov @ x_before)
    marginal = stats.norm.ppf(0.95) * (snap.cov @ x_before)[i] / sigma * math.sqrt(BARS_PER_DAY)
    np.testing.assert_allclose(decision["marginal_var"], marginal, rtol=1e-10)
    assert decision["price"] == 100.0 and decision["notional"] == 10_000.0
    assert decision["est_fees"] == 1.0  # 100 x 0.01 = 1.00, the minimum
    assert decision["cash_before"] == 1_000_000.0 and decision["cash_after"] == 1_000_000.0 - 10_001.0
    assert decision["position_before"] == 1000 and decision["position_after"] == 1100
    assert decision["liquidity_cost"] > 0 and decision["trading_state"] == "ACTIVE"
    assert decision["market_version"] == 0


def test_the_liquidity_cost_is_half_spread_plus_square_root_impact(rm: RiskManager, store: Store) -> None:
    snap = store.read_market()
    i = snap.tickers.index("DDD")
    qty, price = 3000, 25.0
    daily_vol = math.sqrt(snap.cov[i, i]) * math.sqrt(BARS_PER_DAY)
    expected = price * 2.0 / 20_000 * qty + 0.1 * daily_vol * math.sqrt(qty / 3_000_000) * price * qty

    decision = rm.check_trade_impact("DDD", qty, "BUY")

    np.testing.assert_allclose(decision["liquidity_cost"], expected, rtol=1e-12)


def test_a_ticker_added_at_run_time_trades_with_default_liquidity_parameters(
    rm: RiskManager, store: Store, settings: Settings
) -> None:
    assert codes(rm.check_trade_impact("EEE", 100, "BUY")) == {"UNKNOWN_TICKER"}
    warmup.add_ticker(store, settings, "EEE", 40.0, 0.3, now=NOW)

    decision = rm.check_trade_impact("EEE", 100, "BUY")

    assert decision["status"] == "APPROVED", decision["reasons"]
    assert decision["market_version"] == 1 and decision["liquidity_cost"] > 0


# -- every rejection reason, each leaving the store untouched ------------------------------------------------


@pytest.mark.parametrize(
    ("ticker", "qty", "side", "code"),
    [
        pytest.param("ZZZ", 10, "BUY", ReasonCode.UNKNOWN_TICKER, id="unknown ticker"),
        pytest.param(123, 10, "BUY", ReasonCode.UNKNOWN_TICKER, id="ticker not a string"),
        pytest.param("AAA", 0, "BUY", ReasonCode.BAD_QUANTITY, id="qty 0"),
        pytest.param("AAA", -5, "BUY", ReasonCode.BAD_QUANTITY, id="qty negative"),
        pytest.param("AAA", 1.5, "BUY", ReasonCode.BAD_QUANTITY, id="qty fractional"),
        pytest.param("AAA", Decimal("2.5"), "BUY", ReasonCode.BAD_QUANTITY, id="qty fractional decimal"),
        pytest.param("AAA", float("nan"), "BUY", ReasonCode.BAD_QUANTITY, id="qty NaN"),
        pytest.param("AAA", float("inf"), "BUY", ReasonCode.BAD_QUANTITY, id="qty inf"),
        pytest.param("AAA", 1e30, "BUY", ReasonCode.BAD_QUANTITY, id="qty 1e30"),
        pytest.param("AAA", 100_001, "BUY", ReasonCode.BAD_QUANTITY, id="qty above the fat-finger limit"),
        pytest.param("AAA", "100", "BUY", ReasonCode.BAD_QUANTITY, id="qty a string"),
        pytest.param("AAA", True, "BUY", ReasonCode.BAD_QUANTITY, id="qty a boolean"),
        pytest.param("AAA", np.True_, "BUY", ReasonCode.BAD_QUANTITY, id="qty a numpy boolean"),
        pytest.param("AAA", None, "BUY", ReasonCode.BAD_QUANTITY, id="qty None"),
        pytest.param("AAA", 10, "HOLD", ReasonCode.BAD_SIDE, id="side HOLD"),
        pytest.param("AAA", 10, "", ReasonCode.BAD_SIDE, id="side empty"),
        pytest.param("AAA", 10, None, ReasonCode.BAD_SIDE, id="side None"),
        pytest.param("AAA", 1500, "SELL", ReasonCode.OVERSELL, id="oversell"),
        pytest.param("CCC", 10, "SELL", ReasonCode.SHORT_NOT_ALLOWED, id="short in a cash account"),
    ],
)
def test_a_malformed_or_impossible_order_is_rejected_with_its_code_and_changes_nothing(
    rm: RiskManager, redis_client: redis.Redis, ticker: Any, qty: Any, side: Any, code: ReasonCode
) -> None:
    before = store_contents(redis_client)

    decision = rm.check_trade_impact(ticker, qty, side)

    assert decision["status"] == "REJECTED"
    assert codes(decision) == {code.value}
    assert all(r["message"] for r in decision["reasons"])
    assert store_contents(redis_client) == before


def test_every_failed_check_is_reported_not_only_the_first(rm: RiskManager) -> None:
    decision = rm.check_trade_impact("ZZZ", -1, "HOLD")

    assert codes(decision) == {"UNKNOWN_TICKER", "BAD_QUANTITY", "BAD_SIDE"}


def test_an_integral_float_quantity_and_a_lower_case_side_are_accepted(rm: RiskManager) -> None:
    decision = rm.check_trade_impact("AAA", 100.0, "buy")

    assert decision["status"] == "APPROVED" and decision["qty"] == 100 and decision["side"] == "BUY"


def _rejected_without_change(
    rm: RiskManager, client: redis.Redis, ticker: str, qty: int, side: str
) -> set[str]:
    before = store_contents(client)
    decision = rm.check_trade_impact(ticker, qty, side)
    assert decision["status"] == "REJECTED"
    assert store_contents(client) == before
    return codes(decision)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0, -3.0])
def test_a_missing_or_non_finite_price_fails_closed(
    rm: RiskManager, store: Store, redis_client: redis.Redis, bad: float
) -> None:
    set_market(store, {"AAA": bad})

    assert _rejected_without_change(rm, redis_client, "AAA", 10, "BUY") == {"MISSING_PRICE"}


def test_a_missing_price_of_another_held_ticker_blocks_trading_because_risk_cannot_be_computed(
    rm: RiskManager, store: Store, redis_client: redis.Redis
) -> None:
    set_market(store, {"BBB": float("nan")})

    assert _rejected_without_change(rm, redis_client, "AAA", 10, "BUY") == {"MISSING_PRICE"}


def test_a_stale_price_is_refused(desk: Callable[..., RiskManager], redis_client: redis.Redis) -> None:
    rm = desk(clock=lambda: NOW + 31.0)  # limit 30 s

    assert _rejected_without_change(rm, redis_client, "AAA", 10, "BUY") == {"STALE_PRICE"}
    assert desk(clock=lambda: NOW + 29.0).check_trade_impact("AAA", 10, "BUY")["status"] == "APPROVED"


def test_a_price_outside_the_collar_is_refused(
    rm: RiskManager, store: Store, redis_client: redis.Redis
) -> None:
    set_market(store, {"AAA": 111.0})  # reference 100, collar 10%

    assert _rejected_without_change(rm, redis_client, "AAA", 10, "BUY") == {"PRICE_COLLAR"}
    set_market(store, {"AAA": 109.0})
    assert rm.check_trade_impact("AAA", 10, "BUY")["status"] == "APPROVED"


def test_a_new_session_reference_price_is_seen_by_a_running_manager(rm: RiskManager, store: Store) -> None:
    set_market(store, {"AAA": 111.0})
    assert codes(rm.check_trade_impact("AAA", 10, "BUY")) == {"PRICE_COLLAR"}
    snap = store.read_market()

    store.write_reference_prices(snap.tickers, snap.prices, NOW)  # a new session opens at the last prices

    decision = rm.check_trade_impact("AAA", 10, "BUY")
    assert decision["status"] == "APPROVED" and decision["reference_price"] == 111.0


def test_a_purchase_beyond_the_cash_is_refused(
    rm: RiskManager, store: Store, redis_client: redis.Redis
) -> None:
    state = store.read_portfolio("main")
    store.write_portfolio_state(PortfolioState(**{**state.__dict__, "cash": Decimal("2000.00")}))

    # 10 x 200 = 2000 plus the 1.00 fee: one dollar short
    assert _rejected_without_change(rm, redis_client, "CCC", 10, "BUY") == {"INSUFFICIENT_CASH"}
    assert rm.check_trade_impact("CCC", 9, "BUY")["status"] == "APPROVED"


def test_a_trade_pushing_var_over_the_limit_is_refused_but_a_var_reducing_one_passes(
    desk: Callable[..., RiskManager], redis_client: redis.Redis
) -> None:
    rm = desk({"limits": {"var_limit": 4300}})  # VaR is ~4222 before, ~4372 after buying 100 AAA

    assert _rejected_without_change(rm, redis_client, "AAA", 100, "BUY") == {"VAR_LIMIT"}
    tight = desk({"limits": {"var_limit": 4000}})  # already above the limit: selling must stay possible
    assert tight.check_trade_impact("AAA", 100, "SELL")["status"] == "APPROVED"


def test_a_position_growing_beyond_the_concentration_limit_is_refused(
    desk: Callable[..., RiskManager], redis_client: redis.Redis
) -> None:
    rm = desk({"limits": {"max_concentration": 0.1}})  # AAA is 100k of 1.2M equity

    assert _rejected_without_change(rm, redis_client, "AAA", 300, "BUY") == {"CONCENTRATION"}
    assert rm.check_trade_impact("AAA", 100, "BUY")["status"] == "APPROVED"


def test_an_order_above_the_max_notional_is_refused(
    desk: Callable[..., RiskManager], redis_client: redis.Redis
) -> None:
    rm = desk({"limits": {"max_order_notional": 5000}})

    assert _rejected_without_change(rm, redis_client, "AAA", 51, "BUY") == {"MAX_NOTIONAL"}
    assert rm.check_trade_impact("AAA", 50, "BUY")["status"] == "APPROVED"


def test_the_order_rate_throttle_counts_fills_of_the_last_minute(
    desk: Callable[..., RiskManager], redis_client: redis.Redis
) -> None:
    clock = {"now": NOW}
    rm = desk({"limits": {"max_orders_per_minute": 2}}, clock=lambda: clock["now"])
    for _ in range(2):
        assert rm.execute_trade("AAA", 1, "BUY")["status"] == "FILLED"

    assert _rejected_without_change(rm, redis_client, "AAA", 1, "BUY") == {"RATE_LIMIT"}
    clock["now"] = NOW + 25.0  # price still fresh (30 s), the two fills are 25 s old: still in the window
    assert codes(rm.check_trade_impact("AAA", 1, "BUY")) == {"RATE_LIMIT"}
    clock["now"] = NOW + 61.0
    set_market(rm.store, {"AAA": 100.0}, ts=NOW + 61.0)
    assert rm.check_trade_impact("AAA", 1, "BUY")["status"] == "APPROVED"


def test_a_margin_account_may_short_but_not_beyond_its_initial_margin(
    store: Store, redis_client: redis.Redis
) -> None:
    # the margin floor after a trade (min_margin_level_after, default 150%) is off here: issue 12 added it,
    # and a short to a 127% margin level, approved before, is now refused by it (tests/test_gate_limits.py)
    config = merge(TEST_CONFIG, {"limits": {"max_concentration": 1.0, "min_margin_level_after": 0.0}})
    config["portfolios"][1]["initial_margin"] = 1.0  # used margin = gross exposure
    settings = settings_from_dict(config)
    warmup.seed(store, settings, now=NOW)
    rm = RiskManager(redis_client, "hedge", settings, clock=lambda: NOW)
    # equity 200k + 300 x 200 - 1000 x 25 = 235k; gross 85k

    short = rm.check_trade_impact("AAA", 1000, "SELL")  # gross 185k: fine, and a short is allowed
    assert short["status"] == "APPROVED" and short["position_after"] == -1000
    np.testing.assert_allclose(short["margin_level_after"], (235_000 - 10) / 185_000 * 100)
    assert _rejected_without_change(rm, redis_client, "AAA", 1600, "BUY") == {"MARGIN"}  # gross 245k
    config["limits"].pop("min_margin_level_after")  # the default floor, 150%
    floored = RiskManager(redis_client, "hedge", settings_from_dict(config), clock=lambda: NOW)
    assert _rejected_without_change(floored, redis_client, "AAA", 1000, "SELL") == {"MARGIN_FLOOR"}


def test_halted_trading_refuses_everything(rm: RiskManager, redis_client: redis.Redis) -> None:
    rm.set_trading_state("HALTED", "kill switch test", "risk-officer")

    assert _rejected_without_change(rm, redis_client, "AAA", 10, "SELL") == {"TRADING_HALTED"}


def test_reducing_passes_only_trades_that_shrink_the_position_toward_zero(
    rm: RiskManager, store: Store, redis_client: redis.Redis
) -> None:
    rm.set_trading_state("REDUCING", "drawdown level 1", "monitor")

    assert _rejected_without_change(rm, redis_client, "AAA", 10, "BUY") == {"REDUCING_ONLY"}
    assert _rejected_without_change(rm, redis_client, "CCC", 1, "BUY") == {
        "REDUCING_ONLY"
    }  # opens a position
    assert rm.check_trade_impact("AAA", 400, "SELL")["status"] == "APPROVED"
    assert rm.check_trade_impact("AAA", 1000, "SELL")["status"] == "APPROVED"  # flat is reduced


def test_reducing_refuses_a_margin_trade_that_flips_the_position(desk: Callable[..., RiskManager]) -> None:
    rm = desk(portfolio_id="hedge")
    rm.set_trading_state("REDUCING", "test", "tester")

    assert codes(rm.check_trade_impact("DDD", 2000, "BUY")) == {"REDUCING_ONLY"}  # -1000 -> +1000
    assert rm.check_trade_impact("DDD", 500, "BUY")["status"] == "APPROVED"  # -1000 -> -500


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda c, k: c.delete(k.trading_state), id="missing"),
        pytest.param(lambda c, k: c.hset(k.trading_state, "state", "PARTY"), id="unknown state"),
        pytest.param(lambda c, k: c.set(k.trading_state, "ACTIVE"), id="wrong type"),
    ],
)
def test_a_missing_or_unreadable_trading_state_counts_as_halted(
    rm: RiskManager, redis_client: redis.Redis, spoil: Callable[[redis.Redis, PortfolioKeys], Any]
) -> None:
    spoil(redis_client, PortfolioKeys("main"))

    decision = rm.check_trade_impact("AAA", 10, "BUY")

    assert decision["status"] == "REJECTED" and "TRADING_HALTED" in codes(decision)
    assert rm.get_trading_state().state == "HALTED"


# -- fail closed on store trouble ----------------------------------------------------------------------------


def test_an_empty_store_rejects_with_store_empty_and_reads_return_none(
    redis_client: redis.Redis, settings: Settings
) -> None:
    rm = RiskManager(redis_client, "main", settings, clock=lambda: NOW)

    decision = rm.check_trade_impact("AAA", 10, "BUY")
    result = rm.execute_trade("AAA", 10, "BUY")

    assert decision["status"] == "REJECTED" and "STORE_EMPTY" in codes(decision)
    assert result["status"] == "REJECTED" and result["fill"] is None
    assert rm.get_market_data() == (None, None) and rm.last_error is not None
    assert rm.get_portfolio_state() is None and rm.last_error.code == "STORE_EMPTY"
    assert redis_client.keys("*") == []  # the rejected execution wrote nothing, not even a log record


def test_an_unreachable_redis_rejects_with_store_unavailable_instead_of_raising(
    settings: Settings, tmp_path: Any
) -> None:
    rm = RiskManager(f"unix://{tmp_path}/nobody.sock", "main", settings, clock=lambda: NOW)

    decision = rm.check_trade_impact("AAA", 10, "BUY")
    result = rm.execute_trade("AAA", 10, "BUY", client_order_id="x1")

    assert codes(decision) == {"STORE_UNAVAILABLE"}
    assert result["status"] == "REJECTED" and codes(result) == {"STORE_UNAVAILABLE"}
    assert rm.get_trading_state().state == "HALTED"
    assert rm.get_market_data() == (None, None) and rm.last_error.code == "STORE_UNAVAILABLE"


def test_a_corrupt_price_array_rejects_with_store_corrupt(rm: RiskManager, redis_client: redis.Redis) -> None:
    redis_client.hset(MARKET_KEY, "prices", b"RDA1garbage")

    decision = rm.check_trade_impact("AAA", 10, "BUY")

    assert decision["status"] == "REJECTED" and "STORE_CORRUPT" in codes(decision)
    assert rm.get_market_data() == (None, None) and rm.last_error.code == "STORE_CORRUPT"


def test_a_covariance_that_is_not_positive_semi_definite_fails_closed(rm: RiskManager, store: Store) -> None:
    bad = store.read_market().cov.copy()
    bad[0, 1] = bad[1, 0] = 10 * math.sqrt(bad[0, 0] * bad[1, 1])  # correlation 10: not PSD
    set_market(store, cov=bad)

    decision = rm.check_trade_impact("AAA", 10, "BUY")

    assert decision["status"] == "REJECTED" and codes(decision) == {"STORE_CORRUPT"}


# -- the covariance cache ------------------------------------------------------------------------------------


def test_the_matrix_is_read_once_per_market_version(
    rm: RiskManager, store: Store, redis_client: redis.Redis
) -> None:
    first = rm.check_trade_impact("AAA", 100, "BUY")
    # tamper with the matrix WITHOUT a new version: a manager that reread it on every check would notice
    tampered = store.read_market().cov * 4.0
    redis_client.hset(MARKET_KEY, "cov", encode_array(tampered))

    same_version = rm.check_trade_impact("AAA", 100, "BUY")
    set_market(store, cov=tampered)  # now a new version: the cache must be dropped
    new_version = rm.check_trade_impact("AAA", 100, "BUY")

    assert same_version["var_after"] == first["var_after"]
    np.testing.assert_allclose(new_version["var_after"], 2.0 * first["var_after"], rtol=1e-12)  # sqrt(4)


def test_a_reset_store_with_the_same_version_number_is_not_served_from_the_old_cache(
    rm: RiskManager, store: Store, settings: Settings
) -> None:
    first = rm.check_trade_impact("AAA", 100, "BUY")
    warmup.reset(store)
    config = merge(TEST_CONFIG, {"universe": {"correlation": 0.8}})
    warmup.seed(store, settings_from_dict(config), now=NOW + 1.0)  # version 0 again, other matrix

    second = rm.check_trade_impact("AAA", 100, "BUY")

    assert second["market_version"] == 0 and second["var_after"] > first["var_after"]


# -- execution -----------------------------------------------------------------------------------------------


def test_a_fill_updates_cash_position_fees_and_the_trade_log_exactly(rm: RiskManager, store: Store) -> None:
    result = rm.execute_trade("AAA", 100, "BUY", client_order_id="ord-1", actor="alice")

    assert result["status"] == "FILLED" and result["reasons"] == [] and result["duplicate"] is False
    fill = result["fill"]
    assert (fill["ticker"], fill["side"], fill["qty"], fill["actor"]) == ("AAA", "BUY", 100, "alice")
    assert Decimal(fill["price"]) == Decimal("100") and Decimal(fill["fees"]) == Decimal("1.00")
    assert Decimal(fill["cash_before"]) == Decimal("1000000.00")
    assert Decimal(fill["cash_after"]) == Decimal("989999.00")
    state = store.read_portfolio("main")
    assert state.cash == Decimal("989999.00") and state.fees_paid == Decimal("1.00")
    assert state.positions["AAA"].qty == 1100 and state.positions["AAA"].avg_price == Decimal("100")
    log = rm.trade_log(10)
    assert len(log) == 1 and log[0]["fill"] == fill and log[0]["actor"] == "alice"
    assert log[0]["decision"]["status"] == "APPROVED"


def test_buys_average_the_price_and_sells_realize_pnl_at_average_cost(rm: RiskManager, store: Store) -> None:
    set_market(store, {"AAA": 104.5})
    rm.execute_trade("AAA", 1000, "BUY")  # 1000 @ 100 + 1000 @ 104.5 -> avg 102.25
    set_market(store, {"AAA": 107.0})

    sell = rm.execute_trade("AAA", 500, "SELL")["fill"]

    state = store.read_portfolio("main")
    assert state.positions["AAA"].avg_price == Decimal("102.25")
    assert Decimal(sell["realized_pnl"]) == Decimal("2375.00")  # (107 - 102.25) x 500
    assert state.realized_pnl == Decimal("2375.00") and state.positions["AAA"].realized_pnl == Decimal("2375")
    # cash: 1,000,000 - 104,500 - 10 (fee) + 53,500 - 5 (fee)
    assert state.cash == Decimal("948985.00") and state.fees_paid == Decimal("15.00")


def test_closing_a_position_removes_it_but_keeps_its_realized_pnl(rm: RiskManager, store: Store) -> None:
    set_market(store, {"BBB": 51.0})

    rm.execute_trade("BBB", 2000, "SELL")

    position = store.read_portfolio("main").positions["BBB"]
    assert position.qty == 0 and position.avg_price == 0 and position.realized_pnl == Decimal("2000")
    assert "BBB" not in set(rm.get_dashboard_metrics()["ticker"])


def test_a_margin_position_that_flips_side_opens_the_new_side_at_the_fill_price(
    desk: Callable[..., RiskManager], store: Store
) -> None:
    rm = desk(portfolio_id="hedge")
    set_market(store, {"CCC": 210.0})

    fill = rm.execute_trade("CCC", 500, "SELL")["fill"]  # long 300 @ 200 -> short 200

    position = store.read_portfolio("hedge").positions["CCC"]
    assert position.qty == -200 and position.avg_price == Decimal("210")
    assert Decimal(fill["realized_pnl"]) == Decimal("3000")  # (210 - 200) x 300 closed
    cover = rm.execute_trade("CCC", 50, "BUY")["fill"]
    assert Decimal(cover["realized_pnl"]) == 0  # covered at the short's own average price
    assert store.read_portfolio("hedge").positions["CCC"].qty == -150


def test_the_same_client_order_id_trades_once_and_returns_the_first_fill(
    rm: RiskManager, store: Store
) -> None:
    first = rm.execute_trade("AAA", 10, "BUY", client_order_id="dbl-click")
    cash = store.read_portfolio("main").cash

    second = rm.execute_trade("AAA", 10, "BUY", client_order_id="dbl-click")
    other_order = rm.execute_trade("AAA", 999, "SELL", client_order_id="dbl-click")

    assert second["fill"] == first["fill"] and second["duplicate"] is True
    # the id names one order: another order sent with it is refused (tests/test_execution_outcomes.py)
    assert other_order["status"] == "REJECTED" and codes(other_order) == {"DUPLICATE_ORDER_ID"}
    assert store.read_portfolio("main").cash == cash
    assert [r["status"] for r in rm.trade_log(10)] == ["REJECTED", "FILLED"]


def test_a_rejected_execution_is_logged_but_changes_no_money_position_or_state(
    rm: RiskManager, redis_client: redis.Redis
) -> None:
    trades_key = PortfolioKeys("main").trades.encode()
    before = {k: v for k, v in store_contents(redis_client).items() if k != trades_key}

    result = rm.execute_trade("AAA", 5000, "SELL", client_order_id="too-many", actor="bob")

    assert result["status"] == "REJECTED" and codes(result) == {"OVERSELL"} and result["fill"] is None
    after = {k: v for k, v in store_contents(redis_client).items() if k != trades_key}
    assert after == before
    (record,) = rm.trade_log(10)
    assert record["status"] == "REJECTED" and record["actor"] == "bob" and record["fill"] is None
    # a rejection does not use up the client order id
    assert rm.execute_trade("AAA", 500, "SELL", client_order_id="too-many")["status"] == "FILLED"


def test_a_numpy_boolean_quantity_executes_nothing(rm: RiskManager, redis_client: redis.Redis) -> None:
    """``np.True_`` is no Python bool, and ``float`` makes it 1.0: it was filled as one share."""
    trades_key = PortfolioKeys("main").trades.encode()
    before = {k: v for k, v in store_contents(redis_client).items() if k != trades_key}
    result = rm.execute_trade("AAA", np.True_, "BUY", client_order_id="bool-qty", actor="bob")
    assert result["status"] == "REJECTED" and codes(result) == {"BAD_QUANTITY"} and result["fill"] is None
    assert {k: v for k, v in store_contents(redis_client).items() if k != trades_key} == before


def test_an_invalid_client_order_id_is_refused(rm: RiskManager) -> None:
    assert codes(rm.execute_trade("AAA", 1, "BUY", client_order_id="")) == {"BAD_ORDER_ID"}
    assert codes(rm.execute_trade("AAA", 1, "BUY", client_order_id=42)) == {"BAD_ORDER_ID"}  # type: ignore[arg-type]


def test_a_portfolio_that_keeps_changing_exhausts_the_retries_and_trades_nothing(
    desk: Callable[..., RiskManager], store: Store, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(execution_module, "MAX_ATTEMPTS", 3)
    other = redis.Redis.from_url(redis_server.url)
    state_key = PortfolioKeys("main").state

    def busy_clock() -> float:
        # another trader's write lands between our read and our EXEC, every time
        other.hincrby(state_key, "test_touch", 1)
        return NOW

    rm = desk(clock=busy_clock)
    cash = store.read_portfolio("main").cash

    result = rm.execute_trade("AAA", 10, "BUY", client_order_id="contended")

    assert result["status"] == "REJECTED" and codes(result) == {"RETRY_EXHAUSTED"}
    assert store.read_portfolio("main").cash == cash
    assert store.read_order("main", "contended") is None
    assert rm.trade_log(1)[0]["reasons"][0]["code"] == "RETRY_EXHAUSTED"
    other.close()


# -- trading states ------------------------------------------------------------------------------------------


def test_a_trading_state_change_is_persisted_with_an_audit_record(rm: RiskManager) -> None:
    new = rm.set_trading_state("halted", "  VaR breach  ", "carol")

    assert (new.state, new.reason, new.actor, new.ts) == ("HALTED", "VaR breach", "carol", NOW)
    assert rm.get_trading_state() == new
    audit = rm.audit_log(1)[0]
    assert (audit["action"], audit["state"], audit["previous"], audit["actor"], audit["reason"]) == (
        "set_trading_state",
        "HALTED",
        "ACTIVE",
        "carol",
        "VaR breach",
    )


@pytest.mark.parametrize(
    ("state", "reason", "actor"),
    [("PAUSED", "r", "a"), ("HALTED", "", "a"), ("HALTED", "r", " "), ("HALTED", None, "a")],
)
def test_a_trading_state_change_needs_a_known_state_a_reason_and_an_actor(
    rm: RiskManager, state: str, reason: Any, actor: str
) -> None:
    with pytest.raises(ValueError):
        rm.set_trading_state(state, reason, actor)
    assert rm.get_trading_state().state == "ACTIVE"


def test_a_trading_state_change_records_the_state_it_replaced_when_another_change_lands_first(
    rm: RiskManager, store: Store
) -> None:
    # Arrange: right after this change reads ACTIVE, a colleague halts the portfolio
    colleague = RiskManager(store.client, "main", rm.settings, clock=lambda: NOW)
    read = rm.store.read_trading_state
    seen: list[str] = []

    def read_then_halt(*args: Any, **kwargs: Any) -> Any:
        status = read(*args, **kwargs)
        seen.append(status.state)
        if len(seen) == 1:
            colleague.set_trading_state("HALTED", "kill switch", "bob")
        return status

    rm.store.read_trading_state = read_then_halt  # type: ignore[method-assign]

    # Act: a deliberate human change may lift a state; it must say which one
    rm.set_trading_state("REDUCING", "halt lifted to reducing", "carol")

    # Assert: read again inside the retried transaction; the audit trail is a chain
    assert seen == ["ACTIVE", "HALTED"]
    assert rm.get_trading_state().state == "REDUCING"
    records = [(a["actor"], a["previous"], a["state"]) for a in rm.audit_log(2)]
    assert records == [("carol", "HALTED", "REDUCING"), ("bob", "ACTIVE", "HALTED")]


def test_a_trading_state_that_keeps_changing_under_the_change_is_refused_writing_nothing(
    rm: RiskManager, store: Store, redis_client: redis.Redis
) -> None:
    key = PortfolioKeys("main").trading_state
    read = rm.store.read_trading_state

    def read_then_touch(*args: Any, **kwargs: Any) -> Any:
        status = read(*args, **kwargs)
        redis_client.hincrby(key, "touched", 1)  # someone else writes the key after every read
        return status

    rm.store.read_trading_state = read_then_touch  # type: ignore[method-assign]
    audit = rm.audit_log(100)

    with pytest.raises(StoreUnavailableError, match="kept changing"):
        rm.set_trading_state("HALTED", "kill switch", "carol")

    assert int(redis_client.hget(key, "touched") or 0) == TRADING_STATE_ATTEMPTS
    assert store.read_trading_state("main").state == "ACTIVE" and rm.audit_log(100) == audit


@pytest.mark.parametrize(
    ("spoil", "previous"),
    [
        pytest.param(lambda c, k: c.delete(k.trading_state), "MISSING", id="missing"),
        pytest.param(lambda c, k: c.hset(k.trading_state, "state", "PARTY"), "UNREADABLE", id="unknown state"),
        pytest.param(lambda c, k: c.set(k.trading_state, "ACTIVE"), "UNREADABLE", id="wrong type"),
    ],
)
def test_a_deliberate_trading_state_change_repairs_a_missing_or_unreadable_state_and_says_so(
    rm: RiskManager, redis_client: redis.Redis, spoil: Callable[[redis.Redis, PortfolioKeys], Any], previous: str
) -> None:
    spoil(redis_client, PortfolioKeys("main"))

    new = rm.set_trading_state("REDUCING", "state repaired after the incident", "carol")

    assert rm.get_trading_state() == new and new.state == "REDUCING"
    assert set(redis_client.hgetall(PortfolioKeys("main").trading_state)) == {b"state", b"reason", b"actor", b"ts"}
    record = rm.audit_log(1)[0]
    assert (record["previous"], record["state"], record["actor"]) == (previous, "REDUCING", "carol")


# -- what-if and stress --------------------------------------------------------------------------------------


def test_what_if_checks_a_basket_cumulatively_and_writes_nothing(
    desk: Callable[..., RiskManager], store: Store, redis_client: redis.Redis
) -> None:
    rm = desk({"limits": {"max_concentration": 0.2}})  # AAA 100k of 1.2M; each buy adds 100k
    before = store_contents(redis_client)

    basket = rm.what_if(
        [("AAA", 1000, "BUY"), {"ticker": "AAA", "qty": 1000, "side": "BUY"}, ("BBB", 100, "SELL")]
    )

    assert store_contents(redis_client) == before
    first, second, third = basket["decisions"]
    assert first["status"] == "APPROVED" and second["status"] == "REJECTED"
    assert codes(second) == {"CONCENTRATION"} and second["position_before"] == 2000
    assert third["status"] == "APPROVED"
    assert basket["status"] == "REJECTED"
    assert basket["positions_after"] == {"AAA": 2000, "BBB": 1900}
    assert basket["cash_after"] == 1_000_000 - 100_000 - 10 + 5_000 - 1
    snap = store.read_market()
    x = np.zeros(4)
    x[0], x[1] = 2000 * 100.0, 1900 * 50.0
    np.testing.assert_allclose(basket["var_after"], independent_var(x, snap.cov), rtol=1e-10)
    np.testing.assert_allclose(
        basket["var_before"], independent_var(exposures(store, "main"), snap.cov), rtol=1e-10
    )


def test_stress_test_reports_stressed_var_and_scenario_pnl(rm: RiskManager, store: Store) -> None:
    _, stressed_tickers, stressed = store.read_stressed()
    x = exposures(store, "main")  # AAA 100k, BBB 100k

    report = rm.stress_test()

    np.testing.assert_allclose(report["stressed_var"], independent_var(x, stressed), rtol=1e-10)
    np.testing.assert_allclose(report["stressed_var99"], independent_var(x, stressed, 0.99), rtol=1e-10)
    assert report["stressed_var"] > report["var"]
    pnl = {s["name"]: s["pnl"] for s in report["scenarios"]}
    assert pnl == {"crash": pytest.approx(-40_000.0), "rotation": pytest.approx(-10_000.0)}
    crash = next(s for s in report["scenarios"] if s["name"] == "crash")
    assert crash["equity_after"] == pytest.approx(1_160_000.0) and crash["pnl_pct"] == pytest.approx(
        -40 / 1200
    )


def test_stress_test_of_a_basket_stresses_the_holdings_after_it(rm: RiskManager) -> None:
    report = rm.stress_test([("AAA", 1000, "SELL"), ("BBB", 2000, "SELL")])

    assert report["var"] == pytest.approx(0.0, abs=1e-9)
    assert all(s["pnl"] == pytest.approx(0.0) for s in report["scenarios"])


# -- dashboard metrics ---------------------------------------------------------------------------------------


def test_dashboard_metrics_match_independent_figures_and_components_sum_to_var(
    desk: Callable[..., RiskManager], store: Store
) -> None:
    rm = desk(portfolio_id="hedge")
    set_market(store, {"CCC": 204.0, "DDD": 24.0})
    snap = store.read_market()

    df = rm.get_dashboard_metrics()

    assert tuple(df.columns) == DASHBOARD_COLUMNS and list(df["ticker"]) == ["CCC", "DDD"]
    totals = df.attrs["totals"]
    x = exposures(store, "hedge")
    equity = 200_000 + 300 * 204.0 - 1000 * 24.0
    np.testing.assert_allclose(totals["var"], independent_var(x, snap.cov), rtol=1e-10)
    np.testing.assert_allclose(df["component_var"].sum(), totals["var"], rtol=1e-10)
    np.testing.assert_allclose(df["component_share"].sum(), 1.0, rtol=1e-10)
    i = [snap.tickers.index(t) for t in ("CCC", "DDD")]
    np.testing.assert_allclose(df["daily_vol"], np.sqrt(np.diag(snap.cov)[i] * BARS_PER_DAY), rtol=1e-12)
    np.testing.assert_allclose(df["market_value"], [300 * 204.0, -24_000.0])
    np.testing.assert_allclose(df["weight"], np.array([300 * 204.0, -24_000.0]) / equity)
    np.testing.assert_allclose(df["unrealized_pnl"], [300 * 4.0, 1000 * 1.0])
    assert totals["equity"] == pytest.approx(equity) and totals["trading_state"] == "ACTIVE"
    assert totals["margin_level"] == pytest.approx(equity / (0.5 * (300 * 204.0 + 24_000.0)) * 100)
    z95 = stats.norm.ppf(0.95)
    assert totals["cvar"] == pytest.approx(totals["var"] / z95 * stats.norm.pdf(z95) / 0.05, rel=1e-10)
    assert totals["var_utilization"] == pytest.approx(totals["var"] / 20_000)


def test_dashboard_metrics_raise_the_typed_error_on_an_empty_store(
    redis_client: redis.Redis, settings: Settings
) -> None:
    from engine.errors import StoreEmptyError

    with pytest.raises(StoreEmptyError):
        RiskManager(redis_client, "main", settings, clock=lambda: NOW).get_dashboard_metrics()


def test_get_market_data_and_portfolio_state_read_the_store(rm: RiskManager, store: Store) -> None:
    snap, prices = rm.get_market_data()
    state = rm.get_portfolio_state()

    assert (
        snap is not None
        and snap.cov.shape == (4, 4)
        and prices == {"AAA": 100.0, "BBB": 50.0, "CCC": 200.0, "DDD": 25.0}
    )
    assert state == store.read_portfolio("main")


def test_risk_reads_on_an_unreachable_redis_raise_the_typed_error(settings: Settings, tmp_path: Any) -> None:
    from engine.errors import StoreUnavailableError

    rm = RiskManager(f"unix://{tmp_path}/nobody.sock", "main", settings, clock=lambda: NOW)

    for read in (rm.get_dashboard_metrics, rm.stress_test, rm.trade_log, rm.audit_log):
        with pytest.raises(StoreUnavailableError):
            read()
    basket = rm.what_if([("AAA", 1, "BUY")])
    assert basket["status"] == "REJECTED" and basket["var_before"] is None


# -- typed entry points and records ------------------------------------------------------------------------


def test_a_replayed_order_returns_the_stored_record_with_duplicate_set(rm: RiskManager, store: Store) -> None:
    first = rm.execute_trade("AAA", 10, "BUY", client_order_id="replay-1")

    stored = store.read_order("main", "replay-1")
    second = rm.execute_trade("AAA", 10, "BUY", client_order_id="replay-1")

    assert stored is not None
    assert second == {**stored, "duplicate": True}
    assert {k: v for k, v in second.items() if k != "duplicate"} == {
        k: v for k, v in first.items() if k != "duplicate"
    }


def test_the_typed_entry_points_return_records_whose_dicts_are_the_public_api(rm: RiskManager) -> None:
    decision = rm.check("AAA", 10, "BUY")
    result = rm.execute("AAA", 10, "BUY", client_order_id="typed-1")

    assert isinstance(decision, Decision) and decision.approved
    assert decision.to_dict().keys() == rm.check_trade_impact("AAA", 10, "BUY").keys()
    assert Decision.from_dict(decision.to_dict()) == decision
    assert isinstance(result, ExecutionResult) and result.filled and result.fill is not None
    assert ExecutionResult.from_dict(result.to_dict()) == result
    assert type(result.to_dict()["fill"]["cash_after"]) is str
    assert type(result.to_dict()["decision"]["side"]) is str


def test_the_market_model_cache_validates_once_per_snapshot_and_aligns_the_stressed_matrix(
    rm: RiskManager, store: Store
) -> None:
    models = MarketModelCache(store)

    model = models.get()
    again = models.get(store.read_market_header())
    stressed = models.stressed(model)

    assert again is model and model.error is None
    assert models.at_least(model.version - 1, model.key[1]) is model  # a lagging reader keeps the newer matrix
    assert stressed.cov.shape == (len(model.tickers), len(model.tickers))
    assert models.stressed(model) is stressed
    sub = model.aligned(model.tickers[:2][::-1])
    assert sub[0, 0] == model.cov[1, 1] and sub[0, 1] == model.cov[1, 0]


def test_the_stressed_matrix_is_read_once_per_write_of_it_not_once_per_bar(rm: RiskManager, store: Store) -> None:
    models = MarketModelCache(store)
    first = models.stressed(models.get())
    version, tickers, stored = store.read_stressed()

    set_market(store, ts=store.read_market_header().ts + 1.0)
    after_a_bar = models.get()
    same = models.stressed(after_a_bar)
    # a re-seeded store rewrites the matrix at a market version it has held before: its stamp still differs
    meta = store.read_stressed_meta()
    store.write_stressed(version, tickers, stored * 2.0, meta={**meta, "written_at": meta["written_at"] + 1.0})
    rewritten = models.stressed(after_a_bar)

    assert same.cov is first.cov and same.market_key == after_a_bar.key != first.market_key
    assert rewritten.version == same.version and np.array_equal(rewritten.cov, first.cov * 2.0)


def test_a_stored_stressed_matrix_that_is_not_positive_semi_definite_is_refused_by_the_stress_test(
    rm: RiskManager, store: Store
) -> None:
    # Arrange: the stored crisis matrix with a correlation of 10 (not PSD); today's covariance is sound
    version, tickers, stored = store.read_stressed()
    bad = stored.copy()
    bad[0, 1] = bad[1, 0] = 10 * math.sqrt(bad[0, 0] * bad[1, 1])
    meta = store.read_stressed_meta()
    store.write_stressed(version, tickers, bad, meta={**meta, "written_at": meta["written_at"] + 1.0})

    # Act / Assert: the stress test refuses it rather than reporting a figure from it
    with pytest.raises(ValueError, match="positive semi-definite|PSD"):
        rm.stress_test()
