"""Replay throughput: bars per second of a CSV replay through the stream daemon (price filter, EWMA update,
atomic write) and the monitor (every portfolio's snapshot), at N = 50 and 500 tickers, on a real Redis.

Each bar is written by the daemon and then consumed by the monitor before the next (what ``--interval 0``
gives when the monitor keeps up), so the figure is the end-to-end rate at which history can be replayed.
The file (minute bars, so one row is one model bar) is parsed before the clock starts.

Baseline in the same run: the same daemon and monitor on the simulated feed (same N, same portfolios, same
number of bars): the replay should cost no more than live bars.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Context, Row, seeded_store, synthetic_assets, synthetic_books
from engine.feeds import ReplayFeed, SimulatedFeed
from engine.settings import Settings, settings_from_dict
from engine.store import Store
from engine.stream import StreamDaemon
from logic.monitor import Monitor

SIZES = (50, 500)
BARS = {50: 300, 500: 60}
PORTFOLIOS = 4
POSITIONS = 10


def bench_settings(n: int, seed: int = 7) -> Settings:
    rng = np.random.default_rng(seed)
    assets = synthetic_assets(n, rng)
    tickers = list(assets)
    books = synthetic_books(tickers, PORTFOLIOS, POSITIONS, rng)
    return settings_from_dict({
        "universe": {"correlation": 0.3, "assets": assets}, "portfolios": books,
        "model": {"demo_clock_seconds": 0.0},
    })  # fmt: skip


def write_replay(path: Path, settings: Settings, bars: int) -> Path:
    """``bars`` minute bars of the simulated feed's paths as a wide CSV (epoch seconds, 60 s apart)."""
    tickers = list(settings.universe.assets)
    feed = iter(SimulatedFeed.from_settings(settings, seed=3))
    lines = ["date," + ",".join(tickers)]
    for i in range(bars):
        bar = next(feed)
        lines.append(f"{1_700_000_000 + 60 * i}," + ",".join(f"{bar.prices[t]:.6f}" for t in tickers))
    path.write_text("\n".join(lines) + "\n")
    return path


def bars_per_second(store: Store, settings: Settings, feed: object, bars: int) -> float:
    daemon = StreamDaemon(store, settings, feed, interval=0)  # type: ignore[arg-type]
    monitor = Monitor(store, settings, consumer="bench", idle_refresh_seconds=0)
    monitor.process_available()
    it = iter(feed)  # type: ignore[call-overload]
    started = time.perf_counter()
    for _ in range(bars):
        daemon.process_bar(next(it))
        monitor.process_available()
    return bars / (time.perf_counter() - started)


def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    tmp = tempfile.TemporaryDirectory(prefix="rdreplay-")
    for n in SIZES:
        settings = bench_settings(n)
        path = write_replay(Path(tmp.name) / f"replay_{n}.csv", settings, BARS[n])
        store = seeded_store(ctx, settings)
        replay = bars_per_second(store, settings, ReplayFeed(path, universe=settings.universe.assets), BARS[n])
        store = seeded_store(ctx, settings)
        live = bars_per_second(store, settings, SimulatedFeed.from_settings(settings, seed=3), BARS[n])
        rows.append(Row(
            f"replay throughput, stream + monitor ({PORTFOLIOS} portfolios), N={n}", replay, "bars/s",
            "simulated feed, same daemons", live,
        ))  # fmt: skip
    ctx.redis().flushall()
    tmp.cleanup()
    return rows
