"""The domain's vocabulary and value objects, each defined once.

Every word of the domain that other modules spell (trading states, severities, alert statuses, sides, channels,
reason codes) is a :class:`~enum.StrEnum` here; the value objects that travel between layers are frozen
dataclasses with ``to_dict()`` / ``from_dict()`` for the wire (the store's codec) and for the public API's
JSON-safe results. A ``StrEnum`` member *is* its string, so ``TradingState.HALTED == "HALTED"`` and JSON encodes
it as ``"HALTED"``: stored data and the public API keep their plain strings.

Nothing here does I/O; :mod:`engine.store` encodes these records, :mod:`logic` builds them.

Sections::

    vocabulary          TradingState, Severity, AlertStatus, Side, OrderIntent, VarMethod, AccountType, Channel,
                        ReasonCode, Clock
    market and books    MarketHeader, MarketSnapshot, Position, PortfolioState, TradingStatus
    decisions           Reason, Decision, Fill, ExecutionResult           (logic/risk_manager.py builds them)
    snapshots           Snapshot                                          (logic/monitor.py builds them)

The alerting pipeline's records (Alert, OutboxEntry, Delivery) live in :mod:`engine.alert_records`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

Float64Array = npt.NDArray[np.float64]

Clock = Callable[[], float]
"""Seconds since the epoch, injected wherever time is stamped or windowed (``time.time`` when live; a replay
passes the data's own clock)."""


# -- vocabulary --------------------------------------------------------------------------------------------------


class TradingState(StrEnum):
    """A portfolio's trading state: the kill switch. A missing or unreadable state counts as HALTED."""

    ACTIVE = "ACTIVE"
    """Every check applies; nothing else restricts trading."""
    REDUCING = "REDUCING"
    """Only trades that shrink the absolute position pass."""
    HALTED = "HALTED"
    """Nothing is approved."""


class Severity(StrEnum):
    """How bad an alert is, lowest first (the order of :data:`SEVERITY_RANK`)."""

    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"


SEVERITY_RANK: Mapping[Severity, int] = {s: rank for rank, s in enumerate(Severity, start=1)}
"""LOW 1, MEDIUM 2, HIGH 3, CRITICAL 4: higher is worse."""


MAX_ACTOR_LENGTH = 256
"""The longest actor name a change accepts: a signed-in actor is ``<issuer>|<subject>`` (logic/access.py), about
80 characters from Keycloak and 120 from Entra ID."""


class AlertStatus(StrEnum):
    """The lifecycle of an alert: TRIGGERED -> ACKNOWLEDGED -> RESOLVED (or TRIGGERED -> RESOLVED)."""

    TRIGGERED = "TRIGGERED"
    ACKNOWLEDGED = "ACKNOWLEDGED"
    RESOLVED = "RESOLVED"


ACTIVE_ALERT_STATUSES: frozenset[AlertStatus] = frozenset({AlertStatus.TRIGGERED, AlertStatus.ACKNOWLEDGED})
"""Statuses of an alert that is still open (one per rule and portfolio)."""


class Side(StrEnum):
    """The side of an order."""

    BUY = "BUY"
    SELL = "SELL"

    @property
    def sign(self) -> int:
        """+1 for BUY, -1 for SELL: the sign of the position change."""
        return 1 if self is Side.BUY else -1


class OrderIntent(StrEnum):
    """Why an order is sent: an ordinary trade, or a liquidation-only order that may only shrink a position.

    Liquidation-only orders are what the automated responses and an authorised risk manager send to de-risk a
    book; they are accepted in HALTED (SEC 15c3-5 / ESMA RTS 6: a kill switch must never prevent risk
    reduction) and are refused if they would grow or flip a position.
    """

    TRADE = "trade"
    LIQUIDATION = "liquidation"


class VarMethod(StrEnum):
    """How VaR and CVaR are computed (``model.var_method``, overridable per portfolio)."""

    NORMAL = "normal"
    """Parametric normal on the EWMA covariance (RiskMetrics)."""
    STUDENT_T = "student_t"
    """EWMA covariance with Student-t quantiles, degrees of freedom fitted to standardized returns."""
    FHS = "fhs"
    """Filtered historical simulation on the window of standardized returns (Barone-Adesi et al.)."""


class AccountType(StrEnum):
    """A cash account cannot short or borrow; a margin account posts initial margin on gross exposure."""

    CASH = "cash"
    MARGIN = "margin"


class Channel(StrEnum):
    """Where a notification goes."""

    LOG = "log"
    """The monitor's log: always available, needs no configuration."""
    EMAIL = "email"
    SMS = "sms"
    WEBHOOK = "webhook"
    ALERTMANAGER = "alertmanager"
    """A Prometheus Alertmanager's v2 API (notifications/alertmanager.py): the address is its base URL."""


class ReasonCode(StrEnum):
    """Why a trade is refused. The value is the stable code stored in decisions and the trade log."""

    UNKNOWN_TICKER = "UNKNOWN_TICKER"
    """The ticker is not in the market snapshot (not in the universe, or not yet added)."""
    BAD_QUANTITY = "BAD_QUANTITY"
    """Quantity is not a positive whole number of shares, is not finite, or exceeds ``max_order_qty``."""
    BAD_SIDE = "BAD_SIDE"
    """Side is neither BUY nor SELL."""
    MISSING_PRICE = "MISSING_PRICE"
    """The ticker (or a held ticker needed for the risk figures) has no usable price: NaN, inf or <= 0 (or, for
    the ticker traded, one that fills at 0 on the books' 0.0001 grid)."""
    STALE_PRICE = "STALE_PRICE"
    """The last price is older than ``stale_price_seconds``, or stamped further than that in the future."""
    PRICE_COLLAR = "PRICE_COLLAR"
    """The last price is further than ``price_collar_pct`` from the session reference price (or has none)."""
    PRICE_SANITY = "PRICE_SANITY"
    """The last price is more than ``price_sanity_factor`` times, or less than 1/``price_sanity_factor`` of, the
    collar's reference price (a feed quoting in cents, a bad print): every order is refused, risk-reducing and
    liquidation-only ones too (never waived)."""
    MAX_NOTIONAL = "MAX_NOTIONAL"
    """``qty * price`` exceeds ``max_order_notional``."""
    INSUFFICIENT_CASH = "INSUFFICIENT_CASH"
    """Cash account: cost plus fees exceed the cash (cash would go negative)."""
    OVERSELL = "OVERSELL"
    """Cash account: selling more shares than are held."""
    SHORT_NOT_ALLOWED = "SHORT_NOT_ALLOWED"
    """Cash account: selling a ticker that is not held (a short sale)."""
    MARGIN = "MARGIN"
    """Margin account: post-trade initial margin (gross exposure x initial_margin) would exceed equity."""
    VAR_LIMIT = "VAR_LIMIT"
    """Post-trade VaR would exceed ``var_limit`` and the trade adds VaR."""
    CONCENTRATION = "CONCENTRATION"
    """The position would exceed ``max_concentration`` of equity and the trade grows it."""
    RATE_LIMIT = "RATE_LIMIT"
    """More than ``max_orders_per_minute`` fills in the last 60 seconds (the automation's liquidation-only orders:
    more than its own budget, ``logic.checks.AUTOMATION_RATE_MULTIPLE`` times that)."""
    TRADING_HALTED = "TRADING_HALTED"
    """The portfolio's trading state is HALTED, or missing/unreadable (fail closed)."""
    REDUCING_ONLY = "REDUCING_ONLY"
    """The trading state is REDUCING and the trade does not reduce the absolute position."""
    MARKET_CLOSED = "MARKET_CLOSED"  # outside a session of market.calendar, limits.outside_session = "reject"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    """Redis cannot be reached: nothing is approved (fail closed)."""
    STORE_EMPTY = "STORE_EMPTY"
    """The store holds no market snapshot or no such portfolio: run the warm-up."""
    STORE_CORRUPT = "STORE_CORRUPT"
    """A stored value does not decode, or the covariance is not a valid matrix: fail closed."""
    SCHEMA_MISMATCH = "SCHEMA_MISMATCH"
    """The store was written by another layout version."""
    BAD_ORDER_ID = "BAD_ORDER_ID"
    """execute_trade: client_order_id is not a non-empty string of at most 128 characters."""
    BAD_ACTOR = "BAD_ACTOR"
    """execute_trade: the actor claims to be the automation (``auto:...``) but the order does not come from the
    automated responses' order path (logic/action_orders.py ``AUTOMATION``); nothing was written."""
    RETRY_EXHAUSTED = "RETRY_EXHAUSTED"
    """execute_trade: concurrent trades kept changing the portfolio; nothing was traded, send it again."""
    DUPLICATE_ORDER_ID = "DUPLICATE_ORDER_ID"
    """execute_trade: the client order id already filled a different order (another ticker, side, quantity,
    intent or portfolio); nothing was traded. The same order sent again is the idempotent duplicate instead."""
    OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
    """execute_trade (status ``UNKNOWN``): the EXEC's reply was lost and Redis stayed unreachable, so whether the
    order filled is unknown. Resend it with the same client order id once Redis is back."""
    LEVERAGE = "LEVERAGE"
    """Gross exposure / equity after the trade would exceed ``max_gross_leverage`` and the trade grows it."""
    STRESSED_VAR = "STRESSED_VAR"
    """Post-trade stressed VaR would exceed ``stressed_var_limit`` and the trade adds stressed VaR."""
    DAILY_LOSS = "DAILY_LOSS"
    """Today's loss reached ``max_daily_loss`` (or is unknown): only risk-reducing trades pass."""
    POSITION_LIMIT = "POSITION_LIMIT"
    """The absolute position would exceed its share limit (``max_position_qty`` / ``position_limits``)."""
    MARGIN_FLOOR = "MARGIN_FLOOR"
    """Margin account: the margin level after the trade would fall below ``min_margin_level_after``."""
    LIQUIDATION_ONLY = "LIQUIDATION_ONLY"
    """A liquidation-only order that would not shrink the absolute position without flipping it."""


# -- market and books --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MarketHeader:
    """Everything of the market snapshot but the covariance matrix (cheap to read on every check)."""

    version: int
    ts: float
    tickers: tuple[str, ...]
    prices: Float64Array
    """Last price per ticker, NaN where none was ever received."""
    price_ts: Float64Array
    """Epoch seconds of each ticker's last accepted price."""

    def index(self, ticker: str) -> int:
        return self.tickers.index(ticker)


@dataclass(frozen=True)
class MarketSnapshot(MarketHeader):
    cov: Float64Array = field(default_factory=lambda: np.empty((0, 0)))
    """EWMA covariance of one-bar log returns, in ticker order."""


@dataclass(frozen=True)
class Position:
    """One holding: signed whole shares, average cost and the realized P&L booked on it (exact money)."""

    qty: int
    avg_price: Decimal
    realized_pnl: Decimal = Decimal(0)

    def to_dict(self) -> dict[str, Any]:
        """The wire form: money as exact decimal strings (the codec encodes Decimals as strings)."""
        return {"qty": self.qty, "avg_price": self.avg_price, "realized_pnl": self.realized_pnl}


@dataclass(frozen=True)
class PortfolioState:
    """A portfolio's books as stored: cash, positions and the account's terms."""

    portfolio_id: str
    account_type: str
    cash: Decimal
    positions: Mapping[str, Position]
    realized_pnl: Decimal = Decimal(0)
    fees_paid: Decimal = Decimal(0)
    initial_margin: float = 0.5
    maintenance_margin: float = 0.25
    updated_at: float = 0.0


@dataclass(frozen=True)
class TradingStatus:
    """A portfolio's trading state with who set it, why and when (the record behind the kill switch)."""

    state: TradingState
    reason: str
    actor: str
    ts: float


# -- decisions ---------------------------------------------------------------------------------------------------


class DecisionStatus(StrEnum):
    """The verdict of the pre-trade gate on one order."""

    APPROVED = "APPROVED"
    REJECTED = "REJECTED"


class ExecutionStatus(StrEnum):
    """What execute_trade did with one order."""

    FILLED = "FILLED"
    REJECTED = "REJECTED"
    """Nothing was traded (the reasons say why)."""
    UNKNOWN = "UNKNOWN"
    """The fill was sent to Redis, its reply was lost and Redis could not be reached to read it back: the order may
    have filled. Never stored; the one reason is ``OUTCOME_UNKNOWN``. Resend with the same client order id once
    Redis is back: the duplicate check returns the fill if it happened, or trades the order once if it did not."""


class Role(StrEnum):
    """What a dashboard user may do (``[access]`` in the settings maps users to roles; see logic/access.py)."""

    VIEWER = "viewer"
    TRADER = "trader"
    RISK_MANAGER = "risk_manager"
    ADMIN = "admin"


class Action(StrEnum):
    """A state-changing action a role may be allowed (:func:`logic.access.authorize` checks it)."""

    TRADE = "trade"
    LIQUIDATE = "liquidate"
    """Send a liquidation-only order (:attr:`OrderIntent.LIQUIDATION`): shrink a position, in any trading state."""
    ACKNOWLEDGE = "acknowledge"
    RESOLVE = "resolve"
    TRADING_STATE = "trading_state"
    FIRM_SWITCH = "firm_switch"
    EDIT_RULES = "edit_rules"
    EDIT_LIMITS = "edit_limits"
    MANAGE_USERS = "manage_users"


@dataclass(frozen=True)
class Reason:
    """One failed check of a decision: a stable code for programs and a sentence a trader can act on."""

    code: ReasonCode
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": str(self.code), "message": self.message}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reason:
        return cls(code=ReasonCode(data["code"]), message=str(data["message"]))


def _plain(value: Any) -> Any:
    """A StrEnum member as its plain string (the public JSON keeps the types it had: str, not a subclass)."""
    return str(value) if isinstance(value, StrEnum) else value


def _reasons_from(raw: Any) -> tuple[Reason, ...]:
    return tuple(Reason.from_dict(r) for r in (raw or ()))


@dataclass(frozen=True)
class Decision:
    """The gate's decision on one order (``check_trade_impact``; ``decision`` inside an execution result).

    Figures that cannot be computed (bad input, missing data) are ``None``; the reasons say why. Money is in
    dollars as floats here (a decision is an estimate); the fill carries the exact amounts.
    ``to_dict()`` is the public JSON form, keys in this order.
    """

    status: DecisionStatus
    reasons: tuple[Reason, ...]
    """Every failed check, not only the first (empty when approved)."""
    portfolio_id: str
    ticker: str
    """The ticker as given, or its ``repr`` when it was not a string."""
    side: Side | None
    qty: int | None
    """None when the quantity is invalid."""
    price: float | None
    """Last price the market order would fill at."""
    reference_price: float | None
    """Session reference price used by the collar."""
    notional: float | None
    est_fees: float | None
    liquidity_cost: float | None
    """Half-spread plus square-root impact estimate, dollars."""
    var_before: float | None
    var_after: float | None
    delta_var: float | None
    marginal_var: float | None
    """VaR added per extra dollar of exposure to the ticker (at the limit's horizon)."""
    var_limit: float
    var_confidence: float
    var_horizon_days: float
    cash_before: float | None
    cash_after: float | None
    position_before: int | None
    position_after: int | None
    equity_after: float | None
    concentration_after: float | None
    """|position value| / equity after the trade (None when equity would be <= 0, or while a held ticker has no
    usable price: a share of a partial equity)."""
    margin_level_after: float | None
    """Equity / used margin x 100 after the trade (margin accounts; None otherwise, and while a held ticker has no
    usable price)."""
    trading_state: TradingState | None
    """None when unreadable (treated as HALTED)."""
    market_version: int | None
    checked_at: float
    intent: OrderIntent = OrderIntent.TRADE
    max_qty_allowed: int | None = None
    """Refused well-formed orders: the largest quantity of the same ticker and side that passes now."""

    @property
    def approved(self) -> bool:
        return self.status == DecisionStatus.APPROVED

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}
        data["reasons"] = [r.to_dict() for r in self.reasons]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        values: dict[str, Any] = {f.name: data.get(f.name) for f in fields(cls)}
        values["status"] = DecisionStatus(data["status"])
        values["reasons"] = _reasons_from(data.get("reasons"))
        values["side"] = None if data.get("side") is None else Side(data["side"])
        state = data.get("trading_state")
        values["trading_state"] = None if state is None else TradingState(state)
        values["intent"] = OrderIntent(data.get("intent") or OrderIntent.TRADE)  # older records: no intent
        return cls(**values)


