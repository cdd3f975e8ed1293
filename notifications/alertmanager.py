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
and its resolution grouped together) post only the latest.

``severity`` stays a label (Alertmanager routes on it, and receivers group and silence by it), so a rule
whose severity is edited while its alert is active would post the alert under a second label set and leave
the first one firing, a ghost, until its ``endsAt``. Each send therefore first reads the portfolio's
Riskdesk alerts back (``GET /api/v2/alerts?filter=portfolio="..."``) and posts, with the new state, the
end (``endsAt`` = now) of every alert of the same rule and portfolio still active there under another
severity. An Alertmanager that refuses the read (HTTP 4xx: a proxy that only lets posts through) still gets
the post (so does one that does not implement the read, HTTP 501); the delivery record says the ghosts could
not be looked for. Network errors, 429 and other 5xx to the read fail the attempt as the post would.

An attempt is bounded by ``timeout`` (``[notifications.alertmanager] timeout_seconds``) as a whole, not per
request: it starts one deadline, the read waits at most :data:`READ_SHARE` of it, the post for what the read
left. A hung Alertmanager therefore holds the notifier (every portfolio and channel behind it) for ``timeout``
per attempt, as configured, not twice that. The read is the optional part: one that does not answer within its
share is given up (the note says the former severities were not checked) and the page is posted in the time
left, so a slow but healthy Alertmanager still gets every page (a read slow on every try would otherwise have
failed every retry). urllib applies the remaining time to each socket wait, so only a server trickling its
answer byte by byte could stretch the read; the deadline is checked again before the post, and an attempt
past it fails as transient with nothing posted (the retry starts afresh), never half-delivering late.

Errors follow :mod:`notifications.channels`: HTTP 429 / 5xx and network errors are transient (retried),
other 4xx permanent.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode, urlsplit

from engine.records import AlertStatus, Clock
from engine.records import Channel as ChannelName
from notifications.channels import Message, Opener, PermanentDeliveryError, TransientDeliveryError
from notifications.masking import mask_text, mask_url

ALERTS_PATH = "/api/v2/alerts"
DEFAULT_ACTIVE_FOR_SECONDS = 86_400.0
SEVERITY_LABEL = "severity"
IDENTITY_LABELS = ("alertname", "rule", "portfolio")
"""The labels besides ``severity`` that :func:`alert_payload` writes: an alert read back with exactly these
(and a severity) is one of ours."""
READ_SHARE = 0.5
"""The share of an attempt's timeout the read of the alerts held (the optional look for former severities) may
use; the rest is the post's, the page itself (module docstring)."""


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
        portfolio = str(alerts[0]["labels"]["portfolio"])
        start = time.monotonic()
        deadline = start + self.timeout
        ended, note = self.superseded(address, portfolio, alerts, start + READ_SHARE * self.timeout)
        left = self._left(deadline, address, "before the post; nothing posted")
        posted = alerts + ended
        request = urllib.request.Request(
            address.rstrip("/") + ALERTS_PATH,
            data=json.dumps(posted, allow_nan=False).encode("utf-8"),
            headers={"Content-Type": "application/json", "User-Agent": "riskdesk-notifier"},
            method="POST",
        )
        try:
            with self.opener(request, timeout=left) as response:
                status = getattr(response, "status", 200)
        except urllib.error.HTTPError as exc:
            text = f"HTTP {exc.code} from Alertmanager {mask_url(address)}"
            if exc.code == 429 or exc.code >= 500:
                raise TransientDeliveryError(text, code=exc.code) from exc
            raise PermanentDeliveryError(text, code=exc.code) from exc
        except (urllib.error.URLError, OSError) as exc:
            detail = mask_text(repr(exc), [address])
            raise TransientDeliveryError(f"Alertmanager {mask_url(address)}: {detail}") from exc
        ends = f", ended {len(ended)} under a former severity" if ended else ""
        return f"HTTP {status}, {len(alerts)} alert(s){ends}{note}"

    def _left(self, deadline: float, address: str, when: str) -> float:
        """Seconds left to the attempt's ``deadline`` (``time.monotonic``), the bound of its next request.

        Raises :class:`TransientDeliveryError` when none is left: the attempt is over, the retry starts afresh.
        """
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransientDeliveryError(
                f"Alertmanager {mask_url(address)}: the attempt's {self.timeout:g} s timeout ran out {when}"
            )
        return left

    def superseded(
        self, address: str, portfolio: str, alerts: list[dict[str, Any]], deadline: float | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """The end (``endsAt`` = now) of each alert Alertmanager holds active for a rule of ``alerts`` under
        another severity (the rule was edited meanwhile), and a note for the delivery record.

        Raises :class:`TransientDeliveryError` when Alertmanager cannot be read (network, 429, 5xx), like the
        post would; a 4xx or 501 answer (reading not allowed or not implemented) returns no ends and says so in
        the note: the post still goes out, as it does after a read that timed out (the read is optional; the
        post is the page). The read waits at most until ``deadline`` (``time.monotonic``; the attempt's share,
        see the module docstring), by default ``timeout`` from now.
        """
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        query = urlencode({"filter": f"portfolio={json.dumps(portfolio, ensure_ascii=False)}"})
        request = urllib.request.Request(
            f"{address.rstrip('/')}{ALERTS_PATH}?{query}",
            headers={"Accept": "application/json", "User-Agent": "riskdesk-notifier"},
            method="GET",
        )
        try:
            with self.opener(request, timeout=self._left(deadline, address, "before the read")) as response:
                held = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 429 or (exc.code >= 500 and exc.code != HTTPStatus.NOT_IMPLEMENTED):
                raise TransientDeliveryError(f"HTTP {exc.code} from Alertmanager {mask_url(address)}") from exc
            return [], f" (former severities not checked: HTTP {exc.code} to the read)"
        except (urllib.error.URLError, OSError) as exc:
            if isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError):
                return [], " (former severities not checked: the read timed out)"
            detail = mask_text(repr(exc), [address])
            raise TransientDeliveryError(f"Alertmanager {mask_url(address)}: {detail}") from exc
        except ValueError:
            return [], " (former severities not checked: the alert list is not JSON)"
        wanted = {_identity(a["labels"]): a["labels"][SEVERITY_LABEL] for a in alerts}
        now = self.clock()
        ends: list[dict[str, Any]] = []
        for alert in held if isinstance(held, list) else ():
            labels = alert.get("labels") if isinstance(alert, dict) else None
            if not isinstance(labels, dict) or set(labels) != {*IDENTITY_LABELS, SEVERITY_LABEL}:
                continue  # not an alert this channel posted
            current = wanted.get(_identity(labels))
            if current is None or labels[SEVERITY_LABEL] == current:
                continue
            started = _epoch(alert.get("startsAt"))
            started = now if started is None else started
            ends.append(
                {
                    "labels": labels,
                    "annotations": alert.get("annotations") or {},
                    "startsAt": rfc3339(started),
                    "endsAt": rfc3339(max(now, started)),
                }
            )
        return ends, ""


def _identity(labels: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(str(labels.get(k)) for k in IDENTITY_LABELS)


def _epoch(stamp: Any) -> float | None:
    """An RFC 3339 time as Alertmanager writes it (``...Z``, up to nine fraction digits) in epoch seconds."""
    try:
        return datetime.fromisoformat(stamp).timestamp() if isinstance(stamp, str) else None
    except ValueError:
        return None
