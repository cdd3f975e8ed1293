"""The continuous VaR backtest's running counts and open forecasts (:mod:`logic.backtest`): per method and track,
the counts behind the Kupiec and Christoffersen tests and the rolling Basel zone, O(1) per observation; and a
forecast waiting for its horizon to close. Plain state with its JSON form; the tests come from
:mod:`engine.math_logic`.

An observation is a forecast of a book that held something. A bar at which the book is flat (no position: every
method's VaR is 0 and so is the P&L) is no observation: counted as one it is a "success" the model did nothing to
earn, and a book flat half the window would show half the exceedances it should, so Kupiec would reject a correct
model (or pass a bad one) and the Basel zone would be too green. Those bars are counted apart (``flat``,
``flat_bars`` in a summary); the tests and the rolling window (the last ``rolling`` *observations*) run on the
observations only, as one consecutive sequence (Christoffersen's transitions skip the flat bars)."""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine import math_logic
from engine.records import Float64Array, VarMethod

# The tests of a summary are functions of a few integer counts, and the portfolios of one tick share most of them
# (the same number of observations, a handful of exceedance counts): cached, the same floats without scipy's
# ~0.1 ms per call on every portfolio and every bar.
_HIT_CHARS = bytes.maketrans(b"\x00\x01", b"01")
"""Hits 0/1 -> the characters of the stored ``recent`` string (a quarter of the JSON of a list of 250 ints)."""
_kupiec_pof = functools.lru_cache(maxsize=4096)(math_logic.kupiec_pof)
_christoffersen = functools.lru_cache(maxsize=4096)(math_logic.christoffersen_independence_counts)
_basel_zone = functools.lru_cache(maxsize=1024)(math_logic.basel_traffic_light)


@dataclass(frozen=True)
class MethodSummary:
    """The backtest of one method on one track."""

    method: VarMethod
    observations: int
    """Forecasts of a book holding something, closed and checked (the tests' sample)."""
    exceedances: int
    rate: float | None
    kupiec_lr: float | None
    kupiec_p: float | None
    christoffersen_lr: float | None
    christoffersen_p: float | None
    rolling_observations: int
    rolling_exceedances: int
    rolling_kupiec_lr: float | None
    rolling_kupiec_p: float | None
    rolling_christoffersen_lr: float | None
    rolling_christoffersen_p: float | None
    """The two tests on the rolling window (the last ``rolling`` observations, the Basel zone's sample), beside the
    ones since the backtest began (``kupiec_*``, ``christoffersen_*``): a model that was wrong a year ago and is
    right now passes these and still fails those."""
    zone: str | None
    """Basel traffic light of the rolling count (:func:`math_logic.basel_traffic_light`); None while the rolling
    window holds fewer than ``zone_min_observations`` (:attr:`logic.backtest.BacktestConfig.zone_minimum`)."""
    flat_bars: int = 0
    """Bars at which a forecast was due on this track but the book was flat: no observation (module docstring)."""

    def to_dict(self) -> dict[str, Any]:
        # spelled out, not dataclasses.asdict (a deep copy): every method of every portfolio, every bar
        return {
            "method": str(self.method),
            "observations": self.observations,
            "exceedances": self.exceedances,
            "rate": self.rate,
            "kupiec_lr": self.kupiec_lr,
            "kupiec_p": self.kupiec_p,
            "christoffersen_lr": self.christoffersen_lr,
            "christoffersen_p": self.christoffersen_p,
            "rolling_observations": self.rolling_observations,
            "rolling_exceedances": self.rolling_exceedances,
            "rolling_kupiec_lr": self.rolling_kupiec_lr,
            "rolling_kupiec_p": self.rolling_kupiec_p,
            "rolling_christoffersen_lr": self.rolling_christoffersen_lr,
            "rolling_christoffersen_p": self.rolling_christoffersen_p,
            "zone": self.zone,
            "flat_bars": self.flat_bars,
        }


