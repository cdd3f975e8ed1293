"""The vectorised monitor (logic/batch.py) against the per-portfolio computation, on random books."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
from scipy import stats

import logic.batch as batch_module
import warmup
from engine.records import VarMethod
from engine.settings import Limits, Settings
from engine.store import PortfolioKeys, PositionRows, Store
from logic.batch import PortfolioLookup, batch_risk, exposure_matrix, read_limits
from logic.monitor import Monitor
from logic.snapshot import MarketView, risk_figures, usable_prices
from logic.valuation import value_portfolio

RTOL = 1e-12
TICKERS = [f"T{i:02d}" for i in range(24)]
METHODS = (VarMethod.NORMAL, VarMethod.STUDENT_T, VarMethod.FHS)


def _random_settings(make_settings: Callable[..., Settings], seed: int, count: int = 18) -> Settings:
    """Random books over 24 tickers: longs and shorts (margin accounts), cash-only books, zero quantities,
    every VaR method, several limit confidences and horizons."""
    rng = np.random.default_rng(seed)
    assets = {
        t: {"price": float(rng.uniform(5, 500)), "annual_vol": float(rng.uniform(0.1, 0.6)),
            "avg_daily_volume": 1_000_000, "spread_bps": 2.0}
        for t in TICKERS
    }  # fmt: skip
    books: list[dict[str, Any]] = []
    for k in range(count):
        margin = k % 2 == 1
        size = 0 if k % 7 == 3 else int(rng.integers(1, 12))
        held = rng.choice(len(TICKERS), size=size, replace=False)
        holdings = {}
        for j, i in enumerate(held):
            qty = int(rng.integers(1, 5000)) * (-1 if margin and rng.random() < 0.4 else 1)
            holdings[TICKERS[i]] = 0 if j == 0 and k % 5 == 2 else qty
        book: dict[str, Any] = {
            "id": f"p{k:02d}", "account_type": "margin" if margin else "cash", "cash": str(int(rng.integers(0, 10**7))),
            "holdings": holdings, "var_method": str(METHODS[k % 3]),
            "limits": {"var_limit": float(rng.uniform(1e3, 1e6)), "var_confidence": [0.95, 0.99, 0.975][k % 3],
                       "var_horizon_days": [1.0, 10.0, 0.5][(k // 3) % 3]},
        }  # fmt: skip
        books.append(book)
    return make_settings({"universe": {"assets": assets}, "portfolios": books})


@pytest.fixture
def random_store(store: Store, make_settings: Callable[..., Settings], request: pytest.FixtureRequest) -> Any:
    settings = _random_settings(make_settings, seed=getattr(request, "param", 7))
    warmup.seed(store, settings)
    return store, settings


def _market(monitor: Monitor, store: Store) -> MarketView:
    header = store.read_market_header()
    cov, stressed, model = monitor._matrices_for(header.version, header.ts, header.tickers)
    return MarketView(header, cov, stressed, model)


@pytest.mark.parametrize("random_store", [7, 11, 23], indirect=True)
def test_batch_risk_equals_the_per_portfolio_figures_on_random_books(random_store: Any) -> None:
    # Arrange: every portfolio valued at the stored market
    store, settings = random_store
    monitor = Monitor(store, settings, idle_refresh_seconds=0)
    market = _market(monitor, store)
    lookup = PortfolioLookup(settings)
    pids = list(settings.portfolio_ids)
    limits = read_limits(store, pids, lookup, {})
    vectors, methods = [], []
    for pid in pids:
        valuation = value_portfolio(store.read_portfolio(pid), market.header)
        vectors.append(np.where(usable_prices(valuation), valuation.market_values, 0.0))
        methods.append(lookup.var_method_for(pid))
    exposures = exposure_matrix(vectors, len(market.header.tickers))

    # Act
    figures = batch_risk(market, exposures, methods, [limits[p] for p in pids], settings.model)

    # Assert: each book against the per-portfolio reference on its held sub-book
    assert set(methods) == set(METHODS)
    m, z99, day = settings.model.stress_vol_multiplier, float(stats.norm.ppf(0.99)), settings.model.bars_per_day
    worse: set[str] = set()
    for p, pid in enumerate(pids):
        held = np.flatnonzero(exposures[p])
        ref = risk_figures(market, methods[p], held, exposures[p, held], settings.limits_for(pid), settings.model)
        got = figures[p]
        assert got is not None, pid
        x = exposures[p]  # stressed VaR: the worse of the crisis matrix and of m² Σ, computed here
        floored, multiplied = math.sqrt(x @ market.stressed @ x), m * math.sqrt(x @ market.cov @ x)
        if held.size:
            worse.add("floored" if floored > multiplied else "multiplied")
        assert math.isclose(got.stressed_var99, z99 * max(floored, multiplied) * math.sqrt(day), rel_tol=1e-9), pid
        for name in ("var95", "var99", "cvar95", "cvar99", "stressed_var99", "limit_var"):
            np.testing.assert_allclose(
                getattr(got, name), getattr(ref, name), rtol=RTOL, atol=0, err_msg=f"{pid} {name}"
            )
        np.testing.assert_allclose(got.components, ref.components, rtol=RTOL, atol=0, err_msg=f"{pid} components")
        if held.size:  # Euler: the components add up to the VaR at the limit
            assert math.isclose(got.components.sum(), got.limit_var, rel_tol=1e-9)
        else:
            assert got.var99 == 0.0 and got.components.size == 0
    assert worse == {"floored", "multiplied"}  # long/short books where the rule bites, long-only ones where not


def test_books_past_the_gather_limit_take_the_dense_products_with_the_same_figures(
    random_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: the same books through the gathered sub-matrices and through E Σ (a limit of 0 forces it)
    store, settings = random_store
    market = _market(Monitor(store, settings, idle_refresh_seconds=0), store)
    lookup = PortfolioLookup(settings)
    pids = list(settings.portfolio_ids)
    limits = read_limits(store, pids, lookup, {})
    vectors = []
    for pid in pids:
        valuation = value_portfolio(store.read_portfolio(pid), market.header)
        vectors.append(np.where(usable_prices(valuation), valuation.market_values, 0.0))
    exposures = exposure_matrix(vectors, len(market.header.tickers))
    methods = [lookup.var_method_for(p) for p in pids]
    chosen = [lim for lim in (limits[p] for p in pids) if isinstance(lim, Limits)]
    assert len(chosen) == len(pids)

    # Act
    gathered = batch_risk(market, exposures, methods, chosen, settings.model)
    assert batch_module.HeldBooks(exposures).idx is not None
    monkeypatch.setattr(batch_module, "GATHER_LIMIT", 0)
    assert batch_module.HeldBooks(exposures).idx is None
    dense = batch_risk(market, exposures, methods, chosen, settings.model)

    # Assert
    for pid, a, b in zip(pids, gathered, dense, strict=True):
        assert a is not None and b is not None, pid
        for name in ("var95", "var99", "cvar95", "cvar99", "stressed_var99", "limit_var"):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=RTOL, atol=0, err_msg=f"{pid} {name}")
        np.testing.assert_allclose(a.components, b.components, rtol=RTOL, atol=0, err_msg=f"{pid} components")


def _numbers(node: Any, path: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):  # a vectorised snapshot's component_var: ComponentShares
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_numbers(v, f"{path}.{k}"))
        return out
    if isinstance(node, list | tuple | PositionRows):  # a vectorised snapshot's positions: PositionRows
        out = {}
        for i, v in enumerate(node):
            out.update(_numbers(v, f"{path}[{i}]"))
        return out
    return {path: node}


def test_vectorised_monitor_writes_the_same_snapshots_as_the_per_portfolio_loop(random_store: Any) -> None:
    # Arrange: one held ticker without a price (valued at 0, listed) and a portfolio whose state is corrupt
    store, settings = random_store
    store.client.hset(PortfolioKeys("p04").state, "cash", "not-a-number")
    positions = store.client.hgetall(PortfolioKeys("p05").positions)
    store.client.hset(PortfolioKeys("p05").positions, "ZZZ", next(iter(positions.values())))  # held, not in the market
    now = 1_800_000_000.0
    loop = Monitor(store, settings, lambda: now, consumer="loop", idle_refresh_seconds=0, vectorised=False)
    fast = Monitor(store, settings, lambda: now, consumer="fast", idle_refresh_seconds=0)

    # Act: both snapshot the same stored market at the same time
    reference = loop.refresh()
    batched = fast.refresh()

    # Assert: the same portfolios, the same fields, every number equal to 1e-12 relative
    assert sorted(batched) == sorted(reference) and "p04" not in batched
    assert batched["p05"]["data"]["missing_prices"] == ["ZZZ"]
    assert fast.stats.portfolio_errors == loop.stats.portfolio_errors == 1
    for pid, snap in reference.items():
        want, got = _numbers(snap), _numbers(batched[pid])
        assert want.keys() == got.keys(), pid
        for path, value in want.items():
            if isinstance(value, float) and isinstance(got[path], float):
                assert math.isclose(got[path], value, rel_tol=RTOL, abs_tol=0.0), (pid, path, got[path], value)
            else:
                assert got[path] == value, (pid, path)


def test_an_absurd_exposure_takes_the_per_portfolio_error_path(random_store: Any) -> None:
    # Arrange: a book of 1e200 dollars (finite, but its variance overflows)
    store, settings = random_store
    monitor = Monitor(store, settings, idle_refresh_seconds=0)
    market = _market(monitor, store)
    n = len(market.header.tickers)
    exposures = np.zeros((2, n))
    exposures[0, 0] = 1e200
    exposures[1, 1] = 1e6
    limits = [settings.limits, settings.limits]

    # Act
    figures = batch_risk(market, exposures, [VarMethod.NORMAL] * 2, limits, settings.model)

    # Assert: no figures for the absurd book (the monitor builds it one by one and reports it), the other intact
    assert figures[0] is None
    assert figures[1] is not None and figures[1].var99 > 0
