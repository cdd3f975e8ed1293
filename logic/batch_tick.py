"""One tick of the vectorised monitor: every portfolio's valuation, peaks, excursions, risk figures, snapshot
and history point computed on arrays, and everything written in one MULTI with one Lua script.

The per-portfolio path (logic/monitor.py with ``vectorised=False``) merges peaks, excursions and history
buckets in Redis with three scripts per portfolio and builds each snapshot on its own; this path keeps that
state in memory while it owns it (engine/store/tick_state.py) and builds every snapshot from the columnar books
(logic/batch_book.py). The stored results are the same (tests compare both paths on random books over many
ticks, interleaved).

Per tick: WATCH the portfolios' peaks keys, read which ones another writer touched and load those, read the
live limits and the backtest runner's sections (logic/backtest_runner.py feeds the backtests), value every book,
merge peaks and excursions, compute the figures (logic/batch.py), merge the history buckets, then write: the
snapshots are built and written a range of :data:`CHUNK_PORTFOLIOS` portfolios at a time, each range in its own
MULTI (one script), executed on a writer thread of its own while the next range is built, so Redis works while
Python does; once every range committed, a last MULTI acknowledges the tick and writes the heartbeat (with one
range, or on a Redis Cluster, where the ranges run one after the other, the last range's MULTI does). A conflict
(another monitor wrote one of a range's portfolios meanwhile) aborts that range: the state is dropped and the tick,
left unacknowledged, is redone from the store. The ranges committed before are then written again: the same
snapshot, and one more history point at the redo's time, as an idle refresh would add; peaks, excursions and
buckets merge idempotently. A monitor stopped after the last range and before the acknowledgement leaves the same
state: the tick is redone by whoever takes it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import StoreError
from engine.settings import Limits, Settings
from engine.store import PortfolioBundle, Store
from engine.store.slots import is_cluster, slot_transaction
from engine.store.tick_state import Prepared, TickState
from logic.batch import BacktestSections, PortfolioLookup, batch_risk, live_limits
from logic.batch_book import BookColumns, BookInputs, SnapshotBuilder, build_snapshots, exposure_rows, value_books
from logic.rejections import MAX_BOOKABLE_PRICE
from logic.snapshot import MarketView, RiskFigures, risk_figures

if TYPE_CHECKING:
    from logic.monitor import Monitor


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside the block (the collector's pass runs once after it).

    A tick of a thousand portfolios allocates some 10^5 containers (snapshot dicts, position dicts, arguments):
    the collector would run about a hundred times within it, now and then over the whole heap, for about a
    third of the tick's time; nothing a tick allocates is cyclic garbage that must go before the tick ends."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def prompt_writer() -> Iterator[None]:
    """Inside the block the interpreter hands the GIL over every :data:`SWITCH_INTERVAL_SECONDS`, not every 5 ms.

    The writer thread needs the GIL for a moment at each step of a range's MULTI (packing it, after the send,
    after the reply), while the main thread builds the next range in pure Python and hands the GIL over only when
    the switch interval expires: with the default 5 ms each MULTI waited several times that long before Redis
    even saw it (a tick of 1,000 portfolios: ~235 ms at 5 ms, ~180 ms at 0.1 ms; make bench)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


SWITCH_INTERVAL_SECONDS = 0.0001
"""The GIL switch interval while a tick's ranges are written (:func:`prompt_writer`)."""
CHUNK_PORTFOLIOS = 250
"""Portfolios per transaction: a tick of more is written in several, pipelined with building the next."""


