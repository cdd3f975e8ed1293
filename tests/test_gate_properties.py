"""Properties of the pre-trade gate over random books, limits and markets (hypothesis, real redis-server).

- Every risk-reducing trade (shrinks the position without flipping it) is APPROVED, whatever limits the book
  already breaks, the collar and REDUCING included; a liquidation-only order that shrinks the position passes
  in HALTED.
- Every other trade carries exactly the limit codes that its figures (computed here with numpy from the stored
  matrices, not by the gate) say it breaks: VaR, stressed VaR, concentration, leverage, position, margin,
  margin floor, daily loss, collar and REDUCING. A trade that flips the position is one of them (the short or
  long it opens is new risk): its figures count from the book with that ticker flat.
- ``max_qty_allowed`` of a refused order is approved when re-checked, and one share more is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import redis
from hypothesis import HealthCheck, assume, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from scipy import stats

import warmup
from engine.defaults import STRESS_VOL_MULTIPLIER
from engine.records import OrderIntent, TradingState
from engine.settings import settings_from_dict
from engine.store import MarketSnapshot, Store
from logic.risk_manager import RiskManager
from logic.snapshot import period_ids

from .conftest import TEST_CONFIG, merge

NOW = 1_700_000_000.0
TICKERS = ("AAA", "BBB", "CCC", "DDD")
REFERENCE = {t: TEST_CONFIG["universe"]["assets"][t]["price"] for t in TICKERS}
Z95 = float(stats.norm.ppf(0.95))
HORIZON = TEST_CONFIG["model"]["bars_per_day"]
PER_SHARE, MIN_FEE = Decimal("0.01"), Decimal("1.00")  # TEST_CONFIG fees
LIMIT_CODES = {
    "VAR_LIMIT", "STRESSED_VAR", "CONCENTRATION", "LEVERAGE", "POSITION_LIMIT", "MARGIN", "MARGIN_FLOOR",
    "DAILY_LOSS", "PRICE_COLLAR", "REDUCING_ONLY",
}  # fmt: skip
NEAR = 1e-7
"""Relative distance to a limit under which an example is skipped (the gate sums floats in another order)."""

PROPERTY = hsettings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)


@dataclass(frozen=True)
class Case:
    account: str
    holdings: dict[str, int]
    cash: int
    moves_bps: dict[str, int]
    var_factor: float
    stressed_factor: float | None
    concentration: float
    leverage: float | None
    position_cap: int | None
    floor: float
    day_loss: int | None
    """Today's loss so far, dollars (None: the daily-loss limit is off)."""
    loss_limit: int
    state: TradingState
    hedges: bool
    ticker: str
    side: str
    qty: int


@st.composite
def cases(draw: Any) -> Case:
    account = draw(st.sampled_from(["cash", "margin"]))
    low = 0 if account == "cash" else -2000
    holdings = {t: draw(st.integers(low, 2000)) for t in TICKERS}
    ticker = draw(st.sampled_from(TICKERS))
    side = draw(st.sampled_from(["BUY", "SELL"]))
    if holdings[ticker] and draw(st.booleans()):  # half the orders trade toward flat (or through it)
        side = "SELL" if holdings[ticker] > 0 else "BUY"
    return Case(
        account=account,
        holdings={t: q for t, q in holdings.items() if q != 0},
        cash=draw(st.integers(100_000, 1_000_000)),
        moves_bps={t: draw(st.integers(-2000, 2000)) for t in TICKERS},
        var_factor=draw(st.floats(0.5, 3.0)),
        stressed_factor=draw(st.none() | st.floats(0.5, 3.0)),
        concentration=draw(st.floats(0.1, 1.0)),
        leverage=draw(st.none() | st.floats(0.2, 4.0)),
        position_cap=draw(st.none() | st.integers(100, 4000)),
        floor=draw(st.sampled_from([0.0, 120.0, 150.0, 300.0])),
        day_loss=draw(st.none() | st.integers(-20_000, 60_000)),
        loss_limit=draw(st.integers(1_000, 50_000)),
        state=draw(st.sampled_from([TradingState.ACTIVE, TradingState.ACTIVE, TradingState.REDUCING])),
        hedges=draw(st.booleans()),
        ticker=ticker,
        side=side,
        qty=draw(st.integers(1, 3000)),
    )


@dataclass
class World:
    """The seeded store of one case and the figures computed here."""

    rm: RiskManager
    store: Store
    prices: np.ndarray
    cov: np.ndarray
    stressed: np.ndarray
    x: np.ndarray
    cash: Decimal


