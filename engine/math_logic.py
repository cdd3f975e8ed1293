"""Pure risk mathematics: arrays in, numbers and arrays out.

This module is the numerical kernel of Riskdesk. It imports only the standard library, numpy, scipy and the
model defaults of :mod:`engine.defaults` (constants): no Redis, no I/O, no clock, no logging configuration.
The rest of the tree calls it; of ours it calls nothing but those constants. The one timer is the EWMA kernel
calibration's ``perf_counter`` (:func:`calibrate_ewma_kernel`): it picks among kernels that give bit-identical
results, so it changes how fast a result comes, never the result.

Conventions
-----------
- ``weights`` are exposures as fractions of ``portfolio_value``: the dollar exposure of asset i is
  ``weights[i] * portfolio_value``. Weights may be negative (shorts) and need not sum to one. To work in
  dollars, pass dollar exposures as weights and ``portfolio_value=1``.
- Covariance matrices are of per-bar (one-minute) log returns. ``horizon`` is a number of bars; a one-bar
  figure scales by ``sqrt(horizon)``. This module knows nothing about bars per day: callers pass it from
  settings.
- VaR, CVaR and liquidity costs are positive numbers for losses.
- Bad input raises ``ValueError`` before anything is computed or mutated.
- Functions taking a covariance matrix accept a keyword-only ``validate``. With ``validate=True`` the matrix
  is checked to be finite, symmetric and positive semi-definite, which costs O(N^3). Hot paths that validated
  the matrix once pass ``validate=False``; then only O(1) shape checks are made on the matrix and O(N) checks
  on vectors.
"""

from __future__ import annotations

import functools
import math
import operator
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, overload

import numpy as np
import numpy.typing as npt
from scipy import linalg, special, stats
from scipy.linalg import blas

from engine.defaults import (
    DAILY_VOL_FOR_IMPACT,
    EWMA_DECAY,
    LIQUIDITY_IMPACT_COEF,
    REPORTED_CONFIDENCES,
    TRADING_DAYS_PER_YEAR,
    VAR_CONFIDENCE,
)

Float64Array = npt.NDArray[np.float64]

_SYMMETRY_RTOL: Final = 1e-10
"""Largest |C - C.T| accepted, relative to max |C|, when validating a covariance matrix."""

_PSD_RTOL: Final = 1e-10
"""Smallest eigenvalue accepted, as a fraction of -trace(C), when validating positive semi-definiteness."""

_MONTE_CARLO_CHUNK: Final = 1 << 20
"""Normal draws generated at a time by the Monte Carlo VaR, to bound memory at large N."""


# ----------------------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------------------


