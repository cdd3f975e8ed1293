"""Stream daemon: one bar (validation, log returns, EWMA update in place, WATCHed version check and the MULTI
writing prices + matrix + version + tick event + heartbeat) at N = 50 and 500, through a real Redis.

Baseline in the same run: the naive daemon bar, allocating a new matrix per tick with numpy
(``λΣ + (1-λ)·outer(r, r)``) and the same MULTI write, without the version check.

SPEC.md section 9: daemon tick (update + atomic write) <= 5 ms at N = 500. A diagnostic row measures the same
bar with the Redis AOF switched off, to separate the daemon's own cost from the server's persistence of the
2 MB matrix per bar.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from benchmarks.common import (
    Context,
    Row,
    median_us,
    pct_us,
    seeded_store,
    synthetic_assets,
    target_row,
    time_calls,
)
from engine.feeds import Bar, SimulatedFeed
from engine.settings import Settings, settings_from_dict
from engine.store import MarketSnapshot, Store, TickEvent, encode_json
from engine.stream import StreamDaemon

SIZES = (50, 500)
REPEAT = 300
TARGET_US = {500: 5000.0}


def bench_settings(n: int, seed: int = 3) -> Settings:
    rng = np.random.default_rng(seed)
    assets = synthetic_assets(n, rng)
    return settings_from_dict(
        {"universe": {"correlation": 0.3, "assets": assets}, "model": {"demo_clock_seconds": 0.0}}
    )


def _bars(settings: Settings) -> Iterator[Bar]:
    return iter(SimulatedFeed.from_settings(settings, seed=11))


def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    for n in SIZES:
        settings = bench_settings(n)
        store = seeded_store(ctx, settings)
        client = store.client
        daemon = StreamDaemon(store, settings, iter(()), interval=0)  # type: ignore[arg-type]
        bars = _bars(settings)
        fast = time_calls(lambda d=daemon, b=bars: d.process_bar(next(b)), repeat=REPEAT, warmup=20)
        assert store.read_market_version() == daemon.version

        # naive: a new matrix per tick, the same transaction (no WATCH / version check)
        snap = store.read_market()
        state = {"cov": snap.cov, "prices": snap.prices, "version": snap.version}
        tickers_json = encode_json(list(snap.tickers))
        decay = settings.model.ewma_decay
        naive_bars = _bars(settings)

        def naive(
            state: dict = state,
            bars: Iterator[Bar] = naive_bars,
            tickers: tuple = snap.tickers,
            decay: float = decay,
            tickers_json: str = tickers_json,
            store: Store = store,
        ) -> None:
            bar = next(bars)
            prices = np.array([bar.prices[t] for t in tickers])
            r = np.log(prices / state["prices"])
            state["cov"] = decay * state["cov"] + (1 - decay) * np.outer(r, r)
            state["prices"] = prices
            state["version"] += 1
            now = time.time()
            pipe = store.client.pipeline(transaction=True)
            stamps = np.full(len(tickers), now)
            snap_ = MarketSnapshot(state["version"], now, tickers, prices, stamps, state["cov"])
            store.write_market(snap_, pipe)
            store.publish_tick(TickEvent(state["version"], now, tickers, prices), 10_000, pipe,
                               tickers_json=tickers_json)  # fmt: skip
            store.write_heartbeat("stream", {"ts": now, "version": state["version"]}, pipe)
            pipe.execute()

        slow = time_calls(naive, repeat=REPEAT, warmup=20)
        rows.append(target_row(
            f"daemon bar (update + atomic write) p50, N={n}", fast,
            "allocate-per-tick numpy EWMA + same write", slow, TARGET_US.get(n),
        ))  # fmt: skip
        rows.append(Row(
            f"daemon bar p99, N={n}", pct_us(fast, 99), "us", "naive p99", pct_us(slow, 99),
        ))  # fmt: skip
        if n == max(SIZES):
            # where the time goes: the same bar with Redis persistence off (the 8·N² bytes matrix is appended
            # to the AOF on every bar when it is on, the production default)
            client.config_set("appendonly", "no")
            try:
                no_aof = time_calls(lambda d=daemon, b=bars: d.process_bar(next(b)), repeat=REPEAT, warmup=20)
            finally:
                client.config_set("appendonly", "yes")
            rows.append(Row(f"daemon bar p50, N={n}, Redis AOF off (diagnostic)", median_us(no_aof), "us"))
    ctx.redis().flushall()
    return rows
