"""Edges of a replay's clock (engine/clocks.py): rows dated on holidays, a replay daemon that died or finished its
file, and a long-lived clock that meets a new replay years back.

Every test runs the real stream daemon, monitor, gate and dashboard view models on a real Redis; the wall clock is
a number the test moves, shared by the daemon (it stamps ``wall_ts`` with it) and the readers.
"""

from __future__ import annotations

import argparse
import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import warmup
from engine.clocks import ClockMode, MarketClock, stamp_daily_closes
from engine.feeds import Bar, IterableFeed
from engine.sessions import Sessions
from engine.settings import Settings, settings_from_dict
from engine.store import Store
from engine.stream import StreamDaemon, _replay_feed
from logic import views
from logic.monitor import Monitor
from logic.risk_manager import RiskManager
from logic.views.system import market_status

from .conftest import TEST_CONFIG

PRICES = {"AAA": 100.0, "BBB": 50.0, "CCC": 200.0, "DDD": 25.0}
WALL = 1_800_000_000.0
"""The wall clock's start (2027): years after the replayed data, as in any replay."""


def ny(y: int, m: int, d: int, hh: int, mm: int = 0) -> float:
    from zoneinfo import ZoneInfo

    return datetime(y, m, d, hh, mm, tzinfo=ZoneInfo("America/New_York")).timestamp()


class Wall:
    """A wall clock the test moves."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def spy_settings(cash: str = "0.00", qty: int = 1000) -> Settings:
    """One share, SPY, ``qty`` held (1000 and no cash: a 1-dollar move is 1000 of P&L); the XNYS calendar."""
    cfg: dict[str, Any] = copy.deepcopy(TEST_CONFIG)
    cfg["universe"]["assets"] = {
        "SPY": {"price": 100.0, "annual_vol": 0.2, "avg_daily_volume": 1_000_000, "spread_bps": 2.0}
    }
    cfg["portfolios"] = [{"id": "main", "account_type": "cash", "cash": cash, "holdings": {"SPY": qty}}]
    cfg["stress_scenarios"] = {"crash": {"description": "-20%", "shocks": {"*": -0.2}}}
    cfg["market"] = {"calendar": "XNYS"}
    cfg["history"] = {"raw_seconds": 400 * 86400.0}
    return settings_from_dict(cfg)


def replay_rows(
    store: Store, settings: Settings, tmp_path: Path, rows: list[tuple[str, float]], seed_day: datetime
) -> list[tuple[Bar, dict[str, Any], float | None]]:
    """Seed, replay a date-only SPY file bar by bar through the daemon and the monitor; per bar: the bar, the
    history point and the gate's collar reference for a 1-share buy."""
    path = tmp_path / "spy.csv"
    path.write_text("date,SPY\n" + "".join(f"{d},{p}\n" for d, p in rows))
    warmup.seed(store, settings, now=seed_day.timestamp())
    wall = Wall(WALL)
    feed = _replay_feed(argparse.Namespace(file=str(path), bar_model_bars=None), settings, store)
    daemon = StreamDaemon(store, settings, feed, clock=wall, interval=0)
    clock = MarketClock(store, wall=wall)
    monitor = Monitor(store, settings, clock, idle_refresh_seconds=0)
    gate = RiskManager(store.client, "main", settings, clock=clock)
    out = []
    for bar in feed:
        assert daemon.process_bar(bar)
        monitor.process_available()
        decision = gate.check_trade_impact("SPY", 1, "BUY")
        out.append((bar, store.read_history("main")[-1], decision.get("reference_price")))
    return out


# -- 1. a row dated on a holiday -----------------------------------------------------------------------------


def test_a_thanksgiving_row_is_the_previous_sessions_close_and_the_next_session_counts_no_move_again(
    store: Store, tmp_path: Path
) -> None:
    # Arrange: a daily file that also lists Thanksgiving 2019 (Thu 28 Nov), 3 below Wednesday's 100; Friday is a
    # half day (13:00 close) at the same 97
    rows = [("2019-11-25", 100.0), ("2019-11-26", 100.0), ("2019-11-27", 100.0), ("2019-11-28", 97.0),
            ("2019-11-29", 97.0), ("2019-12-02", 97.0)]  # fmt: skip

    # Act
    seen = replay_rows(store, spy_settings(), tmp_path, rows, datetime(2019, 11, 22, tzinfo=UTC))

    # Assert: the holiday row and Wednesday's are one bar at Wednesday's close, with the later (holiday) price
    times = [bar.ts for bar, _, _ in seen]
    assert times == [ny(2019, 11, 25, 16), ny(2019, 11, 26, 16), ny(2019, 11, 27, 16), ny(2019, 11, 29, 13),
                     ny(2019, 12, 2, 16)]  # fmt: skip
    assert [bar.prices["SPY"] for bar, _, _ in seen] == [100.0, 100.0, 97.0, 97.0, 97.0]
    wednesday, friday, monday = seen[2][1], seen[3][1], seen[4][1]
    assert wednesday["pnl.daily"] == -3000.0 and wednesday["drawdown.daily"] == pytest.approx(-0.03, rel=1e-12)
    # Friday opens at Wednesday's close, 97: no move (before the fix: -3000 and -3% a second time)
    assert (friday["pnl.daily"], friday["drawdown.daily"]) == (0.0, 0.0)
    assert (monday["pnl.daily"], monday["drawdown.daily"]) == (0.0, 0.0)
    # the collar's reference on Friday is the holiday row's price (it stayed at 100 when the row set no close)
    assert seen[3][2] == 97.0


