"""execute_trade and the checks when the store misbehaves, on a real redis-server (no mocks):

1. A key a fill writes holds the wrong type: Redis does not roll a MULTI back when one of its commands fails, so
   the trade view (engine/store/trading.py) checks the type of every key the fill writes and the order is refused
   ``STORE_CORRUPT`` naming the key before any MULTI: nothing at all is written. An EXEC that still partly fails
   (a command Redis refuses at EXEC time: here XADD on a stream whose ids are exhausted) is read back: the fill
   committed, so it is FILLED with a ``STORE_CORRUPT`` warning and an audit record, never REJECTED.
2. ``max_qty_allowed`` when one share fails but more pass: a cash account without cash can only sell enough
   shares to pay the minimum fee (logic/sizing.py).
3. Redis down: the default clock (engine/clocks.py ``MarketClock``) never raises, so the gate answers REJECTED
   ``STORE_UNAVAILABLE`` past the clock's mode TTL, and a replay clock keeps its last known time.
"""

from __future__ import annotations

import math
import time
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

import warmup
from engine import clocks
from engine.clocks import ClockMode, MarketClock
from engine.redis_server import EmbeddedRedis
from engine.settings import Fees, Settings
from engine.store import PortfolioKeys, Store
from engine.store.keys import heartbeat_key
from logic import execution
from logic.risk_manager import RiskManager
from logic.sizing import FLOOR_PROBES, MAX_EVALUATIONS, largest_passing

from .conftest import store_contents

NOW = 1_700_000_000.0
MAX_STREAM_ID = "18446744073709551615-18446744073709551615"
"""The last id a stream can hold: once a stream's last id is this, Redis refuses every XADD at EXEC time."""
FEES = Fees(per_share=Decimal("0.01"), bps=Decimal(0), minimum=Decimal("1.00"))
"""tests/conftest.py's fees."""


def codes(result: dict[str, Any]) -> list[str]:
    return [r["code"] for r in result["reasons"]]


def fee(qty: int, price: Decimal, fees: Fees = FEES) -> Decimal:
    """An independent closed form of the fee: max(minimum, per_share q + bps q p / 10^4), half-up to the cent."""
    variable = fees.per_share * qty + fees.bps * qty * price / 10_000
    return max(fees.minimum, variable).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


@pytest.fixture
def seeded(store: Store, settings: Settings) -> Store:
    warmup.seed(store, settings, now=NOW)
    return store


def gate(store: Store, settings: Settings, portfolio: str = "main") -> RiskManager:
    return RiskManager(store.client, portfolio, settings, clock=lambda: NOW)


# -- 1. keys a fill writes --------------------------------------------------------------------------------------

FILL_KEYS = ("state", "positions", "orders", "orders_ts", "trades", "rate", "auto_rate", "marks", "peaks")
"""Every key TradingStore.write_fill writes (engine/store/trading.py), by PortfolioKeys property."""


@pytest.mark.parametrize("part", FILL_KEYS)
def test_a_key_the_fill_writes_holding_the_wrong_type_refuses_the_order_and_writes_nothing(
    seeded: Store, settings: Settings, part: str
) -> None:
    # Arrange: the key holds a string (no fill command works on it)
    client = seeded.client
    key = getattr(PortfolioKeys("main"), part)
    client.set(key, b"garbage")
    rm = gate(seeded, settings)
    before = store_contents(client)

    # Act: the order, the same order again, and a new one
    first = rm.execute_trade("AAA", 10, "BUY", client_order_id="P1")
    again = rm.execute_trade("AAA", 10, "BUY", client_order_id="P1")
    other = rm.execute_trade("AAA", 10, "BUY")
    checked = rm.check_trade_impact("AAA", 10, "BUY")

    # Assert: every one refused STORE_CORRUPT naming the key, and not one byte of the store changed
    for result in (first, again, other, checked):
        assert result["status"] == "REJECTED"
        assert "STORE_CORRUPT" in codes(result)
        assert any(key in r["message"] and "holds a string" in r["message"] for r in result["reasons"])
    for result in (first, again, other):
        assert result["fill"] is None
    assert store_contents(client) == before


