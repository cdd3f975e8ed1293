"""engine/metrics.py and its hooks: what the stream daemon, the monitor, the pre-trade gate and the notifier
count, read back from each one's own registry and compared with what the store holds; label cardinality at
its bound; the /metrics endpoint; the shipped Grafana dashboard names only metrics that exist."""

from __future__ import annotations

import json
import math
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from engine.errors import ConfigError
from engine.feeds import Bar, IterableFeed, SimulatedFeed
from engine.metrics import (
    PRICE_REJECT_REASONS,
    BacktestMetrics,
    GateMetrics,
    MonitorMetrics,
    NotificationMetrics,
    StreamMetrics,
    alert_counts,
    price_reject_reason,
    serve,
)
from engine.records import TradingState
from engine.settings import Settings, load_settings
from engine.store import BACKTEST_GROUP, TICKS_KEY, Store
from engine.stream import StreamDaemon
from logic.monitor import Monitor
from logic.risk_manager import RiskManager

from .alerts_support import T0, rule, snapshot
from .prom_support import free_port, get_text
from .test_notifications import engine_with

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana-riskdesk.json"


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# -- definitions ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("ZZZ=10.0: unknown ticker", "unknown_ticker"),
        ("AAA='abc': not a number", "not_a_number"),
        ("AAA=inf: not a finite price", "not_finite"),
        ("AAA=-5.0: not a positive price", "not_positive"),
        ("AAA=1e300: above the largest plausible price 1e+09", "implausible"),
        ("AAA=200.0: jump of 14.2 sigma from 100 (limit 12 sigma)", "jump"),
        ("AAA=1: something new", "other"),
    ],
)
def test_each_rejection_text_maps_to_one_bounded_reason(text: str, label: str) -> None:
    assert price_reject_reason(text) == label
    assert label in (*PRICE_REJECT_REASONS.values(), "other")


def test_every_daemon_has_its_own_registry() -> None:
    a, b = StreamMetrics(), StreamMetrics()
    a.bars_written.inc()
    assert sample(a.registry, "riskdesk_stream_bars_written_total") == 1.0
    assert sample(b.registry, "riskdesk_stream_bars_written_total") == 0.0


def test_metric_names_follow_the_prometheus_conventions() -> None:
    registries = [StreamMetrics().registry, MonitorMetrics().registry, NotificationMetrics().registry,
                  BacktestMetrics().registry]  # fmt: skip
    for registry in registries:
        for family in registry.collect():
            assert family.name.startswith("riskdesk_"), family.name
            if family.type == "counter":
                assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
            if family.type == "histogram":
                assert family.name.endswith("_seconds"), family.name


# -- the stream daemon ---------------------------------------------------------------------------------------


def test_the_stream_daemon_counts_bars_rejected_prices_by_reason_and_the_market_version(
    seeded_store: Store, settings: Settings
) -> None:
    bars = [
        Bar(1, {"AAA": 101.0, "BBB": 50.5, "CCC": 201.0, "DDD": 25.1}),
        Bar(2, {"AAA": math.nan, "BBB": 51.0}),  # AAA refused
        Bar(3, {"ZZZ": 10.0}),  # unknown ticker: bar refused
        Bar(4, {"AAA": -5.0, "BBB": "abc", "CCC": 0.0, "DDD": 26.0}),  # type: ignore[dict-item]
    ]
    metrics = StreamMetrics()
    stats = StreamDaemon(seeded_store, settings, IterableFeed(bars), interval=0, metrics=metrics).run()
    r = metrics.registry
    assert sample(r, "riskdesk_stream_bars_written_total") == stats.bars_written == 3
    assert sample(r, "riskdesk_stream_bars_rejected_total") == stats.bars_rejected == 1
    assert sample(r, "riskdesk_market_version") == seeded_store.read_market().version
    by_reason = {
        label: sample(r, "riskdesk_stream_prices_rejected_total", reason=label) or 0.0
        for label in (*PRICE_REJECT_REASONS.values(), "other")
    }
    assert by_reason == {
        "unknown_ticker": 1, "not_a_number": 1, "not_finite": 1, "not_positive": 2, "implausible": 0, "jump": 0,
        "other": 0,
    }  # fmt: skip
    assert sum(by_reason.values()) == stats.prices_rejected
    assert sample(r, "riskdesk_stream_bar_duration_seconds_count") == 3


# -- the backtest runner -------------------------------------------------------------------------------------


