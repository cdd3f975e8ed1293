"""Two trivial pages the first-load benchmark measures the dashboard against (``benchmarks/bench_dashboard.py``).

:mod:`dashboard.app` adds them to the navigation only when ``RISKDESK_BENCH_PAGES=1``, so they are served by the
same Streamlit process, version and warm interpreter as the real pages, and skip everything of the dashboard's
own (sidebar, desk, Redis): what they cost is Streamlit's and the browser's share of a first load.
"""

from __future__ import annotations

import os

import streamlit as st

BENCH_PAGES_ENV = "RISKDESK_BENCH_PAGES"
"""Set to ``1`` to serve the benchmark pages (never set by ``make run``)."""
HEATMAP_SIZE = 12


def enabled() -> bool:
    return os.environ.get(BENCH_PAGES_ENV) == "1"


def bench_metrics() -> None:
    """A title and four ``st.metric``s with fixed values."""
    st.title("Bench metrics")
    for col, (label, value) in zip(
        st.columns(4),
        (("Equity", "2,004,310"), ("Daily P&L", "+4,310"), ("Total P&L", "+4,310"), ("Leverage", "0.42x")),
        strict=True,
    ):
        col.metric(label, value)


def bench_heatmap() -> None:
    """A title and one Plotly heatmap (a fixed 12 x 12 matrix)."""
    import plotly.graph_objects as go

    n = HEATMAP_SIZE
    z = [[1.0 if i == j else round(0.35 + 0.01 * ((i * 7 + j * 3) % 20), 2) for j in range(n)] for i in range(n)]
    labels = [f"T{i:02d}" for i in range(n)]
    st.title("Bench heatmap")
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, zmin=-1, zmax=1, colorscale="RdBu_r"))
    fig.update_layout(height=400, margin={"t": 40, "b": 10})
    st.plotly_chart(fig, key="bench_heatmap")


def pages() -> list[st.Page]:
    """The two pages, for ``st.navigation`` (URL paths ``bench_metrics`` and ``bench_heatmap``)."""
    return [
        st.Page(bench_metrics, title="Bench metrics", url_path="bench_metrics"),
        st.Page(bench_heatmap, title="Bench heatmap", url_path="bench_heatmap"),
    ]
