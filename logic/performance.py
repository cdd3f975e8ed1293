"""Performance read-outs of a portfolio: risk-adjusted return ratios of its equity history, the concentration band
of its book, its liquidity-adjusted VaR, and the Monte Carlo fan of its value over the horizon.

Pure functions over plain data (timestamps, equity values, arrays, settings sections); every formula comes from
:mod:`engine.math_logic` (``sharpe_ratio``, ``sortino_ratio``, ``calmar_ratio``, ``kelly_fraction``,
``liquidity_cost``, ``monte_carlo_value_paths``). The dashboard's view model is
:mod:`logic.views.performance`.

Annualisation
-------------
The monitor stamps each history point with the time it was computed, and points need not be evenly spaced (a
feed may be paced by the wall clock or by a replay's own bars, closed over weekends and holidays, or down for a
while), so the period of a return is measured, never assumed: with T returns over ``elapsed = t_last - t_first``
seconds the mean spacing is ``Δt = elapsed / T`` and a year holds ``P = Y / Δt`` periods, ``Y`` = one calendar
year (365.25 days). Business-daily closes (about 252 a year, weekends and holidays skipped) give ``P ≈ 252``,
weekly closes ``P ≈ 52``, a history with a point every minute around the clock ``P = 525 960``. With the mean
spacing, the Calmar ratio's ``(E_T / E_0)^{P/T}`` is exactly the growth over one calendar year.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from engine import math_logic
from engine.records import Float64Array
from engine.settings import Asset

SECONDS_PER_DAY: Final = 86_400.0
SECONDS_PER_YEAR: Final = 365.25 * SECONDS_PER_DAY
"""One calendar year: the annualisation unit (see the module docstring)."""

MIN_RETURNS: Final = 2
"""Fewest returns the ratios are computed from: one return has no dispersion."""

HHI_MODERATE: Final = 0.15
"""HHI from which a book is moderately concentrated (unit scale of ``math_logic.hhi_concentration``)."""
HHI_HIGH: Final = 0.25
"""HHI above which a book is highly concentrated.

The US DOJ/FTC Horizontal Merger Guidelines (2010, section 5.3) on a 10 000 scale: below 1 500 unconcentrated,
1 500 to 2 500 moderately concentrated, above 2 500 highly concentrated. ``math_logic.hhi_concentration`` sums
squared *fractions*, so the same bands are 0.15 and 0.25 here; both boundaries belong to the moderate band.
"""

FAN_PERCENTILES: Final[tuple[float, ...]] = (1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0)
"""Percentile bands of the Monte Carlo fan chart."""
FAN_PATHS: Final = 2_000
"""Paths simulated for the fan chart: percentiles to about ±0.5 point at the 1% band, in a few milliseconds."""
FAN_STEPS: Final = 40
"""Time steps of the fan chart over the horizon."""
FAN_SEED: Final = 20_240_611
"""Seed of the fan chart: the same book and matrix draw the same picture on every refresh."""
MC_VAR_SIMS: Final = 20_000
"""Draws of the Monte Carlo VaR shown beside the fan (one N-vector product each: cheap)."""

_DEFAULT_ASSET: Final = Asset(price=1.0, annual_vol=1.0)
"""Liquidity of a held ticker the universe does not describe: the settings' default ADV and spread."""


# -- concentration -------------------------------------------------------------------------------------------


class ConcentrationBand(StrEnum):
    """DOJ/FTC concentration band of an HHI (thresholds :data:`HHI_MODERATE`, :data:`HHI_HIGH`)."""

    LOW = "Low"
    MODERATE = "Moderate"
    HIGH = "High"


def hhi_band(hhi: float) -> ConcentrationBand:
    """``Low`` below 0.15, ``Moderate`` from 0.15 to 0.25 inclusive, ``High`` above 0.25."""
    if not math.isfinite(hhi) or hhi < 0.0:
        raise ValueError(f"hhi must be a finite number >= 0, got {hhi}")
    if hhi < HHI_MODERATE:
        return ConcentrationBand.LOW
    if hhi <= HHI_HIGH:
        return ConcentrationBand.MODERATE
    return ConcentrationBand.HIGH


