"""Alert rules: the metrics a rule may watch, validation, comparison and the rule book.

A rule (:class:`engine.settings.AlertRule`) compares one metric of the monitor's per-portfolio snapshot with a
threshold: ``metric`` is a dotted path from :data:`SNAPSHOT_METRICS` (e.g. ``var.utilization``,
``concentration.largest_share``), ``op`` one of ``< <= > >= ==``, ``severity`` one of
:class:`engine.records.Severity`. ``pending_seconds``: the breach must hold that long before the alert fires;
``clear_seconds``: the metric must be back that long before it resolves (together: no flapping).
``stale_after_seconds`` / ``stale_policy``: when the snapshot's market data is older than that, ``keep`` holds
the rule's state as it is and ``fire`` counts the staleness as a breach (a STALE alert). A metric that is
``null`` in the snapshot (margin level of a cash account) does not apply: it never breaches. ``portfolios`` is
``["*"]`` or a list of ids; ``actions`` are automated actions (:mod:`logic.actions`).

The rules of ``riskdesk.toml`` are the defaults. :class:`RuleBook` edits them at run time: edits live in Redis
(``rd:rules``), are validated (unknown metric path, bad operator, NaN threshold... refused with a clear
message) and audited in ``rd:audit`` with who, before and after, in the same transaction. Every engine sees
an edit at its next evaluation (a version counter).

Each stored edit carries the rule's own ``version`` (+1 per edit; 0: no stored edit, the settings' rule) and a
``rev`` (a new random token per write, so a rule removed and added again is not taken for the one removed). An
edit may name the version and rev it was made against (``expected_version`` / ``expected_rev``: the rule a page
rendered); when the rule moved since, it is refused (:class:`RulesConflictError`, ``RULES_CHANGED``) under the
same WATCH as the write, and nothing is written, so a stale form never reverts a colleague's edit, never removes
a rule it did not show, never adds back a rule removed meanwhile.

Errors::

    AlertError                  (engine.errors.RiskdeskError)
    +-- RuleValidationError     a rule field is invalid
    +-- RuleNotFoundError       no such rule
    +-- RuleExistsError         adding a rule whose id is taken
    +-- RulesConflictError      the rule changed since the version an edit was made against
    +-- AlertNotFoundError      no active alert for that rule and portfolio
    +-- AlertConflictError      a WATCH transaction kept failing
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis

from engine.errors import ConfigError, RiskdeskError
from engine.records import MAX_ACTOR_LENGTH, SEVERITY_RANK, Channel, Clock, Severity, VarMethod
from engine.settings import DEFAULT_CLEAR_SECONDS, LIMIT_PREFIX, AlertRule, Limits, valid_symbol
from engine.store import GLOBAL_AUDIT_KEY, RULES_KEY, Store
from engine.store.slots import slot_transaction
from logic.actions import MARGIN_METRIC, parse_action

Snapshot = Mapping[str, Any]
"""A monitor snapshot in its dict form (:meth:`engine.records.Snapshot.to_dict`): rules read dotted paths."""

OPERATORS = ("<", "<=", ">", ">=", "==")
STALE_POLICIES = ("keep", "fire")
SEVERITIES: tuple[Severity, ...] = tuple(Severity)
"""Every severity, lowest first (the members of :class:`engine.records.Severity`)."""
ACTION_RULE_PREFIX = "action:"
"""Rule id prefix of the alerts that report an automated action (``action:<rule id>``)."""
MAX_TRANSACTION_ATTEMPTS = 20
"""WATCH retries of one alert transaction; only a storm of concurrent acknowledgements could exhaust them."""
RULE_HISTORY_SCAN = 2000
"""Newest global audit records read to date each rule's last edit (the rule list's order)."""
_ACTION_WORDS = {
    "rule_added": "added again",
    "rule_updated": "changed",
    "rule_removed": "removed",
    "rule_reset": "reset to the settings",
}
"""How a conflict message names the edit that moved the rule (the audit record's ``action``)."""

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
    "var.horizon_days": "number",
    "var.stressed_limit_var": "money",
    "var.stressed_limit": "money",
    "var.stressed_utilization": "fraction",
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
    "backtest.exceedances": "count",
    "backtest.zone": "number",
    "backtest.bar_exceedances": "count",
    "backtest.bar_zone": "number",
    **{
        f"backtest.methods.{m}.{f}": u
        for m in VarMethod
        for f, u in (
            ("exceedances", "count"),
            ("zone", "number"),
            ("bar_exceedances", "count"),
            ("bar_zone", "number"),
        )
    },  # fmt: skip
}
"""Every metric path a rule may use, with its unit (how notifications format it). These are the numeric
fields of the monitor's snapshot (see the snapshot schema in README / the contracts); ``data.missing_prices``
is a list and a rule compares its length. ``margin.level`` is in percent points (150 = 150%).

``var.utilization`` and ``var.stressed_limit_var`` / ``var.stressed_utilization`` are on the basis the gate
enforces ``var_limit`` and ``stressed_var_limit`` on (the limit's confidence and ``var.horizon_days``); the
one-day ``var.var95`` ... ``var.stressed_var99`` are reported figures, not comparable with either limit.

``backtest.exceedances`` / ``backtest.zone``: the continuous VaR backtest of the portfolio's own method at the
limit's horizon (:mod:`logic.backtest_monitor`): exceedances among the last 250 closed horizons and their Basel
zone as a number, 0 green, 1 yellow, 2 red (``backtest.zone >= 1`` pages when the model goes yellow, ``>= 2``
when it goes red); ``backtest.bar_*`` the same for one-bar VaR, ``backtest.methods.<method>.*`` for each
configured method."""

