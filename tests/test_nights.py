"""Nights in the one-minute model (``model.night_variance_share``, engine/math_logic.py ``session_spans``): an
opening gap enters the EWMA and the standardized window as the draw of a night's distribution it is, scaled by the
variance of the nights it spans, not as one more minute.

The shipped share is calibrated on real daily opens and closes (bokeh_sampledata's Quandl WIKI prices of AAPL,
GOOG, IBM and MSFT, 2000-2013, public domain); the stream's update is checked against the closed form on bars
stamped at real XNYS times, through a real Redis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

import warmup
from engine import math_logic
from engine.clocks import ClockMode
from engine.feeds import Bar, IterableFeed
from engine.price_filter import PriceFilter
from engine.sessions import sessions_for
from engine.settings import Settings, load_settings
from engine.store import Store
from engine.stream import StreamDaemon

from .conftest import merge

ROOT = Path(__file__).resolve().parent.parent
NY = ZoneInfo("America/New_York")
LONG_HISTORIES = ("AAPL", "GOOG", "IBM", "MSFT")
"""The tickers with years of sessions (FB has 196: too few to say anything)."""


def ny(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=NY).timestamp()


def shipped_share() -> float:
    return float(load_settings(ROOT / "riskdesk.toml", env={}).model.night_variance_share)


# -- calibration on real data --------------------------------------------------------------------------------


def sessions_of(ticker: str) -> pd.DataFrame:
    """One ticker's sessions: its opens and closes adjusted alike for splits and dividends (the source's
    ``adj_close / close`` factor applies to the whole session: the open of an ex-date is ex too)."""
    from bokeh_sampledata.stocks import data

    rows = data[data["ticker"] == ticker].sort_values("date")
    factor = rows["adj_close"] / rows["close"]
    return pd.DataFrame(
        {"date": rows["date"].to_numpy(), "open": (rows["open"] * factor).to_numpy(),
         "close": (rows["close"] * factor).to_numpy()}
    )  # fmt: skip


def test_the_share_is_the_mean_square_of_the_nights_over_the_sessions_computed_independently() -> None:
    s = sessions_of("IBM")
    night = np.log(s["open"] / s["close"].shift(1)).dropna()  # pandas, aligned by label: not the code's slicing
    day = np.log(s["close"] / s["open"]).iloc[1:]
    expected = float((night**2).sum() / len(night)) / float((day**2).sum() / len(day))
    assert math_logic.night_variance_share(s["open"], s["close"]) == pytest.approx(expected, rel=1e-12)


def test_the_shipped_share_is_what_real_us_stocks_give() -> None:
    shares = {}
    for t in LONG_HISTORIES:
        s = sessions_of(t)
        shares[t] = math_logic.night_variance_share(s["open"], s["close"])
    shipped = shipped_share()
    # each stock: a night is worth about half a session (earnings are announced outside it)
    assert all(0.3 < v < 0.8 for v in shares.values()), shares
    assert min(shares.values()) <= shipped <= max(shares.values())
    assert shipped == pytest.approx(float(np.median(list(shares.values()))), abs=0.01)


def test_a_weekend_is_one_night_not_three_and_a_half_of_calendar_time() -> None:
    """Why ``session_spans`` counts nights, not closed hours (65.5 h for a weekend against 17.5 h)."""
    weekend, weeknight = [], []
    for t in LONG_HISTORIES:
        s = sessions_of(t)
        night = np.log(s["open"].to_numpy()[1:] / s["close"].to_numpy()[:-1])
        days = np.diff(s["date"].to_numpy()).astype("timedelta64[D]").astype(int)
        weekend.append(night[days >= 3] ** 2)  # Friday to Monday (and long weekends)
        weeknight.append(night[days == 1] ** 2)
    ratio = float(np.mean(np.concatenate(weekend)) / np.mean(np.concatenate(weeknight)))
    weekend_hours = ny("2026-11-23T09:30") - ny("2026-11-20T16:00")
    calendar_ratio = weekend_hours / (ny("2026-11-20T09:30") - ny("2026-11-19T16:00"))
    assert calendar_ratio == pytest.approx(65.5 / 17.5)
    assert 0.5 < ratio < 1.5 < calendar_ratio


def test_bad_opens_and_closes_are_refused() -> None:
    with pytest.raises(ValueError, match="at least two sessions"):
        math_logic.night_variance_share([100.0], [101.0])
    with pytest.raises(ValueError, match="finite prices > 0"):
        math_logic.night_variance_share([100.0, 0.0], [101.0, 99.0])
    with pytest.raises(ValueError, match="never moved"):
        math_logic.night_variance_share([100.0, 101.0], [100.0, 101.0])


# -- session_spans: closed forms ----------------------------------------------------------------------------


def test_a_days_bars_and_its_night_span_exactly_one_day_of_the_model() -> None:
    """The identity the horizon scaling rests on: a session's B bars of the open market and the night before it
    span B bars of the model's variance, whatever the share."""
    for phi in (0.0, 0.25, 0.54, 2.0):
        bars = np.ones(390)
        nights = np.zeros(390)
        nights[0] = 1.0  # the opening bar spans the night
        spans = math_logic.session_spans(bars, nights, phi, 390)
        assert math.fsum(spans) == pytest.approx(390.0, rel=1e-13)
        assert spans[1] == pytest.approx(1.0 / (1.0 + phi), rel=1e-15)
        assert spans[0] == pytest.approx((1.0 + phi * 390) / (1.0 + phi), rel=1e-15)


