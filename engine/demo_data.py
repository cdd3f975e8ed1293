"""The real-data demo's files (``make demo``): weekly closes shipped with plotly, written as Riskdesk CSVs.

Source: ``plotly.data.stocks()``, weekly closes (Mondays) of six large US shares (configs/demo.toml) from
2018-01-01 to 2019-12-30, 105 rows, each series normalised to 1.0 on the first row. The returns are real; the
level is not in the data, so every series is multiplied by the ticker's ``price`` in the demo settings
(configs/demo.toml: the approximate close of the week of 2018-01-01 as the shares traded then, before later
splits). A multiplier changes no return, hence no covariance, VaR in percent or drawdown.

:func:`export` writes three files into a directory:

``history.csv``
    the first :data:`HISTORY_WEEKS` weeks (wide: ``date,GOOG,...``), for ``warmup.py --history``: the
    covariance is the EWMA of these weekly returns scaled to one model bar (engine/history.py reads the weekly
    spacing from the dates);
``replay.csv``
    the remaining weeks, starting with the history's last week (so the replay's first, anchoring bar is the
    market the warm-up left), for ``python -m engine.stream --feed replay --file replay.csv``;
``book.csv``
    the demo book (engine/book.py format): the settings' ``[[portfolios]]`` holdings, bought on the first week
    of 2018 (their cost basis), so the unrealized P&L is the real move from the first snapshot on, with each
    portfolio's account type and cash.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ConfigError
from engine.settings import Settings

HISTORY_WEEKS = 40
"""Weeks of 2018 the warm-up estimates the covariance from; the replay plays the rest (Oct 2018 - Dec 2019)."""


@dataclass(frozen=True)
class DemoFiles:
    history: Path
    replay: Path
    book: Path
    weeks: int
    """Rows of the source data (history + replay - 1 shared week)."""


def weekly_closes(settings: Settings) -> tuple[tuple[str, ...], list[str], list[list[float]]]:
    """Tickers, dates (ISO) and closes in dollars of the bundled weekly data, each series scaled from 1.0 to the
    ticker's ``price`` in ``settings`` (configs/demo.toml holds the January 2018 levels)."""
    import plotly.data  # noqa: PLC0415 - only the demo needs it (a dependency of the dashboard)

    frame = plotly.data.stocks()
    tickers = tuple(str(c) for c in frame.columns[1:])
    assets = settings.universe.assets
    if set(tickers) != set(assets):
        raise ConfigError(f"the demo data has tickers {list(tickers)}; the settings' universe is {list(assets)}")
    dates = [str(d) for d in frame["date"]]
    closes = [[round(float(row[t]) * assets[t].price, 4) for t in tickers] for _, row in frame.iterrows()]
    return tickers, dates, closes


def export(out_dir: str | Path, settings: Settings) -> DemoFiles:
    """Write ``history.csv``, ``replay.csv`` and ``book.csv`` into ``out_dir`` (created; files replaced)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tickers, dates, closes = weekly_closes(settings)
    files = DemoFiles(out / "history.csv", out / "replay.csv", out / "book.csv", len(dates))
    _write_wide(files.history, tickers, dates[:HISTORY_WEEKS], closes[:HISTORY_WEEKS])
    _write_wide(files.replay, tickers, dates[HISTORY_WEEKS - 1 :], closes[HISTORY_WEEKS - 1 :])
    first = dict(zip(tickers, closes[0], strict=True))
    with files.book.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["portfolio_id", "ticker", "qty", "avg_price", "account_type", "cash"])
        for portfolio in settings.portfolios:
            for ticker, qty in portfolio.holdings.items():
                w.writerow([portfolio.id, ticker, qty, f"{first[ticker]:.4f}", "", ""])
        for portfolio in settings.portfolios:
            w.writerow([portfolio.id, "", "", "", str(portfolio.account_type), str(portfolio.cash)])
    return files


def _write_wide(path: Path, tickers: tuple[str, ...], dates: list[str], closes: list[list[float]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["date", *tickers])
        for date, row in zip(dates, closes, strict=True):
            w.writerow([date, *(f"{p:.4f}" for p in row)])
