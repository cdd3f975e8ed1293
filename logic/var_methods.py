"""The VaR methods behind one interface: ``normal``, ``student_t`` and ``fhs`` (:class:`engine.records.VarMethod`).

A :class:`RiskModel` is built once per market snapshot with :func:`risk_model` and answers, for any book of
dollar exposures ``x`` (``qty * last``, matrix order), the VaR, CVaR, component and marginal VaR at its horizon,
and the VaR after a one-ticker trade in O(N) (normal, student_t) or O(T) (fhs) from a :class:`Prepared` book.
Everything is dollars over ``horizon_bars`` bars; all the formulas live in :mod:`engine.math_logic`.

Methods
-------
``normal``
    ``VaR = Φ⁻¹(c) · sqrt(xᵀΣx) · sqrt(h)``: exactly :func:`math_logic.get_portfolio_var` with
    ``portfolio_value=1``, the convention of the gate (``logic.checks``) and the snapshot (``logic.snapshot``).
``student_t``
    ``σ = sqrt(xᵀΣx) · sqrt(h)``, ``VaR = t_ν⁻¹(c) · sqrt((ν-2)/ν) · σ`` and the t's closed-form ES
    (:func:`math_logic.student_t_var`, :func:`math_logic.student_t_cvar`); ν from
    :func:`math_logic.fit_student_t_dof`. Component VaR is the Euler allocation ``VaR · x_i (Σx)_i / xᵀΣx``.
``fhs``
    Filtered historical simulation (Barone-Adesi, Giannopoulos & Vosper 1999; Hull & White 1998): one-bar
    scenarios ``S = z · σ(now)`` (:func:`math_logic.fhs_scenarios`), scenario P&L ``p = S x``,
    ``VaR = sqrt(h) · L_(k)`` the k-th worst loss (:func:`math_logic.scenario_var`), CVaR the mean of the k worst
    (:func:`math_logic.scenario_cvar`), components the positions' losses in the VaR scenario. A missing entry of
    the window (a ticker without a new price in that bar, ``engine.store.StandardizedWindow``), given the
    window's ``observed`` mask, is filled with a deterministic draw of that ticker's innovation
    (:func:`math_logic.fhs_fill_missing`: its own observations resampled, or the standard normal when it has
    too few to hold a tail), not read as "no move": a ticker that prints in a few percent of the bars would
    otherwise be riskless in most scenarios and its FHS VaR 0. The Student-t fit leaves it out of its sample
    (``engine.market_model.MarketModel.dof``).

Horizon: the covariance and the scenarios are of one bar; an h-bar figure is the one-bar figure times ``sqrt(h)``
(square-root-of-time). For the normal this is exact under i.i.d. returns; for the t and FHS it is the usual
approximation: with i.i.d. innovations a sum of h fat-tailed bars is less fat-tailed than one bar, so the scaled
quantile errs on the prudent side at high confidence, while volatility clustering within the horizon pushes the
other way. The backtest checks the one-bar figure and the limit-horizon figure separately.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from scipy import stats

from engine import math_logic
from engine.records import Float64Array, VarMethod

__all__ = ["FhsModel", "NormalModel", "Prepared", "RiskModel", "StudentTModel", "risk_model"]


@dataclass(frozen=True)
class Prepared:
    """What the incremental VaR of a trade needs of one book, cached by :meth:`RiskModel.prepare`."""

    exposures: Float64Array
    """Dollar exposures x (a private copy)."""
    variance: float
    """xᵀΣx of one bar, dollars squared (normal, student_t); NaN under fhs."""
    sigma_x: Float64Array | None
    """Σx (normal, student_t); None under fhs."""
    pnl: Float64Array | None
    """One-bar scenario P&L ``S x`` (fhs); None otherwise."""


@runtime_checkable
class RiskModel(Protocol):
    """A VaR method at one market snapshot and one horizon. Dollars in, dollars out (losses positive)."""

    method: VarMethod
    horizon_bars: float

    def var(self, exposures: npt.ArrayLike, confidence: float) -> float:
        """VaR of the book at ``confidence`` over ``horizon_bars``."""
        ...

    def cvar(self, exposures: npt.ArrayLike, confidence: float) -> float:
        """Expected shortfall; always >= :meth:`var`."""
        ...

    def component_var(self, exposures: npt.ArrayLike, confidence: float) -> Float64Array:
        """Per-ticker shares of the VaR, summing to it."""
        ...

    def marginal_var(self, exposures: npt.ArrayLike, confidence: float) -> Float64Array:
        """dVaR/dx_i: dollars of VaR per dollar of exposure added to ticker i."""
        ...

    def prepare(self, exposures: npt.ArrayLike) -> Prepared:
        """Cache what :meth:`var_after` needs of this book."""
        ...

    def var_after(self, prepared: Prepared, index: int, delta: float, confidence: float) -> float:
        """VaR of the prepared book after adding ``delta`` dollars of exposure to ticker ``index``."""
        ...

    def with_horizon(self, horizon_bars: float) -> RiskModel:
        """The same model at another horizon (no recomputation of the covariance or scenarios)."""
        ...


def _horizon(horizon_bars: float) -> float:
    h = float(horizon_bars)
    if not math.isfinite(h) or h <= 0.0:
        raise ValueError(f"horizon_bars must be a finite number > 0, got {horizon_bars!r}")
    return h


def _vector(values: npt.ArrayLike, name: str, length: int) -> Float64Array:
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 1-D array of real numbers") from None
    if x.shape != (length,):
        raise ValueError(f"{name} has shape {x.shape}, expected ({length},)")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _dof(dof: float) -> float:
    nu = float(dof)
    if not math.isfinite(nu) or nu <= 2.0:
        raise ValueError(f"dof must be a finite number > 2, got {dof!r}")
    return nu


@functools.lru_cache(maxsize=64)
def _z(confidence: float) -> float:
    """``Φ⁻¹(c)``, computed as math_logic computes it (the same float), cached: norm.ppf costs ~50 us."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")
    return float(stats.norm.ppf(confidence))


