"""Risk page (being built)."""

import streamlit as st

from dashboard import components as ui

st.title("Risk")
with ui.guard():
    ui.health_gate(ui.desk())
