"""A book sync racing a monitor tick (logic/stamped_read.py): the monitor reads its clock only after the WATCH
that guards its book read, so a history point's time and its valuation agree about every capital flow, and the
Performance page (logic/performance.py ``step_flows``) never shows a phantom gain and loss around a flow. Real
Redis, both monitor paths, a tick and an idle refresh, a steady monitor and one that just started."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from engine import book
from engine.feeds import Bar, IterableFeed
from engine.settings import Settings
from engine.store import TICKS_KEY, Store, TickEvent
from engine.store.slots import slot_transaction
from engine.stream import StreamDaemon
from logic import performance
from logic.monitor import Monitor
from logic.views import Desk, performance_view
from logic.views.overview import history_frame

WED = datetime(2024, 3, 6, 15, 0, tzinfo=UTC).timestamp()  # 10:00 New York, in session
E0 = 1_000_000.0 + 1000 * 100.0 + 2000 * 50.0  # main: 1,000,000 cash, 1000 AAA @ 100, 2000 BBB @ 50
WITHDRAWN = 500_000.0


class RacingClock:
    """The monitor's clock (a test double of time): counts its calls; once armed, a call returns the time, then
    the back office's sync commits a flow stamped ``lag`` seconds after it (the sync read its own clock after the
    monitor did) and the time moves on by a second (the sync took that long)."""

    def __init__(self, t: float) -> None:
        self.t = t
        self.calls = 0
        self.armed: Callable[[float], None] | None = None
        self.lag = 0.5

    def __call__(self) -> float:
        self.calls += 1
        now = self.t
        if self.armed is not None:
            action, self.armed = self.armed, None
            action(now + self.lag)
            self.t = now + 1.0
        return now


def _withdraw(store: Store, settings: Settings, tmp_path: Path) -> Callable[[float], None]:
    """The sync of main to 500,000 cash (its book otherwise unchanged), stamped at the time it is called with."""

    def run(at: float) -> None:
        path = tmp_path / "book.csv"
        path.write_text(
            "portfolio_id,ticker,qty,avg_price,account_type,cash\nmain,AAA,1000,100,,\nmain,BBB,2000,50,,\n"
            "main,,,,cash,500000.00\n"
        )
        book.sync(store, settings, book.read_book(path, settings.universe.assets), dry_run=False, create=False,
                  now=at, actor="backoffice", out=lambda _line: None)  # fmt: skip

    return run


def _step(store: Store, settings: Settings, monitor: Monitor, clock: RacingClock, refresh: bool) -> None:
    """One snapshot of every portfolio at AAA 100: a tick through the stream (``Monitor.run``, which redoes a tick
    its WATCH aborted) or an idle refresh (redone as ``run`` does after a conflict)."""
    if refresh:
        for _ in range(3):
            try:
                monitor.refresh()
                return
            except redis.WatchError:
                monitor._on_conflict()
        raise AssertionError("the refresh kept conflicting")
    daemon = StreamDaemon(store, settings, IterableFeed([]), clock=lambda: clock.t, interval=0)
    assert daemon.process_bar(Bar(clock.t, {"AAA": 100.0}))
    monitor.run(max_ticks=monitor.stats.ticks_processed + 1, block_ms=1)


def _page(store: Store, settings: Settings, clock: RacingClock) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The Performance page's view of main: point times, equity, flows per step, and its maximum drawdown."""
    desk = Desk(store.client, settings, clock=lambda: clock.t)
    ts, equity, *_ = performance.equity_band_series(history_frame(desk, "main", 1_800.0).to_dict("records"))
    booked = store.read_flows("main", float(ts[0]), float(ts[-1]))
    flows = performance.step_flows(ts, [f[0] for f in booked], [f[1] for f in booked])
    mdd = performance_view(desk, "main", 1_800.0).stats.max_drawdown.value
    assert mdd is not None
    return ts, equity, flows, mdd


def _assert_no_phantom(store: Store, settings: Settings, clock: RacingClock, flow_at: float) -> None:
    ts, equity, flows, mdd = _page(store, settings, clock)
    # Assert: the first point valuing the book after the flow is stamped after it, carries it, and every
    # time-weighted return is 0 (the prices never moved): no phantom loss and gain, no drawdown
    after = int(np.flatnonzero(equity == E0 - WITHDRAWN)[0])
    assert ts[after - 1] <= flow_at < ts[after]
    assert equity[:after].tolist() == [E0] * after
    assert flows.tolist() == [0.0] * after + [-WITHDRAWN] + [0.0] * (len(ts) - after - 1)
    assert performance.flow_adjusted_index(equity, flows).returns.tolist() == [0.0] * (len(ts) - 1)
    assert mdd == 0.0


