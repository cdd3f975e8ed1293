"""A finished replay started again with nothing new to play keeps its prices as old as they are (engine/stream.py
``StreamDaemon._write_end_beat``, engine/clocks.py).

Before the fix, the restarted daemon (``make stop && make demo`` after the file had ended, or the launcher
restarting a finished replay) wrote a fresh end beat dated on the wall clock at the restart: for ``late_after`` plus
``stale_price_seconds`` the gate and the pages read prices played minutes or hours before as fresh, and the gate
APPROVED orders on them. Now its end beat carries the last bar's time and the wall time that bar was played, so the
prices age from then; a restarted replay that does play new bars is fresh as before.

Every test runs the real stream daemon (its replay feed builder, which resumes after the bars the store holds),
the real gate, monitor and dashboard view models on a real Redis; the wall clock is a number the test moves, shared
by the daemon (it stamps ``wall_ts`` with it) and the readers. One test runs the real ``python -m engine.stream``
processes on the real wall clock.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine.clocks import ClockMode, MarketClock, replay_late_after
from engine.feeds import Bar, IterableFeed, ReplayFeed
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings
from engine.store import Store
from engine.store.keys import heartbeat_key
from engine.stream import StreamDaemon, _replay_feed
from logic import analytics, views
from logic.monitor import Monitor
from logic.risk_manager import RiskManager
from logic.views.system import market_status

from .test_stream import ROOT, TICKERS, daemon_env, write_config

WALL = 1_800_000_000.0
"""The wall clock's start (2027): years after the replayed data, as in any replay."""
HOUR = 3600.0
ROWS = 3
"""One-minute bars of 1 Mar 2024; prices move 1 cent a bar (the test book stays inside its VaR limit)."""


