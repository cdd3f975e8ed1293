"""Stock splits: restate the market and every book in post-split units, so a split is not a return.

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
   no EWMA update, no window row), and the next print's return is computed against the adjusted price;
2. each book (``pf:{<id>}``, one MULTI per portfolio, WATCHed against a fill landing meanwhile): the quantity
   is multiplied by the ratio and the average price divided by it (the cost basis ``qty x avg`` is kept).
   Quantities stay whole shares: a fractional remainder (1-for-10 of 25 shares: 2.5) is truncated towards
   zero (2) and settled as **cash in lieu** at the adjusted price, rounded to the cent (half to even), as
   brokers do; its difference from the fraction's cost basis is booked as realized P&L of the position and of
   the book. A short's fraction is bought in: the book pays the cash. The split changes no equity, P&L,
   drawdown peak or VaR (the risk of ``2q`` shares at ``p/2`` is that of ``q`` at ``p``) but for that cent
   rounding of a cash in lieu;
3. one audit record on ``rd:audit`` and one on each portfolio's ``:audit`` (actor ``warmup:local:<os user>``,
   the ratio, the prices, quantities, average prices and cash before and after);
4. the split is recorded by its id in ``mkt:{m}:splits`` and each book's ``pf:{<id>}:splits`` in the same
   MULTIs, so a rerun with the same id changes nothing, and a run interrupted between portfolios (on a Redis
   Cluster one MULTI per slot) completes only the books not yet split, at the recorded adjusted price.

Operating procedure: apply the split **before the first post-split print**, with the stream daemon stopped
(before the open, or halt the feed), then start the daemon. The daemon keeps the collar's session close and the
price filter's remembered jumps in memory only (engine/collar.py, engine/price_filter.py): a daemon left
running would re-anchor the next session's collar reference at its pre-split close. On a Redis Cluster stop
the monitors too: the market and each book commit one slot after the other, and a monitor valuing a book
between the two would see a phantom move. On one Redis server the whole split is a single MULTI.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import redis

from engine.errors import RiskdeskError
from engine.records import MarketSnapshot, PortfolioState, Position
from engine.store import GLOBAL_AUDIT_KEY, MARKET_KEY, REFERENCE_KEY, PortfolioKeys, Store
from engine.store.keys import SPLITS_KEY
from engine.store.slots import slot_transaction

MAX_SPLIT_TERM = 1000
"""Largest term of a split ratio: 1000-for-1 and 1-for-1000 are accepted, 1001-for-1 (or a ratio such as
0.1234, 617-for-5000) is refused as a typo. Real splits are small whole numbers (2-for-1, 3-for-2, 1-for-10)."""
CENT = Decimal("0.01")
"""Cash in lieu is paid in cents."""
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
    """``AAA-2-for-1-2026-12-01`` (UTC date): the same split run twice the same day is one split."""
    return f"{ticker}-{ratio_text(ratio)}-{time.strftime('%Y-%m-%d', time.gmtime(now))}"


@dataclass(frozen=True)
class BookSplit:
    """One position restated (:func:`split_position`)."""

    position: Position | None
    """The new position (None: the book had none; a flat position keeps the realized P&L of its fraction)."""
    cash_in_lieu: Decimal
    """Paid to the book (negative: paid by a short), rounded to the cent."""
    realized: Decimal
    """The cash in lieu less the fraction's cost basis: realized P&L."""
    fraction: Fraction
    """The shares settled in cash (signed)."""


def split_position(position: Position | None, ratio: Fraction, price_after: Decimal) -> BookSplit:
    """``position`` after a split of ``ratio`` whose adjusted price is ``price_after`` (module docstring, 2)."""
    if position is None or position.qty == 0:
        return BookSplit(position, Decimal(0), Decimal(0), Fraction(0))
    exact = Fraction(position.qty) * ratio
    whole = int(exact)  # towards zero: a short's fraction is bought in as a long's is sold
    fraction = exact - whole
    avg_after = position.avg_price * Decimal(ratio.denominator) / Decimal(ratio.numerator)
    # multiply before dividing: a fraction of n/d shares costs n x avg / d, exact whenever that is a decimal
    num, den = Decimal(fraction.numerator), Decimal(fraction.denominator)
    cash = (num * price_after / den).quantize(CENT, rounding=ROUND_HALF_EVEN) if fraction else Decimal(0)
    realized = cash - num * avg_after / den if fraction else Decimal(0)
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
    """Portfolio id -> its audit record, for the books this run restated."""

    @property
    def changed(self) -> bool:
        return self.market_applied or bool(self.books)

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
        return out


