"""View models of the Alerts page (``dashboard/screens/alerts.py``): the filtered alert feed and its counts,
acknowledge and resolve, the delivery log, the escalation policy and the rules editor. Every change goes
through the alert engine, which validates and audits it.

The rules editor's form is a :class:`RuleForm`: the rule as the page rendered it, with its version and rev. A
save sends only the fields that differ from what the form showed (not from the live rule, which may have moved
since), and a save, removal or reset is made against that version: when the rule moved since (a colleague's
edit, removal, reset), the engine refuses it (``RULES_CHANGED``, nothing written), so a stale form never
reverts a colleague's edit, removes a rule it did not show, or adds back a rule removed meanwhile.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from engine.records import ACTIVE_ALERT_STATUSES, Action, AlertStatus, Severity
from logic.access import Identity, authorize
from logic.views.common import Desk, InputError, records_frame

# -- the alert feed ------------------------------------------------------------------------------------------

ALERT_COLUMNS = (
    "severity",
    "status",
    "portfolio_id",
    "rule_id",
    "description",
    "metric",
    "value",
    "threshold",
    "threshold_ref",
    "inhibition",
    "op",
    "triggered_at",
    "acknowledged_by",
    "acknowledged_at",
    "resolved_at",
    "resolved_by",
    "escalation_level",
    "next_escalation_at",
    "alert_id",
)
ALERT_TIME_COLUMNS = ("triggered_at", "acknowledged_at", "resolved_at", "next_escalation_at")
ALERT_STATUSES: tuple[str, ...] = tuple(s.value for s in AlertStatus)
"""The states the feed filters on, in lifecycle order (TRIGGERED, ACKNOWLEDGED, RESOLVED)."""
ACTIVE_STATUSES: tuple[str, ...] = tuple(s.value for s in AlertStatus if s in ACTIVE_ALERT_STATUSES)
"""The open states, in lifecycle order: the feed's default filter and the alerts the action panel offers."""
SEVERITIES_WORST_FIRST: tuple[str, ...] = tuple(s.value for s in reversed(Severity))
"""The severities the feed filters on, CRITICAL first."""
ALERT_WINDOWS: dict[str, float | None] = {"1 h": 3600.0, "24 h": 86400.0, "7 days": 7 * 86400.0, "all": None}


def alerts_frame(
    desk: Desk,
    portfolio_id: str | None,
    *,
    severities: Iterable[str] | None = None,
    statuses: Iterable[str] | None = None,
    window_seconds: float | None = None,
    limit: int = 200,
) -> pd.DataFrame:
    """Active and resolved alerts, newest first, filtered (severity, status, portfolio). ``window_seconds`` and
    ``limit`` thin out the resolved alerts only: every active alert that passes the other filters is listed,
    however long ago it fired (:meth:`logic.alerts.AlertEngine.list_alerts`)."""
    since = None if window_seconds is None else desk.clock() - window_seconds
    alerts = desk.alert_engine().list_alerts(
        portfolio_id,
        status=_set_or_none(statuses),
        severity=_set_or_none(severities),
        since=since,
        limit=limit,
    )
    df = pd.DataFrame.from_records([{**a, "inhibition": inhibition_text(a)} for a in alerts])
    df = df.reindex(columns=list(ALERT_COLUMNS))
    df["threshold_ref"] = df["threshold_ref"].map(lambda v: v if isinstance(v, str) else "")
    for col in ALERT_TIME_COLUMNS:
        df[col] = pd.to_datetime(pd.to_numeric(df[col], errors="coerce"), unit="s", utc=True)
    return df


def inhibition_text(alert: Mapping[str, Any]) -> str:
    """``inhibited by var_breach`` for an alert a CRITICAL one holds back (it sends nothing meanwhile), else
    empty: an inhibited alert is listed and says so, never silent."""
    if not alert.get("inhibited"):
        return ""
    return f"inhibited by {alert.get('inhibited_by') or 'a CRITICAL alert on ' + str(alert.get('metric'))}"


def alert_counts(alerts: pd.DataFrame) -> dict[str, int]:
    """Counts of the active alerts of an :func:`alerts_frame`: active, unacknowledged, critical, escalated."""
    active = alerts[alerts["status"].isin(list(ACTIVE_STATUSES))]
    return {
        "Active": len(active),
        "Unacknowledged": int((active["status"] == AlertStatus.TRIGGERED.value).sum()),
        "Critical active": int((active["severity"] == Severity.CRITICAL.value).sum()),
        "Escalated": int((pd.to_numeric(active["escalation_level"], errors="coerce").fillna(0) > 1).sum()),
    }


