"""Escalation on a real Redis with an injected clock: levels on schedule, acknowledge stops, resolve cancels,
acknowledge timeout re-escalates, repeat reminders, and a restart in the middle of it all."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from engine.errors import ConfigError
from engine.store import Store
from logic import escalation
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


def test_each_level_is_reminded_and_told_of_the_resolution_by_its_own_channels_only(
    store: Store, make_settings: Any
) -> None:
    """Level 1 e-mails the desk, level 2 only logs (the boss's page is the log watcher's): the reminder and the
    resolved message reach each as its level did, so no e-mail goes to the boss, whom no level e-mails."""
    clock = SimClock(T0 - 10)
    settings = make_settings(
        {
            "alert_rules": [VAR_CRIT],
            "notifications": {
                "group_wait_seconds": 0, "group_interval_seconds": 0, "recipients": RECIPIENTS,
                "repeat_interval_seconds": 1000,
            },
            "escalation": {
                "ack_timeout_seconds": 600,
                "CRITICAL": [
                    {"delay_seconds": 0, "recipients": ["desk"], "channels": ["email"]},
                    {"delay_seconds": 300, "recipients": ["boss"], "channels": ["log"]},
                ],
            },
        }
    )  # fmt: skip
    engine = build_alert_engine(store, settings, clock=clock, env={}, sleep=SleepRecorder())
    run(engine, clock, 1400)  # both levels (0 s, 300 s), then a reminder at 1300 s
    run(engine, clock, 1420, breach=False)
    sent = [(e["kind"], r["channel"], r["recipient"])
            for r in reversed(engine.delivery_log("main", count=1000)) for e in r["events"]]  # fmt: skip
    assert sent == [
        ("triggered", "email", "desk"), ("escalated", "log", "log"),
        ("triggered", "email", "desk"), ("triggered", "log", "log"),  # the reminder, to both levels
        ("resolved", "email", "desk"), ("resolved", "log", "log"),
    ]  # fmt: skip


def test_a_told_record_stored_before_the_pairs_were_kept_is_every_recipient_by_every_channel() -> None:
    legacy = {"escalation": {"told": {"recipients": ["desk", "boss"], "channels": ["email", "log"]}}}
    assert escalation.audience(legacy, escalation.DEFAULT_POLICY) == [
        ("email", "desk"), ("email", "boss"), ("log", "log"),
    ]  # fmt: skip
    escalation.record_told(legacy, [("sms", "desk"), ("email", "desk")])
    assert legacy["escalation"]["told"] == {
        "pairs": [["email", "desk"], ["email", "boss"], ["log", "log"], ["sms", "desk"]]
    }


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


# -- inhibition: an inhibited alert tells nobody; when it ends, escalation resumes from a sensible point ----------

VAR_HIGH = rule("var_warning", "var.utilization", ">=", 0.8, "HIGH", description="VaR near its limit")
HIGH_POLICY = [
    {"delay_seconds": 0, "recipients": ["desk"], "channels": ["email"]},
    {"delay_seconds": 300, "recipients": ["boss"], "channels": ["email"]},
    {"delay_seconds": 600, "recipients": ["cro"], "channels": ["email"]},
]
WARNING, BREACH = 0.9, 1.2
"""``var.utilization`` of a snapshot that breaches only VAR_HIGH, and one that breaches VAR_CRIT too (which then
inhibits VAR_HIGH)."""


def build_inhibiting(store: Store, make_settings: Any, clock: SimClock):
    """VAR_HIGH (desk at once, boss after 300 s, cro after 600 s) under VAR_CRIT; acknowledge timeout 600 s."""
    settings = make_settings(
        {
            "alert_rules": [VAR_CRIT, VAR_HIGH],
            "notifications": {
                "group_wait_seconds": 0,
                "group_interval_seconds": 0,
                "recipients": {**RECIPIENTS, "cro": {"email": "cro@test.local"}},
            },
            "escalation": {"ack_timeout_seconds": 600, "CRITICAL": POLICY, "HIGH": HIGH_POLICY},
        }
    )
    return build_alert_engine(store, settings, clock=clock, env={}, sleep=SleepRecorder())


def at(engine: Any, clock: SimClock, seconds: float, utilization: float) -> None:
    """One snapshot and one tick at T0 + ``seconds``."""
    clock.now = T0 + seconds
    engine.evaluate("main", snapshot(now=clock.now, var__utilization=utilization), clock.now)
    engine.tick(clock.now)


def warning_sent(engine: Any) -> list[tuple[str, Any, str]]:
    """(kind, level, recipient) of VAR_HIGH's email messages, oldest first."""
    records = engine.delivery_log("main", count=10_000, channel="email")
    return [(e["kind"], e["level"], r["recipient"]) for r in reversed(records) for e in r["events"]
            if e["rule_id"] == "var_warning"]  # fmt: skip


