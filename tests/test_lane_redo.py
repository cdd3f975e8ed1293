"""The redo of a tick in which another writer touched a portfolio (logic/batch_tick.py ``_Kept``): the first attempt
writes every portfolio but the one touched (each lane's script checks each portfolio's owner stamp), and the redo
computes and writes only that portfolio, on one Redis and on a Redis Cluster; anything but
the redo of that same tick (an idle refresh, a newer tick that supersedes it) computes and writes every lane. Real
Redis, the vectorised monitor in lanes of 5."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import redis

import warmup
from engine.feeds import SimulatedFeed
from engine.settings import Settings
from engine.store import MONITOR_GROUP, TICKS_KEY, PortfolioKeys, Store
from engine.store.history import OWNER_FIELD
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


def _conflict_once(monkeypatch: pytest.MonkeyPatch, store: Store, pid: str = "p12", times: int = 1) -> list[bool]:
    """While the next tick computes its first lane (every owner stamp read by then), another writer merges
    ``pid``'s peaks: ``pid`` is not written by that attempt. With ``times`` > 1, again while each next attempt
    computes its first lane, ``times`` attempts in all. Returns a list that holds True each time that happened."""
    prepare, snapshot_all = TickState.prepare, batch_tick.VectorisedTick.snapshot_all
    fired: list[bool] = []
    attempt: list[bool] = []

    def interfere(self: TickState, *args: Any, **kwargs: Any) -> Any:
        if len(fired) < times and not attempt:
            attempt.append(True)
            fired.append(True)
            store.update_peaks(pid, 1.0, "2099-01-01", "2099-01-01")
        return prepare(self, *args, **kwargs)

    def attempts(self: Any, *args: Any, **kwargs: Any) -> Any:
        attempt.clear()
        return snapshot_all(self, *args, **kwargs)

    monkeypatch.setattr(batch_tick.VectorisedTick, "snapshot_all", attempts)
    monkeypatch.setattr(TickState, "prepare", interfere)
    return fired


def _aborted_tick(
    store: Store, fast: Monitor, bar: Callable[[], int], monkeypatch: pytest.MonkeyPatch, times: int = 1
) -> int:
    """The next bar's tick left without p12 by another writer's merge of it (:func:`_conflict_once`), and for its
    redo as ``Monitor.run`` leaves it; returns its market version."""
    _conflict_once(monkeypatch, store, times=times)
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
def test_the_redo_writes_only_the_portfolio_another_writer_touched(
    store: Store, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, sharing: bool
) -> None:
    # Arrange: another writer touches p12 (the third lane's) once during the next tick
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
    computed: list[list[str]] = []
    write_lane = batch_tick.VectorisedTick._write_lane

    def recorded(self: Any, r: Any, *args: Any, **kwargs: Any) -> Any:
        computed.append(list(r.lane.cols.pids))
        return write_lane(self, r, *args, **kwargs)

    monkeypatch.setattr(batch_tick.VectorisedTick, "_write_lane", recorded)
    assert fast.process_available() == 1

    # Assert: the redo computed p12 alone; every portfolio but p12, its own lane's too, kept its first attempt's
    # snapshot and its one history point; p12 was written by the redo; every portfolio has exactly one more
    # point, of this tick's version; nothing pending
    assert computed == [["p12"]]
    got = _snapshots(store, pids)
    for pid in pids:
        assert got[pid] == (version, tick_time + (AFTER if pid == "p12" else 0.0)), pid
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


def test_a_sharing_monitor_whose_aborted_tick_was_superseded_writes_the_newest_tick_everywhere(
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

    # Assert: every portfolio at the newest tick, written by this attempt (none taken from the aborted tick);
    # the portfolios written by the aborted tick have a point of each tick, p12 one of the newest only
    assert set(_snapshots(store, pids).values()) == {(newest, clock.now)}
    assert _points(store, pids) == {pid: n + (1 if pid == "p12" else 2) for pid, n in points.items()}
    assert (fast.stats.ticks_coalesced, fast.stats.ticks_redone) == (1, 1)


def test_on_a_redis_cluster_the_redo_writes_only_the_portfolio_another_writer_touched(
    cluster_store: Store, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: on a cluster the lanes run one after the other, one MULTI per slot, one script per portfolio
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

    # Assert: every portfolio but p12 kept its first attempt; p12 was written by the redo, which computed p12
    # only and read p12's live limits only (nothing is tracked on a cluster: every id read is a real read); every
    # portfolio has exactly one more point
    assert "p12" in lanes[2] and read_limits == [["p12"]]
    got = _snapshots(cluster_store, pids)
    for pid in pids:
        assert got[pid] == (version, tick_time + (AFTER if pid == "p12" else 0.0)), pid
    assert _points(cluster_store, pids) == {pid: n + 1 for pid, n in points.items()}
    assert cluster_store.client.xpending(TICKS_KEY, MONITOR_GROUP)["pending"] == 0
    assert fast.stats.ticks_redone == 1


@pytest.mark.parametrize("lost", [False, True], ids=["held", "lost"])
def test_after_a_store_failure_the_redo_takes_as_written_only_what_the_store_still_holds(
    store: Store, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, lost: bool
) -> None:
    # Arrange: a conflict (every portfolio but p12 written), then the next read of the stream fails (Monitor.run's
    # handling of each); with ``lost``, a failover lost the first attempt's write of the first portfolio: its
    # history point gone, its peaks hash stamped as before the tick
    settings, clock, fast, bar = _setup(store, make_settings)
    pids = store.portfolio_ids()
    points = _points(store, pids)
    first = pids[0]
    peaks = PortfolioKeys(first).peaks
    stamp = store.client.hget(peaks, OWNER_FIELD)
    version = _aborted_tick(store, fast, bar, monkeypatch)
    tick_time = clock.now
    fast._on_store_error(redis.ConnectionError("connection lost"))
    if lost:
        newest = store.client.xrevrange(PortfolioKeys(first).history, count=1)[0][0]
        store.client.xdel(PortfolioKeys(first).history, newest)
        store.client.hset(peaks, OWNER_FIELD, stamp)

    # Act: the redo after the backoff
    clock.now += AFTER
    assert fast.process_available() == 1

    # Assert: a portfolio whose peaks hash holds the first attempt's stamp holds its snapshot and point (one script
    # wrote them together): taken as written, not written twice; p12, and a write the failover lost, are redone
    redone = {"p12", first} if lost else {"p12"}
    got = _snapshots(store, pids)
    for pid in pids:
        assert got[pid] == (version, tick_time + (AFTER if pid in redone else 0.0)), pid
    assert _points(store, pids) == {pid: n + 1 for pid, n in points.items()}
    assert store.client.xpending(TICKS_KEY, MONITOR_GROUP)["pending"] == 0


@pytest.mark.parametrize("cluster", [False, True], ids=["redis", "cluster"])
def test_a_portfolio_touched_again_in_each_redo_is_written_once_untouched_and_no_other_twice(
    store: Store,
    cluster_store: Store,
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    cluster: bool,
) -> None:
    # Arrange: another writer touches p12 during the first attempt and again during the first redo
    target = cluster_store if cluster else store
    settings, clock, fast, bar = _setup(target, make_settings)
    pids = target.portfolio_ids()
    points = _points(target, pids)
    version = _aborted_tick(target, fast, bar, monkeypatch, times=2)
    tick_time = clock.now
    clock.now += AFTER
    with pytest.raises(redis.WatchError):  # the first redo: p12 touched again
        fast.process_available()
    fast._on_conflict()

    # Act: the second redo, untouched
    clock.now += AFTER
    assert fast.process_available() == 1

    # Assert: p12 written by the second redo, every other portfolio by the first attempt; one point each
    got = _snapshots(target, pids)
    for pid in pids:
        assert got[pid] == (version, tick_time + (2 * AFTER if pid == "p12" else 0.0)), pid
    assert _points(target, pids) == {pid: n + 1 for pid, n in points.items()}
    assert (fast.stats.ticks_redone, fast.stats.store_errors) == (2, 0)
    peaks = target.read_peaks("p12")
    assert peaks is not None and peaks.day == "2099-01-01"  # the other writer's merges are kept


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


def test_a_monitor_does_not_write_over_the_newer_tick_another_monitor_wrote_meanwhile(
    store: Store, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: monitors A and B of one consumer group; B wrote the last tick (its stamps on every peaks hash), so A
    # loads every portfolio for the next one, and while A computes it B writes the tick after (B holds them all: a
    # write of a holder must still tell A that its read is old)
    settings, clock, a, bar = _setup(store, make_settings)
    b = Monitor(store, settings, clock, consumer="b", idle_refresh_seconds=0)
    assert a.fast is not None and b.fast is not None
    b.fast.chunk_portfolios = 5
    pids = store.portfolio_ids()
    bar()
    assert b.process_available() == 1
    bar()
    prepare = TickState.prepare
    seen: list[tuple[int, dict[str, dict[bytes, bytes]]]] = []

    def b_writes_the_next_tick(self: TickState, *args: Any, **kwargs: Any) -> Any:
        if not seen and self.token == a.fast.token:  # type: ignore[union-attr]
            clock.now += AFTER
            newest = bar()
            assert b.process_available() == 1
            seen.append((newest, {pid: store.client.hgetall(PortfolioKeys(pid).peaks) for pid in pids}))
        return prepare(self, *args, **kwargs)

    monkeypatch.setattr(TickState, "prepare", b_writes_the_next_tick)

    # Act: A's tick
    with pytest.raises(redis.WatchError):
        a.process_available()

    # Assert: A wrote none of its older tick over B's: every snapshot is still B's newest, every peaks hash B's
    newest, peaks = seen[0]
    assert {version for version, _ in _snapshots(store, pids).values()} == {newest}
    assert {pid: store.client.hgetall(PortfolioKeys(pid).peaks) for pid in pids} == peaks
