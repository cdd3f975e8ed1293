"""Dashboard: script run time of each page at N = 50 tickers (Streamlit AppTest), the first load of the Overview
in a fresh Chromium context beside two trivial pages of the same server, and the time from a click in the
navigation to the first rendered chart (warm session).

Script time is Streamlit's own measurement of the page script (``PageProfile.exec_time``: the entry point,
the page and its live fragments, without AppTest's harness; one compiled-script cache across runs, as the
server keeps). The store is a private Redis seeded with N = 50 tickers, a cash and a margin portfolio, a minute
of market bars and monitor snapshots, some fills and alerts. Every page is measured (Audit when it exists).

First load: the trivial pages are served by the *same* Streamlit process as the dashboard (same binary,
version, config, warm interpreter): ``RISKDESK_BENCH_PAGES=1`` makes ``dashboard/app.py`` add two pages
(:mod:`dashboard.bench_pages`: ``bench_metrics``, a title and four ``st.metric``; ``bench_heatmap``, a title
and one 12 x 12 Plotly heatmap) that skip everything of the dashboard's own. Each load opens a new browser
context (empty HTTP cache, a new Streamlit session) and stamps, in the page (``performance.now()`` from a
MutationObserver), when the four metrics / the first drawn Plotly SVG / all the Overview's traffic lights are
in the DOM. The server is warm: one load of each page first, then ``FIRST_LOAD_ROUNDS`` rounds of the three
pages in turn; the rows give medians, and the ratios are medians of the per-round ratios (one round's pages see
the same machine load: the machine is shared and noisy, so compare the ratios, not the seconds across runs).
The stack's stream daemon and monitor run meanwhile (bars every second, live refresh at its default).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import Context, Row
from dashboard.bench_pages import BENCH_PAGES_ENV
from tests.e2e_stack import CHROMIUM, ROOT, Stack, launch_chromium, open_page, toml_dumps

N = 50
REPEAT = 15
PAGES = (
    ("Overview", "screens/overview.py", None),
    ("Trade", "screens/trade.py", None),
    ("Risk / Exposure & VaR", "screens/risk.py", "Exposure & VaR"),
    ("Risk / Stress", "screens/risk.py", "Stress"),
    ("Risk / Surface", "screens/risk.py", "Surface"),
    ("Risk / Backtest", "screens/risk.py", "Backtest"),
    ("Performance", "screens/performance.py", None),
    ("Alerts", "screens/alerts.py", None),
    ("System", "screens/system.py", None),
    ("Firm", "screens/firm.py", None),
    ("Limits", "screens/limits.py", None),
    ("Audit", "screens/audit.py", None),  # when the Audit page exists (skipped otherwise)
)
SCRIPT_TARGET_MS = 100.0
CHART_TARGET_S = 2.0
NAVIGATIONS = 6


def bench_config(n: int = N) -> dict[str, Any]:
    """riskdesk.toml (limits, model, rules, sections of other components) with an N-ticker universe."""
    with (ROOT / "riskdesk.toml").open("rb") as fh:
        data = tomllib.load(fh)
    tickers = [f"T{i:02d}" for i in range(n)]
    data["universe"] = {
        "correlation": 0.35,
        "assets": {
            t: {
                "price": 50.0 + 5 * i,
                "annual_vol": 0.15 + 0.005 * i,
                "avg_daily_volume": 5_000_000,
                "spread_bps": 1.5,
            }
            for i, t in enumerate(tickers)
        },
    }
    data["portfolios"] = [
        {
            "id": "main",
            "account_type": "cash",
            "cash": "2000000.00",
            "holdings": {t: 200 + 10 * i for i, t in enumerate(tickers[: n // 2])},
        },
        {
            "id": "hedge",
            "account_type": "margin",
            "cash": "1000000.00",
            "initial_margin": 0.5,
            "maintenance_margin": 0.25,
            "limits": {"var_limit": 40000, "max_concentration": 0.5},
            "holdings": {t: (300 if i % 2 else -200) for i, t in enumerate(tickers[n // 2 :])},
        },
    ]
    data["stress_scenarios"] = {
        "equity_crash": {"description": "everything -20%", "shocks": {"*": -0.20}},
        "first_ten_down": {
            "description": "T00-T09 -15%",
            "shocks": {"*": -0.02, **{t: -0.15 for t in tickers[:10]}},
        },
    }
    data.setdefault("monitor", {})["timezone"] = "UTC"
    data.pop("redis", None)
    return data


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _exec_times() -> Iterator[list[float]]:
    """Collect Streamlit's PageProfile.exec_time (microseconds) of every AppTest run, in milliseconds."""
    from streamlit import config
    from streamlit.runtime.scriptrunner import script_cache
    from streamlit.testing.v1 import local_script_runner

    times: list[float] = []
    original = local_script_runner.LocalScriptRunner.run
    gather = config.get_option("browser.gatherUsageStats")

    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        tree = original(self, *args, **kwargs)
        for msg in self.forward_msgs():
            if msg.WhichOneof("type") == "page_profile" and not msg.page_profile.is_fragment_run:
                times.append(msg.page_profile.exec_time / 1000.0)
        return tree

    # AppTest gives every run a new ScriptCache, so each run would recompile (and rewrite for magic) the entry
    # point and the page; the server compiles each script once per process. Share one cache, as the server does.
    compiled: dict[str, Any] = {}
    get_bytecode = script_cache.ScriptCache.get_bytecode

    def shared(self: Any, script_path: str) -> Any:
        path = os.path.abspath(script_path)
        if path not in compiled:
            compiled[path] = get_bytecode(self, path)
        return compiled[path]

    local_script_runner.LocalScriptRunner.run = run  # type: ignore[method-assign]
    script_cache.ScriptCache.get_bytecode = shared  # type: ignore[method-assign]
    config.set_option("browser.gatherUsageStats", True)  # PageProfile is only built when this is on
    try:
        yield times
    finally:
        local_script_runner.LocalScriptRunner.run = original  # type: ignore[method-assign]
        script_cache.ScriptCache.get_bytecode = get_bytecode  # type: ignore[method-assign]
        config.set_option("browser.gatherUsageStats", gather)


