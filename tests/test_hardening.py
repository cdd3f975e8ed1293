"""Hardening defects of issue 13, each shown by trying it on real parts (a real redis-server, a real TCP proxy).

1. A lost EXEC reply never fills an order twice: the proxy forwards the transaction, lets Redis run it, and
   drops the connection before the reply reaches the client; the read-back finds the order's own idempotency
   record (more cases in tests/test_execution_outcomes.py).
2. Absurd but finite prices (1e308, a covariance entry of 1e300) never make the gate raise or the monitor stop:
   the gate rejects with a code, the monitor skips that portfolio's snapshot with a logged reason, good data
   recovers.
3. CSV exports neutralise formula cells (OWASP CSV injection): text starting with ``= + - @``, tab or CR gets a
   leading ``'``; numbers, negative ones included, stay numbers.
4. Misspelled top-level sections, a file without portfolios, and a file that never mentions ``alert_rules`` are
   errors naming what is wrong (the nearest valid section for a typo).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis

import warmup
from engine.errors import ConfigError
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings, load_settings, settings_from_dict
from engine.store import MarketSnapshot, Store
from logic.monitor import Monitor
from logic.risk_manager import RiskManager
from logic.views.export import csv_bytes

from .conftest import TEST_CONFIG, merge, store_contents, to_toml
from .redis_proxy import faulty_proxy

NOW = 1_700_000_000.0


# -- 1. a lost EXEC reply ------------------------------------------------------------------------------------


def test_execute_trade_without_client_order_id_when_exec_reply_is_lost_then_fills_exactly_once(
    redis_server: EmbeddedRedis, store: Store, settings: Settings
) -> None:
    # Arrange: a seeded desk, a manager talking to Redis through the proxy
    warmup.seed(store, settings, now=NOW)
    before = store.read_portfolio("main").positions["AAA"].qty
    with faulty_proxy(redis_server.socket_path) as proxy:  # tests/redis_proxy.py
        client = redis.Redis(unix_socket_path=proxy.path, socket_timeout=10)
        try:
            rm = RiskManager(client, "main", settings, clock=lambda: NOW)
            proxy.arm("reset")  # the first EXEC runs on the server, then the connection drops without its reply

            # Act: the first EXEC runs on the server and its reply is lost
            result = rm.execute_trade("AAA", 10, "BUY")
        finally:
            client.close()

    # Assert: the drop happened, and the position moved by exactly the order's size, once
    assert proxy.faults == 1
    after = store.read_portfolio("main").positions["AAA"].qty
    assert after - before == 10
    assert result["status"] == "FILLED", result  # this call's own fill, read back after the lost reply
    assert result["duplicate"] is False
    assert result["fill"]["qty"] == 10
    assert result["client_order_id"].startswith("gen-")
    assert result["fill"]["position_after"] == after
    fills = [r for r in store.read_trade_log("main") if r.get("fill")]
    assert len(fills) == 1


# -- 2. absurd but finite prices -----------------------------------------------------------------------------


def write_market(store: Store, prices: dict[str, float] | None = None, cov_entry: float | None = None) -> None:
    """A new market snapshot (version + 1) written straight to the store, past the stream's price filter."""
    snap = store.read_market()
    new_prices = snap.prices.copy()
    for ticker, price in (prices or {}).items():
        new_prices[snap.tickers.index(ticker)] = price
    cov = snap.cov.copy()
    if cov_entry is not None:
        cov[0, 0] = cov_entry  # AAA's variance: still symmetric PSD, and finite
    store.write_market(
        MarketSnapshot(
            version=snap.version + 1, ts=NOW, tickers=snap.tickers, prices=new_prices,
            price_ts=np.full(len(snap.tickers), NOW), cov=cov,
        )
    )  # fmt: skip


def reason_codes(decision: dict[str, Any]) -> set[str]:
    return {r["code"] for r in decision["reasons"]}


