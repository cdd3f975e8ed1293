"""logic/monitor.py and logic/snapshot.py: snapshots against closed forms, drawdown windows, MFE/MAE, history,
the consumer group (exactly once between two monitors, restart from pending), alert hand-off."""

from __future__ import annotations

import dataclasses
import math
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import redis
from scipy import stats

import warmup
from engine.clocks import ClockMode, MarketClock
from engine.feeds import Bar, IterableFeed, SimulatedFeed
from engine.redis_server import EmbeddedRedis
from engine.settings import Market, Settings, settings_from_dict
from engine.store import MONITOR_GROUP, TICKS_KEY, PortfolioKeys, Position, Store
from engine.stream import StreamDaemon
from logic.backtest_runner import BacktestRunner
from logic.monitor import Monitor
from logic.snapshot import HISTORY_FIELDS, period_ids

from .conftest import TEST_CONFIG, merge
from .test_stream import daemon_env, history_versions, spawn, wait_for, write_config

WEDNESDAY = datetime(2024, 3, 6, 15, 0, tzinfo=UTC).timestamp()
DAY = 86_400.0
BARS_PER_DAY = 390


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _tick(
    store: Store, settings: Settings, clock: Clock, prices: Mapping[str, float], monitor: Monitor
) -> None:
    """Write one bar at ``clock`` and let the monitor process it."""
    StreamDaemon(store, settings, IterableFeed([Bar(clock.t, dict(prices))]), clock=clock, interval=0).run()
    monitor.process_available()


def _sim_ticks(store: Store, settings: Settings, n: int, seed: int = 1) -> None:
    StreamDaemon(store, settings, SimulatedFeed.from_settings(settings, seed=seed), interval=0).run(ticks=n)


def _snapshot(store: Store, pid: str) -> dict[str, Any]:
    snap = store.read_snapshot(pid)
    assert snap is not None
    return snap


# -- snapshot numbers ----------------------------------------------------------------------------------------


def test_snapshot_figures_match_closed_forms_computed_here(seeded_store: Store, settings: Settings) -> None:
    # Arrange
    clock = Clock(WEDNESDAY)
    monitor = Monitor(seeded_store, settings, clock=clock)
    path = [{"AAA": 104.0, "BBB": 49.0, "CCC": 190.0, "DDD": 26.0},
            {"AAA": 97.0, "BBB": 52.0, "CCC": 212.0, "DDD": 24.0},
            {"AAA": 101.0, "BBB": 51.0, "CCC": 205.0, "DDD": 25.5}]  # fmt: skip
    bars = [Bar(WEDNESDAY + i, prices) for i, prices in enumerate(path, start=1)]
    clock.t = WEDNESDAY + 1.0

    def daemon_clock() -> float:  # one bar per second
        clock.t += 1.0
        return clock.t - 1.0

    StreamDaemon(seeded_store, settings, IterableFeed(bars), clock=daemon_clock, interval=0).run()
    # Act: the monitor sees the three ticks 2.5 s after the last one was written
    clock.t = WEDNESDAY + 3.0 + 2.5
    monitor.process_available()
    # Assert
    market = seeded_store.read_market()
    _, _, stressed = seeded_store.read_stressed()
    day = math.sqrt(BARS_PER_DAY)
    z95, z99 = stats.norm.ppf(0.95), stats.norm.ppf(0.99)
    last = path[-1]
    m = settings.model.stress_vol_multiplier
    cases = {
        "main": ({"AAA": (1000, 100.0), "BBB": (2000, 50.0)}, 1_000_000.0),
        "hedge": ({"CCC": (300, 200.0), "DDD": (-1000, 25.0)}, 200_000.0),
    }
    for pid, (holdings, cash) in cases.items():
        snap = _snapshot(seeded_store, pid)
        mv = np.array([holdings[t][0] * last[t] if t in holdings else 0.0 for t in market.tickers])
        equity = cash + mv.sum()
        sigma = math.sqrt(mv @ market.cov @ mv)
        floored = math.sqrt(mv @ stressed @ mv)  # the crisis matrix is the seed's; the bars moved the EWMA one
        unrealized = {t: q * (last[t] - avg) for t, (q, avg) in holdings.items()}
        assert snap["version"] == 3 and snap["ts"] == clock.t and snap["market_ts"] == WEDNESDAY + 3.0
        assert snap["equity"] == pytest.approx(equity, rel=1e-12)
        assert snap["gross_exposure"] == pytest.approx(np.abs(mv).sum(), rel=1e-12)
        assert snap["net_exposure"] == pytest.approx(mv.sum(), rel=1e-12)
        assert snap["leverage"] == pytest.approx(np.abs(mv).sum() / equity, rel=1e-12)
        assert snap["var"]["var95"] == pytest.approx(z95 * sigma * day, rel=1e-9)
        assert snap["var"]["var99"] == pytest.approx(z99 * sigma * day, rel=1e-9)
        assert snap["var"]["cvar95"] == pytest.approx(sigma * stats.norm.pdf(z95) / 0.05 * day, rel=1e-9)
        assert snap["var"]["cvar99"] == pytest.approx(sigma * stats.norm.pdf(z99) / 0.01 * day, rel=1e-9)
        assert snap["var"]["stressed_var99"] == pytest.approx(z99 * max(floored, m * sigma) * day, rel=1e-9)
        assert snap["var"]["utilization"] == pytest.approx(z95 * sigma * day / 20_000, rel=1e-9)
        assert (snap["var"]["limit"], snap["var"]["confidence"]) == (20_000.0, 0.95)
        shares = np.abs(mv) / np.abs(mv).sum()
        assert snap["concentration"]["hhi"] == pytest.approx((shares**2).sum(), rel=1e-12)
        assert snap["concentration"]["largest_share"] == pytest.approx(np.abs(mv).max() / equity, rel=1e-12)
        assert snap["concentration"]["largest_ticker"] == market.tickers[int(np.argmax(np.abs(mv)))]
        assert snap["pnl"]["unrealized"] == pytest.approx(sum(unrealized.values()), rel=1e-12)
        assert snap["pnl"]["total"] == pytest.approx(sum(unrealized.values()), rel=1e-12)
        assert snap["data"] == {"market_age_seconds": pytest.approx(2.5), "missing_prices": []}
        assert snap["trading_state"] == "ACTIVE"
        assert [p["ticker"] for p in snap["positions"]] == sorted(holdings)
        for p in snap["positions"]:
            q, avg = holdings[p["ticker"]]
            path_pnl = [q * (prices[p["ticker"]] - avg) for prices in path]
            assert p["unrealized_pnl"] == pytest.approx(unrealized[p["ticker"]], rel=1e-12)
            assert p["mfe"] == pytest.approx(max(0.0, *path_pnl), rel=1e-12)
            assert p["mae"] == pytest.approx(min(0.0, *path_pnl), rel=1e-12)
            assert p["weight"] == pytest.approx(q * last[p["ticker"]] / equity, rel=1e-12)
            assert (p["qty"], p["avg_price"], p["last"]) == (q, avg, last[p["ticker"]])
    hedge, main = _snapshot(seeded_store, "hedge"), _snapshot(seeded_store, "main")
    gross = hedge["gross_exposure"]
    assert hedge["margin"]["used"] == pytest.approx(0.5 * gross, rel=1e-12)
    assert hedge["margin"]["maintenance"] == pytest.approx(0.25 * gross, rel=1e-12)
    assert hedge["margin"]["level"] == pytest.approx(hedge["equity"] / (0.5 * gross) * 100, rel=1e-12)
    assert main["margin"] == {"level": None, "used": 0.0, "maintenance": 0.0}