def _populate(store: Any, settings: Any) -> None:
    """Seed, then a minute of bars through the real stream daemon and monitor, fills and alerts."""
    import warmup
    from engine.feeds import SimulatedFeed
    from engine.stream import StreamDaemon
    from logic.alerts import build_alert_engine
    from logic.monitor import Monitor
    from logic.risk_manager import RiskManager

    warmup.seed(store, settings)
    engine = build_alert_engine(store, settings)
    engine.add_rule(
        {
            "id": "bench_var",
            "metric": "var.utilization",
            "op": ">=",
            "threshold": 0.01,
            "severity": "HIGH",
            "description": "benchmark alert",
        },
        "bench",
    )
    monitor = Monitor(store, settings, alert_engine=engine)
    monitor.process_available()
    StreamDaemon(store, settings, SimulatedFeed.from_settings(settings, seed=3, bars=60), interval=0).run()
    monitor.process_available()
    rm = RiskManager(store.client, "main", settings)
    tickers = list(settings.universe.assets)
    for i in range(20):
        rm.execute_trade(tickers[i % len(tickers)], 10 + i, "BUY" if i % 3 else "SELL", client_order_id=f"b{i}")
    monitor.refresh()


def page_rows(tmp: Path) -> list[Row]:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from engine.redis_server import EmbeddedRedis, connect
    from engine.settings import settings_from_dict
    from engine.store import Store

    data = bench_config()
    config = tmp / "bench.toml"
    config.write_text(toml_dumps(data), encoding="utf-8")
    server = EmbeddedRedis(tmp / "redis")
    server.start()
    rows = []
    try:
        store = Store(connect(server.url))
        _populate(store, settings_from_dict(data))
        with _env(REDIS_URL=server.url, RISKDESK_CONFIG=str(config)), _exec_times() as times:
            st.cache_resource.clear()
            for label, path, tab in PAGES:
                if not (ROOT / "dashboard" / path).exists():
                    continue
                at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60)
                at.session_state["refresh"] = "Paused"
                if tab:
                    at.session_state["risk_tab"] = tab
                at.switch_page(path).run()
                at.run()  # warm: imports, caches, the risk manager's matrix
                if at.exception:
                    raise RuntimeError(f"{label}: {at.exception[0].value}")
                del times[:]
                for _ in range(REPEAT):
                    at.run()
                median = statistics.median(times)
                rows.append(
                    Row(
                        f"dashboard page script run, {label} (N={N}, median)",
                        median,
                        "ms",
                        target=f"<= {SCRIPT_TARGET_MS:.0f} ms",
                        met=median <= SCRIPT_TARGET_MS,
                    )
                )
            st.cache_resource.clear()
        store.client.close()
    finally:
        server.stop()
    return rows


