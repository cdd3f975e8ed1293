"""Alerts: the live feed with filters, acknowledge and resolve, escalation status, the delivery log, and the
rules editor. The filters, the action panel and the editor sit outside the live fragments: a refresh never
wipes what is being typed."""

from __future__ import annotations

import streamlit as st

from dashboard import components as ui
from engine.records import Action
from logic import views
from logic.views.alerts import (
    NEW_RULE,
    RULE_FORM_FIELDS,
    AlertTarget,
    RuleForm,
    alert_target_label,
    alert_targets,
    headline_counts,
    rule_form,
    shown_alert_ids,
)

st.title("Alerts")


def filters(d: views.Desk, pid: str) -> dict:
    c = st.columns([2, 2, 1, 1])
    severities = c[0].multiselect(
        "Severity",
        list(views.SEVERITIES_WORST_FIRST),
        default=list(views.SEVERITIES_WORST_FIRST),
        key="al_sev",
    )
    statuses = c[1].multiselect("State", views.ALERT_STATUSES, default=list(views.ACTIVE_STATUSES), key="al_status")
    scope = c[2].selectbox("Portfolio", [pid, "all"], key="al_scope")
    window = c[3].selectbox(
        "Resolved since",
        list(views.ALERT_WINDOWS),
        index=1,
        key="al_window",
        help="how far back resolved alerts are listed; an active alert is always listed, however old",
    )
    return {
        "portfolio_id": None if scope == "all" else pid,
        "severities": severities,
        "statuses": statuses,
        "window_seconds": views.ALERT_WINDOWS[window],
    }


def feed(d: views.Desk, f: dict) -> None:
    if not ui.health_gate(d):
        return
    df = views.alerts_frame(
        d,
        f["portfolio_id"],
        severities=f["severities"],
        statuses=f["statuses"],
        window_seconds=f["window_seconds"],
    )
    # the counts are of every active alert of the scope, not of the filtered feed: a filter never hides one
    for col, (label, count) in zip(st.columns(4), headline_counts(d, f["portfolio_id"]).items(), strict=True):
        col.metric(label, count, help="every active alert of the portfolio (or of all), whatever the filters")
    ui.table(
        df,
        "alerts",
        "alerts.csv",
        height=300,
        empty="No alert matches the filters.",
        colours={"severity": ui.SEVERITY_COLOURS},
        column_config={
            "value": st.column_config.NumberColumn(format="%.4g"),
            "threshold": st.column_config.NumberColumn(format="%.4g", help="the number compared (resolved)"),
            "threshold_ref": st.column_config.TextColumn("threshold from", help="the live limit it follows"),
            "inhibition": st.column_config.TextColumn("inhibition", help="held back (sends nothing) meanwhile"),
            "escalation_level": st.column_config.NumberColumn("escalation level"),
        },
    )


def act_on_alert(d: views.Desk, f: dict) -> None:
    active = views.alerts_frame(d, f["portfolio_id"], statuses=views.ACTIVE_STATUSES)
    st.subheader("Acknowledge or resolve")
    if active.empty:
        st.caption("No active alert.")
        return
    # keyed by (portfolio, rule), labelled without the state: the choice stays on the alert when it is acknowledged
    targets = alert_targets(active)
    st.session_state["al_shown"] = shown_alert_ids(active)  # a click acts on the alert shown, not a newer one
    may_ack = any(ui.can(Action.ACKNOWLEDGE, pid) for pid, _ in targets)
    may_resolve = ui.can(Action.RESOLVE, f["portfolio_id"])
    if not may_ack and ui.refused(Action.RESOLVE, f["portfolio_id"]):
        return
    with st.form("alert_action_form"):
        st.selectbox(
            "Alert",
            targets,
            format_func=alert_target_label,
            key="al_target",
            help="its severity and state are in the feed above",
        )
        st.text_input("Note", key="al_note", max_chars=500)
        b = st.columns(2)
        if may_ack:
            b[0].form_submit_button("Acknowledge", on_click=alert_action, args=(d, "ack"), icon=":material/done:")
        if may_resolve:
            b[1].form_submit_button("Resolve", on_click=alert_action, args=(d, "resolve"), icon=":material/task_alt:")
    show_result("al_result", "Alert {}.")


