"""Notifications on a bad day, against real local servers (aiosmtpd SMTP, the real Twilio client on a recording
HTTP client, a blackholed TCP port) and a real Redis: an alert storm against the rate limit, an acknowledgement
racing a queued escalation, a level that reaches nobody, a dead SMTP server, a channel that is not configured."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from engine.errors import ConfigError
from engine.store import PORTFOLIOS_KEY, Store
from logic.alerts import build_alert_engine
from logic.escalation import escalation_config
from notifications import service
from notifications.service import FailureWindow, build_notifier

from .alerts_support import (
    T0,
    TWILIO_ENV,
    RecordingTwilioHttpClient,
    SimClock,
    SleepRecorder,
    rule,
    smtp_server,
    snapshot,
)

CRIT = rule("var_breach", "var.utilization", ">=", 1.0, "CRITICAL", description="VaR above its limit")
LEVER = rule("leverage_crit", "leverage", ">=", 2.0, "CRITICAL", description="Leverage above 2x")
WARN = rule("var_warning", "var.utilization", ">=", 0.8, "MEDIUM", description="VaR above 80% of its limit")
HEAD = {"head": {"email": "head@test.local", "sms": "+15550100001"}}


def head_level(*channels: str) -> list[dict[str, Any]]:
    return [{"delay_seconds": 0, "recipients": ["head"], "channels": list(channels)}]


def statuses(engine: Any, portfolio_id: str) -> list[tuple[str, str, Any]]:
    """(channel, status, fallback_for) of the portfolio's delivery records, oldest first."""
    return [(r["channel"], r["status"], r["fallback_for"]) for r in reversed(engine.delivery_log(portfolio_id))]


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (an SMTP server gone silent)."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    try:
        yield int(hole.getsockname()[1])
    finally:
        hole.close()


# -- 1. the rate limit never holds back a CRITICAL -----------------------------------------------------------


def test_the_rate_limit_sends_the_nth_message_holds_the_next_and_never_holds_a_critical(
    store: Store, make_settings: Any
) -> None:
    """Limit 3 per hour on one address shared by every portfolio: the 3rd MEDIUM message goes, the 4th is held
    (``rate_limited``), a CRITICAL after it goes at once; the held one leaves exactly when the window allows."""
    settings = make_settings({
        "alert_rules": [WARN, LEVER],
        "notifications": {"group_wait_seconds": 0, "group_interval_seconds": 0, "recipients": HEAD,
                          "rate_limit": {"max_messages": 3, "per_seconds": 3600}},
        "escalation": {"MEDIUM": head_level("email"), "CRITICAL": head_level("email")},
    })  # fmt: skip
    clock = SimClock()
    with smtp_server() as (server, env):
        notifier = build_notifier(store, settings, clock, env=env, sleep=SleepRecorder())
        engine = build_alert_engine(store, settings, clock, recipients=notifier.config.recipients)
        medium = ["p00", "p01", "p02", "p03"]
        for pid in medium:
            engine.evaluate(pid, snapshot(pid, now=T0, var__utilization=0.9), T0)
        engine.evaluate("p04", snapshot("p04", now=T0, leverage=3.0), T0)  # CRITICAL only, beyond the limit
        notifier.flush(T0, [*medium, "p04"])
        assert [statuses(engine, pid) for pid in medium] == [[("email", "delivered", None)]] * 3 + [
            [("email", "rate_limited", None)]
        ]
        assert statuses(engine, "p04") == [("email", "delivered", None)]
        assert len(server.messages) == 4 and notifier.pending_count("p03") == 1

        assert notifier.flush(T0 + 3599, medium) == []  # 4 sends in the window: still held, recorded once
        (released,) = notifier.flush(T0 + 3600, medium)  # the sends at T0 leave the window exactly now
    assert (released["portfolio_id"], released["status"]) == ("p03", "delivered")
    assert len(server.messages) == 5 and notifier.pending_count("p03") == 0


