"""The one settings object: universe, portfolios, limits, model, rules.

Settings are read once at a process's entry point from ``riskdesk.toml`` (path from ``RISKDESK_CONFIG``, else
``./riskdesk.toml``, else the built-in defaults below) and then passed down; nothing else in the tree holds a
limit, a ticker or a decay. The object is frozen: to change a limit, change the file and restart.

Environment overrides (applied after the file):

- ``REDIS_URL`` sets ``redis.url`` (redis://, rediss://, unix://, with password);
- ``RISKDESK__SECTION__KEY=value`` sets any scalar, e.g. ``RISKDESK__LIMITS__VAR_LIMIT=75000`` or
  ``RISKDESK__MODEL__EWMA_DECAY=0.97``. The value is parsed as a TOML literal when it is one (numbers,
  booleans, quoted strings, arrays), else taken as a plain string.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, TypeVar

from engine.errors import ConfigError

ENV_PREFIX = "RISKDESK__"
CONFIG_ENV = "RISKDESK_CONFIG"
DEFAULT_CONFIG_FILE = "riskdesk.toml"

AccountType = Literal["cash", "margin"]
Severity = Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"]
Operator = Literal["<", "<=", ">", ">=", "=="]
StalePolicy = Literal["keep", "fire"]
TradingStateName = Literal["ACTIVE", "REDUCING", "HALTED"]


@dataclass(frozen=True)
class Asset:
    """One tradable instrument of the universe."""

    price: float
    """Initial price used by the warm-up (and by the simulated feed as its starting point)."""
    annual_vol: float
    """Annualised volatility used to seed the covariance and drive the simulated feed."""
    avg_daily_volume: float = 5_000_000.0
    """Average daily traded shares, for the square-root market-impact estimate."""
    spread_bps: float = 2.0
    """Quoted bid/ask spread in basis points of the price, for the half-spread cost."""

    def __post_init__(self) -> None:
        _require(math.isfinite(self.price) and self.price > 0, f"asset price must be > 0, got {self.price}")
        _require(
            math.isfinite(self.annual_vol) and self.annual_vol > 0,
            f"asset annual_vol must be > 0, got {self.annual_vol}",
        )
        _require(self.avg_daily_volume > 0, "asset avg_daily_volume must be > 0")
        _require(self.spread_bps >= 0, "asset spread_bps must be >= 0")


@dataclass(frozen=True)
class Universe:
    assets: Mapping[str, Asset] = field(default_factory=dict)
    """Ticker -> asset; the order here is the order of the covariance matrix at warm-up."""
    correlation: float = 0.3
    """Target pairwise correlation used to seed the covariance and the simulated feed."""

    def __post_init__(self) -> None:
        _require(-1.0 < self.correlation < 1.0, "universe.correlation must be in (-1, 1)")
        for ticker in self.assets:
            _require(_valid_ticker(ticker), f"invalid ticker symbol {ticker!r}")

    @property
    def tickers(self) -> tuple[str, ...]:
        return tuple(self.assets)


@dataclass(frozen=True)
class Limits:
    """Pre-trade limits. Each portfolio may override any of them in its own ``limits`` table."""

    var_limit: Decimal = Decimal("50000")
    """Maximum post-trade 1-day VaR in dollars at ``var_confidence``."""
    var_confidence: float = 0.95
    var_horizon_days: float = 1.0
    max_concentration: float = 0.30
    """Maximum single-position market value as a fraction of equity."""
    max_order_notional: Decimal = Decimal("1000000")
    max_order_qty: int = 1_000_000
    """Any order above this many shares is treated as a fat-finger and refused."""
    price_collar_pct: float = 0.10
    """Refuse when the last price is further than this from the reference price (session open)."""
    stale_price_seconds: float = 30.0
    """A price older than this is stale: no trade is approved on it."""
    max_orders_per_minute: int = 600

    def __post_init__(self) -> None:
        _require(self.var_limit > 0, "limits.var_limit must be > 0")
        _require(0.0 < self.var_confidence < 1.0, "limits.var_confidence must be in (0, 1)")
        _require(self.var_horizon_days > 0, "limits.var_horizon_days must be > 0")
        _require(0.0 < self.max_concentration <= 1.0, "limits.max_concentration must be in (0, 1]")
        _require(self.max_order_notional > 0, "limits.max_order_notional must be > 0")
        _require(self.max_order_qty > 0, "limits.max_order_qty must be > 0")
        _require(self.price_collar_pct > 0, "limits.price_collar_pct must be > 0")
        _require(self.stale_price_seconds > 0, "limits.stale_price_seconds must be > 0")
        _require(self.max_orders_per_minute > 0, "limits.max_orders_per_minute must be > 0")


@dataclass(frozen=True)
class Fees:
    """Commission charged on every fill: max(minimum, per_share * qty + bps * notional / 10_000)."""

    per_share: Decimal = Decimal("0.005")
    bps: Decimal = Decimal("0")
    minimum: Decimal = Decimal("1.00")

    def __post_init__(self) -> None:
        _require(self.per_share >= 0 and self.bps >= 0 and self.minimum >= 0, "fees must be >= 0")


@dataclass(frozen=True)
class PortfolioConfig:
    id: str
    cash: Decimal
    holdings: Mapping[str, int] = field(default_factory=dict)
    account_type: AccountType = "cash"
    initial_margin: float = 0.5
    """Margin accounts: fraction of gross exposure that must be posted (Reg T style 50%)."""
    maintenance_margin: float = 0.25
    limits: Limits = field(default_factory=Limits)
    """Filled from the global ``[limits]`` table, overridden by this portfolio's ``limits`` table."""

    def __post_init__(self) -> None:
        _require(_valid_ticker(self.id), f"invalid portfolio id {self.id!r}")
        _require(self.cash >= 0, f"portfolio {self.id}: cash must be >= 0")
        _require(0 < self.maintenance_margin <= self.initial_margin <= 1, f"portfolio {self.id}: margins")
        for ticker, qty in self.holdings.items():
            _require(isinstance(qty, int) and not isinstance(qty, bool), f"{self.id}: {ticker} qty must be int")
            _require(self.account_type == "margin" or qty >= 0, f"{self.id}: short {ticker} in a cash account")