FIRST_LOAD_ROUNDS = 7
FIRST_LOAD_TARGET = 1.15
"""Overview's traffic lights / first chart at most this many times the trivial metrics / heatmap page."""
FIRST_LOAD_PAGES = {"metrics": "bench_metrics", "heatmap": "bench_heatmap", "overview": ""}
_MARKS = """
(() => {
  const marks = (window.__rdMarks = {});
  const lights = %d;
  const check = () => {
    const main = document.querySelector('[data-testid="stMain"]');
    if (!main) return;
    const t = performance.now();
    if (marks.metrics === undefined && main.querySelectorAll('[data-testid="stMetric"]').length >= 4)
      marks.metrics = t;
    if (marks.chart === undefined && main.querySelector('[data-testid="stPlotlyChart"] .main-svg'))
      marks.chart = t;
    const box = main.querySelector('.st-key-ov_lights');
    if (marks.lights === undefined && box) {
      const dots = [...box.querySelectorAll('[data-testid="stMarkdownContainer"]')]
        .filter(e => e.textContent.includes('\u25cf')).length;
      if (dots >= lights) marks.lights = t;
    }
  };
  new MutationObserver(check).observe(document, {subtree: true, childList: true});
})();
"""
"""Stamps, in ms since the navigation started (``performance.now()``), when each thing is first in the DOM."""


