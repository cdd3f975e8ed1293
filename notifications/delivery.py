"""Delivery: the outbox, grouping, per-recipient rate limit, retries with backoff, SMS fallback, delivery log.

How a notification travels
--------------------------
1. ``logic/alerts.py`` changes an alert and, **in the same Redis transaction**, adds one outbox entry per
   channel and recipient *name* (:class:`engine.alert_records.OutboxEntry`) to ``pf:{id}:outbox``. A crash can
   therefore never leave a changed alert without its notification, nor a notification without its alert
   change. The alert engine knows names only; addresses are this package's.
2. :meth:`Notifier.flush` (run by ``python -m notifications``, see :mod:`notifications.service`) resolves
   each entry's recipient to a target (channel + address) from the configuration and groups the waiting
   entries by target; an entry whose recipient has no address for its channel is dropped (that level simply
   does not reach them by that channel). A target's group is due ``group_wait_seconds`` after its oldest
   entry and never sooner than ``group_interval_seconds`` after the last message to that target
   (Alertmanager's group_wait and group_interval): all entries due together become **one message** (one
   template, or the digest).
3. The message is sent with bounded retries: transient failures (SMTP 4xx, HTTP 429/5xx, network) wait
   ``backoff * multiplier**(n-1)`` (capped; a server's Retry-After is honoured up to the cap) through the
   injected ``sleep``; permanent failures (SMTP 5xx, HTTP 4xx) are not retried.
4. In one transaction the entries leave the outbox, a record goes to the delivery log ``pf:{id}:deliveries``
   (channel, recipient, status, error, attempts, events) and the target's group state is updated. A restarted
   process sees only what is still in the outbox, so nothing delivered is sent again. The one unavoidable
   window is a crash after the server accepted a message and before step 4 commits: that message would be
   sent once more (at-least-once: losing a CRITICAL alert is worse than a duplicate).
5. A CRITICAL email that fails (or cannot be sent because SMTP is not configured) is sent by SMS to the same
   recipient's number, unless that level already texts them; the record says ``fallback_for: "email"``. The
   text goes out before step 4 commits the email's record, so a crash in between repeats it, never loses it.

A recipient address over its rate limit (``max_messages`` per ``per_seconds``) is held back, not dropped: its
entries wait in the outbox and go out grouped as soon as the window allows (one ``rate_limited`` record per
hold). Only one process flushes at a time (a lease in Redis), so two monitors never send the same message.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.alert_records import Delivery, OutboxEntry
from engine.metrics import NotificationMetrics
from engine.records import SEVERITY_RANK, Channel, Clock, Severity
from engine.store import Store
from engine.store.slots import slot_transaction
from notifications.alertmanager import AlertmanagerChannel
from notifications.channels import (
    LOGGER_NAME,
    PLAINTEXT_AUTH_REFUSED,
    EmailChannel,
    LogChannel,
    Message,
    PermanentDeliveryError,
    SmsChannel,
    TransientDeliveryError,
    WebhookChannel,
    mask_address,
)
from notifications.channels import (
    Channel as Sender,
)
from notifications.config import NotificationConfig
from notifications.masking import digest, mask_text
from notifications.render import Renderer

Sleep = Callable[[float], None]

LOCK_TTL_SECONDS = 30.0
"""Lease of the flushing process, renewed before each message for that message's worst case (all retries,
backoffs and timeouts): a process killed mid-flush blocks the others for at most one message's budget."""
CHANNEL_TIMEOUT_BUDGET_SECONDS = 15.0
"""What one attempt may take (connection + send) when the lease is sized; channels time out sooner."""
MAX_EVENTS_IN_RECORD = 50
"""A delivery record lists at most this many events (a storm digest counts the rest)."""

NOT_CONFIGURED_HINT: dict[str, str] = {
    Channel.EMAIL: "email is not configured: set SMTP_HOST (and SMTP_USER, SMTP_PASSWORD, SMTP_FROM)",
    Channel.SMS: "SMS is not configured: set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_FROM",
}


