"""Prometheus metrics of the Riskdesk processes: every definition in one place, one registry per process.

Each daemon builds its own metrics object on a fresh :class:`prometheus_client.CollectorRegistry` (never the
library's global one, so tests and two daemons in one process do not share counters) and serves it with
:func:`serve` on ``[metrics]``'s address and its own port (``0``: not served; the objects still count, which
the tests read with :meth:`CollectorRegistry.get_sample_value`)::

    process (port setting)               metrics
    python -m engine.stream              StreamMetrics: bars written / rejected, prices rejected by reason,
      (metrics.stream_port)              bar duration, market version, Redis errors
    python -m logic.monitor              MonitorMetrics: ticks processed / coalesced, snapshot duration,
      (metrics.monitor_port)             portfolios monitored, per-portfolio VaR 95/99, VaR utilisation,
                                         stressed VaR and its utilisation (the limit's basis), drawdowns,
                                         equity, trading state, valuation complete, snapshot and market
                                         timestamps, alerts by severity and status, Redis errors;
                                         GateMetrics of the automated actions' risk managers
    python -m notifications              NotificationMetrics: notifications by channel and status (held:
      (metrics.notifications_port)       e-mails kept queued while e-mail is down)
    python -m logic.backtest_runner      BacktestMetrics: bars fed / lost / refused, conflicts, bar duration,
      (metrics.backtest_port)            market version of the last bar fed, Redis errors
    the dashboard (Streamlit)            GateMetrics can be given to its RiskManagers, but the dashboard
                                         serves no /metrics (no port of its own): its executions are in the
                                         trade log instead

Label cardinality is bounded: ``portfolio`` takes only the ids of portfolios the monitor snapshots, at most
``metrics.max_portfolios`` of them (sorted by id; the rest are counted in
``riskdesk_portfolios_unlabelled``); ``reason`` (prices) is one of :data:`PRICE_REJECT_REASONS`; ``reason``
(decisions) a :class:`~engine.records.ReasonCode` or ``none``; ``status``, ``severity``, ``state`` and
``channel`` come from the StrEnums of :mod:`engine.records`. A portfolio that leaves the store leaves the
gauges at the next snapshot.

Freshness and completeness: a gauge holds the last value set, whatever its age, so every portfolio also has
``riskdesk_portfolio_snapshot_timestamp_seconds`` (wall-clock Unix time its gauges were last set) and
``riskdesk_portfolio_market_timestamp_seconds`` (that time less the snapshot's ``data.market_age_seconds``: when
the prices behind the figures were written, on the same wall clock in a replay too); ``time() - x`` is their age
now, and it grows while the feed is silent or the monitor stalls. While a valuation is incomplete (a held ticker
without a usable price, ``data.missing_prices``) ``riskdesk_portfolio_valuation_complete`` is 0 and every figure
valued on the book (equity, VaR, stressed VaR, their utilisations, drawdowns) is NaN: the snapshot counts the
unpriced position at 0, so those figures would be a phantom equity and an understated VaR. Alert on
``valuation_complete == 0`` and on the timestamps, not on a missing value.

Counters are per process: they start at 0 when the daemon starts (a restart resets them, two monitors count
separately); ``rate()`` / ``increase()`` handle the reset, so query them through those and ``sum`` across
processes, never read a raw ``_total`` as a lifetime figure.

Names follow the Prometheus conventions: a ``riskdesk_`` prefix, ``_total`` on counters (the client adds
it), ``_seconds`` on durations, ``_ratio`` on fractions; money in the book's currency unit (dollars).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from engine.records import AlertStatus, DecisionStatus, Severity, TradingState

log = logging.getLogger("riskdesk.metrics")

BAR_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
"""Bar write durations: the target is 5 ms at N = 500 (issue 16), so the buckets are dense around it."""
SNAPSHOT_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""One tick's snapshots of every portfolio (read + compute + write)."""
DECISION_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
"""One pre-trade decision (read the trade view + every check)."""

PRICE_REJECT_REASONS: Mapping[str, str] = {
    "unknown ticker": "unknown_ticker",
    "not a number": "not_a_number",
    "not a finite price": "not_finite",
    "not a positive price": "not_positive",
    "above the largest plausible price": "implausible",
    "jump of": "jump",
}
"""Words of a rejection's text (engine/stream.py, engine/price_filter.py) -> the ``reason`` label; any other
text is ``other``."""

