"""Edges of the equity peaks and their daily / weekly windows (engine/sessions.py, engine/store/monitoring.py
``_PEAKS_LUA``, engine/store/tick_state.py, logic/batch_tick.py), through a real Redis and both monitor paths:

- a move after a session's close counts once: in the next session's day (and a Friday evening's in the next
  week), never in the day that closed as well (the next day measures from that close); weekends, holidays, early
  closes, the close itself (in its day) and one second after it (the next), the 24/7 calendar unchanged, and
  the gate's daily loss measured from the day the monitor stamps;
- a corrupt ``pf:{id}:peaks`` (a field that is no number, a partial hash, a key of another type) is refused by
  both paths, with or without a copy of it in memory: that portfolio is reported, gets no snapshot, and the
  vectorised path leaves its stored state exactly as it was; the others in the tick get theirs. One rule for a
  stored number in Lua (the merge, the owner read) and Python (the load, ``read_peaks``), at a double's range.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis

import warmup
from engine.feeds import Bar, IterableFeed
from engine.sessions import ALWAYS_OPEN, MarketCalendar, sessions_for, wall_clock_period_ids
from engine.settings import Settings
from engine.store import PortfolioKeys, Store
from engine.stream import StreamDaemon
from logic.monitor import Monitor
from logic.risk_manager import RiskManager

from .conftest import store_contents

NY = ZoneInfo("America/New_York")
PATHS = pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "per-portfolio"])


def ny(*args: int) -> float:
    return datetime(*args, tzinfo=NY).timestamp()  # type: ignore[misc]


def equity(aaa: float) -> float:
    """main's equity (tests/conftest.py: 1,000,000 cash, 1000 AAA, 2000 BBB at 50) with AAA at ``aaa``."""
    return 1_100_000.0 + 1000.0 * aaa


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Desk:
    """A seeded store, a stream daemon writing one bar per step and a monitor of one kind processing it."""

    def __init__(self, store: Store, settings: Settings, t: float, vectorised: bool) -> None:
        self.store, self.settings = store, settings
        self.clock = Clock(t)
        self.monitor = Monitor(store, settings, clock=self.clock, idle_refresh_seconds=0, vectorised=vectorised)

    def step(self, t: float, prices: Mapping[str, float]) -> dict[str, Any]:
        self.clock.t = t
        feed = IterableFeed([Bar(t, dict(prices))])
        StreamDaemon(self.store, self.settings, feed, clock=self.clock, interval=0).run()
        self.monitor.process_available()
        snap = self.store.read_snapshot("main")
        assert snap is not None and snap["ts"] == t
        return snap

    def day(self) -> tuple[str, str]:
        peaks = self.store.read_peaks("main")
        assert peaks is not None
        return peaks.day, peaks.week


# -- the daily window after a close ------------------------------------------------------------------------------


WINDOWS = [
    ("thu-close", ny(2024, 3, 7, 16, 0, 0), ("2024-03-07", "2024-03-04")),  # the close: in its own day
    ("thu-close+1s", ny(2024, 3, 7, 16, 0, 1), ("2024-03-08", "2024-03-04")),  # a second after: the next session's
    ("fri-premarket", ny(2024, 3, 8, 9, 29, 59), ("2024-03-08", "2024-03-04")),  # the session about to open
    ("fri-close", ny(2024, 3, 8, 16, 0, 0), ("2024-03-08", "2024-03-04")),
    ("fri-close+1s", ny(2024, 3, 8, 16, 0, 1), ("2024-03-11", "2024-03-11")),  # Monday's day, the next week
    ("saturday", ny(2024, 3, 9, 12, 0), ("2024-03-11", "2024-03-11")),
    ("before-good-friday", ny(2024, 3, 28, 16, 0, 1), ("2024-04-01", "2024-04-01")),  # the next Monday
    ("before-mlk-monday", ny(2019, 1, 18, 16, 0, 1), ("2019-01-22", "2019-01-22")),  # Tuesday, its week
    ("mlk-day", ny(2019, 1, 21, 12, 0), ("2019-01-22", "2019-01-22")),
    ("early-close", ny(2019, 12, 24, 13, 0, 0), ("2019-12-24", "2019-12-23")),  # 13:00: in its day
    ("early-close+1s", ny(2019, 12, 24, 13, 0, 1), ("2019-12-26", "2019-12-23")),  # past Christmas
]


