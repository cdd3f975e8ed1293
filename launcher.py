"""Bring the whole system up or down: ``python launcher.py start|stop|status`` (``make run`` / ``make stop``).

``start`` starts the embedded Redis (unless ``REDIS_URL`` is set or it already runs), seeds the store when it
is empty, then starts every service of :data:`SERVICES` that is not running yet, each with its PID file and log
under ``<data_dir>/run`` and ``<data_dir>/log``. Running it twice starts nothing twice. ``stop`` stops, by PID,
what ``start`` started: services first, Redis last (so its AOF holds everything they wrote).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import RiskdeskError
from engine.redis_server import EmbeddedRedis, connect
from engine.settings import Settings, load_settings
from engine.store import Store

ROOT = Path(__file__).resolve().parent
STOP_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Service:
    name: str
    argv: tuple[str, ...]
    requires: str
    """Path (relative to the repository) that must exist for the service to be started."""


def services(settings: Settings) -> tuple[Service, ...]:
    """The daemons and the dashboard, in start order."""
    py = sys.executable
    return (
        Service("stream", (py, "-m", "engine.stream"), "engine/stream.py"),
        Service("monitor", (py, "-m", "logic.monitor"), "logic/monitor.py"),
        Service("notify", (py, "-m", "notifications"), "notifications/__main__.py"),
        Service(
            "dashboard",
            (
                py, "-m", "streamlit", "run", "dashboard/app.py",
                "--server.address", "127.0.0.1",
                "--server.port", str(settings.dashboard.port),
                "--server.headless", "true",
                "--browser.gatherUsageStats", "false",
            ),
            "dashboard/app.py",
        ),
    )  # fmt: skip


class Launcher:
    def __init__(self, settings: Settings, root: Path = ROOT) -> None:
        self.settings = settings
        self.root = root
        data_dir = Path(settings.redis.data_dir)
        self.data_dir = data_dir if data_dir.is_absolute() else root / data_dir
        self.run_dir = self.data_dir / "run"
        self.log_dir = self.data_dir / "log"

    @property
    def embedded(self) -> EmbeddedRedis | None:
        if self.settings.redis.url:
            return None
        return EmbeddedRedis(self.data_dir, self.settings.redis.appendfsync)

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        embedded = self.embedded
        env["REDIS_URL"] = embedded.url if embedded is not None else str(self.settings.redis.url)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # the numeric processes share two cores: one BLAS thread each avoids oversubscription stalls
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        return env

    def start(self) -> list[str]:
        lines: list[str] = []
        embedded = self.embedded
        if embedded is not None:
            started = embedded.start()
            lines.append(f"redis      {'started' if started else 'already running'} (pid {embedded.pid()}) "
                         f"at {embedded.url}")  # fmt: skip
        else:
            lines.append(f"redis      using REDIS_URL {_redact(self.settings.redis.url or '')}")
        store = Store(connect(self.child_env()["REDIS_URL"]))
        store.ping()
        if store.schema_version() is None:
            import warmup

            changed = warmup.seed(store, self.settings)
            lines.append("warmup     seeded " + "; ".join(changed))
        else:
            store.require_schema()
            lines.append("warmup     store already seeded")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for service in services(self.settings):
            if not (self.root / service.requires).exists():
                lines.append(f"{service.name:<10} not built yet ({service.requires} missing)")
                continue
            pid = self.pid(service.name)
            if pid is not None:
                lines.append(f"{service.name:<10} already running (pid {pid})")
                continue
            log = (self.log_dir / f"{service.name}.log").open("ab")
            proc = subprocess.Popen(
                service.argv, cwd=self.root, env=self.child_env(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            (self.run_dir / f"{service.name}.pid").write_text(str(proc.pid))
            lines.append(f"{service.name:<10} started (pid {proc.pid}), log {self.log_dir / (service.name + '.log')}")
        return lines

    def pid(self, name: str) -> int | None:
        path = self.run_dir / f"{name}.pid"
        try:
            pid = int(path.read_text().strip())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        return pid

    def stop(self) -> list[str]:
        lines = []
        for service in reversed(services(self.settings)):
            pid = self.pid(service.name)
            if pid is None:
                continue
            _terminate(pid)
            (self.run_dir / f"{service.name}.pid").unlink(missing_ok=True)
            lines.append(f"{service.name:<10} stopped (pid {pid})")
        embedded = self.embedded
        if embedded is not None and embedded.stop():
            lines.append("redis      stopped")
        return lines or ["nothing was running"]

    def status(self) -> list[str]:
        lines = []
        embedded = self.embedded
        if embedded is not None:
            running = f"running (pid {embedded.pid()})" if embedded.is_running() else "stopped"
            lines.append(f"redis      {running}")
        for service in services(self.settings):
            pid = self.pid(service.name)
            lines.append(f"{service.name:<10} {f'running (pid {pid})' if pid else 'stopped'}")
        return lines


def _terminate(pid: int) -> None:
    """SIGTERM the process group (the service and anything it spawned), SIGKILL after a timeout."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="start, stop or inspect the Riskdesk processes")
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("--config", help="settings file (default: $RISKDESK_CONFIG or riskdesk.toml)")
    args = parser.parse_args(argv)
    try:
        launcher = Launcher(load_settings(args.config))
        lines = getattr(launcher, args.command)()
    except RiskdeskError as exc:
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    if args.command == "start":
        if (launcher.root / "dashboard/app.py").exists():
            print(f"\nDashboard: http://127.0.0.1:{launcher.settings.dashboard.port}")
        print("Stop everything with `make stop`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
