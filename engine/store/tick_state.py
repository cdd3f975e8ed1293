"""The vectorised monitor's per-portfolio state: equity peaks, position excursions and the open bucket of every
history tier, merged in memory for every portfolio at once and written with the snapshots by one Lua script per
range of portfolios (:meth:`TickState.write`).

The per-portfolio path (engine/store/monitoring.py ``update_peaks`` / ``update_marks`` and
engine/store/history.py ``record_snapshot``) merges each of these in Redis, one script per portfolio and per
structure: about 100 µs of Redis time each, 0.3 s a tick for a thousand portfolios. Here the merges are the same
arithmetic on arrays (one row per portfolio, one element per position) and Redis only stores the results:

- **Ownership.** The state of a portfolio is kept while this writer owns it: every write stamps the peaks hash
  with an ``owner`` stamp of its own (this writer's token and a count: new each write, so even a writer that holds
  the portfolio too tells any later write from the stamp it read); the per-portfolio path's scripts, a book sync's
  capital flow (``MonitoringStore.shift_peaks``) and a fill that closes or flips a position
  (engine/store/monitoring.py ``reset_mark``: it deletes that excursion) replace it with a fresh foreign stamp
  (engine/store/history.py ``foreign_stamp``), a replay's restart of the drawdowns deletes the hash. Before its
  clock and its read of the books, the monitor reads the stamps (:meth:`TickState.stale_rows`); a portfolio
  stamped by anyone else is loaded from the store again (:meth:`TickState.load`), so another monitor's or the
  reference path's merges are never lost, and the write (a script a lane; on a Redis Cluster, a portfolio)
  checks each portfolio's stamp again: one stamped by anyone since the read is not written at all (the others
  are), and the tick redoes it (no WATCH: a fill ending a position no longer aborts the 250 of its lane). Each
  peaks hash held in memory is checked every tick by the per-portfolio merge's rule (engine/store/tick_owners.py
  ``FAULTS_LUA``): a corrupt one, or a key of another type, is loaded, and the load refuses that portfolio
  (reported, not snapshot, its stored state left as it is; the others are written), as the per-portfolio path does.
- **Same results.** Peaks follow ``MonitoringStore._PEAKS_LUA`` and excursions ``_MARKS_LUA`` step for step
  (the same doubles: Redis' Lua numbers are IEEE doubles too); a tier bucket merges by
  :data:`engine.store.history.HISTORY_COLUMNS`' aggregations, its float32 columns rounded as ``struct.pack``
  rounds them, so the stored bytes are those the per-portfolio scripts would write (tests compare the two).
- **Late points.** A point dated at or after the newest entry of a tier merges with the open bucket held in
  memory (a newer bucket's slot holds a bucket one lap older: it starts afresh). A point dated before it (a
  late tick, a replay restarted earlier) may belong to a bucket the ring still holds: those portfolios' slots
  are read again first (:meth:`TickState.slots_needed`), and a tier whose retention the point is past is left
  alone, as the per-portfolio script does.

Layout: one row per portfolio in the tick's order (:meth:`TickState.align` remaps when the set changes); the
excursions are flat, one element per position in the books' order (``offsets``).
"""

from __future__ import annotations

import itertools
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from engine.errors import CorruptDataError, StoreError
from engine.settings import HistoryTier
from engine.store.base import Conn
from engine.store.codec import EXCURSION_DTYPE, decode_excursion, decode_float, decode_str
from engine.store.history import (
    HISTORY_COLUMNS,
    LEGACY_TIER_LAYOUT,
    NO_VERSION,
    OWNER_FIELD,
    RAW_LAYOUT,
    TIER_LAYOUT,
    WRITE_LUA_PRELUDE,
    legacy_tier_bytes,
    ring_cost,
    size_rings,
    stored_version,
    tier_bytes,
    tier_resolution_ms,
    tier_slots,
    upgrade_rows,
)
from engine.store.keys import PortfolioKeys
from engine.store.monitoring import PEAK_FIELDS, check_peaks
from engine.store.slots import is_cluster

Float64Array = npt.NDArray[np.float64]

_PEAK_FIELDS = (*PEAK_FIELDS, OWNER_FIELD)
_PEAK_COLUMNS = ("day_open", "day_peak", "week_peak", "max_peak", "max_dd", "last", "close")
"""The columns of :attr:`Merged.peaks` (``close``: NaN while none is known, and then not written)."""
_CHANGED_FIELDS = (*_PEAK_COLUMNS, "day", "week", OWNER_FIELD)
_FIELD_SETS = {
    c: tuple(f for i, f in enumerate(_CHANGED_FIELDS) if c >> i & 1) for c in range(1 << len(_CHANGED_FIELDS))
}
"""The peaks fields a write sets, by the bit mask of those it sets (:meth:`TickState._peak_fields`)."""
_ALL_FIELDS = (1 << len(_CHANGED_FIELDS)) - 1
_CLOSE_BIT = 1 << _CHANGED_FIELDS.index("close")
_OWNER_BIT = 1 << _CHANGED_FIELDS.index(OWNER_FIELD)
_LAST_ONLY = ("last", OWNER_FIELD)
_LAST_AND_CLOSE = ("last", "close", OWNER_FIELD)
_LAST_COLUMN = _PEAK_COLUMNS.index("last")
_CLOSE_COLUMN = _PEAK_COLUMNS.index("close")
_NPEAK = len(_PEAK_COLUMNS)
_WRITES = itertools.count(1)
"""Numbers the writes of this process: with a writer's token, a stamp no other write puts (lanes share a token)."""
_LAST = np.array([c.aggregation == "last" for c in HISTORY_COLUMNS])
_HIGH = np.array([c.aggregation == "max" for c in HISTORY_COLUMNS])
_LOW = np.array([c.aggregation == "min" for c in HISTORY_COLUMNS])
_NARROW = np.array([not c.wide for c in HISTORY_COLUMNS])
_NCOL = len(HISTORY_COLUMNS)
_RAW_INDEX = np.array([[c.name for c in HISTORY_COLUMNS].index(n) for n in RAW_LAYOUT.names])
"""The columns of a point the stream stores (RAW_LAYOUT: all but the equity band, which is the point's equity)."""