@dataclass(frozen=True)
class Target:
    """Where one message goes: a channel and an address, on behalf of one or more recipients."""

    channel: str
    address: str
    recipients: tuple[str, ...]
    skip_reason: str = ""
    """Non-empty when the target cannot be served (channel not configured, address secret unset)."""

    @property
    def key(self) -> str:
        """Names the target in Redis (group state, send rate): a webhook URL is a secret, so by its digest."""
        if self.channel in (Channel.WEBHOOK, Channel.ALERTMANAGER) and self.address:
            return f"{self.channel}|#{digest(self.address)}"
        return f"{self.channel}|{self.address or '?' + ','.join(self.recipients)}"


@dataclass(frozen=True)
class SendResult:
    status: str
    """``delivered``, ``failed`` or ``skipped``."""
    attempts: int
    error: str = ""
    provider_id: str | None = None


def build_channels(
    config: NotificationConfig,
    *,
    twilio_http_client: Any = None,
    webhook_opener: Any = None,
    logger: logging.Logger | None = None,
) -> dict[str, Sender]:
    """The channels ``config`` allows: ``log``, ``webhook`` and ``alertmanager`` always, ``email``/``sms`` when
    configured (``webhook_opener`` serves both HTTP channels)."""
    am = config.alertmanager
    channels: dict[str, Sender] = {
        Channel.LOG: LogChannel(logger),
        Channel.WEBHOOK: WebhookChannel(opener=webhook_opener),
        Channel.ALERTMANAGER: AlertmanagerChannel(am.active_for_seconds, am.timeout_seconds, opener=webhook_opener),
    }
    if config.smtp is not None:
        channels[Channel.EMAIL] = EmailChannel(config.smtp)
    if config.twilio is not None:
        channels[Channel.SMS] = SmsChannel(config.twilio, http_client=twilio_http_client)
    return channels


