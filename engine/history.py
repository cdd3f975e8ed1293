"""Price histories read from CSV: closes, timestamps and the spacing the timestamps prove.

Bar length is a property of the data, never assumed. :func:`read_history` reads a file, checks it strictly and
classifies its spacing; :func:`model_covariance` turns the EWMA covariance of the file's own returns into the
covariance of one *model* bar, which is what the store keeps (``settings.model.bars_per_day`` bars a day).

Formats (column names case-insensitive)::

    wide   date,AAA,BBB,...        one row per bar, one close per ticker
    long   date,ticker,close       one row per ticker and bar (``symbol``/``price`` accepted), rows of one
                                   date together, every ticker present at every date

``date`` is an ISO 8601 date or date-time (naive means UTC) or epoch seconds.

Spacing
-------
The median step ``g`` between consecutive timestamps must lie within :data:`TOLERANCE` (relative) of one of the
nominal spacings: minute (60 s), hourly (3,600 s), daily (86,400 s), weekly (604,800 s). Then every step ``d``
must be a whole multiple ``k`` of the nominal spacing within the same tolerance (``|d/g_nom - k| <= TOLERANCE``),
``k >= 1``; longer steps are gaps (weekends, holidays, overnight) and are allowed up to
:data:`MAX_GAP_BARS` bars for daily and weekly data; for minute and hourly data any step longer than
:data:`SESSION_BREAK_SECONDS` is a session break and need not be a multiple. At least :data:`MIN_REGULAR_SHARE`
of the steps must be exactly one bar (``k = 1``). Anything else (mixed spacing, too irregular, fewer than two
bars) is refused.

Bar length in model bars (:meth:`Spacing.model_bars`; the model bar is ``model.bar_seconds`` of trading time,
``model.bars_per_day`` of them in a day): a minute bar is ``60 / bar_seconds`` model bars, an hour
``3600 / bar_seconds`` (60 one-minute or 12 five-minute bars), a day ``bars_per_day``, a week
:data:`TRADING_DAYS_PER_WEEK` = 5 days (the weekly return spans five trading sessions). An intraday bar is measured
in seconds, never assumed to be a number of one-minute bars: under ``bar_seconds = 300`` an hour taken as 60
model bars made every daily volatility ``sqrt(12 / 60) = 0.447`` of the truth. A return across a weekend or
holiday gap counts as one bar: the market was closed, so no risk accrued beyond the one trading-session step
(the RiskMetrics convention for daily closes).

A file bar *shorter* than the model bar (a minute file under five-minute model bars: 1/5 of a model bar) is
allowed: the variance of a random walk is additive in time, so the one-minute EWMA variance times 5 is the
five-minute variance exactly as an hour's variance over 12 is; bid-ask bounce makes the finest returns slightly
more volatile, which errs towards a larger VaR. Refusing it would leave a five-minute model no intraday history
at all (a five-minute file is no nominal spacing). The EWMA decay applies per file row, as for every spacing.

Enough moving data
------------------
A history seeds the covariance every VaR starts from, so a file that cannot estimate one is refused rather than
turned into a matrix that understates risk:

- at least :data:`MIN_RETURNS` returns (``MIN_RETURNS + 1`` rows). One return gave a rank-1 matrix with every
  correlation +-1: a long/short hedge cancelled and the VaR was 4-5x too small;
- no ticker whose returns are zero more than :data:`MAX_ZERO_RETURN_SHARE` of the time (a stale, forward-filled
  column): its variance seeds near 0, it carries no VaR and the stream's jump filter has no band to judge its
  next print by (a x100 print of a constant column went straight into prices and P&L);
- :func:`model_covariance` refuses a matrix that is not positive definite: a ticker of zero variance, fewer
  returns than tickers (``T`` returns span at most ``T`` dimensions), or a column that is a multiple or a
  combination of others (:data:`MIN_CORRELATION_EIGENVALUE`, tested on the returns' equal-weight correlation: the
  EWMA's ~300-return memory made 300 or more independent tickers look singular).

Errors
------
:class:`HistoryError` (code ``HISTORY_INVALID``), its message ``file:line: reason``.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine import math_logic
from engine.errors import RiskdeskError
from engine.records import Float64Array

if TYPE_CHECKING:
    from engine.sessions import Sessions

TOLERANCE = 0.1
"""Relative tolerance of a step against a whole number of nominal bars (absorbs DST shifts of daily stamps)."""

MIN_REGULAR_SHARE = 0.7
"""Share of the steps that must be exactly one bar (daily closes: weekends make about 20% two-bar steps)."""

MAX_GAP_BARS = 7
"""Longest gap of a daily or weekly file, in nominal bars (a week of holidays), before it is refused."""

SESSION_BREAK_SECONDS = 4 * 3600
"""A step of a minute or hourly file longer than this is a session break (overnight, weekend)."""

TRADING_DAYS_PER_WEEK = 5
"""Trading days in a weekly bar."""

MIN_RETURNS = 30
"""Fewest returns (rows - 1) a history must hold. The EWMA is seeded with the plain second moment of the first 30
returns (``seed_rows`` of :func:`engine.math_logic.ewma_covariance_from_returns`, ``warmup.HISTORY_SEED_ROWS``), and
the RiskMetrics daily decay (``model.ewma_decay``) averages about ``(1 + λ) / (1 - λ) = 32`` effective
observations: with fewer the variances are each known only to worse than ``sqrt(2 / 30)`` = 26 % (one sd) and the
correlations barely at all.
The demo's 40 weekly closes (39 returns, engine/demo_data.py) pass."""

