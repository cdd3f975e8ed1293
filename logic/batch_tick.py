"""One tick of the vectorised monitor: every portfolio's valuation, peaks, excursions, risk figures, snapshot
and history point computed on arrays, and written by one Lua script per lane of portfolios.

The per-portfolio path (logic/monitor.py with ``vectorised=False``) merges peaks, excursions and history
buckets in Redis with three scripts per portfolio and builds each snapshot on its own; this path keeps that
state in memory while it owns it (engine/store/tick_state.py) and builds every snapshot from the columnar books
(logic/batch_book.py). The stored results are the same (tests compare both paths on random books over many
ticks, interleaved).

The portfolios are ticked in lanes of :data:`CHUNK_PORTFOLIOS` (consecutive ranges of the portfolios read), each with
its columnar books and merged state, so that Redis writes one lane while Python computes the next (a tick of 1,000
portfolios is about 60% Python, 40% Redis; computed whole and then written, the two took turns). Per tick: read the
owner stamp of every peaks key held, read the clock (the tick's time: logic/stamped_read.py), read every book (one
script; once more when the read laid a lane out anew); then every read first, while Redis is free: per lane, value its
books, load the portfolios another writer stamped; the live limits and the backtest runner's sections of all
(logic/backtest_runner.py feeds the backtests). The stored peaks of the portfolios kept in memory are checked (a
corrupt hash is refused, not written over: engine/store/tick_owners.py) by one script that Redis runs while the first
lane is computed; each lane waits for it before its write. Then per lane: merge peaks and excursions, compute the
figures (logic/batch.py), build the snapshots and history points, merge the history buckets, and queue its MULTI (one
script), executed on a writer thread of its own while the next lane is computed. Once every lane committed, a last
MULTI acknowledges the tick and writes the heartbeat. The lane script writes each portfolio only where its peaks hash
still holds the stamp read before the clock: one another writer stamped since (a fill that ended a position, a book
sync, another monitor) is not written at all and its place is returned; the lane's other portfolios are written (no
WATCH: a desk flattening positions stamps portfolios every few ticks, and aborting the 250 of a lane each time kept the
live risk seconds behind). The touched portfolios are loaded again before their next write, and the tick, left
unacknowledged, is redone at once (logic/monitor.py: a conflict is no store failure, no backoff): the redo of that same
tick computes and writes only the portfolios not done, as lanes of their own loaded from the store (:class:`_Kept`,
:meth:`VectorisedTick._left`); the others' snapshots and history points of the tick are already stored and are taken as
they are. Any other failure drops every lane's state (a failed script may have written part of a tick); its redo
takes a portfolio that holds the stamp of one of the failed attempt's lane writes as written by it (:class:`_Unsure`:
the store went away after running it), so no point of the tick is stored twice. A monitor stopped after the last lane
and before the acknowledgement leaves the tick unacknowledged: it is redone (whole) by whoever takes it. A portfolio
that moves to another lane (the registry changed) is loaded from the store by its new lane, as one another writer
touched."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import gc
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import redis

from engine.errors import StoreError
from engine.records import Clock, VarMethod
from engine.settings import Limits, Settings
from engine.store import PortfolioBundle, Store
from engine.store.slots import is_cluster, slot_transaction
from engine.store.tick_owners import read_faults, read_owners, touched_rows
from engine.store.tick_state import Merged, TickState
from logic.batch import BacktestSections, PortfolioLookup, batch_risk, live_limits
from logic.batch_book import BookColumns, BookInputs, build_snapshots, exposure_rows, value_books
from logic.rejections import MAX_BOOKABLE_PRICE
from logic.snapshot import MarketView, RiskFigures, risk_figures

if TYPE_CHECKING:
    from logic.monitor import Monitor


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside the block (the collector's pass runs once after it).

    A tick of a thousand portfolios allocates some 10^5 containers (snapshot dicts, position dicts, arguments):
    the collector would run about a hundred times within it, now and then over the whole heap, for about a
    third of the tick's time; nothing a tick allocates is cyclic garbage that must go before the tick ends. The
    monitor holds the pause until the tick's snapshots are dropped: ended with them alive, the first pass
    scanned every one (about 3 ms at 1,000 portfolios)."""
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
LAYOUT_PASSES = 2
"""Reads of one tick at most: a second one when the first laid a lane out anew (:meth:`VectorisedTick.snapshot_all`)."""


