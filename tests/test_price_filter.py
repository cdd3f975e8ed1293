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
from engine.price_filter import JUMP_TOLERANCE, MAX_PRICE, PriceFilter
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
    # Assert: rejected and counted; AAA has no new price (no data: its variance is kept), BBB's return is an
    # observed 0, so the EWMA only decays: Σ' = AΣA with a = sqrt(λ) for the observed BBB, 1 for the others
    assert daemon.stats.prices_rejected == 1
    after = store.read_market()
    assert after.prices[0] == 100.0 and after.price_ts[0] == before.price_ts[0]
    assert after.cov[0, 0] == before.cov[0, 0]
    a = np.where(np.array([t == "BBB" for t in after.tickers]), math.sqrt(0.94), 1.0)
    np.testing.assert_allclose(after.cov, before.cov * np.outer(a, a), rtol=1e-15, atol=0.0)


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


# -- the vectorised check of a whole bar ---------------------------------------------------------------------


def _random_bar(rng: np.random.Generator, m: int, sigmas: float, scale: float) -> tuple[list[Any], Any, Any]:
    """Raw prices, last prices and variances of ``m`` tickers: ordinary moves, absurd prints, and jumps a few
    ulps either side of the limit ``sigmas * sqrt(scale * S_ii) * (1 + JUMP_TOLERANCE)``."""
    last = rng.uniform(1.0, 500.0, m)
    variances = rng.uniform(1e-7, 1e-3, m)
    for k in rng.choice(m, size=min(m, 3), replace=False):
        last[k] = rng.choice([math.nan, 0.0, -3.0, math.inf])  # no valid last price: no jump test
    for k in rng.choice(m, size=min(m, 2), replace=False):
        variances[k] = rng.choice([0.0, math.nan, -1e-6])  # no usable variance: no jump test
    raws: list[Any] = []
    for k in range(m):
        kind = rng.integers(0, 6)
        bound = sigmas * math.sqrt(scale * variances[k]) * (1.0 + JUMP_TOLERANCE) if variances[k] > 0 else 0.1
        if kind == 0:
            raws.append(ABSURD[int(rng.integers(0, len(ABSURD)))])
        elif kind in (1, 2):  # at the limit, then up to 3 ulps either side
            edge = float(last[k]) * math.exp(bound * rng.choice([-1.0, 1.0])) if math.isfinite(last[k]) else 10.0
            for _ in range(int(rng.integers(-3, 4))):
                edge = math.nextafter(edge, math.inf)
            raws.append(edge)
        elif kind == 3:  # a jump far over the limit
            raws.append(float(abs(last[k]) * 3.0 + 1.0) if math.isfinite(last[k]) else 7.0)
        elif kind == 4:
            odd: list[Any] = [None, "12.5", MAX_PRICE, math.nextafter(MAX_PRICE, math.inf), 10**400, True]
            raws.append(odd[int(rng.integers(0, len(odd)))])
        else:  # an ordinary move
            raws.append(float(abs(last[k]) * math.exp(rng.normal(0, 0.3 * bound))) if math.isfinite(last[k]) else 5.0)
    return raws, last, variances


