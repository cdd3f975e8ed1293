"""The Redis store: the only package that spells a key name or decodes a stored value.

Modules, rq-style, one noun each::

    keys            the key table (every key name, PortfolioKeys, the layout in its docstring)
    codec           arrays, JSON, money, scalars, tickers, positions, trading states
    base            StoreBase: the connection, the schema guard, generic JSON hashes and streams
    market          MarketStore: market snapshot, stressed matrix, reference prices, ticks, heartbeats
    market_write    MarketWriteStore: the stream daemon's bar, checked against the stored version and written
                    in one round trip (a Lua script)
    portfolio       PortfolioStore: portfolio registry, books, trading state
    trading         TradingStore: the pre-trade view, fills, trade log, order results
    monitoring      MonitoringStore: latest snapshot, equity peaks, excursions, leases
    history         HistoryStore: the snapshot write with its bounded history (stream + downsampled tiers)
    alerts          AlertStore: rule edits, active alerts, alert log, evaluation timers, actions
    notifications   NotificationStore: outbox, group state, delivery log, send rate, flush lease
    sequencer       SequencerStore: the per-portfolio FIFO order queue and its lease
    book            BookStore: market epoch, restarting drawdown peaks, the audit-keeping reset
    limits          LimitsStore: each portfolio's live limits, versioned, every change audited
    audit           AuditStore: every audit source in one read (the Audit page), refused checks

:class:`Store` composes the mixins over one client: ``Store(client).read_market()``. Every read method takes an
optional ``conn`` (a pipeline in WATCH mode) and every write method an optional ``pipe`` (a MULTI), so a caller
can fold them into its own transaction. No pickle: a value that does not decode raises
:class:`~engine.errors.CorruptDataError` and is never executed.
"""

from __future__ import annotations

from engine.records import (
    Float64Array,
    MarketHeader,
    MarketSnapshot,
    PortfolioState,
    Position,
    TradingState,
    TradingStatus,
)
from engine.store.alerts import AlertStore
from engine.store.audit import AuditStore, AuditTrail
from engine.store.base import Conn, StoreBase
from engine.store.book import BookStore
from engine.store.codec import (
    TRADING_STATES,
    ComponentShares,
    PositionRows,
    decode_array,
    decode_decimal,
    decode_float,
    decode_int,
    decode_json,
    decode_object,
    decode_position,
    decode_snapshot,
    decode_str,
    decode_tickers,
    decode_trading_status,
    decode_window_rows,
    encode_array,
    encode_json,
    encode_position,
    encode_snapshot,
    encode_trading_status,
    encode_window_row,
    universe_rev,
)
from engine.store.history import HistoryStore, HistoryWindow
from engine.store.keys import (
    BACKTEST_GROUP,
    EPOCH_KEY,
    GLOBAL_AUDIT_KEY,
    MARKET_KEY,
    MONITOR_GROUP,
    NOTIFY_LOCK_KEY,
    PORTFOLIOS_KEY,
    REFERENCE_KEY,
    RULES_KEY,
    RULES_VERSION_KEY,
    SCHEMA_KEY,
    SCHEMA_VERSION,
    STDRET_KEY,
    STDRET_META_KEY,
    STRESSED_KEY,
    TICKS_KEY,
    UNIVERSES_KEY,
    PortfolioKeys,
    heartbeat_key,
    lock_key,
    notify_rate_key,
)
from engine.store.limits import LimitsChangeError, LimitsConflictError, LimitsStore, StoredLimits
from engine.store.market import MarketStore, StandardizedWindow, TickEvent
from engine.store.market_write import MarketWrite, MarketWriteStore
from engine.store.monitoring import EquityPeaks, Excursion, MonitoringStore, decode_marks_reply
from engine.store.notifications import NotificationStore
from engine.store.portfolio import PortfolioBundle, PortfolioStore
from engine.store.portfolio_reader import PortfolioReader
from engine.store.sequencer import SequencerStore
from engine.store.trading import TRADE_LOG_MAXLEN, TradeView, TradingStore


class Store(
    MarketStore,
    MarketWriteStore,
    PortfolioStore,
    TradingStore,
    MonitoringStore,
    HistoryStore,
    AlertStore,
    NotificationStore,
    SequencerStore,
    BookStore,
    LimitsStore,
    AuditStore,
):
    """Typed reads and writes over one Redis connection: every domain's mixin over one client.

    Every read method takes an optional ``conn`` so a caller can run it on a pipeline in WATCH mode, and every
    write method an optional ``pipe`` so a caller can fold it into its own MULTI transaction.
    """


__all__ = [
    # the store
    "Store", "StoreBase", "Conn",
    "MarketStore", "PortfolioStore", "TradingStore", "MonitoringStore", "AlertStore", "NotificationStore",
    "SequencerStore", "HistoryStore", "HistoryWindow",
    # keys
    "SCHEMA_VERSION", "SCHEMA_KEY", "PORTFOLIOS_KEY", "RULES_KEY", "RULES_VERSION_KEY", "GLOBAL_AUDIT_KEY",
    "NOTIFY_LOCK_KEY", "MARKET_KEY", "STRESSED_KEY", "REFERENCE_KEY", "TICKS_KEY", "MONITOR_GROUP", "EPOCH_KEY",
    "BACKTEST_GROUP", "STDRET_KEY", "STDRET_META_KEY", "UNIVERSES_KEY", "MarketWrite", "MarketWriteStore",
    "universe_rev", "BookStore",
    "LimitsStore", "LimitsChangeError", "LimitsConflictError", "StoredLimits",
    "AuditStore", "AuditTrail",
    "PortfolioKeys", "heartbeat_key", "lock_key", "notify_rate_key",
    # codec
    "TRADING_STATES", "encode_array", "decode_array", "encode_json", "decode_json", "decode_object",
    "encode_snapshot", "decode_snapshot", "PositionRows", "ComponentShares",
    "decode_decimal", "decode_int", "decode_float", "decode_str", "decode_tickers", "encode_position",
    "decode_position", "encode_trading_status", "decode_trading_status", "encode_window_row", "decode_window_rows",
    # value objects read and written here
    "TickEvent", "StandardizedWindow", "PortfolioBundle", "TradeView", "TRADE_LOG_MAXLEN", "EquityPeaks", "Excursion",
    "decode_marks_reply",
    "PortfolioReader",
    # value objects of engine.records, re-exported for compatibility
    "Float64Array", "MarketHeader", "MarketSnapshot", "PortfolioState", "Position", "TradingState",
    "TradingStatus",
]  # fmt: skip
