"""The per-portfolio order queue: a FIFO lease that lets one order of a portfolio execute at a time, in order.

Keys (:mod:`engine.store.keys`)::

    pf:{<id>}:order_queue           list     tickets in arrival order; the head is the order executing
    pf:{<id>}:order_lease           string   the head's ticket, SET PX: it expires if the head's process dies
    pf:{<id>}:order_wake:<ticket>   list     one "your turn" entry pushed when <ticket> becomes the head (PX TTL)

Protocol (logic/execution.py runs it; each step is one Lua script, so each is atomic):

- :meth:`SequencerStore.join_order_queue` appends a fresh ticket. On an empty queue the ticket is the head at
  once and takes the lease. Otherwise the caller waits: :meth:`SequencerStore.wait_order_turn` (BLPOP on its
  own wake key, with a short timeout) returns when the order before it hands over.
- :meth:`SequencerStore.leave_order_queue` pops the caller's ticket; when it was the head, the next ticket
  becomes the head in the same script: it gets the lease and a wake entry. A waiter that gives up leaves the
  same way (its ticket is removed wherever it stands).
- Crash safety: every step first reaps dead heads (:meth:`SequencerStore.check_order_queue`, run by a
  waiter each time its BLPOP times out). A head is dead when the lease no longer holds its ticket: the lease is
  set in the same script that makes a ticket the head, so only its expiry (the process died or stalled longer
  than the TTL) can separate them. The dead head is popped and the next ticket promoted, atomically.

The lease orders orders; it does not make them correct: the executing order still WATCHes the portfolio and
commits with MULTI/EXEC, so a head that stalls past its TTL and wakes while its successor runs loses a WATCH
race at worst (and retries), never corrupts the book.

The scripts build the next head's wake key from the prefix they are given (``ARGV``): a key not named in
``KEYS``. Every key here shares the portfolio's hash tag ``{<id>}``, so they all live in one Cluster slot.
"""

from __future__ import annotations

from typing import Any

import redis

from engine.errors import StoreUnavailableError
from engine.store.base import Conn, StoreBase
from engine.store.codec import decode_str
from engine.store.keys import PortfolioKeys

_PRELUDE = """
-- KEYS[1] = pf:{id}:order_queue, KEYS[2] = pf:{id}:order_lease
-- ARGV[1] = the caller's ticket, ARGV[2] = lease TTL (ms), ARGV[3] = wake entry TTL (ms),
-- ARGV[4] = the wake key prefix pf:{id}:order_wake:
local queue, lease = KEYS[1], KEYS[2]
local ticket, lease_ms, wake_ms, wake = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

-- make `head` the holder: the lease names it, and its wake key gets the "your turn" entry
local function grant(head)
  redis.call('SET', lease, head, 'PX', lease_ms)
  redis.call('RPUSH', wake .. head, '1')
  redis.call('PEXPIRE', wake .. head, wake_ms)
end

-- pop heads whose lease is gone (expired: the process died or stalled past the TTL), promoting the next;
-- returns the live head (false when the queue is empty) and how many were reaped
local function settle()
  local reaped = 0
  local head = redis.call('LINDEX', queue, 0)
  while head and redis.call('GET', lease) ~= head do
    redis.call('LPOP', queue)
    redis.call('DEL', wake .. head)
    reaped = reaped + 1
    head = redis.call('LINDEX', queue, 0)
    if head then grant(head) end
  end
  if not head then redis.call('DEL', lease) end
  return head, reaped
end
"""

_JOIN_LUA = (
    _PRELUDE
    + """
-- Append the ticket; reply {1 if it is the head now (it holds the lease), dead heads reaped}.
redis.call('RPUSH', queue, ticket)
if redis.call('LLEN', queue) == 1 then
  redis.call('SET', lease, ticket, 'PX', lease_ms)
  return {1, 0}
end
local head, reaped = settle()
if head == ticket then
  redis.call('DEL', wake .. ticket)  -- promoted while joining: the caller needs no wake-up
  return {1, reaped}
end
return {0, reaped}
"""
)