@pytest.mark.parametrize("refresh", [False, True], ids=["tick", "idle-refresh"])
@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "per-portfolio"])
def test_a_sync_committed_right_after_the_clock_read_is_in_the_next_points_step_not_a_phantom_return(
    seeded_store: Store, settings: Settings, tmp_path: Path, vectorised: bool, refresh: bool
) -> None:
    # Arrange: a point at AAA 100; then, while the monitor reads its clock, the back office withdraws 500,000
    clock = RacingClock(WED)
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0, vectorised=vectorised)
    _step(seeded_store, settings, monitor, clock, refresh)
    clock.t += 60.0
    clock.armed = _withdraw(seeded_store, settings, tmp_path)

    # Act: the racing snapshot, and two more
    _step(seeded_store, settings, monitor, clock, refresh)
    for _ in range(2):
        clock.t += 60.0
        _step(seeded_store, settings, monitor, clock, refresh)

    # Assert: no phantom step; the racing snapshot was aborted by its WATCH and redone at a new clock reading
    assert seeded_store.read_flows("main", WED, clock.t + 1) == [(WED + 60.5, -WITHDRAWN)]
    _assert_no_phantom(seeded_store, settings, clock, WED + 60.5)
    assert monitor.stats.ticks_redone == 1
    ts, *_ = _page(seeded_store, settings, clock)
    assert (ts - WED).tolist() == [0.0, 61.0, 121.0, 181.0]  # the redo's point: the clock read after the sync
    snap = seeded_store.read_snapshot("main")
    assert snap is not None and snap["equity"] == E0 - WITHDRAWN and snap["drawdown"]["max"] == 0.0


@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "per-portfolio"])
def test_a_sync_racing_a_just_started_monitors_first_tick_is_in_the_right_step(
    seeded_store: Store, settings: Settings, tmp_path: Path, vectorised: bool
) -> None:
    # Arrange: a first monitor wrote a point; a new one (restarted: it has WATCHed nothing yet) takes over, and
    # the withdrawal commits while its first tick reads the clock
    clock = RacingClock(WED)
    first = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0, vectorised=vectorised)
    _step(seeded_store, settings, first, clock, refresh=False)
    clock.t += 60.0
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0, vectorised=vectorised)
    clock.armed = _withdraw(seeded_store, settings, tmp_path)

    # Act
    _step(seeded_store, settings, monitor, clock, refresh=False)
    clock.t += 60.0
    _step(seeded_store, settings, monitor, clock, refresh=False)

    # Assert: its first read met portfolios it had not WATCHed: read again, the clock read again after the WATCH
    _assert_no_phantom(seeded_store, settings, clock, WED + 60.5)
    ts, *_ = _page(seeded_store, settings, clock)
    assert (ts - WED).tolist() == [0.0, 61.0, 121.0]


@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "per-portfolio"])
def test_a_steady_tick_reads_the_clock_and_the_books_once_a_first_tick_twice(
    seeded_store: Store, settings: Settings, vectorised: bool
) -> None:
    # Arrange
    clock = RacingClock(WED)
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0, vectorised=vectorised)

    # Act / Assert: the first tick lays every portfolio out (read again, its keys WATCHed); the next ones do not
    calls = []
    for _ in range(3):
        before = clock.calls
        monitor.process_tick(None, _event(seeded_store, settings, clock))
        calls.append(clock.calls - before)
        clock.t += 60.0
    assert calls == [2, 1, 1]


def _event(store: Store, settings: Settings, clock: RacingClock) -> TickEvent:
    """A bar at AAA 100 written by the stream daemon; its tick event, as the monitor reads it."""
    daemon = StreamDaemon(store, settings, IterableFeed([]), clock=lambda: clock.t, interval=0)
    assert daemon.process_bar(Bar(clock.t, {"AAA": 100.0}))
    ((_, event),) = store.read_ticks_after(None)
    assert event is not None
    return event


