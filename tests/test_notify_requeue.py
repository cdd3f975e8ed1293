"""A message whose attempts all fail on transient errors (SMTP 4xx, a refused connection, Twilio 5xx) is not lost:
it stays in the outbox and a later flush tries it again (notifications/delivery.py ``_requeued``), against a real
aiosmtpd server, the real Twilio client on a recording HTTP client and a real Redis. Before, a 3-second outage
deleted the message for good: a HIGH e-mail, or a CRITICAL page sent by SMS only, reached nobody."""

from __future__ import annotations

import time
from typing import Any

import pytest

from engine.store import Store
from logic.alerts import build_alert_engine
from notifications.service import build_notifier

from .alerts_support import (
    T0,
    TWILIO_ENV,
    RecordingTwilioHttpClient,
    SimClock,
    SleepRecorder,
    free_port,
    rule,
    smtp_server,
    snapshot,
)

HIGH = rule("var_high", "var.utilization", ">=", 1.0, "HIGH", description="VaR above its limit")
LEVER = rule("leverage_high", "leverage", ">=", 2.0, "HIGH", description="Leverage above 2x")
CRIT = rule("var_crit", "var.utilization", ">=", 1.0, "CRITICAL", description="VaR above its limit")
BUSY = "451 4.3.0 try again later"


def desk(make_settings: Any, rules: list[dict[str, Any]], channels: list[str], people: dict[str, Any],
         **retry: float) -> Any:  # fmt: skip
    severities = {r["severity"] for r in rules}
    return make_settings({
        "alert_rules": rules,
        "notifications": {"group_wait_seconds": 0, "group_interval_seconds": 0, "recipients": people,
                          "sms_fallback": False, "retry": {"backoff_seconds": 0.0, **retry}},
        "escalation": {s: [{"delay_seconds": 0, "recipients": list(people), "channels": channels}] for s in severities},
    })  # fmt: skip


def notifier_on(store: Store, settings: Any, env: dict[str, str], twilio: Any = None) -> tuple[Any, Any]:
    clock = SimClock()
    notifier = build_notifier(store, settings, clock, env=env, sleep=SleepRecorder(), twilio_http_client=twilio)
    return notifier, build_alert_engine(store, settings, clock, recipients=notifier.config.recipients)


def utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def test_an_email_refused_for_now_stays_queued_and_goes_out_at_its_next_try(store: Store, make_settings) -> None:
    settings = desk(make_settings, [HIGH], ["email"], {"desk": {"email": "desk@test.local"}})
    with smtp_server([BUSY] * 3) as (server, env):  # the three attempts of one try, then the server is fine
        notifier, engine = notifier_on(store, settings, env)
        engine.evaluate("main", snapshot(now=T0, var__utilization=1.5), T0)
        (failed,) = notifier.flush(T0, ["main"])
        assert (failed["status"], failed["attempts"], server.attempts) == ("failed", 3, 3)
        assert failed["error"].endswith(f"; kept queued, next try at {utc(T0 + 30)}")  # retry.requeue_seconds
        assert notifier.pending_count("main") == 1
        assert notifier.flush(T0 + 29, ["main"]) == [] and server.attempts == 3  # one second early: not tried
        (sent,) = notifier.flush(T0 + 30, ["main"])
        assert (sent["status"], sent["attempts"], sent["error"]) == ("delivered", 1, "")
        (message,) = server.messages
        assert message.rcpt_tos == ["desk@test.local"] and "VaR above its limit" in message.content.decode()
    assert notifier.pending_count("main") == 0 and notifier.flush(T0 + 200, ["main"]) == []


def test_with_two_recipients_neither_loses_the_message_whichever_was_sent_first(store: Store, make_settings) -> None:
    people = {"boss": {"email": "boss@test.local"}, "desk": {"email": "desk@test.local"}}
    settings = desk(make_settings, [HIGH], ["email"], people)
    with smtp_server([BUSY] * 3) as (server, env):
        notifier, engine = notifier_on(store, settings, env)
        engine.evaluate("main", snapshot(now=T0, var__utilization=1.5), T0)
        assert [r["status"] for r in notifier.flush(T0, ["main"])] == ["failed"]  # the other held: e-mail is down
        assert notifier.pending_count("main") == 2
        assert [r["status"] for r in notifier.flush(T0 + 1, ["main"])] == ["delivered"]  # the held one
        assert [r["status"] for r in notifier.flush(T0 + 30, ["main"])] == ["delivered"]  # the failed one
        assert sorted(to for m in server.messages for to in m.rcpt_tos) == ["boss@test.local", "desk@test.local"]
    assert notifier.pending_count("main") == 0


def test_a_critical_page_twilio_refuses_for_now_is_texted_at_its_next_try(store: Store, make_settings) -> None:
    settings = desk(make_settings, [CRIT], ["sms"], {"boss": {"sms": "+15550100009", "email": "boss@test.local"}})
    twilio = RecordingTwilioHttpClient([503, 503, 503])
    notifier, engine = notifier_on(store, settings, dict(TWILIO_ENV), twilio)
    engine.evaluate("main", snapshot(now=T0, var__utilization=1.5), T0)
    (failed,) = notifier.flush(T0, ["main"])
    assert (failed["channel"], failed["status"], len(twilio.requests)) == ("sms", "failed", 3)
    assert notifier.flush(T0 + 29, ["main"]) == [] and len(twilio.requests) == 3
    (sent,) = notifier.flush(T0 + 30, ["main"])
    assert (sent["status"], sent["address"] != "", len(twilio.requests)) == ("delivered", True, 4)
    assert twilio.requests[-1]["data"]["To"] == "+15550100009"
    assert twilio.requests[-1]["data"]["Body"].startswith("Riskdesk CRITICAL main: VaR above its limit")
    assert notifier.pending_count("main") == 0


