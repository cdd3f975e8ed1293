"""The daemons' /metrics scraped by Debian's real ``prometheus``: after a short run, PromQL (HTTP API
``/api/v1/query``) returns the ticks the monitor processed and each portfolio's VaR gauges as the store holds
them. The stream daemon and the monitor run as they ship (``python -m ...``), on the test's Redis."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

import warmup
from engine.settings import settings_from_dict
from engine.store import Store

from .conftest import TEST_CONFIG, merge, to_toml
from .prom_support import free_port, get_text, prometheus, promql, wait_until
from .test_stream import daemon_env, spawn, stop_process, wait_for

pytestmark = pytest.mark.slow

TICKS = 40


def value(base: str, query: str) -> float | None:
    result = promql(base, query)
    return float(result[0]["value"][1]) if len(result) == 1 else None


def test_prometheus_scrapes_ticks_processed_and_the_var_gauges_the_store_holds(
    store: Store, redis_server: Any, tmp_path: Path
) -> None:
    stream_port, monitor_port = free_port(), free_port()
    config = merge(TEST_CONFIG, {"metrics": {"stream_port": stream_port, "monitor_port": monitor_port}})
    warmup.seed(store, settings_from_dict(config))
    store.ensure_tick_group("monitor")  # the monitor reads every tick published from now on
    path = tmp_path / "riskdesk.toml"
    path.write_text(to_toml(config))
    env = daemon_env(redis_server.url, path)
    procs: list[subprocess.Popen[bytes]] = []
    monitor_target, stream_target = f"127.0.0.1:{monitor_port}", f"127.0.0.1:{stream_port}"
    try:
        procs.append(spawn("logic.monitor", ["--idle-refresh", "0", "--no-alerts"], env, tmp_path / "monitor.log"))
        wait_until(lambda: get_text(f"http://{monitor_target}/metrics"), 60, "the monitor's /metrics")
        with prometheus(tmp_path, [monitor_target, stream_target]) as base:
            # Prometheus scrapes (every 1 s) before the stream starts, and the stream's 40 bars take 10 s: the
            # daemon is scraped several times while it runs, however slowly the machine starts processes
            wait_until(lambda: value(base, f'up{{instance="{monitor_target}"}}') == 1, 60, "the first scrape")
            args = f"--feed sim --interval 0.25 --ticks {TICKS} --seed 5".split()
            procs.append(spawn("engine.stream", args, env, tmp_path / "stream.log"))

            def processed() -> bool:
                hb = store.read_heartbeat("monitor") or {}
                return hb.get("ticks_processed") == str(TICKS)

            wait_for(processed, 90, f"the monitor to process {TICKS} ticks")
            assert procs[1].wait(30) == 0  # the stream daemon read its ticks and stopped
            ticks = wait_until(
                lambda: value(base, "riskdesk_monitor_ticks_processed_total") == TICKS, 60, "the scraped tick count"
            )
            assert ticks
            for pid in ("main", "hedge"):
                snap = store.read_snapshot(pid)
                assert snap is not None and snap["version"] == TICKS
                for confidence, key in (("0.95", "var95"), ("0.99", "var99")):
                    query = f'riskdesk_portfolio_var{{portfolio="{pid}",confidence="{confidence}"}}'
                    expected = snap["var"][key]

                    def scraped(q: str = query, e: float = expected) -> bool:
                        return value(base, q) == e

                    wait_until(scraped, 30, f"{pid} {key}")
            # the stream daemon was scraped while it ran: its bars written never exceed the store's version
            stream = f'{{instance="{stream_target}"}}'
            written = value(base, f"max_over_time(riskdesk_stream_bars_written_total{stream}[10m])")
            assert written is not None and 0 < written <= store.read_market().version == TICKS
            assert value(base, f"max_over_time(riskdesk_market_version{stream}[10m])") == written
    finally:
        for proc in reversed(procs):
            stop_process(proc)
