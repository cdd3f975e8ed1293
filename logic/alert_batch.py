"""Alerts that keep up: every rule on every portfolio of a tick, planned together and written in a few MULTIs.

:meth:`logic.alerts.AlertEngine.evaluate` costs one WATCH, two reads and a MULTI per portfolio (about 1 ms each,
so a second per tick for a thousand portfolios). :func:`evaluate_batch` does the same work for a range of
:data:`ALERT_BATCH_PORTFOLIOS` portfolios at a time with:

1. one WATCH of every portfolio's alert and timer hashes (``Store.alert_watch_keys``);
2. one read of them all, one script (after the WATCH: a write by anyone else from then on aborts step 4);
3. the planning of each portfolio by the engine's own :meth:`logic.lifecycle.AlertPlanner.plan_evaluation` (the
   one definition of the lifecycle: pending and clear periods, stale data, inhibition, escalation timers);
4. one MULTI writing every portfolio's changes (the engine's own ``_write``): alerts, timers, history, outbox,
   automated actions, audit.

**On a Redis Cluster** a WATCH and a MULTI may only touch keys of one hash slot (engine/store/slots.py), and
each portfolio's alert keys share their portfolio's slot: the portfolios are grouped by slot and each group is
its own transaction (steps 1 to 4), so a conflict in one leaves only that group to the per-portfolio path. The
rules (``rd:rules``, global, on another slot) are read once, before those transactions: they were never
WATCHed on one server either. Before this grouping, every cluster tick raised at the first WATCH, so no alert
timer (pending and clear periods, escalation, acknowledge timeouts) ran on a cluster.

On one server :data:`ALERT_BATCH_THREADS` ranges run at once, each on its own connections: while one waits for
Redis (its read, its MULTI) the other plans, so Redis's time hides behind Python's (a bad day of 1,000 portfolios,
every active alert's value moving: 275-320 -> 190-235 ms, measured in one process). The live limits of every
portfolio are read first, in one call (they are not WATCHed, and their tracked connection serves one thread);
each range's transitions are reported in range order.

A conflict at step 4 (someone acknowledged or resolved an alert meanwhile) writes nothing of that range; the
caller then evaluates its portfolios one by one (each in its own transaction, as before). A portfolio whose
stored alerts do not decode, or whose planning fails, is left to the per-portfolio path too, which reports its
error.

**Quiet portfolios are not planned again.** The engine's timers tick (every 0.5 s on the monitor's own thread)
evaluates every portfolio's newest snapshot again at a later ``now``. When the last planning of that very
snapshot (the same object) found no alert and no timer stored and changed nothing, and the rules and the live
limits are the same and no rule's stale-data test turns (:func:`logic.lifecycle.staleness`, the only way the
time enters a condition), planning it again would change nothing either: with no alert and no timer, a plan
changes something only for a breach, and the conditions are those that had none. Such a portfolio is skipped
(:class:`Quiet`); its alert and timer hashes are still read under the WATCH, and must still be empty.

**Nor is a portfolio a tick has just planned.** The monitor plans every portfolio of every tick, and on a bad day
(every portfolio with active alerts, so nothing is quiet) the timers' run planning the same snapshots again
every 0.5 s doubled the alert work and held the engine's lock while the next tick waited (make bench,
bench_scale). The timers' run of :meth:`~logic.alerts.AlertEngine.start_background` skips a portfolio whose
newest snapshot a batch planned less than one period before (:func:`recently_planned`): nothing has moved but
the time, by less than a period, and the next run plans it unless a tick has again. A time-based change (a
pending or clear period completing, an escalation level, a reminder, an acknowledge timeout, data turning
stale) is therefore planned within about two periods (1 s) of falling due, not one; every such period is whole
seconds or more. :meth:`~logic.alerts.AlertEngine.tick` called directly (no background thread) skips nothing.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from engine.settings import AlertRule, Limits
from engine.store import decode_str
from engine.store.codec import decode_json_fast
from engine.store.slots import is_cluster
from logic.batch import PortfolioLookup, read_limits
from logic.lifecycle import Changes, staleness
from logic.rules import Snapshot

if TYPE_CHECKING:  # the engine calls this module; imported for the type only
    from logic.alerts import AlertEngine

LOGGER = logging.getLogger("riskdesk.alerts")


@dataclass
class BatchResult:
    """What one batched evaluation did."""

    transitions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Portfolio id -> the transitions its snapshot caused (only portfolios with some)."""
    with_actions: list[str] = field(default_factory=list)
    """Portfolios whose changes queued automated actions (the engine runs them next)."""
    one_by_one: list[str] = field(default_factory=list)
    """Portfolios the batch did not write: evaluate them with :meth:`AlertEngine.evaluate`."""


