"""The VaR method of a portfolio applied to a market snapshot: one call for the monitor, the gate and the pages.

:func:`risk_model_of` is :meth:`engine.market_model.MarketModel.risk_model` with the builder of
:mod:`logic.var_methods` (the engine cannot import it), cached per (market snapshot, method, horizon).
:func:`subset_risk_model` is the same model restricted to a few tickers (the monitor measures each portfolio on
its held tickers only: ``xᵀΣx`` with zero weights elsewhere is the same number at O(k²), and the FHS scenario
P&L the same sum at O(T·k)).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engine.market_model import MarketModel
from engine.records import VarMethod
from logic.var_methods import RiskModel, risk_model


def risk_model_of(model: MarketModel, method: VarMethod | str, horizon_bars: float) -> RiskModel:
    """The :class:`~logic.var_methods.RiskModel` of ``method`` at ``model``'s snapshot (cached on the model).

    Raises :class:`~engine.errors.StoreEmptyError` when ``fhs`` finds no standardized return in the store.
    """
    built: RiskModel = model.risk_model(method, horizon_bars, risk_model)
    return built


def subset_risk_model(
    model: MarketModel, method: VarMethod | str, index: npt.ArrayLike, horizon_bars: float = 1.0
) -> RiskModel:
    """The model of ``method`` on the tickers at positions ``index`` of ``model`` (exposures of length k).

    The covariance is the sub-matrix, the FHS scenarios the window's columns times today's volatility, the
    Student-t degrees of freedom those fitted to the whole window: the numbers of the full model for a book
    holding only these tickers.
    """
    kind = VarMethod(method)
    idx = np.asarray(index, dtype=np.intp)
    cov = model.cov[np.ix_(idx, idx)]
    inputs = model.method_inputs(kind)
    if kind is VarMethod.FHS:
        inputs = {
            "standardized": inputs["standardized"][:, idx],
            "current_vol": inputs["current_vol"][idx],
            "observed": inputs["observed"][:, idx],
        }
    return risk_model(kind, cov, horizon_bars=horizon_bars, validate=False, **inputs)