@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "per-portfolio"])
def test_snapshot_stressed_var_of_a_long_short_book_is_never_below_its_var(store: Store, vectorised: bool) -> None:
    # Arrange: two assets with correlation -0.8, long one and short the other (the short leg adds risk); the
    # crisis matrix's floor (+0.6) would turn the pair into a hedge and its VaR alone below the ordinary VaR
    config = merge(TEST_CONFIG, {
        "universe": {"correlation": -0.8},
        "portfolios": [{"id": "pair", "account_type": "margin", "cash": "500000.00",
                        "holdings": {"AAA": 1000, "BBB": -1000}}],
    })  # fmt: skip
    config["universe"]["assets"] = {t: config["universe"]["assets"][t] for t in ("AAA", "BBB")}
    config["stress_scenarios"] = {}  # TEST_CONFIG's rotation shocks DDD, not in this universe
    settings = settings_from_dict(config)
    warmup.seed(store, settings, now=WEDNESDAY)
    market = store.read_market()
    _, stressed_tickers, stressed = store.read_stressed()
    assert stressed_tickers == market.tickers
    mv = np.array([{"AAA": 100_000.0, "BBB": -50_000.0}[t] for t in market.tickers])
    m, day, z99 = settings.model.stress_vol_multiplier, math.sqrt(BARS_PER_DAY), stats.norm.ppf(0.99)
    var99 = z99 * math.sqrt(mv @ market.cov @ mv) * day
    assert z99 * math.sqrt(mv @ stressed @ mv) * day < var99  # the crisis matrix alone: what was shown before
    monitor = Monitor(store, settings, lambda: WEDNESDAY, idle_refresh_seconds=0, vectorised=vectorised)

    # Act
    snap = monitor.refresh()["pair"]

    # Assert: z·m·sqrt(e'Σe), the multiplied volatilities at today's correlation
    assert snap["var"]["var99"] == pytest.approx(var99, rel=1e-12)
    assert snap["var"]["stressed_var99"] == pytest.approx(m * var99, rel=1e-12)
    assert snap["var"]["stressed_var99"] >= snap["var"]["var99"]


