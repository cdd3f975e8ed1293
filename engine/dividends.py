"""Cash dividends on their ex-date: the price drop booked as cash, so an ex-date is not a loss and not a return.

On the ex-dividend date a stock opens lower by the dividend ``D``. Left alone, every long holder's equity falls by
``qty x D`` with nothing booked against it (a phantom loss in the daily P&L, the drawdowns, the loss alerts and
the automated de-risking; a short shows a phantom gain), the stream daemon's EWMA matrix takes the drop as a
return ``ln((P - D) / P)``, and the continuous VaR backtest scores it as a loss (a phantom exceedance).
``python warmup.py --dividend TICKER AMOUNT`` (:func:`apply_dividend`) books it instead, the way
:func:`engine.corporate_actions.apply_split` restates a split (whose helpers it reuses):

1. the market (``mkt:{m}``, one MULTI): the ticker's stored last price ``P`` (the price filter's reference for
   the next print) becomes ``P - D`` and its collar reference price ``ref - D``, both computed in decimal on the
   prices' shortest written form, then stored as the nearest float; the snapshot version is bumped (a running
   daemon reloads instead of writing the old price back) and the bars since each ticker's print are written
   again under the new version, unchanged. The covariance, the stressed matrix and the window of standardized
   returns are not touched: the next print at ``P - D`` is a zero return. Refused (:class:`DividendError`,
   nothing written): an amount that is not a finite positive decimal or is finer than a millionth of a dollar,
   an unknown ticker, a ticker without a valid price, an amount of at least the price or of at least the collar
   reference (the price would not stay positive), and unless forced one of a quarter of the price or more (a
   typo more often than a special dividend). A NaN collar reference (none usable) is left as it is;
2. each book holding the ticker (``pf:{<id>}``, one MULTI per portfolio, WATCHed against a fill landing
   meanwhile): ``cash += qty x D`` rounded to the cent, half to even (a long receives the dividend, a short pays
   it in lieu), booked as realized P&L of the position and of the book by the same amount; quantity and average
   price unchanged. Equity ``cash + qty x price`` is then unchanged but for that cent rounding (the price falls by
   ``D``, the cash rises by ``qty x D``), and so are the daily P&L, the drawdowns and ``pnl.total`` (realized up,
   unrealized down by the same amount). A book without a position in the ticker whose backtest does not model it
   is not touched at all (no record, no output line, no audit record): the market's record lists the books the
   dividend was booked to at the ex-date with the quantity each held (``entitled``), and a rerun completes only
   those, on that quantity (a position opened on the ex-date is not entitled to it; one a fill changed before
   its slot committed, on a Redis Cluster, is paid what it held);
3. each portfolio's continuous VaR backtest modelling the ticker (``pf:{<id>}:backtest``, in the MULTI of its
   book): its last price of the ticker and the ticker's start price in each open forecast minus ``D``
   (:func:`engine.corporate_actions.restate_backtest_prices`; quantities unchanged), so the next bar is no
   return and a horizon spanning the ex-date closes on the total return (price change plus dividend), not on a
   phantom loss. Covariance, window, counts, VaRs and records are not touched; a new token makes a running
   runner reload the state. A backtest that is absent or does not decode is left alone, said so;
4. one ``dividend`` audit record on ``rd:audit`` and one on the ``:audit`` of each book holding the ticker
   (actor, amount, prices, collar reference, quantity, cash before and after);
5. the dividend is recorded by its id in ``mkt:{m}:dividends`` and each portfolio's ``pf:{<id>}:dividends`` in
   the same MULTIs, so a rerun with the same id changes nothing and a run interrupted between portfolios (on a
   Redis Cluster one MULTI per slot) books only the books not yet booked, at the recorded prices.

**A second dividend of a ticker** under another id is refused (``DIVIDEND_REPEATED``, naming the earlier one)
while the ticker has had no print since the earlier one, and after a print unless the new one has an id of its
own: the default id carries the UTC date, so the same command run again after midnight UTC would book it twice.
``--force`` overrides both, said so in the audit records.

**The settings file is not changed**: a portfolio's ``cash`` in ``riskdesk.toml`` stays what it was, and a later
``warmup.py --sync`` from the file would take the dividend back out as a capital flow; the command's output names
the portfolios to edit.

Operating procedure: as for a split (engine/corporate_actions.py), before the ex-date's first print with the
stream daemon stopped, and on a Redis Cluster the monitors too. On one Redis server the whole dividend is a
single MULTI.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

import redis

from engine.corporate_actions import (
    CENT,
    WATCH_RETRIES,
    backtest_plan,
    latest_of,
    newest_tick_version,
    printed_since,
    reference_of,
    restate_backtest_prices,
    restate_market,
    round_to,
)
from engine.errors import RiskdeskError
from engine.records import MarketSnapshot, PortfolioState
from engine.settings import Settings
from engine.store import GLOBAL_AUDIT_KEY, MARKET_KEY, REFERENCE_KEY, PortfolioKeys, Store
from engine.store.keys import DIVIDENDS_KEY
from engine.store.slots import slot_transaction


class DividendError(RiskdeskError):
    """A dividend that cannot be applied as asked (nothing was written)."""

    code = "DIVIDEND_INVALID"
    fix = "give `--dividend TICKER AMOUNT` with a ticker of the universe and a cash amount per share below its price"


class DividendConflictError(RiskdeskError):
    """The dividend id was already used for another dividend, or the store kept changing under the dividend."""

    code = "DIVIDEND_CONFLICT"
    fix = "choose another --dividend-id, or stop the stream daemon (and the traders) and run the dividend again"


class DividendRepeatedError(DividendConflictError):
    """The ticker already went ex-dividend under another id and has not printed since, or has printed since but
    the new dividend has no id of its own (module docstring): nothing was written."""

    code = "DIVIDEND_REPEATED"
    fix = (
        "check the earlier dividend named in the message (warmup.py --dividend already booked it); a new dividend "
        "of the ticker after it has printed needs its own --dividend-id, and --force books one anyway"
    )


AMOUNT_QUANTUM = Decimal("0.000001")
"""The finest amount per share accepted: dividends are declared to a few decimals (an amount like ``1E-30`` is
a typo that would change no price yet block the ticker's next dividend as a repeat)."""
LARGE_SHARE = Decimal("0.25")
"""An amount of at least this share of the last price is refused unless forced: a special dividend can be that
large, a typo (25 for 0.25) more often is."""


def check_amount(amount: object) -> Decimal:
    """``amount`` when it is a finite positive :class:`~decimal.Decimal`; :class:`DividendError` otherwise (a
    float is refused too: money is exact)."""
    if not isinstance(amount, Decimal):
        raise DividendError(f"dividend amount {amount!r} is not a Decimal (money is exact: Decimal('0.25'))")
    if not amount.is_finite() or amount <= 0:
        raise DividendError(f"dividend amount {amount} must be a finite positive amount per share")
    if amount != amount.quantize(AMOUNT_QUANTUM, rounding=ROUND_DOWN):
        raise DividendError(
            f"dividend amount {amount} is finer than {AMOUNT_QUANTUM}: dividends are declared to a millionth of "
            "a dollar at most (a typo?)"
        )
    return amount


def parse_amount(text: str) -> Decimal:
    """The cash amount per share from ``"0.25"``, exactly; refused as :func:`check_amount` refuses."""
    try:
        amount = Decimal(str(text).strip())
    except InvalidOperation as exc:
        raise DividendError(f"dividend amount {text!r} is not a number such as 0.25") from exc
    return check_amount(amount)


def amount_text(amount: Decimal) -> str:
    """``0.25`` for ``Decimal("0.250")``: one spelling per amount (the default id, the output)."""
    return format(amount.normalize(), "f")


def default_dividend_id(ticker: str, amount: Decimal, now: float) -> str:
    """``AAA-div-0.25-2026-12-01`` (UTC date): the same dividend run twice the same day is one dividend."""
    return f"{ticker}-div-{amount_text(amount)}-{time.strftime('%Y-%m-%d', time.gmtime(now))}"


def dividend_cash(qty: int, amount: Decimal) -> Decimal:
    """``qty x amount`` rounded half-even to the cent, exactly: paid to a long, by a short (negative)."""
    return round_to(Fraction(qty) * Fraction(amount), CENT)


def ex_price(price: float, amount: Decimal) -> Decimal:
    """``price - amount`` in decimal, on the price's shortest written form (100.1 - 0.25 is 99.85)."""
    return Decimal(repr(float(price))) - amount


@dataclass
class DividendResult:
    """What :func:`apply_dividend` did."""

    dividend_id: str
    ticker: str
    amount: Decimal
    price_before: float
    price_after: float
    market_applied: bool = False
    """The market was adjusted by this run (False: it already was, by an earlier run of the same id)."""
    books: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Portfolio id -> its audit record, for the books holding the ticker that this run booked."""
    marked: list[str] = field(default_factory=list)
    """Every portfolio this run recorded the dividend for (holding the ticker, or whose backtest models it)."""
    backtests: dict[str, str] = field(default_factory=dict)
    """Portfolio id -> what this run did to its backtest, for those worth a line (module docstring, 3)."""
    notes: list[str] = field(default_factory=list)
    """What must be done by hand (the settings file): part of :meth:`lines`."""

    @property
    def changed(self) -> bool:
        return self.market_applied or bool(self.marked)

    def lines(self) -> list[str]:
        if not self.changed:
            return [f"dividend {self.dividend_id} was already applied; nothing changed"]
        out = []
        if self.market_applied:
            out.append(
                f"dividend {self.dividend_id}: {self.ticker} {amount_text(self.amount)} a share, last price "
                f"{self.price_before:g} -> {self.price_after:g} (covariance and return window unchanged)"
            )
        for pid, rec in sorted(self.books.items()):
            side = "received" if rec["qty"] > 0 else "paid in lieu"
            out.append(
                f"  {pid}: {self.ticker} {rec['qty']} shares, dividend {side} {rec['cash']}, cash "
                f"{rec['cash_before']} -> {rec['cash_after']}"
            )
        out.extend(f"  {pid}: {text}" for pid, text in sorted(self.backtests.items()))
        return out + self.notes


def apply_dividend(
    store: Store,
    ticker: str,
    amount: Decimal,
    *,
    settings: Settings,
    actor: str,
    reason: str = "",
    dividend_id: str | None = None,
    force: bool = False,
    now: float,
) -> DividendResult:
    """Book a cash dividend of ``amount`` per share of ``ticker`` on its ex-date (module docstring).
    ``settings``: the settings file's portfolios the output names for editing by hand. ``now``: the time the
    dividend is stamped with (audit records, the books' ``updated_at``, the default id's date).

    One MULTI over the market and every book on one Redis server (per slot on a Redis Cluster), WATCHing the
    snapshot, the reference, the dividend records, every book and its backtest, retried (at most
    :data:`~engine.corporate_actions.WATCH_RETRIES` attempts, then :class:`DividendConflictError`) when a bar, a
    fill or a backtest bar lands meanwhile. Idempotent by ``dividend_id`` (default :func:`default_dividend_id`).
    Raises :class:`DividendError` for a bad amount, an unknown ticker, one without a price or priced at or below
    the amount, :class:`DividendConflictError` for an id already used for another dividend,
    :class:`DividendRepeatedError` for a second dividend of the ticker with no print since the first (or after
    one, without an id of its own) unless ``force``.
    """
    check_amount(amount)
    if dividend_id is not None and not dividend_id.strip():
        raise DividendError("an empty dividend id: give one (--dividend-id) or none (the default id)")
    store.require_schema()
    explicit = dividend_id is not None
    dividend_id = dividend_id or default_dividend_id(ticker, amount, now)
    run = uuid.uuid4().hex  # marks this run's records: a retry finds what its earlier attempts committed
    for _ in range(WATCH_RETRIES):
        with slot_transaction(store.client) as pipe:
            try:
                result = _apply_once(
                    store, pipe, ticker, amount, actor, reason, dividend_id, now, explicit, force, run
                )  # fmt: skip
                break
            except redis.WatchError:
                continue
    else:
        raise DividendConflictError(f"the store kept changing during dividend {dividend_id}; nothing more was booked")
    if result.books:
        result.notes = by_hand_notes(settings, result)
    return result


def _apply_once(
    store: Store,
    pipe: Any,
    ticker: str,
    amount: Decimal,
    actor: str,
    reason: str,
    dividend_id: str,
    now: float,
    explicit: bool,
    force: bool,
    run: str,
) -> DividendResult:
    """One attempt: WATCH, read, one MULTI (per slot on a cluster). Returns the run's result, what its earlier
    attempts committed (records stamped ``run``: on a cluster a WatchError can come after some slots) included."""
    registered = store.portfolio_ids()
    book_keys = [k for pid in registered for k in _book_keys(pid)]
    pipe.watch(MARKET_KEY, REFERENCE_KEY, DIVIDENDS_KEY, *book_keys)
    done = store.read_dividend(dividend_id, conn=pipe)
    snap, since = store.read_market_state(pipe)
    reference = store.read_reference_prices(pipe)
    reference_ts = store.read_reference_ts(pipe)
    if done is not None:
        if done.get("ticker") != ticker or Decimal(str(done.get("amount"))) != amount:
            raise DividendConflictError(
                f"dividend id {dividend_id!r} was used for {done.get('ticker')} {done.get('amount')}, not {ticker} "
                f"{amount_text(amount)}"
            )
        price_before, price_after = float(done["price_before"]), float(done["price_after"])
        candidates = [pid for pid in done.get("portfolios", []) if pid in registered]
    else:
        price_before, price_after = _ex_prices(snap, reference, ticker, amount, force)
        if not force:
            _refuse_a_repeat(store.read_dividends(pipe), snap, ticker, amount, explicit)
        candidates = list(registered)
    result = DividendResult(dividend_id, ticker, amount, price_before, price_after)
    result.market_applied = done is not None and done.get("run") == run
    recorded = {pid: store.read_dividend(dividend_id, pid, conn=pipe) for pid in candidates}
    ours = {pid: rec for pid, rec in recorded.items() if rec is not None and rec.get("run") == run}
    for pid, rec in ours.items():  # booked by an earlier attempt of this run (a Redis Cluster: its slot committed)
        _report(result, pid, rec)
    pending = [pid for pid, rec in recorded.items() if rec is None]
    books = {pid: store.read_portfolio(pid, pipe) for pid in pending}
    newest = newest_tick_version(store)
    backtests = {
        pid: backtest_plan(
            store, pipe, pid, books[pid], ticker,
            lambda state: restate_backtest_prices(state, ticker, lambda p: float(ex_price(p, amount))),
            lambda n: f"last price and {n} open forecast(s)' start price - {amount_text(amount)}", "dividend", newest,
        )
        for pid in pending
    }  # fmt: skip
    if done is None:  # the books the dividend touches: holders, and backtests modelling the ticker (docstring, 2-3)
        pending = [pid for pid in pending if _holds(books[pid], ticker) or backtests[pid][0] is not None]
        entitled = {pid: _qty(books[pid], ticker) for pid in pending}
    else:  # a rerun books the quantity held at the ex-date, as recorded, not one a fill changed since
        entitled = {pid: int(q) for pid, q in (done.get("entitled") or {}).items()}
    common = {
        "ts": now, "actor": actor, "action": "dividend", "dividend_id": dividend_id, "ticker": ticker,
        "amount": str(amount), "reason": reason, "price_before": price_before, "price_after": price_after,
        "forced": force, "run": run,
    }  # fmt: skip
    pipe.multi()
    if done is None:  # the market first: its record is what a rerun completes the books from
        _adjust_market(store, pipe, snap, since, reference, reference_ts, common, entitled)
        result.market_applied = True
    for pid in pending:
        state = books[pid]
        restated, status, line = backtests[pid]
        qty = entitled.get(pid, _qty(state, ticker))  # a record from before "entitled": the book's own
        rec = {**_book_dividend(store, pipe, state, ticker, qty, amount, common, now), "backtest": status,
               "backtest_line": line}  # fmt: skip
        if restated is not None:  # the same MULTI as the book and its record: a rerun never restates it twice
            store.restate_backtest(pid, restated, f"dividend-{uuid.uuid4().hex}", pipe)
        store.record_dividend(dividend_id, rec, pid, pipe)
        if rec["qty"] != 0:  # a book without the ticker: nothing to say in its audit trail
            store.append_audit(PortfolioKeys(pid).audit, rec, pipe)
        _report(result, pid, rec)
        ours[pid] = rec
    if result.changed:  # the global record commits last (engine/store/slots.py)
        restated_pids = sorted(pid for pid, rec in ours.items() if rec["backtest"] == "restated")
        store.append_audit(GLOBAL_AUDIT_KEY, {**common, "market_adjusted": result.market_applied,
                                              "portfolios": sorted(result.books),
                                              "backtests_restated": restated_pids}, pipe)  # fmt: skip
    pipe.execute()
    return result


def _qty(book: PortfolioState, ticker: str) -> int:
    position = book.positions.get(ticker)
    return 0 if position is None else int(position.qty)


def _holds(book: PortfolioState, ticker: str) -> bool:
    return _qty(book, ticker) != 0


def _book_keys(pid: str) -> tuple[str, str, str, str]:
    keys = PortfolioKeys(pid)
    return keys.state, keys.positions, keys.dividends, keys.backtest


def _ex_prices(
    snap: MarketSnapshot, reference: Mapping[str, float], ticker: str, amount: Decimal, force: bool
) -> tuple[float, float]:
    """The ticker's last price and its ex-dividend price (module docstring, 1); :class:`DividendError` when the
    ticker is unknown, has no valid price, the price or collar reference would not stay positive, or (unless
    ``force``) the amount is at least :data:`LARGE_SHARE` of the price."""
    if ticker not in snap.tickers:
        raise DividendError(f"{ticker} is not in the universe ({', '.join(snap.tickers)})")
    price = float(snap.prices[snap.tickers.index(ticker)])
    if not (math.isfinite(price) and price > 0):
        raise DividendError(f"{ticker} has no valid last price ({price}): nothing to take the dividend from")
    after = ex_price(price, amount)
    if after <= 0:
        raise DividendError(
            f"a dividend of {amount_text(amount)} on {ticker} is not below its last price {price:g}: the price "
            "would not stay positive (a typo?)"
        )
    if not force and amount >= LARGE_SHARE * Decimal(repr(price)):
        raise DividendError(
            f"a dividend of {amount_text(amount)} on {ticker} is {float(amount) / price:.0%} of its last price "
            f"{price:g}: a typo? A special dividend that large needs --force"
        )
    before = reference_of(reference, ticker)
    if before is not None and ex_price(before, amount) <= 0:
        raise DividendError(
            f"a dividend of {amount_text(amount)} on {ticker} is not below its collar reference price "
            f"{reference[ticker]:g}: the reference would not stay positive"
        )
    return price, float(after)


def _refuse_a_repeat(
    records: dict[str, dict[str, Any]], snap: MarketSnapshot, ticker: str, amount: Decimal, explicit: bool
) -> None:
    """Raise :class:`DividendRepeatedError` when ``ticker`` went ex-dividend before under another id and has not
    printed since, or has but this dividend has no id of its own (module docstring)."""
    found = latest_of(records, ticker)
    if found is None:
        return
    last, when = found
    what = (
        f"{ticker} already went ex-dividend by {last['id']!r} ({last.get('amount')} a share, last price "
        f"{last.get('price_before')} -> {last.get('price_after')}, at {when} by {last.get('actor')})"
    )
    if not printed_since(last, snap, ticker):
        raise DividendRepeatedError(
            f"{what} and has had no print since: this dividend of {amount_text(amount)} would take the price down "
            f"again. If {ticker} really goes ex-dividend twice before it prints, run it with --force"
        )
    if not explicit:
        raise DividendRepeatedError(
            f"{what}; {ticker} has printed since, but this dividend of {amount_text(amount)} has only the default "
            "id: give a new dividend its own --dividend-id (or --force)"
        )


def _adjust_market(
    store: Store,
    pipe: Any,
    snap: MarketSnapshot,
    since: Any,
    reference: Mapping[str, float],
    reference_ts: float | None,
    common: dict[str, Any],
    entitled: dict[str, int],
) -> None:
    """Queue the ex-dividend market (module docstring, 1) and its record: the books it touches (``portfolios``)
    and the quantity of the ticker each held at the ex-date (``entitled``), which a rerun books."""
    ticker, amount = common["ticker"], Decimal(common["amount"])
    price_ts = float(snap.price_ts[snap.tickers.index(ticker)])
    before = reference_of(reference, ticker)
    reference_after = None if before is None else float(ex_price(before, amount))
    restate_market(store, pipe, snap, since, ticker, common["price_after"], dict(reference), reference_after,
                   reference_ts)  # fmt: skip
    record = {
        **common, "portfolios": list(entitled), "entitled": entitled, "market_version_before": snap.version,
        "market_version_after": snap.version + 1, "price_ts": price_ts if math.isfinite(price_ts) else None,
        "reference_before": reference_of(reference, ticker), "reference_after": reference_after,
    }  # fmt: skip
    store.record_dividend(common["dividend_id"], record, pipe=pipe)


def _book_dividend(
    store: Store,
    pipe: Any,
    state: PortfolioState,
    ticker: str,
    qty: int,
    amount: Decimal,
    common: dict[str, Any],
    now: float,
) -> dict[str, Any]:
    """Queue the book's dividend on the ``qty`` it held at the ex-date (module docstring, 2); return its audit
    record. A position closed since still books the cash, to the book alone."""
    position = state.positions.get(ticker)
    cash = dividend_cash(qty, amount)
    if cash != 0:
        if position is not None:
            store.write_position(
                state.portfolio_id, ticker, replace(position, realized_pnl=position.realized_pnl + cash), pipe
            )
        store.write_portfolio_state(
            replace(state, cash=state.cash + cash, realized_pnl=state.realized_pnl + cash, updated_at=now), pipe
        )
    return {
        **common,
        "portfolio_id": state.portfolio_id,
        "qty": qty,
        "cash": str(cash),
        "cash_before": str(state.cash),
        "cash_after": str(state.cash + cash),
        "realized_pnl_before": str(state.realized_pnl),
        "realized_pnl_after": str(state.realized_pnl + cash),
    }


def _report(result: DividendResult, pid: str, rec: Mapping[str, Any]) -> None:
    """Add a book's record (this attempt's, or an earlier attempt's of the same run) to ``result``."""
    result.marked.append(pid)
    if rec.get("qty", 0) != 0:
        result.books[pid] = dict(rec)
    if rec.get("backtest_line"):
        result.backtests[pid] = str(rec["backtest_line"])


def by_hand_notes(settings: Settings, result: DividendResult) -> list[str]:
    """The settings file's portfolios whose cash a later ``warmup.py --sync`` would take the dividend back out of
    (module docstring)."""
    named = {p.id: p for p in settings.portfolios}
    edits = [
        f"[[portfolios]] {pid} cash = {named[pid].cash} (the book's cash moved by {rec['cash']})"
        for pid, rec in sorted(result.books.items())
        if pid in named and Decimal(rec["cash"]) != 0
    ]
    if not edits:
        return []
    return [
        "by hand: riskdesk.toml is not changed: before the next `warmup.py --sync` (which would book the dividend "
        "back out as a capital flow) edit " + "; ".join(edits)
    ]