def warning_alert(engine: Any) -> dict[str, Any]:
    return {a["rule_id"]: a for a in engine.active_alerts("main")}["var_warning"]


def told_exactly_at(
    engine: Any,
    clock: SimClock,
    seconds: float,
    utilization: float,
    told: list[tuple[str, Any, str]],
) -> None:
    """Nothing new is sent one second before T0 + ``seconds``, ``told`` (kind, level, recipient) at it, nothing
    more one second after: a timer at its boundary."""
    before = len(warning_sent(engine))
    at(engine, clock, seconds - 1, utilization)
    assert len(warning_sent(engine)) == before
    at(engine, clock, seconds, utilization)
    assert warning_sent(engine)[before:] == told
    at(engine, clock, seconds + 1, utilization)
    assert len(warning_sent(engine)) == before + len(told)


def test_an_inhibited_alert_tells_nobody_and_when_it_ends_tells_the_next_level_only(
    store: Store, make_settings: Any
) -> None:
    # Arrange: the HIGH alert told the desk, then a CRITICAL inhibits it past both later levels' delays
    clock = SimClock(T0)
    engine = build_inhibiting(store, make_settings, clock)
    at(engine, clock, 0, WARNING)
    for seconds in range(10, 2000, 10):
        at(engine, clock, seconds, BREACH)
    assert warning_sent(engine) == [("triggered", 0, "desk")]
    assert warning_alert(engine)["inhibited"]
    # Act: the CRITICAL resolves at +2000, the HIGH is still active and unacknowledged
    at(engine, clock, 2000, WARNING)
    # Assert: one level, the next, at once; the one after it keeps its 300 s spacing from there
    assert warning_sent(engine) == [("triggered", 0, "desk"), ("escalated", 1, "boss")]
    told_exactly_at(engine, clock, 2300, WARNING, [("escalated", 2, "cro")])


def test_an_inhibition_shorter_than_the_next_delay_keeps_the_next_level_on_its_schedule(
    store: Store, make_settings: Any
) -> None:
    clock = SimClock(T0)
    engine = build_inhibiting(store, make_settings, clock)
    at(engine, clock, 0, WARNING)
    at(engine, clock, 10, BREACH)
    at(engine, clock, 100, WARNING)  # inhibited from +10 to +100; level 2 is due at +300 from the trigger
    assert warning_sent(engine) == [("triggered", 0, "desk")]
    told_exactly_at(engine, clock, 300, WARNING, [("escalated", 1, "boss")])


def test_an_acknowledge_timeout_during_an_inhibition_restarts_the_escalation_when_the_inhibition_ends(
    store: Store, make_settings: Any
) -> None:
    # Arrange: acknowledged at +50 (timeout 600 s: +650), inhibited from +100
    clock = SimClock(T0)
    engine = build_inhibiting(store, make_settings, clock)
    at(engine, clock, 0, WARNING)
    at(engine, clock, 40, WARNING)
    clock.now = T0 + 50
    engine.acknowledge("main", "var_warning", actor="alice")
    at(engine, clock, 100, BREACH)
    at(engine, clock, 649, BREACH)
    assert warning_alert(engine)["status"] == "ACKNOWLEDGED"
    # Act 1: the timeout passes while inhibited
    at(engine, clock, 650, BREACH)
    at(engine, clock, 651, BREACH)
    # Assert 1: back to TRIGGERED, yet nobody paged and nothing scheduled
    alert = warning_alert(engine)
    assert alert["status"] == "TRIGGERED" and alert["inhibited"] and alert["next_escalation_at"] is None
    assert warning_sent(engine) == [("triggered", 0, "desk")]
    # Act 2: the inhibition ends at +1000
    at(engine, clock, 1000, WARNING)
    # Assert 2: the cycle the timeout called for starts now: the reminder to the desk, the boss 300 s later
    assert warning_sent(engine)[1:] == [("acknowledged_reminder", 0, "desk")]
    told_exactly_at(engine, clock, 1300, WARNING, [("escalated", 1, "boss")])