def test_snapshot_has_exactly_the_contract_keys(seeded_store: Store, settings: Settings) -> None:
    monitor = Monitor(seeded_store, settings)
    _sim_ticks(seeded_store, settings, 1)
    assert BacktestRunner(seeded_store, settings).process_available() == 1  # the snapshot reads its section
    monitor.process_available()
    snap = _snapshot(seeded_store, "main")
    assert set(snap) == {
        "portfolio_id", "ts", "version", "market_ts", "equity", "cash", "market_value", "gross_exposure",
        "net_exposure", "leverage", "pnl", "var", "drawdown", "concentration", "margin", "data",
        "trading_state", "positions", "var_method", "component_var", "backtest",
    }  # fmt: skip
    assert snap["var_method"] == "normal"
    assert set(snap["component_var"]) == {"AAA", "BBB"}  # the held tickers
    assert set(snap["backtest"]) == {
        "method", "confidence", "exceedances", "zone", "observations", "bar_exceedances", "bar_zone",
        "bar_observations", "methods", "market_version",
    }  # fmt: skip
    assert snap["backtest"]["market_version"] == snap["version"]  # the runner fed the snapshot's bar
    assert set(snap["pnl"]) == {"unrealized", "realized", "daily", "total"}
    assert set(snap["var"]) == {"var95", "var99", "cvar95", "cvar99", "stressed_var99", "limit", "confidence",
                                "utilization", "horizon_days", "stressed_limit_var", "stressed_limit",
                                "stressed_utilization"}  # fmt: skip
    assert set(snap["drawdown"]) == {"daily", "weekly", "max"}
    assert set(snap["concentration"]) == {"hhi", "largest_share", "largest_ticker"}
    assert set(snap["margin"]) == {"level", "used", "maintenance"}
    assert set(snap["data"]) == {"market_age_seconds", "missing_prices"}
    assert set(snap["positions"][0]) == {"ticker", "qty", "avg_price", "last", "market_value", "weight",
                                         "unrealized_pnl", "realized_pnl", "mfe", "mae"}  # fmt: skip


def test_daily_and_weekly_drawdowns_reset_at_the_configured_day_and_on_monday(
    seeded_store: Store, settings: Settings
) -> None:
    # Arrange: only AAA moves; main's equity is 1,100,000 + 1000 * AAA. The "24/7" market: days at the
    # configured hour (exchange sessions: tests/test_replay_clock.py)
    settings = dataclasses.replace(settings, market=Market(calendar="24/7"))
    clock = Clock(WEDNESDAY)
    monitor = Monitor(seeded_store, settings, clock=clock)

    def equity(aaa: float) -> float:
        return 1_100_000.0 + 1000.0 * aaa

    def step(at: float, aaa: float) -> dict[str, Any]:
        clock.t = at
        _tick(seeded_store, settings, clock, {"AAA": aaa}, monitor)
        return _snapshot(seeded_store, "main")

    # Act / Assert: Wednesday up then down
    step(WEDNESDAY, 100.0)
    step(WEDNESDAY + 60, 120.0)
    wed = step(WEDNESDAY + 120, 90.0)
    assert wed["drawdown"]["daily"] == pytest.approx(equity(90) / equity(120) - 1, rel=1e-12)
    assert wed["drawdown"]["weekly"] == pytest.approx(equity(90) / equity(120) - 1, rel=1e-12)
    assert wed["pnl"]["daily"] == pytest.approx(equity(90) - equity(100), rel=1e-12)
    # Thursday (UTC midnight): the day opens at Wednesday's last equity, the week goes on
    thu = step(WEDNESDAY + 9.5 * 3600, 95.0)
    assert thu["drawdown"]["daily"] == 0.0
    assert thu["pnl"]["daily"] == pytest.approx(equity(95) - equity(90), rel=1e-12)
    assert thu["drawdown"]["weekly"] == pytest.approx(equity(95) / equity(120) - 1, rel=1e-12)
    assert thu["drawdown"]["max"] == pytest.approx(equity(90) / equity(120) - 1, rel=1e-12)
    # Monday: new day and new week, both open at Thursday's equity; the all-time worst drawdown stays
    mon = step(WEDNESDAY + 4 * DAY + 9.5 * 3600, 80.0)
    assert mon["drawdown"]["daily"] == pytest.approx(equity(80) / equity(95) - 1, rel=1e-12)
    assert mon["drawdown"]["weekly"] == pytest.approx(equity(80) / equity(95) - 1, rel=1e-12)
    assert mon["drawdown"]["max"] == pytest.approx(equity(80) / equity(120) - 1, rel=1e-12)
    assert mon["pnl"]["daily"] == pytest.approx(equity(80) - equity(95), rel=1e-12)
    peaks = seeded_store.read_peaks("main")
    assert peaks is not None and (peaks.day, peaks.week) == ("2024-03-11", "2024-03-11")


