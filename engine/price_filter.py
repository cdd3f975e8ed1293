"""Absurd prices never reach the model: the stream daemon's per-price filter.

Every price of every bar, from any feed, goes through :meth:`PriceFilter.check` before it can touch the market
snapshot, the covariance, the pre-trade gate or the monitor. A price is rejected (and counted by the daemon in
``prices_rejected`` / ``prices_filtered`` of its heartbeat, on the System page) when it is

- not a number (``"abc"``, ``None``), NaN or infinite;
- zero or negative;
- above :data:`MAX_PRICE` (``1e308`` is finite but no traded price);
- a *jump*: its log return from the ticker's last accepted price is more than ``stream.max_jump_sigma``
  standard deviations of the ticker's current volatility over the bars since that price.

Notes
-----
The jump test, with ``p0`` the last accepted price, ``S_ii`` the ticker's variance of one *model* bar in the
stored EWMA covariance, ``k`` the model bars one feed bar spans (:attr:`PriceFilter.bar_scale`; 1 for a live
feed, e.g. ``5 x 390`` for a replay of weekly closes) and ``n`` the bars since ``p0`` was accepted, this one
included (1, plus one for each later bar in which the ticker had no accepted price: its print was refused, or
it had no print at all, e.g. a trading halt; :attr:`PriceFilter.missed_bars`)::

    sigma = sqrt(k * S_ii) * sqrt(n + g / k)
    accept  iff  |ln(p / p0)| <= max_jump_sigma * sigma * (1 + JUMP_TOLERANCE)

with ``g`` the model bars the market was *closed* since ``p0`` (0 within a session; see "Session opens"), so a
jump of exactly ``max_jump_sigma`` sigmas of the time since ``p0`` passes and anything measurably beyond it is
refused: a ticker halted for 120 bars re-opens within ``12 x sqrt(121) = 132`` one-bar sigmas. No jump
test is possible (and none is made) when the ticker has no valid last price, or on a ``reset`` bar (the first
bar of a replay anchors new prices: no return is computed from it; it starts every count afresh and counts
itself for no ticker). A ticker whose variance is zero or not finite (a stale column seeded with no
volatility, a variance decayed to nothing by a long halt) is **not** waved through: the test fails closed and
``S_ii`` is its *floor variance* (:attr:`PriceFilter.floor_variances`): its ``annual_vol`` in the settings'
universe over ``model.bars_per_year``, or, for a ticker the settings do not list, :data:`FLOOR_ANNUAL_VOL`.
Skipping the test let a x100 print of a never-moving ticker straight into prices and P&L. The daemon tells the
filter which universe tickers a bar lacks (:meth:`PriceFilter.absent`); every bar the filter sees counts, a bar
held back whole included.

``n - 1`` is the count the stream daemon keeps with the market snapshot (``print_gaps``: the bars since each
ticker's last accepted price, by which its next return is scaled to one bar): a daemon that loads the market (a
restart, a replay resumed mid-file, another writer's new version) continues the filter's count from it
(:meth:`PriceFilter.resume`). Since the model's variance of a thin ticker is one bar's (its returns are scaled by
``1/sqrt(bars spanned)``), the band of a print after ``n`` bars must be ``sqrt(n)`` one-bar sigmas: a restart
that started every count at ``n = 1`` refused a thin ticker's ordinary re-opening move (``sqrt(1/p)`` times
too narrow for a name printing in a fraction ``p`` of the bars). A store without the counts (or with a stale
field) gives ``n = 1``, as before they were kept. The count is not derived from the stored ``price_ts``: with a
live feed those are wall-clock stamps (a late bar, a compressed ``--interval``, the daemon's own downtime, a night
without bars), so ``elapsed / bar length`` is no exact count of the bars since the price; the count is per bar
*written*: a market-wide halt (no bar at all) adds nothing, to the band as to the model. The closed time ``g``
is (see "Session opens"): it counts no bars, only the calendar's closed intervals between the session of the
price time and the bar's, which those stamps place right.

A *single* absurd print is refused; a real move is not refused for long. A rejected jump is remembered as the
ticker's candidate level ``c``, and the ticker's next price ``p`` confirms the move (it is accepted, and its
return from ``p0`` enters the covariance, as a real crash must) when

- it lies within the one-bar jump bound of ``c`` (the level is printed again: a gap), or
- it continues beyond ``c`` in the same direction: ``ln(p/p0)`` has the sign of ``ln(c/p0)`` and
  ``|ln(p/p0)| >= |ln(c/p0)|`` (a fast crash of 2 % a minute: every print is far from the last one, but the
  move persists).

So a genuine gap or crash costs one bar of latency, and a lone spike that the next print contradicts (it
reverts towards ``p0``) never gets in. Non-numbers, non-positive and too-large prices are refused whatever
follows (they count in ``n`` but leave the candidate as it was).

What is written for that ticker on that bar
-------------------------------------------
A rejected price is treated **exactly as a price that never arrived**: the ticker keeps its last accepted price
and price time, its return in this bar is 0, and the bar's other prices are written as usual (a bar with no
valid price at all is held back whole: nothing is written). The stored market after such a bar is byte-for-byte
the one the same bar without that price gives (the tests check this). Why not hold back the whole bar: one
ticker printing garbage would freeze every other ticker's valuation. Why a zero return rather than skipping the
ticker in the EWMA update: updating only part of the matrix can make it indefinite. A bad print therefore never
moves a price, a P&L or a VaR by itself; if the bad prints persist, the ticker's price time stops advancing and
the gate's stale-price check refuses trades in it (fail closed) instead of trading on a guess.

Session opens
-------------
A bar counts only the *feed's* bars: a night, a weekend or a holiday without bars is no missed bar, so the
opening print after it would be judged against one minute of volatility (a -3 % weekend gap of a 20 %-vol stock
is 56 one-minute sigmas: every gapping ticker's opening print was refused). So when the ticker's last accepted
price belongs to an earlier session of ``market.calendar`` (engine/sessions.py: a session runs from its open to
the next open) than the bar, the band also spans ``g`` = the calendar seconds the market was closed between the
two, over ``model.bar_seconds`` (:meth:`PriceFilter.closed_bars`; Friday 16:00 to Monday 09:30 on XNYS is
65.5 h, ``g = 3930`` one-minute bars, a band of ``12 x sqrt(3931)`` = 752 one-minute sigmas: 48 % at 20 % vol).
It is taken from the ticker's stored price time (``price_ts``, the clock the bars are stamped with), so a
restarted daemon, a ticker halted over several nights and an opening print that was refused (the next bar is
judged over the closed time again, not over one bar) are all covered.

Why calendar time: it is the time the price could move in, and it errs wide. Overnight and weekend variance is
in fact less than calendar time suggests, but a false refusal costs a real move (every gapping ticker of a
gap-down morning) while this filter is only there for absurd prints: a x100 or /100 unit error
(``|ln 100| = 4.6``) is still refused over a weekend below ~190 % annual volatility, a x10 below ~95 %. A
``24/7`` calendar never closes (``g = 0``), and a feed whose bar is a session or longer (daily and weekly
replays, ``k >= bars_per_day``) gets no allowance: by the RiskMetrics convention its close-to-close bar already
spans the night.

Bar scale
---------
A replay file's rows may be minutes, hours, days or weeks (engine/history.py reads the spacing from the
timestamps). :meth:`PriceFilter.per_model_bar` divides a feed bar's log returns by ``sqrt(k)`` before the EWMA
update, so the stored covariance stays the covariance of one model bar (as warm-up's ``--history`` stores it)
and the jump test compares like with like.

``k`` is read from the *whole file* and from its *own* timestamps (:func:`replay_bar_scale`): ``python -m
engine.stream --feed replay`` derives it before it moves a date-only file's rows to their session closes (an
early close at 13:00 would make steps of 21 h or 75 h: no whole number of days) and before a restart drops the
rows the store already holds (the few rows left say nothing about the spacing). A file whose spacing cannot be
classified is refused with a :class:`~engine.errors.FeedError` (``FEED_INVALID``) unless ``--bar-model-bars``
gives ``k``: its returns never enter the one-minute model unscaled. A restart whose ``k`` differs from the one
the stream heartbeat published (``feed_bar_model_bars``) is refused with :class:`BarScaleMismatch`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from engine import math_logic
from engine.errors import FeedError, RiskdeskError
from engine.sessions import Sessions, market_calendar
from engine.settings import Settings

log = logging.getLogger("riskdesk.price_filter")

MAX_PRICE = 1e9
"""No traded instrument is quoted above this (the dearest share trades below 1e6): a larger price is absurd."""
JUMP_TOLERANCE = 1e-9
"""Relative slack of the jump bound: float rounding of ``ln(p/p0)`` must not refuse a jump of exactly the limit."""
FLOOR_ANNUAL_VOL = 0.5
"""Annual volatility a ticker with no usable variance and no ``annual_vol`` in the settings is judged by. Above
the volatility of most listed shares (15-40 %), so a real move is rarely refused (and a refused one is confirmed by
the next print, one bar later), yet tight enough that a x10 or x100 unit error is refused even over a weekend:
``12 x 0.5 / sqrt(98,280) x sqrt(3,931)`` = 1.2 < ``ln 10`` = 2.3 (one-minute model bars, XNYS)."""
TRADING_SECONDS_PER_YEAR = 252 * 6.5 * 3600
"""Trading seconds of a year (252 sessions of 6.5 hours) for a filter built without settings
(:attr:`PriceFilter.default_floor_variance`); :meth:`PriceFilter.for_feed` uses ``model.bars_per_year``."""


@dataclass
class PriceFilter:
    """Checks one price at a time against the absurd-price rules (see the module docstring).

    Parameters
    ----------
    max_jump_sigma:
        Largest accepted jump, in standard deviations of one feed bar (``stream.max_jump_sigma``).
    bar_scale:
        Model bars per feed bar ``k`` (1 for a live feed; below 1 for a minute file under longer model bars).
    sessions:
        The exchange calendar whose closed time widens the band at a session open (module docstring, "Session
        opens"); None: no allowance (a ``24/7`` market, a daily or weekly feed).
    model_bar_seconds:
        ``model.bar_seconds``: the closed time is counted in these.
    floor_variances:
        Ticker -> one-model-bar variance its print is judged by when its own variance is zero or not finite
        (module docstring): the settings' ``annual_vol`` squared over ``model.bars_per_year``.
    default_floor_variance:
        The same for a ticker not in ``floor_variances``; None: :data:`FLOOR_ANNUAL_VOL` over the model bars of
        :data:`TRADING_SECONDS_PER_YEAR`.
    """

    max_jump_sigma: float
    bar_scale: float = 1.0
    sessions: Sessions | None = field(default=None, kw_only=True)
    model_bar_seconds: float = field(default=60.0, kw_only=True)
    floor_variances: dict[str, float] = field(default_factory=dict, kw_only=True)
    default_floor_variance: float | None = field(default=None, kw_only=True)
    pending: dict[str, float] = field(default_factory=dict)
    """Ticker -> price of its last rejected jump, waiting for the next print to confirm or contradict it."""
    missed_bars: dict[str, int] = field(default_factory=dict)
    """Ticker -> bars since its last accepted price in which it had none (its print refused, or no print: see
    :meth:`absent`); not in the dict: 0. The jump bound of its next print is widened by ``sqrt(1 + missed_bars)``.
    Continued from the counts stored with the market when the daemon loads it (:meth:`resume`)."""
    _bar: object = None
    _before: dict[str, float] = field(default_factory=dict)
    _missed_before: dict[str, int] = field(default_factory=dict)
    _closed_before: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))
    _default_floor: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_jump_sigma) and self.max_jump_sigma > 0):
            raise ValueError(f"max_jump_sigma must be a positive number, got {self.max_jump_sigma}")
        if not (math.isfinite(self.bar_scale) and self.bar_scale > 0):
            raise ValueError(f"bar_scale must be a positive number of model bars, got {self.bar_scale}")
        if not (math.isfinite(self.model_bar_seconds) and self.model_bar_seconds > 0):
            raise ValueError(f"model_bar_seconds must be a positive number, got {self.model_bar_seconds}")
        default = self.default_floor_variance
        self._default_floor = (
            FLOOR_ANNUAL_VOL**2 * self.model_bar_seconds / TRADING_SECONDS_PER_YEAR if default is None else default
        )
        floors = [self._default_floor, *self.floor_variances.values()]
        if not all(math.isfinite(v) and v > 0 for v in floors):
            raise ValueError("floor variances must be positive numbers: the jump test never runs without a band")
        if self.sessions is not None:  # closed seconds from the first session's open to each session's open
            gaps = self.sessions.opens[1:] - self.sessions.closes[:-1]
            self._closed_before = np.concatenate(([0.0], np.cumsum(gaps)))

    @classmethod
    def for_feed(cls, settings: Settings, feed: object) -> PriceFilter:
        """The filter for ``feed``: a replay's bar scale is its ``bar_model_bars`` when it carries one (the
        ``--feed replay`` builder sets it from the whole file), else :func:`replay_bar_scale` of its bars; any
        other feed's is 1. A feed whose bar is shorter than a session gets ``market.calendar``'s sessions (a
        session open widens the band by the closed time: module docstring). Raises
        :class:`~engine.errors.FeedError` for a replay whose spacing is unknown.
        """
        scale = 1.0
        bars = getattr(feed, "bars", None)
        given = getattr(feed, "bar_model_bars", None)
        if getattr(feed, "name", None) == "replay" and given is not None:
            scale = float(given)
        elif getattr(feed, "name", None) == "replay" and bars is not None:
            scale = replay_bar_scale(settings, bars, path=str(getattr(feed, "path", "<replay>")))
        sessions = market_calendar(settings).sessions if scale < settings.model.bars_per_day else None
        bar_seconds = float(settings.model.bar_seconds)
        per_bar = 1.0 / settings.model.bars_per_year
        floors = {t: float(a.annual_vol) ** 2 * per_bar for t, a in settings.universe.assets.items()}
        return cls(
            float(settings.stream.max_jump_sigma), scale, sessions=sessions, model_bar_seconds=bar_seconds,
            floor_variances=floors, default_floor_variance=FLOOR_ANNUAL_VOL**2 * per_bar,
        )  # fmt: skip

    def floor_variance(self, ticker: str) -> float:
        """The one-model-bar variance ``ticker``'s print is judged by when its own is zero or not finite."""
        return self.floor_variances.get(ticker, self._default_floor)

    def closed_bars(self, since: npt.NDArray[np.float64], now: float) -> npt.NDArray[np.float64] | None:
        """Model bars the market was closed between each price time ``since`` (a ticker's last accepted price)
        and the bar's time ``now``, for the prices from an earlier session than ``now``'s; 0 for the others.

        None when no price is from an earlier session (the usual bar: one ``searchsorted`` and one comparison),
        without :attr:`sessions`, or when ``now`` is outside the calendar (no allowance: the band stays the
        feed's). A price time that is not finite or before the calendar gets 0.

        Notes
        -----
        With ``C(x)`` the closed seconds from the calendar's first open to ``x`` (the gaps before ``x``'s session
        plus ``max(0, x - close)`` of that session), the closed time between ``t`` and ``now`` is ``C(now) -
        C(t)``: exact whatever sessions (holidays, early closes) lie between.
        """
        found = self._earlier(since, now)
        if found is None:
            return None
        j, earlier, i = found
        assert self.sessions is not None
        closes = self.sessions.closes
        t = since[earlier]
        closed_t = self._closed_before[i] + np.maximum(0.0, t - closes[i])
        closed_now = self._closed_before[j] + max(0.0, now - float(closes[j]))
        out = np.zeros(since.shape)
        out[earlier] = (closed_now - closed_t) / self.model_bar_seconds
        return out

    def begin(self, bar: object) -> None:
        """Start checking bar ``bar`` (any key unique per bar). The same key again is a retry of that bar (the
        daemon recomputes a bar after a WATCH conflict): the remembered jumps are restored to what they were
        before its first attempt, so a retry never confirms the bar's own rejected price, and the bar's missed
        bars (refused or absent) are counted once."""
        if bar == self._bar:
            self.pending, self.missed_bars = dict(self._before), dict(self._missed_before)
        else:
            self._bar, self._before, self._missed_before = bar, dict(self.pending), dict(self.missed_bars)

    def resume(self, tickers: Sequence[str], since: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Continue each ticker's count of bars without an accepted price from ``since`` (aligned with ``tickers``:
        the counts stored with the market snapshot the daemon has just loaded); returns ``since`` (the daemon
        keeps it). The count of a ticker not in ``tickers`` (a universe change) is dropped; a remembered
        candidate level is kept (no print contradicted it). A retry of the bar in hand starts from these counts
        too (:meth:`begin`): the market it was computed against is gone."""
        if len(tickers) != len(since):
            raise ValueError("resume: the counts must be aligned with the tickers")
        self.missed_bars = {t: int(n) for t, n in zip(tickers, since.tolist(), strict=True) if n > 0}
        self._missed_before = dict(self.missed_bars)
        return since

    def absent(self, tickers: Iterable[str], *, reset: bool = False) -> None:
        """The bar has no print of ``tickers`` (universe tickers it lacks: a halt, a gap in the feed): each one's
        count of bars since its last accepted price grows by one, so its next print is judged against the
        volatility of all that time. A reset bar counts for nobody and forgets every remembered jump, as
        :meth:`check` with ``reset`` does. A remembered candidate level is kept (no print contradicted it)."""
        if reset:
            self.pending.clear()
            self.missed_bars.clear()
            return
        for ticker in tickers:
            self.missed_bars[ticker] = self.missed_bars.get(ticker, 0) + 1

    def check(
        self, ticker: str, raw: Any, last_price: float, variance: float, *, reset: bool = False, closed: float = 0.0
    ) -> tuple[float, str]:
        """Validate one price of ``ticker``.

        Parameters
        ----------
        ticker:
            Whose price (a rejected jump is remembered per ticker, see the module docstring).
        raw:
            The price as the feed gave it.
        last_price:
            The ticker's last accepted price (NaN or <= 0: none yet).
        variance:
            The ticker's one-model-bar variance ``S_ii`` from the covariance; zero or not finite: its
            :meth:`floor_variance` (the test fails closed, never skipped).
        reset:
            A reset bar (no return computed): no jump test, and every remembered jump is forgotten.
        closed:
            Model bars the market was closed since ``last_price`` (:meth:`closed_bars`; 0 within a session).

        Returns
        -------
        ``(price, "")`` when accepted, ``(nan, reason)`` when rejected.
        """
        if reset:
            self.pending.clear()
            self.missed_bars.clear()
        reason = _basic_reason_of(raw)
        if reason:
            if not reset:  # a reset bar starts the count afresh
                self.missed_bars[ticker] = self.missed_bars.get(ticker, 0) + 1
            return math.nan, reason
        price = float(raw)
        candidate = self.pending.pop(ticker, None)
        missed = self.missed_bars.pop(ticker, 0)
        if reset or not (math.isfinite(last_price) and last_price > 0):
            return price, ""
        if not (math.isfinite(variance) and variance > 0):
            variance = self.floor_variance(ticker)  # fail closed: a ticker with no volatility is still tested
        sigma = math.sqrt(self.bar_scale * variance)
        # n = 1 + missed bars since the last accepted price, plus the closed time in feed bars
        widened = sigma * math.sqrt(1.0 + missed + closed / self.bar_scale)
        if self._within(price, last_price, widened):
            return price, ""
        if candidate is not None and self._confirms(price, candidate, last_price, sigma):
            return price, ""  # the previous print's move is confirmed: a real move
        self.pending[ticker] = price
        self.missed_bars[ticker] = missed + 1
        jump = abs(math.log(price / last_price)) / widened
        return math.nan, f"jump of {jump:.1f} sigma from {last_price:g} (limit {self.max_jump_sigma:g} sigma)"

    def check_many(
        self,
        tickers: Sequence[str],
        raws: Sequence[Any],
        last_prices: npt.NDArray[np.float64],
        variances: npt.NDArray[np.float64],
        *,
        reset: bool = False,
        closed: npt.NDArray[np.float64] | None = None,
    ) -> tuple[npt.NDArray[np.float64], list[str]]:
        """:meth:`check` for the prices of one bar at once: the same decisions, reasons and remembered jumps as
        calling it for each ticker in turn, in one numpy pass (a Python call per ticker was ~1 ms at N = 500).

        Parameters
        ----------
        tickers, raws:
            Each price's ticker (distinct, all in the universe) and the price as the feed gave it.
        last_prices, variances:
            Aligned with ``tickers``: each one's last accepted price and one-model-bar variance ``S_ii`` (zero
            or not finite: its :meth:`floor_variance`, as in :meth:`check`).
        reset:
            As for :meth:`check`.
        closed:
            Aligned with ``tickers``: model bars the market was closed since each last price (:meth:`closed_bars`);
            None: 0 for all.

        Returns
        -------
        ``(prices, reasons)``: the accepted price or NaN, and ``""`` or the reason, for each ticker.

        Notes
        -----
        The log return of the jump test is ``math.log`` per price, as :meth:`check` computes it (numpy's
        vectorised ``log`` may round differently by an ulp, and a jump exactly at the limit must get the same
        answer both ways); everything around it (the ratio, ``sqrt``, the bound, the comparison) is IEEE
        exact and the same elementwise.
        """
        m = len(tickers)
        if len(raws) != m or last_prices.shape != (m,) or variances.shape != (m,):
            raise ValueError("check_many: tickers, prices, last prices and variances must be aligned")
        if closed is not None and closed.shape != (m,):
            raise ValueError("check_many: the closed time must be aligned with the tickers")
        if reset and m:
            self.pending.clear()
            self.missed_bars.clear()
        reasons = [""] * m
        try:
            prices = np.array([float(raw) for raw in raws], dtype=np.float64)
            unreadable = np.zeros(m, dtype=bool)
        except (TypeError, ValueError, OverflowError):
            prices, unreadable = _read_prices(raws)
        with np.errstate(invalid="ignore"):
            bad = unreadable | ~np.isfinite(prices) | (prices <= 0) | (prices > MAX_PRICE)
        if bad.any():
            for k in np.flatnonzero(bad).tolist():
                reasons[k] = _basic_reason(float(prices[k]), bool(unreadable[k]))
                if not reset:  # a reset bar starts the count afresh
                    self.missed_bars[tickers[k]] = self.missed_bars.get(tickers[k], 0) + 1
            prices[bad] = np.nan
        ok = ~bad
        candidates: dict[int, float] = {}
        missed = np.zeros(m)
        if self.pending or self.missed_bars:  # the few remembered tickers, not a Python pass over the bar
            where = dict(zip(tickers, range(m), strict=True))
            for ticker in [t for t in self.pending if t in where and ok[where[t]]]:
                candidates[where[ticker]] = self.pending.pop(ticker)
            for ticker in [t for t in self.missed_bars if t in where and ok[where[t]]]:
                missed[where[ticker]] = self.missed_bars.pop(ticker)
        if reset:
            return prices, reasons
        with np.errstate(invalid="ignore"):
            tested = ok & np.isfinite(last_prices) & (last_prices > 0)
            unusable = ~(np.isfinite(variances) & (variances > 0))
        at = np.flatnonzero(tested)
        if not at.size:
            return prices, reasons
        used = variances[at]  # a copy: the caller's array is not touched
        for j in np.flatnonzero(unusable[at]).tolist():  # fail closed: the few tickers with no volatility
            used[j] = self.floor_variance(tickers[int(at[j])])
        sigma = np.sqrt(self.bar_scale * used)
        bars = 1.0 + missed[at]
        if closed is not None:
            bars = bars + closed[at] / self.bar_scale
        widened = sigma * np.sqrt(bars)  # the same IEEE operations as check()
        size = np.abs(np.fromiter(map(math.log, (prices[at] / last_prices[at]).tolist()), np.float64, at.size))
        bound = self.max_jump_sigma * widened * (1.0 + JUMP_TOLERANCE)
        for j in np.flatnonzero(~(size <= bound)).tolist():
            k = int(at[j])
            price, candidate, last = float(prices[k]), candidates.get(k), float(last_prices[k])
            if candidate is not None and self._confirms(price, candidate, last, float(sigma[j])):
                continue  # the previous print's move is confirmed: a real move
            self.pending[tickers[k]] = price
            self.missed_bars[tickers[k]] = int(missed[k]) + 1
            limit = f"(limit {self.max_jump_sigma:g} sigma)"
            reasons[k] = f"jump of {size[j] / widened[j]:.1f} sigma from {last:g} {limit}"
            prices[k] = np.nan
        return prices, reasons

    def _within(self, price: float, reference: float, sigma: float) -> bool:
        bound = self.max_jump_sigma * sigma * (1.0 + JUMP_TOLERANCE)
        return abs(math.log(price / reference)) <= bound

    def _confirms(self, price: float, candidate: float, last_price: float, sigma: float) -> bool:
        """``price`` confirms the refused ``candidate`` (module docstring): within one bar's bound of it, or
        beyond it in the same direction from ``last_price`` (a move that persists)."""
        if self._within(price, candidate, sigma):
            return True
        move, refused = math.log(price / last_price), math.log(candidate / last_price)
        return (move < 0) == (refused < 0) and abs(move) >= abs(refused)

    def nights(self, since: npt.NDArray[np.float64], now: float) -> npt.NDArray[np.float64] | None:
        """Session opens of the calendar between each price time ``since`` and the bar's time ``now``: the nights
        (a weekend or a holiday is one) a return from that price spans; 0 for a price of ``now``'s session.

        None where :meth:`closed_bars` gives None: no price from an earlier session, no :attr:`sessions`, or
        ``now`` outside the calendar. A price time that is not finite or before the calendar counts none.
        """
        found = self._earlier(since, now)
        if found is None:
            return None
        j, earlier, i = found
        out = np.zeros(since.shape)
        out[earlier] = j - i
        return out

    def session_gaps(
        self,
        since: npt.NDArray[np.float64],
        price_ts: npt.NDArray[np.float64],
        printed_before: npt.NDArray[np.bool_],
        bar_time: float,
        now: float,
        night_share: float,
        bars_per_day: float,
    ) -> tuple[npt.NDArray[np.float64], float]:
        """The bars of variance each ticker's return spans (:func:`engine.math_logic.session_spans` of the feed
        bars ``since`` its price at ``price_ts`` and the nights between), and the bar's own span
        (``TickEvent.span``): the nights of the tickers ``printed_before`` (in the bar before: their price times
        are that bar's, while the snapshot's time may be a foreign writer's wall clock, an add_ticker in a replay),
        with none since the last bar written (``bar_time``)."""
        nights = self.nights(price_ts, now)
        gaps = math_logic.session_spans(since, nights, night_share, bars_per_day, self.bar_scale)
        if printed_before.any():
            bar_nights = 0.0 if nights is None else float(nights[printed_before].max())
        else:
            counted = self.nights(np.array([bar_time]), now)
            bar_nights = 0.0 if counted is None else float(counted[0])
        span = math_logic.session_spans(np.ones(1), np.array([bar_nights]), night_share, bars_per_day, self.bar_scale)
        return gaps, float(span[0])

    def _earlier(
        self, since: npt.NDArray[np.float64], now: float
    ) -> tuple[int, npt.NDArray[np.bool_], npt.NDArray[np.intp]] | None:
        """``now``'s session index ``j``, which price times ``since`` are of an earlier session of the calendar,
        and those sessions' indices; None without :attr:`sessions`, with ``now`` outside the calendar's range or
        no earlier price (a price time not finite or before the calendar is none)."""
        if self.sessions is None or not math.isfinite(now):
            return None
        opens = self.sessions.opens
        if not opens[0] <= now <= self.sessions.closes[-1] + 7 * 86400:  # the calendar's range (engine/sessions.py)
            return None
        j = int(np.searchsorted(opens, now, side="right")) - 1
        with np.errstate(invalid="ignore"):
            earlier = (since < opens[j]) & (since >= opens[0])  # NaN: False
        if not earlier.any():
            return None
        return j, earlier, np.searchsorted(opens, since[earlier], side="right") - 1

    def per_model_bar(self, returns: np.ndarray | None) -> np.ndarray | None:
        """A feed bar's log returns as returns of one model bar (divided by ``sqrt(bar_scale)``)."""
        if returns is None or self.bar_scale == 1.0:
            return returns
        out: np.ndarray = returns / math.sqrt(self.bar_scale)
        return out


class BarScaleMismatch(FeedError):
    """A restarted replay whose bar scale is not the one its first run wrote the stored covariance with."""

    code = "FEED_BAR_SCALE_MISMATCH"
    fix = "replay the file from its start on a re-seeded market (python warmup.py), or pass its --bar-model-bars"


def replay_bar_scale(settings: Settings, bars: Sequence[Any], *, path: str = "<replay>") -> float:
    """Model bars per row of a replay file: the spacing of ``bars``' own timestamps (engine/history.py), read
    from all the file's rows (a date-only file *before* its rows are moved to their session closes, a restart
    *before* the rows already played are dropped).

    Fewer than two rows give 1 (the one row anchors prices: no return is computed from it). Raises
    :class:`~engine.errors.FeedError` when the spacing cannot be classified: a replay never falls back to one
    model bar per row (a daily return in the one-minute model is 20x its volatility).
    """
    if len(bars) < 2:
        return 1.0
    from engine import history  # noqa: PLC0415 - only a replay needs it

    ts = np.array([float(b.ts) for b in bars], dtype=float)
    try:
        spacing = history.classify_spacing(ts, path=path)
    except RiskdeskError as exc:
        raise FeedError(
            f"{path}: the replay's bar length cannot be derived from its timestamps ({exc.detail})",
            fix="space the rows by minutes, hours, days or weeks, or pass --bar-model-bars N (one-minute model "
            "bars per row: 390 for daily closes, 60 for hourly bars)",
        ) from None
    return float(spacing.model_bars(settings.model.bars_per_day, settings.model.bar_seconds))


def _read_prices(raws: Sequence[Any]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Each raw price as a float (NaN where ``float()`` refuses it) and where it refused."""
    prices = np.empty(len(raws), dtype=np.float64)
    unreadable = np.zeros(len(raws), dtype=bool)
    for k, raw in enumerate(raws):
        try:
            prices[k] = float(raw)
        except (TypeError, ValueError, OverflowError):
            prices[k], unreadable[k] = math.nan, True
    return prices, unreadable


def _basic_reason_of(raw: Any) -> str:
    """Why :meth:`PriceFilter.check` refuses ``raw`` before any jump test; ``""`` when it is a plausible price."""
    try:
        price = float(raw)
    except (TypeError, ValueError, OverflowError):
        return "not a number"
    if math.isfinite(price) and 0 < price <= MAX_PRICE:
        return ""
    return _basic_reason(price, False)


def _basic_reason(price: float, unreadable: bool) -> str:
    """Why :meth:`PriceFilter.check` refuses ``price`` before any jump test (the same words)."""
    if unreadable:
        return "not a number"
    if not math.isfinite(price):
        return "not a finite price"
    if price <= 0:
        return "not a positive price"
    return f"above the largest plausible price {MAX_PRICE:g}"
