"""Whose clock stamps time: the wall clock when live, the data's own clock in a replay.

The stream daemon publishes its clock mode (:class:`ClockMode`) in its heartbeat ``hb:stream`` with ``ts``,
the time it stamped its last write. In a replay (``--feed replay``) that time is the bar's own timestamp, so
every reader that asks :class:`MarketClock` for "now" gets the data's time: the monitor's snapshots, history
points, P&L days and drawdown windows, the alert engine's ``triggered_at`` and timers, the gate's staleness and
order-rate windows, and the dashboard's time axes. Live (any other feed, or no stream heartbeat at all) it is
the wall clock.

The monitor stamps a tick with :func:`tick_time`: the tick's own bar time in a replay (a monitor lagging behind
the daemon still dates each snapshot by its bar), the wall clock live.

Daily close files (dates without a time) are dated at midnight UTC, before the session they close opens;
:func:`stamp_daily_closes` moves such bars to their session's close so they fall in the right session.
"""

from __future__ import annotations

import math
import time
from enum import StrEnum

from engine.feeds import Bar
from engine.records import Clock
from engine.sessions import Sessions
from engine.store import Store
from engine.store.keys import heartbeat_key

STREAM_COMPONENT = "stream"
"""The heartbeat the stream daemon writes (``hb:stream``): it carries ``clock`` and ``ts``."""
MODE_TTL_SECONDS = 1.0
"""Wall seconds the clock mode read from the heartbeat is trusted before it is read again."""


class ClockMode(StrEnum):
    """How the stream daemon stamps time (published as ``clock`` in ``hb:stream``)."""

    LIVE = "live"
    """The wall clock."""
    REPLAY = "replay"
    """The bars' own timestamps."""
    COMPRESSED = "compressed"
    """The wall clock, but a live feed played faster or slower than one model bar per ``model.bar_seconds``:
    a demo clock the dashboard shows as such."""


class MarketClock:
    """A :data:`~engine.records.Clock` that is the wall clock live and the latest bar time in a replay.

    Parameters
    ----------
    store:
        Where the stream daemon's heartbeat is read.
    wall:
        The wall clock (``time.time``); tests pass their own.

    Notes
    -----
    Live, a call costs one Redis read per :data:`MODE_TTL_SECONDS` (the mode); in a replay, one HMGET per call
    (the latest bar time must be current). A replay time never goes backwards within one clock.
    """

    def __init__(self, store: Store, wall: Clock = time.time) -> None:
        self.store = store
        self.wall = wall
        self._mode = ClockMode.LIVE
        self._mode_read_at = -math.inf
        self._last_replay = -math.inf

    def _read(self) -> tuple[ClockMode, float]:
        raw = self.store.client.hmget(heartbeat_key(STREAM_COMPONENT), ["clock", "ts"])
        mode_raw = raw[0].decode() if isinstance(raw[0], bytes) else raw[0]
        try:
            mode = ClockMode(mode_raw) if mode_raw is not None else ClockMode.LIVE
            ts = float(raw[1]) if raw[1] is not None else math.nan
        except ValueError:
            mode, ts = ClockMode.LIVE, math.nan
        return mode, ts

    def mode(self) -> ClockMode:
        """The daemon's clock mode (read again after :data:`MODE_TTL_SECONDS` of wall time)."""
        mono = time.monotonic()
        if mono - self._mode_read_at >= MODE_TTL_SECONDS:
            self._mode, _ = self._read()
            self._mode_read_at = mono
        return self._mode

    def __call__(self) -> float:
        if self.mode() != ClockMode.REPLAY:
            return self.wall()
        mode, ts = self._read()
        self._mode, self._mode_read_at = mode, time.monotonic()
        if mode != ClockMode.REPLAY or not math.isfinite(ts):
            return self.wall()
        self._last_replay = max(self._last_replay, ts)
        return self._last_replay

    def tick_time(self, bar_ts: float) -> float:
        """The time of a tick whose market time is ``bar_ts``: ``bar_ts`` in a replay, the wall clock live."""
        if self.mode() == ClockMode.REPLAY and math.isfinite(bar_ts):
            return bar_ts
        return self.wall()


def tick_time(clock: Clock, bar_ts: float) -> float:
    """The time to stamp a tick with: :meth:`MarketClock.tick_time` for a market clock, else ``clock()``."""
    return clock.tick_time(bar_ts) if isinstance(clock, MarketClock) else clock()


def replaying(clock: Clock) -> bool:
    """True when ``clock`` is a :class:`MarketClock` on a replay's time (the stream daemon replays a file).

    The monitor restarts the drawdowns on a replay's reset bar only (its first: the data's clock restarted,
    maybe years back). Live, a reset bar follows a reloaded market model (engine/reload.py), which is no new
    book: the P&L references and the drawdown record are kept, and prices the reload changed show as P&L."""
    return isinstance(clock, MarketClock) and clock.mode() == ClockMode.REPLAY


def is_date_only(bars: list[Bar]) -> bool:
    """True when every bar is at midnight UTC (a file of dates, no times)."""
    return bool(bars) and all(float(b.ts) % 86400.0 == 0.0 for b in bars)


def stamp_daily_closes(bars: list[Bar], sessions: Sessions) -> list[Bar]:
    """Bars of a date-only file moved to the close of their date's session. A date that is not a session (a
    holiday in a weekly file) is moved to the time of day of the nearest earlier session's close, so the file's
    spacing stays regular; it belongs to the session before it. Other files are returned unchanged."""
    if not is_date_only(bars):
        return bars
    index = {d: i for i, d in enumerate(sessions.dates)}
    day_seconds = 86_400.0
    out = []
    offset: float | None = None
    for bar in bars:
        day = time.strftime("%Y-%m-%d", time.gmtime(bar.ts))
        i = index.get(day)
        if i is not None:
            ts = float(sessions.closes[i])
            offset = ts - float(bar.ts)
        else:
            if offset is None:  # no session seen yet: the first session close after this date gives the time
                later = [float(c) for c in sessions.closes if float(c) >= bar.ts][:1]
                offset = (later[0] - float(bar.ts)) % day_seconds if later else 0.0
            ts = float(bar.ts) + offset
        out.append(Bar(ts, bar.prices, reset=bar.reset))
    return out


def wall_sleep(bar_spacing: float, speed: float) -> float:
    """Wall seconds to wait before the next replayed bar: ``bar_spacing / speed`` (0 when ``speed`` is 0:
    as fast as possible)."""
    if not (math.isfinite(speed) and speed >= 0):
        raise ValueError(f"speed must be >= 0, got {speed}")
    if speed == 0 or not math.isfinite(bar_spacing) or bar_spacing <= 0:
        return 0.0
    return bar_spacing / speed