def test_the_heartbeat_counts_held_back_and_skipped_deliveries_but_not_cancelled_ones() -> None:
    """``failed_recent`` (what the System page warns on) counts failed, rate_limited and skipped records of the
    window; cancelled and delivered ones are fine. A record leaves the window exactly ``seconds`` after it."""
    window = FailureWindow(60.0)
    window.add([{"ts": 10.0, "status": s, "channel": "email"} for s in ("delivered", "cancelled", "failed")])
    window.add([{"ts": 15.0, "status": "skipped", "channel": "email", "recipient": "desk", "portfolio_id": "p",
                 "error": "email is not configured"},
                {"ts": 20.0, "status": "rate_limited", "channel": "email", "recipient": "head", "portfolio_id": "q",
                 "error": "3 messages in the last 3600 s"}])  # fmt: skip
    fields = window.fields(30.0)
    assert (fields["failed_recent"], fields["held_recent"], fields["skipped_recent"]) == (3, 1, 1)
    assert fields["last_failure"] == "email to head (q), held back by the rate limit: 3 messages in the last 3600 s"
    assert window.fields(70.0)["failed_recent"] == 2  # 10 + 60: the failure leaves at the boundary
    assert window.fields(74.0)["failed_recent"] == 2  # one second before 15 + 60: the skip still counts
    assert window.fields(75.0)["failed_recent"] == 1
    assert window.fields(80.0)["failed_recent"] == 0


# -- 2. an escalation made stale by an acknowledgement or a resolution is not sent ---------------------------

ESCALATING = {
    "alert_rules": [CRIT],
    "notifications": {"group_wait_seconds": 0, "group_interval_seconds": 60,
                      "recipients": {"desk": {"email": "desk@test.local"}, "head": {"email": "head@test.local"}}},
    "escalation": {"CRITICAL": [{"delay_seconds": 0, "recipients": ["desk", "head"], "channels": ["email"]},
                                {"delay_seconds": 30, "recipients": ["head"], "channels": ["email"]}]},
}  # fmt: skip


def subjects(server: Any) -> list[str]:
    return [
        next(line for line in m.content.decode().splitlines() if line.startswith("Subject:")) for m in server.messages
    ]


@pytest.mark.parametrize("then", ["acknowledged", "resolved"])
def test_an_escalation_held_by_the_group_interval_is_cancelled_when_the_alert_is_acknowledged_or_resolved_first(
    store: Store, make_settings: Any, then: str
) -> None:
    settings = make_settings(ESCALATING)
    clock = SimClock()
    with smtp_server() as (server, env):
        notifier = build_notifier(store, settings, clock, env=env, sleep=SleepRecorder())
        engine = build_alert_engine(store, settings, clock, recipients=notifier.config.recipients)
        engine.evaluate("main", snapshot(now=T0, var__utilization=1.5), T0)
        notifier.flush(T0, ["main"])
        clock.now = T0 + 31
        engine.evaluate("main", snapshot(now=T0 + 31, var__utilization=1.5), T0 + 31)  # level 2 queued
        assert notifier.flush(T0 + 31, ["main"]) == []  # held: head was written to 31 s ago
        clock.now = T0 + 40
        if then == "acknowledged":
            engine.acknowledge("main", "var_breach", "alice", "on it")
        else:
            engine.evaluate("main", snapshot(now=T0 + 40, var__utilization=0.5), T0 + 40)
        clock.now = T0 + 61
        notifier.flush(T0 + 61, ["main"])
    assert not any("ESCALATED" in s for s in subjects(server))
    (cancelled,) = [r for r in engine.delivery_log("main") if r["status"] == "cancelled"]
    assert (cancelled["recipient"], [e["kind"] for e in cancelled["events"]]) == ("head", ["escalated"])
    if then == "acknowledged":
        assert len(server.messages) == 2 and notifier.pending_count("main") == 0
        assert "acknowledged by alice at 2023-11-14 22:14:00 UTC" in cancelled["error"]
    else:  # the resolution still goes to both; only the stale escalation is dropped
        assert len(server.messages) == 4 and notifier.pending_count("main") == 0
        assert "resolved" in cancelled["error"]
        assert sorted(m.rcpt_tos[0] for m in server.messages[2:]) == ["desk@test.local", "head@test.local"]


