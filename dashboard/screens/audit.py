"""Audit: every fill, refused execution, refused check, trading-state change, rule change, limit change,
acknowledgement, automated action and corporate action of the desk, newest first, filtered, with CSV export."""

from __future__ import annotations

import streamlit as st

from dashboard import components as ui
from logic import views

st.title("Audit")


def filters(d: views.Desk) -> views.AuditFilter:
    """The filter widgets (outside the live fragment, so choosing is never interrupted)."""
    everything = views.audit_view(d)  # the choices: every portfolio and every actor on record
    c1, c2, c3, c4 = st.columns([2, 2, 2, 1])
    portfolios = c1.multiselect("Portfolio", list(everything.portfolios), key="au_portfolios", placeholder="all")
    kinds = c2.multiselect("Kind", list(everything.kinds), key="au_kinds", placeholder="all")
    actors = c3.multiselect("Actor", list(everything.actors), key="au_actors", placeholder="all")
    st.session_state.setdefault("au_window", views.AUDIT_DEFAULT_WINDOW)
    window = c4.selectbox("Time window", list(views.AUDIT_WINDOWS), key="au_window")
    return views.window_filter(d.clock(), window, portfolios, actors, kinds)


def trail(d: views.Desk, chosen: views.AuditFilter) -> None:
    av = views.audit_view(d, chosen)
    shown = len(av.entries)
    more = f" (the newest {shown:,} of {av.matched:,} that match)" if av.matched > shown else ""
    st.caption(
        f"{shown:,} records{more} · as of {ui.when(av.as_of)} · kept through re-seeds and resets "
        "(only `warmup.py --reset --wipe-audit` removes them)"
    )
    if av.cut_note:
        st.warning(av.cut_note, icon=":material/warning:")
    if av.archive_note:
        st.caption(av.archive_note)
    if av.table.empty:
        st.caption("No audit record matches these filters.")
        return
    st.dataframe(
        av.table,
        hide_index=True,
        height=min(38 + 35 * len(av.table), 640),
        key="audit_table",
        column_config={
            "time": st.column_config.TextColumn("time (UTC)", width="medium"),
            "summary": st.column_config.TextColumn("summary", width="large"),
            "detail": st.column_config.TextColumn("detail", width="large"),
        },
    )
    st.download_button(
        "Export CSV",
        data=views.audit_csv(av),
        file_name="audit.csv",
        mime="text/csv",
        key="audit_csv",
        on_click="ignore",
        icon=":material/download:",
    )


with ui.guard():
    desk = ui.desk()
    if ui.health_gate(desk):
        chosen = filters(desk)
        ui.live(trail, desk, chosen)
