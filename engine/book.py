"""The desk's own book: portfolios loaded from a CSV with their real cost basis, and ``--sync``, which reconciles
seeded portfolios with the settings' ``[[portfolios]]`` or with such a file.

Book file (``python warmup.py --positions book.csv``), UTF-8 CSV with a header::

    portfolio_id,ticker,qty,avg_price,account_type,cash
    main,AAA,1000,101.25,,
    main,BBB,2000,49.10,,
    main,,,,cash,1000000.00
    hedge,DDD,-1000,25.40,,
    hedge,,,,margin,200000.00

- a *position row* names a ticker: ``qty`` is signed whole shares (a short only in a margin account) and
  ``avg_price`` the cost basis per share (> 0); ``account_type`` and ``cash`` stay empty;
- a *portfolio row* leaves ``ticker``, ``qty`` and ``avg_price`` empty and gives ``account_type`` (``cash`` or
  ``margin``) and/or ``cash`` (>= 0, exact decimal); at most one per portfolio;
- the ``account_type`` and ``cash`` columns are optional; what a portfolio's rows do not give comes from its
  ``[[portfolios]]`` entry in the settings (margins always do); a portfolio in neither needs a ``cash``;
- the positions of a portfolio named in the file are exactly its position rows (a ticker not listed is flat).

Refused with ``file:line: reason`` (:class:`BookError`, exit 2 in warm-up, nothing written): a missing
column, a row of the wrong width, a ticker not in the universe, the same ticker twice in a portfolio, a qty
that is not a whole number, a NaN/infinite/<= 0 cost, a negative cash, a short in a cash account, a number not
written out in digits (``1e30``, ``1_000``), a qty over :data:`~engine.settings_types.MAX_QUANTITY` shares or money
over :data:`~engine.settings_types.MAX_MONEY` in absolute value (absurd figures that the equity, the VaR and the
capital flow cannot carry), a portfolio id equal to another one (in the file or in the store) but for case.

Sync (:func:`plan_sync`, :func:`apply_sync`): the desired books (the file's portfolios, or with no file every
``[[portfolios]]`` entry, whose positions keep their stored cost basis and take the market price when new) are
compared with the stored ones; the diff lists account type, cash, margins and each position (qty and cost).
Limits are live in the store (engine/store/limits.py): the sync also compares every configured portfolio's
stored limits with the file's and applies the differences through the Limits page's path (one validated,
versioned change with an audit record before/after per portfolio, :func:`plan_limits_sync`); a portfolio with no
stored limits (never changed live) is left alone: every process reads the file's.
A portfolio the file (or the settings) does not name is never read nor written. A portfolio not in the
store is refused unless ``create``. :func:`apply_sync` writes one MULTI per portfolio (each portfolio's keys
share one hash tag), after WATCHing its state and positions and checking that the diff is still the printed
one; each change gets its own audit record on the portfolio's audit stream, in the same transaction. Values are
compared as numbers: ``100.0`` and ``100`` are the same cost, ``1000000.00`` and ``1000000`` the same cash.

Capital flows: a sync that changes a portfolio's cash or quantities moves money or securities in or out of the
book (a withdrawal, a transfer, a position booked elsewhere); that is not P&L. In the same transaction the sync
computes the flow, the equity change it causes at the stored prices (:func:`capital_flow`: the change of cash plus
each quantity change times its price, a ticker without a usable price counting 0 as the monitor values it), and
moves the portfolio's P&L references by it (:meth:`Store.shift_peaks`: the day open, the day / week / all-time
peaks and the last equity and close seen; the worst drawdown so far stays as recorded), with a ``capital_flow``
audit record (the flow, its cash part, each quantity change and its price). The next snapshot then shows the daily
P&L and drawdowns the book would show without the flow. The prices are those stored when the transaction runs: a
bar written between the monitor's last snapshot and the sync is the monitor's P&L on the old book, as it should.
The monitor's vectorised tick reads the peaks' owner stamps before it reads the books and writes a portfolio only
where its stamp is unchanged (logic/batch_tick.py), so it never measures a book read before the sync against
references shifted by it (that portfolio is redone); the per-portfolio reference path
(``Monitor(vectorised=False)``) merges without a transaction and could, for one tick, if the sync commits between
its read of the books and its merge. The flow is booked at ``now`` (read before the sync commits): both monitor
paths read their clock only after what guards their book read (the vectorised path's owner stamps, the
per-portfolio path's WATCH of the flow ledger), so a history point is stamped after every flow its book holds and
before every flow it does not, and the Performance page puts the flow in the step where the book changed
(logic/stamped_read.py; a replay dates its points by their bars, before the sync's wall-clock stamp: there the flow
shows as a return).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import redis

from engine.errors import ConfigError, RiskdeskError, StoreEmptyError
from engine.records import AccountType, PortfolioState, Position, TradingState, TradingStatus
from engine.settings import Settings, valid_symbol
from engine.settings_types import MAX_MONEY, MAX_QUANTITY
from engine.store import PortfolioKeys, Store
from engine.store.limits import changed_fields
from engine.store.slots import slot_transaction

REQUIRED_COLUMNS = ("portfolio_id", "ticker", "qty", "avg_price")
OPTIONAL_COLUMNS = ("account_type", "cash")
WATCH_RETRIES = 3
"""A portfolio whose book keeps changing under the sync (a trade) this many times is left alone: error."""
BOOK_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
"""A number of the book file: digits, a point for decimals. ``Decimal`` would also read ``1e30`` and ``1_000``: a
book is an export of the desk's positions, where such text is an error, not a figure."""


