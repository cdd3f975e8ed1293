"""engine/demo_data.py: the real-data demo's files, checked against plotly's bundled data read here."""

from __future__ import annotations

import csv
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import plotly.data
import pytest

from engine import book, history
from engine.demo_data import CASH, HISTORY_WEEKS, START_PRICES, TICKERS, export
from engine.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh))


def test_history_and_replay_are_the_bundled_weekly_closes_scaled_to_their_start_prices(tmp_path: Path) -> None:
    # Arrange
    source = plotly.data.stocks()
    # Act
    files = export(tmp_path)
    # Assert: tickers, every Monday from 2018-01-01, the replay starts on the history's last week
    hist, replay = _rows(files.history), _rows(files.replay)
    assert hist[0] == replay[0] == ["date", *TICKERS]
    dates = [r[0] for r in hist[1:]] + [r[0] for r in replay[2:]]
    assert len(dates) == len(source) == files.weeks
    assert dates == [str(date(2018, 1, 1) + timedelta(weeks=i)) for i in range(len(source))]
    assert len(hist) - 1 == HISTORY_WEEKS and replay[1] == hist[-1]
    for row, (_, src) in zip(hist[1:] + replay[2:], source.iterrows(), strict=True):
        for ticker, text in zip(TICKERS, row[1:], strict=True):
            assert float(text) == pytest.approx(src[ticker] * START_PRICES[ticker], abs=5e-5)


def test_the_exported_history_reads_as_weekly_spacing(tmp_path: Path) -> None:
    files = export(tmp_path)
    hist = history.read_history(files.history, TICKERS)
    assert hist.spacing.kind is history.SpacingKind.WEEKLY
    assert hist.spacing.model_bars(390) == 5 * 390


def test_the_demo_book_is_valid_for_the_demo_settings_and_bought_at_the_first_close(tmp_path: Path) -> None:
    # Arrange
    files = export(tmp_path)
    settings = load_settings(ROOT / "configs" / "demo.toml", env={})
    # Act
    positions = book.read_book(files.book, TICKERS)
    book.check_book(settings, positions)  # raises BookError on anything the warm-up would refuse
    # Assert: every row's cost is the first week's close; main holds every ticker; cash rows as configured
    rows = _rows(files.book)[1:]
    position_rows = [r for r in rows if r[1]]
    assert {r[1] for r in position_rows if r[0] == "main"} == set(TICKERS)
    for _pid, ticker, qty, avg, *_ in position_rows:
        assert Decimal(avg) == Decimal(str(START_PRICES[ticker]))
        assert int(qty) != 0
    assert {r[0]: r[5] for r in rows if not r[1]} == CASH
    assert all(int(r[2]) < 0 for r in position_rows if r[1] in ("FB", "NFLX") and r[0] == "hedge")
