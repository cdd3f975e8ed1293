"""The dashboard pages under Streamlit's AppTest, against a real seeded Redis.

The app reads its settings file and Redis URL from ``RISKDESK_CONFIG`` and ``REDIS_URL`` (read in one place,
:meth:`logic.views.Desk.from_env`); each test points them at the session's Redis server and a settings file
written from ``TEST_CONFIG``, and clears Streamlit's caches so no Desk survives from another test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from engine.redis_server import EmbeddedRedis
from engine.settings import Settings
from engine.store import Store, heartbeat_key

from .conftest import TEST_CONFIG

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
PAGES = ("overview", "trade", "risk", "alerts", "system")
TIMEOUT = 30.0


# -- helpers -------------------------------------------------------------------------------------------------


def toml_dumps(data: dict[str, Any]) -> str:
    """Enough TOML for TEST_CONFIG: tables, arrays of tables, inline tables, scalars and arrays."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(type(v))

    def body(table: dict[str, Any]) -> list[str]:
        return [f"{json.dumps(k)} = {value(v)}" for k, v in table.items()]

    lines: list[str] = []
    for key, val in data.items():
        if isinstance(val, list) and val and all(isinstance(x, dict) for x in val):
            for item in val:
                lines += [f"[[{key}]]", *body(item), ""]
        elif isinstance(val, dict):
            lines += [f"[{key}]", *body(val), ""]
        else:
            lines.insert(0, f"{json.dumps(key)} = {value(val)}")
    return "\n".join(lines) + "\n"


