"""Model defaults, one constant per line, each defined here and nowhere else.

The settings (:mod:`engine.settings`) use these as their defaults and the pure math (:mod:`engine.math_logic`)
uses them as keyword defaults, so a value typed in one place cannot drift from the other. Nothing here does I/O.
"""

from __future__ import annotations

EWMA_DECAY = 0.94
"""RiskMetrics λ of the EWMA covariance (J.P. Morgan/Reuters, RiskMetrics Technical Document, 1996)."""

TRADING_DAYS_PER_YEAR = 252
"""Trading days in a year: annualises daily statistics (Sharpe, Sortino, Calmar, volatility)."""

BARS_PER_DAY = 390
"""One-minute bars in a US equity session (6.5 hours): daily figures scale one-bar volatility by its root."""

LIQUIDITY_IMPACT_COEF = 0.1
"""Coefficient of the square-root market-impact law: cost = coef · σ_daily · sqrt(qty / ADV) · price · qty."""

DAILY_VOL_FOR_IMPACT = 0.02
"""Daily volatility assumed by the impact estimate when the caller has none (2%)."""

VAR_CONFIDENCE = 0.95
"""Confidence of the VaR limit unless a portfolio's limits say otherwise."""

REPORTED_CONFIDENCES: tuple[float, float] = (0.95, 0.99)
"""The confidence levels every snapshot reports VaR and CVaR at (``var.var95``, ``var.var99``, ...)."""

BASEL_OBSERVATIONS = 250
"""The Basel backtesting window (Basel Committee, 1996): 250 observations, a trading year of one-day VaR. The
continuous backtest's rolling exceedance count covers this many, and by default it gives a traffic-light zone
only once it holds this many (``model.backtest_zone_min_observations``)."""

STRESS_VOL_MULTIPLIER = 2.0
"""Crisis matrix: every volatility times this."""

STRESS_CORRELATION_FLOOR = 0.6
"""Crisis matrix: every correlation raised to at least this."""
