"""View models of the Overview page (``dashboard/screens/overview.py``): headline figures, VaR/CVaR gauges
against the limit, traffic lights per risk area, the trading state, and the equity curve from the monitor's
history."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from engine.defaults import REPORTED_CONFIDENCES
from logic.views.common import Desk, TradingStateView, float_or_none, latest_snapshot
from logic.views.limits import live_limits

HISTORY_WINDOWS: dict[str, float] = {
    "5 min": 300.0,
    "30 min": 1800.0,
    "4 h": 4 * 3600.0,
    "1 day": 86400.0,
    "7 days": 7 * 86400.0,
    "90 days": 90 * 86400.0,
    "1 year": 365 * 86400.0,
}
"""Equity-curve windows the Overview offers (``[history]`` keeps 90 days of 15-minute buckets by default, in data
time; ``make demo`` keeps its whole replay of daily bars)."""
HISTORY_MAX_POINTS = 2000
"""Most points of an equity-curve window: the history is read from the finest source that covers the window in
at most this many points (every snapshot for a short window, else a downsampled tier: engine/store/history.py),
in one or two reads whatever the window."""


@dataclass(frozen=True)
class Gauge:
    title: str
    value: float
    limit: float | None

    @property
    def of_limit(self) -> float | None:
        """The value as a fraction of the limit (None without a limit)."""
        return self.value / self.limit if self.limit else None


@dataclass(frozen=True)
class OverviewView:
    portfolio_id: str
    snapshot: Mapping[str, Any] | None
    """The monitor's latest snapshot, None before its first one (the figures then come from RiskManager)."""
    snapshot_age: float | None
    stale: bool
    trading: TradingStateView
    headline: Mapping[str, float | None]
    """equity, cash, daily_pnl, total_pnl, unrealized, realized, leverage (None where unknown)."""
    gauges: list[Gauge]
    lights: list[Any]
    breakers: list[dict[str, Any]]
    var_caption: str = ""
    """Which method the VaR / CVaR gauges come from (the snapshot's ``var_method``)."""


def snapshot_gauges(
    var: Mapping[str, Any], limit: float | None, stressed_limit: float | None = None
) -> list[Gauge]:
    """The gauges of a monitor snapshot's ``var`` section: VaR at both reported confidences, CVaR at the lower
    one and stressed VaR at the higher one (missing figures read as 0). Stressed VaR is drawn against the
    stressed-VaR limit (``limits.stressed_var_limit``; no limit line when the portfolio sets none), never
    against the VaR limit."""
    low, high = REPORTED_CONFIDENCES

    def figure(key: str) -> float:
        return float_or_none(var.get(key)) or 0.0

    return [
        Gauge(f"VaR {low:.0%} (1 day)", figure(f"var{low * 100:.0f}"), limit),
        Gauge(f"VaR {high:.0%} (1 day)", figure(f"var{high * 100:.0f}"), limit),
        Gauge(f"CVaR {low:.0%} (1 day)", figure(f"cvar{low * 100:.0f}"), limit),
        Gauge(f"Stressed VaR {high:.0%}", figure(f"stressed_var{high * 100:.0f}"), stressed_limit),
    ]


