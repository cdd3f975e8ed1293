"""Acknowledged trades and the kill switch survive a crash of Redis (kill -9, AOF on), and trading fails
closed while Redis is down."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
import redis

import warmup
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings
from engine.store import Store
from logic.risk_manager import RiskManager

from .conftest import private_redis

NOW = 1_700_000_000.0


@pytest.fixture
def always_fsync_server() -> Iterator[EmbeddedRedis]:
    """A private server with ``appendfsync always``: a write is on disk before Redis acknowledges it."""
    with private_redis("rdk-", appendfsync="always") as server:
        yield server


def test_acknowledged_trades_and_the_trading_state_survive_kill_and_restart(
    always_fsync_server: EmbeddedRedis, settings: Settings
) -> None:
    server = always_fsync_server
    client = redis.Redis.from_url(server.url)
    warmup.seed(Store(client), settings, now=NOW)
    rm = RiskManager(client, "main", settings, clock=lambda: NOW)
    fills = [
        rm.execute_trade("AAA", 10 * (k + 1), "BUY", client_order_id=f"ack-{k}")["fill"] for k in range(5)
    ]
    fills.append(rm.execute_trade("BBB", 700, "SELL", client_order_id="ack-sell")["fill"])
    halted = rm.set_trading_state("HALTED", "end of day", "ops-desk")
    assert all(f is not None for f in fills)

    server.kill()  # SIGKILL: no shutdown, no final flush

    down = rm.check_trade_impact("AAA", 1, "BUY")
    assert {r["code"] for r in down["reasons"]} == {"STORE_UNAVAILABLE"}
    assert rm.execute_trade("AAA", 1, "BUY", client_order_id="while-down")["status"] == "REJECTED"
    assert rm.get_trading_state().state == "HALTED"  # unreadable counts as halted

    server.start()
    client.close()
    again = redis.Redis.from_url(server.url)
    rm2 = RiskManager(again, "main", settings, clock=lambda: NOW)
    store = Store(again)
    logged = {r["fill"]["trade_id"]: r["fill"] for r in rm2.trade_log(100) if r["status"] == "FILLED"}
    assert logged == {f["trade_id"]: f for f in fills}
    state = store.read_portfolio("main")
    assert state.cash == Decimal(fills[-1]["cash_after"])
    assert state.positions["AAA"].qty == 1000 + 150 and state.positions["BBB"].qty == 1300
    assert rm2.get_trading_state() == halted
    assert rm2.audit_log(1)[0]["reason"] == "end of day"
    assert {r["code"] for r in rm2.check_trade_impact("AAA", 1, "SELL")["reasons"]} == {"TRADING_HALTED"}
    # the idempotency records survived too: a resend after the crash does not trade again
    replay = rm2.execute_trade("AAA", 10, "BUY", client_order_id="ack-0")
    assert replay["duplicate"] is True and replay["fill"] == fills[0]
    again.close()
