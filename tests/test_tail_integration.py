"""The tail-aware VaR methods wired through the running system: the stream daemon's window of standardized
returns, the warm-up that fills it, the market model that reads it, the monitor's snapshot and the pre-trade
gate under each method.

Independent computations: the standardized returns are recomputed here with numpy from the published tick
prices (``z = r / sqrt(diag S)`` with ``S`` the EWMA matrix before the bar, recomputed by the recursion written
out in :func:`tests.test_stream.ewma_from_ticks`); the FHS VaR of a trade by a full revaluation of the scenario
P&L of the book with the trade.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import warmup
from engine.errors import StoreEmptyError
from engine.feeds import Bar, IterableFeed
from engine.market_model import MarketModelCache
from engine.records import VarMethod
from engine.settings import Settings
from engine.store import STDRET_KEY, MarketSnapshot, StandardizedWindow, Store
from engine.stream import StreamDaemon
from logic.risk_models import risk_model_of
from logic.var_methods import risk_model

from .conftest import TEST_CONFIG
from .test_stream import ewma_from_ticks

WINDOW = 20
"""A small ``model.fhs_window`` so the tests see it fill and roll."""


def _settings(make_settings: Callable[..., Settings], **model: Any) -> Settings:
    return make_settings({"model": {"fhs_window": WINDOW, **model}})


def _bars(start: MarketSnapshot, count: int, seed: int = 3, *, reset_at: int | None = None) -> list[Bar]:
    rng = np.random.default_rng(seed)
    prices = start.prices.copy()
    bars = []
    for k in range(count):
        prices = prices * np.exp(rng.normal(0.0, 0.002, size=len(prices)))
        bars.append(Bar(1000.0 + k, dict(zip(start.tickers, prices.tolist(), strict=True)), reset=k == reset_at))
    return bars


def _independent_window(start: MarketSnapshot, store: Store, decay: float) -> tuple[list[int], np.ndarray]:
    """Versions and z rows the daemon should have pushed, recomputed from its tick events."""
    events = store.read_ticks()
    versions, rows = [], []
    prev = start
    for k, event in enumerate(events):
        cov_before = ewma_from_ticks(start, events[:k], decay)
        if not event.reset:
            r = np.log(np.asarray(event.prices) / (prev.prices if k == 0 else np.asarray(events[k - 1].prices)))
            rows.append(r / np.sqrt(np.diagonal(cov_before)))
            versions.append(event.version)
    return versions, np.array(rows)


# -- the stream daemon's window ------------------------------------------------------------------------------


def test_stream_daemon_writes_the_bounded_window_of_returns_over_the_vol_before_the_bar(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = _settings(make_settings)
    warmup.seed(store, settings, now=1.0)
    start = store.read_market()
    bars = _bars(start, WINDOW + 7)

    StreamDaemon(store, settings, IterableFeed(bars), interval=0, clock=lambda: 2.0).run()

    window = store.read_standardized()
    versions, expected = _independent_window(start, store, settings.model.ewma_decay)
    assert window.rows == WINDOW == store.client.llen(STDRET_KEY)
    assert window.tickers == start.tickers
    assert window.versions.tolist() == versions[-WINDOW:]
    np.testing.assert_allclose(window.values, expected[-WINDOW:], rtol=1e-12, atol=0)


def test_a_reset_bar_adds_no_return_and_the_next_bar_does(store: Store, make_settings: Callable[..., Settings]) -> None:
    settings = _settings(make_settings)
    warmup.seed(store, settings, now=1.0)
    start = store.read_market()
    seeded = store.read_standardized()
    bars = _bars(start, 4, reset_at=0)

    StreamDaemon(store, settings, IterableFeed(bars), interval=0, clock=lambda: 2.0).run()

    window = store.read_standardized()
    # the warm-up's simulated rows (version 0) roll by three: bars 2..4 each pushed one, the reset bar none
    assert window.versions.tolist() == [0] * (WINDOW - 3) + [2, 3, 4]
    np.testing.assert_array_equal(window.values[: WINDOW - 3], seeded.values[3:])
    _, expected = _independent_window(start, store, settings.model.ewma_decay)
    np.testing.assert_allclose(window.values[-3:], expected, rtol=1e-12)


def test_no_return_is_added_across_a_market_written_by_the_warm_up(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = _settings(make_settings)
    warmup.seed(store, settings, now=1.0)
    start = store.read_market()
    daemon = StreamDaemon(store, settings, IterableFeed([]), interval=0, clock=lambda: 2.0)
    bars = _bars(start, 3)
    daemon.process_bar(bars[0])
    warmup.add_ticker(store, settings, "EEE", 10.0, 0.3, now=1.5)  # a foreign write: the daemon reloads

    daemon.process_bar(bars[1])  # its return spans the reload: no row
    daemon.process_bar(bars[2])

    window = store.read_standardized()
    assert window.tickers == (*start.tickers, "EEE")
    assert window.versions.tolist()[-2:] == [1, 4]  # bar 1 -> v1, add_ticker -> v2, bar 2 -> v3 (no row), v4
    assert window.rows == WINDOW


def test_an_incremental_read_equals_a_full_read(store: Store, make_settings: Callable[..., Settings]) -> None:
    settings = _settings(make_settings)
    warmup.seed(store, settings, now=1.0)
    start = store.read_market()
    daemon = StreamDaemon(store, settings, IterableFeed([]), interval=0, clock=lambda: 2.0)
    first = store.read_standardized()
    bars = _bars(start, 5)
    for bar in bars[:3]:
        daemon.process_bar(bar)
    second = store.read_standardized(first)
    for bar in bars[3:]:
        daemon.process_bar(bar)

    third = store.read_standardized(second)
    full = store.read_standardized()

    assert third.seq == full.seq == WINDOW + 5
    np.testing.assert_array_equal(third.versions, full.versions)
    np.testing.assert_array_equal(third.values, full.values)
    assert store.read_standardized(full) is full  # nothing new: the same object, one HMGET


# -- warm-up ---------------------------------------------------------------------------------------------------


def test_warm_up_from_history_fills_the_window_as_the_daemon_would(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = _settings(make_settings)
    rng = np.random.default_rng(11)
    returns = rng.standard_t(4, size=(80, 4)) * 0.001
    prices = 100 * np.exp(np.cumsum(returns, axis=0))
    path = tmp_path / "h.csv"
    rows = "".join(  # one-minute bars: the model's bar, so the matrix is stored unscaled
        f"{1_700_000_000 + 60 * k}," + ",".join(repr(p) for p in row.tolist()) + "\n" for k, row in enumerate(prices)
    )
    path.write_text("date,AAA,BBB,CCC,DDD\n" + rows)

    warmup.seed(store, settings, history=warmup.read_history(path, settings), now=1.0)

    r = np.diff(np.log(prices), axis=0)
    m = warmup.HISTORY_SEED_ROWS
    cov = r[:m].T @ r[:m] / m  # the seed, then the recursion written out
    z = []
    for row in r[m:]:
        z.append(row / np.sqrt(np.diagonal(cov)))
        cov = 0.94 * cov + 0.06 * np.outer(row, row)
    window = store.read_standardized()
    assert window.rows == WINDOW
    assert window.versions.tolist() == [0] * WINDOW
    np.testing.assert_allclose(window.values, np.array(z)[-WINDOW:], rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(store.read_market().cov, cov, rtol=1e-9)


def test_simulated_warm_up_fills_a_full_window_and_leaves_the_seed_matrix(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = _settings(make_settings)

    warmup.seed(store, settings, now=1.0)

    window = store.read_standardized()
    assert window.rows == WINDOW and window.tickers == settings.universe.tickers
    np.testing.assert_array_equal(store.read_market().cov, warmup.market_from_settings(settings).cov)
    assert np.isfinite(window.values).all() and np.abs(window.values).max() < 10


# -- the market model ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(VarMethod))
def test_the_market_models_risk_model_is_var_methods_on_the_stored_inputs(
    store: Store, make_settings: Callable[..., Settings], method: VarMethod
) -> None:
    settings = _settings(make_settings)
    warmup.seed(store, settings, now=1.0)
    model = MarketModelCache(store).get()
    snap = store.read_market()
    window = store.read_standardized()
    x = np.array([1e5, -5e4, 2e4, 0.0])

    built = risk_model_of(model, method, 390.0)

    dof = None
    if method is VarMethod.STUDENT_T:
        z2 = np.square(window.values.ravel())
        dof = min(max(6.0 / (np.mean(z2**2) / np.mean(z2) ** 2 - 3.0) + 4.0, 3.0), 30.0)
    expected = risk_model(
        method, snap.cov, horizon_bars=390.0, standardized=window.values,
        current_vol=np.sqrt(np.diagonal(snap.cov)), dof=dof,
    )  # fmt: skip
    assert built.var(x, 0.99) == pytest.approx(expected.var(x, 0.99), rel=1e-12)
    assert built.cvar(x, 0.99) == pytest.approx(expected.cvar(x, 0.99), rel=1e-12)
    assert risk_model_of(model, method, 390.0) is built  # cached per (snapshot, method, horizon)


def test_fhs_without_a_stored_window_is_a_clear_error(store: Store, make_settings: Callable[..., Settings]) -> None:
    settings = _settings(make_settings)
    warmup.seed(store, settings, now=1.0)
    store.client.delete(STDRET_KEY, "mkt:{m}:stdret_meta")

    model = MarketModelCache(store).get()

    assert model.window == StandardizedWindow.empty(model.tickers) or model.window.rows == 0
    with pytest.raises(StoreEmptyError, match="standardized returns"):
        risk_model_of(model, VarMethod.FHS, 1.0)
    assert math.isfinite(risk_model_of(model, VarMethod.NORMAL, 1.0).var(np.ones(4), 0.99))


# -- the monitor's snapshot ------------------------------------------------------------------------------------


def _fitted_dof(z: np.ndarray) -> float:
    """ν = 6 / κ + 4 from the zero-mean excess kurtosis of the pooled window, in [3, 30] (written out here)."""
    z2 = np.square(z.ravel())
    kurtosis = np.mean(z2**2) / np.mean(z2) ** 2 - 3.0
    return 30.0 if kurtosis <= 0 else float(min(max(6.0 / kurtosis + 4.0, 3.0), 30.0))


@pytest.mark.parametrize("method", list(VarMethod))
def test_the_monitors_snapshot_var_and_cvar_under_each_method_equal_risk_model_on_the_same_inputs(
    store: Store, make_settings: Callable[..., Settings], method: VarMethod
) -> None:
    from logic.monitor import Monitor

    settings = _settings(make_settings, var_method=str(method))
    warmup.seed(store, settings, now=1.0)
    start = store.read_market()
    monitor = Monitor(store, settings, clock=lambda: 3.0, idle_refresh_seconds=0)
    StreamDaemon(store, settings, IterableFeed(_bars(start, 3)), interval=0, clock=lambda: 2.0).run()

    monitor.process_available()

    snap = store.read_market()
    window = store.read_standardized()
    tick = store.last_tick()
    assert tick is not None and window.tickers == snap.tickers
    expected = risk_model(
        method, snap.cov, horizon_bars=390.0, standardized=window.values,
        current_vol=np.sqrt(np.diagonal(snap.cov)), dof=_fitted_dof(window.values),
    )  # fmt: skip
    limits = settings.limits_for("hedge")
    for pid in ("main", "hedge"):
        snapshot = store.read_snapshot(pid)
        assert snapshot is not None and snapshot["version"] == 3 and snapshot["var_method"] == str(method)
        holdings = settings.portfolio(pid).holdings
        x = np.array([holdings.get(t, 0) * p for t, p in zip(snap.tickers, tick.prices, strict=True)])
        var = snapshot["var"]
        assert var["var95"] == pytest.approx(expected.var(x, 0.95), rel=1e-9)
        assert var["var99"] == pytest.approx(expected.var(x, 0.99), rel=1e-9)
        assert var["cvar95"] == pytest.approx(expected.cvar(x, 0.95), rel=1e-9)
        assert var["cvar99"] == pytest.approx(expected.cvar(x, 0.99), rel=1e-9)
        assert var["cvar99"] >= var["var99"] > 0
        limit_var = expected.with_horizon(390.0 * limits.var_horizon_days).var(x, limits.var_confidence)
        assert var["utilization"] == pytest.approx(limit_var / float(limits.var_limit), rel=1e-9)
        assert sum(snapshot["component_var"].values()) == pytest.approx(limit_var, rel=1e-9)
        assert set(snapshot["component_var"]) == set(holdings)


def test_a_portfolio_overrides_the_models_var_method(store: Store, make_settings: Callable[..., Settings]) -> None:
    from logic.monitor import Monitor

    portfolios = copy.deepcopy(TEST_CONFIG["portfolios"])
    portfolios[1]["var_method"] = "fhs"  # hedge on fhs, main on the model's student_t
    settings = make_settings({"model": {"fhs_window": WINDOW, "var_method": "student_t"}, "portfolios": portfolios})
    warmup.seed(store, settings, now=1.0)

    Monitor(store, settings, clock=lambda: 3.0, idle_refresh_seconds=0).refresh()

    main, hedge = store.read_snapshot("main"), store.read_snapshot("hedge")
    assert main is not None and hedge is not None
    assert (main["var_method"], hedge["var_method"]) == ("student_t", "fhs")
    assert settings.var_method_for("main") is VarMethod.STUDENT_T
    assert settings.var_method_for("hedge") is VarMethod.FHS


def test_a_history_reload_of_a_seeded_store_refills_the_window(
    redis_server: Any, store: Store, config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(5)
    prices = 100 * np.exp(np.cumsum(rng.standard_t(5, size=(60, 4)) * 0.01, axis=0))
    path = tmp_path / "daily.csv"
    days = [f"2024-01-{d:02d}" for d in range(1, 32)] + [f"2024-02-{d:02d}" for d in range(1, 30)]
    path.write_text("date,AAA,BBB,CCC,DDD\n" + "".join(
        f"{day}," + ",".join(repr(p) for p in row.tolist()) + "\n" for day, row in zip(days, prices, strict=True)
    ))  # fmt: skip
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    assert warmup.main(["--config", str(config_file)]) == 0
    simulated = store.read_standardized()

    assert warmup.main(["--config", str(config_file), "--history", str(path)]) == 0

    window = store.read_standardized()
    r = np.diff(np.log(prices), axis=0)
    cov = r[:30].T @ r[:30] / 30  # the file's own EWMA (daily returns), written out
    z = []
    for row in r[30:]:
        z.append(row / np.sqrt(np.diagonal(cov)))
        cov = 0.94 * cov + 0.06 * np.outer(row, row)
    assert window.gen != simulated.gen and window.rows == len(z) == 29
    assert set(window.versions.tolist()) == {store.read_market().version}
    np.testing.assert_allclose(window.values, np.array(z), rtol=1e-9, atol=1e-11)


# -- the pre-trade gate ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(VarMethod))
def test_the_gates_var_after_a_trade_equals_a_full_revaluation_with_the_trade(
    store: Store, make_settings: Callable[..., Settings], method: VarMethod
) -> None:
    from scipy import stats

    from logic.risk_manager import RiskManager

    settings = make_settings({
        "model": {"fhs_window": 100, "var_method": str(method)},
        "limits": {"var_limit": 1e9, "max_concentration": 1.0},
    })  # fmt: skip
    warmup.seed(store, settings, now=time.time())
    rm = RiskManager(store.client, "main", settings)

    decision = rm.check_trade_impact("CCC", 100, "BUY")

    snap, window = store.read_market(), store.read_standardized()
    limits = settings.limits_for("main")
    c, h = limits.var_confidence, 390.0 * limits.var_horizon_days
    holdings = settings.portfolio("main").holdings
    x = np.array([holdings.get(t, 0) * p for t, p in zip(snap.tickers, snap.prices, strict=True)])
    x_after = x.copy()
    x_after[snap.tickers.index("CCC")] += 100 * snap.prices[snap.tickers.index("CCC")]

    def full(book: np.ndarray) -> float:  # the whole book revalued, written out here
        sigma = math.sqrt(book @ snap.cov @ book * h)
        if method is VarMethod.NORMAL:
            return float(stats.norm.ppf(c)) * sigma
        if method is VarMethod.STUDENT_T:
            nu = _fitted_dof(window.values)
            return float(stats.t.ppf(c, nu)) * math.sqrt((nu - 2) / nu) * sigma
        losses = np.sort(-(window.values * np.sqrt(np.diagonal(snap.cov))) @ book)[::-1]
        k = math.ceil((1 - c) * len(losses) - 1e-9)
        return math.sqrt(h) * float(losses[k - 1])

    assert decision["status"] == "APPROVED", decision["reasons"]
    assert decision["var_before"] == pytest.approx(full(x), rel=1e-9)
    assert decision["var_after"] == pytest.approx(full(x_after), rel=1e-9)
    assert decision["delta_var"] == pytest.approx(full(x_after) - full(x), rel=1e-6, abs=1e-6)


def test_the_gate_refuses_on_the_var_limit_under_fhs_exactly_at_the_boundary(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    from logic.risk_manager import RiskManager

    probe = make_settings({"model": {"fhs_window": 100, "var_method": "fhs"}, "limits": {"var_limit": 1e9}})
    warmup.seed(store, probe, now=time.time())
    var_after = RiskManager(store.client, "main", probe).check_trade_impact("AAA", 10, "BUY")["var_after"]

    def decide(limit: float) -> dict[str, Any]:
        settings = make_settings({"model": {"fhs_window": 100, "var_method": "fhs"},
                                  "limits": {"var_limit": limit, "max_concentration": 1.0}})  # fmt: skip
        return RiskManager(store.client, "main", settings).check_trade_impact("AAA", 10, "BUY")

    at, below = decide(var_after), decide(math.nextafter(var_after, 0.0))
    assert at["status"] == "APPROVED"  # exactly at the limit passes
    assert below["status"] == "REJECTED" and "VAR_LIMIT" in {r["code"] for r in below["reasons"]}


def test_the_gate_fails_closed_under_fhs_without_a_window(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    from logic.risk_manager import RiskManager

    settings = make_settings({"model": {"fhs_window": 100, "var_method": "fhs"}})
    warmup.seed(store, settings, now=time.time())
    store.client.delete(STDRET_KEY, "mkt:{m}:stdret_meta")

    decision = RiskManager(store.client, "main", settings).check_trade_impact("AAA", 10, "BUY")

    assert decision["status"] == "REJECTED"
