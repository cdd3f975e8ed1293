"""What the pre-trade gate reads and what a fill writes (logic/risk_manager.py).

Keys: ``pf:{<id>}:orders`` (idempotency records), ``pf:{<id>}:trades`` (trade log), ``pf:{<id>}:rate`` (order-rate
window) and ``pf:{<id>}:auto_rate`` (the automation's liquidation fills: their own window), besides the market and
book keys it reads (see :mod:`engine.store.keys`).

A fill is one MULTI/EXEC over keys of one portfolio (one hash tag, so one Cluster slot), run by
logic/risk_manager.py after WATCHing :meth:`TradingStore.trading_watch_keys` (what it writes, and the live limits
it was checked against): state scalars, the position, the trade log record, the idempotency record under the
client order id and the order-rate entry; and, when it closes or flips the position, the end of the position's
excursion (engine/store/monitoring.py ``reset_mark``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import redis

from engine.errors import CorruptDataError, StoreEmptyError, StoreError, StoreUnavailableError
from engine.records import MarketHeader, PortfolioState, Position, TradingState, TradingStatus
from engine.settings import Limits
from engine.store.base import Conn, StoreBase
from engine.store.codec import (
    decode_object,
    decode_str,
    decode_tickers,
    decode_trading_status,
    encode_json,
    encode_position,
    encode_trading_status,
    hash_from_flat,
)
from engine.store.keys import GLOBAL_AUDIT_KEY, MARKET_KEY, PORTFOLIOS_KEY, REFERENCE_KEY, PortfolioKeys
from engine.store.limits import decode_limits_reply, held_token
from engine.store.market import decode_reference_prices, market_header
from engine.store.monitoring import ends_position, reset_mark
from engine.store.portfolio import decode_portfolio, decode_positions, new_positions_rev
from engine.store.slots import is_cluster, slot_transaction

SET_ALL_ATTEMPTS = 20
"""WATCH retries of :meth:`TradingStore.set_all_trading_states`; only a storm of concurrent state changes could
exhaust them (then it raises and nothing is written)."""
TRADE_LOG_MAXLEN = 1_000_000
"""Most records (fills and rejected orders) a portfolio's trade log keeps in Redis: a bound the archiver
(engine/archive.py) applies after copying the older ones to the archive, never a trim on append."""


@dataclass(frozen=True)
class TradeView:
    """What a pre-trade check reads, taken from one consistent snapshot of the store.

    A part that is missing or does not decode is ``None`` and its typed error is in ``errors`` under the
    part's name (``market``, ``reference``, ``portfolio``, ``trading_state``, ``order``): the caller fails
    closed. ``errors["writes"]`` (a :class:`CorruptDataError` naming them) when a key a fill writes holds the
    wrong type: the parts still decode, but no fill may be attempted (execution refuses before its MULTI).
    """

    header: MarketHeader | None
    reference: Mapping[str, float] | None
    portfolio: PortfolioState | None
    positions_key: bytes
    """The DUMP of the stored positions: a cache key for anything that depends on the holdings only."""
    trading_state: TradingStatus | None
    recent_orders: int
    """Fills recorded in the traders' order-rate window (every fill but the automation's liquidation ones)."""
    order: dict[str, Any] | None
    """The stored result of the client order id asked for, if a fill claimed it."""
    errors: Mapping[str, StoreError]
    limits: Limits | None = None
    """The portfolio's live limits (engine/store/limits.py); None when none are stored (use the settings') or
    when they do not decode (then ``errors["limits"]``)."""
    limits_version: int | None = None
    """Their version (None without a stored record). Not an order: a reset deletes the record and the next
    change is version 1 again (``limits_rev`` tells those apart)."""
    limits_rev: str | None = None
    """The stored record's random token (engine/store/limits.py; "" for a record written before tokens, None
    without a record): a new one on every write, never repeated across a reset."""
    recent_auto_orders: int = 0
    """The automation's liquidation-only fills in the same window (``pf:{id}:auto_rate``): its own budget."""


