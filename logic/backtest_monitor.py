"""The continuous VaR backtest: one :class:`logic.backtest.Backtester` per portfolio, fed every bar by the
backtest runner (logic/backtest_runner.py), not by the monitor: the monitor's snapshots go to the newest tick
(latest wins) while a backtest needs every bar, in order, at its own spacing.

Each tick event (a market bar) is fed to every portfolio's backtester with the bar's prices and the positions
held at it, so every configured method (``model.backtest_methods``) forecasts the VaR of the same book at the
same bar and is checked against the same clean P&L (the positions held at the forecast, revalued at the close of
the horizon): at one bar and at the limit's horizon (non-overlapping), at ``model.backtest_confidence``. It is
the code path of ``python -m logic.backtest`` (:func:`backtest_config` gives the same configuration), so a replay
through the daemons and the CLI on the same closes agree exactly where every bar spans one (daily and weekly
closes, or ``model.night_variance_share`` 0): the CLI knows no calendar, so a minute file spanning nights is fed
there without the tick events' ``span``.

Horizons of fed bars
--------------------
A fed bar is one tick event; it spans ``m`` model bars: 1 for a live feed, more for a replay of hourly, daily or
weekly rows (:meth:`engine.history.Spacing.model_bars`: 60, ``bars_per_day``, ``5 · bars_per_day``). The runner
reads ``m`` from the stream daemon's heartbeat ``hb:stream``, field ``feed_bar_model_bars``
(:func:`feed_bar_model_bars`): written in the same atomic write as every bar by the daemon whose price filter
scales the replay's returns by the same ``m`` (engine/price_filter.py), and kept after the daemon stops, so the
bars of a finished replay are still fed at its ``m``. No heartbeat, or none with the field, is a live feed:
``m = 1``. A tick event carries no ``m`` and a replay's file is named on the stream daemon's command line, not in
the settings; so bars still unfed when the stream daemon restarts on a feed of another spacing are fed at the new
one.

The limit's horizon in fed bars is ``h = max(1, round(bars_per_day · var_horizon_days / m))``
(:func:`horizon_bars`): the whole number of fed bars nearest to the limit's horizon, a tie to the even one
(Python's ``round``, the rule for every ``m``, so a minute feed keeps ``round(bars_per_day · var_horizon_days)``);
at least one bar, the shortest span the feed observes (weekly rows and a one-day limit test one week). Rounding
chooses which span is tested and never makes forecast and P&L disagree: both tracks forecast the span they are
checked on. The backtester's EWMA covariance is estimated from the returns between consecutive fed bars (not the
stream's covariance of one model bar), so its one-bar VaR is that of one fed bar (the ``bar`` track, checked on the
P&L from one fed bar to the next) and its limit VaR that of ``h`` fed bars (``sqrt(h)`` times it, checked on the
P&L over those ``h`` bars): a daily replay with a one-day limit closes a limit horizon every bar. Another ``m`` (a
replay of another spacing) gives another ``h``, hence a new backtest.

Basel zone: given once the rolling window (the last 250 observations) holds
``model.backtest_zone_min_observations`` of them (default 250), null before; a change of that setting keeps the
stored counts (:meth:`logic.backtest.Backtester.rezone`). An observation is a closed horizon of a book that held
something: a bar at which the portfolio is flat (every position closed, or held only in tickers the market does not
price) still updates the model but opens no forecast and is counted apart (``flat_bars`` of each method's summary,
:mod:`logic.backtest_counts`), so a book flat for a stretch is scored on the bars it had risk, not on zeros.

State: ``pf:{id}:backtest`` holds the backtester (its JSON state without closed observations and without its
window, its covariance as a codec array), its summary and the market version of the last bar fed;
``pf:{id}:backtest_window`` its window of standardized returns as a fixed ring of packed float64 rows
(:meth:`logic.backtest.Backtester.ring`), of which a bar rewrites the one row it pushed (SETRANGE), so a tick
writes O(k²) bytes per portfolio (the k x k covariance), not the O(window·k) window; and ``pf:{id}:backtest_log``
every closed horizon (the realized P&L against each method's VaR forecast at its start), bounded to the latest
:data:`BACKTEST_LOG_MAXLEN`; and ``section``, what the monitor's snapshots read (:func:`stored_section`). All are
written in the runner's MULTI with the bar's acknowledgement, so a bar is counted exactly once; the whole ring is
written when the stored one does not hold this backtester's rows (a new backtest, or a state stored before the ring).
The runner keeps the backtesters in memory and reloads one when the stored token is not its own (another runner
fed a bar). A tick not newer than the stored version is not fed again; a ``reset`` tick (a new replay: its
prices do not follow the previous ones) gives no return and drops the open forecasts.

Tickers: a portfolio's backtester models the tickers it holds (the P&L and every method's VaR of the book depend
on them only), so its state is O(k²) + O(window·k) for k positions, not O(N²), and a tick rewrites O(k²) of it.
Closing a position keeps its ticker (with zero quantity); opening one in a ticker the backtester does not model
starts a new backtest on the new set (the counts restart with their burn-in), as does a market that no longer lists
one of them. Student-t's degrees of freedom are fitted to the window of those tickers, on its observed entries
only: a ticker without a new price in a bar (the tick event's ``observed``, engine/store/market.py ``TickEvent``)
is a missing entry there, as in the live model's window (logic/backtest.py, "Missing entries"); the store's window
ring marks it NaN, so the mask costs no byte more per bar and a ring stored before it reads as every entry observed.
The event's ``span`` (the bars of the model's variance its bar spans: less than one for a bar of the open market,
more across a night, with ``model.night_variance_share``) is fed with it, so the backtest's model is the stream's
and a night's P&L is checked against a night's VaR (logic/backtest.py, "Spans").

Alert metrics (the snapshot's ``backtest`` section, see :func:`section_for`; ``backtest.market_version`` is the
bar it is of): ``backtest.exceedances`` and
``backtest.zone`` are the rolling (last 250 observations) exceedance count and Basel zone of the portfolio's own
method at the limit's horizon, the zone as a number: 0 green, 1 yellow, 2 red (:data:`ZONE_LEVELS`), so a rule
``backtest.zone >= 1`` pages when the model goes yellow and ``>= 2`` when it goes red. ``backtest.bar_*`` are the
same on the one-bar track and ``backtest.methods.<method>.*`` each configured method's. All are null (the rule does not
apply) before the first closed horizon, and the zones also while the rolling window holds fewer than
``model.backtest_zone_min_observations`` closed horizons (``backtest.observations`` says how many it holds).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from engine.clocks import STREAM_COMPONENT
from engine.errors import CorruptDataError
from engine.records import VarMethod
from engine.settings import Settings
from engine.store import Conn, Store, TickEvent
from logic.backtest import BacktestConfig, Backtester, Observation, Track, step_many
from logic.rules import BACKTEST_ZONES

log = logging.getLogger("riskdesk.backtest")

ZONE_LEVELS: Mapping[str, int] = BACKTEST_ZONES
"""Basel zone -> the number alert rules compare (``backtest.zone``): :data:`logic.rules.BACKTEST_ZONES`."""
BACKTEST_LOG_MAXLEN = 1000
"""Closed observations kept in each portfolio's ``pf:{id}:backtest_log`` (both tracks together, MAXLEN ~)."""
TRACK_FIELDS = {Track.LIMIT: "", Track.BAR: "bar_"}
"""Prefix of a track's fields in the snapshot section."""


