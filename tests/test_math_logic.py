"""Tests of engine.math_logic against closed forms, independent computations and invariants."""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose
from scipy import stats

from engine import math_logic as ml

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

MODULE_PATH = Path(__file__).resolve().parents[1] / "engine" / "math_logic.py"


def random_covariance(n: int, seed: int, scale: float = 1e-4) -> np.ndarray:
    """A well-conditioned, bitwise-symmetric covariance matrix."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n + 3))
    cov = scale * (a @ a.T) / (n + 3)
    return (cov + cov.T) / 2.0


@st.composite
def portfolios(draw: st.DrawFn, min_assets: int = 1, max_assets: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Weights and a PSD covariance (possibly singular: rank may be below N)."""
    n = draw(st.integers(min_assets, max_assets))
    rank = draw(st.integers(1, n + 2))
    unit = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False)
    factors = np.array(draw(st.lists(unit, min_size=n * rank, max_size=n * rank))).reshape(n, rank)
    cov = 1e-4 * factors @ factors.T
    cov = (cov + cov.T) / 2.0
    weights = np.array(draw(st.lists(st.floats(-2.0, 2.0), min_size=n, max_size=n)))
    return weights, cov


# ----------------------------------------------------------------------------------------------------------
# Parametric VaR and CVaR
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_portfolio_var_equals_inverse_normal_z_times_sigma_times_value(confidence: float) -> None:
    weights = np.array([0.5, 0.3, 0.2])
    cov = np.array([[4e-4, 1e-4, 0.0], [1e-4, 9e-4, 2e-4], [0.0, 2e-4, 1e-4]])
    sigma = math.sqrt(weights @ cov @ weights)

    var, port_std = ml.get_portfolio_var(weights, cov, 1_000_000.0, confidence)

    assert port_std == pytest.approx(sigma, rel=1e-14)
    assert var == pytest.approx(stats.norm.ppf(confidence) * sigma * 1_000_000.0, rel=1e-14)
    assert abs(var - 1.65 * sigma * 1_000_000.0) > 1.0  # not the rounded z


def test_portfolio_var_scales_with_square_root_of_horizon() -> None:
    weights, cov = np.array([1.0, -0.5]), random_covariance(2, seed=1)

    one_bar, _ = ml.get_portfolio_var(weights, cov, 10_000.0, 0.99)
    one_day, _ = ml.get_portfolio_var(weights, cov, 10_000.0, 0.99, horizon=390.0)

    assert one_day == pytest.approx(one_bar * math.sqrt(390.0), rel=1e-14)


@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_portfolio_cvar_equals_normal_tail_mean(confidence: float) -> None:
    weights, cov = np.array([0.4, 0.6]), np.array([[1e-4, 3e-5], [3e-5, 4e-4]])
    sigma = math.sqrt(weights @ cov @ weights)
    # E[X | X > z] for a standard normal, by numerical integration: independent of the closed form.
    tail_mean = stats.norm.expect(lambda x: x, lb=stats.norm.ppf(confidence), conditional=True)

    cvar = ml.get_portfolio_cvar(weights, cov, 50_000.0, confidence, horizon=4.0)

    assert cvar == pytest.approx(sigma * tail_mean * 50_000.0 * 2.0, rel=1e-8)
    assert cvar > ml.get_portfolio_var(weights, cov, 50_000.0, confidence, horizon=4.0)[0]


def test_portfolio_var_of_empty_or_riskless_book_is_zero() -> None:
    assert ml.get_portfolio_var(np.zeros(3), random_covariance(3, seed=2), 1e6) == (0.0, 0.0)
    assert ml.get_portfolio_var(np.zeros(0), np.zeros((0, 0)), 1e6) == (0.0, 0.0)


# ----------------------------------------------------------------------------------------------------------
# Marginal, component and incremental VaR
# ----------------------------------------------------------------------------------------------------------


def test_marginal_var_equals_finite_difference_gradient_of_var() -> None:
    weights, cov, value = np.array([0.3, -0.2, 0.5, 0.4]), random_covariance(4, seed=3), 2e6
    step = 1e-6
    gradient = np.empty(4)
    for i in range(4):
        up, down = weights.copy(), weights.copy()
        up[i] += step
        down[i] -= step
        gradient[i] = (
            ml.get_portfolio_var(up, cov, value)[0] - ml.get_portfolio_var(down, cov, value)[0]
        ) / (2 * step)

    marginal = ml.calculate_marginal_var(weights, cov, value)

    assert_allclose(marginal, gradient, rtol=1e-6)


def test_marginal_var_of_riskless_book_is_one_sided_derivative_without_division_by_zero() -> None:
    cov = np.diag([4e-4, 1e-4, 0.0])

    marginal = ml.calculate_marginal_var(np.zeros(3), cov, 1e6, 0.99)
    component = ml.calculate_component_var(np.zeros(3), cov, 1e6, 0.99)

    assert_allclose(marginal, stats.norm.ppf(0.99) * np.array([0.02, 0.01, 0.0]) * 1e6, rtol=1e-14)
    assert_allclose(component, np.zeros(3))


@settings(max_examples=200, deadline=None)
@given(portfolio=portfolios(), confidence=st.sampled_from([0.95, 0.975, 0.99]))
def test_component_var_sums_to_portfolio_var(
    portfolio: tuple[np.ndarray, np.ndarray], confidence: float
) -> None:
    weights, cov = portfolio

    var, _ = ml.get_portfolio_var(weights, cov, 1e6, confidence)
    components = ml.calculate_component_var(weights, cov, 1e6, confidence)

    assert components.sum() == pytest.approx(var, rel=1e-9, abs=1e-9)


def test_component_var_is_weight_times_marginal_var() -> None:
    weights, cov = np.array([0.2, 0.5, -0.3]), random_covariance(3, seed=4)

    component = ml.calculate_component_var(weights, cov, 1e5, horizon=9.0)
    marginal = ml.calculate_marginal_var(weights, cov, 1e5, horizon=9.0)

    assert_allclose(component, weights * marginal, rtol=1e-14)


def full_var_difference(
    weights: np.ndarray, delta: np.ndarray, cov: np.ndarray, value: float, c: float
) -> float:
    return (
        ml.get_portfolio_var(weights + delta, cov, value, c)[0]
        - ml.get_portfolio_var(weights, cov, value, c)[0]
    )


@pytest.mark.parametrize("amount", [0.05, -0.4, 1.5])
def test_incremental_var_of_single_asset_trade_equals_difference_of_full_vars(amount: float) -> None:
    weights, cov = np.array([0.3, 0.2, -0.1, 0.4, 0.2]), random_covariance(5, seed=5)
    delta = np.zeros(5)
    delta[2] = amount

    fresh = ml.calculate_incremental_var(weights, delta, cov, 1e6, 0.99)
    cached = ml.calculate_incremental_var(
        weights, delta, cov, 1e6, 0.99, port_variance=weights @ cov @ weights
    )
    direct = ml.incremental_var_single(2, amount, weights, cov, 1e6, weights @ cov @ weights, 0.99)

    expected = full_var_difference(weights, delta, cov, 1e6, 0.99)
    assert fresh == pytest.approx(expected, rel=1e-9)
    assert cached == pytest.approx(expected, rel=1e-9)
    assert direct == pytest.approx(expected, rel=1e-9)


