"""Tests of the tail-aware VaR math (engine.math_logic, new section) and the method objects (logic.var_methods).

Every figure is checked against an independent computation written here (scipy.stats quantiles and integrals,
sorting the losses), to 1e-9 relative; the invariants (CVaR >= VaR, components sum to the VaR, the incremental
VaR of a trade equals a full revaluation) are checked on random states.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose
from scipy import stats

from engine import math_logic as ml
from engine.records import VarMethod
from logic.var_methods import FhsModel, NormalModel, RiskModel, StudentTModel, risk_model

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

RTOL = 1e-9
CONFIDENCES = (0.95, 0.99, 0.975)
HORIZONS = (1.0, 390.0)


def random_state(seed: int, n: int = 6, t: int = 250) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A one-bar covariance, a window of fat-tailed standardized returns, today's vols and a long/short book."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n + 3))
    cov = 1e-4 * (a @ a.T) / (n + 3)
    cov = (cov + cov.T) / 2.0
    z = rng.standard_t(5, (t, n)) / math.sqrt(5 / 3)
    vol = np.sqrt(np.diagonal(cov))
    x = rng.uniform(-1e6, 1e6, n)
    return cov, z, vol, x


def models(seed: int, horizon: float, dof: float = 5.5) -> list[RiskModel]:
    cov, z, vol, _ = random_state(seed)
    return [
        risk_model(VarMethod.NORMAL, cov, horizon_bars=horizon),
        risk_model(VarMethod.STUDENT_T, cov, horizon_bars=horizon, dof=dof),
        risk_model(VarMethod.FHS, cov, horizon_bars=horizon, standardized=z, current_vol=vol),
    ]


# --- independent computations --------------------------------------------------------------------------------


def expected_tail_size(n_scenarios: int, confidence: float) -> int:
    """ceil((1 - c)·T), with (1 - c)·T rounded to 6 decimals first so 0.01·500 counts as 5."""
    return max(math.ceil(round((1.0 - confidence) * n_scenarios, 6)), 1)


def independent_var_cvar(method: VarMethod, seed: int, confidence: float, horizon: float, dof: float = 5.5):
    cov, z, vol, x = random_state(seed)
    sigma = math.sqrt(float(x @ cov @ x)) * math.sqrt(horizon)
    if method is VarMethod.NORMAL:
        q = stats.norm.ppf(confidence)
        return q * sigma, sigma * stats.norm.pdf(q) / (1 - confidence)
    if method is VarMethod.STUDENT_T:
        unit = math.sqrt((dof - 2) / dof)  # a t with nu dof has variance nu / (nu - 2)
        q = stats.t.ppf(confidence, dof)
        tail_mean = stats.t.expect(lambda y: y, args=(dof,), lb=q, conditional=True, epsabs=1e-13, epsrel=1e-13)
        return q * unit * sigma, tail_mean * unit * sigma
    losses = sorted((-(z[t] * vol) @ x for t in range(z.shape[0])), reverse=True)
    k = expected_tail_size(len(losses), confidence)
    root = math.sqrt(horizon)
    return root * losses[k - 1], root * sum(losses[:k]) / k


# --- VaR and CVaR against independent computations ------------------------------------------------------------


@pytest.mark.parametrize("method", list(VarMethod))
@pytest.mark.parametrize("confidence", CONFIDENCES)
@pytest.mark.parametrize("horizon", HORIZONS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_var_and_cvar_equal_an_independent_computation(method, confidence, horizon, seed):
    cov, z, vol, x = random_state(seed)
    model = risk_model(method, cov, horizon_bars=horizon, standardized=z, current_vol=vol, dof=5.5)
    expected_var, expected_cvar = independent_var_cvar(method, seed, confidence, horizon)

    assert model.method is method
    assert model.var(x, confidence) == pytest.approx(expected_var, rel=RTOL)
    assert model.cvar(x, confidence) == pytest.approx(expected_cvar, rel=RTOL)
    assert model.cvar(x, confidence) >= model.var(x, confidence)


@pytest.mark.parametrize("seed", [4, 5])
def test_normal_model_gives_todays_figures_bit_for_bit(seed):
    cov, _, _, x = random_state(seed)
    for confidence in CONFIDENCES:
        for horizon in HORIZONS:
            model = risk_model("normal", cov, horizon_bars=horizon)
            assert isinstance(model, NormalModel)
            assert model.var(x, confidence) == ml.get_portfolio_var(x, cov, 1.0, confidence, horizon)[0]
            assert model.cvar(x, confidence) == ml.get_portfolio_cvar(x, cov, 1.0, confidence, horizon)
            assert_allclose(
                model.component_var(x, confidence),
                ml.calculate_component_var(x, cov, 1.0, confidence, horizon=horizon),
                rtol=0,
                atol=0,
            )
            assert_allclose(
                model.marginal_var(x, confidence),
                ml.calculate_marginal_var(x, cov, 1.0, confidence, horizon=horizon),
                rtol=0,
                atol=0,
            )


def test_normal_var_after_is_the_gates_arithmetic_bit_for_bit():
    """logic.checks: var_after = get_portfolio_var(x) + incremental_var_single(...)."""
    cov, _, _, x = random_state(6)
    model = risk_model(VarMethod.NORMAL, cov, horizon_bars=390.0)
    prepared = model.prepare(x)
    for index, delta in [(0, 1e5), (3, -2.5e5), (5, 7.0)]:
        before, sigma = ml.get_portfolio_var(x, cov, 1.0, 0.99, 390.0)
        gate = before + ml.incremental_var_single(index, delta, x, cov, 1.0, sigma**2, 0.99, horizon=390.0)
        assert model.var_after(prepared, index, delta, 0.99) == gate


def test_student_t_tends_to_the_normal_as_the_degrees_of_freedom_grow():
    assert ml.student_t_var(1000.0, 0.99, 1e8) == pytest.approx(1000.0 * stats.norm.ppf(0.99), rel=1e-6)
    assert ml.student_t_cvar(1000.0, 0.99, 1e8) == pytest.approx(
        1000.0 * stats.norm.pdf(stats.norm.ppf(0.99)) / 0.01, rel=1e-6
    )


def test_student_t_is_wider_than_the_normal_at_99_percent_for_the_same_sigma():
    cov, _, _, x = random_state(7)
    normal = risk_model(VarMethod.NORMAL, cov, horizon_bars=1)
    t = risk_model(VarMethod.STUDENT_T, cov, horizon_bars=1, dof=4.0)
    assert t.var(x, 0.99) > normal.var(x, 0.99)
    assert t.cvar(x, 0.99) > normal.cvar(x, 0.99)


@pytest.mark.parametrize("dof", [2.0, 1.5, -3.0, math.inf, math.nan])
def test_student_t_refuses_degrees_of_freedom_without_a_finite_variance(dof):
    with pytest.raises(ValueError, match="dof"):
        ml.student_t_var(1.0, 0.99, dof)
    cov, _, _, _ = random_state(1)
    with pytest.raises(ValueError, match="dof"):
        risk_model(VarMethod.STUDENT_T, cov, horizon_bars=1, dof=dof)


def test_student_t_just_above_two_degrees_of_freedom_is_accepted():
    assert ml.student_t_var(1.0, 0.99, 2.0 + 1e-9) > 0.0


# --- invariants ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("horizon", HORIZONS)
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_component_vars_sum_to_the_var_for_every_method(horizon, seed):
    _, _, _, x = random_state(seed)
    for model in models(seed, horizon):
        for confidence in CONFIDENCES:
            assert model.component_var(x, confidence).sum() == pytest.approx(model.var(x, confidence), rel=1e-12)


def test_fhs_components_are_the_positions_losses_in_the_var_scenario():
    cov, z, vol, x = random_state(14)
    model = risk_model(VarMethod.FHS, cov, horizon_bars=4.0, standardized=z, current_vol=vol)
    scenarios = z * vol
    pnl = scenarios @ x
    k = expected_tail_size(len(pnl), 0.99)
    worst = np.argsort(pnl, kind="stable")[k - 1]
    assert_allclose(model.component_var(x, 0.99), -2.0 * x * scenarios[worst], rtol=1e-12)
    assert_allclose(model.marginal_var(x, 0.99), -2.0 * scenarios[worst], rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    confidence=st.sampled_from(CONFIDENCES),
    index=st.integers(0, 5),
    delta=st.floats(-3e6, 3e6, allow_nan=False, allow_infinity=False),
)
def test_var_after_a_trade_equals_a_full_revaluation_with_the_trade(seed, confidence, index, delta):
    _, _, _, x = random_state(seed)
    after = x.copy()
    after[index] += delta
    for model in models(seed, 390.0, dof=3.5):
        prepared = model.prepare(x)
        assert model.var_after(prepared, index, delta, confidence) == pytest.approx(
            model.var(after, confidence), rel=RTOL, abs=1e-6
        )


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), confidence=st.floats(0.5, 0.999))
def test_cvar_is_never_below_var(seed, confidence):
    _, _, _, x = random_state(seed)
    for model in models(seed, 1.0):
        assert model.cvar(x, confidence) >= model.var(x, confidence) - 1e-9 * abs(model.var(x, confidence))


def test_prepare_copies_the_book_so_later_edits_do_not_leak_in():
    cov, z, vol, x = random_state(15)
    for model in models(15, 1.0):
        prepared = model.prepare(x)
        expected = model.var_after(prepared, 1, 1e5, 0.99)
        x_edit = x
        x_edit[1] += 1e6
        assert model.var_after(prepared, 1, 1e5, 0.99) == expected
        x_edit[1] -= 1e6


def test_with_horizon_scales_every_method_by_the_square_root_of_time():
    _, _, _, x = random_state(16)
    for model in models(16, 1.0):
        longer = model.with_horizon(16.0)
        assert longer.horizon_bars == 16.0
        assert longer.var(x, 0.99) == pytest.approx(4.0 * model.var(x, 0.99), rel=1e-12)
        assert longer.cvar(x, 0.99) == pytest.approx(4.0 * model.cvar(x, 0.99), rel=1e-12)


def test_a_riskless_book_has_zero_var_and_zero_components():
    _, _, _, x = random_state(17)
    for model in models(17, 1.0):
        zero = np.zeros_like(x)
        assert model.var(zero, 0.99) == 0.0
        assert model.cvar(zero, 0.99) == 0.0
        assert not model.component_var(zero, 0.99).any()


# --- the scenario order statistic -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_scenarios", "confidence", "k"),
    [(500, 0.99, 5), (500, 0.95, 25), (100, 0.99, 1), (101, 0.99, 2), (99, 0.99, 1), (1, 0.99, 1), (250, 0.99, 3)],
)
def test_scenario_tail_size_is_the_ceiling_of_the_tail_share(n_scenarios, confidence, k):
    assert ml.scenario_tail_size(n_scenarios, confidence) == k


def test_scenario_var_is_the_kth_worst_loss_without_interpolation():
    pnl = -np.arange(1.0, 501.0)  # losses 1..500
    assert ml.scenario_var(pnl, 0.99) == 496.0  # the 5th worst
    assert ml.scenario_cvar(pnl, 0.99) == (500 + 499 + 498 + 497 + 496) / 5
    assert ml.scenario_var(pnl, 0.95) == 476.0  # the 25th worst
    assert ml.scenario_var_index(pnl, 0.99) == 495


def test_scenario_cvar_does_not_depend_on_the_order_of_the_scenarios():
    rng = np.random.default_rng(3)
    pnl = rng.standard_t(3, 777) * 1e4
    for _ in range(5):
        shuffled = rng.permutation(pnl)
        assert ml.scenario_cvar(shuffled, 0.99) == ml.scenario_cvar(pnl, 0.99)
        assert ml.scenario_var(shuffled, 0.99) == ml.scenario_var(pnl, 0.99)


@pytest.mark.parametrize("bad", [[], [1.0, np.nan], [[1.0, 2.0]]])
def test_scenario_var_refuses_empty_or_non_finite_pnl(bad):
    with pytest.raises(ValueError):
        ml.scenario_var(bad, 0.99)


# --- standardized returns and the degrees of freedom --------------------------------------------------------


def test_standardize_and_update_uses_the_vol_from_before_the_return():
    cov = np.array([[4e-4, 1e-5], [1e-5, 1e-4]])
    r = np.array([0.03, -0.01])
    expected_cov = 0.94 * cov + 0.06 * np.outer(r, r)
    z = ml.ewma_standardize_and_update(cov, r, 0.94)
    assert_allclose(z, [0.03 / 0.02, -0.01 / 0.01], rtol=1e-15)
    assert_allclose(cov, expected_cov, rtol=1e-12)


def test_standardize_returns_gives_zero_where_the_vol_is_zero():
    z = ml.standardize_returns([[0.02, 0.0], [-0.01, 0.0]], [[0.01, 0.0], [0.02, 0.0]])
    assert_allclose(z, [[2.0, 0.0], [-0.5, 0.0]])


@pytest.mark.parametrize(
    ("returns", "vol"), [([0.01], [0.01, 0.02]), ([0.01], [-0.01]), ([np.nan], [0.01]), ([[[0.0]]], [[[1.0]]])]
)
def test_standardize_returns_refuses_bad_input(returns, vol):
    with pytest.raises(ValueError):
        ml.standardize_returns(returns, vol)


def test_fitted_dof_is_the_method_of_moments_on_excess_kurtosis():
    rng = np.random.default_rng(5)
    half = rng.standard_t(7, (3000, 2))
    sample = np.vstack([half, -half])  # mean exactly zero, so raw and central moments agree
    kurtosis = stats.kurtosis(sample.ravel(), fisher=True, bias=True)
    expected = min(max(6 / kurtosis + 4, 3.0), 30.0)
    assert ml.fit_student_t_dof(sample) == pytest.approx(expected, rel=1e-10)


def test_fitted_dof_recovers_the_tail_of_a_large_student_t_sample():
    rng = np.random.default_rng(8)
    sample = rng.standard_t(10, 2_000_000)
    assert ml.fit_student_t_dof(sample) == pytest.approx(10.0, abs=1.0)


def test_fitted_dof_is_clipped_to_its_bounds():
    rng = np.random.default_rng(9)
    spiky = np.r_[np.zeros(998), 1.0, -1.0]  # excess kurtosis 500 - 3 = 497: nu = 6/497 + 4, above the floor 3
    assert ml.fit_student_t_dof(spiky) == pytest.approx(6 / 497 + 4, rel=1e-12)
    assert ml.fit_student_t_dof(spiky, lo=4.5) == 4.5
    assert ml.fit_student_t_dof(rng.uniform(-1, 1, 20000)) == 30.0  # thin tails (negative excess kurtosis)
    assert ml.fit_student_t_dof(np.zeros(10)) == 30.0
    assert ml.fit_student_t_dof(np.zeros((0, 3)), lo=4.0, hi=12.0) == 12.0
    assert ml.fit_student_t_dof(rng.standard_t(2.5, 20000), lo=5.0, hi=12.0) == 5.0
    assert ml.fit_student_t_dof(rng.standard_normal(200), lo=7.0, hi=7.0) == 7.0


@pytest.mark.parametrize(("lo", "hi"), [(2.0, 30.0), (5.0, 4.0), (math.nan, 30.0)])
def test_fitted_dof_refuses_bounds_without_a_finite_variance_or_inverted(lo, hi):
    with pytest.raises(ValueError):
        ml.fit_student_t_dof(np.ones(10), lo, hi)


def _moment_dof(sample: np.ndarray, lo: float = 3.0, hi: float = 30.0) -> float:
    """The method-of-moments fit written out with numpy: nu = 6 / (m4 / m2^2 - 3) + 4, clipped."""
    squares = np.asarray(sample, dtype=float).ravel() ** 2
    kurtosis = float(np.mean(squares**2) / np.mean(squares) ** 2 - 3.0)
    return hi if kurtosis <= 0 else min(max(6.0 / kurtosis + 4.0, lo), hi)


def test_fitted_dof_leaves_the_missing_entries_out_and_keeps_the_observed_zeros():
    # Arrange: a fat-tailed window, a genuine zero in column 0, and 30% of column 3 missing (stand-in zeros)
    rng = np.random.default_rng(21)
    z = rng.standard_t(8, (400, 4))
    z[5, 0] = 0.0
    observed = np.ones(z.shape, dtype=bool)
    observed[rng.choice(400, 120, replace=False), 3] = False
    z[~observed] = 0.0
    # Act
    fitted = ml.fit_student_t_dof(z, observed=observed)
    # Assert
    assert fitted == pytest.approx(_moment_dof(z[observed]), rel=1e-12)  # the genuine zero is in the sample
    assert fitted != pytest.approx(ml.fit_student_t_dof(z), rel=1e-3)  # the stand-in zeros would move it


def test_fitted_dof_with_every_entry_observed_is_bit_for_bit_the_unmasked_fit():
    _, z, _, _ = random_state(22)
    assert ml.fit_student_t_dof(z, observed=np.ones(z.shape, dtype=bool)) == ml.fit_student_t_dof(z)


@pytest.mark.parametrize("mask", [np.ones((3, 2), dtype=bool), np.ones((2, 3), dtype=int), np.ones(6, dtype=bool)])
def test_fitted_dof_refuses_a_mask_that_is_not_one_boolean_per_entry(mask):
    with pytest.raises(ValueError, match="observed"):
        ml.fit_student_t_dof(np.ones((2, 3)), observed=mask)


def test_fitted_dof_refuses_nan_even_where_the_entry_is_marked_missing():
    z = np.array([[1.0, np.nan], [-1.0, 0.5]])
    with pytest.raises(ValueError, match="NaN"):
        ml.fit_student_t_dof(z, observed=np.array([[True, False], [True, True]]))


def test_standardize_observed_is_standardize_returns_with_the_missing_and_the_zero_vol_entries_marked():
    returns = np.array([0.02, 0.0, 0.0, 0.01])
    vol = np.array([0.01, 0.02, 0.01, 0.0])
    z, observed = ml.standardize_observed(returns, vol, np.array([True, True, False, True]))
    np.testing.assert_array_equal(z, ml.standardize_returns(returns, vol))
    # an unchanged price (index 1) is an observation; no price (2) or no vol forecast (3) is not
    assert observed.tolist() == [True, True, False, False]


def test_standardize_observed_refuses_a_return_where_no_price_was_observed():
    with pytest.raises(ValueError, match="must be 0"):
        ml.standardize_observed([0.01, 0.02], [0.01, 0.01], np.array([True, False]))


def test_fhs_reads_a_missing_entry_as_no_move_of_that_ticker_in_that_scenario():
    z = np.array([[1.5, 0.0], [-2.0, 0.5]])  # entry (0, 1) missing: its stand-in 0
    scenarios = ml.fhs_scenarios(z, [0.01, 0.02])
    np.testing.assert_array_equal(scenarios, [[0.015, 0.0], [-0.02, 0.01]])


def test_christoffersen_from_counts_equals_the_hit_sequence_form():
    rng = np.random.default_rng(10)
    for p in (0.01, 0.05, 0.3):
        hits = (rng.uniform(size=700) < p).astype(int)
        transitions = np.bincount(2 * hits[:-1] + hits[1:], minlength=4)
        assert ml.christoffersen_independence_counts(*transitions) == ml.christoffersen_independence(hits)


# --- construction errors --------------------------------------------------------------------------------------


def test_risk_model_builds_the_class_of_each_method():
    cov, z, vol, _ = random_state(1)
    assert isinstance(risk_model("normal", cov, horizon_bars=1), NormalModel)
    assert isinstance(risk_model("student_t", cov, horizon_bars=1, dof=4), StudentTModel)
    fhs = risk_model("fhs", cov, horizon_bars=1, standardized=z)
    assert isinstance(fhs, FhsModel)
    assert_allclose(fhs.scenarios, z * vol)  # current_vol defaults to sqrt(diag cov)
    for model in models(1, 1.0):
        assert isinstance(model, RiskModel)


def test_risk_model_refuses_missing_or_bad_inputs():
    cov, z, vol, x = random_state(1)
    with pytest.raises(ValueError, match="standardized"):
        risk_model("fhs", cov, horizon_bars=1)
    with pytest.raises(ValueError, match="at least one"):
        risk_model("fhs", cov, horizon_bars=1, standardized=np.zeros((0, 6)))
    with pytest.raises(ValueError, match="degrees of freedom"):
        risk_model("student_t", cov, horizon_bars=1)
    with pytest.raises(ValueError):
        risk_model("garch", cov, horizon_bars=1)
    with pytest.raises(ValueError, match="horizon"):
        risk_model("normal", cov, horizon_bars=0)
    with pytest.raises(ValueError, match="negative variance"):
        risk_model("normal", -cov, horizon_bars=1)
    risk_model("normal", -cov, horizon_bars=1, validate=False)  # the hot path trusts a matrix validated before
    with pytest.raises(ValueError):
        risk_model("fhs", cov, horizon_bars=1, standardized=z[:, :3], current_vol=vol)
    for model in models(1, 1.0):
        with pytest.raises(ValueError):
            model.var(x[:3], 0.99)
        with pytest.raises(ValueError):
            model.var(np.full(6, np.nan), 0.99)
        prepared = model.prepare(x)
        with pytest.raises(ValueError, match="out of range"):
            model.var_after(prepared, 6, 1.0, 0.99)
        with pytest.raises(ValueError, match="finite"):
            model.var_after(prepared, 0, math.inf, 0.99)
