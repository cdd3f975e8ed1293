"""Atomic, fair execution of one order: wait for the portfolio's turn, re-check on a WATCHed book, book the fill
in one MULTI/EXEC.

1. **Queue** (:mod:`engine.store.sequencer`). The order takes a ticket at the tail of the portfolio's FIFO
   order queue and waits until it is the head (BLPOP on its own wake key; the order before it hands over when
   it leaves). Only the head executes, so orders to one portfolio run one at a time, in arrival order: none
   starves and none is refused for contention. The head holds a lease with a TTL (:data:`LEASE_SECONDS`, far
   above the few milliseconds an order takes); a head whose process dies is removed by the next waiter once
   its lease expires, so a crash delays the queue by at most the TTL. An order that has not reached the head
   within :data:`QUEUE_WAIT_SECONDS` leaves the queue and is REJECTED ``STORE_UNAVAILABLE`` ("the order queue
   did not move"): a stuck store, not contention.
2. **Transaction** (unchanged). WATCH the portfolio's keys, read the book, re-run every check on the watched state,
   MULTI the fill (cash, position, realized P&L, fees, trade log record, idempotency record, order-rate entry; a
   close or flip also ends the position's MFE / MAE, engine/store/monitoring.py ``reset_mark``), EXEC. The queue
   does not make this correct, the WATCH does: a WatchError now comes only from writers that are not orders (a
   trading-state change, a book edit) or from a head that outlived its lease, so the retry loop stays as a safety
   net: at most :data:`MAX_ATTEMPTS` times with jittered backoff, refreshing the lease, then REJECTED
   ``RETRY_EXHAUSTED`` with nothing traded. Rejected executions are recorded in the trade log too, in the same
   watched transaction (so a caller cannot get a rejection while another caller's fill of the same client order id
   commits); they do not claim the client order id: a rejected order may be sent again with the same id.
3. **Release.** The order leaves the queue, handing the lease to the next ticket, whatever happened: in the
   EXEC that records it (the fill and the hand-over commit together, one round trip less while the next order
   waits), or right after when nothing was written (a duplicate, a store error, retries exhausted).
4. **A lost reply.** The connection can fail, or time out (``socket_timeout``), after the MULTI was sent: Redis
   may have committed the fill and the caller cannot tell. redis-py raises that as the ConnectionError or
   TimeoutError itself or, while keys are WATCHed, as a WatchError raised from it; neither proves that nothing
   was traded, so neither may become a rejection. The outcome is read back instead (:func:`_read_back`):
   reconnect with backoff for at most :data:`READ_BACK_SECONDS` and read the order's idempotency record. Present
   with this attempt's trade id: FILLED (the stored fill; the queue was left in the same EXEC). Absent while
   Redis answers: the MULTI did not commit (it is atomic), so the loop retries as for a WatchError. Redis still
   unreachable: status ``UNKNOWN`` with reason ``OUTCOME_UNKNOWN`` -- never "nothing traded" -- and the fix:
   resend with the same client order id once Redis is back (the duplicate check returns the fill if it
   happened). A lost reply to a rejection's EXEC needs no read-back: a rejection trades nothing either way.
   What this cannot see: an EXEC still in flight in the network when the read-back runs (a partition healing
   after the client gave up) may commit later. A fill of the same id cannot then commit too (both WATCH the
   idempotency records), but a retry that is refused on its checks could be answered REJECTED meanwhile.
5. **A partly failed EXEC.** Redis does not roll a transaction back when one of its commands fails (WRONGTYPE on
   a corrupted key): the others commit. The trade view checks the type of every key a fill writes and the order
   is refused ``STORE_CORRUPT`` naming the key before any MULTI (nothing written, not even the rejection's
   record). An EXEC that still answers with errors (a key corrupted meanwhile, a command Redis refuses at EXEC
   time) is read back like a lost reply (:func:`_partly_failed`): this attempt's fill stored is FILLED with a
   ``STORE_CORRUPT`` warning naming the failed writes (logged, and audited as ``fill_writes_failed``); never
   REJECTED for a fill that committed.

**Idempotency.** A fill claims its client order id (the idempotency record). The same id sent again with the
same order (portfolio, ticker, side, quantity, intent) returns that fill (``duplicate``: nothing traded); with a
different order it is refused ``DUPLICATE_ORDER_ID`` (like a FIX duplicate ClOrdID), recorded in the trade log
like any refused execution: an id names one order, and answering another order with its fill would report a
trade that never happened.

Why a queue and not the plain optimistic loop: under contention every writer re-reads and re-checks and all but
one lose the EXEC; with 16 processes on one portfolio about 1.5% of orders ran out of retries and the slowest
waited over a second, and on a 2-core machine the losers' wasted checks slow the winner too. Waiters in the
queue sleep in BLPOP and cost nothing. Why not one server-side check-and-apply script: the check needs the
covariance matrix and numpy (incremental VaR, margin, concentration...), which a Lua script cannot run; moving
only the apply into Lua would still need the check to see a state no one changes meanwhile, which is the queue.
Why a list of tickets rather than a SET NX lock with retries: a spin lock is unfair (whoever polls at the right
moment wins) and its pollers load the server; the list serves in arrival order and hands over with one push.

Time here (queue deadlines, BLPOP timeouts) is the process's monotonic clock, never stamped on a record; the
records are stamped with the injected clock as before. The market snapshot itself is not WATCHed: the decision
and the fill use one consistent snapshot read in the transaction, and a market tick landing meanwhile must not
abort (and, with a fast feed, starve) trading.
"""

