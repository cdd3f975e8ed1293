"""Stock splits: restate the market, every book and the live position limits in post-split units, so a split is
not a return.

A 2-for-1 split halves the price and doubles the shares; nothing of value happens. Left to the stream daemon
it would be read as a -50 % one-bar move: the jump filter refuses it then accepts the repeated print, the EWMA
matrix takes a -69 % log return (the ticker's one-bar volatility x250, the VaR of every holder x60), the collar
refuses the ticker for the session, and every book still holds the old quantity at the old average price,
showing a phantom 50 % loss. ``python warmup.py --split TICKER RATIO`` (:func:`apply_split`) restates instead:

1. the market (``mkt:{m}``, one MULTI): the stored last price of the ticker (also the price filter's
   reference: the daemon judges the next print against the stored snapshot's price) and its collar reference
   price are divided by the ratio; the snapshot version is bumped (a running daemon's next write then fails
   its version guard and it reloads the adjusted prices instead of writing the old ones back); the covariance,
   the stressed matrix and the window of standardized returns are left as they are (a split is not a return:
   no EWMA update, no window row), and the next print's return is computed against the adjusted price; each
   ticker's count of bars since its last print (``print_gaps``, tagged with the snapshot version) is written
   again under the new version, unchanged: a split prints nothing, and a count left under the old version would
   read as 0, so a thin ticker's next return (spanning all those bars) would enter the model as one bar's;
2. each book holding the ticker (``pf:{<id>}``, one MULTI per portfolio, WATCHed against a fill landing
   meanwhile): the quantity is multiplied by the ratio and the average price divided by it. The average price
   is kept exactly when the quotient has at most 8 decimals (a 2-for-1, a 1-for-10 of a cent price), else
   rounded half-even to 1e-8 (:data:`AVG_PRICE_QUANTUM`, the precision a fill's average price has,
   logic/decisions.py): a 3-for-1 of 1000 shares at 100 is 3000 at 33.33333333, the cost basis moving by at most
   ``|qty| x 0.5e-8`` (here 0.00001; both cost bases are in the audit record). Quantities stay whole shares: a
   fractional remainder (1-for-10 of 25 shares: 2.5) is truncated towards zero (2) and settled as **cash in
   lieu** at the adjusted price, rounded to the cent (half to even), as brokers do; its difference from the
   fraction's exact cost basis, rounded to the cent, is booked as realized P&L of the position and of the book.
   A short's fraction is bought in: the book pays the cash. The split changes no equity, P&L, drawdown peak or
   VaR (the risk of ``2q`` shares at ``p/2`` is that of ``q`` at ``p``) but for that cent rounding of a cash in
   lieu. A book without a position in the ticker is not touched (no output line, no audit record);
3. each portfolio's live **position limit** on the ticker (``limits.position_limits[TICKER]``, the stored
   limits, or the settings' when none are stored yet) is a count of shares: left alone, a 2-for-1 would make it
   twice as tight and a 1-for-10 ten times looser (failing open). It is restated in the same MULTI as the book
   (so a rerun never restates it twice): multiplied by the ratio and floored to whole shares (at least 1, at
   most the settings' bound), written as the next version of the live limits through the store's limits change
   path (engine/store/limits.py: validated, the Limits page's history, one ``set_limits`` audit record naming
   the split), whether the book holds the ticker or not. ``max_position_qty`` and ``max_order_qty`` cap every
   ticker at once and are **not** restated: the command's output says which portfolios have them, to review by
   hand on the Limits page;
4. each portfolio's **continuous VaR backtest** modelling the ticker (``pf:{<id>}:backtest``, logic/backtest.py,
   written by the backtest runner) in the same MULTI as its book: its last price of the ticker, and the price of
   the ticker in each open forecast, are divided by the ratio and the forecast's quantity of it multiplied by it
   (:func:`restate_backtest`). Left alone, the next bar would be a -50 % return against the stored last price
   with the pre-split quantity: a phantom exceedance of every method (kept in the rolling 250, Kupiec,
   Christoffersen and the Basel zone) and a -69 % return in the backtest's own covariance and window (its
   one-bar VaR x160 the next bar, still x2 150 bars later). The covariance, window, counts, VaRs and records are
   not touched (a split is not a return); a new token makes a running runner reload the state. A backtest that
   is absent (a book holding the ticker: said so) or does not decode (said so: its runner refuses it too) is
   left alone. The runner must have fed every pre-split bar first (operating procedure below): a bar still
   queued at the pre-split price would be a phantom +100 % return against the restated one; the output warns
   when the backtest's last bar is older than the newest tick;
5. one ``split`` audit record on ``rd:audit`` and one on the ``:audit`` of each book holding the ticker (actor
   ``warmup:local:<os user>``, the ratio, the prices, quantities, average prices, cost bases and cash before
   and after);
6. the split is recorded by its id in ``mkt:{m}:splits`` and each portfolio's ``pf:{<id>}:splits`` in the same
   MULTIs, so a rerun with the same id changes nothing, and a run interrupted between portfolios (on a Redis
   Cluster one MULTI per slot) completes only the books not yet split, at the recorded adjusted price.

**A second split of a ticker** under another id is refused (``SPLIT_REPEATED``, naming the earlier split) while
the ticker has had no print since the earlier one (its price time is the one recorded with the split, or, for a
record without it, the market version is unchanged): the default id carries the UTC date, so the same command
run again after midnight UTC (a retry, a check) would otherwise split again (1000 -> 2000 -> 4000 shares). After
a print, a new split of the ticker needs its own ``--split-id``. ``--force`` overrides both (two splits of a
ticker before it prints again: really so), and the audit records say it was forced.

**The settings file is not changed**: its ``position_limits`` on the ticker and the ticker's ``[[portfolios]]``
holdings stay in pre-split shares, and the command's output lists them with their post-split values. Edit
``riskdesk.toml`` by hand before the next ``warmup.py --sync``: a sync from the settings would put the pre-split
quantity back (a 2-for-1's 2000 shares synced back to 1000, the difference booked as a securities flow) and its
limits record with it.

Operating procedure: apply the split **before the first post-split print**, with the stream daemon stopped
(before the open, or halt the feed), then start the daemon. The daemon keeps the price filter's remembered
jumps in memory only (engine/price_filter.py); its collar memory of the session's close is restated when it
reloads the restated market (``CollarAnchor.restate``: a daemon left running re-anchored the next session's
reference at its pre-split close, and refused the post-split price all session). On a Redis Cluster stop
the monitors too: the market and each book commit one slot after the other, and a monitor valuing a book
between the two would see a phantom move. On one Redis server the whole split is a single MULTI.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import redis

from engine.errors import RiskdeskError, StoreError
from engine.records import Float64Array, MarketSnapshot, PortfolioState, Position
from engine.settings import Limits, Settings
from engine.settings_types import MAX_QUANTITY
from engine.store import GLOBAL_AUDIT_KEY, MARKET_KEY, REFERENCE_KEY, PortfolioKeys, Store, StoredLimits
from engine.store.codec import decode_json, encode_json
from engine.store.keys import SPLITS_KEY
from engine.store.limits import plan_limits_change
from engine.store.slots import slot_transaction

MAX_SPLIT_TERM = 1000
"""Largest term of a split ratio: 1000-for-1 and 1-for-1000 are accepted, 1001-for-1 (or a ratio such as
0.1234, 617-for-5000) is refused as a typo. Real splits are small whole numbers (2-for-1, 3-for-2, 1-for-10)."""
CENT = Decimal("0.01")
"""Cash in lieu and its realized P&L are booked in cents."""
AVG_PRICE_QUANTUM = Decimal("0.00000001")
"""An average price restated by a split that does not terminate within it is rounded half-even to it: the
precision of a fill's average price (logic/decisions.py ``AVG_PRICE_QUANTUM``; the engine does not import logic)."""
WATCH_RETRIES = 5
"""Attempts when a fill or a bar lands between the split's reads and its MULTI."""