def headline_counts(desk: Desk, portfolio_id: str | None) -> dict[str, int]:
    """The Alerts page's headline counts: every active alert of ``portfolio_id`` (None: every portfolio), whatever
    the feed's filters show. A severity left out of the filter, or a window that starts after the alert fired,
    must not make an open CRITICAL alert read as zero."""
    return alert_counts(alerts_frame(desk, portfolio_id, statuses=ACTIVE_STATUSES))


def _set_or_none(values: Iterable[str] | None) -> set[str] | None:
    return None if values is None else set(values)


# -- acknowledge and resolve ---------------------------------------------------------------------------------

AlertTarget = tuple[str, str]
"""An active alert as the action panel picks it: (portfolio id, rule id), which stays the same while the alert
moves from TRIGGERED to ACKNOWLEDGED (there is at most one active alert per rule and portfolio)."""


def alert_targets(alerts: pd.DataFrame) -> list[AlertTarget]:
    """The action panel's choices: the (portfolio, rule) of each alert of an :func:`alerts_frame`, in its order."""
    return [(str(pid), str(rule)) for pid, rule in zip(alerts["portfolio_id"], alerts["rule_id"], strict=True)]


def shown_alert_ids(alerts: pd.DataFrame) -> dict[str, str]:
    """The alert id of each alert of an :func:`alerts_frame`, by :func:`alert_target_label`: what the action
    panel showed, so a click acts on that alert only (:func:`acknowledge_alert`)."""
    return {
        alert_target_label((str(pid), str(rule))): str(aid)
        for pid, rule, aid in zip(alerts["portfolio_id"], alerts["rule_id"], alerts["alert_id"], strict=True)
        if isinstance(aid, str) and aid
    }


def alert_target_label(target: AlertTarget) -> str:
    """``main · var_breach``: the alert's name in the picker and in the messages. Its state and severity stay
    out of it on purpose: a picker keeps its choice by the label, so a label that changed on Acknowledge would
    drop the choice and leave the next button acting on another alert."""
    return f"{target[0]} · {target[1]}"


