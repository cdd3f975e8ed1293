"""The continuous VaR backtest's missing entries: a ticker without a new price in a bar (the tick event's
``observed``, published by the stream daemon) is left out of the backtest's Student-t fit, as the live model
leaves it out of its own (engine/market_model.py), while its 0 return stays in the EWMA and FHS.

Independent computations: the backtest's standardized window is recomputed here with numpy from the published
tick prices (the zero-mean seed, then ``z = r / sqrt(diag Σ)`` before ``Σ = λΣ + (1 - λ) r rᵀ``), and ν by the
method of moments written out, on the observed entries only. The real stream daemon publishes the events and the
real backtest runner feeds them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import numpy as np
import pytest
from scipy import stats

import warmup
from engine import math_logic
from engine.feeds import Bar, IterableFeed
from engine.records import VarMethod
from engine.settings import Settings
from engine.store import TICKS_KEY, MarketSnapshot, PortfolioKeys, Store, TickEvent, lock_key
from engine.stream import StreamDaemon
from logic.backtest import BacktestConfig, Backtester, Observation, Track, step_many
from logic.backtest_monitor import backtest_config
from logic.backtest_runner import LEASE, BacktestRunner

from .gap_feeds import GAP_TICKER, gap_bars, moment_dof

# GAP_TICKER (DDD) is held by the ``hedge`` portfolio (CCC and DDD) of the test settings; ``main`` holds AAA and BBB.
WINDOW = 100
SEED_ROWS = 30  # BacktestConfig's default
BARS = 1 + SEED_ROWS + WINDOW + 20
"""The first bar gives no return; then the seed, a full window, and 20 bars more (rows leave the window)."""
REL = 1e-12


def _settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings({"model": {"fhs_window": WINDOW, "bars_per_day": 2}})


def _gap_bars(
    start: MarketSnapshot, *, share: float = 0.3, unchanged: bool = False, seed: int = 13
) -> tuple[list[Bar], list[Bar], np.ndarray]:
    """:func:`tests.gap_feeds.gap_bars` of :data:`BARS` minute bars, never the first one missing."""
    return gap_bars(start, BARS, share=share, unchanged=unchanged, seed=seed, step=0.002, spacing=60.0, first_gap=1)


def _publish(store: Store, settings: Settings, bars: Sequence[Bar]) -> None:
    """The real stream daemon writes ``bars`` (its start creates the backtest runner's consumer group)."""
    stats_ = StreamDaemon(store, settings, IterableFeed(bars), interval=0, clock=lambda: 2.0).run()
    assert stats_.bars_written == len(bars)


def _stored(store: Store, pid: str) -> Backtester:
    found = store.read_backtest_state(pid)
    assert found is not None
    return Backtester.from_dict(found[0])


def _independent(events: Sequence[TickEvent], tickers: Sequence[str], decay: float) -> tuple[np.ndarray, np.ndarray]:
    """The backtest's window (the last WINDOW standardized returns) and its covariance, from the events' prices."""
    cols = [events[0].tickers.index(t) for t in tickers]
    p = np.array([np.asarray(e.prices)[cols] for e in events])
    seen = np.array([np.ones(len(cols), bool) if e.observed is None else np.asarray(e.observed)[cols] for e in events])
    r = np.log(p[1:] / p[:-1])
    since = np.zeros(len(cols))  # a return g bars after the ticker's last new price enters as r / sqrt(g)
    for k in range(len(r)):
        r[k] /= np.sqrt(since + 1.0)
        since = np.where(seen[k + 1] | (p[k + 1] != p[k]), 0.0, since + 1.0)
    cov = r[:SEED_ROWS].T @ r[:SEED_ROWS] / SEED_ROWS
    rows = []
    for row, observed in zip(r[SEED_ROWS:], seen[1 + SEED_ROWS :], strict=True):
        rows.append(row / np.sqrt(np.diagonal(cov)))
        a = np.diag(np.where(observed, math.sqrt(decay), 1.0))  # a ticker without a new price keeps its variance
        cov = a @ cov @ a + (1.0 - decay) * np.outer(row, row)
    return np.array(rows)[-WINDOW:], cov


def _t_var(confidence: float, nu: float, sigma: float) -> float:
    return float(stats.t.ppf(confidence, nu)) * math.sqrt((nu - 2.0) / nu) * sigma


# -- the backtest's dof: missing entries left out -----------------------------------------------------------------


def test_a_held_ticker_missing_from_30_percent_of_bars_is_left_out_of_the_backtests_dof_as_in_the_live_fit(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    # Arrange
    settings = _settings(make_settings)
    warmup.seed(store, settings, now=1.0)
    start = store.read_market()
    bars, _, gaps = _gap_bars(start)
    _publish(store, settings, bars)
    runner = BacktestRunner(store, settings, consumer="runner")
    # Act
    fed = runner.process_available()
    # Assert
    assert fed == BARS
    bt = _stored(store, "hedge")  # through the store's ring: the mask travels with the state
    events = store.read_ticks()
    z, cov = _independent(events, bt.tickers, settings.model.ewma_decay)
    observed = np.ones(z.shape, dtype=bool)
    observed[:, bt.tickers.index(GAP_TICKER)] = ~gaps[-WINDOW:]
    expected = moment_dof(z[observed])
    assert bt.ready and (~observed).sum() > 0.2 * WINDOW
    np.testing.assert_allclose(bt.window, z, rtol=REL, atol=0)
    assert (bt.window[~observed] == 0.0).all()  # the stand-in 0 stays (FHS: no move)
    assert abs(moment_dof(z) - expected) > 0.2  # the stand-in zeros would fatten the tails...
    assert bt.dof() == pytest.approx(expected, rel=REL)  # ...and are not in the fitted sample
    # the last bar's one-bar Student-t forecast (the batched kernels' path) is made with that ν
    last = events[-1]
    qty = np.array([float(settings.portfolio("hedge").holdings[t]) for t in bt.tickers])
    x = qty * np.asarray(last.prices)[[last.tickers.index(t) for t in bt.tickers]]
    sigma = math.sqrt(float(x @ cov @ x))
    forecast = bt.pending[Track.BAR].var[VarMethod.STUDENT_T]
    assert forecast == pytest.approx(_t_var(bt.config.confidence, expected, sigma), rel=1e-9)
    np.testing.assert_array_equal(bt.observed, observed)
    live = runner.books._books["hedge"].bt  # the runner's own, fed in memory
    assert live.dof() == bt.dof()
    np.testing.assert_array_equal(live.observed, bt.observed)
    # a portfolio without a gap in its tickers: every entry observed
    main = _stored(store, "main")
    assert main.observed.all() and main.dof() == math_logic.fit_student_t_dof(main.window, 3.0, 30.0)


def test_a_price_arriving_unchanged_counts_as_a_zero_return_where_a_missing_one_is_left_out(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    # Arrange: the gap ticker does not move in its gap bars, so both feeds give the same returns
    settings = _settings(make_settings)
    warmup.seed(store, settings, now=1.0)
    start = store.read_market()
    with_gaps, full, gaps = _gap_bars(start, unchanged=True)
    _publish(store, settings, full)
    BacktestRunner(store, settings, consumer="runner").process_available()
    present = _stored(store, "hedge")
    store.client.flushdb()
    warmup.seed(store, settings, now=1.0)
    # Act
    _publish(store, settings, with_gaps)
    BacktestRunner(store, settings, consumer="runner").process_available()
    # Assert
    missing = _stored(store, "hedge")
    col = present.tickers.index(GAP_TICKER)
    others = [i for i in range(len(present.tickers)) if i != col]
    # the other tickers' returns and variances are the same bits; the gap ticker keeps its variance through a
    # gap (no data) where an unchanged price decays it (an observed 0)
    np.testing.assert_array_equal(missing.window[:, others], present.window[:, others])
    assert missing.cov is not None and present.cov is not None
    np.testing.assert_array_equal(missing.cov[np.ix_(others, others)], present.cov[np.ix_(others, others)])
    assert missing.cov[col, col] > present.cov[col, col]
    assert (present.window[gaps[-WINDOW:], col] == 0.0).all()
    assert (missing.window[gaps[-WINDOW:], col] == 0.0).all()
    assert present.dof() == pytest.approx(moment_dof(present.window), rel=REL)  # unchanged: observed zeros
    sample = np.concatenate((missing.window[:, others].ravel(), missing.window[~gaps[-WINDOW:], col]))
    assert missing.dof() == pytest.approx(moment_dof(sample), rel=REL)  # missing: left out
    assert present.observed.all()
    np.testing.assert_array_equal(missing.observed[:, col], ~gaps[-WINDOW:])


def test_a_restarted_runner_reloads_the_mask_from_the_store_and_goes_on_as_one_that_never_stopped(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    # Arrange
    settings = _settings(make_settings)
    warmup.seed(store, settings, now=1.0)
    bars, _, _ = _gap_bars(store.read_market(), seed=21)
    _publish(store, settings, bars)
    events = store.read_ticks()
    straight = Backtester(("CCC", "DDD"), backtest_config(settings, "hedge"))
    qty = np.array([300.0, -1000.0])
    cols = [events[0].tickers.index(t) for t in straight.tickers]
    for ev in events:
        mask = None if ev.observed is None else ev.observed[cols]
        straight.step(np.asarray(ev.prices)[cols], qty, datetime.fromtimestamp(ev.bar_ts, UTC).isoformat(),
                      observed=mask)  # fmt: skip
    assert not straight.observed.all()
    # Act: one runner feeds 140 bars, another (reading every backtest from the store) the rest
    assert BacktestRunner(store, settings, consumer="a").process_available(max_bars=140) == 140
    store.client.delete(lock_key(LEASE))  # as if runner a had stopped
    assert BacktestRunner(store, settings, consumer="b").process_available() == BARS - 140
    # Assert
    got = _stored(store, "hedge")
    assert got.to_dict() == straight.to_dict()
    assert got.dof() == straight.dof()
    summary = store.read_backtest_summary("hedge")
    assert summary is not None
    for track in Track:
        assert summary["tracks"][str(track)] == straight.summary_dicts(track)


# -- a feed without gaps: the backtest of before, bit for bit ----------------------------------------------------


def test_a_feed_without_gaps_publishes_no_mask_and_gives_the_backtest_of_before_bit_for_bit(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    # Arrange
    settings = _settings(make_settings)
    warmup.seed(store, settings, now=1.0)
    _, full, _ = _gap_bars(store.read_market(), seed=5)
    _publish(store, settings, full)
    # Act
    BacktestRunner(store, settings, consumer="runner").process_available()
    # Assert
    raw = store.client.xrange(TICKS_KEY)
    assert all(b"missing" not in fields for _, fields in raw)  # the entries of before: no new field
    events = store.read_ticks()
    assert all(e.observed is None for e in events)
    for pid in ("main", "hedge"):
        config = backtest_config(settings, pid)
        tickers = tuple(t for t in events[0].tickers if settings.portfolio(pid).holdings.get(t, 0))
        cols = [events[0].tickers.index(t) for t in tickers]
        qty = np.array([float(settings.portfolio(pid).holdings[t]) for t in tickers])
        before, every = Backtester(tickers, config), Backtester(tickers, config)
        closed_before: list[Observation] = []
        closed_every: list[Observation] = []
        for ev in events:
            p, label = np.asarray(ev.prices)[cols], datetime.fromtimestamp(ev.bar_ts, UTC).isoformat()
            closed_before += before.step(p, qty, label)  # no mask: the code path of before
            closed_every += every.step(p, qty, label, observed=np.ones(len(tickers), dtype=bool))
        got = _stored(store, pid)
        keys = PortfolioKeys(pid)
        logged = [Observation.from_dict(r) for r in store.read_backtest_observations(pid, 10_000)]
        assert got.to_dict() == before.to_dict() == every.to_dict()
        assert not np.isnan(np.asarray(store.read_backtest_state(pid)[0]["ring"])).any()  # type: ignore[index]
        assert closed_every == closed_before and logged == closed_before  # the same floats, exactly
        summary = store.read_backtest_summary(pid)
        assert summary is not None
        for track in Track:
            assert summary["tracks"][str(track)] == before.summary_dicts(track) == every.summary_dicts(track)
        assert before.dof() == math_logic.fit_student_t_dof(before.window, 3.0, 30.0)  # the unmasked fit
        assert store.client.exists(keys.backtest_window)


# -- one backtester: the mask it is given -------------------------------------------------------------------------


def _ready(config: BacktestConfig, n: int = 2, seed: int = 1) -> tuple[Backtester, np.ndarray]:
    rng = np.random.default_rng(seed)
    bt = Backtester([f"T{i}" for i in range(n)], config)
    prices = 100.0 * np.ones(n)
    for _ in range(config.seed_rows + config.window + 1):
        prices = prices * np.exp(rng.standard_t(4, n) * 0.01)
        bt.step(prices, np.ones(n))
    return bt, prices


def test_a_missing_entry_is_one_whose_price_is_the_last_one_fed_and_whose_vol_is_positive() -> None:
    # Arrange
    bt, prices = _ready(BacktestConfig(window=10, seed_rows=3))
    moved = prices * np.array([1.0, 1.01])
    # Act: T1 has no new price in this bar, but moved since the last bar fed (bars the backtest was not fed)
    bt.step(moved, [1.0, 1.0], observed=np.array([False, False]))
    # Assert
    assert bt.observed[-1].tolist() == [False, True]
    assert bt.window[-1, 0] == 0.0 and bt.window[-1, 1] != 0.0
    # a variance of 0 (no return yet but zeros): z is 0 by convention, no observation
    flat = Backtester(["A", "B"], BacktestConfig(window=4, seed_rows=2))
    for k in range(4):
        flat.step([10.0, 20.0 * 1.01**k], [1.0, 1.0])
    flat.step([10.5, 21.0], [1.0, 1.0])
    assert flat.window[-1, 0] == 0.0 and flat.observed[-1].tolist() == [False, True]
    assert flat.window_count == 2 and flat.observed[:, 0].tolist() == [False, False]  # A's zeros: σ = 0


def test_the_mask_is_checked_before_any_backtester_changes() -> None:
    bt, prices = _ready(BacktestConfig(window=5, seed_rows=2))
    before = bt.to_dict()
    with pytest.raises(ValueError, match="observed"):
        bt.step(prices, [1.0, 1.0], observed=np.array([1, 0]))
    with pytest.raises(ValueError, match="observed"):
        step_many([(bt, prices, [1.0, 1.0], None)], observed=[np.array([True])])
    with pytest.raises(ValueError, match="observed"):
        step_many([(bt, prices, [1.0, 1.0], None)], observed=[None, None])
    assert bt.to_dict() == before


def test_the_mask_round_trips_through_each_form_of_the_state_and_rolls_out_with_its_rows() -> None:
    # Arrange
    config = BacktestConfig(window=6, seed_rows=2)
    bt, prices = _ready(config, n=3)
    for k in range(4):
        prices = prices * np.array([1.0, 1.0 + 0.01 * (k + 1), 0.99])
        bt.step(prices, np.ones(3), observed=np.array([False, k % 2 == 0, True]))
    mask = bt.observed.copy()
    assert (~mask).sum() == 4  # T0 missing in the last 4 rows; T1 moved since its last price: observed
    # Act / Assert: the JSON form, the binary form and the store's ring
    for state in (json.loads(bt.to_json()), bt.to_dict(binary_arrays=True)):
        back = Backtester.from_dict(state)
        np.testing.assert_array_equal(back.observed, mask)
        assert back.dof() == bt.dof() and back.to_dict() == bt.to_dict()
    ring = bt.ring()
    assert np.isnan(ring).sum() == 4  # a missing entry is NaN in the ring: its one marker there
    stored = {**bt.store_state(), "cov": bt.cov, "ring": ring}
    assert "missing" not in bt.store_state()  # the store's JSON does not grow: the ring carries the mask
    back = Backtester.from_dict(stored)
    np.testing.assert_array_equal(back.observed, mask)
    assert back.to_dict() == bt.to_dict()
    np.testing.assert_array_equal(bt.ring_values(bt.ring_slot()), ring[bt.ring_slot()])
    # the rows with missing entries leave the window: every entry observed again
    for _ in range(config.window):
        prices = prices * 1.01
        bt.step(prices, np.ones(3))
    assert bt.observed.all() and not np.isnan(bt.ring()).any()
    assert bt.dof() == math_logic.fit_student_t_dof(bt.window, 3.0, 30.0)


def test_an_old_stored_state_without_the_mask_loads_with_every_entry_observed() -> None:
    # Arrange: a window holding zeros, stored as before (no "missing", a ring without NaN)
    bt, _ = _ready(BacktestConfig(window=8, seed_rows=2))
    state = bt.to_dict()
    window = np.array(state["window"])
    window[::2, 0] = 0.0
    state["window"] = window.tolist()
    old = {k: v for k, v in state.items() if k != "missing"}
    # Act
    from_json = Backtester.from_dict(old)
    ring = from_json.ring()
    from_ring = Backtester.from_dict({**from_json.store_state(), "cov": from_json.cov, "ring": ring})
    # Assert
    for loaded in (from_json, from_ring):
        assert loaded.observed.all()
        assert loaded.dof() == math_logic.fit_student_t_dof(window, 3.0, 30.0)  # the zeros counted, as before


def test_a_damaged_ring_is_refused_and_only_the_markers_nan_marks_a_missing_entry() -> None:
    bt, _ = _ready(BacktestConfig(window=4, seed_rows=2))
    for bad in (math.inf, -math.nan):  # -nan: another NaN's bits than the marker's
        ring = bt.ring()
        ring[bt.ring_slot(), 1] = bad
        with pytest.raises(ValueError, match="ring"):
            Backtester.from_dict({**bt.store_state(), "cov": bt.cov, "ring": ring})
    nonzero = bt.to_dict()
    nonzero["missing"] = [[0, 0]]  # a missing entry must be the stand-in 0
    with pytest.raises(ValueError, match="missing"):
        Backtester.from_dict(nonzero)
