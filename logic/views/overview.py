"""View models of the Overview page (``dashboard/screens/overview.py``): headline figures, VaR/CVaR gauges
(the limit's use only on the basis the gate enforces the limit on), traffic lights per risk area, the trading
state, and the equity curve from the monitor's history."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from engine.defaults import REPORTED_CONFIDENCES
from engine.settings import Limits
from logic.views.common import Desk, TradingStateView, float_or_none, latest_snapshot
from logic.views.limits import live_limits
from logic.views.trade import priced_positions

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
    missing: tuple[str, ...] = ()
    """Held tickers without a usable price (``data.missing_prices``): counted as 0, so the equity, the P&L, the
    leverage and every VaR figure leave them out (understated), and the snapshot reports no daily P&L, drawdown
    or margin figure; the gate refuses trades until they are priced."""
    limit_note: str = ""
    """How the live limits differ from the snapshot's (a limit changed since the monitor's last tick), or ""."""

    @property
    def incomplete(self) -> bool:
        """Whether the figures leave out an unpriced holding (:attr:`missing`)."""
        return bool(self.missing)


GAUGES = 4
"""Gauges the Overview draws (one column each: the narrowest a gauge's number fits, tests/test_render.py)."""


def snapshot_gauges(
    var: Mapping[str, Any],
    limit: float | None,
    stressed_limit: float | None = None,
    horizon_days: float = 1.0,
    *,
    on_basis: bool = True,
) -> list[Gauge]:
    """The :data:`GAUGES` gauges of a monitor snapshot's ``var`` section (missing figures read as 0), drawn
    against ``limit`` and ``stressed_limit``: the live limits (a limit changed since the snapshot applies now, as
    it does at the gate), not the ones the snapshot was computed with.

    Only a figure on the basis the gate enforces a limit on is drawn against it: first the VaR at the limit's
    confidence and ``var.horizon_days`` (:func:`limit_basis_var`: ``var.utilization`` times ``var.limit``, the
    snapshot's own limit) against ``limit``, its use that VaR over ``limit``; last the stressed VaR on that basis
    (``var.stressed_limit_var``) against ``stressed_limit`` (no limit line when the portfolio sets none), its use
    that figure over it. ``on_basis`` False (the live limit's confidence or horizon is not the snapshot's:
    :func:`same_basis`) draws both figures with no limit and no use: a 95% figure is no fraction of a 99% limit.
    Between them the one-day reported figures (VaR 95% and 99%, CVaR 95%) with no limit line and no use of the
    limit: a one-day 99% VaR over a 10-day limit is no fraction of it. A reported figure that is the limit's own
    (a 95% / 1-day limit) is shown once, as the limit's gauge.

    A snapshot written before the stressed VaR at the limit's basis was recorded shows ``stressed_var99``
    labelled 99% (1 day), without the limit's use."""
    low, high = REPORTED_CONFIDENCES

    def figure(key: str) -> float:
        return float_or_none(var.get(key)) or 0.0

    confidence = float_or_none(var.get("confidence")) or low
    days = float_or_none(var.get("horizon_days")) or horizon_days
    cap = limit if on_basis and limit else None
    value = limit_basis_var(var, limit)
    if cap is not None and float_or_none(var.get("limit")) == cap:
        use = float_or_none(var.get("utilization"))  # the snapshot's own ratio: the limit has not changed
    else:
        use = None if cap is None or value is None else value / cap
    at_limit = Gauge(limit_var_title(confidence, days), value or 0.0, cap, use)
    reported = [
        Gauge(f"VaR {low:.0%} (1 day)", figure(f"var{low * 100:.0f}"), None),
        Gauge(f"VaR {high:.0%} (1 day)", figure(f"var{high * 100:.0f}"), None),
        Gauge(f"CVaR {low:.0%} (1 day)", figure(f"cvar{low * 100:.0f}"), None),
    ]
    shown = [g for g in reported if g.title != at_limit.title][: GAUGES - 2]
    if "stressed_limit_var" not in var:  # a snapshot of an older monitor
        stressed = Gauge(f"Stressed VaR {high:.0%} (1 day)", figure(f"stressed_var{high * 100:.0f}"), None)
    else:
        stressed_cap = stressed_limit if on_basis and stressed_limit else None
        stressed_value = figure("stressed_limit_var")
        stressed = Gauge(
            limit_var_title(confidence, days, stressed=True), stressed_value, stressed_cap,
            stressed_value / stressed_cap if stressed_cap else None,
        )  # fmt: skip
    return [at_limit, *shown, stressed]


def limit_basis_var(var: Mapping[str, Any], limit: float | None = None) -> float | None:
    """The snapshot's VaR at its limit's confidence and horizon: ``var.utilization`` times ``var.limit`` (the
    limit it was computed against), or times ``limit`` for a snapshot that records no limit; None when unknown."""
    use = float_or_none(var.get("utilization"))
    at = float_or_none(var.get("limit")) or limit
    return None if use is None or not at else use * at


def same_basis(var: Mapping[str, Any], limits: Limits) -> bool:
    """Whether the snapshot's VaR figures at the limit's basis (``var.confidence``, ``var.horizon_days``) are on
    the live limits' confidence and horizon (a snapshot that records neither is taken to be)."""
    confidence, days = float_or_none(var.get("confidence")), float_or_none(var.get("horizon_days"))
    return (confidence is None or math.isclose(confidence, float(limits.var_confidence), rel_tol=1e-12)) and (
        days is None or math.isclose(days, float(limits.var_horizon_days), rel_tol=1e-12)
    )


def aged_now(measured: Mapping[str, Any] | None, snapshot_age: float) -> Mapping[str, Any] | None:
    """``measured`` with its market data aged to now: the snapshot's ``data.market_age_seconds`` plus the
    snapshot's own age. The gate judges a price by its age when an order arrives; with the monitor down too, the
    snapshot's figure stands still while the market goes stale, and the Market data light would stay green."""
    data = dict((measured or {}).get("data") or {})
    market_age = float_or_none(data.get("market_age_seconds"))
    if measured is None or market_age is None:
        return measured
    return {**measured, "data": {**data, "market_age_seconds": market_age + snapshot_age}}


def on_live_limits(snapshot: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    """``snapshot`` with its ``var`` limits and uses measured against the live ``limits``: what the monitor's next
    tick will write, so a limit cut since the snapshot shows on the gauges and the lights now, not at the next
    tick. On the same basis (:func:`same_basis`) ``var.limit`` / ``var.stressed_limit`` become the live ones and
    ``var.utilization`` / ``var.stressed_utilization`` the snapshot's limit-basis figures over them; when the
    live confidence or horizon differs, the figures on the old basis are no use of the new limit: ``utilization``,
    ``stressed_limit_var`` and ``stressed_utilization`` become null (no data until the next tick)."""
    var = dict(snapshot.get("var") or {})
    cap = float(limits.var_limit)
    stressed_cap = None if limits.stressed_var_limit is None else float(limits.stressed_var_limit)
    if same_basis(var, limits):
        value = limit_basis_var(var, cap)
        if float_or_none(var.get("limit")) != cap:
            var["utilization"] = None if value is None else value / cap
        stressed = float_or_none(var.get("stressed_limit_var"))
        if float_or_none(var.get("stressed_limit")) != stressed_cap:
            var["stressed_utilization"] = None if stressed is None or stressed_cap is None else stressed / stressed_cap
    else:
        var.update(utilization=None, stressed_limit_var=None, stressed_utilization=None)
    var.update(limit=cap, stressed_limit=stressed_cap)
    return {**snapshot, "var": var}


def limit_change_note(var: Mapping[str, Any], limits: Limits) -> str:
    """What the Overview says when the live limits are not the ones the snapshot was computed with, or ""."""
    if not var:
        return ""
    if not same_basis(var, limits):
        confidence, days = float_or_none(var.get("confidence")) or 0.0, float_or_none(var.get("horizon_days")) or 1.0
        was = limit_var_title(confidence, days)
        now = limit_var_title(float(limits.var_confidence), float(limits.var_horizon_days))
        return (
            f"The VaR limit's basis changed since this snapshot (the snapshot measured {was}, the limit is now on "
            f"{now}): no % of limit until the monitor's next snapshot."
        )
    changes = []
    old, new = float_or_none(var.get("limit")), float(limits.var_limit)
    if old is not None and old != new:
        changes.append(f"VaR limit {old:,.0f} -> {new:,.0f}")
    old_stressed = float_or_none(var.get("stressed_limit"))
    new_stressed = None if limits.stressed_var_limit is None else float(limits.stressed_var_limit)
    if "stressed_limit_var" in var and old_stressed != new_stressed:
        changes.append(f"stressed VaR limit {_amount(old_stressed)} -> {_amount(new_stressed)}")
    if not changes:
        return ""
    return f"Limit changed since this snapshot ({'; '.join(changes)}): % of limit is measured against the live limit."


def _amount(value: float | None) -> str:
    return "none" if value is None else f"{value:,.0f}"


def missing_tickers(values: Sequence[Any] | None) -> tuple[str, ...]:
    """The held tickers without a usable price, as a snapshot or the risk manager lists them."""
    return tuple(str(t) for t in values or ())


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
        # measured against the live limits (a change applies at the gate at once, not at the monitor's next tick)
        stressed_cap = None if live.stressed_var_limit is None else float(live.stressed_var_limit)
        basis = same_basis(var, live)
        gauges = snapshot_gauges(var, limit, stressed_cap, live.var_horizon_days, on_basis=basis)
        note = limit_change_note(var, live)
        measured: Mapping[str, Any] | None = on_live_limits(snapshot, live)
        missing = missing_tickers((snapshot.get("data") or {}).get("missing_prices"))
        age = max(0.0, desk.clock() - float(snapshot.get("ts", 0.0)))
        measured = aged_now(measured, age)
    else:  # no monitor yet: the risk manager's own figures (no drawdown, no daily P&L)
        _, totals = priced_positions(desk.risk_manager(portfolio_id).get_dashboard_metrics())
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
        age, note, measured = None, "", None
        missing = missing_tickers(totals.get("missing_prices"))
    alerts = active_alerts(desk, portfolio_id)
    return OverviewView(
        portfolio_id=portfolio_id,
        snapshot=snapshot,
        snapshot_age=age,
        stale=age is None or age > desk.settings.monitor.stale_snapshot_seconds,
        trading=trading,
        headline=headline,
        gauges=gauges,
        lights=analytics.traffic_lights(rules, measured, portfolio_id, alerts, live, desk.settings.dashboard.currency),
        breakers=analytics.breaker_levels(rules, portfolio_id, limits=live),
        var_caption=_var_caption(desk, portfolio_id, snapshot),
        missing=missing,
        limit_note=note,
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


DRAWDOWN_COLUMNS: tuple[str, ...] = ("drawdown.daily", "drawdown.weekly", "drawdown.max")
"""The drawdown series of the Overview's drawdown chart (history fields)."""


def drawdown_axis(history: pd.DataFrame, levels: Sequence[float]) -> tuple[float, float]:
    """The drawdown chart's y-range: down to a quarter below the deepest of every drawn series (daily, weekly and
    max: a weekly -18% on a day at -0.5% is on the chart) and every breaker level, NaN-safe (a null drawdown of an
    incomplete valuation is skipped); ``(-0.01, 0.002)`` when nothing is below 0."""
    lows = [float(v) for v in levels]
    for column in DRAWDOWN_COLUMNS:
        if column in history:
            lows.append(float(pd.to_numeric(history[column], errors="coerce").min()))
    low = min((v for v in lows if math.isfinite(v)), default=0.0)
    return (low * 1.25 if low < 0 else -0.01, 0.002)


# -- shared with the alert engine ---------------------------------------------------------------------------


def effective_rules(desk: Desk) -> tuple[Any, ...]:
    """The alert rules in force: riskdesk.toml's, with the edits made at run time."""
    return desk.alert_engine().rulebook.rules()


def active_alerts(desk: Desk, portfolio_id: str | None = None) -> list[dict[str, Any]]:
    return desk.alert_engine().active_alerts(portfolio_id)
