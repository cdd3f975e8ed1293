"""View models of the Trade page (``dashboard/screens/trade.py``): open positions with P&L and excursions, the
ticket's pre-trade decision and execution, and the blotter."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import StoreError
from engine.records import Action, DecisionStatus, ExecutionStatus, OrderIntent, ReasonCode, Side, TradingState
from logic.access import Identity, authorize
from logic.decisions import parse_intent
from logic.risk_manager import POSITION_FIELDS
from logic.views import fmt
from logic.views.audit import record_refused_check
from logic.views.common import Desk, float_or_none

# -- positions -----------------------------------------------------------------------------------------------

POSITION_COLUMNS = (*POSITION_FIELDS, "mfe", "mae")
BLOTTER_ROWS = 50
PERCENT_POINTS = "percent points"
"""A figure already in percent (the margin level), written as ``150.0%``."""
SIDES: tuple[str, ...] = tuple(s.value for s in Side)
"""The sides the ticket and the what-if basket offer (BUY first, the default)."""
ORDER_TYPES: Mapping[str, OrderIntent] = {"Trade": OrderIntent.TRADE, "Liquidation-only": OrderIntent.LIQUIDATION}
"""The ticket's order types, label -> intent. A liquidation-only order may only shrink a position (never grow or
flip it) and passes HALTED and REDUCING: how a risk manager de-risks a halted book by hand."""


UNPRICED_COLUMNS = ("last", "market_value", "weight", "unrealized_pnl")
"""A position's figures that need its price: missing (``—``) for a held ticker without a usable price."""
UNPRICED_REASON = "no usable price (missing, NaN or not positive): not valued, and left out of the totals"
"""Why :data:`UNPRICED_COLUMNS` show the dash on an unpriced position (the columns' help)."""


@dataclass(frozen=True)
class PositionsView:
    positions: pd.DataFrame
    """One row per open position: :data:`POSITION_COLUMNS`; :data:`UNPRICED_COLUMNS` missing (NaN) on a position
    without a usable price (:func:`priced_positions`)."""
    totals: Mapping[str, Any]
    """Portfolio totals of :meth:`RiskManager.get_dashboard_metrics` (cash, equity, VaR, ...), ``unrealized_pnl``
    over the priced positions only."""

    @property
    def missing(self) -> tuple[str, ...]:
        """Held tickers without a usable price: the equity, the unrealized P&L and the VaR leave them out."""
        return tuple(str(t) for t in self.totals.get("missing_prices") or ())


