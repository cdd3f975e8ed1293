"""The equity band of the history (engine/store/history.py ``equity_low`` / ``equity_high``): a fall that recovers
inside one bucket of a downsampled tier stays in the Performance page's maximum drawdown (logic/performance.py),
on both monitor paths; the band merges exactly at a bucket boundary; rings written before the band still read,
and are converted, not lost, by the next write."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.feeds import Bar, IterableFeed
from engine.settings import HistoryTier, Settings
from engine.store import PortfolioKeys, Store
from engine.store.history import (
    LEGACY_TIER_LAYOUT,
    RAW_LAYOUT,
    TIER_LAYOUT,
    legacy_tier_bytes,
    merge_buckets,
    tier_bytes,
    tier_resolution_ms,
)
from engine.stream import StreamDaemon
from logic import performance
from logic.monitor import Monitor
from logic.views import Desk, performance_view
from logic.views.overview import history_frame

WEDNESDAY = datetime(2024, 3, 6, 15, 0, tzinfo=UTC).timestamp()  # 10:00 New York, in session
PRICES = {"AAA": 100.0, "BBB": 50.0, "CCC": 200.0, "DDD": 25.0}
T0 = 1_700_006_400.0  # a multiple of every resolution used here


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _tick(store: Store, settings: Settings, clock: Clock, prices: Mapping[str, float], monitor: Monitor) -> None:
    StreamDaemon(store, settings, IterableFeed([Bar(clock.t, dict(prices))]), clock=clock, interval=0).run()
    monitor.process_available()


def _crash_run(store: Store, settings: Settings, vectorised: bool) -> Clock:
    """A tick every 20 s for 40 minutes; at 20 min 20 s, for one tick, AAA and BBB 30% down."""
    clock = Clock(WEDNESDAY)
    monitor = Monitor(store, settings, clock=clock, vectorised=vectorised)
    for k in range(120):
        clock.t = WEDNESDAY + 20 * k
        prices = dict(PRICES, AAA=70.0, BBB=35.0) if k == 61 else PRICES
        _tick(store, settings, clock, prices, monitor)
    return clock


@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "per-portfolio"])
def test_a_crash_inside_one_bucket_is_the_max_drawdown_of_a_downsampled_window(
    seeded_store: Store, settings: Settings, vectorised: bool
) -> None:
    # Arrange: the crash, written by the real monitor (either path)
    clock = _crash_run(seeded_store, settings, vectorised)
    desk = Desk(seeded_store.client, settings, clock=clock)
    snapshot = seeded_store.read_snapshot("main")
    assert snapshot is not None
    true_mdd = snapshot["drawdown"]["max"]
    assert true_mdd == pytest.approx(-0.05, rel=1e-12)

    # Act: the 1-day window (read from the 1-minute tier) and the 30-minute one (every point)
    day = performance_view(desk, "main", 86_400.0)
    raw = performance_view(desk, "main", 1_800.0)
    buckets = history_frame(desk, "main", 86_400.0)

    # Assert: the drawdown is the true one; the buckets' last equity hides the crash, their lows keep it
    assert day.stats.max_drawdown.value == pytest.approx(true_mdd, rel=1e-12, abs=0.0)
    assert raw.stats.max_drawdown.value == pytest.approx(true_mdd, rel=1e-12, abs=0.0)
    assert len(buckets) == 40 and buckets["equity"].min() == 1_200_000.0
    assert buckets["equity_low"].min() == 1_140_000.0
    assert (buckets["equity_high"] >= buckets["equity"]).all() and (buckets["equity_low"] <= buckets["equity"]).all()
    assert day.stats.calmar.value is not None  # divided by that drawdown (no annual growth over the window: 0)


def test_the_band_merges_exactly_at_a_bucket_boundary(store: Store) -> None:
    # Arrange: 10-second buckets; the last point exactly at the boundary belongs to the next bucket
    tier = HistoryTier(10.0, 600.0)
    points = [(T0 + 1.0, 100.0), (T0 + 4.0, 80.0), (T0 + 9.0, 120.0), (T0 + 9.999, 90.0), (T0 + 10.0, 50.0)]

    # Act
    for version, (ts, equity) in enumerate(points):
        store.record_snapshot("main", {"version": version}, {"version": version, "equity": equity}, ts=ts,
                              retention_seconds=300.0, max_points=3000, tiers=(tier,))  # fmt: skip
    got = store.read_history_tier("main", tier)
    raw = store.read_history("main")

    # Assert: the first bucket's last / low / high, the second one only the boundary point (raw: its own equity)
    assert [(p["equity"], p["equity_low"], p["equity_high"]) for p in got] == [(90.0, 80.0, 120.0), (50.0,) * 3]
    assert [(p["equity_low"], p["equity_high"]) for p in raw] == [(e, e) for _, e in points]
    # the reader's merge of buckets (a long window) keeps them the same way, the boundary row in the next bucket
    fine = np.zeros(len(points), dtype=TIER_LAYOUT.dtype)
    fine["ts"] = [ts for ts, _ in points]
    for name in ("equity", "equity_low", "equity_high"):
        fine[name] = [e for _, e in points]
    merged = merge_buckets(fine, 10_000)
    assert merged[["equity", "equity_low", "equity_high"]].tolist() == [(90.0, 80.0, 120.0), (50.0, 50.0, 50.0)]


def _to_legacy(store: Store, pid: str, tier: HistoryTier) -> bytes:
    """Rewrite a tier's ring as it was stored before the band (its rows without the two columns)."""
    key = PortfolioKeys(pid).history_tier(tier_resolution_ms(tier))
    blob = store.client.get(key)
    assert blob is not None and len(blob) == tier_bytes(tier)
    rows = np.frombuffer(blob[16:], dtype=TIER_LAYOUT.dtype)
    legacy = np.zeros(len(rows), dtype=LEGACY_TIER_LAYOUT.dtype)
    for name in LEGACY_TIER_LAYOUT.names:
        legacy[name] = rows[name]
    old = blob[:16] + legacy.tobytes()
    assert len(old) == legacy_tier_bytes(tier)
    store.client.set(key, old)
    return old


