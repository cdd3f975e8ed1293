"""Every process of the desk restarted on an unchanged market: every figure of the Overview and of the Risk
page's Stress tab reads the same before and after (issue 14: stressed VaR once moved 20x across a restart).

The in-process version (tests/test_stress_restart.py) rebuilds clients, engines and views over one store; this
one runs the real processes. ``launcher.py demo`` (what ``make demo`` runs) brings up the embedded Redis (AOF
on), the warm-up from history files, the stream daemon replaying the demo's weekly closes (fast), the monitor,
the notifier and the Streamlit dashboard. The replay is a bounded feed: when its file ends the stream daemon
exits and the market is unchanged from then on. The replay's clock (engine/clocks.py) runs on the wall once its
daemon is silent, so its prices go stale: the test waits until they are (the Market data light red) before it reads
the pages, and they must stay stale across the restart (a restarted replay with nothing new to play ends at once on
the wall time its last bar was played; its end beat once dated them at the restart, and the light went green again).

Once the monitor has snapshotted the last market version, both pages are rendered for each portfolio by a
fresh dashboard process (tests/page_figures.py: the real pages under Streamlit's AppTest, every element the
browser would get). Then ``launcher.py stop`` stops every process by PID, Redis last, and the test checks each
PID is gone; the same ``launcher.py demo`` starts them all again on the same data directory (what a user types
after ``make stop``): Redis reloads its AOF, the store is not seeded again, and the new stream daemon finds every
bar of its file in the store and reads none (``ReplayFeed.resume_after``; before, it played the whole file again
on top of the market it had written). The monitor, notifier and dashboard are new processes; once the dashboard
answers and the new monitor has written its heartbeat, the pages are rendered again by another new process, and
every element must be equal.

Nothing but a CSV export's random session handle is excluded there (:data:`IGNORED`): nothing else on these pages
moves while a stale market stands still, so even ages and times must be identical (but the age in the red Market
data light's caption, the wall time since the last bar was played, checked on its own terms); the Overview's figures
after the restart are the first monitor's snapshot (kept by the AOF): no new bar, the same figures.

The second test is the desk of ``make run`` (riskdesk.toml) on the wall clock: the simulated feed plays
:data:`LIVE_BARS` bars and stops (``--ticks``), the restart starts it with none left. There the new monitor
snapshots the unchanged market again (its idle refresh, once a second), so the Overview after the restart shows
the new monitor's own figures. What depends on wall time is named in :data:`IGNORED` (the CSV link) or checked
on its own terms (the history charts grow by points equal to the last one).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from engine.redis_server import connect
from engine.store import Store

from .e2e_stack import ROOT, Stack

DEMO_CONFIG = ROOT / "configs" / "demo.toml"
REPLAY_INTERVAL = "0.02"
"""Wall seconds per replayed weekly bar: the whole demo file (about 66 bars) in a few seconds."""
PAGES = ("overview:main", "overview:hedge", "risk/Stress:main", "risk/Stress:hedge")
"""Page specs for tests/page_figures.py: every portfolio's Overview and Stress tab."""
SETTLE_TIMEOUT_SECONDS = 60.0
IGNORED: dict[str, tuple[str, ...]] = {
    "replay": ("download_button.deferred_file_id",),
    "live": ("download_button.deferred_file_id", "download_button.url"),
}
"""Per clock, the element fields (``type.field``) not compared. On both, the handle of a CSV export built on click:
a random id per session, not a figure (the table it exports is compared itself). Nothing else on the replay's clock,
where nothing on these pages depends on wall time. On the live clock, also an export's link where one is sent: its
content carries an as-of time read from the wall clock. The history charts of the live Overview are compared on
their own (:func:`assert_history_continues`): the idle monitor adds a point a second."""
HISTORY_CHARTS = ("equity_curve", "drawdown_chart")
"""Keys of the Overview's charts drawn from the monitor's history (logic/views/overview.py ``history_frame``)."""
LIVE_BARS = 20
"""Bars the simulated feed plays before it stops (``--ticks``) in the live-clock test."""

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def pids(stack: Stack) -> dict[str, int | None]:
    """PID of Redis and of every service of the stack (None: not running), from their PID files."""
    from engine.redis_server import EmbeddedRedis, owned_pid
    from launcher import services

    settings = stack.settings()
    out: dict[str, int | None] = {"redis": EmbeddedRedis(stack.data_dir).pid()}
    for service in services(settings):
        out[service.name] = owned_pid(stack.data_dir / "run" / f"{service.name}.pid", service.marker)
    return out


