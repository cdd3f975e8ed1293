"""The bar scale of ``python -m engine.stream --feed replay`` (engine/price_filter.py "Bar scale", the builder
engine/stream.py ``_replay_feed``) on real S&P 500 daily closes (``arch.data.sp500``, 2018, 251 sessions).

On the XNYS calendar each date is moved to its session close; the early closes of 2018 (13:00 on 2018-07-03,
2018-11-23 and 2018-12-24) made steps of 21 h to 75 h, the spacing was refused as mixed and the replay fell
back to one model bar per row: every daily return went into the one-minute EWMA unscaled (stored daily vol
34.8% for 1.76%). A restart re-derived the scale from the few rows left (again one model bar per row).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from arch.data import sp500

import warmup
from engine.clocks import stamp_daily_closes
from engine.errors import FeedError
from engine.feeds import ReplayFeed
from engine.price_filter import BarScaleMismatch
from engine.sessions import market_calendar
from engine.settings import Settings, settings_from_dict
from engine.store import Store
from engine.stream import StreamDaemon, _replay_feed

from .conftest import TEST_CONFIG

SEEDED_AT = 1_700_000_000.0
ANNUAL_VOL = 0.2
DECAY = 0.94


def _closes() -> Any:
    return sp500.load()["Adj Close"]["2018-01-01":"2018-12-31"]


def _settings(calendar: str = "XNYS") -> Settings:
    cfg = copy.deepcopy(TEST_CONFIG)
    start = float(_closes().iloc[0])
    cfg["universe"]["assets"] = {
        "SPX": {"price": start, "annual_vol": ANNUAL_VOL, "avg_daily_volume": 1_000_000, "spread_bps": 2.0}
    }
    cfg["portfolios"] = [{"id": "main", "account_type": "cash", "cash": "1000000.00", "holdings": {"SPX": 100}}]
    cfg["stress_scenarios"] = {"crash": {"description": "-20%", "shocks": {"*": -0.2}}}
    cfg["market"] = {"calendar": calendar}
    cfg["stream"] = {"max_jump_sigma": 12.0}  # the shipped filter
    return settings_from_dict(cfg)


def _csv(tmp_path: Path) -> Path:
    path = tmp_path / "spx2018.csv"
    path.write_text("date,SPX\n" + "".join(f"{t.date().isoformat()},{p!r}\n" for t, p in _closes().items()))
    return path


def _seed(store: Store, settings: Settings) -> None:
    store.client.flushdb()
    warmup.seed(store, settings, now=SEEDED_AT)


def _args(path: Path, bar_model_bars: float | None = None) -> argparse.Namespace:
    return argparse.Namespace(file=str(path), bar_model_bars=bar_model_bars)


def _play(store: Store, settings: Settings, path: Path, ticks: int | None = None) -> StreamDaemon:
    daemon = StreamDaemon(store, settings, _replay_feed(_args(path), settings, store), interval=0)
    daemon.run(ticks=ticks)
    return daemon


def test_a_daily_replay_with_early_closes_stores_the_daily_ewma_of_the_closes(store: Store, tmp_path: Path) -> None:
    # Arrange: the file, and proof that its session-close stamps have steps that are no whole number of days
    settings = _settings("XNYS")
    path = _csv(tmp_path)
    sessions = market_calendar(settings).sessions
    assert sessions is not None
    stamped = np.array([b.ts for b in stamp_daily_closes(ReplayFeed(path).bars, sessions)])
    hours = np.diff(stamped) / 3600.0
    assert {21.0, 45.0, 75.0} <= set(np.round(hours).tolist())
    _seed(store, settings)
    # Act: the builder of `python -m engine.stream --feed replay --file ...`, then the real daemon
    daemon = _play(store, settings, path)
    # Assert: one row = one day = 390 model bars, and the stored daily variance is the daily EWMA computed
    # here from the closes (seeded at the configured 20% annual vol)
    assert daemon.price_filter.bar_scale == settings.model.bars_per_day == 390
    assert daemon.stats.prices_rejected == 0
    variance = ANNUAL_VOL**2 / 252
    for r in np.diff(np.log(_closes().to_numpy())):
        variance = DECAY * variance + (1 - DECAY) * r * r
    stored = store.read_market().cov[0, 0] * settings.model.bars_per_day
    assert stored == pytest.approx(variance, rel=1e-9)
    assert store.read_heartbeat("stream")["feed_bar_model_bars"] == "390.0"  # type: ignore[index]


def test_a_replay_whose_spacing_is_unknown_is_refused_with_a_coded_error_unless_the_scale_is_given(
    store: Store, tmp_path: Path
) -> None:
    # Arrange: steps of 60 s, 90 s, 60 s, 150 s, ...: no minute, hour, day or week
    settings = _settings("24/7")
    _seed(store, settings)
    path = tmp_path / "odd.csv"
    path.write_text("date,SPX\n" + "".join(f"{t},{2700 + i}\n" for i, t in enumerate((0, 60, 150, 210, 360, 400))))
    # Act / Assert: the builder and a daemon given the feed directly both refuse it
    with pytest.raises(FeedError) as built:
        _replay_feed(_args(path), settings, store)
    with pytest.raises(FeedError) as direct:
        StreamDaemon(store, settings, ReplayFeed(path), interval=0)
    assert built.value.code == direct.value.code == "FEED_INVALID"
    assert "--bar-model-bars" in str(built.value)
    # an explicit scale is taken as given
    daemon = StreamDaemon(store, settings, _replay_feed(_args(path, 60.0), settings, store), interval=0)
    assert daemon.price_filter.bar_scale == 60.0


@pytest.mark.parametrize("calendar", ["XNYS", "24/7"])
def test_a_replay_stopped_and_restarted_near_its_end_stores_the_covariance_of_one_uninterrupted_run(
    store: Store, tmp_path: Path, calendar: str
) -> None:
    # Arrange: stopped after 2018-12-24 (four rows left, across Christmas: no spacing of their own)
    settings = _settings(calendar)
    path = _csv(tmp_path)
    stop_after = [t.date().isoformat() for t in _closes().index].index("2018-12-24") + 1
    _seed(store, settings)
    _play(store, settings, path)
    one_go = store.read_market()
    _seed(store, settings)
    _play(store, settings, path, ticks=stop_after)
    # Act: the restart, through the builder (it resumes after the stored last row)
    restarted = _play(store, settings, path)
    # Assert
    assert len(restarted.feed) == 4 and restarted.price_filter.bar_scale == 390.0  # type: ignore[arg-type]
    after = store.read_market()
    np.testing.assert_array_equal(after.cov, one_go.cov)
    np.testing.assert_array_equal(after.prices, one_go.prices)


def test_a_restart_whose_bar_scale_differs_from_the_stored_one_is_refused(store: Store, tmp_path: Path) -> None:
    # Arrange: the first rows were written at one model bar per row (as before the fix, or another scale)
    settings = _settings("XNYS")
    path = _csv(tmp_path)
    _seed(store, settings)
    _play(store, settings, path, ticks=100)
    beat = store.read_heartbeat("stream") or {}
    assert beat["feed_bar_model_bars"] == "390.0"
    store.client.hset("hb:stream", "feed_bar_model_bars", "1.0")
    # Act / Assert
    with pytest.raises(BarScaleMismatch) as refused:
        _replay_feed(_args(path), settings, store)
    assert refused.value.code == "FEED_BAR_SCALE_MISMATCH"
