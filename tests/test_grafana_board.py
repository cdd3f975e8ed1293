"""docs/grafana-riskdesk.json against engine/metrics.py: every exported series on a panel, every panel on an exported
series, and a board Grafana imports (unique ids, a grid position, the Prometheus data source variable).

The exported series are read from the metrics classes themselves (each one built on a fresh registry, the way the
daemons do), so a series added to engine/metrics.py without a panel fails here, and so does a panel left plotting
a series that was renamed or removed.
"""

from __future__ import annotations

import inspect
import json
import re
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import engine.metrics as metrics_module
from engine.settings import Limits
from engine.settings_ops import MonitorConfig

BOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-riskdesk.json"
GRID_COLUMNS = 24
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
"""How a family of each type is named in PromQL: a counter as ``_total``, a histogram by its ``_bucket`` (or
``_sum`` / ``_count``), a gauge as itself."""
PANEL_TYPES = {"timeseries", "stat", "gauge", "bargauge", "table", "state-timeline", "text", "row"}
METRIC = re.compile(r"\briskdesk_[a-z0-9_]+")


def metrics_classes() -> list[type]:
    """The classes of engine/metrics.py that build metrics on a registry they are given."""
    return [
        cls
        for _, cls in inspect.getmembers(metrics_module, inspect.isclass)
        if cls.__module__ == metrics_module.__name__ and "registry" in inspect.signature(cls).parameters
    ]


def exported() -> dict[str, str]:
    """Family name -> type of every series engine/metrics.py exports (riskdesk_alerts included: the monitor
    serves it once it watches the alerts)."""
    families: dict[str, str] = {}
    for cls in metrics_classes():
        instance = cls(registry=CollectorRegistry())
        if isinstance(instance, metrics_module.MonitorMetrics):
            instance.watch_alerts(lambda: [])
        for family in instance.registry.collect():
            assert families.get(family.name, family.type) == family.type, family.name
            families[family.name] = family.type
    return families


def sample_names(families: dict[str, str]) -> dict[str, str]:
    """PromQL name -> its family, for every name a panel may query."""
    return {name + suffix: name for name, kind in families.items() for suffix in SAMPLE_SUFFIXES[kind]}


def board() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(BOARD.read_text(encoding="utf-8"))
    return loaded


def panels() -> list[dict[str, Any]]:
    return [p for p in board()["panels"] if p["type"] != "row"]


def expressions(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel.get("targets", [])]


def panel_named(metric: str) -> dict[str, Any]:
    (panel,) = [p for p in panels() if any(metric in set(METRIC.findall(e)) for e in expressions(p))]
    return panel


def red_from(panel: dict[str, Any]) -> float:
    """The value from which a panel's thresholds turn red."""
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[0]["value"] is None, "the base step has no value"
    values = [s["value"] for s in steps[1:]]
    assert values == sorted(values), steps
    (red,) = [s["value"] for s in steps if s["color"] == "red" and s["value"] is not None]
    return float(red)


def test_the_exported_series_are_read_from_every_metrics_class() -> None:
    names = {cls.__name__ for cls in metrics_classes()}
    assert {"StreamMetrics", "GateMetrics", "NotificationMetrics", "BacktestMetrics", "MonitorMetrics"} <= names
    families = exported()
    assert len(families) >= 31
    assert families["riskdesk_alerts"] == "gauge"
    assert families["riskdesk_monitor_ticks_coalesced"] == "counter"
    assert families["riskdesk_monitor_snapshot_duration_seconds"] == "histogram"


def test_every_exported_series_is_plotted_by_at_least_one_panel() -> None:
    queried = {name for p in panels() for expr in expressions(p) for name in METRIC.findall(expr)}
    names = sample_names(exported())
    plotted = {names[q] for q in queried if q in names}
    assert sorted(set(exported()) - plotted) == []


