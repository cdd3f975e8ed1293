"""Automated risk responses bound to alert rules (``AlertRule.actions``).

Actions
-------
``set_state:REDUCING`` / ``set_state:HALTED``
    Tighten the portfolio's trading state through the RiskManager (audited there with who and why). An
    automated action never loosens it: the state is compared and written in one transaction
    (``RiskManager.tighten_trading_state``), and when it is already as strict or stricter at that moment
    (a missing or unreadable state counts as HALTED) nothing is written and the outcome says so. Only a human
    returns a portfolio to ACTIVE.
``reduce:<fraction>``
    On a rule of any metric but ``margin.level``: cut gross exposure by ``fraction`` (0 < f <= 1) of its value
    at the snapshot that fired the rule, taking the **largest losers first** (most negative unrealized P&L;
    ties: the larger position). The plan is fixed when the rule fires (stored with the pending action); when it
    runs, each leg is **clipped to the position then held** on its side (another response on the same bar, or a
    trader, may have cut it already): skipped when the position is flat or flipped, and the outcome says so.

    On a ``margin.level`` rule: a **margin sell-down**. Sell the largest risk contributors first (component
    VaR of the current book) until the margin level is back above the *warning level* or ``fraction`` of the
    gross exposure at the trigger is sold, whichever comes first (:func:`plan_margin_sell_down`). The warning
    level is the highest threshold among the rules on ``margin.level`` (``<`` / ``<=``) that apply to the
    portfolio, fixed when the rule fires (:func:`margin_response_spec`); with no other such rule it is the
    firing rule's own threshold. The sizes are computed from the book at run time, then the level is measured
    again and, while it is still below (fees, a moving price), sized again, at most
    :data:`MAX_SELL_DOWN_ROUNDS` rounds.
``flatten``
    Close every position, the largest risk contributors first (a drawdown breaker's optional last step).

Every trade leg is a **liquidation-only** order (``intent=OrderIntent.LIQUIDATION``: it may shrink a position,
never flip it), so HALTED, REDUCING and the limits never stop a response from cutting risk; it goes through
``RiskManager.execute_trade`` with the rule's actor (``auto:<rule id>``). The fat-finger caps are not waived
for a risk cut, so a leg is sent as **child orders** each within ``min(max_order_qty, floor(max_order_notional
/ fill price))`` of the live limits the gate checks (:class:`OrderCaps`); the children go one after the other
and the leg stops at the first one refused, the outcome saying how many shares of how many were filled. A child
refused by those caps alone (the price moved a cent past the size, or the caps were lowered meanwhile) is sized
again from the refusal (its ``max_qty_allowed``, the live caps at its price) and sent under the next child id, at
most ``MAX_CHILD_RESIZES`` times in a row (logic/action_orders.py).

Idempotent re-runs: a leg's id derives from the action id (and, for sizes computed at run time, the round and
ticker), and its k-th child is ``{leg id}-c{k}``. A re-run after a crash first reads what earlier runs sent
(:func:`logic.action_orders.leg_history`: the gate's idempotency records and the trade log, so fills whose records
``prune_order_ids`` deleted still count, and so does a fill under the bare leg id, sent by the code before child
orders): a fixed plan's leg sends only what they left, and its first child id is past every one already used.
The limit (a fill both pruned and archived out of the trade log) is in that module's docstring.
A sell-down re-run starts from the book as it then is: what the first run sold already shows in the margin
level (so it sells only what is still missing), though not in the budget, which starts again from the
configured fraction.

**A held position without a usable price** (NaN, non-positive, not in the market snapshot) is never reported
as done: it cannot be sized, valued or cut, so ``flatten`` and ``reduce`` send nothing for it and their outcome
is not ``ok``, naming it; a margin level measured with a price missing is no level (the missing position
counts as worth nothing), so the sell-down stops and reports the target not reached. Only a book that is truly
flat counts as "nothing to do".

Audit: each step (a plan, a measurement) and each order sent, with its result, goes to the ``audit`` callback
of :meth:`ResponseRunner.run` (the alert engine appends them to the portfolio's audit trail as they happen);
the outcome of the whole action is audited and shown as its own alert by ``logic/alerts.py``. An outcome
that is not ``ok`` names the refused legs with their reasons, or why the target was not reached.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from engine.records import ExecutionStatus, OrderIntent, Side, TradingState
from logic.action_orders import (  # child_order_id: the id scheme of a leg's children, also imported from here
    MAX_CHILD_RESIZES,
    AutomationGrant,
    EarlierOrders,
    child_order_id,
    leg_history,
    read_earlier_orders,
    resized_qty,
    send_child,
)

STATE_RANK: Mapping[str, int] = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}
AUTOMATED_STATES = (TradingState.REDUCING, TradingState.HALTED)
MARGIN_METRIC = "margin.level"
"""The snapshot metric whose ``reduce`` action is a margin sell-down (percent points: 150 = 150%)."""
MARGIN_RULE_OPS = ("<", "<=")
"""Operators of a margin rule that fires when the level falls (the only ones that define a warning level)."""
MAX_SELL_DOWN_ROUNDS = 3
"""Size, sell, measure again: at most this many rounds (fees and a moving price can leave the level a hair
below its target after the first; a third round is already rare)."""
TARGET_CUSHION_DOLLARS = 0.01
"""A margin sell-down aims one cent of gross exposure past the exact target, so float rounding never leaves
the level a hair below it."""


class TradingControl(Protocol):
    """What an automated response needs from a portfolio's ``logic.risk_manager.RiskManager``."""

    def tighten_trading_state(self, state: str, reason: str, actor: str) -> Any:
        """Set ``state`` only if it is stricter than the state stored at the moment of the write, compared and
        written atomically (:meth:`logic.risk_manager.RiskManager.tighten_trading_state`). Returns an object
        with ``previous`` (the state it found, a name), ``status.state`` (the state in force now) and
        ``changed``."""
        ...

    def execute_trade(
        self,
        ticker: str,
        qty: int,
        side: str,
        client_order_id: str | None = None,
        actor: str = "trader",
        intent: OrderIntent = OrderIntent.TRADE,
        *,
        automation: AutomationGrant | None = None,
    ) -> Mapping[str, Any]:
        """Returns a dict with ``status`` ("FILLED" | "REJECTED") and ``reasons`` [{code, message}]. The
        responses pass ``automation`` (logic/action_orders.py ``AUTOMATION``) with their ``auto:`` actor."""
        ...

    def get_dashboard_metrics(self) -> Any:
        """A DataFrame of the positions (``ticker, qty, last, component_var``) with ``attrs["totals"]``
        (``equity, gross_exposure, margin_used, margin_level, missing_prices``): the book every trading
        response reads when it runs."""
        ...

    def refresh_limits(self) -> Any:
        """The live limits the gate checks now (``max_order_qty``, ``max_order_notional``): the child-order caps."""
        ...


