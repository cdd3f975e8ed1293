"""Random sequences of trades, price moves and trading-state changes (hypothesis stateful testing).

Invariants, checked after every step against figures computed here (numpy/scipy, exact Decimals):

- cash + market value changes only by fees (on a fill) and by price moves (on a tick), to the cent and below:
  prices here have two decimals, so the fill price is the marked price exactly;
- every accepted trade respected every limit: notional, cash and inventory (cash account), initial margin
  (margin account), VaR limit, concentration, trading state; a rejected trade changed no money or position.
  A trade that shrinks a position without flipping it is risk-reducing: the VaR limit and REDUCING never
  refuse it, and REDUCING also accepts a hedge that lowers VaR (issue 12).
"""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import redis
from hypothesis import HealthCheck, event
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from scipy import stats

import warmup
from engine.settings import settings_from_dict
from engine.store import MarketSnapshot, Store
from logic.risk_manager import RiskManager

from .conftest import TEST_CONFIG, merge

NOW = 1_700_000_000.0
TICKERS = ("AAA", "BBB", "CCC", "DDD")
CONFIG = merge(TEST_CONFIG, {"limits": {"var_limit": 6000, "max_concentration": 0.4}})
SETTINGS = settings_from_dict(CONFIG)
LIMITS = SETTINGS.limits
Z = float(stats.norm.ppf(LIMITS.var_confidence))
HORIZON = SETTINGS.model.bars_per_day * LIMITS.var_horizon_days
SLACK = 1e-9
"""Relative tolerance of float risk comparisons (the gate and this test sum in different orders)."""


