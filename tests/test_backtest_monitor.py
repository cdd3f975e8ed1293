"""The continuous VaR backtest: real daemons replay real S&P 500 closes, the backtest runner stores each
portfolio's backtest, and the stored numbers equal ``python -m logic.backtest`` on the same closes; an alert rule on
``backtest.zone`` fires when the normal model goes red.

Data: ``arch.data.sp500`` (Yahoo Finance ^GSPC daily adjusted closes, shipped with the arch package), the
360 trading days 2007-06-01 .. 2008-10-31. With lambda = 0.94, a 50-return window (30 more seed the matrix)
and 99% one-day VaR, the normal model's rolling exceedance count reaches the Basel red zone (10) at the
September-October 2008 crash; FHS stays below it.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import warmup
from engine.records import AlertStatus, VarMethod
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings, settings_from_dict
from engine.store import PortfolioKeys, Store, TickEvent
from logic.backtest import BacktestConfig, Backtester, Observation, Track
from logic.backtest_monitor import (
    ZONE_LEVELS,
    BacktestBooks,
    backtest_config,
    feed_bar_model_bars,
    horizon_bars,
    snapshot_section,
    summary_of,
)

from .conftest import TEST_CONFIG, merge, to_toml
from .test_stream import ROOT, daemon_env, spawn, stop_process

START, END = "2007-06-01", "2008-10-31"
WINDOW = 50
RED_BAR = 342
"""A bar at which the normal model is in the red zone: its rolling count is 10 from the 255th to the 267th closed
day (bars 336 to 348, late September to mid October 2008); it is back to yellow (8) at the last bar, 360."""
HORIZON_DAYS = 5.0
"""The limit's horizon of the portfolio ``tail`` (five daily bars); ``idx`` keeps one day."""

CONFIG: dict[str, Any] = merge(
    {k: v for k, v in TEST_CONFIG.items() if k not in ("universe", "portfolios", "stress_scenarios")},
    {
        "model": {"ewma_decay": 0.94, "bars_per_day": 1, "fhs_window": WINDOW, "backtest_confidence": 0.99},
        "universe": {"assets": {"SPX": {"price": 1500.0, "annual_vol": 0.2}}},
        "limits": {"var_limit": 10_000_000},
        "portfolios": [
            {"id": "idx", "account_type": "cash", "cash": "1000000.00", "holdings": {"SPX": 100}},
            {
                "id": "tail",
                "account_type": "cash",
                "cash": "1000000.00",
                "holdings": {"SPX": 100},
                "var_method": "fhs",
                "limits": {"var_horizon_days": HORIZON_DAYS},
            },
        ],  # fmt: skip
        "alert_rules": [
            {
                "id": "bt_red",
                "metric": "backtest.zone",
                "op": ">=",
                "threshold": 2,
                "severity": "CRITICAL",
                "description": "the VaR model is in the Basel red zone",
                "portfolios": ["idx"],
            },
        ],  # fmt: skip
    },
)


