"""The vectorised monitor sizes the history rings of the portfolios it loads (new ones, a reconfigured tier, a
ring of the layout before the equity band) before the lane's MULTI, a bounded amount per script call
(engine/store/history.py ``size_rings``, called by engine/store/tick_state.py ``TickState.load``): the lane's EXEC
only writes rows, so onboarding a lane of portfolios no longer holds Redis, and every pre-trade check, for the
whole lane's zero-filling. The rings are the bytes the lane script alone would write; a ring deleted between the
two steps is still created by the lane script."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from engine.feeds import Bar, IterableFeed
from engine.settings import HistoryTier, Settings
from engine.store import PortfolioKeys, Store
from engine.store import history as history_module
from engine.store.history import (
    LEGACY_RING_COST,
    SIZE_RINGS_LUA,
    legacy_tier_bytes,
    ring_cost,
    tier_bytes,
    tier_resolution_ms,
)
from engine.store.tick_state import TickState
from engine.stream import StreamDaemon
from logic.monitor import Monitor
from tests.test_history_equity_band import WEDNESDAY, Clock, _to_legacy

PRICES = {"AAA": 100.0, "BBB": 50.0, "CCC": 200.0, "DDD": 25.0}
SHA = hashlib.sha1(SIZE_RINGS_LUA.encode()).hexdigest().encode()


def _settings(make_settings: Callable[..., Settings], count: int, tiers: list[tuple[float, float]] | None = None
              ) -> Settings:  # fmt: skip
    books = [
        {"id": f"p{k:02d}", "account_type": "cash", "cash": "1000000.00", "holdings": {"AAA": 100 + k, "BBB": 200}}
        for k in range(count)
    ]  # fmt: skip
    override: dict[str, Any] = {"portfolios": books}
    if tiers is not None:
        override["history"] = {"tiers": [{"resolution_seconds": r, "retention_seconds": k} for r, k in tiers]}
    return make_settings(override)


def _tick(store: Store, settings: Settings, clock: Clock, monitor: Monitor) -> None:
    StreamDaemon(store, settings, IterableFeed([Bar(clock.t, dict(PRICES))]), clock=clock, interval=0).run()
    assert monitor.process_available() == 1


def _rings(settings: Settings, pid: str) -> list[str]:
    return [PortfolioKeys(pid).history_tier(tier_resolution_ms(t)) for t in settings.history.tiers]


@pytest.fixture
def slowlog(redis_client: redis.Redis) -> Iterator[Callable[[], list[list[bytes]]]]:
    """Every command from now on in the server's SLOWLOG; the fixture returns the pre-step calls' KEYS, in order."""
    before = redis_client.config_get("slowlog-*")
    redis_client.config_set("slowlog-log-slower-than", 0)
    redis_client.config_set("slowlog-max-len", 100_000)
    assert redis_client.script_load(SIZE_RINGS_LUA) == SHA.decode()  # no NOSCRIPT reply, then a retry, logged
    redis_client.slowlog_reset()

    def calls() -> list[list[bytes]]:
        out = []
        for entry in reversed(redis_client.slowlog_get(100_000)):  # oldest first
            args = entry["command"].split(b" ")
            if args[0].upper() == b"EVALSHA" and args[1] == SHA:
                assert b"more arguments" not in entry["command"], "keys cut by SLOWLOG: fewer portfolios a test"
                numkeys = int(args[2])
                out.append(args[3 : 3 + numkeys])
        return out

    try:
        yield calls
    finally:
        redis_client.config_set("slowlog-log-slower-than", before["slowlog-log-slower-than"])
        redis_client.config_set("slowlog-max-len", before["slowlog-max-len"])


@pytest.fixture
def at_multi(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, int]]:
    """The length of every ring of a lane's portfolios when its write is queued (the lane's MULTI is open: what
    the EXEC finds), one dict per lane write; a recording spy around the real :meth:`TickState.write`."""
    seen: list[dict[str, int]] = []
    write = TickState.write

    def spy(self: TickState, pipe: Any, store: Any, prepared: Any, rows: range, *args: Any) -> None:
        keys = [PortfolioKeys(self.pids[p]).history_tier(tier_resolution_ms(t)) for p in rows for t in self.tiers]
        seen.append({k: int(store.client.strlen(k)) for k in keys})
        write(self, pipe, store, prepared, rows, *args)

    monkeypatch.setattr(TickState, "write", spy)
    return seen


@pytest.mark.parametrize(
    ("count", "budget_less", "expected"),
    [(3, 0, [3]), (4, 0, [3, 1]), (3, 1, [2, 1])],
    ids=["the-budget-exactly-one-call", "one-portfolio-over-a-second-call", "one-byte-short-two-calls"],
)
def test_the_first_tick_sizes_new_rings_before_the_lane_multi_within_the_budget(
    store: Store, make_settings: Callable[..., Settings], slowlog: Callable[[], list[list[bytes]]],
    at_multi: list[dict[str, int]], monkeypatch: pytest.MonkeyPatch, count: int, budget_less: int,
    expected: list[int],
) -> None:  # fmt: skip
    # Arrange: ``count`` new portfolios; the budget three portfolios' rings exactly (or one byte less)
    settings = _settings(make_settings, count)
    import warmup

    warmup.seed(store, settings, now=WEDNESDAY - 60)
    per_portfolio = sum(tier_bytes(t) for t in settings.history.tiers)
    monkeypatch.setattr(history_module, "RING_BUDGET_BYTES", 3 * per_portfolio - budget_less)
    pids = [f"p{k:02d}" for k in range(count)]
    assert not any(store.client.exists(k) for pid in pids for k in _rings(settings, pid))
    clock = Clock(WEDNESDAY)

    # Act: the first tick
    _tick(store, settings, clock, Monitor(store, settings, clock=clock))

    # Assert: whole portfolios per call, in order, as many as the budget holds; every ring at its size when the
    # lane's MULTI was queued (its EXEC created none), and written by it
    calls = slowlog()
    want = [k.encode() for pid in pids for k in _rings(settings, pid)]
    assert [len(c) // len(settings.history.tiers) for c in calls] == expected
    assert [k for c in calls for k in c] == want
    assert len(at_multi) == 1
    sizes = {
        k: tier_bytes(t) for pid in pids for k, t in zip(_rings(settings, pid), settings.history.tiers, strict=True)
    }
    assert at_multi[0] == sizes
    for pid in pids:
        for tier in settings.history.tiers:
            rows = store.read_tier_rows(pid, tier)
            assert rows["ts"].tolist() == [WEDNESDAY]  # the tick's bucket, nothing else


def test_a_second_tick_and_a_reload_size_nothing(
    store: Store, make_settings: Callable[..., Settings], slowlog: Callable[[], list[list[bytes]]]
) -> None:
    # Arrange: rings made by a first tick
    settings = _settings(make_settings, 2)
    import warmup

    warmup.seed(store, settings, now=WEDNESDAY - 60)
    clock = Clock(WEDNESDAY)
    _tick(store, settings, clock, Monitor(store, settings, clock=clock))
    first = len(slowlog())

    # Act: the next tick of the same monitor, then a fresh monitor (it loads every portfolio again)
    clock.t += 20
    _tick(store, settings, clock, Monitor(store, settings, clock=clock))

    # Assert: one call for the new rings, none for rings at their size
    assert (first, len(slowlog())) == (1, 1)


def test_rings_are_the_bytes_the_lane_script_alone_writes_and_a_ring_deleted_between_the_steps_is_created(
    two_stores: tuple[Store, Store], make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: the same books in two databases; in the second, every ring the pre-step made is deleted once the
    # lane's MULTI is open, before its EXEC (the lane script must create it: the path before the pre-step)
    fresh, deleted = two_stores
    settings = _settings(make_settings, 3)
    import warmup

    for s in two_stores:
        warmup.seed(s, settings, now=WEDNESDAY - 60)
    pids = [f"p{k:02d}" for k in range(3)]
    write, armed = TickState.write, [True]

    def delete_then_write(self: TickState, pipe: Any, store: Any, *args: Any) -> None:
        if store is deleted and armed[0]:
            armed[0] = False
            gone = [k for pid in pids for k in _rings(settings, pid)]
            assert all(store.client.strlen(k) > 0 for k in gone)  # the pre-step made them
            store.client.delete(*gone)
        write(self, pipe, store, *args)

    monkeypatch.setattr(TickState, "write", delete_then_write)
    clock = Clock(WEDNESDAY)
    monitors = [Monitor(s, settings, clock=clock) for s in two_stores]

    # Act: ticks 20 s apart, a late one, another bucket of the coarse tiers
    for step in (0.0, 20.0, 400.0, -300.0, 1000.0):
        clock.t += step
        for s, m in zip(two_stores, monitors, strict=True):
            _tick(s, settings, clock, m)

    # Assert: the second store's rings were created by the lane script (deleted on the first tick), and every
    # ring holds the same bytes in both
    assert not armed[0]
    for pid in pids:
        for key, tier in zip(_rings(settings, pid), settings.history.tiers, strict=True):
            blob = fresh.client.get(key)
            assert blob is not None and len(blob) == tier_bytes(tier)
            assert deleted.client.get(key) == blob, key
        assert len(fresh.read_tier_rows(pid, settings.history.tiers[0])) == 5


def test_a_reconfigured_tier_is_recreated_by_the_pre_step(
    store: Store, make_settings: Callable[..., Settings], slowlog: Callable[[], list[list[bytes]]],
    at_multi: list[dict[str, int]],
) -> None:  # fmt: skip
    # Arrange: two ticks under tiers of 1 min for 1 h and 15 min for 1 day, then the second kept 2 days
    before = _settings(make_settings, 2, [(60.0, 3600.0), (900.0, 86_400.0)])
    after = _settings(make_settings, 2, [(60.0, 3600.0), (900.0, 2 * 86_400.0)])
    import warmup

    warmup.seed(store, before, now=WEDNESDAY - 60)
    clock = Clock(WEDNESDAY)
    monitor = Monitor(store, before, clock=clock)
    _tick(store, before, clock, monitor)
    clock.t += 60
    _tick(store, before, clock, monitor)
    coarse = after.history.tiers[1]
    assert tier_bytes(coarse) != tier_bytes(before.history.tiers[1])
    keys = [PortfolioKeys(pid).history_tier(tier_resolution_ms(coarse)) for pid in ("p00", "p01")]
    assert all(store.client.strlen(k) == tier_bytes(before.history.tiers[1]) for k in keys)
    calls_before = len(slowlog())
    del at_multi[:]

    # Act: a monitor of the new tiers ticks
    clock.t += 60
    _tick(store, after, clock, Monitor(store, after, clock=clock))

    # Assert: one pre-step call named exactly the reconfigured rings, which were at their new size when the
    # lane's MULTI was queued; the ring starts afresh (its old size's buckets are gone, as before the pre-step)
    calls = slowlog()[calls_before:]
    assert calls == [[k.encode() for k in keys]]
    assert [d[k] for d in at_multi for k in keys] == [tier_bytes(coarse)] * 2
    assert [int(store.client.strlen(k)) for k in keys] == [tier_bytes(coarse)] * 2
    assert store.read_tier_rows("p00", coarse)["ts"].tolist() == [clock.t]
    assert len(store.read_tier_rows("p00", after.history.tiers[0])) == 3  # the unchanged tier kept its rows


def test_a_legacy_ring_is_converted_by_the_pre_step_and_keeps_its_rows(
    store: Store, make_settings: Callable[..., Settings], slowlog: Callable[[], list[list[bytes]]],
    at_multi: list[dict[str, int]],
) -> None:  # fmt: skip
    # Arrange: ten ticks, then every ring of p00 rewritten in the layout before the equity band
    settings = _settings(make_settings, 2, [(60.0, 3600.0), (900.0, 86_400.0)])
    import warmup

    warmup.seed(store, settings, now=WEDNESDAY - 60)
    clock = Clock(WEDNESDAY)
    monitor = Monitor(store, settings, clock=clock)
    for _ in range(10):
        _tick(store, settings, clock, monitor)
        clock.t += 120
    tiers = settings.history.tiers
    rows_before = {t: store.read_tier_rows("p00", t) for t in tiers}
    for tier in tiers:
        _to_legacy(store, "p00", tier)
    keys = _rings(settings, "p00")
    calls_before = len(slowlog())
    del at_multi[:]

    # Act: a fresh monitor (it loads every portfolio) ticks in a new bucket of both tiers
    clock.t += 900
    _tick(store, settings, clock, Monitor(store, settings, clock=clock))

    # Assert: the pre-step converted p00's rings alone (p01's are at their size), before the lane's MULTI; the
    # buckets written before the upgrade are all kept, the tick's bucket after them
    assert slowlog()[calls_before:] == [[k.encode() for k in keys]]
    assert [at_multi[0][k] for k in keys] == [tier_bytes(t) for t in tiers]
    for tier in tiers:
        rows = store.read_tier_rows("p00", tier)
        kept = rows_before[tier]
        assert rows[: len(kept)].tobytes() == kept.tobytes()
        assert rows["ts"].tolist()[len(kept) :] == [clock.t]


def test_a_ring_costs_its_size_a_legacy_one_its_conversion_and_one_at_its_size_nothing() -> None:
    tier = HistoryTier(60.0, 3600.0)
    size, legacy = tier_bytes(tier), legacy_tier_bytes(tier)
    assert ring_cost(size, size, legacy) == 0
    assert ring_cost(0, size, legacy) == size
    assert ring_cost(size + 1, size, legacy) == size  # another configuration's ring: recreated
    assert ring_cost(legacy, size, legacy) == LEGACY_RING_COST * size


def test_on_a_cluster_each_pre_step_call_names_one_portfolio(
    cluster_store: Store, make_settings: Callable[..., Settings]
) -> None:
    # Arrange: three new portfolios on a Redis Cluster, every master's SLOWLOG on
    settings = _settings(make_settings, 3, [(60.0, 3600.0), (900.0, 86_400.0)])
    import warmup

    warmup.seed(cluster_store, settings, now=WEDNESDAY - 60)
    client: Any = cluster_store.client
    nodes = client.get_primaries()
    before = [client.config_get("slowlog-log-slower-than", target_nodes=n) for n in nodes]
    for n in nodes:
        client.config_set("slowlog-log-slower-than", 0, target_nodes=n)
        client.slowlog_reset(target_nodes=n)
    clock = Clock(WEDNESDAY)
    try:
        # Act
        _tick(cluster_store, settings, clock, Monitor(cluster_store, settings, clock=clock))
        entries = [e for n in nodes for e in client.slowlog_get(100_000, target_nodes=n)]
    finally:
        for n, b in zip(nodes, before, strict=True):
            client.config_set("slowlog-log-slower-than", b["slowlog-log-slower-than"], target_nodes=n)

    # Assert: the pre-step script (by its text: a cluster runs EVAL) once per portfolio, its two rings alone
    head = b"EVAL " + SIZE_RINGS_LUA[:60].encode()
    calls = sorted(e["command"] for e in entries if e["command"].startswith(head))  # p00's first
    assert len(calls) == 3
    for pid, command in zip(("p00", "p01", "p02"), calls, strict=True):
        assert all(k.encode() in command for k in _rings(settings, pid))
        others = [k for p in ("p00", "p01", "p02") if p != pid for k in _rings(settings, p)]
        assert not any(k.encode() in command for k in others)
    for pid in ("p00", "p01", "p02"):
        for tier in settings.history.tiers:
            assert cluster_store.read_tier_rows(pid, tier)["ts"].tolist() == [WEDNESDAY]