def wait_for(what: str, condition: Any, stack: Stack) -> Any:
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{what} within {SETTLE_TIMEOUT_SECONDS:.0f} s; logs: {stack.log_tail()}")


def market_settled(stack: Stack) -> bool:
    """The replay has ended (its daemon exited) and the monitor has snapshotted the last market version."""
    if pids(stack)["stream"] is not None:
        return False
    store = Store(connect(stack.redis_url))
    try:
        version = store.read_market_version()
        beat = store.read_heartbeat("monitor") or {}
        return version is not None and str(beat.get("version")) == str(version)
    finally:
        store.client.close()


def monitor_beats(stack: Stack, pid: int) -> bool:
    """The monitor process ``pid`` has written its heartbeat."""
    store = Store(connect(stack.redis_url))
    try:
        return str((store.read_heartbeat("monitor") or {}).get("pid")) == str(pid)
    finally:
        store.client.close()


def read_pages(stack: Stack) -> dict[str, list[dict[str, Any]]]:
    """Every element of :data:`PAGES` as a fresh dashboard process renders them."""
    env = {**stack.env, "REDIS_URL": stack.redis_url}
    done = subprocess.run(
        [sys.executable, "-m", "tests.page_figures", *PAGES],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def restart_every_process(stack: Stack, before: dict[str, int | None]) -> dict[str, int | None]:
    """``launcher.py stop`` (by PID, Redis last), every PID gone, then the same ``launcher.py demo`` on the same
    data directory: what a user types after ``make stop``. Returns the new PIDs."""
    version = market_version(stack)
    stack._launcher("stop")
    stack.started = False
    for name, pid in before.items():
        assert pid is not None and not _alive(pid), f"{name} (pid {pid}) survived launcher.py stop"
    stack.started = True  # from here the fixture's teardown stops whatever did start
    out = stack._launcher(stack.command, *stack.args)
    assert "store already seeded" in out  # the AOF brought the store back: no re-seed
    stack.wait_until_ready()
    after = pids(stack)
    for name in ("redis", "monitor", "notify", "dashboard"):
        assert after[name] is not None and after[name] != before[name], f"{name} is not a new process: {after}"
    wait_for("the new monitor's heartbeat", lambda: monitor_beats(stack, int(after["monitor"] or 0)), stack)
    # the new stream daemon found every bar of its file in the store and read none (engine/feeds.py)
    wait_for("the restarted replay to end", lambda: pids(stack)["stream"] is None, stack)
    log = (stack.data_dir / "log" / "stream.log").read_text()
    assert f"holds its first {version} of {version} bars" in log, log[-2000:]
    assert market_version(stack) == version
    return after


MARKET_AGE = re.compile(r"market data ([0-9.]+) s old")
"""The age in the caption of a red Market data light (its detail): the wall time since the prices were played."""


def wait_until_stale(stack: Stack) -> float:
    """Sleep until the stale-price limit has passed on the wall clock since the replay's last bar was played (its
    heartbeat's ``wall_ts``): from then on its prices are stale for the gate and the pages. Returns the limit."""
    settings = stack.settings()
    limit = max([settings.limits.stale_price_seconds] + [p.limits.stale_price_seconds for p in settings.portfolios])
    store = Store(connect(stack.redis_url))
    try:
        played = float((store.read_heartbeat("stream") or {})["wall_ts"])
    finally:
        store.client.close()
    time.sleep(max(0.0, played + limit + 1.0 - time.time()))
    return float(limit)


def timed_read(stack: Stack) -> tuple[dict[str, list[dict[str, Any]]], float, float]:
    """:func:`read_pages` with the wall times before and after it (the pages are rendered in between)."""
    start = time.time()
    pages = read_pages(stack)
    return pages, start, time.time()


def market_ages(pages: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Per Overview page, the market data age its red Market data light's caption shows."""
    out = {}
    for spec in (s for s in PAGES if s.startswith("overview")):
        bodies = [e.get("markdown", {}).get("body", "") for e in pages[spec]]
        found = [float(m.group(1)) for body in bodies if (m := MARKET_AGE.search(body))]
        assert len(found) == 1, f"{spec}: {found}"
        out[spec] = found[0]
    return out


def without_market_age(pages: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """``pages`` with the age in the Market data caption replaced by a placeholder (checked by the caller)."""
    return {spec: [json.loads(MARKET_AGE.sub("market data AGE s old", json.dumps(e))) for e in elements]
            for spec, elements in pages.items()}  # fmt: skip


def market_light(elements: list[dict[str, Any]]) -> str:
    """The level the Overview's Market data light shows (``GREEN``, ``AMBER``, ``RED``)."""
    bodies = [e["markdown"]["body"] for e in elements if "**Market data**" in e.get("markdown", {}).get("body", "")]
    assert len(bodies) == 1, bodies
    return bodies[0].rsplit("[", 1)[1].rstrip("]")


def market_version(stack: Stack) -> int:
    store = Store(connect(stack.redis_url))
    try:
        return int(store.read_market_version() or 0)
    finally:
        store.client.close()


@pytest.fixture
def demo_stack() -> Iterator[Stack]:
    env = {"RISKDESK_CONFIG": str(DEMO_CONFIG)}
    with Stack(env=env, command="demo", args=("--interval", REPLAY_INTERVAL)) as stack:
        yield stack


def comparable(element: dict[str, Any], ignored: tuple[str, ...], history: bool = False) -> dict[str, Any]:
    """The element without the fields named in ``ignored``; with ``history``, a history chart without its id
    and traces (a hash of, and the points of, a series that grows on the live clock)."""
    out = json.loads(json.dumps(element))
    for path in ignored:
        kind, _, name = path.partition(".")
        out.get(kind, {}).pop(name, None)
    chart = out.get("plotly_chart", {})
    if history and str(chart.get("id", "")).endswith(HISTORY_CHARTS):
        chart.pop("id")
        chart["spec"].pop("data")
    return out


def series(values: Any) -> list[Any]:
    """A Plotly trace's x or y: a list, or numpy's typed array (``{"bdata": base64, "dtype": ...}``)."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return list(values)


def assert_history_continues(
    before: list[dict[str, Any]], after: list[dict[str, Any]], spec: str, *, grows: bool = True
) -> None:
    """Every history trace after the restart starts with the points before it, and every point the new
    monitor added (its idle refreshes of the unchanged market) repeats the last value: the same figure. ``grows``:
    the new monitor added at least one."""
    charts = [
        (old["plotly_chart"], new["plotly_chart"])
        for old, new in zip(before, after, strict=True)
        if str(old.get("plotly_chart", {}).get("id", "")).endswith(HISTORY_CHARTS)
    ]
    assert len(charts) == len(HISTORY_CHARTS), f"{spec}: no history charts"
    for old_chart, new_chart in charts:
        for old, new in zip(old_chart["spec"]["data"], new_chart["spec"]["data"], strict=True):
            x0, y0, x1, y1 = series(old["x"]), series(old["y"]), series(new["x"]), series(new["y"])
            assert x1[: len(x0)] == x0 and y1[: len(y0)] == y0, f"{spec} {old['name']}: the history changed"
            assert len(y1) > len(y0) or not grows, f"{spec} {old['name']}: the new monitor added no point"
            assert all(y == y0[-1] for y in y1[len(y0) :]), f"{spec} {old['name']}: a new point differs"


def metrics_of(elements: list[dict[str, Any]]) -> dict[str, str]:
    return {e["metric"]["label"]: e["metric"]["body"] for e in elements if "metric" in e}


NO_HISTORY = "No history points in this window yet."
"""The Overview's caption where its history charts would be (logic/views/overview.py: an empty window)."""


def is_history(element: dict[str, Any]) -> bool:
    """A history chart of the Overview, or the caption that stands in for them."""
    return str(element.get("plotly_chart", {}).get("id", "")).endswith(HISTORY_CHARTS) or NO_HISTORY in json.dumps(
        element
    )


def replay_history_apart(
    before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]]
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """On a replay's clock, the pages without their history charts, which are compared on their own terms: once
    the file ended, the replay's "now" runs on with the wall time (engine/clocks.py) and the idle monitor adds a
    point a second of the unchanged figures, so the Overview's default five-minute window shows the last bar and
    those points, or nothing yet, depending on the wall time the restart took. Where both reads show the charts,
    they continue (:func:`assert_history_continues`: the points before, then the same figure)."""
    kept_before, kept_after = {}, {}
    for spec in before:
        old, new = before[spec], after[spec]
        charts = (
            [e for e in old if is_history(e) and "plotly_chart" in e],
            [e for e in new if is_history(e) and "plotly_chart" in e],
        )
        if all(len(c) == len(HISTORY_CHARTS) for c in charts):
            assert_history_continues(charts[0], charts[1], spec, grows=False)
        kept_before[spec] = [e for e in old if not is_history(e)]
        kept_after[spec] = [e for e in new if not is_history(e)]
    return kept_before, kept_after


def assert_every_figure_unchanged(
    before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]], clock: str
) -> None:
    if clock == "replay":
        before, after = replay_history_apart(before, after)
    for spec in PAGES:
        assert len(after[spec]) == len(before[spec]), f"{spec}: {len(before[spec])} -> {len(after[spec])} elements"
        live_history = clock == "live" and spec.startswith("overview")
        for i, (old, new) in enumerate(zip(before[spec], after[spec], strict=True)):
            assert comparable(new, IGNORED[clock], live_history) == comparable(old, IGNORED[clock], live_history), (
                f"{spec} element {i} changed across the restart"
            )
        if live_history:
            assert_history_continues(before[spec], after[spec], spec)
    for pid in ("main", "hedge"):
        # the Stress tab's stressed VaR is computed by the new dashboard process from the stored matrices; the
        # Overview's comes from the latest monitor snapshot: the same figure
        overview, stress = metrics_of(after[f"overview:{pid}"]), metrics_of(after[f"risk/Stress:{pid}"])
        # the Overview's stressed gauge is at the limit's confidence and horizon, as is the Stress tab's figure of
        # the same label (e.g. "Stressed VaR 95% (1 day)")
        stressed = [label for label in overview if label.startswith("Stressed VaR")]
        assert len(stressed) == 1, overview
        assert overview[stressed[0]] == stress[stressed[0]]
        assert stress[stressed[0]].startswith("USD ") and stress[stressed[0]] != "USD 0"
        assert overview["Equity"].startswith("USD ")


