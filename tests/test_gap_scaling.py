"""A thin ticker's return spans the bars since its last print: the stream daemon, the backtester and the warm-up
scale it to one bar (``r / sqrt(g)``, ``engine.math_logic.per_bar_returns``) before it enters the EWMA covariance
and the standardized window, with ``g`` counted per ticker and kept with the market snapshot in Redis.

Independent computations: the true one-bar variance of the simulated random walk, the mean gap ``1/p`` of a ticker
printing with probability ``p`` (geometric), the EWMA recursion written out with numpy, and the plain
(unscaled) update of ``math_logic`` for "nothing changed where every ticker prints".
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

import warmup
from engine import math_logic as ml
from engine.errors import CorruptDataError
from engine.feeds import Bar, IterableFeed
from engine.settings import Settings
from engine.store import Store
from engine.store.codec import decode_print_gaps, encode_print_gaps
from engine.store.keys import MARKET_KEY, PRINT_GAPS_FIELD
from engine.stream import StreamDaemon
from logic.backtest import BacktestConfig, Backtester

THIN = 0
"""Index of the thin ticker (AAA) in the test universe; the others print every bar."""


def _thin_feed(
    start_prices: np.ndarray, sigma: np.ndarray, tickers: tuple[str, ...], bars: int, p: float, seed: int
) -> tuple[list[Bar], np.ndarray, np.ndarray]:
    """Independent random walks of one-bar vol ``sigma``; ticker :data:`THIN` prints with probability ``p`` per bar.

    Returns (the bars, the price of each ticker after each bar as the daemon carries it, which tickers printed)."""
    rng = np.random.default_rng(seed)
    log_true = np.log(start_prices)
    last = start_prices.copy()
    bars_out, carried, printed_all = [], [], []
    for t in range(bars):
        log_true = log_true + rng.normal(0.0, sigma)
        printed = np.ones(len(tickers), dtype=bool)
        printed[THIN] = rng.random() < p
        last = np.where(printed, np.exp(log_true), last)
        prices = {k: float(last[i]) for i, k in enumerate(tickers) if printed[i]}
        bars_out.append(Bar(1.7e9 + 60.0 * t, prices))
        carried.append(last.copy())
        printed_all.append(printed)
    return bars_out, np.array(carried), np.array(printed_all)


def _numpy_ewma(
    cov0: np.ndarray, p0: np.ndarray, carried: np.ndarray, printed: np.ndarray, *, gaps: bool, decay: float
):
    """Σ' = AΣA + (1-λ) r rᵀ, A = diag(sqrt(λ) where printed, 1 elsewhere), r = ln(P/P_prev) / sqrt(g) (g: bars
    since the ticker's previous print + 1; 1 everywhere without ``gaps``); numpy only. Returns the matrices
    after each bar (only their diagonals, to keep it small) and the final matrix."""
    cov, prev, since = cov0.copy(), p0.copy(), np.zeros(len(p0))
    diagonals = []
    for prices, seen in zip(carried, printed, strict=True):
        r = np.log(prices / prev)
        if gaps:
            r = r / np.sqrt(since + 1.0)
        a = np.where(seen, math.sqrt(decay), 1.0)
        cov = a[:, None] * cov * a[None, :] + (1.0 - decay) * np.outer(r, r)
        since = np.where(seen, 0.0, since + 1.0)
        prev = prices
        diagonals.append(np.diagonal(cov).copy())
    return np.array(diagonals), cov


def _run(store: Store, settings: Settings, bars: list[Bar]) -> StreamDaemon:
    daemon = StreamDaemon(store, settings, IterableFeed(bars), interval=0)
    daemon.run()
    return daemon


# -- the statistics: a ticker printing in 6% of the bars ---------------------------------------------------------

P = 0.06
BARS = 10_000
BURN_IN = 500


def test_a_thin_tickers_model_variance_is_its_true_one_bar_variance_and_without_gaps_1_over_p_too_high(
    seeded_store: Store, settings: Settings
) -> None:
    # Arrange: true one-bar vols of the seeded matrix; AAA prints in 6% of the bars
    start = seeded_store.read_market()
    sigma = np.sqrt(np.diagonal(start.cov))
    bars, carried, printed = _thin_feed(start.prices, sigma, start.tickers, BARS, P, seed=7)
    # Act
    daemon = _run(seeded_store, settings, bars)
    # Assert: the stream's matrix is the numpy recursion with gaps (every bar's update, not only the last)
    decay = settings.model.ewma_decay
    diag_gaps, cov_gaps = _numpy_ewma(start.cov, start.prices, carried, printed, gaps=True, decay=decay)
    diag_old, _ = _numpy_ewma(start.cov, start.prices, carried, printed, gaps=False, decay=decay)
    snap = seeded_store.read_market()
    np.testing.assert_allclose(snap.cov, cov_gaps, rtol=1e-9, atol=0)
    np.testing.assert_allclose(daemon.cov, snap.cov, rtol=0, atol=0)
    # the time average of the EWMA variance is the mean of M = (prints after burn-in) draws of r²/g = σ² χ²₁:
    # relative standard error sqrt(2 / M); without the scaling each draw is g σ² χ²₁ with E[g] = 1/p (geometric)
    # and relative sd sqrt(3 E[g²] / E[g]² - 1) = sqrt(3 (2 - p) - 1)
    m = int(printed[BURN_IN:, THIN].sum())
    ratio = float(np.mean(diag_gaps[BURN_IN:, THIN])) / sigma[THIN] ** 2
    tolerance = 4.0 * math.sqrt(2.0 / m)
    assert abs(ratio - 1.0) < tolerance, (ratio, tolerance, m)
    old_ratio = float(np.mean(diag_old[BURN_IN:, THIN])) / sigma[THIN] ** 2
    old_tolerance = 4.0 * math.sqrt((3.0 * (2.0 - P) - 1.0) / m)
    assert abs(old_ratio * P - 1.0) < old_tolerance, (old_ratio, old_tolerance)  # the old behaviour: ~1/p
    assert old_ratio > 8.0 * ratio
    # the liquid tickers print every bar: their variance is their true one as before
    liquid = np.mean(diag_gaps[BURN_IN:, 1:], axis=0) / sigma[1:] ** 2
    assert np.all(np.abs(liquid - 1.0) < 4.0 * math.sqrt(2.0 / (BARS - BURN_IN)) * 4.0)


def test_the_standardized_window_holds_one_bar_innovations_of_the_thin_ticker(store: Store, make_settings) -> None:
    # Arrange: a 400-row window, all the stream's
    settings = make_settings({"model": {"fhs_window": 400}})
    warmup.seed(store, settings, now=1.0)
    start = store.read_market()
    sigma = np.sqrt(np.diagonal(start.cov))
    bars, carried, printed = _thin_feed(start.prices, sigma, start.tickers, 3000, 0.1, seed=3)
    # Act
    _run(store, settings, bars)
    # Assert: the rows are r / (σ_before sqrt(g)) of the numpy recursion
    window = store.read_standardized()
    decay = settings.model.ewma_decay
    cov, prev, since, rows = start.cov.copy(), start.prices.copy(), np.zeros(4), []
    for prices, seen in zip(carried, printed, strict=True):
        r = np.log(prices / prev) / np.sqrt(since + 1.0)
        rows.append(r / np.sqrt(np.diagonal(cov)))
        a = np.where(seen, math.sqrt(decay), 1.0)
        cov = a[:, None] * cov * a[None, :] + (1.0 - decay) * np.outer(r, r)
        since, prev = np.where(seen, 0.0, since + 1.0), prices
    np.testing.assert_allclose(window.values, np.array(rows)[-400:], rtol=1e-9, atol=1e-15)
    np.testing.assert_array_equal(window.observed[:, THIN], printed[-400:, THIN])
    thin = window.values[window.observed[:, THIN], THIN]
    # unit-variance innovations (without the scaling about 1/p = 10): 4 standard errors of a χ² mean
    assert abs(np.mean(thin**2) - 1.0) < 4.0 * math.sqrt(2.0 / thin.size)


# -- g exactly 1 changes nothing -----------------------------------------------------------------------------------


def test_a_fully_printing_universe_gives_the_matrix_and_window_of_the_plain_update_bit_for_bit(
    seeded_store: Store, settings: Settings
) -> None:
    # Arrange
    start = seeded_store.read_market()
    sigma = np.sqrt(np.diagonal(start.cov))
    bars, carried, _ = _thin_feed(start.prices, sigma, start.tickers, 200, 1.0, seed=5)  # p = 1: every bar
    # Act
    _run(seeded_store, settings, bars)
    # Assert: math_logic's plain update (no gaps, no mask), the path before the counts were kept
    cov, prev, zs = start.cov.copy(), start.prices.copy(), []
    for prices in carried:
        zs.append(ml.ewma_standardize_and_update(cov, ml.log_returns(prev, prices), settings.model.ewma_decay))
        prev = prices
    snap, since = seeded_store.read_market_state()
    assert np.array_equal(snap.cov, cov)
    assert np.array_equal(since, np.zeros(4))
    window = seeded_store.read_standardized()  # its last 200 rows are the stream's
    assert np.array_equal(window.values[-200:], np.array(zs))
    assert window.observed[-200:].all()


def test_the_backtester_on_the_same_thin_bars_holds_the_streams_matrix_and_window(
    seeded_store: Store, settings: Settings
) -> None:
    # Arrange: the backtester starts from the stream's starting matrix and prices
    start = seeded_store.read_market()
    sigma = np.sqrt(np.diagonal(start.cov))
    bars, carried, printed = _thin_feed(start.prices, sigma, start.tickers, 300, 0.2, seed=11)
    bt = Backtester(start.tickers, BacktestConfig(window=50, decay=settings.model.ewma_decay))
    bt.cov, bt.last_prices, bt.bar = start.cov.copy(), start.prices.copy(), 0
    # Act
    _run(seeded_store, settings, bars)
    for prices, seen in zip(carried, printed, strict=True):
        bt.step(prices, np.zeros(4), observed=seen)
    # Assert: the same floats (the same kernels' bits), the window's thin entries included
    snap, since = seeded_store.read_market_state()
    assert np.array_equal(bt.cov, snap.cov)
    assert np.array_equal(bt.since, since)
    window = seeded_store.read_standardized()
    assert np.array_equal(bt.window, window.values[-50:])
    assert np.array_equal(bt.observed, window.observed[-50:])
    # the count travels with the backtester's state
    again = Backtester.from_dict(bt.to_dict())
    assert np.array_equal(again.since, bt.since)
    old = bt.to_dict()
    del old["since"]  # a state stored before the count: every next return spans one bar
    assert not Backtester.from_dict(old).since.any()


def test_the_backtester_scales_a_gap_and_without_gaps_feeds_the_plain_update() -> None:
    # Arrange: two tickers, B misses bars 2 and 3 and prints again at bar 4 (g = 3)
    config = BacktestConfig(window=5, seed_rows=2)
    bt = Backtester(("A", "B"), config)
    path = [(100.0, 50.0), (101.0, 50.5), (100.5, 50.5), (102.0, 50.5), (101.0, 52.0), (101.5, 51.0)]
    seen = [None, None, (True, False), (True, False), None, None]
    # Act
    for prices, mask in zip(path, seen, strict=True):
        bt.step(np.array(prices), np.zeros(2), observed=None if mask is None else np.array(mask))
    # Assert: the numpy recursion with B's bar-4 return over sqrt(3)
    p = np.array(path)
    r = np.log(p[1:] / p[:-1])
    r[3, 1] /= math.sqrt(3.0)
    cov = r[:2].T @ r[:2] / 2
    for k in (2, 3, 4):
        a = np.array([math.sqrt(config.decay), 1.0 if k in (1, 2) else math.sqrt(config.decay)])
        cov = a[:, None] * cov * a[None, :] + (1.0 - config.decay) * np.outer(r[k], r[k])
    np.testing.assert_allclose(bt.cov, cov, rtol=1e-12, atol=0)
    assert not bt.since.any()


# -- the count in Redis: a restart, an older store, a foreign write -----------------------------------------------


def _gap_bars(start_prices: np.ndarray, tickers: tuple[str, ...]) -> list[Bar]:
    """AAA prints in bar 0, misses bars 1-5, prints in bar 6; the others every bar."""
    bars = []
    for t in range(8):
        prices = {k: float(start_prices[i] * (1.0 + 0.001 * (t + 1) * (-1) ** (i + t))) for i, k in enumerate(tickers)}
        if 1 <= t <= 5:
            del prices["AAA"]
        bars.append(Bar(1.7e9 + 60.0 * t, prices))
    return bars


def test_a_restart_mid_gap_continues_the_count(seeded_store: Store, settings: Settings) -> None:
    # Arrange: one daemon through every bar, on a copy of the seeded store's market
    start = seeded_store.read_market()
    bars = _gap_bars(start.prices, start.tickers)
    _run(seeded_store, settings, bars)
    continuous = seeded_store.read_market()
    seeded_store.client.flushall()
    warmup.seed(seeded_store, settings, now=start.ts)
    assert np.array_equal(seeded_store.read_market().cov, start.cov)
    # Act: a daemon stops in the middle of AAA's gap; a new one (a fresh process's state) goes on
    _run(seeded_store, settings, bars[:4])
    _, since_at_stop = seeded_store.read_market_state()
    _run(seeded_store, settings, bars[4:])
    # Assert
    assert since_at_stop.tolist() == [3.0, 0.0, 0.0, 0.0]  # AAA missed bars 1, 2 and 3
    restarted, since = seeded_store.read_market_state()
    assert since.tolist() == [0.0, 0.0, 0.0, 0.0]  # every ticker printed in bar 7
    assert np.array_equal(restarted.cov, continuous.cov)
    # and AAA's bar-6 return entered over sqrt(6) (its last print: bar 0): the numpy recursion
    cov = start.cov.copy()
    prev, since_np = start.prices.copy(), np.zeros(4)
    for bar in bars:
        prices = np.array([bar.prices.get(k, prev[i]) for i, k in enumerate(start.tickers)])
        seen = np.array([k in bar.prices for k in start.tickers])
        r = np.log(prices / prev) / np.sqrt(since_np + 1.0)
        a = np.where(seen, math.sqrt(settings.model.ewma_decay), 1.0)
        cov = a[:, None] * cov * a[None, :] + (1.0 - settings.model.ewma_decay) * np.outer(r, r)
        since_np, prev = np.where(seen, 0.0, since_np + 1.0), prices
    np.testing.assert_allclose(restarted.cov, cov, rtol=1e-12, atol=0)


def test_a_store_without_the_count_or_with_a_stale_one_loads_as_one_bar_each(
    seeded_store: Store, settings: Settings
) -> None:
    # Arrange: AAA misses bars 1-5 (count 5 after bar 5)
    start = seeded_store.read_market()
    bars = _gap_bars(start.prices, start.tickers)
    _run(seeded_store, settings, bars[:6])
    snap, since = seeded_store.read_market_state()
    assert since[0] == 5.0
    # Act + Assert: an older store (no field) and a snapshot rewritten by a writer that does not keep the count
    seeded_store.client.hdel(MARKET_KEY, PRINT_GAPS_FIELD)
    assert not seeded_store.read_market_state()[1].any()
    seeded_store.write_print_gaps(snap.version, since)
    seeded_store.write_market(replace(snap, version=snap.version + 1))  # e.g. a split's new version
    assert not seeded_store.read_market_state()[1].any()
    # the daemon then takes AAA's next return as one bar's: the update of before
    daemon = _run(seeded_store, settings, bars[6:7])
    cov = snap.cov.copy()
    prices = np.array([bars[6].prices[k] for k in start.tickers])
    ml.update_covariance_ewma(cov, ml.log_returns(snap.prices, prices), settings.model.ewma_decay)
    assert np.array_equal(daemon.cov, cov)


def test_add_ticker_keeps_the_counts_and_the_new_ticker_starts_at_0(seeded_store: Store, settings: Settings) -> None:
    start = seeded_store.read_market()
    _run(seeded_store, settings, _gap_bars(start.prices, start.tickers)[:3])
    version = warmup.add_ticker(seeded_store, settings, "EEE", 10.0, 0.3)
    snap, since = seeded_store.read_market_state()
    assert snap.version == version and snap.tickers[-1] == "EEE"
    assert since.tolist() == [2.0, 0.0, 0.0, 0.0, 0.0]


def test_a_corrupt_count_of_the_current_version_is_a_coded_error(seeded_store: Store) -> None:
    snap = seeded_store.read_market()
    seeded_store.client.hset(MARKET_KEY, PRINT_GAPS_FIELD, b"%d:garbage" % snap.version)
    with pytest.raises(CorruptDataError):
        seeded_store.read_market_state()
    seeded_store.client.hset(MARKET_KEY, PRINT_GAPS_FIELD, b"no version")
    with pytest.raises(CorruptDataError):
        seeded_store.read_market_state()


def test_the_codec_takes_whole_counts_from_0_and_refuses_the_rest() -> None:
    raw = encode_print_gaps(7, [0.0, 3.0])
    assert decode_print_gaps(raw, version=7, n=2).tolist() == [0.0, 3.0]
    assert decode_print_gaps(raw, version=8, n=2).tolist() == [0.0, 0.0]  # another version's: stale
    assert decode_print_gaps(None, version=7, n=2).tolist() == [0.0, 0.0]  # none stored
    with pytest.raises(CorruptDataError):
        decode_print_gaps(raw, version=7, n=3)
    for bad in ([-1.0, 0.0], [0.5, 0.0], [math.nan, 0.0]):
        with pytest.raises(ValueError):
            encode_print_gaps(7, bad)


# -- the warm-up -------------------------------------------------------------------------------------------------


def test_the_warm_ups_history_scales_by_gaps_and_gaps_of_1_change_no_bit() -> None:
    rng = np.random.default_rng(21)
    returns = rng.standard_normal((60, 3)) * 0.001
    gaps = np.ones_like(returns)
    gaps[40, 1] = 4.0
    plain = warmup.standardized_history(returns, 0.94)
    ones = warmup.standardized_history(returns, 0.94, gaps=np.ones_like(returns))
    for a, b in zip(plain, ones, strict=True):
        assert np.array_equal(a, b)
    cov, z, _ = warmup.standardized_history(returns, 0.94, gaps=gaps)
    scaled = returns.copy()
    scaled[40, 1] /= 2.0
    cov_ref, z_ref, _ = warmup.standardized_history(scaled, 0.94)
    assert np.array_equal(cov, cov_ref) and np.array_equal(z, z_ref)
    with pytest.raises(ValueError):
        warmup.standardized_history(returns, 0.94, gaps=np.full_like(returns, 0.5))
