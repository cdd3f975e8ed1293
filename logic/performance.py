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
while), so the period of a return is measured, never assumed: with T returns over a window ``L`` long (from the
first point to the last) a year holds ``P = U / (L / T)`` periods, ``U`` the length of a year. Time is measured
the way the model measures it (:class:`TradingTime`, from the settings by :func:`trading_time`), so the ratios
agree with the VaR on the same page:

- an exchange calendar (``market.calendar``, default ``XNYS``): trading time. ``L`` is the seconds inside the
  calendar's sessions (engine/sessions.py) in model bars of ``model.bar_seconds``, ``U = model.bars_per_year``
  (390 x 252 = 98 280): the VaR's own convention, one-bar volatility x sqrt(``bars_per_day``) a day. Closed time
  (nights, weekends, holidays) counts nothing, so the step across a closed gap, from the last bar of a session
  to the first bar of the next, measures one bar: a return across a gap counts as one bar step, as the model's
  bars do (engine/history.py); an early close counts its shorter session. A point every minute over whole
  sessions gives ``P = 98 280``, session closes ``P = 252``.
- ``24/7`` (no sessions): calendar time, ``U`` = one calendar year (365.25 days). A point every minute around
  the clock gives ``P = 525 960``.
- the compressed demo clock (``model.demo_clock_seconds``, or a stream daemon whose heartbeat says
  ``clock = compressed``): wall time is not model time, so ``L`` is the model bars the stream daemon played:
  the market versions between the first and the last point (one per feed bar, times the model bars a feed bar
  spans), or, where the points carry no usable version, wall seconds / wall seconds per bar.
  ``U = model.bars_per_year`` (``24/7``: a calendar year of bars, 365.25 x 86 400 s / ``bar_seconds``).

Every ratio that is annualised takes this ``P``: volatility ``σ sqrt(P)``, Sharpe and Sortino ``sqrt(P)``, the
annual return ``(E_T / E_0)^{P/T} - 1`` (exactly the growth over one year of that time) and the Calmar ratio
built on it; Kelly and the maximum drawdown have no time unit.