def test_every_overview_and_stress_figure_is_unchanged_after_every_process_restarts(demo_stack: Stack) -> None:
    # Arrange: the replay ran to its end and the monitor caught up; every figure read by a fresh dashboard
    wait_for("the replay to end and the monitor to catch up", lambda: market_settled(demo_stack), demo_stack)
    running = pids(demo_stack)
    running.pop("stream")  # exited with its replay
    limit = wait_until_stale(demo_stack)
    before, b0, b1 = timed_read(demo_stack)
    assert all(market_light(before[spec]) == "RED" for spec in PAGES if spec.startswith("overview"))
    # Act: every process stopped by PID and started again on the same data directory
    restart_every_process(demo_stack, running)
    after, a0, a1 = timed_read(demo_stack)
    # Assert: the prices stayed stale across the restart, their age running on by the wall time between the two
    # reads (the caption rounds to 0.1 s; before the fix the restart made them fresh: the light went green)
    old, new = market_ages(before), market_ages(after)
    for spec in old:
        assert old[spec] > limit, f"{spec}: {old[spec]}"
        assert a0 - b1 - 0.1 <= new[spec] - old[spec] <= a1 - b0 + 0.1, f"{spec}: {old[spec]} -> {new[spec]}"
    # every element equal (the Market data light still red), stressed VaR included, and the figures are figures,
    # not blanks; the Overview's snapshot is the first monitor's
    assert_every_figure_unchanged(without_market_age(before), without_market_age(after), "replay")


