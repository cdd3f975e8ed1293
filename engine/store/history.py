"""Bounded history of the monitor's snapshots: full resolution for a short recent window, then downsampled
tiers of fixed size, like a time-series database.

Layout (keys in :mod:`engine.store.keys`, rows in :class:`engine.store.codec.RowLayout`)::

    pf:{<id>}:history               stream   every snapshot (one packed float64 row in field ``p``), trimmed
                                             to ``history.raw_seconds`` of data time and ``raw_max_points``
    pf:{<id>}:history_tier:<ms>     string   one tier: a 16-byte header (the first entry time written in the
                                             newest bucket, and the oldest entry time ever written, ms,
                                             float64) then ``slots`` rows of :data:`TIER_LAYOUT`, bucket ``b``
                                             (entry ms // resolution ms) in slot ``b % slots``

A tier of resolution ``r`` and retention ``R`` has ``slots = R / r + 1`` rows: the newest bucket and every bucket
starting ``R`` or less before it (a bucket starting exactly at the cutoff is kept, one a bucket older is
gone). Its memory is fixed when it is first written (the whole ring at once), so the history of a portfolio
never grows with time: 30,964 rows of 136 bytes (4.2 MB) for the default tiers, plus the short stream.
Retention runs in the data's time (the entry time the monitor passes, from its injected clock or a replay's
bars): a ring's slot is overwritten when a bucket one lap later is written, and readers drop rows more than
``R`` older than the header's newest bucket. The header changes only when a newer bucket opens (or an older
entry comes): readers use its newest time only to find the newest bucket, and the monitor then writes one
row a tick, not a row and a header.

Every write updates the open bucket of every tier in the same Lua script as the snapshot and the stream entry
(one round trip, foldable into the monitor's MULTI), merging by the aggregation of each column
(:data:`HISTORY_COLUMNS`): the newest value for levels (equity, P&L, exposures), the maximum for losses and
loads (VaR, CVaR, stressed VaR, utilization, leverage, concentration, data age) and ``equity_high``, the minimum
for drawdowns, the margin level and ``equity_low``. A breach inside a bucket therefore survives downsampling.
Merges are order-insensitive (``last`` compares entry times), so a tick written twice or late leaves the same row.

Daily / weekly peaks and drawdowns (``pf:{id}:peaks``) and position excursions are kept exactly by
engine/store/monitoring.py, never derived from these tiers.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from engine.errors import CorruptDataError
from engine.settings import HistoryConfig, HistoryTier
from engine.store.base import Conn, StoreBase
from engine.store.codec import (
    RowLayout,
    decode_float,
    decode_int,
    decode_rows,
    decode_str,
    encode_row,
    encode_snapshot,
    row_points,
)
from engine.store.keys import PortfolioKeys
from engine.store.slots import is_cluster

Aggregation = Literal["last", "min", "max"]

OWNER_FIELD = "owner"
"""The field of ``pf:{id}:peaks`` naming the writer whose in-memory copy of the portfolio's peaks, excursions and
open history buckets matches the store (engine/store/tick_state.py)."""


def foreign_stamp() -> str:
    """A fresh ``owner`` stamp for a write merged in Redis (the per-portfolio scripts): no in-memory copy
    matches it, so a vectorised monitor loads the portfolio again."""
    return "merged:" + uuid.uuid4().hex


@dataclass(frozen=True)
class HistoryColumn:
    """One metric of a history point: its dotted name (as in a snapshot and the alert rules), how a bucket
    merges it, and whether a downsampled row keeps it as float64 (``wide``) or float32."""

    name: str
    aggregation: Aggregation
    wide: bool = False


HISTORY_COLUMNS: tuple[HistoryColumn, ...] = (
    HistoryColumn("ts", "last", wide=True),
    HistoryColumn("version", "last", wide=True),
    HistoryColumn("market_ts", "last", wide=True),
    HistoryColumn("equity", "last", wide=True),
    HistoryColumn("equity_low", "min", wide=True),
    HistoryColumn("equity_high", "max", wide=True),
    HistoryColumn("cash", "last"),
    HistoryColumn("market_value", "last"),
    HistoryColumn("gross_exposure", "last"),
    HistoryColumn("net_exposure", "last"),
    HistoryColumn("leverage", "max"),
    HistoryColumn("pnl.unrealized", "last"),
    HistoryColumn("pnl.realized", "last"),
    HistoryColumn("pnl.daily", "last"),
    HistoryColumn("pnl.total", "last"),
    HistoryColumn("var.var95", "max"),
    HistoryColumn("var.var99", "max"),
    HistoryColumn("var.cvar95", "max"),
    HistoryColumn("var.cvar99", "max"),
    HistoryColumn("var.stressed_var99", "max"),
    HistoryColumn("var.utilization", "max"),
    HistoryColumn("drawdown.daily", "min"),
    HistoryColumn("drawdown.weekly", "min"),
    HistoryColumn("drawdown.max", "min"),
    HistoryColumn("concentration.hhi", "max"),
    HistoryColumn("concentration.largest_share", "max"),
    HistoryColumn("margin.level", "min"),
    HistoryColumn("data.market_age_seconds", "max"),
)
"""The one table of the history: every metric kept, in row order, with its aggregation per bucket and its width
in a downsampled row. ``last`` is the value of the bucket's latest point (by entry time; of two at the same time,
the one written later), ``None`` if that point had none; ``min`` / ``max`` ignore missing values. ``ts`` first:
the entry time, which orders ``last``.

