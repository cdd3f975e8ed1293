"""The pre-trade risk gate of one portfolio: checks, atomic execution, trading states, what-if and stress.

:class:`RiskManager` is the one object the dashboard, the monitor's automated responses and scripts use to
look at a portfolio's risk and to trade it. Everything it decides is a plain, JSON-serialisable dict.

Decision (:meth:`RiskManager.check_trade_impact`, and ``decision`` inside an execution result)::

    status               "APPROVED" | "REJECTED"
    reasons              [{"code": str, "message": str}]   every failed check (codes: engine.records.ReasonCode)
    portfolio_id, ticker, side ("BUY"|"SELL"|None), qty (int|None: None when the quantity is invalid)
    price                last price the market order would fill at (float|None)
    reference_price      session reference price used by the collar (float|None)
    notional, est_fees   qty * fill price and the commission (float|None)
    liquidity_cost       half-spread + square-root impact estimate, dollars (float|None)
    var_before, var_after, delta_var   parametric VaR at the limit's confidence and horizon, dollars
    marginal_var         VaR added per extra dollar of exposure to the ticker (at the limit's horizon)
    var_limit, var_confidence, var_horizon_days
    cash_before, cash_after, position_before, position_after, equity_after
    concentration_after  |position value| / equity after the trade (None when equity would be <= 0 or a held
                         ticker has no usable price)
    margin_level_after   equity / used margin x 100 after the trade (margin accounts with every held price; None
                         otherwise)
    trading_state        "ACTIVE" | "REDUCING" | "HALTED" (None when unreadable: treated as HALTED)
    market_version, checked_at
    intent               "trade" | "liquidation" (liquidation-only: must shrink the position; passes HALTED)
    max_qty_allowed      refused well-formed orders: the largest quantity of the same ticker and side that
                         passes every check now (0: none); None when approved or malformed

Risk figures that cannot be computed (bad input, missing data) are ``None``; the reasons say why.

Execution result (:meth:`RiskManager.execute_trade`; also the record stored in the trade log and, for a fill
with a client order id, the idempotency record)::

    status            "FILLED" | "REJECTED"
    reasons           as above ([] for a fill)
    client_order_id   str | None
    duplicate         True when this call returned the stored result of an earlier call (nothing traded)
    ts, actor         when and by whom
    decision          the decision taken inside the transaction
    fill              None when rejected, else {trade_id, client_order_id, portfolio_id, ticker, side, qty,
                      price, notional, fees, realized_pnl, cash_before, cash_after, position_before,
                      position_after, avg_price_before, avg_price_after, ts, actor, market_version}
                      with money as exact decimal strings (``Decimal(fill["cash_after"])``), quantities as int

Where the work is done: the checks in :mod:`logic.checks`, the WATCH/MULTI execution and its idempotency in
:mod:`logic.execution`, the covariance (validated once per market snapshot) in :mod:`engine.market_model`;
this module is the facade with the trading states, what-if, stress and the dashboard metrics. The typed
entry points :meth:`RiskManager.check` and :meth:`RiskManager.execute` return the records of
:mod:`engine.records`; the dict API above is their ``to_dict()``.

Hot path: :meth:`RiskManager.check_trade_impact` reads the market header (no matrix), the reference prices,
the portfolio, its trading state and the order-rate count in one round trip (one read-only Lua script, see
:meth:`engine.store.Store.read_trade_view`; the positions travel only when their revision token changed).
check_trade_impact never writes.

Fail closed: any store error (unreachable, empty, corrupt) and any missing or unreadable trading state make
every trade REJECTED with a coded reason; risk data reads (dashboard metrics, stress) raise the typed errors
of :mod:`engine.errors` instead, for the page to show with their ``fix``.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import redis

from engine import math_logic
from engine.clocks import MarketClock
from engine.defaults import REPORTED_CONFIDENCES
from engine.errors import CorruptDataError, RiskdeskError, StoreError, StoreUnavailableError
from engine.market_model import MarketModelCache
from engine.metrics import GateMetrics, decision_parts
from engine.records import (
    Clock,
    Decision,
    DecisionStatus,
    ExecutionResult,
    MarketSnapshot,
    OrderIntent,
    PortfolioState,
    TradingState,
    TradingStatus,
)
from engine.redis_server import connect
from engine.sessions import market_calendar
from engine.settings import Limits, Settings, load_settings
from engine.store import LimitsChangeError, PortfolioKeys, Store, TradeView
from engine.store.sequencer import out_of_memory, out_of_memory_error
from logic import execution
from logic.actions import STATE_RANK
from logic.check_book import BookCache, Sim
from logic.checks import Checker, store_failure_decision
from logic.execution import read_gate_view
from logic.limits import read_day_open
from logic.risk_models import risk_model_of
from logic.valuation import value_portfolio

T = TypeVar("T")


@dataclass(frozen=True)
class StateChange:
    """A trading-state change as made: what it replaced, what is in force now, whether anything was written."""

    previous: str
    """The state read inside the change's transaction (``MISSING`` / ``UNREADABLE`` when there was none)."""
    status: TradingStatus
    """The state in force now: the new one when ``changed``, else the one kept (HALTED when unreadable)."""
    changed: bool


