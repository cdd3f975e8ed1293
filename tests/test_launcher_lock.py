"""One launcher at a time per data directory, and one Redis: two `make run` at once start one of everything.

The launcher runs for real (a real redis-server on a private data directory, the real warm-up) on a stand-in
repository root whose services are sleepers (their command lines are the real ones: ``python -m engine.stream``
...), and whose ``warmup.py`` (run by ``start(seed_args=...)``) can hold a start open at a gate the test opens.
Every process a test starts is found by its data directory or stand-in root and stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from engine.errors import StoreUnavailableError
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings, settings_from_dict
from launcher import Launcher, LauncherError

from .conftest import TEST_CONFIG, merge, server_kind_under_test

REPO = Path(__file__).resolve().parent.parent
SLEEPERS = {
    "stream": ("engine/stream.py", "engine.stream"),
    "monitor": ("logic/monitor.py", "logic.monitor"),
    "backtest": ("logic/backtest_runner.py", "logic.backtest_runner"),
    "notify": ("notifications/__main__.py", "notifications"),
    "archive": ("engine/archive.py", "engine.archive"),
}
"""The services of the stand-in root (the dashboard is left out: 'not built yet'), with their command-line marker."""
GATE_WARMUP = """\
import os, sys, time
from pathlib import Path
here = Path(__file__).parent
if sys.argv[1] == "fail":
    sys.exit("warm-up failed on purpose")
(here / "entering").write_text(str(os.getpid()))
(here / "entering").rename(here / "entered")  # whole, at once: the test reads the PID as soon as it appears
deadline = time.monotonic() + 60
while not (here / "release").exists():
    if time.monotonic() > deadline:
        sys.exit("never released")
    time.sleep(0.01)
print("warmup: gated")
"""
"""``warmup.py`` of the stand-in root: ``gate`` waits for the file ``release`` (after writing ``entered``),
``fail`` exits 1."""


@dataclass
class Desk:
    """A private data directory and stand-in root, and the settings naming them."""

    tmp: Path
    root: Path
    data: Path
    settings: Settings

    def launcher(self, wait: float = 30.0) -> Launcher:
        return Launcher(self.settings, root=self.root, lock_wait_seconds=wait)

    def redis_servers(self) -> list[int]:
        """Live redis-servers whose command line names this data directory's socket."""
        socket = str(self.data / "redis.sock")
        return [p.pid for p in _live() if "redis-server" in p.cmdline()[0] and any(socket in c for c in p.cmdline())]

    def services(self, marker: str) -> list[int]:
        """Live processes of the stand-in root running ``marker`` (``python -m engine.stream`` ...)."""
        return [p.pid for p in _live() if _cwd(p) == str(self.root) and marker in p.cmdline()]

    def pid_file(self, name: str) -> int:
        return int((self.data / "run" / f"{name}.pid").read_text())

    def spawn_start(self, seed: str | None = None, go: Path | None = None) -> subprocess.Popen[str]:
        """``Launcher.start()`` in a process of its own (after the file ``go`` appears), printing its lines as JSON."""
        code = textwrap.dedent(f"""
            import json, sys, time
            from pathlib import Path
            from engine.settings import settings_from_dict
            from launcher import Launcher
            launcher = Launcher(settings_from_dict(json.loads({json.dumps(json.dumps(self.config))})),
                                root=Path({str(self.root)!r}))
            go = {None if go is None else str(go)!r}
            while go is not None and not Path(go).exists():
                time.sleep(0.001)
            seed = {seed!r}
            print(json.dumps(launcher.start(None if seed is None else [seed])))
        """)
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("RISKDESK")}
        env["PYTHONPATH"] = str(REPO)
        return subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    @property
    def config(self) -> dict[str, object]:
        return merge(TEST_CONFIG, {"redis": {"data_dir": str(self.data), "server": server_kind_under_test()}})

    def wait_for(self, name: str, timeout: float = 60.0) -> Path:
        path = self.root / name
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert time.monotonic() < deadline, f"{path} never appeared"
            time.sleep(0.01)
        return path


