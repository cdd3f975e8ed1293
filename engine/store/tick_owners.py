"""The owner stamps of the vectorised monitor's portfolios (engine/store/tick_state.py, "Ownership"): read before
a tick's clock and books; the check of the stored peaks of those it keeps in memory; and the rows a lane's write
left out because another writer stamped them since."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.store.base import StoreBase
from engine.store.history import OWNER_FIELD
from engine.store.monitoring import PEAKS_FAULT_LUA

# Each peaks key's owner stamp, false where none, '' where the key is not a hash (read by pcall: one portfolio's
# wrong key must not fail every portfolio's tick; no writer's stamp, so the row is loaded, and refused:
# engine/store/tick_state.py ``TickState.load``). Read before a tick's clock and books: a plain HGET a key.
OWNERS_LUA = f"""
local out = {{}}
for i, key in ipairs(KEYS) do
  local held = redis.pcall('HGET', key, '{OWNER_FIELD}')
  if type(held) == 'table' then out[i] = '' else out[i] = held end
end
return out
"""

# Per peaks key, 1 where the hash is corrupt (engine/store/monitoring.py ``PEAKS_FAULT_LUA``, the rule the
# per-portfolio merge applies on every tick) or the key is not a hash, else 0. The vectorised monitor checks the
# portfolios it keeps in memory on every tick, as that merge does: a hash corrupted under a copy this writer owns
# (a write that left the owner stamp alone) is refused, not written over from memory. One HMGET and a few string
# tests a key, about 10 us: 10 ms at 1,000 portfolios, so it runs while the first lane is computed, when Redis
# is otherwise idle (logic/batch_tick.py), not before the tick's clock, where every lane waited for it.
FAULTS_LUA = (
    PEAKS_FAULT_LUA
    + """
local out = {}
for i, key in ipairs(KEYS) do
  local h = redis.pcall('HMGET', key, 'day', 'day_open', 'day_peak', 'week', 'week_peak', 'max_peak', 'max_dd',
                        'last', 'close')
  if h.err or peaks_fault(key, h) then out[i] = 1 else out[i] = 0 end
end
return out
"""
)


def touched_rows(queued: Sequence[int], replies: Sequence[Any]) -> list[int]:
    """The rows of a lane's write (``queued``: ``TickState.write``'s return) that another writer stamped
    since the tick began, so were not written, from its transaction's ``replies``: one script's (the places of
    those portfolios in it) or, on a Redis Cluster, one script's a portfolio (each its own first place)."""
    if not queued:
        return []
    if len(replies) != len(queued):  # one script for the lane
        return [queued[int(i)] for i in replies[0]]
    return [queued[n] for n, places in enumerate(replies) if places]


def read_owners(store: StoreBase, keys: Sequence[str]) -> list[bytes | None]:
    """The owner stamp of each peaks key (``StoreBase._eval_per_key``: one script, or one call per key on a Redis
    Cluster)."""
    return store._eval_per_key(OWNERS_LUA, keys)


def read_faults(store: StoreBase, keys: Sequence[str]) -> list[int]:
    """The places in ``keys`` of the peaks hashes that are corrupt or not hashes (:data:`FAULTS_LUA`)."""
    return [i for i, fault in enumerate(store._eval_per_key(FAULTS_LUA, keys)) if fault]
