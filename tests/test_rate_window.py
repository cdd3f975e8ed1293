"""The order-rate throttle (``max_orders_per_minute``) counts the fills of the trailing minute at the gate's clock,
not fills stamped ahead of it: a new replay takes the clock back to its data's time (README, replay), and the last
run's fills, stamped later, locked every order out, a risk-reducing one too, until the data caught up with them
(logic/execution.py ``read_gate_view``). Real Redis, the real RiskManager."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import warmup
from engine.store import MarketSnapshot, PortfolioKeys, Store
from logic.execution import RATE_WINDOW_SECONDS
from logic.risk_manager import RiskManager

from .alerts_support import T0


def _prices_at(store: Store, ts: float) -> None:
    """The stored market's prices, printed at ``ts`` (fresh for a gate whose clock reads ``ts``)."""
    snap = store.read_market()
    stamped = np.full(len(snap.tickers), ts)
    store.write_market(MarketSnapshot(snap.version + 1, ts, snap.tickers, snap.prices, stamped, snap.cov))


@pytest.mark.parametrize(("ahead", "counted"), [(RATE_WINDOW_SECONDS, True), (RATE_WINDOW_SECONDS + 1.0, False)])
def test_fills_stamped_more_than_a_window_ahead_of_the_clock_are_not_recent(
    store: Store, make_settings: Any, ahead: float, counted: bool
) -> None:
    settings = make_settings({"limits": {"max_orders_per_minute": 3}})
    warmup.seed(store, settings, now=T0)
    clock = {"now": T0 + ahead}
    rm = RiskManager(store.client, "main", settings, clock=lambda: clock["now"])
    _prices_at(store, T0 + ahead)
    for n in range(3):  # the last run: its fills, the budget spent exactly
        assert rm.execute_trade("AAA", 1, "BUY", client_order_id=f"run1-{n}")["status"] == "FILLED"
    assert [r["code"] for r in rm.check_trade_impact("AAA", 1, "BUY")["reasons"]] == ["RATE_LIMIT"]

    clock["now"] = T0  # a new replay run: the clock back at its data's start
    _prices_at(store, T0)
    sell = rm.check_trade_impact("AAA", 1, "SELL")  # risk-reducing: refused only while those fills count
    if counted:  # exactly a window ahead: still within the window's reach
        assert sell["status"] == "REJECTED" and [r["code"] for r in sell["reasons"]] == ["RATE_LIMIT"]
    else:
        assert sell["status"] == "APPROVED", sell["reasons"]
        assert rm.execute_trade("AAA", 1, "SELL", client_order_id="run2-0")["status"] == "FILLED"
        assert store.client.zcard(PortfolioKeys("main").rate) == 4  # the earlier fills stay until their time passes
