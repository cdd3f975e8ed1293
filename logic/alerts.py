"""The alert engine: evaluates the rules on each snapshot and keeps the alert lifecycle in Redis.

Rules and their validation live in :mod:`logic.rules`, the planning of each transition in
:mod:`logic.lifecycle`; this module runs them against the store.

Atomicity and restarts
----------------------
Each evaluation WATCHes the portfolio's alert and timer hashes, plans, and writes in one MULTI: the alert
records, the timers, the history, **the notifications to send** (outbox entries naming recipients and
channels, :class:`engine.alert_records.OutboxEntry`) and the automated actions to run. Nothing lives only in memory,
so a new :class:`AlertEngine` on the same Redis continues exactly where the old one stopped: no alert lost, no
notification queued twice, escalation on its original schedule. Delivering the outbox is the notifications
package's work (``python -m notifications``); this package never imports it.

Driving the engine
------------------
``evaluate(portfolio_id, snapshot, now)``: call once per snapshot (the monitor does).
``tick(now)``: call regularly (every second or so), snapshots or not. It re-evaluates each portfolio's last
snapshot at ``now`` (pending and clear periods, stale data), runs escalation timers, repeat reminders and
acknowledge timeouts, and runs leftover automated actions.
:meth:`AlertEngine.start_background` runs ``tick`` on a thread of its own (the monitor then only calls
``evaluate``); :meth:`AlertEngine.close` stops it.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import redis

from engine.errors import ConfigError, RiskdeskError
from engine.market_model import MarketModelCache
from engine.records import ACTIVE_ALERT_STATUSES, AlertStatus, Clock, Severity
from engine.records import SEVERITY_RANK as _SEVERITY_RANK
from engine.settings import AlertRule, Limits, Settings
from engine.store import PortfolioKeys, Store, decode_snapshot
from engine.store.codec import encode_json_fast
from logic.action_orders import AUTO_ACTOR_PREFIX
from logic.actions import ControlFactory, ResponseRunner, parse_action
from logic.escalation import EscalationConfig, escalation_config
from logic.lifecycle import (
    MANUAL_RESOLVE_REARM_SECONDS,
    SYSTEM_ACTOR,
    TRADE_ACTION_KINDS,
    AlertPlanner,
    Changes,
    public_alert,
    snapshot_ts,
)
from logic.rules import (
    ACTION_RULE_PREFIX,
    MAX_TRANSACTION_ATTEMPTS,
    MISSING,
    NOT_APPLICABLE_WHEN_NULL,
    OPERATORS,
    SEVERITIES,
    SNAPSHOT_METRICS,
    STALE_POLICIES,
    AlertConflictError,
    AlertError,
    AlertNotFoundError,
    RuleBook,
    RuleExistsError,
    RuleNotFoundError,
    RulesConflictError,
    RuleValidationError,
    Snapshot,
    applies,
    compare,
    metric_value,
    require_actor,
    rule_to_dict,
    validate_rule,
)

if TYPE_CHECKING:  # logic/alert_batch.py imports this module
    from logic.alert_batch import Quiet

__all__ = [  # the names other modules import from here (their homes: logic.rules, logic.lifecycle, records)
    "ACTION_RULE_PREFIX",
    "ACTIVE_STATUSES",
    "AUTO_ACTOR_PREFIX",
    "MANUAL_RESOLVE_REARM_SECONDS",
    "MISSING",
    "NOT_APPLICABLE_WHEN_NULL",
    "OPERATORS",
    "SEVERITIES",
    "SEVERITY_RANK",
    "SNAPSHOT_METRICS",
    "STALE_POLICIES",
    "SYSTEM_ACTOR",
    "AlertConflictError",
    "AlertEngine",
    "AlertError",
    "AlertNotFoundError",
    "RuleBook",
    "RuleExistsError",
    "RuleNotFoundError",
    "RuleValidationError",
    "RulesConflictError",
    "applies",
    "build_alert_engine",
    "compare",
    "metric_value",
    "rule_to_dict",
    "validate_rule",
]

LOGGER = logging.getLogger("riskdesk.alerts")

ACTIVE_STATUSES = ACTIVE_ALERT_STATUSES
"""Kept for the modules that import it from here; the definition is :data:`engine.records.ACTIVE_ALERT_STATUSES`."""
SEVERITY_RANK = cast(Mapping[str, int], _SEVERITY_RANK)
""":data:`engine.records.SEVERITY_RANK`, re-exported for callers that look plain strings up in it (a
``Severity`` is its string, so the lookups are the same)."""
HISTORY_SCAN = 5000
"""At most this many history records are scanned per portfolio for resolved alerts by ``list_alerts``
(``5 * limit`` of them, at least 200: an alert leaves 2 to 6 records)."""
TickHook = Callable[[float, Sequence[str]], list[dict[str, Any]]]
"""Work a process adds to each tick (e.g. flushing the outbox); returns delivery records."""
DEFAULT_REPEAT_INTERVAL_SECONDS = 3600.0
"""``[notifications] repeat_interval_seconds`` when the settings leave it out."""
_PORTFOLIO_ERRORS = (RiskdeskError, redis.RedisError, ValueError, TypeError, KeyError)
"""What one portfolio's work in :meth:`AlertEngine.tick` may raise (its store, Redis, a record that does not
decode, a planning that fails: what :func:`logic.alert_batch.evaluate_batch` leaves to the one-by-one path). It
is logged and the tick goes on with the other portfolios, their pending actions and the ``after_tick`` hook, as
``Monitor._evaluate_alerts`` isolates each portfolio's evaluation."""


