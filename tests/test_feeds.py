"""engine/feeds.py: the simulated GBM feed (statistics, shocks, regimes), the CSV replay, its validation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from engine.errors import FeedError
from engine.feeds import (
    Bar,
    Feed,
    IterableFeed,
    ReplayFeed,
    Shock,
    SimulatedFeed,
    UniverseAware,
    VolRegime,
    parse_regime,
    parse_shock,
)
from engine.settings import Settings

TICKERS = ("AAA", "BBB", "CCC", "DDD")


def _bars(feed: SimulatedFeed, n: int) -> np.ndarray:
    """Prices of n bars as an array (bars x tickers)."""
    return np.array([[bar.prices[t] for t in feed.tickers] for bar in (feed.step() for _ in range(n))])


def _log_returns(start: np.ndarray, prices: np.ndarray) -> np.ndarray:
    return np.diff(np.log(np.vstack([start, prices])), axis=0)


# -- simulated feed ------------------------------------------------------------------------------------------


def test_simulated_feed_with_the_same_seed_yields_the_same_bars(settings: Settings) -> None:
    a = _bars(SimulatedFeed.from_settings(settings, seed=42), 20)
    b = _bars(SimulatedFeed.from_settings(settings, seed=42), 20)
    c = _bars(SimulatedFeed.from_settings(settings, seed=43), 20)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_simulated_returns_have_the_settings_volatility_and_correlation(settings: Settings) -> None:
    # Arrange
    feed = SimulatedFeed.from_settings(settings, seed=7)
    start = feed.prices.copy()
    per_bar = np.array([settings.universe.assets[t].annual_vol for t in TICKERS]) / math.sqrt(
        settings.model.bars_per_year
    )
    # Act
    r = _log_returns(start, _bars(feed, 20_000))
    # Assert: sample std within ~4 standard errors (1/sqrt(2n) ~ 0.5%), correlation within ~0.03
    np.testing.assert_allclose(r.std(axis=0), per_bar, rtol=0.025)
    corr = np.corrcoef(r.T)
    off = corr[~np.eye(4, dtype=bool)]
    np.testing.assert_allclose(off, settings.universe.correlation, atol=0.03)
    # the drift term -σ²/2 makes each price a martingale: mean log return ≈ -σ²/2 (tiny), not +
    np.testing.assert_allclose(r.mean(axis=0), -0.5 * per_bar**2, atol=4 * per_bar.max() / math.sqrt(20_000))


def test_shock_moves_only_its_ticker_by_its_simple_return_at_its_bar(settings: Settings) -> None:
    plain = _bars(SimulatedFeed.from_settings(settings, seed=3), 120)
    shocked = _bars(SimulatedFeed.from_settings(settings, seed=3, shocks=[parse_shock("AAA:-0.08@100")]), 120)
    np.testing.assert_array_equal(plain[:99], shocked[:99])
    ratio = shocked[99:] / plain[99:]
    np.testing.assert_allclose(ratio[:, 0], 0.92, rtol=1e-12)  # AAA stays 8% below from bar 100 on
    np.testing.assert_array_equal(ratio[:, 1:], 1.0)


def test_star_shock_moves_every_ticker(settings: Settings) -> None:
    plain = _bars(SimulatedFeed.from_settings(settings, seed=3), 10)
    shocked = _bars(SimulatedFeed.from_settings(settings, seed=3, shocks=[Shock("*", -0.2, 5)]), 10)
    np.testing.assert_allclose(shocked[4:] / plain[4:], 0.8, rtol=1e-12)


def test_volatility_regime_scales_the_random_part_of_each_return_from_its_bar(settings: Settings) -> None:
    # Arrange: same draws with and without a x2 regime from bar 11
    base = SimulatedFeed.from_settings(settings, seed=5)
    regime = SimulatedFeed.from_settings(settings, seed=5, regimes=[parse_regime("2.0@11")])
    vols = base.vols.copy()
    r_base = _log_returns(base.prices.copy(), _bars(base, 30))
    r_regime = _log_returns(regime.prices.copy(), _bars(regime, 30))
    # Assert: r = m σ (Lz) - (mσ)²/2, so (r + (mσ)²/2) / m is the same random part
    np.testing.assert_allclose(r_regime[:10], r_base[:10], rtol=1e-12)
    np.testing.assert_allclose((r_regime[10:] + 0.5 * (2 * vols) ** 2) / 2.0, r_base[10:] + 0.5 * vols**2,
                               rtol=1e-9, atol=1e-15)  # fmt: skip
    assert regime.multiplier(10) == 1.0 and regime.multiplier(11) == 2.0


@pytest.mark.parametrize(
    "text", ["AAA-0.08@100", "AAA:x@1", "AAA:-1.5@10", "AAA:-0.1@0", "bad ticker!:0.1@3", ""]
)
def test_bad_shock_specs_raise_a_feed_error(text: str) -> None:
    with pytest.raises(FeedError):
        parse_shock(text)


@pytest.mark.parametrize("text", ["2.0", "0@5", "-1@5", "x@5", "2.0@0"])
def test_bad_regime_specs_raise_a_feed_error(text: str) -> None:
    with pytest.raises(FeedError):
        parse_regime(text)


def test_shock_on_a_ticker_outside_the_universe_is_refused(settings: Settings) -> None:
    with pytest.raises(FeedError, match="outside the universe"):
        SimulatedFeed.from_settings(settings, shocks=[Shock("ZZZ", -0.1, 3)])


def test_sync_universe_continues_from_the_stores_prices_and_adds_new_tickers(settings: Settings) -> None:
    feed = SimulatedFeed.from_settings(settings, seed=1)
    assert isinstance(feed, UniverseAware) and isinstance(feed, Feed)
    feed.sync_universe([*TICKERS, "EEE"], [10.0, 20.0, 30.0, 40.0, 5.0], [0.001, 0.001, 0.001, 0.001, 0.002])
    bar = feed.step()
    assert set(bar.prices) == {*TICKERS, "EEE"}
    # one bar of ~0.1-1% vol: prices stay near the synced ones
    np.testing.assert_allclose([bar.prices[t] for t in (*TICKERS, "EEE")], [10, 20, 30, 40, 5], rtol=0.05)
    # known tickers keep the settings' vols, the new one gets the store's
    assert feed.vols[-1] == 0.002
    assert feed.vols[0] == pytest.approx(0.20 / math.sqrt(settings.model.bars_per_year))


def test_simulated_feed_stops_after_its_bar_count(settings: Settings) -> None:
    assert len(list(SimulatedFeed.from_settings(settings, seed=1, bars=7))) == 7


def test_constant_correlation_that_is_not_positive_definite_is_refused() -> None:
    with pytest.raises(FeedError, match="correlation"):
        SimulatedFeed(list(TICKERS), [1.0] * 4, [0.01] * 4, correlation=-0.5)


# -- replay feed ---------------------------------------------------------------------------------------------


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bars.csv"
    path.write_text(text)
    return path


def test_wide_replay_yields_one_bar_per_row_with_the_first_one_marked_reset(tmp_path: Path) -> None:
    path = _csv(tmp_path, "date,AAA,BBB\n2024-01-02T09:30,100,50\n2024-01-02T09:31,101,49.5\n"
                          "2024-01-02T09:32,102,49\n")  # fmt: skip
    feed = ReplayFeed(path, universe=TICKERS)
    bars = list(feed)
    assert [b.reset for b in bars] == [True, False, False]
    assert bars[1].prices == {"AAA": 101.0, "BBB": 49.5}
    assert bars[1].ts - bars[0].ts == 60.0
    assert feed.stats.bars == 3 and feed.stats.skipped_cells == 0


def test_wide_replay_skips_and_counts_bad_prices_and_empty_cells(tmp_path: Path) -> None:
    path = _csv(tmp_path, "date,AAA,BBB\n1,100,50\n2,abc,49\n3,-5,\n4,nan,inf\n5,101,0\n6,102,51\n")
    feed = ReplayFeed(path)
    bars = list(feed)
    # row 3 keeps nothing but AAA's -5 (skipped) and an empty BBB (gap): rows 3 and 4 have no usable price
    assert [b.prices for b in bars] == [
        {"AAA": 100.0, "BBB": 50.0}, {"BBB": 49.0}, {"AAA": 101.0}, {"AAA": 102.0, "BBB": 51.0},
    ]  # fmt: skip
    assert feed.stats.skipped_cells == 5  # abc, -5, nan, inf, 0
    assert feed.stats.missing_cells == 1
    assert feed.stats.empty_bars == 2
    assert any("abc" in p for p in feed.stats.problems)


def test_long_replay_groups_rows_by_date_and_counts_missing_tickers(tmp_path: Path) -> None:
    path = _csv(tmp_path, "Date,Ticker,Close\n2024-01-02,AAA,100\n2024-01-02,BBB,50\n2024-01-03,AAA,101\n"
                          "2024-01-04,BBB,52\n2024-01-04,AAA,99\n")  # fmt: skip
    feed = ReplayFeed(path, universe=TICKERS)
    bars = list(feed)
    assert [b.prices for b in bars] == [
        {"AAA": 100.0, "BBB": 50.0},
        {"AAA": 101.0},
        {"AAA": 99.0, "BBB": 52.0},
    ]
    assert feed.stats.missing_cells == 1
    assert bars[0].reset and not bars[1].reset


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("date,AAA\n", "no rows"),
        ("day,AAA\n1,100\n", "date column"),
        ("date,AAA,AAA\n1,100,100\n", "duplicate"),
        ("date,AAA\n2,100\n1,101\n", "increase"),
        ("date,AAA\n1,100\n1,101\n", "increase"),
        ("date,AAA\nyesterday,100\n", "ISO 8601"),
        ("date,AAA,BBB\n1,100\n", "expected 3 fields"),
        ("date,ZZZ\n1,100\n", "not in the store's universe"),
        ("date,ticker,close\n2,AAA,1\n1,AAA,2\n", "backwards"),
        ("date,ticker,close\n1,AAA,1\n1,AAA,2\n", "twice"),
        ("date,ticker\n1,AAA\n", "long format"),
        ("date,AAA\n1,x\n2,y\n", "no row holds a usable price"),
    ],
)
def test_replay_refuses_ambiguous_files_with_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(FeedError, match=message):
        ReplayFeed(_csv(tmp_path, text), universe=TICKERS)


def test_replay_of_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(FeedError, match="not found"):
        ReplayFeed(tmp_path / "nope.csv")


def test_replay_counts_unusually_long_steps_between_dates(tmp_path: Path) -> None:
    feed = ReplayFeed(_csv(tmp_path, "date,AAA\n0,1\n60,1\n120,1\n600,1\n660,1\n"))
    assert feed.stats.time_gaps == 1
    assert len(feed) == 5


def test_iterable_feed_accepts_bars_and_pairs() -> None:
    feed = IterableFeed([Bar(1.0, {"AAA": 1.0}), (2.0, {"AAA": 2.0})])
    assert [b.ts for b in feed] == [1.0, 2.0]


def test_regime_and_shock_values_are_validated() -> None:
    with pytest.raises(FeedError):
        VolRegime(0.0, 3)
    with pytest.raises(FeedError):
        Shock("AAA", -1.0, 3)
