"""logic/backtest_runner.py: the daemon that feeds every bar to every portfolio's continuous VaR backtest, in
order and exactly once, apart from the monitor's latest-wins snapshots.

Every stored backtest here is checked against a :class:`logic.backtest.Backtester` the test feeds itself, bar by
bar, from the published tick events' prices and the book's quantities (counts exactly, floats to 1e-12).
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from scipy import stats

import warmup
from engine.feeds import Bar, ReplayFeed, SimulatedFeed
from engine.records import VarMethod
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings
from engine.store import BACKTEST_GROUP, TICKS_KEY, PortfolioKeys, Store, TickEvent, decode_object, lock_key
from engine.stream import StreamDaemon
from logic.backtest import BacktestConfig, Backtester, Observation, Track
from logic.backtest_monitor import backtest_config, section_for
from logic.backtest_runner import HEARTBEAT_COMPONENT, LEASE, BacktestRunner
from logic.monitor import Monitor

from .conftest import TEST_CONFIG, merge
from .test_stream import ROOT, daemon_env, spawn, stop_process, write_config

PIDS = ("main", "hedge")
MODEL = {"fhs_window": 20, "bars_per_day": 2}
"""30 seed returns and a 20-return window: forecasts from bar 51 on; the limit's horizon is 2 bars."""
REL = 1e-12