_CHECK_LUA = (
    _PRELUDE
    + """
-- Reap dead heads; reply {1 if the ticket is the head (holds the lease), 0 if it waits, -1 if it is no longer
-- in the queue (reaped: it held the head longer than the TTL), dead heads reaped}.
local head, reaped = settle()
if head == ticket then
  redis.call('DEL', wake .. ticket)
  return {1, reaped}
end
if redis.call('LPOS', queue, ticket) then return {0, reaped} end
return {-1, reaped}
"""
)

_LEAVE_LUA = (
    _PRELUDE
    + """
-- Remove the ticket; when it was the head, promote the next one. Reply 1 if it was the head, else 0.
local was_head = 0
if redis.call('LINDEX', queue, 0) == ticket then
  redis.call('LPOP', queue)
  was_head = 1
  local head = redis.call('LINDEX', queue, 0)
  if head then grant(head) else redis.call('DEL', lease) end
else
  redis.call('LREM', queue, 1, ticket)
end
redis.call('DEL', wake .. ticket)
return was_head
"""
)

_REFRESH_LUA = """
-- KEYS[1] = pf:{id}:order_lease; ARGV[1] = ticket, ARGV[2] = lease TTL (ms).
-- Extend the lease if the ticket still holds it; reply 1 if it did, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


class SequencerStore(StoreBase):
    """The per-portfolio FIFO order queue and its lease (see the module doc for the protocol).

    TTLs are in seconds here and in milliseconds in Redis. Methods raise ``redis.RedisError`` as the client
    does; the caller (logic/execution.py) turns that into a fail-closed rejection: a full Redis
    (:func:`out_of_memory`) as ``STORE_UNAVAILABLE``, never as a corrupt queue.
    """

    def _sequencer_script(self, name: str, source: str) -> redis.commands.core.Script:
        script = self.__dict__.get(name)
        if script is None:  # registered once per Store; redis-py re-sends it if the server lost its cache
            script = self.__dict__[name] = self.client.register_script(source)
        return script

    def _queue_call(
        self, name: str, source: str, portfolio_id: str, ticket: str, lease_seconds: float, wake_seconds: float
    ) -> Any:
        keys = PortfolioKeys(portfolio_id)
        return self._sequencer_script(name, source)(
            keys=[keys.order_queue, keys.order_lease],
            args=[ticket, _ms(lease_seconds), _ms(wake_seconds), keys.order_wake_prefix],
        )

    def join_order_queue(
        self, portfolio_id: str, ticket: str, lease_seconds: float, wake_seconds: float
    ) -> tuple[bool, int]:
        """Append ``ticket`` to the portfolio's order queue.

        Returns ``(head, reaped)``: whether the ticket is the head now (it holds the lease for
        ``lease_seconds``) and how many dead heads were removed on the way. A ticket that is not the head waits
        with :meth:`wait_order_turn`; its wake entry lives ``wake_seconds``.
        """
        head, reaped = _pair(
            self._queue_call("_join_script", _JOIN_LUA, portfolio_id, ticket, lease_seconds, wake_seconds)
        )
        return head == 1, reaped

    def wait_order_turn(self, portfolio_id: str, ticket: str, timeout_seconds: float) -> bool:
        """Block until ``ticket`` is handed the lease, at most ``timeout_seconds``; True if it was.

        False only says no hand-over came in time: run :meth:`check_order_queue` (the head may be dead).
        """
        reply = self.client.blpop([PortfolioKeys(portfolio_id).order_wake(ticket)], timeout=timeout_seconds)
        return reply is not None

    def check_order_queue(
        self, portfolio_id: str, ticket: str, lease_seconds: float, wake_seconds: float
    ) -> tuple[int, int]:
        """Reap dead heads; ``(1, reaped)`` if ``ticket`` is the head now, ``(0, reaped)`` if it still waits,
        ``(-1, reaped)`` if it is no longer in the queue (it was reaped as a head that outlived its lease)."""
        return _pair(self._queue_call("_check_script", _CHECK_LUA, portfolio_id, ticket, lease_seconds, wake_seconds))

    def leave_order_queue(
        self, portfolio_id: str, ticket: str, lease_seconds: float, wake_seconds: float, pipe: Conn = None
    ) -> bool:
        """Remove ``ticket`` from the queue (wherever it stands); when it was the head, the next ticket gets
        the lease (for ``lease_seconds``) and its wake entry. Returns whether it was the head.

        With ``pipe`` (a MULTI) the step is queued there and runs when the caller's EXEC does (the reply,
        False here, is the pipeline's): a fill and the hand-over to the next order commit together, and an
        EXEC that fails leaves the caller at the head. The script travels as EVAL, so a server that lost its
        script cache cannot fail the transaction with NOSCRIPT.
        """
        if pipe is not None:
            keys = PortfolioKeys(portfolio_id)
            pipe.execute_command(  # EVAL by name: a Redis Cluster pipeline has no eval()
                "EVAL",
                _LEAVE_LUA, 2, keys.order_queue, keys.order_lease,
                ticket, _ms(lease_seconds), _ms(wake_seconds), keys.order_wake_prefix,
            )  # fmt: skip
            return False
        reply = self._queue_call("_leave_script", _LEAVE_LUA, portfolio_id, ticket, lease_seconds, wake_seconds)
        return int(reply) == 1

    def refresh_order_lease(self, portfolio_id: str, ticket: str, lease_seconds: float) -> bool:
        """Extend the lease by ``lease_seconds`` if ``ticket`` still holds it; True if it did."""
        script = self._sequencer_script("_refresh_script", _REFRESH_LUA)
        reply = script(keys=[PortfolioKeys(portfolio_id).order_lease], args=[ticket, _ms(lease_seconds)])
        return int(reply) == 1

    def read_order_queue(self, portfolio_id: str) -> tuple[list[str], str | None]:
        """The queue's tickets (head first) and the lease holder's ticket (None when no lease is held)."""
        keys = PortfolioKeys(portfolio_id)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.lrange(keys.order_queue, 0, -1)
            pipe.get(keys.order_lease)
            tickets, holder = pipe.execute()
        queue = [decode_str(t, key=keys.order_queue) for t in tickets]
        return queue, None if holder is None else decode_str(holder, key=keys.order_lease)


OUT_OF_MEMORY_FIX = (
    "free memory in Redis or raise its limit (CONFIG SET maxmemory, or maxmemory in redis.conf; the memory figures "
    "are on the System page), then send the order again: the data is intact, do NOT re-seed the store"
)
"""What to do when Redis refuses writes for memory (``maxmemory`` reached under ``noeviction``)."""


def out_of_memory(exc: BaseException) -> bool:
    """Redis refused a write because it is at ``maxmemory`` with eviction off. redis-py raises
    ``OutOfMemoryError`` for a plain command, but a script's write comes back as a plain ``ResponseError``
    (``Error running script ...: -OOM command not allowed ...``), and a MULTI's as the queued command's error: the
    reply text is what tells. Not a corrupt key: the queue scripts (and every order) need to write, so a full
    Redis refuses every order until it has room."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return True
    return isinstance(exc, redis.ResponseError) and "OOM command not allowed" in str(exc)


def out_of_memory_error(exc: BaseException, what: str) -> StoreUnavailableError:
    """``exc`` (see :func:`out_of_memory`) as the store's typed error: unavailable, never corrupt."""
    return StoreUnavailableError(
        f"{what}: Redis is out of memory (maxmemory reached, eviction off) and refuses writes; nothing was "
        f"written ({str(exc)[:200]})",
        fix=OUT_OF_MEMORY_FIX,
    )


def _pair(reply: Any) -> tuple[int, int]:
    """A ``{int, int}`` script reply."""
    first, second = reply
    return int(first), int(second)


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds, at least 1 (Redis refuses PX 0)."""
    if not seconds > 0:
        raise ValueError("a queue TTL must be positive")
    return max(1, round(seconds * 1000))
