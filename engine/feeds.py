"""Market-data feeds: where the stream daemon's bars come from.

A feed is any iterable of :class:`Bar` (a timestamp and a price per ticker). The daemon
(:mod:`engine.stream`) pulls one bar, validates it, updates the covariance, writes it, and only then pulls the
next: a feed may block (a socket read) and need not buffer. Three feeds ship:

- :class:`SimulatedFeed`: correlated geometric Brownian motion from the settings' volatilities and
  correlation, seedable, with scheduled shocks (``AAA:-0.08@100``: AAA drops 8% at the 100th bar) and
  volatility regime changes (``2.0@150``: every volatility doubles from the 150th bar), to exercise alerts
  and circuit breakers on demand;
- :class:`ReplayFeed`: plays a CSV file of bars (wide or long, see its docstring for the validation rules);
- :class:`IterableFeed`: wraps any iterable of bars (tests, scripts).

Adding a broker or exchange feed
--------------------------------
Write a class with a ``name`` attribute and an ``__iter__`` that yields :class:`Bar` objects, one per model
bar (one minute: aggregate trades or quotes into a last price per bar yourself), e.g. a websocket client that
buffers ticks and yields ``Bar(ts=bar_close_epoch, prices={"XYZ": 190.12, ...})`` at each minute close. A
ticker missing from a bar keeps its last price (its return for that bar is zero). Yield every ticker symbol
exactly as it is in the store (``riskdesk.toml`` / ``warmup.py --add-ticker``): the daemon rejects and counts
unknown tickers and NaN, infinite or non-positive prices rather than writing them, but do not rely on it for
what your feed can check itself. Raise :class:`~engine.errors.FeedError` for a fatal problem (bad
credentials); reconnect inside ``__iter__`` for transient ones. Optionally implement ``sync_universe`` (see
:class:`UniverseAware`) to learn about tickers added while running. Then register a constructor in
:data:`engine.stream.FEEDS` so that ``python -m engine.stream --feed <name>`` can build it.
"""

from __future__ import annotations

import csv
import logging
import math
import re
import statistics
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from engine import math_logic
from engine.defaults import BARS_PER_DAY
from engine.errors import FeedError
from engine.records import Clock
from engine.settings import Settings, valid_symbol

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Bar:
    """One model bar: the last price of each ticker at ``ts`` (epoch seconds)."""

    ts: float
    prices: Mapping[str, float]
    reset: bool = False
    """The prices restart here (first row of a replay): the daemon stores them without computing a return
    from the previous prices, so the covariance is not updated by the jump between two unrelated series."""


@runtime_checkable
class Feed(Protocol):
    """What the stream daemon consumes."""

    name: str

    def __iter__(self) -> Iterator[Bar]: ...


@runtime_checkable
class UniverseAware(Protocol):
    """Optional: a feed told about the store's universe when the daemon (re)loads it."""

    def sync_universe(
        self, tickers: Sequence[str], prices: Sequence[float], vols_per_bar: Sequence[float]
    ) -> None: ...