@dataclass(frozen=True)
class Model:
    ewma_decay: float = 0.94
    """RiskMetrics λ of the EWMA covariance of one-bar log returns."""
    bar_interval_seconds: float = 2.0
    """Wall-clock seconds one one-minute model bar takes in the daemon (``--interval``)."""
    bars_per_day: int = 390
    """Trading minutes per day: daily figures scale one-bar volatility by sqrt(bars_per_day)."""
    trading_days_per_year: int = 252
    stress_vol_multiplier: float = 2.0
    stress_correlation_floor: float = 0.6
    liquidity_impact_coef: float = 0.1

    def __post_init__(self) -> None:
        _require(0.0 < self.ewma_decay < 1.0, "model.ewma_decay must be strictly between 0 and 1")
        _require(self.bar_interval_seconds >= 0, "model.bar_interval_seconds must be >= 0")
        _require(self.bars_per_day > 0 and self.trading_days_per_year > 0, "model bars/days must be > 0")
        _require(self.stress_vol_multiplier >= 1.0, "model.stress_vol_multiplier must be >= 1")
        _require(-1.0 < self.stress_correlation_floor < 1.0, "model.stress_correlation_floor in (-1, 1)")

    @property
    def bars_per_year(self) -> int:
        return self.bars_per_day * self.trading_days_per_year


@dataclass(frozen=True)
class StressScenario:
    """A named shock: ticker -> simple return; ``"*"`` applies to every ticker not named."""

    description: str
    shocks: Mapping[str, float]


@dataclass(frozen=True)
class AlertRule:
    """A threshold rule evaluated on every portfolio snapshot (see logic/alerts.py)."""

    id: str
    metric: str
    """Dotted path into the snapshot, e.g. ``var.var95`` or ``concentration.largest_share``."""
    op: Operator
    threshold: float
    severity: Severity
    description: str = ""
    pending_seconds: float = 0.0
    clear_seconds: float = 0.0
    stale_after_seconds: float = 60.0
    stale_policy: StalePolicy = "keep"
    portfolios: tuple[str, ...] = ("*",)
    actions: tuple[str, ...] = ()
    """Automated responses, e.g. ``"set_state:HALTED"``, ``"set_state:REDUCING"``, ``"reduce:0.25"``."""


@dataclass(frozen=True)
class MonitorConfig:
    timezone: str = "America/New_York"
    """Time zone in which the daily and weekly drawdown windows reset."""
    day_reset_hour: int = 0
    """Local hour at which a new day (and on Mondays a new week) starts for drawdown."""
    history_retention_days: float = 7.0
    history_max_points: int = 700_000
    """Safety cap on history length per portfolio (7 days at 1 point/s is ~605k)."""
    stale_snapshot_seconds: float = 30.0


@dataclass(frozen=True)
class StreamConfig:
    tick_stream_maxlen: int = 10_000
    """Approximate bound of the tick event stream (XADD MAXLEN ~)."""
    seed: int | None = None


@dataclass(frozen=True)
class RedisConfig:
    url: str | None = None
    """Use this server; when unset an embedded redis-server is started under ``data_dir``."""
    data_dir: str = "var"
    appendfsync: Literal["everysec", "always", "no"] = "everysec"


@dataclass(frozen=True)
class DashboardConfig:
    port: int = 8501
    refresh_seconds: float = 2.0