def test_a_flow_stamped_before_the_clock_read_and_committed_after_it_is_in_that_points_step(
    seeded_store: Store, settings: Settings, tmp_path: Path
) -> None:
    # Arrange: the sync read its clock half a second before the monitor did, and commits just after
    clock = RacingClock(WED)
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0)
    _step(seeded_store, settings, monitor, clock, refresh=False)
    clock.t += 60.0
    clock.armed, clock.lag = _withdraw(seeded_store, settings, tmp_path), -0.5

    # Act
    _step(seeded_store, settings, monitor, clock, refresh=False)
    clock.t += 60.0
    _step(seeded_store, settings, monitor, clock, refresh=False)

    # Assert
    _assert_no_phantom(seeded_store, settings, clock, WED + 59.5)


@pytest.mark.parametrize("vectorised", [True], ids=["vectorised"])  # the per-portfolio path does not WATCH there
def test_a_sync_racing_the_clock_read_is_in_the_right_step_on_a_redis_cluster(
    cluster_store: Store, settings: Settings, tmp_path: Path, vectorised: bool
) -> None:
    # Arrange: the same race on a cluster, where each slot's keys are WATCHed on a connection of their own
    import warmup

    warmup.seed(cluster_store, settings)
    clock = RacingClock(WED)
    monitor = Monitor(cluster_store, settings, clock=clock, idle_refresh_seconds=0, vectorised=vectorised)
    _step(cluster_store, settings, monitor, clock, refresh=False)
    clock.t += 60.0
    clock.armed = _withdraw(cluster_store, settings, tmp_path)

    # Act
    for _ in range(2):
        _step(cluster_store, settings, monitor, clock, refresh=False)
        clock.t += 60.0

    # Assert
    _assert_no_phantom(cluster_store, settings, clock, WED + 60.5)
    assert monitor.stats.ticks_redone == 1


def test_the_per_portfolio_path_on_a_cluster_opens_no_watch_connection_per_portfolio(
    cluster_store: Store, settings: Settings
) -> None:
    # Arrange: a per-slot WATCH of every portfolio's flow ledger was a round trip and a held connection each, every
    # tick (200 portfolios: 4x the tick time); on a cluster the per-portfolio path reads without it
    import warmup
    from logic.stamped_read import stamped_read

    warmup.seed(cluster_store, settings)
    monitor = Monitor(cluster_store, settings, idle_refresh_seconds=0, vectorised=False)
    tx = slot_transaction(cluster_store.client)

    # Act
    try:
        now, bundles = stamped_read(tx, lambda: 42.0, monitor._read_bundles, lambda: settings.portfolio_ids)
        watching = dict(tx._watching)
    finally:
        tx.reset()

    # Assert: the books read, the clock read once, nothing WATCHed
    assert now == 42.0 and set(bundles) == set(settings.portfolio_ids)
    assert not watching


def _sharing_monitor(
    store: Store, make_settings: Callable[..., Settings], *, latest_wins: bool, **options: Any
) -> tuple[Settings, RacingClock, Monitor]:
    """A seeded store and a monitor sharing the portfolios (``monitor.shard_portfolios``: no consumer group, its
    own cursor in the stream, logic/shards.py ``TickCursor``) that has snapshotted a first tick at ``WED``."""
    import warmup

    settings = make_settings({"monitor": {"shard_portfolios": True, "latest_wins": latest_wins}})
    warmup.seed(store, settings)
    clock = RacingClock(WED)
    monitor = Monitor(store, settings, clock=clock, idle_refresh_seconds=0, **options)
    _step(store, settings, monitor, clock, refresh=False)
    return settings, clock, monitor


@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "per-portfolio"])
def test_a_monitor_sharing_the_portfolios_redoes_the_tick_a_racing_sync_aborted(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path, vectorised: bool
) -> None:
    # Arrange: a monitor sharing the portfolios reads the stream with XREAD, no consumer group to keep the aborted
    # tick pending: its cursor had moved past it, the tick was dropped and the book showed the pre-flow equity
    # until the next tick (none comes here: Monitor.run waited for it)
    import threading

    settings, clock, monitor = _sharing_monitor(store, make_settings, latest_wins=True, vectorised=vectorised)
    clock.t += 60.0
    clock.armed = _withdraw(store, settings, tmp_path)
    guard = threading.Timer(30.0, monitor.stop)  # the old code never returned: stopped, it fails the asserts
    guard.start()

    # Act: the racing tick (Monitor.run until it has processed one more), and one more
    try:
        _step(store, settings, monitor, clock, refresh=False)
    finally:
        guard.cancel()
    assert (monitor.stats.ticks_redone, monitor.stats.ticks_processed, monitor.stats.store_errors) == (1, 2, 0)
    clock.t += 60.0
    _step(store, settings, monitor, clock, refresh=False)

    # Assert: the tick was read again and redone at once, at the clock read after the sync
    _assert_no_phantom(store, settings, clock, WED + 60.5)
    ts, *_ = _page(store, settings, clock)
    assert (ts - WED).tolist() == [0.0, 61.0, 121.0]


