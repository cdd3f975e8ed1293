"""Whose clock stamps time: the wall clock when live, the data's own clock in a replay.

The stream daemon publishes its clock mode (:class:`ClockMode`) in its heartbeat ``hb:stream`` with ``ts``,
the time it stamped its last write. In a replay (``--feed replay``) that time is the bar's own timestamp, so
every reader that asks :class:`MarketClock` for "now" gets the data's time: the monitor's snapshots, history
points, P&L days and drawdown windows, the alert engine's ``triggered_at`` and timers, the gate's staleness and
order-rate windows, and the dashboard's time axes. Live (any other feed, or no stream heartbeat at all) it is
the wall clock.

The monitor stamps a tick with :func:`tick_time`: the tick's own bar time in a replay (a monitor lagging behind
the daemon still dates each snapshot by its bar), the wall clock live.

A replay's heartbeat also carries ``wall_ts`` (the daemon's wall clock when it wrote the beat), ``late_after``
(:func:`replay_late_after`) and ``run`` (one id per daemon process). When the daemon has been silent for more than
``late_after`` wall seconds (it died, stalls, or its file ended: ``feed_state = ended``), the replay's "now" is its
last bar time plus the wall time since that beat, so its prices go stale at the gate and on every page exactly as a
dead live feed's do. The wall extension restarts from each new bar: when a beat of the same run carries a later bar
time, "now" is that bar time (plus the wall silence since that beat, once past its ``late_after``). A replay paced
slower than ``late_after`` per bar thus reads stale between its bars, as a live feed that slow would, and fresh
again (age 0) at each new bar; keeping the largest time seen instead left every fresh bar already older than the
wall silence before it (200 wall s per one-minute bar under a 60 s limit: 139 s old on arrival, every order
refused). So within one run "now" steps back only at a new bar and only by the wall extension it had added: never
below the latest bar time read, and never back between bars (another beat of the same bar time, such as the end of
the feed, or an older one, keeps the largest). A new run (a restarted or new replay, maybe years back) starts it
again from that run's time. A finished replay started again with nothing new to play writes only its end beat, with
the last bar's time and the ``wall_ts`` that bar was played at (engine/stream.py): its time runs on from then, not
from the restart, so its old prices never read fresh again.

Redis down: the clock never raises. It keeps the last mode it read (live when it never read one) and tries again
after :data:`MODE_TTL_SECONDS`; live, "now" is the wall clock as ever; a replay clock keeps its last known time
(the wall clock if it never read one). So whoever asks for the time before touching the store (the pre-trade gate,
logic/execution.py) reaches its own fail-closed handling (REJECTED ``STORE_UNAVAILABLE``) instead of a raw
connection error, and a replay's time neither jumps to the wall clock nor runs on while nothing can be read.

Daily close files (dates without a time) are dated at midnight UTC, before the session they close opens;
:func:`stamp_daily_closes` moves such bars to their session's close so they fall in the right session, and a row
dated on a holiday or weekend to the close of the session before it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from enum import StrEnum

import redis

from engine.feeds import Bar
from engine.records import Clock
from engine.sessions import Sessions
from engine.store import Store
from engine.store.keys import heartbeat_key

log = logging.getLogger("riskdesk.clocks")

STREAM_COMPONENT = "stream"
"""The heartbeat the stream daemon writes (``hb:stream``): it carries ``clock``, ``ts``, ``wall_ts``,
``late_after``, ``run`` and ``feed_state``."""
MODE_TTL_SECONDS = 1.0
"""Wall seconds the clock mode read from the heartbeat is trusted before it is read again."""
REPLAY_LATE_BEATS = 3.0
"""Bars (of the daemon's wall interval) a replay daemon may be silent before its clock runs on the wall."""
REPLAY_LATE_MIN_SECONDS = 5.0
"""Wall seconds a replay daemon may always be silent (a replay played as fast as possible has no interval)."""
FEED_RUNNING = "running"
"""``feed_state`` of a stream heartbeat while the feed has bars."""
FEED_ENDED = "ended"
"""``feed_state`` of the stream heartbeat written when the feed ran out of bars (a replay's file ended): the daemon
exits after it, and the System page says the replay finished rather than that the daemon died."""
_BEAT_FIELDS = ("clock", "ts", "wall_ts", "late_after", "run")


class ClockMode(StrEnum):
    """How the stream daemon stamps time (published as ``clock`` in ``hb:stream``)."""

    LIVE = "live"
    """The wall clock."""
    REPLAY = "replay"
    """The bars' own timestamps."""
    COMPRESSED = "compressed"
    """The wall clock, but a live feed played faster or slower than one model bar per ``model.bar_seconds``:
    a demo clock the dashboard shows as such."""


def replay_late_after(interval: float, stale_price_seconds: float) -> float:
    """Wall seconds a replay daemon may be silent before the replay's clock runs on the wall clock:
    :data:`REPLAY_LATE_BEATS` of its wall interval per bar (at least :data:`REPLAY_LATE_MIN_SECONDS`), and never
    more than the strictest stale-price limit, so a dead or finished replay's prices are stale at the gate after
    exactly that limit of wall silence, as a dead live feed's are. A replay played at more than a third of that
    limit per bar reads stale between its bars, as a live feed that slow would."""
    late = max(REPLAY_LATE_MIN_SECONDS, REPLAY_LATE_BEATS * interval) if math.isfinite(interval) else math.inf
    return min(late, stale_price_seconds) if math.isfinite(stale_price_seconds) else late


@dataclass(frozen=True)
class _Beat:
    """The fields of ``hb:stream`` the clock reads (one HMGET)."""

    mode: ClockMode
    ts: float
    wall_ts: float
    """The daemon's wall clock when it wrote the beat (NaN: a heartbeat written before this field existed)."""
    late_after: float
    run: str | None


def _decode(value: object) -> str | None:
    return value.decode() if isinstance(value, bytes) else None if value is None else str(value)


def _float(value: object, default: float) -> float:
    text = _decode(value)
    try:
        return float(text) if text is not None else default
    except ValueError:
        return default


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
    Never raises: with Redis unreadable it keeps the last mode and a replay its last known time (module doc).
    Live, a call costs one Redis read per :data:`MODE_TTL_SECONDS` (the mode); in a replay, one HMGET per call
    (the latest bar time must be current). In a replay, "now" is the latest bar time while the daemon beats, and
    that time plus the wall seconds since its last beat once it has been silent more than the beat's
    ``late_after`` (it died or its file ended: the prices go stale). Within one run of the daemon (the heartbeat's
    ``run``) it goes back only when a beat with a later bar time arrives, and then only by the wall extension it
    had added: it restarts from that bar (module doc); a new run (a restarted or re-seeded replay, maybe years
    back) restarts it from that run's time.
    """

    def __init__(self, store: Store, wall: Clock = time.time) -> None:
        self.store = store
        self.wall = wall
        self._mode = ClockMode.LIVE
        self._mode_read_at = -math.inf
        self._last_replay = -math.inf
        self._bar_ts = -math.inf
        """The latest bar time read from this run's heartbeat: a later one restarts the wall extension."""
        self._run: str | None = None
        self._failing = False

    def _read(self) -> _Beat | None:
        """The stream heartbeat, or None when Redis cannot be read (unreachable, or the key holds another type):
        the callers keep what they knew (see the module doc), and one warning is logged per outage."""
        try:
            raw = self.store.client.hmget(heartbeat_key(STREAM_COMPONENT), list(_BEAT_FIELDS))
        except redis.RedisError as exc:
            if not self._failing:
                log.warning("the clock cannot read the stream heartbeat (%s): keeping mode %s", exc, self._mode)
            self._failing = True
            return None
        if self._failing:
            log.info("the clock reads the stream heartbeat again")
        self._failing = False
        mode_raw = _decode(raw[0])
        try:
            mode = ClockMode(mode_raw) if mode_raw is not None else ClockMode.LIVE
        except ValueError:
            mode = ClockMode.LIVE
        late = _float(raw[3], REPLAY_LATE_MIN_SECONDS)
        late = late if late >= 0 else REPLAY_LATE_MIN_SECONDS  # NaN or negative: the default allowance
        return _Beat(mode, _float(raw[1], math.nan), _float(raw[2], math.nan), late, _decode(raw[4]))

    def mode(self) -> ClockMode:
        """The daemon's clock mode (read again after :data:`MODE_TTL_SECONDS` of wall time)."""
        mono = time.monotonic()
        if mono - self._mode_read_at >= MODE_TTL_SECONDS:
            beat = self._read()
            if beat is not None:
                self._mode = beat.mode
            self._mode_read_at = mono  # unreadable: the last mode, and one more try after the TTL
        return self._mode

    def __call__(self) -> float:
        if self.mode() != ClockMode.REPLAY:
            return self.wall()
        beat = self._read()
        if beat is None:  # Redis down in a replay: its last known time (module doc)
            return self._last_replay if math.isfinite(self._last_replay) else self.wall()
        self._mode, self._mode_read_at = beat.mode, time.monotonic()
        if beat.mode != ClockMode.REPLAY or not math.isfinite(beat.ts):
            return self.wall()
        now = beat.ts
        if math.isfinite(beat.wall_ts):  # silent past late_after: the data's time runs on with the wall's
            silent = self.wall() - beat.wall_ts
            if silent > beat.late_after:
                now = beat.ts + silent
        if beat.run != self._run:  # a new run of the daemon: its time may be earlier (another replay)
            self._run, self._bar_ts, self._last_replay = beat.run, beat.ts, now
        elif beat.ts > self._bar_ts:  # a new bar: the wall extension restarts from it (module doc)
            self._bar_ts, self._last_replay = beat.ts, now
        else:  # the same bar (still silent, or the end of the feed) or an older one: never back
            self._last_replay = max(self._last_replay, now)
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
    """Bars of a date-only file moved to the close of their date's session; other files are returned unchanged.

    A date that is not a session (a holiday, or a weekend in a file of every calendar day) is moved to the close of
    the session before it: nothing trades on a holiday, so the latest close known on that date is the previous
    session's, and a later session's close would date a price before it was printed. Dated at its own date's usual
    close time (outside every session) it never became a session close, and the next session counted its move a
    second time. When that leaves two rows on one session (a daily file that also lists the holiday), they are one
    bar: the later row's prices, each ticker's, over the earlier row's (the later row is the file's last word on
    that close; vendors repeat the close on holidays, so they usually agree) and a warning is logged. A date
    outside the calendar keeps the time of day of the nearest session close, as before."""
    if not is_date_only(bars):
        return bars
    day_seconds = 86_400.0
    out: list[Bar] = []
    offset: float | None = None
    moved = merged = 0
    for bar in bars:
        day = time.strftime("%Y-%m-%d", time.gmtime(bar.ts))
        close = sessions.close_on(day)
        if close is not None:
            ts = close
            if ts >= float(bar.ts):  # its own date's session (the row is dated at its date's midnight)
                offset = ts - float(bar.ts)
            else:  # a day without a session: the session before it
                moved += 1
        else:  # outside the calendar: the time of day of the nearest session close
            if offset is None:
                later = [float(c) for c in sessions.closes if float(c) >= bar.ts][:1]
                offset = (later[0] - float(bar.ts)) % day_seconds if later else 0.0
            ts = float(bar.ts) + offset
        if out and out[-1].ts == ts:  # two rows on one session: one bar, the later row's prices win
            earlier = out.pop()
            merged += 1
            bar = Bar(ts, {**earlier.prices, **bar.prices}, reset=earlier.reset or bar.reset)
        out.append(Bar(ts, bar.prices, reset=bar.reset))
    if moved:
        log.warning(
            "%d row(s) dated on a day without a session moved to the previous session's close; %d of them merged "
            "with that session's own row (the later row's prices kept)", moved, merged,
        )  # fmt: skip
    return out


def wall_sleep(bar_spacing: float, speed: float) -> float:
    """Wall seconds to wait before the next replayed bar: ``bar_spacing / speed`` (0 when ``speed`` is 0:
    as fast as possible)."""
    if not (math.isfinite(speed) and speed >= 0):
        raise ValueError(f"speed must be >= 0, got {speed}")
    if speed == 0 or not math.isfinite(bar_spacing) or bar_spacing <= 0:
        return 0.0
    return bar_spacing / speed
