"""Bounded history: Redis memory per portfolio after a simulated week, and the cost of one snapshot write.

Measured: a week of data time at one point a second (604,800 writes through ``Store.record_snapshot`` on
pipelines, the injected times of a replay, the default ``[history]``: every point for 5 minutes, tiers 1 s / 1 h,
10 s / 1 day, 1 min / 7 days, 15 min / 90 days), then MEMORY USAGE of every key of the portfolio.

Baseline in the same run: today's format before issue 15 (one stream entry per point, every metric a text field
of 15 significant digits, trimmed to 7 days and 700,000 points), written for one hour of points and scaled to
the week by its measured bytes per point (a week of it is about 330 MB: too much for this shared machine).

Issue 15: the whole default retention in at most 5 MB per portfolio. ``HISTORY_BENCH_SECONDS`` shortens the
simulated span (the tiers' memory does not depend on it: their rings are allocated whole on the first write).
"""

from __future__ import annotations

import os
import random
import time

import redis

from benchmarks.common import Context, Row
from engine.settings import HistoryConfig
from engine.store import PortfolioKeys, Store, encode_json
from engine.store.history import HISTORY_FIELDS

WEEK = 7 * 86_400
BASELINE_POINTS = 3600
BATCH = 2000
TARGET_BYTES = 5_000_000
T0 = 1_546_300_800.0  # 2019-01-01: data time, far from the wall clock

# today's write before issue 15, kept here as the baseline (engine/store/monitoring.py at 36319e9)
_STREAM_LUA = """
local version = tonumber(ARGV[1])
local current = redis.call('GET', KEYS[1])
local stored = current and tonumber(string.match(current, '"version":(%-?%d+)'))
if not stored or version >= stored then redis.call('SET', KEYS[1], ARGV[2]) end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = ARGV[3] .. '-0'
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], id, unpack(fields))
redis.call('XTRIM', KEYS[2], 'MINID', ARGV[4])
return id
"""


def _point(rng: random.Random, i: int) -> dict[str, float | int | None]:
    """A history point with snapshot-like magnitudes (equity about 10M, VaR about 100k, ratios below 1)."""
    point: dict[str, float | int | None] = {name: rng.uniform(0.0, 1.0) for name in HISTORY_FIELDS}
    for name in ("equity", "cash", "market_value", "gross_exposure", "net_exposure"):
        point[name] = 1e7 * (1 + 0.01 * rng.uniform(-1, 1))
    for name in ("pnl.unrealized", "pnl.realized", "pnl.daily", "pnl.total", "var.var95", "var.var99"):
        point[name] = 1e5 * rng.uniform(-1, 1)
    point["version"], point["margin.level"] = i, None
    return point


def _text(value: float | int | None) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else format(float(value), ".15g")


def _memory(client: redis.Redis, pid: str) -> int:
    return sum(int(client.memory_usage(k) or 0) for k in client.scan_iter(match=f"pf:{{{pid}}}:*", count=1000))


def _write_week(store: Store, history: HistoryConfig, seconds: int) -> float:
    """Seconds per write of ``seconds`` points one second apart."""
    rng = random.Random(7)
    started = time.perf_counter()
    with store.client.pipeline(transaction=False) as pipe:
        for i in range(seconds):
            ts = T0 + i
            store.record_snapshot(
                "bench", {"version": i, "ts": ts}, _point(rng, i), ts=ts, retention_seconds=history.raw_seconds,
                max_points=history.raw_max_points, pipe=pipe, tiers=history.tiers,
            )  # fmt: skip
            if i % BATCH == BATCH - 1:
                pipe.execute()
        pipe.execute()
    return (time.perf_counter() - started) / seconds


def _write_baseline(client: redis.Redis, points: int) -> float:
    rng = random.Random(7)
    keys = PortfolioKeys("base")
    script = client.register_script(_STREAM_LUA)
    started = time.perf_counter()
    with client.pipeline(transaction=False) as pipe:
        for i in range(points):
            ts = T0 + i
            args: list[str | int | float] = [i, encode_json({"version": i, "ts": ts}), int(ts * 1000),
                                  int((ts - WEEK) * 1000), 700_000]  # fmt: skip
            for name, value in {**_point(rng, i), "ts": ts}.items():
                args += [name, _text(value)]
            script(keys=[keys.snapshot, keys.history], args=args, client=pipe)
            if i % BATCH == BATCH - 1:
                pipe.execute()
        pipe.execute()
    return (time.perf_counter() - started) / points


def run(ctx: Context) -> list[Row]:
    client = ctx.redis()
    client.flushall()
    store = Store(client)
    history = HistoryConfig()
    seconds = int(os.environ.get("HISTORY_BENCH_SECONDS", WEEK))
    per_write = _write_week(store, history, seconds)
    tiered = _memory(client, "bench")
    base_per_write = _write_baseline(client, BASELINE_POINTS)
    snapshot_bytes = int(client.memory_usage(PortfolioKeys("base").snapshot) or 0)
    per_point = (_memory(client, "base") - snapshot_bytes) / BASELINE_POINTS
    baseline = snapshot_bytes + per_point * min(WEEK, 700_000)
    span = f"{seconds / 86_400:.3g} days" if seconds != WEEK else "7 days"
    return [
        Row(
            f"history memory per portfolio, {span} at 1 point/s (default tiers)", tiered / 1e6, "MB",
            f"today's stream ({per_point:.0f} B/point x 604,800, from 1 h)", baseline / 1e6,
            "<= 5 MB", tiered <= TARGET_BYTES,
        ),
        Row(
            "snapshot + history write (stream + 4 tiers), pipelined", per_write * 1e6, "us",
            "today's snapshot + stream write, pipelined", base_per_write * 1e6,
        ),
    ]  # fmt: skip


if __name__ == "__main__":  # pragma: no cover - a quick look: python -m benchmarks.bench_history
    from benchmarks.common import print_table

    with Context() as c:
        print_table(run(c))