def test_an_alert_that_told_every_level_is_escalated_again_when_its_timeout_passed_during_an_inhibition(
    store: Store, make_settings: Any
) -> None:
    clock = SimClock(T0)
    engine = build_inhibiting(store, make_settings, clock)
    for seconds in (0, 300, 600):
        at(engine, clock, seconds, WARNING)
    assert [level for _, level, _ in warning_sent(engine)] == [0, 1, 2]
    clock.now = T0 + 700
    engine.acknowledge("main", "var_warning", actor="alice")  # timeout at +1300
    at(engine, clock, 710, BREACH)
    at(engine, clock, 1300, BREACH)
    at(engine, clock, 1500, WARNING)  # the inhibition ends after the timeout
    assert warning_sent(engine)[3:] == [("acknowledged_reminder", 0, "desk")]
    at(engine, clock, 1799, WARNING)
    assert len(warning_sent(engine)) == 4
    at(engine, clock, 1800, WARNING)
    assert warning_sent(engine)[4:] == [("escalated", 1, "boss")]


def test_an_acknowledged_alert_stays_stopped_when_its_inhibition_ends_until_its_timeout(
    store: Store, make_settings: Any
) -> None:
    clock = SimClock(T0)
    engine = build_inhibiting(store, make_settings, clock)
    at(engine, clock, 0, WARNING)
    clock.now = T0 + 50
    engine.acknowledge("main", "var_warning", actor="alice")  # timeout at +650
    at(engine, clock, 100, BREACH)
    at(engine, clock, 200, WARNING)
    alert = warning_alert(engine)
    assert alert["status"] == "ACKNOWLEDGED" and not alert["inhibited"] and alert["next_escalation_at"] is None
    at(engine, clock, 649, WARNING)
    assert warning_sent(engine) == [("triggered", 0, "desk")]
    at(engine, clock, 650, WARNING)
    assert warning_sent(engine)[1:] == [("acknowledged_reminder", 0, "desk")]
    at(engine, clock, 651, WARNING)
    assert len(warning_sent(engine)) == 2


def test_an_alert_inhibited_from_the_start_and_acknowledged_waits_for_its_timeout_when_released(
    store: Store, make_settings: Any
) -> None:
    clock = SimClock(T0)
    engine = build_inhibiting(store, make_settings, clock)
    at(engine, clock, 0, BREACH)  # VAR_HIGH fires inhibited: nobody told
    clock.now = T0 + 50
    engine.acknowledge("main", "var_warning", actor="alice")  # seen on the page; timeout at +650
    at(engine, clock, 200, WARNING)  # the critical alert clears: the inhibition ends
    alert = warning_alert(engine)
    assert alert["status"] == "ACKNOWLEDGED" and not alert["inhibited"] and alert["next_escalation_at"] is None
    at(engine, clock, 649, WARNING)
    assert warning_sent(engine) == []
    at(engine, clock, 650, WARNING)
    assert warning_sent(engine) == [("acknowledged_reminder", 0, "desk")]


# -- a rule's severity edited while its alert is active: the alert takes it -------------------------------------

VAR_WATCH = rule("var_watch", "var.utilization", ">=", 0.8, "MEDIUM", description="VaR watched")
MEDIUM_POLICY = [{"delay_seconds": 0, "recipients": ["desk"], "channels": ["email"]}]