def _trade(prepared: Prepared, index: int, delta: float) -> tuple[int, float]:
    n = prepared.exposures.shape[0]
    i = int(index)
    if not 0 <= i < n:
        raise ValueError(f"index {i} is out of range for {n} tickers")
    d = float(delta)
    if not math.isfinite(d):
        raise ValueError(f"delta must be finite, got {delta!r}")
    return i, d


class _CovarianceModel:
    """Shared by the normal and Student-t models: everything is a function of xᵀΣx and Σx."""

    method: VarMethod

    def __init__(self, cov: Float64Array, horizon_bars: float) -> None:
        self.cov = cov
        self.horizon_bars = _horizon(horizon_bars)
        self._root = math.sqrt(self.horizon_bars)

    def _x(self, exposures: npt.ArrayLike) -> Float64Array:
        return _vector(exposures, "exposures", self.cov.shape[0])

    def prepare(self, exposures: npt.ArrayLike) -> Prepared:
        x = np.array(self._x(exposures), dtype=np.float64)
        sigma_x = self.cov @ x
        # the same floating-point steps as math_logic.get_portfolio_var, so the figures are bit-identical
        variance = max(float(x @ sigma_x), 0.0)
        return Prepared(exposures=x, variance=variance, sigma_x=sigma_x, pnl=None)

    def _variance_after(self, prepared: Prepared, i: int, d: float) -> float:
        assert prepared.sigma_x is not None, "prepared by another method"
        return prepared.variance + 2.0 * d * float(prepared.sigma_x[i]) + d * d * float(self.cov[i, i])


class NormalModel(_CovarianceModel):
    """Parametric normal VaR on the EWMA covariance (RiskMetrics 1996): today's figures, unchanged."""

    method = VarMethod.NORMAL

    def var(self, exposures: npt.ArrayLike, confidence: float) -> float:
        x = self._x(exposures)
        return math_logic.get_portfolio_var(x, self.cov, 1.0, confidence, self.horizon_bars, validate=False)[0]

    def cvar(self, exposures: npt.ArrayLike, confidence: float) -> float:
        x = self._x(exposures)
        return math_logic.get_portfolio_cvar(x, self.cov, 1.0, confidence, self.horizon_bars, validate=False)

    def component_var(self, exposures: npt.ArrayLike, confidence: float) -> Float64Array:
        x = self._x(exposures)
        return math_logic.calculate_component_var(
            x, self.cov, 1.0, confidence, horizon=self.horizon_bars, validate=False
        )

    def marginal_var(self, exposures: npt.ArrayLike, confidence: float) -> Float64Array:
        x = self._x(exposures)
        return math_logic.calculate_marginal_var(
            x, self.cov, 1.0, confidence, horizon=self.horizon_bars, validate=False
        )

    def var_after(self, prepared: Prepared, index: int, delta: float, confidence: float) -> float:
        """``VaR(x) + incremental_var_single``: the gate's own O(N) arithmetic, so its numbers do not move."""
        i, d = _trade(prepared, index, delta)
        before = _z(float(confidence)) * math.sqrt(prepared.variance) * self._root
        return before + math_logic.incremental_var_single(
            i, d, prepared.exposures, self.cov, 1.0, prepared.variance, confidence, horizon=self.horizon_bars
        )

    def with_horizon(self, horizon_bars: float) -> NormalModel:
        return NormalModel(self.cov, horizon_bars)