class Notifier:
    """Queues, groups, sends and logs notifications. Imports nothing from ``logic/``."""

    def __init__(
        self,
        store: Store,
        config: NotificationConfig,
        *,
        channels: Mapping[str, Sender] | None = None,
        renderer: Renderer | None = None,
        clock: Clock = time.time,
        sleep: Sleep = time.sleep,
        logger: logging.Logger | None = None,
        metrics: NotificationMetrics | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics or NotificationMetrics()
        """Messages by channel and status (engine/metrics.py); ``python -m notifications`` serves them."""
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self.channels = dict(channels) if channels is not None else build_channels(config, logger=self.logger)
        self.renderer = renderer or Renderer()
        self.clock = clock
        self.sleep = sleep
        self.secrets = config.secrets()

    # -- routing: recipient names to addresses ---------------------------------------------------------------
    def targets(self, recipients: Iterable[str], channels: Iterable[str]) -> list[Target]:
        """The distinct targets of an escalation level: ``log`` once, each recipient's address per channel.

        A recipient without an address for a channel is simply not a target of that channel (a level may
        list ``sms`` for the people who have a phone number).
        """
        recipients = list(dict.fromkeys(recipients))
        out: dict[str, Target] = {}
        for channel in dict.fromkeys(channels):
            if channel not in tuple(Channel):
                raise ValueError(f"unknown channel {channel!r}; expected one of {tuple(Channel)}")
            if channel == Channel.LOG:
                target = Target(Channel.LOG, Channel.LOG, (Channel.LOG,))
                out[target.key] = target
                continue
            for name in recipients:
                recipient = self.config.recipients.get(name)
                if recipient is None:
                    target = Target(channel, "", (name,), f"unknown recipient {name!r}")
                elif channel in recipient.addresses:
                    skip = "" if self.config.channel_configured(channel) else NOT_CONFIGURED_HINT[channel]
                    if channel == Channel.EMAIL and self.config.smtp and self.config.smtp.plaintext_auth_refused:
                        skip = PLAINTEXT_AUTH_REFUSED
                    target = Target(channel, recipient.addresses[channel], (name,), skip)
                elif channel in recipient.unresolved:
                    ref = recipient.unresolved[channel]
                    target = Target(channel, "", (name,), f"{name}'s {channel} address {ref} is not set")
                else:
                    continue
                known = out.get(target.key)
                if known is not None:
                    target = Target(channel, target.address, known.recipients + target.recipients, known.skip_reason)
                out[target.key] = target
        return list(out.values())

    # -- flush -----------------------------------------------------------------------------------------------
    def pending(self, portfolio_id: str) -> dict[str, Any]:
        """The outbox entries still waiting (delivery id -> entry)."""
        return self.store.read_json_hash(Store.outbox_key(portfolio_id))

    def pending_count(self, portfolio_id: str) -> int:
        return len(self.store.read_field_names(Store.outbox_key(portfolio_id)))

    def flush(self, now: float | None = None, portfolio_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Send every group that is due at ``now``; returns the delivery records written.

        Returns ``[]`` at once when another process holds the flush lease.
        """
        now = self.clock() if now is None else now
        token = uuid.uuid4().hex
        if not self.store.acquire_notify_lock(token, LOCK_TTL_SECONDS):
            return []
        records: list[dict[str, Any]] = []
        try:
            pids = list(portfolio_ids) if portfolio_ids is not None else self.store.portfolio_ids()
            for pid in pids:
                records.extend(self._flush_portfolio(pid, now, token))
        finally:
            self.store.release_notify_lock(token)
        return records

    def _message_budget(self) -> float:
        retry = self.config.retry
        one = retry.max_attempts * (retry.max_backoff_seconds + CHANNEL_TIMEOUT_BUDGET_SECONDS)
        return LOCK_TTL_SECONDS + 2 * one  # the message and a possible SMS fallback

    def _flush_portfolio(self, portfolio_id: str, now: float, token: str) -> list[dict[str, Any]]:
        outbox = Store.outbox_key(portfolio_id)
        names = self.store.read_field_names(outbox)
        if not names:
            return []
        groups: dict[str, list[str]] = defaultdict(list)
        oldest: dict[str, float] = {}
        routed: dict[str, Target] = {}
        unroutable: list[str] = []
        for name in names:
            _event_id, enqueued_at, rest = OutboxEntry.parse_field(name)
            channel, _, who = rest.partition("|")
            if who.startswith(OutboxEntry.RECIPIENT_MARK):  # a recipient name: resolve it now
                found = self.targets([who[len(OutboxEntry.RECIPIENT_MARK) :]], [channel])
                if not found:
                    unroutable.append(name)
                    continue
                target = found[0]
                known = routed.get(target.key)
                if known is not None:  # several names share this address: one message serves them all
                    more = tuple(r for r in target.recipients if r not in known.recipients)
                    target = Target(target.channel, target.address, known.recipients + more, known.skip_reason)
                routed[target.key] = target
                key = target.key
            else:  # an entry queued by an older version: its target is resolved already
                key = rest
            groups[key].append(name)
            oldest[key] = min(oldest.get(key, math.inf), enqueued_at)
        if unroutable:  # the recipient has no address for that channel (any more): nobody to send it to
            self.store.delete_fields(outbox, unroutable)
        state = self.store.read_json_hash(Store.notify_state_key(portfolio_id))
        records = []
        for key in sorted(groups):
            group_state = state.get(key, {})
            due = oldest[key] + self.config.group_wait_seconds
            if group_state.get("last_sent_at") is not None:
                due = max(due, group_state["last_sent_at"] + self.config.group_interval_seconds)
            if now < due:
                continue
            if not self.store.renew_notify_lock(token, self._message_budget()):
                self.logger.warning("notification flush lease lost; another process continues")
                break
            entries = self.store.read_json_fields(outbox, groups[key])
            if not entries:
                continue
            resolved = routed.get(key)
            if resolved is None:  # an older entry: the target is stored with it
                resolved = Target(**_target_args(next(iter(entries.values()))["target"]))
            events = _distinct_events(e["event"] for e in entries.values())
            records.extend(self._deliver_group(portfolio_id, resolved, events, list(entries), group_state, now))
        return records

    def _deliver_group(
        self,
        portfolio_id: str,
        target: Target,
        events: list[dict[str, Any]],
        fields: list[str],
        group_state: Mapping[str, Any],
        now: float,
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if target.skip_reason:
            result = SendResult("skipped", 0, target.skip_reason)
            message = None
        else:
            held = self._hold_back(portfolio_id, target, events, group_state, now)
            if held is not None:
                return [held] if held else []
            try:
                message = self.renderer.render(portfolio_id, events)
            except Exception as exc:  # a template bug must not block the outbox forever
                self.logger.exception("cannot render notification for %s", target.key)
                message, result = None, SendResult("failed", 0, f"template error: {exc!r}")
            else:
                result = self.send(target, message)
        record = self._record(portfolio_id, target, events, result, now, message)
        self.metrics.sent(target.channel, result.status)
        fallback: list[dict[str, Any]] = []
        if target.channel == Channel.EMAIL and result.status != "delivered":
            # before the entries leave the outbox: a crash in between sends the fallback again on the next
            # flush (at-least-once), where after it the CRITICAL text would be lost
            fallback = self._sms_fallback(portfolio_id, target, events, message, now, result.status)
        with slot_transaction(self.store.client) as pipe:  # the send-rate key is global: its own slot
            self.store.delete_fields(Store.outbox_key(portfolio_id), fields, pipe)
            self.store.append_delivery(portfolio_id, record, pipe)
            if result.status != "skipped":
                self._write_group_state(portfolio_id, target, {"last_sent_at": now, "deferred": False}, pipe)
            if result.status == "delivered" and target.channel != Channel.LOG:
                self.store.record_send(target.key, now, max(self.config.rate_limit.per_seconds, 1.0), pipe)
            pipe.execute()
        out.append(record)
        out.extend(fallback)
        return out

    def _hold_back(
        self,
        portfolio_id: str,
        target: Target,
        events: list[dict[str, Any]],
        group_state: Mapping[str, Any],
        now: float,
    ) -> dict[str, Any] | None:
        """None when the target may receive a message now; else the ``rate_limited`` record written for this
        hold ({} when the hold was recorded already)."""
        limit = self.config.rate_limit
        if not limit.enabled or target.channel == Channel.LOG:
            return None
        sent = self.store.count_recent_sends(target.key, now - limit.per_seconds)
        if sent < limit.max_messages:
            return None
        if group_state.get("deferred"):
            return {}
        error = (
            f"{sent} messages in the last {limit.per_seconds:.0f} s (limit {limit.max_messages}); "
            "held back and grouped until the window allows"
        )
        record = self._record(portfolio_id, target, events, SendResult("rate_limited", 0, error), now, None)
        self.metrics.sent(target.channel, "rate_limited")
        with self.store.client.pipeline(transaction=True) as pipe:
            self.store.append_delivery(portfolio_id, record, pipe)
            self._write_group_state(portfolio_id, target, {**group_state, "deferred": True}, pipe)
            pipe.execute()
        return record

    def _sms_fallback(
        self,
        portfolio_id: str,
        email: Target,
        events: list[dict[str, Any]],
        message: Message | None,
        now: float,
        email_status: str,
    ) -> list[dict[str, Any]]:
        """Text the CRITICAL events of an email that failed (or was skipped) to each of its recipients.

        When no SMS can be sent either, that is recorded only if the email really failed: a desk that
        configured neither SMTP nor Twilio gets its alerts in the log without a second skipped record.
        """
        critical = [e for e in events if e["alert"].get("severity") == Severity.CRITICAL]
        if not (critical and self.config.sms_fallback):
            return []
        # the level already texts the recipient: a second SMS would add nothing
        critical = [e for e in critical if Channel.SMS not in e.get("channels", ())]
        if not critical:
            return []
        if message is None or len(critical) != len(events):
            message = self.renderer.render(portfolio_id, critical)
        out = []
        for name in email.recipients:
            targets = self.targets([name], [Channel.SMS])
            if not targets:
                target = Target(Channel.SMS, "", (name,), f"no SMS number for {name} to fall back to")
            else:
                target = targets[0]
            if target.skip_reason and email_status == "skipped":
                continue
            result = SendResult("skipped", 0, target.skip_reason) if target.skip_reason else self.send(target, message)
            record = self._record(portfolio_id, target, critical, result, now, message, fallback_for=Channel.EMAIL)
            self.metrics.sent(target.channel, result.status)
            with slot_transaction(self.store.client) as pipe:  # the send-rate key is global: its own slot
                self.store.append_delivery(portfolio_id, record, pipe)
                if result.status == "delivered":
                    self.store.record_send(target.key, now, max(self.config.rate_limit.per_seconds, 1.0), pipe)
                pipe.execute()
            out.append(record)
        return out

    def send(self, target: Target, message: Message) -> SendResult:
        """Send with bounded retries on transient failures; never raises."""
        channel = self.channels.get(target.channel)
        if channel is None:
            return SendResult("skipped", 0, NOT_CONFIGURED_HINT.get(target.channel, f"no {target.channel} channel"))
        retry = self.config.retry
        error = ""
        retry_after: float | None = None
        for attempt in range(1, retry.max_attempts + 1):
            if attempt > 1:
                delay = retry.delay_before(attempt)
                if retry_after is not None:
                    delay = min(retry.max_backoff_seconds, max(delay, retry_after))
                self.sleep(delay)
            try:
                provider_id = channel.send(target.address, message)
            except TransientDeliveryError as exc:
                error, retry_after = mask_text(str(exc), self.secrets), exc.retry_after
                self.logger.info("transient failure on %s (attempt %d): %s", target.channel, attempt, error)
                continue
            except PermanentDeliveryError as exc:
                return SendResult("failed", attempt, str(exc))
            except Exception as exc:  # a bug in a channel: record it, do not kill the monitor
                text = mask_text(f"unexpected error: {exc!r}", self.secrets)
                # no traceback: an exception's text may carry a credential, only its masked form is logged
                self.logger.error("%s sending by %s", text, target.channel)
                return SendResult("failed", attempt, text)
            return SendResult("delivered", attempt, "", provider_id)
        return SendResult("failed", retry.max_attempts, f"gave up after {retry.max_attempts} attempts: {error}")

    # -- records ---------------------------------------------------------------------------------------------
    def _write_group_state(self, portfolio_id: str, target: Target, value: Mapping[str, Any], pipe: Any) -> None:
        self.store.write_json_fields(Store.notify_state_key(portfolio_id), {target.key: dict(value)}, pipe)

    def _record(
        self,
        portfolio_id: str,
        target: Target,
        events: list[dict[str, Any]],
        result: SendResult,
        now: float,
        message: Message | None,
        fallback_for: str | None = None,
    ) -> dict[str, Any]:
        severity = max(
            (e["alert"].get("severity", Severity.LOW) for e in events), key=lambda s: SEVERITY_RANK.get(s, 0)
        )
        return Delivery(
            ts=now,
            portfolio_id=portfolio_id,
            message_id=uuid.uuid4().hex[:16],
            channel=target.channel,
            recipient=",".join(target.recipients),
            address=mask_address(target.channel, target.address),
            status=result.status,
            error=mask_text(result.error, self.secrets),
            attempts=result.attempts,
            severity=severity,
            subject=message.subject if message is not None else "",
            fallback_for=fallback_for,
            provider_id=result.provider_id,
            event_count=len(events),
            events=tuple(
                {
                    "event_id": e["event_id"],
                    "kind": e["kind"],
                    "alert_id": e["alert"].get("alert_id"),
                    "rule_id": e["alert"].get("rule_id"),
                    "severity": e["alert"].get("severity"),
                    "level": e.get("level"),
                }
                for e in events[:MAX_EVENTS_IN_RECORD]
            ),
        ).to_dict()


def _target_args(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "channel": raw["channel"],
        "address": raw["address"],
        "recipients": tuple(raw["recipients"]),
        "skip_reason": raw.get("skip_reason", ""),
    }


def _distinct_events(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for event in events:
        seen.setdefault(event["event_id"], dict(event))
    return sorted(seen.values(), key=lambda e: (e.get("ts", 0.0), e["event_id"]))
