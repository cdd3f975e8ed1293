"""Alert rules, the alert lifecycle, and the API the monitor and the dashboard use.

Rules
-----
A rule (:class:`engine.settings.AlertRule`) compares one metric of the monitor's per-portfolio snapshot with a
threshold: ``metric`` is a dotted path from :data:`SNAPSHOT_METRICS` (e.g. ``var.utilization``,
``concentration.largest_share``), ``op`` one of ``< <= > >= ==``, ``severity`` LOW / MEDIUM / HIGH / CRITICAL.
``pending_seconds``: the breach must hold that long before the alert fires; ``clear_seconds``: the metric must
be back that long before it resolves (together: no flapping). ``stale_after_seconds`` / ``stale_policy``: when
the snapshot's market data is older than that, ``keep`` holds the rule's state as it is and ``fire`` counts
the staleness as a breach (a STALE alert). A metric that is ``null`` in the snapshot (margin level of a cash
account) does not apply: it never breaches. ``portfolios`` is ``["*"]`` or a list of ids; ``actions`` are
automated responses (:mod:`logic.responses`).

The rules of ``riskdesk.toml`` are the defaults. :class:`RuleBook` (``AlertEngine.list_rules`` /
``add_rule`` / ``update_rule`` / ``remove_rule`` / ``reset_rule``) edits them at run time: edits live in Redis
(``rd:rules``), are validated (unknown metric path, bad operator, NaN threshold... refused with a clear
message) and audited in ``rd:audit`` with who, before and after, in the same transaction. Every engine sees
an edit at its next evaluation (a version counter).

Lifecycle
---------
``TRIGGERED -> ACKNOWLEDGED -> RESOLVED``, each with who and when; at most one active alert per rule and
portfolio (the hash ``pf:{id}:alerts`` is keyed by rule id). Alerts resolve by themselves after the clear
period, or by hand (``resolve``). A CRITICAL alert *inhibits* the lower-severity alerts on the same metric of
the same portfolio: they stay visible but send nothing until it is gone. An acknowledged alert that is still
active after ``[escalation] ack_timeout_seconds`` goes back to TRIGGERED and escalation restarts.
Every transition is appended to ``pf:{id}:alert_log`` with the full alert record (the history).

Atomicity and restarts
----------------------
Each evaluation WATCHes the portfolio's alert and timer hashes, decides, and writes in one MULTI: the alert
records, the timers, the history, **the notifications to send** (an outbox, see
:mod:`notifications.delivery`) and the automated actions to run. Nothing lives only in memory, so a new
:class:`AlertEngine` on the same Redis continues exactly where the old one stopped: no alert lost, no
notification sent twice, escalation on its original schedule.

Driving the engine
------------------
``evaluate(portfolio_id, snapshot, now)``: call once per snapshot (the monitor does).
``tick(now)``: call regularly (every second or so), snapshots or not. It re-evaluates each portfolio's last
snapshot at ``now`` (pending and clear periods, stale data), runs escalation timers, repeat reminders and
acknowledge timeouts, runs leftover automated actions, and flushes due notification groups.
:meth:`AlertEngine.start_background` runs ``tick`` on a thread of its own (the monitor then only calls
``evaluate``); :meth:`AlertEngine.close` stops it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from engine.errors import ConfigError, RiskdeskError
from engine.settings import AlertRule, Settings, valid_symbol
from engine.store import GLOBAL_AUDIT_KEY, RULES_KEY, PortfolioKeys, Store
from logic import escalation as esc
from logic.escalation import EscalationConfig, escalation_config
from logic.responses import ControlFactory, ResponseRunner, parse_action, plan_reduction
from notifications.config import notification_config
from notifications.delivery import Notifier, Target, build_channels

Clock = Callable[[], float]
Snapshot = Mapping[str, Any]

LOGGER = logging.getLogger("riskdesk.alerts")

SEVERITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
OPERATORS = ("<", "<=", ">", ">=", "==")
STALE_POLICIES = ("keep", "fire")
ACTIVE_STATUSES = ("TRIGGERED", "ACKNOWLEDGED")
SYSTEM_ACTOR = "system"
AUTO_ACTOR_PREFIX = "auto:"
ACTION_RULE_PREFIX = "action:"
MAX_TRANSACTION_ATTEMPTS = 20
"""WATCH retries of one alert transaction; only a storm of concurrent acknowledgements could exhaust them."""
MANUAL_RESOLVE_REARM_SECONDS = 60.0
"""After a manual resolve, a condition that still holds fires again after its pending period but no sooner
than this: the breach is real and the desk must hear of it again, yet not on the very next tick."""
HISTORY_SCAN = 5000
"""At most this many history records are scanned per portfolio for resolved alerts by ``list_alerts``
(``5 * limit`` of them, at least 200: an alert leaves 2 to 6 records)."""

SNAPSHOT_METRICS: Mapping[str, str] = {
    "equity": "money",
    "cash": "money",
    "market_value": "money",
    "gross_exposure": "money",
    "net_exposure": "money",
    "leverage": "ratio",
    "pnl.unrealized": "money",
    "pnl.realized": "money",
    "pnl.daily": "money",
    "pnl.total": "money",
    "var.var95": "money",
    "var.var99": "money",
    "var.cvar95": "money",
    "var.cvar99": "money",
    "var.stressed_var99": "money",
    "var.limit": "money",
    "var.confidence": "fraction",
    "var.utilization": "fraction",
    "drawdown.daily": "fraction",
    "drawdown.weekly": "fraction",
    "drawdown.max": "fraction",
    "concentration.hhi": "number",
    "concentration.largest_share": "fraction",
    "margin.level": "percent",
    "margin.used": "money",
    "margin.maintenance": "money",
    "data.market_age_seconds": "seconds",
    "data.missing_prices": "count",
}
"""Every metric path a rule may use, with its unit (how notifications format it). These are the numeric
fields of the monitor's snapshot (see the snapshot schema in README / the contracts); ``data.missing_prices``
is a list and a rule compares its length. ``margin.level`` is in percent points (150 = 150%)."""

NOT_APPLICABLE_WHEN_NULL = frozenset({"margin.level"})
"""Metrics whose ``null`` means "does not apply" (a cash account has no margin level; a margin account
without exposure uses no margin): a rule on them does not breach. Any other ``null`` (a value that could not
be computed) or absent field is *no data* and follows the rule's stale-data policy."""


# -- errors --------------------------------------------------------------------------------------------------


class AlertError(RiskdeskError):
    code = "ALERT_ERROR"


