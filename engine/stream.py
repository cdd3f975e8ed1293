"""The market-data daemon: ``python -m engine.stream``.

Per bar from the feed (:mod:`engine.feeds`):

1. validate each price: an unknown ticker, a non-number, NaN, inf or a price <= 0 is rejected, counted and
   logged, never written; the bar's other prices go on (a bar with no valid price is rejected whole);
2. log returns against the last accepted prices (zero for a ticker without a new price; none at all for a
   ``reset`` bar, the first bar of a replay);
3. standardized returns ``z_i = r_i / sigma_i`` with ``sigma_i = sqrt(S_ii)`` of the matrix *before* this bar's
   update (``engine.math_logic.standardize_returns``: the innovations of filtered historical simulation), then
   the EWMA update of the covariance in place (``engine.math_logic.update_covariance_ewma``, no O(N³) check on
   the hot path: the matrix is validated once each time it is loaded from the store);
4. ONE atomic write in ONE round trip (engine/store/market_write.py: a Lua script that first checks the stored
   market version and epoch are the ones the daemon holds): market snapshot (prices, price times, matrix,
   version + 1), the row ``[version, z]`` of the standardized window ``mkt:{m}:stdret`` (trimmed to
   ``model.fhs_window`` rows), the tick event on ``mkt:{m}:ticks`` (bounded by MAXLEN ~; it names its tickers
   by their rev, ``engine.store.codec.universe_rev``, and, when some ticker had no new price, which: the
   continuous backtest marks those entries missing in its own window, engine/store/market.py ``TickEvent``) and
   the heartbeat ``hb:stream``.

A return spanning the g bars since the ticker's last accepted price enters the update and the window as one
bar's, ``r / sqrt(g)`` (``math_logic.per_bar_returns``; every g = 1: the same bits); the counts are written with
each bar (``Store.write_print_gaps``: a restart continues them; none stored, or stale, count from 0). With
``model.night_variance_share`` on a calendar with sessions, g also counts the nights since that price, each worth
a night's variance (``math_logic.session_spans``): an opening gap is no 47-sigma minute.
A ticker without a new price in a bar (none in it, refused by the price filter, or no accepted price before
it) keeps its variance in the covariance update (its price is carried forward, engine/price_filter.py; its return
0 is no data: ``engine.math_logic.update_covariance_ewma_observed``, the plain update when every ticker has one) and is
*missing* in the bar's window row, not a 0 observation (``engine.math_logic.standardize_observed``; so is a
ticker whose volatility is 0): the Student-t fit leaves it out of its sample, filtered historical simulation
fills it with a draw of that ticker's own innovations, never "no move" (``engine.math_logic.fhs_fill_missing``;
engine/store/market.py, ``StandardizedWindow``). A price that arrives
unchanged is an observation: its return 0 is data. A bar where every ticker has a new price writes exactly the
row it wrote before missing entries were marked. The tick event carries the same price part of that mask
(``_Step.observed``), not the ``sigma > 0`` part: the backtest standardizes by its own covariance and applies its
own (logic/backtest.py).

The standardized window gets no row for a ``reset`` bar (the first bar of a replay: no return) nor for the
first bar after a reload of a market someone else wrote (a warm-up re-seed or ``--add-ticker``: the "return"
would span two unrelated price series). When the stored window's columns are not the market's tickers (a store
seeded before the window existed, or grown without it) the daemon starts an empty window in its next write.

Versions: the daemon keeps the version (and market epoch) it last wrote or loaded. Its write of a bar runs only
if the store still holds them, checked inside the same script that writes, so nothing can come between; if it
does not (the warm-up added a ticker, Redis came back from its AOF, someone re-seeded) nothing is written, the
daemon reloads prices, matrix and version from the store and recomputes the bar on them, so a new ticker is
picked up without a restart and the version sequence has no gap and no repeat.

Redis down: the bar is kept, the error logged, and the write retried with capped exponential backoff
(:class:`engine.daemon.Backoff`: 50 ms doubling up to 5 s); the feed is not read meanwhile.
When Redis is back the daemon reloads the stored state and writes the kept bar with the next version. If the
connection broke during the write, the last tick event tells whether the bar was committed (its token is unique)
so it is never written twice. With ``appendfsync everysec`` a Redis crash may lose the last second of writes:
the daemon then continues from the version that survived.

SIGINT / SIGTERM stop the daemon between bars (a bar being retried during an outage is dropped).

Usage::

    python -m engine.stream [--feed sim|replay] [--file CSV] [--interval SECONDS | --speed X] [--ticks N] [--seed N]
                            [--bar-model-bars N] [--shock AAA:-0.08@100 ...] [--vol-regime 2.0@150 ...] [--config FILE]
                            [--log-level INFO]

Clock (engine/clocks.py): a replay stamps every write (snapshot ``ts``, ``price_ts``, tick event, heartbeat)
with the bar's own time and publishes ``clock = replay`` in ``hb:stream``; ``--speed X`` plays X seconds of
data per wall second. Live feeds stamp with the wall clock. Each bar also re-anchors the collar's reference
prices at session opens (engine/collar.py), in the bar's transaction. The heartbeat also carries the wall time it
was written (``wall_ts``), the daemon's run id (``run``) and ``feed_state``, ``ended`` when a replay ran out of
bars (the daemon then exits; a live feed that ends writes nothing and its heartbeat goes stale): a dead or finished
replay's clock runs on the wall and its prices go stale. A finished replay started again (nothing new to play) ends
at once on its last bar and the wall time that bar was played: its prices stay as old as they are.

Redis is ``REDIS_URL`` (or the settings' embedded server); the settings file is ``$RISKDESK_CONFIG`` or
``riskdesk.toml``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import redis

from engine import math_logic
from engine.clocks import FEED_ENDED, FEED_RUNNING, ClockMode, replay_late_after
from engine.collar import CollarAnchor
from engine.daemon import (
    Backoff,
    add_daemon_arguments,
    configure_logging,
    connect_for_daemon,
    failure_log_level,
    stop_on_signals,
)
from engine.daemon import install_signal_handlers as install_signal_handlers  # re-exported: a public name here
from engine.errors import RiskdeskError
from engine.feeds import Bar, Feed, ReplayFeed, SimulatedFeed, UniverseAware, parse_regime, parse_shock
from engine.metrics import StreamMetrics, serve
from engine.price_filter import PriceFilter
from engine.records import Clock
from engine.replay_file import replay_feed as _replay_feed  # the name tests and callers know
from engine.replay_file import replay_interval
from engine.sessions import market_calendar
from engine.settings import Settings, load_settings
from engine.store import (
    BACKTEST_GROUP,
    MONITOR_GROUP,
    Float64Array,
    MarketSnapshot,
    Store,
    TickEvent,
    encode_json,
    universe_rev,
)

log = logging.getLogger("riskdesk.stream")

HEARTBEAT_COMPONENT = "stream"
WATCH_RETRIES_WITHOUT_WAIT = 3
"""A write refused because the market changed (the warm-up wrote meanwhile) is retried at once this many
times, then with backoff."""


@dataclass
class DaemonStats:
    bars_read: int = 0
    """Bars pulled from the feed."""
    bars_written: int = 0
    """Bars written (one market version each)."""
    bars_rejected: int = 0
    """Bars with no valid price: nothing written."""
    prices_rejected: int = 0
    """Single prices refused (unknown ticker, not a number, NaN, inf, <= 0)."""
    reloads: int = 0
    """Times the state was reloaded from the store (start, a version written by another, after an outage)."""
    store_errors: int = 0
    """Failed write attempts (Redis down, store not usable)."""
    last_latency_ms: float = 0.0
    """Validation + update + atomic write of the last bar written (excluding waits for Redis)."""
    rejections: list[str] = field(default_factory=list)
    """The last few rejection reasons (for logs and tests)."""


@dataclass(frozen=True)
class _Step:
    prices: Float64Array
    price_ts: Float64Array
    returns: Float64Array | None
    """None for a reset bar (no covariance update)."""
    observed: npt.NDArray[np.bool_]
    """The tickers whose return is an observation: a new price accepted in this bar, and one before it."""
    gaps: Float64Array | None
    """Bars of variance each return spans: ``since + 1``, or with ``model.night_variance_share`` on a calendar
    with sessions :func:`~engine.math_logic.session_spans` of it and the nights since; None: one bar each."""
    since: Float64Array
    """Bars since each ticker's last accepted price after this bar (0: accepted in it)."""
    unanchored: npt.NDArray[np.bool_]
    """After this bar, the tickers no bar has priced since the last reset bar (:attr:`StreamDaemon.unanchored`)."""
    accepted: int
    rejected: tuple[str, ...]
    span: float = 1.0
    """Bars of variance the bar spans for a ticker that printed in the bar before (``TickEvent.span``)."""


