"""Trading sessions from a real exchange calendar (``exchange-calendars``), for the daily and weekly windows.

``market.calendar`` names the calendar (default ``XNYS``, the New York Stock Exchange): its sessions, weekends,
holidays and early closes. :class:`Sessions` answers, for an epoch time ``t``:

- the session ``t`` belongs to for the daily windows (:meth:`Sessions.session_index`): the latest session that
  has opened at or before ``t``. So a session starts exactly at its open and runs until the next open: the
  time after a close (evening, weekend, holiday) belongs to the session that closed, and daily P&L and daily
  drawdown reset at each session open;
- whether the market is open (:meth:`Sessions.is_open`): ``open <= t <= close`` (the close is in, it is the
  closing price's time); the monitor's last equity observed while it is (:meth:`MarketCalendar.sets_close`) is
  the close the next day's P&L and peaks start from, so an observation after hours never becomes the open;
- the next / previous session, the open and close of each;
- the week (:meth:`Sessions.period_ids`): sessions are grouped by the ISO week of their session date, and a
  week's id is the date of its first session (Tuesday after a Monday holiday), so the weekly window resets at
  the first open of each calendar week.

``market.calendar = "24/7"``: no exchange calendar. The market never closes and the day starts at
``monitor.day_reset_hour`` in ``monitor.timezone`` (Monday at that hour starts a week): the rule of the
simulated feed before calendars, kept for a feed that trades around the clock.

Speed: the calendar is built once per name (cached, from :data:`CALENDAR_START`, about 0.3 s) and turned into
numpy arrays of open/close epoch seconds; a lookup is one ``searchsorted`` (called on every tick).
"""

from __future__ import annotations

import bisect
import functools
import math
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from engine.errors import ConfigError
from engine.records import Float64Array
from engine.settings import Settings

ALWAYS_OPEN = "24/7"
"""``market.calendar`` value for a market without sessions (the day follows ``monitor.day_reset_hour``)."""
CALENDAR_START = "1990-01-01"
"""First date of every calendar built: early enough for old history files."""


@dataclass(frozen=True)
class Session:
    """One trading session: its date (the id of the daily window) and its open and close (epoch seconds)."""

    date: str
    open: float
    close: float


class Sessions:
    """The sessions of one exchange calendar as arrays (see the module docstring).

    Parameters
    ----------
    name:
        An ``exchange-calendars`` name (``XNYS``, ``XLON``, ...); an unknown one is a :class:`ConfigError`.
    """

    def __init__(self, name: str) -> None:
        import exchange_calendars as xc  # heavy import: only processes that measure sessions pay it

        try:
            with warnings.catch_warnings():
                # exchange-calendars 4.13 reads Series.values of tz-aware dates (deprecated in pandas 3.1):
                # its warning is about its own code, not our numbers
                warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
                cal = xc.get_calendar(name, start=CALENDAR_START)
        except (xc.errors.InvalidCalendarName, ValueError) as exc:
            raise ConfigError(f"market.calendar: unknown exchange calendar {name!r} ({exc})") from None
        self.name = name
        self.dates: tuple[str, ...] = tuple(d.date().isoformat() for d in cal.sessions)
        self.opens: Float64Array = np.array([t.timestamp() for t in cal.opens], dtype=float)
        self.closes: Float64Array = np.array([t.timestamp() for t in cal.closes], dtype=float)
        # week of each session: ISO (year, week) of its date; id = date of the week's first session
        iso = [d.isocalendar() for d in cal.sessions]
        week_ids: list[str] = []
        first: dict[tuple[int, int], str] = {}
        for date, (year, week, _) in zip(self.dates, iso, strict=True):
            week_ids.append(first.setdefault((year, week), date))
        self.week_ids: tuple[str, ...] = tuple(week_ids)

    def __len__(self) -> int:
        return len(self.dates)

    def _check_range(self, t: float) -> None:
        if not math.isfinite(t):
            raise ValueError(f"time must be finite, got {t}")
        if t < self.opens[0] or t > self.closes[-1] + 7 * 86400:
            first, last = self.dates[0], self.dates[-1]
            raise ValueError(
                f"{datetime.fromtimestamp(t).isoformat()} is outside the {self.name} calendar ({first}..{last})"
            )

    def close_on(self, day: str) -> float | None:
        """The close of the session of the date ``day`` (ISO), or, on a date without one (a holiday, a weekend),
        of the last session before it: the latest close known that day (a later one would date a price before it
        was printed). None for a date outside the calendar."""
        if not self.dates or not self.dates[0] <= day <= self.dates[-1]:
            return None
        return float(self.closes[bisect.bisect_right(self.dates, day) - 1])

    def session_index(self, t: float) -> int:
        """Index of the session ``t`` belongs to: the latest one opened at or before ``t``."""
        self._check_range(t)
        return int(np.searchsorted(self.opens, t, side="right")) - 1

    def session(self, i: int) -> Session:
        return Session(self.dates[i], float(self.opens[i]), float(self.closes[i]))

    def session_at(self, t: float) -> Session:
        """The session ``t`` belongs to (the one in progress, or the last one closed)."""
        return self.session(self.session_index(t))

    def is_open(self, t: float) -> bool:
        """True when ``t`` is inside a session: ``open <= t <= close``."""
        i = self.session_index(t)
        return bool(t <= self.closes[i])

    def next_session(self, t: float) -> Session:
        """The first session opening after ``t``."""
        i = self.session_index(t) + 1
        if i >= len(self.dates):
            raise ValueError(f"no {self.name} session after {t}")
        return self.session(i)

    def previous_session(self, t: float) -> Session:
        """The session before the one ``t`` belongs to."""
        i = self.session_index(t) - 1
        if i < 0:
            raise ValueError(f"no {self.name} session before {t}")
        return self.session(i)

    def period_ids(self, t: float) -> tuple[str, str]:
        """Ids of the daily window (the session date) and of the weekly window (its week's first session)."""
        i = self.session_index(t)
        return self.dates[i], self.week_ids[i]


