"""The ``alertmanager`` notification channel: the posted alerts (labels, annotations, startsAt / endsAt), HTTP
errors against a real loopback server, and the lifecycle against Debian's real ``prometheus-alertmanager``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConfigError
from engine.records import Channel
from engine.store import Store
from notifications.alertmanager import ALERTS_PATH, AlertmanagerChannel, alert_payload, rfc3339
from notifications.channels import Message, PermanentDeliveryError
from notifications.config import notification_config

from .alerts_support import T0, rule, snapshot, webhook_server
from .prom_support import alertmanager, get_json, wait_until
from .test_notifications import engine_with

VAR_CRIT = rule("var_breach", "var.utilization", ">=", 1.0, "CRITICAL", description="VaR above its limit")
WALL = 1_800_000_000.0
"""The channel's (wall) clock in the unit tests."""


def parse(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def event(status: str = "TRIGGERED", **extra: Any) -> dict[str, Any]:
    return {
        "event_id": "e1", "kind": "triggered", "ts": T0, "rule_id": "var_breach", "severity": "CRITICAL",
        "threshold": 1.0, "value": 1.25, "status": status, "description": "VaR above its limit",
        "triggered_at": T0, "resolved_at": None, **extra,
    }  # fmt: skip


def test_rfc3339_is_utc_with_milliseconds() -> None:
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(T0 + 0.25) == "2023-11-14T22:13:20.250Z"


def test_a_triggered_alert_carries_its_labels_annotations_and_stays_active_for_the_setting() -> None:
    posted = alert_payload("main", event(), WALL, 600.0, "subject")
    assert posted["labels"] == {
        "alertname": "var_breach", "rule": "var_breach", "portfolio": "main", "severity": "CRITICAL",
    }  # fmt: skip
    assert posted["annotations"] == {
        "description": "VaR above its limit", "value": "1.25", "threshold": "1", "summary": "subject",
    }  # fmt: skip
    assert parse(posted["startsAt"]) == T0
    assert parse(posted["endsAt"]) == WALL + 600.0


def test_a_resolved_alert_ends_when_it_was_resolved() -> None:
    posted = alert_payload("main", event("RESOLVED", resolved_at=T0 + 90.0), WALL, 600.0)
    assert parse(posted["startsAt"]) == T0
    assert parse(posted["endsAt"]) == T0 + 90.0


def test_a_message_with_a_trigger_and_its_resolution_posts_only_the_latest_state() -> None:
    channel = AlertmanagerChannel(600.0, clock=lambda: WALL)
    events = [event(), event("RESOLVED", event_id="e2", kind="resolved", ts=T0 + 5, resolved_at=T0 + 5)]
    message = Message("s", "b", "x", "CRITICAL", {"portfolio_id": "main", "events": events})
    (only,) = channel.alerts(message)
    assert parse(only["endsAt"]) == T0 + 5


def test_active_for_seconds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="active_for_seconds"):
        AlertmanagerChannel(0.0)
    with pytest.raises(ConfigError, match="active_for_seconds"):
        notification_config({"notifications": {"alertmanager": {"active_for_seconds": 0}}}, {})
    config = notification_config({"notifications": {"alertmanager": {"active_for_seconds": 1}}}, {})
    assert config.alertmanager.active_for_seconds == 1.0


def test_a_non_http_address_is_a_permanent_failure() -> None:
    message = Message("s", "b", "x", "CRITICAL", {"portfolio_id": "main", "events": [event()]})
    with pytest.raises(PermanentDeliveryError, match="http"):
        AlertmanagerChannel().send("ftp://127.0.0.1:9093", message)


def test_the_channel_posts_to_the_v2_api_retries_a_503_and_does_not_retry_a_400(
    store: Store, make_settings: Any
) -> None:
    with webhook_server([503, 200, 400]) as (bodies, url):
        base = url.split("/hooks/")[0]
        recipients = {"desk": {"alertmanager": base}}
        engine, sleep, _ = engine_with(store, make_settings, {}, ["alertmanager"], rules=[VAR_CRIT],
                                       notifications={"recipients": recipients})  # fmt: skip
        engine.evaluate("main", snapshot(var__utilization=1.5), T0)
        engine.tick(T0)
        engine.evaluate("main", snapshot(var__utilization=0.5, now=T0 + 1), T0 + 1)
        engine.tick(T0 + 1)
    received: list[list[dict[str, Any]]] = list(bodies)  # type: ignore[arg-type]  # the alerts API takes a list
    assert len(received) == 3
    assert [{**a, "endsAt": None} for a in received[0]] == [{**a, "endsAt": None} for a in received[1]]  # again
    (firing,) = received[1]
    assert firing["labels"]["portfolio"] == "main" and firing["annotations"]["value"] == "1.5"
    (resolved,) = received[2]
    assert parse(resolved["endsAt"]) == T0 + 1
    resolved_record, triggered_record = engine.delivery_log("main")
    assert triggered_record["channel"] == Channel.ALERTMANAGER
    assert (triggered_record["status"], triggered_record["attempts"]) == ("delivered", 2)
    assert (resolved_record["status"], resolved_record["attempts"]) == ("failed", 1)
    assert resolved_record["error"].startswith("HTTP 400 from Alertmanager")
    assert len(sleep.calls) == 1


def test_the_alerts_path_is_the_v2_api() -> None:
    assert ALERTS_PATH == "/api/v2/alerts"


# -- the real Alertmanager -----------------------------------------------------------------------------------


def am_alerts(base: str) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = get_json(f"{base}/api/v2/alerts")
    return [a for a in alerts if a["labels"].get("rule") == "var_breach"]


@pytest.mark.slow
def test_a_triggered_alert_appears_in_alertmanager_with_its_labels_and_goes_when_resolved(
    store: Store, make_settings: Any, tmp_path: Path
) -> None:
    with alertmanager(tmp_path) as base:
        recipients = {"desk": {"alertmanager": base}}
        engine, _, _ = engine_with(store, make_settings, {}, ["log", "alertmanager"], rules=[VAR_CRIT],
                                   notifications={"recipients": recipients})  # fmt: skip
        assert am_alerts(base) == []
        engine.evaluate("main", snapshot(var__utilization=1.25), T0)
        engine.tick(T0)
        assert store.read_active_alerts("main")["var_breach"]["status"] == "TRIGGERED"
        (firing,) = wait_until(lambda: am_alerts(base), 30, "the alert in Alertmanager")
        assert firing["labels"] == {
            "alertname": "var_breach", "rule": "var_breach", "portfolio": "main", "severity": "CRITICAL",
        }  # fmt: skip
        assert firing["annotations"]["description"] == "VaR above its limit"
        assert (firing["annotations"]["value"], firing["annotations"]["threshold"]) == ("1.25", "1")
        assert firing["status"]["state"] == "active"
        assert parse(firing["startsAt"]) == T0

        engine.evaluate("main", snapshot(var__utilization=0.5, now=T0 + 2), T0 + 2)
        engine.tick(T0 + 2)
        assert "var_breach" not in store.read_active_alerts("main")
        wait_until(lambda: am_alerts(base) == [], 30, "the alert to leave Alertmanager's active alerts")
        delivered = engine.delivery_log("main", channel="alertmanager", status="delivered")
        assert [r["events"][0]["kind"] for r in delivered] == ["resolved", "triggered"]