@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "per-portfolio"])
def test_a_ring_written_before_the_band_reads_and_the_next_write_converts_it(
    seeded_store: Store, settings: Settings, vectorised: bool
) -> None:
    # Arrange: ten ticks, then every ring rewritten in the layout before the band
    clock = Clock(WEDNESDAY)
    monitor = Monitor(seeded_store, settings, clock=clock, vectorised=vectorised)
    for k in range(10):
        clock.t = WEDNESDAY + 20 * k
        _tick(seeded_store, settings, clock, PRICES, monitor)
    tiers = settings.history.tiers
    before = {t: seeded_store.read_tier_rows("main", t) for t in tiers}
    for tier in tiers:
        _to_legacy(seeded_store, "main", tier)

    # Act / Assert: read as it is (the band is each bucket's equity, all such a row knows)
    for tier in tiers:
        rows = seeded_store.read_tier_rows("main", tier)
        assert rows.tobytes() == before[tier].tobytes()  # the band was the equity: one equity a bucket here
        np.testing.assert_array_equal(rows["equity_low"], rows["equity"])

    # Act: a fresh monitor (it loads the rings) writes the next tick
    clock.t = WEDNESDAY + 200.0
    _tick(seeded_store, settings, clock, dict(PRICES, AAA=90.0),
          Monitor(seeded_store, settings, clock=clock, vectorised=vectorised))  # fmt: skip

    # Assert: every ring converted in place (the buckets before the tick kept), the new bucket's band merged
    snapshot = seeded_store.read_snapshot("main")
    assert snapshot is not None and snapshot["ts"] == WEDNESDAY + 200.0
    equity = snapshot["equity"]
    for tier in tiers:
        key = PortfolioKeys("main").history_tier(tier_resolution_ms(tier))
        assert seeded_store.client.strlen(key) == tier_bytes(tier)
        rows, old = seeded_store.read_tier_rows("main", tier), before[tier]
        res = tier_resolution_ms(tier)
        bucket = int((WEDNESDAY + 200.0) * 1000) // res
        untouched = old[np.floor(np.floor(old["ts"] * 1000) / res) != bucket]
        assert rows[: len(untouched)].tobytes() == untouched.tobytes()
        (newest,) = rows[len(untouched) :]
        opened = old[np.floor(np.floor(old["ts"] * 1000) / res) == bucket]
        lows, highs = [equity, *opened["equity_low"].tolist()], [equity, *opened["equity_high"].tolist()]
        assert (newest["ts"], newest["equity"]) == (WEDNESDAY + 200.0, equity)
        assert (newest["equity_low"], newest["equity_high"]) == (min(lows), max(highs))


