"""Riskdesk dashboard: ``streamlit run dashboard/app.py`` (``make run`` starts it for you).

The entry point and router: page config, the sidebar shared by every page (portfolio, live refresh) and
``st.navigation`` over the pages beside this file. The page runs before the sidebar's widgets are drawn (their
values are settled first, :func:`dashboard.components.sidebar_state`): what the page shows first, its first chart
included, reaches the browser before the widgets do. Settings and the Redis URL come from the environment
(``RISKDESK_CONFIG``, ``REDIS_URL``; see :meth:`logic.views.Desk.from_env`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# `streamlit run` puts dashboard/ on sys.path; the packages live one level up (also when not pip-installed).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from dashboard import bench_pages  # noqa: E402
from dashboard import components as ui  # noqa: E402

st.set_page_config(page_title="Riskdesk", page_icon=":material/monitoring:", layout="wide")

PAGES = [
    st.Page("screens/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("screens/trade.py", title="Trade", icon=":material/swap_horiz:"),
    st.Page("screens/risk.py", title="Risk", icon=":material/analytics:"),
    st.Page("screens/performance.py", title="Performance", icon=":material/query_stats:"),
    st.Page("screens/alerts.py", title="Alerts", icon=":material/notifications:"),
    st.Page("screens/system.py", title="System", icon=":material/settings:"),
    st.Page("screens/firm.py", title="Firm", icon=":material/account_balance:"),
    st.Page("screens/limits.py", title="Limits", icon=":material/tune:"),
    st.Page("screens/audit.py", title="Audit", icon=":material/history:"),
]

ui.host_guard(ui.desk_or_none())  # DNS rebinding: a foreign Host header gets nothing, before any widget exists
who = ui.require_login()  # login configured: sign in first; otherwise the local operator
BENCH = bench_pages.pages() if bench_pages.enabled() else []  # benchmarks/bench_dashboard.py only
page = st.navigation(PAGES + BENCH)
if any(page.url_path == b.url_path for b in BENCH):  # a trivial benchmark page: nothing of the dashboard's
    page.run()
    st.stop()
ids: list[str] | None = None
with ui.guard():  # a desk or store that cannot be used: the message says why, the page says the rest
    ids = ui.sidebar_state(ui.desk())  # the portfolio and refresh the page reads
page.run()  # before the sidebar's widgets, so the page's first chart reaches the browser first
if ids is not None:
    with ui.guard():
        ui.sidebar(ui.desk(), ids)
ui.identity_sidebar(who)