def test_a_weekly_file_whose_monday_is_mlk_day_counts_that_weeks_move_once(store: Store, tmp_path: Path) -> None:
    # Arrange: Monday-dated weekly closes; 2019-01-21 (MLK day) is 8 below the week before
    rows = [("2019-01-07", 100.0), ("2019-01-14", 100.0), ("2019-01-21", 92.0), ("2019-01-28", 92.0),
            ("2019-02-04", 92.0)]  # fmt: skip

    # Act
    seen = replay_rows(store, spy_settings(), tmp_path, rows, datetime(2019, 1, 4, tzinfo=UTC))

    # Assert: the holiday row is Friday 18 Jan's close; the next Monday opens at it: no move, reference 92
    assert seen[2][0].ts == ny(2019, 1, 18, 16)
    assert seen[2][1]["pnl.daily"] == -8000.0
    assert (seen[3][1]["pnl.daily"], seen[3][1]["drawdown.daily"], seen[3][2]) == (0.0, 0.0, 92.0)


def test_rows_on_days_without_a_session_merge_into_the_previous_close_the_later_price_of_each_ticker_kept() -> None:
    # Arrange: a file of every calendar day: Fri 22 Nov 2019 (first row: the replay's reset), Sat, Sun, Mon;
    # Saturday has no B, Sunday has no A
    xnys = Sessions("XNYS")
    day = [datetime(2019, 11, d, tzinfo=UTC).timestamp() for d in (22, 23, 24, 25)]
    bars = [Bar(day[0], {"A": 1.0, "B": 10.0}, reset=True), Bar(day[1], {"A": 2.0}), Bar(day[2], {"B": 30.0}),
            Bar(day[3], {"A": 4.0, "B": 40.0})]  # fmt: skip

    # Act
    stamped = stamp_daily_closes(bars, xnys)

    # Assert: one bar at Friday's close, Saturday's A and Sunday's B; still the reset bar; Monday untouched
    assert stamped == [Bar(ny(2019, 11, 22, 16), {"A": 2.0, "B": 30.0}, reset=True),
                       Bar(ny(2019, 11, 25, 16), {"A": 4.0, "B": 40.0})]  # fmt: skip


# -- 2. a replay daemon that died or finished ----------------------------------------------------------------


def _replay_bars(store: Store, settings: Settings, wall: Wall, *, finish: bool) -> tuple[float, StreamDaemon]:
    """Three one-minute bars of 6 Mar 2019 (inside the session) written in replay mode at wall time ``wall``;
    ``finish``: the feed runs to its end (else the daemon dies after its last write, as after kill -9)."""
    t0 = ny(2019, 3, 6, 14)
    bars = [Bar(t0 + 60 * i, {**PRICES, "AAA": 100.0 + i}, reset=i == 0) for i in range(3)]
    daemon = StreamDaemon(
        store, settings, IterableFeed(bars if finish else []), clock=wall, interval=0, clock_mode=ClockMode.REPLAY
    )
    if finish:
        daemon.run()
    else:
        for bar in bars:
            assert daemon.process_bar(bar)
    return bars[-1].ts, daemon


def _codes(decision: dict[str, Any]) -> list[str]:
    return [r["code"] for r in decision["reasons"]]


