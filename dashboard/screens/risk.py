"""Risk: correlation and exposure, component VaR, stress tests, a what-if basket, the VaR surface over two
positions, and the backtest runner's continuous VaR backtest with every method side by side. Every VaR figure
names its method (the portfolio's ``var_method``). Only the open tab runs."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import components as ui
from logic import views
from logic.views import fmt

TABS = ("Exposure & VaR", "Stress", "What-if", "Surface", "Backtest")

st.title("Risk")


def exposure(d: views.Desk, pid: str) -> None:
    if not ui.health_gate(d):
        return
    ev = views.exposure_view(d, pid)
    if ev.missing:
        st.warning(
            f"No usable price for {ui.md(', '.join(ev.missing))}: counted as 0, so the VaR below leaves it out "
            "(understated); the gate refuses trades until it is priced.",
            icon=":material/warning:",
        )
    c = st.columns(3)
    c[0].metric(ev.var_label, ui.money(ev.var))
    c[1].metric("VaR limit", ui.money(ev.var_limit))
    c[2].metric("Utilization", ui.pct(ev.utilization))
    st.caption(views.method_caption(d, pid))
    left, right = st.columns(2)
    with left:
        df = ev.exposures
        if df.empty:
            st.caption("No open positions.")
        else:
            fig = go.Figure(
                go.Treemap(
                    labels=[str(t) for t in df["ticker"]],
                    parents=["" for _ in df["ticker"]],
                    values=df["market_value"].abs(),
                    marker={
                        "colors": df["weight"],
                        "colorscale": "RdBu",
                        "cmid": 0.0,
                        "colorbar": {"title": "weight", "tickformat": ".0%"},
                    },
                    texttemplate="%{label}<br>" + ui.currency() + " %{value:,.0f}",
                )
            )
            fig.update_layout(
                title="Exposure by ticker (size: |value|, colour: weight)",
                height=380,
                margin={"t": 40, "b": 10, "l": 10, "r": 10},
            )
            ui.chart(fig, key="exposure_treemap")
            ui.bars(
                df["ticker"].astype(str).tolist(),
                df["component_var"].tolist(),
                "Component VaR (sums to the VaR)",
                key="component_var",
                x_title=ui.currency(),
            )
    with right:
        n = len(ev.correlation)
        ui.heatmap(
            ev.correlation,
            "Correlation of one-bar returns",
            key="correlation",
            zmin=-1.0,
            zmax=1.0,
            fmt=".2f" if n <= 15 else "",
        )
    ui.table(ev.exposures, "exposures", f"exposures_{pid}.csv")


def stress(d: views.Desk, pid: str) -> None:
    if not ui.health_gate(d):
        return
    sv = views.stress_view(d, pid)
    span = views.horizon_text(sv.horizon_days)  # every figure here is over the limit's horizon
    c = st.columns(4)
    c[0].metric(f"VaR {sv.confidence:.0%} ({span})", ui.money(sv.var))
    c[1].metric(
        f"Stressed VaR {sv.confidence:.0%} ({span})",
        ui.money(sv.stressed_var),
        delta_color="off",
        delta_arrow="off",
        delta=None if sv.multiple is None else f"x{sv.multiple:.1f}",
    )
    c[2].metric(f"Stressed VaR 99% ({span})", ui.money(sv.stressed_var99))
    c[3].metric(
        "Stressed VaR limit",
        ui.money(sv.stressed_var_limit),
        delta=None if sv.of_limit is None else f"{sv.of_limit:.0%} used",
        delta_color="off",
        delta_arrow="off",
        help="limits.stressed_var_limit: what the gate compares post-trade stressed VaR with"
        + (
            " (none set for this portfolio: the gate does not check stressed VaR)"
            if sv.stressed_var_limit is None
            else ""
        ),
    )
    st.caption(
        f"{views.method_caption(d, pid)}; stressed VaR: normal, the worse of the stressed (crisis) matrix and of "
        "today's correlations with the volatilities stressed"
    )
    with st.expander("What the stressed figure is computed from", expanded=False):
        for line in sv.provenance():
            st.markdown(ui.md(line))
    if sv.scenarios.empty:
        st.caption("No stress scenarios in the settings ([stress_scenarios] in riskdesk.toml).")
        return
    ui.bars(
        sv.scenarios["name"].astype(str).tolist(),
        (-sv.scenarios["pnl"]).tolist(),
        "Scenario loss (positive = loss)",
        key="scenarios",
        x_title=ui.currency(),
    )
    ui.table(
        sv.scenarios,
        "scenarios",
        f"stress_{pid}.csv",
    )


def what_if(d: views.Desk, pid: str) -> None:
    st.caption(
        "A basket of trades checked in order, each on the book the approved ones before it leave. Nothing is traded."
    )
    tickers = views.ticket_tickers(d)
    sides = list(views.SIDES)
    if views.long_only(d, pid):
        st.caption("A cash account cannot sell short: a SELL only reduces a long position.")
    with st.form("what_if_form"):
        basket = st.data_editor(
            pd.DataFrame({"ticker": [tickers[0]], "side": [views.SIDES[0]], "qty": [100]}),
            key="wi_basket",
            num_rows="dynamic",
            hide_index=True,
            column_config={
                "ticker": st.column_config.SelectboxColumn(
                    "ticker", options=tickers, required=True, width=fmt.column_width(max(map(len, tickers)) + 2)
                ),
                "side": st.column_config.SelectboxColumn(
                    "side", options=sides, required=True, width=fmt.column_width(max(map(len, sides)) + 2)
                ),
                "qty": st.column_config.NumberColumn("qty", step=1, format="%,d", width=fmt.column_width(12)),
            },
        )
        run = st.form_submit_button("Run what-if", icon=":material/science:")
    if not run:
        return
    wv = views.what_if_view(d, pid, views.basket_from_rows(basket.to_dict("records")))
    c = st.columns(4)
    c[0].metric("Basket", wv.status)
    c[1].metric("VaR before", ui.money(wv.var_before))
    c[2].metric(
        "VaR after",
        ui.money(wv.var_after),
        None if wv.var_after is None or wv.var_before is None else ui.money(wv.var_after - wv.var_before, signed=True),
        delta_color="inverse",
    )
    c[3].metric("Cash after", ui.money(wv.cash_after))
    ui.table(wv.decisions, "what_if", "what_if.csv")
    if wv.stress is not None:
        st.caption(f"After the approved trades: stressed VaR {ui.money(wv.stress.stressed_var)}")
        ui.table(wv.stress.scenarios, "what_if_stress", "what_if_stress.csv")


def surface(d: views.Desk, pid: str) -> None:
    tickers = views.ticket_tickers(d)
    held = views.positions_view(d, pid).positions["ticker"].astype(str).tolist()
    first = held[0] if held else tickers[0]
    second = held[1] if len(held) > 1 else next(t for t in tickers if t != first)
    c1, c2 = st.columns(2)
    a = c1.selectbox("First position", tickers, index=tickers.index(first), key="sf_a")
    b = c2.selectbox("Second position", tickers, index=tickers.index(second), key="sf_b")
    if a == b:
        st.warning("Pick two different tickers.")
        return
    s = views.surface_view(d, pid, a, b)
    if views.long_only(d, pid):
        st.caption("A cash account: the grid stops at zero shares (no short positions).")
    fig = go.Figure(
        go.Contour(
            x=s.qty_a,
            y=s.qty_b,
            z=s.var,
            colorscale="Viridis",
            contours={"showlabels": True},
            colorbar={"title": f"VaR ({ui.currency()})", "tickformat": "~s"},
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[s.current[0]],
            y=[s.current[1]],
            mode="markers+text",
            text=["now"],
            textposition="top center",
            marker={"color": "red", "size": 10},
            name="current",
        )
    )
    fig.update_layout(
        title=f"VaR over position sizes (current VaR {ui.money(s.current_var)})",
        height=480,
        xaxis_title=f"{a} shares",
        yaxis_title=f"{b} shares",
        margin={"t": 40},
    )
    ui.chart(fig, key="surface")
    st.caption(views.method_caption(d, pid))
    qa, qb, low = s.lowest
    st.caption(
        f"Lowest VaR on this grid: {ui.money(low)} at {qa:,.0f} shares of {ui.md(a)} and {qb:,.0f} of {ui.md(b)} "
        "(other positions unchanged)."
    )


def backtest(d: views.Desk, pid: str) -> None:
    if not ui.health_gate(d):
        return
    bt = views.backtest_view(d, pid)
    if bt is None or not bt.ready:
        fed = 0 if bt is None else bt.bars
        st.info(
            f"The backtest runner's VaR backtest is in its burn-in ({fed:,} bars fed): forecasts start once the "
            "EWMA is seeded and the window of standardized returns is full (model.fhs_window). Fix: keep the "
            "stream daemon and the backtest runner running (`make run` starts both).",
            icon=":material/info:",
        )
        if bt is None:
            return
    bar = views.feed_bar_name(d)  # the horizons count the feed's bars (a replay's daily rows: one day each)
    plural = "" if bt.horizon_bars == 1 else "s"
    labels = {"limit": f"limit horizon ({bt.horizon_bars:,} {bar} bar{plural})", "bar": f"one {bar} bar"}
    track = st.segmented_control(
        "Horizon", list(views.BACKTEST_TRACKS), default=views.BACKTEST_TRACKS[0], key="bt_track",
        format_func=lambda t: labels.get(t, t),
    ) or views.BACKTEST_TRACKS[0]  # fmt: skip
    st.caption(
        f"{bt.confidence:.0%} VaR of every configured method on the same P&L (the positions held at each "
        f"forecast); {bt.bars:,} bars fed. An observation is a forecast of a book holding something: bars the "
        "portfolio was flat are not counted (flat_bars). Rolling: the last 250 observations (Basel zone). "
        f"This portfolio's figures use {views.method_caption(d, pid).removeprefix('VaR method: ')}."
    )
    ui.table(bt.tables.get(track, pd.DataFrame()), f"backtest_{track}", f"backtest_{pid}_{track}.csv", height=160)
    df = bt.series.get(track)
    if df is None or df.empty:
        st.caption("No closed horizon yet on this track.")
        return
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=df["end"], y=-df["pnl"], mode="lines", name="loss (-P&L)"))
    for m in bt.methods:
        fig.add_trace(go.Scatter(x=df["end"], y=df[f"var_{m}"], mode="lines", name=f"VaR {m}"))
        hits = df[df[f"hit_{m}"]]
        fig.add_trace(
            go.Scatter(x=hits["end"], y=-hits["pnl"], mode="markers", name=f"exceeds {m}", marker={"size": 8})
        )
    fig.update_layout(title="Loss against each method's forecast VaR", height=340, margin={"t": 40, "b": 10})
    ui.chart(fig, key="backtest")
    ui.table(df, "backtest_series", f"backtest_series_{pid}_{track}.csv", height=240)


RENDER = {
    "Exposure & VaR": exposure,
    "Stress": stress,
    "What-if": what_if,
    "Surface": surface,
    "Backtest": backtest,
}
LIVE = {"Exposure & VaR", "Stress", "Backtest"}

with ui.guard():
    desk = ui.desk()
    pid = ui.selected_portfolio(desk, healthy=True)
    if pid is not None:
        for name, tab in zip(TABS, st.tabs(TABS, key="risk_tab", on_change="rerun"), strict=True):
            if tab.open:
                with tab:
                    if name in LIVE:
                        ui.live(RENDER[name], desk, pid)
                    else:
                        with ui.guard():
                            RENDER[name](desk, pid)