# -- simulated feed ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shock:
    """A one-bar simple return applied to ``ticker`` (``"*"``: every ticker) on top of the simulated move."""

    ticker: str
    simple_return: float
    bar: int
    """1-based: the n-th bar the feed yields."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.simple_return) and self.simple_return > -1.0):
            raise FeedError(f"shock return must be > -1 (a price stays positive), got {self.simple_return}")
        if self.bar < 1:
            raise FeedError(f"shock bar must be >= 1, got {self.bar}")
        if self.ticker != "*" and not valid_symbol(self.ticker):
            raise FeedError(f"invalid ticker in shock: {self.ticker!r}")


@dataclass(frozen=True)
class VolRegime:
    """From the ``bar``-th bar on, every volatility is the base volatility times ``multiplier``."""

    multiplier: float
    bar: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.multiplier) and self.multiplier > 0):
            raise FeedError(f"volatility multiplier must be > 0, got {self.multiplier}")
        if self.bar < 1:
            raise FeedError(f"regime bar must be >= 1, got {self.bar}")


_SHOCK_RE = re.compile(r"^\s*([^:@\s]+)\s*:\s*([-+0-9.eE]+)\s*@\s*(\d+)\s*$")
_REGIME_RE = re.compile(r"^\s*([-+0-9.eE]+)\s*@\s*(\d+)\s*$")


def parse_shock(text: str) -> Shock:
    """``"AAA:-0.08@100"`` -> AAA moves -8% at bar 100; ``"*:-0.05@50"`` moves every ticker."""
    m = _SHOCK_RE.match(text)
    if not m:
        raise FeedError(f"bad shock {text!r}: expected TICKER:RETURN@BAR, e.g. AAA:-0.08@100")
    try:
        value = float(m.group(2))
    except ValueError:
        raise FeedError(f"bad shock {text!r}: {m.group(2)!r} is not a number") from None
    return Shock(m.group(1), value, int(m.group(3)))


def parse_regime(text: str) -> VolRegime:
    """``"2.0@150"`` -> volatilities x2 from bar 150."""
    m = _REGIME_RE.match(text)
    if not m:
        raise FeedError(f"bad volatility regime {text!r}: expected MULTIPLIER@BAR, e.g. 2.0@150")
    try:
        value = float(m.group(1))
    except ValueError:
        raise FeedError(f"bad volatility regime {text!r}: {m.group(1)!r} is not a number") from None
    return VolRegime(value, int(m.group(2)))


class SimulatedFeed:
    """Correlated geometric Brownian motion, one step per model bar.

    Parameters
    ----------
    tickers, prices, vols_per_bar:
        Universe, start prices and one-bar volatilities (annual / sqrt(bars_per_year)).
    correlation:
        Constant pairwise correlation of the bar log returns.
    seed:
        Seed of the random generator; the same seed, universe and schedule give the same bars.
    shocks, regimes:
        Scheduled events (see :func:`parse_shock`, :func:`parse_regime`).
    clock:
        Timestamps of the bars.
    bars:
        Stop after this many bars (default: never).
    night_share, opens, bars_per_day:
        ``model.night_variance_share`` φ, the calendar's session opens (epoch seconds; None: a ``24/7`` market)
        and ``model.bars_per_day`` B: the nights of the model (engine/math_logic.py ``session_spans``).

    Notes
    -----
    ``log(S_t / S_{t-1}) = m σ_i (L z)_i - (m σ_i)² / 2`` with ``L Lᵀ = R`` (the constant correlation
    matrix), ``z ~ N(0, I)`` and ``m`` the regime multiplier; a shock multiplies the price by ``1 + r``
    afterwards. The drift term makes each price a martingale.

    With φ > 0 and a calendar the world simulated is the one the model assumes: ``σ_i`` is the one-bar
    volatility of a whole day, its night included, so a bar of the open market has ``σ_i / sqrt(1 + φ)`` and a
    bar stamped after ``n`` session opens since the previous one adds a night's draw of
    ``σ_i sqrt(n φ B / (1 + φ))`` (its own ``z``, the same correlation): a day of ``B`` bars and its night has
    the variance of ``B`` bars of ``σ_i``, as the settings' ``annual_vol`` says. Without it the stream's model
    (which scales each open-market bar by ``sqrt(1 + φ)``) would settle at ``1 + φ`` times the configured variance.
    """

    name = "sim"

    def __init__(
        self,
        tickers: Sequence[str],
        prices: Sequence[float],
        vols_per_bar: Sequence[float],
        correlation: float,
        *,
        seed: int | None = None,
        shocks: Iterable[Shock] = (),
        regimes: Iterable[VolRegime] = (),
        clock: Clock = time.time,
        bars: int | None = None,
        night_share: float = 0.0,
        opens: np.ndarray | None = None,
        bars_per_day: float = BARS_PER_DAY,
    ) -> None:
        if not (math.isfinite(night_share) and night_share >= 0.0):
            raise FeedError(f"simulated feed: night_share must be a number >= 0, got {night_share!r}")
        self.night_share = float(night_share)
        self.opens = None if opens is None or self.night_share == 0.0 else np.asarray(opens, dtype=float)
        self.bars_per_day = float(bars_per_day)
        self._last_ts: float | None = None
        self.correlation = float(correlation)
        self.rng = np.random.default_rng(seed)
        self.shocks = tuple(shocks)
        self.regimes = tuple(sorted(regimes, key=lambda r: r.bar))
        self.clock = clock
        self.max_bars = bars
        self.bar_index = 0
        """Bars yielded so far."""
        self._set_universe(
            list(tickers), np.asarray(prices, dtype=float), np.asarray(vols_per_bar, dtype=float)
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        tickers: Sequence[str] | None = None,
        prices: Sequence[float] | None = None,
        vols_per_bar: Sequence[float] | None = None,
        seed: int | None = None,
        **kwargs: object,
    ) -> SimulatedFeed:
        """A feed over the settings' universe (or ``tickers``, with their start ``prices`` and vols)."""
        assets = settings.universe.assets
        tickers = list(tickers if tickers is not None else assets)
        per_year = math.sqrt(settings.model.bars_per_year)
        if prices is None:
            prices = [assets[t].price for t in tickers]
        if vols_per_bar is None:
            vols_per_bar = [assets[t].annual_vol / per_year for t in tickers]
        seed = settings.stream.seed if seed is None else seed
        rho = settings.universe.correlation
        model = settings.model
        if model.night_variance_share > 0.0 and "opens" not in kwargs:  # the model's nights (class docstring)
            from engine.sessions import market_calendar  # noqa: PLC0415 - heavy: only with nights

            sessions = market_calendar(settings).sessions
            kwargs.update(night_share=float(model.night_variance_share), bars_per_day=float(model.bars_per_day),
                          opens=None if sessions is None else sessions.opens)  # fmt: skip
        return cls(tickers, prices, vols_per_bar, rho, seed=seed, **kwargs)  # type: ignore[arg-type]

    def _set_universe(self, tickers: list[str], prices: np.ndarray, vols: np.ndarray) -> None:
        n = len(tickers)
        if prices.shape != (n,) or vols.shape != (n,):
            raise FeedError("simulated feed: tickers, prices and vols differ in length")
        if len(set(tickers)) != n:
            raise FeedError("simulated feed: duplicate tickers")
        if not (np.isfinite(prices).all() and (prices > 0).all()):
            raise FeedError("simulated feed: start prices must be positive and finite")
        if not (np.isfinite(vols).all() and (vols >= 0).all()):
            raise FeedError("simulated feed: volatilities must be finite and >= 0")
        unknown = {s.ticker for s in self.shocks} - set(tickers) - {"*"}
        if unknown:
            raise FeedError(f"simulated feed: shocks name tickers outside the universe: {sorted(unknown)}")
        try:
            # factor the correlation, not the covariance: a zero-volatility ticker stays allowed
            corr = math_logic.covariance_from_vols_and_correlation(np.ones(n), self.correlation)
            chol = np.linalg.cholesky(corr) if n else np.zeros((0, 0))
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise FeedError(
                f"simulated feed: correlation {self.correlation} is not usable for {n} tickers"
            ) from exc
        self.tickers = tickers
        self.prices = prices.copy()
        self.vols = vols.copy()
        self._chol = chol

    def sync_universe(
        self, tickers: Sequence[str], prices: Sequence[float], vols_per_bar: Sequence[float]
    ) -> None:
        """Continue from the store's prices; tickers new to the feed get the store's volatility."""
        known = dict(zip(self.tickers, self.vols.tolist(), strict=True))
        vols = np.array([known.get(t, v) for t, v in zip(tickers, vols_per_bar, strict=True)], dtype=float)
        self._set_universe(list(tickers), np.asarray(prices, dtype=float), vols)

    def multiplier(self, bar: int) -> float:
        """Volatility multiplier in force at the ``bar``-th bar (1-based)."""
        m = 1.0
        for regime in self.regimes:
            if regime.bar <= bar:
                m = regime.multiplier
        return m

    def step(self) -> Bar:
        """Draw the next bar."""
        self.bar_index += 1
        k = self.bar_index
        m = self.multiplier(k)
        z = self.rng.standard_normal(len(self.tickers))
        sigma = m * self.vols
        ts = self.clock()
        nights = 0
        if self.opens is not None:  # the class docstring: a bar of the open market, and the nights since the last
            sigma = sigma / math.sqrt(1.0 + self.night_share)
            if self._last_ts is not None:
                at = np.searchsorted(self.opens, [self._last_ts, ts], side="right")
                nights = int(at[1] - at[0])
        log_ret = sigma * (self._chol @ z) - 0.5 * sigma**2
        if nights > 0:
            night = sigma * math.sqrt(nights * self.night_share * self.bars_per_day)
            log_ret += night * (self._chol @ self.rng.standard_normal(len(self.tickers))) - 0.5 * night**2
        self._last_ts = ts
        prices = self.prices * np.exp(log_ret)
        for shock in self.shocks:
            if shock.bar == k:
                if shock.ticker == "*":
                    prices *= 1.0 + shock.simple_return
                elif shock.ticker in self.tickers:
                    prices[self.tickers.index(shock.ticker)] *= 1.0 + shock.simple_return
        self.prices = prices
        return Bar(ts=ts, prices=dict(zip(self.tickers, prices.tolist(), strict=True)))

    def __iter__(self) -> Iterator[Bar]:
        while self.max_bars is None or self.bar_index < self.max_bars:
            yield self.step()