def chunks(count: int, size: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges of about ``size`` rows covering ``count`` (at least one, maybe empty)."""
    parts = max(1, -(-count // max(1, size)))
    edges = [round(k * count / parts) for k in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _done(value: Any) -> concurrent.futures.Future[Any]:
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    future.set_result(value)
    return future


class VectorisedTick:
    """The vectorised monitor's tick (module docstring); ``monitor`` supplies the rest of its state."""

    def __init__(self, store: Store, settings: Settings, lookup: PortfolioLookup) -> None:
        self.store = store
        self.settings = settings
        self.lookup = lookup
        self.cols = BookColumns()
        self.state = TickState(settings.history.tiers)
        self.sections = BacktestSections()
        self.chunk_portfolios = CHUNK_PORTFOLIOS

    def snapshot_all(
        self,
        monitor: Monitor,
        read: Callable[[], Mapping[str, PortfolioBundle]],
        market: MarketView,
        now: float,
        *,
        finish: Callable[[Any, dict[str, dict[str, Any]]], object],
    ) -> dict[str, dict[str, Any]]:
        """Read every portfolio (``read``), snapshot and write them (module docstring); ``finish`` queues the
        acknowledgement and heartbeat and runs the EXEC."""
        with paused_gc(), prompt_writer():
            bundles = list(read().values())
            return self._snapshot_all(monitor, bundles, market, now, finish=finish)

    def _snapshot_all(
        self,
        monitor: Monitor,
        bundles: Sequence[PortfolioBundle],
        market: MarketView,
        now: float,
        *,
        finish: Callable[[Any, dict[str, dict[str, Any]]], object],
    ) -> dict[str, dict[str, Any]]:
        readable = [b for b in bundles if b.state is not None]
        for b in bundles:
            if b.state is None:
                monitor._portfolio_error(b.portfolio_id, f"cannot read portfolio: {b.error}")
        states = [b.state for b in readable]
        header = market.header
        self.cols.update(states, header.tickers, market.index)  # type: ignore[arg-type]
        cols, state = self.cols, self.state
        state.align(cols.pids, cols.ticker_tuples())
        cash = np.array([float(s.cash) for s in states], dtype=np.float64)  # type: ignore[union-attr]
        values = value_books(cols, market, cash, MAX_BOOKABLE_PRICE)
        valid = np.isfinite(values.equity) & ~values.absurd
        for p in np.flatnonzero(~valid).tolist():
            pid = cols.pids[p]
            if values.absurd[p]:
                book, lo = cols.books[p], int(cols.offsets[p])
                columns = cols.tix[lo : lo + len(book.tickers)].tolist()
                names = ", ".join(
                    t for t, q, c in zip(book.tickers, book.qty_int, columns, strict=True)
                    if q != 0 and c >= 0 and abs(np.nan_to_num(header.prices[c])) > MAX_BOOKABLE_PRICE
                )  # fmt: skip
                monitor._portfolio_error(pid, f"price of held {names} above {MAX_BOOKABLE_PRICE:g}: not usable")
            else:
                monitor._portfolio_error(pid, "equity is not finite")
        pids = [cols.pids[p] for p in np.flatnonzero(valid).tolist()]
        ms = int(now * 1000)

        bounds = chunks(len(cols.pids), self.chunk_portfolios)
        txs = [slot_transaction(self.store.client) for _ in bounds]
        background = len(bounds) > 1 and not is_cluster(self.store.client)
        # a writer thread per range (each transaction holds its own connection): one range's MULTI is packed
        # and sent while Redis still runs the one before, so Redis does not wait for the packing
        writers = max(1, len(bounds) - 1)
        pool = concurrent.futures.ThreadPoolExecutor(writers, "riskdesk-tick-write") if background else None
        pending: list[concurrent.futures.Future[Any]] = []
        try:
            watched = state.watch_keys()  # every writer of peaks, marks or tier buckets stamps the peaks
            for tx, (lo, hi) in zip(txs, bounds, strict=True):
                if hi > lo:
                    tx.watch(*watched[lo:hi])
            stale = state.stale(self.store.client)
            stale |= state.slots_needed(ms)  # a late point: its buckets' slots are read again
            for p, reason in state.load(np.flatnonzero(stale), ms, self.store.client).items():
                valid[p] = False
                monitor._portfolio_error(cols.pids[p], reason)
            pids = [cols.pids[p] for p in np.flatnonzero(valid).tolist()]
            limits = live_limits(self.store, pids, self.lookup, monitor.limits_memo, batched=True)
            day_id, week_id = monitor.calendar.period_ids(now)
            merged = state.merge_books(valid, values.equity, day_id, week_id, values.side, values.pnl, ms)
            figures, chosen, methods = self._figures(monitor, market, cols, values, valid, limits)
            sections = self.sections.read(self.store, cols.pids, methods)
            backtest = [s if figures[p] is not None else None for p, s in enumerate(sections)]
            inputs = BookInputs(
                states, [b.trading_state for b in readable], chosen, methods, figures, backtest,  # type: ignore[arg-type]
                merged.peaks, merged.mfe, merged.mae,
            )  # fmt: skip
            builder = build_snapshots(cols, values, inputs, market, now)
            state.merge_tiers(merged, valid, builder.points)
            retention = monitor.retention_seconds
            prepared = state.prepare(
                merged, valid, builder.points, min_ms=max(0, int((now - retention) * 1000)),
                max_points=monitor.history.raw_max_points,
            )  # fmt: skip
            snapshots = self._write(txs, bounds, builder, prepared, int(header.version), finish, pool, pending)
            state.commit(merged, valid)
        except BaseException:
            state.drop()  # a failed script may have written part of a tick: load again
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True)  # every EXEC has returned before the transactions are reset
            for tx in txs:
                tx.reset()
        return snapshots

    def _write(
        self,
        txs: list[Any],
        bounds: list[tuple[int, int]],
        builder: SnapshotBuilder,
        prepared: Prepared,
        version: int,
        finish: Callable[[Any, dict[str, dict[str, Any]]], object],
        pool: concurrent.futures.ThreadPoolExecutor | None,
        pending: list[concurrent.futures.Future[Any]],
    ) -> dict[str, dict[str, Any]]:
        """Build and write the snapshots a range of portfolios at a time: each range's MULTI runs on a writer
        thread (``pool``) while the next range is built; the acknowledgement once every range committed (module
        docstring). Without a pool each range's MULTI runs in turn, the last one with the acknowledgement."""
        pids = self.cols.pids
        snapshots: dict[str, dict[str, Any]] = {}
        for n, (tx, (lo, hi)) in enumerate(zip(txs, bounds, strict=True)):
            built = builder.build(lo, hi)
            snapshots.update({pids[p]: snap for p, snap in built.items()})
            tx.multi()
            self.state.write(tx, self.store, prepared, range(lo, hi), built, version)
            if pool is not None:
                pending.append(pool.submit(tx.execute))
            elif n < len(bounds) - 1:
                pending.append(_done(tx.execute()))
        failures = [f.exception() for f in pending]  # every other EXEC has returned
        failure = next((e for e in failures if e is not None), None)
        if failure is not None:
            raise failure
        if pool is None:
            finish(txs[-1], snapshots)
        else:  # the last range is sent as soon as it is built: the acknowledgement follows in a MULTI of its own
            txs.append(slot_transaction(self.store.client))
            txs[-1].multi()
            finish(txs[-1], snapshots)
        return snapshots

    def _figures(
        self,
        monitor: Monitor,
        market: MarketView,
        cols: BookColumns,
        values: Any,
        valid: np.ndarray,
        limits: dict[str, Limits | Exception],
    ) -> tuple[list[RiskFigures | None], list[Limits], list[Any]]:
        """Each book's figures (None: no snapshot, the error reported), limits and method."""
        count = len(cols.pids)
        methods = [self.lookup.var_method_for(pid) for pid in cols.pids]
        chosen: list[Limits] = [self.lookup.limits_for(pid) for pid in cols.pids]
        figures: list[RiskFigures | None] = [None] * count
        rows = []
        for p, pid in enumerate(cols.pids):
            if not valid[p]:
                continue
            live = limits[pid]
            if isinstance(live, Exception):
                monitor._portfolio_error(pid, str(live))
                continue
            chosen[p] = live
            rows.append(p)
        at = np.array(rows, dtype=np.intp)
        exposures = exposure_rows(cols, values, at, len(market.header.tickers))
        batch = batch_risk(market, exposures, [methods[p] for p in rows], [chosen[p] for p in rows],
                           self.settings.model) if rows else []  # fmt: skip
        for i, (p, f) in enumerate(zip(rows, batch, strict=True)):
            if f is not None:
                figures[p] = f
                continue
            held = np.flatnonzero(exposures[i])  # the per-portfolio path: it reports what is wrong
            try:
                with np.errstate(over="raise"):
                    figures[p] = risk_figures(
                        market, methods[p], held, exposures[i, held], chosen[p], self.settings.model
                    )
            except (StoreError, ValueError) as exc:
                monitor._portfolio_error(cols.pids[p], str(exc))
            except ArithmeticError as exc:
                monitor._portfolio_error(
                    cols.pids[p], f"risk figures are not finite (an absurd price or variance): {exc}"
                )
        return figures, chosen, methods
