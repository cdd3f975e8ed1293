"""Trade: positions with P&L, a ticket showing the pre-trade decision before it can execute, the blotter."""

from __future__ import annotations

import streamlit as st

from dashboard import components as ui
from engine.records import DecisionStatus, ExecutionStatus, OrderIntent
from logic import views
from logic.views import fmt
from logic.views.trade import UNPRICED_COLUMNS, UNPRICED_REASON, unpriced_book

# Session keys: the last checked ticket (its inputs, decision and the client order id it executes with), the
# result of executing it, and the ticket whose execution came back with its outcome unknown (kept until a resend
# with its client order id settles it). (Comments, not docstrings: Streamlit's "magic" would print a bare string.)
TICKET = "ticket"
RESULT = "ticket_result"
UNKNOWN = "ticket_outcome_unknown"
DEFAULT_QTY = 100

st.title("Trade")


def positions(d: views.Desk, pid: str) -> None:
    if not ui.health_gate(d):
        return
    pv = views.positions_view(d, pid)
    t = pv.totals
    if pv.missing:
        st.warning(
            f"No usable price for {ui.md(', '.join(pv.missing))}: not valued (—), so the equity and the unrealized "
            "P&L below leave it out (understated); the gate refuses trades until it is priced.",
            icon=":material/warning:",
        )
    incomplete = " — incomplete" if pv.missing else ""
    # three to a row: a seven-figure amount with its currency needs a third of the page at st.metric's size
    cols = st.columns(3)
    cols[0].metric(f"Equity{incomplete}", ui.money(t.get("equity")))
    cols[1].metric("Cash", ui.money(t.get("cash")))
    cols[2].metric("Trading state", str(t.get("trading_state", "—")))
    cols = st.columns(3)
    cols[0].metric(f"Unrealized P&L{incomplete}", ui.money(t.get("unrealized_pnl"), signed=True))
    cols[1].metric("Realized P&L", ui.money(t.get("realized_pnl"), signed=True))
    st.subheader("Positions")
    ui.table(
        pv.positions,
        "positions",
        f"positions_{pid}.csv",
        # the dash of an unpriced position says why in the column's help
        column_config={c: {"help": f"{fmt.DASH}: {UNPRICED_REASON}"} for c in UNPRICED_COLUMNS} if pv.missing else None,
        totals=fmt.with_totals(pv.positions, POSITION_TOTALS, "ticker"),
        empty="No open position.",
    )


# Columns the positions export sums in its TOTAL row (the figures the metrics above the table total).
POSITION_TOTALS = ("market_value", "weight", "unrealized_pnl", "realized_pnl")


def check(d: views.Desk, pid: str) -> None:
    s = st.session_state
    ticker, side, qty = s.get("tk_ticker"), s.get("tk_side"), s.get("tk_qty")
    intent = views.ORDER_TYPES.get(s.get("tk_order_type") or "", OrderIntent.TRADE)

    def run() -> dict:
        ticket = {"portfolio": pid, "ticker": ticker, "side": side, "qty": qty, "intent": intent}
        return {
            **ticket,
            "decision": views.check_ticket(d, pid, ticker, side, qty, ui.identity(), intent),  # a refusal is audited
            # chosen once per check, so every Execute click of this ticket sends the same id; the same order as
            # one whose outcome is unknown reuses that order's id, so sending it again cannot trade twice
            "client_order_id": views.ticket_order_id(s.get(UNKNOWN), ticket),
        }

    s.pop(RESULT, None)
    ui.act(run, TICKET)


def execute(d: views.Desk) -> None:
    s = st.session_state
    ticket = s[TICKET]["value"]
    ui.act(
        lambda: views.execute_ticket(
            d,
            ticket["portfolio"],
            ticket["ticker"],
            ticket["side"],
            ticket["qty"],
            ticket["client_order_id"],
            ui.identity(),
            ticket["intent"],
        ),
        RESULT,
    )
    held = s[RESULT]
    if not held["ok"]:
        return
    unknown = s.get(UNKNOWN)
    if views.outcome_unknown(held["value"]):
        s[UNKNOWN] = ticket
    elif unknown is not None and unknown["client_order_id"] == ticket["client_order_id"]:
        if views.settles_unknown(held["value"]):
            s.pop(UNKNOWN, None)