# -- replay feed ---------------------------------------------------------------------------------------------

_DATE_COLUMNS = ("date", "datetime", "timestamp", "time")
_TICKER_COLUMNS = ("ticker", "symbol")
_PRICE_COLUMNS = ("close", "price")
_MAX_LOGGED_PROBLEMS = 20


@dataclass
class ReplayStats:
    """What a replay skipped, for the operator (logged once the file is read)."""

    rows: int = 0
    bars: int = 0
    skipped_cells: int = 0
    """Prices not a number, not finite or not positive: skipped (no price for that ticker and bar)."""
    missing_cells: int = 0
    """Empty cells (wide) or tickers absent from a date (long): gaps, the last price carries on."""
    empty_bars: int = 0
    """Dates with no usable price at all: dropped."""
    time_gaps: int = 0
    """Steps between dates longer than 1.5x the median step (information only: bars are consecutive)."""
    problems: list[str] = field(default_factory=list)
    """The first few skipped cells, as ``file:line: message``."""


class ReplayFeed:
    """Replay a CSV file of bars.

    Formats (detected from the header, column names case-insensitive):

    - wide: ``date,AAA,BBB,...``: one row per bar, one price column per ticker;
    - long: ``date,ticker,close`` (``symbol`` / ``price`` accepted, any column order): one row per ticker and
      bar, rows of one date together.

    ``date`` is an ISO 8601 date or date-time (naive means UTC) or epoch seconds. Rows are consecutive model
    bars whatever their spacing.

    Validation: a **clear** :class:`~engine.errors.FeedError` (with file and line) for what makes the file
    ambiguous: a missing or unreadable file, no data rows, a missing date column, invalid or duplicate ticker
    columns, a date that does not parse, dates going backwards or repeated (wide), a ticker twice for one date
    (long), a row with the wrong number of fields, and tickers outside ``universe`` when one is given.
    **Skipped and counted** (:class:`ReplayStats`, logged) for what only affects one price: non-numeric, NaN,
    infinite, zero or negative prices and empty cells; that ticker has no price in that bar (its last price
    carries on), and a date left with no price at all is dropped. Larger than usual steps between dates are
    counted as ``time_gaps`` and otherwise ignored.

    The first bar has ``reset=True``: its prices anchor the replay and no return is computed against the
    prices that were in the store before it.
    """

    name = "replay"

    def __init__(self, path: str | Path, *, universe: Iterable[str] | None = None) -> None:
        self.path = Path(path)
        self.universe = None if universe is None else set(universe)
        self.stats = ReplayStats()
        self.bars: list[Bar] = self._read()
        self.stats.bars = len(self.bars)
        if (
            self.stats.skipped_cells
            or self.stats.missing_cells
            or self.stats.empty_bars
            or self.stats.time_gaps
        ):
            log.warning(
                "replay %s: %d bars; skipped %d bad prices, %d empty cells, %d empty bars, %d time gaps%s",
                self.path, self.stats.bars, self.stats.skipped_cells, self.stats.missing_cells,
                self.stats.empty_bars, self.stats.time_gaps,
                "; first problems: " + "; ".join(self.stats.problems[:5]) if self.stats.problems else "",
            )  # fmt: skip

    def __iter__(self) -> Iterator[Bar]:
        return iter(self.bars)

    def __len__(self) -> int:
        return len(self.bars)

    def resume_after(self, bar_ts: float) -> int:
        """Drop the bars up to and including the one stamped ``bar_ts``: the last bar of this file that the
        store already holds, so a restarted replay continues where it stopped instead of playing the file again
        from its first bar on top of the market it wrote (issue 14: a restart must not move the figures).

        Returns how many bars were dropped: 0 when no bar has exactly that time (the store's last bar is not
        from this file). The bars left keep their flags: the first of them is not a reset, its return is taken
        from the dropped bar's prices, which the store holds, as in an uninterrupted replay.
        """
        for i, bar in enumerate(self.bars):
            if float(bar.ts) == bar_ts:
                self.bars = self.bars[i + 1 :]
                return i + 1
        return 0

    # parsing -----------------------------------------------------------------------------------------------
    def _error(self, line: int | None, message: str) -> FeedError:
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        return FeedError(f"{where}: {message}")

    def _read(self) -> list[Bar]:
        try:
            with self.path.open(newline="", encoding="utf-8-sig") as fh:
                rows = [
                    (i, row) for i, row in enumerate(csv.reader(fh), start=1) if any(c.strip() for c in row)
                ]
        except FileNotFoundError:
            raise self._error(None, "file not found") from None
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise self._error(None, f"cannot read the file ({exc})") from None
        if not rows:
            raise self._error(None, "the file is empty")
        header = [h.strip() for h in rows[0][1]]
        lower = [h.lower() for h in header]
        data = rows[1:]
        if not data:
            raise self._error(rows[0][0], "a header but no rows of prices")
        self.stats.rows = len(data)
        date_cols = [i for i, h in enumerate(lower) if h in _DATE_COLUMNS]
        if len(date_cols) != 1:
            raise self._error(
                rows[0][0], f"need exactly one date column (one of {list(_DATE_COLUMNS)}), header is {header}"
            )
        ticker_cols = [i for i, h in enumerate(lower) if h in _TICKER_COLUMNS]
        price_cols = [i for i, h in enumerate(lower) if h in _PRICE_COLUMNS]
        if ticker_cols or price_cols:
            if len(header) != 3 or len(ticker_cols) != 1 or len(price_cols) != 1:
                raise self._error(
                    rows[0][0], f"long format needs exactly date,ticker,close columns, got {header}"
                )
            bars = self._read_long(data, date_cols[0], ticker_cols[0], price_cols[0], len(header))
        else:
            bars = self._read_wide(data, header, date_cols[0], rows[0][0])
        if not bars:
            raise self._error(None, "no row holds a usable price")
        self._count_time_gaps([b.ts for b in bars])
        return [Bar(bars[0].ts, bars[0].prices, reset=True), *bars[1:]]

    def _check_tickers(self, tickers: Iterable[str], line: int) -> None:
        for t in tickers:
            if not valid_symbol(t):
                raise self._error(line, f"invalid ticker symbol {t!r}")
        if self.universe is not None:
            unknown = sorted(set(tickers) - self.universe)
            if unknown:
                raise self._error(
                    line,
                    f"tickers not in the store's universe: {unknown}; add them first with "
                    "`python warmup.py --add-ticker SYMBOL --price P --vol V`",
                )

    def _parse_date(self, text: str, line: int) -> float:
        text = text.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise self._error(line, f"date {text!r} is neither ISO 8601 nor epoch seconds") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()

    def _parse_price(self, text: str, ticker: str, line: int) -> float | None:
        """A usable price, or None (counted: empty cell = gap, anything else unusable = skipped)."""
        text = text.strip()
        if not text:
            self.stats.missing_cells += 1
            return None
        try:
            price = float(text)
        except ValueError:
            price = math.nan
        if math.isfinite(price) and price > 0:
            return price
        self.stats.skipped_cells += 1
        if len(self.stats.problems) < _MAX_LOGGED_PROBLEMS:
            self.stats.problems.append(
                f"{self.path}:{line}: {ticker} price {text!r} is not a positive number"
            )
        return None

    def _read_wide(
        self, data: list[tuple[int, list[str]]], header: list[str], date_col: int, hline: int
    ) -> list[Bar]:
        tickers = [h for i, h in enumerate(header) if i != date_col]
        if not tickers:
            raise self._error(hline, "wide format needs one price column per ticker after the date")
        if len(set(tickers)) != len(tickers):
            raise self._error(hline, f"duplicate ticker columns in {tickers}")
        self._check_tickers(tickers, hline)
        bars: list[Bar] = []
        last_ts: float | None = None
        for line, row in data:
            if len(row) != len(header):
                raise self._error(line, f"expected {len(header)} fields, found {len(row)}")
            ts = self._parse_date(row[date_col], line)
            if last_ts is not None and ts <= last_ts:
                raise self._error(line, "dates must increase from row to row")
            last_ts = ts
            prices = {}
            cells = [c for i, c in enumerate(row) if i != date_col]
            for ticker, cell in zip(tickers, cells, strict=True):
                price = self._parse_price(cell, ticker, line)
                if price is not None:
                    prices[ticker] = price
            if prices:
                bars.append(Bar(ts, prices))
            else:
                self.stats.empty_bars += 1
        return bars

    def _read_long(
        self, data: list[tuple[int, list[str]]], date_col: int, ticker_col: int, price_col: int, width: int
    ) -> list[Bar]:
        groups: list[tuple[float, dict[str, float], set[str]]] = []
        seen_tickers: set[str] = set()
        for line, row in data:
            if len(row) != width:
                raise self._error(line, f"expected {width} fields, found {len(row)}")
            ts = self._parse_date(row[date_col], line)
            ticker = row[ticker_col].strip()
            self._check_tickers([ticker], line)
            seen_tickers.add(ticker)
            if not groups or ts > groups[-1][0]:
                groups.append((ts, {}, set()))
            elif ts < groups[-1][0]:
                raise self._error(
                    line, "dates must not go backwards (rows of one date together, dates in order)"
                )
            _, prices, named = groups[-1]
            if ticker in named:
                raise self._error(line, f"{ticker} appears twice for the same date")
            named.add(ticker)
            price = self._parse_price(row[price_col], ticker, line)
            if price is not None:
                prices[ticker] = price
        bars = []
        for ts, prices, named in groups:
            self.stats.missing_cells += len(seen_tickers - named)
            if prices:
                bars.append(Bar(ts, prices))
            else:
                self.stats.empty_bars += 1
        return bars

    def _count_time_gaps(self, stamps: list[float]) -> None:
        steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        if len(steps) >= 2:
            usual = statistics.median(steps)
            self.stats.time_gaps = sum(1 for s in steps if s > 1.5 * usual)


# -- any iterable --------------------------------------------------------------------------------------------


class IterableFeed:
    """Wrap any iterable of bars (or of ``(ts, prices)`` pairs)."""

    def __init__(
        self, bars: Iterable[Bar | tuple[float, Mapping[str, float]]], name: str = "iterable"
    ) -> None:
        self._bars = bars
        self.name = name

    def __iter__(self) -> Iterator[Bar]:
        for item in self._bars:
            yield item if isinstance(item, Bar) else Bar(float(item[0]), item[1])
