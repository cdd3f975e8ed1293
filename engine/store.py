"""The Redis schema and codec: the only module that spells a key name or decodes a stored value.

Layout (schema version :data:`SCHEMA_VERSION`)::

    rd:schema                       string   layout version; readers refuse any other
    rd:portfolios                   set      ids of seeded portfolios
    rd:rules                        hash     alert rule id -> JSON (rules edited at run time)
    rd:audit                        stream   global audit records (rule edits, warm-up runs)
    hb:<component>                  hash     heartbeat of a daemon (time, counters, latency)
    mkt:{m}:snapshot                hash     version, ts, tickers (JSON), prices, price_ts, cov (arrays)
    mkt:{m}:stressed                hash     version, tickers (JSON), cov (array): the crisis matrix
    mkt:{m}:reference               hash     tickers (JSON), prices (array), ts, rev: session reference prices
    mkt:{m}:ticks                   stream   one event per accepted bar (version, ts), bounded by MAXLEN
    pf:{<id>}:state                 hash     cash, realized_pnl, fees_paid, account type and margins,
                                             positions_rev (new random token on every positions write)
    pf:{<id>}:positions             hash     ticker -> JSON {qty, avg_price, realized_pnl, ...}
    pf:{<id>}:trading_state         hash     state, reason, actor, ts
    pf:{<id>}:orders                hash     client_order_id -> JSON result (idempotency)
    pf:{<id>}:trades                stream   trade log / audit of every decision and fill
    pf:{<id>}:audit                 stream   trading-state changes and automated actions
    pf:{<id>}:history               stream   snapshot history (entry id = time), trimmed by age
    pf:{<id>}:snapshot              string   latest snapshot JSON
    pf:{<id>}:alerts                hash     rule id -> JSON of the active alert
    pf:{<id>}:alert_log             stream   every alert transition
    pf:{<id>}:deliveries            stream   notification delivery log
    pf:{<id>}:marks                 hash     ticker -> JSON {mfe, mae} excursions of open positions
    pf:{<id>}:rate                  zset     order timestamps for the order-rate throttle

Keys of one portfolio share the hash tag ``{<id>}`` and the market keys share ``{m}``, so every multi-key
transaction stays in one Redis Cluster slot.

Codec: arrays are ``MAGIC | dtype tag | ndim | shape | little-endian float64 bytes`` and every field is checked
on read; everything else is JSON or plain hash fields; money is a decimal string. No pickle: a value that does
not decode raises :class:`~engine.errors.CorruptDataError` and is never executed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from engine.errors import (
    CorruptDataError,
    SchemaMismatchError,
    StoreEmptyError,
    StoreError,
    StoreUnavailableError,
)
from engine.records import (
    MarketHeader,
    MarketSnapshot,
    PortfolioState,
    Position,
    TradingState,
    TradingStatus,
)

SCHEMA_VERSION = 1

Float64Array = npt.NDArray[np.float64]
Conn = Any
"""A ``redis.Redis`` or a ``redis.client.Pipeline`` (in WATCH mode its reads run at once)."""

# -- key names ---------------------------------------------------------------------------------------------------

SCHEMA_KEY = "rd:schema"
PORTFOLIOS_KEY = "rd:portfolios"
RULES_KEY = "rd:rules"
GLOBAL_AUDIT_KEY = "rd:audit"
MARKET_KEY = "mkt:{m}:snapshot"
STRESSED_KEY = "mkt:{m}:stressed"
REFERENCE_KEY = "mkt:{m}:reference"
TICKS_KEY = "mkt:{m}:ticks"


def heartbeat_key(component: str) -> str:
    return f"hb:{component}"


@dataclass(frozen=True)
class PortfolioKeys:
    """Every key of one portfolio; all share the ``{id}`` hash tag."""

    portfolio_id: str

    def _key(self, suffix: str) -> str:
        return f"pf:{{{self.portfolio_id}}}:{suffix}"

    @property
    def state(self) -> str:
        return self._key("state")

    @property
    def positions(self) -> str:
        return self._key("positions")

    @property
    def trading_state(self) -> str:
        return self._key("trading_state")

    @property
    def orders(self) -> str:
        return self._key("orders")

    @property
    def trades(self) -> str:
        return self._key("trades")

    @property
    def audit(self) -> str:
        return self._key("audit")

    @property
    def history(self) -> str:
        return self._key("history")

    @property
    def snapshot(self) -> str:
        return self._key("snapshot")

    @property
    def alerts(self) -> str:
        return self._key("alerts")

    @property
    def alert_log(self) -> str:
        return self._key("alert_log")

    @property
    def deliveries(self) -> str:
        return self._key("deliveries")

    @property
    def marks(self) -> str:
        return self._key("marks")

    @property
    def rate(self) -> str:
        return self._key("rate")

    def all(self) -> tuple[str, ...]:
        return (
            self.state, self.positions, self.trading_state, self.orders, self.trades, self.audit,
            self.history, self.snapshot, self.alerts, self.alert_log, self.deliveries, self.marks, self.rate,
        )  # fmt: skip


# -- codec -------------------------------------------------------------------------------------------------------

_ARRAY_MAGIC = b"RDA1"
_F64_TAG = b"<f8\x00"
_HEADER = struct.Struct("<4s4sI")  # magic, dtype tag, ndim; then ndim x uint64 shape
_MAX_NDIM = 2


def encode_array(array: npt.ArrayLike) -> bytes:
    """Serialise a 1-D or 2-D float64 array: header with dtype and shape, then little-endian raw bytes."""
    arr = np.asarray(array, dtype="<f8")
    if arr.ndim == 0 or arr.ndim > _MAX_NDIM:
        raise ValueError(f"only 1-D and 2-D arrays are stored, got ndim={arr.ndim}")
    header = _HEADER.pack(_ARRAY_MAGIC, _F64_TAG, arr.ndim) + struct.pack(f"<{arr.ndim}Q", *arr.shape)
    return header + np.ascontiguousarray(arr).tobytes()


def decode_array(blob: bytes | None, *, key: str = "?", shape: tuple[int, ...] | None = None) -> Float64Array:
    """Decode :func:`encode_array` output, checking magic, dtype, shape and exact length.

    Returns a fresh, writeable, C-contiguous native float64 array (safe to update in place).
    """
    if blob is None:
        raise StoreEmptyError(f"{key} is missing")
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise CorruptDataError(f"{key}: expected bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < _HEADER.size:
        raise CorruptDataError(f"{key}: array payload truncated ({len(blob)} bytes)")
    magic, tag, ndim = _HEADER.unpack_from(blob)
    if magic != _ARRAY_MAGIC:
        raise CorruptDataError(f"{key}: not a Riskdesk array (bad magic {magic!r})")
    if tag != _F64_TAG:
        raise CorruptDataError(f"{key}: unsupported dtype tag {tag!r}, expected float64")
    if not 1 <= ndim <= _MAX_NDIM:
        raise CorruptDataError(f"{key}: bad ndim {ndim}")
    shape_end = _HEADER.size + 8 * ndim
    if len(blob) < shape_end:
        raise CorruptDataError(f"{key}: array header truncated")
    found = struct.unpack_from(f"<{ndim}Q", blob, _HEADER.size)
    expected_bytes = 8 * math.prod(found)
    if len(blob) - shape_end != expected_bytes:
        raise CorruptDataError(
            f"{key}: payload is {len(blob) - shape_end} bytes, shape {found} needs {expected_bytes}"
        )
    if shape is not None and tuple(found) != tuple(shape):
        raise CorruptDataError(f"{key}: shape {found} does not match expected {shape}")
    return np.frombuffer(blob, dtype="<f8", offset=shape_end).reshape(found).astype(np.float64, copy=True)


def encode_json(value: Any) -> str:
    """JSON with Decimals as strings (exact) and no NaN (not valid JSON)."""
    return json.dumps(value, separators=(",", ":"), default=_json_default, allow_nan=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def decode_json(raw: bytes | str | None, *, key: str = "?") -> Any:
    if raw is None:
        raise StoreEmptyError(f"{key} is missing")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
        return json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptDataError(f"{key}: not valid JSON ({exc})") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def decode_decimal(raw: bytes | str | None, *, key: str = "?") -> Decimal:
    """Exact money: a finite decimal string."""
    if raw is None:
        raise StoreEmptyError(f"{key} is missing")
    try:
        text = raw.decode("ascii") if isinstance(raw, bytes | bytearray) else str(raw)
        value = Decimal(text)
    except (UnicodeDecodeError, InvalidOperation) as exc:
        raise CorruptDataError(f"{key}: {raw!r} is not a decimal") from exc
    if not value.is_finite():
        raise CorruptDataError(f"{key}: {raw!r} is not finite")
    return value


def decode_int(raw: bytes | str | None, *, key: str = "?") -> int:
    if raw is None:
        raise StoreEmptyError(f"{key} is missing")
    try:
        return int(raw)
    except ValueError as exc:
        raise CorruptDataError(f"{key}: {raw!r} is not an integer") from exc


def decode_float(raw: bytes | str | None, *, key: str = "?") -> float:
    if raw is None:
        raise StoreEmptyError(f"{key} is missing")
    try:
        value = float(raw)
    except ValueError as exc:
        raise CorruptDataError(f"{key}: {raw!r} is not a number") from exc
    if not math.isfinite(value):
        raise CorruptDataError(f"{key}: {raw!r} is not finite")
    return value


def decode_str(raw: bytes | str | None, *, key: str = "?") -> str:
    if raw is None:
        raise StoreEmptyError(f"{key} is missing")
    try:
        return raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else str(raw)
    except UnicodeDecodeError as exc:
        raise CorruptDataError(f"{key}: not UTF-8 text") from exc


def _decode_tickers(raw: bytes | None, key: str) -> tuple[str, ...]:
    tickers = decode_json(raw, key=f"{key}.tickers")
    if not isinstance(tickers, list) or not all(isinstance(t, str) for t in tickers):
        raise CorruptDataError(f"{key}.tickers: expected a JSON list of strings")
    if len(set(tickers)) != len(tickers):
        raise CorruptDataError(f"{key}.tickers: duplicate tickers")
    return tuple(tickers)


# -- value objects (defined in engine.records; the codec of each is here) ------------------------------------


def encode_position(position: Position) -> str:
    return encode_json(position.to_dict())


def decode_position(raw: bytes | str, key: str) -> Position:
    data = decode_json(raw, key=key)
    if not isinstance(data, dict):
        raise CorruptDataError(f"{key}: expected an object")
    qty = data.get("qty")
    if not isinstance(qty, int) or isinstance(qty, bool):
        raise CorruptDataError(f"{key}: qty must be an integer")
    return Position(
        qty=qty,
        avg_price=decode_decimal(data.get("avg_price"), key=f"{key}.avg_price"),
        realized_pnl=decode_decimal(data.get("realized_pnl", "0"), key=f"{key}.realized_pnl"),
    )


TRADING_STATES = tuple(TradingState)
"""Every trading state name, in escalating order."""


# -- the store ---------------------------------------------------------------------------------------------------


class Store:
    """Typed reads and writes over one Redis connection.

    Every read method takes an optional ``conn`` so a caller can run it on a pipeline in WATCH mode, and every
    write method an optional ``pipe`` so a caller can fold it into its own MULTI transaction.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def _conn(self, conn: Conn) -> Conn:
        """``conn`` (a caller's pipeline) or the plain client; typed loosely: the codec checks every reply."""
        return conn if conn is not None else self.client

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

    # -- market ----------------------------------------------------------------------------------------------
    def write_market(self, snap: MarketSnapshot, pipe: Conn = None) -> None:
        """Write prices, covariance and version as one hash: one command, so readers never see a mix."""
        n = len(snap.tickers)
        if snap.prices.shape != (n,) or snap.price_ts.shape != (n,) or snap.cov.shape != (n, n):
            raise ValueError(f"market snapshot shapes do not match {n} tickers")
        self._conn(pipe).hset(
            MARKET_KEY,
            mapping={
                "version": int(snap.version),
                "ts": repr(float(snap.ts)),
                "tickers": encode_json(list(snap.tickers)),
                "prices": encode_array(snap.prices),
                "price_ts": encode_array(snap.price_ts),
                "cov": encode_array(snap.cov),
            },
        )

    def read_market_version(self, conn: Conn = None) -> int | None:
        raw = self._conn(conn).hget(MARKET_KEY, "version")
        return None if raw is None else decode_int(raw, key=f"{MARKET_KEY}.version")

    def read_market_header(self, conn: Conn = None) -> MarketHeader:
        """Version, time, tickers and prices in one HMGET (no matrix)."""
        raw = self._conn(conn).hmget(MARKET_KEY, ["version", "ts", "tickers", "prices", "price_ts"])
        return self._decode_header(raw)

    def read_market(self, conn: Conn = None) -> MarketSnapshot:
        """The whole snapshot, matrix included, in one HMGET (consistent by construction)."""
        raw = self._conn(conn).hmget(MARKET_KEY, ["version", "ts", "tickers", "prices", "price_ts", "cov"])
        header = self._decode_header(raw[:5])
        n = len(header.tickers)
        cov = decode_array(raw[5], key=f"{MARKET_KEY}.cov", shape=(n, n))
        return MarketSnapshot(**header.__dict__, cov=cov)

    def _decode_header(self, raw: list[Any]) -> MarketHeader:
        if raw[0] is None:
            raise StoreEmptyError("no market snapshot in the store")
        tickers = _decode_tickers(raw[2], MARKET_KEY)
        n = len(tickers)
        return MarketHeader(
            version=decode_int(raw[0], key=f"{MARKET_KEY}.version"),
            ts=decode_float(raw[1], key=f"{MARKET_KEY}.ts"),
            tickers=tickers,
            prices=decode_array(raw[3], key=f"{MARKET_KEY}.prices", shape=(n,)),
            price_ts=decode_array(raw[4], key=f"{MARKET_KEY}.price_ts", shape=(n,)),
        )

    def write_stressed(self, version: int, tickers: Iterable[str], cov: Float64Array, pipe: Conn = None) -> None:
        tickers = list(tickers)
        if cov.shape != (len(tickers), len(tickers)):
            raise ValueError("stressed matrix shape does not match tickers")
        self._conn(pipe).hset(
            STRESSED_KEY,
            mapping={"version": int(version), "tickers": encode_json(tickers), "cov": encode_array(cov)},
        )

    def read_stressed(self, conn: Conn = None) -> tuple[int, tuple[str, ...], Float64Array]:
        raw = self._conn(conn).hmget(STRESSED_KEY, ["version", "tickers", "cov"])
        if raw[0] is None:
            raise StoreEmptyError("no stressed covariance in the store")
        tickers = _decode_tickers(raw[1], STRESSED_KEY)
        n = len(tickers)
        cov = decode_array(raw[2], key=f"{STRESSED_KEY}.cov", shape=(n, n))
        return decode_int(raw[0], key=f"{STRESSED_KEY}.version"), tickers, cov

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
        raw = self._conn(conn).hmget(REFERENCE_KEY, ["tickers", "prices"])
        if raw[0] is None:
            raise StoreEmptyError("no reference prices in the store")
        tickers = _decode_tickers(raw[0], REFERENCE_KEY)
        prices = decode_array(raw[1], key=f"{REFERENCE_KEY}.prices", shape=(len(tickers),))
        return dict(zip(tickers, prices.tolist(), strict=True))

    # -- portfolios ------------------------------------------------------------------------------------------
    def portfolio_ids(self, conn: Conn = None) -> list[str]:
        raw = self._conn(conn).smembers(PORTFOLIOS_KEY)
        return sorted(decode_str(r, key=PORTFOLIOS_KEY) for r in raw)

    def read_portfolio(self, portfolio_id: str, conn: Conn = None) -> PortfolioState:
        keys = PortfolioKeys(portfolio_id)
        c = self._conn(conn)
        state = c.hgetall(keys.state)
        if not state:
            raise StoreEmptyError(f"portfolio {portfolio_id!r} is not in the store")
        raw_positions = c.hgetall(keys.positions)
        return self._decode_portfolio(portfolio_id, state, raw_positions)

    def _decode_portfolio(
        self, portfolio_id: str, state: Mapping[bytes, bytes], raw_positions: Mapping[bytes, bytes]
    ) -> PortfolioState:
        keys = PortfolioKeys(portfolio_id)

        def field_(name: str) -> bytes | None:
            return state.get(name.encode())

        positions = self._decode_positions(portfolio_id, raw_positions)
        account_type = decode_str(field_("account_type"), key=f"{keys.state}.account_type")
        if account_type not in ("cash", "margin"):
            raise CorruptDataError(f"{keys.state}.account_type: unknown account type {account_type!r}")
        return PortfolioState(
            portfolio_id=portfolio_id,
            account_type=account_type,
            cash=decode_decimal(field_("cash"), key=f"{keys.state}.cash"),
            positions=positions,
            realized_pnl=decode_decimal(field_("realized_pnl"), key=f"{keys.state}.realized_pnl"),
            fees_paid=decode_decimal(field_("fees_paid"), key=f"{keys.state}.fees_paid"),
            initial_margin=decode_float(field_("initial_margin"), key=f"{keys.state}.initial_margin"),
            maintenance_margin=decode_float(field_("maintenance_margin"), key=f"{keys.state}.maintenance_margin"),
            updated_at=decode_float(field_("updated_at"), key=f"{keys.state}.updated_at"),
        )

    def _decode_positions(self, portfolio_id: str, raw_positions: Mapping[bytes, bytes]) -> dict[str, Position]:
        key = PortfolioKeys(portfolio_id).positions
        positions = {}
        for raw_ticker, raw_pos in raw_positions.items():
            ticker = decode_str(raw_ticker, key=key)
            positions[ticker] = decode_position(raw_pos, f"{key}.{ticker}")
        return positions

    def write_portfolio_state(self, state: PortfolioState, pipe: Conn = None) -> None:
        """Write the scalar fields of a portfolio (not its positions)."""
        self._conn(pipe).hset(
            PortfolioKeys(state.portfolio_id).state,
            mapping={
                "account_type": state.account_type,
                "cash": str(state.cash),
                "realized_pnl": str(state.realized_pnl),
                "fees_paid": str(state.fees_paid),
                "initial_margin": repr(float(state.initial_margin)),
                "maintenance_margin": repr(float(state.maintenance_margin)),
                "updated_at": repr(float(state.updated_at)),
            },
        )

    def write_position(self, portfolio_id: str, ticker: str, position: Position | None, pipe: Conn = None) -> None:
        """Set one position; ``None`` or a flat position without realized P&L removes the field."""
        c = self._conn(pipe)
        key = PortfolioKeys(portfolio_id).positions
        if position is None:
            c.hdel(key, ticker)
        else:
            c.hset(key, ticker, encode_position(position))
        _new_positions_rev(c, portfolio_id)

    def write_portfolio(self, state: PortfolioState, pipe: Conn = None) -> None:
        """Replace a whole portfolio (warm-up): scalar fields, every position, registry membership."""
        c = self._conn(pipe)
        keys = PortfolioKeys(state.portfolio_id)
        self.write_portfolio_state(state, c)
        c.delete(keys.positions)
        if state.positions:
            c.hset(keys.positions, mapping={t: encode_position(p) for t, p in state.positions.items()})
        _new_positions_rev(c, state.portfolio_id)
        c.sadd(PORTFOLIOS_KEY, state.portfolio_id)

    # -- trading state ---------------------------------------------------------------------------------------
    def read_trading_state(self, portfolio_id: str, conn: Conn = None) -> TradingStatus:
        key = PortfolioKeys(portfolio_id).trading_state
        raw: Any = self._conn(conn).hgetall(key)
        return _trading_state_from_hash(key, raw)

    def write_trading_state(self, portfolio_id: str, ts_: TradingStatus, pipe: Conn = None) -> None:
        if ts_.state not in TRADING_STATES:
            raise ValueError(f"unknown trading state {ts_.state!r}")
        self._conn(pipe).hset(
            PortfolioKeys(portfolio_id).trading_state,
            mapping={"state": ts_.state, "reason": ts_.reason, "actor": ts_.actor, "ts": repr(float(ts_.ts))},
        )

    # -- audit streams ---------------------------------------------------------------------------------------
    def append_audit(self, key: str, record: Mapping[str, Any], pipe: Conn = None, maxlen: int = 100_000) -> None:
        """Append a JSON record to an audit stream (``PortfolioKeys(..).audit`` or :data:`GLOBAL_AUDIT_KEY`)."""
        self._conn(pipe).xadd(key, {"json": encode_json(dict(record))}, maxlen=maxlen, approximate=True)

    def read_stream_json(
        self, key: str, count: int = 100, newest_first: bool = True, conn: Conn = None
    ) -> list[dict[str, Any]]:
        """Newest (or oldest) ``count`` JSON records of a stream, each with its stream ``id``."""
        c = self._conn(conn)
        entries = c.xrevrange(key, count=count) if newest_first else c.xrange(key, count=count)
        out = []
        for entry_id, fields in entries:
            record = decode_json(fields.get(b"json"), key=f"{key}[{entry_id!r}]")
            if not isinstance(record, dict):
                raise CorruptDataError(f"{key}: record is not an object")
            record["id"] = decode_str(entry_id, key=key)
            out.append(record)
        return out

    # -- heartbeats ------------------------------------------------------------------------------------------
    def write_heartbeat(self, component: str, fields: Mapping[str, Any], pipe: Conn = None) -> None:
        payload = {k: (repr(float(v)) if isinstance(v, float) else str(v)) for k, v in fields.items()}
        payload.setdefault("ts", repr(time.time()))
        self._conn(pipe).hset(heartbeat_key(component), mapping=payload)

    def read_heartbeat(self, component: str, conn: Conn = None) -> dict[str, str] | None:
        raw = self._conn(conn).hgetall(heartbeat_key(component))
        if not raw:
            return None
        return {decode_str(k): decode_str(v) for k, v in raw.items()}

    # -- ticks, history, snapshots (engine/stream.py, logic/monitor.py) --------------------------------------
    # (section owned by the stream/monitor work: add its methods here)
    #
    # Keys of this section (besides TICKS_KEY and PortfolioKeys.history / snapshot / marks):
    #   pf:{<id>}:peaks                hash     equity references: day, day_open, day_peak, week, week_peak,
    #                                           max_peak, max_dd, last (drawdown windows and daily P&L)
    #   rd:lock:<name>                 string   short lease (SET NX PX), e.g. the monitor's idle refresh
    # The tick stream is read by the consumer group MONITOR_GROUP. Per-portfolio writes of one snapshot
    # (latest snapshot, history point) touch keys of one hash tag only and run in one Lua script.

    @staticmethod
    def peaks_key(portfolio_id: str) -> str:
        return PortfolioKeys(portfolio_id)._key("peaks")

    @staticmethod
    def lock_key(name: str) -> str:
        return f"rd:lock:{name}"

    # ticks --------------------------------------------------------------------------------------------------
    def publish_tick(
        self, event: TickEvent, maxlen: int, pipe: Conn = None, *, tickers_json: str | None = None
    ) -> None:
        """Append a tick event to :data:`TICKS_KEY`, bounded by ``MAXLEN ~ maxlen``.

        ``tickers_json`` is the caller's cached ``encode_json(list(event.tickers))`` (it changes rarely)."""
        fields: dict[Any, Any] = event.to_fields(tickers_json)
        self._conn(pipe).xadd(TICKS_KEY, fields, maxlen=maxlen, approximate=True)

    def read_ticks(
        self, count: int | None = None, newest_first: bool = False, conn: Conn = None
    ) -> list[TickEvent]:
        """Tick events of the stream (oldest first unless ``newest_first``); for tests and the dashboard."""
        c = self._conn(conn)
        entries: Any = (
            c.xrevrange(TICKS_KEY, count=count) if newest_first else c.xrange(TICKS_KEY, count=count)
        )
        return [TickEvent.from_fields(entry_id, fields) for entry_id, fields in entries]

    def last_tick(self, conn: Conn = None) -> TickEvent | None:
        ticks = self.read_ticks(count=1, newest_first=True, conn=conn)
        return ticks[0] if ticks else None

    def ensure_tick_group(self, group: str = "monitor", conn: Conn = None) -> bool:
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
        return _decode_tick_entries(raw[0][1] if raw else [])

    def claim_stale_ticks(
        self, group: str, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[tuple[str, TickEvent | None]]:
        """XAUTOCLAIM: take over events another consumer received but did not acknowledge for ``min_idle_ms``
        (a monitor that died); they become this consumer's pending entries."""
        raw = self.client.xautoclaim(TICKS_KEY, group, consumer, min_idle_ms, start_id="0-0", count=count)
        return _decode_tick_entries(raw[1] if raw and len(raw) > 1 else [])

    def ack_ticks(self, group: str, entry_ids: Iterable[str], pipe: Conn = None) -> None:
        ids = list(entry_ids)
        if ids:
            self._conn(pipe).xack(TICKS_KEY, group, *ids)

    def tick_group_pending(self, group: str = "monitor") -> int:
        """Events delivered to the group's consumers and not yet acknowledged (0 when there is no group)."""
        try:
            info = self.client.xpending(TICKS_KEY, group)
        except redis.ResponseError:
            return 0
        return int(info.get("pending", 0)) if isinstance(info, dict) else 0

    def read_stressed_version(self, conn: Conn = None) -> int | None:
        """Version of the stored stressed matrix (it changes when the warm-up rebuilds it), or None."""
        raw = self._conn(conn).hget(STRESSED_KEY, "version")
        return None if raw is None else decode_int(raw, key=f"{STRESSED_KEY}.version")

    # portfolios, read together ------------------------------------------------------------------------------
    def read_portfolio_bundles(self, known_ids: Iterable[str] | None = None) -> dict[str, PortfolioBundle]:
        """Every registered portfolio's state, positions and trading state in ONE MULTI/EXEC.

        One transaction, so a fill (itself one MULTI) is seen entirely or not at all: cash and holdings never
        come from two sides of a trade. ``known_ids`` is the caller's guess of the registry; when the registry
        differs, the read is repeated with the registered ids (at most twice more). A portfolio that does not
        decode carries its typed error instead of a state (the caller skips it: fail closed).
        """
        ids = sorted(known_ids) if known_ids is not None else self.portfolio_ids()
        for _ in range(3):
            pipe = self.client.pipeline(transaction=True)
            pipe.smembers(PORTFOLIOS_KEY)
            for pid in ids:
                keys = PortfolioKeys(pid)
                pipe.hgetall(keys.state)
                pipe.hgetall(keys.positions)
                pipe.hgetall(keys.trading_state)
            raw = pipe.execute()
            registered = sorted(decode_str(r, key=PORTFOLIOS_KEY) for r in raw[0])
            if registered == ids:
                break
            ids = registered
        else:
            raise CorruptDataError(f"{PORTFOLIOS_KEY} keeps changing; cannot read a consistent set")
        out: dict[str, PortfolioBundle] = {}
        for i, pid in enumerate(ids):
            state_raw, positions_raw, trading_raw = raw[1 + 3 * i : 4 + 3 * i]
            try:
                if not state_raw:
                    raise StoreEmptyError(f"portfolio {pid!r} is registered but has no state")
                state = self._decode_portfolio(pid, state_raw, positions_raw)
                trading = _trading_state_from_hash(PortfolioKeys(pid).trading_state, trading_raw)
                out[pid] = PortfolioBundle(pid, state, trading, None)
            except StoreError as exc:
                out[pid] = PortfolioBundle(pid, None, None, exc)
        return out

    # equity peaks and position excursions -------------------------------------------------------------------
    # KEYS[1] = pf:{id}:peaks (hash: day, day_open, day_peak, week, week_peak, max_peak, max_dd, last)
    # ARGV[1] = equity now (number as text), ARGV[2] = day id, ARGV[3] = week id (ISO dates order as text)
    # Merges one equity observation. A later day (week) opens at the last equity seen before it (the previous
    # close; this equity when there is none) and its peak restarts at max(open, equity), so a loss between
    # the close and the first snapshot of the day counts (math_logic.period_drawdown's convention). An
    # observation of an earlier day (a late tick) leaves that period alone. The all-time peak is a max and the
    # worst drawdown from it a min, so two monitors, or a tick processed twice, never lose an update.
    # Returns {day, day_open, day_peak, week, week_peak, max_peak, max_dd}.
    _PEAKS_LUA = """
local key, e, day, week = KEYS[1], tonumber(ARGV[1]), ARGV[2], ARGV[3]
local h = redis.call('HMGET', key, 'day', 'day_open', 'day_peak', 'week', 'week_peak', 'max_peak', 'max_dd',
                     'last')
local open_s = h[8] or ARGV[1]
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
return {h[1], h[2], h[3], h[4], h[5], h[6], h[7]}
"""

    def update_peaks(
        self, portfolio_id: str, equity: float, day_id: str, week_id: str, pipe: Conn = None
    ) -> EquityPeaks | None:
        """Merge one equity observation into the portfolio's peaks (atomic); returns the merged peaks, or
        ``None`` on a pipeline (decode its result with :meth:`EquityPeaks.from_reply`)."""
        if not math.isfinite(equity):
            raise ValueError(f"equity must be finite, got {equity}")
        reply = self._conn(pipe).eval(
            self._PEAKS_LUA, 1, self.peaks_key(portfolio_id), repr(float(equity)), day_id, week_id
        )
        return None if pipe is not None else EquityPeaks.from_reply(reply, self.peaks_key(portfolio_id))

    def read_peaks(self, portfolio_id: str, conn: Conn = None) -> EquityPeaks | None:
        key = self.peaks_key(portfolio_id)
        raw = self._conn(conn).hmget(
            key, ["day", "day_open", "day_peak", "week", "week_peak", "max_peak", "max_dd"]
        )
        return None if raw[0] is None else EquityPeaks.from_reply(raw, key)

    # KEYS[1] = pf:{id}:marks (hash: ticker -> JSON {"side": 1 or -1, "mfe": number, "mae": number})
    # ARGV = ticker, side, unrealized P&L, ... for every open position now.
    # MFE (maximum favourable excursion) is the highest unrealized P&L since the position was opened (>= 0),
    # MAE (maximum adverse excursion) the lowest (<= 0). A new ticker, or one whose side flipped, starts again
    # at this P&L; a ticker not listed (position closed) is deleted. Max/min merges: order-insensitive.
    # Returns {ticker, side, mfe, mae, ...} after the merge.
    _MARKS_LUA = """
local key = KEYS[1]
local open, out = {}, {}
for i = 1, #ARGV, 3 do
  local t, side, pnl = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  open[t] = true
  local mfe, mae, changed = math.max(pnl, 0), math.min(pnl, 0), true
  local raw = redis.call('HGET', key, t)
  if raw then
    local m = cjson.decode(raw)
    if m.side == side then
      changed = pnl > m.mfe or pnl < m.mae
      mfe = math.max(mfe, m.mfe); mae = math.min(mae, m.mae)
    end
  end
  local mfe_s, mae_s = string.format('%.17g', mfe), string.format('%.17g', mae)
  if changed then
    local side_s = string.format('%d', side)
    redis.call('HSET', key, t, '{"side":' .. side_s .. ',"mfe":' .. mfe_s .. ',"mae":' .. mae_s .. '}')
  end
  out[#out + 1] = t; out[#out + 1] = string.format('%d', side); out[#out + 1] = mfe_s; out[#out + 1] = mae_s
end
for _, t in ipairs(redis.call('HKEYS', key)) do
  if not open[t] then redis.call('HDEL', key, t) end
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
        key = PortfolioKeys(portfolio_id).marks
        reply = self._conn(pipe).eval(self._MARKS_LUA, 1, key, *args)
        return None if pipe is not None else decode_marks_reply(reply, key)

    def read_marks(self, portfolio_id: str, conn: Conn = None) -> dict[str, Excursion]:
        key = PortfolioKeys(portfolio_id).marks
        out = {}
        for raw_ticker, raw in self._conn(conn).hgetall(key).items():
            ticker = decode_str(raw_ticker, key=key)
            data = _json_object(raw, f"{key}.{ticker}")
            try:
                out[ticker] = Excursion(int(data["side"]), float(data["mfe"]), float(data["mae"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise CorruptDataError(f"{key}.{ticker}: bad excursion record ({exc})") from exc
        return out

    # latest snapshot and history ----------------------------------------------------------------------------
    # KEYS[1] = pf:{id}:snapshot (string: snapshot JSON), KEYS[2] = pf:{id}:history (stream)
    # ARGV[1] = snapshot version, ARGV[2] = snapshot JSON, ARGV[3] = history entry time (ms),
    # ARGV[4] = oldest entry time kept (ms; XTRIM MINID, exact), ARGV[5] = entry cap (MAXLEN ~),
    # ARGV[6..] = field, value, ... of the history point.
    # The latest snapshot is replaced unless the stored one has a higher version (two monitors may finish
    # ticks out of order; the latest snapshot never goes back). The entry id is <ms>-0, or the stream's last
    # id plus one when that is not greater (several ticks in one millisecond, or a late tick): every call
    # appends exactly one point. Returns the entry id.
    _RECORD_LUA = """
local version = tonumber(ARGV[1])
local current = redis.call('GET', KEYS[1])
local stored = current and tonumber(string.match(current, '"version":(%-?%d+)'))
if not stored or version >= stored then redis.call('SET', KEYS[1], ARGV[2]) end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = ARGV[3] .. '-0'
local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], id, unpack(fields))
if type(added) == 'table' and added.err then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  local last = '0-0'
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
  local ms, seq = string.match(last, '(%d+)-(%d+)')
  id = ms .. '-' .. string.format('%d', tonumber(seq) + 1)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], id, unpack(fields))
