"""The stream daemon's bar write: one round trip that checks the market is still the one the daemon holds and
writes the bar, atomically (a Lua script on the market's slot).

Before, a bar took three round trips: WATCH the snapshot, HGET its version, MULTI ... EXEC. Now the daemon
queues the bar's commands on a :class:`MarketWrite` (the store's usual write methods take it as their ``pipe``)
and :meth:`MarketWriteStore.commit_market_write` sends them in one ``EVALSHA``: the script compares the stored
market version and epoch with the ones the daemon holds and, only when both match, runs the commands in order.
Redis runs a script as one unit, so nothing can write the market between the check and the write (the WATCH
only protected the window between the version read and EXEC).

On a Redis Cluster a script may only touch keys of one slot: the commands on the market's keys (``mkt:{m}:*``)
go into the script, any other (the heartbeat ``hb:stream``) runs after it committed, as
:func:`engine.store.slots.slot_transaction` committed it after the market before.
"""

from __future__ import annotations

from typing import Any

from redis.commands import CoreCommands

from engine.store.base import StoreBase
from engine.store.keys import EPOCH_KEY, MARKET_KEY
from engine.store.slots import is_cluster

_GUARDED_WRITE_LUA = """
-- KEYS[1] = mkt:{m}:snapshot, KEYS[2] = mkt:{m}:epoch, KEYS[3..] = the keys the commands write.
-- ARGV[1] = the market version the writer holds, ARGV[2] = the market epoch it holds (0: none stored);
-- then each command as: c (its word count: name, key, arguments), its name, the KEYS index of its key, and
-- its c - 2 arguments.
-- Replies {0, stored version or ''} and writes nothing when the stored version or epoch is not the writer's;
-- else runs the commands in order and replies {1, ''}.
local stored = redis.call('HGET', KEYS[1], 'version')
local epoch = redis.call('GET', KEYS[2]) or '0'
if stored ~= ARGV[1] or epoch ~= ARGV[2] then
  return {0, stored or ''}
end
local allowed = {HSET = true, XADD = true, RPUSH = true, LTRIM = true, HINCRBY = true, DEL = true}
local i = 3
while i <= #ARGV do
  local c = tonumber(ARGV[i])
  local name = string.upper(ARGV[i + 1])
  if not allowed[name] then
    return redis.error_reply('market write: command ' .. name .. ' is not a market write')
  end
  local cmd = {name, KEYS[tonumber(ARGV[i + 2])]}
  for k = 3, c do
    cmd[k] = ARGV[i + k]
  end
  redis.call(unpack(cmd))
  i = i + c + 1
end
return {1, ''}
"""


class MarketWrite(CoreCommands):
    """Records write commands instead of sending them: pass it as ``pipe`` to the store's write methods, then
    :meth:`MarketWriteStore.commit_market_write`. Every command's first argument must be its key."""

    _event_dispatcher: Any = None  # redis-py's command mixins declare it; nothing is dispatched here

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **options: Any) -> MarketWrite:
        if len(args) < 2:
            raise ValueError(f"a market write command names its key: {args[:1]}")
        self.commands.append(args)
        return self


class MarketWriteStore(StoreBase):
    """The guarded one-round-trip write of a bar (see the module docstring)."""

    def market_write(self) -> MarketWrite:
        """An empty :class:`MarketWrite` to queue a bar's commands on."""
        return MarketWrite()

    def commit_market_write(self, write: MarketWrite, version: int, epoch: int) -> bool:
        """Run ``write``'s commands if the stored market still has ``version`` and ``epoch``.

        Returns True when they ran (atomically with the check), False when the market changed (nothing was
        written). A command that fails in Redis raises its ``redis.ResponseError`` (like a failed command in
        EXEC, the commands before it stay written).
        """
        client: Any = self.client  # a RedisCluster on a cluster (keyslot)
        cluster = is_cluster(client)
        slot = client.keyslot(MARKET_KEY) if cluster else None
        keys: list[Any] = [MARKET_KEY, EPOCH_KEY]
        index: dict[Any, int] = {MARKET_KEY: 1, EPOCH_KEY: 2}
        args: list[Any] = [int(version), int(epoch)]
        after: list[tuple[Any, ...]] = []
        for name, key, *rest in write.commands:
            if cluster and client.keyslot(key) != slot:
                after.append((name, key, *rest))
                continue
            if key not in index:
                keys.append(key)
                index[key] = len(keys)
            args.extend((len(rest) + 2, name, index[key], *rest))
        script = self.__dict__.get("_guarded_write_script")
        if script is None:  # registered once per Store; redis-py re-sends it if the server lost its cache
            script = self.__dict__["_guarded_write_script"] = self.client.register_script(_GUARDED_WRITE_LUA)
        done, _stored = script(keys=keys, args=args)
        if not int(done):
            return False
        if after:
            with self.client.pipeline(transaction=False) as pipe:
                for command in after:
                    pipe.execute_command(*command)
                pipe.execute()
        return True