# KEYS: per portfolio, in order: snapshot, history, peaks, marks, then one ring per tier.
# ARGV[1] = tiers T, ARGV[2] = entry ms, ARGV[3] = oldest stream entry kept (ms, XTRIM MINID), ARGV[4] = stream
# cap (MAXLEN ~), ARGV[5] = a tier row's size (bytes), ARGV[6] = this write's owner stamp (one for every portfolio
# it writes), ARGV[7] = a history point's size (bytes, a RAW_LAYOUT row), then per tier its ring's size and the
# offset of the entry's bucket in it (every portfolio's point falls in the same bucket); then per portfolio:
#   the owner stamp its peaks hash held when the tick began ('' = none): a portfolio whose stamp is another now
#   (another writer touched it since: a fill that ended a position, a book sync, another monitor) is written not
#   at all, and its place in the call (0-based) is returned, for the tick to redo it; one that holds this write's
#   stamp already was written by this very script (re-sent by the client after its reply was lost): not again;
#   the snapshot (codec.encode_snapshot; '' = none this tick: peaks and marks only);
#   a record (:data:`_COUNTS`, then bytes): n peaks pairs, n marks to set, n marks to delete (uint32 each); with
#   a snapshot, 's' (replace the stored one) or 'k' (keep it: of a higher version, which this writer knows, read
#   when it loaded the portfolio or written by it since), per tier one byte ('1' check the ring's size first
#   (loaded this tick), then write the row and the header, 'h' write both, '0' the row only (the header did not
#   change), '-' leave the tier alone: the point is past its retention), the history point, the T tier rows end
#   to end and the T 16-byte headers end to end; then the excursion records to set end to end (17 bytes each:
#   codec.EXCURSION_DTYPE) and their tickers joined by NUL (which no ticker holds);
#   the (field, value) pairs of the peaks hash (``last`` always, every field for a portfolio loaded this tick;
#   the owner stamp is ARGV[6]) and the tickers of the marks to delete.
# Three arguments a portfolio and its pairs, not one per part: Redis parses each argument into an object and then
# a Lua string, and at 1,000 portfolios that was about a tenth of its time a tick (22,000 arguments; 10,000 now).
# The history entry id is <ms>-0, or the stream's last id plus one when that is not greater (MonitoringStore /
# HistoryStore scripts' rules). A ring of the legacy layout is converted in place; one that is not its size
# otherwise (new, or reconfigured) is recreated zero-filled before its bucket is written (size_ring): a safety
# net, TickState.load sized them before the MULTI.
_APPLY_LUA = WRITE_LUA_PRELUDE + """
local ntier, ms, minid, cap, rowlen = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local stamp, rawlen = ARGV[6], tonumber(ARGV[7])
local sizes, offsets = {}, {}
-- the offsets stay strings: a Lua number passed to redis.call is formatted back into one (sprintf) every call
for t = 1, ntier do sizes[t] = tonumber(ARGV[6 + 2 * t]); offsets[t] = ARGV[7 + 2 * t] end
local a = 8 + 2 * ntier
local nkeys = 4 + ntier
local fixed = 1 + ntier + rawlen + ntier * (rowlen + 16)  -- a record's part written with a snapshot
local touched = {}
for p = 0, #KEYS / nkeys - 1 do
  local k = p * nkeys
  local held = redis.pcall('HGET', KEYS[k + 3], '""" + OWNER_FIELD + """')  -- an error: not a hash
  if type(held) ~= 'string' then held = '' end
  local expect, json, record = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local npeak, nset, ndel = struct.unpack('<I4I4I4', record)
  a = a + 3
  if held ~= expect then  -- touched since the tick began: nothing of it written
    if held ~= stamp then touched[#touched + 1] = p end  -- own stamp: this script, re-sent, ran already (done)
    a = a + 2 * npeak + ndel
  else
    redis.call('HSET', KEYS[k + 3], '""" + OWNER_FIELD + """', stamp, unpack(ARGV, a, a + 2 * npeak - 1))
    a = a + 2 * npeak
    local point = 13  -- past the counts: the part written with a snapshot, then the excursions
    local at = json ~= '' and point + fixed or point
    if nset > 0 then
      local names, pairs = at + 17 * nset, {}
      for i = 0, nset - 1 do
        local z = string.find(record, '\0', names, true) or #record + 1
        pairs[#pairs + 1] = string.sub(record, names, z - 1)
        pairs[#pairs + 1] = string.sub(record, at + 17 * i, at + 17 * i + 16)
        names = z + 1
        if #pairs == 1000 or i == nset - 1 then  -- Lua's unpack has a stack limit
          redis.call('HSET', KEYS[k + 4], unpack(pairs))
          pairs = {}
        end
      end
    end
    if ndel > 0 then redis.call('HDEL', KEYS[k + 4], unpack(ARGV, a, a + ndel - 1)) end
    a = a + ndel
    if json ~= '' then
      local modes, raw = point + 1, point + 1 + ntier  -- the tier modes, the history point
      local rows, heads = raw + rawlen, raw + rawlen + ntier * rowlen
      append_point(KEYS[k + 1], KEYS[k + 2], '', json, ms, minid, cap, string.sub(record, raw, rows - 1),
                   string.sub(record, point, point))
      for t = 1, ntier do
        local key, mode = KEYS[k + 4 + t], string.byte(record, modes + t - 1)
        if mode == 49 then size_ring(key, sizes[t], redis.call('STRLEN', key)) end  -- '1'; sized already: size_rings
        if mode ~= 45 then  -- not '-'
          local r = rows + (t - 1) * rowlen
          redis.call('SETRANGE', key, offsets[t], string.sub(record, r, r + rowlen - 1))
          if mode ~= 48 then  -- not '0': the header too
            local h = heads + (t - 1) * 16
            redis.call('SETRANGE', key, '0', string.sub(record, h, h + 15))
          end
        end
      end
    end
  end
end
return touched
"""
_COUNTS = struct.Struct("<III")
"""The head of a portfolio's record in :data:`_APPLY_LUA`: its peaks pairs, marks to set and marks to delete."""


