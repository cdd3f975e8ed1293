"""The real-data demo's files (``make demo``): weekly closes shipped with plotly, written as Riskdesk CSVs.

Source: ``plotly.data.stocks()``, weekly closes (Mondays) of GOOG, AAPL, AMZN, FB, NFLX and MSFT from
2018-01-01 to 2019-12-30, 105 rows, each series normalised to 1.0 on the first row. The returns are real; the
level is not in the data, so every series is multiplied by :data:`START_PRICES`, the approximate close of the
week of 2018-01-01 as the shares traded then (before the later AAPL, AMZN and GOOG splits). A
multiplier changes no return, hence no covariance, VaR in percent or drawdown.

:func:`export` writes three files into a directory:

``history.csv``
    the first :data:`HISTORY_WEEKS` weeks (wide: ``date,GOOG,...``), for ``warmup.py --history``: the
    covariance is the EWMA of these weekly returns scaled to one model bar (engine/history.py reads the weekly
    spacing from the dates);
``replay.csv``
    the remaining weeks, starting with the history's last week (so the replay's first, anchoring bar is the
    market the warm-up left), for ``python -m engine.stream --feed replay --file replay.csv``;
``book.csv``
    the demo book (engine/book.py format) bought on the first week of 2018 (its cost basis), so the unrealized
    P&L is the real 2018 move from the first snapshot on: ``main`` (cash account) about $150,000 of each
    share, ``hedge`` (margin account) long AAPL and MSFT, short FB and NFLX.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

TICKERS = ("GOOG", "AAPL", "AMZN", "FB", "NFLX", "MSFT")
"""The columns of ``plotly.data.stocks()``: the demo universe (configs/demo.toml)."""
START_PRICES = {"GOOG": 1065.0, "AAPL": 172.0, "AMZN": 1190.0, "FB": 181.0, "NFLX": 201.0, "MSFT": 86.0}
"""Approximate closes of the week of 2018-01-01, dollars: the level the normalised series are scaled to."""
HISTORY_WEEKS = 40
"""Weeks of 2018 the warm-up estimates the covariance from; the replay plays the rest (Oct 2018 - Dec 2019)."""
MAIN_NOTIONAL = 150_000
"""Dollars of each share in the ``main`` demo portfolio at cost."""
HEDGE_BOOK = {"AAPL": 100_000, "MSFT": 100_000, "FB": -60_000, "NFLX": -60_000}
"""Dollars at cost per share in the ``hedge`` demo portfolio (negative: short)."""
CASH = {"main": "1000000.00", "hedge": "500000.00"}
ACCOUNT_TYPES = {"main": "cash", "hedge": "margin"}


@dataclass(frozen=True)
class DemoFiles:
    history: Path
    replay: Path
    book: Path
    weeks: int
    """Rows of the source data (history + replay - 1 shared week)."""


def weekly_closes() -> tuple[list[str], list[list[float]]]:
    """Dates (ISO) and closes in dollars (rows of :data:`TICKERS`) of the bundled weekly data."""
    import plotly.data  # noqa: PLC0415 - only the demo needs it (a dependency of the dashboard)

    frame = plotly.data.stocks()
    if tuple(frame.columns[1:]) != TICKERS:
        raise ValueError(f"plotly.data.stocks() has columns {list(frame.columns)}, expected date + {TICKERS}")
    dates = [str(d) for d in frame["date"]]
    closes = [[round(float(row[t]) * START_PRICES[t], 4) for t in TICKERS] for _, row in frame.iterrows()]
    return dates, closes


def export(out_dir: str | Path) -> DemoFiles:
    """Write ``history.csv``, ``replay.csv`` and ``book.csv`` into ``out_dir`` (created; files replaced)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dates, closes = weekly_closes()
    files = DemoFiles(out / "history.csv", out / "replay.csv", out / "book.csv", len(dates))
    _write_wide(files.history, dates[:HISTORY_WEEKS], closes[:HISTORY_WEEKS])
    _write_wide(files.replay, dates[HISTORY_WEEKS - 1 :], closes[HISTORY_WEEKS - 1 :])
    first = dict(zip(TICKERS, closes[0], strict=True))
    with files.book.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["portfolio_id", "ticker", "qty", "avg_price", "account_type", "cash"])
        for ticker in TICKERS:
            w.writerow(["main", ticker, int(MAIN_NOTIONAL // first[ticker]), f"{first[ticker]:.4f}", "", ""])
        for ticker, dollars in HEDGE_BOOK.items():
            qty = int(abs(dollars) // first[ticker]) * (1 if dollars > 0 else -1)
            w.writerow(["hedge", ticker, qty, f"{first[ticker]:.4f}", "", ""])
        for pid, cash in CASH.items():
            w.writerow([pid, "", "", "", ACCOUNT_TYPES[pid], cash])
    return files


def _write_wide(path: Path, dates: list[str], closes: list[list[float]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["date", *TICKERS])
        for date, row in zip(dates, closes, strict=True):
            w.writerow([date, *(f"{p:.4f}" for p in row)])
