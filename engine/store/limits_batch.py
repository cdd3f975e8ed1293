"""Many portfolios' live limits (``pf:{<id>}:limits``, engine/store/limits.py) read in one call.

The monitor and the alert engine need every portfolio's live limits on every tick, and they rarely change: the
caller sends the token (:func:`engine.store.limits.limits_token`: version and random ``rev``) of the record it
holds for each portfolio, and one read-only Lua script (EVALSHA) answers per portfolio "no record", "unchanged"
or the new version and rev with its JSON, read together (atomic). On a Redis Cluster a script may touch one slot
only: one script per portfolio, pipelined.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from engine.store.keys import PortfolioKeys
from engine.store.portfolio_reader import pipelined_scripts
from engine.store.slots import is_cluster
from engine.store.tracking import TrackedReplies

if TYPE_CHECKING:
    from engine.store.base import StoreBase

LIMITS_UNCHANGED = 0
"""A portfolio's reply when its stored record's token equals the one the caller holds."""

_READ_LIMITS_LUA = """
-- Live limits of many portfolios, read-only, in one atomic call.
-- KEYS[i] = pf:{id}:limits, ARGV[i] = the token '<version>:<rev>' of the record the caller holds ('' for none;
-- rev '' for a record written before tokens).
-- Returns one slot per key: nil when there is no record, 0 when its token equals ARGV[i], else
-- {version, rev, json} (rev, json nil when missing). Every read is a pcall: a key of the wrong type comes back
-- as an error in its own slot, and so does a record without a version (damaged: not "no record", which would
-- mean the settings').
local out = {}
for i = 1, #KEYS do
  local head = redis.pcall('HMGET', KEYS[i], 'version', 'rev')
  if head.err then
    out[i] = head
  elseif not head[1] and redis.call('EXISTS', KEYS[i]) == 1 then
    out[i] = {err = 'version missing'}
  elseif not head[1] then
    out[i] = false
  elseif ARGV[i] ~= '' and (head[1] .. ':' .. (head[2] or '')) == ARGV[i] then
    out[i] = 0
  else
    out[i] = {head[1], head[2], redis.pcall('HGET', KEYS[i], 'json')}
  end
end
return out
"""


@functools.lru_cache(maxsize=65_536)
def _limits_key(portfolio_id: str) -> str:
    """``pf:{<id>}:limits``, remembered: every tick names every portfolio's key."""
    return PortfolioKeys(portfolio_id).limits


def read_limits_batch(
    store: StoreBase, portfolio_ids: Sequence[str], held: Sequence[str], tracked: TrackedReplies | None = None
) -> list[Any]:
    """One reply per portfolio of ``portfolio_ids``, ``held`` being the token of the record the caller holds of
    each (:func:`engine.store.limits.held_token`, ``""`` for none): ``None`` (no limits stored),
    :data:`LIMITS_UNCHANGED`, ``[version, rev, json]`` (raw bytes; ``rev``, ``json`` None when missing) or the
    Redis error of that portfolio's key (a ``redis.ResponseError``).
    ``tracked`` (from :func:`tracked_limits`, kept by the caller): only the records written since its last read
    are read (engine/store/tracking.py)."""
    if len(held) != len(portfolio_ids):
        raise ValueError("one held token per portfolio")
    keys = [_limits_key(pid) for pid in portfolio_ids]
    if not keys:
        return []
    replies = tracked.read(store.client, keys, held) if tracked is not None else None
    if replies is not None:
        return replies
    if not is_cluster(store.client):
        reply: list[Any] = store._eval(None, _READ_LIMITS_LUA, keys, list(held))
        return reply
    calls = [([key], [version]) for key, version in zip(keys, held, strict=True)]
    return [r if isinstance(r, Exception) else r[0] for r in pipelined_scripts(store.client, _READ_LIMITS_LUA, calls)]


def tracked_limits() -> TrackedReplies:
    """What a caller of :func:`read_limits_batch` keeps between reads to read only the limits written since."""
    return TrackedReplies(_READ_LIMITS_LUA)
