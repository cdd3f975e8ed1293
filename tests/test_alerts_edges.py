"""Alert engine edges: one portfolio's failure does not stop :meth:`AlertEngine.tick` for the others; the
shipped ``stale_market_data`` rule fires past 150 s (not at the default staleness of 60 s); a null ``backtest``
section does not apply (no STALE alert on fresh data, an active backtest alert clears), batched as one by one."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import redis

import warmup
from engine.errors import CorruptDataError
from engine.settings import load_settings
from engine.store import PortfolioKeys, Store
from logic.alerts import build_alert_engine
from logic.risk_manager import RiskManager
from logic.rules import MISSING, metric_value
from notifications.service import build_delivering_engine

from .alerts_support import T0, SimClock, SleepRecorder, delivered_events, rule, snapshot
from .test_alert_batch import _strip as strip_volatile

ROOT = Path(__file__).resolve().parent.parent
VAR_CRIT = rule("var_breach", "var.utilization", ">=", 1.0, "CRITICAL")
VOLATILE = ("alert_id", "action_id", "source_alert_id", "event_id")


# -- tick(): one portfolio's failure is its own ----------------------------------------------------------------


def _delivering_engine(store: Store, make_settings: Any, clock: SimClock) -> tuple[Any, Any]:
    settings = make_settings(
        {"alert_rules": [VAR_CRIT], "notifications": {"group_wait_seconds": 0, "group_interval_seconds": 0}}
    )
    warmup.seed(store, settings)
    return build_delivering_engine(store, settings, clock=clock, env={}, sleep=SleepRecorder()), settings


def _leftover_halt(store: Store, portfolio_id: str) -> None:
    """An automated action left queued (e.g. by a crash between the alert's commit and its run)."""
    action = {
        "action_id": "x-0", "order": 0, "action": "set_state:HALTED", "rule_id": "var_breach", "alert_id": "x",
        "severity": "CRITICAL", "description": "", "metric": "var.utilization", "op": ">=", "threshold": 1.0,
        "value": 1.5, "actor": "auto:var_breach", "created_at": T0, "reason": "leftover",
    }  # fmt: skip
    store.client.hset(PortfolioKeys(portfolio_id).actions, "x-0", json.dumps(action))


def _tick_failures(caplog: pytest.LogCaptureFixture, portfolio_id: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "riskdesk.alerts" and r.levelno == logging.ERROR and portfolio_id in r.getMessage()
    ]


@pytest.mark.parametrize("hedge_has_a_snapshot", [False, True], ids=["timers-only", "one-by-one-evaluation"])
def test_tick_when_one_portfolios_alert_state_does_not_decode_then_the_others_deliver_and_run_their_actions(
    store: Store, make_settings: Any, caplog: pytest.LogCaptureFixture, hedge_has_a_snapshot: bool
) -> None:
    # Arrange: main has an alert waiting in its outbox and a leftover action; hedge's alert hash is corrupt
    clock = SimClock(T0)
    engine, settings = _delivering_engine(store, make_settings, clock)
    engine.evaluate("main", snapshot("main", T0, var__utilization=1.5), T0)
    if hedge_has_a_snapshot:  # then the batch leaves hedge to the one-by-one evaluation, which fails
        engine.evaluate("hedge", snapshot("hedge", T0), T0)
    assert engine.pending_notifications("main") == 1
    _leftover_halt(store, "main")
    store.client.hset(PortfolioKeys("hedge").alerts, "var_breach", b"{not json")

    # Act
    with caplog.at_level(logging.ERROR, logger="riskdesk.alerts"):
        result = engine.tick(clock.advance(1))

    # Assert: main's notification delivered, its action run; hedge's failure logged with its error
    assert engine.pending_notifications("main") == 0
    assert ("triggered", "var_breach") in [(e["kind"], e["rule_id"]) for e in delivered_events(engine, "main")]
    assert result["deliveries"]
    assert store.client.hlen(PortfolioKeys("main").actions) == 0
    manager = RiskManager(store.client, "main", settings=settings, clock=clock)
    assert manager.get_trading_state().state == "HALTED"
    (failure,) = _tick_failures(caplog, "hedge")
    assert failure.exc_info is not None and isinstance(failure.exc_info[1], CorruptDataError)


def test_tick_when_one_portfolios_pending_actions_do_not_decode_then_the_others_still_run(
    store: Store, make_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Arrange: hedge (ticked first) has a corrupt actions queue, main a leftover action
    clock = SimClock(T0)
    engine, settings = _delivering_engine(store, make_settings, clock)
    _leftover_halt(store, "main")
    store.client.hset(PortfolioKeys("hedge").actions, "y-0", b"{not json")

    # Act
    with caplog.at_level(logging.ERROR, logger="riskdesk.alerts"):
        engine.tick(clock.advance(1))

    # Assert
    assert store.client.hlen(PortfolioKeys("main").actions) == 0
    assert RiskManager(store.client, "main", settings=settings, clock=clock).get_trading_state().state == "HALTED"
    (failure,) = _tick_failures(caplog, "hedge")
    assert failure.exc_info is not None and isinstance(failure.exc_info[1], CorruptDataError)


# -- the shipped stale_market_data rule ------------------------------------------------------------------------


def test_shipped_stale_market_data_rule_fires_only_once_market_data_is_more_than_150_s_old(store: Store) -> None:
    # Arrange: the shipped settings and rules
    settings = load_settings(ROOT / "riskdesk.toml", env={})
    warmup.seed(store, settings)
    engine = build_alert_engine(store, settings, SimClock(T0))
    pid = settings.portfolio_ids[0]

    def active_after(age: float) -> list[str]:
        now = T0 + age
        engine.evaluate(pid, snapshot(pid, now, market_ts=T0, data__market_age_seconds=age), now)
        return [a["rule_id"] for a in engine.active_alerts(pid)]

    # Act / Assert: not at 61 s (the default 60 s staleness), not at exactly 150 s, at 151 s
    assert "stale_market_data" not in active_after(61.0)
    assert "stale_market_data" not in active_after(150.0)
    assert "stale_market_data" in active_after(151.0)


def test_shipped_var_breach_rule_fires_above_the_limit_not_exactly_at_it(store: Store) -> None:
    """The gate approves a trade that takes VaR exactly to its limit (logic/checks.py: refused only above it): the
    CRITICAL "VaR above its limit" rule, which sets REDUCING, must not call that a breach."""
    settings = load_settings(ROOT / "riskdesk.toml", env={})
    warmup.seed(store, settings)
    engine = build_alert_engine(store, settings, SimClock(T0))
    pid = settings.portfolio_ids[0]

    def active_at(utilization: float, now: float) -> list[str]:
        engine.evaluate(pid, snapshot(pid, now, var__utilization=utilization), now)
        return [a["rule_id"] for a in engine.active_alerts(pid)]

    assert "var_breach" not in active_at(1.0, T0)  # exactly at the limit
    assert "var_breach" in active_at(math.nextafter(1.0, 2.0), T0 + 1)  # the next float above it


# -- a null backtest section ------------------------------------------------------------------------------------


def test_metric_value_under_a_null_section_is_null_and_under_an_absent_one_missing() -> None:
    assert metric_value(snapshot(backtest=None), "backtest.zone") is None
    assert metric_value(snapshot(backtest={"zone": 2}), "backtest.zone") == 2
    assert metric_value(snapshot(var=None), "var.utilization") is None
    assert metric_value({"ts": T0}, "var.utilization") is MISSING


@pytest.mark.parametrize("policy", ["fire", "keep"])
def test_a_null_backtest_section_on_fresh_data_fires_nothing_and_clears_an_active_backtest_alert(
    store: Store, make_settings: Any, policy: str
) -> None:
    # Arrange
    engine = build_alert_engine(
        store,
        make_settings({"alert_rules": [rule("bt", "backtest.zone", ">=", 1, "HIGH", stale_policy=policy)]}),
        SimClock(T0),
    )

    # Act / Assert: no backtest stored yet, fresh data: the rule does not apply
    assert engine.evaluate("main", snapshot("main", T0, backtest=None), T0) == []
    assert engine.active_alerts("main") == []

    # a red zone fires it; the section then null on fresh data clears it
    engine.evaluate("main", snapshot("main", T0 + 1, backtest={"zone": 2}), T0 + 1)
    assert [a["rule_id"] for a in engine.active_alerts("main")] == ["bt"]
    (event,) = engine.evaluate("main", snapshot("main", T0 + 2, backtest=None), T0 + 2)
    assert (event["event"], event["rule_id"]) == ("RESOLVED", "bt")
    assert engine.active_alerts("main") == []


def test_a_null_section_is_still_no_data_for_other_metrics_and_stale_data_still_follows_the_policy(
    store: Store, make_settings: Any
) -> None:
    # Arrange
    rules = [
        rule("var", "var.utilization", ">=", 1.0, "HIGH", stale_policy="fire"),
        rule("bt", "backtest.zone", ">=", 1, "HIGH", stale_policy="fire", stale_after_seconds=30),
    ]
    engine = build_alert_engine(store, make_settings({"alert_rules": rules}), SimClock(T0))

    # Act: fresh data with a null var section; then prices older than bt's stale limit
    engine.evaluate("main", snapshot("main", T0, var=None, backtest=None), T0)
    fresh = {a["rule_id"]: a["stale"] for a in engine.active_alerts("main")}
    engine.evaluate("main", snapshot("main", T0 + 31, market_ts=T0, backtest=None), T0 + 31)
    stale = {a["rule_id"]: a["stale"] for a in engine.active_alerts("main")}

    # Assert
    assert fresh == {"var": True}
    assert stale["bt"] is True


def _strip(node: Any) -> Any:
    return strip_volatile(node, VOLATILE)


def _state(store: Store) -> dict[str, Any]:
    keys = PortfolioKeys("main")
    return {
        "alerts": _strip(store.read_active_alerts("main")),
        "timers": store.read_json_hash(Store.alert_eval_key("main")),
        "log": [(r["event"], r["rule_id"]) for r in store.read_stream_json(keys.alert_log, count=1000)],
        "outbox": len(store.read_field_names(Store.outbox_key("main"))),
    }


def test_batched_and_one_by_one_evaluation_agree_on_null_backtest_sections(
    redis_client: redis.Redis, redis_server: Any, make_settings: Any
) -> None:
    # Arrange: the same rules on two databases of one server; one engine per path
    rules = [
        rule("bt_fire", "backtest.zone", ">=", 1, "HIGH", stale_policy="fire", clear_seconds=2),
        rule("bt_keep", "backtest.exceedances", ">", 4, "MEDIUM", pending_seconds=1),
        rule("var", "var.utilization", ">=", 1.0, "HIGH", stale_policy="fire"),
    ]
    settings = make_settings({"alert_rules": rules})
    other = redis.Redis.from_url(redis_server.url, db=1, socket_timeout=10)
    single_store, batch_store = Store(redis_client), Store(other)
    single = build_alert_engine(single_store, settings, SimClock(T0))
    batched = build_alert_engine(batch_store, settings, SimClock(T0))
    steps: list[tuple[float, dict[str, Any] | None]] = [
        (0.0, {"backtest": None}),
        (1.0, {"backtest": {"zone": 2, "exceedances": 9}}),
        (2.0, None),  # a timers tick: pending period of bt_keep completes
        (3.0, {"backtest": None}),
        (4.0, None),
        (6.0, None),  # clear period of bt_fire completes
        (7.0, {"backtest": {"zone": None, "exceedances": None}}),
        (8.0, {"backtest": None, "var": None}),
        (100.0, None),  # the last snapshot's data goes stale
    ]
    single_transitions, batched_transitions = [], []
    last: dict[str, Any] = {}
    try:
        # Act
        for offset, overrides in steps:
            now = T0 + offset
            if overrides is not None:
                last = snapshot("main", now, **overrides)
                single_transitions.append(_strip(single.evaluate("main", last, now)))
                batched_transitions.append(_strip(batched.evaluate_many({"main": dict(last)}, now).get("main", [])))
            else:  # tick() re-evaluates the newest snapshot at now
                single_transitions.append(_strip(single.evaluate("main", last, now)))
                batched_transitions.append(_strip(batched.tick(now)["transitions"]))
            # Assert: the same state after every step
            assert _state(batch_store) == _state(single_store), f"at +{offset} s"
        assert batched_transitions == single_transitions
        events = [t for step in single_transitions for t in step]
        assert {(t["event"], t["rule_id"]) for t in events} >= {
            ("TRIGGERED", "bt_fire"), ("TRIGGERED", "bt_keep"), ("RESOLVED", "bt_fire"), ("RESOLVED", "bt_keep"),
            ("TRIGGERED", "var"),
        }  # fmt: skip
    finally:
        other.close()
