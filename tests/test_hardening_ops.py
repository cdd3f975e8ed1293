"""Issue 13 hardening, operations side: secrets stay out of logs and Redis, webhook text is escaped for chat
tools, stale PID files are never trusted, idle monitor consumers are removed, old idempotency records pruned."""

from __future__ import annotations

import csv
import io
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from engine.store import Store
from notifications.service import build_delivering_engine

from .alerts_support import (
    T0,
    TWILIO_ENV,
    SimClock,
    SleepRecorder,
    free_port,
    rule,
    snapshot,
    webhook_server,
)

ROOT = Path(__file__).resolve().parent.parent
RETRY = {"max_attempts": 2, "backoff_seconds": 1.0, "backoff_multiplier": 2.0, "max_backoff_seconds": 30.0}
SID = TWILIO_ENV["TWILIO_ACCOUNT_SID"]
TOKEN = TWILIO_ENV["TWILIO_AUTH_TOKEN"]


def _engine(store: Store, make_settings: Any, env: dict[str, str], channels: list[str], recipients: dict,
            description: str = "VaR above its limit", **kwargs: Any) -> Any:  # fmt: skip
    level = [{"delay_seconds": 0, "recipients": ["desk"], "channels": channels}]
    settings = make_settings(
        {
            "alert_rules": [rule("var_breach", "var.utilization", ">=", 1.0, "CRITICAL", description=description)],
            "notifications": {
                "group_wait_seconds": 0, "group_interval_seconds": 0, "retry": RETRY, "recipients": recipients,
            },
            "escalation": {"CRITICAL": level},
        }
    )  # fmt: skip
    return build_delivering_engine(store, settings, clock=SimClock(), env=env, sleep=SleepRecorder(), **kwargs)


def _redis_dump(client: redis.Redis) -> str:
    """Every key and every value in the database, as text (what the AOF would hold)."""
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        out.append(key.decode("utf-8", "replace"))
        if kind == "string":
            out.append(repr(client.get(key)))
        elif kind == "hash":
            out.append(repr(client.hgetall(key)))
        elif kind == "list":
            out.append(repr(client.lrange(key, 0, -1)))
        elif kind == "zset":
            out.append(repr(client.zrange(key, 0, -1, withscores=True)))
        elif kind == "set":
            out.append(repr(client.smembers(key)))
        elif kind == "stream":
            out.append(repr(client.xrange(key)))
    return "\n".join(out)


def _csv(records: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=sorted({k for r in records for k in r}))
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()


# -- 5. secrets ----------------------------------------------------------------------------------------------


