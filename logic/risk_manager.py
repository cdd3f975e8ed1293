"""The pre-trade risk gate of one portfolio: checks, atomic execution, trading states, what-if and stress.

:class:`RiskManager` is the one object the dashboard, the monitor's automated responses and scripts use to
look at a portfolio's risk and to trade it. Everything it decides is a plain, JSON-serialisable dict.

Decision (:meth:`RiskManager.check_trade_impact`, and ``decision`` inside an execution result)::

    status               "APPROVED" | "REJECTED"
    reasons              [{"code": str, "message": str}]   every failed check (codes: logic.decisions.Reason)
    portfolio_id, ticker, side ("BUY"|"SELL"|None), qty (int|None: None when the quantity is invalid)
    price                last price the market order would fill at (float|None)
    reference_price      session reference price used by the collar (float|None)
    notional, est_fees   qty * fill price and the commission (float|None)
    liquidity_cost       half-spread + square-root impact estimate, dollars (float|None)
    var_before, var_after, delta_var   parametric VaR at the limit's confidence and horizon, dollars
    marginal_var         VaR added per extra dollar of exposure to the ticker (at the limit's horizon)
    var_limit, var_confidence, var_horizon_days
    cash_before, cash_after, position_before, position_after, equity_after
    concentration_after  |position value| / equity after the trade (None when equity would be <= 0)
    margin_level_after   equity / used margin x 100 after the trade (margin accounts; None otherwise)
    trading_state        "ACTIVE" | "REDUCING" | "HALTED" (None when unreadable: treated as HALTED)
    market_version, checked_at

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

Risk model: dollar exposures ``x = qty * last`` and the one-bar (one-minute) EWMA covariance ``S`` of the
market snapshot; VaR = z * sqrt(x'Sx) * sqrt(bars_per_day * horizon_days). That is the equity-weighted form
(``weights = x / equity, value = equity``) of engine.math_logic, but also defined when equity is not positive.
The gate refuses a trade on the VaR limit only when the trade *adds* VaR (a trade that lowers VaR passes that
check even above the limit), and on concentration / margin only trades that grow the position / the gross
exposure: risk-reducing trades must stay possible when a limit is already breached.

Hot path: :meth:`RiskManager.check_trade_impact` reads the market header (no matrix), the reference prices,
the portfolio, its trading state and the order-rate count in one round trip (one read-only Lua script, see
:meth:`engine.store.Store.read_trade_view`; the positions travel only when their revision token changed).
The covariance is cached in process keyed by the market (version, time); it is read in full and checked for
positive semi-definiteness only when that key changes. VaR, variance and the marginal VaR vector of the
holdings are cached per (market key, holdings revision); the VaR change of a trade is the O(N) incremental
formula (:func:`engine.math_logic.incremental_var_single`).

Execution: WATCH the portfolio's keys, read the book, re-run every check on the watched state, MULTI the
fill (cash, position, realized P&L, fees, trade log record, idempotency record, order-rate entry), EXEC. On
a WatchError (another trade got in first) it starts again, at most :data:`MAX_ATTEMPTS` times with jittered
backoff; after that the order is REJECTED with ``RETRY_EXHAUSTED`` and nothing is traded. Rejected
executions are recorded in the trade log too, in the same watched transaction (so a caller cannot get a
rejection while another caller's fill of the same client order id commits); they do not claim the client
order id: a rejected order may be sent again with the same id. check_trade_impact never writes.

The market snapshot itself is not WATCHed: the decision and the fill use one consistent snapshot read in the
transaction, and a market tick landing meanwhile must not abort (and, with a fast feed, starve) trading.

Fail closed: any store error (unreachable, empty, corrupt) and any missing or unreadable trading state make
every trade REJECTED with a coded reason; risk data reads (dashboard metrics, stress) raise the typed errors
of :mod:`engine.errors` instead, for the page to show with their ``fix``.
"""

from __future__ import annotations

import functools
import math
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import redis

from engine import math_logic
from engine.errors import CorruptDataError, RiskdeskError, StoreError, StoreUnavailableError
from engine.redis_server import connect
from engine.settings import Asset, Limits, Settings, load_settings, valid_symbol
from engine.store import (
    TRADING_STATES,
    Float64Array,
    MarketHeader,
    MarketSnapshot,
    PortfolioKeys,
    PortfolioState,
    Position,
    Store,
    TradeView,
    TradingStatus,
)
from logic.decisions import Reason, book_fill, commission, fill_price, parse_quantity, parse_side, reason
from logic.valuation import value_portfolio

Clock = Callable[[], float]
T = TypeVar("T")

