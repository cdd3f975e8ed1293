"""Tests of logic.backtest: the walk-forward engine against an independent recomputation, on real data, its state
as plain JSON, and the command line."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from arch.data import sp500
from scipy import stats

from engine import math_logic as ml
from engine.records import VarMethod
from logic.backtest import BacktestConfig, Backtester, Track, main, run_backtest

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

ROOT = Path(__file__).resolve().parents[1]
METHODS = tuple(VarMethod)


def independent_kupiec(x: int, n: int, p: float) -> tuple[float, float]:
    """Kupiec (1995) POF: LR = -2 ln[(1-p)^(n-x) p^x] + 2 ln[(1-x/n)^(n-x) (x/n)^x], χ²(1)."""
    rate = x / n
    log_null = (n - x) * math.log(1 - p) + x * math.log(p)
    log_alt = (n - x) * math.log(1 - rate) + (x * math.log(rate) if x else 0.0)
    lr = -2 * log_null + 2 * log_alt
    return lr, float(stats.chi2.sf(lr, df=1))


# --- real data: S&P 500, 1999-2018 ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp500_backtest() -> Backtester:
    closes = sp500.load()["Adj Close"]
    dates = closes.index.strftime("%Y-%m-%d")
    bars = ((d, [p], [1.0]) for d, p in zip(dates, closes.to_numpy(), strict=True))
    bt, _ = run_backtest(["SPX"], bars, BacktestConfig(confidence=0.99, window=500, decay=0.94, max_records=None))
    return bt


def test_on_the_sp500_normal_fails_kupiec_fhs_passes_and_student_t_exceeds_less_than_normal(sp500_backtest):
    """Data: ``arch.data.sp500`` 'Adj Close', S&P 500 daily, 1999-01-04..2018-12-31 (5031 closes, 5030 returns).
    Book: one unit long. Model: EWMA λ = 0.94 seeded by the zero-mean second moment of the first 30 returns; a
    500-return window of standardized returns (burn-in 30 + 500 returns, no forecast before), then 4500 one-day
    99% VaR forecasts, each checked against the next day's P&L (1 · ΔP).

    Numbers when written: normal 88 exceedances (1.956%, Kupiec LR 32.5, p ≈ 1e-8: rejected); student_t
    (ν by moments on the window, in [3, 30]) 68 (1.511%); fhs 45 (1.000%, LR 0, p = 1). Kupiec is recomputed
    here from the counts with scipy.stats.chi2.
    """
    summary = sp500_backtest.summary(Track.BAR)
    normal, t, fhs = summary[VarMethod.NORMAL], summary[VarMethod.STUDENT_T], summary[VarMethod.FHS]
    assert normal.observations == t.observations == fhs.observations == 5030 - 30 - 500

    lr_normal, p_normal = independent_kupiec(normal.exceedances, normal.observations, 0.01)
    lr_fhs, p_fhs = independent_kupiec(fhs.exceedances, fhs.observations, 0.01)
    assert p_normal < 0.05
    assert normal.exceedances / normal.observations > 0.018  # about twice the promised 1%
    assert p_fhs > 0.05
    assert 0.008 <= fhs.exceedances / fhs.observations <= 0.013
    assert t.exceedances < normal.exceedances

    # the engine's own statistics agree with the independent ones
    assert normal.kupiec_lr == pytest.approx(lr_normal, rel=1e-9)
    assert normal.kupiec_p == pytest.approx(p_normal, rel=1e-6)
    assert fhs.kupiec_p == pytest.approx(p_fhs, rel=1e-9)
    # the numbers stated in the docstring
    assert (normal.exceedances, t.exceedances, fhs.exceedances) == (88, 68, 45)


def test_the_sp500_stored_series_reproduces_the_counts_and_the_christoffersen_test(sp500_backtest):
    records = [o for o in sp500_backtest.records if o.track is Track.BAR]
    summary = sp500_backtest.summary(Track.BAR)
    for method in METHODS:
        hits = np.array([o.hit[method] for o in records], dtype=int)
        assert hits.sum() == summary[method].exceedances
        assert summary[method].christoffersen_p == pytest.approx(ml.christoffersen_independence(hits)[1], rel=1e-12)
        assert summary[method].rolling_observations == 250
        assert summary[method].rolling_exceedances == hits[-250:].sum()
        assert summary[method].zone == ml.basel_traffic_light(int(hits[-250:].sum()), 250)
        assert all((-o.pnl > o.var[method]) == o.hit[method] for o in records)


# --- the walk-forward against an independent recomputation ------------------------------------------------------


def synthetic_prices(n_bars: int, n_assets: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = 0.01 * (1 + 0.5 * np.sin(np.arange(n_bars) / 15.0))[:, None]
    returns = vol * rng.standard_t(4, (n_bars, n_assets)) / math.sqrt(2)
    return 100.0 * np.exp(np.cumsum(returns, axis=0))


def independent_walk_forward(closes, qty, *, window, seed_rows, decay, confidence, horizon, lo=3.0, hi=30.0):
    """Forecast bar b -> (VaR per method at ``horizon``, P&L to b + horizon), written out plainly."""
    r = np.log(closes[1:] / closes[:-1])
    cov = r[:seed_rows].T @ r[:seed_rows] / seed_rows
    zs: list[np.ndarray] = []
    forecasts = {}
    for t in range(seed_rows, len(r)):
        vol = np.sqrt(np.diag(cov))
        zs.append(r[t] / vol)
        cov = decay * cov + (1 - decay) * np.outer(r[t], r[t])
        b = t + 1  # the bar whose close ended return t
        if len(zs) < window or b + horizon >= len(closes):
            continue
        z = np.array(zs[-window:])
        x = qty[b] * closes[b]
        sigma = math.sqrt(x @ cov @ x) * math.sqrt(horizon)
        kurt = np.mean(z**4) / np.mean(z**2) ** 2 - 3
        nu = min(max(6 / kurt + 4, lo), hi) if kurt > 0 else hi
        losses = sorted(-(z * np.sqrt(np.diag(cov))) @ x, reverse=True)
        k = math.ceil(round((1 - confidence) * window, 6))
        forecasts[b] = (
            {
                VarMethod.NORMAL: stats.norm.ppf(confidence) * sigma,
                VarMethod.STUDENT_T: stats.t.ppf(confidence, nu) * math.sqrt((nu - 2) / nu) * sigma,
                VarMethod.FHS: losses[k - 1] * math.sqrt(horizon),
            },
            float(qty[b] @ (closes[b + horizon] - closes[b])),
        )
    return forecasts


@pytest.mark.parametrize("horizon", [1, 3])
def test_every_forecast_and_pnl_equals_an_independent_walk_forward(horizon):
    closes = synthetic_prices(160, 3, seed=1)
    rng = np.random.default_rng(2)
    qty = rng.integers(-50, 50, closes.shape).astype(float)  # the book changes every bar
    cfg = BacktestConfig(window=40, seed_rows=10, decay=0.94, confidence=0.95, horizon_bars=horizon, max_records=None)
    labels = [f"d{i:03d}" for i in range(len(closes))]
    bt, series = run_backtest(["A", "B", "C"], zip(labels, closes, qty, strict=True), cfg)
    expected = independent_walk_forward(
        closes, qty, window=40, seed_rows=10, decay=0.94, confidence=0.95, horizon=horizon
    )

    track = Track.LIMIT if horizon > 1 else Track.BAR
    observed = [o for o in series if o.track is track]
    first = min(expected)
    starts = list(range(first, len(closes) - horizon, horizon))  # non-overlapping horizons
    assert [o.start for o in observed] == [labels[b] for b in starts]
    assert [o.end for o in observed] == [labels[b + horizon] for b in starts]
    for o, b in zip(observed, starts, strict=True):
        var, pnl = expected[b]
        assert o.pnl == pytest.approx(pnl, rel=1e-12, abs=1e-9)
        for method in METHODS:
            assert o.var[method] == pytest.approx(var[method], rel=1e-9)
            assert o.hit[method] == (-pnl > var[method])
    summary = bt.summary(track)
    for method in METHODS:
        assert summary[method].observations == len(observed)
        assert summary[method].exceedances == sum(o.hit[method] for o in observed)


def test_no_forecast_is_made_before_the_window_is_full():
    closes = synthetic_prices(60, 2, seed=3)
    bt = Backtester(["A", "B"], BacktestConfig(window=20, seed_rows=5))
    for i, p in enumerate(closes):
        bt.step(p, [1.0, 1.0])
        # bar i has seen i returns: 5 seed the covariance, the next 20 fill the window
        assert bt.ready == (i >= 25)
        assert (Track.BAR in bt.pending) == (i >= 25)


def test_a_forecast_does_not_depend_on_later_prices():
    closes = synthetic_prices(120, 2, seed=4)
    shocked = closes.copy()
    shocked[90:] *= 0.5
    cfg = BacktestConfig(window=30, seed_rows=5, max_records=None)
    _, a = run_backtest(["A", "B"], ((str(i), p, [1.0, 2.0]) for i, p in enumerate(closes)), cfg)
    _, b = run_backtest(["A", "B"], ((str(i), p, [1.0, 2.0]) for i, p in enumerate(shocked)), cfg)
    before = [o for o in a if int(o.end) < 90]
    assert before == [o for o in b if int(o.end) < 90]
    assert any(x.var != y.var for x, y in zip(a, b, strict=True) if int(x.start) >= 90)


def test_the_model_state_is_the_one_math_logic_gives_the_stream_daemon():
    closes = synthetic_prices(80, 3, seed=5)
    bt = Backtester(["A", "B", "C"], BacktestConfig(window=25, seed_rows=7))
    for p in closes:
        bt.step(p, np.ones(3))
    r = ml.log_returns(closes[:-1], closes[1:])
    cov = ml.ewma_covariance_from_returns(r[:7], 0.94, seed_rows=7)
    zs = [ml.ewma_standardize_and_update(cov, row, 0.94) for row in r[7:]]
    assert np.array_equal(bt.cov, cov)
    assert np.array_equal(bt.window, np.array(zs[-25:]))
    assert bt.dof() == ml.fit_student_t_dof(np.array(zs[-25:]))


# --- state as plain JSON ------------------------------------------------------------------------------------


def test_a_run_resumed_from_json_equals_the_uninterrupted_run_exactly():
    closes = synthetic_prices(140, 3, seed=6)
    qty = np.random.default_rng(7).integers(-9, 9, closes.shape).astype(float)
    cfg = BacktestConfig(window=30, seed_rows=5, horizon_bars=4, rolling=20, max_records=50)
    straight = Backtester(["A", "B", "C"], cfg)
    resumed = Backtester(["A", "B", "C"], cfg)
    for i, (p, q) in enumerate(zip(closes, qty, strict=True)):
        straight.step(p, q, str(i))
        resumed.step(p, q, str(i))
        if i in (3, 20, 36, 37, 90):  # during each burn-in stage, at the first forecasts, mid-run
            text = resumed.to_json()
            assert "NaN" not in text
            resumed = Backtester.from_json(json.loads(json.dumps(text)))
    assert resumed.to_dict() == straight.to_dict()
    assert resumed.summary(Track.LIMIT) == straight.summary(Track.LIMIT)
    assert len(straight.records) == 50


def test_the_state_with_binary_arrays_restores_the_same_backtester():
    closes = synthetic_prices(70, 3, seed=11)
    bt = Backtester(["A", "B", "C"], BacktestConfig(window=20, seed_rows=5))
    for p in closes:
        bt.step(p, [1.0, -2.0, 3.0])
    state = bt.to_dict(binary_arrays=True)
    assert isinstance(state["cov"], np.ndarray) and state["cov"].shape == (3, 3)
    assert isinstance(state["window"], np.ndarray) and state["window"].shape == (20, 3)
    rest = json.loads(json.dumps({k: v for k, v in state.items() if k not in ("cov", "window")}))
    restored = Backtester.from_dict({**rest, "cov": state["cov"], "window": state["window"]})
    assert restored.to_dict() == bt.to_dict()


def test_the_rolling_count_and_zone_cover_the_last_rolling_observations():
    closes = synthetic_prices(150, 1, seed=8)
    cfg = BacktestConfig(window=20, seed_rows=5, rolling=30, confidence=0.9, max_records=None)
    bt, series = run_backtest(["A"], ((str(i), p, [3.0]) for i, p in enumerate(closes)), cfg)
    for method, s in bt.summary(Track.BAR).items():
        hits = [int(o.hit[method]) for o in series if o.track is Track.BAR]
        assert s.rolling_observations == 30
        assert s.rolling_exceedances == sum(hits[-30:])
        assert s.zone == ml.basel_traffic_light(sum(hits[-30:]), 30, confidence=0.9)
        assert (s.kupiec_lr, s.kupiec_p) == ml.kupiec_pof(sum(hits), len(hits), 0.9)
        assert (s.christoffersen_lr, s.christoffersen_p) == ml.christoffersen_independence(hits)


def test_a_bad_bar_is_refused_and_changes_nothing():
    closes = synthetic_prices(50, 2, seed=9)
    bt = Backtester(["A", "B"], BacktestConfig(window=10, seed_rows=3))
    for p in closes:
        bt.step(p, [1.0, 1.0])
    before = bt.to_dict()
    for prices, qty in [([1.0, 0.0], [1, 1]), ([1.0, np.nan], [1, 1]), ([1.0], [1, 1]), ([1.0, 2.0], [1, np.inf])]:
        with pytest.raises(ValueError):
            bt.step(prices, qty)
    assert bt.to_dict() == before


def test_a_foreign_state_is_refused():
    bt = Backtester(["A"], BacktestConfig(window=5, seed_rows=2))
    state = bt.to_dict()
    with pytest.raises(ValueError, match="version"):
        Backtester.from_dict({**state, "version": 99})
    with pytest.raises(ValueError, match="malformed"):
        Backtester.from_dict({k: v for k, v in state.items() if k != "cov"})


# --- the command line -----------------------------------------------------------------------------------------


def write_history(path: Path, closes: np.ndarray, tickers: list[str]) -> list[str]:
    dates = [f"2020-{1 + i // 28:02d}-{1 + i % 28:02d}" for i in range(len(closes))]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["date", *tickers])
        for d, row in zip(dates, closes, strict=True):
            w.writerow([d, *(repr(float(v)) for v in row)])
    return dates


SMALL = ["--window", "30", "--seed-rows", "5", "--confidence", "0.95"]


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, np.ndarray, list[str]]:
    closes = synthetic_prices(120, 2, seed=10)
    path = tmp_path / "closes.csv"
    dates = write_history(path, closes, ["AAA", "BBB"])
    return path, closes, dates


def test_cli_prints_each_methods_figures_and_writes_the_series(history, tmp_path, capsys):
    path, closes, dates = history
    book = tmp_path / "book.csv"
    book.write_text("ticker,qty\nAAA,10\nBBB,-4\n")
    out = tmp_path / "series.csv"

    # 84 observations: a zone from 50 of them (the default, 250, gives none: see the test below)
    zone_min = ["--zone-min-observations", "50"]
    assert main(["--history", str(path), "--book", str(book), *SMALL, *zone_min, "--out", str(out)]) == 0

    cfg = BacktestConfig(window=30, seed_rows=5, confidence=0.95, zone_min_observations=50, max_records=None)
    bt, series = run_backtest(["AAA", "BBB"], zip(dates, closes, [[10.0, -4.0]] * len(closes), strict=True), cfg)
    series = [o for o in series if o.track is Track.BAR]  # at a one-bar limit horizon the CLI writes one track
    printed = capsys.readouterr().out
    assert "zone: none" not in printed
    for method, s in bt.summary().items():
        assert s.zone is not None
        line = next(ln for ln in printed.splitlines() if ln.startswith(str(method) + " "))
        assert line.split() == [
            str(method), str(s.observations), str(s.exceedances), f"{s.rate:.3%}", f"{s.kupiec_lr:.3f}",
            f"{s.kupiec_p:.4f}", f"{s.christoffersen_p:.4f}", str(s.zone),
        ]  # fmt: skip
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(series) == 120 - 1 - 5 - 30
    assert [float(r["pnl"]) for r in rows] == [o.pnl for o in series]
    assert [float(r["var_fhs"]) for r in rows] == [o.var[VarMethod.FHS] for o in series]
    assert [r["hit_normal"] == "1" for r in rows] == [o.hit[VarMethod.NORMAL] for o in series]


def test_cli_reads_the_long_format_and_the_store_book_shape_to_the_same_figures(history, tmp_path, capsys):
    path, closes, dates = history
    long = tmp_path / "long.csv"
    lines = [
        f"{d},{t},{float(v)!r}\n" for d, row in zip(dates, closes, strict=True) for t, v in zip("AB", row, strict=True)
    ]
    long.write_text("date,ticker,close\n" + "".join(lines).replace(",A,", ",AAA,").replace(",B,", ",BBB,"))
    book = tmp_path / "book.csv"
    book.write_text("portfolio_id,ticker,qty,avg_price\np1,BBB,3,100\np1,AAA,2,50\n")
    simple = tmp_path / "simple.csv"
    simple.write_text("ticker,qty\nAAA,2\nBBB,3\n")

    assert main(["--history", str(path), "--book", str(simple), *SMALL]) == 0
    wide = capsys.readouterr().out.splitlines()[1:]
    assert main(["--history", str(long), "--book", str(book), *SMALL]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == wide


def test_cli_weights_hold_constant_dollar_weights(history, tmp_path, capsys):
    path, closes, dates = history
    weights = tmp_path / "w.csv"
    weights.write_text("ticker,weight\nAAA,0.6\nBBB,0.4\n")
    out = tmp_path / "s.csv"
    assert main(["--history", str(path), "--weights", str(weights), "--value", "1000", *SMALL, "--out", str(out)]) == 0
    with out.open() as fh:
        first = next(csv.DictReader(fh))
    b = dates.index(first["start"])
    expected = 1000 * (0.6 * closes[b + 1, 0] / closes[b, 0] + 0.4 * closes[b + 1, 1] / closes[b, 1] - 1)
    assert float(first["pnl"]) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("name", "text", "line", "reason"),
    [
        ("history", "date,AAA\n2020-01-01,1\n2020-01-02,abc\n", 3, "not a number"),
        ("history", "date,AAA\n2020-01-01,1\n2020-01-02,-1\n", 3, "> 0"),
        ("history", "date,AAA\n2020-01-02,1\n2020-01-01,2\n", 3, "dates must increase"),
        ("history", "date,AAA\n2020-01-01,1,2\n", 2, "fields"),
        ("history", "date,AAA,AAA\n", 1, "distinct"),
        ("history", "date,ticker,close\n2020-01-01,AAA,1\n2020-01-01,BBB,1\n2020-01-02,AAA,1\n", 4, "no close for BBB"),
        ("book", "ticker,qty\nZZZ,1\n", 2, "not in the history"),
        ("book", "ticker,qty\nAAA,1\nAAA,2\n", 3, "twice"),
        ("book", "portfolio_id,ticker,qty,avg_price\np1,AAA,1,1\np2,BBB,1,1\n", 3, "second portfolio"),
        ("book", "ticker,quantity\n", 1, "header"),
    ],
)
def test_cli_bad_input_exits_2_with_file_and_line(history, tmp_path, capsys, name, text, line, reason):
    path, _, _ = history
    bad = tmp_path / f"bad_{name}.csv"
    bad.write_text(text)
    args = ["--history", str(bad)] if name == "history" else ["--history", str(path), "--book", str(bad)]

    assert main([*args, *SMALL]) == 2

    err = capsys.readouterr().err
    assert err.startswith(f"{bad}:{line}: ")
    assert reason in err


def test_cli_refuses_a_history_too_short_for_one_forecast(tmp_path, capsys):
    path = tmp_path / "short.csv"
    write_history(path, synthetic_prices(36, 1, seed=1), ["AAA"])  # 35 returns: 5 seed + 30 window, none left
    assert main(["--history", str(path), *SMALL]) == 2
    assert "need at least 37" in capsys.readouterr().err
    write_history(path, synthetic_prices(37, 1, seed=1), ["AAA"])
    assert main(["--history", str(path), *SMALL]) == 0


def test_cli_refuses_an_unknown_method(history, capsys):
    path, _, _ = history
    assert main(["--history", str(path), "--method", "normal,garch"]) == 2
    assert "garch" in capsys.readouterr().err


def test_python_dash_m_logic_backtest_runs(history):
    path, _, _ = history
    done = subprocess.run(
        [sys.executable, "-m", "logic.backtest", "--history", str(path), *SMALL, "--method", "fhs"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "fhs" in done.stdout and "normal" not in done.stdout


def test_cli_with_a_longer_limit_horizon_reports_both_tracks(history, tmp_path, capsys):
    path, closes, _ = history
    out = tmp_path / "s.csv"
    assert main(["--history", str(path), *SMALL, "--horizon-bars", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bar track" in printed and "limit track" in printed
    with out.open() as fh:
        tracks = [r["track"] for r in csv.DictReader(fh)]
    first_forecast = 1 + 5 + 30 - 1  # the bar whose return fills the window
    assert tracks.count("bar") == len(closes) - 1 - first_forecast
    assert tracks.count("limit") == (len(closes) - 1 - first_forecast) // 3


# --- the Basel zone: only from a minimum of rolling observations ------------------------------------------------


def binomial_zone(x: int, n: int, confidence: float) -> str:
    """The Basel rule written out: F the binomial CDF at n trials, p = 1 - c; green below 95%, red from 99.99%
    (no exceedance is green)."""
    p = 1.0 - confidence
    cdf = sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(x + 1))
    return "green" if x == 0 or cdf < 0.95 else "yellow" if cdf < 0.9999 else "red"


def crash_after_burn_in(cfg: BacktestConfig) -> Backtester:
    """A backtester whose first one-bar forecast is exceeded (a 20% fall) and whose second is not: one
    exceedance in two observations."""
    rng = np.random.default_rng(1)
    bt, p = Backtester(["A"], cfg), 100.0
    while not bt.ready:
        p *= math.exp(0.01 * rng.standard_normal())
        bt.step([p], [100.0])
    bt.step([p * math.exp(-0.2)], [100.0])
    bt.step([p * math.exp(-0.2 + 0.001)], [100.0])
    return bt


def test_one_exceedance_in_two_observations_has_no_zone_by_default_where_the_binomial_rule_alone_says_red():
    by_default = crash_after_burn_in(BacktestConfig(window=20, seed_rows=5)).summary(Track.BAR)
    from_the_first = crash_after_burn_in(BacktestConfig(window=20, seed_rows=5, zone_min_observations=1))

    assert BacktestConfig().zone_min_observations == 250  # the Basel one-year window
    for method in METHODS:
        s = by_default[method]
        assert (s.observations, s.exceedances, s.rolling_observations, s.rolling_exceedances) == (2, 1, 2, 1)
        assert s.zone is None
        # the counts and the tests do not wait for the zone
        assert (s.kupiec_lr, s.kupiec_p) == ml.kupiec_pof(1, 2, 0.99)
        assert (s.christoffersen_lr, s.christoffersen_p) == ml.christoffersen_independence([1, 0])
        # F(1) = 0.99^2 + 2 * 0.01 * 0.99 = 0.9999: what a zone from the first observation says
        assert from_the_first.summary(Track.BAR)[method].zone == binomial_zone(1, 2, 0.99) == "red"


def test_a_zone_is_given_at_exactly_the_minimum_of_rolling_observations_and_none_one_observation_before():
    closes = synthetic_prices(150, 1, seed=8)
    cfg = BacktestConfig(window=20, seed_rows=5, rolling=30, zone_min_observations=12, confidence=0.9)
    bt = Backtester(["A"], cfg)
    hits: dict[VarMethod, list[int]] = {m: [] for m in METHODS}
    seen = set()
    for i, p in enumerate(closes):
        for o in bt.step(p, [3.0], str(i)):
            if o.track is Track.BAR:
                for m in METHODS:
                    hits[m].append(int(o.hit[m]))
        for method, s in bt.summary(Track.BAR).items():
            n = len(hits[method])
            recent = hits[method][-30:]
            assert (s.observations, s.rolling_observations, s.rolling_exceedances) == (n, len(recent), sum(recent))
            if n < 12:
                assert s.zone is None, n
            else:
                assert s.zone == binomial_zone(sum(recent), len(recent), 0.9), n
            seen.add(n)
    assert {11, 12, 13, 30, 31} <= seen  # one under, at, over the minimum; the window full and rolling
    assert any(sum(h[:12]) for h in hits.values())  # an exceedance inside the first 12: a zone that is not trivial


@pytest.mark.parametrize(
    ("rolling", "minimum", "resolved"), [(250, None, 250), (30, None, 30), (30, 30, 30), (30, 1, 1), (1, 1, 1)]
)
def test_the_zone_minimum_defaults_to_the_rolling_window_and_may_be_anything_from_1_to_it(rolling, minimum, resolved):
    cfg = BacktestConfig(rolling=rolling, zone_min_observations=minimum)

    assert cfg.zone_min_observations == cfg.zone_minimum == resolved
    assert BacktestConfig.from_dict(cfg.to_dict()) == cfg
    # a stored configuration that names no minimum has the rolling window's
    assert BacktestConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "zone_min_observations"}) == (
        BacktestConfig(rolling=rolling)
    )


@pytest.mark.parametrize("minimum", [0, -1, 31, 2.5, True, "5"])
def test_a_zone_minimum_outside_1_to_the_rolling_window_is_refused(minimum):
    with pytest.raises(ValueError, match=r"zone_min_observations must be an integer between 1 and rolling \(30\)"):
        BacktestConfig(rolling=30, zone_min_observations=minimum)


def test_rezone_keeps_the_counts_and_gives_the_zone_from_the_new_minimum():
    bt = crash_after_burn_in(BacktestConfig(window=20, seed_rows=5))
    before = bt.to_dict()

    bt.rezone(2)

    assert bt.config == BacktestConfig(window=20, seed_rows=5, zone_min_observations=2)
    after = bt.to_dict()
    assert {k: v for k, v in after.items() if k != "config"} == {k: v for k, v in before.items() if k != "config"}
    assert bt.store_state()["config"]["zone_min_observations"] == 2
    assert all(s.zone == "red" for s in bt.summary(Track.BAR).values())
    bt.rezone(3)
    assert all(s.zone is None for s in bt.summary(Track.BAR).values())


def test_cli_prints_no_zone_before_the_minimum_and_says_why(history, capsys):
    path, closes, _ = history

    assert main(["--history", str(path), *SMALL]) == 0  # 120 closes: 84 observations, the default minimum 250
    printed = capsys.readouterr().out.splitlines()
    assert all(ln.split()[-1] == "-" for ln in printed if ln.split()[:1] in (["normal"], ["student_t"], ["fhs"]))
    assert "zone: none before 250 observations (84 so far)" in printed

    assert main(["--history", str(path), *SMALL, "--zone-min-observations", "84"]) == 0  # exactly the minimum
    printed = capsys.readouterr().out.splitlines()
    assert not any(ln.startswith("zone:") for ln in printed)
    assert main(["--history", str(path), *SMALL, "--zone-min-observations", "85"]) == 0  # one over what there is
    assert "zone: none before 85 observations (84 so far)" in capsys.readouterr().out.splitlines()
    assert main(["--history", str(path), *SMALL, "--zone-min-observations", "0"]) == 2
    assert "zone_min_observations must be an integer between 1 and rolling (250)" in capsys.readouterr().err