end
redis.call('XTRIM', KEYS[2], 'MINID', ARGV[4])
return id
"""

    def record_snapshot(
        self,
        portfolio_id: str,
        snapshot: Mapping[str, Any],
        point: Mapping[str, float | int | None],
        *,
        ts: float,
        retention_seconds: float,
        max_points: int,
        pipe: Conn = None,
    ) -> str | None:
        """Write the latest snapshot (unless a newer version is stored) and append one history point at
        ``ts``, trimming points older than ``retention_seconds`` and beyond ``max_points``; one Lua script.

        ``point`` is flat (dotted metric names, numbers or ``None``); see :meth:`read_history`.
        Returns the history entry id, or ``None`` on a pipeline.
        """
        keys = PortfolioKeys(portfolio_id)
        ms = int(ts * 1000)
        min_ms = max(0, int((ts - retention_seconds) * 1000))
        args: list[Any] = [int(snapshot["version"]), encode_json(dict(snapshot)), ms, min_ms, int(max_points)]
        for name, value in point.items():
            args += [name, _encode_point_value(value)]
        reply = self._conn(pipe).eval(self._RECORD_LUA, 2, keys.snapshot, keys.history, *args)
        return None if pipe is not None else decode_str(reply, key=keys.history)

    def read_snapshot(self, portfolio_id: str, conn: Conn = None) -> dict[str, Any] | None:
        """The latest snapshot of a portfolio (schema in logic/snapshot.py), or ``None`` if none yet."""
        key = PortfolioKeys(portfolio_id).snapshot
        raw = self._conn(conn).get(key)
        return None if raw is None else _json_object(raw, key)

    def read_history(
        self,
        portfolio_id: str,
        start_ts: float | None = None,
        end_ts: float | None = None,
        count: int | None = None,
        newest_first: bool = False,
        conn: Conn = None,
    ) -> list[dict[str, Any]]:
        """History points between two epoch times (inclusive): dicts of the flat fields written by the monitor
        (``ts``, ``version``, ``equity``, ``var.var95``, ...; numbers, ``None`` where the metric had no value)
        plus the entry ``id``. Entry ids are in write order, which is time order except for a late tick."""
        key = PortfolioKeys(portfolio_id).history
        lo = "-" if start_ts is None else str(max(0, int(start_ts * 1000)))
        hi = "+" if end_ts is None else str(max(0, int(end_ts * 1000)))
        c = self._conn(conn)
        entries: Any = (
            c.xrevrange(key, hi, lo, count=count) if newest_first else c.xrange(key, lo, hi, count=count)
        )
        out = []
        for entry_id, fields in entries:
            point: dict[str, Any] = {"id": decode_str(entry_id, key=key)}
            for raw_name, raw_value in fields.items():
                name = decode_str(raw_name, key=key)
                if raw_value == b"":
                    point[name] = None
                elif name == "version":
                    point[name] = decode_int(raw_value, key=f"{key}.version")
                else:
                    point[name] = decode_float(raw_value, key=f"{key}.{name}")
            out.append(point)
        return out

    def history_length(self, portfolio_id: str, conn: Conn = None) -> int:
        return int(self._conn(conn).xlen(PortfolioKeys(portfolio_id).history))

    def acquire_lock(self, name: str, token: str, ttl_seconds: float) -> bool:
        """Take the short lease ``name`` unless someone holds it (SET NX PX); True when taken."""
        return bool(self.client.set(self.lock_key(name), token, nx=True, px=max(1, int(ttl_seconds * 1000))))

    # -- trading (logic/risk_manager.py) ---------------------------------------------------------------------
    # (section owned by the pre-trade/execution work: add its methods here)
    #
    # A fill is one MULTI/EXEC over keys of one portfolio (one hash tag, so one Cluster slot), run by
    # logic/risk_manager.py after WATCHing :meth:`trading_watch_keys`: state scalars, the position, the trade
    # log record, the idempotency record under the client order id and the order-rate entry.

    def trading_watch_keys(self, portfolio_id: str) -> tuple[str, ...]:
        """The keys a fill reads and writes; WATCH them all before re-checking a trade."""
        keys = PortfolioKeys(portfolio_id)
        return (keys.state, keys.positions, keys.trading_state, keys.orders, keys.rate)

    def read_trade_view(
        self,
        portfolio_id: str,
        rate_since: float,
        client_order_id: str | None = None,
        memo: dict[Any, Any] | None = None,
    ) -> TradeView:
        """Market header, reference prices, portfolio, trading state, recent order count and the idempotency
        record of ``client_order_id``, from one consistent snapshot in one round trip.

        The read is one read-only Lua script (atomic, one reply). A caller that WATCHed
        :meth:`trading_watch_keys` on another connection before this read knows its EXEC fails if any of them
        changed since. A part that is missing or does not decode is ``None`` with its typed error in
        ``errors`` (the caller fails closed).

        ``memo`` is a caller-owned dict of what was decoded before. Every write of a portfolio's positions
        through this class stores a new random ``positions_rev`` token in its state hash (and every write of
        the reference prices a new ``rev``); the script sends the positions (hundreds of JSON fields on a big
        book), the reference prices and the snapshot's tickers only when the memo does not hold the current
        ones, so what did not change costs nothing to transfer or decode. Writing those keys other than
        through this class would leave stale caches: do not.
        """
        memo = {} if memo is None else memo
        if len(memo) > 256:  # bounded: a long-running process sees many versions of the reference prices
            memo.clear()
        keys = PortfolioKeys(portfolio_id)
        known = memo.get(("positions", portfolio_id))  # (rev, decoded positions) of the last book seen
        known_tickers = memo.get("tickers")  # (b"<version> <ts>", tickers) of the last snapshot seen
        known_reference = memo.get("reference")  # (rev, reference prices) last seen
        script = self.__dict__.get("_trade_view_script")
        if script is None:  # registered once per Store; redis-py re-sends it if the server lost its cache
            script = self.__dict__["_trade_view_script"] = self.client.register_script(_READ_TRADE_VIEW_LUA)
        try:
            reply = script(
                keys=[MARKET_KEY, REFERENCE_KEY, keys.state, keys.trading_state, keys.rate, keys.orders,
                      keys.positions],
                args=[
                    repr(float(rate_since)), client_order_id or "", known[0] if known else "",
                    known_tickers[0] if known_tickers else "", known_reference[0] if known_reference else "",
                ],
            )  # fmt: skip
        except redis.RedisError as exc:
            raise _redis_failure(exc) from exc
        raw_market, raw_tickers, raw_ref, ref_rev, raw_state, raw_trading, recent, raw_order, rev = reply[:9]
        raw_positions = reply[9]
        errors: dict[str, StoreError] = {}
        header = _try(
            errors, "market",
            lambda: self._decode_header_memo(_ok(raw_market, MARKET_KEY), raw_tickers, known_tickers, memo),
        )  # fmt: skip
        reference = _try(
            errors, "reference",
            lambda: self._decode_reference_memo(raw_ref, ref_rev, known_reference, memo),
        )  # fmt: skip
        if isinstance(rev, redis.ResponseError):
            rev = None
        if raw_positions is None:  # unchanged since ``known``
            assert known is not None
            positions_key: Any = known[0]
            cached = known[1]
        else:
            # no token (a store written by an older layout): key the caches by content instead
            positions_key = rev if rev is not None else repr(raw_positions)
            cached = None
        portfolio = _try(
            errors, "portfolio",
            lambda: self._decode_portfolio_memo(
                portfolio_id, _fields(_STATE_FIELDS, _ok(raw_state, keys.state)), rev, cached,
                _ok(raw_positions, keys.positions), memo,
            ),
        )  # fmt: skip
        trading = _try(
            errors, "trading_state",
            lambda: _trading_state_from_hash(
                keys.trading_state, _fields(_TRADING_FIELDS, _ok(raw_trading, keys.trading_state))
            ),
        )  # fmt: skip
        recent = _try(errors, "rate", lambda: int(_ok(recent, keys.rate)))
        order = None
        if client_order_id is not None and raw_order is not None:
            where = f"{keys.orders}.{client_order_id}"
            order = _try(errors, "order", lambda: _decode_object(_ok(raw_order, keys.orders), where))
        return TradeView(header, reference, portfolio, positions_key, trading, recent or 0, order, errors)

    def remember_positions(
        self, memo: dict[Any, Any], portfolio_id: str, rev: bytes | str, positions: Mapping[str, Position]
    ) -> None:
        """Put positions the caller just wrote (with :meth:`write_fill`, which returned ``rev``) into
        ``memo``, so the next :meth:`read_trade_view` neither transfers nor decodes them."""
        token = rev.encode() if isinstance(rev, str) else rev
        memo[("positions", portfolio_id)] = (token, MappingProxyType(dict(positions)))

    def write_fill(
        self,
        portfolio: PortfolioState,
        ticker: str,
        position: Position,
        record: Mapping[str, Any],
        *,
        trade_id: str,
        client_order_id: str | None,
        ts: float,
        rate_window_seconds: float,
        pipe: Conn,
    ) -> str:
        """Queue every write of one fill on ``pipe`` (a MULTI): the caller executes it.

        ``portfolio`` carries the new cash, realized P&L, fees and time; ``position`` the new position of
        ``ticker`` (removed when flat with no realized P&L); ``record`` is appended to the trade log and,
        with a ``client_order_id``, stored as that order's idempotency record.
        Returns the new ``positions_rev`` token (see :meth:`remember_positions`).
        """
        keys = PortfolioKeys(portfolio.portfolio_id)
        pipe.hset(
            keys.state,
            mapping={
                "cash": str(portfolio.cash),
                "realized_pnl": str(portfolio.realized_pnl),
                "fees_paid": str(portfolio.fees_paid),
                "updated_at": repr(float(portfolio.updated_at)),
            },
        )
        if position.qty == 0 and position.realized_pnl == 0:
            pipe.hdel(keys.positions, ticker)
        else:
            pipe.hset(keys.positions, ticker, encode_position(position))
        payload = encode_json(dict(record))
        pipe.xadd(keys.trades, {"json": payload}, maxlen=TRADE_LOG_MAXLEN, approximate=True)
        if client_order_id is not None:
            pipe.hset(keys.orders, client_order_id, payload)
        pipe.zadd(keys.rate, {trade_id: float(ts)})
        pipe.zremrangebyscore(keys.rate, "-inf", f"({float(ts) - rate_window_seconds!r}")
        return _new_positions_rev(pipe, portfolio.portfolio_id)

    def append_trade_record(self, portfolio_id: str, record: Mapping[str, Any], pipe: Conn = None) -> None:
        """Append a record (e.g. a rejected order) to the portfolio's trade log."""
        self._conn(pipe).xadd(
            PortfolioKeys(portfolio_id).trades, {"json": encode_json(dict(record))},
            maxlen=TRADE_LOG_MAXLEN, approximate=True,
        )  # fmt: skip

    def read_trade_log(
        self, portfolio_id: str, count: int = 100, newest_first: bool = True, conn: Conn = None
    ) -> list[dict[str, Any]]:
        """The trade log: fills and rejected orders, newest first, each with its stream ``id``."""
        return self.read_stream_json(PortfolioKeys(portfolio_id).trades, count, newest_first, conn)

    def read_order(self, portfolio_id: str, client_order_id: str, conn: Conn = None) -> dict[str, Any] | None:
        """The stored result of ``client_order_id``, or None when no fill claimed that id."""
        key = PortfolioKeys(portfolio_id).orders
        raw: Any = self._conn(conn).hget(key, client_order_id)
        return None if raw is None else _decode_object(raw, f"{key}.{client_order_id}")

    def _decode_header_memo(
        self,
        raw: list[Any],
        raw_tickers: Any,
        known: tuple[bytes, tuple[str, ...]] | None,
        memo: dict[Any, Any],
    ) -> MarketHeader:
        if raw[0] is None:
            raise StoreEmptyError("no market snapshot in the store")
        if raw_tickers is None and known is not None:  # the script saw the snapshot the tickers came with
            tickers = known[1]
        else:
            tickers = _decode_tickers(_ok(raw_tickers, MARKET_KEY), MARKET_KEY)
            memo["tickers"] = (raw[0] + b" " + raw[1], tickers)
        n = len(tickers)
        return MarketHeader(
            version=decode_int(raw[0], key=f"{MARKET_KEY}.version"),
            ts=decode_float(raw[1], key=f"{MARKET_KEY}.ts"),
            tickers=tickers,
            prices=decode_array(raw[2], key=f"{MARKET_KEY}.prices", shape=(n,)),
            price_ts=decode_array(raw[3], key=f"{MARKET_KEY}.price_ts", shape=(n,)),
        )

    def _decode_reference_memo(
        self, raw: Any, rev: Any, known: tuple[bytes, Mapping[str, float]] | None, memo: dict[Any, Any]
    ) -> Mapping[str, float]:
        if raw is None and known is not None:  # unchanged since ``known``
            return known[1]
        raw = _ok(raw, REFERENCE_KEY)
        if raw[0] is None:
            raise StoreEmptyError("no reference prices in the store")
        tickers = _decode_tickers(raw[0], REFERENCE_KEY)
        prices = decode_array(raw[1], key=f"{REFERENCE_KEY}.prices", shape=(len(tickers),))
        reference = MappingProxyType(dict(zip(tickers, prices.tolist(), strict=True)))
        if isinstance(rev, bytes):  # a store written before reference revisions: decode every time
            memo["reference"] = (rev, reference)
        return reference

    def _decode_portfolio_memo(
        self,
        portfolio_id: str,
        state: dict[bytes, bytes],
        rev: bytes | None,
        cached: Mapping[str, Position] | None,
        flat_positions: list[Any] | None,
        memo: dict[Any, Any],
    ) -> PortfolioState:
        if not state:
            raise StoreEmptyError(f"portfolio {portfolio_id!r} is not in the store")
        state_key = ("state", portfolio_id, tuple(state.items()))
        scalars = memo.get(state_key)
        if scalars is None:
            scalars = self._decode_portfolio(portfolio_id, state, {})
            memo[state_key] = scalars
        if cached is None:
            cached = MappingProxyType(self._decode_positions(portfolio_id, _pairs(flat_positions)))
            if rev is not None:
                memo[("positions", portfolio_id)] = (rev, cached)
        return dataclasses.replace(scalars, positions=cached)

    # -- alerts and notifications (logic/alerts.py, logic/escalation.py, notifications/) ----------------------
    # (section owned by the alerts work: add its methods here)
    #
    # Keys of this section (besides PortfolioKeys.alerts / alert_log / deliveries and RULES_KEY):
    #   rd:rules_version               string   bumped by every rule edit (engines reload their rule cache)
    #   rd:notify_lock                 string   lease of the process flushing notifications (SET NX PX)
    #   rd:nrate:<sha1 of target>      zset     send times per recipient address (per-recipient rate limit)
    #   pf:{<id>}:alert_eval           hash     rule id -> JSON pending/clear timers of the rule
    #   pf:{<id>}:outbox               hash     delivery id -> JSON notification waiting to be sent
    #   pf:{<id>}:notify               hash     target -> JSON group state (last sent, deferral)
    #   pf:{<id>}:actions              hash     action id -> JSON automated response waiting to run
    # Every per-portfolio key shares the portfolio's hash tag, so an alert transition, its notifications and
    # its pending actions are written in one MULTI transaction.

    RULES_VERSION_KEY = "rd:rules_version"
    NOTIFY_LOCK_KEY = "rd:notify_lock"

    @staticmethod
    def alert_eval_key(portfolio_id: str) -> str:
        return PortfolioKeys(portfolio_id)._key("alert_eval")

    @staticmethod
    def outbox_key(portfolio_id: str) -> str:
        return PortfolioKeys(portfolio_id)._key("outbox")

    @staticmethod
    def notify_state_key(portfolio_id: str) -> str:
        return PortfolioKeys(portfolio_id)._key("notify")

    @staticmethod
    def actions_key(portfolio_id: str) -> str:
        return PortfolioKeys(portfolio_id)._key("actions")

    @staticmethod
    def notify_rate_key(target: str) -> str:
        import hashlib

        return "rd:nrate:" + hashlib.sha1(target.encode("utf-8")).hexdigest()[:20]

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

    def write_json_fields(self, key: str, mapping: Mapping[str, Any], pipe: Conn = None) -> None:
        if mapping:
            self._conn(pipe).hset(key, mapping={k: encode_json(v) for k, v in mapping.items()})

    def delete_fields(self, key: str, names: Iterable[str], pipe: Conn = None) -> None:
        names = list(names)
        if names:
            self._conn(pipe).hdel(key, *names)

    def read_rules_version(self, conn: Conn = None) -> int:
        raw = self._conn(conn).get(self.RULES_VERSION_KEY)
        return 0 if raw is None else decode_int(raw, key=self.RULES_VERSION_KEY)

    def bump_rules_version(self, pipe: Conn = None) -> None:
        self._conn(pipe).incr(self.RULES_VERSION_KEY)

    def read_rule_overrides(self, conn: Conn = None) -> dict[str, Any]:
        """Run-time rule edits: rule id -> JSON ``{"rule": {...}}`` or ``{"deleted": true}``."""
        return self.read_json_hash(RULES_KEY, conn)

    def write_rule_override(self, rule_id: str, payload: Mapping[str, Any] | None, pipe: Conn = None) -> None:
        """Store a run-time rule edit; ``None`` drops it (the settings default applies again)."""
        c = self._conn(pipe)
        if payload is None:
            c.hdel(RULES_KEY, rule_id)
        else:
            c.hset(RULES_KEY, rule_id, encode_json(dict(payload)))

    def read_active_alerts(self, portfolio_id: str, conn: Conn = None) -> dict[str, Any]:
        """Rule id -> JSON record of the portfolio's active (not yet resolved) alert."""
        return self.read_json_hash(PortfolioKeys(portfolio_id).alerts, conn)

    def append_alert_log(self, portfolio_id: str, record: Mapping[str, Any], pipe: Conn = None) -> None:
        self.append_audit(PortfolioKeys(portfolio_id).alert_log, record, pipe)

    def append_delivery(self, portfolio_id: str, record: Mapping[str, Any], pipe: Conn = None) -> None:
        self.append_audit(PortfolioKeys(portfolio_id).deliveries, record, pipe, maxlen=50_000)

    def count_recent_sends(self, target: str, since: float, conn: Conn = None) -> int:
        return int(self._conn(conn).zcount(self.notify_rate_key(target), f"({since!r}", "+inf"))

    def record_send(self, target: str, ts: float, window_seconds: float, pipe: Conn = None) -> None:
        """Remember one message sent to ``target`` at ``ts`` (entries older than the window are dropped)."""
        c = self._conn(pipe)
        key = self.notify_rate_key(target)
        c.zadd(key, {f"{ts!r}:{time.perf_counter_ns()}": ts})
        c.zremrangebyscore(key, "-inf", f"({ts - window_seconds!r}")
        c.expire(key, max(1, int(math.ceil(window_seconds)) + 60))

    def acquire_notify_lock(self, token: str, ttl_seconds: float) -> bool:
        """Take the notification flush lease (one flushing process at a time); True when taken."""
        return bool(self.client.set(self.NOTIFY_LOCK_KEY, token, nx=True, px=max(1, int(ttl_seconds * 1000))))

    # KEYS[1] = the lock key; ARGV[1] = the caller's token. Deletes the lock only when the caller holds it.
    _RELEASE_LOCK_LUA = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
    )

    def release_notify_lock(self, token: str) -> None:
        self.client.eval(self._RELEASE_LOCK_LUA, 1, self.NOTIFY_LOCK_KEY, token)

    # KEYS[1] = the lock key; ARGV[1] = the caller's token, ARGV[2] = new lease in ms. Extends only our lease.
    _RENEW_LOCK_LUA = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then "
        "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
    )

    def renew_notify_lock(self, token: str, ttl_seconds: float) -> bool:
        """Extend the flush lease we hold (before a long delivery); False when it is no longer ours."""
        ttl_ms = max(1, int(ttl_seconds * 1000))
        return bool(self.client.eval(self._RENEW_LOCK_LUA, 1, self.NOTIFY_LOCK_KEY, token, ttl_ms))

    # -- maintenance -----------------------------------------------------------------------------------------
    def is_seeded(self) -> bool:
        return self.schema_version() is not None and self.client.exists(MARKET_KEY) == 1

    def all_keys(self) -> list[bytes]:
        """Every Riskdesk key (tests and the reset use it; not for hot paths)."""
        out: list[bytes] = []
        for pattern in ("rd:*", "hb:*", "mkt:*", "pf:*"):
            out.extend(self.client.scan_iter(match=pattern, count=1000))
        return sorted(out)


