"""The desk's audit trail as one read: every append-only log the Audit page merges, and the record of a refused
pre-trade check.

Sources (key names in :mod:`engine.store.keys`)::

    rd:audit                 rule edits, HALT ALL / REDUCE ALL, warm-up runs (seed, reload, reset)
    pf:{<id>}:trades         fills and refused executions (the trade log)
    pf:{<id>}:audit          trading-state changes, limit changes, automated actions, book syncs
    pf:{<id>}:checks         refused pre-trade checks (:meth:`AuditStore.append_check_record`)
    pf:{<id>}:alert_log      alert transitions (acknowledgements and resolutions among them)

Refused checks have a stream of their own, bounded by :data:`CHECK_LOG_MAXLEN`: a check changes nothing and is
open to every role, viewers included, so however many are made they can never trim a change record out of
``pf:{<id>}:audit``.

A reset keeps every one of them (:data:`engine.store.book.AUDIT_TRAIL_SUFFIXES` with ``rd:audit``): only
``warmup.py --reset --wipe-audit`` deletes them, and a re-seed or ``--sync`` only appends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from engine.errors import CorruptDataError, StoreUnavailableError
from engine.store.base import Conn, StoreBase
from engine.store.codec import decode_json, decode_str
from engine.store.keys import GLOBAL_AUDIT_KEY, PortfolioKeys

CHECK_REFUSED_ACTION = "check_refused"
"""The ``action`` of a refused pre-trade check's record on ``pf:{<id>}:checks``."""
CHECK_LOG_MAXLEN = 10_000
"""Approximate bound of a portfolio's refused-check stream (XADD MAXLEN ~): a log of read-only questions, not of
changes, so its oldest records may go; the changes' own stream (``pf:{<id>}:audit``) is never trimmed by it."""
PORTFOLIO_SOURCES = ("trades", "audit", "checks", "alert_log")
"""The portfolio streams of the audit trail (attribute names of :class:`~engine.store.keys.PortfolioKeys`)."""


@dataclass(frozen=True)
class AuditTrail:
    """The newest records of every audit source, newest first, each with its stream ``id``."""

    global_records: list[dict[str, Any]] = field(default_factory=list)
    """``rd:audit``."""
    portfolios: Mapping[str, Mapping[str, list[dict[str, Any]]]] = field(default_factory=dict)
    """portfolio id -> source (:data:`PORTFOLIO_SOURCES`) -> records."""


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
    """The audit trail's sources in one round trip, and refused checks."""

    def read_audit_trail(self, portfolio_ids: Iterable[str], count: int) -> AuditTrail:
        """The newest ``count`` records of ``rd:audit`` and of each portfolio's audit sources (one pipeline).

        Raises :class:`StoreUnavailableError` when Redis cannot be reached and :class:`CorruptDataError` for a
        key of the wrong type or a record that does not decode.
        """
        ids = list(dict.fromkeys(portfolio_ids))
        keys = [GLOBAL_AUDIT_KEY] + [getattr(PortfolioKeys(pid), s) for pid in ids for s in PORTFOLIO_SOURCES]
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.xrevrange(key, count=count)
                replies = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc
        decoded = [_decode_entries(key, reply) for key, reply in zip(keys, replies, strict=True)]
        portfolios: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for n, pid in enumerate(ids):
            chunk = decoded[1 + n * len(PORTFOLIO_SOURCES) : 1 + (n + 1) * len(PORTFOLIO_SOURCES)]
            portfolios[pid] = dict(zip(PORTFOLIO_SOURCES, chunk, strict=True))
        return AuditTrail(decoded[0], portfolios)

    def append_check_record(self, portfolio_id: str, record: Mapping[str, Any], pipe: Conn = None) -> None:
        """Append a refused pre-trade check (``action`` = :data:`CHECK_REFUSED_ACTION`) to the portfolio's
        refused-check stream (``pf:{<id>}:checks``, at most about :data:`CHECK_LOG_MAXLEN` records), never to its
        audit stream of changes."""
        record = {**record, "action": CHECK_REFUSED_ACTION}
        self.append_audit(PortfolioKeys(portfolio_id).checks, record, pipe, maxlen=CHECK_LOG_MAXLEN)