def test_with_every_fill_key_of_the_right_type_the_same_order_fills(seeded: Store, settings: Settings) -> None:
    """The control of the test above: keys of the right type (a stream, a zset...) pass the type check."""
    rm = gate(seeded, settings)
    assert rm.execute_trade("AAA", 10, "BUY", client_order_id="P0")["status"] == "FILLED"  # creates them
    held = seeded.read_portfolio("main").positions["AAA"].qty

    result = rm.execute_trade("AAA", 10, "BUY", client_order_id="P1")

    assert result["status"] == "FILLED" and codes(result) == []
    assert seeded.read_portfolio("main").positions["AAA"].qty == held + 10


def exhaust_trade_log(client: redis.Redis, portfolio: str = "main") -> None:
    """The trade log stays a stream (the type check passes) whose every further XADD Redis refuses at EXEC."""
    key = PortfolioKeys(portfolio).trades
    client.xadd(key, {"json": "{}"}, id=MAX_STREAM_ID)
    client.xdel(key, MAX_STREAM_ID)  # empty again, its last id kept


@pytest.mark.parametrize("backend", ["store", "cluster_store"])
def test_a_fill_whose_exec_partly_fails_is_filled_with_a_warning_never_rejected(
    request: pytest.FixtureRequest, settings: Settings, backend: str
) -> None:
    """On one Redis and on a private 3-master Redis Cluster alike (redis-py queues a cluster MULTI elsewhere:
    its refused command must be found all the same)."""
    # Arrange
    seeded: Store = request.getfixturevalue(backend)
    warmup.seed(seeded, settings, now=NOW)
    client = seeded.client
    exhaust_trade_log(client)
    rm = gate(seeded, settings)
    before = seeded.read_portfolio("main")

    # Act
    result = rm.execute_trade("AAA", 10, "BUY", client_order_id="P1")

    # Assert: the fill committed (Redis ran every other write), and the answer says so
    after = seeded.read_portfolio("main")
    assert result["status"] == "FILLED" and result["duplicate"] is False
    fill = result["fill"]
    price = Decimal(str(fill["price"]))
    assert after.cash == before.cash - 10 * price - fee(10, price)
    assert Decimal(str(fill["cash_after"])) == after.cash
    assert after.positions["AAA"].qty == before.positions["AAA"].qty + 10
    assert codes(result) == ["STORE_CORRUPT"]
    warning = result["reasons"][0]["message"]
    assert "XADD" in warning and PortfolioKeys("main").trades in warning and "do NOT send" in warning
    stored = seeded.read_order("main", "P1")
    assert stored is not None and stored["fill"]["trade_id"] == fill["trade_id"]
    audits = [a for a in rm.audit_log(20) if a.get("action") == "fill_writes_failed"]
    assert len(audits) == 1 and audits[0]["trade_id"] == fill["trade_id"] and audits[0]["client_order_id"] == "P1"

    # the same order again: the one fill, nothing traded
    snapshot = store_contents(client)
    again = rm.execute_trade("AAA", 10, "BUY", client_order_id="P1")
    assert again["status"] == "FILLED" and again["duplicate"] is True
    assert again["fill"]["trade_id"] == fill["trade_id"]
    assert store_contents(client) == snapshot


@pytest.mark.parametrize("backend", ["store", "cluster_store"])
def test_the_commands_queued_in_a_multi_are_read_from_a_pipeline_and_a_cluster_pipeline(
    request: pytest.FixtureRequest, backend: str
) -> None:
    store: Store = request.getfixturevalue(backend)
    keys = PortfolioKeys("main")
    with store.client.pipeline(transaction=True) as pipe:
        pipe.watch(keys.state)
        pipe.multi()
        pipe.hset(keys.state, "cash", "1")
        pipe.xadd(keys.trades, {"json": "{}"})
        queued = execution._queued_commands(pipe)
        pipe.reset()
    names = [(c[0] if isinstance(c, tuple) else c.args)[:2] for c in queued]
    assert names == [("HSET", keys.state), ("XADD", keys.trades)]


