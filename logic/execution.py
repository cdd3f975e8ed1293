"""Atomic execution of one order: re-check on a WATCHed book, then book the fill in one MULTI/EXEC.

WATCH the portfolio's keys, read the book, re-run every check on the watched state, MULTI the fill (cash,
position, realized P&L, fees, trade log record, idempotency record, order-rate entry), EXEC. On a WatchError
(another trade got in first) it starts again, at most :data:`MAX_ATTEMPTS` times with jittered backoff; after
that the order is REJECTED with ``RETRY_EXHAUSTED`` and nothing is traded. Rejected executions are recorded in
the trade log too, in the same watched transaction (so a caller cannot get a rejection while another caller's
fill of the same client order id commits); they do not claim the client order id: a rejected order may be
sent again with the same id.

The market snapshot itself is not WATCHed: the decision and the fill use one consistent snapshot read in the
transaction, and a market tick landing meanwhile must not abort (and, with a fast feed, starve) trading.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import redis

from engine.errors import StoreError, StoreUnavailableError
from engine.records import (
    Decision,
    DecisionStatus,
    ExecutionResult,
    ExecutionStatus,
    Fill,
    OrderIntent,
    ReasonCode,
)
from logic.checks import Plan, Sim
from logic.decisions import reason

if TYPE_CHECKING:
    from logic.risk_manager import RiskManager

MAX_ATTEMPTS = 100
"""Transaction attempts of one execute_trade before it gives up with RETRY_EXHAUSTED."""
BACKOFF_MAX_SECONDS = 0.01
"""Upper bound of the random sleep between two attempts (doubles from 0.25 ms up to this)."""
RATE_WINDOW_SECONDS = 60.0
"""The order-rate throttle counts fills in this trailing window (``max_orders_per_minute``)."""


def execute(
    gate: RiskManager,
    ticker: Any,
    qty: Any,
    side: Any,
    client_order_id: str | None,
    actor: str,
    intent: OrderIntent = OrderIntent.TRADE,
) -> ExecutionResult:
    """Re-check and trade atomically at the last price; the same ``client_order_id`` trades at most once.

    Never raises for bad input or store trouble: the result is REJECTED with the reason.
    """
    if client_order_id is not None and not (isinstance(client_order_id, str) and 0 < len(client_order_id) <= 128):
        now = gate.clock()
        decision, _ = gate.checker.evaluate(Sim.empty(), ticker, qty, side, now)
        decision = replace(
            decision,
            status=DecisionStatus.REJECTED,
            reasons=(
                reason(
                    ReasonCode.BAD_ORDER_ID,
                    "client_order_id must be a non-empty string of at most 128 characters",
                ),
            ),
        )
        return result_of(gate.portfolio_id, decision, None, None, actor, now)
    store = gate.store
    keys = store.trading_watch_keys(gate.portfolio_id)
    now = gate.clock()
    for attempt in range(MAX_ATTEMPTS):
        try:
            with gate.client.pipeline(transaction=True) as pipe:
                pipe.watch(*keys)
                now = gate.clock()  # after WATCH: whatever happens from here on aborts the EXEC
                view = store.read_trade_view(
                    gate.portfolio_id, now - RATE_WINDOW_SECONDS, client_order_id, memo=gate.memo
                )
                if view.order is not None:
                    pipe.unwatch()
                    return ExecutionResult.from_dict(view.order, duplicate=True)
                decision, plan = gate.checker.evaluate(Sim.from_view(view), ticker, qty, side, now, intent=intent)
                result = result_of(gate.portfolio_id, decision, plan, client_order_id, actor, now)
                if plan is None and view.portfolio is None:
                    pipe.unwatch()  # no such portfolio: nothing to record the rejection in
                    return result
                pipe.multi()
                record = result.to_dict(with_duplicate=False)
                if plan is None or result.fill is None:
                    store.append_trade_record(gate.portfolio_id, record, pipe)
                else:
                    rev = store.write_fill(
                        plan.portfolio_after,
                        plan.ticker,
                        plan.position_after,
                        record,
                        trade_id=result.fill.trade_id,
                        client_order_id=client_order_id,
                        ts=now,
                        rate_window_seconds=RATE_WINDOW_SECONDS,
                        pipe=pipe,
                    )
                pipe.execute()
                if plan is not None:
                    store.remember_positions(gate.memo, gate.portfolio_id, rev, plan.portfolio_after.positions)
                    gate.books.remember_fill(plan, rev.encode())
                return result
        except redis.WatchError:
            time.sleep(random.uniform(0.0, min(0.00025 * 2**attempt, BACKOFF_MAX_SECONDS)))
        except StoreError as exc:
            failed = gate.store_failure_decision(ticker, qty, side, exc, now)
            return result_of(gate.portfolio_id, failed, None, client_order_id, actor, now)
        except redis.RedisError as exc:
            failure = StoreUnavailableError(f"Redis failed during the trade: {exc}")
            failed = gate.store_failure_decision(ticker, qty, side, failure, now)
            return result_of(gate.portfolio_id, failed, None, client_order_id, actor, now)
    now = gate.clock()
    if client_order_id is not None:
        try:  # the same id may have been filled by a concurrent caller meanwhile: that is the answer
            stored = store.read_order(gate.portfolio_id, client_order_id)
        except (StoreError, redis.RedisError):
            stored = None
        if stored is not None:
            return ExecutionResult.from_dict(stored, duplicate=True)
    decision = replace(
        gate.store_failure_decision(ticker, qty, side, None, now),
        reasons=(
            reason(
                ReasonCode.RETRY_EXHAUSTED,
                f"the portfolio kept changing under {MAX_ATTEMPTS} attempts (heavy concurrent trading); "
                "nothing was traded: send the order again",
            ),
        ),
    )
    result = result_of(gate.portfolio_id, decision, None, client_order_id, actor, now)
    try:
        store.append_trade_record(gate.portfolio_id, result.to_dict(with_duplicate=False))
    except (StoreError, redis.RedisError):
        pass  # the caller still gets the rejection; the log is best effort when Redis is failing
    return result


def result_of(
    portfolio_id: str,
    decision: Decision,
    plan: Plan | None,
    client_order_id: str | None,
    actor: str,
    now: float,
) -> ExecutionResult:
    """The execution result of a decision: FILLED with its fill when there is a plan, else REJECTED."""
    fill = None
    if plan is not None:
        before = plan.position_before
        fill = Fill(
            trade_id=uuid.uuid4().hex,
            client_order_id=client_order_id,
            portfolio_id=portfolio_id,
            ticker=plan.ticker,
            side=plan.side,
            qty=plan.qty,
            price=plan.price,
            notional=plan.notional,
            fees=plan.fee,
            realized_pnl=plan.realized,
            cash_before=plan.cash_before,
            cash_after=plan.portfolio_after.cash,
            position_before=before.qty if before is not None else 0,
            position_after=plan.position_after.qty,
            avg_price_before=before.avg_price if before is not None else Decimal(0),
            avg_price_after=plan.position_after.avg_price,
            ts=now,
            actor=actor,
            market_version=decision.market_version,
        )
    return ExecutionResult(
        status=ExecutionStatus.FILLED if plan is not None else ExecutionStatus.REJECTED,
        client_order_id=client_order_id,
        duplicate=False,
        ts=now,
        actor=actor,
        decision=decision,
        fill=fill,
    )
