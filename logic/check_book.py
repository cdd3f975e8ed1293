"""What the pre-trade checks keep between evaluations (logic/checks.py): the risk of recently seen holdings
(:class:`BookCache` of :class:`Book`), what one evaluation reads (:class:`Sim`) and an approved trade's bookkeeping
(:class:`Plan`, for execution to write)."""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import numpy as np

from engine.errors import StoreError
from engine.market_model import MarketModel, ModelKey
from engine.records import (
    Float64Array,
    MarketHeader,
    PortfolioState,
    Position,
    Side,
    TradingStatus,
    VarMethod,
)
from engine.settings import Limits
from engine.store import TradeView
from logic.rejections import bookable
from logic.risk_models import risk_model_of
from logic.valuation import value_portfolio
from logic.var_methods import Prepared

BOOK_CACHE_SIZE = 16
"""Holdings risk (VaR, variance, marginal VaR) kept per (market key, holdings): a few books are plenty."""


@dataclass(frozen=True)
class Book:
    """Risk of one set of holdings at one market snapshot (cash is not part of it)."""

    exposures: Float64Array
    """Dollar exposure per ticker, matrix order."""
    market_value: float
    gross_exposure: float
    missing: tuple[str, ...]
    variance: float
    """xᵀΣx of one bar, dollars squared."""
    var: float
    """VaR at the limit's confidence and horizon, dollars."""
    marginal: Float64Array
    """dVaR/dx per ticker at the limit's confidence and horizon."""
    prepared: Prepared | None = None
    """What ``RiskModel.var_after`` needs of these holdings (the method's)."""

    @property
    def priced(self) -> bool:
        """Every held ticker has a usable price: only then is ``market_value`` (and any equity made of it) the
        book's, rather than the priced positions' alone (an unpriced one counts 0)."""
        return not self.missing


@dataclass
class Sim:
    """What one evaluation needs, mutable only inside what_if (cumulative baskets)."""

    header: MarketHeader | None
    reference: Mapping[str, float] | None
    portfolio: PortfolioState | None
    book_key: Any
    trading_state: TradingStatus | None
    recent_orders: int
    """The traders' fills in the order-rate window (every fill but the automation's liquidation ones)."""
    errors: Mapping[str, StoreError]
    recent_auto_orders: int = 0
    """The automation's liquidation-only fills in the window: its own budget (logic/checks.py)."""

    @classmethod
    def from_view(cls, view: TradeView) -> Sim:
        return cls(
            view.header,
            view.reference,
            view.portfolio,
            view.positions_key,
            view.trading_state,
            view.recent_orders,
            view.errors,
            view.recent_auto_orders,
        )

    @classmethod
    def empty(cls) -> Sim:
        """Nothing read: only the order itself can be checked."""
        return cls(None, None, None, None, None, 0, {})

    def apply(self, plan: Plan) -> None:
        """Continue from the state an approved trade leaves (what-if and stress baskets)."""
        self.portfolio = plan.portfolio_after
        self.book_key = holdings_key(plan.portfolio_after)


@dataclass(frozen=True)
class Plan:
    """An approved trade's bookkeeping, for execution to write."""

    ticker: str
    side: Side
    qty: int
    price: Decimal
    cash_before: Decimal
    position_before: Position | None
    position_after: Position
    portfolio_before: PortfolioState
    now: float
    realized: Decimal
    notional: Decimal
    fee: Decimal
    model: MarketModel
    book: Book
    """Risk of the holdings before the trade, from which the book after it is derived."""
    index: int

    @functools.cached_property
    def portfolio_after(self) -> PortfolioState:
        """The portfolio after the fill (built only when needed: copying a big book costs time)."""
        before = self.portfolio_before
        positions = dict(before.positions)
        if self.position_after.qty == 0 and self.position_after.realized_pnl == 0:
            positions.pop(self.ticker, None)
        else:
            positions[self.ticker] = self.position_after
        cash_delta = (-self.notional if self.side == Side.BUY else self.notional) - self.fee
        return replace(
            before,
            cash=before.cash + cash_delta,
            positions=positions,
            realized_pnl=before.realized_pnl + self.realized,
            fees_paid=before.fees_paid + self.fee,
            updated_at=self.now,
        )


class BookCache:
    """Risk of recently seen holdings, per (market key, holdings key), bounded to :data:`BOOK_CACHE_SIZE`."""

    def __init__(self, limits: Limits, horizon_bars: float, method: VarMethod = VarMethod.NORMAL) -> None:
        self.limits = limits
        self.horizon_bars = horizon_bars
        self.method = VarMethod(method)
        """The portfolio's VaR method: every figure of a :class:`Book` is by it."""
        self._books: OrderedDict[Any, Book] = OrderedDict()
        self._lock = threading.Lock()

    def book(self, model: MarketModel, positions_key: Any, portfolio: PortfolioState) -> Book:
        key = (model.key, positions_key)
        book = self._books.get(key)
        if book is not None:
            return book
        valuation = value_portfolio(portfolio, model.header)
        held = np.flatnonzero(valuation.qty)
        absurd = [valuation.tickers[i] for i in held if not bookable(float(model.header.prices[i]))]
        missing = tuple(sorted({*valuation.missing, *absurd}))  # a price the books cannot hold is no price
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite figures are refused by the caller
            x = np.array(valuation.market_values, dtype=float)
        book = self.risk_of(model, x, missing)
        self.put(key, book)
        return book

    def remember_fill(self, plan: Plan, positions_key: bytes) -> None:
        """After our own fill: cache the new holdings' risk under the new positions token (O(N²) instead of
        valuing every position again)."""
        x = plan.book.exposures.copy()
        x[plan.index] = float(plan.position_after.qty) * float(plan.model.header.prices[plan.index])
        self.put((plan.model.key, positions_key), self.risk_of(plan.model, x, plan.book.missing))

    def risk_of(self, model: MarketModel, x: Float64Array, missing: tuple[str, ...]) -> Book:
        risk, confidence = risk_model_of(model, self.method, self.horizon_bars), self.limits.var_confidence
        prepared = risk.prepare(x)
        var, marginal = risk.var(x, confidence), risk.marginal_var(x, confidence)
        sigma = math.sqrt(prepared.variance if self.method is not VarMethod.FHS else max(float(x @ model.cov @ x), 0.0))
        return Book(
            exposures=x,
            market_value=float(x.sum()),
            gross_exposure=float(np.abs(x).sum()),
            missing=missing,
            variance=float(sigma) ** 2,
            var=float(var),
            marginal=marginal,
            prepared=prepared,
        )

    def put(self, key: tuple[ModelKey, Any], book: Book) -> None:
        with self._lock:
            self._books[key] = book
            while len(self._books) > BOOK_CACHE_SIZE:
                self._books.popitem(last=False)


def holdings_key(portfolio: PortfolioState) -> tuple[Any, ...]:
    """A cache key for simulated holdings (what-if), by content: quantities are all risk depends on."""
    return ("simulated", tuple(sorted((t, p.qty) for t, p in portfolio.positions.items() if p.qty != 0)))
