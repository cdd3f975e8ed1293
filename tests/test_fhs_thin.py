"""Filtered historical simulation on thinly traded tickers: a missing entry of the window is not "no move".

A ticker that prints in a few percent of the bars has its stand-in 0 in most rows of the window of standardized
returns. Read as data, those zeros made its FHS VaR 0 (95%: fewer than 5% of the scenarios moved) and the gate's
incremental FHS VaR of adding to it 0: unlimited adds approved. ``math_logic.fhs_fill_missing`` fills a missing
entry with a deterministic draw of the ticker's own innovation; ``math_logic.per_bar_returns`` scales a return
that spans g bars since the last print to one bar before it enters the EWMA and the standardization.

Independent computations: the true VaR of the simulated random walk (``Φ⁻¹(c) σ sqrt(h) x``), the stratified
normal order statistic ``-Φ⁻¹((k - ½) / T)`` of a ticker with no observation, the EWMA recursion written out with
numpy, the balanced resample counted by hand, and a full revaluation of the scenario P&L of a book.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from scipy import stats

import warmup
from engine import math_logic as ml
from engine.records import VarMethod
from engine.settings import Settings
from engine.store import Store
from logic.batch import PortfolioLookup, batch_risk, exposure_matrix, read_limits
from logic.monitor import Monitor
from logic.snapshot import risk_figures, usable_prices
from logic.valuation import value_portfolio
from logic.var_methods import risk_model

from .test_batch import _market, _random_settings

SIGMA = 0.001
"""True one-bar volatility of the simulated tickers."""
DAY = 390.0
"""Bars in a day (the horizon of the VaR figures)."""


def _thin_market(
    seed: int, bars: int, share: float, *, gaps: bool, decay: float = 0.94
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """Two random walks of one-bar vol :data:`SIGMA`: ticker 0 prints every bar, ticker 1 in ``share`` of them.

    Returns ``(cov, z, observed, variances)``: the EWMA matrix after the last bar, the standardized returns and
    which entries are observations (the stream's own math, ``ewma_standardize_and_update`` with ``observed``;
    with ``gaps`` a return is scaled by the bars since the ticker's previous print), and ticker 1's one-bar
    variance in the model after each bar.
    """
    rng = np.random.default_rng(seed)
    cov = np.diag([SIGMA**2, SIGMA**2])
    true, last, since = np.zeros(2), np.zeros(2), np.ones(2)
    rows, masks, variances = [], [], []
    for _ in range(bars):
        true += rng.normal(0.0, SIGMA, 2)
        printed = np.array([True, rng.random() < share])
        new = np.where(printed, true, last)
        r, last = new - last, new
        z = ml.ewma_standardize_and_update(cov, r, decay, observed=printed, gaps=since if gaps else None)
        since = np.where(printed, 1.0, since + 1.0)
        rows.append(z)
        masks.append(printed)
        variances.append(float(cov[1, 1]))
    return cov, np.array(rows), np.array(masks), variances


def _true_var(confidence: float, exposure: float) -> float:
    return float(stats.norm.ppf(confidence)) * SIGMA * math.sqrt(DAY) * exposure


# -- the reproduction: a ticker printing in 6% of the bars ------------------------------------------------------------


def test_a_thin_tickers_fhs_var_is_positive_and_of_the_true_order_and_grows_with_an_add() -> None:
    # Arrange: the review's process (seed 11, 3000 bars, 6% prints), returns scaled by their gap
    cov, z, observed = _thin_market(11, 3000, 0.06, gaps=True)[:3]
    window, mask = z[-500:], observed[-500:]
    x = np.array([0.0, 1e6])
    # Act
    fhs = risk_model(VarMethod.FHS, cov, horizon_bars=DAY, standardized=window, observed=mask)
    normal = risk_model(VarMethod.NORMAL, cov, horizon_bars=DAY)
    unmasked = risk_model(VarMethod.FHS, cov, horizon_bars=DAY, standardized=window)
    after = fhs.var_after(fhs.prepare(x), 1, 5e6, 0.95)
    # Assert
    assert int(mask[:, 1].sum()) == 39  # 39 prints of 500 bars: the stand-in 0 everywhere else
    assert unmasked.var(x, 0.95) == 0.0  # the defect: the stand-ins read as no move
    for c in (0.95, 0.99):
        # The EWMA at λ = 0.94 updated only at prints averages n = (1 + λ) / (1 - λ) ≈ 32 of them, so its vol is
        # off by about 1 / sqrt(2n) ≈ 12.5% (one sd): ±35% is 2.8 sd of that alone.
        assert 0.65 < fhs.var(x, c) / _true_var(c, 1e6) < 1.35, c
        # Given the model's σ(now), the filled column is the ticker's 39 observed innovations and the stratified
        # normal: within 10% of the parametric figure (30 seeds: 0.98 to 1.09)
        assert 0.9 < fhs.var(x, c) / normal.var(x, c) < 1.1, c
    assert after == pytest.approx(6.0 * fhs.var(x, 0.95), rel=1e-12)  # one ticker: the VaR scales with the book


def test_the_one_bar_variance_of_a_thin_ticker_is_unbiased_once_returns_are_scaled_by_their_gap() -> None:
    # Arrange / Act: 20,000 bars, about 1,200 prints; the model's one-bar variance after every bar
    _, z, observed, scaled = _thin_market(5, 20_000, 0.06, gaps=True)
    _, z_raw, _, raw = _thin_market(5, 20_000, 0.06, gaps=False)
    burn = 2_000
    # Assert: the time average of the EWMA variance over ~1,100 prints has a relative sd of about
    # sqrt(2 / 1100) ≈ 4% (the estimates at consecutive prints overlap, so a bit more): ±15% is over 3 sd
    assert 0.85 < np.mean(scaled[burn:]) / SIGMA**2 < 1.15
    # the one-bar innovations have unit variance
    thin = observed[burn:, 1]
    assert 0.85 < np.mean(np.square(z[burn:][thin, 1])) < 1.15
    # unscaled, a g-bar return enters as one bar: the variance is inflated by about the mean gap (1 / 0.06 ≈ 17)
    assert np.mean(raw[burn:]) / SIGMA**2 > 8.0
    assert not np.array_equal(z, z_raw)


def test_a_return_spanning_g_bars_enters_the_ewma_as_its_variance_over_g_and_is_standardized_by_sigma_root_g() -> None:
    cov = np.array([[4e-6, 1e-6], [1e-6, 9e-6]])
    r, g, lam = np.array([0.003, -0.012]), np.array([1.0, 9.0]), 0.94
    expected = cov.copy()
    scaled = r / np.sqrt(g)  # the EWMA recursion written out, on one-bar returns
    expected = lam * expected + (1 - lam) * np.outer(scaled, scaled)

    got = cov.copy()
    z = ml.ewma_standardize_and_update(got, r, lam, observed=np.array([True, True]), gaps=g)

    np.testing.assert_allclose(got, expected, rtol=1e-15)
    np.testing.assert_allclose(z, [0.003 / 0.002, -0.012 / (0.003 * 3.0)], rtol=1e-15)
    z_obs, mask = ml.standardize_observed(r, np.sqrt(np.diagonal(cov)), np.array([True, True]), gaps=g)
    np.testing.assert_array_equal(z_obs, z)
    assert mask.all()
    with pytest.raises(ValueError, match="gaps must be > 0"):
        ml.per_bar_returns(r, [1.0, 0.0])  # at the boundary: no variance spanned
    tiny = math.nextafter(0.0, 1.0)  # one unit over it: a span, however small (session_spans gives spans < 1)
    assert np.isfinite(ml.per_bar_returns(np.array([0.0, 1e-200]), [1.0, tiny])).all()
    np.testing.assert_array_equal(ml.per_bar_returns(r, [1.0, 1.0]), r)  # at the boundary: the same bits


def test_returns_of_one_bar_give_the_same_bits_with_or_without_gaps() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(0, 0.01, (40, 5))
    base = a.T @ a / 40 + np.eye(5) * 1e-5
    r = rng.normal(0, 0.01, 5)
    observed = np.array([True, False, True, True, False])
    r[~observed] = 0.0
    for mask in (None, observed, np.ones(5, dtype=bool)):
        plain, ones = base.copy(), base.copy()
        z_plain = ml.ewma_standardize_and_update(plain, r, 0.94, observed=mask)
        z_ones = ml.ewma_standardize_and_update(ones, r, 0.94, observed=mask, gaps=np.ones(5))
        np.testing.assert_array_equal(z_ones, z_plain)
        np.testing.assert_array_equal(ones, plain)


# -- the fill -------------------------------------------------------------------------------------------------------


def _window(rng: np.random.Generator, t: int, observed_counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """A (t, n) window of standard t(5) innovations; column j observed in ``observed_counts[j]`` random rows."""
    z = rng.standard_t(5, (t, len(observed_counts)))
    mask = np.zeros(z.shape, dtype=bool)
    for j, m in enumerate(observed_counts):
        mask[rng.choice(t, m, replace=False), j] = True
    z[~mask] = 0.0
    return z, mask


@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_a_ticker_never_observed_gets_the_stratified_normal_tail_exactly(confidence: float) -> None:
    rng = np.random.default_rng(1)
    z, mask = _window(rng, 500, [500, 0])
    vol = np.array([0.002, 0.0015])
    x = np.array([0.0, 2e6])

    model = risk_model(VarMethod.FHS, None, horizon_bars=DAY, standardized=z, current_vol=vol, observed=mask)

    k = math.ceil((1 - confidence) * 500 - 1e-9)
    expected = -float(stats.norm.ppf((k - 0.5) / 500)) * 0.0015 * math.sqrt(DAY) * 2e6
    assert model.var(x, confidence) == pytest.approx(expected, rel=1e-12)


def test_below_the_minimum_count_the_fill_is_the_normal_and_at_it_a_balanced_resample() -> None:
    rng = np.random.default_rng(2)
    t, m = 500, ml.FHS_MIN_OBSERVED
    z, mask = _window(rng, t, [m - 1, m])
    vol = np.array([0.001, 0.001])

    filled = ml.fhs_fill_missing(z, mask, vol)

    np.testing.assert_array_equal(filled[mask], z[mask])  # the observations are kept
    below, q = filled[~mask[:, 0], 0], t - (m - 1)  # one unit under the minimum: the stratified normal
    np.testing.assert_allclose(np.sort(below), stats.norm.ppf((np.arange(q) + 0.5) / q), rtol=1e-12, atol=1e-15)
    at = filled[:, 1]  # at the minimum: each observation used ⌊q/m⌋ or ⌈q/m⌉ times, here exactly 5 in all
    values, counts = np.unique(at, return_counts=True)
    assert len(values) == m and set(counts.tolist()) == {t // m}
    np.testing.assert_array_equal(np.sort(values), np.sort(z[mask[:, 1], 1]))


def test_a_fully_observed_window_gives_the_same_bits_with_or_without_its_mask() -> None:
    rng = np.random.default_rng(4)
    z = rng.standard_t(5, (200, 6))
    z[3, 2] = 0.0  # a price that arrived unchanged: data
    vol = rng.uniform(0.001, 0.01, 6)
    everywhere = np.ones(z.shape, dtype=bool)
    x = rng.normal(0, 1e5, 6)

    plain = risk_model(VarMethod.FHS, None, horizon_bars=DAY, standardized=z, current_vol=vol)
    masked = risk_model(VarMethod.FHS, None, horizon_bars=DAY, standardized=z, current_vol=vol, observed=everywhere)

    np.testing.assert_array_equal(ml.fhs_scenarios(z, vol, observed=everywhere), z * vol)
    np.testing.assert_array_equal(masked.scenarios, plain.scenarios)
    assert masked.var(x, 0.99) == plain.var(x, 0.99)


def test_the_fill_is_per_ticker_so_a_sub_book_sees_the_universes_numbers_and_two_thin_names_do_not_hedge() -> None:
    rng = np.random.default_rng(5)
    z, mask = _window(rng, 500, [500, 30, 250, 0, 0])
    mask[:, 4] = mask[:, 3]  # two never-observed tickers: the same missing rows
    vol = np.array([0.002, 0.001, 0.003, 0.0012, 0.0012 * (1 + 2**-40)])

    full = ml.fhs_scenarios(z, vol, observed=mask)
    order = [3, 1, 4]
    sub = ml.fhs_scenarios(z[:, order], vol[order], observed=mask[:, order])

    np.testing.assert_array_equal(sub, full[:, order])  # column by column: any subset, any order
    assert (full[:, 1:] != 0.0).mean() > 0.99  # every scenario moves the thin names
    pair = risk_model(VarMethod.FHS, None, horizon_bars=DAY, standardized=z, current_vol=vol, observed=mask)
    x = np.array([0.0, 0.0, 0.0, 1e6, -1e6])  # long one never-observed name, short the other
    alone = pair.var(np.array([0.0, 0.0, 0.0, 1e6, 0.0]), 0.95)
    # not the same draws in the same rows (a riskless pair): independent arrangements, the spread of two
    # independent unit innovations is sqrt(2) times one; |ρ| < 0.2 is over 4 sd of a sample correlation of 500
    assert abs(np.corrcoef(full[:, 3], full[:, 4])[0, 1]) < 0.2
    assert pair.var(x, 0.95) == pytest.approx(math.sqrt(2) * alone, rel=0.15)


# -- through the store: the gate and the vectorised monitor --------------------------------------------------------


def _thin_seed(settings: Settings, seed: int, thin: dict[str, int]) -> warmup.SeedMarket:
    """The settings' market with a window of normal innovations where each ticker of ``thin`` is observed in
    only that many rows (its stand-in 0 elsewhere)."""
    base = warmup.market_from_settings(settings)
    t = settings.model.fhs_window
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((t, len(base.tickers)))
    mask = np.ones(z.shape, dtype=bool)
    for ticker, m in thin.items():
        j = base.tickers.index(ticker)
        mask[:, j] = False
        mask[rng.choice(t, m, replace=False), j] = True
    z[~mask] = 0.0
    return dataclasses.replace(base, standardized=z, observed=mask)


def test_the_gate_refuses_a_large_add_to_a_thin_ticker_under_fhs_exactly_at_the_var_limit(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    from logic.risk_manager import RiskManager

    def settings_at(limit: float) -> Settings:
        return make_settings({
            "model": {"fhs_window": 500, "var_method": "fhs"},
            "limits": {"var_limit": limit, "max_concentration": 1.0, "max_order_notional": 1e7,
                       "max_order_qty": 1_000_000},
        })  # fmt: skip

    probe = settings_at(1e12)
    market = _thin_seed(probe, 8, {"DDD": 30})  # DDD prints in 6% of the bars
    warmup.seed(store, probe, history=market, now=time.time())
    qty = 30_000  # $750k of DDD on a $200k book (cash $1m)

    decision = RiskManager(store.client, "main", probe).check_trade_impact("DDD", qty, "BUY")

    snap = store.read_market()
    c, h = probe.limits.var_confidence, DAY * probe.limits.var_horizon_days
    holdings = probe.portfolio("main").holdings
    x = np.array([holdings.get(t, 0) * p for t, p in zip(snap.tickers, snap.prices, strict=True)])
    d = snap.tickers.index("DDD")
    x_after = x.copy()
    x_after[d] += qty * snap.prices[d]
    vol = np.sqrt(np.diagonal(snap.cov))
    scenarios = ml.fhs_fill_missing(market.standardized, market.observed, vol) * vol
    losses = np.sort(-(scenarios @ x_after))[::-1]  # the book with the trade revalued in every scenario
    k = math.ceil((1 - c) * len(losses) - 1e-9)
    full = math.sqrt(h) * float(losses[k - 1])
    dd = float(x_after[d]) * vol[d] * math.sqrt(h)  # DDD alone, normal: the order the add must carry
    zero_filled = math.sqrt(h) * float(np.sort(-((market.standardized * vol) @ x_after))[::-1][k - 1])
    assert decision["status"] == "APPROVED", decision["reasons"]
    assert decision["var_after"] == pytest.approx(full, rel=1e-9)
    assert decision["var_after"] > 0.9 * float(stats.norm.ppf(c)) * dd  # of the order of the add's own VaR
    assert zero_filled < 0.25 * decision["var_after"]  # what the stand-ins made of it

    var_after = decision["var_after"]
    at = RiskManager(store.client, "main", settings_at(var_after)).check_trade_impact("DDD", qty, "BUY")
    over = RiskManager(store.client, "main", settings_at(math.nextafter(var_after, 0.0))).check_trade_impact(
        "DDD", qty, "BUY"
    )
    assert at["status"] == "APPROVED"  # exactly at the limit
    assert over["status"] == "REJECTED" and "VAR_LIMIT" in {r["code"] for r in over["reasons"]}
    # a desk limit the zero-filled figure would have passed
    desk = RiskManager(store.client, "main", settings_at(2.0 * zero_filled)).check_trade_impact("DDD", qty, "BUY")
    assert desk["status"] == "REJECTED"


def test_the_vectorised_monitor_fills_a_thin_ticker_as_the_per_portfolio_model_does(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = _random_settings(make_settings, seed=11)
    thin = {"T00": 30, "T03": 0, "T05": ml.FHS_MIN_OBSERVED - 1, "T07": ml.FHS_MIN_OBSERVED, "T11": 300}
    market_seed = _thin_seed(settings, 9, thin)
    warmup.seed(store, settings, history=market_seed)
    monitor = Monitor(store, settings, idle_refresh_seconds=0)
    market = _market(monitor, store)
    lookup = PortfolioLookup(settings)
    pids = [p for p in settings.portfolio_ids if lookup.var_method_for(p) is VarMethod.FHS]
    limits = read_limits(store, pids, lookup, {})
    vectors = []
    for pid in pids:
        valuation = value_portfolio(store.read_portfolio(pid), market.header)
        vectors.append(np.where(usable_prices(valuation), valuation.market_values, 0.0))
    exposures = exposure_matrix(vectors, len(market.header.tickers))
    thin_cols = [market.header.tickers.index(t) for t in thin]
    assert (exposures[:, thin_cols] != 0).any()  # some FHS book holds a thin ticker

    figures = batch_risk(market, exposures, [VarMethod.FHS] * len(pids), [limits[p] for p in pids], settings.model)

    vol = np.sqrt(np.diagonal(market.cov))
    filled = risk_model(
        VarMethod.FHS, None, horizon_bars=DAY, standardized=market.standardized, current_vol=vol,
        observed=market.observed,
    )  # fmt: skip
    for p, pid in enumerate(pids):
        held = np.flatnonzero(exposures[p])
        ref = risk_figures(market, VarMethod.FHS, held, exposures[p, held], settings.limits_for(pid), settings.model)
        got: Any = figures[p]
        for name in ("var95", "var99", "cvar95", "cvar99", "limit_var"):
            np.testing.assert_allclose(getattr(got, name), getattr(ref, name), rtol=1e-12, atol=0, err_msg=pid)
        np.testing.assert_allclose(got.var99, filled.var(exposures[p], 0.99), rtol=1e-12, atol=0, err_msg=pid)


def test_the_backtests_batched_kernel_scales_by_the_gap_as_math_logic_does() -> None:
    from logic import backtest_kernels as kernels

    rng = np.random.default_rng(12)
    a = rng.normal(0, 0.01, (3, 40, 4))
    covs = np.ascontiguousarray(np.einsum("bti,btj->bij", a, a) / 40)
    last = rng.uniform(10, 100, (3, 4))
    prices = last * np.exp(rng.normal(0, 0.01, (3, 4)))
    gaps = rng.integers(1, 20, (3, 4)).astype(float)
    expected_covs = covs.copy()
    expected_z = np.array([
        ml.ewma_standardize_and_update(expected_covs[b], np.log(prices[b] / last[b]), 0.94, gaps=gaps[b])
        for b in range(3)
    ])  # fmt: skip

    z = kernels.ewma_standardize_and_update(covs, last, prices, 0.94, gaps=gaps)

    np.testing.assert_array_equal(z, expected_z)
    np.testing.assert_array_equal(covs, expected_covs)
    with pytest.raises(ValueError, match="gaps"):  # at the boundary: no variance spanned
        kernels.ewma_standardize_and_update(covs, last, prices, 0.94, gaps=np.zeros((3, 4)))
    tiny = np.full((3, 4), np.nextafter(0.0, 1.0))  # one unit over it: a span, however small (a night's share)
    assert np.isfinite(kernels.ewma_standardize_and_update(covs.copy(), last, last, 0.94, gaps=tiny)).all()


@pytest.mark.parametrize("missing", [1, 37, ml.FHS_MIN_OBSERVED - 1, ml.FHS_MIN_OBSERVED, ml.FHS_MIN_OBSERVED + 1])
def test_the_resample_spreads_its_picks_evenly_over_the_observations_not_the_oldest(missing: int) -> None:
    # Arrange: exactly FHS_MIN_OBSERVED observations, numbered 1..m in time order (a column whose calm start
    # would fill every gap if the oldest were taken), then `missing` missing bars
    m = ml.FHS_MIN_OBSERVED
    t = m + missing
    z = np.zeros((t, 1))
    mask = np.zeros((t, 1), dtype=bool)
    rows = np.linspace(0, t - 1, m).round().astype(int)  # the observations spread through the window
    mask[rows, 0] = True
    z[rows, 0] = np.arange(1.0, m + 1.0)
    # Act
    filled = ml.fhs_fill_missing(z, mask, np.array([0.001]))[:, 0]
    # Assert: the j-th missing entry (time order) is the observation in the middle of the j-th of q equal strata,
    # number ⌊(j + ½)·m/q⌋ + 1, computed here in floating point (exact: a whole quotient is an exact one)
    expected = [float(math.floor((j + 0.5) * m / missing) + 1) for j in range(missing)]
    assert filled[~mask[:, 0]].tolist() == expected
    np.testing.assert_array_equal(filled[mask[:, 0]], np.arange(1.0, m + 1.0))
    values, counts = np.unique(filled[~mask[:, 0]], return_counts=True)
    if missing <= m:  # each observation at most once, the picks m/q apart, the first and last half that from the ends
        assert counts.max() == 1
        assert values[0] - 1 <= m / (2 * missing) and m - values[-1] <= m / (2 * missing)
        assert np.all(np.diff(values) >= m // missing) and np.all(np.diff(values) <= -(-m // missing))
    else:  # each ⌊q/m⌋ or ⌈q/m⌉ times: here one observation twice, every other once
        assert len(values) == m and sorted(counts.tolist()) == [1] * (m - 1) + [2]


def test_fewer_missing_than_observed_draw_the_recent_tail_too() -> None:
    # Arrange: 400 observations whose last 40 are a crisis (innovations of -5), 100 bars missing
    t, m = 500, 400
    z = np.zeros((t, 1))
    mask = np.zeros((t, 1), dtype=bool)
    mask[:m, 0] = True
    z[: m - 40, 0] = 0.5
    z[m - 40 : m, 0] = -5.0
    # Act
    filled = ml.fhs_fill_missing(z, mask, np.array([0.001]))[m:, 0]
    # Assert: every fourth observation (the 3rd, 7th, ..., 399th): 90 calm, 10 of the crisis (the old picks, the
    # oldest 100, had none)
    assert (filled == 0.5).sum() == 90 and (filled == -5.0).sum() == 10
