"""The one settings object: universe, portfolios, limits, model, rules.

Settings are read once at a process's entry point from ``riskdesk.toml`` (path from ``RISKDESK_CONFIG``, else
``./riskdesk.toml``, else the built-in defaults below) and then passed down; nothing else in the tree holds a
limit, a ticker or a decay. The object is frozen. A portfolio's limits are seeded from here and can then be
changed live, versioned and audited, in the store (the Limits page, ``RiskManager.set_limits``, or an edited file
applied by ``python warmup.py --sync``): every process uses the stored version from its next check or tick.

Environment overrides (applied after the file):

- ``REDIS_URL`` sets ``redis.url`` (redis://, rediss://, unix://, with password);
- ``RISKDESK__SECTION__KEY=value`` sets any scalar, e.g. ``RISKDESK__LIMITS__VAR_LIMIT=75000`` or
  ``RISKDESK__MODEL__EWMA_DECAY=0.97``. The value is parsed as a TOML literal when it is one (numbers,
  booleans, quoted strings, arrays), else taken as a plain string; a table's keys (tickers) keep their case.

Validation
----------
Every section is a frozen pydantic dataclass (``extra="forbid"``: an unknown key is an error), so the file, the
environment and the other config sections (:mod:`notifications.config`, :mod:`logic.escalation`) are checked
one way: :func:`validate_config` runs the validation and turns every failure into one
:class:`~engine.errors.ConfigError` naming each bad setting by its path, e.g.
``portfolios[1].limits.var_limit: Input should be greater than 0``. Numbers are strict (a quoted ``"5"`` is not
a number) and finite; money is an exact :class:`~decimal.Decimal` (a float literal goes through ``str()``
first, so ``0.1`` is ``Decimal("0.1")``).

The top level is checked too (:func:`check_sections`): an unknown section (``[limit]``, ``[[alert_rule]]``,
``[notification]``) is an error naming the nearest valid one, and a settings file must configure at least one
portfolio and mention ``alert_rules`` (``alert_rules = []`` for none): :func:`check_file_sections`.

Pydantic *dataclasses* rather than ``BaseModel`` because the rest of the tree treats settings as dataclasses:
``dataclasses.fields`` / ``asdict`` / ``replace`` and positional construction (``Fees(a, b, c)``) keep working,
and assigning to a field raises ``FrozenInstanceError`` (an ``AttributeError``). ``dataclasses.replace`` re-runs
the validation.

Why not pydantic-settings' sources: today's environment semantics are not theirs. Values are TOML literals
(so ``RISKDESK__MODEL__BARS_PER_DAY=many`` is refused like the same string in the file, while the file stays
strict), the environment comes from an explicit mapping (tests pass their own), ``REDIS_URL`` maps to
``redis.url``, a missing file named explicitly is an error, and the global ``[limits]`` are merged into every
portfolio *after* the overrides. Expressing that with ``EnvSettingsSource`` means overriding its private
``_load_env_vars`` and value decoding; the 30 lines of :func:`load_settings` below say it directly.
"""

from __future__ import annotations

import difflib
import functools
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import field, fields, is_dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    TypeAdapter,
    ValidationError,
)
from pydantic.dataclasses import dataclass

from engine.defaults import (
    BARS_PER_DAY,
    BASEL_OBSERVATIONS,
    EWMA_DECAY,
    LIQUIDITY_IMPACT_COEF,
    STRESS_CORRELATION_FLOOR,
    STRESS_VOL_MULTIPLIER,
    TRADING_DAYS_PER_YEAR,
    VAR_CONFIDENCE,
)
from engine.errors import ConfigError
from engine.records import AccountType, Channel, Severity, VarMethod
from engine.settings_ops import (  # noqa: F401  (re-exported: the one settings module)
    DEFAULT_HISTORY_TIERS,
    AccessConfig,
    AccessGrant,
    DashboardConfig,
    HistoryConfig,
    HistoryTier,
    Market,
    MetricsConfig,
    MonitorConfig,
    RedisConfig,
    StreamConfig,
)
from engine.settings_types import (  # noqa: F401  (re-exported: the one settings module)
    CONFIG,
    MAX_QUANTITY,
    CollarReference,
    Flag,
    Integer,
    Money,
    Number,
    Seconds,
    T,
    Table,
    Text,
    _require,
    at_least,
    check_identifiers,
    env_path,
    unwrap_type,
    valid_id,
)

ENV_PREFIX = "RISKDESK__"
EXTRA_SECTIONS = frozenset({"notifications", "escalation"})
"""Top-level sections owned by the layers above the engine, kept in :attr:`Settings.extra`: with the fields of
:class:`Settings` the only top-level names a settings file may use (a typo such as ``[limit]`` is an error)."""
CONFIG_ENV = "RISKDESK_CONFIG"
DEFAULT_CONFIG_FILE = "riskdesk.toml"

