"""``max_qty_allowed``: the largest quantity of a refused order's ticker and side that passes every check now.

Two steps (only for a refused, well-formed order: approved orders pay nothing):

1. A closed-form guess (:func:`guess`) from each limit, in shares of the order's direction ``s = ±1`` at price
   ``p``: linear bounds for notional, cash, inventory, position, concentration, leverage and margin
   (``|x_i + s q p| <= B``), and for the VaR limits the larger root of a quadratic. Under the incremental formula
   ``VaR(q) = k sqrt(v + 2 q s p (Σx)_i + q² p² Σ_ii)`` with ``k = z_c sqrt(h)``, ``VaR(q) <= T`` holds for
   ``q <= (-b + sqrt(b² - 4ac)) / 2a`` with ``a = p² Σ_ii``, ``b = 2 s p (Σx)_i``, ``c = v - (T / k)²``. The stressed
   VaR is the worse of two scenarios (:func:`engine.math_logic.stressed_portfolio_sigma`): the stressed matrix,
   and ``m² Σ`` (every volatility times ``m``), so both must stay within its limit: the smaller of the root on
   the stressed matrix and the root on ``Σ`` with ``T / m``. The refusing limits only count beyond the
   risk-reducing region (``q <= |q0|`` when the order closes toward zero).
2. The real check settles it (:func:`largest_passing`): from the guess, gallop up or bisect down to a ``q`` that
   passes with ``q + 1`` refused (or ``q`` = the fat-finger cap), in at most :data:`MAX_EVALUATIONS` checks.

The passing quantities need not start at one share: on a cash account whose cash is below the minimum fee, a
sale must raise enough to pay its fee (cash 0, minimum fee 1.00, price 0.50: one share is refused
INSUFFICIENT_CASH, two pass). The search never assumes ``q = 1`` passes; :func:`floor_guess` is the closed form
of that smallest passing sale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from statistics import NormalDist
from typing import TYPE_CHECKING

import redis

from engine import math_logic
from engine.errors import StoreError
from engine.records import AccountType, Float64Array, OrderIntent, Side, TradingState
from engine.settings import Fees, Limits
from logic.decisions import commission, fill_price
from logic.limits import Lookups, position_cap

if TYPE_CHECKING:  # logic.checks imports this module
    from logic.check_book import Sim
    from logic.checks import Checker

MAX_EVALUATIONS = 64
"""Upper bound on the checks one search runs (the guess, a gallop and a bisection need about 45 at most)."""


FLOOR_PROBES = 4
"""Checks spent from :func:`floor_guess` upward (``f``, ``f + 1``, ``f + 3``, ``f + 7``) when neither the guess nor
one share passes: the closed form is exact but for a share of rounding, and a refusal for another reason (a
halted book) must stay cheap."""


def largest_passing(
    passes: Callable[[int], bool], guess: float, cap: int, budget: int = MAX_EVALUATIONS, floor: float = 1.0
) -> int:
    """The largest ``q`` in ``[1, cap]`` found with ``passes(q)`` and not ``passes(q + 1)`` (0: none passes),
    starting from ``guess``; ``floor`` is the smallest passing quantity's estimate (:func:`floor_guess`).

    Notes
    -----
    ``passes`` is assumed to hold on an interval ``[A, Q]`` and fail outside it (each limit's passing set is an
    interval: VaR is convex in ``q``, the linear limits are bounds; ``A > 1`` only where a sale must pay the
    minimum fee out of its proceeds). The guess is checked first: passing, the search gallops up from it and
    bisects; refused, it is an upper bound and the search looks for a passing ``q`` below it (one share, then
    ``floor`` and a few shares above it) and bisects between the two. Where the set is not an interval, the
    result is still a boundary: ``q`` passes and ``q + 1`` does not. An exact guess costs two checks; an order no
    quantity passes (a halted book, a stale price) two, or :data:`FLOOR_PROBES` more with a ``floor`` above one.
    """
    used = 0

    def ok(q: int) -> bool:
        nonlocal used
        used += 1
        return passes(q)

    if cap < 1:
        return 0
    g = min(max(int(guess), 1), cap) if math.isfinite(guess) else cap
    lo, hi = 0, 0  # lo passes (0: none found); hi > lo is refused (0: none known)
    if ok(g):
        lo = g
    else:
        lo = _first_passing(ok, g, floor, cap)
        if lo == 0:
            return 0
        hi = g if g > lo else 0
    step = 1
    while not hi and lo < cap and used < budget:
        q = min(lo + step, cap)
        if ok(q):
            lo, step = q, step * 2
        else:
            hi = q
    while hi and hi - lo > 1 and used < budget:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _first_passing(ok: Callable[[int], bool], refused: int, floor: float, cap: int) -> int:
    """A passing quantity other than ``refused`` (the guess, refused): one share, else the floor estimate and a
    few above it (:data:`FLOOR_PROBES`); 0 when none of those pass."""
    if refused > 1 and ok(1):
        return 1
    if not (math.isfinite(floor) and floor > 1):
        return 0
    start = math.ceil(floor)
    for k in range(FLOOR_PROBES):
        q = start + 2**k - 1
        if q > cap:
            break
        if q != refused and ok(q):
            return q
    return 0


@dataclass(frozen=True)
class SizingInputs:
    """The state one refused order is sized against (dollars; the order's direction ``s``)."""

    ticker: str
    s: int
    """+1 BUY, -1 SELL."""
    price: float
    fill_price: Decimal
    q0: int
    x: Float64Array
    """Dollar exposures before the trade."""
    index: int
    cov: Float64Array
    variance: float
    """xᵀΣx of one bar."""
    horizon_bars: float
    cash: Decimal
    equity: float
    gross: float
    cash_account: bool
    initial_margin: float
    state: TradingState | None
    intent: OrderIntent
    stress_vol_multiplier: float
    """``settings.model.stress_vol_multiplier``: the stressed VaR's other crisis scenario is ``m² Σ``."""
    stressed_cov: Float64Array | None = None


def _exposure_bound(x_i: float, s: int, p: float, bound: float) -> float:
    """Largest q with ``|x_i + s q p| <= max(bound, |x_i|)`` (a position may always shrink back to its size)."""
    b = max(bound, abs(x_i))
    return (b - abs(x_i)) / p if s * x_i >= 0 else (b + abs(x_i)) / p


def _var_root(inp: SizingInputs, cov: Float64Array, variance: float, target: float, z: float) -> float:
    """Largest q with ``k sqrt(v + 2 q s p (Σx)_i + q² p² Σ_ii) <= target``, ``k = z sqrt(h)``."""
    i, p = inp.index, inp.price
    k = z * math.sqrt(inp.horizon_bars)
    a = p * p * float(cov[i, i])
    b = 2.0 * inp.s * p * float(cov[i] @ inp.x)
    c = variance - (target / k) ** 2
    if a <= 0:
        return math.inf if b <= 0 else -c / b
    disc = max(b * b - 4.0 * a * c, 0.0)
    return (-b + math.sqrt(disc)) / (2.0 * a)


def guess(inp: SizingInputs, limits: Limits, fees: Fees, daily_loss_hit: bool) -> float:
    """A closed-form estimate of ``max_qty_allowed`` (fees and rounding are left to the search)."""
    p, s, q0, x_i = inp.price, inp.s, inp.q0, float(inp.x[inp.index])
    z = NormalDist().inv_cdf(limits.var_confidence)
    hard = [float(limits.max_order_qty), float(limits.max_order_notional / inp.fill_price)]
    if inp.cash_account:
        if s > 0:
            per_share = inp.fill_price * (1 + fees.bps / Decimal(10_000)) + fees.per_share
            hard.append(float((inp.cash - fees.minimum) / per_share))
        else:
            hard.append(float(max(q0, 0)))
    closing = abs(q0) if s * q0 < 0 else 0  # the risk-reducing region: shrink toward zero

    var_now = z * math.sqrt(max(inp.variance, 0.0) * inp.horizon_bars)
    soft = [_var_root(inp, inp.cov, inp.variance, max(float(limits.var_limit), var_now), z)]
    if limits.stressed_var_limit is not None and inp.stressed_cov is not None:
        m = inp.stress_vol_multiplier
        v_s = float(inp.x @ inp.stressed_cov @ inp.x)
        sigma_s = math_logic.stressed_portfolio_sigma(math.sqrt(max(v_s, 0.0)), math.sqrt(max(inp.variance, 0.0)), m)
        target = max(float(limits.stressed_var_limit), z * sigma_s * math.sqrt(inp.horizon_bars))
        soft.append(_var_root(inp, inp.stressed_cov, v_s, target, z))  # the crisis matrix within the limit
        soft.append(_var_root(inp, inp.cov, inp.variance, target / m, z))  # and m·σ within it
    soft.append(_exposure_bound(x_i, s, p, limits.max_concentration * inp.equity))
    rest = inp.gross - abs(x_i)
    if limits.max_gross_leverage is not None:
        soft.append(_exposure_bound(x_i, s, p, limits.max_gross_leverage * inp.equity - rest))
    if not inp.cash_account and inp.initial_margin > 0:
        soft.append(_exposure_bound(x_i, s, p, inp.equity / inp.initial_margin - rest))
        if limits.min_margin_level_after > 0:
            floor = limits.min_margin_level_after / 100.0
            soft.append(_exposure_bound(x_i, s, p, inp.equity / (inp.initial_margin * floor) - rest))
    cap = position_cap(limits, inp.ticker)
    if cap is not None:
        top = max(cap, abs(q0))
        soft.append(float(top - abs(q0) if s * q0 >= 0 else top + abs(q0)))
    if daily_loss_hit:
        soft.append(0.0)
    if inp.state == TradingState.REDUCING and inp.intent == OrderIntent.TRADE:
        hedge = 0.0
        if limits.reducing_allows_hedges:  # VaR(q) < VaR(0): below the other root of the quadratic
            a = p * p * float(inp.cov[inp.index, inp.index])
            hedge = max(-2.0 * s * p * float(inp.cov[inp.index] @ inp.x) / a, 0.0) if a > 0 else 0.0
        soft.append(hedge)
    if inp.intent == OrderIntent.LIQUIDATION:
        hard.append(float(closing))
    return min(*hard, max(float(closing), min(soft)))


def floor_guess(inp: SizingInputs, fees: Fees) -> float:
    """The smallest sale that pays its own fee on a cash account holding less cash than the fee of one share
    (1 for any other order: every quantity from one share up is then as good as its limits allow).

    Cash after a sale of ``q`` is ``cash + q p - fee(q)`` with ``fee(q) = max(minimum, q (per_share + bps p / 10^4))``
    (logic/decisions.py ``commission``): at the minimum fee ``q >= (minimum - cash) / p``, above it
    ``q >= -cash / (p - per_share - bps p / 10^4)``; then checked on the exact fee (rounded to the cent).
    """
    p = inp.fill_price
    if not inp.cash_account or inp.s > 0 or p <= 0:
        return 1.0
    cash = inp.cash
    if cash + p - commission(fees, 1, p) >= 0:
        return 1.0
    net = p - fees.per_share - fees.bps * p / Decimal(10_000)  # proceeds per share past the minimum fee
    if net <= 0:
        return 1.0  # no sale pays its fee: nothing passes, the search's first checks say so
    q = max(1, math.ceil((fees.minimum - cash) / p))
    if cash < 0:
        q = max(q, math.ceil(-cash / net))
    for _ in range(3):  # the cent rounding of the fee: a share or two more at most
        if cash + q * p - commission(fees, q, p) >= 0:
            break
        q += 1
    return float(q)


def sizing_inputs(
    checker: Checker, sim: Sim, ticker: str, side: Side, intent: OrderIntent, lookups: Lookups
) -> tuple[SizingInputs, bool] | None:
    """What :func:`logic.sizing.guess` needs, or None when the state cannot be read (the search decides)."""
    portfolio, header = sim.portfolio, sim.header
    if portfolio is None or header is None:
        return None
    try:
        model = checker.models.get(header)
    except (StoreError, redis.RedisError):
        return None
    index = model.index.get(ticker)
    if model.error is not None or index is None or checker.method_error(model) is not None:
        return None
    price = float(model.header.prices[index])
    book = checker.books.book(model, sim.book_key, portfolio)
    held = portfolio.positions.get(ticker)
    stressed = None
    if checker.limits.stressed_var_limit is not None:
        stressed, _, _ = lookups.stressed(model, book.exposures)
    equity = float(portfolio.cash) + book.market_value
    day_open, _ = lookups.day_open() if checker.limits.max_daily_loss is not None else (None, None)
    daily_loss_hit = checker.limits.max_daily_loss is not None and (
        day_open is None or equity - day_open <= -float(checker.limits.max_daily_loss)
    )
    inputs = SizingInputs(
        ticker=ticker,
        s=side.sign,
        price=price,
        fill_price=fill_price(price),
        q0=held.qty if held is not None else 0,
        x=book.exposures,
        index=index,
        cov=model.cov,
        variance=book.variance,
        horizon_bars=checker.horizon_bars,
        cash=portfolio.cash,
        equity=equity,
        gross=book.gross_exposure,
        cash_account=portfolio.account_type == AccountType.CASH,
        initial_margin=portfolio.initial_margin,
        state=sim.trading_state.state if sim.trading_state is not None else None,
        intent=intent,
        stress_vol_multiplier=float(checker.settings.model.stress_vol_multiplier),
        stressed_cov=stressed,
    )
    return inputs, daily_loss_hit
