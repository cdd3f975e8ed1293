"""Typed records of the alerting pipeline: an alert as stored, an outbox entry, a delivery.

Split from :mod:`engine.records` (which keeps the vocabulary: :class:`~engine.records.Severity`,
:class:`~engine.records.AlertStatus`, :class:`~engine.records.Channel`); the JSON forms are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.records import ACTIVE_ALERT_STATUSES, AlertStatus, Channel, Severity


@dataclass(frozen=True)
class Alert:
    """An alert record as stored in ``pf:{id}:alerts`` (one per rule) and in each history record.

    The engine (:mod:`logic.lifecycle`) plans on the dict form and writes it; this record is the typed view
    for readers. Fields an alert of one kind carries only (an action alert's ``summary``, ``ok``,
    ``source_alert_id``, ``history``, ``occurrences``; a metric alert's ``actions``; the escalation
    bookkeeping) stay in :attr:`extra`. ``to_dict()`` gives back the same mapping ``from_dict`` read.
    """

    alert_id: str
    portfolio_id: str
    rule_id: str
    kind: str
    """``metric`` (a rule's condition) or ``action`` (the outcome of an automated action)."""
    metric: str
    op: str
    threshold: float
    unit: str
    severity: Severity
    description: str
    status: AlertStatus
    value: float | None
    trigger_value: float | None
    stale: bool
    breach_since: float | None
    triggered_at: float
    updated_at: float
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None
    ack_note: str = ""
    ack_timeout_at: float | None = None
    resolved_by: str | None = None
    resolved_at: float | None = None
    resolve_reason: str = ""
    inhibited: bool = False
    notified: bool = False
    last_notified_at: float | None = None
    repeats: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_ALERT_STATUSES

    def to_dict(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in _ALERT_FIELDS}
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alert:
        known = {f: data[f] for f in _ALERT_FIELDS if f in data}
        known["severity"] = Severity(data["severity"])
        known["status"] = AlertStatus(data["status"])
        return cls(**known, extra={k: v for k, v in data.items() if k not in _ALERT_FIELDS})


_ALERT_FIELDS = (
    "alert_id", "portfolio_id", "rule_id", "kind", "metric", "op", "threshold", "unit", "severity", "description",
    "status", "value", "trigger_value", "stale", "breach_since", "triggered_at", "updated_at", "acknowledged_by",
    "acknowledged_at", "ack_note", "ack_timeout_at", "resolved_by", "resolved_at", "resolve_reason", "inhibited",
    "notified", "last_notified_at", "repeats",
)  # fmt: skip


@dataclass(frozen=True)
class OutboxEntry:
    """One notification to send: an alert event for one recipient *name* on one channel.

    :mod:`logic.alerts` writes it to the portfolio's outbox in the same transaction as the alert change;
    :mod:`notifications` resolves the name to an address from its own configuration when it sends. The outbox
    field name (:attr:`field`) carries everything a flush needs to group entries without decoding them.
    """

    event: Mapping[str, Any]
    """The event as templates see it: ``event_id``, ``kind``, ``portfolio_id``, ``ts``, ``level``, ``repeat``,
    ``channels``, ``acknowledged_by``, ``acknowledged_at`` and ``alert`` (the public alert record)."""
    channel: Channel
    recipient: str
    """A name of ``[notifications.recipients]``; ``log`` for the log channel."""
    enqueued_at: float

    FIELD_SEPARATOR = "|"
    RECIPIENT_MARK = "@"
    """Marks a recipient name in a field name; an older outbox entry carries a resolved address there."""

    @property
    def field(self) -> str:
        """``<event id>|<enqueued at>|<channel>|@<recipient>``."""
        return f"{self.event['event_id']}|{self.enqueued_at!r}|{self.channel}|{self.RECIPIENT_MARK}{self.recipient}"

    @staticmethod
    def parse_field(name: str) -> tuple[str, float, str]:
        """(event id, enqueued at, the rest: ``<channel>|@<recipient>``, or an older entry's target key)."""
        event_id, enqueued_at, rest = name.split(OutboxEntry.FIELD_SEPARATOR, 2)
        return event_id, float(enqueued_at), rest

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": dict(self.event),
            "channel": str(self.channel),
            "recipient": self.recipient,
            "enqueued_at": self.enqueued_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OutboxEntry:
        return cls(data["event"], Channel(data["channel"]), str(data["recipient"]), float(data["enqueued_at"]))


@dataclass(frozen=True)
class Delivery:
    """One record of the delivery log ``pf:{id}:deliveries``: a message (or a hold, or a skip) to one target."""

    ts: float
    portfolio_id: str
    message_id: str
    channel: str
    recipient: str
    """Recipient names, comma-separated (one message may serve several names sharing an address)."""
    address: str
    """Masked where the address is a secret (a webhook URL keeps only its host)."""
    status: str
    """``delivered``, ``failed``, ``skipped`` or ``rate_limited``."""
    error: str
    attempts: int
    severity: str
    subject: str
    fallback_for: str | None
    provider_id: str | None
    event_count: int
    events: tuple[Mapping[str, Any], ...]
    """At most ``MAX_EVENTS_IN_RECORD`` of ``event_id``, ``kind``, ``alert_id``, ``rule_id``, ``severity``,
    ``level``."""
    id: str | None = None
    """The stream entry id, once read back from the log."""

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON (``id`` only when read back)."""
        out = {f: getattr(self, f) for f in _DELIVERY_FIELDS}
        out["events"] = [dict(e) for e in self.events]
        if self.id is not None:
            out["id"] = self.id
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Delivery:
        values: dict[str, Any] = {f: data.get(f) for f in _DELIVERY_FIELDS}
        values["events"] = tuple(data.get("events") or ())
        return cls(**values, id=data.get("id"))


_DELIVERY_FIELDS = (
    "ts", "portfolio_id", "message_id", "channel", "recipient", "address", "status", "error", "attempts",
    "severity", "subject", "fallback_for", "provider_id", "event_count", "events",
)  # fmt: skip
