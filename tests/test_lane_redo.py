"""The redo of a tick another writer's conflict aborted (logic/batch_tick.py ``_Kept``): it computes and writes only
the lanes that did not commit, on one Redis and on a Redis Cluster; anything but the redo of that same tick (an idle
refresh, a newer tick that supersedes it) computes every lane. Real Redis, the vectorised monitor in lanes of 5."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import redis

import warmup
from engine.feeds import SimulatedFeed
from engine.settings import Settings
from engine.store import MONITOR_GROUP, TICKS_KEY, Store
from engine.store.limits_batch import _READ_LIMITS_LUA
from engine.store.tick_state import TickState
from engine.stream import StreamDaemon
from logic import batch_tick
from logic.batch import _SECTIONS_LUA
from logic.monitor import Monitor
from tests.test_batch import _random_settings
from tests.test_batch_tick import START, Steps
from tests.test_tracked_chunks import _key_counts, _log_every_command

AFTER = 1.0
"""Seconds the clock moves between a tick's attempts (so a snapshot shows which attempt wrote it)."""


def _setup(
    store: Store, make_settings: Callable[..., Settings], **monitor: Any
) -> tuple[Settings, Steps, Monitor, Callable[[], int]]:
    """18 random books, a vectorised monitor writing lanes of 5 portfolios (4 lanes) that has done two ticks, and
    a function writing the next bar (returns its version)."""
    settings = _random_settings(make_settings, seed=5)
    if monitor:
        settings = dataclasses.replace(settings, monitor=dataclasses.replace(settings.monitor, **monitor))
    warmup.seed(store, settings, now=START)
    clock = Steps()
    fast = Monitor(store, settings, clock, consumer="fast", idle_refresh_seconds=0)
    assert fast.fast is not None
    fast.fast.chunk_portfolios = 5
    daemon = StreamDaemon(store, settings, iter(()), clock=clock, interval=0)  # type: ignore[arg-type]
    feed = iter(SimulatedFeed.from_settings(settings, seed=3))

    def bar() -> int:
        clock.now += 60.0
        assert daemon.process_bar(next(feed))
        return store.read_market_header().version

    for _ in range(2):
        bar()
        assert fast.process_available() == 1
    return settings, clock, fast, bar


def _conflict_once(monkeypatch: pytest.MonkeyPatch, store: Store, pid: str = "p12") -> list[bool]:
    """While the next tick computes its first lane (every lane WATCHed by then), another writer merges ``pid``'s
    peaks: the EXEC of ``pid``'s lane is aborted. Returns a list that holds True once that happened."""
    prepare = TickState.prepare
    fired: list[bool] = []

    def interfere(self: TickState, *args: Any, **kwargs: Any) -> Any:
        if not fired:
            fired.append(True)
            store.update_peaks(pid, 1.0, "2099-01-01", "2099-01-01")
        return prepare(self, *args, **kwargs)

    monkeypatch.setattr(TickState, "prepare", interfere)
    return fired


def _aborted_tick(store: Store, fast: Monitor, bar: Callable[[], int], monkeypatch: pytest.MonkeyPatch) -> int:
    """The next bar's tick aborted by another writer's merge of p12 (:func:`_conflict_once`) and left for its redo
    as ``Monitor.run`` leaves it; returns its market version."""
    _conflict_once(monkeypatch, store)
    version = bar()
    with pytest.raises(redis.WatchError):
        fast.process_available()
    fast._on_conflict()
    return version


def _snapshots(store: Store, pids: list[str]) -> dict[str, tuple[int, float]]:
    """Each portfolio's stored snapshot: (market version, time)."""
    out = {}
    for pid in pids:
        snap = store.read_snapshot(pid)
        assert snap is not None, pid
        out[pid] = (int(snap["version"]), float(snap["ts"]))
    return out


def _points(store: Store, pids: list[str]) -> dict[str, int]:
    return {pid: len(store.read_history(pid)) for pid in pids}


def _lanes(monitor: Monitor) -> list[list[str]]:
    assert monitor.fast is not None
    return [list(lane.cols.pids) for lane in monitor.fast.lanes]


@pytest.mark.parametrize("sharing", [False, True], ids=["group", "sharing"])
def test_the_redo_writes_only_the_lane_the_conflict_aborted(
    store: Store, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, sharing: bool
) -> None:
    # Arrange: the next tick's third lane (p12's) conflicts once
    options = {"shard_portfolios": True} if sharing else {}
    settings, clock, fast, bar = _setup(store, make_settings, **options)
    pids = store.portfolio_ids()
    lanes = _lanes(fast)
    assert len(lanes) == 4 and "p12" in lanes[2]
    points = _points(store, pids)
    version = _aborted_tick(store, fast, bar, monkeypatch)
    tick_time = clock.now

    # Act: the redo runs AFTER seconds later (Monitor.run's handling of the conflict)
    clock.now += AFTER
    assert fast.process_available() == 1

    # Assert: the committed lanes kept their first attempt's snapshots and its one history point; p12's lane was
    # written by the redo; every portfolio has exactly one more point, of this tick's version; nothing pending
    got = _snapshots(store, pids)
    for k, lane in enumerate(lanes):
        for pid in lane:
            assert got[pid] == (version, tick_time + (AFTER if k == 2 else 0.0)), (k, pid)
    assert _points(store, pids) == {pid: n + 1 for pid, n in points.items()}
    assert (fast.stats.ticks_redone, fast.stats.ticks_processed, fast.stats.store_errors) == (1, 3, 0)
    if not sharing:
        assert store.client.xpending(TICKS_KEY, MONITOR_GROUP)["pending"] == 0
    heartbeat = store.read_heartbeat("monitor") or {}
    assert int(heartbeat["version"]) == version and int(heartbeat["portfolios"]) == len(pids)
    peaks = store.read_peaks("p12")
    assert peaks is not None and peaks.day == "2099-01-01"  # the other writer's merge is kept