MAX_ZERO_RETURN_SHARE = 0.5
"""Largest share of a ticker's returns that may be exactly zero (the close printed again). A traded share's close
rarely repeats to the cent; a column unchanged on more than half its bars is stale or forward-filled (a holiday
calendar filled from another market, a delisted or halted name), and its EWMA variance measures the filling, not
the market. Minute bars of a low-priced name can repeat that often for real: use hourly or daily closes for it."""

MIN_CORRELATION_EIGENVALUE = 1e-8
"""Smallest eigenvalue of the seeded *correlation* matrix (scale-free, trace N) accepted as positive definite.
A rank-deficient matrix computed in floating point has eigenvalues of order 1e-16 of its largest; real data of
N tickers and at least N returns, even two share classes of one company, stay many orders above 1e-8. It is tested
on the equal-weight correlation of the returns, never on the EWMA matrix (see :func:`_check_positive_definite`)."""

PSD_ROUNDING = 1e-10
"""Most negative eigenvalue of the seeded EWMA correlation (relative to its largest, at least 1) put down to
rounding: ``eigh`` of an ``N x N`` correlation errs by about ``N · 2.2e-16 · λ_max`` (1e-13 at N = 500)."""

_DATE_COLUMNS = ("date", "datetime", "timestamp", "time")
_TICKER_COLUMNS = ("ticker", "symbol")
_PRICE_COLUMNS = ("close", "price")


class HistoryError(RiskdeskError):
    """A history file that cannot be used as it is; the message starts with ``file:line:``."""

    code = "HISTORY_INVALID"
    fix = "correct the file (format in engine/history.py and README.md)"


class SpacingKind(StrEnum):
    MINUTE = "minute"
    HOURLY = "hourly"
    DAILY = "daily"
    WEEKLY = "weekly"


NOMINAL_SECONDS: dict[SpacingKind, int] = {
    SpacingKind.MINUTE: 60,
    SpacingKind.HOURLY: 3600,
    SpacingKind.DAILY: 86_400,
    SpacingKind.WEEKLY: 7 * 86_400,
}
"""Nominal step of each spacing, in calendar seconds."""