def horizon_bars(settings: Settings, portfolio_id: str, bar_model_bars: float = 1.0) -> int:
    """The limit's horizon in whole fed bars of ``bar_model_bars`` model bars each (module docstring).

    Notes
    -----
    ``h = max(1, round(bars_per_day · var_horizon_days / k))``, ``k = bar_model_bars``; ``round`` takes a tie to
    the even neighbour. With ``k = 1`` (a live feed) it is ``round(bars_per_day · var_horizon_days)`` exactly.
    """
    k = float(bar_model_bars)
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"bar_model_bars must be a positive number of model bars, got {bar_model_bars!r}")
    limits = settings.limits_for(portfolio_id)
    return max(1, round(settings.model.bars_per_day * limits.var_horizon_days / k))


def backtest_config(settings: Settings, portfolio_id: str, bar_model_bars: float = 1.0) -> BacktestConfig:
    """The configuration of a portfolio's continuous backtest fed bars of ``bar_model_bars`` model bars (what
    ``python -m logic.backtest`` takes as ``--method``, ``--confidence``, ``--window``, ``--decay``,
    ``--horizon-bars`` and ``--zone-min-observations``)."""
    model = settings.model
    return BacktestConfig(
        methods=tuple(model.backtest_methods),
        confidence=float(model.backtest_confidence),
        window=int(model.fhs_window),
        decay=float(model.ewma_decay),
        horizon_bars=horizon_bars(settings, portfolio_id, bar_model_bars),
        zone_min_observations=int(model.backtest_zone_min_observations),
        max_records=0,  # the closed observations go to the log, not into the state rewritten every tick
    )