MAX_ATTEMPTS = 100
"""Transaction attempts of one execute_trade before it gives up with RETRY_EXHAUSTED."""
BACKOFF_MAX_SECONDS = 0.01
"""Upper bound of the random sleep between two attempts (doubles from 0.25 ms up to this)."""
RATE_WINDOW_SECONDS = 60.0
"""The order-rate throttle counts fills in this trailing window (``max_orders_per_minute``)."""
BOOK_CACHE_SIZE = 16
"""Holdings risk (VaR, variance, marginal VaR) kept per (market key, holdings): a few books are plenty."""
SYSTEM_ACTOR = "system"
_DEFAULT_ASSET = Asset(price=1.0, annual_vol=1.0)
"""Liquidity parameters (avg daily volume, spread) of tickers the settings do not list (added at run time)."""


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
            raise CorruptDataError(f"Redis refused a read: {exc}") from exc

    return wrapper


# -- cached model state --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Model:
    """The covariance of one market snapshot, checked once."""

    key: tuple[int, float]
    """(version, ts) of the snapshot: a warm-up --reset restarts versions, the time still differs."""
    header: MarketHeader
    cov: Float64Array
    index: Mapping[str, int]
    daily_vol: Float64Array
    """One-bar volatility of each ticker scaled to a day: sqrt(S_ii) * sqrt(bars_per_day)."""
    error: StoreError | None
    """Set when the matrix is unusable (not symmetric PSD, not finite): every trade fails closed."""


@dataclass(frozen=True)
class _Book:
    """Risk of one set of holdings at one market snapshot (cash is not part of it)."""

    exposures: Float64Array
    """Dollar exposure per ticker, matrix order."""
    market_value: float
    gross_exposure: float
    missing: tuple[str, ...]
    variance: float
    """xᵀΣx of one bar, dollars squared."""
    var: float
    """VaR at the limit's confidence and horizon, dollars."""
    marginal: Float64Array
    """dVaR/dx per ticker at the limit's confidence and horizon."""


@dataclass
class _Sim:
    """What one evaluation needs, mutable only inside what_if (cumulative baskets)."""

    header: MarketHeader | None
    reference: Mapping[str, float] | None
    portfolio: PortfolioState | None
    book_key: Any
    trading_state: TradingStatus | None
    recent_orders: int
    errors: Mapping[str, StoreError]