def _json_hash(key: str, raw: Mapping[bytes, bytes]) -> dict[str, Any]:
    """A hash of JSON objects as HGETALL returned it, decoded (the form of ``Store.read_json_hash``)."""
    out: dict[str, Any] = {}
    for name, value in raw.items():
        field_name = decode_str(name, key=key)
        out[field_name] = decode_json_fast(value, key=f"{key}.{field_name}")
    return out


@dataclass(frozen=True)
class Quiet:
    """A planning that found nothing stored and changed nothing (module docstring)."""

    snapshot: Snapshot
    rules: tuple[AlertRule, ...]
    limits: Limits
    stale: tuple[bool, ...]

    def holds(self, snapshot: Snapshot, rules: tuple[AlertRule, ...], limits: Limits, now: float) -> bool:
        """Planning ``snapshot`` at ``now`` with nothing stored would change nothing, as this one did."""
        return (
            snapshot is self.snapshot
            and (rules is self.rules or rules == self.rules)
            and limits == self.limits
            and staleness(rules, snapshot, now) == self.stale
        )


ALERT_BATCH_PORTFOLIOS = 125
"""Portfolios per transaction. Redis before 7.0 checks every key a WATCH adds against every key the connection
watches already: 2,000 keys in one transaction held the server for 32 ms (gates and monitors waited), 250 keys
for 0.5 ms; so a tick's portfolios are evaluated in transactions of this many."""


ALERT_BATCH_THREADS = 2
"""Ranges evaluated at once (a tick of more than one range): while one range waits for Redis (its read, its
MULTI), the other plans; the planning itself, Python, takes turns."""


def evaluate_batch(engine: AlertEngine, snapshots: Mapping[str, Snapshot], now: float) -> BatchResult:
    """Plan and write the evaluation of every snapshot (portfolio id -> snapshot) at ``now``, in transactions of
    :data:`ALERT_BATCH_PORTFOLIOS` portfolios (module docstring). The caller holds the engine's lock."""
    result = BatchResult()
    pids = list(snapshots)
    client: Any = engine.store.client  # a RedisCluster on a cluster (typed as redis.Redis by the store)
    if not is_cluster(client):
        ranges = [pids[lo : lo + ALERT_BATCH_PORTFOLIOS] for lo in range(0, len(pids), ALERT_BATCH_PORTFOLIOS)]
        if len(ranges) <= 1:
            for portfolios in ranges:
                _guarded(engine, snapshots, portfolios, now, result)
            return result
        parts = [BatchResult() for _ in ranges]  # each range's own, merged in order (module docstring)
        # the limits first, for all (not WATCHed, so no later than a range's read; one tracked connection)
        limits = read_limits(engine.store, pids, PortfolioLookup(engine.settings), engine._limits_memo)
        with concurrent.futures.ThreadPoolExecutor(ALERT_BATCH_THREADS, "riskdesk-alert-batch") as pool:
            futures = [pool.submit(_guarded, engine, snapshots, portfolios, now, part, limits=limits)
                       for portfolios, part in zip(ranges, parts, strict=True)]  # fmt: skip
            for future in futures:
                future.result()
        for part in parts:
            result.transitions.update(part.transitions)
            result.with_actions.extend(part.with_actions)
            result.one_by_one.extend(part.one_by_one)
        return result
    rules = engine.rulebook.rules()  # global (its own slot): read once, outside the portfolios' transactions
    by_slot: dict[int, list[str]] = {}
    for pid in pids:
        by_slot.setdefault(client.keyslot(engine.store.alert_watch_keys(pid)[0]), []).append(pid)
    for group in by_slot.values():
        for lo in range(0, len(group), ALERT_BATCH_PORTFOLIOS):
            _guarded(engine, snapshots, group[lo : lo + ALERT_BATCH_PORTFOLIOS], now, result, rules)
    return result