class SplitError(RiskdeskError):
    """A split that cannot be applied as asked (nothing was written)."""

    code = "SPLIT_INVALID"
    fix = "give `--split TICKER RATIO` with a ticker of the universe and a ratio like 2, 3/2, 1/10 or 0.1"


class SplitConflictError(RiskdeskError):
    """The split id was already used for another split, or the store kept changing under the split."""

    code = "SPLIT_CONFLICT"
    fix = "choose another --split-id, or stop the stream daemon (and the traders) and run the split again"


class SplitRepeatedError(SplitConflictError):
    """The ticker was already split under another id and has not printed since, or has printed since but the new
    split has no id of its own (module docstring): nothing was written."""

    code = "SPLIT_REPEATED"
    fix = (
        "check the earlier split named in the message (warmup.py --split already applied it); a new split of the "
        "ticker after it has printed needs its own --split-id, and --force applies one anyway"
    )


def parse_ratio(text: str) -> Fraction:
    """New shares per old share from ``"2"``, ``"3/2"``, ``"1/10"``, ``"0.1"`` or ``"3:2"``, exactly.

    Refused (:class:`SplitError`): not a number, NaN or infinite, zero or negative, exactly 1 (no split), or a
    term above :data:`MAX_SPLIT_TERM` once reduced (``0.1`` is 1/10; ``0.1234`` is 617/5000).
    """
    raw = str(text).strip().replace(":", "/")
    try:
        ratio = Fraction(raw)
    except (ValueError, ZeroDivisionError) as exc:
        raise SplitError(f"split ratio {text!r} is not a number such as 2, 3/2, 1/10 or 0.1") from exc
    if ratio <= 0:
        raise SplitError(f"split ratio {text!r} must be positive")
    if ratio == 1:
        raise SplitError(f"split ratio {text!r} is 1-for-1: nothing to split")
    if ratio.numerator > MAX_SPLIT_TERM or ratio.denominator > MAX_SPLIT_TERM:
        raise SplitError(
            f"split ratio {text!r} is {ratio.numerator}-for-{ratio.denominator}: a term above {MAX_SPLIT_TERM} is "
            "no real split (a typo?)"
        )
    return ratio