def test_incremental_var_of_basket_trade_equals_difference_of_full_vars() -> None:
    weights, cov = np.array([0.3, 0.2, -0.1, 0.4, 0.2]), random_covariance(5, seed=6)
    delta = np.array([0.1, 0.0, -0.3, 0.05, 0.0])

    incremental = ml.calculate_incremental_var(weights, delta, cov, 1e6)

    assert incremental == pytest.approx(full_var_difference(weights, delta, cov, 1e6, 0.95), rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(portfolio=portfolios(min_assets=2), index=st.integers(0, 50), amount=st.floats(-1.0, 1.0))
def test_incremental_var_single_agrees_with_general_path(
    portfolio: tuple[np.ndarray, np.ndarray], index: int, amount: float
) -> None:
    weights, cov = portfolio
    i = index % weights.size
    delta = np.zeros(weights.size)
    delta[i] = amount
    other = (i + 1) % weights.size
    basket = delta.copy()
    basket[other] = 1e-300  # a second non-zero entry forces the general path, with no effect on the result

    single = ml.incremental_var_single(i, amount, weights, cov, 1e6, weights @ cov @ weights)
    general = ml.calculate_incremental_var(weights, basket, cov, 1e6)

    assert single == pytest.approx(general, rel=1e-7, abs=1e-7)


def test_incremental_var_single_reads_only_one_row_and_its_diagonal() -> None:
    weights, cov = np.array([0.3, 0.2, -0.1, 0.4]), random_covariance(4, seed=7)
    poisoned = np.full_like(cov, np.nan)
    poisoned[1, :] = cov[1, :]  # only row 1 (which holds Σ_11) is readable: the O(N) path must not need more
    delta = np.array([0.0, 0.25, 0.0, 0.0])

    fast = ml.calculate_incremental_var(
        weights, delta, poisoned, 1e6, port_variance=weights @ cov @ weights, validate=False
    )

    assert fast == pytest.approx(full_var_difference(weights, delta, cov, 1e6, 0.95), rel=1e-9)


def test_incremental_var_of_no_trade_is_zero() -> None:
    assert ml.calculate_incremental_var(np.ones(3), np.zeros(3), random_covariance(3, seed=8), 1e6) == 0.0


def test_incremental_var_of_closing_the_only_position_is_minus_its_var() -> None:
    cov = random_covariance(3, seed=9)
    weights = np.array([0.0, 0.7, 0.0])

    closing = ml.incremental_var_single(1, -0.7, weights, cov, 1e6, weights @ cov @ weights)

    assert closing == pytest.approx(-ml.get_portfolio_var(weights, cov, 1e6)[0], rel=1e-12)


def test_incremental_var_single_treats_tiny_negative_cached_variance_as_zero() -> None:
    cov = np.diag([1e-4, 4e-4])

    result = ml.incremental_var_single(0, 0.5, np.zeros(2), cov, 1e6, -1e-20)

    assert result == pytest.approx(stats.norm.ppf(0.95) * 0.5 * 0.01 * 1e6, rel=1e-14)


@pytest.mark.parametrize("index", [-1, 3, 10])
def test_incremental_var_single_when_index_out_of_range_then_raises(index: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        ml.incremental_var_single(index, 0.1, np.ones(3), np.eye(3), 1e6, 3.0)


def test_incremental_var_single_when_weights_hold_nan_then_raises() -> None:
    with pytest.raises(ValueError, match="not finite"):
        ml.incremental_var_single(0, 0.1, np.array([np.nan, 1.0]), np.eye(2), 1e6, 1.0)


# ----------------------------------------------------------------------------------------------------------
# Liquidity
# ----------------------------------------------------------------------------------------------------------


def test_liquidity_var_is_half_spread_plus_square_root_impact() -> None:
    # 10,000 shares at 50.00 with a 50.02/49.98 market, 1M shares a day, 2% daily vol, coefficient 0.1:
    # half spread 0.02 * 10,000 = 200; impact 0.1 * 0.02 * sqrt(0.01) * 50 * 10,000 = 100.
    cost = ml.calculate_liquidity_var(-10_000, 50.0, 49.98, 50.02, 1_000_000)

    assert cost == pytest.approx(300.0, rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bid": 10.1, "ask": 10.0}, "bid"),
        ({"avg_vol": 0.0}, "avg_vol"),
        ({"price": 0.0}, "price"),
        ({"quantity": math.nan}, "quantity"),
        ({"daily_vol": -0.1}, "daily_vol"),
    ],
)
def test_liquidity_var_when_inputs_invalid_then_raises(kwargs: dict[str, float], message: str) -> None:
    arguments = {"quantity": 100.0, "price": 10.0, "bid": 9.99, "ask": 10.01, "avg_vol": 1e6} | kwargs

    with pytest.raises(ValueError, match=message):
        ml.calculate_liquidity_var(**arguments)


# ----------------------------------------------------------------------------------------------------------
# EWMA covariance
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["C", "F"])
def test_ewma_update_equals_riskmetrics_formula_in_place(order: Literal["C", "F"]) -> None:
    start = random_covariance(6, seed=10)
    cov = np.array(start, order=order)
    returns = np.random.default_rng(10).standard_normal(6) * 0.01
    expected = 0.94 * start + 0.06 * np.outer(returns, returns)

    result = ml.update_covariance_ewma(cov, returns, 0.94)

    assert result is cov
    assert_allclose(cov, expected, rtol=1e-13, atol=1e-15 * np.abs(expected).max())
    assert np.array_equal(cov, cov.T)


def test_ewma_update_stays_bitwise_symmetric_for_every_size() -> None:
    # BLAS kernels may round differently in their vector body and scalar tail: cover every tail length.
    rng = np.random.default_rng(11)
    for n in [*range(1, 70), 127, 128, 129, 255, 257, 499, 500, 501]:
        cov = random_covariance(n, seed=n)
        for _ in range(3):
            ml.update_covariance_ewma(cov, rng.standard_normal(n) * 0.01, 0.94, validate=False)
        assert np.array_equal(cov, cov.T), f"asymmetric at N={n}"


