"""engine/metrics.py on a bad day: stale prices, an unpriced holding, a dead SMTP server.

A gauge keeps its last value forever, so the monitor's figures carry when they were set and how old their prices
were (``riskdesk_portfolio_snapshot_timestamp_seconds``, ``riskdesk_portfolio_market_timestamp_seconds``); an
incomplete valuation (a held ticker without a price) says so (``riskdesk_portfolio_valuation_complete`` 0) and
blanks the equity, VaR and drawdown gauges (NaN) instead of exporting a phantom equity and an understated VaR; the
stressed VaR on the gate's basis is exported; e-mails held while SMTP is down are counted (``status="held"``).
Everything is read back from the exposition text of the real prometheus_client registry, the monitor figures
compared with the snapshot the real monitor stored and with closed forms (tests/test_unpriced_holdings.py's book).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import warmup
from engine.metrics import NOTIFICATION_STATUSES, MonitorMetrics, NotificationMetrics, serve
from engine.records import TradingState
from engine.settings import Settings
from engine.store import PortfolioKeys, Store
from logic.monitor import Monitor
from tests.alerts_support import snapshot
from tests.prom_support import free_port, prometheus, promql, wait_until
from tests.test_notify_storm import T0, blackhole, storm_on_dead_smtp  # noqa: F401 (blackhole: a fixture)
from tests.test_unpriced_holdings import (
    CASH,
    CCC_PRICE,
    DDD_PRICE,
    LONG_QTY,
    NOW,
    PATHS,
    PHANTOM_EQUITY,
    SHORT_QTY,
    TRUE_EQUITY,
    Desk,
)

ROOT = Path(__file__).resolve().parent.parent
WALL = 1_800_000_000.0  # the metrics' wall clock: apart from the monitor's clock, as in a replay
THREE_DAYS = 3 * 86_400.0
STRESSED_LIMIT = 150_000.0
BOOK_FIGURES = (
    'riskdesk_portfolio_var{confidence="0.95",portfolio="%s"}',
    'riskdesk_portfolio_var{confidence="0.99",portfolio="%s"}',
    'riskdesk_portfolio_var_utilisation_ratio{portfolio="%s"}',
    'riskdesk_portfolio_stressed_var{portfolio="%s"}',
    'riskdesk_portfolio_stressed_var_utilisation_ratio{portfolio="%s"}',
    'riskdesk_portfolio_equity{portfolio="%s"}',
    'riskdesk_portfolio_drawdown_ratio{portfolio="%s",window="daily"}',
    'riskdesk_portfolio_drawdown_ratio{portfolio="%s",window="weekly"}',
    'riskdesk_portfolio_drawdown_ratio{portfolio="%s",window="max"}',
)
"""Every gauge valued on the book (NaN while its valuation is incomplete)."""


def exposition(registry: CollectorRegistry) -> dict[str, float]:
    """``name{labels}`` -> value of every sample line of the registry's text exposition (what /metrics serves)."""
    samples: dict[str, float] = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def helps(registry: CollectorRegistry) -> dict[str, str]:
    """Metric name -> its HELP text, as served."""
    text = generate_latest(registry).decode()
    return {m[1]: m[2] for m in re.finditer(r"^# HELP (\S+) (.*)$", text, re.MULTILINE)}


class Wall:
    """The metrics' wall clock, set by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def desk(store: Store, settings: Settings, vectorised: bool, metrics: MonitorMetrics) -> Desk:
    """tests/test_unpriced_holdings.py's desk (no alerts), its monitor counting into ``metrics``."""
    clock = [NOW]
    warmup.seed(store, settings, now=NOW)
    monitor = Monitor(
        store, settings, lambda: clock[0], idle_refresh_seconds=0, vectorised=vectorised,
        consumer="fast" if vectorised else "loop", metrics=metrics,
    )  # fmt: skip
    return Desk(store, monitor, clock)


@pytest.fixture
def book_settings(make_settings: Callable[..., Settings]) -> Settings:
    """The unpriced-holdings book (hedge: CCC long, DDD short, margin) with a stressed VaR limit."""
    hedge = {
        "id": "hedge", "account_type": "margin", "cash": f"{CASH:.2f}", "holdings": {"CCC": LONG_QTY, "DDD": SHORT_QTY},
        "initial_margin": 0.5, "maintenance_margin": 0.25, "limits": {"stressed_var_limit": f"{STRESSED_LIMIT:.0f}"},
    }  # fmt: skip
    main = {"id": "main", "account_type": "cash", "cash": "1000000.00", "holdings": {"AAA": 1000, "BBB": 2000}}
    return make_settings({"portfolios": [main, hedge]})


