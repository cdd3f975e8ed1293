"""The Risk page's backtest view (logic/views/risk.py ``backtest_view``): the zone column says why there is no
zone while the rolling window holds fewer observations than ``model.backtest_zone_min_observations``."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from engine.settings import Settings
from engine.store import Store, TickEvent
from logic import views
from logic.backtest_monitor import BacktestBooks
from logic.views.risk import zone_label

TICKS = 60
"""60 bars, 30 seed returns and a 20-return window: 9 closed one-bar horizons, none of the one-day limit."""


def binomial_zone(x: int, n: int, confidence: float) -> str:
    """The Basel rule written out (F the binomial CDF at n trials, p = 1 - c)."""
    p = 1.0 - confidence
    cdf = sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(x + 1))
    return "green" if x == 0 or cdf < 0.95 else "yellow" if cdf < 0.9999 else "red"


def _fed(store: Store, settings: Settings) -> None:
    books, rng = BacktestBooks(store, settings), np.random.default_rng(3)
    prices = np.array([100.0, 50.0])
    for version in range(1, TICKS + 1):
        prices = prices * np.exp(rng.normal(0.0, 0.01, 2))
        event = TickEvent(version, float(version), ("AAA", "BBB"), prices, bar_ts=60.0 * version)
        fed = books.feed(event, {"main": np.array([1000.0, 2000.0])})
        pipe = store.client.pipeline(transaction=True)
        books.write(fed, pipe)
        pipe.execute()
        books.commit(fed)


@pytest.mark.parametrize("minimum", [None, 10, 9, 1])  # the default 250, one over the 9 there are, exactly, 1
def test_the_zone_column_shows_the_zone_from_the_minimum_on_and_says_why_there_is_none_before(
    store: Store, make_settings: Callable[..., Settings], minimum: int | None
) -> None:
    model = {"fhs_window": 20} | ({} if minimum is None else {"backtest_zone_min_observations": minimum})
    settings = make_settings({"model": model})
    _fed(store, settings)

    bt = views.backtest_view(views.Desk(store.client, settings), "main")

    required = 250 if minimum is None else minimum
    summary = store.read_backtest_summary("main")
    assert summary is not None and summary["zone_min_observations"] == required
    bar, limit = bt.tables["bar"], bt.tables["limit"]
    assert list(bar["rolling_observations"]) == [9, 9, 9] and list(limit["rolling_observations"]) == [0, 0, 0]
    for _, row in bar.iterrows():
        if required <= 9:
            assert row["zone"] == binomial_zone(int(row["rolling_exceedances"]), 9, 0.99)
            assert row["zone"] == summary["tracks"]["bar"][row["method"]]["zone"]
        else:
            assert row["zone"] == f"no zone before {required} observations (9 so far)"
            assert summary["tracks"]["bar"][row["method"]]["zone"] is None
    noun = "observation" if required == 1 else "observations"
    assert list(limit["zone"]) == [f"no zone before {required} {noun} (0 so far)"] * 3


def test_a_zone_label_is_the_zone_or_why_there_is_none() -> None:
    assert zone_label("red", 2, 1) == "red"
    assert zone_label(None, 249, 250) == "no zone before 250 observations (249 so far)"
    assert zone_label(math.nan, 0, 1) == "no zone before 1 observation (0 so far)"
    assert zone_label(None, 0, 2) == "no zone before 2 observations (0 so far)"


@pytest.mark.parametrize(
    ("model_bars", "name"), [(None, "minute"), (1.0, "minute"), (60.0, "hourly"), (390.0, "daily"), (1950.0, "weekly"),
                             (15.0, "15-minute")],
)  # fmt: skip
def test_the_feed_bar_is_named_from_the_stream_heartbeat(
    store: Store, settings: Settings, model_bars: float | None, name: str
) -> None:
    """The Backtest tab counts its horizons in the feed's bars (a daily replay's one-day limit is one daily bar)."""
    if model_bars is not None:
        store.write_heartbeat("stream", {"ts": 0.0, "clock": "replay", "feed_bar_model_bars": model_bars})
    assert settings.model.bars_per_day == 390
    assert views.feed_bar_name(views.Desk(store.client, settings)) == name
