"""Automated risk responses bound to alert rules (``AlertRule.actions``).

Actions
-------
``set_state:REDUCING`` / ``set_state:HALTED``
    Tighten the portfolio's trading state through the RiskManager (audited there with who and why). An
    automated action never loosens it: when the state is already as strict or stricter, nothing changes and
    the outcome says so. Only a human returns a portfolio to ACTIVE.
``reduce:<fraction>``
    Cut gross exposure by ``fraction`` (0 < f <= 1) of its value at the snapshot that fired the rule, taking
    the **largest losers first** (most negative unrealized P&L; ties: the larger position), each leg through
    ``RiskManager.execute_trade`` so every pre-trade check still applies. Legs carry client order ids derived
    from the action id, so a re-run after a crash never trades twice.

The plan of an action is fixed when the rule fires (and stored with the pending action), so a re-run uses the
same legs and ids. How the outcome is audited and shown as its own alert is ``logic/alerts.py``'s business.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.records import ExecutionStatus, Side, TradingState

STATE_RANK: Mapping[str, int] = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}
AUTOMATED_STATES = (TradingState.REDUCING, TradingState.HALTED)


class TradingControl(Protocol):
    """What an automated response needs from a portfolio's ``logic.risk_manager.RiskManager``."""

    def get_trading_state(self) -> Any:
        """An object with a ``state`` attribute (a ``TradingStatus``) or the state name."""
        ...

    def set_trading_state(self, state: str, reason: str, actor: str) -> Any: ...

    def execute_trade(
        self, ticker: str, qty: int, side: str, client_order_id: str | None = None, actor: str = "trader"
    ) -> Mapping[str, Any]:
        """Returns a dict with ``status`` ("FILLED" | "REJECTED") and ``reasons`` [{code, message}]."""
        ...


ControlFactory = Callable[[str], TradingControl]
"""portfolio id -> what trades it, e.g. ``lambda pid: RiskManager(redis, pid, settings, clock)``."""


@dataclass(frozen=True)
class Action:
    text: str
    kind: str
    """``set_state`` or ``reduce``."""
    state: str | None = None
    fraction: float | None = None


def parse_action(text: Any) -> Action:
    """Parse ``"set_state:HALTED"``, ``"set_state:REDUCING"`` or ``"reduce:0.25"``.

    Raises
    ------
    ValueError
        With a message naming the accepted forms.
    """
    forms = "expected 'set_state:REDUCING', 'set_state:HALTED' or 'reduce:<fraction in (0, 1]>'"
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(f"action {text!r}: {forms}")
    kind, _, arg = text.strip().partition(":")
    kind, arg = kind.strip().lower(), arg.strip()
    if kind == "set_state":
        state = arg.upper()
        if state not in AUTOMATED_STATES:
            raise ValueError(
                f"action {text!r}: an automated action may set only REDUCING or HALTED ({forms})"
            )
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

    def run(self, portfolio_id: str, pending: Mapping[str, Any]) -> Outcome:
        """Run one pending action (``{"action_id", "action", "actor", "reason", "plan"?}``); never raises."""
        try:
            action = parse_action(pending["action"])
            control = self.control(portfolio_id)
            if control is None:
                return Outcome(
                    False, f"{action.text} NOT executed: no RiskManager is wired into the alert engine"
                )
            if action.kind == "set_state":
                return self._set_state(control, action, pending)
            return self._reduce(control, action, pending)
        except Exception as exc:  # the monitor must survive a failing response; the alert shows the failure
            return Outcome(False, f"{pending.get('action')} FAILED: {exc}", {"error": repr(exc)})

    def _set_state(self, control: TradingControl, action: Action, pending: Mapping[str, Any]) -> Outcome:
        assert action.state is not None
        current = control.get_trading_state()
        current_name = str(getattr(current, "state", current))
        if STATE_RANK.get(current_name, 2) >= STATE_RANK[action.state]:
            return Outcome(
                True,
                f"trading state already {current_name}: {action.state} not needed",
                {"previous": current_name, "state": current_name, "changed": False},
            )
        control.set_trading_state(action.state, str(pending["reason"]), str(pending["actor"]))
        return Outcome(
            True,
            f"trading state set to {action.state} (was {current_name})",
            {"previous": current_name, "state": action.state, "changed": True},
        )

    def _reduce(self, control: TradingControl, action: Action, pending: Mapping[str, Any]) -> Outcome:
        legs = pending.get("plan") or []
        if not legs:
            return Outcome(True, f"{action.text}: nothing to reduce (no priced positions)", {"legs": []})
        results = []
        for i, leg in enumerate(legs):
            order_id = f"{pending['action_id']}-{i}"
            result = control.execute_trade(
                leg["ticker"],
                int(leg["qty"]),
                leg["side"],
                client_order_id=order_id,
                actor=str(pending["actor"]),
            )
            reasons = "; ".join(r.get("message") or r.get("code", "") for r in result.get("reasons") or [])
            results.append(
                {
                    **leg,
                    "client_order_id": order_id,
                    "status": result.get("status"),
                    "duplicate": bool(result.get("duplicate")),
                    "reasons": reasons,
                }
            )
        filled = [r for r in results if r["status"] == ExecutionStatus.FILLED]
        parts = [
            f"{r['side']} {r['qty']} {r['ticker']} {r['status']}"
            + (f" ({r['reasons']})" if r["reasons"] else "")
            for r in results
        ]
        summary = f"{action.text}: {len(filled)} of {len(results)} legs filled: " + ", ".join(parts)
        return Outcome(len(filled) == len(results), summary, {"legs": results})