def test_the_backtest_runner_counts_bars_fed_and_lost_and_the_last_version(
    seeded_store: Store, settings: Settings
) -> None:
    from logic.backtest_runner import BacktestRunner

    StreamDaemon(seeded_store, settings, SimulatedFeed.from_settings(settings, seed=3), interval=0).run(ticks=4)
    metrics = BacktestMetrics()
    runner = BacktestRunner(seeded_store, settings, consumer="bt", metrics=metrics)
    (gone, _), *_ = seeded_store.read_tick_group(BACKTEST_GROUP, "bt", count=1)  # delivered to it, then trimmed
    seeded_store.client.xdel(TICKS_KEY, gone)
    assert runner.process_available() == 3
    r = metrics.registry
    assert sample(r, "riskdesk_backtest_bars_fed_total") == runner.stats.bars_fed == 3
    assert sample(r, "riskdesk_backtest_bars_lost_total") == runner.stats.bars_lost == 1
    assert sample(r, "riskdesk_backtest_market_version") == seeded_store.read_market().version
    assert sample(r, "riskdesk_backtest_bar_duration_seconds_count") == 3
    assert sample(r, "riskdesk_backtest_conflicts_total") == 0


# -- the monitor ---------------------------------------------------------------------------------------------


def _run(store: Store, settings: Settings, metrics: MonitorMetrics, ticks: int = 5) -> Monitor:
    StreamDaemon(store, settings, SimulatedFeed.from_settings(settings, seed=3), interval=0).run(ticks=ticks)
    monitor = Monitor(store, settings, metrics=metrics)
    monitor.process_available()
    return monitor


def test_the_monitor_exports_ticks_and_each_portfolios_figures_as_the_store_holds_them(
    seeded_store: Store, settings: Settings
) -> None:
    metrics = MonitorMetrics()
    monitor = _run(seeded_store, settings, metrics)
    r = metrics.registry
    assert sample(r, "riskdesk_monitor_ticks_processed_total") == monitor.stats.ticks_processed == 5
    assert sample(r, "riskdesk_monitor_snapshot_duration_seconds_count") == 5
    assert sample(r, "riskdesk_portfolios_monitored") == 2
    for pid in ("main", "hedge"):
        snap = seeded_store.read_snapshot(pid)
        assert snap is not None
        assert sample(r, "riskdesk_portfolio_var", portfolio=pid, confidence="0.95") == snap["var"]["var95"]
        assert sample(r, "riskdesk_portfolio_var", portfolio=pid, confidence="0.99") == snap["var"]["var99"]
        assert sample(r, "riskdesk_portfolio_var_utilisation_ratio", portfolio=pid) == snap["var"]["utilization"]
        for window in ("daily", "weekly", "max"):
            got = sample(r, "riskdesk_portfolio_drawdown_ratio", portfolio=pid, window=window)
            assert got == snap["drawdown"][window]
        assert sample(r, "riskdesk_portfolio_equity", portfolio=pid) == snap["equity"]
        states = {
            s.value: sample(r, "riskdesk_portfolio_trading_state", portfolio=pid, state=s.value) for s in TradingState
        }
        assert states == {s.value: float(s.value == snap["trading_state"]) for s in TradingState}


@pytest.mark.parametrize(("cap", "labelled"), [(1, ["hedge"]), (2, ["hedge", "main"])])
def test_per_portfolio_gauges_stop_at_max_portfolios_and_count_the_rest(
    seeded_store: Store, settings: Settings, cap: int, labelled: list[str]
) -> None:
    metrics = MonitorMetrics(max_portfolios=cap)
    _run(seeded_store, settings, metrics, ticks=1)
    r = metrics.registry
    shown = sorted({s.labels["portfolio"] for f in r.collect() for s in f.samples if "portfolio" in s.labels})
    assert shown == labelled
    assert sample(r, "riskdesk_portfolios_unlabelled") == 2 - len(labelled)


def test_max_portfolios_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="max_portfolios"):
        MonitorMetrics(max_portfolios=0)


def test_a_portfolio_gone_from_a_round_leaves_the_gauges() -> None:
    metrics = MonitorMetrics()
    metrics.snapshots({"a": snapshot("a"), "b": snapshot("b")})
    metrics.snapshots({"b": snapshot("b", var__var95=None)})
    r = metrics.registry
    assert sample(r, "riskdesk_portfolio_var", portfolio="a", confidence="0.95") is None
    assert math.isnan(sample(r, "riskdesk_portfolio_var", portfolio="b", confidence="0.95") or 0.0)  # null: NaN
    assert sample(r, "riskdesk_portfolio_var", portfolio="b", confidence="0.99") == 7_000.0


