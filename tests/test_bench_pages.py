"""The two trivial pages of the first-load benchmark (dashboard/bench_pages.py): served only when asked for, and
as trivial as the benchmark says (four metrics; one heatmap)."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import bench_pages


def test_the_bench_pages_are_served_only_when_the_variable_is_exactly_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(bench_pages.BENCH_PAGES_ENV, raising=False)
    assert not bench_pages.enabled()
    for value, expected in (("0", False), ("true", False), ("1", True)):
        monkeypatch.setenv(bench_pages.BENCH_PAGES_ENV, value)
        assert bench_pages.enabled() is expected


def test_the_metrics_page_shows_four_metrics_and_no_chart() -> None:
    at = AppTest.from_string("from dashboard.bench_pages import bench_metrics\nbench_metrics()").run()
    assert not at.exception
    assert [m.label for m in at.metric] == ["Equity", "Daily P&L", "Total P&L", "Leverage"]
    assert not at.get("plotly_chart")


def test_the_heatmap_page_shows_one_heatmap_of_its_size() -> None:
    at = AppTest.from_string("from dashboard.bench_pages import bench_heatmap\nbench_heatmap()").run()
    assert not at.exception
    (chart,) = at.get("plotly_chart")
    trace = json.loads(chart.proto.spec)["data"][0]
    n = bench_pages.HEATMAP_SIZE
    assert trace["type"] == "heatmap" and len(trace["z"]) == n and all(len(row) == n for row in trace["z"])
    assert not at.metric