Operator = Literal["<", "<=", ">", ">=", "=="]
"""Comparison of an alert rule (``metric op threshold``)."""
StalePolicy = Literal["keep", "fire"]
"""What an alert rule does when its metric is stale: hold its state, or fire."""


# -- sections ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, config=CONFIG)
class Asset:
    """One tradable instrument of the universe."""

    price: Annotated[Number, Field(gt=0)]
    """Initial price used by the warm-up (and by the simulated feed as its starting point)."""
    annual_vol: Annotated[Number, Field(gt=0)]
    """Annualised volatility used to seed the covariance and drive the simulated feed."""
    avg_daily_volume: Annotated[Number, Field(gt=0)] = 5_000_000.0
    """Average daily traded shares, for the square-root market-impact estimate."""
    spread_bps: Annotated[Number, Field(ge=0)] = 2.0
    """Quoted bid/ask spread in basis points of the price, for the half-spread cost."""


@dataclass(frozen=True, config=CONFIG)
class Universe:
    assets: Table[Asset] = field(default_factory=dict)
    """Ticker -> asset; the order here is the order of the covariance matrix at warm-up."""
    correlation: Annotated[Number, Field(gt=-1, lt=1)] = 0.3
    """Target pairwise correlation used to seed the covariance and the simulated feed."""

    def __post_init__(self) -> None:
        for ticker in self.assets:
            _require(_valid_ticker(ticker), f"invalid ticker symbol {ticker!r}")

    @property
    def tickers(self) -> tuple[str, ...]:
        return tuple(self.assets)


MIN_VAR_CONFIDENCE = 0.8
"""Lowest ``limits.var_confidence``: a confidence at or below 0.5 makes the VaR zero or negative (a VaR limit that
never refuses), and a tail probability typed for the confidence (0.05 for 95%) is one."""
MAX_STALE_PRICE_SECONDS = 86_400.0
"""Highest ``limits.stale_price_seconds`` (one day): a price older than a day is never live; a larger number is a
typo that switches the stale-price control off. (A replay of daily or weekly closes plays them as model bars of
``model.bar_seconds``, and the gate reads the replay's clock: its prices are as fresh as a live feed's.)"""
MAX_PRICE_COLLAR = 0.5
"""Highest ``limits.price_collar_pct`` (a fraction: 0.10 = 10%): a collar of 1 or more can never refuse a falling
price, so 10 for "10%" would switch the collar off."""
MIN_ORDER_ID_RETENTION_DAYS = 1.0
"""Lowest ``limits.order_id_retention_days``: idempotency records kept for less than a day would let a client's
retry of the same order id fill a second time."""
MIN_MARGIN_FLOOR = 100.0
"""Lowest ``limits.min_margin_level_after`` but 0 (off): a percentage (150 = 150%); a floor under 100% never binds
(the initial margin check refuses first), so 1.5 for "150%" would switch the floor off."""
MAX_ORDERS_PER_MINUTE = 100_000
"""Highest ``limits.max_orders_per_minute`` (about 1,700 a second, beyond what one portfolio's gate fills): a
larger number is a typo that switches the order-rate throttle off."""
MIN_PRICE_SANITY_FACTOR, MAX_PRICE_SANITY_FACTOR = 2.0, 1000.0
"""Bounds of ``limits.price_sanity_factor``: under 2 it overlaps the widest collar and refuses, unwaived, moves the
collar judges (1.1 for "10%"); over 1000 it is a typo that switches the control off (1e9)."""


def _var_confidence(value: float) -> float:
    _require(
        MIN_VAR_CONFIDENCE <= value < 1,
        f"must be >= {MIN_VAR_CONFIDENCE:g} and < 1: the confidence level (0.95 for 95%), not the tail probability "
        f"(0.05), got {value:g}",
    )
    return value


def _stale_price_seconds(value: float) -> float:
    _require(
        0 < value <= MAX_STALE_PRICE_SECONDS,
        f"must be > 0 and <= {MAX_STALE_PRICE_SECONDS:,.0f} seconds (one day), got {value:g}",
    )
    return value


def _price_collar(value: float) -> float:
    _require(
        0 < value <= MAX_PRICE_COLLAR,
        f"must be > 0 and <= {MAX_PRICE_COLLAR:g}: a fraction of the reference price (0.10 for 10%), got {value:g}",
    )
    return value