# -- the real monitor -------------------------------------------------------------------------------------------


@PATHS
def test_a_priced_book_exports_its_figures_the_stressed_var_complete_and_both_timestamps(
    store: Store, book_settings: Settings, vectorised: bool
) -> None:
    # Arrange
    metrics = MonitorMetrics(wall=Wall(WALL))
    d = desk(store, book_settings, vectorised, metrics)

    # Act
    d.monitor.refresh()
    got = exposition(metrics.registry)

    # Assert: the stored snapshot's figures, the stressed VaR on the limit's basis and its use of the limit
    snap = store.read_snapshot("hedge")
    assert snap is not None and snap["data"]["missing_prices"] == []
    assert snap["equity"] == pytest.approx(TRUE_EQUITY, rel=1e-15)
    stressed = snap["var"]["stressed_limit_var"]
    assert stressed is not None and stressed > 0.0 and snap["var"]["stressed_limit"] == STRESSED_LIMIT
    assert got['riskdesk_portfolio_valuation_complete{portfolio="hedge"}'] == 1.0
    assert got['riskdesk_portfolio_equity{portfolio="hedge"}'] == snap["equity"]
    assert got['riskdesk_portfolio_var{confidence="0.99",portfolio="hedge"}'] == snap["var"]["var99"]
    assert got['riskdesk_portfolio_stressed_var{portfolio="hedge"}'] == stressed
    assert got['riskdesk_portfolio_stressed_var_utilisation_ratio{portfolio="hedge"}'] == pytest.approx(
        stressed / STRESSED_LIMIT, rel=1e-12
    )
    # main sets no stressed limit: the stressed VaR is there, its utilisation has no value
    assert (
        got['riskdesk_portfolio_stressed_var{portfolio="main"}']
        == store.read_snapshot("main")["var"]["stressed_limit_var"]
    )
    assert math.isnan(got['riskdesk_portfolio_stressed_var_utilisation_ratio{portfolio="main"}'])
    # set now, on prices written now (market age 0): both timestamps are the metrics' wall clock
    for pid in ("main", "hedge"):
        assert got[f'riskdesk_portfolio_snapshot_timestamp_seconds{{portfolio="{pid}"}}'] == WALL
        assert got[f'riskdesk_portfolio_market_timestamp_seconds{{portfolio="{pid}"}}'] == WALL


@PATHS
def test_three_days_without_a_price_keep_the_market_timestamp_where_the_prices_were_written(
    store: Store, book_settings: Settings, vectorised: bool
) -> None:
    # Arrange: prices written at NOW + 1 (wall WALL), then a silent feed
    wall = Wall(WALL)
    metrics = MonitorMetrics(wall=wall)
    d = desk(store, book_settings, vectorised, metrics)
    d.set_prices({"CCC": CCC_PRICE, "DDD": DDD_PRICE})
    d.monitor.refresh()
    assert exposition(metrics.registry)['riskdesk_portfolio_market_timestamp_seconds{portfolio="hedge"}'] == WALL

    # Act: three days later (both clocks), the monitor refreshes from the same stored prices
    d.clock[0] += THREE_DAYS
    wall.now += THREE_DAYS
    d.monitor.refresh()
    got = exposition(metrics.registry)

    # Assert: the snapshot is new, its prices are not: time() - market timestamp = three days
    assert store.read_snapshot("hedge")["data"]["market_age_seconds"] == THREE_DAYS
    assert got['riskdesk_portfolio_snapshot_timestamp_seconds{portfolio="hedge"}'] == WALL + THREE_DAYS
    assert got['riskdesk_portfolio_market_timestamp_seconds{portfolio="hedge"}'] == WALL
    assert wall.now - got['riskdesk_portfolio_market_timestamp_seconds{portfolio="hedge"}'] == THREE_DAYS


