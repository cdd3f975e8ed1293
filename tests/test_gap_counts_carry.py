"""Each ticker's count of bars since its last print (``print_gaps``, kept with the market snapshot) survives every
writer of a new snapshot version, and the stream's jump band counts the same bars as the model.

- a split (engine/corporate_actions.py) carries the counts under its new version: a thin ticker's next return
  spans all its bars (``r / sqrt(g)``) instead of entering as one bar's;
- a history reload (engine/reload.py) writes them as 0 under its new version (every reloaded price is as of the
  reload);
- a ticker added while the daemon runs (warmup.add_ticker) starts at 0, the others keep theirs, by name;
- the price filter (engine/price_filter.py) continues its count from the stored one when the daemon loads the
  market: a thin ticker's re-opening move of exactly ``max_jump_sigma x sqrt(g)`` one-bar sigmas passes after a
  restart mid-gap (live feed and resumed replay), one unit over is refused; a market-wide halt (no bars at all)
  adds nothing to either count.

Independent computations: the EWMA update of one ticker's variance written out by hand,
``S' = lam S + (1 - lam) r^2 / g``, and the band ``ln(p / p0) = 12 sigma sqrt(g)``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import warmup
from engine import reload, stream
from engine.corporate_actions import apply_split
from engine.feeds import Bar, IterableFeed
from engine.price_filter import PriceFilter
from engine.settings import Settings
from engine.store import Store
from engine.store.codec import encode_print_gaps
from engine.store.keys import MARKET_KEY, PRINT_GAPS_FIELD
from engine.stream import StreamDaemon

T0 = 1_700_000_000.0
NOW = T0 + 60.0
SIGMAS = 12.0
OVER = 1.0 + 1e-6
"""One unit over the band: far above the filter's float slack (``JUMP_TOLERANCE`` = 1e-9)."""


@pytest.fixture
def jump_settings(make_settings: Callable[..., Settings]) -> Settings:
    """The test universe with the jump rule on (the shared test settings switch it off)."""
    return make_settings({"stream": {"max_jump_sigma": SIGMAS}})


def _run(store: Store, settings: Settings, bars: list[Bar] | Iterator[Bar]) -> StreamDaemon:
    daemon = StreamDaemon(store, settings, IterableFeed(bars), clock=lambda: NOW, interval=0)
    daemon.run()
    return daemon


def _bar(ts: float, prices: dict[str, float], *, without: str | None = None) -> Bar:
    return Bar(ts, {k: p for k, p in prices.items() if k != without})


def _absent_aaa(prices: dict[str, float], first: int, bars: int) -> list[Bar]:
    """``bars`` bars (numbered from ``first``) in which AAA does not print and the others print their price."""
    return [_bar(float(first + t), prices, without="AAA") for t in range(bars)]


def _start(store: Store, settings: Settings) -> dict[str, float]:
    warmup.seed(store, settings, now=T0)
    snap = store.read_market()
    return {k: float(p) for k, p in zip(snap.tickers, snap.prices, strict=True)}


