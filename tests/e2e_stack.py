"""End-to-end harness: a private Riskdesk stack and a headless Chromium on it.

Used by ``tests/test_browser.py``, ``make screenshots`` and ``benchmarks/bench_dashboard.py``. :class:`Stack`
does what ``make run`` does (``launcher.py start``: embedded Redis, warm-up, stream daemon, monitor,
``streamlit run``) on a temporary data directory and a free loopback port, and stops it all by PID
(``launcher.py stop``). :func:`launch_chromium` starts Debian's ``/usr/bin/chromium`` through Playwright.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
START_TIMEOUT_SECONDS = 60.0
PAGE_TIMEOUT_MS = 30_000
EXCEPTION_SELECTOR = '[data-testid="stException"]'
CHART_SELECTOR = '[data-testid="stPlotlyChart"] .main-svg'
PAGE_PATHS = {
    "Overview": "",
    "Trade": "trade",
    "Risk": "risk",
    "Performance": "performance",
    "Alerts": "alerts",
    "System": "system",
    "Firm": "firm",
    "Limits": "limits",
    "Audit": "audit",
}
"""Page title -> URL path (st.navigation derives it from the page file name)."""


def toml_dumps(data: Mapping[str, Any]) -> str:
    """Enough TOML for a settings file: tables, arrays of tables, inline tables, scalars and arrays."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, Mapping):
            return "{" + ", ".join(f"{json.dumps(str(k))} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"cannot write {type(v).__name__} as TOML")

    def body(table: Mapping[str, Any]) -> list[str]:
        return [f"{json.dumps(str(k))} = {value(v)}" for k, v in table.items()]

    top: list[str] = []
    lines: list[str] = []
    for key, val in data.items():
        if isinstance(val, list | tuple) and val and all(isinstance(x, Mapping) for x in val):
            for item in val:
                lines += [f"[[{key}]]", *body(item), ""]
        elif isinstance(val, Mapping):
            lines += [f"[{key}]", *body(val), ""]
        else:
            top.append(f"{json.dumps(key)} = {value(val)}")
    return "\n".join(top + lines) + "\n"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """``launcher.py start`` on a temporary store; ``stop()`` (or leaving the ``with``) stops it by PID.

    Parameters
    ----------
    bar_interval:
        Wall seconds per model bar of the stream daemon (fast, so the monitor's history grows quickly).
    env:
        Extra environment (``RISKDESK__...`` overrides) for every process.
    command, args:
        The launcher command that starts the stack and its options: ``"demo", ("--interval", "1")`` brings up
        the real-data replay of ``make demo`` (configs/demo.toml) instead of the simulated feed.
    """

    def __init__(
        self,
        bar_interval: float = 0.5,
        env: dict[str, str] | None = None,
        command: str = "start",
        args: tuple[str, ...] = (),
    ) -> None:
        self.command, self.args = command, args
        # a short path: the embedded Redis listens on a unix socket in it (~107 bytes at most)
        self.data_dir = Path(tempfile.mkdtemp(prefix="rde2e-"))
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RISKDESK_CONFIG")}
        self.env.update(
            {
                "RISKDESK__REDIS__DATA_DIR": str(self.data_dir),
                "RISKDESK__DASHBOARD__PORT": str(self.port),
                "RISKDESK__MODEL__DEMO_CLOCK_SECONDS": repr(float(bar_interval)),
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env.update(env or {})
        self.started = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def redis_url(self) -> str:
        from engine.redis_server import EmbeddedRedis

        return EmbeddedRedis(self.data_dir).url

    def settings(self) -> Any:
        """The settings every process of the stack reads (riskdesk.toml with this stack's overrides)."""
        from engine.settings import load_settings

        return load_settings(env=self.env)

    def _launcher(self, command: str, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "launcher.py", command, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_SECONDS,
        )
        if done.returncode != 0:
            raise RuntimeError(f"launcher.py {command} failed ({done.returncode}): {done.stderr or done.stdout}")
        return done.stdout

    def start(self) -> Stack:
        self.started = True
        self._launcher(self.command, *self.args)
        self.wait_until_ready()
        return self

    def wait_until_ready(self) -> None:
        """The dashboard answers its health check, the stream has written a bar and the monitor a snapshot."""
        from engine.redis_server import connect
        from engine.store import Store

        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        store = Store(connect(self.redis_url))
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as response:
                    healthy = response.status == 200
            except (urllib.error.URLError, OSError):
                healthy = False
            version = store.read_market_version() or 0
            snapshot = store.read_snapshot("main") if hasattr(store, "read_snapshot") else {}
            if healthy and version >= 2 and snapshot:
                store.client.close()
                return
            time.sleep(0.2)
        store.client.close()
        raise TimeoutError(f"the stack did not come up in {START_TIMEOUT_SECONDS:.0f} s; logs: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        out = []
        for log in sorted((self.data_dir / "log").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out)

    def stop(self) -> None:
        if self.started:
            try:
                self._launcher("stop")
            finally:
                self.started = False
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


@contextlib.contextmanager
def chromium_browser() -> Iterator[Any]:
    """A headless Chromium (playwright, :func:`launch_chromium`) for one test module; closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser
        finally:
            browser.close()


def launch_chromium(playwright: Any) -> Any:
    """Debian's chromium, headless, with nothing talking to the network on its own."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))


def open_page(page: Any, base_url: str, title: str) -> None:
    """Go to a dashboard page and wait until its title is shown and the script has finished its run."""
    page.goto(f"{base_url}/{PAGE_PATHS[title]}", wait_until="domcontentloaded")
    wait_rendered(page, title)


def wait_rendered(page: Any, title: str) -> None:
    page.get_by_role("heading", name=title, level=1).wait_for(timeout=PAGE_TIMEOUT_MS)
    settle(page)


def settle(page: Any) -> None:
    """Wait until no script runs and every element is drawn (lazy widgets show a skeleton first)."""
    page.wait_for_function(
        '() => !document.querySelector(\'[data-testid="stStatusWidget"], [data-testid="stSkeleton"]\')',
        timeout=PAGE_TIMEOUT_MS,
    )
