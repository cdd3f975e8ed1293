"""System: daemon heartbeats, market-data age, Redis health, versions, and the trading-state kill switch."""

from __future__ import annotations

import functools

import streamlit as st

from dashboard import components as ui
from engine.records import Action, TradingState
from logic import views
from logic.views.system import StateChange, check_trading_state_change

st.title("System")

# Session key of a kill-switch change that lifts a restriction, waiting for its confirmation.
PENDING_KEY = "ts_pending"


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
    if not sv.monitors.empty:
        st.subheader("Monitors sharing the portfolios")
        st.metric(
            "Live monitors",
            f"{sv.live_monitors} of {len(sv.monitors)}",
            "a stale one's portfolios moved to the live ones",
            delta_color="off",
            delta_arrow="off",
        )
        st.caption(
            f"The monitor row above is the heartbeat of the monitor that beat last ({ui.md(sv.last_monitor or '-')}):"
            " its counters (ticks processed, ...) are that monitor's, not a sum over the monitors."
        )
        ui.table(sv.monitors, "monitors", "monitors.csv", height="content")

    left, right = st.columns(2)
    with left:
        st.subheader("Redis")
        ui.table(views.key_value_frame(sv.redis), "redis", "redis_health.csv", height="content")
    with right:
        st.subheader("Versions")
        ui.table(sv.versions, "versions", "versions.csv", height="content")


def trading_state(d: views.Desk, pid: str) -> None:
    # what the person sees (the change is made against it): the state read, or MISSING / UNREADABLE when the
    # read fails, never a state an earlier run showed
    tv = views.trading_state_view(d, pid, shown=functools.partial(st.session_state.__setitem__, "ts_shown_state"))
    ui.state_badge(tv.state, tv.reason, tv.actor, tv.ts)
    st.caption("Audit (newest first)")
    ui.table(tv.audit, "audit", f"audit_{pid}.csv", height=240, empty="No trading-state change recorded.")


def apply_state(d: views.Desk, pid: str) -> None:
    """The form's Apply: a change to a stricter (or the same) state is made at once; one that lifts a restriction
    waits for its confirmation (a bad request is refused now, not after the confirmation)."""
    s = st.session_state
    s.pop(PENDING_KEY, None)
    change = StateChange(pid, s["ts_new_state"], s.get("ts_reason", ""), s.get("ts_shown_state"))
    if not change.lifts:
        commit_state(d, change)
        return
    ui.act(lambda: check_trading_state_change(d, change, ui.identity()), "ts_result")
    if s["ts_result"]["ok"]:
        s.pop("ts_result")
        s[PENDING_KEY] = change


def commit_state(d: views.Desk, change: StateChange) -> None:
    """Make ``change`` against the state it was decided on; once made, the form is back to its defaults (HALTED,
    no reason): the next change is chosen and explained afresh."""
    s = st.session_state
    s.pop(PENDING_KEY, None)
    ui.act(
        lambda: views.change_trading_state(
            d, change.portfolio_id, change.state, change.reason, ui.identity(), change.shown
        ),
        "ts_result",
    )
    if s["ts_result"]["ok"]:
        s["ts_new_state"] = TradingState.HALTED
        s["ts_reason"] = ""


def confirm_lift(d: views.Desk, pid: str) -> None:
    """The confirmation of a pending change that lifts a restriction, shown below the form until it is confirmed
    or cancelled; a change asked for on another portfolio is dropped."""
    change: StateChange | None = st.session_state.get(PENDING_KEY)
    if change is None:
        return
    if change.portfolio_id != pid:
        st.session_state.pop(PENDING_KEY, None)
        return
    with st.container(border=True):
        st.warning(
            f"Lift {ui.md(pid)} from {change.shown or TradingState.HALTED} to {change.state}? Orders refused until"
            f" now will be approved again. Reason: {ui.md(change.reason)}",
            icon=":material/warning:",
        )
        shown_now = st.session_state.get("ts_shown_state")
        if shown_now is not None and shown_now != change.shown:
            st.error(
                f"{ui.md(pid)} is {shown_now} now, not {change.shown} as when you chose: the change will be refused;"
                " cancel and choose again.",
                icon=":material/sync_problem:",
            )
        yes, no = st.columns(2)
        yes.button(f"Confirm {change.state}", key="ts_confirm", type="primary", on_click=commit_state, args=(d, change))
        no.button("Cancel", key="ts_cancel", on_click=lambda: st.session_state.pop(PENDING_KEY, None))


def kill_switch(d: views.Desk, pid: str) -> None:
    st.subheader(f"Trading state · {pid}")
    ui.live(trading_state, d, pid)
    if ui.refused(Action.TRADING_STATE, pid):
        return
    with st.form("trading_state_form"):
        # a radio always holds one state (a segmented control could be clicked off into "no state"); its default
        # lives in the session state, not in index=: commit_state sets the key back to HALTED, and a widget given
        # both makes Streamlit log a widget-state warning on every change
        st.session_state.setdefault("ts_new_state", TradingState.HALTED)
        st.radio("New state", views.TRADING_STATES, key="ts_new_state", horizontal=True)
        st.text_input("Reason (required, audited)", key="ts_reason", max_chars=200)
        st.form_submit_button("Apply", type="primary", on_click=apply_state, args=(d, pid))
    confirm_lift(d, pid)
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
