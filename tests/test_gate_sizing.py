"""logic/sizing.py: the bounded search for the largest passing quantity and the closed-form guess it starts from
(pure: no Redis; the gate-level property is in tests/test_gate_properties.py)."""

from __future__ import annotations

import math
from dataclasses import replace
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from engine.records import OrderIntent, TradingState
from engine.settings import Fees, Limits
from logic.sizing import MAX_EVALUATIONS, SizingInputs, guess, largest_passing

HORIZON = 390.0
NO_FEES = Fees(per_share=Decimal(0), bps=Decimal(0), minimum=Decimal(0))


@given(
    threshold=st.integers(0, 1_000_000),
    cap=st.integers(1, 1_000_000),
    start=st.one_of(st.floats(-10, 2e6), st.just(math.inf)),
)
def test_the_search_finds_the_threshold_of_a_monotone_check_from_any_guess_within_the_budget(
    threshold: int, cap: int, start: float
) -> None:
    calls: list[int] = []

    def passes(q: int) -> bool:
        calls.append(q)
        return q <= threshold

    found = largest_passing(passes, start, cap)

    assert found == min(threshold, cap)
    assert len(calls) <= MAX_EVALUATIONS
    assert all(1 <= q <= cap for q in calls)


def test_an_exact_guess_costs_two_checks() -> None:
    calls: list[int] = []

    def passes(q: int) -> bool:
        calls.append(q)
        return q <= 777

    assert largest_passing(passes, 777.4, 10_000) == 777
    assert calls == [777, 778]


def test_the_search_settles_on_a_boundary_when_the_passing_set_is_not_an_interval() -> None:
    def passes(q: int) -> bool:  # passes 1..10 and 20..30
        return q <= 10 or 20 <= q <= 30

    found = largest_passing(passes, 25.0, 1000)

    assert passes(found) and not passes(found + 1)


def one_asset(x: float, price: float, vol: float, var_limit: float, side: int = 1) -> tuple[SizingInputs, Limits]:
    cov = np.array([[vol**2]])
    inputs = SizingInputs(
        ticker="AAA",
        s=side,
        price=price,
        fill_price=Decimal(repr(price)),
        q0=int(x / price),
        x=np.array([x]),
        index=0,
        cov=cov,
        variance=float(x * x * vol**2),
        horizon_bars=HORIZON,
        cash=Decimal(10_000_000),
        equity=10_000_000.0 + x,
        gross=abs(x),
        cash_account=False,
        initial_margin=0.5,
        state=TradingState.ACTIVE,
        intent=OrderIntent.TRADE,
        stress_vol_multiplier=2.0,
    )
    limits = Limits(var_limit=Decimal(repr(var_limit)), max_concentration=1.0, max_order_notional=Decimal(10**9))
    return inputs, limits


@pytest.mark.parametrize("side", [1, -1])
def test_the_var_guess_is_the_root_of_the_quadratic(side: int) -> None:
    # one asset in a margin account: VaR(q) = z sqrt(h) vol |x + s q p|,
    # so VaR(q) = T at |x + s q p| = T / (z sqrt(h) vol)
    x, p, vol, limit = 50_000.0, 100.0, 0.001, 20_000.0
    inputs, limits = one_asset(x, p, vol, limit, side)
    k = float(stats.norm.ppf(0.95)) * math.sqrt(HORIZON) * vol
    expected = (limit / k - x) / p if side == 1 else (limit / k + x) / p

    assert guess(inputs, limits, NO_FEES, daily_loss_hit=False) == pytest.approx(expected, rel=1e-12)


def test_the_guess_never_goes_below_the_shrinking_region_nor_above_the_hard_limits() -> None:
    margin, limits = one_asset(50_000.0, 100.0, 0.01, 1.0, side=-1)  # 500 held, VaR far above a $1 limit
    cash = replace(margin, cash_account=True)
    # selling: VaR falls until the position flips to -500 (VaR(1000) = VaR(0)), so the VaR bound is 1000
    assert guess(margin, limits, NO_FEES, daily_loss_hit=False) == pytest.approx(1000.0, rel=1e-12)
    # daily loss reached: only risk-reducing trades, i.e. selling the 500 held
    assert guess(margin, limits, NO_FEES, daily_loss_hit=True) == 500.0
    assert guess(cash, limits, NO_FEES, daily_loss_hit=False) == 500.0  # a cash account cannot oversell

    small = Limits(var_limit=Decimal(10**9), max_order_qty=120, max_concentration=1.0)
    assert guess(cash, small, NO_FEES, daily_loss_hit=False) == 120.0


def stressed_var(x: np.ndarray, cov: np.ndarray, stressed: np.ndarray, m: float, horizon: float) -> float:
    """The worse of the crisis matrix and of ``m² Σ``, computed here."""
    sigma = max(math.sqrt(x @ stressed @ x), m * math.sqrt(x @ cov @ x))
    return float(stats.norm.ppf(0.95)) * sigma * math.sqrt(horizon)


@pytest.mark.parametrize(("rho", "binding"), [(-0.5, "multiplied"), (0.3, "floored")])
def test_the_stressed_var_guess_ends_on_the_limit_of_the_worse_scenario(rho: float, binding: str) -> None:
    # Arrange: buying A in a book long A and short B (rho -0.5: the floor turns B into a hedge of A, so doubled
    # volatilities at today's correlation bind) or long both (rho 0.3: the floored correlation binds)
    vols, m, p = np.array([0.001, 0.002]), 2.0, 100.0
    cov = np.outer(vols, vols) * np.array([[1.0, rho], [rho, 1.0]])
    corr = max(rho, 0.6)  # build_stressed_covariance's floor, no PSD repair needed for two assets
    stressed = m * m * np.outer(vols, vols) * np.array([[1.0, corr], [corr, 1.0]])
    x = np.array([50_000.0, -25_000.0 if rho < 0 else 25_000.0])
    limit = 3.0 * stressed_var(x, cov, stressed, m, HORIZON)
    inputs, _ = one_asset(x[0], p, vols[0], 1e12)
    inputs = replace(inputs, x=x, cov=cov, variance=float(x @ cov @ x), stressed_cov=stressed, stress_vol_multiplier=m)
    limits = Limits(
        var_limit=Decimal(10**12), max_concentration=1.0, max_order_notional=Decimal(10**12),
        stressed_var_limit=Decimal(repr(limit)),
    )  # fmt: skip

    # Act
    q = guess(inputs, limits, NO_FEES, daily_loss_hit=False)

    # Assert: the book after q shares sits on the limit under the rule, with the expected scenario binding
    after = x + np.array([q * p, 0.0])
    assert stressed_var(after, cov, stressed, m, HORIZON) == pytest.approx(limit, rel=1e-12)
    multiplied = m * math.sqrt(after @ cov @ after) > math.sqrt(after @ stressed @ after)
    assert ("multiplied" if multiplied else "floored") == binding