Capital flows
-------------
A book sync that moves cash or securities in or out (engine/book.py) changes the equity but is not P&L, so the
ratios are of time-weighted returns without it. The sync books each flow explicitly: its amount (the equity
change at the marks of the moment) and its time go to the portfolio's flow ledger (``pf:{id}:flows``) in the
transaction that shifts the monitor's equity references (``MonitoringStore.shift_peaks``), and the page reads the
window's flows in one round trip (``MonitoringStore.read_flows``). ``F_t`` sums the flows dated from point
``t - 1``'s time on, before point ``t``'s (:func:`step_flows`: a flow at a point's time came after its tick), and
``r_t = (E_t - F_t) / E_{t-1} - 1`` (without a flow ``E_t / E_{t-1} - 1``, to the bit). The ratios, the annual
return ``Π(1 + r_t)^{P/T} - 1`` and the maximum drawdown are of the index ``I_t = Π_{s<=t}(1 + r_s)``
(:func:`flow_adjusted_index`): a withdrawal with prices unchanged is a return of 0 and no drawdown, a price move
beside a flow is the move's return. Everything else that moves the equity is a return: a fee is a loss (as in the
monitor's drawdowns), and a sync that only corrects a cost basis, margins or the account type moves no equity and
books no flow, so it is no return either (the P&L it restates is not read). Flows synced before the ledger existed
have no entry and show as returns, as the page showed every flow before; so does a flow synced during a replay
(its points carry the bars' past times, the flow the sync's wall time: after every point). The index runs
through equity <= 0 (a margin book past its capital; without a flow ``E_t / E_0``: 200,000 to -35,000 is a
drawdown of -1.175); the return ratios are then withheld with the reason, the drawdown is not.

Downsampled windows
-------------------
A long window is read from a downsampled tier (engine/store/history.py): one point per bucket, its ``equity``
the bucket's last, so a fall and recovery inside a bucket is not in the returns. Each point also carries the
bucket's lowest and highest equity (``equity_low`` / ``equity_high``; a full-resolution point: its equity), and
the maximum drawdown is measured on them (:func:`band_max_drawdown`, on the flow-adjusted index: each extreme's
distance from the bucket's last equity at the bucket's index scale): the running peak of the highs against each
low, never smaller than the drawdown of the points themselves (conservative: inside a bucket the order of its
low and high is unknown, so a low before the bucket's high counts against that high). In a bucket with a flow
a low is taken as after a withdrawal / before a deposit, a high as before a withdrawal / after a deposit, so the
flow never makes a peak or a trough (a fall in that bucket on the flow's other side may be understated, by at most
the flow). The Calmar ratio divides by that drawdown. The return ratios (Sharpe, Sortino, Kelly, volatility,
annual return) use the last equity of each bucket: returns over the buckets, which its extremes do not give.
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
from engine.sessions import ALWAYS_OPEN, Sessions, sessions_for
from engine.settings import Asset, Settings

SECONDS_PER_DAY: Final = 86_400.0
SECONDS_PER_YEAR: Final = 365.25 * SECONDS_PER_DAY
"""One calendar year: the year of a ``24/7`` market (see the module docstring)."""

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


# -- time of the model ---------------------------------------------------------------------------------------


def periods_per_year(spacing: float, units_per_year: float = SECONDS_PER_YEAR) -> float:
    """Return periods in a year at one return every ``spacing`` on average: ``U / Δt`` (both in one unit of
    time: calendar seconds and :data:`SECONDS_PER_YEAR` by default)."""
    if not (math.isfinite(spacing) and spacing > 0):
        raise ValueError(f"spacing must be > 0, got {spacing}")
    return units_per_year / spacing


class TimeBasis(StrEnum):
    """What :class:`TradingTime` counts as time (see the module docstring)."""

    SESSIONS = "sessions"
    """Seconds inside the sessions of an exchange calendar, in model bars."""
    CALENDAR = "calendar"
    """Calendar seconds (a ``24/7`` market)."""
    MODEL_BARS = "model bars"
    """Model bars the stream daemon played (the compressed demo clock)."""


def session_seconds(sessions: Sessions, start: float, end: float) -> float:
    """Seconds of ``[start, end]`` inside the sessions of ``sessions`` (``open <= t <= close``); closed time
    (nights, weekends, holidays) counts 0.

    Notes
    -----
    With ``i(t)`` the last session opened at or before ``t`` and ``c(t) = min(max(t - open_i, 0),
    close_i - open_i)`` the session time of ``t``'s session up to ``t``:
    ``Σ_{i(start) <= j < i(end)} (close_j - open_j) - c(start) + c(end)``.
    """
    if not (math.isfinite(start) and math.isfinite(end) and start <= end):
        raise ValueError(f"need finite start <= end, got {start}, {end}")
    opens, closes = sessions.opens, sessions.closes
    if start < opens[0] or end > closes[-1]:
        raise ValueError(
            f"[{start}, {end}] is outside the {sessions.name} calendar ({sessions.dates[0]}..{sessions.dates[-1]})"
        )
    i, j = (int(k) - 1 for k in np.searchsorted(opens, [start, end], side="right"))

    def into(k: int, t: float) -> float:
        return min(max(t - float(opens[k]), 0.0), float(closes[k] - opens[k]))

    whole = float(np.sum(closes[i:j] - opens[i:j]))
    return whole - into(i, start) + into(j, end)


@dataclass(frozen=True, eq=False)
class TradingTime:
    """How :func:`performance_stats` measures a window, and how long a year of that time is (module docstring).

    Build it from the settings with :func:`trading_time`; :data:`CALENDAR_TIME` is the ``24/7`` rule.
    """

    basis: TimeBasis
    unit_seconds: float
    """Seconds of market time in one unit of :attr:`units_per_year`: 1 (calendar), else one model bar."""
    units_per_year: float
    """Calendar seconds in a year (calendar), else model bars in a year."""
    sessions: Sessions | None = None
    """The exchange calendar (basis ``sessions``)."""
    wall_seconds_per_bar: float = 0.0
    """Basis ``model bars``: wall seconds of the demo clock per model bar (0: as fast as possible, unknown)."""
    bars_per_version: float = 1.0
    """Basis ``model bars``: model bars one market version (one feed bar) spans."""

    def __post_init__(self) -> None:
        for name in ("unit_seconds", "units_per_year", "bars_per_version"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value}")
        if not (math.isfinite(self.wall_seconds_per_bar) and self.wall_seconds_per_bar >= 0):
            raise ValueError(f"wall_seconds_per_bar must be >= 0, got {self.wall_seconds_per_bar}")
        if (self.basis is TimeBasis.SESSIONS) != (self.sessions is not None):
            raise ValueError("an exchange calendar is needed by, and only by, the sessions basis")

    @property
    def unit(self) -> str:
        """The unit of :meth:`elapsed`, in words."""
        return "seconds" if self.basis is TimeBasis.CALENDAR else "model bars"

    def elapsed(self, ts: Float64Array, versions: Float64Array | None = None) -> tuple[float | None, str | None]:
        """Length of the window from ``ts[0]`` to ``ts[-1]`` in units of :attr:`units_per_year`, or None and
        why it cannot be measured. ``versions``: the market version of each point (NaN where unknown), read
        by the ``model bars`` basis."""
        t0, t1 = float(ts[0]), float(ts[-1])
        if self.basis is TimeBasis.CALENDAR:
            return t1 - t0, None
        if self.basis is TimeBasis.SESSIONS:
            assert self.sessions is not None  # __post_init__
            try:
                return session_seconds(self.sessions, t0, t1) / self.unit_seconds, None
            except ValueError as exc:
                return None, f"no trading time to annualise over: {exc}"
        if versions is not None:
            v = np.asarray(versions, dtype=np.float64)
            # a reseeded store starts its versions again: only a steady count is a count of bars
            if v.shape == ts.shape and np.isfinite(v).all() and (np.diff(v) >= 0).all():
                return float(v[-1] - v[0]) * self.bars_per_version, None
        if self.wall_seconds_per_bar > 0:
            return (t1 - t0) / self.wall_seconds_per_bar, None
        return None, (
            "the points carry no market version and the demo clock plays as fast as possible: "
            "no model time to annualise over"
        )


CALENDAR_TIME: Final = TradingTime(TimeBasis.CALENDAR, 1.0, SECONDS_PER_YEAR)
"""Calendar seconds, a year of 365.25 days: the time of a ``24/7`` market."""


def trading_time(
    settings: Settings,
    *,
    compressed: bool | None = None,
    wall_seconds_per_bar: float | None = None,
    bars_per_version: float = 1.0,
) -> TradingTime:
    """The time the ratios count, for ``market.calendar`` and ``[model]`` (module docstring).

    Parameters
    ----------
    compressed:
        Whether the stream daemon plays the compressed demo clock; default ``model.compressed_clock``.
    wall_seconds_per_bar:
        Its wall seconds per model bar; default ``model.bar_interval_seconds``.
    bars_per_version:
        Model bars one of its feed bars spans (the heartbeat's ``feed_bar_model_bars``).
    """
    model, calendar = settings.model, settings.market.calendar
    bar = float(model.bar_seconds)
    if model.compressed_clock if compressed is None else compressed:
        per_year = SECONDS_PER_YEAR / bar if calendar == ALWAYS_OPEN else float(model.bars_per_year)
        wall = model.bar_interval_seconds if wall_seconds_per_bar is None else float(wall_seconds_per_bar)
        return TradingTime(TimeBasis.MODEL_BARS, bar, per_year, None, wall, float(bars_per_version))
    if calendar == ALWAYS_OPEN:
        return CALENDAR_TIME
    return TradingTime(TimeBasis.SESSIONS, bar, float(model.bars_per_year), sessions_for(calendar))


# -- return ratios -------------------------------------------------------------------------------------------


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
    """Mean spacing of the points in calendar seconds, ``(t_last - t_first) / T``."""
    time: TradingTime
    """The time the window is measured in and annualised over."""
    elapsed: float | None
    """Length of the window in that time's units (:attr:`TradingTime.unit`): ``L`` of the module docstring."""
    periods_per_year: float | None
    """``P = U / (L / T)``."""
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
    """Worst fall from a running peak in the window (<= 0); with the points' lows and highs,
    :func:`band_max_drawdown` (module docstring)."""
    reason: str | None = None
    """Why no ratio could be computed (too few points, no elapsed time, equity <= 0), else None; the maximum
    drawdown is still given when there are enough points (it needs no time nor a positive equity)."""

    @property
    def ratios(self) -> tuple[Ratio, ...]:
        return (self.sharpe, self.sortino, self.calmar, self.kelly)


def _finite_ratio(name: str, value: float, reason: str) -> Ratio:
    return Ratio(name, value) if math.isfinite(value) else Ratio(name, None, reason)


def _unavailable(
    observations: int, ts: Float64Array, time: TradingTime, reason: str, max_drawdown: Ratio | None = None
) -> PerformanceStats:
    none = {k: Ratio(k, None, reason) for k in ("sharpe", "sortino", "calmar", "kelly")}
    return PerformanceStats(
        observations=observations,
        start_ts=float(ts[0]) if ts.size else None,
        end_ts=float(ts[-1]) if ts.size else None,
        spacing_seconds=None,
        time=time,
        elapsed=None,
        periods_per_year=None,
        sharpe=none["sharpe"],
        sortino=none["sortino"],
        calmar=none["calmar"],
        kelly=none["kelly"],
        annual_return=Ratio("annual_return", None, reason),
        annual_volatility=Ratio("annual_volatility", None, reason),
        max_drawdown=Ratio("max_drawdown", None, reason) if max_drawdown is None else max_drawdown,
        reason=reason,
    )


def equity_series(points: Iterable[Mapping[str, Any]]) -> tuple[Float64Array, Float64Array, Float64Array]:
    """Timestamps, equity and market versions of history points (``ts``, ``equity``, ``version``), in time
    order; points with a missing or non-finite time or equity are skipped (a history point's metric is None when
    the snapshot had none), a missing version is NaN."""
    ts, equity, version, _, _ = equity_band_series(points)
    return ts, equity, version


def equity_band_series(
    points: Iterable[Mapping[str, Any]],
) -> tuple[Float64Array, Float64Array, Float64Array, Float64Array, Float64Array]:
    """:func:`equity_series` with each point's lowest and highest equity (``equity_low``, ``equity_high``; NaN
    where missing or not finite), aligned with it: ``ts, equity, version, low, high``."""
    rows = []
    for p in points:
        ts, equity, version = p.get("ts"), p.get("equity"), p.get("version")
        if isinstance(ts, int | float) and isinstance(equity, int | float):
            if math.isfinite(ts) and math.isfinite(equity):
                extras = [p.get("equity_low"), p.get("equity_high")]
                low, high = (float(x) if isinstance(x, int | float) and math.isfinite(x) else math.nan
                             for x in extras)  # fmt: skip
                v = float(version) if isinstance(version, int | float) else math.nan
                rows.append((float(ts), float(equity), v, low, high))
    rows.sort(key=lambda row: row[0])  # entry ids are write order: a late tick may be out of time order
    arr = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return tuple(arr[:, i].copy() for i in range(5))  # type: ignore[return-value]


def step_flows(ts: npt.ArrayLike, flow_ts: npt.ArrayLike, amounts: npt.ArrayLike) -> Float64Array:
    """``F_t``: the capital flows booked between each point and the one before, aligned with ``ts`` (module
    docstring).

    Notes
    -----
    A flow dated ``f`` belongs to the first point stamped after it: ``t_{t-1} <= f < t_t`` (a flow at a point's
    own time was booked after the tick that stamped the point). ``F_0 = 0``: a flow before the first point is in
    its equity already, one at or after the last point in no equity of the window yet.
    """
    t = np.asarray(ts, dtype=np.float64)
    f = np.asarray(flow_ts, dtype=np.float64)
    a = np.asarray(amounts, dtype=np.float64)
    if t.ndim != 1 or f.shape != a.shape or f.ndim != 1:
        raise ValueError(f"ts {t.shape} must be a vector, flow_ts {f.shape} and amounts {a.shape} one of one length")
    if not (np.isfinite(f).all() and np.isfinite(a).all()):
        raise ValueError("flow times and amounts must be finite")
    out = np.zeros(t.size, dtype=np.float64)
    step = np.searchsorted(t, f, side="right")  # the first point stamped after the flow
    inside = (step > 0) & (step < t.size)
    np.add.at(out, step[inside], a[inside])
    return out


def band_max_drawdown(low: npt.ArrayLike, high: npt.ArrayLike) -> float:
    """Maximum drawdown of a series of buckets known by their lowest and highest values (oldest first).

    Notes
    -----
    ``MDD = min_t (L_t / max_{s<=t} H_s - 1)`` (<= 0; 0 for no buckets). The running peak includes the bucket's
    own high, so for any point ``x`` of bucket ``t`` (``x >= L_t``, its running peak ``<= max_{s<=t} H_s``) the
    drawdown of ``x`` is at least as shallow: the result is never smaller in size than the drawdown of the
    underlying points (of a full-resolution series, ``L = H = E``, it is that drawdown). The running peak must
    be > 0 (the first high is); a value after it may be <= 0, a fall through zero (a drawdown below -1).
    """
    lo = np.asarray(low, dtype=np.float64)
    hi = np.asarray(high, dtype=np.float64)
    if lo.shape != hi.shape or lo.ndim != 1:
        raise ValueError(f"low {lo.shape} and high {hi.shape} must be two vectors of one length")
    if lo.size == 0:
        return 0.0
    peak = np.maximum.accumulate(hi)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()) or peak[0] <= 0:
        raise ValueError("low and high must be finite, the first high > 0")
    return float(min(0.0, float((lo / peak - 1.0).min())))


@dataclass(frozen=True, eq=False)
class FlowIndex:
    """The flow-adjusted (time-weighted) index of an equity series and of its buckets' extremes (module
    docstring), ``index[0] = 1``."""

    index: Float64Array
    low: Float64Array
    high: Float64Array
    flows: Float64Array
    """``F_t``, the capital flow booked in each step (0 at the first point)."""
    returns: Float64Array
    """``r_t = (E_t - F_t) / E_{t-1} - 1`` (``E_t / E_{t-1} - 1`` where ``F_t = 0``; NaN where ``E_{t-1} <= 0``),
    length ``T``."""


def flow_adjusted_index(
    equity: npt.ArrayLike,
    flows: npt.ArrayLike | None = None,
    low: npt.ArrayLike | None = None,
    high: npt.ArrayLike | None = None,
) -> FlowIndex:
    """Time-weighted index of ``equity`` with the capital ``flows`` taken out (module docstring).

    Parameters
    ----------
    equity : array_like, shape (T + 1,)
        Equity of the points, oldest first, ``equity[0] > 0``.
    flows : array_like, shape (T + 1,), optional
        ``F_t``, the flows booked in each step (:func:`step_flows`; the first is ignored: no step ends there).
        None: no flows.
    low, high : array_like, shape (T + 1,), optional
        The buckets' lowest and highest equity (NaN where unknown: the point's equity).

    Notes
    -----
    With ``ΔP_t = E_t - E_{t-1} - F_t`` and the scale ``k`` (index per dollar, ``1 / E_0`` at the start):
    ``I_t = I_{t-1} + k ΔP_t``, then at a flow ``k = I_t / E_t`` where ``E_t > 0`` and ``I_t > 0`` (else kept), so
    ``I_t = I_{t-1} (1 + r_t)`` while equity is above 0, and ``I_t = k E_t`` through a fall below 0 with no
    flow. A bucket's extremes: ``I_t + k (L_t - E_t + max(F_t, 0))`` and ``I_t + k (H_t - E_t + min(F_t, 0))``,
    capped at ``I_t`` from below / above (its low after a withdrawal or before a deposit, its high before a
    withdrawal or after a deposit: a flow never makes a peak or a trough).
    """
    e = np.asarray(equity, dtype=np.float64)
    n = e.size
    if e.ndim != 1 or n == 0 or not np.isfinite(e).all() or e[0] <= 0:
        raise ValueError("equity must be a non-empty finite vector, its first value > 0")
    lo, hi = _band(e, low, high) or (e, e)
    fl = np.zeros(n, dtype=np.float64) if flows is None else np.array(flows, dtype=np.float64)  # a copy
    if fl.shape != e.shape or not np.isfinite(fl).all():
        raise ValueError(f"flows {fl.shape} must be finite, of the length of equity {e.shape}")
    fl[0] = 0.0  # no step ends at the first point
    gain = np.diff(e) - fl[1:]  # the P&L of each step; its equity change exactly where no flow
    base = np.where(e[:-1] > 0, e[:-1], np.nan)
    # without a flow E_t / E_{t-1} - 1, to the bit the return of the equity (a constant growth stays constant)
    returns = np.where(fl[1:] != 0.0, gain / base, e[1:] / base - 1.0)
    index, i_lo, i_hi = np.empty(n), np.empty(n), np.empty(n)
    # Between two flows the index is affine in equity, I = I_a + k (E - E_a - flows since a), from an anchor a
    # (the last flow that rescaled it): no rounding accumulates over a long window without flows (E_t / E_0).
    k, anchor_level, anchor_equity, since = 1.0 / float(e[0]), 1.0, float(e[0]), 0.0
    for t in range(n):  # a loop: the scale changes only at flows, and the index runs through equity <= 0
        f = float(fl[t])
        since += f
        level = anchor_level + k * (float(e[t]) - anchor_equity - since)
        if f != 0.0 and e[t] > 0 and level > 0:
            k, anchor_level, anchor_equity, since = level / float(e[t]), level, float(e[t]), 0.0
        index[t] = level
        i_lo[t] = level + k * min(0.0, float(lo[t] - e[t]) + max(f, 0.0))
        i_hi[t] = level + k * max(0.0, float(hi[t] - e[t]) + min(f, 0.0))
    return FlowIndex(index, i_lo, i_hi, fl, returns)


def equity_points(points: Iterable[Mapping[str, Any]]) -> tuple[Float64Array, Float64Array]:
    """Timestamps and equity of :func:`equity_series`."""
    ts, equity, _ = equity_series(points)
    return ts, equity


def performance_stats(
    ts: npt.ArrayLike,
    equity: npt.ArrayLike,
    min_returns: int = MIN_RETURNS,
    *,
    time: TradingTime = CALENDAR_TIME,
    versions: npt.ArrayLike | None = None,
    low: npt.ArrayLike | None = None,
    high: npt.ArrayLike | None = None,
    flows: npt.ArrayLike | None = None,
) -> PerformanceStats:
    """Sharpe, Sortino, Calmar and Kelly of the time-weighted returns of an equity series stamped ``ts``
    (seconds), its capital flows taken out (module docstring).

    Parameters
    ----------
    ts, equity : array_like, shape (T + 1,)
        Times (epoch seconds, non-decreasing) and equity of the points, oldest first.
    min_returns : int
        Fewest returns to compute from; fewer gives every ratio None with the reason.
    time : TradingTime
        How the window is measured and annualised (:func:`trading_time` of the settings); default calendar
        time, the ``24/7`` rule.
    versions : array_like, shape (T + 1,), optional
        Market version of each point (NaN where unknown): the model bars of the compressed demo clock.
    low, high : array_like, shape (T + 1,), optional
        Lowest and highest equity of each point's bucket (NaN where unknown: the point's equity). Given, the
        maximum drawdown and the Calmar ratio are :func:`band_max_drawdown`'s (module docstring); else the
        drawdown of the points.
    flows : array_like, shape (T + 1,), optional
        ``F_t``, the capital flows booked in each step (:func:`step_flows` of the flow ledger): not a return
        (:func:`flow_adjusted_index`). None: every equity change is a return.

    Notes
    -----
    ``r_t = (E_t - E_{t-1} - F_t) / E_{t-1}`` (``F_t`` the step's flow; without one ``E_t / E_{t-1} - 1``), the
    maximum drawdown on the flow-adjusted index, given whenever there are ``min_returns`` returns and the first
    equity is > 0 (through equity <= 0 too: only the return ratios are then withheld); ``P = U / (L / T)``
    (:func:`periods_per_year` of the mean spacing in ``time``'s units, ``L`` = :meth:`TradingTime.elapsed`,
    ``U`` = its units a year); the risk-free rate and
    the Sortino target are 0 (no rate in the settings). Sharpe, Sortino and Calmar are
    :func:`engine.math_logic.sharpe_ratio`, :func:`~engine.math_logic.sortino_ratio` and
    :func:`~engine.math_logic.calmar_ratio` at ``P``; Kelly is :func:`~engine.math_logic.kelly_fraction` of
    ``mean(r)`` and the population ``var(r)``. A ratio that is infinite or undefined (no dispersion, no
    return below 0, no drawdown, an annual growth too large for a float, a flow-adjusted value <= 0) is None
    with the reason.
    """
    t = np.asarray(ts, dtype=np.float64)
    e = np.asarray(equity, dtype=np.float64)
    if t.shape != e.shape or t.ndim != 1:
        raise ValueError(f"ts {t.shape} and equity {e.shape} must be two vectors of one length")
    if not (np.isfinite(t).all() and np.isfinite(e).all()):
        raise ValueError("ts and equity must be finite")
    if (np.diff(t) < 0).any():
        raise ValueError("ts must be in time order")
    v = None if versions is None else np.asarray(versions, dtype=np.float64)
    if v is not None and v.shape != t.shape:
        raise ValueError(f"versions {v.shape} and ts {t.shape} must have one length")
    observations = max(0, t.size - 1)
    if observations < min_returns:
        return _unavailable(
            observations, t, time, f"{observations} return(s) in the window; at least {min_returns} are needed"
        )
    if e[0] <= 0:
        reason = "equity was <= 0 at the start of the window: no peak to fall from, its returns are not defined"
        return _unavailable(observations, t, time, reason)
    flow_index = flow_adjusted_index(e, flows, low, high)  # raises on flows or a band of another length
    mdd = band_max_drawdown(flow_index.low, flow_index.high)
    drawdown = Ratio("max_drawdown", mdd)
    if (e <= 0).any():  # the drawdown stands (it needs no return on capital <= 0); the returns do not
        reason = "equity was <= 0 in the window: its returns are not defined"
        return _unavailable(observations, t, time, reason, drawdown)
    elapsed_seconds = float(t[-1] - t[0])
    if elapsed_seconds <= 0:
        reason = "every point has the same time: no period to annualise over"
        return _unavailable(observations, t, time, reason, drawdown)
    elapsed, why = time.elapsed(t, v)
    if elapsed is None:
        return _unavailable(observations, t, time, why or "the window cannot be measured", drawdown)
    if elapsed <= 0:
        closed = (
            f"the market was closed over the whole window ({time.sessions.name} sessions)"
            if time.sessions is not None
            else "no model bar was played in the window"
        )
        return _unavailable(observations, t, time, f"{closed}: no {time.unit} to annualise over", drawdown)
    p = periods_per_year(elapsed / observations, time.units_per_year)
    r = flow_index.returns  # all finite: every equity is > 0
    flat = float(np.ptp(r)) == 0.0
    sharpe = _finite_ratio(
        "sharpe", math_logic.sharpe_ratio(r, p), "the returns do not vary: no volatility to divide by"
    )
    sortino = _finite_ratio(
        "sortino", math_logic.sortino_ratio(r, p), "no return below 0 in the window: no downside deviation"
    )
    final = float(flow_index.index[-1])  # Π(1 + r_t): E_T / E_0 without flows
    if final <= 0:  # a loss past the capital hidden by a deposit in the same step
        reason = "the flow-adjusted value fell to <= 0 in the window: no annual growth"
        calmar, annual_return = Ratio("calmar", None, reason), Ratio("annual_return", None, reason)
    else:
        try:
            growth = final ** (p / observations) - 1.0
            # CAGR / |MDD| (math_logic.calmar_ratio's definition) with the flow-adjusted, bucket-aware drawdown
            value = growth / abs(mdd) if mdd != 0.0 else (math.inf if growth != 0.0 else math.nan)
            calmar = _finite_ratio("calmar", value, "no drawdown in the window")
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
        spacing_seconds=elapsed_seconds / observations,
        time=time,
        elapsed=elapsed,
        periods_per_year=p,
        sharpe=sharpe,
        sortino=sortino,
        calmar=calmar,
        kelly=kelly,
        annual_return=annual_return,
        annual_volatility=Ratio("annual_volatility", volatility),
        max_drawdown=drawdown,
    )


def _band(
    equity: Float64Array, low: npt.ArrayLike | None, high: npt.ArrayLike | None
) -> tuple[Float64Array, Float64Array] | None:
    """The lows and highs of :func:`performance_stats` checked against ``equity``: a missing extreme is the
    point's equity, and neither is on the wrong side of it; None when not given."""
    if low is None and high is None:
        return None
    lo = equity if low is None else np.asarray(low, dtype=np.float64)
    hi = equity if high is None else np.asarray(high, dtype=np.float64)
    if lo.shape != equity.shape or hi.shape != equity.shape:
        raise ValueError(f"low {lo.shape} and high {hi.shape} must have the length of equity {equity.shape}")
    return np.fmin(lo, equity), np.fmax(hi, equity)


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