def start_live(stack: Stack, ticks: int) -> str:
    """The launcher's start (``make run``) with the simulated feed bounded to ``ticks`` bars (``--ticks``: the
    launcher's command line has no option for it, so its :class:`Launcher` is run the way ``main`` runs it)."""
    code = (
        "import launcher\n"
        "from engine.settings import load_settings\n"
        f"print('\\n'.join(launcher.Launcher(load_settings(), stream_args=('--ticks', '{ticks}')).start()))\n"
    )
    stack.started = True  # from here the fixture's teardown stops whatever did start
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=60, check=False
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    stack.wait_until_ready()
    return done.stdout


@pytest.fixture
def live_stack() -> Iterator[Stack]:
    """riskdesk.toml (the desk of ``make run``) on a fast demo clock; no Prometheus ports (other stacks may
    run), and a heartbeat counts as stale only after an hour, so no staleness warning comes and goes with the
    wall time this test takes."""
    env = {
        "RISKDESK__METRICS__STREAM_PORT": "0",
        "RISKDESK__METRICS__MONITOR_PORT": "0",
        "RISKDESK__METRICS__NOTIFICATIONS_PORT": "0",
        "RISKDESK__MONITOR__STALE_SNAPSHOT_SECONDS": "3600",
    }
    stack = Stack(bar_interval=0.2, env=env)
    try:
        yield stack
    finally:
        stack.stop()


