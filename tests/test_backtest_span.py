"""The continuous VaR backtest's spans (logic/backtest.py, "Spans"): a bar spanning ``S`` bars of the model's
variance (the tick event's ``span``) adds ``S`` to each silent ticker's ``since`` and feeds the model
``r / sqrt(since + S)``, as the stream's model does; a forecast for ``h`` bars closed after bars spanning ``E`` is
scored against ``VaR · sqrt(E / h)``.

Independent computations: the EWMA step and the seed rows written out with numpy from the prices, the spans from
:func:`engine.math_logic.session_spans`, the scored VaR as ``v · sqrt(E / h)``; the end to end test runs the real
stream daemon on the XNYS calendar and the real backtest runner.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

import warmup
from engine import math_logic
from engine.clocks import ClockMode
from engine.feeds import Bar, IterableFeed
from engine.records import VarMethod
from engine.settings import Settings
from engine.store import Store
from engine.stream import StreamDaemon
from logic.backtest import BacktestConfig, Backtester, Observation, Track, step_many
from logic.backtest_runner import BacktestRunner

NY = ZoneInfo("America/New_York")
NORMAL_ONLY = (VarMethod.NORMAL,)


def _rng_bars(rng: np.random.Generator, n: int, count: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``count`` bars of ``n`` tickers: prices (Student-t log steps), quantities (some 0), which printed."""
    prices = 100.0 * np.ones(n)
    out = []
    for _ in range(count):
        printed = rng.random(n) > 0.2
        prices = np.where(printed, prices * np.exp(rng.standard_t(4, n) * 0.01), prices)
        qty = np.round(rng.normal(0.0, 10.0, n)) * (rng.random(n) > 0.1)
        out.append((prices.copy(), qty, printed))
    return out


def _seeded(config: BacktestConfig, n: int, seed: int = 5) -> tuple[Backtester, np.ndarray]:
    """A backtester past its seed (``seed_rows`` returns of every ticker), and its last prices."""
    rng = np.random.default_rng(seed)
    bt = Backtester([f"T{i}" for i in range(n)], config)
    prices = 100.0 * np.ones(n)
    for _ in range(config.seed_rows + 1):
        prices = prices * np.exp(rng.standard_normal(n) * 0.01)
        bt.step(prices, np.ones(n))
    assert bt.cov is not None and not bt.seed
    return bt, prices


# -- (a) a span of one bar is the backtest of before ------------------------------------------------------------


def test_a_span_of_one_bar_gives_the_same_state_bytes_and_observations_as_no_span() -> None:
    # Arrange: two backtesters of random books with silent tickers, past the burn-in (both tracks closing)
    config = BacktestConfig(window=12, seed_rows=4, horizon_bars=3)
    bars = _rng_bars(np.random.default_rng(11), 3, 60)
    plain, spanned, batched = (Backtester(["A", "B", "C"], config) for _ in range(3))
    got_plain, got_spanned, got_batched = [], [], []
    # Act: one without a span, one with 1.0 (as a float, an int and a numpy float), one through step_many
    for k, (p, q, seen) in enumerate(bars):
        one = (1.0, 1, np.float64(1.0))[k % 3]
        got_plain += plain.step(p, q, observed=seen)
        got_spanned += spanned.step(p, q, observed=seen, span=one)
        got_batched += step_many([(batched, p, q, None)], observed=[seen], span=1.0)[0]
    # Assert: the same observations and the same stored bytes, no key of the spans written
    assert plain.ready and len(got_plain) > 20 and any(o.track is Track.LIMIT for o in got_plain)
    assert got_spanned == got_plain and got_batched == got_plain
    assert all(o.scale == 1.0 and "scale" not in o.to_dict() for o in got_plain)
    text = json.dumps(plain.to_dict())
    assert json.dumps(spanned.to_dict()) == text and json.dumps(batched.to_dict()) == text
    assert json.dumps(spanned.store_state()) == json.dumps(plain.store_state())
    assert "elapsed" not in text and all(float(s).is_integer() for s in plain.since)
    assert plain.pending and all(p.elapsed is None for p in plain.pending.values())