class AlertEngine:
    """Evaluates rules on snapshots, keeps the alert lifecycle in Redis, queues notifications and runs actions.

    Parameters
    ----------
    store, settings:
        The Redis store and the frozen settings (rules defaults come from ``settings.alert_rules``).
    escalation:
        Escalation policies (:func:`logic.escalation.escalation_config`).
    responses:
        Runs automated actions (:class:`logic.actions.ResponseRunner`).
    clock:
        Epoch seconds; used when a method is called without ``now``.
    repeat_interval_seconds:
        Remind about an active, unacknowledged alert this often (0 = never).
    after_tick:
        Called at the end of each :meth:`tick`, outside the engine's lock, with ``(now, portfolio_ids)``; what
        it returns is the tick's ``deliveries``. A process that also delivers passes its notifier's ``flush``.

    :attr:`scope` (None: every portfolio) narrows the portfolios :meth:`tick` covers: monitors sharing the
    portfolios set it to their shard, so each portfolio's timers are ticked by the monitor that evaluates its
    snapshots, once, not by every monitor.

    Use :func:`build_alert_engine` to build one from the settings.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        escalation: EscalationConfig,
        responses: ResponseRunner,
        clock: Clock = time.time,
        repeat_interval_seconds: float = DEFAULT_REPEAT_INTERVAL_SECONDS,
        after_tick: TickHook | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.escalation = escalation
        self.responses = responses
        self.clock = clock
        self.rulebook = RuleBook(store, settings.alert_rules, clock)
        self.planner = AlertPlanner(escalation, repeat_interval_seconds)
        self.after_tick = after_tick
        self.scope: Callable[[list[str]], list[str]] | None = None
        """The portfolios among all whose timers :meth:`tick` runs (None: all); see the class docstring."""
        self._last: dict[str, Snapshot] = {}
        self.quiet: dict[str, Quiet] = {}
        """Per portfolio, its last planning that found nothing and changed nothing (logic/alert_batch.py)."""
        self.planned: dict[str, tuple[float, Snapshot]] = {}
        """Per portfolio, when the batch last planned it and the snapshot it planned (logic/alert_batch.py)."""
        self.timers_every = 0.0
        """:meth:`start_background`'s period: its run skips what was planned less than this ago (0: none)."""
        self._stored: dict[str, tuple[bytes, Snapshot]] = {}
        """The stored snapshot last decoded per portfolio, with its bytes (:meth:`_latest_snapshots`)."""
        self._limits_memo: dict[Any, Any] = {}
        self._lock = threading.RLock()
        self._background: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def repeat_interval_seconds(self) -> float:
        return self.planner.repeat_interval_seconds

    # -- the monitor's calls ---------------------------------------------------------------------------------
    def evaluate(self, portfolio_id: str, snapshot: Snapshot, now: float | None = None) -> list[dict[str, Any]]:
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
                functools.partial(
                    self.planner.plan_evaluation, portfolio_id, snapshot, now, limits=self.limits_of(portfolio_id)
                ),
            )
            if changes.actions:
                self._run_pending_actions(portfolio_id, now)
        return changes.transitions

    def evaluate_many(
        self, snapshots: Mapping[str, Snapshot], now: float | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """:meth:`evaluate` for every snapshot of a tick (portfolio id -> snapshot) in one batch
        (:mod:`logic.alert_batch`: one WATCH, one pipelined read, the same planning, one MULTI); portfolios the
        batch could not write go through :meth:`evaluate` one by one (errors propagate). Returns id -> transitions."""
        from logic.alert_batch import evaluate_batch  # lazily: alert_batch imports this module for its types

        now = self.clock() if now is None else float(now)
        with self._lock:
            for portfolio_id, snapshot in snapshots.items():
                if not isinstance(snapshot, Mapping):
                    raise TypeError(f"snapshot must be a mapping, got {type(snapshot).__name__}")
                self._last[portfolio_id] = snapshot
            result = evaluate_batch(self, snapshots, now)
            for portfolio_id in result.with_actions:
                self._run_pending_actions(portfolio_id, now)
        out = dict(result.transitions)
        for portfolio_id in result.one_by_one:
            out[portfolio_id] = self.evaluate(portfolio_id, snapshots[portfolio_id], now)
        return out

    def tick(self, now: float | None = None) -> dict[str, Any]:
        """Time-based work; call about once a second whether or not snapshots arrive (or let
        :meth:`start_background` do it).

        For every portfolio: re-evaluate its newest snapshot at ``now`` (pending and clear periods complete,
        data goes stale), fire due escalation levels, repeat reminders and acknowledge timeouts (their
        notifications go to the outbox), and run automated actions left over (e.g. by a crash). A portfolio
        whose work fails (e.g. its stored alerts do not decode) is logged and skipped: the others, and the
        ``after_tick`` hook, still run.
        Returns ``{"transitions": [...], "deliveries": [...]}``; ``deliveries`` is what the ``after_tick`` hook
        returned (none by default: delivery is the notifications package's, see :mod:`notifications.service`).
        """
        from logic.alert_batch import evaluate_batch, recently_planned  # lazily: it imports this module

        now = self.clock() if now is None else float(now)
        transitions: list[dict[str, Any]] = []
        pids = self.portfolio_ids() if self.scope is None else self.scope(self.portfolio_ids())
        with self._lock:
            latest = self._latest_snapshots(pids)
            known = {pid: snap for pid, snap in latest.items() if snap is not None}
            recent = recently_planned(self, known, now)  # just planned, by a tick's evaluation: not again yet
            batch = evaluate_batch(self, {p: s for p, s in known.items() if p not in recent}, now)
            for pid in pids:
                if pid in recent or (pid in known and pid not in batch.one_by_one):
                    transitions.extend(batch.transitions.get(pid, []))
                    continue
                try:
                    transitions.extend(self._tick_one(pid, known.get(pid), now))
                except _PORTFOLIO_ERRORS:  # e.g. its stored alerts do not decode: the others still tick
                    LOGGER.exception("alert tick failed for portfolio %s", pid)
            for pid in self._with_pending_actions(pids):
                try:
                    self._run_pending_actions(pid, now)
                except _PORTFOLIO_ERRORS:
                    LOGGER.exception("automated actions of portfolio %s failed", pid)
        # outside the lock: a process that also delivers must not hold up evaluate() on another thread
        deliveries = self.after_tick(now, pids) if self.after_tick is not None else []
        return {"transitions": transitions, "deliveries": deliveries}

    def _tick_one(self, portfolio_id: str, snapshot: Snapshot | None, now: float) -> list[dict[str, Any]]:
        """:meth:`tick`'s work for one portfolio the batch left alone, in its own transaction: its newest
        ``snapshot`` evaluated at ``now``, or only its timers without one; returns the transitions."""
        if snapshot is not None:
            limits = self.limits_of(portfolio_id)
            plan = functools.partial(self.planner.plan_evaluation, portfolio_id, snapshot, now, limits=limits)
        else:
            plan = functools.partial(self.planner.plan_timers_only, portfolio_id, now)
        return self._transact(portfolio_id, plan).transitions

    def _latest_snapshots(self, portfolio_ids: Sequence[str]) -> dict[str, Snapshot | None]:
        """:meth:`_latest_snapshot` of every portfolio: the stored snapshots' times first (one script, no
        snapshot sent), then one pipelined read of only those newer than the one held here, or not held (a
        stored snapshot is decoded again only when its bytes changed).

        The monitor evaluates every snapshot it writes, so in the usual case the stored one is the one held
        here: a thousand portfolios then cost one small reply, not 6 MB of JSON read and decoded on the
        monitor's own interpreter at every run, twice a second (about 0.17 s each, make bench)."""
        try:
            times = self.store.snapshot_times(portfolio_ids)
        except (RiskdeskError, redis.RedisError):
            times = [math.nan] * len(portfolio_ids)  # read them whole (each read fails alone, as before)
        out: dict[str, Snapshot | None] = {}
        stale: list[str] = []
        for pid, stored_ts in zip(portfolio_ids, times, strict=True):
            mine = self._last.get(pid)
            out[pid] = mine
            if stored_ts is None:
                continue  # nothing stored
            if mine is None or not stored_ts <= snapshot_ts(mine):  # newer, or its time not readable (NaN)
                stale.append(pid)
        if not stale:
            return out
        pipe = self.store.client.pipeline(transaction=False)
        for pid in stale:
            pipe.get(PortfolioKeys(pid).snapshot)
        try:
            raws: list[Any] = pipe.execute(raise_on_error=False)
        except redis.RedisError:
            raws = [None] * len(stale)
        for pid, raw in zip(stale, raws, strict=True):
            mine = out[pid]
            stored: Snapshot | None = None
            if isinstance(raw, bytes):
                cached = self._stored.get(pid)
                if cached is not None and cached[0] == raw:
                    stored = cached[1]
                else:
                    try:
                        stored = decode_snapshot(raw, PortfolioKeys(pid).snapshot)
                    except RiskdeskError:
                        stored = None
                    else:
                        self._stored[pid] = (raw, stored)
            if stored is not None and (mine is None or snapshot_ts(stored) > snapshot_ts(mine)):
                self._last[pid] = stored
                out[pid] = stored
        return out

    def _with_pending_actions(self, portfolio_ids: Sequence[str]) -> list[str]:
        """The portfolios whose actions queue is not empty."""
        return self.store.with_pending_actions(portfolio_ids)

    def limits_of(self, portfolio_id: str) -> Limits:
        """The portfolio's live limits (the store's version, the settings' when none is stored): what a rule's
        ``limits.<field>`` threshold resolves against at this evaluation. Decoded once per limits version."""
        return self.store.limits_or(portfolio_id, self.settings.limits_for(portfolio_id), self._limits_memo)

    def _latest_snapshot(self, portfolio_id: str) -> Snapshot | None:
        """The newest snapshot known for the portfolio: the last one evaluated here, or the one the monitors
        stored if it is newer (another monitor may have evaluated later ticks; after a restart this engine has
        seen none). Re-evaluating an older one every second would make two monitors flap."""
        mine = self._last.get(portfolio_id)
        try:
            stored = self.store.read_snapshot(portfolio_id)
        except (RiskdeskError, redis.RedisError):
            stored = None
        if stored is not None and (mine is None or snapshot_ts(stored) > snapshot_ts(mine)):
            self._last[portfolio_id] = stored
            return stored
        return mine

    def start_background(self, interval_seconds: float = 1.0) -> None:
        """Run :meth:`tick` every ``interval_seconds`` (engine clock) on a daemon thread until :meth:`close`.

        With it the monitor only calls :meth:`evaluate`; timers and reminders never delay the monitor's
        loop. Errors are logged, the thread carries on; a run skips what a tick just planned (alert_batch.py).
        """
        if self._background is not None:
            return
        self._stop.clear()
        self.timers_every = interval_seconds

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
        self.timers_every = 0.0  # a direct tick() skips nothing again
        if thread is not None:
            self._stop.set()
            thread.join(timeout=300)

    # -- the dashboard's calls -------------------------------------------------------------------------------
    def acknowledge(
        self, portfolio_id: str, rule_id: str, actor: str, note: str = "", alert_id: str | None = None
    ) -> dict[str, Any]:
        """TRIGGERED -> ACKNOWLEDGED by ``actor``: escalation stops (until the acknowledge timeout, if any).

        Acknowledging an already acknowledged alert records the new acknowledgement (who and when). Raises
        :class:`AlertNotFoundError` when the rule has no active alert there, and :class:`AlertChangedError` when
        it is not ``alert_id``, the one the person was shown (it fired again since): nothing is written."""
        return self._by_hand(self.planner.plan_acknowledge, portfolio_id, rule_id, actor, note, alert_id)

    def resolve(
        self, portfolio_id: str, rule_id: str, actor: str, note: str = "", alert_id: str | None = None
    ) -> dict[str, Any]:
        """Resolve by hand (ACTIVE -> RESOLVED by ``actor``); escalation is cancelled and everyone notified so
        far gets one resolved message. A condition that still holds triggers again after its pending period,
        and no sooner than :data:`MANUAL_RESOLVE_REARM_SECONDS`.
        Raises :class:`AlertNotFoundError` (none active) and :class:`AlertChangedError` as :meth:`acknowledge`."""
        return self._by_hand(self.planner.plan_resolve, portfolio_id, rule_id, actor, note, alert_id)

    def _by_hand(
        self, planner: Any, portfolio_id: str, rule_id: str, actor: str, note: str, alert_id: str | None
    ) -> dict[str, Any]:
        """One transition made by a person (acknowledge, resolve), planned and written in one transaction."""
        actor = require_actor(actor)
        now = self.clock()
        result: dict[str, Any] = {}

        def plan(alerts: dict[str, Any], trackers: dict[str, Any], rules: Any) -> Changes:
            changes, alert = planner(portfolio_id, rule_id, actor, note, now, alerts, alert_id)
            result.clear()
            result.update(alert)
            return changes

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

        ``status``/``severity`` accept one value or several. ``since`` and ``limit`` thin out the resolved
        alerts only: ``since`` keeps those resolved (or triggered) at or after that time, and the resolved ones are
        cut first to keep at most ``limit`` alerts. An active alert is listed however long ago it fired and however
        many others there are (Friday's unacknowledged CRITICAL is still open on Monday morning; there is at most
        one per rule and portfolio). Resolved alerts come from the newest history records (see
        :data:`HISTORY_SCAN`).
        """
        statuses = _as_set(status)
        severities = _as_set(severity)
        out: list[dict[str, Any]] = []
        for pid in [portfolio_id] if portfolio_id else self.portfolio_ids():
            alerts = list(self.store.read_active_alerts(pid).values())
            if statuses is None or AlertStatus.RESOLVED in statuses:
                seen = set()
                scan = min(HISTORY_SCAN, max(200, 5 * limit))
                for record in self.store.read_stream_json(PortfolioKeys(pid).alert_log, count=scan):
                    alert = record.get("alert") or {}
                    if record.get("event") == AlertStatus.RESOLVED and alert.get("alert_id") not in seen:
                        seen.add(alert.get("alert_id"))
                        alerts.append(alert)
            for alert in alerts:
                if statuses is not None and alert.get("status") not in statuses:
                    continue
                if severities is not None and alert.get("severity") not in severities:
                    continue
                if rule_id is not None and alert.get("rule_id") != rule_id:
                    continue
                active = alert.get("status") in ACTIVE_STATUSES
                if since is not None and not active:
                    if max(alert.get("triggered_at") or 0, alert.get("resolved_at") or 0) < since:
                        continue
                out.append(public_alert(alert))
        out.sort(key=lambda a: (a.get("triggered_at") or 0.0, a.get("alert_id", "")), reverse=True)
        if len(out) <= limit:
            return out
        room = limit - sum(a.get("status") in ACTIVE_STATUSES for a in out)  # left for the newest resolved
        kept: list[dict[str, Any]] = []
        for alert in out:
            if alert.get("status") in ACTIVE_STATUSES:
                kept.append(alert)
            elif room > 0:
                kept.append(alert)
                room -= 1
        return kept

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
        """Notification deliveries (channel, recipient, status, error, attempts, events), newest first,
        optionally filtered by status, channel or alert id (:class:`engine.alert_records.Delivery` as dicts)."""
        pids = [portfolio_id] if portfolio_id else self.portfolio_ids()
        out: list[dict[str, Any]] = []
        filtered = status is not None or channel is not None or alert_id is not None
        for pid in pids:
            key = PortfolioKeys(pid).deliveries
            for record in self.store.read_stream_json(key, count=count * 10 if filtered else count):
                if status is not None and record.get("status") != status:
                    continue
                if channel is not None and record.get("channel") != channel:
                    continue
                if alert_id is not None and all(e.get("alert_id") != alert_id for e in record.get("events", ())):
                    continue
                out.append(record)
        out.sort(key=lambda r: (r.get("ts", 0), r.get("id", "")), reverse=True)
        return out[:count]

    def pending_notifications(self, portfolio_id: str) -> int:
        """How many notifications (event, channel, recipient) wait in the outbox."""
        return len(self.store.read_field_names(Store.outbox_key(portfolio_id)))

    # rules (delegated to the rule book, here so the dashboard needs one object)
    def list_rules(self) -> list[dict[str, Any]]:
        return self.rulebook.list_rules()

    def get_rule(self, rule_id: str) -> AlertRule:
        return self.rulebook.get(rule_id)

    def add_rule(self, data: Mapping[str, Any], actor: str, reason: str = "") -> AlertRule:
        return self.rulebook.add(data, actor, reason)

    def update_rule(
        self,
        rule_id: str,
        changes: Mapping[str, Any],
        actor: str,
        reason: str = "",
        *,
        expected_version: int | None = None,
        expected_rev: str | None = None,
    ) -> AlertRule:
        """:meth:`logic.rules.RuleBook.update`: with ``expected_version`` / ``expected_rev``, refused
        (``RULES_CHANGED``, nothing written) when the rule moved since that version."""
        return self.rulebook.update(
            rule_id, changes, actor, reason, expected_version=expected_version, expected_rev=expected_rev
        )

    def remove_rule(
        self,
        rule_id: str,
        actor: str,
        reason: str = "",
        *,
        expected_version: int | None = None,
        expected_rev: str | None = None,
    ) -> AlertRule:
        return self.rulebook.remove(
            rule_id, actor, reason, expected_version=expected_version, expected_rev=expected_rev
        )

    def reset_rule(
        self,
        rule_id: str,
        actor: str,
        reason: str = "",
        *,
        expected_version: int | None = None,
        expected_rev: str | None = None,
    ) -> AlertRule:
        return self.rulebook.reset(rule_id, actor, reason, expected_version=expected_version, expected_rev=expected_rev)

    def portfolio_ids(self) -> list[str]:
        return sorted(set(self.settings.portfolio_ids) | set(self.store.portfolio_ids()) | set(self._last))

    # -- transactions ----------------------------------------------------------------------------------------
    def _transact(
        self,
        portfolio_id: str,
        plan: Callable[[dict[str, Any], dict[str, Any], tuple[AlertRule, ...]], Changes],
    ) -> Changes:
        """WATCH the portfolio's alerts and timers, plan, write everything in one MULTI (bounded retry)."""
        alerts_key = PortfolioKeys(portfolio_id).alerts
        eval_key = Store.alert_eval_key(portfolio_id)
        for _ in range(MAX_TRANSACTION_ATTEMPTS):
            with self.store.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(alerts_key, eval_key)
                    rules = self.rulebook.rules()  # not WATCHed; global keys (another slot on a Redis Cluster)
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
                LOGGER.info("alert %s %s/%s [%s] %s", record["event"], portfolio_id, record["rule_id"],
                            record["severity"], record.get("note") or "")  # fmt: skip
            return changes
        raise AlertConflictError(
            f"alerts of portfolio {portfolio_id!r} kept changing; gave up after {MAX_TRANSACTION_ATTEMPTS} attempts"
        )

    def _write(self, portfolio_id: str, ch: Changes, pipe: Any) -> None:
        keys = PortfolioKeys(portfolio_id)
        eval_key = Store.alert_eval_key(portfolio_id)
        self.store.delete_fields(keys.alerts, [k for k in ch.alerts_del if k not in ch.alerts_set], pipe)
        self.store.write_json_fields(keys.alerts, ch.alerts_set, pipe, encode=encode_json_fast)
        self.store.delete_fields(eval_key, ch.trackers_del, pipe)
        self.store.write_json_fields(eval_key, ch.trackers_set, pipe, encode=encode_json_fast)
        for record in ch.log:
            self.store.append_alert_log(portfolio_id, record, pipe)
        self.store.write_json_fields(Store.outbox_key(portfolio_id), {e.field: e.to_dict() for e in ch.notify}, pipe)
        self.store.write_json_fields(Store.actions_key(portfolio_id), ch.actions, pipe)
        self.store.delete_fields(Store.actions_key(portfolio_id), ch.actions_done, pipe)
        for record in ch.audit:
            self.store.append_audit(keys.audit, record, pipe)

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
            return (p.get("created_at", 0.0), -SEVERITY_RANK.get(p.get("severity", Severity.LOW), 0), p["rule_id"],
                    p.get("order", 0))  # fmt: skip

        for item in sorted(pending.values(), key=order):
            by_alert.setdefault(item["alert_id"], []).append(item)
        for items in by_alert.values():
            audit = functools.partial(self._audit_response_step, portfolio_id)
            outcomes = [(item, self.responses.run(portfolio_id, item, audit)) for item in items]
            self._transact(portfolio_id, functools.partial(self._plan_outcome, portfolio_id, outcomes, now))

    def _plan_outcome(
        self, portfolio_id: str, outcomes: list[tuple[dict[str, Any], Any]], now: float, alerts: dict[str, Any],
        trackers: dict[str, Any], rules: Any,
    ) -> Changes:  # fmt: skip
        """The outcome of one alert's actions (:meth:`AlertPlanner.plan_action_alert`), and whether its trade
        actions count as the breach episode's last run (:func:`settle_acted`)."""
        ch = self.planner.plan_action_alert(portfolio_id, outcomes, now, alerts, trackers, rules)
        first = outcomes[0][0]
        trades = [_counts_as_run(parse_action(item["action"]).kind, o) for item, o in outcomes]
        settle_acted(ch, first["rule_id"], first["alert_id"], all(t for t in trades if t is not None), alerts,
                     trackers)  # fmt: skip
        return ch

    def _audit_response_step(self, portfolio_id: str, record: Mapping[str, Any]) -> None:
        """Append one step or order of a running response to the portfolio's audit trail, as it happens (the
        outcome of the whole action follows in :meth:`AlertPlanner.plan_action_alert`'s transaction). An audit
        write that fails is logged: it must not stop a response that is cutting risk."""
        try:
            self.store.append_audit(PortfolioKeys(portfolio_id).audit, {"ts": self.clock(), **record})
        except (RiskdeskError, redis.RedisError):
            LOGGER.exception("could not audit a step of an automated response of %s", portfolio_id)


def _counts_as_run(kind: str, outcome: Any) -> bool | None:
    """Whether one action's outcome counts as a run of the breach episode (None: not a trade action). A trade
    action counts when it is ok, and a ``reduce`` also when any of its legs filled: it cuts a fraction of the book
    it finds, so a retry at the same value would cut a fraction of the rest again (a leg refused every time, a
    stale or unpriced holding, would let every manual resolve sell more of the others). A partly done ``flatten``
    does not count: a retry only closes what is left."""
    if kind not in TRADE_ACTION_KINDS:
        return None
    if outcome.ok:
        return True
    legs = (getattr(outcome, "details", None) or {}).get("legs") or []
    return kind == "reduce" and any(isinstance(leg, Mapping) and int(leg.get("filled") or 0) > 0 for leg in legs)


def settle_acted(
    ch: Changes, rule_id: str, alert_id: str, ok: bool, alerts: Mapping[str, Any], trackers: Mapping[str, Any]
) -> None:
    """Record whether the trade actions alert ``alert_id`` of ``rule_id`` planned (its ``acted``, pending since
    :meth:`AlertPlanner.trigger`; in the alert and in the rule's tracker, which keeps it across a manual
    resolve) count as the breach episode's last run, the reference a re-trigger must be materially worse than.

    A run counts when each of its trade actions counts (:func:`_counts_as_run`): ok, or a ``reduce`` that filled
    any leg. One refused outright (stale prices), or a ``flatten`` only partly done, is no run: the reference goes
    back to the run before it (none on the first), so a re-trigger at the same value after a manual resolve
    retries the cut, which sizes from the book then held (a flatten closes only what is left). A ``reduce`` that
    cut part of the book is a run, so a resolve at the same value never sells another fraction of the legs that
    filled; its refused legs wait for the metric to worsen, or for a person (a liquidation-only order)."""
    for records, into in ((alerts, ch.alerts_set), (trackers, ch.trackers_set)):
        record = dict(records.get(rule_id) or {})
        acted = record.pop("acted", None) or {}
        if acted.get("alert_id") != alert_id or not acted.get("pending"):
            continue
        settled = {k: v for k, v in acted.items() if k not in ("pending", "previous")} if ok else acted["previous"]
        if settled:
            record["acted"] = settled
        if record or into is ch.alerts_set:
            into[rule_id] = record
        else:
            ch.trackers_del.append(rule_id)


def _as_set(value: str | Iterable[str] | None) -> set[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {value}
    return set(value)


# -- building it from the settings ---------------------------------------------------------------------------


def build_alert_engine(
    store: Store,
    settings: Settings,
    clock: Clock = time.time,
    risk_manager_factory: ControlFactory | None = None,
    *,
    recipients: Iterable[str] | None = None,
    repeat_interval_seconds: float | None = None,
    after_tick: TickHook | None = None,
    market_models: MarketModelCache | None = None,
    gate_metrics: Any = None,
) -> AlertEngine:
    """An :class:`AlertEngine` configured from ``settings`` (``[[alert_rules]]``, ``[escalation]`` and, of
    ``[notifications]``, the recipient names and ``repeat_interval_seconds``).

    ``risk_manager_factory(portfolio_id)`` returns the object automated responses act through; by default a
    :class:`logic.risk_manager.RiskManager` on the same Redis, settings and clock. ``recipients`` (the names
    escalation levels may use) and ``repeat_interval_seconds`` override what the settings say; the process
    that delivers passes them from its validated notification configuration, and its flush as ``after_tick``.
    ``market_models`` is the process's market-model cache, shared with the default risk managers, which count
    their decisions in ``gate_metrics`` (engine/metrics.py ``GateMetrics``) when given.

    Raises
    ------
    ConfigError
        An invalid rule or escalation setting.
    """
    names, repeat = _notification_plain(settings.extra)
    escalation = escalation_config(settings.extra, set(names if recipients is None else recipients))
    if risk_manager_factory is None:
        risk_manager_factory = _default_risk_manager_factory(store, settings, clock, market_models, gate_metrics)
    return AlertEngine(
        store,
        settings,
        escalation=escalation,
        responses=ResponseRunner(risk_manager_factory),
        clock=clock,
        repeat_interval_seconds=repeat if repeat_interval_seconds is None else repeat_interval_seconds,
        after_tick=after_tick,
    )


def _notification_plain(extra: Mapping[str, Any]) -> tuple[list[str], float]:
    """Of ``[notifications]``, what the engine needs as plain data: the recipient names and the repeat
    interval. Everything else of that section (addresses, secrets, retries) is the notifications package's,
    which validates the whole section when it starts."""
    section = extra.get("notifications") or {}
    if not isinstance(section, Mapping):
        raise ConfigError("notifications: must be a table of settings")
    recipients = section.get("recipients") or {}
    if not isinstance(recipients, Mapping):
        raise ConfigError("notifications.recipients: must be a table of settings")
    raw = section.get("repeat_interval_seconds", DEFAULT_REPEAT_INTERVAL_SECONDS)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) or raw < 0:
        raise ConfigError("notifications.repeat_interval_seconds: must be a finite number >= 0")
    return [str(name) for name in recipients], float(raw)


def _default_risk_manager_factory(
    store: Store, settings: Settings, clock: Clock, market_models: MarketModelCache | None = None, metrics: Any = None
) -> ControlFactory | None:
    try:
        from logic.risk_manager import RiskManager
    except ImportError:  # pragma: no cover - the risk manager ships with the project
        return None
    models = market_models or MarketModelCache(store, settings.model.bars_per_day)

    def factory(portfolio_id: str) -> Any:
        return RiskManager(
            store.client, portfolio_id=portfolio_id, settings=settings, clock=clock, market_models=models,
            metrics=metrics,
        )  # fmt: skip

    return factory