LIMIT_THRESHOLDS: Mapping[str, str] = {
    "var_limit": "money",
    "stressed_var_limit": "money",
    "max_daily_loss": "money",
    "max_order_notional": "money",
    "max_concentration": "fraction",
    "max_gross_leverage": "ratio",
    "min_margin_level_after": "percent",
}
"""The :class:`engine.settings.Limits` fields a rule threshold may follow (``"limits.<field>"``), with their
unit: a rule's metric must have the same unit (:data:`SNAPSHOT_METRICS`)."""

BACKTEST_ZONES = {"green": 0, "yellow": 1, "red": 2}
"""Basel zone -> the value of ``backtest.zone`` (the snapshot writes it; thresholds compare with it)."""

NOT_APPLICABLE_WHEN_NULL = frozenset(
    {"margin.level", *(metric for metric in SNAPSHOT_METRICS if metric.startswith("backtest."))}
)
"""Metrics whose ``null`` means "does not apply" (a cash account has no margin level; a margin account
without exposure uses no margin; a backtest with no closed horizon yet has no count, and a snapshot without a
stored backtest has a null ``backtest`` section, each of whose fields is then null): a rule on them does not
breach. Any other ``null`` (a value that could not
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


class RulesConflictError(AlertError):
    """The rule changed (edited, removed, reset, added again) since the version an edit was made against:
    nothing was written."""

    code = "RULES_CHANGED"
    fix = "reload the rule (the page) to see its current values, then make the change again"


class AlertNotFoundError(AlertError):
    code = "ALERT_NOT_FOUND"
    fix = "refresh the alert list: the alert may have been resolved already"


class AlertChangedError(AlertError):
    """The rule's active alert is not the one the person acting on it was shown (it resolved and fired again)."""

    code = "ALERT_CHANGED"
    fix = "look at the alert as it is now, then acknowledge or resolve it again"


class AlertConflictError(AlertError):
    code = "ALERT_CONFLICT"
    fix = "try again: the alert kept changing while it was being updated"


# -- rules ---------------------------------------------------------------------------------------------------

_RULE_FIELDS = tuple(f.name for f in dataclasses.fields(AlertRule))


def rule_to_dict(rule: AlertRule) -> dict[str, Any]:
    d = dataclasses.asdict(rule)
    d["portfolios"] = list(rule.portfolios)
    d["actions"] = list(rule.actions)
    d["channels"] = [str(c) for c in rule.channels]
    d["recipients"] = list(rule.recipients)
    return d


def limit_reference(rule: AlertRule) -> str | None:
    """The limit a rule's threshold follows, as shown to the desk (``limits.var_limit``,
    ``0.8 x limits.var_limit``), or None for a fixed number."""
    if not isinstance(rule.threshold, str):
        return None
    return rule.threshold if rule.threshold_fraction == 1.0 else f"{rule.threshold_fraction:g} x {rule.threshold}"


