"""Live limits: each portfolio's :class:`~engine.settings.Limits` in the store, versioned, every change audited.

Key ``pf:{<id>}:limits`` (a hash, see :mod:`engine.store.keys`): ``version`` (a counter, +1 per change), ``rev``
(a new random token on every write), ``json`` (every field of the limits, money as exact strings), and ``actor``,
``reason``, ``ts`` of the last change. Until the first change a portfolio has no record and every process uses
the settings' limits (version 0: what warm-up seeded from); the first change (:meth:`LimitsStore.change_limits`:
the Limits page, ``warmup.py --sync``) stores the full limits as version 1, based on the settings' limits with
the change applied, and its audit record holds every field (``before``: the settings' limits of the process that
made it, ``after``: all that became live), since every field, not only the edited one, starts being read from
the store. (Seeding a record eagerly would make a store's first settings win over every later process's file
until a sync; the lazy record keeps "the file, until someone changes a limit live or syncs".) A change is
validated as the settings are (:func:`engine.settings.validate_config`), then the new limits and one audit record
on ``pf:{<id>}:audit`` (``action = "set_limits"``, the changed fields ``before`` and ``after``, actor, reason, the
new version), also appended to ``pf:{<id>}:limits_log`` (the Limits page's history, which the busy audit stream
would bury), are written in one MULTI. A refused change writes nothing. A change may name the version it was
made against (``expected_version``, with its ``expected_rev``: a page's rendered limits): when the stored limits
moved since, it is refused (:class:`LimitsConflictError`, ``LIMITS_CHANGED``) inside the same WATCH, so a stale
form never reverts a colleague's change.

Readers (the gate through :meth:`engine.store.Store.read_trade_view`, the monitor, the pages) read the version
and the ``rev`` first and decode the JSON only when that pair (:func:`limits_token`) changed
(:func:`decode_limits_reply`). The version alone would not do: ``warmup.py --reset`` deletes the record and the
next change is version 1 again, so a reader that held version 1 from before the reset would keep the old limits;
the random ``rev`` never repeats. A portfolio without the key (a store seeded before live limits) uses the
settings' limits; a record that does not decode, or that lost its version, is
:class:`~engine.errors.CorruptDataError` (the gate fails closed on it). A record written before the token existed
has none (its token is ``<version>:``) until its next write.
"""

from __future__ import annotations

import dataclasses
import uuid
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
LIMITS_LOG_MAXLEN = 1_000
"""Most changes ``pf:{<id>}:limits_log`` keeps (``MAXLEN ~``): the Limits page shows the newest 100; every change
stays on the audit stream and in its archive."""
AUDIT_SCAN = 10_000
"""Newest ``pf:{<id>}:audit`` records searched for limit changes of a record written before ``limits_log``."""


class LimitsChangeError(RiskdeskError):
    """A limits change that cannot be applied as asked (bad value, unknown limit, no reason or actor): nothing
    was written."""

    code = "LIMITS_INVALID"
    fix = "correct the value named in the message; see riskdesk.toml [limits] for each limit's meaning"


class LimitsConflictError(LimitsChangeError):
    """The limits changed since the version the change was made against (another risk manager, a sync, a
    reset): nothing was written."""

    code = "LIMITS_CHANGED"
    fix = "reload the limits (the page) to see the current values, then make the change again"


@dataclass(frozen=True)
class StoredLimits:
    """A portfolio's live limits, their version and who changed them last (``actor``, ``reason``, ``ts``)."""

    version: int
    limits: Limits
    actor: str
    reason: str
    ts: float
    rev: str = ""
    """The record's token (new on every write; "" without a record, or for a record written before tokens)."""


@dataclass(frozen=True)
class HeldLimits:
    """What a reader keeps of a portfolio's live limits in its memo (under ``("limits", <id>)``): the limits, their
    version and the record's ``rev`` token they were read under; the reads compare both (:func:`limits_token`)."""

    rev: str
    version: int
    limits: Limits


def new_limits_rev() -> str:
    """A fresh record token: random, so it never repeats across a reset, a flush or a restored backup."""
    return uuid.uuid4().hex


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
    portfolio_id: str, raw_version: Any, raw_rev: Any, raw_json: Any, memo: dict[Any, Any]
) -> HeldLimits | None:
    """The live limits of a read that sent the JSON only when the record's token (:func:`limits_token`) differed
    from the one ``memo`` holds (``raw_json`` None or False: not sent); None when the portfolio has no stored
    limits (use the settings'). ``memo`` keeps what was decoded. Raises :class:`CorruptDataError`."""
    key = PortfolioKeys(portfolio_id).limits
    for raw in (raw_version, raw_rev, raw_json):
        if isinstance(raw, redis.ResponseError):
            raise CorruptDataError(f"{key}: {raw}")
    if raw_version is None:
        return None
    version = decode_int(raw_version, key=f"{key}.version")
    rev = "" if raw_rev is None or raw_rev is False else decode_str(raw_rev, key=f"{key}.rev")
    known = memo.get(("limits", portfolio_id))
    if raw_json is None or raw_json is False:  # not sent: the caller holds this record
        if not isinstance(known, HeldLimits) or (known.version, known.rev) != (version, rev):
            raise CorruptDataError(f"{key}: version {version} has no limits")
        return known
    result = HeldLimits(rev, version, _decode_limits(f"{key}.json", raw_json))
    memo[("limits", portfolio_id)] = result
    return result


