"""MFE / MAE across fills: a fill that takes a position to zero or through zero (a close, a flip) ends its
excursion in the fill's own MULTI (engine/store/trading.py ``write_fill``, engine/store/monitoring.py
``reset_mark``), so a position reopened before the monitor's next tick starts afresh (0 at its first valuation,
then the extremes of its own P&L path), in both monitor paths; a fill that grows or partly reduces a position
keeps its excursion. Real fills (``RiskManager.execute_trade``) on a real redis-server, real monitors."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

import warmup
from engine.feeds import Bar, IterableFeed
from engine.settings import Settings
from engine.store import PortfolioKeys, Store
from engine.store.monitoring import ends_position
from engine.store.tick_state import TickState
from engine.stream import StreamDaemon
from logic.monitor import Monitor
from logic.risk_manager import RiskManager

WEDNESDAY = datetime(2024, 3, 6, 15, 0, tzinfo=UTC).timestamp()  # in an XNYS session
PRICES = {"AAA": 100.0, "BBB": 50.0, "CCC": 200.0, "DDD": 25.0}
PATHS = [True, False]
"""``Monitor(vectorised=...)``: the vectorised tick (logic/batch_tick.py) and the per-portfolio reference path."""


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def desk(store: Store, make_settings: Any) -> tuple[Store, Settings]:
    """The seeded book (main: long 1000 AAA @ 100, 2000 BBB @ 50; hedge, a margin account: long 300 CCC @ 200,
    short 1000 DDD @ 25) with limits no trade here reaches."""
    settings = make_settings({"limits": {"var_limit": 1e12, "max_concentration": 1.0}})
    warmup.seed(store, settings)
    return store, settings


def _tick(store: Store, settings: Settings, clock: Clock, monitor: Monitor, **prices: float) -> None:
    """One bar one second later (the other tickers at :data:`PRICES`), processed by ``monitor``."""
    clock.t += 1.0
    bar = Bar(clock.t, {**PRICES, **prices})
    StreamDaemon(store, settings, IterableFeed([bar]), clock=clock, interval=0).run()
    monitor.process_available()


def _trade(store: Store, settings: Settings, clock: Clock, pid: str, *orders: tuple[str, int, str]) -> None:
    """Fill ``orders`` (side, qty, ticker) in ``pid`` at the last price, between two ticks."""
    gate = RiskManager(store.client, pid, settings, clock=clock)
    for n, (side, qty, ticker) in enumerate(orders):
        clock.t += 0.1
        done = gate.execute_trade(ticker, qty, side, client_order_id=f"x-{clock.t}-{n}")
        assert done["status"] == "FILLED", done


def _row(store: Store, pid: str, ticker: str) -> dict[str, Any]:
    snap = store.read_snapshot(pid)
    assert snap is not None
    return next(p for p in snap["positions"] if p["ticker"] == ticker)


def _excursion(store: Store, pid: str, ticker: str) -> tuple[float, float]:
    """The snapshot's (MFE, MAE) of the position, which must equal the stored mark."""
    row = _row(store, pid, ticker)
    mark = store.read_marks(pid)[ticker]
    assert (mark.mfe, mark.mae) == (row["mfe"], row["mae"])
    return row["mfe"], row["mae"]


def _closed_form(qty: int, avg: float, path: Sequence[float]) -> tuple[float, float]:
    """(MFE, MAE) of a position of ``qty`` at ``avg`` valued at each price of ``path``: the extremes of its
    unrealized P&L, with 0 (where it started)."""
    pnl = [qty * (p - avg) for p in path]
    return max(0.0, *pnl), min(0.0, *pnl)


def _held(store: Store, pid: str, ticker: str) -> tuple[int, float]:
    position = store.read_portfolio(pid).positions[ticker]
    return position.qty, float(position.avg_price)


def _aaa_run_up_and_down(store: Store, settings: Settings, clock: Clock, monitor: Monitor) -> None:
    """main's 1000 AAA at 100 runs to 110 and falls to 95: MFE +10,000, MAE -5,000."""
    for aaa in (110.0, 95.0):
        _tick(store, settings, clock, monitor, AAA=aaa)
    assert _excursion(store, "main", "AAA") == (10_000.0, -5_000.0)