@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "per-portfolio"])
def test_on_an_exchange_calendar_a_new_day_opens_at_the_previous_close_not_at_an_after_hours_equity(
    seeded_store: Store, settings: Settings, vectorised: bool
) -> None:
    # Arrange: XNYS (the default calendar); only AAA moves, main's equity is 1,100,000 + 1000 * AAA
    assert settings.market.calendar == "XNYS"
    ny = ZoneInfo("America/New_York")
    clock = Clock(datetime(2024, 3, 8, 15, 0, tzinfo=ny).timestamp())
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0, vectorised=vectorised)

    def equity(aaa: float) -> float:
        return 1_100_000.0 + 1000.0 * aaa

    def step(at: datetime, aaa: float) -> dict[str, Any]:
        clock.t = at.replace(tzinfo=ny).timestamp()
        _tick(seeded_store, settings, clock, {"AAA": aaa}, monitor)
        return _snapshot(seeded_store, "main")

    # Act: Friday in the session, at the close (in it), a second after it (evening), Monday a second before the
    # open (pre-market: still Friday's day) and at the open
    step(datetime(2024, 3, 8, 15, 0), 100.0)
    step(datetime(2024, 3, 8, 16, 0, 0), 110.0)
    evening = step(datetime(2024, 3, 8, 16, 0, 1), 120.0)
    premarket = step(datetime(2024, 3, 11, 9, 29, 59), 130.0)
    opened = step(datetime(2024, 3, 11, 9, 30, 0), 105.0)
    later = step(datetime(2024, 3, 11, 10, 0), 107.0)

    # Assert: after hours the day is still Friday's, measured from Friday's open
    assert evening["pnl"]["daily"] == pytest.approx(equity(120) - equity(100), rel=1e-12)
    assert premarket["pnl"]["daily"] == pytest.approx(equity(130) - equity(100), rel=1e-12)
    # Monday opens at Friday's close (16:00:00, AAA 110), not at the evening's or the pre-market's equity; the
    # day's and the week's peaks start at max(close, first equity)
    assert opened["pnl"]["daily"] == pytest.approx(equity(105) - equity(110), rel=1e-12)
    assert opened["drawdown"]["daily"] == pytest.approx(equity(105) / equity(110) - 1, rel=1e-12)
    assert opened["drawdown"]["weekly"] == pytest.approx(equity(105) / equity(110) - 1, rel=1e-12)
    assert opened["drawdown"]["max"] == pytest.approx(equity(105) / equity(130) - 1, rel=1e-12)  # every equity
    assert later["pnl"]["daily"] == pytest.approx(equity(107) - equity(110), rel=1e-12)
    assert later["drawdown"]["daily"] == pytest.approx(equity(107) / equity(110) - 1, rel=1e-12)
    peaks = seeded_store.read_peaks("main")
    assert peaks is not None and (peaks.day, peaks.week, peaks.day_open) == ("2024-03-11", "2024-03-11", equity(110))
    stored = seeded_store.client.hmget(PortfolioKeys("main").peaks, ["last", "close"])
    assert [float(v) for v in stored] == [equity(107), equity(107)]


@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "per-portfolio"])
@pytest.mark.parametrize(("printed", "closes"), [((16, 0, 0), True), ((16, 0, 1), False)], ids=["at", "after"])
def test_the_closing_bar_is_the_close_though_the_monitor_sees_it_after_the_close(
    seeded_store: Store, settings: Settings, vectorised: bool, printed: tuple[int, int, int], closes: bool
) -> None:
    """Whether an equity is the session's close is decided on the bar's own time (``MarketView.printed_at``), not
    on the monitor's: live, the bar printed at 16:00:00 reaches the monitor half a second later, and its equity
    is Friday's close all the same (the next day's P&L counted the closing minute's move again); a bar printed a
    second after the close is not, however soon it is seen."""
    ny = ZoneInfo("America/New_York")
    clock = Clock(datetime(2024, 3, 8, 15, 0, tzinfo=ny).timestamp())
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0, vectorised=vectorised)

    def step(at: datetime, aaa: float) -> dict[str, Any]:
        bar = at.replace(tzinfo=ny).timestamp()
        clock.t = bar + 0.5  # the stream daemon and the monitor see it half a second after it was printed
        StreamDaemon(seeded_store, settings, IterableFeed([Bar(bar, {"AAA": aaa})]), clock=clock, interval=0).run()
        monitor.process_available()
        return _snapshot(seeded_store, "main")

    step(datetime(2024, 3, 8, 15, 59), 100.0)
    step(datetime(2024, 3, 8, *printed), 100.4)
    opened = step(datetime(2024, 3, 11, 9, 30, 30), 100.1)
    close = 1000.0 * (100.4 if closes else 100.0)  # main: 1,100,000 + 1000 * AAA
    assert opened["pnl"]["daily"] == pytest.approx(1000.0 * 100.1 - close, rel=1e-9)
    assert seeded_store.read_peaks("main").day_open == pytest.approx(1_100_000.0 + close, rel=1e-12)  # type: ignore[union-attr]