def feed_bar_model_bars(store: Store, conn: Conn = None) -> float:
    """Model bars one bar of the tick stream spans: ``feed_bar_model_bars`` of the stream daemon's heartbeat
    (module docstring); 1.0 (a live feed) without a heartbeat or without the field. A value that is not a
    positive finite number is logged and read as 1.0."""
    raw = (store.read_heartbeat(STREAM_COMPONENT, conn) or {}).get("feed_bar_model_bars")
    if raw is None:
        return 1.0
    try:
        k = float(raw)
    except ValueError:
        k = math.nan
    if not (math.isfinite(k) and k > 0):
        log.warning("hb:%s feed_bar_model_bars %r is not a positive number: one model bar per bar", STREAM_COMPONENT,
                    raw)  # fmt: skip
        return 1.0
    return k


def summary_of(
    bt: Backtester, previous: Mapping[str, Any] | None = None, closed: frozenset[Track] = frozenset(Track)
) -> dict[str, Any]:
    """The stored summary: per track and method, :class:`logic.backtest.MethodSummary` as a dict.

    A track not in ``closed`` (no horizon closed on it, no flat bar skipped: its counts did not change) keeps its
    figures from ``previous`` (the summary of the same backtester one bar earlier): its tests are not
    recomputed."""
    old = (previous or {}).get("tracks", {})
    tracks = {
        str(t): old[str(t)] if t not in closed and str(t) in old
        else bt.summary_dicts(t)
        for t in Track
    }  # fmt: skip
    return {
        "confidence": bt.config.confidence,
        "horizon_bars": bt.config.horizon_bars,
        "zone_min_observations": bt.config.zone_minimum,
        "methods": [str(m) for m in bt.config.methods],
        "bars": bt.bar + 1,
        "ready": bt.ready,
        "tracks": tracks,
    }


def _track_fields(track: Mapping[str, Any] | None, prefix: str) -> dict[str, Any]:
    if not track:
        return {f"{prefix}exceedances": None, f"{prefix}zone": None, f"{prefix}observations": 0}
    zone = track.get("zone")
    return {
        f"{prefix}exceedances": track["rolling_exceedances"] if track.get("rolling_observations") else None,
        f"{prefix}zone": ZONE_LEVELS[zone] if zone is not None else None,
        f"{prefix}observations": int(track.get("rolling_observations") or 0),
    }


def stored_section(summary: Mapping[str, Any], version: int | None) -> dict[str, Any]:
    """What the snapshot's ``backtest`` section reads of a summary, every method's fields, as the runner stores it
    (``pf:{id}:backtest`` ``section``) with the market ``version`` of the last bar fed; the monitor picks the
    portfolio's own method with :func:`section_for`."""
    tracks = summary.get("tracks", {})
    methods = {}
    for m in summary.get("methods", []):
        fields: dict[str, Any] = {}
        for track, prefix in TRACK_FIELDS.items():
            fields.update(_track_fields(tracks.get(str(track), {}).get(m), prefix))
        methods[m] = fields
    return {"confidence": summary.get("confidence"), "methods": methods, "market_version": version}


def section_for(stored: Mapping[str, Any] | None, method: VarMethod) -> dict[str, Any] | None:
    """The snapshot's ``backtest`` section (module docstring) from a :func:`stored_section`; None without one.
    ``market_version`` names the bar the figures are of (the runner's last, at most a bar or so behind the
    snapshot's market)."""
    if stored is None:
        return None
    methods = stored.get("methods", {})
    own = methods.get(str(method))
    section: dict[str, Any] = {"method": str(method), "confidence": stored.get("confidence")}
    if own is None:  # the portfolio's method is not backtested: its fields do not apply
        for prefix in TRACK_FIELDS.values():
            section.update(_track_fields(None, prefix))
    else:
        section.update(own)
    section["methods"] = methods
    section["market_version"] = stored.get("market_version")
    return section


def snapshot_section(
    summary: Mapping[str, Any] | None, method: VarMethod, version: int | None = None
) -> dict[str, Any] | None:
    """The snapshot's ``backtest`` section from a stored summary (:func:`section_for` of its
    :func:`stored_section`); None without one."""
    return None if summary is None else section_for(stored_section(summary, version), method)


