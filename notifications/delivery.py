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
   does not reach them by that channel; when no channel of the event reaches them, that is recorded, below).
   A target's group is due ``group_wait_seconds`` after its oldest entry and never sooner than
   ``group_interval_seconds`` after the last message to that target (Alertmanager's group_wait and
   group_interval): all entries due together become **one message** (one template, or the digest).
3. The message is sent with bounded retries: transient failures (SMTP 4xx, HTTP 429/5xx, network) wait
   ``backoff * multiplier**(n-1)`` (capped; a server's Retry-After is honoured up to the cap) through the
   injected ``sleep``; permanent failures (SMTP 5xx, HTTP 4xx) are not retried. A message whose attempts all
   failed transiently (the server down, not refusing it) stays queued, with a ``failed`` record saying when it
   is tried again: a later flush tries it ``retry.requeue_seconds`` after the failure, doubling per failure up
   to ``retry.max_requeue_seconds``, until ``retry.give_up_seconds`` after its first failure, when it is dropped
   (a 3-second SMTP or Twilio outage no longer loses the message). The fallbacks (a CRITICAL e-mail's text, an
   unroutable recipient's, below) are still tried once.
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
hold). A group with a CRITICAL event is never held back. Only one process flushes at a time (a lease in Redis),
so two monitors never send the same message.

What else a bad day brings
--------------------------
- **Stale escalations.** An escalation, acknowledged-reminder or repeat reminder whose alert was acknowledged or
  resolved while it waited (group_interval) is not sent: a ``cancelled`` record says why.
- **Nobody to reach.** A recipient reached by none of an event's channels (no address for them) gets a
  ``skipped`` record per channel instead of silence, and a CRITICAL event goes to them by SMS, else (or when the
  text fails) e-mail, each in its channel's turn of the flush (``fallback_for`` names the channels it stands in
  for). ``logic/escalation.py`` refuses at load a level that reaches none of its recipients.
- **A dead SMTP server.** A flush sends SMS before e-mail; after its first e-mail that failed transiently (kept
  queued itself, step 3), the other e-mails (fallbacks too) stay queued for the next flush, their CRITICAL events
  texted at once (once: the group state remembers which were texted, across tries).
- The daemon's heartbeat counts ``failed``, ``rate_limited`` and ``skipped`` records (notifications/service.py).
"""

from __future__ import annotations

import bisect
import logging
import math
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from engine.alert_records import Delivery, OutboxEntry
from engine.metrics import NotificationMetrics
from engine.records import SEVERITY_RANK, AlertStatus, Channel, Clock, Severity
from engine.store import Store
from engine.store.slots import slot_transaction
from notifications.alertmanager import AlertmanagerChannel
from notifications.channels import (
    LOGGER_NAME,
    PLAINTEXT_AUTH_REFUSED,
    EmailChannel,
    LogChannel,
    Message,
    SmsChannel,
    WebhookChannel,
    mask_address,
)
from notifications.channels import Channel as Sender
from notifications.config import NotificationConfig
from notifications.masking import digest, mask_text
from notifications.render import Renderer
from notifications.retry import SendResult, requeue, send_with_retries, utc, waiting

Sleep = Callable[[float], None]

LOCK_TTL_SECONDS = 30.0
"""Lease of the flushing process, renewed before each message for that message's worst case (all retries,
backoffs and timeouts): a process killed mid-flush blocks the others for at most one message's budget."""
CHANNEL_TIMEOUT_BUDGET_SECONDS = 15.0
"""What one attempt may take (connection + send) when the lease is sized; channels time out sooner."""
MAX_EVENTS_IN_RECORD = 50
"""A delivery record lists at most this many events (a storm digest counts the rest)."""
SEND_ORDER: dict[str, int] = {
    Channel.SMS: 0,
    Channel.ALERTMANAGER: 1,
    Channel.WEBHOOK: 2,
    Channel.EMAIL: 3,
    Channel.LOG: 3,
}
"""The order a flush sends its due groups in, by channel (every portfolio's SMS before any e-mail): an SMTP
server that times out must not hold back the texts of the portfolios after it. E-mail and the log share the last
turn, each portfolio's in the order of their keys as before (the log pages nobody)."""
UNROUTABLE = (
    "unroutable: {person} has no {channel} address and no other channel of this message reaches them; add one in "
    "[notifications.recipients] or change the escalation level's channels"
)
CANCELLABLE_KINDS: tuple[str, ...] = ("escalated", "acknowledged_reminder")
"""Event kinds (with repeat reminders) that say nobody acknowledged the alert: dropped at send time, recorded as
``cancelled``, when the alert was acknowledged or resolved before they went out (:meth:`Notifier._superseded`)."""

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
class _Due:
    """A group due in this flush: a portfolio's outbox fields for one target, and the target's group state."""

    portfolio_id: str
    key: str
    target: Target | None
    """None for entries queued by an older version (their target is stored with them)."""
    fields: list[str]
    state: Mapping[str, Any]

    @property
    def channel(self) -> str:
        return self.target.channel if self.target is not None else self.key.partition("|")[0]


