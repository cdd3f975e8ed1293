"""Leverage, concentration and position weights while a held ticker has no usable price (an incomplete valuation).

The unpriced position counts 0 in the equity and the exposures, so every ratio over them is of another book: the
monitor reports ``leverage``, ``concentration.{hhi, largest_share, largest_ticker}`` and each open position's
``weight`` as null (logic/snapshot.py, "incomplete valuation"), in both monitor paths (per-portfolio:
logic/snapshot.py; vectorised: logic/batch_book.py), and an alert rule on them holds its state through the gap
(a null is missing data: ``keep``), where the partial figures resolved it (and could fire another).

The books (closed forms, by hand):

- ``hedge`` (margin): CCC +300 @ 200 (60,000 long), DDD -4,000 @ 25 (100,000 short), AAA flat (closed with a
  realized P&L, so the book keeps the position), cash 128,000:
  equity 88,000, gross 160,000, leverage 160/88 = 1.818, largest DDD 100/88 = 1.136, HHI (60² + 100²) / 160² =
  0.53125. DDD unpriced: equity 188,000, gross 60,000: the partial figures read leverage 0.319, largest CCC 0.319,
  HHI 1.
- ``long`` (cash): CCC +400 @ 200 (80,000), AAA +100 @ 100 (10,000), BBB +200 @ 50 (10,000), cash 20,000: equity
  120,000, gross 100,000, leverage 100/120, largest CCC 80/120 = 0.667, HHI 0.64 + 0.01 + 0.01 = 0.66. CCC
  unpriced: the partial figures read largest AAA 10/40 = 0.25 (under the 0.5 limit), HHI 0.5.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import warmup
from engine.records import Position
from engine.redis_server import EmbeddedRedis
from engine.settings import AlertRule, Settings
from engine.store import MarketSnapshot, Store
from logic.alerts import build_alert_engine
from logic.analytics import limit_breaches
from logic.escalation import escalation_config
from logic.lifecycle import AlertPlanner
from logic.monitor import Monitor
from tests.alerts_support import snapshot as alert_snapshot

from .conftest import TEST_CONFIG
from .e2e_stack import toml_dumps

NOW = 1_700_000_000.0
APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"

HEDGE_EQUITY, HEDGE_GROSS = 128_000.0 + 300 * 200.0 - 4_000 * 25.0, 300 * 200.0 + 4_000 * 25.0  # 88,000; 160,000
LONG_EQUITY, LONG_GROSS = 20_000.0 + 400 * 200.0 + 100 * 100.0 + 200 * 50.0, 400 * 200.0 + 100 * 100.0 + 200 * 50.0

RULES = [
    {"id": "conc", "metric": "concentration.largest_share", "op": ">", "threshold": 0.5, "severity": "HIGH",
     "description": "largest position over half the equity", "clear_seconds": 0},
    {"id": "lev", "metric": "leverage", "op": ">", "threshold": 1.5, "severity": "HIGH",
     "description": "leverage", "clear_seconds": 0},
    {"id": "hhi", "metric": "concentration.hhi", "op": ">=", "threshold": 0.9, "severity": "MEDIUM",
     "description": "one name", "clear_seconds": 0},
]  # fmt: skip
BOOKS = [
    {
        "id": "hedge", "account_type": "margin", "cash": "128000.00", "holdings": {"CCC": 300, "DDD": -4000},
        "initial_margin": 0.5, "maintenance_margin": 0.25,
    },
    {"id": "long", "account_type": "cash", "cash": "20000.00", "holdings": {"CCC": 400, "AAA": 100, "BBB": 200}},
]  # fmt: skip
GAPS = [("hedge", "DDD"), ("long", "CCC")]
"""Each book with the ticker of its largest position (the one whose price the feed loses)."""
PATHS = pytest.mark.parametrize("vectorised", [False, True], ids=["per_portfolio", "vectorised"])
NULL_CONCENTRATION = {"hhi": None, "largest_share": None, "largest_ticker": None}


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
        self.clock[0] += 1.0
        return self.monitor.refresh()

    def active(self, pid: str) -> set[str]:
        return set(self.store.read_active_alerts(pid))


@pytest.fixture
def books_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings({"portfolios": BOOKS, "alert_rules": RULES})


def _seed(store: Store, settings: Settings) -> None:
    """The books of the module docstring: hedge's flat AAA is a closed position kept for its realized P&L."""
    warmup.seed(store, settings, now=NOW)
    store.write_position("hedge", "AAA", Position(0, Decimal("100"), Decimal("250")))


