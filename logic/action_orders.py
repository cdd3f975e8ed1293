"""The child orders of an automated response's legs (:mod:`logic.actions`): what earlier runs of the action already
sent, one child sent through the gate, and the re-sizing of a child the fat-finger caps refused.

What an earlier run sent (:func:`read_earlier_orders`, :func:`leg_history`) is read from two sources together,
because either alone can miss a fill:

- the gate's **idempotency records** (``Store.read_order``), written with the fill: exact, but deleted by the
  monitor's housekeeping once older than ``limits.order_id_retention_days`` (``prune_order_ids``, a day at least);
- the portfolio's **trade log**, where every fill *and every refusal* the gate decides is appended in the
  transaction that decides it: read newest first back to the action's ``created_at`` (less
  :data:`CLOCK_SLACK_SECONDS`; for an action without one, the whole log Redis holds). It also gives the ids of
  refused children, so a re-run never sends a used child id again, even for a refused one.

A fill under the bare leg id (no ``-c{k}``) is what the code before child orders sent a whole leg under: it
counts as an earlier fill of that leg, so an action queued before the upgrade never sells its leg twice.

Limit: a fill is missed only when both are gone: its idempotency record pruned (retention elapsed) *and* its
trade-log record moved out of Redis by the archiver (``archive.keep_seconds`` / ``keep_entries``, 30 days and
100,000 records by default, or the log's own bound ``TRADE_LOG_MAXLEN``). A pending action re-run that late would
send its fixed plan's legs again in full (the clip to the position held still applies).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, final

from engine.records import ExecutionStatus, OrderIntent, ReasonCode
from engine.store import TRADE_LOG_MAXLEN

AUTO_ACTOR_PREFIX = "auto:"
"""The actor of every automated response (``auto:<rule id>``, given by logic/lifecycle.py). It names the
automation in the trade log and the audit trail; it grants nothing by itself (:data:`AUTOMATION`)."""


@final
class AutomationGrant:
    """The automation's privilege at the gate: its own order-rate budget for its liquidation-only orders
    (logic/checks.py ``automation_order``). Only :data:`AUTOMATION` exists, handed to the gate by
    :func:`send_child` (the automated responses' order path) and checked by identity, never by the actor's name:
    an actor is a typed string, and an in-process caller of ``RiskManager.execute_trade`` could otherwise claim
    ``auto:...`` and step around the desk's ``max_orders_per_minute``. An order whose actor claims the prefix
    without it is refused ``BAD_ACTOR`` (logic/execution.py), nothing written."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "AUTOMATION"


AUTOMATION = AutomationGrant()
"""The one :class:`AutomationGrant` (compared with ``is``)."""

RESIZABLE_CODES = frozenset({ReasonCode.MAX_NOTIONAL, ReasonCode.BAD_QUANTITY})
"""Refusals by the fat-finger caps alone (``max_order_notional``; ``max_order_qty``, which the gate reports as
BAD_QUANTITY for a whole positive quantity): a child sized at the cap on the book's price is refused by a one-cent
move, so it is sized again and sent under the next child id. Any other refusal stops the leg."""
MAX_CHILD_RESIZES = 3
"""Consecutive re-sized children after a cap refusal (the count starts again at each fill): a market that keeps
moving past every new size stops the leg, reported like any refusal."""
CLOCK_SLACK_SECONDS = 300.0
"""The trade log is read back to this long before the action's ``created_at`` (the gate's and the alert engine's
clocks need not agree to the second)."""
FIRST_PAGE = 200
"""Trade-log records read first; the read doubles until it reaches ``created_at`` or the log's start."""

Send = Callable[..., Mapping[str, Any]]


def child_order_id(leg_id: str, k: int) -> str:
    """The client order id of a leg's k-th child order (k from 0)."""
    return f"{leg_id}-c{k}"


@dataclass(frozen=True)
class EarlierOrders:
    """The action's orders found in the trade log: ``fills`` (client id -> fill) and every id ``used``."""

    fills: Mapping[str, Mapping[str, Any]]
    used: frozenset[str]


NO_EARLIER = EarlierOrders({}, frozenset())


def read_earlier_orders(control: Any, pending: Mapping[str, Any]) -> EarlierOrders:
    """The orders of ``pending``'s action (client ids ``{action id}-...``) in the trade log of the control's store
    (a RiskManager's), back to the action's ``created_at``; none without a store. Read once per run, before the run
    sends anything."""
    store, portfolio_id = getattr(control, "store", None), getattr(control, "portfolio_id", None)
    if store is None or not isinstance(portfolio_id, str):
        return NO_EARLIER
    created = pending.get("created_at")
    since = float(created) - CLOCK_SLACK_SECONDS if isinstance(created, int | float) else -math.inf
    count = FIRST_PAGE
    while True:
        records = store.read_trade_log(portfolio_id, count, newest_first=True)
        oldest = records[-1].get("ts") if records else None
        done = len(records) < count or count >= TRADE_LOG_MAXLEN
        if done or not isinstance(oldest, int | float) or oldest < since:
            break
        count *= 2
    prefix = f"{pending['action_id']}-"
    mine = [r for r in records if str(r.get("client_order_id") or "").startswith(prefix)]
    fills = {
        str(r["client_order_id"]): r["fill"]
        for r in mine
        if r.get("status") == ExecutionStatus.FILLED and r.get("fill")
    }
    return EarlierOrders(fills, frozenset(str(r["client_order_id"]) for r in mine))


@dataclass(frozen=True)
class LegHistory:
    """What earlier runs did for one leg: the shares filled, in how many orders, and the next child index."""

    filled_qty: int
    orders: int
    next_k: int


def child_index(leg_id: str, client_order_id: str) -> int | None:
    """k when ``client_order_id`` is exactly ``leg_id``'s k-th child id (:func:`child_order_id`), else None: the
    whole id is parsed, ``-c`` then a canonical whole number (no sign, no leading zero), nothing after it."""
    head = f"{leg_id}-c"
    if not client_order_id.startswith(head):
        return None
    tail = client_order_id[len(head) :]
    if not (tail.isascii() and tail.isdigit()) or child_order_id(leg_id, int(tail)) != client_order_id:
        return None
    return int(tail)


def _of_ticker(fill: Mapping[str, Any], ticker: str) -> bool:
    """The fill traded ``ticker`` (a fill recorded without one is taken by its id alone)."""
    traded = fill.get("ticker")
    return traded is None or str(traded) == ticker


def leg_history(control: Any, earlier: EarlierOrders, leg_id: str, ticker: str) -> LegHistory:
    """The earlier fills of ``leg_id`` (its children and the bare leg id) in ``ticker``, from the idempotency
    records and the trade log together; ``next_k`` is past every child id either shows, filled or refused.

    An id alone can name two legs: a ticker may contain ``-c<digit>`` (``A-c0`` is a valid symbol), so the bare id
    of the leg of ``A-c0`` (``a1-A-c0``, sent by the code before child orders) is the first child id of the leg of
    ``A``. A fill counts for the leg only if it traded the leg's ticker; an id of this leg's form that another
    ticker's fill holds is still used (the gate would refuse it as a duplicate id), so ``next_k`` goes past it.

    The idempotency records are read child by child from ``c0``, past up to ``MAX_CHILD_RESIZES + 1`` ids in a row
    without a fill (a run leaves at most that many refused children between two fills), and at least as far as the
    highest id the trade log shows."""
    index = {cid: k for cid in earlier.used if (k := child_index(leg_id, cid)) is not None}
    fills = {
        cid: fill
        for cid, fill in earlier.fills.items()
        if (cid in index or cid == leg_id) and _of_ticker(fill, ticker)
    }
    store, portfolio_id = getattr(control, "store", None), getattr(control, "portfolio_id", None)
    if store is not None and isinstance(portfolio_id, str):

        def filled_record(cid: str) -> Mapping[str, Any] | None:
            record = store.read_order(portfolio_id, cid)
            ok = bool(record) and record.get("status") == ExecutionStatus.FILLED and bool(record.get("fill"))
            return record["fill"] if ok else None

        if (bare := filled_record(leg_id)) is not None and _of_ticker(bare, ticker):
            fills[leg_id] = bare
        top, k, misses = max(index.values(), default=-1), 0, 0
        while k <= top or misses <= MAX_CHILD_RESIZES:
            cid = child_order_id(leg_id, k)
            fill = filled_record(cid)
            if fill is not None:
                index[cid] = k  # used, whoever's it is
                if _of_ticker(fill, ticker):
                    fills[cid] = fill
            misses = 0 if fill is not None else misses + 1
            k += 1
    filled = sum(int(fill["qty"]) for fill in fills.values())
    return LegHistory(filled, len(fills), max(index.values(), default=-1) + 1)


def send_child(
    control: Any, order: Mapping[str, Any], order_id: str, actor: str, leg_id: str, audit: Callable[..., None]
) -> dict[str, Any]:
    """One liquidation-only child order through the gate, with the automation's grant (:data:`AUTOMATION`); its
    result is audited at once (``audit``). Returns the
    audited record plus ``fill_price`` and, for a refusal, ``max_qty_allowed`` and the decision's ``price``."""
    result = control.execute_trade(
        order["ticker"], int(order["qty"]), order["side"], client_order_id=order_id, actor=actor,
        intent=OrderIntent.LIQUIDATION, automation=AUTOMATION,
    )  # fmt: skip
    raw_reasons = result.get("reasons") or []
    codes = [str(r.get("code", "")) for r in raw_reasons]
    reasons = "; ".join(r.get("message") or r.get("code", "") for r in raw_reasons)
    fill, decision = result.get("fill") or {}, result.get("decision") or {}
    filled = result.get("status") == ExecutionStatus.FILLED
    record = {
        **order, "leg_id": leg_id, "client_order_id": order_id, "intent": OrderIntent.LIQUIDATION.value,
        "status": result.get("status"), "duplicate": bool(result.get("duplicate")), "codes": codes, "reasons": reasons,
        "filled_qty": int(fill.get("qty", order["qty"])) if filled else 0,
        "filled_notional": float(Decimal(str(fill["notional"]))) if filled and "notional" in fill else 0.0,
    }  # fmt: skip
    audit(record)
    return {
        **record,
        "fill_price": Decimal(str(fill["price"])) if filled and "price" in fill else None,
        "max_qty_allowed": decision.get("max_qty_allowed"),
        "price": decision.get("price"),
    }


def resized_qty(child: Mapping[str, Any], cap_qty: Callable[[Any], int]) -> int | None:
    """The size to send a child again at after the fat-finger caps alone refused it (:data:`RESIZABLE_CODES`):
    the smaller of the refusal's ``max_qty_allowed`` and ``cap_qty`` (the live caps' size) at the decision's price;
    None when it was refused for anything else, or no smaller size of one share at least is allowed."""
    if not child["codes"] or not set(child["codes"]) <= RESIZABLE_CODES:
        return None
    sizes = []
    allowed = child.get("max_qty_allowed")
    if isinstance(allowed, int) and not isinstance(allowed, bool):
        sizes.append(allowed)
    price = child.get("price")
    if isinstance(price, int | float) and math.isfinite(price) and price > 0:
        sizes.append(cap_qty(price))
    qty = min(sizes, default=0)
    return qty if 1 <= qty < int(child["qty"]) else None
