"""View models of the Overview page (``dashboard/screens/overview.py``): headline figures, VaR/CVaR gauges
(the limit's use only on the basis the gate enforces the limit on), traffic lights per risk area, the trading
state, and the equity curve from the monitor's history."""

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
    """The limit line, drawn only on a gauge of the figure the gate compares with that limit."""
    of_limit: float | None = None
    """The limit's use as the gate measures it (``var.utilization``, ``var.stressed_utilization``); None on a
    gauge whose figure is not on the limit's basis (a one-day VaR beside a 10-day limit is not its use)."""


def horizon_text(days: float) -> str:
    """``1 day``, ``10 days``, ``0.5 days``: a VaR figure's horizon as its label says it."""
    return f"{days:g} day{'' if days == 1 else 's'}"


def limit_var_title(confidence: float, days: float, *, stressed: bool = False) -> str:
    """The title of the gauge of a VaR at a limit's basis: ``VaR 99% (10 days)``, ``Stressed VaR 95% (1 day)``."""
    return f"{'Stressed VaR' if stressed else 'VaR'} {confidence:.0%} ({horizon_text(days)})"


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


GAUGES = 4
"""Gauges the Overview draws (one column each: the narrowest a gauge's number fits, tests/test_render.py)."""


def snapshot_gauges(
    var: Mapping[str, Any], limit: float | None, stressed_limit: float | None = None, horizon_days: float = 1.0
) -> list[Gauge]:
    """The :data:`GAUGES` gauges of a monitor snapshot's ``var`` section (missing figures read as 0).

    Only a figure on the basis the gate enforces a limit on is drawn against it, with its use from the
    snapshot's own ratio: first the VaR at the limit's confidence and ``var.horizon_days`` (``var.utilization``
    times ``var.limit``, its use ``var.utilization``), last the stressed VaR on that basis
    (``var.stressed_limit_var``) against the stressed-VaR limit (``var.stressed_limit``, else
    ``stressed_limit``: the live one; no limit line when the portfolio sets none), its use
    ``var.stressed_utilization``. Between them the one-day reported figures (VaR 95% and 99%, CVaR 95%) with no
    limit line and no use of the limit: a one-day 99% VaR over a 10-day limit is no fraction of it. A reported
    figure that is the limit's own (a 95% / 1-day limit) is shown once, as the limit's gauge.

    A snapshot written before the stressed VaR at the limit's basis was recorded shows ``stressed_var99``
    labelled 99% (1 day), without the limit's use."""
    low, high = REPORTED_CONFIDENCES

    def figure(key: str) -> float:
        return float_or_none(var.get(key)) or 0.0

    confidence = float_or_none(var.get("confidence")) or low
    days = float_or_none(var.get("horizon_days")) or horizon_days
    utilization = float_or_none(var.get("utilization"))
    at_limit = Gauge(
        limit_var_title(confidence, days),
        (utilization or 0.0) * limit if limit else 0.0,
        limit,
        utilization if limit else None,
    )
    reported = [
        Gauge(f"VaR {low:.0%} (1 day)", figure(f"var{low * 100:.0f}"), None),
        Gauge(f"VaR {high:.0%} (1 day)", figure(f"var{high * 100:.0f}"), None),
        Gauge(f"CVaR {low:.0%} (1 day)", figure(f"cvar{low * 100:.0f}"), None),
    ]
    shown = [g for g in reported if g.title != at_limit.title][: GAUGES - 2]
    if "stressed_limit_var" not in var:  # a snapshot of an older monitor
        stressed = Gauge(f"Stressed VaR {high:.0%} (1 day)", figure(f"stressed_var{high * 100:.0f}"), None)
    else:
        cap = float_or_none(var.get("stressed_limit")) or stressed_limit
        use = float_or_none(var.get("stressed_utilization"))
        value = figure("stressed_limit_var")
        stressed = Gauge(
            limit_var_title(confidence, days, stressed=True), value, cap,
            (use if use is not None else value / cap) if cap else None,
        )  # fmt: skip
    return [at_limit, *shown, stressed]


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
        gauges = snapshot_gauges(var, limit, stressed_cap, live.var_horizon_days)
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
        # the gate's own figures: VaR and CVaR at the limit's confidence and horizon; only the VaR is the limit's
        # use (CVaR is no fraction of a VaR limit)
        confidence = float(totals.get("var_confidence") or confidence)
        days = float(totals.get("var_horizon_days") or live.var_horizon_days)
        limit = float(totals.get("var_limit") or limit)
        span = horizon_text(days)
        gauges = [
            Gauge(limit_var_title(confidence, days), float(totals.get("var") or 0.0), limit,
                  float_or_none(totals.get("var_utilization"))),
            Gauge(f"CVaR {confidence:.0%} ({span})", float(totals.get("cvar") or 0.0), None),
        ]  # fmt: skip
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


BASIS_NOTE = (
    "% of limit only where the figure is at the limit's confidence and horizon, as the gate measures it; "
    "the 1-day figures are reported, not on the limit's basis"
)
"""Under the gauges: which of them are a limit's use (tests/test_limit_basis.py)."""


def _var_caption(desk: Desk, portfolio_id: str, snapshot: Mapping[str, Any] | None) -> str:
    from logic.views.risk import METHOD_LABELS, method_caption

    method = None if snapshot is None else snapshot.get("var_method")
    if method is None:
        return f"{method_caption(desk, portfolio_id)}. {BASIS_NOTE}"
    label = METHOD_LABELS.get(str(method), str(method))
    return f"VaR method: {label}; stressed VaR: normal, worse of two crisis scenarios. {BASIS_NOTE}"


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