@functools.cache
def sessions_for(name: str) -> Sessions:
    """The :class:`Sessions` of calendar ``name``, built once per process."""
    return Sessions(name)


def wall_clock_period_ids(now: float, tz: ZoneInfo, reset_hour: int) -> tuple[str, str]:
    """The ``24/7`` rule: ISO dates of the day and of its week's Monday, a day starting at ``reset_hour`` local
    time in ``tz`` (wall clock, so DST shifts follow the local hour) and a week on Monday at that hour."""
    local = datetime.fromtimestamp(now, tz) - timedelta(hours=reset_hour)
    day = local.date()
    return day.isoformat(), (day - timedelta(days=day.weekday())).isoformat()


class MarketCalendar:
    """What the daemons ask about sessions, for one ``market.calendar`` (an exchange or ``24/7``).

    Parameters
    ----------
    name:
        ``market.calendar``.
    tz, reset_hour:
        ``monitor.timezone`` / ``monitor.day_reset_hour``: the day of a ``24/7`` market.
    """

    def __init__(self, name: str, tz: ZoneInfo, reset_hour: int) -> None:
        if not 0 <= reset_hour <= 23:
            raise ConfigError(f"monitor.day_reset_hour must be 0..23, got {reset_hour}")
        self.name = name
        self.tz = tz
        self.reset_hour = reset_hour
        self.sessions: Sessions | None = None if name == ALWAYS_OPEN else sessions_for(name)

    def period_ids(self, t: float) -> tuple[str, str]:
        """Ids of the daily and weekly windows holding ``t`` (ISO dates, ordered as text). A time outside the
        calendar's range (before 1990, years ahead) falls back to the ``24/7`` rule."""
        if self.sessions is not None:
            try:
                return self.sessions.period_ids(t)
            except ValueError:
                pass
        return wall_clock_period_ids(t, self.tz, self.reset_hour)

    def is_open(self, t: float) -> bool:
        """True inside a session (always for ``24/7``)."""
        return True if self.sessions is None else self.sessions.is_open(t)

    def sets_close(self, t: float) -> bool:
        """Whether an equity observed at ``t`` may be the session's close, the reference the next day and week
        open at (engine/store/monitoring.py ``_PEAKS_LUA``): inside a session (the close itself included);
        always for ``24/7``. A time outside the calendar's range follows the ``24/7`` rule, as
        :meth:`period_ids` does, so the two never disagree about a time."""
        if self.sessions is None:
            return True
        try:
            return self.sessions.is_open(t)
        except ValueError:
            return True

    def closes(self, now: float, printed: float | None = None) -> bool:
        """Whether an equity observed at ``now`` may be the session's close (:meth:`sets_close`), decided on the
        time its prices were printed when that is known (``printed``: the tick's bar time): a closing bar reaches
        the monitor after the close and its equity is the close all the same, where a bar printed after the
        close (extended hours, an evening re-mark) is not. Prices of another session than ``now``'s (a backlog
        processed after the next open) close no session. A bar time after ``now`` (or none: 0) is of another
        clock than the monitor's (a feed stamping bars its own way): ``now`` decides, as before bar times."""
        if printed is None or not math.isfinite(printed) or not 0.0 < printed <= now:
            return self.sets_close(now)
        return self.sets_close(printed) and self.period_ids(printed)[0] == self.period_ids(now)[0]

    def session_id(self, t: float) -> str:
        """Id of the daily window holding ``t``."""
        return self.period_ids(t)[0]


def market_calendar(settings: Settings) -> MarketCalendar:
    """The :class:`MarketCalendar` of the settings (``market.calendar``, ``monitor``)."""
    try:
        tz = ZoneInfo(settings.monitor.timezone)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"monitor.timezone: unknown time zone {settings.monitor.timezone!r}") from exc
    return MarketCalendar(settings.market.calendar, tz, settings.monitor.day_reset_hour)