def _finite_scalar(value: float, name: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    return x


def _positive_scalar(value: float, name: str) -> float:
    x = _finite_scalar(value, name)
    if x <= 0.0:
        raise ValueError(f"{name} must be > 0, got {x}")
    return x


def _non_negative_scalar(value: float, name: str) -> float:
    x = _finite_scalar(value, name)
    if x < 0.0:
        raise ValueError(f"{name} must be >= 0, got {x}")
    return x


def _open_unit_interval(value: float, name: str) -> float:
    x = _finite_scalar(value, name)
    if not 0.0 < x < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {x}")
    return x


def _integer(value: int, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _vector(values: npt.ArrayLike, name: str, length: int | None = None) -> Float64Array:
    """Return ``values`` as a finite 1-D float64 array (no copy when it already is one)."""
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 1-D array of real numbers") from None
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
    if length is not None and x.shape[0] != length:
        raise ValueError(f"{name} has length {x.shape[0]}, expected {length}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _square_matrix(values: npt.ArrayLike, name: str, size: int | None = None) -> Float64Array:
    """Return ``values`` as a square float64 array, checking only its shape (O(1))."""
    try:
        m = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 2-D array of real numbers") from None
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"{name} must be a square 2-D array, got shape {m.shape}")
    if size is not None and m.shape[0] != size:
        raise ValueError(f"{name} has shape {m.shape}, expected ({size}, {size}) to match the weights")
    return m


def _check_symmetric_psd(m: Float64Array, name: str) -> None:
    """Raise unless ``m`` is finite, symmetric and positive semi-definite. O(N^3)."""
    if not np.isfinite(m).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    n = m.shape[0]
    if n == 0:
        return
    scale = float(np.max(np.abs(m)))
    if float(np.max(np.abs(m - m.T))) > _SYMMETRY_RTOL * scale:
        raise ValueError(f"{name} is not symmetric")
    diagonal = np.diagonal(m)
    if (diagonal < 0.0).any():
        raise ValueError(f"{name} has a negative variance on its diagonal")
    trace = float(diagonal.sum())
    if trace == 0.0:
        # A symmetric matrix with a zero diagonal is PSD only if it is zero.
        if scale != 0.0:
            raise ValueError(f"{name} is not positive semi-definite")
        return
    # Cholesky of C + eps*I succeeds iff the smallest eigenvalue is above about -eps: an O(N^3/3) test that
    # accepts singular matrices (zero-variance assets, EWMA seeded from few rows) and rounding noise.
    # Scaled to a unit largest entry first, so tiny (even subnormal) matrices get a jitter that registers.
    jittered = m / scale
    jittered.flat[:: n + 1] += _PSD_RTOL * (trace / scale)
    try:
        linalg.cholesky(jittered, lower=True, check_finite=False)
    except linalg.LinAlgError:
        raise ValueError(f"{name} is not positive semi-definite") from None


def _covariance(
    cov_matrix: npt.ArrayLike, size: int | None, validate: bool, name: str = "cov_matrix"
) -> Float64Array:
    m = _square_matrix(cov_matrix, name, size)
    if validate:
        _check_symmetric_psd(m, name)
    return m


@functools.lru_cache(maxsize=128)
def _norm_ppf(confidence: float) -> float:
    # norm.ppf costs ~50 us per call; the same few confidence levels are asked for on every tick.
    return float(stats.norm.ppf(confidence))


def _z_score(confidence: float) -> float:
    return _norm_ppf(_open_unit_interval(confidence, "confidence"))


def _portfolio_variance(w: Float64Array, cov: Float64Array) -> float:
    # wᵀΣw may round to a tiny negative number for a (near) riskless book.
    return max(float(w @ (cov @ w)), 0.0)


def _var_scale(portfolio_value: float, horizon: float) -> float:
    value = _non_negative_scalar(portfolio_value, "portfolio_value")
    return value * math.sqrt(_positive_scalar(horizon, "horizon"))


# ----------------------------------------------------------------------------------------------------------
# Parametric VaR and its decomposition
# ----------------------------------------------------------------------------------------------------------


def get_portfolio_var(
    weights: npt.ArrayLike,
    cov_matrix: npt.ArrayLike,
    portfolio_value: float,
    confidence: float = VAR_CONFIDENCE,
    horizon: float = 1.0,
    *,
    validate: bool = True,
) -> tuple[float, float]:
    """Parametric (delta-normal) value at risk.

    Parameters
    ----------
    weights : array_like, shape (N,)
        Exposures as fractions of ``portfolio_value``.
    cov_matrix : array_like, shape (N, N)
        Covariance of one-bar log returns.
    portfolio_value : float
        Portfolio value in dollars, >= 0.
    confidence : float
        Confidence level c in (0, 1).
    horizon : float
        Horizon in bars, > 0.

    Returns
    -------
    var_dollar : float
        VaR in dollars over ``horizon`` bars.
    port_std_dev : float
        One-bar standard deviation of the portfolio return, as a fraction of ``portfolio_value``.

    Notes
    -----
    ``σ_p = sqrt(wᵀΣw)``, ``VaR = z_c · σ_p · V · sqrt(h)`` with ``z_c = Φ⁻¹(c)`` (1.6449 at 95%, not 1.65).
    Below c = 0.5 the VaR is negative.
    """
    w = _vector(weights, "weights")
    cov = _covariance(cov_matrix, w.shape[0], validate)
    z = _z_score(confidence)
    scale = _var_scale(portfolio_value, horizon)
    sigma = math.sqrt(_portfolio_variance(w, cov))
    return z * sigma * scale, sigma


def get_portfolio_cvar(
    weights: npt.ArrayLike,
    cov_matrix: npt.ArrayLike,
    portfolio_value: float,
    confidence: float = VAR_CONFIDENCE,
    horizon: float = 1.0,
    *,
    validate: bool = True,
) -> float:
    """Parametric expected shortfall (CVaR) of a normal portfolio return, in dollars.

    Parameters are those of :func:`get_portfolio_var`.

    Notes
    -----
    ``ES = σ_p · φ(z_c) / (1 - c) · V · sqrt(h)``, the mean loss beyond the VaR when returns are normal.
    """
    w = _vector(weights, "weights")
    cov = _covariance(cov_matrix, w.shape[0], validate)
    c = _open_unit_interval(confidence, "confidence")
    z = _norm_ppf(c)
    scale = _var_scale(portfolio_value, horizon)
    sigma = math.sqrt(_portfolio_variance(w, cov))
    density = math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return sigma * density / (1.0 - c) * scale


def _var_gradient_terms(
    weights: npt.ArrayLike, cov: npt.ArrayLike, value: float, confidence: float, horizon: float, validate: bool
) -> tuple[Float64Array, Float64Array, float, Float64Array, float]:
    """Validated ``w`` and ``Σ``, ``z_c · V · sqrt(h)``, ``Σw`` and ``σ_p``: what the VaR gradient is made of."""
    w = _vector(weights, "weights")
    m = _covariance(cov, w.shape[0], validate)
    z_scale = _z_score(confidence) * _var_scale(value, horizon)
    sigma_w = m @ w
    sigma = math.sqrt(max(float(w @ sigma_w), 0.0))
    return w, m, z_scale, sigma_w, sigma


def calculate_marginal_var(
    weights: npt.ArrayLike,
    cov_matrix: npt.ArrayLike,
    portfolio_value: float,
    confidence: float = VAR_CONFIDENCE,
    *,
    horizon: float = 1.0,
    validate: bool = True,
) -> Float64Array:
    """Marginal VaR: the derivative of the dollar VaR with respect to each weight.

    Returns
    -------
    ndarray, shape (N,)
        ``∂VaR/∂w_i`` in dollars per unit of weight: adding ``dw`` of asset i (``dw · V`` dollars) changes the
        VaR by about ``marginal_i · dw`` dollars.

    Notes
    -----
    ``∂VaR/∂w_i = z_c · (Σw)_i / σ_p · V · sqrt(h)``.

    A riskless book (``σ_p = 0``) has no derivative; the one-sided derivative of adding asset i to it is
    returned instead: ``z_c · sqrt(Σ_ii) · V · sqrt(h)`` (VaR grows by that much per unit of weight added).
    """
    w, cov, z_scale, sigma_w, sigma = _var_gradient_terms(
        weights, cov_matrix, portfolio_value, confidence, horizon, validate
    )
    if sigma == 0.0:
        return z_scale * np.sqrt(np.clip(np.diagonal(cov), 0.0, None))
    return (z_scale / sigma) * sigma_w


def calculate_component_var(
    weights: npt.ArrayLike,
    cov_matrix: npt.ArrayLike,
    portfolio_value: float,
    confidence: float = VAR_CONFIDENCE,
    *,
    horizon: float = 1.0,
    validate: bool = True,
) -> Float64Array:
    """Component VaR: each asset's share of the portfolio VaR, in dollars.

    Notes
    -----
    ``CVaR_i = w_i · ∂VaR/∂w_i = z_c · w_i (Σw)_i / σ_p · V · sqrt(h)``; by Euler's theorem the components sum
    to the portfolio VaR. A riskless book (``σ_p = 0``) has VaR 0 and all components 0.
    """
    w, _, z_scale, sigma_w, sigma = _var_gradient_terms(
        weights, cov_matrix, portfolio_value, confidence, horizon, validate
    )
    if sigma == 0.0:
        return np.zeros_like(w)
    return (z_scale / sigma) * (w * sigma_w)


def _var_increase(variance: float, variance_change: float, z: float, scale: float) -> float:
    """``z·scale·(σ' - σ)`` from σ² and σ'² - σ², without the cancellation of subtracting two square roots."""
    if variance + variance_change < 0.0:
        variance_change = -variance  # rounding: the new variance cannot be negative
    sigma = math.sqrt(variance)
    sigma_new = math.sqrt(variance + variance_change)
    if sigma + sigma_new == 0.0:
        return 0.0
    # σ' - σ = (σ'² - σ²) / (σ' + σ)
    return z * scale * variance_change / (sigma + sigma_new)


def incremental_var_single(
    index: int,
    delta: float,
    weights: npt.ArrayLike,
    cov_matrix: npt.ArrayLike,
    portfolio_value: float,
    port_variance: float,
    confidence: float = VAR_CONFIDENCE,
    *,
    horizon: float = 1.0,
) -> float:
    """Incremental VaR of changing one weight, in O(N): the pre-trade hot path.

    Parameters
    ----------
    index : int
        Asset whose weight changes, ``0 <= index < N``.
    delta : float
        Change of its weight (a fraction of ``portfolio_value``).
    weights, cov_matrix, portfolio_value, confidence, horizon
        As in :func:`get_portfolio_var`. They are not validated beyond shapes: the caller validated them.
    port_variance : float
        ``wᵀΣw`` of the current weights, cached by the caller. Tiny negative values (rounding) count as 0.

    Returns
    -------
    float
        ``VaR(w + delta·e_i) - VaR(w)`` in dollars.

    Notes
    -----
    ``σ'² = σ² + 2Δ(Σw)_i + Δ²Σ_ii`` reads one row of Σ; the increase is computed as
    ``z_c · (σ'² - σ²) / (σ' + σ) · V · sqrt(h)`` to avoid cancellation.
    """
    w = np.asarray(weights, dtype=np.float64)
    cov = np.asarray(cov_matrix, dtype=np.float64)
    n = w.shape[0] if w.ndim == 1 else -1
    if n < 0 or cov.shape != (n, n):
        raise ValueError(f"weights {w.shape} and cov_matrix {cov.shape} do not match")
    i = _integer(index, "index")
    if not 0 <= i < n:
        raise ValueError(f"index {i} is out of range for {n} assets")
    d = _finite_scalar(delta, "delta")
    variance = max(_finite_scalar(port_variance, "port_variance"), 0.0)
    z = _z_score(confidence)
    scale = _var_scale(portfolio_value, horizon)
    # Σ is symmetric, so row i equals column i; take whichever is contiguous.
    row = cov[i] if cov.flags.c_contiguous else cov[:, i]
    variance_change = 2.0 * d * float(row @ w) + d * d * float(cov[i, i])
    result = _var_increase(variance, variance_change, z, scale)
    if not math.isfinite(result):
        raise ValueError("incremental VaR is not finite: weights or the covariance row contain NaN or inf")
    return result


def calculate_incremental_var(
    current_weights: npt.ArrayLike,
    trade_delta: npt.ArrayLike,
    cov_matrix: npt.ArrayLike,
    portfolio_value: float,
    confidence: float = VAR_CONFIDENCE,
    *,
    port_variance: float | None = None,
    horizon: float = 1.0,
    validate: bool = True,
) -> float:
    """Incremental VaR of a trade: ``VaR(w + Δ) - VaR(w)`` in dollars, at the same portfolio value.

    Parameters
    ----------
    current_weights : array_like, shape (N,)
        Weights before the trade.
    trade_delta : array_like, shape (N,)
        Change of each weight.
    port_variance : float, optional
        Cached ``wᵀΣw`` of ``current_weights``; computed (O(N²)) when not given.

    Notes
    -----
    With ``σ'² - σ² = Δᵀ Σ (2w + Δ)`` the result is ``z_c · (σ'² - σ²) / (σ' + σ) · V · sqrt(h)``.
    When exactly one entry of Δ is non-zero this needs one row of Σ (O(N), see
    :func:`incremental_var_single`); otherwise one matrix-vector product.
    """
    w = _vector(current_weights, "current_weights")
    delta = _vector(trade_delta, "trade_delta", w.shape[0])
    cov = _covariance(cov_matrix, w.shape[0], validate)
    z = _z_score(confidence)
    scale = _var_scale(portfolio_value, horizon)
    if port_variance is None:
        variance = _portfolio_variance(w, cov)
    else:
        variance = max(_finite_scalar(port_variance, "port_variance"), 0.0)
    traded = np.flatnonzero(delta)
    if traded.size == 0:
        return 0.0
    if traded.size == 1:
        i = int(traded[0])
        return incremental_var_single(
            i, float(delta[i]), w, cov, portfolio_value, variance, confidence, horizon=horizon
        )
    variance_change = float(delta @ (cov @ (2.0 * w + delta)))
    return _var_increase(variance, variance_change, z, scale)


def liquidity_cost(
    quantity: float,
    price: float,
    bid: float,
    ask: float,
    avg_vol: float,
    daily_vol: float = DAILY_VOL_FOR_IMPACT,
    impact_coef: float = LIQUIDITY_IMPACT_COEF,
) -> float:
    """Cost of liquidating ``quantity`` shares: half the spread plus square-root-law impact, in dollars.

    Parameters
    ----------
    quantity : float
        Shares to trade; the sign is ignored.
    price : float
        Reference price, > 0.
    bid, ask : float
        Quotes, ``0 <= bid <= ask``.
    avg_vol : float
        Average daily volume in shares, > 0.
    daily_vol : float
        Daily return volatility, >= 0.
    impact_coef : float
        Square-root-law coefficient, >= 0.

    Notes
    -----
    ``cost = (ask - bid)/2 · |q| + k · σ_d · sqrt(|q| / ADV) · price · |q|``.
    """
    q = abs(_finite_scalar(quantity, "quantity"))
    p = _positive_scalar(price, "price")
    b = _non_negative_scalar(bid, "bid")
    a = _non_negative_scalar(ask, "ask")
    if b > a:
        raise ValueError(f"bid {b} is above ask {a}")
    adv = _positive_scalar(avg_vol, "avg_vol")
    sigma_d = _non_negative_scalar(daily_vol, "daily_vol")
    k = _non_negative_scalar(impact_coef, "impact_coef")
    return (a - b) / 2.0 * q + k * sigma_d * math.sqrt(q / adv) * p * q


calculate_liquidity_var = liquidity_cost
"""The SPEC.md name of :func:`liquidity_cost` (it returns a cost in dollars, not a VaR)."""


# ----------------------------------------------------------------------------------------------------------
# Returns and covariance estimation
# ----------------------------------------------------------------------------------------------------------


def log_returns(prev_prices: npt.ArrayLike, prices: npt.ArrayLike) -> Float64Array:
    """Log returns between two price arrays of the same shape.

    Notes
    -----
    ``r = ln(P_t / P_{t-1})``; every price must be finite and > 0.
    """
    prev = np.asarray(prev_prices, dtype=np.float64)
    curr = np.asarray(prices, dtype=np.float64)
    if prev.shape != curr.shape:
        raise ValueError(f"prev_prices {prev.shape} and prices {curr.shape} differ in shape")
    for name, p in (("prev_prices", prev), ("prices", curr)):
        if not np.isfinite(p).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        if (p <= 0.0).any():
            raise ValueError(f"{name} must be > 0")
    return np.log(curr / prev)


def _check_decay(decay: float) -> float:
    return _open_unit_interval(decay, "decay")


EwmaKernel = Callable[[Float64Array, Float64Array, float], None]
"""``kernel(cov, s, lam)``: ``cov <- fl(fl(lam * cov) + fl(s sᵀ))`` in place; ``cov`` is C- or F-contiguous."""


def _column_major(cov: Float64Array) -> Float64Array:
    # BLAS wants column-major. The transpose of a C-contiguous array is column-major, and the update commutes
    # with transposition ((λA + s sᵀ)ᵀ = λAᵀ + s sᵀ), so updating the transpose in place updates the array.
    return cov if cov.flags.f_contiguous else cov.T


def _row_major(cov: Float64Array) -> Float64Array:
    return cov if cov.flags.c_contiguous else cov.T


def _kernel_dgemm(cov: Float64Array, s: Float64Array, lam: float) -> None:
    """Scale by λ (numpy), then add s sᵀ with a k=1 dgemm: two memory passes, the BLAS one threaded."""
    column_major = _column_major(cov)
    np.multiply(cov, lam, out=cov)
    updated = blas.dgemm(1.0, s[:, np.newaxis], s[np.newaxis, :], beta=1.0, c=column_major, overwrite_c=True)
    if updated is not column_major:  # the wrapper copied (it does not for contiguous float64): keep in place
        column_major[...] = updated


def _kernel_dgemm_beta(cov: Float64Array, s: Float64Array, lam: float) -> None:
    """One dgemm call ``C <- 1·s sᵀ + λ·C``: BLAS scales C by beta itself, then adds the product."""
    column_major = _column_major(cov)
    updated = blas.dgemm(1.0, s[:, np.newaxis], s[np.newaxis, :], beta=lam, c=column_major, overwrite_c=True)
    if updated is not column_major:
        column_major[...] = updated


def _kernel_numpy(cov: Float64Array, s: Float64Array, lam: float) -> None:
    """The plain in-place numpy update (one N² temporary): the reference the others must reproduce."""
    np.multiply(cov, lam, out=cov)
    np.add(cov, np.outer(s, s), out=cov)


_BLOCK_ELEMENTS: Final = 16_384
"""Elements (128 KiB) per row block of the blocked numpy kernel: the block stays in L2 between its passes."""


def _kernel_numpy_blocked(cov: Float64Array, s: Float64Array, lam: float) -> None:
    """The numpy update by blocks of rows, so the scale, the product and the sum reuse a cached block."""
    m = _row_major(cov)
    n = m.shape[0]
    rows = max(1, _BLOCK_ELEMENTS // max(n, 1))
    scratch = np.empty((min(rows, n), n))
    column = s[:, np.newaxis]
    for start in range(0, n, rows):
        block = m[start : start + rows]
        product = scratch[: block.shape[0]]
        np.multiply(column[start : start + rows], s, out=product)
        np.multiply(block, lam, out=block)
        np.add(block, product, out=block)


EWMA_KERNELS: Final[Mapping[str, EwmaKernel]] = {
    "numpy": _kernel_numpy,
    "numpy_blocked": _kernel_numpy_blocked,
    "dgemm": _kernel_dgemm,
    "dgemm_beta": _kernel_dgemm_beta,
}
"""Candidate implementations of one EWMA update, by name. Each rounds ``fl(fl(λ a_ij) + fl(s_i s_j))``."""

EWMA_REFERENCE_KERNEL: Final = "numpy"
"""The kernel every other must reproduce bit for bit to be chosen (it is always eligible)."""


@dataclass(frozen=True)
class EwmaCalibration:
    """Outcome of :func:`calibrate_ewma_kernel` for one matrix size."""

    n: int
    chosen: str
    seconds: Mapping[str, float]
    """Best time of one update per eligible kernel (seconds)."""
    excluded: tuple[str, ...] = ()
    """Kernels that did not reproduce the reference bit for bit on this machine (never chosen)."""
    pinned: bool = False
    """True when the choice was set by :func:`pin_ewma_kernel`, not measured."""


def calibrate_ewma_kernel(
    n: int,
    *,
    kernels: Mapping[str, EwmaKernel] = EWMA_KERNELS,
    timer: Callable[[], float] = time.perf_counter,
    rounds: int | None = None,
) -> EwmaCalibration:
    """Time every kernel on a synthetic N x N matrix and pick the fastest one that is bit-identical.

    Parameters
    ----------
    n : int
        Matrix size (the speed of a kernel depends on it: caches, BLAS threading, call overhead).
    kernels : mapping, optional
        Candidates by name; must hold :data:`EWMA_REFERENCE_KERNEL`. Tests inject their own.
    timer : callable, optional
        Monotonic seconds (tests inject a fake one).
    rounds : int, optional
        Timed rounds (the candidates interleaved in each, the best round kept); by default fewer for large N
        so a calibration costs tens of milliseconds at most.

    Notes
    -----
    Which kernel is fastest differs by machine and load: a threaded BLAS call beats numpy several times over on
    an idle multi-core machine and loses to it on a busy one. Every candidate is first run once on the same
    input; one whose result differs from the reference kernel's by even one ulp is excluded, so the choice
    never changes a result (the daemon, the warm-up and the backtest stay bit-identical whatever each picked).
    """
    size = _integer(n, "n")
    if size < 0:
        raise ValueError("n must be >= 0")
    if EWMA_REFERENCE_KERNEL not in kernels:
        raise ValueError(f"kernels must include the reference kernel {EWMA_REFERENCE_KERNEL!r}")
    lam = 0.94
    rng = np.random.default_rng(size)
    start = rng.random((size, size)) * 1e-4  # varied mantissas (rounding differences show), cheap at large N
    s = rng.standard_normal(size) * 1e-2
    expected = start.copy()
    kernels[EWMA_REFERENCE_KERNEL](expected, s, lam)
    eligible: dict[str, EwmaKernel] = {}
    excluded: list[str] = []
    for name, kernel in kernels.items():
        trial = start.copy()
        kernel(trial, s, lam)
        if np.array_equal(trial, expected):
            eligible[name] = kernel
        else:
            excluded.append(name)
    if rounds is None:
        rounds = 3 if size >= 1000 else 5 if size >= 200 else 15
    calls = max(1, min(50, 20_000 // max(size * size, 1)))  # batch tiny updates above the timer's resolution
    work = start  # reused in place: values stay O(1e-4) (λ < 1 plus the s sᵀ term), far from subnormals
    best = dict.fromkeys(eligible, math.inf)
    for _ in range(max(1, int(rounds))):
        for name, kernel in eligible.items():
            began = timer()
            for _ in range(calls):
                kernel(work, s, lam)
            best[name] = min(best[name], (timer() - began) / calls)
    chosen = min(best, key=lambda name: (best[name], name != EWMA_REFERENCE_KERNEL))
    return EwmaCalibration(size, chosen, best, tuple(excluded))


_EWMA_CALIBRATIONS: dict[int, EwmaCalibration] = {}
"""Per-process cache of :func:`calibrate_ewma_kernel` by matrix size (a calibration runs once per N)."""

_EWMA_PINNED: list[str] = []
"""The kernel :func:`pin_ewma_kernel` forces for every size (empty: measure)."""


def ewma_kernel_calibration(n: int) -> EwmaCalibration:
    """The kernel used for N x N updates in this process: pinned, else measured once and cached."""
    if _EWMA_PINNED:
        return EwmaCalibration(n, _EWMA_PINNED[0], {}, pinned=True)
    found = _EWMA_CALIBRATIONS.get(n)
    if found is None:  # two threads may both calibrate the first time: harmless, the last one is kept
        found = _EWMA_CALIBRATIONS[n] = calibrate_ewma_kernel(n)
    return found


def pin_ewma_kernel(name: str | None) -> None:
    """Force kernel ``name`` for every size (tests, benchmarks); ``None`` returns to measured choices."""
    if name is not None and name not in EWMA_KERNELS:
        raise ValueError(f"unknown EWMA kernel {name!r}; known: {', '.join(EWMA_KERNELS)}")
    _EWMA_PINNED.clear()
    if name is not None:
        _EWMA_PINNED.append(name)


def update_covariance_ewma(
    old_cov: Float64Array,
    returns: npt.ArrayLike,
    decay: float = EWMA_DECAY,
    *,
    validate: bool = True,
    kernel: str | None = None,
) -> Float64Array:
    """RiskMetrics EWMA covariance update, in place.

    Parameters
    ----------
    old_cov : ndarray, shape (N, N)
        Writeable, C- or F-contiguous float64 covariance matrix; overwritten with the update.
    returns : array_like, shape (N,)
        One-bar log returns.
    decay : float
        λ in (0, 1).
    validate : bool
        Check ``old_cov`` is finite, symmetric and PSD first (O(N³)). With False only the returns are checked.
    kernel : str, optional
        A name of :data:`EWMA_KERNELS`; by default the one :func:`ewma_kernel_calibration` measured fastest
        for this N on this machine (every candidate gives the same bits).

    Returns
    -------
    ndarray
        ``old_cov`` itself.

    Notes
    -----
    ``Σ_t = λ Σ_{t-1} + (1 - λ) r rᵀ`` (zero mean). With ``s = sqrt(1 - λ) r`` each entry becomes
    ``fl(fl(λ a_ij) + fl(s_i s_j))``, which is the same for ij and ji, so a bitwise-symmetric matrix stays
    bitwise symmetric. PSD is preserved: a PSD matrix scaled by λ > 0 plus a rank-one PSD term. A rank-one
    dger is not a candidate: it is not bitwise symmetric (OpenBLAS's FMA kernels fuse the multiply-add in
    their vector body and round the product separately in their scalar tail, so a_ij and a_ji can differ by
    an ulp when N is not a multiple of the vector length).
    """
    lam = _check_decay(decay)
    if not isinstance(old_cov, np.ndarray) or old_cov.dtype != np.float64:
        raise ValueError("old_cov must be a float64 numpy array (it is updated in place)")
    if old_cov.ndim != 2 or old_cov.shape[0] != old_cov.shape[1]:
        raise ValueError(f"old_cov must be square, got shape {old_cov.shape}")
    if not old_cov.flags.writeable:
        raise ValueError("old_cov must be writeable (it is updated in place)")
    if not (old_cov.flags.c_contiguous or old_cov.flags.f_contiguous):
        raise ValueError("old_cov must be C- or F-contiguous (it is updated in place)")
    if kernel is not None and kernel not in EWMA_KERNELS:
        raise ValueError(f"unknown EWMA kernel {kernel!r}; known: {', '.join(EWMA_KERNELS)}")
    n = old_cov.shape[0]
    r = _vector(returns, "returns", n)
    if validate:
        _check_symmetric_psd(old_cov, "old_cov")
    if n == 0:
        return old_cov
    s = math.sqrt(1.0 - lam) * r
    EWMA_KERNELS[kernel or ewma_kernel_calibration(n).chosen](old_cov, s, lam)
    return old_cov


def ewma_partial_factors(observed: npt.ArrayLike, decay: float = EWMA_DECAY) -> Float64Array:
    """The factors ``F_ij = a_i a_j`` of a partial EWMA update (:func:`update_covariance_ewma_observed`).

    Parameters
    ----------
    observed : array_like of bool, shape (N,) or (B, N)
        True where the ticker had a new price in the bar.
    decay : float
        λ in (0, 1).

    Returns
    -------
    ndarray, shape (N, N) or (B, N, N)
        ``λ`` where both tickers are observed, ``fl(sqrt(λ))`` where one is, ``1`` where neither is: each entry is
        a single float, so an observed pair is scaled by exactly the ``λ`` of :func:`update_covariance_ewma`
        (``sqrt(λ)·sqrt(λ)`` would round differently).
    """
    lam = _check_decay(decay)
    mask = np.asarray(observed)
    if mask.dtype != np.bool_ or mask.ndim not in (1, 2):
        raise ValueError(f"observed must be a 1-D or 2-D boolean array, got {mask.dtype} {mask.shape}")
    root = math.sqrt(lam)
    if_observed = np.where(mask, lam, root)  # the factors of a row whose ticker is observed
    if_missing = np.where(mask, root, 1.0)  # of a row whose ticker is not
    factors: Float64Array = np.where(
        mask[..., :, np.newaxis], if_observed[..., np.newaxis, :], if_missing[..., np.newaxis, :]
    )
    return factors


def per_bar_returns(returns: npt.ArrayLike, gaps: npt.ArrayLike) -> Float64Array:
    """Returns that each span ``g_i`` bars, scaled to one bar: ``r_i / sqrt(g_i)``.

    Parameters
    ----------
    returns : array_like, shape (N,)
        Log returns since each ticker's previous price.
    gaps : array_like, shape (N,)
        ``g_i > 0``: the bars of variance the return spans, usually the bars since that previous price (1: it
        printed in the bar before). Only its ratio to one bar matters, so it need not be an integer (a replay's
        row may span several model bars; :func:`session_spans` gives a bar of the open market less than one
        and a night more).

    Returns
    -------
    ndarray, shape (N,)
        A new array; an entry with ``g = 1`` keeps its bits (``r / 1.0`` is ``r``).

    Notes
    -----
    A ticker that prints rarely has, at its next print, the return accumulated since its last one: under a
    random walk of one-bar variance ``σ²`` its variance is ``g σ²``. Fed into the EWMA as one bar it inflates
    the one-bar variance by about the mean gap (a ticker printing in 6% of bars: a one-bar vol about 4x its
    true one), and standardized by ``σ`` its innovation has standard deviation ``sqrt(g)``, not 1. Scaled by
    ``1 / sqrt(g)`` it is an unbiased one-bar draw: the EWMA gets its variance as ``r² / g`` (a g-bar variance
    scaled to one bar) and :func:`standardize_observed` the innovation ``r / (σ sqrt(g))``. Its covariance with
    a ticker observed every bar is then ``ρ σ_i σ_j / sqrt(g)`` in expectation (only the last of the g bars
    overlaps the other's one-bar return): asynchronous prices understate correlation (the Epps effect), as
    any close-to-close estimate on stale prices does.
    """
    r = _vector(returns, "returns")
    g = _vector(gaps, "gaps", r.shape[0])
    if not (g > 0.0).all():
        raise ValueError("gaps must be > 0 (bars of variance since the previous price)")
    return r / np.sqrt(g)


def session_spans(
    bars: npt.ArrayLike,
    nights: npt.ArrayLike | None,
    night_share: float,
    bars_per_day: float,
    bar_scale: float = 1.0,
) -> Float64Array:
    """Bars of the model's variance spanned by returns of ``bars`` feed bars of open market and ``nights`` nights.

    Parameters
    ----------
    bars : array_like, shape (N,)
        Feed bars since each ticker's previous price (>= 1).
    nights : array_like, shape (N,), or None
        Session opens between that price and this one (0 or None: the same session).
    night_share : float
        ``φ >= 0``: a night's variance over one session's (``model.night_variance_share``).
    bars_per_day : float
        ``B``: model bars in a day (``model.bars_per_day``).
    bar_scale : float
        ``s``: model bars per feed bar (1 for a live feed).

    Returns
    -------
    ndarray, shape (N,)
        ``(bars + nights · φ B / s) / (1 + φ)``, in feed bars of the model's variance: the ``gaps`` of
        :func:`per_bar_returns`. With ``φ = 0`` the bars themselves (a new float array): a night is no time.

    Notes
    -----
    The model's one-bar variance ``v`` is that of a bar of a whole trading day, its night included: a
    close-to-close day is ``B`` bars of ``v`` (what the horizon scaling of every VaR, the warm-up from daily closes
    and a daily replay all assume). Within it a session of ``B`` open-market bars of variance ``u`` each has
    ``B u``, the night before it ``φ B u``, so ``(1 + φ) B u = B v`` and ``u = v / (1 + φ)``. A return over ``b``
    feed bars of ``s`` model bars each and ``n`` nights has variance ``(b s + n φ B) u``, that is
    ``(b + n φ B / s) / (1 + φ)`` feed bars of ``s v``. Scaled by the square root of that (:func:`per_bar_returns`)
    every return is one bar of ``v``: an opening gap enters the EWMA as the draw it is from a night's
    distribution, not as a 47-sigma minute, and a bar of the open market slightly larger than its own variance
    (``sqrt(1 + φ)``), so that the night's share of a day is not lost from the one-day figures.

    A weekend or a holiday is one night: on real US stocks the variance of a weekend's close-to-open return is
    about that of a weeknight's (French and Roll, 1986; :func:`night_variance_share` on the shipped data).
    """
    phi = float(night_share)
    if not (math.isfinite(phi) and phi >= 0.0):
        raise ValueError(f"night_share must be a finite number >= 0, got {night_share!r}")
    b = np.array(bars, dtype=np.float64, copy=True)
    if phi == 0.0:
        return b
    if not (math.isfinite(bars_per_day) and bars_per_day > 0 and math.isfinite(bar_scale) and bar_scale > 0):
        raise ValueError("bars_per_day and bar_scale must be positive numbers")
    if nights is not None:
        b += np.asarray(nights, dtype=np.float64) * (phi * float(bars_per_day) / float(bar_scale))
    b /= 1.0 + phi
    return b


def night_variance_share(opens: npt.ArrayLike, closes: npt.ArrayLike) -> float:
    """Variance of a night as a share of a session's, from consecutive sessions' opening and closing prices.

    Parameters
    ----------
    opens, closes : array_like, shape (T,)
        Each session's first and last price, in session order, adjusted alike for splits and dividends (> 0).

    Returns
    -------
    float
        ``mean(n²) / mean(d²)`` of the nights' log returns ``n_t = ln(O_t / C_{t-1})`` and the sessions'
        ``d_t = ln(C_t / O_t)``, ``t = 1 .. T-1``: the ``model.night_variance_share`` the data give.

    Notes
    -----
    Mean squares, not robust scales: the EWMA is fed squared returns, so what must match is their mean, and the
    nights' is heavy-tailed (earnings are announced outside the session: Apple's 29 Sept. 2000 open was 52 %
    under its close). On the data that ship with the tests the mean squares give about 0.5, a robust scale about
    0.25.
    """
    o = np.asarray(opens, dtype=np.float64)
    c = np.asarray(closes, dtype=np.float64)
    if o.ndim != 1 or o.shape != c.shape or o.shape[0] < 2:
        raise ValueError("opens and closes must be 1-D, of the same length, at least two sessions")
    if not (np.isfinite(o).all() and np.isfinite(c).all() and (o > 0).all() and (c > 0).all()):
        raise ValueError("opens and closes must be finite prices > 0")
    night = np.log(o[1:] / c[:-1])
    day = np.log(c[1:] / o[1:])
    day_ms = float(np.mean(day * day))
    if day_ms == 0.0:
        raise ValueError("the sessions never moved: no share can be measured")
    return float(np.mean(night * night)) / day_ms


def update_covariance_ewma_observed(
    old_cov: Float64Array,
    returns: npt.ArrayLike,
    observed: npt.ArrayLike,
    decay: float = EWMA_DECAY,
    *,
    validate: bool = True,
    gaps: npt.ArrayLike | None = None,
) -> Float64Array:
    """EWMA covariance update, in place, where only the ``observed`` tickers had a new price.

    Parameters
    ----------
    old_cov : ndarray, shape (N, N)
        As for :func:`update_covariance_ewma` (overwritten with the update).
    returns : array_like, shape (N,)
        One-bar log returns; exactly 0 where ``observed`` is False (the last price carried forward).
    observed : array_like of bool, shape (N,)
        True where a new price gave the return (:func:`observed_mask`).
    decay : float
        λ in (0, 1).
    validate : bool
        As for :func:`update_covariance_ewma`.
    gaps : array_like, shape (N,), optional
        Bars each return spans (>= 1, :func:`per_bar_returns`): the returns enter the update as
        ``r / sqrt(g)``. None: every return is of one bar (the same bits as before).

    Returns
    -------
    ndarray
        ``old_cov`` itself.

    Notes
    -----
    A ticker with no new price (halted, missing from the feed, refused by the price filter) carries no
    information about its variance: decaying it by λ as if its return were an observed 0 would shrink it
    geometrically (half-life ``ln 2 / -ln λ``, 11 bars at 0.94) and with it the VaR of the name. The update is
    instead ``Σ' = A Σ A + (1 - λ) r rᵀ`` with ``A = diag(a)``, ``a_i = sqrt(λ)`` for an observed ticker and 1
    for a missing one, and ``r_i = 0`` for a missing one. Entrywise ``Σ'_ij = a_i a_j Σ_ij + (1 - λ) r_i r_j``:
    the observed block gets the full update (the same bits as :func:`update_covariance_ewma` gives it), a
    missing ticker keeps its variance and its covariances with other missing ones, and its covariance with an
    observed ticker is scaled by ``sqrt(λ)``, so after k missing bars it is ``λ^(k/2)`` of its value. A congruence
    of a PSD matrix plus a rank-one PSD term: PSD. The correlation of a missing ticker with the others decays
    no faster than with the full update (the observed variances decay by λ each bar, cov by ``sqrt(λ)``).

    When every ticker is observed this is :func:`update_covariance_ewma` (the same kernel, the same bits); each
    entry otherwise is ``fl(fl(F_ij Σ_ij) + fl(s_i s_j))`` with ``F`` of :func:`ewma_partial_factors` and
    ``s = sqrt(1 - λ) r`` (bitwise symmetric), computed by blocks of rows that stay in cache.
    """
    if not isinstance(old_cov, np.ndarray) or old_cov.ndim != 2:
        raise ValueError("old_cov must be a 2-D float64 numpy array (it is updated in place)")
    mask = observed_mask(observed, (old_cov.shape[0],))
    if gaps is not None:
        returns = per_bar_returns(_vector(returns, "returns", old_cov.shape[0]), gaps)
    if mask.all():
        return update_covariance_ewma(old_cov, returns, decay, validate=validate)
    r = _vector(returns, "returns", old_cov.shape[0])
    if (r[~mask] != 0.0).any():
        raise ValueError("a return where no price was observed must be 0 (the last price carried forward)")
    lam = _check_decay(decay)
    n = old_cov.shape[0]
    if old_cov.dtype != np.float64 or not old_cov.flags.writeable:
        raise ValueError("old_cov must be a writeable float64 numpy array (it is updated in place)")
    if not (old_cov.flags.c_contiguous or old_cov.flags.f_contiguous):
        raise ValueError("old_cov must be C- or F-contiguous (it is updated in place)")
    if validate:
        _check_symmetric_psd(old_cov, "old_cov")
    s = math.sqrt(1.0 - lam) * r
    m = _row_major(old_cov)  # the update commutes with transposition (F and s sᵀ are symmetric)
    root = math.sqrt(lam)
    if_observed = np.where(mask, lam, root)  # the factors of a row whose ticker is observed
    if_missing = np.where(mask, root, 1.0)
    rows = max(1, _BLOCK_ELEMENTS // max(n, 1))
    scratch = np.empty((min(rows, n), n))
    product = np.empty((min(rows, n), n))
    for start in range(0, n, rows):
        block = m[start : start + rows]
        k = block.shape[0]
        np.copyto(scratch[:k], np.where(mask[start : start + rows, np.newaxis], if_observed, if_missing))
        np.multiply(block, scratch[:k], out=block)
        np.multiply(s[start : start + rows, np.newaxis], s, out=product[:k])
        np.add(block, product[:k], out=block)
    return old_cov


def ewma_covariance_from_returns(
    returns_matrix: npt.ArrayLike,
    decay: float = EWMA_DECAY,
    initial: npt.ArrayLike | None = None,
    *,
    seed_rows: int = 30,
) -> Float64Array:
    """EWMA covariance after a history of returns, for warm-up.

    Parameters
    ----------
    returns_matrix : array_like, shape (T, N)
        One-bar log returns, oldest first.
    decay : float
        λ in (0, 1).
    initial : array_like, shape (N, N), optional
        Starting covariance (validated, not modified); every row of ``returns_matrix`` is then applied.
    seed_rows : int
        Without ``initial``, the zero-mean second moment of the first ``m = min(T, seed_rows)`` rows seeds the
        recursion and the remaining rows are applied.

    Returns
    -------
    ndarray, shape (N, N)
        A new C-contiguous, bitwise-symmetric matrix.

    Notes
    -----
    ``Σ_0 = (1/m) Σ_{t<m} r_t r_tᵀ`` (zero mean, as in RiskMetrics), then
    ``Σ_t = λ Σ_{t-1} + (1 - λ) r_t r_tᵀ`` applied with :func:`update_covariance_ewma`, so warm-up gives bit
    for bit what live updates give.
    """
    lam = _check_decay(decay)
    try:
        history = np.asarray(returns_matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("returns_matrix must be a 2-D array of real numbers") from None
    if history.ndim != 2:
        raise ValueError(f"returns_matrix must be 2-D (T, N), got shape {history.shape}")
    if not np.isfinite(history).all():
        raise ValueError("returns_matrix contains NaN or infinite values")
    n_obs, n_assets = history.shape
    if initial is None:
        m = min(n_obs, _integer(seed_rows, "seed_rows"))
        if m < 1:
            raise ValueError("need at least one row of returns (and seed_rows >= 1) to seed the covariance")
        seed = history[:m]
        cov: Float64Array = (seed.T @ seed) / m
        cov = (cov + cov.T) / 2.0  # exactly symmetric, whatever the matmul kernel did
        remaining = history[m:]
    else:
        cov = np.array(
            _covariance(initial, n_assets, True, "initial"), dtype=np.float64, order="C", copy=True
        )
        remaining = history
    for row in remaining:
        update_covariance_ewma(cov, row, lam, validate=False)
    return cov


def correlation_from_covariance(cov: npt.ArrayLike, *, validate: bool = True) -> Float64Array:
    """Correlation matrix of a covariance matrix.

    Notes
    -----
    ``ρ_ij = Σ_ij / (σ_i σ_j)``, clipped to [-1, 1], diagonal exactly 1. An asset with zero variance has
    correlation 0 with every other asset. The result is exactly symmetric.
    """
    m = _covariance(cov, None, validate, "cov")
    vols = np.sqrt(np.clip(np.diagonal(m), 0.0, None))
    denominator = np.multiply.outer(vols, vols)
    corr = np.zeros_like(m)
    np.divide(m, denominator, out=corr, where=denominator > 0.0)
    corr = (corr + corr.T) / 2.0
    np.clip(corr, -1.0, 1.0, out=corr)
    np.fill_diagonal(corr, 1.0)
    return corr


def covariance_from_vols_and_correlation(
    vols: npt.ArrayLike, corr: npt.ArrayLike, *, validate: bool = True
) -> Float64Array:
    """Covariance matrix from volatilities and a correlation.

    Parameters
    ----------
    vols : array_like, shape (N,)
        Volatilities, >= 0.
    corr : float or array_like, shape (N, N)
        A constant correlation for every pair, or a full correlation matrix (unit diagonal, entries in
        [-1, 1]).
    validate : bool
        Check the correlation matrix is symmetric and PSD (O(N³)).

    Notes
    -----
    ``Σ_ij = σ_i σ_j ρ_ij``. A constant ρ is PSD only for ``ρ >= -1/(N - 1)``.
    """
    v = _vector(vols, "vols")
    if (v < 0.0).any():
        raise ValueError("vols must be >= 0")
    n = v.shape[0]
    c = np.asarray(corr, dtype=np.float64)
    if c.ndim == 0:
        rho = _finite_scalar(float(c), "corr")
        if not -1.0 <= rho <= 1.0:
            raise ValueError(f"corr must be in [-1, 1], got {rho}")
        c = np.full((n, n), rho)
        np.fill_diagonal(c, 1.0)
    else:
        c = _square_matrix(c, "corr", n)
        if not np.isfinite(c).all():
            raise ValueError("corr contains NaN or infinite values")
        if (np.abs(c) > 1.0 + 1e-12).any():
            raise ValueError("corr entries must be in [-1, 1]")
        if (np.abs(np.diagonal(c) - 1.0) > 1e-12).any():
            raise ValueError("corr must have a unit diagonal")
    if validate:
        _check_symmetric_psd(c, "corr")
    cov = np.multiply.outer(v, v) * c
    return (cov + cov.T) / 2.0


def build_stressed_covariance(
    cov: npt.ArrayLike,
    vol_multiplier: float = 2.0,
    correlation_floor: float = 0.6,
    *,
    validate: bool = True,
) -> Float64Array:
    """Crisis covariance: volatilities multiplied, correlations raised to a floor, kept PSD.

    Parameters
    ----------
    cov : array_like, shape (N, N)
        Normal-times covariance.
    vol_multiplier : float
        Factor on every volatility, > 0.
    correlation_floor : float
        Lowest off-diagonal correlation in the scenario, in [-1, 1].

    Returns
    -------
    ndarray, shape (N, N)
        Exactly symmetric PSD matrix whose off-diagonal correlations are all >= ``correlation_floor``
        (between assets with non-zero variance).

    Notes
    -----
    ``ρ^f_ij = max(ρ_ij, floor)``: signs are not kept, so diversification between assets held on the same
    side stops working. That is conservative for a long-only book only: between a long and a short leg a
    higher correlation makes the hedge work better, so the VaR of a long/short book under this matrix alone
    may fall below its ordinary VaR. A stressed VaR is therefore never taken from this matrix alone, but
    from the worse of it and of the volatilities multiplied with today's correlations kept
    (:func:`stressed_portfolio_sigma`).

    ``ρ^f`` may not be PSD. Clipping its eigenvalues would push some correlations back below the floor, so
    instead it is shrunk toward ``K = f⁺·11ᵀ + (1 - f⁺)I`` (``f⁺ = max(floor, 0)``,
    PSD with entries >= floor): ``ρ^s = (1 - t)ρ^f + tK`` with the smallest t that Weyl's inequality
    guarantees PSD, ``t = -λ_min(ρ^f) / (λ_min(K) - λ_min(ρ^f))``. Then ``Σ^s_ij = (m σ_i)(m σ_j) ρ^s_ij``.
    """
    m = _covariance(cov, None, validate, "cov")
    k = _positive_scalar(vol_multiplier, "vol_multiplier")
    floor = _finite_scalar(correlation_floor, "correlation_floor")
    if not -1.0 <= floor <= 1.0:
        raise ValueError(f"correlation_floor must be in [-1, 1], got {floor}")
    n = m.shape[0]
    if n == 0:
        return np.zeros((0, 0))
    corr = np.maximum(correlation_from_covariance(m, validate=False), floor)
    np.fill_diagonal(corr, 1.0)
    lowest = float(linalg.eigvalsh(corr, subset_by_index=[0, 0], check_finite=False)[0])
    if lowest < 0.0:
        floor_pos = max(floor, 0.0)
        target = np.full((n, n), floor_pos)
        np.fill_diagonal(target, 1.0)
        target_lowest = 1.0 - floor_pos if n > 1 else 1.0
        t = min(1.0, -lowest / (target_lowest - lowest))
        corr = (1.0 - t) * corr + t * target
        corr = (corr + corr.T) / 2.0
        np.fill_diagonal(corr, 1.0)
    vols = k * np.sqrt(np.clip(np.diagonal(m), 0.0, None))
    stressed: Float64Array = np.multiply.outer(vols, vols) * corr
    return (stressed + stressed.T) / 2.0


@overload
def stressed_portfolio_sigma(floored_sigma: float, sigma: float, vol_multiplier: float) -> float: ...


@overload
def stressed_portfolio_sigma(
    floored_sigma: Float64Array, sigma: Float64Array, vol_multiplier: float
) -> Float64Array: ...


def stressed_portfolio_sigma(
    floored_sigma: float | Float64Array, sigma: float | Float64Array, vol_multiplier: float
) -> float | Float64Array:
    """Stressed standard deviation of a portfolio: the worse of the two crisis scenarios.

    Parameters
    ----------
    floored_sigma : float or ndarray
        ``sqrt(wᵀΣ^s w)``: the portfolio's standard deviation under the crisis matrix of
        :func:`build_stressed_covariance` (volatilities multiplied, correlations raised to the floor).
    sigma : float or ndarray
        ``sqrt(wᵀΣw)``: its standard deviation under today's covariance, of the same book(s).
    vol_multiplier : float
        The crisis factor on every volatility, > 0 (the one the crisis matrix was built with).

    Returns
    -------
    float or ndarray
        ``max(floored_sigma, vol_multiplier · sigma)``, element by element (arrays: one entry per book; a
        NaN propagates, so a caller can tell a figure that is not finite).

    Notes
    -----
    Raising every correlation to the floor is the crisis assumption for assets held on the same side: their
    diversification stops working. Between a long and a short leg it does the opposite: a higher correlation
    makes the hedge work better, and a long/short book can come out with a "stressed" VaR below its ordinary
    VaR although every volatility was multiplied. So the crisis is the worse of two scenarios:

    1. the crisis matrix ``Σ^s`` (correlations floored): ``σ_1 = sqrt(wᵀΣ^s w)``;
    2. volatilities multiplied by ``m`` with today's correlations kept: its covariance is exactly ``m² Σ``,
       so ``σ_2 = m · sqrt(wᵀΣw)`` and no other matrix product is needed.

    ``σ^s = max(σ_1, σ_2) >= m σ >= σ`` for ``m >= 1``: a stressed VaR is never below the ordinary one. For an
    incremental figure (a trade) the maximum is taken for the book before and for the book after the trade
    separately: which scenario is the worse one may change with the trade.
    """
    m = _positive_scalar(vol_multiplier, "vol_multiplier")
    worse = np.maximum(floored_sigma, m * np.asarray(sigma, dtype=np.float64))
    return float(worse) if worse.ndim == 0 else worse


def get_stressed_var(
    weights: npt.ArrayLike,
    stressed_cov: npt.ArrayLike,
    portfolio_value: float,
    confidence: float = REPORTED_CONFIDENCES[-1],
    horizon: float = 1.0,
    *,
    cov: npt.ArrayLike,
    vol_multiplier: float,
    validate: bool = True,
) -> float:
    """Parametric stressed VaR, in dollars: the worse of the crisis matrix and of today's correlations at
    multiplied volatilities (:func:`stressed_portfolio_sigma`).

    Parameters
    ----------
    weights, portfolio_value, confidence, horizon
        As in :func:`get_portfolio_var`.
    stressed_cov : array_like, shape (N, N)
        The crisis covariance (:func:`build_stressed_covariance`).
    cov : array_like, shape (N, N)
        Today's covariance, in the same asset order.
    vol_multiplier : float
        The crisis factor on every volatility, > 0.
    validate : bool
        Check both matrices (O(N³) each).

    Notes
    -----
    ``sVaR = z_c · max(sqrt(wᵀΣ^s w), m · sqrt(wᵀΣw)) · V · sqrt(h)``.
    """
    w = _vector(weights, "weights")
    floored = _covariance(stressed_cov, w.shape[0], validate, "stressed_cov")
    today = _covariance(cov, w.shape[0], validate, "cov")
    z = _z_score(confidence)
    scale = _var_scale(portfolio_value, horizon)
    sigma = stressed_portfolio_sigma(
        math.sqrt(_portfolio_variance(w, floored)), math.sqrt(_portfolio_variance(w, today)), vol_multiplier
    )
    return z * sigma * scale


# ----------------------------------------------------------------------------------------------------------
# Historical and Monte Carlo VaR
# ----------------------------------------------------------------------------------------------------------


def _loss_quantile_and_tail_mean(losses: Float64Array, confidence: float) -> tuple[float, float]:
    var = float(np.quantile(losses, confidence))
    tail = losses[losses >= var]
    return var, float(tail.mean())


def _historical_losses(pnl_or_returns: npt.ArrayLike, portfolio_value: float) -> Float64Array:
    x = _vector(pnl_or_returns, "pnl_or_returns")
    if x.shape[0] == 0:
        raise ValueError("pnl_or_returns is empty")
    return -x * _non_negative_scalar(portfolio_value, "portfolio_value")


def get_historical_var(
    pnl_or_returns: npt.ArrayLike, portfolio_value: float = 1.0, confidence: float = VAR_CONFIDENCE
) -> float:
    """Historical VaR: the ``confidence`` quantile of the losses.

    Parameters
    ----------
    pnl_or_returns : array_like, shape (T,)
        Historical returns (with ``portfolio_value`` the dollar value), or P&L in dollars
        (``portfolio_value=1``).

    Notes
    -----
    Losses ``L = -x · V``; ``VaR = Q_L(c)`` with ``numpy.quantile``'s default linear interpolation
    (Hyndman-Fan type 7) between order statistics. Positive for a loss; negative if even that quantile is
    a gain.
    """
    losses = _historical_losses(pnl_or_returns, portfolio_value)
    return _loss_quantile_and_tail_mean(losses, _open_unit_interval(confidence, "confidence"))[0]


def get_historical_cvar(
    pnl_or_returns: npt.ArrayLike, portfolio_value: float = 1.0, confidence: float = VAR_CONFIDENCE
) -> float:
    """Historical expected shortfall: the mean of the losses at or beyond the historical VaR.

    Notes
    -----
    ``ES = mean{L_t : L_t >= VaR}`` with VaR from :func:`get_historical_var` (never empty: VaR <= max L).
    """
    losses = _historical_losses(pnl_or_returns, portfolio_value)
    return _loss_quantile_and_tail_mean(losses, _open_unit_interval(confidence, "confidence"))[1]


def _factor(cov: Float64Array) -> Float64Array:
    """A matrix L with L Lᵀ = Σ: Cholesky, or the eigen-factor when Σ is singular."""
    factor: Float64Array
    try:
        factor = linalg.cholesky(cov, lower=True, check_finite=False)
    except linalg.LinAlgError:
        eigenvalues, eigenvectors = linalg.eigh(cov, check_finite=False)
        factor = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
    return factor


def get_monte_carlo_var(
    weights: npt.ArrayLike,
    cov_matrix: npt.ArrayLike,
    portfolio_value: float,
    confidence: float = VAR_CONFIDENCE,
    horizon: float = 1.0,
    n_sims: int = 100_000,
    seed: int | np.random.Generator | None = None,
    *,
    validate: bool = True,
) -> tuple[float, float]:
    """Monte Carlo VaR and CVaR from correlated normal asset returns.

    Returns
    -------
    var, cvar : float
        Dollar VaR and expected shortfall over ``horizon`` bars.

    Notes
    -----
    ``x = L z`` with ``L Lᵀ = Σ`` (Cholesky, or the eigen-factor when Σ is singular) and ``z ~ N(0, I)``
    drawn from ``numpy.random.default_rng(seed)``. The portfolio return ``wᵀx = (Lᵀw)ᵀ z`` needs one
    N-vector, so the draws are reduced chunk by chunk. Losses ``-wᵀx · V · sqrt(h)`` are summarised as in
    :func:`get_historical_var` and :func:`get_historical_cvar`.
    """
    w = _vector(weights, "weights")
    cov = _covariance(cov_matrix, w.shape[0], validate)
    c = _open_unit_interval(confidence, "confidence")
    scale = _var_scale(portfolio_value, horizon)
    sims = _integer(n_sims, "n_sims")
    if sims < 1:
        raise ValueError(f"n_sims must be >= 1, got {sims}")
    rng = np.random.default_rng(seed)
    n = w.shape[0]
    exposure = _factor(cov).T @ w if n else np.zeros(0)
    returns = np.empty(sims)
    chunk = max(1, _MONTE_CARLO_CHUNK // max(n, 1))
    for start in range(0, sims, chunk):
        stop = min(start + chunk, sims)
        returns[start:stop] = rng.standard_normal((stop - start, n)) @ exposure
    return _loss_quantile_and_tail_mean(-returns * scale, c)


# ----------------------------------------------------------------------------------------------------------
# Concentration and sizing
# ----------------------------------------------------------------------------------------------------------


def _absolute_shares(weights: npt.ArrayLike) -> Float64Array:
    a = np.abs(_vector(weights, "weights"))
    total = float(a.sum())
    if total == 0.0:
        return np.zeros(0)
    return a / total


def hhi_concentration(weights: npt.ArrayLike) -> float:
    """Herfindahl-Hirschman concentration of gross exposure.

    Notes
    -----
    ``HHI = Σ s_i²`` with ``s_i = |w_i| / Σ|w_j|``: 1/N for equal positions, 1 for a single one, 0 for an
    empty or all-zero book.
    """
    shares = _absolute_shares(weights)
    return float(shares @ shares)


def largest_share(weights: npt.ArrayLike) -> float:
    """Largest share of gross exposure held in one position.

    Notes
    -----
    ``max_i |w_i| / Σ|w_j|``; 0 for an empty or all-zero book.
    """
    shares = _absolute_shares(weights)
    return float(shares.max()) if shares.size else 0.0


def kelly_fraction(expected_return: float, variance: float) -> float:
    """Continuous-time Kelly fraction of capital for one asset.

    Parameters
    ----------
    expected_return : float
        Expected excess return μ per period.
    variance : float
        Return variance σ² over the same period, > 0.

    Notes
    -----
    ``f* = μ / σ²`` maximises the expected log growth ``f μ - f² σ² / 2`` of a continuously rebalanced
    position. Negative means short; above 1 means leverage.
    """
    mu = _finite_scalar(expected_return, "expected_return")
    return mu / _positive_scalar(variance, "variance")


# ----------------------------------------------------------------------------------------------------------
# Drawdowns and performance statistics
# ----------------------------------------------------------------------------------------------------------


def _equity(equity: npt.ArrayLike) -> Float64Array:
    e = _vector(equity, "equity")
    if e.size and e[0] <= 0.0:
        raise ValueError("equity must start > 0 to measure drawdowns from its peak")
    return e


def drawdown_series(equity: npt.ArrayLike) -> Float64Array:
    """Drawdown at each point of an equity curve.

    Notes
    -----
    ``DD_t = E_t / max_{s<=t} E_s - 1`` (<= 0). The first value must be > 0.
    """
    e = _equity(equity)
    return e / np.maximum.accumulate(e) - 1.0


def current_drawdown(equity: npt.ArrayLike) -> float:
    """Drawdown of the last equity value from the running peak; 0 for an empty curve.

    Notes
    -----
    ``DD = E_T / max_t E_t - 1``.
    """
    e = _equity(equity)
    return float(e[-1] / e.max() - 1.0) if e.size else 0.0


def period_drawdown(equity: npt.ArrayLike, period_ids: npt.ArrayLike) -> float:
    """Drawdown of the last equity value within the current period (day, week...).

    Parameters
    ----------
    equity : array_like, shape (T,)
        Equity curve, oldest first.
    period_ids : array_like of int, shape (T,)
        Period of each point (e.g. trading-day number or ISO week); the caller maps timestamps to ids.

    Notes
    -----
    The current period is the trailing run of points sharing ``period_ids[-1]``. Its reference includes the
    last point before it, the equity the period opened with, so a loss between the previous close and the
    first snapshot of the day still counts: ``DD = E_T / max(E_open, max_{t in period} E_t) - 1``.
    """
    e = _equity(equity)
    ids = np.asarray(period_ids)
    if ids.shape != e.shape:
        raise ValueError(f"period_ids {ids.shape} and equity {e.shape} differ in shape")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError("period_ids must be integers")
    if e.size == 0:
        return 0.0
    earlier = np.flatnonzero(ids != ids[-1])
    start = int(earlier[-1]) if earlier.size else 0  # the opening point, or the first point of the curve
    return float(e[-1] / e[start:].max() - 1.0)


def _returns(returns: npt.ArrayLike) -> Float64Array:
    r = _vector(returns, "returns")
    if r.size == 0:
        raise ValueError("returns is empty")
    return r


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` where a zero denominator gives ±inf, or nan for 0/0, with no warning."""
    if denominator == 0.0:
        return math.copysign(math.inf, numerator) if numerator != 0.0 else math.nan
    return numerator / denominator


def sharpe_ratio(
    returns: npt.ArrayLike, periods_per_year: float = TRADING_DAYS_PER_YEAR, risk_free: float = 0.0
) -> float:
    """Annualised Sharpe ratio of simple periodic returns.

    Parameters
    ----------
    returns : array_like, shape (T,)
        Simple returns per period, T >= 1.
    periods_per_year : float
        Periods in a year (252 trading days).
    risk_free : float
        Risk-free return per period.

    Notes
    -----
    ``SR = mean(r - r_f) / std(r - r_f) · sqrt(P)`` with the population standard deviation (ddof=0).
    Constant returns give +inf, -inf, or nan when the mean excess is 0.
    """
    excess = _returns(returns) - _finite_scalar(risk_free, "risk_free")
    p = _positive_scalar(periods_per_year, "periods_per_year")
    mean = float(excess.mean())
    # Test constancy exactly: np.std of a constant array can be 1e-18 instead of 0.
    std = 0.0 if float(np.ptp(excess)) == 0.0 else float(excess.std())
    return _ratio(mean, std) * math.sqrt(p)


def sortino_ratio(
    returns: npt.ArrayLike, periods_per_year: float = TRADING_DAYS_PER_YEAR, required_return: float = 0.0
) -> float:
    """Annualised Sortino ratio of simple periodic returns.

    Notes
    -----
    ``SoR = mean(r - τ) / DD · sqrt(P)`` with downside deviation ``DD = sqrt(mean(min(r - τ, 0)²))`` over
    all T periods (population). No return below τ gives +inf, or nan when every return equals τ.
    """
    excess = _returns(returns) - _finite_scalar(required_return, "required_return")
    p = _positive_scalar(periods_per_year, "periods_per_year")
    downside = np.minimum(excess, 0.0)
    return _ratio(float(excess.mean()), math.sqrt(float(downside @ downside) / excess.size)) * math.sqrt(p)


def _equity_from_returns(r: Float64Array) -> Float64Array:
    if (r < -1.0).any():
        raise ValueError("returns below -100% are not simple returns of a positive equity")
    return np.concatenate(([1.0], np.cumprod(1.0 + r)))


def max_drawdown(returns: npt.ArrayLike) -> float:
    """Maximum drawdown of the compounded equity curve of simple returns.

    Notes
    -----
    ``E = (1, (1 + r_1), (1 + r_1)(1 + r_2), ...)``, starting at 1 so a first-period loss counts;
    ``MDD = min_t (E_t / max_{s<=t} E_s - 1)`` (<= 0). 0 for no returns.
    """
    r = _vector(returns, "returns")
    return float(drawdown_series(_equity_from_returns(r)).min())


def calmar_ratio(returns: npt.ArrayLike, periods_per_year: float = TRADING_DAYS_PER_YEAR) -> float:
    """Calmar ratio: annualised geometric return over the absolute maximum drawdown.

    Notes
    -----
    ``CAGR = (Π(1 + r_t))^{P/T} - 1``, ``Calmar = CAGR / |MDD|`` with MDD from :func:`max_drawdown`.
    No drawdown gives +inf, or nan when CAGR is 0 too.
    """
    r = _returns(returns)
    p = _positive_scalar(periods_per_year, "periods_per_year")
    equity = _equity_from_returns(r)
    growth = float(equity[-1]) ** (p / r.size) - 1.0
    return _ratio(growth, abs(float(drawdown_series(equity).min())))


# ----------------------------------------------------------------------------------------------------------
# VaR backtests
# ----------------------------------------------------------------------------------------------------------


def _backtest_counts(exceedances: int, observations: int, confidence: float) -> tuple[int, int, float]:
    """Validated exceedances x, observations T >= 1 (``0 <= x <= T``) and exceedance rate ``p = 1 - c``."""
    x = _integer(exceedances, "exceedances")
    t = _integer(observations, "observations")
    p = 1.0 - _open_unit_interval(confidence, "confidence")
    if t < 1:
        raise ValueError(f"observations must be >= 1, got {t}")
    if not 0 <= x <= t:
        raise ValueError(f"exceedances must be between 0 and observations ({t}), got {x}")
    return x, t, p


def kupiec_pof(exceedances: int, observations: int, confidence: float) -> tuple[float, float]:
    """Kupiec proportion-of-failures test of a VaR model.

    Parameters
    ----------
    exceedances : int
        Days the loss exceeded the VaR, x.
    observations : int
        Days observed, T >= 1.
    confidence : float
        VaR confidence c; the expected exceedance rate is ``p = 1 - c``.

    Returns
    -------
    lr_stat, p_value : float
        Likelihood ratio and its χ²(1) p-value.

    Notes
    -----
    ``LR = -2 ln[(1 - p)^{T-x} p^x] + 2 ln[(1 - x/T)^{T-x} (x/T)^x]`` with ``0 · ln 0 = 0`` (x = 0, x = T).
    """
    x, t, p = _backtest_counts(exceedances, observations, confidence)
    rate = x / t
    log_null = special.xlogy(t - x, 1.0 - p) + special.xlogy(x, p)
    log_alt = special.xlogy(t - x, 1.0 - rate) + special.xlogy(x, rate)
    lr = max(2.0 * float(log_alt - log_null), 0.0)
    return lr, float(stats.chi2.sf(lr, 1))


def christoffersen_independence(hits: npt.ArrayLike) -> tuple[float, float]:
    """Christoffersen test that VaR exceedances do not cluster.

    Parameters
    ----------
    hits : array_like of 0/1 or bool, shape (T,)
        1 where the loss exceeded the VaR, T >= 2.

    Returns
    -------
    lr_stat, p_value : float
        Likelihood ratio and its χ²(1) p-value.

    Notes
    -----
    With transition counts ``n_ij`` (state i followed by j), ``π01 = n01/(n00 + n01)``,
    ``π11 = n11/(n10 + n11)``, ``π = (n01 + n11)/(n00 + n01 + n10 + n11)``:
    ``LR = -2 ln[(1 - π)^{n00+n10} π^{n01+n11}] + 2 ln[(1 - π01)^{n00} π01^{n01} (1 - π11)^{n10} π11^{n11}]``,
    with ``0 · ln 0 = 0`` and a probability of 0 for a state never visited.
    """
    h = np.asarray(hits)
    if h.ndim != 1 or h.shape[0] < 2:
        raise ValueError(f"hits must be 1-D with at least 2 observations, got shape {h.shape}")
    if not np.isin(h, (0, 1)).all():
        raise ValueError("hits must contain only 0/1 or booleans")
    h = h.astype(np.int64)
    transitions = 2 * h[:-1] + h[1:]
    n00, n01, n10, n11 = (float(c) for c in np.bincount(transitions, minlength=4))
    pi01 = n01 / (n00 + n01) if n00 + n01 else 0.0
    pi11 = n11 / (n10 + n11) if n10 + n11 else 0.0
    pi = (n01 + n11) / (n00 + n01 + n10 + n11)
    log_null = special.xlogy(n00 + n10, 1.0 - pi) + special.xlogy(n01 + n11, pi)
    log_alt = (
        special.xlogy(n00, 1.0 - pi01)
        + special.xlogy(n01, pi01)
        + special.xlogy(n10, 1.0 - pi11)
        + special.xlogy(n11, pi11)
    )
    lr = max(2.0 * float(log_alt - log_null), 0.0)
    return lr, float(stats.chi2.sf(lr, 1))


def basel_traffic_light(exceedances: int, observations: int = 250, *, confidence: float = 0.99) -> str:
    """Basel traffic-light zone of a VaR backtest: "green", "yellow" or "red".

    Notes
    -----
    With ``F`` the binomial CDF of exceedances under a correct model (T trials, ``p = 1 - c``):
    green if ``F(x) < 95%``, yellow if ``95% <= F(x) < 99.99%``, red otherwise. At c = 99% and T = 250 this is
    the Basel table: green 0-4, yellow 5-9, red 10 or more. No exceedance at all is green whatever ``T``: it is
    no evidence against the model, but while a window fills ``F(0) = c^T`` is >= 95% (T <= 5 at 99%) and the
    rule alone would call it yellow.
    """
    x, t, p = _backtest_counts(exceedances, observations, confidence)
    if x == 0:
        return "green"
    cumulative = float(stats.binom.cdf(x, t, p))
    if cumulative < 0.95:
        return "green"
    if cumulative < 0.9999:
        return "yellow"
    return "red"


def scale_volatility(vol_per_bar: float | npt.ArrayLike, bars: float) -> float | Float64Array:
    """Scale a one-bar volatility to ``bars`` bars (square-root-of-time rule).

    Notes
    -----
    ``σ_h = σ_1 · sqrt(h)``; e.g. daily volatility with ``h`` = bars per trading day from settings.
    """
    h = _positive_scalar(bars, "bars")
    v = np.asarray(vol_per_bar, dtype=np.float64)
    if not np.isfinite(v).all():
        raise ValueError("vol_per_bar contains NaN or infinite values")
    if (v < 0.0).any():
        raise ValueError("vol_per_bar must be >= 0")
    scaled = v * math.sqrt(h)
    return float(scaled) if scaled.ndim == 0 else scaled


# -- performance --
# ----------------------------------------------------------------------------------------------------------
# Simulated portfolio value paths (the Monte Carlo fan chart)
# ----------------------------------------------------------------------------------------------------------


def monte_carlo_value_paths(
    exposures: npt.ArrayLike,
    cov_matrix: npt.ArrayLike,
    start_value: float,
    steps: int,
    bars_per_step: float = 1.0,
    n_paths: int = 1_000,
    seed: int | np.random.Generator | None = None,
    *,
    validate: bool = True,
) -> Float64Array:
    """Simulated paths of a portfolio's value, every position revalued at each step.

    Parameters
    ----------
    exposures : array_like, shape (N,)
        Dollar exposure of each asset now (``qty · price``; negative for shorts). Unlike the VaR functions this
        takes dollars, because the paths are of a value level, not of a loss.
    cov_matrix : array_like, shape (N, N)
        Covariance of one-bar log returns.
    start_value : float
        Portfolio value now (equity: cash plus ``Σ exposures``), finite.
    steps : int
        Time steps simulated, >= 1.
    bars_per_step : float
        Bars per step, > 0 (the horizon is ``steps · bars_per_step`` bars).
    n_paths : int
        Paths simulated, >= 1.
    seed : int, Generator or None
        Seed of ``numpy.random.default_rng``: the same seed gives the same paths.

    Returns
    -------
    values : ndarray, shape (n_paths, steps + 1)
        Column 0 is ``start_value`` on every path; column k the value after k steps.

    Notes
    -----
    Cumulative log returns ``X_0 = 0``, ``X_k = X_{k-1} + sqrt(Δ) L z_k`` with ``L Lᵀ = Σ`` (as in
    :func:`get_monte_carlo_var`), ``z_k ~ N(0, I)`` and ``Δ`` = ``bars_per_step``: zero drift, as the VaR
    assumes. Prices move as ``P_i exp(X_{k,i})`` and cash does not, so
    ``V_k = V_0 + Σ_i x_i (exp(X_{k,i}) - 1)``: a full revaluation, not the linear ``V_0 + xᵀX_k``.
    Memory is O(n_paths · N) whatever the number of steps.
    """
    x = _vector(exposures, "exposures")
    cov = _covariance(cov_matrix, x.shape[0], validate)
    v0 = _finite_scalar(start_value, "start_value")
    n_steps = _integer(steps, "steps")
    if n_steps < 1:
        raise ValueError(f"steps must be >= 1, got {n_steps}")
    dt = _positive_scalar(bars_per_step, "bars_per_step")
    sims = _integer(n_paths, "n_paths")
    if sims < 1:
        raise ValueError(f"n_paths must be >= 1, got {sims}")
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    step_factor = _factor(cov).T * math.sqrt(dt) if n else np.zeros((0, 0))  # z @ (√Δ Lᵀ) has cov Δ Σ
    values = np.empty((sims, n_steps + 1))
    values[:, 0] = v0
    cumulative = np.zeros((sims, n))
    for k in range(1, n_steps + 1):
        cumulative += rng.standard_normal((sims, n)) @ step_factor
        values[:, k] = v0 + np.expm1(cumulative) @ x
    return values


# ----------------------------------------------------------------------------------------------------------
# Tail-aware VaR: standardized returns, Student-t, filtered historical simulation
# ----------------------------------------------------------------------------------------------------------

_ORDER_STATISTIC_TOL: Final = 1e-9
"""Slack on ``(1 - c)·T`` before its ceiling, so that 0.01 · 500 (5.000000000000004 in floating point) is 5."""

BoolArray = npt.NDArray[np.bool_]
"""Which entries of a window of standardized returns are observations (:func:`standardize_observed`)."""


def standardize_returns(returns: npt.ArrayLike, vol: npt.ArrayLike) -> Float64Array:
    """Returns divided by the volatility forecast made before they were seen (devolatilized returns).

    Parameters
    ----------
    returns : array_like, shape (N,) or (T, N)
        One-bar log returns.
    vol : array_like, same shape as ``returns``
        ``σ_{t,i} = sqrt(Σ_{t-1,ii})``: the EWMA volatility from the covariance *before* ``r_t`` updated it,
        >= 0.

    Returns
    -------
    ndarray
        ``z_{t,i} = r_{t,i} / σ_{t,i}``; 0 where ``σ_{t,i} = 0`` (an asset whose price never moved carries no
        scenario information).

    Notes
    -----
    Under the filtered model ``r_t = σ_t z_t`` with ``z_t`` i.i.d. of unit variance (Barone-Adesi, Giannopoulos
    & Vosper 1999; Hull & White 1998), so the ``z`` are the scenario innovations of
    :func:`fhs_scenarios` and the sample :func:`fit_student_t_dof` reads the tail from.
    """
    r = np.asarray(returns, dtype=np.float64)
    v = np.asarray(vol, dtype=np.float64)
    if r.shape != v.shape:
        raise ValueError(f"returns {r.shape} and vol {v.shape} differ in shape")
    if r.ndim not in (1, 2):
        raise ValueError(f"returns must be 1-D or 2-D, got shape {r.shape}")
    if not (np.isfinite(r).all() and np.isfinite(v).all()):
        raise ValueError("returns or vol contain NaN or infinite values")
    if (v < 0.0).any():
        raise ValueError("vol must be >= 0")
    z = np.zeros_like(r)
    np.divide(r, v, out=z, where=v > 0.0)
    return z


def observed_mask(observed: npt.ArrayLike, shape: tuple[int, ...]) -> BoolArray:
    """``observed`` as a boolean array of ``shape`` (which entries of a window of standardized returns are
    observations, :func:`standardize_observed`); ValueError for anything else."""
    mask = np.asarray(observed)
    if mask.shape != tuple(shape) or mask.dtype != np.bool_:
        raise ValueError(f"observed must be a boolean array of shape {tuple(shape)}, got {mask.dtype} {mask.shape}")
    return mask


def standardize_observed(
    returns: npt.ArrayLike, vol: npt.ArrayLike, observed: npt.ArrayLike, *, gaps: npt.ArrayLike | None = None
) -> tuple[Float64Array, BoolArray]:
    """:func:`standardize_returns`, with the entries that are not observations marked as such.

    Parameters
    ----------
    returns : array_like, shape (N,) or (T, N)
        One-bar log returns; exactly 0 where ``observed`` is False (no new price: the last one carried forward).
    vol : array_like, same shape as ``returns``
        ``σ_{t,i}`` before ``r_t``, >= 0 (as for :func:`standardize_returns`).
    observed : array_like of bool, same shape as ``returns``
        True where a new price gave the return (a price accepted in this bar, and one before it).
    gaps : array_like, shape (N,), optional
        Bars each return spans (1-D ``returns`` only): ``z = r / (σ sqrt(g))`` (:func:`per_bar_returns`), the
        innovation of one bar. None: every return is of one bar (the same bits as before).

    Returns
    -------
    z : ndarray
        :func:`standardize_returns` of ``returns, vol``: 0 wherever the entry is not an observation.
    observed : ndarray of bool
        ``observed & (σ > 0)``: with no volatility forecast there is no innovation either (``r / 0``).

    Notes
    -----
    The 0 of a missing entry is a stand-in, not a draw of the innovation: :func:`fit_student_t_dof` leaves it
    out of its sample (given this mask), :func:`fhs_scenarios` fills it (:func:`fhs_fill_missing`). A price that
    arrived unchanged is an observation: its ``z = 0`` is data and stays in. Where every entry is observed,
    ``z`` is bit for bit :func:`standardize_returns`.
    """
    if gaps is not None:
        returns = per_bar_returns(returns, gaps)
    z = standardize_returns(returns, vol)
    mask = observed_mask(observed, z.shape)
    r = np.asarray(returns, dtype=np.float64)
    if (r[~mask] != 0.0).any():
        raise ValueError("a return where no price was observed must be 0 (the last price carried forward)")
    return z, mask & (np.asarray(vol, dtype=np.float64) > 0.0)


def ewma_standardize_and_update(
    cov: Float64Array,
    returns: npt.ArrayLike,
    decay: float = EWMA_DECAY,
    *,
    observed: npt.ArrayLike | None = None,
    gaps: npt.ArrayLike | None = None,
) -> Float64Array:
    """One bar of the filter: standardize ``returns`` by the current EWMA vols, then update ``cov`` in place
    (with ``observed``, which tickers' returns are data: :func:`update_covariance_ewma_observed`; with
    ``gaps``, how many bars each return spans: both steps see ``r / sqrt(g)``, :func:`per_bar_returns`).

    Returns
    -------
    ndarray, shape (N,)
        ``z_t = r_t / sqrt(diag Σ_{t-1})`` (:func:`standardize_returns`), computed before
        ``Σ_t = λ Σ_{t-1} + (1 - λ) r_t r_tᵀ`` (:func:`update_covariance_ewma`, ``validate=False``).

    Notes
    -----
    The one update shared by the stream daemon and the VaR backtest, so both hold bit-identical states.
    """
    if not isinstance(cov, np.ndarray) or cov.ndim != 2:
        raise ValueError("cov must be a 2-D float64 numpy array (it is updated in place)")
    r = _vector(returns, "returns", cov.shape[0])
    if gaps is not None:
        r = per_bar_returns(r, gaps)
    z = standardize_returns(r, np.sqrt(np.clip(np.diagonal(cov), 0.0, None)))
    if observed is None:
        update_covariance_ewma(cov, r, decay, validate=False)
    else:
        update_covariance_ewma_observed(cov, r, observed, decay, validate=False)
    return z


def fit_student_t_dof(
    standardized: npt.ArrayLike, lo: float = 3.0, hi: float = 30.0, *, observed: npt.ArrayLike | None = None
) -> float:
    """Degrees of freedom of a Student-t fitted to standardized returns, by the method of moments.

    Parameters
    ----------
    standardized : array_like, shape (T,) or (T, N)
        Standardized returns (:func:`standardize_returns`); a 2-D window is pooled (all entries one sample).
    lo, hi : float
        Bounds of the result, ``2 < lo <= hi``.
    observed : array_like of bool, same shape as ``standardized``, optional
        Which entries are observations (:func:`standardize_observed`); the others (a ticker without a new
        price in that bar: its 0 is a stand-in) are left out of the sample. None: every entry is one.

    Returns
    -------
    float
        ``ν`` in ``[lo, hi]``.

    Notes
    -----
    A Student-t with ν > 4 degrees of freedom has excess kurtosis ``κ = 6 / (ν - 4)``, so
    ``ν = 6 / κ + 4`` with the zero-mean sample kurtosis ``κ = mean(z⁴) / mean(z²)² - 3`` (zero mean as in
    RiskMetrics). ``κ <= 0`` (tails no heavier than normal) gives ``hi``; the result is clipped to
    ``[lo, hi]``. The moment estimate is always above 4 (a t with ν <= 4 has no finite kurtosis), so the
    floor binds only when ``lo > 4``; ``hi`` (30: close to normal) bounds the thin-tailed side. Cheap (one
    pass) and bounded, so it can be refitted on every bar; its noise is tamed by the bounds. An empty sample
    or one of zeros gives ``hi``.

    Missing entries are excluded, not zeros in general: the 0 standing in for a price that did not arrive adds
    mass at 0 and raises ``κ`` (in a simulation, one ticker of four missing 30% of its bars took ν from 8.4 to
    7.5), while a price that arrived unchanged is a genuine ``z = 0`` and stays in the sample. Every entry,
    missing or not, must be finite: NaN is never a marker here.
    """
    low = _finite_scalar(lo, "lo")
    high = _finite_scalar(hi, "hi")
    if not 2.0 < low <= high:
        raise ValueError(f"need 2 < lo <= hi, got lo={low}, hi={high}")
    z = np.asarray(standardized, dtype=np.float64)
    if z.ndim not in (1, 2):
        raise ValueError(f"standardized must be 1-D or 2-D, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("standardized contains NaN or infinite values")
    if observed is not None:
        mask = observed_mask(observed, z.shape)
        if not mask.all():  # all observed: the very same sample (and sums) as without the mask
            z = z[mask]
    if z.size == 0:
        return high
    squares = np.square(z.ravel())
    m2 = float(squares.mean())
    if m2 == 0.0:
        return high
    kurtosis = float(np.square(squares).mean()) / (m2 * m2) - 3.0
    if kurtosis <= 0.0:
        return high
    return min(max(6.0 / kurtosis + 4.0, low), high)


def _dof(dof: float) -> float:
    nu = _finite_scalar(dof, "dof")
    if nu <= 2.0:
        raise ValueError(f"dof must be > 2 (a unit-variance t needs a finite variance), got {nu}")
    return nu


@functools.lru_cache(maxsize=256)
def _student_t_multipliers(confidence: float, dof: float) -> tuple[float, float]:
    """VaR and ES of a unit-variance Student-t at ``confidence``, per unit of σ (cached: same few pairs)."""
    q = float(stats.t.ppf(confidence, dof))
    unit = math.sqrt((dof - 2.0) / dof)
    density = float(stats.t.pdf(q, dof))
    es = density / (1.0 - confidence) * (dof + q * q) / (dof - 1.0)
    return q * unit, es * unit


def student_t_var(sigma: float, confidence: float, dof: float) -> float:
    """VaR of a zero-mean Student-t P&L with standard deviation ``sigma``.

    Parameters
    ----------
    sigma : float
        Standard deviation of the P&L over the horizon, dollars, >= 0 (e.g. ``sqrt(xᵀΣx) · sqrt(h)``).
    confidence : float
        c in (0, 1).
    dof : float
        ν > 2.

    Notes
    -----
    The t is scaled to unit variance (its variance is ``ν / (ν - 2)``), so ``σ`` keeps its meaning:
    ``VaR = t_ν⁻¹(c) · sqrt((ν - 2) / ν) · σ``. As ν → ∞ this is the normal ``Φ⁻¹(c) · σ``.
    """
    s = _non_negative_scalar(sigma, "sigma")
    c = _open_unit_interval(confidence, "confidence")
    return _student_t_multipliers(c, _dof(dof))[0] * s


def student_t_cvar(sigma: float, confidence: float, dof: float) -> float:
    """Expected shortfall of a zero-mean Student-t P&L with standard deviation ``sigma``.

    Notes
    -----
    For the standard t with ``q = t_ν⁻¹(c)`` and density ``g_ν``:
    ``ES = g_ν(q) / (1 - c) · (ν + q²) / (ν - 1)`` (McNeil, Frey & Embrechts 2005, example 2.19); scaled to unit
    variance and to ``σ``: ``ES · sqrt((ν - 2) / ν) · σ``. Parameters are those of :func:`student_t_var`.
    """
    s = _non_negative_scalar(sigma, "sigma")
    c = _open_unit_interval(confidence, "confidence")
    return _student_t_multipliers(c, _dof(dof))[1] * s


FHS_MIN_OBSERVED: Final = 100
"""Fewest observed innovations of a ticker whose own sample fills its missing FHS entries: one beyond the 99%
quantile on average (``1 / (1 - 0.99)``). A ticker with fewer has no tail of its own to resample; its missing
entries are filled from the standard normal instead (:func:`fhs_fill_missing`)."""


def _fill_seed(vol: float, missing: int) -> int:
    """A seed for the fill of one ticker's missing entries: the bits of its volatility and its count of missing
    entries, so two tickers get two different arrangements (not the same draws in the same rows) while the same
    ticker gets the same one in any subset or order of the universe."""
    return int(np.float64(vol).view(np.uint64)) ^ (missing << 1)


@functools.lru_cache(maxsize=64)
def _stratified_normal(q: int) -> Float64Array:
    """``Φ⁻¹((j + ½) / q)``, ``j < q``: q standard normal draws, one per equal-probability stratum (read-only,
    cached: a window has few distinct counts of missing entries)."""
    draws = special.ndtri((np.arange(q) + 0.5) / q)
    draws.setflags(write=False)
    return draws


def fhs_fill_missing(
    standardized: npt.ArrayLike, observed: npt.ArrayLike, current_vol: npt.ArrayLike
) -> Float64Array:
    """The window of standardized returns with every missing entry replaced by a draw of its ticker's innovation.

    Parameters
    ----------
    standardized : array_like, shape (T, N)
        Window of standardized returns (:func:`standardize_observed`); a missing entry holds its stand-in 0.
    observed : array_like of bool, shape (T, N)
        Which entries are observations.
    current_vol : array_like, shape (N,)
        ``σ_i(now)`` (only its bits are read: they seed the arrangement of a normal fill, see below).

    Returns
    -------
    ndarray, shape (T, N)
        A new array: the observed entries unchanged, the missing ones filled, column by column.

    Notes
    -----
    A missing entry is a bar in which the ticker did not print. Its price still moved (the move shows up in the
    return of its next print), so "no move" (the stand-in 0) is not a scenario of its innovation: a ticker that
    prints in 6% of bars would have 94% of its scenarios at 0 and an FHS VaR of 0 at 95% (a limit that never
    binds). The innovation ``z`` of the filtered model is i.i.d. of unit variance, so a missing ``z`` is filled
    with a draw from that ticker's innovation distribution, deterministically (the same window gives the same
    scenarios in every process and on every path: the per-book model, the monitor's vectorised batch and the
    backtest), column by column (a ticker's fill depends on its own column only, so a book restricted to a few
    tickers sees the numbers of the whole universe):

    - with ``m >= FHS_MIN_OBSERVED`` observed entries, a balanced resample of them spread evenly over the
      observations: the observations (in time order, counted from 0) are cut into ``q`` equal strata of
      ``m/q`` and the j-th missing entry (in time order) gets the one in the middle of the j-th stratum, the
      ``⌊(j + ½)·m/q⌋``-th. With ``q >= m`` each observation is used ``⌊q/m⌋`` or ``⌈q/m⌉`` times (``q = m``:
      each once, in order), so the filled entries are the observed distribution, tails included, with no
      resampling noise; with ``q < m`` they are every ``(m/q)``-th observation, from the oldest stratum to the
      newest, a sample stratified over the whole window. Taking the ``(j mod m)``-th, as before, filled
      ``q < m`` entries with the *oldest* ``q`` observations only (a window whose calm start filled every gap
      with calm moves, whatever its recent tail). Two tickers missing in the same bars and observed in the same
      bars get the pairs they were observed in together.
    - with fewer (``m`` observations cannot hold a 99% tail: the worst of 10 normal draws is about 1.5σ), the
      stratified standard normal ``Φ⁻¹((j + ½) / q)``, ``j < q``, of the parametric model, in an order drawn
      from a generator seeded by the ticker's volatility bits and ``q`` (:func:`_fill_seed`), so that two thin
      tickers are not given the same draws in the same rows (that would make a long/short pair of them look
      riskless).

    A filled entry carries no co-movement with the tickers observed in its row (it is a draw of the marginal):
    in the rows where a thin ticker is filled, its moves are independent of the liquid ones. That errs on the
    prudent side for a hedge (a thin long against a correlated liquid short), and on the other for a book long
    both (their correlation counts only in the rows the thin one printed in): the parametric figures
    (``normal``, ``student_t``) keep the EWMA correlation. The arrangement of a normal fill comes from numpy's
    ``Generator``: reproducible for a given numpy, it may change with a numpy upgrade (the marginal, hence a
    one-ticker VaR, does not). Where every entry is observed the window is returned as a copy, the same bits.
    """
    z = np.array(standardized, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"standardized must be 2-D (T, N), got shape {z.shape}")
    mask = observed_mask(observed, z.shape)
    vol = _vector(current_vol, "current_vol", z.shape[1])
    for i in np.flatnonzero(~mask.all(axis=0)):
        seen = z[mask[:, i], i]
        missing = np.flatnonzero(~mask[:, i])
        q = missing.size
        if seen.size >= FHS_MIN_OBSERVED:
            z[missing, i] = seen[((2 * np.arange(q) + 1) * seen.size) // (2 * q)]  # stratum midpoints, exact
        else:
            draws = _stratified_normal(int(q))
            z[missing, i] = draws[np.random.default_rng(_fill_seed(float(vol[i]), q)).permutation(q)]
    return z


def fhs_scenarios(
    standardized: npt.ArrayLike, current_vol: npt.ArrayLike, *, observed: npt.ArrayLike | None = None
) -> Float64Array:
    """Filtered historical simulation: one-bar return scenarios rescaled to today's volatility.

    Parameters
    ----------
    standardized : array_like, shape (T, N)
        Window of standardized returns ``z_{t,i}`` (:func:`standardize_returns`), one row per past bar.
    current_vol : array_like, shape (N,)
        ``σ_i(now)``: today's one-bar EWMA volatility, >= 0.
    observed : array_like of bool, shape (T, N), optional
        Which entries are observations (:func:`standardize_observed`); the missing ones are filled
        (:func:`fhs_fill_missing`). None: every entry is one.

    Returns
    -------
    ndarray, shape (T, N)
        ``s_{t,i} = z_{t,i} · σ_i(now)``.

    Notes
    -----
    A missing entry of the window (a ticker without a new price in that bar) is not "no move": its stand-in 0
    would make a ticker that prints rarely riskless in most scenarios (and its VaR 0). With ``observed`` it is
    replaced by a deterministic draw of that ticker's innovation (:func:`fhs_fill_missing`); without it every
    entry is taken as data. A window observed everywhere gives the same bits either way. ``standardized`` must
    be finite everywhere: NaN is never a marker here.

    Barone-Adesi, Giannopoulos & Vosper (1999), "VaR without correlations for portfolios of derivative
    securities", J. Futures Markets 19(5); Hull & White (1998), "Incorporating volatility updating into the
    historical simulation method for VaR", J. Risk 1(1). Each row keeps the cross-section of one past day, so
    correlations come from the data, not a matrix; the tails come from the data too. A book of dollar
    exposures ``x`` has scenario P&L ``p = S x``.
    """
    z = np.asarray(standardized, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"standardized must be 2-D (T, N), got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("standardized contains NaN or infinite values")
    vol = _vector(current_vol, "current_vol", z.shape[1])
    if (vol < 0.0).any():
        raise ValueError("current_vol must be >= 0")
    if observed is not None and not observed_mask(observed, z.shape).all():
        z = fhs_fill_missing(z, observed, vol)
    return z * vol


def scenario_tail_size(n_scenarios: int, confidence: float) -> int:
    """``k = ⌈(1 - c) · T⌉`` (at least 1): the rank, from the worst, of the loss that is the scenario VaR.

    ``(1 - c)·T`` is shaved by 1e-9 before the ceiling so that 0.01 · 500 is 5, not 6.
    """
    t = _integer(n_scenarios, "n_scenarios")
    if t < 1:
        raise ValueError(f"need at least one scenario, got {t}")
    c = _open_unit_interval(confidence, "confidence")
    return min(max(math.ceil((1.0 - c) * t - _ORDER_STATISTIC_TOL), 1), t)


def _scenario_pnl(pnl: npt.ArrayLike) -> Float64Array:
    p = _vector(pnl, "pnl")
    if p.shape[0] == 0:
        raise ValueError("pnl is empty")
    return p


def scenario_var(pnl: npt.ArrayLike, confidence: float) -> float:
    """Scenario VaR: the k-th worst loss, an order statistic (no interpolation).

    Parameters
    ----------
    pnl : array_like, shape (T,)
        P&L of each scenario, dollars (e.g. ``S x``).
    confidence : float
        c in (0, 1).

    Notes
    -----
    Losses ``L = -p``; ``VaR = L_(k)``, the k-th largest loss with ``k = ⌈(1 - c)·T⌉``
    (:func:`scenario_tail_size`): at T = 500 the 5th worst at 99%, the 25th worst at 95%. Found with
    ``numpy.partition`` in O(T). Unlike :func:`get_historical_var` (interpolated quantile) this is a value the
    book actually loses in one scenario, which is what makes the component attribution exact.
    """
    p = _scenario_pnl(pnl)
    k = scenario_tail_size(p.shape[0], confidence)
    return -float(np.partition(p, k - 1)[k - 1])


def scenario_cvar(pnl: npt.ArrayLike, confidence: float) -> float:
    """Scenario expected shortfall: the mean of the k worst losses.

    Notes
    -----
    ``ES = (1/k) Σ_{j<=k} L_(j)`` over the k largest losses, ``k`` as in :func:`scenario_var`; every one of them is
    >= ``VaR = L_(k)``, so ``ES >= VaR``. The k tail values are sorted before summing, so the figure does not
    depend on the order of the scenarios.
    """
    p = _scenario_pnl(pnl)
    k = scenario_tail_size(p.shape[0], confidence)
    tail = np.sort(np.partition(p, k - 1)[:k])
    return -float(tail.sum()) / k


def scenario_var_index(pnl: npt.ArrayLike, confidence: float) -> int:
    """Index of the VaR scenario: the scenario whose loss is :func:`scenario_var` (one of them, if tied)."""
    p = _scenario_pnl(pnl)
    k = scenario_tail_size(p.shape[0], confidence)
    return int(np.argpartition(p, k - 1)[k - 1])


def scenario_component_var(scenarios: npt.ArrayLike, exposures: npt.ArrayLike, confidence: float) -> Float64Array:
    """Component VaR of a scenario VaR: each position's loss in the VaR scenario.

    Parameters
    ----------
    scenarios : array_like, shape (T, N)
        One-bar return scenarios (:func:`fhs_scenarios`).
    exposures : array_like, shape (N,)
        Dollar exposures x.
    confidence : float
        c in (0, 1).

    Returns
    -------
    ndarray, shape (N,)
        ``component_i = -x_i · s_{k*,i}`` where ``k*`` is the VaR scenario (:func:`scenario_var_index` of
        ``p = S x``).

    Notes
    -----
    ``Σ_i component_i = -x · s_{k*} = -p_{k*} = VaR``: the attribution sums to the VaR exactly (up to the
    rounding of the dot product). It is the Euler allocation of the order statistic (Hallerbach 2003); it is
    noisier than a kernel-smoothed one, but needs no bandwidth and is what the book loses in that scenario.
    """
    s = np.asarray(scenarios, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scenarios must be 2-D (T, N), got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scenarios contain NaN or infinite values")
    x = _vector(exposures, "exposures", s.shape[1])
    k_star = scenario_var_index(s @ x, confidence)
    return -x * s[k_star]


def christoffersen_independence_counts(n00: int, n01: int, n10: int, n11: int) -> tuple[float, float]:
    """:func:`christoffersen_independence` from the transition counts alone (what an online backtest keeps).

    ``n_ij`` counts a day in state i (1 = exceedance) followed by a day in state j; at least one transition.
    Returns the same likelihood ratio and χ²(1) p-value as the hit-sequence form.
    """
    counts = [_integer(n, name) for n, name in ((n00, "n00"), (n01, "n01"), (n10, "n10"), (n11, "n11"))]
    if min(counts) < 0 or sum(counts) < 1:
        raise ValueError(f"transition counts must be >= 0 with at least one transition, got {counts}")
    a, b, c, d = (float(n) for n in counts)
    pi01 = b / (a + b) if a + b else 0.0
    pi11 = d / (c + d) if c + d else 0.0
    pi = (b + d) / (a + b + c + d)
    log_null = special.xlogy(a + c, 1.0 - pi) + special.xlogy(b + d, pi)
    log_alt = (
        special.xlogy(a, 1.0 - pi01) + special.xlogy(b, pi01) + special.xlogy(c, 1.0 - pi11) + special.xlogy(d, pi11)
    )
    lr = max(2.0 * float(log_alt - log_null), 0.0)
    return lr, float(stats.chi2.sf(lr, 1))


def check_covariance(cov_matrix: npt.ArrayLike, *, validate: bool = True) -> Float64Array:
    """``cov_matrix`` as a square float64 array; with ``validate`` also checked finite, symmetric and PSD (O(N³)).

    For callers that build a model once and then evaluate it many times with ``validate=False``.
    """
    return _covariance(cov_matrix, None, validate)