class TradingStore(StoreBase):
    """The trade view (one consistent read for a pre-trade check), fills, the trade log and order results."""

    def trading_watch_keys(self, portfolio_id: str) -> tuple[str, ...]:
        """The keys a fill reads and writes, and the live limits it is checked against; WATCH them all before
        re-checking a trade (a limit changed meanwhile aborts the EXEC: the retry checks the new one)."""
        keys = PortfolioKeys(portfolio_id)
        return (keys.state, keys.positions, keys.trading_state, keys.orders, keys.rate, keys.limits, keys.auto_rate)

    def read_trade_view(
        self,
        portfolio_id: str,
        rate_since: float,
        client_order_id: str | None = None,
        memo: dict[Any, Any] | None = None,
        rate_until: float | None = None,
    ) -> TradeView:
        """Market header, reference prices, portfolio, trading state, recent order count (fills stamped from
        ``rate_since`` to ``rate_until``, no bound above when None) and the idempotency record of
        ``client_order_id``, from one consistent snapshot in one round trip.

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
        args = [
            repr(float(rate_since)), client_order_id or "", known[0] if known else "",
            known_tickers[0] if known_tickers else "", known_reference[0] if known_reference else "",
            held_token(memo, portfolio_id), "+inf" if rate_until is None else repr(float(rate_until)),
        ]  # fmt: skip
        portfolio_keys = [
            keys.state, keys.trading_state, keys.rate, keys.orders, keys.positions, keys.limits, keys.auto_rate,
            keys.trades, keys.orders_ts, keys.marks, keys.peaks,
        ]  # fmt: skip
        try:
            if is_cluster(self.client):
                # the market's keys and the portfolio's live on two slots (two nodes): one script each, market
                # first; each part is consistent in itself (engine/redis_cluster.py)
                reply = self._script("_market_view_script", _READ_MARKET_VIEW_LUA)(
                    keys=[MARKET_KEY, REFERENCE_KEY], args=args
                )
                reply += self._script("_portfolio_view_script", _READ_PORTFOLIO_VIEW_LUA)(
                    keys=portfolio_keys, args=args
                )
            else:
                reply = self._script("_trade_view_script", _READ_TRADE_VIEW_LUA)(
                    keys=[MARKET_KEY, REFERENCE_KEY, *portfolio_keys], args=args
                )
        except redis.RedisError as exc:
            raise _redis_failure(exc) from exc
        raw_market, raw_tickers, raw_ref, ref_rev, raw_state, raw_trading, recent, raw_order, rev = reply[:9]
        raw_positions = reply[9]
        errors: dict[str, StoreError] = {}
        header = _try(
            errors, "market",
            lambda: _decode_header_memo(_ok(raw_market, MARKET_KEY), raw_tickers, known_tickers, memo),
        )  # fmt: skip
        reference = _try(
            errors, "reference",
            lambda: _decode_reference_memo(raw_ref, ref_rev, known_reference, memo),
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
            lambda: _decode_portfolio_memo(
                portfolio_id, _fields(_STATE_FIELDS, _ok(raw_state, keys.state)), rev, cached,
                _ok(raw_positions, keys.positions), memo,
            ),
        )  # fmt: skip
        trading = _try(
            errors, "trading_state",
            lambda: decode_trading_status(
                keys.trading_state, _fields(_TRADING_FIELDS, _ok(raw_trading, keys.trading_state))
            ),
        )  # fmt: skip
        recent = _try(errors, "rate", lambda: int(_ok(recent, keys.rate)))
        recent_auto = _try(errors, "rate", lambda: int(_ok(reply[13], keys.auto_rate)))
        order = None
        if client_order_id is not None and raw_order is not None:
            where = f"{keys.orders}.{client_order_id}"
            order = _try(errors, "order", lambda: decode_object(_ok(raw_order, keys.orders), where))
        live = _try(errors, "limits", lambda: decode_limits_reply(portfolio_id, reply[10], reply[12], reply[11], memo))
        if reply[14]:
            errors["writes"] = _wrong_types(reply[14])
        return TradeView(
            header, reference, portfolio, positions_key, trading, recent or 0, order, errors,
            live.limits if live else None, live.version if live else None, live.rev if live else None,
            recent_auto or 0,
        )  # fmt: skip

    def _script(self, name: str, source: str) -> Any:
        """The script ``source`` registered once per Store; redis-py re-sends it if the server lost its cache."""
        script = self.__dict__.get(name)
        if script is None:
            script = self.__dict__[name] = self.client.register_script(source)
        return script

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
        qty_before: int = 0,
        automated: bool = False,
    ) -> str:
        """Queue every write of one fill on ``pipe`` (a MULTI): the caller executes it.

        ``portfolio`` carries the new cash, realized P&L, fees and time; ``position`` the new position of
        ``ticker`` (removed when flat with no realized P&L); ``record`` is appended to the trade log and,
        with a ``client_order_id``, stored as that order's idempotency record. ``qty_before``: the shares held
        before the fill (0: flat); a fill that takes them to zero or through zero ends the position's excursion
        (MFE / MAE) in the same MULTI (engine/store/monitoring.py ``reset_mark``), so a position reopened
        before the monitor's next tick does not inherit the closed one's. ``automated``: the automation's
        liquidation-only fill, recorded in its own rate window (``auto_rate``), not the traders' (``rate``).
        Returns the new ``positions_rev`` token (see :meth:`remember_positions`).

        Redis does not roll a MULTI back when one command fails (a key of the wrong type): the others commit. So
        :meth:`read_trade_view` checks the type of every key written here (``errors["writes"]``) and the caller
        refuses before the MULTI; a key added here must be added to that check (``_TRADE_VIEW_PORTFOLIO``).
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
        pipe.xadd(keys.trades, {"json": payload})  # never trimmed here: the archiver does, after archiving
        if client_order_id is not None:
            pipe.hset(keys.orders, client_order_id, payload)
            pipe.zadd(keys.orders_ts, {client_order_id: float(ts)})
        window = keys.auto_rate if automated else keys.rate
        pipe.zadd(window, {trade_id: float(ts)})
        pipe.zremrangebyscore(window, "-inf", f"({float(ts) - rate_window_seconds!r}")
        if ends_position(qty_before, position.qty):
            reset_mark(pipe, portfolio.portfolio_id, ticker)
        return new_positions_rev(pipe, portfolio.portfolio_id)

    def append_trade_record(self, portfolio_id: str, record: Mapping[str, Any], pipe: Conn = None) -> None:
        """Append a record (e.g. a rejected order) to the portfolio's trade log (never trimmed here)."""
        self._conn(pipe).xadd(PortfolioKeys(portfolio_id).trades, {"json": encode_json(dict(record))})

    def read_trade_log(
        self, portfolio_id: str, count: int = 100, newest_first: bool = True, conn: Conn = None
    ) -> list[dict[str, Any]]:
        """The trade log: fills and rejected orders, newest first, each with its stream ``id``."""
        return self.read_stream_json(PortfolioKeys(portfolio_id).trades, count, newest_first, conn)

    def prune_order_ids(self, portfolio_id: str, older_than: float, batch: int = 1000) -> int:
        """Delete the idempotency records filled before ``older_than`` (epoch seconds; one exactly at it stays)
        with their time index entries; returns how many. Records written before the index existed have no
        time and are kept.

        Each batch is one Lua script (atomic): a record and its index entry go together.
        """
        keys = PortfolioKeys(portfolio_id)
        removed = 0
        while True:
            script = self.__dict__.get("_prune_orders_script")
            if script is None:
                script = self.__dict__["_prune_orders_script"] = self.client.register_script(_PRUNE_ORDERS_LUA)
            n = int(script(keys=[keys.orders, keys.orders_ts], args=[f"({older_than!r}", batch]))
            removed += n
            if n < batch:
                return removed

    def read_order(self, portfolio_id: str, client_order_id: str, conn: Conn = None) -> dict[str, Any] | None:
        """The stored result of ``client_order_id``, or None when no fill claimed that id."""
        key = PortfolioKeys(portfolio_id).orders
        raw: Any = self._conn(conn).hget(key, client_order_id)
        return None if raw is None else decode_object(raw, f"{key}.{client_order_id}")

    def set_all_trading_states(
        self,
        status: TradingStatus,
        record: Mapping[str, Any],
        keep_states: tuple[str, ...] = (),
    ) -> dict[str, dict[str, str]]:
        """Set EVERY registered portfolio's trading state to ``status`` and append ONE audit record, in one
        transaction (the firm-wide kill switch, :mod:`logic.firm`).

        WATCHes the registry and every portfolio's trading state, reads them, then writes all the states and
        the record (``record`` plus ``"portfolios": {id: {"previous", "state"}}``, to :data:`GLOBAL_AUDIT_KEY`)
        in one MULTI/EXEC: a reader sees either no portfolio changed or all of them. A portfolio whose current
        state is in ``keep_states`` keeps it (listed with its unchanged state), and so does one with no state when
        ``keep_states`` holds HALTED (a missing state is HALTED at the gate). A trading state that does not
        decode (a corrupt key) raises :class:`CorruptDataError` naming it and nothing is written; a change by
        someone else in between retries (at most :data:`SET_ALL_ATTEMPTS` times, then
        :class:`StoreUnavailableError`, nothing written).

        Returns the ``portfolios`` mapping written to the audit record. On a Redis Cluster the keys span every
        portfolio's slot: each portfolio's state commits in its own MULTI (engine/store/slots.py), the audit
        record last; a conflict in one slot retries the whole switch (portfolios already set stay set).
        """
        try:
            for _ in range(SET_ALL_ATTEMPTS):
                with slot_transaction(self.client) as pipe:  # a Redis Cluster: one MULTI per portfolio
                    try:
                        pipe.watch(PORTFOLIOS_KEY)
                        ids = sorted(decode_str(r, key=PORTFOLIOS_KEY) for r in pipe.smembers(PORTFOLIOS_KEY))
                        keys = {pid: PortfolioKeys(pid).trading_state for pid in ids}
                        if keys:
                            pipe.watch(*keys.values())
                        changes: dict[str, dict[str, str]] = {}
                        for pid, key in keys.items():
                            raw: Any = pipe.hgetall(key)
                            previous = decode_trading_status(key, raw).state if raw else "MISSING"
                            # a missing state counts as HALTED, as at the gate: REDUCE ALL does not loosen it
                            halted = previous == "MISSING" and TradingState.HALTED in keep_states
                            kept = previous in keep_states or halted
                            changes[pid] = {"previous": str(previous), "state": str(previous if kept else status.state)}
                        pipe.multi()
                        mapping: Any = encode_trading_status(status)
                        for pid, change in changes.items():
                            if change["state"] == status.state:
                                pipe.hset(keys[pid], mapping=mapping)
                        self.append_audit(GLOBAL_AUDIT_KEY, {**record, "portfolios": changes}, pipe)
                        pipe.execute()
                        return changes
                    except redis.WatchError:
                        continue
                    except redis.ResponseError as exc:  # a key of the wrong type: nothing was queued yet
                        raise CorruptDataError(f"cannot set every trading state: {exc}") from exc
        except redis.ConnectionError as exc:
            raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc
        raise StoreUnavailableError(
            f"the trading states kept changing; gave up after {SET_ALL_ATTEMPTS} attempts (nothing was written)"
        )