@dataclass
class Merged:
    """One tick's merged state, written in the monitor's MULTI and kept by :meth:`TickState.commit`."""

    day: list[str]
    week: list[str]
    peaks: Float64Array
    """P x 7: day_open, day_peak, week_peak, max_peak, max_dd, last, close (:data:`_PEAK_COLUMNS`)."""
    side: npt.NDArray[np.int8]
    """Per position: +1 / -1 with an excursion, 0 without (flat, or no usable price)."""
    mfe: Float64Array
    mae: Float64Array
    changed: npt.NDArray[np.bool_]
    """Excursions to write (new, or a new extreme); the others are stored as they are."""
    buckets: npt.NDArray[np.int64]
    """P x T: the bucket each tier's open row belongs to."""
    rows: Float64Array
    """P x T x columns: each tier's open bucket, float32 columns rounded."""
    headers: Float64Array
    """P x T x 2: each ring's newest and oldest entry times (ms)."""
    ms: int
    skip: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))
    """P x T: tiers a portfolio's point is too old for (past the ring's retention): not written."""
    replace: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    """Portfolios whose snapshot replaces the stored one (:meth:`TickState.prepare`)."""
    version: int = 0
    stamp: str = ""
    """The owner stamp this write puts on every peaks hash it writes (:meth:`TickState.prepare`: new each
    write, so another writer, even one holding the same portfolio, tells any write of it from the stamp it read)."""


@dataclass(frozen=True)
class Prepared:
    """A tick's merged state encoded for the writes (:meth:`TickState.prepare`)."""

    merged: Merged
    valid: list[bool]
    head: list[Any]
    """The script's arguments before the portfolios' (:data:`_APPLY_LUA`)."""
    fixed: bytes
    """Per portfolio, ``fixed_size`` bytes end to end: the part of its record written with a snapshot (the replace
    mode, the tier modes, the history point, the tier rows and headers: :data:`_APPLY_LUA`)."""
    fixed_size: int
    marks: npt.NDArray[np.intp]
    """The positions whose excursion is written (new, or a new extreme) or deleted (none any more), in order: the
    ones of a range of portfolios are contiguous (positions are laid out portfolio by portfolio)."""
    gone: npt.NDArray[np.bool_]
    """Of :attr:`marks`, those deleted."""
    peak_fields: list[tuple[str, ...]]
    """Per portfolio, the peaks hash fields its write sets (:meth:`TickState._peak_fields`)."""


