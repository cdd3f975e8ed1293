"""The pre-trade checks of SPEC.md section 6: one order against a portfolio's state, a market model and limits.

:class:`Checker` runs every check on a :class:`Sim` (what one evaluation reads: the market header, reference
prices, the portfolio, its trading state, the order-rate count and the store errors met reading them) and
returns a :class:`~engine.records.Decision` listing *every* failed check, plus, when approved, the
:class:`Plan` that execution books. Nothing here writes; the covariance comes from the shared
:class:`~engine.market_model.MarketModelCache` and the risk of the holdings from a :class:`BookCache`.

Risk model: dollar exposures ``x = qty * last`` and the one-bar (one-minute) EWMA covariance ``S`` of the market
snapshot; VaR = z * sqrt(x'Sx) * sqrt(bars_per_day * horizon_days). That is the equity-weighted form (``weights = x
/ equity, value = equity``) of engine.math_logic, but also defined when equity is not positive. The gate refuses a
trade on the VaR limit only when the trade *adds* VaR (a trade that lowers VaR passes that check even above the
limit), and on concentration / margin only trades that grow the position / the gross exposure. On top of that, a
*risk-reducing* trade (:func:`logic.limits.shrinks_position`: it shrinks the position without flipping it) is never
refused by any limit of :data:`logic.limits.WAIVED_WHEN_REDUCING_RISK` (collar, VaR, stressed VaR, concentration,
margin, margin floor, leverage, daily loss, position, REDUCING; the collar's reference is re-anchored at every
session open by engine/collar.py); bad input, missing or stale data, a price beyond the sanity factor of the collar's
reference (``PRICE_SANITY``: cents for dollars, a bad print), store errors, HALTED, cash-account inventory and cash,
the fat-finger limits and the order rate still refuse it. The order rate has two budgets: the traders'
``max_orders_per_minute`` counts every fill but the automation's liquidation-only ones (actor ``auto:<rule id>``
with ``OrderIntent.LIQUIDATION`` and the automation's grant, :func:`automation_order`), which neither count against
it nor are refused by it, so a desk trading at its limit cannot lock the automated responses out of a crash; they
have their own budget of :data:`AUTOMATION_RATE_MULTIPLE` times the limit per minute, which still stops a runaway
loop (an order whose actor claims ``auto:`` without the grant is refused ``BAD_ACTOR``, logic/execution.py). A human
risk manager's liquidation-only order is a trader's order here (counted and throttled). An order that flips the position
is not risk-reducing, even when it lowers VaR and gross exposure: only its closing part would be, and the quantity it
opens on the other side is new risk, so nothing is waived for it and each limit measures what it adds from the book
with the ticker flat (:meth:`Checker._check_risk`); it passes at most as a hedge. HALTED refuses every trader order
(``OrderIntent.TRADE``); a liquidation-only order (``OrderIntent.LIQUIDATION``, the automated responses and
authorised risk managers) passes in any state if it shrinks the position without flipping it (the price sanity check
and the other unwaived checks above still apply), and is refused ``LIQUIDATION_ONLY`` otherwise. REDUCING passes
risk-reducing trades and, with ``limits.reducing_allows_hedges``, hedges: trades whose opening quantity lowers the
portfolio VaR (for a flip, below the VaR of the book with the ticker flat); a flip that is no hedge is refused
``REDUCING_ONLY`` with ``max_qty_allowed`` = the position (the closing part). A refused well-formed order carries
``max_qty_allowed`` (:mod:`logic.sizing`). VaR, variance and the marginal VaR vector of the holdings are cached per
(market key, holdings revision), by the portfolio's VaR method (``Settings.var_method_for``,
:mod:`logic.var_methods`); the VaR after a trade is ``RiskModel.var_after`` on the cached
:class:`~logic.var_methods.Prepared` book: O(N) for normal (exactly
:func:`engine.math_logic.incremental_var_single`) and Student-t, O(T) under ``fhs`` (the trade adds a multiple of
one ticker's scenario column to the scenario P&L; no revaluation of the book).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any

import numpy as np
import redis

from engine import math_logic
from engine.errors import StoreError, StoreUnavailableError
from engine.market_model import MarketModel, MarketModelCache
from engine.records import (
    AccountType,
    Decision,
    DecisionStatus,
    OrderIntent,
    PortfolioState,
    Position,
    Reason,
    ReasonCode,
    Side,
    TradingState,
)
from engine.sessions import MarketCalendar, market_calendar
from engine.settings import Asset, Limits, Settings, valid_symbol
from logic import sizing
from logic.action_orders import AUTO_ACTOR_PREFIX, AUTOMATION
from logic.check_book import Book, BookCache, Plan, Sim
from logic.decisions import (
    PRICE_QUANTUM,
    book_fill,
    commission,
    fill_price,
    parse_intent,
    parse_quantity,
    parse_side,
    reason,
)
from logic.limits import (
    WAIVED_WHEN_REDUCING_RISK,
    DayOpen,
    Figures,
    Lookups,
    check_daily_loss,
    check_leverage,
    check_margin_floor,
    check_position,
    check_stressed_var,
    ratio_above,
    shrinks_position,
)
from logic.rejections import (
    NOT_FINITE_MESSAGE,
    RISK_FIGURES,
    bookable,
    empty_decision_fields,
    non_finite_figures,
    not_finite_decision,
    store_reason,
)
from logic.rejections import store_failure_decision as store_failure_decision
from logic.risk_models import risk_model_of

AUTOMATION_RATE_MULTIPLE = 10
"""The automation's liquidation-only orders may fill up to this many times ``max_orders_per_minute`` in the
trailing minute, apart from the traders' budget. Why a multiple and why 10: a response fires in a burst (a flatten
sends every position at once, each leg split into child orders by the fat-finger caps), while the traders' limit
paces a sustained flow, so the automation needs more headroom than the desk; its orders can only shrink positions
(never flip or add), so the bound exists to stop a runaway loop of tiny orders, not to pace risk-taking; and it
follows the limit a risk manager sets per portfolio (a desk throttled to 3 a minute lets its automation send 30),
with no new setting to forget."""

_DEFAULT_ASSET = Asset(price=1.0, annual_vol=1.0)
"""Liquidity parameters (avg daily volume, spread) of tickers the settings do not list (added at run time)."""


class Checker:
    """Every pre-trade check of one portfolio (pure over what it is given, apart from the two caches)."""

    def __init__(
        self,
        portfolio_id: str,
        settings: Settings,
        limits: Limits,
        horizon_bars: float,
        models: MarketModelCache,
        books: BookCache,
        day_open: DayOpen | None = None,
    ) -> None:
        self.portfolio_id = portfolio_id
        self.settings = settings
        self.limits = limits
        self.horizon_bars = horizon_bars
        self.models = models
        self.books = books
        self.day_open = day_open
        """Today's opening equity (``max_daily_loss``); None: unknown, the limit then fails closed."""
        self.validated: dict[Any, str | None] = {}
        """Stressed matrices already validated (see :class:`logic.limits.Lookups`)."""

    @functools.cached_property
    def calendar(self) -> MarketCalendar:
        """The market's sessions (built on first use: only ``outside_session = "reject"`` needs them)."""
        return market_calendar(self.settings)

    def market_closed(self, now: float) -> bool:
        """``now`` is outside a session of ``market.calendar`` (a time the calendar cannot place counts as
        closed: fail closed)."""
        try:
            return not self.calendar.is_open(now)
        except ValueError:
            return True

    def evaluate(
        self,
        sim: Sim,
        ticker: Any,
        qty: Any,
        side: Any,
        now: float,
        pending_orders: int = 0,
        intent: OrderIntent = OrderIntent.TRADE,
        *,
        size: bool = True,
        automated: bool = False,
    ) -> tuple[Decision, Plan | None]:
        """Every check of SPEC.md section 6 on ``sim``; returns the decision and, when approved, the plan.

        ``size``: on a refused well-formed order (known ticker, valid side, usable price), fill the decision's
        ``max_qty_allowed`` (:mod:`logic.sizing`); an approved order costs nothing more. ``automated``: the
        order is the automation's (:func:`automation_order`): a liquidation-only one is rated against the
        automation's budget (``sim.recent_auto_orders``), not the traders'.
        """
        lookups = Lookups(
            self.limits,
            self.models,
            self.horizon_bars,
            self.settings.model.stress_vol_multiplier,
            self.day_open,
            now,
            self.validated,
        )
        try:
            decision, plan = self._evaluate(
                sim, ticker, qty, side, now, pending_orders, intent, lookups, automated=automated
            )
        except (ArithmeticError, ValueError) as exc:  # a backstop: the checks below guard their own figures
            return not_finite_decision(self.portfolio_id, ticker, self.limits, now, exc), None
        if size and not decision.approved and decision.side is not None and decision.price is not None:
            try:
                with np.errstate(over="raise"):
                    best = self.max_qty_allowed(
                        sim, ticker, decision.side, now, pending_orders, intent, lookups, automated=automated
                    )
            except (ArithmeticError, ValueError):
                best = 0  # no quantity can be shown to pass on figures that overflow
            decision = replace(decision, max_qty_allowed=best)
        return decision, plan

    def max_qty_allowed(
        self,
        sim: Sim,
        ticker: str,
        side: Side,
        now: float,
        pending_orders: int,
        intent: OrderIntent,
        lookups: Lookups,
        *,
        automated: bool = False,
    ) -> int:
        """The largest quantity of ``ticker`` on ``side`` that passes every check on ``sim`` now (0: none)."""

        def passes(q: int) -> bool:
            decision, _ = self._evaluate(
                sim, ticker, q, side, now, pending_orders, intent, lookups, automated=automated
            )
            return decision.approved

        inputs = sizing.sizing_inputs(self, sim, ticker, side, intent, lookups)
        estimate, floor = math.inf, 1.0
        if inputs is not None:
            estimate = sizing.guess(inputs[0], self.limits, self.settings.fees, daily_loss_hit=inputs[1])
            floor = sizing.floor_guess(inputs[0], self.settings.fees)
        return sizing.largest_passing(passes, estimate, self.limits.max_order_qty, floor=floor)

    def _evaluate(
        self,
        sim: Sim,
        ticker: Any,
        qty: Any,
        side: Any,
        now: float,
        pending_orders: int,
        intent: Any,
        lookups: Lookups,
        *,
        automated: bool = False,
    ) -> tuple[Decision, Plan | None]:
        limits = self.limits
        reasons: list[Reason] = []
        d = empty_decision_fields(self.portfolio_id, ticker, limits, now)
        parsed = parse_intent(intent)
        if parsed is not None:
            intent = d["intent"] = parsed
        else:
            reasons.append(
                reason(
                    ReasonCode.LIQUIDATION_ONLY,
                    f"intent must be {' or '.join(OrderIntent)}, got {intent!r}",
                )
            )

        # store health: anything unreadable fails closed
        for part in ("market", "portfolio", "reference", "rate", "order", "limits", "writes"):
            error = sim.errors.get(part)
            if error is not None:
                reasons.append(store_reason(error))
        header = sim.header
        model: MarketModel | None = None
        model_error: StoreError | None = None
        if header is not None:
            try:
                model = self.models.get(header)
            except StoreError as exc:
                reasons.append(store_reason(exc))
            except redis.RedisError as exc:
                reasons.append(store_reason(StoreUnavailableError(f"Redis is unreachable: {exc}")))
            else:
                model_error = model.error or self.method_error(model)  # fhs without its window: fail closed
                if model_error is not None:
                    reasons.append(store_reason(model_error))
                header = model.header
                d["market_version"] = header.version

        # trading state (fail closed: an unreadable state refuses every order, liquidation-only included)
        trading = sim.trading_state
        state = trading.state if trading is not None else None
        d["trading_state"] = state
        if trading is None:
            error = sim.errors.get("trading_state")
            detail = error.detail if error is not None else "missing"
            reasons.append(reason(ReasonCode.TRADING_HALTED, f"trading state unreadable ({detail}): treated as HALTED"))
        elif state == TradingState.HALTED and intent != OrderIntent.LIQUIDATION:
            reasons.append(
                reason(
                    ReasonCode.TRADING_HALTED,
                    f"trading is HALTED ({trading.reason or 'no reason given'}, by "
                    f"{trading.actor or 'unknown'}): only liquidation-only orders pass",
                )
            )

        # the market's session
        if limits.outside_session == "reject" and self.market_closed(now):
            reasons.append(
                reason(ReasonCode.MARKET_CLOSED, f"the {self.settings.market.calendar} market is closed")
            )

        # the order itself
        shares, why = parse_quantity(qty, limits.max_order_qty)
        if why is not None:
            reasons.append(reason(ReasonCode.BAD_QUANTITY, why))
        d["qty"] = shares
        side_n = parse_side(side)
        if side_n is None:
            reasons.append(reason(ReasonCode.BAD_SIDE, f"side must be BUY or SELL, got {side!r}"))
        d["side"] = side_n
        index: int | None = None
        if not valid_symbol(ticker):
            reasons.append(reason(ReasonCode.UNKNOWN_TICKER, f"{ticker!r} is not a ticker symbol"))
        elif header is not None and model is not None:
            index = model.index.get(ticker)
            if index is None:
                reasons.append(reason(ReasonCode.UNKNOWN_TICKER, f"{ticker} is not in the market data universe"))

        # the price
        price: float | None = None
        if index is not None and header is not None:
            last = float(header.prices[index])
            if not math.isfinite(last) or last <= 0:
                reasons.append(reason(ReasonCode.MISSING_PRICE, f"{ticker} has no usable price ({last!r})"))
            elif not bookable(last):
                reasons.append(
                    reason(ReasonCode.MISSING_PRICE, f"{ticker} price {last:g} is beyond what the books can hold")
                )
            elif fill_price(last) <= 0:  # the books' price grid: it would fill at 0, shares for nothing
                reasons.append(
                    reason(
                        ReasonCode.MISSING_PRICE,
                        f"{ticker} price {last!r} is below the smallest fill price ({PRICE_QUANTUM})",
                    )
                )
            else:
                price = last
                d["price"] = last
                age = now - float(header.price_ts[index])
                if not math.isfinite(age) or abs(age) > limits.stale_price_seconds:
                    # a price stamped further in the future than the staleness limit: the clocks disagree or
                    # the stamp is wrong, and it would never go stale: as unusable as an old one
                    when = f"{age:.0f} s old" if not age < 0 else f"stamped {-age:.0f} s in the future"
                    reasons.append(
                        reason(
                            ReasonCode.STALE_PRICE,
                            f"{ticker} price is {when} (limit {limits.stale_price_seconds:g} s)",
                        )
                    )
                if sim.reference is not None:
                    self._check_collar(d, reasons, sim.reference, ticker, last)

        # order-rate throttle: the traders' budget, or the automation's own for its liquidation-only orders
        if automated and intent == OrderIntent.LIQUIDATION:
            budget = AUTOMATION_RATE_MULTIPLE * limits.max_orders_per_minute
            if sim.recent_auto_orders + pending_orders >= budget:
                reasons.append(
                    reason(
                        ReasonCode.RATE_LIMIT,
                        f"{sim.recent_auto_orders + pending_orders} automated liquidation orders in the last minute "
                        f"(the automation's budget {budget}: {AUTOMATION_RATE_MULTIPLE} x max_orders_per_minute "
                        f"{limits.max_orders_per_minute}); a runaway loop? see the alert's automated responses",
                    )
                )
        elif sim.recent_orders + pending_orders >= limits.max_orders_per_minute:
            reasons.append(
                reason(
                    ReasonCode.RATE_LIMIT,
                    f"{sim.recent_orders + pending_orders} orders in the last minute (limit "
                    f"{limits.max_orders_per_minute})",
                )
            )

        portfolio = sim.portfolio
        plan: Plan | None = None
        if portfolio is not None:
            d["cash_before"] = float(portfolio.cash)
            held = portfolio.positions.get(ticker) if isinstance(ticker, str) else None
            q0 = held.qty if held is not None else 0
            d["position_before"] = q0
            if shares is not None and side_n is not None:
                q1 = q0 + shares * side_n.sign
                reducing = shrinks_position(q0, q1)  # the only risk-reducing trades; a flip opens new risk
                hedges: bool | None = False
                if (
                    price is not None
                    and model is not None
                    and model_error is None
                    and index is not None
                    and isinstance(ticker, str)
                ):
                    try:
                        with np.errstate(over="raise"):
                            plan, hedges = self._check_risk(
                                d, reasons, model, sim, portfolio, held, index, ticker, shares, side_n, price,
                                now, lookups,
                            )  # fmt: skip
                        why = non_finite_figures(d)
                    except (ArithmeticError, ValueError) as exc:
                        why = f"{type(exc).__name__}: {exc}"
                    if why is not None:  # fail closed: no figure of this book can be trusted, no waiver
                        for name in RISK_FIGURES:
                            d[name] = None
                        reasons.append(reason(ReasonCode.STORE_CORRUPT, f"{NOT_FINITE_MESSAGE} ({why})"))
                        plan, reducing, hedges = None, False, False
                self._check_state(d, reasons, state, intent, q0, q1, ticker, reducing, hedges)
                if reducing:  # de-risking is always possible: no limit refuses it
                    reasons = [r for r in reasons if r.code not in WAIVED_WHEN_REDUCING_RISK]

        d["reasons"] = tuple(reasons)
        d["status"] = DecisionStatus.REJECTED if reasons else DecisionStatus.APPROVED
        return Decision(**d), (plan if not reasons else None)

    def method_error(self, model: MarketModel) -> StoreError | None:
        """Why the portfolio's VaR method cannot be computed on ``model`` (fhs without a window), or None."""
        try:
            model.method_inputs(self.books.method)
        except StoreError as exc:
            return exc
        except redis.RedisError as exc:
            return StoreUnavailableError(f"Redis is unreachable: {exc}")
        return None

    def _check_collar(
        self, d: dict[str, Any], reasons: list[Reason], reference: Mapping[str, float], ticker: str, last: float
    ) -> None:
        """The collar (``PRICE_COLLAR``, waived for a risk-reducing trade) and the price sanity check
        (``PRICE_SANITY``, never waived: :func:`_beyond_sanity`), both against the collar's reference price (the
        previous session's close, or ``rolling:N``).

        Without a usable reference (none stored for the ticker, NaN, <= 0) the collar refuses (``PRICE_COLLAR``:
        a trade that adds risk is refused, a risk-reducing one passes) and the sanity check cannot judge the price,
        so it adds nothing: a risk cut still passes on the last price alone. With ``rolling:N`` the reference
        follows the feed, so a wrong unit that lasts N bars becomes the reference and passes both."""
        limits = self.limits
        ref = reference.get(ticker)
        if ref is None or not math.isfinite(ref) or ref <= 0:
            reasons.append(
                reason(
                    ReasonCode.PRICE_COLLAR,
                    f"{ticker} has no session reference price: the collar cannot be checked",
                )
            )
            return
        d["reference_price"] = ref
        move = last / ref - 1.0
        if _beyond_collar(last, ref, limits.price_collar_pct):
            reasons.append(
                reason(
                    ReasonCode.PRICE_COLLAR,
                    f"{ticker} last {last:g} is {move:+.1%} from the reference "
                    f"{ref:g} (collar ±{limits.price_collar_pct:.0%})",
                )
            )
        factor = limits.price_sanity_factor
        insane = _beyond_sanity(last, ref, factor)
        if insane is not None:
            reasons.append(
                reason(
                    ReasonCode.PRICE_SANITY,
                    f"{ticker} last {_decimal(last)} is {insane} the reference {_decimal(ref)} (price sanity factor "
                    f"{factor:g}): a feed quoting in another unit (cents) or a bad print, so no order trades on it, "
                    "a risk-reducing or liquidation-only one included. A stock split is restated with `python "
                    "warmup.py --split TICKER RATIO` (prices, collar and books; stream daemon stopped), not by "
                    "widening this factor; for a genuine crash a risk manager widens "
                    "limits.price_sanity_factor on the Limits page; audited",
                )
            )

    def _check_state(
        self,
        d: dict[str, Any],
        reasons: list[Reason],
        state: TradingState | None,
        intent: Any,
        q0: int,
        q1: int,
        ticker: Any,
        reducing: bool,
        hedges: bool | None,
    ) -> None:
        """Liquidation-only orders must shrink the position without flipping it (any state); in REDUCING a
        trader's order must shrink the position without flipping it, or, when ``reducing_allows_hedges``, be a
        hedge (``hedges``: the quantity it opens lowers the VaR, see :meth:`_check_risk`; None: unknown, a held
        ticker has no usable price, and ``MISSING_PRICE``, never waived, refuses the order: no reason here
        claims it does not lower the VaR)."""
        if intent == OrderIntent.LIQUIDATION:
            if not shrinks_position(q0, q1):
                reasons.append(
                    reason(
                        ReasonCode.LIQUIDATION_ONLY,
                        f"a liquidation-only order must shrink the {ticker} position ({q0:+d}) toward zero "
                        f"without flipping it; it would leave {q1:+d}",
                    )
                )
            return
        if state != TradingState.REDUCING or reducing:
            return
        if self.limits.reducing_allows_hedges and (hedges or hedges is None):
            return
        hedge = " or lower the portfolio VaR" if self.limits.reducing_allows_hedges else ""
        flip = f" (this order would flip it to {q1:+d}: at most {abs(q0):,d} closes it)" if q0 * q1 < 0 else ""
        reasons.append(
            reason(
                ReasonCode.REDUCING_ONLY,
                f"trading is REDUCING: only trades that shrink the {ticker} position ({q0:+d}) toward zero without "
                f"flipping it{hedge} pass{flip}",
            )
        )

    def _check_risk(
        self,
        d: dict[str, Any],
        reasons: list[Reason],
        model: MarketModel,
        sim: Sim,
        portfolio: PortfolioState,
        held: Position | None,
        index: int,
        ticker: str,
        shares: int,
        side: Side,
        price: float,
        now: float,
        lookups: Lookups,
    ) -> tuple[Plan, bool | None]:
        """Money, inventory, margin, VaR, concentration and the desk limits of a well-formed order; returns
        the plan and whether the order is a hedge (the quantity it opens lowers the VaR).

        Each risk limit refuses an order that *adds* to what it bounds, measured from the book the order's
        opening quantity starts from: the book before the order, or, for an order that flips the position,
        the book with this ticker flat. A flip is two orders in one: closing ``|q0|`` (risk-reducing, which
        alone would pass every limit of :data:`logic.limits.WAIVED_WHEN_REDUCING_RISK`) and opening ``|q1|``
        on the other side, which is new risk and is checked as an order from flat would be: its VaR, stressed
        VaR and gross exposure against the flat book's, its concentration and position as growing positions.

        While a held ticker has no usable price (``book.missing``: refused ``MISSING_PRICE``, never waived) the
        book counts it as 0, so every figure of it is another book's (the share of one position over 40,000 where
        the book holds 120,000; the VaR of the priced positions alone, below the book's or, hedged by the missing
        one, above it): no VaR, stressed VaR, concentration, leverage, daily loss, margin or margin floor check
        runs on it and ``equity_after``, ``var_before``, ``var_after``, ``delta_var``, ``marginal_var``,
        ``concentration_after`` and ``margin_level_after`` stay None, as the monitor's snapshot nulls those
        figures (logic/snapshot.py). The ticket then says why it is refused, not a reason or a figure made of a
        partial book; nor is the order taken for a hedge or for none (its VaR effect is unknown: ``MISSING_PRICE``).
        The checks of the order itself (cash, inventory, notional, position limits) still run.
        """
        limits = self.limits
        px = fill_price(price)
        fee = commission(self.settings.fees, shares, px)
        booking = book_fill(held, side, shares, px, fee)
        q0 = held.qty if held is not None else 0
        q1 = booking.position.qty
        cash_after = portfolio.cash + booking.cash_delta
        d.update(
            notional=float(booking.notional),
            est_fees=float(fee),
            cash_after=float(cash_after),
            position_after=q1,
        )

        if booking.notional > limits.max_order_notional:
            reasons.append(
                reason(
                    ReasonCode.MAX_NOTIONAL,
                    f"order notional {booking.notional:,.2f} exceeds the limit {limits.max_order_notional:,.2f}",
                )
            )
        cash_account = portfolio.account_type == AccountType.CASH
        if cash_account and side == Side.SELL:
            if q0 <= 0:
                reasons.append(
                    reason(ReasonCode.SHORT_NOT_ALLOWED, f"no {ticker} held: a cash account cannot sell short")
                )
            elif shares > q0:
                reasons.append(reason(ReasonCode.OVERSELL, f"selling {shares:,} {ticker} but only {q0:,} held"))
        if cash_account and cash_after < 0:
            needed = -booking.cash_delta
            reasons.append(
                reason(
                    ReasonCode.INSUFFICIENT_CASH,
                    f"cost plus fees {needed:,.2f} exceed the cash {portfolio.cash:,.2f}",
                )
            )

        book = self.books.book(model, sim.book_key, portfolio)
        if book.missing:
            reasons.append(
                reason(
                    ReasonCode.MISSING_PRICE,
                    f"no usable price for held {', '.join(book.missing)}: risk cannot be computed",
                )
            )
        signed = shares if side == Side.BUY else -shares
        delta = signed * price
        x_i = float(book.exposures[index])
        equity_after = float(cash_after) + book.market_value + delta  # a partial book's: not reported (docstring)
        gross_after = book.gross_exposure - abs(x_i) + abs(x_i + delta)
        # where the opening quantity starts from (see the docstring): this ticker flat for a flip
        flips = q0 * q1 < 0
        if flips:
            q_from, gross_from = 0, book.gross_exposure - abs(x_i)
        else:
            q_from, gross_from = q0, book.gross_exposure
        hedges = None  # unknown, as the partial book's VaR (MISSING_PRICE refuses the order, never waived)
        if book.priced:
            d["equity_after"] = equity_after
            hedges = self._check_var(d, reasons, model, book, index, delta, flips)

        grows = abs(q1) > abs(q_from)
        if not book.priced:
            pass  # no ratio of a partial equity is the book's (see the docstring): MISSING_PRICE refuses it
        elif equity_after > 0:
            concentration = abs(x_i + delta) / equity_after
            d["concentration_after"] = concentration
            if ratio_above(concentration, limits.max_concentration) and grows:
                reasons.append(
                    reason(
                        ReasonCode.CONCENTRATION,
                        f"{ticker} would be {concentration:.1%} of equity (limit {limits.max_concentration:.0%})",
                    )
                )
        elif grows:
            reasons.append(
                reason(ReasonCode.CONCENTRATION, f"equity would be {equity_after:,.2f}: no position may grow")
            )

        figures = Figures(  # "before" is where the opening quantity starts from: the desk limits' "adds"
            ticker=ticker,
            q0=q_from,
            q1=q1,
            equity_before=float(portfolio.cash) + book.market_value,
            equity_after=equity_after,
            gross_before=gross_from,
            gross_after=gross_after,
            margin_account=portfolio.account_type == AccountType.MARGIN,
            initial_margin=portfolio.initial_margin,
        )
        if book.priced:
            check_leverage(limits, figures, reasons)
        check_position(limits, figures, reasons)
        if limits.stressed_var_limit is not None and book.priced:  # a partial book's stressed VaR is no book's
            stressed, s_before, why = lookups.stressed(model, book.exposures)
            s_after = None
            if stressed is not None:  # the worse crisis scenario of the book after, on its own (not the before's)
                x_after = book.exposures.copy()
                x_after[index] += delta
                s_after = lookups.stressed_var(model, stressed, x_after)
                if flips:
                    x_after[index] = 0.0
                    s_before = lookups.stressed_var(model, stressed, x_after)
            check_stressed_var(limits, s_before, s_after, why, reasons)
        if limits.max_daily_loss is not None and book.priced:  # a partial equity's "loss" is no loss
            day_open, why = lookups.day_open()
            check_daily_loss(limits, figures.equity_before, day_open, why, reasons)

        if portfolio.account_type == AccountType.MARGIN and book.priced:
            used_after = gross_after * portfolio.initial_margin
            d["margin_level_after"] = check_margin_floor(limits, figures, reasons)
            if used_after > equity_after and gross_after > gross_from:
                reasons.append(
                    reason(
                        ReasonCode.MARGIN,
                        f"initial margin {used_after:,.0f} ({portfolio.initial_margin:.0%} of gross "
                        f"{gross_after:,.0f}) would exceed equity {equity_after:,.0f}",
                    )
                )

        asset = self.settings.universe.assets.get(ticker, _DEFAULT_ASSET)
        half_spread = price * asset.spread_bps / 20_000.0
        daily_vol = float(model.daily_vol[index])
        d["liquidity_cost"] = float(
            math_logic.liquidity_cost(
                shares,
                price,
                price - half_spread,
                price + half_spread,
                asset.avg_daily_volume,
                daily_vol=daily_vol,
                impact_coef=self.settings.model.liquidity_impact_coef,
            )
        )

        plan = Plan(
            ticker=ticker,
            side=side,
            qty=shares,
            price=px,
            cash_before=portfolio.cash,
            position_before=held,
            position_after=booking.position,
            portfolio_before=portfolio,
            now=now,
            realized=booking.realized,
            notional=booking.notional,
            fee=fee,
            model=model,
            book=book,
            index=index,
        )
        return plan, hedges

    def _check_var(
        self,
        d: dict[str, Any],
        reasons: list[Reason],
        model: MarketModel,
        book: Book,
        index: int,
        delta: float,
        flips: bool,
    ) -> bool:
        """The VaR figures and the VaR limit of a fully priced ``book`` after adding ``delta`` dollars of the
        ticker at ``index``; returns whether the order is a hedge: the VaR after it is below the VaR it starts
        from (the book's, or for a flip the book's with the ticker flat, see :meth:`_check_risk`). O(N) (normal,
        student_t) or O(T) (fhs) from the cached book."""
        limits = self.limits
        assert book.prepared is not None
        risk = risk_model_of(model, self.books.method, self.horizon_bars)
        var_after = risk.var_after(book.prepared, index, delta, limits.var_confidence)
        d.update(
            var_before=book.var,
            var_after=var_after,
            delta_var=var_after - book.var,
            marginal_var=float(book.marginal[index]),
        )
        var_from = book.var
        if flips:
            var_from = risk.var_after(book.prepared, index, -float(book.exposures[index]), limits.var_confidence)
        if var_after > float(limits.var_limit) and var_after > var_from:
            reasons.append(
                reason(
                    ReasonCode.VAR_LIMIT,
                    f"VaR would rise from {book.var:,.0f} to {var_after:,.0f}, above the limit "
                    f"{limits.var_limit:,.0f} ({limits.var_confidence:.0%}, "
                    f"{limits.var_horizon_days:g} d)",
                )
            )
        return bool(var_after < var_from)