def test_the_stream_rows_keep_their_layout_and_read_with_the_band(store: Store) -> None:
    # a full-resolution point stores the 26 columns it always stored (the stream of an older store reads as is)
    assert len(RAW_LAYOUT.names) == 26 and RAW_LAYOUT.size == 208
    assert "equity_low" not in RAW_LAYOUT.names and "equity_low" in TIER_LAYOUT.names
    store.record_snapshot("main", {"version": 1}, {"version": 1, "equity": 1.0 / 3.0, "pnl.daily": 0.1}, ts=T0,
                          retention_seconds=300.0, max_points=3000)  # fmt: skip
    (point,) = store.read_history("main")
    assert point["equity_low"] == point["equity_high"] == point["equity"] == 1.0 / 3.0
    assert point["pnl.daily"] == 0.1  # float64 as written, not rounded


def test_band_max_drawdown_is_the_running_high_against_each_low() -> None:
    # a bucket that fell from 100 to 80 and closed at 95, then one that rose to 110 and fell to 99
    assert performance.band_max_drawdown([80.0, 99.0], [100.0, 110.0]) == pytest.approx(-0.2)
    assert performance.band_max_drawdown([100.0, 120.0], [100.0, 120.0]) == 0.0
    stats = performance.performance_stats([0.0, 60.0, 120.0], [100.0, 95.0, 96.0], low=[100.0, 80.0, 96.0],
                                          high=[100.0, 100.0, 96.0])  # fmt: skip
    plain = performance.performance_stats([0.0, 60.0, 120.0], [100.0, 95.0, 96.0])
    assert stats.max_drawdown.value == pytest.approx(-0.2) and plain.max_drawdown.value == pytest.approx(-0.05)
    assert stats.sharpe == plain.sharpe and stats.annual_volatility == plain.annual_volatility


def test_the_overview_draws_the_band_of_a_downsampled_window_around_its_equity_curve(
    redis_server: Any, seeded_store: Store, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Overview's equity curve of the 1-day window (1-minute buckets) shows each bucket's low and high, so the
    fall inside a bucket is on the chart, not only in the Performance page's drawdown."""
    import streamlit as st

    from tests.test_dashboard import _point_app_at, arr, charts, open_page

    # Arrange: the crash, then the page's clock on the data's time (a replay's clock: engine/clocks.py)
    clock = _crash_run(seeded_store, settings, vectorised=True)
    seeded_store.write_heartbeat("stream", {"ts": clock.t, "clock": "replay", "wall_ts": time.time()})  # beating now
    _point_app_at(monkeypatch, redis_server.url, tmp_path)
    try:
        at = open_page("overview")
        at.session_state["ov_window"] = "1 day"
        at.run()
        # Act
        (equity,) = [c for c in charts(at) if c.get("layout", {}).get("title", {}).get("text") == "Equity"]
    finally:
        st.cache_resource.clear()
    # Assert: the band's traces (high, then low filled to it) and the curve; the low reaches the crash
    traces = {t.get("name"): t for t in equity["data"]}
    assert set(traces) >= {"low-high in bucket", "equity"}
    assert arr(traces["low-high in bucket"]["y"]).min() == 1_140_000.0
    assert arr(traces["equity"]["y"]).min() == 1_200_000.0