def _order_id_retention_days(value: float) -> float:
    _require(
        value >= MIN_ORDER_ID_RETENTION_DAYS,
        f"must be >= {MIN_ORDER_ID_RETENTION_DAYS:g} day (a retried order id must still be known), got {value:g}",
    )
    return value


def _margin_floor(value: float) -> float:
    _require(
        value == 0 or value >= MIN_MARGIN_FLOOR,
        f"must be 0 (no floor) or >= {MIN_MARGIN_FLOOR:g}: a percentage (150 for 150%), got {value:g}",
    )
    return value


def _orders_per_minute(value: int) -> int:
    _require(0 < value <= MAX_ORDERS_PER_MINUTE, f"must be > 0 and <= {MAX_ORDERS_PER_MINUTE:,d}, got {value:,d}")
    return value


def _price_sanity_factor(value: float) -> float:
    low, high = MIN_PRICE_SANITY_FACTOR, MAX_PRICE_SANITY_FACTOR
    _require(low <= value <= high, f"must be >= {low:g} and <= {high:g} (a multiple: 10 for 10x), got {value:g}")
    return value


@dataclass(frozen=True, config=CONFIG)
class Limits:
    """Pre-trade limits. Each portfolio may override any of them in its own ``limits`` table.

    The fail-closed controls are bounded where a typo would switch them off (a percent typed as a fraction, a
    tail probability for a confidence): :data:`MIN_VAR_CONFIDENCE`, :data:`MAX_STALE_PRICE_SECONDS`,
    :data:`MAX_PRICE_COLLAR`, :data:`MIN_ORDER_ID_RETENTION_DAYS`, :data:`MIN_MARGIN_FLOOR`,
    :data:`MAX_ORDERS_PER_MINUTE`, :data:`MIN_PRICE_SANITY_FACTOR` / :data:`MAX_PRICE_SANITY_FACTOR`.
    """

    var_limit: Annotated[Money, Field(gt=0)] = Decimal("50000")
    """Maximum post-trade 1-day VaR in dollars at ``var_confidence``."""
    var_confidence: Annotated[Number, AfterValidator(_var_confidence)] = VAR_CONFIDENCE
    """Confidence level of the VaR (0.95 = 95%), in [:data:`MIN_VAR_CONFIDENCE`, 1)."""
    var_horizon_days: Annotated[Number, Field(gt=0)] = 1.0
    max_concentration: Annotated[Number, Field(gt=0, le=1)] = 0.30
    """Maximum single-position market value as a fraction of equity."""
    max_order_notional: Annotated[Money, Field(gt=0)] = Decimal("1000000")
    max_order_qty: Annotated[Integer, Field(gt=0, le=MAX_QUANTITY)] = 1_000_000
    """Any order above this many shares is treated as a fat-finger and refused."""
    price_collar_pct: Annotated[Number, AfterValidator(_price_collar)] = 0.10
    """Refuse when the last price is further than this fraction from the reference price (session open); at most
    :data:`MAX_PRICE_COLLAR`."""
    price_sanity_factor: Annotated[Number, AfterValidator(_price_sanity_factor)] = 10.0
    """Refuse every order (``PRICE_SANITY``, never waived) on a ticker whose last price is more than this many times,
    or under 1/this, of the collar's reference (cents for dollars, a bad print); in [2, 1000]."""
    stale_price_seconds: Annotated[Number, AfterValidator(_stale_price_seconds)] = 150.0
    """A price older than this is stale: no trade is approved on it. Keep it above one live bar
    (``model.bar_seconds``, 60 s): the default allows two and a half bars. At most :data:`MAX_STALE_PRICE_SECONDS`."""
    max_orders_per_minute: Annotated[Integer, AfterValidator(_orders_per_minute)] = 600
    """Fills a portfolio may make in the trailing minute; at most :data:`MAX_ORDERS_PER_MINUTE`."""
    collar_reference: CollarReference = "session_open"
    """The collar's reference price: ``session_open`` (the previous session's close, re-anchored at every
    session open) or ``rolling:N`` (the price N bars earlier in the session; the previous close until then)."""
    outside_session: Literal["reject", "allow"] = "allow"
    """A trade checked outside a session of ``market.calendar``: refused (``MARKET_CLOSED``) or checked as usual."""
    max_gross_leverage: Annotated[Number, Field(gt=0)] | None = None
    """Gross exposure / equity after a trade that grows the gross exposure; None: no limit."""
    stressed_var_limit: Annotated[Money, Field(gt=0)] | None = None
    """Maximum post-trade stressed VaR (the worse of the stored stressed matrix and of today's correlations at
    multiplied volatilities) of a trade that adds it; None: no limit."""
    max_daily_loss: Annotated[Money, Field(gt=0)] | None = None
    """Once today's loss (equity - the monitor's day-open equity) reaches it, only risk-reducing trades pass."""
    max_position_qty: Annotated[Integer, Field(gt=0, le=MAX_QUANTITY)] | None = None
    """Largest absolute position in shares of any ticker a trade may grow to; None: no limit."""
    position_limits: Table[Annotated[Integer, Field(gt=0, le=MAX_QUANTITY)]] = field(default_factory=dict)
    """Ticker -> largest absolute position in shares (overrides ``max_position_qty`` for that ticker)."""
    min_margin_level_after: Annotated[Number, AfterValidator(_margin_floor)] = 150.0
    """Margin accounts: equity / (gross x initial margin) x 100 after a trade that grows the gross exposure; 0
    (no floor) or at least :data:`MIN_MARGIN_FLOOR`."""
    reducing_allows_hedges: Flag = True
    """In REDUCING, also accept trades that lower the portfolio VaR (not only those shrinking a position)."""
    order_id_retention_days: Annotated[Number, AfterValidator(_order_id_retention_days)] = 7.0
    """Idempotency records (client order id -> result) older than this are pruned by the monitor: a retry of
    an order id after that long is a new order."""