# -- trading value objects and helpers (logic/risk_manager.py) -----------------------------------------------

TRADE_LOG_MAXLEN = 1_000_000
"""Approximate bound of a portfolio's trade log stream (XADD MAXLEN ~): fills and rejected orders."""


@dataclass(frozen=True)
class TradeView:
    """What a pre-trade check reads, taken from one consistent snapshot of the store.

    A part that is missing or does not decode is ``None`` and its typed error is in ``errors`` under the
    part's name (``market``, ``reference``, ``portfolio``, ``trading_state``, ``order``): the caller fails
    closed.
    """

    header: MarketHeader | None
    reference: Mapping[str, float] | None
    portfolio: PortfolioState | None
    positions_key: bytes
    """The DUMP of the stored positions: a cache key for anything that depends on the holdings only."""
    trading_state: TradingStatus | None
    recent_orders: int
    """Fills recorded in the order-rate window."""
    order: dict[str, Any] | None
    """The stored result of the client order id asked for, if a fill claimed it."""
    errors: Mapping[str, StoreError]


_READ_TRADE_VIEW_LUA = """
-- One consistent, read-only snapshot of everything a pre-trade check needs, in one round trip.
-- KEYS[1] = mkt:{m}:snapshot, KEYS[2] = mkt:{m}:reference, KEYS[3] = pf:{id}:state,
-- KEYS[4] = pf:{id}:trading_state, KEYS[5] = pf:{id}:rate, KEYS[6] = pf:{id}:orders,
-- KEYS[7] = pf:{id}:positions
-- ARGV[1] = start of the order-rate window (epoch s), ARGV[2] = client order id ('' for none),
-- ARGV[3] = the positions_rev the caller has the positions of ('' for none),
-- ARGV[4] = '<version> <ts>' of the market snapshot the caller has the tickers of ('' for none),
-- ARGV[5] = the rev of the reference prices the caller has ('' for none)
-- What the caller already has is not sent again: the positions hash (flat) is nil when the state's
-- positions_rev equals ARGV[3], the tickers when the snapshot's version and ts equal ARGV[4], the reference
-- tickers and prices when the reference's rev equals ARGV[5].
-- Every read is a pcall: a key of the wrong type comes back as an error in its own slot of the reply, so the
-- caller can fail closed on that part and still report the others.
-- (The keys span two hash tags: on Redis Cluster this read would have to be split in two.)
local order = false
if ARGV[2] ~= '' then order = redis.pcall('HGET', KEYS[6], ARGV[2]) end
local rev = redis.pcall('HGET', KEYS[3], 'positions_rev')
local positions = false
if type(rev) ~= 'string' or rev ~= ARGV[3] then positions = redis.pcall('HGETALL', KEYS[7]) end
local market = redis.pcall('HMGET', KEYS[1], 'version', 'ts', 'prices', 'price_ts')
local tickers = false
if market.err or not (market[1] and market[2]) or (market[1] .. ' ' .. market[2]) ~= ARGV[4] then
  tickers = redis.pcall('HGET', KEYS[1], 'tickers')
end
local ref_rev = redis.pcall('HGET', KEYS[2], 'rev')
local reference = false
if type(ref_rev) ~= 'string' or ref_rev ~= ARGV[5] then
  reference = redis.pcall('HMGET', KEYS[2], 'tickers', 'prices')
end
return {market, tickers, reference, ref_rev,
        redis.pcall('HMGET', KEYS[3], 'account_type', 'cash', 'realized_pnl', 'fees_paid', 'initial_margin',
                    'maintenance_margin', 'updated_at'),
        redis.pcall('HMGET', KEYS[4], 'state', 'reason', 'actor', 'ts'),
        redis.pcall('ZCOUNT', KEYS[5], ARGV[1], '+inf'), order, rev, positions}
"""


