"""Monitors that share the portfolios: each live monitor snapshots its own shard of every tick.

With ``monitor.shard_portfolios`` every monitor reads every tick (XREAD, no consumer group; latest wins: only
the newest waiting tick is snapshotted) and computes the portfolios it owns, so N monitors each do about 1/N of
the work and the time until every portfolio has a snapshot for a tick falls as monitors are added.

Membership: each monitor beats into ``rd:monitors`` (a sorted set: consumer -> wall time of its last beat) on
every tick and every idle second. The live monitors are those that beat within ``claim_seconds`` (the
monitor's ``--claim-idle``); beats older than ``monitor.consumer_idle_limit_seconds`` are removed.

Assignment: rendezvous (highest-random-weight) hashing, ``owner(p) = argmax_c H(c, p)`` over the live monitors,
with ``H`` the first 8 bytes of BLAKE2b of ``"<consumer>\\x00<portfolio>"``: every monitor computes the same owner
from the same membership without talking to the others; a monitor that joins or leaves moves only the
portfolios it wins or held (about 1/N of them). Failover: a monitor killed mid-run stops beating; once its last
beat is ``claim_seconds`` old, the others no longer count it and take its portfolios on their next tick, so no
portfolio goes without a snapshot for longer than the claim time plus one tick. While the membership changes
two monitors may both snapshot a portfolio for a tick; that is harmless (the latest snapshot is replaced only by
a newer version, peaks merge by max/min, the backtest is fed once per version under WATCH).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from collections.abc import Sequence
from typing import Any

import redis

from engine.records import Clock
from engine.store import TICKS_KEY, Store, TickEvent
from engine.store.keys import MONITORS_KEY

__all__ = ["Membership", "TickCursor", "newest_tick", "owner", "remove_idle_consumers", "shard"]

_REMOVE_IDLE_CONSUMERS_LUA = """
-- KEYS[1] = the tick stream; ARGV[1] = group, ARGV[2] = the calling consumer, ARGV[3] = idle limit (ms)
-- Removes consumers idle longer than the limit that hold no pending entry (their ticks would be lost),
-- never the caller; atomic, so a consumer cannot receive an entry between the check and the removal.
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] ~= ARGV[2] and tonumber(f['pending']) == 0 and tonumber(f['idle']) > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    table.insert(removed, f['name'])
  end