@pytest.mark.parametrize(("t", "want"), [pytest.param(t, want, id=name) for name, t, want in WINDOWS])
def test_a_time_after_a_close_is_in_the_next_sessions_day_and_the_close_in_its_own(
    t: float, want: tuple[str, str]
) -> None:
    cal = MarketCalendar("XNYS", NY, 0)
    assert cal.period_ids(t) == want
    assert sessions_for("XNYS").period_ids(t) == want


def test_the_session_the_collar_reanchors_on_is_still_the_one_that_closed() -> None:
    # engine/collar.py re-anchors when session_id changes: at the open, not a second after the close
    cal = MarketCalendar("XNYS", NY, 0)
    assert cal.session_id(ny(2024, 3, 8, 16, 0, 1)) == "2024-03-08"
    assert cal.session_id(ny(2024, 3, 11, 9, 29, 59)) == "2024-03-08"
    assert cal.session_id(ny(2024, 3, 11, 9, 30)) == "2024-03-11"


def test_the_24_7_calendar_keeps_the_reset_hour_rule_after_an_exchanges_close() -> None:
    always = MarketCalendar(ALWAYS_OPEN, NY, 0)
    for t in (ny(2024, 3, 7, 16, 0, 1), ny(2024, 3, 8, 23, 59, 59), ny(2024, 3, 9, 0, 0)):
        assert always.period_ids(t) == wall_clock_period_ids(t, NY, 0)
        assert always.sets_close(t)
    assert always.period_ids(ny(2024, 3, 8, 16, 0, 1)) == ("2024-03-08", "2024-03-04")


def test_after_the_calendars_last_close_both_rules_follow_the_24_7_rule() -> None:
    cal = MarketCalendar("XNYS", UTC, 0)
    sessions = sessions_for("XNYS")
    t = float(sessions.closes[-1]) + 3600.0  # in range for session_at, with no next session
    assert cal.period_ids(t) == wall_clock_period_ids(t, UTC, 0)
    assert cal.sets_close(t)  # as period_ids: the 24/7 rule, which never closes
    assert cal.session_id(t) == sessions.dates[-1]


