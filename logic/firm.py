"""The firm: every portfolio together. Firm VaR with diversification, exposure by ticker, the worst drawdowns,
each portfolio's traffic lights, and the desk-wide kill switch (HALT ALL / REDUCE ALL).

:class:`Firm` sits beside :class:`logic.risk_manager.RiskManager` (which looks at one portfolio) and is built
the same way: ``Firm(redis, settings, clock)``.

Risk figures
------------
Every portfolio's books are read in one transaction (:meth:`engine.store.Store.read_portfolio_bundles`) and
marked at one market snapshot. With ``xₚ`` the dollar exposure vector of portfolio ``p`` (aligned with the
matrix's tickers; a held ticker without a usable price counts 0 and is listed in ``FirmRisk.missing_prices``,
which the Firm page shows as an understated figure) and ``Σ`` the EWMA covariance of
one-bar returns, at the firm's confidence ``c`` and horizon ``h`` bars (the global ``[limits]``: one yardstick
for every portfolio, so the figures add up)::

    firm VaR         z_c · sqrt(h · x'Σx),      x = Σₚ xₚ   (exposures summed across portfolios: netting)
    stand-alone VaR  z_c · sqrt(h · xₚ'Σxₚ)
    diversification  Σₚ stand-alone VaR − firm VaR  (>= 0: the norm sqrt(x'Σx) is subadditive)

Gross and net exposure by ticker: ``Σₚ |xₚ,ᵢ|`` and ``Σₚ xₚ,ᵢ``. Drawdowns and traffic lights come from the
monitor's latest snapshot of each portfolio (:func:`logic.analytics.traffic_lights`).

Kill switch
-----------
:meth:`Firm.halt_all` / :meth:`Firm.reduce_all` set every registered portfolio's trading state in ONE
transaction with ONE audit record (``rd:audit``) naming the actor and the reason
(:meth:`engine.store.Store.set_all_trading_states`). REDUCE ALL leaves a HALTED portfolio HALTED: a desk-wide
action never loosens a circuit breaker (the record lists it as kept). Lifting a state is per portfolio, on
the System page. :meth:`Firm.last_action` is the newest of these records (who did it and when).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine import math_logic
from engine.errors import StoreError
from engine.market_model import MarketModelCache
from engine.records import MAX_ACTOR_LENGTH, Clock, TradingState, TradingStatus
from engine.settings import AlertRule, Limits, Settings
from engine.store import GLOBAL_AUDIT_KEY, Float64Array, Store
from logic.analytics import Light, traffic_lights
from logic.rules import RuleBook
from logic.valuation import value_portfolio

FIRM_ACTIONS = {TradingState.HALTED: "halt_all", TradingState.REDUCING: "reduce_all"}
"""The audit ``action`` of each firm-wide state change."""
LAST_ACTION_SCAN = 1000
""":meth:`Firm.last_action` looks at most this many of the newest global audit records."""


@dataclass(frozen=True)
class PortfolioRisk:
    """One portfolio in the firm view."""

    portfolio_id: str
    account_type: str
    equity: float
    gross_exposure: float
    net_exposure: float
    var: float
    """Stand-alone VaR at the firm's confidence and horizon, dollars."""
    trading_state: str
    drawdown_daily: float | None
    """From the monitor's latest snapshot (None before its first)."""
    drawdown_max: float | None
    margin_level: float | None
    lights: tuple[Light, ...]
    missing_prices: tuple[str, ...] = ()


@dataclass(frozen=True)
class TickerExposure:
    ticker: str
    gross: float
    """Σₚ |exposure|, dollars."""
    net: float
    """Σₚ exposure (longs minus shorts), dollars."""
    long: float
    short: float
    """Sum of the short exposures (<= 0)."""
    portfolios: int
    """How many portfolios hold it."""