def _closes(path: Path) -> int:
    """The S&P 500 closes of [START, END] as a wide CSV ``date,SPX``; returns the number of rows."""
    from arch.data import sp500

    closes = sp500.load()["Adj Close"][START:END]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["date", "SPX"])
        for day, close in closes.items():
            w.writerow([day.date().isoformat(), repr(float(close))])
    return len(closes)


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[dict[str, Any]]:
    """Warm-up, then the real stream daemon replays the closes while the real backtest runner feeds every bar;
    then the real monitor (with its alert engine) processes every tick. Runs once for the module."""
    import redis

    tmp = tmp_path_factory.mktemp("replay")
    closes = tmp / "spx.csv"
    rows = _closes(closes)
    config = tmp / "riskdesk.toml"
    config.write_text(to_toml(CONFIG))
    settings = settings_from_dict(CONFIG)
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    store = Store(client)
    warmup.seed(store, settings, now=1.0)
    env = daemon_env(redis_server.url, config)
    # The runner feeds the backtests as the stream daemon publishes; the monitor's snapshots read the runner's
    # last stored section. The two daemons take turns so that what each snapshot reads does not depend on which
    # ran first (each group keeps every tick from the stream daemon's start until it is acknowledged): the
    # runner feeds the bars up to RED_BAR, the monitor snapshots the ticks up to it (reading the red section),
    # then the runner feeds the rest and the monitor snapshots the rest (reading the last bar's section).
    procs: list[subprocess.Popen[bytes]] = []

    def daemon(module: str, args: list[str], log: str) -> subprocess.Popen[bytes]:
        procs.append(spawn(module, args, env, tmp / log))
        return procs[-1]

    def finished(proc: subprocess.Popen[bytes], log: str) -> None:
        assert proc.wait(timeout=300) == 0, (tmp / log).read_text()

    try:
        runner = daemon("logic.backtest_runner", ["--bars", str(RED_BAR)], "runner-1.log")
        stream = subprocess.run(
            [sys.executable, "-m", "engine.stream", "--feed", "replay", "--file", str(closes), "--interval", "0"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert stream.returncode == 0, stream.stderr
        finished(runner, "runner-1.log")
        finished(daemon("logic.monitor", ["--ticks", str(RED_BAR), "--idle-refresh", "0"], "monitor-1.log"),
                 "monitor-1.log")  # fmt: skip
        finished(daemon("logic.backtest_runner", ["--bars", str(rows - RED_BAR)], "runner-2.log"), "runner-2.log")
        finished(daemon("logic.monitor", ["--ticks", str(rows - RED_BAR), "--idle-refresh", "0"], "monitor-2.log"),
                 "monitor-2.log")  # fmt: skip
    finally:
        for proc in procs:
            stop_process(proc)
    yield {"store": store, "settings": settings, "closes": closes, "rows": rows, "tmp": tmp}
    client.flushdb()
    client.close()


def _cli(closes: Path, tmp: Path, settings: Settings, portfolio_id: str) -> tuple[str, list[dict[str, str]]]:
    book = tmp / f"{portfolio_id}.csv"
    holdings = settings.portfolio(portfolio_id).holdings
    book.write_text("ticker,qty\n" + "".join(f"{t},{q}\n" for t, q in holdings.items()))
    cfg = backtest_config(settings, portfolio_id)
    series = tmp / f"{portfolio_id}-series.csv"
    done = subprocess.run(
        [sys.executable, "-m", "logic.backtest", "--history", str(closes), "--book", str(book),
         "--method", ",".join(cfg.methods), "--confidence", repr(cfg.confidence), "--window", str(cfg.window),
         "--decay", repr(cfg.decay), "--horizon-bars", str(cfg.horizon_bars), "--out", str(series)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with series.open(newline="") as fh:
        return done.stdout, list(csv.DictReader(fh))


def test_the_monitors_stored_backtest_after_a_replay_equals_the_command_line_backtest(
    replay: dict[str, Any],
) -> None:
    store, settings = replay["store"], replay["settings"]
    for pid in ("idx", "tail"):
        stored = store.read_backtest_state(pid)
        assert stored is not None
        state, version, _ = stored
        bt = Backtester.from_dict(state)
        stdout, series = _cli(replay["closes"], replay["tmp"], settings, pid)

        assert version == replay["rows"]  # every bar fed once: market versions 1..rows
        assert bt.bar + 1 == replay["rows"]
        tracks = list(Track) if bt.config.horizon_bars > 1 else [Track.BAR]  # what the CLI reports
        logged = [Observation.from_dict(r) for r in store.read_backtest_observations(pid, 10_000)]
        records = [r for r in logged if r.track in tracks]
        assert len(records) == len(series) > 250  # every closed horizon, in order
        for rec, row in zip(records, series, strict=True):
            assert str(rec.track) == row["track"]
            assert rec.pnl == float(row["pnl"])  # exactly: the same code path on the same floats
            for m in bt.config.methods:
                assert rec.var[m] == float(row[f"var_{m}"])
                assert int(rec.hit[m]) == int(row[f"hit_{m}"])
        summary = store.read_backtest_summary(pid)
        assert summary is not None
        for track in tracks:
            for m, s in summary["tracks"][str(track)].items():
                assert s == bt.summary(track)[m].to_dict()
                # the CLI prints the same counts: "method obs exceed rate ..."
                line = next(
                    ln
                    for ln in stdout.splitlines()[stdout.splitlines().index(f"{track} track, 99.00% VaR") :]
                    if ln.split()[:1] == [m]
                )
                assert line.split()[1:3] == [str(s["observations"]), str(s["exceedances"])]
                assert line.split()[-1] == (s["zone"] or "-")


def test_the_normal_model_goes_red_and_fhs_does_not_on_the_2008_replay(replay: dict[str, Any]) -> None:
    # the whole series of the command line (the stored one keeps the latest observations and equals it)
    _, series = _cli(replay["closes"], replay["tmp"], replay["settings"], "idx")

    def worst_rolling(method: str) -> int:  # the most exceedances in any 250 consecutive closed days
        hits = np.array([int(row[f"hit_{method}"]) for row in series])
        return int(max(hits[max(0, k - 250) : k].sum() for k in range(1, len(hits) + 1)))

    # Basel at 99% over 250 days: red from 10 exceedances
    assert worst_rolling("normal") >= 10
    assert worst_rolling("fhs") < 10


def test_a_rule_on_backtest_zone_fires_when_the_replay_drives_the_normal_model_red(
    replay: dict[str, Any],
) -> None:
    store = replay["store"]

    records = store.read_stream_json(PortfolioKeys("idx").alert_log, count=10_000, newest_first=False)

    fired = [r for r in records if r.get("rule_id") == "bt_red" and r.get("event") == AlertStatus.TRIGGERED]
    assert fired, f"no bt_red alert in {records[-5:]}"
    assert fired[0]["alert"]["value"] >= ZONE_LEVELS["red"]
    # the last snapshot reads the runner's section of the last bar, back to yellow
    idx = store.read_snapshot("idx")
    assert idx is not None and idx["backtest"]["market_version"] == idx["version"] == replay["rows"]
    assert idx["backtest"]["zone"] == ZONE_LEVELS["yellow"]
    # the portfolio on fhs has no such rule; its snapshot reports its own method's zone
    tail = store.read_snapshot("tail")
    tail_summary = store.read_backtest_summary("tail")
    assert tail is not None and tail_summary is not None
    assert tail["var_method"] == "fhs" and tail["backtest"]["method"] == "fhs"
    assert tail["backtest"]["bar_zone"] == ZONE_LEVELS[tail_summary["tracks"]["bar"]["fhs"]["zone"]]


def test_the_snapshot_section_reads_the_portfolios_own_method_and_every_method() -> None:
    summary = {
        "confidence": 0.99,
        "methods": ["normal", "fhs"],
        "tracks": {
            "limit": {"normal": {"rolling_observations": 3, "rolling_exceedances": 1, "zone": "yellow"},
                      "fhs": {"rolling_observations": 3, "rolling_exceedances": 0, "zone": "green"}},
            "bar": {"normal": {"rolling_observations": 0, "rolling_exceedances": 0, "zone": None},
                    "fhs": {"rolling_observations": 250, "rolling_exceedances": 10, "zone": "red"}},
        },
    }  # fmt: skip

    normal = snapshot_section(summary, "normal")  # type: ignore[arg-type]
    fhs = snapshot_section(summary, "fhs")  # type: ignore[arg-type]
    student = snapshot_section(summary, "student_t")  # type: ignore[arg-type]

    assert normal is not None and (normal["exceedances"], normal["zone"]) == (1, 1)
    assert (normal["bar_exceedances"], normal["bar_zone"]) == (None, None)  # no closed bar yet: not applicable
    assert fhs is not None and (fhs["zone"], fhs["bar_zone"], fhs["bar_exceedances"]) == (0, 2, 10)
    assert student is not None and student["zone"] is None and student["methods"]["fhs"]["bar_zone"] == 2
    assert snapshot_section(None, "normal") is None  # type: ignore[arg-type]


def _event(version: int, prices: list[float], *, reset: bool = False) -> TickEvent:
    return TickEvent(version, float(version), ("AAA", "BBB"), np.array(prices), bar_ts=86400.0 * version,
                     reset=reset)  # fmt: skip


def test_a_bar_is_fed_once_a_new_ticker_restarts_and_a_reset_adds_no_return(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings({"model": {"fhs_window": 20}})
    books = BacktestBooks(store, settings)

    def feed(event: TickEvent, qty: list[float]) -> dict[str, Any]:
        fed = books.feed(event, {"main": np.array(qty)})
        pipe = store.client.pipeline(transaction=True)
        books.write(fed, pipe)
        pipe.execute()
        books.commit(fed)
        return fed

    assert feed(_event(1, [100.0, 50.0]), [10, 0]) and feed(_event(2, [101.0, 51.0]), [10, 0])
    state = store.read_backtest_state("main")
    assert state is not None and state[0]["tickers"] == ["AAA"] and state[0]["bar"] == 1

    assert feed(_event(2, [101.0, 51.0]), [10, 0]) == {}  # not newer than the stored bar: not fed again
    feed(_event(3, [90.0, 52.0], reset=True), [10, 0])  # a new replay: no return from 101 to 90
    state = store.read_backtest_state("main")
    assert state is not None and state[0]["bar"] == 2 and len(Backtester.from_dict(state[0]).seed) == 1  # one return

    feed(_event(4, [91.0, 53.0]), [10, 5])  # BBB opened: the backtest restarts on AAA, BBB
    state = store.read_backtest_state("main")
    assert state is not None and state[0]["tickers"] == ["AAA", "BBB"] and state[0]["bar"] == 0
    assert feed(_event(5, [92.0, 54.0]), [0, 5])  # AAA closed: still modelled, with zero quantity
    state = store.read_backtest_state("main")
    assert state is not None and state[0]["tickers"] == ["AAA", "BBB"] and state[0]["bar"] == 1


# --- persistence: the window as a ring of rows ----------------------------------------------------------------


def _feed_ticks(books: BacktestBooks, store: Store, first: int, count: int, rng: np.random.Generator,
                prices: np.ndarray) -> np.ndarray:  # fmt: skip
    for version in range(first, first + count):
        prices = prices * np.exp(rng.normal(0.0, 0.01, 2))
        fed = books.feed(_event(version, list(prices)), {"main": np.array([10.0, -4.0])})
        pipe = store.client.pipeline(transaction=True)
        books.write(fed, pipe)
        pipe.execute()
        books.commit(fed)
    return prices


def _stored(store: Store) -> dict[str, Any]:
    keys = PortfolioKeys("main")
    return {"hash": store.client.hgetall(keys.backtest), "window": store.client.get(keys.backtest_window),
            "log": store.client.xlen(keys.backtest_log)}  # fmt: skip


def test_a_backtest_reloaded_after_the_ring_wrapped_equals_the_monitors_in_memory_one(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings({"model": {"fhs_window": 20}})
    books, rng = BacktestBooks(store, settings), np.random.default_rng(7)
    cfg = backtest_config(settings, "main")
    ring_bytes = None
    prices = np.array([100.0, 50.0])
    for _ in range(3):  # 3 x 30 ticks: past the 30 seed returns, then the 20-row ring wraps twice
        prices = _feed_ticks(books, store, 1 + 30 * _, 30, rng, prices)
        size = store.client.strlen(PortfolioKeys("main").backtest_window)
        assert ring_bytes is None or size == ring_bytes  # a fixed ring: rows are rewritten, never appended
        ring_bytes = size
    mine = books._books["main"].bt

    other = BacktestBooks(store, settings)  # another monitor: reloads from the store
    stored = store.read_backtest_state("main")
    assert stored is not None and stored[2] == books._books["main"].token
    reloaded = other._book("main", (stored[1], stored[2]))

    assert reloaded is not None and reloaded.bt is not mine
    assert mine.pushed == 90 - 1 - cfg.seed_rows and mine.ready  # 89 returns: 30 seed the matrix, 59 pushed
    assert reloaded.bt.to_dict() == mine.to_dict()
    assert np.array_equal(stored[0]["ring"][: cfg.window], mine.ring()[: cfg.window])  # the seed rows: stale
    # the reloaded backtester goes on exactly as the in-memory one: both fed the same next bar agree
    event = _event(91, [101.0, 49.0])
    assert books.feed(event, {"main": np.array([10.0, -4.0])})["main"].closed == (
        other.feed(event, {"main": np.array([10.0, -4.0])})["main"].closed
    )


def test_a_tick_rewrites_one_row_of_the_stored_ring_and_a_new_backtest_the_whole_ring(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings({"model": {"fhs_window": 20}})
    books, rng = BacktestBooks(store, settings), np.random.default_rng(8)
    prices = _feed_ticks(books, store, 1, 40, rng, np.array([100.0, 50.0]))
    bt = books._books["main"].bt
    before = np.array(store.read_backtest_state("main")[0]["ring"])  # type: ignore[index]

    fed = books.feed(_event(41, list(prices * 1.01)), {"main": np.array([10.0, -4.0])})
    assert fed["main"].ring_row == bt.ring_slot() and not fed["main"].full_ring
    pipe = store.client.pipeline(transaction=True)
    books.write(fed, pipe)
    pipe.execute()
    books.commit(fed)

    after = store.read_backtest_state("main")[0]["ring"]  # type: ignore[index]
    changed = np.flatnonzero((after != before).any(axis=1))
    assert changed.tolist() == [bt.ring_slot()] and np.array_equal(after[changed[0]], bt.window[-1])
    # a ticker opened: a new backtest (the counts restart) and its whole ring written
    fed = books.feed(_event(42, list(prices)), {"main": np.array([10.0, 0.0])})
    assert fed["main"].full_ring is False  # BBB closed: still modelled, the same backtest
    restart = BacktestBooks(store, make_settings({"model": {"fhs_window": 25}}))
    fed = restart.feed(_event(42, list(prices)), {"main": np.array([10.0, -4.0])})
    assert fed["main"].full_ring and fed["main"].bt.bar == 0  # a new window length: restarted


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda c, key, n: c.setrange(key, n - 8, b"\xff" * 8),  # a NaN in the last row
        lambda c, key, n: c.set(key, c.get(key)[:-8]),  # truncated
        lambda c, key, n: c.setrange(key, 0, b"XXXX"),  # not a codec array
    ],
    ids=["nan", "truncated", "magic"],
)
def test_a_corrupt_stored_ring_is_refused_and_nothing_is_written(
    store: Store, make_settings: Callable[..., Settings], corrupt: Callable[..., Any]
) -> None:
    from engine.errors import CorruptDataError

    settings = make_settings({"model": {"fhs_window": 20}})
    prices = _feed_ticks(BacktestBooks(store, settings), store, 1, 40, np.random.default_rng(9),
                         np.array([100.0, 50.0]))  # fmt: skip
    key = PortfolioKeys("main").backtest_window
    corrupt(store.client, key, store.client.strlen(key))
    before = _stored(store)

    books = BacktestBooks(store, settings)
    fed = books.feed(_event(41, list(prices)), {"main": np.array([10.0, -4.0])})

    assert fed == {} and isinstance(books.unreadable["main"], CorruptDataError)  # left out, the others go on
    assert _stored(store) == before


def test_a_state_stored_before_the_ring_is_continued_and_its_whole_ring_written(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    from engine.store.codec import encode_json_fast

    settings = make_settings({"model": {"fhs_window": 20}})
    books = BacktestBooks(store, settings)
    prices = _feed_ticks(books, store, 1, 45, np.random.default_rng(10), np.array([100.0, 50.0]))
    mine = books._books["main"].bt
    keys = PortfolioKeys("main")
    old = mine.to_dict()  # the previous layout: the whole backtester, window included, in the state JSON
    del old["window_count"], old["pushed"]
    store.client.delete(keys.backtest_window)
    store.client.hdel(keys.backtest, "cov")
    store.client.hset(keys.backtest, mapping={"state": encode_json_fast(old), "token": "old"})

    other = BacktestBooks(store, settings)
    fed = other.feed(_event(46, list(prices)), {"main": np.array([10.0, -4.0])})
    assert fed["main"].full_ring and fed["main"].bt.bar == mine.bar + 1  # continued, not restarted
    pipe = store.client.pipeline(transaction=True)
    other.write(fed, pipe)
    pipe.execute()
    other.commit(fed)
    stored = store.read_backtest_state("main")
    assert stored is not None and Backtester.from_dict(stored[0]).to_dict() == fed["main"].bt.to_dict()


# --- the limit's horizon in fed bars ------------------------------------------------------------------------------

MODEL_BARS = {"minute": 1.0, "hourly": 60.0, "daily": 390.0, "weekly": 1950.0}
"""Model bars in one fed bar at ``bars_per_day = 390`` (engine/history.py ``Spacing.model_bars``)."""


@pytest.mark.parametrize(
    ("spacing", "days", "bars"),
    [
        ("minute", 1.0, 390), ("minute", 5.0, 1950), ("minute", 0.001, 1),  # 0.39 minutes: at least one bar
        ("daily", 1.0, 1), ("daily", 5.0, 5), ("daily", 0.5, 1),  # 0.5 rounds to 0: at least one bar
        ("daily", 1.5, 2), ("daily", 2.5, 2),  # ties go to the even neighbour
        ("weekly", 1.0, 1), ("weekly", 5.0, 1), ("weekly", 10.0, 2),  # 0.2 weeks tests one week
        ("weekly", 7.5, 2), ("weekly", 12.5, 2),  # 1.5 -> 2, 2.5 -> 2
        ("hourly", 1.0, 6), ("hourly", 3.0, 20),  # 6.5 -> 6, 19.5 -> 20
    ],
)  # fmt: skip
def test_the_limits_horizon_in_fed_bars_is_its_model_bars_over_the_bar_length_rounded_at_least_one(
    make_settings: Callable[..., Settings], spacing: str, days: float, bars: int
) -> None:
    settings = make_settings({"limits": {"var_horizon_days": days}})  # bars_per_day = 390

    assert horizon_bars(settings, "main", MODEL_BARS[spacing]) == bars
    assert backtest_config(settings, "main", MODEL_BARS[spacing]).horizon_bars == bars


@pytest.mark.parametrize(("bars_per_day", "days"), [(390, 1.0), (390, 5.0), (2, 1.0), (2, 1.25), (2, 1.75), (7, 0.5)])
def test_a_minute_feed_keeps_the_horizon_of_bars_per_day_times_the_limits_days(
    make_settings: Callable[..., Settings], bars_per_day: int, days: float
) -> None:
    settings = make_settings({"model": {"bars_per_day": bars_per_day}, "limits": {"var_horizon_days": days}})
    today = max(1, round(bars_per_day * days))  # one model bar per fed bar: round(2.5) = 2, round(3.5) = 4

    assert horizon_bars(settings, "main") == horizon_bars(settings, "main", 1.0) == today
    assert backtest_config(settings, "main") == backtest_config(settings, "main", 1.0)


@pytest.mark.parametrize("bad", [0.0, -390.0, math.nan, math.inf])
def test_a_bar_length_that_is_not_a_positive_number_of_model_bars_is_refused(
    make_settings: Callable[..., Settings], bad: float
) -> None:
    with pytest.raises(ValueError, match="bar_model_bars must be a positive number"):
        horizon_bars(make_settings(), "main", bad)


@pytest.mark.parametrize(
    ("heartbeat", "expected"),
    [
        (None, 1.0),  # no stream daemon has written a bar
        ({"ts": 1.0, "version": 3}, 1.0),  # a heartbeat without the field
        ({"ts": 1.0, "feed_bar_model_bars": 1.0}, 1.0),  # a live feed
        ({"ts": 1.0, "feed_bar_model_bars": 390.0}, 390.0),  # daily rows
        ({"ts": 1.0, "feed_bar_model_bars": 1950.0}, 1950.0),  # weekly rows
        ({"ts": 1.0, "feed_bar_model_bars": "abc"}, 1.0),
        ({"ts": 1.0, "feed_bar_model_bars": 0.0}, 1.0),
        ({"ts": 1.0, "feed_bar_model_bars": -5.0}, 1.0),
        ({"ts": 1.0, "feed_bar_model_bars": math.nan}, 1.0),
    ],
)
def test_the_bar_length_is_read_from_the_stream_daemons_heartbeat(
    store: Store, heartbeat: dict[str, Any] | None, expected: float
) -> None:
    if heartbeat is not None:
        store.write_heartbeat("stream", heartbeat)

    assert feed_bar_model_bars(store) == expected


# --- the Basel zone: only from a minimum of rolling observations --------------------------------------------------


def _one_exceedance_in_two(zone_min_observations: int | None) -> Backtester:
    """Both tracks' first one-bar forecast exceeded by a 20% fall, the second not: one exceedance in two."""
    bt = Backtester(["AAA"], BacktestConfig(window=20, seed_rows=5, zone_min_observations=zone_min_observations))
    rng, p = np.random.default_rng(1), 100.0
    while not bt.ready:
        p *= math.exp(0.01 * rng.standard_normal())
        bt.step([p], [100.0])
    bt.step([p * math.exp(-0.2)], [100.0])
    bt.step([p * math.exp(-0.199)], [100.0])
    return bt


def test_the_snapshots_zone_is_null_before_the_minimum_and_the_counts_are_not(
    make_settings: Callable[..., Settings],
) -> None:
    assert make_settings().model.backtest_zone_min_observations == 250
    assert backtest_config(make_settings(), "main").zone_min_observations == 250

    for minimum, zone in [(None, None), (3, None), (2, ZONE_LEVELS["red"])]:  # the default 250, one over, at 2
        section = snapshot_section(summary_of(_one_exceedance_in_two(minimum)), VarMethod.NORMAL)
        assert section is not None
        assert (section["exceedances"], section["observations"], section["zone"]) == (1, 2, zone), minimum
        assert (section["bar_exceedances"], section["bar_observations"], section["bar_zone"]) == (1, 2, zone)
        for fields in section["methods"].values():
            assert (fields["zone"], fields["bar_zone"]) == (zone, zone)


def test_a_stored_backtest_takes_a_new_zone_minimum_without_restarting(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    early = make_settings({"model": {"fhs_window": 20, "backtest_zone_min_observations": 1}})
    books = BacktestBooks(store, early)
    prices = _feed_ticks(books, store, 1, 60, np.random.default_rng(11), np.array([100.0, 50.0]))
    bt = books._books["main"].bt
    observed = bt.counts[Track.BAR][VarMethod.NORMAL].observations
    assert observed == 60 - 1 - 30 - 20 and store.read_backtest_summary("main")["tracks"]["bar"]["normal"]["zone"]

    later = BacktestBooks(store, make_settings({"model": {"fhs_window": 20}}))  # a runner on the default, 250
    fed = later.feed(_event(61, list(prices)), {"main": np.array([10.0, -4.0])})

    again = fed["main"].bt
    assert again.bar == bt.bar + 1 and again.counts[Track.BAR][VarMethod.NORMAL].observations == observed + 1
    assert again.config == backtest_config(later.settings, "main")  # continued, with the setting's minimum
    summary = fed["main"].summary
    assert summary["zone_min_observations"] == 250
    assert all(s["zone"] is None for track in summary["tracks"].values() for s in track.values())