def test_a_dead_replay_daemon_fails_closed_after_exactly_the_stale_price_limit_of_wall_silence(
    seeded_store: Store, settings: Settings
) -> None:
    # Arrange: the daemon writes three bars, then dies; the readers share the wall clock
    wall = Wall(WALL)
    last, _ = _replay_bars(seeded_store, settings, wall, finish=False)
    gate = RiskManager(seeded_store.client, "main", settings, clock=MarketClock(seeded_store, wall=wall))
    desk = views.Desk(seeded_store.client, settings, clock=MarketClock(seeded_store, wall=wall))
    late = min(max(5.0, 3 * 0.0), settings.limits.stale_price_seconds)  # interval 0: the 5 s floor
    stale = settings.limits.stale_price_seconds
    assert (late, stale) == (5.0, 30.0)

    # Act / Assert: the gate approves at exactly the stale-price limit of wall silence, STALE_PRICE one second over
    wall.t = WALL + stale
    decision = gate.check_trade_impact("AAA", 10, "BUY")
    assert decision["status"] == "APPROVED", decision
    assert market_status(desk).stale_tickers == ()
    wall.t = WALL + stale + 1.0
    decision = gate.check_trade_impact("AAA", 10, "BUY")
    assert decision["status"] == "REJECTED" and "STALE_PRICE" in _codes(decision), decision
    assert market_status(desk).stale_tickers == tuple(PRICES)

    # the System page judges the stream daemon by the wall time of its last beat
    limit = views.common._stale_after(settings)
    wall.t = WALL + limit
    status = {d.name: d for d in views.daemon_statuses(desk)}["stream"]
    assert (status.state, status.age_seconds) == ("running", limit)
    wall.t = WALL + limit + 1.0
    status = {d.name: d for d in views.daemon_statuses(desk)}["stream"]
    assert (status.state, status.age_seconds) == ("stale", limit + 1.0)
    assert any(w.startswith("Stream daemon stale (last heartbeat") for w in views.check_health(desk).warnings)

    # the clock: the last bar's time while the daemon may still be silent (``late_after``, in its heartbeat with
    # the wall time of the beat), that time plus the whole wall silence one second later
    beat = seeded_store.read_heartbeat("stream") or {}
    assert (float(beat["late_after"]), float(beat["wall_ts"])) == (late, WALL)
    fresh = MarketClock(seeded_store, wall=wall)
    wall.t = WALL + late
    assert fresh() == last
    wall.t = WALL + late + 1.0
    assert fresh() == last + late + 1.0


def test_a_replay_that_reached_the_end_of_its_file_says_so_and_its_prices_go_stale(
    seeded_store: Store, settings: Settings
) -> None:
    # Arrange / Act: the daemon plays its three bars to the end of the feed
    wall = Wall(WALL)
    last, _ = _replay_bars(seeded_store, settings, wall, finish=True)
    desk = views.Desk(seeded_store.client, settings, clock=MarketClock(seeded_store, wall=wall))
    gate = RiskManager(seeded_store.client, "main", settings, clock=MarketClock(seeded_store, wall=wall))

    # Assert: the heartbeat keeps the last bar's time and says the feed ended; the System page says "finished"
    beat = seeded_store.read_heartbeat("stream") or {}
    assert (beat["feed_state"], float(beat["ts"]), beat["clock"]) == ("ended", last, "replay")
    status = {d.name: d for d in views.daemon_statuses(desk)}["stream"]
    assert status.state == "finished" and "end of its file" in status.fix
    assert any(w.startswith("Stream daemon finished its replay") for w in views.check_health(desk).warnings)
    # and its prices go stale as a dead feed's: approved at the limit, refused one second over
    wall.t = WALL + settings.limits.stale_price_seconds
    assert gate.check_trade_impact("AAA", 10, "BUY")["status"] == "APPROVED"
    wall.t += 1.0
    assert "STALE_PRICE" in _codes(gate.check_trade_impact("AAA", 10, "BUY"))


# -- 3. a long-lived clock and a new replay years back --------------------------------------------------------


def test_a_long_lived_clock_follows_a_new_replay_years_back_and_never_goes_back_within_one(
    store: Store, tmp_path: Path
) -> None:
    # Arrange: a gate that lives through two replays: Nov 2019, then (after a re-seed) Mar 2012; cash to buy
    settings = spy_settings(cash="1000000.00", qty=10)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("date,SPY\n2019-11-25,100\n2019-11-26,100.5\n2019-11-27,101\n")
    b.write_text("date,SPY\n2012-03-05,100\n2012-03-06,100.2\n2012-03-07,100.1\n")
    wall = Wall(WALL)
    warmup.seed(store, settings, now=datetime(2019, 11, 22, tzinfo=UTC).timestamp())
    gate = RiskManager(store.client, "main", settings, clock=MarketClock(store, wall=wall))
    clock = gate.clock
    seen = []
    for path, seed in ((a, None), (b, datetime(2012, 3, 2, tzinfo=UTC))):
        if seed is not None:
            warmup.seed(store, settings, now=seed.timestamp())
        feed = _replay_feed(argparse.Namespace(file=str(path), bar_model_bars=None), settings, store)
        # Act
        StreamDaemon(store, settings, feed, clock=wall, interval=0).run()
        seen.append((clock(), gate.check_trade_impact("SPY", 1, "BUY")))

    # Assert: each replay's own last close; the second replay's orders are judged on its prices
    assert seen[0][0] == ny(2019, 11, 27, 16) and seen[1][0] == ny(2012, 3, 7, 16)
    assert [d["status"] for _, d in seen] == ["APPROVED", "APPROVED"], seen
    # within one run the clock never goes back, even when the heartbeat's bar time does
    store.write_heartbeat("stream", {"ts": ny(2012, 3, 6, 16)})
    assert clock() == ny(2012, 3, 7, 16)


