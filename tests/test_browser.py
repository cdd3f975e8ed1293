"""End to end in a real headless Chromium: ``make run``-style startup on a temporary store, every page, a
trade through the UI, screenshots.

The stack (embedded Redis, warm-up, stream daemon, monitor, ``streamlit run``) is started by ``launcher.py``
on a temporary data directory and a free loopback port (:class:`tests.e2e_stack.Stack`) and stopped by PID at
the end. Screenshots go to ``$RISKDESK_SCREENSHOT_DIR`` (``make screenshots`` sets ``docs/screenshots``),
else to ``test-artifacts/screenshots`` (git-ignored), so a test run never rewrites the README's images.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from logic.access import local_identity

from .e2e_stack import (
    CHART_SELECTOR,
    CHROMIUM,
    EXCEPTION_SELECTOR,
    PAGE_TIMEOUT_MS,
    ROOT,
    Stack,
    chromium_browser,
    open_page,
    settle,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"Debian's chromium is not at {CHROMIUM}: `apt-get install chromium` (.ci/run does it)",
    ),
]

SCREENSHOT_DIR = Path(os.environ.get("RISKDESK_SCREENSHOT_DIR") or ROOT / "test-artifacts" / "screenshots")
VIEWPORT = {"width": 1440, "height": 1400}
PAGES = ("Overview", "Trade", "Risk", "Performance", "Alerts", "System", "Firm", "Limits", "Audit")
FRIENDLY_PROBLEMS = ("Redis is unreachable", "store is empty", "This view failed")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack(bar_interval=0.5) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium_browser() as chromium:
        yield chromium


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT)
    try:
        yield context.new_page()
    finally:
        context.close()


def shoot(page: Any, name: str) -> Path:
    """Screenshot the whole page: the app scrolls inside its main container, so grow the viewport to fit."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], min(int(height), 3600))})
    try:
        page.wait_for_timeout(400)  # charts re-layout to the new size
        settle(page)
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size(VIEWPORT)
    return path


def assert_no_exception(page: Any, title: str) -> None:
    assert page.locator(EXCEPTION_SELECTOR).count() == 0, (
        f"{title}: {page.locator(EXCEPTION_SELECTOR).first.inner_text()}"
    )
    text = page.inner_text('[data-testid="stMain"]')
    assert not [p for p in FRIENDLY_PROBLEMS if p in text], (
        f"{title} shows a problem on a healthy stack:\n{text[:2000]}"
    )


@pytest.mark.parametrize("title", PAGES)
def test_every_page_loads_without_an_exception(page: Any, stack: Stack, title: str) -> None:
    open_page(page, stack.url, title)
    if title in ("Overview", "Risk"):
        page.wait_for_selector(CHART_SELECTOR, timeout=30_000)
    if title == "Risk":
        # every tab runs lazily: open each and check it too
        for tab in ("Stress", "What-if", "Surface", "Backtest", "Exposure & VaR"):
            page.get_by_role("tab", name=tab).click()
            page.get_by_role("tab", name=tab, selected=True).wait_for(timeout=30_000)
            settle(page)
            assert_no_exception(page, f"Risk/{tab}")
            if tab in ("Stress", "Surface", "Backtest"):
                # the backtest has a chart once its burn-in (EWMA seed + a full window) is over; before, it says so
                shown = page.locator(CHART_SELECTOR)
                if tab == "Backtest":
                    shown = shown.or_(page.get_by_text("VaR backtest is in its burn-in"))
                shown.first.wait_for(timeout=30_000)
                shoot(page, f"risk_{tab.lower()}")
        page.wait_for_selector(CHART_SELECTOR, timeout=30_000)
    settle(page)
    assert_no_exception(page, title)
    assert shoot(page, title.lower()).stat().st_size > 10_000


def test_live_parts_refresh_on_their_own(page: Any, stack: Stack) -> None:
    open_page(page, stack.url, "System")
    last_tick = page.get_by_test_id("stMetric").filter(has_text="Last tick")
    first = last_tick.inner_text()
    # the stream writes a bar every 0.5 s: the live fragment shows a newer market version without a reload
    page.wait_for_function(
        """first => [...document.querySelectorAll('[data-testid="stMetric"]')]
                .some(m => m.innerText.includes('Last tick') && m.innerText !== first)""",
        arg=first,
        timeout=15_000,
    )