# Send the order whose outcome is unknown again, with its client order id (it fills at most once).
def resend(d: views.Desk) -> None:
    s = st.session_state
    s[TICKET] = {"ok": True, "value": s[UNKNOWN]}
    execute(d)


# The order whose outcome is unknown, until a resend settles it: shown whatever the store's health (it is when
# Redis fails that it matters).
def unknown_outcome(d: views.Desk) -> None:
    ticket = st.session_state.get(UNKNOWN)
    if ticket is None:
        return
    liquidation = " liquidation-only" if ticket["intent"] == OrderIntent.LIQUIDATION else ""
    label = f"{ticket['side']} {ticket['qty']} {ticket['ticker']}{liquidation} on {ticket['portfolio']}"
    st.warning(
        f"**Outcome unknown** · {ui.md(label)} · client order id {ui.md(ticket['client_order_id'])}: the order was "
        "sent but Redis did not answer, so it **may have filled**. Do not enter it as a new order. Once Redis is "
        "back, press *Resend* (or check the same order again and execute it): it keeps this client order id, so "
        "the gate returns the fill if it happened and trades the order once if it did not.",
        icon=":material/help:",
    )
    st.button("Resend", key="tk_resend", on_click=resend, args=(d,), icon=":material/replay:")


def use_quantity(qty: int) -> None:
    st.session_state["tk_qty"] = qty


def ticket_form(d: views.Desk, pid: str) -> None:
    st.subheader("Ticket")
    tickers = views.ticket_tickers(d)
    st.session_state.setdefault("tk_qty", DEFAULT_QTY)  # set here, not as value=: the resize button sets it too
    types = views.order_types(ui.identity(), pid)
    with st.form("ticket_form"):
        c1, c2 = st.columns(2)
        c1.selectbox("Ticker", tickers, key="tk_ticker")
        c2.segmented_control("Side", list(views.SIDES), key="tk_side", default=views.SIDES[0])
        st.number_input("Quantity (shares)", step=1, key="tk_qty")
        if len(types) > 1:  # whoever may send liquidation-only orders (a risk manager, an admin)
            st.segmented_control(
                "Order",
                types,
                key="tk_order_type",
                default=views.default_order_type(d, pid, types),  # HALTED: liquidation-only
                help="Liquidation-only: may only shrink the position, never grow or flip it; it passes HALTED and "
                "REDUCING (how a halted book is de-risked by hand).",
            )
        st.form_submit_button(
            "Check", type="secondary", on_click=check, args=(d, pid), icon=":material/fact_check:"
        )


