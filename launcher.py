"""Bring the whole system up or down: ``python launcher.py start|demo|stop|status`` (``make run`` / ``make demo`` /
``make stop``).

``start`` starts the embedded Redis (unless ``REDIS_URL`` is set or it already runs), seeds the store when it
is empty, then starts every service of :data:`SERVICES` that is not running yet, each with its PID file and log
under ``<data_dir>/run`` and ``<data_dir>/log``. Running it twice starts nothing twice, even at once: ``start``,
``demo`` and ``stop`` hold an exclusive lock (``<data_dir>/run/launcher.lock``) for their whole run, and a second
one waits for it (:meth:`Launcher.exclusive`). ``stop`` stops, by PID, what ``start`` started: services first,
Redis last (so its AOF holds everything they wrote).

The archiver (``python -m engine.archive``) is one of the services: a process of its own, so its file writes and
fsyncs never delay a tick, a delivery or a page. It moves the audit streams' older records to
``archive.directory`` (default ``<data_dir>/archive``; ``start`` prints where) and trims them from Redis only
once they are on disk.

Clock: the stream daemon plays one one-minute model bar per ``model.bar_seconds`` (60) of wall time. ``start
--compressed-clock S`` (``make run`` passes 2) sets ``model.demo_clock_seconds`` for every process: one bar
every ``S`` seconds, and the dashboard shows a "Demo clock" badge on every page.

``demo`` (``make demo``) is ``start`` on real data, with ``configs/demo.toml`` unless ``--config`` names another
file: it writes the weekly closes bundled with plotly as CSVs under ``<data_dir>/demo-data``
(engine/demo_data.py), seeds an empty store with ``warmup.py --history history.csv --positions book.csv`` (the
covariance from 2018's weekly returns, the demo book at its 2018 cost) and starts the stream daemon as
``--feed replay --file replay.csv --interval S`` (``--interval``, default :data:`DEMO_BAR_SECONDS`). When the
file ends the stream daemon exits and the dashboard shows the market going stale, as it would for a dead feed.
Stop it with ``python launcher.py stop --config configs/demo.toml`` (``make stop`` stops both).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from engine.archive import archive_directory
from engine.errors import RiskdeskError, StoreError
from engine.redis_server import EmbeddedRedis, connect, describe_server, owned_pid, server_binary, server_version
from engine.settings import Settings, load_settings
from engine.store import Store
from logic import access

ROOT = Path(__file__).resolve().parent
STOP_TIMEOUT_SECONDS = 10.0
DEMO_CONFIG = "configs/demo.toml"
"""Settings of ``launcher.py demo`` (relative to the repository)."""
CHILD_ENV_DEFAULTS = {"PYTHONUNBUFFERED": "1", "OPENBLAS_NUM_THREADS": "1"}
"""Set in every daemon's environment unless already set: unbuffered logs, and one BLAS thread per process (the
numeric processes share the cores: BLAS threads of their own would oversubscribe them and stall)."""
DEMO_BAR_SECONDS = 3.0
"""Wall seconds per replayed weekly bar in the demo: about 3 minutes for Oct 2018 - Dec 2019."""
DEMO_CLOCK_ENV = "RISKDESK__MODEL__DEMO_CLOCK_SECONDS"
LOCK_NAME = "launcher.lock"
"""In ``<data_dir>/run``: held (flock) by ``start``, ``demo`` and ``stop`` for their whole run."""
LOCK_WAIT_SECONDS = 90.0
"""How long ``start``/``stop`` wait for another launcher on the same data directory before refusing: longer than a
slow ``stop`` (six services at :data:`STOP_TIMEOUT_SECONDS` each, then Redis's 15 s) or a start, so a second
``make run`` typed during the first waits and then reports what runs."""
LOCK_POLL_SECONDS = 0.05


def with_child_defaults(env: dict[str, str]) -> dict[str, str]:
    """``env`` with :data:`CHILD_ENV_DEFAULTS` set where it does not set them already (in place; returned)."""
    for name, value in CHILD_ENV_DEFAULTS.items():
        env.setdefault(name, value)
    return env


@dataclass(frozen=True)
class Service:
    name: str
    argv: tuple[str, ...]
    requires: str
    """Path (relative to the repository) that must exist for the service to be started."""

    @property
    def marker(self) -> str:
        """What identifies this service's process in its command line (its module or script)."""
        if self.requires in self.argv:  # the dashboard: streamlit runs the script
            return self.requires
        return self.argv[self.argv.index("-m") + 1]


def services(settings: Settings, stream_args: Sequence[str] = ()) -> tuple[Service, ...]:
    """The daemons and the dashboard, in start order (``stream_args``: the stream daemon's feed options)."""
    py = sys.executable
    return (
        Service("stream", (py, "-m", "engine.stream", *stream_args), "engine/stream.py"),
        Service("monitor", (py, "-m", "logic.monitor"), "logic/monitor.py"),
        Service("backtest", (py, "-m", "logic.backtest_runner"), "logic/backtest_runner.py"),
        Service("notify", (py, "-m", "notifications"), "notifications/__main__.py"),
        Service("archive", (py, "-m", "engine.archive"), "engine/archive.py"),
        Service(
            "dashboard",
            (
                py, "-m", "streamlit", "run", "dashboard/app.py",
                "--server.address", settings.dashboard.address,
                "--server.port", str(settings.dashboard.port),
                "--server.headless", "true",
                "--browser.gatherUsageStats", "false",
            ),
            "dashboard/app.py",
        ),
    )  # fmt: skip


def metrics_lines(settings: Settings) -> list[str]:
    """Where each daemon serves Prometheus ``/metrics`` (``[metrics]``; a port of 0 serves none)."""
    cfg = settings.metrics
    host = f"[{cfg.address}]" if ":" in cfg.address else cfg.address
    ports = (
        ("stream", cfg.stream_port), ("monitor", cfg.monitor_port), ("backtest", cfg.backtest_port),
        ("notify", cfg.notifications_port),
    )  # fmt: skip
    return [f"Metrics ({name}): http://{host}:{port}/metrics" for name, port in ports if port]


class LauncherError(RiskdeskError):
    code = "LAUNCH_FAILED"
    fix = "read the message; `python launcher.py stop` then start again"


def login_configured(root: Path = ROOT) -> bool:
    """Whether Streamlit's login is configured: a complete ``[auth]`` section in ``.streamlit/secrets.toml`` of
    the user's home or of the repository (the two places ``streamlit run`` reads). False only when neither file
    exists or neither has an ``[auth]`` section; a file that cannot be read or parsed, or an incomplete
    ``[auth]``, raises :class:`~engine.errors.ConfigError` naming the file and the problem (fail closed: never
    the local operator mode by accident)."""
    return access.login_configured((Path.home() / access.SECRETS_FILE, root / access.SECRETS_FILE))


def check_binding(settings: Settings, root: Path = ROOT) -> None:
    """Refuse to start with a broken login configuration (:func:`login_configured` raises), and refuse to serve
    the dashboard beyond the loopback interface without login (anyone reaching it could trade and switch
    circuit breakers off)."""
    address = settings.dashboard.address
    configured = login_configured(root)  # first: a broken secrets file refuses even a loopback address
    if not access.is_loopback(address) and not configured:
        raise LauncherError(
            f"dashboard.address = {address!r} is not a loopback address and no login is configured: the "
            f"dashboard would accept anyone on the network as the local operator",
            fix=f'set dashboard.address = "127.0.0.1" in the settings, or configure login ([auth] in '
            f"{access.SECRETS_FILE}, see README, \"Login and roles\")",
        )


class Launcher:
    def __init__(
        self,
        settings: Settings,
        root: Path = ROOT,
        *,
        config: str | os.PathLike[str] | None = None,
        stream_args: Sequence[str] = (),
        lock_wait_seconds: float = LOCK_WAIT_SECONDS,
    ) -> None:
        self.settings = settings
        self.lock_wait_seconds = lock_wait_seconds
        self.root = root
        self.config = None if config is None else Path(config).resolve()
        """The settings file, handed to every child (RISKDESK_CONFIG) so they read what the launcher read."""
        self.stream_args = tuple(stream_args)
        data_dir = Path(settings.redis.data_dir)
        self.data_dir = data_dir if data_dir.is_absolute() else root / data_dir
        self.run_dir = self.data_dir / "run"
        self.log_dir = self.data_dir / "log"

    @property
    def embedded(self) -> EmbeddedRedis | None:
        if self.settings.redis.url:
            return None
        return EmbeddedRedis(self.data_dir, self.settings.redis.appendfsync, self.settings.redis.server)

    def redis_server_line(self) -> str:
        """Which server the desk uses and its version: from the running server's INFO, else (stopped) from the
        binary ``redis.server`` would start; never raises."""
        embedded = self.embedded
        try:
            info = connect(self.child_env()["REDIS_URL"], timeout=2.0).info("server")
            return f"redis      server {describe_server(info, started_here=embedded is not None)}"
        except (redis.RedisError, OSError):
            pass
        if embedded is None:
            return "redis      server unreachable at REDIS_URL"
        try:
            binary = server_binary(self.settings.redis.server)
        except StoreError as exc:
            return f"redis      server: {exc}"
        return f"redis      server {server_version(binary)} ({binary}, redis.server = {self.settings.redis.server})"

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        embedded = self.embedded
        env["REDIS_URL"] = embedded.url if embedded is not None else str(self.settings.redis.url)
        if self.config is not None:
            env["RISKDESK_CONFIG"] = str(self.config)
        return with_child_defaults(env)

    @contextlib.contextmanager
    def exclusive(self, doing: str) -> Iterator[None]:
        """Hold ``<data_dir>/run/launcher.lock`` (:data:`LOCK_NAME`, an exclusive ``flock``) while ``doing``
        (``starting``, ``stopping``): one launcher at a time per data directory.

        Why: ``start`` checks what runs and then starts what does not; two at once (two ``make run``) each found
        Redis and every service stopped, started two of each (one Redis orphaned: its PID file overwritten, so
        ``stop`` left it running on the shared AOF) and seeded the store twice. A second caller waits up to
        ``lock_wait_seconds`` (:data:`LOCK_WAIT_SECONDS`), saying so on stderr, then refuses with
        :class:`LauncherError` naming the holder's PID. The lock is released when the block exits, however it
        exits (the descriptor is closed), and the kernel drops a flock when its process dies (a launcher killed
        mid-start never leaves it held). The descriptor is not inheritable (Python's default), so the daemons
        started under it do not hold it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + self.lock_wait_seconds
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = _lock_holder(fd)
                    if time.monotonic() >= deadline:
                        raise LauncherError(
                            f"another launcher is {holder} on {self.data_dir} (lock {path}); gave up after "
                            f"{self.lock_wait_seconds:g} s",
                            fix="let it finish (`python launcher.py status` shows what runs), then run the command "
                            "again; the lock is held by a live process (a dead one's lock is dropped by the kernel)",
                        ) from None
                    if not told:
                        print(f"launcher: another launcher is {holder}; waiting up to {self.lock_wait_seconds:g} s",
                              file=sys.stderr)  # fmt: skip
                        told = True
                    time.sleep(LOCK_POLL_SECONDS)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {doing}\n".encode(), 0)  # read by a waiting launcher (_lock_holder)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the flock

    def start(self, seed_args: Sequence[str] | None = None) -> list[str]:
        """Start what is not running; an empty store is seeded from the settings, or with ``python warmup.py
        *seed_args`` when given (the demo's history and book). Under the launcher lock (:meth:`exclusive`)."""
        with self.exclusive("starting"):
            return self._start(seed_args)

    def _start(self, seed_args: Sequence[str] | None) -> list[str]:
        lines: list[str] = []
        if (self.root / "dashboard/app.py").exists():
            check_binding(self.settings, self.root)
        embedded = self.embedded
        if embedded is not None:
            started = embedded.start()
            lines.append(f"redis      {'started' if started else 'already running'} (pid {embedded.pid()}) "
                         f"at {embedded.url}")  # fmt: skip
        else:
            lines.append(f"redis      using REDIS_URL {_redact(self.settings.redis.url or '')}")
        lines.append(self.redis_server_line())
        store = Store(connect(self.child_env()["REDIS_URL"]))
        store.ping()
        if store.schema_version() is None and seed_args is not None:
            done = subprocess.run(
                [sys.executable, "warmup.py", *seed_args], cwd=self.root, env=self.child_env(),
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise LauncherError(f"warmup.py {' '.join(seed_args)} failed: {done.stderr.strip()}")
            lines.append("warmup     " + done.stdout.strip().removeprefix("warmup: "))
        elif store.schema_version() is None:
            import warmup

            changed = warmup.seed(store, self.settings)
            lines.append("warmup     seeded " + "; ".join(changed))
        else:
            store.require_schema()
            lines.append("warmup     store already seeded")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for service in services(self.settings, self.stream_args):
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

    def demo(self, interval: float = DEMO_BAR_SECONDS) -> list[str]:
        """``start`` on the real weekly closes bundled with plotly (see the module docstring)."""
        from engine import demo_data

        with self.exclusive("starting"):  # also over the export: another demo's warm-up may be reading the files
            files = demo_data.export(self.data_dir / "demo-data", self.settings)
            self.stream_args = ("--feed", "replay", "--file", str(files.replay), "--interval", repr(float(interval)))
            tickers = ", ".join(self.settings.universe.assets)
            where = files.replay.parent
            lines = [f"demo       {files.weeks} weekly closes of {tickers} (plotly.data.stocks) in {where}"]
            seed = ("--history", str(files.history), "--positions", str(files.book))
            return lines + self._start(seed_args=seed)

    def pid(self, name: str) -> int | None:
        """PID of a running service; a stale PID file (process gone or PID reused) is removed, never trusted."""
        marker = next(s.marker for s in services(self.settings) if s.name == name)
        return owned_pid(self.run_dir / f"{name}.pid", marker)

    def stop(self) -> list[str]:
        """Stop the services, then Redis, by PID; under the launcher lock (:meth:`exclusive`), so a ``start`` in
        progress is never half stopped and cannot start something after ``stop`` looked."""
        with self.exclusive("stopping"):
            return self._stop()

    def _stop(self) -> list[str]:
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
        lines.append(self.redis_server_line())
        for service in services(self.settings):
            pid = self.pid(service.name)
            lines.append(f"{service.name:<10} {f'running (pid {pid})' if pid else 'stopped'}")
        return lines


def _lock_holder(fd: int) -> str:
    """What the launcher holding the lock open as ``fd`` wrote in it: ``"starting (pid 123)"``; ``pid unknown``
    in the instant between its taking the lock and writing."""
    words = os.pread(fd, 64, 0).decode(errors="replace").split()
    if len(words) == 2 and words[0].isdigit():
        return f"{words[1]} (pid {words[0]})"
    return "starting/stopping (pid unknown)"


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


SECRET_QUERY_KEYS = frozenset({"password", "pass", "passwd", "pwd", "secret", "token", "auth", "key"})
"""Query parameters of a URL whose values :func:`_redact` hides (redis-py reads ``?password=``), compared in
lower case; a key containing one of ``password``, ``secret`` or ``token`` is hidden too."""
REDACTED = "***"


def _redact(url: str) -> str:
    """``url`` fit to print: the password of its userinfo (``redis://user:pw@host`` -> ``redis://user:***@host``;
    a userinfo without ``:`` is hidden whole) and the value of every password- or secret-like query parameter
    (:data:`SECRET_QUERY_KEYS`; redis-py reads ``?password=``) replaced by ``***``; host, port, path and the
    other parameters kept. A password holding an unescaped ``/``, ``?`` or ``#`` ends the URL's authority early:
    then everything up to the last ``@`` is hidden. A URL that does not parse is hidden whole."""
    from urllib.parse import parse_qsl, urlencode, urlsplit

    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)  # a host holds no '@', a password may
            user = f"{userinfo.split(':', 1)[0]}:" if ":" in userinfo else ""
            netloc = f"{user}{REDACTED}@{host}"
        elif "@" in url.partition("://")[2]:
            return _redact(f"{parts.scheme}://{REDACTED}@{url.rpartition('@')[2]}")
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if _secret_key(k) else v) for k, v in pairs], safe="*") if pairs else ""
        authority = f"//{netloc}" if netloc or url.startswith(f"{parts.scheme}://") else ""
        scheme = f"{parts.scheme}:" if parts.scheme else ""
        tail = (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")
        return f"{scheme}{authority}{parts.path}{tail}"
    except ValueError:
        return REDACTED


def _secret_key(key: str) -> bool:
    """Whether a query parameter named ``key`` holds a secret (:data:`SECRET_QUERY_KEYS`)."""
    key = key.strip().lower()
    return key in SECRET_QUERY_KEYS or any(word in key for word in ("password", "secret", "token"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="start, stop or inspect the Riskdesk processes")
    parser.add_argument("command", choices=("start", "demo", "stop", "status"))
    parser.add_argument(
        "--config", help=f"settings file (default: $RISKDESK_CONFIG or riskdesk.toml; demo: {DEMO_CONFIG})"
    )
    parser.add_argument(
        "--compressed-clock", type=float, metavar="SECONDS",
        help="start: a demo clock, one one-minute model bar every SECONDS of wall time (shown on the dashboard)",
    )  # fmt: skip
    parser.add_argument(
        "--interval", type=float, default=DEMO_BAR_SECONDS, metavar="SECONDS",
        help=f"demo: wall seconds per replayed weekly bar (default {DEMO_BAR_SECONDS:g})",
    )  # fmt: skip
    args = parser.parse_args(argv)
    config = args.config
    if config is None and args.command == "demo" and not os.environ.get("RISKDESK_CONFIG"):
        config = str(ROOT / DEMO_CONFIG)
    if args.compressed_clock is not None:
        if args.command != "start" or not args.compressed_clock >= 0:
            print("error: --compressed-clock SECONDS (>= 0) goes with start", file=sys.stderr)
            return 2
        os.environ[DEMO_CLOCK_ENV] = repr(float(args.compressed_clock))  # this process and every child
    try:
        launcher = Launcher(load_settings(config), config=config)
        lines = launcher.demo(args.interval) if args.command == "demo" else getattr(launcher, args.command)()
    except RiskdeskError as exc:
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    if args.command in ("start", "demo"):
        if (launcher.root / "dashboard/app.py").exists():
            print(f"\nDashboard: http://{launcher.settings.dashboard.address}:{launcher.settings.dashboard.port}")
        print(f"Audit archive: {archive_directory(launcher.settings, launcher.root)}")
        for line in metrics_lines(launcher.settings):
            print(line)
        if launcher.settings.model.compressed_clock:
            print(f"Demo clock: one one-minute model bar every {launcher.settings.model.bar_interval_seconds:g} s "
                  "(the dashboard says so); without --compressed-clock one bar per minute.")  # fmt: skip
        print("Stop everything with `make stop`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