_TRADE_VIEW_HEADER = """
-- One consistent, read-only snapshot of everything a pre-trade check needs, in one round trip.
-- Market keys (hash tag {m}): KEYS[1] = mkt:{m}:snapshot, KEYS[2] = mkt:{m}:reference.
-- Portfolio keys (hash tag {id}), from KEYS[P + 1]: pf:{id}:state, pf:{id}:trading_state, pf:{id}:rate,
-- pf:{id}:orders, pf:{id}:positions, pf:{id}:limits, pf:{id}:auto_rate, and the keys only a fill writes:
-- pf:{id}:trades, pf:{id}:orders_ts, pf:{id}:marks, pf:{id}:peaks (P = 2 after the market keys; P = 0 in the
-- portfolio-only script a Redis Cluster runs on the portfolio's slot, while the market-only script runs on the
-- market's).
-- ARGV[1] = start of the order-rate window (epoch s), ARGV[2] = client order id ('' for none),
-- ARGV[3] = the positions_rev the caller has the positions of ('' for none),
-- ARGV[4] = '<version> <ts>' of the market snapshot the caller has the tickers of ('' for none),
-- ARGV[5] = the rev of the reference prices the caller has ('' for none),
-- ARGV[6] = the token '<version>:<rev>' of the live limits the caller has ('' for none): their JSON is sent only
-- when the record's differs (the rev is random: a record re-created at the same version after a reset differs)
-- What the caller already has is not sent again: the positions hash (flat) is nil when the state's
-- positions_rev equals ARGV[3], the tickers when the snapshot's version and ts equal ARGV[4], the reference
-- tickers and prices when the reference's rev equals ARGV[5].
-- Every read is a pcall: a key of the wrong type comes back as an error in its own slot of the reply, so the
-- caller can fail closed on that part and still report the others.
-- ``wrong`` lists every key a fill writes (TradingStore.write_fill) that holds another type than the fill's
-- command needs, as '<key> <type> <expected>': Redis does not roll a MULTI back when one command fails, so such a
-- fill would commit its other writes while its caller is told it failed; the caller refuses before the MULTI.
"""