def _desk(store: Store, settings: Settings, vectorised: bool) -> Desk:
    clock = [NOW]
    _seed(store, settings)
    engine = build_alert_engine(store, settings, lambda: clock[0], risk_manager_factory=lambda pid: None)
    monitor = Monitor(
        store, settings, lambda: clock[0], alert_engine=engine, idle_refresh_seconds=0, vectorised=vectorised,
        consumer="fast" if vectorised else "loop",
    )  # fmt: skip
    return Desk(store, monitor, clock)


def _weights(snap: Mapping[str, Any]) -> dict[str, Any]:
    return {p["ticker"]: p["weight"] for p in snap["positions"]}


PRICES = {"AAA": 100.0, "BBB": 50.0, "CCC": 200.0, "DDD": 25.0}


# -- the priced books: closed forms ------------------------------------------------------------------------------


@PATHS
def test_the_priced_books_report_their_closed_form_ratios_and_breach(
    store: Store, books_settings: Settings, vectorised: bool
) -> None:
    # Arrange
    desk = _desk(store, books_settings, vectorised)

    # Act
    snaps = desk.refresh()

    # Assert: the module docstring's closed forms; the concentration and leverage alerts active
    hedge, long = snaps["hedge"], snaps["long"]
    assert (HEDGE_EQUITY, HEDGE_GROSS, LONG_EQUITY, LONG_GROSS) == (88_000.0, 160_000.0, 120_000.0, 100_000.0)
    assert hedge["leverage"] == pytest.approx(160_000.0 / 88_000.0, rel=1e-12)
    assert hedge["concentration"]["largest_share"] == pytest.approx(100_000.0 / 88_000.0, rel=1e-12)
    assert hedge["concentration"]["largest_ticker"] == "DDD"
    assert hedge["concentration"]["hhi"] == pytest.approx((60.0**2 + 100.0**2) / 160.0**2, rel=1e-12)
    assert _weights(hedge) == pytest.approx({"AAA": 0.0, "CCC": 60.0 / 88.0, "DDD": -100.0 / 88.0}, rel=1e-12)
    assert long["leverage"] == pytest.approx(100.0 / 120.0, rel=1e-12)
    assert long["concentration"]["largest_share"] == pytest.approx(80.0 / 120.0, rel=1e-12)
    assert long["concentration"]["largest_ticker"] == "CCC"
    assert long["concentration"]["hhi"] == pytest.approx(0.64 + 0.01 + 0.01, rel=1e-12)
    assert desk.active("hedge") == {"conc", "lev"} and desk.active("long") == {"conc"}


# -- the gap in the feed -----------------------------------------------------------------------------------------


@PATHS
@pytest.mark.parametrize(("pid", "lost"), GAPS, ids=[f"{p}-{t}" for p, t in GAPS])
def test_a_lost_price_nulls_leverage_concentration_and_the_open_weights(
    store: Store, books_settings: Settings, vectorised: bool, pid: str, lost: str
) -> None:
    # Arrange
    desk = _desk(store, books_settings, vectorised)
    desk.refresh()

    # Act: the feed loses the book's largest position
    desk.set_prices({lost: float("nan")})
    snap = desk.refresh()[pid]

    # Assert: the ratios null (the old code: hedge 0.319 / CCC 0.319 / HHI 1, long AAA 0.25 / HHI 0.5); a flat
    # position's weight stays 0 (0 of any equity); the history point says the same
    assert snap["data"]["missing_prices"] == [lost]
    assert snap["leverage"] is None
    assert snap["concentration"] == NULL_CONCENTRATION
    weights = _weights(snap)
    assert {t: w for t, w in weights.items() if t != "AAA" or pid != "hedge"} == dict.fromkeys(
        [t for t in weights if t != "AAA" or pid != "hedge"], None
    )
    if pid == "hedge":
        assert weights["AAA"] == 0.0
    point = store.read_history(pid)[-1]
    assert (point["leverage"], point["concentration.hhi"], point["concentration.largest_share"]) == (None,) * 3


