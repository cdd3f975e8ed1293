"""Pre-trade gate and execution latency, end to end through a real Redis, beside a naive check.

Rows:

- ``check_trade_impact`` p50 and p99 at N = 50 and N = 500 assets (portfolio holding every asset), including
  the Redis round trip, against a naive check measured in the same run: read the whole snapshot (matrix
  included) and the portfolio, then compute VaR before and after the trade with two full O(N²) VaR calls. The
  naive check
  is measured twice: with math_logic's defaults (each VaR call validates the matrix, O(N³): what a naive
  caller gets) and with ``validate=False`` (the fairest possible naive check).
- ``execute_trade`` p50 and p99 at N = 500 (WATCH, one-round-trip read, re-check, MULTI/EXEC of the fill).

The gate and the baselines are timed in interleaved blocks, so load from other processes hits all of them.

SPEC.md section 9: check_trade_impact p99 <= 0.5 ms at N = 500 and >= 10x faster than the naive check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.common import Context, Row, pct_us, seeded_store, synthetic_assets, time_calls
from engine import math_logic
from engine.settings import Settings, settings_from_dict
from engine.store import Store
from logic.risk_manager import RiskManager
from logic.valuation import value_portfolio

PORTFOLIO = "bench"
SIZES = (50, 500)
REPEAT = 2000
NAIVE_REPEAT = {50: 300, 500: 100}
BLOCKS = 5


def bench_settings(n: int, seed: int = 7) -> Settings:
    """N assets, one cash portfolio holding all of them, limits wide enough that the checked trade passes."""
    rng = np.random.default_rng(seed)
    assets = synthetic_assets(n, rng)
    holdings = {t: int(rng.integers(10, 500)) for t in assets}
    return settings_from_dict(
        {
            "universe": {"correlation": 0.3, "assets": assets},
            "limits": {
                "var_limit": 1e12,
                "max_concentration": 1.0,
                "max_order_notional": 1e12,
                "stale_price_seconds": 86_400.0,  # the gate runs on a fixed clock: no price ages
                "max_orders_per_minute": 100_000,  # the most the settings take (engine/settings.py)
            },
            "portfolios": [{"id": PORTFOLIO, "cash": "100000000", "holdings": holdings}],
        }
    )


def naive_check(store: Store, settings: Settings, ticker: str, qty: int, validate: bool) -> float:
    """What a first version does: reload everything, two full VaR computations."""
    snap = store.read_market()
    portfolio = store.read_portfolio(PORTFOLIO)
    store.read_trading_state(PORTFOLIO)
    valuation = value_portfolio(portfolio, snap)
    limits = settings.limits_for(PORTFOLIO)
    horizon = settings.model.bars_per_day * limits.var_horizon_days
    x = np.array(valuation.market_values)
    before, _ = math_logic.get_portfolio_var(
        x, snap.cov, 1.0, limits.var_confidence, horizon, validate=validate
    )
    i = snap.tickers.index(ticker)
    x[i] += qty * snap.prices[i]
    after, _ = math_logic.get_portfolio_var(
        x, snap.cov, 1.0, limits.var_confidence, horizon, validate=validate
    )
    return after - before


def _cycle(fn: Callable[[int], Any]) -> Callable[[], Any]:
    state = {"i": 0}

    def call() -> Any:
        state["i"] += 1
        return fn(state["i"])

    return call


def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    for n in SIZES:
        settings = bench_settings(n)
        now = time.time()
        store = seeded_store(ctx, settings, now=now)
        rm = RiskManager(store.client, PORTFOLIO, settings, clock=lambda now=now: now)
        tickers = list(settings.universe.assets)

        def check(k: int, rm: RiskManager = rm, tickers: list[str] = tickers) -> Any:
            decision = rm.check_trade_impact(tickers[k % len(tickers)], 10, "BUY")
            assert decision["status"] == "APPROVED", decision["reasons"]
            return decision

        def naive(
            validate: bool, settings: Settings = settings, t: list[str] = tickers, store: Store = store
        ) -> Callable[[], Any]:
            return _cycle(lambda i: naive_check(store, settings, t[i % len(t)], 10, validate))

        # interleaved blocks: the gate and both baselines see the same (shared, noisy) machine
        fast_calls, naive_calls, fair_calls = _cycle(check), naive(True), naive(False)
        blocks: dict[str, list[np.ndarray]] = {"fast": [], "naive": [], "fair": []}
        for block in range(BLOCKS):
            warm = 200 if block == 0 else 20
            blocks["fast"].append(time_calls(fast_calls, repeat=REPEAT // BLOCKS, warmup=warm))
            blocks["naive"].append(time_calls(naive_calls, repeat=NAIVE_REPEAT[n] // BLOCKS, warmup=2))
            blocks["fair"].append(time_calls(fair_calls, repeat=NAIVE_REPEAT[n] // BLOCKS, warmup=2))
        fast, slow, fair = (np.concatenate(blocks[name]) for name in ("fast", "naive", "fair"))
        p50, p99 = pct_us(fast, 50), pct_us(fast, 99)
        at_target = n == 500
        naive_p50, fair_p50, naive_p99 = pct_us(slow, 50), pct_us(fair, 50), pct_us(slow, 99)
        rows += [
            Row(f"check_trade_impact p50, N={n}", p50, "us", "naive p50 (library defaults: validates Σ)",
                naive_p50, ">= 10x naive" if at_target else "", naive_p50 / p50 >= 10 if at_target else None),
            Row(f"check_trade_impact p50, N={n}", p50, "us", "naive p50, validate=False", fair_p50),
            Row(f"check_trade_impact p99, N={n}", p99, "us", "naive p99 (library defaults)", naive_p99,
                "<= 500 us" if at_target else "", p99 <= 500 if at_target else None),
        ]  # fmt: skip

        if n == 500:

            def execute(k: int, rm: RiskManager = rm) -> Any:
                result = rm.execute_trade("T0001", 1, "BUY" if k % 2 else "SELL")
                assert result["status"] == "FILLED", result["reasons"]
                return result

            ex = time_calls(_cycle(execute), repeat=1000, warmup=50)
            rows.append(Row(f"execute_trade p50, N={n}", pct_us(ex, 50), "us"))
            rows.append(Row(f"execute_trade p99, N={n}", pct_us(ex, 99), "us"))
    ctx.redis().flushall()
    return rows
