"""engine/history.py: spacing read from the timestamps, and every horizon scaled from it.

The closed-form checks: a daily-close history seeds a store whose 1-day VaR (read back by the real monitor)
equals an EWMA on daily log returns computed here from scratch; the weekly resampling gives the weekly answer
(one week = 5 trading days); a minute file is stored unscaled, as before.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

import warmup
from engine.history import HistoryError, SpacingKind, classify_spacing, read_history
from engine.settings import Settings
from engine.store import Store
from logic.monitor import Monitor

from .conftest import TEST_CONFIG, merge, store_contents, to_toml

TICKERS = ["AAA", "BBB", "CCC", "DDD", "EEE"]
FIVE = {
    "universe": {
        "assets": {"EEE": {"price": 80.0, "annual_vol": 0.35, "avg_daily_volume": 1_000_000, "spread_bps": 2.0}}
    },
    "portfolios": [
        {
            "id": "main", "account_type": "cash", "cash": "1000000.00",
            "holdings": {"AAA": 1000, "BBB": 2000, "CCC": 300, "DDD": 1500, "EEE": 700},
        },
    ],
}  # fmt: skip
Z95 = NormalDist().inv_cdf(0.95)


def _business_days(start: date, n: int) -> list[date]:
    out, d = [], start
    while len(out) < n:
        if d.weekday() < 5:
            out.append(d)
        d += timedelta(days=1)
    return out


def _daily_closes(n: int = 504, seed: int = 3) -> tuple[list[date], np.ndarray]:
    """Two years of business-day closes of 5 correlated tickers (about 1-2% daily vol)."""
    rng = np.random.default_rng(seed)
    vols = np.array([0.010, 0.015, 0.012, 0.020, 0.018])
    corr = 0.3 * np.ones((5, 5)) + 0.7 * np.eye(5)
    chol = np.linalg.cholesky(corr)
    returns = (rng.standard_normal((n - 1, 5)) @ chol.T) * vols
    closes = np.vstack([np.full(5, 100.0), 100.0 * np.exp(np.cumsum(returns, axis=0))])
    return _business_days(date(2022, 1, 3), n), closes


def _write_wide(path: Path, stamps: list[str], closes: np.ndarray, tickers: list[str] = TICKERS) -> Path:
    lines = ["date," + ",".join(tickers)]
    lines += [s + "," + ",".join(repr(float(p)) for p in row) for s, row in zip(stamps, closes, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _ewma_from_scratch(returns: np.ndarray, lam: float = 0.94, seed_rows: int = 30) -> np.ndarray:
    """RiskMetrics EWMA written out: zero-mean second moment of the first rows, then the recursion."""
    m = min(len(returns), seed_rows)
    sigma = sum(np.outer(r, r) for r in returns[:m]) / m
    for r in returns[m:]:
        sigma = lam * sigma + (1 - lam) * np.outer(r, r)
    return sigma


def _monitor_var95(store: Store, settings: Settings) -> float:
    snapshots = Monitor(store, settings, clock=lambda: 1_700_000_000.0).refresh()
    return float(snapshots["main"]["var"]["var95"])


def _expected_var95(closes: np.ndarray, bar_days: float) -> float:
    cov = _ewma_from_scratch(np.diff(np.log(closes), axis=0))
    qty = np.array([1000, 2000, 300, 1500, 700], dtype=float)
    dollars = qty * closes[-1]
    return Z95 * math.sqrt(float(dollars @ cov @ dollars) / bar_days)


def test_a_daily_close_history_gives_the_one_day_var_of_an_ewma_on_daily_returns(
    store: Store, make_settings, tmp_path: Path
) -> None:
    settings = make_settings(FIVE)
    days, closes = _daily_closes()
    path = _write_wide(tmp_path / "daily.csv", [d.isoformat() for d in days], closes)

    hist = read_history(path, settings.universe.assets)
    warmup.seed(store, settings, history=warmup.read_history(path, settings), now=1.0)

    assert hist.spacing.kind is SpacingKind.DAILY
    assert hist.spacing.bar_days(settings.model.bars_per_day, settings.model.bar_seconds) == 1.0
    assert _monitor_var95(store, settings) == pytest.approx(_expected_var95(closes, 1.0), rel=1e-9)


def test_the_same_closes_resampled_to_weekly_give_the_weekly_spacing_answer(
    store: Store, make_settings, tmp_path: Path
) -> None:
    settings = make_settings(FIVE)
    days, closes = _daily_closes()
    fridays = [i for i, d in enumerate(days) if d.weekday() == 4]
    path = _write_wide(tmp_path / "weekly.csv", [days[i].isoformat() for i in fridays], closes[fridays])

    hist = read_history(path, settings.universe.assets)
    warmup.seed(store, settings, history=warmup.read_history(path, settings), now=1.0)

    assert hist.spacing.kind is SpacingKind.WEEKLY
    assert hist.spacing.bar_days(settings.model.bars_per_day, settings.model.bar_seconds) == 5.0
    # one week is 5 trading days: the 1-day variance is the weekly one over 5
    assert _monitor_var95(store, settings) == pytest.approx(_expected_var95(closes[fridays], 5.0), rel=1e-9)


def test_a_minute_history_is_stored_unscaled_bit_for_bit(store: Store, make_settings, tmp_path: Path) -> None:
    settings = make_settings(FIVE)
    _, closes = _daily_closes(n=200)
    start = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
    stamps = [(start + timedelta(minutes=i)).isoformat() for i in range(200)]
    path = _write_wide(tmp_path / "minute.csv", stamps, closes)

    warmup.seed(store, settings, history=warmup.read_history(path, settings), now=1.0)

    assert read_history(path).spacing.kind is SpacingKind.MINUTE
    from engine import math_logic

    expected = math_logic.ewma_covariance_from_returns(np.log(closes[1:] / closes[:-1]), decay=0.94)
    assert np.array_equal(store.read_market().cov, expected)


def test_an_hourly_history_is_one_hour_per_bar_with_overnight_breaks(tmp_path: Path) -> None:
    stamps = []
    for day in _business_days(date(2026, 3, 2), 10):
        stamps += [datetime(day.year, day.month, day.day, 14 + h, 30, tzinfo=UTC).timestamp() for h in range(7)]

    spacing = classify_spacing(np.array(stamps))

    assert spacing.kind is SpacingKind.HOURLY
    assert spacing.model_bars(390, 60.0) == 60.0
    assert spacing.gaps == 9


def test_plotly_bundled_stocks_are_detected_as_weekly(tmp_path: Path) -> None:
    import plotly.data

    frame = plotly.data.stocks()
    path = tmp_path / "stocks.csv"
    frame.to_csv(path, index=False)

    hist = read_history(path)

    assert hist.spacing.kind is SpacingKind.WEEKLY
    assert hist.tickers == ("GOOG", "AAPL", "AMZN", "FB", "NFLX", "MSFT")
    assert hist.closes.shape == (len(frame), 6)


def test_daily_stamps_shifted_by_daylight_saving_are_still_daily() -> None:
    # a 16:00 New York close stamped in UTC: 21:00 in winter, 20:00 in summer (a 23 h step)
    stamps = [datetime(2026, 3, 2 + i, 21, tzinfo=UTC).timestamp() for i in range(5)]
    stamps += [datetime(2026, 3, 9 + i, 20, tzinfo=UTC).timestamp() for i in range(5)]

    assert classify_spacing(np.array(stamps)).kind is SpacingKind.DAILY


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("2026-01-05,1,2\n", 2, "fewer than 2 bars"),
        ("2026-01-05,1,2\n2026-01-05,1,2\n2026-01-06,1,2\n", 3, "duplicate timestamp"),
        ("2026-01-05,1,2\n2026-01-07,1,2\n2026-01-06,1,2\n", 4, "backwards"),
        ("2026-01-05,1,2\n2026-01-06,1,nan\n2026-01-07,1,2\n", 3, "positive and finite"),
        ("2026-01-05,1,2\n2026-01-06,1,0\n2026-01-07,1,2\n", 3, "positive and finite"),
        ("2026-01-05,1,2\n2026-01-06,1,inf\n2026-01-07,1,2\n", 3, "positive and finite"),
        ("2026-01-05,1,2\n2026-01-06,1\n2026-01-07,1,2\n", 3, "expected 3 fields"),
        # a minute inside daily bars: mixed spacing
        ("2026-01-05,1,2\n2026-01-06,1,2\n2026-01-07,1,2\n2026-01-07T00:01,1,2\n2026-01-08,1,2\n", 5, "mixed"),
        # 1 s steps: no supported spacing
        ("1,1,2\n2,1,2\n3,1,2\n", 4, "not minute, hourly, daily or weekly"),
    ],
)
def test_a_file_whose_spacing_or_cells_are_wrong_is_refused_with_file_and_line(
    tmp_path: Path, body: str, line: int, message: str
) -> None:
    path = tmp_path / "h.csv"
    path.write_text("date,AAA,BBB\n" + body)

    with pytest.raises(HistoryError) as err:
        read_history(path)

    assert f"{path}:{line}:" in str(err.value) and message in str(err.value)


def test_too_irregular_daily_data_is_refused() -> None:
    # 11 one-day steps and 9 two-day steps: the median is a day, but only 55% of the steps are one bar
    steps = [86_400.0] * 11 + [2 * 86_400.0] * 9
    stamps = np.concatenate([[0.0], np.cumsum(steps)])

    with pytest.raises(HistoryError, match="too irregular"):
        classify_spacing(stamps)


def test_a_gap_longer_than_a_week_of_daily_bars_is_refused() -> None:
    steps = [86_400.0] * 20 + [8 * 86_400.0]
    stamps = np.concatenate([[0.0], np.cumsum(steps)])

    with pytest.raises(HistoryError, match="too irregular"):
        classify_spacing(stamps)


def test_the_long_format_reads_like_the_wide_one(tmp_path: Path) -> None:
    days, closes = _daily_closes(n=40)
    wide = read_history(_write_wide(tmp_path / "w.csv", [d.isoformat() for d in days], closes))
    rows = ["date,ticker,close"] + [
        f"{d.isoformat()},{t},{float(closes[i, j])!r}" for i, d in enumerate(days) for j, t in enumerate(TICKERS)
    ]
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")

    long = read_history(tmp_path / "l.csv")

    assert long.tickers == wide.tickers and long.spacing == wide.spacing
    assert np.array_equal(long.closes, wide.closes) and np.array_equal(long.timestamps, wide.timestamps)


def test_bad_history_input_from_the_command_line_exits_2_and_leaves_a_seeded_store_unchanged(
    redis_server, redis_client, tmp_path: Path, monkeypatch, capsys
) -> None:
    config = tmp_path / "riskdesk.toml"
    config.write_text(to_toml(merge(TEST_CONFIG, {})))
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    assert warmup.main(["--config", str(config)]) == 0
    before = store_contents(redis_client)
    bad = tmp_path / "bad.csv"
    bad.write_text("date,AAA,BBB,CCC,ZZZ\n2026-01-05,1,2,3,4\n2026-01-06,1,2,3,4\n")
    capsys.readouterr()

    code = warmup.main(["--config", str(config), "--history", str(bad)])

    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:1:" in err and "not in the universe" in err
    assert store_contents(redis_client) == before
