"""engine/stream.py: the market-data daemon, in process and as the real ``python -m engine.stream``.

The covariance is checked against an EWMA recomputed here, independently of engine.math_logic, from the prices
the daemon published in its tick events (plus the seeded matrix), so a bar applied twice or skipped shows up.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import redis

import warmup
from engine.feeds import Bar, IterableFeed, SimulatedFeed
from engine.redis_server import EmbeddedRedis, connect
from engine.settings import Settings
from engine.store import MONITOR_GROUP, MarketSnapshot, PortfolioKeys, Store, TickEvent
from engine.stream import StreamDaemon

from .conftest import TEST_CONFIG, server_kind_under_test, to_toml

ROOT = Path(__file__).resolve().parent.parent
TICKERS = ("AAA", "BBB", "CCC", "DDD")
DECAY = TEST_CONFIG["model"]["ewma_decay"]


# -- helpers (test_monitor.py uses them too) -----------------------------------------------------------------


def ewma_from_ticks(start: MarketSnapshot, events: Sequence[TickEvent], decay: float = DECAY) -> np.ndarray:
    """Σ_t = AΣ_{t-1}A + (1-λ) r rᵀ over the published prices, with numpy only (no math_logic):
    ``A = diag(sqrt(λ))`` on the tickers with a new price (the event's ``observed``), 1 on the others (their
    return 0, their variance kept); ``λΣ + (1-λ) r rᵀ`` when every ticker had one. A return g bars after the
    ticker's previous new price (counted from ``start``, where every ticker had one) enters as ``r / sqrt(g)``."""
    cov = start.cov.copy()
    prev = start.prices.copy()
    since = np.zeros(len(prev))  # bars since each ticker's last new price
    for event in events:
        prices = np.asarray(event.prices)
        if len(prices) != len(prev):
            raise AssertionError("universe changed inside the recomputed range")
        observed = np.ones(len(prices), dtype=bool) if event.observed is None else np.asarray(event.observed)
        if not event.reset:
            r = np.log(prices / prev) / np.sqrt(since + 1.0)
            a = np.where(observed, math.sqrt(decay), 1.0)
            cov = np.diag(a) @ cov @ np.diag(a) + (1.0 - decay) * np.outer(r, r)
        since = np.where(observed | (prices != prev), 0.0, since + 1.0)
        prev = prices
    return cov


