"""A write whose reply was lost and that the client sent again (redis-py retries a command or a MULTI once a
connection error hides whether it ran, with its default ``Retry``): the second send must change nothing, not add a
second history point of the tick nor send the monitor into a redo of portfolios it already wrote.

The client's re-send is reproduced exactly: every transaction the monitor executes is executed twice with the same
commands, and the second reply is the one the monitor sees (the first was "lost").
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from engine.feeds import SimulatedFeed
from engine.settings import Settings
from engine.store import Store
from engine.stream import StreamDaemon
from logic import batch_tick
from logic.monitor import Monitor

WEDNESDAY = datetime(2024, 3, 6, 15, 0, tzinfo=UTC).timestamp()


class _Clock:
    def __init__(self) -> None:
        self.t = WEDNESDAY

    def __call__(self) -> float:
        return self.t


def _bar(store: Store, settings: Settings, seed: int) -> None:
    StreamDaemon(store, settings, SimulatedFeed.from_settings(settings, seed=seed), interval=0).run(ticks=1)


def _sent_twice(pipe: Any) -> Any:
    """``pipe`` whose :meth:`execute` runs its queued commands, then queues and runs the very same ones again and
    returns the second reply (the first send committed; its reply was lost)."""
    execute = pipe.execute

    def again(raise_on_error: bool = True) -> Any:
        stack = [(args, dict(options)) for args, options in pipe.command_stack]
        execute(raise_on_error)
        pipe.multi()
        for args, options in stack:
            pipe.execute_command(*args, **options)
        return execute(raise_on_error)

    pipe.execute = again
    return pipe


@pytest.mark.parametrize("vectorised", [True, False])
def test_a_monitor_write_sent_twice_stores_each_tick_once(
    seeded_store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch, vectorised: bool
) -> None:
    clock = _Clock()
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0, vectorised=vectorised)
    _bar(seeded_store, settings, 0)
    monitor.process_available()  # the first tick loads every portfolio: written once, normally
    real_pipeline = redis.Redis.pipeline

    def pipeline(self: redis.Redis, transaction: bool = True, shard_hint: Any = None) -> Any:
        return _sent_twice(real_pipeline(self, transaction, shard_hint))

    for i in range(1, 4):
        clock.t += 1.0
        _bar(seeded_store, settings, i)
        with monkeypatch.context() as m:  # only the monitor's writes are sent twice
            m.setattr(batch_tick, "slot_transaction", lambda client: _sent_twice(client.pipeline(transaction=True)))
            if not vectorised:  # the per-portfolio loop writes each portfolio in a MULTI of its own
                m.setattr(redis.Redis, "pipeline", pipeline)
            assert monitor.process_available() == 1

    for pid in ("main", "hedge"):
        versions = [int(p["version"]) for p in seeded_store.read_history(pid)]
        assert versions == [1, 2, 3, 4], (pid, versions)
    assert monitor.stats.ticks_redone == 0


class _Outage:
    """Makes the monitor's ``fail_at``-th transaction of a tick (1-based, the acknowledgement last) commit and
    then raise a ConnectionError, as a server killed after it ran the write and before its reply reached the
    client (appendfsync always: nothing it acknowledged is lost) leaves a monitor; ``ran`` False: it raises without
    running (the server was gone before it)."""

    def __init__(self, fail_at: int, ran: bool) -> None:
        self.fail_at, self.ran, self.count, self.failed = fail_at, ran, 0, False

    def __call__(self, client: Any) -> Any:
        pipe = client.pipeline(transaction=True)
        execute = pipe.execute

        def once(raise_on_error: bool = True) -> Any:
            self.count += 1
            if self.count != self.fail_at or self.failed:
                return execute(raise_on_error)
            self.failed = True
            if self.ran:
                execute(raise_on_error)
            raise redis.ConnectionError("Connection closed by server.")

        pipe.execute = once
        return pipe


class _Moving(_Clock):
    """A clock that moves a millisecond each time it is read: a redo of a tick is at a later time."""

    def __call__(self) -> float:
        self.t += 0.001
        return self.t


@pytest.mark.parametrize(
    ("lanes", "fail_at", "ran"),
    [(2, 1, True), (2, 2, True), (2, 3, True), (2, 1, False), (2, 2, False), (2, 3, False),
     (1, 1, True), (1, 2, True), (1, 1, False), (1, 2, False)],
)  # fmt: skip
def test_a_tick_whose_writes_committed_before_the_server_went_away_stores_each_point_once(
    seeded_store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch, lanes: int, fail_at: int, ran: bool
) -> None:
    # Arrange: one lane of both portfolios (written on the monitor's thread), or two of one each (on writer
    # threads); then the acknowledgement, the last transaction
    clock = _Moving()
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0)
    assert monitor.fast is not None
    monitor.fast.chunk_portfolios = 1 if lanes == 2 else 1000
    _bar(seeded_store, settings, 0)
    assert monitor.process_available() == 1
    outage = _Outage(fail_at, ran)
    for seed in (1, 2):
        clock.t += 1.0
        _bar(seeded_store, settings, seed)
    # Act: the second tick fails once with the store "gone", and is redone by the monitor's loop a backoff later
    # (unless its acknowledgement committed: the tick was done, the third is next)
    with monkeypatch.context() as m:
        m.setattr(batch_tick, "slot_transaction", outage)
        stats = monitor.run(max_ticks=2 if (fail_at, ran) == (lanes + 1, True) else 3, block_ms=10)
    # Assert
    assert outage.failed and stats.store_errors == 1
    for pid in ("main", "hedge"):
        versions = [int(p["version"]) for p in seeded_store.read_history(pid)]
        assert versions == [1, 2, 3], (pid, versions)
        assert seeded_store.read_snapshot(pid)["version"] == 3


def test_a_lane_whose_script_failed_midway_is_redone_whole_not_taken_as_written(
    seeded_store: Store, settings: Settings
) -> None:
    """A script error stops the lane script after it stamped a portfolio and before its point (a history key of
    the wrong type): the stamp proves nothing then, and the redo, once the key is repaired, writes the point."""
    from engine.store import PortfolioKeys

    clock = _Moving()
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0)
    _bar(seeded_store, settings, 0)
    assert monitor.process_available() == 1
    history = PortfolioKeys("hedge").history
    kept = seeded_store.client.xrange(history)
    seeded_store.client.delete(history)
    seeded_store.client.set(history, "not a stream")
    clock.t += 1.0
    _bar(seeded_store, settings, 1)
    with pytest.raises(redis.ResponseError) as failed:
        monitor.process_available()
    monitor._on_store_error(failed.value)  # as Monitor.run handles it
    seeded_store.client.delete(history)  # repaired: the point of before put back
    for entry_id, fields in kept:
        seeded_store.client.xadd(history, fields, id=entry_id)

    assert monitor.process_available() == 1

    assert [int(p["version"]) for p in seeded_store.read_history("hedge")] == [1, 2]
    assert seeded_store.read_snapshot("hedge")["version"] == 2
