"""Alerts that keep up: every rule on every portfolio of a tick, planned together and written in one MULTI.

:meth:`logic.alerts.AlertEngine.evaluate` costs one WATCH, two reads and a MULTI per portfolio (about 1 ms each,
so a second per tick for a thousand portfolios). :func:`evaluate_batch` does the same work for all of them with:

1. one WATCH of every portfolio's alert and timer hashes (``Store.alert_watch_keys``);
2. one pipelined read of them all (after the WATCH: a write by anyone else from then on aborts step 4);
3. the planning of each portfolio by the engine's own :meth:`logic.lifecycle.AlertPlanner.plan_evaluation` (the
   one definition of the lifecycle: pending and clear periods, stale data, inhibition, escalation timers);
4. one MULTI writing every portfolio's changes (the engine's own ``_write``): alerts, timers, history, outbox,
   automated actions, audit.

A conflict at step 4 (someone acknowledged or resolved an alert meanwhile) writes nothing; the caller then
evaluates the portfolios one by one (each in its own transaction, as before). A portfolio whose stored alerts do
not decode, or whose planning fails, is left to the per-portfolio path too, which reports its error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from engine.errors import RiskdeskError
from engine.store import decode_str
from engine.store.codec import decode_json_fast
from logic.batch import PortfolioLookup, read_limits
from logic.lifecycle import Changes
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


def evaluate_batch(engine: AlertEngine, snapshots: Mapping[str, Snapshot], now: float) -> BatchResult:
    """Plan and write the evaluation of every snapshot (portfolio id -> snapshot) at ``now`` in one transaction
    (module docstring). The caller holds the engine's lock."""
    result = BatchResult()
    pids = list(snapshots)
    if not pids:
        return result
    store = engine.store
    watched = {pid: store.alert_watch_keys(pid) for pid in pids}
    with store.client.pipeline(transaction=True) as tx:
        tx.watch(*(key for pid in pids for key in watched[pid]))
        rules = engine.rulebook.rules(tx)
        read = store.client.pipeline(transaction=False)
        for pid in pids:
            for key in watched[pid]:
                read.hgetall(key)
        raw = read.execute()
        limits = read_limits(store, pids, PortfolioLookup(engine.settings), engine._limits_memo)
        plans: dict[str, Changes] = {}
        for i, pid in enumerate(pids):
            alerts_key, eval_key = watched[pid]
            try:
                alerts = _json_hash(alerts_key, raw[2 * i])
                trackers = _json_hash(eval_key, raw[2 * i + 1])
                live = limits[pid]
                if isinstance(live, Exception):
                    raise live
                changes = engine.planner.plan_evaluation(
                    pid, snapshots[pid], now, alerts, trackers, rules, limits=live
                )
            except (RiskdeskError, ValueError, TypeError, KeyError):
                result.one_by_one.append(pid)  # its own transaction reports the error
                continue
            if not changes.empty():
                plans[pid] = changes
        if not plans:
            tx.unwatch()
            return result
        tx.multi()
        for pid, changes in plans.items():
            engine._write(pid, changes, tx)
        try:
            tx.execute()
        except redis.WatchError:
            LOGGER.debug("alert batch conflicted with another writer: %d portfolios one by one", len(pids))
            return BatchResult(one_by_one=pids)
    for pid, changes in plans.items():
        for record in changes.log:
            LOGGER.info("alert %s %s/%s [%s] %s", record["event"], pid, record["rule_id"], record["severity"],
                        record.get("note") or "")  # fmt: skip
        if changes.transitions:
            result.transitions[pid] = changes.transitions
        if changes.actions:
            result.with_actions.append(pid)
    return result