@PATHS
def test_an_after_close_move_counts_once_in_the_next_days_pnl(
    seeded_store: Store, settings: Settings, vectorised: bool
) -> None:
    # Arrange: XNYS (the test settings' calendar); only AAA moves
    assert settings.market.calendar == "XNYS"
    desk = Desk(seeded_store, settings, ny(2024, 3, 7, 10), vectorised)
    desk.step(ny(2024, 3, 7, 10), {"AAA": 100.0})  # Thursday's first equity: its day opens here

    # Act: Thursday's close, a move after it, Friday pre-market, the open and later
    closed = desk.step(ny(2024, 3, 7, 16, 0, 0), {"AAA": 104.0})
    closed_day = desk.day()
    evening = desk.step(ny(2024, 3, 7, 16, 0, 1), {"AAA": 110.0})
    evening_day = desk.day()
    premarket = desk.step(ny(2024, 3, 8, 9, 29, 59), {"AAA": 101.0})
    opened = desk.step(ny(2024, 3, 8, 9, 30), {"AAA": 112.0})
    later = desk.step(ny(2024, 3, 8, 11), {"AAA": 108.0})

    # Assert: Thursday's P&L is fixed at its close (104 - 100); every later equity is Friday's, measured from
    # Thursday's close, so Thursday's and Friday's P&L add up to the move from Thursday's open to now
    assert closed_day == ("2024-03-07", "2024-03-04") and closed["pnl"]["daily"] == pytest.approx(4000.0)
    assert evening_day == ("2024-03-08", "2024-03-04")
    assert evening["pnl"]["daily"] == pytest.approx(equity(110) - equity(104), rel=1e-12)
    assert premarket["pnl"]["daily"] == pytest.approx(equity(101) - equity(104), rel=1e-12)
    assert opened["pnl"]["daily"] == pytest.approx(equity(112) - equity(104), rel=1e-12)
    assert later["pnl"]["daily"] == pytest.approx(equity(108) - equity(104), rel=1e-12)
    assert closed["pnl"]["daily"] + later["pnl"]["daily"] == pytest.approx(equity(108) - equity(100), rel=1e-12)
    # the drawdowns follow the same windows: Friday's peak holds the evening's 110, and the pre-market drop from
    # it is Friday's drawdown; the week (Monday 4th) holds Thursday's equities too
    assert evening["drawdown"]["daily"] == 0.0
    assert premarket["drawdown"]["daily"] == pytest.approx(equity(101) / equity(110) - 1, rel=1e-12)
    assert later["drawdown"]["daily"] == pytest.approx(equity(108) / equity(112) - 1, rel=1e-12)
    assert later["drawdown"]["weekly"] == pytest.approx(equity(108) / equity(112) - 1, rel=1e-12)
    peaks = seeded_store.read_peaks("main")
    assert peaks is not None and (peaks.day, peaks.day_open) == ("2024-03-08", equity(104))


@PATHS
def test_a_friday_evening_move_is_the_next_weeks_and_a_drop_after_the_close_a_drawdown_of_it(
    seeded_store: Store, settings: Settings, vectorised: bool
) -> None:
    desk = Desk(seeded_store, settings, ny(2024, 3, 28, 15), vectorised)
    desk.step(ny(2024, 3, 28, 15), {"AAA": 120.0})  # the week's peak so far

    # Act: Thursday 28 March 2024 closes at 100 (Good Friday follows: no session until Monday 1 April), then
    # drops after the close, on the holiday and over the weekend, and Monday opens
    closed = desk.step(ny(2024, 3, 28, 16), {"AAA": 100.0})
    holiday = desk.step(ny(2024, 3, 29, 12), {"AAA": 95.0})
    holiday_ids = desk.day()
    sunday = desk.step(ny(2024, 3, 31, 20), {"AAA": 90.0})
    monday = desk.step(ny(2024, 4, 1, 10), {"AAA": 96.0})

    # Assert: Thursday's day and week end at its close; everything after is Monday's day and week, opening at
    # Thursday's close (peak: max(close, first equity) = the close)
    assert closed["pnl"]["daily"] == pytest.approx(equity(100) - equity(120), rel=1e-12)
    assert closed["drawdown"]["weekly"] == pytest.approx(equity(100) / equity(120) - 1, rel=1e-12)
    assert holiday_ids == ("2024-04-01", "2024-04-01")
    assert holiday["pnl"]["daily"] == pytest.approx(equity(95) - equity(100), rel=1e-12)
    assert holiday["drawdown"]["daily"] == pytest.approx(equity(95) / equity(100) - 1, rel=1e-12)
    assert holiday["drawdown"]["weekly"] == pytest.approx(equity(95) / equity(100) - 1, rel=1e-12)  # a new week
    assert sunday["pnl"]["daily"] == pytest.approx(equity(90) - equity(100), rel=1e-12)
    assert monday["pnl"]["daily"] == pytest.approx(equity(96) - equity(100), rel=1e-12)
    assert monday["drawdown"]["weekly"] == pytest.approx(equity(96) / equity(100) - 1, rel=1e-12)
    assert monday["drawdown"]["max"] == pytest.approx(equity(90) / equity(120) - 1, rel=1e-12)  # all-time: kept