def ratio_text(ratio: Fraction) -> str:
    """``2-for-1``, ``1-for-10``, ``3-for-2``."""
    return f"{ratio.numerator}-for-{ratio.denominator}"


def default_split_id(ticker: str, ratio: Fraction, now: float) -> str:
    """``AAA-2-for-1-2026-12-01`` (UTC date): the same split run twice the same day is one split (run again on
    another day it is refused by the check that the ticker printed since: module docstring)."""
    return f"{ticker}-{ratio_text(ratio)}-{time.strftime('%Y-%m-%d', time.gmtime(now))}"


def round_to(value: Fraction, quantum: Decimal) -> Decimal:
    """``value`` rounded half-even to a multiple of ``quantum``, exactly (no intermediate decimal rounding)."""
    steps = round(value / Fraction(quantum))  # Fraction.__round__: half to even, exact
    return Decimal(steps) * quantum  # exact: an integer of fewer than 28 digits times a power of ten


def restated_avg_price(avg_price: Decimal, ratio: Fraction) -> Decimal:
    """``avg_price / ratio``: exact when it has at most 8 decimals, else rounded half-even to
    :data:`AVG_PRICE_QUANTUM` (module docstring, 2)."""
    exact = Fraction(avg_price) / ratio
    quotient = avg_price * Decimal(ratio.denominator) / Decimal(ratio.numerator)
    if Fraction(quotient) == exact and quotient == quotient.quantize(AVG_PRICE_QUANTUM):
        return quotient  # exact within 8 decimals: keeps the written form (100.0 / 2 is 50.0)
    return round_to(exact, AVG_PRICE_QUANTUM)


def restated_cap(shares: int, ratio: Fraction) -> int:
    """A share-count limit in post-split shares: ``shares x ratio`` floored (a fraction of a share tightens, never
    loosens), at least 1 (a limit is > 0), at most :data:`~engine.settings_types.MAX_QUANTITY`."""
    return max(1, min(MAX_QUANTITY, math.floor(Fraction(shares) * ratio)))


@dataclass(frozen=True)
class BookSplit:
    """One position restated (:func:`split_position`)."""

    position: Position | None
    """The new position (None: the book had none; a flat position keeps the realized P&L of its fraction)."""
    cash_in_lieu: Decimal
    """Paid to the book (negative: paid by a short), rounded to the cent."""
    realized: Decimal
    """The cash in lieu less the fraction's exact cost basis, rounded to the cent: realized P&L."""
    fraction: Fraction
    """The shares settled in cash (signed)."""


def split_position(position: Position | None, ratio: Fraction, price_after: Decimal) -> BookSplit:
    """``position`` after a split of ``ratio`` whose adjusted price is ``price_after`` (module docstring, 2)."""
    if position is None or position.qty == 0:
        return BookSplit(position, Decimal(0), Decimal(0), Fraction(0))
    exact = Fraction(position.qty) * ratio
    whole = int(exact)  # towards zero: a short's fraction is bought in as a long's is sold
    fraction = exact - whole
    avg_after = restated_avg_price(position.avg_price, ratio)
    cash, realized = Decimal(0), Decimal(0)
    if fraction:
        cash = round_to(fraction * Fraction(price_after), CENT)
        realized = round_to(Fraction(cash) - fraction * Fraction(position.avg_price) / ratio, CENT)
    new = Position(
        qty=whole,
        avg_price=avg_after if whole else Decimal(0),
        realized_pnl=position.realized_pnl + realized,
    )
    return BookSplit(new, cash, realized, fraction)


