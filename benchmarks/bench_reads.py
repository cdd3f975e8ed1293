"""The monitor's reads at the start of a tick, 1,000 portfolios of 20 positions (N = 500), through a real Redis.

- Every portfolio's book: :class:`engine.store.PortfolioReader` (Redis reports the books written since the last
  read, engine/store/tracking.py, and one Lua script reads those only; a book whose bytes did not change is
  neither sent back nor decoded again) beside the plain :meth:`Store.read_portfolio_bundles` (one MULTI of
  three HGETALLs per portfolio, every book decoded), timed in alternation in the same run. Two rows: nothing
  written between reads, and ten fills (new positions) between reads, as on a trading desk's tick.
- Every portfolio's live limits: ``logic.batch.read_limits`` (only the records written since the last read are
  read, by one script; only a changed record is sent) beside the per-portfolio reads
  (``live_limits(batched=False)``, one round trip each).

No SPEC.md target of their own: they are parts of the monitor tick (bench_monitor.py, issue 15: <= 250 ms).
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np

from benchmarks.bench_monitor import bench_settings
from benchmarks.common import Context, Row, median_us, seeded_store, time_interleaved
from engine.records import Position
from engine.store import PortfolioReader, Store
from logic.batch import PortfolioLookup, live_limits, read_limits

PORTFOLIOS = 1000
FILLS_PER_TICK = 10
REPEAT = 30
WARMUP = 3


def _fill_some(store: Store, ids: list[str], rng: np.random.Generator) -> None:
    """``FILLS_PER_TICK`` books get a new position (each write renews its positions_rev), as fills would."""
    for pid in rng.choice(ids, size=FILLS_PER_TICK, replace=False):
        qty = int(rng.integers(1, 500))
        store.write_position(str(pid), "T0000", Position(qty, Decimal("100.25")))


def run(ctx: Context) -> list[Row]:
    settings = bench_settings(PORTFOLIOS)
    store = seeded_store(ctx, settings)
    ids = store.portfolio_ids()
    rows: list[Row] = []
    label = f"read every book, {PORTFOLIOS} portfolios x 20 positions (N=500)"
    baseline = "one MULTI of 3 HGETALLs per portfolio, all decoded (same run)"

    reader = PortfolioReader()
    fast, slow = time_interleaved(
        lambda: store.read_portfolio_bundles(ids, reader=reader),
        lambda: store.read_portfolio_bundles(ids),
        repeat=REPEAT,
        warmup=WARMUP,
    )
    rows.append(Row(f"{label}, no book changed p50", median_us(fast), "us", baseline, median_us(slow)))

    rng = np.random.default_rng(3)
    fast_samples, slow_samples = [], []
    for i in range(REPEAT + WARMUP):
        _fill_some(store, ids, rng)
        a, b = time_interleaved(
            lambda: store.read_portfolio_bundles(ids, reader=reader),
            lambda: store.read_portfolio_bundles(ids),
            repeat=1,
            warmup=0,
        )
        if i >= WARMUP:
            fast_samples.append(a[0])
            slow_samples.append(b[0])
    rows.append(Row(f"{label}, {FILLS_PER_TICK} books filled between reads p50", median_us(np.array(fast_samples)),
                    "us", baseline, median_us(np.array(slow_samples))))  # fmt: skip

    lookup = PortfolioLookup(settings)
    for pid in ids:  # every portfolio with live limits (as a desk that edits them has)
        store.seed_limits(pid, lookup.limits_for(pid), actor="bench", now=0.0)
    memo: dict[object, object] = {}
    fast, slow = time_interleaved(
        lambda: read_limits(store, ids, lookup, memo),
        lambda: live_limits(store, ids, lookup, {}, batched=False),
        repeat=REPEAT,
        warmup=WARMUP,
    )
    rows.append(Row(f"read every portfolio's live limits, {PORTFOLIOS} portfolios p50", median_us(fast), "us",
                    "one round trip per portfolio (same run)", median_us(slow)))  # fmt: skip
    ctx.redis().flushall()
    return rows