def apply_split(
    store: Store,
    ticker: str,
    ratio: Fraction,
    *,
    actor: str,
    reason: str = "",
    split_id: str | None = None,
    now: float | None = None,
) -> SplitResult:
    """Restate ``ticker`` and every book for a split of ``ratio`` new shares per old one (module docstring).

    One MULTI over the market and every book on one Redis server (per slot on a Redis Cluster), WATCHing the
    snapshot, the reference, the split records and every book, retried when a bar or a fill lands meanwhile.
    Idempotent by ``split_id`` (default :func:`default_split_id`). Raises :class:`SplitError` for an unknown
    ticker or one without a price, :class:`SplitConflictError` for an id already used for another split.
    """
    now = time.time() if now is None else now
    store.require_schema()
    split_id = split_id or default_split_id(ticker, ratio, now)
    for _ in range(WATCH_RETRIES):
        with slot_transaction(store.client) as pipe:
            try:
                return _apply_once(store, pipe, ticker, ratio, actor, reason, split_id, now)
            except redis.WatchError:
                continue
    raise SplitConflictError(f"the store kept changing during split {split_id}; nothing more was applied")


def _apply_once(
    store: Store, pipe: Any, ticker: str, ratio: Fraction, actor: str, reason: str, split_id: str, now: float
) -> SplitResult:
    registered = store.portfolio_ids()
    book_keys = [k for pid in registered for k in _book_keys(pid)]
    pipe.watch(MARKET_KEY, REFERENCE_KEY, SPLITS_KEY, *book_keys)
    done = store.read_split(split_id, conn=pipe)
    snap = store.read_market(pipe)
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
        price_after = float(Fraction(price_before) / ratio)
        portfolios = list(registered)
    result = SplitResult(split_id, ticker, ratio, price_before, price_after)
    pending = [pid for pid in portfolios if store.read_split(split_id, pid, conn=pipe) is None]
    books = {pid: store.read_portfolio(pid, pipe) for pid in pending}
    reference = store.read_reference_prices(pipe) if done is None else {}
    reference_ts = store.read_reference_ts(pipe) if done is None else None
    common = {
        "ts": now, "actor": actor, "action": "split", "split_id": split_id, "ticker": ticker,
        "ratio": str(ratio), "ratio_text": ratio_text(ratio), "reason": reason,
        "price_before": price_before, "price_after": price_after,
    }  # fmt: skip
    pipe.multi()
    if done is None:  # the market first: its record is what a rerun completes the books from
        record = {
            **common, "portfolios": portfolios, "market_version_before": snap.version,
            "market_version_after": snap.version + 1,
            "reference_before": reference.get(ticker),
            "reference_after": None if ticker not in reference else float(Fraction(reference[ticker]) / ratio),
        }  # fmt: skip
        _restate_market(store, pipe, snap, ticker, ratio, price_after, dict(reference), reference_ts)
        store.record_split(split_id, record, pipe=pipe)
        result.market_applied = True
    for pid, state in books.items():
        rec = _restate_book(store, pipe, state, ticker, ratio, Decimal(repr(price_after)), common, now)
        store.record_split(split_id, rec, pid, pipe)
        store.append_audit(PortfolioKeys(pid).audit, rec, pipe)
        result.books[pid] = rec
    if result.changed:  # the global record commits last (engine/store/slots.py)
        store.append_audit(GLOBAL_AUDIT_KEY, {**common, "market_restated": result.market_applied,
                                              "portfolios": sorted(result.books)}, pipe)  # fmt: skip
    pipe.execute()
    return result


def _book_keys(pid: str) -> tuple[str, str, str]:
    keys = PortfolioKeys(pid)
    return keys.state, keys.positions, keys.splits


def _restate_market(
    store: Store,
    pipe: Any,
    snap: MarketSnapshot,
    ticker: str,
    ratio: Fraction,
    price_after: float,
    reference: dict[str, float],
    reference_ts: float | None,
) -> None:
    """The adjusted last price in a new snapshot version (same time, price times and matrix), and the adjusted
    collar reference (the stressed matrix and the return window are not touched: a split is not a return)."""
    prices = snap.prices.copy()
    prices[snap.tickers.index(ticker)] = price_after
    store.write_market(replace(snap, version=snap.version + 1, prices=prices), pipe)
    if ticker in reference:
        reference[ticker] = float(Fraction(reference[ticker]) / ratio)
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
    return {
        **common,
        "portfolio_id": state.portfolio_id,
        "qty_before": 0 if old is None else old.qty,
        "qty_after": 0 if new is None else new.qty,
        "avg_price_before": "0" if old is None else str(old.avg_price),
        "avg_price_after": "0" if new is None else str(new.avg_price),
        "fraction": str(split.fraction),
        "cash_in_lieu": str(split.cash_in_lieu),
        "realized_in_lieu": str(split.realized),
        "cash_before": str(state.cash),
        "cash_after": str(cash_after),
    }