_FILL_MONEY = (
    "price",
    "notional",
    "fees",
    "realized_pnl",
    "cash_before",
    "cash_after",
    "avg_price_before",
    "avg_price_after",
)


@dataclass(frozen=True)
class Fill:
    """The booking of one fill: exact money (``Decimal``; strings on the wire), whole-share quantities."""

    trade_id: str
    client_order_id: str | None
    portfolio_id: str
    ticker: str
    side: Side
    qty: int
    price: Decimal
    notional: Decimal
    fees: Decimal
    realized_pnl: Decimal
    """Realized P&L of this fill (average cost, gross of fees)."""
    cash_before: Decimal
    cash_after: Decimal
    position_before: int
    position_after: int
    avg_price_before: Decimal
    avg_price_after: Decimal
    ts: float
    actor: str
    market_version: int | None

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}
        for name in _FILL_MONEY:
            data[name] = str(data[name])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fill:
        values: dict[str, Any] = {f.name: data.get(f.name) for f in fields(cls)}
        for name in _FILL_MONEY:
            values[name] = Decimal(str(data[name]))
        values["side"] = Side(data["side"])
        return cls(**values)


@dataclass(frozen=True)
class ExecutionResult:
    """What ``execute_trade`` returns; also the trade log record and, for a fill with a client order id, the
    idempotency record (both stored without ``duplicate``)."""

    status: ExecutionStatus
    client_order_id: str | None
    duplicate: bool
    """True when this call returned the stored result of an earlier call (nothing traded)."""
    ts: float
    actor: str
    decision: Decision
    """The decision taken inside the transaction."""
    fill: Fill | None
    """None when rejected."""

    @property
    def reasons(self) -> tuple[Reason, ...]:
        """The decision's reasons ([] for a fill)."""
        return self.decision.reasons

    @property
    def filled(self) -> bool:
        return self.status == ExecutionStatus.FILLED

    def to_dict(self, *, with_duplicate: bool = True) -> dict[str, Any]:
        """The public JSON form; ``with_duplicate=False`` is the stored record (no ``duplicate`` key)."""
        decision = self.decision.to_dict()
        data: dict[str, Any] = {
            "status": str(self.status),
            "reasons": decision["reasons"],
            "client_order_id": self.client_order_id,
            "duplicate": self.duplicate,
            "ts": self.ts,
            "actor": self.actor,
            "decision": decision,
            "fill": None if self.fill is None else self.fill.to_dict(),
        }
        if not with_duplicate:
            del data["duplicate"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, duplicate: bool | None = None) -> ExecutionResult:
        """Read a result back (a stored record has no ``duplicate``: pass it)."""
        fill = data.get("fill")
        return cls(
            status=ExecutionStatus(data["status"]),
            client_order_id=data.get("client_order_id"),
            duplicate=bool(data.get("duplicate", False)) if duplicate is None else duplicate,
            ts=data["ts"],
            actor=data["actor"],
            decision=Decision.from_dict(data["decision"]),
            fill=None if fill is None else Fill.from_dict(fill),
        )