def _rezoned(bt: Backtester, config: BacktestConfig) -> bool:
    """When ``bt``'s configuration (not ``config``) is ``config`` but for the zone's minimum, give ``bt`` that
    minimum (its counts are kept: :meth:`Backtester.rezone`); True when it did."""
    if bt.config.rolling != config.rolling:  # another rolling window: another backtest (and no minimum to adopt)
        return False
    if dataclasses.replace(bt.config, zone_min_observations=config.zone_minimum) != config:
        return False
    bt.rezone(config.zone_minimum)
    return True


@dataclass
class _Book:
    bt: Backtester
    token: str
    version: int
    ring: bool = True
    """The stored window ring holds this backtester's rows (a row can be rewritten in place)."""


@dataclass(frozen=True)
class Fed:
    """A backtest fed with one tick, waiting for the runner's transaction."""

    portfolio_id: str
    bt: Backtester
    version: int
    token: str
    summary: dict[str, Any]
    closed: tuple[Observation, ...] = ()
    """The horizons that closed at this tick (appended to the log)."""
    ring_row: int | None = None
    """The row of :meth:`Backtester.ring` this tick changed, rewritten in place in the store (None: none)."""
    full_ring: bool = True
    """Write the whole window ring (the stored one does not hold this backtester's rows)."""