def test_ewma_update_stays_bitwise_symmetric_and_psd_over_ten_thousand_updates() -> None:
    rng = np.random.default_rng(12)
    n = 17
    cov = random_covariance(n, seed=12)
    reference = cov.copy()
    vols = rng.uniform(0.001, 0.05, n)

    for step in range(10_000):
        returns = vols * rng.standard_t(4, n)  # fat tails, wide dynamic range
        ml.update_covariance_ewma(cov, returns, 0.94, validate=False)
        reference = 0.94 * reference + 0.06 * np.outer(returns, returns)
        assert np.array_equal(cov, cov.T)
        if step % 500 == 0:
            assert np.linalg.eigvalsh(cov).min() >= -1e-12 * np.trace(cov)

    assert np.linalg.eigvalsh(cov).min() >= -1e-12 * np.trace(cov)
    assert_allclose(cov, reference, rtol=1e-10, atol=1e-14 * np.abs(reference).max())


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 40),
    decay=st.floats(0.5, 0.999),
    seed=st.integers(0, 2**32 - 1),
    magnitude=st.sampled_from([1e-6, 1e-3, 1.0, 1e3]),
)
def test_ewma_update_property_symmetric_psd_and_matches_outer(
    n: int, decay: float, seed: int, magnitude: float
) -> None:
    rng = np.random.default_rng(seed)
    cov = random_covariance(n, seed=seed % 1000, scale=magnitude**2)
    start = cov.copy()
    returns = rng.standard_normal(n) * magnitude

    ml.update_covariance_ewma(cov, returns, decay)

    assert np.array_equal(cov, cov.T)
    expected = decay * start + (1 - decay) * np.outer(returns, returns)
    assert_allclose(cov, expected, rtol=1e-12, atol=1e-14 * np.abs(expected).max())
    assert np.linalg.eigvalsh(cov).min() >= -1e-12 * np.trace(cov)


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, -0.2, math.nan])
def test_ewma_update_when_decay_outside_open_unit_interval_then_raises(decay: float) -> None:
    with pytest.raises(ValueError, match="decay"):
        ml.update_covariance_ewma(np.eye(2), np.zeros(2), decay)


def test_ewma_update_when_returns_hold_nan_then_raises_and_leaves_matrix_unchanged() -> None:
    cov = random_covariance(3, seed=13)
    before = cov.copy()

    with pytest.raises(ValueError, match="returns"):
        ml.update_covariance_ewma(cov, np.array([0.01, np.nan, 0.0]), validate=False)

    assert np.array_equal(cov, before)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.array([[1.0, 2.0], [2.0, 1.0]]), "positive semi-definite"),
        (np.array([[1.0, 0.5], [0.4, 1.0]]), "symmetric"),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), "NaN"),
    ],
)
def test_ewma_update_when_matrix_invalid_then_raises_and_leaves_it_unchanged(
    matrix: np.ndarray, message: str
) -> None:
    before = matrix.copy()

    with pytest.raises(ValueError, match=message):
        ml.update_covariance_ewma(matrix, np.array([0.01, 0.02]))

    assert np.array_equal(matrix, before, equal_nan=True)