@dataclass(frozen=True)
class Concentration:
    hhi: float
    """Herfindahl index of gross-exposure shares (0 for a flat book, 1 for a single position)."""
    band: ConcentrationBand
    largest_share: float
    """Largest share of gross exposure held in one position."""

    @property
    def equivalent_positions(self) -> float | None:
        """``1 / HHI``: the number of equal positions with the same concentration."""
        return 1.0 / self.hhi if self.hhi > 0 else None


def concentration(exposures: npt.ArrayLike) -> Concentration:
    hhi = math_logic.hhi_concentration(exposures)
    return Concentration(hhi=hhi, band=hhi_band(hhi), largest_share=math_logic.largest_share(exposures))


# -- return ratios -------------------------------------------------------------------------------------------


def periods_per_year(spacing_seconds: float) -> float:
    """Return periods in a calendar year at one return every ``spacing_seconds`` on average: ``Y / Δt``."""
    if not (math.isfinite(spacing_seconds) and spacing_seconds > 0):
        raise ValueError(f"spacing_seconds must be > 0, got {spacing_seconds}")
    return SECONDS_PER_YEAR / spacing_seconds


@dataclass(frozen=True)
class Ratio:
    """One statistic, or None with the reason it cannot be given."""

    name: str
    value: float | None
    reason: str | None = None

    def text(self, fmt: str = ".2f") -> str:
        return "n/a" if self.value is None else format(self.value, fmt)


@dataclass(frozen=True)
class PerformanceStats:
    """Risk-adjusted ratios of an equity history (see the module docstring for the annualisation)."""

    observations: int
    """Returns used (history points less one)."""
    start_ts: float | None
    end_ts: float | None
    spacing_seconds: float | None
    """Mean spacing of the points, ``(t_last - t_first) / T``."""
    periods_per_year: float | None
    sharpe: Ratio
    sortino: Ratio
    calmar: Ratio
    kelly: Ratio
    """Kelly fraction ``μ / σ²`` of the per-period returns (scale-free: the same for any period)."""
    annual_return: Ratio
    """``(E_T / E_0)^{P/T} - 1``."""
    annual_volatility: Ratio
    """``σ · sqrt(P)`` (population σ, as the Sharpe ratio)."""
    max_drawdown: Ratio
    """Worst fall from a running peak in the window (<= 0)."""
    reason: str | None = None
    """Why no ratio could be computed (too few points, no elapsed time, equity <= 0), else None."""

    @property
    def ratios(self) -> tuple[Ratio, ...]:
        return (self.sharpe, self.sortino, self.calmar, self.kelly)


def _finite_ratio(name: str, value: float, reason: str) -> Ratio:
    return Ratio(name, value) if math.isfinite(value) else Ratio(name, None, reason)


def _unavailable(observations: int, ts: Float64Array, reason: str) -> PerformanceStats:
    none = {k: Ratio(k, None, reason) for k in ("sharpe", "sortino", "calmar", "kelly")}
    return PerformanceStats(
        observations=observations,
        start_ts=float(ts[0]) if ts.size else None,
        end_ts=float(ts[-1]) if ts.size else None,
        spacing_seconds=None,
        periods_per_year=None,
        sharpe=none["sharpe"],
        sortino=none["sortino"],
        calmar=none["calmar"],
        kelly=none["kelly"],
        annual_return=Ratio("annual_return", None, reason),
        annual_volatility=Ratio("annual_volatility", None, reason),
        max_drawdown=Ratio("max_drawdown", None, reason),
        reason=reason,
    )


def equity_points(points: Iterable[Mapping[str, Any]]) -> tuple[Float64Array, Float64Array]:
    """Timestamps and equity of history points (``ts``, ``equity``), in time order; points with a missing or
    non-finite value are skipped (a history point's metric is None when the snapshot had none)."""
    pairs = []
    for p in points:
        ts, equity = p.get("ts"), p.get("equity")
        if isinstance(ts, int | float) and isinstance(equity, int | float):
            if math.isfinite(ts) and math.isfinite(equity):
                pairs.append((float(ts), float(equity)))
    pairs.sort(key=lambda pair: pair[0])  # entry ids are write order: a late tick may be out of time order
    arr = np.array(pairs, dtype=np.float64).reshape(-1, 2)
    return arr[:, 0].copy(), arr[:, 1].copy()