def test_a_repeat_reminder_held_by_the_group_interval_is_cancelled_when_the_alert_is_acknowledged_first(
    store: Store, make_settings: Any
) -> None:
    settings = make_settings({
        "alert_rules": [CRIT],
        "notifications": {"group_wait_seconds": 0, "group_interval_seconds": 60, "repeat_interval_seconds": 30,
                          "recipients": HEAD},
        "escalation": {"CRITICAL": head_level("email")},
    })  # fmt: skip
    clock = SimClock()
    with smtp_server() as (server, env):
        notifier = build_notifier(store, settings, clock, env=env, sleep=SleepRecorder())
        engine = build_alert_engine(store, settings, clock, recipients=notifier.config.recipients)
        engine.evaluate("main", snapshot(now=T0, var__utilization=1.5), T0)
        notifier.flush(T0, ["main"])
        clock.now = T0 + 30
        engine.evaluate("main", snapshot(now=T0 + 30, var__utilization=1.5), T0 + 30)  # the reminder, queued
        assert notifier.flush(T0 + 30, ["main"]) == [] and notifier.pending_count("main") == 1
        clock.now = T0 + 45
        engine.acknowledge("main", "var_breach", "bob", "looking")
        (cancelled,) = notifier.flush(T0 + 60, ["main"])
    assert len(server.messages) == 1 and notifier.pending_count("main") == 0
    assert cancelled["status"] == "cancelled"
    assert (
        cancelled["error"]
        == "repeat reminder not sent: the alert was acknowledged by bob at 2023-11-14 22:14:05 UTC first"
    )


def test_an_escalation_of_an_alert_nobody_acknowledged_still_goes_out_after_the_group_interval(
    store: Store, make_settings: Any
) -> None:
    settings = make_settings(ESCALATING)
    clock = SimClock()
    with smtp_server() as (server, env):
        notifier = build_notifier(store, settings, clock, env=env, sleep=SleepRecorder())
        engine = build_alert_engine(store, settings, clock, recipients=notifier.config.recipients)
        engine.evaluate("main", snapshot(now=T0, var__utilization=1.5), T0)
        notifier.flush(T0, ["main"])
        clock.now = T0 + 31
        engine.evaluate("main", snapshot(now=T0 + 31, var__utilization=1.5), T0 + 31)
        notifier.flush(T0 + 31, ["main"])
        notifier.flush(T0 + 60, ["main"])
    assert sum("ESCALATED" in s for s in subjects(server)) == 1
    assert not [r for r in engine.delivery_log("main") if r["status"] == "cancelled"]


# -- 3. a level that reaches nobody ----------------------------------------------------------------------------


def test_a_level_whose_recipients_have_no_address_for_its_channels_is_refused_at_load() -> None:
    extra: dict[str, Any] = {"notifications": {"recipients": {"head": {"email": "h@test.local"},
                                                              "desk": {"sms": "env:DESK_SMS"}}}}  # fmt: skip
    names = {"head", "desk"}
    for channels in (["sms"], ["log", "sms"], ["sms", "webhook"]):
        extra["escalation"] = {"CRITICAL": head_level(*channels)}
        with pytest.raises(ConfigError, match=r"escalation\.CRITICAL\[0\]\.channels: .* reach nobody") as caught:
            escalation_config(extra, names)
        assert caught.value.code == "CONFIG_INVALID"
    # reaching one recipient by one channel is enough; an env: address counts (unset is a run-time skip)
    for level in (head_level("sms", "email"), [{"recipients": ["head", "desk"], "channels": ["sms"]}],
                  [{"recipients": ["desk"], "channels": ["sms"]}], [{"channels": ["log"]}]):  # fmt: skip
        extra["escalation"] = {"CRITICAL": level}
        assert escalation_config(extra, names).policy("CRITICAL").levels[0].channels


