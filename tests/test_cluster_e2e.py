"""The end-to-end path on a real 3-master Redis Cluster (engine/redis_cluster.py, fixture ``redis_cluster``).

Every process connects with ``REDIS_URL=redis+cluster://...``, which selects redis-py's ``RedisCluster``: warm-up,
the stream daemon, the monitor with its alert engine and automated responses, the notifier, the pre-trade gate
and execution with idempotency. Then one master is killed with SIGKILL and restarted from its AOF (appendfsync
always): no acknowledged fill is lost.
"""

from __future__ import annotations

import subprocess
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

import warmup
from engine.redis_server import connect
from engine.settings import Settings, settings_from_dict
from engine.store import PortfolioKeys, Store
from logic.risk_manager import RiskManager

from .conftest import TEST_CONFIG, merge, to_toml
from .test_stream import daemon_env, spawn, stop_process, wait_for

pytestmark = pytest.mark.slow

CONFIG = merge(
    TEST_CONFIG,
    {
        "alert_rules": [
            {
                "id": "var_breach",
                "metric": "var.utilization",
                "op": ">=",
                "threshold": 1.0,
                "severity": "CRITICAL",
                "description": "VaR above its limit",
                "actions": ["set_state:HALTED"],
                "portfolios": ["main"],
            }
        ],
        "notifications": {
            "group_wait_seconds": 0,
            "group_interval_seconds": 0,
            "recipients": {"desk": {"email": "desk@test.local"}},
        },
        "escalation": {"CRITICAL": [{"delay_seconds": 0, "recipients": ["desk"], "channels": ["log"]}]},
    },
)


def slots_of(redis_cluster: Any, *keys: str) -> set[int]:
    return {redis_cluster.node_of(key) for key in keys}


def test_the_cluster_url_selects_redis_cluster_and_the_store_spans_three_masters(
    redis_cluster: Any, cluster_store: Store, settings: Settings
) -> None:
    from redis.cluster import RedisCluster

    assert redis_cluster.url.startswith("redis+cluster://")
    assert isinstance(connect(redis_cluster.url), RedisCluster)
    warmup.seed(cluster_store, settings)
    # the market's keys share a slot, each portfolio's keys share one, and the three masters all hold data
    assert len(slots_of(redis_cluster, *PortfolioKeys("main").all())) == 1
    assert len(slots_of(redis_cluster, "mkt:{m}:snapshot", "mkt:{m}:ticks", "mkt:{m}:reference")) == 1
    counts = [int(node.client().dbsize()) for node in redis_cluster.nodes]
    assert sum(counts) == len(cluster_store.all_keys()) and sum(c > 0 for c in counts) >= 2
    assert cluster_store.portfolio_ids() == ["hedge", "main"]
    assert cluster_store.read_market_header().tickers == ("AAA", "BBB", "CCC", "DDD")


def test_snapshot_times_read_every_slot_on_the_cluster(cluster_store: Store) -> None:
    for k, pid in enumerate(("main", "hedge", "p2")):
        snap = {"portfolio_id": pid, "ts": 100.5 + k, "version": 1}
        cluster_store.record_snapshot(pid, snap, {"equity": 1.0}, ts=100.5 + k, retention_seconds=60, max_points=5)
    assert cluster_store.snapshot_times(["main", "hedge", "p2", "none"]) == [100.5, 101.5, 102.5, None]


def test_alert_states_and_pending_actions_are_read_across_slots_on_the_cluster(cluster_store: Store) -> None:
    store = cluster_store
    store.write_active_alerts("main", {"var_breach": {"status": "TRIGGERED"}})
    store.client.hset(Store.alert_eval_key("p2"), "var_warning", '{"breach_since": 1.0}')
    store.write_pending_actions("hedge", {"a1": {"action": "set_state:HALTED"}})
    states = store.read_alert_states(["main", "hedge", "p2"])
    want = [({b"var_breach"}, set()), (set(), set()), (set(), {b"var_warning"})]
    assert [(set(a), set(t)) for a, t in states] == want
    assert store.with_pending_actions(["main", "hedge", "p2"]) == ["hedge"]


