"""History and replay bars are measured in the model's own bar (``model.bar_seconds``), never in one-minute bars
(engine/history.py ``Spacing.model_bars``): under five-minute model bars an hourly or minute file gave a daily
volatility 0.447x the truth, every VaR 55 % too small.

The truth is closed form: GBM log returns generated with a known daily volatility ``SIGMA_DAY`` spread over
6.5 trading hours, so an hour's sd is ``SIGMA_DAY / sqrt(6.5)`` and a minute's ``SIGMA_DAY / sqrt(390)``. The
model's daily sd is ``sqrt(C * bars_per_day)`` of the stored one-model-bar variance ``C``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

import warmup
from engine.feeds import Bar
from engine.history import History, Spacing, SpacingKind, model_covariance
from engine.price_filter import replay_bar_scale
from engine.settings import Settings

SIGMA_DAY = 0.20 / math.sqrt(252)
DECAY = 0.999
ROWS = 20_000
MODELS = [(60.0, 390), (300.0, 78)]
"""(``bar_seconds``, ``bars_per_day``): a one-minute and a five-minute model of the same 6.5-hour day."""


def _gbm(seconds: float, rows: int = ROWS, seed: int = 7) -> History:
    """One ticker's closes with bars of ``seconds`` (60 or 3600) of a GBM of daily sd ``SIGMA_DAY``."""
    sd = SIGMA_DAY * math.sqrt(seconds / (6.5 * 3600))
    r = np.random.default_rng(seed).normal(-0.5 * sd * sd, sd, size=(rows, 1))
    closes = 100.0 * np.exp(np.vstack([np.zeros((1, 1)), np.cumsum(r, axis=0)]))
    kind = SpacingKind.MINUTE if seconds == 60 else SpacingKind.HOURLY
    return History(Path("gbm.csv"), ("A",), _stamps(rows + 1, seconds), closes, Spacing(kind, seconds, 0))


def _stamps(rows: int, seconds: float) -> np.ndarray[tuple[int], np.dtype[np.float64]]:
    return np.asarray(np.arange(rows) * seconds, dtype=np.float64)


def _tolerance(rows: int, decay: float, seed_rows: int = 30) -> float:
    """Five standard errors of the EWMA sd's ratio to the truth: the estimate is ``sum w_t r_t^2`` with weights
    ``1/m`` (times ``decay^(rows-m)``) on the ``m`` seed rows and ``(1 - decay) decay^(rows-1-t)`` after them
    (engine/math_logic.py ``ewma_covariance_from_returns``); for normal returns its relative variance is
    ``2 sum w^2``, the sd's half of its relative sd."""
    m = min(rows, seed_rows)
    tail = (1 - decay) * decay ** np.arange(rows - m)
    w2 = float(np.sum(tail**2)) + m * (decay ** (rows - m) / m) ** 2
    return 5 * 0.5 * math.sqrt(2 * w2)


@pytest.mark.parametrize("seconds", [60.0, 3600.0], ids=["minute-file", "hourly-file"])
@pytest.mark.parametrize(("bar_seconds", "bars_per_day"), MODELS, ids=["60s-model", "300s-model"])
def test_the_daily_sd_of_an_intraday_file_is_the_truth_whatever_the_model_bar(
    seconds: float, bar_seconds: float, bars_per_day: int
) -> None:
    hist = _gbm(seconds)

    cov = model_covariance(hist, DECAY, bars_per_day, bar_seconds)

    ratio = math.sqrt(float(cov[0, 0]) * bars_per_day) / SIGMA_DAY
    tolerance = _tolerance(ROWS, DECAY)
    assert 0.02 < tolerance < 0.1  # tight enough to tell 1 from the old 0.447
    assert abs(ratio - 1.0) <= tolerance


@pytest.mark.parametrize("seconds", [60.0, 3600.0], ids=["minute-file", "hourly-file"])
def test_both_models_give_the_same_daily_variance_of_the_same_file(seconds: float) -> None:
    hist = _gbm(seconds, rows=2_000)
    (s1, d1), (s5, d5) = MODELS
    one, five = model_covariance(hist, DECAY, d1, s1), model_covariance(hist, DECAY, d5, s5)
    assert float(five[0, 0]) * d5 == pytest.approx(float(one[0, 0]) * d1, rel=1e-12)
    assert float(five[0, 0]) == pytest.approx(5 * float(one[0, 0]), rel=1e-12)  # a five-minute bar is 5 minutes