@dataclass(frozen=True)
class _Plan:
    """An approved trade's bookkeeping, for execute_trade to write."""

    ticker: str
    side: str
    qty: int
    price: Decimal
    cash_before: Decimal
    position_before: Position | None
    position_after: Position
    portfolio_before: PortfolioState
    now: float
    realized: Decimal
    notional: Decimal
    fee: Decimal
    model: _Model
    book: _Book
    """Risk of the holdings before the trade, from which the book after it is derived."""
    index: int

    @functools.cached_property
    def portfolio_after(self) -> PortfolioState:
        """The portfolio after the fill (built only when needed: copying a big book costs time)."""
        before = self.portfolio_before
        positions = dict(before.positions)
        if self.position_after.qty == 0 and self.position_after.realized_pnl == 0:
            positions.pop(self.ticker, None)
        else:
            positions[self.ticker] = self.position_after
        cash_delta = (-self.notional if self.side == "BUY" else self.notional) - self.fee
        return replace(
            before,
            cash=before.cash + cash_delta,
            positions=positions,
            realized_pnl=before.realized_pnl + self.realized,
            fees_paid=before.fees_paid + self.fee,
            updated_at=self.now,
        )


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
        Zero-argument callable returning epoch seconds (default ``time.time``): staleness, the order-rate
        window and audit times use it.

    One instance may be shared by threads (the dashboard does): the caches are replaced atomically.
    """

    def __init__(
        self,
        redis_client_or_url: redis.Redis | str | None = None,
        portfolio_id: str = "main",
        settings: Settings | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        if redis_client_or_url is None:
            client = connect(self.settings)
        elif isinstance(redis_client_or_url, str):
            client = connect(redis_client_or_url)
        else:
            client = redis_client_or_url
        self.client = client
        self.store = Store(client)
        self.portfolio_id = portfolio_id
        self.clock: Clock = clock or time.time
        self.limits: Limits = self.settings.limits_for(portfolio_id)
        self.horizon_bars = self.settings.model.bars_per_day * self.limits.var_horizon_days
        self.last_error: RiskdeskError | None = None
        """The typed error behind the last ``None`` returned by get_market_data / get_portfolio_state."""
        self._model: _Model | None = None
        self._model_lock = threading.Lock()
        self._books: OrderedDict[Any, _Book] = OrderedDict()
        self._books_lock = threading.Lock()
        self._memo: dict[Any, Any] = {}

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
            view = self.store.read_trade_view(self.portfolio_id, self.clock(), memo=self._memo)
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
            state="HALTED",
            reason=f"trading state unreadable, failing closed: {detail}",
            actor=SYSTEM_ACTOR,
            ts=self.clock(),
        )

    def set_trading_state(self, state: str, reason: str, actor: str) -> TradingStatus:
        """Persist ACTIVE / REDUCING / HALTED with who and why, and append an audit record (one transaction).

        Raises ``ValueError`` for an unknown state or an empty reason or actor (a kill switch is changed only
        deliberately), and the typed store errors when Redis cannot be written.
        """
        state = str(state).strip().upper()
        if state not in TRADING_STATES:
            raise ValueError(f"unknown trading state {state!r}; use one of {', '.join(TRADING_STATES)}")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("a trading state change needs a reason")
        if not isinstance(actor, str) or not actor.strip():
            raise ValueError("a trading state change needs an actor (who made it)")
        previous = self.get_trading_state()
        now = self.clock()
        new = TradingStatus(state=state, reason=reason.strip(), actor=actor.strip(), ts=now)
        record = {
            "ts": now,
            "actor": new.actor,
            "action": "set_trading_state",
            "state": state,
            "previous": previous.state,
            "reason": new.reason,
        }
        try:
            pipe = self.client.pipeline(transaction=True)
            self.store.write_trading_state(self.portfolio_id, new, pipe)
            self.store.append_audit(PortfolioKeys(self.portfolio_id).audit, record, pipe)
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"could not write the trading state: {exc}") from exc
        return new

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

    def check_trade_impact(self, ticker: Any, qty: Any, side: Any) -> dict[str, Any]:
        """Run every pre-trade check on the current state and return the decision (see the module doc).

        Never writes to the store and never raises for bad input or store trouble: those are reasons.
        """
        now = self.clock()
        try:
            view = self.store.read_trade_view(self.portfolio_id, now - RATE_WINDOW_SECONDS, memo=self._memo)
        except StoreError as exc:
            return self._store_failure_decision(ticker, qty, side, exc, now)
        decision, _plan = self._evaluate(self._sim_from_view(view), ticker, qty, side, now)
        return decision

    def execute_trade(
        self, ticker: Any, qty: Any, side: Any, client_order_id: str | None = None, actor: str = "trader"
    ) -> dict[str, Any]:
        """Re-check and trade atomically at the last price; the same ``client_order_id`` trades at most once.

        Returns the execution result described in the module doc. Never raises for bad input or store
        trouble: the result is REJECTED with the reason.
        """
        if client_order_id is not None and not (
            isinstance(client_order_id, str) and 0 < len(client_order_id) <= 128
        ):
            now = self.clock()
            decision, _ = self._evaluate(_Sim(None, None, None, None, None, 0, {}), ticker, qty, side, now)
            decision["status"] = "REJECTED"
            decision["reasons"] = [
                reason(
                    Reason.BAD_ORDER_ID,
                    "client_order_id must be a non-empty string of at most 128 characters",
                )
            ]
            return self._result("REJECTED", decision, None, None, actor, now)
        keys = self.store.trading_watch_keys(self.portfolio_id)
        now = self.clock()
        for attempt in range(MAX_ATTEMPTS):
            try:
                with self.client.pipeline(transaction=True) as pipe:
                    pipe.watch(*keys)
                    now = self.clock()  # after WATCH: whatever happens from here on aborts the EXEC
                    view = self.store.read_trade_view(
                        self.portfolio_id, now - RATE_WINDOW_SECONDS, client_order_id, memo=self._memo
                    )
                    if view.order is not None:
                        pipe.unwatch()
                        return {**view.order, "duplicate": True}
                    decision, plan = self._evaluate(self._sim_from_view(view), ticker, qty, side, now)
                    status = "FILLED" if plan is not None else "REJECTED"
                    result = self._result(status, decision, plan, client_order_id, actor, now)
                    if plan is None and view.portfolio is None:
                        pipe.unwatch()  # no such portfolio: nothing to record the rejection in
                        return result
                    pipe.multi()
                    if plan is None:
                        self.store.append_trade_record(self.portfolio_id, _without_duplicate(result), pipe)
                    else:
                        rev = self.store.write_fill(
                            plan.portfolio_after,
                            plan.ticker,
                            plan.position_after,
                            _without_duplicate(result),
                            trade_id=result["fill"]["trade_id"],
                            client_order_id=client_order_id,
                            ts=now,
                            rate_window_seconds=RATE_WINDOW_SECONDS,
                            pipe=pipe,
                        )
                    pipe.execute()
                    if plan is not None:
                        self._remember_fill(plan, rev)
                    return result
            except redis.WatchError:
                time.sleep(random.uniform(0.0, min(0.00025 * 2**attempt, BACKOFF_MAX_SECONDS)))
            except StoreError as exc:
                return self._result(
                    "REJECTED",
                    self._store_failure_decision(ticker, qty, side, exc, now),
                    None,
                    client_order_id,
                    actor,
                    now,
                )
            except redis.RedisError as exc:
                failure = StoreUnavailableError(f"Redis failed during the trade: {exc}")
                return self._result(
                    "REJECTED",
                    self._store_failure_decision(ticker, qty, side, failure, now),
                    None,
                    client_order_id,
                    actor,
                    now,
                )
        now = self.clock()
        if client_order_id is not None:
            try:  # the same id may have been filled by a concurrent caller meanwhile: that is the answer
                stored = self.store.read_order(self.portfolio_id, client_order_id)
            except (StoreError, redis.RedisError):
                stored = None
            if stored is not None:
                return {**stored, "duplicate": True}
        decision = self._store_failure_decision(ticker, qty, side, None, now)
        decision["reasons"] = [
            reason(
                Reason.RETRY_EXHAUSTED,
                f"the portfolio kept changing under {MAX_ATTEMPTS} attempts (heavy concurrent trading); "
                "nothing was traded: send the order again",
            )
        ]
        result = self._result("REJECTED", decision, None, client_order_id, actor, now)
        try:
            self.store.append_trade_record(self.portfolio_id, _without_duplicate(result))
        except (StoreError, redis.RedisError):
            pass  # the caller still gets the rejection; the log is best effort when Redis is failing
        return result

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
            view = self.store.read_trade_view(self.portfolio_id, now - RATE_WINDOW_SECONDS, memo=self._memo)
        except StoreError as exc:
            decisions = [self._store_failure_decision(t, q, s, exc, now) for t, q, s in items]
            return _basket(decisions, None, None, None, None, None)
        sim = self._sim_from_view(view)
        var_before = self._sim_var(sim)
        cash_before = float(sim.portfolio.cash) if sim.portfolio else None
        decisions = []
        for n, (ticker, qty, side) in enumerate(items):
            decision, plan = self._evaluate(sim, ticker, qty, side, now, pending_orders=n)
            decisions.append(decision)
            if plan is not None:
                sim.portfolio = plan.portfolio_after
                sim.book_key = _holdings_key(plan.portfolio_after)
        var_after = self._sim_var(sim)
        positions = None
        if sim.portfolio is not None:
            positions = {t: p.qty for t, p in sim.portfolio.positions.items() if p.qty != 0}
        cash_after = float(sim.portfolio.cash) if sim.portfolio else None
        return _basket(decisions, var_before, var_after, cash_before, cash_after, positions)

    def _sim_var(self, sim: _Sim) -> float | None:
        if sim.errors.get("market") or sim.portfolio is None or sim.header is None:
            return None
        try:
            model = self._model_for(sim.header)
        except (StoreError, redis.RedisError):
            return None  # the decisions carry the reason
        if model.error is not None:
            return None
        return self._book(model, sim.book_key, sim.portfolio).var

    # -- stress and dashboard --------------------------------------------------------------------------------

    @_typed_store_errors
    def stress_test(self, trades: Iterable[Any] | None = None) -> dict[str, Any]:
        """Stressed VaR and the P&L of every named scenario of the settings, for the current holdings (or for
        the holdings after the approved trades of the ``trades`` basket).

        Returns ``{"portfolio_id", "market_version", "equity", "var", "stressed_var", "var_confidence",
        "var_horizon_days", "stressed_var99", "stressed_matrix_version",
        "scenarios": [{"name", "description", "pnl", "pnl_pct", "equity_after"}]}``
        (dollars; pnl_pct is a fraction of equity, None when equity <= 0). Raises the typed store errors.
        """
        now = self.clock()
        view = self.store.read_trade_view(self.portfolio_id, now - RATE_WINDOW_SECONDS, memo=self._memo)
        sim = self._sim_from_view(view)
        _raise_first(sim.errors, ("market", "portfolio"))
        assert sim.header is not None and sim.portfolio is not None
        if trades is not None:
            for n, (ticker, qty, side) in enumerate(_trade_tuple(t) for t in trades):
                _decision, plan = self._evaluate(sim, ticker, qty, side, now, pending_orders=n)
                if plan is not None:
                    sim.portfolio = plan.portfolio_after
                    sim.book_key = _holdings_key(plan.portfolio_after)
        model = self._model_for(sim.header)
        if model.error is not None:
            raise model.error
        book = self._book(model, sim.book_key, sim.portfolio)
        if book.missing:
            raise CorruptDataError(f"no usable price for held {', '.join(book.missing)}: cannot stress")
        version, stressed_tickers, stressed = self.store.read_stressed()
        order = _reorder(stressed_tickers, model.header.tickers)
        if order is None:
            raise CorruptDataError(
                "the stressed matrix does not cover the market's tickers; re-run `python warmup.py`"
            )
        stressed = stressed[np.ix_(order, order)]
        stressed_var = math_logic.get_stressed_var(
            book.exposures, stressed, 1.0, self.limits.var_confidence, self.horizon_bars
        )  # validated: read on demand, not cached
        stressed_var99 = math_logic.get_stressed_var(
            book.exposures, stressed, 1.0, 0.99, self.horizon_bars, validate=False
        )
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
            "var_confidence": self.limits.var_confidence,
            "var_horizon_days": self.limits.var_horizon_days,
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
        view = self.store.read_trade_view(self.portfolio_id, now - RATE_WINDOW_SECONDS, memo=self._memo)
        _raise_first(view.errors, ("market", "portfolio"))
        assert view.header is not None and view.portfolio is not None
        model = self._model_for(view.header)
        if model.error is not None:
            raise model.error
        header, portfolio = model.header, view.portfolio
        valuation = value_portfolio(portfolio, header)
        book = self._book(model, view.positions_key, portfolio)
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
        cvar = float(
            math_logic.get_portfolio_cvar(
                book.exposures, model.cov, 1.0, self.limits.var_confidence, self.horizon_bars, validate=False
            )
        )
        var_limit = float(self.limits.var_limit)
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
            "var_confidence": self.limits.var_confidence,
            "var_horizon_days": self.limits.var_horizon_days,
            "margin_used": valuation.margin_used,
            "margin_level": valuation.margin_level,
            "trading_state": view.trading_state.state if view.trading_state else "HALTED",
            "missing_prices": list(valuation.missing),
        }
        return df

    # -- model caches ----------------------------------------------------------------------------------------

    def _model_for(self, header: MarketHeader) -> _Model:
        """The cached covariance for ``header``'s snapshot; reads the full matrix only when it changed."""
        model = self._model
        if model is not None and model.key == (header.version, header.ts):
            return model
        with self._model_lock:
            model = self._model
            if model is not None and model.key == (header.version, header.ts):
                return model
            snap = self.store.read_market()  # may be newer than header: its prices then come with it
            error: StoreError | None = None
            try:  # the O(N^3) symmetric-PSD check, once per version; every later call passes validate=False
                math_logic.get_portfolio_var(np.zeros(len(snap.tickers)), snap.cov, 1.0, validate=True)
            except ValueError as exc:
                error = CorruptDataError(f"the market covariance (version {snap.version}) is unusable: {exc}")
            daily_vol = np.zeros(len(snap.tickers))
            if error is None:
                one_bar = np.sqrt(np.clip(np.diagonal(snap.cov), 0.0, None))
                daily_vol = np.asarray(math_logic.scale_volatility(one_bar, self.settings.model.bars_per_day))
            header_of_snap = MarketHeader(snap.version, snap.ts, snap.tickers, snap.prices, snap.price_ts)
            model = _Model(
                key=(snap.version, snap.ts),
                header=header_of_snap,
                cov=snap.cov,
                index={t: i for i, t in enumerate(snap.tickers)},
                daily_vol=daily_vol,
                error=error,
            )
            self._model = model
            return model

    def _book(self, model: _Model, positions_key: Any, portfolio: PortfolioState) -> _Book:
        key = (model.key, positions_key)
        book = self._books.get(key)
        if book is not None:
            return book
        valuation = value_portfolio(portfolio, model.header)
        book = self._risk_of(model, np.array(valuation.market_values, dtype=float), valuation.missing)
        self._cache_book(key, book)
        return book

    def _remember_fill(self, plan: _Plan, rev: str) -> None:
        """After our own fill: cache the new positions and their risk under the new positions token, so the
        next check neither reads nor values the book again (O(N²) here instead of valuing every position)."""
        self.store.remember_positions(self._memo, self.portfolio_id, rev, plan.portfolio_after.positions)
        x = plan.book.exposures.copy()
        x[plan.index] = float(plan.position_after.qty) * float(plan.model.header.prices[plan.index])
        self._cache_book((plan.model.key, rev.encode()), self._risk_of(plan.model, x, plan.book.missing))

    def _risk_of(self, model: _Model, x: Float64Array, missing: tuple[str, ...]) -> _Book:
        var, sigma = math_logic.get_portfolio_var(
            x, model.cov, 1.0, self.limits.var_confidence, self.horizon_bars, validate=False
        )
        marginal = math_logic.calculate_marginal_var(
            x, model.cov, 1.0, self.limits.var_confidence, horizon=self.horizon_bars, validate=False
        )
        return _Book(
            exposures=x,
            market_value=float(x.sum()),
            gross_exposure=float(np.abs(x).sum()),
            missing=missing,
            variance=float(sigma) ** 2,
            var=float(var),
            marginal=marginal,
        )

    def _cache_book(self, key: Any, book: _Book) -> None:
        with self._books_lock:
            self._books[key] = book
            while len(self._books) > BOOK_CACHE_SIZE:
                self._books.popitem(last=False)

    # -- the checks ------------------------------------------------------------------------------------------

    def _sim_from_view(self, view: TradeView) -> _Sim:
        return _Sim(
            view.header,
            view.reference,
            view.portfolio,
            view.positions_key,
            view.trading_state,
            view.recent_orders,
            view.errors,
        )

    def _evaluate(
        self, sim: _Sim, ticker: Any, qty: Any, side: Any, now: float, pending_orders: int = 0
    ) -> tuple[dict[str, Any], _Plan | None]:
        """Every check of SPEC.md section 6 on ``sim``; returns the decision and, when approved, the plan."""
        limits = self.limits
        reasons: list[dict[str, str]] = []
        d = _empty_decision(self.portfolio_id, ticker, limits, now)

        # store health: anything unreadable fails closed
        for part in ("market", "portfolio", "reference", "rate", "order"):
            error = sim.errors.get(part)
            if error is not None:
                reasons.append(_store_reason(error))
        header = sim.header
        model: _Model | None = None
        if header is not None:
            try:
                model = self._model_for(header)
            except StoreError as exc:
                reasons.append(_store_reason(exc))
            except redis.RedisError as exc:
                reasons.append(_store_reason(StoreUnavailableError(f"Redis is unreachable: {exc}")))
            else:
                if model.error is not None:
                    reasons.append(_store_reason(model.error))
                header = model.header
                d["market_version"] = header.version

        # trading state (fail closed)
        trading = sim.trading_state
        state = trading.state if trading is not None else None
        d["trading_state"] = state
        if trading is None:
            error = sim.errors.get("trading_state")
            detail = error.detail if error is not None else "missing"
            reasons.append(
                reason(Reason.TRADING_HALTED, f"trading state unreadable ({detail}): treated as HALTED")
            )
        elif state == "HALTED":
            reasons.append(
                reason(
                    Reason.TRADING_HALTED,
                    f"trading is HALTED ({trading.reason or 'no reason given'}, by "
                    f"{trading.actor or 'unknown'})",
                )
            )

        # the order itself
        shares, why = parse_quantity(qty, limits.max_order_qty)
        if why is not None:
            reasons.append(reason(Reason.BAD_QUANTITY, why))
        d["qty"] = shares
        side_n = parse_side(side)
        if side_n is None:
            reasons.append(reason(Reason.BAD_SIDE, f"side must be BUY or SELL, got {side!r}"))
        d["side"] = side_n
        index: int | None = None
        if not valid_symbol(ticker):
            reasons.append(reason(Reason.UNKNOWN_TICKER, f"{ticker!r} is not a ticker symbol"))
        elif header is not None and model is not None:
            index = model.index.get(ticker)
            if index is None:
                reasons.append(reason(Reason.UNKNOWN_TICKER, f"{ticker} is not in the market data universe"))

        # the price
        price: float | None = None
        if index is not None and header is not None:
            last = float(header.prices[index])
            if not math.isfinite(last) or last <= 0:
                reasons.append(reason(Reason.MISSING_PRICE, f"{ticker} has no usable price ({last!r})"))
            else:
                price = last
                d["price"] = last
                age = now - float(header.price_ts[index])
                if not math.isfinite(age) or age > limits.stale_price_seconds:
                    reasons.append(
                        reason(
                            Reason.STALE_PRICE,
                            f"{ticker} price is {age:.0f} s old (limit {limits.stale_price_seconds:g} s)",
                        )
                    )
                if sim.reference is not None:
                    ref = sim.reference.get(ticker)
                    if ref is None or not math.isfinite(ref) or ref <= 0:
                        reasons.append(
                            reason(
                                Reason.PRICE_COLLAR,
                                f"{ticker} has no session reference price: the collar cannot be checked",
                            )
                        )
                    else:
                        d["reference_price"] = ref
                        move = last / ref - 1.0
                        if abs(move) > limits.price_collar_pct:
                            reasons.append(
                                reason(
                                    Reason.PRICE_COLLAR,
                                    f"{ticker} last {last:g} is {move:+.1%} from the reference "
                                    f"{ref:g} (collar ±{limits.price_collar_pct:.0%})",
                                )
                            )

        # order-rate throttle
        if sim.recent_orders + pending_orders >= limits.max_orders_per_minute:
            reasons.append(
                reason(
                    Reason.RATE_LIMIT,
                    f"{sim.recent_orders + pending_orders} orders in the last minute (limit "
                    f"{limits.max_orders_per_minute})",
                )
            )

        portfolio = sim.portfolio
        plan: _Plan | None = None
        if portfolio is not None:
            d["cash_before"] = float(portfolio.cash)
            held = portfolio.positions.get(ticker) if isinstance(ticker, str) else None
            q0 = held.qty if held is not None else 0
            d["position_before"] = q0
            if state == "REDUCING" and shares is not None and side_n is not None:
                q1 = q0 + (shares if side_n == "BUY" else -shares)
                if not (q0 != 0 and abs(q1) < abs(q0) and q0 * q1 >= 0):
                    reasons.append(
                        reason(
                            Reason.REDUCING_ONLY,
                            f"trading is REDUCING: only trades that shrink the {ticker} position "
                            f"({q0:+d}) toward zero pass",
                        )
                    )
            if (
                shares is not None
                and side_n is not None
                and price is not None
                and model is not None
                and model.error is None
                and index is not None
            ):
                plan = self._check_risk(
                    d, reasons, model, sim, portfolio, held, index, ticker, shares, side_n, price, now
                )

        d["reasons"] = reasons
        d["status"] = "REJECTED" if reasons else "APPROVED"
        return d, (plan if not reasons else None)

    def _check_risk(
        self,
        d: dict[str, Any],
        reasons: list[dict[str, str]],
        model: _Model,
        sim: _Sim,
        portfolio: PortfolioState,
        held: Position | None,
        index: int,
        ticker: str,
        shares: int,
        side: str,
        price: float,
        now: float,
    ) -> _Plan:
        """Money, inventory, margin, VaR and concentration checks of a well-formed order."""
        limits = self.limits
        px = fill_price(price)
        fee = commission(self.settings.fees, shares, px)
        booking = book_fill(held, side, shares, px, fee)
        q0 = held.qty if held is not None else 0
        q1 = booking.position.qty
        cash_after = portfolio.cash + booking.cash_delta
        d.update(
            notional=float(booking.notional),
            est_fees=float(fee),
            cash_after=float(cash_after),
            position_after=q1,
        )

        if booking.notional > limits.max_order_notional:
            reasons.append(
                reason(
                    Reason.MAX_NOTIONAL,
                    f"order notional {booking.notional:,.2f} exceeds the limit "
                    f"{limits.max_order_notional:,.2f}",
                )
            )
        cash_account = portfolio.account_type == "cash"
        if cash_account and side == "SELL":
            if q0 <= 0:
                reasons.append(
                    reason(Reason.SHORT_NOT_ALLOWED, f"no {ticker} held: a cash account cannot sell short")
                )
            elif shares > q0:
                reasons.append(reason(Reason.OVERSELL, f"selling {shares:,} {ticker} but only {q0:,} held"))
        if cash_account and cash_after < 0:
            needed = -booking.cash_delta
            reasons.append(
                reason(
                    Reason.INSUFFICIENT_CASH,
                    f"cost plus fees {needed:,.2f} exceed the cash {portfolio.cash:,.2f}",
                )
            )

        book = self._book(model, sim.book_key, portfolio)
        if book.missing:
            reasons.append(
                reason(
                    Reason.MISSING_PRICE,
                    f"no usable price for held {', '.join(book.missing)}: risk cannot be computed",
                )
            )
        signed = shares if side == "BUY" else -shares
        delta = signed * price
        x_i = float(book.exposures[index])
        equity_after = float(cash_after) + book.market_value + delta
        gross_after = book.gross_exposure - abs(x_i) + abs(x_i + delta)
        d["equity_after"] = equity_after

        # VaR: O(N) incremental update of the cached holdings' variance
        delta_var = math_logic.incremental_var_single(
            index,
            delta,
            book.exposures,
            model.cov,
            1.0,
            book.variance,
            limits.var_confidence,
            horizon=self.horizon_bars,
        )
        var_after = book.var + delta_var
        d.update(
            var_before=book.var,
            var_after=var_after,
            delta_var=delta_var,
            marginal_var=float(book.marginal[index]),
        )
        if var_after > float(limits.var_limit) and delta_var > 0:
            reasons.append(
                reason(
                    Reason.VAR_LIMIT,
                    f"VaR would rise from {book.var:,.0f} to {var_after:,.0f}, above the limit "
                    f"{limits.var_limit:,.0f} ({limits.var_confidence:.0%}, "
                    f"{limits.var_horizon_days:g} d)",
                )
            )

        grows = abs(q1) > abs(q0)
        if equity_after > 0:
            concentration = abs(x_i + delta) / equity_after
            d["concentration_after"] = concentration
            if concentration > limits.max_concentration and grows:
                reasons.append(
                    reason(
                        Reason.CONCENTRATION,
                        f"{ticker} would be {concentration:.1%} of equity (limit "
                        f"{limits.max_concentration:.0%})",
                    )
                )
        elif grows:
            reasons.append(
                reason(Reason.CONCENTRATION, f"equity would be {equity_after:,.2f}: no position may grow")
            )

        if portfolio.account_type == "margin":
            used_after = gross_after * portfolio.initial_margin
            d["margin_level_after"] = equity_after / used_after * 100.0 if used_after > 0 else None
            if used_after > equity_after and gross_after > book.gross_exposure:
                reasons.append(
                    reason(
                        Reason.MARGIN,
                        f"initial margin {used_after:,.0f} ({portfolio.initial_margin:.0%} of gross "
                        f"{gross_after:,.0f}) would exceed equity {equity_after:,.0f}",
                    )
                )

        asset = self.settings.universe.assets.get(ticker, _DEFAULT_ASSET)
        half_spread = price * asset.spread_bps / 20_000.0
        daily_vol = float(model.daily_vol[index])
        d["liquidity_cost"] = float(
            math_logic.calculate_liquidity_var(
                shares,
                price,
                price - half_spread,
                price + half_spread,
                asset.avg_daily_volume,
                daily_vol=daily_vol,
                impact_coef=self.settings.model.liquidity_impact_coef,
            )
        )

        return _Plan(
            ticker=ticker,
            side=side,
            qty=shares,
            price=px,
            cash_before=portfolio.cash,
            position_before=held,
            position_after=booking.position,
            portfolio_before=portfolio,
            now=now,
            realized=booking.realized,
            notional=booking.notional,
            fee=fee,
            model=model,
            book=book,
            index=index,
        )

    # -- results ---------------------------------------------------------------------------------------------

    def _store_failure_decision(
        self, ticker: Any, qty: Any, side: Any, error: StoreError | None, now: float
    ) -> dict[str, Any]:
        d = _empty_decision(self.portfolio_id, ticker, self.limits, now)
        shares, _ = parse_quantity(qty, self.limits.max_order_qty)
        d.update(
            qty=shares,
            side=parse_side(side),
            status="REJECTED",
            reasons=[_store_reason(error)] if error is not None else [],
        )
        return d

    def _result(
        self,
        status: str,
        decision: dict[str, Any],
        plan: _Plan | None,
        client_order_id: str | None,
        actor: str,
        now: float,
    ) -> dict[str, Any]:
        fill = None
        if plan is not None:
            before = plan.position_before
            fill = {
                "trade_id": uuid.uuid4().hex,
                "client_order_id": client_order_id,
                "portfolio_id": self.portfolio_id,
                "ticker": plan.ticker,
                "side": plan.side,
                "qty": plan.qty,
                "price": str(plan.price),
                "notional": str(plan.notional),
                "fees": str(plan.fee),
                "realized_pnl": str(plan.realized),
                "cash_before": str(plan.cash_before),
                "cash_after": str(plan.portfolio_after.cash),
                "position_before": before.qty if before is not None else 0,
                "position_after": plan.position_after.qty,
                "avg_price_before": str(before.avg_price if before is not None else Decimal(0)),
                "avg_price_after": str(plan.position_after.avg_price),
                "ts": now,
                "actor": actor,
                "market_version": decision.get("market_version"),
            }
        return {
            "status": status,
            "reasons": decision["reasons"],
            "client_order_id": client_order_id,
            "duplicate": False,
            "ts": now,
            "actor": actor,
            "decision": decision,
            "fill": fill,
        }


