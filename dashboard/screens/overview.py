"""Overview: traffic lights per risk area, trading state, equity and P&L, VaR/CVaR gauges (a limit line and its
use only on the figure the gate measures against that limit), the drawdown chart with the circuit-breaker
levels, and the equity curve from the monitor's history."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from dashboard import components as ui
from engine.records import Severity
from logic import views
from logic.views.overview import DRAWDOWN_COLUMNS, drawdown_axis

LIGHTS_KEY = "ov_lights"

st.title("Overview")


def summary(d: views.Desk, pid: str) -> None:
    if not ui.health_gate(d):
        return
    ov = views.overview_view(d, pid)
    if ov.snapshot is None:
        st.info(
            "No risk snapshot from the monitor yet: drawdown, daily P&L and the equity curve appear once it "
            "runs. Fix: start it with `make run` (or `python -m logic.monitor`).",
            icon=":material/info:",
        )
    elif ov.stale:
        st.warning(
            f"The latest snapshot is {ov.snapshot_age:.0f} s old: the figures below are not live. Fix: "
            "check the monitor on the System page.",
            icon=":material/schedule:",
        )
    if ov.missing:
        st.warning(
            f"No usable price for {ui.md(', '.join(ov.missing))}: counted as 0, so the equity, the P&L and the VaR "
            "below leave it out (understated); no daily P&L, drawdown or margin level until it is priced; the gate "
            "refuses trades until it is priced.",
            icon=":material/warning:",
        )
    if ov.limit_note:
        st.info(ov.limit_note, icon=":material/tune:")

    # On screen: lights, trading state and headline figures, then the gauges, each under its figure. Sent to the
    # browser in another order: the gauges first, so that a first load fetches the charting script (the largest
    # one, needed for the first chart) before the metrics' scripts and draws the first chart sooner.
    lights, headline = st.container(key=LIGHTS_KEY), st.container()  # the benchmark waits for the lights' box
    figures = []
    for col, g in zip(st.columns(len(ov.gauges)), ov.gauges, strict=True):
        with col:
            figures.append(st.container())  # a box, not st.empty(): its metric is sent after the gauge
            ui.gauge(g.title, g.value, g.limit, key=f"gauge_{g.title}")
    st.caption(ov.var_caption)

    with lights:
        for col, light in zip(st.columns(len(ov.lights)), ov.lights, strict=True):
            with col:
                ui.traffic_light(light.area, light.level, light.detail)

    h = ov.headline
    incomplete = " — incomplete" if ov.incomplete else ""  # an unpriced holding counted as 0 (warning above)
    with headline:
        ui.state_badge(ov.trading.state, ov.trading.reason, ov.trading.actor, ov.trading.ts)
        # widths for the longest figures (equity "USD 12,345,678", P&L "USD -123,456") at st.metric's size: a
        # value cut to "USD 1,6…" is a figure the desk cannot read
        cols = st.columns([1.5, 1.25, 1.25, 0.75])
        cols[0].metric(f"Equity{incomplete}", ui.money(h.get("equity")))
        cols[1].metric("Daily P&L", ui.money(h.get("daily_pnl"), signed=True))
        cols[2].metric(f"Total P&L{incomplete}", ui.money(h.get("total_pnl"), signed=True))
        cols[3].metric(f"Leverage{incomplete}", "-" if h.get("leverage") is None else f"{h['leverage']:.2f}x")
    understated = " — understated" if ov.incomplete else ""
    for figure, g in zip(figures, ov.gauges, strict=True):
        figure.metric(
            f"{g.title}{understated}",
            ui.money(g.value),
            None if g.of_limit is None else f"{g.of_limit:.0%} of limit",
            delta_color="off",
            delta_arrow="off",
        )

    if ov.snapshot is not None:
        history(d, pid, ov.breakers)


def history(d: views.Desk, pid: str, breakers: list[dict]) -> None:
    window = st.segmented_control(
        "History window", list(views.HISTORY_WINDOWS), key="ov_window", default="5 min"
    )
    df = views.history_frame(d, pid, views.HISTORY_WINDOWS[window or "5 min"])
    if df.empty or "equity" not in df:
        st.caption("No history points in this window yet.")
        return
    left, right = st.columns(2)
    drawdowns = DRAWDOWN_COLUMNS

    band = ("equity_low", "equity_high")

    def equity() -> go.Figure:
        fig = go.Figure()
        if all(c in df for c in band) and (df["equity_low"] != df["equity_high"]).any():
            # a downsampled window: each bucket's lowest and highest equity around its last (engine/store/history.py)
            fig.add_trace(go.Scatter(x=df["time"], y=df["equity_high"], mode="lines", line_width=0, showlegend=False,
                                     hoverinfo="skip"))  # fmt: skip
            fig.add_trace(go.Scatter(x=df["time"], y=df["equity_low"], mode="lines", line_width=0, fill="tonexty",
                                     name="low-high in bucket"))  # fmt: skip
        fig.add_trace(go.Scatter(x=df["time"], y=df["equity"], mode="lines", name="equity"))
        fig.update_layout(title="Equity", height=300, margin={"t": 40, "b": 10})
        return fig

    def drawdown() -> go.Figure:
        fig = go.Figure()
        for col, name in zip(drawdowns, ("daily", "weekly", "max"), strict=True):
            if col in df:
                fig.add_trace(go.Scatter(x=df["time"], y=df[col], mode="lines", name=name))
        for b in breakers:
            fig.add_hline(
                y=b["level"],
                line_dash="dash",
                line_color="red" if b["severity"] == Severity.CRITICAL else "orange",
                annotation_text=b["label"],
                annotation_position="bottom left",
            )
        # every series drawn and every breaker on the chart (a weekly -18% on a day at -0.5% too)
        fig.update_yaxes(tickformat=".1%", range=list(drawdown_axis(df, [b["level"] for b in breakers])))
        fig.update_layout(title="Drawdown and circuit breakers", height=300, margin={"t": 40, "b": 10})
        return fig

    # built once per history (every session on the same tick draws the same curves)
    with left:
        shown = ("ts", "equity", *(c for c in band if c in df))
        ui.chart(ui.cached_figure(("ov_equity", *ui.frame_key(df, shown)), equity), key="equity_curve")
    with right:
        key = ("ov_drawdown", repr(breakers), *ui.frame_key(df, ("ts", *drawdowns)))
        ui.chart(ui.cached_figure(key, drawdown), key="drawdown_chart")


with ui.guard():
    desk = ui.desk()
    pid = ui.selected_portfolio(desk)
    if pid is not None:
        ui.live(summary, desk, pid)
