"""The command line of the VaR backtest: ``python -m logic.backtest`` (see :func:`main`).

Reads a history of closes and a book, feeds every bar through :func:`logic.backtest.run_backtest` (the code path the
monitor uses) and prints, per method, observations, exceedances, rate, Kupiec LR and p-value, Christoffersen p-value
and Basel zone (``-`` while the rolling window holds fewer than ``--zone-min-observations``, with a line saying so);
``--out`` writes the per-bar series. ``--horizon-bars`` counts the file's rows. Bad input: exit status 2 and
``file:line: reason`` on stderr. A row at which the book holds nothing (a ``--book`` of zeros, ``--weights`` of 0)
is no observation, as in the runner: ``obs`` counts the forecasts of a book holding something, a ``flat:`` line
under the table the rows left out.

Input files (CSV, UTF-8, blank lines ignored)
---------------------------------------------
- history, wide: ``date,T1,T2,...`` then one row of closes per date; or long: ``date,ticker,close``. Dates are
  compared as text (ISO ``YYYY-MM-DD`` sorts correctly) and must increase; every close is > 0; a long file must
  give every ticker on every date.
- ``--book``: ``ticker,qty`` (units held throughout) or the store's ``portfolio_id,ticker,qty,avg_price`` of one
  portfolio. ``--weights``: ``ticker,weight``, fractions of ``--value`` held constant (rebalanced every bar).
  Without either: one unit of every ticker. Tickers of the history not listed hold nothing.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.records import Float64Array, VarMethod
from logic.backtest import BacktestConfig, MethodSummary, Observation, Track, run_backtest

EXIT_BAD_INPUT = 2
"""Exit status of the CLI on bad input (``file:line: reason`` on stderr)."""


class InputError(Exception):
    """A bad input file: ``file:line: reason``."""

    def __init__(self, path: Path | str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    """Non-empty CSV rows with their 1-based line numbers (header included)."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = [(n, [c.strip() for c in row]) for n, row in enumerate(csv.reader(fh), start=1)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, 0, f"cannot read: {exc}") from None
    return [(n, row) for n, row in rows if any(row)]


