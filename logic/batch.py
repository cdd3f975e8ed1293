"""The vectorised monitor: risk figures of every portfolio at once, and the batched reads a tick needs.

:func:`batch_risk` stacks the dollar exposures of P portfolios in one matrix ``E`` (P x N, matrix order, zeros
where a ticker is not held) and computes every portfolio's VaR, CVaR (95 / 99), stressed VaR 99, the VaR and the
stressed VaR at its limit's confidence and horizon, and its component VaR with a few BLAS products instead of P
small ones:

Notes
-----
Normal and Student-t (one covariance ``Σ``, the stressed ``Σˢ`` for the stressed VaR)::

    S = E Σ                       (P x N, one GEMM)
    σ_p = sqrt(max(rowsum(S ∘ E), 0))
    VaR_p(c, h) = k(c) · σ_p · sqrt(h)          k = Φ⁻¹(c) (normal), t_ν⁻¹(c)·sqrt((ν-2)/ν) (Student-t)
    CVaR_p(c, h) = m(c) · σ_p · sqrt(h)         m = φ(z)/(1-c) (normal), the t's closed-form ES multiplier
    component_p = k(c_p) · sqrt(h_p) / σ_p · (E_p ∘ S_p)    (0 for a riskless book)
    sVaR_p = Φ⁻¹(0.99) · max(σˢ_p, μ · σ_p) · sqrt(h)       σˢ_p on Σˢ, μ = stress_vol_multiplier (every method)
    sVaR_p(c_p, h_p) = Φ⁻¹(c_p) · max(σˢ_p, μ · σ_p) · sqrt(h_p)   at the limit: what the gate enforces

The stressed VaR is the worse of the crisis matrix and of today's correlations at multiplied volatilities
(:func:`engine.math_logic.stressed_portfolio_sigma`, on the column of every book's σ at once). At the limit's
confidence and horizon it is :func:`logic.limits.limit_stressed_var` (the gate's, which the per-portfolio path
calls) for every book at once: the same ``z · σˢ · sqrt(h)`` steps of :func:`engine.math_logic.get_stressed_var`
on the column of σˢ (:func:`_stressed_at_limit`).

FHS: ``Π = E Sᵀ`` (P x T, one GEMM on the scenarios ``S = z ∘ σ(now)``), then per row the k-th worst loss
(``numpy.partition`` along the rows), the mean of the k worst, and the positions' losses in the VaR scenario.

Each figure takes the same floating-point steps as :mod:`logic.var_methods` on the held sub-book
(:func:`logic.snapshot.risk_figures`, the reference); only the order of the sums in ``xᵀΣx`` differs, so the
two agree to ~1e-15 relative (tests check 1e-12). A book whose figures are not finite (an absurd exposure) gets
``None``: the caller builds it through the per-portfolio path, which reports the portfolio's error.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
from scipy import stats

from engine import math_logic
from engine.defaults import REPORTED_CONFIDENCES
from engine.errors import CorruptDataError, StoreError
from engine.records import VarMethod
from engine.settings import Limits, Model, Settings
from engine.store import Float64Array, PortfolioBundle, PortfolioKeys, Store, decode_int, decode_object, decode_str
from engine.store.limits import HeldLimits, decode_limits_reply, held_token
from engine.store.limits_batch import read_limits_batch, tracked_limits
from engine.store.slots import is_cluster
from engine.store.tracking import TrackedReplies
from logic.backtest_monitor import section_for
from logic.snapshot import MarketView, RiskFigures, usable_prices
from logic.valuation import Valuation

log = logging.getLogger("riskdesk.monitor")

__all__ = [
    "HeldBooks",
    "PortfolioLookup",
    "batch_figures",
    "batch_risk",
    "exposure_matrix",
    "live_limits",
    "read_backtest_markers",
    "read_limits",
]

OVERFLOW_GUARD = 1e150
"""Exposures above this many dollars go through the per-portfolio path (whose overflow checks report them)."""


class PortfolioLookup:
    """Each portfolio's settings (limits, VaR method) by id in O(1): :meth:`Settings.limits_for` scans the
    portfolio list, which is O(P) per call and O(P²) per tick for a thousand portfolios."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._limits = {p.id: p.limits for p in settings.portfolios}
        self._methods = {p.id: p.var_method for p in settings.portfolios if p.var_method is not None}

    def limits_for(self, portfolio_id: str) -> Limits:
        return self._limits.get(portfolio_id, self.settings.limits)

    def var_method_for(self, portfolio_id: str) -> VarMethod:
        return self._methods.get(portfolio_id, self.settings.model.var_method)


