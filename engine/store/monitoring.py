"""What the monitor writes for each tick (logic/monitor.py): the equity peaks of the drawdown windows, the
excursions of open positions, the continuous VaR backtest, and short leases; the latest snapshot is read here
and written with its history by engine/store/history.py.

Keys: ``pf:{<id>}:snapshot``, ``pf:{<id>}:peaks``, ``pf:{<id>}:flows`` (a book sync's capital flows, written with
the shift of the peaks), ``pf:{<id>}:marks``, ``pf:{<id>}:backtest``,
``pf:{<id>}:backtest_window``, ``pf:{<id>}:backtest_log`` and ``rd:lock:<name>`` (see :mod:`engine.store.keys`).
Per-portfolio writes of one snapshot touch keys of one hash tag only and each runs in one Lua script, so two
monitors (or a tick processed twice) never lose an update.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from engine.errors import CorruptDataError
from engine.store.base import Conn, StoreBase
from engine.store.codec import (
    array_row_offset,
    decode_array,
    decode_excursion,
    decode_float,
    decode_int,
    decode_object,
    decode_snapshot,
    decode_str,
    encode_array,
    encode_array_header,
    encode_json_fast,
)
from engine.store.history import OWNER_FIELD, foreign_stamp
from engine.store.keys import PortfolioKeys, lock_key

_SNAPSHOT_TS_LUA = """
-- Each stored snapshot's ts (KEYS: pf:{id}:snapshot), read from the head of its JSON: false where none is
-- stored, '' where the head is not '{"portfolio_id":"<id>","ts":<number>' (the writers' key order).
local out = {}
for i, key in ipairs(KEYS) do
  local raw = redis.call('GET', key)
  if raw then
    out[i] = string.match(raw, '^{"portfolio_id":"[^"\\\\]*","ts":(%-?[%d.eE+-]+)[,}]') or ''
  else
    out[i] = false
  end
end
return out
"""


PEAK_FIELDS = ("day", "day_open", "day_peak", "week", "week_peak", "max_peak", "max_dd", "last", "close")
"""The fields of ``pf:{id}:peaks`` the merges read (the ``owner`` stamp besides), in :func:`check_peaks`' order."""
_OPTIONAL_PEAKS = frozenset({"last", "close"})
_PEAK_NUMBER = re.compile(rb"-?[0-9][0-9.eE+-]*")
_CORRUPT_PREFIX = "STORE_CORRUPT "

# The one rule of a stored peaks hash, for every reader: the per-portfolio merge (``_PEAKS_LUA``), the vectorised
# monitor's load (engine/store/tick_state.py, :func:`check_peaks`, the same rule in Python) and
# :meth:`MonitoringStore.read_peaks`. h = the HMGET of :data:`PEAK_FIELDS`. None of them stored (none yet, or
# only an ``owner`` stamp: a fill's ``reset_mark`` on a new book): no peaks. Else day and week must be non-empty
# and every reference a finite decimal number as the writers write them (``repr`` / ``%.17g`` / orjson: digits,
# '.', an exponent; no hex, blanks, '_', nan or inf, which Lua's ``tonumber`` or Python's ``float`` would take
# differently), ``last`` and ``close`` may be missing (a hash written before they existed), the others not.
# Anything else is a corrupt hash: refused, not merged over (a reference made up from a partial one would be a
# made-up P&L or drawdown). Returns false, or what is wrong.
PEAKS_FAULT_LUA = """
local PEAK_NAMES = {'day', 'day_open', 'day_peak', 'week', 'week_peak', 'max_peak', 'max_dd', 'last', 'close'}
local find, tonum, huge = string.find, tonumber, math.huge
local function peaks_fault(key, h)
  if not (h[1] or h[2] or h[3] or h[4] or h[5] or h[6] or h[7] or h[8] or h[9]) then return false end
  for i = 1, 9 do
    local v = h[i]
    if not v then
      if i < 8 then return key .. '.' .. PEAK_NAMES[i] .. ' is missing (a partial peaks hash)' end
    elseif i == 1 or i == 4 then
      if v == '' then return key .. '.' .. PEAK_NAMES[i] .. ' is empty' end
    else
      local x = find(v, '^%-?%d[%d.eE+%-]*$') and tonum(v)
      if not x or x ~= x or x == huge or x == -huge then
        return key .. '.' .. PEAK_NAMES[i] .. ': ' .. string.format('%q', v) .. ' is not a finite decimal number'
      end
    end
  end
  return false
end
"""


def check_peaks(raw: Sequence[Any], key: str) -> bool:
    """``PEAKS_FAULT_LUA``'s rule in Python, on the values of :data:`PEAK_FIELDS` (``None`` where missing): False
    when no peaks are stored, True when they are usable; CorruptDataError (STORE_CORRUPT) otherwise."""
    if all(v is None for v in raw):
        return False
    for name, v in zip(PEAK_FIELDS, raw, strict=True):
        if v is None:
            if name in _OPTIONAL_PEAKS:
                continue
            raise CorruptDataError(f"{key}.{name} is missing (a partial peaks hash)")
        text = v.encode() if isinstance(v, str) else v
        if name in ("day", "week"):
            if not text:
                raise CorruptDataError(f"{key}.{name} is empty")
            continue
        try:
            ok = isinstance(text, bytes) and _PEAK_NUMBER.fullmatch(text) is not None and math.isfinite(float(text))
        except ValueError:
            ok = False
        if not ok:
            shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else repr(text)
            raise CorruptDataError(f'{key}.{name}: "{shown}" is not a finite decimal number')
    return True


def corrupt_reply(exc: redis.ResponseError, key: str) -> CorruptDataError | None:
    """The STORE_CORRUPT error a peaks script's error reply stands for (``_PEAKS_LUA``'s refusal, or a key of
    the wrong type), or None for any other error."""
    message = str(exc)
    at = message.find(_CORRUPT_PREFIX)
    if at >= 0:
        return CorruptDataError(message[at + len(_CORRUPT_PREFIX) :])
    if "WRONGTYPE" in message:  # a script's error reads 'Error running script (...): @user_script:N: WRONGTYPE ...'
        return CorruptDataError(f"{key}: not a hash (WRONGTYPE)")
    return None


@dataclass(frozen=True)
class EquityPeaks:
    """Equity reference points of the drawdown windows (``pf:{id}:peaks``)."""

    day: str
    day_open: float
    """Equity the day opened at: the previous session's close (the last equity observed while the market was
    open), or the first of the day when none is known; daily P&L is measured from it."""
    day_peak: float
    week: str
    week_peak: float
    max_peak: float
    max_drawdown: float
    """Worst drawdown from the running all-time peak seen so far (a fraction <= 0)."""

    @classmethod
    def from_reply(cls, reply: Any, key: str = "peaks") -> EquityPeaks:
        if not isinstance(reply, list | tuple) or len(reply) != 7 or any(r is None for r in reply):
            raise CorruptDataError(f"{key}: expected 7 peak fields, got {reply!r}")
        return cls(
            day=decode_str(reply[0], key=f"{key}.day"),
            day_open=decode_float(reply[1], key=f"{key}.day_open"),
            day_peak=decode_float(reply[2], key=f"{key}.day_peak"),
            week=decode_str(reply[3], key=f"{key}.week"),
            week_peak=decode_float(reply[4], key=f"{key}.week_peak"),
            max_peak=decode_float(reply[5], key=f"{key}.max_peak"),
            max_drawdown=decode_float(reply[6], key=f"{key}.max_dd"),
        )


@dataclass(frozen=True)
class Excursion:
    """Maximum favourable / adverse excursion of an open position's unrealized P&L since it was opened."""

    side: int
    mfe: float
    mae: float


def decode_marks_reply(reply: Any, key: str = "marks") -> dict[str, Excursion]:
    """Decode the reply of :meth:`Store.update_marks` (``[ticker, side, mfe, mae, ...]``)."""
    if not isinstance(reply, list | tuple) or len(reply) % 4:
        raise CorruptDataError(f"{key}: malformed marks reply")
    try:  # the common case at once (every portfolio, every tick); anything odd: field by field, below
        tickers = [t.decode() for t in reply[0::4]]
        mfes, maes = [float(x) for x in reply[2::4]], [float(x) for x in reply[3::4]]
        if math.isfinite(sum(mfes) + sum(maes)):
            return {
                t: Excursion(int(side), mfe, mae)
                for t, side, mfe, mae in zip(tickers, reply[1::4], mfes, maes, strict=True)
            }
    except (AttributeError, TypeError, ValueError):
        pass
    out = {}
    for i in range(0, len(reply), 4):
        ticker = decode_str(reply[i], key=key)
        out[ticker] = Excursion(
            side=decode_int(reply[i + 1], key=f"{key}.{ticker}.side"),
            mfe=decode_float(reply[i + 2], key=f"{key}.{ticker}.mfe"),
            mae=decode_float(reply[i + 3], key=f"{key}.{ticker}.mae"),
        )
    return out


def ends_position(qty_before: int, qty_after: int) -> bool:
    """Whether a fill from ``qty_before`` to ``qty_after`` shares ends the position held: it takes it to zero (a
    close) or through zero (a flip). Growing it, or reducing it short of zero, keeps the position (and its
    excursion); opening one from flat starts one."""
    return qty_before != 0 and (qty_after == 0 or (qty_after > 0) != (qty_before > 0))


def reset_mark(pipe: Conn, portfolio_id: str, ticker: str) -> None:
    """Queue, in a fill's MULTI (``pipe``), the end of ``ticker``'s excursion (:func:`ends_position`): its mark
    in ``pf:{id}:marks`` is deleted, so the position the fill leaves (if any) starts afresh at the monitor's next
    valuation, as a new one does (``_MARKS_LUA``: no mark, MFE / MAE start at that P&L); and the peaks hash gets
    a fresh foreign ``owner`` stamp (engine/store/tick_state.py), so a vectorised monitor reloads the
    portfolio's marks rather than merge into the copy it holds, and a tick of it that read the book before the
    fill leaves this portfolio unwritten (its lane script checks the stamp) and redoes it on the new book. Two
    commands, in a fill that closes or flips only: the monitor reloads one portfolio (a few reads) on its next
    tick."""
    keys = PortfolioKeys(portfolio_id)
    pipe.hdel(keys.marks, ticker)
    pipe.hset(keys.peaks, OWNER_FIELD, foreign_stamp())


class MonitoringStore(StoreBase):
    """Snapshots and their history, equity peaks, position excursions and short leases."""

    @staticmethod
    def peaks_key(portfolio_id: str) -> str:
        return PortfolioKeys(portfolio_id).peaks

    @staticmethod
    def backtest_key(portfolio_id: str) -> str:
        return PortfolioKeys(portfolio_id).backtest

    # -- equity peaks ----------------------------------------------------------------------------------------
    # KEYS[1] = pf:{id}:peaks (hash: day, day_open, day_peak, week, week_peak, max_peak, max_dd, last, close)
    # ARGV[1] = equity now (number as text), ARGV[2] = day id, ARGV[3] = week id (ISO dates order as text),
    # ARGV[4] = a fresh ``owner`` stamp: a vectorised monitor's in-memory copy is stale (engine/store/tick_state.py),
    # ARGV[5] = '1' when the market is open (engine/sessions.py ``MarketCalendar.sets_close``), else '0',
    # ARGV[6] = '0' when the valuation is incomplete (a held ticker without a usable price: logic/valuation.py
    # ``Valuation.complete``), else '1'.
    # Merges one equity observation. ``close`` is the last equity observed while the market was open, ``last`` the
    # last one observed at all. A later day (week) opens at the close (the previous session's: an observation
    # between the close and the open, extended hours or an evening re-mark, never becomes the open), else at the
    # last equity seen (a hash written before ``close`` existed), else at this equity; its peak restarts at
    # max(open, equity), so a loss between the close and the first snapshot of the day counts
    # (math_logic.period_drawdown's convention). An observation of an earlier day (a late tick) leaves that
    # period, and the close, alone. The all-time peak is a max and the worst drawdown from it a min, so two
    # monitors, or a tick processed twice, never lose an update. A ``24/7`` market is always open: close = last.
    # Capital flows shift every reference but max_dd (``_SHIFT_PEAKS_LUA``).
    # An incomplete valuation is no observation: its equity counts an unpriced position at 0 (an unpriced short
    # raises it by the short's whole value), so it moves nothing, not even ``last`` or ``close`` (either may
    # become a day's open) nor the day / week (the next complete observation rolls them, opening at the last
    # complete close): only the owner stamp is written, and the stored references are returned (with none
    # stored: this equity's, which the snapshot does not use; it reports no drawdown then, logic/snapshot.py).
    # A corrupt hash (``PEAKS_FAULT_LUA``; a key of another type fails the HMGET) is refused before anything is
    # written: an error reply 'STORE_CORRUPT <what>' (:func:`corrupt_reply`), the hash left exactly as it is.
    # Returns {day, day_open, day_peak, week, week_peak, max_peak, max_dd}.
    _PEAKS_LUA = PEAKS_FAULT_LUA + """
local key, e, day, week = KEYS[1], tonumber(ARGV[1]), ARGV[2], ARGV[3]
local h = redis.call('HMGET', key, 'day', 'day_open', 'day_peak', 'week', 'week_peak', 'max_peak', 'max_dd',
                     'last', 'close')
local fault = peaks_fault(key, h)
if fault then return redis.error_reply('STORE_CORRUPT ' .. fault) end
if ARGV[6] == '0' then
  redis.call('HSET', key, 'owner', ARGV[4])
  if not h[1] then return {day, ARGV[1], ARGV[1], week, ARGV[1], ARGV[1], '0'} end
  return {h[1], h[2], h[3], h[4], h[5], h[6], h[7]}
end
local open_s = h[9] or h[8] or ARGV[1]
local start_peak = ARGV[1]
if tonumber(open_s) > e then start_peak = open_s end
if not h[1] or day > h[1] then
  h[1] = day; h[2] = open_s; h[3] = start_peak
elseif day == h[1] and e > tonumber(h[3]) then
  h[3] = ARGV[1]
end
if not h[4] or week > h[4] then
  h[4] = week; h[5] = start_peak
elseif week == h[4] and e > tonumber(h[5]) then
  h[5] = ARGV[1]
end
if not h[6] or e > tonumber(h[6]) then h[6] = ARGV[1] end
local peak = tonumber(h[6])
local dd = 0
if peak > 0 and e < peak then dd = e / peak - 1 end
if not h[7] or dd < tonumber(h[7]) then h[7] = string.format('%.17g', dd) end
redis.call('HSET', key, 'day', h[1], 'day_open', h[2], 'day_peak', h[3], 'week', h[4], 'week_peak', h[5],
           'max_peak', h[6], 'max_dd', h[7], 'last', ARGV[1])
if ARGV[5] == '1' and day == h[1] then redis.call('HSET', key, 'close', ARGV[1]) end
redis.call('HSET', key, 'owner', ARGV[4])  -- a vectorised monitor's copy (engine/store/tick_state.py) is stale
return {h[1], h[2], h[3], h[4], h[5], h[6], h[7]}
"""

    def update_peaks(
        self, portfolio_id: str, equity: float, day_id: str, week_id: str, pipe: Conn = None, *,
        market_open: bool = True, complete: bool = True,
    ) -> EquityPeaks | None:  # fmt: skip
        """Merge one equity observation into the portfolio's peaks (atomic); returns the merged peaks, or
        ``None`` on a pipeline (decode its result with :meth:`EquityPeaks.from_reply`; a corrupt hash is an error
        reply there: :func:`corrupt_reply`). ``market_open``: the observation may be the session's close
        (``MarketCalendar.sets_close``; the script's comment); ``complete`` False: the valuation misses a held
        price, the peaks are returned as stored, unmoved. A corrupt hash: CorruptDataError, nothing written."""
        if not math.isfinite(equity):
            raise ValueError(f"equity must be finite, got {equity}")
        key = PortfolioKeys(portfolio_id).peaks
        args = [repr(float(equity)), day_id, week_id, foreign_stamp(), "1" if market_open else "0",
                "1" if complete else "0"]  # fmt: skip
        try:
            reply = self._eval(pipe, self._PEAKS_LUA, [key], args)
        except redis.ResponseError as exc:
            corrupt = corrupt_reply(exc, key)
            if corrupt is None:
                raise
            raise corrupt from None
        return None if pipe is not None else EquityPeaks.from_reply(reply, key)

    # KEYS[1] = pf:{id}:peaks, KEYS[2] = pf:{id}:flows; ARGV[1] = a capital flow (number as text: the equity
    # change a book sync causes at the marks it is made at), ARGV[2] = a fresh ``owner`` stamp
    # (engine/store/tick_state.py: the vectorised monitor loads the shifted references again), ARGV[3] = the
    # flow's time (score, text; '' to record nothing), ARGV[4] = its ledger member (JSON).
    # A capital flow is not P&L: every equity reference (day_open, day_peak, week_peak, max_peak, last, close)
    # moves by it, so the next observation's daily P&L and drawdowns are those the book would show had the
    # flow not happened; the worst drawdown so far (max_dd, a fraction) is history and stays. The flow is also
    # added to the flow ledger (whether or not there are references: the Performance page's time-weighted
    # returns read it). No hash (no observation yet): nothing to shift. Returns 1 when shifted, 0 when not.
    _SHIFT_PEAKS_LUA = """
local key, flow = KEYS[1], tonumber(ARGV[1])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4]) end
if redis.call('EXISTS', key) == 0 then return 0 end
local names = {'day_open', 'day_peak', 'week_peak', 'max_peak', 'last', 'close'}
local got = redis.call('HMGET', key, unpack(names))
local out = {}
for i, name in ipairs(names) do
  local v = tonumber(got[i])
  if v then
    out[#out + 1] = name
    out[#out + 1] = string.format('%.17g', v + flow)
  end
end
out[#out + 1] = 'owner'
out[#out + 1] = ARGV[2]
redis.call('HSET', key, unpack(out))
return 1
"""

    def shift_peaks(
        self, portfolio_id: str, flow: float, pipe: Conn = None, *, ts: float | None = None
    ) -> bool | None:
        """Move the portfolio's equity references by a capital ``flow`` (``_SHIFT_PEAKS_LUA``; atomic, in the
        caller's MULTI when ``pipe`` is given); True when there were references to move, ``None`` on a
        pipeline.

        ``ts``: the time the flow is booked at (the sync's ``now``); given, the flow is also added to the
        portfolio's flow ledger (``pf:{id}:flows``, :meth:`read_flows`) in the same script, its amount as the
        exact decimal text of ``flow`` (``repr``: it reads back as the very float the references moved by)."""
        if not math.isfinite(flow):
            raise ValueError(f"flow must be finite, got {flow}")
        if ts is not None and not math.isfinite(ts):
            raise ValueError(f"ts must be finite, got {ts}")
        keys = PortfolioKeys(portfolio_id)
        score, member = "", b""
        if ts is not None:  # a fresh id: two equal flows at one time are two members of the set
            score = repr(float(ts))
            member = encode_json_fast({"ts": float(ts), "flow": repr(float(flow)), "id": uuid.uuid4().hex})
        args: list[str | bytes] = [repr(float(flow)), foreign_stamp(), score, member]
        reply = self._eval(pipe, self._SHIFT_PEAKS_LUA, [keys.peaks, keys.flows], args)
        return None if pipe is not None else bool(reply)

    def read_flows(self, portfolio_id: str, start: float, end: float, conn: Conn = None) -> list[tuple[float, float]]:
        """The capital flows booked at ``start <= ts < end`` (:meth:`shift_peaks`), oldest first, as ``(ts,
        amount)``: one ZRANGEBYSCORE. A flow at a history point's own time is after that point (the sync ran
        after the tick stamped it), hence the half-open window (logic/performance.py ``step_flows``)."""
        key = PortfolioKeys(portfolio_id).flows
        if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
            return []
        raw = self._conn(conn).zrangebyscore(key, repr(float(start)), f"({float(end)!r}", withscores=True)
        out = []
        for member, score in raw:
            text = decode_object(member, key).get("flow")
            if not isinstance(text, str):
                raise CorruptDataError(f"{key}: a flow without its amount: {member!r}")
            amount = decode_float(text, key=f"{key}.flow")
            out.append((decode_float(repr(score), key=f"{key}.ts"), amount))
        return out

    def read_peaks(self, portfolio_id: str, conn: Conn = None) -> EquityPeaks | None:
        """The stored peaks, None when there are none; CorruptDataError for a hash the monitor refuses
        (:func:`check_peaks`, a key of another type)."""
        key = PortfolioKeys(portfolio_id).peaks
        try:
            raw = self._conn(conn).hmget(key, list(PEAK_FIELDS))
        except redis.ResponseError as exc:
            corrupt = corrupt_reply(exc, key)
            if corrupt is None:
                raise
            raise corrupt from None
        return EquityPeaks.from_reply(raw[:7], key) if check_peaks(raw, key) else None

    # -- position excursions ---------------------------------------------------------------------------------
    # KEYS[1] = pf:{id}:marks (hash: ticker -> side, MFE, MAE: engine/store/codec.py ``EXCURSION_DTYPE``),
    # KEYS[2] = pf:{id}:peaks (its ``owner`` stamp is replaced by the last ARGV: engine/store/tick_state.py)
    # ARGV = ticker, side, unrealized P&L, ... for every open position now, then the stamp.
    # MFE (maximum favourable excursion) is the highest unrealized P&L since the position was opened (>= 0),
    # MAE (maximum adverse excursion) the lowest (<= 0). A new ticker, or one whose side flipped, starts again
    # at this P&L; a ticker not listed (position closed) is deleted. Max/min merges: order-insensitive. A side
    # change or a close between two ticks is seen by the fill, which deletes the mark (``reset_mark``).
    # One HMGET and one HSET for all tickers (not one call per ticker: this runs for every portfolio on every
    # tick); the field names are read only when the hash holds more tickers than are open. A corrupt peaks hash
    # refuses the merge as ``_PEAKS_LUA`` does (the portfolio is refused; the vectorised tick refuses it whole),
    # its marks left as they are.
    # Returns {ticker, side, mfe, mae, ...} after the merge.
    _MARKS_LUA = PEAKS_FAULT_LUA + """
local key = KEYS[1]
local n = (#ARGV - 1) / 3
local fault = peaks_fault(KEYS[2], redis.call('HMGET', KEYS[2], 'day', 'day_open', 'day_peak', 'week', 'week_peak',
                                              'max_peak', 'max_dd', 'last', 'close'))
if fault then return redis.error_reply('STORE_CORRUPT ' .. fault) end
redis.call('HSET', KEYS[2], 'owner', ARGV[#ARGV])
local stored = {}
for lo = 1, n, 500 do  -- one HMGET per 500 tickers (Lua's unpack has a stack limit)
  local names = {}
  for i = lo, math.min(n, lo + 499) do names[#names + 1] = ARGV[3 * i - 2] end
  local got = redis.call('HMGET', key, unpack(names))
  for j = 1, #names do stored[lo + j - 1] = got[j] end
end
local out, writes = {}, {}
for i = 1, n do
  local t, side, pnl = ARGV[3 * i - 2], tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  local mfe, mae, changed = math.max(pnl, 0), math.min(pnl, 0), true
  local raw = stored[i]
  if raw then
    local m
    if #raw == 17 and string.byte(raw, 1) ~= 123 then  -- codec.EXCURSION_DTYPE; 123: '{', a JSON record
      local s, f, a = struct.unpack('<bdd', raw)
      m = {side = s, mfe = f, mae = a}
    else
      m = cjson.decode(raw)
    end
    if m.side == side then
      changed = pnl > m.mfe or pnl < m.mae
      mfe = math.max(mfe, m.mfe); mae = math.min(mae, m.mae)
    end
  end
  local mfe_s, mae_s, side_s = string.format('%.17g', mfe), string.format('%.17g', mae), string.format('%d', side)
  if changed then
    writes[#writes + 1] = t
    writes[#writes + 1] = struct.pack('<bdd', side, mfe, mae)
  end
  out[#out + 1] = t; out[#out + 1] = side_s; out[#out + 1] = mfe_s; out[#out + 1] = mae_s
end
for lo = 1, #writes, 1000 do
  redis.call('HSET', key, unpack(writes, lo, math.min(#writes, lo + 999)))
end
if redis.call('HLEN', key) > n then  -- a closed position's marks are left: drop them
  local open = {}
  for i = 1, n do open[ARGV[3 * i - 2]] = true end
  for _, t in ipairs(redis.call('HKEYS', key)) do
    if not open[t] then redis.call('HDEL', key, t) end
  end
end
return out
"""

    def update_marks(
        self, portfolio_id: str, unrealized: Mapping[str, tuple[int, float]], pipe: Conn = None
    ) -> dict[str, Excursion] | None:
        """Merge the unrealized P&L of every open position (ticker -> (side +1/-1, P&L)) into its MFE/MAE
        (atomic); closed positions lose their marks. Returns the merged marks, or ``None`` on a pipeline
        (decode its result with :func:`decode_marks_reply`)."""
        args: list[str] = []
        for ticker, (side, pnl) in unrealized.items():
            if side not in (1, -1) or not math.isfinite(pnl):
                raise ValueError(f"{ticker}: side must be +1/-1 and P&L finite, got {side}, {pnl}")
            args += [ticker, str(side), repr(float(pnl))]
        keys = PortfolioKeys(portfolio_id)
        key = keys.marks
        reply = self._eval(pipe, self._MARKS_LUA, [key, keys.peaks], [*args, foreign_stamp()])
        return None if pipe is not None else decode_marks_reply(reply, key)

    def read_marks(self, portfolio_id: str, conn: Conn = None) -> dict[str, Excursion]:
        key = PortfolioKeys(portfolio_id).marks
        out = {}
        for raw_ticker, raw in self._conn(conn).hgetall(key).items():
            ticker = decode_str(raw_ticker, key=key)
            out[ticker] = Excursion(*decode_excursion(raw, f"{key}.{ticker}"))
        return out

    # -- latest snapshot (written with its history: engine/store/history.py) ---------------------------------
    def read_snapshot(self, portfolio_id: str, conn: Conn = None) -> dict[str, Any] | None:
        """The latest snapshot of a portfolio (schema in logic/snapshot.py), or ``None`` if none yet."""
        key = PortfolioKeys(portfolio_id).snapshot
        raw = self._conn(conn).get(key)
        return None if raw is None else decode_snapshot(raw, key)

    def snapshot_times(self, portfolio_ids: Sequence[str]) -> list[float | None]:
        """Each portfolio's stored snapshot ``ts`` without sending the snapshots (one read-only script,
        :meth:`_eval_per_key`): ``None`` where none is stored, NaN where its JSON does not
        start as the writers start it (``{"portfolio_id": ..., "ts": ...``): the caller then reads that one whole
        (:meth:`read_snapshot`). The alert engine's timers tick uses it to skip the snapshots it holds already."""
        out: list[float | None] = []
        for raw in self._eval_per_key(_SNAPSHOT_TS_LUA, [PortfolioKeys(pid).snapshot for pid in portfolio_ids]):
            if raw is None:
                out.append(None)
                continue
            try:
                out.append(float(raw) if raw else math.nan)
            except ValueError:
                out.append(math.nan)
        return out

    # -- short leases ----------------------------------------------------------------------------------------
    # -- continuous VaR backtest (logic/backtest_monitor.py) --------------------------------------------------
    def write_backtest(
        self,
        portfolio_id: str,
        state: Mapping[str, Any],
        summary: Mapping[str, Any],
        version: int,
        token: str,
        pipe: Conn = None,
        *,
        cov: npt.NDArray[np.float64] | None = None,
        ring: npt.NDArray[np.float64] | None = None,
        ring_row: tuple[int, int, npt.NDArray[np.float64]] | None = None,
        section: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the portfolio's backtest: the backtester's state without its window (JSON, bounded), its
        covariance ``cov`` (a codec array; none: left out, and dropped with a whole ``ring``), the summary the
        pages read, the monitor's snapshot ``section`` (when given), the market version of the last bar fed and a
        new ``token``; and its window, a fixed ring of rows in
        ``pf:{id}:backtest_window``: the whole ``ring`` (rows, N) when given, else the one row ``ring_row``
        (its index, the rows of the ring, its N values) rewritten in place (SETRANGE, O(N) bytes), else left as
        it is."""
        keys = PortfolioKeys(portfolio_id)
        conn = self._conn(pipe)
        fields: dict[str, Any] = {"state": encode_json_fast(state), "summary": encode_json_fast(summary),
                                  "version": int(version), "token": token}  # fmt: skip
        if section is not None:
            fields["section"] = encode_json_fast(section)
        if cov is not None:
            fields["cov"] = encode_array(cov)
        conn.hset(keys.backtest, mapping=fields)
        if cov is None and ring is not None:  # a new backtest in its burn-in: no covariance (a restart drops it)
            conn.hdel(keys.backtest, "cov")
        if ring is not None and np.count_nonzero(np.asarray(ring, dtype="<f8").view(np.uint64)):
            conn.set(keys.backtest_window, encode_array(ring))
        elif ring is not None:  # all zeros (a new backtest): the header, and Redis pads the rest with zero bytes
            header = encode_array_header(ring.shape)
            conn.set(keys.backtest_window, header)
            conn.setrange(keys.backtest_window, len(header) + ring.nbytes - 8, bytes(8))
        elif ring_row is not None:
            index, rows, values = ring_row
            row = np.ascontiguousarray(values, dtype="<f8")
            offset = array_row_offset((rows, row.shape[0]), index)
            conn.setrange(keys.backtest_window, offset, row.tobytes())

    def append_backtest_observations(
        self, portfolio_id: str, observations: Sequence[Mapping[str, Any]], maxlen: int, pipe: Conn = None
    ) -> None:
        """Append closed backtest horizons (JSON records) to ``pf:{id}:backtest_log``, bounded by MAXLEN ~."""
        for record in observations:
            self.append_audit(PortfolioKeys(portfolio_id).backtest_log, record, pipe, maxlen=maxlen)

    def read_backtest_observations(self, portfolio_id: str, count: int, conn: Conn = None) -> list[dict[str, Any]]:
        """The newest ``count`` closed horizons of the portfolio's backtest, oldest first."""
        records = self.read_stream_json(PortfolioKeys(portfolio_id).backtest_log, count=count, conn=conn)
        return records[::-1]

    def read_backtest_marker(self, portfolio_id: str, conn: Conn = None) -> tuple[int, str] | None:
        """(version, token) of the stored backtest, None when there is none: one HMGET, no state decoded."""
        key = PortfolioKeys(portfolio_id).backtest
        raw = self._conn(conn).hmget(key, ["version", "token"])
        if raw[0] is None:
            return None
        return decode_int(raw[0], key=f"{key}.version"), decode_str(raw[1], key=f"{key}.token")

    def read_backtest_state(self, portfolio_id: str, conn: Conn = None) -> tuple[dict[str, Any], int, str] | None:
        """(state, version, token) of the stored backtest in one round trip; None when there is none. The state
        is :meth:`logic.backtest.Backtester.to_dict`'s, with ``"cov"`` a float64 array and the window as
        ``"ring"`` (the stored rows, a float64 array) when one is stored."""
        keys = PortfolioKeys(portfolio_id)
        fields = ["state", "version", "token", "cov"]
        if conn is None:  # one round trip (both keys have the portfolio's hash tag)
            pipe = self.client.pipeline(transaction=False)
            pipe.hmget(keys.backtest, fields)
            pipe.get(keys.backtest_window)
            raw, window = pipe.execute()
        else:  # the caller's connection (a WATCHing pipeline runs commands at once)
            raw, window = conn.hmget(keys.backtest, fields), conn.get(keys.backtest_window)
        if raw[0] is None:
            return None
        state = decode_object(raw[0], key=f"{keys.backtest}.state")
        if raw[3] is not None:
            state["cov"] = decode_array(raw[3], key=f"{keys.backtest}.cov")
        if window is not None:
            state["ring"] = decode_array(window, key=keys.backtest_window)
        return (
            state,
            decode_int(raw[1], key=f"{keys.backtest}.version"),
            decode_str(raw[2], key=f"{keys.backtest}.token"),
        )

    def read_backtest_json(self, portfolio_id: str, conn: Conn = None) -> tuple[dict[str, Any], int] | None:
        """The stored backtest's JSON state (without its covariance and window) and the market version of its last
        bar fed; None when there is none. For a restatement of that state alone (a split: engine/corporate_actions.py).
        Raises CorruptDataError (StoreError) when either does not decode."""
        key = PortfolioKeys(portfolio_id).backtest
        raw = self._conn(conn).hmget(key, ["state", "version"])
        if raw[0] is None:
            return None
        return decode_object(raw[0], key=f"{key}.state"), decode_int(raw[1], key=f"{key}.version")

    def restate_backtest(self, portfolio_id: str, state: Mapping[str, Any], token: str, pipe: Conn = None) -> None:
        """Replace the stored backtest's JSON state alone, with a new ``token``: a runner holding another copy in
        memory reloads it (logic/backtest_monitor.py), and one WATCHing it redoes its bar. The covariance, window,
        summary, section and version are left as they are."""
        key = PortfolioKeys(portfolio_id).backtest
        self._conn(pipe).hset(key, mapping={"state": encode_json_fast(state), "token": token})

    def read_backtest_summary(self, portfolio_id: str, conn: Conn = None) -> dict[str, Any] | None:
        """The stored summary (per track and method: counts, Kupiec, Christoffersen, zone), or None."""
        key = PortfolioKeys(portfolio_id).backtest
        raw = self._conn(conn).hget(key, "summary")
        return None if raw is None else decode_object(raw, key=f"{key}.summary")

    def acquire_lock(self, name: str, token: str, ttl_seconds: float) -> bool:
        """Take the short lease ``name`` unless someone holds it (SET NX PX); True when taken."""
        return bool(self.client.set(lock_key(name), token, nx=True, px=max(1, int(ttl_seconds * 1000))))

    def hold_lease(self, name: str, token: str, ttl_seconds: float) -> bool:
        """Take the lease ``name``, or extend it when ``token`` holds it, for ``ttl_seconds``; False when another
        token holds it (one script: no gap between the check and the extension)."""
        ttl = max(1, int(ttl_seconds * 1000))
        return bool(self._eval(None, _HOLD_LEASE_LUA, [lock_key(name)], [token, ttl]))

    def release_lease(self, name: str, token: str) -> bool:
        """Give the lease ``name`` up if ``token`` holds it (a clean stop: the next holder need not wait)."""
        return bool(self._eval(None, _RELEASE_LEASE_LUA, [lock_key(name)], [token]))


_RELEASE_LEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_HOLD_LEASE_LUA = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not held then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""