def test_a_critical_that_reaches_its_recipient_by_no_channel_is_recorded_and_falls_back_to_email(
    store: Store, make_settings: Any
) -> None:
    """A rule's own routing (not checked against the addresses at load) texts head, who has only an e-mail: a
    ``skipped`` / unroutable record instead of silence, and the CRITICAL goes to head by e-mail; a MEDIUM alert
    routed the same way is recorded and not sent."""
    routed = {"channels": ["sms"], "recipients": ["head"]}
    settings = make_settings({
        "alert_rules": [{**CRIT, **routed}, {**WARN, **routed}],
        "notifications": {"group_wait_seconds": 0, "recipients": {"head": {"email": "head@test.local"},
                                                                  "desk": {"email": "desk@test.local"}}},
        "escalation": {"CRITICAL": [{"recipients": ["desk"], "channels": ["email"]}],
                       "MEDIUM": [{"recipients": ["desk"], "channels": ["email"]}]},
    })  # fmt: skip
    clock, twilio = SimClock(), RecordingTwilioHttpClient()
    with smtp_server() as (server, env):
        notifier = build_notifier(store, settings, clock, env={**env, **TWILIO_ENV}, twilio_http_client=twilio)
        engine = build_alert_engine(store, settings, clock, recipients=notifier.config.recipients)
        engine.evaluate("warn", snapshot("warn", now=T0, var__utilization=0.9), T0)
        engine.evaluate("crit", snapshot("crit", now=T0, var__utilization=1.5), T0)  # CRITICAL and MEDIUM
        notifier.flush(T0, ["warn", "crit"])
    assert statuses(engine, "warn") == [("sms", "skipped", None)]
    (skip,) = engine.delivery_log("warn")
    assert skip["error"].startswith("unroutable: head has no sms address") and skip["recipient"] == "head"
    assert statuses(engine, "crit") == [("email", "delivered", "sms"), ("sms", "skipped", None)]
    (sent,) = server.messages
    assert sent.rcpt_tos == ["head@test.local"] and "VaR above its limit" in sent.content.decode()
    assert twilio.requests == [] and notifier.pending_count("crit") == notifier.pending_count("warn") == 0


def test_a_recipient_reached_by_another_channel_of_the_level_is_not_reported_unroutable(
    store: Store, make_settings: Any
) -> None:
    settings = make_settings({
        "alert_rules": [CRIT],
        "notifications": {"group_wait_seconds": 0, "recipients": {"head": {"email": "head@test.local"}}},
        "escalation": {"CRITICAL": head_level("email", "sms")},  # sms for those who have a number
    })  # fmt: skip
    clock = SimClock()
    with smtp_server() as (server, env):
        notifier = build_notifier(store, settings, clock, env={**env, **TWILIO_ENV},
                                  twilio_http_client=RecordingTwilioHttpClient())  # fmt: skip
        engine = build_alert_engine(store, settings, clock, recipients=notifier.config.recipients)
        engine.evaluate("main", snapshot(now=T0, var__utilization=1.5), T0)
        notifier.flush(T0, ["main"])
    assert statuses(engine, "main") == [("email", "delivered", None)] and len(server.messages) == 1


# -- 4. a dead SMTP server delays no text -------------------------------------------------------------------


def storm_on_dead_smtp(store: Store, make_settings: Any, port: int, channels: list[str], pids: list[str]):
    settings = make_settings({
        "alert_rules": [CRIT],
        "notifications": {"group_wait_seconds": 0, "group_interval_seconds": 0, "recipients": HEAD,
                          "retry": {"max_attempts": 2, "backoff_seconds": 0.0}},
        "escalation": {"CRITICAL": head_level(*channels)},
    })  # fmt: skip
    env = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port), "SMTP_SECURITY": "none", "SMTP_TIMEOUT": "0.3",
           **TWILIO_ENV}  # fmt: skip
    clock, twilio = SimClock(), RecordingTwilioHttpClient()
    notifier = build_notifier(store, settings, clock, env=env, sleep=SleepRecorder(), twilio_http_client=twilio)
    engine = build_alert_engine(store, settings, clock, recipients=notifier.config.recipients)
    for pid in pids:
        engine.evaluate(pid, snapshot(pid, now=T0, var__utilization=1.5), T0)
    return notifier, engine, twilio


def test_after_the_first_email_times_out_the_others_stay_queued_and_their_criticals_are_texted_once(
    store: Store, make_settings: Any, blackhole: int
) -> None:
    pids = ["p00", "p01", "p02", "p03"]
    notifier, engine, twilio = storm_on_dead_smtp(store, make_settings, blackhole, ["email"], pids)
    records = notifier.flush(T0, pids)
    # one e-mail paid the timeouts; the three after it went straight to the fallback and wait for the next flush
    assert [(r["portfolio_id"], r["channel"], r["status"]) for r in records if r["channel"] == "email"] == [
        ("p00", "email", "failed")
    ]
    assert sorted(r["portfolio_id"] for r in records if r["channel"] == "sms" and r["status"] == "delivered") == pids
    assert len(twilio.requests) == 4
    assert [notifier.pending_count(pid) for pid in pids] == [1, 1, 1, 1]  # the failed one too: tried again later

    records = notifier.flush(T0 + 1, pids)  # still down: the next e-mail is tried, nobody is texted twice
    assert [(r["portfolio_id"], r["status"]) for r in records] == [("p01", "failed")]  # p00 waits for its retry
    assert len(twilio.requests) == 4 and [notifier.pending_count(pid) for pid in pids] == [1, 1, 1, 1]