# -- the rule --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "ends"),
    [
        (1000, 0, True), (1000, 1, False), (1000, -1, True), (1000, 1200, False), (0, 200, False),
        (-1000, 0, True), (-1000, -1, False), (-1000, 1, True), (-1000, -1500, False), (0, -200, False),
    ],
)  # fmt: skip
def test_a_fill_ends_a_position_when_it_takes_it_to_zero_or_through_zero(before: int, after: int, ends: bool) -> None:
    assert ends_position(before, after) is ends


# -- close and reopen, flip: a new excursion -------------------------------------------------------------------


@pytest.mark.parametrize("vectorised", PATHS)
def test_a_position_closed_and_reopened_between_two_ticks_starts_its_own_excursion(
    desk: tuple[Store, Settings], vectorised: bool
) -> None:
    _close_and_reopen(*desk, vectorised)


@pytest.mark.parametrize("vectorised", PATHS)
def test_a_position_closed_and_reopened_on_a_redis_cluster_starts_its_own_excursion(
    cluster_store: Store, make_settings: Any, vectorised: bool
) -> None:
    settings = make_settings({"limits": {"var_limit": 1e12, "max_concentration": 1.0}})
    warmup.seed(cluster_store, settings)
    _close_and_reopen(cluster_store, settings, vectorised)


def _close_and_reopen(store: Store, settings: Settings, vectorised: bool) -> None:
    # Arrange: main's AAA ran to +10,000 and down to -5,000
    clock = Clock(WEDNESDAY)
    monitor = Monitor(store, settings, clock=clock, vectorised=vectorised)
    _aaa_run_up_and_down(store, settings, clock, monitor)
    # Act: the whole position sold, and a smaller long bought, before the next bar
    _trade(store, settings, clock, "main", ("SELL", 1000, "AAA"), ("BUY", 200, "AAA"))
    assert "AAA" not in store.read_marks("main")  # the closing fill ended the old excursion
    path = [95.0, 98.0, 93.0, 96.0]
    seen = []
    for aaa in path:
        _tick(store, settings, clock, monitor, AAA=aaa)
        seen.append(_excursion(store, "main", "AAA"))
    # Assert: 0 at its first valuation (at its fill price), then the extremes of its own P&L
    qty, avg = _held(store, "main", "AAA")
    assert (qty, avg) == (200, 95.0)
    assert seen[0] == (0.0, 0.0)
    assert seen == [_closed_form(qty, avg, path[: k + 1]) for k in range(len(path))]
    assert seen[-1] == (pytest.approx(600.0), pytest.approx(-400.0))


@pytest.mark.parametrize("vectorised", PATHS)
@pytest.mark.parametrize(
    ("orders", "qty"),
    [
        ([("SELL", 400, "CCC")], -100),  # long 300 -> short 100
        ([("SELL", 400, "CCC"), ("BUY", 250, "CCC")], 150),  # long 300 -> short 100 -> long 150
    ],
    ids=["flip", "flip-and-back"],
)
def test_a_position_flipped_between_two_ticks_starts_its_own_excursion(
    desk: tuple[Store, Settings], vectorised: bool, orders: list[tuple[str, int, str]], qty: int
) -> None:
    # Arrange: hedge's 300 CCC at 200 runs to 210 (+3,000) and falls to 190 (-3,000), then is at 205
    store, settings = desk
    clock = Clock(WEDNESDAY)
    monitor = Monitor(store, settings, clock=clock, vectorised=vectorised)
    for ccc in (210.0, 190.0, 205.0):
        _tick(store, settings, clock, monitor, CCC=ccc)
    assert _excursion(store, "hedge", "CCC") == (3_000.0, -3_000.0)
    # Act: the flip(s) at 205, then three bars
    _trade(store, settings, clock, "hedge", *orders)
    assert "CCC" not in store.read_marks("hedge")
    path = [205.0, 201.0, 212.0]
    seen = []
    for ccc in path:
        _tick(store, settings, clock, monitor, CCC=ccc)
        seen.append(_excursion(store, "hedge", "CCC"))
    # Assert: the new position's own excursion, from 0 at its fill price
    held, avg = _held(store, "hedge", "CCC")
    assert (held, avg) == (qty, 205.0)
    assert seen[0] == (0.0, 0.0)
    assert seen == [_closed_form(held, avg, path[: k + 1]) for k in range(len(path))]
    assert store.read_marks("hedge")["CCC"].side == (1 if qty > 0 else -1)


