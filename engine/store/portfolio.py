"""Portfolio books: the registry of portfolios, each one's cash and positions, and its trading state.

Keys: ``rd:portfolios``, ``pf:{<id>}:state``, ``pf:{<id>}:positions``, ``pf:{<id>}:trading_state`` (see
:mod:`engine.store.keys`). Every write of a portfolio's positions stores a new random ``positions_rev`` token
in its state hash: :meth:`engine.store.Store.read_trade_view` caches decoded positions by it.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from engine.errors import CorruptDataError, RiskdeskError, StoreEmptyError, StoreError, StoreUnavailableError
from engine.records import AccountType, PortfolioState, Position, TradingStatus
from engine.store.base import Conn, StoreBase
from engine.store.codec import (
    decode_decimal,
    decode_float,
    decode_position,
    decode_str,
    decode_trading_status,
    encode_position,
    encode_trading_status,
)
from engine.store.keys import PORTFOLIOS_KEY, PortfolioKeys
from engine.store.slots import slot_transaction

if TYPE_CHECKING:
    from engine.store.portfolio_reader import PortfolioReader

_ACCOUNT_TYPES = tuple(AccountType)
TRADING_STATE_ATTEMPTS = 20
"""WATCH rounds of :meth:`PortfolioStore.change_trading_state`; only a storm of state changes exhausts them."""
MISSING = "MISSING"
"""The ``previous`` of a trading-state change when the portfolio had no trading state."""
UNREADABLE = "UNREADABLE"
"""The ``previous`` of a trading-state change when the stored state did not decode."""


class TradingStateConflictError(RiskdeskError):
    """A deliberate trading-state change was made against a state that is no longer the stored one (the
    automation tightened it, another risk manager changed it): nothing was written. A person lifts only the
    state they saw: a HALT that landed after their page rendered REDUCING is not theirs to lift unseen."""

    code = "TRADING_STATE_CHANGED"
    fix = "look at the current trading state (reload the page), then make the change again if it still applies"


@dataclass(frozen=True)
class TradingStateChange:
    """What :meth:`PortfolioStore.change_trading_state` found and did."""

    previous: str
    """The state read inside the transaction: a :class:`TradingState` name, :data:`MISSING` or
    :data:`UNREADABLE` (what its audit record says)."""
    current: TradingStatus | None
    """The state stored now: the new one when ``written``, else the one kept (None: missing or unreadable)."""
    written: bool
    error: StoreError | None = None
    """Why the previous state could not be read (None when it was)."""


def _conflict(portfolio_id: str, expected: str, current: TradingStatus | None, previous: str) -> str:
    """The message of a :class:`TradingStateConflictError`: what was expected and who made the state what it is."""
    text = f"the trading state of {portfolio_id} is {previous}, not {expected.strip().upper()} as shown"
    if current is not None:
        text += f": changed to {current.state} by {current.actor} at {current.ts:.0f} ({current.reason})"
    return text + "; nothing was changed"


def _unread(error: StoreError | None) -> str:
    return MISSING if isinstance(error, StoreEmptyError) else UNREADABLE


@dataclass(frozen=True)
class PortfolioBundle:
    """One portfolio read by :meth:`Store.read_portfolio_bundles`: state and trading state, or the error."""

    portfolio_id: str
    state: PortfolioState | None
    trading_state: TradingStatus | None
    error: StoreError | None


class PortfolioStore(StoreBase):
    """Portfolio registry, books (state scalars and positions) and trading state."""

    # -- books -----------------------------------------------------------------------------------------------
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
        return decode_portfolio(portfolio_id, state, raw_positions)

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
        new_positions_rev(c, portfolio_id)

    def write_portfolio(self, state: PortfolioState, pipe: Conn = None) -> None:
        """Replace a whole portfolio (warm-up): scalar fields, every position, registry membership."""
        c = self._conn(pipe)
        keys = PortfolioKeys(state.portfolio_id)
        self.write_portfolio_state(state, c)
        c.delete(keys.positions)
        if state.positions:
            c.hset(keys.positions, mapping={t: encode_position(p) for t, p in state.positions.items()})
        new_positions_rev(c, state.portfolio_id)
        c.sadd(PORTFOLIOS_KEY, state.portfolio_id)

    # -- trading state ---------------------------------------------------------------------------------------
    def read_trading_state(self, portfolio_id: str, conn: Conn = None) -> TradingStatus:
        key = PortfolioKeys(portfolio_id).trading_state
        raw: Any = self._conn(conn).hgetall(key)
        return decode_trading_status(key, raw)

    def write_trading_state(self, portfolio_id: str, ts_: TradingStatus, pipe: Conn = None) -> None:
        mapping = encode_trading_status(ts_)
        self._conn(pipe).hset(PortfolioKeys(portfolio_id).trading_state, mapping=mapping)

    def change_trading_state(
        self,
        portfolio_id: str,
        status: TradingStatus,
        record: Mapping[str, Any],
        keep: Callable[[TradingStatus | None], bool] | None = None,
        expected: str | None = None,
    ) -> TradingStateChange:
        """Set the portfolio's trading state to ``status`` with its audit record, as a compare-and-set.

        WATCHes ``pf:{id}:trading_state``, reads it, and unless ``keep(current)`` (current: None when the state
        is missing or unreadable) writes ``status`` and appends ``record`` plus ``"previous"`` (the state read
        here: a state name, :data:`MISSING` or :data:`UNREADABLE`) to ``pf:{id}:audit`` in one MULTI/EXEC. A
        change landing between the read and the EXEC aborts it and the whole step runs again on the new state
        (at most :data:`TRADING_STATE_ATTEMPTS` times, then :class:`StoreUnavailableError`, nothing written),
        so ``keep`` and ``previous`` always see the state the write replaces. The write replaces the whole key
        (a corrupt hash, or a key of the wrong type, is repaired by a deliberate change).

        ``expected``: the state the change was made against (what the person's page showed: a state name,
        :data:`MISSING` or :data:`UNREADABLE`); when the state read inside the WATCH is another,
        :class:`TradingStateConflictError` (``TRADING_STATE_CHANGED``) names who changed it to what, when and
        why, and nothing is written. None: no such check (the automation's tighten-only changes use ``keep``).

        Returns what was found and whether it was written. Raises :class:`StoreUnavailableError` when Redis
        cannot be reached or keeps changing the state.
        """
        keys = PortfolioKeys(portfolio_id)
        try:
            for _ in range(TRADING_STATE_ATTEMPTS):
                with self.client.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(keys.trading_state)
                        current, error = self._watched_trading_state(portfolio_id, pipe)
                        previous = str(current.state) if current is not None else _unread(error)
                        if expected is not None and previous != str(expected).strip().upper():
                            pipe.unwatch()
                            raise TradingStateConflictError(_conflict(portfolio_id, str(expected), current, previous))
                        if keep is not None and keep(current):
                            pipe.unwatch()
                            return TradingStateChange(previous, current, False, error)
                        pipe.multi()
                        pipe.delete(keys.trading_state)
                        self.write_trading_state(portfolio_id, status, pipe)
                        self.append_audit(keys.audit, {**record, "previous": previous}, pipe)
                        pipe.execute()
                        return TradingStateChange(previous, status, True, error)
                    except redis.WatchError:
                        continue
        except redis.ConnectionError as exc:
            raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc
        except redis.TimeoutError as exc:
            raise StoreUnavailableError(f"Redis did not answer in time: {exc}") from exc
        raise StoreUnavailableError(
            f"the trading state of {portfolio_id} kept changing; gave up after {TRADING_STATE_ATTEMPTS} attempts "
            "(nothing was written)"
        )

    def _watched_trading_state(self, portfolio_id: str, conn: Conn) -> tuple[TradingStatus | None, StoreError | None]:
        """The trading state read on a WATCHing pipeline, or ``(None, why)`` when missing or unreadable."""
        try:
            return self.read_trading_state(portfolio_id, conn), None
        except StoreError as exc:
            return None, exc
        except redis.ResponseError as exc:  # a key of another type
            return None, CorruptDataError(f"{PortfolioKeys(portfolio_id).trading_state}: {exc}")

    # -- every portfolio, read together (logic/monitor.py) ---------------------------------------------------
    def read_portfolio_bundles(
        self,
        known_ids: Iterable[str] | None = None,
        select: Callable[[list[str]], list[str]] | None = None,
        reader: PortfolioReader | None = None,
    ) -> dict[str, PortfolioBundle]:
        """Every registered portfolio's state, positions and trading state in ONE MULTI/EXEC.

        One transaction, so a fill (itself one MULTI) is seen entirely or not at all: cash and holdings never
        come from two sides of a trade. ``known_ids`` is the caller's guess of the registry; when the registry
        differs, the read is repeated with the registered ids (at most twice more). A portfolio that does not
        decode carries its typed error instead of a state (the caller skips it: fail closed). ``select``
        (registered ids -> the ones to read) reads a subset: a monitor's shard (logic/shards.py).

        ``reader`` (a :class:`~engine.store.portfolio_reader.PortfolioReader` the caller keeps between reads)
        returns the same in few round trips (Lua scripts, each portfolio read whole by one; only what Redis reports
        written since the reader's last read, engine/store/tracking.py) and decodes only what changed.
        """
        if reader is not None:
            return reader.read(self, known_ids, select)
        registry = sorted(known_ids) if known_ids is not None else self.portfolio_ids()
        for _ in range(3):
            ids = sorted(select(registry)) if select is not None else registry
            pipe = slot_transaction(self.client)  # on a Redis Cluster: each portfolio's MULTI on its own slot
            pipe.smembers(PORTFOLIOS_KEY)
            for pid in ids:
                keys = PortfolioKeys(pid)
                pipe.hgetall(keys.state)
                pipe.hgetall(keys.positions)
                pipe.hgetall(keys.trading_state)
            raw = pipe.execute()
            registered = sorted(decode_str(r, key=PORTFOLIOS_KEY) for r in raw[0])
            if registered == registry:
                break
            registry = registered
        else:
            raise CorruptDataError(f"{PORTFOLIOS_KEY} keeps changing; cannot read a consistent set")
        out: dict[str, PortfolioBundle] = {}
        for i, pid in enumerate(ids):
            state_raw, positions_raw, trading_raw = raw[1 + 3 * i : 4 + 3 * i]
            try:
                if not state_raw:
                    raise StoreEmptyError(f"portfolio {pid!r} is registered but has no state")
                state = decode_portfolio(pid, state_raw, positions_raw)
                trading = decode_trading_status(PortfolioKeys(pid).trading_state, trading_raw)
                out[pid] = PortfolioBundle(pid, state, trading, None)
            except StoreError as exc:
                out[pid] = PortfolioBundle(pid, None, None, exc)
        return out


def decode_portfolio(
    portfolio_id: str,
    state: Mapping[bytes, bytes],
    raw_positions: Mapping[bytes, bytes],
    positions: Mapping[str, Position] | None = None,
) -> PortfolioState:
    """A portfolio from its state hash and its positions hash (as HGETALL returns them); ``positions``: the
    positions already decoded (``raw_positions`` is then not read)."""
    keys = PortfolioKeys(portfolio_id)

    def field_(name: str) -> bytes | None:
        return state.get(name.encode())

    if positions is None:
        positions = decode_positions(portfolio_id, raw_positions)
    account_type = decode_str(field_("account_type"), key=f"{keys.state}.account_type")
    if account_type not in _ACCOUNT_TYPES:
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


def decode_positions(portfolio_id: str, raw_positions: Mapping[bytes, bytes]) -> dict[str, Position]:
    key = PortfolioKeys(portfolio_id).positions
    positions = {}
    for raw_ticker, raw_pos in raw_positions.items():
        ticker = decode_str(raw_ticker, key=key)
        positions[ticker] = _decode_position_memo(raw_pos, f"{key}.{ticker}")
    return positions


@functools.lru_cache(maxsize=65_536)
def _decode_position_memo(raw: bytes | str, key: str) -> Position:
    """:func:`decode_position`, remembered: the monitor decodes every position of every portfolio on every
    tick and they rarely change (a Position is immutable; a record that does not decode is not remembered)."""
    return decode_position(raw, key)


def new_positions_rev(conn: Conn, portfolio_id: str) -> str:
    """Mark the positions of ``portfolio_id`` as changed: readers drop what they cached under the old one."""
    rev = uuid.uuid4().hex
    conn.hset(PortfolioKeys(portfolio_id).state, "positions_rev", rev)
    return rev