class StudentTModel(_CovarianceModel):
    """EWMA covariance with unit-variance Student-t quantiles and expected shortfall, ν degrees of freedom."""

    method = VarMethod.STUDENT_T

    def __init__(self, cov: Float64Array, horizon_bars: float, dof: float) -> None:
        super().__init__(cov, horizon_bars)
        self.dof = _dof(dof)

    def _sigma(self, x: Float64Array) -> tuple[float, Float64Array]:
        sigma_x = self.cov @ x
        return math.sqrt(max(float(x @ sigma_x), 0.0)), sigma_x

    def var(self, exposures: npt.ArrayLike, confidence: float) -> float:
        sigma, _ = self._sigma(self._x(exposures))
        return math_logic.student_t_var(sigma * self._root, confidence, self.dof)

    def cvar(self, exposures: npt.ArrayLike, confidence: float) -> float:
        sigma, _ = self._sigma(self._x(exposures))
        return math_logic.student_t_cvar(sigma * self._root, confidence, self.dof)

    def _per_unit_sigma(self, confidence: float) -> float:
        """VaR per dollar of horizon standard deviation."""
        return math_logic.student_t_var(1.0, confidence, self.dof) * self._root

    def component_var(self, exposures: npt.ArrayLike, confidence: float) -> Float64Array:
        """Euler allocation: ``k · x_i (Σx)_i / σ_p`` with ``k`` the t multiplier times sqrt(h)."""
        x = self._x(exposures)
        sigma, sigma_x = self._sigma(x)
        if sigma == 0.0:
            return np.zeros_like(x)
        return (self._per_unit_sigma(confidence) / sigma) * (x * sigma_x)

    def marginal_var(self, exposures: npt.ArrayLike, confidence: float) -> Float64Array:
        """``k · (Σx)_i / σ_p``; for a riskless book the one-sided ``k · sqrt(Σ_ii)``."""
        x = self._x(exposures)
        sigma, sigma_x = self._sigma(x)
        k = self._per_unit_sigma(confidence)
        if sigma == 0.0:
            return k * np.sqrt(np.clip(np.diagonal(self.cov), 0.0, None))
        return (k / sigma) * sigma_x

    def var_after(self, prepared: Prepared, index: int, delta: float, confidence: float) -> float:
        """``σ'² = σ² + 2δ(Σx)_i + δ²Σ_ii`` (one row of Σ), then :func:`math_logic.student_t_var`."""
        i, d = _trade(prepared, index, delta)
        variance = max(self._variance_after(prepared, i, d), 0.0)
        return math_logic.student_t_var(math.sqrt(variance) * self._root, confidence, self.dof)

    def with_horizon(self, horizon_bars: float) -> StudentTModel:
        return StudentTModel(self.cov, horizon_bars, self.dof)


