"""View models of the dashboard: what each Streamlit page shows, as plain values and DataFrames.

The pages in ``dashboard/`` lay these out and nothing more: no key names, no risk math, no limit checks live
there. Everything a page needs is read here through the store, :class:`~logic.risk_manager.RiskManager`, the
monitor's snapshots and the alerts module, and computations the other modules do not offer (traffic lights,
the VaR backtest, the risk surface) are in :mod:`logic.analytics`, which calls :mod:`engine.math_logic`.

Every function takes a :class:`Desk` (the Redis client, the settings and a clock) and raises the typed
errors of :mod:`engine.errors` or ``redis.RedisError``; :func:`problem_from_exception` turns any of them into
the plain sentence and fix a page shows instead of a traceback.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import redis

from engine.errors import (
    ConfigError,
    CorruptDataError,
    RiskdeskError,
    SchemaMismatchError,
    StoreEmptyError,
    StoreUnavailableError,
)
from engine.redis_server import connect
from engine.settings import Settings, load_settings
from engine.store import SCHEMA_VERSION, PortfolioKeys, Store, encode_json
from engine.store import TRADING_STATES as TRADING_STATE_NAMES
from logic.valuation import value_portfolio

Clock = Callable[[], float]

DAEMONS: tuple[tuple[str, str], ...] = (
    ("stream", "python -m engine.stream"),
    ("monitor", "python -m logic.monitor"),
)
"""The daemons whose heartbeats the dashboard watches, with the command that starts each."""

REDIS_TIMEOUT_SECONDS = 2.0
"""Socket timeout of the dashboard's Redis client: a page says "unreachable" instead of hanging."""


# -- the dashboard's handle on the system --------------------------------------------------------------------


class Desk:
    """The Redis client, the settings and the clock the dashboard reads with, plus per-portfolio services.

    One Desk is shared by every browser session of a dashboard process (the Redis client is a thread-safe
    connection pool); the services it hands out are created once per portfolio and reused.
    """

    def __init__(self, client: redis.Redis, settings: Settings, clock: Clock | None = None) -> None:
        self.client = client
        self.settings = settings
        self.clock: Clock = clock or time.time
        self.store = Store(client)
        self._services: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Desk:
        """Settings from ``RISKDESK_CONFIG`` (or ``riskdesk.toml``) with ``REDIS_URL`` and ``RISKDESK__*``
        overrides, and a client on that Redis. The one place the dashboard reads its environment."""
        settings = load_settings(env=env)
        return cls(connect(settings, timeout=REDIS_TIMEOUT_SECONDS), settings)

    def close(self) -> None:
        self.client.close()

    def _service(self, kind: str, portfolio_id: str, factory: Callable[[], Any]) -> Any:
        key = (kind, portfolio_id)
        with self._lock:
            service = self._services.get(key)
            if service is None:
                service = factory()
                self._services[key] = service
            return service

    def alert_engine(self) -> Any:
        """The :class:`~logic.alerts.AlertEngine` the dashboard acknowledges, resolves and edits rules with.

        It never sends anything itself: notifications go to the outbox the monitor's engine flushes.
        """
        from logic.alerts import build_alert_engine

        return self._service(
            "alert_engine", "*", lambda: build_alert_engine(self.store, self.settings, self.clock)
        )

    def risk_manager(self, portfolio_id: str) -> Any:
        """The portfolio's :class:`~logic.risk_manager.RiskManager` (created on first use)."""
        from logic.risk_manager import RiskManager

        return self._service(
            "risk_manager",
            portfolio_id,
            lambda: RiskManager(
                self.client, portfolio_id=portfolio_id, settings=self.settings, clock=self.clock
            ),
        )


# -- problems a page shows instead of a traceback ------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """Why a page cannot show its data, in words, with what to do about it."""

    code: str
    title: str
    detail: str
    fix: str


def problem_from_exception(exc: BaseException) -> Problem:
    """Map an error to the message a page shows (the traceback goes to the log, never to the page)."""
    if isinstance(exc, StoreUnavailableError) or isinstance(
        exc, redis.ConnectionError | redis.TimeoutError | ConnectionError | TimeoutError
    ):
        detail = _detail(exc).removeprefix("Redis is unreachable: ")
        return Problem(
            StoreUnavailableError.code,
            "Redis is unreachable",
            f"The dashboard cannot reach the Riskdesk store: {_short(detail)}",
            StoreUnavailableError.fix,
        )
    if isinstance(exc, StoreEmptyError):
        return Problem(
            exc.code, "The store is empty", f"The Riskdesk store has no data yet ({_detail(exc)}).", exc.fix
        )
    if isinstance(exc, SchemaMismatchError):
        return Problem(exc.code, "The store has another layout", _detail(exc), exc.fix)
    if isinstance(exc, CorruptDataError):
        return Problem(exc.code, "A stored value does not decode", _detail(exc), exc.fix)
    if isinstance(exc, ConfigError):
        return Problem(exc.code, "The settings are invalid", _detail(exc), exc.fix)
    if isinstance(exc, RiskdeskError):
        return Problem(exc.code, "Riskdesk refused the request", _detail(exc), exc.fix or "see the message")
    if isinstance(exc, redis.RedisError):
        return Problem(
            "STORE_ERROR",
            "Redis returned an error",
            _short(exc),
            "check the Redis server log and `make status`",
        )
    return Problem(
        "UNEXPECTED",
        "This view failed",
        f"{type(exc).__name__}: {_short(exc)}",
        "reload the page; if it persists, see the dashboard log (var/log/dashboard.log)",
    )