``equity_low`` / ``equity_high`` are the lowest and highest equity of the bucket's points (a full-resolution point
carries its equity in both): a fall and recovery inside one bucket, which its last ``equity`` hides, stays in them
(the maximum drawdown of a downsampled window, logic/performance.py). Wide like ``equity``, so a drawdown
computed from them is exact (float32 would be off by up to 6e-8 relative)."""

RAW_COLUMNS: tuple[HistoryColumn, ...] = tuple(
    c for c in HISTORY_COLUMNS if c.name not in ("equity_low", "equity_high")
)
"""The columns a full-resolution point stores: all but ``equity_low`` / ``equity_high``, which are its ``equity``
(filled in when read, and when merged into a tier). They are also the columns of a tier row written before the
two existed (a 120-byte row, :data:`LEGACY_TIER_LAYOUT`): readers still read such a ring (both extremes the row's
``equity``, all it knows), and a writer converts it in place (``UPGRADE_RING_LUA``) rather than starting it
empty. The stream's rows did not change."""

HISTORY_FIELDS: tuple[str, ...] = tuple(c.name for c in HISTORY_COLUMNS)
"""The metric names of a history point, in row order."""
RAW_LAYOUT = RowLayout(tuple(c.name for c in RAW_COLUMNS), tuple(True for _ in RAW_COLUMNS))
"""A full-resolution point (the stream): every column of :data:`RAW_COLUMNS`, float64."""
TIER_LAYOUT = RowLayout(HISTORY_FIELDS, tuple(c.wide for c in HISTORY_COLUMNS))
"""A downsampled bucket: float64 for times, the version and equity, float32 (7 significant digits) otherwise."""
INTEGER_FIELDS = frozenset({"version"})
POINT_LAYOUT = RowLayout(HISTORY_FIELDS, tuple(True for _ in HISTORY_COLUMNS))
"""A full-resolution point as read (:meth:`HistoryStore.read_history`): every column, float64."""
LEGACY_TIER_LAYOUT = RowLayout(RAW_LAYOUT.names, tuple(c.wide for c in RAW_COLUMNS))
"""A downsampled bucket written before ``equity_low`` / ``equity_high`` (read, and converted, as described in
:data:`RAW_COLUMNS`)."""
_EQUITY_BAND = ("equity_low", "equity_high")
_AGG_CODES = "".join({"last": "l", "min": "n", "max": "x"}[c.aggregation] for c in HISTORY_COLUMNS)
_HEADER_BYTES = 16
_RAW_FIELD = b"p"


def upgrade_rows(rows: npt.NDArray[np.void], layout: RowLayout) -> npt.NDArray[np.void]:
    """Rows without the equity band (:data:`RAW_LAYOUT`, :data:`LEGACY_TIER_LAYOUT`) as rows of ``layout``
    (:data:`TIER_LAYOUT`, or any layout of :data:`HISTORY_FIELDS`): every column copied, ``equity_low`` and
    ``equity_high`` the row's ``equity`` (exactly: both are as wide as it)."""
    out = np.zeros(len(rows), dtype=layout.dtype)
    for name in layout.names:
        out[name] = rows["equity" if name in _EQUITY_BAND else name]
    return out


