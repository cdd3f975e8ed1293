"""The alert lifecycle, planned: what one evaluation, timer run, acknowledgement or resolve changes.

``TRIGGERED -> ACKNOWLEDGED -> RESOLVED``, each with who and when; at most one active alert per rule and
portfolio. Alerts resolve by themselves after the clear period, or by hand. A CRITICAL alert *inhibits* the
lower-severity alerts on the same metric of the same portfolio: they stay visible but send nothing until it is
gone. An acknowledged alert that is still active after ``[escalation] ack_timeout_seconds`` goes back to
TRIGGERED and escalation restarts. Every transition becomes a history record with the full alert. Within one
breach episode a rule's trade actions run again only if the metric is materially worse (REARM_WORSENING_FRACTION).

:class:`AlertPlanner` is pure: each ``plan_*`` method reads only its arguments (the alerts and timers the
engine read inside its WATCH) and returns a :class:`Changes`, which :class:`logic.alerts.AlertEngine` writes
in one MULTI together with the outbox entries (:class:`engine.alert_records.OutboxEntry`) and the automated actions.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.alert_records import OutboxEntry
from engine.records import ACTIVE_ALERT_STATUSES, SEVERITY_RANK, AlertStatus, Channel, Severity
from engine.settings import AlertRule, Limits
from logic import escalation as esc
from logic.action_orders import AUTO_ACTOR_PREFIX  # defined once, beside the automation's grant
from logic.actions import MARGIN_METRIC, MARGIN_RULE_OPS, margin_response_spec, parse_action, plan_reduction
from logic.escalation import EscalationConfig
from logic.rules import (
    ACTION_RULE_PREFIX,
    SNAPSHOT_METRICS,
    AlertChangedError,
    AlertNotFoundError,
    Snapshot,
    applying_rules,
    compare,
    metric_value,
    null_does_not_apply,
)

SYSTEM_ACTOR = "system"
MANUAL_RESOLVE_REARM_SECONDS = 60.0
"""After a manual resolve, a condition that still holds fires again after its pending period but no sooner
than this: the breach is real and the desk must hear of it again, yet not on the very next tick."""
ACTIVE_STATUSES = ACTIVE_ALERT_STATUSES
TRADE_ACTION_KINDS = ("reduce", "flatten")
"""Actions that trade (a reduce, a margin sell-down, a flatten): within one breach episode they run again only
when the metric is materially worse than at their last run (:func:`rerun_refusal`)."""
REARM_WORSENING_FRACTION = 0.25
"""*Materially worse* (:func:`rerun_refusal`): further in the breach direction by this fraction of ``max(|threshold|,
|value at the last run|)`` (a -5 % drawdown rule that cut at -10.8 % cuts again at -13.5 %). A manual resolve on a
breach that persists re-arms the *alert*, never another cut for the same loss (no 4000 -> 2000 -> 1000 -> 500)."""


@dataclass
class Changes:
    """What one alert transaction writes (and reports)."""

    alerts_set: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts_del: list[str] = field(default_factory=list)
    trackers_set: dict[str, dict[str, Any]] = field(default_factory=dict)
    trackers_del: list[str] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    notify: list[OutboxEntry] = field(default_factory=list)
    actions: dict[str, dict[str, Any]] = field(default_factory=dict)
    actions_done: list[str] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)

    def empty(self) -> bool:
        return not (
            self.alerts_set
            or self.alerts_del
            or self.trackers_set
            or self.trackers_del
            or self.log
            or self.notify
            or self.actions
            or self.actions_done
            or self.audit
        )

    @property
    def transitions(self) -> list[dict[str, Any]]:
        return [{k: r[k] for k in ("event", "rule_id", "alert_id", "severity", "ts")} for r in self.log]


def _active(alerts: Mapping[str, Any], portfolio_id: str, rule_id: str, alert_id: str | None) -> Mapping[str, Any]:
    """The active alert of ``rule_id``, else :class:`AlertNotFoundError`; :class:`AlertChangedError` when it is
    not ``alert_id``, the one a person was shown (it fired again since: no click silences a breach unseen)."""
    alert = alerts.get(rule_id)
    if alert is None:
        raise AlertNotFoundError(f"no active alert for rule {rule_id!r} in portfolio {portfolio_id!r}")
    if alert_id is not None and alert.get("alert_id") != alert_id:
        raise AlertChangedError(
            f"the alert of rule {rule_id!r} in portfolio {portfolio_id!r} fired again since it was shown (now "
            f"{alert.get('alert_id')}, {str(alert.get('status', '')).lower()}): nothing was changed"
        )
    return alert


def triggered_fields(value: Any, stale: bool, since: float, now: float) -> dict[str, Any]:
    """The lifecycle fields of an alert that has just triggered (in their stored order): nobody has
    acknowledged, resolved or been notified of it yet."""
    return {
        "status": AlertStatus.TRIGGERED,
        "value": value,
        "trigger_value": value,
        "stale": stale,
        "breach_since": since,
        "triggered_at": now,
        "updated_at": now,
        "acknowledged_by": None,
        "acknowledged_at": None,
        "ack_note": "",
        "ack_timeout_at": None,
        "resolved_by": None,
        "resolved_at": None,
        "resolve_reason": "",
        "inhibited": False,
        "notified": False,
        "last_notified_at": None,
        "repeats": 0,
    }


class AlertPlanner:
    """Plans alert transitions from the stored alerts, the timers, the rules and a snapshot.

    Parameters
    ----------
    escalation:
        Escalation policies (:func:`logic.escalation.escalation_config`).
    repeat_interval_seconds:
        Remind about an active, unacknowledged alert this often (0 = never).
    """

    def __init__(self, escalation: EscalationConfig, repeat_interval_seconds: float) -> None:
        self.escalation = escalation
        self.repeat_interval_seconds = repeat_interval_seconds

    def policy_for(self, alert: Mapping[str, Any]) -> esc.EscalationPolicy:
        """The escalation policy of one alert: its severity's, first level told by the rule's own channels and
        recipients when the rule names them (``route`` in the record, :func:`logic.escalation.routed_policy`)."""
        return esc.routed_policy(self.escalation.policy(alert["severity"]), alert.get("route"))

    # -- the dashboard's transitions -------------------------------------------------------------------------
    def plan_acknowledge(
        self, portfolio_id: str, rule_id: str, actor: str, note: str, now: float, alerts: Mapping[str, Any],
        alert_id: str | None = None,
    ) -> tuple[Changes, dict[str, Any]]:  # fmt: skip
        """TRIGGERED -> ACKNOWLEDGED by ``actor`` (the alert ``alert_id``, :func:`_active`): escalation stops."""
        alert = dict(_active(alerts, portfolio_id, rule_id, alert_id))
        ch = Changes()
        alert.update(status=AlertStatus.ACKNOWLEDGED, acknowledged_by=actor, acknowledged_at=now,
                     ack_note=str(note)[:500], updated_at=now)  # fmt: skip
        timeout = self.escalation.ack_timeout_seconds
        alert["ack_timeout_at"] = now + timeout if timeout > 0 else None
        esc.stop(alert)
        ch.alerts_set[rule_id] = alert
        ch.log.append(self.log_record(AlertStatus.ACKNOWLEDGED, alert, now, actor, note))
        return ch, alert

    def plan_resolve(
        self, portfolio_id: str, rule_id: str, actor: str, note: str, now: float, alerts: Mapping[str, Any],
        alert_id: str | None = None,
    ) -> tuple[Changes, dict[str, Any]]:  # fmt: skip
        """Resolve by hand (``alert_id``: :func:`_active`); a breach that persists re-arms, below."""
        alert = _active(alerts, portfolio_id, rule_id, alert_id)
        ch = Changes()
        resolved = self.resolve_into(ch, portfolio_id, alert, now, actor, note or "resolved by hand")
        if alert.get("kind") == "metric":
            # a breach that persists fires again, but not at once (see MANUAL_RESOLVE_REARM_SECONDS); the
            # episode's last trade-action run stays with it, so the re-trigger does not trade again for the
            # same breach (see REARM_WORSENING_FRACTION), and says whose resolve re-armed it
            tracker: dict[str, Any] = {"breach_since": now, "hold_until": now + MANUAL_RESOLVE_REARM_SECONDS}
            if alert.get("acted"):
                tracker["acted"] = {**alert["acted"], "resolved_by": actor, "resolved_at": now}
            ch.trackers_set[rule_id] = tracker
        return ch, resolved

    # -- evaluation and timers -------------------------------------------------------------------------------
    def plan_evaluation(
        self,
        portfolio_id: str,
        snapshot: Snapshot,
        now: float,
        alerts: dict[str, Any],
        trackers: dict[str, Any],
        rules: tuple[AlertRule, ...],
        limits: Limits | None = None,
    ) -> Changes:
        """``limits``: the portfolio's live limits of this evaluation; a rule whose threshold is
        ``limits.<field>`` compares with that limit now (:func:`logic.rules.resolve_threshold`) and does not
        apply when the portfolio sets no such limit (or when ``limits`` is None)."""
        ch = Changes()
        current = {rid: dict(a) for rid, a in alerts.items()}
        applying = applying_rules(rules, limits, portfolio_id)
        applicable, refs, ordered = applying.by_id, applying.refs, applying.ordered
        for rule_id, alert in list(current.items()):
            if alert.get("kind") == "metric" and rule_id not in applicable:
                self.resolve_into(
                    ch,
                    portfolio_id,
                    alert,
                    now,
                    SYSTEM_ACTOR,
                    "rule removed or no longer applies to this portfolio",
                )
                del current[rule_id]
        for rule_id in trackers:
            if rule_id not in applicable:
                ch.trackers_del.append(rule_id)
        age = data_age(snapshot, now)  # once for every rule
        for rule in ordered:
            self.evaluate_rule(
                ch, portfolio_id, rule, snapshot, now, current, trackers.get(rule.id) or {}, rules=ordered,
                ref=refs.get(rule.id), age=age,
            )  # fmt: skip
        self.plan_inhibition(ch, current, now)
        self.plan_timers(ch, portfolio_id, current, now)
        return ch

    def plan_timers_only(
        self, portfolio_id: str, now: float, alerts: dict[str, Any], trackers: Any, rules: Any
    ) -> Changes:
        ch = Changes()
        current = {rid: dict(a) for rid, a in alerts.items()}
        self.plan_timers(ch, portfolio_id, current, now)
        return ch

    def condition(
        self, rule: AlertRule, snapshot: Snapshot, now: float, age: float | None = None
    ) -> tuple[bool | None, Any, bool]:
        """(breach, value, stale): breach None means "hold" (stale data under the ``keep`` policy); ``age``:
        :func:`data_age` of ``snapshot`` at ``now`` when the caller has it.

        A null ``margin.level`` does not apply only with ``margin.used`` 0 (a cash account; a flat, fully priced
        margin book); else it is *no data* (a missing price nulls the margin figures, logic/snapshot.py): the
        stale-data policy applies, so a price gap never resolves an active margin alert (``keep`` holds it)."""
        if age is None:
            age = data_age(snapshot, now)
        value = metric_value(snapshot, rule.metric)
        if age <= rule.stale_after_seconds and value is None and null_does_not_apply(rule.metric, snapshot):
            return False, None, False
        if age > rule.stale_after_seconds or not _finite(value):
            return (True, None, True) if rule.stale_policy == "fire" else (None, None, False)
        return compare(float(value), rule.op, float(rule.threshold)), float(value), False  # resolved

    def evaluate_rule(
        self,
        ch: Changes,
        portfolio_id: str,
        rule: AlertRule,
        snapshot: Snapshot,
        now: float,
        current: dict[str, dict[str, Any]],
        tracker: Mapping[str, Any],
        rules: Sequence[AlertRule] = (),
        ref: str | None = None,
        age: float | None = None,
    ) -> None:
        """``rules``: every rule applying to the portfolio (a margin sell-down reads its warning level there),
        thresholds resolved; ``ref``: the limit ``rule``'s threshold came from (kept in the alert record);
        ``age``: :func:`data_age` of ``snapshot`` at ``now`` when the caller has it."""
        breach, value, stale = self.condition(rule, snapshot, now, age)
        if not breach and not tracker and rule.id not in current:
            return  # no breach (or no data, held) and nothing stored of the rule: nothing changes (as below)
        if breach is None:
            self.hold(ch, rule, current.get(rule.id), tracker, now)
            return
        alert = current.get(rule.id)
        if alert is not None:
            edited = {
                "metric": rule.metric, "unit": SNAPSHOT_METRICS.get(rule.metric, "number"), "op": rule.op,
                "threshold": rule.threshold, "threshold_ref": ref, "description": rule.description,
                "route": esc.route_of(rule.channels, rule.recipients),
            }  # fmt: skip
            if any(alert.get(k) != v for k, v in edited.items()):  # the rule was edited while active
                alert.update(edited, updated_at=now)
                ch.alerts_set[rule.id] = alert
            if alert["severity"] != rule.severity:
                self.change_severity(ch, alert, Severity(rule.severity), now)
        new = {k: tracker.get(k) for k in ("breach_since", "clear_since", "hold_until", "acted")}
        if new["hold_until"] is not None and now >= new["hold_until"]:
            new["hold_until"] = None
        if breach:
            new["clear_since"] = None
            if alert is not None:
                if alert.get("value") != value or alert.get("stale") != stale or alert.get("clear_since"):
                    alert.update(value=value, stale=stale, clear_since=None, updated_at=now)
                    ch.alerts_set[rule.id] = alert
            else:
                since = new["breach_since"] if new["breach_since"] is not None else now
                new["breach_since"] = since
                if now - since >= rule.pending_seconds and new["hold_until"] is None:
                    alert = self.trigger(
                        ch, portfolio_id, rule, value, stale, since, now, snapshot, rules, ref, acted=new["acted"]
                    )
                    current[rule.id] = alert
                    new["acted"] = alert.get("acted")
        else:
            new["breach_since"] = None
            if alert is not None:
                since = new["clear_since"] if new["clear_since"] is not None else now
                new["clear_since"] = since
                if now - since >= rule.clear_seconds:
                    alert.update(value=value, stale=False)
                    self.resolve_into(
                        ch,
                        portfolio_id,
                        alert,
                        now,
                        "auto",
                        f"clear for {now - since:.0f} s" if rule.clear_seconds else "clear",
                    )
                    del current[rule.id]  # the episode is over: a new breach is a new one
                    new = {"breach_since": None, "clear_since": None, "hold_until": None, "acted": None}
                elif alert.get("value") != value or alert.get("stale") or alert.get("clear_since") != since:
                    alert.update(value=value, stale=False, clear_since=since, updated_at=now)
                    ch.alerts_set[rule.id] = alert
            elif new["acted"] is not None:
                # resolved by hand, now clear: the episode (and its memory of the last trade-action run) ends
                # once the metric has been clear for the rule's clear period, as an alert resolves by itself
                since = new["clear_since"] if new["clear_since"] is not None else now
                new["clear_since"] = since
                if now - since >= rule.clear_seconds:
                    new.update(clear_since=None, acted=None)
            else:
                new["clear_since"] = None
        stored = {k: v for k, v in tracker.items() if v is not None}
        wanted = {k: v for k, v in new.items() if v is not None}
        if wanted != stored:
            if wanted:
                ch.trackers_set[rule.id] = wanted
            else:
                ch.trackers_del.append(rule.id)

    def hold(
        self, ch: Changes, rule: AlertRule, alert: dict[str, Any] | None, tracker: Mapping[str, Any], now: float
    ) -> None:
        """No data for ``rule`` under the ``keep`` policy: the state is held, but a clear period running on an
        active alert starts over. Time without data is not time seen clear: a breach must not resolve on the
        first clear value after a gap (a null VaR for a minute) as if it had been clear throughout. The alert
        says its value is stale meanwhile. A pending breach keeps its start (it fires no later for a gap)."""
        if alert is None or (tracker.get("clear_since") is None and alert.get("clear_since") is None):
            return
        alert.update(clear_since=None, stale=True, updated_at=now)
        ch.alerts_set[rule.id] = alert
        if tracker.get("clear_since") is None:
            return
        kept = {k: v for k, v in tracker.items() if v is not None and k != "clear_since"}
        if kept:
            ch.trackers_set[rule.id] = kept
        else:
            ch.trackers_del.append(rule.id)

    def change_severity(self, ch: Changes, alert: dict[str, Any], severity: Severity, now: float) -> None:
        """The rule of an active alert was given another severity: the alert takes it now, so its routing,
        escalation policy, inhibition and SMS fallback follow the rule as edited.

        A higher severity starts escalation over under its policy, as a trigger would: level 1 is told at once
        (at the new severity), later levels on the new delays. A lower one tells nobody again: the levels not yet
        told follow on the new policy's schedule (:func:`logic.escalation.resume`). Either way an acknowledged or
        inhibited alert waits, as escalation always does: its acknowledge timeout or the end of the inhibition
        starts it, under the new policy.
        """
        before = Severity(alert["severity"])
        alert.update(severity=severity, updated_at=now)
        policy = self.policy_for(alert)
        waiting = alert["status"] != AlertStatus.TRIGGERED or bool(alert.get("inhibited"))
        if SEVERITY_RANK[severity] > SEVERITY_RANK[before]:
            esc.start(alert, policy, now, cycle=int((alert.get("escalation") or {}).get("cycle", 0)))
            if waiting:
                esc.stop(alert)
        elif not waiting:
            esc.resume(alert, policy, now)
        ch.alerts_set[alert["rule_id"]] = alert
        ch.log.append(
            self.log_record("SEVERITY_CHANGED", alert, now, SYSTEM_ACTOR, f"rule edited: {before} -> {severity}")
        )

    def trigger(
        self,
        ch: Changes,
        portfolio_id: str,
        rule: AlertRule,
        value: Any,
        stale: bool,
        since: float,
        now: float,
        snapshot: Snapshot,
        rules: Sequence[AlertRule] = (),
        ref: str | None = None,
        *,
        acted: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A new alert of ``rule`` and its pending actions. ``acted``: the last run of the rule's trade actions in
        this breach episode (kept in the tracker across a manual resolve; None for a new episode). With one, a
        trade action runs again only when :func:`rerun_refusal` finds the value materially worse; else it is not
        planned and the alert (``actions_skipped``), its log and the audit (``automated_response_skipped``) say
        why. The alert itself still triggers and notifies."""
        alert = {
            "alert_id": uuid.uuid4().hex[:16],
            "portfolio_id": portfolio_id,
            "rule_id": rule.id,
            "kind": "metric",
            "metric": rule.metric,
            "op": rule.op,
            "threshold": rule.threshold,
            "threshold_ref": ref,
            "unit": SNAPSHOT_METRICS.get(rule.metric, "number"),
            "severity": rule.severity,
            "description": rule.description,
            **triggered_fields(value, stale, since, now),
            "inhibited_by": None,
            "route": esc.route_of(rule.channels, rule.recipients),
            "actions": list(rule.actions),
        }
        esc.start(alert, self.policy_for(alert), now)
        ch.alerts_set[rule.id] = alert
        ch.log.append(
            self.log_record(AlertStatus.TRIGGERED, alert, now, SYSTEM_ACTOR, "STALE market data" if stale else "")
        )
        shown = "STALE" if value is None else f"{value:g}"
        actor = f"{AUTO_ACTOR_PREFIX}{rule.id}"
        skipped: list[dict[str, Any]] = []
        traded: list[str] = []
        rerun_note = ""
        if acted:
            rerun_note = f"; re-run: {value_text(value)} is materially worse than {value_text(acted.get('value'))}"
            rerun_note += f" at the last run ({acted.get('alert_id')})"
            if acted.get("resolved_by"):
                rerun_note += f"; re-triggered after a manual resolve by {acted['resolved_by']}"
        for order, text in enumerate(rule.actions):
            action = parse_action(text)
            action_id = f"{alert['alert_id']}-{order}"
            if action.kind in TRADE_ACTION_KINDS and acted:
                why = rerun_refusal(rule.op, float(rule.threshold), acted, value)
                if why is not None:
                    skipped.append({"action": action.text, "why": why})
                    ch.audit.append(
                        {
                            "ts": now, "actor": actor, "action": "automated_response_skipped",
                            "response": action.text, "rule_id": rule.id, "alert_id": alert["alert_id"],
                            "ok": True, "summary": f"{action.text} not re-run: {why}",
                            "details": {"value": value, "last_run": dict(acted)},
                        }
                    )  # fmt: skip
                    continue
            if action.kind in TRADE_ACTION_KINDS:
                traded.append(action.text)
            pending = {
                "action_id": action_id,
                "order": order,
                "action": action.text,
                "rule_id": rule.id,
                "alert_id": alert["alert_id"],
                "severity": rule.severity,
                "description": rule.description,
                "metric": rule.metric,
                "op": rule.op,
                "threshold": rule.threshold,
                "value": value,
                "actor": actor,
                "created_at": now,
                "reason": f"alert {rule.id}: {rule.description or rule.metric} "
                f"({rule.metric} {rule.op} {rule.threshold:g}, value {shown})"
                + (rerun_note if action.kind in TRADE_ACTION_KINDS else ""),
            }
            if action.kind == "reduce" and rule.metric == MARGIN_METRIC and rule.op in MARGIN_RULE_OPS:
                assert action.fraction is not None
                pending["margin"] = margin_response_spec(
                    action.fraction,
                    float(rule.threshold),
                    rule.op,
                    [(float(r.threshold), r.op) for r in rules if r.metric == MARGIN_METRIC],
                    _gross(snapshot),
                )
            elif action.kind == "reduce":
                assert action.fraction is not None
                pending["plan"] = plan_reduction(snapshot.get("positions") or [], action.fraction)
            ch.actions[action_id] = pending
        if traded:  # pending until its outcome is recorded: only an ok run counts (logic/alerts.py settle_acted);
            # a run that fails gives the reference back to the one before it
            before = {k: v for k, v in (acted or {}).items() if k not in ("pending", "previous")}
            alert["acted"] = {"value": value, "at": now, "alert_id": alert["alert_id"], "actions": traded,
                              "pending": True, "previous": before}  # fmt: skip
        elif acted:
            alert["acted"] = dict(acted)  # the episode's last run stays the reference
        if skipped:
            alert["actions_skipped"] = skipped
            notes = [ch.log[-1]["note"], *(f"{s['action']} not re-run: {s['why']}" for s in skipped)]
            ch.log[-1].update(note="; ".join(n for n in notes if n), alert=public_alert(alert))
        return alert

    def resolve_into(
        self, ch: Changes, portfolio_id: str, alert: Mapping[str, Any], now: float, actor: str, reason: str
    ) -> dict[str, Any]:
        resolved = dict(alert)
        resolved.update(
            status=AlertStatus.RESOLVED, resolved_by=actor, resolved_at=now, resolve_reason=reason, updated_at=now
        )
        esc.stop(resolved)
        ch.alerts_del.append(alert["rule_id"])
        ch.alerts_set.pop(alert["rule_id"], None)
        ch.log.append(self.log_record(AlertStatus.RESOLVED, resolved, now, actor, reason))
        if resolved.get("notified"):
            self.notify(ch, portfolio_id, "resolved", resolved, now, esc.audience(resolved, self.policy_for(resolved)))
        return resolved

    def plan_inhibition(self, ch: Changes, current: dict[str, dict[str, Any]], now: float) -> None:
        critical: dict[str, list[str]] = {}
        for a in current.values():
            if a.get("kind") == "metric" and a["severity"] == Severity.CRITICAL and a["status"] in ACTIVE_STATUSES:
                critical.setdefault(a["metric"], []).append(a["rule_id"])
        for rule_id, alert in current.items():
            if alert.get("kind") != "metric":
                continue
            # a CRITICAL alert is never inhibited: one whose rule was edited up to CRITICAL is released here
            inhibit = alert["severity"] != Severity.CRITICAL and alert["metric"] in critical
            by = ", ".join(sorted(critical[alert["metric"]])) if inhibit else None
            if inhibit == bool(alert.get("inhibited")) and alert.get("inhibited_by") == by:
                continue
            if inhibit == bool(alert.get("inhibited")):  # another CRITICAL rule now holds it
                alert.update(inhibited_by=by, updated_at=now)
                ch.alerts_set[rule_id] = alert
                continue
            alert["inhibited"] = inhibit
            alert["inhibited_by"] = by
            alert["updated_at"] = now
            if inhibit:
                esc.stop(alert)
                ch.log.append(
                    self.log_record(
                        "INHIBITED",
                        alert,
                        now,
                        SYSTEM_ACTOR,
                        f"inhibited by {by}: a {Severity.CRITICAL} alert on {alert['metric']} is active",
                    )
                )
            else:
                policy = self.policy_for(alert)
                if alert.get("notified") or alert["status"] == AlertStatus.ACKNOWLEDGED:
                    esc.resume(alert, policy, now)  # acknowledged: stays stopped until its acknowledge timeout
                else:
                    esc.start(alert, policy, now)
                ch.log.append(self.log_record("UNINHIBITED", alert, now, SYSTEM_ACTOR, ""))
            ch.alerts_set[rule_id] = alert

    def plan_timers(self, ch: Changes, portfolio_id: str, current: dict[str, dict[str, Any]], now: float) -> None:
        """Acknowledge timeouts, due escalation levels, repeat reminders."""
        for rule_id, alert in current.items():
            policy = self.policy_for(alert)
            changed = False
            if (
                alert["status"] == AlertStatus.ACKNOWLEDGED
                and alert.get("ack_timeout_at") is not None
                and now >= alert["ack_timeout_at"]
            ):
                cycle = int((alert.get("escalation") or {}).get("cycle", 0)) + 1
                alert["reminder"] = {
                    "acknowledged_by": alert.get("acknowledged_by"),
                    "acknowledged_at": alert.get("acknowledged_at"),
                }
                alert.update(status=AlertStatus.TRIGGERED, ack_timeout_at=None, updated_at=now)
                if not alert.get("inhibited"):
                    esc.start(alert, policy, now, cycle=cycle)
                ch.log.append(
                    self.log_record(
                        "REESCALATED",
                        alert,
                        now,
                        SYSTEM_ACTOR,
                        f"still active after the acknowledge timeout ({self.escalation.ack_timeout_seconds:.0f} s)",
                    )
                )
                changed = True
            # an alert never announced yet whose metric is already back (clear period running) waits: if it
            # resolves, nobody was bothered; if the breach returns, it is announced then
            quiet = not alert.get("notified") and alert.get("clear_since") is not None
            if alert["status"] == AlertStatus.TRIGGERED and not alert.get("inhibited") and not quiet:
                levels = esc.due_levels(alert, policy, now)
                for level in levels:
                    kind = esc.event_kind(alert, level)
                    lvl = policy.levels[level]
                    pairs = esc.message_pairs(lvl.recipients, lvl.channels)
                    self.notify(ch, portfolio_id, kind, alert, now, pairs, level)
                    esc.mark_notified(alert, policy, level)
                    if level > 0:
                        ch.log.append(self.log_record("ESCALATED", alert, now, SYSTEM_ACTOR, f"level {level + 1}"))
                if levels:
                    alert.update(notified=True, last_notified_at=now)
                    changed = True
                elif (
                    self.repeat_interval_seconds > 0
                    and alert.get("notified")
                    and alert.get("last_notified_at") is not None
                    and now - alert["last_notified_at"] >= self.repeat_interval_seconds
                ):
                    pairs = esc.level_pairs(policy, esc.notified_levels(alert, policy))
                    alert["repeats"] = int(alert.get("repeats", 0)) + 1
                    alert["last_notified_at"] = now
                    self.notify(ch, portfolio_id, "triggered", alert, now, pairs, None, repeat=True)
                    esc.record_told(alert, pairs)
                    ch.log.append(
                        self.log_record(
                            "REPEATED", alert, now, SYSTEM_ACTOR, f"still active, reminder {alert['repeats']}"
                        )
                    )
                    changed = True
            if changed:
                ch.alerts_set[rule_id] = alert

    def notify(
        self,
        ch: Changes,
        portfolio_id: str,
        kind: str,
        alert: Mapping[str, Any],
        now: float,
        pairs: Sequence[tuple[Channel, str]],
        level: int | None = None,
        repeat: bool = False,
    ) -> None:
        """Queue one event for the outbox: one entry per (channel, recipient *name*) pair
        (:func:`logic.escalation.message_pairs`: ``log`` once).

        Addresses are not resolved here: the notifications side looks each name up in its own configuration
        when it sends (a recipient without an address for a channel is then simply not served by it).
        """
        if not pairs:
            return
        reminder = alert.get("reminder") or {}
        event = {
            "event_id": uuid.uuid4().hex[:16],
            "kind": kind,
            "portfolio_id": portfolio_id,
            "ts": now,
            "level": level,
            "repeat": repeat,
            "channels": sorted({str(c) for c, _ in pairs}),
            "acknowledged_by": reminder.get("acknowledged_by"),
            "acknowledged_at": reminder.get("acknowledged_at"),
            "alert": public_alert(alert),
        }
        ch.notify.extend(OutboxEntry(event, channel, name, now) for channel, name in pairs)

    def log_record(self, event: str, alert: Mapping[str, Any], now: float, actor: str, note: str) -> dict[str, Any]:
        return {
            "ts": now,
            "event": event,
            "alert_id": alert["alert_id"],
            "rule_id": alert["rule_id"],
            "severity": alert["severity"],
            "actor": actor,
            "note": note,
            "alert": public_alert(alert),
        }

    def plan_action_alert(
        self,
        portfolio_id: str,
        outcomes: list[tuple[dict[str, Any], Any]],
        now: float,
        alerts: dict[str, Any],
        trackers: Any,
        rules: Any,
    ) -> Changes:
        ch = Changes()
        first = outcomes[0][0]
        ok = all(outcome.ok for _, outcome in outcomes)
        summary = "; ".join(outcome.summary for _, outcome in outcomes)
        for item, outcome in outcomes:
            ch.actions_done.append(item["action_id"])
            ch.audit.append(
                {
                    "ts": now,
                    "actor": item["actor"],
                    "action": "automated_response",
                    "response": item["action"],
                    "rule_id": item["rule_id"],
                    "alert_id": item["alert_id"],
                    "ok": outcome.ok,
                    "summary": outcome.summary,
                    "details": dict(outcome.details),
                }
            )
        key = f"{ACTION_RULE_PREFIX}{first['rule_id']}"
        severity = first["severity"] if ok else Severity.CRITICAL
        previous = alerts.get(key)
        alert = {
            "alert_id": uuid.uuid4().hex[:16],
            "portfolio_id": portfolio_id,
            "rule_id": key,
            "kind": "action",
            "metric": first["metric"],
            "op": first["op"],
            "threshold": first["threshold"],
            "unit": SNAPSHOT_METRICS.get(first["metric"], "number"),
            "severity": severity,
            "description": f"Automated response to {first['rule_id']}"
            + ("" if ok else " FAILED")
            + f": {', '.join(i['action'] for i, _ in outcomes)}",
            "summary": summary,
            "ok": ok,
            "source_alert_id": first["alert_id"],
            **triggered_fields(first.get("value"), False, now, now),
            "occurrences": 1,
        }
        if previous is not None:
            # one active alert per rule: a newer automated action replaces the older record's content
            alert["alert_id"] = previous["alert_id"]
            alert["occurrences"] = int(previous.get("occurrences", 1)) + 1
            alert["history"] = (previous.get("history") or [])[-9:] + [
                {"ts": previous.get("triggered_at"), "summary": previous.get("summary")}
            ]
        esc.start(alert, self.escalation.policy(severity), now)
        ch.alerts_set[key] = alert
        ch.log.append(self.log_record(AlertStatus.TRIGGERED, alert, now, first["actor"], summary))
        self.plan_timers(ch, portfolio_id, {key: alert}, now)
        return ch


