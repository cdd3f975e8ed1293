"""The connection every part of the store shares, the schema guard, and the generic JSON hash and stream I/O.

Each domain module of :mod:`engine.store` adds its typed reads and writes as a mixin over :class:`StoreBase`;
:class:`engine.store.Store` composes them over one client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import redis

from engine.errors import CorruptDataError, SchemaMismatchError, StoreEmptyError, StoreUnavailableError
from engine.store.codec import decode_int, decode_json, decode_str, encode_json
from engine.store.keys import KEY_PATTERNS, MARKET_KEY, SCHEMA_KEY, SCHEMA_VERSION
from engine.store.slots import is_cluster

Conn = Any
"""A ``redis.Redis`` or a ``redis.client.Pipeline`` (in WATCH mode its reads run at once)."""


class StoreBase:
    """Typed reads and writes over one Redis connection.

    Every read method takes an optional ``conn`` so a caller can run it on a pipeline in WATCH mode, and every
    write method an optional ``pipe`` so a caller can fold it into its own MULTI transaction.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def _conn(self, conn: Conn) -> Conn:
        """``conn`` (a caller's pipeline) or the plain client; typed loosely: the codec checks every reply."""
        return conn if conn is not None else self.client

    def _eval(self, conn: Conn, source: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run the Lua script ``source`` on ``keys`` and ``args`` through ``conn`` (or the client).

        On one server by its SHA (EVALSHA): redis-py's :class:`~redis.commands.core.Script` loads it first when
        the server does not hold it (a pipeline checks once per execute, before its MULTI), so a monitor's tick
        does not send and hash each script's text a thousand times. Elsewhere (a Redis Cluster's slot
        transaction or pipeline) by its text, EVAL by name: those pipelines do not load scripts."""
        c = self._conn(conn)
        if isinstance(c, redis.Redis | redis.client.Pipeline):
            scripts = self.__dict__.setdefault("_scripts", {})
            script = scripts.get(source)
            if script is None:
                script = scripts[source] = self.client.register_script(source)
            return script(keys=list(keys), args=list(args), client=c)
        return c.execute_command("EVAL", source, len(keys), *keys, *args)

    def _eval_per_key(self, source: str, keys: Sequence[str]) -> list[Any]:
        """Run a read-only script whose reply holds one element per key of KEYS, in order: over every key in one
        call on one server; on a Redis Cluster, where a script may touch one slot only, one call per key,
        pipelined."""
        if not keys:
            return []
        if is_cluster(self.client):
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                self._eval(pipe, source, [key], [])
            return [reply[0] for reply in pipe.execute()]
        return list(self._eval(None, source, keys, []))

    # -- schema ----------------------------------------------------------------------------------------------
    def schema_version(self, conn: Conn = None) -> int | None:
        raw = self._conn(conn).get(SCHEMA_KEY)
        return None if raw is None else decode_int(raw, key=SCHEMA_KEY)

    def require_schema(self, conn: Conn = None) -> None:
        """Raise unless the store holds this code's layout."""
        found = self.schema_version(conn)
        if found is None:
            raise StoreEmptyError("the store is empty (no schema version)")
        if found != SCHEMA_VERSION:
            raise SchemaMismatchError(f"store layout version {found}, this code reads {SCHEMA_VERSION}")

    def write_schema(self, pipe: Conn = None) -> None:
        self._conn(pipe).set(SCHEMA_KEY, SCHEMA_VERSION)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc

    # -- JSON streams (audit trails, logs) -------------------------------------------------------------------
    def append_audit(self, key: str, record: Mapping[str, Any], pipe: Conn = None, maxlen: int | None = None) -> None:
        """Append a JSON record to an audit stream (``PortfolioKeys(..).audit`` or :data:`GLOBAL_AUDIT_KEY`).

        An audit stream is never trimmed here: the archiver (engine/archive.py) copies its older records to files
        and only then trims them. ``maxlen`` (``MAXLEN ~``) is for logs that are not audit records (the backtest
        log), whose oldest entries may go."""
        fields = {"json": encode_json(dict(record))}
        if maxlen is None:
            self._conn(pipe).xadd(key, fields)
        else:
            self._conn(pipe).xadd(key, fields, maxlen=maxlen, approximate=True)

    def read_stream_json(
        self, key: str, count: int = 100, newest_first: bool = True, conn: Conn = None
    ) -> list[dict[str, Any]]:
        """Newest (or oldest) ``count`` JSON records of a stream, each with its stream ``id``."""
        c = self._conn(conn)
        entries = c.xrevrange(key, count=count) if newest_first else c.xrange(key, count=count)
        return self.decode_stream_json(key, entries)

    @staticmethod
    def decode_stream_json(key: str, entries: list[Any]) -> list[dict[str, Any]]:
        """The JSON records of ``key``'s stream entries as XRANGE / XREVRANGE returned them (a pipeline's reply),
        each with its stream ``id``."""
        out = []
        for entry_id, fields in entries:
            record = decode_json(fields.get(b"json"), key=f"{key}[{entry_id!r}]")
            if not isinstance(record, dict):
                raise CorruptDataError(f"{key}: record is not an object")
            record["id"] = decode_str(entry_id, key=key)
            out.append(record)
        return out

    # -- JSON hashes (field -> JSON value) -------------------------------------------------------------------
    def read_json_hash(self, key: str, conn: Conn = None) -> dict[str, Any]:
        """Every field of a hash whose values are JSON objects, decoded (``{}`` when the key is missing)."""
        raw = self._conn(conn).hgetall(key)
        out: dict[str, Any] = {}
        for name, value in raw.items():
            field_name = decode_str(name, key=key)
            out[field_name] = decode_json(value, key=f"{key}.{field_name}")
        return out

    def read_field_names(self, key: str, conn: Conn = None) -> list[str]:
        """The field names of a hash (no values: cheap even when the values are large)."""
        return [decode_str(name, key=key) for name in self._conn(conn).hkeys(key)]

    def read_json_fields(self, key: str, names: Iterable[str], conn: Conn = None) -> dict[str, Any]:
        """The named fields of a JSON hash, decoded; fields that vanished meanwhile are left out."""
        names = list(names)
        if not names:
            return {}
        values = self._conn(conn).hmget(key, names)
        return {n: decode_json(v, key=f"{key}.{n}") for n, v in zip(names, values, strict=True) if v is not None}

    def write_json_fields(
        self, key: str, mapping: Mapping[str, Any], pipe: Conn = None, *, encode: Callable[[Any], Any] = encode_json
    ) -> None:
        """HSET each field of ``mapping`` as JSON (``encode``: codec.py's ``encode_json``, or its orjson twin
        ``encode_json_fast`` for writes made every tick)."""
        if mapping:
            self._conn(pipe).hset(key, mapping={k: encode(v) for k, v in mapping.items()})

    def delete_fields(self, key: str, names: Iterable[str], pipe: Conn = None) -> None:
        names = list(names)
        if names:
            self._conn(pipe).hdel(key, *names)

    # -- maintenance -----------------------------------------------------------------------------------------
    def is_seeded(self) -> bool:
        return self.schema_version() is not None and self.client.exists(MARKET_KEY) == 1

    def all_keys(self) -> list[bytes]:
        """Every Riskdesk key (tests and the reset use it; not for hot paths)."""
        out: list[bytes] = []
        for pattern in KEY_PATTERNS:
            out.extend(self.client.scan_iter(match=pattern, count=1000))
        return sorted(out)