def _upgrade_segments() -> list[tuple[int, int]]:
    """The byte ranges (from, to exclusive) of a :data:`LEGACY_TIER_LAYOUT` row that, end to end, make the same row
    in :data:`TIER_LAYOUT` (:func:`upgrade_rows` on the bytes, for the Lua scripts)."""
    at, where = 0, {}
    for column in RAW_COLUMNS:
        width = 8 if column.wide else 4
        where[column.name] = (at, at + width)
        at += width
    segments: list[tuple[int, int]] = []
    for column in HISTORY_COLUMNS:
        start, end = where["equity" if column.name in _EQUITY_BAND else column.name]
        if segments and segments[-1][1] == start:
            segments[-1] = (segments[-1][0], end)
        else:
            segments.append((start, end))
    return segments


_BAND_LUA = "\n".join(
    f"table.insert(new, {HISTORY_FIELDS.index(n) + 1}, new[{HISTORY_FIELDS.index('equity') + 1}])" for n in _EQUITY_BAND
)
"""Lua: a :data:`RAW_LAYOUT` point unpacked (``new``) made a row of :data:`HISTORY_FIELDS`, both extremes its
equity (the band's columns in increasing order: each insert shifts the later ones)."""

def _upgrade_ring_lua() -> str:
    template = """
-- upgrade_ring(key, ring size, current length): a ring written before equity_low / equity_high (its rows of the
-- legacy layout, the same slots) rewritten in place in the current layout, both extremes the row's equity;
-- returns the ring's length now (another length is left as it is: the caller recreates it).
local function upgrade_ring(key, size, len)
  local slots = (size - 16) / %(row)d
  if len ~= 16 + slots * %(legacy)d then return len end
  local blob = redis.call('GET', key)
  local out = {string.sub(blob, 1, 16)}
  for s = 0, slots - 1 do
    local at = 16 + s * %(legacy)d
    out[#out + 1] = %(concat)s
  end
  redis.call('SET', key, table.concat(out))
  return size
end
"""
    segments = " .. ".join(f"string.sub(blob, at + {a + 1}, at + {b})" for a, b in _upgrade_segments())
    return template % {"row": TIER_LAYOUT.size, "legacy": LEGACY_TIER_LAYOUT.size, "concat": segments}  # noqa: UP031


UPGRADE_RING_LUA = _upgrade_ring_lua()
"""The Lua function both tier writes define (``HistoryStore.record_snapshot`` and engine/store/tick_state.py):
a ring of the legacy layout is converted, not started empty, so the history written before the upgrade stays."""


APPEND_POINT_LUA = """
-- append_point(snapshot key, stream key, version, snapshot JSON, entry ms, oldest ms kept, stream cap, row[,
-- mode]): the snapshot is replaced unless the stored one has a higher version (mode 's': replaced, 'k': kept,
-- the caller knows the stored version); the point is appended with id <ms>-0, or the stream's last id plus one
-- when that is not greater, unless the stream's last entry is this point in this ms (the same script re-sent
-- after its reply was lost: it committed); the stream is trimmed to the oldest ms kept. Returns the entry id.
local function append_point(snapshot_key, stream_key, version, json, ms, minid, cap, row, mode)
  if mode == 's' then
    redis.call('SET', snapshot_key, json)
  elseif mode ~= 'k' then
    local current = redis.call('GET', snapshot_key)
    local stored = current and tonumber(string.match(current, '"version":(%-?%d+)'))
    if not stored or tonumber(version) >= stored then redis.call('SET', snapshot_key, json) end
  end
  local id = ms .. '-0'
  local added = redis.pcall('XADD', stream_key, 'MAXLEN', '~', cap, id, 'p', row)
  if type(added) == 'table' and added.err then
    local newest = redis.call('XREVRANGE', stream_key, '+', '-', 'COUNT', 1)[1]
    if newest and newest[2][2] == row and string.match(newest[1], '^(%d+)') == tostring(ms) then
      return newest[1]  -- this very point, sent again by a client whose first reply was lost: not twice
    end
    local info = redis.call('XINFO', 'STREAM', stream_key)
    local last = '0-0'
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then last = info[i + 1] end
    end
    local lms, seq = string.match(last, '(%d+)-(%d+)')
    id = lms .. '-' .. string.format('%d', tonumber(seq) + 1)
    redis.call('XADD', stream_key, 'MAXLEN', '~', cap, id, 'p', row)
  end
  redis.call('XTRIM', stream_key, 'MINID', minid)
  return id
end
"""
"""The Lua function both snapshot writes define (``HistoryStore.record_snapshot`` and the vectorised monitor's
script in engine/store/tick_state.py): one rule for replacing the latest snapshot and appending its point."""

