"""Walk-forward VaR backtest: every configured method forecast on the same bars and checked on the same P&L.

:class:`Backtester` is fed one bar at a time (:meth:`Backtester.step`: the bar's prices and the positions held from
it) and is the only code path: the monitor feeds every portfolio's backtester a live bar at once
(:func:`logic.backtest_batch.step_many`, of which ``step`` is the case of one: the same floats) and stores
:meth:`Backtester.store_state` with :meth:`Backtester.ring`; ``python -m logic.backtest`` feeds one a CSV file.
The same bars give the same numbers. :meth:`Backtester.to_dict` is the whole state as plain JSON.

Each bar
--------
1. The log return ``r_t = ln(P_t / P_{t-1})`` updates the model state, with :mod:`engine.math_logic` only (so the
   stream daemon can run the identical update):

   - burn-in, part 1: the first ``seed_rows`` returns seed ``Σ_0 = (1/m) Σ r rᵀ``
     (:func:`math_logic.ewma_covariance_from_returns`, zero mean as in RiskMetrics);
   - afterwards :func:`math_logic.ewma_standardize_and_update`: ``z_t = r_t / sqrt(diag Σ_{t-1})`` (the vol
     forecast made *before* r_t), then ``Σ_t = λ Σ_{t-1} + (1 - λ) r_t r_tᵀ``; ``z_t`` joins the window of the last
     ``window`` standardized returns;
   - burn-in, part 2: forecasting starts once the window is full (``seed_rows + window`` returns), for every
     method at once, so all methods are scored on the same observations.
2. Forecasts whose horizon ends at this bar are closed: the realized P&L of the positions held at the forecast,
   ``Σ_i q_i (P_{t,i} - P_{start,i})`` (hypothetical, "clean" P&L: no trades, no fees), against each method's VaR;
   a hit is ``-P&L > VaR`` (of the bars of variance the horizon spanned: Spans below).
3. New forecasts are made with exposures ``x = q · P_t``: on the ``bar`` track every bar (one-bar VaR), on the
   ``limit`` track when the previous ``horizon_bars`` horizon has closed (non-overlapping horizons).
   Models: :func:`logic.var_methods.risk_model` with the current Σ; ``student_t`` with
   ``ν = math_logic.fit_student_t_dof(window)``; ``fhs`` with the window and ``σ(now) = sqrt(diag Σ_t)``.
   A flat book (every ``q_i`` 0: closed out, or holding only tickers without a price) has no risk to forecast:
   no forecast is opened, the bar is counted as ``flat`` on each track that was due one
   (:meth:`logic.backtest_counts.TrackCounts.skip`) and the next bar holding something forecasts (on the
   ``limit`` track too: its horizons start at bars with risk). A forecast of 0 counted as an observation would be
   a success the model did nothing to earn; a book held but forecast at VaR 0 (no volatility seen yet) is an
   observation, and a loss on it an exceedance.

Missing entries
---------------
A ticker without a new price in a bar (the tick event's ``observed``, :meth:`Backtester.step`'s, from the stream
daemon: engine/store/market.py ``TickEvent``) keeps its last price, so its return is 0. That 0 is no data for
the EWMA covariance: the ticker keeps its variance (:func:`math_logic.update_covariance_ewma_observed`, as the
stream's covariance does; :func:`logic.backtest_kernels.ewma_observed`). It is a stand-in, not a draw of the
innovation: the entry is *missing*, FHS fills it as the live model does (:func:`math_logic.fhs_fill_missing`) and
``ν`` is fitted on the observed entries only (:func:`math_logic.fit_student_t_dof` with ``observed``), as the live
model fits its own (``engine.math_logic.standardize_observed``), so the Student-t whose exceedances are counted
here is the live one.
An entry is an observation when the backtest's own ``σ > 0`` (else ``z`` is the convention 0) and the ticker had a
new price or its price moved since the last bar fed (bars this backtester was not fed):
:func:`logic.backtest_kernels.observed_entries`. A price that arrives unchanged is an observation: its 0 is data.
Without a missing entry everything is computed exactly as before the mask. The state keeps the mask:
:meth:`Backtester.to_dict` as ``"missing"`` (the window's ``[row, column]`` pairs), :meth:`Backtester.ring` as
NaN (the one value a window entry never is; any other NaN or an infinity is damage); a state without either, as
stored before, has every entry observed.

Spans
-----
A bar spans ``S`` bars of the model's variance (the tick event's ``span``, :meth:`Backtester.step`'s): 1, or with
``model.night_variance_share`` on a calendar with sessions less for a bar of the open market and more for the first
after a night (:func:`math_logic.session_spans`). ``since`` sums the spans of the bars since each ticker's last new
price and its return enters the model as ``r / sqrt(since + S)`` (:func:`math_logic.per_bar_returns`), as in the
stream's model. A forecast for ``h`` bars closes after ``h`` bars fed spanning ``E`` (``OpenForecast.elapsed``) and
is scored as ``-P&L > VaR · sqrt(E / h)`` (square root of time; ``Observation.scale``): an opening gap is checked
against a night's VaR, not a minute's. With every span 1 (a CSV, φ = 0) every number and stored byte is as before.

Statistics per track and method, on the observations only (a flat book's bars are counted apart, ``flat``): all
of them (count, exceedances, Kupiec POF, Christoffersen independence from the running transition counts, the
observations taken in sequence) and the last ``rolling`` observations (exceedances, and their Basel zone once
they number at least ``zone_min_observations``: by default the whole window, 250, the window the Basel framework is
defined on; at a handful of observations the binomial rule is no verdict, one exceedance in two being "red"). The
closed observations are also kept, the last ``max_records`` of them.

References: Kupiec (1995), "Techniques for verifying the accuracy of risk measurement models", J. Derivatives
3(2) (proportion of failures, :func:`math_logic.kupiec_pof`); Christoffersen (1998), "Evaluating interval
forecasts", Int. Econ. Review 39(4) (independence, :func:`math_logic.christoffersen_independence_counts`); Basel
Committee (1996), "Supervisory framework for the use of backtesting" (traffic light,
:func:`math_logic.basel_traffic_light`); J.P. Morgan/Reuters (1996), RiskMetrics Technical Document (EWMA).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from engine import math_logic
from engine.defaults import BASEL_OBSERVATIONS, EWMA_DECAY
from engine.records import Float64Array, VarMethod
from logic import backtest_kernels as kernels
from logic.backtest_batch import BarFigures, step_many
from logic.backtest_counts import MethodSummary, OpenForecast, TrackCounts
from logic.var_methods import RiskModel, StudentTModel, risk_model

STATE_VERSION = 1
"""Version of :meth:`Backtester.to_dict`; :meth:`Backtester.from_dict` refuses any other."""

ROLLING_OBSERVATIONS = BASEL_OBSERVATIONS
"""Observations in the rolling exceedance count and the Basel zone (the Basel one-year window)."""

_MISSING_BITS = np.float64(np.nan).view(np.uint64)
"""The bits of the NaN that marks a missing entry in :meth:`Backtester.ring` (``numpy.nan``'s, 0x7FF8...0)."""


class Track(StrEnum):
    """Which horizon a forecast is for."""

    BAR = "bar"
    """One bar, every bar."""
    LIMIT = "limit"
    """The VaR limit's horizon (``horizon_bars``), non-overlapping."""


@dataclass(frozen=True)
class BacktestConfig:
    """What a backtest forecasts and how its model is estimated."""

    methods: tuple[VarMethod, ...] = (VarMethod.NORMAL, VarMethod.STUDENT_T, VarMethod.FHS)
    confidence: float = 0.99
    window: int = 500
    """Standardized returns kept (the FHS scenarios, the sample ν is fitted on)."""
    decay: float = EWMA_DECAY
    horizon_bars: int = 1
    """The limit's horizon, in bars fed (:func:`logic.backtest_monitor.horizon_bars` converts the limit's days)."""
    seed_rows: int = 30
    """Returns whose zero-mean second moment seeds the EWMA covariance."""
    rolling: int = ROLLING_OBSERVATIONS
    zone_min_observations: int | None = None
    """Fewest observations in the rolling window before a Basel zone is given (None: ``rolling``, a full window);
    between 1 and ``rolling``. Always an int once built (:attr:`zone_minimum` reads it typed)."""
    max_records: int | None = 1000
    """Closed observations kept in the state (None: all)."""
    dof_bounds: tuple[float, float] = (3.0, 30.0)

    def __post_init__(self) -> None:
        methods = tuple(VarMethod(m) for m in self.methods)
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "dof_bounds", tuple(float(b) for b in self.dof_bounds))
        if not methods or len(set(methods)) != len(methods):
            raise ValueError(f"methods must be distinct and at least one, got {list(methods)}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be strictly between 0 and 1, got {self.confidence}")
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"decay must be strictly between 0 and 1, got {self.decay}")
        for name in ("window", "horizon_bars", "seed_rows", "rolling"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.zone_min_observations is None:
            object.__setattr__(self, "zone_min_observations", self.rolling)
        minimum = self.zone_min_observations
        if isinstance(minimum, bool) or not isinstance(minimum, int) or not 1 <= minimum <= self.rolling:
            raise ValueError(f"zone_min_observations must be an integer between 1 and rolling ({self.rolling}), "
                             f"got {minimum!r}")  # fmt: skip
        if self.max_records is not None and (not isinstance(self.max_records, int) or self.max_records < 0):
            raise ValueError(f"max_records must be an integer >= 0 or None, got {self.max_records!r}")
        lo, hi = self.dof_bounds
        if not 2.0 < lo <= hi:
            raise ValueError(f"dof_bounds must satisfy 2 < lo <= hi, got {self.dof_bounds}")

    @property
    def zone_minimum(self) -> int:
        """:attr:`zone_min_observations` (set to ``rolling`` when built with None)."""
        return self.rolling if self.zone_min_observations is None else self.zone_min_observations

    def to_dict(self) -> dict[str, Any]:
        # spelled out, not dataclasses.asdict (a deep copy): written with every backtest state, every tick
        return {
            "methods": [str(m) for m in self.methods],
            "confidence": self.confidence,
            "window": self.window,
            "decay": self.decay,
            "horizon_bars": self.horizon_bars,
            "seed_rows": self.seed_rows,
            "rolling": self.rolling,
            "zone_min_observations": self.zone_min_observations,
            "max_records": self.max_records,
            "dof_bounds": list(self.dof_bounds),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BacktestConfig:
        return cls(
            methods=tuple(VarMethod(m) for m in d["methods"]),
            confidence=float(d["confidence"]),
            window=int(d["window"]),
            decay=float(d["decay"]),
            horizon_bars=int(d["horizon_bars"]),
            seed_rows=int(d["seed_rows"]),
            rolling=int(d["rolling"]),
            zone_min_observations=None if d.get("zone_min_observations") is None else int(d["zone_min_observations"]),
            max_records=None if d["max_records"] is None else int(d["max_records"]),
            dof_bounds=(float(d["dof_bounds"][0]), float(d["dof_bounds"][1])),
        )


@dataclass(frozen=True)
class Observation:
    """One closed horizon: the VaR each method forecast at its start against the P&L that followed."""

    track: Track
    start: str
    """Label of the forecast bar."""
    end: str
    """Label of the bar the horizon closed at."""
    pnl: float
    """Realized P&L of the positions held at ``start``, dollars."""
    var: Mapping[VarMethod, float]
    """Each method's VaR as forecast, for the forecast's horizon."""
    hit: Mapping[VarMethod, bool]
    """``-pnl > var · scale``."""
    scale: float = 1.0
    """``sqrt(E / h)``: the VaR's scale to the ``E`` bars of variance the horizon's ``h`` bars spanned (the tick
    events' ``span``; 1: ``E = h``, the VaR itself). In the dict only when it is not 1."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "track": str(self.track),
            "start": self.start,
            "end": self.end,
            "pnl": self.pnl,
            "var": {str(m): v for m, v in self.var.items()},
            "hit": {str(m): h for m, h in self.hit.items()},
        }
        if self.scale != 1.0:
            d["scale"] = self.scale
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Observation:
        return cls(
            track=Track(d["track"]),
            start=str(d["start"]),
            end=str(d["end"]),
            pnl=float(d["pnl"]),
            var={VarMethod(m): float(v) for m, v in d["var"].items()},
            hit={VarMethod(m): bool(h) for m, h in d["hit"].items()},
            scale=float(d.get("scale", 1.0)),
        )


class Backtester:
    """Incremental walk-forward VaR backtest of a fixed set of tickers (see the module docstring)."""

    def __init__(self, tickers: Sequence[str], config: BacktestConfig | None = None) -> None:
        self.config = config or BacktestConfig()
        self.tickers = tuple(str(t) for t in tickers)
        if not self.tickers or len(set(self.tickers)) != len(self.tickers):
            raise ValueError("tickers must be distinct and at least one")
        n = len(self.tickers)
        self.bar = -1
        """Index of the last bar fed (-1: none)."""
        self.last_prices: Float64Array | None = None
        self.since: Float64Array = np.zeros(n)
        """Bars of variance fed since each ticker's last new price (the bars' ``span``s summed; 0: in the last
        bar): its next return spans ``since + S``, ``S`` the span of the bar that brings it."""
        self.seed: list[Float64Array] = []
        self.cov: Float64Array | None = None
        # the window is rows [_end - window_count, _end) of a buffer a quarter longer: a push writes one row and
        # the window is moved back once every window/4 pushes (not the whole window on every bar)
        self._buf = np.zeros((self.config.window + max(1, self.config.window // 4), n))
        self._end = self.config.window
        self.window_count = 0
        self.pushed = 0
        """Standardized returns pushed into the window since the covariance was seeded (its ring slot: mod window)."""
        self._obs: npt.NDArray[np.bool_] | None = None
        """Rows of ``_buf``: True where the entry is an observation; None while every entry of the window is one
        (nothing is kept or computed for the mask then: the path of a feed without gaps)."""
        self._row_gaps: npt.NDArray[np.int64] | None = None
        """Missing entries of each row of ``_buf`` (kept with ``_obs``)."""
        self._gaps = 0
        """Missing entries in the window."""
        self.pending: dict[Track, OpenForecast] = {}
        self.counts = {track: {m: TrackCounts(self.config.rolling) for m in self.config.methods} for track in Track}
        self.records: deque[Observation] = deque(maxlen=self.config.max_records)
        self._models: tuple[int, dict[VarMethod, RiskModel]] | None = None
        self._shared: tuple[dict[str, Any], list[str]] | None = None
        """The configuration and tickers as :meth:`store_state` shares them."""
        self.skipped: frozenset[Track] = frozenset()
        """The tracks whose due forecast the last bar fed skipped (a flat book): their counts changed (``flat``)
        though no horizon closed."""

    # --- model state --------------------------------------------------------------------------------------

    @property
    def window(self) -> Float64Array:
        """The standardized returns held, oldest first, shape (count, N)."""
        return self._buf[self._end - self.window_count : self._end]

    @property
    def observed(self) -> npt.NDArray[np.bool_]:
        """Which entries of :attr:`window` are observations (module docstring: missing entries), shape (count, N)."""
        if self._obs is None:
            return np.ones((self.window_count, len(self.tickers)), dtype=bool)
        return self._obs[self._end - self.window_count : self._end]

    def _window_mask(self) -> npt.NDArray[np.bool_] | None:
        """:attr:`observed`, or None when every entry is an observation (what the fit is given)."""
        return None if self._obs is None else self.observed

    @property
    def ready(self) -> bool:
        """Burn-in done: the window is full and forecasts are being made."""
        return self.window_count == self.config.window

    def dof(self) -> float:
        """ν of the Student-t, fitted to the observed entries of the current window."""
        lo, hi = self.config.dof_bounds
        return math_logic.fit_student_t_dof(self.window, lo, hi, observed=self._window_mask())

    def _spans(self, span: float = 1.0) -> Float64Array | None:
        """Bars of variance the returns of a bar of ``span`` span (``since + span``), or None when each spans one
        (the same bits as before spans)."""
        return self.since + span if span != 1.0 or self.since.any() else None

    def _update_model(self, r: Float64Array, gaps: Float64Array | None = None) -> None:
        """One return (spanning ``gaps`` bars, :func:`math_logic.per_bar_returns`) into the seed or the model."""
        cfg = self.config
        if gaps is not None:
            r = math_logic.per_bar_returns(r, gaps)
        if self.cov is None:
            self.seed.append(r)
            if len(self.seed) == cfg.seed_rows:
                self.cov = math_logic.ewma_covariance_from_returns(
                    np.array(self.seed), cfg.decay, seed_rows=cfg.seed_rows
                )
                self.seed = []
            return
        positive = np.diagonal(self.cov) > 0.0  # before the update: z = r / σ only where σ > 0
        z = math_logic.ewma_standardize_and_update(self.cov, r, cfg.decay)
        self._push(z, None if positive.all() else positive)

    def _observed_row(self, observed: npt.ArrayLike | None) -> npt.NDArray[np.bool_] | None:
        """A bar's ``observed`` checked (boolean, one per ticker); None when every ticker had a new price."""
        if observed is None:
            return None
        mask = math_logic.observed_mask(observed, (len(self.tickers),))
        return None if mask.all() else mask.copy()

    def _push(self, z: Float64Array, observed: npt.NDArray[np.bool_] | None = None) -> None:
        """Append ``z`` to the window; ``observed``: which of its entries are observations (None: all)."""
        size = self.config.window
        if self._end == self._buf.shape[0]:
            self._buf[:size] = self._buf[self._end - size : self._end]
            if self._obs is not None and self._row_gaps is not None:
                self._obs[:size] = self._obs[self._end - size : self._end]
                self._row_gaps[:size] = self._row_gaps[self._end - size : self._end]
            self._end = size
        if observed is not None and self._obs is None:  # the first missing entry held: every other one observed
            self._obs = np.ones(self._buf.shape, dtype=bool)
            self._row_gaps = np.zeros(self._buf.shape[0], dtype=np.int64)
        if self._obs is not None and self._row_gaps is not None:
            if self.window_count == size:  # the oldest row leaves the window
                self._gaps -= int(self._row_gaps[self._end - size])
            missing = 0 if observed is None else len(observed) - int(np.count_nonzero(observed))
            self._obs[self._end] = True if observed is None else observed
            self._row_gaps[self._end] = missing
            self._gaps += missing
        self._buf[self._end] = z
        self._end += 1
        self.window_count = min(self.window_count + 1, size)
        self.pushed += 1
        if self._obs is not None and not self._gaps:  # every entry held is observed again
            self._obs = self._row_gaps = None

    def _load_observed(self, observed: npt.NDArray[np.bool_]) -> None:
        """Mark the entries of the window just loaded (shape (count, N)) as ``observed`` says."""
        gaps = int(observed.size - np.count_nonzero(observed))
        if not gaps:
            return
        rows = slice(self._end - self.window_count, self._end)
        self._obs = np.ones(self._buf.shape, dtype=bool)
        self._row_gaps = np.zeros(self._buf.shape[0], dtype=np.int64)
        self._obs[rows] = observed
        self._row_gaps[rows] = observed.shape[1] - np.count_nonzero(observed, axis=1)
        self._gaps = gaps

    def ring(self) -> Float64Array:
        """What the store keeps of the arrays that grow a row per bar, as fixed rows, so that a bar rewrites one
        row (:meth:`ring_row`): shape (``window + seed_rows``, N). Rows ``[0, window)`` are the window as a ring
        (push j, 0-based, :attr:`pushed`, in row ``j % window``); rows ``[window, window + seed_rows)`` the seed
        returns of the burn-in, in order (past ``len(seed)``, nothing: the store may keep a finished burn-in's
        rows there, never read again); rows holding nothing are zeros here. A missing entry of the window is NaN
        (module docstring)."""
        size = self.config.window
        out = np.zeros((size + self.config.seed_rows, len(self.tickers)))
        if self.window_count:
            held = self.window if self._obs is None else np.where(self.observed, self.window, np.nan)
            out[np.arange(self.pushed - self.window_count, self.pushed) % size] = held
        if self.seed:
            out[size : size + len(self.seed)] = self.seed
        return out

    def ring_slot(self) -> int:
        """The ring row of the newest standardized return (valid once one was pushed)."""
        return (self.pushed - 1) % self.config.window

    def ring_values(self, row: int) -> Float64Array:
        """Row ``row`` of :meth:`ring`, without building the others."""
        size = self.config.window
        if row >= size:
            i = row - size
            return self.seed[i] if i < len(self.seed) else np.zeros(len(self.tickers))
        back = (self.pushed - 1 - row) % size  # how many pushes ago this row was written
        if back >= self.window_count:
            return np.zeros(len(self.tickers))
        at = self._end - 1 - back
        if self._obs is not None and self._row_gaps is not None and self._row_gaps[at]:
            return np.where(self._obs[at], self._buf[at], np.nan)
        return self._buf[at]

    def ring_row(self, pushed: int, seeded: int) -> int | None:
        """The one row of :meth:`ring` that changed since :attr:`pushed` was ``pushed`` and ``len(seed)`` was
        ``seeded`` (one :meth:`step` ago); None when none did (or only the seed was cleared)."""
        if self.pushed > pushed:
            return self.ring_slot()
        if len(self.seed) > seeded:
            return self.config.window + len(self.seed) - 1
        return None

    def models(self) -> dict[VarMethod, RiskModel]:
        """Each configured method's one-bar :class:`~logic.var_methods.RiskModel` at the current state.

        ``student_t`` uses ``ν = dof()``, ``fhs`` the window and ``σ(now) = sqrt(diag Σ)``. Built once per bar
        and valid until the next :meth:`step` (the normal and t models share the covariance updated in place).
        """
        if not self.ready or self.cov is None:
            raise ValueError("the backtest is still in burn-in: no forecast yet")
        if self._models is not None and self._models[0] == self.bar:
            return self._models[1]
        built: dict[VarMethod, RiskModel] = {}
        for method in self.config.methods:
            built[method] = risk_model(
                method,
                self.cov,
                horizon_bars=1,
                standardized=self.window if method is VarMethod.FHS else None,
                dof=self.dof() if method is VarMethod.STUDENT_T else None,
                observed=self._window_mask() if method is VarMethod.FHS else None,
                validate=False,
            )
        self._models = (self.bar, built)
        return built

    def forecasts(self, exposures: npt.ArrayLike, horizon_bars: float) -> dict[VarMethod, float]:
        """Each configured method's VaR of ``exposures`` (dollars) over ``horizon_bars``, from the current state."""
        confidence = self.config.confidence
        out: dict[VarMethod, float] = {}
        for m, model in self.models().items():
            if m is VarMethod.STUDENT_T:
                out[m] = self._student_t_var(model, exposures, horizon_bars)
            else:
                out[m] = model.with_horizon(horizon_bars).var(exposures, confidence)
        return out

    def _student_t_var(self, model: RiskModel, exposures: npt.ArrayLike, horizon_bars: float) -> float:
        """:meth:`logic.var_methods.StudentTModel.var`, the same floats, the quantile ``t_ν⁻¹(c)`` from
        :func:`logic.backtest_kernels.t_var_multipliers`: ν is refitted on every bar, so
        :func:`math_logic.student_t_var`'s cache (keyed by ν) never hits, and each miss costs ~0.5 ms of scipy."""
        assert isinstance(model, StudentTModel)
        multiplier = kernels.t_var_multipliers(self.config.confidence, [model.dof])[0]
        x = np.asarray(exposures, dtype=np.float64)
        sigma_x = model.cov @ x
        sigma = math.sqrt(max(float(x @ sigma_x), 0.0))
        return multiplier * (sigma * math.sqrt(float(horizon_bars)))

    # --- the bar ------------------------------------------------------------------------------------------

    def _vector(self, values: npt.ArrayLike, name: str) -> Float64Array:
        x = np.array(values, dtype=np.float64)
        if x.shape != (len(self.tickers),):
            raise ValueError(f"{name} has shape {x.shape}, expected ({len(self.tickers)},)")
        # a finite sum is the common case, checked with one reduction; otherwise (a NaN or inf, or an overflow
        # of finite values) every entry is checked
        if not math.isfinite(float(np.add.reduce(x))) and not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        return x

    def step(
        self,
        prices: npt.ArrayLike,
        qty: npt.ArrayLike,
        label: str | None = None,
        *,
        observed: npt.ArrayLike | None = None,
        span: float = 1.0,
    ) -> list[Observation]:
        """Feed one bar (:func:`step_many` of this backtester alone: the monitor's code path).

        Parameters
        ----------
        prices : array_like, shape (N,)
            The bar's prices (closes), > 0, in ticker order.
        qty : array_like, shape (N,)
            Positions held from this bar on (the book at the forecast time), in units.
        label : str, optional
            The bar's name (a date, a timestamp); default its index.
        observed : array_like of bool, shape (N,), optional
            Which tickers had a new price in this bar (the tick event's); the others' prices are carried
            forward and their return is a missing entry of the window (module docstring). None: every ticker.
        span : float
            Bars of the model's variance the bar spans (the tick event's ``span``, > 0; module docstring).

        Returns
        -------
        list of Observation
            The horizons that closed at this bar (the ``bar`` track first).

        Bad input raises ValueError before any state changes.
        """
        return step_many([(self, prices, qty, label)], observed=[observed], span=span)[0]

    def _checked(self, prices: npt.ArrayLike, qty: npt.ArrayLike) -> tuple[Float64Array, Float64Array]:
        p = self._vector(prices, "prices")
        if (p <= 0.0).any():
            raise ValueError("prices must be > 0")
        return p, self._vector(qty, "qty")

    def _advance(
        self,
        p: Float64Array,
        name: str,
        *,
        updated: bool = False,
        observed: npt.NDArray[np.bool_] | None = None,
        span: float = 1.0,
    ) -> list[Observation]:
        """The bar's return updates the model (unless ``updated``: :func:`step_many` did it); the horizons ending
        here close. ``observed``: which tickers had a new price (None: all), for the bars since each one's last;
        ``span``: the bars of variance this bar spans, for the same and for the open horizons."""
        closed: list[Observation] = []
        self.skipped = frozenset()
        if self.last_prices is not None:
            if not updated:
                self._update_model(math_logic.log_returns(self.last_prices, p), self._spans(span))
            # a new price, or one that moved since the last bar fed (as logic.backtest_kernels.ewma_observed)
            printed = None if observed is None else observed | (p != self.last_prices)
            self.since = np.where(printed, 0.0, self.since + span) if printed is not None else np.zeros_like(p)
        self.bar += 1
        for track in Track:
            pending = self.pending.get(track)
            if pending is None:
                continue
            h = self._horizon(track)
            pending.elapse(span, self.bar - 1 - (pending.end_bar - h))
            if pending.end_bar == self.bar:
                closed.append(self._close(track, pending, p, name, h))
                del self.pending[track]
        self.last_prices = p
        return closed

    def _forecast(self, p: Float64Array, q: Float64Array, name: str, figures: BarFigures) -> None:
        """New forecasts on the tracks with none open (after :meth:`_advance`, once ready), from this bar's
        ``figures`` of the book ``q · p``: each method's VaR as :meth:`forecasts` gives it, the same floats."""
        one_bar: dict[VarMethod, float] | None = None
        for track in Track:
            if track in self.pending:
                continue
            h = self._horizon(track)
            if h == 1 and one_bar is not None:
                var = dict(one_bar)
            else:
                var = {m: figures.var(m, h) for m in self.config.methods}
            if h == 1:
                one_bar = var
            self.pending[track] = OpenForecast(name, self.bar + h, q, p, var)

    def _horizon(self, track: Track) -> int:
        """Bars fed a forecast of ``track`` is for."""
        return 1 if track is Track.BAR else self.config.horizon_bars

    def _skip_flat(self) -> None:
        """The book is flat at this bar (after :meth:`_advance`, once ready): the tracks with no forecast open,
        which :meth:`_forecast` would have opened one on, count a flat bar and open none (module docstring)."""
        skipped = frozenset(track for track in Track if track not in self.pending)
        for track in skipped:
            for counts in self.counts[track].values():
                counts.skip()
        self.skipped = skipped

    def _close(self, track: Track, pending: OpenForecast, prices: Float64Array, label: str, h: int) -> Observation:
        """The forecast for ``h`` bars, closed after ``h`` bars fed of ``E`` bars of variance, is scored as
        ``-P&L > VaR · sqrt(E / h)`` (module docstring); ``E = h`` scores the VaR itself."""
        pnl = float(pending.qty @ (prices - pending.prices))
        elapsed = pending.variance_bars(h)
        if elapsed == h:  # the horizon forecast: the VaR itself
            scale, scored = 1.0, pending.var
        else:
            scale = math.sqrt(elapsed / h)
            scored = {m: v * scale for m, v in pending.var.items()}
        hits = {m: -pnl > v for m, v in scored.items()}
        for method, hit in hits.items():
            self.counts[track][method].add(hit)
        observation = Observation(track, pending.start, label, pnl, dict(pending.var), hits, scale)
        self.records.append(observation)
        return observation

    def summary(self, track: Track = Track.BAR) -> dict[VarMethod, MethodSummary]:
        """Per method: observations, exceedances, rate, Kupiec, Christoffersen, the rolling count and zone."""
        counts = self.counts[track if isinstance(track, Track) else Track(track)]
        return {m: c.summary(m, self.config.confidence, self.config.zone_minimum) for m, c in counts.items()}

    def summary_dicts(self, track: Track) -> dict[str, dict[str, Any]]:
        """:meth:`summary` of ``track`` as plain dicts (:meth:`MethodSummary.to_dict`), method name -> dict."""
        confidence, minimum = self.config.confidence, self.config.zone_minimum
        return {str(m): c.summary_dict(m, confidence, minimum) for m, c in self.counts[track].items()}

    def rezone(self, zone_min_observations: int) -> None:
        """Give zones from ``zone_min_observations`` rolling observations on: the configuration changes, the
        counts are kept (the minimum only reads them)."""
        self.config = dataclasses.replace(self.config, zone_min_observations=zone_min_observations)
        self._shared = None

    # --- state as plain data ------------------------------------------------------------------------------

    def to_dict(self, *, binary_arrays: bool = False, window: bool = True) -> dict[str, Any]:
        """The whole state as JSON-ready dicts, lists, numbers and strings (floats round-trip exactly).

        With ``binary_arrays`` the two large entries, ``"cov"`` (N, N) and ``"window"`` (count, N), are float64
        ndarrays (copies) instead of nested lists, for the store to write with ``engine.store.codec.encode_array``
        beside the JSON of the rest: at N = 500 and a 500-row window the lists are ~11 MB of JSON. Without
        ``window`` the window and the seed returns are left out: the caller keeps them as :meth:`ring`
        (``window_count``, ``pushed`` and ``seed_count`` place their rows; its NaN marks a missing entry) and gives
        it back to :meth:`from_dict` as ``"ring"``. With the window, ``"missing"`` lists its missing entries as
        ``[row, column]`` pairs (the value there is the stand-in 0). :meth:`from_dict` accepts each form, and one
        without ``"missing"`` (stored before it) as every entry observed.
        """
        if binary_arrays:
            cov: Any = None if self.cov is None else self.cov.copy()
        else:
            cov = None if self.cov is None else self.cov.tolist()
        state = {
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "tickers": list(self.tickers),
            "bar": self.bar,
            "last_prices": None if self.last_prices is None else self.last_prices.tolist(),
            "since": self.since.tolist(),
            "seed_count": len(self.seed),
            "cov": cov,
            "window_count": self.window_count,
            "pushed": self.pushed,
            "pending": {str(t): p.to_dict() for t, p in self.pending.items()},
            "counts": {str(t): {str(m): c.to_dict() for m, c in cs.items()} for t, cs in self.counts.items()},
            "records": [r.to_dict() for r in self.records],
        }
        if window:
            state["window"] = self.window.copy() if binary_arrays else self.window.tolist()
            state["missing"] = [] if self._obs is None else np.argwhere(~self.observed).tolist()
            state["seed"] = [r.tolist() for r in self.seed]
        return state

    def store_state(self) -> dict[str, Any]:
        """:meth:`to_dict` as the store writes it every bar: without the window and the seed returns (the store
        keeps them as :meth:`ring`) and with ``"cov"`` None (the store keeps it as a codec array beside the JSON).

        For encoding at once: what does not change from bar to bar (the configuration, the tickers, an open
        forecast) is built once and shared between calls, so the dict must not be modified."""
        if self._shared is None:
            self._shared = (self.config.to_dict(), list(self.tickers))
        pending = {}
        for track, p in self.pending.items():
            if p.shared is None:
                p.shared = p.to_dict()
            pending[track.value] = p.shared
        return {
            "version": STATE_VERSION,
            "config": self._shared[0],
            "tickers": self._shared[1],
            "bar": self.bar,
            "last_prices": None if self.last_prices is None else self.last_prices.tolist(),
            "since": self.since.tolist(),
            "seed_count": len(self.seed),
            "cov": None,
            "window_count": self.window_count,
            "pushed": self.pushed,
            "pending": pending,
            "counts": {t.value: {m.value: c.to_dict() for m, c in cs.items()} for t, cs in self.counts.items()},
            "records": [r.to_dict() for r in self.records],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Backtester:
        """Rebuild a backtester from :meth:`to_dict`; raises ValueError on a malformed or foreign state."""
        try:
            if d["version"] != STATE_VERSION:
                raise ValueError(f"backtest state version {d['version']!r}, expected {STATE_VERSION}")
            bt = cls(d["tickers"], BacktestConfig.from_dict(d["config"]))
            n, cfg = len(bt.tickers), bt.config
            bt.bar = int(d["bar"])
            if d["last_prices"] is not None:
                bt.last_prices = bt._vector(d["last_prices"], "last_prices")
            if d.get("since") is not None:  # none: stored before the count was kept, every next return one bar
                bt.since = bt._vector(d["since"], "since")
                if (bt.since < 0.0).any():  # bars of variance: whole bars only while every span is 1
                    raise ValueError("since must hold numbers of bars >= 0")
            if d["cov"] is not None:
                cov = np.array(d["cov"], dtype=np.float64, order="C")
                if cov.shape != (n, n):
                    raise ValueError(f"cov has shape {cov.shape}, expected ({n}, {n})")
                bt.cov = cov
            if "ring" in d:  # the store's form: fixed rows, the window as a ring, then the seed (see ring())
                ring = np.ascontiguousarray(d["ring"], dtype=np.float64)
                if ring.shape != (cfg.window + cfg.seed_rows, n):
                    raise ValueError(f"ring has shape {ring.shape}, expected ({cfg.window + cfg.seed_rows}, {n})")
                marks = np.zeros(ring.shape, dtype=bool)  # the marker NaN of a missing entry, in the window's rows
                marks[: cfg.window] = ring[: cfg.window].view(np.uint64) == _MISSING_BITS
                # a row not in the window yet is zeros, a missing entry the marker: anything else is damage
                if not np.isfinite(ring[~marks]).all():
                    raise ValueError("ring contains NaN or infinite values")
                count, pushed = int(d["window_count"]), int(d["pushed"])
                if not 0 <= count <= min(pushed, cfg.window):
                    raise ValueError(f"window_count {count} does not fit {pushed} pushes in {cfg.window} rows")
                held = np.arange(pushed - count, pushed) % cfg.window
                window, missing = ring[held], marks[held]
                window[missing] = 0.0  # the stand-in
                seeded = int(d["seed_count"])
                if not 0 <= seeded < cfg.seed_rows:
                    raise ValueError(f"seed_count {seeded} is not below seed_rows {cfg.seed_rows}")
                bt.seed = [ring[cfg.window + i].copy() for i in range(seeded)]
            else:
                bt.seed = [bt._vector(r, "seed") for r in d["seed"]]
                window = np.array(d["window"], dtype=np.float64).reshape(-1, n)
                count = window.shape[0]
                pushed = int(d.get("pushed", count))
                if count > cfg.window:
                    raise ValueError(f"window holds {count} rows, more than {cfg.window}")
                if int(d.get("window_count", count)) != count or pushed < count:
                    raise ValueError(f"window holds {count} rows, the state says {d.get('window_count')}")
                pairs = np.array(d.get("missing", []), dtype=np.int64).reshape(-1, 2)  # none: as stored before
                if ((pairs < 0) | (pairs >= (count, n))).any():
                    raise ValueError(f"missing names an entry outside the window's {count} x {n}")
                missing = np.zeros(window.shape, dtype=bool)
                missing[pairs[:, 0], pairs[:, 1]] = True
                if (window[missing] != 0.0).any():
                    raise ValueError("a missing entry of the window must be the stand-in 0")
            if not np.isfinite(window).all():
                raise ValueError("window contains NaN or infinite values")
            bt.window_count, bt.pushed = count, pushed
            bt._buf[cfg.window - count : cfg.window] = window
            bt._load_observed(~missing)
            bt.pending = {Track(t): OpenForecast.from_dict(p) for t, p in d["pending"].items()}
            for t, cs in d["counts"].items():
                for m, c in cs.items():
                    bt.counts[Track(t)][VarMethod(m)] = TrackCounts.from_dict(c, cfg.rolling)
            bt.records.extend(Observation.from_dict(r) for r in d["records"])
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"malformed backtest state: {exc!r}") from None
        return bt

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Backtester:
        return cls.from_dict(json.loads(text))


def run_backtest(
    tickers: Sequence[str],
    bars: Iterable[tuple[str, npt.ArrayLike, npt.ArrayLike]],
    config: BacktestConfig | None = None,
) -> tuple[Backtester, list[Observation]]:
    """Feed ``(label, prices, qty)`` bars through one :class:`Backtester`; return it and every observation."""
    bt = Backtester(tickers, config)
    series: list[Observation] = []
    for label, prices, qty in bars:
        series.extend(bt.step(prices, qty, label))
    return bt, series


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m logic.backtest``: see :mod:`logic.backtest_cli`. Returns the exit status (0, or 2 on bad input)."""
    from logic import backtest_cli  # the edge, imported only when the command line runs

    return backtest_cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