def resolve_threshold(rule: AlertRule, limits: Limits | None) -> float | None:
    """The number a rule compares its metric with, for one portfolio whose live limits are ``limits``.

    A numeric threshold is itself. ``"limits.<field>"`` is that field of ``limits`` times
    ``threshold_fraction``; None when the portfolio sets no such limit (``stressed_var_limit`` unset) or when
    ``limits`` is None: the rule then does not apply (it never breaches). Pure: the caller reads the limits
    (the :class:`engine.store.limits.LimitsStore` version of the tick), so a limit change moves the rule
    at the next evaluation, without a restart.
    """
    if not isinstance(rule.threshold, str):
        return float(rule.threshold)
    if limits is None:
        return None
    value = getattr(limits, rule.threshold.removeprefix(LIMIT_PREFIX), None)
    if value is None or isinstance(value, bool):
        return None
    return float(value) * rule.threshold_fraction


def resolve_rule(rule: AlertRule, limits: Limits | None) -> AlertRule | None:
    """``rule`` with its threshold resolved to a number (:func:`resolve_threshold`), or None when the rule does
    not apply to a portfolio with these limits. A numeric rule is returned as it is."""
    if not isinstance(rule.threshold, str):
        return rule
    value = resolve_threshold(rule, limits)
    if value is None:
        return None
    key = (id(rule), value)
    known = _RESOLVED.get(key)
    if known is not None and known[0] is rule:
        return known[1]
    if len(_RESOLVED) >= _RESOLVED_MAX:
        _RESOLVED.clear()
    resolved = dataclasses.replace(rule, threshold=value, threshold_fraction=1.0)
    _RESOLVED[key] = (rule, resolved)
    return resolved


_RESOLVED: dict[tuple[int, float], tuple[AlertRule, AlertRule]] = {}
"""Rules resolved to a number, by (rule, threshold): the batched alert evaluation resolves every limit-following
rule of every portfolio on every tick, and a validated copy costs far more than a lookup. The entry holds the rule
itself, so its id is not reused while it is cached."""
_RESOLVED_MAX = 65_536


@dataclasses.dataclass(frozen=True)
class Applying:
    """The rules that apply to one portfolio with its live limits (:func:`applying_rules`); read only."""

    by_id: Mapping[str, AlertRule]
    """Rule id -> the rule, its threshold resolved (:func:`resolve_rule`)."""
    refs: Mapping[str, str | None]
    """Rule id -> the limit its threshold follows (:func:`limit_reference`)."""
    ordered: tuple[AlertRule, ...]
    """The resolved rules, most severe first (rules of one severity in their order)."""


def applying_rules(rules: Sequence[AlertRule], limits: Limits | None, portfolio_id: str) -> Applying:
    """The rules of ``rules`` that apply to ``portfolio_id`` with ``limits``, resolved and ordered.

    Kept per portfolio while the rules (the rulebook's tuple of one rules version) and the limits are the same:
    every evaluation of every portfolio (each tick and each timers run) would otherwise resolve and sort every
    rule again, about a fifth of planning a portfolio with no alert (make bench, bench_scale)."""
    rules = rules if isinstance(rules, tuple) else tuple(rules)
    known = _APPLYING.get(portfolio_id)
    if known is not None and (known[0] is rules or known[0] == rules) and (known[1] is limits or known[1] == limits):
        return known[2]
    by_id: dict[str, AlertRule] = {}
    refs: dict[str, str | None] = {}
    for r in rules:
        resolved = resolve_rule(r, limits) if applies(r, portfolio_id) else None
        if resolved is not None:
            by_id[r.id], refs[r.id] = resolved, limit_reference(r)
    ordered = tuple(sorted(by_id.values(), key=lambda r: -SEVERITY_RANK[Severity(r.severity)]))
    applying = Applying(by_id, refs, ordered)
    if len(_APPLYING) >= _RESOLVED_MAX:
        _APPLYING.clear()
    _APPLYING[portfolio_id] = (rules, limits, applying)
    return applying


_APPLYING: dict[str, tuple[tuple[AlertRule, ...], Limits | None, Applying]] = {}


def null_does_not_apply(metric: str, snapshot: Snapshot) -> bool:
    """Whether a null ``metric`` in ``snapshot`` means "does not apply" (:data:`NOT_APPLICABLE_WHEN_NULL`) rather
    than *no data*: a null ``margin.level`` does not apply only with ``margin.used`` 0 (a cash account; a flat,
    fully priced margin book), else a missing price nulled it (logic/snapshot.py). The alert engine
    (logic/lifecycle.py) and the traffic lights (logic/analytics.py) read a null by this one rule."""
    if metric not in NOT_APPLICABLE_WHEN_NULL:
        return False
    if metric != MARGIN_METRIC:
        return True
    used = metric_value(snapshot, "margin.used")
    return isinstance(used, int | float) and not isinstance(used, bool) and math.isfinite(used) and used == 0


