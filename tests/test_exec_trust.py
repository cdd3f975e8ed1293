"""Execution trusts no typed name, reports a full Redis as full, and reads a leg's child ids exactly.

1. The automation's privilege (its own order-rate budget) is a grant object only its order path passes
   (logic/action_orders.py ``AUTOMATION``), never the actor's ``auto:`` name: an order whose actor claims it without
   the grant is refused ``BAD_ACTOR`` with nothing written.
2. A Redis at ``maxmemory`` with ``noeviction`` refuses the order ``STORE_UNAVAILABLE`` saying it is out of memory
   (it said the order queue was corrupt, with "re-seed the store" as the fix).
3. A ticker named ``AAA-c0`` (a valid symbol): the bare id of its flatten leg is the first child id of ``AAA``'s
   leg; each leg counts only the fills of its own ticker.

Real parts throughout: real Redis servers (tests/conftest.py), the real RiskManager and ResponseRunner.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

import warmup
from engine.records import OrderIntent
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings, settings_from_dict
from engine.store import PortfolioKeys, Store
from logic.action_orders import AUTOMATION, LegHistory, child_index, leg_history, read_earlier_orders
from logic.actions import ResponseRunner
from logic.checks import AUTOMATION_RATE_MULTIPLE
from logic.risk_manager import RiskManager

from .alerts_support import T0
from .conftest import TEST_CONFIG, merge, store_contents


def _gate(store: Store, make_settings: Any, limit: int) -> RiskManager:
    settings = make_settings({"limits": {"max_orders_per_minute": limit}})
    warmup.seed(store, settings, now=T0)
    return RiskManager(store.client, "main", settings, clock=lambda: T0)


def _codes(result: dict[str, Any]) -> list[str]:
    return [r["code"] for r in result["reasons"]]


# -- 1. the automation's budget is a grant, not a name ------------------------------------------------------------


@pytest.mark.parametrize("actor", ["auto:spoof", "auto:", " Auto:margin_critical", "AUTO:x"])
@pytest.mark.parametrize("state", ["ACTIVE", "HALTED"])
def test_an_auto_actor_without_the_grant_is_refused_bad_actor_and_nothing_is_written(
    store: Store, make_settings: Any, actor: str, state: str
) -> None:
    rm = _gate(store, make_settings, 3)
    if state == "HALTED":
        rm.set_trading_state("HALTED", "drill", "risk-manager")
    before = store_contents(store.client)

    result = rm.execute_trade("BBB", 1, "SELL", actor=actor, intent=OrderIntent.LIQUIDATION)

    assert result["status"] == "REJECTED" and _codes(result) == ["BAD_ACTOR"]
    assert result["fill"] is None and result["actor"] == actor
    assert "claims to be the automation" in result["reasons"][0]["message"]
    assert store_contents(store.client) == before  # no fill, no trade-log record, no queue ticket, no rate entry


@pytest.mark.parametrize("actor", ["", "   ", None, 42])
def test_an_order_without_an_actor_is_refused_bad_actor_and_nothing_is_written(
    store: Store, make_settings: Any, actor: Any
) -> None:
    """Every fill names who sent it: an order with no actor (a caller of the engine API that forgot it) filled and
    logged '' or None as its sender."""
    rm = _gate(store, make_settings, 3)
    before = store_contents(store.client)
    result = rm.execute_trade("AAA", 1, "BUY", actor=actor)
    assert result["status"] == "REJECTED" and _codes(result) == ["BAD_ACTOR"] and result["fill"] is None
    assert "is no name" in result["reasons"][0]["message"]
    assert store_contents(store.client) == before


def test_a_typed_auto_actor_cannot_use_the_automations_budget_but_the_grant_can_exactly_to_it(
    store: Store, make_settings: Any
) -> None:
    rm = _gate(store, make_settings, 3)
    for _ in range(3):  # the traders' budget used up, exactly at the limit
        assert rm.execute_trade("AAA", 1, "BUY", actor="trader")["status"] == "FILLED"
    spoofed = rm.execute_trade("BBB", 1, "SELL", actor="auto:runaway", intent=OrderIntent.LIQUIDATION)
    assert _codes(spoofed) == ["BAD_ACTOR"]
    budget = AUTOMATION_RATE_MULTIPLE * 3
    for n in range(budget):  # the grant's budget: 30 pass, the 30th exactly at it
        granted = rm.execute_trade(
            "BBB", 1, "SELL", actor="auto:runaway", intent=OrderIntent.LIQUIDATION, automation=AUTOMATION
        )
        assert granted["status"] == "FILLED", (n, granted["reasons"])
    over = rm.execute_trade(
        "BBB", 1, "SELL", actor="auto:runaway", intent=OrderIntent.LIQUIDATION, automation=AUTOMATION
    )
    assert _codes(over) == ["RATE_LIMIT"]  # one over
    keys = PortfolioKeys("main")
    assert store.client.zcard(keys.auto_rate) == budget and store.client.zcard(keys.rate) == 3


def test_the_grant_under_a_persons_name_buys_nothing(store: Store, make_settings: Any) -> None:
    """The budget needs both: the grant and the automation's actor (a human's liquidation is a trader's order)."""
    rm = _gate(store, make_settings, 3)
    for _ in range(3):
        ok = rm.execute_trade(
            "BBB", 1, "SELL", actor="risk-manager", intent=OrderIntent.LIQUIDATION, automation=AUTOMATION
        )
        assert ok["status"] == "FILLED"
    over = rm.execute_trade(
        "BBB", 1, "SELL", actor="risk-manager", intent=OrderIntent.LIQUIDATION, automation=AUTOMATION
    )
    assert _codes(over) == ["RATE_LIMIT"]
    assert not store.client.exists(PortfolioKeys("main").auto_rate)