@dataclass(frozen=True)
class Spacing:
    kind: SpacingKind
    median_seconds: float
    """Median step between timestamps, as measured."""
    gaps: int
    """Steps longer than one bar (weekends, holidays, session breaks)."""

    def bar_days(self, bars_per_day: int, bar_seconds: float) -> float:
        """Length of one bar of the file in trading days (model of ``bars_per_day`` bars of ``bar_seconds``)."""
        return self.model_bars(bars_per_day, bar_seconds) / bars_per_day

    def model_bars(self, bars_per_day: int, bar_seconds: float) -> float:
        """Length of one bar of the file in model bars of ``bar_seconds`` (``model.bar_seconds``), ``bars_per_day``
        of them in a day: a minute or hourly bar is its nominal seconds over ``bar_seconds`` (1 and 60 for
        one-minute model bars, 0.2 and 12 for five-minute ones), a day ``bars_per_day``, a week five days.

        ``bar_seconds`` has no default: the model's bar is a setting, and a hidden 60 s understated every VaR of
        a five-minute model by 55 %. Raises :class:`ValueError` for a ``bar_seconds`` that is not a positive
        number (settings validation already refuses one)."""
        if not (math.isfinite(bar_seconds) and bar_seconds > 0):
            raise ValueError(f"bar_seconds must be a positive number of seconds, got {bar_seconds!r}")
        if self.kind in (SpacingKind.MINUTE, SpacingKind.HOURLY):
            return NOMINAL_SECONDS[self.kind] / float(bar_seconds)
        if self.kind is SpacingKind.DAILY:
            return float(bars_per_day)
        return float(TRADING_DAYS_PER_WEEK * bars_per_day)


@dataclass(frozen=True)
class History:
    """A checked price history: closes aligned with ``tickers``, oldest row first."""

    path: Path
    tickers: tuple[str, ...]
    timestamps: Float64Array
    """Epoch seconds of each row, strictly increasing."""
    closes: Float64Array
    """Shape (T, N), every value finite and > 0."""
    spacing: Spacing

    def reordered(self, tickers: Sequence[str]) -> History:
        """The same history with its columns in the order of ``tickers`` (a permutation of its own)."""
        index = {t: i for i, t in enumerate(self.tickers)}
        order = [index[t] for t in tickers]
        return History(self.path, tuple(tickers), self.timestamps, self.closes[:, order], self.spacing)

    def log_returns(self) -> Float64Array:
        return np.log(self.closes[1:] / self.closes[:-1])


def read_history(path: str | Path, universe: Iterable[str] | None = None) -> History:
    """Read, check and classify a history file (see the module docstring); raise :class:`HistoryError`.

    With ``universe``, every ticker of the file must be in it (the file's other shape checks are the same).
    """
    path = Path(path)
    rows = _read_rows(path)
    header_line, header = rows[0]
    lower = [h.strip().lower() for h in header]
    date_cols = [i for i, h in enumerate(lower) if h in _DATE_COLUMNS]
    if len(date_cols) != 1:
        raise _error(path, header_line, f"need exactly one date column (one of {list(_DATE_COLUMNS)}), got {header}")
    if any(h in _TICKER_COLUMNS or h in _PRICE_COLUMNS for h in lower):
        tickers, stamps, closes, lines = _read_long(path, rows, lower, date_cols[0])
    else:
        tickers, stamps, closes, lines = _read_wide(path, rows, header, date_cols[0])
    if universe is not None:
        unknown = sorted(set(tickers) - set(universe))
        if unknown:
            raise _error(path, header_line, f"tickers not in the universe: {unknown}; add them to riskdesk.toml first")
    ts = np.asarray(stamps, dtype=float)
    for k in range(1, len(ts)):
        if ts[k] == ts[k - 1]:
            raise _error(path, lines[k], "duplicate timestamp (same as the previous bar)")
        if ts[k] < ts[k - 1]:
            raise _error(path, lines[k], "timestamp goes backwards")
    if len(ts) < 2:
        raise _error(path, lines[-1] if lines else header_line, "fewer than 2 bars: the spacing cannot be determined")
    spacing = classify_spacing(ts, path=path, lines=lines)
    values = np.asarray(closes, dtype=float)
    _check_moving(path, header_line, lines[-1], tickers, values)
    return History(path, tuple(tickers), ts, values, spacing)