NO_VERSION = np.iinfo(np.int64).min
"""A portfolio without a stored snapshot, or whose snapshot has no readable version: any snapshot replaces it."""
_VERSION = re.compile(rb'"version":(-?[0-9]+)')


def stored_version(raw: bytes | None) -> int:
    """The version of a stored snapshot as ``append_point`` reads it (the first ``"version":<integer>`` in it),
    or :data:`NO_VERSION`."""
    found = _VERSION.search(raw) if isinstance(raw, bytes) else None
    if found is None:
        return int(NO_VERSION)
    return min(max(int(found.group(1)), int(NO_VERSION) + 1), int(np.iinfo(np.int64).max))


SIZE_RING_LUA = """
-- size_ring(key, size, len): the ring at its size, from its length now: one of the legacy layout converted in
-- place (upgrade_ring: its rows kept), one of another length (new, or its tier reconfigured) recreated
-- zero-filled by Redis itself (a tiny command to propagate, not the whole ring).
local function size_ring(key, size, len)
  len = upgrade_ring(key, size, len)
  if len ~= size then
    if len > 0 then redis.call('DEL', key) end
    redis.call('SETRANGE', key, size - 1, '\\0')
  end
end
"""
"""The one rule that brings a ring to its size, for the vectorised monitor's lane script and its pre-step
(:func:`size_rings`), which must leave the same bytes."""

WRITE_LUA_PRELUDE = APPEND_POINT_LUA + UPGRADE_RING_LUA + SIZE_RING_LUA
"""The Lua functions the two snapshot writes define."""

SIZE_RINGS_LUA = UPGRADE_RING_LUA + SIZE_RING_LUA + """
for i, key in ipairs(KEYS) do  -- a key of another type is left alone: the tick refuses its portfolio
  local len = redis.pcall('STRLEN', key)
  if type(len) == 'number' then size_ring(key, tonumber(ARGV[i]), len) end
end
return #KEYS
"""
"""The pre-step of the vectorised monitor's lane write (:func:`size_rings`): KEYS the rings, ARGV their sizes."""

RING_BUDGET_BYTES = 32 << 20
"""The most a :func:`size_rings` call allocates (bytes, :func:`ring_cost`; 7 portfolios of the default tiers):
about 20 ms of Redis' one thread, so a pre-trade check queued behind it waits that long at worst, not the 0.7 s
(250 portfolios) a lane's new rings took in its EXEC."""
LEGACY_RING_COST = 8
"""A legacy ring's conversion (``upgrade_ring``: the ring read into Lua, cut and joined row by row) costs about
this many times a zero-filled ring of its size (measured: 17 ms against 2.2 ms for 3.7 MB of rings)."""


def ring_cost(length: int, size: int, legacy_size: int) -> int:
    """What bringing a ring of ``length`` bytes to ``size`` costs against :data:`RING_BUDGET_BYTES`: nothing at its
    size, a weighted conversion for a legacy one, else its size (created zero-filled; an old one of another size
    is freed)."""
    if length == size:
        return 0
    return LEGACY_RING_COST * size if length == legacy_size else size


def size_rings(client: Any, portfolios: Sequence[Sequence[tuple[str, int, int]]], budget: int | None = None) -> int:
    """Bring each portfolio's rings (key, size, :func:`ring_cost`) to their size outside any transaction, by
    ``size_ring`` as the lane script would: whole portfolios per script call, sequential calls of at most
    ``budget`` (default :data:`RING_BUDGET_BYTES`; a portfolio costing more goes alone), one portfolio per call
    on a Redis Cluster (one slot a script). Redis serves other clients between two calls, so onboarding a lane
    of portfolios, or a tier reconfiguration, never holds it for the whole lane. Returns the number of calls."""
    runner, cluster = StoreBase(client), is_cluster(client)
    budget = RING_BUDGET_BYTES if budget is None else budget
    calls, spent = 0, 0
    keys: list[str] = []
    sizes: list[int] = []
    for rings in portfolios:
        cost = sum(c for _, _, c in rings)
        if keys and (cluster or spent + cost > budget):
            runner._eval(None, SIZE_RINGS_LUA, keys, sizes)
            calls, keys, sizes, spent = calls + 1, [], [], 0
        keys += [k for k, _, _ in rings]
        sizes += [s for _, s, _ in rings]
        spent += cost
    if keys:
        runner._eval(None, SIZE_RINGS_LUA, keys, sizes)
        calls += 1
    return calls