def test_a_span_that_is_not_a_positive_number_is_refused_before_any_state_changes() -> None:
    bt, prices = _seeded(BacktestConfig(window=4, seed_rows=2), 2)
    before = bt.to_dict()
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="span"):
            bt.step(prices * 1.01, [1.0, 1.0], span=bad)
    assert bt.to_dict() == before


# -- (b) the model replica: r / sqrt(since + S) -------------------------------------------------------------------


def test_a_bar_of_span_s_updates_the_covariance_with_the_return_over_sqrt_s() -> None:
    # Arrange
    bt, prices = _seeded(BacktestConfig(window=5, seed_rows=3, methods=NORMAL_ONLY), 2)
    cov0 = bt.cov.copy()  # type: ignore[union-attr]
    moved = prices * np.array([1.004, 0.993])
    span = float(math_logic.session_spans([1.0], [1.0], 0.4, 390, 1.0)[0])  # the first bar after a night
    # Act
    bt.step(moved, [1.0, 1.0], span=span)
    # Assert: z = r' / σ before the update, then Σ = λ Σ + (1 - λ) r' r'ᵀ, with r' = r / sqrt(S)
    r = np.log(moved / prices) / math.sqrt(span)
    want = 0.94 * cov0 + 0.06 * np.outer(r, r)
    np.testing.assert_allclose(bt.cov, want, rtol=1e-15, atol=0)  # type: ignore[arg-type]
    np.testing.assert_allclose(bt.window[-1], r / np.sqrt(np.diagonal(cov0)), rtol=1e-15, atol=0)
    unscaled = 0.94 * cov0 + 0.06 * np.outer(r, r) * span  # the same return as one bar: not what was fed
    assert not np.allclose(bt.cov, unscaled, rtol=1e-6)  # type: ignore[arg-type]
    assert bt.since.tolist() == [0.0, 0.0]


def test_a_seed_return_of_span_s_is_seeded_over_sqrt_s() -> None:
    bt = Backtester(["A", "B"], BacktestConfig(window=5, seed_rows=3))
    bt.step([100.0, 50.0], [1.0, 1.0])
    bt.step([101.0, 49.0], [1.0, 1.0], span=0.625)
    np.testing.assert_allclose(bt.seed[0], np.log([1.01, 0.98]) / math.sqrt(0.625), rtol=1e-15, atol=0)


def test_a_ticker_silent_for_k_bars_returns_over_the_sum_of_their_spans_and_its_own() -> None:
    # Arrange: B has no new price for three bars of spans S1..S3 (a night among them), then prints in a bar of S
    bt, prices = _seeded(BacktestConfig(window=6, seed_rows=3, methods=NORMAL_ONLY), 2)
    spans = [0.75, 3.5, 0.75]
    start_b = prices[1]
    for k, s in enumerate(spans):
        prices = np.array([prices[0] * (1.002 if k % 2 else 0.997), start_b])
        bt.step(prices, [1.0, 1.0], observed=np.array([True, False]), span=s)
    # Assert: B's since is the variance time of its silent bars, A's 0
    assert bt.since.tolist() == [0.0, sum(spans)]
    cov0 = bt.cov.copy()  # type: ignore[union-attr]
    # Act: both print in a bar of span 0.75
    moved = prices * np.array([1.003, 1.011])
    bt.step(moved, [1.0, 1.0], observed=np.array([True, True]), span=0.75)
    # Assert: A's return over sqrt(0.75), B's over sqrt(S1 + S2 + S3 + 0.75)
    r = np.log(moved / prices) / np.sqrt([0.75, sum(spans) + 0.75])
    np.testing.assert_allclose(bt.cov, 0.94 * cov0 + 0.06 * np.outer(r, r), rtol=1e-15, atol=0)  # type: ignore[arg-type]
    np.testing.assert_allclose(bt.window[-1], r / np.sqrt(np.diagonal(cov0)), rtol=1e-15, atol=0)
    assert bt.since.tolist() == [0.0, 0.0]