ControlFactory = Callable[[str], TradingControl]
"""portfolio id -> what trades it, e.g. ``lambda pid: RiskManager(redis, pid, settings, clock)``."""
Audit = Callable[[Mapping[str, Any]], None]
"""Receives one audit record per step and per order of a response (the caller stamps the time)."""
FeeEstimate = Callable[[int, float], float]
"""(shares, price) -> the commission a fill would pay, dollars."""


@dataclass(frozen=True)
class Action:
    text: str
    kind: str
    """``set_state``, ``reduce`` or ``flatten``."""
    state: str | None = None
    fraction: float | None = None


def parse_action(text: Any) -> Action:
    """Parse ``"set_state:HALTED"``, ``"set_state:REDUCING"``, ``"reduce:0.25"`` or ``"flatten"``.

    Raises
    ------
    ValueError
        With a message naming the accepted forms.
    """
    forms = "expected 'set_state:REDUCING', 'set_state:HALTED', 'reduce:<fraction in (0, 1]>' or 'flatten'"
    if isinstance(text, str) and text.strip().lower() == "flatten":
        return Action("flatten", "flatten")
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(f"action {text!r}: {forms}")
    kind, _, arg = text.strip().partition(":")
    kind, arg = kind.strip().lower(), arg.strip()
    if kind == "set_state":
        state = arg.upper()
        if state not in AUTOMATED_STATES:
            raise ValueError(f"action {text!r}: an automated action may set only REDUCING or HALTED ({forms})")
        return Action(f"set_state:{state}", "set_state", state=state)
    if kind == "reduce":
        try:
            fraction = float(arg)
        except ValueError:
            raise ValueError(f"action {text!r}: {arg!r} is not a number ({forms})") from None
        if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
            raise ValueError(f"action {text!r}: the fraction must be in (0, 1] ({forms})")
        return Action(f"reduce:{fraction:g}", "reduce", fraction=fraction)
    raise ValueError(f"action {text!r}: unknown action {kind!r} ({forms})")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def plan_reduction(positions: Sequence[Mapping[str, Any]], fraction: float) -> list[dict[str, Any]]:
    """Legs that cut gross exposure by ``fraction``, largest losers first.

    Parameters
    ----------
    positions:
        The snapshot's ``positions`` (``ticker``, ``qty``, ``last``, ``unrealized_pnl``; others ignored).
    fraction:
        Share of the gross exposure ``sum(|qty * last|)`` to remove.

    Returns
    -------
    list of dict
        ``{"ticker", "side", "qty", "notional", "unrealized_pnl"}``: SELL for a long, BUY for a short; whole
        shares, the last leg rounded up so the cut is at least the target (never more than the position).

    Notes
    -----
    Budget ``B = fraction * Σ|qᵢ pᵢ|``. Positions are taken in order of unrealized P&L (ascending), then by
    larger |exposure|, then ticker; each takes ``min(|qᵢ|, ceil(B_left / pᵢ))`` shares.
    """
    if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
        raise ValueError("fraction must be in (0, 1]")
    usable = []
    for p in positions:
        qty, last = p.get("qty"), p.get("last")
        if not isinstance(qty, int | float) or not isinstance(last, int | float):
            continue
        if qty == 0 or not math.isfinite(last) or last <= 0:
            continue
        pnl = p.get("unrealized_pnl")
        pnl = float(pnl) if isinstance(pnl, int | float) and math.isfinite(pnl) else 0.0
        usable.append((str(p["ticker"]), int(qty), float(last), pnl))
    gross = sum(abs(q) * px for _, q, px, _ in usable)
    budget = fraction * gross
    legs = []
    for ticker, qty, last, pnl in sorted(usable, key=lambda u: (u[3], -abs(u[1]) * u[2], u[0])):
        if budget <= 1e-9:
            break
        shares = min(abs(qty), math.ceil(budget / last - 1e-9))
        if shares <= 0:
            continue
        legs.append(
            {
                "ticker": ticker,
                "side": Side.SELL if qty > 0 else Side.BUY,
                "qty": shares,
                "notional": shares * last,
                "unrealized_pnl": pnl,
            }
        )
        budget -= shares * last
    return legs