def metric_value(snapshot: Snapshot, path: str) -> Any:
    """The value at a dotted ``path`` of ``snapshot`` (a list's length); :data:`MISSING` when absent, None when a
    section on the path is null (each field of a null section is null: e.g. ``backtest.zone`` when the snapshot
    has no backtest yet, which :data:`NOT_APPLICABLE_WHEN_NULL` then counts as "does not apply")."""
    node: Any = snapshot
    parts = _PATHS.get(path)
    if parts is None:
        parts = _PATHS[path] = tuple(path.split("."))
    for part in parts:
        if node is None:
            return None
        if not (type(node) is dict or isinstance(node, Mapping)) or part not in node:  # a dict: no ABC check
            return MISSING
        node = node[part]
    if isinstance(node, list | tuple):
        return len(node)
    return node


_PATHS: dict[str, tuple[str, ...]] = {}
"""Metric paths split at their dots (a few dozen: the snapshot's metrics), by path."""


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
        raise RuleValidationError(f"unknown metric path {metric!r} (not a numeric field of the snapshot){hint}")
    op = data["op"]
    if op not in OPERATORS:
        raise RuleValidationError(f"bad operator {op!r}; use one of {' '.join(OPERATORS)}")
    threshold, fraction = _threshold(data["threshold"], data.get("threshold_fraction", 1.0), metric)
    severity = data["severity"]
    if severity not in SEVERITIES:
        raise RuleValidationError(f"severity {severity!r}: use one of {', '.join(SEVERITIES)}")
    description = data.get("description", "")
    if not isinstance(description, str) or len(description) > 500:
        raise RuleValidationError("description must be text of at most 500 characters")
    pending = _finite_number(data.get("pending_seconds", 0.0), "pending_seconds", minimum=0.0)
    clear = _finite_number(data.get("clear_seconds", DEFAULT_CLEAR_SECONDS), "clear_seconds", minimum=0.0)
    stale_after = _finite_number(data.get("stale_after_seconds", 60.0), "stale_after_seconds", minimum=0.0)
    if stale_after <= 0:
        raise RuleValidationError("stale_after_seconds must be > 0")
    stale_policy = data.get("stale_policy", "keep")
    if stale_policy not in STALE_POLICIES:
        raise RuleValidationError(f"stale_policy {stale_policy!r}: use 'keep' (hold the state) or 'fire' (STALE)")
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
    channels = _names(data.get("channels", ()), "channels")
    for channel in channels:
        if channel not in tuple(Channel):
            raise RuleValidationError(f"channels: {channel!r} is not a channel; use {', '.join(Channel)}")
    recipients = _names(data.get("recipients", ()), "recipients")
    for name in recipients:
        if not valid_symbol(name):
            raise RuleValidationError(f"recipients: {name!r} is not a recipient name")
    if recipients and not any(c != Channel.LOG for c in channels) and channels:
        raise RuleValidationError("recipients need a channel other than log (log has no recipient)")
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
        threshold_fraction=fraction,
        channels=tuple(Channel(c) for c in channels),
        recipients=tuple(recipients),
    )


