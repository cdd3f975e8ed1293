"""Every portfolio's book read in few round trips per tick (one when nothing changed), decoded only when its stored
bytes changed.

:class:`PortfolioReader` is the monitor's read of every portfolio at the start of a tick (through
:meth:`engine.store.Store.read_portfolio_bundles` with ``reader=``). It returns what the plain read returns (one
:class:`~engine.store.portfolio.PortfolioBundle` per portfolio, the same typed errors) at a fraction of the cost:

- **Few round trips, each portfolio atomic.** On a single Redis a read-only Lua script (EVALSHA) reads, for
  every portfolio, its state hash, its trading-state hash and its positions hash, and the registry: one script
  without tracking; through the tracked connection one per :data:`TRACKED_BOOKS` portfolios, the registry read by
  the last (a tracked script's cost on Redis 6.2 grows with its keys times its commands: engine/store/tracking.py
  ``TRACKED_SCRIPT_KEYS``), as on a Redis Cluster, where the registry, the commit marker, is read after the books
  too. A script runs alone on the server, so a fill (itself one MULTI) is seen whole or not at all, as with the
  MULTI of the plain read. The replies are plain nested arrays (no per-command reply callbacks): hiredis parses
  them in C.
- **What the reader holds is not sent back.** The reader sends, per portfolio, the fingerprint of the state and
  trading-state hashes it decoded (their DUMP, Redis's own serialization: compared in the script without
  turning either hash into Lua values, half the cost of comparing their fields) and the ``positions_rev`` of
  the positions it holds. The script answers a bare marker for a portfolio whose two hashes still match the
  fingerprint; otherwise it sends them, and the positions hash only when its ``positions_rev`` (renewed by every
  positions write, :func:`engine.store.portfolio.new_positions_rev`) differs from the reader's.
- **Nothing read that did not change.** On one server the reader reads through a tracked connection
  (engine/store/tracking.py): Redis reports every write to a key it read, whoever wrote it. While the registry
  is unchanged, a read sends the script over the portfolios written since (and those it does not hold) only,
  and none at all when nothing was written: a tick of 1,000 unchanged books costs one round trip instead of the
  script's 2,000 DUMPs (about 12 ms). When the tracker cannot vouch (first read, a reconnection, a flushed
  database, a failed read), every portfolio is read as above.
- **Nothing decoded twice.** A portfolio answered by the marker gets the very same frozen bundle as the last
  read: no Decimal is parsed for an unchanged book; a changed one decodes only its changed parts. The cache is
  keyed by stored bytes (and ``positions_rev``), never by time; a portfolio that does not decode is not cached
  (its next read decodes again), and one no longer read is dropped.

On a Redis Cluster a script may touch one slot only: the reader runs one script per portfolio (its keys share
the slot of its hash tag) in one cluster pipeline, each atomic, then reads the registry, as the plain read's
per-slot transactions do (engine/store/slots.py: the registry, a commit marker, is read last).

Like :meth:`engine.store.trading.TradingStore.read_trade_view`, this relies on every positions write going
through the store (which renews ``positions_rev``); writing ``pf:{<id>}:positions`` otherwise would leave a
reader's positions stale.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import redis

from engine.errors import CorruptDataError, StoreEmptyError, StoreError
from engine.records import PortfolioState, Position
from engine.store.codec import decode_str, decode_trading_status, hash_from_flat
from engine.store.keys import PORTFOLIOS_KEY, PortfolioKeys
from engine.store.portfolio import PortfolioBundle, decode_portfolio, decode_positions
from engine.store.slots import is_cluster
from engine.store.tracking import TRACKED_SCRIPT_KEYS, KeyTracker

if TYPE_CHECKING:
    from engine.store.base import StoreBase

REGISTRY_ATTEMPTS = 3
"""Reads before giving up on a registry that changes under each of them (``PortfolioReader._read_all``: through the
tracker a repeat reads only the portfolios added, and the last one returns those it read)."""

_READ_BOOKS_LUA = """
-- Every portfolio's raw books, read-only, in one atomic call; what the caller already holds is not sent back.
-- ARGV[1] = '1' when KEYS[1] = rd:portfolios (the registry, read first and returned first), '0' when absent (a
-- Redis Cluster: the script then covers one portfolio's slot). Then per portfolio i = 0, 1, ... (o = 1 with the
-- registry, 0 without): KEYS[o + 3i + 1] = pf:{id}:state, KEYS[o + 3i + 2] = pf:{id}:positions,
-- KEYS[o + 3i + 3] = pf:{id}:trading_state; ARGV[2i + 2] = the fingerprint of the state and trading-state hashes
-- the caller holds ('' for none), ARGV[2i + 3] = the positions_rev it holds the positions of ('' for none).
-- A fingerprint is '<length of the first>:' then the DUMP of the state hash and the DUMP of the trading-state
-- hash (Redis's serialization of a value, checksummed: equal dumps are equal hashes; two equal hashes may
-- dump differently, which only costs a read).
-- Returns a flat array: [registry members,] then four slots per portfolio: 0, nil, nil, nil when both hashes
-- equal the fingerprint; else its state (HGETALL), its positions (HGETALL, or nil when the state's positions_rev
-- equals ARGV[2i + 3]), its trading state (HGETALL) and its fingerprint now (nil when a hash is missing). Every
-- read is a pcall: a key of the wrong type comes back as an error in its own slot, so only that portfolio fails.
local out = {}
local o = 0
if ARGV[1] == '1' then
  out[1] = redis.pcall('SMEMBERS', KEYS[1])
  o = 1
