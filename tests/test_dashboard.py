"""The dashboard pages under Streamlit's AppTest, against a real seeded Redis.

The app reads its settings file and Redis URL from ``RISKDESK_CONFIG`` and ``REDIS_URL`` (read in one place,
:meth:`logic.views.Desk.from_env`); each test points them at the session's Redis server and a settings file
written from ``TEST_CONFIG``, and clears Streamlit's caches so no Desk survives from another test.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from engine.errors import AccessDenied
from engine.records import Role
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings
from engine.store import GLOBAL_AUDIT_KEY, Store, heartbeat_key
from logic import execution, views
from logic.access import Identity, local_identity
from logic.views.alerts import rule_form

from .conftest import TEST_CONFIG
from .e2e_stack import toml_dumps
from .redis_proxy import FaultyRedisProxy, faulty_proxy

LOCAL_ACTOR = local_identity().actor
"""Without login configured (no secrets in the tests) every page acts as the local operator."""

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
PAGES = ("overview", "trade", "risk", "performance", "alerts", "system", "firm", "limits", "audit")
TIMEOUT = 30.0


# -- helpers -------------------------------------------------------------------------------------------------


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


def rule_key(store: Store, settings: Settings, rule_id: str, name: str) -> str:
    """The key of field ``name`` of rule ``rule_id``'s form on the Alerts page as ``store`` holds the rule now
    (the form's widgets are keyed by the rule's version: a new version is a new form)."""
    return rule_form(views.Desk(store.client, settings), rule_id).widget_key(name)


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def money(value: float) -> str:
    """A money metric: the currency (the test settings' default, USD) and whole units (issue 14)."""
    return f"USD {value:,.0f}"


# -- fixtures ------------------------------------------------------------------------------------------------


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
    """Heartbeats of the daemons, ``age`` seconds old (what the stream, the monitor and the backtest runner write
    each tick)."""
    now = time.time() - age
    store.write_heartbeat(
        "stream",
        {
            "ts": now,
            "pid": 4242,
            "bars_processed": 17,
            "bars_rejected": 2,
            "last_latency_ms": 0.8,
            "version": 17,
        },
    )
    store.write_heartbeat(
        "monitor",
        {
            "ts": now,
            "pid": 4343,
            "ticks_processed": 16,
            "bars_rejected": 0,
            "last_latency_ms": 3.5,
            "version": 17,
        },
    )
    store.write_heartbeat(
        "backtest",
        {"ts": now, "pid": 4444, "bars_fed": 15, "bars_lost": 1, "last_latency_ms": 2.25, "version": 17},
    )
    store.write_heartbeat("notify", {"ts": now, "pid": 4545, "flushes": 120, "delivery_records": 3})
    store.write_heartbeat("archive", {"ts": now, "pid": 4646, "archived": 0, "stream_errors": 0})


# -- System --------------------------------------------------------------------------------------------------


def test_system_page_shows_heartbeats_redis_health_and_versions(app_env: Store) -> None:
    beat(app_env)
    at = open_page("system")
    assert_clean(at)
    assert texts(at.title) == ["System"]
    assert metric(at, "stream daemon") == "RUNNING"
    assert metric(at, "monitor daemon") == "RUNNING"
    assert metric(at, "backtest daemon") == "RUNNING"
    assert metric(at, "notify daemon") == "RUNNING"  # the process that sends every e-mail and SMS
    assert metric(at, "archive daemon") == "RUNNING"
    heartbeats = frame_with(at, "daemon").set_index("daemon")
    assert heartbeats.loc["notify", "delivery_records"] == 3
    assert heartbeats.loc["backtest", "bars fed"] == 15
    assert heartbeats.loc["backtest", "bars lost"] == 1
    assert heartbeats.loc["stream", "bars processed"] == 17
    assert heartbeats.loc["stream", "bars rejected"] == 2
    assert heartbeats.loc["monitor", "last latency (ms)"] == pytest.approx(3.5)
    health = frame_with(at, "item").set_index("item")["value"]
    assert health["reachable"] == "True"
    assert health["persistence"] == "AOF"
    server_info = app_env.client.info("server")
    assert health["server"].startswith(f"redis {server_info['redis_version']} (")
    assert health["server"].endswith(f"{server_info['executable']})")
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


def test_every_page_warns_when_the_running_notifier_reports_failed_deliveries(app_env: Store) -> None:
    """A notifier that beats but cannot send (SMTP down) pages nobody: its heartbeat's ``failed_recent``
    (notifications/service.py) becomes a warning naming the newest failure on the System page and every other;
    none at 0."""
    beat(app_env)
    at = open_page("system")
    assert not at.warning
    now = app_env.read_heartbeat("notify")["ts"]  # type: ignore[index]
    app_env.write_heartbeat("notify", {
        "ts": float(now), "pid": 4545, "failed_recent": 2, "failure_window_seconds": 900.0,
        "last_failure_ts": 1_800_000_000.0, "last_failure": "email to desk (main): SMTP 550 mailbox unavailable",
    })  # fmt: skip
    for page in ("system", "overview"):
        at = open_page(page)
        assert_clean(at)
        warning = joined(at.warning)
        assert "Notifications failing: 2 deliveries failed, held back or skipped in the last 15 min" in warning, page
        assert "at 08:00:00 UTC" in warning and "SMTP 550 mailbox unavailable" in warning, page
    app_env.write_heartbeat("notify", {"ts": float(now), "failed_recent": 0, "last_failure": ""})
    assert not open_page("system").warning


def test_the_notifier_and_the_archiver_are_watched_on_the_wall_clock_the_archiver_at_its_own_interval(
    app_env: Store, settings: Settings
) -> None:
    """The notifier and the archiver date their heartbeats on the wall clock: in a replay (the desk's clock is the
    market's) they are judged by the wall clock; the archiver, which beats once a run, is stale only after three
    of its runs."""
    wall, replay = 1_800_000_000.0, 1_500_000_000.0
    clock = type("ReplayClock", (), {"__call__": lambda self: replay, "wall": staticmethod(lambda: wall)})()
    desk = views.Desk(app_env.client, settings, clock=clock)
    limit = views.common._stale_after(settings)
    interval = settings.archive.interval_seconds
    assert 3 * interval > limit  # the archiver's own allowance is the longer one here
    app_env.write_heartbeat("stream", {"ts": replay})
    app_env.write_heartbeat("notify", {"ts": wall - limit})
    app_env.write_heartbeat("archive", {"ts": wall - 3 * interval})
    states = {d.name: d.state for d in views.daemon_statuses(desk)}
    assert (states["stream"], states["notify"], states["archive"]) == ("running", "running", "running")
    app_env.write_heartbeat("notify", {"ts": wall - limit - 1})  # one second over: stale, though "in the future"
    app_env.write_heartbeat("archive", {"ts": wall - 3 * interval - 1})  # of the replay's clock
    states = {d.name: d.state for d in views.daemon_statuses(desk)}
    assert (states["notify"], states["archive"]) == ("stale", "stale")
    warnings = views.check_health(desk).warnings
    assert any(w.startswith("Notify daemon stale") and "python -m notifications" in w for w in warnings)


def test_kill_switch_halts_trading_with_reason_and_audit(app_env: Store) -> None:
    at = open_page("system")
    at.radio(key="ts_new_state").set_value("HALTED")
    at.text_input(key="ts_reason").input("desk review")
    at.button(key="FormSubmitter:trading_state_form-Apply").click()
    at.run()
    assert_clean(at)
    state = app_env.read_trading_state("main")
    assert (state.state, state.reason, state.actor) == ("HALTED", "desk review", LOCAL_ACTOR)
    assert "HALTED" in joined(at.success)
    audit = frame_with(at, "action")
    assert audit.iloc[0]["action"] == "set_trading_state" and audit.iloc[0]["reason"] == "desk review"


def test_kill_switch_refuses_a_change_without_reason(app_env: Store) -> None:
    at = open_page("system")
    at.radio(key="ts_new_state").set_value("HALTED")
    at.button(key="FormSubmitter:trading_state_form-Apply").click()
    at.run()
    assert_clean(at)
    assert "reason is required" in joined(at.error)
    assert app_env.read_trading_state("main").state == "ACTIVE"


# -- Trade ---------------------------------------------------------------------------------------------------


def submit_ticket(at: AppTest, ticker: str, side: str, qty: int) -> AppTest:
    at.selectbox(key="tk_ticker").set_value(ticker)
    at.button_group(key="tk_side").set_value(side)
    at.number_input(key="tk_qty").set_value(qty)
    at.button(key="FormSubmitter:ticket_form-Check").click()
    return at.run()


def test_trade_page_shows_positions_with_the_store_numbers(app_env: Store, settings: Settings) -> None:
    at = open_page("trade")
    assert_clean(at)
    assert at.button_group(key="tk_order_type").value == "Trade"  # ACTIVE: an ordinary order first
    positions = frame_with(at, "unrealized_pnl").set_index("ticker")
    assert positions.loc["AAA", "qty"] == 1000 and positions.loc["BBB", "qty"] == 2000
    assert positions.loc["AAA", "market_value"] == pytest.approx(1000 * 100.0)
    equity = 1_000_000 + 1000 * 100.0 + 2000 * 50.0
    assert positions.loc["BBB", "weight"] == pytest.approx(2000 * 50.0 / equity)
    assert metric(at, "Equity") == money(equity)
    assert metric(at, "Cash") == money(1_000_000)
    assert metric(at, "Trading state") == "ACTIVE"


def test_ticket_rejects_a_bad_quantity_with_its_reason_and_no_execute(
    app_env: Store, settings: Settings
) -> None:
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
    assert deltas.loc["VaR 95% (1 day)", "change"] == pytest.approx(
        deltas.loc["VaR 95% (1 day)", "after"] - deltas.loc["VaR 95% (1 day)", "before"]
    )
    assert deltas.loc["VaR 95% (1 day)", "change"] > 0
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


def test_a_halted_book_is_de_risked_from_the_ticket_with_a_liquidation_only_order(
    app_env: Store, settings: Settings
) -> None:
    """The local operator holds every role: the ticket offers the order type; in HALTED an ordinary SELL is
    refused with no Execute button, the same SELL as liquidation-only is approved, executes, and the blotter
    says which it was."""
    views.change_trading_state(views.Desk(app_env.client, settings), "main", "HALTED", "bad day", local_identity())
    at = open_page("trade")
    assert_clean(at)
    order_type = at.button_group(key="tk_order_type")
    assert order_type.options == ["Trade", "Liquidation-only"] and order_type.value == "Liquidation-only"  # HALTED
    order_type.set_value("Trade")
    at = submit_ticket(at, "AAA", "SELL", 10)
    assert "TRADING_HALTED" in set(frame_with(at, "code")["code"])
    assert not [b for b in at.button if b.key == "tk_execute"]

    at.button_group(key="tk_order_type").set_value("Liquidation-only")
    at = submit_ticket(at, "AAA", "SELL", 10)
    assert_clean(at)
    assert "APPROVED" in joined(at.success) and "liquidation-only" in joined(at.success)
    at.button(key="tk_execute").click().run()
    assert_clean(at)
    assert app_env.read_portfolio("main").positions["AAA"].qty == 990
    fills = frame_with(at, "client_order_id")
    assert list(fills.iloc[0][["status", "intent", "qty"]]) == ["FILLED", "liquidation", 10]
    assert app_env.read_trading_state("main").state == "HALTED"


@pytest.fixture
def proxied_env(
    redis_server: EmbeddedRedis,
    seeded_store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Store, FaultyRedisProxy]]:
    """The app talks to Redis through a proxy that can lose a transaction's reply and go down
    (tests/redis_proxy.py); the test reads the store directly. A short read-back: the outage outlasts it."""
    monkeypatch.setattr(execution, "READ_BACK_SECONDS", 0.3)
    monkeypatch.setattr(execution, "LEASE_SECONDS", 0.5)  # an order whose queue exit was lost lapses sooner
    with faulty_proxy(redis_server.socket_path) as proxy:
        _point_app_at(monkeypatch, proxy.url, tmp_path)
        yield seeded_store, proxy
        st.cache_resource.clear()