def test_an_exec_answering_fewer_replies_than_commands_queued_fails_closed() -> None:
    queued = [(("HSET", "pf:{main}:state", "cash", "1"), {}), (("XADD", "pf:{main}:trades", "*", "j", "1"), {})]
    assert execution._failed_commands(queued, [1, b"1-1"]) == []  # as many replies, none an error
    assert execution._failed_commands(queued, [1]) == ["EXEC: 1 replies for 2 queued commands"]
    assert execution._failed_commands(queued, [1, b"1-1", 0]) == ["EXEC: 3 replies for 2 queued commands"]


def test_a_refused_order_whose_log_record_cannot_be_stored_is_still_refused_for_its_own_reason(
    seeded: Store, settings: Settings
) -> None:
    # Arrange: a cash account selling one share more than it holds (AAA 1000)
    client = seeded.client
    exhaust_trade_log(client)
    rm = gate(seeded, settings)
    before = seeded.read_portfolio("main")

    # Act
    result = rm.execute_trade("AAA", 1001, "SELL", client_order_id="R1")

    # Assert: its own reason, not a store failure; nothing traded
    assert result["status"] == "REJECTED" and codes(result) == ["OVERSELL"]
    assert seeded.read_portfolio("main") == before
    assert seeded.read_order("main", "R1") is None


# -- 2. max_qty_allowed when one share fails ----------------------------------------------------------------------

NO_CASH = {
    "universe": {
        "assets": {"DDD": {"price": 0.5, "annual_vol": 0.40, "avg_daily_volume": 3_000_000, "spread_bps": 2.0}}
    },
    "portfolios": [
        {"id": "main", "account_type": "cash", "cash": "0.00", "holdings": {"DDD": 10}},
        {
            "id": "hedge",
            "account_type": "margin",
            "cash": "200000.00",
            "holdings": {"CCC": 300},
            "initial_margin": 0.5,
            "maintenance_margin": 0.25,
        },
    ],
}


@pytest.mark.parametrize(
    ("minimum", "smallest"),
    [("1.00", 2), ("1.01", 3)],
    ids=["the-fee-paid-exactly-by-two-shares", "one-cent-more-needs-three"],
)
def test_max_qty_allowed_is_the_holding_when_one_share_cannot_pay_the_minimum_fee(
    store: Store, make_settings: Any, minimum: str, smallest: int
) -> None:
    # Arrange: cash 0, DDD 10 at 0.50; a sale of q leaves q * 0.50 - fee(q)
    settings = make_settings({**NO_CASH, "fees": {"per_share": "0.01", "bps": "0", "minimum": minimum}})
    warmup.seed(store, settings, now=NOW)
    rm = gate(store, settings)
    fees = Fees(per_share=Decimal("0.01"), bps=Decimal(0), minimum=Decimal(minimum))
    price = Decimal("0.5")
    assert min(q for q in range(1, 11) if q * price - fee(q, price, fees) >= 0) == smallest  # the closed form

    # Act
    decisions = {q: rm.check_trade_impact("DDD", q, "SELL") for q in (smallest - 1, smallest, 10, 11)}

    # Assert: the floor one share under and at it, the holding at it and one over
    below, at, top, over = (decisions[q] for q in (smallest - 1, smallest, 10, 11))
    assert below["status"] == "REJECTED" and codes(below) == ["INSUFFICIENT_CASH"]
    assert below["max_qty_allowed"] == 10
    assert at["status"] == "APPROVED" and Decimal(str(at["cash_after"])) >= 0
    assert top["status"] == "APPROVED"
    assert over["status"] == "REJECTED" and codes(over) == ["OVERSELL"] and over["max_qty_allowed"] == 10
    executed = rm.execute_trade("DDD", 11, "SELL", client_order_id="m1")
    assert executed["status"] == "REJECTED" and executed["decision"]["max_qty_allowed"] == 10


