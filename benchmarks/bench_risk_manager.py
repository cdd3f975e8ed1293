"""Pre-trade gate and execution latency, end to end through a real Redis, beside a naive check.

Rows:

- ``check_trade_impact`` p50 and p99 at N = 50 and N = 500 assets (portfolio holding every asset), including
  the Redis round trip, against a naive check measured in the same run: read the whole snapshot (matrix
  included) and the portfolio, then compute VaR before and after the trade with two full O(N²) VaR calls. The
  naive check
  is measured twice: with math_logic's defaults (each VaR call validates the matrix, O(N³): what a naive
  caller gets) and with ``validate=False`` (the fairest possible naive check).
- ``execute_trade`` p50 and p99 at N = 500 (WATCH, one-round-trip read, re-check, MULTI/EXEC of the fill).

SPEC.md section 9: check_trade_impact p99 <= 0.5 ms at N = 500 and >= 10x faster than the naive check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.common import Context, Row, pct_us, time_calls
from engine import math_logic
from engine.settings import Settings, settings_from_dict
from engine.store import Store
from logic.risk_manager import RiskManager
from logic.valuation import value_portfolio

PORTFOLIO = "bench"
SIZES = (50, 500)
REPEAT = 2000
NAIVE_REPEAT = {50: 300, 500: 100}


def bench_settings(n: int, seed: int = 7) -> Settings:
    """N assets, one cash portfolio holding all of them, limits wide enough that the checked trade passes."""
    rng = np.random.default_rng(seed)
    assets = {
        f"T{i:04d}": {"price": float(rng.uniform(20, 400)), "annual_vol": float(rng.uniform(0.15, 0.5))}
        for i in range(n)
    }
    holdings = {t: int(rng.integers(10, 500)) for t in assets}
    return settings_from_dict(
        {
            "universe": {"correlation": 0.3, "assets": assets},
            "limits": {
                "var_limit": 1e12,
                "max_concentration": 1.0,
                "max_order_notional": 1e12,
                "stale_price_seconds": 1e9,
                "max_orders_per_minute": 10_000_000,
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
    client = ctx.redis()
    store = Store(client)
    rows: list[Row] = []
    for n in SIZES:
        import warmup  # lazily: warm-up imports the whole engine

        client.flushall()
        settings = bench_settings(n)
        now = time.time()
        warmup.seed(store, settings, now=now)
        rm = RiskManager(client, PORTFOLIO, settings, clock=lambda now=now: now)
        tickers = list(settings.universe.assets)

        def check(k: int, rm: RiskManager = rm, tickers: list[str] = tickers) -> Any:
            decision = rm.check_trade_impact(tickers[k % len(tickers)], 10, "BUY")
            assert decision["status"] == "APPROVED", decision["reasons"]
            return decision

        fast = time_calls(_cycle(check), repeat=REPEAT, warmup=200)
        slow = time_calls(
            _cycle(lambda k, s=settings, t=tickers: naive_check(store, s, t[k % len(t)], 10, True)),
            repeat=NAIVE_REPEAT[n],
            warmup=5,
        )
        slow_fair = time_calls(
            _cycle(lambda k, s=settings, t=tickers: naive_check(store, s, t[k % len(t)], 10, False)),
            repeat=NAIVE_REPEAT[n],
            warmup=5,
        )
        target = "p99 <= 500 us, >= 10x naive" if n == 500 else ""
        p99 = pct_us(fast, 99)
        ratio = pct_us(slow, 99) / p99
        rows.append(
            Row(
                f"check_trade_impact p50, N={n}",
                pct_us(fast, 50),
                "us",
                "naive check p50 (defaults: validates Σ)",
                pct_us(slow, 50),
            )
        )
        rows.append(
            Row(
                f"check_trade_impact p99, N={n}",
                p99,
                "us",
                "naive check p99 (defaults: validates Σ)",
                pct_us(slow, 99),
                target,
                (p99 <= 500 and ratio >= 10) if n == 500 else None,
            )
        )
        rows.append(
            Row(
                f"check_trade_impact p99, N={n}",
                p99,
                "us",
                "naive check p99, validate=False",
                pct_us(slow_fair, 99),
            )
        )

        if n == 500:

            def execute(k: int, rm: RiskManager = rm) -> Any:
                result = rm.execute_trade("T0001", 1, "BUY" if k % 2 else "SELL")
                assert result["status"] == "FILLED", result["reasons"]
                return result

            ex = time_calls(_cycle(execute), repeat=1000, warmup=50)
            rows.append(Row(f"execute_trade p50, N={n}", pct_us(ex, 50), "us"))
            rows.append(Row(f"execute_trade p99, N={n}", pct_us(ex, 99), "us"))
    client.flushall()
    return rows