from __future__ import annotations

import logging
import random
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import redis
from redis.exceptions import InvalidPipelineStack

from engine.errors import CorruptDataError, StoreError, StoreUnavailableError
from engine.records import (
    Decision,
    DecisionStatus,
    ExecutionResult,
    ExecutionStatus,
    Fill,
    OrderIntent,
    ReasonCode,
)
from engine.store.keys import PortfolioKeys
from engine.store.sequencer import out_of_memory, out_of_memory_error
from engine.store.trading import TradeView, TradingStore
from logic.action_orders import AUTO_ACTOR_PREFIX, AUTOMATION
from logic.check_book import Plan, Sim
from logic.checks import automation_order
from logic.decisions import parse_intent, parse_quantity, parse_side, reason

if TYPE_CHECKING:
    from logic.risk_manager import RiskManager

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 100
"""Transaction attempts of one execute_trade before it gives up with RETRY_EXHAUSTED."""
BACKOFF_MAX_SECONDS = 0.01
"""Upper bound of the random sleep between two attempts (doubles from 0.25 ms up to this)."""
RATE_WINDOW_SECONDS = 60.0
"""The order-rate throttle counts fills in this trailing window (``max_orders_per_minute``)."""


def read_gate_view(
    store: TradingStore,
    portfolio_id: str,
    now: float,
    client_order_id: str | None = None,
    memo: dict[Any, Any] | None = None,
) -> TradeView:
    """``store.read_trade_view`` with the order-rate window at ``now``: the fills of the last
    :data:`RATE_WINDOW_SECONDS`, and none stamped more than a window after ``now`` (a replay that took the
    clock back leaves its last run's fills ahead of it: they are not recent, and they locked every order out,
    even a risk-reducing one, until the data's time caught up with them)."""
    return store.read_trade_view(
        portfolio_id, now - RATE_WINDOW_SECONDS, client_order_id, memo=memo, rate_until=now + RATE_WINDOW_SECONDS
    )


LEASE_SECONDS = 3.0
"""TTL of the queue head's lease: how long a dead head (crashed process) can hold the portfolio's queue.
An order takes milliseconds; the lease is refreshed on every transaction retry."""
QUEUE_WAIT_SECONDS = 10.0
"""Longest an order waits for its turn in the queue before it is REJECTED ``STORE_UNAVAILABLE``."""
AUTO_ORDER_ID_PREFIX = "gen-"
"""Prefix of the client order id given to an order sent without one (:func:`new_order_id`)."""
WAKE_POLL_SECONDS = 0.25
"""A waiter's BLPOP timeout: after it, the waiter checks for a dead head (one whose lease expired)."""
READ_BACK_SECONDS = 5.0
"""After a lost EXEC reply: how long the order's record is read back (reconnecting) before the result is
``UNKNOWN``. Each try may also wait up to the client's connect timeout."""
READ_BACK_FIRST_PAUSE = 0.05
"""The first pause between two read-back tries; it doubles up to :data:`READ_BACK_MAX_PAUSE`."""
READ_BACK_MAX_PAUSE = 1.0
"""The longest pause between two read-back tries."""


