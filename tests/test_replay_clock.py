"""Replays run on the data's clock and the XNYS calendar (engine/clocks.py, engine/sessions.py, engine/collar.py).

30 real XNYS sessions (2019-01-14 .. 2019-02-26: MLK day 2019-01-21 and Presidents' Day 2019-02-18 inside),
bars every hour from the open (09:30, 10:30, ..., 15:30, 16:00 New York), generated prices. The schedule is
written out here, independently of exchange-calendars.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

import warmup
from engine.clocks import ClockMode, MarketClock
from engine.feeds import Bar, IterableFeed
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings
from engine.store import Store
from engine.stream import StreamDaemon
from logic.monitor import Monitor
from logic.risk_manager import RiskManager

from .conftest import TEST_CONFIG, merge
from .test_stream import ROOT, daemon_env, write_config

NY = ZoneInfo("America/New_York")
HOLIDAYS = {date(2019, 1, 21), date(2019, 2, 18)}
TICKERS = ("AAA", "BBB", "CCC", "DDD")
MAIN_CASH = 1_000_000.0
MAIN_QTY = {"AAA": 1000, "BBB": 2000}
XNYS = {"market": {"calendar": "XNYS"}}


def sessions(first: date, n: int) -> list[date]:
    """``n`` weekdays from ``first`` that are not the holidays above."""
    out, d = [], first
    while len(out) < n:
        if d.weekday() < 5 and d not in HOLIDAYS:
            out.append(d)
        d += timedelta(days=1)
    return out


SESSIONS = sessions(date(2019, 1, 14), 30)
BAR_TIMES = [(9, 30)] + [(h, 30) for h in range(10, 16)] + [(16, 0)]


def bar_schedule() -> list[tuple[float, date]]:
    """(epoch seconds, session date) of every bar."""
    return [(datetime(d.year, d.month, d.day, h, m, tzinfo=NY).timestamp(), d) for d in SESSIONS for h, m in BAR_TIMES]


def gbm(n: int, vols: list[float], seed: int, start: list[float]) -> np.ndarray:
    """Hourly-ish log-normal paths (per-bar sd = annual vol / sqrt(252 * 7))."""
    rng = np.random.default_rng(seed)
    steps = rng.standard_normal((n, len(vols))) * np.array(vols) / math.sqrt(252 * 7)
    steps[0] = 0.0
    return np.array(start) * np.exp(np.cumsum(steps, axis=0))


def test_a_30_session_replay_dates_history_by_the_bars_and_resets_days_and_weeks_on_the_xnys_calendar(
    store: Store, make_settings: Callable[..., Settings], redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    # Arrange: seed, write the replay file (ISO times with their New York offset); history is trimmed by age
    # in the data's time, so keep the 6 weeks
    override = {**XNYS, "history": {"raw_seconds": 60 * 86400.0}}
    config = merge(TEST_CONFIG, override)
    settings = make_settings(override)
    warmup.seed(store, settings)
    schedule = bar_schedule()
    prices = gbm(len(schedule), [0.2, 0.3, 0.25, 0.4], seed=7, start=[100.0, 50.0, 200.0, 25.0])
    csv = tmp_path / "bars.csv"
    csv.write_text(
        "date," + ",".join(TICKERS) + "\n" + "".join(
            datetime.fromtimestamp(t, NY).isoformat() + "," + ",".join(repr(float(p)) for p in row) + "\n"
            for (t, _), row in zip(schedule, prices, strict=True)
        )
    )  # fmt: skip

    # Act: the real stream daemon at --speed 0, then the monitor on the market clock (the 15:30 -> 16:00 half
    # bar makes the spacing no whole number of hours: the file's bar length is given, engine/price_filter.py)
    proc = subprocess.run(
        [sys.executable, "-m", "engine.stream", "--feed", "replay", "--file", str(csv), "--speed", "0",
         "--bar-model-bars", "60"],
        cwd=ROOT, env=daemon_env(redis_server.url, write_config(tmp_path, config)), capture_output=True,
        text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    clock = MarketClock(store)
    assert clock.mode() == ClockMode.REPLAY and clock() == schedule[-1][0]
    monitor = Monitor(store, settings, clock)
    assert monitor.process_available() == len(schedule)

    # Assert: every point is dated by its bar
    points = store.read_history("main")
    assert [p["ts"] for p in points] == [t for t, _ in schedule]
    assert [e.ts for e in store.read_ticks()] == [t for t, _ in schedule]
    equity = MAIN_CASH + prices[:, 0] * MAIN_QTY["AAA"] + prices[:, 1] * MAIN_QTY["BBB"]
    np.testing.assert_allclose([p["equity"] for p in points], equity, rtol=1e-12)

    # daily P&L and drawdowns, computed here from the schedule: a day opens at the equity of the last bar
    # before it (the first bar's own equity for the first day), a week at its first session's open
    day_open = equity[0]
    day_peak = week_peak = equity[0]
    prev_day, prev_week = SESSIONS[0], SESSIONS[0].isocalendar()[:2]
    for k, (point, (_, day)) in enumerate(zip(points, schedule, strict=True)):
        week = day.isocalendar()[:2]
        if day != prev_day:
            day_open, day_peak = equity[k - 1], max(equity[k - 1], equity[k])
        if week != prev_week:
            week_peak = max(equity[k - 1], equity[k])
        day_peak, week_peak = max(day_peak, equity[k]), max(week_peak, equity[k])
        prev_day, prev_week = day, week
        assert point["pnl.daily"] == pytest.approx(equity[k] - day_open, rel=1e-9, abs=1e-6), k
        assert point["drawdown.daily"] == pytest.approx(equity[k] / day_peak - 1, rel=1e-9, abs=1e-15), k
        assert point["drawdown.weekly"] == pytest.approx(equity[k] / week_peak - 1, rel=1e-9, abs=1e-15), k

    # the day after MLK day opens at Friday's close: the holiday is no day of its own
    tuesday = next(k for k, (_, d) in enumerate(schedule) if d == date(2019, 1, 22))
    assert points[tuesday]["pnl.daily"] == pytest.approx(equity[tuesday] - equity[tuesday - 1], rel=1e-9)
    peaks = store.read_peaks("main")
    assert peaks is not None and (peaks.day, peaks.week) == ("2019-02-26", "2019-02-25")


def test_over_a_30_session_replay_of_a_50pct_vol_ticker_the_collar_follows_each_session_reference(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    # Arrange: AAA at 50% vol, a 4% collar (daily sd ~3%: both sides of the collar are visited)
    override: dict[str, Any] = {**XNYS, "limits": {"price_collar_pct": 0.04, "var_limit": 10_000_000}}
    settings = make_settings(override)
    warmup.seed(store, settings)
    schedule = bar_schedule()
    path = gbm(len(schedule), [0.5], seed=3, start=[100.0])[:, 0]
    bars = [Bar(t, {"AAA": float(p)}, reset=k == 0) for k, ((t, _), p) in enumerate(zip(schedule, path, strict=True))]
    daemon = StreamDaemon(store, settings, IterableFeed(bars), clock_mode=ClockMode.REPLAY, interval=0)
    rm = RiskManager(store.client, "main", settings)  # default clock: the market clock

    # the reference of each bar, computed here: the last price of the previous session (the replay's first
    # price during the first session, which has no previous close in the data)
    last_of: dict[date, float] = {}
    for (_, d), p in zip(schedule, path, strict=True):
        last_of[d] = float(p)
    refused = approved = 0
    for k, bar in enumerate(bars):
        assert daemon.process_bar(bar)
        day = schedule[k][1]
        i = SESSIONS.index(day)
        reference = float(path[0]) if i == 0 else last_of[SESSIONS[i - 1]]
        move = float(path[k]) / reference - 1.0

        buy = rm.check_trade_impact("AAA", 10, "BUY")  # grows the long position
        sell = rm.check_trade_impact("AAA", 10, "SELL")  # reduces it

        codes_buy = {r["code"] for r in buy["reasons"]}
        assert buy["reference_price"] == pytest.approx(reference, rel=1e-12), k
        assert ("PRICE_COLLAR" in codes_buy) == (abs(move) > 0.04), (k, move)
        assert "PRICE_COLLAR" not in {r["code"] for r in sell["reasons"]}, k
        assert sell["status"] == "APPROVED", (k, sell["reasons"])
        refused += "PRICE_COLLAR" in codes_buy
        approved += buy["status"] == "APPROVED"
    assert refused > 0 and approved > 0


def test_outside_a_session_a_reject_setting_refuses_with_market_closed(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings({**XNYS, "limits": {"outside_session": "reject"}})
    warmup.seed(store, settings)
    open_ = datetime(2019, 1, 22, 9, 30, tzinfo=NY).timestamp()

    def codes(at: float) -> set[str]:
        return {r["code"] for r in RiskManager(store.client, "main", settings, clock=lambda: at)
                .check_trade_impact("AAA", 10, "BUY")["reasons"]}  # fmt: skip

    assert "MARKET_CLOSED" not in codes(open_)
    assert "MARKET_CLOSED" in codes(open_ - 1)
    assert "MARKET_CLOSED" in codes(datetime(2019, 1, 21, 12, tzinfo=NY).timestamp())  # MLK day
    allow = make_settings(XNYS)
    assert "MARKET_CLOSED" not in {
        r["code"]
        for r in RiskManager(store.client, "main", allow, clock=lambda: open_ - 1).check_trade_impact("AAA", 10, "BUY")[
            "reasons"
        ]
    }