@dataclass
class SplitResult:
    """What :func:`apply_split` did."""

    split_id: str
    ticker: str
    ratio: Fraction
    price_before: float
    price_after: float
    market_applied: bool = False
    """The market was restated by this run (False: it already was, by an earlier run of the same id)."""
    books: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Portfolio id -> its audit record, for the books holding the ticker that this run restated."""
    limits: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """Portfolio id -> (position limit before, after, the live limits' new version) restated by this run."""
    marked: list[str] = field(default_factory=list)
    """Every portfolio this run recorded the split for (holding the ticker or not)."""
    backtests: dict[str, str] = field(default_factory=dict)
    """Portfolio id -> what this run did to its backtest (restated, or left alone and why), for those worth a line
    (module docstring, 4)."""
    notes: list[str] = field(default_factory=list)
    """What must be done by hand (the settings file, the limits not restated): part of :meth:`lines`."""

    @property
    def changed(self) -> bool:
        return self.market_applied or bool(self.marked)

    def lines(self) -> list[str]:
        if not self.changed:
            return [f"split {self.split_id} was already applied; nothing changed"]
        out = []
        if self.market_applied:
            out.append(
                f"split {self.split_id}: {self.ticker} {ratio_text(self.ratio)}, last price {self.price_before:g} "
                f"-> {self.price_after:g} (covariance and return window unchanged)"
            )
        for pid, rec in sorted(self.books.items()):
            line = (
                f"  {pid}: {self.ticker} {rec['qty_before']} @ {rec['avg_price_before']} -> "
                f"{rec['qty_after']} @ {rec['avg_price_after']}"
            )
            if Decimal(rec["cash_in_lieu"]) != 0:
                line += f", cash in lieu {rec['cash_in_lieu']} for {rec['fraction']} share(s)"
            out.append(line)
        for pid, (before, after, version) in sorted(self.limits.items()):
            out.append(
                f"  {pid}: live position limit {self.ticker} {before} -> {after} shares (limits version {version})"
            )
        out.extend(f"  {pid}: {text}" for pid, text in sorted(self.backtests.items()))
        return out + self.notes


def apply_split(
    store: Store,
    ticker: str,
    ratio: Fraction,
    *,
    settings: Settings,
    actor: str,
    reason: str = "",
    split_id: str | None = None,
    force: bool = False,
    now: float,
) -> SplitResult:
    """Restate ``ticker``, every book and every live position limit on it for a split of ``ratio`` new shares per
    old one (module docstring). ``settings``: the limits in force for a portfolio whose limits are not stored
    yet, and the settings file's figures the output lists for editing by hand. ``now``: the time the split is
    stamped with (its audit record, the restated books' ``updated_at``, the default id's date); the caller's
    clock, so a replay can pass its data's.

    One MULTI over the market and every book on one Redis server (per slot on a Redis Cluster), WATCHing the
    snapshot, the reference, the split records, every book, its live limits and its backtest, retried when a bar,
    a fill, a limits change or a backtest bar lands meanwhile. Idempotent by ``split_id`` (default
    :func:`default_split_id`). Raises :class:`SplitError` for an unknown ticker or one without a price,
    :class:`SplitConflictError` for an id
    already used for another split, :class:`SplitRepeatedError` for a second split of the ticker with no print
    since the first (or after one, without an id of its own) unless ``force``.
    """
    store.require_schema()
    explicit = split_id is not None
    split_id = split_id or default_split_id(ticker, ratio, now)
    carried: _Attempt | None = None  # what earlier attempts of this run committed (a Redis Cluster: some slots)
    for _ in range(WATCH_RETRIES):
        attempt = _Attempt()
        with slot_transaction(store.client) as pipe:
            try:
                result = _apply_once(
                    store, pipe, ticker, ratio, actor, reason, split_id, now, settings, explicit, force, attempt,
                    carried,
                )  # fmt: skip
                break
            except redis.WatchError:
                carried = _merged(carried, _committed(store, split_id, attempt))
                continue
    else:
        raise SplitConflictError(f"the store kept changing during split {split_id}; nothing more was applied")
    if result.changed:
        result.notes = by_hand_notes(store, settings, ticker, ratio)
    return result


@dataclass
class _Attempt:
    """What one attempt of :func:`apply_split` queued: its own result, the split records it wrote (portfolio id;
    None: the market's) and the books whose backtest it restated.

    On one Redis a WatchError aborts the whole MULTI; on a Redis Cluster it aborts one slot's, after the slots
    before it committed (engine/store/slots.py). The retry then finds those done (their split records exist) and
    leaves them alone, so what they did is carried over from here (:func:`_committed`, :func:`_merged`): the
    run's result and its ``rd:audit`` record say everything the run did, not only its last attempt."""

    result: SplitResult | None = None
    records: dict[str | None, dict[str, Any]] = field(default_factory=dict)
    backtests_restated: set[str] = field(default_factory=set)


def _committed(store: Store, split_id: str, attempt: _Attempt) -> _Attempt | None:
    """The part of a failed ``attempt`` that committed all the same: the market and each book whose stored split
    record is the very record the attempt wrote (its time and actor name this run; a concurrent run of the same
    id writes its own). None when nothing did (always on one Redis)."""
    if attempt.result is None:  # it failed before its MULTI: nothing queued
        return None
    own = attempt.result
    kept = _Attempt(replace(own, market_applied=False, books={}, limits={}, marked=[], backtests={}, notes=[]))
    assert kept.result is not None
    for pid, record in attempt.records.items():
        if store.read_split(split_id, pid) != decode_json(encode_json(record)):
            continue
        kept.records[pid] = record
        if pid is None:
            kept.result.market_applied = True
            continue
        kept.result.marked.append(pid)
        if pid in own.books:
            kept.result.books[pid] = own.books[pid]
        if pid in own.limits:
            kept.result.limits[pid] = own.limits[pid]
        if pid in own.backtests:
            kept.result.backtests[pid] = own.backtests[pid]
        if pid in attempt.backtests_restated:
            kept.backtests_restated.add(pid)
    return kept if kept.records else None


def _merged(earlier: _Attempt | None, later: _Attempt | None) -> _Attempt | None:
    """``earlier`` and ``later`` together (each book is restated by one attempt at most: a book whose split
    record exists is not pending again)."""
    if earlier is None or earlier.result is None:
        return later
    if later is None or later.result is None:
        return earlier
    a, b = earlier.result, later.result
    result = replace(
        b,
        market_applied=a.market_applied or b.market_applied,
        books={**a.books, **b.books},
        limits={**a.limits, **b.limits},
        marked=a.marked + [pid for pid in b.marked if pid not in a.marked],
        backtests={**a.backtests, **b.backtests},
    )
    return _Attempt(result, {**earlier.records, **later.records}, earlier.backtests_restated | later.backtests_restated)


def _apply_once(
    store: Store,
    pipe: Any,
    ticker: str,
    ratio: Fraction,
    actor: str,
    reason: str,
    split_id: str,
    now: float,
    settings: Settings,
    explicit: bool,
    force: bool,
    attempt: _Attempt,
    carried: _Attempt | None,
) -> SplitResult:
    """One attempt: WATCH, read, one MULTI (per slot on a cluster). Fills ``attempt`` with what it queues before
    the EXEC; returns the run's result, ``carried`` (what earlier attempts committed) included."""
    registered = store.portfolio_ids()
    book_keys = [k for pid in registered for k in _book_keys(pid)]
    pipe.watch(MARKET_KEY, REFERENCE_KEY, SPLITS_KEY, *book_keys)
    done = store.read_split(split_id, conn=pipe)
    snap, since = store.read_market_state(pipe)  # the bars since each print go on under the new version
    if done is not None:
        if done.get("ticker") != ticker or Fraction(str(done.get("ratio"))) != ratio:
            raise SplitConflictError(
                f"split id {split_id!r} was used for {done.get('ticker')} {done.get('ratio_text')}, not {ticker} "
                f"{ratio_text(ratio)}"
            )
        price_before, price_after = float(done["price_before"]), float(done["price_after"])
        portfolios = [pid for pid in done.get("portfolios", []) if pid in registered]
    else:
        if ticker not in snap.tickers:
            raise SplitError(f"{ticker} is not in the universe ({', '.join(snap.tickers)})")
        price_before = float(snap.prices[snap.tickers.index(ticker)])
        if not (math.isfinite(price_before) and price_before > 0):
            raise SplitError(f"{ticker} has no valid last price ({price_before}): nothing to restate it from")
        if not force:
            _refuse_a_repeat(store.read_splits(pipe), snap, ticker, ratio, explicit)
        price_after = float(Fraction(price_before) / ratio)
        portfolios = list(registered)
    result = SplitResult(split_id, ticker, ratio, price_before, price_after)
    pending = [pid for pid in portfolios if store.read_split(split_id, pid, conn=pipe) is None]
    books = {pid: store.read_portfolio(pid, pipe) for pid in pending}
    limits = {pid: _limits_plan(store.read_limits(pid, pipe), settings.limits_for(pid), pid, ticker, ratio, split_id,
                                actor, now) for pid in pending}  # fmt: skip
    newest = newest_tick_version(store)
    backtests = {
        pid: backtest_plan(
            store, pipe, pid, books[pid], ticker, lambda state: restate_backtest(state, ticker, ratio),
            lambda n: f"last price / {ratio}, {n} open forecast(s) in post-split shares", "split", newest,
        )
        for pid in pending
    }  # fmt: skip
    reference = store.read_reference_prices(pipe) if done is None else {}
    reference_ts = store.read_reference_ts(pipe) if done is None else None
    common = {
        "ts": now, "actor": actor, "action": "split", "split_id": split_id, "ticker": ticker,
        "ratio": str(ratio), "ratio_text": ratio_text(ratio), "reason": reason,
        "price_before": price_before, "price_after": price_after, "forced": force,
    }  # fmt: skip
    pipe.multi()
    if done is None:  # the market first: its record is what a rerun completes the books from
        price_ts = float(snap.price_ts[snap.tickers.index(ticker)])
        before = reference_of(reference, ticker)
        reference_after = None if before is None else float(Fraction(before) / ratio)
        record = {
            **common, "portfolios": portfolios, "market_version_before": snap.version,
            "market_version_after": snap.version + 1, "price_ts": price_ts if math.isfinite(price_ts) else None,
            "reference_before": before,
            "reference_after": reference_after,
        }  # fmt: skip
        restate_market(store, pipe, snap, since, ticker, price_after, reference, reference_after, reference_ts)
        store.record_split(split_id, record, pipe=pipe)
        attempt.records[None] = record
        result.market_applied = True
    for pid, state in books.items():
        rec = _restate_book(store, pipe, state, ticker, ratio, Decimal(repr(price_after)), common, now)
        restated, rec["backtest"], line = backtests[pid]
        if restated is not None:  # the same MULTI as the book and its split record: a rerun never restates it twice
            store.restate_backtest(pid, restated, f"split-{uuid.uuid4().hex}", pipe)
        if line is not None:
            result.backtests[pid] = line
        store.record_split(split_id, rec, pid, pipe)
        attempt.records[pid] = rec
        if restated is not None:
            attempt.backtests_restated.add(pid)
        if rec["qty_before"] != 0:  # a book without the ticker: nothing to say in its audit trail
            store.append_audit(PortfolioKeys(pid).audit, rec, pipe)
            result.books[pid] = rec
        plan = limits[pid]
        if plan is not None:
            (new, change), (before, after) = plan
            store.queue_limits_change(pid, new, change, pipe)
            result.limits[pid] = (before, after, new.version)
        result.marked.append(pid)
    attempt.result = result
    run = _merged(carried, attempt)  # this attempt and what earlier ones committed: what the run did
    assert run is not None and run.result is not None
    total = run.result
    if total.changed:  # the global record commits last (engine/store/slots.py)
        restated = {pid: [b, a] for pid, (b, a, _) in total.limits.items()}
        store.append_audit(GLOBAL_AUDIT_KEY, {**common, "market_restated": total.market_applied,
                                              "portfolios": sorted(total.books),
                                              "position_limits_restated": restated,
                                              "backtests_restated": sorted(run.backtests_restated)}, pipe)  # fmt: skip
    pipe.execute()
    return total


def _book_keys(pid: str) -> tuple[str, str, str, str, str]:
    keys = PortfolioKeys(pid)
    return keys.state, keys.positions, keys.splits, keys.limits, keys.backtest


def _numbers(value: Any, n: int, name: str, *, positive: bool) -> list[float]:
    """``value`` as ``n`` finite floats (> 0 when ``positive``); ValueError otherwise."""
    if not isinstance(value, list) or len(value) != n:
        raise ValueError(f"{name} is not a list of {n} numbers")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or (positive and v <= 0):
            raise ValueError(f"{name} holds {v!r}")
        out.append(float(v))
    return out


def restate_backtest(state: Mapping[str, Any], ticker: str, ratio: Fraction) -> tuple[dict[str, Any], int] | None:
    """A stored backtest state (logic/backtest.py ``Backtester.store_state``, plain JSON) in post-split units
    (module docstring, 4): the ticker's last price and its price in every open forecast divided by ``ratio``
    (exactly, then rounded to the nearest float, as the market's last price is), the forecasts' quantity of it
    multiplied by it. The next bar's return of the ticker is then ~0 and an open horizon closes on the P&L of the
    value it held. Returns the new state and the number of open forecasts restated; None when the backtest does
    not model the ticker. Raises ValueError when the state is not of the shape the backtest writes."""
    return restate_backtest_prices(
        state, ticker, lambda p: float(Fraction(p) / ratio), lambda q: float(Fraction(q) * ratio)
    )


def restate_backtest_prices(
    state: Mapping[str, Any], ticker: str, price: Callable[[float], float], qty: Callable[[float], float] | None = None
) -> tuple[dict[str, Any], int] | None:
    """``state`` (a stored backtest's JSON) with the ticker's last price and its price in every open forecast
    mapped by ``price`` and, when ``qty`` is given, the forecasts' quantity of it by ``qty`` (a split,
    :func:`restate_backtest`; a dividend, engine/dividends.py). Returns the new state and the number of open
    forecasts restated; None when the backtest does not model the ticker. Raises ValueError when the state is not
    of the shape the backtest writes, or a restated price is not positive."""
    tickers = state.get("tickers")
    if not isinstance(tickers, list) or not all(isinstance(t, str) for t in tickers):
        raise ValueError("its tickers are not a list of names")
    if ticker not in tickers:
        return None
    i, n = tickers.index(ticker), len(tickers)

    def positive(value: float, name: str) -> float:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} of {ticker} would be {value!r}")
        return value

    out = dict(state)
    if state.get("last_prices") is not None:
        last = _numbers(state["last_prices"], n, "last_prices", positive=True)
        last[i] = positive(price(last[i]), "the last price")
        out["last_prices"] = last
    pending = state.get("pending")
    if not isinstance(pending, dict):
        raise ValueError("its open forecasts are not a JSON object")
    restated: dict[str, Any] = {}
    for track, forecast in pending.items():
        if not isinstance(forecast, dict):
            raise ValueError(f"open forecast {track!r} is not a JSON object")
        prices = _numbers(forecast.get("prices"), n, f"pending.{track}.prices", positive=True)
        qtys = _numbers(forecast.get("qty"), n, f"pending.{track}.qty", positive=False)
        prices[i] = positive(price(prices[i]), f"the start price of open forecast {track!r}")
        if qty is not None:
            qtys[i] = qty(qtys[i])
        restated[track] = {**forecast, "prices": prices, "qty": qtys}
    out["pending"] = restated
    return out, len(restated)