def test_an_execution_whose_outcome_is_unknown_is_shown_and_checking_it_again_keeps_its_order_id(
    proxied_env: tuple[Store, FaultyRedisProxy],
) -> None:
    # Arrange: a checked ticket; Redis will commit its fill, lose the reply and stay down
    store, proxy = proxied_env
    at = open_page("trade")
    at = submit_ticket(at, "CCC", "BUY", 40)
    order_id = at.session_state["ticket"]["value"]["client_order_id"]
    proxy.arm("reset", then_down=True)

    # Act
    at.button(key="tk_execute").click().run()

    # Assert: said plainly, while Redis is down, with the way out
    warning = joined(at.warning)
    assert "Outcome unknown" in warning and "may have filled" in warning and order_id in warning
    assert [b for b in at.button if b.key == "tk_resend"]
    assert store.read_portfolio("main").positions["CCC"].qty == 40  # it did fill

    # Act: Redis is back; the trader checks the same order again and executes it
    proxy.up()
    at.run()
    assert "OUTCOME_UNKNOWN" in set(frame_with(at, "code")["code"])
    at = submit_ticket(at, "CCC", "BUY", 40)
    assert at.session_state["ticket"]["value"]["client_order_id"] == order_id  # not a new order
    at.button(key="tk_execute").click().run()

    # Assert: the first send's fill, traded once; the warning is gone
    assert_clean(at)
    assert "nothing was traded twice" in joined(at.info)
    assert "Outcome unknown" not in joined(at.warning)
    assert store.read_portfolio("main").positions["CCC"].qty == 40
    assert [r["client_order_id"] for r in store.read_trade_log("main", 10) if r["status"] == "FILLED"] == [order_id]
    at = submit_ticket(at, "CCC", "BUY", 40)  # settled: the same order checked again is a new one
    assert at.session_state["ticket"]["value"]["client_order_id"] != order_id