def test_the_gate_fills_once_per_client_order_id_on_the_cluster(cluster_store: Store, settings: Settings) -> None:
    warmup.seed(cluster_store, settings)
    gate = RiskManager(cluster_store.client, "main", settings)
    cash = cluster_store.read_portfolio("main").cash

    first = gate.execute_trade("AAA", 10, "BUY", actor="trader", client_order_id="c-1")
    again = gate.execute_trade("AAA", 10, "BUY", actor="trader", client_order_id="c-1")

    assert first["status"] == "FILLED", first
    assert again["fill"] == first["fill"] and again["duplicate"] is True
    book = cluster_store.read_portfolio("main")
    assert book.positions["AAA"].qty == 1010
    fill = first["fill"]
    # 10 shares at the fill price, and the minimum fee (10 x 0.01 per share is below the 1.00 minimum)
    assert book.cash == cash - 10 * Decimal(fill["price"]) - Decimal("1.00")
    assert Decimal(fill["fees"]) == Decimal("1.00")
    assert len(gate.trade_log(10)) == 1
    # a rejected order (oversell) changes nothing and is logged
    rejected = gate.execute_trade("BBB", 5000, "SELL", actor="trader", client_order_id="c-2")
    assert rejected["status"] == "REJECTED" and cluster_store.read_portfolio("main").cash == book.cash


def test_stream_monitor_alerts_and_the_gate_run_as_daemons_on_the_cluster(
    redis_cluster: Any, cluster_store: Store, tmp_path: Path
) -> None:
    store = cluster_store
    settings = settings_from_dict(CONFIG)
    warmup.seed(store, settings)
    store.ensure_tick_group("monitor")
    store.ensure_tick_group("backtest")
    config = tmp_path / "riskdesk.toml"
    config.write_text(to_toml(CONFIG))
    env = daemon_env(redis_cluster.url, config)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(spawn("logic.monitor", ["--idle-refresh", "1"], env, tmp_path / "monitor.log"))
        procs.append(spawn("logic.backtest_runner", [], env, tmp_path / "backtest.log"))
        procs.append(spawn("notifications", [], env, tmp_path / "notifications.log"))
        # every price -10% at bar 20: the EWMA matrix takes in a 10% one-minute move and VaR explodes
        stream_args = "--feed sim --interval 0.05 --ticks 60 --seed 3 --shock *:-0.10@20".split()
        procs.append(spawn("engine.stream", stream_args, env, tmp_path / "stream.log"))

        wait_for(lambda: store.read_market_header().version >= 10, 60, "ten ticks on the cluster")
        wait_for(lambda: "var_breach" in store.read_active_alerts("main"), 60, "the VaR alert")
        wait_for(lambda: store.read_trading_state("main").state == "HALTED", 30, "the circuit breaker")
        wait_for(lambda: len(store.read_stream_json(PortfolioKeys("main").deliveries)) > 0, 30, "a delivery")
        wait_for(lambda: store.read_snapshot("hedge") is not None, 30, "the other portfolio's snapshot")
        # the backtest runner fed every bar to both backtests (its MULTI spans their slots and the stream's)
        wait_for(lambda: int((store.read_heartbeat("backtest") or {}).get("bars_fed", 0)) == 60, 60, "60 bars fed")
    except AssertionError:
        logs = "\n".join(p.read_text()[-3000:] for p in tmp_path.glob("*.log"))
        raise AssertionError(logs) from None
    finally:
        for proc in procs:
            stop_process(proc)
    alert = store.read_active_alerts("main")["var_breach"]
    assert alert["status"] == "TRIGGERED" and alert["value"] >= 1.0
    state = store.read_trading_state("main")
    assert state.actor == "auto:var_breach" and "VaR above its limit" in state.reason
    assert store.read_heartbeat("monitor")  # the monitor's heartbeat (a global key) on the cluster
    last = store.read_market_header().version
    assert {pid: (store.read_backtest_marker(pid) or (0,))[0] for pid in ("main", "hedge")} == {"main": last,
                                                                                                "hedge": last}
    assert store.tick_group_pending("backtest") == 0
    decision = RiskManager(store.client, "main", settings).execute_trade("AAA", 10, "BUY", actor="trader")
    assert decision["status"] == "REJECTED"
    assert "TRADING_HALTED" in [r["code"] for r in decision["reasons"]]