def test_no_share_is_no_night_and_the_bars_themselves() -> None:
    bars = np.array([1.0, 3.0, 1.0])
    got = math_logic.session_spans(bars, np.array([1.0, 2.0, 0.0]), 0.0, 390)
    np.testing.assert_array_equal(got, bars)
    assert got is not bars  # a new array: the caller's counts are not the spans


def test_an_hourly_feed_counts_the_night_in_its_own_bars() -> None:
    # a feed bar of 60 model bars: a night of 0.54 * 390 model bars is 3.51 feed bars
    got = math_logic.session_spans(np.array([1.0, 2.0]), np.array([1.0, 2.0]), 0.54, 390, 60.0)
    np.testing.assert_allclose(got, [(1.0 + 3.51) / 1.54, (2.0 + 7.02) / 1.54], rtol=1e-15)


@pytest.mark.parametrize("share", [-1e-300, math.nan, math.inf])
def test_a_share_that_is_no_variance_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="night_share"):
        math_logic.session_spans(np.ones(2), None, share, 390)


def test_the_setting_is_validated_at_its_bounds(make_settings: Callable[..., Settings]) -> None:
    assert make_settings({"model": {"night_variance_share": 0.0}}).model.night_variance_share == 0.0
    assert make_settings({"model": {"night_variance_share": 10.0}}).model.night_variance_share == 10.0
    for bad in (-0.01, 10.01):
        with pytest.raises(Exception, match="night_variance_share"):
            make_settings({"model": {"night_variance_share": bad}})


# -- the nights a price time spans ----------------------------------------------------------------------------


def test_the_nights_since_a_price_are_the_session_opens_a_weekend_and_a_holiday_one_each() -> None:
    f = PriceFilter(12.0, sessions=sessions_for("XNYS"))
    since = np.array([
        ny("2026-11-20T16:00"),  # Friday's close -> Monday: one night
        ny("2026-11-19T12:00"),  # halted since Thursday noon: two
        ny("2026-11-23T09:30"),  # this session: none
        math.nan,  # no price
    ])  # fmt: skip
    got = f.nights(since, ny("2026-11-23T09:31"))
    assert got is not None
    np.testing.assert_array_equal(got, [1.0, 2.0, 0.0, 0.0])
    # Thanksgiving (Thursday 26) is no session: Wednesday's close to Friday's open is one night
    thanksgiving = f.nights(np.array([ny("2026-11-25T16:00")]), ny("2026-11-27T09:30"))
    assert thanksgiving is not None and thanksgiving.tolist() == [1.0]
    # within a session, and after the close (still the session's): none
    assert f.nights(np.array([ny("2026-11-23T09:30")]), ny("2026-11-23T16:05")) is None
    assert PriceFilter(12.0).nights(since, ny("2026-11-23T09:31")) is None  # no calendar (24/7, daily feeds)


# -- through the stream daemon on a real Redis ------------------------------------------------------------------

FRI_CLOSE, MON_OPEN = "2026-11-20T16:00", "2026-11-23T09:30"
OTHERS = {"BBB": 50.0, "CCC": 200.0, "DDD": 25.0}


def _stream(store: Store, settings: Settings, prints: list[tuple[str, float]]) -> None:
    bars = [Bar(ny(t), {"AAA": p, **OTHERS}) for t, p in prints]
    StreamDaemon(store, settings, IterableFeed(bars), interval=0, clock_mode=ClockMode.REPLAY).run()