def test_check_many_decides_every_price_as_check_does_one_at_a_time_on_random_bars() -> None:
    rng = np.random.default_rng(20261130)
    decided = {"accepted": 0, "jump": 0, "absurd": 0}
    for trial in range(400):
        # Arrange: two filters in the same state, some jumps of the previous bar remembered
        m = int(rng.integers(1, 30))
        scale = float(rng.choice([1.0, 1950.0]))
        tickers = [f"T{i}" for i in range(m)]
        raws, last, variances = _random_bar(rng, m, SIGMAS, scale)
        remembered = {t: float(rng.uniform(1, 500)) for t in tickers if rng.random() < 0.2}
        if m and rng.random() < 0.3:  # a remembered level that the new print confirms
            t = tickers[0]
            remembered[t] = float(raws[0]) if isinstance(raws[0], float) and raws[0] > 0 else 1.0
        reset = bool(rng.random() < 0.1)
        refused = {t: int(rng.integers(1, 4)) for t in tickers if rng.random() < 0.2}
        one, many = PriceFilter(SIGMAS, scale), PriceFilter(SIGMAS, scale)
        one.pending, many.pending = dict(remembered), dict(remembered)
        one.missed_bars, many.missed_bars = dict(refused), dict(refused)
        # Act
        pairs = enumerate(zip(tickers, raws, strict=True))
        expected = [one.check(t, r, last[k], variances[k], reset=reset) for k, (t, r) in pairs]
        prices, reasons = many.check_many(tickers, raws, last, variances, reset=reset)
        # Assert: same prices (NaN where refused), same words, same remembered jumps
        assert reasons == [why for _, why in expected], f"trial {trial}"
        np.testing.assert_array_equal(prices, [p for p, _ in expected])
        assert many.pending == one.pending, f"trial {trial}"
        assert many.missed_bars == one.missed_bars, f"trial {trial}"
        for why in reasons:
            decided["jump" if why.startswith("jump") else "absurd" if why else "accepted"] += 1
    assert min(decided.values()) > 100  # every kind of decision was exercised


def test_check_many_at_exactly_the_limit_passes_and_one_ulp_over_is_rejected() -> None:
    # Arrange: a price whose log return is the bound itself, and the next float above it
    f = PriceFilter(SIGMAS)
    last, variance = 100.0, 1e-6
    bound = SIGMAS * math.sqrt(variance) * (1.0 + JUMP_TOLERANCE)
    at = 100.0 * math.exp(bound)
    while abs(math.log(at / last)) > bound:  # the largest float whose jump is within the bound
        at = math.nextafter(at, 0.0)
    while abs(math.log(math.nextafter(at, math.inf) / last)) <= bound:
        at = math.nextafter(at, math.inf)
    over = math.nextafter(at, math.inf)
    # Act
    prices, reasons = f.check_many(["AAA", "BBB"], [at, over], np.array([last, last]), np.array([variance] * 2))
    # Assert
    assert prices[0] == at and reasons[0] == ""
    assert math.isnan(prices[1]) and reasons[1].startswith("jump of 12.0 sigma")
    assert f.pending == {"BBB": over}


# -- a persistent move is real: the crash of several bars --------------------------------------------------


def test_a_fast_crash_is_accepted_from_its_second_print_and_every_return_enters_the_model(
    store: Store, jump_settings: Settings
) -> None:
    # Arrange: AAA falls 2% a bar for 6 bars (about 30 one-minute sigmas a bar), then trades flat; BBB unchanged
    _seed(store, jump_settings)
    before = store.read_market()
    path = [100.0 * 0.98**k for k in range(1, 7)] + [100.0 * 0.98**6] * 2
    bars = [Bar(k + 1, {"AAA": p, "BBB": 50.0}) for k, p in enumerate(path)]
    stored: list[float] = []
    daemon = StreamDaemon(store, jump_settings, IterableFeed(iter(bars)), clock=lambda: NOW, interval=0)
    # Act
    for k in range(1, len(bars) + 1):
        daemon.run(ticks=k)
        stored.append(float(store.read_market().prices[0]))
    # Assert: only the first print refused; from the second on the stored price is the feed's, and the
    # crash is in the volatility (one-bar sigma from 0.06% to several %)
    assert daemon.stats.prices_rejected == 1
    assert stored == [100.0] + path[1:]
    assert store.read_market().cov[0, 0] > 100 * before.cov[0, 0]


def test_an_isolated_fat_finger_print_is_still_refused_and_a_partial_reversion_does_not_confirm_it() -> None:
    f = PriceFilter(SIGMAS)
    variance = 1e-6  # one-bar sigma 0.1%: the band is 1.2%, sqrt(2) x that after one refused bar
    f.begin(1)
    assert f.check("AAA", 90.0, 100.0, variance)[1]  # -10%: refused, the candidate
    f.begin(2)
    assert f.check("AAA", 95.0, 100.0, variance)[1]  # back half way: no confirmation, refused again
    f.begin(3)
    assert f.check("AAA", 100.05, 100.0, variance) == (100.05, "")  # reverts: the spike never got in
    assert f.pending == {} and f.missed_bars == {}
    f.begin(4)
    assert f.check("AAA", 90.0, 100.05, variance)[1]
    f.begin(5)
    assert f.check("AAA", 89.0, 100.05, variance) == (89.0, "")  # beyond the candidate, same side: real