def rerun_refusal(op: str, threshold: float, acted: Mapping[str, Any], value: Any) -> str | None:
    """Why a trade action of a re-triggered rule does not run again in the same breach episode, or None when it
    does: the value is *materially worse* than at the action's last run (``acted["value"]``), i.e. further in
    the breach direction of ``op`` (lower for ``<`` / ``<=``, higher for ``>`` / ``>=``) by at least
    :data:`REARM_WORSENING_FRACTION` of ``max(|threshold|, |last value|)`` (when both are 0: any worsening).
    An ``==`` rule has no direction to be worse in, and a value or last value that is unknown (stale data)
    proves nothing: neither re-runs."""
    if not _finite(value) or not _finite(acted.get("value")):
        return f"value {value_text(value)} cannot be compared with {value_text(acted.get('value'))} at the last run"
    if op not in ("<", "<=", ">", ">="):
        return f"a {op!r} rule has no direction in which the breach could be worse than at the last run"
    now, last, down = float(value), float(acted["value"]), op in ("<", "<=")
    step = REARM_WORSENING_FRACTION * max(abs(threshold), abs(last))
    worse = last - now if down else now - last
    if worse > 0 and worse >= step:
        return None
    bar = last - step if down else last + step
    return (
        f"value {now:g} is not materially worse than {last:g} at the last run "
        f"({acted.get('alert_id')}): a re-run needs {'<=' if down else '>='} {bar:g}"
    )