class RuleValidationError(AlertError):
    code = "RULE_INVALID"
    fix = "correct the rule as the message says"


class RuleNotFoundError(AlertError):
    code = "RULE_NOT_FOUND"
    fix = "pick a rule from the rule list"


class RuleExistsError(AlertError):
    code = "RULE_EXISTS"
    fix = "choose another id, or edit the existing rule"


class AlertNotFoundError(AlertError):
    code = "ALERT_NOT_FOUND"
    fix = "refresh the alert list: the alert may have been resolved already"


class AlertConflictError(AlertError):
    code = "ALERT_CONFLICT"
    fix = "try again: the alert kept changing while it was being updated"


# -- rules ---------------------------------------------------------------------------------------------------

_RULE_FIELDS = tuple(f.name for f in dataclasses.fields(AlertRule))


def rule_to_dict(rule: AlertRule) -> dict[str, Any]:
    d = dataclasses.asdict(rule)
    d["portfolios"] = list(rule.portfolios)
    d["actions"] = list(rule.actions)
    return d


def metric_value(snapshot: Snapshot, path: str) -> Any:
    """The value at a dotted ``path`` of ``snapshot`` (a list's length); :data:`MISSING` when absent."""
    node: Any = snapshot
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    if isinstance(node, list | tuple):
        return len(node)
    return node


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def compare(value: float, op: str, threshold: float) -> bool:
    if op == "<":
        return value < threshold
    if op == "<=":
        return value <= threshold
    if op == ">":
        return value > threshold
    if op == ">=":
        return value >= threshold
    if op == "==":
        return math.isclose(value, threshold, rel_tol=1e-9, abs_tol=1e-12)
    raise ValueError(f"bad operator {op!r}")