def _edge(last: float, bound: float, sign: float) -> tuple[float, float]:
    """The farthest price from ``last`` on side ``sign`` whose ``|ln(p/last)|`` is within ``bound``, and the
    next float beyond it."""
    step = math.inf if sign > 0 else 0.0
    at = last * math.exp(sign * bound)
    while abs(math.log(at / last)) > bound:
        at = math.nextafter(at, last)
    while abs(math.log(math.nextafter(at, step) / last)) <= bound:
        at = math.nextafter(at, step)
    return at, math.nextafter(at, step)


@pytest.mark.parametrize("refused", [1, 3])
def test_the_band_widens_by_the_square_root_of_the_bars_since_the_last_accepted_price_to_the_ulp(
    refused: int,
) -> None:
    # Arrange: `refused` downward prints refused in a row (a spike), then an upward print at the widened band
    last, variance = 100.0, 1e-6
    bound = SIGMAS * (math.sqrt(variance) * math.sqrt(1 + refused)) * (1.0 + JUMP_TOLERANCE)
    at, over = _edge(last, bound, 1.0)
    results = []
    for price in (at, over):
        for use_many in (False, True):
            f = PriceFilter(SIGMAS)
            for k in range(refused):  # a spike flickering down and up: it never persists, never confirms
                f.begin(k)
                assert f.check("AAA", (80.0, 125.0)[k % 2], last, variance)[1]
            f.begin(refused)
            if use_many:
                got, why = f.check_many(["AAA"], [price], np.array([last]), np.array([variance]))
                results.append((float(got[0]), why[0], dict(f.missed_bars)))
            else:
                got1, why1 = f.check("AAA", price, last, variance)
                results.append((got1, why1, dict(f.missed_bars)))
    # Assert: exactly at 12 sigma x sqrt(1 + refused) accepted (the bars forgotten), one float over refused
    for got, why, counts in results[:2]:
        assert (got, why, counts) == (at, "", {})
    for got, why, counts in results[2:]:
        assert math.isnan(got) and why.startswith("jump of 12.0 sigma") and counts == {"AAA": refused + 1}
    # without the refused bars the same price is far over the one-bar band
    assert PriceFilter(SIGMAS).check("AAA", at, last, variance)[1]


# -- a halted ticker: the bars it had no print in count ------------------------------------------------------


def _halted_bars(store: Store, absent: str, k: int) -> list[Bar]:
    """``k`` bars in which every ticker but ``absent`` prints its seeded price (a trading halt of ``absent``)."""
    snap = store.read_market()
    others = {t: float(p) for t, p in zip(snap.tickers, snap.prices, strict=True) if t != absent}
    return [Bar(b, dict(others)) for b in range(1, k + 1)]


@pytest.mark.parametrize("k", [1, 120])
def test_a_halted_ticker_reopens_within_the_band_of_all_the_bars_since_its_last_price_to_the_ulp(
    store: Store, jump_settings: Settings, k: int
) -> None:
    # Arrange: DDD absent from k bars, then re-opening down at the edge of 12 sigma x sqrt(k + 1): the k absent
    # bars and the re-open bar itself are the n = k + 1 bars since its last accepted price
    _seed(store, jump_settings)
    before = store.read_market()
    d = before.tickers.index("DDD")
    last, variance = float(before.prices[d]), float(before.cov[d, d])
    bound = SIGMAS * (math.sqrt(variance) * math.sqrt(1 + k)) * (1.0 + JUMP_TOLERANCE)
    at, over = _edge(last, bound, -1.0)
    stored: list[tuple[int, float]] = []
    for price in (at, over):
        _seed(store, jump_settings)
        # Act
        halt = _halted_bars(store, "DDD", k + 1)
        daemon = _run(store, jump_settings, [*halt[:k], Bar(k + 1, {**halt[k].prices, "DDD": price})])
        stored.append((daemon.stats.prices_rejected, float(store.read_market().prices[d])))
        assert daemon.price_filter.missed_bars == ({} if price == at else {"DDD": k + 1})
    # Assert: the halt kept DDD's variance (so the band is the one computed here); the edge is in, one float
    # beyond it refused (DDD keeps its pre-halt price); both decisions the same through check()
    assert store.read_market().cov[d, d] == variance
    assert stored == [(0, at), (1, last)]
    assert PriceFilter(SIGMAS).check("DDD", at, last, variance)[1]  # far over the one-bar band