@dataclass(frozen=True, config=CONFIG)
class Fees:
    """Commission charged on every fill: max(minimum, per_share * qty + bps * notional / 10_000)."""

    per_share: Annotated[Money, Field(ge=0)] = Decimal("0.005")
    bps: Annotated[Money, Field(ge=0)] = Decimal("0")
    minimum: Annotated[Money, Field(ge=0)] = Decimal("1.00")


@dataclass(frozen=True, config=CONFIG)
class PortfolioConfig:
    id: Text
    cash: Annotated[Money, Field(ge=0)]
    holdings: Table[Integer] = field(default_factory=dict)
    account_type: AccountType = AccountType.CASH
    initial_margin: Number = 0.5
    """Margin accounts: fraction of gross exposure that must be posted (Reg T style 50%)."""
    maintenance_margin: Number = 0.25
    limits: Limits = field(default_factory=Limits)
    """Filled from the global ``[limits]`` table, overridden by this portfolio's ``limits`` table."""
    var_method: VarMethod | None = None
    """VaR method of this portfolio (snapshot, gate, pages); unset: ``model.var_method``."""

    def __post_init__(self) -> None:
        _require(_valid_ticker(self.id), f"invalid portfolio id {self.id!r}")
        _require(0 < self.maintenance_margin <= self.initial_margin <= 1, f"portfolio {self.id}: margins")
        for ticker, qty in self.holdings.items():
            _require(
                self.account_type == AccountType.MARGIN or qty >= 0, f"{self.id}: short {ticker} in a cash account"
            )


def _zone_min_observations(value: int) -> int:
    _require(
        1 <= value <= BASEL_OBSERVATIONS,
        f"must be between 1 and {BASEL_OBSERVATIONS} (the backtest's rolling window of observations), got {value}",
    )
    return value