# -- the margin sell-down ------------------------------------------------------------------------------------


def breaches(level: float, op: str, threshold: float) -> bool:
    """Whether a margin level breaches a margin rule ``level op threshold`` (``<`` or ``<=``)."""
    return level < threshold if op == "<" else level <= threshold


def margin_response_spec(
    fraction: float, threshold: float, op: str, warning_rules: Sequence[tuple[float, str]], gross: float
) -> dict[str, Any]:
    """What a margin sell-down aims at, fixed when its rule fires (stored with the pending action).

    Parameters
    ----------
    fraction:
        The action's fraction: at most ``fraction * gross`` dollars of gross exposure are sold.
    threshold, op:
        The firing rule's level and operator.
    warning_rules:
        ``(threshold, op)`` of every rule on ``margin.level`` applying to the portfolio (the firing one may be
        among them): the highest is the warning level the sell-down restores.
    gross:
        Gross exposure at the trigger (the snapshot's), dollars.

    Returns
    -------
    dict
        ``{"warning_level", "warning_op", "critical_level", "fraction", "gross_at_trigger", "budget"}``.
    """
    levels = [(float(t), o) for t, o in warning_rules if o in MARGIN_RULE_OPS] + [(float(threshold), op)]
    # the highest level; at equal levels "<=" is the stricter target (it must end strictly above)
    level, level_op = max(levels, key=lambda lo: (lo[0], lo[1] == "<="))
    return {
        "warning_level": level,
        "warning_op": level_op,
        "critical_level": float(threshold),
        "fraction": float(fraction),
        "gross_at_trigger": float(gross),
        "budget": float(fraction) * float(gross),
    }