DRAWDOWN_WINDOWS = ("daily", "weekly", "max")
VAR_CONFIDENCES = {"0.95": "var95", "0.99": "var99"}
"""``confidence`` label -> the snapshot's ``var`` field."""


def price_reject_reason(text: str) -> str:
    """The bounded ``reason`` label of one rejected price's text (``"AAA='x': not a number"``)."""
    why = text.rpartition(": ")[2]
    for words, label in PRICE_REJECT_REASONS.items():
        if why.startswith(words):
            return label
    return "other"


class StreamMetrics:
    """What the stream daemon counts (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.bars_written = Counter("riskdesk_stream_bars_written", "Bars written as a market version", registry=r)
        self.bars_rejected = Counter(
            "riskdesk_stream_bars_rejected", "Bars with no valid price (nothing written)", registry=r
        )
        self.prices_rejected = Counter(
            "riskdesk_stream_prices_rejected", "Single prices refused, by reason", ["reason"], registry=r
        )
        for label in (*PRICE_REJECT_REASONS.values(), "other"):
            self.prices_rejected.labels(label)  # every reason shown from the start, at 0
        self.bar_duration = Histogram(
            "riskdesk_stream_bar_duration_seconds",
            "Validation + EWMA update + atomic write of one bar (waits for Redis excluded)",
            buckets=BAR_SECONDS_BUCKETS,
            registry=r,
        )
        self.market_version = Gauge("riskdesk_market_version", "Market version last written", registry=r)
        self.redis_errors = Counter("riskdesk_redis_errors", "Failed Redis operations", ["component"], registry=r)
        self.redis_errors.labels("stream")

    def bar_written(self, version: int, seconds: float, rejected: Iterable[str] = ()) -> None:
        self.bars_written.inc()
        self.market_version.set(version)
        self.bar_duration.observe(seconds)
        self.count_rejected(rejected)

    def bar_rejected(self, rejected: Iterable[str]) -> None:
        self.bars_rejected.inc()
        self.count_rejected(rejected)

    def count_rejected(self, rejected: Iterable[str]) -> None:
        for text in rejected:
            self.prices_rejected.labels(price_reject_reason(text)).inc()


class GateMetrics:
    """Pre-trade decisions of the RiskManagers of one process, by status and reason code, and their latency."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.decisions = Counter(
            "riskdesk_pretrade_decisions",
            "Pre-trade decisions by status and reason code (one count per reason of a refusal; none: approved)",
            ["status", "reason"],
            registry=self.registry,
        )
        self.decision_duration = Histogram(
            "riskdesk_pretrade_decision_duration_seconds",
            "Time to one pre-trade decision",
            buckets=DECISION_SECONDS_BUCKETS,
            registry=self.registry,
        )

    def decided(self, status: str, reasons: Iterable[str], seconds: float) -> None:
        codes = list(dict.fromkeys(str(r) for r in reasons)) or ["none"]
        for code in codes:
            self.decisions.labels(str(status), code).inc()
        self.decision_duration.observe(seconds)


NOTIFICATION_STATUSES = ("delivered", "failed", "skipped", "rate_limited", "cancelled", "held")
"""Every ``status`` of ``riskdesk_notifications_total``: a delivery record's status (notifications/channels.py),
``rate_limited`` (held back by a recipient's rate limit), ``cancelled`` (its alert acknowledged or resolved before it
went out) and ``held`` (an e-mail kept queued for the next flush while e-mail is down; counted at each flush it
waits through, so a dead SMTP server shows as a steady rate of ``held``)."""


class NotificationMetrics:
    """Messages the delivery daemon sent, failed, skipped, held back or cancelled, by channel."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.notifications = Counter(
            "riskdesk_notifications",
            f"Notification messages by channel and status ({', '.join(NOTIFICATION_STATUSES)}; held: e-mails kept "
            "queued for the next flush while e-mail is down, counted at each flush)",
            ["channel", "status"],
            registry=self.registry,
        )
        self.notifications.labels("email", "held")  # at 0 from the start: increase() sees the first hold
        self.redis_errors = Counter(
            "riskdesk_redis_errors", "Failed Redis operations", ["component"], registry=self.registry
        )

    def sent(self, channel: str, status: str, count: int = 1) -> None:
        self.notifications.labels(str(channel), str(status)).inc(count)


class BacktestMetrics:
    """What the backtest runner counts (logic/backtest_runner.py)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.bars_fed = Counter("riskdesk_backtest_bars_fed", "Bars fed to the backtests and acknowledged", registry=r)
        self.bars_lost = Counter(
            "riskdesk_backtest_bars_lost", "Bars gone from the stream (trimmed) or unreadable before fed", registry=r
        )
        self.bar_errors = Counter(
            "riskdesk_backtest_bar_errors", "Bars no backtest could take (acknowledged, reported)", registry=r
        )
        self.conflicts = Counter(
            "riskdesk_backtest_conflicts", "Bars redone after another writer changed a backtest", registry=r
        )
        self.bar_duration = Histogram(
            "riskdesk_backtest_bar_duration_seconds",
            "One bar fed to every portfolio's backtest (read + feed + write)",
            buckets=SNAPSHOT_SECONDS_BUCKETS,
            registry=r,
        )
        self.market_version = Gauge("riskdesk_backtest_market_version", "Market version of the last bar fed",
                                    registry=r)  # fmt: skip
        self.redis_errors = Counter("riskdesk_redis_errors", "Failed Redis operations", ["component"], registry=r)
        self.redis_errors.labels("backtest")