def priced_positions(metrics: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """:meth:`RiskManager.get_dashboard_metrics`'s rows and totals with an unpriced position shown as such: its
    :data:`UNPRICED_COLUMNS` missing (NaN) rather than a value of 0 and an unrealized loss of its whole cost, and
    ``totals["unrealized_pnl"]`` summed over the positions with a usable price, as the monitor's snapshot sums
    it (``pnl.unrealized``, logic/snapshot.py). The equity stays the priced positions' plus cash: incomplete
    while ``totals["missing_prices"]`` lists a ticker, so every open position's ``weight`` and ``totals["leverage"]``
    are missing too (a share of a partial equity: the biggest position losing its price would make the others look
    small), as the monitor reports them (logic/snapshot.py); a flat position's weight stays 0."""
    totals = dict(metrics.attrs.get("totals", {}))
    df = metrics.copy()
    last = pd.to_numeric(df["last"], errors="coerce").to_numpy(dtype=float) if "last" in df else np.array([])
    with np.errstate(invalid="ignore"):
        unpriced = ~(np.isfinite(last) & (last > 0))
    if unpriced.any():
        columns = [c for c in UNPRICED_COLUMNS if c in df]
        df[columns] = df[columns].astype(float)
        df.loc[unpriced, columns] = np.nan
        totals["unrealized_pnl"] = float(df["unrealized_pnl"].sum()) if "unrealized_pnl" in df else 0.0
        known = [str(t) for t in totals.get("missing_prices") or ()]
        totals["missing_prices"] = known + [str(t) for t in df.loc[unpriced, "ticker"] if str(t) not in known]
    if totals.get("missing_prices"):
        if "weight" in df:
            held = pd.to_numeric(df["qty"], errors="coerce").fillna(0.0).to_numpy() != 0 if "qty" in df else True
            df["weight"] = df["weight"].astype(float)
            df.loc[held, "weight"] = np.nan
        if "leverage" in totals:
            totals["leverage"] = None
    return df, totals


def positions_view(desk: Desk, portfolio_id: str) -> PositionsView:
    """Open positions with P&L, and the maximum favourable / adverse excursions the monitor tracks; a position
    without a usable price is not valued (:func:`priced_positions`)."""
    metrics, totals = priced_positions(desk.risk_manager(portfolio_id).get_dashboard_metrics())
    df = metrics.reindex(columns=list(POSITION_FIELDS)).copy()
    excursions = _excursions(desk, portfolio_id, dict(zip(df["ticker"], df["qty"], strict=True)))
    df["mfe"] = [excursions.get(t, {}).get("mfe") for t in df["ticker"]]
    df["mae"] = [excursions.get(t, {}).get("mae") for t in df["ticker"]]
    return PositionsView(df.reset_index(drop=True), totals)


def _excursions(desk: Desk, portfolio_id: str, held: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """Ticker -> {mfe, mae} of each held position, from the excursion marks the monitor keeps
    (``pf:{id}:marks``, written with each snapshot): a position whose mark is gone (a fill closed or flipped it
    since: engine/store/monitoring.py ``reset_mark``) or is of the other side is not tracked yet (None until
    the monitor's next tick), never the excursions of the position it replaced."""
    try:
        marks = desk.store.read_marks(portfolio_id)
    except StoreError:
        return {}
    out: dict[str, dict[str, float | None]] = {}
    for ticker, qty in held.items():
        mark = marks.get(str(ticker))
        side = int(np.sign(float(qty))) if qty is not None and np.isfinite(float(qty)) else 0
        if mark is not None and side != 0 and mark.side == side:
            out[str(ticker)] = {"mfe": float_or_none(mark.mfe), "mae": float_or_none(mark.mae)}
    return out


# -- the ticket: check, then execute -------------------------------------------------------------------------


def new_client_order_id() -> str:
    """A fresh idempotency key for one checked ticket (a double click re-sends the same one)."""
    return f"dash-{uuid.uuid4().hex}"


TICKET_ORDER_FIELDS = ("portfolio", "ticker", "side", "qty", "intent")
"""What makes two checked tickets the same order (the gate's own test of a resend: logic/execution.py)."""
UNSETTLING_CODES = frozenset(
    {
        ReasonCode.STORE_UNAVAILABLE,
        ReasonCode.STORE_EMPTY,
        ReasonCode.STORE_CORRUPT,
        ReasonCode.SCHEMA_MISMATCH,
        ReasonCode.RETRY_EXHAUSTED,
        ReasonCode.OUTCOME_UNKNOWN,
    }
)
"""Reasons of a refused resend that say nothing about whether the first send filled (the store failed again)."""


def ticket_order_id(unknown: Mapping[str, Any] | None, ticket: Mapping[str, Any]) -> str:
    """The client order id a checked ``ticket`` executes with: ``unknown``'s when the ticket is that same order,
    ``unknown`` being a ticket whose execution came back with its outcome unknown (:func:`outcome_unknown`), so
    sending it again fills it at most once (the gate answers with the fill if the first send filled); a new one
    (:func:`new_client_order_id`) otherwise."""
    if unknown is not None and all(unknown.get(f) == ticket.get(f) for f in TICKET_ORDER_FIELDS):
        return str(unknown["client_order_id"])
    return new_client_order_id()


def outcome_unknown(result: Mapping[str, Any] | None) -> bool:
    """The execution ``result`` cannot say whether the order filled: its EXEC reply was lost and Redis stayed
    unreachable (status ``UNKNOWN``, reason ``OUTCOME_UNKNOWN``). The order MAY HAVE FILLED."""
    return result is not None and result.get("status") == ExecutionStatus.UNKNOWN


def settles_unknown(result: Mapping[str, Any]) -> bool:
    """Whether ``result``, the answer to a resend (same client order id) of an order whose outcome was unknown,
    settles it: a fill (the first send's, returned as the duplicate, or this one's), or a refusal decided on the
    stored book (which showed the id unclaimed: the first send did not fill). A refusal for a store failure, or
    an outcome unknown again, settles nothing."""
    status = result.get("status")
    if status == ExecutionStatus.FILLED:
        return True
    if status != ExecutionStatus.REJECTED:
        return False
    codes = {str(r.get("code")) for r in result.get("reasons") or []}
    return bool(codes) and not codes & UNSETTLING_CODES


def ticket_action(intent: Any) -> Action:
    """What executing a ticket of ``intent`` needs: :attr:`Action.LIQUIDATE` for a liquidation-only order (read as
    the gate reads it, :func:`logic.decisions.parse_intent`), :attr:`Action.TRADE` otherwise (an intent the gate
    does not know is refused by the gate, with its reason)."""
    return Action.LIQUIDATE if parse_intent(intent) is OrderIntent.LIQUIDATION else Action.TRADE


def order_types(identity: Identity | None, portfolio_id: str) -> list[str]:
    """The order types (:data:`ORDER_TYPES` labels) the ticket offers ``identity`` on the portfolio: "Trade"
    always (checking is a what-if anyone may run; executing needs the role), "Liquidation-only" to whoever may
    send one."""
    allowed = identity is not None and identity.can(Action.LIQUIDATE, portfolio_id)
    return [label for label, intent in ORDER_TYPES.items() if intent is OrderIntent.TRADE or allowed]


def default_order_type(desk: Desk, portfolio_id: str, types: list[str]) -> str:
    """The order type a fresh ticket starts with: "Liquidation-only" on a HALTED portfolio for whoever is offered
    it (nothing else passes there), "Trade" otherwise."""
    halted = desk.store.read_trading_state(portfolio_id).state == TradingState.HALTED
    liquidation = next(label for label, intent in ORDER_TYPES.items() if intent is OrderIntent.LIQUIDATION)
    return liquidation if halted and liquidation in types else types[0]


def check_ticket(
    desk: Desk,
    portfolio_id: str,
    ticker: Any,
    side: Any,
    qty: Any,
    identity: Identity | None = None,
    intent: Any = OrderIntent.TRADE,
) -> dict[str, Any]:
    """The pre-trade decision of an order of ``intent`` (every failed check is a reason). It trades nothing; a
    refused check made for ``identity`` (the Trade page's Check) is recorded on the audit trail with
    ``identity.actor`` (:func:`logic.views.audit.record_refused_check`)."""
    decision = desk.risk_manager(portfolio_id).check_trade_impact(ticker, qty, side, intent)
    if identity is not None:
        asked = {"ticker": ticker, "side": side, "qty": qty, "intent": intent}
        record_refused_check(desk, portfolio_id, decision, identity, asked)
    return decision


def execute_ticket(
    desk: Desk,
    portfolio_id: str,
    ticker: Any,
    side: Any,
    qty: Any,
    client_order_id: str,
    identity: Identity | None,
    intent: Any = OrderIntent.TRADE,
) -> dict[str, Any]:
    """Execute a checked ticket of ``intent`` for ``identity`` (refused with AccessDenied before anything is
    written unless it may: :func:`ticket_action`; an ordinary order needs a trader of the portfolio or an admin,
    a liquidation-only one a risk manager or an admin); the same ``client_order_id`` trades at most once
    (``duplicate`` says so). The audit actor is ``identity.actor``."""
    who = authorize(identity, ticket_action(intent), portfolio_id)
    return desk.risk_manager(portfolio_id).execute_trade(
        ticker, qty, side, client_order_id=client_order_id, actor=who.actor, intent=intent
    )


def max_qty_offer(decision: Mapping[str, Any]) -> int | None:
    """The quantity a refused ticket can be resized to with one click: the decision's ``max_qty_allowed`` (the
    largest quantity of the same ticker and side that passes every check now), when it is a positive size other
    than the one asked for; None otherwise (approved, malformed order, or nothing passes)."""
    if decision.get("status") != DecisionStatus.REJECTED:
        return None
    best = decision.get("max_qty_allowed")
    if not isinstance(best, int) or isinstance(best, bool) or best <= 0 or best == decision.get("qty"):
        return None
    return best


def reasons_frame(decision: Mapping[str, Any]) -> pd.DataFrame:
    reasons = decision.get("reasons") or []
    return pd.DataFrame(
        [{"code": str(r.get("code", "")), "message": str(r.get("message", ""))} for r in reasons],
        columns=["code", "message"],
    )


DELTA_ROWS: tuple[tuple[str, str, str], ...] = (
    ("VaR", "var_before", "var_after"),
    ("Cash", "cash_before", "cash_after"),
    ("Position (shares)", "position_before", "position_after"),
)
IMPACT_ROWS: tuple[tuple[str, str, str], ...] = (
    ("Equity after", "equity_after", fmt.MONEY),
    ("Concentration after", "concentration_after", fmt.RATIO),
    ("Margin level after", "margin_level_after", PERCENT_POINTS),
    ("Price", "price", fmt.PRICE),
    ("Reference price", "reference_price", fmt.PRICE),
    ("Notional", "notional", fmt.PRICE),
    ("Estimated fees", "est_fees", fmt.PRICE),
    ("Liquidity cost (spread + impact)", "liquidity_cost", fmt.PRICE),
    ("Marginal VaR (per unit of exposure)", "marginal_var", fmt.BPS),
    ("VaR limit", "var_limit", fmt.MONEY),
)
"""The order's figures the ticket shows, with the kind each is written as (logic/views/fmt.py)."""
UNPRICED_BOOK_FIGURES = ("var_before", "var_after", "equity_after", "marginal_var")
"""The figures of the whole book a decision leaves None while a held ticker has no usable price (the gate's
``MISSING_PRICE``): the ticket shows them as the dash with the reason, never the priced part's figures."""


def unpriced_book(decision: Mapping[str, Any]) -> str | None:
    """Why the book's figures (:data:`UNPRICED_BOOK_FIGURES`) of a priced order are missing: the message of its
    ``MISSING_PRICE`` reason ("no usable price for held CCC: ...") when the order itself was priced and costed
    (``cash_after`` is there) but no VaR was computed; None otherwise (the order's own price missing or a bad
    order: nothing of it was computed and its rows are left out)."""
    if decision.get("cash_after") is None or float_or_none(decision.get("var_before")) is not None:
        return None
    for r in decision.get("reasons") or []:
        if str(r.get("code")) == ReasonCode.MISSING_PRICE:
            return str(r.get("message", ""))
    return None


def deltas_frame(decision: Mapping[str, Any], currency: str = fmt.DEFAULT_CURRENCY) -> pd.DataFrame:
    """Before / after / change of VaR, cash and the position, with the unit of each row (the currency or
    shares); rows a rejected order could not compute (bad ticker or quantity) are left out, but the VaR row of a
    book with a held ticker unpriced (:func:`unpriced_book`) is kept with no figures (the dash)."""
    rows = []
    confidence = float_or_none(decision.get("var_confidence"))
    horizon = float_or_none(decision.get("var_horizon_days"))
    unpriced = unpriced_book(decision) is not None
    for label, before_key, after_key in DELTA_ROWS:
        before, after = float_or_none(decision.get(before_key)), float_or_none(decision.get(after_key))
        if label == "VaR" and unpriced:
            before = after = math.nan  # the dash: the priced part's VaR is not the book's
        if before is None or after is None:
            continue
        change = after - before
        unit = "shares" if before_key.startswith("position") else currency
        if label == "VaR":
            change = float_or_none(decision.get("delta_var")) or change
            if confidence is not None and horizon is not None:
                label = f"VaR {confidence:.0%} ({horizon:g} day)"
        rows.append({"figure": label, "unit": unit, "before": before, "after": after, "change": change})
    return pd.DataFrame(rows, columns=["figure", "unit", "before", "after", "change"])


def impact_frame(decision: Mapping[str, Any], currency: str = fmt.DEFAULT_CURRENCY) -> pd.DataFrame:
    """The order's price, costs and the book after it, each written with its unit (``USD 1,234.50``,
    ``20.22%``, ``39.7 bps``); figures that do not apply (margin level of a cash account) or could not be
    computed are left out; the book's figures of a book with a held ticker unpriced (:func:`unpriced_book`) are
    shown as the dash with the reason."""
    why = unpriced_book(decision)
    rows = []
    for label, key, kind in IMPACT_ROWS:
        value = float_or_none(decision.get(key))
        if value is not None:
            rows.append({"figure": label, "value": _impact_text(value, kind, currency)})
        elif why is not None and key in UNPRICED_BOOK_FIGURES:
            rows.append({"figure": label, "value": f"{fmt.DASH} (no data: {why})"})
    return pd.DataFrame(rows, columns=["figure", "value"])


def _impact_text(value: float, kind: str, currency: str) -> str:
    if kind == PERCENT_POINTS:  # the margin level is already in percent
        return f"{value:,.1f}%"
    return fmt.figure(value, kind, currency)


# -- blotter -------------------------------------------------------------------------------------------------


def blotter_frame(desk: Desk, portfolio_id: str, count: int = BLOTTER_ROWS) -> pd.DataFrame:
    """The trade log, newest first: fills and rejected orders with their reasons."""
    records = desk.risk_manager(portfolio_id).trade_log(count)
    rows = []
    for r in records:
        fill = r.get("fill") or {}
        decision = r.get("decision") or {}
        rows.append(
            {
                "time": r.get("ts"),
                "status": r.get("status"),
                "intent": decision.get("intent") or str(OrderIntent.TRADE),  # older records: no intent
                "side": fill.get("side") or decision.get("side"),
                "ticker": fill.get("ticker") or decision.get("ticker"),
                "qty": fill.get("qty") if fill else decision.get("qty"),
                "price": float_or_none(fill.get("price")) if fill else float_or_none(decision.get("price")),
                "notional": float_or_none(fill.get("notional")),
                "fees": float_or_none(fill.get("fees")),
                "realized_pnl": float_or_none(fill.get("realized_pnl")),
                "reasons": "; ".join(str(x.get("code")) for x in r.get("reasons") or []),
                "actor": r.get("actor"),
                "client_order_id": r.get("client_order_id"),
                "trade_id": fill.get("trade_id"),
            }
        )
    df = pd.DataFrame(
        rows,
        columns=[
            "time",
            "status",
            "intent",
            "side",
            "ticker",
            "qty",
            "price",
            "notional",
            "fees",
            "realized_pnl",
            "reasons",
            "actor",
            "client_order_id",
            "trade_id",
        ],
    )
    df["time"] = pd.to_datetime(pd.to_numeric(df["time"], errors="coerce"), unit="s", utc=True)
    for column in ("qty", "price", "notional", "fees", "realized_pnl"):  # numbers, missing where not filled
        df[column] = pd.to_numeric(df[column], errors="coerce")
    df["ticker"] = df["ticker"].map(lambda v: v if v is None else str(v))
    return df
