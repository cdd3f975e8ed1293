"""The desk's audit trail read by time: every append-only log the Audit page merges, from a window's start on
(stream ids are Redis's milliseconds; :meth:`AuditStore.read_audit_trail`), and the record of a refused pre-trade
check.

Sources (key names in :mod:`engine.store.keys`)::

    rd:audit                 rule edits, HALT ALL / REDUCE ALL, warm-up runs (seed, reload, reset)
    pf:{<id>}:trades         fills and refused executions (the trade log)
    pf:{<id>}:audit          trading-state changes, limit changes, automated actions, book syncs
    pf:{<id>}:checks         refused pre-trade checks (:meth:`AuditStore.append_check_record`)
    pf:{<id>}:alert_log      alert transitions (acknowledgements and resolutions among them)

Refused checks have a stream of their own: a check changes nothing and is open to every role, viewers included,
so however many are made they never sit among the change records of ``pf:{<id>}:audit``.

A reset keeps every one of them (:data:`engine.store.book.AUDIT_TRAIL_SUFFIXES` with ``rd:audit``): only
``warmup.py --reset --wipe-audit`` deletes them, and a re-seed or ``--sync`` only appends.

Retention: no append trims an audit stream. The archiver (engine/archive.py) copies each stream's older records
to append-only files, fsyncs them, and only then trims exactly those (:meth:`AuditStore.trim_stream_through`,
``XTRIM MINID``); this module gives it the streams (:data:`ARCHIVED_SOURCES` of every portfolio, and
``rd:audit``), their raw entries and each stream's own bound in Redis (:func:`redis_bound`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from engine.errors import CorruptDataError, StoreUnavailableError
from engine.store import notifications, trading
from engine.store.base import Conn, StoreBase
from engine.store.codec import decode_float, decode_int, decode_json, decode_str
from engine.store.keys import ARCHIVE_KEY, GLOBAL_AUDIT_KEY, PortfolioKeys

CHECK_REFUSED_ACTION = "check_refused"
"""The ``action`` of a refused pre-trade check's record on ``pf:{<id>}:checks``."""
CHECK_LOG_MAXLEN = 10_000
"""Most refused checks a portfolio's stream keeps in Redis (a log of read-only questions, not of changes): a bound
the archiver applies after copying the older ones to the archive (:func:`redis_bound`), never a trim on append."""
PORTFOLIO_SOURCES = ("trades", "audit", "checks", "alert_log")
"""The portfolio streams of the audit trail (attribute names of :class:`~engine.store.keys.PortfolioKeys`)."""
ARCHIVED_SOURCES = (*PORTFOLIO_SOURCES, "deliveries")
"""The portfolio streams the archiver moves to files, with ``rd:audit``: the Audit page's sources and the delivery
log, i.e. every log a reset keeps (:data:`engine.store.book.AUDIT_TRAIL_SUFFIXES`)."""
AUDIT_PAGE = 2000
"""Entries one ``XREVRANGE`` of :meth:`AuditStore.read_audit_trail` reads from a stream: a short command for Redis
(the gate shares it), and every stream's page of a round goes in one pipeline."""
AUDIT_READ_CAP = 50_000
"""Most records :meth:`AuditStore.read_audit_trail` reads in all (every stream of the window together): the Audit
page's bound on a bad day (about a second to read and lay out 50,000 records); past it the trail names the streams
it cut (:attr:`AuditTrail.cut`) and the page says so. Redis may hold more (``archive.keep_entries`` per stream)."""


@dataclass(frozen=True)
class AuditTrail:
    """The records of every audit source from a time on, newest first, each with its stream ``id``."""

    global_records: list[dict[str, Any]] = field(default_factory=list)
    """``rd:audit``."""
    portfolios: Mapping[str, Mapping[str, list[dict[str, Any]]]] = field(default_factory=dict)
    """portfolio id -> source (:data:`PORTFOLIO_SOURCES`) -> records."""
    cut: Mapping[str, str] = field(default_factory=dict)
    """Streams read only in part (the read's cap was reached): stream key -> the oldest entry id read; the
    stream's older records from :attr:`since_ms` on were not read. A stream none of whose records was read (a cap
    below the number of streams) maps to the id just above its newest entry in range. Empty when every record in
    range was read."""
    since_ms: int | None = None
    """The oldest stream id (milliseconds) the read asked for; None: everything each stream holds."""


