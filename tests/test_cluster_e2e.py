"""The end-to-end path on a real 3-master Redis Cluster (engine/redis_cluster.py)."""

from __future__ import annotations

from typing import Any

import pytest

import warmup
from engine.settings import Settings
from engine.store import Store
from logic.risk_manager import RiskManager


def test_warmup_gate_and_an_idempotent_fill_on_the_cluster(cluster_store: Store, settings: Settings) -> None:
    warmup.seed(cluster_store, settings)
    gate = RiskManager(cluster_store.client, "main", settings)
    first = gate.execute_trade("AAA", 10, "BUY", actor="trader", client_order_id="c-1")
    again = gate.execute_trade("AAA", 10, "BUY", actor="trader", client_order_id="c-1")
    assert first["status"] == "FILLED", first
    assert again["trade_id"] == first["trade_id"]
    assert cluster_store.read_portfolio("main").positions["AAA"].qty == 1010
