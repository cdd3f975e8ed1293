"""Stream daemon: one bar (validation of every price in one numpy pass, log returns, EWMA update in place, and
one round trip: the script that checks the stored version and writes prices + matrix + version + tick event +
heartbeat, engine/store/market_write.py) at N = 50 and 500, through a real Redis and the daemons' client.

Baseline in the same run: the naive daemon bar, allocating a new matrix per tick with numpy
(``λΣ + (1-λ)·outer(r, r)``) and the same MULTI write, without the version check.

SPEC.md section 9: daemon tick (update + atomic write) <= 5 ms at N = 500. A diagnostic row measures the same
bar with the Redis AOF switched off, to separate the daemon's own cost from the server's persistence of the
matrix per bar (its packed upper triangle, 1 MB at N = 500).

Then 10,000 bars at N = 500 through the same daemon on a private server of its own, and the size of its
append-only file(s) afterwards (Redis 6: one file; Redis 7: the append directory), beside what the AOF would hold
with no rewrite policy (every bar's matrix kept). That row takes minutes: ``BENCH_STREAM_AOF=0`` skips it
(while iterating on the bar itself); ``make bench`` runs it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import warmup
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
from engine.redis_server import AOF_REWRITE_MIN_SIZE, AOF_REWRITE_PERCENTAGE, EmbeddedRedis, aof_files, connect
from engine.settings import Settings, settings_from_dict
from engine.store import MARKET_KEY, MarketSnapshot, Store, TickEvent, encode_json
from engine.stream import StreamDaemon

SIZES = (50, 500)
REPEAT = 300
TARGET_US = {500: 5000.0}
AOF_BARS = 10_000
AOF_N = 500


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
        seeded_store(ctx, settings)
        store = Store(connect(ctx.redis_url))  # the client the daemons use (engine.redis_server.connect)
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
    if os.environ.get("BENCH_STREAM_AOF", "1") != "0":
        rows.append(aof_row(AOF_N, AOF_BARS))
    return rows


def aof_row(n: int, bars: int) -> Row:
    """``bars`` bars through the real store path on a private server, then the size of its AOF file(s)."""
    settings = bench_settings(n)
    tmp = Path(tempfile.mkdtemp(prefix="rda-"))
    server = EmbeddedRedis(tmp)
    server.start()
    try:
        client = connect(server.url)
        store = Store(client)
        warmup.seed(store, settings)
        daemon = StreamDaemon(store, settings, iter(()), interval=0)  # type: ignore[arg-type]
        feed = _bars(settings)
        written = 0
        for _ in range(bars):
            written += bool(daemon.process_bar(next(feed)))
        per_bar = len(client.hget(MARKET_KEY, "cov") or b"")
        while client.info("persistence").get("aof_rewrite_in_progress"):
            time.sleep(0.05)  # a rewrite under way: measure what it leaves
        folder = client.config_get("appenddirname").get("appenddirname")  # Redis 7; absent on 6.2
        size = sum(p.stat().st_size for p in aof_files(tmp, folder))
        version = client.info("server").get("redis_version", "?")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    unbounded = bars * 8 * n * n
    return Row(
        f"AOF size after {written:,} bars, N={n} (redis {version}, rewrite at +{AOF_REWRITE_PERCENTAGE}% "
        f"and >= {AOF_REWRITE_MIN_SIZE}; {per_bar / 1e6:.2f} MB matrix per bar)",
        size / 1e6,
        "MB",
        f"no rewrite, full matrix every bar ({bars:,} x 8N^2)",
        unbounded / 1e6,
    )