def alert_action(d: views.Desk, what: str) -> None:
    """Acknowledge or resolve the alert the picker shows, naming it in the message."""
    s = st.session_state
    target: AlertTarget | None = s.get("al_target")
    pid, rule_id = target if target is not None else (None, None)
    fn = views.acknowledge_alert if what == "ack" else views.resolve_alert

    shown = s.get("al_shown", {}).get(alert_target_label(target)) if target is not None else None

    def act() -> str:
        alert = fn(d, pid, rule_id, ui.identity(), s.get("al_note", ""), shown)
        acted_on = (str(alert.get("portfolio_id", pid)), str(alert.get("rule_id", rule_id)))
        return f"{alert_target_label(acted_on)} {str(alert['status']).lower()}"

    ui.act(act, "al_result")


def deliveries(d: views.Desk, f: dict) -> None:
    if not views.check_health(d).ok:
        return
    ui.table(
        views.delivery_frame(d, f["portfolio_id"]),
        "deliveries",
        "deliveries.csv",
        height=260,
        empty="No notification delivered yet.",
    )


def rules_editor(d: views.Desk) -> None:
    rules = views.rules_frame(d)
    st.caption("The last changed rule first. A threshold may follow a live limit (limits.<name>): it moves with it.")
    ui.table(rules, "rules", "alert_rules.csv", height=280)
    if ui.refused(Action.EDIT_RULES):
        return
    editable = rules[rules["source"] != "removed"]
    choice = st.selectbox("Rule", [NEW_RULE, *editable["id"].astype(str)], key="rule_pick")
    form = rule_form(d, None if choice == NEW_RULE else choice)
    rule = form.values
    existing = form.rule_id is not None
    # keyed by the rule and the version shown: another rule, or a new version of this one, is a new form
    # filled with its values (a colleague's edit is never hidden behind what this form showed before)
    w = form.widget_key
    choices = views.rule_choices()
    metrics = views.rule_metrics()
    sources = views.threshold_sources()
    with st.form("rule_form"):
        if existing:
            who = form.changed_by or ("nobody (the settings file)" if form.version == 0 else "see the Audit page")
            st.caption(
                f"Version {form.version} · last changed by {ui.md(who)}. A save changes only the fields you edit;"
                " it is refused if the rule changed since this form opened."
            )
        r1 = st.columns(4)
        r1[0].text_input("Id", value=rule["id"], key=w("id"), disabled=existing)
        metric = rule.get("metric", metrics[0])
        r1[1].selectbox("Metric", metrics, index=metrics.index(metric) if metric in metrics else 0, key=w("metric"))
        r1[2].selectbox("Operator", choices["op"], index=_index(choices["op"], rule["op"]), key=w("op"))
        r1[3].selectbox(
            "Threshold from",
            sources,
            index=sources.index(rule["threshold_source"]) if rule["threshold_source"] in sources else 0,
            key=w("threshold_source"),
            help="a fixed number, or a live limit of the portfolio (the rule then moves with the limit)",
        )
        r2 = st.columns(4)
        r2[0].number_input(
            "Threshold (fixed number)", value=float(rule["threshold"]), format="%.6g", key=w("threshold")
        )
        r2[1].number_input(
            "Fraction of the limit",
            value=float(rule.get("threshold_fraction", 1.0)),
            format="%.4g",
            key=w("threshold_fraction"),
            help="with a limit: 1 = the limit itself, 0.8 = 80% of it, -1 = a loss limit as a P&L floor",
        )
        r2[2].selectbox(
            "Severity",
            choices["severity"],
            index=_index(choices["severity"], rule["severity"]),
            key=w("severity"),
        )
        r2[3].number_input("Pending (s)", value=float(rule["pending_seconds"]), min_value=0.0, key=w("pending_seconds"))
        r3 = st.columns(4)
        r3[0].number_input(
            "Clear (s)",
            value=float(rule["clear_seconds"]),
            min_value=0.0,
            key=w("clear_seconds"),
            help="data seconds the metric must be back before the alert resolves (no flapping)",
        )
        r3[1].number_input(
            "Stale after (s)", value=float(rule["stale_after_seconds"]), min_value=0.0, key=w("stale_after_seconds")
        )
        r3[2].selectbox(
            "Stale data",
            choices["stale_policy"],
            index=_index(choices["stale_policy"], rule["stale_policy"]),
            key=w("stale_policy"),
        )
        r3[3].text_input(
            "Portfolios", value=str(rule["portfolios"]), key=w("portfolios"), help="comma-separated ids, * for all"
        )
        route = views.routing_default(d, str(rule["severity"]))
        r4 = st.columns(2)
        r4[0].multiselect(
            "Channels",
            views.rule_channels(),
            default=[c for c in rule.get("channels") or [] if c in views.rule_channels()],
            key=w("channels"),
            placeholder=f"from the {rule['severity']} policy: {', '.join(route['channels'])}",
            help="who is told first; empty: the severity's first escalation level ([escalation])",
        )
        recipients = views.rule_recipients(d)
        r4[1].multiselect(
            "Recipients",
            sorted(set(recipients) | set(rule.get("recipients") or [])),
            default=list(rule.get("recipients") or []),
            key=w("recipients"),
            placeholder=f"from the {rule['severity']} policy: {', '.join(route['recipients']) or '-'}",
            help="later escalation levels stay the policy's",
        )
        r5 = st.columns([3, 2])
        r5[0].text_input("Description", value=str(rule.get("description", "") or ""), key=w("description"))
        r5[1].text_input(
            "Actions",
            value=str(rule.get("actions", "") or ""),
            key=w("actions"),
            help="e.g. set_state:HALTED, set_state:REDUCING, reduce:0.25",
        )
        st.text_input("Reason", key="rule_reason", max_chars=200)
        b = st.columns(3)
        b[0].form_submit_button(
            "Save rule", type="primary", on_click=rule_action, args=(d, form, "save"), icon=":material/save:"
        )
        b[1].form_submit_button(
            "Remove rule",
            on_click=rule_action,
            args=(d, form, "remove"),
            disabled=not existing,
            icon=":material/delete:",
        )
        b[2].form_submit_button(
            "Reset to settings",
            on_click=rule_action,
            args=(d, form, "reset"),
            disabled=rule.get("source") not in ("edited",),
            icon=":material/restore:",
        )
    show_result("rule_result", "Rule {} saved.")