def test_a_sharing_monitor_taking_ticks_in_order_redoes_only_the_tick_a_racing_sync_aborted(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    # Arrange: every tick in order (latest_wins off); two ticks wait, and the sync races the second one's clock read
    settings, clock, monitor = _sharing_monitor(store, make_settings, latest_wins=False)
    withdraw = _withdraw(store, settings, tmp_path)
    ticks = iter([WED + 60.0, WED + 120.0])

    class SecondTickRaced(RacingClock):
        """The first waiting tick reads WED + 60, the second WED + 120 and the sync commits right after it."""

        def __call__(self) -> float:
            now = next(ticks, None)
            if now is None:
                return super().__call__()
            self.t = now
            if now == WED + 120.0:
                self.armed = withdraw
            return super().__call__()

    monitor.clock = clock = SecondTickRaced(WED)
    daemon = StreamDaemon(store, settings, IterableFeed([]), clock=lambda: clock.t, interval=0)
    assert daemon.process_bar(Bar(WED + 60.0, {"AAA": 100.0}))
    ms, seq = store.client.xrevrange(TICKS_KEY, count=1)[0][0].decode().split("-")
    store.client.xadd(TICKS_KEY, {"garbage": "x"}, id=f"{ms}-{int(seq) + 1}")  # between the ticks: does not decode
    assert daemon.process_bar(Bar(WED + 120.0, {"AAA": 100.0}))

    # Act: both ticks and the entry between them, read together; the second tick's WATCH aborts it, and it is redone
    # as Monitor.run does
    with pytest.raises(redis.WatchError):
        monitor.process_available()
    monitor._on_conflict()
    assert monitor.process_available() == 1

    # Assert: the second tick alone was redone, at the clock read after the sync; the first was written once and
    # the entry between them skipped once
    assert (monitor.stats.ticks_redone, monitor.stats.ticks_processed, monitor.stats.entries_skipped) == (1, 3, 1)
    snap = store.read_snapshot("main")
    assert snap is not None and snap["version"] == store.read_market_header().version  # the second tick's
    ts, *_ = _page(store, settings, clock)
    assert (ts - WED).tolist() == [0.0, 60.0, 121.0]
    clock.t += 60.0
    _step(store, settings, monitor, clock, refresh=False)
    ts, *_ = _page(store, settings, clock)
    assert (ts - WED).tolist() == [0.0, 60.0, 121.0, 181.0]
    _assert_no_phantom(store, settings, clock, WED + 120.5)


def test_a_sharing_monitor_redoing_the_newest_tick_counts_the_ticks_it_skipped_once(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    # Arrange: latest wins; two ticks wait, and the sync races the newest one's clock read
    settings, clock, monitor = _sharing_monitor(store, make_settings, latest_wins=True, batch_size=1)  # drained
    daemon = StreamDaemon(store, settings, IterableFeed([]), clock=lambda: clock.t, interval=0)
    for at in (WED + 30.0, WED + 60.0):
        assert daemon.process_bar(Bar(at, {"AAA": 100.0}))
    clock.t = WED + 60.0
    clock.armed = _withdraw(store, settings, tmp_path)

    # Act: both ticks read together; the newest one's WATCH aborts it, and it is redone as Monitor.run does
    with pytest.raises(redis.WatchError):
        monitor.process_available()
    monitor._on_conflict()
    assert monitor.process_available() == 1

    # Assert: the newest tick was redone once; the one it stands for is counted once, not once per attempt
    assert (monitor.stats.ticks_redone, monitor.stats.ticks_processed, monitor.stats.ticks_coalesced) == (1, 2, 1)
    snap = store.read_snapshot("main")
    assert snap is not None and snap["version"] == store.read_market_header().version
    assert store.read_heartbeat("monitor")["ticks_coalesced"] == "1"  # type: ignore[index]
