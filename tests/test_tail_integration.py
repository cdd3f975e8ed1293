"""The tail-aware VaR methods wired through the running system: the stream daemon's window of standardized
returns, the warm-up that fills it, the market model that reads it, the monitor's snapshot and the pre-trade
gate under each method.

Independent computations: the standardized returns are recomputed here with numpy from the published tick
prices (``z = r / sqrt(diag S)`` with ``S`` the EWMA matrix before the bar, recomputed by the recursion written
out in :func:`tests.test_stream.ewma_from_ticks`); the FHS VaR of a trade by a full revaluation of the scenario
P&L of the book with the trade; the Student-t degrees of freedom by the method of moments written out here, on
the observed entries of the window only (a ticker without a new price in a bar is a missing entry, not a 0).
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
from engine import math_logic
from engine.errors import CorruptDataError, StoreEmptyError
from engine.feeds import Bar, IterableFeed
from engine.market_model import MarketModelCache, build_model
from engine.records import VarMethod
from engine.settings import Settings
from engine.store import STDRET_KEY, MarketSnapshot, StandardizedWindow, Store, encode_array, encode_window_row
from engine.stream import StreamDaemon
from logic.risk_models import risk_model_of
from logic.var_methods import risk_model

from .conftest import TEST_CONFIG
from .gap_feeds import GAP_TICKER, gap_bars, moment_dof
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
    since = np.zeros(len(start.prices))  # bars since each ticker's last new price: a return spans since + 1
    for k, event in enumerate(events):
        cov_before = ewma_from_ticks(start, events[:k], decay)
        prices = np.asarray(event.prices)
        before = prev.prices if k == 0 else np.asarray(events[k - 1].prices)
        if not event.reset:
            r = np.log(prices / before) / np.sqrt(since + 1.0)
            rows.append(r / np.sqrt(np.diagonal(cov_before)))
            versions.append(event.version)
        observed = np.ones(len(prices), dtype=bool) if event.observed is None else np.asarray(event.observed)
        since = np.where(observed | (prices != before), 0.0, since + 1.0)
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


# -- missing entries: a ticker without a new price in a bar -------------------------------------------------------

GAP_WINDOW = 100
"""Bars fed = window rows: every row of the window is the stream's, none the warm-up's simulated ones."""


def _gap_bars(
    start: MarketSnapshot, count: int, *, share: float = 0.3, unchanged_in_gaps: bool = False, seed: int = 13
) -> tuple[list[Bar], list[Bar], np.ndarray]:
    """:func:`tests.gap_feeds.gap_bars` of ``count`` bars a second apart."""
    return gap_bars(start, count, share=share, unchanged=unchanged_in_gaps, seed=seed)


def _gap_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings({"model": {"fhs_window": GAP_WINDOW}})


def test_a_ticker_missing_from_30_percent_of_bars_is_left_out_of_the_fitted_dof_and_only_there(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    # Arrange
    settings = _gap_settings(make_settings)
    warmup.seed(store, settings, now=1.0)
    start = store.read_market()
    bars, _, gaps = _gap_bars(start, GAP_WINDOW)
    daemon = StreamDaemon(store, settings, IterableFeed(bars[:60]), interval=0, clock=lambda: 2.0)
    daemon.run()
    first = store.read_standardized()
    daemon.feed = IterableFeed(bars[60:])
    # Act
    stats = daemon.run()
    # Assert
    window = store.read_standardized()
    incremental = store.read_standardized(first)
    model = MarketModelCache(store).get()
    versions, z = _independent_window(start, store, settings.model.ewma_decay)  # the gaps' returns: price kept
    observed = np.ones(z.shape, dtype=bool)
    observed[gaps, start.tickers.index(GAP_TICKER)] = False
    expected_dof = moment_dof(z[observed])
    assert stats.prices_rejected == (gaps.sum() + 1) // 2  # the NaN prints: refused by the price filter
    assert window.versions.tolist() == versions and window.rows == GAP_WINDOW
    np.testing.assert_allclose(window.values, z, rtol=1e-12, atol=0)
    assert abs(moment_dof(z) - expected_dof) > 0.2  # the stand-in zeros would fatten the tails...
    assert model.dof == pytest.approx(expected_dof, rel=1e-12)  # ...and are not in the fitted sample
    np.testing.assert_array_equal(window.observed, observed)
    assert (window.values[~observed] == 0.0).all()  # the stand-in, finite: what FHS reads as no move
    np.testing.assert_array_equal(incremental.values, window.values)
    np.testing.assert_array_equal(incremental.observed, window.observed)
    x = np.array([1e5, -5e4, 2e4, 3e4])
    sigma = math.sqrt(x @ model.cov @ x)
    t_var = stats_t_var(0.99, expected_dof) * sigma
    assert risk_model_of(model, VarMethod.STUDENT_T, 1.0).var(x, 0.99) == pytest.approx(t_var, rel=1e-9)


def stats_t_var(confidence: float, nu: float) -> float:
    """The unit-variance Student-t quantile: ``t_ν⁻¹(c) · sqrt((ν - 2) / ν)``."""
    from scipy import stats

    return float(stats.t.ppf(confidence, nu)) * math.sqrt((nu - 2.0) / nu)


def test_a_missing_price_is_left_out_where_the_same_price_arriving_unchanged_counts_as_a_zero_return(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    # Arrange: the gap ticker's price does not move in its gap bars, so both streams see the same returns
    settings = _gap_settings(make_settings)
    warmup.seed(store, settings, now=1.0)
    start = store.read_market()
    with_gaps, full, gaps = _gap_bars(start, GAP_WINDOW, unchanged_in_gaps=True)
    StreamDaemon(store, settings, IterableFeed(full), interval=0, clock=lambda: 2.0).run()
    present = store.read_standardized()
    present_model = MarketModelCache(store).get()
    present_dof = present_model.dof  # read now: the model reads its window lazily
    store.client.flushdb()
    warmup.seed(store, settings, now=1.0)
    # Act
    StreamDaemon(store, settings, IterableFeed(with_gaps), interval=0, clock=lambda: 2.0).run()
    # Assert
    missing = store.read_standardized()
    missing_model = MarketModelCache(store).get()
    col = start.tickers.index(GAP_TICKER)
    others = [i for i in range(len(start.tickers)) if i != col]
    # the other tickers' window values and matrix block, bit for bit; a gap is no data for the gap ticker's
    # variance (math_logic.update_covariance_ewma_observed), so its later entries are standardized by a vol that
    # did not decay through the gaps
    np.testing.assert_array_equal(missing.values[:, others], present.values[:, others])
    np.testing.assert_array_equal(missing_model.cov[np.ix_(others, others)], present_model.cov[np.ix_(others, others)])
    assert missing_model.cov[col, col] > present_model.cov[col, col]
    assert (present.values[gaps, col] == 0.0).all() and (missing.values[gaps, col] == 0.0).all()
    assert present_dof == pytest.approx(moment_dof(present.values), rel=1e-12)  # unchanged: observed zeros
    observed_sample = np.concatenate((missing.values[:, others].ravel(), missing.values[~gaps, col]))
    assert missing_model.dof == pytest.approx(moment_dof(observed_sample), rel=1e-12)  # gaps: left out
    assert missing_model.dof > present_dof  # the gaps do not fatten the tails (observed zeros would)
    assert present.observed.all()
    np.testing.assert_array_equal(missing.observed[:, col], ~gaps)
    assert missing.observed[:, others].all()


def test_a_window_without_missing_entries_is_stored_and_read_exactly_as_before(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = _settings(make_settings)
    warmup.seed(store, settings, now=1.0)
    start = store.read_market()

    StreamDaemon(store, settings, IterableFeed(_bars(start, WINDOW + 7)), interval=0, clock=lambda: 2.0).run()

    window = store.read_standardized()
    model = MarketModelCache(store).get()
    raws = store.client.lrange(STDRET_KEY, 0, -1)
    for raw, version, row in zip(raws, window.versions, window.values, strict=True):
        assert raw == encode_array(np.concatenate(([float(version)], row)))  # the row format of before, byte for byte
    assert model.dof == math_logic.fit_student_t_dof(window.values, 3.0, 30.0)  # the unmasked fit, bit for bit
    fhs = risk_model_of(model, VarMethod.FHS, 1.0)
    np.testing.assert_array_equal(fhs.scenarios, math_logic.fhs_scenarios(window.values, model.vol))


def test_a_window_stored_before_entries_were_marked_loads_with_its_zeros_observed(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = _settings(make_settings)
    warmup.seed(store, settings, now=1.0)
    tickers = store.read_market().tickers
    values = np.random.default_rng(4).standard_t(5, (WINDOW, len(tickers)))
    values[::3, 1] = 0.0
    store.write_standardized_window(tickers, np.zeros(WINDOW, dtype=np.int64), values, WINDOW)
    old_rows = [encode_array(np.concatenate(([0.0], row))) for row in values]  # what the old code wrote
    assert store.client.lrange(STDRET_KEY, 0, -1) == old_rows

    window = store.read_standardized()

    np.testing.assert_array_equal(window.values, values)
    assert window.observed.shape == values.shape and window.observed.all()
    assert MarketModelCache(store).get().dof == pytest.approx(moment_dof(values), rel=1e-12)


@pytest.mark.parametrize(
    "row",
    [
        np.array([3.0, 0.1, np.inf, 0.2, 0.3]),  # an infinite return
        np.array([np.nan, 0.1, 0.2, 0.3, 0.4]),  # NaN marks a missing return, never a version
        np.array([2.5, 0.1, 0.2, 0.3, 0.4]),  # not a version
        np.array([3.0, 0.1, 0.2, 0.3]),  # a row of another universe
    ],
)
def test_a_corrupt_stored_window_row_is_refused_with_a_coded_error(
    store: Store, make_settings: Callable[..., Settings], row: np.ndarray
) -> None:
    settings = _settings(make_settings)
    warmup.seed(store, settings, now=1.0)
    store.client.lset(STDRET_KEY, -1, encode_array(row))

    with pytest.raises(CorruptDataError):
        store.read_standardized()


def test_a_window_holding_nan_in_memory_is_refused_by_the_model_with_a_coded_error(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = _settings(make_settings)
    warmup.seed(store, settings, now=1.0)
    snap = store.read_market()
    values = store.read_standardized().values.copy()
    values[3, 2] = np.nan  # not a gap: gaps are their stand-in 0 and False in ``observed``
    corrupt = StandardizedWindow(snap.tickers, np.zeros(WINDOW, dtype=np.int64), values)

    model = build_model(snap, snap.cov, window_source=lambda: corrupt)

    with pytest.raises(CorruptDataError, match="standardized window"):
        _ = model.dof


def test_a_window_row_is_written_with_nan_only_where_an_entry_is_declared_missing() -> None:
    row = encode_window_row(7, [0.5, 0.0, -1.0], np.array([True, False, True]))
    assert np.isnan(np.frombuffer(row[-24:], dtype="<f8")).tolist() == [False, True, False]
    assert encode_window_row(7, [0.5, 0.0, -1.0], np.ones(3, dtype=bool)) == encode_window_row(7, [0.5, 0.0, -1.0])
    with pytest.raises(ValueError, match="finite"):
        encode_window_row(7, [0.5, np.nan, -1.0])  # a NaN from a bug is never stored as a gap
    with pytest.raises(ValueError, match="stand-in 0"):
        encode_window_row(7, [0.5, 0.2, -1.0], np.array([True, False, True]))


def test_add_ticker_keeps_the_missing_entries_of_the_window_it_grows(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = _gap_settings(make_settings)
    warmup.seed(store, settings, now=1.0)
    bars, _, _ = _gap_bars(store.read_market(), 40)
    StreamDaemon(store, settings, IterableFeed(bars), interval=0, clock=lambda: 2.0).run()
    before = store.read_standardized()

    warmup.add_ticker(store, settings, "EEE", 10.0, 0.3, now=1.5)

    after = store.read_standardized()
    assert not before.observed.all()
    np.testing.assert_array_equal(after.observed[:, :-1], before.observed)
    assert after.observed[:, -1].all()  # the new column's draws stand in as observations, as before


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


def test_a_gap_in_a_warm_up_history_is_marked_missing_as_the_daemon_marks_it(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = _settings(make_settings)
    rng = np.random.default_rng(17)
    returns = rng.standard_t(4, size=(80, 4)) * 0.001
    gapped = returns.copy()
    holes = [(35, 3), (50, 3), (51, 0), (79, 2)]  # after the 30 seed rows: each one is in the window
    for t, i in holes:
        gapped[t, i] = np.nan  # no close on one side of the return
    carried = np.where(np.isnan(gapped), 0.0, gapped)  # what the daemon does with it: the price carried forward

    cov, z, observed = warmup.standardized_history(gapped, settings.model.ewma_decay)
    cov_carried, z_carried, observed_carried = warmup.standardized_history(carried, settings.model.ewma_decay)
    market = warmup.SeedMarket(settings.universe.tickers, np.full(4, 100.0), cov, z, observed)
    warmup.seed(store, settings, history=market, now=1.0)

    m = warmup.HISTORY_SEED_ROWS
    np.testing.assert_array_equal(cov, cov_carried)
    np.testing.assert_array_equal(z, z_carried)
    assert observed_carried.all()  # a 0 return that was observed is a 0 observation
    assert sorted((int(t) + m, int(i)) for t, i in np.argwhere(~observed)) == holes
    window = store.read_standardized()
    np.testing.assert_array_equal(window.observed, observed[-WINDOW:])
    np.testing.assert_array_equal(window.values, z[-WINDOW:])


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
