"""A held ticker without a usable price (NaN in the market snapshot): an incomplete valuation.

Its position counts 0 in the equity, so the equity is not the book's (an unpriced short adds its whole value).
Both monitor paths (per-portfolio: logic/snapshot.py + ``MonitoringStore._PEAKS_LUA``; vectorised:
logic/batch_book.py + engine/store/tick_state.py) must then report no margin level, drawdown or daily P&L, move
no equity peak (so no phantom peak halts the book when the price returns), and the alert rules must read the
null margin level as missing data (an active margin alert is not resolved by a gap in the feed).

The book (closed forms, computed here by hand): CCC +300 @ 200 (60,000 long), DDD -4,000 @ 25 (100,000 short),
cash 128,000: equity 128,000 + 60,000 - 100,000 = 88,000; initial margin 0.5 x 160,000 gross = 80,000; margin
level 88,000 / 80,000 = 110%; maintenance 0.25 x 160,000 = 40,000.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

import warmup
from engine.records import MarketHeader, PortfolioState, Position, TradingState
from engine.settings import AlertRule, Settings
from engine.store import MarketSnapshot, PortfolioKeys, Store
from logic.alerts import build_alert_engine
from logic.escalation import escalation_config
from logic.lifecycle import AlertPlanner
from logic.monitor import Monitor
from logic.valuation import value_portfolio
from tests.alerts_support import snapshot as alert_snapshot

NOW = 1_700_000_000.0
CASH, LONG_QTY, SHORT_QTY, CCC_PRICE, DDD_PRICE = 128_000.0, 300, -4_000, 200.0, 25.0
TRUE_EQUITY = CASH + LONG_QTY * CCC_PRICE + SHORT_QTY * DDD_PRICE  # 88,000
GROSS = abs(LONG_QTY * CCC_PRICE) + abs(SHORT_QTY * DDD_PRICE)  # 160,000
TRUE_LEVEL = TRUE_EQUITY / (0.5 * GROSS) * 100.0  # 110 %
PHANTOM_EQUITY = CASH + LONG_QTY * CCC_PRICE  # DDD counted at 0: 188,000

MARGIN_RULE = {
    "id": "margin_critical", "metric": "margin.level", "op": "<", "threshold": 120.0, "severity": "CRITICAL",
    "description": "margin critical", "clear_seconds": 0,
}  # fmt: skip
DD_HALT = {
    "id": "dd_halt", "metric": "drawdown.daily", "op": "<=", "threshold": -0.05, "severity": "CRITICAL",
    "description": "drawdown breaker", "actions": ["set_state:HALTED"],
}  # fmt: skip
PATHS = pytest.mark.parametrize("vectorised", [False, True], ids=["per_portfolio", "vectorised"])


def _settings(make_settings: Callable[..., Settings], rules: list[dict[str, Any]]) -> Settings:
    hedge = {
        "id": "hedge", "account_type": "margin", "cash": f"{CASH:.2f}", "holdings": {"CCC": LONG_QTY, "DDD": SHORT_QTY},
        "initial_margin": 0.5, "maintenance_margin": 0.25,
    }  # fmt: skip
    main = {"id": "main", "account_type": "cash", "cash": "1000000.00", "holdings": {"AAA": 1000, "BBB": 2000}}
    return make_settings({"portfolios": [main, hedge], "alert_rules": rules})


@dataclass
class Desk:
    store: Store
    monitor: Monitor
    clock: list[float]

    def set_prices(self, prices: Mapping[str, float]) -> None:
        """A new market version at the next second with ``prices`` changed (NaN: the feed lost the ticker)."""
        self.clock[0] += 1.0
        snap = self.store.read_market()
        new, price_ts = snap.prices.copy(), snap.price_ts.copy()
        for ticker, price in prices.items():
            new[snap.tickers.index(ticker)] = price
            price_ts[snap.tickers.index(ticker)] = self.clock[0]
        self.store.write_market(MarketSnapshot(
            version=snap.version + 1, ts=self.clock[0], tickers=snap.tickers, prices=new, price_ts=price_ts,
            cov=snap.cov,
        ))  # fmt: skip

    def refresh(self) -> dict[str, Any]:
        return self.monitor.refresh()["hedge"]

    def peaks_hash(self) -> dict[str, str | float]:
        """The stored peaks of ``hedge`` without the writer's ``owner`` stamp, numbers as floats (the two paths
        format them differently: '0' and '0.0')."""
        raw = self.store.client.hgetall(PortfolioKeys("hedge").peaks)
        return {k.decode(): v.decode() if k in (b"day", b"week") else float(v) for k, v in raw.items() if k != b"owner"}


def _desk(store: Store, settings: Settings, vectorised: bool, *, alerts: bool = True) -> Desk:
    clock = [NOW]
    warmup.seed(store, settings, now=NOW)
    engine = build_alert_engine(store, settings, lambda: clock[0], risk_manager_factory=lambda pid: None)
    monitor = Monitor(
        store, settings, lambda: clock[0], alert_engine=engine if alerts else None, idle_refresh_seconds=0,
        vectorised=vectorised, consumer="fast" if vectorised else "loop",
    )  # fmt: skip
    return Desk(store, monitor, clock)


@pytest.fixture
def rules_settings(make_settings: Callable[..., Settings]) -> Iterator[Settings]:
    yield _settings(make_settings, [MARGIN_RULE, DD_HALT])


# -- closed forms -----------------------------------------------------------------------------------------------


@PATHS
def test_the_priced_book_reports_its_true_margin_level_and_fires_the_breaker(
    store: Store, rules_settings: Settings, vectorised: bool
) -> None:
    # Arrange
    desk = _desk(store, rules_settings, vectorised)

    # Act
    snap = desk.refresh()

    # Assert: the closed forms of the module docstring; the breaker (< 120%) is active
    assert TRUE_LEVEL == pytest.approx(110.0, rel=1e-15)
    assert snap["equity"] == pytest.approx(TRUE_EQUITY, rel=1e-15)
    assert snap["margin"]["level"] == pytest.approx(TRUE_LEVEL, rel=1e-12)
    assert snap["margin"]["used"] == pytest.approx(0.5 * GROSS, rel=1e-15)
    assert snap["margin"]["maintenance"] == pytest.approx(0.25 * GROSS, rel=1e-15)
    assert snap["data"]["missing_prices"] == [] and snap["drawdown"]["daily"] == 0.0
    assert set(store.read_active_alerts("hedge")) == {"margin_critical"}


def test_the_valuation_has_no_margin_level_while_a_held_price_is_missing() -> None:
    # Arrange: the book, DDD unpriced (NaN), then priced
    state = PortfolioState(
        "hedge", "margin", Decimal("128000"),
        {"CCC": Position(LONG_QTY, Decimal("200")), "DDD": Position(SHORT_QTY, Decimal("25"))},
        initial_margin=0.5, maintenance_margin=0.25,
    )  # fmt: skip

    def header(ddd: float) -> MarketHeader:
        return MarketHeader(version=1, ts=NOW, tickers=("CCC", "DDD"), prices=np.array([CCC_PRICE, ddd]),
                            price_ts=np.array([NOW, NOW]))  # fmt: skip

    # Act
    gap, priced = value_portfolio(state, header(float("nan"))), value_portfolio(state, header(DDD_PRICE))

    # Assert: incomplete -> no level (the old code said 188,000 / 30,000 = 626.7%); complete -> 110%
    assert (gap.complete, gap.missing, gap.margin_level) == (False, ("DDD",), None)
    assert gap.equity == PHANTOM_EQUITY
    assert priced.complete and priced.margin_level == TRUE_EQUITY / (0.5 * GROSS) * 100.0


# -- the gap in the feed ----------------------------------------------------------------------------------------


@PATHS
def test_an_unpriced_short_reports_no_margin_drawdown_or_daily_pnl(
    store: Store, rules_settings: Settings, vectorised: bool
) -> None:
    # Arrange
    desk = _desk(store, rules_settings, vectorised)
    desk.refresh()

    # Act: the feed loses DDD
    desk.set_prices({"DDD": float("nan"), "CCC": CCC_PRICE})
    snap = desk.refresh()

    # Assert: listed, equity of the priced part only, every figure built on it null
    assert snap["data"]["missing_prices"] == ["DDD"]
    assert snap["equity"] == pytest.approx(PHANTOM_EQUITY, rel=1e-15)
    assert snap["margin"] == {"level": None, "used": None, "maintenance": None}
    assert snap["drawdown"] == {"daily": None, "weekly": None, "max": None}
    assert snap["pnl"]["daily"] is None
    point = store.read_history("hedge")[-1]  # the history point says the same
    assert (point["margin.level"], point["drawdown.daily"], point["pnl.daily"]) == (None, None, None)


@PATHS
def test_an_active_margin_alert_stays_active_through_the_gap_and_no_halt_follows_the_return(
    store: Store, rules_settings: Settings, vectorised: bool
) -> None:
    # Arrange: the breaker is active at 110%
    desk = _desk(store, rules_settings, vectorised)
    desk.refresh()
    assert set(store.read_active_alerts("hedge")) == {"margin_critical"}
    before = desk.peaks_hash()

    # Act 1: DDD unpriced for two ticks (clear_seconds 0: a resolve would happen at once)
    desk.set_prices({"DDD": float("nan")})
    desk.refresh()
    desk.clock[0] += 1.0
    desk.refresh()

    # Assert 1: the alert is held (``keep``), no drawdown alert, the peaks did not move (nor last, nor close)
    assert set(store.read_active_alerts("hedge")) == {"margin_critical"}
    assert desk.peaks_hash() == before

    # Act 2: DDD comes back unchanged: nothing was lost
    desk.set_prices({"DDD": DDD_PRICE})
    snap = desk.refresh()

    # Assert 2: no phantom peak, so no drawdown and no halt (the old code: -0.532 and HALTED)
    assert snap["drawdown"] == {"daily": 0.0, "weekly": 0.0, "max": 0.0}
    assert snap["pnl"]["daily"] == 0.0
    assert snap["margin"]["level"] == pytest.approx(TRUE_LEVEL, rel=1e-12)
    assert set(store.read_active_alerts("hedge")) == {"margin_critical"}
    assert store.read_trading_state("hedge").state == TradingState.ACTIVE
    peaks = store.read_peaks("hedge")
    assert peaks is not None and peaks.day_peak == pytest.approx(TRUE_EQUITY, rel=1e-15)


@PATHS
def test_an_unpriced_long_neither_halts_nor_counts_as_a_loss(
    make_settings: Callable[..., Settings], store: Store, vectorised: bool
) -> None:
    # Arrange: the long leg's price goes missing: counted at 0, the equity would read a 60,000 loss (-68%)
    desk = _desk(store, _settings(make_settings, [DD_HALT]), vectorised)
    desk.refresh()

    # Act
    desk.set_prices({"CCC": float("nan")})
    gap = desk.refresh()
    desk.set_prices({"CCC": CCC_PRICE})
    back = desk.refresh()

    # Assert
    assert gap["equity"] == pytest.approx(TRUE_EQUITY - LONG_QTY * CCC_PRICE, rel=1e-15)
    assert gap["drawdown"]["daily"] is None and gap["pnl"]["daily"] is None
    assert back["drawdown"]["daily"] == 0.0 and back["drawdown"]["max"] == 0.0
    assert store.read_active_alerts("hedge") == {}
    assert store.read_trading_state("hedge").state == TradingState.ACTIVE


@PATHS
def test_a_first_observation_without_a_price_writes_no_peak(
    store: Store, rules_settings: Settings, vectorised: bool
) -> None:
    # Arrange: DDD unpriced before the monitor ever saw the book
    desk = _desk(store, rules_settings, vectorised, alerts=False)
    desk.set_prices({"DDD": float("nan")})

    # Act
    gap = desk.refresh()
    peaks_in_gap = store.read_peaks("hedge")
    desk.set_prices({"DDD": DDD_PRICE})
    back = desk.refresh()

    # Assert: no peak from the phantom 188,000; the first complete valuation opens the day at its own equity
    assert gap["drawdown"]["daily"] is None and peaks_in_gap is None
    assert set(desk.peaks_hash()) >= {"day", "day_open", "day_peak", "max_peak", "last"}
    peaks = store.read_peaks("hedge")
    assert peaks is not None
    assert (peaks.day_open, peaks.day_peak, peaks.week_peak, peaks.max_peak, peaks.max_drawdown) == pytest.approx(
        (TRUE_EQUITY, TRUE_EQUITY, TRUE_EQUITY, TRUE_EQUITY, 0.0), rel=1e-15
    )
    assert back["drawdown"]["daily"] == 0.0 and back["pnl"]["daily"] == 0.0


def _numbers(node: Any, path: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_numbers(v, f"{path}.{k}"))
        return out
    if isinstance(node, list | tuple) or type(node).__name__ == "PositionRows":
        out = {}
        for i, v in enumerate(node):
            out.update(_numbers(v, f"{path}[{i}]"))
        return out
    return {path: node}


def test_both_monitor_paths_agree_on_a_book_with_an_unpriced_held_ticker(
    store: Store, rules_settings: Settings
) -> None:
    # Arrange: one stored market with DDD unpriced, two monitors (consumers) on it
    warmup.seed(store, rules_settings, now=NOW)
    loop = Monitor(store, rules_settings, lambda: NOW + 5, consumer="loop", idle_refresh_seconds=0, vectorised=False)
    fast = Monitor(store, rules_settings, lambda: NOW + 5, consumer="fast", idle_refresh_seconds=0)
    loop.refresh()
    priced = dict(Desk(store, loop, [NOW]).peaks_hash())
    Desk(store, loop, [NOW]).set_prices({"DDD": float("nan")})

    # Act: the per-portfolio path, then the vectorised one (it loads the peaks the first one left)
    reference = loop.refresh()
    after_loop = Desk(store, loop, [NOW]).peaks_hash()
    batched = fast.refresh()
    after_fast = Desk(store, fast, [NOW]).peaks_hash()

    # Assert: the same snapshots number for number (nulls included), and neither moved the peaks
    assert batched["hedge"]["data"]["missing_prices"] == reference["hedge"]["data"]["missing_prices"] == ["DDD"]
    for pid in ("main", "hedge"):
        want, got = _numbers(reference[pid]), _numbers(batched[pid])
        assert want.keys() == got.keys(), pid
        for path, value in want.items():
            if isinstance(value, float) and isinstance(got[path], float):
                assert math.isclose(got[path], value, rel_tol=1e-12, abs_tol=0.0), (pid, path, got[path], value)
            else:
                assert got[path] == value, (pid, path, got[path], value)
    assert after_loop == after_fast == priced


# -- the alert condition ----------------------------------------------------------------------------------------


def _rule(settings: Settings, policy: str) -> AlertRule:
    (rule,) = [r for r in settings.alert_rules if r.id == "margin_critical"]
    return dataclasses.replace(rule, stale_policy=policy)


@pytest.mark.parametrize(
    ("margin", "gross", "missing", "keep", "fire"),
    [
        # a cash account (used 0, even with exposure or a missing price): the margin level does not apply
        ({"level": None, "used": 0.0, "maintenance": 0.0}, 100_000.0, [], (False, None, False), (False, None, False)),
        ({"level": None, "used": 0.0, "maintenance": 0.0}, 0.0, ["DDD"], (False, None, False), (False, None, False)),
        # a flat margin account, every price known: does not apply
        ({"level": None, "used": 0.0, "maintenance": 0.0}, 0.0, [], (False, None, False), (False, None, False)),
        # one cent of margin used with no level (not computable): missing data, the policy applies
        ({"level": None, "used": 0.01, "maintenance": 0.0}, 0.02, [], (None, None, False), (True, None, True)),
        # an incomplete margin valuation (used null): missing data
        (
            {"level": None, "used": None, "maintenance": None},
            60_000.0,
            ["DDD"],
            (None, None, False),
            (True, None, True),
        ),
        # at the threshold: no breach; one unit under: breach
        ({"level": 120.0, "used": 1.0, "maintenance": 0.5}, 2.0, [], (False, 120.0, False), (False, 120.0, False)),
        ({"level": 119.0, "used": 1.0, "maintenance": 0.5}, 2.0, [], (True, 119.0, False), (True, 119.0, False)),
    ],
    ids=["cash", "cash-unpriced", "flat-margin", "one-cent-used", "incomplete", "at-threshold", "one-under"],
)
def test_a_null_margin_level_does_not_apply_only_to_a_book_using_no_margin(
    rules_settings: Settings, margin: dict[str, Any], gross: float, missing: list[str],
    keep: tuple[Any, ...], fire: tuple[Any, ...],
) -> None:  # fmt: skip
    # Arrange
    snap = alert_snapshot("hedge", NOW, margin=margin, gross_exposure=gross, data__missing_prices=missing)
    planner = AlertPlanner(escalation_config({}, ()), 300.0)

    # Act / Assert: (breach, value, stale) under each stale-data policy
    assert planner.condition(_rule(rules_settings, "keep"), snap, NOW) == keep
    assert planner.condition(_rule(rules_settings, "fire"), snap, NOW) == fire
