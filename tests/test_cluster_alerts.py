"""Alert timers and batched evaluation on a real 3-master Redis Cluster (fixtures ``redis_cluster`` and
``cluster_store``), through the engine path the monitor uses: ``evaluate_many`` for each tick's snapshots and
``tick`` on the engine's own thread (logic/monitor.py ``make_alert_engine``).

Before the per-slot transactions of logic/alert_batch.py every ``tick`` on a cluster raised at its first WATCH
(keys of several slots), so pending periods, auto-resolve after the clear period and escalation timers never ran
there; and ``warmup.py --sync --create`` raised because the registry was written in the portfolio's MULTI.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import warmup
from engine import book
from engine.settings import Settings, settings_from_dict
from engine.store import PortfolioKeys, Store
from logic.alert_batch import evaluate_batch
from logic.alerts import build_alert_engine
from logic.monitor import make_alert_engine

from . import test_alert_batch as alert_batch_tests
from .alerts_support import T0, SimClock, rule, snapshot
from .conftest import TEST_CONFIG, merge

pytestmark = pytest.mark.slow

PIDS = ("hedge", "main")
PENDING = 30.0
CLEAR = 60.0
SECOND_LEVEL = 60.0


def _settings() -> Settings:
    """Both seeded portfolios, one rule with a pending and a clear period (never stale in these tests), and a
    second escalation level ``SECOND_LEVEL`` seconds after the trigger."""
    var_warn = rule(
        "var_warning", "var.utilization", ">=", 0.8, "MEDIUM", pending_seconds=PENDING, clear_seconds=CLEAR,
        stale_after_seconds=10_000.0,
    )  # fmt: skip
    levels = [
        {"delay_seconds": 0, "recipients": ["desk"], "channels": ["log"]},
        {"delay_seconds": SECOND_LEVEL, "recipients": ["desk"], "channels": ["log"]},
    ]
    return settings_from_dict(
        merge(
            TEST_CONFIG,
            {
                "alert_rules": [var_warn],
                "notifications": {
                    "group_wait_seconds": 0,
                    "group_interval_seconds": 0,
                    "recipients": {"desk": {"email": "desk@test.local"}},
                },
                "escalation": {"MEDIUM": levels},
            },
        )
    )


def _snaps(now: float, utilization: float) -> dict[str, dict[str, Any]]:
    return {pid: snapshot(pid, now, var__utilization=utilization) for pid in PIDS}


def _events(result: dict[str, Any]) -> list[tuple[str, str, float]]:
    return sorted((t["rule_id"], t["event"], t["ts"]) for t in result["transitions"])


def _active(engine: Any, pid: str) -> list[dict[str, Any]]:
    return engine.active_alerts(pid)


def test_the_portfolios_of_these_tests_live_on_different_masters(redis_cluster: Any) -> None:
    # the point of the tests below: one tick spans slots (and nodes)
    assert len({redis_cluster.node_of(PortfolioKeys(pid).alerts) for pid in PIDS}) == 2


def test_tick_on_a_cluster_completes_the_pending_period_escalates_and_auto_resolves_after_the_clear_period(
    cluster_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings()
    warmup.seed(cluster_store, settings)
    clock = SimClock(T0)
    engine = build_alert_engine(cluster_store, settings, clock)

    # the monitor's per-tick call: a breach starts the pending period of both portfolios, nothing fires yet
    assert engine.evaluate_many(_snaps(T0, 0.9), T0) == {}
    assert engine.tick(T0 + PENDING - 1)["transitions"] == []
    # the pending period completes on the timers' tick alone, exactly at its end, on both slots
    assert _events(engine.tick(T0 + PENDING)) == [("var_warning", "TRIGGERED", T0 + PENDING)] * 2
    for pid in PIDS:
        (alert,) = _active(engine, pid)
        assert (alert["status"], alert["breach_since"], alert["triggered_at"]) == ("TRIGGERED", T0, T0 + PENDING)
        assert alert["escalation_level"] == 1

    # the second escalation level is due SECOND_LEVEL seconds after the trigger: not a second before
    engine.tick(T0 + PENDING + SECOND_LEVEL - 1)
    assert [_active(engine, pid)[0]["escalation_level"] for pid in PIDS] == [1, 1]
    engine.tick(T0 + PENDING + SECOND_LEVEL)
    assert [_active(engine, pid)[0]["escalation_level"] for pid in PIDS] == [2, 2]

    # the breach ends: the clear period runs on the timers' tick and resolves exactly at its end
    cleared = T0 + 100.0
    assert engine.evaluate_many(_snaps(cleared, 0.5), cleared) == {}
    assert engine.tick(cleared + CLEAR - 1)["transitions"] == []
    assert all(len(_active(engine, pid)) == 1 for pid in PIDS)
    assert _events(engine.tick(cleared + CLEAR)) == [("var_warning", "RESOLVED", cleared + CLEAR)] * 2
    for pid in PIDS:
        assert _active(engine, pid) == []
        (resolved,) = engine.list_alerts(pid, status="RESOLVED")
        assert (resolved["resolved_at"], resolved["resolved_by"], resolved["value"]) == (cleared + CLEAR, "auto", 0.5)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_the_monitors_alert_engine_thread_fires_and_resolves_on_a_cluster(cluster_store: Store) -> None:
    settings = _settings()
    warmup.seed(cluster_store, settings)
    clock = SimClock(T0)
    engine: Any = make_alert_engine(cluster_store, settings, clock)  # ticks on its own thread, as in the monitor
    try:
        engine.evaluate_many(_snaps(T0, 0.9), T0)
        clock.advance(PENDING)
        assert _wait(lambda: all(len(_active(engine, pid)) == 1 for pid in PIDS)), "the pending period never ended"
        clock.advance(10.0)
        engine.evaluate_many(_snaps(clock(), 0.5), clock())
        clock.advance(CLEAR)
        assert _wait(lambda: all(_active(engine, pid) == [] for pid in PIDS)), "the clear period never ended"
        for pid in PIDS:
            (resolved,) = engine.list_alerts(pid, status="RESOLVED")
            assert resolved["resolved_at"] == T0 + PENDING + 10.0 + CLEAR and resolved["resolved_by"] == "auto"
    finally:
        engine.close()


def _wait(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_sync_create_registers_a_new_portfolio_on_a_cluster_and_a_rerun_changes_nothing(
    cluster_store: Store, tmp_path: Path
) -> None:
    settings = _settings()
    warmup.seed(cluster_store, settings)
    path = tmp_path / "new.csv"
    path.write_text("portfolio_id,ticker,qty,avg_price,cash\nnewbook,AAA,5,10,\nnewbook,,,,1000\n")
    lines: list[str] = []

    def sync() -> None:
        book.sync(cluster_store, settings, book.read_book(path, settings.universe.assets), dry_run=False,
                  create=True, now=T0, actor="backoffice", out=lines.append)  # fmt: skip

    sync()

    assert "newbook: new portfolio" in "\n".join(lines)
    assert cluster_store.portfolio_ids() == ["hedge", "main", "newbook"]
    created = cluster_store.read_portfolio("newbook")
    assert created.positions["AAA"].qty == 5 and created.positions["AAA"].avg_price == Decimal("10")
    assert created.cash == Decimal("1000")
    assert cluster_store.read_trading_state("newbook").state == "ACTIVE"
    # a rerun finds nothing to change (the registry write is idempotent)
    lines.clear()
    sync()
    assert lines == ["nothing to change"] and cluster_store.portfolio_ids() == ["hedge", "main", "newbook"]


def test_a_batch_on_a_cluster_leaves_the_state_of_one_by_one_evaluation(cluster_store: Store) -> None:
    # the same six ticks of 24 portfolios (tests/test_alert_batch.py), batched and one by one, on the cluster
    batched_state, batched_transitions = alert_batch_tests._run(cluster_store.client, batched=True)
    single_state, single_transitions = alert_batch_tests._run(cluster_store.client, batched=False)

    assert batched_state == single_state and batched_transitions == single_transitions
    assert sum(len(s["log"]) for s in batched_state.values()) > len(alert_batch_tests.PIDS)


def test_a_conflict_on_a_cluster_leaves_only_its_own_slot_to_the_one_by_one_path(cluster_store: Store) -> None:
    # Arrange: 24 portfolios on the shipped rules; one portfolio's timers are written between its read and its MULTI
    store = cluster_store
    settings = alert_batch_tests._shipped()
    warmup.seed(store, settings)
    engine = build_alert_engine(store, settings, SimClock(T0))
    pids = alert_batch_tests.PIDS
    slots = {pid: store.client.keyslot(PortfolioKeys(pid).alerts) for pid in pids}
    assert len(set(slots.values())) == len(pids)  # one slot each: each is its own transaction
    original = engine.planner.plan_evaluation
    touched: list[str] = []

    def plan_and_interfere(pid: str, *args: Any, **kwargs: Any) -> Any:
        if not touched:
            touched.append(pid)
            store.client.hset(Store.alert_eval_key(pid), "someone", "{}")
        return original(pid, *args, **kwargs)

    engine.planner.plan_evaluation = plan_and_interfere  # type: ignore[method-assign]
    snaps = alert_batch_tests._snapshots(T0, 2)

    # Act: the batch itself (what evaluate_many and tick run first)
    with engine._lock:
        result = evaluate_batch(engine, snaps, T0)

    # Assert: only the interfered portfolio is left to the per-portfolio path; every breach of the others written
    assert result.one_by_one == touched
    breaching = [pid for pid, s in snaps.items() if s["var"]["utilization"] >= 1.0 and s["market_ts"] == T0]
    assert breaching
    for pid in breaching:
        assert ("var_breach" in store.read_active_alerts(pid)) is (pid != touched[0])


def test_a_watch_over_keys_of_two_slots_is_a_misuse_not_an_unavailable_cluster(cluster_store: Store) -> None:
    """A daemon backs off from "Redis Cluster unavailable"; a cross-slot WATCH is a bug, reported as itself."""
    import redis as redis_py
    from redis.exceptions import RedisClusterException

    keys = [PortfolioKeys("main").alerts, PortfolioKeys("hedge").alerts]
    assert len({cluster_store.client.keyslot(k) for k in keys}) == 2
    with cluster_store.client.pipeline(transaction=True) as pipe, pytest.raises(RedisClusterException) as raised:
        pipe.watch(*keys)
    assert not isinstance(raised.value, redis_py.ConnectionError)
    assert "same key slot" in str(raised.value)