def _check_moving(path: Path, header_line: int, last_line: int, tickers: Sequence[str], closes: Float64Array) -> None:
    """Refuse a history too short to estimate a covariance, or with a stale column (module docstring, "Enough
    moving data"): at least :data:`MIN_RETURNS` returns, and no ticker whose returns are zero more than
    :data:`MAX_ZERO_RETURN_SHARE` of the time."""
    returns = len(closes) - 1
    if returns < MIN_RETURNS:
        raise _error(
            path, last_line,
            f"only {returns} return(s) ({returns + 1} rows): at least {MIN_RETURNS} are needed to estimate a "
            f"covariance (one return makes every correlation +-1 and a hedge cancel)",
        )  # fmt: skip
    zeros = np.count_nonzero(closes[1:] == closes[:-1], axis=0)
    stale = [(t, int(z)) for t, z in zip(tickers, zeros.tolist(), strict=True) if z > MAX_ZERO_RETURN_SHARE * returns]
    if stale:
        listed = ", ".join(f"{t} ({z} of {returns} returns are zero)" for t, z in stale)
        raise _error(
            path, header_line,
            f"stale price column(s): {listed}; more than {MAX_ZERO_RETURN_SHARE:.0%} unchanged closes is a "
            f"forward-filled or halted series with no volatility to seed (drop the rows or supply real closes)",
        )  # fmt: skip


def classify_spacing(timestamps: Float64Array, *, path: Path | str = "<data>", lines: Sequence[int] = ()) -> Spacing:
    """The spacing of strictly increasing ``timestamps`` (rules in the module docstring)."""
    steps = np.diff(np.asarray(timestamps, dtype=float))
    where = lines[-1] if lines else 0
    if steps.size == 0:
        raise _error(path, where, "fewer than 2 bars: the spacing cannot be determined")
    median = float(statistics.median(steps.tolist()))
    kind = next((k for k, s in NOMINAL_SECONDS.items() if abs(median / s - 1) <= TOLERANCE), None)
    if kind is None:
        raise _error(
            path, where, f"median step of {median:g} s is not minute, hourly, daily or weekly (±{TOLERANCE:.0%})"
        )
    nominal = NOMINAL_SECONDS[kind]
    intraday = kind in (SpacingKind.MINUTE, SpacingKind.HOURLY)
    regular = 0
    for i, step in enumerate(steps.tolist()):
        ratio = step / nominal
        k = round(ratio)
        line = lines[i + 1] if len(lines) > i + 1 else 0
        if intraday and step > SESSION_BREAK_SECONDS:
            continue
        if k < 1 or abs(ratio - k) > TOLERANCE:
            raise _error(path, line, f"step of {step:g} s is not a whole number of {kind} bars: mixed spacing")
        if not intraday and k > MAX_GAP_BARS:
            raise _error(path, line, f"gap of {k} {kind} bars (more than {MAX_GAP_BARS}): too irregular")
        regular += k == 1
    if regular < MIN_REGULAR_SHARE * steps.size:
        raise _error(
            path, where,
            f"only {regular} of {steps.size} steps are one {kind} bar (need {MIN_REGULAR_SHARE:.0%}): too irregular",
        )  # fmt: skip
    return Spacing(kind, median, int(steps.size - regular))


