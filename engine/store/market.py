"""Market reads and writes: the snapshot (prices and covariance), the stressed matrix, the session reference
prices, the tick stream with its consumer group, the window of standardized returns, and the daemons' heartbeats.

Keys: ``mkt:{m}:snapshot``, ``mkt:{m}:stressed``, ``mkt:{m}:reference``, ``mkt:{m}:ticks``, ``mkt:{m}:stdret``,
``mkt:{m}:stdret_meta`` and ``hb:<component>`` (see :mod:`engine.store.keys`). The snapshot is one hash
written by one HSET, so a reader never sees prices of one version with the matrix of another.

A missing entry of the standardized window (no new price for that ticker in that bar) is stored as NaN and read
back as its stand-in 0 with ``observed`` False (:class:`StandardizedWindow`); any other non-finite value in a
stored row is refused as :class:`~engine.errors.CorruptDataError`.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from engine.errors import CorruptDataError, StoreEmptyError, StoreError
from engine.math_logic import observed_mask
from engine.records import Float64Array, MarketHeader, MarketSnapshot
from engine.store.base import Conn, StoreBase
from engine.store.codec import (
    decode_array,
    decode_float,
    decode_int,
    decode_json,
    decode_print_gaps,
    decode_str,
    decode_symmetric,
    decode_tickers,
    decode_window,
    encode_array,
    encode_json,
    encode_print_gaps,
    encode_symmetric,
    encode_window_row,
    universe_rev,
)
from engine.store.keys import (
    MARKET_KEY,
    MONITOR_GROUP,
    PRINT_GAPS_FIELD,
    REFERENCE_KEY,
    STDRET_KEY,
    STDRET_META_KEY,
    STRESSED_KEY,
    TICKS_KEY,
    UNIVERSES_KEY,
    heartbeat_key,
)

WINDOW_READ_ATTEMPTS = 3
"""Incremental reads of the standardized window retried when the writer raced them; then one full read."""


class MarketStore(StoreBase):
    """Market snapshot, stressed matrix, reference prices, ticks and heartbeats."""

    # -- market snapshot -------------------------------------------------------------------------------------
    def write_market(
        self, snap: MarketSnapshot, pipe: Conn = None, *, tickers_json: str | None = None, tickers: bool = True
    ) -> None:
        """Write prices, covariance and version as one hash: one command, so readers never see a mix.

        The covariance goes in as its packed upper triangle (:func:`~engine.store.codec.encode_symmetric`):
        half the bytes of the full matrix on the wire and in the AOF every bar, and still the whole matrix of
        this version in the same HSET. It must be exactly symmetric (the EWMA update keeps it so).

        The tickers go in with their rev (:func:`~engine.store.codec.universe_rev`), and the list under its rev
        in :data:`UNIVERSES_KEY` (the tick events name it so). ``tickers=False`` leaves the stored tickers as
        they are: for a writer that knows they are already ``snap.tickers`` (the stream daemon, whose write is
        guarded by the stored version, engine/store/market_write.py). ``tickers_json``: the caller's cached
        ``encode_json(list(snap.tickers))``."""
        n = len(snap.tickers)
        if snap.prices.shape != (n,) or snap.price_ts.shape != (n,) or snap.cov.shape != (n, n):
            raise ValueError(f"market snapshot shapes do not match {n} tickers")
        fields: dict[str, Any] = {
            "version": int(snap.version),
            "ts": repr(float(snap.ts)),
            "prices": encode_array(snap.prices),
            "price_ts": encode_array(snap.price_ts),
            "cov": encode_symmetric(snap.cov),
        }
        c = self._conn(pipe)
        if tickers:
            text = tickers_json if tickers_json is not None else encode_json(list(snap.tickers))
            rev = universe_rev(text)
            fields["tickers"], fields["tickers_rev"] = text, rev
            c.hset(UNIVERSES_KEY, rev, text)
        c.hset(MARKET_KEY, mapping=fields)

    def read_market_version(self, conn: Conn = None) -> int | None:
        raw = self._conn(conn).hget(MARKET_KEY, "version")
        return None if raw is None else decode_int(raw, key=f"{MARKET_KEY}.version")

    def read_market_header(self, conn: Conn = None) -> MarketHeader:
        """Version, time, tickers and prices in one HMGET (no matrix)."""
        raw = self._conn(conn).hmget(MARKET_KEY, ["version", "ts", "tickers", "prices", "price_ts"])
        return decode_market_header(raw)

    def read_market(self, conn: Conn = None) -> MarketSnapshot:
        """The whole snapshot, matrix included, in one HMGET (consistent by construction)."""
        raw = self._conn(conn).hmget(MARKET_KEY, ["version", "ts", "tickers", "prices", "price_ts", "cov"])
        header = decode_market_header(raw[:5])
        n = len(header.tickers)
        return MarketSnapshot(**header.__dict__, cov=decode_market_cov(raw[5], n))

    def write_print_gaps(self, version: int, since: npt.ArrayLike, pipe: Conn = None) -> None:
        """Each ticker's bars since its last accepted price, as of the snapshot of ``version`` (written in the same
        script or transaction as that snapshot: :data:`~engine.store.keys.PRINT_GAPS_FIELD`)."""
        self._conn(pipe).hset(MARKET_KEY, PRINT_GAPS_FIELD, encode_print_gaps(version, since))

    def read_market_state(self, conn: Conn = None) -> tuple[MarketSnapshot, Float64Array]:
        """:meth:`read_market` and each ticker's bars since its last print, from the same HMGET.

        The counts are zeros (every next return spans one bar, as before they were kept) when the store has none
        or they were written with another version of the snapshot (``codec.decode_print_gaps``)."""
        fields = ["version", "ts", "tickers", "prices", "price_ts", "cov", PRINT_GAPS_FIELD]
        raw = self._conn(conn).hmget(MARKET_KEY, fields)
        header = decode_market_header(raw[:5])
        n = len(header.tickers)
        snap = MarketSnapshot(**header.__dict__, cov=decode_market_cov(raw[5], n))
        key = f"{MARKET_KEY}.{PRINT_GAPS_FIELD}"
        return snap, decode_print_gaps(raw[6], key=key, version=header.version, n=n)

    # -- stressed matrix -------------------------------------------------------------------------------------
    def write_stressed(
        self,
        version: int,
        tickers: Iterable[str],
        cov: Float64Array,
        pipe: Conn = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """``meta``: what the matrix was computed from (source, market version, the one-bar unit's
        ``bars_per_day``, the stress settings, ``written_at``), shown on the Stress tab; stored beside it."""
        tickers = list(tickers)
        if cov.shape != (len(tickers), len(tickers)):
            raise ValueError("stressed matrix shape does not match tickers")
        fields: dict[str, Any] = {"version": int(version), "tickers": encode_json(tickers), "cov": encode_array(cov)}
        fields["meta"] = encode_json(dict(meta or {}))
        self._conn(pipe).hset(STRESSED_KEY, mapping=fields)

    def read_stressed(self, conn: Conn = None) -> tuple[int, tuple[str, ...], Float64Array]:
        raw = self._conn(conn).hmget(STRESSED_KEY, ["version", "tickers", "cov"])
        if raw[0] is None:
            raise StoreEmptyError("no stressed covariance in the store")
        tickers = decode_tickers(raw[1], STRESSED_KEY)
        n = len(tickers)
        cov = decode_array(raw[2], key=f"{STRESSED_KEY}.cov", shape=(n, n))
        return decode_int(raw[0], key=f"{STRESSED_KEY}.version"), tickers, cov

    def read_stressed_meta(self, conn: Conn = None) -> dict[str, Any]:
        """What the stored stressed matrix was computed from (:meth:`write_stressed`'s ``meta``); empty for a
        matrix written before it was recorded."""
        raw = self._conn(conn).hget(STRESSED_KEY, "meta")
        if raw is None:
            return {}
        meta = decode_json(raw, key=f"{STRESSED_KEY}.meta")
        if not isinstance(meta, dict):
            raise CorruptDataError(f"{STRESSED_KEY}.meta is not an object")
        return meta

    def read_stressed_stamp(self, conn: Conn = None) -> tuple[int, bytes] | None:
        """What tells one write of the stressed matrix from another, or None when there is none: its version
        (the market version it was built at) and its meta record as stored (with ``written_at``; a re-seeded
        store restarts the versions, so the version alone may repeat)."""
        version, meta = self._conn(conn).hmget(STRESSED_KEY, ["version", "meta"])
        if version is None:
            return None
        return decode_int(version, key=f"{STRESSED_KEY}.version"), bytes(meta or b"")

    # -- standardized returns (engine/stream.py and warmup.py write, engine/market_model.py reads) ------------
    def write_standardized_window(
        self,
        tickers: Iterable[str],
        versions: npt.ArrayLike,
        values: Float64Array,
        window: int,
        pipe: Conn = None,
        *,
        observed: npt.ArrayLike | None = None,
    ) -> None:
        """Replace the whole window: rows ``values`` (T, N) of market ``versions`` (T,), columns ``tickers``.

        Used by the warm-up (a history, or a re-seed) and by the stream daemon when the stored window does not
        match the market's tickers (it then starts an empty one). A new ``gen`` token tells readers to reload.
        ``observed`` (bool, (T, N); None: all): which entries are observations (:func:`encode_window_row`).
        """
        tickers = tuple(tickers)
        values = np.asarray(values, dtype=np.float64).reshape(-1, len(tickers))
        versions = np.asarray(versions, dtype=np.int64).reshape(-1)
        if versions.shape[0] != values.shape[0]:
            raise ValueError("one market version per window row")
        if window < 1:
            raise ValueError(f"window must be >= 1 row, got {window}")
        mask = None if observed is None else np.asarray(observed)
        if mask is not None and mask.shape != values.shape:
            raise ValueError(f"observed has shape {mask.shape}, the window {values.shape}")
        values, versions = values[-window:], versions[-window:]
        masks = [None] * len(values) if mask is None else list(mask[-window:])
        c = self._conn(pipe)
        c.delete(STDRET_KEY)
        if len(values):
            c.rpush(
                STDRET_KEY,
                *[encode_window_row(int(v), row, m) for v, row, m in zip(versions, values, masks, strict=True)],
            )
        c.delete(STDRET_META_KEY)
        c.hset(
            STDRET_META_KEY,
            mapping={
                "tickers": encode_json(list(tickers)), "seq": len(values), "gen": uuid.uuid4().hex,
                "window": int(window), "version": int(versions[-1]) if len(versions) else -1,
            },
        )  # fmt: skip

    def push_standardized(
        self,
        version: int,
        values: Float64Array,
        window: int,
        pipe: Conn = None,
        *,
        observed: npt.ArrayLike | None = None,
    ) -> None:
        """Append one bar's standardized returns (in the window's ticker order) and trim to ``window`` rows;
        ``observed`` (bool, (N,); None: all): which are observations (:func:`encode_window_row`)."""
        if window < 1:
            raise ValueError(f"window must be >= 1 row, got {window}")
        c = self._conn(pipe)
        c.rpush(STDRET_KEY, encode_window_row(version, values, observed))
        c.ltrim(STDRET_KEY, -int(window), -1)
        c.hincrby(STDRET_META_KEY, "seq", 1)
        c.hset(STDRET_META_KEY, mapping={"window": int(window), "version": int(version)})

    def read_standardized_tickers(self, conn: Conn = None) -> tuple[str, ...] | None:
        """Column order of the stored window; None when there is none."""
        raw = self._conn(conn).hget(STDRET_META_KEY, "tickers")
        return None if raw is None else decode_tickers(raw, STDRET_META_KEY)

    def read_standardized(self, previous: StandardizedWindow | None = None) -> StandardizedWindow:
        """The stored window (an empty one when none is stored), reading only the rows added since
        ``previous`` when it is a read of the same window (same ``gen``) that the list still overlaps.

        Meta and rows are read in one MULTI, so rows and their count agree; a rewrite or a writer faster than
        the reader makes it fall back to a full read.
        """
        for _ in range(WINDOW_READ_ATTEMPTS):
            start = 0
            if previous is not None:
                meta = _decode_window_meta(self.client.hmget(STDRET_META_KEY, _WINDOW_META_FIELDS))
                if meta is None:
                    return StandardizedWindow.empty()
                if meta[2] == previous.gen and meta[1] == previous.seq:
                    return previous
                new = meta[1] - previous.seq
                if meta[2] != previous.gen or not 0 < new <= meta[3]:
                    previous = None
                else:
                    start = -new
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hmget(STDRET_META_KEY, _WINDOW_META_FIELDS)
                pipe.lrange(STDRET_KEY, start, -1)
                raw_meta, raws = pipe.execute()
            got = _decode_window_meta(raw_meta)
            if got is None:
                return StandardizedWindow.empty()
            tickers, seq, gen, window = got
            versions, values, observed = decode_window(raws, len(tickers), key=STDRET_KEY)
            if previous is None:
                return StandardizedWindow(tickers, versions, values, seq, gen, observed)
            added = seq - previous.seq
            if gen != previous.gen or added > len(raws) or tickers != previous.tickers:
                previous = None  # rewritten or more rows than read meanwhile: read it whole
                continue
            keep = slice(len(raws) - added, None)
            all_versions = np.concatenate((previous.versions, versions[keep]))[-window:]
            all_values = np.concatenate((previous.values, values[keep]))[-window:]
            all_observed = np.concatenate((previous.observed, observed[keep]))[-window:]
            return StandardizedWindow(tickers, all_versions, all_values, seq, gen, all_observed)
        previous = None
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hmget(STDRET_META_KEY, _WINDOW_META_FIELDS)
            pipe.lrange(STDRET_KEY, 0, -1)
            raw_meta, raws = pipe.execute()
        got = _decode_window_meta(raw_meta)
        if got is None:
            return StandardizedWindow.empty()
        versions, values, observed = decode_window(raws, len(got[0]), key=STDRET_KEY)
        return StandardizedWindow(got[0], versions, values, got[1], got[2], observed)

    # -- reference prices ------------------------------------------------------------------------------------
    def write_reference_prices(
        self, tickers: Iterable[str], prices: Float64Array, ts: float, pipe: Conn = None
    ) -> None:
        """Session reference prices (for the price collar and daily P&L of the market)."""
        tickers = list(tickers)
        self._conn(pipe).hset(
            REFERENCE_KEY,
            mapping={
                "tickers": encode_json(tickers), "prices": encode_array(prices), "ts": repr(float(ts)),
                "rev": uuid.uuid4().hex,  # readers cache the decoded prices by it (see read_trade_view)
            },
        )  # fmt: skip

    def read_reference_prices(self, conn: Conn = None) -> dict[str, float]:
        return decode_reference_prices(self._conn(conn).hmget(REFERENCE_KEY, ["tickers", "prices"]))

    # -- heartbeats ------------------------------------------------------------------------------------------
    def write_heartbeat(self, component: str, fields: Mapping[str, Any], pipe: Conn = None) -> None:
        """``fields`` must carry ``ts``, stamped by the writer's clock (a replay's heartbeat is the data's time)."""
        if "ts" not in fields:
            raise ValueError(f"heartbeat of {component!r} has no ts: stamp it with the daemon's clock")
        payload = {k: (repr(float(v)) if isinstance(v, float) else str(v)) for k, v in fields.items()}
        self._conn(pipe).hset(heartbeat_key(component), mapping=payload)

    def read_heartbeat(self, component: str, conn: Conn = None) -> dict[str, str] | None:
        raw = self._conn(conn).hgetall(heartbeat_key(component))
        if not raw:
            return None
        return {decode_str(k): decode_str(v) for k, v in raw.items()}

    # -- ticks (engine/stream.py publishes, logic/monitor.py consumes) ---------------------------------------
    def publish_tick(
        self,
        event: TickEvent,
        maxlen: int,
        pipe: Conn = None,
        *,
        tickers_json: str | None = None,
        tickers_rev: str | None = None,
    ) -> None:
        """Append a tick event to :data:`TICKS_KEY`, bounded by ``MAXLEN ~ maxlen``.

        ``tickers_rev``: the event names its tickers by this rev (:func:`~engine.store.codec.universe_rev`;
        the writer makes sure :data:`UNIVERSES_KEY` holds it, as :meth:`write_market` does) instead of
        carrying the list (4 KB at N = 500). Otherwise the list goes in: ``tickers_json`` is the caller's
        cached ``encode_json(list(event.tickers))``."""
        fields: dict[Any, Any] = event.to_fields(tickers_json, tickers_rev)
        self._conn(pipe).xadd(TICKS_KEY, fields, maxlen=maxlen, approximate=True)

    def universe(self, rev: str) -> tuple[str, ...]:
        """The ticker list named ``rev`` (:data:`UNIVERSES_KEY`), cached per process: a rev is a content hash,
        so a cached list is never out of date. Raises ``CorruptDataError`` when the store lacks it."""
        found = _UNIVERSES.get(rev)
        if found is not None:
            return found
        raw = self.client.hget(UNIVERSES_KEY, rev)
        if raw is None:
            raise CorruptDataError(f"{UNIVERSES_KEY} has no universe {rev!r} (named by a tick event)")
        text = decode_str(raw, key=f"{UNIVERSES_KEY}.{rev}")
        if universe_rev(text) != rev:
            raise CorruptDataError(f"{UNIVERSES_KEY}.{rev} holds a ticker list of another rev")
        tickers = decode_tickers(text.encode(), f"{UNIVERSES_KEY}.{rev}")
        if len(_UNIVERSES) >= _UNIVERSES_CACHED:
            _UNIVERSES.pop(next(iter(_UNIVERSES)))
        _UNIVERSES[rev] = tickers
        return tickers

    def read_ticks(self, count: int | None = None, newest_first: bool = False, conn: Conn = None) -> list[TickEvent]:
        """Tick events of the stream (oldest first unless ``newest_first``); for tests and the dashboard."""
        c = self._conn(conn)
        entries: Any = c.xrevrange(TICKS_KEY, count=count) if newest_first else c.xrange(TICKS_KEY, count=count)
        return [TickEvent.from_fields(entry_id, fields, self.universe) for entry_id, fields in entries]

    def last_tick(self, conn: Conn = None) -> TickEvent | None:
        ticks = self.read_ticks(count=1, newest_first=True, conn=conn)
        return ticks[0] if ticks else None

    def ensure_tick_group(self, group: str = MONITOR_GROUP, conn: Conn = None) -> bool:
        """Create the consumer group on the tick stream (and the stream) unless it exists; True if created.

        A new group starts at the end of the stream (``$``): events published from then on are kept for it
        until a consumer acknowledges them, whether or not a monitor is running yet.
        """
        try:
            self._conn(conn).xgroup_create(TICKS_KEY, group, id="$", mkstream=True)
            return True
        except redis.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise

    def read_tick_group(
        self,
        group: str,
        consumer: str,
        *,
        pending: bool = False,
        count: int = 100,
        block_ms: int | None = None,
    ) -> list[tuple[str, TickEvent | None]]:
        """XREADGROUP: new events (``pending=False``) or this consumer's delivered but unacknowledged ones.

        Returns ``(entry id, event)`` pairs; the event is ``None`` when the entry was trimmed away meanwhile
        or does not decode (the caller acknowledges and skips it).
        """
        start = "0" if pending else ">"
        raw: Any = self.client.xreadgroup(group, consumer, {TICKS_KEY: start}, count=count, block=block_ms)
        return _decode_tick_entries(self.universe, raw[0][1] if raw else [])

    def claim_stale_ticks(
        self, group: str, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[tuple[str, TickEvent | None]]:
        """XAUTOCLAIM: take over events another consumer received but did not acknowledge for ``min_idle_ms``
        (a monitor that died); they become this consumer's pending entries."""
        raw = self.client.xautoclaim(TICKS_KEY, group, consumer, min_idle_ms, start_id="0-0", count=count)
        return _decode_tick_entries(self.universe, raw[1] if raw and len(raw) > 1 else [])

    def read_ticks_after(
        self, last_id: str | None, count: int = 100, block_ms: int | None = None
    ) -> list[tuple[str, TickEvent | None]]:
        """XREAD (no group): events after ``last_id``, oldest first; ``None``: only the newest event there is
        (XREVRANGE COUNT 1), the starting point of a monitor that shares the portfolios (logic/shards.py)."""
        if last_id is None:
            newest: Any = self.client.xrevrange(TICKS_KEY, count=1)
            return _decode_tick_entries(self.universe, newest)
        raw: Any = self.client.xread({TICKS_KEY: last_id}, count=count, block=block_ms)
        return _decode_tick_entries(self.universe, raw[0][1] if raw else [])

    def ack_ticks(self, group: str, entry_ids: Iterable[str], pipe: Conn = None) -> None:
        ids = list(entry_ids)
        if ids:
            self._conn(pipe).xack(TICKS_KEY, group, *ids)

    def tick_group_pending(self, group: str = MONITOR_GROUP) -> int:
        """Events delivered to the group's consumers and not yet acknowledged (0 when there is no group)."""
        try:
            info = self.client.xpending(TICKS_KEY, group)
        except redis.ResponseError:
            return 0
        return int(info.get("pending", 0)) if isinstance(info, dict) else 0


_WINDOW_META_FIELDS = ["tickers", "seq", "gen", "window"]
_UNIVERSES: dict[str, tuple[str, ...]] = {}
"""Ticker lists by rev (:meth:`MarketStore.universe`), shared by every store of the process."""
_UNIVERSES_CACHED = 64
"""Most lists kept there (the oldest goes first)."""


def _decode_window_meta(raw: list[Any]) -> tuple[tuple[str, ...], int, str, int] | None:
    if raw[0] is None:
        return None
    return (
        decode_tickers(raw[0], STDRET_META_KEY),
        decode_int(raw[1], key=f"{STDRET_META_KEY}.seq"),
        decode_str(raw[2], key=f"{STDRET_META_KEY}.gen"),
        max(1, decode_int(raw[3], key=f"{STDRET_META_KEY}.window")),
    )


_ALL_OBSERVED: npt.NDArray[np.bool_] = np.ones((0, 0), dtype=bool)
"""Default of :attr:`StandardizedWindow.observed`: replaced by an all-True mask of the window's shape."""


@dataclass(frozen=True, eq=False)
class StandardizedWindow:
    """The stored window of standardized one-bar returns ``z_t,i = r_t,i / sigma_t,i`` (sigma before the EWMA
    update with ``r_t``), oldest row first.

    ``versions[t]`` is the market version whose bar gave row ``t``; ``seq`` counts the rows ever pushed to this
    window and ``gen`` names its last rewrite (both let a reader fetch only new rows).

    Missing entries: a ticker with no new price in a bar (none in the bar, refused by the price filter, or no
    price before it), or with no volatility forecast (``sigma = 0``), has no observation there. Its entry in
    ``values`` is the stand-in 0 (its return was 0: the price carried forward) and False in ``observed``
    (stored as NaN, :func:`~engine.store.codec.encode_window_row`). What each reader does with it: the
    Student-t fit leaves it out (``engine.market_model.MarketModel.dof``); filtered historical simulation
    fills it with a draw of that ticker's innovation (``engine.math_logic.fhs_fill_missing``). A window
    stored before entries were marked has its zeros observed, as they were read then.
    """

    tickers: tuple[str, ...]
    versions: npt.NDArray[np.int64]
    values: Float64Array
    """Shape (T, N), columns in ``tickers`` order; finite, 0 where an entry is missing."""
    seq: int = 0
    gen: str = ""
    observed: npt.NDArray[np.bool_] = field(default_factory=lambda: _ALL_OBSERVED)
    """Shape (T, N): True where the entry is an observation (not given: every entry is)."""

    def __post_init__(self) -> None:
        if self.observed is _ALL_OBSERVED:
            object.__setattr__(self, "observed", np.ones(self.values.shape, dtype=bool))
        elif self.observed.shape != self.values.shape:
            raise ValueError(f"observed has shape {self.observed.shape}, the window's values {self.values.shape}")

    @classmethod
    def empty(cls, tickers: tuple[str, ...] = ()) -> StandardizedWindow:
        return cls(tickers, np.zeros(0, dtype=np.int64), np.zeros((0, len(tickers))))

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])

    def upto(self, version: int) -> StandardizedWindow:
        """The rows of market versions <= ``version`` (a reader measuring an older snapshot)."""
        if not self.rows or int(self.versions[-1]) <= version:
            return self
        keep = self.versions <= version
        return StandardizedWindow(
            self.tickers, self.versions[keep], self.values[keep], self.seq, self.gen, self.observed[keep]
        )


