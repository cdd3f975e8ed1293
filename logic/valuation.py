"""Mark a portfolio to market: the one place that turns stored holdings and prices into exposure vectors.

The pre-trade gate, the monitor and the dashboard all start from :func:`value_portfolio`, so equity, weights
and margin mean the same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property

import numpy as np

from engine.store import Float64Array, MarketHeader, PortfolioState


@dataclass(frozen=True)
class Valuation:
    """A portfolio marked at one market snapshot; arrays are aligned with ``tickers`` (the matrix order).

    Frozen, so the sums are computed once (cached): the monitor reads each several times per snapshot."""

    tickers: tuple[str, ...]
    qty: Float64Array
    """Shares held per ticker (0 where not held; negative for shorts)."""
    prices: Float64Array
    avg_prices: Float64Array
    """Average cost per ticker (0 where not held)."""
    cash: Decimal
    missing: tuple[str, ...]
    """Held tickers with no usable price (not in the market snapshot, NaN or non-positive)."""
    account_type: str = "cash"
    initial_margin: float = 0.5
    maintenance_margin: float = 0.25
    clean_prices: Float64Array | None = None
    """``nan_to_num(prices, nan=0.0)`` when the caller computed it once for many portfolios (the monitor)."""

    @property
    def complete(self) -> bool:
        """Whether every held ticker has a usable price. An incomplete valuation counts the unpriced positions at
        0, so its equity is not the book's: the monitor neither moves the equity peaks with it nor reports its
        margin level or drawdowns (logic/snapshot.py)."""
        return not self.missing

    @cached_property
    def _clean(self) -> Float64Array:
        return self.clean_prices if self.clean_prices is not None else np.nan_to_num(self.prices, nan=0.0)

    @cached_property
    def market_values(self) -> Float64Array:
        return np.where(self.qty != 0, self.qty * self._clean, 0.0)

    @cached_property
    def market_value(self) -> float:
        return float(self.market_values.sum())

    @cached_property
    def gross_exposure(self) -> float:
        return float(np.abs(self.market_values).sum())

    @cached_property
    def equity(self) -> float:
        return float(self.cash) + self.market_value

    @cached_property
    def weights(self) -> Float64Array:
        """Dollar exposure per ticker as a fraction of equity (the ``weights`` of engine.math_logic)."""
        equity = self.equity
        if equity <= 0:
            return np.zeros_like(self.qty)
        return self.market_values / equity

    @cached_property
    def unrealized(self) -> Float64Array:
        return np.where(self.qty != 0, self.qty * (self._clean - self.avg_prices), 0.0)

    @property
    def leverage(self) -> float:
        """Gross exposure over equity (inf when equity is not positive and there is exposure)."""
        equity = self.equity
        if equity <= 0:
            return float("inf") if self.gross_exposure > 0 else 0.0
        return self.gross_exposure / equity

    @property
    def margin_used(self) -> float:
        """Initial margin on the gross exposure (margin accounts)."""
        return self.gross_exposure * self.initial_margin

    @property
    def margin_level(self) -> float | None:
        """Equity / used margin x 100, in percent; None for a cash account, when nothing is used, or when the
        valuation is not :attr:`complete`: an unpriced position counts 0 in both the equity and the used margin,
        so the ratio is no margin level (an unpriced short would raise it far above the true one)."""
        if self.account_type != "margin" or self.missing:
            return None
        used = self.margin_used
        return None if used <= 0 else self.equity / used * 100.0


def value_portfolio(
    state: PortfolioState,
    header: MarketHeader,
    index: Mapping[str, int] | None = None,
    clean_prices: Float64Array | None = None,
) -> Valuation:
    """Align ``state``'s positions with the market snapshot's tickers and prices (``index``: ticker -> position
    in ``header.tickers``, and ``clean_prices``: ``nan_to_num(header.prices, nan=0.0)``, when the caller values
    many portfolios at one snapshot)."""
    if index is None:
        index = {ticker: i for i, ticker in enumerate(header.tickers)}
    n = len(header.tickers)
    qty = np.zeros(n)
    avg = np.zeros(n)
    missing: list[str] = []
    for ticker, position in state.positions.items():
        if position.qty == 0:
            continue
        i = index.get(ticker)
        if i is None:
            missing.append(ticker)
            continue
        qty[i] = position.qty
        avg[i] = float(position.avg_price)
        price = header.prices[i]
        if not (np.isfinite(price) and price > 0):
            missing.append(ticker)
    return Valuation(
        tickers=header.tickers,
        qty=qty,
        prices=header.prices,
        avg_prices=avg,
        cash=state.cash,
        missing=tuple(sorted(missing)),
        account_type=state.account_type,
        initial_margin=state.initial_margin,
        maintenance_margin=state.maintenance_margin,
        clean_prices=clean_prices,
    )