class BacktestBooks:
    """The runner's backtesters, one per portfolio, kept in step with the store (module docstring)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._books: dict[str, _Book] = {}
        self._summaries: dict[str, tuple[str, dict[str, Any]]] = {}
        self._configs: dict[tuple[str, float], BacktestConfig] = {}
        self._universe: tuple[str, ...] = ()
        self._columns: dict[str, tuple[Backtester, np.ndarray | None]] = {}
        self.unreadable: dict[str, CorruptDataError] = {}
        """Portfolios the last :meth:`feed` left out because their stored backtest does not decode (left as stored)."""

    def _config(self, pid: str, bar_model_bars: float) -> BacktestConfig:
        config = self._configs.get((pid, bar_model_bars))
        if config is None:  # settings do not change under a runner: built once (limits_for scans the portfolios)
            config = self._configs[(pid, bar_model_bars)] = backtest_config(self.settings, pid, bar_model_bars)
        return config

    def _modelled(self, pid: str, bt: Backtester, index: Mapping[str, int]) -> np.ndarray | None:
        """The columns of ``bt``'s tickers in the tick's prices; None when the market does not list one."""
        cached = self._columns.get(pid)
        if cached is None or cached[0] is not bt:
            cols = None if not all(t in index for t in bt.tickers) else np.array([index[t] for t in bt.tickers])
            cached = self._columns[pid] = (bt, cols)
        return cached[1]

    def feed(
        self,
        event: TickEvent,
        portfolios: Mapping[str, np.ndarray],
        conn: Conn = None,
        markers: Mapping[str, tuple[int, str] | None] | None = None,
        bar_model_bars: float = 1.0,
    ) -> dict[str, Fed]:
        """Feed ``event`` to the backtest of each portfolio (``portfolios``: id -> qty in ``event.tickers``
        order); returns what to write. Reads the stored markers through ``conn`` (the runner's WATCHing
        pipeline, so a concurrent write by another runner aborts the transaction), unless the caller read them
        (``markers``, after WATCHing their keys). ``bar_model_bars``: the model bars the event's bar spans
        (:func:`feed_bar_model_bars`; it sets the limit's horizon in bars). Nothing is kept until :meth:`commit`."""
        pids = list(portfolios)
        if markers is None:
            markers = {pid: self.store.read_backtest_marker(pid, conn) for pid in pids}
        label = datetime.fromtimestamp(event.bar_ts, UTC).isoformat()
        prices = np.asarray(event.prices, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            usable = np.isfinite(prices) & (prices > 0)
        if event.tickers != self._universe:  # the modelled tickers' columns, kept while the market lists the same
            self._universe, self._columns = tuple(event.tickers), {}
        index = {t: i for i, t in enumerate(event.tickers)}
        self.unreadable = {}
        items: list[tuple[Backtester, np.ndarray, np.ndarray, str]] = []
        observed: list[np.ndarray | None] = []  # per item: which of its tickers had a new price (None: all did)
        fed: list[tuple[str, Backtester, dict[str, Any] | None, bool, tuple[int, int]]] = []
        for pid in pids:
            marker = markers[pid]
            if marker is not None and event.version <= marker[0]:
                continue  # fed already (a second runner, or a bar redelivered)
            qty = np.asarray(portfolios[pid], dtype=np.float64)
            try:
                book = self._book(pid, marker)
            except CorruptDataError as exc:  # this portfolio's backtest waits for a repair; the others go on
                self.unreadable[pid] = exc
                continue
            config = self._config(pid, bar_model_bars)
            rezoned = book is not None and book.bt.config != config and _rezoned(book.bt, config)
            cols = None if book is None or book.bt.config != config else self._modelled(pid, book.bt, index)
            if book is not None and cols is not None and np.count_nonzero(qty) == np.count_nonzero(qty[cols]):
                bt = book.bt  # it models every ticker held; fed in place: a failed transaction calls discard()
            elif np.count_nonzero(qty):
                held = {event.tickers[i] for i in np.flatnonzero(qty)}
                bt = Backtester(tuple(t for t in event.tickers if t in held), config)
                cols = self._modelled(pid, bt, index)
            else:
                continue  # nothing held and nothing modelled: no backtest yet
            assert cols is not None
            if not usable[cols].all():
                log.debug("tick %s: a modelled ticker has no usable price: no backtest bar", event.version)
                continue
            if event.reset:
                bt.last_prices = None  # no return across two unrelated price series
                bt.pending.clear()  # a horizon spanning the reset has no meaningful P&L
            continued = book is not None and bt is book.bt
            previous = self._summaries.get(pid)
            same = continued and not rezoned and previous is not None and previous[0] == book.token  # type: ignore[union-attr]
            kept = previous[1] if previous is not None and same else None
            items.append((bt, prices[cols], qty[cols], label))
            observed.append(None if event.observed is None else event.observed[cols])
            fed.append((pid, bt, kept, continued and book.ring, (bt.pushed, len(bt.seed))))  # type: ignore[union-attr]
        out: dict[str, Fed] = {}
        tick = uuid.uuid4().hex  # a token per write: this feed's own prefix, then the portfolio's place in it
        closed_all = step_many(items, observed=observed, span=event.span)  # the bar's bars of variance
        for k, ((pid, bt, kept, ring, pushed), closed) in enumerate(zip(fed, closed_all, strict=True)):
            summary = summary_of(bt, kept, frozenset(o.track for o in closed) | bt.skipped)
            row = bt.ring_row(*pushed) if ring else None
            out[pid] = Fed(pid, bt, event.version, f"{tick}{k:x}", summary, tuple(closed), row, not ring)
        return out

    def _book(self, pid: str, marker: tuple[int, str] | None) -> _Book | None:
        if marker is None:
            self._books.pop(pid, None)
            return None
        book = self._books.get(pid)
        if book is not None and book.token == marker[1]:
            return book
        stored = self.store.read_backtest_state(pid)
        if stored is None:
            return None
        state, version, token = stored
        try:
            bt = Backtester.from_dict(state)
        except ValueError as exc:
            raise CorruptDataError(f"portfolio {pid}: stored backtest unreadable ({exc})") from exc
        book = _Book(bt, token, version, "ring" in state)
        self._books[pid] = book
        return book

    def write(self, fed: Mapping[str, Fed], pipe: Conn) -> None:
        """Queue each fed backtest's writes on ``pipe`` (the runner's MULTI): its state, and its window's new row
        (or the whole ring when the stored one does not hold this backtester's rows)."""
        for f in fed.values():
            bt = f.bt
            ring_rows = bt.config.window + bt.config.seed_rows
            self.store.write_backtest(
                f.portfolio_id, bt.store_state(), f.summary, f.version, f.token, pipe, cov=bt.cov,
                ring=bt.ring() if f.full_ring else None,
                ring_row=None if f.ring_row is None else (f.ring_row, ring_rows, bt.ring_values(f.ring_row)),
                section=stored_section(f.summary, f.version),
            )  # fmt: skip
            if f.closed:
                records = [o.to_dict() for o in f.closed]
                self.store.append_backtest_observations(f.portfolio_id, records, BACKTEST_LOG_MAXLEN, pipe)

    def commit(self, fed: Mapping[str, Fed]) -> None:
        """The transaction holding ``fed`` succeeded: keep its backtesters as this runner's."""
        for f in fed.values():
            self._books[f.portfolio_id] = _Book(f.bt, f.token, f.version, True)
            self._summaries[f.portfolio_id] = (f.token, f.summary)

    def discard(self) -> None:
        """The transaction failed: what was fed in memory may be ahead of the store; reload on next use."""
        self._books.clear()
        self._summaries.clear()
