"""logic/monitor.py at scale: latest wins (a monitor behind the stream skips to the newest tick) and monitors
sharing the portfolios (logic/shards.py), with real daemons where it matters."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

import warmup
from engine.feeds import SimulatedFeed
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings
from engine.store import MONITOR_GROUP, TICKS_KEY, Store, TickEvent
from engine.store.keys import MONITORS_KEY
from engine.stream import StreamDaemon
from logic.alerts import build_alert_engine
from logic.monitor import Monitor
from logic.shards import Membership, newest_tick, owner, shard

from .conftest import TEST_CONFIG, merge
from .test_stream import daemon_env, spawn, stop_process, wait_for, write_config

TICKERS = ("AAA", "BBB", "CCC", "DDD")
BATCH = 50
"""Tick events a real monitor reads at a time (``--batch``) in the outrun test."""


def _books(count: int) -> list[dict[str, Any]]:
    return [
        {"id": f"p{k:03d}", "account_type": "cash", "cash": "1000000",
         "holdings": {TICKERS[k % 4]: 100 + k, TICKERS[(k + 1) % 4]: 50 + k}}
        for k in range(count)
    ]  # fmt: skip


def _config(**monitor: Any) -> dict[str, Any]:
    return merge(TEST_CONFIG, {"monitor": monitor})


def _sim_ticks(store: Store, settings: Settings, n: int, seed: int = 1) -> None:
    StreamDaemon(store, settings, SimulatedFeed.from_settings(settings, seed=seed), interval=0).run(ticks=n)


def _newest_version(store: Store) -> int:
    newest = store.client.xrevrange(TICKS_KEY, count=1)
    return int(newest[0][1][b"version"]) if newest else 0


def _snapshot_versions(store: Store, pids: list[str]) -> dict[str, int]:
    out = {}
    for pid in pids:
        snap = store.read_snapshot(pid)
        out[pid] = int(snap["version"]) if snap is not None else -1
    return out


# -- latest wins, in process ---------------------------------------------------------------------------------


def test_a_monitor_behind_the_stream_snapshots_only_the_newest_tick_and_counts_the_rest(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    # Arrange: 30 ticks wait; reads of 4 at a time (the monitor drains them all before choosing)
    settings = make_settings({"monitor": {"latest_wins": True}})
    warmup.seed(store, settings)
    monitor = Monitor(store, settings, batch_size=4, idle_refresh_seconds=0)
    store.ensure_tick_group(MONITOR_GROUP)
    _sim_ticks(store, settings, 30)

    # Act
    processed = monitor.process_available()

    # Assert: one snapshot, of the newest tick; the 29 others acknowledged and counted
    assert processed == 1
    assert monitor.stats.ticks_processed == 1 and monitor.stats.ticks_coalesced == 29
    for pid in settings.portfolio_ids:
        assert store.read_snapshot(pid)["version"] == 30  # type: ignore[index]
        assert [p["version"] for p in store.read_history(pid)] == [30]
    assert store.tick_group_pending() == 0
    assert store.read_heartbeat("monitor")["ticks_coalesced"] == "29"  # type: ignore[index]


def test_a_monitor_that_keeps_up_snapshots_every_tick(store: Store, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings({"monitor": {"latest_wins": True}})
    warmup.seed(store, settings)
    monitor = Monitor(store, settings, idle_refresh_seconds=0)
    store.ensure_tick_group(MONITOR_GROUP)
    for _ in range(5):
        _sim_ticks(store, settings, 1)
        assert monitor.process_available() == 1
    assert monitor.stats.ticks_coalesced == 0
    assert [p["version"] for p in store.read_history("main")] == [1, 2, 3, 4, 5]


def test_peaks_stay_exact_over_the_snapshots_written_when_ticks_are_coalesced(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    # Arrange: four bursts of 7 ticks, each coalesced into one snapshot
    settings = make_settings({"monitor": {"latest_wins": True}})
    warmup.seed(store, settings)
    store.ensure_tick_group(MONITOR_GROUP)
    monitor = Monitor(store, settings, idle_refresh_seconds=0)
    for _ in range(4):
        _sim_ticks(store, settings, 7)
        monitor.process_available()

    # Assert: the all-time peak is the highest equity of the snapshots written (the history keeps 15 digits)
    for pid in settings.portfolio_ids:
        equities = [p["equity"] for p in store.read_history(pid)]
        assert len(equities) == 4
        peaks = store.read_peaks(pid)
        assert peaks is not None and peaks.max_peak == pytest.approx(max(equities), rel=1e-13, abs=0)


def test_newest_tick_is_chosen_by_stream_id_counts_each_entry_once_and_carries_a_skipped_reset() -> None:
    def event(version: int, reset: bool = False) -> TickEvent:
        return TickEvent(version, 1.0, ("AAA",), np.array([100.0]), reset=reset)

    entries = [("5-0", event(3, reset=True)), ("10-1", event(5)), ("7-0", None), ("10-0", event(4)),
               ("5-0", event(3, reset=True))]  # fmt: skip
    newest_id, newest, older, unreadable = newest_tick(entries)
    assert newest_id == "10-1" and newest is not None and newest.version == 5 and newest.reset
    assert older == ["5-0", "10-0"] and unreadable == ["7-0"]
    assert newest_tick([("1-0", None)]) == (None, None, [], ["1-0"])


# -- sharing the portfolios, in process ----------------------------------------------------------------------


def test_rendezvous_owner_is_stable_and_moves_only_the_leaving_monitors_portfolios() -> None:
    pids = [f"p{k:03d}" for k in range(300)]
    three = {pid: owner(pid, ["a", "b", "c"]) for pid in pids}
    two = {pid: owner(pid, ["a", "c"]) for pid in pids}
    assert set(three.values()) == {"a", "b", "c"}
    assert all(two[pid] == three[pid] for pid in pids if three[pid] != "b")  # only b's portfolios move
    assert sorted(shard(pids, ["a", "b", "c"], "a") + shard(pids, ["a", "b", "c"], "b") +
                  shard(pids, ["a", "b", "c"], "c")) == pids  # fmt: skip


def test_two_monitors_sharing_the_portfolios_snapshot_each_one_once_and_take_over_a_silent_one(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    # Arrange: 12 portfolios, two sharing monitors that both beat now
    settings = make_settings({"portfolios": _books(12), "monitor": {"latest_wins": True, "shard_portfolios": True}})
    warmup.seed(store, settings)
    m1 = Monitor(store, settings, consumer="m1", idle_refresh_seconds=0, claim_idle_seconds=30)
    m2 = Monitor(store, settings, consumer="m2", idle_refresh_seconds=0, claim_idle_seconds=30)
    now = time.time()
    store.client.zadd(MONITORS_KEY, {"m1": now, "m2": now})
    _sim_ticks(store, settings, 1)

    # Act: both process the tick
    assert m1.process_available() == 1 and m2.process_available() == 1

    # Assert: every portfolio snapshotted once, by its owner
    pids = list(settings.portfolio_ids)
    mine = shard(pids, ["m1", "m2"], "m1")
    assert 0 < len(mine) < 12
    assert m1.stats.snapshots == len(mine) and m2.stats.snapshots == 12 - len(mine)
    assert set(_snapshot_versions(store, pids).values()) == {1}

    # Act: m2 falls silent (its last beat older than the claim time); the next tick goes to m1 alone
    store.client.zadd(MONITORS_KEY, {"m2": time.time() - 60})
    _sim_ticks(store, settings, 1)
    assert m1.process_available() == 1

    # Assert
    assert m1.stats.snapshots == len(mine) + 12
    assert set(_snapshot_versions(store, pids).values()) == {2}


def test_sharing_monitors_tick_the_alert_timers_of_their_own_shard_only(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    # Arrange: two sharing monitors, each with its alert engine (as python -m logic.monitor builds them)
    settings = make_settings({"portfolios": _books(12), "monitor": {"latest_wins": True, "shard_portfolios": True}})
    warmup.seed(store, settings)
    engines = [build_alert_engine(store, settings, time.time) for _ in range(2)]
    m1, m2 = (
        Monitor(store, settings, consumer=name, idle_refresh_seconds=0, claim_idle_seconds=30, alert_engine=engine)
        for name, engine in zip(("m1", "m2"), engines, strict=True)
    )  # fmt: skip
    pids = list(settings.portfolio_ids)
    assert [e.scope(pids) for e in engines] == [pids, pids]  # type: ignore[misc]  # before a tick: all of them
    now = time.time()
    store.client.zadd(MONITORS_KEY, {"m1": now, "m2": now})
    _sim_ticks(store, settings, 1)

    # Act
    assert m1.process_available() == 1 and m2.process_available() == 1

    # Assert: each engine's timers cover its monitor's shard; together every portfolio, once
    scopes = [e.scope(pids) for e in engines]  # type: ignore[misc]
    assert scopes == [shard(pids, ["m1", "m2"], "m1"), shard(pids, ["m1", "m2"], "m2")]
    assert sorted(scopes[0] + scopes[1]) == sorted(pids) and 0 < len(scopes[0]) < 12

    # Act: m2 falls silent and no tick comes; m1 beats while idle
    store.client.zadd(MONITORS_KEY, {"m2": time.time() - 60})
    m1._last_heartbeat = 0.0  # its heartbeat is due
    m1._idle()

    # Assert: m1's timers now cover every portfolio (m2's go stale with nobody else to say so)
    assert engines[0].scope(pids) == pids  # type: ignore[misc]


def test_beats_past_the_idle_limit_are_removed(store: Store) -> None:
    store.client.zadd(MONITORS_KEY, {"gone": time.time() - 100, "alive": time.time()})
    membership = Membership(store, "me", claim_seconds=5, idle_limit_seconds=50)
    live = membership.beat(time.time())
    assert live == ["alive", "me"]
    assert set(membership.members()) == {"alive", "me"}


def _stream_reads(store: Store) -> int:
    stats = store.client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("xread", "xrevrange"))


def test_a_sharing_monitor_started_before_the_first_tick_waits_for_it_and_snapshots_it(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    # Arrange: a seeded store whose tick stream is empty (the stream daemon not started yet); a sharing monitor
    # asked for the newest tick in a loop that never blocked: thousands of reads a second, a core of its own
    settings = make_settings({"portfolios": _books(4), "monitor": {"latest_wins": True, "shard_portfolios": True}})
    warmup.seed(store, settings)
    store.client.delete(TICKS_KEY)
    monitor = Monitor(store, settings, consumer="m1", idle_refresh_seconds=0)
    store.client.config_resetstat()
    runner = threading.Thread(target=monitor.run, kwargs={"block_ms": 200}, daemon=True)
    runner.start()

    # Act: a second with no tick, then the first tick
    try:
        time.sleep(1.0)
        idle_reads = _stream_reads(store)
        _sim_ticks(store, settings, 1)
        wait_for(lambda: set(_snapshot_versions(store, list(settings.portfolio_ids)).values()) == {1}, 20,
                 "the first tick's snapshots")  # fmt: skip
    finally:
        monitor.stop()
        runner.join(timeout=20)

    # Assert: the idle second was a few blocking reads (one per 200 ms, and the first), and the tick was taken
    assert 1 <= idle_reads <= 10
    assert not runner.is_alive() and monitor.stats.ticks_processed == 1


def test_a_sharing_monitor_redoes_a_tick_the_store_failed_once_it_answers_again(
    store: Store, redis_server: EmbeddedRedis, make_settings: Callable[..., Settings]
) -> None:
    # Arrange: the monitor's client gives up on a reply after 0.3 s; the server stalls for 1 s just as the monitor
    # reads the tick's books (a first tick creating a thousand portfolios' history rings blocked Redis past the
    # socket timeout: the tick was dropped and its snapshots waited for the next one, which in a quiet market or a
    # benchmark never came)
    settings = make_settings({"portfolios": _books(4), "monitor": {"latest_wins": True, "shard_portfolios": True}})
    warmup.seed(store, settings)
    impatient = Store(redis.Redis.from_url(redis_server.url, socket_timeout=0.3))
    stalls: list[threading.Thread] = []

    def clock() -> float:  # read once per tick, after the WATCH and before the books (logic/batch_tick.py)
        if not stalls:
            stall = threading.Thread(target=lambda: store.client.execute_command("DEBUG", "SLEEP", "1"))
            stalls.append(stall)
            stall.start()
            time.sleep(0.1)  # the stall has begun
        return time.time()

    monitor = Monitor(impatient, settings, clock=clock, consumer="m1", idle_refresh_seconds=0)
    _sim_ticks(store, settings, 1)
    guard = threading.Timer(30.0, monitor.stop)  # the old code waited for a next tick: stopped, it fails below
    guard.start()

    # Act
    try:
        monitor.run(max_ticks=1, block_ms=50)
    finally:
        guard.cancel()
        for stall in stalls:
            stall.join(timeout=10)
        impatient.client.close()

    # Assert: one store failure, then the same tick snapshotted
    assert (monitor.stats.store_errors, monitor.stats.ticks_processed) == (1, 1)
    assert set(_snapshot_versions(store, list(settings.portfolio_ids)).values()) == {1}


# -- real daemons ----------------------------------------------------------------------------------------------


@pytest.fixture
def many_portfolios(store: Store, make_settings: Callable[..., Settings]) -> tuple[Store, Settings]:
    settings = make_settings({"portfolios": _books(300)})
    warmup.seed(store, settings)
    return store, settings


def test_a_real_monitor_outrun_by_the_stream_ends_on_the_newest_tick_and_counts_the_skipped_ones(
    many_portfolios: tuple[Store, Settings], redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    # Arrange: 300 portfolios; the stream writes 300 ticks as fast as it can, 100 of them before the monitor starts
    store, _ = many_portfolios
    config = merge(_config(latest_wins=True), {"portfolios": _books(300)})
    env = daemon_env(redis_server.url, write_config(tmp_path, config))
    store.ensure_tick_group(MONITOR_GROUP)
    stream = spawn("engine.stream", ["--interval", "0.002", "--ticks", "300", "--seed", "3"], env, tmp_path / "s.log")
    monitor = None
    pending: list[int] = []  # the monitor's backlog (delivered, not acknowledged), sampled while it runs
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            pending.append(store.tick_group_pending())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        wait_for(lambda: _newest_version(store) >= 100, 120, "100 ticks written")
        monitor = spawn("logic.monitor", ["--consumer", "m", "--idle-refresh", "0", "--batch", str(BATCH),
                                          "--no-alerts"], env, tmp_path / "m.log")  # fmt: skip
        sampler.start()
        assert stream.wait(timeout=300) == 0, (tmp_path / "s.log").read_text()[-2000:]

        # Assert: the monitor ends on the newest tick (or the one before) with nothing left waiting, and every
        # tick it did not snapshot is counted as coalesced
        def caught_up() -> bool:
            hb = store.read_heartbeat("monitor") or {}
            done = int(hb.get("ticks_processed", 0)) + int(hb.get("ticks_coalesced", 0))
            return done == 300 and store.tick_group_pending() == 0

        wait_for(caught_up, 120, "the monitor has taken every tick")
        sampling.set()
        sampler.join(timeout=10)
        # the backlog never exceeds one batch (and the newest tick, pending until its snapshots are written)
        # although 100 ticks waited at its start and more kept coming; the samples saw it at work
        assert len(pending) > 10 and max(pending) <= BATCH + 1, (len(pending), max(pending, default=None))
        hb = store.read_heartbeat("monitor") or {}
        assert int(hb["ticks_coalesced"]) >= 99  # at least the 100 waiting at its start but one
        assert int(hb["ticks_processed"]) < 300 - 99
        versions = _snapshot_versions(store, ["p000", "p150", "p299"])
        assert min(versions.values()) >= 299
        group = next(g for g in store.client.xinfo_groups(TICKS_KEY) if g["name"] == MONITOR_GROUP.encode())
        newest_id = store.client.xrevrange(TICKS_KEY, count=1)[0][0]
        assert group["last-delivered-id"] == newest_id  # nothing left undelivered
    finally:
        sampling.set()
        stop_process(stream)
        if monitor is not None:
            stop_process(monitor)


def test_two_real_sharing_monitors_survive_kill_9_of_one_without_losing_a_portfolio(
    many_portfolios: tuple[Store, Settings], redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    # Arrange: two monitors share 300 portfolios; the stream ticks every 50 ms
    store, settings = many_portfolios
    config = merge(
        _config(latest_wins=True, shard_portfolios=True, consumer_idle_limit_seconds=4.0), {"portfolios": _books(300)}
    )
    env = daemon_env(redis_server.url, write_config(tmp_path, config))
    args = ["--idle-refresh", "0", "--claim-idle", "2", "--no-alerts"]
    a = spawn("logic.monitor", ["--consumer", "a", *args], env, tmp_path / "a.log")
    b = spawn("logic.monitor", ["--consumer", "b", *args], env, tmp_path / "b.log")
    stream = spawn("engine.stream", ["--interval", "0.05", "--seed", "3"], env, tmp_path / "s.log")
    pids = list(settings.portfolio_ids)
    b_shard = shard(pids, ["a", "b"], "b")
    try:
        wait_for(lambda: {"a", "b"} <= set(Membership(store, "t", 2, 60).members()), 120, "both monitors beat")
        # both shards are snapshotted while both run
        start = _newest_version(store)
        wait_for(lambda: min(_snapshot_versions(store, pids).values()) > start, 120, "every portfolio snapshotted")

        # Act: kill -9 b by its pid
        os.kill(b.pid, signal.SIGKILL)
        b.wait(timeout=30)
        killed_at = _newest_version(store)

        # Assert: b's portfolios get snapshots of ticks after the kill (a takes them over after the claim time)
        wait_for(lambda: min(_snapshot_versions(store, b_shard).values()) > killed_at, 120, "b's shard taken over")
        assert min(_snapshot_versions(store, pids).values()) > killed_at
        # and b's beat is removed after the idle limit
        wait_for(lambda: "b" not in Membership(store, "t", 2, 60).members(), 60, "b removed from the monitors")
    finally:
        stop_process(stream)
        stop_process(a)
        if b.poll() is None:
            b.kill()
    assert b.returncode == -signal.SIGKILL
    assert 0 < len(b_shard) < 300