TRACKED_LIMITS = ("tracked reads",)
"""The key of a limits ``memo`` under which :func:`read_limits` keeps its tracked reads (one connection)."""


def read_limits(
    store: Store, portfolio_ids: Sequence[str], lookup: PortfolioLookup, memo: dict[Any, Any]
) -> dict[str, Limits | Exception]:
    """Every portfolio's live limits (engine/store/limits.py) in one call (:func:`read_limits_batch`: one
    script on a single server): the token ``memo`` holds of each is sent (version and random ``rev``), and only a
    limits record whose token moved comes back, with its JSON, and is decoded (``memo`` is updated). A portfolio
    without a record gets ``lookup``'s limits; one whose limits cannot be read carries the store's error (the
    caller skips it, as the per-portfolio path does). Only the records written since the last read are read at
    all: ``memo`` keeps the tracked reads under :data:`TRACKED_LIMITS` (engine/store/tracking.py)."""
    known = [memo.get(("limits", pid)) for pid in portfolio_ids]
    held = [held_token(memo, pid) for pid in portfolio_ids]
    tracked = memo.get(TRACKED_LIMITS)
    if tracked is None:
        tracked = memo[TRACKED_LIMITS] = tracked_limits()
    replies = read_limits_batch(store, portfolio_ids, held, tracked)
    out: dict[str, Limits | Exception] = {}
    for pid, mine, raw in zip(portfolio_ids, known, replies, strict=True):
        try:
            if isinstance(raw, Exception):  # a Redis error for this key only (a key of the wrong type)
                raise CorruptDataError(f"{PortfolioKeys(pid).limits}: {raw}")
            if raw is None:
                out[pid] = lookup.limits_for(pid)
            elif isinstance(raw, int):  # LIMITS_UNCHANGED: the record memo holds (sent only when it holds one)
                if not isinstance(mine, HeldLimits):
                    raise CorruptDataError(f"{PortfolioKeys(pid).limits}: 'unchanged' for a record never held")
                out[pid] = mine.limits
            else:  # as Store.limits_or decodes a record it read again
                raw_version, raw_rev, raw_json = raw
                memo.pop(("limits", pid), None)
                got = decode_limits_reply(pid, raw_version, raw_rev, raw_json if raw_json is not None else b"", memo)
                out[pid] = lookup.limits_for(pid) if got is None else got.limits
        except (StoreError, ValueError) as exc:
            out[pid] = exc
    return out


@functools.lru_cache(maxsize=64)
def _z(confidence: float) -> float:
    """``Φ⁻¹(c)`` as math_logic computes it (the same float), cached."""
    return float(stats.norm.ppf(confidence))


def exposure_matrix(exposures: Sequence[Float64Array], n: int) -> Float64Array:
    """Stack per-portfolio exposure vectors (length N each) into ``E`` (P x N)."""
    if not exposures:
        return np.zeros((0, n), dtype=np.float64)
    return np.ascontiguousarray(np.vstack(exposures), dtype=np.float64)


GATHER_LIMIT = 8_000_000
"""Most elements (books x held² ) gathered from a matrix at once; above it, dense products (E Σ, one GEMM)."""