def night_spans(
    history: History, opens: Float64Array | None, night_share: float, bars_per_day: int, bar_seconds: float
) -> Float64Array | None:
    """Bars of the model's variance each of the history's returns spans, with the nights between its rows
    (:func:`engine.math_logic.session_spans`, in the file's own bars), or None when no return is rescaled: no
    share, no calendar (``opens`` None: a ``24/7`` market) or a file whose bar is a session or longer (a daily or
    weekly close-to-close bar already spans its nights).

    ``opens``: the calendar's session opens (epoch seconds, ascending). A row's nights are the opens between its
    timestamp and the one before (the timestamps are the file's: UTC where the file gives no zone); a row before
    the calendar's first open counts none. As in the stream daemon, so a warm-up from a minute file seeds the
    matrix the stream would have built from the same bars.
    """
    scale = history.spacing.model_bars(bars_per_day, bar_seconds)
    if night_share == 0.0 or opens is None or opens.size == 0 or scale >= bars_per_day:
        return None
    ts = history.timestamps
    at = np.searchsorted(opens, ts, side="right") - 1  # the session each row belongs to (-1: before the first)
    nights = np.maximum(np.diff(at), 0).astype(np.float64)
    nights[at[:-1] < 0] = 0.0
    return math_logic.session_spans(np.ones(nights.size), nights, night_share, bars_per_day, scale)


def printed_at(history: History, sessions: Sessions | None) -> float:
    """When the history's last prices were printed (epoch seconds): the stored market's price time after a
    warm-up from it, from which the stream counts the nights its first bar spans (README "Nights").

    A minute or hourly row is stamped with its own time. A daily or weekly row carries a date (midnight UTC of
    it, where the file gives no time): its price is the close of that date's session, or of the last one before it
    (a row dated on a holiday repeats that close: :meth:`Sessions.close_on`, as a replay stamps it,
    engine/clocks.py ``stamp_daily_closes``). The row's time as it is without a calendar (``sessions`` None) or
    for a date outside it."""
    last = float(history.timestamps[-1])
    if history.spacing.kind in (SpacingKind.MINUTE, SpacingKind.HOURLY) or sessions is None:
        return last
    close = sessions.close_on(datetime.fromtimestamp(last, UTC).date().isoformat())
    return last if close is None else close


def model_returns(history: History, spans: Float64Array | None = None) -> Float64Array:
    """The history's log returns, each divided by the square root of the bars of variance it spans
    (:func:`night_spans`; None: as they are): what the EWMA matrix and the standardized window are built from."""
    returns = history.log_returns()
    return returns if spans is None else returns / np.sqrt(spans)[:, np.newaxis]


def model_covariance(
    history: History,
    decay: float,
    bars_per_day: int,
    bar_seconds: float,
    *,
    spans: Float64Array | None = None,
) -> Float64Array:
    """EWMA covariance of the history's own log returns, expressed per model bar (``bars_per_day`` bars of
    ``bar_seconds`` a day: ``settings.model``).

    Notes
    -----
    With ``C_b`` the EWMA covariance (:func:`engine.math_logic.ewma_covariance_from_returns`) of returns whose
    bar is ``b`` trading days, the store keeps ``C_b / (b · bars_per_day)``: a one-day VaR then scales it back
    by ``bars_per_day`` and gives ``z · sqrt(wᵀ C_b w / b)``, exactly the EWMA answer of daily returns for a
    daily file (``b = 1``). A file whose bar is the model bar (``b · bars_per_day = 1``: a minute file under
    one-minute model bars) is stored unscaled. ``spans`` (:func:`night_spans`): each return is first divided by
    the square root of the bars of variance it spans, as the stream daemon divides a return across a night.

    Raises :class:`HistoryError` unless the file can estimate a positive definite matrix (module docstring,
    "Enough moving data"): a ticker of zero variance, fewer returns than tickers, or a smallest eigenvalue of the
    returns' equal-weight correlation below :data:`MIN_CORRELATION_EIGENVALUE`; a singular matrix hedges a
    long/short book to nothing. The EWMA matrix itself must only be finite with a positive diagonal and positive
    semi-definite to rounding (:func:`_check_positive_definite`).
    """
    returns = model_returns(history, spans)
    cov = math_logic.ewma_covariance_from_returns(returns, decay=decay)
    _check_positive_definite(history, returns, cov)
    scale = history.spacing.model_bars(bars_per_day, bar_seconds)
    return cov if scale == 1.0 else cov / scale