_TRADE_VIEW_MARKET = """
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
"""

_TRADE_VIEW_PORTFOLIO = """
local order = false
if ARGV[2] ~= '' then order = redis.pcall('HGET', KEYS[P + 4], ARGV[2]) end
local rev = redis.pcall('HGET', KEYS[P + 1], 'positions_rev')
local positions = false
if type(rev) ~= 'string' or rev ~= ARGV[3] then positions = redis.pcall('HGETALL', KEYS[P + 5]) end
local limits_head = redis.pcall('HMGET', KEYS[P + 6], 'version', 'rev')
local limits_version, limits_rev = limits_head, false
if not limits_head.err then
  limits_version, limits_rev = limits_head[1], limits_head[2]
  if not limits_version and redis.call('EXISTS', KEYS[P + 6]) == 1 then
    limits_version = {err = 'version missing'}  -- damaged, not absent: fail closed
  end
end
local limits = false
if type(limits_version) == 'string' and (limits_version .. ':' .. (limits_rev or '')) ~= ARGV[6] then
  limits = redis.pcall('HGET', KEYS[P + 6], 'json')
end
local state = redis.pcall('HMGET', KEYS[P + 1], 'account_type', 'cash', 'realized_pnl', 'fees_paid',
                          'initial_margin', 'maintenance_margin', 'updated_at')
local trading = redis.pcall('HMGET', KEYS[P + 2], 'state', 'reason', 'actor', 'ts')
local recent = redis.pcall('ZCOUNT', KEYS[P + 3], ARGV[1], ARGV[7])
local recent_auto = redis.pcall('ZCOUNT', KEYS[P + 7], ARGV[1], ARGV[7])
local wrong = {}
for _, want in ipairs({{1, 'hash'}, {3, 'zset'}, {4, 'hash'}, {5, 'hash'}, {7, 'zset'}, {8, 'stream'},
                       {9, 'zset'}, {10, 'hash'}, {11, 'hash'}}) do
  local key = KEYS[P + want[1]]
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= want[2] then wrong[#wrong + 1] = key .. ' ' .. found .. ' ' .. want[2] end
end
"""