@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "per-portfolio"])
def test_a_late_tick_of_an_earlier_day_moves_neither_that_day_nor_the_close(
    seeded_store: Store, settings: Settings, vectorised: bool
) -> None:
    ny = ZoneInfo("America/New_York")
    clock = Clock(datetime(2024, 3, 8, 15, 0, tzinfo=ny).timestamp())
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0, vectorised=vectorised)
    for at, aaa in ((datetime(2024, 3, 8, 15, 0), 100.0), (datetime(2024, 3, 11, 10, 0), 90.0)):
        clock.t = at.replace(tzinfo=ny).timestamp()
        _tick(seeded_store, settings, clock, {"AAA": aaa}, monitor)
    stream = StreamDaemon(seeded_store, settings, IterableFeed([]), clock=clock, interval=0)
    assert stream.process_bar(Bar(clock.t + 60, {"AAA": 95.0}))
    late = seeded_store.last_tick()
    assert late is not None

    # Act: the monitor processes it dated in Friday's session (a lagging monitor's clock)
    clock.t = datetime(2024, 3, 8, 15, 30, tzinfo=ny).timestamp()
    monitor.process_tick(None, late)

    # Assert: Monday's day and the close are Monday's (AAA 90): Tuesday would open there
    peaks = seeded_store.read_peaks("main")
    assert peaks is not None and (peaks.day, peaks.day_open) == ("2024-03-11", 1_200_000.0)
    assert float(seeded_store.client.hget(PortfolioKeys("main").peaks, "close") or b"nan") == 1_190_000.0


@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "per-portfolio"])
@pytest.mark.parametrize("mode", [ClockMode.REPLAY, ClockMode.LIVE])
def test_a_reset_bar_restarts_the_drawdowns_of_a_replay_only_live_it_keeps_them(
    seeded_store: Store, settings: Settings, vectorised: bool, mode: ClockMode
) -> None:
    # Arrange: a stream daemon in the clock mode under test; main down from 1,200,000 to 1,180,000
    t = WEDNESDAY
    clock = MarketClock(seeded_store, wall=lambda: t)
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0, vectorised=vectorised)
    daemon = StreamDaemon(seeded_store, settings, IterableFeed([]), clock=lambda: t, interval=0, clock_mode=mode)
    for aaa, reset in ((100.0, False), (80.0, False), (80.0, True)):  # a replay's first bar / a new epoch's
        t += 60
        assert daemon.process_bar(Bar(t, {"AAA": aaa}, reset=reset))
        monitor.process_available()
    assert clock.mode() == mode

    # Act: one more bar
    t += 60
    assert daemon.process_bar(Bar(t, {"AAA": 81.0}))
    monitor.process_available()

    # Assert: a replay starts its drawdowns at its reset bar's equity (the data's clock restarted), a live
    # market keeps the day open and the worst drawdown (a reloaded market is no new book: engine/reload.py)
    snap = _snapshot(seeded_store, "main")
    e0, e1, e2 = 1_200_000.0, 1_180_000.0, 1_181_000.0
    if mode == ClockMode.REPLAY:
        assert snap["pnl"]["daily"] == pytest.approx(e2 - e1, rel=1e-12)
        assert snap["drawdown"] == {"daily": 0.0, "weekly": 0.0, "max": 0.0}
    else:
        assert snap["pnl"]["daily"] == pytest.approx(e2 - e0, rel=1e-12)
        assert snap["drawdown"]["daily"] == pytest.approx(e2 / e0 - 1, rel=1e-12)
        assert snap["drawdown"]["max"] == pytest.approx(e1 / e0 - 1, rel=1e-12)


@pytest.mark.parametrize(
    ("local", "hour", "day", "week"),
    [
        (datetime(2024, 3, 8, 16, 59), 17, "2024-03-07", "2024-03-04"),  # Friday before the 17:00 reset
        (datetime(2024, 3, 8, 17, 0), 17, "2024-03-08", "2024-03-04"),
        (datetime(2024, 3, 10, 23, 0), 17, "2024-03-10", "2024-03-04"),  # Sunday after the DST change
        (datetime(2024, 3, 11, 16, 0), 17, "2024-03-10", "2024-03-04"),
        (datetime(2024, 3, 11, 17, 30), 17, "2024-03-11", "2024-03-11"),  # Monday 17:00 starts the week
        (datetime(2024, 3, 11, 0, 0), 0, "2024-03-11", "2024-03-11"),
        (datetime(2024, 3, 10, 23, 59), 0, "2024-03-10", "2024-03-04"),
    ],
)
def test_period_ids_follow_the_local_reset_hour_and_monday_weeks(
    local: datetime, hour: int, day: str, week: str
) -> None:
    tz = ZoneInfo("America/New_York")
    assert period_ids(local.replace(tzinfo=tz).timestamp(), tz, hour) == (day, week)