class StreamDaemon:
    """Turns feed bars into market versions in the store (see the module docstring).

    Parameters
    ----------
    store, settings, feed:
        Where to write, the model settings (decay, MAXLEN), where bars come from.
    clock:
        Epoch seconds of the written snapshot (``ts``, ``price_ts``); tests pass a controllable one.
    interval:
        Wall seconds per bar (default ``settings.model.bar_interval_seconds``: ``model.bar_seconds``, 60, unless
        a ``model.demo_clock_seconds`` compressed clock is set); 0 runs as fast as possible.
    stop_event:
        Set to stop between bars (``stop()`` does it; signal handlers call it).
    clock_mode:
        ``REPLAY`` stamps every write with the bar's own time (engine/clocks.py), ``LIVE`` with ``clock``;
        default: ``REPLAY`` for a :class:`~engine.feeds.ReplayFeed`. Published in the heartbeat as ``clock``.
    anchor:
        Re-anchors the collar's reference prices (engine/collar.py); default from ``market.calendar`` and
        ``limits.collar_reference``.
    metrics:
        Prometheus counters (engine/metrics.py); default: its own, on a fresh registry.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        feed: Feed,
        *,
        clock: Clock = time.time,
        interval: float | None = None,
        stop_event: threading.Event | None = None,
        clock_mode: ClockMode | None = None,
        anchor: CollarAnchor | None = None,
        metrics: StreamMetrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics or StreamMetrics()
        self.anchor = anchor or CollarAnchor(market_calendar(settings), settings.limits.collar_reference)
        self.settings = settings
        self.feed = feed
        self.clock = clock
        self.interval = settings.model.bar_interval_seconds if interval is None else float(interval)
        if not (math.isfinite(self.interval) and self.interval >= 0):
            raise ValueError(f"interval must be >= 0 seconds, got {interval}")
        self.decay = settings.model.ewma_decay
        self._night_share = float(settings.model.night_variance_share)
        self.window = settings.model.fhs_window
        self.maxlen = settings.stream.tick_stream_maxlen
        self._stop = stop_event or threading.Event()
        self.stats = DaemonStats()
        self.price_filter = PriceFilter.for_feed(settings, feed)
        self.clock_mode = clock_mode or default_clock_mode(settings, feed, self.interval)
        # state mirrored from the store; valid only while self._synced
        self.version: int | None = None
        self._epoch: int | None = None
        """Market epoch last loaded (engine/store/book.py); a different one means a reloaded market."""
        self._new_epoch = False
        self._epoch_seq = 0
        self.tickers: tuple[str, ...] = ()
        self.prices: Float64Array = np.empty(0)
        self.price_ts: Float64Array = np.empty(0)
        self.cov: Float64Array = np.empty((0, 0))
        self.since: Float64Array = np.empty(0)
        """Bars since each ticker's last accepted price, as stored with the snapshot (module docstring)."""
        self.unanchored: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)
        """Tickers a reset bar (a replay's first row, a new market) did not price and no bar has since: their price
        is from before it, so their next print anchors them (no return, no jump test against it), as the reset
        bar's prices are anchors. Kept in memory: a restart before that print measures it against the old price."""
        self._index: dict[str, int] = {}
        self._tickers_json = "[]"
        self._tickers_rev = universe_rev(self._tickers_json)  # names them in the tick events (codec.universe_rev)
        self._universe_written = False  # this daemon wrote its tickers (and their rev) since it last loaded them
        self._synced = False
        self._validate_next = True
        self._in_flight: str | None = None
        self._token_prefix = f"{os.getpid()}-{secrets.token_hex(6)}"  # unique per daemon run, no clock needed
        self._seq = 0
        self._last_written: int | None = None
        """The version this daemon last committed (None: unknown): a reload finding another is a foreign write."""
        self._found_beat: dict[str, str] | None = None
        """A replay's stream heartbeat as :meth:`run` found it, before this run wrote one (:meth:`_write_end_beat`)."""
        self._row_gap = False
        """Set by a reload after a foreign write: the next bar's return spans it and gets no window row."""
        self._bar_time = math.nan
        """The last bar's time (from the market loaded, then each bar written): a bar's nights count from it."""
        self._window_ok = False
        """The stored window's columns are this daemon's tickers (else the next write starts an empty one)."""

    # -- control ---------------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, ticks: int | None = None) -> DaemonStats:
        """Read bars until the feed ends, ``ticks`` bars were read, or :meth:`stop`."""
        self._found_beat = self._previous_beat()
        iterator = iter(self.feed)
        next_at = time.monotonic()
        while not self.stopping and (ticks is None or self.stats.bars_read < ticks):
            if self.interval > 0:
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                # after a stall (Redis outage) start a new schedule instead of bursting to catch up
                next_at = max(next_at + self.interval, time.monotonic())
            try:
                bar = next(iterator)
            except StopIteration:
                log.info("feed %s has no more bars", getattr(self.feed, "name", "?"))
                self._write_end_beat()
                break
            self.stats.bars_read += 1
            self.process_bar(bar)
        log.info(
            "stopped after %d bars: %d written (version %s), %d rejected, %d prices rejected, %d reloads",
            self.stats.bars_read, self.stats.bars_written, self.version, self.stats.bars_rejected,
            self.stats.prices_rejected, self.stats.reloads,
        )  # fmt: skip
        return self.stats

    # -- one bar ---------------------------------------------------------------------------------------------
    def process_bar(self, bar: Bar) -> bool:
        """Validate, update and write one bar, retrying until it is written, rejected, or the daemon stops
        (a stop ends the retries of a bar that cannot be written; it does not prevent the first attempt).

        Returns True when the bar was written as a new version.
        """
        self._seq += 1
        token = f"{self._token_prefix}-{self._seq}"
        backoff = Backoff()
        watch_conflicts = 0
        while True:  # a bar already read is written even when a stop was asked meanwhile; retries are not
            started = time.perf_counter()
            try:
                if not self._synced:
                    if self._in_flight == token and self._committed(token):
                        log.info("bar %s was committed before the connection broke: not writing it again", token)
                        self._in_flight = None
                        self._last_written = None  # our own bar: the prices continue, no gap
                        self._load()
                        self._count_written(started)
                        return True
                    self._load()
                return self._write(bar, token, started)
            except redis.WatchError:
                # the warm-up (or anyone) wrote the market since this daemon loaded it: reload and recompute
                # the bar on the new state
                self._synced = False
                watch_conflicts += 1
                if watch_conflicts <= WATCH_RETRIES_WITHOUT_WAIT:
                    continue
            except (redis.RedisError, RiskdeskError, ValueError) as exc:
                self._synced = False
                self.stats.store_errors += 1
                self.metrics.redis_errors.labels("stream").inc()
                log.log(failure_log_level(self.stats.store_errors), "cannot write bar %s (%s: %s); retrying in %.2f s",
                        token, type(exc).__name__, exc, backoff.delay)  # fmt: skip
            if backoff.wait(self._stop):
                break
        log.warning("stopping with bar %s not written", token)
        return False

    def _committed(self, token: str) -> bool:
        last = self.store.last_tick()
        return last is not None and last.token == token

    def _load(self, conn: object = None) -> None:
        """Mirror the stored market (version, tickers, prices, matrix); validate the matrix on next use."""
        snap, since = self.store.read_market_state(conn)
        changed = snap.tickers != self.tickers
        if self._last_written is not None and snap.version != self._last_written:
            self._row_gap = True
        self._window_ok = self.store.read_standardized_tickers(conn) == snap.tickers
        epoch = self.store.read_market_epoch(conn)  # a new epoch: the market was reloaded or re-seeded
        if self._epoch is not None and self._epoch != epoch:
            self._new_epoch, self._epoch_seq = True, self._seq  # the bar in hand predates the new market
        self._epoch = epoch
        self.version = snap.version
        # the tickers not anchored since a reset bar stay so, by name, across a change of universe (an added ticker)
        was = dict(zip(self.tickers, self.unanchored.tolist(), strict=False))
        self.unanchored = np.array([was.get(t, False) for t in snap.tickers], dtype=bool)
        self.tickers = snap.tickers
        self._index = {t: i for i, t in enumerate(snap.tickers)}
        if changed:
            self.anchor.reset()
        elif self.prices.shape == snap.prices.shape:  # prices restated with no bar (a split, a dividend)
            with np.errstate(invalid="ignore", divide="ignore"):
                restated = (snap.price_ts == self.price_ts) & (snap.prices != self.prices) & (self.prices > 0)
                restated &= np.isfinite(snap.prices) & (snap.prices > 0)
            if restated.any():
                self.anchor.restate(np.where(restated, snap.prices / np.where(restated, self.prices, 1.0), 1.0))
        # a fresh process (or a reset anchor) rebuilds the collar's session and close from the stored market,
        # so the next session open re-anchors after a restart as without one (engine/collar.py)
        self.anchor.seed(snap.ts, snap.prices, snap.price_ts)
        self._bar_time = float(snap.ts)  # the last bar's time: the nights a bar spans are counted from it
        self._tickers_json = encode_json(list(snap.tickers))
        self._tickers_rev = universe_rev(self._tickers_json)
        self._universe_written = False
        self.prices = snap.prices.copy()
        self.price_ts = snap.price_ts.copy()
        self.cov = snap.cov  # a fresh writeable copy (decode_market_cov), updated in place from now on
        self.since = self.price_filter.resume(snap.tickers, since)  # the jump band's count too; zeros: none stored
        # measure the EWMA kernels for this N now (once per process and N), not inside the first bar's MULTI
        kernel = math_logic.ewma_kernel_calibration(len(snap.tickers)).chosen
        self._validate_next = True
        self._synced = True
        self.stats.reloads += 1
        # on the plain client, not ``conn`` (a caller's pipeline must only read here).
        # After a re-seed the groups are gone: recreate them before publishing so the monitors and the backtest
        # runner miss no tick.
        self.store.ensure_tick_group(MONITOR_GROUP)
        self.store.ensure_tick_group(BACKTEST_GROUP)
        if isinstance(self.feed, UniverseAware):
            usable = np.where(np.isfinite(self.prices) & (self.prices > 0), self.prices, 1.0)
            vols = np.sqrt(np.clip(np.diagonal(self.cov), 0.0, None))
            self.feed.sync_universe(list(self.tickers), usable.tolist(), vols.tolist())
        log.info("loaded market version %d (%d tickers%s), EWMA kernel %s", snap.version, len(snap.tickers),
                 ", universe changed" if changed else "", kernel)  # fmt: skip

    def validate(self, bar: Bar, now: float) -> _Step:
        """Check every price of ``bar`` against the loaded universe and compute the returns (pure)."""
        self.price_filter.begin(self._seq)  # a retried bar starts from the same remembered jumps
        prices = self.prices.copy()
        last = prices.copy()  # what a new price is measured against: none for a ticker not anchored since a reset
        last[self.unanchored] = np.nan
        price_ts = self.price_ts.copy()
        names = list(bar.prices)
        raws = list(bar.prices.values())
        if tuple(names) == self.tickers:  # the usual bar: every ticker, in the universe's order
            at = np.arange(len(names))
            known = names
        else:
            found = [self._index.get(t, -1) for t in names]
            at = np.array([i for i in found if i >= 0], dtype=np.intp)
            known = [t for t, i in zip(names, found, strict=True) if i >= 0]
            raws = [r for r, i in zip(raws, found, strict=True) if i >= 0]
            missing = np.ones(len(self.tickers), dtype=bool)
            missing[at] = False  # a halted ticker's bars count: its re-open is judged over all of them
            self.price_filter.absent([self.tickers[i] for i in np.flatnonzero(missing)], reset=bar.reset)
        # a session open since a ticker's last price widens its band by the closed time (its price time and
        # this bar's are stamped by the same clock: engine/price_filter.py, "Session opens")
        closed = None if bar.reset else self.price_filter.closed_bars(self.price_ts[at], now)
        checked, reasons = self.price_filter.check_many(
            known, raws, last[at], np.diagonal(self.cov)[at], reset=bar.reset, closed=closed
        )  # engine/price_filter.py: absurd prices never reach the model
        good = ~np.isnan(checked)  # an accepted price is a finite one, a rejected one NaN
        accepted = at[good]
        prices[accepted] = checked[good]
        price_ts[accepted] = now
        rejected: list[str] = []
        if accepted.size < len(names):  # the reasons in the bar's order, unknown tickers among them
            why_of = dict(zip(known, reasons, strict=True))
            for t, r in bar.prices.items():
                why = why_of.get(t, "unknown ticker")
                if why:
                    rejected.append(f"{t}={r!r}: {why}")
        returns: Float64Array | None = None
        observed = np.zeros(len(self.tickers), dtype=bool)
        if not bar.reset:
            returns = np.zeros(len(self.tickers))  # no new price: the last one carried forward, return 0
            before = last[accepted]
            idx = accepted[np.isfinite(before) & (before > 0)]
            if idx.size:
                returns[idx] = math_logic.log_returns(last[idx], prices[idx])
            observed[idx] = True  # only these returns are data; the zeros elsewhere are missing entries
        returns = self.price_filter.per_model_bar(returns)  # a replay's bar may span many model bars
        since = self.since + 1.0  # a return since a price g bars back spans g bars (None: all span one)
        gaps, span = None, 1.0
        if returns is not None and self._night_share > 0.0 and self.price_filter.sessions is not None:
            # and a night's variance more, each open bar a little less (math_logic.session_spans)
            gaps, span = self.price_filter.session_gaps(
                since, self.price_ts, self.since == 0.0, self._bar_time, now, self._night_share,
                self.settings.model.bars_per_day,
            )  # fmt: skip
        elif returns is not None and (since[observed] > 1.0).any():
            gaps = since.copy()
        since[accepted] = 0.0  # a reset bar's prices too: the next return starts from them
        unanchored = np.ones_like(self.unanchored) if bar.reset else self.unanchored.copy()
        unanchored[accepted] = False
        return _Step(
            prices, price_ts, returns, observed, gaps, since, unanchored, int(accepted.size), tuple(rejected), span
        )

    def _write(self, bar: Bar, token: str, started: float) -> bool:
        now = float(bar.ts) if self.clock_mode == ClockMode.REPLAY else self.clock()
        if self._new_epoch:  # no return across two markets (engine/reload.py)
            if isinstance(self.feed, UniverseAware) and self._epoch_seq == self._seq:
                return False  # drawn from the old market's prices: dropped; the feed now follows the new
            bar = Bar(bar.ts, bar.prices, reset=True)
        step = self.validate(bar, now)
        if step.rejected:
            log.warning("bar %s: rejected %d price(s): %s", token, len(step.rejected), "; ".join(step.rejected))
            self.stats.rejections = (self.stats.rejections + list(step.rejected))[-50:]
        if step.accepted == 0:
            self.stats.bars_rejected += 1
            self.stats.prices_rejected += len(step.rejected)
            self.metrics.bar_rejected(step.rejected)
            self._write_heartbeat_best_effort(now)
            return False
        version = int(self.version or 0) + 1
        # The matrix is updated in place: until the write commits the store, not this copy, is the truth.
        self._synced = False
        z: Float64Array | None = None
        observed: npt.NDArray[np.bool_] | None = None
        if step.returns is not None:
            if not self._row_gap:
                vols = np.sqrt(np.clip(np.diagonal(self.cov), 0.0, None))
                z, observed = math_logic.standardize_observed(step.returns, vols, step.observed, gaps=step.gaps)
            # a ticker without a new price keeps its variance (all observed: the plain update, the same bits)
            math_logic.update_covariance_ewma_observed(
                self.cov, step.returns, step.observed, self.decay, validate=self._validate_next, gaps=step.gaps
            )
        snap = MarketSnapshot(
            version=version,
            ts=now,
            tickers=self.tickers,
            prices=step.prices,
            price_ts=step.price_ts,
            cov=self.cov,
        )
        event = TickEvent(
            version=version, ts=now, tickers=self.tickers, prices=step.prices, bar_ts=float(bar.ts),
            token=token, reset=bar.reset, rejected=len(step.rejected),
            observed=None if step.returns is None else step.observed,  # a reset bar has no return to mark
            span=step.span,
        )  # fmt: skip
        reference, anchor_state = self.anchor.propose(now, step.prices, reset=bar.reset)
        write = self.store.market_write()
        # the stored tickers are this daemon's (the write is guarded by the version): sent once per load
        self.store.write_market(snap, write, tickers_json=self._tickers_json, tickers=not self._universe_written)
        self.store.write_print_gaps(version, step.since, write)  # in the same script: a restart continues the count
        if not self._window_ok:
            empty = np.zeros((0, len(self.tickers)))
            self.store.write_standardized_window(self.tickers, [], empty, self.window, write)
        if z is not None:
            self.store.push_standardized(version, z, self.window, write, observed=observed)
        if reference is not None:
            self.store.write_reference_prices(self.tickers, reference, now, write)
        self.store.publish_tick(event, self.maxlen, write, tickers_rev=self._tickers_rev)
        heartbeat = self._heartbeat(now, version, self.stats.bars_written + 1, len(step.rejected))
        self.store.write_heartbeat(HEARTBEAT_COMPONENT, heartbeat, write)
        self._in_flight = token
        if not self.store.commit_market_write(write, int(self.version or 0), int(self._epoch or 0)):
            # the warm-up (or anyone) wrote the market since this daemon loaded it: reload and recompute. Or
            # the client re-sent the script after a broken connection and the first send had committed: the
            # bar is still in flight, so the retry looks for its token first (process_bar)
            log.info("the stored market is no longer version %s (epoch %s): reloading", self.version, self._epoch)
            raise redis.WatchError("the market changed since it was loaded")
        self._in_flight = None
        self._new_epoch = False
        self._universe_written = True
        self.anchor.commit(anchor_state)
        self.version = version
        self._last_written = version
        self._window_ok = True
        self._row_gap = False  # the written prices anchor the next return
        self.prices = step.prices
        self.price_ts = step.price_ts
        self._bar_time = now
        self.since = step.since
        self.unanchored = step.unanchored
        self._validate_next = False
        self._synced = True
        self.stats.prices_rejected += len(step.rejected)
        self.metrics.count_rejected(step.rejected)
        self._count_written(started)
        return True

    def _count_written(self, started: float) -> None:
        self.stats.bars_written += 1
        self.stats.last_latency_ms = (time.perf_counter() - started) * 1000.0
        self.metrics.bar_written(int(self.version or 0), self.stats.last_latency_ms / 1000.0)

    def _heartbeat(
        self, now: float, version: int | None, bars_written: int, rejected_now: int = 0, feed_state: str = FEED_RUNNING
    ) -> dict[str, object]:
        """The fields of ``hb:stream``. Besides ``ts`` (the bar's time in a replay) it carries ``wall_ts``, the
        wall time it was written, so a replay's silence is measured on the wall (engine/clocks.py: the market
        clock runs on after ``late_after`` wall seconds of it, the System page judges the daemon by it), ``run``
        (this process: a replay's clock may go back only across runs) and ``feed_state`` (``ended`` once the
        feed has no more bars: a finished replay, not a dead daemon)."""
        return {
            "ts": now,
            "wall_ts": self.clock() if self.clock_mode == ClockMode.REPLAY else now,  # live, ts is the wall
            "late_after": self._late_after,
            "run": self._token_prefix,
            "feed_state": feed_state,
            "pid": os.getpid(),
            "feed": getattr(self.feed, "name", "?"),
            "version": -1 if version is None else version,
            "bars_read": self.stats.bars_read,
            "bars_processed": bars_written,
            "bars_rejected": self.stats.bars_rejected,
            "prices_rejected": self.stats.prices_rejected + rejected_now,
            "last_latency_ms": round(self.stats.last_latency_ms, 3),
            "interval": self.interval,
            "clock": str(self.clock_mode),
            "feed_bar_model_bars": self.price_filter.bar_scale,
        }

    @functools.cached_property
    def _late_after(self) -> float:
        """Wall seconds of silence after which a replay's clock runs on the wall (engine/clocks.py): bounded
        by the strictest stale-price limit of any portfolio, so a dead replay fails closed within it."""
        stale = min([self.settings.limits.stale_price_seconds]
                    + [p.limits.stale_price_seconds for p in self.settings.portfolios])  # fmt: skip
        return replay_late_after(self.interval, float(stale))

    def _write_end_beat(self) -> None:
        """The feed has no more bars: a replay's file ended. Say so in the heartbeat before exiting. The end beat
        keeps the last bar's ``ts`` and the wall time that bar was played (``wall_ts``): the daemon has been silent
        since that bar, however long the feed took to say it had no more, so the clock runs on the wall
        ``late_after`` after it (engine/clocks.py), for a reader that starts after the end as for one already
        running, and its prices go stale as a dead feed's would, while the System page says the replay finished.

        A run that wrote no bar (a finished replay started again: nothing new to play) ends on the beat of the run
        that played the last bar, the one it found (:attr:`_found_beat`, its last bar and that bar's ``wall_ts``,
        which every end beat after it keeps, :meth:`_played_at`): it is finished at once, and the prices keep the
        age they have had since they were played. Dated on the wall clock at the restart, as it once was, the end
        beat made prices minutes or hours old read fresh for ``late_after`` plus the stale-price limit, and the
        gate approved orders on them.

        A live or compressed feed that ends (a broker connection that closed) writes nothing: it is a feed that
        stopped, not a finished file, so its heartbeat ages and the System page shows it stale with the fix to
        restart the daemon, exactly as a dead daemon's."""
        if self.clock_mode != ClockMode.REPLAY:
            log.warning("the %s feed ended: no more prices; the stream heartbeat goes stale", self.clock_mode)
            return
        try:
            last = self.store.read_heartbeat(HEARTBEAT_COMPONENT) or {}
            if last.get("run") == self._token_prefix and self.stats.bars_written == 0 and self._found_beat:
                last = self._found_beat  # it only read bars refused whole: the earlier run's last bar stands
            if "ts" not in last:
                return  # never wrote a bar: nothing to date the end by
            beat = self._heartbeat(float(last["ts"]), self.version, self.stats.bars_written, feed_state=FEED_ENDED)
            if last.get("run") != self._token_prefix:  # an earlier run played the last bar: when it played it
                beat["wall_ts"] = self._played_at(last)
            elif "wall_ts" in last:
                beat["wall_ts"] = float(last["wall_ts"])  # silent since its last bar, not since the end was noticed
            self.store.write_heartbeat(HEARTBEAT_COMPONENT, beat)
        except (redis.RedisError, RiskdeskError, ValueError) as exc:
            log.warning("end of feed not written to the heartbeat: %s", exc)

    def _previous_beat(self) -> dict[str, str] | None:
        """A replay's stream heartbeat before this run writes any (best effort: None live, or when Redis cannot be
        read): an earlier run's, naming the bar it ended on and when it played it."""
        if self.clock_mode != ClockMode.REPLAY:
            return None
        try:
            return self.store.read_heartbeat(HEARTBEAT_COMPONENT)
        except redis.RedisError as exc:
            log.debug("stream heartbeat not read at start: %s", exc)
            return None

    def _played_at(self, beat: dict[str, str]) -> float:
        """The wall time an earlier run played the bar of its heartbeat ``beat``: the beat's ``wall_ts``, written
        with that bar and kept by every end beat after it. A heartbeat from before ``wall_ts`` existed does not
        say: then the time Redis committed the last tick event (its stream entry id, the server's milliseconds),
        and only when there is none the wall clock now (logged: the prices read fresh until they age again)."""
        try:
            played = float(beat.get("wall_ts", "nan"))
        except ValueError:
            played = math.nan
        if math.isfinite(played):
            return played
        tick = self.store.last_tick()
        millis = tick.entry_id.partition("-")[0] if tick is not None else ""
        if millis.isdigit():
            return int(millis) / 1000.0
        log.warning("the stream heartbeat does not say when its last bar was played: the end is dated now")
        return self.clock()

    def _write_heartbeat_best_effort(self, now: float) -> None:
        try:
            self.store.write_heartbeat(HEARTBEAT_COMPONENT, self._heartbeat(now, self.version, self.stats.bars_written))
        except redis.RedisError as exc:
            log.debug("heartbeat not written: %s", exc)


