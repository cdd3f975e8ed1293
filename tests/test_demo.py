"""engine/demo_data.py: the real-data demo's files, checked against plotly's bundled data read here."""

from __future__ import annotations

import csv
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import plotly.data
import pytest

from engine import book, history
from engine.demo_data import HISTORY_WEEKS, export
from engine.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
TICKERS = ("GOOG", "AAPL", "AMZN", "FB", "NFLX", "MSFT")


@pytest.fixture
def demo_settings() -> Settings:
    return load_settings(ROOT / "configs" / "demo.toml", env={})


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh))


def test_history_and_replay_are_the_bundled_weekly_closes_scaled_to_the_settings_prices(
    tmp_path: Path, demo_settings: Settings
) -> None:
    # Arrange
    source = plotly.data.stocks()
    # Act
    files = export(tmp_path, demo_settings)
    # Assert: tickers, every Monday from 2018-01-01, the replay starts on the history's last week
    hist, replay = _rows(files.history), _rows(files.replay)
    assert hist[0] == replay[0] == ["date", *TICKERS]
    dates = [r[0] for r in hist[1:]] + [r[0] for r in replay[2:]]
    assert len(dates) == len(source) == files.weeks == 105
    assert dates == [str(date(2018, 1, 1) + timedelta(weeks=i)) for i in range(len(source))]
    assert len(hist) - 1 == HISTORY_WEEKS and replay[1] == hist[-1]
    assets = demo_settings.universe.assets
    for row, (_, src) in zip(hist[1:] + replay[2:], source.iterrows(), strict=True):
        for ticker, text in zip(TICKERS, row[1:], strict=True):
            assert float(text) == pytest.approx(src[ticker] * assets[ticker].price, abs=5e-5)


def test_the_exported_history_reads_as_weekly_spacing(tmp_path: Path, demo_settings: Settings) -> None:
    files = export(tmp_path, demo_settings)
    hist = history.read_history(files.history, TICKERS)
    assert hist.spacing.kind is history.SpacingKind.WEEKLY
    assert hist.spacing.model_bars(390, 60.0) == 5 * 390


def test_the_demo_book_is_the_settings_holdings_bought_at_the_first_close(
    tmp_path: Path, demo_settings: Settings
) -> None:
    # Arrange
    files = export(tmp_path, demo_settings)
    # Act
    positions = book.read_book(files.book, TICKERS)
    book.check_book(demo_settings, positions)  # raises BookError on anything the warm-up would refuse
    # Assert: one row per configured holding at the first week's close; one account row per portfolio
    rows = _rows(files.book)[1:]
    held = {(r[0], r[1]): (int(r[2]), Decimal(r[3])) for r in rows if r[1]}
    expected = {
        (p.id, t): (qty, Decimal(str(demo_settings.universe.assets[t].price)))
        for p in demo_settings.portfolios
        for t, qty in p.holdings.items()
    }
    assert held == expected
    assert {(p.id, t) for p in demo_settings.portfolios for t in p.holdings} >= {("main", t) for t in TICKERS}
    accounts = {r[0]: (r[4], r[5]) for r in rows if not r[1]}
    assert accounts == {p.id: (str(p.account_type), str(p.cash)) for p in demo_settings.portfolios}
    assert held[("hedge", "FB")][0] < 0