# -- snapshots ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotPnl:
    unrealized: float | None
    realized: float
    daily: float | None
    total: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"unrealized": self.unrealized, "realized": self.realized, "daily": self.daily, "total": self.total}


@dataclass(frozen=True)
class SnapshotVar:
    """VaR and CVaR at the reported confidences (:data:`engine.defaults.REPORTED_CONFIDENCES`, one day), stressed
    VaR, and the use of the VaR limit and of the stressed-VaR limit, each on the basis the gate enforces it on."""

    var95: float | None
    var99: float | None
    cvar95: float | None
    cvar99: float | None
    stressed_var99: float | None
    limit: float
    confidence: float
    utilization: float | None
    """VaR at the limit's confidence and horizon over the limit: the gate's basis."""
    horizon_days: float | None = None
    """The limit's horizon (``var_horizon_days``) ``utilization`` is measured over; None in a snapshot written
    before it was recorded."""
    stressed_limit_var: float | None = None
    """Stressed VaR at the limit's confidence and horizon, the figure the gate compares with ``stressed_limit``."""
    stressed_limit: float | None = None
    """The portfolio's ``stressed_var_limit`` (None: it sets none)."""
    stressed_utilization: float | None = None
    """``stressed_limit_var / stressed_limit`` (None without a stressed limit)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "var95": self.var95,
            "var99": self.var99,
            "cvar95": self.cvar95,
            "cvar99": self.cvar99,
            "stressed_var99": self.stressed_var99,
            "limit": self.limit,
            "confidence": self.confidence,
            "utilization": self.utilization,
            "horizon_days": self.horizon_days,
            "stressed_limit_var": self.stressed_limit_var,
            "stressed_limit": self.stressed_limit,
            "stressed_utilization": self.stressed_utilization,
        }


@dataclass(frozen=True)
class SnapshotDrawdown:
    daily: float | None
    weekly: float | None
    max: float | None
    """Each None when the valuation misses a held price (logic/snapshot.py)."""

    def to_dict(self) -> dict[str, Any]:
        return {"daily": self.daily, "weekly": self.weekly, "max": self.max}


@dataclass(frozen=True)
class SnapshotConcentration:
    hhi: float | None
    """None (as the other two) while the valuation misses a held price (logic/snapshot.py)."""
    largest_share: float | None
    largest_ticker: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"hhi": self.hhi, "largest_share": self.largest_share, "largest_ticker": self.largest_ticker}


@dataclass(frozen=True)
class SnapshotMargin:
    level: float | None
    """Equity / used x 100 (%); None for a cash account."""
    used: float | None
    maintenance: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "used": self.used, "maintenance": self.maintenance}


@dataclass(frozen=True)
class SnapshotData:
    market_age_seconds: float
    missing_prices: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"market_age_seconds": self.market_age_seconds, "missing_prices": list(self.missing_prices)}


@dataclass(frozen=True)
class SnapshotPosition:
    ticker: str
    qty: int
    avg_price: float
    last: float | None
    market_value: float
    weight: float | None
    unrealized_pnl: float
    realized_pnl: float
    mfe: float
    mae: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "ticker": self.ticker,
            "qty": self.qty,
            "avg_price": self.avg_price,
            "last": self.last,
            "market_value": self.market_value,
            "weight": self.weight,
            "unrealized_pnl": self.unrealized_pnl,
            "realized_pnl": self.realized_pnl,
            "mfe": self.mfe,
            "mae": self.mae,
        }


@dataclass(frozen=True)
class Snapshot:
    """The per-portfolio risk snapshot the monitor computes on every tick (schema and definitions:
    :mod:`logic.snapshot`). Alert rules read its :meth:`to_dict` form by dotted paths."""

    portfolio_id: str
    ts: float
    version: int
    market_ts: float
    equity: float | None
    cash: float
    market_value: float | None
    gross_exposure: float | None
    net_exposure: float | None
    leverage: float | None
    pnl: SnapshotPnl
    var: SnapshotVar
    drawdown: SnapshotDrawdown
    concentration: SnapshotConcentration
    margin: SnapshotMargin
    data: SnapshotData
    trading_state: TradingState
    positions: tuple[SnapshotPosition, ...]
    var_method: VarMethod = VarMethod.NORMAL
    """The method of every VaR / CVaR figure (``Settings.var_method_for``)."""
    component_var: Mapping[str, float] = field(default_factory=dict)
    """Each held ticker's share of the VaR at the limit's confidence and horizon (sums to it)."""
    backtest: Mapping[str, Any] | None = None
    """The continuous backtest's summary (``logic.backtest_monitor``); None before its first closed horizon."""

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON form (the store's snapshot, the alert engine's input)."""
        return {
            "portfolio_id": self.portfolio_id,
            "ts": self.ts,
            "version": self.version,
            "market_ts": self.market_ts,
            "equity": self.equity,
            "cash": self.cash,
            "market_value": self.market_value,
            "gross_exposure": self.gross_exposure,
            "net_exposure": self.net_exposure,
            "leverage": self.leverage,
            "pnl": self.pnl.to_dict(),
            "var": self.var.to_dict(),
            "drawdown": self.drawdown.to_dict(),
            "concentration": self.concentration.to_dict(),
            "margin": self.margin.to_dict(),
            "data": self.data.to_dict(),
            "trading_state": self.trading_state,
            "positions": [p.to_dict() for p in self.positions],
            "var_method": str(self.var_method),
            "component_var": dict(self.component_var),
            "backtest": None if self.backtest is None else dict(self.backtest),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        """The record of a stored snapshot; raises KeyError / TypeError / ValueError for a malformed one."""
        d = dict(data)
        return cls(
            **{k: d[k] for k in _SNAPSHOT_SCALARS},
            pnl=SnapshotPnl(**d["pnl"]),
            var=SnapshotVar(**d["var"]),
            drawdown=SnapshotDrawdown(**d["drawdown"]),
            concentration=SnapshotConcentration(**d["concentration"]),
            margin=SnapshotMargin(**d["margin"]),
            data=SnapshotData(
                float(d["data"]["market_age_seconds"]), tuple(d["data"]["missing_prices"])
            ),
            trading_state=TradingState(d["trading_state"]),
            positions=tuple(SnapshotPosition(**p) for p in d["positions"]),
            var_method=VarMethod(d.get("var_method", VarMethod.NORMAL)),
            component_var={str(k): float(v) for k, v in (d.get("component_var") or {}).items()},
            backtest=d.get("backtest"),
        )


_SNAPSHOT_SCALARS = (
    "portfolio_id", "ts", "version", "market_ts", "equity", "cash", "market_value", "gross_exposure",
    "net_exposure", "leverage",
)  # fmt: skip
