"""One bar of many backtesters at once: :func:`step_many`, the only implementation of a
:class:`logic.backtest.Backtester` bar (``Backtester.step`` is ``step_many`` of one).

The model updates and the forecasts of backtesters of one shape (tickers, window, methods, confidence) are computed
together with :mod:`logic.backtest_kernels`, the same floats as one at a time, so the monitor (a thousand
portfolios a tick) and ``python -m logic.backtest`` (one) agree exactly; what is per backtester (the closes, the
counts, the open forecasts) stays on the backtester.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from engine import math_logic
from engine.math_logic import BoolArray
from engine.records import Float64Array, VarMethod
from logic import backtest_kernels as kernels

if TYPE_CHECKING:  # logic.backtest imports this module
    from logic.backtest import Backtester, Observation

__all__ = ["BarFigures", "step_many"]

_Item = tuple["Backtester", Float64Array, Float64Array, str, "BoolArray | None"]
"""A backtester, its bar's prices and quantities (checked), the bar's label and which of its tickers had a new price
in the bar (checked; None: every one)."""


@dataclass(frozen=True)
class BarFigures:
    """One book at one bar, what every method's VaR at any horizon is made of (one bar's figures)."""

    sigma: float
    """``sqrt(max(xᵀΣx, 0))``: the one-bar standard deviation of the book's P&L."""
    z: float
    """``Φ⁻¹(c)`` (:func:`logic.backtest_kernels.normal_quantile`)."""
    t_multiplier: float
    """``t_ν⁻¹(c) · sqrt((ν - 2) / ν)`` of this bar's ν."""
    kth: float
    """The FHS scenario P&L at the VaR rank (the k-th smallest)."""

    def var(self, method: VarMethod, horizon_bars: int) -> float:
        """The operations, in their order, of :mod:`logic.var_methods`' ``var`` at ``horizon_bars``."""
        root = math.sqrt(float(horizon_bars))
        if method is VarMethod.NORMAL:
            return self.z * self.sigma * (1.0 * root)  # get_portfolio_var: z · σ · (value · sqrt(h))
        if method is VarMethod.STUDENT_T:
            return self.t_multiplier * (self.sigma * root)  # student_t_var(σ · sqrt(h))
        return root * -self.kth  # FhsModel.var: sqrt(h) · scenario_var


def _group(items: Iterable[_Item], key: Callable[[Backtester], Hashable]) -> dict[Hashable, list[_Item]]:
    groups: dict[Hashable, list[_Item]] = {}
    for item in items:
        groups.setdefault(key(item[0]), []).append(item)
    return groups


def _update_models(items: list[_Item], span: float = 1.0) -> set[int]:
    """The EWMA step of every backtester past its seed (:meth:`Backtester._update_model`) for a bar of ``span``
    bars of variance, batched by shape;
    returns the ids of those updated (their return pushed into the window, with which entries are observations:
    :func:`logic.backtest_kernels.observed_entries`). Every group is computed (on copies) before any backtester
    changes: a return that is not finite raises ValueError with no state changed."""
    moving = [it for it in items if it[0].last_prices is not None and it[0].cov is not None]
    updates = []
    for group in _group(moving, lambda bt: (len(bt.tickers), bt.config.decay)).values():
        covs = kernels.as_stack([bt.cov for bt, *_ in group])  # type: ignore[misc]
        last = kernels.as_stack([bt.last_prices for bt, *_ in group])  # type: ignore[misc]
        prices = kernels.as_stack([p for _, p, *_ in group])
        masks = [it[4] for it in group]
        given = None
        if any(m is not None for m in masks):  # some ticker without a new price (the tick event's)
            given = np.stack([np.ones(len(group[0][0].tickers), dtype=bool) if m is None else m for m in masks])
        entries = kernels.observed_entries(covs, last, prices, given)  # the variances before the update
        ewma = kernels.ewma_observed(last, prices, given)  # a ticker without a new price keeps its variance
        gaps = None  # bars of variance each return spans since its ticker's last new price; None: one each
        if span != 1.0 or any(bt.since.any() for bt, *_ in group):
            gaps = kernels.as_stack([bt.since + span for bt, *_ in group])
        z = kernels.ewma_standardize_and_update(covs, last, prices, group[0][0].config.decay, ewma, gaps)
        full: list[bool] = np.all(entries, axis=1).tolist()
        updates.append((group, covs, z, entries, full))
    done: set[int] = set()
    for group, covs, z, entries, full in updates:
        for i, (bt, *_) in enumerate(group):
            bt.cov = covs[i]  # a C-contiguous view: updated in place by a later single step as well
            bt._push(z[i], None if full[i] else entries[i])
            done.add(id(bt))
    return done