@PATHS
def test_on_the_24_7_calendar_the_day_still_turns_at_the_reset_hour(
    seeded_store: Store, make_settings: Any, vectorised: bool
) -> None:
    settings = make_settings({"market": {"calendar": "24/7"}})
    desk = Desk(seeded_store, settings, datetime(2024, 3, 7, 15, tzinfo=UTC).timestamp(), vectorised)
    desk.step(datetime(2024, 3, 7, 15, tzinfo=UTC).timestamp(), {"AAA": 100.0})
    evening = desk.step(datetime(2024, 3, 7, 23, 59, 59, tzinfo=UTC).timestamp(), {"AAA": 110.0})
    assert desk.day() == ("2024-03-07", "2024-03-04")
    next_day = desk.step(datetime(2024, 3, 8, 0, 0, 0, tzinfo=UTC).timestamp(), {"AAA": 105.0})
    assert desk.day() == ("2024-03-08", "2024-03-04")
    assert evening["pnl"]["daily"] == pytest.approx(equity(110) - equity(100), rel=1e-12)
    assert next_day["pnl"]["daily"] == pytest.approx(equity(105) - equity(110), rel=1e-12)  # the last equity


# -- a corrupt peaks hash ----------------------------------------------------------------------------------------

CORRUPTIONS = {
    "a field holding abc": lambda c, k: c.hset(k, "day_open", "abc"),
    "a NaN peak": lambda c, k: c.hset(k, "day_peak", "nan"),
    "an infinite worst drawdown": lambda c, k: c.hset(k, "max_dd", "-inf"),
    "a decimal past a double's range": lambda c, k: c.hset(k, "max_peak", "1.8e308"),
    "a hex number": lambda c, k: c.hset(k, "week_peak", "0x10"),
    "a padded number": lambda c, k: c.hset(k, "day_open", " 1200000"),
    "an underscored number": lambda c, k: c.hset(k, "day_open", "1_200_000"),
    "a corrupt close": lambda c, k: c.hset(k, "close", "abc"),
    "a corrupt last equity": lambda c, k: c.hset(k, "last", "abc"),
    "a missing day peak": lambda c, k: c.hdel(k, "day_peak"),
    "a hash without its day": lambda c, k: c.hdel(k, "day"),
    "an empty week": lambda c, k: c.hset(k, "week", ""),
    "a key of the wrong type": lambda c, k: (c.delete(k), c.set(k, "x")),
}


def _keys_of(client: redis.Redis, pid: str) -> dict[bytes, Any]:
    tag = f"{{{pid}}}".encode()
    return {k: v for k, v in store_contents(client).items() if tag in k}


@PATHS
@pytest.mark.parametrize("warm", [False, True], ids=["new-monitor", "running-monitor"])
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_peaks_hash_is_refused_by_both_paths_and_the_others_are_snapshotted(
    seeded_store: Store, settings: Settings, vectorised: bool, warm: bool, corruption: str
) -> None:
    # Arrange: one tick of both portfolios, then main's peaks corrupted (by a write that leaves any owner stamp
    # as it is); "running-monitor": the monitor that ticked keeps its copy of them in memory
    store, client = seeded_store, seeded_store.client
    desk = Desk(store, settings, ny(2024, 3, 7, 10), vectorised)
    desk.step(ny(2024, 3, 7, 10), {"AAA": 100.0})
    if not warm:
        desk = Desk(store, settings, ny(2024, 3, 7, 10), vectorised)
    key = PortfolioKeys("main").peaks
    CORRUPTIONS[corruption](client, key)
    before_main = _keys_of(client, "main")
    before_snapshot = store.read_snapshot("main")
    errors = desk.monitor.stats.portfolio_errors

    # Act: one tick
    desk.clock.t = ny(2024, 3, 7, 10, 1)
    StreamDaemon(store, settings, IterableFeed([Bar(desk.clock.t, {"AAA": 90.0})]), clock=desk.clock, interval=0).run()
    desk.monitor.process_available()

    # Assert: hedge is snapshotted; main is reported and keeps its last snapshot; the vectorised path leaves
    # main's stored state exactly as it was (the per-portfolio path's excursion script still stamps and merges
    # main's marks: logic/monitor.py runs it apart from the peaks script, whose refusal writes nothing)
    hedge = store.read_snapshot("hedge")
    assert hedge is not None and hedge["ts"] == desk.clock.t
    assert store.read_snapshot("main") == before_snapshot
    assert desk.monitor.stats.portfolio_errors == errors + 1
    after_main = _keys_of(client, "main")
    if vectorised:
        assert after_main == before_main
    else:
        assert after_main.get(key.encode(), (b"hash",))[0] == before_main[key.encode()][0]
        if before_main[key.encode()][0] == b"hash":
            refs = {f: v for f, v in before_main[key.encode()][2] if f != b"owner"}
            assert {f: v for f, v in after_main[key.encode()][2] if f != b"owner"} == refs


