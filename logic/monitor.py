"""The risk monitor daemon: ``python -m logic.monitor``.

On every tick event of the stream daemon it computes each portfolio's snapshot (:mod:`logic.snapshot`), keeps it as
the latest snapshot and appends it to the portfolio's history, then hands it to the alert engine.

Per tick (issue 15): one read of every portfolio (state, positions, trading state; one script), then
:mod:`logic.batch_tick`: every book valued, its peaks, excursions and history buckets merged, its risk figures
(:mod:`logic.batch`) and snapshot built on arrays, and MULTIs (one per range of portfolios, pipelined with the
building) writing one script with the snapshots, history points and merged state, then a MULTI acknowledging the
tick and writing the heartbeat ``hb:monitor``; then the alerts in one batch (:mod:`logic.alert_batch`).
``vectorised=False`` keeps the per-portfolio reference path (one portfolio at a time, merges by three Lua scripts
each). History: ``history.raw_seconds`` at full resolution and the downsampled tiers of ``[history]``
(engine/store/history.py). VaR and CVaR by each portfolio's method. The continuous VaR backtest is fed every bar by
its own daemon (logic/backtest_runner.py: a backtest needs every bar, a snapshot only the newest); the snapshot's
``backtest`` section is its last stored one. Both paths read the tick's time after what guards the books read, so a
history point and its book agree about every capital flow a sync booked (logic/stamped_read.py).

Sharing the work: the monitors are consumers of one Redis consumer group (``monitor``) on the tick stream; each
tick goes to one of them, or (``monitor.shard_portfolios``) each live monitor snapshots its shard of every tick
(:mod:`logic.shards`). Latest wins (``monitor.latest_wins``): a monitor behind the stream snapshots only the newest
waiting tick and acknowledges the older ones (``ticks_coalesced``); peaks merge every snapshot written, so they
stay exact. State two monitors may both update is merged so that none is lost: the per-portfolio path merges in
Redis (max/min, "replace only if not older"), the vectorised one in memory while it owns the portfolio
(engine/store/tick_state.py: an owner stamp, new each write, read before the tick and checked by the write; a
portfolio touched meanwhile is redone at once, ``ticks_redone``). A tick is acknowledged once its snapshots are
written (the vectorised path: in a MULTI after its lanes', so a failure between them has the redo add a history
point, as a refresh would); a monitor that stops before that leaves it pending: on restart it processes its own
pending entries first, and entries left by a monitor that never came back are claimed by a live one after
``--claim-idle`` seconds.

When no tick arrives for ``--idle-refresh`` seconds (one monitor at a time, by a short lease) the portfolios are
snapshotted from the stored market, so the history keeps at least one point per second and
``data.market_age_seconds`` grows while the feed is silent (the stale-data rules need it).

Usage::

    python -m logic.monitor [--consumer NAME] [--ticks N] [--idle-refresh SECONDS] [--claim-idle SECONDS]
                            [--batch N] [--no-alerts] [--config FILE] [--log-level INFO]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import redis

from engine import math_logic
from engine.clocks import MarketClock, replaying, tick_time
from engine.daemon import (
    Backoff,
    add_daemon_arguments,
    configure_logging,
    connect_for_daemon,
    failure_log_level,
    stop_on_signals,
)
from engine.errors import ConfigError, RiskdeskError, StoreError
from engine.market_model import MarketModel, MarketModelCache, ModelKey, reorder
from engine.metrics import GateMetrics, MonitorMetrics, serve
from engine.records import Clock
from engine.sessions import market_calendar
from engine.settings import Settings, load_settings
from engine.store import (
    MONITOR_GROUP,
    EquityPeaks,
    Float64Array,
    MarketHeader,
    PortfolioBundle,
    Store,
    TickEvent,
    decode_float,
    decode_marks_reply,
)
from engine.store.portfolio_reader import PortfolioReader
from engine.store.slots import slot_transaction
from logic.batch import BacktestSections, PortfolioLookup, live_limits
from logic.batch_tick import VectorisedTick, paused_gc
from logic.rejections import MAX_BOOKABLE_PRICE
from logic.shards import Membership, TickCursor, newest_tick, remove_idle_consumers, shard
from logic.snapshot import MarketView, build_snapshot, history_point, open_position_pnl
from logic.stamped_read import stamped_read
from logic.valuation import Valuation, value_portfolio

log = logging.getLogger("riskdesk.monitor")

HEARTBEAT_COMPONENT = "monitor"
REFRESH_LEASE = "monitor_refresh"
DEFAULT_BATCH = 100
"""Tick events read per XREADGROUP."""
DEFAULT_CLAIM_IDLE_SECONDS = 30.0
"""A tick delivered to a monitor and not acknowledged for this long is taken over by another one."""
CLAIM_EVERY_SECONDS = 5.0
DEFAULT_IDLE_REFRESH_SECONDS = 1.0
HEARTBEAT_EVERY_SECONDS = 1.0
HOUSEKEEPING_EVERY_SECONDS = 3600.0
"""How often (and once at its first idle moment) an idle monitor drops idle consumers and old order ids."""
ALERTS_TICK_SECONDS = 0.5
"""Period of the alert engine's background work (escalation timers, repeats, pending and clear periods)."""