def _new_positions_rev(conn: Conn, portfolio_id: str) -> str:
    """Mark the positions of ``portfolio_id`` as changed: readers drop what they cached under the old one."""
    rev = uuid.uuid4().hex
    conn.hset(PortfolioKeys(portfolio_id).state, "positions_rev", rev)
    return rev


def _ok(raw: Any, key: str) -> Any:
    """A part of a script reply, or the typed error when Redis refused that part (a key of the wrong type)."""
    if isinstance(raw, redis.ResponseError):
        raise CorruptDataError(f"{key}: {raw}")
    return raw


_STATE_FIELDS = (b"account_type", b"cash", b"realized_pnl", b"fees_paid", b"initial_margin",
                 b"maintenance_margin", b"updated_at")  # fmt: skip
"""The fields of ``pf:{id}:state`` the trade view reads, in the order of its script's HMGET."""
_TRADING_FIELDS = (b"state", b"reason", b"actor", b"ts")
"""The fields of ``pf:{id}:trading_state`` the trade view reads, in the order of its script's HMGET."""


def _fields(names: tuple[bytes, ...], values: list[Any]) -> dict[bytes, bytes]:
    """An HMGET reply as a dict of the fields that exist (empty when the hash does not)."""
    return {name: value for name, value in zip(names, values, strict=True) if value is not None}