class HeldBooks:
    """The books of ``E`` (P x N) by their held tickers: row ``p``'s ``k_p`` nonzero exposures, in ticker
    order, padded with zeros to the largest ``k`` (``x``, P x k) with their columns (``idx``).

    ``Σx`` on the held tickers is then a batch of k x k products on the gathered sub-matrices ``Σ[h, h]``
    (P·k² multiply-adds, about 2 ms for a thousand books of 20 positions) instead of the dense GEMM ``E Σ``
    (P·N², about 40 ms at N = 500 on this machine, and far worse when BLAS threads contend for its 2 cores):
    the per-portfolio path's sub-matrix arithmetic, done for every book at once. Above :data:`GATHER_LIMIT`
    (books holding most of the universe) it is the dense product, ``x`` = ``E``."""

    def __init__(self, exposures: Float64Array) -> None:
        mask = exposures != 0.0
        self.counts = mask.sum(axis=1)
        count, width = exposures.shape[0], int(self.counts.max(initial=0))
        self.idx: np.ndarray | None = None
        self.x = exposures
        if count * width * width <= GATHER_LIMIT:
            rows, cols = np.nonzero(mask)  # row-major: each row's columns ascending
            starts = np.cumsum(self.counts) - self.counts
            pos = np.arange(rows.size) - np.repeat(starts, self.counts)
            self.idx = np.zeros((count, width), dtype=np.intp)
            self.idx[rows, pos] = cols
            self.x = np.zeros((count, width))
            self.x[rows, pos] = exposures[rows, cols]
            n = exposures.shape[1]
            self._flat = self.idx[:, :, None] * n + self.idx[:, None, :]  # Σ[h, h] of every book, in Σ.ravel()

    def product(self, matrix: Float64Array) -> Float64Array:
        """``(Σx)`` of every book at its held tickers (P x k; the padding's entries are not used), or ``E Σ``."""
        if self.idx is None:
            return self.x @ matrix
        sub = np.ravel(matrix)[self._flat]  # one gather (the two-index form builds the index each time)
        return np.matmul(sub, self.x[:, :, None])[:, :, 0]

    def sigma(self, matrix: Float64Array) -> Float64Array:
        """``sqrt(max(xᵀΣx, 0))`` of every book."""
        return np.sqrt(np.maximum(np.einsum("ij,ij->i", self.x, self.product(matrix)), 0.0))

    def held(self, p: int, values: Float64Array) -> Float64Array:
        """Row ``p`` of ``values`` (``x`` or a :meth:`product`) at the book's held tickers, in ticker order."""
        if self.idx is None:
            return values[p, np.flatnonzero(self.x[p])]
        return values[p, : self.counts[p]]


def _scenarios(market: MarketView) -> Float64Array:
    """FHS scenarios (T, N) of the whole universe: ``z ∘ σ(now)``, element by element as the per-book model (a
    missing entry of the window is filled column by column, math_logic.fhs_fill_missing: the same draws)."""
    return math_logic.fhs_scenarios(market.standardized, market.vol, observed=market.observed)


def _covariance_group(
    market: MarketView,
    exposures: Float64Array,
    method: VarMethod,
    limits: Sequence[Limits],
    model: Model,
    dof: float | None,
) -> list[RiskFigures | None]:
    """Normal or Student-t figures of the rows of ``exposures`` (see the module docstring)."""
    day = float(model.bars_per_day)
    low, high = REPORTED_CONFIDENCES
    day_root = math.sqrt(day)

    def var_mult(c: float) -> float:
        if method is VarMethod.STUDENT_T:
            assert dof is not None
            return math_logic.student_t_var(1.0, c, dof)
        return _z(c)

    def cvar_mult(c: float) -> float:
        if method is VarMethod.STUDENT_T:
            assert dof is not None
            return math_logic.student_t_cvar(1.0, c, dof)
        z = _z(c)
        return math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi) / (1.0 - c)

    with np.errstate(all="ignore"):
        books = HeldBooks(exposures)
        sigma_x = books.product(market.cov)
        sigma = np.sqrt(np.maximum(np.einsum("ij,ij->i", books.x, sigma_x), 0.0))
        stressed_sigma = math_logic.stressed_portfolio_sigma(
            books.sigma(market.stressed), sigma, float(model.stress_vol_multiplier)
        )
        z_high = _z(high)
        if method is VarMethod.STUDENT_T:  # student_t_var(σ·√h) = k·(σ·√h)
            var95 = var_mult(low) * (sigma * day_root)
            var99 = var_mult(high) * (sigma * day_root)
            cvar95 = cvar_mult(low) * (sigma * day_root)
            cvar99 = cvar_mult(high) * (sigma * day_root)
        else:  # math_logic: z·σ·(V·√h), and σ·φ(z)/(1-c)·(V·√h)
            var95 = var_mult(low) * sigma * day_root
            var99 = z_high * sigma * day_root
            cvar95 = _normal_cvar(sigma, low, day_root)
            cvar99 = _normal_cvar(sigma, high, day_root)
        stressed99 = z_high * stressed_sigma * day_root
        stressed_limit = _stressed_at_limit(stressed_sigma, limits, model)
        mult_of: dict[float, float] = {}
        roots = np.array([math.sqrt(float(model.bars_per_day * lim.var_horizon_days)) for lim in limits])
        confidences = [float(lim.var_confidence) for lim in limits]
        mults = np.array([mult_of[c] if c in mult_of else mult_of.setdefault(c, var_mult(c)) for c in confidences])
        per_sigma = mults * roots
        if method is VarMethod.STUDENT_T:
            limit_var = mults * (sigma * roots)
        else:
            limit_var = mults * sigma * roots
        if books.idx is None:  # dense books (most of the universe held): each book's held tickers on its own
            components = [
                np.zeros(int(books.counts[p])) if sigma[p] == 0.0
                else (per_sigma[p] / sigma[p]) * (books.held(p, books.x) * books.held(p, sigma_x))
                for p in range(len(limits))
            ]  # fmt: skip
        else:
            scaled = np.where(sigma > 0.0, per_sigma / np.where(sigma > 0.0, sigma, 1.0), 0.0)
            every = scaled[:, None] * (books.x * sigma_x)
            every[sigma == 0.0] = 0.0
            components = [every[p, :count] for p, count in enumerate(books.counts.tolist())]
    return _figures_of(var95, var99, cvar95, cvar99, stressed99, limit_var, stressed_limit, components)


