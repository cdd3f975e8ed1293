"""logic/analytics.py: traffic lights from the rules, the VaR backtest of a history, the VaR surface."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from engine import math_logic
from engine.settings import AlertRule
from logic import analytics

SNAPSHOT = {
    "var": {"utilization": 0.85, "var95": 17_000.0},
    "drawdown": {"daily": -0.01},
    "concentration": {"largest_share": 0.2},
    "margin": {"level": None},
    "data": {"market_age_seconds": 3.0, "missing_prices": []},
}


def rule(rule_id: str, metric: str, op: str, threshold: float, severity: str, **kw: object) -> AlertRule:
    return AlertRule(id=rule_id, metric=metric, op=op, threshold=threshold, severity=severity, **kw)  # type: ignore[arg-type]


def test_lights_take_the_worst_breach_of_each_area_by_severity() -> None:
    rules = [
        rule("var_warn", "var.utilization", ">=", 0.8, "MEDIUM"),
        rule("var_breach", "var.utilization", ">=", 1.0, "CRITICAL"),
        rule("dd", "drawdown.daily", "<=", -0.03, "HIGH"),
        rule("margin", "margin.level", "<", 150, "HIGH"),
        rule("other_book", "concentration.largest_share", ">", 0.1, "HIGH", portfolios=("hedge",)),
    ]
    lights = {light.area: light for light in analytics.traffic_lights(rules, SNAPSHOT, "main")}
    assert lights["VaR"].level == "amber" and "var.utilization = 0.85 >= 0.8" in lights["VaR"].detail
    assert lights["Drawdown"].level == "green"
    assert lights["Margin & leverage"].level == "grey"  # null margin level: the rule does not apply
    assert lights["Concentration"].level == "grey"  # its only rule is for another portfolio
    assert lights["Market data"].level == "grey"


def test_an_active_high_alert_turns_its_area_red_even_when_the_rule_holds_now() -> None:
    rules = [rule("dd", "drawdown.daily", "<=", -0.03, "HIGH")]
    alerts = [{"status": "ACKNOWLEDGED", "metric": "drawdown.daily", "rule_id": "dd", "severity": "HIGH"}]
    lights = {light.area: light for light in analytics.traffic_lights(rules, SNAPSHOT, "main", alerts)}
    assert lights["Drawdown"].level == "red"
    resolved = [{**alerts[0], "status": "RESOLVED"}]
    lights = {light.area: light for light in analytics.traffic_lights(rules, SNAPSHOT, "main", resolved)}
    assert lights["Drawdown"].level == "green"


def test_breaker_levels_are_the_rules_with_actions_on_the_metric() -> None:
    rules = [
        rule("reduce", "drawdown.daily", "<=", -0.03, "HIGH", actions=("set_state:REDUCING",)),
        rule("halt", "drawdown.daily", "<=", -0.05, "CRITICAL", actions=("set_state:HALTED",)),
        rule("warn", "drawdown.daily", "<=", -0.02, "LOW"),
    ]
    levels = analytics.breaker_levels(rules, "main")
    assert [b["level"] for b in levels] == [-0.03, -0.05]
    assert levels[1]["label"] == "halt: set_state:HALTED"


def test_surface_is_the_closed_form_var_at_every_grid_point() -> None:
    vols = np.array([0.01, 0.02, 0.015])
    cov = math_logic.covariance_from_vols_and_correlation(vols, 0.3)
    prices = np.array([100.0, 50.0, 20.0])
    qty = np.array([10.0, -40.0, 100.0])
    exposures = qty * prices
    grid_a = np.linspace(-20.0, 40.0, 7)
    grid_b = np.linspace(-80.0, 0.0, 5)
    s = analytics.var_surface(
        exposures, prices, cov, 0, 1, grid_a, grid_b, confidence=0.95, horizon_bars=390, tickers=("A", "B")
    )
    z = norm.ppf(0.95) * math.sqrt(390)
    for j, qb in enumerate(grid_b):
        for i, qa in enumerate(grid_a):
            x = np.array([qa * 100.0, qb * 50.0, exposures[2]])
            assert s.var[j, i] == pytest.approx(z * math.sqrt(x @ cov @ x))
    assert s.current == (10.0, -40.0)
    assert s.current_var == pytest.approx(z * math.sqrt(exposures @ cov @ exposures))
    qa, qb, low = s.lowest
    assert low == pytest.approx(s.var.min())
    assert s.var[list(grid_b).index(qb), list(grid_a).index(qa)] == low


def test_surface_refuses_the_same_ticker_twice() -> None:
    with pytest.raises(ValueError, match="two different"):
        analytics.var_surface(
            np.ones(2),
            np.ones(2),
            np.eye(2),
            1,
            1,
            np.ones(3),
            np.ones(3),
            confidence=0.95,
            horizon_bars=1.0,
            tickers=("A", "A"),
        )


def test_qty_grid_spans_twice_the_position_or_a_tenth_of_equity_when_flat() -> None:
    assert analytics.qty_grid(100.0, 10.0, 1e6, 5).tolist() == [-100.0, 0.0, 100.0, 200.0, 300.0]
    flat = analytics.qty_grid(0.0, 50.0, 1e6, 3)
    assert flat.tolist() == [-2000.0, 0.0, 2000.0]  # 10% of 1e6 at $50