def _pairs(flat: list[Any] | None) -> dict[Any, Any]:
    """A flat ``[field, value, ...]`` reply (HGETALL inside a script) as a dict."""
    if not flat:
        return {}
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _try(errors: dict[str, StoreError], part: str, decode: Callable[[], Any]) -> Any:
    try:
        return decode()
    except StoreError as exc:
        errors[part] = exc
        return None


def _memo(memo: dict[Any, Any], key: Any, decode: Callable[[], Any]) -> Any:
    value = memo.get(key)
    if value is None:
        value = decode()
        memo[key] = value
    return value


def _decode_object(raw: bytes, key: str) -> dict[str, Any]:
    value = decode_json(raw, key=key)
    if not isinstance(value, dict):
        raise CorruptDataError(f"{key}: expected a JSON object")
    return value


def _redis_failure(exc: redis.RedisError) -> StoreError:
    """A Redis error as the store's typed error: unreachable, or a key holding the wrong type (corrupt)."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return StoreUnavailableError(f"Redis is unreachable: {exc}")
    return CorruptDataError(f"Redis refused a read: {exc}")


# -- tick, history and snapshot value objects (engine/stream.py, logic/monitor.py) ---------------------------

MONITOR_GROUP = "monitor"
"""Consumer group of the monitors on :data:`TICKS_KEY`: each tick event goes to exactly one monitor."""


@dataclass(frozen=True)
class TickEvent:
    """One accepted bar as published on :data:`TICKS_KEY`, in the same transaction as the market snapshot.

    ``prices`` are the last accepted prices of every ticker after this bar (a ticker without a valid price in
    the bar keeps its previous price), aligned with ``tickers``: consecutive events give the exact log
    returns the EWMA covariance was updated with (none after a ``reset`` event).
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

    def to_fields(self, tickers_json: str | None = None) -> dict[str, Any]:
        return {
            "version": int(self.version),
            "ts": repr(float(self.ts)),
            "bar_ts": repr(float(self.bar_ts)),
            "tickers": tickers_json if tickers_json is not None else encode_json(list(self.tickers)),
            "prices": encode_array(self.prices),
            "token": self.token,
            "reset": int(self.reset),
            "rejected": int(self.rejected),
        }

    @classmethod
    def from_fields(cls, entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> TickEvent:
        eid = decode_str(entry_id, key=TICKS_KEY)
        key = f"{TICKS_KEY}[{eid}]"
        tickers = _decode_tickers(fields.get(b"tickers"), key)
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
        )