def _stressed_at_limit(stressed_sigma: Float64Array, limits: Sequence[Limits], model: Model) -> Float64Array:
    """Each book's stressed VaR at its limit's confidence and horizon from its stressed σ (the worse scenario):
    ``z(c) · σˢ · (1 · sqrt(h))``, the float steps of :func:`engine.math_logic.get_stressed_var` as
    :func:`logic.limits.limit_stressed_var` (the gate) takes it, with ``h = bars_per_day · var_horizon_days``
    (the gate's ``horizon_bars``)."""
    z = np.array([_z(float(lim.var_confidence)) for lim in limits], dtype=np.float64)
    scale = np.array([1.0 * math.sqrt(model.bars_per_day * lim.var_horizon_days) for lim in limits], dtype=np.float64)
    return z * stressed_sigma * scale


def _figures_of(*columns: Any) -> list[RiskFigures | None]:
    """Per book, the record of var95, var99, cvar95, cvar99, stressed_var99, limit_var, stressed_limit_var
    (arrays over the books) and its components (a list of arrays); None where a figure is not finite."""
    *scalars, components = columns
    values = np.column_stack([np.asarray(c, dtype=np.float64) for c in scalars])
    finite = np.isfinite(values).all(axis=1)
    if components:  # and every component: one pass over all of them
        sizes = [len(c) for c in components]
        flat = np.concatenate(components) if sum(sizes) else np.zeros(0)
        owners = np.repeat(np.arange(len(components)), sizes)
        finite &= np.bincount(owners[~np.isfinite(flat)], minlength=len(components)) == 0
    out: list[RiskFigures | None] = []
    for row, ok, c in zip(values.tolist(), cast(list[bool], finite.tolist()), components, strict=True):
        if ok:
            v95, v99, c95, c99, s99, limit, s_limit = row
            out.append(RiskFigures(v95, v99, c95, c99, s99, limit, s_limit, np.asarray(c, dtype=np.float64)))
        else:
            out.append(None)
    return out


def _normal_cvar(sigma: Float64Array, c: float, scale: float) -> Float64Array:
    z = _z(c)
    density = math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return sigma * density / (1.0 - c) * scale


def _fhs_group(
    market: MarketView, exposures: Float64Array, limits: Sequence[Limits], model: Model
) -> list[RiskFigures | None]:
    """FHS figures of the rows of ``exposures``: one GEMM for every book's scenario P&L, then order statistics
    along the rows; the stressed VaR is the normal one of the two crisis scenarios (module docstring)."""
    scenarios = _scenarios(market)
    t = scenarios.shape[0]
    if t == 0:
        return [None] * exposures.shape[0]  # the per-portfolio path raises the model's clear error
    low, high = REPORTED_CONFIDENCES
    day_root = math.sqrt(float(model.bars_per_day))
    with np.errstate(all="ignore"):
        pnl = exposures @ scenarios.T  # (P, T)

        def tail(c: float) -> tuple[Float64Array, Float64Array]:
            k = math_logic.scenario_tail_size(t, c)
            part = np.partition(pnl, k - 1, axis=1)
            var = -part[:, k - 1]
            cvar = -np.sort(part[:, :k], axis=1).sum(axis=1) / k
            return var, cvar

        var95, cvar95 = tail(low)
        var99, cvar99 = tail(high)
        books = HeldBooks(exposures)
        stressed_sigma = math_logic.stressed_portfolio_sigma(
            books.sigma(market.stressed), books.sigma(market.cov), float(model.stress_vol_multiplier)
        )
        stressed99 = _z(high) * stressed_sigma * day_root
        stressed_limit = _stressed_at_limit(stressed_sigma, limits, model)
        out: list[RiskFigures | None] = []
        for p, lim in enumerate(limits):
            root = math.sqrt(float(model.bars_per_day * lim.var_horizon_days))
            c = float(lim.var_confidence)
            k = math_logic.scenario_tail_size(t, c)
            row = pnl[p]
            limit_var = root * -float(np.partition(row, k - 1)[k - 1])
            k_star = int(np.argpartition(row, k - 1)[k - 1])
            held = np.flatnonzero(exposures[p])
            components = root * (-exposures[p, held] * scenarios[k_star, held])
            out.append(_figures(
                day_root * var95[p], day_root * var99[p], day_root * cvar95[p], day_root * cvar99[p],
                stressed99[p], limit_var, stressed_limit[p], components,
            ))  # fmt: skip
    return out