def _detail(exc: BaseException) -> str:
    return str(getattr(exc, "detail", None) or exc)


def _short(exc: BaseException | str, limit: int = 300) -> str:
    text = exc if isinstance(exc, str) else (str(exc) or type(exc).__name__)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- health: is there anything to show, and is it fresh ------------------------------------------------------


@dataclass(frozen=True)
class DaemonStatus:
    name: str
    state: str
    """``running``, ``stale`` (heartbeat older than the threshold) or ``missing`` (never seen)."""
    age_seconds: float | None
    fields: Mapping[str, str]
    command: str

    @property
    def fix(self) -> str:
        if self.state == "running":
            return ""
        verb = "has not written a heartbeat" if self.state == "missing" else "stopped writing heartbeats"
        return f"the {self.name} daemon {verb}: start it with `make run` (or `{self.command}`)"


@dataclass(frozen=True)
class Health:
    problem: Problem | None
    """Set when nothing can be shown: Redis unreachable, store empty or of another layout."""
    daemons: tuple[DaemonStatus, ...] = ()
    stale_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def warnings(self) -> list[str]:
        """One sentence per stale or missing daemon (the page still shows what the store holds)."""
        return [
            f"{d.name.capitalize()} daemon {'not running' if d.state == 'missing' else 'stale'}"
            + (f" (last heartbeat {d.age_seconds:.0f} s ago)" if d.age_seconds is not None else "")
            + f" — fix: {d.fix.split(': ', 1)[1]}"
            for d in self.daemons
            if d.state != "running"
        ]


def check_health(desk: Desk) -> Health:
    """Can the store be read, and are the daemons alive? Never raises."""
    try:
        desk.store.ping()
        desk.store.require_schema()
        if desk.store.read_market_version() is None:
            raise StoreEmptyError("no market snapshot in the store")
        daemons = daemon_statuses(desk)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a message
        return Health(problem=problem_from_exception(exc))
    return Health(problem=None, daemons=tuple(daemons), stale_seconds=_stale_after(desk.settings))


def _stale_after(settings: Settings) -> float:
    """A heartbeat older than this is stale: the monitor's stale-snapshot threshold, or 5 bars if longer."""
    return max(settings.monitor.stale_snapshot_seconds, 5 * settings.model.bar_interval_seconds)


def daemon_statuses(desk: Desk) -> list[DaemonStatus]:
    now = desk.clock()
    limit = _stale_after(desk.settings)
    out = []
    for name, command in DAEMONS:
        beat = desk.store.read_heartbeat(name)
        if beat is None:
            out.append(DaemonStatus(name, "missing", None, {}, command))
            continue
        age = _age(now, beat.get("ts"))
        state = "running" if age is not None and age <= limit else "stale"
        out.append(DaemonStatus(name, state, age, dict(beat), command))
    return out


def _age(now: float, ts: str | float | None) -> float | None:
    try:
        value = float(ts)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return max(0.0, now - value) if math.isfinite(value) else None


def portfolio_ids(desk: Desk) -> list[str]:
    """Portfolios in the store (configured ones first when the store is empty or unreachable)."""
    try:
        ids = desk.store.portfolio_ids()
    except Exception:  # noqa: BLE001 - the selector still shows the configured portfolios
        ids = []
    configured = list(desk.settings.portfolio_ids)
    return [p for p in configured if p in ids or not ids] + [p for p in ids if p not in configured]


# -- System page ---------------------------------------------------------------------------------------------

HEARTBEAT_COLUMNS = (
    ("ticks_processed", "ticks processed"),
    ("bars_processed", "bars processed"),
    ("bars_rejected", "bars rejected"),
    ("snapshots", "snapshots"),
    ("last_latency_ms", "last latency (ms)"),
    ("version", "market version"),
    ("pid", "pid"),
)


def heartbeat_frame(statuses: list[DaemonStatus]) -> pd.DataFrame:
    """One row per daemon: state, heartbeat age and its counters (every field it reports)."""
    rows = []
    for d in statuses:
        row: dict[str, Any] = {"daemon": d.name, "state": d.state, "heartbeat age (s)": d.age_seconds}
        for key, label in HEARTBEAT_COLUMNS:
            row[label] = _number_or_text(d.fields.get(key))
        for key, value in d.fields.items():
            if key not in dict(HEARTBEAT_COLUMNS) and key != "ts":
                row[key] = _number_or_text(value)
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.dropna(axis="columns", how="all")  # counters no daemon reports


def _number_or_text(value: str | None) -> Any:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


@dataclass(frozen=True)
class MarketStatus:
    version: int
    ts: float
    age_seconds: float
    tickers: int
    stale_tickers: tuple[str, ...]
    """Tickers whose last price is older than the stale-price limit."""


def market_status(desk: Desk) -> MarketStatus:
    header = desk.store.read_market_header()
    now = desk.clock()
    limit = desk.settings.limits.stale_price_seconds
    stale = tuple(
        t
        for t, ts, p in zip(header.tickers, header.price_ts, header.prices, strict=True)
        if not (np.isfinite(p) and now - ts <= limit)
    )
    return MarketStatus(header.version, header.ts, max(0.0, now - header.ts), len(header.tickers), stale)