def build_editable(store: Store, make_settings: Any, clock: SimClock, rules: list[dict[str, Any]]):
    """MEDIUM: the desk once; CRITICAL: POLICY (the desk at once, the boss after 300 s); ack timeout 600 s."""
    settings = make_settings(
        {
            "alert_rules": rules,
            "notifications": {"group_wait_seconds": 0, "group_interval_seconds": 0, "recipients": RECIPIENTS},
            "escalation": {"ack_timeout_seconds": 600, "CRITICAL": POLICY, "MEDIUM": MEDIUM_POLICY},
        }
    )
    return build_alert_engine(store, settings, clock=clock, env={}, sleep=SleepRecorder())


def emails_of(engine: Any, rule_id: str) -> list[tuple[str, Any, str, str]]:
    """(kind, level, recipient, severity) of one rule's email messages, oldest first."""
    records = engine.delivery_log("main", count=10_000, channel="email")
    return [(e["kind"], e["level"], r["recipient"], e["severity"]) for r in reversed(records) for e in r["events"]
            if e["rule_id"] == rule_id]  # fmt: skip


def alert_of(engine: Any, rule_id: str) -> dict[str, Any]:
    return {a["rule_id"]: a for a in engine.active_alerts("main")}[rule_id]


def edit_severity(engine: Any, clock: SimClock, seconds: float, severity: str) -> None:
    clock.now = T0 + seconds
    engine.update_rule("var_watch", {"severity": severity}, actor="ops", reason="test")


def test_a_severity_raised_while_the_alert_is_active_is_taken_by_the_alert_and_escalates_under_its_policy(
    store: Store, make_settings: Any
) -> None:
    # Arrange: a MEDIUM alert told the desk
    clock = SimClock(T0)
    engine = build_editable(store, make_settings, clock, [VAR_WATCH])
    at(engine, clock, 0, WARNING)
    assert emails_of(engine, "var_watch") == [("triggered", 0, "desk", "MEDIUM")]
    # Act: the rule becomes CRITICAL; the next evaluation
    edit_severity(engine, clock, 5, "CRITICAL")
    at(engine, clock, 10, WARNING)
    # Assert: the alert is CRITICAL, says so in its history, and escalates as a CRITICAL alert from the edit on
    assert alert_of(engine, "var_watch")["severity"] == "CRITICAL"
    changes = [h for h in engine.alert_history("main") if h["event"] == "SEVERITY_CHANGED"]
    assert [h["note"] for h in changes] == ["rule edited: MEDIUM -> CRITICAL"]
    assert emails_of(engine, "var_watch")[1:] == [("triggered", 0, "desk", "CRITICAL")]
    at(engine, clock, 309, WARNING)
    assert len(emails_of(engine, "var_watch")) == 2
    at(engine, clock, 310, WARNING)
    assert emails_of(engine, "var_watch")[2:] == [("escalated", 1, "boss", "CRITICAL")]
    at(engine, clock, 311, WARNING)
    assert len(emails_of(engine, "var_watch")) == 3


def test_a_metric_edited_while_the_alert_is_active_is_the_alerts_metric_from_the_next_evaluation(
    store: Store, make_settings: Any
) -> None:
    clock = SimClock(T0)
    engine = build_editable(store, make_settings, clock, [VAR_WATCH])
    at(engine, clock, 0, WARNING)
    assert (alert_of(engine, "var_watch")["metric"], alert_of(engine, "var_watch")["value"]) == ("var.utilization", 0.9)
    clock.now = T0 + 5
    engine.update_rule("var_watch", {"metric": "leverage", "threshold": 2.0}, actor="ops", reason="test")
    clock.now = T0 + 10
    engine.evaluate("main", snapshot(now=clock.now, var__utilization=WARNING, leverage=2.5), clock.now)
    alert = alert_of(engine, "var_watch")  # still breached, now on leverage: the value is leverage's, and says so
    assert (alert["metric"], alert["unit"], alert["threshold"], alert["value"]) == ("leverage", "ratio", 2.0, 2.5)
    assert emails_of(engine, "var_watch") == [("triggered", 0, "desk", "MEDIUM")]  # the same alert: nobody re-told