@pytest.mark.parametrize(
    ("prices", "cov_entry"),
    [({"AAA": 1e308}, None), ({"AAA": 1e154}, None), (None, 1e300)],
    ids=["price-1e308", "price-1e154", "variance-1e300"],
)
def test_gate_and_monitor_when_an_absurd_finite_market_is_stored_then_reject_with_a_code_skip_and_recover(
    seeded_store: Store, settings: Settings, redis_client: redis.Redis, prices: Any, cov_entry: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    # Arrange: both portfolios snapshotted on a good market, then an absurd one written past every filter
    store = seeded_store
    clock = {"t": NOW}
    monitor = Monitor(store, settings, clock=lambda: clock["t"])
    assert set(monitor.refresh()) == {"main", "hedge"}
    good = store.read_market()
    main_before = store.read_snapshot("main")
    write_market(store, prices, cov_entry)
    rm = RiskManager(redis_client, "main", settings, clock=lambda: NOW)
    before = store_contents(redis_client)

    # Act / Assert: the gate rejects with a code and never raises; the store is unchanged
    for ticker, side in (("AAA", "BUY"), ("BBB", "BUY"), ("AAA", "SELL")):
        decision = rm.check_trade_impact(ticker, 10, side)
        assert decision["status"] == "REJECTED", {k: v for k, v in decision.items() if v is not None}
        assert reason_codes(decision) & {"MISSING_PRICE", "STORE_CORRUPT"}, decision
    assert store_contents(redis_client) == before
    executed = rm.execute_trade("AAA", 10, "BUY", client_order_id="absurd-1")
    assert executed["status"] == "REJECTED" and executed["fill"] is None
    assert reason_codes(executed["decision"]) & {"MISSING_PRICE", "STORE_CORRUPT"}, executed
    assert store.read_portfolio("main").positions["AAA"].qty == 1000

    # Act / Assert: the monitor skips main's snapshot with a logged reason; hedge (no AAA) goes on
    clock["t"] = NOW + 1
    with caplog.at_level(logging.WARNING, logger="logic.monitor"):
        snapshots = monitor.refresh()
    assert "main" not in snapshots
    assert store.read_snapshot("main") == main_before
    assert any("portfolio main: no snapshot" in r.getMessage() for r in caplog.records), caplog.text
    if cov_entry is None:  # an absurd price of a ticker hedge does not hold leaves hedge's figures finite
        assert "hedge" in snapshots and math.isfinite(snapshots["hedge"]["var"]["var95"])

    # Act / Assert: good data recovers both
    write_market(store, {t: float(p) for t, p in zip(good.tickers, good.prices, strict=True)}, float(good.cov[0, 0]))
    clock["t"] = NOW + 2
    assert set(monitor.refresh()) == {"main", "hedge"}
    assert rm.check_trade_impact("AAA", 10, "BUY")["status"] == "APPROVED"


# -- 3. CSV formula injection --------------------------------------------------------------------------------


def test_csv_export_when_text_cells_start_a_formula_then_they_are_quoted_and_numbers_stay_numbers() -> None:
    # Arrange: an alert-rule table and a blotter as the dashboard exports them
    frame = pd.DataFrame(
        {
            "rule": ['=HYPERLINK("http://x")', "plain", "+1+cmd|' /C calc'!A0", "-2+3", "\tTAB", "\rCR"],
            "name": ["@SUM(1)", "ok", "a=b", "", "-1,234.50", "12%"],
            "pnl": [-1234.5, 10.0, -0.01, 0.0, -7.0, 3.0],
            "qty": [-10, 5, 0, 1, 2, 3],
        }
    )

    # Act
    rows = list(csv.reader(io.StringIO(csv_bytes(frame).decode("utf-8"), newline="")))

    # Assert: formula-leading text gets a leading quote, everything else is written as it was
    header, body = rows[0], rows[1:]
    assert header == ["rule", "name", "pnl", "qty"]
    assert [r[0] for r in body] == ["'=HYPERLINK(\"http://x\")", "plain", "'+1+cmd|' /C calc'!A0", "'-2+3", "'\tTAB",
                                    "'\rCR"]  # fmt: skip
    assert [r[1] for r in body] == ["'@SUM(1)", "ok", "a=b", "", "-1,234.50", "12%"]  # a formatted number is data
    assert [float(r[2]) for r in body] == [-1234.5, 10.0, -0.01, 0.0, -7.0, 3.0]  # numbers stay numbers
    assert [int(r[3]) for r in body] == [-10, 5, 0, 1, 2, 3]
    assert frame.loc[0, "rule"] == '=HYPERLINK("http://x")'  # the shown table is not changed


# -- 4. misspelled sections ----------------------------------------------------------------------------------

RULE = {"id": "var_breach", "metric": "var.utilization", "op": ">", "threshold": 1.0, "severity": "HIGH"}


def config_with(**changes: Any) -> dict[str, Any]:
    """TEST_CONFIG with top-level keys set (a value of None removes the key)."""
    data = merge(TEST_CONFIG, {})
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"limit": {"var_limit": 1.0}}, "limit: unknown top-level section (did you mean 'limits'?)"),
        ({"alert_rule": [RULE]}, "alert_rule: unknown top-level section (did you mean 'alert_rules'?)"),
        ({"notification": {"channels": []}}, "notification: unknown top-level section (did you mean 'notifications'?)"),
        ({"portfolios": []}, "portfolios: no portfolio is configured"),
        ({"portfolios": None}, "portfolios: no portfolio is configured"),
        ({"alert_rules": None}, "alert_rules: the file never mentions alert_rules"),
    ],
    ids=["limit", "alert_rule", "notification", "empty-portfolios", "no-portfolios", "no-alert-rules"],
)
def test_load_settings_when_a_section_is_misspelled_or_missing_then_the_error_names_it_and_warmup_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, Any], expected: str
) -> None:
    # Arrange
    path = tmp_path / "riskdesk.toml"
    path.write_text(to_toml(config_with(**changes)))

    # Act / Assert: the loader refuses with the message
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert expected in str(caught.value)

    # Act / Assert: so does the seeding, with exit 2 and before touching any store
    assert warmup.main(["--config", str(path)]) == 2
    assert expected in capsys.readouterr().err


def test_load_settings_when_alert_rules_are_explicitly_empty_or_given_then_the_file_loads(tmp_path: Path) -> None:
    # Arrange
    empty, one = tmp_path / "empty.toml", tmp_path / "one.toml"
    empty.write_text(to_toml(config_with(alert_rules=[])))
    one.write_text(to_toml(config_with(alert_rules=[RULE], escalation={}, notifications={})))

    # Act / Assert: explicit zero rules, and the other components' sections, are legitimate
    assert load_settings(empty, env={}).alert_rules == ()
    settings = load_settings(one, env={})
    assert [r.id for r in settings.alert_rules] == ["var_breach"]
    assert set(settings.extra) == {"escalation", "notifications"}


def test_settings_from_dict_when_a_top_level_section_is_unknown_then_it_is_an_error_naming_the_nearest() -> None:
    with pytest.raises(ConfigError, match=r"stres_scenarios: unknown top-level section \(did you mean 'stress_sc"):
        settings_from_dict(config_with(stres_scenarios={}))
    unknown = r"zzz: unknown top-level section \(valid sections: access, alert_rules, "
    with pytest.raises(ConfigError, match=unknown) as err:
        settings_from_dict(config_with(zzz=1))
    assert "limits" in str(err.value) and "notifications" in str(err.value)
