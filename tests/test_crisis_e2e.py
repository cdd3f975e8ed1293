"""End to end with the real daemons, in a crisis: a scheduled crash (every price -20% with volatility x3 at
bar 50) on a levered margin portfolio trips the daily-drawdown breaker (HALTED) and the critical margin rule
together. The automated margin response then de-levers the portfolio, liquidation-only orders while it is
HALTED, until its margin level is back above the warning level; every order and state change is in the audit
trail, and no automated order is refused by the collar or the trading state.

The daemons run as they ship (``python -m engine.stream``, ``python -m logic.monitor`` with its alert engine
and responses, ``python -m notifications``), each its own process on a private Redis, stopped by PID. The
stack runs once for the module; the tests read what it left.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

import warmup
from engine.records import OrderIntent
from engine.settings import Settings, settings_from_dict
from engine.store import PortfolioKeys, Store

from .conftest import TEST_CONFIG, merge, private_redis, to_toml
from .test_stream import daemon_env, spawn, stop_process, wait_for

pytestmark = pytest.mark.slow

SHOCK_BAR = 50
LEVERED = {"AAA": 3000, "BBB": 4000, "CCC": 500}
"""$600k gross at the seed prices; with initial margin 25% and the loan below, the margin level is 170%."""
START_LEVEL = 170.0
"""Above the 150% warning before the crash; after -20% everywhere: 1.25 x 170 - 25 / 0.25 = 112.5% < 120%."""

CONFIG = merge(
    TEST_CONFIG,
    {
        "portfolios": [
            {
                "id": "lev",
                "account_type": "margin",
                "cash": "0.00",
                "holdings": LEVERED,
                "initial_margin": 0.25,
                "maintenance_margin": 0.2,
            }
        ],
        "alert_rules": [
            {
                "id": "drawdown_halt",
                "metric": "drawdown.daily",
                "op": "<=",
                "threshold": -0.05,
                "severity": "CRITICAL",
                "description": "Daily drawdown beyond 5%: circuit breaker (HALTED)",
                "actions": ["set_state:HALTED"],
            },
            {
                "id": "margin_warning",
                "metric": "margin.level",
                "op": "<",
                "threshold": 150.0,
                "severity": "HIGH",
                "description": "Margin level below 150%",
            },
            {
                "id": "margin_critical",
                "metric": "margin.level",
                "op": "<",
                "threshold": 120.0,
                "severity": "CRITICAL",
                "description": "Margin level below 120%: selling down",
                "actions": ["reduce:0.5"],
            },
        ],
        "notifications": {"group_wait_seconds": 0, "group_interval_seconds": 0},
        "escalation": {
            "HIGH": [{"delay_seconds": 0, "channels": ["log"]}],
            "CRITICAL": [{"delay_seconds": 0, "channels": ["log"]}],
        },
    },
)


@dataclasses.dataclass
class Crisis:
    store: Store
    settings: Settings
    equity_before: float
    logs: Path

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logs.glob("*.log")))


def lever(store: Store, level: float) -> float:
    """Borrow (negative cash) so that ``lev``'s margin level is ``level`` at the seed prices; returns equity."""
    market = store.read_market()
    prices = dict(zip(market.tickers, market.prices.tolist(), strict=True))
    gross = sum(q * prices[t] for t, q in LEVERED.items())
    state = store.read_portfolio("lev")
    equity = level / 100.0 * state.initial_margin * gross
    store.write_portfolio(dataclasses.replace(state, cash=Decimal(repr(round(equity - gross, 2)))))
    return equity


def margin_level(store: Store) -> float:
    """Equity / (initial margin x gross) x 100 from the stored book and the last prices, computed here."""
    market = store.read_market()
    prices = dict(zip(market.tickers, market.prices.tolist(), strict=True))
    book = store.read_portfolio("lev")
    value = sum(p.qty * prices[t] for t, p in book.positions.items())
    gross = sum(abs(p.qty) * prices[t] for t, p in book.positions.items())
    return (float(book.cash) + value) / (book.initial_margin * gross) * 100.0