def test_mfe_and_mae_follow_the_position_and_restart_when_it_flips_or_closes(
    seeded_store: Store, settings: Settings
) -> None:
    # Arrange: hedge is long 300 CCC at 200 and short 1000 DDD at 25
    clock = Clock(WEDNESDAY)
    monitor = Monitor(seeded_store, settings, clock=clock)
    for ccc, ddd in ((210.0, 24.0), (190.0, 26.5), (205.0, 25.5)):
        clock.t += 1
        _tick(seeded_store, settings, clock, {"CCC": ccc, "DDD": ddd}, monitor)
    marks = seeded_store.read_marks("hedge")
    assert (marks["CCC"].mfe, marks["CCC"].mae) == (pytest.approx(3000.0), pytest.approx(-3000.0))
    assert (marks["DDD"].mfe, marks["DDD"].mae) == (pytest.approx(1000.0), pytest.approx(-1500.0))
    # Act: CCC flips to a short at 205, DDD is closed
    seeded_store.write_position("hedge", "CCC", Position(qty=-100, avg_price=Decimal("205")))
    seeded_store.write_position("hedge", "DDD", None)
    clock.t += 1
    _tick(seeded_store, settings, clock, {"CCC": 200.0}, monitor)
    # Assert
    marks = seeded_store.read_marks("hedge")
    assert set(marks) == {"CCC"}
    assert (marks["CCC"].side, marks["CCC"].mfe, marks["CCC"].mae) == (-1, pytest.approx(500.0), 0.0)
    positions = _snapshot(seeded_store, "hedge")["positions"]
    assert [(p["ticker"], p["mfe"], p["mae"]) for p in positions] == [("CCC", pytest.approx(500.0), 0.0)]


def test_held_ticker_without_a_price_is_listed_and_valued_at_zero(
    seeded_store: Store, settings: Settings
) -> None:
    seeded_store.write_position("main", "ZZZ", Position(qty=10, avg_price=Decimal("5")))
    monitor = Monitor(seeded_store, settings)
    _sim_ticks(seeded_store, settings, 1)
    monitor.process_available()
    snap = _snapshot(seeded_store, "main")
    assert snap["data"]["missing_prices"] == ["ZZZ"]
    zzz = next(p for p in snap["positions"] if p["ticker"] == "ZZZ")
    assert (zzz["last"], zzz["market_value"], zzz["unrealized_pnl"]) == (None, 0.0, 0.0)


def test_a_portfolio_that_does_not_decode_is_skipped_and_the_others_go_on(
    seeded_store: Store, settings: Settings
) -> None:
    seeded_store.client.hset(PortfolioKeys("hedge").state, "cash", "not money")
    monitor = Monitor(seeded_store, settings)
    _sim_ticks(seeded_store, settings, 2)
    assert monitor.process_available() == 2
    assert seeded_store.history_length("main") == 2
    assert seeded_store.read_snapshot("hedge") is None and seeded_store.history_length("hedge") == 0
    assert monitor.stats.portfolio_errors == 2
    assert seeded_store.tick_group_pending() == 0


# -- history -------------------------------------------------------------------------------------------------


def test_history_has_one_point_per_tick_even_within_one_millisecond(
    seeded_store: Store, settings: Settings
) -> None:
    clock = Clock(WEDNESDAY)  # never moves: every tick in the same millisecond
    monitor = Monitor(seeded_store, settings, clock=clock)
    _sim_ticks(seeded_store, settings, 5)
    monitor.process_available()
    points = seeded_store.read_history("main")
    ms = int(WEDNESDAY * 1000)
    assert [p["id"] for p in points] == [f"{ms}-{i}" for i in range(5)]
    assert [p["version"] for p in points] == [1, 2, 3, 4, 5]
    assert set(points[0]) == {"id", *HISTORY_FIELDS}
    assert points[-1]["equity"] == pytest.approx(_snapshot(seeded_store, "main")["equity"], rel=1e-14)
    assert points[0]["margin.level"] is None


def test_history_is_trimmed_by_age(make_settings: Callable[..., Settings], seeded_store: Store) -> None:
    settings = make_settings({"history": {"raw_seconds": 86400.0}})
    clock = Clock(WEDNESDAY)
    monitor = Monitor(seeded_store, settings, clock=clock)
    for _ in range(3):
        clock.t += 1.0
        _sim_ticks(seeded_store, settings, 1)
        monitor.process_available()
    assert seeded_store.history_length("main") == 3
    clock.t += DAY - 1.5  # the first point is now older than a day, the other two are not
    _sim_ticks(seeded_store, settings, 1)
    monitor.process_available()
    assert [p["version"] for p in seeded_store.read_history("main")] == [2, 3, 4]
    clock.t += 2 * DAY
    _sim_ticks(seeded_store, settings, 1)
    monitor.process_available()
    assert [p["version"] for p in seeded_store.read_history("main")] == [5]
    assert seeded_store.read_history("main", start_ts=clock.t, end_ts=clock.t)[0]["ts"] == clock.t


def test_a_late_tick_never_replaces_a_newer_latest_snapshot(seeded_store: Store, settings: Settings) -> None:
    _sim_ticks(seeded_store, settings, 2)
    first, second = seeded_store.read_ticks()
    monitor = Monitor(seeded_store, settings)
    monitor.process_tick(None, second)
    monitor.process_tick(None, first)
    assert _snapshot(seeded_store, "main")["version"] == 2
    assert sorted(history_versions(seeded_store, "main")) == [1, 2]


