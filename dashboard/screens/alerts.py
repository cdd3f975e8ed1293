"""Alerts page (being built)."""

import streamlit as st

from dashboard import components as ui

st.title("Alerts")
with ui.guard():
    ui.health_gate(ui.desk())
