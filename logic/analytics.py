"""Risk read-outs the dashboard shows that no other module computes: traffic lights from the alert rules, the
monitor's stored continuous backtest as tables, and the VaR surface over two positions' sizes.

Pure functions over plain data (snapshots, history points, arrays); every risk formula comes from
:mod:`engine.math_logic` and every rule comparison from :mod:`logic.alerts`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from engine import math_logic
from engine.defaults import REPORTED_CONFIDENCES
from engine.records import ACTIVE_ALERT_STATUSES, SEVERITY_RANK, Float64Array, Severity
from engine.settings import AlertRule, Limits
from logic.alerts import MISSING, applies, compare, metric_value
from logic.rules import limit_reference, null_does_not_apply, resolve_rule
from logic.var_methods import RiskModel

# -- traffic lights ------------------------------------------------------------------------------------------

AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("VaR", ("var.",)),
    ("Drawdown", ("drawdown.", "pnl.")),
    ("Concentration", ("concentration.",)),
    ("Margin & leverage", ("margin.", "leverage", "gross_exposure", "net_exposure")),
    ("Market data", ("data.",)),
)
"""Risk areas of the Overview and the rule metrics (dotted-path prefixes) that belong to each."""

LEVELS = ("grey", "green", "amber", "red")
RED_SEVERITIES: frozenset[Severity] = frozenset({Severity.HIGH, Severity.CRITICAL})
"""A breached rule or active alert of these severities turns its area red; LOW and MEDIUM turn it amber."""


@dataclass(frozen=True)
class Light:
    area: str
    level: str
    """``green`` (every applicable rule clear), ``amber``, ``red``, or ``grey`` (no rule applies)."""
    detail: str


def area_of(metric: str) -> str | None:
    for area, prefixes in AREAS:
        if any(metric == p or metric.startswith(p) for p in prefixes):
            return area
    return None


LIMIT_AMBER_FRACTION = 0.8
"""A figure at or above this fraction of its gate limit turns its light amber (above the limit: red)."""

DEFAULT_CURRENCY = "USD"
"""The money unit of a light's text when the caller names none (``dashboard.currency`` defaults to it too)."""


def limit_breaches(
    snapshot: Mapping[str, Any], limits: Limits, currency: str = DEFAULT_CURRENCY
) -> list[tuple[str, str, str]]:
    """``(area, level, text)`` of the snapshot's figures against the gate's own limits: the largest position's
    share of equity against ``max_concentration``, the VaR's utilization of ``var_limit``, where the portfolio
    sets ``stressed_var_limit`` the stressed VaR at the limit's confidence and horizon (``var.stressed_limit_var``,
    the gate's figure; never the one-day ``stressed_var99``) against it, and the market data's age against
    ``stale_price_seconds`` (the gate refuses a price older than that: STALE_PRICE; the live limit, so a limit
    lowered on the Limits page turns the light red as soon as the gate refuses, while the shipped
    ``stale_market_data`` rule keeps its own fixed threshold and still fires its alert when the limit is raised
    above it). Above the limit (what the gate refuses) is red, from :data:`LIMIT_AMBER_FRACTION` of it amber,
    else green: exactly at the limit is amber, as the gate passes it (it refuses ``>``).

    The text states the figure and the limit in one unit (a share of equity, a percentage of the VaR limit with
    the limit in ``currency``, money, seconds), so a reader sees how far over or under the limit the book is."""
    out = []
    for area, metric, limit in (
        ("Concentration", "concentration.largest_share", float(limits.max_concentration)),
        ("VaR", "var.utilization", 1.0),
        ("VaR", "var.stressed_limit_var", limits.stressed_var_limit),  # the live limit, as a rule on it follows it
        ("Market data", "data.market_age_seconds", float(limits.stale_price_seconds)),
    ):
        value = metric_value(snapshot, metric)
        if limit is None or value is MISSING or value is None or isinstance(value, bool) or not _finite(value):
            continue
        figure = abs(float(value)) if area == "Market data" else float(value)  # the gate's abs(age): a future stamp
        limit = float(limit)
        level = "red" if figure > limit else "amber" if figure >= LIMIT_AMBER_FRACTION * limit else "green"
        out.append((area, level, _limit_text(snapshot, metric, figure, limits, currency)))
    return out