def decode_market_header(raw: list[Any]) -> MarketHeader:
    """An HMGET of ``version, ts, tickers, prices, price_ts`` on :data:`MARKET_KEY`."""
    if raw[0] is None:
        raise StoreEmptyError("no market snapshot in the store")
    return market_header(raw[0], raw[1], decode_tickers(raw[2], MARKET_KEY), raw[3], raw[4])


def decode_market_cov(raw: Any, n: int) -> Float64Array:
    """The ``cov`` field of :data:`MARKET_KEY` (packed upper triangle, or a full matrix from an older store):
    every reader of the snapshot's matrix decodes it here."""
    return decode_symmetric(raw, key=f"{MARKET_KEY}.cov", n=n)


def decode_reference_prices(raw: list[Any]) -> dict[str, float]:
    """An HMGET of ``tickers, prices`` on :data:`REFERENCE_KEY`: ticker -> reference price."""
    if raw[0] is None:
        raise StoreEmptyError("no reference prices in the store")
    tickers = decode_tickers(raw[0], REFERENCE_KEY)
    prices = decode_array(raw[1], key=f"{REFERENCE_KEY}.prices", shape=(len(tickers),))
    return dict(zip(tickers, prices.tolist(), strict=True))


def market_header(version: Any, ts: Any, tickers: tuple[str, ...], prices: Any, price_ts: Any) -> MarketHeader:
    """The header of :data:`MARKET_KEY` from its raw fields and its (already decoded) tickers."""
    n = len(tickers)
    return MarketHeader(
        version=decode_int(version, key=f"{MARKET_KEY}.version"),
        ts=decode_float(ts, key=f"{MARKET_KEY}.ts"),
        tickers=tickers,
        prices=decode_array(prices, key=f"{MARKET_KEY}.prices", shape=(n,)),
        price_ts=decode_array(price_ts, key=f"{MARKET_KEY}.price_ts", shape=(n,)),
    )