def _figures(*values: Any) -> RiskFigures | None:
    """var95, var99, cvar95, cvar99, stressed_var99, limit_var, stressed_limit_var, components -> the record; None
    if not finite."""
    scalars = [float(v) for v in values[:7]]
    components = np.asarray(values[7], dtype=np.float64)
    if not (all(math.isfinite(v) for v in scalars) and np.isfinite(components).all()):
        return None
    v95, v99, c95, c99, s99, limit, s_limit = scalars
    return RiskFigures(v95, v99, c95, c99, s99, limit, s_limit, components)


def batch_risk(
    market: MarketView,
    exposures: Float64Array,
    methods: Sequence[VarMethod],
    limits: Sequence[Limits],
    model: Model,
) -> list[RiskFigures | None]:
    """Every book's :class:`~logic.snapshot.RiskFigures` (module docstring); ``None`` for a book the
    per-portfolio path must handle (figures not finite, or the method's inputs missing).

    Parameters
    ----------
    market:
        The tick's prices and matrices (:class:`logic.snapshot.MarketView`).
    exposures:
        ``E`` (P x N): each book's dollar exposures in ``market.header.tickers`` order, 0 where a ticker is not
        held or has no usable price.
    methods, limits:
        Each book's VaR method and limits (confidence and horizon of ``limit_var`` and the components).
    model:
        ``settings.model`` (``bars_per_day``, ``stress_vol_multiplier``).
    """
    count = exposures.shape[0]
    if not (len(methods) == len(limits) == count):
        raise ValueError("exposures, methods and limits must describe the same books")
    out: list[RiskFigures | None] = [None] * count
    with np.errstate(all="ignore"):
        usable = np.isfinite(exposures).all(axis=1) & (np.abs(exposures).max(axis=1, initial=0.0) < OVERFLOW_GUARD)
    for method in set(methods):
        rows = [p for p in range(count) if methods[p] is method and usable[p]]
        if not rows:
            continue
        sub = exposures[rows]
        group_limits = [limits[p] for p in rows]
        try:
            if method is VarMethod.FHS:
                figures = _fhs_group(market, sub, group_limits, model)
            else:
                dof = None
                if method is VarMethod.STUDENT_T:
                    if market.model is None:
                        continue  # the per-portfolio path raises its clear error
                    dof = market.model.dof
                figures = _covariance_group(market, sub, method, group_limits, model, dof)
        except (StoreError, ValueError):
            continue  # the window or the fit is unusable: the per-portfolio path reports it per portfolio
        for p, f in zip(rows, figures, strict=True):
            out[p] = f
    return out


def live_limits(
    store: Store, portfolio_ids: Sequence[str], lookup: PortfolioLookup, memo: dict[Any, Any], *, batched: bool
) -> dict[str, Limits | Exception]:
    """Each portfolio's live limits, or the error reading them: :func:`read_limits` (one call), or
    one :meth:`Store.limits_or` per portfolio (``batched=False``: the per-portfolio reference path)."""
    if batched:
        return read_limits(store, portfolio_ids, lookup, memo)
    out: dict[str, Limits | Exception] = {}
    for pid in portfolio_ids:
        try:
            out[pid] = store.limits_or(pid, lookup.settings.limits_for(pid), memo)
        except StoreError as exc:
            out[pid] = exc
    return out