def validate_rule(data: Mapping[str, Any] | AlertRule) -> AlertRule:
    """Check every field of a rule and build it.

    Raises
    ------
    RuleValidationError
        Naming the field and what is accepted, e.g. ``unknown metric path 'var.var96'; did you mean
        'var.var95'?``, ``bad operator '=>'``, ``threshold must be a finite number, got nan``.
    """
    if isinstance(data, AlertRule):
        data = rule_to_dict(data)
    if not isinstance(data, Mapping):
        raise RuleValidationError(f"a rule must be a table of fields, got {type(data).__name__}")
    unknown = set(data) - set(_RULE_FIELDS)
    if unknown:
        raise RuleValidationError(f"unknown rule field(s) {sorted(unknown)}; known: {list(_RULE_FIELDS)}")
    for required in ("id", "metric", "op", "threshold", "severity"):
        if required not in data or data[required] is None or data[required] == "":
            raise RuleValidationError(f"rule field {required!r} is required")
    rule_id = data["id"]
    if not valid_symbol(rule_id) or str(rule_id).startswith(ACTION_RULE_PREFIX.rstrip(":")):
        raise RuleValidationError(f"rule id {rule_id!r}: use 1-32 letters, digits, '.', '_' or '-'")
    metric = data["metric"]
    if not isinstance(metric, str) or metric not in SNAPSHOT_METRICS:
        close = difflib.get_close_matches(str(metric), list(SNAPSHOT_METRICS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(SNAPSHOT_METRICS)}"
        raise RuleValidationError(
            f"unknown metric path {metric!r} (not a numeric field of the snapshot){hint}"
        )
    op = data["op"]
    if op not in OPERATORS:
        raise RuleValidationError(f"bad operator {op!r}; use one of {' '.join(OPERATORS)}")
    threshold = _finite_number(data["threshold"], "threshold")
    severity = data["severity"]
    if severity not in SEVERITIES:
        raise RuleValidationError(f"severity {severity!r}: use one of {', '.join(SEVERITIES)}")
    description = data.get("description", "")
    if not isinstance(description, str) or len(description) > 500:
        raise RuleValidationError("description must be text of at most 500 characters")
    pending = _finite_number(data.get("pending_seconds", 0.0), "pending_seconds", minimum=0.0)
    clear = _finite_number(data.get("clear_seconds", 0.0), "clear_seconds", minimum=0.0)
    stale_after = _finite_number(data.get("stale_after_seconds", 60.0), "stale_after_seconds", minimum=0.0)
    if stale_after <= 0:
        raise RuleValidationError("stale_after_seconds must be > 0")
    stale_policy = data.get("stale_policy", "keep")
    if stale_policy not in STALE_POLICIES:
        raise RuleValidationError(
            f"stale_policy {stale_policy!r}: use 'keep' (hold the state) or 'fire' (STALE)"
        )
    portfolios = data.get("portfolios", ("*",))
    if isinstance(portfolios, str):
        portfolios = [portfolios]
    if not isinstance(portfolios, list | tuple) or not portfolios:
        raise RuleValidationError('portfolios must be a non-empty list of portfolio ids, or ["*"] for all')
    for pid in portfolios:
        if pid != "*" and not valid_symbol(pid):
            raise RuleValidationError(f"portfolios: {pid!r} is not a portfolio id")
    if "*" in portfolios and len(portfolios) > 1:
        raise RuleValidationError('portfolios: "*" (all) cannot be combined with named portfolios')
    actions = data.get("actions", ())
    if isinstance(actions, str) or not isinstance(actions, list | tuple):
        raise RuleValidationError('actions must be a list such as ["set_state:HALTED"]')
    parsed = []
    for text in actions:
        try:
            parsed.append(parse_action(text).text)
        except ValueError as exc:
            raise RuleValidationError(str(exc)) from None
    return AlertRule(
        id=rule_id,
        metric=metric,
        op=op,
        threshold=threshold,
        severity=severity,
        description=description,
        pending_seconds=pending,
        clear_seconds=clear,
        stale_after_seconds=stale_after,
        stale_policy=stale_policy,
        portfolios=tuple(portfolios),
        actions=tuple(parsed),
    )


def _finite_number(value: Any, name: str, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value) if isinstance(value, str) and value.strip() else None
        except ValueError:
            value = None
        if value is None:
            raise RuleValidationError(f"{name} must be a number")
    if not math.isfinite(value):
        raise RuleValidationError(f"{name} must be a finite number, got {value}")
    if minimum is not None and value < minimum:
        raise RuleValidationError(f"{name} must be >= {minimum:g}, got {value:g}")
    return float(value)


class RuleBook:
    """The effective rules: the settings' defaults overlaid with the run-time edits stored in Redis."""

    def __init__(self, store: Store, defaults: Sequence[AlertRule], clock: Clock = time.time) -> None:
        self.store = store
        self.clock = clock
        validated = []
        for rule in defaults:
            try:
                validated.append(validate_rule(rule))
            except RuleValidationError as exc:
                raise ConfigError(f"alert_rules {rule.id!r}: {exc.detail}") from exc
        ids = [r.id for r in validated]
        if len(ids) != len(set(ids)):
            raise ConfigError(
                f"alert_rules: duplicate rule ids {sorted({i for i in ids if ids.count(i) > 1})}"
            )
        self.defaults: dict[str, AlertRule] = {r.id: r for r in validated}
        self._cache: tuple[int, tuple[AlertRule, ...]] | None = None
        self._lock = threading.Lock()

    def rules(self, conn: Any = None) -> tuple[AlertRule, ...]:
        """The effective rules (cached per rules version: one GET per call)."""
        version = self.store.read_rules_version(conn)
        cached = self._cache
        if cached is not None and cached[0] == version:
            return cached[1]
        rules = self._effective(self.store.read_rule_overrides(conn))
        with self._lock:
            self._cache = (version, rules)
        return rules

    def _effective(self, overrides: Mapping[str, Any]) -> tuple[AlertRule, ...]:
        out: list[AlertRule] = []
        for rule_id, rule in self.defaults.items():
            override = overrides.get(rule_id)
            if override is None:
                out.append(rule)
            elif not override.get("deleted"):
                out.append(self._decode(rule_id, override))
        for rule_id in sorted(set(overrides) - set(self.defaults)):
            if not overrides[rule_id].get("deleted"):
                out.append(self._decode(rule_id, overrides[rule_id]))
        return tuple(out)

    def _decode(self, rule_id: str, override: Mapping[str, Any]) -> AlertRule:
        try:
            return validate_rule(override["rule"])
        except (RuleValidationError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"stored rule {rule_id!r} in {RULES_KEY} is invalid: {exc}",
                fix=f"remove it with reset_rule('{rule_id}') or fix it in the rules editor",
            ) from exc

    def list_rules(self) -> list[dict[str, Any]]:
        """Every effective rule as a dict plus ``source``: ``settings``, ``edited`` (a default changed at run
        time) or ``runtime`` (added at run time); removed defaults are listed with ``source="removed"``."""
        overrides = self.store.read_rule_overrides()
        out = []
        for rule in self._effective(overrides):
            source = (
                "runtime"
                if rule.id not in self.defaults
                else ("edited" if rule.id in overrides else "settings")
            )
            out.append({**rule_to_dict(rule), "source": source})
        for rule_id, override in overrides.items():
            if override.get("deleted") and rule_id in self.defaults:
                out.append({**rule_to_dict(self.defaults[rule_id]), "source": "removed"})
        return out

    def get(self, rule_id: str) -> AlertRule:
        for rule in self.rules():
            if rule.id == rule_id:
                return rule
        raise RuleNotFoundError(f"no rule {rule_id!r}")

    def add(self, data: Mapping[str, Any], actor: str, reason: str = "") -> AlertRule:
        rule = validate_rule(data)
        return self._change(rule.id, actor, "rule_added", reason, lambda current: self._add(rule, current))

    def update(self, rule_id: str, changes: Mapping[str, Any], actor: str, reason: str = "") -> AlertRule:
        if "id" in changes and changes["id"] != rule_id:
            raise RuleValidationError("a rule's id cannot change: add a new rule and remove this one")

        def apply(current: AlertRule | None) -> tuple[AlertRule, dict[str, Any]]:
            if current is None:
                raise RuleNotFoundError(f"no rule {rule_id!r}")
            rule = validate_rule({**rule_to_dict(current), **dict(changes)})
            return rule, {"rule": rule_to_dict(rule)}

        return self._change(rule_id, actor, "rule_updated", reason, apply)

    def remove(self, rule_id: str, actor: str, reason: str = "") -> AlertRule:
        """Remove a rule (a settings default is masked until :meth:`reset`). Its active alerts resolve at the
        next evaluation with reason "rule removed"."""

        def apply(current: AlertRule | None) -> tuple[AlertRule, dict[str, Any] | None]:
            if current is None:
                raise RuleNotFoundError(f"no rule {rule_id!r}")
            return current, ({"deleted": True} if rule_id in self.defaults else None)

        return self._change(rule_id, actor, "rule_removed", reason, apply)

    def reset(self, rule_id: str, actor: str, reason: str = "") -> AlertRule:
        """Drop the run-time edit of a settings default: the rule of riskdesk.toml applies again."""
        if rule_id not in self.defaults:
            raise RuleNotFoundError(f"{rule_id!r} is not a rule of the settings file; nothing to reset to")
        return self._change(
            rule_id, actor, "rule_reset", reason, lambda current: (self.defaults[rule_id], None)
        )

    @staticmethod
    def _add(rule: AlertRule, current: AlertRule | None) -> tuple[AlertRule, dict[str, Any]]:
        if current is not None:
            raise RuleExistsError(f"a rule {rule.id!r} exists already")
        return rule, {"rule": rule_to_dict(rule)}

    def _change(
        self,
        rule_id: str,
        actor: str,
        action: str,
        reason: str,
        apply: Callable[[AlertRule | None], tuple[AlertRule, dict[str, Any] | None]],
    ) -> AlertRule:
        actor = _require_actor(actor)
        client = self.store.client
        for _ in range(MAX_TRANSACTION_ATTEMPTS):
            with client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(RULES_KEY, Store.RULES_VERSION_KEY)
                    overrides = self.store.read_rule_overrides(pipe)
                    current = {r.id: r for r in self._effective(overrides)}.get(rule_id)
                    rule, payload = apply(current)
                    pipe.multi()
                    self.store.write_rule_override(rule_id, payload, pipe)
                    self.store.bump_rules_version(pipe)
                    self.store.append_audit(
                        GLOBAL_AUDIT_KEY,
                        {
                            "ts": self.clock(),
                            "actor": actor,
                            "action": action,
                            "rule_id": rule_id,
                            "before": rule_to_dict(current) if current is not None else None,
                            "after": rule_to_dict(rule) if action != "rule_removed" else None,
                            "reason": reason,
                        },
                        pipe,
                    )
                    pipe.execute()
                    return rule
                except redis.WatchError:
                    continue
        raise AlertConflictError(f"rule {rule_id!r} kept changing during the edit")

    def audit_log(self, count: int = 100) -> list[dict[str, Any]]:
        """The newest rule edits (and other global audit records) from ``rd:audit``."""
        return [r for r in self.store.read_stream_json(GLOBAL_AUDIT_KEY, count=count) if "rule_id" in r]


def _require_actor(actor: Any) -> str:
    if not isinstance(actor, str) or not actor.strip() or len(actor) > 64:
        raise AlertError(
            "say who does this: actor must be a non-empty name of at most 64 characters",
            fix="pass the user's name as actor",
        )
    return actor.strip()


def applies(rule: AlertRule, portfolio_id: str) -> bool:
    return "*" in rule.portfolios or portfolio_id in rule.portfolios


# -- the engine ----------------------------------------------------------------------------------------------


@dataclass
class _Changes:
    """What one alert transaction writes (and reports)."""

    alerts_set: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts_del: list[str] = field(default_factory=list)
    trackers_set: dict[str, dict[str, Any]] = field(default_factory=dict)
    trackers_del: list[str] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    notify: list[tuple[dict[str, Any], list[Target]]] = field(default_factory=list)
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


class AlertEngine:
    """Evaluates rules on snapshots, keeps the alert lifecycle in Redis and drives notifications and actions.

    Parameters
    ----------
    store, settings:
        The Redis store and the frozen settings (rules defaults come from ``settings.alert_rules``).
    notifier:
        Delivery (:class:`notifications.delivery.Notifier`).
    escalation:
        Escalation policies (:func:`logic.escalation.escalation_config`).
    responses:
        Runs automated actions (:class:`logic.responses.ResponseRunner`).
    clock:
        Epoch seconds; used when a method is called without ``now``.
    repeat_interval_seconds:
        Remind about an active, unacknowledged alert this often (0 = never); default from the notifier.

    Use :func:`build_alert_engine` to build one from the settings.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        notifier: Notifier,
        escalation: EscalationConfig,
        responses: ResponseRunner,
        clock: Clock = time.time,
        repeat_interval_seconds: float | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.notifier = notifier
        self.escalation = escalation
        self.responses = responses
        self.clock = clock
        self.rulebook = RuleBook(store, settings.alert_rules, clock)
        self.repeat_interval_seconds = (
            notifier.config.repeat_interval_seconds
            if repeat_interval_seconds is None
            else repeat_interval_seconds
        )
        self._last: dict[str, Snapshot] = {}
        self._lock = threading.RLock()
        self._background: threading.Thread | None = None
        self._stop = threading.Event()

    # -- the monitor's calls ---------------------------------------------------------------------------------
    def evaluate(
        self, portfolio_id: str, snapshot: Snapshot, now: float | None = None
    ) -> list[dict[str, Any]]:
        """Evaluate every applicable rule on one snapshot; returns the transitions it caused.

        Called by the monitor once per snapshot. Writes only when something changes (a timer starts, an
        alert triggers or resolves, a value of an active alert moves); runs the automated actions of alerts
        it triggered before returning.
        """
        if not isinstance(snapshot, Mapping):
            raise TypeError(f"snapshot must be a mapping, got {type(snapshot).__name__}")
        now = self.clock() if now is None else float(now)
        with self._lock:
            self._last[portfolio_id] = snapshot
            changes = self._transact(
                portfolio_id,
                functools.partial(self._plan_evaluation, portfolio_id, snapshot, now),
            )
            if changes.actions:
                self._run_pending_actions(portfolio_id, now)
        return changes.transitions

    def tick(self, now: float | None = None) -> dict[str, Any]:
        """Time-based work; call about once a second whether or not snapshots arrive (or let
        :meth:`start_background` do it).

        For every portfolio: re-evaluate its newest snapshot at ``now`` (pending and clear periods complete,
        data goes stale), fire due escalation levels, repeat reminders and acknowledge timeouts, and run
        automated actions left over (e.g. by a crash); then flush the notification groups that are due.
        Returns ``{"transitions": [...], "deliveries": [...]}``.

        The flush runs outside the engine's lock, so an SMTP server retrying does not hold up
        :meth:`evaluate` on another thread.
        """
        now = self.clock() if now is None else float(now)
        transitions: list[dict[str, Any]] = []
        pids = self.portfolio_ids()
        with self._lock:
            for pid in pids:
                snapshot = self._latest_snapshot(pid)
                if snapshot is not None:
                    changes = self._transact(
                        pid, functools.partial(self._plan_evaluation, pid, snapshot, now)
                    )
                else:
                    changes = self._transact(pid, functools.partial(self._plan_timers_only, pid, now))
                transitions.extend(changes.transitions)
                self._run_pending_actions(pid, now)
        deliveries = self.notifier.flush(now, pids)
        return {"transitions": transitions, "deliveries": deliveries}

    def _latest_snapshot(self, portfolio_id: str) -> Snapshot | None:
        """The newest snapshot known for the portfolio: the last one evaluated here, or the one the monitors
        stored if it is newer (another monitor may have evaluated later ticks; after a restart this engine has
        seen none). Re-evaluating an older one every second would make two monitors flap."""
        mine = self._last.get(portfolio_id)
        try:
            stored = self.store.read_snapshot(portfolio_id)
        except (RiskdeskError, redis.RedisError):
            stored = None
        if stored is not None and (mine is None or _snapshot_ts(stored) > _snapshot_ts(mine)):
            self._last[portfolio_id] = stored
            return stored
        return mine

    def start_background(self, interval_seconds: float = 1.0) -> None:
        """Run :meth:`tick` every ``interval_seconds`` (engine clock) on a daemon thread until :meth:`close`.

        With it the monitor only calls :meth:`evaluate`; notification delivery (and its retries) never
        delays the monitor's loop. Errors are logged and the thread carries on.
        """
        if self._background is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.tick(self.clock())
                except Exception:  # keep going: a Redis blip must not end notifications for good
                    LOGGER.exception("alert engine tick failed")
                self._stop.wait(interval_seconds)

        self._background = threading.Thread(target=loop, name="riskdesk-alerts", daemon=True)
        self._background.start()

    def close(self) -> None:
        """Stop the background thread (after its current tick); safe to call twice."""
        thread, self._background = self._background, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=300)

    # -- the dashboard's calls -------------------------------------------------------------------------------
    def acknowledge(self, portfolio_id: str, rule_id: str, actor: str, note: str = "") -> dict[str, Any]:
        """TRIGGERED -> ACKNOWLEDGED by ``actor``: escalation stops (until the acknowledge timeout, if any).

        Acknowledging an already acknowledged alert records the new acknowledgement (who and when).
        Raises :class:`AlertNotFoundError` when the rule has no active alert in that portfolio.
        """
        actor = _require_actor(actor)
        now = self.clock()
        result: dict[str, Any] = {}

        def plan(alerts: dict[str, Any], trackers: dict[str, Any], rules: Any) -> _Changes:
            alert = alerts.get(rule_id)
            if alert is None:
                raise AlertNotFoundError(
                    f"no active alert for rule {rule_id!r} in portfolio {portfolio_id!r}"
                )
            ch = _Changes()
            alert = dict(alert)
            alert.update(
                status="ACKNOWLEDGED",
                acknowledged_by=actor,
                acknowledged_at=now,
                ack_note=str(note)[:500],
                updated_at=now,
            )
            timeout = self.escalation.ack_timeout_seconds
            alert["ack_timeout_at"] = now + timeout if timeout > 0 else None
            esc.stop(alert)
            ch.alerts_set[rule_id] = alert
            ch.log.append(self._log_record("ACKNOWLEDGED", alert, now, actor, note))
            result.update(alert)
            return ch

        with self._lock:
            self._transact(portfolio_id, plan)
        return result

    def resolve(self, portfolio_id: str, rule_id: str, actor: str, note: str = "") -> dict[str, Any]:
        """Resolve by hand (ACTIVE -> RESOLVED by ``actor``); escalation is cancelled and everyone notified so
        far gets one resolved message. A condition that still holds triggers again after its pending period,
        and no sooner than :data:`MANUAL_RESOLVE_REARM_SECONDS`.
        Raises :class:`AlertNotFoundError` when there is no active alert (e.g. it resolved already)."""
        actor = _require_actor(actor)
        now = self.clock()
        result: dict[str, Any] = {}

        def plan(alerts: dict[str, Any], trackers: dict[str, Any], rules: Any) -> _Changes:
            alert = alerts.get(rule_id)
            if alert is None:
                raise AlertNotFoundError(
                    f"no active alert for rule {rule_id!r} in portfolio {portfolio_id!r}"
                )
            ch = _Changes()
            resolved = self._resolve_into(ch, portfolio_id, alert, now, actor, note or "resolved by hand")
            if alert.get("kind") == "metric":
                # a breach that persists fires again, but not at once (see MANUAL_RESOLVE_REARM_SECONDS)
                ch.trackers_set[rule_id] = {
                    "breach_since": now,
                    "hold_until": now + MANUAL_RESOLVE_REARM_SECONDS,
                }
            result.update(resolved)
            return ch

        with self._lock:
            self._transact(portfolio_id, plan)
        return result

    def list_alerts(
        self,
        portfolio_id: str | None = None,
        *,
        status: str | Iterable[str] | None = None,
        severity: str | Iterable[str] | None = None,
        rule_id: str | None = None,
        since: float | None = None,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        """Active and resolved alerts, newest trigger first, filtered.

        ``status``/``severity`` accept one value or several; ``since`` keeps alerts triggered (or resolved) at
        or after that time. Resolved alerts come from the newest history records (see :data:`HISTORY_SCAN`).
        """
        statuses = _as_set(status)
        severities = _as_set(severity)
        out: list[dict[str, Any]] = []
        for pid in [portfolio_id] if portfolio_id else self.portfolio_ids():
            alerts = list(self.store.read_active_alerts(pid).values())
            if statuses is None or "RESOLVED" in statuses:
                seen = set()
                scan = min(HISTORY_SCAN, max(200, 5 * limit))
                for record in self.store.read_stream_json(PortfolioKeys(pid).alert_log, count=scan):
                    alert = record.get("alert") or {}
                    if record.get("event") == "RESOLVED" and alert.get("alert_id") not in seen:
                        seen.add(alert.get("alert_id"))
                        alerts.append(alert)
            for alert in alerts:
                if statuses is not None and alert.get("status") not in statuses:
                    continue
                if severities is not None and alert.get("severity") not in severities:
                    continue
                if rule_id is not None and alert.get("rule_id") != rule_id:
                    continue
                if (
                    since is not None
                    and max(alert.get("triggered_at") or 0, alert.get("resolved_at") or 0) < since
                ):
                    continue
                out.append(_public(alert))
        out.sort(key=lambda a: (a.get("triggered_at") or 0.0, a.get("alert_id", "")), reverse=True)
        return out[:limit]

    def active_alerts(self, portfolio_id: str | None = None) -> list[dict[str, Any]]:
        return self.list_alerts(portfolio_id, status=ACTIVE_STATUSES, limit=10_000)

    def alert_history(self, portfolio_id: str, count: int = 200) -> list[dict[str, Any]]:
        """Every transition (TRIGGERED, ACKNOWLEDGED, RESOLVED, ESCALATED, INHIBITED, ...), newest first."""
        return self.store.read_stream_json(PortfolioKeys(portfolio_id).alert_log, count=count)

    def delivery_log(
        self,
        portfolio_id: str | None = None,
        count: int = 100,
        *,
        status: str | None = None,
        channel: str | None = None,
        alert_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Notification deliveries (channel, recipient, status, error, attempts, events), newest first."""
        pids = [portfolio_id] if portfolio_id else self.portfolio_ids()
        return self.notifier.delivery_log(pids, count, status=status, channel=channel, alert_id=alert_id)

    def pending_notifications(self, portfolio_id: str) -> int:
        """How many (event, target) notifications wait in the outbox."""
        return self.notifier.pending_count(portfolio_id)

    # rules (delegated to the rule book, here so the dashboard needs one object)
    def list_rules(self) -> list[dict[str, Any]]:
        return self.rulebook.list_rules()

    def get_rule(self, rule_id: str) -> AlertRule:
        return self.rulebook.get(rule_id)

    def add_rule(self, data: Mapping[str, Any], actor: str, reason: str = "") -> AlertRule:
        return self.rulebook.add(data, actor, reason)

    def update_rule(
        self, rule_id: str, changes: Mapping[str, Any], actor: str, reason: str = ""
    ) -> AlertRule:
        return self.rulebook.update(rule_id, changes, actor, reason)

    def remove_rule(self, rule_id: str, actor: str, reason: str = "") -> AlertRule:
        return self.rulebook.remove(rule_id, actor, reason)

    def reset_rule(self, rule_id: str, actor: str, reason: str = "") -> AlertRule:
        return self.rulebook.reset(rule_id, actor, reason)

    def portfolio_ids(self) -> list[str]:
        return sorted(set(self.settings.portfolio_ids) | set(self.store.portfolio_ids()) | set(self._last))

    # -- transactions ----------------------------------------------------------------------------------------
    def _transact(
        self,
        portfolio_id: str,
        plan: Callable[[dict[str, Any], dict[str, Any], tuple[AlertRule, ...]], _Changes],
    ) -> _Changes:
        """WATCH the portfolio's alerts and timers, plan, write everything in one MULTI (bounded retry)."""
        alerts_key = PortfolioKeys(portfolio_id).alerts
        eval_key = Store.alert_eval_key(portfolio_id)
        for _ in range(MAX_TRANSACTION_ATTEMPTS):
            with self.store.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(alerts_key, eval_key)
                    rules = self.rulebook.rules(pipe)
                    alerts = self.store.read_active_alerts(portfolio_id, pipe)
                    trackers = self.store.read_json_hash(eval_key, pipe)
                    changes = plan(alerts, trackers, rules)
                    if changes.empty():
                        pipe.unwatch()
                        return changes
                    pipe.multi()
                    self._write(portfolio_id, changes, pipe)
                    pipe.execute()
                except redis.WatchError:
                    continue
            for record in changes.log:
                LOGGER.info(
                    "alert %s %s/%s [%s] %s",
                    record["event"],
                    portfolio_id,
                    record["rule_id"],
                    record["severity"],
                    record.get("note") or "",
                )
            return changes
        raise AlertConflictError(
            f"alerts of portfolio {portfolio_id!r} kept changing; gave up after "
            f"{MAX_TRANSACTION_ATTEMPTS} attempts"
        )

    def _write(self, portfolio_id: str, ch: _Changes, pipe: Any) -> None:
        keys = PortfolioKeys(portfolio_id)
        eval_key = Store.alert_eval_key(portfolio_id)
        self.store.delete_fields(keys.alerts, [k for k in ch.alerts_del if k not in ch.alerts_set], pipe)
        self.store.write_json_fields(keys.alerts, ch.alerts_set, pipe)
        self.store.delete_fields(eval_key, ch.trackers_del, pipe)
        self.store.write_json_fields(eval_key, ch.trackers_set, pipe)
        for record in ch.log:
            self.store.append_alert_log(portfolio_id, record, pipe)
        for event, targets in ch.notify:
            self.notifier.enqueue(portfolio_id, event, targets, event["ts"], pipe)
        self.store.write_json_fields(Store.actions_key(portfolio_id), ch.actions, pipe)
        self.store.delete_fields(Store.actions_key(portfolio_id), ch.actions_done, pipe)
        for record in ch.audit:
            self.store.append_audit(keys.audit, record, pipe)

    # -- planning (pure: reads only its arguments) -----------------------------------------------------------
    def _plan_evaluation(
        self,
        portfolio_id: str,
        snapshot: Snapshot,
        now: float,
        alerts: dict[str, Any],
        trackers: dict[str, Any],
        rules: tuple[AlertRule, ...],
    ) -> _Changes:
        ch = _Changes()
        current = {rid: dict(a) for rid, a in alerts.items()}
        applicable = {r.id: r for r in rules if applies(r, portfolio_id)}
        for rule_id, alert in list(current.items()):
            if alert.get("kind") == "metric" and rule_id not in applicable:
                self._resolve_into(
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
        for rule in sorted(applicable.values(), key=lambda r: -SEVERITY_RANK[r.severity]):
            self._evaluate_rule(ch, portfolio_id, rule, snapshot, now, current, trackers.get(rule.id) or {})
        self._plan_inhibition(ch, current, now)
        self._plan_timers(ch, portfolio_id, current, now)
        return ch

    def _plan_timers_only(
        self, portfolio_id: str, now: float, alerts: dict[str, Any], trackers: Any, rules: Any
    ) -> _Changes:
        ch = _Changes()
        current = {rid: dict(a) for rid, a in alerts.items()}
        self._plan_timers(ch, portfolio_id, current, now)
        return ch

    def _condition(self, rule: AlertRule, snapshot: Snapshot, now: float) -> tuple[bool | None, Any, bool]:
        """(breach, value, stale): breach None means "hold" (stale data under the ``keep`` policy)."""
        data_ts = snapshot.get("market_ts")
        if not _finite(data_ts):
            data_ts = snapshot.get("ts")
        age = now - float(data_ts) if isinstance(data_ts, int | float) and _finite(data_ts) else math.inf
        value = metric_value(snapshot, rule.metric)
        if age <= rule.stale_after_seconds and value is None and rule.metric in NOT_APPLICABLE_WHEN_NULL:
            return False, None, False
        if age > rule.stale_after_seconds or not _finite(value):
            return (True, None, True) if rule.stale_policy == "fire" else (None, None, False)
        return compare(float(value), rule.op, rule.threshold), float(value), False

    def _evaluate_rule(
        self,
        ch: _Changes,
        portfolio_id: str,
        rule: AlertRule,
        snapshot: Snapshot,
        now: float,
        current: dict[str, dict[str, Any]],
        tracker: Mapping[str, Any],
    ) -> None:
        breach, value, stale = self._condition(rule, snapshot, now)
        if breach is None:
            return
        alert = current.get(rule.id)
        if alert is not None:
            edited = {"op": rule.op, "threshold": rule.threshold, "description": rule.description}
            if any(alert.get(k) != v for k, v in edited.items()):  # the rule was edited while active
                alert.update(edited, updated_at=now)
                ch.alerts_set[rule.id] = alert
        new = {k: tracker.get(k) for k in ("breach_since", "clear_since", "hold_until")}
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
                    alert = self._trigger(ch, portfolio_id, rule, value, stale, since, now, snapshot)
                    current[rule.id] = alert
        else:
            new["breach_since"] = None
            if alert is not None:
                since = new["clear_since"] if new["clear_since"] is not None else now
                new["clear_since"] = since
                if now - since >= rule.clear_seconds:
                    alert.update(value=value, stale=False)
                    self._resolve_into(
                        ch,
                        portfolio_id,
                        alert,
                        now,
                        "auto",
                        f"clear for {now - since:.0f} s" if rule.clear_seconds else "clear",
                    )
                    del current[rule.id]
                    new = {"breach_since": None, "clear_since": None, "hold_until": None}
                elif alert.get("value") != value or alert.get("stale") or alert.get("clear_since") != since:
                    alert.update(value=value, stale=False, clear_since=since, updated_at=now)
                    ch.alerts_set[rule.id] = alert
            else:
                new["clear_since"] = None
        stored = {k: v for k, v in tracker.items() if v is not None}
        wanted = {k: v for k, v in new.items() if v is not None}
        if wanted != stored:
            if wanted:
                ch.trackers_set[rule.id] = wanted
            else:
                ch.trackers_del.append(rule.id)

    def _trigger(
        self,
        ch: _Changes,
        portfolio_id: str,
        rule: AlertRule,
        value: Any,
        stale: bool,
        since: float,
        now: float,
        snapshot: Snapshot,
    ) -> dict[str, Any]:
        alert = {
            "alert_id": uuid.uuid4().hex[:16],
            "portfolio_id": portfolio_id,
            "rule_id": rule.id,
            "kind": "metric",
            "metric": rule.metric,
            "op": rule.op,
            "threshold": rule.threshold,
            "unit": SNAPSHOT_METRICS.get(rule.metric, "number"),
            "severity": rule.severity,
            "description": rule.description,
            "status": "TRIGGERED",
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
            "actions": list(rule.actions),
        }
        esc.start(alert, self.escalation.policy(rule.severity), now)
        ch.alerts_set[rule.id] = alert
        ch.log.append(
            self._log_record("TRIGGERED", alert, now, SYSTEM_ACTOR, "STALE market data" if stale else "")
        )
        shown = "STALE" if value is None else f"{value:g}"
        for order, text in enumerate(rule.actions):
            action = parse_action(text)
            action_id = f"{alert['alert_id']}-{order}"
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
                "actor": f"{AUTO_ACTOR_PREFIX}{rule.id}",
                "created_at": now,
                "reason": f"alert {rule.id}: {rule.description or rule.metric} "
                f"({rule.metric} {rule.op} {rule.threshold:g}, value {shown})",
            }
            if action.kind == "reduce":
                assert action.fraction is not None
                pending["plan"] = plan_reduction(snapshot.get("positions") or [], action.fraction)
            ch.actions[action_id] = pending
        return alert

    def _resolve_into(
        self, ch: _Changes, portfolio_id: str, alert: Mapping[str, Any], now: float, actor: str, reason: str
    ) -> dict[str, Any]:
        resolved = dict(alert)
        resolved.update(
            status="RESOLVED", resolved_by=actor, resolved_at=now, resolve_reason=reason, updated_at=now
        )
        esc.stop(resolved)
        ch.alerts_del.append(alert["rule_id"])
        ch.alerts_set.pop(alert["rule_id"], None)
        ch.log.append(self._log_record("RESOLVED", resolved, now, actor, reason))
        if resolved.get("notified"):
            policy = self.escalation.policy(resolved["severity"])
            recipients: list[str] = []
            channels: list[str] = []
            for level in esc.notified_levels(resolved, policy):
                recipients.extend(policy.levels[level].recipients)
                channels.extend(policy.levels[level].channels)
            self._notify(ch, portfolio_id, "resolved", resolved, now, recipients, channels, level=None)
        return resolved

    def _plan_inhibition(self, ch: _Changes, current: dict[str, dict[str, Any]], now: float) -> None:
        critical = {
            a["metric"]
            for a in current.values()
            if a.get("kind") == "metric" and a["severity"] == "CRITICAL" and a["status"] in ACTIVE_STATUSES
        }
        for rule_id, alert in current.items():
            if alert.get("kind") != "metric" or alert["severity"] == "CRITICAL":
                continue
            inhibit = alert["metric"] in critical
            if inhibit == bool(alert.get("inhibited")):
                continue
            alert["inhibited"] = inhibit
            alert["updated_at"] = now
            if inhibit:
                esc.stop(alert)
                ch.log.append(
                    self._log_record(
                        "INHIBITED",
                        alert,
                        now,
                        SYSTEM_ACTOR,
                        f"a CRITICAL alert on {alert['metric']} is active",
                    )
                )
            else:
                policy = self.escalation.policy(alert["severity"])
                if alert.get("notified"):
                    esc.resume(alert, policy, now)
                else:
                    esc.start(alert, policy, now)
                ch.log.append(self._log_record("UNINHIBITED", alert, now, SYSTEM_ACTOR, ""))
            ch.alerts_set[rule_id] = alert

    def _plan_timers(
        self, ch: _Changes, portfolio_id: str, current: dict[str, dict[str, Any]], now: float
    ) -> None:
        """Acknowledge timeouts, due escalation levels, repeat reminders."""
        for rule_id, alert in current.items():
            policy = self.escalation.policy(alert["severity"])
            changed = False
            if (
                alert["status"] == "ACKNOWLEDGED"
                and alert.get("ack_timeout_at") is not None
                and now >= alert["ack_timeout_at"]
            ):
                cycle = int((alert.get("escalation") or {}).get("cycle", 0)) + 1
                alert["reminder"] = {
                    "acknowledged_by": alert.get("acknowledged_by"),
                    "acknowledged_at": alert.get("acknowledged_at"),
                }
                alert.update(status="TRIGGERED", ack_timeout_at=None, updated_at=now)
                if not alert.get("inhibited"):
                    esc.start(alert, policy, now, cycle=cycle)
                ch.log.append(
                    self._log_record(
                        "REESCALATED",
                        alert,
                        now,
                        SYSTEM_ACTOR,
                        f"still active after the acknowledge timeout "
                        f"({self.escalation.ack_timeout_seconds:.0f} s)",
                    )
                )
                changed = True
            # an alert never announced yet whose metric is already back (clear period running) waits: if it
            # resolves, nobody was bothered; if the breach returns, it is announced then
            quiet = not alert.get("notified") and alert.get("clear_since") is not None
            if alert["status"] == "TRIGGERED" and not alert.get("inhibited") and not quiet:
                levels = esc.due_levels(alert, policy, now)
                for level in levels:
                    kind = esc.event_kind(alert, level)
                    lvl = policy.levels[level]
                    self._notify(ch, portfolio_id, kind, alert, now, lvl.recipients, lvl.channels, level)
                    esc.mark_notified(alert, policy, level)
                    if level > 0:
                        ch.log.append(
                            self._log_record("ESCALATED", alert, now, SYSTEM_ACTOR, f"level {level + 1}")
                        )
                if levels:
                    alert.update(notified=True, last_notified_at=now)
                    changed = True
                elif (
                    self.repeat_interval_seconds > 0
                    and alert.get("notified")
                    and alert.get("last_notified_at") is not None
                    and now - alert["last_notified_at"] >= self.repeat_interval_seconds
                ):
                    recipients: list[str] = []
                    channels: list[str] = []
                    for level in esc.notified_levels(alert, policy):
                        recipients.extend(policy.levels[level].recipients)
                        channels.extend(policy.levels[level].channels)
                    alert["repeats"] = int(alert.get("repeats", 0)) + 1
                    alert["last_notified_at"] = now
                    self._notify(
                        ch, portfolio_id, "triggered", alert, now, recipients, channels, None, repeat=True
                    )
                    ch.log.append(
                        self._log_record(
                            "REPEATED", alert, now, SYSTEM_ACTOR, f"still active, reminder {alert['repeats']}"
                        )
                    )
                    changed = True
            if changed:
                ch.alerts_set[rule_id] = alert

    def _notify(
        self,
        ch: _Changes,
        portfolio_id: str,
        kind: str,
        alert: Mapping[str, Any],
        now: float,
        recipients: Sequence[str],
        channels: Sequence[str],
        level: int | None,
        repeat: bool = False,
    ) -> None:
        targets = self.notifier.targets(recipients, channels)
        if not targets:
            return
        reminder = alert.get("reminder") or {}
        event = {
            "event_id": uuid.uuid4().hex[:16],
            "kind": kind,
            "portfolio_id": portfolio_id,
            "ts": now,
            "level": level,
            "repeat": repeat,
            "channels": sorted(set(channels)),
            "acknowledged_by": reminder.get("acknowledged_by"),
            "acknowledged_at": reminder.get("acknowledged_at"),
            "alert": _public(alert),
        }
        ch.notify.append((event, targets))

    def _log_record(
        self, event: str, alert: Mapping[str, Any], now: float, actor: str, note: str
    ) -> dict[str, Any]:
        return {
            "ts": now,
            "event": event,
            "alert_id": alert["alert_id"],
            "rule_id": alert["rule_id"],
            "severity": alert["severity"],
            "actor": actor,
            "note": note,
            "alert": _public(alert),
        }

    # -- automated actions -----------------------------------------------------------------------------------
    def _run_pending_actions(self, portfolio_id: str, now: float) -> None:
        """Run the actions waiting in ``pf:{id}:actions``, then record each outcome (audit + its own alert)
        and drop it from the queue in one transaction. A crash before that commit re-runs the action: state
        changes only tighten and trade legs carry client order ids, so a re-run changes nothing twice."""
        pending = self.store.read_json_hash(Store.actions_key(portfolio_id))
        if not pending:
            return
        by_alert: dict[str, list[dict[str, Any]]] = {}

        def order(p: Mapping[str, Any]) -> tuple[Any, ...]:  # the most severe rule's actions first
            return (p.get("created_at", 0.0), -SEVERITY_RANK.get(p.get("severity", "LOW"), 0), p["rule_id"],
                    p.get("order", 0))  # fmt: skip

        for item in sorted(pending.values(), key=order):
            by_alert.setdefault(item["alert_id"], []).append(item)
        for items in by_alert.values():
            outcomes = [(item, self.responses.run(portfolio_id, item)) for item in items]
            self._transact(
                portfolio_id, functools.partial(self._plan_action_alert, portfolio_id, outcomes, now)
            )

    def _plan_action_alert(
        self,
        portfolio_id: str,
        outcomes: list[tuple[dict[str, Any], Any]],
        now: float,
        alerts: dict[str, Any],
        trackers: Any,
        rules: Any,
    ) -> _Changes:
        ch = _Changes()
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
        severity = first["severity"] if ok else "CRITICAL"
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
            "status": "TRIGGERED",
            "value": first.get("value"),
            "trigger_value": first.get("value"),
            "stale": False,
            "breach_since": now,
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
        ch.log.append(self._log_record("TRIGGERED", alert, now, first["actor"], summary))
        self._plan_timers(ch, portfolio_id, {key: alert}, now)
        return ch


def _public(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The alert as the dashboard and templates see it (without the escalation bookkeeping's internals)."""
    out = {k: v for k, v in alert.items() if k not in ("escalation", "reminder")}
    escalation = alert.get("escalation") or {}
    out["escalation_level"] = int(escalation.get("max_level", -1)) + 1
    out["next_escalation_at"] = escalation.get("next_at")
    return out


def _snapshot_ts(snapshot: Snapshot) -> float:
    ts = snapshot.get("ts")
    return float(ts) if isinstance(ts, int | float) and _finite(ts) else -math.inf


def _as_set(value: str | Iterable[str] | None) -> set[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {value}
    return set(value)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# -- building it from the settings ---------------------------------------------------------------------------


def build_alert_engine(
    store: Store,
    settings: Settings,
    clock: Clock = time.time,
    risk_manager_factory: ControlFactory | None = None,
    *,
    env: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    channels: Mapping[str, Any] | None = None,
    twilio_http_client: Any = None,
    webhook_opener: Any = None,
) -> AlertEngine:
    """An :class:`AlertEngine` configured from ``settings`` (``[[alert_rules]]``, ``[notifications]``,
    ``[escalation]``) and the channel secrets of ``env`` (default ``os.environ``).

    ``risk_manager_factory(portfolio_id)`` returns the object automated responses act through; by default a
    :class:`logic.risk_manager.RiskManager` on the same Redis, settings and clock. ``sleep`` is the retry
    backoff's wait (tests pass a recorder), ``channels`` replaces the channels built from the configuration,
    ``twilio_http_client`` / ``webhook_opener`` are handed to the SMS / webhook channels.

    Raises
    ------
    ConfigError
        An invalid rule, notification or escalation setting.
    """
    config = notification_config(settings.extra, env)
    escalation = escalation_config(settings.extra, set(config.recipients))
    if channels is None:
        channels = build_channels(
            config, twilio_http_client=twilio_http_client, webhook_opener=webhook_opener
        )
    notifier = Notifier(store, config, channels=channels, clock=clock, sleep=sleep)
    if risk_manager_factory is None:
        risk_manager_factory = _default_risk_manager_factory(store, settings, clock)
    return AlertEngine(
        store,
        settings,
        notifier=notifier,
        escalation=escalation,
        responses=ResponseRunner(risk_manager_factory),
        clock=clock,
    )


def _default_risk_manager_factory(store: Store, settings: Settings, clock: Clock) -> ControlFactory | None:
    try:
        from logic.risk_manager import RiskManager
    except ImportError:  # pragma: no cover - the risk manager ships with the project
        return None

    def factory(portfolio_id: str) -> Any:
        return RiskManager(store.client, portfolio_id=portfolio_id, settings=settings, clock=clock)

    return factory