def test_a_severity_lowered_while_the_alert_is_active_tells_nobody_again_and_follows_the_lower_policy(
    store: Store, make_settings: Any
) -> None:
    clock = SimClock(T0)
    engine = build_editable(store, make_settings, clock, [{**VAR_WATCH, "severity": "CRITICAL"}])
    at(engine, clock, 0, WARNING)
    edit_severity(engine, clock, 100, "MEDIUM")
    at(engine, clock, 100, WARNING)
    alert = alert_of(engine, "var_watch")
    assert alert["severity"] == "MEDIUM" and alert["next_escalation_at"] is None
    for seconds in (299, 300, 301):  # the CRITICAL policy's boss level would have been due at +300
        at(engine, clock, seconds, WARNING)
    assert emails_of(engine, "var_watch") == [("triggered", 0, "desk", "CRITICAL")]


def test_an_acknowledged_alert_raised_to_critical_stays_acknowledged_until_its_timeout_then_escalates_as_critical(
    store: Store, make_settings: Any
) -> None:
    clock = SimClock(T0)
    engine = build_editable(store, make_settings, clock, [VAR_WATCH])
    at(engine, clock, 0, WARNING)
    clock.now = T0 + 50
    engine.acknowledge("main", "var_watch", actor="alice")  # timeout at +650
    edit_severity(engine, clock, 60, "CRITICAL")
    at(engine, clock, 649, WARNING)
    alert = alert_of(engine, "var_watch")
    assert (alert["status"], alert["severity"], alert["next_escalation_at"]) == ("ACKNOWLEDGED", "CRITICAL", None)
    assert len(emails_of(engine, "var_watch")) == 1
    at(engine, clock, 650, WARNING)
    assert emails_of(engine, "var_watch")[1:] == [("acknowledged_reminder", 0, "desk", "CRITICAL")]
    at(engine, clock, 949, WARNING)
    assert len(emails_of(engine, "var_watch")) == 2
    at(engine, clock, 950, WARNING)
    assert emails_of(engine, "var_watch")[2:] == [("escalated", 1, "boss", "CRITICAL")]


def test_an_inhibited_alert_raised_to_critical_is_released_and_told(store: Store, make_settings: Any) -> None:
    clock = SimClock(T0)
    engine = build_editable(store, make_settings, clock, [VAR_CRIT, VAR_WATCH])
    at(engine, clock, 0, BREACH)
    assert alert_of(engine, "var_watch")["inhibited"] and emails_of(engine, "var_watch") == []
    edit_severity(engine, clock, 10, "CRITICAL")
    at(engine, clock, 10, BREACH)
    alert = alert_of(engine, "var_watch")
    assert (alert["severity"], alert["inhibited"], alert["inhibited_by"]) == ("CRITICAL", False, None)
    assert emails_of(engine, "var_watch") == [("triggered", 0, "desk", "CRITICAL")]


# -- the resolved message goes to those who were told, whatever the routing says by then ---------------------------


def test_the_resolved_message_goes_to_those_told_after_a_restart_with_another_escalation_policy(
    store: Store, make_settings: Any
) -> None:
    # Arrange: told the desk, then the boss; the desk restarts with a policy naming only the cro
    clock = SimClock(T0 - 10)
    with smtp_server() as (server, env):
        first = build(store, make_settings, clock, env)
        run(first, clock, 300)
        settings = make_settings(
            {
                "alert_rules": [VAR_CRIT],
                "notifications": {
                    "group_wait_seconds": 0,
                    "group_interval_seconds": 0,
                    "recipients": {**RECIPIENTS, "cro": {"email": "cro@test.local"}},
                },
                "escalation": {"CRITICAL": [{"delay_seconds": 0, "recipients": ["cro"], "channels": ["email"]}]},
            }
        )
        second = build_alert_engine(store, settings, clock=clock, env=env, sleep=SleepRecorder())
        # Act: it resolves
        run(second, clock, 310, breach=False)
    # Assert: the resolution reaches the desk and the boss, and not the cro, who never heard of it
    resolved = [m.rcpt_tos for m in server.messages if "RESOLVED" in m.content.decode()]
    assert sorted(resolved) == [["boss@test.local"], ["desk@test.local"]]