end
local n = #out
for i = 0, (#KEYS - o) / 3 - 1 do
  local k = o + 3 * i
  local a = 2 * i + 1
  local ds, dt = redis.pcall('DUMP', KEYS[k + 1]), redis.pcall('DUMP', KEYS[k + 3])
  local seal = type(ds) == 'string' and type(dt) == 'string' and (#ds .. ':' .. ds .. dt)
  out[n + 4] = false
  if seal and ARGV[a + 1] == seal then
    out[n + 1] = 0
    out[n + 2] = false
    out[n + 3] = false
  else
    local state = redis.pcall('HGETALL', KEYS[k + 1])
    local trading = redis.pcall('HGETALL', KEYS[k + 3])
    out[n + 1] = state
    out[n + 2] = false
    out[n + 3] = trading
    if not (state.err or trading.err) then
      local rev = redis.pcall('HGET', KEYS[k + 1], 'positions_rev')
      if type(rev) ~= 'string' or rev ~= ARGV[a + 2] then out[n + 2] = redis.pcall('HGETALL', KEYS[k + 2]) end
      out[n + 4] = seal
    end
  end
  n = n + 4
end
return out
"""

TRACKED_BOOKS = (TRACKED_SCRIPT_KEYS - 1) // 3
"""Portfolios per script call through the tracked connection (three keys each, and the registry with the last:
engine/store/tracking.py ``TRACKED_SCRIPT_KEYS``)."""
_STATE_REV = b"positions_rev"
_SLOTS = 4
"""Slots of the script's reply per portfolio."""
_UNCHANGED = 0
"""The script's first slot for a portfolio whose state and trading state equal the fingerprint sent."""


@dataclass(frozen=True)
class _Entry:
    """What the reader decoded for one portfolio, with the raw replies it came from."""

    state_raw: list[bytes]
    trading_raw: list[bytes]
    fingerprint: bytes
    rev: bytes
    """The ``positions_rev`` the positions were decoded under (``b""``: the state carries none; not reused)."""
    positions: MappingProxyType[str, Position]
    bundle: PortfolioBundle


class PortfolioReader:
    """Reads every portfolio's bundle in few round trips and reuses what it decoded (module docstring).

    One reader per process that reads every portfolio repeatedly (the monitor); not thread-safe (a reader is
    used by one thread). The plain :meth:`engine.store.Store.read_portfolio_bundles` needs none.
    """

    def __init__(self, *, tracking: bool = True) -> None:
        self.tracking = tracking
        """Ask Redis which books changed (engine/store/tracking.py) rather than checking every one (False: as on a
        Redis Cluster)."""
        self._entries: dict[str, _Entry] = {}
        self._keys: tuple[list[str], list[str]] = ([], [])  # (ids, their keys) of the last read
        self._key_names: dict[str, tuple[str, str, str]] = {}
        self._owner_of: dict[bytes, str] = {}
        """The portfolio of each key read (as Redis names it in an invalidation)."""
        self._registry: tuple[list[Any], list[str]] = ([], [])  # (SMEMBERS reply, ids) of the last read
        self._registry_tracked = False
        """The registry held was read through the tracker, which has not reported a change since."""
        self._tracker: KeyTracker | None = None
        self._tracked_client: Any = None
        self._last: tuple[list[str], dict[str, PortfolioBundle]] = ([], {})
        """(ids, bundles) of the last read: returned again when nothing was written since."""

    def read(
        self,
        store: StoreBase,
        known_ids: Iterable[str] | None = None,
        select: Callable[[list[str]], list[str]] | None = None,
    ) -> dict[str, PortfolioBundle]:
        """Every registered portfolio's bundle (``select``: the registered ids -> the ones to read), as
        :meth:`engine.store.Store.read_portfolio_bundles`, whose arguments these are."""
        client: Any = store.client
        tracker = self._tracker_for(client)
        changed = tracker.changes() if tracker is not None else None
        try:
            if changed is not None and self._registry_tracked and PORTFOLIOS_KEY.encode() not in changed:
                return self._read_changed(store, tracker, changed, select)
            self._registry_tracked = False
            out = self._read_all(store, tracker, known_ids, select)
            self._registry_tracked = tracker is not None
            return out
        except BaseException:
            if tracker is not None:
                tracker.forget()
            raise

    def close(self) -> None:
        """Close the tracked connection (the reader reads everything again on its next read)."""
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None
        self._registry_tracked = False

    def _tracker_for(self, client: Any) -> KeyTracker | None:
        """The tracker on ``client``'s server (made on first use); None on a Redis Cluster or with tracking off."""
        if not self.tracking or is_cluster(client):
            return None
        if self._tracker is None or self._tracked_client is not client:
            self.close()
            self._tracker, self._tracked_client = KeyTracker(client), client
        return self._tracker

    def _read_changed(
        self,
        store: StoreBase,
        tracker: KeyTracker | None,
        changed: set[bytes],
        select: Callable[[list[str]], list[str]] | None,
    ) -> dict[str, PortfolioBundle]:
        """The registry is unchanged since the last read: read again only the portfolios a write touched (and
        those not held), reuse the rest."""
        registry = list(self._registry[1])
        ids = sorted(select(registry)) if select is not None else registry
        known = self._entries
        touched = {self._owner_of.get(key) for key in changed}
        stale = [pid for pid in ids if pid in touched or pid not in known]
        if not stale and ids == self._last[0]:
            return dict(self._last[1])  # nothing written: the last answer
        books = self._read_one(store, stale, tracker, registry=False) if stale else []
        return self._bundles(ids, dict(zip(stale, range(len(stale)), strict=True)), books)

    def _read_all(
        self,
        store: StoreBase,
        tracker: KeyTracker | None,
        known_ids: Iterable[str] | None,
        select: Callable[[list[str]], list[str]] | None,
    ) -> dict[str, PortfolioBundle]:
        """Read the registry and every selected portfolio (those whose held bytes still match come back as a
        marker), the registry read after the books (with the last call: the commit marker). The result is the
        portfolios it registers, each with a book read during this call: one removed meanwhile is dropped, one
        added is read by a repeat. Through the tracker a repeat reads only the portfolios added (while portfolios
        are registered every few ms, an onboarding, a read in several calls would otherwise never find the
        registry unchanged across one), so a portfolio removed and registered again with another book between
        two attempts may come with its book of before, for this read only (the tracker reports the writes: the
        next read reads it again); registrations that outpace every repeat leave their portfolios to the next
        read (``_read_changed`` reads the registered ones it does not hold). Untracked (one atomic script, or a
        Redis Cluster) a repeat reads every portfolio again, and running out of attempts raises."""
        client: Any = store.client
        cluster = is_cluster(client)
        registry = (
            sorted(known_ids) if known_ids is not None else self._decode_registry(client.smembers(PORTFOLIOS_KEY))
        )
        have: dict[str, list[Any]] = {}  # each portfolio's books as read (each read atomic by itself)
        for _ in range(REGISTRY_ATTEMPTS):
            ids = sorted(select(registry)) if select is not None else registry
            need = [pid for pid in ids if tracker is None or pid not in have]  # tracked: only those added
            if cluster:
                books = self._read_cluster(store, need)
                registered = self._decode_registry(client.smembers(PORTFOLIOS_KEY))  # last: the commit marker
            else:
                reply = self._read_one(store, need, tracker, registry=True)
                registered, books = self._decode_registry(reply[0]), reply[1:]
            have.update((pid, books[_SLOTS * i : _SLOTS * (i + 1)]) for i, pid in enumerate(need))
            if registered != registry:
                ids = sorted(select(registered)) if select is not None else registered
            if all(pid in have for pid in ids):  # a book of every portfolio registered (removed ones dropped)
                break
            registry = registered
        else:
            if tracker is None:
                raise CorruptDataError(f"{PORTFOLIOS_KEY} keeps changing; cannot read a consistent set")
            # tracked: the registry read is held, so the next read reads the portfolios registered since: the
            # ones read now are returned (those registered during the read come one read later)
            ids = [pid for pid in ids if pid in have]
        books = [slot for pid in ids for slot in have[pid]]
        return self._bundles(ids, dict(zip(ids, range(len(ids)), strict=True)), books)

    def _bundles(self, ids: list[str], read: dict[str, int], books: list[Any]) -> dict[str, PortfolioBundle]:
        """The bundle of every portfolio in ``ids``: decoded from ``books`` (at its index in ``read``), or the one
        held when it was not read."""
        out: dict[str, PortfolioBundle] = {}
        entries: dict[str, _Entry] = {}
        known = self._entries
        for pid in ids:
            entry = known.get(pid)
            i = read.get(pid)
            if i is not None:
                state_raw = books[_SLOTS * i]
                try:
                    if isinstance(state_raw, int):  # _UNCHANGED
                        if entry is None:
                            raise CorruptDataError(f"portfolio {pid!r}: the store replied 'unchanged' to a first read")
                    else:
                        at = _SLOTS * i
                        entry = self._decode(pid, state_raw, books[at + 1], books[at + 2], books[at + 3], entry)
                except StoreError as exc:
                    out[pid] = PortfolioBundle(pid, None, None, exc)
                    continue
            assert entry is not None  # not read: held (_read_changed)
            entries[pid] = entry
            out[pid] = entry.bundle
        self._entries = entries  # portfolios no longer read are forgotten
        self._last = (list(ids), dict(out))
        return out

    def _decode_registry(self, raw: Any) -> list[str]:
        """The registered ids, sorted; the same reply as the last read's gives the same list (not re-decoded)."""
        if isinstance(raw, Exception):
            raise CorruptDataError(f"{PORTFOLIOS_KEY}: {raw}")
        raw = list(raw)
        if raw != self._registry[0]:
            self._registry = (raw, sorted(decode_str(r, key=PORTFOLIOS_KEY) for r in raw))
        return list(self._registry[1])

    def _keys_of(self, ids: list[str]) -> list[str]:
        """The three keys of every portfolio in ``ids``, in order (kept while the ids do not change)."""
        if ids != self._keys[0]:
            keys: list[str] = []
            for pid in ids:
                if pid not in self._key_names:
                    k = PortfolioKeys(pid)
                    self._key_names[pid] = (k.state, k.positions, k.trading_state)
                    self._owner_of.update((name.encode(), pid) for name in self._key_names[pid])
                keys.extend(self._key_names[pid])
            self._keys = (list(ids), keys)
        return self._keys[1]

    def _known(self, pid: str) -> tuple[bytes, bytes]:
        """(fingerprint, positions_rev) of what the reader holds for ``pid``; empty when nothing."""
        entry = self._entries.get(pid)
        return (entry.fingerprint, entry.rev) if entry is not None else (b"", b"")

    def _read_one(self, store: StoreBase, ids: list[str], tracker: KeyTracker | None, *, registry: bool) -> list[Any]:
        """The books of every portfolio in ``ids`` (a single server), the registry's reply first when
        ``registry``: one script; through the tracked connection one script per :data:`TRACKED_BOOKS` portfolios
        (``TRACKED_SCRIPT_KEYS``: a tracked script's cost grows with its keys times its commands), in turn, the
        registry read by the last (after every book: the commit marker, as on a Redis Cluster), each portfolio
        read whole by one script."""
        keys = self._keys_of(ids)
        if tracker is None:
            args: list[Any] = ["1" if registry else "0"]
            for pid in ids:
                args.extend(self._known(pid))
            reply: list[Any] = store._eval(None, _READ_BOOKS_LUA, [PORTFOLIOS_KEY, *keys] if registry else keys, args)
            return reply
        books: list[Any] = []
        for at in range(0, max(len(ids), 1), TRACKED_BOOKS):
            part = ids[at : at + TRACKED_BOOKS]
            last = at + TRACKED_BOOKS >= len(ids)
            args = ["1" if registry and last else "0"]
            for pid in part:
                args.extend(self._known(pid))
            names = keys[3 * at : 3 * (at + len(part))]
            reply = list(tracker.eval(_READ_BOOKS_LUA, [PORTFOLIOS_KEY, *names] if registry and last else names, args))
            if registry and last:
                return [reply[0], *books, *reply[1:]]
            books += reply
        return books

    def _read_cluster(self, store: StoreBase, ids: list[str]) -> list[Any]:
        """One script per portfolio (its own slot), pipelined; each atomic by itself."""
        keys = self._keys_of(ids)
        calls = [(keys[3 * i : 3 * i + 3], ["0", *self._known(pid)]) for i, pid in enumerate(ids)]
        books: list[Any] = []
        for reply in pipelined_scripts(store.client, _READ_BOOKS_LUA, calls):
            if isinstance(reply, Exception):  # the whole script failed on this portfolio's node
                books.extend([reply] * _SLOTS)
            else:
                books.extend(reply)
        return books

    def _decode(
        self, pid: str, state_raw: Any, positions_raw: Any, trading_raw: Any, seal: Any, entry: _Entry | None
    ) -> _Entry:
        """Decode one portfolio as :func:`~engine.store.portfolio.decode_portfolio` does (the same checks in
        the same order: state present, positions, state fields, trading state), reusing ``entry``'s parts whose
        bytes did not change; ``seal``: the fingerprint the script sent with them. Raises the store's typed
        errors."""
        state_fields = hash_from_flat(_ok(state_raw, pid, "state"))
        if not state_fields:
            raise StoreEmptyError(f"portfolio {pid!r} is registered but has no state")
        raw_rev = state_fields.get(_STATE_REV)
        rev = raw_rev if isinstance(raw_rev, bytes) else b""
        if positions_raw is None:  # not sent: the reader holds the positions of this positions_rev
            if entry is None or not entry.rev or entry.rev != rev:
                key = PortfolioKeys(pid).positions
                raise CorruptDataError(f"{key}: not sent, and no positions held for {rev!r}")
            positions = entry.positions
        else:
            positions = MappingProxyType(decode_positions(pid, hash_from_flat(_ok(positions_raw, pid, "positions"))))
        state: PortfolioState
        if entry is not None and state_raw == entry.state_raw and entry.bundle.state is not None:
            old = entry.bundle.state
            state = old if positions is entry.positions else replace(old, positions=positions)
        else:
            state = decode_portfolio(pid, state_fields, {}, positions)
        trading_raw = _ok(trading_raw, pid, "trading_state")
        if entry is not None and trading_raw == entry.trading_raw and entry.bundle.trading_state is not None:
            trading = entry.bundle.trading_state
        else:
            trading = decode_trading_status(PortfolioKeys(pid).trading_state, hash_from_flat(trading_raw))
        return _Entry(
            state_raw=state_raw,
            trading_raw=trading_raw,
            fingerprint=seal if isinstance(seal, bytes) else b"",
            rev=rev,
            positions=positions,
            bundle=PortfolioBundle(pid, state, trading, None),
        )


def _ok(raw: Any, pid: str, kind: str) -> Any:
    """A part of the script's reply, or the typed error when Redis refused that part (a key of the wrong type):
    ``kind`` names the key (:class:`PortfolioKeys` attribute; spelled only for the error)."""
    if isinstance(raw, Exception):
        if isinstance(raw, redis.ConnectionError):
            raise raw
        raise CorruptDataError(f"{getattr(PortfolioKeys(pid), kind)}: {raw}")
    return raw


def pipelined_scripts(client: Any, source: str, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
    """Run the script ``source`` once per ``(keys, args)`` of ``calls`` in one non-transactional pipeline (on a
    Redis Cluster each call on the node of its keys' slot), by SHA: when a node lacks the script (NOSCRIPT, e.g.
    restarted), it is loaded on every primary and the calls run once more. Replies in order, errors in place."""
    sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            # by name: redis-py's cluster pipeline blocks its evalsha() (it cannot load a missing script);
            # a NOSCRIPT reply is handled here
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        if attempt == 0 and any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
            client.script_load(source)
            continue
        break
    return replies