def test_idle_refresh_snapshots_from_the_stored_market_and_shows_its_age(
    seeded_store: Store, settings: Settings
) -> None:
    clock = Clock(WEDNESDAY)
    monitor = Monitor(seeded_store, settings, clock=clock)
    StreamDaemon(
        seeded_store, settings, SimulatedFeed.from_settings(settings, seed=1), clock=clock, interval=0
    ).run(1)
    monitor.process_available()
    clock.t += 45.0
    snapshots = monitor.refresh()
    assert snapshots["main"]["data"]["market_age_seconds"] == pytest.approx(45.0)
    assert _snapshot(seeded_store, "main")["version"] == 1
    assert seeded_store.history_length("main") == 2
    assert seeded_store.acquire_lock("monitor_refresh", "a", 5.0)
    assert not seeded_store.acquire_lock("monitor_refresh", "b", 5.0)


@pytest.mark.parametrize("vectorised", [True, False])
def test_tick_latency_counts_the_exec_and_the_heartbeat_carries_the_previous_ticks(
    seeded_store: Store, settings: Settings, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch,
    vectorised: bool,
) -> None:
    # Arrange: the first tick's EXEC waits 300 ms in Redis (CLIENT PAUSE WRITE from another client, issued as
    # the tick queues its heartbeat, the last command before its EXEC)
    monitor = Monitor(seeded_store, settings, vectorised=vectorised)
    monitor.process_available()  # the group, before the ticks
    _sim_ticks(seeded_store, settings, 1)
    queue_heartbeat = seeded_store.write_heartbeat
    paused: list[bool] = []

    def pause_then_queue(*args: Any, **kwargs: Any) -> None:
        if not paused:
            paused.append(True)
            with redis.Redis.from_url(redis_server.url) as other:  # not the monitor's client
                other.execute_command("CLIENT", "PAUSE", 300, "WRITE")
        queue_heartbeat(*args, **kwargs)

    monkeypatch.setattr(seeded_store, "write_heartbeat", pause_then_queue)

    # Act
    assert monitor.process_available() == 1
    first = monitor.stats.last_latency_ms
    _sim_ticks(seeded_store, settings, 1, seed=2)
    assert monitor.process_available() == 1

    # Assert: the first tick's latency includes its EXEC (the writes are in it); its heartbeat could not know
    # it yet, the second tick's carries it (the stream daemon's rule)
    assert paused and first >= 250.0 and monitor.stats.last_latency_ms < first
    heartbeat = seeded_store.read_heartbeat("monitor")
    assert heartbeat is not None and float(heartbeat["last_latency_ms"]) == round(first, 3)


def test_running_monitor_refreshes_when_no_tick_comes(seeded_store: Store, settings: Settings) -> None:
    monitor = Monitor(seeded_store, settings, idle_refresh_seconds=0.05)
    thread = threading.Thread(target=monitor.run, kwargs={"block_ms": 20}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: seeded_store.history_length("main") >= 2, 20, "two idle refreshes")
    finally:
        monitor.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert monitor.stats.refreshes >= 2 and monitor.stats.ticks_processed == 0
    assert seeded_store.read_heartbeat("monitor") is not None


# -- consumer group ------------------------------------------------------------------------------------------


def test_two_monitors_in_one_group_process_every_tick_exactly_once(
    seeded_store: Store, settings: Settings
) -> None:
    # Arrange
    m1 = Monitor(seeded_store, settings, consumer="m1")
    m2 = Monitor(seeded_store, settings, consumer="m2")
    m1.process_available()  # creates the group before the ticks
    _sim_ticks(seeded_store, settings, 40)
    # Act
    while (m1.process_available(max_ticks=3) + m2.process_available(max_ticks=5)) > 0:
        pass
    # Assert
    assert m1.stats.ticks_processed + m2.stats.ticks_processed == 40
    assert m1.stats.ticks_processed > 0 and m2.stats.ticks_processed > 0
    for pid in ("main", "hedge"):
        assert sorted(history_versions(seeded_store, pid)) == list(range(1, 41))
    assert seeded_store.tick_group_pending() == 0


def test_a_restarted_monitor_first_finishes_its_pending_ticks(
    seeded_store: Store, settings: Settings
) -> None:
    # Arrange: "m1" received four ticks and died before acknowledging them
    seeded_store.ensure_tick_group(MONITOR_GROUP)
    _sim_ticks(seeded_store, settings, 10)
    delivered = seeded_store.read_tick_group(MONITOR_GROUP, "m1", count=4)
    assert [e.version for _, e in delivered if e is not None] == [1, 2, 3, 4]
    assert seeded_store.tick_group_pending() == 4
    # Act
    restarted = Monitor(seeded_store, settings, consumer="m1")
    assert restarted.process_available() == 10
    # Assert: pending ones first, each tick once
    assert history_versions(seeded_store, "main") == list(range(1, 11))
    assert seeded_store.tick_group_pending() == 0


def test_ticks_left_pending_by_a_dead_monitor_are_claimed_by_a_live_one(
    seeded_store: Store, settings: Settings
) -> None:
    seeded_store.ensure_tick_group(MONITOR_GROUP)
    _sim_ticks(seeded_store, settings, 6)
    seeded_store.read_tick_group(MONITOR_GROUP, "dead", count=3)
    live = Monitor(seeded_store, settings, consumer="live", claim_idle_seconds=0)
    assert live.process_available() == 6
    assert sorted(history_versions(seeded_store, "hedge")) == list(range(1, 7))
    assert seeded_store.tick_group_pending() == 0