def plan_margin_sell_down(
    rows: Sequence[Mapping[str, Any]],
    equity: float,
    gross: float,
    initial_margin: float,
    target_level: float,
    budget: float,
    fee: FeeEstimate | None = None,
) -> list[dict[str, Any]]:
    """Legs that bring the margin level up to ``target_level``, largest risk contributors first.

    Parameters
    ----------
    rows:
        Positions with ``ticker``, ``qty`` (signed), ``last`` and ``component_var`` (dollars).
    equity, gross:
        Equity and gross exposure of the book now, dollars.
    initial_margin:
        Fraction of gross exposure posted as margin (``m``).
    target_level:
        Margin level to reach, percent (150 = 150%).
    budget:
        At most this many dollars of gross exposure are sold.
    fee:
        Commission of a fill (``(shares, price) -> dollars``); none by default.

    Returns
    -------
    list of dict
        ``{"ticker", "side", "qty", "notional", "component_var"}``, in the order to send them.

    Notes
    -----
    Selling ``n`` dollars of a long (or buying back ``n`` of a short) turns exposure into cash: equity ``E``
    only loses the fee ``f``, gross exposure ``G`` falls by ``n``. The level ``L = 100 E / (m G)`` reaches
    ``T`` once ``G - Σn <= 100 (E - Σf) / (m T)``. Positions are taken by component VaR, largest first (then
    larger |exposure|, then ticker), each fully before the next, so the fewest, riskiest legs do the work;
    a leg takes ``min(|q|, floor(B_left / p), ceil(need / p))`` shares, grown while its own fee still leaves
    the level short. Hedges (negative component VaR) come last. With ``E <= 0`` no sale can restore the level:
    the plan sells the whole budget.
    """
    if not (initial_margin > 0 and target_level > 0):
        raise ValueError("initial_margin and target_level must be > 0")
    usable = []
    for r in rows:
        qty, last = _number(r.get("qty")), _number(r.get("last"))
        if qty is None or last is None or qty == 0 or last <= 0:
            continue
        cvar = _number(r.get("component_var")) or 0.0
        usable.append((str(r["ticker"]), int(qty), last, cvar))
    usable.sort(key=lambda u: (-u[3], -abs(u[1]) * u[2], u[0]))
    fee = fee or (lambda shares, price: 0.0)
    scale = 100.0 / (initial_margin * target_level)

    def need(g: float, e: float) -> float:  # gross still to cut
        return g - scale * e + TARGET_CUSHION_DOLLARS

    e, g, left = float(equity), float(gross), float(budget)
    legs = []
    for ticker, qty, last, cvar in usable:
        if need(g, e) <= 0:
            break
        cap = min(abs(qty), math.floor(left / last + 1e-9))
        if cap <= 0:
            continue  # a cheaper share may still fit the budget
        shares = min(cap, max(1, math.ceil(need(g, e) / last - 1e-9)))
        for _ in range(8):  # the leg's own fee lowers equity: grow it until it holds (or the cap)
            short = need(g - shares * last, e - fee(shares, last))
            if short <= 0 or shares >= cap:
                break
            shares = min(cap, shares + math.ceil(short / last - 1e-9))
        legs.append(
            {
                "ticker": ticker,
                "side": Side.SELL if qty > 0 else Side.BUY,
                "qty": shares,
                "notional": shares * last,
                "component_var": cvar,
            }
        )
        e -= fee(shares, last)
        g -= shares * last
        left -= shares * last
    return legs


@dataclass(frozen=True)
class MarginBook:
    """What a trading response reads of the current book (from ``get_dashboard_metrics``)."""

    equity: float
    gross: float
    initial_margin: float | None
    level: float | None
    """The margin level as computed, valuing a position without a price at 0: see :attr:`readable_level`."""
    rows: list[dict[str, Any]]
    missing: tuple[str, ...] = ()
    """Held tickers without a usable price (the totals' ``missing_prices`` and any row whose ``last`` is not)."""

    @property
    def readable_level(self) -> float | None:
        """The margin level, or None when it cannot be known: a held position without a price is left out of
        equity and gross exposure, so the figure computed without it is not the book's level."""
        return None if self.missing else self.level

    @property
    def flat(self) -> bool:
        """Nothing held at all (no position, priced or not)."""
        return not self.missing and not any(r["qty"] for r in self.rows)

    def held(self, ticker: str) -> int:
        return sum(int(r["qty"]) for r in self.rows if r["ticker"] == ticker)

    def price(self, ticker: str) -> float | None:
        prices = [_usable_price(r.get("last")) for r in self.rows if r["ticker"] == ticker]
        return prices[0] if prices else None


