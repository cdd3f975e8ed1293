"""The records of the snapshot, the outbox and the delivery log round-trip through their stored dict form (the
layering itself is checked in tests/test_architecture.py)."""

from __future__ import annotations

import json

from engine.alert_records import Alert, Delivery, OutboxEntry
from engine.records import Channel, Severity, Snapshot

from .alerts_support import T0, snapshot


def test_a_snapshot_record_gives_back_exactly_the_stored_json() -> None:
    stored = snapshot(
        margin__level=150.0,
        data__missing_prices=["ZZZ"],
        positions=[
            {
                "ticker": "AAA", "qty": 10, "avg_price": 100.0, "last": 101.0, "market_value": 1010.0,
                "weight": 0.001, "unrealized_pnl": 10.0, "realized_pnl": 0.0, "mfe": 12.0, "mae": -3.0,
            }
        ],
    )  # fmt: skip
    record = Snapshot.from_dict(stored)
    assert record.var.utilization == 0.25 and record.positions[0].ticker == "AAA"
    assert json.dumps(record.to_dict()) == json.dumps(stored)


def test_an_outbox_entry_names_its_recipient_in_the_field_and_round_trips() -> None:
    entry = OutboxEntry({"event_id": "e1", "kind": "triggered"}, Channel.EMAIL, "desk", T0)
    assert entry.field == f"e1|{T0!r}|email|@desk"
    assert OutboxEntry.parse_field(entry.field) == ("e1", T0, "email|@desk")
    assert OutboxEntry.from_dict(json.loads(json.dumps(entry.to_dict()))) == entry


def test_a_delivery_record_round_trips_with_its_stream_id() -> None:
    stored = {
        "ts": T0, "portfolio_id": "main", "message_id": "m1", "channel": "email", "recipient": "desk",
        "address": "desk@test.local", "status": "delivered", "error": "", "attempts": 1, "severity": "CRITICAL",
        "subject": "s", "fallback_for": None, "provider_id": "<id>", "event_count": 1,
        "events": [{"event_id": "e1", "kind": "triggered", "alert_id": "a", "rule_id": "r", "severity": "CRITICAL",
                    "level": 0}],
        "id": "1-0",
    }  # fmt: skip
    assert Delivery.from_dict(stored).to_dict() == stored


def test_an_alert_record_reads_a_stored_alert_and_gives_back_the_same_mapping(store, make_settings) -> None:
    from notifications.service import build_delivering_engine

    from .alerts_support import rule

    settings = make_settings({"alert_rules": [rule("var_breach", "var.utilization", ">=", 1.0, "CRITICAL")]})
    engine = build_delivering_engine(store, settings, env={})
    engine.evaluate("main", snapshot(var__utilization=1.5), T0)
    stored = store.read_active_alerts("main")["var_breach"]
    alert = Alert.from_dict(stored)
    assert alert.active and alert.severity is Severity.CRITICAL and alert.value == 1.5
    assert alert.to_dict() == stored and "escalation" in alert.extra