class MonitorMetrics:
    """What the monitor counts, and the latest risk figures of every monitored portfolio."""

    def __init__(
        self, registry: CollectorRegistry | None = None, max_portfolios: int = 50, wall: Callable[[], float] = time.time
    ) -> None:
        if max_portfolios < 1:
            raise ValueError("max_portfolios must be >= 1")
        self.registry = registry if registry is not None else CollectorRegistry()
        self.max_portfolios = max_portfolios
        self.wall = wall
        """The wall clock of the timestamp gauges (Prometheus' ``time()`` is wall time, even in a replay)."""
        r = self.registry
        self.ticks_processed = Counter(
            "riskdesk_monitor_ticks_processed", "Tick events snapshotted (every portfolio each)", registry=r
        )
        self.ticks_coalesced = Counter(
            "riskdesk_monitor_ticks_coalesced",
            "Tick events acknowledged without their own snapshot because a newer one in the same read covered them",
            registry=r,
        )
        self.snapshot_duration = Histogram(
            "riskdesk_monitor_snapshot_duration_seconds",
            "Read + compute + write of one tick's snapshots, all portfolios (alerts excluded)",
            buckets=SNAPSHOT_SECONDS_BUCKETS,
            registry=r,
        )
        self.portfolios = Gauge("riskdesk_portfolios_monitored", "Portfolios in the last snapshot round", registry=r)
        self.unlabelled = Gauge(
            "riskdesk_portfolios_unlabelled", "Portfolios beyond metrics.max_portfolios (no gauges)", registry=r
        )
        self.var = Gauge(
            "riskdesk_portfolio_var", "One-day VaR by confidence (dollars; NaN while the valuation is incomplete)",
            ["portfolio", "confidence"], registry=r,
        )  # fmt: skip
        self.utilisation = Gauge(
            "riskdesk_portfolio_var_utilisation_ratio",
            "VaR at the limit's confidence and horizon / the VaR limit (NaN while the valuation is incomplete)",
            ["portfolio"], registry=r,
        )  # fmt: skip
        self.stressed_var = Gauge(
            "riskdesk_portfolio_stressed_var",
            "Stressed VaR at the VaR limit's confidence and horizon, the figure the gate holds against "
            "stressed_var_limit (dollars; NaN while the valuation is incomplete)",
            ["portfolio"], registry=r,
        )  # fmt: skip
        self.stressed_utilisation = Gauge(
            "riskdesk_portfolio_stressed_var_utilisation_ratio",
            "Stressed VaR at the limit's basis / stressed_var_limit (NaN without that limit or while the valuation "
            "is incomplete)",
            ["portfolio"], registry=r,
        )  # fmt: skip
        self.drawdown = Gauge(
            "riskdesk_portfolio_drawdown_ratio",
            "Drawdown (a fraction <= 0) by window (NaN while the valuation is incomplete)",
            ["portfolio", "window"], registry=r,
        )  # fmt: skip
        self.equity = Gauge(
            "riskdesk_portfolio_equity", "Equity (dollars; NaN while the valuation is incomplete)", ["portfolio"],
            registry=r,
        )  # fmt: skip
        self.complete = Gauge(
            "riskdesk_portfolio_valuation_complete",
            "1 when every held ticker had a usable price, 0 when one did not (data.missing_prices): the equity, "
            "VaR and drawdown gauges are then NaN, as the snapshot counts the unpriced position at 0",
            ["portfolio"], registry=r,
        )  # fmt: skip
        self.snapshot_ts = Gauge(
            "riskdesk_portfolio_snapshot_timestamp_seconds",
            "Unix time (wall clock) the portfolio's gauges were last set from a snapshot; time() - this: their age",
            ["portfolio"], registry=r,
        )  # fmt: skip
        self.market_ts = Gauge(
            "riskdesk_portfolio_market_timestamp_seconds",
            "Unix time (wall clock) of the prices behind the portfolio's figures: the last snapshot's time less "
            "its data.market_age_seconds; time() - this: the figures' market-data age now",
            ["portfolio"], registry=r,
        )  # fmt: skip
        self.trading_state = Gauge(
            "riskdesk_portfolio_trading_state", "1 for the portfolio's trading state, 0 for the others",
            ["portfolio", "state"], registry=r,
        )  # fmt: skip
        self.redis_errors = Counter("riskdesk_redis_errors", "Failed Redis operations", ["component"], registry=r)
        self.redis_errors.labels("monitor")
        self.gate = GateMetrics(r)
        """The automated actions' risk managers count their decisions here."""
        self._labelled: set[str] = set()
        self._children: dict[str, list[list[Any]]] = {}
        self._lock = threading.Lock()

    def ticks(self, processed: int = 1, seconds: float | None = None) -> None:
        self.ticks_processed.inc(processed)
        if seconds is not None:
            self.snapshot_duration.observe(seconds)

    def snapshots(
        self,
        snapshots: Mapping[str, Mapping[str, Any]],
        portfolio_count: int | None = None,
        present: Iterable[str] | None = None,
    ) -> None:
        """Set the per-portfolio gauges from one round's snapshots (the first ``max_portfolios`` ids).

        ``present``: the portfolios the round was for (the monitor's, whether or not their snapshot succeeded).
        A labelled portfolio among them without a snapshot this round (its snapshot failed: corrupt state) keeps
        its last gauges, so its ``snapshot_timestamp_seconds`` ages and ``time() - x`` alerts on it; only one that
        left the round entirely is forgotten. Without ``present``, every portfolio without a snapshot is."""
        ids = sorted(snapshots)
        kept = ids[: self.max_portfolios]
        total = len(ids) if portfolio_count is None else portfolio_count
        with self._lock:
            now = self.wall()
            self.portfolios.set(total)
            self.unlabelled.set(max(0, total - len(kept)))
            stuck = self._labelled & set(present) - set(kept) if present is not None else set()
            for pid in self._labelled - set(kept) - stuck:
                self._forget(pid)
            self._labelled = set(kept) | stuck
            for pid in kept:
                self._set_portfolio(pid, snapshots[pid], now)

    def _set_portfolio(self, pid: str, snap: Mapping[str, Any], now: float) -> None:
        """One portfolio's gauges. An incomplete valuation (or a snapshot that does not say it is complete) sets
        every figure valued on the book to NaN: its equity counts an unpriced position at 0."""
        (
            var_children, (utilisation,), drawdown_children, (equity,), state_children, (stressed,),
            (stressed_utilisation,), (complete,), (snapshot_ts,), (market_ts,),
        ) = self._children_of(pid)  # fmt: skip
        data = snap.get("data") or {}
        missing = data.get("missing_prices")
        whole = isinstance(missing, list | tuple) and not missing
        complete.set(1.0 if whole else 0.0)
        var = snap.get("var") or {}
        drawdown = snap.get("drawdown") or {}
        figures = [
            *((child, var.get(key)) for child, key in zip(var_children, VAR_CONFIDENCES.values(), strict=True)),
            (utilisation, var.get("utilization")), (stressed, var.get("stressed_limit_var")),
            (stressed_utilisation, var.get("stressed_utilization")), (equity, snap.get("equity")),
            *((child, drawdown.get(window)) for child, window in zip(drawdown_children, DRAWDOWN_WINDOWS, strict=True)),
        ]  # fmt: skip
        for child, value in figures:
            _set(child, value if whole else None)
        state = snap.get("trading_state")
        for child, s in zip(state_children, TradingState, strict=True):
            child.set(1.0 if state == s else 0.0)
        snapshot_ts.set(now)
        age = _number(data.get("market_age_seconds"))
        market_ts.set(now - age if age is not None and 0.0 <= age < math.inf else math.nan)

    def _label_sets(self, pid: str) -> list[list[tuple[Any, tuple[str, ...]]]]:
        """A portfolio's gauges and their label values, grouped: VaR by confidence, utilisation, drawdown by
        window, equity, trading state by state, stressed VaR, its utilisation, valuation complete, snapshot and
        market timestamps."""
        return [
            [(self.var, (pid, c)) for c in VAR_CONFIDENCES], [(self.utilisation, (pid,))],
            [(self.drawdown, (pid, w)) for w in DRAWDOWN_WINDOWS], [(self.equity, (pid,))],
            [(self.trading_state, (pid, s.value)) for s in TradingState],
            [(self.stressed_var, (pid,))], [(self.stressed_utilisation, (pid,))], [(self.complete, (pid,))],
            [(self.snapshot_ts, (pid,))], [(self.market_ts, (pid,))],
        ]  # fmt: skip

    def _children_of(self, pid: str) -> list[list[Any]]:
        """A portfolio's labelled gauges (grouped as :meth:`_label_sets`), looked up once while it stays labelled
        (``labels()`` validates and locks on every call: 15 calls per portfolio per tick)."""
        children = self._children.get(pid)
        if children is None:
            children = self._children[pid] = [
                [gauge.labels(*labels) for gauge, labels in group] for group in self._label_sets(pid)
            ]
        return children

    def _forget(self, pid: str) -> None:
        self._children.pop(pid, None)
        for group in self._label_sets(pid):
            for gauge, labels in group:
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass

    def watch_alerts(self, source: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        """Serve ``riskdesk_alerts``, counted from ``source()`` (the stored alert records) at each scrape."""
        self.registry.register(AlertCollector(source, self.redis_errors.labels("monitor")))


class AlertCollector:
    """``riskdesk_alerts{severity, status}``: active alerts counted at scrape time from the store (the alert
    engine's records, whichever monitor wrote them). A failed read yields no sample and counts a Redis error."""

    NAME = "riskdesk_alerts"
    HELP = "Active alerts of the monitored portfolios by severity and status (RESOLVED ones are gone)"

    def __init__(self, source: Callable[[], Iterable[Mapping[str, Any]]], errors: Any) -> None:
        self.source = source
        self.errors = errors

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=["severity", "status"])]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["severity", "status"])
        try:
            counts = alert_counts(self.source())
        except Exception as exc:  # noqa: BLE001 - a scrape must answer; the error is counted and logged
            self.errors.inc()
            log.debug("alert counts not read: %s", exc)
        else:
            for (severity, status), n in counts.items():
                family.add_metric([severity, status], n)
        yield family