def test_on_the_live_clock_every_figure_is_unchanged_when_the_new_monitor_recomputes_it(live_stack: Stack) -> None:
    """The desk of ``make run`` on the wall clock: after the restart the new monitor snapshots the unchanged
    market again (its idle refresh), so the Overview's figures are the new monitor's own, and still equal."""
    # Arrange: LIVE_BARS simulated bars, the feed stopped, the monitor caught up
    start_live(live_stack, LIVE_BARS)
    wait_for("the feed to stop and the monitor to catch up", lambda: market_settled(live_stack), live_stack)
    running = pids(live_stack)
    running.pop("stream")  # its bars are spent
    before = read_pages(live_stack)
    # Act: every process stopped by PID; started again, the feed with no bar left to play
    version = market_version(live_stack)
    live_stack._launcher("stop")
    live_stack.started = False
    for name, pid in running.items():
        assert pid is not None and not _alive(pid), f"{name} (pid {pid}) survived launcher.py stop"
    restarted = time.time()
    assert "store already seeded" in start_live(live_stack, 0)
    after_pids = pids(live_stack)
    for name in ("redis", "monitor", "notify", "dashboard"):
        assert after_pids[name] not in (None, running[name]), f"{name} is not a new process: {after_pids}"
    wait_for(
        "a snapshot by the new monitor", lambda: snapshot_by(live_stack, after_pids["monitor"], restarted), live_stack
    )
    after = read_pages(live_stack)
    # Assert
    assert market_version(live_stack) == version
    assert_every_figure_unchanged(before, after, "live")


def snapshot_by(stack: Stack, pid: int | None, since: float) -> bool:
    """The monitor process ``pid`` has written a snapshot after ``since`` (epoch seconds)."""
    store = Store(connect(stack.redis_url))
    try:
        beat = store.read_heartbeat("monitor") or {}
        return str(beat.get("pid")) == str(pid) and float(beat.get("snapshot_ts") or 0) > since
    finally:
        store.client.close()
