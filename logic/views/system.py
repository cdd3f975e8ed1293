"""View models of the System page (``dashboard/screens/system.py``): daemon heartbeats, market-data age,
Redis health, software versions, and the trading-state kill switch with its audit trail."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import redis

from engine.errors import StoreEmptyError, StoreError
from engine.records import Action, TradingState
from engine.redis_server import describe_server
from engine.store import SCHEMA_VERSION, PortfolioKeys
from engine.store.portfolio import MISSING, UNREADABLE
from logic.access import Identity, authorize
from logic.actions import STATE_RANK
from logic.backtest_monitor import feed_bar_model_bars
from logic.views.common import (
    DaemonStatus,
    Desk,
    Health,
    InputError,
    TradingStateView,
    check_health,
    records_frame,
)

# -- status --------------------------------------------------------------------------------------------------

HEARTBEAT_COLUMNS = (
    ("ticks_processed", "ticks processed"),
    ("ticks_coalesced", "ticks coalesced"),
    ("bars_processed", "bars processed"),
    ("bars_rejected", "bars rejected"),
    ("bars_fed", "bars fed"),
    ("bars_lost", "bars lost"),
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


MONITOR_COLUMNS = ("monitor", "state", "last beat age (s)", "stale after (s)")


def monitor_frame(statuses: list[DaemonStatus]) -> pd.DataFrame:
    """One row per monitor sharing the portfolios (``monitor.shard_portfolios``): its name, ``live`` or ``stale``
    (its last beat older than the claim time: the others took its portfolios) and its beat's age; empty when the
    monitors do not share."""
    rows = [
        (m.consumer, "live" if m.live else "stale", round(m.age_seconds, 1), m.claim_seconds)
        for d in statuses
        for m in d.members
    ]
    return pd.DataFrame(rows, columns=list(MONITOR_COLUMNS))


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
        "server": str(describe_server(info)),
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
    monitors: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(MONITOR_COLUMNS)))
    """:func:`monitor_frame`: the monitors sharing the portfolios (empty when they do not share)."""

    @property
    def live_monitors(self) -> int:
        return int((self.monitors["state"] == "live").sum())

    @property
    def last_monitor(self) -> str | None:
        """The monitor whose heartbeat the shared ``hb:monitor`` row shows (the last to beat)."""
        for d in self.health.daemons:
            if d.name == "monitor":
                return d.fields.get("consumer")
        return None


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
        monitors=monitor_frame(list(health.daemons)),
    )


# -- the kill switch -----------------------------------------------------------------------------------------


TRADING_STATES: tuple[TradingState, ...] = tuple(TradingState)
"""The states the kill switch offers, in the vocabulary's order (ACTIVE, REDUCING, HALTED)."""
AUDIT_ROWS = 50