class AlertEvaluator(Protocol):
    """What the monitor calls once per snapshot (logic/alerts.py provides it)."""

    def evaluate(self, portfolio_id: str, snapshot: Mapping[str, Any], now: float) -> object: ...


@dataclass
class MonitorStats:
    ticks_processed: int = 0
    refreshes: int = 0
    snapshots: int = 0
    ticks_coalesced: int = 0
    """Ticks acknowledged without a snapshot of their own because a newer one was waiting (latest wins)."""
    entries_skipped: int = 0
    """Tick entries that were trimmed away or did not decode: acknowledged without a snapshot."""
    portfolio_errors: int = 0
    alert_errors: int = 0
    store_errors: int = 0
    ticks_redone: int = 0
    """Ticks aborted by a write to one of their portfolios mid-tick and redone at once (not store errors)."""
    last_version: int = -1
    last_latency_ms: float = 0.0
    """Read + compute + write of the last tick, all portfolios (alert evaluation excluded)."""
    last_alert_ms: float = 0.0
    last_tick_age_ms: float = 0.0
    """Snapshot time minus the tick's write time: how far behind the stream the monitor is."""


class Monitor:
    """Consumes tick events and writes per-portfolio snapshots (see the module docstring).

    Parameters
    ----------
    store, settings, clock:
        The store, the settings (limits, model, monitor section), epoch seconds of each snapshot.
    alert_engine:
        Object whose ``evaluate(portfolio_id, snapshot, now)`` is called once per snapshot; None: no alerts.
    consumer:
        Name in the consumer group (default ``<host>-<pid>``); a monitor restarted under the same name resumes
        its own pending ticks at once, under another name after ``claim_idle_seconds``.
    market_models:
        The process's market-model cache (:mod:`engine.market_model`), shared with the automated actions'.
    metrics:
        Prometheus metrics (engine/metrics.py); default: its own, on a fresh registry.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        clock: Clock = time.time,
        alert_engine: AlertEvaluator | None = None,
        *,
        consumer: str | None = None,
        group: str = MONITOR_GROUP,
        batch_size: int = DEFAULT_BATCH,
        claim_idle_seconds: float = DEFAULT_CLAIM_IDLE_SECONDS,
        idle_refresh_seconds: float = DEFAULT_IDLE_REFRESH_SECONDS,
        stop_event: threading.Event | None = None,
        market_models: MarketModelCache | None = None,
        metrics: MonitorMetrics | None = None,
        vectorised: bool = True,
    ) -> None:
        cfg = settings.monitor
        self.metrics = metrics or MonitorMetrics(max_portfolios=settings.metrics.max_portfolios)
        if not 0 <= cfg.day_reset_hour <= 23:
            raise ConfigError(f"monitor.day_reset_hour must be 0..23, got {cfg.day_reset_hour}")
        try:
            self.tz = ZoneInfo(cfg.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"monitor.timezone: unknown time zone {cfg.timezone!r}") from exc
        self.store = store
        self.settings = settings
        self.clock = clock
        self.calendar = market_calendar(settings)
        """Daily / weekly windows: sessions of ``market.calendar`` (engine/sessions.py)."""
        self.alert_engine = alert_engine
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.latest_wins = cfg.latest_wins
        """Skip to the newest waiting tick (``monitor.latest_wins``); off: every tick in order."""
        self.vectorised = vectorised
        """Every portfolio at once (logic/batch.py); False: one at a time (the reference path, bench baseline)."""
        self.lookup = PortfolioLookup(settings)
        self.fast = VectorisedTick(store, settings, self.lookup) if vectorised else None
        self.limits_memo: dict[Any, Any] = {}
        """Live limits last decoded per portfolio (engine/store/limits.py: re-decoded when the version moves)."""
        self.group = group
        self.batch_size = batch_size
        self.claim_idle_ms = int(claim_idle_seconds * 1000)
        self.idle_refresh_seconds = idle_refresh_seconds
        self.history = settings.history
        """Full-resolution window and downsampled tiers of the history (engine/store/history.py)."""
        self.retention_seconds = self.history.raw_seconds
        self._stop = stop_event or threading.Event()
        self.stats = MonitorStats()
        self.models = market_models or MarketModelCache(store, settings.model.bars_per_day)
        self._stressed_fallback: tuple[ModelKey, Float64Array] | None = None
        self.backtest_sections = BacktestSections()
        self._portfolio_ids: list[str] | None = None
        self.membership = (
            Membership(store, self.consumer, claim_idle_seconds, cfg.consumer_idle_limit_seconds)
            if cfg.shard_portfolios else None
        )  # fmt: skip
        """Sharing the portfolios with the other live monitors (``monitor.shard_portfolios``); None: the
        consumer group gives each tick to one monitor, which snapshots every portfolio."""
        self._live: list[str] | None = None
        self._shard_of: list[str] | None = None
        """The live monitors the last shard was computed among (kept across ticks, for the alert engine)."""
        if self.membership is not None and hasattr(alert_engine, "scope"):
            alert_engine.scope = self.alert_scope  # type: ignore[union-attr]
        self._cursor = TickCursor()
        """Where this monitor reads the tick stream when sharing the portfolios (no consumer group)."""
        self._last_snapshot_ts, self._coalescing = 0.0, 0
        self._group_ready = False
        self._check_pending = True
        self._next_claim = 0.0
        self._last_heartbeat = 0.0
        self._next_housekeeping = 0.0
        self._reported_errors: set[str] = set()

    # -- control ---------------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def process_available(self, max_ticks: int | None = None) -> int:
        """Process this consumer's pending ticks, then every new one, without waiting; returns how many."""
        done = 0
        while max_ticks is None or done < max_ticks:
            count = self.batch_size if max_ticks is None else min(self.batch_size, max_ticks - done)
            self._cursor.mark()
            entries = self._next_entries(block_ms=None, count=count)
            if not entries:
                break
            done += self._process_entries(entries)
        return done

    def run(self, max_ticks: int | None = None, block_ms: int = 1000) -> MonitorStats:
        """Process ticks until :meth:`stop` (or ``max_ticks``), surviving Redis outages (capped backoff)."""
        backoff = Backoff()
        while not self.stopping and (max_ticks is None or self.stats.ticks_processed < max_ticks):
            try:
                left = None if max_ticks is None else max_ticks - self.stats.ticks_processed
                wanted = self.batch_size if left is None else min(self.batch_size, left)
                self._cursor.mark()
                entries = self._next_entries(block_ms=block_ms, count=wanted)
                if entries:
                    self._process_entries(entries)
                else:
                    self._idle()
                backoff.reset()
            except redis.WatchError:
                self._on_conflict()
            except (redis.RedisError, StoreError) as exc:
                self._on_store_error(exc)
                if backoff.wait(self._stop):
                    break
        if self.membership is not None:
            with contextlib.suppress(redis.RedisError):
                self.membership.leave()  # a clean stop: the others take the shard on their next tick
        log.info(
            "monitor %s stopped: processed %d ticks, %d idle refreshes, %d snapshots, %d skipped entries, "
            "%d portfolio errors, %d alert errors", self.consumer, self.stats.ticks_processed,
            self.stats.refreshes, self.stats.snapshots, self.stats.entries_skipped,
            self.stats.portfolio_errors, self.stats.alert_errors,
        )  # fmt: skip
        return self.stats

    def _on_conflict(self) -> None:
        """Another writer touched a portfolio mid-tick (logic/batch_tick.py): no store failure; redo it now."""
        self.stats.ticks_redone += 1
        self._check_pending = True  # the tick was left pending: read it again first
        self._cursor.rewind()  # sharing the portfolios (no group to leave it pending): read it again

    def _on_store_error(self, exc: Exception) -> None:
        self.stats.store_errors += 1
        self.metrics.redis_errors.labels("monitor").inc()
        # whatever was read but not acknowledged is pending (sharing: the cursor goes back); caches may be stale
        self._check_pending = True
        self._cursor.rewind()
        self._group_ready = False
        self.models.clear()
        log.log(failure_log_level(self.stats.store_errors), "store unavailable (%s: %s); retrying with backoff",
                type(exc).__name__, exc)  # fmt: skip

    # -- reading the tick stream -----------------------------------------------------------------------------
    def _ensure_group(self) -> None:
        if not self._group_ready:
            self.store.ensure_tick_group(self.group)
            self._group_ready = True

    def _next_entries(self, block_ms: int | None, count: int) -> list[tuple[str, TickEvent | None]]:
        if self.membership is not None:  # sharing the portfolios: every monitor reads every tick, no group
            return self._cursor.read(self.store, count, block_ms)
        self._ensure_group()
        try:
            if self._check_pending:
                entries = self.store.read_tick_group(self.group, self.consumer, pending=True, count=count)
                if entries:
                    return entries
                self._check_pending = False
            if time.monotonic() >= self._next_claim:
                self._next_claim = time.monotonic() + CLAIM_EVERY_SECONDS
                claimed = self.store.claim_stale_ticks(self.group, self.consumer, self.claim_idle_ms, count)
                if claimed:
                    log.info("claimed %d tick(s) left pending by another monitor", len(claimed))
                    self._check_pending = True  # any further claimed entries are now our pending ones
                    return claimed
            return self.store.read_tick_group(self.group, self.consumer, pending=False, count=count, block_ms=block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):  # the store was wiped and re-seeded: create the group again
                self._group_ready = False
                return []
            raise

    def _process_entries(self, entries: list[tuple[str, TickEvent | None]]) -> int:
        with paused_gc():  # until the tick's snapshots are dropped (logic/batch_tick.py: not over all it holds)
            if self.latest_wins:
                return self._process_newest(entries)
            done = 0
            for entry_id, event in entries:
                if self.stopping and done:
                    break
                if event is None:
                    self._skip_unreadable(entry_id)
                    self._cursor.passed(entry_id)  # counted: a redo of a later tick does not skip it again
                    continue
                self.process_tick(entry_id, event)
                done += 1
            return done

    def _skip_unreadable(self, entry_id: str) -> None:
        self.stats.entries_skipped += 1
        log.warning("tick entry %s is gone or unreadable: acknowledged without a snapshot", entry_id)
        if self.membership is None:
            self.store.ack_ticks(self.group, [entry_id])

    def _process_newest(self, entries: list[tuple[str, TickEvent | None]]) -> int:
        """Latest wins (module docstring): after a full read, drain what waits; snapshot the newest tick only."""
        if len(entries) >= self.batch_size and (self.membership is not None or not self._check_pending):
            while True:  # bounded by the stream's MAXLEN; at most one batch and the newest tick pending
                entries = self._drop_superseded(entries)
                more = self._next_entries(block_ms=None, count=self.batch_size)
                entries = entries + more
                if len(more) < self.batch_size:
                    break
        newest_id, newest, older, unreadable = newest_tick(entries)
        for entry_id in unreadable:
            self._skip_unreadable(entry_id)
        if newest_id is None or newest is None:
            return 0
        self.process_tick(newest_id, newest, coalesced=older)
        return 1

    def _drop_superseded(self, entries: list[tuple[str, TickEvent | None]]) -> list[tuple[str, TickEvent | None]]:
        """Draining: acknowledge and count the ticks older than the newest read so far (module docstring)."""
        newest_id, newest, older, unreadable = newest_tick(entries)
        for entry_id in unreadable:
            self._skip_unreadable(entry_id)
        if self.membership is None:
            self.store.ack_ticks(self.group, older)
        elif older:  # no group to acknowledge them: a redo reads again from the newest (they count once)
            self._cursor.passed(older[-1])
        self.stats.ticks_coalesced += len(older)
        self.metrics.ticks_coalesced.inc(len(older))
        return [] if newest_id is None else [(newest_id, newest)]

    # -- one tick --------------------------------------------------------------------------------------------
    def process_tick(
        self, entry_id: str | None, event: TickEvent, coalesced: Sequence[str] = ()
    ) -> dict[str, dict[str, Any]]:
        """Snapshot every portfolio at the tick's prices; acknowledge ``entry_id`` (and the older ticks it
        stands for, ``coalesced``) with the writes."""
        started = time.perf_counter()
        self._live = None  # the membership is read again once per tick
        # a replay's tick is dated by its bar (engine/clocks.py); read after the guard (logic/stamped_read.py)
        stamp = functools.partial(tick_time, self.clock, event.ts)
        if event.reset and replaying(self.clock):  # a replay restarted: so do its drawdowns (a reload keeps them)
            self.store.restart_peaks(self._shard_ids(self._portfolio_ids or self.store.portfolio_ids()))
        ts = np.full(len(event.tickers), event.ts)
        header = MarketHeader(event.version, event.ts, event.tickers, event.prices, ts)
        cov, stressed, model = self._matrices_for(event.version, event.ts, event.tickers)
        view = MarketView(header, cov, stressed, model, printed_at=event.bar_ts)
        acks = [*coalesced, entry_id] if entry_id is not None else list(coalesced)
        if self.membership is not None:  # no consumer group: nothing to acknowledge
            acks = []
        self._coalescing = len(coalesced)  # counted in the heartbeat written with the snapshots
        try:
            snapshots, now = self._snapshot_all(view, stamp, ack=acks, tick=True, started=started)
        finally:
            self._coalescing = 0
        self._cursor.passed(entry_id)  # written: a later tick's conflict is read again from after it
        self.stats.ticks_processed += 1
        self.stats.ticks_coalesced += len(coalesced)
        self.metrics.ticks(1)
        self.metrics.ticks_coalesced.inc(len(coalesced))
        self.stats.last_tick_age_ms = max(0.0, (now - event.ts) * 1000.0)
        self._evaluate_alerts(snapshots, now)
        return snapshots

    def refresh(self) -> dict[str, dict[str, Any]]:
        """Snapshot every portfolio from the stored market (no tick): see the module docstring."""
        started = time.perf_counter()
        self._live = None
        header = self.store.read_market_header()
        cov, stressed, model = self._matrices_for(header.version, header.ts, header.tickers)
        view = MarketView(header, cov, stressed, model)
        snapshots, now = self._snapshot_all(view, self.clock, ack=[], tick=False, started=started)
        self.stats.refreshes += 1
        self._evaluate_alerts(snapshots, now)
        return snapshots

    def _evaluate_alerts(self, snapshots: Mapping[str, dict[str, Any]], now: float) -> None:
        started = time.perf_counter()
        many = getattr(self.alert_engine, "evaluate_many", None)
        if callable(many) and snapshots:
            try:
                many(snapshots, now)  # the whole tick in one batch (logic/alert_batch.py)
                self.stats.last_alert_ms = (time.perf_counter() - started) * 1000.0
                return
            except Exception:  # one portfolio's failure: evaluate them one by one, each failing on its own
                log.debug("batched alert evaluation failed: one portfolio at a time", exc_info=True)
        for portfolio_id, snapshot in snapshots.items():
            try:
                if self.alert_engine is not None:
                    self.alert_engine.evaluate(portfolio_id, snapshot, now)
            except Exception:  # one bad rule or channel must not stop the monitoring of every portfolio
                self.stats.alert_errors += 1
                log.exception("alert evaluation failed for portfolio %s", portfolio_id)
        self.stats.last_alert_ms = (time.perf_counter() - started) * 1000.0

    def _matrices_for(
        self, version: int, ts: float, tickers: tuple[str, ...]
    ) -> tuple[Float64Array, Float64Array, MarketModel]:
        """Covariance and stressed matrices aligned with ``tickers``, and the model they come from (its window
        of standardized returns is read when a method needs it), from the shared market-model cache.

        Reloaded for a newer version, or for prices written after the cached matrix whatever their version
        (the store was re-seeded and versions restarted); an older tick (a lagging monitor) uses the cached,
        newer matrix.
        """
        model = self.models.at_least(version, ts)
        if not set(tickers) <= model.index.keys():
            model = self.models.get()
        if model.finite_error is not None:
            raise model.finite_error
        stressed = self._stressed_for(model)
        if tickers == model.tickers:
            return model.cov, stressed, model
        order = reorder(model.tickers, tickers)
        if order is None:
            missing = [t for t in tickers if t not in model.index]
            raise StoreError(f"tick names tickers {missing} the market snapshot does not hold")
        return model.aligned(tickers), stressed[np.ix_(order, order)], model

    def _stressed_for(self, model: MarketModel) -> Float64Array:
        """The stored stressed matrix in ``model``'s ticker order; rebuilt from the EWMA one (once per market
        snapshot) when the stored one is unusable or does not cover the universe."""
        try:
            return self.models.stressed(model).cov
        except StoreError as exc:
            self._report_once("stressed", f"stored stressed matrix unusable ({exc}): rebuilt from the EWMA one")
        fallback = self._stressed_fallback
        if fallback is None or fallback[0] != model.key:
            cfg = self.settings.model
            rebuilt = math_logic.build_stressed_covariance(
                model.cov, cfg.stress_vol_multiplier, cfg.stress_correlation_floor, validate=False
            )
            fallback = self._stressed_fallback = (model.key, rebuilt)
        return fallback[1]

    def _report_once(self, key: str, message: str) -> None:
        if key not in self._reported_errors:
            self._reported_errors.add(key)
            log.warning(message)

    def _snapshot_all(
        self, market: MarketView, clock: Clock, *, ack: list[str], tick: bool, started: float
    ) -> tuple[dict[str, dict[str, Any]], float]:
        """Value, merge peaks and marks, build and write the snapshots of every portfolio (one MULTI); returns
        them and their time, ``clock`` read after what guards the books read (logic/stamped_read.py)."""
        if self.fast is not None:
            finish = functools.partial(self._commit_tick, market=market, ack=ack, tick=tick, started=started)
            return self.fast.snapshot_all(self, self._read_bundles, market, clock, finish=finish, tick=tick)
        tx = slot_transaction(self.store.client)  # one MULTI; on a Redis Cluster one per slot (engine/store/slots.py)
        try:
            now, bundles = stamped_read(tx, clock, self._read_bundles, lambda: self._portfolio_ids)
            return self._snapshot_read(tx, market, now, bundles, ack, tick, started), now
        finally:
            tx.reset()

    def _snapshot_read(self, tx: Any, market: MarketView, now: float, bundles: Mapping[str, PortfolioBundle],
                       ack: list[str], tick: bool, started: float) -> dict[str, dict[str, Any]]:  # fmt: skip
        (day_id, week_id), market_open = self.calendar.period_ids(now), self.calendar.closes(now, market.printed_at)
        valued: list[tuple[PortfolioBundle, Valuation]] = []
        merges = self.store.client.pipeline(transaction=False)
        clean = np.nan_to_num(market.header.prices, nan=0.0)  # once for every portfolio
        for pid, bundle in bundles.items():
            if bundle.state is None:
                self._portfolio_error(pid, f"cannot read portfolio: {bundle.error}")
                continue
            valuation = value_portfolio(bundle.state, market.header, market.index, clean)
            absurd = (valuation.qty != 0) & (np.abs(np.nan_to_num(valuation.prices)) > MAX_BOOKABLE_PRICE)
            if absurd.any():
                names = ", ".join(t for t, bad in zip(valuation.tickers, absurd, strict=True) if bad)
                self._portfolio_error(pid, f"price of held {names} above {MAX_BOOKABLE_PRICE:g}: not usable")
                continue
            with np.errstate(over="ignore", invalid="ignore"):  # an absurd price: refused just below
                equity = valuation.equity
            if not math.isfinite(equity):
                self._portfolio_error(pid, "equity is not finite")
                continue
            self.store.update_peaks(pid, valuation.equity, day_id, week_id, merges, market_open=market_open,
                                    complete=valuation.complete)  # fmt: skip
            self.store.update_marks(pid, open_position_pnl(valuation), merges)
            valued.append((bundle, valuation))
        replies = merges.execute(raise_on_error=False) if valued else []
        return self._write_snapshots(tx, market, now, valued, replies, ack, tick, started)

    def _read_bundles(self) -> dict[str, PortfolioBundle]:
        """This monitor's portfolios (its shard when sharing them), read together (one MULTI)."""
        registry: list[list[str]] = []

        def select(ids: list[str]) -> list[str]:
            registry.append(ids)
            return self._shard_ids(ids)

        reader = self.__dict__.setdefault("portfolio_reader", PortfolioReader()) if self.vectorised else None
        bundles = self.store.read_portfolio_bundles(self._portfolio_ids, select=select, reader=reader)
        self._portfolio_ids = registry[-1] if registry else sorted(bundles)
        return bundles

    def _write_snapshots(
        self,
        tx: Any,
        market: MarketView,
        now: float,
        valued: list[tuple[PortfolioBundle, Valuation]],
        replies: list[Any],
        ack: list[str],
        tick: bool,
        started: float,
    ) -> dict[str, dict[str, Any]]:
        pids = [bundle.portfolio_id for bundle, _ in valued]
        methods = [self.lookup.var_method_for(pid) for pid in pids]
        sections = dict(zip(pids, self.backtest_sections.read(self.store, pids, methods), strict=True))
        limits = live_limits(self.store, pids, self.lookup, self.limits_memo, batched=False)
        snapshots: dict[str, dict[str, Any]] = {}
        for k, (bundle, valuation) in enumerate(valued):
            pid = bundle.portfolio_id
            try:
                peaks_raw, marks_raw = replies[2 * k], replies[2 * k + 1]
                for reply in (peaks_raw, marks_raw):
                    if isinstance(reply, Exception):
                        raise StoreError(f"peak/mark merge failed: {reply}")
                assert bundle.state is not None
                method = self.lookup.var_method_for(pid)
                live = limits[pid]
                if isinstance(live, Exception):
                    raise live
                with np.errstate(over="raise"):  # absurd finite prices overflow: no snapshot
                    snapshots[pid] = build_snapshot(
                        method=method, backtest=sections[pid], portfolio_id=pid,
                        state=bundle.state, trading_state=bundle.trading_state, valuation=valuation, market=market,
                        limits=live, model=self.settings.model,
                        peaks=EquityPeaks.from_reply(peaks_raw, self.store.peaks_key(pid)),
                        marks=decode_marks_reply(marks_raw, pid), now=now,
                    )  # fmt: skip
            except (StoreError, ValueError) as exc:
                self._portfolio_error(pid, str(exc))
            except ArithmeticError as exc:  # FloatingPointError from the errstate above
                self._portfolio_error(pid, f"risk figures are not finite (an absurd price or variance): {exc}")

        tx.multi()
        for pid, snapshot in snapshots.items():
            self.store.record_snapshot(
                pid, snapshot, history_point(snapshot), ts=now, retention_seconds=self.retention_seconds,
                max_points=self.history.raw_max_points, pipe=tx, tiers=self.history.tiers,
            )  # fmt: skip
        return self._commit_tick(tx, snapshots, market=market, now=now, ack=ack, tick=tick, started=started)

    def _commit_tick(
        self, tx: Any, snapshots: dict[str, dict[str, Any]], *, market: MarketView, now: float,
        ack: list[str], tick: bool, started: float,
    ) -> dict[str, dict[str, Any]]:  # fmt: skip
        """Acknowledge the tick and write the heartbeat in ``tx`` (any writes queued in it), EXEC and count.

        The heartbeat goes in the tick's own MULTI, so its ``last_latency_ms`` is the previous tick's, measured to
        the return of its EXEC (as the stream daemon's); the tick's own is counted once its EXEC returned."""
        self.store.ack_ticks(self.group, ack, tx)
        heartbeat = self._heartbeat(
            now, market, len(snapshots), self.stats.last_latency_ms, ticks=self.stats.ticks_processed + tick
        )
        self.store.write_heartbeat(HEARTBEAT_COMPONENT, heartbeat, tx)
        tx.execute()
        latency_ms = (time.perf_counter() - started) * 1000.0
        self._last_heartbeat = time.monotonic()
        self._last_snapshot_ts = now
        self.stats.snapshots += len(snapshots)
        self.stats.last_version = market.header.version
        self.stats.last_latency_ms = latency_ms
        self.metrics.snapshot_duration.observe(latency_ms / 1000.0)
        self.metrics.snapshots(snapshots, present=self._shard_ids(self._portfolio_ids or sorted(snapshots)))
        return snapshots

    def _shard_ids(self, portfolio_ids: list[str]) -> list[str]:
        """This monitor's portfolios: all of them, or its shard among the live monitors (logic/shards.py)."""
        if self.membership is None:
            return list(portfolio_ids)
        if self._live is None:
            self._live = self.membership.beat()
        self._shard_of = self._live
        return shard(portfolio_ids, self._live, self.consumer)

    def alert_scope(self, portfolio_ids: list[str]) -> list[str]:
        """The portfolios whose alert timers this monitor ticks (the alert engine's ``scope``, on its own
        thread): its shard among the live monitors its last tick or idle beat found (so with no tick coming, a
        dead monitor's portfolios still get their stale-data alerts from the others); all before either."""
        live = self._shard_of
        return list(portfolio_ids) if live is None else shard(portfolio_ids, live, self.consumer)

    def _portfolio_error(self, pid: str, message: str) -> None:
        self.stats.portfolio_errors += 1
        self._report_once(f"{pid}:{message}", f"portfolio {pid}: no snapshot: {message}")

    def _heartbeat(
        self, now: float, market: MarketView | None, portfolios: int, latency_ms: float, *, ticks: int
    ) -> dict[str, object]:
        fields: dict[str, object] = {
            "ts": now,
            "pid": os.getpid(),
            "consumer": self.consumer,
            "ticks_processed": ticks,
            "ticks_coalesced": self.stats.ticks_coalesced + self._coalescing,
            "ticks_redone": self.stats.ticks_redone,
            "bars_rejected": self.stats.entries_skipped,
            "refreshes": self.stats.refreshes,
            "portfolios": portfolios,
            "portfolio_errors": self.stats.portfolio_errors,
            "alert_errors": self.stats.alert_errors,
            "last_latency_ms": round(latency_ms, 3),
            "last_alert_ms": round(self.stats.last_alert_ms, 3),
        }
        if market is not None:
            fields["version"] = market.header.version
            fields["snapshot_ts"] = now
            fields["tick_age_ms"] = round(max(0.0, (now - market.header.ts) * 1000.0), 3)
        return fields

    # -- housekeeping ----------------------------------------------------------------------------------------
    def remove_idle_consumers(self) -> list[str]:
        """Remove the group's consumers idle past ``monitor.consumer_idle_limit_seconds`` (monitors that are
        gone: a restarted one gets a new ``<host>-<pid>`` name); never this one, never one holding pending
        ticks (they are claimed first by :meth:`_next_entries`, then it goes). Returns the names removed."""
        limit_ms = int(self.settings.monitor.consumer_idle_limit_seconds * 1000)
        removed = remove_idle_consumers(self.store, self.group, self.consumer, limit_ms)
        if removed:
            log.info("removed idle consumers from group %s: %s", self.group, ", ".join(removed))
        return removed

    def prune_order_ids(self, now: float | None = None) -> int:
        """Delete idempotency records older than each portfolio's ``limits.order_id_retention_days``."""
        now = self.clock() if now is None else now
        removed = 0
        for pid in self.store.portfolio_ids():
            retention = self.settings.limits_for(pid).order_id_retention_days * 86_400.0
            removed += self.store.prune_order_ids(pid, now - retention)
        return removed

    # -- idle ------------------------------------------------------------------------------------------------
    def _idle(self) -> None:
        """No tick: refresh the snapshots when nobody did for ``idle_refresh_seconds``; keep the heartbeat."""
        if time.monotonic() >= self._next_housekeeping:
            self._next_housekeeping = time.monotonic() + HOUSEKEEPING_EVERY_SECONDS
            self.remove_idle_consumers()
            self.prune_order_ids()
        if self.idle_refresh_seconds > 0:
            hb = self.store.read_heartbeat(HEARTBEAT_COMPONENT) or {}
            try:
                last = decode_float(hb.get("snapshot_ts", "0"), key="hb:monitor.snapshot_ts")
            except StoreError:
                last = 0.0
            lease = REFRESH_LEASE
            if self.membership is not None:  # each monitor refreshes its own shard, on its own lease
                last, lease = self._last_snapshot_ts, f"{REFRESH_LEASE}:{self.consumer}"
            if self.clock() - last >= self.idle_refresh_seconds and self.store.acquire_lock(
                lease, self.consumer, self.idle_refresh_seconds * 0.9
            ):
                try:
                    self.refresh()
                except StoreError as exc:  # not seeded yet, or wiped: nothing to snapshot
                    self._report_once(f"refresh:{type(exc).__name__}", f"idle refresh skipped: {exc}")
                else:
                    return
        if time.monotonic() - self._last_heartbeat >= HEARTBEAT_EVERY_SECONDS:
            if self.membership is not None:  # an idle monitor still holds its shard, and ticks its alert timers
                self._shard_of = self.membership.beat()
            heartbeat = self._heartbeat(
                self.clock(), None, 0, self.stats.last_latency_ms, ticks=self.stats.ticks_processed
            )
            self.store.write_heartbeat(HEARTBEAT_COMPONENT, heartbeat)
            self._last_heartbeat = time.monotonic()