def _check_positive_definite(history: History, returns: Float64Array, cov: Float64Array) -> None:
    """Refuse a history whose returns cannot estimate a positive definite matrix, naming the cause.

    The rank test runs on the *equal-weight* zero-mean correlation ``R = D^-1/2 (Xᵀ X / T) D^-1/2`` of the ``T``
    returns ``X``, not on the EWMA matrix: under the RiskMetrics decay (``model.ewma_decay``) only the last ~300
    returns carry weight (``λ^300 ≈ 2e-8``), so the EWMA correlation of 300 or more perfectly independent tickers
    has eigenvalues down to 1e-9 .. 1e-14, and testing it refused every healthy universe of that size (500 tickers x
    2000 daily returns) as "singular". A copied or combined column makes ``Xᵀ X`` itself singular, which the
    equal-weight correlation shows at rounding level (~1e-16) whatever ``N``; an independent universe with ``T >=
    N`` keeps it far above the floor. The zero mean matches the EWMA's (RiskMetrics) so ``T >= N`` is exactly the
    rank bound: a demeaned correlation would lose one more dimension.

    The EWMA matrix is a positive combination of outer products, positive semi-definite by construction; it is
    only checked finite with a positive diagonal (a ticker silent over the EWMA's memory has nothing to scale
    its VaR by) and with no eigenvalue of its correlation below ``-PSD_ROUNDING · max(1, λ_max)``.
    """
    n = len(history.tickers)
    variances = np.einsum("ti,ti->i", returns, returns) / max(len(returns), 1)
    flat = [t for t, v in zip(history.tickers, variances.tolist(), strict=True) if not (math.isfinite(v) and v > 0)]
    if flat:
        raise _error(history.path, 1, f"zero variance for {flat}: their closes never move, no risk can be estimated")
    if len(returns) < n:
        raise _error(
            history.path, 1,
            f"{len(returns)} returns for {n} tickers: the covariance has rank at most {len(returns)} < {n} (not "
            f"positive definite; some combination of the tickers would show no risk): supply at least {n} returns",
        )  # fmt: skip
    if n == 0:
        return
    sd = np.sqrt(variances)
    corr = (returns.T @ returns) / len(returns) / np.multiply.outer(sd, sd)
    values, vectors = np.linalg.eigh((corr + corr.T) / 2.0)
    lowest = float(values[0])
    if not lowest >= MIN_CORRELATION_EIGENVALUE:
        # the eigenvector of the smallest eigenvalue is the combination that shows no risk: name its largest weights
        weights = np.abs(vectors[:, 0])
        involved = [history.tickers[i] for i in np.argsort(-weights)[:3].tolist() if weights[i] > 0.1]
        raise _error(
            history.path, 1,
            f"the returns are singular (smallest correlation eigenvalue {lowest:.3g} < "
            f"{MIN_CORRELATION_EIGENVALUE:g}): a column is a copy or a combination of others, mostly {involved}",
        )  # fmt: skip
    _check_ewma(history, cov)


def _check_ewma(history: History, cov: Float64Array) -> None:
    """Refuse an EWMA matrix that is not finite, has a variance that is not positive, or is not positive
    semi-definite to rounding (see :func:`_check_positive_definite`)."""
    variances = np.diagonal(cov)
    silent = [t for t, v in zip(history.tickers, variances.tolist(), strict=True) if not (math.isfinite(v) and v > 0)]
    if silent or not np.isfinite(cov).all():
        raise _error(
            history.path, 1,
            f"the EWMA covariance is not finite or has a zero variance for {silent}: no risk can be estimated",
        )  # fmt: skip
    sd = np.sqrt(variances)
    corr = cov / np.multiply.outer(sd, sd)
    values = np.linalg.eigvalsh((corr + corr.T) / 2.0)
    if not float(values[0]) >= -PSD_ROUNDING * max(1.0, float(values[-1])):
        raise _error(
            history.path, 1,
            f"the EWMA covariance is not positive semi-definite (smallest correlation eigenvalue {values[0]:.3g})",
        )  # fmt: skip


# -- parsing ---------------------------------------------------------------------------------------------------