def default_clock_mode(settings: Settings, feed: object, interval: float) -> ClockMode:
    """``REPLAY`` (bars from a file), ``LIVE`` (one model bar per ``model.bar_seconds`` of wall time) or
    ``COMPRESSED`` (a live feed played faster or slower than wall time: a demo clock the dashboard shows)."""
    if isinstance(feed, ReplayFeed):
        return ClockMode.REPLAY
    return ClockMode.LIVE if interval == settings.model.bar_seconds else ClockMode.COMPRESSED


# -- command line --------------------------------------------------------------------------------------------

FeedBuilder = Callable[[argparse.Namespace, Settings, Store], Feed]


def _sim_feed(args: argparse.Namespace, settings: Settings, store: Store) -> Feed:
    snap = store.read_market()
    assets = settings.universe.assets
    per_year = math.sqrt(settings.model.bars_per_year)
    stored_vols = np.sqrt(np.clip(np.diagonal(snap.cov), 0.0, None))
    vols = [
        assets[t].annual_vol / per_year if t in assets else float(stored_vols[i]) for i, t in enumerate(snap.tickers)
    ]
    prices = [
        float(p) if math.isfinite(p) and p > 0 else (assets[t].price if t in assets else 1.0)
        for t, p in zip(snap.tickers, snap.prices, strict=True)
    ]
    return SimulatedFeed.from_settings(
        settings,
        tickers=snap.tickers,
        prices=prices,
        vols_per_bar=vols,
        seed=args.seed,
        shocks=[parse_shock(s) for s in args.shock],
        regimes=[parse_regime(r) for r in args.vol_regime],
    )


