"""Feeds with a ticker missing from some bars, and the Student-t moment fit written out: the data of the tests
that a missing price is a missing entry of a window of standardized returns (the live model's,
tests/test_tail_integration.py, and the continuous backtest's, tests/test_backtest_gaps.py), not a 0 observation."""

from __future__ import annotations

import math

import numpy as np

from engine.feeds import Bar
from engine.store import MarketSnapshot

GAP_TICKER = "DDD"
"""The ticker the feeds leave out of some bars."""


def moment_dof(sample: np.ndarray) -> float:
    """ν = 6 / κ + 4 of the pooled zero-mean excess kurtosis, in [3, 30], written out (any shape: pooled)."""
    z2 = np.square(np.asarray(sample, dtype=float).ravel())
    kurtosis = np.mean(z2**2) / np.mean(z2) ** 2 - 3.0
    return 30.0 if kurtosis <= 0 else float(min(max(6.0 / kurtosis + 4.0, 3.0), 30.0))


def gap_bars(
    start: MarketSnapshot,
    count: int,
    *,
    share: float = 0.3,
    unchanged: bool = False,
    seed: int = 13,
    step: float = 0.001,
    spacing: float = 1.0,
    first_gap: int = 0,
) -> tuple[list[Bar], list[Bar], np.ndarray]:
    """``count`` fat-tailed bars (Student-t 8 log steps of scale ``step``, ``spacing`` seconds apart) with
    :data:`GAP_TICKER` missing from ``share`` of them, none before bar ``first_gap``: (the bars with the gaps, the
    same bars with every price, which bars miss it). Every other gap is an unusable price (NaN, refused by the
    price filter), the others no price at all.

    ``unchanged``: the ticker's price does not move in its gap bars, so the bars with every price show it arriving
    unchanged there (a genuine 0 return) and carrying its last price forward over a gap is exact.
    """
    rng = np.random.default_rng(seed)
    gaps = np.zeros(count, dtype=bool)
    gaps[rng.choice(np.arange(first_gap, count), round(share * count), replace=False)] = True
    col = start.tickers.index(GAP_TICKER)
    prices = start.prices.copy()
    with_gaps, full = [], []
    for k in range(count):
        moves = rng.standard_t(8, size=len(prices)) * step
        if unchanged and gaps[k]:
            moves[col] = 0.0
        prices = prices * np.exp(moves)
        every = dict(zip(start.tickers, prices.tolist(), strict=True))
        some = dict(every)
        if gaps[k]:
            if int(gaps[: k + 1].sum()) % 2:
                some[GAP_TICKER] = math.nan
            else:
                del some[GAP_TICKER]
        with_gaps.append(Bar(1000.0 + spacing * k, some))
        full.append(Bar(1000.0 + spacing * k, every))
    return with_gaps, full, gaps