def value_text(value: Any) -> str:
    return f"{float(value):g}" if _finite(value) else "STALE"


def public_alert(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The alert as the dashboard and templates see it (without the escalation bookkeeping's internals)."""
    out = {k: v for k, v in alert.items() if k not in ("escalation", "reminder")}
    escalation = alert.get("escalation") or {}
    out["escalation_level"] = int(escalation.get("max_level", -1)) + 1
    out["next_escalation_at"] = escalation.get("next_at")
    return out


def data_age(snapshot: Snapshot, now: float) -> float:
    """Seconds from the snapshot's market data (its ``market_ts``, else its ``ts``) to ``now``; inf without one."""
    data_ts = snapshot.get("market_ts")
    if not _finite(data_ts):
        data_ts = snapshot.get("ts")
    return now - float(data_ts) if isinstance(data_ts, int | float) and _finite(data_ts) else math.inf


def staleness(rules: Sequence[AlertRule], snapshot: Snapshot, now: float) -> tuple[bool, ...]:
    """Per rule, whether the snapshot's data is stale for it at ``now`` (:meth:`AlertPlanner.condition`'s test):
    the only way the time of an evaluation enters a rule's condition."""
    age = data_age(snapshot, now)
    return tuple(age > rule.stale_after_seconds for rule in rules)


def snapshot_ts(snapshot: Snapshot) -> float:
    ts = snapshot.get("ts")
    return float(ts) if isinstance(ts, int | float) and _finite(ts) else -math.inf


def _gross(snapshot: Snapshot) -> float:
    """The snapshot's gross exposure (or the sum of its positions' |market value| when it has none)."""
    gross = snapshot.get("gross_exposure")
    if isinstance(gross, int | float) and _finite(gross):
        return float(gross)
    values = [p.get("market_value") for p in snapshot.get("positions") or []]
    return float(sum(abs(v) for v in values if _finite(v)))


def _finite(value: Any) -> bool:
    if type(value) is float:  # the usual case, first
        return math.isfinite(value)
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