class BookError(RiskdeskError):
    """A book file or a sync request that cannot be applied as it is (nothing was written)."""

    code = "BOOK_INVALID"
    fix = "correct the book file (format in engine/book.py and README.md) or the command"


@dataclass(frozen=True)
class BookEntry:
    """One portfolio as the file (or the settings) wants it; ``None`` means "not given"."""

    portfolio_id: str
    positions: Mapping[str, Position]
    account_type: str | None = None
    cash: Decimal | None = None
    line: int = 0
    """First line of the portfolio in the file (0: from the settings)."""


@dataclass(frozen=True)
class Book:
    path: Path | None
    entries: Mapping[str, BookEntry]


@dataclass(frozen=True)
class Change:
    """One field of one portfolio: ``field`` is ``account_type``, ``cash``, ``initial_margin``,
    ``maintenance_margin`` or ``position:<TICKER>``; ``before``/``after`` are display strings (None: absent)."""

    portfolio_id: str
    field: str
    before: str | None
    after: str | None

    def __str__(self) -> str:
        return f"{self.portfolio_id}: {self.field}: {self.before or '(none)'} -> {self.after or '(none)'}"

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "before": self.before, "after": self.after}


@dataclass
class SyncPlan:
    """The desired state of each named portfolio and the changes that reach it."""

    desired: dict[str, PortfolioState] = field(default_factory=dict)
    changes: dict[str, list[Change]] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{pid}: new portfolio" for pid in self.created]
        out += [str(c) for pid in sorted(self.changes) for c in self.changes[pid]]
        return out


# -- reading -----------------------------------------------------------------------------------------------------


