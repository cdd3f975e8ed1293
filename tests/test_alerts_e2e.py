"""End to end with the real daemons: a scheduled shock in the simulated feed breaches the VaR limit; the alert
is TRIGGERED and emailed to a local SMTP server, the circuit breaker sets HALTED, and a trade is then rejected
with the HALTED reason.

The daemons run as they ship (``python -m engine.stream``, ``python -m logic.monitor``, whose alert engine
queues the notifications, and ``python -m notifications``, which delivers them), each as its own process on
the test's Redis.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

import warmup
from engine.settings import settings_from_dict
from engine.store import Store
from logic.risk_manager import RiskManager

from .alerts_support import smtp_server
from .conftest import TEST_CONFIG, merge, to_toml
from .test_stream import daemon_env, spawn, stop_process, wait_for

pytestmark = pytest.mark.slow

CONFIG = merge(
    TEST_CONFIG,
    {
        "alert_rules": [
            {
                "id": "var_breach",
                "metric": "var.utilization",
                "op": ">=",
                "threshold": 1.0,
                "severity": "CRITICAL",
                "description": "VaR above its limit",
                "actions": ["set_state:HALTED"],
                "portfolios": ["main"],
            }
        ],
        "notifications": {
            "group_wait_seconds": 0,
            "group_interval_seconds": 0,
            "recipients": {"desk": {"email": "desk@test.local"}},
        },
        "escalation": {
            "CRITICAL": [{"delay_seconds": 0, "recipients": ["desk"], "channels": ["log", "email"]}]
        },
    },
)


def mail_text(smtp: Any) -> str:
    return "\n".join(m.content.decode() for m in list(smtp.messages))


def test_a_scheduled_shock_breaches_var_emails_the_alert_halts_trading_and_a_trade_is_rejected(
    store: Store, redis_server: Any, tmp_path: Path
) -> None:
    settings = settings_from_dict(CONFIG)
    warmup.seed(store, settings)
    store.ensure_tick_group("monitor")  # the monitor reads every tick published from now on
    config = tmp_path / "riskdesk.toml"
    config.write_text(to_toml(CONFIG))
    procs: list[subprocess.Popen[bytes]] = []
    with smtp_server() as (smtp, smtp_env):
        env = {**daemon_env(redis_server.url, config), **smtp_env}
        try:
            procs.append(spawn("logic.monitor", ["--idle-refresh", "1"], env, tmp_path / "monitor.log"))
            procs.append(spawn("notifications", [], env, tmp_path / "notifications.log"))
            # every price -10% at bar 20: the EWMA matrix takes in a 10% one-minute move and VaR explodes
            stream_args = "--feed sim --interval 0.05 --ticks 60 --seed 3 --shock *:-0.10@20".split()
            procs.append(spawn("engine.stream", stream_args, env, tmp_path / "stream.log"))

            wait_for(lambda: "var_breach" in store.read_active_alerts("main"), 60, "the VaR alert")
            wait_for(lambda: store.read_trading_state("main").state == "HALTED", 30, "the circuit breaker")
            wait_for(
                lambda: "HALTED (was ACTIVE)" in mail_text(smtp),
                30,
                "the emails of the alert and its response",
            )
        finally:
            for proc in procs:
                stop_process(proc)
    alert = store.read_active_alerts("main")["var_breach"]
    assert alert["status"] == "TRIGGERED" and alert["value"] >= 1.0

    texts = [m.content.decode() for m in smtp.messages]
    assert all(m.rcpt_tos == ["desk@test.local"] for m in smtp.messages)
    # the alert, then its automated response (as its own alert): each told once, possibly in one digest
    assert sum(t.count("TRIGGERED: VaR above its limit") for t in texts) == 1
    assert sum(t.count("trading state set to HALTED (was ACTIVE)") for t in texts) == 1
    assert any("Subject: [Riskdesk CRITICAL] main:" in t for t in texts)

    state = store.read_trading_state("main")
    assert state.actor == "auto:var_breach" and "VaR above its limit" in state.reason

    decision = RiskManager(store.client, "main", settings).execute_trade("AAA", 10, "BUY", actor="trader")
    assert decision["status"] == "REJECTED"
    assert "TRADING_HALTED" in [r["code"] for r in decision["reasons"]]