def batch_figures(
    market: MarketView,
    valued: Sequence[tuple[PortfolioBundle, Valuation]],
    limits: Mapping[str, Limits | Exception],
    lookup: PortfolioLookup,
    model: Model,
) -> dict[str, RiskFigures]:
    """Every valued portfolio's risk figures at once (:func:`batch_risk`), by portfolio id; a portfolio left
    out (unreadable limits, figures not finite) is built by the per-portfolio path."""
    books = [(b.portfolio_id, v) for b, v in valued if isinstance(limits.get(b.portfolio_id), Limits)]
    if not books:
        return {}
    n = len(market.header.tickers)
    exposures = exposure_matrix([np.where(usable_prices(v), v.market_values, 0.0) for _, v in books], n)
    pids = [pid for pid, _ in books]
    chosen = [limits[pid] for pid in pids]
    methods = [lookup.var_method_for(pid) for pid in pids]
    figures = batch_risk(market, exposures, methods, [lim for lim in chosen if isinstance(lim, Limits)], model)
    return {pid: f for pid, f in zip(pids, figures, strict=True) if f is not None}


_MARKERS_LUA = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HMGET', key, 'version', 'token') end
return out
"""


def read_backtest_markers(store: Store, portfolio_ids: Sequence[str]) -> dict[str, tuple[int, str] | None]:
    """(version, token) of each portfolio's stored backtest (None without one) in one read (a script; on a Redis
    Cluster one pipelined HMGET each); the monitor WATCHes first, so a write by another monitor after this read
    still aborts its MULTI."""
    if not portfolio_ids:
        return {}
    keys = [PortfolioKeys(pid).backtest for pid in portfolio_ids]
    if is_cluster(store.client):
        pipe = store.client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, ["version", "token"])
        replies = pipe.execute()
    else:
        replies = store._eval(None, _MARKERS_LUA, keys, [])
    out: dict[str, tuple[int, str] | None] = {}
    for pid, raw in zip(portfolio_ids, replies, strict=True):
        if raw[0] is None:
            out[pid] = None
            continue
        try:  # the common case at once (every portfolio, every tick); anything odd: through the codec, below
            if isinstance(raw[0], bytes) and raw[0].isdigit() and isinstance(raw[1], bytes):
                out[pid] = (int(raw[0]), raw[1].decode())
                continue
        except UnicodeDecodeError:
            pass
        key = PortfolioKeys(pid).backtest
        out[pid] = (decode_int(raw[0], key=f"{key}.version"), decode_str(raw[1], key=f"{key}.token"))
    return out


_SECTIONS_LUA = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGET', key, 'section') end
return out
"""


class BacktestSections:
    """Each portfolio's snapshot ``backtest`` section from what the backtest runner stored
    (logic/backtest_runner.py, ``pf:{id}:backtest`` ``section``), read in one script (on a Redis Cluster one
    pipelined HGET each); a stored section whose bytes did not change since the last read is not decoded again,
    and its section object is handed on (never changed in place)."""

    def __init__(self) -> None:
        self._memo: dict[str, tuple[bytes, VarMethod, dict[str, Any] | None]] = {}
        self._reported: set[str] = set()
        self._tracked = TrackedReplies(_SECTIONS_LUA)
        """Only the sections written since the last read are read (engine/store/tracking.py)."""

    def read(
        self, store: Store, portfolio_ids: Sequence[str], methods: Sequence[VarMethod]
    ) -> list[dict[str, Any] | None]:
        """The section of each of ``portfolio_ids`` under its ``methods`` entry; None without a stored one (or
        with one that does not decode: reported once, the snapshot goes on without it)."""
        if not portfolio_ids:
            return []
        keys = [PortfolioKeys(pid).backtest for pid in portfolio_ids]
        replies = self._tracked.read(store.client, keys)  # None on a Redis Cluster
        if replies is None and is_cluster(store.client):
            pipe = store.client.pipeline(transaction=False)
            for key in keys:
                pipe.hget(key, "section")
            replies = pipe.execute()
        elif replies is None:
            replies = store._eval(None, _SECTIONS_LUA, keys, [])
        out: list[dict[str, Any] | None] = []
        for pid, key, method, raw in zip(portfolio_ids, keys, methods, replies, strict=True):
            if raw is None:
                self._memo.pop(pid, None)
                out.append(None)
                continue
            known = self._memo.get(pid)
            if known is not None and known[0] == raw and known[1] is method:
                out.append(known[2])
                continue
            try:
                section = section_for(decode_object(raw, key=f"{key}.section"), method)
            except CorruptDataError as exc:
                if pid not in self._reported:
                    self._reported.add(pid)
                    log.warning("portfolio %s: backtest section unreadable, left out of the snapshot: %s", pid, exc)
                section = None
            self._memo[pid] = (raw, method, section)
            out.append(section)
        return out
