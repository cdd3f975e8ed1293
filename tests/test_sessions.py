"""engine/sessions.py: XNYS sessions at their boundaries, early closes, holidays, calendar weeks, the 24/7 rule;
engine/collar.py: the reference re-anchored at session opens and rolling; engine/clocks.py: daily closes and
the replay pacing."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from engine.clocks import stamp_daily_closes, wall_sleep
from engine.collar import CollarAnchor
from engine.errors import ConfigError
from engine.feeds import Bar
from engine.sessions import ALWAYS_OPEN, MarketCalendar, Sessions, sessions_for

NY = ZoneInfo("America/New_York")


def ny(*args: int) -> float:
    return datetime(*args, tzinfo=NY).timestamp()  # type: ignore[misc]


@pytest.fixture(scope="module")
def xnys() -> Sessions:
    return sessions_for("XNYS")


def test_exactly_at_the_open_is_in_the_session_and_one_second_before_is_not(xnys: Sessions) -> None:
    open_ = ny(2019, 1, 22, 9, 30)
    assert xnys.is_open(open_)
    assert xnys.session_at(open_).date == "2019-01-22"
    assert not xnys.is_open(open_ - 1)
    assert xnys.session_at(open_ - 1).date == "2019-01-18"  # Monday 21 is MLK day: Friday's session goes on


def test_the_close_is_in_the_session_and_one_second_after_is_not(xnys: Sessions) -> None:
    close = ny(2019, 1, 22, 16, 0)
    assert xnys.is_open(close) and not xnys.is_open(close + 1)
    assert xnys.session_at(close + 1).date == "2019-01-22"  # the evening belongs to the session that closed


def test_an_early_close_ends_the_session_at_13_00(xnys: Sessions) -> None:
    assert xnys.session_at(ny(2019, 12, 24, 12)).close == ny(2019, 12, 24, 13, 0)
    assert xnys.is_open(ny(2019, 12, 24, 13, 0)) and not xnys.is_open(ny(2019, 12, 24, 13, 0) + 1)


def test_holidays_and_weekends_are_not_sessions_and_next_previous_skip_them(xnys: Sessions) -> None:
    saturday = ny(2019, 1, 19, 12)
    assert not xnys.is_open(saturday) and not xnys.is_open(ny(2019, 1, 21, 12))  # MLK day
    assert xnys.next_session(saturday).date == "2019-01-22"
    assert xnys.previous_session(ny(2019, 1, 22, 12)).date == "2019-01-18"
    assert "2019-02-18" not in xnys.dates and "2019-02-19" in xnys.dates  # Presidents' Day


def test_the_week_id_is_the_first_session_of_the_calendar_week(xnys: Sessions) -> None:
    assert xnys.period_ids(ny(2019, 1, 25, 15)) == ("2019-01-25", "2019-01-22")  # after MLK Monday
    assert xnys.period_ids(ny(2019, 1, 28, 9, 30)) == ("2019-01-28", "2019-01-28")
    assert xnys.period_ids(ny(2019, 1, 28, 9, 29)) == ("2019-01-25", "2019-01-22")  # before the week's open
    assert xnys.period_ids(ny(2019, 1, 2, 10)) == ("2019-01-02", "2018-12-31")  # the ISO week spans New Year


def test_old_data_is_covered_and_a_time_outside_the_calendar_is_refused(xnys: Sessions) -> None:
    assert xnys.session_at(ny(1990, 6, 1, 12)).date == "1990-06-01"
    with pytest.raises(ValueError, match="outside"):
        xnys.session_index(datetime(1980, 1, 1, tzinfo=UTC).timestamp())


def test_an_unknown_calendar_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="market.calendar"):
        Sessions("NOPE")


def test_the_24_7_market_keeps_the_reset_hour_rule_and_never_closes() -> None:
    cal = MarketCalendar(ALWAYS_OPEN, ZoneInfo("UTC"), 0)
    saturday = datetime(2019, 1, 19, 12, tzinfo=UTC).timestamp()
    assert cal.is_open(saturday)
    assert cal.period_ids(saturday) == ("2019-01-19", "2019-01-14")


def test_a_time_before_the_calendar_falls_back_to_the_reset_hour_rule() -> None:
    cal = MarketCalendar("XNYS", ZoneInfo("UTC"), 0)
    assert cal.period_ids(0.0) == ("1970-01-01", "1969-12-29")


def test_an_equity_sets_the_close_from_the_open_to_the_close_inclusive_and_not_a_second_outside() -> None:
    cal = MarketCalendar("XNYS", NY, 0)
    open_, close = ny(2024, 3, 11, 9, 30), ny(2024, 3, 11, 16, 0)
    assert [cal.sets_close(t) for t in (open_ - 1, open_, close, close + 1)] == [False, True, True, False]
    assert not cal.sets_close(ny(2024, 3, 9, 12))  # a Saturday
    assert cal.sets_close(0.0)  # outside the calendar: the 24/7 rule, as period_ids (is_open refuses the time)
    with pytest.raises(ValueError, match="outside"):
        cal.is_open(0.0)
    always = MarketCalendar(ALWAYS_OPEN, NY, 0)
    assert always.sets_close(ny(2024, 3, 9, 12)) and always.sets_close(close + 1)


def test_the_close_is_decided_on_the_time_the_prices_were_printed_when_it_is_known() -> None:
    cal = MarketCalendar("XNYS", NY, 0)
    close, monday = ny(2024, 3, 8, 16, 0), ny(2024, 3, 11, 9, 31)
    seen = close + 0.5  # the monitor's clock, after the close
    assert [cal.closes(seen, printed) for printed in (close - 60, close, close + 1)] == [True, True, False]
    # no bar time, or one ahead of the clock (another clock's): the monitor's clock decides
    assert [cal.closes(seen, printed) for printed in (None, 0.0, float("nan"), seen + 1)] == [False] * 4
    assert cal.closes(close, None) and cal.closes(close, 0.0) and cal.closes(close, close + 1)
    assert not cal.closes(close, close - 1e9)  # a bar of years before
    assert not cal.closes(monday, close)  # Friday's closing bar seen on Monday closes neither day
    assert cal.closes(monday, monday - 30)


# -- collar anchor ---------------------------------------------------------------------------------------------


def test_the_reference_is_the_previous_session_close_at_each_open_and_a_reset_bar_anchors_it() -> None:
    anchor = CollarAnchor(MarketCalendar("XNYS", NY, 0))
    bars = [
        (ny(2019, 1, 18, 10), 100.0, True),
        (ny(2019, 1, 18, 16), 104.0, False),
        (ny(2019, 1, 18, 17), 150.0, False),  # after the close: not the session's close
        (ny(2019, 1, 22, 10), 110.0, False),  # MLK day skipped: Friday's close is the reference
        (ny(2019, 1, 22, 11), 111.0, False),
    ]
    written = []
    for t, p, reset in bars:
        out, state = anchor.propose(t, np.array([p]), reset=reset)
        anchor.commit(state)
        written.append(None if out is None else float(out[0]))
    assert written == [100.0, None, None, 104.0, None]


def test_a_proposal_not_committed_leaves_the_state_as_it_was() -> None:
    anchor = CollarAnchor(MarketCalendar("XNYS", NY, 0))
    anchor.commit(anchor.propose(ny(2019, 1, 18, 16), np.array([104.0]), reset=True)[1])
    before = anchor.state
    anchor.propose(ny(2019, 1, 22, 10), np.array([110.0]))
    assert anchor.state is before


def test_a_rolling_reference_is_the_price_n_bars_earlier_in_the_session() -> None:
    anchor = CollarAnchor(MarketCalendar("XNYS", NY, 0), "rolling:2")
    prices = {ny(2019, 1, 18, 16): 100.0}
    anchor.commit(anchor.propose(ny(2019, 1, 18, 16), np.array([100.0]), reset=True)[1])
    seen = []
    for hour, p in zip(range(10, 15), [101.0, 102.0, 103.0, 104.0, 105.0], strict=True):
        t = ny(2019, 1, 22, hour)
        prices[t] = p
        out, state = anchor.propose(t, np.array([p]))
        anchor.commit(state)
        seen.append(None if out is None else float(out[0]))
    # bar 1: the previous close (written at the open); bar 2: still the close (2 bars back = the anchor);
    # then the price 2 bars earlier
    assert seen == [100.0, 100.0, 101.0, 102.0, 103.0]


# -- clocks ----------------------------------------------------------------------------------------------------


def test_a_file_of_dates_is_stamped_at_each_session_close_and_intraday_files_are_not(xnys: Sessions) -> None:
    dates = [Bar(datetime(2019, 12, d, tzinfo=UTC).timestamp(), {"A": 1.0}) for d in (23, 24, 26)]
    stamped = [b.ts for b in stamp_daily_closes(dates, xnys)]
    assert stamped == [ny(2019, 12, 23, 16), ny(2019, 12, 24, 13), ny(2019, 12, 26, 16)]
    intraday = [Bar(ny(2019, 12, 23, 10), {"A": 1.0}), Bar(ny(2019, 12, 23, 11), {"A": 1.0})]
    assert stamp_daily_closes(intraday, xnys) == intraday


def test_a_weekly_file_dates_its_monday_holidays_at_the_previous_sessions_close(xnys: Sessions) -> None:
    # Mondays of 2019-01-07 .. 2019-02-25: MLK day (Jan 21) and Presidents' Day (Feb 18) are not sessions; dated
    # at their own 16:00 they would be in no session and never set a close (tests/test_replay_clock_edges.py)
    mondays = [datetime(2019, 1, 7, tzinfo=UTC).timestamp() + 7 * 86_400 * k for k in range(8)]
    stamped = [b.ts for b in stamp_daily_closes([Bar(t, {"A": 1.0}) for t in mondays], xnys)]
    assert stamped[2] == ny(2019, 1, 18, 16) and stamped[6] == ny(2019, 2, 15, 16)  # the Fridays before
    assert stamped[0] == ny(2019, 1, 7, 16) and stamped[3] == ny(2019, 1, 28, 16)
    others = [t for k, t in enumerate(stamped) if k not in (2, 6)]
    assert all(xnys.session_at(t).close == t for t in stamped)  # every row is a session's close
    assert set(np.diff(others)) <= {7 * 86_400.0, 14 * 86_400.0}  # the other Mondays keep their 16:00


def test_the_wall_wait_per_bar_is_the_spacing_over_the_speed() -> None:
    assert wall_sleep(3600.0, 60.0) == 60.0  # one hour of data per wall minute
    assert wall_sleep(86_400.0, 0.0) == 0.0  # as fast as possible
    with pytest.raises(ValueError, match="speed"):
        wall_sleep(60.0, -1.0)