def test_ewma_update_without_validation_skips_psd_check_but_not_shape_check() -> None:
    indefinite = np.array([[1.0, 2.0], [2.0, 1.0]])

    ml.update_covariance_ewma(indefinite, np.array([0.1, 0.1]), 0.5, validate=False)

    assert_allclose(indefinite, [[0.505, 1.005], [1.005, 0.505]])
    with pytest.raises(ValueError, match="length"):
        ml.update_covariance_ewma(indefinite, np.zeros(3), validate=False)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.eye(4)[::2, ::2], "contiguous"),
        (np.eye(2, dtype=np.float32), "float64"),
        ([[1.0, 0.0], [0.0, 1.0]], "float64"),
        (np.zeros((2, 3)), "square"),
    ],
)
def test_ewma_update_when_matrix_cannot_be_updated_in_place_then_raises(matrix: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ml.update_covariance_ewma(matrix, np.zeros(2), validate=False)  # type: ignore[arg-type]


_BLAS_KERNELS = ("dgemm", "dgemm_beta")
"""Kernels whose rounding is the BLAS build's: OpenBLAS on a CPU with fused multiply-add may compute
``β·c + s_i s_j`` with one rounding instead of two (dgemm_beta does on AMD EPYC), and then must never be chosen."""


@pytest.mark.parametrize("kernel", sorted(ml.EWMA_KERNELS))
@pytest.mark.parametrize("order", ["C", "F"])
def test_every_ewma_kernel_gives_the_reference_bits_or_is_never_chosen_and_follows_the_riskmetrics_formula(
    kernel: str, order: Literal["C", "F"]
) -> None:
    # every tail length of the vector kernels, and sizes around the blocked kernel's block
    for n in [1, 2, 3, 7, 8, 9, 31, 33, 63, 65, 127, 129, 257, 300, 513]:
        start = np.array(random_covariance(n, seed=n), order=order)
        returns = np.random.default_rng(n).standard_normal(n) * 0.01
        reference = start.copy()
        cov = start.copy()

        ml.update_covariance_ewma(reference, returns, 0.94, kernel=ml.EWMA_REFERENCE_KERNEL)
        result = ml.update_covariance_ewma(cov, returns, 0.94, kernel=kernel)

        assert result is cov
        if not np.array_equal(cov, reference):  # this machine's BLAS rounds otherwise: the calibration excludes it
            assert kernel in _BLAS_KERNELS, f"{kernel} differs from the reference at N={n}"
            calibration = ml.calibrate_ewma_kernel(n, rounds=1)
            assert kernel in calibration.excluded and calibration.chosen != kernel, f"{kernel} chosen at N={n}"
        assert np.array_equal(cov, cov.T)
        baseline = start * 0.94
        baseline += (1 - 0.94) * np.outer(returns, returns)  # the plain numpy update, independently
        assert_allclose(cov, baseline, rtol=1e-12, atol=1e-15 * np.abs(baseline).max())


def test_ewma_default_kernel_is_the_calibrated_one_and_gives_the_reference_bits() -> None:
    n = 40
    cov = random_covariance(n, seed=40)
    reference = cov.copy()
    returns = np.random.default_rng(40).standard_normal(n) * 0.01

    ml.update_covariance_ewma(cov, returns, 0.94)
    ml.update_covariance_ewma(reference, returns, 0.94, kernel=ml.EWMA_REFERENCE_KERNEL)

    calibration = ml.ewma_kernel_calibration(n)
    assert calibration is ml.ewma_kernel_calibration(n)  # measured once per size and process
    assert calibration.chosen in ml.EWMA_KERNELS and calibration.chosen in calibration.seconds
    assert calibration.seconds[calibration.chosen] == min(calibration.seconds.values())
    assert np.array_equal(cov, reference)


class FakeTimer:
    """A clock the fake kernels advance by their own cost, so a calibration's outcome is known in advance."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def kernel(self, cost: float, *, wrong: bool = False) -> ml.EwmaKernel:
        def run(cov: np.ndarray, s: np.ndarray, lam: float) -> None:
            ml.EWMA_KERNELS[ml.EWMA_REFERENCE_KERNEL](cov, s, lam)
            if wrong:
                cov.flat[0] = np.nextafter(cov.flat[0], np.inf)  # one ulp off
            self.now += cost

        return run


def test_ewma_calibration_picks_the_fastest_kernel() -> None:
    timer = FakeTimer()
    kernels = {"numpy": timer.kernel(3.0), "fast": timer.kernel(1.0), "slow": timer.kernel(5.0)}

    found = ml.calibrate_ewma_kernel(10, kernels=kernels, timer=timer, rounds=2)

    assert found.chosen == "fast"
    assert found.seconds == {"numpy": 3.0, "fast": 1.0, "slow": 5.0}
    assert found.excluded == ()


def test_ewma_calibration_never_picks_a_kernel_that_changes_one_bit() -> None:
    timer = FakeTimer()
    kernels = {"numpy": timer.kernel(3.0), "fast_but_off": timer.kernel(1.0, wrong=True)}

    found = ml.calibrate_ewma_kernel(10, kernels=kernels, timer=timer, rounds=2)

    assert found.chosen == "numpy"
    assert found.excluded == ("fast_but_off",)
    assert "fast_but_off" not in found.seconds


def test_ewma_calibration_on_a_tie_keeps_the_reference_kernel() -> None:
    timer = FakeTimer()
    kernels = {"a_other": timer.kernel(2.0), "numpy": timer.kernel(2.0)}

    assert ml.calibrate_ewma_kernel(5, kernels=kernels, timer=timer).chosen == "numpy"


def test_ewma_calibration_without_the_reference_kernel_raises() -> None:
    with pytest.raises(ValueError, match="reference kernel"):
        ml.calibrate_ewma_kernel(5, kernels={"dgemm": ml.EWMA_KERNELS["dgemm"]})


def test_pinned_ewma_kernel_is_used_for_every_size_until_unpinned() -> None:
    try:
        ml.pin_ewma_kernel("numpy_blocked")
        pinned = ml.ewma_kernel_calibration(123)
        assert (pinned.chosen, pinned.pinned) == ("numpy_blocked", True)
    finally:
        ml.pin_ewma_kernel(None)
    assert not ml.ewma_kernel_calibration(123).pinned


def test_unknown_ewma_kernel_name_raises_and_leaves_matrix_unchanged() -> None:
    cov = random_covariance(3, seed=3)
    before = cov.copy()

    with pytest.raises(ValueError, match="unknown EWMA kernel"):
        ml.update_covariance_ewma(cov, np.zeros(3), kernel="dger")
    with pytest.raises(ValueError, match="unknown EWMA kernel"):
        ml.pin_ewma_kernel("dger")

    assert np.array_equal(cov, before)
    assert not ml.ewma_kernel_calibration(3).pinned


def test_ewma_from_returns_seeds_with_zero_mean_second_moment_then_recurses() -> None:
    history = np.random.default_rng(14).standard_normal((50, 4)) * 0.01
    expected = history[:30].T @ history[:30] / 30
    for row in history[30:]:
        expected = 0.9 * expected + 0.1 * np.outer(row, row)

    cov = ml.ewma_covariance_from_returns(history, 0.9)

    assert_allclose(cov, expected, rtol=1e-12)
    assert np.array_equal(cov, cov.T)
    assert cov.flags.c_contiguous


def test_ewma_from_returns_with_initial_applies_every_row_and_leaves_initial_unchanged() -> None:
    history = np.random.default_rng(15).standard_normal((5, 3)) * 0.01
    initial = random_covariance(3, seed=15)
    before = initial.copy()
    expected = initial.copy()
    for row in history:
        expected = 0.94 * expected + 0.06 * np.outer(row, row)

    cov = ml.ewma_covariance_from_returns(history, initial=initial)

    assert_allclose(cov, expected, rtol=1e-12)
    assert np.array_equal(initial, before)


def test_ewma_from_returns_when_history_empty_and_no_initial_then_raises() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        ml.ewma_covariance_from_returns(np.zeros((0, 3)))


# ----------------------------------------------------------------------------------------------------------
# Returns, correlation, stress
# ----------------------------------------------------------------------------------------------------------


def test_log_returns_are_log_price_ratios() -> None:
    assert_allclose(ml.log_returns([100.0, 50.0], [110.0, 45.0]), [math.log(1.1), math.log(0.9)], rtol=1e-15)


@pytest.mark.parametrize("prices", [[100.0, 0.0], [100.0, -1.0], [100.0, math.inf], [100.0, math.nan]])
def test_log_returns_when_price_not_positive_finite_then_raises(prices: list[float]) -> None:
    with pytest.raises(ValueError, match="prices"):
        ml.log_returns([100.0, 50.0], prices)


def test_correlation_from_covariance_has_unit_diagonal_and_zero_for_constant_assets() -> None:
    cov = np.array([[4.0, 2.0, 0.0], [2.0, 9.0, 0.0], [0.0, 0.0, 0.0]])

    corr = ml.correlation_from_covariance(cov)

    assert_allclose(corr, [[1.0, 2.0 / 6.0, 0.0], [2.0 / 6.0, 1.0, 0.0], [0.0, 0.0, 1.0]], rtol=1e-15)
    assert np.array_equal(np.diagonal(corr), np.ones(3))
    assert np.array_equal(corr, corr.T)


def test_covariance_from_vols_and_constant_correlation() -> None:
    cov = ml.covariance_from_vols_and_correlation([0.1, 0.2, 0.3], 0.5)

    expected = np.array([[0.01, 0.01, 0.015], [0.01, 0.04, 0.03], [0.015, 0.03, 0.09]])
    assert_allclose(cov, expected, rtol=1e-14)


def test_covariance_from_vols_and_correlation_matrix_round_trips() -> None:
    cov = random_covariance(5, seed=16)
    vols = np.sqrt(np.diagonal(cov))

    rebuilt = ml.covariance_from_vols_and_correlation(vols, ml.correlation_from_covariance(cov))

    assert_allclose(rebuilt, cov, rtol=1e-13)
    assert np.array_equal(rebuilt, rebuilt.T)


def test_covariance_from_vols_when_constant_correlation_not_psd_then_raises() -> None:
    with pytest.raises(ValueError, match="positive semi-definite"):
        ml.covariance_from_vols_and_correlation(np.ones(3), -0.6)  # below -1/(N-1)


def assert_stressed(stressed: np.ndarray, cov: np.ndarray, multiplier: float, floor: float) -> None:
    assert np.array_equal(stressed, stressed.T)
    assert np.linalg.eigvalsh(stressed).min() >= -1e-12 * np.trace(stressed)
    assert_allclose(np.sqrt(np.diagonal(stressed)), multiplier * np.sqrt(np.diagonal(cov)), rtol=1e-12)
    corr = ml.correlation_from_covariance(stressed, validate=False)
    off_diagonal = corr[~np.eye(len(corr), dtype=bool)]
    assert (off_diagonal >= floor - 1e-12).all()


def test_stressed_covariance_raises_correlations_to_floor_and_multiplies_vols() -> None:
    cov = np.array([[1e-4, -5e-5], [-5e-5, 4e-4]])  # correlation -0.25

    stressed = ml.build_stressed_covariance(cov, vol_multiplier=3.0, correlation_floor=0.6)

    assert_allclose(stressed, [[9e-4, 0.6 * 0.03 * 0.06], [0.6 * 0.03 * 0.06, 36e-4]], rtol=1e-14)
    assert_stressed(stressed, cov, 3.0, 0.6)


def test_stressed_covariance_when_floored_correlation_is_not_psd_then_shrinks_it_psd_above_floor() -> None:
    corr = np.array([[1, 0.39, 0.9, 0.59], [0.39, 1, 0.57, 0.93], [0.9, 0.57, 1, 0.8], [0.59, 0.93, 0.8, 1]])
    assert np.linalg.eigvalsh(corr).min() > 0.0
    assert np.linalg.eigvalsh(np.maximum(corr, 0.6)).min() < -0.03  # the plain floor breaks PSD
    cov = ml.covariance_from_vols_and_correlation([0.01, 0.02, 0.015, 0.03], corr)

    stressed = ml.build_stressed_covariance(cov, 2.0, 0.6)

    assert_stressed(stressed, cov, 2.0, 0.6)


@settings(max_examples=100, deadline=None)
@given(
    portfolio=portfolios(min_assets=2),
    multiplier=st.floats(0.5, 4.0),
    floor=st.floats(-1.0, 1.0),
)
def test_stressed_covariance_property_psd_symmetric_with_correlations_above_floor(
    portfolio: tuple[np.ndarray, np.ndarray], multiplier: float, floor: float
) -> None:
    _, cov = portfolio
    cov = cov + np.diag(np.full(len(cov), 1e-6))  # every asset has variance, so every correlation is defined

    stressed = ml.build_stressed_covariance(cov, multiplier, floor)

    assert_stressed(stressed, cov, multiplier, floor)


def test_stressed_var_is_parametric_var_under_stressed_matrix() -> None:
    weights, cov = np.array([0.5, 0.5]), np.array([[1e-4, 0.0], [0.0, 1e-4]])
    stressed = ml.build_stressed_covariance(cov, 2.0, 0.6)
    # vols 0.02 each, correlation 0.6: σ² = 0.25·4e-4·2 + 2·0.25·0.6·4e-4 (above m²·σ² = 4·0.5e-4)
    sigma = math.sqrt(0.25 * 4e-4 * 2 + 2 * 0.25 * 0.6 * 4e-4)

    var = ml.get_stressed_var(weights, stressed, 1e6, cov=cov, vol_multiplier=2.0)

    assert var == pytest.approx(stats.norm.ppf(0.99) * sigma * 1e6)


# A two-asset book, one bar: vols 0.01 and 0.02, one million long of the first and half a million short of the
# second, so each leg carries 1e4 dollars of one-bar volatility (u = 1e4, v = -1e4 below).
TWO_VOLS = np.array([0.01, 0.02])
LONG_SHORT = np.array([1e6, -5e5])
Z99 = float(stats.norm.ppf(0.99))


def test_stressed_var_of_a_long_short_book_with_negative_correlation_is_the_multiplied_normal_var() -> None:
    # Arrange: correlation -0.8, so the short leg adds risk: e'Σe = u² + v² + 2·0.8·u·|v| = 3.6e8
    cov = ml.covariance_from_vols_and_correlation(TWO_VOLS, -0.8)
    stressed = ml.build_stressed_covariance(cov, 2.0, 0.6)
    # the floor lifts the correlation to +0.6 and the legs now offset: e'Σˢe = 4·(u² + v² - 2·0.6·u·|v|) = 3.2e8
    var = Z99 * math.sqrt(3.6e8)
    floored_only, _ = ml.get_portfolio_var(LONG_SHORT, stressed, 1.0, 0.99)
    assert floored_only == pytest.approx(Z99 * math.sqrt(3.2e8), rel=1e-12)
    assert floored_only < var  # what the stressed VaR was before: below the ordinary VaR

    # Act
    stressed_var = ml.get_stressed_var(LONG_SHORT, stressed, 1.0, 0.99, cov=cov, vol_multiplier=2.0)

    # Assert: today's correlation at doubled volatilities, z·m·sqrt(e'Σe)
    assert ml.get_portfolio_var(LONG_SHORT, cov, 1.0, 0.99)[0] == pytest.approx(var, rel=1e-12)
    assert stressed_var == pytest.approx(Z99 * 2.0 * math.sqrt(3.6e8), rel=1e-12)
    assert stressed_var >= var


def test_stressed_var_of_a_long_only_book_keeps_the_floored_correlation_when_it_is_worse() -> None:
    # Arrange: correlation 0.3, both long: e'Σe = u² + v² + 2·0.3·u·v = 2.6e8, so m²·e'Σe = 10.4e8; the floor
    # gives e'Σˢe = 4·(u² + v² + 2·0.6·u·v) = 12.8e8, the worse one
    book = np.abs(LONG_SHORT)
    cov = ml.covariance_from_vols_and_correlation(TWO_VOLS, 0.3)
    stressed = ml.build_stressed_covariance(cov, 2.0, 0.6)

    # Act
    stressed_var = ml.get_stressed_var(book, stressed, 1.0, 0.99, cov=cov, vol_multiplier=2.0)

    # Assert: unchanged from the crisis matrix alone, the closed form with the floored correlation
    assert stressed_var == pytest.approx(Z99 * math.sqrt(12.8e8), rel=1e-12)
    assert stressed_var == ml.get_portfolio_var(book, stressed, 1.0, 0.99)[0]


def test_stressed_var_when_the_correlation_is_at_the_floor_both_scenarios_give_the_same_value() -> None:
    # Arrange: vols 0.5 and 0.25, correlation 0.5 = the floor, all exact in binary: the crisis matrix is exactly
    # m²Σ, so the two scenarios meet; e = (3, -1): e'Σe = 9·0.25 + 0.0625 - 2·3·0.5·0.5·0.25 = 1.9375
    cov = ml.covariance_from_vols_and_correlation([0.5, 0.25], 0.5)
    stressed = ml.build_stressed_covariance(cov, 2.0, 0.5)
    assert np.array_equal(stressed, 4.0 * cov)
    book = np.array([3.0, -1.0])

    # Act
    stressed_var = ml.get_stressed_var(book, stressed, 1.0, 0.99, cov=cov, vol_multiplier=2.0)

    # Assert: the common value z·m·sqrt(e'Σe) = z·sqrt(e'Σˢe)
    assert stressed_var == Z99 * 2.0 * math.sqrt(1.9375)
    assert stressed_var == ml.get_portfolio_var(book, stressed, 1.0, 0.99)[0]
    assert ml.stressed_portfolio_sigma(2.0 * math.sqrt(1.9375), math.sqrt(1.9375), 2.0) == 2.0 * math.sqrt(1.9375)


def test_stressed_portfolio_sigma_takes_the_worse_scenario_of_each_book() -> None:
    floored = np.array([3.0, 1.0, 2.0, math.nan])
    sigma = np.array([1.0, 1.0, 1.0, 1.0])

    worse = ml.stressed_portfolio_sigma(floored, sigma, 2.0)

    assert_allclose(worse[:3], [3.0, 2.0, 2.0], rtol=0, atol=0)
    assert math.isnan(worse[3])  # a figure that is not finite stays so (the monitor hands such a book on)
    assert ml.stressed_portfolio_sigma(1.0, 1.0, 2.0) == 2.0
    with pytest.raises(ValueError, match="vol_multiplier"):
        ml.stressed_portfolio_sigma(1.0, 1.0, 0.0)


@settings(max_examples=100, deadline=None)
@given(
    portfolio=portfolios(min_assets=2),
    multiplier=st.floats(1.0, 4.0),
    floor=st.floats(-0.9, 0.99),
)
def test_stressed_var_property_never_below_the_multiplied_var_nor_the_crisis_matrix_var(
    portfolio: tuple[np.ndarray, np.ndarray], multiplier: float, floor: float
) -> None:
    weights, cov = portfolio
    stressed = ml.build_stressed_covariance(cov, multiplier, floor)

    stressed_var = ml.get_stressed_var(weights, stressed, 1e6, cov=cov, vol_multiplier=multiplier)

    var, _ = ml.get_portfolio_var(weights, cov, 1e6, 0.99)
    floored, _ = ml.get_portfolio_var(weights, stressed, 1e6, 0.99)
    assert stressed_var == pytest.approx(max(floored, multiplier * var), rel=1e-12, abs=1e-9)
    assert stressed_var >= multiplier * var * (1 - 1e-12) >= var * (1 - 1e-12)


# ----------------------------------------------------------------------------------------------------------
# Historical and Monte Carlo VaR
# ----------------------------------------------------------------------------------------------------------


def test_historical_var_and_cvar_follow_documented_quantile_convention() -> None:
    returns = -np.arange(1, 101) / 1000.0  # losses 0.001 .. 0.100 in steps of 0.001

    var = ml.get_historical_var(returns, 1000.0, 0.95)
    cvar = ml.get_historical_cvar(returns, 1000.0, 0.95)

    # Linear interpolation: position 0.95·99 = 94.05 between the 95th (95) and 96th (96) dollar losses.
    assert var == pytest.approx(95.05, rel=1e-12)
    # Losses >= 95.05 are 96..100 dollars.
    assert cvar == pytest.approx(98.0, rel=1e-12)


def test_historical_var_converges_to_parametric_on_large_normal_sample() -> None:
    sample = np.random.default_rng(17).normal(0.0, 0.01, 400_000)
    z = stats.norm.ppf(0.99)

    assert ml.get_historical_var(sample, 1e6, 0.99) == pytest.approx(z * 0.01 * 1e6, rel=0.02)
    expected_cvar = 0.01 * stats.norm.pdf(z) / (1 - 0.99) * 1e6
    assert ml.get_historical_cvar(sample, 1e6, 0.99) == pytest.approx(expected_cvar, rel=0.02)


def test_monte_carlo_var_and_cvar_converge_to_parametric() -> None:
    weights, cov = np.array([0.4, -0.2, 0.5, 0.3]), random_covariance(4, seed=18)

    var, cvar = ml.get_monte_carlo_var(weights, cov, 1e6, 0.99, horizon=4.0, n_sims=400_000, seed=18)

    assert var == pytest.approx(ml.get_portfolio_var(weights, cov, 1e6, 0.99, 4.0)[0], rel=0.02)
    assert cvar == pytest.approx(ml.get_portfolio_cvar(weights, cov, 1e6, 0.99, 4.0), rel=0.02)


def test_monte_carlo_var_is_reproducible_and_handles_singular_covariance() -> None:
    factor = np.array([[0.01], [0.02], [-0.01]])
    singular = factor @ factor.T  # rank one: Cholesky fails, the eigen-factor is used
    weights = np.array([1.0, 0.5, 0.2])

    first = ml.get_monte_carlo_var(weights, singular, 1e4, n_sims=200_000, seed=19)
    second = ml.get_monte_carlo_var(weights, singular, 1e4, n_sims=200_000, seed=19)

    assert first == second
    assert first[0] == pytest.approx(ml.get_portfolio_var(weights, singular, 1e4)[0], rel=0.02)


# ----------------------------------------------------------------------------------------------------------
# Concentration, Kelly, drawdowns, performance
# ----------------------------------------------------------------------------------------------------------


def test_hhi_and_largest_share_use_gross_exposure_shares() -> None:
    weights = [0.5, -0.3, 0.2]  # gross 1.0

    assert ml.hhi_concentration(weights) == pytest.approx(0.25 + 0.09 + 0.04)
    assert ml.largest_share(weights) == pytest.approx(0.5)
    assert ml.hhi_concentration([0.25] * 4) == pytest.approx(0.25)


def test_hhi_and_largest_share_of_empty_or_zero_book_are_zero() -> None:
    assert ml.hhi_concentration([]) == 0.0
    assert ml.hhi_concentration([0.0, 0.0]) == 0.0
    assert ml.largest_share([]) == 0.0
    assert ml.largest_share([0.0]) == 0.0


def test_kelly_fraction_is_mean_over_variance() -> None:
    assert ml.kelly_fraction(0.05, 0.04) == pytest.approx(1.25)
    with pytest.raises(ValueError, match="variance"):
        ml.kelly_fraction(0.05, 0.0)


def test_drawdown_series_and_current_drawdown() -> None:
    equity = [100.0, 110.0, 99.0, 121.0, 108.9]

    assert_allclose(ml.drawdown_series(equity), [0.0, 0.0, -0.1, 0.0, -0.1], atol=1e-15)
    assert ml.current_drawdown(equity) == pytest.approx(-0.1)
    assert ml.current_drawdown([]) == 0.0


def test_period_drawdown_measures_from_period_peak_including_opening_equity() -> None:
    equity = [100.0, 120.0, 115.0, 110.0, 112.0, 99.0]
    days = [1, 1, 1, 2, 2, 2]  # day 2 opens at 115 (day 1's close), peaks at 115, ends at 99

    assert ml.period_drawdown(equity, days) == pytest.approx(99.0 / 115.0 - 1.0)
    assert ml.period_drawdown([100.0, 90.0, 95.0], [7, 7, 7]) == pytest.approx(95.0 / 100.0 - 1.0)
    assert ml.period_drawdown([100.0, 90.0, 95.0], [6, 7, 7]) == pytest.approx(95.0 / 100.0 - 1.0)
    assert ml.period_drawdown([], []) == 0.0


def test_period_drawdown_when_lengths_differ_then_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        ml.period_drawdown([100.0, 101.0], [1])


SERIES = np.array([0.01, -0.02, 0.015, -0.005, 0.02])


def test_sharpe_ratio_matches_hand_computation() -> None:
    mean = (0.01 - 0.02 + 0.015 - 0.005 + 0.02) / 5  # 0.004
    deviations = [0.006, -0.024, 0.011, -0.009, 0.016]
    std = math.sqrt(sum(d * d for d in deviations) / 5)  # population

    assert ml.sharpe_ratio(SERIES) == pytest.approx(mean / std * math.sqrt(252), rel=1e-12)
    # A per-period risk-free rate lowers the mean excess return and leaves the deviations unchanged.
    assert ml.sharpe_ratio(SERIES, 12, risk_free=0.001) == pytest.approx(
        0.003 / std * math.sqrt(12), rel=1e-12
    )


def test_sortino_ratio_matches_hand_computation() -> None:
    downside = math.sqrt((0.02**2 + 0.005**2) / 5)

    assert ml.sortino_ratio(SERIES) == pytest.approx(0.004 / downside * math.sqrt(252), rel=1e-12)
    # Required return 0.01: shortfalls 0, -0.03, 0, -0.015, 0.
    assert ml.sortino_ratio(SERIES, 252, 0.01) == pytest.approx(
        -0.006 / math.sqrt((0.03**2 + 0.015**2) / 5) * math.sqrt(252), rel=1e-12
    )


def test_max_drawdown_and_calmar_match_hand_computation() -> None:
    # Equity 1, 1.01, 0.9898, 1.004647, 0.99962..., 1.01961...: the peak 1.01 holds until the last day and the
    # deepest point below it is 0.9898, a 2% drawdown (the later dips are 0.53% and 1.03%).
    final = 1.01 * 0.98 * 1.015 * 0.995 * 1.02
    drawdown = 0.98 - 1.0
    annual = final ** (252 / 5) - 1.0

    assert ml.max_drawdown(SERIES) == pytest.approx(drawdown, rel=1e-12)
    assert ml.calmar_ratio(SERIES) == pytest.approx(annual / 0.02, rel=1e-10)


def test_max_drawdown_counts_a_first_period_loss_from_initial_equity() -> None:
    assert ml.max_drawdown([-0.1, 0.05]) == pytest.approx(-0.1)
    assert ml.max_drawdown([]) == 0.0


def test_ratios_of_constant_or_lossless_returns_are_infinite_or_nan_without_warnings() -> None:
    assert ml.sharpe_ratio([0.01] * 7) == math.inf
    assert ml.sharpe_ratio([-0.01] * 3) == -math.inf
    assert math.isnan(ml.sharpe_ratio([0.0, 0.0]))
    assert ml.sortino_ratio([0.01, 0.02]) == math.inf
    assert math.isnan(ml.sortino_ratio([0.0, 0.0]))
    assert ml.calmar_ratio([0.01, 0.02]) == math.inf
    assert math.isnan(ml.calmar_ratio([0.0]))


# ----------------------------------------------------------------------------------------------------------
# Backtests
# ----------------------------------------------------------------------------------------------------------


def chi2_one_dof_sf(x: float) -> float:
    """P(χ²₁ > x) = erfc(sqrt(x/2)), independent of scipy."""
    return math.erfc(math.sqrt(x / 2.0))


def test_kupiec_pof_matches_hand_computed_likelihood_ratio() -> None:
    # 5 exceedances in 250 days at 99%: p = 0.01, observed rate 0.02.
    lr_hand = -2.0 * (245 * math.log(0.99) + 5 * math.log(0.01)) + 2.0 * (
        245 * math.log(0.98) + 5 * math.log(0.02)
    )

    lr, p_value = ml.kupiec_pof(5, 250, 0.99)

    assert lr == pytest.approx(lr_hand, rel=1e-12)
    assert p_value == pytest.approx(chi2_one_dof_sf(lr_hand), rel=1e-9)


def test_kupiec_pof_with_no_or_all_exceedances_uses_zero_log_zero() -> None:
    assert ml.kupiec_pof(0, 250, 0.99)[0] == pytest.approx(-2.0 * 250 * math.log(0.99), rel=1e-12)
    assert ml.kupiec_pof(10, 10, 0.95)[0] == pytest.approx(-2.0 * 10 * math.log(0.05), rel=1e-12)


def test_kupiec_pof_of_exactly_expected_rate_is_zero_with_p_value_one() -> None:
    assert ml.kupiec_pof(5, 100, 0.95) == pytest.approx((0.0, 1.0), abs=1e-12)


def test_christoffersen_independence_matches_hand_computed_likelihood_ratio() -> None:
    hits = [0, 0, 1, 1, 0, 0, 0, 1, 0, 0]
    # Transitions by index pair: 0→0 (0,1) (4,5) (5,6) (8,9) = 4; 0→1 (1,2) (6,7) = 2;
    # 1→0 (3,4) (7,8) = 2; 1→1 (2,3) = 1.
    n00, n01, n10, n11 = 4, 2, 2, 1
    pi01, pi11, pi = n01 / (n00 + n01), n11 / (n10 + n11), (n01 + n11) / 9
    log_null = (n00 + n10) * math.log(1 - pi) + (n01 + n11) * math.log(pi)
    log_alt = (
        n00 * math.log(1 - pi01) + n01 * math.log(pi01) + n10 * math.log(1 - pi11) + n11 * math.log(pi11)
    )
    lr_hand = -2.0 * log_null + 2.0 * log_alt

    lr, p_value = ml.christoffersen_independence(np.array(hits, dtype=bool))

    assert lr == pytest.approx(lr_hand, rel=1e-12)
    assert p_value == pytest.approx(chi2_one_dof_sf(lr_hand), rel=1e-9)


def test_christoffersen_independence_with_zero_counts_is_finite() -> None:
    assert ml.christoffersen_independence([0, 0, 0, 0]) == (0.0, 1.0)
    assert ml.christoffersen_independence([1, 1, 1]) == (0.0, 1.0)
    # [0, 1, 0, 0, 1]: n00 = 1, n01 = 2, n10 = 1, n11 = 0, so π01 = 2/3, π11 = 0 and π = 1/2; 0·ln 0 = 0.
    lr, _ = ml.christoffersen_independence([0, 1, 0, 0, 1])
    lr_hand = -2.0 * 4 * math.log(0.5) + 2.0 * (math.log(1 / 3) + 2 * math.log(2 / 3) + 1 * math.log(1.0))
    assert lr == pytest.approx(lr_hand, rel=1e-12)


@pytest.mark.parametrize("hits", [[0, 2, 1], [1], [[0, 1], [1, 0]]])
def test_christoffersen_independence_when_hits_invalid_then_raises(hits: object) -> None:
    with pytest.raises(ValueError, match="hits"):
        ml.christoffersen_independence(hits)  # type: ignore[arg-type]


def test_basel_traffic_light_matches_basel_table_at_250_days() -> None:
    zones = [ml.basel_traffic_light(x) for x in range(13)]

    assert zones == ["green"] * 5 + ["yellow"] * 5 + ["red"] * 3


def test_basel_traffic_light_scales_with_binomial_thresholds_for_other_windows() -> None:
    def cdf(x: int, t: int, p: float) -> float:
        return sum(math.comb(t, k) * p**k * (1 - p) ** (t - k) for k in range(x + 1))

    for x in range(20):
        probability = cdf(x, 500, 0.01)
        expected = "green" if probability < 0.95 else "yellow" if probability < 0.9999 else "red"
        assert ml.basel_traffic_light(x, 500) == expected
    assert ml.basel_traffic_light(8, 500) == "green"
    assert ml.basel_traffic_light(9, 500) == "yellow"


@pytest.mark.parametrize("confidence", [0.99, 0.975, 0.95])
def test_basel_traffic_light_of_no_exceedance_is_green_while_the_window_fills(confidence: float) -> None:
    # F(0) = c^T is >= 95% for the first observations (T <= 5 at 99%): the rule alone said yellow, and a rule
    # on backtest.zone paged on a model that had not missed once
    short = [t for t in range(1, 400) if confidence**t >= 0.95]
    assert short  # the windows where the rule alone is not green
    assert all(ml.basel_traffic_light(0, t, confidence=confidence) == "green" for t in range(1, 400))
    # one exceedance still follows the binomial rule from the first observation on
    t = short[-1]
    assert ml.basel_traffic_light(1, t, confidence=confidence) != "green"


def test_scale_volatility_uses_square_root_of_bars() -> None:
    assert ml.scale_volatility(0.001, 390) == pytest.approx(0.001 * math.sqrt(390))
    assert_allclose(ml.scale_volatility(np.array([0.001, 0.002]), 4), [0.002, 0.004])


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------


GOOD_WEIGHTS = np.array([0.5, 0.5])
GOOD_COV = np.array([[1e-4, 2e-5], [2e-5, 4e-4]])


@pytest.mark.parametrize(
    ("weights", "cov", "message"),
    [
        (np.array([0.5, 0.5, 0.1]), GOOD_COV, "shape"),
        (np.array([0.5, math.nan]), GOOD_COV, "NaN"),
        (np.array([0.5, math.inf]), GOOD_COV, "NaN or infinite"),
        (GOOD_WEIGHTS, np.array([[1e-4, math.nan], [math.nan, 4e-4]]), "NaN"),
        (GOOD_WEIGHTS, np.array([[1e-4, 1e-3], [1e-3, 4e-4]]), "positive semi-definite"),
        (GOOD_WEIGHTS, np.array([[1e-4, 2e-5], [3e-5, 4e-4]]), "symmetric"),
        (GOOD_WEIGHTS, np.array([[-1e-4, 0.0], [0.0, 4e-4]]), "negative variance"),
        (GOOD_WEIGHTS, np.array([[0.0, 1e-4], [1e-4, 0.0]]), "positive semi-definite"),
        (GOOD_WEIGHTS, np.ones((2, 3)), "square"),
        (np.ones((2, 2)), GOOD_COV, "1-D"),
    ],
)
def test_every_covariance_function_when_inputs_invalid_then_raises(
    weights: np.ndarray, cov: np.ndarray, message: str
) -> None:
    for call in (
        lambda: ml.get_portfolio_var(weights, cov, 1e6),
        lambda: ml.get_portfolio_cvar(weights, cov, 1e6),
        lambda: ml.calculate_marginal_var(weights, cov, 1e6),
        lambda: ml.calculate_component_var(weights, cov, 1e6),
        lambda: ml.calculate_incremental_var(weights, np.zeros_like(weights), cov, 1e6),
        lambda: ml.get_stressed_var(weights, cov, 1e6, cov=cov, vol_multiplier=2.0),
        lambda: ml.get_monte_carlo_var(weights, cov, 1e6, n_sims=10),
    ):
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("confidence", [0.0, 1.0, -0.5, 1.5, math.nan])
def test_every_confidence_when_outside_open_unit_interval_then_raises(confidence: float) -> None:
    for call in (
        lambda: ml.get_portfolio_var(GOOD_WEIGHTS, GOOD_COV, 1e6, confidence),
        lambda: ml.get_portfolio_cvar(GOOD_WEIGHTS, GOOD_COV, 1e6, confidence),
        lambda: ml.calculate_marginal_var(GOOD_WEIGHTS, GOOD_COV, 1e6, confidence),
        lambda: ml.calculate_incremental_var(GOOD_WEIGHTS, np.array([0.1, 0.0]), GOOD_COV, 1e6, confidence),
        lambda: ml.get_historical_var([0.01, -0.02], 1.0, confidence),
        lambda: ml.get_monte_carlo_var(GOOD_WEIGHTS, GOOD_COV, 1e6, confidence, n_sims=10),
        lambda: ml.kupiec_pof(1, 10, confidence),
        lambda: ml.basel_traffic_light(1, 10, confidence=confidence),
    ):
        with pytest.raises(ValueError, match="confidence"):
            call()


@pytest.mark.parametrize("horizon", [0.0, -1.0, math.inf])
def test_var_when_horizon_not_positive_finite_then_raises(horizon: float) -> None:
    with pytest.raises(ValueError, match="horizon"):
        ml.get_portfolio_var(GOOD_WEIGHTS, GOOD_COV, 1e6, 0.95, horizon)


def test_var_without_validation_accepts_non_psd_matrix_but_checks_shapes() -> None:
    indefinite = np.array([[1e-4, 1e-3], [1e-3, 4e-4]])

    var, _ = ml.get_portfolio_var(np.array([1.0, 0.0]), indefinite, 1e6, validate=False)

    assert var == pytest.approx(stats.norm.ppf(0.95) * 0.01 * 1e6)
    with pytest.raises(ValueError, match="shape"):
        ml.get_portfolio_var(np.ones(3), indefinite, 1e6, validate=False)
    with pytest.raises(ValueError, match="NaN"):
        ml.get_portfolio_var(np.array([math.nan, 0.0]), indefinite, 1e6, validate=False)


@pytest.mark.parametrize(
    "call",
    [
        lambda: ml.kupiec_pof(11, 10, 0.99),
        lambda: ml.kupiec_pof(-1, 10, 0.99),
        lambda: ml.kupiec_pof(1, 0, 0.99),
        lambda: ml.kupiec_pof(1.5, 10, 0.99),  # type: ignore[arg-type]
        lambda: ml.basel_traffic_light(251),
        lambda: ml.get_historical_var([]),
        lambda: ml.get_historical_var([0.01, math.nan]),
        lambda: ml.sharpe_ratio([]),
        lambda: ml.max_drawdown([-1.5]),
        lambda: ml.drawdown_series([0.0, 1.0]),
        lambda: ml.scale_volatility(0.01, 0),
        lambda: ml.scale_volatility(-0.01, 390),
        lambda: ml.build_stressed_covariance(GOOD_COV, 0.0),
        lambda: ml.build_stressed_covariance(GOOD_COV, 2.0, 1.5),
        lambda: ml.get_monte_carlo_var(GOOD_WEIGHTS, GOOD_COV, 1e6, n_sims=0),
        lambda: ml.get_portfolio_var(GOOD_WEIGHTS, GOOD_COV, -1.0),
    ],
)
def test_other_invalid_inputs_raise_value_error(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


# ----------------------------------------------------------------------------------------------------------
# Purity
# ----------------------------------------------------------------------------------------------------------


def test_math_logic_imports_no_io_or_upper_layer_module() -> None:
    forbidden = {"redis", "streamlit", "jinja2", "twilio", "logic", "notifications", "dashboard", "pickle"}
    tree = ast.parse(MODULE_PATH.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            # of our own tree only the model defaults (constants, no I/O) may be imported: keep its full name
            top = node.module.split(".")[0]
            imported.add(node.module if top == "engine" else top)

    assert imported, "the parser found no imports at all"
    assert not imported & forbidden
    # time: only the EWMA kernel calibration's perf_counter (it picks among bit-identical kernels)
    assert imported <= {
        "__future__", "functools", "math", "operator", "typing", "numpy", "scipy", "engine.defaults",
        "collections", "dataclasses", "time",
    }


def test_a_psd_matrix_of_subnormal_variances_is_accepted() -> None:
    # found by hypothesis: a jitter relative to a subnormal trace underflowed to zero and Cholesky failed
    cov = np.array([[0.0, 0.0], [0.0, 8e-323]])

    var, sigma = ml.get_portfolio_var(np.array([0.0, 1.0]), cov, 1.0)

    assert sigma == pytest.approx(math.sqrt(8e-323))
    assert var >= 0.0
