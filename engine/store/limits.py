"""Live limits: each portfolio's :class:`~engine.settings.Limits` in the store, versioned, every change audited.

Key ``pf:{<id>}:limits`` (a hash, see :mod:`engine.store.keys`): ``version`` (a counter, +1 per change),
``json`` (every field of the limits, money as exact strings), and ``actor``, ``reason``, ``ts`` of the last
change. Until the first change a portfolio has no record and every process uses the settings' limits (version
0: what warm-up seeded from); the first change (:meth:`LimitsStore.change_limits`: the Limits page,
``warmup.py --sync``) stores the full limits as version 1, based on the settings' limits with the change
applied. (Seeding a record eagerly would make a store's first settings win over every later process's file
until a sync; the lazy record keeps "the file, until someone changes a limit live or syncs".) A change is
validated as the settings are
(:func:`engine.settings.validate_config`), then the new limits and one audit record on ``pf:{<id>}:audit``
(``action = "set_limits"``, only the changed fields ``before`` and ``after``, actor, reason, the new version)
are written in one MULTI. A refused change writes nothing.

Readers (the gate through :meth:`engine.store.Store.read_trade_view`, the monitor, the pages) read the version
first and decode the JSON only when it changed (:func:`decode_limits_reply`). A portfolio without the key (a
store seeded before live limits) uses the settings' limits; a record that does not decode, or that lost its
version, is :class:`~engine.errors.CorruptDataError` (the gate fails closed on it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from engine.errors import ConfigError, CorruptDataError, RiskdeskError, StoreError, StoreUnavailableError
from engine.settings import Limits, validate_config
from engine.store.base import Conn, StoreBase
from engine.store.codec import decode_int, decode_object, decode_str, encode_json
from engine.store.keys import PortfolioKeys

LIMITS_ACTION = "set_limits"
"""The ``action`` of a limits change's audit record."""
CHANGE_RETRIES = 20
"""A change whose limits keep changing under it (another writer) this many times is refused."""


class LimitsChangeError(RiskdeskError):
    """A limits change that cannot be applied as asked (bad value, unknown limit, no reason or actor): nothing
    was written."""

    code = "LIMITS_INVALID"
    fix = "correct the value named in the message; see riskdesk.toml [limits] for each limit's meaning"


@dataclass(frozen=True)
class StoredLimits:
    """A portfolio's live limits, their version and who changed them last (``actor``, ``reason``, ``ts``)."""

    version: int
    limits: Limits
    actor: str
    reason: str
    ts: float


def limits_data(limits: Limits) -> dict[str, Any]:
    """Every field of ``limits`` as plain data (money stays :class:`~decimal.Decimal`, JSON stores it exact)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(limits):
        value = getattr(limits, f.name)
        out[f.name] = dict(value) if isinstance(value, Mapping) else value
    return out


def validate_limits(data: Mapping[str, Any], where: str) -> Limits:
    """``data`` as :class:`Limits`, validated as the settings file is; :class:`LimitsChangeError` if not."""
    try:
        return validate_config(Limits, dict(data), where)
    except ConfigError as exc:
        raise LimitsChangeError(exc.detail) from None


def changed_fields(before: Limits, after: Limits) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields that differ, as (before, after) dicts of plain data."""
    old, new = limits_data(before), limits_data(after)
    names = [name for name in new if old[name] != new[name]]
    return {n: old[n] for n in names}, {n: new[n] for n in names}


def _decode_limits(key: str, raw: Any) -> Limits:
    data = decode_object(raw, key)
    try:
        return validate_config(Limits, data, key)
    except ConfigError as exc:
        raise CorruptDataError(f"{key}: stored limits do not validate ({exc.detail})") from None


def decode_limits_reply(
    portfolio_id: str, raw_version: Any, raw_json: Any, memo: dict[Any, Any]
) -> tuple[int, Limits] | None:
    """The ``(version, limits)`` of a read that sent the JSON only when the version differed from ``memo``'s;
    None when the portfolio has no stored limits (use the settings'). Raises :class:`CorruptDataError`."""
    key = PortfolioKeys(portfolio_id).limits
    if isinstance(raw_version, redis.ResponseError) or isinstance(raw_json, redis.ResponseError):
        raise CorruptDataError(f"{key}: {raw_version if isinstance(raw_version, Exception) else raw_json}")
    if raw_version is None:
        return None
    version = decode_int(raw_version, key=f"{key}.version")
    known = memo.get(("limits", portfolio_id))
    if raw_json is None or raw_json is False:  # not sent: the caller holds this version
        if known is None or known[0] != version:
            raise CorruptDataError(f"{key}: version {version} has no limits")
        return known
    result = (version, _decode_limits(f"{key}.json", raw_json))
    memo[("limits", portfolio_id)] = result
    return result