@PATHS
def test_concentration_and_leverage_alerts_hold_through_the_gap_and_none_fires_on_phantom_figures(
    store: Store, books_settings: Settings, vectorised: bool
) -> None:
    # Arrange: conc and lev active on hedge, conc on long; no hhi alert (0.53 and 0.66 < 0.9)
    desk = _desk(store, books_settings, vectorised)
    desk.refresh()
    assert desk.active("hedge") == {"conc", "lev"} and desk.active("long") == {"conc"}

    # Act 1: hedge's largest position (DDD) loses its price for two ticks (clear_seconds 0: a resolve is at once)
    desk.set_prices({"DDD": float("nan")})
    desk.refresh()
    desk.refresh()

    # Assert 1: held (``keep``; the old code resolved lev and conc at 0.319); the phantom HHI of hedge (CCC alone:
    # 1.0 >= 0.9) fires nothing
    assert desk.active("hedge") == {"conc", "lev"} and desk.active("long") == {"conc"}

    # Act 2: DDD back, long's largest position (CCC) loses its price for two ticks
    desk.set_prices({"DDD": PRICES["DDD"], "CCC": float("nan")})
    desk.refresh()
    desk.refresh()

    # Assert 2: long's conc held (the old code resolved it at AAA's 0.25); hedge's held too (CCC is its own too)
    assert desk.active("hedge") == {"conc", "lev"} and desk.active("long") == {"conc"}

    # Act 3: the price returns unchanged
    desk.set_prices({"CCC": PRICES["CCC"]})
    snaps = desk.refresh()

    # Assert 3: the true figures again, the same alerts
    assert snaps["hedge"]["leverage"] == pytest.approx(160.0 / 88.0, rel=1e-12)
    assert snaps["long"]["concentration"]["largest_share"] == pytest.approx(80.0 / 120.0, rel=1e-12)
    assert desk.active("hedge") == {"conc", "lev"} and desk.active("long") == {"conc"}


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


def test_both_monitor_paths_agree_on_the_null_ratios(store: Store, books_settings: Settings) -> None:
    # Arrange: one stored market with DDD and CCC unpriced, two monitors (consumers) on it
    _seed(store, books_settings)
    loop = Monitor(store, books_settings, lambda: NOW + 5, consumer="loop", idle_refresh_seconds=0, vectorised=False)
    fast = Monitor(store, books_settings, lambda: NOW + 5, consumer="fast", idle_refresh_seconds=0)
    Desk(store, loop, [NOW]).set_prices({"DDD": float("nan"), "CCC": float("nan")})

    # Act
    reference = loop.refresh()
    batched = fast.refresh()

    # Assert: the same snapshots number for number, nulls included (and the nulls are there)
    for pid in ("hedge", "long"):
        assert reference[pid]["concentration"] == batched[pid]["concentration"] == NULL_CONCENTRATION
        want, got = _numbers(reference[pid]), _numbers(batched[pid])
        assert want.keys() == got.keys(), pid
        for path, value in want.items():
            if isinstance(value, float) and isinstance(got[path], float):
                assert math.isclose(got[path], value, rel_tol=1e-12, abs_tol=0.0), (pid, path, got[path], value)
            else:
                assert got[path] == value, (pid, path, got[path], value)