def test_spans_of_a_batch_are_each_books_as_fed_alone() -> None:
    config = BacktestConfig(window=5, seed_rows=3)
    alone = [_seeded(config, 2, seed=s) for s in (1, 2)]
    together = [(Backtester.from_dict(bt.to_dict()), p) for bt, p in alone]
    for bt, p in alone:
        bt.step(p * 1.01, [1.0, 2.0], observed=np.array([True, False]), span=2.5)
    step_many([(bt, p * 1.01, [1.0, 2.0], None) for bt, p in together], observed=[[True, False]] * 2, span=2.5)
    for (a, _), (b, _) in zip(alone, together, strict=True):
        assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())


# -- (c) scoring: VaR · sqrt(E / h) at its boundary ---------------------------------------------------------------


def _boundary_book(qty_b: float, span: float) -> tuple[Backtester, list[Observation]]:
    """A ready backtester of A (moving) and B (never moving: variance 0, so the VaR is A's whatever B's quantity);
    a forecast at a bar holding ``qty_b`` of B, then a bar of ``span`` in which only B moves, by -1.0: the P&L is
    ``-qty_b`` exactly."""
    config = BacktestConfig(window=6, seed_rows=3, methods=NORMAL_ONLY)
    bt = Backtester(["A", "B"], config)
    rng = np.random.default_rng(8)
    a = 100.0
    while not bt.ready:
        a *= math.exp(rng.standard_normal() * 0.01)
        bt.step([a, 100.0], [1.0, 1.0])
    bt.step([a, 100.0], [1.0, qty_b])  # the forecast
    return bt, bt.step([a, 99.0], [1.0, qty_b], span=span)


@pytest.mark.parametrize("ulps", [0, 1], ids=["at the scaled VaR", "one ulp over"])
def test_a_night_bars_loss_is_a_hit_only_beyond_the_var_scaled_to_the_night(ulps: int) -> None:
    # Arrange: φ = 1, B = 7: the first bar after a night spans (1 + 7) / 2 = 4 bars of variance
    span = float(math_logic.session_spans([1.0], [1.0], 1.0, 7, 1.0)[0])
    assert span == 4.0
    probe, probed = _boundary_book(1.0, span)
    v = probed[0].var[VarMethod.NORMAL]  # the one-bar VaR forecast at the bar before the night
    threshold = v * math.sqrt(span / 1)
    loss = threshold if ulps == 0 else math.nextafter(threshold, math.inf)
    # Act
    bt, closed = _boundary_book(loss, span)
    # Assert: the same forecast (B adds no risk); each track (h = 1) scored against v · sqrt(4)
    assert [o.track for o in closed] == [Track.BAR, Track.LIMIT]
    for obs in closed:
        assert obs.var[VarMethod.NORMAL] == v and obs.pnl == -loss
        assert obs.scale == 2.0 and obs.to_dict()["scale"] == 2.0
        assert obs.hit[VarMethod.NORMAL] is (ulps == 1)
    assert (
        bt.counts[Track.BAR][VarMethod.NORMAL].exceedances
        == probe.counts[Track.BAR][VarMethod.NORMAL].exceedances + ulps
    )
    # the same loss over a bar of one bar of variance exceeds the VaR itself
    _, one_bar = _boundary_book(threshold, 1.0)
    assert one_bar[0].scale == 1.0 and one_bar[0].hit[VarMethod.NORMAL] is True


def test_a_horizon_of_h_bars_is_scored_against_the_sum_of_their_spans() -> None:
    # Arrange: a three-bar limit horizon over bars of spans 0.5, 4 and 0.5: E = 5
    bt, prices = _seeded(BacktestConfig(window=3, seed_rows=2, horizon_bars=3), 2)
    while not bt.ready:
        prices = prices * 1.001
        bt.step(prices, [1.0, 1.0])
    assert bt.pending[Track.LIMIT].end_bar == bt.bar + 3  # opened at the bar the burn-in ended
    forecast = bt.pending[Track.LIMIT]
    # Act
    closed = [o for s in (0.5, 4.0, 0.5) for o in bt.step(prices * 0.98, [1.0, 1.0], span=s)]
    # Assert
    limit = [o for o in closed if o.track is Track.LIMIT]
    assert len(limit) == 1 and limit[0].scale == math.sqrt(5.0 / 3)
    for m, v in forecast.var.items():
        assert limit[0].hit[m] == (-limit[0].pnl > v * math.sqrt(5.0 / 3))
    assert [o.scale for o in closed if o.track is Track.BAR] == [math.sqrt(0.5), 2.0, math.sqrt(0.5)]


