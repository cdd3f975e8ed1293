"""Which keys changed since a process last read them, told by Redis itself (server-assisted client-side caching).

A reader that reads the same keys every tick (the monitor reads every portfolio's book, about 12 ms of a tick of
1,000 portfolios, when books change a few times a minute) asks Redis instead which of them were written since:
:class:`KeyTracker` holds a connection of its own with ``CLIENT TRACKING ON`` (RESP3). Redis remembers every key
read through it, inside scripts too, and when any client writes, expires, evicts or flushes one, it pushes an
``invalidate`` message on that same connection, once per read. Pushes travel in order with the replies, so the
reply to a command carries behind it every push for a write that ran before that command:
:meth:`KeyTracker.changes` sends one (``CLIENT ID``) and returns the keys pushed until its reply. A key not
among them holds what it held when last read through the tracker, as of that reply.

Nothing relies on the writers: Redis reports every write, whoever made it (a fill, an operator's redis-cli, a
restore). When the tracker cannot vouch for a key, :meth:`~KeyTracker.changes` returns None ("read
everything"): the first call, after any (re)connection (a new connection tracks nothing, and pushes sent to the
old one are lost; a restarted server may even hand out the old client id again, so the tracker counts
connections, not ids), after a flush of the database (its push names no key), and after an error. The caller
then reads everything through :meth:`KeyTracker.eval`, which tracks it anew. A server that refuses tracking (an
ACL denying ``CLIENT``) is told once and read in full on every call.

Only on one server: a Redis Cluster pushes per node, and the readers fall back to reading everything.

Users: the monitor's and the backtest runner's read of every book (engine/store/portfolio_reader.py), and, through
:class:`TrackedReplies`, the per-portfolio reads of every tick (live limits, backtest sections).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis

from engine.store.slots import is_cluster

log = logging.getLogger(__name__)

TRACKED_SCRIPT_KEYS = 96
"""The most keys one script call through a tracked connection names (:class:`TrackedReplies`; the book reader
sends whole portfolios, engine/store/portfolio_reader.py). Redis 6.2 (the embedded server) remembers, after every
read-only command a script runs, every key of the script's ``EVALSHA`` for the tracking client, not the keys of that
command: a script of K keys and C commands costs K x C insertions into the tracking table. Reading every book of
1,000 portfolios in one call (3,001 keys, about 6,000 commands) held Redis for 1.3-1.8 s (measured; 25-37 ms
untracked), and the monitor does that on every start, reconnection or failed read, while every pre-trade check
waits; calls of at most this many keys hold it a few ms each (the same read: about 125-165 ms in all). Redis 7
remembers the keys of each command a script runs; there the split costs a few round trips."""


class KeyTracker:
    """A tracked connection to the server of ``client`` (module docstring). One thread uses it."""

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        # RESP3: the pushes share the connection with the replies; no health-check PING, which would read them
        # out of turn
        kwargs = {**pool.connection_kwargs, "protocol": 3, "health_check_interval": 0}
        self._pool = redis.ConnectionPool(connection_class=pool.connection_class, max_connections=1, **kwargs)
        self._connection: Any = self._pool.make_connection()
        self._connection.register_connect_callback(self._connected)
        self._connections = 0
        self._tracked_on = -1
        """The connection count at which tracking was switched on (-1: not on this connection)."""
        self._changed: set[bytes] = set()
        self._everything = True
        self._scripts: dict[str, str] = {}
        self.refused: str | None = None
        """Why the server refused tracking (an ACL that denies ``CLIENT``), None while it has not."""

    def changes(self) -> set[bytes] | None:
        """The keys written since they were last read through :meth:`eval`, or None when that is not known (read
        everything). Call it before the reads it decides. A broken connection (the server restarted, a timeout)
        is opened again once, and the answer is None."""
        if self.refused is not None:
            return None
        try:
            return self._changes()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            self._connection.disconnect()
            return self._changes()
        except redis.exceptions.ResponseError as exc:
            if not _refusal(exc):
                raise
            self.refused = str(exc)  # an ACL without CLIENT, a server without tracking: read everything, always
            log.warning("Redis refused client tracking (%s): every read reads everything", exc)
            return None

    def _changes(self) -> set[bytes] | None:
        try:
            if self._tracked_on != self._connections or not self._connection.is_connected:
                self._connection.connect()  # a no-op when connected
                self._tracked_on = self._connections
                self._call("CLIENT", "TRACKING", "ON")
                self._everything = True
            self._call("CLIENT", "ID")  # its reply comes after every push of an earlier write
            if self._tracked_on != self._connections:  # reconnected meanwhile: what it tracked is lost
                self._everything = True
        except BaseException:
            self.forget()
            raise
        changed, everything = self._changed, self._everything
        self._changed, self._everything = set(), False
        return None if everything else changed

    def eval(self, source: str, keys: list[Any], args: list[Any]) -> Any:
        """Run the read-only Lua script ``source`` through the tracked connection (by its SHA once loaded): every
        key it reads is tracked."""
        sha = self._scripts.get(source)
        if sha is None:
            sha = self._scripts[source] = self._call("SCRIPT", "LOAD", source).decode()
        try:
            return self._call("EVALSHA", sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:  # the server restarted or flushed its scripts
            self._call("SCRIPT", "LOAD", source)
            return self._call("EVALSHA", sha, len(keys), *keys, *args)

    def forget(self) -> None:
        """What was read after :meth:`changes` may not be tracked (a read failed): the next call returns None."""
        self._tracked_on, self._everything = -1, True

    def close(self) -> None:
        self._connection.disconnect()
        self._pool.disconnect()

    def _call(self, *args: Any) -> Any:
        """Send one command and return its reply, taking every push before it one at a time (redis-py reads a
        push before a reply by recursing, once per push: a few thousand would exhaust the stack)."""
        connection = self._connection
        connection._parser.set_invalidation_push_handler(self._pushed)  # as redis-py's own cache does
        connection.send_command(*args)
        while True:
            reply = connection.read_response(push_request=True)
            if reply is not _PUSH:
                return reply

    def _connected(self, _connection: Any) -> None:
        self._connections += 1

    def _pushed(self, message: Any) -> object:
        """An ``invalidate`` push: [b"invalidate", [key, ...]], or [b"invalidate", None] when the server flushed
        its keys (or dropped its table of tracked keys)."""
        keys = message[1] if len(message) > 1 else None
        if keys is None:
            self._everything = True
        else:
            self._changed.update(k if isinstance(k, bytes) else str(k).encode() for k in keys)
        return _PUSH


class TrackedReplies:
    """The replies of a read-only Lua script that answers one reply per key (reply i for ``KEYS[i]`` and
    ``ARGV[i]``), kept per key while Redis reports no write to it (:class:`KeyTracker`): a read sends the
    script over the keys written since, or whose argument changed, only (none: one round trip).

    Every reply but an error is kept, also while a read names only some of the keys (a monitor redoing one lane
    of a tick): a key Redis reports written is dropped whether this read names it or not; an error is read again
    next time. On a Redis Cluster (or with ``tracking`` False) :meth:`read` returns None and the caller reads as
    without it."""

    def __init__(self, source: str, *, tracking: bool = True) -> None:
        self.source = source
        self.tracking = tracking
        self._tracker: KeyTracker | None = None
        self._client: Any = None
        self._held: dict[str, tuple[Any, Any]] = {}
        """By key: (the argument sent, the reply)."""
        self._last: tuple[list[str], list[Any], list[Any]] = ([], [], [])
        """(keys, arguments, replies) of the last read: the answer again while nothing was written."""

    def read(self, client: Any, keys: Sequence[str], args: Sequence[Any] | None = None) -> list[Any] | None:
        """The replies of the script over ``keys`` and ``args`` (one argument per key; None: the script takes
        none), as of now; None without a tracker (the caller runs the script itself)."""
        sent = args is not None
        if not self.tracking or is_cluster(client):
            return None
        if self._tracker is None or self._client is not client:
            self.close()
            self._tracker, self._client = KeyTracker(client), client
        tracker = self._tracker
        changed = tracker.changes()
        keys = list(keys)
        args = list(args) if args is not None else [""] * len(keys)
        last_keys, last_args, last_replies = self._last
        if changed is not None and not changed and keys == last_keys and args == last_args:
            return list(last_replies)  # nothing written: the common tick
        held = self._held = self._held if changed is not None else {}
        for name in changed or ():  # written since: not held any more, whichever read names it next
            held.pop(name.decode(), None)
        need = [i for i, (key, arg) in enumerate(zip(keys, args, strict=True)) if held.get(key, _NOT_HELD)[0] != arg]
        try:
            need_args = [args[i] for i in need] if sent else []
            fresh = []
            for at in range(0, len(need), TRACKED_SCRIPT_KEYS):  # a call of a few keys at a time (the constant)
                part = need[at : at + TRACKED_SCRIPT_KEYS]
                fresh += tracker.eval(self.source, [keys[i] for i in part], need_args[at : at + len(part)])
        except BaseException:
            tracker.forget()
            raise
        replies = [h[1] if h is not None else None for h in (held.get(k) for k in keys)]
        for i, reply in zip(need, fresh, strict=True):
            replies[i] = reply
        for i in need:
            if isinstance(replies[i], Exception):
                held.pop(keys[i], None)
            else:
                held[keys[i]] = (args[i], replies[i])
        complete = not any(isinstance(r, Exception) for r in replies)
        self._last = (keys, args, replies) if complete else ([], [], [])
        return list(replies)

    def close(self) -> None:
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None
        self._held, self._last = {}, ([], [], [])


def _refusal(exc: redis.exceptions.ResponseError) -> bool:
    """The server will never track for this client: no permission, or no such command (not a transient
    error such as a busy script, which the next call may not meet)."""
    text = str(exc).lower()
    return (
        isinstance(exc, redis.exceptions.NoPermissionError) or "unknown command" in text or "unknown subcommand" in text
    )


_NOT_HELD = (object(), None)
"""What :class:`TrackedReplies` finds for a key it does not hold: an argument no caller sends."""
_PUSH = object()
"""What :meth:`KeyTracker._pushed` returns to redis-py's parser for a push: told apart from any reply."""
