"""The backtest runner daemon: ``python -m logic.backtest_runner``.

It feeds every tick event (a market bar) of the stream to every portfolio's continuous VaR backtest
(:mod:`logic.backtest_monitor`), in order, without skipping one. The monitor (logic/monitor.py) snapshots only
the newest tick when it falls behind (latest wins); a backtest must see every bar at its own spacing, or its
returns and horizons would depend on how busy the monitor was. So the backtests are fed here, apart from the
snapshots: the monitor's tick carries no backtest work, and the snapshot's ``backtest`` section is the runner's
last stored one (``backtest.market_version`` says of which bar).

Per bar: read every portfolio's book (:class:`~engine.store.portfolio_reader.PortfolioReader`: what changed; the book
as stored when the bar is fed: the runner is normally within a bar of the market, and after a restart it feeds its
backlog with the current books, each forecast and its P&L still of the same positions) and the model bars a bar of
the feed spans (the stream daemon's heartbeat: :func:`logic.backtest_monitor.feed_bar_model_bars`, which sets the
limit's horizon in bars), WATCH their backtests, read the stored markers, feed the bar to all of them at once
(:func:`logic.backtest.step_many`), then one MULTI writes every backtest with the bar's acknowledgement and the
heartbeat ``hb:backtest``, so a bar is counted exactly once. A conflict (another runner wrote a backtest meanwhile)
leaves the bar pending; it is redone from the store, and a backtest already fed with it is not fed again (its
version marker). The runners are consumers of one consumer group (:data:`BACKTEST_GROUP`); only the holder of a
short lease works (extended before every bar: a runner that lost it stops in the middle of its batch), so bars are
fed in order; a runner that stops leaves its bar pending, and the next holder claims it once the lease
(``--claim-idle`` seconds) has expired, before any newer bar, however long it has been pending (the lease, not the
bar's idle time, says that its runner stopped). A bar trimmed from the stream before it was fed is counted
(``bars_lost``) and the next one spans the gap.

Usage::

    python -m logic.backtest_runner [--consumer NAME] [--bars N] [--claim-idle SECONDS] [--batch N] [--nice N]
                                    [--config FILE] [--log-level INFO]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import redis

from engine.clocks import MarketClock, tick_time
from engine.daemon import (
    Backoff,
    add_daemon_arguments,
    configure_logging,
    connect_for_daemon,
    failure_log_level,
    stop_on_signals,
)
from engine.errors import RiskdeskError, StoreError
from engine.metrics import BacktestMetrics, serve
from engine.records import Clock
from engine.settings import Settings, load_settings
from engine.store import BACKTEST_GROUP, PortfolioBundle, Store, TickEvent
from engine.store.portfolio_reader import PortfolioReader
from engine.store.slots import slot_transaction
from logic.backtest_monitor import BacktestBooks, Fed, feed_bar_model_bars
from logic.batch import read_backtest_markers
from logic.batch_book import BookColumns

log = logging.getLogger("riskdesk.backtest_runner")

HEARTBEAT_COMPONENT = "backtest"
LEASE = "backtest-runner"
"""The short lease only one runner holds at a time (bars are fed in order)."""
NICENESS = 10
"""What the daemon adds to its CPU niceness: on a machine it shares with the monitor (and Redis), the snapshots of
a tick get the cores first and the backtests (model validation, not live risk) the cycles left (make bench:
bench_scale.py)."""
IDLE_HEARTBEAT_SECONDS = 1.0
"""With no bar to feed, the heartbeat is still written this often (the System page shows the runner alive)."""


@dataclass
class RunnerStats:
    bars_fed: int = 0
    """Bars processed (fed to every backtest that takes them) and acknowledged."""
    bars_lost: int = 0
    """Entries gone from the stream (trimmed) or unreadable before they were fed."""
    conflicts: int = 0
    bar_errors: int = 0
    """Bars a backtest refused (bad input, a stored backtest that does not decode; the others took them):
    acknowledged, reported."""
    store_errors: int = 0
    last_version: int = 0
    last_latency_ms: float = 0.0


class BacktestRunner:
    """Feeds every bar to every portfolio's backtest (module docstring)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        consumer: str | None = None,
        group: str = BACKTEST_GROUP,
        batch_size: int = 100,
        claim_idle_seconds: float = 5.0,
        clock: Clock = time.time,
        stop_event: threading.Event | None = None,
        metrics: BacktestMetrics | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.group = group
        self.batch_size = batch_size
        self.claim_idle_seconds = claim_idle_seconds
        self.clock = clock
        self.books = BacktestBooks(store, settings)
        self.stats = RunnerStats()
        self.metrics = metrics or BacktestMetrics()
        self._stop = stop_event or threading.Event()
        self._reader = PortfolioReader()
        self._columns = BookColumns()
        self._portfolio_ids: list[str] | None = None
        self._group_ready = False
        self._check_pending = True
        self._last_heartbeat = 0.0
        self._refused: set[str] = set()
        """Portfolios whose backtest refused a bar (reported once)."""
        self._refusing: list[str] = []
        """Those that refused the bar being fed (the bar counts in ``bar_errors``)."""

    # -- control ---------------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def process_available(self, max_bars: int | None = None) -> int:
        """Feed this consumer's pending bars, then every new one, without waiting; returns how many were fed.
        Does nothing (returns 0) while another runner holds the lease."""
        done = 0
        while (max_bars is None or done < max_bars) and self._hold_lease():
            count = self.batch_size if max_bars is None else min(self.batch_size, max_bars - done)
            entries = self._next_entries(block_ms=None, count=count)
            if not entries:
                break
            done += self._process_entries(entries)
        return done

    def run(self, max_bars: int | None = None, block_ms: int = 1000) -> RunnerStats:
        """Feed bars until :meth:`stop` (or ``max_bars``), surviving Redis outages (capped backoff)."""
        backoff = Backoff()
        while not self.stopping and (max_bars is None or self.stats.bars_fed < max_bars):
            try:
                if not self._hold_lease():  # another runner feeds the bars: stand by
                    self._stop.wait(min(1.0, self.claim_idle_seconds / 2))
                    continue
                wanted = self.batch_size if max_bars is None else min(self.batch_size, max_bars - self.stats.bars_fed)
                entries = self._next_entries(block_ms=block_ms, count=wanted)
                if entries:
                    self._process_entries(entries)
                elif time.monotonic() - self._last_heartbeat >= IDLE_HEARTBEAT_SECONDS:
                    self._idle_heartbeat()
                backoff.reset()
            except (redis.RedisError, StoreError) as exc:
                self.stats.store_errors += 1
                self.metrics.redis_errors.labels("backtest").inc()
                self._check_pending, self._group_ready = True, False
                self.books.discard()
                log.log(failure_log_level(self.stats.store_errors), "store unavailable (%s: %s); retrying with "
                        "backoff", type(exc).__name__, exc)  # fmt: skip
                if backoff.wait(self._stop):
                    break
        with contextlib.suppress(redis.RedisError):
            self.store.release_lease(LEASE, self.consumer)  # a clean stop: a standby takes over at once
        log.info(
            "backtest runner %s stopped: %d bars fed, %d lost, %d conflicts, %d bar errors",
            self.consumer, self.stats.bars_fed, self.stats.bars_lost, self.stats.conflicts, self.stats.bar_errors,
        )  # fmt: skip
        return self.stats

    def _hold_lease(self) -> bool:
        """Take or extend the lease; a runner that takes it over reads its own pending bars first."""
        held = self.store.hold_lease(LEASE, self.consumer, max(1.0, self.claim_idle_seconds))
        if not held:
            self._check_pending = True
        return held

    # -- reading the tick stream -----------------------------------------------------------------------------
    def _next_entries(self, block_ms: int | None, count: int) -> list[tuple[str, TickEvent | None]]:
        if not self._group_ready:
            self.store.ensure_tick_group(self.group)
            self._group_ready = True
        try:
            if self._check_pending:
                entries = self.store.read_tick_group(self.group, self.consumer, pending=True, count=count)
                if entries:
                    return entries
                self._check_pending = False
                # bars another runner received and did not feed come before any new one. Only the lease holder
                # gets here, so whoever received them has lost the lease: they are claimed however briefly they
                # have been pending (with a minimum idle time, bars received shortly before the lease expired
                # would still be waiting while newer ones were fed, and then be skipped as older than the marker)
                claimed = self.store.claim_stale_ticks(self.group, self.consumer, 0, count)
                if claimed:
                    log.info("claimed %d bar(s) left pending by another runner", len(claimed))
                    self._check_pending = True
                    return sorted(claimed, key=lambda e: _entry_order(e[0]))
            return self.store.read_tick_group(self.group, self.consumer, pending=False, count=count, block_ms=block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):  # the store was wiped and re-seeded: create the group again
                self._group_ready = False
                return []
            raise

    def _process_entries(self, entries: Sequence[tuple[str, TickEvent | None]]) -> int:
        done = 0
        for k, (entry_id, event) in enumerate(entries):
            if self.stopping and done:
                break
            if k and not self._hold_lease():  # a batch outlived the lease: the new holder claims the rest
                break
            if event is None:
                self.stats.bars_lost += 1
                self.metrics.bars_lost.inc()
                log.warning("tick entry %s is gone or unreadable: no backtest bar", entry_id)
                self.store.ack_ticks(self.group, [entry_id])
                continue
            try:
                self.process_bar(entry_id, event)
            except redis.WatchError:
                self.stats.conflicts += 1
                self.metrics.conflicts.inc()
                self._check_pending = True  # redone from the store: the bar is still pending
                break
            done += 1
        return done

    # -- one bar ---------------------------------------------------------------------------------------------
    def process_bar(self, entry_id: str | None, event: TickEvent) -> dict[str, Fed]:
        """Feed ``event`` to every portfolio's backtest and write them with the acknowledgement of ``entry_id``
        (one MULTI); returns what was fed. Raises :class:`redis.WatchError` when another runner wrote one of the
        backtests meanwhile (nothing written, nothing kept: redo it)."""
        started = time.perf_counter()
        self._refusing = []
        bundles = self.store.read_portfolio_bundles(self._portfolio_ids, reader=self._reader)
        self._portfolio_ids = sorted(bundles)
        books = self._books(bundles, event)
        bar_model_bars = feed_bar_model_bars(self.store)
        tx = slot_transaction(self.store.client)
        try:
            if books:
                tx.watch(*(self.store.backtest_key(pid) for pid in books))
            fed: dict[str, Fed] = {}
            try:
                with np.errstate(over="raise"):
                    markers = read_backtest_markers(self.store, list(books))
                    fed = self.books.feed(event, books, None, markers, bar_model_bars)
                for pid, error in self.books.unreadable.items():  # left as stored; the others were fed
                    self._refuse(pid, event, error)
            except (ValueError, ArithmeticError, RiskdeskError):  # a backtest refuses the bar: the others take it
                fed = self._feed_each(event, books, bar_model_bars)
            if self._refusing:
                self.stats.bar_errors += 1
                self.metrics.bar_errors.inc()
            tx.multi()
            self.books.write(fed, tx)
            if entry_id is not None:
                self.store.ack_ticks(self.group, [entry_id], tx)
            # the previous bar's latency, to its EXEC's return (this bar's heartbeat is in this bar's MULTI)
            heartbeat = self._heartbeat(event, len(fed), self.stats.last_latency_ms)
            self.store.write_heartbeat(HEARTBEAT_COMPONENT, heartbeat, tx)
            tx.execute()
            latency_ms = (time.perf_counter() - started) * 1000.0
            self._last_heartbeat = time.monotonic()
        except redis.WatchError:
            self.books.discard()
            raise
        finally:
            tx.reset()
        self.books.commit(fed)
        self.stats.bars_fed += 1
        self.stats.last_version = int(event.version)
        self.stats.last_latency_ms = latency_ms
        self.metrics.bars_fed.inc()
        self.metrics.market_version.set(int(event.version))
        self.metrics.bar_duration.observe(latency_ms / 1000.0)
        return fed

    def _feed_each(self, event: TickEvent, books: Mapping[str, np.ndarray], bar_model_bars: float) -> dict[str, Fed]:
        """The bar fed to each backtest alone (reloaded from the store), leaving out those that refuse it (a stored
        backtest that does not decode, a bar it cannot take): one portfolio's bad state stops only its own
        backtest, stored as it is."""
        self.books.discard()  # what the failed feed changed in memory
        fed: dict[str, Fed] = {}
        for pid, qty in books.items():
            try:
                with np.errstate(over="raise"):
                    marker = self.store.read_backtest_marker(pid)
                    fed.update(self.books.feed(event, {pid: qty}, None, {pid: marker}, bar_model_bars))
            except (ValueError, ArithmeticError, RiskdeskError) as exc:
                self.books.discard()  # the ones fed so far are kept by ``fed`` (and :meth:`BacktestBooks.commit`)
                self._refuse(pid, event, exc)
            for unreadable, error in self.books.unreadable.items():
                self._refuse(unreadable, event, error)
        return fed

    def _refuse(self, pid: str, event: TickEvent, error: Exception) -> None:
        """``pid``'s backtest refused the bar (its stored state is left as it is): reported once per portfolio."""
        self._refusing.append(pid)
        level = logging.DEBUG if pid in self._refused else logging.WARNING
        self._refused.add(pid)
        log.log(level, "portfolio %s: bar %s not fed to its backtest: %s", pid, event.version, error)

    def _books(self, bundles: Mapping[str, PortfolioBundle], event: TickEvent) -> dict[str, np.ndarray]:
        """Each readable portfolio's quantities in the bar's ticker order (a book that does not decode is left
        out: its backtest waits for a readable one)."""
        readable = [b for b in bundles.values() if b.state is not None]
        for b in bundles.values():
            if b.state is None:
                log.debug("portfolio %s: no backtest bar: %s", b.portfolio_id, b.error)
        index = {t: i for i, t in enumerate(event.tickers)}
        cols = self._columns
        cols.update([b.state for b in readable], event.tickers, index)  # type: ignore[misc]
        qty = np.zeros((len(cols.pids), len(event.tickers)))
        use = (cols.tix >= 0) & (cols.qty != 0)
        qty[cols.owner[use], cols.tix[use]] = cols.qty[use]
        return {pid: qty[p] for p, pid in enumerate(cols.pids)}

    def _heartbeat(self, event: TickEvent | None, portfolios: int, latency_ms: float) -> dict[str, object]:
        fields: dict[str, object] = {
            "ts": self.clock() if event is None else tick_time(self.clock, event.ts),
            "pid": os.getpid(),
            "consumer": self.consumer,
            "version": self.stats.last_version if event is None else int(event.version),
            "bars_fed": self.stats.bars_fed + (event is not None),
            "bars_lost": self.stats.bars_lost,
            "bar_errors": self.stats.bar_errors,
            "last_latency_ms": round(latency_ms, 3),
        }
        if event is not None:
            fields["portfolios"] = portfolios
        return fields

    def _idle_heartbeat(self) -> None:
        self.store.write_heartbeat(HEARTBEAT_COMPONENT, self._heartbeat(None, 0, self.stats.last_latency_ms))
        self._last_heartbeat = time.monotonic()


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logic.backtest_runner", description=__doc__.splitlines()[0])
    parser.add_argument("--consumer", default=None, help="consumer name (default host-pid)")
    parser.add_argument("--bars", type=int, default=None, help="stop after feeding N bars")
    parser.add_argument("--claim-idle", type=float, default=5.0,
                        help="seconds: the lease (its holder's pending bars are claimed once it expires)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=100, help="stream entries read per call")
    parser.add_argument("--nice", type=int, default=NICENESS,
                        help=f"niceness to add (default {NICENESS}: live risk first; 0: none)")  # fmt: skip
    add_daemon_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if args.nice > 0:
        os.nice(args.nice)
    stop = stop_on_signals(log)
    try:
        settings = load_settings(args.config)
        store = Store(connect_for_daemon(settings))
        metrics = BacktestMetrics()
        runner = BacktestRunner(
            store, settings, consumer=args.consumer, batch_size=max(1, args.batch),
            claim_idle_seconds=args.claim_idle, clock=MarketClock(store), stop_event=stop, metrics=metrics,
        )  # fmt: skip
        serve(metrics.registry, settings.metrics.address, settings.metrics.backtest_port, "backtest runner")
    except RiskdeskError as exc:
        print(f"backtest runner: error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    log.info("backtest runner %s (pid %d) in group %s", runner.consumer, os.getpid(), runner.group)
    stats = runner.run(max_bars=args.bars)
    print(f"backtest runner {runner.consumer}: fed {stats.bars_fed} bars", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