@pytest.fixture
def desk() -> Iterator[Desk]:
    # short path: unix socket paths are limited to ~107 bytes
    tmp = Path(tempfile.mkdtemp(prefix="rdl-"))
    root = tmp / "root"
    for path, _ in SLEEPERS.values():
        file = root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        (file.parent / "__init__.py").touch()
        file.write_text("import time\ntime.sleep(300)\n")
    (root / "warmup.py").write_text(GATE_WARMUP)
    data = tmp / "d"
    d = Desk(tmp, root, data, settings_from_dict({}))
    d.settings = settings_from_dict(d.config)
    try:
        yield d
    finally:
        (root / "release").touch()  # a gated warm-up still waiting exits
        for proc in _live():  # everything this test started, by PID: launchers, warm-ups, services, servers
            if proc.pid != os.getpid() and (_cwd(proc) == str(root) or any(str(tmp) in c for c in proc.cmdline())):
                with contextlib.suppress(psutil.Error):
                    os.kill(proc.pid, signal.SIGCONT)
                    os.kill(proc.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


def _live() -> Iterator[psutil.Process]:
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.cmdline():
                yield proc
        except psutil.Error:
            continue


def _cwd(proc: psutil.Process) -> str | None:
    try:
        return proc.cwd()
    except psutil.Error:
        return None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _lines(proc: subprocess.Popen[str]) -> list[str]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines: list[str] = json.loads(out.strip().splitlines()[-1])
    return lines


def _timed(call: Callable[[], object]) -> tuple[float, BaseException | None]:
    began = time.monotonic()
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - returned to the test, which asserts what it is
        return time.monotonic() - began, exc
    return time.monotonic() - began, None


# -- two launchers at once ---------------------------------------------------------------------------------------


def test_two_launchers_started_at_once_leave_one_redis_and_one_of_each_service_and_stop_leaves_none(
    desk: Desk,
) -> None:
    # Arrange: two launcher processes released by one file, so that they check and start at the same instant
    go = desk.tmp / "go"
    procs = [desk.spawn_start(go=go) for _ in range(2)]
    time.sleep(3.0)  # both have imported everything and wait at the gate

    # Act
    go.touch()
    outputs = [_lines(p) for p in procs]

    # Assert: one started Redis and seeded, the other found both done; one server, one of each service
    redis_pid = int((desk.data / "redis.pid").read_text())
    at = f"(pid {redis_pid}) at unix://{desk.data / 'redis.sock'}"
    firsts = sorted(next(line for line in lines if line.startswith("redis  ")) for lines in outputs)
    assert firsts == [f"redis      already running {at}", f"redis      started {at}"]
    seeding = sorted(next(line for line in lines if line.startswith("warmup ")) for lines in outputs)
    assert seeding == ["warmup     seeded market: 4 tickers, covariance from settings; portfolio main; portfolio hedge",
                       "warmup     store already seeded"]  # fmt: skip
    assert desk.redis_servers() == [redis_pid]
    pids = {name: desk.pid_file(name) for name in SLEEPERS}
    for name, (_, marker) in SLEEPERS.items():
        assert desk.services(marker) == [pids[name]], name
        assert sum(f"{name:<10} started (pid {pids[name]})" in line for lines in outputs for line in lines) == 1
        assert sum(line == f"{name:<10} already running (pid {pids[name]})" for lines in outputs for line in lines) == 1

    # Act: stop, without waiting for a lock (the daemons started under it do not hold it)
    stopped = desk.launcher(wait=0).stop()

    # Assert: by PID, nothing left
    assert stopped[-1] == "redis      stopped"
    assert [p for p in [redis_pid, *pids.values()] if _alive(p)] == []
    assert desk.redis_servers() == []
    assert [m for _, m in SLEEPERS.values() if desk.services(m)] == []


# -- waiting, then refusing --------------------------------------------------------------------------------------


def test_a_second_start_waits_for_the_first_and_then_finds_everything_running(
    desk: Desk, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange: a launcher held inside its start (Redis up, warm-up at the gate)
    first = desk.spawn_start(seed="gate")
    desk.wait_for("entered")
    results: list[list[str]] = []
    second = threading.Thread(target=lambda: results.append(desk.launcher(wait=30).start()))

    # Act: a second start while the first holds the lock; the first finishes 1 s later
    began = time.monotonic()
    second.start()
    time.sleep(1.0)
    waited = second.is_alive()
    (desk.root / "release").touch()
    second.join(timeout=60)
    elapsed = time.monotonic() - began
    first_lines = _lines(first)

    # Assert: the second waited for the first (said so on stderr), then started nothing twice
    assert waited and elapsed >= 1.0
    assert f"another launcher is starting (pid {first.pid}); waiting up to 30 s" in capsys.readouterr().err
    redis_pid = int((desk.data / "redis.pid").read_text())
    assert first_lines[0].startswith(f"redis      started (pid {redis_pid})")
    assert results[0][0].startswith(f"redis      already running (pid {redis_pid})")
    for name, (_, marker) in SLEEPERS.items():
        assert f"{name:<10} already running (pid {desk.pid_file(name)})" in results[0]
        assert desk.services(marker) == [desk.pid_file(name)]
    assert desk.redis_servers() == [redis_pid]
    desk.launcher(wait=0).stop()
    assert desk.redis_servers() == []


def test_a_second_launcher_refuses_after_its_bounded_wait_naming_the_holder_and_stops_nothing(desk: Desk) -> None:
    # Arrange: a launcher held inside its start
    first = desk.spawn_start(seed="gate")
    desk.wait_for("entered")
    redis_pid = int((desk.data / "redis.pid").read_text())

    # Act: stop and start with a wait of 0.5 s, and of 0 (refuses at its first try)
    stop_took, stop_error = _timed(desk.launcher(wait=0.5).stop)
    start_took, start_error = _timed(desk.launcher(wait=0.5).start)
    at_once_took, at_once_error = _timed(desk.launcher(wait=0).stop)

    # Assert: refused with the holder's PID and what it does, after the wait and not before; nothing stopped
    expected = f"another launcher is starting (pid {first.pid}) on {desk.data}"
    for error in (stop_error, start_error, at_once_error):
        assert isinstance(error, LauncherError) and str(error).startswith(expected), error
    assert "gave up after 0.5 s" in str(stop_error) and "gave up after 0 s" in str(at_once_error)
    assert 0.5 <= stop_took < 3.0 and 0.5 <= start_took < 3.0
    assert at_once_took < 0.5
    assert _alive(redis_pid) and desk.redis_servers() == [redis_pid]
    (desk.root / "release").touch()
    finished = _lines(first)  # the first start finished undisturbed
    assert [line.split()[1] for line in finished if line.split()[0] in SLEEPERS] == ["started"] * len(SLEEPERS)
    desk.launcher(wait=0).stop()


def test_the_lock_is_released_when_a_start_fails(desk: Desk) -> None:
    # Arrange: a warm-up that fails (Redis is up by then)
    launcher = desk.launcher()

    # Act
    with pytest.raises(LauncherError, match="warm-up failed on purpose"):
        launcher.start(seed_args=["fail"])
    stopped = desk.launcher(wait=0).stop()  # a lock left held by this process would refuse this at once

    # Assert
    assert stopped == ["redis      stopped"]
    assert desk.redis_servers() == []


def test_the_kernel_releases_the_lock_of_a_launcher_killed_mid_start(desk: Desk) -> None:
    # Arrange: a launcher held inside its start, then killed (SIGKILL: no finally runs)
    first = desk.spawn_start(seed="gate")
    gate_pid = int(desk.wait_for("entered").read_text())
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    os.kill(gate_pid, signal.SIGKILL)  # its warm-up, left behind

    # Act
    stopped = desk.launcher(wait=0).stop()

    # Assert: the lock was free at once, and the Redis it started is stopped
    assert stopped == ["redis      stopped"]
    assert desk.redis_servers() == []


# -- the embedded server on its own ------------------------------------------------------------------------------


def test_two_processes_starting_one_data_dir_at_once_start_one_server(desk: Desk) -> None:
    # Arrange: two processes released by one file
    go = desk.tmp / "go"
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from engine.redis_server import EmbeddedRedis
        server = EmbeddedRedis({str(desk.data)!r}, server={server_kind_under_test()!r})
        while not Path({str(go)!r}).exists():
            time.sleep(0.001)
        print(server.start())
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    time.sleep(2.0)

    # Act
    go.touch()
    started = sorted(p.communicate(timeout=60)[0].strip() for p in procs)

    # Assert: one started it, the other found it running; one server, the one the PID file names
    server = EmbeddedRedis(desk.data)
    assert started == ["False", "True"]
    assert desk.redis_servers() == [server.pid()]
    assert server.stop() is True
    assert desk.redis_servers() == []


@pytest.mark.parametrize("pid_file", ["kept", "lost"])
def test_a_live_server_of_the_data_dir_that_does_not_answer_is_refused_never_replaced(
    desk: Desk, pid_file: str
) -> None:
    # Arrange: a real server, stopped (SIGSTOP: alive, not answering); "lost": its PID file gone, as an older
    # launcher's double start left one
    server = EmbeddedRedis(desk.data, server=server_kind_under_test())
    assert server.start() is True
    pid = server.pid()
    assert pid is not None
    socket_inode = server.socket_path.stat().st_ino
    if pid_file == "lost":
        server.pid_path.unlink()
    os.kill(pid, signal.SIGSTOP)
    try:
        # Act
        with pytest.raises(StoreUnavailableError) as refused:
            EmbeddedRedis(desk.data, server=server_kind_under_test()).start()

        # Assert: refused naming it; its socket and PID file untouched; no second server
        state = "is running but does not answer" if pid_file == "kept" else "is running without its PID file"
        assert f"redis-server (pid {pid}) of {desk.data} {state}" in str(refused.value)
        assert f"kill {pid}" in refused.value.fix
        assert server.socket_path.stat().st_ino == socket_inode
        assert server.pid_path.exists() is (pid_file == "kept")
        assert desk.redis_servers() == [pid]
    finally:
        os.kill(pid, signal.SIGCONT)
    # once it answers again, start finds it running; without its PID file it stays refused (stop could not reach it)
    if pid_file == "kept":
        assert EmbeddedRedis(desk.data).start() is False
    else:
        with pytest.raises(StoreUnavailableError, match=f"pid {pid}.* is running without its PID file"):
            EmbeddedRedis(desk.data).start()
    assert desk.redis_servers() == [pid]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid)