def decision_panel(d: views.Desk, pid: str) -> None:
    held = st.session_state.get(TICKET)
    if held is None:
        st.caption(
            "Fill the ticket and press Check: the pre-trade decision shows here before you can execute."
        )
        return
    if not held["ok"]:
        ui.show_problem(held["problem"])
        return
    ticket = held["value"]
    if ticket["portfolio"] != pid:
        st.caption("The last checked ticket was for another portfolio: check again.")
        return
    decision = ticket["decision"]
    liquidation = ticket["intent"] == OrderIntent.LIQUIDATION
    label = f"{ticket['side']} {ticket['qty']} {ticket['ticker']}" + (" · liquidation-only" if liquidation else "")
    if decision["status"] == DecisionStatus.APPROVED:
        st.success(f"**APPROVED** · {ui.md(label)}", icon=":material/check_circle:")
    else:
        st.error(f"**REJECTED** · {ui.md(label)}", icon=":material/block:")
        ui.table(views.reasons_frame(decision), "reasons", "reasons.csv")
        offer = views.max_qty_offer(decision)
        if offer is not None:
            st.button(
                f"Use {offer:,} shares, the largest {ticket['side']} of {ticket['ticker']} that passes now",
                key="tk_use_max",
                on_click=use_quantity,
                args=(offer,),
                icon=":material/straighten:",
            )
        elif decision.get("max_qty_allowed") == 0:
            st.caption(f"No quantity of this {ui.md(ticket['side'])} passes now: the reasons above say why.")
    why = unpriced_book(decision)  # a held ticker unpriced: the VaR row's dash says why in the columns' help
    ui.table(
        views.deltas_frame(decision, ui.currency()),
        "deltas",
        "decision.csv",
        height="content",
        kinds=DELTA_KINDS,
        column_config={c: {"help": f"{fmt.DASH}: no data: {why}"} for c in DELTA_KINDS} if why else None,
    )
    ui.table(views.impact_frame(decision, ui.currency()), "impact", "order.csv", height="content")
    if decision["status"] == DecisionStatus.APPROVED and not ui.refused(
        views.ticket_action(ticket["intent"]), ticket["portfolio"]
    ):
        st.button(
            "Execute", type="primary", key="tk_execute", on_click=execute, args=(d,), icon=":material/send:"
        )
        unknown = st.session_state.get(UNKNOWN)
        if unknown is not None and unknown["client_order_id"] == ticket["client_order_id"]:
            st.caption(
                f"client order id {ui.md(ticket['client_order_id'])}: the id of the order whose outcome is "
                "unknown, so executing cannot trade it twice"
            )
        else:
            st.caption(f"client order id {ui.md(ticket['client_order_id'])}: a second click cannot trade twice")
    result = st.session_state.get(RESULT)
    if result is not None:
        execution_result(result)


# Before / after / change mix the currency and shares: two decimals, the unit column says which.
DELTA_KINDS = dict.fromkeys(("before", "after", "change"), fmt.NUMBER)


def execution_result(result: dict) -> None:
    if not result["ok"]:
        ui.show_problem(result["problem"])
        return
    r = result["value"]
    fill = r.get("fill") or {}
    if r.get("duplicate"):
        st.info(
            f"Already executed as trade {ui.md(fill.get('trade_id', '?'))}: this ticket's order id was "
            "filled before, nothing was traded twice.",
            icon=":material/content_copy:",
        )
    elif r["status"] == ExecutionStatus.FILLED:
        st.success(
            f"**FILLED** {ui.md(fill['side'])} {fmt.qty(fill['qty'])} {ui.md(fill['ticker'])} @ "
            f"{ui.md(ui.money(fill['price'], cents=True))} · fees {ui.md(ui.money(fill['fees'], cents=True))}"
            f" · trade {ui.md(fill['trade_id'])}",
            icon=":material/done_all:",
        )
    elif views.outcome_unknown(r):
        st.warning(
            "**Outcome unknown** — the order was sent but Redis did not answer: it **may have filled**. Resend it "
            "with the same client order id once Redis is back (above); do not check it as a new order.",
            icon=":material/help:",
        )
        ui.table(views.reasons_frame(r), "exec_reasons", "execution_reasons.csv")
    else:
        st.error(
            "**Not executed** — the re-check inside the transaction refused it:", icon=":material/block:"
        )
        ui.table(views.reasons_frame(r), "exec_reasons", "execution_reasons.csv")


def blotter(d: views.Desk, pid: str) -> None:
    if not views.check_health(d).ok:
        return
    st.subheader("Blotter")
    ui.table(
        views.blotter_frame(d, pid),
        "blotter",
        f"blotter_{pid}.csv",
        height=320,
        empty="No order yet: the blotter lists every fill and rejected order.",
    )


with ui.guard():
    desk = ui.desk()
    unknown_outcome(desk)
    pid = ui.selected_portfolio(desk)
    if pid is not None:
        ui.live(positions, desk, pid)
        if views.check_health(desk).ok:
            left, right = st.columns([2, 3])
            with left:
                ticket_form(desk, pid)
            with right:
                st.subheader("Pre-trade decision")
                decision_panel(desk, pid)
            ui.live(blotter, desk, pid)
