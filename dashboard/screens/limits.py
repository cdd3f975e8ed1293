"""Limits: the live limits of the selected portfolio (unit, version, last change, history) and the change form."""

from __future__ import annotations

import streamlit as st

from dashboard import components as ui
from engine.records import Action
from logic import views

st.title("Limits")


def apply_change(d: views.Desk, pid: str, seen: views.LimitsView) -> None:
    """The form's submit: the change is made against ``seen``, the limits this form was rendered with."""
    s = st.session_state
    form = {name: s.get(seen.widget_key(name), seen.values[name]) for name in views.LIMIT_FIELDS}
    ui.act(lambda: views.change_limits(d, pid, form, ui.identity(), s.get("lim_reason", ""), seen), "lim_result")


def page(d: views.Desk, pid: str) -> None:
    lv = views.limits_view(d, pid)
    st.subheader(f"Limits · {pid}")
    st.caption(
        f"Version {lv.version} · last changed by {ui.md(lv.actor)} at {ui.when(lv.ts)}: {ui.md(lv.reason)}. "
        "Every gate, monitor and page uses a change from its next check or tick."
    )
    ui.table(lv.table, "limits", f"limits_{pid}.csv", height="content")
    result = st.session_state.pop("lim_result", None)
    if result is not None:
        if result["ok"]:
            st.success(f"Limits changed: version {result['value']}.", icon=":material/check:")
        else:
            ui.show_problem(result["problem"])
    if ui.refused(Action.EDIT_LIMITS):
        return
    with st.form("limits_form"):
        cols = st.columns(3)
        for k, (name, (label, unit, _kind)) in enumerate(views.LIMIT_FIELDS.items()):
            # keyed by the version shown: a new version is a new form, filled with its values
            cols[k % 3].text_input(f"{label} ({unit})", value=lv.values[name], key=lv.widget_key(name))
        st.text_input("Reason (required, audited)", key="lim_reason", max_chars=200)
        st.form_submit_button("Change limits", type="primary", on_click=apply_change, args=(d, pid, lv))
    st.subheader("Changes (newest first)")
    ui.table(lv.history, "limit_changes", f"limit_changes_{pid}.csv", height=240, empty=lv.history_empty)


with ui.guard():
    desk = ui.desk()
    pid = ui.selected_portfolio(desk, healthy=True)
    if pid is not None:
        page(desk, pid)