@dataclass(frozen=True, config=CONFIG)
class Model:
    ewma_decay: Annotated[Number, Field(gt=0, lt=1)] = EWMA_DECAY
    """RiskMetrics λ of the EWMA covariance of one-bar log returns."""
    bar_seconds: Annotated[Number, Field(gt=0)] = 60.0
    """Length of one model bar in seconds: the bar is one minute, so a live feed (any feed that is not a replay)
    plays one bar per 60 s of wall time and model time matches wall time."""
    demo_clock_seconds: Annotated[Number, Field(ge=0)] | None = None
    """Compressed demo clock: when set, a live feed plays one model bar every this many wall seconds instead of
    ``bar_seconds`` (``make run`` uses 2 s for a lively demo); the dashboard then says so on every page.
    0 plays as fast as possible (tests)."""
    bars_per_day: Annotated[Integer, Field(gt=0)] = BARS_PER_DAY
    """Trading minutes per day: daily figures scale one-bar volatility by sqrt(bars_per_day) (with
    ``night_variance_share`` a bar's variance carries its share of the night, so a day is close to close)."""
    trading_days_per_year: Annotated[Integer, Field(gt=0)] = TRADING_DAYS_PER_YEAR
    night_variance_share: Annotated[Number, Field(ge=0, le=10)] = 0.0
    """Variance of a night (a session's close to the next open: a weekend or a holiday is one night) as a share of
    one session's (open to close variance), for a feed whose bar is shorter than a session on a calendar with
    sessions (:func:`engine.math_logic.session_spans`: a return across a night is scaled to one bar by the
    variance it spans, and a day of ``bars_per_day`` bars includes its night). 0: a night is no time, its return
    enters the model as one more bar (a -3 % opening gap of a 20 %-vol stock, 47 one-minute sigmas, multiplies
    the ticker's one-bar volatility by about 12). riskdesk.toml sets the value calibrated on real daily opens
    and closes (:func:`engine.math_logic.night_variance_share`, README "Nights")."""
    stress_vol_multiplier: Annotated[Number, Field(ge=1)] = STRESS_VOL_MULTIPLIER
    stress_correlation_floor: Annotated[Number, Field(gt=-1, lt=1)] = STRESS_CORRELATION_FLOOR
    liquidity_impact_coef: Number = LIQUIDITY_IMPACT_COEF
    var_method: VarMethod = VarMethod.NORMAL
    """How VaR / CVaR are computed (``normal``, ``student_t``, ``fhs``: :mod:`logic.var_methods`); a portfolio
    may override it with its own ``var_method``."""
    fhs_window: Annotated[Integer, Field(ge=20)] = 500
    """Standardized one-bar returns kept per ticker (the FHS scenarios and the Student-t fit)."""
    backtest_methods: Annotated[tuple[VarMethod, ...], Field(min_length=1)] = tuple(VarMethod)
    """Methods the monitor's continuous backtest runs side by side on the same P&L."""
    backtest_confidence: Annotated[Number, Field(gt=0, lt=1)] = 0.99
    """Confidence of the VaR the continuous backtest checks (the Basel zones are defined at 99%)."""
    backtest_zone_min_observations: Annotated[Integer, AfterValidator(_zone_min_observations)] = BASEL_OBSERVATIONS
    """Fewest observations the continuous backtest's rolling window must hold before it gives a Basel zone (the
    zone is null before: ``backtest.zone`` rules do not apply). Between 1 and the rolling window,
    :data:`~engine.defaults.BASEL_OBSERVATIONS` (250): the Basel framework is defined on 250 observations, and
    at a handful the binomial rule is no verdict (one exceedance in two observations has ``F(1) = 0.9999``: red)."""

    @property
    def bars_per_year(self) -> int:
        return self.bars_per_day * self.trading_days_per_year

    @property
    def bar_interval_seconds(self) -> float:
        """Wall seconds per model bar of a live feed: the demo clock when one is set, else ``bar_seconds``."""
        return float(self.bar_seconds if self.demo_clock_seconds is None else self.demo_clock_seconds)

    @property
    def compressed_clock(self) -> bool:
        """True when a live feed does not play model time at wall-clock speed (an explicit demo option)."""
        return self.bar_interval_seconds != self.bar_seconds


@dataclass(frozen=True, config=CONFIG)
class StressScenario:
    """A named shock: ticker -> simple return; ``"*"`` applies to every ticker not named."""

    description: Text
    shocks: Table[Number]


ARCHIVE_KEEP_SECONDS = 30 * 86_400.0
"""Default age (by stream id) past which an audit record leaves Redis for the archive: the Audit page's longest
time window (30 days) stays in Redis."""
ARCHIVE_KEEP_ENTRIES = 100_000
"""Default count of the newest records each audit stream keeps in Redis (the old ``MAXLEN ~`` of the audit
streams, now a bound applied only after archiving)."""


def _archive_directory(value: str) -> str:
    _require(bool(value.strip()) and "\0" not in value, "must be a non-empty path (unset: <redis.data_dir>/archive)")
    return value


@dataclass(frozen=True, config=CONFIG)
class ArchiveConfig:
    """The audit trail's archive (``[archive]``, engine/archive.py): the audit streams' older records are copied
    to append-only JSON Lines files under ``directory`` and only then trimmed from Redis.

    A record stays in Redis while it is at most ``keep_seconds`` old and among the newest ``keep_entries`` of
    its stream; past either bound it is archived (and then trimmed)."""

    directory: Annotated[Text, AfterValidator(_archive_directory)] | None = None
    """Root of the archive (one folder per stream, one file per UTC day); unset: ``<redis.data_dir>/archive``. A
    relative path is relative to the working directory (the repository for ``make run``). Give each store its
    own directory (the default does)."""
    keep_seconds: Seconds = ARCHIVE_KEEP_SECONDS
    """Records older than this (seconds, by their stream id's time) are archived."""
    keep_entries: Annotated[Integer, Field(ge=0)] = ARCHIVE_KEEP_ENTRIES
    """Each stream keeps at most its newest this-many records in Redis (the refused-check, delivery and trade logs
    at most their own bounds too, engine/store/audit.py); the older ones are archived."""
    interval_seconds: Annotated[Number, Field(gt=0)] = 60.0
    """How often the archiver runs (wall seconds)."""