@PATHS
def test_an_unpriced_short_blanks_equity_var_and_drawdowns_and_reports_the_valuation_incomplete(
    store: Store, book_settings: Settings, vectorised: bool
) -> None:
    # Arrange
    metrics = MonitorMetrics(wall=Wall(WALL))
    d = desk(store, book_settings, vectorised, metrics)
    d.monitor.refresh()

    # Act: the feed loses DDD (the 100,000 short counts 0: the snapshot's equity is the phantom 188,000)
    d.set_prices({"DDD": float("nan"), "CCC": CCC_PRICE})
    d.monitor.refresh()
    got = exposition(metrics.registry)

    # Assert: incomplete, every book figure NaN (the old code exported 188,000 and a VaR without DDD)
    snap = store.read_snapshot("hedge")
    assert snap["data"]["missing_prices"] == ["DDD"] and snap["equity"] == pytest.approx(PHANTOM_EQUITY, rel=1e-15)
    assert snap["var"]["var99"] is not None  # the snapshot still has one: only the export withholds it
    assert got['riskdesk_portfolio_valuation_complete{portfolio="hedge"}'] == 0.0
    for figure in BOOK_FIGURES:
        assert math.isnan(got[figure % "hedge"]), figure
    # the trading state and the timestamps are no valuation: still exported
    assert got['riskdesk_portfolio_trading_state{portfolio="hedge",state="ACTIVE"}'] == 1.0
    assert got['riskdesk_portfolio_snapshot_timestamp_seconds{portfolio="hedge"}'] == WALL
    # the priced portfolio is untouched
    assert got['riskdesk_portfolio_valuation_complete{portfolio="main"}'] == 1.0
    assert got['riskdesk_portfolio_equity{portfolio="main"}'] == store.read_snapshot("main")["equity"]

    # Act: the price returns
    d.set_prices({"DDD": DDD_PRICE})
    d.monitor.refresh()
    got = exposition(metrics.registry)

    # Assert: complete again, the true equity back (nothing sticks)
    assert got['riskdesk_portfolio_valuation_complete{portfolio="hedge"}'] == 1.0
    assert got['riskdesk_portfolio_equity{portfolio="hedge"}'] == pytest.approx(TRUE_EQUITY, rel=1e-15)
    assert (
        got['riskdesk_portfolio_var{confidence="0.99",portfolio="hedge"}']
        == store.read_snapshot("hedge")["var"]["var99"]
    )


# -- boundaries on MonitorMetrics --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "complete"),
    [([], 1.0), (["X"], 0.0), (["X", "Y"], 0.0), (None, 0.0)],
    ids=["none_missing", "one_missing", "two_missing", "not_said"],
)
def test_valuation_complete_only_when_the_snapshot_lists_no_missing_price(missing: Any, complete: float) -> None:
    # Arrange: an empty list is complete; one ticker more is not; a snapshot that does not say is not vouched for
    snap = snapshot("p", data__missing_prices=missing, var__stressed_utilization=0.5)
    metrics = MonitorMetrics(wall=Wall(WALL))

    # Act
    metrics.snapshots({"p": snap})
    got = exposition(metrics.registry)

    # Assert
    assert got['riskdesk_portfolio_valuation_complete{portfolio="p"}'] == complete
    for figure in BOOK_FIGURES:
        assert math.isnan(got[figure % "p"]) is (complete == 0.0), figure
    if complete:
        assert got['riskdesk_portfolio_equity{portfolio="p"}'] == 1_000_000.0
        assert got['riskdesk_portfolio_var{confidence="0.99",portfolio="p"}'] == 7_000.0
        assert got['riskdesk_portfolio_stressed_var{portfolio="p"}'] == 9_900.0
        assert got['riskdesk_portfolio_stressed_var_utilisation_ratio{portfolio="p"}'] == 0.5


@pytest.mark.parametrize(
    ("age", "market_ts"),
    [(0.0, WALL), (THREE_DAYS, WALL - THREE_DAYS), (THREE_DAYS + 1.0, WALL - THREE_DAYS - 1.0),
     (-1.0, math.nan), (None, math.nan), (math.inf, math.nan)],
    ids=["fresh", "three_days", "three_days_and_a_second", "negative", "null", "infinite"],
)  # fmt: skip
def test_the_market_timestamp_is_the_wall_time_less_the_snapshots_market_age(age: Any, market_ts: float) -> None:
    # Arrange
    metrics = MonitorMetrics(wall=Wall(WALL))

    # Act
    metrics.snapshots({"p": snapshot("p", data__market_age_seconds=age)})
    got = exposition(metrics.registry)

    # Assert: a figure of unknown age has no market timestamp (NaN), never "now"
    assert got['riskdesk_portfolio_snapshot_timestamp_seconds{portfolio="p"}'] == WALL
    value = got['riskdesk_portfolio_market_timestamp_seconds{portfolio="p"}']
    assert value == market_ts or (math.isnan(market_ts) and math.isnan(value))


