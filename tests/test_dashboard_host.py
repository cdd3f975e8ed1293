"""Without login configured the dashboard is the local operator's only (issue 13): started as ``make run`` does
(``launcher.py start``) and as a plain ``streamlit run dashboard/app.py`` it listens on 127.0.0.1 only, and a
request naming a foreign host (DNS rebinding: a page on evil.test whose name now resolves to 127.0.0.1) is
refused by the app before any widget exists, while the same page by its own address works."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from .e2e_stack import CHROMIUM, CHROMIUM_ARGS, PAGE_TIMEOUT_MS, ROOT, Stack, free_port, open_page

REFUSED = "Refused: this dashboard does not answer for host"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack(bar_interval=0.5) as running:
        yield running


def listening(pid: int) -> set[str]:
    """The addresses the process listens on (TCP)."""
    return {c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer")


def test_make_run_listens_on_loopback_only(stack: Stack) -> None:
    pid = int((stack.data_dir / "run" / "dashboard.pid").read_text())
    assert listening(pid) == {"127.0.0.1"}


def test_plain_streamlit_run_listens_on_loopback_only(stack: Stack) -> None:
    port = free_port()
    env = {k: v for k, v in stack.env.items() if k != "RISKDESK__DASHBOARD__PORT"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port)],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        assert listening(proc.pid) == {"127.0.0.1"}  # from .streamlit/config.toml, no flag given
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def rebinding_browser() -> Iterator[Any]:
    """Chromium resolving evil.test to 127.0.0.1: what DNS rebinding does to a victim's browser."""
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        args = [*CHROMIUM_ARGS, "--host-resolver-rules=MAP evil.test 127.0.0.1"]
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.mark.browser
def test_a_foreign_host_header_is_refused(stack: Stack, rebinding_browser: Any) -> None:
    context = rebinding_browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://evil.test:{stack.port}/trade", wait_until="domcontentloaded")
        page.get_by_text(REFUSED).wait_for(timeout=PAGE_TIMEOUT_MS)
        assert "evil.test" in page.get_by_text(REFUSED).inner_text()
        assert page.get_by_role("heading", name="Trade", level=1).count() == 0
        assert page.get_by_role("button", name="Check").count() == 0
        # the same browser by the dashboard's own address: served as usual
        open_page(page, stack.url, "Trade")
        assert page.get_by_text(REFUSED).count() == 0
    finally:
        context.close()