def _limit_text(snapshot: Mapping[str, Any], metric: str, figure: float, limits: Limits, currency: str) -> str:
    """One light's figure against its gate limit, both in the same unit."""
    if metric == "concentration.largest_share":
        ticker = metric_value(snapshot, "concentration.largest_ticker")
        largest = f"largest position ({ticker})" if isinstance(ticker, str) and ticker else "largest position"
        return (
            f"{largest} at {_pct(figure)} of equity against the gate's max_concentration "
            f"({_pct(limits.max_concentration)})"
        )
    if metric == "var.utilization":
        # the utilization is of the limit the monitor measured it against (var.limit); the live one without it
        measured = metric_value(snapshot, "var.limit")
        if isinstance(measured, int | float) and not isinstance(measured, bool) and _finite(measured):
            var = f"VaR {_money(figure * float(measured), currency)} at"
            return f"{var} {_pct(figure)} of the gate's var_limit ({_money(float(measured), currency)})"
        return f"VaR at {_pct(figure)} of the gate's var_limit ({_money(float(limits.var_limit), currency)})"
    if metric == "var.stressed_limit_var":
        cap = float(limits.stressed_var_limit or 0.0)
        share = f" ({_pct(figure / cap)} of it)" if cap > 0 else ""
        return (
            f"stressed VaR {_money(figure, currency)} against the gate's stressed_var_limit "
            f"({_money(cap, currency)}){share}"
        )
    limit = float(limits.stale_price_seconds)
    return f"market data {figure:,.1f} s old against the gate's stale_price_seconds ({limit:,.1f} s)"


def traffic_lights(
    rules: Iterable[AlertRule],
    snapshot: Mapping[str, Any] | None,
    portfolio_id: str,
    active_alerts: Iterable[Mapping[str, Any]] = (),
    limits: Limits | None = None,
    currency: str = DEFAULT_CURRENCY,
) -> list[Light]:
    """One light per area of :data:`AREAS`: the worst of the rules' current breaches, the active alerts and
    (with ``limits``, the portfolio's live limits) the figures against the gate's limits
    (:func:`limit_breaches`, its money in ``currency``), so a light is never green while the gate refuses for the
    same limit: the Market data light goes red when the data is older than the live ``stale_price_seconds``.

    A rule breached now (on ``snapshot``) or an active alert of a rule of the area colours it by severity;
    an area whose rules all hold is green; one without any applicable rule (or without a snapshot) is grey, and
    so is one whose rules apply but whose figures are null ("no data": e.g. the concentration while a held
    ticker has no price), never green and never "no rule applies".
    """
    by_area: dict[str, list[tuple[int, int, str]]] = {area: [] for area, _ in AREAS}  # (rank, rule first, text)
    applicable = {area: 0 for area, _ in AREAS}
    unknown = {area: 0 for area, _ in AREAS}
    """Rules of each area whose metric the snapshot holds as null (no figure: e.g. a held price missing)."""
    if limits is not None and snapshot is not None:
        ranks = {"red": _rank(Severity.CRITICAL), "amber": _rank(Severity.MEDIUM)}
        for limit_area, level, text in limit_breaches(snapshot, limits, currency):
            applicable[limit_area] += 1
            if level in ranks:
                by_area[limit_area].append((ranks[level], 2, text))
        if metric_value(snapshot, "concentration.largest_share") is None and _why(snapshot):
            unknown["Concentration"] += 1  # max_concentration applies, the share is unknown (a missing price)
    for written in rules:
        rule = resolve_rule(written, limits)  # a limits.<field> threshold follows the live limit
        area = area_of(written.metric)
        if rule is None or area is None or not applies(rule, portfolio_id) or snapshot is None:
            continue
        value = metric_value(snapshot, rule.metric)
        if value is None and not null_does_not_apply(rule.metric, snapshot) and _why(snapshot):
            unknown[area] += 1  # the rule applies; its figure is missing (never "no rule applies", never green)
            continue
        if value is MISSING or value is None or isinstance(value, bool) or not _finite(value):
            continue
        applicable[area] += 1
        if compare(float(value), rule.op, float(rule.threshold)):
            rank = _rank(rule.severity)
            ref = limit_reference(written)
            now = f"{rule.metric} = {_fmt(value)} {rule.op} {_fmt(rule.threshold)}" + (f" ({ref})" if ref else "")
            text = f"{rule.description or rule.id}: {now}"
            by_area[area].append((rank, 1, text))
    for alert in active_alerts:
        if alert.get("status") not in ACTIVE_ALERT_STATUSES:
            continue
        area = area_of(str(alert.get("metric", "")))
        if area is None:
            continue
        applicable[area] += 1
        status, rule_id = str(alert.get("status", "")).lower(), alert.get("rule_id", "?")
        text = f"{status} alert {rule_id} ({alert.get('severity', '?')})"
        by_area[area].append((_rank(str(alert.get("severity", Severity.LOW))), 0, text))
    lights = []
    for area, _ in AREAS:
        hits = sorted(by_area[area], reverse=True)
        if hits:
            rank, _, text = hits[0]
            level = "red" if rank >= min(SEVERITY_RANK[s] for s in RED_SEVERITIES) else "amber"
            more = f" (+{len(hits) - 1} more)" if len(hits) > 1 else ""
            lights.append(Light(area, level, text + more))
        elif unknown[area]:
            lights.append(Light(area, "grey", f"no data: {unknown[area]} rule(s) without a figure{_why(snapshot)}"))
        elif applicable[area]:
            lights.append(Light(area, "green", f"{applicable[area]} rule(s) clear"))
        else:
            lights.append(Light(area, "grey", "no rule applies" if snapshot is not None else "no snapshot yet"))
    return lights