def test_the_resend_button_sends_an_order_of_unknown_outcome_with_its_id_and_it_fills_once(
    proxied_env: tuple[Store, FaultyRedisProxy],
) -> None:
    store, proxy = proxied_env
    at = open_page("trade")
    at = submit_ticket(at, "CCC", "BUY", 40)
    order_id = at.session_state["ticket"]["value"]["client_order_id"]
    proxy.arm("cut", then_down=True)  # this time the transaction never reaches Redis
    at.button(key="tk_execute").click().run()
    assert "Outcome unknown" in joined(at.warning)
    assert "CCC" not in store.read_portfolio("main").positions

    proxy.up()
    at.run()
    at = submit_ticket(at, "AAA", "SELL", 5)  # another ticket meanwhile: its own id, the warning stays
    assert at.session_state["ticket"]["value"]["client_order_id"] != order_id
    assert "Outcome unknown" in joined(at.warning)
    at.button(key="tk_resend").click().run()

    assert_clean(at)
    assert "FILLED" in joined(at.success) and "Outcome unknown" not in joined(at.warning)
    assert store.read_portfolio("main").positions["CCC"].qty == 40
    assert store.read_order("main", order_id)["status"] == "FILLED"


# -- live data from the real daemons' code -------------------------------------------------------------------