def _first_load(browser: Any, url: str, wanted: tuple[str, ...], lights: int) -> dict[str, float]:
    """Open ``url`` in a fresh context (empty HTTP cache, a new Streamlit session); seconds to each mark."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    try:
        context.add_init_script(_MARKS % lights)
        page = context.new_page()
        page.goto(url, wait_until="commit")
        page.wait_for_function(
            "keys => keys.every(k => window.__rdMarks && window.__rdMarks[k] !== undefined)",
            arg=list(wanted),
            timeout=60_000,
        )
        marks = page.evaluate("() => window.__rdMarks")
        return {k: float(marks[k]) / 1000.0 for k in wanted}
    finally:
        context.close()


def _count_lights(browser: Any, url: str) -> int:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    try:
        page = context.new_page()
        open_page(page, url, "Overview")
        return int(
            page.evaluate(
                """() => [...document.querySelectorAll('.st-key-ov_lights [data-testid="stMarkdownContainer"]')]
                    .filter(e => e.textContent.includes('\u25cf')).length"""
            )
        )
    finally:
        context.close()


def first_load_rows(browser: Any, base: str) -> list[Row]:
    """First traffic light and first chart of the Overview beside the two trivial pages, fresh contexts.

    One warm-up load of each page first (imports, caches and the desk are then warm on the server, as for any
    user after the first), then ``FIRST_LOAD_ROUNDS`` rounds, each loading the three pages in turn in new
    browser contexts; the ratio is the median of the per-round ratios (pages of one round see the same load).
    """
    lights = _count_lights(browser, base)
    urls = {name: f"{base}/{path}" for name, path in FIRST_LOAD_PAGES.items()}
    wanted = {"metrics": ("metrics",), "heatmap": ("chart",), "overview": ("lights", "chart")}
    for name, url in urls.items():  # warm-up
        _first_load(browser, url, wanted[name], lights)
    samples: dict[str, list[float]] = {k: [] for k in ("metrics", "heatmap", "lights", "chart")}
    for _ in range(FIRST_LOAD_ROUNDS):
        samples["metrics"].append(_first_load(browser, urls["metrics"], ("metrics",), lights)["metrics"])
        samples["heatmap"].append(_first_load(browser, urls["heatmap"], ("chart",), lights)["chart"])
        overview = _first_load(browser, urls["overview"], ("lights", "chart"), lights)
        samples["lights"].append(overview["lights"])
        samples["chart"].append(overview["chart"])
    med = {k: statistics.median(v) for k, v in samples.items()}
    note = f"fresh context, warm server, median of {FIRST_LOAD_ROUNDS}"
    rows = [
        Row(f"first load -> 4 metrics, trivial st.metric page ({note})", med["metrics"], "s"),
        Row(f"first load -> heatmap, trivial one-heatmap page ({note})", med["heatmap"], "s"),
    ]
    target = f"<= {FIRST_LOAD_TARGET:.2f}x"
    for what, mark, base_name, base_label in (
        ("traffic lights", "lights", "metrics", "trivial metrics page"),
        ("first chart", "chart", "heatmap", "trivial heatmap page"),
    ):
        rows.append(Row(f"first load -> {what}, Overview N={N} ({note})", med[mark], "s", base_label, med[base_name]))
        ratio = statistics.median(a / b for a, b in zip(samples[mark], samples[base_name], strict=True))
        rows.append(
            Row(
                f"first load {what} / {base_label} (median of per-round ratios)",
                ratio,
                "x",
                target=target,
                met=ratio <= FIRST_LOAD_TARGET,
            )
        )
    print(
        "bench_dashboard first loads (s): "
        + "; ".join(f"{k} {', '.join(f'{x:.2f}' for x in v)}" for k, v in samples.items()),
        file=sys.stderr,
    )
    return rows


def browser_rows(tmp: Path) -> list[Row]:
    if not CHROMIUM.exists():
        print(
            f"bench_dashboard: {CHROMIUM} missing, browser rows skipped (apt-get install chromium)",
            file=sys.stderr,
        )
        return []
    from playwright.sync_api import sync_playwright

    config = tmp / "browser.toml"
    config.write_text(toml_dumps(bench_config()), encoding="utf-8")
    samples: dict[str, list[float]] = {"Overview": [], "Risk": []}
    env = {"RISKDESK_CONFIG": str(config), BENCH_PAGES_ENV: "1"}
    with Stack(bar_interval=1.0, env=env) as stack, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            rows = first_load_rows(browser, stack.url)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            t0 = time.perf_counter()
            open_page(page, stack.url, "Overview")
            _wait_chart(page, "Overview")
            cold = time.perf_counter() - t0
            for _ in range(NAVIGATIONS):
                for title in ("Risk", "Overview"):
                    t0 = time.perf_counter()
                    page.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()
                    _wait_chart(page, title)
                    samples[title].append(time.perf_counter() - t0)
        finally:
            browser.close()
    rows.append(Row("first load of the dashboard -> first chart, Chromium (new session, warm server)", cold, "s"))
    for title, values in samples.items():
        median = statistics.median(values)
        rows.append(
            Row(
                f"navigation -> first chart, Chromium warm, {title} (N={N}, median)",
                median,
                "s",
                target=f"<= {CHART_TARGET_S:.0f} s",
                met=median <= CHART_TARGET_S,
            )
        )
    return rows


def _wait_chart(page: Any, title: str) -> None:
    page.wait_for_function(
        """title => {
            const h1 = document.querySelector('[data-testid="stMain"] h1');
            if (!h1 || h1.textContent.trim() !== title) return false;
            return !!document.querySelector(
                '[data-testid="stMain"] [data-stale="false"] [data-testid="stPlotlyChart"] .main-svg');
        }""",
        arg=title,
        timeout=30_000,
    )


def run(ctx: Context) -> list[Row]:
    tmp = Path(tempfile.mkdtemp(prefix="rdbd-"))
    try:
        return page_rows(tmp) + browser_rows(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