def limits_token(version: int, rev: str) -> str:
    """The cache key of a limits record, ``<version>:<rev>``, as the read scripts build it from the stored fields:
    the random ``rev`` tells two records of one version apart (before and after a reset), the version still
    tells a record rewritten without a new ``rev`` (by hand, a restored key) from the one held."""
    return f"{version}:{rev}"


def held_token(memo: Mapping[Any, Any], portfolio_id: str) -> str:
    """The token of the limits ``memo`` holds for the portfolio ("" for none): what a read sends."""
    known = memo.get(("limits", portfolio_id))
    return limits_token(known.version, known.rev) if isinstance(known, HeldLimits) else ""


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
            rev=decode_str(raw.get(b"rev", b""), key=f"{key}.rev"),
        )

    def limits_or(self, portfolio_id: str, fallback: Limits, memo: dict[Any, Any] | None = None) -> Limits:
        """The live limits of the portfolio, ``fallback`` (the settings') when none are stored. With ``memo``
        the JSON is decoded only when the record's token (:func:`limits_token`) changed. Raises the store's
        typed errors."""
        memo = {} if memo is None else memo
        key = PortfolioKeys(portfolio_id).limits
        known = memo.get(("limits", portfolio_id))
        try:
            raw_version, raw_rev = self.client.hmget(key, ["version", "rev"])
            if raw_version is None:
                if self.client.exists(key):
                    raise CorruptDataError(f"{key}: version missing")
                return fallback
            version = decode_int(raw_version, key=f"{key}.version")
            rev = "" if raw_rev is None else decode_str(raw_rev, key=f"{key}.rev")
            if isinstance(known, HeldLimits) and (known.version, known.rev) == (version, rev):
                return known.limits
            raw_version, raw_rev, raw_json = self.client.hmget(key, ["version", "rev", "json"])
        except StoreError:
            raise
        except redis.ConnectionError as exc:
            raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc
        except redis.RedisError as exc:
            raise CorruptDataError(f"{key}: {exc}") from exc
        memo.pop(("limits", portfolio_id), None)
        got = decode_limits_reply(portfolio_id, raw_version, raw_rev, raw_json if raw_json is not None else b"", memo)
        return fallback if got is None else got.limits

    def write_limits(
        self, portfolio_id: str, limits: Limits, version: int, actor: str, reason: str, ts: float, pipe: Conn = None
    ) -> str:
        """Write the whole record with a new ``rev`` token (returned): every write goes through here, so no reader
        keeps limits it cached under an older token."""
        rev = new_limits_rev()
        self._conn(pipe).hset(
            PortfolioKeys(portfolio_id).limits,
            mapping={
                "version": version,
                "rev": rev,
                "json": encode_json(limits_data(limits)),
                "actor": actor,
                "reason": reason,
                "ts": repr(float(ts)),
            },
        )
        return rev

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
        expected_version: int | None = None,
        expected_rev: str | None = None,
    ) -> StoredLimits:
        """Apply ``changes`` (limit name -> new value) to the stored limits (``fallback``, the settings', when
        none are stored), validated as the settings are; write them with the next version and one audit record
        (before/after of the changed fields) in one MULTI. Returns the stored result; a change that changes
        nothing writes nothing and returns what is stored (``create``: unless no record exists yet, then the
        full limits are stored as version 1, ``warmup.py --sync``).

        The first change (no record yet) stores every field, so its audit record holds every field: ``before``
        the ``fallback`` limits (none with ``create``), ``after`` all the stored ones.

        ``expected_version`` (0: no record, the settings' limits) and ``expected_rev`` (that record's
        :attr:`StoredLimits.rev`; "" for version 0): the limits the change was made against, e.g. those a page
        rendered. When the store holds another version (or another record of that version: a reset came in
        between), the change is refused with :class:`LimitsConflictError` (``LIMITS_CHANGED``), checked under the
        same WATCH as the write, and nothing is written.

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
                        _check_expected(portfolio_id, stored, expected_version, expected_rev)
                        planned = plan_limits_change(
                            portfolio_id, stored, fallback, changes, actor=actor, reason=reason, now=now, create=create
                        )
                        if planned is None:
                            pipe.unwatch()
                            return stored or StoredLimits(0, fallback, "", "", 0.0)
                        pipe.multi()
                        rev = self.queue_limits_change(portfolio_id, *planned, pipe)
                        pipe.execute()
                        return dataclasses.replace(planned[0], rev=rev)
                    except redis.WatchError:
                        continue
        except StoreError:
            raise
        except redis.ConnectionError as exc:
            raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc
        except redis.RedisError as exc:
            raise CorruptDataError(f"{key.limits}: {exc}") from exc
        raise LimitsChangeError(f"the limits of {portfolio_id} kept changing under the change; try again")

    def queue_limits_change(
        self, portfolio_id: str, result: StoredLimits, record: Mapping[str, Any], pipe: Conn
    ) -> str:
        """Queue a change planned by :func:`plan_limits_change` in the caller's MULTI (which WATCHes the limits
        key the plan read): the new record and its audit record on ``pf:{<id>}:audit`` and ``:limits_log``.
        Returns the new ``rev`` token. :meth:`change_limits` and a stock split (engine/corporate_actions.py,
        which restates the ticker's position limits in the MULTI that restates the book) write through here."""
        key = PortfolioKeys(portfolio_id)
        rev = self.write_limits(
            portfolio_id, result.limits, result.version, result.actor, result.reason, result.ts, pipe
        )
        self.append_audit(key.audit, dict(record), pipe)
        self.append_audit(key.limits_log, dict(record), pipe, maxlen=LIMITS_LOG_MAXLEN)
        return rev

    def limits_changes(self, portfolio_id: str, count: int = 100) -> list[dict[str, Any]]:
        """Newest limit changes of the portfolio (their audit records), newest first: those of
        ``pf:{<id>}:limits_log`` (every change since the limits record was created, however busy the audit
        stream is). A record written before that log existed (it has no ``rev``) has its changes only on the
        audit stream: then they are searched among its newest :data:`AUDIT_SCAN` records."""
        keys = PortfolioKeys(portfolio_id)
        records = self.read_stream_json(keys.limits_log, count=count)
        version, rev = self.client.hmget(keys.limits, ["version", "rev"])
        if records or version is None or rev is not None:  # a record written with its log (or none at all)
            return records
        scanned = self.read_stream_json(keys.audit, count=AUDIT_SCAN)
        return [r for r in scanned if r.get("action") == LIMITS_ACTION][:count]


def plan_limits_change(
    portfolio_id: str,
    stored: StoredLimits | None,
    fallback: Limits,
    changes: Mapping[str, Any],
    *,
    actor: str,
    reason: str,
    now: float,
    create: bool = False,
) -> tuple[StoredLimits, dict[str, Any]] | None:
    """The limits ``changes`` make of ``stored`` (``fallback``, the settings', when none are stored), validated as
    the settings are, as the next version and its audit record (``before``/``after`` of the changed fields; of
    every field on the first record, :meth:`LimitsStore.change_limits`); None when nothing changes (and a record
    exists, or ``create`` is not asked). Raises :class:`LimitsChangeError`."""
    current = stored.limits if stored is not None else fallback
    version = stored.version if stored is not None else 0
    new = validate_limits({**limits_data(current), **changes}, f"limits[{portfolio_id}]")
    before, after = changed_fields(current, new)
    if not after and not (stored is None and create):
        return None
    if stored is None:  # the first record: every limit becomes live from the store
        before, after = ({} if create else limits_data(current)), limits_data(new)
    result = StoredLimits(version + 1, new, actor.strip(), reason.strip(), float(now))
    record = {
        "ts": float(now), "actor": result.actor, "action": LIMITS_ACTION,
        "version": result.version, "reason": result.reason, "before": before, "after": after,
    }  # fmt: skip
    return result, record


def _check_expected(
    portfolio_id: str, stored: StoredLimits | None, expected_version: int | None, expected_rev: str | None
) -> None:
    """Raise :class:`LimitsConflictError` unless ``stored`` is the record the change was made against."""
    if expected_version is None:
        return
    version, rev = (stored.version, stored.rev) if stored is not None else (0, "")
    if version == expected_version and (expected_rev is None or rev == expected_rev):
        return
    if stored is None:
        raise LimitsConflictError(
            f"the limits of {portfolio_id} are the settings' again (version 0: the store was reset) since you opened "
            f"them at version {expected_version}; reload and make your change again"
        )
    reset = " (a new record of that version: the store was reset)" if version == expected_version else ""
    raise LimitsConflictError(
        f"the limits of {portfolio_id} were changed by {stored.actor} since you opened them at version "
        f"{expected_version}: now version {version}{reset}, {stored.reason!r}; reload and make your change again"
    )
