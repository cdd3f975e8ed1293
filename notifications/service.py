"""Delivery wired to a process: the notifier built from the settings, and the loop that flushes the outbox.

The alert engine (:mod:`logic.alerts`) only writes outbox entries; the process that sends them builds a
:class:`~notifications.delivery.Notifier` here and flushes it regularly: ``python -m notifications`` does
(:func:`run`), the launcher starts it beside the monitor. :func:`build_delivering_engine` is the one-process
form (an alert engine whose ``tick`` also flushes), for tests and single-process desks.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from engine.errors import ConfigError
from engine.records import Clock
from engine.settings import Settings
from engine.store import PortfolioKeys, Store
from logic.actions import ControlFactory
from logic.alerts import AlertEngine, build_alert_engine
from logic.escalation import escalation_config
from notifications.config import NotificationConfig, notification_config
from notifications.delivery import NOT_CONFIGURED_HINT, Notifier, build_channels

LOGGER = logging.getLogger("riskdesk.notifications")

FLUSH_INTERVAL_SECONDS = 1.0
"""How often ``python -m notifications`` looks for due notification groups."""
HEARTBEAT_COMPONENT = "notify"
"""The delivery daemon's heartbeat (``hb:notify``), written after every flush: the System page's liveness of the
process that sends every e-mail and SMS, and its deliveries that need attention in the last
:data:`FAILURE_WINDOW_SECONDS`."""
FAILURE_WINDOW_SECONDS = 900.0
"""The heartbeat counts the deliveries that need attention in this window (on the notifier's clock): a daemon that
is alive but cannot reach the SMTP server or Twilio pages nobody, and every dashboard page says so."""
ATTENTION_STATUSES: dict[str, str] = {
    "failed": "",
    "rate_limited": "held back by the rate limit",
    "skipped": "skipped",
}
"""Delivery statuses the heartbeat counts (status -> how ``last_failure`` names it; a failure needs no word):
``failed`` (the channel refused or stayed down), ``rate_limited`` (a message held back, possibly for the whole
rate window) and ``skipped`` (a channel a policy names is not configured, an address secret is unset, a recipient
has no address for the level's channel). Each means someone was not told when the policy says they should be.
``cancelled`` (an escalation dropped because the alert was acknowledged or resolved first) is not counted."""
SEEN_PER_PORTFOLIO = 50
"""At start, the newest delivery records read per portfolio to count the window's failures again (a restart
does not clear the warning while the channel is still down)."""


class FailureWindow:
    """The delivery records that need attention (:data:`ATTENTION_STATUSES`) of the last ``seconds`` (on the
    notifier's clock): their count and the newest, for the heartbeat (:meth:`fields`)."""

    def __init__(self, seconds: float = FAILURE_WINDOW_SECONDS) -> None:
        self.seconds = seconds
        self._failed: deque[dict[str, Any]] = deque()
        """Records that need attention, oldest first (by ``ts``)."""

    def add(self, records: Iterable[Mapping[str, Any]]) -> None:
        failed = [dict(r) for r in records if r.get("status") in ATTENTION_STATUSES and _finite_ts(r) is not None]
        if failed:
            self._failed = deque(sorted([*self._failed, *failed], key=lambda r: float(r["ts"])))

    def fields(self, now: float) -> dict[str, Any]:
        """``failed_recent`` (records that need attention with ``now - seconds < ts <= now``; the dashboard warns
        on it), of them ``held_recent`` (rate_limited) and ``skipped_recent``, and, when there are any,
        ``last_failure_ts`` and ``last_failure`` (which channel, to whom, for which portfolio, what, why)."""
        while self._failed and float(self._failed[0]["ts"]) <= now - self.seconds:
            self._failed.popleft()
        recent = [r for r in self._failed if float(r["ts"]) <= now]
        out: dict[str, Any] = {
            "failed_recent": len(recent),
            "held_recent": sum(r.get("status") == "rate_limited" for r in recent),
            "skipped_recent": sum(r.get("status") == "skipped" for r in recent),
            "failure_window_seconds": self.seconds,
        }
        if recent:
            last = recent[-1]
            word = ATTENTION_STATUSES.get(str(last.get("status")), "")
            out["last_failure_ts"] = float(last["ts"])
            out["last_failure"] = (
                f"{last.get('channel', '?')} to {last.get('recipient') or '?'} ({last.get('portfolio_id', '?')})"
                f"{', ' + word if word else ''}: {last.get('error') or 'no reason recorded'}"
            )
        else:
            out["last_failure_ts"] = out["last_failure"] = ""
        return out


def _finite_ts(record: Mapping[str, Any]) -> float | None:
    try:
        ts = float(record.get("ts"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return ts if ts == ts and abs(ts) != float("inf") else None


def recent_failures(store: Store, now: float, seconds: float = FAILURE_WINDOW_SECONDS) -> FailureWindow:
    """A :class:`FailureWindow` holding the deliveries that need attention of every portfolio's log in the window
    ending at ``now`` (the newest :data:`SEEN_PER_PORTFOLIO` records of each, one pipeline)."""
    window = FailureWindow(seconds)
    pids = store.portfolio_ids()
    with store.client.pipeline(transaction=False) as pipe:
        for pid in pids:
            pipe.xrevrange(PortfolioKeys(pid).deliveries, count=SEEN_PER_PORTFOLIO)
        replies = pipe.execute()
    for pid, entries in zip(pids, replies, strict=True):
        window.add(store.decode_stream_json(PortfolioKeys(pid).deliveries, entries))
    return window


def build_notifier(
    store: Store,
    settings: Settings,
    clock: Clock = time.time,
    *,
    env: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    channels: Mapping[str, Any] | None = None,
    twilio_http_client: Any = None,
    webhook_opener: Any = None,
    config: NotificationConfig | None = None,
) -> Notifier:
    """A :class:`Notifier` from ``[notifications]`` and the channel secrets of ``env`` (default ``os.environ``).

    ``sleep`` is the retry backoff's wait (tests pass a recorder), ``channels`` replaces the channels built
    from the configuration, ``twilio_http_client`` / ``webhook_opener`` are handed to the SMS / webhook
    channels.

    Raises
    ------
    ConfigError
        An invalid notification setting.
    """
    config = notification_config(settings.extra, env) if config is None else config
    for warning in unconfigured_policy_channels(settings, config):
        LOGGER.warning("%s", warning)
    if channels is None:
        channels = build_channels(config, twilio_http_client=twilio_http_client, webhook_opener=webhook_opener)
    return Notifier(store, config, channels=channels, clock=clock, sleep=sleep)


def unconfigured_policy_channels(settings: Settings, config: NotificationConfig) -> list[str]:
    """One sentence per channel that an escalation level or an alert rule names but that is not configured
    (email without ``SMTP_HOST``, SMS without the Twilio secrets): its deliveries would all be ``skipped``.
    :func:`build_notifier` logs them as warnings at start, before the first alert finds out. An invalid
    ``[escalation]`` is left to the alert engine, which refuses it with the full message."""
    used: dict[str, list[str]] = {}
    try:
        escalation = escalation_config(settings.extra, config.recipients)
    except ConfigError:
        escalation = None
    if escalation is not None:
        policies = {**{str(s): p for s, p in escalation.policies.items()}, "default": escalation.default}
        for name, policy in policies.items():
            for i, level in enumerate(policy.levels):
                for channel in level.channels:
                    used.setdefault(str(channel), []).append(f"escalation.{name}[{i}]")
    for rule in settings.alert_rules:
        for channel in rule.channels:
            used.setdefault(str(channel), []).append(f"alert rule {rule.id}")
    return [
        f"channel {channel!r} is used by {', '.join(where)} but is not configured: "
        f"{NOT_CONFIGURED_HINT.get(channel, 'configure it')}; its deliveries will be recorded as skipped"
        for channel, where in used.items()
        if not config.channel_configured(channel)
    ]


def build_delivering_engine(
    store: Store,
    settings: Settings,
    clock: Clock = time.time,
    risk_manager_factory: ControlFactory | None = None,
    *,
    env: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    channels: Mapping[str, Any] | None = None,
    twilio_http_client: Any = None,
    webhook_opener: Any = None,
) -> AlertEngine:
    """:func:`logic.alerts.build_alert_engine` whose every ``tick`` also flushes a :func:`build_notifier`
    outbox: alerts and delivery in one process (tests, a single-process desk).

    Raises
    ------
    ConfigError
        An invalid rule, notification or escalation setting.
    """
    config = notification_config(settings.extra, env)
    notifier = build_notifier(
        store, settings, clock, sleep=sleep, channels=channels, twilio_http_client=twilio_http_client,
        webhook_opener=webhook_opener, config=config,
    )  # fmt: skip
    return build_alert_engine(
        store,
        settings,
        clock,
        risk_manager_factory,
        recipients=config.recipients,
        repeat_interval_seconds=config.repeat_interval_seconds,
        after_tick=notifier.flush,
    )


def run(
    notifier: Notifier,
    stop: threading.Event,
    interval_seconds: float = FLUSH_INTERVAL_SECONDS,
    max_flushes: int | None = None,
) -> int:
    """Flush the outbox every ``interval_seconds`` until ``stop`` is set; returns the delivery records written.

    After each flush that did not fail, the heartbeat ``hb:notify`` (:data:`HEARTBEAT_COMPONENT`: its time on the
    notifier's clock, pid, flushes and delivery records so far, and the deliveries that failed, were held back or
    were skipped in the last :data:`FAILURE_WINDOW_SECONDS` (:class:`FailureWindow`), counted again from the
    delivery logs at start): a flush that keeps failing stops the heartbeat, and the System page says the daemon
    is stale. Errors are logged and the loop carries on: a Redis blip must not end notifications for good.
    """
    written = flushes = 0
    try:
        failures = recent_failures(notifier.store, notifier.clock())
    except Exception:  # a log it cannot read must not keep the daemon from sending
        LOGGER.exception("could not read the recent delivery failures: counting from now")
        failures = FailureWindow()
    while not stop.is_set() and (max_flushes is None or flushes < max_flushes):
        try:
            records = notifier.flush()
            written += len(records)
            failures.add(records)
            now = notifier.clock()
            beat = {"ts": now, "pid": os.getpid(), "flushes": flushes + 1, "delivery_records": written,
                    **failures.fields(now)}  # fmt: skip
            notifier.store.write_heartbeat(HEARTBEAT_COMPONENT, beat)
        except Exception:
            LOGGER.exception("notification flush failed")
        flushes += 1
        stop.wait(interval_seconds)
    return written
