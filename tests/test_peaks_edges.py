"""Edges of the equity peaks (engine/store/monitoring.py
``_PEAKS_LUA``, engine/store/tick_state.py, logic/batch_tick.py), through a real Redis and both monitor paths:

- the 24/7 calendar's day turns at the reset hour, and the gate's daily loss is measured from the day the
  monitor stamps, exactly at its limit;
- a corrupt ``pf:{id}:peaks`` (a field that is no number, a partial hash, a key of another type) is refused by
  both paths, with or without a copy of it in memory: that portfolio is reported, gets no snapshot, and the
  vectorised path leaves its stored state exactly as it was; the others in the tick get theirs. One rule for a
  stored number in Lua (the merge, the vectorised monitor's check) and Python (the load, ``read_peaks``), at a
  double's range.
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
from engine.sessions import MarketCalendar
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


# -- the 24/7 calendar -------------------------------------------------------------------------------------------


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
def test_the_merge_the_load_and_the_check_apply_one_rule_to_a_stored_number(
    store: Store, value: str, usable: bool
) -> None:
    # the largest finite double is accepted and the next decimal past it refused, in Lua and in Python alike
    from engine.errors import CorruptDataError
    from engine.store.monitoring import PEAK_FIELDS, check_peaks
    from engine.store.tick_owners import read_faults, read_owners

    key = PortfolioKeys("main").peaks
    store.update_peaks("main", 1000.0, "2024-03-07", "2024-03-04")
    store.client.hset(key, "week_peak", value)
    before = store_contents(store.client)

    raw = store.client.hmget(key, list(PEAK_FIELDS))
    if usable:
        assert check_peaks(raw, key)
        assert read_faults(store, [key]) == []
        assert store.update_peaks("main", 1000.0, "2024-03-07", "2024-03-04") is not None
    else:
        with pytest.raises(CorruptDataError, match="week_peak"):
            check_peaks(raw, key)
        # the vectorised monitor's check finds it: the row is left out of its lane's write, loaded and refused
        assert read_faults(store, [key]) == [0]
        with pytest.raises(CorruptDataError, match="week_peak"):
            store.update_peaks("main", 1000.0, "2024-03-07", "2024-03-04")
        with pytest.raises(CorruptDataError, match="week_peak"):
            store.read_peaks("main")
        assert store_contents(store.client) == before  # the merge refused before writing anything
    assert read_owners(store, [key]) == [store.client.hget(key, "owner")]  # the stamp, corrupt or not


def test_the_gate_measures_the_daily_loss_from_the_stamped_day_and_fails_closed_on_a_corrupt_hash(
    store: Store, make_settings: Any
) -> None:
    # Arrange: Thursday 17:00 New York, after the close: still Thursday's day (it runs to Friday's open)
    now = ny(2024, 3, 7, 17, 0)
    settings = make_settings({"limits": {"max_daily_loss": 50_000, "outside_session": "allow"}})
    warmup.seed(store, settings, now=now)
    rm = RiskManager(store.client, "main", settings, clock=lambda: now)
    day, week = MarketCalendar("XNYS", UTC, 0).period_ids(now)
    assert (day, week) == ("2024-03-07", "2024-03-04")  # the day the monitor stamps: Thursday's

    # Act / Assert: Wednesday's day is not "today" (no opening equity of today: closed)
    store.update_peaks("main", 1_250_000.0, "2024-03-06", week)
    assert {r.code.value for r in rm.check("AAA", 10, "BUY").reasons} == {"DAILY_LOSS"}
    # today's opening equity: a loss one cent short of the limit passes, the limit refuses
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


def test_the_owner_read_and_the_check_of_a_missing_key_and_of_a_key_that_is_not_a_hash(store: Store) -> None:
    from engine.store.tick_owners import read_faults, read_owners

    missing, wrong, good = (PortfolioKeys(p).peaks for p in ("nobody", "wrong", "main"))
    store.client.set(wrong, "not a hash")
    store.update_peaks("main", 1000.0, "2024-03-07", "2024-03-04")
    before = store_contents(store.client)

    # none stored: no stamp, nothing wrong; not a hash: no writer's stamp, and refused; a good hash: its stamp
    assert read_owners(store, [missing, wrong, good]) == [None, b"", store.client.hget(good, "owner")]
    assert read_faults(store, [missing, wrong, good]) == [1]
    assert store_contents(store.client) == before  # both only read