DASHBOARD_COLUMNS = (
    "ticker",
    "qty",
    "avg_price",
    "last",
    "market_value",
    "weight",
    "unrealized_pnl",
    "realized_pnl",
    "daily_vol",
    "marginal_var",
    "component_var",
    "component_share",
)
"""Columns of :meth:`RiskManager.get_dashboard_metrics`, in order."""


# -- helpers -------------------------------------------------------------------------------------------------


def _empty_decision(portfolio_id: str, ticker: Any, limits: Limits, now: float) -> dict[str, Any]:
    return {
        "status": "REJECTED",
        "reasons": [],
        "portfolio_id": portfolio_id,
        "ticker": ticker if isinstance(ticker, str) else repr(ticker),
        "side": None,
        "qty": None,
        "price": None,
        "reference_price": None,
        "notional": None,
        "est_fees": None,
        "liquidity_cost": None,
        "var_before": None,
        "var_after": None,
        "delta_var": None,
        "marginal_var": None,
        "var_limit": float(limits.var_limit),
        "var_confidence": limits.var_confidence,
        "var_horizon_days": limits.var_horizon_days,
        "cash_before": None,
        "cash_after": None,
        "position_before": None,
        "position_after": None,
        "equity_after": None,
        "concentration_after": None,
        "margin_level_after": None,
        "trading_state": None,
        "market_version": None,
        "checked_at": now,
    }


