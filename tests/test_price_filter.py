"""engine/price_filter.py through the real stream daemon on a real Redis: an absurd price is rejected, counted and
never written; the market after a bar with a bad print is byte-for-byte the market after the same bar without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import warmup
from engine.feeds import Bar, IterableFeed, ReplayFeed
from engine.price_filter import MAX_PRICE, PriceFilter
from engine.settings import Settings
from engine.store import MARKET_KEY, Store
from engine.stream import StreamDaemon

SEEDED_AT = 1_700_000_000.0
NOW = SEEDED_AT + 60.0
SIGMAS = 12.0


@pytest.fixture
def jump_settings(make_settings: Callable[..., Settings]) -> Settings:
    """The test universe with the jump rule on (the shared test settings switch it off)."""
    return make_settings({"stream": {"max_jump_sigma": SIGMAS}})


def _seed(store: Store, settings: Settings) -> None:
    store.client.flushdb()
    warmup.seed(store, settings, now=SEEDED_AT)


def _run(store: Store, settings: Settings, bars: Sequence[Bar]) -> StreamDaemon:
    daemon = StreamDaemon(store, settings, IterableFeed(list(bars)), clock=lambda: NOW, interval=0)
    daemon.run()
    return daemon


def _market_bytes(store: Store) -> dict[bytes, bytes]:
    raw: dict[bytes, bytes] = store.client.hgetall(MARKET_KEY)
    return raw


def _sigma(store: Store, ticker: str) -> float:
    snap = store.read_market()
    i = snap.tickers.index(ticker)
    return math.sqrt(float(snap.cov[i, i]))


# -- each absurd kind through the daemon ---------------------------------------------------------------------

ABSURD: list[Any] = [0.0, -1.0, math.nan, math.inf, -math.inf, 1e308, "abc", None]


@pytest.mark.parametrize("bad", ABSURD, ids=[repr(b) for b in ABSURD])
def test_an_absurd_price_is_counted_and_the_market_is_the_one_without_that_price(
    store: Store, jump_settings: Settings, bad: Any
) -> None:
    # Arrange: the same bar without AAA, on an identically seeded store
    good = {"BBB": 50.01, "CCC": 200.02, "DDD": 25.001}
    _seed(store, jump_settings)
    _run(store, jump_settings, [Bar(1, good)])
    expected = _market_bytes(store)
    _seed(store, jump_settings)
    before = store.read_market()
    # Act
    daemon = _run(store, jump_settings, [Bar(1, {"AAA": bad, **good})])
    # Assert
    assert daemon.stats.prices_rejected == 1 and daemon.stats.bars_written == 1
    assert _market_bytes(store) == expected
    after = store.read_market()
    assert after.prices[0] == before.prices[0] and after.price_ts[0] == before.price_ts[0]
    tick = store.read_ticks()[-1]
    assert tick.prices[0] == before.prices[0] and tick.rejected == 1  # what the monitor sees
    heartbeat = store.read_heartbeat("stream")
    assert heartbeat is not None and heartbeat["prices_rejected"] == "1"


def test_a_bar_whose_only_price_is_absurd_is_held_back_whole(store: Store, jump_settings: Settings) -> None:
    # Arrange
    _seed(store, jump_settings)
    before = _market_bytes(store)
    # Act
    daemon = _run(store, jump_settings, [Bar(1, {"AAA": 1e308})])
    # Assert: nothing written, counted
    assert _market_bytes(store) == before
    assert (daemon.stats.bars_rejected, daemon.stats.prices_rejected) == (1, 1)
    assert store.read_ticks() == []


# -- the jump rule at its boundary ---------------------------------------------------------------------------


@pytest.mark.parametrize("direction", [1.0, -1.0], ids=["up", "down"])
def test_a_jump_of_exactly_max_jump_sigma_passes(store: Store, jump_settings: Settings, direction: float) -> None:
    # Arrange
    _seed(store, jump_settings)
    sigma = _sigma(store, "AAA")
    price = 100.0 * math.exp(direction * SIGMAS * sigma)
    # Act
    daemon = _run(store, jump_settings, [Bar(1, {"AAA": price})])
    # Assert
    assert daemon.stats.prices_rejected == 0
    assert store.read_market().prices[0] == price


@pytest.mark.parametrize("direction", [1.0, -1.0], ids=["up", "down"])
def test_a_jump_just_over_max_jump_sigma_is_rejected_and_the_ticker_keeps_its_price_and_variance(
    store: Store, jump_settings: Settings, direction: float
) -> None:
    # Arrange
    _seed(store, jump_settings)
    sigma = _sigma(store, "AAA")
    before = store.read_market()
    price = 100.0 * math.exp(direction * SIGMAS * sigma * (1 + 1e-6))
    # Act
    daemon = _run(store, jump_settings, [Bar(1, {"AAA": price, "BBB": 50.0})])
    # Assert: rejected and counted; AAA's return is 0 and BBB's too, so the EWMA only decays (closed form)
    assert daemon.stats.prices_rejected == 1
    after = store.read_market()
    assert after.prices[0] == 100.0 and after.price_ts[0] == before.price_ts[0]
    np.testing.assert_array_equal(after.cov, 0.94 * before.cov)


def test_a_jump_confirmed_by_the_next_print_is_accepted_with_its_return(store: Store, jump_settings: Settings) -> None:
    # Arrange: a real 5% gap (about 70 one-minute sigmas), printed twice
    _seed(store, jump_settings)
    before = store.read_market()
    # Act
    daemon = _run(store, jump_settings, [Bar(1, {"AAA": 95.0}), Bar(2, {"AAA": 95.01})])
    # Assert: the first print refused (its bar held back: no other price), the second confirms the level and
    # its return from 100 enters the EWMA
    assert (daemon.stats.prices_rejected, daemon.stats.bars_rejected, daemon.stats.bars_written) == (1, 1, 1)
    after = store.read_market()
    assert after.prices[0] == 95.01
    r = math.log(95.01 / 100.0)
    expected = 0.94 * before.cov[0, 0] + 0.06 * r * r
    assert after.cov[0, 0] == pytest.approx(expected, rel=1e-12)


def test_a_spike_contradicted_by_the_next_print_never_gets_in(store: Store, jump_settings: Settings) -> None:
    # Arrange
    _seed(store, jump_settings)
    # Act: spike, back to normal, the same spike again
    daemon = _run(store, jump_settings, [Bar(1, {"AAA": 150.0}), Bar(2, {"AAA": 100.01}), Bar(3, {"AAA": 150.0})])
    # Assert
    assert daemon.stats.prices_rejected == 2
    assert store.read_market().prices[0] == 100.01


def test_a_reset_bar_anchors_any_plausible_price_but_still_refuses_absurd_ones(
    store: Store, jump_settings: Settings
) -> None:
    # Arrange
    _seed(store, jump_settings)
    # Act: a replay's first bar at a far level for AAA, 1e308 for BBB
    daemon = _run(store, jump_settings, [Bar(1, {"AAA": 300.0, "BBB": 1e308}, reset=True)])
    # Assert
    assert daemon.stats.prices_rejected == 1
    prices = store.read_market().prices
    assert prices[0] == 300.0 and prices[1] == 50.0


# -- the filter itself ---------------------------------------------------------------------------------------


def test_the_largest_plausible_price_passes_and_one_unit_over_is_rejected() -> None:
    f = PriceFilter(SIGMAS)
    assert f.check("AAA", MAX_PRICE, math.nan, 0.0) == (MAX_PRICE, "")
    price, why = f.check("AAA", math.nextafter(MAX_PRICE, math.inf), math.nan, 0.0)
    assert math.isnan(price) and "largest plausible" in why
    assert f.check("AAA", math.nextafter(0.0, 1.0), math.nan, 0.0)[1] == ""
    assert f.check("AAA", 0.0, math.nan, 0.0)[1] == "not a positive price"


def test_a_retried_bar_does_not_confirm_its_own_rejected_jump() -> None:
    # Arrange: the daemon recomputes a bar after a WATCH conflict
    f = PriceFilter(SIGMAS)
    f.begin(1)
    assert f.check("AAA", 150.0, 100.0, 1e-6)[1]
    # Act
    f.begin(1)
    retried = f.check("AAA", 150.0, 100.0, 1e-6)
    f.begin(2)
    confirmed = f.check("AAA", 150.0, 100.0, 1e-6)
    # Assert
    assert retried[1] and confirmed == (150.0, "")


def test_a_replay_of_weekly_closes_scales_the_jump_and_the_returns_to_one_model_bar(
    store: Store, jump_settings: Settings, tmp_path: Path
) -> None:
    # Arrange: Mondays of January 2024; AAA moves 3% a week (about one weekly sigma of a 20% vol)
    path = tmp_path / "weekly.csv"
    rows = ["date,AAA,BBB,CCC,DDD"] + [
        f"2024-01-{day:02d},{100 * 1.03**i:.6f},50,200,25" for i, day in enumerate((1, 8, 15, 22, 29))
    ]
    path.write_text("\n".join(rows) + "\n")
    _seed(store, jump_settings)
    feed = ReplayFeed(path, universe=["AAA", "BBB", "CCC", "DDD"])
    daemon = StreamDaemon(store, jump_settings, feed, clock=lambda: NOW, interval=0)
    start = store.read_market()
    # Act
    daemon.run()
    # Assert: k = 5 days x 390 bars; the EWMA gets r / sqrt(k) (computed here with numpy)
    k = 5 * 390
    assert daemon.price_filter.bar_scale == k
    assert daemon.stats.prices_rejected == 0
    cov = start.cov.copy()
    closes = np.array([[100 * 1.03**i, 50, 200, 25] for i in range(5)])
    closes[:, 0] = np.round(closes[:, 0], 6)
    for prev, cur in zip(closes[:-1], closes[1:], strict=True):
        r = np.log(cur / prev) / math.sqrt(k)
        cov = 0.94 * cov + 0.06 * np.outer(r, r)
    np.testing.assert_allclose(store.read_market().cov, cov, rtol=1e-12)