def redis_health(desk: Desk) -> dict[str, Any]:
    """Reachability, memory and persistence from ``INFO`` (what an operator checks first)."""
    info = desk.client.info()
    keys = sum(v.get("keys", 0) for k, v in info.items() if k.startswith("db") and isinstance(v, dict))
    aof = bool(info.get("aof_enabled"))
    return {
        "reachable": True,
        "redis version": str(info.get("redis_version", "?")),
        "uptime (s)": int(info.get("uptime_in_seconds", 0)),
        "used memory": str(info.get("used_memory_human", "?")),
        "peak memory": str(info.get("used_memory_peak_human", "?")),
        "max memory": str(info.get("maxmemory_human", "0B")) if info.get("maxmemory") else "unlimited",
        "keys": int(keys),
        "connected clients": int(info.get("connected_clients", 0)),
        "persistence": "AOF" if aof else ("RDB" if info.get("rdb_last_save_time") else "none"),
        "AOF last write": str(info.get("aof_last_write_status", "-")) if aof else "-",
        "AOF rewrite in progress": bool(info.get("aof_rewrite_in_progress", 0)) if aof else False,
        "RDB last save status": str(info.get("rdb_last_bgsave_status", "-")),
        "changes since last save": int(info.get("rdb_changes_since_last_save", 0)),
    }


def versions(desk: Desk) -> pd.DataFrame:
    """Software versions and the store's layout and market versions."""
    rows: list[tuple[str, str]] = []
    for dist in ("riskdesk", "streamlit", "numpy", "pandas", "scipy", "plotly", "redis"):
        try:
            rows.append((dist, importlib.metadata.version(dist)))
        except importlib.metadata.PackageNotFoundError:
            rows.append((dist, "not installed"))
    rows.append(("python", platform.python_version()))
    try:
        found = desk.store.schema_version()
        rows.append(("store layout", f"{found} (code reads {SCHEMA_VERSION})"))
        market_version = desk.store.read_market_version()
        rows.append(("market version (bars)", "-" if market_version is None else str(market_version)))
    except redis.RedisError:
        rows.append(("store layout", "unreachable"))
    return pd.DataFrame(rows, columns=["component", "version"])


@dataclass(frozen=True)
class SystemView:
    health: Health
    heartbeats: pd.DataFrame
    market: MarketStatus | None
    redis: dict[str, Any]
    versions: pd.DataFrame


def system_view(desk: Desk) -> SystemView:
    health = check_health(desk)
    if not health.ok:
        return SystemView(health, pd.DataFrame(), None, {"reachable": False}, versions(desk))
    return SystemView(
        health=health,
        heartbeats=heartbeat_frame(list(health.daemons)),
        market=market_status(desk),
        redis=redis_health(desk),
        versions=versions(desk),
    )


@dataclass(frozen=True)
class TradingStateView:
    state: str
    reason: str
    actor: str
    ts: float
    audit: pd.DataFrame = field(default_factory=pd.DataFrame)


TRADING_STATES = TRADING_STATE_NAMES
AUDIT_ROWS = 50


