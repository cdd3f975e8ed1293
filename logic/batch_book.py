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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.records import AccountType, PortfolioState, TradingState, TradingStatus, VarMethod
from engine.settings import Limits
from engine.store.codec import POSITION_FLOATS, ComponentShares, PositionRows, encode_snapshot_parts
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
    realized: Float64Array
    qty_int: list[int]
    meta: bytes
    """The tickers and quantities as a stored snapshot holds them (:attr:`PositionRows.meta`), encoded once."""


def _static(state: PortfolioState) -> _Static:
    tickers = tuple(sorted(state.positions))
    positions = [state.positions[t] for t in tickers]
    qty_int = [int(p.qty) for p in positions]
    return _Static(
        state, tickers, np.array(qty_int, dtype=np.float64),
        np.array([float(p.avg_price) for p in positions], dtype=np.float64),
        np.array([float(p.realized_pnl) for p in positions], dtype=np.float64), qty_int,
        PositionRows(tickers, qty_int, bytes(8 * len(POSITION_FLOATS) * len(tickers))).meta,
    )  # fmt: skip


class BookColumns:
    """The positions of every book, end to end, kept across ticks (module docstring)."""

    def __init__(self) -> None:
        self._static: dict[str, _Static] = {}
        self._scalars: dict[str, tuple[PortfolioState, tuple[float, float, bool, float, float]]] = {}
        self.cash: Float64Array = np.zeros(0)
        self.realized_total: Float64Array = np.zeros(0)
        self.margin: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)
        self.initial: Float64Array = np.zeros(0)
        self.maintenance: Float64Array = np.zeros(0)
        """Per book: cash, realized P&L, margin account, initial and maintenance margin rates, as floats (converted
        again only for a state object not seen last tick)."""
        self._key: tuple[Any, ...] | None = None
        self.pids: list[str] = []
        self.books: list[_Static] = []
        self.offsets: IntArray = np.zeros(1, dtype=np.intp)
        self.owner: IntArray = np.zeros(0, dtype=np.intp)
        self.qty: Float64Array = np.zeros(0)
        self.avg: Float64Array = np.zeros(0)
        self.tix: IntArray = np.zeros(0, dtype=np.intp)
        self.realized: Float64Array = np.zeros(0)
        self._held_key: tuple[Any, ...] | None = None
        self._held: tuple[list[str], list[int], list[int]] = ([], [], [])

    def update(self, states: Sequence[PortfolioState], tickers: tuple[str, ...], index: Mapping[str, int]) -> None:
        """Lay out ``states`` for a market listing ``tickers`` (``index``: ticker -> column)."""
        books = []
        scalars = []
        for state in states:
            known = self._static.get(state.portfolio_id)
            if known is None or not (known.state is state or known.state.positions == state.positions):
                known = self._static[state.portfolio_id] = _static(state)
            books.append(known)
            held = self._scalars.get(state.portfolio_id)
            if held is None or held[0] is not state:
                held = self._scalars[state.portfolio_id] = (state, (
                    float(state.cash), float(state.realized_pnl), state.account_type == _MARGIN,
                    float(state.initial_margin), float(state.maintenance_margin),
                ))  # fmt: skip
            scalars.append(held[1])
        columns = np.array(scalars, dtype=np.float64).reshape(len(states), 5).T
        self.cash, self.realized_total, margin, self.initial, self.maintenance = columns
        self.margin = margin != 0.0
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
        self.realized = np.concatenate([b.realized for b in books]) if books else np.zeros(0)

    def ticker_tuples(self) -> list[tuple[str, ...]]:
        return [b.tickers for b in self.books]

    def held_names(self, held: npt.NDArray[np.bool_]) -> tuple[list[str], list[int], list[int]]:
        """The tickers of the positions marked ``held``, each book's in market-column order, end to end, how
        many each book has, and each one's index among its book's positions (remembered while the layout and
        the mask are unchanged)."""
        key = (self._key, held.tobytes())
        if self._held_key != key:
            at = np.flatnonzero(held)
            order = at[np.lexsort((self.tix[at], self.owner[at]))]
            owners = self.owner[order]
            index = (order - self.offsets[owners]).tolist()
            owned = owners.tolist()
            names = [self.books[p].tickers[j] for j, p in zip(index, owned, strict=True)]
            self._held = names, np.bincount(owned, minlength=len(self.books)).tolist(), index
            self._held_key = key
        return self._held


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
    incomplete: npt.NDArray[np.bool_]
    """Per portfolio: a held ticker without a usable price (``Valuation.complete`` False): its equity moves no
    peak and its snapshot has no daily P&L, drawdown, leverage, concentration, open position's weight or margin
    figure (logic/snapshot.py)."""


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
    incomplete = np.array([bool(names) for names in missing], dtype=bool)
    return BookValues(
        price, ok, market_values, exposures, unrealized, side, np.where(opened, unreal_all, 0.0), equity,
        market_value, gross, unrealized_total, absurd, missing, incomplete,
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


_COLUMN = {c.name: i for i, c in enumerate(HISTORY_COLUMNS)}


def _nullable(values: npt.NDArray[Any]) -> list[Any]:
    """Floats as a list, ``None`` where not finite (a snapshot's JSON has no NaN / inf)."""
    out = values.astype(object)
    out[~np.isfinite(values)] = None
    return out.tolist()


def build_snapshots(
    cols: BookColumns, values: BookValues, inputs: BookInputs, market: MarketView, now: float
) -> SnapshotBuilder:
    """The history point of every book and, on demand, the snapshot of every book with figures (None where
    ``inputs.figures`` has none): :class:`SnapshotBuilder`.

    Every number is computed for all books at once; the history point is a row of that matrix and the snapshot
    takes its numbers from the same row, so the two never disagree."""
    header = market.header
    count = len(cols.books)
    owner, tix = cols.owner, cols.tix
    eq = values.equity
    exposure = exposure_rows(cols, values, np.arange(count, dtype=np.intp), len(header.tickers))
    built = [p for p in range(count) if inputs.figures[p] is not None]
    figures = [inputs.figures[p] for p in built]

    def figure(name: str) -> Float64Array:
        out = np.full(count, np.nan)
        out[built] = [getattr(f, name) for f in figures]
        return out

    realized = cols.realized_total
    var_limit = np.array([float(lim.var_limit) for lim in inputs.limits])
    # stressed VaR at the limit's basis against stressed_var_limit (logic/snapshot.py): not a history column
    stressed_caps = [None if lim.stressed_var_limit is None else float(lim.stressed_var_limit) for lim in inputs.limits]
    stressed_limit = _nullable(figure("stressed_limit_var"))
    margin, initial, maintenance = cols.margin, cols.initial, cols.maintenance
    # no daily P&L, drawdown, leverage, concentration, open position's weight or margin figure (logic/snapshot.py):
    # NaN, then null
    partial = values.incomplete
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        pos_weights = np.where(eq[owner] > 0, values.market_values / eq[owner], 0.0)
        magnitude = np.abs(exposure)
        total = magnitude.sum(axis=1)  # math_logic.hhi_concentration's sum, row by row; its dot product by einsum
        shares = magnitude / np.where(total == 0.0, 1.0, total)[:, None]
        hhi = np.where(partial, np.nan, np.where(total == 0.0, 0.0, np.einsum("ij,ij->i", shares, shares)))
        leverage = np.where(eq > 0, values.gross / eq, np.where(values.gross > 0, np.inf, 0.0))
        leverage = np.where(partial, np.nan, leverage)
        # the largest exposure: numpy's argmax over each book's row, as the per-portfolio path finds it
        largest_col = np.argmax(magnitude, axis=1) if count and len(header.tickers) else np.zeros(count, np.intp)
        any_held = (magnitude != 0).any(axis=1) if count else np.zeros(0, dtype=bool)
        largest = np.full(count, -1, dtype=np.intp)
        hit = (tix == largest_col[owner]) & any_held[owner]
        largest[owner[hit]] = np.flatnonzero(hit)
        largest[partial] = -1  # no largest position (nor its share) of an incomplete valuation
        at_largest = values.exposures[largest] if values.exposures.size else np.zeros(count)
        largest_share = np.where((largest >= 0) & (eq > 0), np.abs(at_largest) / eq, np.nan)
        used = values.gross * initial
        points = np.full((count, len(HISTORY_COLUMNS)), np.nan)
        columns = {
            "ts": float(now), "version": float(header.version), "market_ts": float(header.ts), "equity": eq,
            "equity_low": eq, "equity_high": eq,  # a full-resolution point: its own extremes
            "cash": cols.cash, "market_value": values.market_value,
            "gross_exposure": values.gross, "net_exposure": values.market_value, "leverage": leverage,
            "pnl.unrealized": values.unrealized_total, "pnl.realized": realized,
            "pnl.daily": np.where(partial, np.nan, eq - inputs.peaks[:, 0]),
            "pnl.total": realized + values.unrealized_total,
            "var.var95": figure("var95"), "var.var99": figure("var99"), "var.cvar95": figure("cvar95"),
            "var.cvar99": figure("cvar99"), "var.stressed_var99": figure("stressed_var99"),
            "var.utilization": figure("limit_var") / var_limit,
            "drawdown.daily": np.where(partial, np.nan, _drawdowns(eq, inputs.peaks[:, 1])),
            "drawdown.weekly": np.where(partial, np.nan, _drawdowns(eq, inputs.peaks[:, 2])),
            "drawdown.max": np.where(
                partial, np.nan, np.minimum(inputs.peaks[:, 4], _drawdowns(eq, inputs.peaks[:, 3]))
            ),
            "concentration.hhi": hhi, "concentration.largest_share": largest_share,
            "margin.level": np.where(
                margin & (used > 0) & ~partial, eq / np.where(used > 0, used, 1.0) * 100.0, np.nan
            ),
            "data.market_age_seconds": max(0.0, float(now) - float(header.ts)),
        }  # fmt: skip
        for name, column in columns.items():
            points[:, _COLUMN[name]] = column
        used_out = np.where(margin, np.where(partial, np.nan, used), 0.0)
        maintenance_out = np.where(margin, np.where(partial, np.nan, values.gross * maintenance), 0.0)
        weights = np.where(values.ok, pos_weights, 0.0)
        weights = np.where(partial[owner] & (cols.qty != 0), np.nan, weights)  # a flat position's stays 0
    points[~np.isfinite(points)] = np.nan
    points[[p for p in range(count) if inputs.figures[p] is None], 0] = np.nan
    rows = _nullable(points)
    used_l, maintenance_l = _nullable(used_out), _nullable(maintenance_out)
    open_ = cols.qty != 0
    floats = np.column_stack((
        cols.avg, np.where(values.ok, values.price, np.nan), values.exposures, weights, values.unrealized,
        cols.realized, np.where(open_, inputs.mfe, 0.0), np.where(open_, inputs.mae, 0.0),
    )) if len(cols.qty) else np.zeros((0, len(POSITION_FLOATS)))  # fmt: skip
    floats[~np.isfinite(floats)] = np.nan  # null, as in the JSON of the per-portfolio path
    packed = floats.astype("<f8").tobytes()  # PositionRows: a book's floats are its rows' bytes
    width = 8 * len(POSITION_FLOATS)
    components = dict(zip(built, _components(cols, values, built, figures), strict=True))
    offsets = cols.offsets.tolist()
    version, market_ts, age = int(header.version), float(header.ts), max(0.0, float(now) - float(header.ts))
    i = _COLUMN

    def build(lo: int, hi: int) -> tuple[dict[int, dict[str, Any]], dict[int, bytes]]:
        out: dict[int, dict[str, Any]] = {}
        encoded: dict[int, bytes] = {}
        for p in range(lo, hi):
            share = components.get(p)
            if share is None:
                continue
            row, book, limits = rows[p], cols.books[p], inputs.limits[p]
            li = int(largest[p])
            trading = inputs.trading[p]
            section = inputs.backtest[p]
            snap = out[p] = {
                "portfolio_id": book.state.portfolio_id,
                "ts": float(now),
                "version": version,
                "market_ts": market_ts,
                "equity": row[i["equity"]],
                "cash": row[i["cash"]],
                "market_value": row[i["market_value"]],
                "gross_exposure": row[i["gross_exposure"]],
                "net_exposure": row[i["net_exposure"]],
                "leverage": row[i["leverage"]],
                "pnl": {
                    "unrealized": row[i["pnl.unrealized"]],
                    "realized": row[i["pnl.realized"]],
                    "daily": row[i["pnl.daily"]],
                    "total": row[i["pnl.total"]],
                },
                "var": {
                    "var95": row[i["var.var95"]],
                    "var99": row[i["var.var99"]],
                    "cvar95": row[i["var.cvar95"]],
                    "cvar99": row[i["var.cvar99"]],
                    "stressed_var99": row[i["var.stressed_var99"]],
                    "limit": float(limits.var_limit),
                    "confidence": float(limits.var_confidence),
                    "utilization": row[i["var.utilization"]],
                    "horizon_days": float(limits.var_horizon_days),
                    "stressed_limit_var": stressed_limit[p],
                    "stressed_limit": stressed_caps[p],
                    "stressed_utilization": _ratio(stressed_limit[p], stressed_caps[p]),
                },
                "drawdown": {
                    "daily": row[i["drawdown.daily"]], "weekly": row[i["drawdown.weekly"]],
                    "max": row[i["drawdown.max"]],
                },
                "concentration": {
                    "hhi": row[i["concentration.hhi"]],
                    "largest_share": row[i["concentration.largest_share"]],
                    "largest_ticker": book.tickers[li - offsets[p]] if li >= 0 else None,
                },
                "margin": {"level": row[i["margin.level"]], "used": used_l[p], "maintenance": maintenance_l[p]},
                "data": {"market_age_seconds": age, "missing_prices": values.missing[p]},
                "trading_state": trading.state if trading is not None else _ACTIVE,
                "var_method": str(inputs.methods[p]),
                "backtest": None if section is None else dict(section),
            }  # fmt: skip
            positions = PositionRows(
                book.tickers, book.qty_int, packed[offsets[p] * width : offsets[p + 1] * width], book.meta
            )
            encoded[p] = encode_snapshot_parts(snap, positions, share.index or (), share.block)
            snap["positions"], snap["component_var"] = positions, share
        return out, encoded

    return SnapshotBuilder(points, build)


def _ratio(value: float | None, limit: float | None) -> float | None:
    """``value / limit`` as logic/snapshot.py writes ``var.stressed_utilization``: null without a limit or a
    value, or where the ratio is not finite."""
    if value is None or limit is None:
        return None
    out = value / limit
    return out if np.isfinite(out) else None


@dataclass(frozen=True)
class SnapshotBuilder:
    """A tick's history points (``points``: P x columns, NaN for no value, a NaN ``ts`` for a book without a
    snapshot) and ``build(lo, hi)``: the snapshots of the books ``lo <= p < hi`` that have one, by row, and
    their stored form (:func:`~engine.store.codec.encode_snapshot`), encoded as they are built."""

    points: Float64Array
    build: Callable[[int, int], tuple[dict[int, dict[str, Any]], dict[int, bytes]]]


def _components(
    cols: BookColumns, values: BookValues, built: list[int], figures: list[RiskFigures | None]
) -> list[ComponentShares]:
    """Each built book's component VaR by ticker, in market-column order (the order of its figures); a share
    that is not finite, or -0, is 0."""
    names, counts, index = cols.held_names(values.exposures != 0.0)
    starts = np.concatenate(([0], np.cumsum(counts))).tolist()
    shares = [f.components for f in figures if f is not None]
    if any(c.size != counts[p] for p, c in zip(built, shares, strict=True)):
        raise ValueError("component VaR does not match the held tickers")
    flat = np.concatenate(shares) if shares else np.zeros(0)
    packed = np.where(np.isfinite(flat) & (flat != 0.0), flat, 0.0).astype("<f8").tobytes()
    out, at = [], 0
    for p, c in zip(built, shares, strict=True):
        lo, hi = starts[p], starts[p + 1]
        out.append(ComponentShares(names[lo:hi], index[lo:hi], packed[8 * at : 8 * (at + c.size)]))
        at += c.size
    return out
