"""The memos the dashboard keeps across runs and sessions (logic/views/memo.py, dashboard/components.py
FIGURES, logic/views/performance.py FAN_MEMO): a repeated input is served from the memo, and any change of
what a result depends on (a new market version, a limit change) shows on the next run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import streamlit as st

from engine.redis_server import EmbeddedRedis
from engine.settings import Settings
from engine.store import Store
from logic import performance
from logic.risk_manager import RiskManager
from logic.views import Desk, performance_view
from logic.views.memo import Memo, array_key
from logic.views.performance import FAN_MEMO

from .test_dashboard import _point_app_at, assert_clean, charts, metric, money, open_page, parametric_var

DAY = 86_400.0


@pytest.fixture
def app_env(
    redis_server: EmbeddedRedis, seeded_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    """The dashboard pointed at the seeded store (as tests/test_dashboard.py's fixture of the same name)."""
    _point_app_at(monkeypatch, redis_server.url, tmp_path)
    yield seeded_store
    st.cache_resource.clear()


def one_bar(store: Store, settings: Settings, seed: int) -> None:
    """One bar of the simulated feed through the real stream daemon: a new market version."""
    from engine.feeds import SimulatedFeed
    from engine.stream import StreamDaemon

    StreamDaemon(store, settings, SimulatedFeed.from_settings(settings, seed=seed, bars=1), interval=0).run()


# -- the memo ------------------------------------------------------------------------------------------------


def test_memo_serves_an_equal_key_from_memory_and_computes_a_new_key() -> None:
    memo, calls = Memo(4), []

    def compute(value: int) -> Any:
        calls.append(value)
        return [value]

    first = memo.get(("a", 1), lambda: compute(1))
    assert memo.get(("a", 1), lambda: compute(99)) is first  # not recomputed
    assert memo.get(("a", 2), lambda: compute(2)) == [2]
    assert calls == [1, 2] and (memo.hits, memo.misses) == (1, 2)


def test_memo_keeps_exactly_its_size_and_drops_the_least_recently_used() -> None:
    memo = Memo(2)
    memo.get("a", lambda: 1)
    memo.get("b", lambda: 2)
    memo.get("a", lambda: -1)  # a is now the most recent
    memo.get("c", lambda: 3)  # one over the size: b goes
    assert memo.get("a", lambda: -1) == 1 and memo.get("c", lambda: -1) == 3
    assert memo.get("b", lambda: 22) == 22  # recomputed
    with pytest.raises(ValueError, match="size"):
        Memo(0)


def test_array_key_changes_with_one_element_the_dtype_or_the_shape() -> None:
    a = np.arange(6, dtype=np.float64)
    assert array_key(a) == array_key(a.copy())
    b = a.copy()
    b[5] = np.nextafter(b[5], np.inf)  # one ulp
    assert array_key(b) != array_key(a)
    assert array_key(a.astype(np.float32)) != array_key(a)
    assert array_key(a.reshape(2, 3)) != array_key(a.reshape(3, 2))


# -- the Monte Carlo fan of the Performance page -------------------------------------------------------------


def test_the_fan_is_shared_on_one_market_and_recomputed_on_a_new_market_version(
    seeded_store: Store, settings: Settings, redis_client: Any
) -> None:
    FAN_MEMO.clear()
    desk = Desk(redis_client, settings)
    before = performance_view(desk, "main", DAY)
    again = performance_view(desk, "main", DAY)
    assert again.fan is before.fan  # the same inputs: one simulation for every session and rerun
    one_bar(seeded_store, settings, seed=5)
    after = performance_view(desk, "main", DAY)
    assert after.fan is not None and before.fan is not None
    assert after.fan.median[0] != before.fan.median[0]  # the book is valued at the new prices
    FAN_MEMO.clear()
    cold = performance_view(Desk(redis_client, settings), "main", DAY)  # no memo: computed from scratch
    assert cold.fan is not None and cold.mc_var == after.mc_var
    assert all(np.array_equal(cold.fan.bands[q], after.fan.bands[q]) for q in performance.FAN_PERCENTILES)


def test_a_limit_change_recomputes_the_monte_carlo_var_on_the_next_call(
    seeded_store: Store, settings: Settings, redis_client: Any
) -> None:
    FAN_MEMO.clear()
    desk = Desk(redis_client, settings)
    at_95 = performance_view(desk, "main", DAY)
    RiskManager(redis_client, "main", settings).set_limits({"var_confidence": 0.99}, "alice", "stricter")
    at_99 = performance_view(desk, "main", DAY)
    assert at_99.var_confidence == 0.99 and at_99.mc_var is not None and at_95.mc_var is not None
    assert at_99.mc_var > at_95.mc_var  # a higher quantile of the same simulated losses
    FAN_MEMO.clear()
    assert performance_view(Desk(redis_client, settings), "main", DAY).mc_var == at_99.mc_var


# -- the Overview's figures ----------------------------------------------------------------------------------


def gauge(at: Any, title: str) -> dict[str, Any]:
    specs = [s for s in charts(at) if s["data"][0]["type"] == "indicator"]
    return next(s["data"][0] for s in specs if s["data"][0]["title"]["text"] == title)


def test_the_overview_gauge_shows_a_limit_change_and_a_new_market_on_the_next_run(
    app_env: Store, settings: Settings, redis_client: Any
) -> None:
    at = open_page("overview")  # no monitor: the gauges are the risk manager's, against the live limit
    assert_clean(at)
    title = "VaR 95% (1 day)"
    assert gauge(at, title)["gauge"]["threshold"]["value"] == pytest.approx(20000)
    RiskManager(redis_client, "main", settings).set_limits({"var_limit": "30000"}, "alice", "more room")
    at.run()
    assert gauge(at, title)["gauge"]["threshold"]["value"] == pytest.approx(30000)
    value = gauge(at, title)["value"]
    one_bar(app_env, settings, seed=7)
    at.run()
    var = parametric_var(app_env, settings, "main", 0.95)
    assert metric(at, title) == money(var)
    assert gauge(at, title)["value"] == pytest.approx(var) and gauge(at, title)["value"] != value
