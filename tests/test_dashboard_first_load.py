"""What a fresh session's first run of the dashboard sends to the browser, in the order the browser gets it.

A first load is paced by the browser: the charting script (Plotly, about 4.7 MB) is fetched only when the first
chart element arrives, and every other kind of element (selectbox, metric, ...) makes the browser fetch and run
its own script too. So the Overview sends its gauges (its first chart) before the metrics and before the
sidebar's widgets, while the page keeps its order on screen (each element's ``delta_path``). And no Markdown may
contain what Streamlit's frontend reads as an emoji shortcode (a time's ``:20:``): that makes the browser fetch
and run the emoji plugin (about 265 kB) before it draws the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest, local_script_runner

from dashboard import components as ui
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings
from engine.store import Store
from logic import views
from logic.views import fmt

from .conftest import TEST_CONFIG
from .e2e_stack import toml_dumps

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
PAGES = ("overview", "trade", "risk", "performance", "alerts", "system", "firm", "limits", "audit")
TIMEOUT = 30.0
EMOJI_SHORTCODE = re.compile(r":(?!material/|streamlit:)[\w+-][\w_+-]*:")
"""The test Streamlit's frontend (StreamlitMarkdown, 1.67) applies to a Markdown body before it loads the
``remark-emoji`` plugin (copied here: the rule of the frontend, not of the dashboard)."""


@pytest.fixture
def desk_env(
    redis_server: EmbeddedRedis,
    seeded_store: Store,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Store]:
    """The seeded store with monitor snapshots, history, a fill, a limit change and an alert (times on every page)."""
    from logic.alerts import build_alert_engine
    from logic.monitor import Monitor
    from logic.risk_manager import RiskManager

    config = tmp_path / "riskdesk.toml"
    config.write_text(toml_dumps(TEST_CONFIG), encoding="utf-8")
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("RISKDESK_CONFIG", str(config))
    st.cache_resource.clear()
    st.cache_data.clear()
    main = RiskManager(seeded_store.client, portfolio_id="main", settings=settings)
    assert main.execute_trade("CCC", 40, "BUY", client_order_id="fl-1", actor="tester")["status"] == "FILLED"
    main.set_limits({"var_limit": 25_000}, "tester", "more room")
    main.set_trading_state("REDUCING", "desk review", "tester")
    engine = build_alert_engine(seeded_store, settings)
    engine.add_rule(
        {"id": "var_used", "metric": "var.utilization", "op": ">=", "threshold": 0.0, "severity": "HIGH"},
        "tester",
    )
    monitor = Monitor(seeded_store, settings, alert_engine=engine)
    for _ in range(3):
        monitor.refresh()
    yield seeded_store
    st.cache_resource.clear()


class Sent:
    """The ForwardMsgs of AppTest's last script run, in the order they were sent (AppTest's parser is wrapped)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.messages: list[Any] = []
        original = local_script_runner.parse_tree_from_messages

        def recording(messages: list[Any]) -> Any:
            self.messages = list(messages)
            return original(messages)

        monkeypatch.setattr(local_script_runner, "parse_tree_from_messages", recording)

    def elements(self) -> list[tuple[str, tuple[int, ...], Any]]:
        """(kind, delta path, element) of every new element, in the order sent."""
        out = []
        for msg in self.messages:
            if msg.HasField("delta") and msg.delta.WhichOneof("type") == "new_element":
                element = msg.delta.new_element
                out.append((element.WhichOneof("type"), tuple(msg.metadata.delta_path), element))
        return out


def first_run(page: str) -> AppTest:
    """A new session's first run of ``page`` (nothing chosen yet: the sidebar's defaults apply)."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state["refresh"] = "Paused"
    at.switch_page(f"screens/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_overview_sends_its_first_chart_before_any_metric_or_sidebar_widget_and_keeps_its_screen_order(
    desk_env: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = Sent(monkeypatch)
    at = first_run("overview")
    elements = sent.elements()
    kinds = [kind for kind, _, _ in elements]
    first_chart = kinds.index("plotly_chart")
    assert elements[first_chart][2].plotly_chart.spec.count('"indicator"') == 1  # a gauge
    assert first_chart < kinds.index("metric") and first_chart < kinds.index("selectbox")
    assert kinds.index("selectbox") > max(i for i, k in enumerate(kinds) if k == "plotly_chart")  # page, then widgets

    # on screen: the lights, the headline figures, then each gauge under its figure
    paths = {}
    for kind, path, element in elements:
        if kind == "metric":
            paths[element.metric.label] = path
        elif kind == "markdown" and "●" in element.markdown.body and "lights" not in paths:
            paths["lights"] = path
    gauges = [path for kind, path, _ in elements if kind == "plotly_chart"][:4]
    assert paths["lights"] < paths["Equity"] < paths["VaR 95% (1 day)"] < gauges[0]
    column = gauges[0][:-1]
    assert paths["VaR 95% (1 day)"][: len(column)] == column  # the figure and its gauge share a column
    # the sidebar still offers every portfolio and shows the first, which the page shows
    picker = at.selectbox(key=ui.PORTFOLIO_KEY)
    assert list(picker.options) == views.portfolio_ids(views.Desk.from_env()) and len(picker.options) == 2
    assert picker.value == picker.options[0] == at.session_state[ui.PORTFOLIO_KEY]


def test_the_sidebar_keeps_the_portfolio_a_user_chose_over_the_default(
    desk_env: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = first_run("overview")
    options = list(at.selectbox(key=ui.PORTFOLIO_KEY).options)
    assert at.selectbox(key=ui.PORTFOLIO_KEY).value == options[0]
    at.selectbox(key=ui.PORTFOLIO_KEY).set_value(options[1]).run()
    for _ in range(2):  # the choice holds on the run it was made and on the runs after it
        assert at.session_state[ui.PORTFOLIO_KEY] == options[1] == at.selectbox(key=ui.PORTFOLIO_KEY).value
        assert not at.exception
        at.run()


def markdown_texts(elements: list[tuple[str, tuple[int, ...], Any]]) -> list[str]:
    """Every text the frontend renders as Markdown: markdown and captions, alerts, metric labels."""
    out = []
    for kind, _, element in elements:
        if kind == "markdown":
            out.append(element.markdown.body)
        elif kind == "alert":
            out.append(element.alert.body)
        elif kind == "metric":
            out.append(element.metric.label)
    return out


def test_no_page_writes_markdown_the_browser_reads_as_an_emoji_shortcode(
    desk_env: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = Sent(monkeypatch)
    found = []
    seen_times = 0
    for page in PAGES:
        first_run(page)
        for text in markdown_texts(sent.elements()):
            seen_times += bool(re.search(r"\d\d\\?:\d\d\\?:\d\d", text))
            if EMOJI_SHORTCODE.search(text):
                found.append(f"{page}: {text[:120]!r}")
    assert seen_times >= 2, "the pages showed no time in Markdown: the check would prove nothing"
    assert not found, "\n".join(found)


def test_the_shortcode_rule_catches_a_time_and_passes_what_the_dashboard_writes() -> None:
    assert EMOJI_SHORTCODE.search("by tester at 2026-11-30 08:42:21 UTC")
    assert not EMOJI_SHORTCODE.search(f"by tester at {ui.when(1_796_027_016.5)}")
    ts = 1_796_027_016.5
    assert ui.when(ts) == datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H\\:%M\\:%S UTC")
    assert not EMOJI_SHORTCODE.search(":green[●] **VaR** · :material/lock: icon")
    assert ui.when(None) == fmt.DASH
