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
then reads everything through :attr:`KeyTracker.client`, which tracks it anew.

Only on one server: a Redis Cluster pushes per node, and the readers fall back to reading everything.
"""

from __future__ import annotations

from typing import Any

import redis


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

    def changes(self) -> set[bytes] | None:
        """The keys written since they were last read through :meth:`eval`, or None when that is not known (read
        everything). Call it before the reads it decides. A broken connection (the server restarted, a timeout)
        is opened again once, and the answer is None."""
        try:
            return self._changes()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            self._connection.disconnect()
            return self._changes()

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


_PUSH = object()
"""What :meth:`KeyTracker._pushed` returns to redis-py's parser for a push: told apart from any reply."""
