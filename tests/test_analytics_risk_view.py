"""The Risk page's Exposure & VaR tab says what its VaR is: its horizon (the limit's ``var_horizon_days``, not
always one day) and which held tickers it leaves out for want of a usable price. Real seeded Redis; VaR against
the delta-normal closed form written out here."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import warmup
from engine.settings import Settings
from engine.store import MarketSnapshot, Store
from logic.views.common import Desk
from logic.views.risk import exposure_view

from .test_firm import app_env  # noqa: F401 (the dashboard's fixture, shared)

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
NOW = 1_700_000_000.0


def set_price(store: Store, ticker: str, price: float) -> None:
    """A new market version with ``ticker`` at ``price`` (any float: NaN, 0), the rest as stored."""
    snap = store.read_market()
    prices = snap.prices.copy()
    prices[snap.tickers.index(ticker)] = price
    store.write_market(
        MarketSnapshot(
            version=snap.version + 1, ts=snap.ts, tickers=snap.tickers, prices=prices, price_ts=snap.price_ts,
            cov=snap.cov,
        )
    )  # fmt: skip


def closed_form_var(store: Store, holdings: dict[str, int], confidence: float, days: float) -> float:
    market = store.read_market()
    x = np.zeros(len(market.tickers))
    for ticker, qty in holdings.items():
        i = market.tickers.index(ticker)
        price = float(market.prices[i])
        x[i] = qty * price if math.isfinite(price) and price > 0 else 0.0
    return NormalDist().inv_cdf(confidence) * math.sqrt(390 * days * float(x @ market.cov @ x))


@pytest.mark.parametrize(
    ("days", "label"), [(1, "VaR 95% (1 day)"), (2, "VaR 95% (2 days)"), (10, "VaR 95% (10 days)")]
)
def test_the_var_label_names_the_limit_horizon(
    store: Store, make_settings: Callable[..., Settings], days: int, label: str
) -> None:
    settings = make_settings({"limits": {"var_horizon_days": days}})
    warmup.seed(store, settings, now=NOW)
    ev = exposure_view(Desk(store.client, settings, clock=lambda: NOW), "main")
    assert ev.horizon_days == days and ev.var_label == label
    assert ev.var == pytest.approx(closed_form_var(store, {"AAA": 1000, "BBB": 2000}, 0.95, days), rel=1e-12)
    assert ev.missing == ()


@pytest.mark.parametrize("bad", [float("nan"), 0.0])
def test_a_held_ticker_without_a_usable_price_is_listed_beside_the_var_that_leaves_it_out(
    seeded_store: Store, settings: Settings, bad: float
) -> None:
    set_price(seeded_store, "BBB", bad)
    ev = exposure_view(Desk(seeded_store.client, settings, clock=lambda: NOW), "main")
    assert ev.missing == ("BBB",)
    assert ev.var == pytest.approx(closed_form_var(seeded_store, {"AAA": 1000}, 0.95, 1.0), rel=1e-12)


def test_the_smallest_positive_price_is_a_price(seeded_store: Store, settings: Settings) -> None:
    set_price(seeded_store, "BBB", math.nextafter(0.0, 1.0))
    assert exposure_view(Desk(seeded_store.client, settings, clock=lambda: NOW), "main").missing == ()


def open_exposure_tab() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=30.0)
    at.session_state["refresh"] = "Paused"
    at.session_state["risk_tab"] = "Exposure & VaR"
    at.switch_page("screens/risk.py")
    return at.run()


def test_the_exposure_tab_warns_when_its_var_leaves_a_position_out(app_env: Store) -> None:  # noqa: F811
    assert not [w.value for w in open_exposure_tab().warning if "No usable price" in w.value]
    set_price(app_env, "BBB", float("nan"))
    at = open_exposure_tab()
    assert not at.exception, [e.value for e in at.exception]
    warnings = [w.value for w in at.warning if "No usable price" in w.value]
    assert len(warnings) == 1 and "BBB" in warnings[0] and "understated" in warnings[0]