@pytest.mark.parametrize("use_many", [False, True], ids=["check", "check_many"])
def test_absent_bars_widen_the_band_as_refused_ones_do_in_check_and_check_many(use_many: bool) -> None:
    # Arrange: AAA absent from 5 bars (n = 6 at its re-open), a retry of the last one counted once
    last, variance, k = 100.0, 1e-6, 5
    bound = SIGMAS * (math.sqrt(variance) * math.sqrt(1 + k)) * (1.0 + JUMP_TOLERANCE)
    at, over = _edge(last, bound, 1.0)
    results = []
    for price in (at, over):
        f = PriceFilter(SIGMAS)
        for bar in range(k):
            f.begin(bar)
            f.absent(["AAA"])
        f.begin(k - 1)  # the daemon recomputes the last bar after a WATCH conflict
        f.absent(["AAA"])
        assert f.missed_bars == {"AAA": k}
        f.begin(k)
        # Act
        if use_many:
            got, why = f.check_many(["AAA"], [price], np.array([last]), np.array([variance]))
            results.append((float(got[0]), why[0], dict(f.missed_bars)))
        else:
            results.append((*f.check("AAA", price, last, variance), dict(f.missed_bars)))
    # Assert: the edge accepted and the count reset; one float over refused, the re-open bar counted too
    assert results[0] == (at, "", {})
    got, why, counts = results[1]
    assert math.isnan(got) and why.startswith("jump of 12.0 sigma") and counts == {"AAA": k + 1}


def test_a_reset_bar_counts_no_absent_bar_and_starts_every_count_afresh() -> None:
    f = PriceFilter(SIGMAS)
    f.absent(["AAA", "BBB"])
    f.absent(["AAA"])
    assert f.missed_bars == {"AAA": 2, "BBB": 1}
    f.absent(["AAA"], reset=True)
    assert f.missed_bars == {}


def test_a_ticker_reopening_8_percent_lower_after_a_two_hour_halt_is_accepted_on_its_first_print(
    store: Store, jump_settings: Settings
) -> None:
    # Arrange: the other tickers move at their own volatility for 120 one-minute bars while DDD is halted; DDD
    # re-opens 8% lower (about 58 one-bar sigmas, 5.3 sigmas of the 121 bars), then trades on
    _seed(store, jump_settings)
    snap = store.read_market()
    d = snap.tickers.index("DDD")
    rng = np.random.default_rng(1)
    vols = np.sqrt(np.diagonal(snap.cov))
    prices = snap.prices.copy()
    bars = []
    for b in range(1, 131):
        prices = prices * np.exp(vols * rng.standard_normal(len(prices)))
        if b == 121:
            prices[d] = snap.prices[d] * 0.92
        row = {t: float(p) for t, p in zip(snap.tickers, prices, strict=True) if b > 120 or t != "DDD"}
        bars.append(Bar(b, row))
    daemon = StreamDaemon(store, jump_settings, IterableFeed(iter(bars)), clock=lambda: NOW, interval=0)
    # Act
    daemon.run(ticks=121)
    reopened = float(store.read_market().prices[d])
    daemon.run()
    # Assert: the re-open print is in at once, and so is every later one
    assert reopened == snap.prices[d] * 0.92
    assert (daemon.stats.bars_written, daemon.stats.prices_rejected) == (130, 0)
    assert store.read_market().prices[d] == bars[-1].prices["DDD"]