def _names(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise RuleValidationError(f'{name} must be a list of names such as ["desk"]')
    return list(dict.fromkeys(value))


def _threshold(value: Any, fraction: Any, metric: str) -> tuple[float | str, float]:
    """``(threshold, fraction)``: a finite number (fraction 1), or ``limits.<field>`` of a limit whose unit is
    the metric's, with a finite non-zero fraction."""
    if isinstance(value, str) and value.strip().startswith(LIMIT_PREFIX):
        ref = value.strip()
        name = ref.removeprefix(LIMIT_PREFIX)
        if name not in LIMIT_THRESHOLDS:
            close = difflib.get_close_matches(name, list(LIMIT_THRESHOLDS), n=1)
            hint = f"; did you mean '{LIMIT_PREFIX}{close[0]}'?" if close else ""
            known = ", ".join(LIMIT_PREFIX + n for n in LIMIT_THRESHOLDS)
            raise RuleValidationError(f"threshold {ref!r} is not a limit a rule may follow{hint} (known: {known})")
        unit, limit_unit = SNAPSHOT_METRICS[metric], LIMIT_THRESHOLDS[name]
        if unit != limit_unit:
            raise RuleValidationError(
                f"threshold {ref!r} is a {limit_unit} limit but metric {metric!r} is a {unit}: "
                "compare a metric with a limit of the same unit"
            )
        share = _finite_number(fraction, "threshold_fraction")
        if share == 0:
            raise RuleValidationError("threshold_fraction must not be 0 (1 = the limit itself, 0.8 = 80% of it)")
        return ref, share
    number = _finite_number(value, "threshold")
    if _finite_number(fraction, "threshold_fraction") != 1.0:
        raise RuleValidationError("threshold_fraction applies only to a limits.<field> threshold")
    return number, 1.0


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
            raise ConfigError(f"alert_rules: duplicate rule ids {sorted({i for i in ids if ids.count(i) > 1})}")
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
        time) or ``runtime`` (added at run time); removed defaults are listed with ``source="removed"``.

        Each also has ``changed_at`` / ``changed_by`` / ``change``: its last audited edit (None for a rule of
        the settings never edited), and ``version`` / ``rev``: what an edit made against this row names
        (:func:`rule_token`). Sorted by last change, newest first (a new or edited rule is at the top);
        never-edited rules follow in the settings' order."""
        overrides = self.store.read_rule_overrides()
        out = []
        for rule in self._effective(overrides):
            source = "runtime" if rule.id not in self.defaults else ("edited" if rule.id in overrides else "settings")
            version, rev = rule_token(overrides.get(rule.id))
            out.append({**rule_to_dict(rule), "source": source, "version": version, "rev": rev})
        for rule_id, override in overrides.items():
            if override.get("deleted") and rule_id in self.defaults:
                version, rev = rule_token(override)
                out.append(
                    {**rule_to_dict(self.defaults[rule_id]), "source": "removed", "version": version, "rev": rev}
                )
        last: dict[str, Mapping[str, Any]] = {}
        for record in self.audit_log(count=RULE_HISTORY_SCAN):  # newest first
            last.setdefault(str(record["rule_id"]), record)
        for row in out:
            edit = last.get(row["id"], {})
            row.update(changed_at=edit.get("ts"), changed_by=edit.get("actor"), change=edit.get("action"))
        order = {id(row): n for n, row in enumerate(out)}
        out.sort(key=lambda r: (r["changed_at"] is None, -(r["changed_at"] or 0.0), order[id(r)]))
        return out

    def get(self, rule_id: str) -> AlertRule:
        for rule in self.rules():
            if rule.id == rule_id:
                return rule
        raise RuleNotFoundError(f"no rule {rule_id!r}")

    def add(self, data: Mapping[str, Any], actor: str, reason: str = "") -> AlertRule:
        rule = validate_rule(data)
        return self._change(rule.id, actor, "rule_added", reason, lambda current: self._add(rule, current))

    def update(
        self,
        rule_id: str,
        changes: Mapping[str, Any],
        actor: str,
        reason: str = "",
        *,
        expected_version: int | None = None,
        expected_rev: str | None = None,
    ) -> AlertRule:
        """Change the fields ``changes`` names (the others stay as stored). With ``expected_version`` (and its
        ``expected_rev``): refused with :class:`RulesConflictError`, nothing written, unless the rule is still
        that version (:func:`rule_token`)."""
        if "id" in changes and changes["id"] != rule_id:
            raise RuleValidationError("a rule's id cannot change: add a new rule and remove this one")

        def apply(current: AlertRule | None) -> tuple[AlertRule, dict[str, Any]]:
            if current is None:
                raise RuleNotFoundError(f"no rule {rule_id!r}")
            rule = validate_rule({**rule_to_dict(current), **dict(changes)})
            return rule, {"rule": rule_to_dict(rule)}

        return self._change(rule_id, actor, "rule_updated", reason, apply, (expected_version, expected_rev))

    def remove(
        self,
        rule_id: str,
        actor: str,
        reason: str = "",
        *,
        expected_version: int | None = None,
        expected_rev: str | None = None,
    ) -> AlertRule:
        """Remove a rule (a settings default is masked until :meth:`reset`). Its active alerts resolve at the
        next evaluation with reason "rule removed". ``expected_version`` / ``expected_rev``: as :meth:`update`."""

        def apply(current: AlertRule | None) -> tuple[AlertRule, dict[str, Any] | None]:
            if current is None:
                raise RuleNotFoundError(f"no rule {rule_id!r}")
            return current, ({"deleted": True} if rule_id in self.defaults else None)

        return self._change(rule_id, actor, "rule_removed", reason, apply, (expected_version, expected_rev))

    def reset(
        self,
        rule_id: str,
        actor: str,
        reason: str = "",
        *,
        expected_version: int | None = None,
        expected_rev: str | None = None,
    ) -> AlertRule:
        """Drop the run-time edit of a settings default: the rule of riskdesk.toml applies again (version 0).
        ``expected_version`` / ``expected_rev``: as :meth:`update`."""
        if rule_id not in self.defaults:
            raise RuleNotFoundError(f"{rule_id!r} is not a rule of the settings file; nothing to reset to")
        return self._change(
            rule_id,
            actor,
            "rule_reset",
            reason,
            lambda current: (self.defaults[rule_id], None),
            (expected_version, expected_rev),
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
        expected: tuple[int | None, str | None] = (None, None),
    ) -> AlertRule:
        """Read the rule, check it is the ``expected`` (version, rev) when one is given, ``apply`` the edit and
        write it with the next version, the rules version and the audit record in one MULTI (bounded retry)."""
        actor = require_actor(actor)
        client = self.store.client
        for _ in range(MAX_TRANSACTION_ATTEMPTS):
            with slot_transaction(client) as pipe:  # a Redis Cluster: the audit record commits after the rule
                try:
                    pipe.watch(RULES_KEY, Store.RULES_VERSION_KEY)
                    overrides = self.store.read_rule_overrides(pipe)
                    stored = overrides.get(rule_id)
                    self._check_expected(rule_id, stored, *expected)
                    current = {r.id: r for r in self._effective(overrides)}.get(rule_id)
                    rule, payload = apply(current)
                    if payload is not None:  # None drops the stored edit: version 0 (or no rule) again
                        version = rule_token(stored)[0] + 1
                        payload = {**payload, "version": version, "rev": uuid.uuid4().hex, "actor": actor}
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

    def _check_expected(
        self, rule_id: str, stored: Mapping[str, Any] | None, expected_version: int | None, expected_rev: str | None
    ) -> None:
        """Raise :class:`RulesConflictError` unless ``stored`` (the rule's stored edit, None: none) is the
        version (and rev) an edit was made against; no check when ``expected_version`` is None."""
        if expected_version is None:
            return
        version, rev = rule_token(stored)
        if version == expected_version and (expected_rev is None or rev == expected_rev):
            return
        actor = stored.get("actor") if stored is not None else None
        last = next((r for r in self.audit_log(count=RULE_HISTORY_SCAN) if r["rule_id"] == rule_id), None)
        what = _ACTION_WORDS.get(str(last.get("action")), "changed") if last is not None else "changed"
        who = actor or (last.get("actor") if last is not None else None) or "another user"
        if stored is None and rule_id not in self.defaults:
            now = "it no longer exists"
        elif stored is None:
            now = "now the settings' rule, version 0"
        elif stored.get("deleted"):
            now = f"removed, version {version}"
        else:
            now = f"now version {version}"
        raise RulesConflictError(
            f"rule {rule_id!r} was {what} by {who} since you opened it at version {expected_version} ({now}); "
            "reload and make your change again"
        )

    def audit_log(self, count: int = 100) -> list[dict[str, Any]]:
        """The newest rule edits (and other global audit records) from ``rd:audit``."""
        return [r for r in self.store.read_stream_json(GLOBAL_AUDIT_KEY, count=count) if "rule_id" in r]


def rule_token(stored: Mapping[str, Any] | None) -> tuple[int, str]:
    """``(version, rev)`` of a rule's stored edit (``rd:rules`` field): (0, "") for none (the settings' rule);
    an edit stored before versions existed is version 1 without a rev until its next write."""
    if stored is None:
        return 0, ""
    version = stored.get("version", 1)
    rev = stored.get("rev", "")
    return (version if isinstance(version, int) and not isinstance(version, bool) else 1), str(rev or "")


def require_actor(actor: Any) -> str:
    """The acting user's name, stripped; refused when empty or longer than :data:`MAX_ACTOR_LENGTH`."""
    if not isinstance(actor, str) or not actor.strip() or len(actor) > MAX_ACTOR_LENGTH:
        raise AlertError(
            f"say who does this: actor must be a non-empty name of at most {MAX_ACTOR_LENGTH} characters",
            fix="pass the user's name as actor",
        )
    return actor.strip()


def applies(rule: AlertRule, portfolio_id: str) -> bool:
    return "*" in rule.portfolios or portfolio_id in rule.portfolios
