"""What every page of the dashboard shares: the :class:`Desk` (Redis client, settings, clock and the services
it hands out), the :class:`Problem` a page shows instead of a traceback, the :class:`Health` check every page
starts with, :class:`InputError`, and small readers and formatters several pages use.

Every function takes a :class:`Desk` and raises the typed errors of :mod:`engine.errors` or
``redis.RedisError``; :func:`problem_from_exception` turns any of them into the plain sentence and fix a page
shows.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import redis

from engine.clocks import FEED_ENDED, ClockMode, MarketClock
from engine.errors import (
    AccessDenied,
    ConfigError,
    CorruptDataError,
    RiskdeskError,
    SchemaMismatchError,
    StoreEmptyError,
    StoreUnavailableError,
)
from engine.market_model import MarketModel, MarketModelCache
from engine.records import Clock
from engine.redis_server import connect
from engine.settings import Settings, load_settings
from engine.store import Store, encode_json
from logic.monitor import DEFAULT_CLAIM_IDLE_SECONDS
from logic.shards import Membership


@dataclass(frozen=True)
class Daemon:
    """A daemon whose heartbeat (``hb:<name>``) the dashboard watches, and the command that starts it."""

    name: str
    command: str
    wall_time: bool = False
    """Its heartbeat is dated on the wall clock even in a replay (the notifier, the archiver), not the market's."""
    interval: Callable[[Settings], float] | None = None
    """How often it beats when that is slower than a bar (the archiver): stale after :data:`LATE_BEATS` of them."""


LATE_BEATS = 3
"""Beats a daemon with its own interval may miss before it is stale."""

DAEMONS: tuple[Daemon, ...] = (
    Daemon("stream", "python -m engine.stream"),
    Daemon("monitor", "python -m logic.monitor"),
    Daemon("backtest", "python -m logic.backtest_runner"),
    Daemon("notify", "python -m notifications", wall_time=True),
    Daemon("archive", "python -m engine.archive", wall_time=True, interval=lambda s: s.archive.interval_seconds),
)
"""The daemons whose heartbeats the dashboard watches (every one ``make run`` starts but the dashboard)."""

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
        self.store = Store(client)
        self.clock: Clock = clock or MarketClock(self.store)  # time axes on the data's clock in a replay
        self.models = MarketModelCache(self.store, settings.model.bars_per_day)
        """One market-model cache for every page and every portfolio's risk manager of this process."""
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
                self.client,
                portfolio_id=portfolio_id,
                settings=self.settings,
                clock=self.clock,
                market_models=self.models,
            ),
        )

    def market_model(self) -> MarketModel:
        """The stored market with its covariance, read (and checked) once per market version for every page."""
        return self.models.get()


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
    if isinstance(exc, AccessDenied):
        return Problem(exc.code, "Not allowed for your role", _detail(exc), exc.fix)
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
class MonitorMember:
    """One of the monitors sharing the portfolios (``monitor.shard_portfolios``) and how old its last beat in the
    membership (``rd:monitors``, :class:`logic.shards.Membership`) is, on the wall clock."""

    consumer: str
    age_seconds: float
    claim_seconds: float
    """Past this age the other monitors no longer count it and take its portfolios (``--claim-idle``)."""

    @property
    def live(self) -> bool:
        return self.age_seconds <= self.claim_seconds


@dataclass(frozen=True)
class DaemonStatus:
    name: str
    state: str
    """``running``, ``stale`` (heartbeat older than the threshold), ``finished`` (the stream daemon's replay
    played to the end of its file; never a live feed that ended) or ``missing`` (never seen)."""
    age_seconds: float | None
    fields: Mapping[str, str]
    """The heartbeat's fields. The monitors sharing the portfolios write one heartbeat (``hb:monitor``): its
    counters are those of the monitor that beat last (its ``consumer``), not a sum over the monitors."""
    command: str
    members: tuple[MonitorMember, ...] = ()
    """The monitor only, with ``monitor.shard_portfolios``: every monitor in the membership, live or stale, by
    name (the shared heartbeat stays fresh while any one of them runs, so it cannot show a dead one)."""

    @property
    def live_members(self) -> int:
        return sum(m.live for m in self.members)

    @property
    def when(self) -> str:
        """`` (last heartbeat 12 s ago)``; for a finished replay the time of its last bar instead (a replay that
        ended is not late: how long ago it ended on the wall clock says nothing about its data)."""
        if self.state == "finished":
            with contextlib.suppress(KeyError, TypeError, ValueError, OverflowError, OSError):
                return f" (last bar {datetime.fromtimestamp(float(self.fields['ts']), tz=UTC):%Y-%m-%d %H:%M} UTC)"
            return ""
        return f" (last heartbeat {self.age_seconds:.0f} s ago)" if self.age_seconds is not None else ""

    @property
    def fix(self) -> str:
        if self.state == "running":
            return ""
        if self.state == "finished":
            replay = f"{self.command} --feed replay --file CSV"
            return f"the replay reached the end of its file (its prices go stale): start another with `{replay}`"
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
        """One sentence per stale or missing daemon (the page still shows what the store holds), and one when the
        running notification daemon reports failed deliveries (nobody may have been told of an alert)."""
        out = [
            f"{d.name.capitalize()} daemon "
            + {"missing": "not running", "finished": "finished its replay"}.get(d.state, "stale")
            + d.when
            + f" — fix: {d.fix.split(': ', 1)[1]}"
            for d in self.daemons
            if d.state != "running"
        ]
        out += [text for d in self.daemons if d.state == "running" and (text := delivery_warning(d.fields))]
        out += [
            f"Monitor {m.consumer} stale (last beat {m.age_seconds:.0f} s ago, past the {m.claim_seconds:g} s claim"
            f" time; {d.live_members} of {len(d.members)} monitors live): its portfolios moved to the live monitors"
            f" — fix: restart it (`{d.command} --consumer {m.consumer}`), or leave it: a monitor that stopped for"
            " good drops out after monitor.consumer_idle_limit_seconds"
            for d in self.daemons
            for m in d.members
            if not m.live
        ]
        return out


