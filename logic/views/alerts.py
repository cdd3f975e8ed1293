"""View models of the Alerts page (``dashboard/screens/alerts.py``): the filtered alert feed and its counts,
acknowledge and resolve, the delivery log, the escalation policy and the rules editor. Every change goes
through the alert engine, which validates and audits it."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
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
    """Active and resolved alerts, newest first, filtered (severity, status, portfolio, time)."""
    since = None if window_seconds is None else desk.clock() - window_seconds
    alerts = desk.alert_engine().list_alerts(
        portfolio_id,
        status=_set_or_none(statuses),
        severity=_set_or_none(severities),
        since=since,
        limit=limit,
    )
    df = pd.DataFrame.from_records(alerts).reindex(columns=list(ALERT_COLUMNS))
    for col in ALERT_TIME_COLUMNS:
        df[col] = pd.to_datetime(pd.to_numeric(df[col], errors="coerce"), unit="s", utc=True)
    return df


def alert_counts(alerts: pd.DataFrame) -> dict[str, int]:
    """Headline counts of an :func:`alerts_frame`: active, unacknowledged, critical, escalated."""
    active = alerts[alerts["status"].isin(list(ACTIVE_STATUSES))]
    return {
        "Active": len(active),
        "Unacknowledged": int((active["status"] == AlertStatus.TRIGGERED.value).sum()),
        "Critical active": int((active["severity"] == Severity.CRITICAL.value).sum()),
        "Escalated": int((pd.to_numeric(active["escalation_level"], errors="coerce").fillna(0) > 1).sum()),
    }


def _set_or_none(values: Iterable[str] | None) -> set[str] | None:
    return None if values is None else set(values)


# -- acknowledge and resolve ---------------------------------------------------------------------------------


def acknowledge_alert(
    desk: Desk, portfolio_id: str, rule_id: str, identity: Identity | None, note: str = ""
) -> dict[str, Any]:
    who = authorize(identity, Action.ACKNOWLEDGE, portfolio_id)
    return desk.alert_engine().acknowledge(portfolio_id, rule_id, who.actor, note)


def resolve_alert(
    desk: Desk, portfolio_id: str, rule_id: str, identity: Identity | None, note: str = ""
) -> dict[str, Any]:
    who = authorize(identity, Action.RESOLVE, portfolio_id)
    return desk.alert_engine().resolve(portfolio_id, rule_id, who.actor, note)


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
    "source",
)


def rules_frame(desk: Desk) -> pd.DataFrame:
    """The rules in force (and removed defaults), one row each; lists as comma-separated text for editing."""
    rows = desk.alert_engine().list_rules()
    df = pd.DataFrame.from_records(rows).reindex(columns=list(RULE_COLUMNS))
    for col in ("portfolios", "actions"):
        df[col] = df[col].map(_comma_text)
    df["description"] = df["description"].fillna("").astype(str)
    return df


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
    for col in ("portfolios", "actions"):
        if isinstance(out.get(col), str):
            out[col] = [part.strip() for part in out[col].split(",") if part.strip()]
    if not out.get("portfolios"):
        out["portfolios"] = ["*"]
    return out


def save_rule(desk: Desk, values: Mapping[str, Any], identity: Identity | None, reason: str = "") -> Any:
    """Add a new rule or update an existing one (validated and audited by the alerts module)."""
    who = authorize(identity, Action.EDIT_RULES)
    rule = rule_from_form(values)
    engine = desk.alert_engine()
    rule_id = str(rule.get("id") or "").strip()
    if not rule_id:
        raise InputError("a rule needs an id")
    existing = {r["id"] for r in engine.list_rules() if r.get("source") != "removed"}
    if rule_id in existing:
        changes = {k: v for k, v in rule.items() if k != "id"}
        return engine.update_rule(rule_id, changes, who.actor, reason)
    return engine.add_rule(rule, who.actor, reason)


def remove_rule(desk: Desk, rule_id: str, identity: Identity | None, reason: str = "") -> Any:
    who = authorize(identity, Action.EDIT_RULES)
    return desk.alert_engine().remove_rule(rule_id, who.actor, reason)


def reset_rule(desk: Desk, rule_id: str, identity: Identity | None, reason: str = "") -> Any:
    who = authorize(identity, Action.EDIT_RULES)
    return desk.alert_engine().reset_rule(rule_id, who.actor, reason)
