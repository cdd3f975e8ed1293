"""Every portfolio's valuation and snapshot at once: the vectorised monitor's columnar books.

:class:`BookColumns` lays the positions of P portfolios end to end (one element per position, each portfolio's
positions by ticker, as a snapshot lists them), with the portfolio each belongs to and its column in the tick's
market. A tick then marks every book to market with a few array operations (:func:`value_books`: the
arithmetic of :func:`logic.valuation.value_portfolio` and :func:`logic.snapshot.snapshot_dict`, per position,
then summed per portfolio), and :func:`build_snapshots` writes each portfolio's snapshot dict from the columns
(the schema of logic/snapshot.py, key for key) with its history point as a row of a P x columns matrix.

The static part of a book (its tickers, quantities, average costs) is laid out again only when the book
changes: the reader returns the same :class:`PortfolioState` object while a book's stored bytes are unchanged.

Sums run per portfolio over its positions rather than over the N tickers of the universe, so equity and the
other totals may differ from the per-portfolio path's in the last bit (tests compare the two to 1e-12).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.records import AccountType, PortfolioState, TradingState, TradingStatus, VarMethod
from engine.settings import Limits
from engine.store.history import HISTORY_COLUMNS
from logic.snapshot import MarketView, RiskFigures

Float64Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

_MARGIN = str(AccountType.MARGIN)
_ACTIVE = TradingState.ACTIVE


@dataclass(frozen=True)
class _Static:
    state: PortfolioState
    tickers: tuple[str, ...]
    qty: Float64Array
    avg: Float64Array
    qty_int: list[int]
    avg_list: list[float]
    realized_list: list[float]


def _static(state: PortfolioState) -> _Static:
    tickers = tuple(sorted(state.positions))
    positions = [state.positions[t] for t in tickers]
    qty_int = [int(p.qty) for p in positions]
    avg_list = [float(p.avg_price) for p in positions]
    return _Static(
        state, tickers, np.array(qty_int, dtype=np.float64), np.array(avg_list, dtype=np.float64), qty_int, avg_list,
        [float(p.realized_pnl) for p in positions],
    )  # fmt: skip


class BookColumns:
    """The positions of every book, end to end, kept across ticks (module docstring)."""

    def __init__(self) -> None:
        self._static: dict[str, _Static] = {}
        self._key: tuple[Any, ...] | None = None
        self.pids: list[str] = []
        self.books: list[_Static] = []
        self.offsets: IntArray = np.zeros(1, dtype=np.intp)
        self.owner: IntArray = np.zeros(0, dtype=np.intp)
        self.qty: Float64Array = np.zeros(0)
        self.avg: Float64Array = np.zeros(0)
        self.tix: IntArray = np.zeros(0, dtype=np.intp)

    def update(self, states: Sequence[PortfolioState], tickers: tuple[str, ...], index: Mapping[str, int]) -> None:
        """Lay out ``states`` for a market listing ``tickers`` (``index``: ticker -> column)."""
        books = []
        for state in states:
            known = self._static.get(state.portfolio_id)
            if known is None or not (known.state is state or known.state.positions == state.positions):
                known = self._static[state.portfolio_id] = _static(state)
            books.append(known)
        key = (tickers, *(id(b) for b in books))
        self.books = books
        self.pids = [s.portfolio_id for s in states]
        if key == self._key:
            return
        self._key = key
        sizes = np.array([len(b.tickers) for b in books], dtype=np.intp)
        self.offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.intp)
        self.owner = np.repeat(np.arange(len(books), dtype=np.intp), sizes)
        self.qty = np.concatenate([b.qty for b in books]) if books else np.zeros(0)
        self.avg = np.concatenate([b.avg for b in books]) if books else np.zeros(0)
        self.tix = np.array([index.get(t, -1) for b in books for t in b.tickers], dtype=np.intp)

    def ticker_tuples(self) -> list[tuple[str, ...]]:
        return [b.tickers for b in self.books]


@dataclass
class BookValues:
    """Every book marked at one tick: per position (``pos_*``) and per portfolio arrays."""

    price: Float64Array
    ok: npt.NDArray[np.bool_]
    """Per position: a finite positive price in this market."""
    market_values: Float64Array
    exposures: Float64Array
    """Dollar exposure per position, 0 without a usable price (the risk figures' input)."""
    unrealized: Float64Array
    """Unrealized P&L per position, 0 without a usable price."""
    side: npt.NDArray[np.int8]
    """+1 / -1 for an open position with a usable price and finite P&L (an excursion), else 0."""
    pnl: Float64Array
    equity: Float64Array
    market_value: Float64Array
    gross: Float64Array
    unrealized_total: Float64Array
    absurd: npt.NDArray[np.bool_]
    """Per portfolio: a held price above the bookable maximum (no snapshot)."""
    missing: list[list[str]]


def value_books(cols: BookColumns, market: MarketView, cash: Float64Array, max_price: float) -> BookValues:
    """Mark every book of ``cols`` at ``market``'s prices (``cash``: float cash per book).

    The totals are summed over each book's row of a P x N matrix, as the per-portfolio path sums its N-vector
    (numpy's pairwise sum, row by row), so equity and P&L are the same to the last bit."""
    count, n = len(cols.books), len(market.header.tickers)
    prices = market.header.prices
    listed = cols.tix >= 0
    at = np.maximum(cols.tix, 0)
    with np.errstate(invalid="ignore", over="ignore"):
        price = np.where(listed, prices[at], np.nan) if n else np.full(cols.tix.size, np.nan)
        clean = np.where(listed, np.nan_to_num(price, nan=0.0), 0.0)
        held = (cols.qty != 0) & listed
        ok = listed & np.isfinite(price) & (price > 0)
        market_values = np.where(held, cols.qty * clean, 0.0)
        unreal_all = np.where(held, cols.qty * (clean - cols.avg), 0.0)
        exposures = np.where(ok, market_values, 0.0)
        unrealized = np.where(ok, unreal_all, 0.0)
        absurd = np.bincount(cols.owner, weights=held & (np.abs(clean) > max_price), minlength=count) > 0
        rows, columns = cols.owner[listed], at[listed]
        dense = np.zeros((3, count, n))
        dense[0, rows, columns] = market_values[listed]
        dense[1, rows, columns] = np.abs(market_values[listed])
        dense[2, rows, columns] = unrealized[listed]
        market_value, gross, unrealized_total = dense.sum(axis=2)
        equity = cash + market_value
    opened = held & ok & np.isfinite(unreal_all)
    side = np.where(opened, np.sign(cols.qty), 0).astype(np.int8)
    bad = (cols.qty != 0) & ~ok
    missing: list[list[str]] = [[] for _ in range(count)]
    for j in np.flatnonzero(bad).tolist():
        p = int(cols.owner[j])
        missing[p].append(cols.books[p].tickers[j - int(cols.offsets[p])])
    for names in missing:
        names.sort()
    return BookValues(
        price, ok, market_values, exposures, unrealized, side, np.where(opened, unreal_all, 0.0), equity,
        market_value, gross, unrealized_total, absurd, missing,
    )  # fmt: skip


def exposure_rows(cols: BookColumns, values: BookValues, rows: IntArray, n: int) -> Float64Array:
    """``E`` (len(rows) x N) of the books at ``rows``: each book's exposures in its tickers' columns."""
    where = np.full(len(cols.books), -1, dtype=np.intp)
    where[rows] = np.arange(rows.size)
    e = np.zeros((rows.size, n))
    target = where[cols.owner]
    use = (target >= 0) & (values.exposures != 0.0)
    e[target[use], cols.tix[use]] = values.exposures[use]
    return e


def _f(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _drawdowns(equity: Float64Array, peak: Float64Array) -> Float64Array:
    """:func:`logic.snapshot._drawdown` of every book: ``E / max(peak, E) - 1``, 0 without a positive peak."""
    with np.errstate(invalid="ignore", divide="ignore"):
        valid = np.isfinite(peak) & (peak > 0) & np.isfinite(equity)
        return np.where(valid, equity / np.maximum(peak, equity) - 1.0, 0.0)


@dataclass(frozen=True)
class BookInputs:
    """What a snapshot needs beyond the valuation, per book (row order of the columns)."""

    states: Sequence[PortfolioState]
    trading: Sequence[TradingStatus | None]
    limits: Sequence[Limits]
    methods: Sequence[VarMethod]
    figures: Sequence[RiskFigures | None]
    backtest: Sequence[Mapping[str, Any] | None]
    peaks: Float64Array
    """P x 6 after this tick's merge: day_open, day_peak, week_peak, max_peak, max_dd, last."""
    mfe: Float64Array
    mae: Float64Array
    """Per position after this tick's merge (0 without an excursion)."""


_POINT_INDEX = {c.name: i for i, c in enumerate(HISTORY_COLUMNS)}


def build_snapshots(
    cols: BookColumns, values: BookValues, inputs: BookInputs, market: MarketView, now: float
) -> tuple[list[dict[str, Any] | None], Float64Array]:
    """The snapshot of every book with figures (None where ``inputs.figures`` has none) and the P x columns
    matrix of their history points (NaN: no value; a NaN ``ts`` for a book without a snapshot)."""
    header = market.header
    count = len(cols.books)
    owner, tix = cols.owner, cols.tix
    eq = values.equity
    exposure = exposure_rows(cols, values, np.arange(count, dtype=np.intp), len(header.tickers))
    with np.errstate(divide="ignore", invalid="ignore"):
        pos_weights = np.where(eq[owner] > 0, values.market_values / eq[owner], 0.0)
        magnitude = np.abs(exposure)
        total = magnitude.sum(axis=1)  # math_logic.hhi_concentration, row by row (its sum and dot product)
        shares = magnitude / np.where(total == 0.0, 1.0, total)[:, None]
        hhi = [0.0 if t == 0.0 else float(row @ row) for row, t in zip(shares, total.tolist(), strict=True)]
        leverage = np.where(eq > 0, values.gross / eq, np.where(values.gross > 0, np.inf, 0.0))
        day_dd = _drawdowns(eq, inputs.peaks[:, 1])
        week_dd = _drawdowns(eq, inputs.peaks[:, 2])
        max_dd = np.minimum(inputs.peaks[:, 4], _drawdowns(eq, inputs.peaks[:, 3]))
    # the largest exposure of each book: numpy's argmax over its row, as the per-portfolio path finds it
    largest_col = np.argmax(magnitude, axis=1) if count and len(header.tickers) else np.zeros(count, dtype=np.intp)
    any_held = (magnitude != 0).any(axis=1) if count else np.zeros(0, dtype=bool)
    largest = np.full(count, -1, dtype=np.intp)
    hit = (tix == largest_col[owner]) & any_held[owner] if count else np.zeros(0, dtype=bool)
    largest[owner[hit]] = np.flatnonzero(hit)

    age = max(0.0, float(now) - float(header.ts))
    points = np.full((count, len(HISTORY_COLUMNS)), np.nan)
    snapshots: list[dict[str, Any] | None] = [None] * count
    last = np.where(values.ok, values.price, np.nan).tolist()
    exp_list, weight_list, unr_list = values.exposures.tolist(), pos_weights.tolist(), values.unrealized.tolist()
    ok_list, mfe_list, mae_list = values.ok.tolist(), inputs.mfe.tolist(), inputs.mae.tolist()
    eq_l, mv_l, gross_l, lev_l = eq.tolist(), values.market_value.tolist(), values.gross.tolist(), leverage.tolist()
    unr_total = values.unrealized_total.tolist()
    day_open = inputs.peaks[:, 0].tolist()
    dd_d, dd_w, dd_m, hhi_l = day_dd.tolist(), week_dd.tolist(), max_dd.tolist(), hhi
    offsets = cols.offsets.tolist()
    held_sorted = _held_by_column(cols, values)
    version, market_ts = int(header.version), float(header.ts)
    for p in range(count):
        risk = inputs.figures[p]
        if risk is None:
            continue
        book, state, limits = cols.books[p], inputs.states[p], inputs.limits[p]
        lo = offsets[p]
        e = eq_l[p]
        realized = float(state.realized_pnl)
        var_limit = float(limits.var_limit)
        margin = state.account_type == _MARGIN
        li = int(largest[p])
        largest_share = abs(exp_list[li]) / e if li >= 0 and e > 0 else None
        gross = gross_l[p]
        used = gross * state.initial_margin
        level = (None if used <= 0 else e / used * 100.0) if margin else None
        positions = []
        for j, ticker in enumerate(book.tickers):
            k = lo + j
            priced = ok_list[k]
            q = book.qty_int[j]
            positions.append({
                "ticker": ticker,
                "qty": q,
                "avg_price": book.avg_list[j],
                "last": last[k] if priced else None,
                "market_value": exp_list[k] if priced else 0.0,
                "weight": _f(weight_list[k]) if priced else 0.0,
                "unrealized_pnl": unr_list[k] if priced else 0.0,
                "realized_pnl": book.realized_list[j],
                "mfe": mfe_list[k] if q != 0 else 0.0,
                "mae": mae_list[k] if q != 0 else 0.0,
            })  # fmt: skip
        unrealized_total = unr_total[p]
        trading = inputs.trading[p]
        snapshot = {
            "portfolio_id": book.state.portfolio_id,
            "ts": float(now),
            "version": version,
            "market_ts": market_ts,
            "equity": _f(e),
            "cash": float(state.cash),
            "market_value": _f(mv_l[p]),
            "gross_exposure": _f(gross),
            "net_exposure": _f(mv_l[p]),
            "leverage": _f(lev_l[p]),
            "pnl": {
                "unrealized": _f(unrealized_total),
                "realized": realized,
                "daily": _f(e - day_open[p]),
                "total": _f(realized + unrealized_total),
            },
            "var": {
                "var95": _f(risk.var95),
                "var99": _f(risk.var99),
                "cvar95": _f(risk.cvar95),
                "cvar99": _f(risk.cvar99),
                "stressed_var99": _f(risk.stressed_var99),
                "limit": var_limit,
                "confidence": float(limits.var_confidence),
                "utilization": _f(risk.limit_var / var_limit),
            },
            "drawdown": {"daily": dd_d[p], "weekly": dd_w[p], "max": dd_m[p]},
            "concentration": {
                "hhi": hhi_l[p],
                "largest_share": None if largest_share is None else _f(largest_share),
                "largest_ticker": book.tickers[li - lo] if li >= 0 else None,
            },
            "margin": {
                "level": None if level is None else _f(level),
                "used": _f(used) if margin else 0.0,
                "maintenance": _f(gross * state.maintenance_margin) if margin else 0.0,
            },
            "data": {"market_age_seconds": age, "missing_prices": values.missing[p]},
            "trading_state": trading.state if trading is not None else _ACTIVE,
            "positions": positions,
            "var_method": str(inputs.methods[p]),
            "component_var": _components(book.tickers, lo, held_sorted[p], risk),
            "backtest": None if inputs.backtest[p] is None else dict(inputs.backtest[p]),  # type: ignore[arg-type]
        }
        snapshots[p] = snapshot
        points[p] = _point(snapshot)
    return snapshots, points


def _held_by_column(cols: BookColumns, values: BookValues) -> list[list[int]]:
    """Per book, its positions with a nonzero exposure in market-column order (the risk figures' order)."""
    held = np.flatnonzero(values.exposures != 0.0)
    order = held[np.lexsort((cols.tix[held], cols.owner[held]))]
    out: list[list[int]] = [[] for _ in cols.books]
    for j, p in zip(order.tolist(), cols.owner[order].tolist(), strict=True):
        out[p].append(j)
    return out


def _components(tickers: tuple[str, ...], lo: int, held: list[int], risk: RiskFigures) -> dict[str, float]:
    shares = risk.components.tolist()
    if len(shares) != len(held):
        raise ValueError("component VaR does not match the held tickers")
    return {tickers[j - lo]: (_f(c) or 0.0) for j, c in zip(held, shares, strict=True)}


_POINT_PATHS = tuple(tuple(c.name.split(".")) for c in HISTORY_COLUMNS)


def _point(snapshot: Mapping[str, Any]) -> list[float]:
    """:func:`logic.snapshot.history_point` as a row (NaN for None)."""
    out = []
    for path in _POINT_PATHS:
        node: Any = snapshot
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        out.append(math.nan if node is None or isinstance(node, bool) else float(node))
    return out