def performance_stats(ts: npt.ArrayLike, equity: npt.ArrayLike, min_returns: int = MIN_RETURNS) -> PerformanceStats:
    """Sharpe, Sortino, Calmar and Kelly of the simple returns of an equity series stamped ``ts`` (seconds).

    Parameters
    ----------
    ts, equity : array_like, shape (T + 1,)
        Times (epoch seconds, non-decreasing) and equity of the points, oldest first.
    min_returns : int
        Fewest returns to compute from; fewer gives every ratio None with the reason.

    Notes
    -----
    ``r_t = E_t / E_{t-1} - 1``; ``P`` = :func:`periods_per_year` of the mean spacing; the risk-free rate and
    the Sortino target are 0 (no rate in the settings). Sharpe, Sortino and Calmar are
    :func:`engine.math_logic.sharpe_ratio`, :func:`~engine.math_logic.sortino_ratio` and
    :func:`~engine.math_logic.calmar_ratio` at ``P``; Kelly is :func:`~engine.math_logic.kelly_fraction` of
    ``mean(r)`` and the population ``var(r)``. A ratio that is infinite or undefined (no dispersion, no
    return below 0, no drawdown, an annual growth too large for a float) is None with the reason.
    """
    t = np.asarray(ts, dtype=np.float64)
    e = np.asarray(equity, dtype=np.float64)
    if t.shape != e.shape or t.ndim != 1:
        raise ValueError(f"ts {t.shape} and equity {e.shape} must be two vectors of one length")
    if not (np.isfinite(t).all() and np.isfinite(e).all()):
        raise ValueError("ts and equity must be finite")
    if (np.diff(t) < 0).any():
        raise ValueError("ts must be in time order")
    observations = max(0, t.size - 1)
    if observations < min_returns:
        return _unavailable(
            observations, t, f"{observations} return(s) in the window; at least {min_returns} are needed"
        )
    if (e <= 0).any():
        return _unavailable(observations, t, "equity was <= 0 in the window: its returns are not defined")
    elapsed = float(t[-1] - t[0])
    if elapsed <= 0:
        return _unavailable(observations, t, "every point has the same time: no period to annualise over")
    spacing = elapsed / observations
    p = periods_per_year(spacing)
    r = e[1:] / e[:-1] - 1.0
    flat = float(np.ptp(r)) == 0.0
    sharpe = _finite_ratio(
        "sharpe", math_logic.sharpe_ratio(r, p), "the returns do not vary: no volatility to divide by"
    )
    sortino = _finite_ratio(
        "sortino", math_logic.sortino_ratio(r, p), "no return below 0 in the window: no downside deviation"
    )
    mdd = math_logic.max_drawdown(r)
    try:
        calmar = _finite_ratio("calmar", math_logic.calmar_ratio(r, p), "no drawdown in the window")
        growth = float(e[-1] / e[0]) ** (p / observations) - 1.0
        annual_return = _finite_ratio("annual_return", growth, "too large to annualise")
    except OverflowError:
        reason = "the annualised growth overflows: the window is too short to annualise"
        calmar = Ratio("calmar", None, reason)
        annual_return = Ratio("annual_return", None, reason)
    if flat:
        kelly = Ratio("kelly", None, "the returns do not vary: no variance to divide by")
    else:
        kelly = _finite_ratio(
            "kelly", math_logic.kelly_fraction(float(r.mean()), float(r.var())), "not a finite fraction"
        )
    volatility = 0.0 if flat else float(r.std()) * math.sqrt(p)
    return PerformanceStats(
        observations=observations,
        start_ts=float(t[0]),
        end_ts=float(t[-1]),
        spacing_seconds=spacing,
        periods_per_year=p,
        sharpe=sharpe,
        sortino=sortino,
        calmar=calmar,
        kelly=kelly,
        annual_return=annual_return,
        annual_volatility=Ratio("annual_volatility", volatility),
        max_drawdown=Ratio("max_drawdown", mdd),
    )


# -- liquidity-adjusted VaR ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiquidationCost:
    """Cost of liquidating one position now: half the quoted spread plus square-root-law impact."""

    ticker: str
    qty: float
    price: float
    cost: float