SYSTEM_ACTOR = "system"
RECENT_CHECKERS = 4
"""Checkers (one per limits version) a manager keeps: a view read just before a limits change finds its own."""


def _typed_store_errors(method: Callable[..., T]) -> Callable[..., T]:
    """Let a Redis failure out of a read method only as the store's typed error (with its ``fix``)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except redis.ConnectionError as exc:
            raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc
        except redis.TimeoutError as exc:
            raise StoreUnavailableError(f"Redis did not answer in time: {exc}") from exc
        except redis.RedisError as exc:
            if out_of_memory(exc):  # full, not corrupt: re-seeding would be the wrong fix
                raise out_of_memory_error(exc, "Redis refused a read") from exc
            raise CorruptDataError(f"Redis refused a read: {exc}") from exc

    return wrapper


class RiskManager:
    """Risk view, pre-trade gate and execution for one portfolio.

    Parameters
    ----------
    redis_client_or_url:
        A bytes-mode ``redis.Redis``, a Redis URL, or None to connect as the settings say.
    portfolio_id:
        The portfolio this manager trades.
    settings:
        The frozen settings (default: :func:`engine.settings.load_settings`).
    clock:
        Zero-argument callable returning epoch seconds (default :class:`engine.clocks.MarketClock`: the wall
        clock live, the bars' time in a replay): staleness, the order-rate
        window and audit times use it.
    market_models:
        A :class:`~engine.market_model.MarketModelCache` to share with other readers of the same store
        (default: one of its own).
    metrics:
        Where decisions are counted (engine/metrics.py; the monitor passes its registry's); None: not counted.

    One instance may be shared by threads (the dashboard does): the caches are replaced atomically, and each
    check, execution, what-if or page read uses the checker of the limits its own trade view carries
    (:meth:`checker_for`), whatever limits other threads' views carry meanwhile.
    """

    def __init__(
        self,
        redis_client_or_url: redis.Redis | str | None = None,
        portfolio_id: str = "main",
        settings: Settings | None = None,
        clock: Clock | None = None,
        market_models: MarketModelCache | None = None,
        metrics: GateMetrics | None = None,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.metrics = metrics
        if redis_client_or_url is None:
            client = connect(self.settings)
        elif isinstance(redis_client_or_url, str):
            client = connect(redis_client_or_url)
        else:
            client = redis_client_or_url
        self.client = client
        self.store = Store(client)
        self.portfolio_id = portfolio_id
        self.clock: Clock = clock or MarketClock(self.store)  # a replay's checks run on the data's time
        limits = self.settings.limits_for(portfolio_id)
        horizon_bars = self.settings.model.bars_per_day * limits.var_horizon_days
        self.last_error: RiskdeskError | None = None
        """The typed error behind the last ``None`` returned by get_market_data / get_portfolio_state."""
        self.models = market_models or MarketModelCache(self.store, self.settings.model.bars_per_day)
        """The validated covariance per market snapshot; pass one cache to share it between managers."""
        books = BookCache(limits, horizon_bars, self.settings.var_method_for(portfolio_id))
        calendar = market_calendar(self.settings)
        self.checker = Checker(
            portfolio_id,
            self.settings,
            limits,
            horizon_bars,
            self.models,
            books,
            # "today" as the monitor stamps it (an exchange's session date, or the 24/7 rule)
            day_open=functools.partial(read_day_open, self.store, portfolio_id, calendar.period_ids),
        )
        """The checker of the newest limits seen (its ``limits``, ``horizon_bars`` and ``books`` are this
        manager's): replaced as one reference, never by an older version's (:meth:`use_limits`)."""
        self.limits_version = 0
        """The stored version of ``checker``'s limits (0: the settings', no stored record)."""
        self._recent: collections.deque[Checker] = collections.deque([self.checker], maxlen=RECENT_CHECKERS)
        self._limits_lock = threading.Lock()
        self.memo: dict[Any, Any] = {}
        """What :meth:`engine.store.Store.read_trade_view` need not read again (tickers, positions)."""
        self.settings_limits: Limits = limits
        """The settings' limits: used while the store holds none for the portfolio (a store seeded before live
        limits)."""

    @property
    def limits(self) -> Limits:
        """The newest limits seen (a check uses its own view's, :meth:`checker_for`)."""
        return self.checker.limits

    @property
    def horizon_bars(self) -> float:
        """The VaR horizon of :attr:`limits` in model bars."""
        return self.checker.horizon_bars

    @property
    def books(self) -> BookCache:
        """The holdings-risk cache of :attr:`limits` (its VaR confidence and horizon)."""
        return self.checker.books

    def checker_for(self, view: TradeView) -> Checker:
        """The checker of the live limits the trade view carries (engine/store/limits.py), so a change on the
        Limits page applies from the next check. Returned for this view only: a check or execution uses what
        this returns, never ``self.checker``, which another thread's view may move on meanwhile (one instance
        is shared by every dashboard session). Unreadable limits: the current checker, which refuses on
        ``view.errors["limits"]`` (STORE_CORRUPT, fail closed)."""
        if "limits" in view.errors:
            return self.checker
        if view.limits is None:
            return self.use_limits(self.settings_limits, 0)
        return self.use_limits(view.limits, view.limits_version)

    def use_limits(self, limits: Limits, version: int | None = None) -> Checker:
        """The checker of ``limits``, stored as ``version`` (None: not known, e.g. just written); it becomes
        the current one (:attr:`checker`) unless a newer version already is: a check that read its view before
        a change never brings the older limits back for the others. (A reset that restarts the version count
        below the current one leaves :attr:`checker` behind until the count passes it again; every check still
        gets the checker of its own view's limits, which is all that decides an order.)

        Thread-safe. Built once per limits and kept for the last :data:`RECENT_CHECKERS` (a view read just
        before a change still finds its own); the risk caches are shared unless the VaR's confidence or
        horizon differ.
        """
        current = self.checker
        if limits is current.limits and (version is None or version <= self.limits_version):
            return current  # the hot path: the trade view's memo hands out one Limits object per version
        with self._limits_lock:
            current = self.checker
            checker = next((c for c in self._recent if c.limits is limits), None)
            if checker is None:
                checker = next((c for c in self._recent if c.limits == limits), None)
            if checker is None:
                checker = self._new_checker(limits)
                self._recent.append(checker)
            if version is None:  # written just now: newer than every version seen before the write
                if checker is not current:
                    self.checker = checker
                    self.limits_version += 1  # a lower bound; the view of the write brings the number
            elif version >= self.limits_version:  # the same version with other limits: a reset restarted the count
                self.checker = checker
                self.limits_version = version
            return checker

    def _new_checker(self, limits: Limits) -> Checker:
        """A checker of ``limits`` sharing the caches of a recent one where the VaR figures agree (called with
        the lock held)."""
        horizon_bars = self.settings.model.bars_per_day * limits.var_horizon_days
        base = self.checker
        books = next(
            (
                c.books
                for c in self._recent
                if c.limits.var_confidence == limits.var_confidence and c.horizon_bars == horizon_bars
            ),
            None,
        )
        if books is None:
            books = BookCache(limits, horizon_bars, base.books.method)
        checker = Checker(self.portfolio_id, self.settings, limits, horizon_bars, self.models, books, base.day_open)
        checker.validated = base.validated
        return checker

    def refresh_limits(self) -> Limits:
        """Read the live limits now (pages and reports outside a check); the settings' when none are stored.
        Raises the store's typed errors."""
        stored = _typed_store_errors(self.store.read_limits)(self.portfolio_id)
        if stored is None:
            return self.use_limits(self.settings_limits, 0).limits
        return self.use_limits(stored.limits, stored.version).limits

    def set_limits(
        self,
        changes: Mapping[str, Any],
        actor: str,
        reason: str,
        *,
        expected_version: int | None = None,
        expected_rev: str | None = None,
    ) -> int:
        """Change limits of the portfolio (name -> new value), validated as the settings are, with one audit
        record (before/after of the changed fields, actor, reason) in the same transaction; returns the new
        version. Every gate, monitor and page uses it from its next check or tick.

        ``expected_version`` / ``expected_rev``: the limits the change was made against (a page's rendered
        version and its record's token); when they moved since, the change is refused.

        Raises :class:`engine.store.LimitsChangeError` (code ``LIMITS_INVALID``, nothing written) for an unknown
        limit, a bad value or an empty actor or reason; its :class:`engine.store.LimitsConflictError` (code
        ``LIMITS_CHANGED``, nothing written) when the limits moved since ``expected_version``. A
        ``position_limits`` key that is not a ticker of the universe (the settings' or one added at run time) is
        refused too (a cap on ``"aaa"`` would never apply to ``AAA``: the control would fail open).
        """
        caps = changes.get("position_limits")
        unknown = (
            sorted(str(t) for t in caps if str(t) not in self._universe())
            if isinstance(caps, Mapping)
            else []
        )
        if unknown:
            raise LimitsChangeError(f"position_limits: {unknown} are not tickers of the universe (tickers are exact)")
        stored = self.store.change_limits(
            self.portfolio_id, changes, actor=actor, reason=reason, now=self.clock(), fallback=self.settings_limits,
            expected_version=expected_version, expected_rev=expected_rev,
        )  # fmt: skip
        self.use_limits(stored.limits)
        return stored.version

    def _universe(self) -> set[str]:
        """The tickers a limit may name: the settings' universe and those added at run time (``warmup.py
        --add-ticker``), as the stored market snapshot lists them (the settings' alone when it cannot be read)."""
        tickers = set(self.settings.universe.assets)
        try:
            tickers.update(self.store.read_market_header().tickers)
        except (StoreError, redis.RedisError):
            pass
        return tickers

    # -- reads -----------------------------------------------------------------------------------------------

    def get_market_data(self) -> tuple[MarketSnapshot, dict[str, float]] | tuple[None, None]:
        """The market snapshot (covariance included) and ``{ticker: last price}``; ``(None, None)`` when the
        store is unreachable, empty or corrupt (the typed error is in :attr:`last_error`)."""
        try:
            snap = _typed_store_errors(self.store.read_market)()
        except StoreError as exc:
            self.last_error = exc
            return None, None
        self.last_error = None
        return snap, dict(zip(snap.tickers, snap.prices.tolist(), strict=True))

    def get_portfolio_state(self) -> PortfolioState | None:
        """Cash and positions from one consistent read; None (and :attr:`last_error`) when unavailable."""
        try:
            view = self.store.read_trade_view(self.portfolio_id, self.clock(), memo=self.memo)
        except StoreError as exc:
            self.last_error = exc
            return None
        error = view.errors.get("portfolio")
        self.last_error = error
        return view.portfolio

    def get_trading_state(self) -> TradingStatus:
        """The portfolio's trading state; HALTED (with the reason) when it is missing or unreadable."""
        try:
            return self.store.read_trading_state(self.portfolio_id)
        except StoreError as exc:
            return self._fail_closed_state(exc)
        except redis.RedisError as exc:
            return self._fail_closed_state(StoreUnavailableError(f"Redis is unreachable: {exc}"))

    def _fail_closed_state(self, exc: BaseException) -> TradingStatus:
        detail = exc.detail if isinstance(exc, RiskdeskError) else str(exc)
        return TradingStatus(
            state=TradingState.HALTED,
            reason=f"trading state unreadable, failing closed: {detail}",
            actor=SYSTEM_ACTOR,
            ts=self.clock(),
        )

    def set_trading_state(self, state: str, reason: str, actor: str, expected: str | None = None) -> TradingStatus:
        """Persist ACTIVE / REDUCING / HALTED with who and why, and append an audit record (one transaction).

        The audit record's ``previous`` is the state this change replaced, read inside the transaction
        (:meth:`engine.store.Store.change_trading_state`; ``MISSING`` / ``UNREADABLE`` when there was none
        to read). Raises ``ValueError`` for an unknown state or an empty reason or actor (a kill switch is
        changed only deliberately), and the typed store errors when Redis cannot be written.

        ``expected``: the state the person saw when deciding (the page's); when the stored state is another at
        the moment of the write (the automation tightened REDUCING to HALTED meanwhile), nothing is written and
        :class:`engine.store.portfolio.TradingStateConflictError` (``TRADING_STATE_CHANGED``) names who changed
        it to what. None: no such check (scripts, the firm-wide switch).
        """
        return self._change_trading_state(state, reason, actor, tighten_only=False, expected=expected).status

    def tighten_trading_state(self, state: str, reason: str, actor: str) -> StateChange:
        """:meth:`set_trading_state` for the automated responses: writes only when ``state`` is stricter than
        the state stored at the moment of the write (ACTIVE < REDUCING < HALTED; a missing or unreadable state
        counts as HALTED, as the gate reads it). Compared and written in one WATCHed transaction, so a halt that
        lands in between is never loosened, and nothing is written (no audit record either) when the state is
        already as strict or stricter: the returned :class:`StateChange` says which.
        """
        return self._change_trading_state(state, reason, actor, tighten_only=True)

    def _change_trading_state(
        self, state: str, reason: str, actor: str, *, tighten_only: bool, expected: str | None = None
    ) -> StateChange:
        name = str(state).strip().upper()
        if name not in TradingState.__members__:
            raise ValueError(f"unknown trading state {name!r}; use one of {', '.join(TradingState)}")
        target = TradingState(name)
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("a trading state change needs a reason")
        if not isinstance(actor, str) or not actor.strip():
            raise ValueError("a trading state change needs an actor (who made it)")
        now = self.clock()
        new = TradingStatus(state=target, reason=reason.strip(), actor=actor.strip(), ts=now)
        record = {"ts": now, "actor": new.actor, "action": "set_trading_state", "state": target, "reason": new.reason}

        def as_strict(current: TradingStatus | None) -> bool:
            held = current.state if current is not None else TradingState.HALTED  # unreadable: HALTED
            return STATE_RANK[held] >= STATE_RANK[target]

        try:
            change = self.store.change_trading_state(
                self.portfolio_id, new, record, keep=as_strict if tighten_only else None, expected=expected
            )
        except StoreError:
            raise
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"could not write the trading state: {exc}") from exc
        if change.written:
            return StateChange(change.previous, new, True)
        if change.current is not None:
            return StateChange(change.previous, change.current, False)
        why = change.error if change.error is not None else CorruptDataError("trading state unreadable")
        return StateChange(change.previous, self._fail_closed_state(why), False)

    @_typed_store_errors
    def trade_log(self, count: int = 100) -> list[dict[str, Any]]:
        """Newest ``count`` trade log records (fills and rejected orders, shaped like execute_trade's result,
        plus the stream ``id``)."""
        return self.store.read_trade_log(self.portfolio_id, count)

    @_typed_store_errors
    def audit_log(self, count: int = 100) -> list[dict[str, Any]]:
        """Newest ``count`` audit records of the portfolio (trading state changes, automated actions)."""
        return self.store.read_stream_json(PortfolioKeys(self.portfolio_id).audit, count)

    # -- the gate --------------------------------------------------------------------------------------------

    def check_trade_impact(
        self, ticker: Any, qty: Any, side: Any, intent: OrderIntent = OrderIntent.TRADE
    ) -> dict[str, Any]:
        """Run every pre-trade check on the current state and return the decision (see the module doc).

        Never writes to the store and never raises for bad input or store trouble: those are reasons.
        """
        return self.check(ticker, qty, side, intent).to_dict()

    def check(self, ticker: Any, qty: Any, side: Any, intent: OrderIntent = OrderIntent.TRADE) -> Decision:
        """:meth:`check_trade_impact` as a typed :class:`~engine.records.Decision`."""
        if self.metrics is not None:
            return self._counted(self._check, ticker, qty, side, intent)
        return self._check(ticker, qty, side, intent)

    def _counted(self, decide: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        result = decide(*args)
        if self.metrics is not None:
            self.metrics.decided(*decision_parts(result), time.perf_counter() - started)
        return result

    def _check(self, ticker: Any, qty: Any, side: Any, intent: OrderIntent) -> Decision:
        now = self.clock()
        try:
            view = read_gate_view(self.store, self.portfolio_id, now, memo=self.memo)
        except StoreError as exc:
            return self.store_failure_decision(ticker, qty, side, exc, now)
        decision, _plan = self.checker_for(view).evaluate(Sim.from_view(view), ticker, qty, side, now, intent=intent)
        return decision

    def execute_trade(
        self,
        ticker: Any,
        qty: Any,
        side: Any,
        client_order_id: str | None = None,
        actor: str = "trader",
        intent: OrderIntent = OrderIntent.TRADE,
        *,
        automation: object = None,
    ) -> dict[str, Any]:
        """Re-check and trade atomically at the last price; the same ``client_order_id`` trades at most once.

        Returns the execution result described in the module doc. Never raises for bad input or store
        trouble: the result is REJECTED with the reason. ``automation``: see :meth:`execute`.
        """
        return self.execute(ticker, qty, side, client_order_id, actor, intent, automation=automation).to_dict()

    def execute(
        self,
        ticker: Any,
        qty: Any,
        side: Any,
        client_order_id: str | None = None,
        actor: str = "trader",
        intent: OrderIntent = OrderIntent.TRADE,
        *,
        automation: object = None,
    ) -> ExecutionResult:
        """:meth:`execute_trade` as a typed :class:`~engine.records.ExecutionResult` (see
        :mod:`logic.execution`). ``intent=LIQUIDATION``: a liquidation-only order (see
        :class:`~engine.records.OrderIntent`). ``automation``: the automation's grant, passed only by the automated
        responses (logic/action_orders.py ``AUTOMATION``); an ``auto:`` actor without it is refused ``BAD_ACTOR``,
        nothing written: the actor is a typed name and grants nothing."""
        args = (self, ticker, qty, side, client_order_id, actor, intent, automation)
        if self.metrics is not None:
            return self._counted(execution.execute, *args)
        return execution.execute(*args)

    def store_failure_decision(
        self, ticker: Any, qty: Any, side: Any, error: StoreError | None, now: float
    ) -> Decision:
        """REJECTED because the store failed (``error``), with the order's own fields parsed."""
        return store_failure_decision(self.portfolio_id, self.limits, ticker, qty, side, error, now)

    def what_if(self, trades: Iterable[Any]) -> dict[str, Any]:
        """Check a basket cumulatively: each trade is checked on the state the approved ones before it leave.

        ``trades``: ``(ticker, qty, side)`` tuples or ``{"ticker", "qty", "side"}`` dicts. Returns
        ``{"status": "APPROVED" if every trade passes else "REJECTED", "decisions": [decision per trade],
        "var_before", "var_after" (after the approved trades), "delta_var", "cash_before", "cash_after",
        "positions_after": {ticker: qty}}``. Nothing is written.
        """
        now = self.clock()
        items = [_trade_tuple(t) for t in trades]
        try:
            view = read_gate_view(self.store, self.portfolio_id, now, memo=self.memo)
        except StoreError as exc:
            decisions = [self.store_failure_decision(t, q, s, exc, now).to_dict() for t, q, s in items]
            return _basket(decisions, None, None, None, None, None)
        checker = self.checker_for(view)
        sim = Sim.from_view(view)
        var_before = self._sim_var(checker, sim)
        cash_before = float(sim.portfolio.cash) if sim.portfolio else None
        decisions = []
        for n, (ticker, qty, side) in enumerate(items):
            decision, plan = checker.evaluate(sim, ticker, qty, side, now, pending_orders=n)
            decisions.append(decision.to_dict())
            if plan is not None:
                sim.apply(plan)
        var_after = self._sim_var(checker, sim)
        positions = None
        if sim.portfolio is not None:
            positions = {t: p.qty for t, p in sim.portfolio.positions.items() if p.qty != 0}
        cash_after = float(sim.portfolio.cash) if sim.portfolio else None
        return _basket(decisions, var_before, var_after, cash_before, cash_after, positions)

    def _sim_var(self, checker: Checker, sim: Sim) -> float | None:
        if sim.errors.get("market") or sim.portfolio is None or sim.header is None:
            return None
        try:
            model = self.models.get(sim.header)
        except (StoreError, redis.RedisError):
            return None  # the decisions carry the reason
        if model.error is not None:
            return None
        book = checker.books.book(model, sim.book_key, sim.portfolio)
        return book.var if book.priced else None  # a held ticker unpriced: the priced part's VaR is no book's

    # -- stress and dashboard --------------------------------------------------------------------------------

    @_typed_store_errors
    def stress_test(self, trades: Iterable[Any] | None = None) -> dict[str, Any]:
        """Stressed VaR and the P&L of every named scenario of the settings, for the current holdings (or for
        the holdings after the approved trades of the ``trades`` basket).

        Returns ``{"portfolio_id", "market_version", "equity", "var", "stressed_var", "var_confidence",
        "var_horizon_days", "stressed_var99", "stressed_matrix_version", "stressed_source", "stressed_var_limit",
        "scenarios": [{"name", "description", "pnl", "pnl_pct", "equity_after"}]}``
        (dollars; pnl_pct is a fraction of equity, None when equity <= 0). Raises the typed store errors.
        """
        now = self.clock()
        view = read_gate_view(self.store, self.portfolio_id, now, memo=self.memo)
        checker = self.checker_for(view)  # this view's limits, whatever other threads read meanwhile
        limits, horizon_bars = checker.limits, checker.horizon_bars
        sim = Sim.from_view(view)
        _raise_first(sim.errors, ("market", "portfolio", "limits"))
        assert sim.header is not None and sim.portfolio is not None
        if trades is not None:
            for n, (ticker, qty, side) in enumerate(_trade_tuple(t) for t in trades):
                _decision, plan = checker.evaluate(sim, ticker, qty, side, now, pending_orders=n)
                if plan is not None:
                    sim.apply(plan)
        model = self.models.get(sim.header)
        if model.error is not None:
            raise model.error
        book = checker.books.book(model, sim.book_key, sim.portfolio)
        if book.missing:
            raise CorruptDataError(f"no usable price for held {', '.join(book.missing)}: cannot stress")
        stressed_model = self.models.stressed(model)  # aligned once per (market, stressed version)
        version, stressed = stressed_model.version, stressed_model.cov
        # the worse of the crisis matrix and of today's correlations at multiplied volatilities, as the gate and
        # the monitor take it; the stressed matrix validated here (read on demand, not cached), today's was
        # checked with the model (model.error above)
        multiplier = self.settings.model.stress_vol_multiplier
        math_logic.check_covariance(stressed)
        stressed_var = math_logic.get_stressed_var(
            book.exposures, stressed, 1.0, limits.var_confidence, horizon_bars,
            cov=model.cov, vol_multiplier=multiplier, validate=False,
        )  # fmt: skip
        stressed_var99 = math_logic.get_stressed_var(
            book.exposures, stressed, 1.0, REPORTED_CONFIDENCES[-1], horizon_bars,
            cov=model.cov, vol_multiplier=multiplier, validate=False,
        )  # fmt: skip
        equity = float(sim.portfolio.cash) + book.market_value
        scenarios = []
        for name, scenario in self.settings.stress_scenarios.items():
            default = float(scenario.shocks.get("*", 0.0))
            shocks = np.array([float(scenario.shocks.get(t, default)) for t in model.header.tickers])
            pnl = float(book.exposures @ shocks)
            scenarios.append(
                {
                    "name": name,
                    "description": scenario.description,
                    "pnl": pnl,
                    "pnl_pct": pnl / equity if equity > 0 else None,
                    "equity_after": equity + pnl,
                }
            )
        return {
            "portfolio_id": self.portfolio_id,
            "market_version": model.header.version,
            "equity": equity,
            "var": book.var,
            "stressed_var": stressed_var,
            "stressed_var99": stressed_var99,
            "stressed_matrix_version": version,
            "stressed_source": {
                **stressed_model.meta,
                "version": version,
                "scale": stressed_model.scale,
                "read_bars_per_day": self.settings.model.bars_per_day,
            },
            "stressed_var_limit": None if limits.stressed_var_limit is None else float(limits.stressed_var_limit),
            "var_confidence": limits.var_confidence,
            "var_horizon_days": limits.var_horizon_days,
            "scenarios": scenarios,
        }

    @_typed_store_errors
    def get_dashboard_metrics(self) -> pd.DataFrame:
        """One row per open position, portfolio totals in ``df.attrs["totals"]``.

        Columns: ticker, qty, avg_price, last, market_value, weight (exposure / equity), unrealized_pnl,
        realized_pnl, daily_vol (one-bar vol x sqrt(bars_per_day)), marginal_var (VaR per extra dollar),
        component_var (dollars; the column sums to the VaR), component_share (component / VaR).

        ``df.attrs["totals"]``: {portfolio_id, account_type, market_version, market_ts, cash, equity,
        market_value, gross_exposure, net_exposure, leverage, unrealized_pnl, realized_pnl, fees_paid, var,
        cvar, var_limit, var_utilization, var_confidence, var_horizon_days, margin_used, margin_level,
        trading_state, missing_prices}. Read it right after the call (pandas drops ``attrs`` in some
        operations). Raises the typed store errors (StoreEmptyError, CorruptDataError, ...).
        """
        now = self.clock()
        view = read_gate_view(self.store, self.portfolio_id, now, memo=self.memo)
        checker = self.checker_for(view)  # this view's limits, whatever other threads read meanwhile
        limits = checker.limits
        _raise_first(view.errors, ("market", "portfolio", "limits"))
        assert view.header is not None and view.portfolio is not None
        model = self.models.get(view.header)
        if model.error is not None:
            raise model.error
        header, portfolio = model.header, view.portfolio
        valuation = value_portfolio(portfolio, header)
        book = checker.books.book(model, view.positions_key, portfolio)
        held = np.flatnonzero(valuation.qty != 0)
        daily_vol = model.daily_vol
        component = book.exposures * book.marginal
        rows = []
        for i in held:
            ticker = header.tickers[i]
            rows.append(
                {
                    "ticker": ticker,
                    "qty": int(valuation.qty[i]),
                    "avg_price": float(valuation.avg_prices[i]),
                    "last": float(header.prices[i]),
                    "market_value": float(valuation.market_values[i]),
                    "weight": float(valuation.weights[i]),
                    "unrealized_pnl": float(valuation.unrealized[i]),
                    "realized_pnl": float(portfolio.positions[ticker].realized_pnl),
                    "daily_vol": float(daily_vol[i]),
                    "marginal_var": float(book.marginal[i]),
                    "component_var": float(component[i]),
                    "component_share": float(component[i] / book.var) if book.var > 0 else 0.0,
                }
            )
        df = pd.DataFrame(rows, columns=DASHBOARD_COLUMNS)
        risk = risk_model_of(model, checker.books.method, checker.horizon_bars)  # the portfolio's VaR method
        cvar = float(risk.cvar(book.exposures, limits.var_confidence))
        var_limit = float(limits.var_limit)
        df.attrs["totals"] = {
            "portfolio_id": self.portfolio_id,
            "account_type": portfolio.account_type,
            "market_version": header.version,
            "market_ts": header.ts,
            "cash": float(portfolio.cash),
            "equity": valuation.equity,
            "market_value": valuation.market_value,
            "gross_exposure": valuation.gross_exposure,
            "net_exposure": valuation.market_value,
            "leverage": valuation.leverage,
            "unrealized_pnl": float(valuation.unrealized.sum()),
            "realized_pnl": float(portfolio.realized_pnl),
            "fees_paid": float(portfolio.fees_paid),
            "var": book.var,
            "cvar": cvar,
            "var_limit": var_limit,
            "var_utilization": book.var / var_limit,
            "var_confidence": limits.var_confidence,
            "var_horizon_days": limits.var_horizon_days,
            "margin_used": valuation.margin_used,
            "margin_level": valuation.margin_level,
            "trading_state": view.trading_state.state if view.trading_state else TradingState.HALTED,
            "missing_prices": list(valuation.missing),
        }
        return df


POSITION_FIELDS = (
    "ticker",
    "qty",
    "avg_price",
    "last",
    "market_value",
    "weight",
    "unrealized_pnl",
    "realized_pnl",
)
"""What a position is worth and has earned: the first columns of every per-position table."""
DASHBOARD_COLUMNS = (*POSITION_FIELDS, "daily_vol", "marginal_var", "component_var", "component_share")
"""Columns of :meth:`RiskManager.get_dashboard_metrics`, in order."""


# -- helpers -------------------------------------------------------------------------------------------------


def _raise_first(errors: Mapping[str, StoreError], parts: tuple[str, ...]) -> None:
    for part in parts:
        if part in errors:
            raise errors[part]


def _trade_tuple(trade: Any) -> tuple[Any, Any, Any]:
    if isinstance(trade, Mapping):
        return trade.get("ticker"), trade.get("qty"), trade.get("side")
    ticker, qty, side = trade
    return ticker, qty, side


def _basket(
    decisions: list[dict[str, Any]],
    var_before: float | None,
    var_after: float | None,
    cash_before: float | None,
    cash_after: float | None,
    positions: dict[str, int] | None,
) -> dict[str, Any]:
    approved = bool(decisions) and all(d["status"] == DecisionStatus.APPROVED for d in decisions)
    return {
        "status": (DecisionStatus.APPROVED if approved else DecisionStatus.REJECTED).value,
        "decisions": decisions,
        "var_before": var_before,
        "var_after": var_after,
        "delta_var": None if var_before is None or var_after is None else var_after - var_before,
        "cash_before": cash_before,
        "cash_after": cash_after,
        "positions_after": positions,
    }