def test_kill_9_of_the_portfolios_master_and_its_restart_from_aof_lose_no_acknowledged_fill(
    redis_cluster: Any, cluster_store: Store, settings: Settings
) -> None:
    """Orders stream in from a thread; the master holding the portfolio's slot is killed with SIGKILL mid-way
    and restarted from its AOF (appendfsync always). Every acknowledged fill is there afterwards; the orders that
    failed during the outage, retried with their client order ids, fill exactly once."""
    warmup.seed(cluster_store, settings)
    victim = redis_cluster.node_of(PortfolioKeys("main").orders)
    acked: list[str] = []
    attempted: list[str] = []
    stop = threading.Event()

    def trade() -> None:
        gate = RiskManager(redis_cluster.client(timeout=2.0), "main", settings)
        i = 0
        while not stop.is_set():
            cid = f"k-{i}"
            attempted.append(cid)
            try:
                if gate.execute_trade("AAA", 1, "BUY", actor="trader", client_order_id=cid)["status"] == "FILLED":
                    acked.append(cid)
            except Exception:  # noqa: BLE001 - the outage: unreachable, cluster down; retried below
                time.sleep(0.05)
            i += 1

    worker = threading.Thread(target=trade, daemon=True)
    worker.start()
    try:
        wait_for(lambda: len(acked) >= 5, 60, "five fills before the crash")
        redis_cluster.kill(victim)
        before_crash = len(acked)
        time.sleep(0.5)
        redis_cluster.restart(victim)
        wait_for(lambda: len(acked) >= before_crash + 5, 90, "five fills after the restart")
    finally:
        stop.set()
        worker.join(60)
    assert not worker.is_alive()

    store = Store(redis_cluster.client())
    orders = set(store.read_field_names(PortfolioKeys("main").orders))
    assert set(acked) <= orders  # nothing acknowledged is lost
    gate = RiskManager(store.client, "main", settings)
    for cid in attempted:  # the ones that failed in the outage: retried, filled at most once
        assert gate.execute_trade("AAA", 1, "BUY", actor="trader", client_order_id=cid)["status"] == "FILLED"
    fills = [r for r in gate.trade_log(10_000) if r["status"] == "FILLED"]
    assert set(store.read_field_names(PortfolioKeys("main").orders)) == set(attempted)
    assert store.read_portfolio("main").positions["AAA"].qty == 1000 + len(attempted)
    assert sorted(r["fill"]["client_order_id"] for r in fills) == sorted(attempted)  # one fill per id


# -- the desk-wide and global writes on a cluster ----------------------------------------------------------------


def test_the_desk_wide_halt_and_a_rule_edit_commit_on_the_cluster_with_their_audit_records(
    cluster_store: Store, settings: Settings
) -> None:
    from logic.firm import Firm
    from logic.rules import RuleBook

    warmup.seed(cluster_store, settings)
    changes = Firm(cluster_store.client, settings, clock=lambda: 1234.5).halt_all("alice", "exchange closed")
    assert changes == {pid: {"previous": "ACTIVE", "state": "HALTED"} for pid in ("main", "hedge")}
    assert {pid: cluster_store.read_trading_state(pid).state for pid in ("main", "hedge")} == {
        "main": "HALTED", "hedge": "HALTED",
    }  # fmt: skip
    book = RuleBook(cluster_store, [], clock=lambda: 99.0)
    assert cluster_store.read_rules_version() == 0
    rule = {"id": "dd", "metric": "drawdown.daily", "op": ">=", "threshold": 0.05, "severity": "HIGH"}
    book.add(rule, "bob", "new rule")
    assert cluster_store.read_rules_version() == 1 and [r.id for r in book.rules()] == ["dd"]
    audit = cluster_store.read_stream_json("rd:audit", count=10)
    assert [r["action"] for r in audit[:2]] == ["rule_added", "halt_all"]
    assert audit[0]["actor"] == "bob" and audit[1]["portfolios"] == changes


def test_growing_the_universe_and_a_reset_work_on_the_cluster(cluster_store: Store, settings: Settings) -> None:
    from engine import reload

    warmup.seed(cluster_store, settings)
    version = warmup.add_ticker(cluster_store, settings, "EEE", 10.0, 0.3, now=5.0)
    header = cluster_store.read_market_header()
    assert header.version == version == 1 and header.tickers[-1] == "EEE"
    assert cluster_store.read_market().cov.shape == (5, 5)
    before = {k.decode() for k in cluster_store.all_keys()}
    deleted = reload.reset_store(cluster_store, keep_audit=True, now=6.0, actor="ops")
    kept = {k.decode() for k in cluster_store.all_keys()}
    # the epoch (bumped), the global audit and each portfolio's audit trail survive; everything else is gone
    assert deleted == len(before - kept) > 0
    assert "mkt:{m}:epoch" in kept and "rd:audit" in kept and "rd:schema" not in kept
    assert all(k in {"mkt:{m}:epoch", "rd:audit"} or k.startswith("pf:") for k in kept)
    assert cluster_store.read_stream_json("rd:audit", count=1)[0]["action"] == "reset"