def rule_action(d: views.Desk, form: RuleForm, what: str) -> None:
    """The form's buttons: each is made against ``form``, the rule (and version) this form was rendered with."""
    s = st.session_state
    values = {name: s.get(form.widget_key(name), form.values.get(name)) for name in RULE_FORM_FIELDS}
    rule_id = form.rule_id or str(values["id"] or "")
    actor, reason = ui.identity(), s.get("rule_reason", "")
    if what == "save":
        ui.act(lambda: views.save_rule(d, values, actor, reason, seen=form).id, "rule_result")
    elif what == "remove":
        ui.act(lambda: views.remove_rule(d, rule_id, actor, reason, seen=form).id + " removed; it", "rule_result")
    else:
        ui.act(
            lambda: views.reset_rule(d, rule_id, actor, reason, seen=form).id + " reset to the settings; it",
            "rule_result",
        )


def show_result(key: str, template: str) -> None:
    result = st.session_state.pop(key, None)
    if result is None:
        return
    if result["ok"]:
        st.success(template.format(ui.md(result["value"])), icon=":material/check:")
    else:
        ui.show_problem(result["problem"])


def _index(options: tuple[str, ...], value: object) -> int:
    return options.index(value) if value in options else 0


with ui.guard():
    desk = ui.desk()
    pid = ui.selected_portfolio(desk, healthy=True)
    if pid is not None:
        f = filters(desk, pid)
        ui.live(feed, desk, f)
        left, right = st.columns([3, 2])
        with left:
            with ui.guard():
                act_on_alert(desk, f)
        with right:
            st.subheader("Escalation policy")
            with ui.guard():
                ui.table(views.escalation_summary(desk), "escalation", "escalation.csv", height="content")
        st.subheader("Delivery log")
        ui.live(deliveries, desk, f)
        st.subheader("Rules")
        with ui.guard():
            rules_editor(desk)