def machine_for(client: redis.Redis, portfolio_id: str) -> type[RuleBasedStateMachine]:
    class TradingMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            client.flushall()
            self.store = Store(client)
            warmup.seed(self.store, SETTINGS, now=NOW)
            self.rm = RiskManager(client, portfolio_id, SETTINGS, clock=lambda: NOW)
            self.expected_equity = self.equity()
            self.state = "ACTIVE"
            self.fills = 0

        # -- figures computed here ---------------------------------------------------------------------
        def prices(self) -> dict[str, Decimal]:
            header = self.store.read_market_header()
            return {t: Decimal(repr(float(p))) for t, p in zip(header.tickers, header.prices, strict=True)}

        def equity(self) -> Decimal:
            state = self.store.read_portfolio(portfolio_id)
            prices = self.prices()
            return state.cash + sum((p.qty * prices[t] for t, p in state.positions.items()), Decimal(0))

        def exposures(self) -> tuple[np.ndarray, np.ndarray]:
            snap = self.store.read_market()
            state = self.store.read_portfolio(portfolio_id)
            x = np.zeros(len(snap.tickers))
            for t, p in state.positions.items():
                x[snap.tickers.index(t)] = p.qty * snap.prices[snap.tickers.index(t)]
            return x, snap.cov

        def var(self) -> float:
            x, cov = self.exposures()
            return Z * math.sqrt(max(x @ cov @ x, 0.0)) * math.sqrt(HORIZON)

        # -- rules -------------------------------------------------------------------------------------
        @rule(
            ticker=st.sampled_from(TICKERS), qty=st.integers(1, 4000), side=st.sampled_from(("BUY", "SELL"))
        )
        def trade(self, ticker: str, qty: int, side: str) -> None:
            before = self.store.read_portfolio(portfolio_id)
            var_before = self.var()
            x_before, _ = self.exposures()
            i = TICKERS.index(ticker)
            q0 = before.positions[ticker].qty if ticker in before.positions else 0

            result = self.rm.execute_trade(ticker, qty, side)

            after = self.store.read_portfolio(portfolio_id)
            event(result["status"] + " " + ",".join(sorted(r["code"] for r in result["reasons"])))
            if result["status"] != "FILLED":
                assert result["reasons"] and result["fill"] is None
                assert (after.cash, dict(after.positions)) == (before.cash, dict(before.positions))
                return
            self.fills += 1
            fill = result["fill"]
            fee = Decimal(fill["fees"])
            self.expected_equity -= fee
            price = self.prices()[ticker]
            assert Decimal(fill["price"]) == price
            q1 = q0 + (qty if side == "BUY" else -qty)
            assert (after.positions[ticker].qty if ticker in after.positions else 0) == q1
            # every limit held
            assert self.state != "HALTED"
            shrinks = abs(q1) < abs(q0) and q0 * q1 >= 0  # risk-reducing: no limit refuses it (issue 12)
            var_after = self.var()
            if self.state == "REDUCING":  # or a hedge that lowers VaR (limits.reducing_allows_hedges)
                assert shrinks or var_after < var_before * (1 + SLACK)
            assert price * qty <= LIMITS.max_order_notional
            assert qty <= LIMITS.max_order_qty
            if before.account_type == "cash":
                assert after.cash >= 0 and q1 >= 0
            assert (
                var_after <= float(LIMITS.var_limit) * (1 + SLACK)
                or var_after <= var_before * (1 + SLACK)
                or shrinks
            )
            x_after, _ = self.exposures()
            equity_after = float(self.equity())
            if abs(q1) > abs(q0):
                assert equity_after > 0
                assert abs(x_after[i]) / equity_after <= LIMITS.max_concentration * (1 + SLACK)
            if before.account_type == "margin":
                gross_before, gross_after = np.abs(x_before).sum(), np.abs(x_after).sum()
                assert gross_after * before.initial_margin <= equity_after * (
                    1 + SLACK
                ) or gross_after <= gross_before * (1 + SLACK)

        @rule(ticker=st.sampled_from(TICKERS), move=st.integers(-400, 400))
        def tick(self, ticker: str, move: int) -> None:
            """A new bar: the price moves by ``move`` basis points, rounded to the cent."""
            snap = self.store.read_market()
            held = self.store.read_portfolio(portfolio_id).positions
            i = snap.tickers.index(ticker)
            old = Decimal(repr(float(snap.prices[i])))
            new = (old * (1 + Decimal(move) / 10_000)).quantize(Decimal("0.01"))
            if new <= 0:
                return
            prices = snap.prices.copy()
            prices[i] = float(new)
            self.store.write_market(
                MarketSnapshot(
                    version=snap.version + 1,
                    ts=NOW,
                    tickers=snap.tickers,
                    prices=prices,
                    price_ts=snap.price_ts,
                    cov=snap.cov,
                )
            )
            qty = held[ticker].qty if ticker in held else 0
            self.expected_equity += qty * (Decimal(repr(float(new))) - old)

        @rule(state=st.sampled_from(("ACTIVE", "ACTIVE", "REDUCING", "HALTED")))
        def switch_state(self, state: str) -> None:
            self.rm.set_trading_state(state, "hypothesis", "tester")
            self.state = state

        # -- invariants --------------------------------------------------------------------------------
        @invariant()
        def equity_changes_only_by_fees_and_price_moves(self) -> None:
            assert self.equity() == self.expected_equity

        @invariant()
        def books_match_the_trade_log(self) -> None:
            fills = [r for r in self.rm.trade_log(10_000) if r["status"] == "FILLED"]
            assert len(fills) == self.fills
            state = self.store.read_portfolio(portfolio_id)
            assert state.fees_paid == sum((Decimal(r["fill"]["fees"]) for r in fills), Decimal(0))

    return TradingMachine


_HYPOTHESIS = hsettings(
    max_examples=20,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def test_random_trading_on_a_cash_account_conserves_value_and_respects_every_limit(
    redis_client: redis.Redis,
) -> None:
    run_state_machine_as_test(machine_for(redis_client, "main"), settings=_HYPOTHESIS)


def test_random_trading_on_a_margin_account_conserves_value_and_respects_every_limit(
    redis_client: redis.Redis,
) -> None:
    run_state_machine_as_test(machine_for(redis_client, "hedge"), settings=_HYPOTHESIS)