def newest_tick_version(store: Store) -> int | None:
    """The market version of the newest tick event (None: none, or it does not decode): a backtest whose last bar
    is older has bars still to be fed, at pre-split prices."""
    try:
        tick = store.last_tick()
    except (StoreError, ValueError):
        return None
    return None if tick is None else tick.version


def backtest_plan(
    store: Store,
    pipe: Any,
    pid: str,
    book: PortfolioState,
    ticker: str,
    restate: Callable[[Mapping[str, Any]], tuple[dict[str, Any], int] | None],
    what: Callable[[int], str],
    action: str,
    newest: int | None,
) -> tuple[dict[str, Any] | None, str, str | None]:
    """(the restated backtest state to write or None, what the audit record says, the output line or None) for
    portfolio ``pid`` (module docstring, 4). ``restate``: the state restated (:func:`restate_backtest_prices`),
    ``what``: what that did, given the number of open forecasts restated, ``action``: ``split`` or ``dividend``."""
    held = (position := book.positions.get(ticker)) is not None and position.qty != 0
    try:
        stored = store.read_backtest_json(pid, pipe)
        if stored is None:
            line = f"no backtest stored: nothing to restate for {ticker}" if held else None
            return None, "absent", line
        state, version = stored
        restated = restate(state)
    except (StoreError, ValueError) as exc:
        why = f"backtest unreadable ({exc}): left as it is, not restated for {ticker}"
        return None, f"unreadable: {exc}", f"{why} (its runner refuses it as well until it is repaired)"
    if restated is None:
        return None, "not modelled", None
    new, forecasts = restated
    line = f"backtest restated: {ticker} {what(forecasts)} (covariance, window and counts unchanged)"
    if newest is not None and version < newest:
        line += (
            f"; WARNING: its last bar fed is market version {version}, the newest tick {newest}: a bar the backtest "
            f"runner has still to feed is at the pre-{action} price of {ticker} (a phantom return): stop the stream "
            f"daemon and let the runner catch up before a {action}"
        )
    return new, "restated", line