def acknowledge_alert(
    desk: Desk, portfolio_id: str | None, rule_id: str | None, identity: Identity | None, note: str = "",
    alert_id: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Acknowledge the active alert of a rule; ``alert_id``: the one the page showed (another one: refused
    ``ALERT_CHANGED``, :meth:`logic.alerts.AlertEngine.acknowledge`)."""
    pid, rule = _target(portfolio_id, rule_id)
    who = authorize(identity, Action.ACKNOWLEDGE, pid)
    return desk.alert_engine().acknowledge(pid, rule, who.actor, note, alert_id)


def resolve_alert(
    desk: Desk, portfolio_id: str | None, rule_id: str | None, identity: Identity | None, note: str = "",
    alert_id: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Resolve the active alert of a rule; ``alert_id`` as for :func:`acknowledge_alert`."""
    pid, rule = _target(portfolio_id, rule_id)
    who = authorize(identity, Action.RESOLVE, pid)
    return desk.alert_engine().resolve(pid, rule, who.actor, note, alert_id)


def _target(portfolio_id: str | None, rule_id: str | None) -> AlertTarget:
    if not portfolio_id or not rule_id:
        raise InputError("choose the alert to act on")
    return portfolio_id, rule_id


# -- deliveries and escalation -------------------------------------------------------------------------------


def delivery_frame(desk: Desk, portfolio_id: str | None, count: int = 100) -> pd.DataFrame:
    records = desk.alert_engine().delivery_log(portfolio_id, count)
    return records_frame(records, time_fields=("ts", "sent_at", "created_at", "next_attempt_at"))


def escalation_summary(desk: Desk) -> pd.DataFrame:
    """Escalation policy per severity: level, delay, recipients and channels (the [escalation] settings)."""
    config = desk.alert_engine().escalation
    rows = []
    for severity in (s.value for s in Severity):
        for n, level in enumerate(config.policy(severity).levels):
            rows.append(
                {
                    "severity": severity,
                    "level": n,
                    "after (s)": level.delay_seconds,
                    "notify": ", ".join(level.recipients) or "-",
                    "channels": ", ".join(level.channels),
                }
            )
    return pd.DataFrame(rows, columns=["severity", "level", "after (s)", "notify", "channels"])


# -- the rules editor ----------------------------------------------------------------------------------------

RULE_COLUMNS = (
    "id",
    "metric",
    "op",
    "threshold",
    "severity",
    "description",
    "pending_seconds",
    "clear_seconds",
    "stale_after_seconds",
    "stale_policy",
    "portfolios",
    "actions",
    "channels",
    "recipients",
    "changed_at",
    "changed_by",
    "source",
)
FIXED_THRESHOLD = "a fixed number"
"""The editor's threshold source meaning "the number typed" (the others are ``limits.<field>``)."""
NEW_RULE = "+ new rule"
"""The rule picker's choice of an empty form (a rule to add)."""
RULE_FORM_FIELDS = (
    "id",
    "metric",
    "op",
    "threshold_source",
    "threshold",
    "threshold_fraction",
    "severity",
    "pending_seconds",
    "clear_seconds",
    "stale_after_seconds",
    "description",
    "stale_policy",
    "portfolios",
    "actions",
    "channels",
    "recipients",
)
"""The rules editor's fields (:func:`rule_for_form` gives their starting values, :func:`rule_from_form` reads
them)."""


def rules_frame(desk: Desk) -> pd.DataFrame:
    """The rules in force (and removed defaults), one row each, the last changed first; ``threshold`` as text
    (``0.8 x limits.var_limit`` for a rule following a limit), lists as comma-separated text, empty
    ``channels`` / ``recipients`` as the severity's escalation policy they default to."""
    engine = desk.alert_engine()
    rows = []
    for rule in engine.list_rules():
        route = routing_default(desk, str(rule["severity"]))
        rows.append(
            {
                **rule,
                "threshold": threshold_text(rule),
                "channels": _comma_text(rule.get("channels")) or f"policy: {_comma_text(route['channels'])}",
                "recipients": _comma_text(rule.get("recipients"))
                or f"policy: {_comma_text(route['recipients']) or '-'}",
            }
        )
    df = pd.DataFrame.from_records(rows).reindex(columns=list(RULE_COLUMNS))
    for col in ("portfolios", "actions"):
        df[col] = df[col].map(_comma_text)
    df["description"] = df["description"].fillna("").astype(str)
    df["changed_by"] = df["changed_by"].map(lambda v: v if isinstance(v, str) else "")
    df["changed_at"] = pd.to_datetime(pd.to_numeric(df["changed_at"], errors="coerce"), unit="s", utc=True)
    return df


def threshold_text(rule: Mapping[str, Any]) -> str:
    """A rule's threshold as the desk reads it: ``0.3``, ``limits.max_concentration``, ``0.8 x limits.var_limit``."""
    threshold, fraction = rule.get("threshold"), rule.get("threshold_fraction", 1.0)
    if isinstance(threshold, str):
        return threshold if fraction in (None, 1.0) else f"{fraction:g} x {threshold}"
    return "" if threshold is None else f"{float(threshold):g}"


def threshold_sources() -> list[str]:
    """The editor's threshold choices: a fixed number, or one of the limits a rule may follow."""
    from engine.settings import LIMIT_PREFIX
    from logic.rules import LIMIT_THRESHOLDS

    return [FIXED_THRESHOLD, *(LIMIT_PREFIX + name for name in LIMIT_THRESHOLDS)]


def routing_default(desk: Desk, severity: str) -> dict[str, list[str]]:
    """Channels and recipients a rule of ``severity`` uses when it names none: the first level of the
    severity's escalation policy (``[escalation]``)."""
    first = desk.alert_engine().escalation.policy(severity).levels[0]
    return {"channels": [str(c) for c in first.channels], "recipients": list(first.recipients)}


def rule_channels() -> list[str]:
    from engine.records import Channel

    return [c.value for c in Channel]


def rule_recipients(desk: Desk) -> list[str]:
    """Recipient names a rule may pick: those of ``[notifications.recipients]`` and of the escalation policies."""
    config = desk.alert_engine().escalation
    names: dict[str, None] = {}
    recipients = (desk.settings.extra.get("notifications") or {}).get("recipients") or {}
    names.update(dict.fromkeys(str(n) for n in recipients))
    for policy in (*config.policies.values(), config.default):
        for level in policy.levels:
            names.update(dict.fromkeys(level.recipients))
    return list(names)


def rule_for_form(desk: Desk, rule_id: str | None, rules: Iterable[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The editor's starting values: the rule's own fields, or a new rule's defaults (clear period
    :data:`engine.settings.DEFAULT_CLEAR_SECONDS`, routing from the escalation policy). ``rules``: the
    engine's ``list_rules()`` when the caller has it already."""
    from engine.settings import DEFAULT_CLEAR_SECONDS

    if rule_id is None:
        rules = ()
    for rule in desk.alert_engine().list_rules() if rules is None else rules:
        if rule["id"] == rule_id and rule.get("source") != "removed":
            out = dict(rule)
            ref = out["threshold"] if isinstance(out["threshold"], str) else None
            out["threshold_source"] = ref or FIXED_THRESHOLD
            out["threshold"] = 0.0 if ref else float(out["threshold"])
            out["portfolios"] = _comma_text(out.get("portfolios")) or "*"
            out["actions"] = _comma_text(out.get("actions"))
            return out
    return {
        "id": "",
        "threshold_source": FIXED_THRESHOLD,
        "threshold": 0.0,
        "threshold_fraction": 1.0,
        "severity": Severity.MEDIUM.value,
        "op": ">=",
        "pending_seconds": 0.0,
        "clear_seconds": DEFAULT_CLEAR_SECONDS,
        "stale_after_seconds": 60.0,
        "stale_policy": "keep",
        "portfolios": "*",
        "actions": "",
        "description": "",
        "channels": [],
        "recipients": [],
    }


@dataclass(frozen=True)
class RuleForm:
    """The rules editor's form as the page rendered it: the rule (None: a new one), its version and rev (what a
    save, removal or reset is made against) and the values each field started from."""

    rule_id: str | None
    """None: the empty form of a rule to add."""
    version: int
    """The rule's version (+1 per edit; 0: the settings' rule, never edited, or a new rule)."""
    rev: str
    """The rule's stored token ("" at version 0): with the version, which rule this form showed."""
    source: str
    """``settings``, ``edited``, ``runtime`` ("" for a new rule)."""
    changed_by: str
    """Who made the rule's last audited edit ("" for none)."""
    values: Mapping[str, Any]
    """Field (:data:`RULE_FORM_FIELDS`) -> the value the form shows (:func:`rule_for_form`)."""

    def widget_key(self, name: str) -> str:
        """The widget of field ``name`` for this rule at this version: another rule, or a new version of this
        one, is a new widget, so the form starts again from the values it shows."""
        if self.rule_id is None:
            return f"rule_{NEW_RULE}_{name}"
        return f"rule_{self.rule_id}_v{self.version}_{self.rev[:12]}_{name}"


def rule_form(desk: Desk, rule_id: str | None, rules: Iterable[Mapping[str, Any]] | None = None) -> RuleForm:
    """The editor's form for ``rule_id`` (None or an unknown id: a new rule), as :func:`rule_for_form` fills it,
    with the version and rev it is rendered at."""
    values = rule_for_form(desk, rule_id, rules)
    if not values["id"]:
        return RuleForm(None, 0, "", "", "", values)
    return RuleForm(
        rule_id=str(values["id"]),
        version=int(values.get("version") or 0),
        rev=str(values.get("rev") or ""),
        source=str(values.get("source") or ""),
        changed_by=values["changed_by"] if isinstance(values.get("changed_by"), str) else "",
        values=values,
    )


def _comma_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def rule_metrics() -> list[str]:
    from logic.alerts import SNAPSHOT_METRICS

    return list(SNAPSHOT_METRICS)


def rule_choices() -> dict[str, tuple[str, ...]]:
    from logic.alerts import OPERATORS, STALE_POLICIES

    return {"op": OPERATORS, "severity": tuple(s.value for s in Severity), "stale_policy": STALE_POLICIES}


def rule_from_form(values: Mapping[str, Any]) -> dict[str, Any]:
    """The rules editor's fields as a rule dict (lists from comma-separated text); alerts validates it."""
    out = dict(values)
    for col in ("portfolios", "actions", "channels", "recipients"):
        if isinstance(out.get(col), str):
            out[col] = [part.strip() for part in out[col].split(",") if part.strip()]
    for col in ("channels", "recipients"):
        if out.get(col) is None:
            out.pop(col, None)
    if not out.get("portfolios"):
        out["portfolios"] = ["*"]
    source = out.pop("threshold_source", None)
    if source is not None and source != FIXED_THRESHOLD:  # follows a limit: the number typed is the fraction
        out["threshold"] = source
    elif source is not None:
        out["threshold_fraction"] = 1.0
    return out


_NUMBER_FIELDS = frozenset(
    {"threshold", "threshold_fraction", "pending_seconds", "clear_seconds", "stale_after_seconds"}
)


def _comparable(values: Mapping[str, Any]) -> dict[str, Any]:
    """The editor's fields as the rule dict they save (:func:`rule_from_form`), numbers as floats: two forms
    that save the same rule compare equal."""
    out = rule_from_form({name: values.get(name) for name in RULE_FORM_FIELDS})
    for name in _NUMBER_FIELDS & set(out):
        value = out[name]
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def form_rule_changes(seen: RuleForm, form: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of the rule the user changed on the form (field -> value as the rule takes it): those that
    differ from what ``seen`` showed (not from the live rule, which may have moved since). A threshold that
    follows a limit ignores the fixed-number box, as the saved rule does."""
    shown, typed = _comparable(seen.values), _comparable(form)
    return {name: value for name, value in typed.items() if name != "id" and shown.get(name) != value}


def save_rule(
    desk: Desk, values: Mapping[str, Any], identity: Identity | None, reason: str = "", seen: RuleForm | None = None
) -> Any:
    """Save the editor's form (validated and audited by the alerts module, as ``identity.actor``).

    ``seen``: the :class:`RuleForm` the page rendered. A new-rule form adds the rule (refused with
    ``RULE_EXISTS`` when its id is taken: edit that rule instead); a rule's form changes only the fields that
    differ from what it showed, made against its version (``RULES_CHANGED``, nothing written, when the rule was
    edited, removed or reset since: reload). A form that changes nothing is refused. Without ``seen`` (a caller
    with a whole rule, no form) the rule is added, or replaces the rule of that id field by field.
    """
    who = authorize(identity, Action.EDIT_RULES)
    engine = desk.alert_engine()
    if seen is not None and seen.rule_id is not None:
        changes = form_rule_changes(seen, values)
        if not changes:
            raise InputError(f"nothing changed in rule {seen.rule_id}: edit a field, then save")
        return engine.update_rule(
            seen.rule_id, changes, who.actor, reason, expected_version=seen.version, expected_rev=seen.rev
        )
    rule = rule_from_form(values)
    rule_id = str(rule.get("id") or "").strip()
    if not rule_id:
        raise InputError("a rule needs an id")
    if seen is None and rule_id in {r["id"] for r in engine.list_rules() if r.get("source") != "removed"}:
        changes = {k: v for k, v in rule.items() if k != "id"}
        return engine.update_rule(rule_id, changes, who.actor, reason)
    return engine.add_rule(rule, who.actor, reason)


def _expected(rule_id: str, seen: RuleForm | None) -> dict[str, Any]:
    """The version a removal or reset is made against: the rule ``seen`` showed (no check without a form)."""
    if seen is None:
        return {}
    if seen.rule_id != rule_id:
        raise InputError(f"the form shows rule {seen.rule_id or 'new'}, not {rule_id}: reload")
    return {"expected_version": seen.version, "expected_rev": seen.rev}


def remove_rule(
    desk: Desk, rule_id: str, identity: Identity | None, reason: str = "", seen: RuleForm | None = None
) -> Any:
    """Remove a rule as ``identity.actor``; with ``seen`` (the form the page rendered) refused
    (``RULES_CHANGED``, nothing written) when the rule changed since that form's version."""
    who = authorize(identity, Action.EDIT_RULES)
    return desk.alert_engine().remove_rule(rule_id, who.actor, reason, **_expected(rule_id, seen))


def reset_rule(
    desk: Desk, rule_id: str, identity: Identity | None, reason: str = "", seen: RuleForm | None = None
) -> Any:
    """Reset a rule to the settings' as ``identity.actor``; with ``seen`` refused as :func:`remove_rule`."""
    who = authorize(identity, Action.EDIT_RULES)
    return desk.alert_engine().reset_rule(rule_id, who.actor, reason, **_expected(rule_id, seen))