def delivery_warning(beat: Mapping[str, str]) -> str:
    """The warning for a notification heartbeat (``hb:notify``) that counts deliveries needing attention in its
    window: failed, held back by the rate limit, or skipped (channel not configured, recipient unroutable)
    (notifications/service.py ``FailureWindow``), or ``""``."""
    try:
        failed = int(beat.get("failed_recent", "0"))
        window = float(beat.get("failure_window_seconds", "900"))
    except ValueError:
        return ""
    if failed <= 0:
        return ""
    when = ""
    with contextlib.suppress(ValueError, OverflowError, OSError):
        at = datetime.fromtimestamp(float(beat.get("last_failure_ts", "")), tz=UTC)
        when = f" at {at:%H:%M:%S} UTC"
    plural = "delivery" if failed == 1 else "deliveries"
    return (
        f"Notifications failing: {failed} {plural} failed, held back or skipped in the last {window / 60:g} min"
        f" (last{when}: {beat.get('last_failure', '')})"
        " — fix: check the channel's settings ([notifications], SMTP_* / TWILIO_* in the environment) and the"
        " Alerts page's delivery log"
    )


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
    """Each of :data:`DAEMONS`: running, stale (its heartbeat older than :func:`_stale_after`, or than
    :data:`LATE_BEATS` of its own interval when that is longer), finished (the stream daemon's replay played to
    the end of its file, ``clock = replay``: the daemon has exited; a live feed that ended is judged by its age,
    stale like a dead daemon's, even under an ``ended`` heartbeat an older daemon wrote) or missing. A heartbeat
    dated on the wall clock is judged by the wall clock (the desk's clock is the market's in a replay), and so is
    one that carries the wall time it was written (``wall_ts``, the stream daemon's): a replay's bar time stands
    still when its daemon dies. The monitor's status carries the monitors sharing the portfolios
    (:func:`monitor_members`)."""
    now = desk.clock()
    wall = getattr(desk.clock, "wall", desk.clock)()  # MarketClock keeps the wall clock it falls back on
    limit = _stale_after(desk.settings)
    out = []
    for daemon in DAEMONS:
        beat = desk.store.read_heartbeat(daemon.name)
        if beat is None:
            out.append(DaemonStatus(daemon.name, "missing", None, {}, daemon.command))
            continue
        if "wall_ts" in beat:
            age = _age(wall, beat["wall_ts"])
        else:
            age = _age(wall if daemon.wall_time else now, beat.get("ts"))
        allowed = limit if daemon.interval is None else max(limit, LATE_BEATS * daemon.interval(desk.settings))
        state = "running" if age is not None and age <= allowed else "stale"
        if beat.get("feed_state") == FEED_ENDED and beat.get("clock") == ClockMode.REPLAY:
            state = "finished"  # a live feed that ended is a feed that stopped: stale like a dead daemon
        members = monitor_members(desk, wall) if daemon.name == "monitor" else ()
        out.append(DaemonStatus(daemon.name, state, age, dict(beat), daemon.command, members))
    return out


def monitor_members(desk: Desk, wall: float) -> tuple[MonitorMember, ...]:
    """The monitors in the membership with the age of their last beat at wall time ``wall``, by name; none
    unless ``monitor.shard_portfolios`` (a set left over from an earlier sharded run means nothing then).

    A member is live while its beat is at most the claim time old: what the monitors themselves count
    (:meth:`logic.shards.Membership.beat`). The claim time is each monitor's ``--claim-idle``, which the store does
    not hold: the default (:data:`logic.monitor.DEFAULT_CLAIM_IDLE_SECONDS`, what ``make run`` starts them with)
    is assumed."""
    if not desk.settings.monitor.shard_portfolios:
        return ()
    claim = DEFAULT_CLAIM_IDLE_SECONDS
    membership = Membership(desk.store, "dashboard", claim, desk.settings.monitor.consumer_idle_limit_seconds)
    return tuple(
        MonitorMember(consumer, max(0.0, wall - beat), claim)
        for consumer, beat in sorted(membership.members().items())
    )


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


# -- shared view models, errors and readers ------------------------------------------------------------------


@dataclass(frozen=True)
class TradingStateView:
    """A portfolio's trading state with who set it, why and when (Overview badge, System kill switch)."""

    state: str
    reason: str
    actor: str
    ts: float
    audit: pd.DataFrame = field(default_factory=pd.DataFrame)


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


def float_or_none(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, not a number, NaN or infinite)."""
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