class Wall:
    """A wall clock the test moves."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def write_bars(tmp_path: Path, rows: int = ROWS) -> Path:
    csv = tmp_path / "bars.csv"
    base = (100.0, 50.0, 200.0, 25.0)
    csv.write_text(
        "date," + ",".join(TICKERS) + "\n"
        + "".join(
            f"2024-03-01T10:{i:02d}:00," + ",".join(repr(round(p + i / 100, 2)) for p in base) + "\n"
            for i in range(rows)
        )
    )  # fmt: skip
    return csv


def play(store: Store, settings: Settings, csv: Path, wall: Wall, ticks: int | None = None) -> StreamDaemon:
    """``python -m engine.stream --feed replay --file csv --interval 0`` in process: the same feed builder (it
    resumes after the file's last bar the store holds), the daemon's wall clock the test's."""
    feed = _replay_feed(argparse.Namespace(file=str(csv), bar_model_bars=None), settings, store)
    daemon = StreamDaemon(store, settings, feed, clock=wall, interval=0)
    daemon.run(ticks=ticks)
    return daemon


def codes(decision: dict[str, Any]) -> list[str]:
    return [r["code"] for r in decision["reasons"]]


def stream_status(store: Store, settings: Settings, wall: Wall) -> views.DaemonStatus:
    desk = views.Desk(store.client, settings, clock=MarketClock(store, wall=wall))
    return {d.name: d for d in views.daemon_statuses(desk)}["stream"]


def market_light(store: Store, settings: Settings, wall: Wall) -> tuple[float, analytics.Light]:
    """The Overview's Market data light of ``main`` from a fresh monitor's snapshot on the replay's clock."""
    clock = MarketClock(store, wall=wall)
    snap = Monitor(store, settings, clock, consumer=f"m{wall.t}", idle_refresh_seconds=0).refresh()["main"]
    limits = store.limits_or("main", settings.limits_for("main"))
    lights = {li.area: li for li in analytics.traffic_lights(settings.alert_rules, snap, "main", (), limits)}
    return snap["data"]["market_age_seconds"], lights["Market data"]


def test_a_finished_replay_restarted_an_hour_later_with_nothing_to_play_stays_stale_and_refuses_orders(
    seeded_store: Store, settings: Settings, tmp_path: Path
) -> None:
    # Arrange: the replay plays its file to the end at WALL; a gate and a clock live through the restart
    csv, wall = write_bars(tmp_path), Wall(WALL)
    first = play(seeded_store, settings, csv, wall)
    ended = seeded_store.read_heartbeat("stream") or {}
    last = float(ended["ts"])
    gate = RiskManager(seeded_store.client, "main", settings, clock=MarketClock(seeded_store, wall=wall))
    assert gate.check_trade_impact("AAA", 10, "BUY")["status"] == "APPROVED"  # fresh while it plays
    long_lived = MarketClock(seeded_store, wall=wall)
    wall.t = WALL + HOUR
    assert long_lived() == last + HOUR
    assert "STALE_PRICE" in codes(gate.check_trade_impact("AAA", 10, "BUY"))

    # Act: the same command again an hour later: nothing new to play
    restart = play(seeded_store, settings, csv, wall)

    # Assert: the gate refuses (before the fix: APPROVED on the hour-old prices), the Market data light is red
    decision = gate.check_trade_impact("AAA", 10, "BUY")
    assert decision["status"] == "REJECTED" and "STALE_PRICE" in codes(decision), decision
    assert any(r["message"] == "AAA price is 3600 s old (limit 30 s)" for r in decision["reasons"])
    desk = views.Desk(seeded_store.client, settings, clock=MarketClock(seeded_store, wall=wall))
    assert market_status(desk).stale_tickers == TICKERS
    age, light = market_light(seeded_store, settings, wall)
    assert age == HOUR and light.level == "red"
    # the prices are an hour old for every reader: a clock that lived through the restart and a new one
    assert long_lived() == last + HOUR and MarketClock(seeded_store, wall=wall)() == last + HOUR
    # it read no bar, and its end beat is the last bar played, at the wall time it was played
    assert isinstance(restart.feed, ReplayFeed) and restart.feed.bars == []
    assert (restart.stats.bars_read, restart.stats.bars_written) == (0, 0)
    beat = seeded_store.read_heartbeat("stream") or {}
    assert beat["run"] != ended["run"] == first._token_prefix
    assert (beat["feed_state"], beat["clock"], float(beat["ts"]), float(beat["wall_ts"])) == (
        "ended", "replay", last, WALL
    )  # fmt: skip
    status = stream_status(seeded_store, settings, wall)
    assert (status.state, status.age_seconds) == ("finished", HOUR)
    # a second restart finds the first restart's end beat: still the wall time the last bar was played
    wall.t += 60.0
    play(seeded_store, settings, csv, wall)
    assert float((seeded_store.read_heartbeat("stream") or {})["wall_ts"]) == WALL
    assert MarketClock(seeded_store, wall=wall)() == last + HOUR + 60.0


def test_a_restarted_finished_replay_ages_from_when_its_last_bar_was_played_to_the_stale_limit_exactly(
    seeded_store: Store, settings: Settings, tmp_path: Path
) -> None:
    # Arrange: played to the end at WALL, restarted 10 wall seconds later (inside every limit)
    csv, wall = write_bars(tmp_path), Wall(WALL)
    play(seeded_store, settings, csv, wall)
    last = float((seeded_store.read_heartbeat("stream") or {})["ts"])
    wall.t = WALL + 10.0
    play(seeded_store, settings, csv, wall)
    stale = settings.limits.stale_price_seconds
    late = replay_late_after(0.0, stale)  # interval 0: the 5 s floor
    assert (late, stale) == (5.0, 30.0)
    gate = RiskManager(seeded_store.client, "main", settings, clock=MarketClock(seeded_store, wall=wall))

    # Act / Assert: the clock stands at the last bar for late_after wall seconds after the bar was played (not
    # after the restart), then runs on by the whole silence since it
    wall.t = WALL + late
    assert MarketClock(seeded_store, wall=wall)() == last
    wall.t = WALL + late + 1.0
    assert MarketClock(seeded_store, wall=wall)() == last + late + 1.0
    # the gate approves at exactly the stale-price limit after the bar was played, STALE_PRICE one second over
    # (before the fix: approved until 10 s later, the restart's wall time plus the limit)
    wall.t = WALL + stale
    assert gate.check_trade_impact("AAA", 10, "BUY")["status"] == "APPROVED"
    age, light = market_light(seeded_store, settings, wall)
    assert age == stale and light.level != "red"
    wall.t = WALL + stale + 1.0
    decision = gate.check_trade_impact("AAA", 10, "BUY")
    assert decision["status"] == "REJECTED" and codes(decision) == ["STALE_PRICE"] * len(codes(decision)), decision
    age, light = market_light(seeded_store, settings, wall)
    assert age == stale + 1.0 and light.level == "red"


def test_a_restarted_replay_that_plays_new_bars_is_fresh_as_before(
    seeded_store: Store, settings: Settings, tmp_path: Path
) -> None:
    # Arrange: 3 of 5 bars played at WALL (--ticks 3: no end beat), then an hour without a daemon
    csv, wall = write_bars(tmp_path, rows=5), Wall(WALL)
    play(seeded_store, settings, csv, wall, ticks=3)
    gate = RiskManager(seeded_store.client, "main", settings, clock=MarketClock(seeded_store, wall=wall))
    wall.t = WALL + HOUR
    assert "STALE_PRICE" in codes(gate.check_trade_impact("AAA", 10, "BUY"))

    # Act: the restart plays the two bars left, then ends
    restart = play(seeded_store, settings, csv, wall)

    # Assert: the new bars are fresh from their own wall time, the end beat keeps it
    assert restart.stats.bars_written == 2
    beat = seeded_store.read_heartbeat("stream") or {}
    assert beat["feed_state"] == "ended" and float(beat["wall_ts"]) == WALL + HOUR
    last = float(beat["ts"])
    assert last == float(seeded_store.read_market_header().price_ts[0])
    assert MarketClock(seeded_store, wall=wall)() == last
    assert gate.check_trade_impact("AAA", 10, "BUY")["status"] == "APPROVED"
    wall.t = WALL + HOUR + settings.limits.stale_price_seconds
    assert gate.check_trade_impact("AAA", 10, "BUY")["status"] == "APPROVED"
    wall.t += 1.0
    assert "STALE_PRICE" in codes(gate.check_trade_impact("AAA", 10, "BUY"))


def test_a_restart_that_only_reads_bars_refused_whole_ends_on_the_earlier_runs_last_bar(
    seeded_store: Store, settings: Settings
) -> None:
    # Arrange: three bars played at WALL, then a last bar whose every price is refused (<= 0); the file ended
    t0 = 1_709_287_200.0  # 1 Mar 2024 10:00 UTC
    prices = dict(zip(TICKERS, (100.0, 50.0, 200.0, 25.0), strict=True))
    good = [Bar(t0 + 60 * i, {t: p + i / 100 for t, p in prices.items()}, reset=i == 0) for i in range(3)]
    bad = Bar(t0 + 180, dict.fromkeys(TICKERS, -1.0))
    wall = Wall(WALL)
    StreamDaemon(seeded_store, settings, IterableFeed([*good, bad]), clock=wall, interval=0,
                 clock_mode=ClockMode.REPLAY).run()  # fmt: skip
    assert float((seeded_store.read_heartbeat("stream") or {})["wall_ts"]) == WALL

    # Act: restarted an hour later, it resumes after the last bar written and reads the refused one again
    wall.t = WALL + HOUR
    restart = StreamDaemon(seeded_store, settings, IterableFeed([bad]), clock=wall, interval=0,
                           clock_mode=ClockMode.REPLAY)  # fmt: skip
    restart.run()

    # Assert: nothing new was written; the end beat is the earlier run's, the prices an hour and a bar old
    assert (restart.stats.bars_read, restart.stats.bars_written, restart.stats.bars_rejected) == (1, 0, 1)
    beat = seeded_store.read_heartbeat("stream") or {}
    assert (beat["feed_state"], float(beat["ts"]), float(beat["wall_ts"])) == ("ended", bad.ts, WALL)
    assert MarketClock(seeded_store, wall=wall)() == bad.ts + HOUR
    gate = RiskManager(seeded_store.client, "main", settings, clock=MarketClock(seeded_store, wall=wall))
    assert any(r["message"] == "AAA price is 3660 s old (limit 30 s)" for r in gate.check_trade_impact(
        "AAA", 10, "BUY")["reasons"])  # fmt: skip


def test_a_heartbeat_without_wall_ts_dates_the_restart_end_by_the_commit_of_the_last_tick(
    seeded_store: Store, settings: Settings, tmp_path: Path
) -> None:
    # Arrange: a store whose stream heartbeat predates ``wall_ts`` (written by an older daemon)
    csv, wall = write_bars(tmp_path), Wall(WALL)
    play(seeded_store, settings, csv, wall)
    seeded_store.client.hdel(heartbeat_key("stream"), "wall_ts")
    tick = seeded_store.last_tick()
    assert tick is not None
    committed = int(tick.entry_id.split("-")[0]) / 1000.0  # the Redis server's clock at the commit, in ms

    # Act
    wall.t = WALL + HOUR
    play(seeded_store, settings, csv, wall)

    # Assert: dated by when Redis committed the last bar, not by the restart's wall clock
    beat = seeded_store.read_heartbeat("stream") or {}
    assert float(beat["wall_ts"]) == committed != WALL + HOUR


def test_the_real_daemon_restarted_after_its_file_ended_keeps_the_wall_time_its_last_bar_was_played(
    seeded_store: Store, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    # Arrange: ``python -m engine.stream --feed replay`` plays the file to its end on the real wall clock
    csv, config = write_bars(tmp_path), write_config(tmp_path)
    command = [sys.executable, "-m", "engine.stream", "--feed", "replay", "--file", str(csv), "--interval", "0"]

    def replay() -> str:
        done = subprocess.run(
            command, cwd=ROOT, env=daemon_env(redis_server.url, config), capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    replay()
    first = seeded_store.read_heartbeat("stream") or {}

    # Act: the same command again (a new process), nothing new to play
    out = replay()

    # Assert: a new run and process ended at once on the first run's last bar and its wall time
    beat = seeded_store.read_heartbeat("stream") or {}
    assert f"holds its first {ROWS} of {ROWS} bars" in out
    assert beat["run"] != first["run"] and beat["pid"] != first["pid"]
    assert (beat["feed_state"], beat["ts"], beat["wall_ts"]) == ("ended", first["ts"], first["wall_ts"])
    assert seeded_store.read_market_version() == ROWS