@PATHS
def test_a_repaired_peaks_hash_is_snapshotted_again_from_what_it_holds(
    seeded_store: Store, settings: Settings, vectorised: bool
) -> None:
    store, client = seeded_store, seeded_store.client
    desk = Desk(store, settings, ny(2024, 3, 7, 10), vectorised)
    desk.step(ny(2024, 3, 7, 10), {"AAA": 100.0})
    key = PortfolioKeys("main").peaks
    good = client.hget(key, "day_open")
    client.hset(key, "day_open", "abc")
    desk.clock.t = ny(2024, 3, 7, 10, 1)
    StreamDaemon(store, settings, IterableFeed([Bar(desk.clock.t, {"AAA": 90.0})]), clock=desk.clock, interval=0).run()
    desk.monitor.process_available()
    assert store.read_snapshot("main")["ts"] == ny(2024, 3, 7, 10)  # type: ignore[index]

    client.hset(key, "day_open", "1150000.0")  # repaired, to another opening equity than the one held before
    assert good != b"1150000.0"
    snap = desk.step(ny(2024, 3, 7, 10, 2), {"AAA": 95.0})

    assert snap["pnl"]["daily"] == pytest.approx(equity(95) - 1_150_000.0, rel=1e-12)  # read back from the store


@PATHS
def test_an_owner_stamp_alone_and_a_hash_without_last_or_close_are_not_corrupt(
    seeded_store: Store, settings: Settings, vectorised: bool
) -> None:
    store, client = seeded_store, seeded_store.client
    client.hset(PortfolioKeys("hedge").peaks, "owner", "someone")  # a fill's reset_mark on a book never valued
    legacy = {"day": "2024-03-07", "day_open": "1150000.0", "day_peak": "1250000.0", "week": "2024-03-04",
              "week_peak": "1250000.0", "max_peak": "1250000.0", "max_dd": "0"}  # fmt: skip
    client.hset(PortfolioKeys("main").peaks, mapping=legacy)  # written before last and close existed
    desk = Desk(store, settings, ny(2024, 3, 7, 10), vectorised)

    snap = desk.step(ny(2024, 3, 7, 10), {"AAA": 100.0})

    assert snap["pnl"]["daily"] == pytest.approx(equity(100) - 1_150_000.0, rel=1e-12)
    assert snap["drawdown"]["daily"] == pytest.approx(equity(100) / 1_250_000.0 - 1, rel=1e-12)
    assert store.read_snapshot("hedge") is not None


ACCEPTED = ["1200000.0", "-0.008333333333333304", "1e+20", "1E5", "0", "-0.0", "5.", "5e-324",
            "1.7976931348623157e308"]  # fmt: skip