def tier_resolution_ms(tier: HistoryTier) -> int:
    return round(tier.resolution_seconds * 1000.0)


def tier_slots(tier: HistoryTier) -> int:
    """Buckets a tier holds: the newest one and every one starting ``retention_seconds`` before it or later (a
    bucket starting exactly at the cutoff is kept)."""
    return round(tier.retention_seconds / tier.resolution_seconds) + 1


def tier_bytes(tier: HistoryTier) -> int:
    """The size of a tier's ring in bytes: header plus one row per slot (what Redis holds, allocator aside)."""
    return _HEADER_BYTES + tier_slots(tier) * TIER_LAYOUT.size


def legacy_tier_bytes(tier: HistoryTier) -> int:
    """The size of a tier's ring of :data:`LEGACY_TIER_LAYOUT` rows (written before ``equity_low`` / ``_high``)."""
    return _HEADER_BYTES + tier_slots(tier) * LEGACY_TIER_LAYOUT.size


@dataclass(frozen=True)
class HistoryWindow:
    """Points of a history window, oldest first, and where they come from."""

    points: list[dict[str, Any]]
    resolution_seconds: float | None
    """The bucket length of the tier read (after any merge of buckets), None for the full-resolution stream."""


class HistoryStore(StoreBase):
    """The latest snapshot, its full-resolution history and the downsampled tiers."""

    # KEYS[1] = pf:{id}:snapshot (string: snapshot JSON), KEYS[2] = pf:{id}:history (stream),
    # KEYS[3..] = pf:{id}:history_tier:<ms>, one per tier (string: header + ring of packed rows), then last
    # pf:{id}:peaks, whose ``owner`` stamp becomes the last ARGV (engine/store/tick_state.py)
    # ARGV[1] = snapshot version, ARGV[2] = snapshot JSON, ARGV[3] = entry time (ms),
    # ARGV[4] = oldest stream entry time kept (ms; XTRIM MINID, exact), ARGV[5] = stream cap (MAXLEN ~),
    # ARGV[6] = the point (one RAW_LAYOUT row: its equity_low / equity_high are its equity), ARGV[7] = its struct
    # format, ARGV[8] = a tier row's struct
    # format, ARGV[9] = aggregation per column ('l' last, 'n' min, 'x' max), ARGV[10] = tier row size (bytes),
    # ARGV[11..] = resolution (ms) and slots of each tier, in KEYS order.
    # The latest snapshot is replaced unless the stored one has a higher version (two monitors may finish
    # ticks out of order; the latest snapshot never goes back). The entry id is <ms>-0, or the stream's last
    # id plus one when that is not greater (several ticks in one millisecond, or a late tick): every call
    # appends exactly one point. A tier of the legacy layout (LEGACY_TIER_LAYOUT, same slots) is converted in
    # place (upgrade_ring); one whose string is not its ring's size otherwise (new, or its configuration
    # changed) starts empty; a point older than a tier's retention leaves that tier alone. Returns the entry id.
    _RECORD_LUA = WRITE_LUA_PRELUDE + """
local id = append_point(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
redis.call('HSET', KEYS[#KEYS], 'owner', ARGV[#ARGV])
if #KEYS < 4 then return id end
local ms = tonumber(ARGV[3])
local new = {struct.unpack(ARGV[7], ARGV[6])}
%(band)s
local fmt, agg, rowlen = ARGV[8], ARGV[9], tonumber(ARGV[10])
local ncol = #agg
local last, high, low = {}, {}, {}
for c = 1, ncol do
  local a = string.sub(agg, c, c)
  if a == 'l' then last[#last + 1] = c elseif a == 'x' then high[#high + 1] = c else low[#low + 1] = c end
end
local fresh = struct.pack(fmt, unpack(new, 1, ncol))
for k = 3, #KEYS - 1 do
  local key = KEYS[k]
  local res, slots = tonumber(ARGV[9 + 2 * (k - 2)]), tonumber(ARGV[10 + 2 * (k - 2)])
  local size = 16 + slots * rowlen
  local len = upgrade_ring(key, size, redis.call('STRLEN', key))
  if len ~= size then  -- zero-filled by Redis itself: a tiny command to propagate, not the whole ring
    if len > 0 then redis.call('DEL', key) end
    redis.call('SETRANGE', key, size - 1, '\0')
  end
  local b = math.floor(ms / res)
  local newest, first = struct.unpack('<dd', redis.call('GETRANGE', key, 0, 15))
  if newest == 0 or b > math.floor(newest / res) - slots then
    local off = 16 + (b % slots) * rowlen
    local raw = redis.call('GETRANGE', key, off, off + rowlen - 1)
    local old_ts = struct.unpack('<d', raw)
    local packed = fresh
    if old_ts > 0 and math.floor(math.floor(old_ts * 1000) / res) == b then
      local row = {struct.unpack(fmt, raw)}
      if new[1] >= row[1] then
        for _, c in ipairs(last) do row[c] = new[c] end
      end
      for _, c in ipairs(high) do
        local v, o = new[c], row[c]
        if v == v and (o ~= o or v > o) then row[c] = v end
      end
      for _, c in ipairs(low) do
        local v, o = new[c], row[c]
        if v == v and (o ~= o or v < o) then row[c] = v end
      end
      packed = struct.pack(fmt, unpack(row, 1, ncol))
    end
    redis.call('SETRANGE', key, off, packed)
    local opened = b > math.floor(newest / res)  -- a newer bucket: its first entry time is the newest time
    if opened or first == 0 or ms < first then  -- the header in one write
      if opened then newest = ms end
      if first == 0 or ms < first then first = ms end
      redis.call('SETRANGE', key, 0, struct.pack('<dd', newest, first))
    end
  end
end
return id
""".replace("%(band)s", _BAND_LUA)

    def record_snapshot(
        self,
        portfolio_id: str,
        snapshot: Mapping[str, Any],
        point: Mapping[str, float | int | None],
        *,
        ts: float,
        retention_seconds: float,
        max_points: int,
        pipe: Conn = None,
        tiers: Sequence[HistoryTier] = (),
    ) -> str | None:
        """Write the latest snapshot (unless a newer version is stored), append one full-resolution point at
        ``ts`` (trimming points older than ``retention_seconds`` and beyond ``max_points``) and merge it into
        the open bucket of every tier of ``tiers``; one Lua script.

        ``point`` is flat (dotted metric names of :data:`HISTORY_FIELDS`, numbers or ``None``; its ``ts`` is
        the entry time ``ts``; its ``equity_low`` / ``equity_high`` are not read: a full-resolution point's are
        its ``equity``, :data:`RAW_COLUMNS`); see :meth:`read_history`. Returns the history entry id, or ``None`` on a
        pipeline.
        """
        keys = PortfolioKeys(portfolio_id)
        ms = int(ts * 1000)
        min_ms = max(0, int((ts - retention_seconds) * 1000))
        row = encode_row(RAW_LAYOUT, {**point, "ts": ts})
        text = encode_snapshot(snapshot)
        args: list[Any] = [
            int(snapshot["version"]), text, ms, min_ms, int(max_points), row,
            RAW_LAYOUT.struct_format, TIER_LAYOUT.struct_format, _AGG_CODES, TIER_LAYOUT.size,
        ]  # fmt: skip
        for tier in tiers:
            args += [tier_resolution_ms(tier), tier_slots(tier)]
        tier_keys = [keys.history_tier(tier_resolution_ms(t)) for t in tiers]
        args.append(foreign_stamp())
        reply = self._eval(pipe, self._RECORD_LUA, [keys.snapshot, keys.history, *tier_keys, keys.peaks], args)
        return None if pipe is not None else decode_str(reply, key=keys.history)

    def read_history(
        self,
        portfolio_id: str,
        start_ts: float | None = None,
        end_ts: float | None = None,
        count: int | None = None,
        newest_first: bool = False,
        conn: Conn = None,
    ) -> list[dict[str, Any]]:
        """Full-resolution points between two epoch times (inclusive): dicts of :data:`HISTORY_FIELDS`
        (``ts``, ``version``, ``equity``, ``var.var95``, ...; numbers, ``None`` where the metric had no value)
        plus the entry ``id``. Entry ids are in write order, which is time order except for a late tick."""
        key = PortfolioKeys(portfolio_id).history
        lo = "-" if start_ts is None else str(max(0, int(start_ts * 1000)))
        hi = "+" if end_ts is None else str(max(0, int(end_ts * 1000)))
        c = self._conn(conn)
        entries: Any = c.xrevrange(key, hi, lo, count=count) if newest_first else c.xrange(key, lo, hi, count=count)
        out = []
        for entry_id, fields in entries:
            point: dict[str, Any] = {"id": decode_str(entry_id, key=key)}
            if _RAW_FIELD in fields:
                rows = decode_rows(RAW_LAYOUT, fields[_RAW_FIELD], key=f"{key}.{point['id']}")
                if len(rows) != 1:
                    raise CorruptDataError(f"{key}.{point['id']}: expected one row, got {len(rows)}")
                point.update(row_points(POINT_LAYOUT, upgrade_rows(rows, POINT_LAYOUT), INTEGER_FIELDS)[0])
            else:  # an entry of the field-per-metric format written before the packed rows
                point.update(_legacy_point(fields, key))
            out.append(point)
        return out

    def history_length(self, portfolio_id: str, conn: Conn = None) -> int:
        return int(self._conn(conn).xlen(PortfolioKeys(portfolio_id).history))

    def read_history_tier(
        self,
        portfolio_id: str,
        tier: HistoryTier,
        start_ts: float | None = None,
        end_ts: float | None = None,
        conn: Conn = None,
    ) -> list[dict[str, Any]]:
        """The buckets of one tier whose latest point lies between two epoch times (inclusive), oldest first:
        dicts of :data:`HISTORY_FIELDS` (``ts`` = the bucket's latest entry time), ``None`` where no point of
        the bucket had the metric. One read of the tier's ring."""
        rows = self.read_tier_rows(portfolio_id, tier, conn)
        if start_ts is not None:
            rows = rows[rows["ts"] >= start_ts]
        if end_ts is not None:
            rows = rows[rows["ts"] <= end_ts]
        return row_points(TIER_LAYOUT, rows, INTEGER_FIELDS)

    def read_tier_rows(self, portfolio_id: str, tier: HistoryTier, conn: Conn = None) -> npt.NDArray[np.void]:
        """The kept buckets of one tier as :data:`TIER_LAYOUT` rows in time order (one GET); a ring of the wrong
        size, a bucket outside its slot or newer than the ring's newest time is corrupt."""
        key = PortfolioKeys(portfolio_id).history_tier(tier_resolution_ms(tier))
        blob = self._conn(conn).get(key)
        if blob is None:
            return np.zeros(0, dtype=TIER_LAYOUT.dtype)
        if len(blob) == legacy_tier_bytes(tier):  # written before equity_low / _high: read as it is
            rows = upgrade_rows(decode_rows(LEGACY_TIER_LAYOUT, blob[_HEADER_BYTES:], key=key), TIER_LAYOUT)
        elif len(blob) != tier_bytes(tier):
            raise CorruptDataError(f"{key}: {len(blob)} bytes, a ring of {tier_slots(tier)} rows is {tier_bytes(tier)}")
        else:
            rows = decode_rows(TIER_LAYOUT, blob[_HEADER_BYTES:], key=key)
        newest = float(np.frombuffer(blob, dtype="<f8", count=1)[0])
        if newest != newest or newest < 0:
            raise CorruptDataError(f"{key}: bad newest time {newest}")
        ts = rows["ts"]
        if np.isinf(ts).any() or (ts < 0).any():
            raise CorruptDataError(f"{key}: a bucket time is not a finite time")
        used = np.flatnonzero(ts > 0)  # all-zero slots were never written; NaN compares False
        bucket = np.floor(np.floor(ts[used] * 1000.0) / tier_resolution_ms(tier))
        if (bucket % tier_slots(tier) != used).any():
            raise CorruptDataError(f"{key}: a bucket is not in its slot")
        newest_bucket = np.floor(newest / tier_resolution_ms(tier))
        if (bucket > newest_bucket).any():
            raise CorruptDataError(f"{key}: a bucket is newer than the ring's newest time")
        kept = used[bucket > newest_bucket - tier_slots(tier)]
        out = rows[kept]
        return out[np.argsort(out["ts"], kind="stable")]

    def read_history_window(
        self,
        portfolio_id: str,
        start_ts: float,
        end_ts: float,
        *,
        history: HistoryConfig,
        max_points: int,
        conn: Conn = None,
    ) -> HistoryWindow:
        """The history between two epoch times from the source that fits the window, in at most three commands
        (two round trips) whatever its length: the full-resolution stream when it holds the whole window
        (``history.raw_seconds``, or every point since the start) in at most ``max_points`` points; else the
        finest tier that covers the window in at most ``max_points`` buckets; else the coarsest tier that covers
        it (the longest-kept one when none does) with its buckets merged ``k`` at a time (:func:`merge_buckets`,
        the same aggregations) down to ``max_points``."""
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        window = max(0.0, end_ts - start_ts)
        tiers = history.tiers
        raw: list[dict[str, Any]] = []
        if not tiers or window <= history.raw_seconds or self._raw_reaches(portfolio_id, start_ts, tiers, conn):
            raw = self.read_history(portfolio_id, start_ts, end_ts, count=max_points + 1, newest_first=True,
                                    conn=conn)  # fmt: skip
            if len(raw) <= max_points or not tiers:
                return HistoryWindow(raw[:max_points][::-1], None)
        covering = [t for t in tiers if t.retention_seconds >= window]
        fitting = [t for t in covering if window / t.resolution_seconds <= max_points]
        tier = fitting[0] if fitting else (covering[-1] if covering else tiers[-1])
        rows = self.read_tier_rows(portfolio_id, tier, conn)
        rows = rows[(rows["ts"] >= start_ts) & (rows["ts"] <= end_ts)]
        if len(rows) == 0:  # history written without tiers: the newest full-resolution points
            raw = raw or self.read_history(portfolio_id, start_ts, end_ts, count=max_points, newest_first=True,
                                           conn=conn)  # fmt: skip
            return HistoryWindow(raw[:max_points][::-1], None)
        factor = 1
        if len(rows) > max_points:
            spanned = int(np.ceil(window / tier.resolution_seconds)) + 1
            factor = -(-spanned // max(1, max_points - 1))  # k-aligned groups: at most max_points of them
            rows = merge_buckets(rows, tier_resolution_ms(tier) * factor)
        return HistoryWindow(row_points(TIER_LAYOUT, rows, INTEGER_FIELDS), tier.resolution_seconds * factor)

    def _raw_reaches(self, portfolio_id: str, start_ts: float, tiers: Sequence[HistoryTier], conn: Conn) -> bool:
        """Whether the full-resolution stream holds every point since ``start_ts``: its first entry is that old,
        or it still holds the first point ever written (the oldest time in a tier's header; no tier written:
        the stream is all there is). One round trip."""
        keys = PortfolioKeys(portfolio_id)
        tier_key = keys.history_tier(tier_resolution_ms(tiers[0]))
        if conn is None:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.xrange(keys.history, count=1)
                pipe.getrange(tier_key, 8, 15)
                first_entry, header = pipe.execute()
        else:
            first_entry, header = conn.xrange(keys.history, count=1), conn.getrange(tier_key, 8, 15)
        if not first_entry:
            return False
        first_ms = int(decode_str(first_entry[0][0], key=keys.history).split("-")[0])
        if first_ms <= start_ts * 1000 or not header:
            return True
        if len(header) != 8:
            raise CorruptDataError(f"{tier_key}: header truncated")
        return first_ms <= float(np.frombuffer(header, dtype="<f8")[0])


def merge_buckets(rows: npt.NDArray[np.void], resolution_ms: int) -> npt.NDArray[np.void]:
    """Rows of :data:`TIER_LAYOUT` (time order) merged into buckets of ``resolution_ms`` by the aggregation
    of each column (:data:`HISTORY_COLUMNS`): what the tier would hold at the coarser resolution."""
    if len(rows) == 0:
        return rows
    bucket = np.floor(np.floor(rows["ts"].astype(np.float64) * 1000.0) / resolution_ms)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(rows)]
    out = np.zeros(len(starts), dtype=rows.dtype)
    for column in HISTORY_COLUMNS:
        values = rows[column.name].astype(np.float64)
        merged = np.full(len(starts), np.nan)
        for i, (a, b) in enumerate(zip(starts, ends, strict=True)):
            if column.aggregation == "last":
                merged[i] = values[b - 1]
                continue
            chunk = values[a:b][~np.isnan(values[a:b])]
            if chunk.size:
                merged[i] = chunk.max() if column.aggregation == "max" else chunk.min()
        out[column.name] = merged
    return out


def _legacy_point(fields: Mapping[bytes, bytes], key: str) -> dict[str, Any]:
    point: dict[str, Any] = {}
    for raw_name, raw_value in fields.items():
        name = decode_str(raw_name, key=key)
        if raw_value == b"":
            point[name] = None
        elif name == "version":
            point[name] = decode_int(raw_value, key=f"{key}.version")
        else:
            point[name] = decode_float(raw_value, key=f"{key}.{name}")
    return point