def build(client: redis.Redis, case: Case, intent_state: TradingState | None = None) -> World:
    client.flushall()
    store = Store(client)
    portfolio = {"id": "p", "account_type": case.account, "cash": str(case.cash), "holdings": case.holdings}
    base = merge(TEST_CONFIG, {"portfolios": [portfolio]})
    warmup.seed(store, settings_from_dict(base), now=NOW)
    snap = store.read_market()
    prices = np.array([round(REFERENCE[t] * (1 + case.moves_bps[t] / 10_000), 2) for t in snap.tickers])
    store.write_market(
        MarketSnapshot(
            version=1, ts=NOW, tickers=snap.tickers, prices=prices, price_ts=np.full(len(prices), NOW), cov=snap.cov
        )
    )
    _, stressed_tickers, stressed = store.read_stressed()
    order = [stressed_tickers.index(t) for t in snap.tickers]
    stressed = stressed[np.ix_(order, order)]
    x = np.array([case.holdings.get(t, 0) * p for t, p in zip(snap.tickers, prices, strict=True)])
    var_now = var_of(x, snap.cov)
    limits: dict[str, Any] = {
        "var_limit": repr(max(var_now * case.var_factor, 1.0)),
        "max_concentration": case.concentration,
        "max_order_notional": 1_000_000_000,
        "min_margin_level_after": case.floor,
        "reducing_allows_hedges": case.hedges,
    }
    if case.stressed_factor is not None:
        limits["stressed_var_limit"] = repr(max(stressed_var_of(x, snap.cov, stressed) * case.stressed_factor, 1.0))
    if case.leverage is not None:
        limits["max_gross_leverage"] = case.leverage
    if case.position_cap is not None:
        limits["max_position_qty"] = case.position_cap
    if case.day_loss is not None:
        limits["max_daily_loss"] = case.loss_limit
        equity = case.cash + float(x.sum())
        day, week = period_ids(NOW, ZoneInfo("UTC"), 0)
        store.update_peaks("p", equity + case.day_loss, day, week)
    settings = settings_from_dict(merge(base, {"limits": limits}))
    rm = RiskManager(client, "p", settings, clock=lambda: NOW)
    rm.set_trading_state(intent_state or case.state, "hypothesis", "tester")
    return World(rm, store, prices, snap.cov, stressed, x, Decimal(case.cash))


def var_of(x: np.ndarray, cov: np.ndarray) -> float:
    return Z95 * math.sqrt(max(float(x @ cov @ x), 0.0)) * math.sqrt(HORIZON)


def stressed_var_of(x: np.ndarray, cov: np.ndarray, stressed: np.ndarray) -> float:
    """The worse of the crisis matrix and of today's covariance with every volatility x STRESS_VOL_MULTIPLIER."""
    return max(var_of(x, stressed), STRESS_VOL_MULTIPLIER * var_of(x, cov))


@dataclass(frozen=True)
class Expected:
    reducing: bool
    codes: set[str]
    near: bool
    """Some figure is within :data:`NEAR` of its limit: the example is not decisive."""