class FhsModel:
    """Filtered historical simulation on T one-bar scenarios ``S = z · σ(now)``."""

    method = VarMethod.FHS

    def __init__(self, scenarios_t: Float64Array, horizon_bars: float) -> None:
        # kept transposed (N, T), C-contiguous: a trade reads one ticker's T scenario returns contiguously
        self._columns = scenarios_t
        self._tail_sizes: dict[float, int] = {}
        self.horizon_bars = _horizon(horizon_bars)
        self._root = math.sqrt(self.horizon_bars)

    @classmethod
    def from_standardized(
        cls,
        standardized: npt.ArrayLike,
        current_vol: npt.ArrayLike,
        horizon_bars: float,
        observed: npt.ArrayLike | None = None,
    ) -> FhsModel:
        """The model of :func:`math_logic.fhs_scenarios` (``observed``: which entries are data; the others are
        filled, :func:`math_logic.fhs_fill_missing`)."""
        scenarios = math_logic.fhs_scenarios(standardized, current_vol, observed=observed)
        if scenarios.shape[0] == 0:
            raise ValueError("fhs needs at least one standardized return in its window")
        return cls(np.ascontiguousarray(scenarios.T), horizon_bars)

    @property
    def scenarios(self) -> Float64Array:
        """One-bar return scenarios, shape (T, N)."""
        return self._columns.T

    @property
    def n_scenarios(self) -> int:
        return int(self._columns.shape[1])

    def _x(self, exposures: npt.ArrayLike) -> Float64Array:
        return _vector(exposures, "exposures", self._columns.shape[0])

    def pnl(self, exposures: npt.ArrayLike) -> Float64Array:
        """One-bar scenario P&L ``p = S x``, dollars."""
        return self._x(exposures) @ self._columns

    def var(self, exposures: npt.ArrayLike, confidence: float) -> float:
        return self._root * math_logic.scenario_var(self.pnl(exposures), confidence)

    def cvar(self, exposures: npt.ArrayLike, confidence: float) -> float:
        return self._root * math_logic.scenario_cvar(self.pnl(exposures), confidence)

    def component_var(self, exposures: npt.ArrayLike, confidence: float) -> Float64Array:
        """``sqrt(h) · (-x_i · s_{k*,i})`` at the VaR scenario k* (:func:`math_logic.scenario_component_var`)."""
        return self._root * math_logic.scenario_component_var(self.scenarios, self._x(exposures), confidence)

    def marginal_var(self, exposures: npt.ArrayLike, confidence: float) -> Float64Array:
        """``-sqrt(h) · s_{k*,i}``: the derivative of the order statistic while the VaR scenario stays k*."""
        k_star = math_logic.scenario_var_index(self.pnl(exposures), confidence)
        return -self._root * self._columns[:, k_star]

    def prepare(self, exposures: npt.ArrayLike) -> Prepared:
        x = np.array(self._x(exposures), dtype=np.float64)
        return Prepared(exposures=x, variance=math.nan, sigma_x=None, pnl=x @ self._columns)

    def _tail_size(self, confidence: float) -> int:
        k = self._tail_sizes.get(confidence)
        if k is None:
            k = self._tail_sizes[confidence] = math_logic.scenario_tail_size(self.n_scenarios, confidence)
        return k

    def var_after(self, prepared: Prepared, index: int, delta: float, confidence: float) -> float:
        """``p' = p + δ · S[:, i]`` (O(T), no revaluation of the book), then the order statistic of ``p'``.

        The same k-th worst loss as :func:`math_logic.scenario_var`, without re-validating the T scenario P&Ls
        (finite by construction) on the pre-trade hot path.
        """
        assert prepared.pnl is not None, "prepared by another method"
        i, d = _trade(prepared, index, delta)
        k = self._tail_size(float(confidence))
        pnl = self._columns[i] * d
        pnl += prepared.pnl
        return self._root * -float(np.partition(pnl, k - 1)[k - 1])

    def with_horizon(self, horizon_bars: float) -> FhsModel:
        return FhsModel(self._columns, horizon_bars)


def risk_model(
    method: VarMethod | str,
    cov_one_bar: npt.ArrayLike | None,
    *,
    horizon_bars: float,
    standardized: npt.ArrayLike | None = None,
    current_vol: npt.ArrayLike | None = None,
    dof: float | None = None,
    observed: npt.ArrayLike | None = None,
    validate: bool = True,
) -> RiskModel:
    """The :class:`RiskModel` of ``method`` at one market snapshot.

    Parameters
    ----------
    method : VarMethod or str
        ``normal``, ``student_t`` or ``fhs``.
    cov_one_bar : array_like, shape (N, N)
        EWMA covariance of one-bar log returns (not copied: do not mutate it while the model is in use).
        Under ``fhs`` only its diagonal is read, and only when ``current_vol`` is not given.
    horizon_bars : float
        Horizon of every figure, in bars (> 0).
    standardized : array_like, shape (T, N), optional
        Window of standardized returns (:func:`math_logic.standardize_returns`); required by ``fhs``.
    current_vol : array_like, shape (N,), optional
        Today's one-bar volatility per ticker (``fhs``); default ``sqrt(diag Σ)``.
    observed : array_like of bool, shape (T, N), optional
        Which entries of ``standardized`` are observations (``fhs``: the others are filled,
        :func:`math_logic.fhs_fill_missing`); None: every entry is one. Pass the window's mask whenever it has
        one: without it a missing entry's stand-in 0 is read as a move of 0.
    dof : float, optional
        Student-t degrees of freedom (> 2); required by ``student_t``.
    validate : bool
        Check the covariance is finite, symmetric and PSD (O(N³)); hot paths that validated it pass False.
    """
    kind = VarMethod(method)
    if kind is VarMethod.FHS:
        if standardized is None:
            raise ValueError("fhs needs the window of standardized returns")
        if current_vol is None:
            if cov_one_bar is None:
                raise ValueError("fhs needs current_vol or the covariance to read it from")
            cov = math_logic.check_covariance(cov_one_bar, validate=validate)
            current_vol = np.sqrt(np.clip(np.diagonal(cov), 0.0, None))
        return FhsModel.from_standardized(standardized, current_vol, horizon_bars, observed)
    if cov_one_bar is None:
        raise ValueError(f"{kind} needs the one-bar covariance")
    cov = math_logic.check_covariance(cov_one_bar, validate=validate)
    if kind is VarMethod.STUDENT_T:
        if dof is None:
            raise ValueError("student_t needs the degrees of freedom (math_logic.fit_student_t_dof)")
        return StudentTModel(cov, horizon_bars, dof)
    return NormalModel(cov, horizon_bars)