class LimitsStore(StoreBase):
    """Each portfolio's live limits: read, seed, change (validated and audited)."""

    def read_limits(self, portfolio_id: str, conn: Conn = None) -> StoredLimits | None:
        """The stored limits, or None when the portfolio has none (a store seeded before live limits)."""
        key = PortfolioKeys(portfolio_id).limits
        try:
            raw = self._conn(conn).hgetall(key)
        except redis.ConnectionError as exc:
            raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc
        except redis.RedisError as exc:
            raise CorruptDataError(f"{key}: {exc}") from exc
        if not raw:
            return None
        if b"version" not in raw or b"json" not in raw:
            raise CorruptDataError(f"{key}: version or limits missing")
        return StoredLimits(
            version=decode_int(raw[b"version"], key=f"{key}.version"),
            limits=_decode_limits(f"{key}.json", raw[b"json"]),
            actor=decode_str(raw.get(b"actor", b""), key=f"{key}.actor"),
            reason=decode_str(raw.get(b"reason", b""), key=f"{key}.reason"),
            ts=float(decode_str(raw.get(b"ts", b"0"), key=f"{key}.ts") or 0.0),
        )

    def read_limits_version(self, portfolio_id: str, conn: Conn = None) -> int | None:
        """Only the version (cheap: a reader re-reads the limits when it changed); None without a record. A
        record without a version (damaged) is :class:`CorruptDataError`, not "no record" (the settings')."""
        key = PortfolioKeys(portfolio_id).limits
        raw = self._conn(conn).hget(key, "version")
        if raw is None and self._conn(conn).exists(key):
            raise CorruptDataError(f"{key}: version missing")
        return None if raw is None else decode_int(raw, key=f"{key}.version")

    def limits_or(self, portfolio_id: str, fallback: Limits, memo: dict[Any, Any] | None = None) -> Limits:
        """The live limits of the portfolio, ``fallback`` (the settings') when none are stored. With ``memo``
        the JSON is decoded only when the version changed. Raises the store's typed errors."""
        memo = {} if memo is None else memo
        key = PortfolioKeys(portfolio_id).limits
        known = memo.get(("limits", portfolio_id))
        try:
            version = self.read_limits_version(portfolio_id)
            if version is None:
                return fallback
            if known is not None and known[0] == version:
                return known[1]
            raw_version, raw_json = self.client.hmget(key, ["version", "json"])
        except redis.ConnectionError as exc:
            raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc
        except redis.RedisError as exc:
            raise CorruptDataError(f"{key}: {exc}") from exc
        memo.pop(("limits", portfolio_id), None)
        got = decode_limits_reply(portfolio_id, raw_version, raw_json if raw_json is not None else b"", memo)
        return fallback if got is None else got[1]

    def write_limits(
        self, portfolio_id: str, limits: Limits, version: int, actor: str, reason: str, ts: float, pipe: Conn = None
    ) -> None:
        self._conn(pipe).hset(
            PortfolioKeys(portfolio_id).limits,
            mapping={
                "version": version,
                "json": encode_json(limits_data(limits)),
                "actor": actor,
                "reason": reason,
                "ts": repr(float(ts)),
            },
        )

    def seed_limits(self, portfolio_id: str, limits: Limits, *, actor: str, now: float, pipe: Conn = None) -> None:
        """Store ``limits`` as version 1 without an audit record (tests, tools; changes go through
        :meth:`change_limits`)."""
        self.write_limits(portfolio_id, limits, 1, actor, "seeded from the settings", now, pipe)

    def change_limits(
        self,
        portfolio_id: str,
        changes: Mapping[str, Any],
        *,
        actor: str,
        reason: str,
        now: float,
        fallback: Limits,
        create: bool = False,
    ) -> StoredLimits:
        """Apply ``changes`` (limit name -> new value) to the stored limits (``fallback``, the settings', when
        none are stored), validated as the settings are; write them with the next version and one audit record
        (before/after of the changed fields) in one MULTI. Returns the stored result; a change that changes
        nothing writes nothing and returns what is stored (``create``: unless no record exists yet, then the
        full limits are stored as version 1, ``warmup.py --sync``).

        Raises :class:`LimitsChangeError` (nothing written) for an unknown limit, a bad value, an empty actor or
        reason; the store's typed errors when Redis fails.
        """
        if not isinstance(actor, str) or not actor.strip():
            raise LimitsChangeError("a limits change needs an actor (who made it)")
        if not isinstance(reason, str) or not reason.strip():
            raise LimitsChangeError("a limits change needs a reason")
        if not isinstance(changes, Mapping) or not changes:
            raise LimitsChangeError("no limit to change")
        names = {f.name for f in dataclasses.fields(Limits)}
        unknown = sorted(str(n) for n in changes if n not in names)
        if unknown:
            raise LimitsChangeError(f"unknown limit(s) {unknown}; limits are {sorted(names)}")
        key = PortfolioKeys(portfolio_id)
        try:
            for _ in range(CHANGE_RETRIES):
                with self.client.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(key.limits)
                        stored = self.read_limits(portfolio_id, pipe)
                        current = stored.limits if stored is not None else fallback
                        version = stored.version if stored is not None else 0
                        new = validate_limits({**limits_data(current), **changes}, f"limits[{portfolio_id}]")
                        before, after = changed_fields(current, new)
                        if stored is None and create:  # the first record: every limit, none before
                            before, after = {}, limits_data(new)
                        if not after:
                            pipe.unwatch()
                            return stored or StoredLimits(0, current, "", "", 0.0)
                        result = StoredLimits(version + 1, new, actor.strip(), reason.strip(), float(now))
                        record = {
                            "ts": float(now), "actor": result.actor, "action": LIMITS_ACTION,
                            "version": result.version, "reason": result.reason, "before": before, "after": after,
                        }  # fmt: skip
                        pipe.multi()
                        self.write_limits(portfolio_id, new, result.version, result.actor, result.reason, now, pipe)
                        self.append_audit(key.audit, record, pipe)
                        pipe.execute()
                        return result
                    except redis.WatchError:
                        continue
        except StoreError:
            raise
        except redis.ConnectionError as exc:
            raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc
        except redis.RedisError as exc:
            raise CorruptDataError(f"{key.limits}: {exc}") from exc
        raise LimitsChangeError(f"the limits of {portfolio_id} kept changing under the change; try again")

    def limits_changes(self, portfolio_id: str, count: int = 100) -> list[dict[str, Any]]:
        """Newest limit changes of the portfolio (their audit records), newest first."""
        records = self.read_stream_json(PortfolioKeys(portfolio_id).audit, count=10_000)
        return [r for r in records if r.get("action") == LIMITS_ACTION][:count]
