"""What execute_trade answers when it cannot simply read its EXEC's reply, or when a client order id is reused
(logic/execution.py), on a real redis-server reached through a real socket that fails (tests/redis_proxy.py).

1. A lost EXEC reply is read back, never reported as a store failure: the order's record present is FILLED (this
   call's own fill, once), absent is retried; Redis unreachable for the whole read-back is status ``UNKNOWN``
   with reason ``OUTCOME_UNKNOWN`` (never "nothing traded"), and the resend with the same client order id once
   Redis is back is the duplicate fill, or the one fill when the first send never committed.
2. A client order id names one order: the same order sent again is the idempotent duplicate, another order
   (one share more, another ticker, side or intent) is refused ``DUPLICATE_ORDER_ID`` naming the original, and
   writes nothing but the refused execution's trade-log record.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import warmup
from engine.records import ExecutionStatus, OrderIntent, ReasonCode
from engine.redis_server import EmbeddedRedis, connect
from engine.settings import Settings
from engine.store import PortfolioKeys, Store
from logic import execution
from logic.risk_manager import RiskManager

from .conftest import store_contents
from .redis_proxy import FaultyRedisProxy, faulty_proxy

NOW = 1_700_000_000.0
SHORT_READ_BACK = 0.3
"""The read-back of the outage tests (the shipped 5 s would only slow them down)."""


@pytest.fixture
def seeded(store: Store, settings: Settings) -> Store:
    warmup.seed(store, settings, now=NOW)
    return store


@pytest.fixture
def proxy(redis_server: EmbeddedRedis, seeded: Store) -> Iterator[FaultyRedisProxy]:
    with faulty_proxy(redis_server.socket_path) as p:
        yield p


def gate_through(proxy: FaultyRedisProxy, settings: Settings, socket_timeout: float = 10.0) -> RiskManager:
    """A gate whose every Redis call goes through ``proxy``, on the client every process uses (engine/redis_server.py
    ``connect``: redis-py's connection default of no retry); the tests read the store directly, past the proxy."""
    return RiskManager(connect(proxy.url, timeout=socket_timeout), "main", settings, clock=lambda: NOW)


def codes(result: dict[str, Any]) -> list[str]:
    return [r["code"] for r in result["reasons"]]


def fills(store: Store) -> list[dict[str, Any]]:
    return [r for r in store.read_trade_log("main", 100) if r["status"] == "FILLED"]


def aaa(store: Store) -> int:
    return store.read_portfolio("main").positions["AAA"].qty


# -- 1. a lost EXEC reply --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "socket_timeout"),
    [("reset", 10.0), ("hold", 0.5)],
    ids=["connection-reset-after-commit", "socket-timeout-after-commit"],
)
def test_a_fill_whose_exec_reply_is_lost_while_redis_answers_is_filled_once_as_this_calls_own_fill(
    proxy: FaultyRedisProxy, seeded: Store, settings: Settings, mode: Any, socket_timeout: float
) -> None:
    # Arrange
    rm = gate_through(proxy, settings, socket_timeout)
    before = aaa(seeded)
    proxy.arm(mode)

    # Act: Redis commits the fill; its reply never reaches the gate
    result = rm.execute_trade("AAA", 10, "BUY", client_order_id="lost-1")

    # Assert: FILLED, this call's fill (not a duplicate of an earlier call), traded once
    assert proxy.faults == 1
    assert result["status"] == "FILLED", result["reasons"]
    assert result["duplicate"] is False
    stored = seeded.read_order("main", "lost-1")
    assert stored is not None and result["fill"] == stored["fill"]
    assert aaa(seeded) == before + 10 == result["fill"]["position_after"]
    assert [f["fill"]["trade_id"] for f in fills(seeded)] == [result["fill"]["trade_id"]]
    assert seeded.read_order_queue("main") == ([], None)  # the EXEC that filled also left the queue
    # the same id sent again is the duplicate and trades nothing
    again = rm.execute_trade("AAA", 10, "BUY", client_order_id="lost-1")
    assert again["duplicate"] is True and again["fill"] == result["fill"] and aaa(seeded) == before + 10


def test_a_transaction_cut_before_it_reached_redis_is_retried_and_fills_once(
    proxy: FaultyRedisProxy, seeded: Store, settings: Settings
) -> None:
    rm = gate_through(proxy, settings)
    before = aaa(seeded)
    proxy.arm("cut")

    result = rm.execute_trade("AAA", 10, "BUY", client_order_id="cut-1")

    assert proxy.faults == 1
    assert result["status"] == "FILLED" and result["duplicate"] is False
    assert aaa(seeded) == before + 10
    assert len(fills(seeded)) == 1