# -- (d) the state: an open horizon's elapsed variance time -----------------------------------------------------


def _mid_horizon() -> tuple[Backtester, np.ndarray]:
    """A ready backtester with a three-bar limit forecast open, one bar of span 0.5 into it."""
    bt, prices = _seeded(BacktestConfig(window=3, seed_rows=2, horizon_bars=3), 2)
    while not bt.ready:
        prices = prices * 1.001
        bt.step(prices, [1.0, 1.0])
    assert bt.pending[Track.LIMIT].end_bar == bt.bar + 3  # opened at the bar the burn-in ended
    bt.step(prices * 1.01, [1.0, 1.0], span=0.5)
    return bt, prices


def test_an_open_horizons_elapsed_round_trips_and_the_restored_backtest_goes_on_the_same() -> None:
    # Arrange
    bt, prices = _mid_horizon()
    assert bt.pending[Track.LIMIT].elapsed == 0.5
    state = bt.to_dict()
    assert state["pending"]["limit"]["elapsed"] == 0.5
    restored = Backtester.from_json(json.dumps(state))
    # Act: both go on over a night and a bar
    got = [bt.step(prices * 0.97, [1.0, 1.0], span=s) for s in (4.0, 0.5)]
    again = [restored.step(prices * 0.97, [1.0, 1.0], span=s) for s in (4.0, 0.5)]
    # Assert
    assert again == got
    limit = [o for bars in got for o in bars if o.track is Track.LIMIT]
    assert len(limit) == 1 and limit[0].scale == math.sqrt(5.0 / 3)
    assert json.dumps(restored.to_dict()) == json.dumps(bt.to_dict())


def test_the_stored_state_of_an_open_horizon_follows_its_elapsed_time() -> None:
    bt, prices = _mid_horizon()
    first = bt.store_state()["pending"]["limit"]
    bt.step(prices, [1.0, 1.0], span=2.0)
    assert first["elapsed"] == 0.5  # a state written before is left as it was
    assert bt.store_state()["pending"]["limit"] == bt.pending[Track.LIMIT].to_dict()
    assert bt.store_state()["pending"]["limit"]["elapsed"] == 2.5


def test_an_old_state_without_elapsed_counts_the_bars_fed_so_far_as_one_each() -> None:
    # Arrange: an open three-bar horizon one bar of span 1 in: its dict has no elapsed (as stored before spans)
    bt, prices = _seeded(BacktestConfig(window=3, seed_rows=2, horizon_bars=3), 2)
    while not bt.ready:
        prices = prices * 1.001
        bt.step(prices, [1.0, 1.0])
    assert bt.pending[Track.LIMIT].end_bar == bt.bar + 3  # opened at the bar the burn-in ended
    bt.step(prices, [1.0, 1.0])
    state = bt.to_dict()
    assert "elapsed" not in state["pending"]["limit"]
    old = Backtester.from_dict(state)
    assert old.pending[Track.LIMIT].elapsed is None
    # Act: a night, then a bar of one
    closed = [o for s in (3.0, 1.0) for o in old.step(prices * 0.99, [1.0, 1.0], span=s)]
    # Assert: the bar before counted 1, so E = 1 + 3 + 1 = 5
    limit = [o for o in closed if o.track is Track.LIMIT]
    assert len(limit) == 1 and limit[0].scale == math.sqrt(5.0 / 3)


def test_a_state_with_a_negative_or_non_finite_elapsed_is_refused() -> None:
    bt, _ = _mid_horizon()
    for bad in (-1.0, math.inf):
        state = bt.to_dict()
        state["pending"]["limit"]["elapsed"] = bad
        with pytest.raises(ValueError, match="elapsed"):
            Backtester.from_dict(state)