def test_a_portfolio_whose_snapshot_fails_keeps_its_gauges_and_its_timestamp_ages(
    store: Store, book_settings: Settings
) -> None:
    # Arrange: both books snapshotted at WALL (the per-portfolio path refuses a corrupt peaks hash)
    wall = Wall(WALL)
    metrics = MonitorMetrics(wall=wall)
    d = desk(store, book_settings, False, metrics)
    d.monitor.refresh()

    # Act: hedge's peaks are corrupt (its snapshot fails), a minute later
    store.client.hset(PortfolioKeys("hedge").peaks, "max_peak", "not-a-number")
    d.clock[0] += 60.0
    wall.now += 60.0
    d.monitor.refresh()
    got = exposition(metrics.registry)

    # Assert: main is new; hedge keeps its last gauges, so time() - its snapshot timestamp grows and alerts
    assert got['riskdesk_portfolio_snapshot_timestamp_seconds{portfolio="main"}'] == WALL + 60.0
    assert got['riskdesk_portfolio_snapshot_timestamp_seconds{portfolio="hedge"}'] == WALL
    assert got['riskdesk_portfolio_valuation_complete{portfolio="hedge"}'] == 1.0


def test_only_a_portfolio_that_left_the_round_is_forgotten_a_failed_one_keeps_its_last_gauges() -> None:
    # Arrange
    wall = Wall(WALL)
    metrics = MonitorMetrics(wall=wall)
    metrics.snapshots({"a": snapshot("a"), "b": snapshot("b"), "c": snapshot("c")})
    wall.now += 60.0

    # Act: a round for a and b in which only b has a snapshot (a failed); c left the round
    metrics.snapshots({"b": snapshot("b")}, present=["a", "b"])

    # Assert
    got = exposition(metrics.registry)
    assert got['riskdesk_portfolio_snapshot_timestamp_seconds{portfolio="a"}'] == WALL  # ages from here
    assert got['riskdesk_portfolio_snapshot_timestamp_seconds{portfolio="b"}'] == WALL + 60.0
    assert not any('portfolio="c"' in key for key in got)
    # the next round without ``present`` (no round to judge by) forgets a as before
    metrics.snapshots({"b": snapshot("b")})
    assert not any('portfolio="a"' in key for key in exposition(metrics.registry))


def test_a_portfolio_gone_from_a_round_leaves_the_new_gauges_too() -> None:
    # Arrange
    metrics = MonitorMetrics(wall=Wall(WALL))
    metrics.snapshots({"a": snapshot("a"), "b": snapshot("b")})

    # Act
    metrics.snapshots({"b": snapshot("b")})

    # Assert: no sample of any metric is labelled a; b has all of its 15
    text = generate_latest(metrics.registry).decode()
    assert 'portfolio="a"' not in text
    assert (
        sum(1 for key in exposition(metrics.registry) if 'portfolio="b"' in key)
        == 2 + 1 + 3 + 1 + len(TradingState) + 5
    )


def test_the_help_texts_say_which_gauges_go_nan_and_the_text_parses() -> None:
    # Arrange
    metrics = MonitorMetrics(wall=Wall(WALL))
    metrics.snapshots({"p": snapshot("p")})

    # Act
    texts = helps(metrics.registry)
    families = {f.name for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}

    # Assert
    for name in ("riskdesk_portfolio_var", "riskdesk_portfolio_var_utilisation_ratio", "riskdesk_portfolio_equity",
                 "riskdesk_portfolio_stressed_var", "riskdesk_portfolio_drawdown_ratio"):  # fmt: skip
        assert "NaN while the valuation is incomplete" in texts[name], name
    assert "stressed_var_limit" in texts["riskdesk_portfolio_stressed_var"]
    assert "time() - this" in texts["riskdesk_portfolio_market_timestamp_seconds"]
    assert {
        "riskdesk_portfolio_valuation_complete", "riskdesk_portfolio_snapshot_timestamp_seconds",
        "riskdesk_portfolio_market_timestamp_seconds", "riskdesk_portfolio_stressed_var",
        "riskdesk_portfolio_stressed_var_utilisation_ratio",
    } <= families  # fmt: skip