@pytest.mark.parametrize("give_up", [55.0, 56.0])
def test_tries_come_back_off_doubling_to_the_cap_and_stop_at_the_give_up_time(
    store: Store, make_settings: Any, give_up: float
) -> None:
    """retry.requeue_seconds 10, doubling, at most 25: tries at T0, +10, +30, +55; the one at +55 is the
    failure 55 s after the first: dropped when give_up_seconds is 55 (exactly at it), kept when it is 56."""
    settings = desk(make_settings, [HIGH], ["email"], {"desk": {"email": "desk@test.local"}}, max_attempts=1,
                    requeue_seconds=10.0, max_requeue_seconds=25.0, give_up_seconds=give_up)  # fmt: skip
    dead = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(free_port()), "SMTP_SECURITY": "none"}  # refused: transient
    notifier, engine = notifier_on(store, settings, dead)
    engine.evaluate("main", snapshot(now=T0, var__utilization=1.5), T0)
    tries = []
    for t in range(0, 60):
        tries += [(t, r["error"].rpartition("; ")[2]) for r in notifier.flush(T0 + t, ["main"])]
    kept = [(t, f"kept queued, next try at {utc(T0 + at)}") for t, at in ((0, 10), (10, 30), (30, 55))]
    if give_up == 55.0:
        assert tries == [*kept, (55, f"dropped: failing since {utc(T0)} (4 tries)")]
        assert notifier.pending_count("main") == 0
    else:
        assert tries == [*kept, (55, f"kept queued, next try at {utc(T0 + 80)}")]
        assert notifier.pending_count("main") == 1


def test_an_event_that_joins_a_group_waiting_for_its_retry_goes_out_at_once(store: Store, make_settings) -> None:
    """A new alert for the same recipient does not wait for the failed message's retry time: the group is tried
    when the new event is due, and carries both."""
    settings = desk(make_settings, [HIGH, LEVER], ["email"], {"desk": {"email": "desk@test.local"}})
    with smtp_server([BUSY] * 3) as (server, env):
        notifier, engine = notifier_on(store, settings, env)
        engine.evaluate("main", snapshot(now=T0, var__utilization=1.5, leverage=1.0), T0)
        assert [r["status"] for r in notifier.flush(T0, ["main"])] == ["failed"]  # next try at T0 + 30
        engine.evaluate("main", snapshot(now=T0 + 5, var__utilization=1.5, leverage=3.0), T0 + 5)
        (sent,) = notifier.flush(T0 + 5, ["main"])
        assert (sent["status"], sent["event_count"]) == ("delivered", 2)
        (message,) = server.messages
        body = message.content.decode()
        assert "VaR above its limit" in body and "Leverage above 2x" in body
    assert notifier.pending_count("main") == 0


@pytest.mark.parametrize("quit_reply", ["421 4.3.2 service shutting down", "554 5.0.0 transaction failed"])
def test_an_email_the_server_accepted_is_not_sent_again_when_its_quit_fails(
    store: Store, make_settings: Any, quit_reply: str
) -> None:
    """The server answered DATA with 250: the message is delivered. An error reply to the QUIT after it (smtplib
    raises it on leaving the connection) made the send a failure, a 4xx one was retried, and the desk got the
    same alert twice."""
    settings = desk(make_settings, [HIGH], ["email"], {"desk": {"email": "desk@test.local"}})
    with smtp_server(quit_reply=quit_reply) as (server, env):
        notifier, engine = notifier_on(store, settings, env)
        engine.evaluate("main", snapshot(now=T0, var__utilization=1.5), T0)
        (record,) = notifier.flush(T0, ["main"])
        assert (record["status"], record["attempts"], record["error"]) == ("delivered", 1, "")
        assert len(server.messages) == 1 and server.attempts == 1
        assert notifier.flush(T0 + 60, ["main"]) == [] and len(server.messages) == 1
    assert notifier.pending_count("main") == 0


def test_a_new_message_does_not_inherit_the_failures_of_one_that_left_the_outbox() -> None:
    """A failed message whose events were all cancelled (its alert acknowledged) leaves its retry state behind;
    the next message to the address, failing once, was dropped at once as "failing since" two days before."""
    from notifications.config import RetryPolicy
    from notifications.retry import SendResult, requeue

    policy = RetryPolicy(requeue_seconds=30.0, max_requeue_seconds=900.0, give_up_seconds=86400.0)
    failed = SendResult("failed", 3, "gave up after 3 attempts: 451", transient=True)
    old = {"failed_since": T0 - 2 * 86400.0, "failures": 5, "retry_at": T0 - 86400.0, "tried": ["e1|old"]}
    state, note = requeue(policy, old, failed, ["e2|new"], T0)
    assert state is not None and (state["failed_since"], state["failures"], state["retry_at"]) == (T0, 1, T0 + 30)
    assert note == f"kept queued, next try at {utc(T0 + 30)}"
    state, note = requeue(policy, old, failed, ["e1|old", "e2|new"], T0)  # the same message (one joined it)
    assert state is None and note == f"dropped: failing since {utc(T0 - 2 * 86400.0)} (6 tries)"
