"""The ``alertmanager`` channel: Riskdesk alerts posted to a Prometheus Alertmanager (``POST /api/v2/alerts``).

A desk that already routes its pages through Alertmanager gets Riskdesk's alerts there, so its routes,
inhibitions and silences apply. The recipient's address is the Alertmanager's base URL
(``ops = { alertmanager = "http://127.0.0.1:9093" }`` in ``[notifications.recipients]``); an escalation level
naming ``alertmanager`` among its channels posts each of its events as one Alertmanager alert::

    labels        alertname = rule id, rule = rule id, portfolio, severity (LOW .. CRITICAL)
    annotations   description, value, threshold, summary (the rendered subject)
    startsAt      when the alert was triggered
    endsAt        resolved: when it was resolved (Alertmanager then shows it resolved and notifies its
                  receivers' send_resolved); active: now + ``[notifications.alertmanager] active_for_seconds``
                  (each escalation or reminder posts it again and extends it; an alert Riskdesk never
                  resolves, because it stopped, expires there after that long)

The labels identify the alert in Alertmanager: the same rule and portfolio is one alert across its
lifecycle, so the resolution replaces the firing one. Several events of one alert in one message (a trigger
and its resolution grouped together) post only the latest. Errors follow :mod:`notifications.channels`:
HTTP 429 / 5xx and network errors are transient (retried), other 4xx permanent.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from engine.records import AlertStatus, Clock
from engine.records import Channel as ChannelName
from notifications.channels import Message, Opener, PermanentDeliveryError, TransientDeliveryError
from notifications.masking import mask_text, mask_url

ALERTS_PATH = "/api/v2/alerts"
DEFAULT_ACTIVE_FOR_SECONDS = 86_400.0


def rfc3339(epoch: float) -> str:
    """Epoch seconds as the RFC 3339 UTC time Alertmanager reads (millisecond precision)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def alert_payload(
    portfolio_id: str, event: Mapping[str, Any], now: float, active_for_seconds: float, summary: str = ""
) -> dict[str, Any]:
    """One Alertmanager v2 alert (``postableAlert``) for one event summary of a rendered :class:`Message`."""
    rule = str(event.get("rule_id") or event.get("alert_id") or "riskdesk")
    severity = str(event.get("severity") or "")
    started = event.get("triggered_at") or event.get("ts") or now
    out: dict[str, Any] = {
        "labels": {"alertname": rule, "rule": rule, "portfolio": portfolio_id, "severity": severity},
        "annotations": {
            "description": _text(event.get("description")),
            "value": _text(event.get("value")),
            "threshold": _text(event.get("threshold")),
            "summary": summary,
        },
        "startsAt": rfc3339(float(started)),
    }
    if event.get("status") == AlertStatus.RESOLVED:
        ended = event.get("resolved_at") or event.get("ts") or now
        out["endsAt"] = rfc3339(max(float(ended), float(started)))
    else:
        out["endsAt"] = rfc3339(max(now, float(started)) + active_for_seconds)
    return out


class AlertmanagerChannel:
    """POST a message's events as alerts to ``<address>/api/v2/alerts`` (see the module docstring)."""

    name: str = ChannelName.ALERTMANAGER

    def __init__(
        self,
        active_for_seconds: float = DEFAULT_ACTIVE_FOR_SECONDS,
        timeout: float = 10.0,
        opener: Opener | None = None,
        clock: Clock = time.time,
    ) -> None:
        if not active_for_seconds > 0:
            raise ValueError("active_for_seconds must be > 0")
        self.active_for_seconds = active_for_seconds
        self.timeout = timeout
        self.opener = opener or urllib.request.urlopen
        self.clock = clock
        """Wall time: Alertmanager compares ``endsAt`` with its own clock."""

    def alerts(self, message: Message) -> list[dict[str, Any]]:
        """The alerts one message posts: the latest event of each rule (events come oldest first)."""
        portfolio = str(message.payload.get("portfolio_id") or "")
        latest: dict[str, Mapping[str, Any]] = {}
        for event in message.payload.get("events") or ():
            latest[str(event.get("rule_id") or event.get("alert_id"))] = event
        now = self.clock()
        return [alert_payload(portfolio, e, now, self.active_for_seconds, message.subject) for e in latest.values()]

    def send(self, address: str, message: Message) -> str | None:
        if urlsplit(address).scheme not in ("http", "https"):
            raise PermanentDeliveryError(f"Alertmanager URL must be http(s): {mask_url(address)}")
        alerts = self.alerts(message)
        if not alerts:
            raise PermanentDeliveryError("the message carries no alert event to post")
        request = urllib.request.Request(
            address.rstrip("/") + ALERTS_PATH,
            data=json.dumps(alerts, allow_nan=False).encode("utf-8"),
            headers={"Content-Type": "application/json", "User-Agent": "riskdesk-notifier"},
            method="POST",
        )
        try:
            with self.opener(request, timeout=self.timeout) as response:
                status = getattr(response, "status", 200)
        except urllib.error.HTTPError as exc:
            text = f"HTTP {exc.code} from Alertmanager {mask_url(address)}"
            if exc.code == 429 or exc.code >= 500:
                raise TransientDeliveryError(text, code=exc.code) from exc
            raise PermanentDeliveryError(text, code=exc.code) from exc
        except (urllib.error.URLError, OSError) as exc:
            detail = mask_text(repr(exc), [address])
            raise TransientDeliveryError(f"Alertmanager {mask_url(address)}: {detail}") from exc
        return f"HTTP {status}, {len(alerts)} alert(s)"