end
return removed
"""


def remove_idle_consumers(store: Store, group: str, consumer: str, limit_ms: int) -> list[str]:
    """Remove the consumers of ``group`` on the tick stream idle longer than ``limit_ms`` that hold no pending
    entry, never ``consumer`` (one atomic script); returns the names removed (the consumer-group mode)."""
    try:
        raw = store.client.eval(_REMOVE_IDLE_CONSUMERS_LUA, 1, TICKS_KEY, group, consumer, limit_ms)
    except redis.ResponseError:  # no stream or no group yet: nobody to remove
        return []
    return sorted(n.decode() if isinstance(n, bytes) else str(n) for n in raw)


def _weight(consumer: str, portfolio_id: str) -> int:
    digest = hashlib.blake2b(f"{consumer}\x00{portfolio_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(portfolio_id: str, consumers: Sequence[str]) -> str:
    """The live monitor that snapshots ``portfolio_id`` (rendezvous hashing; ties broken by name)."""
    if not consumers:
        raise ValueError("no live monitor to own the portfolio")
    return max(consumers, key=lambda c: (_weight(c, portfolio_id), c))


def shard(portfolio_ids: Sequence[str], consumers: Sequence[str], me: str) -> list[str]:
    """The portfolios of ``portfolio_ids`` that ``me`` owns among ``consumers`` (``me`` always counts)."""
    live = tuple(sorted(set(consumers) | {me}))
    if len(live) == 1:
        return list(portfolio_ids)
    return list(_owned(tuple(portfolio_ids), live, me))


@functools.lru_cache(maxsize=4)
def _owned(portfolio_ids: tuple[str, ...], live: tuple[str, ...], me: str) -> tuple[str, ...]:
    """:func:`shard` among two or more monitors, kept for the next tick (the same portfolios and live monitors
    each tick while nobody joins or leaves: a thousand portfolios cost a few ms of hashing per monitor)."""
    return tuple(pid for pid in portfolio_ids if owner(pid, live) == me)


class Membership:
    """This monitor's beats in ``rd:monitors`` and the live monitors it shares the portfolios with.

    Parameters
    ----------
    store:
        The store.
    consumer:
        This monitor's name.
    claim_seconds:
        A monitor whose last beat is older than this is not live (its portfolios are taken over).
    idle_limit_seconds:
        Beats older than this are removed from the set (``monitor.consumer_idle_limit_seconds``).
    wall:
        The clock of the beats: the wall clock (liveness is about processes, also in a replay whose data
        clock jumps a week per bar); tests inject their own.
    """

    def __init__(
        self,
        store: Store,
        consumer: str,
        claim_seconds: float,
        idle_limit_seconds: float,
        wall: Clock = time.time,
    ) -> None:
        if claim_seconds <= 0 or idle_limit_seconds <= 0:
            raise ValueError("claim_seconds and idle_limit_seconds must be > 0")
        self.store = store
        self.consumer = consumer
        self.claim_seconds = float(claim_seconds)
        self.idle_limit_seconds = float(idle_limit_seconds)
        self.wall = wall

    def beat(self, now: float | None = None) -> list[str]:
        """Record this monitor's beat at wall time ``now`` (default: :attr:`wall`), drop beats past the idle
        limit, and return the live monitors (one round trip)."""
        now = self.wall() if now is None else now
        pipe = self.store.client.pipeline(transaction=False)
        pipe.zadd(MONITORS_KEY, {self.consumer: now})
        pipe.zremrangebyscore(MONITORS_KEY, "-inf", f"({now - self.idle_limit_seconds!r}")
        pipe.zrangebyscore(MONITORS_KEY, now - self.claim_seconds, "+inf")
        raw = pipe.execute()[-1]
        live = {m.decode() if isinstance(m, bytes) else str(m) for m in raw}
        return sorted(live | {self.consumer})

    def members(self) -> dict[str, float]:
        """Every monitor in the set with its last beat (wall time), live or not yet removed."""
        raw: Any = self.store.client.zrange(MONITORS_KEY, 0, -1, withscores=True)
        return {(m.decode() if isinstance(m, bytes) else str(m)): float(score) for m, score in raw}

    def leave(self) -> None:
        """Remove this monitor (a clean stop: the others take its portfolios on their next tick)."""
        self.store.client.zrem(MONITORS_KEY, self.consumer)


class TickCursor:
    """Where a monitor sharing the portfolios reads the tick stream (XREAD: no consumer group keeps its ticks
    pending, so this does). It starts at the newest tick there is, or, while there is none, at the stream's start
    (the first tick is waited for in a blocking XREAD, not asked for in a loop). :meth:`mark` before a tick's
    reads, :meth:`passed` once one is written and :meth:`rewind` after a tick's WATCH aborted it (or the store
    failed): that tick is read again and redone at once, not the ones written before it (as the consumer group
    keeps only the unacknowledged ones pending)."""

    def __init__(self) -> None:
        self.last: str | None = None
        """The last entry read; None: none yet (start at the newest)."""
        self._mark: str | None = None

    def read(self, store: Store, count: int, block_ms: int | None) -> list[tuple[str, TickEvent | None]]:
        """The entries after :attr:`last` (at most ``count``, waiting up to ``block_ms`` for one)."""
        entries = store.read_ticks_after(self.last, count=count, block_ms=block_ms)
        if entries:
            self.last = entries[-1][0]
        elif self.last is None:  # an empty stream: its first entry, when it comes, is read from the start
            self.last = "0-0"
        return entries

    def mark(self) -> None:
        """Before a read: a conflict in what is read from here reads it again from here."""
        self._mark = self.last

    def passed(self, entry_id: str | None) -> None:
        """Done with entry ``entry_id`` (written, or counted as coalesced): a conflict on a later one reads again
        from after it, not from before it (ticks in order, or the ticks a newer one stands for)."""
        if entry_id is not None:
            self._mark = entry_id

    def rewind(self) -> None:
        self.last = self._mark


def newest_tick(
    entries: Sequence[tuple[str, TickEvent | None]],
) -> tuple[str | None, TickEvent | None, list[str], list[str]]:
    """Latest wins: of the tick entries read together, (the newest readable entry's id, its event, the ids of the
    older readable ones it stands for, the ids of unreadable ones), ordered by stream id (a claim may hand back
    entries read already: each counts once). When a skipped tick restarted the prices (``reset``) the newest one
    carries the reset, so the peaks restart with it."""
    unique = dict(entries)
    ordered = sorted(unique.items(), key=lambda e: tuple(int(part) for part in e[0].split("-")))
    readable = [(entry_id, event) for entry_id, event in ordered if event is not None]
    unreadable = [entry_id for entry_id, event in ordered if event is None]
    if not readable:
        return None, None, [], unreadable
    newest_id, newest = readable[-1]
    if any(event.reset for _, event in readable) and not newest.reset:
        newest = dataclasses.replace(newest, reset=True)
    return newest_id, newest, [entry_id for entry_id, _ in readable[:-1]], unreadable