@dataclass
class TickState:
    """Peaks, excursions and open tier buckets of the portfolios this writer owns (module docstring)."""

    tiers: Sequence[HistoryTier]
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    pids: list[str] = field(default_factory=list)
    tickers: list[tuple[str, ...]] = field(default_factory=list)
    """Each portfolio's positions (book order) the excursions are aligned with."""
    owned: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    day: list[str | None] = field(default_factory=list)
    week: list[str | None] = field(default_factory=list)
    peaks: Float64Array = field(default_factory=lambda: np.zeros((0, _NPEAK)))
    side: npt.NDArray[np.int8] = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    mfe: Float64Array = field(default_factory=lambda: np.zeros(0))
    mae: Float64Array = field(default_factory=lambda: np.zeros(0))
    stored: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    """Per position: its excursion is in the store (a write deletes it when the position has none)."""
    orphans: dict[str, set[str]] = field(default_factory=dict)
    """Stored excursions of tickers no longer in a portfolio's positions (the next write deletes them)."""
    buckets: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    rows: Float64Array = field(default_factory=lambda: np.zeros((0, 0, _NCOL)))
    headers: Float64Array = field(default_factory=lambda: np.zeros((0, 0, 2)))
    checked: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    """Rows loaded since their last write: the write checks their rings' sizes first."""
    stamps: list[bytes | None] = field(default_factory=list)
    """The owner stamp this writer last wrote on each portfolio's peaks hash (None: none): the row is this
    writer's while the hash holds it (:meth:`stale_rows`)."""
    versions: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """The version of each portfolio's stored snapshot (:data:`NO_VERSION`: none, or none readable), as loaded
    or written since: a snapshot is written unless that one is newer (``append_point``'s rule, kept here)."""

    def __post_init__(self) -> None:
        self._res = np.array([tier_resolution_ms(t) for t in self.tiers], dtype=np.int64)
        self._slots = np.array([tier_slots(t) for t in self.tiers], dtype=np.int64)
        self._sizes = [tier_bytes(t) for t in self.tiers]
        self._legacy_sizes = [legacy_tier_bytes(t) for t in self.tiers]
        self._flat: list[str] = []
        self._owner = np.zeros(0, dtype=np.intp)
        self._keys: dict[str, list[str]] = {}
        self._peaks: list[str] | None = None
        self._seen: list[bytes] = []

    # -- layout ----------------------------------------------------------------------------------------------
    def align(self, pids: Sequence[str], tickers: Sequence[tuple[str, ...]]) -> None:
        """Lay the state out for this tick's portfolios and positions; what moved keeps its values (a
        portfolio not seen before, or whose positions changed, keeps what it had per ticker)."""
        if list(pids) == self.pids and all(a is b or a == b for a, b in zip(tickers, self.tickers, strict=True)):
            return
        old = {pid: i for i, pid in enumerate(self.pids)}
        starts = np.concatenate(([0], np.cumsum([len(t) for t in self.tickers]))).astype(np.intp)
        count, ntier = len(pids), len(self.tiers)
        total = sum(len(t) for t in tickers)
        owned = np.zeros(count, dtype=bool)
        day: list[str | None] = [None] * count
        week: list[str | None] = [None] * count
        peaks = np.full((count, _NPEAK), np.nan)
        side, mfe, mae = np.zeros(total, dtype=np.int8), np.zeros(total), np.zeros(total)
        stored = np.zeros(total, dtype=bool)
        buckets = np.full((count, ntier), -1, dtype=np.int64)
        rows = np.full((count, ntier, _NCOL), np.nan)
        headers = np.zeros((count, ntier, 2))
        versions = np.full(count, NO_VERSION, dtype=np.int64)
        stamps: list[bytes | None] = [None] * count
        at = 0
        for p, (pid, names) in enumerate(zip(pids, tickers, strict=True)):
            i = old.get(pid)
            if i is not None:
                owned[p], day[p], week[p], stamps[p] = self.owned[i], self.day[i], self.week[i], self.stamps[i]
                peaks[p], buckets[p], versions[p] = self.peaks[i], self.buckets[i], self.versions[i]
                rows[p], headers[p] = self.rows[i], self.headers[i]
                before = {t: starts[i] + j for j, t in enumerate(self.tickers[i])}
                for j, t in enumerate(names):
                    k = before.pop(t, None)
                    if k is not None:
                        side[at + j], mfe[at + j], mae[at + j] = self.side[k], self.mfe[k], self.mae[k]
                        stored[at + j] = self.stored[k]
                gone = {t for t, k in before.items() if self.stored[k]}
                if gone:
                    self.orphans.setdefault(pid, set()).update(gone)
            at += len(names)
        self.pids, self.tickers, self.owned = list(pids), list(tickers), owned
        self.checked = ~owned
        self.day, self.week, self.peaks = day, week, peaks
        self.side, self.mfe, self.mae, self.stored = side, mfe, mae, stored
        self.buckets, self.rows, self.headers, self.versions = buckets, rows, headers, versions
        self.stamps = stamps
        self._flat = [t for names in self.tickers for t in names]
        self._owner = np.repeat(np.arange(count, dtype=np.intp), [len(t) for t in self.tickers])
        self._keys = {}
        self._peaks = None
        self._seen = []

    def offsets(self) -> npt.NDArray[np.intp]:
        return np.concatenate(([0], np.cumsum([len(t) for t in self.tickers]))).astype(np.intp)

    def slots_needed(self, ms: int) -> npt.NDArray[np.bool_]:
        """Rows whose ring slot for a point at ``ms`` must be read before merging: the point's bucket is not the
        one held in memory, yet not newer than the ring's newest bucket and within its retention (a late point;
        a newer bucket's slot holds a bucket one lap older, which a write replaces)."""
        if not self.tiers or not len(self.pids):
            return np.zeros(len(self.pids), dtype=bool)
        b = ms // self._res
        newest = np.floor(self.headers[:, :, 0] / self._res)
        held = (self.headers[:, :, 0] > 0) & (self.buckets != b) & (b <= newest) & (b > newest - self._slots)
        return held.any(axis=1)

    def drop(self) -> None:
        """Forget everything: the next tick loads every portfolio from the store."""
        self.owned[:] = False

    # -- ownership -------------------------------------------------------------------------------------------
    def peaks_keys(self) -> list[str]:
        if self._peaks is None or len(self._peaks) != len(self.pids):
            self._peaks = [PortfolioKeys(pid).peaks for pid in self.pids]
        return self._peaks

    def stale_rows(self, owners: Sequence[bytes | None]) -> npt.NDArray[np.bool_]:
        """Rows this state does not own any more (never loaded, or stamped by another writer), from the owner
        stamps of :meth:`peaks_keys` (engine/store/tick_owners.py ``read_owners``, read before the tick's clock
        and books). The write expects each peaks hash to hold the stamp read here still (:data:`_APPLY_LUA`)."""
        self._seen = [o if isinstance(o, bytes) else b"" for o in owners]
        return ~self.owned | np.array([o is None or o != s for o, s in zip(owners, self.stamps, strict=True)],
                                      dtype=bool)  # fmt: skip

    def load(self, rows: npt.NDArray[np.intp], ms: int, client: Any) -> dict[int, str]:
        """Read the stored peaks, excursions and open tier buckets of ``rows`` (one pipeline); returns the rows
        whose stored state is unusable (a corrupt record, a key of the wrong type) with the reason: they are not
        merged or written this tick, as the per-portfolio scripts fail for them."""
        errors: dict[int, str] = {}
        if rows.size == 0:
            return errors
        starts = self.offsets()
        pipe = client.pipeline(transaction=False)
        for p in rows.tolist():
            keys = PortfolioKeys(self.pids[p])
            pipe.get(keys.snapshot)
            pipe.hmget(keys.peaks, list(_PEAK_FIELDS))
            pipe.hgetall(keys.marks)
            for t, tier in enumerate(self.tiers):
                key = keys.history_tier(tier_resolution_ms(tier))
                offset = 16 + int((ms // self._res[t]) % self._slots[t]) * TIER_LAYOUT.size
                pipe.strlen(key)
                pipe.getrange(key, 0, 15)
                pipe.getrange(key, offset, offset + TIER_LAYOUT.size - 1)
        replies = pipe.execute(raise_on_error=False)
        per = 3 + 3 * len(self.tiers)
        lengths = [[r if isinstance(r := replies[n * per + 3 + 3 * t], int) else -1 for t in range(len(self.tiers))]
                   for n in range(rows.size)]  # fmt: skip
        self._read_legacy_rows(rows, ms, client, replies, per)
        for n, p in enumerate(rows.tolist()):
            got = replies[n * per : (n + 1) * per]
            self.owned[p] = False
            try:
                failed = next((r for r in got if isinstance(r, Exception)), None)
                if failed is not None:
                    raise CorruptDataError(f"portfolio {self.pids[p]}: monitor state unreadable: {failed}")
                self.versions[p] = stored_version(got[0])
                self._load_peaks(p, got[1])
                self._load_marks(p, got[2], starts[p])
                for t in range(len(self.tiers)):
                    self._load_tier(p, t, *got[3 + 3 * t : 6 + 3 * t])
            except StoreError as exc:
                errors[p] = str(exc)
                continue
            self.owned[p] = True
            self.checked[p] = True
        self._size_rings([(p, lengths[n]) for n, p in enumerate(rows.tolist()) if p not in errors], client)
        return errors

    def _size_rings(self, loaded: list[tuple[int, list[int]]], client: Any) -> None:
        """Bring the rings of the rows loaded (with their lengths as read) to their size now, outside the lane's
        MULTI, a bounded amount per call (engine/store/history.py ``size_rings``): a lane of new portfolios, or
        a reconfigured tier, would otherwise have its lane script allocate and zero-fill every ring (4 MB a
        portfolio by default) in one EXEC, blocking Redis, and every pre-trade check, for seconds."""
        need = [
            [(PortfolioKeys(self.pids[p]).history_tier(int(self._res[t])), self._sizes[t], cost) for t, n in
             enumerate(lengths) if (cost := ring_cost(n, self._sizes[t], self._legacy_sizes[t]))]
            for p, lengths in loaded
        ]  # fmt: skip
        size_rings(client, [rings for rings in need if rings])

    def _read_legacy_rows(self, rows: npt.NDArray[np.intp], ms: int, client: Any, replies: list[Any], per: int) -> None:
        """Rings of :data:`~engine.store.history.LEGACY_TIER_LAYOUT` (written before ``equity_low`` / ``_high``)
        among ``replies`` of :meth:`load`: their open row read again at its legacy offset and put in the replies
        as the current layout's (the write then converts the ring: ``upgrade_ring``). Once per ring at most."""
        legacy = [
            (n, p, t) for n, p in enumerate(rows.tolist()) for t in range(len(self.tiers))
            if replies[n * per + 3 + 3 * t] == self._legacy_sizes[t]
        ]  # fmt: skip
        if not legacy:
            return
        size = LEGACY_TIER_LAYOUT.size
        pipe = client.pipeline(transaction=False)
        for _, p, t in legacy:
            offset = 16 + int((ms // self._res[t]) % self._slots[t]) * size
            pipe.getrange(PortfolioKeys(self.pids[p]).history_tier(int(self._res[t])), offset, offset + size - 1)
        for (n, _, t), raw in zip(legacy, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(raw, bytes) and len(raw) == size:
                row = upgrade_rows(np.frombuffer(raw, dtype=LEGACY_TIER_LAYOUT.dtype), TIER_LAYOUT)
                replies[n * per + 3 + 3 * t], replies[n * per + 5 + 3 * t] = self._sizes[t], row.tobytes()

    def _load_peaks(self, p: int, raw: list[Any]) -> None:
        """The stored peaks of row ``p`` by the per-portfolio merge's own rule (engine/store/monitoring.py
        ``check_peaks`` / ``PEAKS_FAULT_LUA``): none stored, or every field usable; a corrupt hash raises (the
        row is refused, not merged with references made up from part of it). Decoded only once it passed."""
        key = PortfolioKeys(self.pids[p]).peaks
        if not check_peaks(raw[: len(PEAK_FIELDS)], key):
            self.day[p] = self.week[p] = None
            self.peaks[p] = np.nan
            return
        names = _PEAK_FIELDS
        day = decode_str(raw[0], key=f"{key}.day")
        week = decode_str(raw[3], key=f"{key}.week")
        values = [raw[1], raw[2], raw[4], raw[5], raw[6], raw[7], raw[8]]
        labels = [names[1], names[2], names[4], names[5], names[6], names[7], names[8]]
        self.peaks[p] = [
            np.nan if v is None and label in ("last", "close") else decode_float(v, key=f"{key}.{label}")
            for v, label in zip(values, labels, strict=True)
        ]
        self.day[p], self.week[p] = day, week

    def _load_marks(self, p: int, raw: dict[bytes, bytes], start: int) -> None:
        key = PortfolioKeys(self.pids[p]).marks
        stored = {}
        for raw_ticker, value in raw.items():
            ticker = decode_str(raw_ticker, key=key)
            stored[ticker] = decode_excursion(value, f"{key}.{ticker}")
        for j, ticker in enumerate(self.tickers[p]):
            mark = stored.pop(ticker, None)
            side, mfe, mae = mark if mark is not None else (0, 0.0, 0.0)
            self.side[start + j], self.mfe[start + j], self.mae[start + j] = side, mfe, mae
            self.stored[start + j] = mark is not None
        self.orphans[self.pids[p]] = set(stored)

    def _load_tier(self, p: int, t: int, length: Any, header: Any, row: Any) -> None:
        self.buckets[p, t] = -1
        self.rows[p, t] = np.nan
        self.headers[p, t] = 0.0
        if int(length) != self._sizes[t] or len(header) != 16 or len(row) != TIER_LAYOUT.size:
            return  # no ring yet (or another size): the write recreates it empty
        self.headers[p, t] = np.frombuffer(header, dtype="<f8")
        values = np.frombuffer(row, dtype=TIER_LAYOUT.dtype)[0]
        decoded = np.array([float(values[c.name]) for c in HISTORY_COLUMNS])
        ts = decoded[0]
        if ts > 0:
            self.buckets[p, t] = int(np.floor(np.floor(ts * 1000.0) / self._res[t]))
            self.rows[p, t] = decoded

    # -- merge -----------------------------------------------------------------------------------------------
    def merge_books(
        self,
        valid: npt.NDArray[np.bool_],
        equity: Float64Array,
        day: str,
        week: str,
        side: npt.NDArray[np.int8],
        pnl: Float64Array,
        ms: int,
        market_open: bool = True,
        complete: npt.NDArray[np.bool_] | None = None,
    ) -> Merged:
        """Merge one observation of every ``valid`` portfolio into its peaks and excursions (the others keep
        their state): ``equity`` per portfolio; ``side`` / ``pnl`` per position, the side (+1 / -1; 0 = no
        excursion this tick: flat, or no usable price) and the unrealized P&L; ``ms``: the entry time;
        ``market_open``: the observations may be the session's close (``MarketCalendar.sets_close``);
        ``complete``: per portfolio, False where a held ticker has no usable price (None: all complete): that
        equity is no observation and moves no peak, as in ``_PEAKS_LUA`` (its excursions merge). The history
        buckets are merged by :meth:`merge_tiers` once the points are known."""
        # peaks: MonitoringStore._PEAKS_LUA, vectorised; an incomplete valuation keeps the peaks as they are
        observed = valid if complete is None else valid & complete
        peaks = self.peaks.copy()
        day_open, day_peak, week_peak, max_peak, max_dd, last, close = (peaks[:, i].copy() for i in range(_NPEAK))
        reference = np.where(np.isnan(close), last, close)  # the previous close; a hash without one: the last
        open_ = np.where(np.isnan(reference), equity, reference)
        start_peak = np.where(open_ > equity, open_, equity)
        new_days: list[str] = []
        new_weeks: list[str] = []
        for p in range(len(self.pids)):
            d, w = self.day[p], self.week[p]
            if not observed[p]:
                new_days.append(d or "")
                new_weeks.append(w or "")
                continue
            e = equity[p]
            if d is None or day > d:
                d, day_open[p], day_peak[p] = day, open_[p], start_peak[p]
            elif day == d and e > day_peak[p]:
                day_peak[p] = e
            if w is None or week > w:
                w, week_peak[p] = week, start_peak[p]
            elif week == w and e > week_peak[p]:
                week_peak[p] = e
            if market_open and d == day:  # a late tick (an earlier day) leaves the close alone
                close[p] = e
            new_days.append(d)
            new_weeks.append(w)
        v = observed
        max_peak = np.where(v & (np.isnan(max_peak) | (equity > max_peak)), equity, max_peak)
        with np.errstate(divide="ignore", invalid="ignore"):
            dd = np.where((max_peak > 0) & (equity < max_peak), equity / max_peak - 1.0, 0.0)
        max_dd = np.where(v & (np.isnan(max_dd) | (dd < max_dd)), dd, max_dd)
        last = np.where(v, equity, last)
        merged_peaks = np.column_stack([day_open, day_peak, week_peak, max_peak, max_dd, last, close])

        # excursions: MonitoringStore._MARKS_LUA, vectorised (side 0: no excursion, dropped)
        up, down = np.maximum(pnl, 0.0), np.minimum(pnl, 0.0)
        same = (side != 0) & (self.side == side)
        mfe = np.where(same, np.maximum(up, self.mfe), up)
        mae = np.where(same, np.minimum(down, self.mae), down)
        changed = (side != 0) & (~same | (pnl > self.mfe) | (pnl < self.mae))
        mfe, mae = np.where(side != 0, mfe, 0.0), np.where(side != 0, mae, 0.0)
        keep_rows = np.repeat(~valid, np.diff(self.offsets()))
        new_side = np.where(keep_rows, self.side, side).astype(np.int8)
        mfe, mae = np.where(keep_rows, self.mfe, mfe), np.where(keep_rows, self.mae, mae)
        changed &= ~keep_rows

        return Merged(new_days, new_weeks, merged_peaks, new_side, mfe, mae, changed,
                      self.buckets.copy(), self.rows.copy(), self.headers.copy(), ms,
                      np.zeros(self.buckets.shape, dtype=bool))  # fmt: skip

    def merge_tiers(self, merged: Merged, valid: npt.NDArray[np.bool_], points: Float64Array) -> None:
        """Merge each portfolio's history point (``points``: P x columns, NaN = no value; a NaN ``ts``: no
        snapshot, nothing merged) into the open bucket of every tier, at the entry time ``merged.ms``."""
        ms = merged.ms
        buckets, rows, headers = merged.buckets, merged.rows, merged.headers
        written = valid & ~np.isnan(points[:, 0])
        fresh = points.copy()
        fresh[:, _NARROW] = _float32(fresh[:, _NARROW])
        for t in range(len(self.tiers)):
            b = ms // int(self._res[t])
            newest_b = np.floor(headers[:, t, 0] / self._res[t])
            kept = (headers[:, t, 0] == 0) | (b > newest_b - self._slots[t])  # within the ring's retention
            merged.skip[:, t] = written & ~kept
            written_t = written & kept
            same_bucket = written_t & (buckets[:, t] == b)
            old = rows[:, t].copy()
            merged_row = fresh.copy()
            later = same_bucket & (points[:, 0] >= old[:, 0])
            keep_last = same_bucket & ~later
            merged_row[:, _LAST] = np.where(keep_last[:, None], old[:, _LAST], fresh[:, _LAST])
            new_hi, old_hi = points[:, _HIGH], old[:, _HIGH]
            hi = np.where(~np.isnan(new_hi) & (np.isnan(old_hi) | (new_hi > old_hi)), new_hi, old_hi)
            merged_row[:, _HIGH] = np.where(same_bucket[:, None], hi, fresh[:, _HIGH])
            new_lo, old_lo = points[:, _LOW], old[:, _LOW]
            lo = np.where(~np.isnan(new_lo) & (np.isnan(old_lo) | (new_lo < old_lo)), new_lo, old_lo)
            merged_row[:, _LOW] = np.where(same_bucket[:, None], lo, fresh[:, _LOW])
            merged_row[:, _NARROW] = _float32(merged_row[:, _NARROW])
            rows[:, t] = np.where(written_t[:, None], merged_row, old)
            buckets[:, t] = np.where(written_t, b, buckets[:, t])
            newest, first = headers[:, t, 0].copy(), headers[:, t, 1].copy()
            opened = b > np.floor(newest / self._res[t])  # a newer bucket (HistoryStore._RECORD_LUA's rule)
            headers[:, t, 0] = np.where(written_t & opened, ms, newest)
            headers[:, t, 1] = np.where(written_t & ((first == 0) | (ms < first)), ms, first)

    # -- write -----------------------------------------------------------------------------------------------
    def prepare(
        self, merged: Merged, valid: npt.NDArray[np.bool_], points: Float64Array, *, min_ms: int, max_points: int,
        version: int,
    ) -> Prepared:  # fmt: skip
        """Encode the tick's merged state once (rows, headers, peaks, the excursions to set and delete); the
        writes of :meth:`write` then take a range of portfolios each. ``version``: the snapshots' market
        version (a stored snapshot of a higher one is kept)."""
        merged.replace = valid & ~np.isnan(points[:, 0]) & (self.versions <= version)
        merged.version = version
        merged.stamp = f"{self.token}:{next(_WRITES)}"
        ntier, count = len(self.tiers), len(self.pids)
        row_size = TIER_LAYOUT.size
        stored = points[:, _RAW_INDEX]
        raw = np.ascontiguousarray(np.where(np.isfinite(stored), stored, np.nan), dtype="<f8")
        rows = np.zeros((count, max(ntier, 1)), dtype=TIER_LAYOUT.dtype)
        for c, column in enumerate(HISTORY_COLUMNS):
            with np.errstate(over="ignore"):  # rounded already (_float32)
                rows[column.name] = merged.rows[:, :, c] if ntier else np.nan
        fixed = np.concatenate((
            np.where(merged.replace, ord("s"), ord("k")).astype(np.uint8)[:, None],
            _modes(self.checked, merged.skip, (merged.headers != self.headers).any(axis=2)),
            raw.view(np.uint8).reshape(count, RAW_LAYOUT.size),
            rows.view(np.uint8).reshape(count, max(ntier, 1) * row_size)[:, : ntier * row_size],
            np.ascontiguousarray(merged.headers, dtype="<f8").view(np.uint8).reshape(count, ntier * 16),
        ), axis=1)  # fmt: skip
        # excursions to set (new or a new extreme) and to delete (no excursion any more); encoded a range of
        # portfolios at a time by write(), so that the first range's MULTI is sent sooner
        valid_pos = valid[self._owner]
        gone = self.stored & (merged.side == 0) & valid_pos
        picked = np.flatnonzero((merged.changed | gone) & valid_pos)
        head: list[Any] = [ntier, merged.ms, min_ms, int(max_points), row_size, merged.stamp, RAW_LAYOUT.size]
        for t in range(ntier):
            head += [self._sizes[t], 16 + int((merged.ms // int(self._res[t])) % int(self._slots[t])) * row_size]
        return Prepared(
            merged, valid.tolist(), head, fixed.tobytes(), fixed.shape[1], picked, gone[picked],
            self._peak_fields(merged),
        )  # fmt: skip

    def _peak_fields(self, merged: Merged) -> list[tuple[str, ...]]:
        """Per portfolio, the peaks fields its write sets (``_APPLY_LUA``): all of them and the owner stamp when
        it was loaded this tick (its hash may lack some; another writer stamped it), else those that changed,
        and ``last`` always; never a field that is not known yet (a NaN ``close``; with an incomplete valuation,
        which moves nothing, any reference a hash lacks, and no day or week before a first observation), and
        the write's owner stamp always (new each write: every other writer, another monitor holding the same
        portfolio too, checks the stamp it read before its clock, engine/store/tick_owners.py)."""
        changed = ~((merged.peaks == self.peaks) | (np.isnan(merged.peaks) & np.isnan(self.peaks)))
        changed[:, _LAST_COLUMN] = True
        changed = np.column_stack((
            changed, [a != b for a, b in zip(merged.day, self.day, strict=True)],
            [a != b for a, b in zip(merged.week, self.week, strict=True)], np.zeros(len(self.pids), dtype=bool),
        )) if len(self.pids) else np.zeros((0, len(_CHANGED_FIELDS)), dtype=bool)  # fmt: skip
        codes = np.where(self.checked, _ALL_FIELDS, changed @ (1 << np.arange(len(_CHANGED_FIELDS))))
        unknown = np.column_stack((
            np.isnan(merged.peaks), [not d for d in merged.day], [not w for w in merged.week],
            np.zeros(len(self.pids), dtype=bool),
        )) if len(self.pids) else np.zeros((0, len(_CHANGED_FIELDS)), dtype=bool)  # fmt: skip
        codes &= ~(unknown @ (1 << np.arange(len(_CHANGED_FIELDS))))
        codes |= _OWNER_BIT
        return [_FIELD_SETS[c] for c in codes.tolist()]

    def _marks(
        self, prepared: Prepared, rows: range
    ) -> tuple[dict[int, tuple[int, bytes, bytes]], dict[int, list[str]]]:
        """By portfolio row of ``rows``: the excursions to set (how many, their tickers joined by NUL, their
        records of :data:`~engine.store.codec.EXCURSION_DTYPE` end to end), the tickers to delete."""
        x = prepared
        lo, hi = np.searchsorted(self._owner[x.marks], [rows.start, rows.stop])
        at, gone = x.marks[lo:hi], x.gone[lo:hi]
        merged, flat = x.merged, self._flat
        dels: dict[int, list[str]] = {}
        for j, p in zip(at[gone].tolist(), self._owner[at[gone]].tolist(), strict=True):
            dels.setdefault(p, []).append(flat[j])
        at = at[~gone]  # positions in order: each portfolio's are contiguous
        records = np.empty(len(at), dtype=EXCURSION_DTYPE)
        records["side"], records["mfe"], records["mae"] = merged.side[at], merged.mfe[at], merged.mae[at]
        packed, size = records.tobytes(), EXCURSION_DTYPE.itemsize
        owners = self._owner[at]
        if not len(at):
            return {}, dels
        starts = np.flatnonzero(np.diff(owners, prepend=-1)).tolist()
        names = [flat[j] for j in at.tolist()]
        sets: dict[int, tuple[int, bytes, bytes]] = {}
        for s, e, p in zip(starts, [*starts[1:], len(at)], owners[starts].tolist(), strict=True):
            sets[p] = (e - s, "\0".join(names[s:e]).encode(), packed[s * size : e * size])
        return sets, dels

    def write(
        self, pipe: Conn, store: Any, prepared: Prepared, rows: range, snapshots: Mapping[int, bytes]
    ) -> list[int]:
        """Queue the script writing the merged state of the valid portfolios among ``rows`` and, where
        ``snapshots`` holds one (by row: its stored form, of the market version :meth:`prepare` took), the
        snapshot and its history point. Each portfolio is written only where its peaks hash still holds the owner
        stamp :meth:`stale_rows` read: returns the rows queued, in order (engine/store/tick_owners.py
        ``touched_rows``)."""
        x = prepared
        merged = x.merged
        sets, dels = self._marks(x, rows)
        peaks = dict(zip(rows, _decimal_rows(merged.peaks[rows.start : rows.stop]), strict=True))  # rows: step 1
        size = x.fixed_size
        groups: list[tuple[list[str], list[Any]]] = []
        queued: list[int] = []
        for p in rows:
            if not x.valid[p]:
                continue
            queued.append(p)
            pid = self.pids[p]
            pk = self._keys.get(pid)
            if pk is None:
                k = PortfolioKeys(pid)
                pk = self._keys[pid] = [
                    k.snapshot, k.history, k.peaks, k.marks, *(k.history_tier(int(r)) for r in self._res)
                ]  # fmt: skip
            snap = snapshots.get(p)
            count, set_names, set_records = sets.get(p, (0, b"", b""))
            del_p = [*dels.get(p, []), *sorted(self.orphans.get(pid, ()))]
            fields = x.peak_fields[p]
            if fields == _LAST_ONLY:  # the common cases: no new peak, day or week (market closed / open)
                pairs: list[Any] = ["last", peaks[p][_LAST_COLUMN]]
            elif fields == _LAST_AND_CLOSE:
                pairs = ["last", peaks[p][_LAST_COLUMN], "close", peaks[p][_CLOSE_COLUMN]]
            else:
                values = {"day": merged.day[p], "week": merged.week[p],
                          **dict(zip(_PEAK_COLUMNS, peaks[p], strict=True))}  # fmt: skip
                pairs = [v for name in fields if name != OWNER_FIELD for v in (name, values[name])]
            head = _COUNTS.pack(len(pairs) // 2, count, len(del_p))
            fixed = b"" if snap is None else x.fixed[p * size : (p + 1) * size]  # none: peaks and marks only
            record = b"".join((head, fixed, set_records, set_names))
            groups.append((pk, [self._seen[p], b"" if snap is None else snap, record, *pairs, *del_p]))
        if not groups:
            return queued
        if is_cluster(store.client):  # one script per portfolio, each in its slot's MULTI
            for pk, pa in groups:
                store._eval(pipe, _APPLY_LUA, pk, [*x.head, *pa])
            return queued
        keys: list[str] = []
        args = list(x.head)
        for pk, pa in groups:
            keys += pk
            args += pa
        store._eval(pipe, _APPLY_LUA, keys, args)
        return queued

    def commit(self, merged: Merged, valid: npt.NDArray[np.bool_], touched: Sequence[int] = ()) -> None:
        """The transaction holding ``merged`` succeeded: it is the stored state of every ``valid`` row; the rows
        ``touched`` (another writer stamped them since the tick began, so not written: engine/store/tick_owners.py
        ``touched_rows``) are loaded again before their next write."""
        if len(touched):
            valid = valid.copy()
            valid[list(touched)] = False
            self.owned[list(touched)] = False
        self.day = [d if v else old for d, v, old in zip(merged.day, valid.tolist(), self.day, strict=True)]
        self.week = [w if v else old for w, v, old in zip(merged.week, valid.tolist(), self.week, strict=True)]
        self.peaks = np.where(valid[:, None], merged.peaks, self.peaks)
        valid_pos = valid[self._owner]
        self.side = np.where(valid_pos, merged.side, self.side).astype(np.int8)
        self.mfe, self.mae = np.where(valid_pos, merged.mfe, self.mfe), np.where(valid_pos, merged.mae, self.mae)
        self.buckets = np.where(valid[:, None], merged.buckets, self.buckets)
        self.rows = np.where(valid[:, None, None], merged.rows, self.rows)
        self.headers = np.where(valid[:, None, None], merged.headers, self.headers)
        self.versions = np.where(merged.replace & valid, merged.version, self.versions)
        self.stored = np.where(valid_pos, merged.side != 0, self.stored)
        stamp = merged.stamp.encode()
        self.stamps = [stamp if v else old for v, old in zip(valid.tolist(), self.stamps, strict=True)]
        self.checked &= ~valid
        for p in np.flatnonzero(valid).tolist():
            self.orphans.pop(self.pids[p], None)


def _decimal_rows(values: Float64Array) -> list[list[Any]]:
    """Each row of ``values`` as the decimal strings of its floats (shortest round trip, as ``repr``; ``nan``
    and ``inf`` as ``repr`` writes them), for hash fields: formatted by orjson, several times faster."""
    width = values.shape[1] if values.ndim == 2 else 0
    finite = np.isfinite(values)
    clean = values if finite.all() else np.where(finite, values, 0.0)
    text = orjson.dumps(np.ascontiguousarray(clean), option=orjson.OPT_SERIALIZE_NUMPY)
    parts = text.replace(b"[", b"").replace(b"]", b"").split(b",")
    rows: list[list[Any]] = (
        [parts[i : i + width] for i in range(0, len(parts), width)] if values.size else [[] for _ in values]
    )
    for r, c in np.argwhere(~finite).tolist():  # few: a close not known yet (NaN, never written)
        rows[r][c] = repr(float(values[r, c]))
    return rows


def _modes(
    checked: npt.NDArray[np.bool_], skip: npt.NDArray[np.bool_], header: npt.NDArray[np.bool_]
) -> npt.NDArray[np.uint8]:
    """Each portfolio's tier modes for the script, one byte a tier: '1' check the ring first (then write the row
    and the header), 'h' write the row and the header (``header``: it changed), '0' the row, '-' leave alone."""
    modes = np.where(skip, ord("-"), np.where(checked[:, None], ord("1"), np.where(header, ord("h"), ord("0"))))
    return modes.astype(np.uint8).reshape(skip.shape)


def _float32(values: Float64Array) -> Float64Array:
    """``values`` rounded to float32 as ``struct.pack('f')`` rounds them (beyond its range: +-inf)."""
    with np.errstate(over="ignore"):
        return values.astype(np.float32).astype(np.float64)