@pytest.mark.parametrize(
    ("kind", "bar_seconds", "bars_per_day", "expected"),
    [
        (SpacingKind.MINUTE, 60.0, 390, 1.0),
        (SpacingKind.MINUTE, 300.0, 78, 0.2),  # a minute row is a fifth of a model bar: allowed
        (SpacingKind.HOURLY, 60.0, 390, 60.0),
        (SpacingKind.HOURLY, 300.0, 78, 12.0),
        (SpacingKind.DAILY, 300.0, 78, 78.0),
        (SpacingKind.WEEKLY, 300.0, 78, 390.0),
    ],
)
def test_a_file_bar_is_its_nominal_length_in_model_bars(
    kind: SpacingKind, bar_seconds: float, bars_per_day: int, expected: float
) -> None:
    spacing = Spacing(kind, 0.0, 0)
    assert spacing.model_bars(bars_per_day, bar_seconds) == expected
    assert spacing.bar_days(bars_per_day, bar_seconds) == expected / bars_per_day


@pytest.mark.parametrize("bad", [0.0, -60.0, math.nan, math.inf])
def test_a_model_bar_that_is_not_a_positive_number_of_seconds_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="bar_seconds must be a positive number"):
        Spacing(SpacingKind.HOURLY, 3600.0, 0).model_bars(390, bad)
    assert Spacing(SpacingKind.HOURLY, 3600.0, 0).model_bars(390, 5e-324) > 0  # the smallest positive is one


def _five_minute_model(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings({"model": {"bar_seconds": 300.0, "bars_per_day": 78}})


@pytest.mark.parametrize(("seconds", "expected"), [(60.0, 0.2), (3600.0, 12.0)], ids=["minute", "hourly"])
def test_a_replay_under_five_minute_model_bars_scales_its_rows_by_their_seconds(
    make_settings: Callable[..., Settings], seconds: float, expected: float
) -> None:
    bars = [Bar(1_700_000_000.0 + k * seconds, {"AAA": 100.0}) for k in range(10)]
    assert replay_bar_scale(_five_minute_model(make_settings), bars) == expected
    assert replay_bar_scale(make_settings(), bars) == expected * 5  # the one-minute model


def test_warmup_from_an_hourly_file_under_five_minute_bars_stores_the_true_daily_volatility(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = _five_minute_model(make_settings)
    assets = list(settings.universe.assets)
    sd = SIGMA_DAY / math.sqrt(6.5)
    rng = np.random.default_rng(11)
    rows = 4_000
    r = rng.normal(0.0, sd, size=(rows, len(assets)))
    closes = 100.0 * np.exp(np.vstack([np.zeros((1, len(assets))), np.cumsum(r, axis=0)]))
    start = datetime(2020, 1, 1, tzinfo=UTC)
    lines = ["date," + ",".join(assets)]
    lines += [
        f"{(start + timedelta(hours=t)).isoformat()}," + ",".join(repr(float(c)) for c in row)
        for t, row in enumerate(closes)
    ]
    path = tmp_path / "hourly.csv"
    path.write_text("\n".join(lines) + "\n")

    seed = warmup.read_history(path, settings)

    decay = settings.model.ewma_decay
    expected = model_covariance(_history(seed.tickers, closes), decay, 78, 300.0)  # as 12 five-minute bars
    np.testing.assert_allclose(seed.cov, expected, rtol=1e-7)
    ewma_hour = _ewma_diagonal(np.diff(np.log(closes), axis=0), decay)
    np.testing.assert_allclose(np.diagonal(seed.cov) * 78, ewma_hour * 6.5, rtol=1e-7)  # 6.5 hours a day


def _history(tickers: tuple[str, ...], closes: np.ndarray) -> History:
    return History(Path("h.csv"), tickers, _stamps(len(closes), 3600.0), closes, Spacing(SpacingKind.HOURLY, 3600.0, 0))


def _ewma_diagonal(returns: np.ndarray, decay: float, seed_rows: int = 30) -> np.ndarray:
    """The EWMA variance of each column written out (seed: mean square of the first rows, then the recursion)."""
    var = np.mean(returns[:seed_rows] ** 2, axis=0)
    for row in returns[seed_rows:]:
        var = decay * var + (1 - decay) * row**2
    return np.asarray(var)