def _decode_tick_entries(entries: Iterable[Any]) -> list[tuple[str, TickEvent | None]]:
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
            out.append((eid, TickEvent.from_fields(entry_id, fields)))
        except StoreError:
            out.append((eid, None))
    return out


@dataclass(frozen=True)
class PortfolioBundle:
    """One portfolio read by :meth:`Store.read_portfolio_bundles`: state and trading state, or the error."""

    portfolio_id: str
    state: PortfolioState | None
    trading_state: TradingStatus | None
    error: StoreError | None


@dataclass(frozen=True)
class EquityPeaks:
    """Equity reference points of the drawdown windows (``pf:{id}:peaks``)."""

    day: str
    day_open: float
    """Equity at the first snapshot of the day (daily P&L is measured from it)."""
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
    out = {}
    for i in range(0, len(reply), 4):
        ticker = decode_str(reply[i], key=key)
        out[ticker] = Excursion(
            side=decode_int(reply[i + 1], key=f"{key}.{ticker}.side"),
            mfe=decode_float(reply[i + 2], key=f"{key}.{ticker}.mfe"),
            mae=decode_float(reply[i + 3], key=f"{key}.{ticker}.mae"),
        )
    return out


def _encode_point_value(value: float | int | None) -> str:
    """A history field: integers exactly, floats with 15 significant digits, ``None`` as the empty string."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    number = float(value)
    if not math.isfinite(number):
        return ""
    return format(number, ".15g")


def _json_object(raw: bytes | str, key: str) -> dict[str, Any]:
    value = decode_json(raw, key=key)
    if not isinstance(value, dict):
        raise CorruptDataError(f"{key}: expected a JSON object")
    return value


def _trading_state_from_hash(key: str, raw: Mapping[bytes, bytes]) -> TradingStatus:
    if not raw:
        raise StoreEmptyError(f"{key} is missing")
    state = decode_str(raw.get(b"state"), key=f"{key}.state")
    if state not in TRADING_STATES:
        raise CorruptDataError(f"{key}.state: unknown trading state {state!r}")
    return TradingStatus(
        state=TradingState(state),
        reason=decode_str(raw.get(b"reason", b""), key=f"{key}.reason"),
        actor=decode_str(raw.get(b"actor", b""), key=f"{key}.actor"),
        ts=decode_float(raw.get(b"ts", b"0"), key=f"{key}.ts"),
    )
