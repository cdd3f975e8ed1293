"""Concurrent trading against one portfolio from several processes, on a real redis-server.

- 8 processes submit 1,000 trades in total: every trade is accounted for, the books reconcile exactly with the
  fills, and cash and quantities never go negative. The same harness pointed at a naive read-then-write
  executor loses updates: the reconciliation can fail, so it proves something.
- Oversell race: 8 processes sell the whole position at the same instant, 200 rounds: exactly one wins each.
- Idempotency: 10 processes send the same client order id at once: one trade, the same fill for everyone.

Each process builds its own client and RiskManager from the server's URL (fork start method; no client is
shared across processes).

- One RiskManager shared by threads (the dashboard's Desk hands one per portfolio to every session): a thread
  holding a trade view read before a limits change never makes another thread's execution use the old limits,
  nor moves the shared current limits back.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis

import warmup
from engine.records import DecisionStatus, ExecutionResult, ExecutionStatus, ReasonCode
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings, settings_from_dict
from engine.store import MarketHeader, PortfolioState, Position, Store
from logic.decisions import book_fill, commission, fill_price
from logic.risk_manager import RiskManager

from .conftest import TEST_CONFIG

CTX = multiprocessing.get_context("fork")
NOW = 1_700_000_000.0
PROCESSES = 8
TOTAL_TRADES = 1000
BARRIER_TIMEOUT = 60.0

_worker: dict[str, Any] = {}
"""Per-process state of the pool workers (their own client, store and manager)."""


def _settings() -> Settings:
    return settings_from_dict(TEST_CONFIG)


def _init_worker(url: str, barrier: Any, portfolio_id: str = "main") -> None:
    client = redis.Redis.from_url(url, socket_timeout=30)
    _worker["client"] = client
    _worker["store"] = Store(client)
    _worker["settings"] = _settings()
    _worker["rm"] = RiskManager(client, portfolio_id, _worker["settings"], clock=lambda: NOW)
    _worker["barrier"] = barrier


# -- the two executors under test ----------------------------------------------------------------------------


def _random_orders(seed: int, count: int) -> list[tuple[str, int, str]]:
    rng = random.Random(seed)
    orders = []
    for k in range(count):
        if k % 10 == 9:
            orders.append(("AAA", 5000, "SELL"))  # never possible: more than the position can ever be
        else:
            orders.append((rng.choice(("AAA", "BBB")), rng.randint(1, 300), rng.choice(("BUY", "SELL"))))
    return orders


def _atomic_batch(job: tuple[int, int]) -> list[dict[str, Any]]:
    seed, count = job
    _worker["barrier"].wait(BARRIER_TIMEOUT)
    results = []
    for ticker, qty, side in _random_orders(seed, count):
        result = _worker["rm"].execute_trade(ticker, qty, side, client_order_id=f"p{seed}-{len(results)}")
        results.append({"status": result["status"], "fill": result["fill"], "reasons": result["reasons"]})
    return results


def _naive_execute(
    store: Store, settings: Settings, ticker: str, qty: int, side: str
) -> dict[str, Any] | None:
    """A deliberately naive executor: read, decide, pause, write back. No WATCH, no transaction."""
    state = store.read_portfolio("main")
    header: MarketHeader = store.read_market_header()
    price = fill_price(float(header.prices[header.index(ticker)]))
    held = state.positions.get(ticker)
    if side == "SELL" and qty > (held.qty if held else 0):
        return None
    fee = commission(settings.fees, qty, price)
    booking = book_fill(held, side, qty, price, fee)
    if state.cash + booking.cash_delta < 0:
        return None
    time.sleep(0.002)  # the window in which another process's update gets overwritten
    new_state = PortfolioState(
        **{**state.__dict__, "cash": state.cash + booking.cash_delta, "fees_paid": state.fees_paid + fee}
    )
    store.write_portfolio_state(new_state)
    store.write_position("main", ticker, booking.position)
    return {"ticker": ticker, "side": side, "qty": qty, "price": str(price), "fees": str(fee)}


def _naive_batch(job: tuple[int, int]) -> list[dict[str, Any]]:
    seed, count = job
    _worker["barrier"].wait(BARRIER_TIMEOUT)
    results = []
    for ticker, qty, side in _random_orders(seed, count):
        fill = _naive_execute(_worker["store"], _worker["settings"], ticker, qty, side)
        results.append({"status": "FILLED" if fill else "REJECTED", "fill": fill, "reasons": []})
    return results


# -- harness -------------------------------------------------------------------------------------------------


@pytest.fixture
def pool_factory(redis_server: EmbeddedRedis) -> Iterator[Callable[..., Any]]:
    pools: list[Any] = []

    def make(processes: int, portfolio_id: str = "main") -> tuple[Any, Any]:
        barrier = CTX.Barrier(processes)
        pool = CTX.Pool(
            processes, initializer=_init_worker, initargs=(redis_server.url, barrier, portfolio_id)
        )
        pools.append(pool)
        return pool, barrier

    yield make
    for pool in pools:  # every worker process is stopped, whatever the test did
        pool.terminate()
        pool.join()


def _hammer(pool: Any, batch: Callable[[tuple[int, int]], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    per_process = TOTAL_TRADES // PROCESSES
    jobs = [(seed, per_process) for seed in range(PROCESSES)]
    return [r for results in pool.map(batch, jobs, chunksize=1) for r in results]


def _expected_books(initial: PortfolioState, fills: list[dict[str, Any]]) -> tuple[Decimal, dict[str, int]]:
    """Cash and quantities implied by the initial portfolio plus every fill, computed from the fills alone."""
    cash = initial.cash
    qty = {t: p.qty for t, p in initial.positions.items()}
    for fill in fills:
        notional = Decimal(fill["price"]) * fill["qty"]
        signed = fill["qty"] if fill["side"] == "BUY" else -fill["qty"]
        cash += (-notional if fill["side"] == "BUY" else notional) - Decimal(fill["fees"])
        qty[fill["ticker"]] = qty.get(fill["ticker"], 0) + signed
    return cash, qty


def _reconciles(initial: PortfolioState, final: PortfolioState, fills: list[dict[str, Any]]) -> bool:
    cash, qty = _expected_books(initial, fills)
    final_qty = {t: p.qty for t, p in final.positions.items()}
    return cash == final.cash and {t: q for t, q in qty.items() if q} == {
        t: q for t, q in final_qty.items() if q
    }


@pytest.fixture
def seeded(store: Store) -> Store:
    warmup.seed(store, _settings(), now=NOW)
    return store


def test_1000_concurrent_trades_from_8_processes_reconcile_exactly(seeded: Store, pool_factory: Any) -> None:
    initial = seeded.read_portfolio("main")
    pool, _ = pool_factory(PROCESSES)

    results = _hammer(pool, _atomic_batch)

    assert len(results) == TOTAL_TRADES
    fills = [r["fill"] for r in results if r["status"] == "FILLED"]
    rejected = [r for r in results if r["status"] == "REJECTED"]
    assert len(fills) + len(rejected) == TOTAL_TRADES
    assert len(rejected) >= TOTAL_TRADES // 10  # at least the impossible sells
    assert all(r["reasons"] for r in rejected)
    final = seeded.read_portfolio("main")
    assert _reconciles(initial, final, fills)
    assert final.fees_paid == sum((Decimal(f["fees"]) for f in fills), Decimal(0))
    # the trade log is the serial order of the fills: each starts from the cash the previous one left
    logged = [
        r["fill"]
        for r in seeded.read_trade_log("main", count=10 * TOTAL_TRADES, newest_first=False)
        if r["status"] == "FILLED"
    ]
    assert sorted(f["trade_id"] for f in logged) == sorted(f["trade_id"] for f in fills)
    for previous, fill in zip(logged, logged[1:], strict=False):
        assert Decimal(fill["cash_before"]) == Decimal(previous["cash_after"])
    assert (
        Decimal(logged[0]["cash_before"]) == initial.cash and Decimal(logged[-1]["cash_after"]) == final.cash
    )
    assert all(Decimal(f["cash_after"]) >= 0 and f["position_after"] >= 0 for f in logged)


def test_the_same_harness_catches_lost_updates_of_a_naive_read_then_write(
    seeded: Store, pool_factory: Any
) -> None:
    initial = seeded.read_portfolio("main")
    pool, _ = pool_factory(PROCESSES)

    results = _hammer(pool, _naive_batch)

    fills = [r["fill"] for r in results if r["status"] == "FILLED"]
    assert len(fills) > PROCESSES
    assert not _reconciles(initial, seeded.read_portfolio("main"), fills)  # updates were lost


def _sell_everything(round_: int) -> dict[str, Any]:
    _worker["barrier"].wait(BARRIER_TIMEOUT)
    result = _worker["rm"].execute_trade("AAA", 1000, "SELL")
    return {"status": result["status"], "codes": sorted(r["code"] for r in result["reasons"])}


def test_an_oversell_race_of_8_processes_has_exactly_one_winner_in_each_of_200_rounds(
    seeded: Store, pool_factory: Any
) -> None:
    pool, _ = pool_factory(PROCESSES)
    cash = seeded.read_portfolio("main").cash
    rounds = 200

    winners = []
    for round_ in range(rounds):
        seeded.write_position("main", "AAA", Position(qty=1000, avg_price=Decimal("100")))
        outcomes = pool.map(_sell_everything, [round_] * PROCESSES, chunksize=1)
        winners.append(sum(o["status"] == "FILLED" for o in outcomes))
        losers = [o["codes"] for o in outcomes if o["status"] == "REJECTED"]
        assert all(c in (["OVERSELL"], ["SHORT_NOT_ALLOWED"]) for c in losers), losers
        assert seeded.read_portfolio("main").positions.get("AAA", Position(0, Decimal(0))).qty == 0

    assert winners == [1] * rounds
    # each round credited exactly one sale: 1000 x 100 less the 10.00 fee
    assert seeded.read_portfolio("main").cash == cash + rounds * Decimal("99990.00")


def _send_same_order(client_order_id: str) -> dict[str, Any]:
    _worker["barrier"].wait(BARRIER_TIMEOUT)
    result = _worker["rm"].execute_trade("AAA", 10, "BUY", client_order_id=client_order_id)
    return {"status": result["status"], "fill": result["fill"], "duplicate": result["duplicate"]}


def test_one_client_order_id_sent_by_10_processes_at_once_trades_once(
    seeded: Store, pool_factory: Any
) -> None:
    pool, _ = pool_factory(10)
    cash = seeded.read_portfolio("main").cash
    rounds = 20

    for round_ in range(rounds):
        outcomes = pool.map(_send_same_order, [f"double-click-{round_}"] * 10, chunksize=1)

        assert all(o["status"] == "FILLED" for o in outcomes)
        assert all(o["fill"] == outcomes[0]["fill"] for o in outcomes)
        assert sum(not o["duplicate"] for o in outcomes) == 1

    state = seeded.read_portfolio("main")
    assert state.positions["AAA"].qty == 1000 + rounds * 10
    assert state.cash == cash - rounds * Decimal("1001.00")
    fills = [r for r in seeded.read_trade_log("main", count=1000) if r["status"] == "FILLED"]
    assert len(fills) == rounds


# -- one RiskManager shared by threads ------------------------------------------------------------------------


def _cut_notional_to(store: Store, limit: str) -> None:
    """A risk manager's change made elsewhere (another process's RiskManager)."""
    RiskManager(store.client, "main", _settings(), clock=lambda: NOW).set_limits(
        {"max_order_notional": limit}, "https://idp|rm-carol", "stop large tickets"
    )


def test_a_shared_gate_executes_with_the_new_limits_while_another_thread_checks_a_view_read_before_them(
    seeded: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: the shared manager is warm on the settings' limits; a second session's thread holds a trade
    # view read before a risk manager cut max_order_notional to 500 (an order of 10 AAA is 1,000)
    shared = RiskManager(seeded.client, "main", _settings(), clock=lambda: NOW)
    assert shared.check("AAA", 10, "BUY").approved
    stale_view = seeded.read_trade_view("main", NOW - 60, memo={})
    _cut_notional_to(seeded, "500")
    executions: list[ExecutionResult] = []
    stale_checks: list[Any] = []
    execution = threading.Thread(
        target=lambda: executions.append(shared.execute("AAA", 10, "BUY", client_order_id="t-race")),
        name="execution",
    )
    stale_session = threading.Thread(target=lambda: stale_checks.append(shared.check("AAA", 10, "BUY")))
    read_view = shared.store.read_trade_view

    def read_trade_view(*args: Any, **kwargs: Any) -> Any:
        return stale_view if threading.current_thread() is stale_session else read_view(*args, **kwargs)

    use_limits = shared.use_limits

    def switch_then_let_the_stale_session_in(limits: Any, *rest: Any) -> Any:
        checker = use_limits(limits, *rest)
        if threading.current_thread() is execution and not stale_checks:
            # the execution thread has just taken the new limits; the other session checks right here
            stale_session.start()
            stale_session.join(BARRIER_TIMEOUT)
        return checker

    monkeypatch.setattr(shared.store, "read_trade_view", read_trade_view)
    monkeypatch.setattr(shared, "use_limits", switch_then_let_the_stale_session_in)

    # Act
    execution.start()
    execution.join(BARRIER_TIMEOUT)

    # Assert: the stale session was checked on its own view (the settings' limits) inside the window
    assert len(stale_checks) == 1 and stale_checks[0].status == DecisionStatus.APPROVED
    (result,) = executions
    assert result.status == ExecutionStatus.REJECTED and {r.code for r in result.reasons} == {ReasonCode.MAX_NOTIONAL}
    assert seeded.read_portfolio("main").positions["AAA"].qty == 1000 and seeded.read_order("main", "t-race") is None
    monkeypatch.undo()
    assert shared.limits.max_order_notional == 500  # the older view did not bring the old limits back
    assert shared.check("AAA", 5, "BUY").approved  # 500: at the limit
    assert {r.code for r in shared.check("AAA", 6, "BUY").reasons} == {ReasonCode.MAX_NOTIONAL}


def test_a_view_of_older_limits_gets_its_own_checker_and_never_moves_the_shared_one_back(seeded: Store) -> None:
    shared = RiskManager(seeded.client, "main", _settings(), clock=lambda: NOW)
    _cut_notional_to(seeded, "500")
    version_1 = seeded.read_trade_view("main", NOW - 60, memo={})
    _cut_notional_to(seeded, "600")
    version_2 = seeded.read_trade_view("main", NOW - 60, memo={})

    newer = shared.checker_for(version_2)
    older = shared.checker_for(version_1)
    again = shared.checker_for(version_1)

    assert (newer.limits.max_order_notional, older.limits.max_order_notional) == (600, 500)
    assert again is older and older.books is newer.books  # built once; the holdings' risk cache is shared
    assert shared.checker is newer and shared.limits_version == 2
    assert shared.limits.max_order_notional == 600