def overview_view(desk: Desk, portfolio_id: str) -> OverviewView:
    """Headline figures, VaR/CVaR against the limit, traffic lights and trading state of one portfolio."""
    from logic import analytics

    snapshot = latest_snapshot(desk, portfolio_id)
    ts = desk.store.read_trading_state(portfolio_id)
    trading = TradingStateView(ts.state, ts.reason, ts.actor, ts.ts)
    rules = effective_rules(desk)
    live = live_limits(desk, portfolio_id)  # the store's limits (a change applies without a restart)
    limit = float(live.var_limit)
    confidence = live.var_confidence
    if snapshot is not None:
        pnl, var = snapshot.get("pnl", {}), snapshot.get("var", {})
        headline = {
            "equity": float_or_none(snapshot.get("equity")),
            "cash": float_or_none(snapshot.get("cash")),
            "daily_pnl": float_or_none(pnl.get("daily")),
            "total_pnl": float_or_none(pnl.get("total")),
            "unrealized": float_or_none(pnl.get("unrealized")),
            "realized": float_or_none(pnl.get("realized")),
            "leverage": float_or_none(snapshot.get("leverage")),
        }
        limit = float_or_none(var.get("limit")) or limit
        stressed_cap = None if live.stressed_var_limit is None else float(live.stressed_var_limit)
        gauges = snapshot_gauges(var, limit, stressed_cap)
        age = max(0.0, desk.clock() - float(snapshot.get("ts", 0.0)))
    else:  # no monitor yet: the risk manager's own figures (no drawdown, no daily P&L)
        totals = desk.risk_manager(portfolio_id).get_dashboard_metrics().attrs.get("totals", {})
        headline = {
            "equity": totals.get("equity"),
            "cash": totals.get("cash"),
            "daily_pnl": None,
            "total_pnl": (totals.get("unrealized_pnl") or 0.0) + (totals.get("realized_pnl") or 0.0),
            "unrealized": totals.get("unrealized_pnl"),
            "realized": totals.get("realized_pnl"),
            "leverage": totals.get("leverage"),
        }
        gauges = [
            Gauge(f"VaR {confidence:.0%} (1 day)", float(totals.get("var") or 0.0), limit),
            Gauge(f"CVaR {confidence:.0%} (1 day)", float(totals.get("cvar") or 0.0), limit),
        ]
        age = None
    alerts = active_alerts(desk, portfolio_id)
    return OverviewView(
        portfolio_id=portfolio_id,
        snapshot=snapshot,
        snapshot_age=age,
        stale=age is None or age > desk.settings.monitor.stale_snapshot_seconds,
        trading=trading,
        headline=headline,
        gauges=gauges,
        lights=analytics.traffic_lights(rules, snapshot, portfolio_id, alerts, live),
        breakers=analytics.breaker_levels(rules, portfolio_id, limits=live),
        var_caption=_var_caption(desk, portfolio_id, snapshot),
    )


def _var_caption(desk: Desk, portfolio_id: str, snapshot: Mapping[str, Any] | None) -> str:
    from logic.views.risk import METHOD_LABELS, method_caption

    method = None if snapshot is None else snapshot.get("var_method")
    if method is None:
        return method_caption(desk, portfolio_id)
    label = METHOD_LABELS.get(str(method), str(method))
    return f"VaR method: {label}; stressed VaR: normal, worse of two crisis scenarios"


def history_frame(desk: Desk, portfolio_id: str, window_seconds: float) -> pd.DataFrame:
    """The monitor's history over the last ``window_seconds`` (a downsampled tier when long), oldest first.

    Columns: ``time`` (UTC) then the flat metrics of the history (``equity``, ``drawdown.daily``, ...).
    """
    now = desk.clock()
    points = desk.store.read_history_window(
        portfolio_id, now - window_seconds, now, history=desk.settings.history, max_points=HISTORY_MAX_POINTS
    ).points
    if not points:
        return pd.DataFrame(columns=["time", "equity"])
    df = pd.DataFrame.from_records(points).drop(columns=["id"], errors="ignore")
    df.insert(0, "time", pd.to_datetime(df["ts"], unit="s", utc=True))
    return df


# -- shared with the alert engine ---------------------------------------------------------------------------


def effective_rules(desk: Desk) -> tuple[Any, ...]:
    """The alert rules in force: riskdesk.toml's, with the edits made at run time."""
    return desk.alert_engine().rulebook.rules()


def active_alerts(desk: Desk, portfolio_id: str | None = None) -> list[dict[str, Any]]:
    return desk.alert_engine().active_alerts(portfolio_id)