@dataclass(frozen=True)
class _Fallback:
    """A step of the CRITICAL fallback of a recipient no channel of an event reaches, sent in its channel's turn
    (:data:`SEND_ORDER`): the SMS, then the e-mail when no text went out (:meth:`Notifier._drop_unroutable`)."""

    portfolio_id: str
    person: str
    target: Target  # this step's: their number, else their e-mail address
    email: Target | None  # the next step's, when this text does not go out
    events: list[dict[str, Any]]  # the CRITICAL events still to tell them of
    fallback_for: str
    skipped: list[dict[str, Any]]  # the records written with the entries' removal
    fields: list[str]
    texted: list[str]  # events whose text failed in an earlier flush (``fallen_back``): not texted again

    @property
    def channel(self) -> str:
        return self.target.channel


_Step = _Due | _Fallback  # what a flush sends in turn


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
        self._email_down = ""
        """Within one flush: the error of its first e-mail that failed transiently ("" while none has)."""
        self._email_held = 0
        """Within one flush: e-mail groups kept queued because e-mail was down."""

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

        Every portfolio's due groups are gathered first and then sent channel by channel (:data:`SEND_ORDER`:
        SMS before e-mail), so a slow or blackholed SMTP server delays no portfolio's text. After the first
        e-mail of this flush that failed transiently (its retries spent), e-mail counts as down until the flush
        ends: the other e-mails stay queued for the next flush and their CRITICAL events go out by the SMS
        fallback at once, instead of each burning its own timeouts and retries first.

        Returns ``[]`` at once when another process holds the flush lease.
        """
        now = self.clock() if now is None else now
        token = uuid.uuid4().hex
        if not self.store.acquire_notify_lock(token, LOCK_TTL_SECONDS):
            return []
        self._email_down = ""
        self._email_held = 0
        records: list[dict[str, Any]] = []
        try:
            pids = list(portfolio_ids) if portfolio_ids is not None else self.store.portfolio_ids()
            due: list[_Step] = []
            for pid in pids:
                planned, written = self._plan_portfolio(pid, now, token)
                due.extend(planned)
                records.extend(written)
            due.sort(key=_turn)  # stable: portfolio order kept
            while due:
                step = due.pop(0)
                if not self.store.renew_notify_lock(token, self._message_budget()):
                    self.logger.warning("notification flush lease lost; another process continues")
                    break
                records.extend(
                    self._send_fallback(step, now, due) if isinstance(step, _Fallback) else self._send_due(step, now)
                )
        finally:
            self.store.release_notify_lock(token)
        if self._email_held:
            self.metrics.sent(Channel.EMAIL, "held", self._email_held)
            self.logger.warning(
                "email is down (%s): %d e-mail(s) kept queued for the next flush, their CRITICAL events "
                "texted where a number is known", self._email_down, self._email_held,
            )  # fmt: skip
        return records

    def _message_budget(self) -> float:
        retry = self.config.retry
        one = retry.max_attempts * (retry.max_backoff_seconds + CHANNEL_TIMEOUT_BUDGET_SECONDS)
        return LOCK_TTL_SECONDS + 2 * one  # the message and a possible SMS fallback

    def _plan_portfolio(self, portfolio_id: str, now: float, token: str) -> tuple[list[_Step], list[dict[str, Any]]]:
        """The portfolio's groups due at ``now`` and fallbacks of entries that reach nobody, and the records of
        those that need no fallback (:meth:`_drop_unroutable`). Sends nothing."""
        outbox = Store.outbox_key(portfolio_id)
        names = self.store.read_field_names(outbox)
        if not names:
            return [], []
        groups: dict[str, list[str]] = defaultdict(list)
        oldest: dict[str, float] = {}
        routed: dict[str, Target] = {}
        unroutable: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        reached: set[tuple[str, str]] = set()
        for name in names:
            event_id, enqueued_at, rest = OutboxEntry.parse_field(name)
            channel, _, who = rest.partition("|")
            if who.startswith(OutboxEntry.RECIPIENT_MARK):  # a recipient name: resolve it now
                person = who[len(OutboxEntry.RECIPIENT_MARK) :]
                found = self.targets([person], [channel])
                if not found:
                    unroutable[(event_id, person)].append((name, channel))
                    continue
                if channel != Channel.LOG:
                    reached.add((event_id, person))
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
        state = self.store.read_json_hash(Store.notify_state_key(portfolio_id))
        due: list[_Step] = []
        records = self._drop_unroutable(portfolio_id, unroutable, reached, state, now, token, due) if unroutable else []
        for key in sorted(groups):
            group_state = state.get(key, {})
            at = oldest[key] + self.config.group_wait_seconds
            if group_state.get("last_sent_at") is not None:
                at = max(at, group_state["last_sent_at"] + self.config.group_interval_seconds)
            retry_at = waiting(group_state, groups[key])  # its last try failed transiently (notifications/retry.py)
            if retry_at is not None:
                at = max(at, retry_at)
            if now >= at:
                due.append(_Due(portfolio_id, key, routed.get(key), groups[key], group_state))
        return due, records

    def _drop_unroutable(
        self,
        portfolio_id: str,
        unroutable: Mapping[tuple[str, str], list[tuple[str, str]]],
        reached: set[tuple[str, str]],
        state: Mapping[str, Any],
        now: float,
        token: str,
        due: list[_Step],
    ) -> list[dict[str, Any]]:
        """Entries whose recipient has no address for their channel leave the outbox.

        When another channel of the same event reaches that recipient, silently: a level may list ``sms`` for
        the people who have a phone number. When none does, the recipient is told of the event by nothing: a
        ``skipped`` record per channel and recipient says so (the heartbeat counts it), and a CRITICAL event
        takes the fallback (:class:`_Fallback`, added to ``due``; ``sms_fallback`` switches it off): by SMS, else
        (or when the text fails) by e-mail, whichever they have a configured address for. Planning sends nothing,
        so a dead SMTP server delays no text; entries with a fallback leave the outbox, with their records, only
        when it is done (a crash in between repeats it, never loses it), and a text that failed in an earlier
        flush is not sent again before the e-mail (``fallen_back`` in the group state).
        """
        outbox = Store.outbox_key(portfolio_id)
        if not self.store.renew_notify_lock(token, self._message_budget()):
            return []  # another process flushes now: the entries are its to record
        lost = {pair: items for pair, items in unroutable.items() if pair not in reached}
        entries = self.store.read_json_fields(outbox, [f for items in lost.values() for f, _ in items])
        by_target: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        fields: dict[str, list[str]] = defaultdict(list)
        for (_event_id, person), items in lost.items():
            for field, channel in items:
                if field in entries:
                    by_target[(channel, person)].append(entries[field]["event"])
                    fields[person].append(field)
        records: list[dict[str, Any]] = []
        for person in sorted({p for _, p in by_target}):
            channels = sorted(c for c, p in by_target if p == person)
            skipped = [
                self._record(portfolio_id, Target(c, "", (person,)), _distinct_events(by_target[(c, person)]),
                             SendResult("skipped", 0, UNROUTABLE.format(person=person, channel=c)), now, None)
                for c in channels
            ]  # fmt: skip
            events = _distinct_events(e for c in channels for e in by_target[(c, person)])
            critical = [e for e in events if e["alert"].get("severity") == Severity.CRITICAL]
            sms, email = (next((t for t in self.targets([person], [c]) if not t.skip_reason), None)
                          for c in (Channel.SMS, Channel.EMAIL))  # fmt: skip
            texted = list((state.get(_fallback_key(person)) or {}).get("fallen_back") or ())
            if sms is None or all(e["event_id"] in texted for e in critical):  # the text was tried: the e-mail
                sms, email = email, None
            if not (critical and self.config.sms_fallback and sms):
                records.extend(skipped)
                continue
            due.append(_Fallback(portfolio_id, person, sms, email, critical, ",".join(channels), skipped,
                                 fields[person], texted))  # fmt: skip
        for record in records:
            self.metrics.sent(record["channel"], "skipped")
        kept = {f for step in due if isinstance(step, _Fallback) for f in step.fields}
        with self.store.client.pipeline(transaction=True) as pipe:
            for record in records:
                self.store.append_delivery(portfolio_id, record, pipe)
            self.store.delete_fields(outbox, [f for its in unroutable.values() for f, _ in its if f not in kept], pipe)
            pipe.execute()
        return records

    def _send_fallback(self, item: _Fallback, now: float, due: list[_Step]) -> list[dict[str, Any]]:
        """One step of an unroutable recipient's fallback; when the text did not go out, the e-mail step joins
        ``due`` in the e-mail turn. As in :meth:`_deliver_group`, an e-mail waits for the next flush while e-mail
        is down and marks it down when it fails transiently; an event whose alert was acknowledged or resolved
        meanwhile is not sent (:meth:`_superseded`)."""
        if item.channel == Channel.EMAIL and self._email_down:
            self._email_held += 1
            return []
        stale = self._superseded(item.portfolio_id, item.events)
        events = [e for e in item.events if e["event_id"] not in stale]
        sending = [e for e in events if item.channel != Channel.SMS or e["event_id"] not in item.texted]
        out: list[dict[str, Any]] = []
        delivered = False
        if sending:
            message, result = self._render_and_send(item.portfolio_id, item.target, sending)
            out.append(self._record(item.portfolio_id, item.target, sending, result, now, message,
                                    fallback_for=item.fallback_for))  # fmt: skip
            self.metrics.sent(item.channel, result.status)
            delivered = result.status == "delivered"
        rest = [e for e in events if not delivered or e not in sending]
        texted = sorted(set(item.texted) | {e["event_id"] for e in sending})  # remembered: a restart does not repeat
        then = replace(item, target=item.email, email=None, events=rest, texted=texted) if item.email and rest else None
        with slot_transaction(self.store.client) as pipe:  # the send-rate key is global: its own slot
            for record in out + ([] if then else item.skipped):
                self.store.append_delivery(item.portfolio_id, record, pipe)
            if delivered:
                self.store.record_send(item.target.key, now, max(self.config.rate_limit.per_seconds, 1.0), pipe)
            state = Store.notify_state_key(item.portfolio_id)
            if then is not None:
                self.store.write_json_fields(state, {_fallback_key(item.person): {"fallen_back": texted}}, pipe)
            else:
                self.store.delete_fields(Store.outbox_key(item.portfolio_id), item.fields, pipe)
                self.store.delete_fields(state, [_fallback_key(item.person)], pipe)
            pipe.execute()
        if then is not None:
            bisect.insort_right(due, then, key=_turn)
            return out
        for record in item.skipped:
            self.metrics.sent(record["channel"], "skipped")
        return out + item.skipped

    def _send_due(self, group: _Due, now: float) -> list[dict[str, Any]]:
        """Send one due group, its entries read again now; escalations made stale meanwhile are cancelled
        (:meth:`_superseded`), not sent."""
        outbox = Store.outbox_key(group.portfolio_id)
        entries = self.store.read_json_fields(outbox, group.fields)
        if not entries:
            return []
        resolved = group.target
        if resolved is None:  # an older entry: the target is stored with it
            resolved = Target(**_target_args(next(iter(entries.values()))["target"]))
        events = _distinct_events(e["event"] for e in entries.values())
        records: list[dict[str, Any]] = []
        stale = self._superseded(group.portfolio_id, events)
        if stale:
            gone = [e for e in events if e["event_id"] in stale]
            reason = "; ".join(dict.fromkeys(stale[e["event_id"]] for e in gone))
            record = self._record(group.portfolio_id, resolved, gone, SendResult("cancelled", 0, reason), now, None)
            self.metrics.sent(resolved.channel, "cancelled")
            fields = [f for f, e in entries.items() if e["event"]["event_id"] in stale]
            with self.store.client.pipeline(transaction=True) as pipe:
                self.store.delete_fields(outbox, fields, pipe)
                self.store.append_delivery(group.portfolio_id, record, pipe)
                pipe.execute()
            records.append(record)
            events = [e for e in events if e["event_id"] not in stale]
            entries = {f: e for f, e in entries.items() if e["event"]["event_id"] not in stale}
            if not events:
                return records
        records.extend(self._deliver_group(group.portfolio_id, resolved, events, list(entries), group.state, now))
        return records

    def _superseded(self, portfolio_id: str, events: list[dict[str, Any]]) -> dict[str, str]:
        """Event id -> why it must not be sent, for the escalations, acknowledged-reminders and repeat reminders
        (:data:`CANCELLABLE_KINDS`) whose alert was acknowledged (since the event was queued, or is so now) or
        resolved before they went out: ``group_interval`` may hold one for a minute, and a page saying nobody
        acknowledged an alert somebody has acknowledged sends a second person to a problem already in hand."""
        candidates = [e for e in events if e.get("kind") in CANCELLABLE_KINDS or e.get("repeat")]
        if not candidates:
            return {}
        active = {
            a.get("alert_id"): a for a in self.store.read_active_alerts(portfolio_id).values() if isinstance(a, dict)
        }
        out: dict[str, str] = {}
        for event in candidates:
            alert_id = event["alert"].get("alert_id")
            if alert_id is None:
                continue
            what = "repeat reminder" if event.get("repeat") else str(event["kind"]).replace("_", " ")
            current = active.get(alert_id)
            if current is None:
                out[event["event_id"]] = f"{what} not sent: the alert was resolved before it went out"
                continue
            acknowledged_at = current.get("acknowledged_at")
            since = isinstance(acknowledged_at, int | float) and acknowledged_at >= float(event.get("ts") or 0.0)
            if current.get("status") == AlertStatus.ACKNOWLEDGED or since:
                when = f" at {utc(acknowledged_at)}" if isinstance(acknowledged_at, int | float) else ""
                who = current.get("acknowledged_by") or "?"
                out[event["event_id"]] = f"{what} not sent: the alert was acknowledged by {who}{when} first"
        return out

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
            if target.channel == Channel.EMAIL and self._email_down:
                return self._fallback_while_email_down(portfolio_id, target, events, group_state, now)
            message, result = self._render_and_send(portfolio_id, target, events)
        requeued, note = requeue(self.config.retry, group_state, result, fields, now)
        if note:
            result = replace(result, error=f"{result.error}; {note}")
        record = self._record(portfolio_id, target, events, result, now, message)
        self.metrics.sent(target.channel, result.status)
        fallback: list[dict[str, Any]] = []
        texted = set(group_state.get("fallen_back") or ())
        if target.channel == Channel.EMAIL and result.status != "delivered":
            # before the entries leave the outbox: a crash in between sends the fallback again on the next
            # flush (at-least-once), where after it the CRITICAL text would be lost; events already texted (while
            # e-mail was down, :meth:`_fallback_while_email_down`, or by an earlier try) are not texted twice
            rest = [e for e in events if e["event_id"] not in texted]
            message = message if len(rest) == len(events) else None
            fallback = self._sms_fallback(portfolio_id, target, rest, message, now, result.status)
            texted |= {e["event_id"] for e in rest}
        if requeued is not None:  # the entries stay queued for a later flush (notifications/retry.py)
            if target.channel == Channel.EMAIL:
                requeued["fallen_back"] = sorted(texted)
            with slot_transaction(self.store.client) as pipe:
                self.store.append_delivery(portfolio_id, record, pipe)
                self._write_group_state(portfolio_id, target, requeued, pipe)
                pipe.execute()
            return [record, *fallback]
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

    def _fallback_while_email_down(
        self,
        portfolio_id: str,
        target: Target,
        events: list[dict[str, Any]],
        group_state: Mapping[str, Any],
        now: float,
    ) -> list[dict[str, Any]]:
        """E-mail failed transiently earlier in this flush: keep this e-mail queued for the next flush, and text
        its CRITICAL events now (each once: the group state remembers which were texted)."""
        self._email_held += 1
        texted = set(group_state.get("fallen_back") or ())
        rest = [e for e in events if e["event_id"] not in texted]
        if not rest:
            return []
        fallback = self._sms_fallback(portfolio_id, target, rest, None, now, "failed")
        state = {**group_state, "fallen_back": sorted(texted | {e["event_id"] for e in rest})}
        with self.store.client.pipeline(transaction=True) as pipe:
            self._write_group_state(portfolio_id, target, state, pipe)
            pipe.execute()
        return fallback

    def _hold_back(
        self,
        portfolio_id: str,
        target: Target,
        events: list[dict[str, Any]],
        group_state: Mapping[str, Any],
        now: float,
    ) -> dict[str, Any] | None:
        """None when the target may receive a message now; else the ``rate_limited`` record written for this
        hold ({} when the hold was recorded already).

        A group carrying a CRITICAL event is never held back: the limit protects a recipient from a flood of
        lesser alerts, and an alert storm is exactly when a CRITICAL must reach them (it still counts towards
        the limit, and takes along whatever lesser events wait for the same target)."""
        limit = self.config.rate_limit
        if not limit.enabled or target.channel == Channel.LOG:
            return None
        if any(e["alert"].get("severity") == Severity.CRITICAL for e in events):
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

    def _render_and_send(
        self, portfolio_id: str, target: Target, events: list[dict[str, Any]]
    ) -> tuple[Message | None, SendResult]:
        """Render and :meth:`send`; the first e-mail that fails transiently marks e-mail down for this flush."""
        try:
            message = self.renderer.render(portfolio_id, events)
        except Exception as exc:  # a template bug must not block the outbox forever
            self.logger.exception("cannot render notification for %s", target.key)
            return None, SendResult("failed", 0, f"template error: {exc!r}")
        result = self.send(target, message)
        if target.channel == Channel.EMAIL and result.transient:
            self._email_down = result.error
        return message, result

    def send(self, target: Target, message: Message) -> SendResult:
        """Send with bounded retries on transient failures (:func:`~notifications.retry.send_with_retries`);
        never raises."""
        channel = self.channels.get(target.channel)
        if channel is None:
            return SendResult("skipped", 0, NOT_CONFIGURED_HINT.get(target.channel, f"no {target.channel} channel"))
        return send_with_retries(channel, target.channel, target.address, message, self.config.retry,
                                 sleep=self.sleep, logger=self.logger, secrets=self.secrets)  # fmt: skip

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


def _turn(item: _Step) -> int:
    return SEND_ORDER.get(item.channel, len(SEND_ORDER))


def _fallback_key(person: str) -> str:  # the group state of an unroutable recipient's fallback
    return f"fallback|{person}"


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