# -- 4. a replay slower than real time, and the end of a file noticed late ------------------------------------------


def test_a_replay_slower_than_late_after_reads_each_new_bar_fresh_and_goes_stale_between_bars(
    seeded_store: Store, settings: Settings
) -> None:
    # Arrange: one-minute bars played 200 wall seconds apart (slower than real time): late_after is then the
    # 30 s stale-price limit (3 x 200 capped by it); the gate and the System view read the shared wall clock
    wall = Wall(WALL)
    pace = 200.0
    daemon = StreamDaemon(
        seeded_store, settings, IterableFeed([]), clock=wall, interval=pace, clock_mode=ClockMode.REPLAY
    )
    gate = RiskManager(seeded_store.client, "main", settings, clock=MarketClock(seeded_store, wall=wall))
    desk = views.Desk(seeded_store.client, settings, clock=MarketClock(seeded_store, wall=wall))
    stale = settings.limits.stale_price_seconds
    assert (min(max(5.0, 3 * pace), stale), stale) == (30.0, 30.0)
    t0 = ny(2019, 3, 6, 14)

    for k in range(3):
        bar = Bar(t0 + 60.0 * k, {**PRICES, "AAA": 100.0 + k}, reset=k == 0)
        wall.t = WALL + pace * k
        # Act: the daemon writes the next bar
        assert daemon.process_bar(bar)
        # Assert: "now" is that bar's time (the wall extension of the silence before it is dropped): age 0
        assert gate.clock() == bar.ts, k
        assert gate.check_trade_impact("AAA", 10, "BUY")["status"] == "APPROVED", k
        assert market_status(desk).stale_tickers == ()
        # between bars: fresh at exactly the stale limit of silence, stale one second over, as a live feed that
        # slow; the clock runs on with the wall until the next bar
        wall.t = WALL + pace * k + stale
        assert gate.clock() == bar.ts
        assert gate.check_trade_impact("AAA", 10, "BUY")["status"] == "APPROVED", k
        wall.t += 1.0
        assert gate.clock() == bar.ts + stale + 1.0
        assert "STALE_PRICE" in _codes(gate.check_trade_impact("AAA", 10, "BUY")), k
        assert market_status(desk).stale_tickers == tuple(PRICES)
        wall.t = WALL + pace * (k + 1) - 1.0
        assert gate.clock() == bar.ts + pace - 1.0
        assert market_status(desk).stale_tickers == tuple(PRICES)

    # the daemon then dies: the clock never steps back without a new bar, the prices stay stale
    last = t0 + 120.0
    wall.t = WALL + pace * 2 + 1000.0
    assert gate.clock() == last + 1000.0
    assert "STALE_PRICE" in _codes(gate.check_trade_impact("AAA", 10, "BUY"))
    seeded_store.write_heartbeat("stream", {"ts": last - 60.0})  # an older bar time: not a new bar, no step back
    assert gate.clock() == last + 1000.0


def test_the_end_of_a_file_noticed_after_a_silence_keeps_the_replay_stale_for_every_reader(
    seeded_store: Store, settings: Settings
) -> None:
    # Arrange: three bars written at WALL; the feed says it has no more 100 wall seconds later (a slow file read,
    # a paced replay), while a long-lived clock already reads the silence
    wall = Wall(WALL)
    t0 = ny(2019, 3, 6, 14)
    bars = [Bar(t0 + 60.0 * i, {**PRICES, "AAA": 100.0 + i}, reset=i == 0) for i in range(3)]
    running = MarketClock(seeded_store, wall=wall)
    seen: list[float] = []

    def feed() -> Any:
        yield from bars
        wall.t = WALL + 100.0
        seen.append(running())

    # Act
    StreamDaemon(
        seeded_store, settings, IterableFeed(feed()), clock=wall, interval=0, clock_mode=ClockMode.REPLAY
    ).run()

    # Assert: the end beat keeps the last bar's time and the wall time it was written at, so the running clock
    # does not step back to the bar time, and a clock that starts now (a dashboard opened after the end) reads the
    # same 100 s of silence: the gate refuses on stale prices
    last = bars[-1].ts
    beat = seeded_store.read_heartbeat("stream") or {}
    assert (beat["feed_state"], float(beat["ts"]), float(beat["wall_ts"])) == ("ended", last, WALL)
    assert seen == [last + 100.0] and running() == last + 100.0
    fresh = RiskManager(seeded_store.client, "main", settings, clock=MarketClock(seeded_store, wall=wall))
    assert fresh.clock() == last + 100.0
    assert "STALE_PRICE" in _codes(fresh.check_trade_impact("AAA", 10, "BUY"))