def execute(
    gate: RiskManager,
    ticker: Any,
    qty: Any,
    side: Any,
    client_order_id: str | None,
    actor: str,
    intent: OrderIntent = OrderIntent.TRADE,
    automation: object = None,
) -> ExecutionResult:
    """Re-check and trade atomically at the last price; the same ``client_order_id`` trades at most once.

    ``automation``: the automation's grant (logic/action_orders.py ``AUTOMATION``), passed only by the automated
    responses' order path; with an ``auto:`` actor and a liquidation-only intent the order is rated against the
    automation's own budget (logic/checks.py ``automation_order``). An actor that claims ``auto:`` (any case,
    any surrounding blanks) without it is refused ``BAD_ACTOR`` before the queue: nothing is written, not even a
    trade-log record, so a typed name can neither use the automation's budget nor pass for it in the log. So is
    an order with no actor (None, empty or blank): every fill names who sent it.

    Never raises for bad input or store trouble: the result is REJECTED with the reason, or ``UNKNOWN``
    (``OUTCOME_UNKNOWN``) when the fill was sent, its reply was lost and Redis stayed unreachable (see the module
    doc). An order sent without a ``client_order_id`` gets one here (:func:`new_order_id`), so reading back a lost
    EXEC reply finds this order's own record; the result carries that id.
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
    why = None
    if not (isinstance(actor, str) and actor.strip()):
        why = f"an order names who sends it: actor {actor!r} is no name; nothing was written"
    elif automation is not AUTOMATION and claims_automation(actor):
        why = (
            f"actor {actor!r} claims to be the automation ({AUTO_ACTOR_PREFIX}<rule id>) but the order does not come "
            "from the automated responses; nothing was written: send it under your own name"
        )
    if why is not None:
        now = gate.clock()
        decision, _ = gate.checker.evaluate(Sim.empty(), ticker, qty, side, now, intent=intent, size=False)
        refused = replace(decision, status=DecisionStatus.REJECTED, reasons=(reason(ReasonCode.BAD_ACTOR, why),))
        return result_of(
            gate.portfolio_id, refused, None, client_order_id, actor if isinstance(actor, str) else "", now
        )
    if client_order_id is None:
        # Chosen once, before the first attempt: after a lost EXEC reply the read-back (and any retry) must find
        # this order's own idempotency record, not fill it a second time.
        client_order_id = new_order_id()
    ticket = uuid.uuid4().hex
    try:
        turn = _wait_for_turn(gate, ticket)
    except (StoreError, redis.RedisError) as exc:
        _leave(gate, ticket)
        failure = exc if isinstance(exc, StoreError) else _queue_failure(exc)
        now = gate.clock()
        failed = gate.store_failure_decision(ticker, qty, side, failure, now)
        return result_of(gate.portfolio_id, failed, None, client_order_id, actor, now)
    if not turn:
        return _give_up(
            gate, ticker, qty, side, client_order_id, actor, ReasonCode.STORE_UNAVAILABLE,
            f"the order queue of this portfolio did not move for {QUEUE_WAIT_SECONDS:g} s (the order ahead is "
            "stuck or the store is overloaded); nothing was traded: send the order again",
        )  # fmt: skip
    released = False
    try:
        result, released = _transact(gate, ticker, qty, side, client_order_id, actor, intent, ticket, automation)
        return result
    finally:
        if not released:
            _leave(gate, ticket)


def claims_automation(actor: Any) -> bool:
    """The actor reads as the automation's (``auto:...``), compared as a person reads it: blanks around it and the
    letters' case ignored, so ``" Auto:x"`` claims it too."""
    return isinstance(actor, str) and actor.strip().lower().startswith(AUTO_ACTOR_PREFIX)


def new_order_id() -> str:
    """The id :func:`execute` gives an order sent without a ``client_order_id`` (unique; never sent by a caller's
    dashboard ticket, whose ids start with ``dash-``)."""
    return f"{AUTO_ORDER_ID_PREFIX}{uuid.uuid4().hex}"


def _wait_for_turn(gate: RiskManager, ticket: str) -> bool:
    """Join the portfolio's order queue and wait to be its head; False (out of the queue) after
    :data:`QUEUE_WAIT_SECONDS`."""
    store, portfolio_id = gate.store, gate.portfolio_id
    wake_ttl = QUEUE_WAIT_SECONDS + LEASE_SECONDS  # a hand-over nobody collects expires by itself
    deadline = time.monotonic() + QUEUE_WAIT_SECONDS
    head, _ = store.join_order_queue(portfolio_id, ticket, LEASE_SECONDS, wake_ttl)
    while not head:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            store.leave_order_queue(portfolio_id, ticket, LEASE_SECONDS, wake_ttl)
            return False
        if store.wait_order_turn(portfolio_id, ticket, max(0.01, min(WAKE_POLL_SECONDS, remaining))):
            return True
        place, _ = store.check_order_queue(portfolio_id, ticket, LEASE_SECONDS, wake_ttl)
        if place < 0:  # it was the head and stalled past its lease: back in at the tail
            head, _ = store.join_order_queue(portfolio_id, ticket, LEASE_SECONDS, wake_ttl)
        else:
            head = place == 1
    return True