def _usable_price(value: Any) -> float | None:
    price = _number(value)
    return price if price is not None and price > 0 else None


def read_margin_book(control: TradingControl) -> MarginBook:
    df = control.get_dashboard_metrics()
    totals = dict(df.attrs["totals"])  # read right away: pandas drops attrs in some operations
    rows = [{k: r[k] for k in ("ticker", "qty", "last", "component_var")} for r in df.to_dict("records")]
    gross = float(totals["gross_exposure"])
    used = _number(totals.get("margin_used"))
    margin = used / gross if used is not None and gross > 0 else None
    missing = {str(t) for t in totals.get("missing_prices") or ()}
    missing |= {str(r["ticker"]) for r in rows if r["qty"] and _usable_price(r["last"]) is None}
    level = _number(totals.get("margin_level"))
    return MarginBook(float(totals["equity"]), gross, margin, level, rows, tuple(sorted(missing)))


@dataclass(frozen=True)
class OrderCaps:
    """The per-order caps of the live limits the gate checks: the fat-finger limits are not waived for a risk
    cut, so a leg above them is sent as several child orders within them."""

    max_qty: int
    max_notional: Decimal

    @classmethod
    def of(cls, control: TradingControl) -> OrderCaps:
        """The caps of the limits in force now (the Limits page's, else the settings')."""
        limits = control.refresh_limits()
        return cls(int(limits.max_order_qty), Decimal(str(limits.max_order_notional)))

    def child_qty(self, price: float | Decimal) -> int:
        """The most shares one order may carry at ``price``: ``min(max_qty, floor(max_notional / fill price))``,
        the gate's own arithmetic (notional = shares x fill price, exact). At least 1: a single share above the
        notional cap is still sent, for the gate to refuse it with its code."""
        from logic.decisions import fill_price

        px = price if isinstance(price, Decimal) else fill_price(price)
        by_notional = int(self.max_notional // px) if px > 0 else self.max_qty
        return max(1, min(self.max_qty, by_notional))


def fee_estimate(control: TradingControl) -> FeeEstimate | None:
    """The commission schedule of the control's settings, when it has one."""
    fees = getattr(getattr(control, "settings", None), "fees", None)
    if fees is None:
        return None
    from logic.decisions import commission, fill_price

    def estimate(shares: int, price: float) -> float:
        return float(commission(fees, shares, fill_price(price)))

    return estimate


@dataclass(frozen=True)
class Outcome:
    ok: bool
    summary: str
    """One line a human reads in the alert and the audit record."""
    details: Mapping[str, Any] = field(default_factory=dict)


class ResponseRunner:
    """Executes parsed actions against a :class:`TradingControl` per portfolio."""

    def __init__(self, factory: ControlFactory | None) -> None:
        self.factory = factory
        self._controls: dict[str, TradingControl] = {}

    def control(self, portfolio_id: str) -> TradingControl | None:
        if self.factory is None:
            return None
        if portfolio_id not in self._controls:
            self._controls[portfolio_id] = self.factory(portfolio_id)
        return self._controls[portfolio_id]

    def run(self, portfolio_id: str, pending: Mapping[str, Any], audit: Audit | None = None) -> Outcome:
        """Run one pending action (``{"action_id", "action", "actor", "reason", "plan"? | "margin"?}``);
        never raises. ``audit`` receives a record for each step and each order sent."""
        step = _Steps(pending, audit)
        try:
            action = parse_action(pending["action"])
            control = self.control(portfolio_id)
            if control is None:
                return Outcome(False, f"{action.text} NOT executed: no RiskManager is wired into the alert engine")
            if action.kind == "set_state":
                return self._set_state(control, action, pending)
            if action.kind == "flatten":
                return self._flatten(control, action, pending, step)
            if pending.get("margin"):
                return self._sell_down(control, action, pending, step)
            return self._reduce(control, action, pending, step)
        except Exception as exc:  # the monitor must survive a failing response; the alert shows the failure
            return Outcome(False, f"{pending.get('action')} FAILED: {exc}", {"error": repr(exc)})

    def _set_state(self, control: TradingControl, action: Action, pending: Mapping[str, Any]) -> Outcome:
        """Tighten the state; the comparison and the write are one transaction in the store, so a state set by
        someone else meanwhile (a risk manager's HALT) is what the automation compares with, never loosened."""
        assert action.state is not None
        change = control.tighten_trading_state(action.state, str(pending["reason"]), str(pending["actor"]))
        previous, now = str(change.previous), str(change.status.state)
        if not change.changed:
            found = previous if previous == now else f"{previous}, counted as {now}"  # unreadable: HALTED
            return Outcome(
                True,
                f"trading state already {found}: {action.state} not needed",
                {"previous": previous, "state": now, "changed": False},
            )
        return Outcome(
            True,
            f"trading state set to {action.state} (was {previous})",
            {"previous": previous, "state": action.state, "changed": True},
        )

    def _reduce(self, control: TradingControl, action: Action, pending: Mapping[str, Any], step: _Steps) -> Outcome:
        """The plan fixed when the rule fired, each leg clipped to the book as it is now."""
        legs = list(pending.get("plan") or [])
        book = read_margin_book(control)
        if not legs and not book.missing:
            if book.flat:
                return Outcome(True, f"{action.text}: nothing to reduce (the book is flat)", {"legs": []})
            held = ", ".join(sorted(str(r["ticker"]) for r in book.rows if r["qty"]))
            return Outcome(
                False,
                f"{action.text} NOT executed: no leg was planned when the rule fired (no priced position then) "
                f"while {held} are held",
                {"legs": []},
            )
        caps, earlier = OrderCaps.of(control), read_earlier_orders(control, pending)
        results = [
            _run_leg(control, leg, f"{pending['action_id']}-{i}", pending, step, book, caps, earlier, planned=True)
            for i, leg in enumerate(legs)
        ]
        return _legs_outcome(action.text, results, book.missing)

    def _flatten(self, control: TradingControl, action: Action, pending: Mapping[str, Any], step: _Steps) -> Outcome:
        book = read_margin_book(control)
        caps, earlier = OrderCaps.of(control), read_earlier_orders(control, pending)
        priced = [r for r in book.rows if r["qty"] and str(r["ticker"]) not in book.missing]
        legs = [
            {
                "ticker": r["ticker"],
                "side": Side.SELL if r["qty"] > 0 else Side.BUY,
                "qty": abs(int(r["qty"])),
                "notional": abs(float(r["qty"]) * float(r["last"])),
                "component_var": _number(r["component_var"]) or 0.0,
            }
            for r in priced
        ]
        legs.sort(key=lambda leg: (-leg["component_var"], str(leg["ticker"])))
        step("plan", legs=legs, gross=book.gross, equity=book.equity, unpriced=list(book.missing))
        if book.flat:
            return Outcome(True, f"{action.text}: nothing to close (the book is flat)", {"legs": []})
        leg_ids = [f"{pending['action_id']}-{leg['ticker']}" for leg in legs]
        results = [
            _run_leg(control, leg, leg_id, pending, step, book, caps, earlier, planned=False)
            for leg, leg_id in zip(legs, leg_ids, strict=True)
        ]
        return _legs_outcome(action.text, results, book.missing)

    def _sell_down(self, control: TradingControl, action: Action, pending: Mapping[str, Any], step: _Steps) -> Outcome:
        spec = pending["margin"]
        target, op = float(spec["warning_level"]), str(spec["warning_op"])
        left = float(spec["budget"])
        fee = fee_estimate(control)
        results: list[dict[str, Any]] = []
        book = read_margin_book(control)
        caps, earlier = OrderCaps.of(control), read_earlier_orders(control, pending)
        level_before = book.readable_level
        stop = ""
        for round_ in range(MAX_SELL_DOWN_ROUNDS):
            if book.missing:
                stop = f"no usable price for held {', '.join(book.missing)}: the margin level cannot be measured"
                break
            if book.level is None or book.initial_margin is None:
                stop = "the book is flat" if book.flat else "no margin in use"
                break
            if not breaches(book.level, op, target):
                break
            legs = plan_margin_sell_down(book.rows, book.equity, book.gross, book.initial_margin, target, left, fee)
            step(
                "plan", round=round_, margin_level=book.level, target_level=target, equity=book.equity,
                gross=book.gross, budget_left=left, legs=legs,
            )  # fmt: skip
            if not legs:
                stop = "the configured fraction is sold" if left < _cheapest(book.rows) else "nothing left to sell"
                break
            leg_id = f"{pending['action_id']}-{round_}"
            sent = [
                _run_leg(control, leg, f"{leg_id}-{leg['ticker']}", pending, step, book, caps, earlier, planned=False)
                for leg in legs
            ]
            results += sent
            left -= sum(r["filled_notional"] for r in sent)
            book = read_margin_book(control)
            step("measure", round=round_, margin_level=book.readable_level, target_level=target, budget_left=left)
            if any(r["status"] not in LEG_DONE for r in sent):
                stop = "a leg was refused"
                break
        level = book.readable_level
        # reached only on a level that can be read, or with nothing left to hold margin against
        reached = (level is not None and not breaches(level, op, target)) or book.flat
        outcome = _legs_outcome(action.text, results, ()) if results else None
        ok = reached and (outcome is None or outcome.ok)
        shown = "n/a" if level is None else f"{level:.1f}%"
        before = "n/a" if level_before is None else f"{level_before:.1f}%"
        if reached and level is None:
            head = f"{action.text}: margin level {before} -> n/a: the book is flat, no margin in use"
        elif reached:
            head = f"{action.text}: margin level {before} -> {shown}, back above the warning level {target:g}%"
        else:
            why = stop or f"still below after {MAX_SELL_DOWN_ROUNDS} rounds"
            verb = "cannot be known to be above" if level is None else "still below"
            head = (
                f"{action.text} FAILED: margin level {before} -> {shown}, {verb} the warning level {target:g}% ({why})"
            )
        summary = head + (f"; {outcome.summary}" if outcome is not None else "")
        details = {
            **(dict(outcome.details) if outcome is not None else {"legs": []}),
            "margin_level_before": level_before,
            "margin_level_after": level,
            "warning_level": target,
            "budget_left": left,
            "reached": reached,
            "unpriced": list(book.missing),
        }
        return Outcome(ok, summary, details)


def _cheapest(rows: Sequence[Mapping[str, Any]]) -> float:
    prices = [_number(r.get("last")) for r in rows if r.get("qty")]
    return min((p for p in prices if p is not None and p > 0), default=math.inf)


class _Steps:
    """Sends a response's step and order records to the audit callback, with the action's identity."""

    def __init__(self, pending: Mapping[str, Any], audit: Audit | None) -> None:
        self.audit = audit
        self.base = {
            "actor": pending.get("actor"),
            "rule_id": pending.get("rule_id"),
            "alert_id": pending.get("alert_id"),
            "action_id": pending.get("action_id"),
            "response": pending.get("action"),
        }

    def __call__(self, step: str, **fields: Any) -> None:
        if self.audit is not None:
            self.audit({**self.base, "action": "automated_step", "step": step, **fields})

    def order(self, record: Mapping[str, Any]) -> None:
        if self.audit is not None:
            self.audit({**self.base, "action": "automated_order", **record})


LEG_DONE = (ExecutionStatus.FILLED, "SKIPPED")
"""Leg statuses that leave nothing undone: filled, or nothing (left) to sell on that side."""


def _run_leg(
    control: TradingControl,
    leg: Mapping[str, Any],
    leg_id: str,
    pending: Mapping[str, Any],
    step: _Steps,
    book: MarginBook,
    caps: OrderCaps,
    earlier: EarlierOrders,
    *,
    planned: bool,
) -> dict[str, Any]:
    """One leg as child orders within ``caps``, through the gate one after the other, stopping at the first
    refused (the rest would meet the same refusal, or a book that moved), except a refusal by the fat-finger caps
    alone (the market moved past the size): that child is sized again (:func:`resized_qty`) and sent under the
    next child id, at most :data:`MAX_CHILD_RESIZES` times in a row.

    ``planned``: the leg's quantity was fixed before this run (a reduce plan), so what an earlier run filled
    (:func:`leg_history`) counts toward it; otherwise it was sized from ``book``, which already shows it. Either
    way the quantity is clipped to the position ``book`` holds on the leg's side (liquidation-only: never past
    flat), and the first child id sent is past every one an earlier run used.
    """
    ticker, side, asked = str(leg["ticker"]), Side(str(leg["side"])), int(leg["qty"])
    history = leg_history(control, earlier, leg_id, ticker)
    want = max(0, asked - history.filled_qty) if planned else asked
    held = book.held(ticker)
    room = max(0, held if side == Side.SELL else -held)
    target = min(want, room)
    result: dict[str, Any] = {
        **leg, "side": side, "qty": asked, "target": target, "held": held, "earlier_filled": history.filled_qty,
        "filled": 0, "filled_notional": 0.0, "orders": [], "status": ExecutionStatus.FILLED, "note": "",
        "codes": [], "reasons": "", "resized": 0,
    }  # fmt: skip
    if ticker in book.missing:
        return {**result, "target": 0, "status": "NOT_PRICED", "note": "no usable price: not sent"}
    if want == 0:
        return result  # an earlier run filled it all
    if target == 0:
        now = "flat now" if held == 0 else f"now {held:+d}: a {side} would grow it"
        return {**result, "status": "SKIPPED", "note": f"{now}, nothing sent"}
    if target < want:
        result["note"] = f"clipped from {want} to the {room} held"
    px: float | Decimal = book.price(ticker) or 0.0
    k, size, resizes = history.next_k, None, 0
    while result["filled"] < target:  # every fill is a share at least; refusals in a row are bounded
        qty = min(size or caps.child_qty(px), target - result["filled"])
        order, actor = {**leg, "side": side, "qty": qty}, str(pending["actor"])
        child = send_child(control, order, child_order_id(leg_id, k), actor, leg_id, step.order)
        k += 1
        result["orders"].append({key: child[key] for key in ("client_order_id", "qty", "status", "duplicate")})
        if child["status"] != ExecutionStatus.FILLED:
            if resizes < MAX_CHILD_RESIZES:
                caps = OrderCaps.of(control)  # the caps may have moved too
                size = resized_qty(child, caps.child_qty)
            if resizes >= MAX_CHILD_RESIZES or size is None:
                return {**result, "status": child["status"], "codes": child["codes"], "reasons": child["reasons"]}
            resizes, result["resized"] = resizes + 1, result["resized"] + 1
            continue
        size, resizes = None, 0
        result["filled"] += child["filled_qty"]
        result["filled_notional"] += child["filled_notional"]
        px = child["fill_price"] or px  # the next child sized at the price the market last filled at
    return result


def _leg_text(r: Mapping[str, Any]) -> str:
    """One leg as a human reads it: what was asked, what was done (shares of shares, orders), why not all."""
    notes = [r["note"]] if r["note"] else []
    notes += [f"{r['earlier_filled']} filled by an earlier run"] if r["earlier_filled"] else []
    notes += [f"{r['resized']} sent again smaller after a fat-finger cap refusal"] if r.get("resized") else []
    sent = r["orders"]
    if r["status"] not in (*LEG_DONE, "NOT_PRICED") or len(sent) > 1 or (sent and r["filled"] != r["qty"]):
        notes.insert(0, f"{r['filled']} of {r['target']} filled in {len(sent)} order" + "s" * (len(sent) != 1))
    status = str(r["status"]).replace("_", " ")
    why = f": {r['reasons']}" if r["reasons"] else ""
    return f"{r['side']} {r['qty']} {r['ticker']} {status}" + (f" ({'; '.join(notes)})" if notes else "") + why


def _legs_outcome(text: str, results: list[dict[str, Any]], unpriced: Sequence[str]) -> Outcome:
    filled = [r for r in results if r["status"] == ExecutionStatus.FILLED]
    refused = [r for r in results if r["status"] not in (*LEG_DONE, "NOT_PRICED")]
    not_priced = sorted(set(unpriced) | {str(r["ticker"]) for r in results if r["status"] == "NOT_PRICED"})
    if results:
        summary = f"{text}: {len(filled)} of {len(results)} legs filled: " + ", ".join(_leg_text(r) for r in results)
    else:
        summary = f"{text} NOT executed"
    if refused:
        summary += "; REFUSED: " + ", ".join(
            f"{r['side']} {r['target'] - r['filled']} {r['ticker']} [{', '.join(r['codes']) or 'no reason'}]"
            for r in refused
        )
    if not_priced:
        summary += (
            f"; NOT PRICED, nothing sent: {', '.join(not_priced)} (held without a usable price: it cannot be sized "
            "or valued, so the cut is not done)"
        )
    details = {
        "legs": results,
        "refused": [
            {
                "ticker": r["ticker"], "side": r["side"], "qty": r["target"] - r["filled"], "filled": r["filled"],
                "codes": r["codes"], "reasons": r["reasons"],
            }
            for r in refused
        ],
        "unpriced": not_priced,
    }  # fmt: skip
    return Outcome(not refused and not not_priced, summary, details)