def test_every_panel_queries_only_exported_series() -> None:
    names = sample_names(exported())
    for panel in panels():
        exprs = expressions(panel)
        assert exprs, f"panel {panel['id']} {panel['title']!r} has no query"
        for expr in exprs:
            queried = set(METRIC.findall(expr))
            assert queried, f"panel {panel['id']}: {expr!r} names no riskdesk series"
            assert queried <= set(names), f"panel {panel['id']}: {sorted(queried - set(names))} not exported"


def test_the_board_is_a_grafana_dashboard_with_unique_ids_and_the_prometheus_variable() -> None:
    loaded = board()
    assert loaded["title"] and loaded["uid"] and isinstance(loaded["schemaVersion"], int)
    variables = {v["name"]: v for v in loaded["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    assert variables["portfolio"]["datasource"] == DATASOURCE
    ids = [p["id"] for p in loaded["panels"]]
    assert all(isinstance(i, int) and i > 0 for i in ids)
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    for panel in loaded["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["type"]
        assert panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["id"]
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["id"]
        assert all(t["datasource"] == DATASOURCE for t in panel.get("targets", [])), panel["id"]
        assert isinstance(panel["fieldConfig"]["defaults"], dict) and isinstance(panel["options"], dict)


def test_every_panel_has_a_grid_position_inside_the_24_columns_and_none_overlap() -> None:
    boxes = []
    for panel in board()["panels"]:
        grid = panel["gridPos"]
        x, y, w, h = (grid[k] for k in "xywh")
        assert all(isinstance(v, int) for v in (x, y, w, h)), panel["id"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0, panel["id"]
        assert x + w <= GRID_COLUMNS, panel["id"]
        boxes.append((panel["id"], x, y, w, h))
    for (a, ax, ay, aw, ah), (b, bx, by, bw, bh) in combinations(boxes, 2):
        apart = ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay
        assert apart, f"panels {a} and {b} overlap"


def test_a_portfolio_panel_filters_on_the_portfolio_variable() -> None:
    for panel in panels():
        for expr in expressions(panel):
            if "riskdesk_portfolio_" in expr:
                assert 'portfolio=~"$portfolio"' in expr, (panel["id"], expr)


@pytest.mark.parametrize(
    "metric", ["riskdesk_portfolio_var_utilisation_ratio", "riskdesk_portfolio_stressed_var_utilisation_ratio"]
)
def test_a_utilisation_panel_is_a_percentage_that_turns_red_exactly_at_the_limit(metric: str) -> None:
    panel = panel_named(metric)
    assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert red_from(panel) == 1.0  # utilisation 1.0 = the limit itself


def test_the_age_panels_turn_red_at_the_default_staleness_settings() -> None:
    snapshot_age = panel_named("riskdesk_portfolio_snapshot_timestamp_seconds")
    market_age = panel_named("riskdesk_portfolio_market_timestamp_seconds")
    for panel, limit in (
        (snapshot_age, MonitorConfig().stale_snapshot_seconds),
        (market_age, Limits().stale_price_seconds),
    ):
        assert panel["fieldConfig"]["defaults"]["unit"] == "s"
        assert all(e.startswith("time() - ") for e in expressions(panel)), "an age, not a raw timestamp"
        assert red_from(panel) == float(limit)


def test_an_incomplete_valuation_shows_red_and_held_e_mails_show_red_from_the_first() -> None:
    complete = panel_named("riskdesk_portfolio_valuation_complete")
    assert complete["fieldConfig"]["defaults"]["thresholds"]["steps"] == [
        {"color": "red", "value": None},
        {"color": "green", "value": 1},
    ]
    (mapping,) = complete["fieldConfig"]["defaults"]["mappings"]
    assert mapping["options"]["0"] == {"text": "INCOMPLETE", "color": "red"}
    held = [p for p in panels() if any('status="held"' in e for e in expressions(p))]
    assert len(held) == 1 and 'channel="email"' in expressions(held[0])[0]
    assert red_from(held[0]) == 1.0