def test_a_flatten_sent_by_the_response_runner_carries_the_grant(store: Store, make_settings: Any) -> None:
    rm = _gate(store, make_settings, 2)
    for _ in range(2):  # the desk at its limit
        assert rm.execute_trade("AAA", 1, "BUY", actor="trader")["status"] == "FILLED"
    runner = ResponseRunner(lambda pid: RiskManager(store.client, pid, rm.settings, clock=lambda: T0))
    pending = {"action_id": "a1", "action": "flatten", "actor": "auto:dd", "reason": "drawdown", "rule_id": "dd"}
    out = runner.run("main", pending, None)
    assert out.ok, out.summary
    assert store.read_portfolio("main").positions == {}
    trades = [t for t in rm.trade_log(10) if t["actor"] == "auto:dd"]
    assert len(trades) == 2 and all(t["status"] == "FILLED" for t in trades)
    assert store.client.zcard(PortfolioKeys("main").auto_rate) == 2


# -- 2. a full Redis is unavailable, not corrupt ------------------------------------------------------------------


@pytest.fixture
def full_redis(fresh_redis: EmbeddedRedis, settings: Settings) -> Iterator[tuple[redis.Redis, RiskManager]]:
    client = redis.Redis.from_url(fresh_redis.url, socket_timeout=10)
    warmup.seed(Store(client), settings, now=T0)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 100_000)
    try:
        for i in range(100_000):
            client.set(f"filler:{i}", b"x" * 1000)
        raise AssertionError("Redis never reached maxmemory")
    except redis.exceptions.OutOfMemoryError:
        pass
    try:
        yield client, RiskManager(client, "main", settings, clock=lambda: T0)
    finally:
        client.config_set("maxmemory", 0)
        client.close()


def test_an_out_of_memory_redis_refuses_the_order_store_unavailable_saying_so_nothing_written(
    full_redis: tuple[redis.Redis, RiskManager],
) -> None:
    client, rm = full_redis
    before = store_contents(client)

    result = rm.execute_trade("AAA", 10, "SELL", client_order_id="t-1", actor="trader")

    assert result["status"] == "REJECTED" and _codes(result) == ["STORE_UNAVAILABLE"], result["reasons"]
    message = result["reasons"][0]["message"]
    assert "out of memory" in message and "maxmemory" in message and "nothing was written" in message
    assert "corrupt" not in message.lower() and "re-seed the store with" not in message
    assert store_contents(client) == before
    client.config_set("maxmemory", 0)  # room again: the same order goes through
    assert rm.execute_trade("AAA", 10, "SELL", client_order_id="t-1", actor="trader")["status"] == "FILLED"


# -- 3. a leg's child ids read exactly ----------------------------------------------------------------------------


def test_child_ids_parse_exactly() -> None:
    assert child_index("a1-AAA", "a1-AAA-c0") == 0 and child_index("a1-AAA", "a1-AAA-c12") == 12
    for cid in ("a1-AAA-c0-c0", "a1-AAA-c", "a1-AAA-c01", "a1-AAA-c+1", "a1-AAA-c１", "a1-AAA", "a1-AA-c0"):
        assert child_index("a1-AAA", cid) is None, cid
    assert child_index("a1-AAA-c0", "a1-AAA-c0-c3") == 3


