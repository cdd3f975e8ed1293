"""Overview page (being built)."""

import streamlit as st

from dashboard import components as ui

st.title("Overview")
with ui.guard():
    ui.health_gate(ui.desk())