def open_page(page: str) -> AppTest:
    """A fresh session on ``page`` (live refresh paused: AppTest runs fragments only when asked)."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state["refresh"] = "Paused"
    at.switch_page(f"screens/{page}.py")
    return at.run()


def texts(elements: Any) -> list[str]:
    return [str(e.value) for e in elements]


def joined(elements: Any) -> str:
    return "\n".join(texts(elements)).replace("\\", "")


def metric(at: AppTest, label: str) -> str:
    for m in at.metric:
        if m.label == label:
            return str(m.value)
    raise AssertionError(f"no metric {label!r}; have {[m.label for m in at.metric]}")


def frame_with(at: AppTest, column: str) -> Any:
    for df in at.dataframe:
        if column in df.value.columns:
            return df.value
    raise AssertionError(f"no table with a {column!r} column")


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def money(value: float) -> str:
    return f"{value:,.0f}"


# -- fixtures -------------------------------------------------------------------------------------------------


def _point_app_at(monkeypatch: pytest.MonkeyPatch, url: str, tmp_path: Path) -> None:
    config = tmp_path / "riskdesk.toml"
    config.write_text(toml_dumps(TEST_CONFIG), encoding="utf-8")
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("RISKDESK_CONFIG", str(config))
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture
def app_env(
    redis_server: EmbeddedRedis, seeded_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    _point_app_at(monkeypatch, redis_server.url, tmp_path)
    yield seeded_store
    st.cache_resource.clear()


@pytest.fixture
def empty_env(
    redis_server: EmbeddedRedis, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    _point_app_at(monkeypatch, redis_server.url, tmp_path)
    yield store
    st.cache_resource.clear()


def beat(store: Store, age: float = 0.0) -> None:
    """Heartbeats of both daemons, ``age`` seconds old (what the stream and monitor write each tick)."""
    now = time.time() - age
    store.write_heartbeat("stream", {"ts": now, "pid": 4242, "bars_processed": 17, "bars_rejected": 2,
                                     "last_latency_ms": 0.8, "version": 17})  # fmt: skip
    store.write_heartbeat("monitor", {"ts": now, "pid": 4343, "ticks_processed": 16, "bars_rejected": 0,
                                      "last_latency_ms": 3.5, "version": 17})  # fmt: skip


# -- System ---------------------------------------------------------------------------------------------------


def test_system_page_shows_heartbeats_redis_health_and_versions(app_env: Store) -> None:
    beat(app_env)
    at = open_page("system")
    assert_clean(at)
    assert texts(at.title) == ["System"]
    assert metric(at, "stream daemon") == "RUNNING"
    assert metric(at, "monitor daemon") == "RUNNING"
    heartbeats = frame_with(at, "daemon").set_index("daemon")
    assert heartbeats.loc["stream", "bars processed"] == 17
    assert heartbeats.loc["stream", "bars rejected"] == 2
    assert heartbeats.loc["monitor", "last latency (ms)"] == pytest.approx(3.5)
    health = frame_with(at, "item").set_index("item")["value"]
    assert health["reachable"] == "True"
    assert health["persistence"] == "AOF"
    assert int(health["keys"]) == len(app_env.all_keys())
    versions = frame_with(at, "component").set_index("component")["version"]
    assert versions["store layout"].startswith("1 ")
    assert versions["market version (bars)"] == "0"
    assert not at.warning


def test_system_page_says_when_a_daemon_is_stale_or_missing(app_env: Store, settings: Settings) -> None:
    beat(app_env, age=settings.monitor.stale_snapshot_seconds + 60)
    app_env.client.delete(heartbeat_key("monitor"))  # a monitor that never ran
    at = open_page("system")
    assert_clean(at)
    assert metric(at, "stream daemon") == "STALE"
    assert metric(at, "monitor daemon") == "MISSING"
    warnings = joined(at.warning)
    assert "Stream daemon stale" in warnings and "python -m engine.stream" in warnings
    assert "Monitor daemon not running" in warnings and "python -m logic.monitor" in warnings


def test_kill_switch_halts_trading_with_reason_and_audit(app_env: Store) -> None:
    at = open_page("system")
    at.button_group(key="ts_new_state").set_value("HALTED")
    at.text_input(key="ts_reason").input("desk review")
    at.text_input(key="ts_actor").input("alice")
    at.button(key="FormSubmitter:trading_state_form-Apply").click()
    at.run()
    assert_clean(at)
    state = app_env.read_trading_state("main")
    assert (state.state, state.reason, state.actor) == ("HALTED", "desk review", "alice")
    assert "HALTED" in joined(at.success)
    audit = frame_with(at, "action")
    assert audit.iloc[0]["action"] == "set_trading_state" and audit.iloc[0]["reason"] == "desk review"


def test_kill_switch_refuses_a_change_without_reason(app_env: Store) -> None:
    at = open_page("system")
    at.button_group(key="ts_new_state").set_value("HALTED")
    at.button(key="FormSubmitter:trading_state_form-Apply").click()
    at.run()
    assert_clean(at)
    assert "reason is required" in joined(at.error)
    assert app_env.read_trading_state("main").state == "ACTIVE"


# -- Trade ----------------------------------------------------------------------------------------------------


def submit_ticket(at: AppTest, ticker: str, side: str, qty: int) -> AppTest:
    at.selectbox(key="tk_ticker").set_value(ticker)
    at.button_group(key="tk_side").set_value(side)
    at.number_input(key="tk_qty").set_value(qty)
    at.button(key="FormSubmitter:ticket_form-Check").click()
    return at.run()


def test_trade_page_shows_positions_with_the_store_numbers(app_env: Store, settings: Settings) -> None:
    at = open_page("trade")
    assert_clean(at)
    positions = frame_with(at, "unrealized_pnl").set_index("ticker")
    assert positions.loc["AAA", "qty"] == 1000 and positions.loc["BBB", "qty"] == 2000
    assert positions.loc["AAA", "market_value"] == pytest.approx(1000 * 100.0)
    equity = 1_000_000 + 1000 * 100.0 + 2000 * 50.0
    assert positions.loc["BBB", "weight"] == pytest.approx(2000 * 50.0 / equity)
    assert metric(at, "Equity") == money(equity)
    assert metric(at, "Cash") == money(1_000_000)
    assert metric(at, "Trading state") == "ACTIVE"


def test_ticket_rejects_a_bad_quantity_with_its_reason_and_no_execute(app_env: Store, settings: Settings) -> None:
    at = open_page("trade")
    at = submit_ticket(at, "AAA", "BUY", settings.limits.max_order_qty + 1)
    assert_clean(at)
    assert "REJECTED" in joined(at.error)
    reasons = frame_with(at, "code")
    assert "BAD_QUANTITY" in set(reasons["code"])
    assert "fat-finger" in " ".join(reasons["message"])
    assert not [b for b in at.button if b.key == "tk_execute"]
    assert app_env.read_trade_log("main", 10) == []  # a check never writes


def test_ticket_shows_the_decision_then_executes_exactly_once(app_env: Store, settings: Settings) -> None:
    at = open_page("trade")
    at = submit_ticket(at, "CCC", "BUY", 40)
    assert_clean(at)
    assert "APPROVED" in joined(at.success)
    deltas = frame_with(at, "figure").set_index("figure")
    assert deltas.loc["Cash", "before"] == pytest.approx(1_000_000)
    fee = max(float(TEST_CONFIG["fees"]["minimum"]), 40 * float(TEST_CONFIG["fees"]["per_share"]))
    assert deltas.loc["Cash", "after"] == pytest.approx(1_000_000 - 40 * 200.0 - fee)
    assert deltas.loc["Position (shares)", "after"] == 40
    assert deltas.loc["VaR (limit confidence)", "change"] == pytest.approx(
        deltas.loc["VaR (limit confidence)", "after"] - deltas.loc["VaR (limit confidence)", "before"]
    )
    assert deltas.loc["VaR (limit confidence)", "change"] > 0
    order_id = at.session_state["ticket"]["value"]["client_order_id"]

    at.button(key="tk_execute").click().run()  # first click trades
    at.button(key="tk_execute").click().run()  # a second (double) click must not
    assert_clean(at)
    assert "nothing was traded twice" in joined(at.info)
    book = app_env.read_portfolio("main")
    assert book.positions["CCC"].qty == 40
    assert float(book.cash) == pytest.approx(1_000_000 - 40 * 200.0 - fee)
    blotter = frame_with(at, "client_order_id")
    fills = blotter[blotter["status"] == "FILLED"]
    assert list(fills["client_order_id"]) == [order_id]
    assert fills.iloc[0]["ticker"] == "CCC" and fills.iloc[0]["qty"] == 40
    assert app_env.read_order("main", order_id)["status"] == "FILLED"


def test_a_new_check_gets_a_new_order_id_and_trades_again(app_env: Store) -> None:
    at = open_page("trade")
    at = submit_ticket(at, "AAA", "SELL", 10)
    first = at.session_state["ticket"]["value"]["client_order_id"]
    at.button(key="tk_execute").click().run()
    at = submit_ticket(at, "AAA", "SELL", 10)
    second = at.session_state["ticket"]["value"]["client_order_id"]
    at.button(key="tk_execute").click().run()
    assert_clean(at)
    assert first != second
    assert app_env.read_portfolio("main").positions["AAA"].qty == 1000 - 20


# -- failure modes: every page says what is wrong and how to fix it, never a traceback -----------------------


@pytest.mark.parametrize("page", PAGES)
def test_every_page_says_redis_is_unreachable_without_a_traceback(
    page: str, fresh_redis: EmbeddedRedis, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warmup

    warmup.seed(Store(fresh_redis.client()), settings)
    _point_app_at(monkeypatch, fresh_redis.url, tmp_path)
    fresh_redis.stop()
    at = open_page(page)
    assert_clean(at)
    assert "Redis is unreachable" in joined(at.error)
    assert "make run" in joined(at.info)
    st.cache_resource.clear()


@pytest.mark.parametrize("page", PAGES)
def test_every_page_says_the_store_is_empty_and_how_to_seed_it(page: str, empty_env: Store) -> None:
    at = open_page(page)
    assert_clean(at)
    assert "store is empty" in joined(at.error)
    assert "warmup.py" in joined(at.info)