def printed_since(earlier: dict[str, Any], snap: MarketSnapshot, ticker: str) -> bool:
    """Whether ``ticker`` has had a print since the split ``earlier`` (its record): its price time moved past the
    one recorded with the split (a record without one: the market version moved past the split's)."""
    recorded = earlier.get("price_ts")
    if isinstance(recorded, int | float) and not isinstance(recorded, bool):
        current = float(snap.price_ts[snap.tickers.index(ticker)])
        return math.isfinite(current) and current > float(recorded)
    after = earlier.get("market_version_after")
    return not isinstance(after, int) or snap.version > after


def latest_of(records: Mapping[str, Mapping[str, Any]], ticker: str) -> tuple[dict[str, Any], str] | None:
    """The newest of ``records`` (by id: splits, dividends) on ``ticker``, its id under ``id``, with its time
    written out in UTC; None when none is on it."""
    earlier = [{**rec, "id": rid} for rid, rec in records.items() if rec.get("ticker") == ticker]
    if not earlier:
        return None
    last = max(earlier, key=lambda rec: float(rec.get("ts", 0.0)))
    return last, time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(last.get("ts", 0.0))))


def _refuse_a_repeat(
    records: dict[str, dict[str, Any]], snap: MarketSnapshot, ticker: str, ratio: Fraction, explicit: bool
) -> None:
    """Raise :class:`SplitRepeatedError` when ``ticker`` was split before under another id and has not printed
    since, or has but this split has no id of its own (module docstring)."""
    found = latest_of(records, ticker)
    if found is None:
        return
    last, when = found
    what = (
        f"{ticker} was already split by {last['id']!r} ({last.get('ratio_text')}, last price "
        f"{last.get('price_before')} -> {last.get('price_after')}, at {when} by {last.get('actor')})"
    )
    if not printed_since(last, snap, ticker):
        raise SplitRepeatedError(
            f"{what} and has had no print since: this {ratio_text(ratio)} would split the same shares again. "
            f"If {ticker} really splits twice before it prints, run it with --force"
        )
    if not explicit:
        raise SplitRepeatedError(
            f"{what}; {ticker} has printed since, but this {ratio_text(ratio)} has only the default id: give a new "
            "split its own --split-id (or --force)"
        )


