"""Performance: Sharpe, Sortino, Calmar and Kelly of the portfolio's equity history, the HHI concentration band,
the liquidity-adjusted VaR, the VaR trend against the limit and the Monte Carlo fan of the portfolio's value."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from dashboard import components as ui
from logic import views

st.title("Performance")

BAND_COLOURS = {"Low": "green", "Moderate": "orange", "High": "red"}
# Percentile pairs drawn as shaded bands of the fan chart, with their opacity.
FAN_FILLS = ((1.0, 99.0, 0.12), (5.0, 95.0, 0.22), (25.0, 75.0, 0.35))


def ratios(pv: views.PerformanceView) -> None:
    s = pv.stats
    st.subheader("Risk-adjusted returns")
    annualised = pv.annualisation
    if annualised is not None:
        st.caption(
            f"{s.observations:,} returns from {ui.when(s.start_ts)} to {ui.when(s.end_ts)} {annualised}. "
            "Time-weighted: a capital flow booked by a book sync is neither a return nor a drawdown; fees are "
            "losses. Risk-free rate and Sortino target 0."
        )
    else:
        st.info(f"Ratios n/a: {ui.md(s.reason)}.", icon=":material/info:")
    c = st.columns(4)
    for col, (label, ratio, fmt) in zip(
        c,
        (("Sharpe", s.sharpe, ".2f"), ("Sortino", s.sortino, ".2f"), ("Calmar", s.calmar, ".2f"),
         ("Kelly fraction", s.kelly, ".2f")),
        strict=True,
    ):  # fmt: skip
        col.metric(label, ratio.text(fmt), help=ratio.reason)
    c = st.columns(4)
    c[0].metric("Annualised return", ui.pct(s.annual_return.value), help=s.annual_return.reason)
    c[1].metric("Annualised volatility", ui.pct(s.annual_volatility.value), help=s.annual_volatility.reason)
    c[2].metric("Max drawdown (window)", ui.pct(s.max_drawdown.value), help=s.max_drawdown.reason)
    c[3].metric("Returns (observations)", f"{s.observations:,}")


def concentration_and_liquidity(pv: views.PerformanceView) -> None:
    left, right = st.columns(2)
    with left:
        st.subheader("Concentration")
        hc = pv.concentration
        colour = BAND_COLOURS.get(hc.band, "gray")
        c = st.columns(2)
        c[0].metric("HHI", f"{hc.hhi:.3f}")
        with c[1]:
            st.markdown(f"Band\n\n:{colour}-background[**{hc.band}**]")
        st.caption(
            "Low below 0.15, Moderate 0.15 to 0.25, High above 0.25 (US DOJ/FTC 1,500 / 2,500 on a 10,000 "
            f"scale). Largest position {ui.pct(hc.largest_share)} of gross exposure; as concentrated as "
            f"{ui.number(hc.equivalent_positions)} equal positions."
        )
    with right:
        st.subheader("Liquidity-adjusted VaR")
        lq = pv.liquidity
        if lq is None:
            st.info(f"LVaR n/a: {ui.md(pv.liquidity_reason)}.", icon=":material/info:")
            return
        m = st.columns(2)  # two to a row in half the page: a money figure with its currency must not be cut
        for i, confidence in enumerate(sorted(lq.var)):
            m[i].metric(
                f"LVaR {confidence:.0%} (1 day)",
                ui.money(lq.lvar(confidence)),
                f"VaR {ui.money(lq.var[confidence])}",
                delta_color="off",
                delta_arrow="off",
            )
        st.columns(2)[0].metric(
            "Liquidation cost", ui.money(lq.cost), help="half spread + square-root impact, all positions"
        )
        ui.table(pv.liquidity_frame, "liquidation", f"liquidation_{pv.portfolio_id}.csv", empty="No positions.")


def var_trend(pv: views.PerformanceView) -> None:
    st.subheader("VaR trend")
    df = pv.var_trend
    if df.empty:
        st.caption("No history in this window yet: the monitor writes one point per tick.")
        return
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=df["time"], y=df["var95"], mode="lines", name="VaR 95% (1 day)"))
    fig.add_trace(go.Scatter(x=df["time"], y=df["var99"], mode="lines", name="VaR 99% (1 day)"))
    fig.add_trace(
        go.Scatter(
            x=df["time"],
            y=df["limit"],
            mode="lines",
            name=f"limit ({pv.var_confidence:.0%})",
            line={"color": "red", "dash": "dash"},
        )
    )
    fig.update_layout(title="VaR against the limit", height=340, margin={"t": 40, "b": 10}, yaxis_title=ui.currency())
    ui.chart(fig, key="var_trend")


def fan(pv: views.PerformanceView) -> None:
    st.subheader("Monte Carlo paths of the portfolio value")
    fc = pv.fan
    if fc is None:
        st.info(f"Fan chart n/a: {ui.md(pv.fan_reason)}.", icon=":material/info:")
        return
    fig = go.Figure()
    for low, high, opacity in FAN_FILLS:
        fig.add_trace(
            go.Scatter(x=fc.days, y=fc.bands[low], mode="lines", line={"width": 0}, showlegend=False, name=f"p{low:g}")
        )
        fig.add_trace(
            go.Scatter(
                x=fc.days,
                y=fc.bands[high],
                mode="lines",
                line={"width": 0},
                fill="tonexty",
                fillcolor=f"rgba(31, 119, 180, {opacity})",
                name=f"{low:g}-{high:g}%",
            )
        )
    fig.add_trace(go.Scatter(x=fc.days, y=fc.median, mode="lines", name="median", line={"color": "#1f77b4"}))
    fig.update_layout(
        title=f"Value over {fc.horizon_days:g} day(s): {fc.n_paths:,} paths, seed {fc.seed}",
        height=380,
        margin={"t": 40, "b": 10},
        xaxis_title="trading days",
        yaxis_title=f"portfolio value ({ui.currency()})",
    )
    ui.chart(fig, key="mc_fan")
    c = st.columns(2)
    c[0].metric("Value now", ui.money(fc.start_value))
    c[1].metric(f"Monte Carlo VaR {pv.var_confidence:.0%} (limit horizon)", ui.money(pv.mc_var))
    st.caption("Correlated normal log returns from the EWMA covariance, zero drift, every position revalued.")


def render(d: views.Desk, pid: str, window: str) -> None:
    if not ui.health_gate(d):
        return
    pv = views.performance_view(d, pid, views.PERFORMANCE_WINDOWS[window])
    ratios(pv)
    concentration_and_liquidity(pv)
    var_trend(pv)
    fan(pv)


with ui.guard():
    desk = ui.desk()
    pid = ui.selected_portfolio(desk, healthy=True)
    if pid is not None:
        windows = list(views.PERFORMANCE_WINDOWS)
        window = st.segmented_control("Window", windows, default=views.PERFORMANCE_DEFAULT_WINDOW, key="pf_window")
        ui.live(render, desk, pid, window or views.PERFORMANCE_DEFAULT_WINDOW)
