"""Tests of logic.backtest_kernels: each batched computation gives, row by row, exactly the floats of the
one-backtester reference in engine.math_logic / logic.var_methods; and logic.backtest_batch.step_many of many
backtesters equals each stepped alone and the RiskModel forecasts."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from engine import math_logic as ml
from engine.records import VarMethod
from logic import backtest_kernels as kernels
from logic.backtest import BacktestConfig, Backtester, Track, step_many
from logic.var_methods import risk_model

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def _covs(rng: np.random.Generator, b: int, n: int) -> np.ndarray:
    a = rng.standard_normal((b, n, 3 * n)) * 0.01
    return np.ascontiguousarray(a @ a.transpose(0, 2, 1) / (3 * n))


def test_the_batched_ewma_step_equals_math_logic_row_by_row() -> None:
    rng = np.random.default_rng(1)
    covs = _covs(rng, 9, 7)
    covs[2, 3, 3] = 0.0  # a zero variance: z is 0 there
    last = rng.uniform(50, 150, (9, 7))
    prices = last * np.exp(rng.normal(0, 0.02, (9, 7)))
    expected = []
    for i in range(9):
        cov = covs[i].copy()
        z = ml.ewma_standardize_and_update(cov, ml.log_returns(last[i], prices[i]), 0.94)
        expected.append((z, cov))

    z = kernels.ewma_standardize_and_update(covs, last, prices, 0.94)

    for i, (z_ref, cov_ref) in enumerate(expected):
        assert np.array_equal(z[i], z_ref) and np.array_equal(covs[i], cov_ref)
    assert z[2, 3] == 0.0


@pytest.mark.parametrize("chunk_bytes", [1, 8 * 50 * 6 * 3, kernels.CHUNK_BYTES])
def test_window_figures_equal_the_fitted_dof_and_the_fhs_var_of_each_window(
    chunk_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernels, "CHUNK_BYTES", chunk_bytes)  # one window a chunk, three, all
    rng = np.random.default_rng(2)
    windows = [rng.standard_t(4, (50, 6)) for _ in range(8)]
    windows[3] = rng.standard_normal((50, 6)) * 1e-3  # thin tails: ν at its upper bound
    vols = rng.uniform(0.001, 0.02, (8, 6))
    x = rng.normal(0, 1e5, (8, 6))
    tail = ml.scenario_tail_size(50, 0.95)

    dofs, kth = kernels.window_figures(windows, vols, x, dof_bounds=(3.0, 30.0), tail=tail)

    assert dofs == [ml.fit_student_t_dof(w, 3.0, 30.0) for w in windows]
    fhs = [
        risk_model(VarMethod.FHS, None, horizon_bars=1, standardized=w, current_vol=v)
        for w, v in zip(windows, vols, strict=True)
    ]
    assert kth is not None
    assert [-k for k in kth] == [m.var(xi, 0.95) for m, xi in zip(fhs, x, strict=True)]
    assert kernels.window_figures(windows, vols, x, dof_bounds=None, tail=None) == (None, None)


def test_quadratic_forms_and_multipliers_equal_the_parametric_models() -> None:
    rng = np.random.default_rng(3)
    covs, x = _covs(rng, 5, 4), rng.normal(0, 1e4, (5, 4))
    forms = kernels.quadratic_forms(covs, x)
    assert forms == [float(x[i] @ (covs[i] @ x[i])) for i in range(5)]

    dofs = [3.0, 4.5, 7.25, 30.0]
    multipliers = kernels.t_var_multipliers(0.99, dofs)
    assert multipliers == [ml.student_t_var(1.0, 0.99, nu) for nu in dofs]
    assert kernels.normal_quantile(0.99) == ml.get_portfolio_var([1.0], [[1.0]], 1.0, 0.99)[0]
    with pytest.raises(ValueError, match="dof"):
        kernels.t_var_multipliers(0.99, [2.0])  # ν must be > 2: exactly 2 is refused


def _bars(rng: np.random.Generator, n: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    prices = 100 * np.exp(np.cumsum(rng.standard_t(4, (count, n)) * 0.01, axis=0))
    qty = rng.integers(-50, 50, (count, n)).astype(float)
    return prices, qty


def test_step_many_equals_each_backtester_stepped_alone_and_the_risk_model_forecasts() -> None:
    rng = np.random.default_rng(4)
    configs = [
        BacktestConfig(window=25, seed_rows=10, horizon_bars=1, rolling=30),
        BacktestConfig(window=25, seed_rows=10, horizon_bars=3, rolling=30),
        BacktestConfig(methods=(VarMethod.FHS, VarMethod.NORMAL), window=25, seed_rows=10, confidence=0.95),
    ]
    shapes = [(3, configs[0]), (3, configs[0]), (3, configs[1]), (2, configs[0]), (3, configs[2]), (1, configs[1])]
    batch = [Backtester([f"T{i}" for i in range(n)], cfg) for n, cfg in shapes]
    alone = copy.deepcopy(batch)
    data = [_bars(rng, n, 80) for n, _ in shapes]

    for t in range(80):
        start = 5 if t < 5 else 0  # the first backtester starts late: the batch mixes burn-in and ready ones
        items = [(bt, data[i][0][t], data[i][1][t], str(t)) for i, bt in enumerate(batch) if i or t >= start]
        observed = step_many(items)
        for (bt, prices, qty, label), got in zip(items, observed, strict=True):
            i = batch.index(bt)
            assert got == alone[i].step(prices, qty, label)
            opened = bt.pending.get(Track.BAR)
            if opened is not None and opened.start == label:
                x, c = qty * prices, bt.config.confidence
                assert opened.var == {m: model.var(x, c) for m, model in bt.models().items()}  # var_methods' own
                assert opened.var == bt.forecasts(x, 1)
    for bt, ref in zip(batch, alone, strict=True):
        assert bt.to_dict() == ref.to_dict()
        assert bt.ready and bt.summary(Track.BAR) == ref.summary(Track.BAR)
    assert math.isfinite(batch[0].dof())


def test_step_many_refuses_a_bad_bar_of_any_backtester_before_changing_any() -> None:
    a, b = Backtester(["A"], BacktestConfig(window=5, seed_rows=2)), Backtester(["B"], BacktestConfig(window=5))
    before = (a.to_dict(), b.to_dict())
    with pytest.raises(ValueError, match="prices must be > 0"):
        step_many([(a, [10.0], [1.0], None), (b, [0.0], [1.0], None)])
    with pytest.raises(ValueError, match="listed twice"):
        step_many([(a, [10.0], [1.0], None), (a, [11.0], [1.0], None)])
    assert (a.to_dict(), b.to_dict()) == before


def test_a_return_out_of_range_is_refused_before_any_backtester_changes() -> None:
    cfg = BacktestConfig(window=5, seed_rows=2)
    a, b = Backtester(["A"], cfg), Backtester(["B", "C"], cfg)
    for t in range(4):
        step_many([(a, [10.0 + t], [1.0], None), (b, [20.0 + t if t < 3 else 1e-300, 5.0], [1.0, 2.0], None)])
    before = (a.to_dict(), b.to_dict())
    with np.errstate(over="ignore"), pytest.raises(ValueError, match="infinite"):  # 1e300 / 1e-300 overflows
        step_many([(a, [11.0], [1.0], None), (b, [1e300, 5.0], [1.0, 2.0], None)])
    assert (a.to_dict(), b.to_dict()) == before


def test_the_window_buffer_moves_back_without_changing_the_window() -> None:
    bt = Backtester(["A", "B"], BacktestConfig(window=8, seed_rows=2))
    pushed = []
    rng = np.random.default_rng(5)
    prices = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (40, 2)), axis=0))
    for p in prices:
        n = bt.pushed
        bt.step(p, [1.0, 1.0])
        if bt.pushed > n:
            pushed.append(bt.window[-1].copy())
            assert np.array_equal(bt.window, np.array(pushed[-8:]))  # the last 8 pushes, oldest first
            assert bt.window.flags.c_contiguous
    assert len(pushed) > 8 + 2 * 8  # the buffer moved back several times


# -- missing entries (logic/backtest.py, "Missing entries") -------------------------------------------------------


@pytest.mark.parametrize("chunk_bytes", [1, 8 * 50 * 6 * 3, kernels.CHUNK_BYTES])
def test_window_figures_fit_dof_on_each_windows_observed_entries_as_math_logic_does(
    chunk_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernels, "CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(6)
    windows = [rng.standard_t(4, (50, 6)) for _ in range(7)]
    masks: list[np.ndarray | None] = [None] * 7
    for i in (1, 2, 5, 6):
        mask = rng.random((50, 6)) > 0.3
        windows[i][~mask] = 0.0  # the stand-in
        masks[i] = mask
    masks[6] = np.zeros((50, 6), dtype=bool)  # nothing observed: ν at its upper bound
    vols = rng.uniform(0.001, 0.02, (7, 6))
    x = rng.normal(0, 1e5, (7, 6))
    tail = ml.scenario_tail_size(50, 0.95)

    dofs, kth = kernels.window_figures(windows, vols, x, dof_bounds=(3.0, 30.0), tail=tail, observed=masks)

    assert dofs == [ml.fit_student_t_dof(w, 3.0, 30.0, observed=m) for w, m in zip(windows, masks, strict=True)]
    assert dofs is not None and dofs[6] == 30.0
    assert dofs[1] != ml.fit_student_t_dof(windows[1], 3.0, 30.0)  # the zeros are not in the sample
    unmasked = kernels.window_figures(windows, vols, x, dof_bounds=(3.0, 30.0), tail=tail)
    # the scenarios fill a missing entry as the live FHS model does (math_logic.fhs_fill_missing), bit for bit;
    # a missing entry is not "no move" (its stand-in 0): a window with missing entries differs from the unmasked
    fhs = [
        risk_model(VarMethod.FHS, None, horizon_bars=1, standardized=w, current_vol=v, observed=m)
        for w, v, m in zip(windows, vols, masks, strict=True)
    ]
    assert kth is not None and unmasked[1] is not None
    assert [-k for k in kth] == [m.var(xi, 0.95) for m, xi in zip(fhs, x, strict=True)]
    assert [k == u for k, u in zip(kth, unmasked[1], strict=True)] == [m is None for m in masks]


def test_an_entry_is_observed_where_the_vol_is_positive_and_a_new_price_came_or_the_price_moved() -> None:
    covs = np.stack([np.eye(3), np.diag([1.0, 0.0, 1.0])])
    last = np.array([[10.0, 20.0, 30.0], [10.0, 20.0, 30.0]])
    prices = np.array([[10.0, 20.0, 31.0], [10.0, 21.0, 30.0]])
    observed = np.array([[False, True, False], [True, True, False]])

    entries = kernels.observed_entries(covs, last, prices, observed)

    # no new price and the price of before: missing; no new price but moved (bars not fed): observed; σ = 0: missing
    assert entries.tolist() == [[False, True, True], [True, False, False]]
    assert kernels.observed_entries(covs, last, prices, None).tolist() == [[True] * 3, [True, False, True]]


def test_step_many_with_masks_equals_each_backtester_stepped_alone_with_its_mask() -> None:
    rng = np.random.default_rng(7)
    config = BacktestConfig(window=25, seed_rows=10, horizon_bars=2, rolling=30)
    batch = [Backtester([f"T{i}" for i in range(3)], config) for _ in range(4)]
    alone = copy.deepcopy(batch)
    data = [_bars(rng, 3, 90) for _ in batch]
    gaps = [rng.random((90, 3)) < 0.3 for _ in batch]
    for i in range(4):  # a ticker without a new price keeps its last price
        for t in range(1, 90):
            data[i][0][t, gaps[i][t]] = data[i][0][t - 1, gaps[i][t]]
    gaps[3][:] = False  # one of them without a gap: no mask at all

    for t in range(90):
        items = [(bt, data[i][0][t], data[i][1][t], str(t)) for i, bt in enumerate(batch)]
        masks = [None if not gaps[i][t].any() else ~gaps[i][t] for i in range(4)]
        got = step_many(items, observed=masks)
        for i, ((bt, prices, qty, label), closed) in enumerate(zip(items, got, strict=True)):
            assert closed == alone[i].step(prices, qty, label, observed=masks[i])
            opened = bt.pending.get(Track.BAR)
            if opened is not None and opened.start == label:
                assert opened.var == bt.forecasts(qty * prices, 1)  # the batched ν is dof()'s
    for i, (bt, ref) in enumerate(zip(batch, alone, strict=True)):
        assert bt.to_dict() == ref.to_dict()
        assert bt.dof() == ml.fit_student_t_dof(bt.window, 3.0, 30.0, observed=bt.observed)
        assert bt.observed.all() == (i == 3)
