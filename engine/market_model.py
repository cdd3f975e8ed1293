"""The market's risk model, validated once per market snapshot and shared by its readers.

A :class:`MarketModel` is one market snapshot (version, time, tickers, prices) with its EWMA covariance checked
at most once (finite, symmetric, positive semi-definite: the O(N³) check of :mod:`engine.math_logic`, run when a
reader first asks) and the daily volatility of every ticker. :class:`MarketModelCache` loads it through the
:class:`~engine.store.Store` when the snapshot changes, and aligns the stored stressed matrix to the market's
tickers once per (market snapshot, stressed version). The pre-trade gate, the monitor and the dashboard views
use it (one instance per process and store), so the matrix is read and validated once, not once per reader.

Usage::

    models = MarketModelCache(store, bars_per_day=settings.model.bars_per_day)
    model = models.get()                      # reads the header, reloads the matrix only when it changed
    model = models.get(header)                # the same for a header the caller already read
    model = models.at_least(version, ts)      # a lagging reader (the monitor): cached if not older
    if model.error is not None: ...           # an unusable matrix: fail closed (the gate) or report
    cov = model.aligned(("AAA", "BBB"))       # the covariance of a subset / another order (cached)
    stressed = models.stressed(model)         # StressedModel(version, cov in model.tickers order)
    z = model.standardized                    # the standardized-return window (T, N), read once per snapshot
    rm = model.risk_model(VarMethod.FHS, 390, var_methods.risk_model)   # cached per (snapshot, method, horizon)

The window of standardized returns (the stream daemon's ``mkt:{m}:stdret``) is read lazily, the first time a
reader asks for :attr:`MarketModel.standardized` (the monitor and the gate under ``student_t`` / ``fhs``; a
``normal`` reader never reads it), and the cache keeps the last window read so the next snapshot fetches only the
rows added since. The window is cut to the rows of market versions <= the model's (a reader that lags sees no
newer row). :meth:`MarketModel.risk_model` builds the :mod:`logic.var_methods` model of a (method, horizon) once
per snapshot from the builder the caller passes (``logic.var_methods.risk_model``: the engine does not import the
logic layer).

Missing entries of the window (a ticker with no new price in a bar: :class:`~engine.store.StandardizedWindow`)
are its stand-in 0 in :attr:`MarketModel.standardized` and False in :attr:`MarketModel.observed`, which goes with
the window to filtered historical simulation (it fills them: ``engine.math_logic.fhs_fill_missing``) and to the
Student-t fit (:attr:`MarketModel.dof`), which leaves them out of its sample. A window that is not finite is
refused with :class:`~engine.errors.CorruptDataError`.

Nothing here decides anything: a matrix that fails the check is kept with its :attr:`MarketModel.error` so that
each caller applies its own policy (the gate rejects every trade; a page shows the error).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from engine import math_logic
from engine.defaults import BARS_PER_DAY
from engine.errors import CorruptDataError, StoreEmptyError, StoreError
from engine.records import Float64Array, MarketHeader, VarMethod
from engine.store import StandardizedWindow, Store

RiskModelFactory = Callable[..., Any]
"""``logic.var_methods.risk_model``: (method, cov, *, horizon_bars, validate, standardized, current_vol, observed,
dof)."""

DOF_BOUNDS = (3.0, 30.0)
"""Bounds of the Student-t degrees of freedom fitted to the window (``math_logic.fit_student_t_dof``)."""

ModelKey = tuple[int, float]
"""(version, ts) of a market snapshot: a warm-up ``--reset`` restarts versions, the time still differs."""


@dataclass(frozen=True)
class MarketModel:
    """The covariance of one market snapshot with what every reader derives from it, each derived once.

    The checks are lazy and remembered: the gate reads :attr:`error` (the O(N³) symmetric-PSD check, once per
    snapshot), the monitor only :attr:`finite_error` (O(N²)), so a reader pays for the check it applies.
    """

    key: ModelKey
    header: MarketHeader
    """The snapshot the matrix came with (its prices may be newer than a header a caller read before)."""
    cov: Float64Array
    """EWMA covariance of one-bar log returns, in ``header.tickers`` order."""
    index: Mapping[str, int]
    """Ticker -> row of the matrix."""
    bars_per_day: float = BARS_PER_DAY
    window_source: Callable[[], StandardizedWindow] | None = field(default=None, compare=False, repr=False)
    """Reads the standardized-return window when first needed (set by :class:`MarketModelCache`)."""
    _aligned: dict[tuple[str, ...], Float64Array] = field(default_factory=dict, compare=False, repr=False)
    _risk_models: dict[tuple[VarMethod, float], Any] = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def error(self) -> StoreError | None:
        """Set when the matrix is unusable for a decision: not finite, not symmetric, not PSD."""
        try:
            math_logic.get_portfolio_var(np.zeros(len(self.header.tickers)), self.cov, 1.0, validate=True)
        except ValueError as exc:
            return CorruptDataError(f"the market covariance (version {self.version}) is unusable: {exc}")
        return None

    @cached_property
    def finite_error(self) -> StoreError | None:
        """Set when the matrix has a NaN/inf or a negative variance: the monitor's (O(N²)) test of usability."""
        if not np.isfinite(self.cov).all() or (np.diagonal(self.cov) < 0).any():
            return CorruptDataError(f"market version {self.version}: covariance has NaN/inf or negative variances")
        return None

    @cached_property
    def daily_vol(self) -> Float64Array:
        """One-bar volatility of each ticker scaled to a day: sqrt(S_ii) * sqrt(bars_per_day) (zeros when the
        matrix is unusable)."""
        if self.error is not None:
            return np.zeros(len(self.header.tickers))
        one_bar = np.sqrt(np.clip(np.diagonal(self.cov), 0.0, None))
        return np.asarray(math_logic.scale_volatility(one_bar, self.bars_per_day))

    @cached_property
    def vol(self) -> Float64Array:
        """One-bar volatility ``sqrt(S_ii)`` of each ticker (negative variances clipped to 0)."""
        return np.sqrt(np.clip(np.diagonal(self.cov), 0.0, None))

    @cached_property
    def window(self) -> StandardizedWindow:
        """The stored standardized-return window of this snapshot's versions (empty when none is stored)."""
        if self.window_source is None:
            return StandardizedWindow.empty(self.tickers)
        return self.window_source().upto(self.version)

    @cached_property
    def standardized(self) -> Float64Array:
        """The window's rows (T, N) in this snapshot's ticker order; (0, N) when it does not cover them."""
        window = self.window
        if window.tickers == self.tickers:
            return window.values
        order = reorder(window.tickers, self.tickers)
        if order is None:
            return np.zeros((0, len(self.tickers)))
        return np.ascontiguousarray(window.values[:, order])

    @cached_property
    def observed(self) -> npt.NDArray[np.bool_]:
        """Which entries of :attr:`standardized` are observations (same shape; False: missing, its 0 a stand-in)."""
        window = self.window
        if window.tickers == self.tickers:
            return window.observed
        order = reorder(window.tickers, self.tickers)
        if order is None:
            return np.zeros((0, len(self.tickers)), dtype=bool)
        return np.ascontiguousarray(window.observed[:, order])

    @cached_property
    def dof(self) -> float:
        """Student-t degrees of freedom fitted to the observed entries of the window (pooled over tickers), in
        :data:`DOF_BOUNDS`; a missing entry is not in the sample (``math_logic.fit_student_t_dof``).

        Raises :class:`~engine.errors.CorruptDataError` when the window is not finite.
        """
        try:
            return math_logic.fit_student_t_dof(self.standardized, *DOF_BOUNDS, observed=self.observed)
        except ValueError as exc:
            raise CorruptDataError(
                f"the standardized window (market version {self.version}) is unusable: {exc}"
            ) from exc

    def method_inputs(self, method: VarMethod | str) -> dict[str, Any]:
        """The keyword inputs of ``logic.var_methods.risk_model`` for ``method`` at this snapshot.

        Raises :class:`~engine.errors.StoreEmptyError` when ``fhs`` has no standardized return to work with.
        """
        kind = VarMethod(method)
        if kind is VarMethod.FHS:
            if self.standardized.shape[0] == 0:
                raise StoreEmptyError(
                    "no standardized returns for fhs in the store: run `python warmup.py` (or let the stream run)"
                )
            return {"standardized": self.standardized, "current_vol": self.vol, "observed": self.observed}
        if kind is VarMethod.STUDENT_T:
            return {"dof": self.dof}
        return {}

    def risk_model(self, method: VarMethod | str, horizon_bars: float, build: RiskModelFactory) -> Any:
        """The risk model of ``method`` over ``horizon_bars`` bars, built once per (snapshot, method, horizon).

        ``build`` is ``logic.var_methods.risk_model`` (passed in: the engine does not import the logic layer;
        :func:`logic.risk_models.risk_model_of` is the usual call). The one-bar model is built first and the
        others are its :meth:`with_horizon`. The matrix is not re-validated: a decision-maker reads
        :attr:`error` first.
        """
        key = (VarMethod(method), float(horizon_bars))
        cached = self._risk_models.get(key)
        if cached is None:
            one_bar = self._risk_models.get((key[0], 1.0))
            if one_bar is None:
                one_bar = build(key[0], self.cov, horizon_bars=1.0, validate=False, **self.method_inputs(key[0]))
                self._risk_models[(key[0], 1.0)] = one_bar
            cached = one_bar if key[1] == 1.0 else one_bar.with_horizon(key[1])
            self._risk_models[key] = cached  # a benign race: two threads build the same model
        return cached

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def tickers(self) -> tuple[str, ...]:
        return self.header.tickers

    def aligned(self, tickers: tuple[str, ...]) -> Float64Array:
        """The covariance of ``tickers`` (a subset or another order), computed once per ticker tuple.

        Raises :class:`~engine.errors.CorruptDataError` when a ticker is not in the snapshot.
        """
        if tickers == self.header.tickers:
            return self.cov
        cached = self._aligned.get(tickers)
        if cached is None:
            order = reorder(self.header.tickers, tickers)
            if order is None:
                missing = [t for t in tickers if t not in self.index]
                raise CorruptDataError(f"the market snapshot does not hold {missing}")
            cached = self.cov[np.ix_(order, order)]
            self._aligned[tickers] = cached  # a benign race: two threads compute the same matrix
        return cached