_READ_TRADE_VIEW_LUA = (
    _TRADE_VIEW_HEADER + "local P = 2\n" + _TRADE_VIEW_MARKET + _TRADE_VIEW_PORTFOLIO
    + "return {market, tickers, reference, ref_rev, state, trading, recent, order, rev, positions, limits_version,"
    + " limits, limits_rev, recent_auto, wrong}\n"
)  # fmt: skip
"""The whole trade view in one script (a single Redis server: every key on one node)."""
_READ_MARKET_VIEW_LUA = _TRADE_VIEW_HEADER + _TRADE_VIEW_MARKET + "return {market, tickers, reference, ref_rev}\n"
"""The market part of the trade view, on the market's slot (a Redis Cluster)."""
_READ_PORTFOLIO_VIEW_LUA = (
    _TRADE_VIEW_HEADER + "local P = 0\n" + _TRADE_VIEW_PORTFOLIO
    + "return {state, trading, recent, order, rev, positions, limits_version, limits, limits_rev, recent_auto,"
    + " wrong}\n"
)  # fmt: skip
"""The portfolio part of the trade view, on the portfolio's slot (a Redis Cluster)."""

_STATE_FIELDS = (b"account_type", b"cash", b"realized_pnl", b"fees_paid", b"initial_margin",
                 b"maintenance_margin", b"updated_at")  # fmt: skip
