"""Notification state (notifications/): the outbox, each target's group state, the delivery log, the
per-recipient send rate and the lease of the process that flushes the outbox.

Keys: ``pf:{<id>}:outbox``, ``pf:{<id>}:notify``, ``pf:{<id>}:deliveries``, ``rd:nrate:<sha1 of target>`` and
``rd:notify_lock`` (see :mod:`engine.store.keys`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from engine.store.base import Conn, StoreBase
from engine.store.keys import NOTIFY_LOCK_KEY, PortfolioKeys, notify_rate_key

DELIVERY_LOG_MAXLEN = 50_000
"""Most records a portfolio's delivery log keeps in Redis: a bound the archiver (engine/archive.py) applies after
copying the older ones to the archive, never a trim on append."""


class NotificationStore(StoreBase):
    """Outbox and group state keys, the delivery log, send rates and the flush lease."""

    @staticmethod
    def outbox_key(portfolio_id: str) -> str:
        return PortfolioKeys(portfolio_id).outbox

    @staticmethod
    def notify_state_key(portfolio_id: str) -> str:
        return PortfolioKeys(portfolio_id).notify_state

    # -- outbox (the alert engine writes, notifications/ delivers) ------------------------------------------
    def write_outbox(self, portfolio_id: str, entries: Mapping[str, Any], pipe: Conn = None) -> None:
        """Queue notifications: delivery id -> JSON entry (in the caller's alert transaction)."""
        self.write_json_fields(PortfolioKeys(portfolio_id).outbox, entries, pipe)

    def read_outbox(self, portfolio_id: str, conn: Conn = None) -> dict[str, Any]:
        """Delivery id -> JSON entry of every notification still waiting."""
        return self.read_json_hash(PortfolioKeys(portfolio_id).outbox, conn)

    def read_outbox_ids(self, portfolio_id: str, conn: Conn = None) -> list[str]:
        """The delivery ids waiting (no entries: cheap even when they are large)."""
        return self.read_field_names(PortfolioKeys(portfolio_id).outbox, conn)

    def delete_outbox(self, portfolio_id: str, delivery_ids: Iterable[str], pipe: Conn = None) -> None:
        self.delete_fields(PortfolioKeys(portfolio_id).outbox, delivery_ids, pipe)

    # -- group state -----------------------------------------------------------------------------------------
    def read_notify_state(self, portfolio_id: str, conn: Conn = None) -> dict[str, Any]:
        """Target -> JSON group state (last sent, deferral)."""
        return self.read_json_hash(PortfolioKeys(portfolio_id).notify_state, conn)

    def write_notify_state(self, portfolio_id: str, states: Mapping[str, Any], pipe: Conn = None) -> None:
        self.write_json_fields(PortfolioKeys(portfolio_id).notify_state, states, pipe)

    # -- delivery log and send rate --------------------------------------------------------------------------
    def append_delivery(self, portfolio_id: str, record: Mapping[str, Any], pipe: Conn = None) -> None:
        self.append_audit(PortfolioKeys(portfolio_id).deliveries, record, pipe)

    def count_recent_sends(self, target: str, since: float, conn: Conn = None) -> int:
        return int(self._conn(conn).zcount(notify_rate_key(target), f"({since!r}", "+inf"))

    def record_send(self, target: str, ts: float, window_seconds: float, pipe: Conn = None) -> None:
        """Remember one message sent to ``target`` at ``ts`` (entries older than the window are dropped)."""
        c = self._conn(pipe)
        key = notify_rate_key(target)
        c.zadd(key, {f"{ts!r}:{time.perf_counter_ns()}": ts})
        c.zremrangebyscore(key, "-inf", f"({ts - window_seconds!r}")
        c.expire(key, max(1, int(math.ceil(window_seconds)) + 60))

    # -- flush lease -----------------------------------------------------------------------------------------
    def acquire_notify_lock(self, token: str, ttl_seconds: float) -> bool:
        """Take the notification flush lease (one flushing process at a time); True when taken."""
        return bool(self.client.set(NOTIFY_LOCK_KEY, token, nx=True, px=max(1, int(ttl_seconds * 1000))))

    # KEYS[1] = the lock key; ARGV[1] = the caller's token. Deletes the lock only when the caller holds it.
    _RELEASE_LOCK_LUA = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
    )

    def release_notify_lock(self, token: str) -> None:
        self.client.eval(self._RELEASE_LOCK_LUA, 1, NOTIFY_LOCK_KEY, token)

    # KEYS[1] = the lock key; ARGV[1] = the caller's token, ARGV[2] = new lease in ms. Extends only our lease.
    _RENEW_LOCK_LUA = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then "
        "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
    )

    def renew_notify_lock(self, token: str, ttl_seconds: float) -> bool:
        """Extend the flush lease we hold (before a long delivery); False when it is no longer ours."""
        ttl_ms = max(1, int(ttl_seconds * 1000))
        return bool(self.client.eval(self._RENEW_LOCK_LUA, 1, NOTIFY_LOCK_KEY, token, ttl_ms))