# -- command line --------------------------------------------------------------------------------------------


def make_alert_engine(
    store: Store,
    settings: Settings,
    clock: Clock,
    market_models: MarketModelCache | None = None,
    gate_metrics: GateMetrics | None = None,
) -> AlertEvaluator | None:
    """logic/alerts.py's engine from the settings (rules, escalation, recipients), on the monitor's store and
    clock; its timers run on its own thread (the monitor calls ``evaluate`` per snapshot), ``python -m
    notifications`` sends what it queues, its automated actions count their decisions in ``gate_metrics``."""
    from logic.alerts import build_alert_engine  # lazily: only a monitor that evaluates alerts needs it

    engine = build_alert_engine(store, settings, clock, market_models=market_models, gate_metrics=gate_metrics)
    engine.start_background(ALERTS_TICK_SECONDS)
    return engine


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m logic.monitor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--consumer", help="name in the consumer group (default: <host>-<pid>)")
    parser.add_argument("--ticks", type=int, default=None, help="stop after processing N ticks")
    parser.add_argument(
        "--idle-refresh",
        type=float,
        default=DEFAULT_IDLE_REFRESH_SECONDS,
        metavar="SECONDS",
        help="snapshot from the stored market after this long without a tick (0: never)",
    )
    parser.add_argument(
        "--claim-idle",
        type=float,
        default=DEFAULT_CLAIM_IDLE_SECONDS,
        metavar="SECONDS",
        help="take over ticks another monitor left unacknowledged this long",
    )
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="tick events read at a time")
    parser.add_argument("--no-alerts", action="store_true", help="snapshots only, no alert rules")
    add_daemon_arguments(parser)
    return parser  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    stop = stop_on_signals(log)
    try:
        settings = load_settings(args.config)
        store = Store(connect_for_daemon(settings))
        models = MarketModelCache(store, settings.model.bars_per_day)  # one per process: monitor and actions
        clock = MarketClock(store)  # the wall clock live, the bars' time in a replay
        metrics = MonitorMetrics(max_portfolios=settings.metrics.max_portfolios)
        alert_engine = None if args.no_alerts else make_alert_engine(store, settings, clock, models, metrics.gate)
        monitor = Monitor(
            store, settings, clock, alert_engine=alert_engine,
            consumer=args.consumer, batch_size=max(1, args.batch), claim_idle_seconds=args.claim_idle,
            idle_refresh_seconds=args.idle_refresh, stop_event=stop, market_models=models, metrics=metrics,
        )  # fmt: skip
        metrics.watch_alerts(lambda: [a for p in store.portfolio_ids() for a in store.read_active_alerts(p).values()])
        serve(metrics.registry, settings.metrics.address, settings.metrics.monitor_port, "monitor")
        gc.freeze()  # what start-up built lives as long as the process: no collector pass walks it again
    except RiskdeskError as exc:
        print(f"monitor: error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    log.info("monitor %s (pid %d) in group %s", monitor.consumer, os.getpid(), monitor.group)
    try:
        stats = monitor.run(max_ticks=args.ticks)
    finally:
        if callable(close := getattr(alert_engine, "close", None)):
            close()
    print(f"monitor {monitor.consumer}: processed {stats.ticks_processed} ticks", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