def test_a_flush_sends_every_portfolios_texts_before_any_email(
    store: Store, make_settings: Any, blackhole: int
) -> None:
    pids = ["p00", "p01", "p02"]
    notifier, _, twilio = storm_on_dead_smtp(store, make_settings, blackhole, ["email", "sms"], pids)
    records = notifier.flush(T0, pids)
    channels = [r["channel"] for r in records]
    assert channels[:3] == ["sms"] * 3 and "sms" not in channels[3:] and len(twilio.requests) == 3
    assert [(r["portfolio_id"], r["status"]) for r in records[3:]] == [("p00", "failed")]  # email down after it


def test_a_fallback_for_an_unroutable_critical_waits_for_the_email_turn_and_pays_the_dead_smtp_once(
    store: Store, make_settings: Any, blackhole: int
) -> None:
    """The rule texts 'mailonly', who has only an e-mail: the CRITICAL falls back to their e-mail. Planning sends
    nothing: every portfolio's text to head goes out first, then one fallback e-mail pays the blackholed server's
    timeouts, and the other two stay queued (e-mail is down) until the next flush, where the next one is tried."""
    settings = make_settings({
        "alert_rules": [{**CRIT, "channels": ["sms"], "recipients": ["mailonly"]}],
        "notifications": {"group_wait_seconds": 0, "group_interval_seconds": 0,
                          "recipients": {**HEAD, "mailonly": {"email": "m@test.local"}},
                          "retry": {"max_attempts": 2, "backoff_seconds": 0.0}},
        "escalation": {"CRITICAL": head_level("sms") * 2},  # the rule's route replaces level 0: level 1 texts head
    })  # fmt: skip
    env = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(blackhole), "SMTP_SECURITY": "none", "SMTP_TIMEOUT": "0.3",
           **TWILIO_ENV}  # fmt: skip
    clock, twilio = SimClock(), RecordingTwilioHttpClient()
    notifier = build_notifier(store, settings, clock, env=env, sleep=SleepRecorder(), twilio_http_client=twilio)
    engine = build_alert_engine(store, settings, clock, recipients=notifier.config.recipients)
    pids = ["p00", "p01", "p02"]
    for pid in pids:
        engine.evaluate(pid, snapshot(pid, now=T0, var__utilization=1.5), T0)
    records = notifier.flush(T0, pids)
    assert [(r["portfolio_id"], r["channel"], r["recipient"], r["status"], r["fallback_for"]) for r in records] == [
        ("p00", "sms", "head", "delivered", None),
        ("p01", "sms", "head", "delivered", None),
        ("p02", "sms", "head", "delivered", None),
        ("p00", "email", "mailonly", "failed", "sms"),  # the one e-mail that paid the timeouts
        ("p00", "sms", "mailonly", "skipped", None),  # its unroutable record, with the entry's removal
    ]
    assert records[3]["attempts"] == 2 and len(twilio.requests) == 3
    assert [notifier.pending_count(pid) for pid in pids] == [0, 1, 1]  # queued, recorded when they are done

    records = notifier.flush(T0 + 1, pids)  # still down: the next fallback e-mail is tried, nobody texted twice
    assert [(r["portfolio_id"], r["channel"], r["status"], r["fallback_for"]) for r in records] == [
        ("p01", "email", "failed", "sms"),
        ("p01", "sms", "skipped", None),
    ]
    assert len(twilio.requests) == 3 and [notifier.pending_count(pid) for pid in pids] == [0, 0, 1]
    assert statuses(engine, "p02") == [("sms", "delivered", None)]