def monitor_snapshots(store: Store, settings: Settings, engine: Any = None, refreshes: int = 1) -> Any:
    """Run the real monitor (and alert engine) in-process: snapshots, history points and alerts in Redis."""
    from logic.monitor import Monitor

    monitor = Monitor(store, settings, alert_engine=engine)
    for _ in range(refreshes):
        monitor.refresh()
    return monitor


def run_bars(store: Store, settings: Settings, bars: int, shocks: tuple[str, ...] = ()) -> Any:
    """``bars`` bars of the simulated feed through the real stream daemon, each fed to the backtests by the backtest
    runner, then snapshotted by the monitor."""
    from engine.feeds import SimulatedFeed, parse_shock
    from engine.stream import StreamDaemon
    from logic.backtest_runner import BacktestRunner
    from logic.monitor import Monitor

    monitor = Monitor(store, settings)
    monitor.process_available()  # joins the tick consumer group before the first tick
    runner = BacktestRunner(store, settings)
    runner.process_available()  # its consumer group too
    feed = SimulatedFeed.from_settings(settings, seed=11, bars=bars, shocks=[parse_shock(x) for x in shocks])
    StreamDaemon(store, settings, feed, interval=0).run()
    runner.process_available()
    monitor.process_available()
    return monitor


def alert_engine(store: Store, settings: Settings) -> Any:
    from logic.alerts import build_alert_engine

    return build_alert_engine(store, settings)