def test_a_trade_submitted_in_the_ui_reaches_the_blotter_and_redis(page: Any, stack: Stack) -> None:
    from engine.redis_server import connect
    from engine.store import Store

    open_page(page, stack.url, "Trade")
    page.get_by_label("Quantity (shares)").fill("7")
    # typed but not submitted: live refreshes (every 2 s) rerun only the live fragments, never the ticket
    page.wait_for_timeout(2500)
    assert page.get_by_label("Quantity (shares)").input_value() == "7"
    page.get_by_role("button", name="Check").click()
    page.get_by_text("APPROVED").first.wait_for(timeout=30_000)
    caption = page.get_by_text(re.compile(r"client order id dash-[0-9a-f]+")).inner_text()
    order_id = re.search(r"dash-[0-9a-f]+", caption).group(0)  # type: ignore[union-attr]

    execute = page.get_by_role("button", name="Execute")
    execute.dblclick()  # a double click: the second click re-sends the same order id
    page.get_by_text(re.compile(r"FILLED|Already executed")).first.wait_for(timeout=30_000)
    # the blotter (the page's last table) is wider than the page since its columns fit their values (issue 14):
    # scroll it sideways so the order-id column is drawn, then find the id among the grid's accessible cells
    page.locator('[data-testid="stDataFrame"]').last.hover()
    page.mouse.wheel(4000, 0)
    blotter_cell = page.locator('[data-testid="stDataFrame"] [role="gridcell"]', has_text=order_id)
    blotter_cell.first.wait_for(state="attached", timeout=30_000)  # the grid's accessible (offscreen) cells
    settle(page)
    assert_no_exception(page, "Trade")
    shoot(page, "trade_filled")

    store = Store(connect(stack.redis_url))
    try:
        order = store.read_order("main", order_id)
        assert order is not None and order["status"] == "FILLED"
        assert (order["fill"]["side"], order["fill"]["qty"]) == ("BUY", 7)
        fills = [r for r in store.read_trade_log("main", 100) if r.get("client_order_id") == order_id]
        assert len(fills) == 1, "the double click traded twice"
    finally:
        store.client.close()


def test_an_alert_on_the_live_snapshot_is_acknowledged_in_the_ui(page: Any, stack: Stack) -> None:
    from engine.redis_server import connect
    from engine.store import Store
    from logic.alerts import build_alert_engine

    store = Store(connect(stack.redis_url))
    try:
        engine = build_alert_engine(store, stack.settings())
        engine.add_rule(
            {
                "id": "var_in_use",
                "metric": "var.utilization",
                "op": ">=",
                "threshold": 0.0001,
                "severity": "HIGH",
                "description": "VaR in use (end-to-end test rule)",
            },
            "e2e",
        )
        engine.evaluate("main", store.read_snapshot("main"))  # the real engine on the monitor's latest snapshot

        open_page(page, stack.url, "Alerts")
        cell = page.locator('[data-testid="stDataFrame"] [role="gridcell"]', has_text="var_in_use")
        cell.first.wait_for(state="attached", timeout=30_000)
        settle(page)
        assert_no_exception(page, "Alerts")
        shoot(page, "alerts")

        form = page.locator('[data-testid="stForm"]').filter(has=page.get_by_role("button", name="Acknowledge"))
        assert form.get_by_label("Your name").count() == 0  # issue 13: the identity, never a typed name
        form.get_by_role("button", name="Acknowledge").click()
        page.get_by_text("Alert main · var_in_use acknowledged.").wait_for(timeout=30_000)  # it names the alert
        alert = store.read_active_alerts("main")["var_in_use"]
        # no login configured: the local operator (the OS user running the stack)
        assert (alert["status"], alert["acknowledged_by"]) == ("ACKNOWLEDGED", local_identity().actor)
        engine.remove_rule("var_in_use", "e2e", "end of test")
    finally:
        store.client.close()


def test_make_demo_replays_real_closes_and_every_page_loads_without_an_exception(browser: Any) -> None:
    """``make demo`` (launcher.py demo): plotly's weekly closes through warm-up, stream, monitor and dashboard."""
    demo_env = {"RISKDESK_CONFIG": str(ROOT / "configs" / "demo.toml")}
    with Stack(env=demo_env, command="demo", args=("--interval", "1.5")) as demo:
        context = browser.new_context(viewport=VIEWPORT)
        try:
            page = context.new_page()
            for title in PAGES:
                open_page(page, demo.url, title)
                settle(page)
                assert_no_exception(page, f"demo/{title}")
                # the sidebar says this is a replay of historical bars, not live time (the sidebar is drawn after
                # the page, so wait for it rather than read it the moment the page's title is there)
                sidebar = page.get_by_test_id("stSidebar")
                sidebar.get_by_text("Replay of historical weekly bars").wait_for(timeout=PAGE_TIMEOUT_MS)
                assert "Replay of historical weekly bars" in sidebar.inner_text()
            open_page(page, demo.url, "Overview")
            page.wait_for_selector(CHART_SELECTOR, timeout=30_000)
            shoot(page, "demo_overview")
        finally:
            context.close()