# -- a reduce keeps it; the boundary ---------------------------------------------------------------------------


@pytest.mark.parametrize("vectorised", PATHS)
def test_a_partial_reduce_keeps_the_excursion_and_does_not_touch_the_monitors_state(
    desk: tuple[Store, Settings], vectorised: bool
) -> None:
    # Arrange
    store, settings = desk
    clock = Clock(WEDNESDAY)
    monitor = Monitor(store, settings, clock=clock, vectorised=vectorised)
    _aaa_run_up_and_down(store, settings, clock, monitor)
    peaks = PortfolioKeys("main").peaks
    owner = store.client.hget(peaks, "owner")
    # Act: 1000 -> 400, then AAA at 95 (-2,000 on 400 shares) and 130 (+12,000)
    _trade(store, settings, clock, "main", ("SELL", 600, "AAA"))
    kept = store.read_marks("main")["AAA"]
    unstamped = store.client.hget(peaks, "owner") == owner
    _tick(store, settings, clock, monitor, AAA=95.0)
    after_95 = _excursion(store, "main", "AAA")
    _tick(store, settings, clock, monitor, AAA=130.0)
    # Assert: the position's excursion goes on (the fill wrote neither the mark nor the owner stamp)
    assert (kept.side, kept.mfe, kept.mae) == (1, 10_000.0, -5_000.0) and unstamped
    assert _held(store, "main", "AAA") == (400, 100.0)
    assert after_95 == (10_000.0, -5_000.0)
    assert _excursion(store, "main", "AAA") == (pytest.approx(12_000.0), -5_000.0)


@pytest.mark.parametrize("vectorised", PATHS)
@pytest.mark.parametrize(("sold", "bought", "ends"), [(1000, 200, True), (999, 199, False)], ids=["to-0", "to-1"])
def test_the_fill_that_takes_the_position_exactly_to_zero_ends_it_and_one_share_short_does_not(
    desk: tuple[Store, Settings], vectorised: bool, sold: int, bought: int, ends: bool
) -> None:
    # Arrange
    store, settings = desk
    clock = Clock(WEDNESDAY)
    monitor = Monitor(store, settings, clock=clock, vectorised=vectorised)
    _aaa_run_up_and_down(store, settings, clock, monitor)
    # Act: sell down to 0 (or 1), buy back up to 200 at 95, then a bar at 96
    _trade(store, settings, clock, "main", ("SELL", sold, "AAA"))
    marked = "AAA" in store.read_marks("main")
    _trade(store, settings, clock, "main", ("BUY", bought, "AAA"))
    _tick(store, settings, clock, monitor, AAA=96.0)
    # Assert: to 0, a new position (its +200 at 96); to 1, the same one (its extremes kept)
    qty, avg = _held(store, "main", "AAA")
    assert qty == 200
    assert marked is not ends
    if ends:
        assert avg == 95.0 and _excursion(store, "main", "AAA") == _closed_form(qty, avg, [96.0]) == (200.0, 0.0)
    else:
        assert _excursion(store, "main", "AAA") == (10_000.0, -5_000.0)


# -- a fill during a vectorised tick ---------------------------------------------------------------------------


def _fills_during_next_tick(
    monkeypatch: pytest.MonkeyPatch, store: Store, settings: Settings, clock: Clock, *orders: tuple[str, int, str]
) -> Callable[[], None]:
    """Make the fills of ``orders`` land in the next vectorised tick, after it read the books and before its
    EXEC (TickState.prepare); returns what puts ``prepare`` back."""
    prepare = TickState.prepare
    fills: list[bool] = []

    def fill_meanwhile(self: TickState, *args: Any, **kwargs: Any) -> Any:
        if not fills:
            fills.append(True)
            _trade(store, settings, clock, "main", *orders)
        return prepare(self, *args, **kwargs)

    monkeypatch.setattr(TickState, "prepare", fill_meanwhile)
    return lambda: monkeypatch.setattr(TickState, "prepare", prepare)