def charts(at: AppTest) -> list[dict[str, Any]]:
    return [json.loads(e.proto.spec) for e in at.get("plotly_chart")]


def arr(value: Any) -> np.ndarray:
    """A Plotly JSON array: a list, or a typed array ``{"dtype", "bdata" (base64), "shape"}``."""
    if isinstance(value, dict) and "bdata" in value:
        out = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if shape:
            out = out.reshape([int(n) for n in str(shape).split(",")])
        return out
    return np.array(value)


def parametric_var(store: Store, settings: Settings, portfolio_id: str, confidence: float) -> float:
    """z * sqrt(x' Σ x) * sqrt(bars per day), computed here from the stored book and matrix."""
    from scipy.stats import norm

    snap = store.read_market()
    book = store.read_portfolio(portfolio_id)
    x = np.array(
        [
            book.positions[t].qty * snap.prices[i] if t in book.positions else 0.0
            for i, t in enumerate(snap.tickers)
        ]
    )
    return float(norm.ppf(confidence) * math.sqrt(x @ snap.cov @ x) * math.sqrt(settings.model.bars_per_day))


# -- Overview ------------------------------------------------------------------------------------------------


def test_overview_shows_the_monitor_snapshot_gauges_and_lights(app_env: Store, settings: Settings) -> None:
    engine = alert_engine(app_env, settings)
    engine.add_rule(
        {
            "id": "var_used",
            "metric": "var.utilization",
            "op": ">=",
            "threshold": 0.05,
            "severity": "HIGH",
            "description": "VaR <b>used</b> [x](http://evil)",
        },
        "tester",
    )
    engine.add_rule(
        {
            "id": "conc",
            "metric": "concentration.largest_share",
            "op": ">",
            "threshold": 0.9,
            "severity": "MEDIUM",
        },
        "tester",
    )
    engine.add_rule(
        {
            "id": "dd_halt",
            "metric": "drawdown.daily",
            "op": "<=",
            "threshold": -0.05,
            "severity": "CRITICAL",
            "actions": ["set_state:HALTED"],
        },
        "tester",
    )
    monitor_snapshots(app_env, settings, engine, refreshes=3)
    snapshot = app_env.read_snapshot("main")
    at = open_page("overview")
    assert_clean(at)
    assert metric(at, "Equity") == money(1_000_000 + 1000 * 100.0 + 2000 * 50.0)
    assert metric(at, "VaR 95% (1 day)") == money(parametric_var(app_env, settings, "main", 0.95))
    assert metric(at, "VaR 99% (1 day)") == money(parametric_var(app_env, settings, "main", 0.99))
    assert metric(at, "CVaR 95% (1 day)") == money(snapshot["var"]["cvar95"])
    lights = joined(at.markdown)
    assert ":red[●] **VaR**" in lights  # breached HIGH rule
    assert ":green[●] **Concentration**" in lights  # its rule holds
    assert ":gray[●] **Margin & leverage**" in lights  # no rule applies to a cash account
    details = texts(at.caption)
    assert any("\\<b\\>used\\</b\\>" in c and "\\[x\\]" in c for c in details)  # escaped, never HTML/links
    assert not any(getattr(m.proto, "allow_html", False) for m in at.markdown)
    specs = charts(at)
    gauges = [s for s in specs if s["data"][0]["type"] == "indicator"]
    assert len(gauges) == 4
    var95_gauge = next(g for g in gauges if g["data"][0]["title"]["text"] == "VaR 95% (1 day)")
    assert var95_gauge["data"][0]["value"] == pytest.approx(snapshot["var"]["var95"])
    assert var95_gauge["data"][0]["gauge"]["threshold"]["value"] == pytest.approx(20000)
    drawdown = next(s for s in specs if s["layout"].get("title", {}).get("text", "").startswith("Drawdown"))
    assert [shape["y0"] for shape in drawdown["layout"]["shapes"]] == [pytest.approx(-0.05)]
    equity = next(s for s in specs if s["layout"].get("title", {}).get("text") == "Equity")
    assert arr(equity["data"][0]["y"])[-1] == pytest.approx(snapshot["equity"])


