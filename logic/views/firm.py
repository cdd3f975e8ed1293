"""View models of the Firm page (``dashboard/screens/firm.py``): every portfolio together (firm VaR with the
sum of stand-alone VaRs beside it, exposure by ticker, the worst drawdowns, each portfolio's traffic lights)
and the desk-wide kill switch (HALT ALL / REDUCE ALL) with who used it last. The figures are
:class:`logic.firm.Firm`'s."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from engine.records import Action, TradingState
from logic.access import Identity, authorize
from logic.analytics import AREAS
from logic.firm import Firm, FirmRisk
from logic.views.common import Desk, InputError

FIRM_SWITCHES: Mapping[str, TradingState] = {"HALT ALL": TradingState.HALTED, "REDUCE ALL": TradingState.REDUCING}
"""The desk-wide buttons and the state each sets."""
WORST_DRAWDOWNS = 5
"""How many portfolios the worst-drawdown table lists."""
EXPOSURE_COLUMNS = ("ticker", "gross", "net", "long", "short", "portfolios")
PORTFOLIO_COLUMNS = (
    "portfolio", "state", "equity", "gross", "net", "VaR (stand-alone)", "daily drawdown", "max drawdown",
    "margin level (%)", *(area for area, _ in AREAS),
)  # fmt: skip
"""Columns of the per-portfolio table: figures, then one traffic light per risk area."""


@dataclass(frozen=True)
class FirmAction:
    """The last HALT ALL / REDUCE ALL: who, when, why and what it changed."""

    action: str
    actor: str
    reason: str
    ts: float
    changed: int
    """Portfolios whose state it changed."""
    portfolios: int


@dataclass(frozen=True)
class FirmView:
    risk: FirmRisk
    headline: Mapping[str, float]
    """firm_var, standalone_var_sum, diversification, gross_exposure, net_exposure."""
    exposures: pd.DataFrame
    portfolios: pd.DataFrame
    worst: pd.DataFrame
    last_action: FirmAction | None
    failed: Mapping[str, str]
    understated: Mapping[str, str] = field(default_factory=dict)
    """Portfolio -> why its figures (and so the firm's) are understated: held tickers without a usable price,
    counted as 0 (:attr:`logic.firm.FirmRisk.missing_prices`)."""

    @property
    def complete(self) -> bool:
        """The figures cover every position of every portfolio (nothing left out, nothing counted as 0)."""
        return not self.failed and not self.understated


def firm(desk: Desk) -> Firm:
    """The desk's :class:`~logic.firm.Firm` (created once, sharing the desk's market-model cache)."""
    return desk._service("firm", "*", lambda: Firm(desk.client, desk.settings, desk.clock, desk.models))


def firm_view(desk: Desk) -> FirmView:
    """Every portfolio together, as the Firm page shows it."""
    f = firm(desk)
    risk = f.risk()
    headline = {
        "firm_var": risk.firm_var,
        "standalone_var_sum": risk.standalone_var_sum,
        "diversification": risk.diversification,
        "gross_exposure": risk.gross_exposure,
        "net_exposure": risk.net_exposure,
    }
    exposures = pd.DataFrame(
        [{c: getattr(e, c) for c in EXPOSURE_COLUMNS} for e in risk.exposures], columns=list(EXPOSURE_COLUMNS)
    )
    rows = []
    for p in risk.portfolios:
        row: dict[str, Any] = {
            "portfolio": p.portfolio_id,
            "state": p.trading_state,
            "equity": p.equity,
            "gross": p.gross_exposure,
            "net": p.net_exposure,
            "VaR (stand-alone)": p.var,
            "daily drawdown": p.drawdown_daily,
            "max drawdown": p.drawdown_max,
            "margin level (%)": p.margin_level,
        }
        row.update({light.area: light.level for light in p.lights})
        rows.append(row)
    portfolios = pd.DataFrame(rows, columns=list(PORTFOLIO_COLUMNS))
    worst = pd.DataFrame(
        [
            {"portfolio": p.portfolio_id, "daily drawdown": p.drawdown_daily, "max drawdown": p.drawdown_max}
            for p in risk.worst_drawdowns(WORST_DRAWDOWNS)
        ],
        columns=["portfolio", "daily drawdown", "max drawdown"],
    )
    understated = {
        pid: f"no usable price for {', '.join(tickers)}: counted as 0 in the firm VaR, the exposures and the equity"
        for pid, tickers in risk.missing_prices.items()
    }
    return FirmView(
        risk, headline, exposures, portfolios, worst, last_firm_action(desk), dict(risk.failed), understated
    )


def last_firm_action(desk: Desk) -> FirmAction | None:
    record = firm(desk).last_action()
    if record is None:
        return None
    changes = record.get("portfolios") or {}
    changed = sum(1 for c in changes.values() if c.get("previous") != c.get("state"))
    return FirmAction(
        action=str(record.get("action", "")),
        actor=str(record.get("actor", "")),
        reason=str(record.get("reason", "")),
        ts=float(record.get("ts") or 0.0),
        changed=changed,
        portfolios=len(changes),
    )


def firm_switch(desk: Desk, switch: str, identity: Identity | None, reason: str) -> dict[str, dict[str, str]]:
    """HALT ALL or REDUCE ALL (``switch``, a key of :data:`FIRM_SWITCHES`) by ``identity`` (a risk manager or
    an admin): every portfolio in one transaction with one audit record. A reason is required."""
    who = authorize(identity, Action.FIRM_SWITCH)
    if switch not in FIRM_SWITCHES:
        raise InputError(f"choose one of {', '.join(FIRM_SWITCHES)}")
    reason, actor = (reason or "").strip(), who.actor
    if not reason:
        raise InputError("a reason is required to change every portfolio's trading state")
    f = firm(desk)
    if FIRM_SWITCHES[switch] == TradingState.HALTED:
        return f.halt_all(actor, reason)
    return f.reduce_all(actor, reason)