def test_alerts_are_counted_by_severity_and_status_at_scrape_time() -> None:
    alerts = [
        {"severity": "CRITICAL", "status": "TRIGGERED"},
        {"severity": "CRITICAL", "status": "TRIGGERED"},
        {"severity": "LOW", "status": "ACKNOWLEDGED"},
        {"severity": "LOW", "status": "RESOLVED"},  # not active: not counted
    ]
    counts = alert_counts(alerts)
    assert counts[("CRITICAL", "TRIGGERED")] == 2 and counts[("LOW", "ACKNOWLEDGED")] == 1
    assert sum(counts.values()) == 3 and len(counts) == 8
    metrics = MonitorMetrics()
    source: list[Callable[[], list[dict[str, Any]]]] = [lambda: alerts]
    metrics.watch_alerts(lambda: source[0]())
    r = metrics.registry
    assert sample(r, "riskdesk_alerts", severity="CRITICAL", status="TRIGGERED") == 2
    assert sample(r, "riskdesk_alerts", severity="HIGH", status="TRIGGERED") == 0

    def broken() -> list[dict[str, Any]]:
        raise ConnectionError("redis down")

    source[0] = broken
    assert sample(r, "riskdesk_alerts", severity="CRITICAL", status="TRIGGERED") is None
    assert sample(r, "riskdesk_redis_errors_total", component="monitor") == 1


def test_the_monitor_counts_alerts_the_store_holds(seeded_store: Store, make_settings: Any) -> None:
    engine, _, _ = engine_with(seeded_store, make_settings, {}, ["log"],
                               rules=[rule("v", "var.utilization", ">=", 1.0, "HIGH")])  # fmt: skip
    engine.evaluate("main", snapshot(var__utilization=1.0), T0)  # exactly at the threshold: triggers
    engine.evaluate("hedge", snapshot("hedge", var__utilization=0.999), T0)  # below: nothing
    metrics = MonitorMetrics()
    store = seeded_store
    metrics.watch_alerts(lambda: [a for p in store.portfolio_ids() for a in store.read_active_alerts(p).values()])
    assert sample(metrics.registry, "riskdesk_alerts", severity="HIGH", status="TRIGGERED") == 1


# -- the pre-trade gate --------------------------------------------------------------------------------------


def test_the_gate_counts_decisions_by_status_and_reason_and_their_latency(
    seeded_store: Store, settings: Settings
) -> None:
    gate = GateMetrics()
    manager = RiskManager(seeded_store.client, "main", settings, metrics=gate)
    approved = manager.check("AAA", 10, "BUY")
    refused = manager.check("AAA", 0, "BUY")
    executed = manager.execute("AAA", 10, "BUY", client_order_id="o-1")
    r = gate.registry
    assert approved.status == "APPROVED" and executed.filled
    assert sample(r, "riskdesk_pretrade_decisions_total", status="APPROVED", reason="none") == 2
    codes = {str(x.code) for x in refused.reasons}
    for code in codes:
        assert sample(r, "riskdesk_pretrade_decisions_total", status="REJECTED", reason=code) == 1
    assert "BAD_QUANTITY" in codes
    assert sample(r, "riskdesk_pretrade_decision_duration_seconds_count") == 3


def test_a_gate_without_metrics_counts_nothing_and_decides_the_same(seeded_store: Store, settings: Settings) -> None:
    plain = RiskManager(seeded_store.client, "main", settings).check("AAA", 10, "BUY")
    counted = RiskManager(seeded_store.client, "main", settings, metrics=GateMetrics()).check("AAA", 10, "BUY")
    assert plain.status == counted.status and plain.reasons == counted.reasons


# -- notifications -------------------------------------------------------------------------------------------


def test_the_notifier_counts_messages_by_channel_and_status(store: Store, make_settings: Any) -> None:
    engine, _, _ = engine_with(store, make_settings, {}, ["log", "email"],
                               rules=[rule("v", "var.utilization", ">=", 1.0, "CRITICAL")])  # fmt: skip
    engine.evaluate("main", snapshot(var__utilization=1.5), T0)
    engine.tick(T0)
    notifier = engine.after_tick.__self__  # build_delivering_engine's flush is the notifier's
    r = notifier.metrics.registry
    assert sample(r, "riskdesk_notifications_total", channel="log", status="delivered") == 1
    assert sample(r, "riskdesk_notifications_total", channel="email", status="skipped") == 1  # no SMTP_HOST


# -- endpoint and settings -----------------------------------------------------------------------------------


