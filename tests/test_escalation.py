"""Escalation on a real Redis with an injected clock: levels on schedule, acknowledge stops, resolve cancels,
acknowledge timeout re-escalates, repeat reminders, and a restart in the middle of it all."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from engine.errors import ConfigError
from engine.store import Store
from logic.escalation import escalation_config
from notifications.service import build_delivering_engine as build_alert_engine

from .alerts_support import T0, SimClock, SleepRecorder, rule, smtp_server, snapshot

VAR_CRIT = rule("var_breach", "var.utilization", ">=", 1.0, "CRITICAL", description="VaR above its limit")
RECIPIENTS = {"desk": {"email": "desk@test.local"}, "boss": {"email": "boss@test.local"}}
POLICY = [
    {"delay_seconds": 0, "recipients": ["desk"], "channels": ["log", "email"]},
    {"delay_seconds": 300, "recipients": ["boss"], "channels": ["email"]},
]


def build(
    store: Store, make_settings: Any, clock: SimClock, env: dict[str, str] | None = None, **notifications: Any
):
    settings = make_settings(
        {
            "alert_rules": [VAR_CRIT],
            "notifications": {
                "group_wait_seconds": 0,
                "group_interval_seconds": 0,
                "recipients": RECIPIENTS,
                **notifications,
            },
            "escalation": {"ack_timeout_seconds": 600, "CRITICAL": POLICY},
        }
    )
    return build_alert_engine(store, settings, clock=clock, env=env or {}, sleep=SleepRecorder())


def run(engine: Any, clock: SimClock, until: float, breach: bool = True, step: float = 10.0) -> None:
    """Snapshots and ticks every ``step`` seconds of simulated time up to ``until`` (relative to T0)."""
    while clock.now < T0 + until:
        clock.advance(step)
        engine.evaluate("main", snapshot(now=clock.now, var__utilization=1.2 if breach else 0.5), clock.now)
        engine.tick(clock.now)


def events_sent(engine: Any) -> list[dict[str, Any]]:
    """Each notification event once (whatever the channels and their outcome), oldest first."""
    seen: dict[str, dict[str, Any]] = {}
    for record in reversed(engine.delivery_log("main", count=10_000)):
        for event in record["events"]:
            seen.setdefault(event["event_id"], event)
    return list(seen.values())


def levels_sent(engine: Any) -> list[tuple[str, Any]]:
    return [(e["kind"], e["level"]) for e in events_sent(engine)]


def test_levels_fire_on_schedule_until_acknowledged(store: Store, make_settings) -> None:
    clock = SimClock(T0 - 10)
    engine = build(store, make_settings, clock)
    run(engine, clock, 0)
    assert levels_sent(engine) == [("triggered", 0)]
    run(engine, clock, 290)
    assert levels_sent(engine) == [("triggered", 0)]
    run(engine, clock, 300)
    assert levels_sent(engine) == [("triggered", 0), ("escalated", 1)]
    (alert,) = engine.active_alerts("main")
    assert alert["escalation_level"] == 2 and alert["next_escalation_at"] is None
    assert [h["event"] for h in reversed(engine.alert_history("main"))] == ["TRIGGERED", "ESCALATED"]


def test_acknowledging_stops_the_escalation(store: Store, make_settings) -> None:
    clock = SimClock(T0 - 10)
    engine = build(store, make_settings, clock)
    run(engine, clock, 100)
    engine.acknowledge("main", "var_breach", actor="alice")
    run(engine, clock, 590)
    assert levels_sent(engine) == [("triggered", 0)]


def test_resolving_cancels_the_escalation_with_one_resolved_message(store: Store, make_settings) -> None:
    clock = SimClock(T0 - 10)
    engine = build(store, make_settings, clock)
    run(engine, clock, 100)
    engine.resolve("main", "var_breach", actor="alice")
    run(engine, clock, 1000, breach=False)
    assert levels_sent(engine) == [("triggered", 0), ("resolved", None)]


def test_the_resolved_message_goes_to_every_level_that_was_told(store: Store, make_settings) -> None:
    clock = SimClock(T0 - 10)
    with smtp_server() as (server, env):
        engine = build(store, make_settings, clock, env)
        run(engine, clock, 300)
        run(engine, clock, 320, breach=False)
    rcpts = Counter(tuple(m.rcpt_tos) for m in server.messages)
    assert rcpts == {("desk@test.local",): 2, ("boss@test.local",): 2}


def test_an_acknowledged_alert_still_active_after_the_timeout_re_escalates(
    store: Store, make_settings
) -> None:
    clock = SimClock(T0 - 10)
    engine = build(store, make_settings, clock)
    run(engine, clock, 100)
    engine.acknowledge("main", "var_breach", actor="alice")
    run(engine, clock, 690)
    assert levels_sent(engine) == [("triggered", 0)]
    run(engine, clock, 700)  # acknowledged at T0+100, timeout 600 s
    (alert,) = engine.active_alerts("main")
    assert alert["status"] == "TRIGGERED" and alert["acknowledged_by"] == "alice"
    reminder = events_sent(engine)[-1]
    assert (reminder["kind"], reminder["level"]) == ("acknowledged_reminder", 0)
    run(engine, clock, 1000)
    assert levels_sent(engine)[-1] == ("escalated", 1)
    history = [h["event"] for h in reversed(engine.alert_history("main"))]
    assert history == ["TRIGGERED", "ACKNOWLEDGED", "REESCALATED", "ESCALATED"]


def test_an_unacknowledged_alert_is_repeated_at_the_repeat_interval(store: Store, make_settings) -> None:
    clock = SimClock(T0 - 10)
    engine = build(store, make_settings, clock, repeat_interval_seconds=1000)
    run(engine, clock, 2000)
    # triggered at T0, escalated at +300, then a reminder 1000 s after the last message, to both levels
    assert levels_sent(engine) == [("triggered", 0), ("escalated", 1), ("triggered", None)]
    reminders = [r for r in engine.delivery_log("main") if r["events"][0]["level"] is None]
    assert sorted(r["recipient"] for r in reminders) == ["boss", "desk", "log"]
    assert {r["ts"] for r in reminders} == {T0 + 1300}
    engine.acknowledge("main", "var_breach", actor="alice")
    run(engine, clock, 2500)
    assert len(levels_sent(engine)) == 3


def test_a_restart_in_the_middle_of_an_escalation_sends_nothing_twice_and_keeps_the_schedule(
    store: Store, make_settings
) -> None:
    clock = SimClock(T0 - 10)
    with smtp_server() as (server, env):
        first = build(store, make_settings, clock, env)
        run(first, clock, 100)
        assert [m.rcpt_tos for m in server.messages] == [["desk@test.local"]]
        del first  # the monitor stops while the alert is active and level 2 is pending

        clock.advance(60)  # down for a minute
        second = build(store, make_settings, clock, env)
        run(second, clock, 290)
        assert [m.rcpt_tos for m in server.messages] == [["desk@test.local"]]
        run(second, clock, 300)
        assert [m.rcpt_tos for m in server.messages] == [["desk@test.local"], ["boss@test.local"]]
        assert server.messages[1].content.decode().count("ESCALATED to level 2") == 1

        third = build(store, make_settings, clock, env)  # and once more, after the escalation
        run(third, clock, 600)
    assert len(server.messages) == 2
    emails = [r for r in third.delivery_log("main") if r["channel"] == "email"]
    assert sorted((r["recipient"], r["ts"]) for r in emails) == [("boss", T0 + 300), ("desk", T0)]


def test_escalation_settings_are_validated() -> None:
    names = {"desk"}
    with pytest.raises(ConfigError, match=r"\['nobody'\] not defined in \[notifications.recipients\]"):
        escalation_config(
            {"escalation": {"HIGH": [{"recipients": ["nobody"], "channels": ["email"]}]}}, names
        )
    with pytest.raises(ConfigError, match="must not decrease"):
        escalation_config(
            {
                "escalation": {
                    "HIGH": [
                        {"delay_seconds": 60, "channels": ["log"]},
                        {"delay_seconds": 30, "channels": ["log"]},
                    ]
                }
            },
            names,
        )
    with pytest.raises(ConfigError, match="pager"):
        escalation_config({"escalation": {"HIGH": [{"recipients": ["desk"], "channels": ["pager"]}]}}, names)
    with pytest.raises(ConfigError, match="unknown setting"):
        escalation_config({"escalation": {"URGENT": []}}, names)
    with pytest.raises(ConfigError, match="need recipients"):
        escalation_config({"escalation": {"HIGH": [{"channels": ["email"]}]}}, names)
    config = escalation_config({}, names)
    assert config.policy("CRITICAL").levels[0].channels == ("log",) and config.ack_timeout_seconds == 0