def _limits_plan(
    stored: StoredLimits | None,
    fallback: Limits,
    pid: str,
    ticker: str,
    ratio: Fraction,
    split_id: str,
    actor: str,
    now: float,
) -> tuple[tuple[StoredLimits, dict[str, Any]], tuple[int, int]] | None:
    """The live limits change restating the portfolio's position limit on ``ticker`` (module docstring, 3), with
    the limit before and after; None when the live limits have none on it."""
    current = stored.limits if stored is not None else fallback
    cap = current.position_limits.get(ticker)
    if cap is None:
        return None
    new_cap = restated_cap(cap, ratio)
    change = {"position_limits": {**current.position_limits, ticker: new_cap}}
    why = f"split {split_id}: {ticker} {ratio_text(ratio)}, position limit restated in post-split shares"
    plan = plan_limits_change(pid, stored, fallback, change, actor=actor, reason=why, now=now)
    return None if plan is None else (plan, (cap, new_cap))


def by_hand_notes(store: Store, settings: Settings, ticker: str, ratio: Fraction) -> list[str]:
    """What the split cannot restate and a person must (module docstring): the settings file's position limits
    on and holdings of ``ticker``, and the live ``max_order_qty`` / ``max_position_qty`` of each portfolio."""
    file: list[str] = []
    cap = settings.limits.position_limits.get(ticker)
    if cap is not None:
        file.append(f"[limits] position_limits.{ticker} = {cap} -> {restated_cap(cap, ratio)}")
    for p in settings.portfolios:
        own = p.limits.position_limits.get(ticker)
        if own is not None and own != cap:
            file.append(f"[[portfolios]] {p.id} limits.position_limits.{ticker} = {own} -> {restated_cap(own, ratio)}")
        held = p.holdings.get(ticker)
        if held:
            file.append(f"[[portfolios]] {p.id} holdings.{ticker} = {held} -> {int(Fraction(held) * ratio)}")
    out = [
        "by hand: riskdesk.toml is not changed: before the next `warmup.py --sync` (which would put the file's "
        f"pre-split {ticker} holdings and limits back) edit "
        + ("; ".join(file) if file else f"any {ticker} holding or position limit you add to it in post-split shares")
    ]
    for pid in store.portfolio_ids():
        limits = store.limits_or(pid, settings.limits_for(pid))
        caps = [f"max_order_qty {limits.max_order_qty}"]
        if limits.max_position_qty is not None and ticker not in limits.position_limits:
            caps.append(f"max_position_qty {limits.max_position_qty} (the cap on {ticker}: it has no position limit)")
        out.append(
            f"by hand: {pid}: {' and '.join(caps)} (shares of any ticker) not restated: review for {ticker} "
            f"({ratio_text(ratio)}) on the Limits page"
        )
    return out


