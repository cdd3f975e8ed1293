"""Fair, bounded execution under contention (logic/execution.py, engine/store/sequencer.py), on a real redis-server.

- 16 processes send 200 orders each to one portfolio, some sharing client order ids: no order is refused for
  contention, every order is FILLED or refused for a genuine limit, each client order id trades at most once,
  and cash and positions reconcile to the cent with the fills in the trade log.
- Fairness: orders queued one after another are served in that order (an unfair lock would serve them in
  whatever order its pollers happen to win).
- Crash safety: a process SIGKILLed inside the critical section holds the queue only until its lease expires;
  a waiter that cannot get its turn in time is refused with STORE_UNAVAILABLE, not a contention code, and
  leaves the queue.
- The queue protocol step by step (join, hand-over, leave, reaping a dead head), with expiry simulated by
  deleting the lease (what a PX expiry does), so no test waits on a clock.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

import warmup
from engine.records import ReasonCode
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings, settings_from_dict
from engine.store import PortfolioKeys, Store
from logic import execution
from logic.risk_manager import RiskManager

from .conftest import TEST_CONFIG, store_contents

CTX = multiprocessing.get_context("spawn")
NOW = 1_700_000_000.0
WRITERS = 16
ORDERS_PER_WRITER = 200
BARRIER_TIMEOUT = 120.0
SHARED_EVERY = 10
"""Every 10th order of each writer (k % 10 == 4) uses a client order id shared by all 16 writers."""
IMPOSSIBLE_EVERY = 20
"""Every 20th order (k % 20 == 19) sells more AAA than the book can ever hold: a genuine OVERSELL."""
GENUINE = {ReasonCode.OVERSELL, ReasonCode.SHORT_NOT_ALLOWED}
"""Refusals the orders of the hammer test can earn honestly (a sale of more than is held)."""
CONTENTION = {ReasonCode.RETRY_EXHAUSTED, ReasonCode.STORE_UNAVAILABLE}
ROOT = Path(__file__).resolve().parent.parent

_worker: dict[str, Any] = {}
"""Per-process state of the pool workers (their own client and manager)."""


def _settings() -> Settings:
    return settings_from_dict(TEST_CONFIG)


def _init_worker(url: str, barrier: Any) -> None:
    client = redis.Redis.from_url(url, socket_timeout=30)
    _worker["rm"] = RiskManager(client, "main", _settings(), clock=lambda: NOW)
    _worker["barrier"] = barrier


def _orders(writer: int) -> list[tuple[str, int, str, str]]:
    """``(ticker, qty, side, client_order_id)`` of one writer; the shared ids carry the same order everywhere."""
    rng = random.Random(writer)
    out = []
    for k in range(ORDERS_PER_WRITER):
        if k % IMPOSSIBLE_EVERY == IMPOSSIBLE_EVERY - 1:
            out.append(("AAA", 5000, "SELL", f"w{writer}-{k}"))
        elif k % SHARED_EVERY == 4:
            out.append(("BBB", 5 + k % 7, "BUY", f"shared-{k}"))
        else:
            out.append((rng.choice(("AAA", "BBB")), rng.randint(1, 20), rng.choice(("BUY", "SELL")), f"w{writer}-{k}"))
    return out


def _writer(writer: int) -> list[dict[str, Any]]:
    _worker["barrier"].wait(BARRIER_TIMEOUT)
    results = []
    for ticker, qty, side, coid in _orders(writer):
        r = _worker["rm"].execute_trade(ticker, qty, side, client_order_id=coid)
        results.append(
            {
                "coid": coid,
                "status": r["status"],
                "duplicate": r["duplicate"],
                "fill": r["fill"],
                "codes": [x["code"] for x in r["reasons"]],
            }
        )
    return results


@pytest.fixture
def seeded(store: Store) -> Store:
    warmup.seed(store, _settings(), now=NOW)
    return store


@pytest.fixture
def rm(seeded: Store) -> RiskManager:
    return RiskManager(seeded.client, "main", _settings(), clock=lambda: NOW)


@pytest.fixture
def spawn_pool(redis_server: EmbeddedRedis) -> Iterator[Callable[[int], Any]]:
    pools: list[Any] = []

    def make(processes: int) -> Any:
        barrier = CTX.Barrier(processes)
        pool = CTX.Pool(processes, initializer=_init_worker, initargs=(redis_server.url, barrier))
        pools.append(pool)
        return pool

    yield make
    for pool in pools:  # every worker process is stopped, whatever the test did
        pool.terminate()
        pool.join()


def _order_keys(store: Store, portfolio_id: str) -> list[bytes]:
    return sorted(store.client.scan_iter(match=f"pf:{{{portfolio_id}}}:order_*", count=1000))


# -- 16 writers on one portfolio ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_16_processes_of_200_orders_on_one_portfolio_are_all_answered_and_reconcile_to_the_cent(
    seeded: Store, spawn_pool: Callable[[int], Any]
) -> None:
    initial = seeded.read_portfolio("main")
    pool = spawn_pool(WRITERS)

    results = [r for batch in pool.map(_writer, range(WRITERS), chunksize=1) for r in batch]

    # every order answered; none refused for contention, every refusal a genuine limit
    assert len(results) == WRITERS * ORDERS_PER_WRITER
    assert all(r["status"] in ("FILLED", "REJECTED") for r in results)
    codes = Counter(c for r in results for c in r["codes"])
    assert not CONTENTION & set(codes), codes
    assert set(codes) <= GENUINE, codes
    assert all(r["codes"] for r in results if r["status"] == "REJECTED")
    assert codes[ReasonCode.OVERSELL] >= WRITERS * (ORDERS_PER_WRITER // IMPOSSIBLE_EVERY)  # the impossible sells
    # idempotency under contention: each client order id traded at most once, every caller saw that one fill
    by_id: dict[str, set[str]] = defaultdict(set)
    for r in results:
        if r["status"] == "FILLED":
            by_id[r["coid"]].add(r["fill"]["trade_id"])
    assert all(len(trade_ids) == 1 for trade_ids in by_id.values())
    first_fills = Counter(r["coid"] for r in results if r["status"] == "FILLED" and not r["duplicate"])
    assert max(first_fills.values()) == 1
    shared = {r["coid"] for r in results if r["coid"].startswith("shared-")}
    assert all(by_id[coid] for coid in shared)  # a BUY of a few BBB always passes: each shared id filled once
    # the trade log holds exactly the distinct fills, in one serial order, each starting where the last ended
    fills = {tid: r["fill"] for r in results if r["status"] == "FILLED" for tid in [r["fill"]["trade_id"]]}
    logged = [
        r["fill"]
        for r in seeded.read_trade_log("main", count=10 * len(results), newest_first=False)
        if r["status"] == "FILLED"
    ]
    assert len(logged) == len(fills) and {f["trade_id"] for f in logged} == set(fills)
    assert len({f["client_order_id"] for f in logged}) == len(logged)
    for previous, fill in zip(logged, logged[1:], strict=False):
        assert Decimal(fill["cash_before"]) == Decimal(previous["cash_after"])
    # cash, fees and positions reconcile to the cent with the fills, recomputed here from price, qty and fees
    cash = initial.cash
    qty = {t: p.qty for t, p in initial.positions.items()}
    for f in logged:
        notional = Decimal(f["price"]) * f["qty"]
        cash += (-notional if f["side"] == "BUY" else notional) - Decimal(f["fees"])
        qty[f["ticker"]] = qty.get(f["ticker"], 0) + (f["qty"] if f["side"] == "BUY" else -f["qty"])
    final = seeded.read_portfolio("main")
    assert final.cash == cash == Decimal(logged[-1]["cash_after"])
    assert final.fees_paid == initial.fees_paid + sum((Decimal(f["fees"]) for f in logged), Decimal(0))
    assert {t: q for t, q in qty.items() if q} == {t: p.qty for t, p in final.positions.items() if p.qty}
    # the queue drained: no ticket, lease or wake-up left behind
    assert seeded.read_order_queue("main") == ([], None)
    assert _order_keys(seeded, "main") == []


# -- fairness ------------------------------------------------------------------------------------------------


def _wait_for(condition: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Poll until ``condition`` holds (synchronisation, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.005)


def test_orders_that_queued_one_after_another_are_served_in_arrival_order(
    rm: RiskManager, seeded: Store, redis_server: EmbeddedRedis
) -> None:
    seeded.join_order_queue("main", "blocker", 60.0, 60.0)  # an order in flight: everyone else queues
    senders = 8
    clients = [redis.Redis.from_url(redis_server.url, socket_timeout=30) for _ in range(senders)]
    answers: dict[int, dict[str, Any]] = {}

    def send(i: int) -> None:
        gate = RiskManager(clients[i], "main", _settings(), clock=lambda: NOW)
        answers[i] = gate.execute_trade("AAA", 1 + i, "BUY", client_order_id=f"fifo-{i}")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]

    def queued(n: int) -> Callable[[], bool]:
        return lambda: len(seeded.read_order_queue("main")[0]) == n + 1  # the blocker and n senders

    for i, thread in enumerate(threads):  # each joins the queue before the next starts
        thread.start()
        _wait_for(queued(i + 1), f"sender {i} to queue")
    assert seeded.read_order_queue("main")[1] == "blocker"

    seeded.leave_order_queue("main", "blocker", 60.0, 60.0)
    for thread in threads:
        thread.join(60)

    assert [answers[i]["status"] for i in range(senders)] == ["FILLED"] * senders
    served = [r["client_order_id"] for r in seeded.read_trade_log("main", count=100, newest_first=False)]
    assert served == [f"fifo-{i}" for i in range(senders)]
    assert seeded.read_order_queue("main") == ([], None)
    for client in clients:
        client.close()


# -- crash safety and the bounded wait -----------------------------------------------------------------------

_HOLDER = """
import sys, time, redis
from engine.settings import settings_from_dict
from logic.risk_manager import RiskManager
from tests.conftest import TEST_CONFIG
calls = []
def clock():
    calls.append(1)
    if len(calls) == 2:  # the second reading is taken after WATCH: inside the critical section
        print("inside", flush=True)
        time.sleep(600)
    return 1_700_000_000.0
