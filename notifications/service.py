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
from collections.abc import Callable, Mapping
from typing import Any

from engine.records import Clock
from engine.settings import Settings
from engine.store import Store
from logic.actions import ControlFactory
from logic.alerts import AlertEngine, build_alert_engine
from notifications.config import NotificationConfig, notification_config
from notifications.delivery import Notifier, build_channels

LOGGER = logging.getLogger("riskdesk.notifications")

FLUSH_INTERVAL_SECONDS = 1.0
"""How often ``python -m notifications`` looks for due notification groups."""
HEARTBEAT_COMPONENT = "notify"
"""The delivery daemon's heartbeat (``hb:notify``), written after every flush: the System page's liveness of the
process that sends every e-mail and SMS."""


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
    if channels is None:
        channels = build_channels(config, twilio_http_client=twilio_http_client, webhook_opener=webhook_opener)
    return Notifier(store, config, channels=channels, clock=clock, sleep=sleep)


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
    notifier's clock, pid, flushes and delivery records so far): a flush that keeps failing stops the heartbeat,
    and the System page says the daemon is stale. Errors are logged and the loop carries on: a Redis blip must not
    end notifications for good.
    """
    written = flushes = 0
    while not stop.is_set() and (max_flushes is None or flushes < max_flushes):
        try:
            written += len(notifier.flush())
            beat = {"ts": notifier.clock(), "pid": os.getpid(), "flushes": flushes + 1, "delivery_records": written}
            notifier.store.write_heartbeat(HEARTBEAT_COMPONENT, beat)
        except Exception:
            LOGGER.exception("notification flush failed")
        flushes += 1
        stop.wait(interval_seconds)
    return written