def alert_counts(alerts: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], int]:
    """(severity, status) -> number of the records that are not RESOLVED, every pair present."""
    counts = {(s.value, st.value): 0 for s in Severity for st in AlertStatus if st != AlertStatus.RESOLVED}
    for alert in alerts:
        key = (str(alert.get("severity")), str(alert.get("status")))
        if key in counts:
            counts[key] += 1
    return counts


def _number(value: Any) -> float | None:
    """A number as a float; None for null, a bool or text."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _set(gauge: Any, value: Any) -> None:
    """A missing (null) figure is NaN: Prometheus shows no value rather than a made-up 0."""
    number = _number(value)
    gauge.set(math.nan if number is None else number)


@dataclass(frozen=True)
class Endpoint:
    """A served ``/metrics``: where it listens, and how to stop it."""

    address: str
    port: int
    server: Any = None
    thread: Any = None

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def serve(registry: CollectorRegistry, address: str, port: int, component: str) -> Endpoint | None:
    """Serve ``registry`` at ``http://address:port/metrics`` on a daemon thread; None for port 0.

    A port already taken (a second monitor on the same host) is logged and the process runs on without an
    endpoint: metrics never stop the risk monitoring.
    """
    if port == 0:
        return None
    try:
        server, thread = start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        log.warning("%s: cannot serve /metrics on %s:%d (%s); running without it", component, address, port, exc)
        return None
    endpoint = Endpoint(address, port, server, thread)
    log.info("%s: metrics at %s", component, endpoint.url)
    return endpoint


def decision_parts(decision: Any) -> tuple[str, list[str]]:
    """(status, reason codes) of a :class:`~engine.records.Decision`, or of the decision an
    :class:`~engine.records.ExecutionResult` carries (a duplicate's stored one is counted again: it was asked)."""
    decision = getattr(decision, "decision", decision)
    status = getattr(decision, "status", DecisionStatus.REJECTED)
    reasons = [str(getattr(r, "code", r)) for r in getattr(decision, "reasons", ()) or ()]
    return str(status), reasons