def _queue_failure(exc: redis.RedisError) -> StoreError:
    """A Redis error of the order queue as the store's typed error: unreachable or out of memory (unavailable:
    nothing is wrong with the data, the order may be sent again once Redis is back or has room), or a queue key
    holding the wrong type (corrupt)."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return StoreUnavailableError(f"Redis failed while the order waited for its turn: {exc}")
    if out_of_memory(exc):
        return out_of_memory_error(exc, "the order could not join the portfolio's order queue")
    return CorruptDataError(f"the order queue of the portfolio is unreadable: {exc}")


def _transact(
    gate: RiskManager,
    ticker: Any,
    qty: Any,
    side: Any,
    client_order_id: str | None,
    actor: str,
    intent: OrderIntent,
    ticket: str | None,
    automation: object = None,
) -> tuple[ExecutionResult, bool]:
    """The WATCH / read / check / MULTI / EXEC loop, with at most :data:`MAX_ATTEMPTS` attempts.

    ``ticket`` is the caller's place at the head of the order queue: its lease is refreshed on a retry, and the
    EXEC that records the order also leaves the queue (one round trip less while the next order waits). Returns
    the result and whether the queue was left that way. None runs the loop unqueued, purely optimistic (the
    benchmark's baseline, benchmarks/bench_contention.py).

    An EXEC whose reply is lost (the connection failed or timed out once the MULTI was sent) is read back, not
    reported as a store failure: see "A lost reply" in the module doc.
    """
    store = gate.store
    keys = store.trading_watch_keys(gate.portfolio_id)
    automated = automation_order(actor, intent, automation)  # the automation's own budget (logic/checks.py)
    now = gate.clock()
    for attempt in range(MAX_ATTEMPTS):
        try:
            with gate.client.pipeline(transaction=True) as pipe:
                pipe.watch(*keys)
                now = gate.clock()  # after WATCH: whatever happens from here on aborts the EXEC
                view = read_gate_view(store, gate.portfolio_id, now, client_order_id, memo=gate.memo)
                plan: Plan | None = None
                rev: str | None = None
                claimed: str | None = None
                if view.order is not None:
                    claimed = _claimed_by_other_order(view.order, gate.portfolio_id, ticker, qty, side, intent)
                    if claimed is None:
                        pipe.unwatch()
                        return ExecutionResult.from_dict(view.order, duplicate=True), False
                unwritable = view.errors.get("writes")
                if unwritable is not None:
                    # a key the MULTI writes holds the wrong type: Redis would commit the other writes and fail
                    # that one (no rollback), so nothing is sent, not even the rejection's record
                    pipe.unwatch()
                    log.error("order refused, portfolio %s: %s", gate.portfolio_id, unwritable.detail)
                    failed = gate.store_failure_decision(ticker, qty, side, unwritable, now)
                    return result_of(gate.portfolio_id, failed, None, client_order_id, actor, now), False
                if claimed is not None:
                    # the id names another order: refused, and recorded like any refused execution
                    result = _duplicate_id_refusal(
                        gate, ticker, qty, side, client_order_id, actor, intent, claimed, now
                    )
                else:
                    checker = gate.checker_for(view)  # the live limits (engine/store/limits.py)
                    decision, plan = checker.evaluate(
                        Sim.from_view(view), ticker, qty, side, now, intent=intent, automated=automated
                    )
                    result = result_of(gate.portfolio_id, decision, plan, client_order_id, actor, now)
                    if plan is None and view.portfolio is None:
                        pipe.unwatch()  # no such portfolio: nothing to record the rejection in
                        return result, False
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
                        qty_before=plan.position_before.qty if plan.position_before is not None else 0,
                        automated=automated,
                    )
                if ticket is not None:
                    store.leave_order_queue(
                        gate.portfolio_id, ticket, LEASE_SECONDS, QUEUE_WAIT_SECONDS + LEASE_SECONDS, pipe=pipe
                    )
                lost: BaseException | None = None
                refused: redis.ResponseError | None = None
                failed_writes: list[str] = []
                queued = _queued_commands(pipe)  # execute() empties the pipeline
                try:
                    replies = pipe.execute(raise_on_error=False)
                    failed_writes = _failed_commands(queued, replies)
                except InvalidPipelineStack as exc:  # a cluster EXEC that ran but answered the wrong count
                    failed_writes = [f"EXEC: {str(exc)[:200]}"]
                except redis.RedisError as exc:
                    lost = _lost_reply(exc)
                    if lost is None:
                        if not isinstance(exc, redis.ResponseError):
                            raise  # a clean WatchError: nothing committed
                        refused = exc  # EXECABORT (nothing ran) or a reply that did not parse: read back
            if plan is None or result.fill is None:
                # a rejection whose record may or may not be logged: nothing traded either way, and the queue is
                # left again in execute() (harmless if the EXEC did leave it)
                clean = lost is None and refused is None and not failed_writes
                if not clean:
                    log.warning(
                        "the record of a refused order was not stored, portfolio %s: %s",
                        gate.portfolio_id, lost or refused or "; ".join(failed_writes),
                    )  # fmt: skip
                return result, clean and ticket is not None
            if lost is None and refused is None and not failed_writes:
                if rev is not None:
                    _remember(gate, plan, rev)
                return result, ticket is not None
            if lost is None:
                return _partly_failed(gate, result, plan, rev, refused, failed_writes, client_order_id), False
            answered, stored, why = _read_back(gate, client_order_id)
            if not answered:
                return _outcome_unknown(result, lost, why), False
            if stored is not None and _trade_id(stored) == result.fill.trade_id:
                # this attempt's own fill committed, and the queue was left in the same EXEC
                if rev is not None:
                    _remember(gate, plan, rev)
                return ExecutionResult.from_dict(stored, duplicate=False), ticket is not None
            # absent (or another caller's fill of the id, which aborted this EXEC): the MULTI did not commit, retry
            _pause(gate, ticket, attempt)
        except redis.WatchError:
            _pause(gate, ticket, attempt)
        except StoreError as exc:
            failed = gate.store_failure_decision(ticker, qty, side, exc, now)
            return result_of(gate.portfolio_id, failed, None, client_order_id, actor, now), False
        except redis.RedisError as exc:
            failure = (
                out_of_memory_error(exc, "Redis refused the trade")
                if out_of_memory(exc)
                else StoreUnavailableError(f"Redis failed during the trade: {exc}")
            )
            failed = gate.store_failure_decision(ticker, qty, side, failure, now)
            return result_of(gate.portfolio_id, failed, None, client_order_id, actor, now), False
    gave_up = _give_up(
        gate, ticker, qty, side, client_order_id, actor, ReasonCode.RETRY_EXHAUSTED,
        f"the portfolio kept changing under {MAX_ATTEMPTS} attempts (heavy concurrent trading); "
        "nothing was traded: send the order again",
        intent,
    )  # fmt: skip
    return gave_up, False


def _queued_commands(pipe: Any) -> list[Any]:
    """The commands queued in ``pipe`` since its MULTI, on one Redis and on a Redis Cluster alike: redis-py's
    ``Pipeline`` keeps them in ``command_stack``, its ``ClusterPipeline`` in its execution strategy's
    ``command_queue`` (its ``command_stack`` stays empty). ``len(pipe)`` counts them on both; a list that does not
    match that count is returned as it is, and :func:`_failed_commands` then fails closed."""
    stack = list(getattr(pipe, "command_stack", None) or ())
    if len(stack) != len(pipe):
        strategy = getattr(pipe, "_execution_strategy", None)
        stack = list(getattr(strategy, "command_queue", None) or ())
    if len(stack) != len(pipe):
        return [None] * len(pipe)  # commands we cannot name: any reply count still says whether all answered
    return stack


def _failed_commands(queued: list[Any], replies: list[Any]) -> list[str]:
    """The commands of an EXEC that Redis ran but refused (``raise_on_error=False`` puts their errors in the
    replies), each described ``ZADD pf:{id}:orders_ts: WRONGTYPE ...``; [] when every one succeeded.

    Fails closed: a reply count that differs from the number of commands queued cannot say which commands ran,
    so it is one failure of its own (the fill is then read back, never taken as fully written)."""
    failed = []
    if len(replies) != len(queued):
        failed.append(f"EXEC: {len(replies)} replies for {len(queued)} queued commands")
    for reply, command in zip(replies, queued, strict=False):
        if isinstance(reply, Exception):
            args = command[0] if isinstance(command, tuple) else getattr(command, "args", ())
            name = " ".join(str(a.decode() if isinstance(a, bytes) else a) for a in args[:2] if a is not None)
            failed.append(f"{name}: {str(reply)[:200]}")
    return failed


def _partly_failed(
    gate: RiskManager,
    result: ExecutionResult,
    plan: Plan,
    rev: str | None,
    refused: redis.ResponseError | None,
    failed_writes: list[str],
    client_order_id: str | None,
) -> ExecutionResult:
    """The outcome of a fill whose EXEC answered with errors. Redis does not roll a transaction back when one of
    its commands fails (a key of the wrong type): the others commit. So it is never reported as a rejection
    without looking: the order's idempotency record is read back (as after a lost reply, :func:`_read_back`).

    - This attempt's fill is stored: FILLED (the stored fill), with one ``STORE_CORRUPT`` reason saying which
      writes failed; logged as an error and audited (``action: fill_writes_failed``). The trade view refuses
      before the MULTI when a key a fill writes has the wrong type, so this takes a key corrupted in the
      milliseconds between that read and the EXEC (or a command Redis refused for another reason).
    - Not stored and no command ran (``refused``: EXECABORT, a command refused when queued, e.g. out of memory):
      nothing committed (the MULTI is atomic), REJECTED ``STORE_UNAVAILABLE``.
    - Otherwise (the record's write itself failed, or the read-back failed): ``UNKNOWN`` ``OUTCOME_UNKNOWN``,
      never a rejection: the book may have changed (logged and audited too). The record's key is WATCHed and
      type-checked, so its write failing in an EXEC that ran is not expected; the answer stays honest if it does.
    """
    assert result.fill is not None
    fill = result.fill
    what = "; ".join(failed_writes) if failed_writes else f"{type(refused).__name__}: {refused}"
    answered, stored, why = _read_back(gate, client_order_id)
    if answered and stored is not None and _trade_id(stored) == fill.trade_id:
        if rev is not None:
            _remember(gate, plan, rev)
        message = (
            f"FILLED {fill.side} {fill.qty} {fill.ticker} (trade {fill.trade_id}, client order id "
            f"{client_order_id}): cash, position and the order's record committed, but Redis refused part of "
            f"the fill's bookkeeping ({what}); do NOT send the order again as a new one"
        )
        fix = "repair the named key(s) (the trade log or an index may lack this fill), then check the book"
        log.error("fill committed with failed writes, portfolio %s: %s", gate.portfolio_id, message)
        _audit_best_effort(gate, fill, message, failed_writes or [what])
        filled = ExecutionResult.from_dict(stored, duplicate=False)
        warning = reason(ReasonCode.STORE_CORRUPT, f"{message} (fix: {fix})")
        return replace(filled, decision=replace(filled.decision, reasons=(warning,)))
    if answered and not failed_writes and (stored is None or _trade_id(stored) != fill.trade_id):
        failure = (
            out_of_memory_error(refused, "Redis refused the trade")
            if refused is not None and out_of_memory(refused)
            else StoreUnavailableError(f"Redis refused the trade ({what}); nothing was traded")
        )
        failed = gate.store_failure_decision(fill.ticker, fill.qty, fill.side, failure, result.ts)
        return result_of(gate.portfolio_id, failed, None, client_order_id, result.actor, result.ts)
    record = "is not stored" if answered else f"could not be read ({why})"
    message = (
        f"{fill.side} {fill.qty} {fill.ticker} (trade {fill.trade_id}, client order id {client_order_id}): Redis "
        f"ran the fill's transaction but refused part of it ({what}) and the order's record {record}: cash and "
        "position MAY HAVE CHANGED. Do not send it again, not even with the same client order id, before checking"
    )
    log.error("execution outcome unknown, portfolio %s: %s", gate.portfolio_id, message)
    _audit_best_effort(gate, fill, message, failed_writes or [what])
    return _as_unknown(result, message, "compare the book's cash and positions with the trade log, repair the "
                       "named key(s), then send what is missing as a new order")  # fmt: skip


def _audit_best_effort(gate: RiskManager, fill: Fill, message: str, failed: list[str]) -> None:
    record = {
        "ts": fill.ts, "actor": fill.actor, "action": "fill_writes_failed", "reason": message,
        "trade_id": fill.trade_id, "client_order_id": fill.client_order_id, "failed": failed,
    }  # fmt: skip
    try:
        gate.store.append_audit(PortfolioKeys(gate.portfolio_id).audit, record)
    except (StoreError, redis.RedisError) as exc:
        log.error("could not audit the partly failed fill %s: %s", fill.trade_id, exc)


def _remember(gate: RiskManager, plan: Plan, rev: str) -> None:
    """Keep the book a committed fill wrote (positions under its new revision, the fill's risk figures), so the
    next check neither reads nor recomputes them."""
    gate.store.remember_positions(gate.memo, gate.portfolio_id, rev, plan.portfolio_after.positions)
    gate.books.remember_fill(plan, rev.encode())


def _pause(gate: RiskManager, ticket: str | None, attempt: int) -> None:
    """Between two attempts: a jittered backoff, and the queue lease refreshed (a long run of retries must not
    let it lapse under the order)."""
    time.sleep(random.uniform(0.0, min(0.00025 * 2**attempt, BACKOFF_MAX_SECONDS)))
    if ticket is not None:
        try:
            gate.store.refresh_order_lease(gate.portfolio_id, ticket, LEASE_SECONDS)
        except redis.RedisError:
            pass  # the next attempt meets the same failure and reports it


def _lost_reply(exc: BaseException) -> BaseException | None:
    """The ConnectionError or TimeoutError that ``exc`` (from ``pipe.execute()``) is or was raised from: the
    transaction may have run without its reply reaching us. None for a plain WatchError (EXEC answered nil) or a
    ResponseError: answers, not lost replies."""
    seen: BaseException | None = exc
    for _ in range(8):  # the chain is one or two links; bounded all the same
        if seen is None or isinstance(seen, redis.ConnectionError | redis.TimeoutError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _read_back(gate: RiskManager, client_order_id: str | None) -> tuple[bool, dict[str, Any] | None, str]:
    """The idempotency record of ``client_order_id`` after a lost EXEC reply: ``(True, record or None, "")`` once
    Redis answers; ``(False, None, why)`` when it stays unreachable for :data:`READ_BACK_SECONDS` (each try
    reconnects: the client's pool replaces the dead connection) or the record cannot be read."""
    if client_order_id is None:  # only the benchmark's direct calls: nothing to read back by
        return False, None, "the order has no client order id to read back"
    deadline = time.monotonic() + READ_BACK_SECONDS
    pause = READ_BACK_FIRST_PAUSE
    while True:
        try:
            return True, gate.store.read_order(gate.portfolio_id, client_order_id), ""
        except (redis.ConnectionError, redis.TimeoutError, StoreUnavailableError) as exc:
            why = f"Redis unreachable: {exc}"
        except (StoreError, redis.RedisError) as exc:
            return False, None, f"its record cannot be read: {exc}"
        if time.monotonic() + pause > deadline:
            return False, None, why
        time.sleep(pause)
        pause = min(2 * pause, READ_BACK_MAX_PAUSE)


def _trade_id(record: Mapping[str, Any]) -> Any:
    fill = record.get("fill")
    return fill.get("trade_id") if isinstance(fill, Mapping) else None


def _outcome_unknown(result: ExecutionResult, lost: BaseException, why: str) -> ExecutionResult:
    """Status ``UNKNOWN`` for the fill ``result`` whose EXEC reply was lost: the approved decision, its one
    reason ``OUTCOME_UNKNOWN`` naming the order and the fix, no fill (it may or may not exist)."""
    fill = result.fill
    order = f"{fill.side} {fill.qty} {fill.ticker} (trade {fill.trade_id}, " if fill is not None else "The order ("
    message = (
        f"{order}client order id {result.client_order_id}) was sent, but the reply was lost "
        f"({type(lost).__name__}: {lost}) and it could not be read back within {READ_BACK_SECONDS:g} s ({why}): "
        "it MAY HAVE FILLED. Do not send it as a new order"
    )
    fix = (
        "resend with the same client_order_id once Redis is back; the duplicate check returns the fill if it "
        "happened, and trades the order once if it did not"
    )
    log.warning("execution outcome unknown, portfolio %s: %s", result.decision.portfolio_id, message)
    return _as_unknown(result, message, fix)


def _as_unknown(result: ExecutionResult, message: str, fix: str) -> ExecutionResult:
    """``result`` as status ``UNKNOWN``: its one reason ``OUTCOME_UNKNOWN`` (``message`` and ``fix``), no fill."""
    decision = replace(result.decision, reasons=(reason(ReasonCode.OUTCOME_UNKNOWN, f"{message} (fix: {fix})"),))
    return replace(result, status=ExecutionStatus.UNKNOWN, decision=decision, fill=None)


def _leave(gate: RiskManager, ticket: str) -> None:
    """Leave the order queue, handing over to the next order; best effort: a lease left behind expires."""
    try:
        gate.store.leave_order_queue(gate.portfolio_id, ticket, LEASE_SECONDS, QUEUE_WAIT_SECONDS + LEASE_SECONDS)
    except (StoreError, redis.RedisError):
        pass


def _claimed_by_other_order(
    stored: Mapping[str, Any], portfolio_id: str, ticker: Any, qty: Any, side: Any, intent: Any
) -> str | None:
    """None when the fill stored under a client order id is the order asked for now (same portfolio, ticker,
    side, quantity and intent: an idempotent resend); else that stored order, described ("BUY 10 AAA")."""
    fill = stored.get("fill")
    if not isinstance(fill, Mapping):
        return "an order whose record holds no fill"
    decision = stored.get("decision")
    was_intent = (decision.get("intent") if isinstance(decision, Mapping) else None) or OrderIntent.TRADE
    was = (fill.get("portfolio_id"), fill.get("ticker"), fill.get("side"), fill.get("qty"), was_intent)
    shares, _ = parse_quantity(qty, sys.maxsize)  # the order as asked, whatever today's max_order_qty
    asked = (portfolio_id, ticker, parse_side(side), shares, parse_intent(intent))
    if None not in asked and asked == was:
        return None
    text = _describe(fill.get("side"), fill.get("qty"), fill.get("ticker"), was_intent)
    if fill.get("portfolio_id") != portfolio_id:
        text += f" of portfolio {fill.get('portfolio_id')}"
    return f"{text} (trade {fill.get('trade_id')})"


def _describe(side: Any, qty: Any, ticker: Any, intent: Any) -> str:
    """An order in a few words: ``BUY 10 AAA`` (``... liquidation-only``)."""
    text = f"{side} {qty} {ticker}"
    return text + " liquidation-only" if intent == OrderIntent.LIQUIDATION else text


def _duplicate_id_refusal(
    gate: RiskManager,
    ticker: Any,
    qty: Any,
    side: Any,
    client_order_id: str | None,
    actor: str,
    intent: Any,
    claimed: str,
    now: float,
) -> ExecutionResult:
    """REJECTED ``DUPLICATE_ORDER_ID``: ``client_order_id`` already filled ``claimed``, another order."""
    shares, _ = parse_quantity(qty, sys.maxsize)
    asked = _describe(parse_side(side) or side, shares if shares is not None else qty, ticker, parse_intent(intent))
    decision = gate.store_failure_decision(ticker, qty, side, None, now)
    decision = replace(
        decision,
        intent=parse_intent(intent) or OrderIntent.TRADE,
        reasons=(
            reason(
                ReasonCode.DUPLICATE_ORDER_ID,
                f"client order id {client_order_id} already used for {claimed}; this order ({asked}) was not "
                "traded: send it with a new client order id",
            ),
        ),
    )
    return result_of(gate.portfolio_id, decision, None, client_order_id, actor, now)


def _give_up(
    gate: RiskManager,
    ticker: Any,
    qty: Any,
    side: Any,
    client_order_id: str | None,
    actor: str,
    code: ReasonCode,
    message: str,
    intent: Any = OrderIntent.TRADE,
) -> ExecutionResult:
    """REJECTED with ``code``, recorded in the trade log (best effort): unless the same client order id was
    filled by another caller meanwhile, which is then the answer when it is the same order (and refused
    ``DUPLICATE_ORDER_ID`` when it is another)."""
    now = gate.clock()
    store = gate.store
    if client_order_id is not None:
        try:
            stored = store.read_order(gate.portfolio_id, client_order_id)
        except (StoreError, redis.RedisError):
            stored = None
        if stored is not None:
            claimed = _claimed_by_other_order(stored, gate.portfolio_id, ticker, qty, side, intent)
            if claimed is None:
                return ExecutionResult.from_dict(stored, duplicate=True)
            result = _duplicate_id_refusal(gate, ticker, qty, side, client_order_id, actor, intent, claimed, now)
            _record_best_effort(gate, result)
            return result
    decision = replace(gate.store_failure_decision(ticker, qty, side, None, now), reasons=(reason(code, message),))
    result = result_of(gate.portfolio_id, decision, None, client_order_id, actor, now)
    _record_best_effort(gate, result)
    return result


def _record_best_effort(gate: RiskManager, result: ExecutionResult) -> None:
    try:
        gate.store.append_trade_record(gate.portfolio_id, result.to_dict(with_duplicate=False))
    except (StoreError, redis.RedisError):
        pass  # the caller still gets the rejection; the log is best effort when Redis is failing


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