def test_the_twilio_account_sid_reaches_neither_the_delivery_log_nor_redis_nor_the_logs(
    store: Store, make_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from twilio.http.http_client import TwilioHttpClient

    # the real Twilio HTTP client, sent through a proxy port where nothing listens: a connection error whose
    # text carries the request URL (/Accounts/<SID>/Messages.json), and the client's own INFO request log
    http = TwilioHttpClient(proxy={"https": f"http://127.0.0.1:{free_port()}"}, timeout=5)
    caplog.set_level(logging.DEBUG)
    engine = _engine(store, make_settings, dict(TWILIO_ENV), ["sms"], {"desk": {"sms": "+15550100001"}},
                     twilio_http_client=http)  # fmt: skip
    engine.evaluate("main", snapshot(var__utilization=1.5), T0)
    engine.tick(T0)
    (record,) = engine.delivery_log("main")
    assert record["status"] == "failed" and record["attempts"] == 2
    assert "api.twilio.com" in record["error"]  # the error still says where it failed ...
    for text in (repr(record), _csv([record]), _redis_dump(store.client), caplog.text):
        assert SID not in text and SID[2:] not in text and TOKEN not in text  # ... but not whose account


def test_a_webhook_url_with_its_secret_path_is_stored_nowhere_in_redis(
    store: Store, make_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with webhook_server([500, 500, 200]) as (received, url):
        engine = _engine(store, make_settings, {"SLACK_URL": url}, ["webhook"], {"desk": {"webhook": "env:SLACK_URL"}})
        engine.evaluate("main", snapshot(var__utilization=1.5), T0)
        engine.tick(T0)
        engine.resolve("main", "var_breach", actor="alice")
        engine.tick(T0 + 1)
    assert len(received) == 3
    records = engine.delivery_log("main")
    assert [r["status"] for r in records] == ["delivered", "failed"]
    for text in (repr(records), _csv(records), _redis_dump(store.client), caplog.text):
        assert "/hooks/T000/B000/secret" not in text and "secret" not in text


def _plaintext_auth_server(credentials: tuple[str, str]) -> Any:
    """A real aiosmtpd server that (wrongly) accepts AUTH without TLS, to see whether we send the login."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    from .alerts_support import ScriptedSmtpHandler

    handler = ScriptedSmtpHandler()

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        handler.logins.append(data.login.decode() if isinstance(data, LoginPassword) else repr(data))
        return AuthResult(success=(data.login, data.password) == tuple(c.encode() for c in credentials))

    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), authenticator=authenticator,
                            auth_required=True, auth_require_tls=False)  # fmt: skip
    return controller, handler


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("allowed", [False, True])
def test_plaintext_smtp_authentication_is_refused_unless_explicitly_allowed(
    store: Store, make_settings: Any, allowed: bool
) -> None:
    controller, handler = _plaintext_auth_server(("risk@test.local", "s3cret"))
    controller.start()
    try:
        env = {
            "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(controller.port), "SMTP_SECURITY": "none",
            "SMTP_USER": "risk@test.local", "SMTP_PASSWORD": "s3cret", "SMTP_TIMEOUT": "5",
        }  # fmt: skip
        if allowed:
            env["SMTP_ALLOW_PLAINTEXT_AUTH"] = "1"
        engine = _engine(store, make_settings, env, ["email"], {"desk": {"email": "desk@test.local"}})
        engine.evaluate("main", snapshot(var__utilization=1.5), T0)
        engine.tick(T0)
    finally:
        controller.stop()
    record = engine.delivery_log("main", channel="email")[0]
    if allowed:
        assert record["status"] == "delivered" and handler.logins == ["risk@test.local"]
    else:
        assert record["status"] == "skipped" and handler.logins == [] and handler.messages == []
        assert "SMTP_SECURITY=none" in record["error"] and "SMTP_ALLOW_PLAINTEXT_AUTH" in record["error"]


# -- 6. webhook text for chat tools --------------------------------------------------------------------------


def test_webhook_text_escapes_chat_mentions_so_nobody_is_pinged(store: Store, make_settings: Any) -> None:
    with webhook_server() as (received, url):
        engine = _engine(store, make_settings, {"SLACK_URL": url}, ["webhook"], {"desk": {"webhook": "env:SLACK_URL"}},
                         description="<!channel> & <@U123>")  # fmt: skip
        engine.evaluate("main", snapshot(var__utilization=1.5), T0)
        engine.tick(T0)
    (payload,) = received
    assert "&lt;!channel&gt; &amp; &lt;@U123&gt;" in payload["text"]
    assert "<!channel>" not in payload["text"] and "<@U123>" not in payload["text"]
    assert payload["text"].count("&") == payload["text"].count("&amp;") + payload["text"].count("&lt;") + payload[
        "text"
    ].count("&gt;")


# -- 7. stale PID files --------------------------------------------------------------------------------------


@pytest.fixture
def unrelated_process() -> Any:
    """A live process that has nothing to do with Riskdesk (what a reused PID names after a reboot)."""
    proc = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_stop_with_pid_files_naming_an_unrelated_process_signals_nothing_and_cleans_them(
    tmp_path: Path, unrelated_process: subprocess.Popen[bytes]
) -> None:
    from .conftest import TEST_CONFIG, merge, to_toml

    data_dir = tmp_path / "v"
    (data_dir / "run").mkdir(parents=True)
    stale = [
        data_dir / "redis.pid",
        *(data_dir / "run" / f"{n}.pid" for n in ("stream", "monitor", "notify", "dashboard")),
    ]
    for path in stale:
        path.write_text(str(unrelated_process.pid))
    config = tmp_path / "riskdesk.toml"
    config.write_text(to_toml(merge(TEST_CONFIG, {"redis": {"data_dir": str(data_dir)}})))
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("RISKDESK")}

    status = subprocess.run([sys.executable, "launcher.py", "status", "--config", str(config)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    stopped = subprocess.run([sys.executable, "launcher.py", "stop", "--config", str(config)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip

    assert status.returncode == 0 and stopped.returncode == 0, stopped.stderr
    assert str(unrelated_process.pid) not in status.stdout and "running" not in status.stdout
    assert "nothing was running" in stopped.stdout
    assert unrelated_process.poll() is None  # still alive: never signalled
    assert [p for p in stale if p.exists()] == []


def test_the_embedded_redis_manager_does_not_trust_a_pid_file_naming_another_process(
    tmp_path: Path, unrelated_process: subprocess.Popen[bytes]
) -> None:
    from engine.redis_server import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "r")
    server.data_dir.mkdir()
    server.pid_path.write_text(str(unrelated_process.pid))
    assert server.pid() is None and not server.is_running()
    assert server.stop() is False
    server.kill()
    assert unrelated_process.poll() is None and not server.pid_path.exists()
    # the normal life cycle still works on the same directory
    assert server.start() is True
    try:
        pid = server.pid()
        assert pid is not None and server.is_running()
    finally:
        assert server.stop() is True
    assert not server.pid_path.exists()


# -- also: idle consumers leave the monitor group; old idempotency records are pruned ------------------------


def test_consumers_idle_past_the_limit_leave_the_group_but_never_self_nor_one_with_pending_ticks(
    seeded_store: Store, make_settings: Any
) -> None:
    import time

    from engine.store import MONITOR_GROUP, TICKS_KEY
    from logic.monitor import Monitor

    client = seeded_store.client
    seeded_store.ensure_tick_group(MONITOR_GROUP)
    client.xadd(TICKS_KEY, {"x": "1"})
    for name in ("me", "dead-idle", "dead-pending"):
        client.xgroup_createconsumer(TICKS_KEY, MONITOR_GROUP, name)
    client.xreadgroup(MONITOR_GROUP, "dead-pending", {TICKS_KEY: ">"}, count=1)  # read, never acknowledged
    time.sleep(0.05)  # every consumer is now idle for at least 50 ms

    def consumers() -> set[str]:
        return {c["name"].decode() for c in client.xinfo_consumers(TICKS_KEY, MONITOR_GROUP)}

    lenient = Monitor(seeded_store, make_settings({"monitor": {"consumer_idle_limit_seconds": 3600}}), consumer="me")
    assert lenient.remove_idle_consumers() == [] and consumers() == {"me", "dead-idle", "dead-pending"}

    strict = Monitor(seeded_store, make_settings({"monitor": {"consumer_idle_limit_seconds": 0.01}}), consumer="me")
    assert strict.remove_idle_consumers() == ["dead-idle"]
    assert consumers() == {"me", "dead-pending"}  # itself, and one whose ticks would be lost
    pending = client.xpending(TICKS_KEY, MONITOR_GROUP)
    assert pending["pending"] == 1

    # once its ticks are claimed by a live monitor it holds nothing and goes too
    client.xautoclaim(TICKS_KEY, MONITOR_GROUP, "me", 0, start_id="0-0")
    time.sleep(0.05)
    assert strict.remove_idle_consumers() == ["dead-pending"] and consumers() == {"me"}
    assert client.xpending(TICKS_KEY, MONITOR_GROUP)["pending"] == 1  # the tick is still owed, by "me"


def test_idempotency_records_older_than_the_retention_are_pruned_at_the_boundary(
    store: Store, make_settings: Any
) -> None:
    import warmup
    from engine.store import PortfolioKeys
    from logic.monitor import Monitor
    from logic.risk_manager import RiskManager

    from .test_risk_manager import NOW

    settings = make_settings({"limits": {"order_id_retention_days": 7}})
    warmup.seed(store, settings, now=NOW)
    first = RiskManager(store.client, "main", settings, clock=lambda: NOW)
    later = RiskManager(store.client, "main", settings, clock=lambda: NOW + 10)
    filled = first.execute_trade("AAA", 10, "BUY", client_order_id="old")
    assert filled["status"] == "FILLED", filled["reasons"]
    filled = later.execute_trade("AAA", 10, "BUY", client_order_id="new")
    assert filled["status"] == "FILLED", filled["reasons"]
    keys = PortfolioKeys("main")
    assert store.client.zscore(keys.orders_ts, "old") == NOW and store.client.zcard(keys.orders_ts) == 2
    monitor = Monitor(store, settings, clock=lambda: NOW)
    retention = 7 * 86_400.0

    assert monitor.prune_order_ids(NOW + retention) == 0  # exactly at the retention: kept
    assert store.read_order("main", "old") is not None

    assert monitor.prune_order_ids(NOW + retention + 1) == 1  # one second over: gone, hash and index
    assert store.read_order("main", "old") is None and store.read_order("main", "new") is not None
    assert store.client.hkeys(keys.orders) == [b"new"] and store.client.zrange(keys.orders_ts, 0, -1) == [b"new"]