def test_a_fill_whose_reply_is_lost_in_an_outage_shorter_than_the_read_back_is_filled_once(
    proxy: FaultyRedisProxy, seeded: Store, settings: Settings
) -> None:
    rm = gate_through(proxy, settings)
    before = aaa(seeded)
    proxy.arm("reset", then_down=True)
    back = threading.Timer(0.5, proxy.up)  # a failover of half a second, well inside the 5 s read-back
    back.start()
    try:
        result = rm.execute_trade("AAA", 10, "BUY", client_order_id="blip-1")
    finally:
        back.join()

    assert result["status"] == "FILLED" and result["duplicate"] is False, result["reasons"]
    assert aaa(seeded) == before + 10
    assert len(fills(seeded)) == 1


def test_a_fill_whose_reply_is_lost_while_redis_stays_down_is_outcome_unknown_and_its_resend_is_the_duplicate(
    proxy: FaultyRedisProxy, seeded: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: Redis commits, the reply is lost, and Redis stays unreachable for the whole read-back
    monkeypatch.setattr(execution, "READ_BACK_SECONDS", SHORT_READ_BACK)
    rm = gate_through(proxy, settings)
    before = aaa(seeded)
    proxy.arm("reset", then_down=True)

    # Act
    unknown = rm.execute_trade("AAA", 10, "BUY", client_order_id="dark-1")

    # Assert: never "nothing traded" -- the order did fill
    assert unknown["status"] == ExecutionStatus.UNKNOWN == "UNKNOWN"
    assert codes(unknown) == [ReasonCode.OUTCOME_UNKNOWN]
    message = unknown["reasons"][0]["message"]
    assert "BUY 10 AAA" in message and "dark-1" in message and "MAY HAVE FILLED" in message
    assert "resend with the same client_order_id once Redis is back" in message
    assert unknown["fill"] is None and unknown["duplicate"] is False
    assert unknown["decision"]["status"] == "APPROVED"  # the decision the fill was sent on
    assert aaa(seeded) == before + 10

    # Act: Redis is back; the trader resends with the same id
    proxy.up()
    resent = rm.execute_trade("AAA", 10, "BUY", client_order_id="dark-1")

    # Assert: the first send's fill, and the position moved once
    assert resent["status"] == "FILLED" and resent["duplicate"] is True
    stored = seeded.read_order("main", "dark-1")
    assert stored is not None and resent["fill"] == stored["fill"]
    assert aaa(seeded) == before + 10
    assert len(fills(seeded)) == 1


def test_a_fill_cut_before_redis_while_redis_stays_down_is_outcome_unknown_and_its_resend_fills_it_once(
    proxy: FaultyRedisProxy, seeded: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(execution, "READ_BACK_SECONDS", SHORT_READ_BACK)
    monkeypatch.setattr(execution, "LEASE_SECONDS", 0.5)  # the unreachable order's queue lease lapses sooner
    rm = gate_through(proxy, settings)
    before = aaa(seeded)
    proxy.arm("cut", then_down=True)

    unknown = rm.execute_trade("AAA", 10, "BUY", client_order_id="dark-2")

    assert unknown["status"] == "UNKNOWN" and codes(unknown) == ["OUTCOME_UNKNOWN"]
    assert aaa(seeded) == before  # this time it did not fill: the gate could not know which
    proxy.up()
    resent = rm.execute_trade("AAA", 10, "BUY", client_order_id="dark-2")
    assert resent["status"] == "FILLED" and resent["duplicate"] is False
    assert aaa(seeded) == before + 10
    assert len(fills(seeded)) == 1


def test_a_rejection_whose_reply_is_lost_stays_a_rejection_with_its_reason(
    proxy: FaultyRedisProxy, seeded: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(execution, "READ_BACK_SECONDS", SHORT_READ_BACK)
    rm = gate_through(proxy, settings)
    before = seeded.read_portfolio("main")
    proxy.arm("reset", then_down=True)

    result = rm.execute_trade("AAA", 5000, "SELL", client_order_id="lost-no")

    assert result["status"] == "REJECTED" and codes(result) == ["OVERSELL"]  # a rejection trades nothing anyway
    assert seeded.read_portfolio("main") == before


# -- 2. a client order id names one order -----------------------------------------------------------------------


@pytest.fixture
def rm(seeded: Store, settings: Settings) -> RiskManager:
    return RiskManager(seeded.client, "main", settings, clock=lambda: NOW)


def everything_but_the_trade_log(client: redis.Redis) -> dict[bytes, Any]:
    trades = PortfolioKeys("main").trades.encode()
    return {k: v for k, v in store_contents(client).items() if k != trades}


def test_the_same_order_sent_again_with_its_id_is_the_duplicate_fill_and_writes_nothing(
    rm: RiskManager, seeded: Store
) -> None:
    first = rm.execute_trade("AAA", 10, "BUY", client_order_id="ord-42")
    before = store_contents(seeded.client)

    again = rm.execute_trade("AAA", 10.0, "buy", client_order_id="ord-42")  # the same order, spelt otherwise

    assert again["status"] == "FILLED" and again["duplicate"] is True and again["fill"] == first["fill"]
    assert store_contents(seeded.client) == before


def test_the_same_id_for_one_share_more_is_refused_naming_the_order_that_used_it(
    rm: RiskManager, seeded: Store
) -> None:
    # Arrange
    first = rm.execute_trade("AAA", 10, "BUY", client_order_id="ord-42")
    before = everything_but_the_trade_log(seeded.client)

    # Act
    other = rm.execute_trade("AAA", 11, "BUY", client_order_id="ord-42", actor="bob")

    # Assert: refused with the new code, nothing written but the refused execution's record
    assert other["status"] == "REJECTED" and other["duplicate"] is False and other["fill"] is None
    assert codes(other) == [ReasonCode.DUPLICATE_ORDER_ID]
    message = other["reasons"][0]["message"]
    assert "already used for BUY 10 AAA" in message and first["fill"]["trade_id"] in message
    assert "BUY 11 AAA" in message
    assert everything_but_the_trade_log(seeded.client) == before
    newest, oldest = seeded.read_trade_log("main", 10)
    assert oldest["fill"] == first["fill"]
    assert newest["status"] == "REJECTED" and newest["actor"] == "bob" and newest["client_order_id"] == "ord-42"
    assert [r["code"] for r in newest["reasons"]] == ["DUPLICATE_ORDER_ID"]
    stored = seeded.read_order("main", "ord-42")
    assert stored is not None and stored["fill"] == first["fill"]  # the id still names the first order


@pytest.mark.parametrize(
    ("ticker", "qty", "side", "intent", "original"),
    [
        ("BBB", 10, "SELL", OrderIntent.TRADE, "SELL 10 AAA"),
        ("AAA", 10, "BUY", OrderIntent.TRADE, "SELL 10 AAA"),
        ("AAA", 9, "SELL", OrderIntent.TRADE, "SELL 10 AAA"),
        ("AAA", 10, "SELL", OrderIntent.LIQUIDATION, "SELL 10 AAA"),
    ],
    ids=["ticker", "side", "qty", "intent"],
)
def test_the_same_id_for_another_order_is_refused_and_changes_no_book(
    rm: RiskManager, seeded: Store, ticker: str, qty: int, side: str, intent: OrderIntent, original: str
) -> None:
    rm.execute_trade("AAA", 10, "SELL", client_order_id="reused")
    before = everything_but_the_trade_log(seeded.client)

    other = rm.execute_trade(ticker, qty, side, client_order_id="reused", intent=intent)

    assert other["status"] == "REJECTED" and codes(other) == ["DUPLICATE_ORDER_ID"]
    assert f"already used for {original}" in other["reasons"][0]["message"]
    assert everything_but_the_trade_log(seeded.client) == before


def test_a_liquidation_sent_again_with_its_id_is_the_duplicate(rm: RiskManager, seeded: Store) -> None:
    first = rm.execute_trade("AAA", 10, "SELL", client_order_id="liq-1", intent=OrderIntent.LIQUIDATION)

    again = rm.execute_trade("AAA", 10, "SELL", client_order_id="liq-1", intent="liquidation")  # type: ignore[arg-type]

    assert again["duplicate"] is True and again["fill"] == first["fill"]


def test_a_reused_id_is_refused_even_when_the_order_gives_up_waiting_for_its_turn(
    rm: RiskManager, seeded: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue's give-up path answers with the stored fill only for the same order (logic/execution.py
    ``_give_up``)."""
    rm.execute_trade("AAA", 10, "BUY", client_order_id="stuck")
    monkeypatch.setattr(execution, "QUEUE_WAIT_SECONDS", 0.2)
    seeded.join_order_queue("main", "blocker", 60.0, 60.0)  # an order ahead that never finishes
    try:
        same = rm.execute_trade("AAA", 10, "BUY", client_order_id="stuck")
        other = rm.execute_trade("AAA", 20, "BUY", client_order_id="stuck")
    finally:
        seeded.leave_order_queue("main", "blocker", 60.0, 60.0)

    assert same["status"] == "FILLED" and same["duplicate"] is True
    assert other["status"] == "REJECTED" and codes(other) == ["DUPLICATE_ORDER_ID"]
    assert "already used for BUY 10 AAA" in other["reasons"][0]["message"]