rm = RiskManager(redis.Redis.from_url(sys.argv[1]), "main", settings_from_dict(TEST_CONFIG), clock=clock)
rm.execute_trade("AAA", 100, "BUY", client_order_id="killed")
"""


def test_a_holder_killed_inside_the_critical_section_blocks_the_next_order_only_until_its_lease_expires(
    rm: RiskManager, seeded: Store, redis_server: EmbeddedRedis
) -> None:
    before = seeded.read_portfolio("main")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, redis_server.url], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "inside"
        (dead_ticket,), lease = seeded.read_order_queue("main")
        assert lease == dead_ticket
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()

    result = rm.execute_trade("AAA", 10, "BUY", client_order_id="after-the-crash")

    assert result["status"] == "FILLED"  # not a queue timeout: the dead head was reaped once its lease lapsed
    after = seeded.read_portfolio("main")
    fill = result["fill"]
    assert after.cash == before.cash - Decimal(str(fill["price"])) * 10 - Decimal(str(fill["fees"]))
    assert after.positions["AAA"].qty == before.positions["AAA"].qty + 10
    assert seeded.read_order("main", "killed") is None  # the killed order traded nothing
    assert [r["client_order_id"] for r in seeded.read_trade_log("main")] == ["after-the-crash"]
    assert seeded.read_order_queue("main") == ([], None)
    assert _order_keys(seeded, "main") == []


def test_a_holder_that_stalls_past_its_lease_is_overtaken_and_still_books_correctly_when_it_wakes(
    rm: RiskManager, seeded: Store, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(execution, "LEASE_SECONDS", 0.2)
    monkeypatch.setattr(execution, "WAKE_POLL_SECONDS", 0.05)
    before = seeded.read_portfolio("main")
    inside, resume = threading.Event(), threading.Event()
    calls: list[int] = []

    def stalling_clock() -> float:
        calls.append(1)
        if len(calls) == 2:  # after WATCH: the holder stalls inside the critical section
            inside.set()
            resume.wait(60)
        return NOW

    slow_client = redis.Redis.from_url(redis_server.url, socket_timeout=30)
    slow = RiskManager(slow_client, "main", _settings(), clock=stalling_clock)
    answers: dict[str, dict[str, Any]] = {}
    thread = threading.Thread(target=lambda: answers.update(slow=slow.execute_trade("AAA", 7, "BUY", "slow")))
    thread.start()
    assert inside.wait(60)

    overtaking = rm.execute_trade("AAA", 10, "BUY", client_order_id="overtaking")  # reaps the stalled head
    resume.set()
    thread.join(60)
    slow_client.close()

    assert overtaking["status"] == "FILLED" and answers["slow"]["status"] == "FILLED"
    # the stalled order's WATCH saw the overtaking fill: it re-read the book and booked after it
    assert Decimal(answers["slow"]["fill"]["cash_before"]) == Decimal(overtaking["fill"]["cash_after"])
    after = seeded.read_portfolio("main")
    assert after.cash == Decimal(answers["slow"]["fill"]["cash_after"])
    assert after.positions["AAA"].qty == before.positions["AAA"].qty + 17
    assert seeded.read_order_queue("main") == ([], None)
    assert _order_keys(seeded, "main") == []


def test_an_order_that_cannot_get_its_turn_in_time_is_refused_store_unavailable_and_leaves_the_queue(
    rm: RiskManager, seeded: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(execution, "QUEUE_WAIT_SECONDS", 0.3)
    monkeypatch.setattr(execution, "WAKE_POLL_SECONDS", 0.1)
    seeded.join_order_queue("main", "stuck", 60.0, 60.0)  # a live head that never finishes
    cash = seeded.read_portfolio("main").cash

    result = rm.execute_trade("AAA", 10, "BUY", client_order_id="patient")

    assert result["status"] == "REJECTED" and [r["code"] for r in result["reasons"]] == ["STORE_UNAVAILABLE"]
    assert "order queue" in result["reasons"][0]["message"]
    assert seeded.read_order_queue("main") == (["stuck"], "stuck")
    assert seeded.read_portfolio("main").cash == cash
    assert seeded.read_order("main", "patient") is None
    assert rm.trade_log(1)[0]["reasons"][0]["code"] == "STORE_UNAVAILABLE"
    # once the queue moves, the same client order id trades
    seeded.leave_order_queue("main", "stuck", 60.0, 60.0)
    assert rm.execute_trade("AAA", 10, "BUY", client_order_id="patient")["status"] == "FILLED"
    assert _order_keys(seeded, "main") == []


def test_an_order_queue_key_of_the_wrong_type_refuses_the_order_store_corrupt_and_changes_nothing(
    rm: RiskManager, seeded: Store, redis_client: redis.Redis
) -> None:
    redis_client.set(PortfolioKeys("main").order_queue, "not a list")
    before = store_contents(redis_client)

    result = rm.execute_trade("AAA", 10, "BUY", client_order_id="corrupt")

    assert result["status"] == "REJECTED" and [r["code"] for r in result["reasons"]] == ["STORE_CORRUPT"]
    assert store_contents(redis_client) == before


def test_an_order_leaves_no_queue_key_behind(rm: RiskManager, seeded: Store) -> None:
    rm.execute_trade("AAA", 10, "BUY", client_order_id="one")
    rm.execute_trade("AAA", 5000, "SELL", client_order_id="two")  # refused: leaves nothing either
    rm.execute_trade("AAA", 10, "BUY", client_order_id="one")  # a duplicate

    assert _order_keys(seeded, "main") == []


# -- the queue protocol, step by step -------------------------------------------------------------------------

LEASE = 60.0


def test_a_ticket_joining_an_empty_queue_is_the_head_at_once_and_leaving_clears_every_key(store: Store) -> None:
    assert store.join_order_queue("p", "a", LEASE, LEASE) == (True, 0)
    assert store.read_order_queue("p") == (["a"], "a")
    assert 0 < store.client.pttl(PortfolioKeys("p").order_lease) <= LEASE * 1000

    assert store.leave_order_queue("p", "a", LEASE, LEASE) is True
    assert store.read_order_queue("p") == ([], None)
    assert _order_keys(store, "p") == []


def test_the_head_leaving_hands_the_lease_and_a_wake_up_to_the_next_ticket_only(store: Store) -> None:
    for ticket in ("a", "b", "c"):
        store.join_order_queue("p", ticket, LEASE, LEASE)
    assert not store.wait_order_turn("p", "b", 0.01)  # no hand-over yet

    store.leave_order_queue("p", "a", LEASE, LEASE)

    assert store.read_order_queue("p") == (["b", "c"], "b")
    assert 0 < store.client.pttl(PortfolioKeys("p").order_wake("b")) <= LEASE * 1000  # expires if never read
    assert store.wait_order_turn("p", "b", 0.01)
    assert not store.wait_order_turn("p", "c", 0.01)
    assert _order_keys(store, "p") == [PortfolioKeys("p").order_lease.encode(), PortfolioKeys("p").order_queue.encode()]


def test_a_waiter_leaving_from_the_middle_keeps_the_others_in_order(store: Store) -> None:
    for ticket in ("a", "b", "c", "d"):
        store.join_order_queue("p", ticket, LEASE, LEASE)

    assert store.leave_order_queue("p", "c", LEASE, LEASE) is False

    assert store.read_order_queue("p") == (["a", "b", "d"], "a")


def test_a_head_with_a_live_lease_is_never_reaped(store: Store) -> None:
    store.join_order_queue("p", "a", LEASE, LEASE)
    store.join_order_queue("p", "b", LEASE, LEASE)
    store.client.pexpire(PortfolioKeys("p").order_lease, 1_000_000)  # however close to expiry, still live

    assert store.check_order_queue("p", "b", LEASE, LEASE) == (0, 0)
    assert store.read_order_queue("p") == (["a", "b"], "a")


def test_a_head_whose_lease_expired_is_reaped_and_the_next_ticket_promoted(store: Store) -> None:
    for ticket in ("a", "b", "c"):
        store.join_order_queue("p", ticket, LEASE, LEASE)
    store.client.delete(PortfolioKeys("p").order_lease)  # what the PX expiry does when a's process dies

    assert store.check_order_queue("p", "c", LEASE, LEASE) == (0, 1)  # c still waits, behind b

    assert store.read_order_queue("p") == (["b", "c"], "b")
    assert store.wait_order_turn("p", "b", 0.01)


def test_dead_heads_in_a_row_are_all_reaped_by_one_check(store: Store) -> None:
    for ticket in ("a", "b", "c"):
        store.join_order_queue("p", ticket, LEASE, LEASE)
    store.client.delete(PortfolioKeys("p").order_lease)  # a dies
    assert store.check_order_queue("p", "c", LEASE, LEASE) == (0, 1)
    store.client.delete(PortfolioKeys("p").order_lease)  # b, promoted, had died waiting

    assert store.check_order_queue("p", "c", LEASE, LEASE) == (1, 1)

    assert store.read_order_queue("p") == (["c"], "c")
    assert _order_keys(store, "p") == [PortfolioKeys("p").order_lease.encode(), PortfolioKeys("p").order_queue.encode()]


def test_a_ticket_joining_behind_a_dead_head_takes_the_lease_at_once(store: Store) -> None:
    store.join_order_queue("p", "dead", LEASE, LEASE)
    store.client.delete(PortfolioKeys("p").order_lease)

    assert store.join_order_queue("p", "b", LEASE, LEASE) == (True, 1)
    assert store.read_order_queue("p") == (["b"], "b")
    assert _order_keys(store, "p") == [PortfolioKeys("p").order_lease.encode(), PortfolioKeys("p").order_queue.encode()]


def test_a_head_reaped_while_it_stalled_is_told_it_lost_its_place_and_its_leave_touches_no_one(
    store: Store,
) -> None:
    store.join_order_queue("p", "slow", LEASE, LEASE)
    store.client.delete(PortfolioKeys("p").order_lease)
    store.join_order_queue("p", "b", LEASE, LEASE)  # reaps "slow"

    assert store.check_order_queue("p", "slow", LEASE, LEASE) == (-1, 0)
    assert store.refresh_order_lease("p", "slow", LEASE) is False
    assert store.leave_order_queue("p", "slow", LEASE, LEASE) is False
    assert store.read_order_queue("p") == (["b"], "b")
    assert store.refresh_order_lease("p", "b", LEASE) is True


def test_a_queue_ttl_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError):
        store.join_order_queue("p", "a", 0.0, LEASE)
    assert _order_keys(store, "p") == []