def _why(snapshot: Mapping[str, Any] | None) -> str:
    missing = ((snapshot or {}).get("data") or {}).get("missing_prices") or []
    return f": no usable price for {', '.join(map(str, missing))}" if missing else ""


def breaker_levels(
    rules: Iterable[AlertRule], portfolio_id: str, metric: str = "drawdown.daily", limits: Limits | None = None
) -> list[dict[str, Any]]:
    """The circuit-breaker levels on ``metric``: rules with automated actions, as ``{level, label}`` (a
    ``limits.<field>`` threshold resolved against ``limits``; left out without them)."""
    out = []
    for written in rules:
        rule = resolve_rule(written, limits)
        if rule is None:
            continue
        if rule.metric == metric and rule.actions and applies(rule, portfolio_id):
            out.append(
                {
                    "level": float(rule.threshold),
                    "label": f"{rule.id}: {', '.join(rule.actions)}",
                    "severity": rule.severity,
                }
            )
    return sorted(out, key=lambda b: b["level"], reverse=True)


def _rank(severity: str) -> int:
    """The severity's rank (:data:`~engine.records.SEVERITY_RANK`); an unknown word ranks as LOW."""
    try:
        return SEVERITY_RANK[Severity(severity)]
    except ValueError:
        return SEVERITY_RANK[Severity.LOW]


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _fmt(value: Any) -> str:
    number = float(value)
    return f"{number:,.4g}" if abs(number) < 1000 else f"{number:,.0f}"


def _money(value: float, currency: str) -> str:
    """``USD 1,234,568``: :func:`logic.views.fmt.money`'s rule for money (whole units), written here because
    ``logic.views`` imports this module."""
    return f"{currency} {0.0 if round(value) == 0 else value:,.0f}"


def _pct(value: float) -> str:
    """A fraction as a percentage with one decimal (``11.384`` -> ``1,138.4%``; ``1.001`` -> ``100.1%``)."""
    return f"{value * 100:,.1f}%"


# -- the monitor's stored backtest ---------------------------------------------------------------------------

STORED_BACKTEST_COLUMNS = (
    "method", "observations", "exceedances", "expected", "rate", "kupiec_lr", "kupiec_p", "christoffersen_p",
    "rolling_observations", "rolling_exceedances", "rolling_kupiec_p", "rolling_christoffersen_p", "zone", "flat_bars",
)  # fmt: skip


@dataclass(frozen=True)
class StoredBacktest:
    """The monitor's continuous backtest of one portfolio (``pf:{id}:backtest``), every method side by side."""

    confidence: float
    horizon_bars: int
    methods: tuple[str, ...]
    bars: int
    """Bars fed so far."""
    ready: bool
    """Burn-in done (forecasts are being made)."""
    tables: Mapping[str, pd.DataFrame]
    """Track (``bar``, ``limit``) -> one row per method: :data:`STORED_BACKTEST_COLUMNS`."""
    series: Mapping[str, pd.DataFrame]
    """Track -> the kept closed horizons: start, end, pnl, then var_<method> and hit_<method> per method; the VaR
    is the one the horizon's loss was checked against (``Observation.scale`` applied: over a night, a night's)."""