def _monday_gap(store: Store, settings: Settings) -> tuple[float, float, float]:
    """Friday's last two minutes flat, then Monday's open 3 % down: AAA's one-bar variance before and after the
    open, and the open's log return."""
    store.client.flushdb()
    warmup.seed(store, settings, now=ny("2026-11-20T15:58"))
    _stream(store, settings, [("2026-11-20T15:59", 100.0), (FRI_CLOSE, 100.0)])
    before = float(store.read_market().cov[0, 0])
    _stream(store, settings, [(MON_OPEN, 97.0)])
    return before, float(store.read_market().cov[0, 0]), math.log(97.0 / 100.0)


def test_a_monday_gap_enters_the_model_as_a_night_and_the_tick_event_says_so(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    phi = shipped_share()
    settings = make_settings({"model": {"night_variance_share": phi}})
    lam = float(settings.model.ewma_decay)

    before, after, r = _monday_gap(store, settings)

    span = (1.0 + phi * 390) / (1.0 + phi)  # one weekend: one night
    assert after == pytest.approx(lam * before + (1.0 - lam) * r * r / span, rel=1e-12)
    event = store.read_ticks(1, newest_first=True)[0]
    assert event.span == pytest.approx(span, rel=1e-15)
    window = store.read_standardized()
    assert window.values[-1, 0] == pytest.approx(r / math.sqrt(before * span), rel=1e-12)  # z of the open
    assert math.sqrt(after / before) < 1.5  # a 3 % gap on a weekend moves a 20 %-vol name's vol by a fraction

    # an ordinary minute of the open market after it: a little less than one bar of the model's variance
    _stream(store, settings, [("2026-11-23T09:31", 97.5)])
    minute = store.read_ticks(1, newest_first=True)[0]
    assert minute.span == pytest.approx(1.0 / (1.0 + phi), rel=1e-15)
    r2 = math.log(97.5 / 97.0)
    assert float(store.read_market().cov[0, 0]) == pytest.approx(
        lam * after + (1.0 - lam) * r2 * r2 * (1.0 + phi), rel=1e-12
    )


def test_a_ticker_added_between_two_sessions_of_a_replay_leaves_the_nights_span_on_the_tick_event(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    """``warmup.py --add`` stamps the snapshot with the wall clock, far from a replay's bar times: the bar's span
    is read from the price times of the tickers priced in the bar before, not from the snapshot's time."""
    phi = shipped_share()
    settings = make_settings({"model": {"night_variance_share": phi}})
    warmup.seed(store, settings, now=ny("2026-11-20T15:58"))
    _stream(store, settings, [("2026-11-20T15:59", 100.0), (FRI_CLOSE, 100.0)])
    warmup.add_ticker(store, settings, "EEE", 10.0, 0.2)  # now: the wall clock

    _stream(store, settings, [(MON_OPEN, 97.0)])

    event = store.read_ticks(1, newest_first=True)[0]
    assert event.span == pytest.approx((1.0 + phi * 390) / (1.0 + phi), rel=1e-15)


def test_without_a_share_the_gap_is_one_more_minute_as_before(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings({"model": {"night_variance_share": 0.0}})
    lam = float(settings.model.ewma_decay)

    before, after, r = _monday_gap(store, settings)

    assert after == pytest.approx(lam * before + (1.0 - lam) * r * r, rel=1e-12)
    assert math.sqrt(after / before) > 10.0  # the defect the share removes: vol x12 on an ordinary gap morning
    event = store.read_ticks(1, newest_first=True)[0]
    assert event.span == 1.0 and "span" not in event.to_fields()  # the entry of before


def test_a_daily_replay_gets_no_night_its_bar_already_spans_one(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings({"model": {"night_variance_share": 0.54}})
    daily = IterableFeed([], name="replay")
    daily.bar_model_bars = 390.0  # type: ignore[attr-defined]
    assert PriceFilter.for_feed(settings, daily).sessions is None  # so the stream keeps its spans at one
    always = make_settings({"model": {"night_variance_share": 0.54}, "market": {"calendar": "24/7"}})
    assert PriceFilter.for_feed(always, IterableFeed([])).sessions is None


# -- the warm-up from a minute file --------------------------------------------------------------------------


def test_a_warm_up_from_a_minute_file_scales_its_nights_as_the_stream_does(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from engine.history import read_history

    from .test_history import FIVE, TICKERS, _ewma_from_scratch, _write_wide

    phi = shipped_share()
    settings = make_settings(merge(FIVE, {"model": {"night_variance_share": phi}}))
    rng = np.random.default_rng(8)
    # Monday and Tuesday 2 March 2026 (before daylight saving: 09:30 New York is 14:30 UTC), 120 minutes each
    stamps = [datetime(2026, 3, day, 14, 30, tzinfo=UTC) + timedelta(minutes=i) for day in (2, 3) for i in range(120)]
    closes = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.001, (len(stamps), len(TICKERS))), axis=0))
    closes[120] *= 0.97  # Tuesday opens 3 % down
    path = _write_wide(tmp_path / "minutes.csv", [s.isoformat() for s in stamps], closes)

    warmup.seed(store, settings, history=warmup.read_history(path, settings), now=1.0)

    returns = np.log(closes[1:] / closes[:-1])
    spans = np.full(len(returns), 1.0 / (1.0 + phi))  # written out: the open-market minutes ...
    spans[119] = (1.0 + phi * 390) / (1.0 + phi)  # ... and the return from Monday's last minute to Tuesday's open
    expected = _ewma_from_scratch(returns / np.sqrt(spans)[:, np.newaxis])
    np.testing.assert_allclose(store.read_market().cov, expected, rtol=1e-12)
    assert read_history(path).spacing.kind.value == "minute"
    # a 24/7 market has no nights: the file's returns as they are
    always = make_settings(merge(FIVE, {"model": {"night_variance_share": phi}, "market": {"calendar": "24/7"}}))
    store.client.flushdb()
    warmup.seed(store, always, history=warmup.read_history(path, always), now=1.0)
    np.testing.assert_allclose(store.read_market().cov, _ewma_from_scratch(returns), rtol=1e-12)


def _daily_file(tmp_path: Path, last: str, sessions: int = 60) -> Path:
    """XNYS sessions up to ``last`` (a date), one close a day, each ticker at its settings' daily volatility."""
    from .test_history import _write_wide

    dates = [d for d in sessions_for("XNYS").dates if d <= last][-sessions:]
    vols = np.array([0.20, 0.30, 0.25, 0.40]) / math.sqrt(252.0)
    start = np.array([100.0, 50.0, 200.0, 25.0])
    steps = np.random.default_rng(4).normal(0.0, 1.0, (len(dates), 4)) * vols
    closes = start * np.exp(np.cumsum(steps, axis=0) - np.cumsum(steps, axis=0)[-1])  # the last row at ``start``
    return _write_wide(tmp_path / "daily.csv", dates, closes, ["AAA", "BBB", "CCC", "DDD"])


def test_the_prices_of_a_file_are_stamped_when_they_were_printed() -> None:
    from engine.history import History, Spacing, SpacingKind, printed_at

    xnys = sessions_for("XNYS")

    def last_row(text: str, kind: SpacingKind) -> History:
        t = datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
        return History(Path("f.csv"), ("AAA",), np.array([t - 86_400.0, t]), np.ones((2, 1)), Spacing(kind, 1.0, 0))

    friday = last_row("2026-11-20", SpacingKind.DAILY)
    assert printed_at(friday, xnys) == ny("2026-11-20T16:00")  # the day's close, not midnight UTC before it
    assert printed_at(last_row("2026-11-27", SpacingKind.DAILY), xnys) == ny("2026-11-27T13:00")  # a half-day
    # Thanksgiving: no session that day, the close before it
    assert printed_at(last_row("2026-11-26", SpacingKind.DAILY), xnys) == ny("2026-11-25T16:00")
    assert printed_at(last_row("2026-11-23", SpacingKind.WEEKLY), xnys) == ny("2026-11-23T16:00")
    # a daily row that carries a time (the file's, after the close): still its date's close, not the next day's
    assert printed_at(last_row("2026-11-19T23:59:59", SpacingKind.DAILY), xnys) == ny("2026-11-19T16:00")
    minute = last_row("2026-11-20T15:59:00", SpacingKind.MINUTE)
    assert printed_at(minute, xnys) == float(minute.timestamps[-1])  # a bar's own time
    assert printed_at(friday, None) == float(friday.timestamps[-1])  # no calendar: the row's time
    assert printed_at(last_row("1980-01-02", SpacingKind.DAILY), xnys) == float(
        last_row("1980-01-02", SpacingKind.DAILY).timestamps[-1]
    )  # before the calendar's first session


@pytest.mark.parametrize("at", ["2026-11-23T08:00", "2026-11-23T11:00"])
def test_a_warm_up_leaves_the_night_since_the_files_last_close_to_the_first_bar(
    at: str, store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A desk seeds from Friday's closes on Monday, before the open or in the session (a restart mid-morning):
    the first bar, 3 % down on Friday's close, spans the weekend's night. Stamped with the warm-up's time, the
    prices of a warm-up in the session hid it: the gap was one minute's return, about 40 of its sigmas, refused as
    absurd by the stream's jump test (the shipped 12 sigmas; with a looser test it multiplied the vol by 12)."""
    phi = shipped_share()
    settings = make_settings({"model": {"night_variance_share": phi}, "stream": {"max_jump_sigma": 12.0}})
    lam = float(settings.model.ewma_decay)
    path = _daily_file(tmp_path, "2026-11-20")
    first = MON_OPEN if at < MON_OPEN else "2026-11-23T11:01"

    warmup.seed(store, settings, history=warmup.read_history(path, settings), now=ny(at))
    seeded = store.read_market()
    _stream(store, settings, [(first, 97.0)])

    assert seeded.price_ts.tolist() == [ny(FRI_CLOSE)] * 4  # Friday's close, when these prices were printed
    market = store.read_market()
    assert market.prices[0] == 97.0  # accepted
    span = (1.0 + phi * 390) / (1.0 + phi)  # one weekend: one night
    event = store.read_ticks(1, newest_first=True)[0]
    assert event.span == pytest.approx(span, rel=1e-15)
    r = math.log(0.97)
    assert market.cov[0, 0] == pytest.approx(lam * seeded.cov[0, 0] + (1.0 - lam) * r * r / span, rel=1e-12)


def test_a_file_whose_last_close_is_later_than_the_warm_up_is_stamped_with_the_warm_up(
    store: Store, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings({})
    path = _daily_file(tmp_path, "2026-11-20")

    warmup.seed(store, settings, history=warmup.read_history(path, settings), now=ny("2026-11-20T15:00"))

    assert store.read_market().price_ts.tolist() == [ny("2026-11-20T15:00")] * 4  # never in the future


# -- the simulated feed lives in the model's world -------------------------------------------------------------


def test_the_simulated_feed_draws_open_market_bars_and_a_night_as_the_model_assumes() -> None:
    from engine.feeds import SimulatedFeed

    phi, vols, rho = 0.54, np.array([0.001, 0.002]), 0.3
    stamps = iter([ny("2026-11-20T15:59"), ny(FRI_CLOSE), ny(MON_OPEN), ny("2026-11-23T09:31")])
    feed = SimulatedFeed(["AAA", "BBB"], [100.0, 50.0], vols, rho, seed=9, clock=lambda: next(stamps),
                         night_share=phi, opens=sessions_for("XNYS").opens, bars_per_day=390)  # fmt: skip
    bars = [feed.step() for _ in range(4)]

    # written out with the same generator: each bar's draw, then the weekend's own draw on Monday's open
    rng = np.random.default_rng(9)
    chol = np.linalg.cholesky(np.array([[1.0, rho], [rho, 1.0]]))
    u = vols / math.sqrt(1.0 + phi)
    night = u * math.sqrt(phi * 390)
    prices, expected = np.array([100.0, 50.0]), []
    for k in range(4):
        r = u * (chol @ rng.standard_normal(2)) - 0.5 * u**2
        if k == 2:
            r += night * (chol @ rng.standard_normal(2)) - 0.5 * night**2
        prices = prices * np.exp(r)
        expected.append(prices.copy())
    for bar, want in zip(bars, expected, strict=True):
        np.testing.assert_allclose([bar.prices["AAA"], bar.prices["BBB"]], want, rtol=1e-14)
    # a day of 390 open bars and its night: the variance of 390 bars of the configured one-bar vol
    np.testing.assert_allclose(390 * u**2 + night**2, 390 * vols**2, rtol=1e-14)


def test_the_stream_models_the_simulated_feed_at_its_configured_volatility(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    """Within a session the feed's bars are ``1 / sqrt(1 + φ)`` of the configured vol and the model scales each
    back by ``sqrt(1 + φ)``: the matrix is the one of φ = 0 (the demo's VaR is its settings' ``annual_vol``)."""
    from engine.feeds import SimulatedFeed

    covs = []
    for phi in (0.0, 0.54):
        store.client.flushdb()
        settings = make_settings({"model": {"night_variance_share": phi}})
        stamps = [ny("2026-11-23T10:00") + 60.0 * k for k in range(60)]
        warmup.seed(store, settings, now=ny("2026-11-23T09:59"))
        feed = SimulatedFeed.from_settings(settings, seed=5, clock=iter(stamps).__next__, bars=60)
        written = iter(stamps).__next__  # the daemon stamps each bar as the feed did
        StreamDaemon(store, settings, feed, interval=0, clock=written, clock_mode=ClockMode.LIVE).run()
        covs.append(store.read_market().cov)
    # equal but for the drift term of the feed's draws (-σ²/2 of the smaller σ): about 1e-5 of the variances,
    # against 54 % without the feed's nights
    np.testing.assert_allclose(covs[1], covs[0], rtol=1e-4, atol=1e-4 * float(np.diagonal(covs[0]).max()))
