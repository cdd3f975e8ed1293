"""The partial EWMA update (engine.math_logic.update_covariance_ewma_observed): a ticker without a new price keeps
its variance; closed forms, the PSD invariant, the all-observed path's bits, the backtest's batched kernel, and the
stream daemon through a 120-bar halt."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import warmup
from engine import math_logic as ml
from engine.feeds import Bar, IterableFeed
from engine.settings import Settings
from engine.store import Store
from engine.stream import StreamDaemon
from logic import backtest_kernels as kernels

LAM = 0.94


def random_covariance(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n + 3))
    cov = 1e-4 * (a @ a.T) / (n + 3)
    return (cov + cov.T) / 2.0


def test_a_missing_ticker_keeps_its_variance_and_its_covariances_decay_by_sqrt_lambda_per_bar() -> None:
    # Arrange: ticker 1 missing for k bars, 0 and 2 observed; ticker 3 missing too
    n, k = 4, 120
    cov0 = random_covariance(n, 1)
    cov = cov0.copy()
    rng = np.random.default_rng(2)
    observed = np.array([True, False, True, False])
    plain = cov0[np.ix_([0, 2], [0, 2])].copy()  # the observed block, updated on its own
    # Act
    for _ in range(k):
        r = np.where(observed, rng.standard_normal(n) * 1e-2, 0.0)
        ml.update_covariance_ewma_observed(cov, r, observed, LAM, validate=False)
        plain = LAM * plain + (1 - LAM) * np.outer(r[[0, 2]], r[[0, 2]])
    # Assert: Σ'_ij = a_i a_j Σ_ij + (1-λ) r_i r_j, r_i = 0 when i is missing
    assert cov[1, 1] == cov0[1, 1] and cov[3, 3] == cov0[3, 3]  # variance unchanged, bit for bit
    assert cov[1, 3] == cov0[1, 3]  # both missing: unchanged
    for j in (0, 2):
        for i in (1, 3):
            assert cov[i, j] == pytest.approx(LAM ** (k / 2) * cov0[i, j], rel=1e-12, abs=0)
            assert cov[j, i] == cov[i, j]
    np.testing.assert_allclose(cov[np.ix_([0, 2], [0, 2])], plain, rtol=1e-12, atol=0)


def test_the_observed_block_gets_the_plain_updates_bits_and_all_observed_is_the_plain_update() -> None:
    n = 37
    cov0 = random_covariance(n, 3)
    r = np.random.default_rng(4).standard_normal(n) * 1e-2
    observed = np.ones(n, dtype=bool)
    plain = ml.update_covariance_ewma(cov0.copy(), r, LAM, kernel=ml.EWMA_REFERENCE_KERNEL)
    # all observed: the plain kernel path, the same bits (and the same object updated in place)
    cov = cov0.copy()
    assert ml.update_covariance_ewma_observed(cov, r, observed, LAM) is cov
    np.testing.assert_array_equal(cov, plain)
    # an explicit numpy reference of the old formula: fl(fl(λ a) + fl(s s))
    s = math.sqrt(1.0 - LAM) * r
    np.testing.assert_array_equal(cov, cov0 * LAM + np.outer(s, s))
    # some missing: the observed block is still the plain update's bits
    observed[[3, 10, 20]] = False
    rm = np.where(observed, r, 0.0)
    plain_m = ml.update_covariance_ewma(cov0.copy(), rm, LAM, kernel=ml.EWMA_REFERENCE_KERNEL)
    cov = ml.update_covariance_ewma_observed(cov0.copy(), rm, observed, LAM)
    block = np.ix_(observed, observed)
    np.testing.assert_array_equal(cov[block], plain_m[block])
    np.testing.assert_array_equal(cov, cov.T)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 12),
    rank=st.integers(1, 14),
    seed=st.integers(0, 2**32 - 1),
    decay=st.floats(0.5, 0.999),
    bars=st.integers(1, 40),
)
def test_property_the_partial_update_is_the_congruence_plus_rank_one_and_stays_symmetric_psd(
    n: int, rank: int, seed: int, decay: float, bars: int
) -> None:
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((n, rank)) * 1e-2
    cov = f @ f.T
    cov = (cov + cov.T) / 2.0
    for _ in range(bars):
        observed = rng.random(n) < 0.6
        r = np.where(observed, rng.standard_normal(n) * rng.choice([1e-4, 1e-2, 0.2]), 0.0)
        a = np.diag(np.where(observed, math.sqrt(decay), 1.0))
        expected = a @ cov @ a + (1.0 - decay) * np.outer(r, r)  # independent: matrix products
        before = cov.copy()
        ml.update_covariance_ewma_observed(cov, r, observed, decay, validate=False)
        np.testing.assert_allclose(cov, expected, rtol=1e-12, atol=1e-15 * np.abs(before).max())
        np.testing.assert_array_equal(cov, cov.T)
        eig = np.linalg.eigvalsh(cov)
        assert eig.min() >= -1e-13 * max(eig.max(), 1e-300)


def test_a_nonzero_return_where_no_price_was_observed_is_refused_and_the_matrix_left_unchanged() -> None:
    cov = random_covariance(3, 5)
    before = cov.copy()
    with pytest.raises(ValueError, match="must be 0"):
        ml.update_covariance_ewma_observed(cov, np.array([0.01, 0.02, 0.0]), np.array([True, False, True]))
    with pytest.raises(ValueError, match="boolean"):
        ml.update_covariance_ewma_observed(cov, np.zeros(3), np.array([1, 0, 1]))
    np.testing.assert_array_equal(cov, before)


def test_the_backtests_batched_kernel_gives_the_partial_updates_bits() -> None:
    n, b = 9, 3
    rng = np.random.default_rng(6)
    covs = np.stack([random_covariance(n, 10 + i) for i in range(b)])
    last = np.exp(rng.standard_normal((b, n)) * 0.1) * 50
    prices = last * np.exp(rng.standard_normal((b, n)) * 1e-2)
    given_mask = rng.random((b, n)) < 0.7
    given_mask[1] = True  # one book with every ticker observed
    prices = np.where(given_mask, prices, last)  # a price carried forward
    mask = kernels.ewma_observed(last, prices, given_mask)
    assert mask is not None
    expected = covs.copy()
    for i in range(b):
        ml.ewma_standardize_and_update(expected[i], np.log(prices[i] / last[i]), LAM, observed=mask[i])
    kernels.ewma_standardize_and_update(covs, last, prices, LAM, mask)
    np.testing.assert_array_equal(covs, expected)
    assert kernels.ewma_observed(last, last * 1.01, given_mask) is None  # every price moved: all data


# -- the stream daemon through a trading halt ---------------------------------------------------------------------


def _normal_var(cov: np.ndarray, x: np.ndarray) -> float:
    return float(stats.norm.ppf(0.99)) * math.sqrt(float(x @ cov @ x)) * math.sqrt(390)


def test_a_ticker_halted_for_120_bars_keeps_its_pre_halt_variance_and_var_in_the_stream(
    store: Store, make_settings: object
) -> None:
    # Arrange: DDD absent from the live feed for 120 one-minute bars while AAA/BBB/CCC print
    settings: Settings = make_settings({"stream": {"max_jump_sigma": 12.0}})  # type: ignore[operator]
    warmup.seed(store, settings, now=1_700_000_000.0)
    snap0 = store.read_market()
    tickers = list(snap0.tickers)
    i = tickers.index("DDD")
    rng = np.random.default_rng(1)
    vols = np.sqrt(np.diag(snap0.cov))
    prices = snap0.prices.copy()
    bars = []
    for k in range(1, 121):
        prices = prices * np.exp(vols * rng.standard_normal(len(tickers)))
        bars.append(
            Bar(1_700_000_000.0 + 60 * k, {t: float(p) for t, p in zip(tickers, prices, strict=True) if t != "DDD"})
        )
    clock = itertools.chain([b.ts for b in bars], itertools.repeat(bars[-1].ts))  # and the end-of-feed beat's
    daemon = StreamDaemon(store, settings, IterableFeed(iter(bars)), interval=0, clock=lambda: next(clock))
    x = np.zeros(len(tickers))
    x[i] = -1000 * snap0.prices[i]
    before = _normal_var(snap0.cov, x)
    # Act
    stats_ = daemon.run()
    # Assert
    snap = store.read_market()
    assert stats_.bars_written == 120
    assert snap.cov[i, i] == snap0.cov[i, i]
    assert abs(_normal_var(snap.cov, x) - before) <= 1e-12 * before
    others = [j for j in range(len(tickers)) if j != i]
    np.testing.assert_allclose(snap.cov[i, others], LAM**60 * snap0.cov[i, others], rtol=1e-12, atol=0)