# -- (e) end to end: the real stream daemon across an XNYS night, the real runner --------------------------------


def _ny(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=NY).timestamp()


MINUTES = ("2026-11-19T15:57", "2026-11-19T15:58", "2026-11-19T15:59", "2026-11-19T16:00",
           "2026-11-20T09:30", "2026-11-20T09:31", "2026-11-20T09:32")  # fmt: skip
"""Thursday's last minutes, Friday's first: one night between bars 3 and 4."""
PHI = 0.5


def _publish_across_the_night(store: Store, settings: Settings) -> np.ndarray:
    """The real stream daemon (replay clock: the bars' times) writes :data:`MINUTES` of small moves; returns the
    prices, one row per bar."""
    warmup.seed(store, settings, now=_ny("2026-11-19T15:56"))
    start = store.read_market()
    rng = np.random.default_rng(4)
    rows = start.prices * np.exp(np.cumsum(rng.standard_normal((len(MINUTES), len(start.prices))) * 2e-4, axis=0))
    bars = [
        Bar(_ny(t), dict(zip(start.tickers, row.tolist(), strict=True))) for t, row in zip(MINUTES, rows, strict=True)
    ]
    daemon = StreamDaemon(store, settings, IterableFeed(bars), interval=0, clock_mode=ClockMode.REPLAY)
    assert daemon.run().bars_written == len(MINUTES)
    return rows


def test_the_runner_feeds_the_stream_daemons_night_span_into_the_backtests_model(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    # Arrange: one-minute bars on XNYS with a night worth half a session
    settings = make_settings({"model": {"night_variance_share": PHI}, "market": {"calendar": "XNYS"}})
    rows = _publish_across_the_night(store, settings)
    runner = BacktestRunner(store, settings, consumer="runner")
    # Act
    assert runner.process_available() == len(MINUTES)
    # Assert: the events carry the spans of session_spans: one bar less than one, the night's more
    events = store.read_ticks()
    open_bar = 1.0 / (1.0 + PHI)
    night = (1.0 + PHI * 390) / (1.0 + PHI)
    assert [e.span for e in events[1:]] == pytest.approx([open_bar] * 3 + [night] + [open_bar] * 2, rel=1e-15)
    # each stored backtest (in its burn-in: seed rows) holds the returns scaled by their bar's span
    spans = np.array([e.span for e in events[1:]])
    for pid, tickers in (("main", ("AAA", "BBB")), ("hedge", ("CCC", "DDD"))):
        found = store.read_backtest_state(pid)
        assert found is not None
        bt = Backtester.from_dict(found[0])
        assert bt.tickers == tickers and bt.bar == len(MINUTES) - 1
        cols = [events[0].tickers.index(t) for t in tickers]
        r = np.log(rows[1:, cols] / rows[:-1, cols]) / np.sqrt(spans)[:, None]
        np.testing.assert_allclose(np.array(bt.seed), r, rtol=1e-15, atol=0)
        assert bt.since.tolist() == [0.0, 0.0]


def test_the_loss_chart_plots_the_var_each_loss_was_checked_against() -> None:
    """A night's observation (``scale`` 2) is plotted against twice its one-bar VaR, so a loss between the two is
    no exceedance on the chart either; a record without ``scale`` (every one before spans) is plotted as stored."""
    from logic.analytics import stored_backtest

    summary = {"methods": ["normal"], "confidence": 0.99, "tracks": {"bar": {"normal": {"observations": 2}}}}
    night = {"track": "bar", "start": "a", "end": "b", "pnl": -150.0, "var": {"normal": 100.0},
             "hit": {"normal": False}, "scale": 2.0}  # fmt: skip
    minute = {"track": "bar", "start": "b", "end": "c", "pnl": -150.0, "var": {"normal": 100.0},
              "hit": {"normal": True}}  # fmt: skip
    series = stored_backtest(summary, [night, minute]).series["bar"]
    assert series["var_normal"].tolist() == [200.0, 100.0]
    assert ((-series["pnl"] > series["var_normal"]) == series["hit_normal"]).all()