ALL_PORTFOLIOS = "*"
LIMIT_PREFIX = "limits."
"""An alert rule's threshold ``"limits.<field>"`` follows the portfolio's live limit of that name (the
fields a rule may follow, with their units: ``logic.rules.LIMIT_THRESHOLDS``)."""
DEFAULT_CLEAR_SECONDS = 60.0
"""Default clear period of an alert rule, in data seconds: the metric must be back this long before the alert
resolves by itself, so an alert does not flap on a figure hovering at its threshold (0 = at once)."""
"""An alert rule's ``portfolios`` entry meaning every portfolio."""


@dataclass(frozen=True, config=CONFIG)
class AlertRule:
    """A threshold rule evaluated on every portfolio snapshot (see logic/alerts.py).

    The checks that need nothing outside the settings are made here (operator, severity, finite threshold,
    durations, stale policy, portfolio ids, description length, id syntax); the metric path and the action
    texts are checked against the snapshot and the automated responses by ``logic.alerts.validate_rule``.
    """

    id: Text
    metric: Text
    """Dotted path into the snapshot, e.g. ``var.var95`` or ``concentration.largest_share``."""
    op: Operator
    threshold: Number | Text
    """A number, or ``"limits.<field>"``: the portfolio's live limit of that name (``logic.rules.LIMIT_THRESHOLDS``),
    resolved at every evaluation (``logic.rules.resolve_threshold``)."""
    severity: Severity
    description: Text = ""
    pending_seconds: Seconds = 0.0
    clear_seconds: Seconds = DEFAULT_CLEAR_SECONDS
    stale_after_seconds: Annotated[Seconds, Field(gt=0)] = 60.0
    stale_policy: StalePolicy = "keep"
    portfolios: tuple[Text, ...] = (ALL_PORTFOLIOS,)
    actions: tuple[Text, ...] = ()
    """Automated responses, e.g. ``"set_state:HALTED"``, ``"set_state:REDUCING"``, ``"reduce:0.25"``."""
    threshold_fraction: Number = 1.0
    """With a ``limits.<field>`` threshold: the fraction of the limit (0.8 = 80% of it; -1 for a loss limit
    compared with a negative P&L). Must stay 1 with a numeric threshold."""
    channels: tuple[Channel, ...] = ()
    """The channels of the rule's first notification; empty: the severity's escalation policy (``[escalation]``)."""
    recipients: tuple[Text, ...] = ()
    """The recipients of the rule's first notification; empty: the severity's escalation policy."""

    def __post_init__(self) -> None:
        if isinstance(self.threshold, str):
            name = self.threshold.removeprefix(LIMIT_PREFIX)
            ok = self.threshold.startswith(LIMIT_PREFIX) and name in {f.name for f in fields(Limits)}
            _require(ok, f"threshold {self.threshold!r}: a number or limits.<a field of [limits]>")
            _require(self.threshold_fraction != 0, "threshold_fraction must not be 0")
        else:
            _require(self.threshold_fraction == 1.0, "threshold_fraction applies only to a limits.<field> threshold")
        _require(valid_symbol(self.id), f"rule id {self.id!r}: use 1-32 letters, digits, '.', '_' or '-'")
        _require(len(self.description) <= 500, "description must be text of at most 500 characters")
        _require(bool(self.portfolios), 'portfolios must be a non-empty list of portfolio ids, or ["*"] for all')
        for pid in self.portfolios:
            _require(pid == ALL_PORTFOLIOS or valid_symbol(pid), f"portfolios: {pid!r} is not a portfolio id")
        _require(
            ALL_PORTFOLIOS not in self.portfolios or len(self.portfolios) == 1,
            'portfolios: "*" (all) cannot be combined with named portfolios',
        )