def chunks(count: int, size: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges of about ``size`` rows covering ``count`` (at least one, maybe empty)."""
    parts = max(1, -(-count // max(1, size)))
    edges = [round(k * count / parts) for k in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _ran(call: Callable[[], Any]) -> concurrent.futures.Future[Any]:
    """``call()`` run now, its result or its error in a future, as a writer thread's would be (with one lane, or
    on a cluster): a lane whose EXEC failed is one of the attempt's sent lanes all the same
    (:meth:`VectorisedTick._remember`)."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    try:
        future.set_result(call())
    except Exception as exc:  # noqa: BLE001 - raised by the attempt once every lane is sent, as with threads
        future.set_exception(exc)
    return future


class _Lane:
    """One range of the monitor's portfolios, ticked on its own: its columnar books and the merged state it
    holds between ticks (module docstring)."""

    def __init__(self, tiers: Sequence[Any], token: str) -> None:
        self.cols = BookColumns()
        self.state = TickState(tiers, token=token)
        self.readable: list[PortfolioBundle] = []
        """This tick's readable bundles, in the order of :attr:`cols`."""


@dataclass
class _Read:
    """A lane laid out, its state loaded where another writer touched it."""

    lane: _Lane
    readable: list[PortfolioBundle]
    failed: list[str | None]
    """Per row: why its stored state is unusable (not snapshot this tick), or None."""
    methods: list[VarMethod]
    loaded: npt.NDArray[np.bool_]
    """Per row: its stored state was loaded this tick (stale, or a late point needs its buckets' slots)."""


@dataclass
class _Kept:
    """What an attempt of a tick did before other writers' stamps left some of its portfolios unwritten
    (:meth:`VectorisedTick._snapshot_all`): by lane index, its portfolios, the snapshots written and every
    portfolio done (written, or not writable this tick: reported). The redo of the same tick (the next
    :meth:`VectorisedTick.snapshot_all`, at once: logic/monitor.py) computes and writes, of a lane whose portfolios
    are the same, only those not done (:meth:`VectorisedTick._left`); any other call drops this."""

    tick: tuple[int, float, int]
    """The tick's market version and time, and the monitor's count of store failures then: after a failure (a
    failover may have lost the writes) the redo computes every lane."""
    lanes: dict[int, tuple[tuple[str, ...], dict[str, dict[str, Any]], frozenset[str]]]


@dataclass
class _Unsure:
    """The lane writes of a tick's failed attempts (the store went away: whether each ran is unknown), by their
    owner stamp: the snapshots each queued. A redo of the tick takes a portfolio whose peaks hash holds one of
    those stamps as written by it (one script wrote its stamp, snapshot and history point together), so its
    point is not written twice at a later time; a write the store lost (not run, or a failover) left no stamp."""

    tick: tuple[int, float]
    writes: dict[bytes, dict[str, dict[str, Any]]]


@dataclass
class _Sent:
    """A lane's tick, computed and queued in its transaction (its EXEC maybe running on a writer thread)."""

    index: int
    lane: _Lane
    merged: Merged
    valid: npt.NDArray[np.bool_]
    queued: list[int]
    """The rows its script writes unless another writer stamped them since the tick began."""
    snapshots: dict[str, dict[str, Any]]
    done: concurrent.futures.Future[Any]
    repaired: list[int]
    """The rows left out because their stored peaks hash was found corrupt and is usable again (redone)."""