@dataclass(frozen=True)
class FirmRisk:
    """The firm view (see the module docstring for the definitions)."""

    market_version: int
    confidence: float
    horizon_days: float
    firm_var: float
    standalone_var_sum: float
    exposures: tuple[TickerExposure, ...]
    """Held tickers, largest gross first."""
    portfolios: tuple[PortfolioRisk, ...]
    """Largest stand-alone VaR first (ties by portfolio id)."""
    failed: Mapping[str, str] = field(default_factory=dict)
    """Portfolios that could not be read or valued, with why (left out of every figure: fail visibly)."""
    missing_prices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Portfolio -> held tickers without a usable price (their positions count 0 in every figure, so the firm
    VaR, the exposures and the equity are understated: fail visibly)."""

    @property
    def complete(self) -> bool:
        """Every portfolio read and every held position priced: the figures cover the whole firm."""
        return not self.failed and not self.missing_prices

    @property
    def diversification(self) -> float:
        return self.standalone_var_sum - self.firm_var

    @property
    def gross_exposure(self) -> float:
        return float(sum(e.gross for e in self.exposures))

    @property
    def net_exposure(self) -> float:
        return float(sum(e.net for e in self.exposures))

    def worst_drawdowns(self, count: int = 5) -> list[PortfolioRisk]:
        """The portfolios with the deepest daily drawdown first (those without a snapshot last)."""
        ranked = sorted(
            self.portfolios,
            key=lambda p: (p.drawdown_daily is None, p.drawdown_daily or 0.0, p.portfolio_id),
        )
        return ranked[:count]


class Firm:
    """Every portfolio of one store: the firm view and the desk-wide kill switch.

    Parameters
    ----------
    client:
        A bytes-mode ``redis.Redis``.
    settings:
        The frozen settings (confidence and horizon of the firm VaR: the global ``[limits]``).
    clock:
        Epoch seconds, for the audit records (default ``time.time``).
    market_models:
        A :class:`~engine.market_model.MarketModelCache` to share (default: one of its own).
    """

    def __init__(
        self,
        client: Any,
        settings: Settings,
        clock: Clock | None = None,
        market_models: MarketModelCache | None = None,
    ) -> None:
        self.store = Store(client)
        self.settings = settings
        self.clock: Clock = clock or time.time
        self.models = market_models or MarketModelCache(self.store, settings.model.bars_per_day)
        self.rulebook = RuleBook(self.store, settings.alert_rules, self.clock)

    # -- risk ------------------------------------------------------------------------------------------------

    def _live_limits(self, portfolio_id: str) -> Limits | None:
        """The portfolio's live limits for its lights; None (lights from the rules only) when unreadable."""
        try:
            return self.store.limits_or(portfolio_id, self.settings.limits_for(portfolio_id))
        except StoreError:
            return None

    def exposure_vectors(self) -> tuple[Any, dict[str, Float64Array], dict[str, Any], dict[str, str]]:
        """``(model, {portfolio: dollar exposures}, {portfolio: bundle}, {portfolio: why it is left out})``,
        every book from one consistent read, marked at the current market snapshot."""
        model = self.models.get()
        if model.error is not None:
            raise model.error
        bundles = self.store.read_portfolio_bundles()
        vectors: dict[str, Float64Array] = {}
        failed: dict[str, str] = {}
        for pid, bundle in bundles.items():
            if bundle.state is None:
                failed[pid] = bundle.error.detail if bundle.error is not None else "unreadable"
                continue
            valuation = value_portfolio(bundle.state, model.header)
            prices = valuation.prices
            usable = np.isfinite(prices) & (prices > 0)
            vectors[pid] = np.where(usable, valuation.market_values, 0.0)
        return model, vectors, bundles, failed

    def risk(
        self,
        rules: Sequence[AlertRule] | None = None,
        active_alerts: Mapping[str, Iterable[Mapping[str, Any]]] | None = None,
    ) -> FirmRisk:
        """The firm view now. ``rules`` default to the effective alert rules; ``active_alerts`` (per
        portfolio) to the stored active alerts. Raises the typed store errors when the market is unusable."""
        limits = self.settings.limits
        confidence, days = float(limits.var_confidence), float(limits.var_horizon_days)
        horizon = self.settings.model.bars_per_day * days
        model, vectors, bundles, failed = self.exposure_vectors()
        rules = tuple(self.rulebook.rules() if rules is None else rules)
        tickers = model.header.tickers
        total = np.zeros(len(tickers))
        portfolios = []
        standalone_sum = 0.0
        for pid, x in sorted(vectors.items()):
            total += x
            var, _ = math_logic.get_portfolio_var(x, model.cov, 1.0, confidence, horizon, validate=False)
            standalone_sum += var
            bundle = bundles[pid]
            state = bundle.state
            valuation = value_portfolio(state, model.header)
            try:
                snapshot = self.store.read_snapshot(pid)
                alerts = (
                    list(active_alerts.get(pid, ())) if active_alerts is not None
                    else list(self.store.read_active_alerts(pid).values())
                )  # fmt: skip
            except StoreError as exc:
                snapshot, alerts = None, []
                failed[f"{pid} (monitor)"] = exc.detail
            drawdown = (snapshot or {}).get("drawdown") or {}
            portfolios.append(
                PortfolioRisk(
                    portfolio_id=pid,
                    account_type=str(state.account_type),
                    equity=valuation.equity,
                    gross_exposure=float(np.abs(x).sum()),
                    net_exposure=float(x.sum()),
                    var=float(var),
                    trading_state=str(bundle.trading_state.state if bundle.trading_state else TradingState.HALTED),
                    drawdown_daily=_finite_or_none(drawdown.get("daily")),
                    drawdown_max=_finite_or_none(drawdown.get("max")),
                    margin_level=valuation.margin_level,
                    lights=tuple(traffic_lights(rules, snapshot, pid, alerts, self._live_limits(pid))),
                    missing_prices=valuation.missing,
                )
            )
        portfolios.sort(key=lambda p: (-p.var, p.portfolio_id))  # the largest stand-alone risk first
        firm_var, _ = math_logic.get_portfolio_var(total, model.cov, 1.0, confidence, horizon, validate=False)
        exposures = []
        for i, ticker in enumerate(tickers):
            column = [x[i] for x in vectors.values() if x[i] != 0.0]
            if not column:
                continue
            exposures.append(
                TickerExposure(
                    ticker=ticker,
                    gross=float(sum(abs(v) for v in column)),
                    net=float(sum(column)),
                    long=float(sum(v for v in column if v > 0)),
                    short=float(sum(v for v in column if v < 0)),
                    portfolios=len(column),
                )
            )
        exposures.sort(key=lambda e: (-e.gross, e.ticker))
        missing = {p.portfolio_id: p.missing_prices for p in portfolios if p.missing_prices}
        return FirmRisk(
            market_version=int(model.header.version),
            confidence=confidence,
            horizon_days=days,
            firm_var=float(firm_var),
            standalone_var_sum=float(standalone_sum),
            exposures=tuple(exposures),
            portfolios=tuple(portfolios),
            failed=failed,
            missing_prices=missing,
        )

    # -- the desk-wide kill switch ---------------------------------------------------------------------------

    def halt_all(self, actor: str, reason: str) -> dict[str, dict[str, str]]:
        """HALTED for every portfolio, in one transaction with one audit record; returns
        ``{portfolio: {"previous", "state"}}``. Raises ``ValueError`` for an empty actor or reason."""
        return self._set_all(TradingState.HALTED, actor, reason)

    def reduce_all(self, actor: str, reason: str) -> dict[str, dict[str, str]]:
        """REDUCING for every portfolio not HALTED (a HALTED one stays HALTED), in one transaction with one
        audit record. Raises ``ValueError`` for an empty actor or reason."""
        return self._set_all(TradingState.REDUCING, actor, reason, keep=(TradingState.HALTED,))

    def _set_all(
        self, state: TradingState, actor: str, reason: str, keep: tuple[str, ...] = ()
    ) -> dict[str, dict[str, str]]:
        if not isinstance(actor, str) or not actor.strip() or len(actor) > MAX_ACTOR_LENGTH:
            raise ValueError(
                f"a desk-wide trading state change needs an actor (who, at most {MAX_ACTOR_LENGTH} characters)"
            )
        actor = actor.strip()
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("a desk-wide trading state change needs a reason")
        now = self.clock()
        status = TradingStatus(state=state, reason=reason.strip(), actor=actor, ts=now)
        record = {"ts": now, "actor": actor, "action": FIRM_ACTIONS[state], "state": state, "reason": status.reason}
        return self.store.set_all_trading_states(status, record, keep_states=keep)

    def last_action(self) -> dict[str, Any] | None:
        """The newest HALT ALL / REDUCE ALL audit record (``ts, actor, action, state, reason, portfolios``)."""
        actions = set(FIRM_ACTIONS.values())
        for record in self.store.read_stream_json(GLOBAL_AUDIT_KEY, count=LAST_ACTION_SCAN):
            if record.get("action") in actions:
                return record
        return None


def _finite_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if np.isfinite(value) else None