# -- the alert condition and the gate light on a null ratio --------------------------------------------------------


def _rule(settings: Settings, rule_id: str, policy: str) -> AlertRule:
    (rule,) = [r for r in settings.alert_rules if r.id == rule_id]
    return dataclasses.replace(rule, stale_policy=policy)


def _with(metric: str, value: float | None) -> dict[str, Any]:
    """``alert_snapshot`` keyword arguments setting ``metric`` (dotted) to ``value``."""
    return {metric.replace(".", "__"): value}


@pytest.mark.parametrize(
    ("rule_id", "metric", "threshold"),
    [("conc", "concentration.largest_share", 0.5), ("lev", "leverage", 1.5), ("hhi", "concentration.hhi", 0.9)],
)
def test_a_null_ratio_is_missing_data_and_the_threshold_is_exact(
    books_settings: Settings, rule_id: str, metric: str, threshold: float
) -> None:
    # Arrange
    planner = AlertPlanner(escalation_config({}, ()), 300.0)
    keep, fire = _rule(books_settings, rule_id, "keep"), _rule(books_settings, rule_id, "fire")
    over = float(np.nextafter(threshold, math.inf))  # one unit (ulp) over the threshold
    gap = alert_snapshot("hedge", NOW, data__missing_prices=["DDD"], **_with(metric, None))
    at = alert_snapshot("hedge", NOW, **_with(metric, threshold))
    above = alert_snapshot("hedge", NOW, **_with(metric, over))

    # Act / Assert: null -> hold (keep) or STALE (fire), never a resolve; at the threshold the rule's op decides
    # (``>`` clear, ``>=`` breach), one unit over breaches
    assert planner.condition(keep, gap, NOW) == (None, None, False)
    assert planner.condition(fire, gap, NOW) == (True, None, True)
    assert planner.condition(keep, at, NOW) == (keep.op == ">=", threshold, False)
    assert planner.condition(keep, above, NOW) == (True, over, False)


def test_the_gate_concentration_light_skips_a_null_share_and_is_exact_at_the_limit(
    books_settings: Settings,
) -> None:
    # Arrange: the gate's max_concentration 0.5 (TEST_CONFIG); amber from 80% of it, red above it
    limits = books_settings.limits_for("long")
    gap = alert_snapshot("long", NOW, concentration__largest_share=None, data__missing_prices=["CCC"])
    at = alert_snapshot("long", NOW, concentration__largest_share=0.5, concentration__largest_ticker="CCC")
    over = alert_snapshot("long", NOW, concentration__largest_share=float(np.nextafter(0.5, 1.0)))

    def concentration(snap: Mapping[str, Any]) -> list[str]:
        return [level for area, level, _ in limit_breaches(snap, limits) if area == "Concentration"]

    # Act / Assert: no light from a null share (never a green one); at the limit amber (the gate passes it),
    # one unit over red
    assert float(limits.max_concentration) == 0.5
    assert concentration(gap) == []
    assert concentration(at) == ["amber"]
    assert concentration(over) == ["red"]


# -- the Overview page ---------------------------------------------------------------------------------------------


