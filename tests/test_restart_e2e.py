"""Every process of the desk restarted on an unchanged market: every figure of the Overview and of the Risk
page's Stress tab reads the same before and after (issue 14: stressed VaR once moved 20x across a restart).

The in-process version (tests/test_stress_restart.py) rebuilds clients, engines and views over one store; this
one runs the real processes. ``launcher.py demo`` (what ``make demo`` runs) brings up the embedded Redis (AOF
on), the warm-up from history files, the stream daemon replaying the demo's weekly closes (fast), the monitor,
the notifier and the Streamlit dashboard. The replay is a bounded feed: when its file ends the stream daemon
exits and the market is unchanged from then on; on the replay's clock (engine/clocks.py: the last bar's time)
nothing a page shows ages while it stands still, so every figure can be compared exactly.

Once the monitor has snapshotted the last market version, both pages are rendered for each portfolio by a
fresh dashboard process (tests/page_figures.py: the real pages under Streamlit's AppTest, every element the
browser would get). Then ``launcher.py stop`` stops every process by PID, Redis last, and the test checks each
PID is gone; the same ``launcher.py demo`` starts them all again on the same data directory (what a user types
after ``make stop``): Redis reloads its AOF, the store is not seeded again, and the new stream daemon finds every
bar of its file in the store and reads none (``ReplayFeed.resume_after``; before, it played the whole file again
on top of the market it had written). The monitor, notifier and dashboard are new processes; once the dashboard
answers and the new monitor has written its heartbeat, the pages are rendered again by another new process, and
every element must be equal.

Nothing is excluded: the replay's clock does not move while the market stands still, so even ages, times and
download links must be identical. :data:`IGNORED` lists what is not compared (empty) so an exclusion has to be
written down here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from engine.redis_server import connect
from engine.store import Store

from .e2e_stack import ROOT, Stack

DEMO_CONFIG = ROOT / "configs" / "demo.toml"
REPLAY_INTERVAL = "0.02"
"""Wall seconds per replayed weekly bar: the whole demo file (about 66 bars) in a few seconds."""
PAGES = ("overview:main", "overview:hedge", "risk/Stress:main", "risk/Stress:hedge")
"""Page specs for tests/page_figures.py: every portfolio's Overview and Stress tab."""
SERVICES = ("stream", "monitor", "notify", "dashboard")
SETTLE_TIMEOUT_SECONDS = 60.0
IGNORED: tuple[tuple[str, str], ...] = ()
"""(element type, field) pairs not compared: none, since on the replay's clock nothing on these pages depends on
wall time. A time-dependent figure (an age, a "last tick N s ago") would have to be named here."""

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


def comparable(element: dict[str, Any]) -> dict[str, Any]:
    """The element without the fields of :data:`IGNORED`."""
    out = dict(element)
    for kind, name in IGNORED:
        if kind in out:
            out[kind] = {k: v for k, v in out[kind].items() if k != name}
    return out


def metrics_of(elements: list[dict[str, Any]]) -> dict[str, str]:
    return {e["metric"]["label"]: e["metric"]["body"] for e in elements if "metric" in e}


def test_every_overview_and_stress_figure_is_unchanged_after_every_process_restarts(demo_stack: Stack) -> None:
    # Arrange: the replay ran to its end and the monitor caught up; every figure read by a fresh dashboard
    wait_for("the replay to end and the monitor to catch up", lambda: market_settled(demo_stack), demo_stack)
    running = pids(demo_stack)
    running.pop("stream")  # exited with its replay
    before = read_pages(demo_stack)
    # Act: every process stopped by PID and started again on the same data directory
    restart_every_process(demo_stack, running)
    after = read_pages(demo_stack)
    # Assert: every element equal, stressed VaR included (and the figures are figures, not blanks)
    for spec in PAGES:
        assert len(after[spec]) == len(before[spec]), spec
        for i, (old, new) in enumerate(zip(before[spec], after[spec], strict=True)):
            assert comparable(new) == comparable(old), f"{spec} element {i} changed across the restart"
    for pid in ("main", "hedge"):
        # the Overview's stressed VaR is the snapshot the first monitor wrote (kept by the AOF); the Stress
        # tab's is computed again by the new dashboard process from the stored matrices: the same figure
        overview, stress = metrics_of(after[f"overview:{pid}"]), metrics_of(after[f"risk/Stress:{pid}"])
        assert overview["Stressed VaR 99%"] == stress["Stressed VaR 99%"]
        assert stress["Stressed VaR 95%"].startswith("USD ") and stress["Stressed VaR 95%"] != "USD 0"
        assert overview["Equity"].startswith("USD ")