@dataclass
class TrackCounts:
    """Running counts of one method on one track; O(1) per observation plus the rolling window of hits."""

    rolling: int
    observations: int = 0
    exceedances: int = 0
    transitions: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    """n00, n01, n10, n11: hit state i followed by j."""
    last_hit: int | None = None
    recent: deque[int] = field(default_factory=deque)
    recent_hits: int = -1
    """sum(recent), kept as hits come and go (-1: not counted yet)."""
    recent_transitions: list[int] | None = None
    """n00, n01, n10, n11 of the consecutive pairs within ``recent``, kept as hits come and go (None: not counted
    yet, counted from ``recent`` when first needed)."""
    flat: int = 0
    """Bars a forecast was due at while the book was flat (:meth:`skip`): not observations. A state stored before
    this count has none (its observations may include such bars: they leave the rolling window in time)."""

    def add(self, hit: bool) -> None:
        h = int(hit)
        if self.recent_hits < 0:
            self.recent_hits = sum(self.recent)
        self.observations += 1
        self.exceedances += h
        if self.last_hit is not None:
            self.transitions[2 * self.last_hit + h] += 1
        self.last_hit = h
        pairs = self._recent_pairs()
        if self.recent:
            pairs[2 * self.recent[-1] + h] += 1
        self.recent.append(h)
        self.recent_hits += h
        if len(self.recent) > self.rolling:
            oldest = self.recent.popleft()
            self.recent_hits -= oldest
            pairs[2 * oldest + self.recent[0]] -= 1

    def _recent_pairs(self) -> list[int]:
        if self.recent_transitions is None:
            pairs = [0, 0, 0, 0]
            hits = list(self.recent)
            for a, b in zip(hits, hits[1:], strict=False):
                pairs[2 * a + b] += 1
            self.recent_transitions = pairs
        return self.recent_transitions

    def skip(self) -> None:
        """A forecast was due but the book was flat: no observation, nothing in the tests or the rolling window;
        the next observation follows the last one in Christoffersen's transitions."""
        self.flat += 1

    def summary(self, method: VarMethod, confidence: float, zone_minimum: int) -> MethodSummary:
        d = self.summary_dict(method, confidence, zone_minimum)
        d["method"] = method
        return MethodSummary(**d)

    def summary_dict(self, method: VarMethod, confidence: float, zone_minimum: int) -> dict[str, Any]:
        """:meth:`summary` as :meth:`MethodSummary.to_dict` gives it, without building the dataclass (the
        monitor's summary of every portfolio, every bar). The zone is given once the rolling window holds
        ``zone_minimum`` observations (>= 1), None before."""
        n, x = self.observations, self.exceedances
        kupiec = _kupiec_pof(x, n, confidence) if n else (None, None)
        chris = _christoffersen(*self.transitions) if n >= 2 else (None, None)
        if self.recent_hits < 0:
            self.recent_hits = sum(self.recent)
        recent_n, recent_x = len(self.recent), self.recent_hits
        rolling_kupiec = _kupiec_pof(recent_x, recent_n, confidence) if recent_n else (None, None)
        rolling_chris = _christoffersen(*self._recent_pairs()) if recent_n >= 2 else (None, None)
        return {
            "method": str(method),
            "observations": n,
            "exceedances": x,
            "rate": x / n if n else None,
            "kupiec_lr": kupiec[0],
            "kupiec_p": kupiec[1],
            "christoffersen_lr": chris[0],
            "christoffersen_p": chris[1],
            "rolling_observations": recent_n,
            "rolling_exceedances": recent_x,
            "rolling_kupiec_lr": rolling_kupiec[0],
            "rolling_kupiec_p": rolling_kupiec[1],
            "rolling_christoffersen_lr": rolling_chris[0],
            "rolling_christoffersen_p": rolling_chris[1],
            "zone": _basel_zone(recent_x, recent_n, confidence=confidence) if recent_n >= zone_minimum else None,
            "flat_bars": self.flat,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "observations": self.observations,
            "exceedances": self.exceedances,
            "transitions": list(self.transitions),
            "last_hit": self.last_hit,
            "recent": bytes(self.recent).translate(_HIT_CHARS).decode(),  # "0110...": a char per hit, oldest first
            "flat": self.flat,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], rolling: int) -> TrackCounts:
        return cls(
            rolling=rolling,
            observations=int(d["observations"]),
            exceedances=int(d["exceedances"]),
            transitions=[int(n) for n in d["transitions"]],
            last_hit=None if d["last_hit"] is None else int(d["last_hit"]),
            recent=deque(int(h) for h in list(d["recent"])[-rolling:]),
            flat=int(d.get("flat", 0)),  # none: stored before the count (same STATE_VERSION, see the field)
        )


@dataclass
class OpenForecast:
    """An open forecast: what was held, at which prices, and each method's VaR."""

    start: str
    end_bar: int
    qty: Float64Array
    prices: Float64Array
    var: dict[VarMethod, float]
    elapsed: float | None = None
    """Bars of variance the bars fed since the forecast spanned (the sum of their tick events' ``span``), which
    the P&L at the close realized; None while each of them spanned one, so that it is the bars fed (derived from
    the bar indices, nothing kept: a state stored before the field reads so too)."""
    shared: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)
    """:meth:`to_dict`, built once for :meth:`logic.backtest.Backtester.store_state` (an open forecast changes
    only its :attr:`elapsed`, which :meth:`elapse` writes into it)."""

    def elapse(self, span: float, fed: int) -> None:
        """One more bar fed, spanning ``span`` bars of variance; ``fed``: the bars fed since the forecast before
        it (what :attr:`elapsed` None stands for)."""
        if self.elapsed is None:
            if span == 1.0:
                return  # still one bar each: nothing kept, the stored bytes as before spans
            self.elapsed = float(fed)
        self.elapsed += span
        if self.shared is not None:  # a new dict (one written may still be read): the arrays' lists shared
            self.shared = {**self.shared, "elapsed": self.elapsed}

    def variance_bars(self, bars: int) -> float:
        """:attr:`elapsed` once ``bars`` bars were fed since the forecast."""
        return float(bars) if self.elapsed is None else self.elapsed

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "start": self.start,
            "end_bar": self.end_bar,
            "qty": self.qty.tolist(),
            "prices": self.prices.tolist(),
            "var": {str(m): v for m, v in self.var.items()},
        }
        if self.elapsed is not None:  # only then: the state of a feed of one-bar spans is the same bytes
            d["elapsed"] = self.elapsed
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OpenForecast:
        elapsed = None if d.get("elapsed") is None else float(d["elapsed"])
        if elapsed is not None and not (np.isfinite(elapsed) and elapsed >= 0.0):
            raise ValueError(f"elapsed must be a finite number of bars >= 0, got {elapsed!r}")
        return cls(
            start=str(d["start"]),
            end_bar=int(d["end_bar"]),
            qty=np.array(d["qty"], dtype=np.float64),
            prices=np.array(d["prices"], dtype=np.float64),
            var={VarMethod(m): float(v) for m, v in d["var"].items()},
            elapsed=elapsed,
        )