def stored_backtest(summary: Mapping[str, Any], records: Iterable[Mapping[str, Any]]) -> StoredBacktest:
    """The stored summary and closed observations (``Backtester.to_dict()["records"]``) as tables; nothing is
    recomputed (the monitor computed them with :mod:`logic.backtest`)."""
    methods = tuple(str(m) for m in summary.get("methods", ()))
    confidence = float(summary.get("confidence", REPORTED_CONFIDENCES[-1]))
    tables: dict[str, pd.DataFrame] = {}
    for track, per_method in summary.get("tracks", {}).items():
        rows = []
        for m in methods:
            s = per_method.get(m, {})
            rows.append({**{c: s.get(c) for c in STORED_BACKTEST_COLUMNS}, "method": m,
                         "expected": (s.get("observations") or 0) * (1.0 - confidence)})  # fmt: skip
        tables[str(track)] = pd.DataFrame(rows, columns=list(STORED_BACKTEST_COLUMNS))
    by_track: dict[str, list[dict[str, Any]]] = {t: [] for t in tables}
    for r in records:
        row: dict[str, Any] = {"start": r["start"], "end": r["end"], "pnl": r["pnl"]}
        scale = float(r.get("scale", 1.0))  # the VaR scaled to the variance the horizon spanned (a night)
        row.update({f"var_{m}": None if r["var"].get(m) is None else r["var"][m] * scale for m in methods})
        row.update({f"hit_{m}": bool(r["hit"].get(m)) for m in methods})
        by_track.setdefault(str(r["track"]), []).append(row)
    columns = ["start", "end", "pnl", *(f"var_{m}" for m in methods), *(f"hit_{m}" for m in methods)]
    series = {t: pd.DataFrame(rows, columns=columns) for t, rows in by_track.items()}
    return StoredBacktest(
        confidence=confidence,
        horizon_bars=int(summary.get("horizon_bars", 1)),
        methods=methods,
        bars=int(summary.get("bars", 0)),
        ready=bool(summary.get("ready", False)),
        tables=tables,
        series=series,
    )


# -- VaR surface over two positions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Surface:
    tickers: tuple[str, str]
    qty_a: Float64Array
    qty_b: Float64Array
    var: Float64Array
    """``var[j, i]``: VaR with ``qty_a[i]`` shares of the first ticker and ``qty_b[j]`` of the second."""
    current: tuple[float, float]
    current_var: float

    @property
    def lowest(self) -> tuple[float, float, float]:
        """``(qty_a, qty_b, var)`` of the grid point with the lowest VaR."""
        j, i = np.unravel_index(int(np.argmin(self.var)), self.var.shape)
        return float(self.qty_a[i]), float(self.qty_b[j]), float(self.var[j, i])


def qty_grid(current: float, price: float, equity: float, steps: int) -> Float64Array:
    """Share counts from -2x to +2x the current position (or +-10% of equity in shares when flat)."""
    span = 2.0 * abs(current) if current else 0.10 * max(equity, 0.0) / price
    span = max(span, 1.0)
    return np.linspace(current - span, current + span, steps)


def var_surface(
    exposures: Float64Array,
    prices: Float64Array,
    cov: Float64Array,
    index_a: int,
    index_b: int,
    qty_a: Float64Array,
    qty_b: Float64Array,
    *,
    confidence: float,
    horizon_bars: float,
    tickers: tuple[str, str],
    model: RiskModel | None = None,
) -> Surface:
    """VaR of the book with the two positions set to every pair of share counts (the other positions stay as
    they are), on dollar exposures: by ``model`` (a :class:`logic.var_methods.RiskModel` at the horizon: the
    portfolio's method) when given, else parametric normal (:func:`math_logic.get_portfolio_var` with
    ``portfolio_value=1``) on ``cov`` over ``horizon_bars``."""
    if index_a == index_b:
        raise ValueError("pick two different tickers")

    def var_of(book: Float64Array) -> float:
        if model is not None:
            return model.var(book, confidence)
        return math_logic.get_portfolio_var(book, cov, 1.0, confidence, horizon_bars, validate=False)[0]

    x = np.array(exposures, dtype=float)
    out = np.empty((len(qty_b), len(qty_a)))
    for j, qb in enumerate(qty_b):
        x[index_b] = qb * prices[index_b]
        for i, qa in enumerate(qty_a):
            x[index_a] = qa * prices[index_a]
            out[j, i] = var_of(x)
    current_var = var_of(np.asarray(exposures, dtype=float))
    current = (float(exposures[index_a] / prices[index_a]), float(exposures[index_b] / prices[index_b]))
    return Surface(tickers, np.asarray(qty_a), np.asarray(qty_b), out, current, float(current_var))
