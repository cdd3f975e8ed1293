"""Firm: every portfolio together (firm VaR beside the sum of stand-alone VaRs, exposure by ticker, the worst
drawdowns, each portfolio's traffic lights) and the desk-wide kill switch, HALT ALL / REDUCE ALL, behind a
confirmation, with who used it last."""

from __future__ import annotations

import streamlit as st

from dashboard import components as ui
from engine.records import Action
from logic import views

st.title("Firm")

# Session key of the switch waiting for its confirmation.
PENDING_KEY = "firm_pending"


def figures(d: views.Desk) -> None:
    if not ui.health_gate(d):
        return
    fv = views.firm_view(d)
    for pid, why in fv.failed.items():
        st.warning(f"{ui.md(pid)} is left out of the figures: {ui.md(why)}", icon=":material/warning:")
    for pid, why in fv.understated.items():
        st.warning(f"{ui.md(pid)} is understated: {ui.md(why)}", icon=":material/warning:")
    h, r = fv.headline, fv.risk
    horizon = f"{r.confidence:.0%}, {r.horizon_days:g} day"
    # three to a row: a firm's exposures run to eight figures with the currency
    cols = st.columns(3)
    partial = "" if fv.complete else " — incomplete"
    cols[0].metric(f"Firm VaR ({horizon}){partial}", ui.money(h["firm_var"]))
    cols[1].metric("Sum of stand-alone VaRs", ui.money(h["standalone_var_sum"]))
    cols[2].metric("Diversification", ui.money(h["diversification"]))
    st.caption(
        f"One yardstick for every portfolio, so the figures add up: normal VaR on today's covariance at the global "
        f"limits ({horizon}). A portfolio's own VaR (its method, its limits) is on its Overview and may differ."
    )
    cols = st.columns(3)
    cols[0].metric("Gross exposure", ui.money(h["gross_exposure"]))
    cols[1].metric("Net exposure", ui.money(h["net_exposure"], signed=True))

    st.subheader("Portfolios")
    ui.table(fv.portfolios, "firm_portfolios", "firm_portfolios.csv", height="content", empty="No portfolio.")
    left, right = st.columns([3, 2])
    with left:
        st.subheader("Exposure by ticker")
        ui.table(fv.exposures, "firm_exposure", "firm_exposure.csv", empty="No position in any portfolio.")
    with right:
        st.subheader("Worst drawdowns")
        ui.table(fv.worst, "firm_worst", "firm_drawdowns.csv", height="content", empty="No snapshot yet.")
    last(fv.last_action)


def last(action: views.FirmAction | None) -> None:
    if action is None:
        st.caption("No desk-wide action recorded.")
        return
    st.caption(
        f"Last desk-wide action: **{ui.md(action.action)}** by {ui.md(action.actor)} at {ui.when(action.ts)}"
        f" — {ui.md(action.reason)} ({action.changed} of {action.portfolios} portfolios changed)"
    )


def confirm(d: views.Desk, switch: str) -> None:
    ui.act(
        lambda: views.firm_switch(
            d, switch, ui.identity(), st.session_state.get("firm_reason", "")
        ),
        "firm_result",
    )
    st.session_state.pop(PENDING_KEY, None)


def kill_switch(d: views.Desk) -> None:
    st.subheader("Desk-wide kill switch")
    st.caption(
        "Sets every portfolio's trading state in one transaction, with one audit record. REDUCE ALL leaves a "
        "HALTED portfolio HALTED; lift a state per portfolio on the System page."
    )
    if ui.refused(Action.FIRM_SWITCH):
        return
    c = st.columns([4, 1, 1])
    c[0].text_input("Reason (required, audited)", key="firm_reason", max_chars=200)
    for col, switch in zip(c[1:], views.FIRM_SWITCHES, strict=True):
        if col.button(switch, key=f"firm_{switch}", type="primary", width="stretch"):
            st.session_state[PENDING_KEY] = switch
    pending = st.session_state.get(PENDING_KEY)
    if pending is not None:
        with st.container(border=True):
            st.warning(f"{pending}: every portfolio of the desk. Are you sure?", icon=":material/warning:")
            yes, no = st.columns(2)
            yes.button(f"Confirm {pending}", key="firm_confirm", type="primary", on_click=confirm, args=(d, pending))
            no.button("Cancel", key="firm_cancel", on_click=lambda: st.session_state.pop(PENDING_KEY, None))
    result = st.session_state.pop("firm_result", None)
    if result is not None:
        if result["ok"]:
            changes = result["value"]
            st.success(
                "Done: " + ", ".join(f"{ui.md(pid)} {c['previous']} → {c['state']}" for pid, c in changes.items()),
                icon=":material/check:",
            )
        else:
            ui.show_problem(result["problem"])


with ui.guard():
    desk = ui.desk()
    ui.live(figures, desk)
    if views.check_health(desk).ok:
        kill_switch(desk)