def read_book(path: str | Path, universe: Iterable[str]) -> Book:
    """Read and check a book file (format in the module docstring); raise :class:`BookError`."""
    path = Path(path)
    universe = set(universe)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = [(i, r) for i, r in enumerate(csv.reader(fh), start=1) if any(c.strip() for c in r)]
    except FileNotFoundError:
        raise BookError(f"{path}:0: book file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BookError(f"{path}:0: cannot read the file ({exc})") from None
    if not rows:
        raise BookError(f"{path}:1: the file is empty")
    hline, header = rows[0]
    names = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    unknown = [c for c in names if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown or len(set(names)) != len(names):
        raise BookError(
            f"{path}:{hline}: header must be {','.join(REQUIRED_COLUMNS)}[,account_type][,cash] "
            f"(missing {missing}, unknown {unknown})"
        )
    col = {n: i for i, n in enumerate(names)}
    positions: dict[str, dict[str, Position]] = {}
    terms: dict[str, tuple[str | None, Decimal | None, int]] = {}
    first_line: dict[str, int] = {}
    by_case: dict[str, str] = {}
    for line, row in rows[1:]:
        if len(row) != len(names):
            raise BookError(f"{path}:{line}: expected {len(names)} fields, found {len(row)}")
        cell = {n: row[i].strip() for n, i in col.items()}
        pid = cell["portfolio_id"]
        if not valid_symbol(pid):
            raise BookError(f"{path}:{line}: invalid portfolio id {pid!r}")
        if by_case.setdefault(pid.lower(), pid) != pid:
            raise BookError(f"{path}:{line}: portfolio id {pid!r} differs from {by_case[pid.lower()]!r} only in case")
        first_line.setdefault(pid, line)
        positions.setdefault(pid, {})
        if cell["ticker"]:
            if cell.get("account_type") or cell.get("cash"):
                raise BookError(f"{path}:{line}: a position row leaves account_type and cash empty")
            ticker = cell["ticker"]
            if ticker not in universe:
                raise BookError(f"{path}:{line}: ticker {ticker!r} is not in the universe")
            if ticker in positions[pid]:
                raise BookError(f"{path}:{line}: {ticker} appears twice in portfolio {pid}")
            qty = _whole(path, line, cell["qty"])
            cost = _money(path, line, "avg_price", cell["avg_price"])
            if cost <= 0:
                raise BookError(f"{path}:{line}: avg_price {cell['avg_price']!r} must be > 0")
            if qty != 0:
                positions[pid][ticker] = Position(qty=qty, avg_price=cost)
        else:
            if cell["qty"] or cell["avg_price"]:
                raise BookError(f"{path}:{line}: qty and avg_price need a ticker")
            if pid in terms:
                raise BookError(f"{path}:{line}: a second portfolio row for {pid}")
            account = cell.get("account_type") or None
            if account is not None and account not in tuple(AccountType):
                raise BookError(f"{path}:{line}: account_type {account!r} is not one of {list(AccountType)}")
            cash = _money(path, line, "cash", cell["cash"]) if cell.get("cash") else None
            if cash is not None and cash < 0:
                raise BookError(f"{path}:{line}: cash {cell['cash']!r} must be >= 0")
            if account is None and cash is None:
                raise BookError(f"{path}:{line}: a portfolio row needs account_type or cash")
            terms[pid] = (account, cash, line)
    entries = {}
    for pid, pos in positions.items():
        account, cash, _ = terms.get(pid, (None, None, 0))
        entries[pid] = BookEntry(pid, pos, account, cash, first_line[pid])
    return Book(path, entries)


def book_from_settings(settings: Settings) -> Book:
    """Every ``[[portfolios]]`` entry as a book whose positions have no cost basis yet (``avg_price`` 0: keep
    the stored one, or take the market price for a new position)."""
    entries = {
        p.id: BookEntry(
            p.id,
            {t: Position(qty=q, avg_price=Decimal(0)) for t, q in p.holdings.items() if q != 0},
            p.account_type,
            p.cash,
        )
        for p in settings.portfolios
    }
    return Book(None, entries)


def _whole(path: Path, line: int, text: str) -> int:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise BookError(f"{path}:{line}: qty {text!r} is not a number") from None
    if not value.is_finite() or value != value.to_integral_value():
        raise BookError(f"{path}:{line}: qty {text!r} must be a whole number of shares")
    if not BOOK_NUMBER.fullmatch(text):
        raise BookError(f"{path}:{line}: qty {text!r}: write it in digits (no exponent, no underscores)")
    if abs(value) > MAX_QUANTITY:
        raise BookError(f"{path}:{line}: qty {text!r} is over {MAX_QUANTITY:,} shares in absolute value")
    return int(value)


def _money(path: Path, line: int, name: str, text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise BookError(f"{path}:{line}: {name} {text!r} is not a number") from None
    if not value.is_finite():
        raise BookError(f"{path}:{line}: {name} {text!r} must be finite")
    if not BOOK_NUMBER.fullmatch(text):
        raise BookError(f"{path}:{line}: {name} {text!r}: write it in digits (no exponent, no underscores)")
    if abs(value) > MAX_MONEY:
        raise BookError(f"{path}:{line}: {name} {text!r} is over {MAX_MONEY:,} in absolute value")
    return value


# -- planning ----------------------------------------------------------------------------------------------------


def _refuse_case_twins(source: str, book: Book, new: Iterable[str], known: Iterable[str]) -> None:
    """Refuse a new portfolio id equal but for case to a known one (``MAIN`` beside ``main``): one portfolio to a
    person, two to the store, each with its own limits and trading state."""
    by_case = {k.lower(): k for k in known}
    for pid in new:
        twin = by_case.get(pid.lower())
        if twin is not None and twin != pid:
            line = book.entries[pid].line
            raise BookError(f"{source}:{line}: portfolio {pid!r} differs from {twin!r} only in case: the same id?")


def desired_state(
    settings: Settings,
    entry: BookEntry,
    stored: PortfolioState | None,
    prices: Mapping[str, float],
    where: str,
    now: float,
) -> PortfolioState:
    """The book ``entry`` wants, completed from the settings (margins, missing terms) and the stored book."""
    try:
        cfg = settings.portfolio(entry.portfolio_id)
    except ConfigError:
        cfg = None
    account = entry.account_type or (cfg.account_type if cfg else None) or (stored.account_type if stored else None)
    cash = entry.cash if entry.cash is not None else (cfg.cash if cfg else (stored.cash if stored else None))
    if cash is None:
        raise BookError(f"{where}: portfolio {entry.portfolio_id} is not in the settings: give its cash")
    account = account or AccountType.CASH
    positions: dict[str, Position] = {}
    for ticker, pos in entry.positions.items():
        if pos.qty < 0 and account != AccountType.MARGIN:
            raise BookError(f"{where}: portfolio {entry.portfolio_id}: short {ticker} in a cash account")
        old = stored.positions.get(ticker) if stored else None
        cost = pos.avg_price
        if cost == 0:  # from the settings: keep the stored cost basis, or the market price for a new position
            cost = old.avg_price if old is not None and old.qty != 0 else Decimal(str(prices[ticker]))
        positions[ticker] = Position(pos.qty, cost, old.realized_pnl if old is not None else Decimal(0))
    base = stored
    return PortfolioState(
        portfolio_id=entry.portfolio_id,
        account_type=account,
        cash=cash,
        positions=positions,
        realized_pnl=base.realized_pnl if base else Decimal(0),
        fees_paid=base.fees_paid if base else Decimal(0),
        initial_margin=cfg.initial_margin if cfg else (base.initial_margin if base else 0.5),
        maintenance_margin=cfg.maintenance_margin if cfg else (base.maintenance_margin if base else 0.25),
        updated_at=now,
    )


def _show(pos: Position | None) -> str | None:
    return None if pos is None or pos.qty == 0 else f"{pos.qty} @ {pos.avg_price}"


def _same_position(a: Position | None, b: Position | None) -> bool:
    """The same holding: both flat (or absent), or the same quantity at the same cost as numbers (``Decimal``
    equality: ``100.0 == 100``; their display strings differ)."""
    if a is None or a.qty == 0 or b is None or b.qty == 0:
        return (a is None or a.qty == 0) and (b is None or b.qty == 0)
    return a.qty == b.qty and a.avg_price == b.avg_price


def diff(stored: PortfolioState | None, want: PortfolioState) -> list[Change]:
    """The changes that turn ``stored`` (None: a new portfolio) into ``want``, values compared as numbers."""
    pid = want.portfolio_id
    out = []
    for name in ("account_type", "cash", "initial_margin", "maintenance_margin"):
        after_value = getattr(want, name)
        if stored is None or getattr(stored, name) != after_value:
            before = None if stored is None else str(getattr(stored, name))
            out.append(Change(pid, name, before, str(after_value)))
    old_positions = {} if stored is None else stored.positions
    for ticker in sorted(set(old_positions) | set(want.positions)):
        old, new = old_positions.get(ticker), want.positions.get(ticker)
        if not _same_position(old, new):
            out.append(Change(pid, f"position:{ticker}", _show(old), _show(new)))
    return out


def _quantities(state: PortfolioState) -> dict[str, int]:
    return {t: p.qty for t, p in state.positions.items() if p.qty != 0}


def capital_flow(
    stored: PortfolioState, want: PortfolioState, prices: Mapping[str, float]
) -> tuple[float, dict[str, dict[str, float]]]:
    """The equity change that turning ``stored`` into ``want`` causes at ``prices`` (ticker -> price), and the
    quantity changes it comes from (ticker -> ``{"qty": change, "price": price used}``).

    Notes
    -----
    ``flow = (cash_want - cash_stored) + sum_i (qty_want_i - qty_stored_i) * p_i``, with ``p_i = 0`` for a ticker
    without a finite price (not in the market, NaN): the monitor values such a holding at 0
    (logic/valuation.py), so the flow is exactly the change of the equity it computes. A change of cost basis, of
    margins or of the account type moves no equity: no flow.
    """
    flow = float(want.cash - stored.cash)
    moves: dict[str, dict[str, float]] = {}
    for ticker in sorted(set(stored.positions) | set(want.positions)):
        old, new = stored.positions.get(ticker), want.positions.get(ticker)
        change = (new.qty if new is not None else 0) - (old.qty if old is not None else 0)
        if change:
            price = float(prices.get(ticker, math.nan))
            price = price if math.isfinite(price) else 0.0
            flow += change * price
            moves[ticker] = {"qty": change, "price": price}
    return flow, moves


def plan_sync(store: Store, settings: Settings, book: Book, *, create: bool, now: float) -> SyncPlan:
    """Compare the named portfolios with the store; raise :class:`BookError` (nothing read beyond them)."""
    header = store.read_market_header()
    prices = dict(zip(header.tickers, header.prices.tolist(), strict=True))
    existing = set(store.portfolio_ids())
    plan = SyncPlan()
    source = str(book.path) if book.path else "settings"
    unknown = sorted(pid for pid in book.entries if pid not in existing)
    _refuse_case_twins(source, book, unknown, existing)
    if unknown and not create:
        first = book.entries[unknown[0]]
        raise BookError(
            f"{source}:{first.line}: portfolio(s) {unknown} are not in the store: add --create to create them"
        )
    for pid, entry in sorted(book.entries.items()):
        for ticker in entry.positions:
            if ticker not in prices:
                raise BookError(f"{source}:{entry.line}: ticker {ticker!r} is not in the store's universe")
        stored = store.read_portfolio(pid) if pid in existing else None
        want = desired_state(settings, entry, stored, prices, f"{source}:{entry.line}", now)
        plan.desired[pid] = want
        changes = diff(stored, want)
        if stored is None:
            plan.created.append(pid)
        if changes:
            plan.changes[pid] = changes
    return plan


# -- applying ----------------------------------------------------------------------------------------------------


def apply_sync(store: Store, plan: SyncPlan, *, now: float, actor: str) -> int:
    """Write the plan, one MULTI per portfolio, with one audit record per change; returns changes applied.

    Each portfolio's state and positions are WATCHed and its diff recomputed: if it is no longer the planned
    one (a trade landed meanwhile) the portfolio is left alone and :class:`BookError` says what was applied.
    A change of cash or quantities is a capital flow: the portfolio's P&L references move by it in the same
    MULTI, with a ``capital_flow`` audit record (module docstring).

    A created portfolio joins the registry (``rd:portfolios``, global): on a Redis Cluster that key is on
    another slot than the portfolio's, which one MULTI cannot span, so :func:`slot_transaction` commits the
    portfolio's MULTI first and the registry's SADD after it, in its own (the registry is the commit marker:
    no reader finds a registered portfolio without its data). A crash between the two leaves the portfolio
    unregistered; the next ``--sync --create`` writes it again and registers it (SADD is idempotent).
    """
    applied = 0
    for pid in sorted(set(plan.changes) | set(plan.created)):
        want = plan.desired[pid]
        keys = PortfolioKeys(pid)
        for _ in range(WATCH_RETRIES):
            # one MULTI on one server; on a cluster a creation is one per slot (portfolio, then registry)
            tx = slot_transaction(store.client) if pid in plan.created else store.client.pipeline(transaction=True)
            with tx as pipe:
                try:
                    pipe.watch(keys.state, keys.positions, keys.trading_state)
                    try:
                        stored: PortfolioState | None = store.read_portfolio(pid, pipe)
                    except StoreEmptyError:
                        stored = None
                    changes = diff(stored, want)
                    if changes != plan.changes.get(pid, []):
                        raise BookError(
                            f"portfolio {pid} changed after the diff was printed; {applied} change(s) applied "
                            "before it; run the sync again"
                        )
                    flow: dict[str, Any] | None = None
                    if stored is not None and (stored.cash != want.cash or _quantities(stored) != _quantities(want)):
                        header = store.read_market_header()  # the marks now (another slot: not WATCHed)
                        prices = dict(zip(header.tickers, header.prices.tolist(), strict=True))
                        amount, moves = capital_flow(stored, want, prices)
                        flow = {"flow": amount, "cash": float(want.cash - stored.cash), "positions": moves}
                    pipe.multi()
                    _write(store, stored, want, pipe, now)
                    if stored is None:
                        status = TradingStatus(TradingState.ACTIVE, "created by warm-up --sync", actor, now)
                        store.write_trading_state(pid, status, pipe)
                    for change in changes:
                        store.append_audit(keys.audit, {"ts": now, "actor": actor, "action": "sync",
                                                        **change.to_dict()}, pipe)  # fmt: skip
                    if flow is not None:  # not P&L: the references move by it (module docstring)
                        if flow["flow"] != 0.0:
                            store.shift_peaks(pid, flow["flow"], pipe, ts=now)  # and the flow ledger
                        store.append_audit(keys.audit, {"ts": now, "actor": actor, "action": "capital_flow",
                                                        **flow}, pipe)  # fmt: skip
                    pipe.execute()
                    applied += len(changes)
                    break
                except redis.WatchError:
                    continue
        else:
            raise BookError(f"portfolio {pid} kept changing; {applied} change(s) applied before it")
    return applied


def _write(store: Store, stored: PortfolioState | None, want: PortfolioState, pipe: Any, now: float) -> None:
    if stored is None:
        store.write_portfolio(want, pipe)
        return
    store.write_portfolio_state(want, pipe)
    for ticker in sorted(set(stored.positions) | set(want.positions)):
        old, new = stored.positions.get(ticker), want.positions.get(ticker)
        if not _same_position(old, new):
            store.write_position(want.portfolio_id, ticker, new, pipe)


def sync(
    store: Store,
    settings: Settings,
    book: Book | None,
    *,
    dry_run: bool,
    create: bool,
    now: float,
    actor: str,
    out: Any = None,
) -> SyncPlan:
    """Plan, print (to ``out``, a callable taking one line) and unless ``dry_run`` apply a sync."""
    store.require_schema()
    plan = plan_sync(store, settings, book or book_from_settings(settings), create=create, now=now)
    lines = plan.lines()
    limit_changes = plan_limits_sync(store, settings, sorted(plan.desired))
    lines += [line for _, _, change_lines in limit_changes for line in change_lines]
    emit = out or print
    if not lines:
        emit("nothing to change")
    for line in lines:
        emit(("would change " if dry_run else "") + line)
    if not dry_run:
        apply_sync(store, plan, now=now, actor=actor)
        apply_limits_sync(store, settings, limit_changes, now=now, actor=actor)
    return plan


def plan_limits_sync(
    store: Store, settings: Settings, portfolio_ids: Iterable[str]
) -> list[tuple[str, dict[str, Any], list[str]]]:
    """The named portfolios whose stored live limits differ from the file's: ``(id, changed fields with the
    file's values, lines to print)``. A portfolio without stored limits is left out: every process already
    reads the file's limits for it (engine/store/limits.py)."""
    out: list[tuple[str, dict[str, Any], list[str]]] = []
    for pid in portfolio_ids:
        stored = store.read_limits(pid)
        if stored is None:
            continue
        before, after = changed_fields(stored.limits, settings.limits_for(pid))
        if after:
            out.append((pid, after, [f"{pid}: limits.{n}: {before[n]} -> {after[n]}" for n in after]))
    return out


def apply_limits_sync(
    store: Store, settings: Settings, changes: list[tuple[str, dict[str, Any], list[str]]], *, now: float, actor: str
) -> None:
    """Apply the file's limits through the Limits page's path (:meth:`engine.store.Store.change_limits`: one
    validated, audited, versioned change per portfolio)."""
    for pid, fields_, _ in changes:
        store.change_limits(
            pid, fields_, actor=actor, reason="warmup --sync: the settings file", now=now,
            fallback=settings.limits_for(pid),
        )  # fmt: skip


def check_book(settings: Settings, book: Book) -> None:
    """Check a book against the settings alone (before a seed writes anything): every ticker in the universe,
    every portfolio's terms complete, no short in a cash account. Raise :class:`BookError`."""
    prices = {t: a.price for t, a in settings.universe.assets.items()}
    for entry in book.entries.values():
        where = f"{book.path}:{entry.line}"
        _refuse_case_twins(str(book.path), book, [entry.portfolio_id], set(settings.portfolio_ids))
        for ticker in entry.positions:
            if ticker not in prices:
                raise BookError(f"{where}: ticker {ticker!r} is not in the universe")
        desired_state(settings, entry, None, prices, where, 0.0)


def plan_positions(
    store: Store, settings: Settings, book: Book, *, now: float, replace: Sequence[str] = ()
) -> SyncPlan:
    """Plan loading the file's portfolios (read-only): new ones are created, and those in ``replace`` (the ones
    a seed just wrote from the settings) take the file's book; any other portfolio already in the store is
    refused (``--sync`` reconciles those)."""
    existing = set(store.portfolio_ids())
    clash = sorted(pid for pid in book.entries if pid in existing and pid not in replace)
    if clash:
        line = book.entries[clash[0]].line
        raise BookError(f"{book.path}:{line}: portfolio(s) {clash} are already in the store: use --sync")
    return plan_sync(store, settings, book, create=True, now=now)