# -- a real Prometheus computes the age ---------------------------------------------------------------------------


def test_prometheus_reads_a_three_day_old_market_and_an_incomplete_valuation(tmp_path: Path) -> None:
    # Arrange: the real wall clock; p1 priced three days ago, p2 missing a price
    metrics = MonitorMetrics()
    metrics.snapshots({
        "p1": snapshot("p1", data__market_age_seconds=THREE_DAYS),
        "p2": snapshot("p2", data__missing_prices=["SHORTED"]),
    })  # fmt: skip
    port = free_port()
    endpoint = serve(metrics.registry, "127.0.0.1", port, "test")
    assert endpoint is not None
    try:
        with prometheus(tmp_path, [f"127.0.0.1:{port}"]) as url:
            # Act
            age = wait_until(
                lambda: promql(url, "time() - riskdesk_portfolio_market_timestamp_seconds"), 30.0, "a scrape"
            )
            incomplete = promql(url, "riskdesk_portfolio_valuation_complete == 0")
    finally:
        endpoint.close()

    # Assert: three days plus the seconds since the gauge was set (a scrape and a query: well under a minute)
    ages = {r["metric"]["portfolio"]: float(r["value"][1]) for r in age}
    assert THREE_DAYS <= ages["p1"] < THREE_DAYS + 60.0
    assert 0.0 <= ages["p2"] < 60.0
    assert [r["metric"]["portfolio"] for r in incomplete] == ["p2"]


# -- the notifier ---------------------------------------------------------------------------------------------


def test_emails_held_while_smtp_is_down_are_counted_at_each_flush(
    store: Store,
    make_settings: Any,
    blackhole: int,  # noqa: F811 (the fixture)
) -> None:
    # Arrange: four CRITICAL e-mails, SMTP a black hole
    pids = ["p00", "p01", "p02", "p03"]
    notifier, _, _ = storm_on_dead_smtp(store, make_settings, blackhole, ["email"], pids)
    held = 'riskdesk_notifications_total{channel="email",status="held"}'
    assert exposition(notifier.metrics.registry)[held] == 0.0  # there from the start: increase() sees the first

    # Act: the first e-mail pays the timeouts, the three after it are held
    notifier.flush(T0, pids)
    first = exposition(notifier.metrics.registry)
    pending_first = sum(notifier.pending_count(pid) for pid in pids)
    notifier.flush(T0 + 1, pids)  # still down: the next one is tried (the first waits for its retry), two held again
    second = exposition(notifier.metrics.registry)
    pending_second = sum(notifier.pending_count(pid) for pid in pids)

    # Assert: held = the e-mails left queued by each flush (3, then 2 more), failures counted apart; the failed
    # ones stay queued too (tried again later: notifications/retry.py)
    assert (pending_first, pending_second) == (4, 4)
    assert first[held] == 3.0 and second[held] == 3.0 + 2.0
    assert first['riskdesk_notifications_total{channel="email",status="failed"}'] == 1.0
    assert second['riskdesk_notifications_total{channel="email",status="failed"}'] == 2.0


def test_the_delivery_counters_help_lists_every_status_the_notifier_uses() -> None:
    # Arrange: every status literal the notifier counts or records (notifications/*.py)
    source = "\n".join(p.read_text() for p in (ROOT / "notifications").glob("*.py"))
    used = set(re.findall(r'metrics\.sent\([^,]+, "([a-z_]+)"', source)) | set(
        re.findall(r'SendResult\(\s*"([a-z_]+)"', source)
    )

    # Act
    text = helps(NotificationMetrics().registry)["riskdesk_notifications_total"]

    # Assert
    assert used >= {"skipped", "cancelled", "rate_limited", "held", "failed", "delivered"}
    assert used <= set(NOTIFICATION_STATUSES)
    listed = re.search(r"\(([a-z_, ]+);", text)
    assert listed is not None and set(listed.group(1).split(", ")) == set(NOTIFICATION_STATUSES)