@dataclass(frozen=True, config=CONFIG)
class Settings:
    universe: Universe = field(default_factory=Universe)
    portfolios: tuple[PortfolioConfig, ...] = ()
    limits: Limits = field(default_factory=Limits)
    fees: Fees = field(default_factory=Fees)
    model: Model = field(default_factory=Model)
    stress_scenarios: Table[StressScenario] = field(default_factory=dict)
    alert_rules: tuple[AlertRule, ...] = ()
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    market: Market = field(default_factory=Market)
    access: AccessConfig = field(default_factory=AccessConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    extra: Table[Any] = field(default_factory=dict)
    """Sections owned by other components (``notifications``, ``escalation``) kept verbatim for their own
    validation (:func:`notifications.config.notification_config`, :func:`logic.escalation.escalation_config`):
    the engine does not import the layers above it."""
    history: HistoryConfig = field(default_factory=HistoryConfig)
    """Tiered retention of the monitor's history (``[history]``)."""
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    """Retention of the audit trail: what stays in Redis, where the rest is archived (``[archive]``)."""

    def __post_init__(self) -> None:
        check_identifiers(self)  # ids and tickers unique case aside, position_limits on tickers, holdings bounded
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

    @functools.cached_property
    def _portfolio_index(self) -> dict[str, PortfolioConfig]:
        """Portfolio id -> its table (the first one of that id), so the per-portfolio lookups are O(1): the
        monitor asks for every portfolio on every tick."""
        index: dict[str, PortfolioConfig] = {}
        for p in self.portfolios:
            index.setdefault(p.id, p)
        return index

    def limits_for(self, portfolio_id: str) -> Limits:
        """The portfolio's own limits when it is configured, else the global ones."""
        p = self._portfolio_index.get(portfolio_id)
        return p.limits if p is not None else self.limits

    def var_method_for(self, portfolio_id: str) -> VarMethod:
        """The portfolio's own ``var_method`` when it sets one, else ``model.var_method``."""
        p = self._portfolio_index.get(portfolio_id)
        return p.var_method if p is not None and p.var_method is not None else self.model.var_method

    @property
    def portfolio_ids(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.portfolios)


# -- validation --------------------------------------------------------------------------------------------------


def validate_config(tp: type[T], data: Any, where: str, context: Mapping[str, Any] | None = None) -> T:
    """Validate plain TOML-shaped ``data`` as ``tp`` (a settings dataclass or any annotated type).

    Parameters
    ----------
    tp:
        The type to build.
    data:
        Plain data as TOML reads it.
    where:
        The path of ``data`` in the settings, the prefix of every message (``"settings"``, ``"notifications"``).
    context:
        Passed to the validators (``logic.escalation`` passes the recipients notifications knows).

    Raises
    ------
    ConfigError
        One message listing every invalid setting by its path, e.g.
        ``portfolios[1].limits.var_limit: limits.var_limit must be > 0``.
    """
    try:
        return typing.cast(T, _adapter(tp).validate_python(data, context=dict(context or {})))
    except ValidationError as exc:
        raise config_error(tp, exc.errors(include_url=False), where) from None


def config_error(tp: Any, errors: list[Any], where: str) -> ConfigError:
    """One :class:`ConfigError` naming every error of pydantic's ``errors()`` list by its path."""
    return ConfigError("; ".join(_describe(tp, error, where) for error in _merge_unknown(errors)))


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(tp: Any) -> TypeAdapter[Any]:
    # building an adapter compiles the validator: once per type, not once per call
    try:
        return _ADAPTERS[tp]
    except (KeyError, TypeError):
        adapter: TypeAdapter[Any] = TypeAdapter(tp)
        try:
            _ADAPTERS[tp] = adapter
        except TypeError:  # pragma: no cover - an unhashable annotation
            pass
        return adapter


_UNKNOWN = frozenset({"unexpected_keyword_argument", "extra_forbidden"})


def _merge_unknown(errors: list[Any]) -> list[dict[str, Any]]:
    """The errors, with the unknown keys of one table folded into one error located at the table."""
    out: list[dict[str, Any]] = []
    unknown: dict[tuple[Any, ...], dict[str, Any]] = {}
    for error in errors:
        if error["type"] in _UNKNOWN:
            table = tuple(error["loc"][:-1])
            if table not in unknown:
                unknown[table] = {"type": "unknown", "loc": table, "keys": []}
                out.append(unknown[table])
            unknown[table]["keys"].append(str(error["loc"][-1]))
        else:
            out.append(dict(error))
    return out


def _describe(tp: Any, error: Mapping[str, Any], where: str) -> str:
    loc = tuple(error["loc"])
    path = where + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    if error["type"] == "unknown":
        known = sorted(_field_names(tp, loc))
        return f"{path}: unknown setting(s) {sorted(error['keys'])}; known: {known}"
    if error["type"] in ("literal_error", "enum"):
        return f"{path}: {error['input']!r} is not one of {error['ctx']['expected'].replace(' or ', ', ')}"
    if error["type"] in ("tuple_type", "list_type"):
        return f"{path}: expected an array, got {type(error['input']).__name__}"
    if error["type"] == "dataclass_type":
        return f"{path}: expected a table, got {type(error['input']).__name__}"
    if error["type"] == "missing_keyword_only_argument" or error["type"] == "missing_argument":
        return f"{path}: required"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{path}: {message}"


def _field_names(tp: Any, loc: tuple[Any, ...]) -> set[str]:
    """The field names of the dataclass found at ``loc`` below ``tp`` (for an "unknown setting" message)."""
    tp = unwrap_type(tp)
    for part in loc:
        if is_dataclass(tp) and isinstance(tp, type):
            tp = unwrap_type(typing.get_type_hints(tp, include_extras=True).get(str(part), Any))
        elif typing.get_origin(tp) in (tuple, Mapping, dict):
            tp = unwrap_type(typing.get_args(tp)[-1 if typing.get_origin(tp) is not tuple else 0])
        else:
            return set()
    return {f.name for f in fields(tp)} if is_dataclass(tp) and isinstance(tp, type) else set()


# -- loading -----------------------------------------------------------------------------------------------------


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
    data = _apply_env(data, env)
    check_sections(data)  # a typo first: [portfolio] is reported as such, not as "no portfolio"
    check_file_sections(data, file)
    return settings_from_dict(data)


def settings_from_dict(data: Mapping[str, Any]) -> Settings:
    """Build and validate :class:`Settings` from a plain dict shaped like ``riskdesk.toml``.

    Each portfolio's ``limits`` start from the global ``[limits]`` table; the other components' sections
    (:data:`EXTRA_SECTIONS`) go to :attr:`Settings.extra` unchanged; any other top-level name is an error naming
    the nearest valid section. (A *file* must also configure a portfolio and mention ``alert_rules``:
    :func:`load_settings`.)
    """
    data = dict(data)
    global_limits = data.get("limits", {})
    portfolios = data.get("portfolios", [])
    if isinstance(global_limits, Mapping) and isinstance(portfolios, list):
        data["portfolios"] = [
            {**raw, "limits": {**global_limits, **raw.get("limits", {})}}
            if isinstance(raw, Mapping) and isinstance(raw.get("limits", {}), Mapping)
            else raw
            for raw in portfolios
        ]
    known = {f.name for f in fields(Settings)}
    check_sections(data)
    data["extra"] = {k: v for k, v in data.items() if k not in known}
    data = {k: v for k, v in data.items() if k in known}
    try:
        return typing.cast(Settings, _adapter(Settings).validate_python(data))
    except ValidationError as exc:
        errors = [e for e in exc.errors(include_url=False) if not _inherited(e["loc"], portfolios)]
        raise config_error(Settings, errors, "settings") from None


def top_level_sections() -> frozenset[str]:
    """Every top-level name a settings file may use: the fields of :class:`Settings` and :data:`EXTRA_SECTIONS`."""
    return frozenset(f.name for f in fields(Settings) if f.name != "extra") | EXTRA_SECTIONS


def check_sections(data: Mapping[str, Any]) -> None:
    """Refuse unknown top-level sections, naming the nearest valid one (``[limit]``: did you mean ``limits``?):
    a misspelled section would otherwise be ignored, e.g. leaving the desk without its circuit breakers."""
    valid = top_level_sections()
    problems = []
    for name in sorted(str(k) for k in data if k not in valid):
        close = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"valid sections: {', '.join(sorted(valid))}"
        problems.append(f"{name}: unknown top-level section ({hint})")
    if problems:
        raise ConfigError("invalid settings: " + "; ".join(problems))


def check_file_sections(data: Mapping[str, Any], file: Path) -> None:
    """What a settings *file* must say explicitly: at least one portfolio, and its alert rules (``alert_rules =
    []`` for none, so a misspelled ``[[alert_rule]]`` cannot leave the desk with zero circuit breakers)."""
    problems = []
    portfolios = data.get("portfolios")
    if not isinstance(portfolios, list) or not portfolios:
        problems.append("portfolios: no portfolio is configured (add a [[portfolios]] table)")
    if "alert_rules" not in data:
        problems.append(
            "alert_rules: the file never mentions alert_rules; add [[alert_rules]] tables, or `alert_rules = []` "
            "to run without any alert rule"
        )
    if problems:
        raise ConfigError(f"settings file {file}: " + "; ".join(problems))


def _inherited(loc: tuple[Any, ...], portfolios: Any) -> bool:
    """An error in a portfolio's limits about a key it took from ``[limits]``: reported there, not again here."""
    if len(loc) < 4 or loc[0] != "portfolios" or loc[2] != "limits" or not isinstance(portfolios, list):
        return False
    own = portfolios[loc[1]].get("limits", {}) if isinstance(portfolios[loc[1]], Mapping) else {}
    return isinstance(own, Mapping) and loc[3] not in own


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
        path = env_path(Settings, data, [part for part in name[len(ENV_PREFIX) :].split("__") if part])
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


def _valid_ticker(symbol: str) -> bool:
    return valid_id(symbol)


def valid_symbol(symbol: object) -> bool:
    """True for a syntactically valid ticker or portfolio id (ASCII letters, digits, ``._-``, at most 32)."""
    return isinstance(symbol, str) and _valid_ticker(symbol)
