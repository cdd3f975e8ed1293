"""Notifications against real local servers: aiosmtpd SMTP, the real Twilio client on a recording HTTP client,
a loopback webhook; retries and backoff, SMS fallback, rate limit, grouping, delivery log, configuration."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConfigError
from engine.store import PORTFOLIOS_KEY, Store, heartbeat_key
from logic.alerts import build_alert_engine
from notifications.channels import Message, PermanentDeliveryError, SmsChannel
from notifications.config import notification_config, smtp_from_env, twilio_from_env
from notifications.render import Renderer, format_metric
from notifications.service import build_delivering_engine

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
    webhook_server,
)

VAR_CRIT = rule("var_breach", "var.utilization", ">=", 1.0, "CRITICAL", description="VaR above its limit")
VAR_WARN = rule(
    "var_warning", "var.utilization", ">=", 0.8, "MEDIUM", description="VaR above 80% of its limit"
)
RECIPIENTS = {"desk": {"email": "desk@test.local", "sms": "+15550100001"}}
RETRY = {"max_attempts": 3, "backoff_seconds": 1.0, "backoff_multiplier": 2.0, "max_backoff_seconds": 30.0}


def engine_with(
    store: Store,
    make_settings: Any,
    env: dict[str, str],
    channels: list[str],
    *,
    rules=None,
    notifications=None,
    **kwargs: Any,
):
    notifications = {
        "group_wait_seconds": 0,
        "group_interval_seconds": 0,
        "retry": RETRY,
        "recipients": RECIPIENTS,
        **(notifications or {}),
    }
    level = [{"delay_seconds": 0, "recipients": ["desk"], "channels": channels}]
    settings = make_settings(
        {
            "alert_rules": rules or [VAR_CRIT],
            "notifications": notifications,
            "escalation": {"CRITICAL": level, "MEDIUM": level},
        }
    )
    sleep = SleepRecorder()
    clock = SimClock()
    engine = build_delivering_engine(store, settings, clock=clock, env=env, sleep=sleep, **kwargs)
    return engine, sleep, clock


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Records every TCP connect; one leaving the machine raises (loopback and unix sockets still work)."""
    attempts: list[Any] = []
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            if address[0] not in ("127.0.0.1", "::1"):
                raise AssertionError(f"network connection attempted to {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return attempts


# -- email ---------------------------------------------------------------------------------------------------


def test_a_breach_sends_exactly_one_email_with_the_rendered_template(store: Store, make_settings) -> None:
    with smtp_server() as (server, env):
        engine, sleep, _ = engine_with(store, make_settings, env, ["email"])
        for t in range(5):
            engine.evaluate("main", snapshot(now=T0 + t, var__utilization=1.1234), T0 + t)
            engine.tick(T0 + t)
    assert len(server.messages) == 1 and sleep.calls == []
    envelope = server.messages[0]
    assert envelope.rcpt_tos == ["desk@test.local"] and envelope.mail_from == "riskdesk@test.local"
    text = envelope.content.decode()
    assert "Subject: [Riskdesk CRITICAL] main: VaR above its limit" in text
    assert "Value:       112.34%" in text and "Condition:   var.utilization >= 100.00%" in text
    (record,) = engine.delivery_log("main")
    assert (
        record["channel"],
        record["recipient"],
        record["address"],
        record["status"],
        record["attempts"],
    ) == ("email", "desk", "desk@test.local", "delivered", 1)
    assert [e["kind"] for e in record["events"]] == ["triggered"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl tool to make a certificate")
@pytest.mark.parametrize("security", ["starttls", "ssl"])
@pytest.mark.filterwarnings(
    "ignore:Requiring AUTH while not requiring TLS"
)  # the ssl case is TLS from byte 1
def test_email_over_starttls_or_implicit_tls_with_login(
    store: Store, make_settings: Any, tmp_path: Path, security: str
) -> None:
    with smtp_server(tls=security, cert_dir=tmp_path, credentials=("risk@test.local", "s3cret")) as (
        server,
        env,
    ):
        engine, _, _ = engine_with(store, make_settings, env, ["email"])
        engine.evaluate("main", snapshot(var__utilization=1.5), T0)
        engine.tick(T0)
    (record,) = engine.delivery_log("main")
    assert record["status"] == "delivered", record["error"]
    assert len(server.messages) == 1 and server.logins == ["risk@test.local"]


def test_a_wrong_smtp_password_is_a_permanent_failure(
    store: Store, make_settings: Any, tmp_path: Path
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl tool to make a certificate")
    with smtp_server(tls="starttls", cert_dir=tmp_path, credentials=("risk@test.local", "s3cret")) as (
        server,
        env,
    ):
        env["SMTP_PASSWORD"] = "wrong"
        engine, sleep, _ = engine_with(
            store, make_settings, env, ["email"], notifications={"sms_fallback": False}
        )
        engine.evaluate("main", snapshot(var__utilization=1.5), T0)
        engine.tick(T0)
    (record,) = engine.delivery_log("main")
    assert (record["status"], record["attempts"], sleep.calls) == ("failed", 1, [])
    assert record["error"].startswith("SMTP 535") and server.messages == []


def test_a_451_reply_is_retried_with_backoff_and_then_delivered(store: Store, make_settings) -> None:
    with smtp_server(["451 4.3.0 try again later"]) as (server, env):
        engine, sleep, _ = engine_with(store, make_settings, env, ["email"])
        engine.evaluate("main", snapshot(var__utilization=1.5), T0)
        engine.tick(T0)
    assert (server.attempts, len(server.messages)) == (2, 1)
    assert sleep.calls == [1.0]
    (record,) = engine.delivery_log("main")
    assert (record["status"], record["attempts"], record["error"]) == ("delivered", 2, "")


def test_a_550_reply_is_not_retried_and_is_recorded_as_failed(store: Store, make_settings) -> None:
    with smtp_server(["550 5.1.1 mailbox unavailable"]) as (server, env):
        engine, sleep, _ = engine_with(
            store, make_settings, env, ["email"], notifications={"sms_fallback": False}
        )
        engine.evaluate("main", snapshot(var__utilization=1.5), T0)
        engine.tick(T0)
    assert (server.attempts, server.messages, sleep.calls) == (1, [], [])
    (record,) = engine.delivery_log("main")
    assert (record["status"], record["attempts"]) == ("failed", 1)
    assert record["error"].startswith("SMTP 550 5.1.1 mailbox unavailable")
    assert engine.pending_notifications("main") == 0  # a permanent failure is not retried forever


def test_with_the_smtp_server_down_a_critical_alert_falls_back_to_sms(
    store: Store, make_settings, no_network: list[Any]
) -> None:
    env = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(free_port()), "SMTP_SECURITY": "none", **TWILIO_ENV}
    twilio = RecordingTwilioHttpClient()
    engine, sleep, _ = engine_with(
        store, make_settings, env, ["email"], rules=[VAR_CRIT, VAR_WARN], twilio_http_client=twilio
    )
    engine.evaluate("main", snapshot(var__utilization=1.5), T0)
    engine.tick(T0)
    email, sms = sorted(engine.delivery_log("main"), key=lambda r: r["channel"])
    assert (email["status"], email["attempts"], sleep.calls) == ("failed", 3, [1.0, 2.0])
    assert "gave up after 3 attempts" in email["error"]
    assert (sms["status"], sms["fallback_for"], sms["address"]) == ("delivered", "email", "+15550100001")
    (sent,) = twilio.sent
    assert (sent["To"], sent["From"]) == ("+15550100001", TWILIO_ENV["TWILIO_FROM"])
    assert sent["Body"].startswith("Riskdesk CRITICAL main: VaR above its limit")
    assert len(no_network) == 3  # the three SMTP connection attempts, refused; Twilio opened nothing


def test_a_crash_before_the_failed_emails_record_commits_repeats_the_sms_fallback_and_never_loses_it(
    store: Store, make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(free_port()), "SMTP_SECURITY": "none", **TWILIO_ENV}
    twilio = RecordingTwilioHttpClient()
    engine, _, _ = engine_with(store, make_settings, env, ["email"], twilio_http_client=twilio)
    engine.evaluate("main", snapshot(var__utilization=1.5), T0)
    commit = Store.write_json_fields

    def crash(self: Store, *args: Any, **kwargs: Any) -> Any:  # the process dies before the email's commit
        raise SystemExit("killed")

    monkeypatch.setattr(Store, "write_json_fields", crash)
    with pytest.raises(SystemExit):
        engine.tick(T0)

    assert len(twilio.sent) == 1  # the CRITICAL text went out first
    assert engine.pending_notifications("main") == 1  # the email's entry is still waiting
    monkeypatch.setattr(Store, "write_json_fields", commit)
    engine.tick(T0 + 1)  # the restarted flush: the email fails again and the text is repeated
    assert len(twilio.sent) == 2 and engine.pending_notifications("main") == 1  # kept queued (a transient failure)
    assert sorted((r["channel"], r["status"]) for r in engine.delivery_log("main")) == [
        ("email", "failed"), ("sms", "delivered"), ("sms", "delivered"),
    ]  # fmt: skip
    engine.tick(T0 + 1 + 30)  # the e-mail's next try (retry.requeue_seconds): still down, nobody texted again
    assert len(twilio.sent) == 2 and engine.pending_notifications("main") == 1
    assert [r["channel"] for r in engine.delivery_log("main")].count("email") == 2


def test_a_failed_email_of_lower_severity_does_not_fall_back_to_sms(store: Store, make_settings) -> None:
    env = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(free_port()), "SMTP_SECURITY": "none", **TWILIO_ENV}
    twilio = RecordingTwilioHttpClient()
    engine, _, _ = engine_with(
        store, make_settings, env, ["email"], rules=[VAR_WARN], twilio_http_client=twilio
    )
    engine.evaluate("main", snapshot(var__utilization=0.9), T0)
    engine.tick(T0)
    assert [r["channel"] for r in engine.delivery_log("main")] == ["email"] and twilio.requests == []


def test_email_without_smtp_configuration_is_skipped_with_the_fix_and_critical_falls_back(
    store: Store, make_settings
) -> None:
    twilio = RecordingTwilioHttpClient()
    engine, _, _ = engine_with(
        store, make_settings, dict(TWILIO_ENV), ["log", "email"], twilio_http_client=twilio
    )
    engine.evaluate("main", snapshot(var__utilization=1.5), T0)
    engine.tick(T0)
    by_channel = {r["channel"]: r for r in engine.delivery_log("main")}
    assert by_channel["log"]["status"] == "delivered"
    assert by_channel["email"]["status"] == "skipped" and "SMTP_HOST" in by_channel["email"]["error"]
    assert by_channel["sms"]["status"] == "delivered" and len(twilio.requests) == 1


# -- SMS (the real twilio.rest.Client) -----------------------------------------------------------------------


def sms_channel(statuses: list[int]) -> tuple[SmsChannel, RecordingTwilioHttpClient]:
    client = RecordingTwilioHttpClient(statuses)
    config = twilio_from_env(TWILIO_ENV)
    assert config is not None
    return SmsChannel(config, http_client=client), client


def test_twilio_request_carries_to_from_body_and_opens_no_socket(no_network: list[Any]) -> None:
    channel, client = sms_channel([201])
    sid = channel.send(
        "+15550100001", Message("subject", "body", "Riskdesk CRITICAL main: VaR 112%", "CRITICAL")
    )
    (request,) = client.requests
    assert request["method"] == "POST"
    assert request["uri"].endswith(f"/Accounts/{TWILIO_ENV['TWILIO_ACCOUNT_SID']}/Messages.json")
    assert request["data"] == {
        "To": "+15550100001",
        "From": "+15550009999",
        "Body": "Riskdesk CRITICAL main: VaR 112%",
    }
    assert request["auth"] == (TWILIO_ENV["TWILIO_ACCOUNT_SID"], TWILIO_ENV["TWILIO_AUTH_TOKEN"])
    assert sid == "SM" + "1".rjust(32, "0") and no_network == []


def test_twilio_429_and_500_are_retried_and_400_is_not(
    store: Store, make_settings, no_network: list[Any]
) -> None:
    twilio = RecordingTwilioHttpClient([429, 500, 201])
    engine, sleep, _ = engine_with(store, make_settings, dict(TWILIO_ENV), ["sms"], twilio_http_client=twilio)
    engine.evaluate("main", snapshot(var__utilization=1.5), T0)
    engine.tick(T0)
    (record,) = engine.delivery_log("main")
    assert (record["status"], record["attempts"], len(twilio.requests), sleep.calls) == (
        "delivered",
        3,
        3,
        [1.0, 2.0],
    )

    channel, client = sms_channel([400])
    with pytest.raises(PermanentDeliveryError, match="Twilio HTTP 400"):
        channel.send("+15550100001", Message("s", "b", "short"))
    twilio.statuses = [400]
    engine.resolve("main", "var_breach", actor="alice")
    engine.tick(T0 + 1)
    latest = engine.delivery_log("main")[0]
    assert (latest["status"], latest["attempts"], len(twilio.requests)) == ("failed", 1, 4)
    assert no_network == []


def test_twilio_keeps_failing_transiently_then_gives_up_after_the_bounded_attempts() -> None:
    channel, client = sms_channel([503, 503, 503, 503])
    from notifications.channels import TransientDeliveryError

    with pytest.raises(TransientDeliveryError, match="503"):
        channel.send("+15550100001", Message("s", "b", "short"))
    with pytest.raises(PermanentDeliveryError, match="E.164"):
        channel.send("0044 20 7946", Message("s", "b", "short"))
    assert len(client.requests) == 1


# -- webhook -------------------------------------------------------------------------------------------------


def test_webhook_posts_json_retries_429_after_retry_after_and_does_not_retry_404(
    store: Store, make_settings
) -> None:
    with webhook_server([429, 200, 404]) as (received, url):
        env = {"SLACK_URL": url}
        recipients = {"desk": {"webhook": "env:SLACK_URL"}}
        engine, sleep, _ = engine_with(
            store, make_settings, env, ["webhook"], notifications={"recipients": recipients}
        )
        engine.evaluate("main", snapshot(var__utilization=1.5), T0)
        engine.tick(T0)
        engine.resolve("main", "var_breach", actor="alice")
        engine.tick(T0 + 1)
    assert len(received) == 3
    assert received[0]["subject"] == "[Riskdesk CRITICAL] main: VaR above its limit"
    assert (
        received[0]["text"].startswith("[Riskdesk CRITICAL] main") and received[0]["severity"] == "CRITICAL"
    )
    assert [(e["kind"], e["rule_id"]) for e in received[0]["events"]] == [("triggered", "var_breach")]
    assert sleep.calls == [7.0]  # the server's Retry-After, above our 1 s backoff
    resolved, triggered = engine.delivery_log("main")
    assert (triggered["status"], triggered["attempts"]) == ("delivered", 2)
    assert (resolved["status"], resolved["attempts"], resolved["error"][:8]) == ("failed", 1, "HTTP 404")
    assert "secret" not in triggered["address"] and triggered["address"].startswith("http://127.0.0.1:")


def test_an_unset_webhook_secret_is_skipped_naming_the_variable(store: Store, make_settings) -> None:
    recipients = {"desk": {"webhook": "env:SLACK_URL"}}
    engine, _, _ = engine_with(
        store, make_settings, {}, ["webhook"], notifications={"recipients": recipients}
    )
    engine.evaluate("main", snapshot(var__utilization=1.5), T0)
    engine.tick(T0)
    (record,) = engine.delivery_log("main")
    assert record["status"] == "skipped" and "env:SLACK_URL is not set" in record["error"]


# -- grouping, rate limit, delivery log ----------------------------------------------------------------------


def test_alerts_of_one_portfolio_within_the_group_window_go_out_as_one_message(
    store: Store, make_settings
) -> None:
    rules = [
        VAR_CRIT,
        rule("conc", "concentration.largest_share", ">", 0.3, "CRITICAL", description="Too big"),
        rule("lev", "leverage", ">", 2.0, "CRITICAL", description="Leverage"),
    ]
    with smtp_server() as (server, env):
        engine, _, _ = engine_with(
            store, make_settings, env, ["email"], rules=rules, notifications={"group_wait_seconds": 10}
        )
        engine.evaluate("main", snapshot(var__utilization=1.5), T0)
        engine.evaluate(
            "main", snapshot(now=T0 + 3, var__utilization=1.5, concentration__largest_share=0.4), T0 + 3
        )
        engine.tick(T0 + 9)
        assert server.messages == []
        engine.evaluate(
            "main",
            snapshot(now=T0 + 10, var__utilization=1.5, concentration__largest_share=0.4, leverage=2.5),
            T0 + 10,
        )
        engine.tick(T0 + 10)
    (message,) = server.messages
    text = message.content.decode()
    assert "Subject: [Riskdesk CRITICAL] main: 3 alert updates (3 triggered)" in text
    assert "VaR above its limit" in text and "Too big" in text and "Leverage" in text
    (record,) = engine.delivery_log("main")
    assert record["event_count"] == 3


def test_the_per_recipient_rate_limit_holds_messages_back_and_groups_them(
    store: Store, make_settings
) -> None:
    twitchy = {**VAR_WARN, "clear_seconds": 0}  # MEDIUM: a CRITICAL is never held back (tests/test_notify_storm.py)
    with smtp_server() as (server, env):
        engine, _, _ = engine_with(
            store,
            make_settings,
            env,
            ["email"],
            rules=[twitchy],
            notifications={"rate_limit": {"max_messages": 2, "per_seconds": 600}},
        )
        for i in range(6):  # trigger, resolve, trigger, ... one per minute
            now = T0 + 60 * i
            engine.evaluate("main", snapshot(now=now, var__utilization=1.5 if i % 2 == 0 else 0.5), now)
            engine.tick(now)
        assert len(server.messages) == 2
        statuses = [r["status"] for r in reversed(engine.delivery_log("main"))]
        assert statuses == ["delivered", "delivered", "rate_limited"]  # one record per hold, not per tick
        engine.tick(T0 + 600)  # the first message leaves the window
        assert len(server.messages) == 3
    last = engine.delivery_log("main")[0]
    assert (last["status"], last["event_count"]) == ("delivered", 4)  # everything held back, in one message
    assert engine.pending_notifications("main") == 0


def test_the_delivery_log_filters_by_status_channel_and_alert(store: Store, make_settings) -> None:
    engine, _, _ = engine_with(
        store,
        make_settings,
        {},
        ["log", "email"],
        rules=[VAR_CRIT, VAR_WARN],
        notifications={"sms_fallback": False},
    )
    engine.evaluate("main", snapshot(var__utilization=1.5), T0)
    engine.tick(T0)
    assert {r["status"] for r in engine.delivery_log()} == {"delivered", "skipped"}
    assert [r["channel"] for r in engine.delivery_log(status="skipped")] == ["email"]
    alert_id = engine.list_alerts(rule_id="var_breach")[0]["alert_id"]
    assert len(engine.delivery_log("main", alert_id=alert_id)) == 2
    assert engine.delivery_log("main", alert_id="nope") == []


def test_only_one_process_flushes_at_a_time(store: Store, make_settings) -> None:
    engine, _, _ = engine_with(store, make_settings, {}, ["log"])
    engine.evaluate("main", snapshot(var__utilization=1.5), T0)
    assert store.acquire_notify_lock("other-process", 30)
    assert engine.tick(T0)["deliveries"] == [] and engine.pending_notifications("main") == 1
    store.release_notify_lock("other-process")
    assert [r["status"] for r in engine.tick(T0 + 1)["deliveries"]] == ["delivered"]


# -- configuration and templates -----------------------------------------------------------------------------


def test_secrets_come_from_the_environment_or_a_secrets_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "smtp_password"
    secret_file.write_text("s3cret\n")
    env = {
        "SMTP_HOST": "mail.example.com",
        "SMTP_USER": "risk@example.com",
        "SMTP_PASSWORD_FILE": str(secret_file),
        "SMTP_SECURITY": "ssl",
    }
    smtp = smtp_from_env(env)
    assert smtp is not None
    assert (smtp.host, smtp.port, smtp.security, smtp.user, smtp.password, smtp.sender) == (
        "mail.example.com",
        465,
        "ssl",
        "risk@example.com",
        "s3cret",
        "risk@example.com",
    )
    assert smtp_from_env({}) is None and twilio_from_env({"TWILIO_ACCOUNT_SID": "AC1"}) is None
    with pytest.raises(ConfigError, match="SMTP_SECURITY"):
        smtp_from_env({"SMTP_HOST": "h", "SMTP_SECURITY": "tls1.0"})
    with pytest.raises(ConfigError, match="SMTP_PASSWORD_FILE"):
        smtp_from_env({"SMTP_HOST": "h", "SMTP_PASSWORD_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"group_wait": 5}, r"notifications: unknown setting\(s\) \['group_wait'\]"),
        ({"group_interval_seconds": -1}, r"group_interval_seconds: must be a finite number >= 0"),
        ({"retry": {"max_attempts": 0}}, r"retry.max_attempts: must be >= 1"),
        ({"recipients": {"desk": {"pager": "123"}}}, r"recipients.desk: unknown setting\(s\) \['pager'\]"),
    ],
)
def test_bad_notification_settings_are_refused_with_a_clear_message(
    section: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        notification_config({"notifications": section}, env={})


def test_templates_format_values_for_humans() -> None:
    assert format_metric(52340.123, "money") == "$52,340.12"
    assert format_metric(-1234.5, "money") == "-$1,234.50"
    assert format_metric(0.0512, "fraction") == "5.12%"
    assert format_metric(118.04, "percent") == "118.04%"
    assert format_metric(1.523, "ratio") == "1.52x"
    assert format_metric(45, "seconds") == "45 s" and format_metric(600, "seconds") == "10 min"
    assert format_metric(None, "money") == "n/a"
    alert = {
        "alert_id": "a1",
        "rule_id": "dd",
        "severity": "HIGH",
        "description": "Daily drawdown beyond 3%",
        "metric": "drawdown.daily",
        "op": "<=",
        "threshold": -0.03,
        "value": -0.0412,
        "unit": "fraction",
        "triggered_at": T0,
        "resolved_at": T0 + 600,
        "resolved_by": "alice",
    }
    renderer = Renderer()
    for kind in ("triggered", "escalated", "acknowledged_reminder", "resolved"):
        event = {
            "event_id": "e",
            "kind": kind,
            "portfolio_id": "main",
            "ts": T0 + 600,
            "level": 1,
            "acknowledged_by": "bob",
            "acknowledged_at": T0 + 60,
            "alert": alert,
        }
        subject, body, short = renderer.render_event(event)
        assert "main" in subject and "Daily drawdown beyond 3%" in subject
        assert "-4.12%" in body and "-3.00%" in body and "2023-11-14 22:13:20 UTC" in body
        assert len(short) < 320 and "\n" not in short
    assert "acked by bob 9 min ago" in renderer.render_event({**event, "kind": "acknowledged_reminder"})[2]
    assert "Resolved by alice" in renderer.render_event({**event, "kind": "resolved"})[1]


def test_an_alert_whose_rule_is_raised_to_critical_falls_back_to_sms_when_its_email_fails(
    store: Store, make_settings: Any
) -> None:
    # Arrange: a MEDIUM alert whose email fails (no fallback: not CRITICAL)
    env = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(free_port()), "SMTP_SECURITY": "none", **TWILIO_ENV}
    twilio = RecordingTwilioHttpClient()
    engine, _, clock = engine_with(store, make_settings, env, ["email"], rules=[VAR_WARN], twilio_http_client=twilio)
    engine.evaluate("main", snapshot(var__utilization=0.9), T0)
    engine.tick(T0)
    assert twilio.requests == []
    # Act: the operator makes the rule CRITICAL; the next evaluation
    clock.now = T0 + 1
    engine.update_rule("var_warning", {"severity": "CRITICAL"}, actor="ops")
    engine.evaluate("main", snapshot(now=T0 + 1, var__utilization=0.9), T0 + 1)
    engine.tick(T0 + 1)
    # Assert: the alert, now CRITICAL, is told again; its failed email falls back to a text
    (sent,) = twilio.sent
    assert sent["To"] == "+15550100001" and sent["Body"].startswith("Riskdesk CRITICAL main")
    fallback = [r for r in engine.delivery_log("main") if r["channel"] == "sms"]
    assert [(r["status"], r["fallback_for"], r["severity"]) for r in fallback] == [("delivered", "email", "CRITICAL")]


def test_the_delivery_daemon_beats_after_each_flush_and_not_after_a_failed_one(store: Store, make_settings) -> None:
    """``hb:notify`` (the System page's liveness of the process that sends every e-mail and SMS): written after
    each flush on the notifier's clock; a flush that fails (Redis gone) writes none, so the page goes stale."""
    import threading

    from notifications import service

    settings = make_settings({"notifications": {"recipients": RECIPIENTS}})
    notifier = service.build_notifier(store, settings, SimClock(T0), env={})
    assert service.run(notifier, threading.Event(), interval_seconds=0.0, max_flushes=2) == 0
    beat = store.read_heartbeat(service.HEARTBEAT_COMPONENT)
    assert beat is not None and float(beat["ts"]) == T0 and int(beat["flushes"]) == 2
    store.client.delete(heartbeat_key(service.HEARTBEAT_COMPONENT))
    notifier.flush = lambda *a, **k: (_ for _ in ()).throw(ConnectionError("Redis is gone"))  # type: ignore[method-assign]
    service.run(notifier, threading.Event(), interval_seconds=0.0, max_flushes=1)  # logged, the loop carries on
    assert store.read_heartbeat(service.HEARTBEAT_COMPONENT) is None


def test_the_delivery_daemons_heartbeat_counts_the_failed_deliveries_of_its_window_across_a_restart(
    store: Store, make_settings
) -> None:
    """A notifier that is alive but cannot reach its SMTP server pages nobody: ``hb:notify`` counts the deliveries
    that failed in the last 15 minutes (``failed_recent``) and names the newest, a restarted daemon counts them
    again from the delivery log, and a failure leaves the window exactly 900 s after it (at the boundary: gone;
    one second before: still counted). Delivered and cancelled records are not failures (held back and skipped
    ones count too: tests/test_notify_storm.py)."""
    import threading

    from notifications import service
    from notifications.service import FAILURE_WINDOW_SECONDS, FailureWindow

    level = [{"delay_seconds": 0, "recipients": ["desk"], "channels": ["email"]}]
    settings = make_settings({
        "alert_rules": [VAR_CRIT],
        "notifications": {"group_wait_seconds": 0, "group_interval_seconds": 0, "retry": RETRY,
                          "recipients": RECIPIENTS, "sms_fallback": False},
        "escalation": {"CRITICAL": level},
    })  # fmt: skip
    clock = SimClock()
    store.client.sadd(PORTFOLIOS_KEY, "main")  # registered, as the warm-up does: the daemon flushes every one
    with smtp_server(["550 5.1.1 mailbox unavailable"]) as (_, env):
        config = notification_config(settings.extra, env)
        engine = build_alert_engine(store, settings, clock, recipients=config.recipients)  # it does not deliver
        engine.evaluate("main", snapshot(var__utilization=1.5), T0)
        engine.tick(T0)  # the outbox entry, for the daemon to send
        notifier = service.build_notifier(store, settings, clock, env=env, sleep=SleepRecorder())
        assert service.run(notifier, threading.Event(), interval_seconds=0.0, max_flushes=1) == 1
    beat = store.read_heartbeat(service.HEARTBEAT_COMPONENT)
    assert beat is not None and beat["failed_recent"] == "1"
    assert float(beat["last_failure_ts"]) == T0
    assert beat["last_failure"].startswith("email to desk (main): SMTP 550 5.1.1 mailbox unavailable")

    clock.advance(FAILURE_WINDOW_SECONDS - 1)  # a restart 899 s later: counted again from the log
    restarted = service.build_notifier(store, settings, clock, env={}, sleep=SleepRecorder())
    service.run(restarted, threading.Event(), interval_seconds=0.0, max_flushes=1)
    assert store.read_heartbeat(service.HEARTBEAT_COMPONENT)["failed_recent"] == "1"  # type: ignore[index]
    clock.advance(1)  # exactly 900 s after the failure: out of the window
    service.run(restarted, threading.Event(), interval_seconds=0.0, max_flushes=1)
    beat = store.read_heartbeat(service.HEARTBEAT_COMPONENT)
    assert beat is not None and (beat["failed_recent"], beat["last_failure"]) == ("0", "")

    window = FailureWindow(60.0)
    window.add([{"ts": 10.0, "status": s, "channel": "sms"} for s in ("delivered", "cancelled")])
    window.add([{"ts": 20.0, "status": "failed", "channel": "sms", "recipient": "desk", "portfolio_id": "p",
                 "error": "HTTP 500"}, {"ts": float("nan"), "status": "failed"}])  # fmt: skip
    assert window.fields(30.0)["failed_recent"] == 1
    assert window.fields(30.0)["last_failure"] == "sms to desk (p): HTTP 500"
    assert window.fields(80.0)["failed_recent"] == 0  # 20 + 60: the boundary
