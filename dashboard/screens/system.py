"""System: daemon heartbeats, market-data age, Redis health, versions, and the trading-state kill switch."""

from __future__ import annotations

import streamlit as st

from dashboard import components as ui
from engine.records import Action, TradingState
from logic import views

st.title("System")


def status(d: views.Desk) -> None:
    sv = views.system_view(d)
    if sv.health.problem is not None:
        ui.show_problem(sv.health.problem)
        st.subheader("Versions")
        ui.table(sv.versions, "versions", "versions.csv", height="content")
        return
    for warning in sv.health.warnings:
        st.warning(ui.md(warning), icon=":material/schedule:")

    st.subheader("Daemons")
    cols = st.columns(len(sv.health.daemons) + 1)
    for col, daemon in zip(cols, sv.health.daemons, strict=False):
        age = "never" if daemon.age_seconds is None else f"{daemon.age_seconds:.1f} s ago"
        col.metric(
            f"{daemon.name} daemon",
            daemon.state.upper(),
            f"heartbeat {age}",
            delta_color="off",
            delta_arrow="off",
        )
    if sv.market is not None:
        cols[-1].metric(
            "Last tick",
            f"{sv.market.age_seconds:.1f} s ago",
            f"market version {sv.market.version}",
            delta_color="off",
            delta_arrow="off",
        )
        if sv.market.stale_tickers:
            st.warning(
                f"Stale prices: {ui.md(', '.join(sv.market.stale_tickers))}", icon=":material/schedule:"
            )
    ui.table(sv.heartbeats, "heartbeats", "heartbeats.csv")

    left, right = st.columns(2)
    with left:
        st.subheader("Redis")
        ui.table(views.key_value_frame(sv.redis), "redis", "redis_health.csv", height="content")
    with right:
        st.subheader("Versions")
        ui.table(sv.versions, "versions", "versions.csv", height="content")


def trading_state(d: views.Desk, pid: str) -> None:
    tv = views.trading_state_view(d, pid)
    st.session_state["ts_shown_state"] = tv.state  # what the person sees: the change is made against it
    ui.state_badge(tv.state, tv.reason, tv.actor, tv.ts)
    st.caption("Audit (newest first)")
    ui.table(tv.audit, "audit", f"audit_{pid}.csv", height=240, empty="No trading-state change recorded.")


def apply_state(d: views.Desk, pid: str) -> None:
    ui.act(
        lambda: views.change_trading_state(
            d,
            pid,
            st.session_state["ts_new_state"],
            st.session_state.get("ts_reason", ""),
            ui.identity(),
            st.session_state.get("ts_shown_state"),
        ),
        "ts_result",
    )


def kill_switch(d: views.Desk, pid: str) -> None:
    st.subheader(f"Trading state · {pid}")
    ui.live(trading_state, d, pid)
    if ui.refused(Action.TRADING_STATE, pid):
        return
    with st.form("trading_state_form"):
        # a radio always holds one state (a segmented control could be clicked off into "no state")
        st.radio(
            "New state",
            views.TRADING_STATES,
            index=views.TRADING_STATES.index(TradingState.HALTED),
            key="ts_new_state",
            horizontal=True,
        )
        st.text_input("Reason (required, audited)", key="ts_reason", max_chars=200)
        st.form_submit_button("Apply", type="primary", on_click=apply_state, args=(d, pid))
    result = st.session_state.pop("ts_result", None)
    if result is not None:
        if result["ok"]:
            st.success(f"Trading state is now {ui.md(result['value'].state)}.", icon=":material/check:")
        else:
            ui.show_problem(result["problem"])


with ui.guard():
    desk = ui.desk()
    ui.live(status, desk)
    pid = ui.portfolio()
    if pid is not None and views.check_health(desk).ok:
        kill_switch(desk, pid)