def test_a_close_and_reopen_while_a_vectorised_tick_runs_aborts_it_and_the_redo_values_the_new_position(
    desk: tuple[Store, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: the fills land after the tick read the books (the old 1000 AAA) and before its EXEC
    store, settings = desk
    clock = Clock(WEDNESDAY)
    monitor = Monitor(store, settings, clock=clock)
    _aaa_run_up_and_down(store, settings, clock, monitor)
    undisturbed = _fills_during_next_tick(
        monkeypatch, store, settings, clock, ("SELL", 1000, "AAA"), ("BUY", 200, "AAA")
    )
    # Act: the tick at 97 conflicts with the fills; it is processed again, then one more bar
    with pytest.raises(redis.WatchError):
        _tick(store, settings, clock, monitor, AAA=97.0)
    monitor._on_conflict()  # what Monitor.run does with it: redone at once
    undisturbed()
    assert monitor.process_available() == 1
    redone = _excursion(store, "main", "AAA")
    _tick(store, settings, clock, monitor, AAA=94.0)
    # Assert: the redo valued the new 200 shares (bought at 97), never the old position
    qty, avg = _held(store, "main", "AAA")
    assert (qty, avg) == (200, 97.0)
    assert redone == (0.0, 0.0)
    assert _excursion(store, "main", "AAA") == _closed_form(qty, avg, [97.0, 94.0]) == (0.0, -600.0)


def test_the_daemon_redoes_a_tick_a_fill_aborted_at_once_without_counting_a_store_failure(
    desk: tuple[Store, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: as above, the closing fill lands while the tick computes; this time Monitor.run takes the tick
    store, settings = desk
    clock = Clock(WEDNESDAY)
    monitor = Monitor(store, settings, clock=clock)
    _aaa_run_up_and_down(store, settings, clock, monitor)
    _fills_during_next_tick(monkeypatch, store, settings, clock, ("SELL", 1000, "AAA"))
    clock.t += 1.0
    StreamDaemon(store, settings, IterableFeed([Bar(clock.t, {**PRICES, "AAA": 97.0})]), clock=clock, interval=0).run()
    done = monitor.stats.ticks_processed
    # Act
    stats = monitor.run(max_ticks=done + 1, block_ms=50)
    # Assert: the conflict redid the tick at once (no backoff, no store error), and its snapshot is of the new book
    assert (stats.ticks_redone, stats.store_errors, stats.ticks_processed) == (1, 0, done + 1)
    snap, header = store.read_snapshot("main"), store.read_market_header()
    held = store.read_portfolio("main").positions
    assert held["AAA"].qty == 0 if "AAA" in held else True
    value = sum(p.qty * float(header.prices[header.tickers.index(t)]) for t, p in held.items())
    assert snap is not None and snap["version"] == header.version
    assert snap["market_value"] == pytest.approx(value, rel=1e-12)  # the book after the fill, not before it
    assert store.read_heartbeat("monitor")["ticks_redone"] == "1"  # type: ignore[index]


def test_the_trade_page_never_shows_a_closed_positions_excursions_on_the_position_that_replaced_it(
    desk: tuple[Store, Settings],
) -> None:
    """The Trade page's MFE / MAE come from the live marks: between the fills (close, reopen) and the monitor's
    next tick the new 200 AAA shows none ("not tracked yet"), never the old position's +10,000 / -5,000; a
    partial reduce keeps its excursion; after the tick the page shows the new position's own."""
    from logic.views import Desk, positions_view

    store, settings = desk
    clock = Clock(WEDNESDAY)
    monitor = Monitor(store, settings, clock=clock)
    _aaa_run_up_and_down(store, settings, clock, monitor)
    page = Desk(store.client, settings, clock=clock)

    def shown(ticker: str) -> tuple[Any, Any]:
        row = positions_view(page, "main").positions.set_index("ticker").loc[ticker]
        return row["mfe"], row["mae"]

    _trade(store, settings, clock, "main", ("SELL", 400, "BBB"))  # a partial reduce: the same position
    assert shown("BBB") == (store.read_marks("main")["BBB"].mfe, store.read_marks("main")["BBB"].mae)
    _trade(store, settings, clock, "main", ("SELL", 1000, "AAA"), ("BUY", 200, "AAA"))
    mfe, mae = shown("AAA")
    assert math.isnan(mfe) and math.isnan(mae)  # blank on the page: not tracked yet
    _tick(store, settings, clock, monitor, AAA=94.0)
    assert shown("AAA") == _excursion(store, "main", "AAA")