REFUSED = ["1.8e308", "-1.8e308", "abc", "nan", "inf", "-inf", "0x10", " 5", "5 ", "1_000", "+5", ".5", "", "1e5e5",
           "1..2", "1e"]  # fmt: skip


@pytest.mark.parametrize(("value", "usable"), [(v, True) for v in ACCEPTED] + [(v, False) for v in REFUSED])
def test_the_merge_the_load_and_the_owner_read_apply_one_rule_to_a_stored_number(
    store: Store, value: str, usable: bool
) -> None:
    # the largest finite double is accepted and the next decimal past it refused, in Lua and in Python alike
    from engine.errors import CorruptDataError
    from engine.store.monitoring import PEAK_FIELDS, check_peaks
    from engine.store.tick_state import read_owners

    key = PortfolioKeys("main").peaks
    store.update_peaks("main", 1000.0, "2024-03-07", "2024-03-04")
    store.client.hset(key, "week_peak", value)
    before = store_contents(store.client)

    raw = store.client.hmget(key, list(PEAK_FIELDS))
    if usable:
        assert check_peaks(raw, key)
        assert read_owners(store, [key]) == [store.client.hget(key, "owner")]
        assert store.update_peaks("main", 1000.0, "2024-03-07", "2024-03-04") is not None
    else:
        with pytest.raises(CorruptDataError, match="week_peak"):
            check_peaks(raw, key)
        assert read_owners(store, [key]) == [b""]  # no writer's stamp: the vectorised monitor loads and refuses it
        with pytest.raises(CorruptDataError, match="week_peak"):
            store.update_peaks("main", 1000.0, "2024-03-07", "2024-03-04")
        with pytest.raises(CorruptDataError, match="week_peak"):
            store.read_peaks("main")
        assert store_contents(store.client) == before  # the merge refused before writing anything


def test_the_gate_measures_the_daily_loss_after_a_close_from_that_close_and_fails_closed_on_a_corrupt_hash(
    store: Store, make_settings: Any
) -> None:
    # Arrange: Thursday 17:00 New York, after the close; main's equity is 1,200,000 (tests/conftest.py)
    now = ny(2024, 3, 7, 17, 0)
    settings = make_settings({"limits": {"max_daily_loss": 50_000, "outside_session": "allow"}})
    warmup.seed(store, settings, now=now)
    rm = RiskManager(store.client, "main", settings, clock=lambda: now)
    day, week = MarketCalendar("XNYS", UTC, 0).period_ids(now)
    assert (day, week) == ("2024-03-08", "2024-03-04")  # the day the monitor stamps: Friday's

    # Act / Assert: Thursday's own day is not "today" any more (no opening equity of today: closed)
    store.update_peaks("main", 1_250_000.0, "2024-03-07", week)
    assert {r.code.value for r in rm.check("AAA", 10, "BUY").reasons} == {"DAILY_LOSS"}
    # Friday's day opened at Thursday's close: a loss one cent short of the limit passes, the limit refuses
    store.client.delete(PortfolioKeys("main").peaks)
    store.update_peaks("main", 1_249_999.99, day, week)
    assert rm.check("AAA", 10, "BUY").approved
    store.client.delete(PortfolioKeys("main").peaks)
    store.update_peaks("main", 1_250_000.0, day, week)
    assert {r.code.value for r in rm.check("AAA", 10, "BUY").reasons} == {"DAILY_LOSS"}
    # a corrupt hash is no opening equity: refused, saying what is wrong
    store.client.delete(PortfolioKeys("main").peaks)
    store.update_peaks("main", 1_200_000.0, day, week)
    assert rm.check("AAA", 10, "BUY").approved
    store.client.hset(PortfolioKeys("main").peaks, "last", "abc")
    refused = rm.check("AAA", 10, "BUY")
    assert {r.code.value for r in refused.reasons} == {"DAILY_LOSS"} and "peaks.last" in refused.reasons[0].message