def test_a_trimmed_pending_entry_is_acknowledged_and_skipped(seeded_store: Store, settings: Settings) -> None:
    seeded_store.ensure_tick_group(MONITOR_GROUP)
    _sim_ticks(seeded_store, settings, 3)
    delivered = seeded_store.read_tick_group(MONITOR_GROUP, "m1", count=3)
    seeded_store.client.xdel(TICKS_KEY, delivered[0][0])
    monitor = Monitor(seeded_store, settings, consumer="m1")
    assert monitor.process_available() == 2
    assert monitor.stats.entries_skipped == 1
    assert seeded_store.tick_group_pending() == 0


# -- alerts hand-off -----------------------------------------------------------------------------------------


class RecordingAlerts:
    def __init__(self, fail_for: str | None = None) -> None:
        self.calls: list[tuple[str, int, float]] = []
        self.fail_for = fail_for

    def evaluate(self, portfolio_id: str, snapshot: Mapping[str, Any], now: float) -> None:
        self.calls.append((portfolio_id, snapshot["version"], now))
        if portfolio_id == self.fail_for:
            raise RuntimeError("a broken rule")


def test_alert_engine_gets_every_snapshot_once_with_the_snapshot_time(
    seeded_store: Store, settings: Settings
) -> None:
    clock = Clock(WEDNESDAY)
    alerts = RecordingAlerts()
    monitor = Monitor(seeded_store, settings, clock=clock, alert_engine=alerts)
    _sim_ticks(seeded_store, settings, 3)
    monitor.process_available()
    assert sorted(alerts.calls) == sorted((pid, v, WEDNESDAY) for pid in ("main", "hedge") for v in (1, 2, 3))


def test_a_failing_alert_engine_does_not_stop_the_monitoring(seeded_store: Store, settings: Settings) -> None:
    alerts = RecordingAlerts(fail_for="main")
    monitor = Monitor(seeded_store, settings, alert_engine=alerts)
    _sim_ticks(seeded_store, settings, 2)
    assert monitor.process_available() == 2
    assert monitor.stats.alert_errors == 2
    assert seeded_store.history_length("main") == 2 and len(alerts.calls) == 4


# -- real processes ------------------------------------------------------------------------------------------


def test_two_real_monitor_processes_share_the_ticks_exactly_once(
    seeded_store: Store, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    env = daemon_env(redis_server.url, write_config(tmp_path))
    monitors = [
        spawn("logic.monitor", ["--consumer", name, "--idle-refresh", "0", "--batch", "1"], env,
              tmp_path / f"{name}.log")
        for name in ("a", "b")
    ]  # fmt: skip
    try:
        seeded_store.ensure_tick_group(MONITOR_GROUP)
        wait_for(lambda: len(seeded_store.client.xinfo_consumers(TICKS_KEY, MONITOR_GROUP)) == 2, 60,
                 "both monitors in the group")  # fmt: skip
        stream = subprocess.run(
            [*_stream_cmd(), "--interval", "0.005", "--ticks", "120", "--seed", "3"], env=env,
            capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        assert stream.returncode == 0, stream.stderr
        wait_for(lambda: seeded_store.history_length("hedge") >= 120, 60, "all ticks recorded")
    finally:
        for m in monitors:  # signal both first: each takes up to its 1 s XREADGROUP block to stop
            if m.poll() is None:
                m.send_signal(signal.SIGTERM)
        codes = [_wait_or_kill(m) for m in monitors]
    assert codes == [0, 0]
    counts = [
        int(re.findall(r"processed (\d+) ticks", (tmp_path / f"{n}.log").read_text())[-1]) for n in "ab"
    ]
    assert sum(counts) == 120 and min(counts) > 0
    for pid in ("main", "hedge"):
        assert sorted(history_versions(seeded_store, pid)) == list(range(1, 121))


def _wait_or_kill(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=15)


def _stream_cmd() -> list[str]:
    import sys

    return [sys.executable, "-m", "engine.stream"]


def test_warmup_reseed_is_survived(seeded_store: Store, settings: Settings) -> None:
    """A wiped and re-seeded store (group gone) does not stop the monitor: it recreates the group."""
    monitor = Monitor(seeded_store, settings)
    _sim_ticks(seeded_store, settings, 2)
    monitor.process_available()
    warmup.reset(seeded_store)
    warmup.seed(seeded_store, settings)
    _sim_ticks(seeded_store, settings, 1)  # the daemon recreates the group before writing its first tick
    assert monitor.process_available() == 1
    # the matrix cached before the re-seed (version 2) is not used for the new version 1
    assert monitor.models.current is not None and monitor.models.current.version == 1
    np.testing.assert_array_equal(monitor.models.current.cov, seeded_store.read_market().cov)
    _sim_ticks(seeded_store, settings, 2)
    assert monitor.process_available() == 2
    assert history_versions(seeded_store, "main") == [1, 2, 3]
