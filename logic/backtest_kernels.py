"""The arithmetic of one backtest bar for many backtesters at once (:func:`logic.backtest_batch.step_many`).

Each function takes the backtesters' arrays stacked on a leading axis (one row per backtester, all of the same
shape) and returns, for every row, the same floats as the one-backtester computation it replaces, bit for bit:
elementwise ufuncs do not depend on the batch, a reduction along a C-contiguous last axis sums each row as numpy
sums a 1-D array (pairwise), ``np.matmul`` over a stack calls the same BLAS routine for each item as for one
vector and matrix, and an order statistic is a value, not a rounding. tests/test_backtest_kernels.py checks each
against its reference in :mod:`engine.math_logic` / :mod:`logic.var_methods`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import special

from engine import math_logic
from engine.math_logic import BoolArray
from engine.records import Float64Array

__all__ = [
    "CHUNK_BYTES",
    "ewma_observed",
    "ewma_standardize_and_update",
    "normal_quantile",
    "observed_entries",
    "t_var_multipliers",
    "window_figures",
]

CHUNK_BYTES = 1 << 20
"""Windows processed together by :func:`window_figures` (bytes of window): they stay in the core's cache while
the several passes over them (squares, scenarios, their transpose, scenario P&L) run."""


def ewma_standardize_and_update(
    covs: Float64Array,
    last: Float64Array,
    prices: Float64Array,
    decay: float,
    observed: BoolArray | None = None,
    gaps: Float64Array | None = None,
) -> Float64Array:
    """:func:`math_logic.ewma_standardize_and_update` of ``r = ln(prices / last)`` for each row, in place.

    Parameters
    ----------
    covs : ndarray, shape (B, N, N)
        The covariances, C-contiguous; overwritten with ``λ Σ + (1 - λ) r rᵀ`` (each entry
        ``fl(fl(λ a_ij) + fl(s_i s_j))``, ``s = sqrt(1 - λ) r``: :func:`math_logic.update_covariance_ewma`'s bits).
    last, prices : ndarray, shape (B, N)
        Previous and current prices (finite, > 0: checked by the caller).
    decay : float
        λ in (0, 1).
    observed : ndarray of bool, shape (B, N), optional
        Which tickers' returns are data (:func:`ewma_observed`); the others' return is 0 and they keep their
        variance: each entry ``fl(fl(F_ij a_ij) + fl(s_i s_j))`` with ``F`` of
        :func:`math_logic.ewma_partial_factors` (:func:`math_logic.update_covariance_ewma_observed`'s bits; a
        row observed everywhere gets exactly the plain update's). None: every one.
    gaps : ndarray, shape (B, N), optional
        Bars of variance each return spans since its ticker's previous price (> 0): both steps see ``r / sqrt(g)``
        (:func:`math_logic.per_bar_returns`, the same bits). None: every return is of one bar. The backtester
        passes its bars of variance since each ticker's last new price plus the bar's span (``Backtester.since``;
        with ``model.night_variance_share`` a bar of the open market spans less than one).

    Returns
    -------
    ndarray, shape (B, N)
        ``z = r / sqrt(diag Σ_{t-1})`` (0 where the variance is 0), computed before the update.

    A return that is not finite raises ValueError before ``covs`` changes.
    """
    returns = np.log(prices / last)
    if not np.isfinite(returns).all():  # math_logic.ewma_standardize_and_update refuses them too
        raise ValueError("returns contain NaN or infinite values")
    if gaps is not None:
        if gaps.shape != returns.shape or not np.isfinite(gaps).all() or (gaps <= 0.0).any():
            raise ValueError("gaps must be finite and > 0, one per return")
        returns = returns / np.sqrt(gaps)
    vol = np.sqrt(np.clip(np.diagonal(covs, axis1=1, axis2=2), 0.0, None))
    z = np.zeros_like(returns)
    np.divide(returns, vol, out=z, where=vol > 0.0)
    s = math.sqrt(1.0 - decay) * returns
    if observed is None:
        covs *= decay
    else:
        if (returns[~observed] != 0.0).any():
            raise ValueError("a return where no price was observed must be 0 (the last price carried forward)")
        covs *= math_logic.ewma_partial_factors(observed, decay)
    covs += s[:, :, None] * s[:, None, :]
    return z


def ewma_observed(last: Float64Array, prices: Float64Array, observed: BoolArray | None) -> BoolArray | None:
    """Which tickers' returns update the EWMA as data: those with a new price (the tick event's ``observed``) or
    whose price moved since the last bar fed (bars between that were not fed); None when every one is.

    A ticker with neither has the return 0 of a price carried forward and keeps its variance
    (:func:`math_logic.update_covariance_ewma_observed`, as the stream daemon's covariance does).
    """
    if observed is None:
        return None
    mask: BoolArray = observed | (prices != last)
    return None if mask.all() else mask


def observed_entries(
    covs: Float64Array, last: Float64Array, prices: Float64Array, observed: BoolArray | None
) -> BoolArray:
    """Which entries of :func:`ewma_standardize_and_update`'s ``z`` are observations; call it first, on the same
    ``covs`` (the variances before the update).

    Parameters
    ----------
    covs : ndarray, shape (B, N, N)
        The covariances before this bar's update.
    last, prices : ndarray, shape (B, N)
        Previous and current prices (as :func:`ewma_standardize_and_update` takes them).
    observed : ndarray of bool, shape (B, N), optional
        True where the ticker had a new price in the bar (the tick event's); None: every one.

    Returns
    -------
    ndarray of bool, shape (B, N)
        ``σ > 0 & (observed | P ≠ P_last)``: :func:`math_logic.standardize_observed`'s rule on the backtest's own
        volatility. With ``σ = 0`` there is no volatility forecast, ``z`` is the convention 0, not an innovation.
        A ticker without a new price whose price is the one last fed (carried forward) has the stand-in 0; one
        whose price moved anyway (bars between that were not fed to this backtester) has a return that is data.
    """
    mask = np.diagonal(covs, axis1=1, axis2=2) > 0.0  # sqrt(clip(v, 0)) > 0 exactly when v > 0
    if observed is not None:
        mask &= observed | (prices != last)
    return mask


@functools.lru_cache(maxsize=64)
def normal_quantile(confidence: float) -> float:
    """``Φ⁻¹(c)`` as :func:`math_logic.get_portfolio_var` multiplies it (its VaR of a unit variance)."""
    return math_logic.get_portfolio_var(np.ones(1), np.ones((1, 1)), 1.0, confidence)[0]


def t_var_multipliers(confidence: float, dofs: Sequence[float]) -> list[float]:
    """``t_ν⁻¹(c) · sqrt((ν - 2) / ν)`` for each ν: :func:`math_logic.student_t_var`'s multiplier (the same floats:
    ``scipy.stats.t.ppf`` is ``scipy.special.stdtrit``, elementwise), for many ν in one call."""
    c = float(confidence)
    nus = [float(nu) for nu in dofs]
    if not 0.0 < c < 1.0 or any(not math.isfinite(nu) or nu <= 2.0 for nu in nus):
        raise ValueError(f"need 0 < confidence < 1 and every dof finite and > 2, got {c}, {nus}")
    quantiles = special.stdtrit(np.array(nus, dtype=np.float64), c).tolist()
    return [q * math.sqrt((nu - 2.0) / nu) for q, nu in zip(quantiles, nus, strict=True)]


def _dof(m2: float, m4: float, lo: float, hi: float) -> float:
    """The tail of :func:`math_logic.fit_student_t_dof` from its two moments."""
    if m2 == 0.0:
        return hi
    kurtosis = m4 / (m2 * m2) - 3.0
    if kurtosis <= 0.0:
        return hi
    return min(max(6.0 / kurtosis + 4.0, lo), hi)


def window_figures(
    windows: Sequence[Float64Array],
    vols: Float64Array,
    exposures: Float64Array,
    *,
    dof_bounds: tuple[float, float] | None,
    tail: int | None,
    observed: Sequence[BoolArray | None] | None = None,
) -> tuple[list[float] | None, list[float] | None]:
    """What the forecasts read from each window: ν of the Student-t and the FHS scenario loss at the VaR rank.

    Parameters
    ----------
    windows : sequence of ndarray, each shape (T, N), C-contiguous
        The windows of standardized returns, oldest first.
    vols : ndarray, shape (B, N)
        ``σ(now) = sqrt(diag Σ)`` of each backtester.
    exposures : ndarray, shape (B, N)
        Dollar exposures ``x`` of each book.
    dof_bounds : (lo, hi), optional
        Fit ν (:func:`math_logic.fit_student_t_dof` of the window, bounded); None: not needed.
    tail : int, optional
        ``k`` (:func:`math_logic.scenario_tail_size`): return the k-th smallest scenario P&L of
        ``p = (z · σ(now))ᵀ x`` (:class:`logic.var_methods.FhsModel`); None: not needed.
    observed : sequence of (ndarray of bool, shape (T, N)) or None, optional
        Per window, which entries are observations: ν is fitted on those only
        (:func:`math_logic.fit_student_t_dof` with ``observed``, the same floats); None (for all, or for one
        window): every entry is. The scenarios fill a missing entry as :func:`math_logic.fhs_scenarios` does
        (:func:`math_logic.fhs_fill_missing`, the same draws), so the k-th loss is the live FHS model's.

    Returns
    -------
    (dofs, kth)
        Lists of one float per window, or None where not asked for.
    """
    b = len(windows)
    dofs: list[float] | None = [] if dof_bounds is not None else None
    kth: list[float] | None = [] if tail is not None else None
    if b == 0:
        return dofs, kth
    t, n = windows[0].shape
    chunk = max(1, CHUNK_BYTES // max(1, 8 * t * n))
    block_buf = np.empty((min(chunk, b), t, n))
    squares_buf = np.empty((min(chunk, b), t * n))
    columns_buf = np.empty((min(chunk, b), n, t))
    for lo in range(0, b, chunk):
        hi = min(b, lo + chunk)
        block = np.stack(windows[lo:hi], out=block_buf[: hi - lo])  # (c, T, N): each window C-contiguous
        if dofs is not None:
            assert dof_bounds is not None
            squares = np.square(block.reshape(hi - lo, t * n), out=squares_buf[: hi - lo])
            masked: list[tuple[int, float, float]] = []
            if observed is not None:
                for j in range(lo, hi):
                    mask = observed[j]
                    if mask is not None:  # the observed entries' squares, in order: fit_student_t_dof's sample
                        kept = squares[j - lo][mask.ravel()]
                        moments = (float(kept.mean()), float(np.square(kept).mean())) if kept.size else (0.0, 0.0)
                        masked.append((j - lo, *moments))  # an empty sample: m2 = 0 gives the upper bound
            m2 = squares.mean(axis=1).tolist()
            np.square(squares, out=squares)
            m4 = squares.mean(axis=1).tolist()
            for j, a, c in masked:
                m2[j], m4[j] = a, c
            dofs.extend(_dof(a, c, *dof_bounds) for a, c in zip(m2, m4, strict=True))
        if kth is not None:
            assert tail is not None
            if observed is not None:  # the missing entries filled as math_logic.fhs_scenarios fills them
                for j in range(lo, hi):
                    mask = observed[j]
                    if mask is not None and not mask.all():
                        block[j - lo] = math_logic.fhs_fill_missing(block[j - lo], mask, vols[j])
            # math_logic.fhs_scenarios (z · σ(now)) written straight into the (N, T) transpose FhsModel keeps:
            # the same products, one pass
            columns = np.multiply(block.transpose(0, 2, 1), vols[lo:hi, :, None], out=columns_buf[: hi - lo])
            pnl = np.matmul(exposures[lo:hi, None, :], columns)[:, 0, :]  # x @ columns, one gemv each
            kth.extend(np.partition(pnl, tail - 1, axis=1)[:, tail - 1].tolist())
    return dofs, kth


def quadratic_forms(covs: Float64Array, exposures: Float64Array) -> list[float]:
    """``xᵀ(Σx)`` of each row (``float(x @ (cov @ x))`` of :func:`math_logic.get_portfolio_var`), before the
    floor at 0."""
    sigma_x = np.matmul(covs, exposures[:, :, None])
    return np.matmul(exposures[:, None, :], sigma_x)[:, 0, 0].tolist()


def as_stack(arrays: Sequence[npt.ArrayLike]) -> Float64Array:
    """Rows of equal shape stacked into one C-contiguous float64 array."""
    return np.ascontiguousarray(np.stack([np.asarray(a, dtype=np.float64) for a in arrays]))
