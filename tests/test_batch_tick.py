"""The vectorised tick (logic/batch_tick.py, logic/batch_book.py, engine/store/tick_state.py) against the
per-portfolio reference path, over many ticks: the same snapshots, peaks, excursions, history points and tier
buckets, through day and week changes, trades that open, close and flip positions, and monitors of both kinds
taking turns on one store (each must load what the other merged)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import redis

import warmup
from engine import book, reload
from engine.errors import StoreError
from engine.feeds import SimulatedFeed
from engine.records import Position
from engine.settings import Settings
from engine.store import MONITOR_GROUP, TICKS_KEY, PortfolioKeys, Store
from engine.store.codec import EXCURSION_DTYPE, decode_excursion
from engine.store.history import OWNER_FIELD, tier_resolution_ms
from engine.store.tick_state import TickState
from engine.stream import StreamDaemon
from logic.monitor import Monitor
from tests.test_batch import RTOL, _numbers, _random_settings

START = 1_800_000_000.0 - 1_800_000_000.0 % 604_800 + 4 * 86_400 + 15 * 3600.0
"""A Monday 15:00 UTC (1970-01-01 was a Thursday: +4 days is a Monday)."""
STEPS = (5 * 3600.0, 0.4, 0.4, 4.0, -3.0, 25.0, 400.0, -4 * 3600.0, 3600.0)
"""Seconds between ticks, in turn: several ticks share a bucket of every tier, two are dated before the tick
before them (a late tick, and one 4 h back into buckets the rings still hold, into the previous day at times),
and days change within a run."""


class Steps:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def _trade(store: Store, tick: int, tickers: list[str]) -> None:
    """Change some books the same way in both stores: open a new ticker, close or remove one, flip a side."""
    pid = f"p{tick % 18:02d}"
    positions = store.read_portfolio(pid).positions
    held = sorted(t for t, p in positions.items() if p.qty != 0)
    if tick % 3 == 0:
        new = next(t for t in tickers if t not in positions)
        store.write_position(pid, new, Position(int(100 + tick), Decimal("50")))
    elif tick % 3 == 1 and held:  # closed: kept flat with its realized P&L, or removed
        store.write_position(pid, held[0], None if (tick // 4) % 2 else Position(0, Decimal("0"), Decimal("12.5")))
    elif held:
        old = positions[held[-1]]
        store.write_position(pid, held[-1], Position(-old.qty, old.avg_price, old.realized_pnl))


def _assert_same_snapshot(got: dict[str, Any], want: dict[str, Any], where: str) -> None:
    g, w = _numbers(got), _numbers(want)
    assert g.keys() == w.keys(), where
    for path, value in w.items():
        if isinstance(value, float) and isinstance(g[path], float):
            assert math.isclose(g[path], value, rel_tol=RTOL, abs_tol=1e-9), (where, path, g[path], value)
        else:
            assert g[path] == value, (where, path, g[path], value)


def _assert_same_state(fast: Store, loop: Store, pids: list[str], settings: Settings, *, history: bool = True) -> None:
    for pid in pids:
        _assert_same_snapshot(fast.read_snapshot(pid) or {}, loop.read_snapshot(pid) or {}, pid)
        a, b = fast.read_peaks(pid), loop.read_peaks(pid)
        assert a is not None and b is not None
        assert (a.day, a.week) == (b.day, b.week), pid
        for name in ("day_open", "day_peak", "week_peak", "max_peak", "max_drawdown"):
            assert math.isclose(getattr(a, name), getattr(b, name), rel_tol=RTOL, abs_tol=1e-12), (pid, name)
        ma, mb = fast.read_marks(pid), loop.read_marks(pid)
        assert ma.keys() == mb.keys(), pid
        for t in ma:
            assert ma[t].side == mb[t].side, (pid, t)
            assert math.isclose(ma[t].mfe, mb[t].mfe, rel_tol=RTOL, abs_tol=1e-6), (pid, t)
            assert math.isclose(ma[t].mae, mb[t].mae, rel_tol=RTOL, abs_tol=1e-6), (pid, t)
        if not history:  # a tick redone after a partial write has one more point for the portfolios written
            continue
        ha, hb = fast.read_history(pid), loop.read_history(pid)
        assert [p["id"] for p in ha] == [p["id"] for p in hb], pid
        for pa, pb in zip(ha, hb, strict=True):
            for name, value in pb.items():
                if isinstance(value, float):
                    assert math.isclose(pa[name], value, rel_tol=RTOL, abs_tol=1e-9), (pid, name)
                else:
                    assert pa[name] == value, (pid, name)
        for tier in settings.history.tiers:
            ra, rb = fast.read_tier_rows(pid, tier), loop.read_tier_rows(pid, tier)
            assert len(ra) == len(rb) > 0, (pid, tier)
            for name in ra.dtype.names or ():
                np.testing.assert_allclose(ra[name], rb[name], rtol=1e-6, atol=1e-6, err_msg=f"{pid} {name}")
            key = PortfolioKeys(pid).history_tier(tier_resolution_ms(tier))  # the headers: the same bytes
            assert fast.client.getrange(key, 0, 15) == loop.client.getrange(key, 0, 15), (pid, tier)


def _seeded_monitor(store: Store, make_settings: Callable[..., Settings]) -> tuple[Settings, Steps, Monitor]:
    """The random books of seed 5 in ``store`` and a vectorised monitor of them on a stepped clock."""
    settings = _random_settings(make_settings, seed=5)
    warmup.seed(store, settings, now=START)
    clock = Steps()
    return settings, clock, Monitor(store, settings, clock, consumer="fast", idle_refresh_seconds=0)


def _paired_monitors(
    stores: tuple[Store, Store], settings: Settings, *, chunk: int | None = None, now: float = START
) -> tuple[Steps, Monitor, Monitor]:
    """``settings`` seeded in both ``stores`` at ``now``, a stepped clock, a vectorised monitor of the first (in
    lanes of ``chunk`` portfolios when given) and the per-portfolio reference monitor of the second."""
    for s in stores:
        warmup.seed(s, settings, now=now)
    clock = Steps()
    fast = Monitor(stores[0], settings, clock, consumer="fast", idle_refresh_seconds=0)
    loop = Monitor(stores[1], settings, clock, consumer="loop", idle_refresh_seconds=0, vectorised=False)
    if chunk is not None:
        assert fast.fast is not None
        fast.fast.chunk_portfolios = chunk
    return clock, fast, loop


def _run(settings: Settings, stores: list[Store], monitors: Callable[[int], list[Monitor]], clock: Steps, ticks: int,
         tickers: list[str], *, before: Callable[[int], None] | None = None,
         after: Callable[[int], None] | None = None) -> None:  # fmt: skip
    """``ticks`` bars into every store, a trade every fourth tick; ``before(tick)`` runs before the monitors of the
    tick, ``after(tick)`` once they snapshotted it."""
    daemons = [StreamDaemon(s, settings, iter(()), clock=clock, interval=0) for s in stores]  # type: ignore[arg-type]
    feeds = [iter(SimulatedFeed.from_settings(settings, seed=3)) for _ in stores]
    for tick in range(ticks):
        clock.now += STEPS[tick % len(STEPS)]
        for daemon, feed in zip(daemons, feeds, strict=True):
            daemon.process_bar(next(feed))
        if tick % 4 == 2:
            for s in stores:
                _trade(s, tick, tickers)
        if before is not None:
            before(tick)
        for monitor in monitors(tick):
            assert monitor.process_available() == 1
        if after is not None:
            after(tick)


def _ticked_in_lanes_of_5(
    stores: tuple[Store, Store], make_settings: Callable[..., Settings]
) -> tuple[Settings, Steps, Monitor, Monitor, list[str]]:
    """Random books (seed 5) in both ``stores``, the vectorised monitor in lanes of 5 portfolios and the
    reference, both three ticks in (:func:`_run`): the settings, the clock, both monitors and the tickers."""
    settings = _random_settings(make_settings, seed=5)
    clock, fast, loop = _paired_monitors(stores, settings, chunk=5)
    tickers = list(settings.universe.assets)
    _run(settings, list(stores), lambda _: [fast, loop], clock, 3, tickers)
    return settings, clock, fast, loop, tickers


@pytest.mark.parametrize("chunk", [250, 5])
def test_the_vectorised_tick_writes_what_the_per_portfolio_scripts_write(
    two_stores: tuple[Store, Store], make_settings: Callable[..., Settings], chunk: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Arrange: the same random books in two databases, one monitor of each kind; the vectorised one writes
    # its 18 portfolios in one transaction, or in four pipelined ones (5 portfolios each at most)
    fast_store, loop_store = two_stores
    settings = _random_settings(make_settings, seed=5)
    clock, fast, loop = _paired_monitors(two_stores, settings, chunk=chunk)
    tickers = list(settings.universe.assets)
    late: set[int] = set()
    slots_needed = TickState.slots_needed

    def spy(self: TickState, ms: int) -> Any:  # every lane's
        needed = slots_needed(self, ms)
        if needed.any():
            late.add(ms)
        return needed

    monkeypatch.setattr(TickState, "slots_needed", spy)

    # Act: 40 ticks over about a day and a half, trades every fourth
    _run(settings, [fast_store, loop_store], lambda _: [fast, loop], clock, 40, tickers)

    # Assert: the same stored state; the monitors saw the same errors
    pids = fast_store.portfolio_ids()
    _assert_same_state(fast_store, loop_store, pids, settings)
    assert fast.stats.portfolio_errors == loop.stats.portfolio_errors
    times = np.cumsum([STEPS[t % len(STEPS)] for t in range(40)])
    late_ticks = [t for t in range(1, 40) if times[t] < times[:t].max()]
    assert len(late) == len(late_ticks) > 0  # each tick dated before the newest read its buckets' slots again
    peaks = fast_store.read_peaks(pids[0])
    assert peaks is not None and peaks.day != warmup_day(START)  # the run crossed a day


def warmup_day(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).date().isoformat()


def test_monitors_of_both_kinds_taking_turns_lose_nothing(
    two_stores: tuple[Store, Store], make_settings: Callable[..., Settings]
) -> None:
    # Arrange: store A is monitored by a vectorised and a per-portfolio monitor in turns (irregularly), store B
    # by the per-portfolio one alone
    mixed_store, loop_store = two_stores
    settings = _random_settings(make_settings, seed=9)
    for s in two_stores:
        warmup.seed(s, settings, now=START)
    clock = Steps()
    fast = Monitor(mixed_store, settings, clock, consumer="fast", idle_refresh_seconds=0)
    other = Monitor(mixed_store, settings, clock, consumer="other", idle_refresh_seconds=0, vectorised=False)
    second = Monitor(mixed_store, settings, clock, consumer="second", idle_refresh_seconds=0)
    loop = Monitor(loop_store, settings, clock, consumer="loop", idle_refresh_seconds=0, vectorised=False)
    turns = [fast, fast, other, fast, second, second, fast, other, other, fast]
    tickers = list(settings.universe.assets)

    # Act
    _run(settings, [mixed_store, loop_store], lambda tick: [turns[tick % len(turns)], loop], clock, 30, tickers)

    # Assert: every merge of every monitor is in the store, as if one monitor had done them all
    _assert_same_state(mixed_store, loop_store, mixed_store.portfolio_ids(), settings)
    stamp = mixed_store.client.hget(PortfolioKeys("p01").peaks, OWNER_FIELD)
    assert stamp.startswith(fast.fast.token.encode())  # type: ignore[union-attr]  # the last tick was the fast one's


def test_both_paths_agree_across_closes_after_hours_ticks_a_capital_flow_and_a_market_reload(
    two_stores: tuple[Store, Store], make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    # Arrange: the same random books in two stores on the XNYS calendar, one monitor of each kind
    fast_store, loop_store = two_stores
    settings = _random_settings(make_settings, seed=11)
    assert settings.market.calendar == "XNYS"
    ny = ZoneInfo("America/New_York")
    times = [datetime(2024, 3, *when, tzinfo=ny).timestamp() for when in (
        (8, 15, 0), (8, 15, 59, 30), (8, 16, 0, 0), (8, 16, 0, 1), (8, 19, 0), (11, 7, 0), (11, 9, 29, 59),
        (11, 9, 30, 0), (11, 9, 30, 30), (11, 12, 0), (11, 16, 0), (12, 8, 0), (12, 9, 30, 5), (12, 10, 0),
        (11, 15, 0), (12, 10, 5),  # a late tick of Monday's session, then Tuesday again
    )]  # fmt: skip
    clock, fast, loop = _paired_monitors(two_stores, settings, chunk=5, now=times[0] - 60)
    daemons = [StreamDaemon(s, settings, iter(()), clock=clock, interval=0) for s in two_stores]  # type: ignore[arg-type]
    feeds = [iter(SimulatedFeed.from_settings(settings, seed=4)) for _ in two_stores]
    tickers = list(settings.universe.assets)
    pid = "p04"
    held = sorted(t for t, p in fast_store.read_portfolio(pid).positions.items() if p.qty != 0)
    assert held

    # Act: a tick at each time; the back office withdraws cash and transfers shares of p04 out on Monday
    # before the open, and the market model is reloaded (the same prices) at Monday noon
    for k, t in enumerate(times):
        clock.now = t
        for daemon, feed in zip(daemons, feeds, strict=True):
            assert daemon.process_bar(next(feed))
        if k % 4 == 1:
            for s in two_stores:
                _trade(s, k, tickers)
        if k == 5:
            for s in two_stores:
                state = s.read_portfolio(pid)
                position = state.positions[held[0]]
                rows = [f"{pid},{ticker},{p.qty if ticker != held[0] else p.qty // 2},{p.avg_price},,"
                        for ticker, p in state.positions.items() if p.qty != 0]  # fmt: skip
                path = tmp_path / "book.csv"
                path.write_text("portfolio_id,ticker,qty,avg_price,account_type,cash\n" + "\n".join(rows)
                                + f"\n{pid},,,,,{state.cash - Decimal('12345.67')}\n")  # fmt: skip
                book.sync(s, settings, book.read_book(path, tickers), dry_run=False, create=False, now=t,
                          actor="backoffice", out=lambda _line: None)  # fmt: skip
                assert s.read_portfolio(pid).positions[held[0]].qty == position.qty // 2
        if k == 9:
            for s in two_stores:
                market = s.read_market()
                reload.reload_market(s, settings, market.tickers, market.prices, market.cov, now=t, actor="ops",
                                     detail={})  # fmt: skip
        for monitor in (fast, loop):
            assert monitor.process_available() == 1

    # Assert: the same stored state, the close and the last equity seen too
    pids = fast_store.portfolio_ids()
    _assert_same_state(fast_store, loop_store, pids, settings)
    for p in pids:
        got = [fast_store.client.hget(PortfolioKeys(p).peaks, f) for f in ("last", "close")]
        want = [loop_store.client.hget(PortfolioKeys(p).peaks, f) for f in ("last", "close")]
        assert [float(v or "nan") for v in got] == pytest.approx([float(v or "nan") for v in want], rel=RTOL), p
    peaks = fast_store.read_peaks(pid)
    assert peaks is not None and peaks.day == "2024-03-12"
    flows = [r for _, r in fast_store.client.xrange(PortfolioKeys(pid).audit) if b"capital_flow" in r[b"json"]]
    assert len(flows) == 1


def test_a_portfolio_whose_monitor_state_is_corrupt_is_skipped_and_left_as_it_is(
    two_stores: tuple[Store, Store], make_settings: Callable[..., Settings]
) -> None:
    # Arrange: one snapshot of every portfolio, then a corrupt excursion record in p03's marks
    store = two_stores[0]
    settings, clock, monitor = _seeded_monitor(store, make_settings)
    monitor.refresh()
    marks_key = PortfolioKeys("p03").marks
    store.client.hset(marks_key, "T00", "not json")
    other = Monitor(store, settings, clock, consumer="other", idle_refresh_seconds=0)  # loads every portfolio
    before = {k: store.client.dump(k) for k in (marks_key, PortfolioKeys("p03").peaks, PortfolioKeys("p03").snapshot)}
    errors = other.stats.portfolio_errors

    # Act
    clock.now += 1.0
    snapshots = other.refresh()

    # Assert: p03 has no snapshot and an error; its stored state is exactly as it was; the others are written
    assert "p03" not in snapshots and len(snapshots) == len(store.portfolio_ids()) - 1
    assert other.stats.portfolio_errors == errors + 1
    assert {k: store.client.dump(k) for k in before} == before

    # Act: the record repaired, the next tick snapshots p03 again
    store.client.hdel(marks_key, "T00")
    clock.now += 1.0
    assert "p03" in other.refresh()


@pytest.mark.parametrize("stamped", [True, False], ids=["owner-stamp-changed", "owner-stamp-left-alone"])
def test_a_corrupt_peaks_hash_refuses_the_portfolio_in_both_paths_and_after_its_repair_they_agree(
    two_stores: tuple[Store, Store], make_settings: Callable[..., Settings], stamped: bool
) -> None:
    # Arrange: both paths over the same ticks and trades; p11's peaks hash corrupt in both stores for three ticks,
    # by a write that stamps it (the vectorised monitor loads it before the tick) or one that leaves the stamp of
    # the monitor that holds it in memory (found by the check that runs while the first lane is computed)
    fast_store, loop_store = two_stores
    settings = _random_settings(make_settings, seed=5)
    clock, fast, loop = _paired_monitors(two_stores, settings, chunk=5)
    tickers = list(settings.universe.assets)
    pids = fast_store.portfolio_ids()
    peaks, marks = PortfolioKeys("p11").peaks, PortfolioKeys("p11").marks
    frozen: dict[int, bytes | None] = {}

    def corrupt_and_repair(tick: int) -> None:
        if tick == 3:
            for s in two_stores:
                s.client.hset(peaks, mapping={"max_dd": "garbage", **({"owner": "someone"} if stamped else {})})
            frozen.update({id(s): s.client.dump(marks) for s in two_stores})
        if tick == 6:
            for s in two_stores:
                s.client.hset(peaks, "max_dd", "-0.01")

    def compare(tick: int) -> None:
        corrupt = 3 <= tick < 6
        _assert_same_state(fast_store, loop_store, [p for p in pids if not (corrupt and p == "p11")], settings)
        if corrupt:
            assert {id(s): s.client.dump(marks) for s in two_stores} == frozen, tick

    # Act / Assert: every tick, the portfolios not refused equal the reference; p11's marks stay as they were in
    # both stores while its hash is corrupt (no snapshot, no merge); after the repair everything equals again
    _run(settings, list(two_stores), lambda _: [fast, loop], clock, 10, tickers, before=corrupt_and_repair,
         after=compare)  # fmt: skip
    assert fast.stats.portfolio_errors == loop.stats.portfolio_errors == 3
    assert len(fast.fast.lanes) > 1 and fast.stats.ticks_redone == 0  # refused in the tick itself, no redo


def test_a_peaks_hash_repaired_between_the_check_and_the_load_is_redone_and_snapshotted(
    two_stores: tuple[Store, Store], make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: both paths ticked; p11's peaks hash then corrupt in the vectorised monitor's store, by a write that
    # leaves its owner stamp, and repaired after the monitor's check found it and before its lane loads it
    fast_store, loop_store = two_stores
    settings, clock, fast, loop, tickers = _ticked_in_lanes_of_5(two_stores, make_settings)
    peaks = PortfolioKeys("p11").peaks
    good = fast_store.client.hget(peaks, "max_dd")
    fast_store.client.hset(peaks, "max_dd", "garbage")
    load = TickState.load
    loaded: list[list[str]] = []

    def repair_first(self: TickState, rows: Any, *args: Any, **kwargs: Any) -> Any:
        if rows.size:  # a lane's load of the rows it must read (the first: the check's)
            loaded.append([self.pids[p] for p in rows.tolist()])
            fast_store.client.hset(peaks, "max_dd", good)
        return load(self, rows, *args, **kwargs)

    monkeypatch.setattr(TickState, "load", repair_first)
    errors = fast.stats.portfolio_errors

    # Act: the next tick, then its redo (what Monitor.run does on the conflict)
    with pytest.raises(redis.WatchError):
        _run(settings, [fast_store, loop_store], lambda _: [fast, loop], clock, 1, tickers)
    fast._on_conflict()
    assert fast.process_available() == 1
    assert loop.process_available() == 1  # the reference (its turn came after the vectorised monitor's)

    # Assert: the check's load found p11 usable again: left out of its lane's write and redone (loaded again, as
    # another writer's portfolio is), no error; every portfolio then equals the per-portfolio path's
    assert loaded[0] == ["p11"] and ["p11"] in loaded[1:]
    assert (fast.stats.portfolio_errors, fast.stats.ticks_redone) == (errors, 1)
    _assert_same_state(fast_store, loop_store, fast_store.portfolio_ids(), settings)


def test_a_lane_that_fails_mid_way_still_reports_the_errors_it_found(
    two_stores: tuple[Store, Store], make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: p02's live limits unreadable (a key of the wrong type); the next tick's snapshots fail to build
    # once (after p02's lane found its error, before the lane learns which rows the peaks check refused)
    import logic.batch_tick as batch_tick

    store = two_stores[0]
    settings = _random_settings(make_settings, seed=5)
    clock, fast, _ = _paired_monitors(two_stores, settings, chunk=5)
    _run(settings, [store], lambda _: [fast], clock, 2, list(settings.universe.assets))
    store.client.delete(PortfolioKeys("p02").limits)
    store.client.set(PortfolioKeys("p02").limits, "not a hash")
    build = batch_tick.build_snapshots
    failed: list[bool] = []

    def fail_once(*args: Any, **kwargs: Any) -> Any:
        if not failed:
            failed.append(True)
            raise redis.ConnectionError("lost the connection")
        return build(*args, **kwargs)

    monkeypatch.setattr(batch_tick, "build_snapshots", fail_once)
    errors = fast.stats.portfolio_errors

    # Act: the tick fails (p02's lane is the first)
    with pytest.raises(redis.ConnectionError):
        _run(settings, [store], lambda _: [fast], clock, 1, list(settings.universe.assets))

    # Assert: p02's error was reported all the same, once
    assert fast.stats.portfolio_errors == errors + 1


@pytest.mark.parametrize("also", ["a late point", "unreadable live limits"])
def test_a_corrupt_peaks_hash_is_reported_once_whatever_else_the_tick_meets(
    two_stores: tuple[Store, Store], make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch,
    also: str,
) -> None:  # fmt: skip
    # Arrange: both paths ticked; p11's peaks hash then corrupt in both stores by a write that leaves its owner
    # stamp; and either the next tick's point is late for p11 (its buckets' slots are read: the lane loads p11
    # anyway) or p11's live limits are unreadable (a key of the wrong type)
    fast_store, loop_store = two_stores
    settings, clock, fast, loop, tickers = _ticked_in_lanes_of_5(two_stores, make_settings)
    for s in two_stores:
        s.client.hset(PortfolioKeys("p11").peaks, "max_dd", "garbage")
    if also == "a late point":
        needed = TickState.slots_needed
        monkeypatch.setattr(
            TickState, "slots_needed", lambda self, ms: needed(self, ms) | (np.array(self.pids) == "p11")
        )
    else:
        for s in two_stores:
            s.client.delete(PortfolioKeys("p11").limits)
            s.client.set(PortfolioKeys("p11").limits, "not a hash")
    errors = fast.stats.portfolio_errors
    before = {k: fast_store.client.dump(k) for k in (PortfolioKeys("p11").peaks, PortfolioKeys("p11").marks)}

    # Act
    _run(settings, [fast_store, loop_store], lambda _: [fast, loop], clock, 1, tickers)

    # Assert: one error for p11 (its refusal, as when the load alone meets it), in the tick itself (no redo);
    # nothing of it written; the other portfolios equal the per-portfolio path's
    assert (fast.stats.portfolio_errors, fast.stats.ticks_redone) == (errors + 1, 0)
    assert {k: fast_store.client.dump(k) for k in before} == before
    others = [p for p in fast_store.portfolio_ids() if p != "p11"]
    _assert_same_state(fast_store, loop_store, others, settings)


def test_a_conflict_in_one_range_leaves_the_tick_unacknowledged_and_the_redo_loses_nothing(
    two_stores: tuple[Store, Store], make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: the vectorised monitor writes in ranges of 5 portfolios; while it computes one tick, another
    # writer merges p12's peaks (the third range); the per-portfolio monitor on the other store is the reference
    fast_store, loop_store = two_stores
    settings, clock, fast, loop, tickers = _ticked_in_lanes_of_5(two_stores, make_settings)
    prepare = TickState.prepare
    interfered: list[bool] = []

    def interfere(self: TickState, *args: Any, **kwargs: Any) -> Any:
        if not interfered:  # every owner stamp is read by now (the reads come first)
            interfered.append(True)
            for s in two_stores:  # the same merge in both stores: the reference sees it too
                s.update_peaks("p12", 1.0, "2099-01-01", "2099-01-01")
        return prepare(self, *args, **kwargs)

    monkeypatch.setattr(TickState, "prepare", interfere)
    daemons = [StreamDaemon(s, settings, iter(()), clock=clock, interval=0) for s in two_stores]  # type: ignore[arg-type]
    feeds = [iter(SimulatedFeed.from_settings(settings, seed=3)) for _ in two_stores]
    for _ in range(3):  # the bars already written
        for feed in feeds:
            next(feed)
    clock.now += 1.0
    for daemon, feed in zip(daemons, feeds, strict=True):
        daemon.process_bar(next(feed))

    # Act: the tick fails on the conflict; then the same tick is processed again, undisturbed
    with pytest.raises(redis.WatchError) as failed:
        fast.process_available()
    assert not isinstance(failed.value, StoreError)
    loads: list[int] = []  # rows each lane loads again: only p12's lane has a portfolio another writer touched
    load = TickState.load

    def counted(self: TickState, rows: Any, *args: Any, **kwargs: Any) -> Any:
        loads.append(len(rows))
        return load(self, rows, *args, **kwargs)

    monkeypatch.setattr(TickState, "load", counted)
    fast._on_conflict()  # what Monitor.run does with it: no store failure; read the pending tick again first
    pending = fast_store.client.xpending(TICKS_KEY, MONITOR_GROUP)
    versions = {pid: (fast_store.read_snapshot(pid) or {}).get("version") for pid in ("p00", "p12", "p17")}
    monkeypatch.setattr(TickState, "prepare", prepare)
    assert fast.process_available() == 1
    assert loop.process_available() == 1
    # the redo computes p12 alone (every other portfolio committed the tick), loading p12 alone: nothing dropped
    assert len(fast.fast.lanes) > 1 and loads == [1]
    assert (fast.stats.ticks_redone, fast.stats.store_errors) == (1, 0)

    # Assert: the failed tick was left pending, then done once; p12 has both merges; everything equals the reference
    assert pending["pending"] == 1
    newest = fast_store.read_market_header().version
    # every range but p12's committed (the last one too: the acknowledgement has a MULTI of its own)
    assert versions["p00"] == versions["p17"] == newest and versions["p12"] == newest - 1
    assert fast_store.client.xpending(TICKS_KEY, MONITOR_GROUP)["pending"] == 0
    # the history too: the lanes committed were not written again (no second point of the tick)
    _assert_same_state(fast_store, loop_store, fast_store.portfolio_ids(), settings)
    peaks = fast_store.read_peaks("p12")
    assert peaks is not None and peaks.day == "2099-01-01"
    # and the ticks after it (p12 loaded again by its own lane: the redo wrote it from a lane of its own) too
    for tick in range(2):
        clock.now += 1.0
        for daemon, feed in zip(daemons, feeds, strict=True):
            daemon.process_bar(next(feed))
        if tick == 1:
            for s in two_stores:
                _trade(s, 2, tickers)
        assert fast.process_available() == 1
        assert loop.process_available() == 1
    _assert_same_state(fast_store, loop_store, fast_store.portfolio_ids(), settings)


def test_an_excursion_record_of_an_older_store_in_json_merges_the_same_in_both_paths_and_is_rewritten_packed(
    two_stores: tuple[Store, Store], make_settings: Callable[..., Settings]
) -> None:
    # Arrange: two ticks of each kind; then every stored excursion of p02 replaced by its older JSON form, with
    # an MFE far above any P&L (the merge must keep it) and an MAE of 0 (any loss is a new extreme)
    settings = _random_settings(make_settings, seed=5)
    clock = Steps()
    monitors = []
    for store, kind in zip(two_stores, (True, False), strict=True):
        warmup.seed(store, settings, now=START)
        monitors.append(Monitor(store, settings, clock, consumer="m", idle_refresh_seconds=0, vectorised=kind))
    tickers = list(settings.universe.assets)
    _run(settings, list(two_stores), lambda _: monitors, clock, 2, tickers)
    key = PortfolioKeys("p02").marks
    for store in two_stores:
        packed = store.client.hgetall(key)
        assert packed and all(len(v) == EXCURSION_DTYPE.itemsize for v in packed.values())
        for ticker, value in packed.items():
            side, _, _ = decode_excursion(value, "k")
            store.client.hset(key, ticker, json.dumps({"side": side, "mfe": 1e9, "mae": 0.0}))
    old = two_stores[0].read_marks("p02")
    assert all((m.mfe, m.mae) == (1e9, 0.0) for m in old.values())
    # the upgraded processes start: a vectorised monitor holds what it wrote and loads it only when it starts
    # (or another writer stamps the portfolio)
    monitors[0] = Monitor(two_stores[0], settings, clock, consumer="m", idle_refresh_seconds=0)

    # Act: one more tick of each (on another bar)
    _run(settings, list(two_stores), lambda _: monitors, clock, 1, tickers)

    # Assert: both kept the JSON record's MFE; a record with a new extreme (a loss) is rewritten packed, one
    # without is left as it was (as before: only a changed excursion is written)
    rewritten = []
    for store in two_stores:
        marks = store.read_marks("p02")
        assert marks.keys() == old.keys() and all(m.mfe == 1e9 for m in marks.values())
        assert all(marks[t].side == old[t].side for t in marks)
        for ticker, value in store.client.hgetall(key).items():
            moved = marks[ticker.decode()].mae < 0.0
            assert (len(value) == EXCURSION_DTYPE.itemsize) is moved and value.startswith(b"{") is not moved
            rewritten.append(moved)
    assert any(rewritten) and not all(rewritten)
    assert two_stores[0].read_marks("p02") == two_stores[1].read_marks("p02")


def test_a_book_of_more_positions_than_one_lua_unpack_takes_has_every_excursion_written(
    two_stores: tuple[Store, Store], make_settings: Callable[..., Settings]
) -> None:
    # Arrange: one book holding 650 tickers (the script sets a portfolio's excursions 500 at a time), long and short
    rng = np.random.default_rng(11)
    tickers = [f"T{i:03d}" for i in range(650)]
    assets = {t: {"price": float(rng.uniform(5, 500)), "annual_vol": 0.3, "avg_daily_volume": 10**6, "spread_bps": 2.0}
              for t in tickers}  # fmt: skip
    holdings = {t: int(rng.integers(1, 100)) * (1 if i % 3 else -1) for i, t in enumerate(tickers)}
    settings = make_settings({"universe": {"assets": assets}, "portfolios": [
        {"id": "big", "account_type": "margin", "cash": "100000000", "holdings": holdings}]})  # fmt: skip
    clock, fast, loop = _paired_monitors(two_stores, settings)

    # Act
    _run(settings, list(two_stores), lambda _: [fast, loop], clock, 2, tickers)  # (no trade: the third tick trades)

    # Assert: every position has its excursion, as the per-portfolio path merged it
    marks = two_stores[0].read_marks("big")
    assert len(marks) == 650 and marks.keys() == two_stores[1].read_marks("big").keys()
    _assert_same_state(two_stores[0], two_stores[1], ["big"], settings)


def test_a_stored_snapshot_of_a_newer_market_version_is_kept_until_a_tick_reaches_it(
    two_stores: tuple[Store, Store], make_settings: Callable[..., Settings]
) -> None:
    # Arrange: a vectorised monitor snapshots every portfolio; then another writer stores p03's snapshot of a
    # market version two ahead (a monitor on a newer tick) and p05's with no version it can read
    store = two_stores[0]
    settings, clock, fast = _seeded_monitor(store, make_settings)
    tickers = list(settings.universe.assets)
    _run(settings, [store], lambda _: [fast], clock, 1, tickers)
    version = store.read_market_header().version
    ahead = {**(store.read_snapshot("p03") or {}), "version": version + 2, "equity": -1.0}
    store.record_snapshot("p03", ahead, {"equity": -1.0}, ts=clock.now, retention_seconds=3600, max_points=100)
    store.client.set(PortfolioKeys("p05").snapshot, b'{"portfolio_id":"p05"}')
    kept = store.client.get(PortfolioKeys("p03").snapshot)

    # Act / Assert: the next tick (version + 1) keeps p03's, replaces p05's, and writes every history point
    daemon = StreamDaemon(store, settings, iter(()), clock=clock, interval=0)  # type: ignore[arg-type]
    bars = iter(SimulatedFeed.from_settings(settings, seed=4))
    points = len(store.read_history("p03"))
    clock.now += 1.0
    daemon.process_bar(next(bars))
    assert fast.process_available() == 1
    assert store.client.get(PortfolioKeys("p03").snapshot) == kept
    assert (store.read_snapshot("p05") or {}).get("version") == version + 1
    assert len(store.read_history("p03")) == points + 1

    # the tick after it (version + 2: not older) replaces it, and so does every later one
    for step in (2, 3):
        clock.now += 1.0
        daemon.process_bar(next(bars))
        assert fast.process_available() == 1
        snap = store.read_snapshot("p03") or {}
        assert snap["version"] == version + step and snap["equity"] > 0