def test_overview_without_a_monitor_says_so_and_shows_the_risk_managers_figures(
    app_env: Store, settings: Settings
) -> None:
    at = open_page("overview")
    assert_clean(at)
    assert "No risk snapshot from the monitor yet" in joined(at.info)
    assert "python -m logic.monitor" in joined(at.info)
    assert metric(at, "VaR 95% (1 day)") == money(parametric_var(app_env, settings, "main", 0.95))


# -- Risk ----------------------------------------------------------------------------------------------------


def open_risk_tab(tab: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state["refresh"] = "Paused"
    at.session_state["risk_tab"] = tab
    at.switch_page("screens/risk.py")
    return at.run()


def test_risk_exposure_tab_component_var_sums_to_the_var(app_env: Store, settings: Settings) -> None:
    at = open_risk_tab("Exposure & VaR")
    assert_clean(at)
    var = parametric_var(app_env, settings, "main", 0.95)
    assert metric(at, "VaR 95% (1 day)") == money(var)
    exposures = frame_with(at, "component_var")
    assert exposures["component_var"].sum() == pytest.approx(var, rel=1e-9)
    corr = next(s for s in charts(at) if s["data"][0]["type"] == "heatmap")["data"][0]
    assert corr["x"] == ["AAA", "BBB", "CCC", "DDD"]
    assert np.allclose(np.diag(arr(corr["z"])), 1.0)
    assert arr(corr["z"])[0][1] == pytest.approx(TEST_CONFIG["universe"]["correlation"], abs=1e-9)


def test_risk_stress_tab_shows_each_scenarios_pnl(app_env: Store) -> None:
    at = open_risk_tab("Stress")
    assert_clean(at)
    scenarios = frame_with(at, "pnl").set_index("name")
    assert scenarios.loc["crash", "pnl"] == pytest.approx(-0.2 * (1000 * 100.0 + 2000 * 50.0))
    assert scenarios.loc["rotation", "pnl"] == pytest.approx(-0.1 * 1000 * 100.0)


def test_risk_what_if_checks_the_basket_without_trading(app_env: Store) -> None:
    at = open_risk_tab("What-if")
    at.button(key="FormSubmitter:what_if_form-Run what-if").click().run()
    assert_clean(at)
    decisions = frame_with(at, "delta_var")
    assert list(decisions["status"]) == ["APPROVED"]
    assert decisions.iloc[0]["ticker"] == "AAA" and decisions.iloc[0]["qty"] == 100
    assert metric(at, "Basket") == "APPROVED"
    assert app_env.read_portfolio("main").positions["AAA"].qty == 1000  # nothing traded


def test_risk_surface_passes_through_the_current_var(app_env: Store, settings: Settings) -> None:
    at = open_risk_tab("Surface")
    assert_clean(at)
    spec = next(s for s in charts(at) if s["data"][0]["type"] == "contour")
    x, y, z = (arr(spec["data"][0][k]) for k in ("x", "y", "z"))
    i, j = int(np.argmin(abs(x - 1000))), int(np.argmin(abs(y - 2000)))  # the grid is centred on the book
    assert (x[i], y[j]) == (1000, 2000)
    assert z[j][i] == pytest.approx(parametric_var(app_env, settings, "main", 0.95))
    assert z.min() < z[j][i]  # smaller positions carry less VaR


def test_risk_backtest_shows_the_monitors_stored_backtest_with_every_method_side_by_side(
    app_env: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings({"model": {"fhs_window": 20}})  # burn-in: 30 seed returns + 20 in the window
    run_bars(app_env, settings, bars=80, shocks=("*:-0.03@60",))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state["refresh"] = "Paused"
    at.session_state["risk_tab"] = "Backtest"
    at.session_state["bt_track"] = "bar"  # the limit's one-day horizon has not closed in 80 one-minute bars
    at.switch_page("screens/risk.py")
    at.run()
    assert_clean(at)
    summary = app_env.read_backtest_summary("main")
    assert summary is not None and summary["ready"]
    assert at.button_group(key="bt_track").options == ["limit horizon (390 minute bars)", "one minute bar"]
    table = frame_with(at, "rolling_exceedances")
    assert list(table["method"]) == ["normal", "student_t", "fhs"]
    stored = summary["tracks"]["bar"]
    for _, row in table.iterrows():
        assert row["observations"] == stored[row["method"]]["observations"]
        assert row["exceedances"] == stored[row["method"]]["exceedances"]
        n = stored[row["method"]]["rolling_observations"]
        assert stored[row["method"]]["zone"] is None and 0 < n < 250  # no Basel verdict on a few dozen
        assert row["zone"] == f"no zone before 250 observations ({n} so far)"
    series = frame_with(at, "hit_fhs")
    assert len(series) == stored["normal"]["observations"] >= 1
    assert series["hit_normal"].sum() == stored["normal"]["exceedances"]


# -- Alerts --------------------------------------------------------------------------------------------------


def test_alert_feed_shows_a_triggered_alert_and_it_can_be_acknowledged_then_resolved(
    app_env: Store, settings: Settings
) -> None:
    engine = alert_engine(app_env, settings)
    engine.add_rule(
        {
            "id": "var_used",
            "metric": "var.utilization",
            "op": ">=",
            "threshold": 0.05,
            "severity": "CRITICAL",
            "description": "VaR used",
        },
        "tester",
    )
    monitor_snapshots(app_env, settings, engine)
    at = open_page("alerts")
    assert_clean(at)
    feed = frame_with(at, "rule_id")
    assert list(feed["rule_id"]) == ["var_used"]
    assert feed.iloc[0]["severity"] == "CRITICAL" and feed.iloc[0]["status"] == "TRIGGERED"
    assert feed.iloc[0]["value"] == pytest.approx(app_env.read_snapshot("main")["var"]["utilization"])
    assert metric(at, "Unacknowledged") == "1"

    at.text_input(key="al_note").input("looking")
    at.button(key="FormSubmitter:alert_action_form-Acknowledge").click().run()
    assert_clean(at)
    assert "acknowledged" in joined(at.success)
    alert = app_env.read_active_alerts("main")["var_used"]
    assert (alert["status"], alert["acknowledged_by"], alert["ack_note"]) == (
        "ACKNOWLEDGED",
        LOCAL_ACTOR,
        "looking",
    )
    assert metric(at, "Unacknowledged") == "0"

    at.button(key="FormSubmitter:alert_action_form-Resolve").click().run()
    assert_clean(at)
    assert app_env.read_active_alerts("main") == {}
    at.multiselect(key="al_status").set_value(["RESOLVED"]).run()
    resolved = frame_with(at, "rule_id")
    assert list(resolved["status"]) == ["RESOLVED"] and resolved.iloc[0]["resolved_by"] == LOCAL_ACTOR


def test_acknowledge_by_a_viewer_is_refused_with_the_reason(app_env: Store, settings: Settings) -> None:
    # issue 13: no typed name any more; the acknowledging identity needs a role that allows it
    engine = alert_engine(app_env, settings)
    engine.add_rule(
        {"id": "var_used", "metric": "var.utilization", "op": ">=", "threshold": 0.05, "severity": "LOW"},
        "tester",
    )
    monitor_snapshots(app_env, settings, engine)
    at = open_page("alerts")
    assert not [t for t in at.text_input if t.key == "al_actor"], "the free-text name field is gone"
    viewer = Identity("https://idp.test", "v-1", "viewer@desk.test", roles=frozenset({Role.VIEWER}))
    with pytest.raises(AccessDenied, match="may not acknowledge alerts on portfolio main"):
        views.acknowledge_alert(views.Desk(app_env.client, settings), "main", "var_used", viewer, "no")
    assert app_env.read_active_alerts("main")["var_used"]["status"] == "TRIGGERED"


def test_rules_editor_adds_and_edits_a_rule_with_audit(app_env: Store, settings: Settings) -> None:
    at = open_page("alerts")
    k = "rule_+ new rule_"
    at.text_input(key=k + "id").input("lev")
    at.selectbox(key=k + "metric").set_value("leverage")
    at.selectbox(key=k + "op").set_value(">")
    at.number_input(key=k + "threshold").set_value(2.5)
    at.selectbox(key=k + "severity").set_value("HIGH")
    at.text_input(key=k + "description").input("Leverage above 2.5x")
    at.button(key="FormSubmitter:rule_form-Save rule").click().run()
    assert_clean(at)
    assert "Rule lev saved" in joined(at.success)
    rule = alert_engine(app_env, settings).get_rule("lev")
    assert (rule.metric, rule.op, rule.threshold, rule.severity) == ("leverage", ">", 2.5, "HIGH")
    assert "lev" in set(frame_with(at, "source")["id"])

    at.selectbox(key="rule_pick").set_value("lev").run()
    at.number_input(key=rule_key(app_env, settings, "lev", "threshold")).set_value(3.0)
    at.button(key="FormSubmitter:rule_form-Save rule").click().run()
    assert_clean(at)
    assert alert_engine(app_env, settings).get_rule("lev").threshold == 3.0
    audit = app_env.read_stream_json(GLOBAL_AUDIT_KEY, count=10)
    assert [r.get("actor") for r in audit[:2]] == [LOCAL_ACTOR, LOCAL_ACTOR]


def test_rules_editor_refuses_an_invalid_rule_with_the_validation_message(
    app_env: Store, settings: Settings
) -> None:
    at = open_page("alerts")
    k = "rule_+ new rule_"
    at.text_input(key=k + "id").input("bad rule id!")
    at.button(key="FormSubmitter:rule_form-Save rule").click().run()
    assert_clean(at)
    assert at.error, "the editor must say why"
    assert all(r["id"] != "bad rule id!" for r in alert_engine(app_env, settings).list_rules())


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