@dataclass(frozen=True)
class TickEvent:
    """One accepted bar as published on :data:`TICKS_KEY`, in the same transaction as the market snapshot.

    ``prices`` are the last accepted prices of every ticker after this bar (a ticker without a valid price in
    the bar keeps its previous price), aligned with ``tickers``: consecutive events give the exact log
    returns the EWMA covariance was updated with (none after a ``reset`` event).

    ``observed`` says which of those returns are observations: a ticker without a new price in the bar has the
    return 0 of its carried-forward price, a *missing* entry of a window of standardized returns, not a 0
    observation (``engine.math_logic.standardize_observed``; the continuous backtest leaves it out of its
    Student-t fit as the live model does, logic/backtest.py). In the stream entry it is the field ``missing``,
    the bitmask of the tickers *without* a new price (``numpy.packbits``, little bit order: bit ``i`` of byte
    ``i // 8`` for ticker ``i``; ``ceil(N / 8)`` bytes), written only when some ticker had none: the entry of a
    bar without a gap is the entry of before, and an entry without the field (every one published before it)
    reads as every ticker observed.
    """

    version: int
    ts: float
    """Epoch seconds at which the daemon wrote the bar (the market snapshot's ``ts``)."""
    tickers: tuple[str, ...]
    prices: Float64Array
    bar_ts: float = 0.0
    """The bar's own timestamp from the feed (a replayed date, or the simulated bar time)."""
    token: str = ""
    """Unique id of the bar (daemon pid, sequence): tells a committed write from a lost one after a crash."""
    reset: bool = False
    """Prices restarted here: the covariance was not updated with a return for this bar."""
    rejected: int = 0
    """Prices of this bar refused by validation (NaN, inf, <= 0, unknown ticker)."""
    entry_id: str = ""
    """Stream entry id (set when read back)."""
    observed: npt.NDArray[np.bool_] | None = None
    """Shape (N,), aligned with ``tickers``: True where the ticker had a new price in this bar (one accepted in it,
    and one before it); None: every ticker had one (a bar without a gap, a ``reset`` bar, which has no return,
    and every event published before the field)."""
    span: float = 1.0
    """Bars of the model's variance this bar spans for a ticker that also printed in the bar before: 1 for a bar,
    with ``model.night_variance_share`` on a calendar with sessions less for a bar of the open market and more
    for one across a night (:func:`engine.math_logic.session_spans`); the continuous backtest scales its returns
    and its horizons by it as the stream's model does. In the stream entry only when it is not 1 (an entry
    without it, every one published before it, reads as 1)."""

    def to_fields(self, tickers_json: str | None = None, tickers_rev: str | None = None) -> dict[str, Any]:
        """The stream entry; with ``tickers_rev`` the tickers are named by it instead of listed."""
        fields: dict[str, Any] = {"version": int(self.version), "ts": repr(float(self.ts)),
                                  "bar_ts": repr(float(self.bar_ts))}  # fmt: skip
        if tickers_rev is not None:
            fields["tickers_rev"] = tickers_rev
        else:
            fields["tickers"] = tickers_json if tickers_json is not None else encode_json(list(self.tickers))
        fields.update(
            prices=encode_array(self.prices), token=self.token, reset=int(self.reset), rejected=int(self.rejected)
        )
        if self.observed is not None:
            observed = observed_mask(self.observed, (len(self.tickers),))
            if not observed.all():  # only then: the entry of a bar without a gap does not grow
                fields["missing"] = np.packbits(~observed, bitorder="little").tobytes()
        if self.span != 1.0:
            fields["span"] = repr(float(self.span))
        return fields

    @classmethod
    def from_fields(
        cls,
        entry_id: bytes | str,
        fields: Mapping[bytes, bytes],
        universe: Callable[[str], tuple[str, ...]] | None = None,
    ) -> TickEvent:
        """Decode a stream entry: its tickers listed (events before the revs) or named by a rev, which
        ``universe`` (:meth:`MarketStore.universe`) resolves."""
        eid = decode_str(entry_id, key=TICKS_KEY)
        key = f"{TICKS_KEY}[{eid}]"
        rev = fields.get(b"tickers_rev")
        if rev is not None and b"tickers" not in fields:
            if universe is None:
                raise CorruptDataError(f"{key} names its tickers by rev: decode it through the store")
            tickers = universe(decode_str(rev, key=f"{key}.tickers_rev"))
        else:
            tickers = decode_tickers(fields.get(b"tickers"), key)
        observed = None
        missing = fields.get(b"missing")
        if missing is not None:  # the bitmask of the tickers without a new price (to_fields)
            n = len(tickers)
            if not isinstance(missing, bytes | bytearray) or len(missing) != (n + 7) // 8:
                raise CorruptDataError(f"{key}.missing is not a bitmask of {n} tickers")
            bits = np.unpackbits(np.frombuffer(bytes(missing), dtype=np.uint8), bitorder="little")
            if bits[n:].any():
                raise CorruptDataError(f"{key}.missing marks a ticker past its {n} tickers")
            observed = bits[:n] == 0
        span = decode_float(fields.get(b"span", b"1.0"), key=f"{key}.span")
        if not (math.isfinite(span) and span > 0.0):
            raise CorruptDataError(f"{key}.span is not a positive number of bars: {span!r}")
        return cls(
            version=decode_int(fields.get(b"version"), key=f"{key}.version"),
            ts=decode_float(fields.get(b"ts"), key=f"{key}.ts"),
            tickers=tickers,
            prices=decode_array(fields.get(b"prices"), key=f"{key}.prices", shape=(len(tickers),)),
            bar_ts=decode_float(fields.get(b"bar_ts", b"0"), key=f"{key}.bar_ts"),
            token=decode_str(fields.get(b"token", b""), key=f"{key}.token"),
            reset=decode_int(fields.get(b"reset", b"0"), key=f"{key}.reset") == 1,
            rejected=decode_int(fields.get(b"rejected", b"0"), key=f"{key}.rejected"),
            entry_id=eid,
            observed=observed,
            span=span,
        )


def _decode_tick_entries(
    universe: Callable[[str], tuple[str, ...]], entries: Iterable[Any]
) -> list[tuple[str, TickEvent | None]]:
    out: list[tuple[str, TickEvent | None]] = []
    for entry in entries:
        if entry is None:  # XAUTOCLAIM on 6.2 may list a deleted entry as nil
            continue
        entry_id, fields = entry
        eid = decode_str(entry_id, key=TICKS_KEY)
        if not fields:  # trimmed by MAXLEN while pending
            out.append((eid, None))
            continue
        try:
            out.append((eid, TickEvent.from_fields(entry_id, fields, universe)))
        except StoreError:
            out.append((eid, None))
    return out