@pytest.fixture
def two_tickers(store: Store) -> RiskManager:
    """main holds AAA 3000 and AAA-c0 100 (same price and vol: AAA is the larger risk, its leg goes first)."""
    asset = {"price": 100.0, "annual_vol": 0.20, "avg_daily_volume": 1_000_000, "spread_bps": 2.0}
    settings = settings_from_dict(
        merge(
            TEST_CONFIG,
            {
                "universe": {"assets": {"AAA-c0": asset}},
                "portfolios": [
                    {"id": "main", "account_type": "cash", "cash": "1000000.00",
                     "holdings": {"AAA": 3000, "AAA-c0": 100}},
                ],
            },
        )
    )  # fmt: skip
    warmup.seed(store, settings, now=T0)
    return RiskManager(store.client, "main", settings, clock=lambda: T0)


def test_a_flatten_of_aaa_and_aaa_c0_reports_no_earlier_fill_for_either_leg(two_tickers: RiskManager) -> None:
    runner = ResponseRunner(lambda pid: two_tickers)
    pending = {"action_id": "a1", "action": "flatten", "actor": "auto:dd", "reason": "dd", "rule_id": "dd"}
    out = runner.run("main", pending, None)
    assert out.ok, out.summary
    legs = {leg["ticker"]: leg for leg in out.details["legs"]}
    assert [leg["ticker"] for leg in out.details["legs"]] == ["AAA", "AAA-c0"]  # AAA's child a1-AAA-c0 first
    assert {t: (leg["filled"], leg["earlier_filled"]) for t, leg in legs.items()} == {
        "AAA": (3000, 0), "AAA-c0": (100, 0)
    }  # fmt: skip
    assert "filled by an earlier run" not in out.summary
    assert [o["client_order_id"] for o in legs["AAA-c0"]["orders"]] == ["a1-AAA-c0-c0"]


def test_leg_history_counts_only_its_tickers_fills_but_skips_every_used_id(two_tickers: RiskManager) -> None:
    rm = two_tickers
    pending = {"action_id": "a1", "created_at": T0}
    # AAA's first child filled (its id is also the bare id AAA-c0's leg would have had)
    child = rm.execute_trade(
        "AAA", 500, "SELL", client_order_id="a1-AAA-c0", actor="auto:dd", intent=OrderIntent.LIQUIDATION,
        automation=AUTOMATION,
    )  # fmt: skip
    assert child["status"] == "FILLED"
    earlier = read_earlier_orders(rm, pending)
    assert leg_history(rm, earlier, "a1-AAA", "AAA") == LegHistory(500, 1, 1)
    assert leg_history(rm, earlier, "a1-AAA-c0", "AAA-c0") == LegHistory(0, 0, 0)
    # the other way round: AAA-c0's own child and a legacy bare fill of it count for it alone
    own = rm.execute_trade(
        "AAA-c0", 30, "SELL", client_order_id="a1-AAA-c0-c0", actor="auto:dd", intent=OrderIntent.LIQUIDATION,
        automation=AUTOMATION,
    )  # fmt: skip
    assert own["status"] == "FILLED"
    earlier = read_earlier_orders(rm, pending)
    assert leg_history(rm, earlier, "a1-AAA-c0", "AAA-c0") == LegHistory(30, 1, 1)
    assert leg_history(rm, earlier, "a1-AAA", "AAA") == LegHistory(500, 1, 1)


def test_an_id_of_the_legs_form_held_by_another_tickers_fill_is_skipped_not_counted(
    two_tickers: RiskManager,
) -> None:
    rm = two_tickers
    # the code before child orders sent AAA-c0's whole leg under its bare id, a1-AAA-c0
    bare = rm.execute_trade(
        "AAA-c0", 100, "SELL", client_order_id="a1-AAA-c0", actor="auto:dd", intent=OrderIntent.LIQUIDATION,
        automation=AUTOMATION,
    )  # fmt: skip
    assert bare["status"] == "FILLED"
    earlier = read_earlier_orders(rm, {"action_id": "a1", "created_at": T0})
    assert leg_history(rm, earlier, "a1-AAA-c0", "AAA-c0") == LegHistory(100, 1, 0)
    assert leg_history(rm, earlier, "a1-AAA", "AAA") == LegHistory(0, 0, 1)  # c0 is used: AAA's leg starts at c1