@pytest.fixture(scope="module")
def crisis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crisis]:
    tmp = tmp_path_factory.mktemp("crisis")
    settings = settings_from_dict(CONFIG)
    config = tmp / "riskdesk.toml"
    config.write_text(to_toml(CONFIG))
    with private_redis("rdc-") as server:
        client = redis.Redis.from_url(server.url, socket_timeout=10)
        store = Store(client)
        warmup.seed(store, settings)
        equity = lever(store, START_LEVEL)
        store.ensure_tick_group("monitor")  # the monitor reads every tick published from now on
        env = daemon_env(server.url, config)
        procs: list[subprocess.Popen[bytes]] = []
        crisis = Crisis(store, settings, equity, tmp)
        try:
            procs.append(spawn("logic.monitor", ["--idle-refresh", "1"], env, tmp / "monitor.log"))
            procs.append(spawn("notifications", [], env, tmp / "notifications.log"))
            # the feed stops at the crash bar: the prices the response sold at are the last ones
            stream = f"--feed sim --interval 0.05 --ticks {SHOCK_BAR} --seed 1 --shock *:-0.20@{SHOCK_BAR}"
            stream += f" --vol-regime 3.0@{SHOCK_BAR}"
            procs.append(spawn("engine.stream", stream.split(), env, tmp / "stream.log"))
            try:
                wait_for(lambda: "action:margin_critical" in store.read_active_alerts("lev"), 90, "the response")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{crisis.log_tail()}") from None
        finally:
            for proc in procs:
                stop_process(proc)
        yield crisis
        client.close()


def audit(c: Crisis) -> list[dict[str, Any]]:
    return c.store.read_stream_json(PortfolioKeys("lev").audit, count=1000, newest_first=False)


def test_the_crash_trips_the_drawdown_breaker_and_the_margin_rule_together(crisis: Crisis) -> None:
    log = crisis.store.read_stream_json(PortfolioKeys("lev").alert_log, count=1000, newest_first=False)
    triggered = {r["rule_id"]: r for r in log if r["event"] == "TRIGGERED" and r["alert"]["kind"] == "metric"}
    assert {"drawdown_halt", "margin_critical", "margin_warning"} <= set(triggered)
    # together: both on the snapshot of the crash bar
    assert triggered["drawdown_halt"]["ts"] == triggered["margin_critical"]["ts"]
    assert triggered["margin_critical"]["alert"]["trigger_value"] < 120.0
    state = crisis.store.read_trading_state("lev")
    assert (state.state, state.actor) == ("HALTED", "auto:drawdown_halt")


def test_every_automated_order_is_liquidation_only_and_audited_after_the_halt(crisis: Crisis) -> None:
    records = audit(crisis)
    actions = [r["action"] for r in records]
    halted_at = actions.index("set_trading_state")
    assert records[halted_at]["state"] == "HALTED" and records[halted_at]["actor"] == "auto:drawdown_halt"
    orders = [(i, r) for i, r in enumerate(records) if r["action"] == "automated_order"]
    assert orders and all(i > halted_at for i, _ in orders)  # the de-levering happens while HALTED
    assert {(r["actor"], r["rule_id"], r["intent"]) for _, r in orders} == {
        ("auto:margin_critical", "margin_critical", OrderIntent.LIQUIDATION.value)
    }
    assert all(r["side"] == "SELL" for _, r in orders)  # a long book: only sales
    steps = [r for r in records if r["action"] == "automated_step" and r["rule_id"] == "margin_critical"]
    assert steps and steps[0]["step"] == "plan" and steps[0]["target_level"] == 150.0
    # every decision the gate took on an automated order is in the trade log, with its order audited
    trades = crisis.store.read_trade_log("lev", count=1000)
    audited = {r["client_order_id"] for _, r in orders}
    assert {t["client_order_id"] for t in trades if t["actor"].startswith("auto:")} <= audited
    outcomes = [r for r in records if r["action"] == "automated_response"]
    assert {r["rule_id"] for r in outcomes} == {"drawdown_halt", "margin_critical"}


def test_the_response_de_levers_above_the_warning_level_while_halted_with_no_refused_order(crisis: Crisis) -> None:
    trades = crisis.store.read_trade_log("lev", count=1000)
    automated = [t for t in trades if t["actor"].startswith("auto:")]
    refused = [(t["client_order_id"], t["reasons"]) for t in automated if t["status"] != "FILLED"]
    assert automated and not refused  # neither the collar nor HALTED refused a risk cut
    assert crisis.store.read_trading_state("lev").state == "HALTED"  # still halted: only a human lifts it
    assert margin_level(crisis.store) >= 150.0
    (response,) = [
        r for r in audit(crisis) if r["action"] == "automated_response" and r["rule_id"] == "margin_critical"
    ]
    assert response["ok"], response["summary"]
    assert response["details"]["margin_level_before"] < 120.0 <= 150.0 <= response["details"]["margin_level_after"]
    sold = sum(float(t["fill"]["notional"]) for t in automated)
    assert response["details"]["budget_left"] >= 0.0  # never more than the configured fraction
    assert sold == pytest.approx(sum(r["filled_notional"] for r in response["details"]["legs"]))
