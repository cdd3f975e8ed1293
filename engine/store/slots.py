"""Transactions that work on one Redis and on a Redis Cluster alike.

On a single server :func:`slot_transaction` is ``client.pipeline(transaction=True)``: one MULTI/EXEC, one round
trip, every command atomic together (unchanged behaviour).

On a Redis Cluster a MULTI may only touch keys of one hash slot (:mod:`engine.redis_cluster`), so a write that
spans slots (a warm-up writing the market and every portfolio, a read of every portfolio's book) becomes one
MULTI per slot: :class:`SlotTransaction` queues the commands like a pipeline, groups them by slot and runs the
groups one after the other, each atomic. Every portfolio's keys share a slot and the market's keys share
another, so what must be atomic (a fill, a portfolio's seed, the market snapshot with its matrices) still is;
only the spread over several portfolios is not. The groups of tagged keys (``mkt:{m}:*``, ``pf:{<id>}:*``) run
first, in the order of each group's first command, and the groups of global keys (``rd:*``: the registry, the
schema marker, the global audit stream) last: they are the commit markers, so a reader never finds a
registered portfolio without its data nor a schema without a market. Replies come back in queue order.

WATCH works on a cluster only over keys of one slot; code that WATCHes keys of several slots is restructured
(one slot per transaction, or a Lua script over one slot), never routed through here.
"""

from __future__ import annotations

from typing import Any

import redis

try:  # redis-py always ships it; guarded so a stripped install still runs single-server
    from redis.cluster import RedisCluster
except ImportError:  # pragma: no cover
    RedisCluster = None  # type: ignore[assignment,misc]


def is_cluster(client: object) -> bool:
    """True when ``client`` is a :class:`redis.cluster.RedisCluster` (``REDIS_URL=redis+cluster://...``)."""
    return RedisCluster is not None and isinstance(client, RedisCluster)


def slot_transaction(client: redis.Redis) -> Any:
    """A MULTI pipeline on one server; on a cluster a :class:`SlotTransaction` (one MULTI per slot)."""
    if is_cluster(client):
        return SlotTransaction(client)
    return client.pipeline(transaction=True)


class SlotTransaction:
    """Pipeline-like: queue commands (any redis command method), then :meth:`execute` runs one MULTI/EXEC per
    hash slot (tagged slots first, global keys last) and returns every reply in queue order.

    :meth:`watch` works per slot: the keys of each slot are WATCHed on a connection of their own (redis-py's
    single-slot cluster transaction), reads of a watched key before :meth:`multi` run there at once, and that
    slot's EXEC fails with :class:`redis.WatchError` if a watched key changed. The slots are committed one by
    one, so a WatchError can come after other slots committed: callers redo their work idempotently (the
    monitor redoes the tick). Lua ``Script`` objects are not supported (queue ``EVAL`` by name instead).
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client: Any = client
        self._recorder: Any = client.pipeline(transaction=False)
        self._watching: dict[int, Any] = {}
        self._explicit = False

    def __getattr__(self, name: str) -> Any:
        if name == "unwatch":
            return self.reset
        if self._watching and not self._explicit:  # WATCH mode: reads run at once, on the key's slot

            def immediate(*args: Any, **kwargs: Any) -> Any:
                slot = self._client.keyslot(args[0]) if args else None
                target = self._watching.get(slot, self._client) if slot is not None else self._client
                return getattr(target, name)(*args, **kwargs)

            return immediate
        return getattr(self._recorder, name)

    def watch(self, *names: Any) -> None:
        if self._explicit:
            raise redis.RedisError("Cannot issue a WATCH after a MULTI")
        by_slot: dict[int, list[Any]] = {}
        for name in names:
            by_slot.setdefault(self._client.keyslot(name), []).append(name)
        for slot, keys in by_slot.items():
            pipe = self._watching.get(slot)
            if pipe is None:
                pipe = self._watching[slot] = self._client.pipeline(transaction=True)
            pipe.watch(*keys)

    def multi(self) -> None:
        self._explicit = True

    def __enter__(self) -> SlotTransaction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reset()

    def __len__(self) -> int:
        return len(self._queue())

    def _queue(self) -> list[Any]:
        return list(self._recorder._execution_strategy.command_queue)

    def reset(self) -> None:
        self._recorder.reset()
        for pipe in self._watching.values():
            pipe.reset()
        self._watching.clear()
        self._explicit = False

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        queue = self._queue()
        groups: dict[int, list[Any]] = {}
        first: dict[int, tuple[bool, bool, int]] = {}
        for position, cmd in enumerate(queue):
            slot = self._client.determine_slot(*cmd.args)
            groups.setdefault(slot, []).append((position, cmd))
            if slot not in first:
                key = cmd.args[1] if len(cmd.args) > 1 else b""
                if str(cmd.args[0]).upper() in ("EVAL", "EVALSHA") and len(cmd.args) > 3:
                    key = cmd.args[3]
                raw = key if isinstance(key, bytes) else str(key).encode()
                first[slot] = (b"{" not in raw, slot not in self._watching, position)
        results: list[Any] = [None] * len(queue)
        try:
            for slot in sorted(groups, key=first.__getitem__):
                tx = self._watching.pop(slot, None)
                if tx is not None:
                    tx.multi()
                else:
                    tx = self._client.pipeline(transaction=True)
                try:
                    for _, cmd in groups[slot]:
                        tx.execute_command(*cmd.args, **cmd.options)
                    replies = tx.execute(raise_on_error=raise_on_error)
                finally:
                    tx.reset()
                for (position, _), reply in zip(groups[slot], replies, strict=True):
                    results[position] = reply
        finally:
            self.reset()
        return results
