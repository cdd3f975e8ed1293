"""A flat book is no backtest observation (logic/backtest.py step 3, logic/backtest_counts.py).

A bar at which the book holds nothing has VaR 0 and P&L 0; counted, it is a "success" the model did nothing to earn,
so a book flat for half the window shows half the exceedances it should. Here every figure of a book with flat
stretches is checked against an independent computation: the observations are those of the same book held
throughout, restricted to the bars it held something (the model state does not depend on the book, so those
forecasts are the same floats), the P&L is recomputed from the closes, and Kupiec, Christoffersen and the Basel zone
are written out here from their formulas (scipy's chi-square for the p-values).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats
from streamlit.testing.v1 import AppTest

from engine.records import VarMethod
from engine.settings import Settings
from engine.store import Store, TickEvent
from logic import backtest_cli
from logic.backtest import BacktestConfig, Backtester, Observation, Track
from logic.backtest_monitor import BacktestBooks, section_for, stored_section

from .test_dashboard import APP, TIMEOUT, app_env, assert_clean, frame_with  # noqa: F401  (app_env: a fixture)

METHODS = (VarMethod.NORMAL, VarMethod.STUDENT_T, VarMethod.FHS)
CONFIG = BacktestConfig(
    methods=METHODS, confidence=0.9, window=20, seed_rows=30, horizon_bars=3, rolling=25, zone_min_observations=25,
    max_records=None,
)  # fmt: skip
"""30 seed returns and a 20-return window: ready from bar 50 on. At 90% a tenth of the horizons are exceedances;
a rolling window of 25 observations straddles the long flat stretch below."""
BARS = 200
HELD = np.array([3.0, -2.0])
FLAT = frozenset(range(150, 190)) | {60, 61, 130}
"""Bars the book is flat: a long stretch (40 bars, inside the last rolling window) and short ones."""
READY = CONFIG.seed_rows + CONFIG.window


def closes(bars: int = BARS, seed: int = 5) -> np.ndarray:
    """Fat-tailed (t with 3 dof) daily closes of two tickers."""
    rng = np.random.default_rng(seed)
    returns = 0.01 * rng.standard_t(3, size=(bars - 1, 2))
    return np.vstack([[100.0, 50.0], [100.0, 50.0] * np.exp(np.cumsum(returns, axis=0))])


def book(t: int, flat: frozenset[int] = FLAT) -> np.ndarray:
    return np.zeros(2) if t in flat else HELD


def fed(
    books: Sequence[np.ndarray], prices: np.ndarray, config: BacktestConfig = CONFIG
) -> tuple[Backtester, list[Observation]]:
    bt = Backtester(("A", "B"), config)
    out: list[Observation] = []
    for t, (p, q) in enumerate(zip(prices, books, strict=True)):
        out += bt.step(p, q, str(t))
    return bt, out


# -- the independent computation -----------------------------------------------------------------------------


def xlogy(x: float, y: float) -> float:
    return 0.0 if x == 0 else x * math.log(y)


def kupiec(x: int, n: int, c: float) -> tuple[float, float]:
    p, rate = 1.0 - c, x / n
    lr = -2.0 * (xlogy(n - x, 1 - p) + xlogy(x, p)) + 2.0 * (xlogy(n - x, 1 - rate) + xlogy(x, rate))
    lr = max(lr, 0.0)
    return lr, float(stats.chi2.sf(lr, 1))


def christoffersen(hits: Sequence[bool]) -> tuple[float, float]:
    """The independence LR of a hit sequence (Christoffersen 1998), from its transitions."""
    n = [[0, 0], [0, 0]]
    for a, b in zip(hits, hits[1:], strict=False):
        n[int(a)][int(b)] += 1
    (n00, n01), (n10, n11) = n
    pi01 = n01 / (n00 + n01) if n00 + n01 else 0.0
    pi11 = n11 / (n10 + n11) if n10 + n11 else 0.0
    pi = (n01 + n11) / (n00 + n01 + n10 + n11)
    null = xlogy(n00 + n10, 1 - pi) + xlogy(n01 + n11, pi)
    alt = xlogy(n00, 1 - pi01) + xlogy(n01, pi01) + xlogy(n10, 1 - pi11) + xlogy(n11, pi11)
    lr = max(2.0 * (alt - null), 0.0)
    return lr, float(stats.chi2.sf(lr, 1))


def basel(x: int, n: int, c: float) -> str:
    """The Basel rule written out (F the binomial CDF at n trials, p = 1 - c)."""
    p = 1.0 - c
    cdf = sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(x + 1))
    return "green" if x == 0 or cdf < 0.95 else "yellow" if cdf < 0.9999 else "red"


def expected_summary(hits: Sequence[bool], flat_bars: int, config: BacktestConfig = CONFIG) -> dict[str, Any]:
    n, x = len(hits), sum(hits)
    recent = list(hits)[-config.rolling :]
    return {
        "observations": n, "exceedances": x, "rate": x / n, "kupiec": kupiec(x, n, config.confidence),
        "christoffersen": christoffersen(hits), "rolling_observations": len(recent),
        "rolling_exceedances": sum(recent), "zone": basel(sum(recent), len(recent), config.confidence)
        if len(recent) >= config.zone_minimum else None, "flat_bars": flat_bars,
    }  # fmt: skip


def assert_summary(got: dict[str, Any], want: dict[str, Any]) -> None:
    for key in ("observations", "exceedances", "rolling_observations", "rolling_exceedances", "zone", "flat_bars"):
        assert got[key] == want[key], key
    assert got["rate"] == pytest.approx(want["rate"], rel=1e-15)
    assert (got["kupiec_lr"], got["kupiec_p"]) == pytest.approx(want["kupiec"], rel=1e-9, abs=1e-12)
    assert (got["christoffersen_lr"], got["christoffersen_p"]) == pytest.approx(want["christoffersen"], rel=1e-9,
                                                                              abs=1e-12)  # fmt: skip


# -- the bar track: the observations with risk, and the tests on them ---------------------------------------------


def test_flat_bars_are_no_observations_and_the_tests_and_rolling_zone_run_on_the_bars_with_risk() -> None:
    # Arrange: the same closes fed to a book held throughout and to one flat at FLAT
    prices = closes()
    held, held_obs = fed([HELD] * BARS, prices)
    bt, obs = fed([book(t) for t in range(BARS)], prices)

    # Assert: the flat book's one-bar observations are the held book's at the bars it held something, exactly
    kept = [o for o in held_obs if o.track is Track.BAR and int(o.start) not in FLAT]
    got = [o for o in obs if o.track is Track.BAR]
    assert got == kept
    assert len(got) == BARS - 1 - READY - len(FLAT)  # forecasts at 50..198 close at 51..199, less the flat ones
    for o in got:  # the clean P&L from the closes, and the hit rule -P&L > VaR
        t = int(o.start)
        assert o.end == str(t + 1) and o.pnl == pytest.approx(float(HELD @ (prices[t + 1] - prices[t])), rel=1e-12)
        assert all(o.hit[m] == (-o.pnl > o.var[m]) and o.var[m] > 0 for m in METHODS)
    flat_after_ready = len([t for t in FLAT if t >= READY])
    for m in METHODS:
        hits = [o.hit[m] for o in got]
        assert 1 <= sum(hits[-CONFIG.rolling :]) and 3 <= sum(hits)  # the closes give exceedances to count
        assert_summary(bt.summary_dicts(Track.BAR)[str(m)], expected_summary(hits, flat_after_ready))
        # the old count (flat bars as observations without exceedance) is not what is reported
        assert bt.summary(Track.BAR)[m].observations == len(hits) < len(hits) + flat_after_ready
    # the held book never skipped a bar
    assert all(s.flat_bars == 0 for s in held.summary(Track.BAR).values())


def test_the_rolling_window_is_the_last_observations_with_risk_not_the_last_bars() -> None:
    prices = closes()
    bt, obs = fed([book(t) for t in range(BARS)], prices)
    got = [o for o in obs if o.track is Track.BAR]
    # the last 25 observations: bars 190..198 and the 16 with risk before the 40-bar flat stretch
    last = got[-CONFIG.rolling :]
    assert [int(o.start) for o in last] == list(range(134, 150)) + list(range(190, 199))
    for m, s in bt.summary(Track.BAR).items():
        assert s.rolling_observations == 25 and s.rolling_exceedances == sum(o.hit[m] for o in last)
        assert s.zone == basel(s.rolling_exceedances, 25, CONFIG.confidence)


def test_the_limit_track_opens_its_horizon_at_the_first_bar_with_risk() -> None:
    """Non-overlapping 3-bar horizons: one due at a flat bar opens at the next bar holding something; the P&L is
    that of the positions held at its start, over 3 bars."""
    prices = closes()
    bt, obs = fed([book(t) for t in range(BARS)], prices)
    one_bar, _ = fed([HELD] * BARS, prices, dataclasses.replace(CONFIG, horizon_bars=1))
    starts, flat, t, end = [], 0, READY, None
    while t < BARS:  # the schedule written out
        if end == t:
            end = None
        if end is None:
            if t in FLAT:
                flat += 1
            else:
                starts.append(t)
                end = t + 3
        t += 1
    closed = [s for s in starts if s + 3 < BARS]
    got = [o for o in obs if o.track is Track.LIMIT]
    assert [(int(o.start), int(o.end)) for o in got] == [(s, s + 3) for s in closed]
    assert 151 not in starts and 190 in starts  # the stretch: nothing opened inside it, one at its end
    # the VaR of 3 bars is sqrt(3) times the one-bar VaR of the same state (a book held at every bar)
    one = {o.start: o.var for o in one_bar.records if o.track is Track.BAR}
    for o in got:
        s = int(o.start)
        assert o.pnl == pytest.approx(float(HELD @ (prices[s + 3] - prices[s])), rel=1e-12)
        for m in METHODS:
            assert o.var[m] == pytest.approx(math.sqrt(3.0) * one[o.start][m], rel=1e-12)
            assert o.hit[m] == (-o.pnl > o.var[m])
    for m in METHODS:
        assert_summary(bt.summary_dicts(Track.LIMIT)[str(m)], expected_summary([o.hit[m] for o in got], flat))


# -- the boundary: exactly no position, and the smallest one --------------------------------------------------


@pytest.mark.parametrize("zero", [np.array([0.0, 0.0]), np.array([-0.0, 0.0]), np.array([0.0, -0.0])])
def test_a_bar_of_forecast_exactly_zero_is_skipped_and_a_tiny_position_is_counted(zero: np.ndarray) -> None:
    prices = closes(80)
    at = 60
    _, held_obs = fed([HELD] * 80, prices)
    n = len([o for o in held_obs if o.track is Track.BAR])
    assert n == 80 - 1 - READY

    # exactly nothing held at one bar: one observation fewer, one flat bar
    bt, obs = fed([zero if t == at else HELD for t in range(80)], prices)
    assert [int(o.start) for o in obs if o.track is Track.BAR] == [t for t in range(READY, 79) if t != at]
    for s in bt.summary(Track.BAR).values():
        assert (s.observations, s.flat_bars) == (n - 1, 1)

    # one unit in a billion: its forecast is tiny and not 0, and it is an observation
    tiny = np.array([1e-9, 0.0])
    bt, obs = fed([tiny if t == at else HELD for t in range(80)], prices)
    small = next(o for o in obs if o.track is Track.BAR and o.start == str(at))
    assert all(0.0 < small.var[m] < 1e-6 for m in METHODS)
    assert small.pnl == pytest.approx(1e-9 * (prices[at + 1][0] - prices[at][0]), rel=1e-12)
    for s in bt.summary(Track.BAR).values():
        assert (s.observations, s.flat_bars) == (n, 0)


def test_a_held_book_forecast_at_zero_that_loses_is_an_exceedance_not_a_flat_bar() -> None:
    """A position in a ticker that has not moved (the model sees no volatility: every method's VaR is 0) is risk
    held: its loss is the failure a backtest exists to catch."""
    prices = closes(80)
    prices[:, 1] = 50.0  # B never moves until the drop
    drop = 70
    prices[drop + 1 :, 1] = 45.0
    bt, obs = fed([np.array([0.0, 10.0])] * 80, prices)
    got = [o for o in obs if o.track is Track.BAR]
    assert len(got) == 80 - 1 - READY
    at_drop = next(o for o in got if o.start == str(drop))
    assert at_drop.pnl == pytest.approx(-50.0) and all(at_drop.var[m] == 0.0 for m in METHODS)
    for m, s in bt.summary(Track.BAR).items():
        assert (s.observations, s.exceedances, s.flat_bars) == (len(got), 1, 0)
        assert [o.start for o in got if o.hit[m]] == [str(drop)]


# -- the stored form: restart, and a state stored before the flat count ---------------------------------------


def test_the_flat_count_survives_a_round_trip_and_a_state_stored_before_it_loads_and_goes_on() -> None:
    prices = closes()
    books = [book(t) for t in range(BARS)]
    whole, _ = fed(books, prices)
    half, _ = fed(books[:170], prices[:170])  # stopped inside the flat stretch

    again = Backtester.from_json(half.to_json())
    assert again.summary_dicts(Track.BAR) == half.summary_dicts(Track.BAR)
    old = half.store_state() | {"ring": half.ring(), "cov": half.cov}
    old["counts"] = {
        t: {m: {k: v for k, v in c.items() if k != "flat"} for m, c in cs.items()} for t, cs in old["counts"].items()
    }  # fmt: skip  (the form stored before the count)
    legacy = Backtester.from_dict(old)
    np.testing.assert_array_equal(legacy.window, half.window)  # the window is not lost
    for bt in (again, legacy):
        for t in range(170, BARS):
            bt.step(prices[t], books[t], str(t))
    assert again.summary_dicts(Track.BAR) == whole.summary_dicts(Track.BAR)
    np.testing.assert_array_equal(legacy.window, whole.window)
    for m, s in legacy.summary(Track.BAR).items():  # the counts go on; the flat bars before the load are unknown
        w = whole.summary(Track.BAR)[m]
        assert (s.observations, s.exceedances, s.rolling_exceedances) == (w.observations, w.exceedances,
                                                                          w.rolling_exceedances)  # fmt: skip
        assert s.flat_bars == len([t for t in FLAT if t >= 170])


# -- the runner's code path on a real store ------------------------------------------------------------------


def _feed_store(store: Store, settings: Settings, books: BacktestBooks, prices: np.ndarray, qty: Sequence[np.ndarray],
                versions: range) -> None:  # fmt: skip
    for v in versions:
        event = TickEvent(v, float(v), ("AAA", "BBB"), prices[v - 1], bar_ts=60.0 * v)
        out = books.feed(event, {"main": qty[v - 1]})
        pipe = store.client.pipeline(transaction=True)
        books.write(out, pipe)
        pipe.execute()
        books.commit(out)


@pytest.fixture
def small(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings({"model": {"fhs_window": 20, "backtest_zone_min_observations": 25}})


def test_the_runner_stores_a_flat_stretch_as_flat_bars_and_a_restarted_runner_goes_on(
    store: Store, small: Settings
) -> None:
    prices = closes(seed=9)
    qty = [book(t) * 1000 for t in range(BARS)]

    # Act: fed by the runner's code (BacktestBooks), restarted inside the flat stretch, then from a stored state
    # written before the flat count (its keys removed: the old form)
    _feed_store(store, small, BacktestBooks(store, small), prices, qty, range(1, 161))
    _feed_store(store, small, BacktestBooks(store, small), prices, qty, range(161, 181))
    stored = store.read_backtest_state("main")
    assert stored is not None
    state, version, token = stored
    bt = Backtester.from_dict(state)
    old_state = bt.store_state()
    old_state["counts"] = {t: {m: {k: v for k, v in c.items() if k != "flat"} for m, c in cs.items()}
                           for t, cs in old_state["counts"].items()}  # fmt: skip
    old_summary = store.read_backtest_summary("main")
    assert old_summary is not None
    for per_method in old_summary["tracks"].values():
        for s in per_method.values():
            del s["flat_bars"]
    pipe = store.client.pipeline(transaction=True)
    store.write_backtest("main", old_state, old_summary, version, token, pipe, cov=bt.cov, ring=bt.ring(),
                         section=stored_section(old_summary, version))  # fmt: skip
    pipe.execute()
    _feed_store(store, small, BacktestBooks(store, small), prices, qty, range(181, BARS + 1))

    # Assert: the stored backtest is the one fed here directly, but for the flat bars counted before the old form
    config = BacktestBooks(store, small)._config("main", 1.0)
    want, closed = fed(qty, prices, config)
    state, version, _ = store.read_backtest_state("main")  # type: ignore[misc]
    got = Backtester.from_dict(state)
    assert version == BARS and got.pushed == want.pushed
    np.testing.assert_allclose(got.window, want.window, rtol=1e-12, atol=0)
    summary = store.read_backtest_summary("main")
    assert summary is not None
    bar_hits = {m: [o.hit[m] for o in closed if o.track is Track.BAR] for m in METHODS}
    for m in METHODS:  # the flat bars counted since the old form was loaded (bars 180..189)
        stored_bar = summary["tracks"]["bar"][str(m)]
        assert_summary(stored_bar, expected_summary(bar_hits[m], len([t for t in FLAT if t >= 180]), config))
        assert stored_bar["observations"] == BARS - 1 - READY - len(FLAT)
    logged = store.read_backtest_observations("main", 10_000)
    starts = {Observation.from_dict(r).start for r in logged if r["track"] == "bar"}
    assert len(starts) == len(bar_hits[VarMethod.NORMAL])  # no flat bar logged
    section = section_for(stored_section(summary, version), VarMethod.NORMAL)
    assert section is not None and section["bar_observations"] == len(bar_hits[VarMethod.NORMAL])


# -- the command line -----------------------------------------------------------------------------------------


def _csv(tmp_path: Path, prices: np.ndarray, qty: tuple[float, float]) -> tuple[Path, Path]:
    history, book_file = tmp_path / "h.csv", tmp_path / "book.csv"
    rows = "".join(f"2020-{i:04d},{float(a)!r},{float(b)!r}\n" for i, (a, b) in enumerate(prices))
    history.write_text("date,A,B\n" + rows)
    book_file.write_text(f"ticker,qty\nA,{qty[0]!r}\nB,{qty[1]!r}\n")
    return history, book_file


@pytest.mark.parametrize("qty", [(0.0, 0.0), (3.0, -2.0)])
def test_the_cli_scores_a_flat_csv_book_as_no_observation(tmp_path: Path, qty: tuple[float, float]) -> None:
    prices = closes(120)
    history, book_file = _csv(tmp_path, prices, qty)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = backtest_cli.main(["--history", str(history), "--book", str(book_file), "--window", "20",
                                    "--confidence", "0.9", "--zone-min-observations", "25"])  # fmt: skip
    assert status == 0
    lines = out.getvalue().splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line.split()[:1] in (["normal"], ["student_t"],
                                                                                   ["fhs"])}  # fmt: skip
    bars_due = 120 - READY
    if any(qty):
        _, direct = fed([np.array(qty)] * 120, prices, BacktestConfig(confidence=0.9, window=20,
                                                                     zone_min_observations=25))  # fmt: skip
        for m in METHODS:
            hits = [o.hit[m] for o in direct if o.track is Track.BAR]
            assert rows[str(m)][1:3] == [str(bars_due - 1), str(sum(hits))]
        assert not any(line.startswith("flat:") for line in lines)
    else:  # before: 69 observations, 0 exceedances and a green zone for a book that held nothing
        for m in METHODS:
            assert rows[str(m)][1:3] == ["0", "0"] and rows[str(m)][-1] == "-"
        assert (
            f"flat: {bars_due} bar(s) at which the book held nothing: not observations (obs counts the others)" in lines
        )


# -- the page ------------------------------------------------------------------------------------------------


def _risk_backtest(track: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state["refresh"] = "Paused"
    at.session_state["risk_tab"] = "Backtest"
    if track is not None:
        at.session_state["bt_track"] = track
    at.switch_page("screens/risk.py")
    return at.run()


def test_the_backtest_tab_names_the_runner_and_shows_the_flat_bars(
    app_env: Store,  # noqa: F811  (the fixture imported from test_dashboard)
    small: Settings,
) -> None:
    page_env = app_env
    prices = closes(seed=9)[:100]
    qty = [book(t, frozenset(range(70, 80))) * 1000 for t in range(100)]
    books = BacktestBooks(page_env, small)
    _feed_store(page_env, small, books, prices, qty, range(1, 21))  # in its burn-in
    at = _risk_backtest()
    assert_clean(at)
    info = " ".join(i.value for i in at.info)
    assert "The backtest runner's VaR backtest is in its burn-in (20 bars fed)" in info
    assert "backtest runner running" in info and "monitor" not in info

    _feed_store(page_env, small, books, prices, qty, range(21, 101))
    at = _risk_backtest("bar")
    assert_clean(at)
    table = frame_with(at, "flat_bars")
    summary = page_env.read_backtest_summary("main")
    assert summary is not None
    for _, row in table.iterrows():
        stored = summary["tracks"]["bar"][row["method"]]
        assert row["flat_bars"] == stored["flat_bars"] == 10
        assert row["observations"] == stored["observations"] == 100 - 1 - READY - 10
    assert "bars the portfolio was flat are not counted" in " ".join(c.value for c in at.caption)