def key_value_frame(values: Mapping[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({"item": list(values), "value": [str(v) for v in values.values()]})


def unread_state(exc: BaseException) -> str:
    """The name a trading state that could not be read goes by, as the store's audit names it (``previous``,
    engine/store/portfolio.py): :data:`MISSING` for no key, :data:`UNREADABLE` for anything else (a value that
    does not decode, a key of another type, a Redis that did not answer): what the page showed was no state."""
    return MISSING if isinstance(exc, StoreEmptyError) else UNREADABLE


def trading_state_view(desk: Desk, portfolio_id: str, shown: Callable[[str], None] | None = None) -> TradingStateView:
    """The portfolio's trading state and its audit trail (state changes and automated actions).

    ``shown`` (the kill switch's) is told the state the page shows as soon as it is read, before the audit
    trail: its name, or :func:`unread_state` of the error when the read fails (the error is raised as before).
    A failed read thus never leaves an earlier, stale state as the one the person decides against."""
    try:
        ts = desk.store.read_trading_state(portfolio_id)
    except Exception as exc:
        if shown is not None:
            shown(unread_state(exc))
        raise
    if shown is not None:
        shown(str(ts.state))
    records = desk.store.read_stream_json(PortfolioKeys(portfolio_id).audit, count=AUDIT_ROWS)
    return TradingStateView(ts.state, ts.reason, ts.actor, ts.ts, audit=records_frame(records))


@dataclass(frozen=True)
class StateChange:
    """A kill-switch change as the person asked for it: the portfolio, the new state, the reason, and the state
    the page showed when they decided (what the change is made against)."""

    portfolio_id: str
    state: str
    reason: str
    shown: str | None

    @property
    def lifts(self) -> bool:
        """Whether the change is less restrictive than the state shown (HALTED -> REDUCING or ACTIVE, REDUCING ->
        ACTIVE): it lets orders through that were refused, so the page asks for a confirmation first. A state
        not shown (or unknown) counts as HALTED, as an unreadable stored state does."""
        shown = STATE_RANK.get(str(self.shown), STATE_RANK[TradingState.HALTED])
        return STATE_RANK.get(self.state, shown) < shown


def check_trading_state_change(desk: Desk, change: StateChange, identity: Identity | None) -> str:
    """Refuse a change that :func:`change_trading_state` would refuse for its input (role, state, reason) before
    it is confirmed; returns the actor it would be made by. Writes nothing."""
    who = authorize(identity, Action.TRADING_STATE, change.portfolio_id)
    if change.state not in TRADING_STATES:
        raise InputError(f"choose one of {', '.join(TRADING_STATES)}")
    if not (change.reason or "").strip():
        raise InputError("a reason is required to change the trading state")
    return who.actor


def change_trading_state(
    desk: Desk,
    portfolio_id: str,
    state: str | None,
    reason: str,
    identity: Identity | None,
    shown: str | None = None,
) -> Any:
    """Set ACTIVE / REDUCING / HALTED deliberately (a risk manager or an admin): a reason is required; it and
    ``identity.actor`` are audited. ``shown``: the state the page showed when the person decided (None: no
    check, for scripts); what the change is made against is :func:`expected_state`'s: a change that would lift
    a state the person did not see is refused, ``TRADING_STATE_CHANGED`` saying who changed it to what
    (engine/store/portfolio.py), and nothing is written; a HALT always goes through."""
    change = StateChange(portfolio_id, str(state), (reason or "").strip(), shown)
    actor = check_trading_state_change(desk, change, identity)
    expected = expected_state(desk, change)
    desk.risk_manager(portfolio_id).set_trading_state(change.state, change.reason, actor, expected=expected)
    return desk.store.read_trading_state(portfolio_id)


def expected_state(desk: Desk, change: StateChange) -> str | None:
    """The stored state ``change`` is written against (the store's compare-and-set; None: no check), so that a
    deliberate change never lifts a restriction the person did not see, and never waits on one it only adds to.

    - HALTED (the emergency stop): None. Nothing is stricter, so it loosens nothing, whatever landed after the
      page rendered (an automatic REDUCING); a missing or unreadable state is repaired by it.
    - A change at least as strict as the state stored now: that state (read here, compared again at the write,
      so a halt landing in between refuses the change and is never loosened by it).
    - One less strict than the state stored (a lift, confirmed on the page against the state it showed): the
      state shown. The automation may have tightened after the page rendered (shown REDUCING, stored HALTED;
      shown ACTIVE, asked REDUCING, stored HALTED): the change is then refused, naming who changed it to what.

    A missing or unreadable state counts as HALTED; the page shows it as MISSING / UNREADABLE
    (:func:`unread_state`), so a lift of the very state it showed (repairing the key) goes through."""
    if change.shown is None or change.state == TradingState.HALTED:
        return None
    try:
        current = str(desk.store.read_trading_state(change.portfolio_id).state)
    except (StoreError, redis.ResponseError) as exc:
        current = unread_state(exc)
    if STATE_RANK[change.state] >= STATE_RANK.get(current, STATE_RANK[TradingState.HALTED]):
        return current
    return change.shown


# -- the clock the stream daemon plays ------------------------------------------------------------------------


def clock_caption(desk: Desk) -> str | None:
    """What the dashboard says about model time on every page, or None when model time is wall time.

    Read from the stream daemon's heartbeat (its ``clock``: ``live``, ``compressed`` or ``replay``, and its
    ``interval``), so it describes the daemon that runs; without a heartbeat, from the settings'
    ``model.demo_clock_seconds``. Never raises: a page must render even when Redis is down.
    """
    try:
        beat = desk.store.read_heartbeat("stream") or {}
    except redis.RedisError:
        beat = {}
    model = desk.settings.model
    mode = beat.get("clock") or ("compressed" if model.compressed_clock else "live")
    try:
        interval = float(beat.get("interval", model.bar_interval_seconds))
        bar = float(beat.get("feed_bar_model_bars", 1.0))
    except ValueError:
        return None
    pace = "as fast as possible" if interval == 0 else f"every {interval:g} s of wall time"
    if mode == "compressed":
        speed = f" ({model.bar_seconds / interval:g}x real time)" if interval > 0 else ""
        return f"Compressed demo clock: one one-minute model bar {pace}{speed}; not live time"
    if mode == "replay":
        return f"Replay of historical {bar_name(bar, model.bars_per_day)} bars: one bar {pace}; not live time"
    return None


def bar_name(model_bars: float, bars_per_day: float) -> str:
    """A feed bar of ``model_bars`` one-minute model bars by its name: ``minute``, ``hourly``, ``daily``,
    ``weekly``, else ``<n>-minute``."""
    day = float(bars_per_day)
    return {1.0: "minute", 60.0: "hourly", day: "daily", 5 * day: "weekly"}.get(model_bars, f"{model_bars:g}-minute")


def feed_bar_name(desk: Desk) -> str:
    """The name (:func:`bar_name`) of the bars the stream daemon feeds: the length the backtest runner counts
    horizons in (:func:`logic.backtest_monitor.feed_bar_model_bars`, read the same way); ``minute`` when Redis
    cannot say."""
    try:
        model_bars = feed_bar_model_bars(desk.store)
    except redis.RedisError:
        model_bars = 1.0
    return bar_name(model_bars, desk.settings.model.bars_per_day)
