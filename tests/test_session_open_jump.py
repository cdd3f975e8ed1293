"""The jump filter at a session open (engine/price_filter.py, "Session opens"): the band spans the time the market
was closed since the ticker's last accepted price, read from the real XNYS calendar, so a realistic overnight or
weekend gap passes at the open and an absurd print (a x100 unit error) is still refused.

Every widened band is computed here independently: the closed seconds from New York wall-clock times of the
closes and opens (zoneinfo, not the calendar arrays the code reads), over the 60 s model bar.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

import warmup
from engine.clocks import ClockMode
from engine.feeds import Bar, IterableFeed
from engine.price_filter import PriceFilter
from engine.sessions import sessions_for
from engine.settings import Settings
from engine.store import Store
from engine.stream import StreamDaemon

NY = ZoneInfo("America/New_York")
SIGMAS = 12.0
TICK = 0.01
ONE_MINUTE_VAR = (0.20 / math.sqrt(252 * 390)) ** 2
"""One-minute variance of a 20 % annual-vol stock."""


def ny(text: str) -> float:
    """Epoch seconds of a New York wall-clock time."""
    return datetime.fromisoformat(text).replace(tzinfo=NY).timestamp()


def closed_minutes(*spans: tuple[str, str]) -> float:
    """Model bars (60 s) of the closed spans ``(close, next open)``, from wall-clock times."""
    return sum(ny(opened) - ny(closed) for closed, opened in spans) / 60.0


FRI_CLOSE, MON_OPEN = "2026-11-20T16:00", "2026-11-23T09:30"
WEEKEND = closed_minutes((FRI_CLOSE, MON_OPEN))


def xnys_filter(bar_scale: float = 1.0) -> PriceFilter:
    return PriceFilter(SIGMAS, bar_scale, sessions=sessions_for("XNYS"), model_bar_seconds=60.0)


def band(variance: float, model_bars: float) -> float:
    """The jump bound in log return: ``max_jump_sigma`` sigmas of ``model_bars`` model bars."""
    return SIGMAS * math.sqrt(variance * model_bars)


def one(f: PriceFilter, price: float, since: float, now: float, last: float = 100.0) -> str:
    """The reason ``check_many`` gives one AAA price (``""``: accepted), after asserting ``check`` agrees."""
    closed = f.closed_bars(np.array([since]), now)
    reasons = f.check_many(["AAA"], [price], np.array([last]), np.array([ONE_MINUTE_VAR]), closed=closed)[1]
    single = xnys_filter(f.bar_scale).check(
        "AAA", price, last, ONE_MINUTE_VAR, closed=0.0 if closed is None else float(closed[0])
    )[1]
    assert reasons[0] == single
    return reasons[0]


# -- the closed time the filter reads from the calendar --------------------------------------------------------


def closed_at(since: list[float], now: float) -> list[float]:
    """The closed model bars the XNYS filter gives for each price time ``since`` at ``now`` (some must be)."""
    got = xnys_filter().closed_bars(np.array(since), now)
    assert got is not None
    return [float(x) for x in got]


def test_the_closed_time_of_a_weekend_a_holiday_an_early_close_and_a_halt_is_the_wall_clock_one() -> None:
    # Fri 16:00 -> Mon 09:30: 65.5 h
    assert WEEKEND == 3930.0
    assert closed_at([ny(FRI_CLOSE)], ny(MON_OPEN)) == [WEEKEND]
    # Thanksgiving 2026-11-26 is no session; Friday 27 closes early at 13:00
    thanksgiving = closed_minutes(("2026-11-25T16:00", "2026-11-27T09:30"))
    assert closed_at([ny("2026-11-25T16:00")], ny("2026-11-27T09:30")) == [thanksgiving]
    early = closed_minutes(("2026-11-27T13:00", "2026-11-30T09:30"))
    assert closed_at([ny("2026-11-27T13:00")], ny("2026-11-30T09:35")) == [early]
    # a ticker halted since Thursday noon: both nights count, the trading time between does not
    halted = closed_minutes(("2026-11-19T16:00", "2026-11-20T09:30"), (FRI_CLOSE, MON_OPEN))
    assert halted == 4980.0
    since = [ny("2026-11-19T12:00"), ny("2026-11-23T09:30"), math.nan]  # same session, no price: nothing
    assert closed_at(since, ny("2026-11-23T09:31")) == [halted, 0.0, 0.0]


def test_within_a_session_there_is_no_allowance() -> None:
    f = xnys_filter()
    assert f.closed_bars(np.array([ny("2026-11-23T09:30")]), ny("2026-11-23T09:31")) is None
    assert f.closed_bars(np.array([ny("2026-11-20T15:59")]), ny("2026-11-20T16:00")) is None
    # after the close is still Friday's session: a print at 16:05 is judged over its bars only
    assert f.closed_bars(np.array([ny(FRI_CLOSE)]), ny("2026-11-20T16:05")) is None


def test_a_24_7_market_and_a_daily_feed_get_no_allowance(make_settings: Callable[..., Settings]) -> None:
    always = PriceFilter.for_feed(make_settings({"market": {"calendar": "24/7"}}), IterableFeed([]))
    assert always.sessions is None and always.closed_bars(np.array([ny(FRI_CLOSE)]), ny(MON_OPEN)) is None
    minute = PriceFilter.for_feed(make_settings(), IterableFeed([]))
    assert minute.sessions is not None  # XNYS, a one-minute feed
    # a daily replay (390 model bars a row): its close-to-close bar already spans the night
    daily = IterableFeed([], name="replay")
    daily.bar_model_bars = 390.0  # type: ignore[attr-defined]
    assert PriceFilter.for_feed(make_settings(), daily).sessions is None
    hourly = IterableFeed([], name="replay")
    hourly.bar_model_bars = 60.0  # type: ignore[attr-defined]
    assert PriceFilter.for_feed(make_settings(), hourly).sessions is not None


# -- the band at the open: exactly at it passes, one tick beyond is refused -------------------------------------


@pytest.mark.parametrize("direction", [-1.0, 1.0], ids=["gap-down", "gap-up"])
def test_a_weekend_gap_passes_exactly_at_the_widened_band_and_one_tick_beyond_is_refused(direction: float) -> None:
    limit = band(ONE_MINUTE_VAR, 1.0 + WEEKEND)  # 12 sigmas of 3931 minutes: 47.8 %
    edge = 100.0 * math.exp(direction * limit)
    inside = (math.floor if direction > 0 else math.ceil)(edge / TICK) * TICK
    beyond = inside + direction * TICK
    since, now = ny(FRI_CLOSE), ny(MON_OPEN)

    assert one(xnys_filter(), edge, since, now) == ""
    assert one(xnys_filter(), inside, since, now) == ""
    reason = one(xnys_filter(), beyond, since, now)
    assert reason.startswith("jump of ") and reason.endswith("from 100 (limit 12 sigma)")


def test_the_reviewed_gaps_pass_and_a_unit_error_is_refused_at_the_open() -> None:
    since, now = ny(FRI_CLOSE), ny(MON_OPEN)
    for gap in (97.0, 94.7, 103.0):  # -3 %, -5.3 %, +3 %: refused before (55.7 and 99.6 one-minute sigmas)
        assert one(xnys_filter(), gap, since, now) == ""
    for absurd in (10_000.0, 1.0, 1_000.0, 10.0):  # x100, /100, x10, /10 of a 20 %-vol stock
        assert one(xnys_filter(), absurd, since, now)


def test_an_hourly_feed_counts_the_closed_time_in_its_own_bars() -> None:
    # k = 60 model bars a row: n = 1 + closed / k feed bars of k * S each, i.e. 60 + 3930 model bars
    limit = band(ONE_MINUTE_VAR, 60.0 + WEEKEND)
    since, now = ny(FRI_CLOSE), ny("2026-11-23T10:30")
    edge = 100.0 * math.exp(-limit)
    assert one(xnys_filter(60.0), edge, since, now) == ""
    assert one(xnys_filter(60.0), math.ceil(edge / TICK) * TICK - TICK, since, now)


def test_inside_the_session_the_band_is_one_bar_at_its_edge_and_one_tick_beyond() -> None:
    limit = band(ONE_MINUTE_VAR, 1.0)
    since, now = ny("2026-11-23T09:30"), ny("2026-11-23T09:31")
    edge = 100.0 * math.exp(-limit)
    assert one(xnys_filter(), edge, since, now) == ""
    assert one(xnys_filter(), math.ceil(edge / TICK) * TICK - TICK, since, now)
    assert one(xnys_filter(), 97.0, since, now)  # the gap that passes at the open is a jump within a session


# -- through the stream daemon on a real Redis -----------------------------------------------------------------

SEEDED = ny("2026-11-20T15:58")
OTHERS = {"BBB": 50.0, "CCC": 200.0, "DDD": 25.0}


def _friday(store: Store, settings: Settings) -> None:
    """Seed at Friday 15:58 and stream the last two minutes flat, then stop (the daemon restarts for Monday)."""
    store.client.flushdb()
    warmup.seed(store, settings, now=SEEDED)
    bars = [Bar(ny(t), {"AAA": 100.0, **OTHERS}) for t in ("2026-11-20T15:59", FRI_CLOSE)]
    StreamDaemon(store, settings, IterableFeed(bars), interval=0, clock_mode=ClockMode.REPLAY).run()


def _monday(store: Store, settings: Settings, prints: list[tuple[str, float]]) -> StreamDaemon:
    bars = [Bar(ny(t), {"AAA": p, **OTHERS}) for t, p in prints]
    daemon = StreamDaemon(store, settings, IterableFeed(bars), interval=0, clock_mode=ClockMode.REPLAY)
    daemon.run()
    return daemon


@pytest.fixture
def jump_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings({"stream": {"max_jump_sigma": SIGMAS}})


@pytest.mark.parametrize("beyond", [False, True], ids=["at-the-edge", "one-tick-beyond"])
def test_a_restarted_daemon_judges_the_monday_open_over_the_weekend(
    store: Store, jump_settings: Settings, beyond: bool
) -> None:
    _friday(store, jump_settings)
    before = store.read_market()
    assert before.prices[0] == 100.0 and before.price_ts[0] == ny(FRI_CLOSE)
    variance = float(before.cov[0, 0])  # the stored one-minute variance of AAA after Friday's bars
    edge = 100.0 * math.exp(-band(variance, 1.0 + WEEKEND))
    price = math.ceil(edge / TICK) * TICK - TICK if beyond else edge

    daemon = _monday(store, jump_settings, [(MON_OPEN, price)])

    after = store.read_market()
    assert daemon.stats.bars_written == 1
    if beyond:
        assert daemon.stats.prices_rejected == 1 and after.prices[0] == 100.0 and after.price_ts[0] == ny(FRI_CLOSE)
    else:
        assert daemon.stats.prices_rejected == 0 and after.prices[0] == edge and after.price_ts[0] == ny(MON_OPEN)


def test_a_unit_error_at_the_open_is_refused_and_the_real_print_after_it_passes_over_the_weekend(
    store: Store, jump_settings: Settings
) -> None:
    _friday(store, jump_settings)

    daemon = _monday(store, jump_settings, [(MON_OPEN, 9_700.0), ("2026-11-23T09:31", 97.0)])

    assert daemon.stats.prices_rejected == 1 and "9700.0" in daemon.stats.rejections[0]
    after = store.read_market()
    assert after.prices[0] == 97.0 and after.price_ts[0] == ny("2026-11-23T09:31")