def key_value_frame(values: Mapping[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({"item": list(values), "value": [str(v) for v in values.values()]})


def trading_state_view(desk: Desk, portfolio_id: str) -> TradingStateView:
    """The portfolio's trading state and its audit trail (state changes and automated actions)."""
    ts = desk.store.read_trading_state(portfolio_id)
    records = desk.store.read_stream_json(PortfolioKeys(portfolio_id).audit, count=AUDIT_ROWS)
    return TradingStateView(ts.state, ts.reason, ts.actor, ts.ts, audit=records_frame(records))


def change_trading_state(desk: Desk, portfolio_id: str, state: str | None, reason: str, actor: str) -> Any:
    """Set ACTIVE / REDUCING / HALTED deliberately: a reason and an actor are required (both are audited)."""
    if state not in TRADING_STATES:
        raise InputError(f"choose one of {', '.join(TRADING_STATES)}")
    reason, actor = (reason or "").strip(), (actor or "").strip()
    if not reason:
        raise InputError("a reason is required to change the trading state")
    if not actor:
        raise InputError("say who is changing the trading state")
    desk.risk_manager(portfolio_id).set_trading_state(state, reason, actor)
    return desk.store.read_trading_state(portfolio_id)


class InputError(RiskdeskError):
    """The user's input cannot be used as it is (the page shows the message next to the form)."""

    code = "INPUT_INVALID"
    fix = "correct the highlighted field and try again"


def records_frame(records: list[dict[str, Any]], time_fields: tuple[str, ...] = ("ts",)) -> pd.DataFrame:
    """Stream records as a table: time columns as UTC datetimes, nested values as compact JSON text."""
    if not records:
        return pd.DataFrame()
    df = pd.DataFrame.from_records(records)
    for col in df.columns:
        if col in time_fields:
            df[col] = pd.to_datetime(pd.to_numeric(df[col], errors="coerce"), unit="s", utc=True)
        elif df[col].map(lambda v: isinstance(v, dict | list)).any():
            df[col] = df[col].map(lambda v: encode_json(v) if isinstance(v, dict | list) else v)
    first = [c for c in time_fields if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


# -- Trade page ----------------------------------------------------------------------------------------------

POSITION_COLUMNS = (
    "ticker",
    "qty",
    "avg_price",
    "last",
    "market_value",
    "weight",
    "unrealized_pnl",
    "realized_pnl",
    "mfe",
    "mae",
)
BLOTTER_ROWS = 50


@dataclass(frozen=True)
class PositionsView:
    positions: pd.DataFrame
    """One row per open position: :data:`POSITION_COLUMNS`."""
    totals: Mapping[str, Any]
    """Portfolio totals of :meth:`RiskManager.get_dashboard_metrics` (cash, equity, VaR, ...)."""


def positions_view(desk: Desk, portfolio_id: str) -> PositionsView:
    """Open positions with P&L, and the maximum favourable / adverse excursions the monitor tracks."""
    metrics = desk.risk_manager(portfolio_id).get_dashboard_metrics()
    totals = dict(metrics.attrs.get("totals", {}))
    df = metrics.reindex(columns=[c for c in POSITION_COLUMNS if c not in ("mfe", "mae")]).copy()
    excursions = _excursions(desk, portfolio_id)
    df["mfe"] = [excursions.get(t, {}).get("mfe") for t in df["ticker"]]
    df["mae"] = [excursions.get(t, {}).get("mae") for t in df["ticker"]]
    return PositionsView(df.reset_index(drop=True), totals)


def _excursions(desk: Desk, portfolio_id: str) -> dict[str, dict[str, float | None]]:
    """Ticker -> {mfe, mae} from the monitor's latest snapshot (empty when the monitor has not run)."""
    snapshot = latest_snapshot(desk, portfolio_id)
    if snapshot is None:
        return {}
    return {
        str(p.get("ticker")): {"mfe": _float_or_none(p.get("mfe")), "mae": _float_or_none(p.get("mae"))}
        for p in snapshot.get("positions", [])
        if isinstance(p, dict)
    }


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def latest_snapshot(desk: Desk, portfolio_id: str) -> dict[str, Any] | None:
    """The monitor's latest snapshot of the portfolio (schema in logic/snapshot.py); None before the first."""
    reader = getattr(desk.store, "read_snapshot", None)
    if reader is None:  # the monitor is not part of this build yet
        return None
    snapshot = reader(portfolio_id)
    return snapshot if isinstance(snapshot, dict) else None


def ticket_tickers(desk: Desk) -> list[str]:
    """Tickers the ticket offers: the market snapshot's universe, in matrix order."""
    return list(desk.store.read_market_header().tickers)


def new_client_order_id() -> str:
    """A fresh idempotency key for one checked ticket (a double click re-sends the same one)."""
    return f"dash-{uuid.uuid4().hex}"


def check_ticket(desk: Desk, portfolio_id: str, ticker: Any, side: Any, qty: Any) -> dict[str, Any]:
    """The pre-trade decision (never writes; every failed check is a reason)."""
    return desk.risk_manager(portfolio_id).check_trade_impact(ticker, qty, side)


def execute_ticket(
    desk: Desk, portfolio_id: str, ticker: Any, side: Any, qty: Any, client_order_id: str, actor: str
) -> dict[str, Any]:
    """Execute a checked ticket; the same ``client_order_id`` trades at most once (``duplicate`` says so)."""
    return desk.risk_manager(portfolio_id).execute_trade(
        ticker, qty, side, client_order_id=client_order_id, actor=actor or "dashboard"
    )


def reasons_frame(decision: Mapping[str, Any]) -> pd.DataFrame:
    reasons = decision.get("reasons") or []
    return pd.DataFrame(
        [{"code": str(r.get("code", "")), "message": str(r.get("message", ""))} for r in reasons],
        columns=["code", "message"],
    )


DELTA_ROWS: tuple[tuple[str, str, str], ...] = (
    ("VaR", "var_before", "var_after"),
    ("Cash", "cash_before", "cash_after"),
    ("Position (shares)", "position_before", "position_after"),
)
IMPACT_ROWS: tuple[tuple[str, str], ...] = (
    ("Equity after", "equity_after"),
    ("Concentration after", "concentration_after"),
    ("Margin level after (%)", "margin_level_after"),
    ("Price", "price"),
    ("Reference price", "reference_price"),
    ("Notional", "notional"),
    ("Estimated fees", "est_fees"),
    ("Liquidity cost (spread + impact)", "liquidity_cost"),
    ("Marginal VaR (per $ of exposure)", "marginal_var"),
    ("VaR limit", "var_limit"),
)


def deltas_frame(decision: Mapping[str, Any]) -> pd.DataFrame:
    """Before / after / change of VaR, cash and the position; rows a rejected order could not compute (bad
    ticker or quantity) are left out."""
    rows = []
    confidence = _float_or_none(decision.get("var_confidence"))
    horizon = _float_or_none(decision.get("var_horizon_days"))
    for label, before_key, after_key in DELTA_ROWS:
        before, after = _float_or_none(decision.get(before_key)), _float_or_none(decision.get(after_key))
        if before is None or after is None:
            continue
        change = after - before
        if label == "VaR":
            change = _float_or_none(decision.get("delta_var")) or change
            if confidence is not None and horizon is not None:
                label = f"VaR {confidence:.0%} ({horizon:g} day)"
        rows.append({"figure": label, "before": before, "after": after, "change": change})
    return pd.DataFrame(rows, columns=["figure", "before", "after", "change"])


def impact_frame(decision: Mapping[str, Any]) -> pd.DataFrame:
    """The order's price, costs and the book after it; figures that do not apply (margin level of a cash
    account) or could not be computed are left out."""
    rows = [
        {"figure": label, "value": value}
        for label, key in IMPACT_ROWS
        if (value := _float_or_none(decision.get(key))) is not None
    ]
    return pd.DataFrame(rows, columns=["figure", "value"])


def blotter_frame(desk: Desk, portfolio_id: str, count: int = BLOTTER_ROWS) -> pd.DataFrame:
    """The trade log, newest first: fills and rejected orders with their reasons."""
    records = desk.risk_manager(portfolio_id).trade_log(count)
    rows = []
    for r in records:
        fill = r.get("fill") or {}
        decision = r.get("decision") or {}
        rows.append(
            {
                "time": r.get("ts"),
                "status": r.get("status"),
                "side": fill.get("side") or decision.get("side"),
                "ticker": fill.get("ticker") or decision.get("ticker"),
                "qty": fill.get("qty") if fill else decision.get("qty"),
                "price": _float_or_none(fill.get("price")) if fill else _float_or_none(decision.get("price")),
                "notional": _float_or_none(fill.get("notional")),
                "fees": _float_or_none(fill.get("fees")),
                "realized_pnl": _float_or_none(fill.get("realized_pnl")),
                "reasons": "; ".join(str(x.get("code")) for x in r.get("reasons") or []),
                "actor": r.get("actor"),
                "client_order_id": r.get("client_order_id"),
                "trade_id": fill.get("trade_id"),
            }
        )
    df = pd.DataFrame(
        rows,
        columns=[
            "time",
            "status",
            "side",
            "ticker",
            "qty",
            "price",
            "notional",
            "fees",
            "realized_pnl",
            "reasons",
            "actor",
            "client_order_id",
            "trade_id",
        ],
    )
    df["time"] = pd.to_datetime(pd.to_numeric(df["time"], errors="coerce"), unit="s", utc=True)
    df["ticker"] = df["ticker"].map(lambda v: v if v is None else str(v))
    return df


# -- Overview page -------------------------------------------------------------------------------------------

HISTORY_WINDOWS: dict[str, float] = {
    "5 min": 300.0,
    "30 min": 1800.0,
    "4 h": 4 * 3600.0,
    "1 day": 86400.0,
    "7 days": 7 * 86400.0,
}
"""Equity-curve windows the Overview offers (the monitor keeps 7 days)."""
HISTORY_DIRECT_POINTS = 900
"""Read every point of a window up to this many (about 15 minutes at one point a second) ..."""
HISTORY_SAMPLES = 240
"""... and above that one point per 1/240th of the window, so a 7-day curve costs 240 small reads."""


@dataclass(frozen=True)
class Gauge:
    title: str
    value: float
    limit: float | None

    @property
    def of_limit(self) -> float | None:
        """The value as a fraction of the limit (None without a limit)."""
        return self.value / self.limit if self.limit else None


@dataclass(frozen=True)
class OverviewView:
    portfolio_id: str
    snapshot: Mapping[str, Any] | None
    """The monitor's latest snapshot, None before its first one (the figures then come from RiskManager)."""
    snapshot_age: float | None
    stale: bool
    trading: TradingStateView
    headline: Mapping[str, float | None]
    """equity, cash, daily_pnl, total_pnl, unrealized, realized, leverage (None where unknown)."""
    gauges: list[Gauge]
    lights: list[Any]
    breakers: list[dict[str, Any]]


def overview_view(desk: Desk, portfolio_id: str) -> OverviewView:
    """Headline figures, VaR/CVaR against the limit, traffic lights and trading state of one portfolio."""
    from logic import analytics

    snapshot = latest_snapshot(desk, portfolio_id)
    ts = desk.store.read_trading_state(portfolio_id)
    trading = TradingStateView(ts.state, ts.reason, ts.actor, ts.ts)
    rules = effective_rules(desk)
    limit = float(desk.settings.limits_for(portfolio_id).var_limit)
    confidence = desk.settings.limits_for(portfolio_id).var_confidence
    if snapshot is not None:
        pnl, var = snapshot.get("pnl", {}), snapshot.get("var", {})
        headline = {
            "equity": _float_or_none(snapshot.get("equity")),
            "cash": _float_or_none(snapshot.get("cash")),
            "daily_pnl": _float_or_none(pnl.get("daily")),
            "total_pnl": _float_or_none(pnl.get("total")),
            "unrealized": _float_or_none(pnl.get("unrealized")),
            "realized": _float_or_none(pnl.get("realized")),
            "leverage": _float_or_none(snapshot.get("leverage")),
        }
        limit = _float_or_none(var.get("limit")) or limit
        gauges = [
            Gauge("VaR 95% (1 day)", _float_or_none(var.get("var95")) or 0.0, limit),
            Gauge("VaR 99% (1 day)", _float_or_none(var.get("var99")) or 0.0, limit),
            Gauge("CVaR 95% (1 day)", _float_or_none(var.get("cvar95")) or 0.0, limit),
            Gauge("Stressed VaR 99%", _float_or_none(var.get("stressed_var99")) or 0.0, limit),
        ]
        age = max(0.0, desk.clock() - float(snapshot.get("ts", 0.0)))
    else:  # no monitor yet: the risk manager's own figures (no drawdown, no daily P&L)
        totals = desk.risk_manager(portfolio_id).get_dashboard_metrics().attrs.get("totals", {})
        headline = {
            "equity": totals.get("equity"),
            "cash": totals.get("cash"),
            "daily_pnl": None,
            "total_pnl": (totals.get("unrealized_pnl") or 0.0) + (totals.get("realized_pnl") or 0.0),
            "unrealized": totals.get("unrealized_pnl"),
            "realized": totals.get("realized_pnl"),
            "leverage": totals.get("leverage"),
        }
        gauges = [
            Gauge(f"VaR {confidence:.0%} (1 day)", float(totals.get("var") or 0.0), limit),
            Gauge(f"CVaR {confidence:.0%} (1 day)", float(totals.get("cvar") or 0.0), limit),
        ]
        age = None
    alerts = active_alerts(desk, portfolio_id)
    return OverviewView(
        portfolio_id=portfolio_id,
        snapshot=snapshot,
        snapshot_age=age,
        stale=age is None or age > desk.settings.monitor.stale_snapshot_seconds,
        trading=trading,
        headline=headline,
        gauges=gauges,
        lights=analytics.traffic_lights(rules, snapshot, portfolio_id, alerts),
        breakers=analytics.breaker_levels(rules, portfolio_id),
    )


def history_frame(desk: Desk, portfolio_id: str, window_seconds: float) -> pd.DataFrame:
    """The monitor's history over the last ``window_seconds`` (sampled when long), oldest first.

    Columns: ``time`` (UTC) then the flat metrics of the history (``equity``, ``drawdown.daily``, ...).
    """
    now = desk.clock()
    start = now - window_seconds
    points = desk.store.read_history(
        portfolio_id, start_ts=start, count=HISTORY_DIRECT_POINTS + 1, newest_first=True
    )
    if len(points) > HISTORY_DIRECT_POINTS:
        step = window_seconds / HISTORY_SAMPLES
        points = []
        for i in range(HISTORY_SAMPLES):
            lo = start + i * step
            points += desk.store.read_history(portfolio_id, start_ts=lo, end_ts=lo + step, count=1)
    else:
        points.reverse()
    if not points:
        return pd.DataFrame(columns=["time", "equity"])
    df = pd.DataFrame.from_records(points).drop(columns=["id"], errors="ignore")
    df.insert(0, "time", pd.to_datetime(df["ts"], unit="s", utc=True))
    return df


def effective_rules(desk: Desk) -> tuple[Any, ...]:
    """The alert rules in force: riskdesk.toml's, with the edits made at run time."""
    return desk.alert_engine().rulebook.rules()


def active_alerts(desk: Desk, portfolio_id: str | None = None) -> list[dict[str, Any]]:
    return desk.alert_engine().active_alerts(portfolio_id)


# -- Risk page -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExposureView:
    correlation: pd.DataFrame
    """Correlation of the tickers' one-bar returns (ticker x ticker)."""
    exposures: pd.DataFrame
    """ticker, market_value, weight, daily_vol, component_var, component_share (held tickers)."""
    var: float
    var_limit: float
    var_confidence: float

    @property
    def utilization(self) -> float | None:
        return self.var / self.var_limit if self.var_limit else None


def exposure_view(desk: Desk, portfolio_id: str) -> ExposureView:
    from engine import math_logic

    rm = desk.risk_manager(portfolio_id)
    metrics = rm.get_dashboard_metrics()
    totals = dict(metrics.attrs.get("totals", {}))
    snap, _prices = rm.get_market_data()
    if snap is None:
        raise rm.last_error or StoreEmptyError("no market snapshot in the store")
    corr = math_logic.correlation_from_covariance(snap.cov, validate=False)
    exposures = metrics.reindex(
        columns=[
            "ticker",
            "qty",
            "market_value",
            "weight",
            "daily_vol",
            "marginal_var",
            "component_var",
            "component_share",
        ]
    )
    return ExposureView(
        correlation=pd.DataFrame(corr, index=list(snap.tickers), columns=list(snap.tickers)),
        exposures=exposures,
        var=float(totals.get("var") or 0.0),
        var_limit=float(totals.get("var_limit") or 0.0),
        var_confidence=float(totals.get("var_confidence") or 0.0),
    )


@dataclass(frozen=True)
class StressView:
    var: float
    stressed_var: float
    stressed_var99: float
    confidence: float
    equity: float
    scenarios: pd.DataFrame
    """name, description, pnl, pnl_pct, equity_after."""

    @property
    def multiple(self) -> float | None:
        """Stressed VaR over VaR at the same confidence."""
        return self.stressed_var / self.var if self.var else None


def stress_view(desk: Desk, portfolio_id: str, trades: list[dict[str, Any]] | None = None) -> StressView:
    result = desk.risk_manager(portfolio_id).stress_test(trades)
    scenarios = pd.DataFrame(
        result["scenarios"], columns=["name", "description", "pnl", "pnl_pct", "equity_after"]
    )
    return StressView(
        var=float(result["var"]),
        stressed_var=float(result["stressed_var"]),
        stressed_var99=float(result["stressed_var99"]),
        confidence=float(result["var_confidence"]),
        equity=float(result["equity"]),
        scenarios=scenarios,
    )


WHAT_IF_COLUMNS = ("ticker", "side", "qty")


@dataclass(frozen=True)
class WhatIfView:
    status: str
    decisions: pd.DataFrame
    """One row per trade: ticker, side, qty, status, delta_var, var_after, reasons."""
    var_before: float | None
    var_after: float | None
    cash_before: float | None
    cash_after: float | None
    stress: StressView | None
    """Stress of the book after the basket's approved trades (None when it cannot be computed)."""


def basket_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The what-if editor's rows as trades; empty rows are skipped, the rest goes to the checks as typed."""
    trades = []
    for row in rows:
        ticker, side, qty = row.get("ticker"), row.get("side"), row.get("qty")
        if _blank(ticker) and _blank(qty):
            continue
        number = _float_or_none(qty)
        trades.append(
            {
                "ticker": None if _blank(ticker) else str(ticker),
                "side": None if _blank(side) else str(side),
                "qty": int(number)
                if number is not None and number.is_integer()
                else (number if number is not None else qty),
            }
        )
    return trades


def _blank(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def what_if_view(desk: Desk, portfolio_id: str, trades: list[dict[str, Any]]) -> WhatIfView:
    """Check a basket cumulatively (nothing is written) and stress the book it would leave."""
    if not trades:
        raise InputError("add at least one trade to the basket")
    rm = desk.risk_manager(portfolio_id)
    result = rm.what_if(trades)
    rows = []
    for trade, d in zip(trades, result["decisions"], strict=True):
        rows.append(
            {
                "ticker": trade["ticker"],
                "side": trade["side"],
                "qty": trade["qty"],
                "status": d["status"],
                "delta_var": d.get("delta_var"),
                "var_after": d.get("var_after"),
                "reasons": "; ".join(f"{r['code']}: {r['message']}" for r in d.get("reasons") or []),
            }
        )
    try:
        stress = stress_view(desk, portfolio_id, trades)
    except RiskdeskError:
        stress = None
    return WhatIfView(
        status=result["status"],
        decisions=pd.DataFrame(
            rows, columns=["ticker", "side", "qty", "status", "delta_var", "var_after", "reasons"]
        ),
        var_before=result.get("var_before"),
        var_after=result.get("var_after"),
        cash_before=result.get("cash_before"),
        cash_after=result.get("cash_after"),
        stress=stress,
    )


SURFACE_STEPS = 21


def surface_view(
    desk: Desk, portfolio_id: str, ticker_a: str, ticker_b: str, steps: int = SURFACE_STEPS
) -> Any:
    """VaR (the limit's confidence and horizon) over a grid of sizes of two positions (logic.analytics)."""
    from logic import analytics

    rm = desk.risk_manager(portfolio_id)
    snap, _prices = rm.get_market_data()
    state = rm.get_portfolio_state()
    if snap is None or state is None:
        raise rm.last_error or StoreEmptyError("no market or portfolio in the store")
    valuation = value_portfolio(state, snap)
    if valuation.missing:
        raise CorruptDataError(f"no usable price for {', '.join(valuation.missing)}: cannot draw the surface")
    index = {t: i for i, t in enumerate(snap.tickers)}
    for t in (ticker_a, ticker_b):
        if t not in index:
            raise InputError(f"{t} is not in the market data")
    ia, ib = index[ticker_a], index[ticker_b]
    limits = desk.settings.limits_for(portfolio_id)
    equity = valuation.equity
    qty_a = analytics.qty_grid(float(valuation.qty[ia]), float(snap.prices[ia]), equity, steps)
    qty_b = analytics.qty_grid(float(valuation.qty[ib]), float(snap.prices[ib]), equity, steps)
    return analytics.var_surface(
        np.asarray(valuation.market_values, dtype=float),
        snap.prices,
        snap.cov,
        ia,
        ib,
        qty_a,
        qty_b,
        confidence=limits.var_confidence,
        horizon_bars=desk.settings.model.bars_per_day * limits.var_horizon_days,
        tickers=(ticker_a, ticker_b),
    )


BACKTEST_POINTS = 3000
"""History points the backtest reads (newest first): about 50 minutes at one point a second."""


def backtest_view(desk: Desk, portfolio_id: str, confidence: float, points: int = BACKTEST_POINTS) -> Any:
    """Backtest of the monitor's one-day VaR (scaled to one bar) on the portfolio's own recent history."""
    from logic import analytics

    history = desk.store.read_history(portfolio_id, count=points, newest_first=True)
    return analytics.var_backtest(
        history, confidence=confidence, bars_per_day=desk.settings.model.bars_per_day
    )


# -- Alerts page ---------------------------------------------------------------------------------------------

ALERT_COLUMNS = (
    "severity",
    "status",
    "portfolio_id",
    "rule_id",
    "description",
    "metric",
    "value",
    "threshold",
    "op",
    "triggered_at",
    "acknowledged_by",
    "acknowledged_at",
    "resolved_at",
    "resolved_by",
    "escalation_level",
    "next_escalation_at",
    "alert_id",
)
ALERT_TIME_COLUMNS = ("triggered_at", "acknowledged_at", "resolved_at", "next_escalation_at")
ALERT_STATUSES = ("TRIGGERED", "ACKNOWLEDGED", "RESOLVED")
ALERT_WINDOWS: dict[str, float | None] = {"1 h": 3600.0, "24 h": 86400.0, "7 days": 7 * 86400.0, "all": None}


def alerts_frame(
    desk: Desk,
    portfolio_id: str | None,
    *,
    severities: Iterable[str] | None = None,
    statuses: Iterable[str] | None = None,
    window_seconds: float | None = None,
    limit: int = 200,
) -> pd.DataFrame:
    """Active and resolved alerts, newest first, filtered (severity, status, portfolio, time)."""
    since = None if window_seconds is None else desk.clock() - window_seconds
    alerts = desk.alert_engine().list_alerts(
        portfolio_id,
        status=_set_or_none(statuses),
        severity=_set_or_none(severities),
        since=since,
        limit=limit,
    )
    df = pd.DataFrame.from_records(alerts).reindex(columns=list(ALERT_COLUMNS))
    for col in ALERT_TIME_COLUMNS:
        df[col] = pd.to_datetime(pd.to_numeric(df[col], errors="coerce"), unit="s", utc=True)
    return df


def alert_counts(alerts: pd.DataFrame) -> dict[str, int]:
    """Headline counts of an :func:`alerts_frame`: active, unacknowledged, critical, escalated."""
    active = alerts[alerts["status"].isin(["TRIGGERED", "ACKNOWLEDGED"])]
    return {
        "Active": len(active),
        "Unacknowledged": int((active["status"] == "TRIGGERED").sum()),
        "Critical active": int((active["severity"] == "CRITICAL").sum()),
        "Escalated": int((pd.to_numeric(active["escalation_level"], errors="coerce").fillna(0) > 1).sum()),
    }


def _set_or_none(values: Iterable[str] | None) -> set[str] | None:
    return None if values is None else set(values)


def acknowledge_alert(
    desk: Desk, portfolio_id: str, rule_id: str, actor: str, note: str = ""
) -> dict[str, Any]:
    return desk.alert_engine().acknowledge(portfolio_id, rule_id, _actor(actor), note)


def resolve_alert(desk: Desk, portfolio_id: str, rule_id: str, actor: str, note: str = "") -> dict[str, Any]:
    return desk.alert_engine().resolve(portfolio_id, rule_id, _actor(actor), note)


def _actor(actor: str | None) -> str:
    actor = (actor or "").strip()
    if not actor:
        raise InputError("say who you are (the name is recorded with the alert)")
    return actor


def delivery_frame(desk: Desk, portfolio_id: str | None, count: int = 100) -> pd.DataFrame:
    records = desk.alert_engine().delivery_log(portfolio_id, count)
    return records_frame(records, time_fields=("ts", "sent_at", "created_at", "next_attempt_at"))


RULE_COLUMNS = (
    "id",
    "metric",
    "op",
    "threshold",
    "severity",
    "description",
    "pending_seconds",
    "clear_seconds",
    "stale_after_seconds",
    "stale_policy",
    "portfolios",
    "actions",
    "source",
)


def rules_frame(desk: Desk) -> pd.DataFrame:
    """The rules in force (and removed defaults), one row each; lists as comma-separated text for editing."""
    rows = desk.alert_engine().list_rules()
    df = pd.DataFrame.from_records(rows).reindex(columns=list(RULE_COLUMNS))
    for col in ("portfolios", "actions"):
        df[col] = df[col].map(_comma_text)
    df["description"] = df["description"].fillna("").astype(str)
    return df


def _comma_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def rule_metrics() -> list[str]:
    from logic.alerts import SNAPSHOT_METRICS

    return list(SNAPSHOT_METRICS)


def rule_choices() -> dict[str, tuple[str, ...]]:
    from logic.alerts import OPERATORS, SEVERITIES, STALE_POLICIES

    return {"op": OPERATORS, "severity": SEVERITIES, "stale_policy": STALE_POLICIES}


def rule_from_form(values: Mapping[str, Any]) -> dict[str, Any]:
    """The rules editor's fields as a rule dict (lists from comma-separated text); alerts validates it."""
    out = dict(values)
    for col in ("portfolios", "actions"):
        if isinstance(out.get(col), str):
            out[col] = [part.strip() for part in out[col].split(",") if part.strip()]
    if not out.get("portfolios"):
        out["portfolios"] = ["*"]
    return out


def save_rule(desk: Desk, values: Mapping[str, Any], actor: str, reason: str = "") -> Any:
    """Add a new rule or update an existing one (validated and audited by the alerts module)."""
    rule = rule_from_form(values)
    engine = desk.alert_engine()
    rule_id = str(rule.get("id") or "").strip()
    if not rule_id:
        raise InputError("a rule needs an id")
    existing = {r["id"] for r in engine.list_rules() if r.get("source") != "removed"}
    if rule_id in existing:
        changes = {k: v for k, v in rule.items() if k != "id"}
        return engine.update_rule(rule_id, changes, _actor(actor), reason)
    return engine.add_rule(rule, _actor(actor), reason)


def remove_rule(desk: Desk, rule_id: str, actor: str, reason: str = "") -> Any:
    return desk.alert_engine().remove_rule(rule_id, _actor(actor), reason)


def reset_rule(desk: Desk, rule_id: str, actor: str, reason: str = "") -> Any:
    return desk.alert_engine().reset_rule(rule_id, _actor(actor), reason)


def escalation_summary(desk: Desk) -> pd.DataFrame:
    """Escalation policy per severity: level, delay, recipients and channels (the [escalation] settings)."""
    config = desk.alert_engine().escalation
    rows = []
    for severity in ("LOW", "MEDIUM", "HIGH", "CRITICAL"):
        for n, level in enumerate(config.policy(severity).levels):
            rows.append(
                {
                    "severity": severity,
                    "level": n,
                    "after (s)": level.delay_seconds,
                    "notify": ", ".join(level.recipients) or "-",
                    "channels": ", ".join(level.channels),
                }
            )
    return pd.DataFrame(rows, columns=["severity", "level", "after (s)", "notify", "channels"])