"""The fields of ``pf:{id}:state`` the trade view reads, in the order of its script's HMGET."""
_TRADING_FIELDS = (b"state", b"reason", b"actor", b"ts")
"""The fields of ``pf:{id}:trading_state`` the trade view reads, in the order of its script's HMGET."""


_PRUNE_ORDERS_LUA = """
-- KEYS[1] = pf:{id}:orders (hash), KEYS[2] = pf:{id}:orders_ts (zset of the same ids by fill time)
-- ARGV[1] = exclusive upper score ("(<ts>"), ARGV[2] = batch size; returns how many were removed
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids > 0 then
  redis.call('HDEL', KEYS[1], unpack(ids))
  redis.call('ZREM', KEYS[2], unpack(ids))
end
return #ids
"""


def _decode_header_memo(
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
        tickers = decode_tickers(_ok(raw_tickers, MARKET_KEY), MARKET_KEY)
        memo["tickers"] = (raw[0] + b" " + raw[1], tickers)
    return market_header(raw[0], raw[1], tickers, raw[2], raw[3])


def _decode_reference_memo(
    raw: Any, rev: Any, known: tuple[bytes, Mapping[str, float]] | None, memo: dict[Any, Any]
) -> Mapping[str, float]:
    if raw is None and known is not None:  # unchanged since ``known``
        return known[1]
    reference = MappingProxyType(decode_reference_prices(_ok(raw, REFERENCE_KEY)))
    if isinstance(rev, bytes):  # a store written before reference revisions: decode every time
        memo["reference"] = (rev, reference)
    return reference


def _decode_portfolio_memo(
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
        scalars = decode_portfolio(portfolio_id, state, {})
        memo[state_key] = scalars
    if cached is None:
        cached = MappingProxyType(decode_positions(portfolio_id, hash_from_flat(flat_positions)))
        if rev is not None:
            memo[("positions", portfolio_id)] = (rev, cached)
    return dataclasses.replace(scalars, positions=cached)


def _ok(raw: Any, key: str) -> Any:
    """A part of a script reply, or the typed error when Redis refused that part (a key of the wrong type)."""
    if isinstance(raw, redis.ResponseError):
        raise CorruptDataError(f"{key}: {raw}")
    return raw


def _fields(names: tuple[bytes, ...], values: list[Any]) -> dict[bytes, bytes]:
    """An HMGET reply as a dict of the fields that exist (empty when the hash does not)."""
    return {name: value for name, value in zip(names, values, strict=True) if value is not None}


def _wrong_types(found: list[Any]) -> CorruptDataError:
    """The ``writes`` error of a trade view: keys a fill writes that hold another type (see the script)."""
    parts = []
    for entry in found:
        key, kind, want = (entry.decode() if isinstance(entry, bytes) else str(entry)).rsplit(" ", 2)
        parts.append(f"{key} holds a {kind}, not a {want}")
    return CorruptDataError(
        f"{'; '.join(parts)}: a fill writes there, and Redis would commit the fill's other writes while failing "
        "that one, so no order is executed until it is repaired (nothing was traded)",
        fix="restore the named key(s) from a backup, or delete one (`DEL <key>`; a fill recreates it) once you "
        "know it holds nothing to keep; or re-seed the store with `python warmup.py --reset`",
    )


def _try(errors: dict[str, StoreError], part: str, decode: Callable[[], Any]) -> Any:
    try:
        return decode()
    except StoreError as exc:
        errors[part] = exc
        return None


def _redis_failure(exc: redis.RedisError) -> StoreError:
    """A Redis error as the store's typed error: unreachable, or a key holding the wrong type (corrupt)."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return StoreUnavailableError(f"Redis is unreachable: {exc}")
    return CorruptDataError(f"Redis refused a read: {exc}")