def test_an_idle_refresh_between_the_conflict_and_the_redo_writes_every_lane_and_so_does_the_redo(
    store: Store, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange
    settings, clock, fast, bar = _setup(store, make_settings)
    pids = store.portfolio_ids()
    version = _aborted_tick(store, fast, bar, monkeypatch)

    # Act: an idle refresh first (not the tick's redo: nothing kept applies to it), then the pending tick
    clock.now += AFTER
    fast.refresh()
    refreshed = _snapshots(store, pids)
    clock.now += AFTER
    assert fast.process_available() == 1

    # Assert: the refresh wrote every portfolio at its own time, then the redo every portfolio at its time
    assert set(refreshed.values()) == {(version, clock.now - AFTER)}
    assert set(_snapshots(store, pids).values()) == {(version, clock.now)}
    assert store.client.xpending(TICKS_KEY, MONITOR_GROUP)["pending"] == 0


def test_a_sharing_monitor_whose_aborted_tick_was_superseded_writes_the_newest_tick_in_every_lane(
    store: Store, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: a monitor sharing the portfolios, latest wins: a newer bar comes before the redo
    settings, clock, fast, bar = _setup(store, make_settings, shard_portfolios=True, latest_wins=True)
    pids = store.portfolio_ids()
    points = _points(store, pids)
    _aborted_tick(store, fast, bar, monkeypatch)
    newest = bar()

    # Act: the redo reads the stream again and takes the newest tick
    assert fast.process_available() == 1

    # Assert: every portfolio at the newest tick, written by this attempt (none taken from the aborted tick's
    # lanes); the committed lanes have a point of each tick, p12's lane one of the newest only
    assert set(_snapshots(store, pids).values()) == {(newest, clock.now)}
    aborted = set(_lanes(fast)[2])
    assert _points(store, pids) == {pid: n + (1 if pid in aborted else 2) for pid, n in points.items()}
    assert (fast.stats.ticks_coalesced, fast.stats.ticks_redone) == (1, 1)


def test_on_a_redis_cluster_the_redo_writes_only_the_lanes_whose_transactions_did_not_commit(
    cluster_store: Store, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: on a cluster the lanes run one after the other, one MULTI per slot; p12's lane stops the tick, so
    # the lanes before it committed and the one after it never ran
    settings, clock, fast, bar = _setup(cluster_store, make_settings)
    pids = cluster_store.portfolio_ids()
    lanes = _lanes(fast)
    points = _points(cluster_store, pids)
    version = _aborted_tick(cluster_store, fast, bar, monkeypatch)
    tick_time = clock.now

    # Act
    clock.now += AFTER
    read_limits: list[list[str]] = []
    limits = batch_tick.live_limits

    def recorded(store: Store, portfolio_ids: Any, *args: Any, **kwargs: Any) -> Any:
        read_limits.append(list(portfolio_ids))
        return limits(store, portfolio_ids, *args, **kwargs)

    monkeypatch.setattr(batch_tick, "live_limits", recorded)
    assert fast.process_available() == 1

    # Assert: lanes 0 and 1 kept their first attempt (one point each); lanes 2 and 3 were written by the redo
    # (p12's lane may have committed some of its slots first: at least one more point there), which read the
    # live limits of their portfolios only (nothing is tracked on a cluster: every id read is a real read)
    assert [sorted(r) for r in read_limits] == [sorted(lanes[2] + lanes[3])]
    got = _snapshots(cluster_store, pids)
    after = _points(cluster_store, pids)
    for k, lane in enumerate(lanes):
        for pid in lane:
            assert got[pid] == (version, tick_time + (AFTER if k >= 2 else 0.0)), (k, pid)
            if k != 2:
                assert after[pid] == points[pid] + 1, (k, pid)
    assert cluster_store.client.xpending(TICKS_KEY, MONITOR_GROUP)["pending"] == 0
    assert fast.stats.ticks_redone == 1


def test_after_a_store_failure_the_redo_computes_every_lane(
    store: Store, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: a conflict, then the next read of the stream fails (Monitor.run's handling of each)
    settings, clock, fast, bar = _setup(store, make_settings)
    pids = store.portfolio_ids()
    version = _aborted_tick(store, fast, bar, monkeypatch)
    fast._on_store_error(redis.ConnectionError("connection lost"))

    # Act: the redo after the backoff
    clock.now += AFTER
    assert fast.process_available() == 1

    # Assert: nothing of the first attempt was taken as stored (a failover may have lost it): every lane written
    assert set(_snapshots(store, pids).values()) == {(version, clock.now)}


def test_the_tick_after_a_lane_only_redo_reads_no_limits_or_backtest_section_again(
    store: Store, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: a conflict and its redo (one lane computed); the tracked reads of limits and sections hold every
    # portfolio's (engine/store/tracking.py)
    settings, clock, fast, bar = _setup(store, make_settings)
    _aborted_tick(store, fast, bar, monkeypatch)
    assert fast.process_available() == 1
    client = store.client
    saved = {k: client.config_get(k)[k] for k in ("slowlog-max-len", "slowlog-log-slower-than")}

    # Act: the next tick, nothing written to any limits or section
    try:
        _log_every_command(client)
        bar()
        assert fast.process_available() == 1
        calls = [_key_counts(client, source) for source in (_READ_LIMITS_LUA, _SECTIONS_LUA)]
    finally:
        for k, v in saved.items():
            client.config_set(k, v)

    # Assert: neither was read again (the redo had read the kept lanes' too)
    assert calls == [[], []]