class VectorisedTick:
    """The vectorised monitor's tick (module docstring); ``monitor`` supplies the rest of its state."""

    def __init__(self, store: Store, settings: Settings, lookup: PortfolioLookup) -> None:
        self.store = store
        self.settings = settings
        self.lookup = lookup
        self.token = uuid.uuid4().hex
        """The owner stamp of every lane: a portfolio that changes lanes is not owned by its new one (loaded)."""
        self.lanes: list[_Lane] = []
        self.sections = BacktestSections()
        self.chunk_portfolios = CHUNK_PORTFOLIOS
        self.kept: _Kept | None = None
        """What an attempt of the tick other writers interrupted did, for its redo (:class:`_Kept`)."""
        self.unsure: _Unsure | None = None
        """The writes of the tick's failed attempts, for its redo (:class:`_Unsure`)."""

    def snapshot_all(
        self,
        monitor: Monitor,
        read: Callable[[], Mapping[str, PortfolioBundle]],
        market: MarketView,
        clock: Clock,
        *,
        finish: Callable[..., object],
        tick: bool = True,
    ) -> tuple[dict[str, dict[str, Any]], float]:
        """Read every portfolio (``read``), snapshot and write them (module docstring); ``finish(tx, snapshots,
        now=now)`` queues the acknowledgement and heartbeat and runs the EXEC. Returns the snapshots and their time.
        ``tick``: the market view is a tick's (a redo of it keeps what its earlier attempts wrote), not an idle
        refresh's.

        The owner stamps of the peaks keys of the portfolios held last tick are read *before* the books: a write
        that changes a book together with its peaks (a book sync's capital flow, engine/book.py) stamps them, so
        it either lands before that read (the book read is the new one, the peaks are loaded again: stamped by
        another writer) or after it (the lane script finds another stamp and leaves the portfolio to the redo),
        never measuring an old book against shifted references. The tick's time is read from ``clock`` after
        the stamps and before the books, so a point's time and its book agree about every flow
        (logic/stamped_read.py: a flow stamped before that read is stamped before the clock read and in the
        books; one after it is redone, and the redo reads the clock again). A read that lays a lane out anew
        (the first tick, the registry changed) met portfolios whose stamps were not read before it: it is done
        once more, those stamps read first (:data:`LAYOUT_PASSES`; :meth:`_lay_out_lane`)."""
        key = (int(market.header.version), float(market.header.ts), monitor.stats.store_errors)
        kept, self.kept = self.kept, None
        kept = kept if tick and kept is not None and kept.tick == key else None
        if tick and (self.unsure is None or self.unsure.tick != key[:2]):
            self.unsure = _Unsure(key[:2], {})
        unsure = self.unsure if tick else None  # an idle refresh writes every portfolio: none of its writes is kept
        with paused_gc(), prompt_writer():
            for final in [False] * (LAYOUT_PASSES - 1) + [True]:
                laying = False
                try:
                    held = [k for lane in self.lanes for k in lane.state.peaks_keys()]
                    seen = dict(zip(held, read_owners(self.store, held), strict=True))
                    now = clock()  # after the owner stamps, before the read (docstring)
                    bundles = list(read().values())
                    laying = True
                    settled = self._lay_out(monitor, bundles, market, seen, final)
                except BaseException:
                    if laying:  # a lane half laid out: load every state again
                        for lane in self.lanes:
                            lane.state.drop()
                    raise
                if settled:
                    break
                # portfolios met by the read whose stamps were not read before it: read again, those read first
            for b in bundles:  # once the read is the tick's
                if b.state is None:
                    monitor._portfolio_error(b.portfolio_id, f"cannot read portfolio: {b.error}")
            txs = [slot_transaction(self.store.client) for _ in self.lanes]
            return self._snapshot_all(
                monitor, market, now, finish=finish, txs=txs, kept=kept, key=key, seen=seen, unsure=unsure
            ), now

    def _lay_out(
        self, monitor: Monitor, bundles: Sequence[PortfolioBundle], market: MarketView, seen: dict[str, Any],
        final: bool,
    ) -> bool:  # fmt: skip
        """Split the books read into lanes (adding or dropping lanes) and lay each out (:meth:`_lay_out_lane`);
        False when a lane met portfolios whose owner stamps ``seen`` (read before the clock) lacks (``final``:
        they are read now, into ``seen``, True)."""
        bounds = chunks(len(bundles), self.chunk_portfolios)
        while len(self.lanes) < len(bounds):
            self.lanes.append(_Lane(self.settings.history.tiers, self.token))
        del self.lanes[len(bounds) :]
        settled = True
        for lane, (lo, hi) in zip(self.lanes, bounds, strict=True):
            settled &= self._lay_out_lane(lane, monitor, bundles[lo:hi], market, seen, final)
        return settled

    def _snapshot_all(
        self,
        monitor: Monitor,
        market: MarketView,
        now: float,
        *,
        finish: Callable[..., object],
        txs: list[Any],
        kept: _Kept | None,
        key: tuple[int, float, int],
        seen: dict[str, Any],
        unsure: _Unsure | None,
    ) -> dict[str, dict[str, Any]]:
        before = {  # what an earlier attempt of this tick did, by lane (its portfolios the same)
            k: (snapshots, done) for k, (pids, snapshots, done) in (kept.lanes.items() if kept is not None else ())
            if k < len(self.lanes) and tuple(self.lanes[k].cols.pids) == pids
        }  # fmt: skip
        if unsure is not None and unsure.writes:
            before = self._written(before, seen, unsure)
        todo = [  # the lanes this call writes, a lane an earlier attempt did in part as the part left
            (k, lane) if k not in before else (k, self._left(lane, before[k][1], market))
            for k, lane in enumerate(self.lanes) if k not in before or set(lane.cols.pids) - before[k][1]
        ]  # fmt: skip
        lanes, lane_txs = [lane for _, lane in todo], [txs[k] for k, _ in todo]
        background = len(lanes) > 1 and not is_cluster(self.store.client)
        # a writer thread per lane (each transaction holds its own connection): a lane's MULTI runs while the
        # next lane is computed, and is packed and sent while Redis still runs the one before
        pool = concurrent.futures.ThreadPoolExecutor(len(lanes) + 1, "riskdesk-tick-write") if background else None
        sent: list[_Sent] = []
        try:
            # every read first (Redis is free; once the first lane's MULTI runs, a read waits behind it)
            stale = self._stale([lane.state for lane in lanes], seen)
            ms = int(now * 1000)
            reads = [self._load_lane(lane, monitor, rows, ms) for lane, rows in zip(lanes, stale, strict=True)]
            pids = [pid for r in reads for p, pid in enumerate(r.lane.cols.pids) if r.failed[p] is None]
            limits = live_limits(self.store, pids, self.lookup, monitor.limits_memo, batched=True)
            sections = self.sections.read(
                self.store, [pid for r in reads for pid in r.lane.cols.pids], [m for r in reads for m in r.methods]
            )  # fmt: skip
            faults = self._check_peaks(reads, pool)
            at = 0
            for (index, _), r, tx, corrupt in zip(todo, reads, lane_txs, faults, strict=True):
                count = len(r.lane.cols.pids)
                merged, valid, queued, snapshots, repaired = self._write_lane(
                    r, tx, monitor, market, now, limits, sections[at : at + count], corrupt
                )
                at += count
                done = pool.submit(tx.execute) if pool is not None else _ran(tx.execute)
                sent.append(_Sent(index, r.lane, merged, valid, queued, snapshots, done, repaired))
            failures = [s.done.exception() for s in sent]  # every EXEC returned
            failure = next((e for e in failures if e is not None), None)
            if failure is not None:
                raise failure
            # left out: stamped by another writer since the tick began, or repaired since found corrupt
            touched = {s.index: sorted({*touched_rows(s.queued, s.done.result()), *s.repaired}) for s in sent}
            for s in sent:
                s.lane.state.commit(s.merged, s.valid, touched[s.index])
            finished = dict(before)
            for s in sent:  # this attempt's portfolios, written (or not writable) unless another writer touched them
                pids = s.lane.cols.pids
                gone = {pids[p] for p in touched[s.index]}
                snaps, did = before.get(s.index, ({}, frozenset()))
                finished[s.index] = (
                    {**snaps, **{pid: snap for pid, snap in s.snapshots.items() if pid not in gone}},
                    did | (set(pids) - gone),
                )  # fmt: skip
            if any(touched.values()):  # another writer stamped some since the tick began: redo them (docstring)
                self.kept = _Kept(key, {k: (tuple(self.lanes[k].cols.pids), *finished[k]) for k in finished})
                raise redis.WatchError("portfolios changed during the tick: redone")
            snapshots = {pid: snap for k in sorted(finished) for pid, snap in finished[k][0].items()}
            txs.append(slot_transaction(self.store.client))  # the acknowledgement once every lane committed
            txs[-1].multi()
            finish(txs[-1], snapshots, now=now)
        except redis.WatchError:
            self._remember(unsure, sent)
            raise
        except BaseException:
            self._remember(unsure, sent)
            for lane in self.lanes:
                lane.state.drop()  # a failed script may have written part of a tick: load again
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True)  # every EXEC has returned before the transactions are reset
            for tx in txs:
                tx.reset()
        return snapshots

    @staticmethod
    def _remember(unsure: _Unsure | None, sent: Sequence[_Sent]) -> None:
        """Keep the lane writes of an attempt that failed (:class:`_Unsure`; none of a refresh's): those that
        committed, or whose connection failed (the script ran whole or not at all), not one whose script failed
        (it stamps a portfolio before its point: stopped in between, it left a stamp and no point)."""
        if unsure is not None:
            for s in sent:
                error = s.done.exception()
                if error is None or isinstance(error, redis.ConnectionError | redis.TimeoutError):
                    unsure.writes[s.merged.stamp.encode()] = s.snapshots

    def _written(
        self, before: dict[int, tuple[dict[str, dict[str, Any]], frozenset[str]]], seen: dict[str, Any],
        unsure: _Unsure,
    ) -> dict[int, tuple[dict[str, dict[str, Any]], frozenset[str]]]:  # fmt: skip
        """``before`` with, in each lane, the portfolios whose peaks hash holds (``seen``: read before the clock)
        the stamp of a write of an earlier failed attempt of the tick: done, with the snapshot it wrote."""
        done = dict(before)
        for k, lane in enumerate(self.lanes):
            hit = {}
            for pid, key in zip(lane.cols.pids, lane.state.peaks_keys(), strict=True):
                snapshot = unsure.writes.get(seen.get(key) or b"", {}).get(pid)
                if snapshot is not None:
                    hit[pid] = snapshot
            if hit:
                snaps, did = done.get(k, ({}, frozenset()))
                done[k] = ({**snaps, **hit}, did | frozenset(hit))
        return done

    def _left(self, lane: _Lane, done: frozenset[str], market: MarketView) -> _Lane:
        """The portfolios of ``lane`` an earlier attempt of the tick did not do, as a lane of their own for the
        redo: its state is loaded from the store (the lane's rows of them are not its any more, and load again
        next tick), so a redo computes the few portfolios another writer touched, not the 250 of their lane."""
        left = _Lane(self.settings.history.tiers, self.token)
        left.readable = [b for b, pid in zip(lane.readable, lane.cols.pids, strict=True) if pid not in done]
        left.cols.update([b.state for b in left.readable], market.header.tickers, market.index)  # type: ignore[misc]
        left.state.align(left.cols.pids, left.cols.ticker_tuples())
        return left

    def _lay_out_lane(
        self, lane: _Lane, monitor: Monitor, bundles: Sequence[PortfolioBundle], market: MarketView,
        seen: dict[str, Any], final: bool,
    ) -> bool:  # fmt: skip
        """Lay out a lane's books; True when the owner stamps of its portfolios' peaks keys (every writer of
        peaks, marks or tier buckets stamps them) were all read before the clock and the read
        (:meth:`snapshot_all`: ``seen``), else False (the read is redone), or with ``final`` True once the new
        ones are read now. The unreadable ones are left out (reported by :meth:`snapshot_all`)."""
        readable = [b for b in bundles if b.state is not None]
        lane.readable = readable
        lane.cols.update([b.state for b in readable], market.header.tickers, market.index)  # type: ignore[misc]
        lane.state.align(lane.cols.pids, lane.cols.ticker_tuples())
        late = [key for key in lane.state.peaks_keys() if key not in seen]  # only when the lane's layout changed
        if late and final:
            seen.update(zip(late, read_owners(self.store, late), strict=True))
        return final or not late

    @staticmethod
    def _stale(states: Sequence[TickState], seen: dict[str, Any]) -> list[npt.NDArray[np.bool_]]:
        """Each lane's rows another writer touched, or that it does not hold, by the owner stamps read before
        the tick's clock (``seen``)."""
        return [s.stale_rows([seen[key] for key in s.peaks_keys()]) for s in states]

    def _check_peaks(
        self, reads: Sequence[_Read], pool: concurrent.futures.ThreadPoolExecutor | None
    ) -> list[Callable[[], list[int]]]:
        """Per lane, a call returning its rows kept in memory (not loaded this tick: a load checks what it reads)
        whose stored peaks hash is corrupt (engine/store/tick_owners.py ``FAULTS_LUA``). One script checks every
        lane's rows: with several lanes on a writer thread, while the first lane is computed (Redis is otherwise
        idle then), else at once. A lane waits for it before it queues its write (:meth:`_write_lane`)."""
        rows = [np.flatnonzero(~r.loaded) for r in reads]
        keys = [r.lane.state.peaks_keys()[p] for r, at in zip(reads, rows, strict=True) for p in at.tolist()]
        read = functools.partial(read_faults, self.store, keys)
        found = pool.submit(read) if pool is not None else _ran(read)  # its error raised where a lane waits for it
        starts = np.cumsum([0, *(len(r) for r in rows)]).tolist()

        def corrupt(k: int) -> list[int]:
            return [int(rows[k][i - starts[k]]) for i in found.result() if starts[k] <= i < starts[k + 1]]

        return [functools.partial(corrupt, k) for k in range(len(reads))]

    def _load_lane(self, lane: _Lane, monitor: Monitor, stale: npt.NDArray[np.bool_], ms: int) -> _Read:
        """Load the state of a lane's ``stale`` rows, and of those whose buckets' slots a late point needs."""
        state = lane.state
        failed: list[str | None] = [None] * len(state.pids)
        loaded = stale | state.slots_needed(ms)
        for p, reason in state.load(np.flatnonzero(loaded), ms, self.store.client).items():
            failed[p] = reason
            monitor._portfolio_error(lane.cols.pids[p], reason)
        methods = [self.lookup.var_method_for(pid) for pid in lane.cols.pids]
        return _Read(lane, lane.readable, failed, methods, loaded)

    def _write_lane(
        self,
        r: _Read,
        tx: Any,
        monitor: Monitor,
        market: MarketView,
        now: float,
        limits: dict[str, Limits | Exception],
        sections: list[dict[str, Any] | None],
        corrupt: Callable[[], list[int]],
    ) -> tuple[Merged, npt.NDArray[np.bool_], list[int], dict[str, dict[str, Any]], list[int]]:
        """Value a lane's books, compute its tick and queue its writes in ``tx`` (MULTI): the merged state (kept
        once the EXEC succeeded), the rows it is valid for, the rows queued (:meth:`TickState.write`), the
        snapshots by portfolio, and the rows to redo. ``corrupt``: the rows whose stored peaks hash is corrupt
        (:meth:`_check_peaks`): left out (not written over from memory) and loaded, which refuses them as a stale
        row's load does; one repaired since the check loads, and is redone. The lane's other errors of a row are
        held until then: a refused row is reported for its refusal alone, as one refused by the load is."""
        cols, state = r.lane.cols, r.lane.state
        errors: list[tuple[int, str]] = []
        bad: list[int] = []
        try:
            header = market.header
            values = value_books(cols, market, cols.cash, MAX_BOOKABLE_PRICE)
            valid = np.isfinite(values.equity) & ~values.absurd & np.array([f is None for f in r.failed], dtype=bool)
            for p in np.flatnonzero(~valid).tolist():
                if r.failed[p] is not None:
                    continue  # reported when loaded
                if values.absurd[p]:
                    book, lo = cols.books[p], int(cols.offsets[p])
                    columns = cols.tix[lo : lo + len(book.tickers)].tolist()
                    names = ", ".join(
                        t for t, q, c in zip(book.tickers, book.qty_int, columns, strict=True)
                        if q != 0 and c >= 0 and abs(np.nan_to_num(header.prices[c])) > MAX_BOOKABLE_PRICE
                    )  # fmt: skip
                    errors.append((p, f"price of held {names} above {MAX_BOOKABLE_PRICE:g}: not usable"))
                else:
                    errors.append((p, "equity is not finite"))
            ms = int(now * 1000)
            day_id, week_id = monitor.calendar.period_ids(now)
            merged = state.merge_books(
                valid, values.equity, day_id, week_id, values.side, values.pnl, ms,
                monitor.calendar.closes(now, market.printed_at),
                complete=~values.incomplete,  # an incomplete valuation moves no peak (logic/snapshot.py)
            )  # fmt: skip
            figures, chosen = self._figures(errors, market, cols, values, valid, limits, r.methods)
            backtest = [s if figures[p] is not None else None for p, s in enumerate(sections)]
            inputs = BookInputs(
                [b.state for b in r.readable], [b.trading_state for b in r.readable], chosen, r.methods,  # type: ignore[misc]
                figures, backtest, merged.peaks, merged.mfe, merged.mae,
            )  # fmt: skip
            builder = build_snapshots(cols, values, inputs, market, now)
            bad = corrupt()
            valid[bad] = False
            refused = state.load(np.array(bad, dtype=np.intp), ms, self.store.client) if bad else {}
        finally:  # a lane that fails reports what it found too, as it would have found it
            for p, message in errors:
                if p not in bad:
                    monitor._portfolio_error(cols.pids[p], message)
        for p, reason in refused.items():
            monitor._portfolio_error(cols.pids[p], reason)
        state.merge_tiers(merged, valid, builder.points)
        prepared = state.prepare(
            merged, valid, builder.points, min_ms=max(0, int((now - monitor.retention_seconds) * 1000)),
            max_points=monitor.history.raw_max_points, version=int(market.header.version),
        )  # fmt: skip
        built, encoded = builder.build(0, len(cols.pids))
        tx.multi()
        queued = state.write(tx, self.store, prepared, range(len(cols.pids)), encoded)
        snaps = {cols.pids[p]: snap for p, snap in built.items() if valid[p]}
        return merged, valid, queued, snaps, [p for p in bad if p not in refused]

    def _figures(
        self,
        errors: list[tuple[int, str]],
        market: MarketView,
        cols: BookColumns,
        values: Any,
        valid: np.ndarray,
        limits: dict[str, Limits | Exception],
        methods: list[VarMethod],
    ) -> tuple[list[RiskFigures | None], list[Limits]]:
        """Each book's figures (None: no snapshot, the error added to ``errors``, by row) and limits."""
        count = len(cols.pids)
        chosen: list[Limits] = [self.lookup.limits_for(pid) for pid in cols.pids]
        figures: list[RiskFigures | None] = [None] * count
        rows = []
        for p, pid in enumerate(cols.pids):
            if not valid[p]:
                continue
            live = limits[pid]
            if isinstance(live, Exception):
                errors.append((p, str(live)))
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
                errors.append((p, str(exc)))
            except ArithmeticError as exc:
                errors.append((p, f"risk figures are not finite (an absurd price or variance): {exc}"))
        return figures, chosen
