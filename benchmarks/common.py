"""Shared pieces of the benchmarks: timing, the result row, the table, a throwaway Redis."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np
import redis

from engine.redis_server import EmbeddedRedis, connect
from engine.settings import Settings
from engine.store import Store

BENCH_SOCKET_TIMEOUT_SECONDS = 300.0
"""Read timeout of the benchmarks' Redis clients (redis-py's default is 5 s)."""


@dataclass(frozen=True)
class Row:
    what: str
    figure: float
    """Measured value in ``unit``."""
    unit: str
    baseline: str = ""
    """What the baseline is (measured in the same run), empty when there is none."""
    baseline_figure: float | None = None
    target: str = ""
    """The SPEC.md target, in words, e.g. '<= 100 us'."""
    met: bool | None = None


@dataclass
class Context:
    """Lazily starts one private redis-server for the benchmarks that need one."""

    _server: EmbeddedRedis | None = None
    _tmp: Path | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def redis(self) -> redis.Redis:
        if self._server is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="rdb-"))
            self._server = EmbeddedRedis(self._tmp)
            self._server.start()
        # a generous timeout: the first tick of 1,000 portfolios allocates every history ring (GBs) in one MULTI
        # the daemons' client (engine.redis_server.connect: its packer among the rest)
        client = connect(self._server.url, timeout=BENCH_SOCKET_TIMEOUT_SECONDS)
        return client

    @property
    def redis_url(self) -> str:
        self.redis()
        assert self._server is not None
        return self._server.url

    @property
    def redis_pid(self) -> int | None:
        """The private redis-server's process id (None before it started)."""
        return None if self._server is None else self._server.pid()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._server is not None:
            self._server.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


def synthetic_assets(n: int, rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """``n`` tickers T0000... with random prices (20-400) and annual vols (15-50%), as a settings table."""
    return {
        f"T{i:04d}": {"price": float(rng.uniform(20, 400)), "annual_vol": float(rng.uniform(0.15, 0.5))}
        for i in range(n)
    }


def synthetic_books(
    tickers: list[str],
    count: int,
    positions: int,
    rng: np.random.Generator,
    *,
    id_width: int = 0,
    margin_every_other: bool = False,
) -> list[dict[str, object]]:
    """``count`` portfolio tables of ``positions`` random holdings each (100-2000 shares), 10M cash; ids
    ``p{k}`` zero-padded to ``id_width``; every other one a margin account with ``margin_every_other``."""
    books: list[dict[str, object]] = []
    for k in range(count):
        held = rng.choice(len(tickers), size=positions, replace=False)
        books.append({
            "id": f"p{k:0{id_width}d}" if id_width else f"p{k}",
            "account_type": "margin" if margin_every_other and k % 2 else "cash", "cash": "10000000",
            "holdings": {tickers[i]: int(rng.integers(100, 2000)) for i in held},
        })  # fmt: skip
    return books


def time_calls(fn: Callable[[], object], *, repeat: int = 200, warmup: int = 20) -> np.ndarray:
    """Seconds per call of ``fn``, one sample per call, after ``warmup`` discarded calls."""
    for _ in range(warmup):
        fn()
    samples = np.empty(repeat)
    for i in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples[i] = time.perf_counter() - t0
    return samples


def time_interleaved(
    first: Callable[[], object], second: Callable[[], object], *, repeat: int = 200, warmup: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Seconds per call of two functions timed in alternation, so both see the same load on a shared machine."""
    for _ in range(warmup):
        first()
        second()
    a, b = np.empty(repeat), np.empty(repeat)
    for i in range(repeat):
        t0 = time.perf_counter()
        first()
        t1 = time.perf_counter()
        second()
        a[i], b[i] = t1 - t0, time.perf_counter() - t1
    return a, b


def seeded_store(ctx: Context, settings: Settings, now: float | None = None) -> Store:
    """An empty private Redis seeded by the warm-up with ``settings``: the starting point of every benchmark."""
    import warmup  # lazily: warm-up imports the whole engine

    client = ctx.redis()
    client.flushall()
    store = Store(client)
    warmup.seed(store, settings, now=now)
    return store


def target_row(what: str, fast: np.ndarray, baseline: str, slow: np.ndarray, target_us: float | None) -> Row:
    """The p50 row of a figure beside its baseline's p50, with SPEC.md's target in microseconds when it has one."""
    figure = median_us(fast)
    if target_us is None:
        return Row(what, figure, "us", baseline, median_us(slow))
    target = f"<= {target_us / 1000:.0f} ms" if target_us >= 1000 else f"<= {target_us:.0f} us"
    return Row(what, figure, "us", baseline, median_us(slow), target, figure <= target_us)


def median_us(samples: np.ndarray) -> float:
    return float(np.median(samples) * 1e6)


def pct_us(samples: np.ndarray, q: float) -> float:
    return float(np.percentile(samples, q) * 1e6)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "us" and value >= 1000:
        return f"{value / 1000:.2f} ms"
    return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"


def print_table(rows: list[Row]) -> None:
    header = ("what", "measured", "baseline (same run)", "baseline", "ratio", "target", "met")
    lines = []
    for r in rows:
        ratio = "-"
        if r.baseline_figure:
            ratio = f"{r.baseline_figure / r.figure:.1f}x" if r.figure else "-"
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        lines.append((r.what, _fmt(r.figure, r.unit), r.baseline or "-", _fmt(r.baseline_figure, r.unit),
                      ratio, r.target or "-", met))  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=True)]
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print(sep)
    for line in lines:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
    print(
        f"\nratio = baseline / measured (higher is better). Machine: {os.cpu_count()} cores; figures are medians "
        "or percentiles of repeated calls."
    )