def _error(path: Path | str, line: int, message: str) -> HistoryError:
    return HistoryError(f"{path}:{line}: {message}")


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = [(i, row) for i, row in enumerate(csv.reader(fh), start=1) if any(c.strip() for c in row)]
    except FileNotFoundError:
        raise HistoryError(f"{path}:0: history file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise HistoryError(f"{path}:0: cannot read the file ({exc})") from None
    if not rows:
        raise _error(path, 1, "the file is empty")
    return rows


def _parse_date(path: Path, line: int, text: str) -> float:
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise _error(path, line, f"date {text!r} is neither ISO 8601 nor epoch seconds") from None
        return (dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(value):
        raise _error(path, line, f"date {text!r} is not finite")
    return value


def _parse_close(path: Path, line: int, ticker: str, text: str) -> float:
    try:
        price = float(text)
    except ValueError:
        raise _error(path, line, f"{ticker} price {text.strip()!r} is not a number") from None
    if not math.isfinite(price) or price <= 0:
        raise _error(path, line, f"{ticker} price {text.strip()!r} must be positive and finite")
    return price


def _read_wide(
    path: Path, rows: list[tuple[int, list[str]]], header: list[str], date_col: int
) -> tuple[list[str], list[float], list[list[float]], list[int]]:
    header_line = rows[0][0]
    tickers = [h.strip() for i, h in enumerate(header) if i != date_col]
    if not tickers or any(not t for t in tickers):
        raise _error(path, header_line, f"wide format needs date then one named column per ticker, got {header}")
    if len(set(tickers)) != len(tickers):
        raise _error(path, header_line, f"duplicate ticker columns in {tickers}")
    stamps: list[float] = []
    closes: list[list[float]] = []
    lines: list[int] = []
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise _error(path, line, f"expected {len(header)} fields, found {len(row)}")
        stamps.append(_parse_date(path, line, row[date_col]))
        cells = [c for i, c in enumerate(row) if i != date_col]
        closes.append([_parse_close(path, line, t, c) for t, c in zip(tickers, cells, strict=True)])
        lines.append(line)
    return tickers, stamps, closes, lines


def _read_long(
    path: Path, rows: list[tuple[int, list[str]]], lower: list[str], date_col: int
) -> tuple[list[str], list[float], list[list[float]], list[int]]:
    header_line = rows[0][0]
    ticker_cols = [i for i, h in enumerate(lower) if h in _TICKER_COLUMNS]
    price_cols = [i for i, h in enumerate(lower) if h in _PRICE_COLUMNS]
    if len(lower) != 3 or len(ticker_cols) != 1 or len(price_cols) != 1:
        raise _error(path, header_line, f"long format needs exactly date,ticker,close columns, got {lower}")
    tc, pc = ticker_cols[0], price_cols[0]
    groups: list[tuple[float, int, dict[str, float]]] = []
    seen: set[float] = set()  # every date so far: a repeat after other dates is refused in O(1), not O(dates)
    for line, row in rows[1:]:
        if len(row) != 3:
            raise _error(path, line, f"expected 3 fields, found {len(row)}")
        ts = _parse_date(path, line, row[date_col])
        ticker = row[tc].strip()
        if not groups or ts != groups[-1][0]:
            if ts in seen:
                raise _error(path, line, "duplicate timestamp (rows of one date must be together)")
            seen.add(ts)
            groups.append((ts, line, {}))
        prices = groups[-1][2]
        if ticker in prices:
            raise _error(path, line, f"duplicate timestamp for {ticker}")
        prices[ticker] = _parse_close(path, line, ticker, row[pc])
    if not groups:
        raise _error(path, header_line, "a header but no rows of prices")
    tickers = list(groups[0][2])
    for _ts, line, prices in groups:
        if set(prices) != set(tickers):
            raise _error(path, line, f"date has tickers {sorted(prices)}, the first date has {sorted(tickers)}")
    return (
        tickers,
        [g[0] for g in groups],
        [[g[2][t] for t in tickers] for g in groups],
        [g[1] for g in groups],
    )