# -- a split ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["store", "cluster_store"])
def test_a_split_carries_each_count_and_the_thin_tickers_next_return_spans_its_bars(
    request: pytest.FixtureRequest, backend: str, settings: Settings
) -> None:
    # Arrange: AAA prints in bar 0 and misses the next 5 (count 5)
    store: Store = request.getfixturevalue(backend)
    prices = _start(store, settings)
    _run(store, settings, [_bar(0.0, prices), *_absent_aaa(prices, 1, 5)])
    before, since = store.read_market_state()
    assert since.tolist() == [5.0, 0.0, 0.0, 0.0]
    # Act: a 2-for-1 of AAA (the thin ticker) and a 1-for-10 of BBB
    apply_split(store, "AAA", Fraction(2), settings=settings, actor="ops", split_id="A", now=NOW)
    apply_split(store, "BBB", Fraction(1, 10), settings=settings, actor="ops", split_id="B", now=NOW)
    # Assert: the same counts, under each new version (the field is tagged with it)
    after, carried = store.read_market_state()
    assert after.version == before.version + 2
    assert carried.tolist() == [5.0, 0.0, 0.0, 0.0]
    assert store.client.hget(MARKET_KEY, PRINT_GAPS_FIELD) == encode_print_gaps(after.version, since)
    # and AAA's next print, 6 bars after its last: S' = lam S + (1 - lam) (ln(p / p_adj))^2 / 6
    p_adj = float(after.prices[0])
    assert p_adj == prices["AAA"] / 2
    new = p_adj * 1.003
    daemon = _run(store, settings, [_bar(6.0, {**prices, "AAA": new, "BBB": float(after.prices[1])})])
    lam = settings.model.ewma_decay
    expected = lam * after.cov[0, 0] + (1.0 - lam) * math.log(new / p_adj) ** 2 / 6.0
    assert daemon.cov[0, 0] == pytest.approx(expected, rel=1e-12)
    assert store.read_market_state()[1].tolist() == [0.0, 0.0, 0.0, 0.0]


# -- a history reload ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["store", "cluster_store"])
def test_a_reload_writes_every_count_as_0_under_its_version(request: pytest.FixtureRequest, backend: str,
                                                             settings: Settings) -> None:  # fmt: skip
    # Arrange: AAA has missed 3 bars
    store: Store = request.getfixturevalue(backend)
    prices = _start(store, settings)
    _run(store, settings, [_bar(0.0, prices), *_absent_aaa(prices, 1, 3)])
    snap, since = store.read_market_state()
    assert since[0] == 3.0
    # Act: every reloaded price is the file's last close (every ticker has one), stamped now
    version = reload.reload_market(store, settings, snap.tickers, snap.prices * 1.01, snap.cov, now=NOW,
                                   actor="ops", detail={})  # fmt: skip
    # Assert: 0 for each ticker, written deliberately with the new version (not a stale field read as 0)
    assert store.client.hget(MARKET_KEY, PRINT_GAPS_FIELD) == encode_print_gaps(version, np.zeros(4))
    after, counts = store.read_market_state()
    assert after.version == version and counts.tolist() == [0.0, 0.0, 0.0, 0.0]


# -- a universe change while the daemon runs ----------------------------------------------------------------------


@pytest.mark.parametrize("over", [1.0, OVER], ids=["at the band", "one unit over"])
def test_a_ticker_added_mid_gap_keeps_the_thin_tickers_count_by_name_in_the_model_and_the_band(
    store: Store, jump_settings: Settings, over: float
) -> None:
    # Arrange: AAA prints in bar 0, misses bars 1-3; EEE is added before bar 4; AAA misses bars 4-5 and prints
    # in bar 6 exactly at the band of 6 bars (its last accepted price: bar 0)
    prices = _start(store, jump_settings)
    _run(store, jump_settings, [_bar(0.0, prices)])
    anchor = store.read_market()
    sigma = math.sqrt(anchor.cov[0, 0])  # AAA's variance is kept while it does not print
    at_band = prices["AAA"] * math.exp(SIGMAS * sigma * math.sqrt(6.0) * over)

    def bars() -> Iterator[Bar]:
        yield from _absent_aaa(prices, 1, 3)
        warmup.add_ticker(store, jump_settings, "EEE", 10.0, 0.3, now=NOW)
        with_eee = {**prices, "EEE": 10.0}
        yield from _absent_aaa(with_eee, 4, 2)
        yield _bar(6.0, {**with_eee, "AAA": at_band})

    # Act
    daemon = _run(store, jump_settings, bars())
    # Assert: accepted at the band, its return over sqrt(6) in the model; EEE, added at 0, printed since
    snap, since = store.read_market_state()
    assert snap.tickers == ("AAA", "BBB", "CCC", "DDD", "EEE")
    if over != 1.0:  # refused: AAA keeps its count (6 bars now) and EEE its 0, each under its own name
        assert daemon.stats.prices_rejected == 1 and since.tolist() == [6.0, 0.0, 0.0, 0.0, 0.0]
        assert daemon.price_filter.missed_bars == {"AAA": 6}
        return
    assert daemon.stats.prices_rejected == 0 and snap.prices[0] == at_band
    assert since.tolist() == [0.0] * 5
    lam = jump_settings.model.ewma_decay
    expected = lam * anchor.cov[0, 0] + (1.0 - lam) * math.log(at_band / prices["AAA"]) ** 2 / 6.0
    assert snap.cov[0, 0] == pytest.approx(expected, rel=1e-12)