@dataclass(frozen=True)
class StressedModel:
    """The stored stressed (crisis) covariance, aligned with one market model's tickers."""

    version: int
    """Version of the stored stressed matrix (the warm-up bumps it when it rebuilds the matrix)."""
    market_key: ModelKey
    cov: Float64Array
    """In the market model's ticker order, one bar of the reader's ``bars_per_day``; not validated here
    (``get_stressed_var`` validates)."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """What the stored matrix was computed from (:func:`stressed_meta`; empty for one written before)."""
    scale: float = 1.0
    """Factor applied on read to the stored matrix: its bar's ``bars_per_day`` over the reader's (1 when they
    agree). A matrix is stored per bar; read under another bar length unscaled, every daily stressed figure
    would move by sqrt of the ratio (sqrt(390) = 19.7x between a day bar and a minute bar)."""


def stressed_meta(
    *,
    source: str,
    market_version: int,
    bars_per_day: float,
    bar_seconds: float,
    vol_multiplier: float,
    correlation_floor: float,
    written_at: float,
    actor: str,
    detail: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record stored beside a stressed matrix (``mkt:{m}:stressed`` field ``meta``): what it was computed
    from and when. ``bars_per_day`` / ``bar_seconds``: the bar the one-bar matrix is in."""
    return {
        "source": source,
        "market_version": int(market_version),
        "bars_per_day": float(bars_per_day),
        "bar_seconds": float(bar_seconds),
        "vol_multiplier": float(vol_multiplier),
        "correlation_floor": float(correlation_floor),
        "written_at": float(written_at),
        "actor": actor,
        **({"detail": dict(detail)} if detail else {}),
    }