def _number(path: Path, line: int, text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(path, line, f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(path, line, f"{what} {text!r} is not finite")
    return value


@dataclass(frozen=True)
class History:
    """Closes of a fixed set of tickers, one row per date, oldest first."""

    tickers: tuple[str, ...]
    dates: tuple[str, ...]
    closes: Float64Array
    """Shape (dates, tickers)."""


def read_history(path: Path) -> History:
    """A wide CSV (``date,T1,T2,...``, one row per date) or a long one (``date,ticker,close``)."""
    rows = _rows(path)
    if not rows:
        raise InputError(path, 1, "empty file: expected a header date,TICKER,... or date,ticker,close")
    line, header = rows[0]
    if [h.lower() for h in header] == ["date", "ticker", "close"]:
        return _read_long(path, rows[1:])
    tickers = tuple(header[1:])
    if not tickers or any(not t for t in tickers) or len(set(tickers)) != len(tickers):
        raise InputError(path, line, "header must be a date column then distinct, non-empty ticker names")
    dates: list[str] = []
    closes: list[list[float]] = []
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise InputError(path, line, f"{len(row)} fields, expected {len(header)}")
        values = [_number(path, line, c, f"close of {t}") for t, c in zip(tickers, row[1:], strict=True)]
        _check_row(path, line, row[0], values, dates)
        dates.append(row[0])
        closes.append(values)
    return History(tickers, tuple(dates), np.array(closes, dtype=np.float64).reshape(-1, len(tickers)))


def _check_row(path: Path, line: int, date: str, values: list[float], dates: list[str]) -> None:
    if not date:
        raise InputError(path, line, "missing date")
    if dates and date <= dates[-1]:
        raise InputError(path, line, f"date {date!r} is not after {dates[-1]!r}: dates must increase")
    if any(v <= 0.0 for v in values):
        raise InputError(path, line, "closes must be > 0")


def _read_long(path: Path, rows: list[tuple[int, list[str]]]) -> History:
    by_date: dict[str, dict[str, float]] = {}
    first_line: dict[str, int] = {}
    tickers: list[str] = []
    for line, row in rows:
        if len(row) != 3 or not row[0] or not row[1]:
            raise InputError(path, line, "expected date,ticker,close")
        date, ticker, text = row
        value = _number(path, line, text, f"close of {ticker}")
        if value <= 0.0:
            raise InputError(path, line, "closes must be > 0")
        day = by_date.setdefault(date, {})
        first_line.setdefault(date, line)
        if ticker in day:
            raise InputError(path, line, f"second close for {ticker} on {date}")
        day[ticker] = value
        if ticker not in tickers:
            tickers.append(ticker)
    dates = sorted(by_date)
    for date in dates:
        missing = [t for t in tickers if t not in by_date[date]]
        if missing:
            raise InputError(path, first_line[date], f"{date} has no close for {', '.join(missing)}")
    closes = np.array([[by_date[d][t] for t in tickers] for d in dates], dtype=np.float64)
    return History(tuple(tickers), tuple(dates), closes.reshape(-1, len(tickers)))


def read_positions(path: Path, tickers: Sequence[str], column: str) -> Float64Array:
    """``ticker,<column>`` rows (``column`` = weight or qty), or ``portfolio_id,ticker,qty,avg_price`` (one
    portfolio) for a book. Tickers of the history that are not listed get 0."""
    rows = _rows(path)
    if not rows:
        raise InputError(path, 1, f"empty file: expected a header ticker,{column}")
    line, header = rows[0]
    names = [h.lower() for h in header]
    if names == ["ticker", column]:
        ticker_at, value_at = 0, 1
    elif column == "qty" and names == ["portfolio_id", "ticker", "qty", "avg_price"]:
        ticker_at, value_at = 1, 2
    else:
        raise InputError(path, line, f"header must be ticker,{column}" + (
            " or portfolio_id,ticker,qty,avg_price" if column == "qty" else ""
        ))  # fmt: skip
    out = np.zeros(len(tickers))
    index = {t: i for i, t in enumerate(tickers)}
    seen: set[str] = set()
    portfolio: str | None = None
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise InputError(path, line, f"{len(row)} fields, expected {len(header)}")
        if ticker_at == 1:
            if portfolio is not None and row[0] != portfolio:
                raise InputError(path, line, f"a second portfolio {row[0]!r}: give the book of one portfolio")
            portfolio = row[0]
        ticker = row[ticker_at]
        if ticker not in index:
            raise InputError(path, line, f"ticker {ticker!r} is not in the history")
        if ticker in seen:
            raise InputError(path, line, f"ticker {ticker!r} listed twice")
        seen.add(ticker)
        out[index[ticker]] = _number(path, line, row[value_at], column)
    return out


def _methods(text: str) -> tuple[VarMethod, ...]:
    try:
        return tuple(VarMethod(m.strip()) for m in text.split(",") if m.strip())
    except ValueError:
        raise ValueError(f"--method: unknown method in {text!r}; choose from {', '.join(VarMethod)}") from None


def _parser() -> argparse.ArgumentParser:
    cfg = BacktestConfig()
    p = argparse.ArgumentParser(
        prog="python -m logic.backtest",
        description="Walk-forward VaR backtest of each method on the same hypothetical P&L.",
    )
    p.add_argument("--history", required=True, type=Path, help="closes: date,T1,T2,... or date,ticker,close")
    book = p.add_mutually_exclusive_group()
    book.add_argument("--weights", type=Path, help="ticker,weight: constant weights of --value, rebalanced every bar")
    book.add_argument("--book", type=Path, help="ticker,qty (or portfolio_id,ticker,qty,avg_price): fixed units")
    p.add_argument("--value", type=float, default=1_000_000.0, help="portfolio value for --weights (%(default)s)")
    p.add_argument("--method", default=",".join(cfg.methods), help="comma-separated methods (%(default)s)")
    p.add_argument("--confidence", type=float, default=cfg.confidence, help="VaR confidence (%(default)s)")
    p.add_argument("--window", type=int, default=cfg.window, help="standardized returns kept (%(default)s)")
    p.add_argument("--decay", type=float, default=cfg.decay, help="EWMA lambda (%(default)s)")
    p.add_argument("--horizon-bars", type=int, default=cfg.horizon_bars,
                   help="the limit's horizon, in the file's rows (%(default)s)")  # fmt: skip
    p.add_argument("--zone-min-observations", type=int, default=cfg.zone_minimum,
                   help="rolling observations before a Basel zone is given (%(default)s)")  # fmt: skip
    p.add_argument("--seed-rows", type=int, default=cfg.seed_rows, help="returns seeding the EWMA (%(default)s)")
    p.add_argument("--out", type=Path, help="write the per-bar series to this CSV")
    return p


def _format_summary(track: Track, summaries: Mapping[VarMethod, MethodSummary], config: BacktestConfig) -> str:
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        f"{track} track, {config.confidence:.2%} VaR",
        f"{'method':<10} {'obs':>6} {'exceed':>6} {'rate':>7} {'kupiec_lr':>10} {'kupiec_p':>9} "
        f"{'christ_p':>9} {'zone':>6}",
    ]
    for m, s in summaries.items():
        lines.append(
            f"{m!s:<10} {s.observations:>6} {s.exceedances:>6} {fmt(s.rate, '.3%'):>7} "
            f"{fmt(s.kupiec_lr, '.3f'):>10} {fmt(s.kupiec_p, '.4f'):>9} {fmt(s.christoffersen_p, '.4f'):>9} "
            f"{s.zone or '-':>6}"
        )
    flat = max(s.flat_bars for s in summaries.values())
    if flat:
        lines.append(f"flat: {flat} bar(s) at which the book held nothing: not observations (obs counts the others)")
    if any(s.zone is None for s in summaries.values()):
        n = max(s.rolling_observations for s in summaries.values())
        lines.append(f"zone: none before {config.zone_minimum} observations ({n} so far)")
    return "\n".join(lines)


def write_series(path: Path, methods: Sequence[VarMethod], series: Sequence[Observation]) -> None:
    """One row per closed horizon: track, start, end, pnl, then var_<method> and hit_<method>."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["track", "start", "end", "pnl", *(f"var_{m}" for m in methods), *(f"hit_{m}" for m in methods)])
        for o in series:
            w.writerow(
                [o.track, o.start, o.end, repr(o.pnl), *(repr(o.var[m]) for m in methods),
                 *(int(o.hit[m]) for m in methods)]
            )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; returns the exit status (0, or 2 on bad input)."""
    args = _parser().parse_args(argv)
    try:
        config = BacktestConfig(
            methods=_methods(args.method),
            confidence=args.confidence,
            window=args.window,
            decay=args.decay,
            horizon_bars=args.horizon_bars,
            zone_min_observations=args.zone_min_observations,
            seed_rows=args.seed_rows,
            max_records=0,
        )
        if not (math.isfinite(args.value) and args.value > 0):
            raise ValueError(f"--value must be > 0, got {args.value}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        history = read_history(args.history)
        needed = config.seed_rows + config.window + 2
        if history.closes.shape[0] < needed:
            raise InputError(
                args.history, len(history.dates) + 1,
                f"{len(history.dates)} dates: need at least {needed} (seed_rows + window + 2) for one forecast",
            )  # fmt: skip
        n = len(history.tickers)
        if args.weights is not None:
            weights = read_positions(args.weights, history.tickers, "weight")
            qty = weights * args.value / history.closes  # constant weights: rebalanced every bar
        else:
            units = np.ones(n) if args.book is None else read_positions(args.book, history.tickers, "qty")
            qty = np.broadcast_to(units, history.closes.shape)
    except InputError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    bars = zip(history.dates, history.closes, qty, strict=True)
    bt, series = run_backtest(history.tickers, bars, config)
    tracks = [Track.BAR] if config.horizon_bars == 1 else list(Track)
    print(f"{args.history}: {n} tickers, {len(history.dates)} dates {history.dates[0]}..{history.dates[-1]}, "
          f"window {config.window}, lambda {config.decay}, seed {config.seed_rows} returns")  # fmt: skip
    for track in tracks:
        print(_format_summary(track, bt.summary(track), config))
    if args.out is not None:
        write_series(args.out, config.methods, [o for o in series if o.track in tracks])
    return 0