def _forecast_all(items: list[_Item]) -> None:
    """New forecasts of every ready backtester (:meth:`Backtester._forecast`), the window and covariance
    figures of all of them computed together (:mod:`logic.backtest_kernels`), batched by shape."""
    shape = lambda bt: (len(bt.tickers), bt.config.window, bt.config.methods, bt.config.confidence,  # noqa: E731
                        bt.config.dof_bounds)  # fmt: skip
    for group in _group(items, shape).values():
        cfg = group[0][0].config
        x = kernels.as_stack([q * p for _, p, q, *_ in group])
        covs = kernels.as_stack([bt.cov for bt, *_ in group])  # type: ignore[misc]
        methods = set(cfg.methods)
        parametric = methods & {VarMethod.NORMAL, VarMethod.STUDENT_T}
        variances = kernels.quadratic_forms(covs, x) if parametric else [math.nan] * len(group)
        vols = np.sqrt(np.clip(np.diagonal(covs, axis1=1, axis2=2), 0.0, None))
        tail = math_logic.scenario_tail_size(cfg.window, cfg.confidence) if VarMethod.FHS in methods else None
        dofs, kth = kernels.window_figures(
            [bt.window for bt, *_ in group], vols, x,
            dof_bounds=cfg.dof_bounds if VarMethod.STUDENT_T in methods else None, tail=tail,
            observed=[bt._window_mask() for bt, *_ in group],
        )  # fmt: skip
        multipliers = kernels.t_var_multipliers(cfg.confidence, dofs) if dofs is not None else None
        z = kernels.normal_quantile(cfg.confidence) if VarMethod.NORMAL in methods else math.nan
        for i, (bt, p, q, name, _) in enumerate(group):
            sigma = math.sqrt(max(variances[i], 0.0))
            figures = BarFigures(sigma, z, math.nan if multipliers is None else multipliers[i],
                               math.nan if kth is None else kth[i])  # fmt: skip
            bt._forecast(p, q, name, figures)


def step_many(
    items: Sequence[tuple[Backtester, npt.ArrayLike, npt.ArrayLike, str | None]],
    *,
    observed: Sequence[npt.ArrayLike | None] | None = None,
    span: float = 1.0,
) -> list[list[Observation]]:
    """Feed one bar to each of several backtesters: ``(backtester, prices, qty, label)`` as :meth:`Backtester.step`
    takes them, ``observed``, one per item (or None for all), and ``span``, the bar's (one tick event's: the same
    for every book), as ``step`` takes them; returns each one's closed horizons.

    The only implementation of a bar (``step`` is this with one item): the model updates and the forecasts of
    backtesters of one shape are computed together (:mod:`logic.backtest_kernels`, the same floats as one at a
    time), so a batch and a single backtester give the same numbers. Bad input raises ValueError before any
    state changes, of any backtester; a backtester listed twice is refused."""
    if len({id(item[0]) for item in items}) != len(items):
        raise ValueError("a backtester is listed twice")
    span = float(span)
    if not (math.isfinite(span) and span > 0.0):
        raise ValueError(f"span must be a finite number of bars > 0, got {span!r}")
    if observed is not None and len(observed) != len(items):
        raise ValueError(f"observed has {len(observed)} masks for {len(items)} backtesters")
    checked: list[_Item] = []
    for k, (bt, prices, qty, label) in enumerate(items):
        mask = bt._observed_row(None if observed is None else observed[k])
        checked.append((bt, *bt._checked(prices, qty), str(bt.bar + 1) if label is None else str(label), mask))
    updated = _update_models(checked, span)
    closed = [bt._advance(p, name, updated=id(bt) in updated, observed=m, span=span) for bt, p, _, name, m in checked]
    ready = [item for item in checked if item[0].ready]
    for bt, _, q, _, _ in ready:
        if not q.any():  # a flat book: no risk, no forecast, no observation (logic/backtest.py, step 3)
            bt._skip_flat()
    _forecast_all([item for item in ready if item[2].any()])  # each row's floats do not depend on the batch
    return closed