def reorder(have: tuple[str, ...], want: tuple[str, ...]) -> list[int] | None:
    """Positions in ``have`` of each ticker of ``want``; None when one is missing."""
    index = {t: i for i, t in enumerate(have)}
    if not all(t in index for t in want):
        return None
    return [index[t] for t in want]


def build_model(
    snap: MarketHeader,
    cov: Float64Array,
    bars_per_day: float = BARS_PER_DAY,
    window_source: Callable[[], StandardizedWindow] | None = None,
) -> MarketModel:
    """The model of one snapshot (no I/O: tests and the warm-up may call it); its checks run when first read.

    ``window_source`` returns the standardized-return window (a test may pass ``lambda: window``)."""
    header = MarketHeader(snap.version, snap.ts, snap.tickers, snap.prices, snap.price_ts)
    return MarketModel(
        key=(snap.version, snap.ts),
        header=header,
        cov=cov,
        index={t: i for i, t in enumerate(snap.tickers)},
        bars_per_day=bars_per_day,
        window_source=window_source,
    )


class MarketModelCache:
    """The latest :class:`MarketModel` of a store, reloaded when the market snapshot changes.

    Parameters
    ----------
    store:
        Where the market snapshot and the stressed matrix are read.
    bars_per_day:
        Scales one-bar volatility to a day (``settings.model.bars_per_day``).

    Safe to share between threads: a reload happens under a lock, the models themselves are immutable (their
    aligned-submatrix memo is filled idempotently).
    """

    def __init__(self, store: Store, bars_per_day: float = BARS_PER_DAY) -> None:
        self.store = store
        self.bars_per_day = bars_per_day
        self._model: MarketModel | None = None
        self._stressed: tuple[StressedModel, tuple[int, bytes] | None, tuple[str, ...]] | None = None
        """The stressed model last read, the stamp of the write it was read from, the tickers it is aligned with
        (one tuple: a thread reads all three or none)."""
        self._window: StandardizedWindow | None = None
        self._window_lock = threading.Lock()
        self._lock = threading.Lock()

    def get(self, header: MarketHeader | None = None) -> MarketModel:
        """The model of ``header``'s snapshot (default: the stored one, read by one HMGET without the matrix).

        Reads the full matrix only when (version, ts) differs from the cached model's; the snapshot read then
        may be newer than ``header`` (its prices come with it). Raises the store's typed errors and
        ``redis.RedisError``.
        """
        if header is None:
            header = self.store.read_market_header()
        model = self._model
        if model is not None and model.key == (header.version, header.ts):
            return model
        with self._lock:
            model = self._model
            if model is not None and model.key == (header.version, header.ts):
                return model
            snap = self.store.read_market()
            model = build_model(snap, snap.cov, self.bars_per_day, self.read_window)
            self._model = model
            return model

    def at_least(self, version: int, ts: float) -> MarketModel:
        """A model no older than (``version``, ``ts``): the cached one when it is, else the stored one.

        For a reader that may lag behind the store (the monitor's ticks): an older tick uses the cached, newer
        matrix; a newer one (or one written after a re-seed restarted the versions) reloads.
        """
        model = self._model
        if model is not None and version <= model.key[0] and ts <= model.key[1]:
            return model
        with self._lock:
            model = self._model
            if model is not None and version <= model.key[0] and ts <= model.key[1]:
                return model
            snap = self.store.read_market()
            model = build_model(snap, snap.cov, self.bars_per_day, self.read_window)
            self._model = model
            return model

    def read_window(self) -> StandardizedWindow:
        """The stored standardized-return window, fetching only the rows added since the last read."""
        with self._window_lock:
            self._window = self.store.read_standardized(self._window)
            return self._window

    def clear(self) -> None:
        """Forget the cached models (after a store error: what was cached may be stale)."""
        with self._lock:
            self._model = None
            self._stressed = None
            self._window = None

    @property
    def current(self) -> MarketModel | None:
        """The cached model, without reading anything (None before the first :meth:`get`)."""
        return self._model

    def stressed(self, model: MarketModel) -> StressedModel:
        """The stored stressed matrix aligned with ``model``'s tickers, read and aligned once per write of it
        and ticker order (not per market version: the matrix changes only when the warm-up or a reload writes
        it, the market every bar).

        Costs one HMGET (the matrix's stamp) when cached. Raises ``StoreEmptyError`` when there is none and
        :class:`~engine.errors.CorruptDataError` when it does not cover the market's tickers.
        """
        stamp = self.store.read_stressed_stamp()
        entry = self._stressed
        if entry is not None and stamp is not None and entry[1] == stamp and entry[2] == model.tickers:
            cached = entry[0]
            if cached.market_key != model.key:
                cached = replace(cached, market_key=model.key)
                self._stressed = (cached, stamp, model.tickers)
            return cached
        version_read, stressed_tickers, stressed = self.store.read_stressed()
        meta = self.store.read_stressed_meta()
        order = reorder(stressed_tickers, model.header.tickers)
        if order is None:
            raise CorruptDataError("the stressed matrix does not cover the market's tickers; re-run `python warmup.py`")
        if stressed_tickers != model.header.tickers:
            stressed = stressed[np.ix_(order, order)]
        stored_bpd = meta.get("bars_per_day")
        scale = 1.0
        if isinstance(stored_bpd, int | float) and stored_bpd > 0 and stored_bpd != self.bars_per_day:
            scale = float(stored_bpd) / float(self.bars_per_day)  # same daily variance, read per the reader's bar
            stressed = stressed * scale
        result = StressedModel(version=version_read, market_key=model.key, cov=stressed, meta=meta, scale=scale)
        self._stressed = (result, stamp, model.tickers)
        return result