def assert_symmetric_psd(cov: np.ndarray) -> None:
    np.testing.assert_array_equal(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() >= -1e-12 * np.trace(cov)


def daemon_env(url: str, config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKDESK")}
    env.update({"REDIS_URL": url, "RISKDESK_CONFIG": str(config), "PYTHONUNBUFFERED": "1"})
    return env


def write_config(tmp_path: Path, config: dict | None = None) -> Path:
    path = tmp_path / "riskdesk.toml"
    path.write_text(to_toml(config or TEST_CONFIG))
    return path


def spawn(module: str, args: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM by pid, SIGKILL after ``timeout``; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def history_versions(store: Store, portfolio_id: str) -> list[int]:
    return [int(p["version"]) for p in store.read_history(portfolio_id)]


# -- in process ----------------------------------------------------------------------------------------------


def test_daemon_writes_one_version_per_bar_with_the_ewma_of_the_published_prices(
    seeded_store: Store, settings: Settings
) -> None:
    # Arrange
    start = seeded_store.read_market()
    daemon = StreamDaemon(seeded_store, settings, SimulatedFeed.from_settings(settings, seed=4), interval=0)
    # Act
    stats = daemon.run(ticks=50)
    # Assert
    snap = seeded_store.read_market()
    events = seeded_store.read_ticks()
    assert snap.version == 50 and stats.bars_written == 50
    assert [e.version for e in events] == list(range(1, 51))
    np.testing.assert_array_equal(snap.prices, events[-1].prices)
    assert_symmetric_psd(snap.cov)
    np.testing.assert_allclose(snap.cov, ewma_from_ticks(start, events), rtol=1e-10, atol=0)
    assert len({e.token for e in events}) == 50
    assert all(e.ts == snap.ts for e in events[-1:])


def test_bad_prices_are_rejected_and_counted_while_the_rest_of_the_bar_goes_on(
    seeded_store: Store, settings: Settings
) -> None:
    # Arrange
    start = seeded_store.read_market()
    bars = [
        Bar(1, {"AAA": 101.0, "BBB": 50.5, "CCC": 201.0, "DDD": 25.1}),
        Bar(2, {"AAA": math.nan, "BBB": 51.0, "CCC": 200.0, "DDD": 25.0}),  # AAA refused
        Bar(3, {"AAA": -5.0, "BBB": 52.0}),  # AAA refused; CCC, DDD carry on
        Bar(4, {"ZZZ": 10.0}),  # unknown ticker: nothing left, bar refused
        Bar(5, {"AAA": math.inf, "BBB": "abc"}),  # type: ignore[dict-item]  # both refused: bar refused
        Bar(6, {"AAA": 102.0, "ZZZ": 3.0, "CCC": 0.0}),  # ZZZ and CCC refused
    ]
    daemon = StreamDaemon(seeded_store, settings, IterableFeed(bars), interval=0)
    # Act
    stats = daemon.run()
    # Assert
    assert (stats.bars_read, stats.bars_written, stats.bars_rejected, stats.prices_rejected) == (6, 4, 2, 7)
    snap = seeded_store.read_market()
    assert snap.version == 4
    np.testing.assert_array_equal(snap.prices, [102.0, 52.0, 200.0, 25.0])
    events = seeded_store.read_ticks()
    assert [e.rejected for e in events] == [0, 1, 1, 2]
    assert all(np.isfinite(e.prices).all() and (e.prices > 0).all() for e in events)
    np.testing.assert_allclose(snap.cov, ewma_from_ticks(start, events), rtol=1e-10, atol=0)
    heartbeat = seeded_store.read_heartbeat("stream")
    assert heartbeat is not None
    assert (heartbeat["bars_processed"], heartbeat["bars_rejected"], heartbeat["prices_rejected"]) == (
        "4",
        "2",
        "7",
    )


def test_a_bars_window_row_marks_a_ticker_without_a_new_price_missing_and_an_unchanged_price_observed(
    seeded_store: Store, settings: Settings
) -> None:
    # Arrange: AAA arrives unchanged, BBB is absent, CCC is refused by the price filter, DDD moves
    start = seeded_store.read_market()
    prices = dict(zip(start.tickers, start.prices.tolist(), strict=True))
    bar = Bar(1, {"AAA": prices["AAA"], "CCC": math.nan, "DDD": prices["DDD"] * 1.01})
    daemon = StreamDaemon(seeded_store, settings, IterableFeed([bar]), interval=0)
    # Act
    daemon.run()
    # Assert
    window = seeded_store.read_standardized()
    assert window.versions[-1] == 1
    assert window.observed[-1].tolist() == [True, False, False, True]
    ddd = math.log(1.01) / math.sqrt(start.cov[3, 3])
    np.testing.assert_allclose(window.values[-1], [0.0, 0.0, 0.0, ddd], rtol=1e-12, atol=0)
    assert window.observed[:-1].all()  # the warm-up's simulated rows have no missing entry


def test_the_tick_event_says_which_tickers_had_no_new_price_and_a_bar_without_a_gap_writes_the_entry_of_before(
    seeded_store: Store, settings: Settings
) -> None:
    # Arrange: a bar without a gap; AAA unchanged, BBB absent, CCC refused, DDD moving; a reset bar missing one
    start = seeded_store.read_market()
    prices = dict(zip(start.tickers, start.prices.tolist(), strict=True))
    bars = [
        Bar(1, {t: p * 1.001 for t, p in prices.items()}),
        Bar(2, {"AAA": prices["AAA"] * 1.001, "CCC": math.nan, "DDD": prices["DDD"] * 1.01}),
        Bar(3, {"AAA": prices["AAA"], "BBB": prices["BBB"]}, reset=True),
    ]
    daemon = StreamDaemon(seeded_store, settings, IterableFeed(bars), interval=0)
    # Act
    daemon.run()
    # Assert
    from engine.store import TICKS_KEY

    raw = seeded_store.client.xrange(TICKS_KEY)
    assert [b"missing" in fields for _, fields in raw] == [False, True, False]  # a reset bar has no return
    full, gap, reset = seeded_store.read_ticks()
    assert full.observed is None and reset.observed is None and reset.reset
    assert gap.observed is not None and gap.observed.tolist() == [True, False, False, True]
    window = seeded_store.read_standardized()
    np.testing.assert_array_equal(window.observed[-1], gap.observed)  # the window's row, the same tickers


def test_a_ticker_added_by_the_warmup_is_picked_up_without_a_restart(
    seeded_store: Store, settings: Settings
) -> None:
    # Arrange
    daemon = StreamDaemon(seeded_store, settings, SimulatedFeed.from_settings(settings, seed=2), interval=0)
    daemon.run(ticks=5)
    # Act
    assert warmup.add_ticker(seeded_store, settings, "EEE", 10.0, 0.30) == 6
    grown = seeded_store.read_market()
    daemon.run(ticks=10)
    # Assert: versions 7..11 continue after the warm-up's 6, the feed prices EEE, the EWMA continues from 6
    snap = seeded_store.read_market()
    events = seeded_store.read_ticks()
    assert snap.version == 11 and snap.tickers == (*TICKERS, "EEE")
    assert [e.version for e in events] == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    assert events[-1].prices[-1] != 10.0 and snap.cov.shape == (5, 5)
    np.testing.assert_allclose(snap.cov, ewma_from_ticks(grown, events[5:]), rtol=1e-10, atol=0)
    assert_symmetric_psd(snap.cov)


def test_a_store_write_between_the_version_check_and_exec_makes_the_bar_retry_on_the_new_state(
    seeded_store: Store, settings: Settings, redis_server: EmbeddedRedis
) -> None:
    # Arrange: the daemon reads its clock after WATCH + version check; the third read adds a ticker from
    # another connection, exactly inside the daemon's transaction window
    other = Store(redis.Redis.from_url(redis_server.url))
    calls = 0

    def clock() -> float:
        nonlocal calls
        calls += 1
        if calls == 3:
            warmup.add_ticker(other, settings, "EEE", 10.0, 0.3)
        return time.time()

    bars = list(SimulatedFeed.from_settings(settings, seed=9, bars=5))
    daemon = StreamDaemon(seeded_store, settings, IterableFeed(bars), interval=0, clock=clock)
    # Act
    stats = daemon.run()
    # Assert: the bar of the conflict was written once, after the warm-up's version 3
    events = seeded_store.read_ticks()
    assert [e.version for e in events] == [1, 2, 4, 5, 6]
    assert stats.bars_written == 5 and seeded_store.read_market().version == 6
    assert len(events[2].tickers) == 5
    np.testing.assert_array_equal([e.prices[0] for e in events], [b.prices["AAA"] for b in bars])
    other.client.close()


def test_a_reseed_while_running_makes_the_daemon_continue_from_the_new_store(
    seeded_store: Store, settings: Settings
) -> None:
    daemon = StreamDaemon(seeded_store, settings, SimulatedFeed.from_settings(settings, seed=3), interval=0)
    daemon.run(ticks=3)
    warmup.reset(seeded_store)
    warmup.seed(seeded_store, settings)
    daemon.run(ticks=5)
    assert [e.version for e in seeded_store.read_ticks()] == [1, 2]
    # the consumer group was recreated before the first new tick: a monitor misses none of them
    delivered = seeded_store.read_tick_group(MONITOR_GROUP, "m", count=10)
    assert [e.version for _, e in delivered if e is not None] == [1, 2]


def test_daemon_stop_ends_the_run_between_bars(seeded_store: Store, settings: Settings) -> None:
    daemon = StreamDaemon(
        seeded_store, settings, SimulatedFeed.from_settings(settings, seed=1), interval=0.01
    )

    def bars() -> Iterator[Bar]:
        for i, bar in enumerate(SimulatedFeed.from_settings(settings, seed=1)):
            if i == 3:
                daemon.stop()
            yield bar

    daemon.feed = IterableFeed(bars())
    stats = daemon.run()
    assert stats.bars_written == 4 and seeded_store.read_market().version == 4


# -- the real daemon -----------------------------------------------------------------------------------------


def test_real_daemons_turn_200_bars_into_200_versions_an_exact_ewma_and_200_history_points(
    seeded_store: Store, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    # Arrange
    start = seeded_store.read_market()
    env = daemon_env(redis_server.url, write_config(tmp_path))
    monitor = spawn("logic.monitor", ["--ticks", "200", "--idle-refresh", "0"], env, tmp_path / "monitor.log")
    try:
        # Act
        stream = subprocess.run(
            [sys.executable, "-m", "engine.stream", "--feed", "sim", "--interval", "0", "--ticks", "200",
             "--seed", "11"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert stream.returncode == 0, stream.stderr
        assert monitor.wait(timeout=120) == 0, (tmp_path / "monitor.log").read_text()
    finally:
        stop_process(monitor)
    # Assert
    snap = seeded_store.read_market()
    events = seeded_store.read_ticks()
    assert snap.version == 200
    assert [e.version for e in events] == list(range(1, 201))
    assert_symmetric_psd(snap.cov)
    np.testing.assert_allclose(snap.cov, ewma_from_ticks(start, events), rtol=1e-10, atol=0)
    for pid in ("main", "hedge"):
        assert sorted(history_versions(seeded_store, pid)) == list(range(1, 201))
        latest = seeded_store.read_snapshot(pid)
        assert latest is not None and latest["version"] == 200
    assert seeded_store.read_heartbeat("stream")["bars_processed"] == "200"  # type: ignore[index]
    assert seeded_store.read_heartbeat("monitor")["ticks_processed"] == "200"  # type: ignore[index]
    assert seeded_store.tick_group_pending() == 0


def wide_csv(tmp_path: Path, rows: Sequence[Sequence[float | None]]) -> Path:
    """A wide replay CSV of ``rows`` (one a minute from 10:00, None: an empty cell)."""
    csv = tmp_path / "bars.csv"
    csv.write_text("date," + ",".join(TICKERS) + "\n" + "".join(
        f"2024-03-01T10:{i:02d}:00," + ",".join("" if p is None else repr(p) for p in row) + "\n"
        for i, row in enumerate(rows)
    ))  # fmt: skip
    return csv


def test_real_daemon_replays_a_csv_into_the_covariance_computed_here(
    seeded_store: Store, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    # Arrange: a wide CSV with a gap (empty BBB cell: the last BBB price carries on)
    rows = [
        [100.0, 50.0, 200.0, 25.0], [101.0, 49.0, 202.0, 25.5], [99.5, None, 199.0, 26.0],
        [100.5, 48.0, 201.0, 25.2], [102.0, 49.5, 203.5, 24.8], [101.0, 50.5, 202.0, 25.1],
    ]  # fmt: skip
    csv = wide_csv(tmp_path, rows)
    start = seeded_store.read_market()
    # Act
    proc = subprocess.run(
        [sys.executable, "-m", "engine.stream", "--feed", "replay", "--file", str(csv), "--interval", "0"],
        cwd=ROOT, env=daemon_env(redis_server.url, write_config(tmp_path)), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    # Assert
    assert proc.returncode == 0, proc.stderr
    filled = np.array(rows, dtype=float)
    filled[2, 1] = filled[1, 1]
    cov = start.cov.copy()
    since = np.zeros(len(TICKERS))  # bars since each ticker's last price: BBB's row 3 return spans 2 bars
    for t in range(1, len(rows)):  # row 0 anchors the replay: no return against the seeded prices
        r = np.log(filled[t] / filled[t - 1]) / np.sqrt(since + 1.0)
        a = np.array([1.0 if p is None else math.sqrt(DECAY) for p in rows[t]])  # the gap keeps its variance
        cov = a[:, None] * cov * a[None, :] + (1 - DECAY) * np.outer(r, r)
        since = np.where(a == 1.0, since + 1.0, 0.0)
    snap = seeded_store.read_market()
    assert snap.version == len(rows)
    np.testing.assert_array_equal(snap.prices, filled[-1])
    np.testing.assert_allclose(snap.cov, cov, rtol=1e-10, atol=0)
    assert [e.reset for e in seeded_store.read_ticks()] == [True] + [False] * 5


def test_a_ticker_the_replays_first_row_does_not_price_is_anchored_by_its_first_print(
    seeded_store: Store, settings: Settings, tmp_path: Path
) -> None:
    """The first row anchors the replay; a ticker it leaves empty (listed later, or one missing value) had its
    first print measured against the price stored before the replay (DDD 25 -> 40: a 47% one-minute return,
    refused by the jump filter, then confirmed and taken into the covariance). Its first print anchors it: no
    return and no jump test, as for the others on the first row (its price until then is the one it had)."""
    import argparse

    from engine.stream import _replay_feed

    rows = [[100.0, 50.0, 200.0, None], [101.0, 49.0, 202.0, 40.0], [99.5, 49.5, 199.0, 40.4],
            [100.5, 48.0, 201.0, 40.2]]  # fmt: skip
    csv = wide_csv(tmp_path, rows)
    start = seeded_store.read_market()
    assert start.prices[3] == 25.0
    feed = _replay_feed(argparse.Namespace(file=str(csv), bar_model_bars=None), settings, seeded_store)
    daemon = StreamDaemon(seeded_store, settings, feed, interval=0)

    assert daemon.process_bar(next(iter(feed)))  # the first row: DDD keeps its old price, not an anchor
    assert seeded_store.read_market().prices[3] == 25.0 and daemon.unanchored.tolist() == [False] * 3 + [True]
    daemon.run()
    assert not daemon.unanchored.any()

    cov = start.cov.copy()
    for t in (1, 2, 3):  # DDD's first print (row 1) anchors it: no return, its variance kept
        r = np.array([0.0 if rows[t - 1][i] is None else math.log(rows[t][i] / rows[t - 1][i]) for i in range(4)])
        a = np.array([1.0 if rows[t - 1][i] is None else math.sqrt(DECAY) for i in range(4)])
        cov = a[:, None] * cov * a[None, :] + (1 - DECAY) * np.outer(r, r)
    snap = seeded_store.read_market()
    np.testing.assert_array_equal(snap.prices, rows[-1])
    np.testing.assert_allclose(snap.cov, cov, rtol=1e-10, atol=0)
    assert daemon.stats.rejections == []  # no jump "from 25"


def test_a_ticker_added_during_a_replay_leaves_the_others_unanchored_until_they_print(
    seeded_store: Store, settings: Settings
) -> None:
    """The daemon reloads a universe that changed (a ticker added by the warm-up) and keeps, by name, which tickers
    no bar has priced since the reset: DDD's first print is still an anchor, not a jump from its old price."""
    daemon = StreamDaemon(seeded_store, settings, IterableFeed([]), interval=0)
    t0 = seeded_store.read_market().ts + 60.0
    first = {"AAA": 100.0, "BBB": 50.0, "CCC": 200.0}
    assert daemon.process_bar(Bar(t0, first, reset=True))
    assert daemon.process_bar(Bar(t0 + 60, {**first, "AAA": 100.5}))
    warmup.add_ticker(seeded_store, settings, "EEE", 10.0, 0.3, now=t0 + 90)
    i = seeded_store.read_market().tickers.index("DDD")
    before = seeded_store.read_market().cov[i, i]

    assert daemon.process_bar(Bar(t0 + 120, {**first, "AAA": 100.4, "DDD": 40.0}))  # reloads, then DDD anchors

    assert daemon.tickers[-1] == "EEE" and daemon.stats.rejections == []  # no "jump of ... sigma from 25"
    after = seeded_store.read_market()
    assert after.prices[i] == 40.0 and after.cov[i, i] == before  # no return: its variance kept
    assert not daemon.unanchored.any()  # DDD anchored now; EEE came with the warm-up's price, an anchor


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--feed", "replay"], "needs --file"),
        (["--shock", "AAA:-0.08"], "bad shock"),
        (["--feed", "replay", "--file", "/nonexistent.csv"], "not found"),
    ],
)
def test_real_daemon_refuses_bad_arguments_with_a_clear_error(
    seeded_store: Store, redis_server: EmbeddedRedis, tmp_path: Path, args: list[str], message: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine.stream", "--ticks", "1", *args], cwd=ROOT,
        env=daemon_env(redis_server.url, write_config(tmp_path)), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert message in proc.stderr
    assert seeded_store.read_market().version == 0


def test_real_daemon_on_an_empty_store_says_how_to_seed_it(
    store: Store, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine.stream", "--ticks", "1"], cwd=ROOT,
        env=daemon_env(redis_server.url, write_config(tmp_path)), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "STORE_EMPTY" in proc.stderr and "warmup" in proc.stderr


def test_real_daemon_stops_cleanly_on_sigterm_between_bars(
    seeded_store: Store, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    env = daemon_env(redis_server.url, write_config(tmp_path))
    proc = spawn("engine.stream", ["--interval", "0.02"], env, tmp_path / "stream.log")
    try:
        wait_for(lambda: (seeded_store.read_market_version() or 0) >= 5, 60, "five bars")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        stop_process(proc)
    version = seeded_store.read_market_version()
    assert seeded_store.read_heartbeat("stream")["bars_processed"] == str(version)  # type: ignore[index]
    assert [e.version for e in seeded_store.read_ticks()] == list(range(1, (version or 0) + 1))
    assert "stopping between bars" in (tmp_path / "stream.log").read_text()


def test_redis_killed_and_restarted_mid_run_daemon_and_monitor_resume_without_a_skipped_or_repeated_version(
    settings: Settings, tmp_path: Path
) -> None:
    # Arrange: a private server that fsyncs every write (a SIGKILL then loses nothing acknowledged)
    data_dir = Path(tempfile.mkdtemp(prefix="rdk-"))
    server = EmbeddedRedis(data_dir, appendfsync="always", server=server_kind_under_test())
    server.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        store = Store(connect(server.url))
        warmup.seed(store, settings)
        start = store.read_market()
        env = daemon_env(server.url, write_config(tmp_path))
        monitor = spawn("logic.monitor", ["--idle-refresh", "0"], env, tmp_path / "monitor.log")
        stream = spawn("engine.stream", ["--interval", "0.01", "--ticks", "300", "--seed", "5"], env,
                       tmp_path / "stream.log")  # fmt: skip
        procs += [monitor, stream]
        wait_for(lambda: (store.read_market_version() or 0) >= 60, 60, "60 bars before the crash")
        # Act
        server.kill()
        time.sleep(1.0)
        server.start()
        # Assert
        assert stream.wait(timeout=120) == 0, (tmp_path / "stream.log").read_text()
        store = Store(connect(server.url))
        wait_for(lambda: store.history_length("hedge") >= 300, 60, "the monitor to catch up")
        assert stop_process(monitor) == 0
        snap = store.read_market()
        events = store.read_ticks()
        assert snap.version == 300
        assert [e.version for e in events] == list(range(1, 301))
        np.testing.assert_allclose(snap.cov, ewma_from_ticks(start, events), rtol=1e-10, atol=0)
        for pid in ("main", "hedge"):
            assert sorted(history_versions(store, pid)) == list(range(1, 301))
        assert store.tick_group_pending() == 0
        stream_log = (tmp_path / "stream.log").read_text()
        assert "retrying" in stream_log, stream_log
        store.client.close()
    finally:
        for proc in procs:
            stop_process(proc)
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_keys_of_this_section_share_the_portfolio_hash_tag() -> None:
    assert Store.peaks_key("main") == "pf:{main}:peaks"
    assert PortfolioKeys("main").history.startswith("pf:{main}:")