FEEDS: dict[str, FeedBuilder] = {"sim": _sim_feed, "replay": _replay_feed}
"""``--feed`` name -> builder. Register a broker feed here (see engine/feeds.py)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.stream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--feed", choices=sorted(FEEDS), default="sim", help="where bars come from (default sim)")
    parser.add_argument("--file", help="CSV of bars for --feed replay (wide or long, see engine/feeds.py)")
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        help="wall seconds per one-minute model bar (default: model.bar_seconds = 60, or model.demo_clock_seconds)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=None,
        help="replay: data seconds per wall second (0: as fast as possible; 60: one hour of data per wall "
        "minute); wall wait per bar = the data's bar spacing / speed. Overrides --interval",
    )
    parser.add_argument(
        "--bar-model-bars",
        type=float,
        default=None,
        help="replay: one-minute model bars one row spans (390 for daily closes); default: derived from the "
        "file's timestamps, and a file whose spacing is not minutes, hours, days or weeks is refused without it",
    )
    parser.add_argument("--ticks", type=int, default=None, help="stop after reading N bars")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the simulated feed")
    parser.add_argument(
        "--shock",
        action="append",
        default=[],
        metavar="TICKER:RETURN@BAR",
        help="simulated shock, e.g. AAA:-0.08@100 (repeatable; * = every ticker)",
    )
    parser.add_argument(
        "--vol-regime",
        action="append",
        default=[],
        metavar="MULTIPLIER@BAR",
        help="simulated volatility regime change, e.g. 2.0@150 (repeatable)",
    )
    add_daemon_arguments(parser)
    return parser  # fmt: skip


def wait_for_store(store: Store, stop: threading.Event, what: str) -> bool:
    """Block until Redis answers and the store is seeded; False if stopped first. Raises on a wrong schema."""
    backoff = Backoff()
    while not stop.is_set():
        try:
            store.client.ping()
            store.require_schema()
            return True
        except redis.RedisError as exc:
            log.warning("%s: Redis is unreachable (%s); retrying in %.1f s", what, exc, backoff.delay)
        if backoff.wait(stop):
            break
    return False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    if args.ticks is not None and args.ticks < 0:
        print("stream: error: --ticks must be >= 0", file=sys.stderr)
        return 2
    if args.speed is not None and not (math.isfinite(args.speed) and args.speed >= 0):
        print("stream: error: --speed must be >= 0 (0: as fast as possible)", file=sys.stderr)
        return 2
    stop = stop_on_signals(log, "stopping between bars")
    try:
        settings = load_settings(args.config)
        store = Store(connect_for_daemon(settings))
        if not wait_for_store(store, stop, "stream"):
            return 0
        feed = FEEDS[args.feed](args, settings, store)
        interval = args.interval if args.speed is None else replay_interval(feed, args.speed)
        daemon = StreamDaemon(store, settings, feed, interval=interval, stop_event=stop)
        serve(daemon.metrics.registry, settings.metrics.address, settings.metrics.stream_port, "stream")
    except RiskdeskError as exc:
        print(f"stream: error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"stream: error [STORE_UNAVAILABLE]: {exc}", file=sys.stderr)
        return 2
    log.info("stream daemon pid %d: feed %s, interval %.3f s, ticks %s", os.getpid(), args.feed,
             daemon.interval, args.ticks)  # fmt: skip
    daemon.run(ticks=args.ticks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
