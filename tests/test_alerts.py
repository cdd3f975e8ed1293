"""Alert rules and lifecycle on a real Redis: validation, audited edits, pending/clear, inhibition, stale
data, flapping and storms, restarts."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConfigError
from engine.records import MAX_ACTOR_LENGTH
from engine.settings import load_settings
from engine.store import GLOBAL_AUDIT_KEY, PortfolioKeys, Store
from logic.lifecycle import MANUAL_RESOLVE_REARM_SECONDS
from logic.rules import (
    AlertChangedError,
    AlertError,
    AlertNotFoundError,
    RuleExistsError,
    RuleNotFoundError,
    RuleValidationError,
    validate_rule,
)
from notifications.service import build_delivering_engine

from .alerts_support import T0, SimClock, SleepRecorder, delivered_events, rule, snapshot

ROOT = Path(__file__).resolve().parent.parent

VAR_WARN = rule(
    "var_warning", "var.utilization", ">=", 0.8, "MEDIUM", description="VaR above 80% of its limit"
)
VAR_CRIT = rule("var_breach", "var.utilization", ">=", 1.0, "CRITICAL", description="VaR above its limit")


def make_engine(store: Store, make_settings: Any, rules: list[dict[str, Any]], clock: SimClock, **extra: Any):
    notifications = {"group_wait_seconds": 0, "group_interval_seconds": 0, **extra.pop("notifications", {})}
    settings = make_settings(
        {"alert_rules": rules, "notifications": notifications, "escalation": extra.pop("escalation", {})}
    )
    return build_delivering_engine(store, settings, clock=clock, env={}, sleep=SleepRecorder(), **extra)


# -- rules ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"metric": "var.utilisation"},
            r"unknown metric path 'var.utilisation'.*did you mean 'var.utilization'",
        ),
        ({"metric": "positions"}, r"unknown metric path 'positions'"),
        ({"op": "=>"}, r"bad operator '=>'; use one of < <= > >= =="),
        ({"threshold": math.nan}, r"threshold must be a finite number, got nan"),
        ({"threshold": "abc"}, r"threshold must be a number"),
        ({"severity": "URGENT"}, r"severity 'URGENT'"),
        ({"pending_seconds": -1}, r"pending_seconds must be >= 0"),
        ({"stale_policy": "ignore"}, r"stale_policy 'ignore'"),
        ({"actions": ["set_state:ACTIVE"]}, r"may set only REDUCING or HALTED"),
        ({"actions": ["reduce:1.5"]}, r"fraction must be in \(0, 1\]"),
        ({"portfolios": ["*", "main"]}, r"cannot be combined"),
        ({"colour": "red"}, r"unknown rule field\(s\) \['colour'\]"),
        ({"id": "bad id!"}, r"rule id 'bad id!'"),
    ],
)
def test_validate_rule_refuses_bad_fields_with_a_clear_message(change: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleValidationError, match=message):
        validate_rule({**VAR_WARN, **change})


def test_validate_rule_accepts_every_documented_field_and_normalises_actions() -> None:
    built = validate_rule(
        {
            **VAR_CRIT,
            "pending_seconds": 5,
            "clear_seconds": 30,
            "stale_policy": "fire",
            "portfolios": ["main"],
            "actions": ["set_state:halted", "reduce:0.25"],
        }
    )
    assert built.actions == ("set_state:HALTED", "reduce:0.25")
    assert built.portfolios == ("main",) and built.pending_seconds == 5.0 and built.stale_policy == "fire"


def test_shipped_riskdesk_toml_rules_build_an_engine_with_the_default_alerts(store: Store) -> None:
    settings = load_settings(ROOT / "riskdesk.toml", env={})
    engine = build_delivering_engine(store, settings, env={})
    ids = {r["id"] for r in engine.list_rules()}
    assert {
        "var_warning",
        "var_breach",
        "drawdown_reduce",
        "drawdown_halt",
        "concentration",
        "margin_warning",
        "margin_critical",
        "stale_market_data",
    } <= ids
    assert engine.escalation.policy("CRITICAL").levels[1].delay_seconds == 300


def test_an_invalid_rule_in_the_settings_is_refused_when_the_engine_is_built(
    store: Store, make_settings
) -> None:
    settings = make_settings({"alert_rules": [rule("x", "var.var96", ">", 1.0, "LOW")]})
    with pytest.raises(ConfigError, match=r"alert_rules 'x': unknown metric path 'var.var96'"):
        build_delivering_engine(store, settings, env={})


def test_rule_edits_are_validated_audited_and_seen_by_every_engine(store: Store, make_settings) -> None:
    clock = SimClock()
    engine = make_engine(store, make_settings, [VAR_WARN], clock)
    other = make_engine(store, make_settings, [VAR_WARN], clock)  # e.g. the dashboard's engine

    engine.add_rule(rule("lev", "leverage", ">", 3.0, "HIGH"), actor="alice", reason="new desk rule")
    engine.update_rule("var_warning", {"threshold": 0.85}, actor="bob")
    with pytest.raises(RuleValidationError, match="finite"):
        engine.update_rule("var_warning", {"threshold": math.nan}, actor="bob")
    with pytest.raises(RuleExistsError):
        engine.add_rule(rule("lev", "leverage", ">", 2.0, "HIGH"), actor="alice")
    with pytest.raises(AlertError, match="actor"):
        engine.add_rule(rule("lev2", "leverage", ">", 2.0, "HIGH"), actor=" ")

    engine.evaluate("main", snapshot(var__utilization=0.9), T0)
    assert engine.active_alerts("main")[0]["threshold"] == 0.85
    engine.update_rule("var_warning", {"threshold": 0.88, "description": "tighter"}, actor="bob")
    engine.evaluate("main", snapshot(var__utilization=0.9), T0 + 1)  # the active alert shows the edit
    assert [(a["threshold"], a["description"]) for a in engine.active_alerts("main")] == [(0.88, "tighter")]
    engine.update_rule(
        "var_warning", {"threshold": 0.85, "description": VAR_WARN["description"]}, actor="bob"
    )
    listed = {r["id"]: r for r in other.list_rules()}
    assert listed["var_warning"]["threshold"] == 0.85 and listed["var_warning"]["source"] == "edited"
    assert listed["lev"]["source"] == "runtime"
    assert other.get_rule("var_warning").threshold == 0.85

    engine.remove_rule("var_warning", actor="carol")
    assert {r["id"]: r["source"] for r in other.list_rules()}["var_warning"] == "removed"
    with pytest.raises(RuleNotFoundError):
        other.get_rule("var_warning")
    engine.reset_rule("var_warning", actor="carol")
    assert other.get_rule("var_warning").threshold == 0.8
    engine.remove_rule("lev", actor="carol")
    assert "lev" not in {r["id"] for r in other.list_rules()}

    audit = store.read_stream_json(GLOBAL_AUDIT_KEY, count=20, newest_first=False)
    assert [(a["action"], a["rule_id"], a["actor"]) for a in audit] == [
        ("rule_added", "lev", "alice"),
        ("rule_updated", "var_warning", "bob"),
        ("rule_updated", "var_warning", "bob"),
        ("rule_updated", "var_warning", "bob"),
        ("rule_removed", "var_warning", "carol"),
        ("rule_reset", "var_warning", "carol"),
        ("rule_removed", "lev", "carol"),
    ]
    assert audit[1]["before"]["threshold"] == 0.8 and audit[1]["after"]["threshold"] == 0.85
    assert audit[0]["reason"] == "new desk rule"


# -- lifecycle -----------------------------------------------------------------------------------------------


def test_pending_period_delays_the_trigger_and_clear_period_delays_resolution(
    store: Store, make_settings
) -> None:
    clock = SimClock()
    engine = make_engine(
        store, make_settings, [{**VAR_WARN, "pending_seconds": 30, "clear_seconds": 60}], clock
    )
    for t in range(0, 30):
        engine.evaluate("main", snapshot(now=T0 + t, var__utilization=0.9), T0 + t)
    assert engine.active_alerts("main") == []
    assert [
        t["event"] for t in engine.evaluate("main", snapshot(now=T0 + 30, var__utilization=0.9), T0 + 30)
    ] == ["TRIGGERED"]
    (alert,) = engine.active_alerts("main")
    assert (alert["breach_since"], alert["triggered_at"], alert["value"]) == (T0, T0 + 30, 0.9)

    for t in range(40, 100):
        engine.evaluate("main", snapshot(now=T0 + t, var__utilization=0.5), T0 + t)
    assert len(engine.active_alerts("main")) == 1
    engine.evaluate("main", snapshot(now=T0 + 100, var__utilization=0.5), T0 + 100)
    assert engine.active_alerts("main") == []
    (resolved,) = engine.list_alerts("main", status="RESOLVED")
    assert (resolved["resolved_at"], resolved["resolved_by"], resolved["value"]) == (T0 + 100, "auto", 0.5)


def test_tick_completes_a_pending_period_without_a_new_snapshot(store: Store, make_settings) -> None:
    clock = SimClock()
    engine = make_engine(store, make_settings, [{**VAR_WARN, "pending_seconds": 30}], clock)
    engine.evaluate("main", snapshot(now=T0, var__utilization=0.9), T0)
    assert engine.tick(T0 + 29)["transitions"] == []
    assert [t["event"] for t in engine.tick(T0 + 30)["transitions"]] == ["TRIGGERED"]


@pytest.mark.parametrize("length", [119, MAX_ACTOR_LENGTH])  # an Entra ID issuer|subject, and the cap
def test_a_signed_in_actor_of_a_real_identity_provider_may_acknowledge_and_resolve(
    store: Store, make_settings: Any, length: int
) -> None:
    actor = ("https://login.microsoftonline.com/tenant/v2.0|" + "s" * length)[:length]
    engine = make_engine(store, make_settings, [VAR_CRIT], SimClock())
    engine.evaluate("main", snapshot(var__utilization=1.2), T0)
    with pytest.raises(AlertError, match="at most"):
        engine.acknowledge("main", "var_breach", actor="s" * (MAX_ACTOR_LENGTH + 1))  # one character over the cap
    assert engine.acknowledge("main", "var_breach", actor=actor)["acknowledged_by"] == actor
    assert engine.resolve("main", "var_breach", actor=actor)["resolved_by"] == actor


def test_acknowledge_and_resolve_record_who_and_when_and_the_history(store: Store, make_settings) -> None:
    clock = SimClock()
    engine = make_engine(store, make_settings, [VAR_CRIT], clock)
    engine.evaluate("main", snapshot(var__utilization=1.2), T0)
    clock.now = T0 + 10
    acked = engine.acknowledge("main", "var_breach", actor="alice", note="looking")
    assert (acked["status"], acked["acknowledged_by"], acked["acknowledged_at"], acked["ack_note"]) == (
        "ACKNOWLEDGED",
        "alice",
        T0 + 10,
        "looking",
    )
    clock.now = T0 + 20
    resolved = engine.resolve("main", "var_breach", actor="bob", note="hedged")
    assert (resolved["status"], resolved["resolved_by"], resolved["resolved_at"]) == (
        "RESOLVED",
        "bob",
        T0 + 20,
    )
    assert engine.active_alerts("main") == []
    with pytest.raises(AlertNotFoundError):
        engine.resolve("main", "var_breach", actor="bob")
    with pytest.raises(AlertNotFoundError):
        engine.acknowledge("main", "var_breach", actor="alice")

    history = list(reversed(engine.alert_history("main")))
    assert [(h["event"], h["actor"]) for h in history] == [
        ("TRIGGERED", "system"),
        ("ACKNOWLEDGED", "alice"),
        ("RESOLVED", "bob"),
    ]
    assert len({h["alert_id"] for h in history}) == 1
    engine.tick(T0 + 21)
    kinds = [e["kind"] for e in delivered_events(engine)]
    assert kinds == ["triggered", "resolved"]  # one resolved message, from the manual resolve


def test_a_breach_that_persists_after_a_manual_resolve_fires_again_after_its_pending_period(
    store: Store, make_settings
) -> None:
    clock = SimClock()
    engine = make_engine(store, make_settings, [{**VAR_WARN, "pending_seconds": 20}], clock)
    for t in (0, 20):
        engine.evaluate("main", snapshot(var__utilization=0.9), T0 + t)
    clock.now = T0 + 25
    first = engine.resolve("main", "var_warning", actor="bob")
    engine.evaluate("main", snapshot(now=T0 + 26, var__utilization=0.9), T0 + 26)
    engine.tick(T0 + 84)
    assert engine.active_alerts("main") == []
    engine.tick(T0 + 25 + MANUAL_RESOLVE_REARM_SECONDS)
    (again,) = engine.active_alerts("main")
    assert again["alert_id"] != first["alert_id"] and again["triggered_at"] == T0 + 85


def test_exactly_one_active_alert_per_rule_and_portfolio(store: Store, make_settings) -> None:
    clock = SimClock()
    engine = make_engine(store, make_settings, [VAR_WARN], clock)
    for t in range(50):
        engine.evaluate("main", snapshot(var__utilization=0.9 + t / 1000), T0 + t)
        engine.evaluate("hedge", snapshot("hedge", var__utilization=0.95), T0 + t)
    active = engine.active_alerts()
    assert sorted((a["portfolio_id"], a["rule_id"]) for a in active) == [
        ("hedge", "var_warning"),
        ("main", "var_warning"),
    ]
    assert next(a for a in active if a["portfolio_id"] == "main")["value"] == pytest.approx(0.949)
    assert Counter(h["event"] for h in engine.alert_history("main")) == {"TRIGGERED": 1}


def test_a_critical_alert_inhibits_lower_severities_on_the_same_metric_only(
    store: Store, make_settings
) -> None:
    clock = SimClock()
    conc = rule("conc", "concentration.largest_share", ">", 0.3, "MEDIUM")
    engine = make_engine(store, make_settings, [VAR_WARN, VAR_CRIT, conc], clock)
    engine.evaluate("main", snapshot(var__utilization=1.2, concentration__largest_share=0.5), T0)
    engine.tick(T0)
    active = {a["rule_id"]: a for a in engine.active_alerts("main")}
    assert set(active) == {"var_warning", "var_breach", "conc"}
    assert active["var_warning"]["inhibited"] and not active["conc"]["inhibited"]
    assert sorted(e["rule_id"] for e in delivered_events(engine)) == ["conc", "var_breach"]

    engine.evaluate("main", snapshot(var__utilization=0.9, concentration__largest_share=0.5), T0 + 5)
    engine.tick(T0 + 5)
    assert {a["rule_id"]: a["inhibited"] for a in engine.active_alerts("main")} == {
        "var_warning": False,
        "conc": False,
    }
    later = delivered_events(engine)[2:]
    assert sorted((e["kind"], e["rule_id"]) for e in later) == [
        ("resolved", "var_breach"),
        ("triggered", "var_warning"),
    ]


def test_stale_data_keeps_the_state_or_fires_a_stale_alert_as_the_rule_says(
    store: Store, make_settings
) -> None:
    clock = SimClock()
    keep = {**VAR_WARN, "stale_after_seconds": 30}
    fire = rule("dd", "drawdown.daily", "<=", -0.03, "HIGH", stale_after_seconds=30, stale_policy="fire")
    engine = make_engine(store, make_settings, [keep, fire], clock)
    engine.evaluate("main", snapshot(var__utilization=0.9), T0)
    assert [a["rule_id"] for a in engine.active_alerts("main")] == ["var_warning"]

    stale = snapshot(now=T0 + 100, market_ts=T0 + 40, var__utilization=0.1)  # prices 60 s old
    engine.evaluate("main", stale, T0 + 100)
    active = {a["rule_id"]: a for a in engine.active_alerts("main")}
    assert active["var_warning"]["value"] == 0.9  # held, not resolved on stale numbers
    assert active["dd"]["stale"] is True and active["dd"]["value"] is None

    engine.evaluate("main", snapshot(now=T0 + 101, var__utilization=0.1), T0 + 101)
    assert engine.active_alerts("main") == []


def test_a_snapshot_that_stops_arriving_goes_stale_through_tick(store: Store, make_settings) -> None:
    clock = SimClock()
    fire = rule(
        "age", "data.market_age_seconds", ">", 30, "HIGH", stale_after_seconds=60, stale_policy="fire"
    )
    engine = make_engine(store, make_settings, [fire], clock)
    engine.evaluate("main", snapshot(now=T0), T0)
    assert engine.tick(T0 + 60)["transitions"] == []
    (event,) = engine.tick(T0 + 61)["transitions"]
    assert (event["event"], event["rule_id"]) == ("TRIGGERED", "age")


def test_null_margin_level_never_breaches_and_other_nulls_follow_the_stale_policy(
    store: Store, make_settings
) -> None:
    clock = SimClock()
    margin = rule("margin", "margin.level", "<", 150, "HIGH")
    lev = rule("lev", "leverage", ">", 2.0, "HIGH", stale_policy="fire")
    engine = make_engine(store, make_settings, [margin, lev], clock)
    engine.evaluate("main", snapshot(margin__level=None, leverage=None), T0)
    (alert,) = engine.active_alerts("main")
    assert (alert["rule_id"], alert["stale"]) == ("lev", True)
    engine.evaluate("hedge", snapshot("hedge", margin__level=140.0), T0)
    assert [a["rule_id"] for a in engine.active_alerts("hedge")] == ["margin"]


def test_rules_apply_only_to_their_portfolios(store: Store, make_settings) -> None:
    clock = SimClock()
    engine = make_engine(store, make_settings, [{**VAR_WARN, "portfolios": ["hedge"]}], clock)
    engine.evaluate("main", snapshot(var__utilization=0.9), T0)
    engine.evaluate("hedge", snapshot("hedge", var__utilization=0.9), T0)
    assert [a["portfolio_id"] for a in engine.active_alerts()] == ["hedge"]


def test_removing_a_rule_resolves_its_active_alert(store: Store, make_settings) -> None:
    clock = SimClock()
    engine = make_engine(store, make_settings, [VAR_WARN], clock)
    engine.evaluate("main", snapshot(var__utilization=0.9), T0)
    engine.remove_rule("var_warning", actor="alice")
    engine.evaluate("main", snapshot(var__utilization=0.9), T0 + 1)
    (resolved,) = engine.list_alerts("main", status="RESOLVED")
    assert resolved["resolve_reason"].startswith("rule removed") and resolved["resolved_by"] == "system"
    assert store.read_json_hash(Store.alert_eval_key("main")) == {}


def test_list_alerts_filters_by_status_severity_rule_portfolio_and_time(store: Store, make_settings) -> None:
    clock = SimClock()
    engine = make_engine(store, make_settings, [VAR_WARN, VAR_CRIT], clock)
    engine.evaluate("main", snapshot(var__utilization=1.5), T0)
    engine.evaluate("hedge", snapshot("hedge", var__utilization=0.9), T0 + 1)
    engine.evaluate("main", snapshot(var__utilization=0.1), T0 + 2)
    assert {(a["portfolio_id"], a["rule_id"], a["status"]) for a in engine.list_alerts()} == {
        ("main", "var_warning", "RESOLVED"),
        ("main", "var_breach", "RESOLVED"),
        ("hedge", "var_warning", "TRIGGERED"),
    }
    assert [a["rule_id"] for a in engine.list_alerts(severity="CRITICAL")] == ["var_breach"]
    assert [a["portfolio_id"] for a in engine.list_alerts(status=["TRIGGERED", "ACKNOWLEDGED"])] == ["hedge"]
    assert [a["rule_id"] for a in engine.list_alerts("main", rule_id="var_warning")] == ["var_warning"]
    assert [a["portfolio_id"] for a in engine.list_alerts(since=T0 + 1, status="TRIGGERED")] == ["hedge"]


# -- flapping, storms, restarts ------------------------------------------------------------------------------


def test_a_metric_flapping_for_ten_minutes_sends_one_triggered_and_one_resolved(
    store: Store, make_settings
) -> None:
    clock = SimClock()
    flappy = {**VAR_WARN, "pending_seconds": 30, "clear_seconds": 30}
    engine = make_engine(store, make_settings, [flappy], clock, notifications={"group_interval_seconds": 60})
    t = 0
    # oscillating from the start: never held for the pending period, so never fires
    for t in range(600):
        engine.evaluate("main", snapshot(now=T0 + t, var__utilization=0.81 if t % 2 == 0 else 0.79), T0 + t)
        engine.tick(T0 + t)
    assert delivered_events(engine) == [] and engine.active_alerts("main") == []
    # a real breach, then ten minutes of oscillation around the threshold, then a real recovery
    start = 600
    for t in range(start, start + 60):
        engine.evaluate("main", snapshot(now=T0 + t, var__utilization=0.85), T0 + t)
        engine.tick(T0 + t)
    for t in range(start + 60, start + 660):
        engine.evaluate("main", snapshot(now=T0 + t, var__utilization=0.81 if t % 2 == 0 else 0.79), T0 + t)
        engine.tick(T0 + t)
    for t in range(start + 660, start + 800):
        engine.evaluate("main", snapshot(now=T0 + t, var__utilization=0.5), T0 + t)
        engine.tick(T0 + t)
    assert Counter(e["kind"] for e in delivered_events(engine)) == {"triggered": 1, "resolved": 1}
    assert Counter(h["event"] for h in engine.alert_history("main")) == {"TRIGGERED": 1, "RESOLVED": 1}


def test_a_storm_of_breaches_sends_one_message_per_group_interval(store: Store, make_settings) -> None:
    clock = SimClock()
    twitchy = {**VAR_WARN, "pending_seconds": 0, "clear_seconds": 0}
    interval = 2.0
    engine = make_engine(
        store, make_settings, [twitchy], clock, notifications={"group_interval_seconds": interval}
    )
    for i in range(2000):  # 1,000 breaches (and 1,000 recoveries) in 10 s
        now = T0 + i * 0.005
        engine.evaluate("main", snapshot(now=now, var__utilization=0.9 if i % 2 == 0 else 0.5), now)
        if i % 10 == 9:  # the monitor ticks every loop; here every 50 ms of simulated time
            engine.tick(now)
    engine.tick(T0 + 10 + interval)
    messages = engine.delivery_log("main", count=10_000, channel="log", status="delivered")
    sent_at = sorted(m["ts"] for m in messages)
    assert len(messages) <= math.ceil(10 / interval) + 1
    assert all(b - a >= interval for a, b in zip(sent_at, sent_at[1:], strict=False))
    # grouped, not dropped: every transition is in exactly one message
    assert sum(m["event_count"] for m in messages) == 2000
    assert Counter(h["event"] for h in engine.alert_history("main", count=5000)) == {
        "TRIGGERED": 1000,
        "RESOLVED": 1000,
    }


def test_a_new_engine_on_the_same_redis_loses_nothing_and_sends_nothing_twice(
    store: Store, make_settings
) -> None:
    clock = SimClock()
    first = make_engine(store, make_settings, [VAR_CRIT, {**VAR_WARN, "clear_seconds": 30}], clock)
    first.evaluate("main", snapshot(var__utilization=1.1), T0)  # queued, not yet flushed: then "crash"
    del first

    second = make_engine(store, make_settings, [VAR_CRIT, {**VAR_WARN, "clear_seconds": 30}], clock)
    assert {a["rule_id"] for a in second.active_alerts("main")} == {"var_breach", "var_warning"}
    second.tick(T0 + 1)
    second.tick(T0 + 2)
    third = make_engine(store, make_settings, [VAR_CRIT, {**VAR_WARN, "clear_seconds": 30}], clock)
    third.tick(T0 + 3)
    assert [(e["kind"], e["rule_id"]) for e in delivered_events(third)] == [("triggered", "var_breach")]
    assert third.pending_notifications("main") == 0

    third.evaluate("main", snapshot(var__utilization=0.5), T0 + 10)  # clear timer starts, in Redis
    fourth = make_engine(store, make_settings, [VAR_CRIT, {**VAR_WARN, "clear_seconds": 30}], clock)
    fourth.evaluate("main", snapshot(var__utilization=0.5), T0 + 39)
    assert [a["rule_id"] for a in fourth.active_alerts("main")] == ["var_warning"]
    fourth.evaluate("main", snapshot(var__utilization=0.5), T0 + 40)
    fourth.tick(T0 + 41)
    assert fourth.active_alerts("main") == []
    # the warning was inhibited while it mattered and already clearing when the CRITICAL ended: never sent
    assert [(e["kind"], e["rule_id"]) for e in delivered_events(fourth)] == [
        ("triggered", "var_breach"),
        ("resolved", "var_breach"),
    ]
    events = [h["event"] for h in reversed(fourth.alert_history("main"))]
    assert Counter(events) == {"TRIGGERED": 2, "INHIBITED": 1, "UNINHIBITED": 1, "RESOLVED": 2}


def test_tick_reads_only_the_stored_snapshots_newer_than_the_ones_it_holds(store: Store, make_settings) -> None:
    # Arrange: 40 portfolios whose snapshots (30 positions each) the engine evaluated and the monitor stored
    clock = SimClock()
    engine = make_engine(store, make_settings, [{**VAR_WARN, "pending_seconds": 30}], clock)
    positions = [{"ticker": f"T{k:03d}", "qty": k, "last": 100.0 + k, "market_value": 1e3 * k} for k in range(30)]
    pids = [f"p{k:02d}" for k in range(40)]
    stored = 0
    for pid in pids:
        snap = {**snapshot(pid, now=T0, var__utilization=0.9), "positions": positions}
        engine.evaluate(pid, snap, T0)
        store.record_snapshot(pid, snap, {"equity": 1e6}, ts=T0, retention_seconds=3600, max_points=100)
        stored += len(store.client.get(PortfolioKeys(pid).snapshot))  # type: ignore[arg-type]

    def sent_by_redis(action: Any) -> tuple[Any, int]:
        before = int(store.client.info("stats")["total_net_output_bytes"])
        result = action()
        return result, int(store.client.info("stats")["total_net_output_bytes"]) - before

    # Act: a timers tick while the stored snapshots are the ones held
    _, quiet = sent_by_redis(lambda: engine.tick(T0 + 10))
    # another writer (a restarted monitor) stores a newer snapshot of one portfolio, under the threshold
    newer = {**snapshot("p07", now=T0 + 20, var__utilization=0.5), "version": 2, "positions": positions}
    store.record_snapshot("p07", newer, {"equity": 1e6}, ts=T0 + 20, retention_seconds=3600, max_points=100)
    _, one = sent_by_redis(lambda: engine.tick(T0 + 20))
    engine.tick(T0 + 30)

    # Assert: the quiet tick sent none of the snapshots; the next sent the newer one only, and used it: its
    # portfolio's pending warning ended, the 39 others completed their pending period
    assert quiet < stored / 10
    size = len(store.client.get(PortfolioKeys("p07").snapshot))  # type: ignore[arg-type]
    assert size <= one < size + stored / 10
    assert {pid for pid in pids if store.read_active_alerts(pid)} == set(pids) - {"p07"}


def test_a_quiet_portfolio_is_planned_again_when_its_data_goes_stale_a_rule_changes_or_its_limit_moves(
    store: Store, make_settings
) -> None:
    # Arrange: a fresh snapshot under every threshold, evaluated once: nothing stored, nothing changed (quiet)
    clock = SimClock()
    stale_fire = rule("stale", "leverage", ">", 5.0, "HIGH", stale_after_seconds=60, stale_policy="fire")
    follows = rule("var80", "var.var95", ">=", "limits.var_limit", "MEDIUM", threshold_fraction=0.8,
                   stale_after_seconds=3600)  # fmt: skip
    engine = make_engine(store, make_settings, [stale_fire, follows], clock)
    calm = snapshot(now=T0)  # leverage 0.1, var95 5,000 against a var limit of 60,000
    engine.evaluate("main", calm, T0)
    engine.tick(T0 + 1)
    assert "main" in engine.quiet and engine.active_alerts("main") == []

    # Act / Assert: 60 s after the data it is still fresh: nothing; one second later it is stale: fires
    engine.tick(T0 + 60)
    assert engine.active_alerts("main") == []
    engine.tick(T0 + 61)
    assert [a["rule_id"] for a in engine.active_alerts("main")] == ["stale"]

    # the same snapshot, quiet again for var80 ...
    store.client.delete(PortfolioKeys("main").alerts, PortfolioKeys("main").alert_eval)
    engine.update_rule("stale", {"stale_after_seconds": 3600}, actor="alice")
    engine.tick(T0 + 70)
    assert engine.active_alerts("main") == [] and "main" in engine.quiet
    # ... until a rule changes: a lower threshold breaches at the next tick
    engine.update_rule("stale", {"threshold": 0.05}, actor="alice")
    engine.tick(T0 + 71)
    assert [a["rule_id"] for a in engine.active_alerts("main")] == ["stale"]

    # ... or the limit a rule follows moves: 80% of a 6,000 limit is 4,800 <= var95 5,000
    store.client.delete(PortfolioKeys("main").alerts, PortfolioKeys("main").alert_eval)
    engine.update_rule("stale", {"threshold": 5.0}, actor="alice")
    engine.tick(T0 + 72)
    assert engine.active_alerts("main") == [] and "main" in engine.quiet
    store.change_limits("main", {"var_limit": 6000}, actor="alice", reason="test", now=T0 + 72,
                        fallback=engine.settings.limits_for("main"))  # fmt: skip
    engine.tick(T0 + 73)
    assert [a["rule_id"] for a in engine.active_alerts("main")] == ["var80"]


def test_a_scoped_engine_ticks_only_the_portfolios_in_its_scope(store: Store, make_settings) -> None:
    clock = SimClock()
    engine = make_engine(store, make_settings, [{**VAR_WARN, "pending_seconds": 30}], clock)
    for pid in ("main", "hedge"):
        engine.evaluate(pid, snapshot(pid, now=T0, var__utilization=0.9), T0)
    engine.scope = lambda ids: [pid for pid in ids if pid == "hedge"]

    engine.tick(T0 + 30)
    after_scoped = {pid for pid in ("main", "hedge") if store.read_active_alerts(pid)}
    engine.scope = None
    engine.tick(T0 + 30)

    assert after_scoped == {"hedge"}
    assert {pid for pid in ("main", "hedge") if store.read_active_alerts(pid)} == {"main", "hedge"}


def test_tick_uses_the_newest_stored_snapshot_so_a_fresh_engine_completes_a_pending_period(
    store: Store, make_settings
) -> None:
    clock = SimClock()
    pending = {**VAR_WARN, "pending_seconds": 30}
    first = make_engine(store, make_settings, [pending], clock)
    breach = snapshot(now=T0, var__utilization=0.9)
    first.evaluate("main", breach, T0)
    store.record_snapshot(
        "main", breach, {"equity": 1e6}, ts=T0, retention_seconds=3600, max_points=100
    )  # the monitor's write

    second = make_engine(store, make_settings, [pending], clock)  # restarted: has evaluated nothing yet
    assert second.tick(T0 + 29)["transitions"] == []
    assert [t["event"] for t in second.tick(T0 + 30)["transitions"]] == ["TRIGGERED"]

    newer = snapshot(now=T0 + 31, var__utilization=0.5)
    newer["version"] = 2
    store.record_snapshot("main", newer, {"equity": 1e6}, ts=T0 + 31, retention_seconds=3600, max_points=100)
    first.tick(T0 + 32)  # holds an older snapshot in memory; the stored one is newer and wins
    assert [t["event"] for t in first.alert_history("main")][:1] == ["RESOLVED"]


@pytest.mark.parametrize("action", ["acknowledge", "resolve"])
def test_acting_on_an_alert_that_fired_again_since_it_was_shown_is_refused_and_writes_nothing(
    store: Store, make_settings: Any, action: str
) -> None:
    clock = SimClock()
    engine = make_engine(store, make_settings, [VAR_CRIT], clock)
    engine.evaluate("main", snapshot(var__utilization=1.5), T0)
    shown = engine.active_alerts("main")[0]["alert_id"]
    engine.evaluate("main", snapshot(now=T0 + 10, var__utilization=0.5), T0 + 10)  # cleared (no clear period)
    engine.evaluate("main", snapshot(now=T0 + 20, var__utilization=1.5), T0 + 20)  # and fired again
    (again,) = engine.active_alerts("main")
    assert again["alert_id"] != shown
    log = store.client.xlen(PortfolioKeys("main").alert_log)

    with pytest.raises(AlertChangedError, match="fired again since it was shown") as refused:
        getattr(engine, action)("main", "var_breach", "alice", "seen", alert_id=shown)
    assert refused.value.code == "ALERT_CHANGED"
    assert engine.active_alerts("main") == [again] and store.client.xlen(PortfolioKeys("main").alert_log) == log

    done = getattr(engine, action)("main", "var_breach", "alice", "seen", alert_id=again["alert_id"])
    assert done["alert_id"] == again["alert_id"]
    assert done["status"] == ("ACKNOWLEDGED" if action == "acknowledge" else "RESOLVED")