@given(
    low=st.integers(1, 5_000),
    width=st.integers(0, 5_000),
    cap=st.integers(1, 20_000),
    start=st.one_of(st.floats(-10, 50_000), st.just(math.inf)),
    rounding=st.integers(0, 1),
)
def test_the_search_finds_the_top_of_a_passing_interval_that_starts_above_one_share(
    low: int, width: int, cap: int, start: float, rounding: int
) -> None:
    """Passing quantities ``[low, low + width]``; ``floor`` is the closed form of ``low``, or a share under it."""
    calls: list[int] = []
    high = low + width

    def passes(q: int) -> bool:
        calls.append(q)
        return low <= q <= high

    floor = low - rounding if low - rounding > 1 else low  # 1 means "no floor": the search probes one share
    found = largest_passing(passes, start, cap, floor=float(floor))

    assert found == (min(high, cap) if low <= cap else 0)
    assert len(calls) <= MAX_EVALUATIONS
    assert all(1 <= q <= cap for q in calls)


def test_an_order_no_quantity_passes_stays_cheap() -> None:
    calls: list[int] = []

    def never(q: int) -> bool:
        calls.append(q)
        return False

    assert largest_passing(never, 500.0, 10_000) == 0
    assert calls == [500, 1]
    calls.clear()
    assert largest_passing(never, 500.0, 10_000, floor=40.0) == 0
    assert calls == [500, 1, 40, 41, 43, 47][: 2 + FLOOR_PROBES]


# -- 3. Redis down ------------------------------------------------------------------------------------------------


def test_the_gate_answers_store_unavailable_with_redis_down_past_the_clock_mode_ttl(
    fresh_redis: EmbeddedRedis, settings: Settings
) -> None:
    # Arrange: the gate on its default clock (MarketClock), used once while Redis is up
    client = redis.Redis.from_url(fresh_redis.url, socket_timeout=5)
    warmup.seed(Store(client), settings)
    rm = RiskManager(client, "main", settings)
    assert isinstance(rm.clock, MarketClock)
    assert rm.execute_trade("AAA", 1, "BUY", client_order_id="up")["status"] == "FILLED"

    # Act: Redis killed, and the clock's mode older than its TTL (the clock reads Redis again)
    fresh_redis.kill()
    time.sleep(clocks.MODE_TTL_SECONDS + 0.1)
    executed = rm.execute_trade("AAA", 1, "BUY", client_order_id="down")
    unnamed = rm.execute_trade("AAA", 1, "BUY")
    checked = rm.check_trade_impact("AAA", 1, "BUY")
    time.sleep(clocks.MODE_TTL_SECONDS + 0.1)
    checked_again = rm.check_trade_impact("AAA", 1, "BUY")

    # Assert
    for result in (executed, unnamed, checked, checked_again):
        assert result["status"] == "REJECTED" and codes(result) == ["STORE_UNAVAILABLE"]
    client.close()


def test_a_replay_clock_keeps_its_last_known_time_while_redis_is_down(fresh_redis: EmbeddedRedis) -> None:
    # Arrange: a replay heartbeat at bar time T, written just now
    client = redis.Redis.from_url(fresh_redis.url, socket_timeout=5)
    bar_time = 1_600_000_000.0
    client.hset(
        heartbeat_key(clocks.STREAM_COMPONENT),
        mapping={"clock": "replay", "ts": repr(bar_time), "wall_ts": repr(time.time()), "late_after": "60",
                 "run": "r1"},
    )  # fmt: skip
    clock = MarketClock(Store(client))
    never_read = MarketClock(Store(client))
    assert clock() == bar_time and clock.mode() == ClockMode.REPLAY

    # Act
    fresh_redis.kill()
    time.sleep(clocks.MODE_TTL_SECONDS + 0.1)
    wall_before = time.time()
    kept, mode, tick = clock(), clock.mode(), clock.tick_time(bar_time + 60)
    fallback = never_read()

    # Assert: no exception; the replay's last known time, not the wall's; a clock that never read one is live
    assert kept == bar_time
    assert mode == ClockMode.REPLAY and tick == bar_time + 60
    assert never_read.mode() == ClockMode.LIVE and fallback >= wall_before
    client.close()