# -- the price filter's band after a restart mid-gap --------------------------------------------------------------

GAP = 40
"""Bars a thin ticker misses before it re-opens (a name printing in ~2.5 % of the bars)."""


@pytest.mark.parametrize("restart", [False, True], ids=["one daemon", "restarted mid-gap"])
@pytest.mark.parametrize("over", [1.0, OVER], ids=["at the band", "one unit over"])
def test_a_thin_tickers_reopening_move_is_judged_over_all_its_bars_across_a_restart(
    store: Store, jump_settings: Settings, restart: bool, over: float
) -> None:
    # Arrange: AAA prints in bar 0, misses GAP bars and re-opens at 12 one-bar sigmas x sqrt(GAP + 1) (x over)
    prices = _start(store, jump_settings)
    _run(store, jump_settings, [_bar(0.0, prices)])
    anchor = store.read_market()
    sigma = math.sqrt(anchor.cov[0, 0])
    price = prices["AAA"] * math.exp(SIGMAS * sigma * math.sqrt(GAP + 1.0) * over)
    bars = [*_absent_aaa(prices, 1, GAP), _bar(GAP + 1.0, {**prices, "AAA": price})]
    # Act
    if restart:
        _run(store, jump_settings, bars[: GAP // 4])  # a new process: the filter's memory is gone
        daemon = _run(store, jump_settings, bars[GAP // 4 :])
    else:
        daemon = _run(store, jump_settings, bars)
    # Assert
    snap, since = store.read_market_state()
    if over == 1.0:
        assert daemon.stats.prices_rejected == 0 and snap.prices[0] == price and since[0] == 0.0
    else:
        assert daemon.stats.prices_rejected == 1 and snap.prices[0] == prices["AAA"] and since[0] == GAP + 1.0
        assert daemon.price_filter.missed_bars["AAA"] == GAP + 1  # the filter's count is the stored one


def _replay_csv(path: Path, rows: list[tuple[str, dict[str, float]]], tickers: tuple[str, ...]) -> Path:
    lines = ["date," + ",".join(tickers)]
    lines += [stamp + "," + ",".join(repr(p[t]) if t in p else "" for t in tickers) for stamp, p in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _replay(store: Store, settings: Settings, path: Path) -> StreamDaemon:
    """``python -m engine.stream --feed replay --file path`` as a fresh process builds it (a restart resumes
    after the file's last bar the store holds)."""
    feed = stream._replay_feed(argparse.Namespace(file=path, bar_model_bars=None), settings, store)
    daemon = StreamDaemon(store, settings, feed, interval=0)
    daemon.run()
    return daemon


@pytest.mark.parametrize("over", [1.0, OVER], ids=["at the band", "one unit over"])
def test_a_replay_resumed_mid_gap_judges_the_reopening_print_over_all_its_bars(
    store: Store, jump_settings: Settings, tmp_path: Path, over: float
) -> None:
    # Arrange: minute rows in an XNYS session; AAA in row 0 (the reset bar anchoring the prices), then absent
    # for 30 rows, then a print at 12 one-bar sigmas x sqrt(31) (x over); the seeded variance is AAA's (the
    # reset bar updates nothing, an absent ticker keeps its variance)
    prices = _start(store, jump_settings)
    tickers = store.read_market().tickers
    sigma = math.sqrt(store.read_market().cov[0, 0])
    price = prices["AAA"] * math.exp(SIGMAS * sigma * math.sqrt(31.0) * over)
    stamp = [f"2024-03-05 15:{m:02d}:00" for m in range(32)]
    rows = [(stamp[0], prices), *((stamp[m], {k: v for k, v in prices.items() if k != "AAA"}) for m in range(1, 31))]
    full = _replay_csv(tmp_path / "full.csv", [*rows, (stamp[31], {**prices, "AAA": price})], tickers)
    _replay_csv(tmp_path / "head.csv", rows[:12], tickers)
    # Act: the first run stops after 12 rows; the restart resumes the full file after them
    _replay(store, jump_settings, tmp_path / "head.csv")
    daemon = _replay(store, jump_settings, full)
    # Assert: the restart played only the 20 rows left
    assert daemon.stats.bars_written == 20
    snap, since = store.read_market_state()
    if over == 1.0:
        assert daemon.stats.prices_rejected == 0 and snap.prices[0] == price and since[0] == 0.0
    else:
        assert daemon.stats.prices_rejected == 1 and snap.prices[0] == prices["AAA"] and since[0] == 31.0


# -- a market-wide halt: no bars at all ---------------------------------------------------------------------------


@pytest.mark.parametrize("over", [1.0, OVER], ids=["at the band", "one unit over"])
def test_a_market_wide_halt_adds_no_bar_to_the_count_or_the_band(
    store: Store, jump_settings: Settings, tmp_path: Path, over: float
) -> None:
    # Arrange: a replay of minute rows; every ticker prints 15:00-15:05, AAA misses 15:06, then the file has no
    # row at all for 30 minutes (the whole market halted) and AAA re-opens at 15:36 at 12 one-bar sigmas x
    # sqrt(2) (x over): two bars written since its last price, whatever the clock says
    prices = _start(store, jump_settings)
    tickers = store.read_market().tickers
    sigma = math.sqrt(store.read_market().cov[0, 0])  # AAA's returns are 0 from 15:01: its variance decays
    lam = jump_settings.model.ewma_decay
    sigma *= math.sqrt(lam**5)
    price = prices["AAA"] * math.exp(SIGMAS * sigma * math.sqrt(2.0) * over)
    rows = [(f"2024-03-05 15:{m:02d}:00", prices) for m in range(6)]
    rows += [("2024-03-05 15:06:00", {k: v for k, v in prices.items() if k != "AAA"})]
    rows += [("2024-03-05 15:36:00", {**prices, "AAA": price})]
    # Act
    daemon = _replay(store, jump_settings, _replay_csv(tmp_path / "halt.csv", rows, tickers))
    # Assert
    snap, since = store.read_market_state()
    if over == 1.0:
        assert daemon.stats.prices_rejected == 0 and snap.prices[0] == price and since[0] == 0.0
        expected = lam * sigma**2 + (1.0 - lam) * math.log(price / prices["AAA"]) ** 2 / 2.0
        assert snap.cov[0, 0] == pytest.approx(expected, rel=1e-12)
    else:
        assert daemon.stats.prices_rejected == 1 and since[0] == 2.0
        assert daemon.price_filter.missed_bars["AAA"] == 2


# -- the filter's resume on its own -------------------------------------------------------------------------------


def test_resume_sets_each_tickers_count_by_name_and_a_retry_starts_from_it() -> None:
    f = PriceFilter(SIGMAS)
    f.begin("bar-1")
    f.absent(["AAA", "ZZZ"])  # ZZZ: a ticker no longer in the universe
    since = np.array([5.0, 0.0, 2.0])
    assert f.resume(("AAA", "BBB", "CCC"), since) is since
    assert f.missed_bars == {"AAA": 5, "CCC": 2}
    f.begin("bar-1")  # the bar in hand retried against the loaded market
    assert f.missed_bars == {"AAA": 5, "CCC": 2}
    with pytest.raises(ValueError):
        f.resume(("AAA",), since)