def test_an_unroutable_critical_whose_text_fails_is_emailed_after_a_restart_without_texting_again(
    store: Store, make_settings: Any, blackhole: int
) -> None:
    """Head, reached by no channel of the rule (a webhook), falls back to a text that Twilio refuses, then to an
    e-mail in the e-mail turn; e-mail is down (desk's e-mail timed out first), so it waits. A restarted notifier
    with SMTP back sends that e-mail and does not text head again (``fallen_back`` in the group state)."""
    settings = make_settings({
        "alert_rules": [{**CRIT, "channels": ["webhook"], "recipients": ["head"]},
                        {**LEVER, "channels": ["email"], "recipients": ["desk"]}],
        "notifications": {"group_wait_seconds": 0, "group_interval_seconds": 0,
                          "recipients": {**HEAD, "desk": {"email": "desk@test.local"}},
                          "retry": {"max_attempts": 2, "backoff_seconds": 0.0}},
    })  # fmt: skip
    dead = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(blackhole), "SMTP_SECURITY": "none", "SMTP_TIMEOUT": "0.3",
            **TWILIO_ENV}  # fmt: skip
    clock, twilio = SimClock(), RecordingTwilioHttpClient(statuses=[400])  # the fallback text is refused
    notifier = build_notifier(store, settings, clock, env=dead, sleep=SleepRecorder(), twilio_http_client=twilio)
    engine = build_alert_engine(store, settings, clock, recipients=notifier.config.recipients)
    engine.evaluate("main", snapshot(now=T0, var__utilization=1.5, leverage=3.0), T0)
    records = notifier.flush(T0, ["main"])
    assert [(r["channel"], r["recipient"], r["status"], r["fallback_for"]) for r in records] == [
        ("sms", "head", "failed", "webhook"),  # in the SMS turn
        ("email", "desk", "failed", None),  # the e-mail turn: desk's e-mail finds SMTP dead
        ("sms", "desk", "skipped", "email"),  # desk has no number to fall back to
    ]  # head's fallback e-mail waits: e-mail is down; desk's failed e-mail waits for its next try
    assert len(twilio.requests) == 1 and notifier.pending_count("main") == 2

    with smtp_server() as (server, env):
        restarted = build_notifier(store, settings, clock, env={**env, **TWILIO_ENV}, sleep=SleepRecorder(),
                                   twilio_http_client=twilio)  # fmt: skip
        records = restarted.flush(T0 + 1, ["main"])
        assert [(r["channel"], r["recipient"], r["status"], r["fallback_for"]) for r in records] == [
            ("email", "head", "delivered", "webhook"),
            ("webhook", "head", "skipped", None),
        ]
        (sent,) = server.messages
        assert sent.rcpt_tos == ["head@test.local"] and "VaR above its limit" in sent.content.decode()
        assert len(twilio.requests) == 1 and restarted.pending_count("main") == 1
        assert restarted.flush(T0 + 2, ["main"]) == [] and len(server.messages) == 1
        records = restarted.flush(T0 + 30, ["main"])  # desk's e-mail, tried again retry.requeue_seconds later
        assert [(r["channel"], r["recipient"], r["status"]) for r in records] == [("email", "desk", "delivered")]
        assert server.messages[-1].rcpt_tos == ["desk@test.local"] and "Leverage above 2x" in records[0]["subject"]
    assert len(twilio.requests) == 1 and restarted.pending_count("main") == 0


# -- 5. a channel a policy names that is not configured ------------------------------------------------------


def test_a_policy_channel_that_is_not_configured_is_warned_at_start_and_its_skips_reach_the_heartbeat(
    store: Store, make_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings({
        "alert_rules": [WARN],
        "notifications": {"group_wait_seconds": 0, "recipients": HEAD},
        "escalation": {"MEDIUM": head_level("log", "email")},
    })  # fmt: skip
    clock = SimClock()
    store.client.sadd(PORTFOLIOS_KEY, "main")
    with caplog.at_level(logging.WARNING, logger="riskdesk.notifications"):
        notifier = build_notifier(store, settings, clock, env={}, sleep=SleepRecorder())  # no SMTP_HOST
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("channel 'email' is used by escalation.MEDIUM[0]")
    assert "SMTP_HOST" in warnings[0]
    engine = build_alert_engine(store, settings, clock, recipients=notifier.config.recipients)
    engine.evaluate("main", snapshot(now=T0, var__utilization=0.9), T0)
    service.run(notifier, threading.Event(), interval_seconds=0.0, max_flushes=1)
    beat = store.read_heartbeat(service.HEARTBEAT_COMPONENT)
    assert beat is not None and (beat["failed_recent"], beat["skipped_recent"]) == ("1", "1")
    assert beat["last_failure"].startswith("email to head (main), skipped: email is not configured")