@pytest.fixture
def small(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings({"model": MODEL})


class Publisher:
    """The real stream daemon (in process) publishing simulated bars, a few at a time."""

    def __init__(self, store: Store, settings: Settings, seed: int = 3) -> None:
        feed = SimulatedFeed.from_settings(settings, seed=seed)
        self.daemon = StreamDaemon(store, settings, feed, interval=0)
        self._bars: Iterator[Bar] = iter(feed)

    def publish(self, n: int) -> None:
        for _ in range(n):
            assert self.daemon.process_bar(next(self._bars))


def _seeded(store: Store, settings: Settings) -> Publisher:
    warmup.seed(store, settings)
    publisher = Publisher(store, settings)
    store.ensure_tick_group(BACKTEST_GROUP)  # the stream daemon's start-up does it too (before its first bar)
    return publisher


# -- the independent computation -----------------------------------------------------------------------------


def _direct(settings: Settings, pid: str, events: Sequence[TickEvent]) -> tuple[Backtester, list[Observation]]:
    """The portfolio's backtest fed here, every event once, in order: the held tickers in the market's order,
    the book's quantities, the bar's prices."""
    holdings = settings.portfolio(pid).holdings
    tickers = events[0].tickers
    held = [t for t in tickers if holdings.get(t, 0)]
    cols = [tickers.index(t) for t in held]
    qty = np.array([float(holdings[t]) for t in held])
    bt = Backtester(held, backtest_config(settings, pid))
    closed: list[Observation] = []
    for ev in events:
        assert not ev.reset and ev.tickers == tickers  # nothing here restarts a backtest
        label = datetime.fromtimestamp(ev.bar_ts, UTC).isoformat()
        closed += bt.step(np.asarray(ev.prices)[cols], qty, label)
    return bt, closed


def _same(got: Any, want: Any, where: str) -> None:
    """Equal, floats to 1e-12 relative (ints, strings, booleans and None exactly)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), where
        for k in want:
            _same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert isinstance(got, float) and got == pytest.approx(want, rel=REL, abs=0.0), where
    else:
        assert type(got) is type(want) and got == want, where


def _assert_stored_equals_direct(
    store: Store, settings: Settings, events: Sequence[TickEvent], pids: Sequence[str] = PIDS
) -> None:
    """Every stored backtest is the one fed every event once, in order (and forecasts were made)."""
    for pid in pids:
        want, closed = _direct(settings, pid, events)
        assert want.ready and len(closed) > 10  # past the burn-in: the comparison covers closed horizons
        stored = store.read_backtest_state(pid)
        assert stored is not None
        state, version, _ = stored
        got = Backtester.from_dict(state)
        assert version == events[-1].version
        assert (got.bar, got.pushed, got.tickers) == (want.bar, want.pushed, want.tickers)  # one bar per event
        np.testing.assert_allclose(got.cov, want.cov, rtol=REL, atol=0)  # type: ignore[arg-type]
        np.testing.assert_allclose(got.window, want.window, rtol=REL, atol=0)
        summary = store.read_backtest_summary(pid)
        assert summary is not None
        for track in Track:
            _same(summary["tracks"][str(track)], want.summary_dicts(track), f"{pid}.{track}")
        logged = [Observation.from_dict(r) for r in store.read_backtest_observations(pid, 10_000)]
        assert len(logged) == len(closed)  # every closed horizon once: none twice, none missing
        for rec, obs in zip(logged, closed, strict=True):
            assert (rec.track, rec.start, rec.end, rec.hit) == (obs.track, obs.start, obs.end, obs.hit)
            assert rec.pnl == pytest.approx(obs.pnl, rel=REL, abs=0.0)
            _same(dict(rec.var), dict(obs.var), f"{pid}.var")


def _stored_section(store: Store, pid: str) -> dict[str, Any]:
    raw = store.client.hget(PortfolioKeys(pid).backtest, "section")
    assert raw is not None
    section = decode_object(raw, key="section")
    assert isinstance(section, dict)
    return section


def _pending(store: Store) -> int:
    return store.tick_group_pending(BACKTEST_GROUP)


# -- 1. the point of the change: every bar, whatever the monitor skips --------------------------------------


def test_the_runner_feeds_every_bar_while_a_latest_wins_monitor_skips_most(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    # Arrange: the monitor skips to the newest tick; it reads 8 at a time and falls 20 ticks behind per round
    settings = make_settings({"model": MODEL, "monitor": {"latest_wins": True}})
    publisher = _seeded(store, settings)
    monitor = Monitor(store, settings, batch_size=8, idle_refresh_seconds=0)
    runner = BacktestRunner(store, settings, consumer="runner")

    # Act: three rounds; in the last the runner goes first
    publisher.publish(20)
    assert monitor.process_available() == 1  # coalesced: one snapshot for 20 ticks
    assert runner.process_available() == 20
    publisher.publish(20)
    assert monitor.process_available() == 1
    lagging = store.read_snapshot("main")
    assert runner.process_available() == 20
    publisher.publish(30)
    assert runner.process_available() == 30
    assert monitor.process_available() == 1

    # Assert: the monitor skipped 67 of 70 ticks; the backtests took all 70, each once, in order
    events = store.read_ticks()
    assert [e.version for e in events] == list(range(1, 71))
    assert (monitor.stats.ticks_processed, monitor.stats.ticks_coalesced) == (3, 67)
    assert runner.stats.bars_fed == 70 and _pending(store) == 0
    _assert_stored_equals_direct(store, settings, events)
    # the snapshot reads the runner's last stored section; mid-way it read the section of the round before
    assert lagging is not None and lagging["version"] == 40 and lagging["backtest"]["market_version"] == 20
    for pid in PIDS:
        snap = store.read_snapshot(pid)
        assert snap is not None and snap["version"] == 70
        stored = _stored_section(store, pid)
        assert stored["market_version"] == runner.stats.last_version == 70
        method = settings.var_method_for(pid)
        assert snap["backtest"] == section_for(stored, method)
        assert snap["backtest"]["method"] == str(method) and snap["backtest"]["observations"] > 0


# -- 2. exactly once across restarts --------------------------------------------------------------------------


def test_a_bars_latency_counts_its_exec_and_the_next_bars_heartbeat_carries_it(
    store: Store, small: Settings, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: the first bar's EXEC waits 300 ms in Redis (CLIENT PAUSE WRITE from another client, issued as the
    # runner queues its heartbeat, the last command before its EXEC)
    publisher = _seeded(store, small)
    publisher.publish(2)
    runner = BacktestRunner(store, small, consumer="runner")
    queue_heartbeat = store.write_heartbeat
    paused: list[bool] = []

    def pause_then_queue(*args: Any, **kwargs: Any) -> None:
        if not paused and len(args) > 2:  # a bar's heartbeat (queued in its MULTI), not an idle one
            paused.append(True)
            with redis.Redis.from_url(redis_server.url) as other:
                other.execute_command("CLIENT", "PAUSE", 300, "WRITE")
        queue_heartbeat(*args, **kwargs)

    monkeypatch.setattr(store, "write_heartbeat", pause_then_queue)

    # Act
    assert runner.process_available(max_bars=1) == 1
    first = runner.stats.last_latency_ms
    assert runner.process_available(max_bars=1) == 1

    # Assert: the first bar's latency includes its EXEC; the second bar's heartbeat carries it
    assert paused and first >= 250.0 and runner.stats.last_latency_ms < first
    heartbeat = store.read_heartbeat(HEARTBEAT_COMPONENT)
    assert heartbeat is not None and float(heartbeat["last_latency_ms"]) == round(first, 3)


def test_a_restarted_runner_goes_on_where_the_last_stopped_and_redoes_an_unacknowledged_bar_once(
    store: Store, small: Settings
) -> None:
    publisher = _seeded(store, small)
    publisher.publish(70)

    # a runner feeds 20 bars and stops
    assert BacktestRunner(store, small, consumer="runner").process_available(max_bars=20) == 20
    assert store.read_backtest_marker("main")[0] == 20  # type: ignore[index]
    # a runner of the same name (fresh memory) receives 5 bars and dies before acknowledging them
    delivered = store.read_tick_group(BACKTEST_GROUP, "runner", count=5)
    assert [e.version for _, e in delivered] == [21, 22, 23, 24, 25]  # type: ignore[union-attr]
    # the next one fails in the middle of the first of them, before its transaction is executed
    crashing = BacktestRunner(store, small, consumer="runner")

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("killed before EXEC")

    crashing.books.write = crash  # type: ignore[method-assign]
    before = {pid: store.client.hgetall(PortfolioKeys(pid).backtest) for pid in PIDS}
    with pytest.raises(RuntimeError, match="killed before EXEC"):
        crashing.process_available()
    assert {pid: store.client.hgetall(PortfolioKeys(pid).backtest) for pid in PIDS} == before  # nothing written
    assert _pending(store) == 5

    # Act: a fresh runner of the same name
    restarted = BacktestRunner(store, small, consumer="runner")
    fed = restarted.process_available()

    # Assert: the 5 pending bars, then the 45 new ones, each once
    assert fed == 50 and _pending(store) == 0
    assert store.read_heartbeat(HEARTBEAT_COMPONENT)["version"] == "70"  # type: ignore[index]
    _assert_stored_equals_direct(store, small, store.read_ticks())


# -- 3. the lease and failover ----------------------------------------------------------------------------------


def test_a_standby_runner_feeds_nothing_under_the_lease_then_takes_over_the_bars_left_pending_in_order(
    store: Store, small: Settings
) -> None:
    publisher = _seeded(store, small)
    publisher.publish(70)
    a = BacktestRunner(store, small, consumer="a", claim_idle_seconds=0.3)
    b = BacktestRunner(store, small, consumer="b", claim_idle_seconds=0.3)

    assert a.process_available(max_bars=30) == 30
    # while A holds the lease, B does nothing
    assert b.process_available() == 0
    assert b.stats.bars_fed == 0 and store.read_backtest_marker("main")[0] == 30  # type: ignore[index]
    assert store.read_heartbeat(HEARTBEAT_COMPONENT)["consumer"] == "a"  # type: ignore[index]
    # A receives three bars and stops without feeding them
    delivered = store.read_tick_group(BACKTEST_GROUP, "a", count=3)
    assert [e.version for _, e in delivered] == [31, 32, 33]  # type: ignore[union-attr]
    assert b.process_available() == 0  # still A's lease

    # Act: past the lease (at least 1 s) and the claim time (0.3 s)
    time.sleep(1.2)
    fed = b.process_available()

    # Assert: B claimed A's three bars and fed them first, then the rest; all in order (else the returns differ)
    assert fed == 40 and b.stats.bars_fed == 40 and _pending(store) == 0
    heartbeat = store.read_heartbeat(HEARTBEAT_COMPONENT)
    assert heartbeat is not None and (heartbeat["consumer"], heartbeat["version"]) == ("b", "70")
    _assert_stored_equals_direct(store, small, store.read_ticks())
    assert a.process_available() == 0  # B holds the lease now


def test_a_runner_that_stops_cleanly_gives_the_lease_up_and_a_standby_goes_on_at_once(
    store: Store, small: Settings
) -> None:
    publisher = _seeded(store, small)
    publisher.publish(70)
    a = BacktestRunner(store, small, consumer="a", claim_idle_seconds=60.0)
    b = BacktestRunner(store, small, consumer="b", claim_idle_seconds=60.0)

    assert a.run(max_bars=20, block_ms=1).bars_fed == 20  # run() returns after 20 bars: a clean stop

    assert b.process_available() == 50  # no wait for a 60 s lease to expire
    _assert_stored_equals_direct(store, small, store.read_ticks())
    assert not store.release_lease("backtest-runner", "a")  # only the holder's token gives it up
    assert store.release_lease("backtest-runner", "b")


def test_a_runner_taking_over_an_expired_lease_feeds_the_last_holders_bars_first_however_briefly_they_waited(
    store: Store, small: Settings
) -> None:
    # the lease lasts the claim time (1 s); A received its bars half a second after it last extended the lease,
    # so when the lease expires they have been pending for only half a second
    publisher = _seeded(store, small)
    publisher.publish(70)
    a = BacktestRunner(store, small, consumer="a", claim_idle_seconds=1.0)
    b = BacktestRunner(store, small, consumer="b", claim_idle_seconds=1.0)
    assert a.process_available(max_bars=30) == 30
    time.sleep(0.5)
    delivered = store.read_tick_group(BACKTEST_GROUP, "a", count=3)
    assert [e.version for _, e in delivered] == [31, 32, 33]  # type: ignore[union-attr]

    time.sleep(0.7)  # past A's lease
    fed = b.process_available()

    # B fed A's three bars before any newer one: every bar once, in order
    assert fed == 40 and _pending(store) == 0
    _assert_stored_equals_direct(store, small, store.read_ticks())


def test_a_runner_that_lost_the_lease_in_the_middle_of_a_batch_stops_and_the_new_holder_goes_on_in_order(
    store: Store, small: Settings
) -> None:
    publisher = _seeded(store, small)
    publisher.publish(70)
    a = BacktestRunner(store, small, consumer="a")
    b = BacktestRunner(store, small, consumer="b")
    write = a.books.write
    calls: list[int] = []

    def write_then_lose_the_lease(fed: Any, pipe: Any) -> None:
        calls.append(1)
        if len(calls) == 40:  # A's lease expired while it fed bar 40 (a slow batch) and B took it
            store.client.delete(lock_key(LEASE))
            assert store.hold_lease(LEASE, "b", 5.0)
        write(fed, pipe)

    a.books.write = write_then_lose_the_lease  # type: ignore[method-assign]

    assert a.process_available() == 40  # one batch of 70 read; bar 40 written, then the lease is gone
    assert _pending(store) == 30  # A's: left to the holder
    assert b.process_available() == 30

    assert _pending(store) == 0 and len(calls) == 40  # A fed nothing after it lost the lease
    _assert_stored_equals_direct(store, small, store.read_ticks())


# -- 4. a conflict ----------------------------------------------------------------------------------------------


def test_a_write_by_another_writer_leaves_the_bar_pending_and_the_redo_feeds_it_once(
    store: Store, small: Settings, redis_server: EmbeddedRedis
) -> None:
    import redis

    publisher = _seeded(store, small)
    publisher.publish(60)
    runner = BacktestRunner(store, small, consumer="runner")
    assert runner.process_available(max_bars=55) == 55
    other = redis.Redis.from_url(redis_server.url)
    key = PortfolioKeys("hedge").backtest
    write = runner.books.write
    seen: list[dict[str, Any]] = []

    def interfering_write(fed: Any, pipe: Any) -> None:
        # what the store holds when the runner queues its writes (after its WATCH, before its EXEC)
        seen.append({"main": store.read_backtest_marker("main"), "hedge": store.read_backtest_marker("hedge"),
                     "pending": _pending(store), "log": store.client.xlen(PortfolioKeys("main").backtest_log),
                     "heartbeat": store.read_heartbeat(HEARTBEAT_COMPONENT)})  # fmt: skip
        if len(seen) == 1:  # another writer stamps the backtest (as a second runner writing it would)
            other.hset(key, "token", "another-writer")
        write(fed, pipe)

    runner.books.write = interfering_write  # type: ignore[method-assign]
    try:
        # Act
        fed = runner.process_available()
    finally:
        other.close()

    # Assert: the first attempt at bar 56 wrote nothing and left it pending; the redo (from the store, whose
    # token is no longer the runner's) fed it once, then the rest
    assert runner.stats.conflicts == 1
    assert seen[0]["main"][0] == seen[1]["main"][0] == 55 and seen[1]["hedge"] == (55, "another-writer")
    assert seen[1]["pending"] == seen[0]["pending"] == 5  # bars 56-60 read at once: none acknowledged yet
    assert seen[1]["log"] == seen[0]["log"] and seen[1]["heartbeat"] == seen[0]["heartbeat"]
    assert fed == 5 and len(seen) == 6 and _pending(store) == 0
    _assert_stored_equals_direct(store, small, store.read_ticks())


# -- 5. lost entries and the heartbeat ---------------------------------------------------------------------------


def test_a_trimmed_or_unreadable_entry_is_counted_lost_and_acknowledged(store: Store, small: Settings) -> None:
    publisher = _seeded(store, small)
    publisher.publish(30)
    trimmed = store.read_tick_group(BACKTEST_GROUP, "runner", count=30)  # delivered, then trimmed away
    trimmed_id = trimmed[10][0]
    store.client.xdel(TICKS_KEY, trimmed_id)
    garbage = store.client.xadd(TICKS_KEY, {"version": "not a number"})  # an entry that does not decode
    publisher.publish(30)
    runner = BacktestRunner(store, small, consumer="runner")

    fed = runner.process_available()

    assert fed == 59 and runner.stats.bars_lost == 2 and _pending(store) == 0
    heartbeat = store.read_heartbeat(HEARTBEAT_COMPONENT)
    assert heartbeat is not None
    assert (heartbeat["bars_fed"], heartbeat["bars_lost"], heartbeat["version"]) == ("59", "2", "60")
    # the bar after the trimmed one spans the gap: the backtest is the one fed every remaining bar
    store.client.xdel(TICKS_KEY, garbage)  # (read_ticks decodes every entry)
    events = store.read_ticks()
    assert len(events) == 59 and 11 not in [e.version for e in events]
    _assert_stored_equals_direct(store, small, events)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda c, keys: c.setrange(keys.backtest_window, c.strlen(keys.backtest_window) - 8, b"\xff" * 8),  # NaN
        lambda c, keys: c.hset(keys.backtest, "version", b"not a number"),  # an unreadable marker
    ],
    ids=["ring", "marker"],
)
def test_a_corrupt_stored_backtest_is_left_as_it_is_and_the_others_go_on(
    store: Store, small: Settings, corrupt: Callable[..., Any]
) -> None:
    publisher = _seeded(store, small)
    publisher.publish(60)
    runner = BacktestRunner(store, small, consumer="runner")
    assert runner.process_available(max_bars=50) == 50
    keys = PortfolioKeys("main")
    corrupt(store.client, keys)
    before = (store.client.hgetall(keys.backtest), store.client.get(keys.backtest_window),
              store.client.xlen(keys.backtest_log))  # fmt: skip

    restarted = BacktestRunner(store, small, consumer="runner")  # reloads every backtest
    fed = restarted.process_available()

    assert fed == 10 and restarted.stats.bar_errors == 10 and _pending(store) == 0
    assert store.read_heartbeat(HEARTBEAT_COMPONENT)["portfolios"] == "1"  # type: ignore[index]
    after = (store.client.hgetall(keys.backtest), store.client.get(keys.backtest_window),
             store.client.xlen(keys.backtest_log))  # fmt: skip
    assert after == before  # refused, not overwritten
    _assert_stored_equals_direct(store, small, store.read_ticks(), pids=["hedge"])


# -- 6. a corrupt stored section -----------------------------------------------------------------------------------


def test_a_corrupt_stored_section_leaves_that_snapshot_without_backtest_and_the_bytes_as_they_were(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings({"model": MODEL, "monitor": {"latest_wins": True}})
    publisher = _seeded(store, settings)
    publisher.publish(60)
    assert BacktestRunner(store, settings, consumer="runner").process_available() == 60
    key = PortfolioKeys("main").backtest
    store.client.hset(key, "section", b"{not json")
    hedge_section = _stored_section(store, "hedge")

    assert Monitor(store, settings, batch_size=8, idle_refresh_seconds=0).process_available() == 1

    main, hedge = store.read_snapshot("main"), store.read_snapshot("hedge")
    assert main is not None and main["version"] == 60 and main["backtest"] is None  # the rest of it is there
    assert main["var"]["var99"] > 0
    assert hedge is not None and hedge["backtest"] is not None
    assert hedge["backtest"] == section_for(hedge_section, settings.var_method_for("hedge"))
    assert store.client.hget(key, "section") == b"{not json"


# -- 7. the real daemon ----------------------------------------------------------------------------------------------


def test_the_real_runner_feeds_the_real_stream_daemons_bars_and_exits_after_n(
    store: Store, small: Settings, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    warmup.seed(store, small)
    env = daemon_env(redis_server.url, write_config(tmp_path, merge(TEST_CONFIG, {"model": MODEL})))
    runner = spawn("logic.backtest_runner", ["--bars", "60", "--consumer", "real"], env, tmp_path / "runner.log")
    try:
        stream = subprocess.run(
            [sys.executable, "-m", "engine.stream", "--feed", "sim", "--interval", "0", "--ticks", "60",
             "--seed", "4"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert stream.returncode == 0, stream.stderr
        assert runner.wait(timeout=120) == 0, (tmp_path / "runner.log").read_text()
    finally:
        stop_process(runner)
    heartbeat = store.read_heartbeat(HEARTBEAT_COMPONENT)
    assert heartbeat is not None
    assert (heartbeat["bars_fed"], heartbeat["version"], heartbeat["consumer"]) == ("60", "60", "real")
    assert _pending(store) == 0
    _assert_stored_equals_direct(store, small, store.read_ticks())


# -- 9. replays of daily and weekly rows: the limit's horizon in fed bars --------------------------------------


def _weekdays(first: date, n: int, step_days: int) -> list[date]:
    """``n`` dates from ``first``: every weekday (daily rows), or every ``step_days`` days (weekly rows)."""
    out, d = [], first
    while len(out) < n:
        if step_days > 1 or d.weekday() < 5:
            out.append(d)
        d += timedelta(days=step_days)
    return out


def _replay_rows(store: Store, settings: Settings, path: Path, dates: Sequence[date]) -> np.ndarray:
    """Write closes of every universe ticker on ``dates`` (1% log-normal steps), replay them through the real
    stream daemon; returns the closes, one row per date."""
    rng = np.random.default_rng(12)
    steps = rng.standard_normal((len(dates), 4)) * 0.01
    steps[0] = 0.0
    closes = np.array([100.0, 50.0, 200.0, 25.0]) * np.exp(np.cumsum(steps, axis=0))
    path.write_text("date,AAA,BBB,CCC,DDD\n" + "".join(
        f"{d.isoformat()}," + ",".join(repr(float(p)) for p in row) + "\n" for d, row in zip(dates, closes, strict=True)
    ))  # fmt: skip
    warmup.seed(store, settings)
    store.ensure_tick_group(BACKTEST_GROUP)
    feed = ReplayFeed(path)
    daemon = StreamDaemon(store, settings, feed, interval=0)
    for bar in feed:
        assert daemon.process_bar(bar)
    return closes


def _ewma_covariances(closes: np.ndarray, seed_rows: int, decay: float) -> dict[int, np.ndarray]:
    """Bar b -> the EWMA covariance of the rows' own log returns after the return ending at b, written out here:
    ``(1/m) Σ r rᵀ`` of the first ``seed_rows`` returns, then ``λ Σ + (1 - λ) r rᵀ`` per return."""
    r = np.log(closes[1:] / closes[:-1])
    cov = r[:seed_rows].T @ r[:seed_rows] / seed_rows
    out = {seed_rows: cov.copy()}
    for t in range(seed_rows, len(r)):
        cov = decay * cov + (1.0 - decay) * np.outer(r[t], r[t])
        out[t + 1] = cov.copy()
    return out


@pytest.mark.parametrize(
    ("spacing", "step_days", "model_bars", "horizons"),
    [("daily", 1, 390.0, {"main": 1, "hedge": 5}), ("weekly", 7, 1950.0, {"main": 1, "hedge": 1})],
)
def test_a_replay_of_daily_or_weekly_rows_checks_the_limits_horizon_in_rows_against_the_pnl_over_as_many_rows(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path, spacing: str, step_days: int,
    model_bars: float, horizons: dict[str, int],
) -> None:  # fmt: skip
    # Arrange: one-minute model bars (390 a day); main's limit is one day, hedge's five days. In daily rows one
    # day is one row and five days five rows; in weekly rows each is one row (a week: at least one row)
    portfolios = [dict(p) for p in TEST_CONFIG["portfolios"]]
    portfolios[1]["limits"] = {"var_horizon_days": 5.0}
    settings = make_settings({"model": {"fhs_window": 20}, "portfolios": portfolios})
    dates = _weekdays(date(2018, 1, 2), 110, step_days)
    closes = _replay_rows(store, settings, tmp_path / f"{spacing}.csv", dates)
    runner = BacktestRunner(store, settings, consumer="runner")

    # Act
    assert runner.process_available() == len(dates)

    # Assert: the stream daemon says how many model bars a row spans, and the runner took it
    assert store.read_heartbeat("stream")["feed_bar_model_bars"] == repr(model_bars)  # type: ignore[index]
    events = store.read_ticks()
    np.testing.assert_array_equal(np.array([e.prices for e in events]), closes)  # every close written as it is
    labels = [datetime.fromtimestamp(e.bar_ts, UTC).isoformat() for e in events]
    covs = _ewma_covariances(closes, seed_rows=30, decay=0.94)
    z = float(stats.norm.ppf(0.99))
    first = 30 + 20  # the row whose return fills the window: the first forecast
    for pid, h in horizons.items():
        holdings = settings.portfolio(pid).holdings
        cols = [i for i, t in enumerate(events[0].tickers) if holdings.get(t, 0)]
        qty = np.array([float(holdings[events[0].tickers[i]]) for i in cols])
        summary = store.read_backtest_summary(pid)
        assert summary is not None and summary["horizon_bars"] == h
        logged = [Observation.from_dict(r) for r in store.read_backtest_observations(pid, 10_000)]
        bar = {o.start: o for o in logged if o.track is Track.BAR}
        limit = [o for o in logged if o.track is Track.LIMIT]
        starts = list(range(first, len(dates) - h, h))  # non-overlapping horizons of h rows
        assert len(bar) == len(dates) - 1 - first
        assert [o.start for o in limit] == [labels[b] for b in starts]
        assert [o.end for o in limit] == [labels[b + h] for b in starts]
        for o, b in zip(limit, starts, strict=True):
            # the realized P&L over h rows of the positions held at row b, from the file's closes
            assert o.pnl == pytest.approx(float(qty @ (closes[b + h, cols] - closes[b, cols])), rel=1e-12, abs=1e-9)
            # the forecast is for those h rows: sqrt(h) times the one-row VaR of the rows' own covariance
            x = qty * closes[b, cols]
            one_row = z * math.sqrt(float(x @ covs[b][np.ix_(cols, cols)] @ x))
            assert o.var[VarMethod.NORMAL] == pytest.approx(math.sqrt(h) * one_row, rel=1e-9)
            assert bar[o.start].var[VarMethod.NORMAL] == pytest.approx(one_row, rel=1e-9)  # the one-row track
            for m in settings.model.backtest_methods:
                assert o.var[m] == pytest.approx(math.sqrt(h) * bar[o.start].var[m], rel=1e-12)
                assert o.hit[m] == (-o.pnl > o.var[m])
        if h == 1:  # a one-row limit closes an observation at every row: the one-row track's, forecast and P&L
            assert [(o.start, o.end, o.pnl, dict(o.var)) for o in limit] == [
                (o.start, o.end, o.pnl, dict(o.var)) for o in bar.values()
            ]
        assert summary["tracks"]["limit"]["normal"]["observations"] == len(starts) > 0


def test_a_live_minute_feed_keeps_its_horizon_of_bars_per_day_times_the_limits_days(
    store: Store, small: Settings
) -> None:
    # Arrange: the simulated (live) feed: one model bar per bar; bars_per_day = 2, a one-day limit: 2 bars
    publisher = _seeded(store, small)
    runner = BacktestRunner(store, small, consumer="runner")

    # Act
    publisher.publish(70)
    assert runner.process_available() == 70

    # Assert: the same configuration and numbers as a backtest of two-bar horizons fed every event here
    assert store.read_heartbeat("stream")["feed_bar_model_bars"] == "1.0"  # type: ignore[index]
    events = store.read_ticks()
    for pid in PIDS:
        state = store.read_backtest_state(pid)
        assert state is not None
        config = Backtester.from_dict(state[0]).config
        assert config == BacktestConfig(window=20, horizon_bars=2, max_records=0)
        limit = [o for o in store.read_backtest_observations(pid, 10_000) if o["track"] == "limit"]
        first = 30 + 20
        assert [o["start"] for o in limit] == [
            datetime.fromtimestamp(events[b].bar_ts, UTC).isoformat() for b in range(first, len(events) - 2, 2)
        ]
    _assert_stored_equals_direct(store, small, events)
