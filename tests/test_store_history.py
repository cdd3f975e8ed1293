"""Bounded history (engine/store/history.py): the full-resolution stream and the downsampled tiers.

Every aggregate is checked against an independent computation written here (group the points by bucket, then
last / min / max per column), on a real Redis; the memory bound is measured with MEMORY USAGE.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import redis

from engine.errors import CorruptDataError
from engine.redis_server import EmbeddedRedis
from engine.settings import HistoryConfig, HistoryTier, Settings
from engine.store import PortfolioKeys, Store
from engine.store.history import (
    HISTORY_COLUMNS,
    HISTORY_FIELDS,
    TIER_LAYOUT,
    merge_buckets,
    tier_bytes,
)
from logic.snapshot import HISTORY_FIELDS as SNAPSHOT_HISTORY_FIELDS

T0 = 1_700_006_400.0  # a multiple of 15 minutes (and of every resolution used here)
DAY = 86_400.0
MEMORY_BOUND = 5_000_000
"""Issue 15: at most 5 MB of Redis memory per portfolio for the whole default retention."""
SMALL = (HistoryTier(1.0, 60.0), HistoryTier(10.0, 600.0), HistoryTier(60.0, 3600.0))
AGGREGATION = {c.name: c.aggregation for c in HISTORY_COLUMNS}
WIDE = {c.name: c.wide for c in HISTORY_COLUMNS}


def random_point(rng: random.Random, version: int) -> dict[str, float | int | None]:
    point: dict[str, float | int | None] = {"version": version}
    for name in HISTORY_FIELDS[1:]:
        if name == "version":
            continue
        point[name] = None if rng.random() < 0.1 else rng.uniform(-1e6, 1e6)
    point["equity_low"] = point["equity_high"] = point["equity"]  # a full-resolution point: its own extremes
    return point


def write(store: Store, pid: str, ts: float, point: dict[str, Any], tiers: Sequence[HistoryTier] = SMALL,
          raw_seconds: float = 300.0, max_points: int = 3000) -> None:  # fmt: skip
    store.record_snapshot(
        pid, {"version": point["version"]}, point, ts=ts, retention_seconds=raw_seconds, max_points=max_points,
        tiers=tiers,
    )  # fmt: skip


def expected_buckets(
    written: list[tuple[float, dict[str, Any]]], tier: HistoryTier, newest_ts: float
) -> list[dict[str, Any]]:
    """The tier computed here: points grouped by floor(ms / resolution ms), the buckets at most the retention
    before the newest one, last (the latest point's value, by time; a tie goes to the later write; None if it has
    none) / min / max (of the values present) per column."""
    res = round(tier.resolution_seconds * 1000)
    keep = round(tier.retention_seconds * 1000) // res
    newest = int(newest_ts * 1000) // res
    groups: dict[int, list[tuple[float, int, dict[str, Any]]]] = {}
    for order, (ts, point) in enumerate(written):
        groups.setdefault(int(ts * 1000) // res, []).append((ts, order, {**point, "ts": ts}))
    out = []
    for bucket in sorted(groups):
        if bucket < newest - keep:
            continue
        members = sorted(groups[bucket], key=lambda m: (m[0], m[1]))
        row: dict[str, Any] = {}
        for name in HISTORY_FIELDS:
            values: list[float] = [m[2][name] for m in members if m[2].get(name) is not None]
            agg = AGGREGATION[name]
            if agg == "last":
                row[name] = members[-1][2].get(name)
            else:
                row[name] = None if not values else max(values) if agg == "max" else min(values)
        out.append(row)
    return out


def assert_rows_equal(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for name in HISTORY_FIELDS:
            if w[name] is None:
                assert g[name] is None, name
            elif WIDE[name]:
                assert g[name] == w[name], name
            else:  # float32 column: rounding is monotonic, so min/max/last of the rounded values is exact
                assert g[name] == float(np.float32(w[name])), name


# -- the aggregation table ---------------------------------------------------------------------------------------


def test_the_history_fields_of_a_snapshot_are_the_columns_of_the_aggregation_table() -> None:
    assert SNAPSHOT_HISTORY_FIELDS == HISTORY_FIELDS and HISTORY_FIELDS[0] == "ts"
    assert {AGGREGATION[f] for f in ("var.var95", "var.var99", "var.cvar95", "var.stressed_var99")} == {"max"}
    assert {AGGREGATION[f] for f in ("drawdown.daily", "drawdown.weekly", "drawdown.max")} == {"min"}
    assert {AGGREGATION[f] for f in ("equity", "pnl.daily", "pnl.total", "cash")} == {"last"}


@pytest.mark.parametrize("shuffle", [False, True], ids=["in order", "late ticks"])
def test_every_tier_holds_last_min_and_max_per_bucket_as_computed_independently(store: Store, shuffle: bool) -> None:
    # Arrange: 700 points over about 2 hours at irregular spacing, several per second at times, some in the
    # same millisecond
    rng = random.Random(11)
    written: list[tuple[float, dict[str, Any]]] = []
    t = T0
    for i in range(700):
        t += rng.choice([0.0, 0.0004, 0.3, 1.0, 7.5, 25.0])
        written.append((t, random_point(rng, i)))
    order = list(written)
    if shuffle:
        rng.shuffle(order)

    # Act
    for ts, point in order:
        write(store, "main", ts, point)

    # Assert: each tier against the computation above, in the order the points were written
    newest = max(ts for ts, _ in written)
    for tier in SMALL:
        got = store.read_history_tier("main", tier)
        assert_rows_equal(got, expected_buckets(order, tier, newest))
    if not shuffle:  # the stream: every point of the last 300 s
        cutoff = int((newest - 300.0) * 1000)
        kept = [p["version"] for ts, p in written if int(ts * 1000) >= cutoff]
        assert [p["version"] for p in store.read_history("main")] == kept


def test_writing_the_same_points_twice_leaves_every_tier_unchanged(store: Store) -> None:
    rng = random.Random(5)
    points = [(T0 + i * 0.7, random_point(rng, i)) for i in range(200)]
    for ts, point in points:
        write(store, "main", ts, point)
    before = {t.resolution_seconds: store.read_history_tier("main", t) for t in SMALL}
    for ts, point in points[::-1]:
        write(store, "main", ts, point)
    assert {t.resolution_seconds: store.read_history_tier("main", t) for t in SMALL} == before


def test_a_breach_inside_a_bucket_survives_downsampling(store: Store) -> None:
    tier = HistoryTier(60.0, 3600.0)
    for i in range(60):  # one minute at 1 point/s, VaR 1,000 but 5,000 for one second, drawdown -30% then
        var = 5000.0 if i == 17 else 1000.0
        dd = -0.3 if i == 31 else -0.01
        write(store, "main", T0 + i, {"version": i, "var.var99": var, "drawdown.daily": dd, "equity": 1e6 + i},
              tiers=(tier,))  # fmt: skip
    (bucket,) = store.read_history_tier("main", tier)
    assert bucket["var.var99"] == 5000.0 and bucket["drawdown.daily"] == pytest.approx(-0.3, rel=1e-7)
    assert bucket["equity"] == 1e6 + 59 and bucket["ts"] == T0 + 59 and bucket["version"] == 59


# -- retention boundaries ----------------------------------------------------------------------------------------


def test_a_bucket_exactly_at_a_tiers_cutoff_is_kept_and_one_bucket_older_is_dropped(store: Store) -> None:
    tier = HistoryTier(10.0, 100.0)  # 11 buckets: the newest and the 10 before it
    write(store, "main", T0 - 10.0, {"version": 1, "equity": 1.0}, tiers=(tier,))  # one bucket too old, later
    write(store, "main", T0, {"version": 2, "equity": 2.0}, tiers=(tier,))  # at the cutoff (T0 + 100 - 100)
    write(store, "main", T0 + 50.0, {"version": 3, "equity": 3.0}, tiers=(tier,))
    write(store, "main", T0 + 100.0, {"version": 4, "equity": 4.0}, tiers=(tier,))  # the newest bucket
    write(store, "main", T0 - 0.001, {"version": 5, "equity": 5.0}, tiers=(tier,))  # late, 1 ms too old

    assert [p["version"] for p in store.read_history_tier("main", tier)] == [2, 3, 4]
    write(store, "main", T0 + 109.999, {"version": 6, "equity": 6.0}, tiers=(tier,))  # same newest bucket
    assert [p["version"] for p in store.read_history_tier("main", tier)] == [2, 3, 6]
    write(store, "main", T0 + 110.0, {"version": 7, "equity": 7.0}, tiers=(tier,))  # one bucket on: T0's goes
    assert [p["version"] for p in store.read_history_tier("main", tier)] == [3, 6, 7]


def test_a_rings_header_changes_only_when_a_newer_bucket_opens_or_an_older_entry_comes(store: Store) -> None:
    tier = HistoryTier(10.0, 100.0)
    key = PortfolioKeys("main").history_tier(10_000)

    def header() -> tuple[float, float]:
        newest, first = struct.unpack("<dd", store.client.getrange(key, 0, 15))
        return newest, first

    start = T0 - T0 % 10.0  # a bucket's start
    write(store, "main", start + 1.0, {"version": 1, "equity": 1.0}, tiers=(tier,))
    assert header() == ((start + 1.0) * 1000, (start + 1.0) * 1000)
    write(store, "main", start + 9.999, {"version": 2, "equity": 2.0}, tiers=(tier,))  # the same bucket: as it was
    assert header() == ((start + 1.0) * 1000, (start + 1.0) * 1000)
    write(store, "main", start + 0.5, {"version": 3, "equity": 3.0}, tiers=(tier,))  # older: the oldest time moves
    assert header() == ((start + 1.0) * 1000, (start + 0.5) * 1000)
    write(store, "main", start + 10.0, {"version": 4, "equity": 4.0}, tiers=(tier,))  # a newer bucket opens
    assert header() == ((start + 10.0) * 1000, (start + 0.5) * 1000)
    assert [p["version"] for p in store.read_history_tier("main", tier)] == [2, 4]


def test_the_full_resolution_stream_keeps_a_point_exactly_at_its_cutoff_and_drops_one_ms_older(store: Store) -> None:
    write(store, "main", T0 - 0.001, {"version": 1}, tiers=())
    write(store, "main", T0, {"version": 2}, tiers=())
    write(store, "main", T0 + 300.0, {"version": 3}, tiers=(), raw_seconds=300.0)
    assert [p["version"] for p in store.read_history("main")] == [2, 3]


def test_tiers_follow_the_datas_time_of_a_replay_not_the_wall_clock(store: Store) -> None:
    # daily bars of 2019 written on the bars' own times: the 90-day tier keeps the last 90 days of data time
    start = 1_546_300_800.0  # 2019-01-01 00:00 UTC
    tier = HistoryTier(86_400.0, 90 * DAY)
    for day in range(200):
        write(store, "main", start + day * DAY, {"version": day, "equity": 1e6 + day}, tiers=(tier,))
    points = store.read_history_tier("main", tier)
    assert [p["version"] for p in points] == list(range(109, 200))
    assert points[0]["ts"] == start + 109 * DAY and points[-1]["ts"] == start + 199 * DAY


# -- restart, corruption -----------------------------------------------------------------------------------------


def test_a_redis_restart_keeps_the_tiers_and_later_points_merge_into_the_open_buckets(
    fresh_redis: EmbeddedRedis,
) -> None:  # noqa: E501
    rng = random.Random(3)
    points = [(T0 + i * 2.5, random_point(rng, i)) for i in range(300)]
    write_all = points[:150], points[150:]
    store = Store(fresh_redis.client())
    for ts, point in write_all[0]:
        write(store, "main", ts, point)
    fresh_redis.stop()
    fresh_redis.start()
    store = Store(fresh_redis.client())
    for ts, point in write_all[1]:
        write(store, "main", ts, point)
    newest = points[-1][0]
    for tier in SMALL:
        assert_rows_equal(store.read_history_tier("main", tier), expected_buckets(points, tier, newest))


def test_a_tier_of_the_wrong_size_is_corrupt_on_read_and_the_read_changes_nothing(store: Store) -> None:
    tier = HistoryTier(10.0, 100.0)
    write(store, "main", T0, {"version": 1, "equity": 1.0}, tiers=(tier,))
    key = PortfolioKeys("main").history_tier(10_000)
    blob = store.client.get(key)
    assert isinstance(blob, bytes)
    store.client.set(key, blob[:-3])
    before = store.client.get(key)
    with pytest.raises(CorruptDataError, match="history_tier:10000"):
        store.read_history_tier("main", tier)
    assert store.client.get(key) == before


def test_a_bucket_in_the_wrong_slot_is_corrupt(store: Store) -> None:
    tier = HistoryTier(10.0, 100.0)
    write(store, "main", T0, {"version": 1, "equity": 1.0}, tiers=(tier,))
    key = PortfolioKeys("main").history_tier(10_000)
    stored = store.client.get(key)
    assert isinstance(stored, bytes)
    blob = bytearray(stored)
    slot = int(T0 * 1000) // 10_000 % 11
    row = blob[16 + slot * TIER_LAYOUT.size : 16 + (slot + 1) * TIER_LAYOUT.size]
    other = (slot + 1) % 11
    blob[16 + other * TIER_LAYOUT.size : 16 + (other + 1) * TIER_LAYOUT.size] = row
    store.client.set(key, bytes(blob))
    with pytest.raises(CorruptDataError, match="not in its slot"):
        store.read_history_tier("main", tier)


def test_a_stream_point_that_is_not_one_packed_row_is_corrupt(store: Store) -> None:
    store.client.xadd(PortfolioKeys("main").history, {"p": b"\x00" * 13}, id="1700000000000-0")
    with pytest.raises(CorruptDataError, match="not a whole number"):
        store.read_history("main")


def test_a_point_that_is_not_numbers_is_refused_and_nothing_is_written(store: Store) -> None:
    with pytest.raises(ValueError):
        write(store, "main", T0, {"version": 1, "equity": "lots"})
    assert store.client.keys("pf:{main}:*") == []


def test_the_history_settings_refuse_tiers_that_do_not_tile(make_settings: Callable[..., Settings]) -> None:
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="whole resolutions"):
        make_settings({"history": {"tiers": [{"resolution_seconds": 10.0, "retention_seconds": 105.0}]}})
    with pytest.raises(ConfigError, match="finest first"):
        make_settings({"history": {"tiers": [{"resolution_seconds": 60.0, "retention_seconds": 600.0},
                                             {"resolution_seconds": 10.0, "retention_seconds": 600.0}]}})  # fmt: skip
    ok = make_settings({"history": {"tiers": [{"resolution_seconds": 10.0, "retention_seconds": 10.0}]}})
    assert ok.history.tiers == (HistoryTier(10.0, 10.0),)


# -- the memory bound ----------------------------------------------------------------------------------------


def portfolio_memory(client: redis.Redis, pid: str) -> int:
    return sum(int(client.memory_usage(k) or 0) for k in client.scan_iter(match=f"pf:{{{pid}}}:*", count=1000))


def test_seven_days_of_history_with_the_default_tiers_fit_in_5_mb_and_the_tiers_never_grow(store: Store) -> None:
    # Arrange: the default retention; a week of data time at one point a minute through the 1-minute tier's
    # every bucket (the rings are allocated whole on the first write, so their size does not depend on how
    # many points fill them), then a burst of ticks filling the full-resolution stream to its cap
    history = HistoryConfig()
    rng = random.Random(1)
    t = T0
    with store.client.pipeline(transaction=False) as pipe:
        for i in range(7 * 1440):
            t = T0 + i * 60.0 + rng.random()
            store.record_snapshot("main", {"version": i}, random_point(rng, i), ts=t,
                                  retention_seconds=history.raw_seconds, max_points=history.raw_max_points,
                                  pipe=pipe, tiers=history.tiers)  # fmt: skip
            if i % 500 == 0:
                pipe.execute()
        pipe.execute()
    tiers_after_a_week = {t_.resolution_seconds: store.client.memory_usage(PortfolioKeys("main").history_tier(
        round(t_.resolution_seconds * 1000))) for t_ in history.tiers}  # fmt: skip
    with store.client.pipeline(transaction=False) as pipe:
        for j in range(history.raw_max_points + 200):  # 10 ticks a second
            store.record_snapshot("main", {"version": 10_000 + j}, random_point(rng, 10_000 + j),
                                  ts=t + 60.0 + j * 0.1, retention_seconds=history.raw_seconds,
                                  max_points=history.raw_max_points, pipe=pipe, tiers=history.tiers)  # fmt: skip
        pipe.execute()

    # Assert: the bound, and the rings' size is exactly their rows (no growth, whatever is written)
    total = portfolio_memory(store.client, "main")
    assert total <= MEMORY_BOUND, f"{total:,} bytes"
    for tier in history.tiers:
        key = PortfolioKeys("main").history_tier(round(tier.resolution_seconds * 1000))
        assert store.client.strlen(key) == tier_bytes(tier)
        assert store.client.memory_usage(key) == tiers_after_a_week[tier.resolution_seconds]
    assert store.history_length("main") <= history.raw_max_points + 100  # MAXLEN ~ trims whole stream nodes


# -- reading a window --------------------------------------------------------------------------------------------


def commands_served(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def test_each_dashboard_window_reads_the_tier_that_fits_it_in_at_most_three_commands(store: Store) -> None:
    history = HistoryConfig()
    end = T0 + 8 * DAY
    with store.client.pipeline(transaction=False) as pipe:
        for i in range(8 * 1440 - 15):  # 8 days at one point a minute, then the last 15 minutes at one a second
            ts = T0 + i * 60.0
            store.record_snapshot("main", {"version": i}, {"version": i, "equity": 1e6 + i}, ts=ts,
                                  retention_seconds=history.raw_seconds, max_points=history.raw_max_points,
                                  pipe=pipe, tiers=history.tiers)  # fmt: skip
        for j in range(900):
            ts = end - 900 + j + 1
            store.record_snapshot("main", {"version": 20_000 + j}, {"version": 20_000 + j, "equity": 2e6 + j},
                                  ts=ts, retention_seconds=history.raw_seconds,
                                  max_points=history.raw_max_points, pipe=pipe, tiers=history.tiers)  # fmt: skip
        pipe.execute()
    expected = {300.0: None, 1800.0: 1.0, 4 * 3600.0: 10.0, DAY: 60.0, 7 * DAY: 900.0, 90 * DAY: 900.0}
    for window, resolution in expected.items():
        before = commands_served(store.client)
        got = store.read_history_window("main", end - window, end, history=history, max_points=2000)
        reads = commands_served(store.client) - before - 1  # the INFO that reads the counter counts itself
        assert got.resolution_seconds == resolution, window
        assert 0 < len(got.points) <= 2000 and reads <= 3, (window, reads)
        assert got.points[-1]["ts"] == end and got.points[-1]["version"] == 20_899
        assert all(end - window <= p["ts"] <= end for p in got.points), window
    merged = store.read_history_window("main", end - 7 * DAY, end, history=history, max_points=100)
    assert merged.resolution_seconds == 7 * 900.0 and 90 <= len(merged.points) <= 100  # 1 h 45 min buckets
    assert merged.points[-1]["ts"] == end


def test_merging_buckets_gives_what_the_tier_would_hold_at_the_coarser_resolution(store: Store) -> None:
    rng = random.Random(8)
    written = [(T0 + i * 1.7, random_point(rng, i)) for i in range(2000)]
    fine, coarse = HistoryTier(10.0, 6000.0), HistoryTier(60.0, 6000.0)
    for ts, point in written:
        write(store, "main", ts, point, tiers=(fine,))
    rows = store.read_tier_rows("main", fine)
    merged = merge_buckets(rows, 60_000)
    want = expected_buckets(written, coarse, written[-1][0])
    got = [{n: (None if math.isnan(float(r[n])) else float(r[n])) for n in HISTORY_FIELDS} for r in merged]
    assert_rows_equal(got, want)


# -- through the monitor -----------------------------------------------------------------------------------------


def test_the_monitor_writes_every_tier_on_its_injected_clock_in_the_portfolios_hash_slot(
    seeded_store: Store, settings: Settings
) -> None:
    from logic.monitor import Monitor

    from .test_monitor import WEDNESDAY, Clock, _sim_ticks

    # Arrange: ticks 25 s apart on the monitor's clock (data time, not the wall clock)
    clock = Clock(WEDNESDAY)
    monitor = Monitor(seeded_store, settings, clock=clock)
    for _ in range(8):
        clock.t += 25.0
        _sim_ticks(seeded_store, settings, 1)
        monitor.process_available()

    # Assert: each tier equals the full-resolution points (all 8 are within its 300 s) grouped by bucket
    raw = seeded_store.read_history("main")
    assert [p["ts"] for p in raw] == [WEDNESDAY + 25.0 * (i + 1) for i in range(8)]
    written = [(p["ts"], {k: v for k, v in p.items() if k != "id"}) for p in raw]
    for tier in settings.history.tiers:
        got = seeded_store.read_history_tier("main", tier)
        assert_rows_equal(got, expected_buckets(written, tier, clock.t))
    tier_keys = {k.decode() for k in seeded_store.client.scan_iter(match="pf:{main}:history_tier:*")}
    assert tier_keys == {PortfolioKeys("main").history_tier(round(t.resolution_seconds * 1000))
                         for t in settings.history.tiers}  # fmt: skip
    assert all(k.startswith("pf:{main}:") for k in tier_keys)


def test_a_point_of_the_former_field_per_metric_format_still_reads(store: Store) -> None:
    key = PortfolioKeys("main").history
    store.client.xadd(key, {"ts": "1700000000.5", "version": "7", "equity": "1000000.25", "margin.level": ""},
                      id="1700000000500-0")  # fmt: skip
    write(store, "main", 1_700_000_001.0, {"version": 8, "equity": 2.0}, tiers=())
    old, new = store.read_history("main")
    assert old == {"id": "1700000000500-0", "ts": 1_700_000_000.5, "version": 7, "equity": 1_000_000.25,
                   "margin.level": None}  # fmt: skip
    assert new["version"] == 8 and new["equity"] == 2.0 and new["ts"] == 1_700_000_001.0 and new["cash"] is None


def test_snapshot_times_read_each_stored_snapshots_time_without_sending_it(store: Store) -> None:
    # Arrange: one snapshot written by the writers' encoder, one absent, two not in the writers' shape
    ts = 1_717_000_000.123456
    snap = {"portfolio_id": "main", "ts": ts, "version": 3, "positions": [{"ticker": "AAA", "qty": 5}]}
    store.record_snapshot("main", snap, {"equity": 1.0}, ts=ts, retention_seconds=3600, max_points=10)
    store.client.set(PortfolioKeys("odd").snapshot, b'{"ts": 5.0, "portfolio_id": "odd"}')  # other key order
    store.client.set(PortfolioKeys("junk").snapshot, b"\x00not json")

    # Act
    times = store.snapshot_times(["main", "none", "odd", "junk"])

    # Assert: the exact float (as the JSON decodes), None for none stored, NaN for "read it whole"
    assert times[0] == ts == store.read_snapshot("main")["ts"]  # type: ignore[index]
    assert times[1] is None and math.isnan(times[2]) and math.isnan(times[3])  # type: ignore[arg-type]
    assert store.snapshot_times([]) == []