def automation_order(actor: Any, intent: Any, grant: object = None) -> bool:
    """An order of the automated responses that its own order-rate budget covers: it carries the automation's
    grant (``grant is`` logic/action_orders.py ``AUTOMATION``, which only the responses' order path passes), its
    actor is ``auto:<rule id>`` and its intent liquidation-only (an enum or its string). The actor alone grants
    nothing: it is a typed name, and any in-process caller can type one. Anything else, a human risk manager's
    liquidation-only order included, is a trader's order for the throttle: a person clicking is not a burst of
    hundreds of child orders, and exempting every "liquidation" label would let any caller step around the
    desk's limit."""
    if grant is not AUTOMATION or not (isinstance(actor, str) and actor.startswith(AUTO_ACTOR_PREFIX)):
        return False
    return parse_intent(intent) is OrderIntent.LIQUIDATION


def _beyond_collar(last: float, ref: float, collar: float) -> bool:
    """``last`` is further than ``collar`` (a fraction) from ``ref``: compared on the decimals the prices and the
    collar are written in (as floats, ``110 / 100 - 1`` is 0.10000000000000009: a collar of 10 % refused a move
    of exactly 10 % up and passed the same move down)."""
    return abs(_decimal(last) - _decimal(ref)) > _decimal(collar) * _decimal(ref)


def _beyond_sanity(last: float, ref: float, factor: float) -> str | None:
    """How ``last`` is beyond ``factor`` times ``ref`` ("more than 10x" / "less than 1/10 of"), or None when it
    is within ``[ref / factor, ref * factor]`` (both ends accepted). Compared on the decimals as
    :func:`_beyond_collar` is, without a division: ``last > factor * ref`` or ``last * factor < ref``."""
    p, r, f = _decimal(last), _decimal(ref), _decimal(factor)
    if p > f * r:
        return f"more than {factor:g}x"
    if p * f < r:
        return f"less than 1/{factor:g} of"
    return None


def _decimal(value: float) -> Decimal:
    """The shortest decimal that round-trips the float (what was written, not its binary expansion)."""
    return Decimal(repr(float(value)))