@pytest.fixture
def app_env(
    redis_server: EmbeddedRedis, seeded_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    config = tmp_path / "riskdesk.toml"
    config.write_text(toml_dumps(TEST_CONFIG), encoding="utf-8")
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("RISKDESK_CONFIG", str(config))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield seeded_store
    st.cache_resource.clear()


def test_the_overview_shows_no_leverage_or_concentration_of_an_incomplete_valuation(
    app_env: Store, settings: Settings
) -> None:
    # Arrange: TEST_CONFIG's main book (cash 1,000,000, AAA 1,000 @ 100, BBB 2,000 @ 50), BBB loses its price
    snap = app_env.read_market()
    prices = snap.prices.copy()
    prices[snap.tickers.index("BBB")] = float("nan")
    app_env.write_market(MarketSnapshot(
        version=snap.version + 1, ts=snap.ts, tickers=snap.tickers, prices=prices, price_ts=snap.price_ts,
        cov=snap.cov,
    ))  # fmt: skip
    Monitor(app_env, settings).refresh()

    # Act
    at = AppTest.from_file(str(APP), default_timeout=30.0)
    at.session_state["refresh"] = "Paused"
    at.switch_page("screens/overview.py")
    at.run()

    # Assert: the page renders; leverage a dash (the old code: 100,000 / 1,100,000 = 0.09x), and the concentration
    # light takes no figure from the partial book (the old code: "largest position (AAA) at 9.1% of equity")
    assert not at.exception, [e.value for e in at.exception]
    shown = {m.label: str(m.value) for m in at.metric}
    assert shown["Leverage — incomplete"] == "-"
    text = "\n".join(str(e.value) for e in at.markdown)
    assert "largest position" not in text


def test_the_concentration_light_says_no_data_not_no_rule_applies_while_the_share_is_null(
    books_settings: Settings,
) -> None:
    # Arrange: the same book priced (a share under the limit) and with its largest position unpriced
    from logic.analytics import traffic_lights

    limits = books_settings.limits_for("long")
    priced = alert_snapshot("long", NOW, concentration__largest_share=0.1, concentration__largest_ticker="CCC")
    gap = alert_snapshot("long", NOW, concentration__largest_share=None, data__missing_prices=["CCC"])

    def light(snap: Mapping[str, Any]) -> tuple[str, str]:
        (found,) = [(x.level, x.detail) for x in traffic_lights([], snap, "long", limits=limits)
                    if x.area == "Concentration"]  # fmt: skip
        return found

    # Act / Assert: green with a figure under the gate's limit; grey "no data" naming the ticker without one
    # (the gate's max_concentration still applies: never "no rule applies", never green)
    assert light(priced) == ("green", "1 rule(s) clear")
    level, detail = light(gap)
    assert level == "grey" and detail.startswith("no data") and "CCC" in detail and "no rule applies" not in detail


def test_the_risk_page_shows_no_weight_of_a_partial_equity(app_env: Store, settings: Settings) -> None:
    # Arrange: TEST_CONFIG's main book, AAA at 110 and BBB without a usable price
    from logic.views.common import Desk as ViewDesk
    from logic.views.risk import exposure_view

    snap = app_env.read_market()
    prices = snap.prices.copy()
    prices[snap.tickers.index("BBB")] = float("nan")
    prices[snap.tickers.index("AAA")] = 110.0
    app_env.write_market(MarketSnapshot(
        version=snap.version + 1, ts=snap.ts, tickers=snap.tickers, prices=prices, price_ts=snap.price_ts,
        cov=snap.cov,
    ))  # fmt: skip

    # Act
    view = exposure_view(ViewDesk(app_env.client, settings), "main")

    # Assert: AAA valued (1,000 x 110) but weightless (the old page: 110,000 / the partial equity = 0.099),
    # BBB not valued at all (the old page: 0.0), as on the Trade page and in the snapshot
    rows = view.exposures.set_index("ticker")
    assert rows.loc["AAA", "market_value"] == pytest.approx(110_000.0, rel=1e-12)
    assert np.isnan(rows.loc["AAA", "weight"]) and np.isnan(rows.loc["BBB", "weight"])
    assert np.isnan(rows.loc["BBB", "market_value"])
    assert view.missing == ("BBB",)


def test_a_flat_books_concentration_light_has_nothing_missing(books_settings: Settings) -> None:
    # a book holding nothing has no largest position: a null share with no missing price is no missing data
    from logic.analytics import traffic_lights

    flat = alert_snapshot("long", NOW, concentration__largest_share=None, data__missing_prices=[])
    (light,) = [x for x in traffic_lights([], flat, "long", limits=books_settings.limits_for("long"))
                if x.area == "Concentration"]  # fmt: skip
    assert (light.level, light.detail) == ("grey", "no rule applies")