def _holdings_key(portfolio: PortfolioState) -> tuple[Any, ...]:
    """A cache key for simulated holdings (what-if), by content: quantities are all risk depends on."""
    return ("simulated", tuple(sorted((t, p.qty) for t, p in portfolio.positions.items() if p.qty != 0)))


def _store_reason(error: StoreError) -> dict[str, str]:
    code = error.code if error.code in Reason.__members__ else Reason.STORE_CORRUPT.value
    return {"code": code, "message": f"{error.detail} (fix: {error.fix})" if error.fix else error.detail}


def _raise_first(errors: Mapping[str, StoreError], parts: tuple[str, ...]) -> None:
    for part in parts:
        if part in errors:
            raise errors[part]


def _without_duplicate(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "duplicate"}


def _trade_tuple(trade: Any) -> tuple[Any, Any, Any]:
    if isinstance(trade, Mapping):
        return trade.get("ticker"), trade.get("qty"), trade.get("side")
    ticker, qty, side = trade
    return ticker, qty, side


def _reorder(have: tuple[str, ...], want: tuple[str, ...]) -> list[int] | None:
    index = {t: i for i, t in enumerate(have)}
    if not all(t in index for t in want):
        return None
    return [index[t] for t in want]


def _basket(
    decisions: list[dict[str, Any]],
    var_before: float | None,
    var_after: float | None,
    cash_before: float | None,
    cash_after: float | None,
    positions: dict[str, int] | None,
) -> dict[str, Any]:
    approved = bool(decisions) and all(d["status"] == "APPROVED" for d in decisions)
    return {
        "status": "APPROVED" if approved else "REJECTED",
        "decisions": decisions,
        "var_before": var_before,
        "var_after": var_after,
        "delta_var": None if var_before is None or var_after is None else var_after - var_before,
        "cash_before": cash_before,
        "cash_after": cash_after,
        "positions_after": positions,
    }