def liquidation_costs(
    tickers: Sequence[str],
    qty: npt.ArrayLike,
    prices: npt.ArrayLike,
    daily_vols: npt.ArrayLike,
    assets: Mapping[str, Asset],
    impact_coef: float,
) -> tuple[LiquidationCost, ...]:
    """The cost of liquidating every non-zero position, by :func:`engine.math_logic.liquidity_cost`.

    Notes
    -----
    Quotes around the price ``p`` at the asset's ``spread_bps``: ``bid, ask = p ∓ p · bps / 20 000``; the
    asset's ``avg_daily_volume`` and the position's daily volatility drive the impact (the same inputs as the
    pre-trade check's liquidity cost). A ticker missing from ``assets`` uses the settings' default liquidity.
    """
    q = np.asarray(qty, dtype=np.float64)
    px = np.asarray(prices, dtype=np.float64)
    vol = np.asarray(daily_vols, dtype=np.float64)
    if not (len(tickers) == q.size == px.size == vol.size):
        raise ValueError("tickers, qty, prices and daily_vols must have one length")
    out = []
    for i in (int(j) for j in np.flatnonzero(q != 0)):
        ticker, price = tickers[i], float(px[i])
        asset = assets.get(ticker, _DEFAULT_ASSET)
        half_spread = price * float(asset.spread_bps) / 20_000.0
        cost = math_logic.liquidity_cost(
            float(q[i]),
            price,
            price - half_spread,
            price + half_spread,
            float(asset.avg_daily_volume),
            daily_vol=float(vol[i]),
            impact_coef=impact_coef,
        )
        out.append(LiquidationCost(ticker, float(q[i]), price, cost))
    return tuple(out)


@dataclass(frozen=True)
class LiquidityAdjustedVar:
    """VaR plus the cost of liquidating the whole book (Bangia et al. 1999, with an impact term)."""

    var: Mapping[float, float]
    """Confidence -> one-day VaR (dollars)."""
    costs: tuple[LiquidationCost, ...]

    @property
    def cost(self) -> float:
        return float(math.fsum(c.cost for c in self.costs))

    def lvar(self, confidence: float) -> float:
        """``LVaR = VaR + Σ liquidation costs``."""
        return self.var[confidence] + self.cost


# -- Monte Carlo fan -----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FanChart:
    """Percentile bands of simulated portfolio values over the horizon."""

    days: Float64Array
    """Time of each step in trading days (0 first)."""
    bands: Mapping[float, Float64Array]
    """Percentile -> value at each step (:data:`FAN_PERCENTILES`)."""
    start_value: float
    horizon_days: float
    n_paths: int
    seed: int

    @property
    def median(self) -> Float64Array:
        return self.bands[50.0]


def fan_chart(
    exposures: npt.ArrayLike,
    cov: npt.ArrayLike,
    start_value: float,
    horizon_bars: float,
    bars_per_day: float,
    *,
    steps: int = FAN_STEPS,
    n_paths: int = FAN_PATHS,
    seed: int = FAN_SEED,
    percentiles: Sequence[float] = FAN_PERCENTILES,
) -> FanChart:
    """Seeded Monte Carlo paths of the book's value (:func:`engine.math_logic.monte_carlo_value_paths`) over
    ``horizon_bars`` bars in ``steps`` steps, summarised by ``percentiles`` at every step."""
    if not (math.isfinite(horizon_bars) and horizon_bars > 0):
        raise ValueError(f"horizon_bars must be > 0, got {horizon_bars}")
    paths = math_logic.monte_carlo_value_paths(
        exposures, cov, start_value, steps, horizon_bars / steps, n_paths, seed, validate=False
    )
    qs = tuple(float(q) for q in percentiles)
    levels = np.percentile(paths, qs, axis=0)
    return FanChart(
        days=np.arange(steps + 1, dtype=np.float64) * (horizon_bars / steps / bars_per_day),
        bands={q: levels[i] for i, q in enumerate(qs)},
        start_value=float(start_value),
        horizon_days=horizon_bars / bars_per_day,
        n_paths=n_paths,
        seed=seed,
    )
