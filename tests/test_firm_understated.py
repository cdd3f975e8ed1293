"""The firm view never shows a partial figure as a whole one: a held ticker without a usable price counts 0 in
every firm figure (documented in logic/firm.py), so the view lists it and the Firm page marks the firm VaR
incomplete. Real seeded Redis; VaR against the delta-normal closed form written out here."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from engine.settings import Settings
from engine.store import Store
from logic.firm import Firm
from logic.views.common import Desk
from logic.views.firm import firm_view

from .test_analytics_risk_view import set_price
from .test_firm import app_env, open_firm  # noqa: F401 (the Firm page's fixture and opener, shared)

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
NOW = 1_700_000_000.0


def var_of(x: np.ndarray, cov: np.ndarray, settings: Settings) -> float:
    z = NormalDist().inv_cdf(settings.limits.var_confidence)
    return z * math.sqrt(settings.model.bars_per_day * settings.limits.var_horizon_days * float(x @ cov @ x))


def dollar_exposures(store: Store, holdings: dict[str, dict[str, int]]) -> np.ndarray:
    market = store.read_market()
    x = np.zeros(len(market.tickers))
    for book in holdings.values():
        for ticker, qty in book.items():
            i = market.tickers.index(ticker)
            price = float(market.prices[i])
            x[i] += qty * price if math.isfinite(price) and price > 0 else 0.0
    return x


HOLDINGS = {"main": {"AAA": 1000, "BBB": 2000}, "hedge": {"CCC": 300, "DDD": -1000}}  # TEST_CONFIG's books


def test_a_fully_priced_firm_is_complete(seeded_store: Store, settings: Settings) -> None:
    risk = Firm(seeded_store.client, settings).risk()
    assert risk.complete and dict(risk.missing_prices) == {}
    view = firm_view(Desk(seeded_store.client, settings, clock=lambda: NOW))
    assert view.complete and dict(view.understated) == {}


@pytest.mark.parametrize("bad", [float("nan"), 0.0, -1.0])
def test_a_held_ticker_without_a_usable_price_is_counted_zero_and_listed(
    seeded_store: Store, settings: Settings, bad: float
) -> None:
    set_price(seeded_store, "BBB", bad)
    risk = Firm(seeded_store.client, settings).risk()
    cov = seeded_store.read_market().cov
    # what the figure is: BBB (main's 2,000 shares) counted as 0 ...
    assert risk.firm_var == pytest.approx(var_of(dollar_exposures(seeded_store, HOLDINGS), cov, settings), rel=1e-12)
    # ... and that is said, not hidden
    assert not risk.complete and dict(risk.missing_prices) == {"main": ("BBB",)}
    view = firm_view(Desk(seeded_store.client, settings, clock=lambda: NOW))
    assert not view.complete and list(view.understated) == ["main"]
    assert "BBB" in view.understated["main"] and dict(view.failed) == {}


def test_the_smallest_positive_price_is_a_price(seeded_store: Store, settings: Settings) -> None:
    """Boundary: 0 is no price (above), the next representable price up is one."""
    tiny = math.nextafter(0.0, 1.0)
    set_price(seeded_store, "BBB", tiny)
    risk = Firm(seeded_store.client, settings).risk()
    assert risk.complete
    cov = seeded_store.read_market().cov
    assert risk.firm_var == pytest.approx(var_of(dollar_exposures(seeded_store, HOLDINGS), cov, settings), rel=1e-12)


def test_the_firm_page_marks_an_understated_firm_var(app_env: Store) -> None:  # noqa: F811
    labels = [m.label for m in open_firm().metric]
    assert "Firm VaR (95%, 1 day)" in labels
    set_price(app_env, "BBB", float("nan"))
    at = open_firm()
    assert not at.exception, [e.value for e in at.exception]
    assert "Firm VaR (95%, 1 day) — incomplete" in [m.label for m in at.metric]
    warnings = [w.value for w in at.warning]
    assert any("main is understated" in w and "BBB" in w for w in warnings), warnings