def test_a_watched_slot_that_changes_aborts_its_multi_and_writes_nothing_of_it(cluster_store: Store) -> None:
    import redis

    from engine.store.slots import SlotTransaction, slot_transaction

    client = cluster_store.client
    client.set("pf:{a}:x", "1")
    tx = slot_transaction(client)
    assert isinstance(tx, SlotTransaction)
    tx.watch("pf:{a}:x")
    assert tx.get("pf:{a}:x") == b"1"  # a read in WATCH mode runs at once
    client.set("pf:{a}:x", "2")  # someone else writes the watched key
    tx.multi()
    tx.set("pf:{a}:y", "written")
    with pytest.raises(redis.WatchError):
        tx.execute()
    assert client.get("pf:{a}:y") is None
    # without a conflict: one MULTI per slot, replies in queue order
    tx = slot_transaction(client)
    tx.set("rd:global", "g")
    tx.set("pf:{a}:y", "1")
    tx.incr("pf:{b}:n")
    tx.get("rd:global")
    assert tx.execute() == [True, True, 1, b"g"]


def test_cluster_urls_are_recognised_and_a_bad_one_is_refused_with_a_coded_error() -> None:
    from engine.errors import StoreUnavailableError
    from engine.redis_cluster import cluster_nodes_of, is_cluster_url

    assert is_cluster_url("redis+cluster://127.0.0.1:7000") and not is_cluster_url("redis://127.0.0.1:6379")
    assert not is_cluster_url(None) and not is_cluster_url("unix:///tmp/r.sock")
    assert cluster_nodes_of("redis+cluster://:pw@a:7000,b:7001") == [("a", 7000), ("b", 7001)]
    with pytest.raises(StoreUnavailableError):
        cluster_nodes_of("redis+cluster://a-host-without-port")
    with pytest.raises(StoreUnavailableError):
        cluster_nodes_of("redis://a:1")


def test_an_unreachable_cluster_is_a_coded_error_at_connect_and_a_connection_error_after(tmp_path: Path) -> None:
    from engine.errors import StoreUnavailableError
    from engine.redis_cluster import free_port
    from logic.views.common import problem_from_exception

    from .conftest import private_cluster

    # Arrange / Act: no node listens (a password in the URL is not repeated in the message)
    url = f"redis+cluster://:secret@127.0.0.1:{free_port()}"
    with pytest.raises(StoreUnavailableError) as refused:
        connect(url, timeout=1.0)
    # Assert: the pages say so, and a daemon started on it exits with that message, no traceback
    assert "secret" not in str(refused.value)
    assert problem_from_exception(refused.value).title == "Redis is unreachable"
    env = daemon_env(url, tmp_path / "none.toml")
    env.pop("RISKDESK_CONFIG", None)
    proc = spawn("logic.monitor", ["--ticks", "1"], env, tmp_path / "monitor.log")
    assert proc.wait(60) != 0
    log = (tmp_path / "monitor.log").read_text()
    assert "unreachable" in log and "Traceback" not in log, log

    # Arrange: a running cluster the client has connected to, then every node stopped
    with private_cluster("rdcu-") as cluster:
        store = Store(connect(cluster.url, timeout=1.0))
        store.client.set("pf:{main}:x", b"1")
        cluster.stop()
        # Act / Assert: reads, pipelines and transactions fail with Redis' connection error, as on one server
        for attempt in (
            lambda: store.client.get("pf:{main}:x"),
            lambda: store.read_snapshot("hedge"),
            lambda: store.client.pipeline(transaction=False).get("pf:{a}:x").get("pf:{b}:x").execute(),
        ):
            with pytest.raises(redis.ConnectionError) as failed:
                attempt()
            assert problem_from_exception(failed.value).title == "Redis is unreachable"
        store.client.close()