def expected(world: World, case: Case, ticker: str, side: str, qty: int) -> Expected:
    """The limit codes the trade breaks, from figures computed here, and whether it is risk-reducing."""
    limits = world.rm.limits
    i = TICKERS.index(ticker)
    s = 1 if side == "BUY" else -1
    p = float(world.prices[i])
    q0 = case.holdings.get(ticker, 0)
    q1 = q0 + s * qty
    x0, x1 = world.x, world.x.copy()
    x1[i] += s * qty * p
    fee = float(max(MIN_FEE, PER_SHARE * qty))
    equity0 = float(world.cash) + float(x0.sum())
    equity1 = equity0 - fee
    gross1 = float(np.abs(x1).sum())
    # a flip opens its new position from flat: every "adds" is measured from the book with this ticker flat
    x_from = x0.copy()
    if q0 * q1 < 0:
        x_from[i] = 0.0
    q_from = q0 if q0 * q1 >= 0 else 0
    gross_from, var_from = float(np.abs(x_from).sum()), var_of(x_from, world.cov)
    var1 = var_of(x1, world.cov)
    grows = abs(q1) > abs(q_from)
    near: list[bool] = []
    out: set[str] = set()

    def over(value: float, limit: float) -> bool:
        near.append(abs(value - limit) <= NEAR * max(abs(limit), 1.0))
        return value > limit

    reducing = q0 * q1 >= 0 and abs(q1) < abs(q0)
    near.append(abs(var1 - var_from) <= NEAR * max(var_from, 1.0))
    if over(var1, float(limits.var_limit)) and var1 > var_from:
        out.add("VAR_LIMIT")
    if limits.stressed_var_limit is not None:
        s0 = stressed_var_of(x_from, world.cov, world.stressed)
        s1 = stressed_var_of(x1, world.cov, world.stressed)
        near.append(abs(s1 - s0) <= NEAR * max(s0, 1.0))
        if over(s1, float(limits.stressed_var_limit)) and s1 > s0:
            out.add("STRESSED_VAR")
    if grows and (equity1 <= 0 or over(abs(x1[i]) / equity1, limits.max_concentration)):
        out.add("CONCENTRATION")
    if limits.max_gross_leverage is not None and gross1 > gross_from:
        if equity1 <= 0 or over(gross1 / equity1, limits.max_gross_leverage):
            out.add("LEVERAGE")
    cap = limits.max_position_qty
    if cap is not None and abs(q1) > cap and grows:
        out.add("POSITION_LIMIT")
    if case.account == "margin" and gross1 > gross_from:
        used = gross1 * 0.5
        if over(used, equity1):
            out.add("MARGIN")
        if over(limits.min_margin_level_after, equity1 / used * 100.0):
            out.add("MARGIN_FLOOR")
    if case.day_loss is not None:
        near.append(case.day_loss == case.loss_limit)  # floats of the equity sum decide the exact tie
        if case.day_loss >= case.loss_limit:
            out.add("DAILY_LOSS")
    # on the decimals the prices and the collar are written in, as the gate compares them (55.0 against 50 is
    # exactly 10 %, not the float 0.10000000000000009)
    ref = Decimal(repr(REFERENCE[ticker]))
    if abs(Decimal(repr(float(p))) - ref) > Decimal(repr(float(limits.price_collar_pct))) * ref:
        out.add("PRICE_COLLAR")
    if case.state == TradingState.REDUCING and not reducing and not (limits.reducing_allows_hedges and var1 < var_from):
        out.add("REDUCING_ONLY")
    return Expected(reducing, out, any(near))


def other_refusals(case: Case, ticker: str, side: str, qty: int, world: World) -> bool:
    """Cash-account inventory and cash refusals (never waived)."""
    if case.account != "cash":
        return False
    q0 = case.holdings.get(ticker, 0)
    if side == "SELL":
        return qty > q0
    cost = Decimal(repr(float(world.prices[TICKERS.index(ticker)]))) * qty + max(MIN_FEE, PER_SHARE * qty)
    return cost > world.cash


@given(case=cases())
@PROPERTY
def test_risk_reducing_trades_pass_and_other_trades_carry_exactly_the_limit_codes_they_break(
    redis_client: redis.Redis, case: Case
) -> None:
    world = build(redis_client, case)
    want = expected(world, case, case.ticker, case.side, case.qty)
    assume(not want.near)

    decision = world.rm.check(case.ticker, case.qty, case.side)

    got = {r.code.value for r in decision.reasons}
    event(("reducing " if want.reducing else "increasing ") + ",".join(sorted(got)))
    if other_refusals(case, case.ticker, case.side, case.qty, world):
        return
    if want.reducing:
        assert decision.approved, decision.reasons
    else:
        assert got & LIMIT_CODES == want.codes
        assert decision.approved == (not got)


@given(case=cases(), fraction=st.floats(0.01, 1.0))
@PROPERTY
def test_a_liquidation_order_that_shrinks_the_position_passes_in_halted(
    redis_client: redis.Redis, case: Case, fraction: float
) -> None:
    held = [t for t in TICKERS if case.holdings.get(t)]
    assume(held)
    ticker = held[0]
    q0 = case.holdings[ticker]
    qty = max(1, int(abs(q0) * fraction))
    side = "SELL" if q0 > 0 else "BUY"
    world = build(redis_client, case, intent_state=TradingState.HALTED)

    decision = world.rm.check(ticker, qty, side, intent=OrderIntent.LIQUIDATION)
    trader = world.rm.check(ticker, qty, side)

    assert decision.approved, decision.reasons
    assert {r.code.value for r in trader.reasons} == {"TRADING_HALTED"}


@given(case=cases())
@PROPERTY
def test_max_qty_allowed_passes_and_one_share_more_does_not(redis_client: redis.Redis, case: Case) -> None:
    world = build(redis_client, case)
    decision = world.rm.check(case.ticker, case.qty, case.side)
    assume(not decision.approved)

    best = decision.max_qty_allowed

    assert best is not None and best >= 0
    event("max_qty 0" if best == 0 else "max_qty > 0")
    if best > 0:
        assert world.rm.check(case.ticker, best, case.side).approved
    if best < world.rm.limits.max_order_qty:
        assert not world.rm.check(case.ticker, best + 1, case.side).approved
