"""Market loads and the desk's book: the market epoch, restarting the drawdown references, and a reset that
keeps the audit trail.

Keys: ``mkt:{m}:epoch`` (a counter), and of each portfolio ``pf:{<id>}:peaks`` and ``pf:{<id>}:marks`` (see
:mod:`engine.store.keys`). The epoch is bumped in the same transaction that replaces the market (a history
loaded into a seeded store, a reset): the stream daemon marks its first bar after a new epoch as a ``reset``
bar (no return computed across the two markets). The equity peaks are restarted only by the monitor on a
replay's reset bar (its data clock restarted, logic/monitor.py): a reloaded market keeps them (engine/reload.py)
and a reset deletes them with every other key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from engine.store.base import Conn, StoreBase
from engine.store.codec import decode_float, decode_int, decode_json, encode_json
from engine.store.keys import DIVIDENDS_KEY, EPOCH_KEY, GLOBAL_AUDIT_KEY, REFERENCE_KEY, SPLITS_KEY, PortfolioKeys

AUDIT_TRAIL_SUFFIXES = (":audit", ":checks", ":trades", ":alert_log", ":deliveries")
"""Append-only logs of a portfolio that a reset keeps unless told to wipe them (with ``rd:audit``)."""


class BookStore(StoreBase):
    """The market epoch, restarting drawdown references, the audit-keeping reset, and the stock splits and cash
    dividends applied (``mkt:{m}:splits``, ``pf:{<id>}:splits``: engine/corporate_actions.py; ``mkt:{m}:dividends``,
    ``pf:{<id>}:dividends``: engine/dividends.py)."""

    def read_market_epoch(self, conn: Conn = None) -> int:
        """The market epoch (0 when none was ever bumped)."""
        raw = self._conn(conn).get(EPOCH_KEY)
        return 0 if raw is None else decode_int(raw, key=EPOCH_KEY)

    def bump_market_epoch(self, pipe: Conn = None) -> None:
        """Start a new market epoch (INCR; in the caller's MULTI with the market it replaces)."""
        self._conn(pipe).incr(EPOCH_KEY)

    def read_split(self, split_id: str, portfolio_id: str | None = None, conn: Conn = None) -> dict[str, Any] | None:
        """The record of stock split ``split_id`` applied to the market (``portfolio_id`` None) or to that
        portfolio's book; None when it was not applied there (engine/corporate_actions.py)."""
        key = SPLITS_KEY if portfolio_id is None else PortfolioKeys(portfolio_id).splits
        return self._read_applied(key, split_id, conn)

    def read_splits(self, conn: Conn = None) -> dict[str, dict[str, Any]]:
        """Every stock split applied to the market, by split id: what a new split of a ticker is checked against
        (a second split with no print since is refused, engine/corporate_actions.py)."""
        return self._read_all_applied(SPLITS_KEY, conn)

    def record_split(
        self, split_id: str, record: Mapping[str, Any], portfolio_id: str | None = None, pipe: Conn = None
    ) -> None:
        """Mark split ``split_id`` applied to the market or to one book, in the MULTI that applies it."""
        key = SPLITS_KEY if portfolio_id is None else PortfolioKeys(portfolio_id).splits
        self._conn(pipe).hset(key, split_id, encode_json(dict(record)))

    def read_dividend(
        self, dividend_id: str, portfolio_id: str | None = None, conn: Conn = None
    ) -> dict[str, Any] | None:
        """The record of cash dividend ``dividend_id`` applied to the market (``portfolio_id`` None) or booked to
        that portfolio's book; None when it was not applied there (engine/dividends.py)."""
        key = DIVIDENDS_KEY if portfolio_id is None else PortfolioKeys(portfolio_id).dividends
        return self._read_applied(key, dividend_id, conn)

    def read_dividends(self, conn: Conn = None) -> dict[str, dict[str, Any]]:
        """Every cash dividend applied to the market, by dividend id: what a new dividend of a ticker is checked
        against (a second one with no print since is refused, engine/dividends.py)."""
        return self._read_all_applied(DIVIDENDS_KEY, conn)

    def record_dividend(
        self, dividend_id: str, record: Mapping[str, Any], portfolio_id: str | None = None, pipe: Conn = None
    ) -> None:
        """Mark dividend ``dividend_id`` applied to the market or to one book, in the MULTI that applies it."""
        key = DIVIDENDS_KEY if portfolio_id is None else PortfolioKeys(portfolio_id).dividends
        self._conn(pipe).hset(key, dividend_id, encode_json(dict(record)))

    def _read_applied(self, key: str, action_id: str, conn: Conn) -> dict[str, Any] | None:
        raw = self._conn(conn).hget(key, action_id)
        return None if raw is None else dict(decode_json(raw, key=f"{key}.{action_id}"))

    def _read_all_applied(self, key: str, conn: Conn) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for field, value in self._conn(conn).hgetall(key).items():
            action_id = field.decode() if isinstance(field, bytes) else str(field)
            out[action_id] = dict(decode_json(value, key=f"{key}.{action_id}"))
        return out

    def read_reference_ts(self, conn: Conn = None) -> float | None:
        """The time stamp of the stored collar reference prices (None: no reference stored)."""
        raw = self._conn(conn).hget(REFERENCE_KEY, "ts")
        return None if raw is None else decode_float(raw, key=f"{REFERENCE_KEY}.ts")

    def restart_peaks(self, portfolio_ids: Iterable[str], pipe: Conn = None) -> None:
        """Forget the equity peaks and position excursions: drawdowns restart from the next equity seen."""
        keys = [k for pid in portfolio_ids for k in (PortfolioKeys(pid).peaks, PortfolioKeys(pid).marks)]
        if pipe is None:
            if keys:
                self.client.delete(*keys)  # a RedisCluster client splits a multi-key DEL by slot itself
            return
        for key in keys:  # in a MULTI: one DEL per key (a Redis Cluster pipeline refuses a multi-key DEL)
            pipe.delete(key)

    def audit_trail_keys(self) -> list[bytes]:
        """The keys a reset keeps: the global audit stream and every portfolio's append-only logs."""
        return [
            k for k in self.all_keys()
            if k == GLOBAL_AUDIT_KEY.encode() or (k.startswith(b"pf:") and k.decode().endswith(AUDIT_TRAIL_SUFFIXES))
        ]  # fmt: skip

    def reset_keys(self, *, keep_audit: bool) -> list[bytes]:
        """Every Riskdesk key a reset deletes: all of them but the epoch, and the audit trail when kept."""
        keep = {EPOCH_KEY.encode(), *(self.audit_trail_keys() if keep_audit else [])}
        return [k for k in self.all_keys() if k not in keep]