@dataclass(frozen=True)
class StreamEntry:
    """One stream entry as Redis holds it: its id (``<ms>-<seq>``) and its fields, values undecoded."""

    id: str
    fields: Mapping[str, bytes]


@dataclass(frozen=True)
class StreamHead:
    """What the archiver checks first: a stream's length and its oldest entry's id (None when empty)."""

    key: str
    length: int
    oldest: str | None


@dataclass(frozen=True)
class ArchiveState:
    """The archiver's state as it last wrote it (:data:`~engine.store.keys.ARCHIVE_KEY`)."""

    directory: str
    """Absolute path of the archive's root."""
    keep_seconds: float
    keep_entries: int
    archived: int
    """Records moved to the archive since this state was first written (a reset deletes it)."""
    last_run: float


def parse_stream_id(stream_id: str) -> tuple[int, int]:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)``; ValueError for anything else."""
    ms, sep, seq = stream_id.partition("-")
    if not (sep and ms.isdigit() and seq.isdigit()):
        raise ValueError(f"{stream_id!r} is not a stream id")
    return int(ms), int(seq)


def next_stream_id(stream_id: str) -> str:
    """The smallest id after ``stream_id``: ``XTRIM MINID next_stream_id(last)`` removes ``last`` and everything
    before it, nothing after."""
    ms, seq = parse_stream_id(stream_id)
    return f"{ms}-{seq + 1}" if seq < 2**64 - 1 else f"{ms + 1}-0"


def redis_bound(key: str) -> int | None:
    """The stream's own bound in Redis, besides ``archive.keep_entries``: the refused-check, delivery and trade
    logs keep at most :data:`CHECK_LOG_MAXLEN`, :data:`~engine.store.notifications.DELIVERY_LOG_MAXLEN` and
    :data:`~engine.store.trading.TRADE_LOG_MAXLEN` records (read when called); None for the others."""
    source = key.rsplit(":", 1)[-1] if key.startswith("pf:") else ""
    bounds = {
        "checks": CHECK_LOG_MAXLEN,
        "deliveries": notifications.DELIVERY_LOG_MAXLEN,
        "trades": trading.TRADE_LOG_MAXLEN,
    }
    return bounds.get(source)


def _portfolio_stream(key: str) -> bool:
    """Whether ``key`` is one of :data:`ARCHIVED_SOURCES` of some portfolio (spelled as :class:`PortfolioKeys`
    spells it)."""
    if not key.startswith("pf:{") or "}:" not in key:
        return False
    pid, source = key[len("pf:{") :].rsplit("}:", 1)
    return source in ARCHIVED_SOURCES and getattr(PortfolioKeys(pid), source) == key


def _decode_entries(key: str, entries: Any) -> list[dict[str, Any]]:
    if isinstance(entries, redis.ResponseError):
        raise CorruptDataError(f"{key}: {entries}")
    out = []
    for entry_id, fields in entries or []:
        record = decode_json(fields.get(b"json"), key=f"{key}[{entry_id!r}]")
        if not isinstance(record, dict):
            raise CorruptDataError(f"{key}: record is not an object")
        record["id"] = decode_str(entry_id, key=key)
        out.append(record)
    return out


class AuditStore(StoreBase):
    """The audit trail's sources read by time (one round trip in the normal case), and refused checks."""

    def read_audit_trail(
        self,
        portfolio_ids: Iterable[str],
        limit: int = AUDIT_READ_CAP,
        *,
        since_ms: int | None = None,
        page: int = AUDIT_PAGE,
    ) -> AuditTrail:
        """Every record of ``rd:audit`` and of each portfolio's audit sources whose stream id is at least
        ``since_ms`` (milliseconds, inclusive; None: everything the stream holds), newest first, at most ``limit``
        records in all.

        Read by time, not by count: each stream is read from its newest entry down to ``since_ms`` in pages of
        ``page`` entries (``XREVRANGE``), every stream's next page in one pipeline, so a flood of records in one
        stream (fills, refused checks, automated steps) never hides an older record of the window, and the
        normal case is one round trip. The pages are shared out evenly among the streams still being read; once
        ``limit`` records are read, each stream that still holds older entries in range is named in
        :attr:`AuditTrail.cut` (with the oldest id read), never left out silently.

        Raises :class:`StoreUnavailableError` when Redis cannot be reached and :class:`CorruptDataError` for a
        key of the wrong type or a record that does not decode.
        """
        ids = list(dict.fromkeys(portfolio_ids))
        keys = [GLOBAL_AUDIT_KEY] + [getattr(PortfolioKeys(pid), s) for pid in ids for s in PORTFOLIO_SOURCES]
        low = "-" if since_ms is None else str(max(int(since_ms), 0))
        read: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
        cursor = dict.fromkeys(keys, "+")  # the next page's upper bound ("(<id>": exclusive)
        active, total = list(keys), 0
        page, limit = max(int(page), 1), max(int(limit), 1)
        while active and total < limit:
            room = limit - total
            count = min(page, max(1, room // len(active)))
            # fewer records left than streams: one each to the first ``room`` streams only, never past ``limit``
            reading = active[:room]
            replies = self._pipelined([(key, cursor[key], count) for key in reading], low)
            done = set()
            for key, reply in zip(reading, replies, strict=True):
                records = _decode_entries(key, reply)
                read[key].extend(records)
                total += len(records)
                if len(records) == count:
                    cursor[key] = f"({records[-1]['id']}"
                else:
                    done.add(key)
            active = [key for key in active if key not in done]  # a stream not read this round stays
        cut: dict[str, str] = {}
        if active:  # the cap was reached: which streams still hold older records in range (one entry each)
            probes = self._pipelined([(key, cursor[key], 1) for key in active], low)
            for key, more in zip(active, probes, strict=True):
                newest = _decode_entries(key, more)
                if newest and read[key]:
                    cut[key] = str(read[key][-1]["id"])
                elif newest:  # none of it read (fewer records allowed than streams): cut above its newest
                    ms, _, seq = str(newest[0]["id"]).partition("-")
                    cut[key] = f"{ms}-{int(seq or 0) + 1}"
        portfolios = {pid: {s: read[getattr(PortfolioKeys(pid), s)] for s in PORTFOLIO_SOURCES} for pid in ids}
        return AuditTrail(read[GLOBAL_AUDIT_KEY], portfolios, cut, since_ms)

    def _pipelined(self, pages: list[tuple[str, str, int]], low: str = "-") -> list[Any]:
        """One ``XREVRANGE key max low COUNT count`` per ``(key, max, count)`` in one pipeline (errors as replies,
        for :func:`_decode_entries`)."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for key, high, count in pages:
                    pipe.xrevrange(key, max=high, min=low, count=count)
                return list(pipe.execute(raise_on_error=False))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc

    def append_check_record(self, portfolio_id: str, record: Mapping[str, Any], pipe: Conn = None) -> None:
        """Append a refused pre-trade check (``action`` = :data:`CHECK_REFUSED_ACTION`) to the portfolio's
        refused-check stream (``pf:{<id>}:checks``, at most about :data:`CHECK_LOG_MAXLEN` records), never to its
        audit stream of changes."""
        record = {**record, "action": CHECK_REFUSED_ACTION}
        self.append_audit(PortfolioKeys(portfolio_id).checks, record, pipe)

    # -- the archiver's reads and trims (engine/archive.py) ---------------------------------------------------
    def archived_stream_keys(self) -> list[str]:
        """Every stream the archiver looks after: ``rd:audit`` and each :data:`ARCHIVED_SOURCES` stream of every
        portfolio that has one, registered or not (a reset keeps the logs of a portfolio it drops). Found by
        SCAN (streams only), sorted."""
        found = {
            name
            for raw in self.client.scan_iter(match="pf:*", count=1000, _type="stream")
            if _portfolio_stream(name := decode_str(raw, key="pf:*"))
        }
        if self.client.type(GLOBAL_AUDIT_KEY) in (b"stream", "stream"):
            found.add(GLOBAL_AUDIT_KEY)
        return sorted(found)

    def stream_heads(self, keys: Iterable[str]) -> list[StreamHead]:
        """Length and oldest entry id of each stream (one pipeline)."""
        keys = list(keys)
        if not keys:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.xlen(key)
                pipe.xrange(key, count=1)
            replies = pipe.execute()
        out = []
        for n, key in enumerate(keys):
            length, oldest = replies[2 * n], replies[2 * n + 1]
            first = decode_str(oldest[0][0], key=key) if oldest else None
            out.append(StreamHead(key, int(length), first))
        return out

    def stream_length(self, key: str) -> int:
        return int(self.client.xlen(key))

    def read_stream_entries(
        self, key: str, *, after: str | None = None, through: str | None = None, count: int = 1000
    ) -> list[StreamEntry]:
        """The oldest ``count`` entries of ``key`` whose id is after ``after`` (exclusive; None: from the first)
        and at most ``through`` (inclusive; None: to the newest), oldest first, fields undecoded."""
        start = "-" if after is None else f"({after}"
        entries = self._conn(None).xrange(key, min=start, max="+" if through is None else through, count=count)
        return [
            StreamEntry(
                decode_str(entry_id, key=key),
                {decode_str(name, key=key): value for name, value in fields.items()},
            )
            for entry_id, fields in entries
        ]

    def trim_stream_through(self, key: str, last_id: str) -> int:
        """Delete ``last_id`` and every older entry of ``key`` (``XTRIM MINID``, exact), nothing newer: an entry
        appended meanwhile has a greater id and stays. Returns how many were deleted."""
        return int(self.client.xtrim(key, minid=next_stream_id(last_id), approximate=False))

    def write_archive_state(
        self, directory: str, keep_seconds: float, keep_entries: int, archived: int, now: float
    ) -> None:
        """Record where the archiver archives and what it keeps (``archived``: records moved by this run)."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(
                ARCHIVE_KEY,
                mapping={
                    "directory": directory,
                    "keep_seconds": repr(float(keep_seconds)),
                    "keep_entries": str(int(keep_entries)),
                    "last_run": repr(float(now)),
                },
            )
            pipe.hincrby(ARCHIVE_KEY, "archived", int(archived))
            pipe.execute()

    def read_archive_state(self, conn: Conn = None) -> ArchiveState | None:
        """The archiver's state, or None when no archiver has run on this store (or since its last reset)."""
        raw = self._conn(conn).hgetall(ARCHIVE_KEY)
        if not raw:
            return None
        fields = {decode_str(k, key=ARCHIVE_KEY): v for k, v in raw.items()}

        def field_of(name: str) -> Any:
            return fields.get(name, b"0" if name in ("archived", "last_run") else None)

        return ArchiveState(
            directory=decode_str(field_of("directory"), key=f"{ARCHIVE_KEY}.directory"),
            keep_seconds=decode_float(field_of("keep_seconds"), key=f"{ARCHIVE_KEY}.keep_seconds"),
            keep_entries=decode_int(field_of("keep_entries"), key=f"{ARCHIVE_KEY}.keep_entries"),
            archived=decode_int(field_of("archived"), key=f"{ARCHIVE_KEY}.archived"),
            last_run=decode_float(field_of("last_run"), key=f"{ARCHIVE_KEY}.last_run"),
        )