def _guarded(
    engine: AlertEngine, snapshots: Mapping[str, Snapshot], pids: list[str], now: float, result: BatchResult,
    cluster_rules: tuple[AlertRule, ...] | None = None, *, limits: Mapping[str, Limits | Exception] | None = None,
) -> None:  # fmt: skip
    """:func:`_evaluate_range`; a range that fails other than in Redis leaves its portfolios to the per-portfolio
    path, which reports the error, and the other ranges' results (their automated actions) stand. A Redis error
    is raised: the store is down for every range alike."""
    try:
        _evaluate_range(engine, snapshots, pids, now, result, cluster_rules, limits=limits)
    except redis.RedisError:
        raise
    except Exception:
        LOGGER.exception("alert batch of %d portfolios failed: they are evaluated one by one", len(pids))
        held = set(result.one_by_one)
        result.one_by_one.extend(pid for pid in pids if pid not in held)


def recently_planned(engine: AlertEngine, snapshots: Mapping[str, Snapshot], now: float) -> set[str]:
    """The portfolios of ``snapshots`` (each one's newest) that a batch planned less than ``engine.timers_every``
    before ``now``, that very snapshot (module docstring: the timers run leaves them to its next run)."""
    every = engine.timers_every
    if every <= 0:
        return set()
    return {
        pid for pid, snapshot in snapshots.items()
        if (last := engine.planned.get(pid)) is not None and last[1] is snapshot and 0.0 <= now - last[0] < every
    }  # fmt: skip


def _evaluate_range(
    engine: AlertEngine,
    snapshots: Mapping[str, Snapshot],
    pids: list[str],
    now: float,
    result: BatchResult,
    cluster_rules: tuple[AlertRule, ...] | None = None,
    *,
    limits: Mapping[str, Limits | Exception] | None = None,
) -> None:
    """Steps 1 to 4 for ``pids``, adding to ``result``; a conflict leaves them all to the per-portfolio path.
    ``cluster_rules``: the rules read before (on a Redis Cluster ``pids`` share one slot and ``rd:rules`` is on
    another, so it cannot be read on the transaction's connection); ``None`` reads them after the WATCH."""
    store = engine.store
    watched = {pid: store.alert_watch_keys(pid) for pid in pids}
    failed: list[str] = []
    with store.client.pipeline(transaction=True) as tx:
        tx.watch(*(key for pid in pids for key in watched[pid]))
        rules = engine.rulebook.rules(tx) if cluster_rules is None else cluster_rules
        states = store.read_alert_states(pids)
        if limits is None:
            limits = read_limits(store, pids, PortfolioLookup(engine.settings), engine._limits_memo)
        plans: dict[str, Changes] = {}
        quiet = engine.quiet
        for i, pid in enumerate(pids):
            alerts_key, eval_key = watched[pid]
            snapshot = snapshots[pid]
            try:
                live = limits[pid]
                if isinstance(live, Exception):
                    raise live
                stored_alerts, stored_timers = states[i]
                nothing_stored = not stored_alerts and not stored_timers
                mark = quiet.get(pid)
                if nothing_stored and mark is not None and mark.holds(snapshot, rules, live, now):
                    continue  # planned before with the same outcome: nothing (module docstring)
                alerts = _json_hash(alerts_key, stored_alerts)
                trackers = _json_hash(eval_key, stored_timers)
                changes = engine.planner.plan_evaluation(pid, snapshot, now, alerts, trackers, rules, limits=live)
            except Exception:  # noqa: BLE001 - any planning failure: its own transaction reports the error
                failed.append(pid)
                quiet.pop(pid, None)
                continue
            if not changes.empty():
                plans[pid] = changes
                quiet.pop(pid, None)
            elif nothing_stored:
                quiet[pid] = Quiet(snapshot, rules, live, staleness(rules, snapshot, now))
        if not plans:
            tx.unwatch()
        else:
            tx.multi()
            for pid, changes in plans.items():
                engine._write(pid, changes, tx)
            try:
                tx.execute()
            except redis.WatchError:
                LOGGER.debug("alert batch conflicted with another writer: %d portfolios one by one", len(pids))
                result.one_by_one.extend(pids)
                return
    for pid in set(pids) - set(failed):
        engine.planned[pid] = (now, snapshots[pid])
    result.one_by_one.extend(failed)
    for pid, changes in plans.items():
        for record in changes.log:
            LOGGER.info("alert %s %s/%s [%s] %s", record["event"], pid, record["rule_id"], record["severity"],
                        record.get("note") or "")  # fmt: skip
        if changes.transitions:
            result.transitions[pid] = changes.transitions
        if changes.actions:
            result.with_actions.append(pid)