def reference_of(reference: Mapping[str, float], ticker: str) -> float | None:
    """``ticker``'s collar reference price to restate, or None: none stored, or one that is no price (NaN: the
    gate then has no reference for it), which a restatement leaves as it is."""
    value = reference.get(ticker)
    return value if value is not None and math.isfinite(value) and value > 0 else None


def restate_market(
    store: Store,
    pipe: Any,
    snap: MarketSnapshot,
    since: Float64Array,
    ticker: str,
    price_after: float,
    reference: dict[str, float],
    reference_after: float | None,
    reference_ts: float | None,
) -> None:
    """The adjusted last price in a new snapshot version (same time, price times and matrix) with the same bars
    since each ticker's print (``since``, as read with ``snap``), and the adjusted collar reference
    (``reference_after``, when ``reference`` has the ticker); the stressed matrix and the return window are not
    touched: a split (a dividend, engine/dividends.py) is not a return."""
    prices = snap.prices.copy()
    prices[snap.tickers.index(ticker)] = price_after
    store.write_market(replace(snap, version=snap.version + 1, prices=prices), pipe)
    store.write_print_gaps(snap.version + 1, since, pipe)  # a split is no print: every count goes on as it was
    if ticker in reference and reference_after is not None:
        reference = {**reference, ticker: reference_after}
        ts = reference_ts if reference_ts is not None else snap.ts
        store.write_reference_prices(tuple(reference), np.array(list(reference.values()), dtype=float), ts, pipe)


def _restate_book(
    store: Store,
    pipe: Any,
    state: PortfolioState,
    ticker: str,
    ratio: Fraction,
    price_after: Decimal,
    common: dict[str, Any],
    now: float,
) -> dict[str, Any]:
    """Write the book's restated position (and cash, realized P&L for a cash in lieu); return its audit record."""
    old = state.positions.get(ticker)
    split = split_position(old, ratio, price_after)
    if old is not None and old.qty != 0:
        flat = split.position is not None and split.position.qty == 0 and split.position.realized_pnl == 0
        store.write_position(state.portfolio_id, ticker, None if flat else split.position, pipe)
    cash_after = state.cash + split.cash_in_lieu
    if split.cash_in_lieu != 0 or split.realized != 0:
        store.write_portfolio_state(
            replace(state, cash=cash_after, realized_pnl=state.realized_pnl + split.realized, updated_at=now), pipe
        )
    new = split.position
    qty_before = 0 if old is None else old.qty
    qty_after = 0 if new is None else new.qty
    return {
        **common,
        "portfolio_id": state.portfolio_id,
        "qty_before": qty_before,
        "qty_after": qty_after,
        "avg_price_before": "0" if old is None else str(old.avg_price),
        "avg_price_after": "0" if new is None else str(new.avg_price),
        "cost_basis_before": "0" if old is None else str(qty_before * old.avg_price),
        "cost_basis_after": "0" if new is None else str(qty_after * new.avg_price),
        "fraction": str(split.fraction),
        "cash_in_lieu": str(split.cash_in_lieu),
        "realized_in_lieu": str(split.realized),
        "cash_before": str(state.cash),
        "cash_after": str(cash_after),
    }
