"""Real Prometheus and Alertmanager servers (Debian's ``prometheus`` and ``prometheus-alertmanager``) for the
integration tests: each on a free loopback port with its data in a temporary directory, stopped by PID.

A test needing a missing binary is skipped on a developer's machine and fails in CI (the ``CI`` environment
variable set, as ``.ci/run`` does), where ``.ci/run`` installs both packages: CI must prove it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT_SECONDS = 60.0


def require_binary(name: str) -> str:
    """The binary's path; skip when it is missing, unless in CI (then fail: CI installs it)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not installed (apt-get install -y {debian_package(name)}; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {message}")
        pytest.skip(message)
    return path


def debian_package(binary: str) -> str:
    return {"prometheus": "prometheus", "prometheus-alertmanager": "prometheus-alertmanager"}.get(binary, binary)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def get_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode("utf-8"))


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``condition`` until it returns a truthy value (returned); HTTP and socket errors count as not yet."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last!r})")


def stop_pid(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM by PID, SIGKILL after ``timeout``."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


@contextmanager
def server_process(argv: Sequence[str], log: Path, ready_url: str, what: str) -> Iterator[subprocess.Popen[bytes]]:
    out = log.open("wb")
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
            return get_text(ready_url) != ""

        wait_until(ready, START_TIMEOUT_SECONDS, f"{what} to be ready")
        yield proc
    finally:
        stop_pid(proc)
        out.close()


@contextmanager
def alertmanager(tmp: Path) -> Iterator[str]:
    """A real Alertmanager on loopback (no clustering, one receiver that sends nothing); yields its base URL."""
    binary = require_binary("prometheus-alertmanager")
    port = free_port()
    config = tmp / "alertmanager.yml"
    config.write_text(
        "route:\n  receiver: devnull\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n"
        "receivers:\n  - name: devnull\n"
    )
    (tmp / "am-data").mkdir()
    url = f"http://127.0.0.1:{port}"
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.path={tmp / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    with server_process(argv, tmp / "alertmanager.log", f"{url}/-/ready", "alertmanager"):
        yield url


@contextmanager
def prometheus(tmp: Path, targets: Sequence[str], scrape_interval: str = "1s") -> Iterator[str]:
    """A real Prometheus on loopback scraping ``targets`` (``host:port``); yields its base URL."""
    binary = require_binary("prometheus")
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: {scrape_interval}\n"
        "scrape_configs:\n  - job_name: riskdesk\n    static_configs:\n"
        f"      - targets: {json.dumps(list(targets))}\n"
    )
    (tmp / "prom-data").mkdir()
    url = f"http://127.0.0.1:{port}"
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'prom-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with server_process(argv, tmp / "prometheus.log", f"{url}/-/ready", "prometheus"):
        yield url


def promql(base_url: str, query: str) -> list[dict[str, Any]]:
    """The instant vector of ``query`` (HTTP API ``/api/v1/query``): ``[{"metric": {...}, "value": [t, "v"]}]``."""
    reply = get_json(f"{base_url}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
    if reply.get("status") != "success":
        raise AssertionError(f"query {query!r} failed: {reply}")
    result: list[dict[str, Any]] = reply["data"]["result"]
    return result