def test_serve_answers_on_its_port_and_a_taken_port_or_port_0_serves_nothing() -> None:
    metrics = StreamMetrics()
    metrics.bar_written(7, 0.002)
    assert serve(metrics.registry, "127.0.0.1", 0, "test") is None
    port = free_port()
    endpoint = serve(metrics.registry, "127.0.0.1", port, "test")
    assert endpoint is not None
    try:
        text = get_text(endpoint.url)
        assert "riskdesk_market_version 7.0" in text and "riskdesk_stream_bars_written_total 1.0" in text
        assert serve(StreamMetrics().registry, "127.0.0.1", port, "second") is None  # taken: logged, none
    finally:
        endpoint.close()


def test_metrics_settings_are_validated_and_documented(make_settings: Callable[..., Settings]) -> None:
    assert make_settings().metrics.stream_port == 0  # tests and a bare settings file serve nothing
    assert make_settings({"metrics": {"monitor_port": 65535}}).metrics.monitor_port == 65535
    with pytest.raises(ConfigError, match="monitor_port"):
        make_settings({"metrics": {"monitor_port": 65536}})
    with pytest.raises(ConfigError, match="max_portfolios"):
        make_settings({"metrics": {"max_portfolios": 0}})
    shipped = load_settings(ROOT / "riskdesk.toml", env={}).metrics
    assert (shipped.address, shipped.stream_port, shipped.monitor_port) == ("127.0.0.1", 9464, 9465)
    assert shipped.backtest_port == 9467


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_metrics_may_bind_any_loopback_address(make_settings: Callable[..., Settings], address: str) -> None:
    assert make_settings({"metrics": {"address": address}}).metrics.address == address


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.0.2.2", "riskdesk.desk.example", ""])
def test_metrics_beyond_the_loopback_interface_are_refused(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    # the endpoints have no login and list every portfolio's VaR, drawdown and trading state
    with pytest.raises(ConfigError, match="metrics.address .* not a loopback address"):
        make_settings({"metrics": {"address": address}})
    monkeypatch.setenv("RISKDESK__METRICS__ADDRESS", address)  # nor from the environment
    with pytest.raises(ConfigError, match="not a loopback address"):
        load_settings(ROOT / "riskdesk.toml")


# -- the Grafana dashboard -----------------------------------------------------------------------------------


def defined_metric_names() -> set[str]:
    """Every sample name the registries can expose (counters' _total, histograms' _bucket/_sum/_count)."""
    metrics = MonitorMetrics()
    metrics.watch_alerts(lambda: [])
    metrics.snapshots({"p": snapshot("p")})
    names: set[str] = set()
    for registry in (StreamMetrics().registry, metrics.registry, NotificationMetrics().registry,
                     BacktestMetrics().registry):  # fmt: skip
        for family in registry.collect():
            names.add(family.name)
            names.update(s.name for s in family.samples)
            if family.type == "counter":
                names.add(family.name + "_total")
            if family.type == "histogram":
                names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
    NotificationMetrics().sent("log", "delivered")
    return names


def test_the_grafana_dashboard_is_valid_json_and_every_expression_names_an_existing_metric() -> None:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    known = defined_metric_names()
    for expr in exprs:
        names = set(re.findall(r"\briskdesk_[a-z0-9_]+", expr))
        assert names, expr
        assert names <= known, (expr, names - known)


def test_a_metrics_endpoint_body_parses_as_prometheus_text() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics = MonitorMetrics()
    metrics.snapshots({"main": snapshot("main")})
    port = free_port()
    endpoint = serve(metrics.registry, "127.0.0.1", port, "test")
    assert endpoint is not None
    try:
        with urllib.request.urlopen(endpoint.url, timeout=5) as reply:
            families = {f.name for f in text_string_to_metric_families(reply.read().decode())}
    finally:
        endpoint.close()
    assert {"riskdesk_portfolio_var", "riskdesk_monitor_ticks_processed"} <= families


def test_the_launcher_prints_each_served_metrics_url_and_skips_port_0(make_settings: Callable[..., Settings]) -> None:
    import launcher

    settings = make_settings(
        {"metrics": {"stream_port": 9464, "monitor_port": 0, "notifications_port": 9466, "backtest_port": 9467}}
    )
    assert launcher.metrics_lines(settings) == [
        "Metrics (stream): http://127.0.0.1:9464/metrics",
        "Metrics (backtest): http://127.0.0.1:9467/metrics",
        "Metrics (notify): http://127.0.0.1:9466/metrics",
    ]
    assert launcher.metrics_lines(make_settings()) == []