@dataclass(frozen=True)
class Settings:
    universe: Universe = field(default_factory=Universe)
    portfolios: tuple[PortfolioConfig, ...] = ()
    limits: Limits = field(default_factory=Limits)
    fees: Fees = field(default_factory=Fees)
    model: Model = field(default_factory=Model)
    stress_scenarios: Mapping[str, StressScenario] = field(default_factory=dict)
    alert_rules: tuple[AlertRule, ...] = ()
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Sections owned by later components (notifications, escalation) kept verbatim for their own parsers."""

    def __post_init__(self) -> None:
        ids = [p.id for p in self.portfolios]
        _require(len(ids) == len(set(ids)), "portfolio ids must be unique")
        for p in self.portfolios:
            unknown = set(p.holdings) - set(self.universe.assets)
            _require(not unknown, f"portfolio {p.id} holds tickers outside the universe: {sorted(unknown)}")
        for name, scenario in self.stress_scenarios.items():
            unknown = set(scenario.shocks) - set(self.universe.assets) - {"*"}
            _require(not unknown, f"stress scenario {name} shocks unknown tickers: {sorted(unknown)}")

    def portfolio(self, portfolio_id: str) -> PortfolioConfig:
        for p in self.portfolios:
            if p.id == portfolio_id:
                return p
        raise ConfigError(f"unknown portfolio {portfolio_id!r}; configured: {[p.id for p in self.portfolios]}")

    def limits_for(self, portfolio_id: str) -> Limits:
        """The portfolio's own limits when it is configured, else the global ones."""
        for p in self.portfolios:
            if p.id == portfolio_id:
                return p.limits
        return self.limits

    @property
    def portfolio_ids(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.portfolios)


# --------------------------------------------------------------------------------------------------------------
# Loading


def load_settings(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the settings file and apply environment overrides.

    Parameters
    ----------
    path:
        The TOML file. Default: ``$RISKDESK_CONFIG``, else ``riskdesk.toml`` in the working directory, else
        the ``riskdesk.toml`` shipped beside this package.
    env:
        The environment to read overrides from (default ``os.environ``); tests pass their own.
    """
    env = os.environ if env is None else env
    file = _resolve_config_path(path, env)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"settings file {file} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"settings file {file} is not valid TOML: {exc}") from exc
    return settings_from_dict(_apply_env(data, env))


def settings_from_dict(data: Mapping[str, Any]) -> Settings:
    """Build and validate :class:`Settings` from a plain dict shaped like ``riskdesk.toml``."""
    data = dict(data)
    global_limits = dict(data.get("limits", {}))
    portfolios = []
    for raw in data.get("portfolios", []):
        raw = dict(raw)
        raw["limits"] = {**global_limits, **raw.get("limits", {})}
        portfolios.append(raw)
    data["portfolios"] = portfolios
    known = {f.name for f in dataclasses.fields(Settings)}
    data["extra"] = {k: v for k, v in data.items() if k not in known}
    data = {k: v for k, v in data.items() if k in known}
    try:
        return _build(Settings, data, "settings")
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def _resolve_config_path(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    if path is not None:
        return Path(path)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    local = Path.cwd() / DEFAULT_CONFIG_FILE
    if local.exists():
        return local
    return Path(__file__).resolve().parent.parent / DEFAULT_CONFIG_FILE


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    if env.get("REDIS_URL"):
        data.setdefault("redis", {})["url"] = env["REDIS_URL"]
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: {part} is not a table in the settings")
            node = child
        node[path[-1]] = _parse_env_value(raw)
    return data


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


T = TypeVar("T")


def _build(tp: Any, value: Any, where: str) -> Any:
    """Convert plain TOML data to the annotated type ``tp``, refusing unknown keys and wrong types."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = set(value) - names
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {sorted(unknown)}; known: {sorted(names)}")
        kwargs = {k: _build(hints[k], v, f"{where}.{k}") for k, v in value.items()}
        try:
            return tp(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.detail}") from exc
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _build(non_none[0], value, where)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected an array")
        return tuple(_build(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp is Mapping:
        _key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table")
        return types.MappingProxyType({str(k): _build(val_tp, v, f"{where}.{k}") for k, v in value.items()})
    if tp is Any:
        return value
    if tp is Decimal:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{where}: expected a number")
        try:
            # str() first: Decimal(0.1) would carry the binary float's error into money
            result = Decimal(str(value))
        except InvalidOperation as exc:
            raise ConfigError(f"{where}: {value!r} is not a number") from exc
        if not result.is_finite():
            raise ConfigError(f"{where}: must be finite")
        return result
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be finite")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string")
        return value
    raise ConfigError(f"{where}: unsupported setting type {tp!r}")  # pragma: no cover - a bug in this module


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _valid_ticker(symbol: str) -> bool:
    return bool(symbol) and len(symbol) <= 32 and all(c.isalnum() or c in "._-" for c in symbol)


def valid_symbol(symbol: object) -> bool:
    """True for a syntactically valid ticker or portfolio id (letters, digits, ``._-``, at most 32)."""
    return isinstance(symbol, str) and _valid_ticker(symbol)
