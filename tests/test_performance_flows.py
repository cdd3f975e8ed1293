"""Capital flows and equity through zero on the Performance page (logic/performance.py): a book sync's withdrawal
or deposit, booked in the flow ledger (``pf:{id}:flows``) with the shift of the peaks, is not a return, in the
ratios nor in the maximum drawdown, at full resolution and in a downsampled tier; a sync that only corrects a cost
basis is no return; a fee is a loss, the monitor's; a margin book whose equity crosses zero keeps its maximum
drawdown (only the return ratios are withheld); and an empty CSV export still says when it was read
(logic/views/export.py)."""

from __future__ import annotations

import csv
import io
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine import book
from engine.errors import CorruptDataError
from engine.feeds import Bar, IterableFeed
from engine.settings import Settings
from engine.store import PortfolioKeys, Store
from engine.stream import StreamDaemon
from logic import performance
from logic.monitor import Monitor
from logic.performance import flow_adjusted_index, performance_stats, step_flows
from logic.views import Desk, performance_view
from logic.views.export import AS_OF_COLUMN, csv_bytes
from logic.views.overview import history_frame

WED = datetime(2024, 3, 6, 15, 0, tzinfo=UTC).timestamp()  # 10:00 New York, in session; a whole minute
E0 = 1_000_000.0 + 1000 * 100.0 + 2000 * 50.0  # main: 1,000,000 cash, 1000 AAA @ 100, 2000 BBB @ 50
TS6 = [0.0, 60.0, 120.0, 180.0, 240.0, 300.0]


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- closed forms -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flow", [-500_000.0, 500_000.0], ids=["withdrawal", "deposit"])
def test_a_flow_with_prices_unchanged_is_no_return_and_no_drawdown(flow: float) -> None:
    # Arrange: 1,000,000 for three points, then the flow, booked in the step to the fourth point
    equity = [1e6, 1e6, 1e6, 1e6 + flow, 1e6 + flow, 1e6 + flow]
    flows = [0.0, 0.0, 0.0, flow, 0.0, 0.0]

    # Act
    s = performance_stats(TS6, equity, flows=flows)
    raw = performance_stats(TS6, equity)  # the same equity read as if every change were a return

    # Assert: no return at all, so no drawdown, no growth, no volatility, no Sharpe to divide by
    assert s.max_drawdown.value == 0.0 and s.annual_return.value == 0.0 and s.annual_volatility.value == 0.0
    assert s.sharpe.value is None and "do not vary" in (s.sharpe.reason or "")
    assert s.reason is None
    assert raw.annual_volatility.value != 0.0  # without the ledger the flow would be a return
    index = flow_adjusted_index(equity, flows)
    assert index.index.tolist() == [1.0] * 6 and index.returns.tolist() == [0.0] * 5
    assert index.flows.tolist() == [0.0, 0.0, 0.0, flow, 0.0, 0.0]


def test_a_price_move_beside_a_flow_is_the_return_of_the_move_only() -> None:
    # Arrange: +10,000 of P&L in the step the 300,000 leaves (on 1,000,000 at the step's start: +1%), then
    # -1% of the 710,000 left, then +2,000 with 100,000 coming in
    e1 = 1e6 + 10_000.0 - 300_000.0
    e2 = e1 - 7_100.0
    e3 = e2 + 2_000.0 + 100_000.0
    equity = [1e6, 1e6, e1, e2, e3]
    flows = [0.0, 0.0, -300_000.0, 0.0, 100_000.0]
    r = [0.0, 0.01, -0.01, 2_000.0 / e2]

    # Act
    s = performance_stats(TS6[:5], equity, flows=flows)
    fi = flow_adjusted_index(equity, flows)

    # Assert: the returns of the moves; the index is their product; the drawdown is the -1% after the peak
    assert fi.returns == pytest.approx(r, rel=1e-12, abs=1e-15)
    assert fi.flows.tolist() == [0.0, 0.0, -300_000.0, 0.0, 100_000.0]
    assert fi.index[-1] == pytest.approx(float(np.prod(1.0 + np.array(r))), rel=1e-12)
    assert s.max_drawdown.value == pytest.approx(-0.01, rel=1e-12)
    p = s.periods_per_year
    assert p is not None
    growth = float(np.prod(1.0 + np.array(r))) ** (p / 4) - 1.0
    assert s.annual_return.value == pytest.approx(growth, rel=1e-9)
    ra = np.array(r)
    assert s.annual_volatility.value == pytest.approx(float(ra.std()) * math.sqrt(p), rel=1e-12)
    assert s.sharpe.value == pytest.approx(float(ra.mean()) / float(ra.std()) * math.sqrt(p), rel=1e-12)


def test_a_flow_inside_a_downsampled_bucket_makes_no_peak_or_trough_a_dip_beside_it_stays() -> None:
    # Arrange: buckets of (last, low, high, flow). A withdrawal of 500,000 in bucket 1 (its high the equity
    # before it), a deposit of 500,000 in bucket 2 (its low the equity before it), a 5,000 dip after the
    # withdrawal in bucket 1 (its low 495,000 on the 500,000 left)
    equity = [1e6, 500_000.0, 1e6, 1e6]
    low = [1e6, 495_000.0, 500_000.0, 1e6]
    high = [1e6, 1e6, 1e6, 1e6]
    flows = [0.0, -500_000.0, 500_000.0, 0.0]

    # Act
    s = performance_stats(TS6[:4], equity, low=low, high=high, flows=flows)
    no_dip = performance_stats(TS6[:4], equity, low=[1e6, 500_000.0, 500_000.0, 1e6], high=high, flows=flows)

    # Assert: the dip is -1% of the capital it fell on; the flows themselves are no drawdown
    assert s.max_drawdown.value == pytest.approx(-5_000.0 / 500_000.0, rel=1e-12)
    assert no_dip.max_drawdown.value == 0.0
    assert s.annual_return.value == 0.0


def test_a_flow_belongs_to_the_first_point_stamped_after_it_at_each_boundary() -> None:
    # Arrange: points at 0, 60, 120; flows exactly at each point's time and one representable unit either side
    ts = [0.0, 60.0, 120.0]
    below = np.nextafter(60.0, 0.0)

    # Act / Assert: at the first point's time: after it (step 1); just before it: before the window
    assert step_flows(ts, [0.0], [1.0]).tolist() == [0.0, 1.0, 0.0]
    assert step_flows(ts, [np.nextafter(0.0, -1.0)], [1.0]).tolist() == [0.0, 0.0, 0.0]
    # one unit before a point's time: in that point's step; at it: in the next one
    assert step_flows(ts, [below], [1.0]).tolist() == [0.0, 1.0, 0.0]
    assert step_flows(ts, [60.0], [1.0]).tolist() == [0.0, 0.0, 1.0]
    # one unit before the last point: its step; at it: in no equity of the window yet
    assert step_flows(ts, [np.nextafter(120.0, 0.0)], [1.0]).tolist() == [0.0, 0.0, 1.0]
    assert step_flows(ts, [120.0], [1.0]).tolist() == [0.0, 0.0, 0.0]
    # two flows in one step add up; nothing at all: zeros
    assert step_flows(ts, [61.0, 119.0], [-2.5, 1.0]).tolist() == [0.0, 0.0, -1.5]
    assert step_flows(ts, [], []).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="finite"):
        step_flows(ts, [math.nan], [1.0])


def test_no_flow_changes_nothing_to_the_bit_and_a_first_point_flow_is_ignored() -> None:
    # Arrange: a random walk of equity, with its buckets' extremes
    rng = np.random.default_rng(7)
    equity = 1.2e6 * np.cumprod(1.0 + rng.normal(0.0, 0.01, 200))
    ts = 60.0 * np.arange(200)
    first = np.zeros(200)
    first[0] = 123.0  # no step ends at the first point: its flow is in no return

    # Act
    zero = performance_stats(ts, equity, flows=np.zeros(200), low=equity * 0.995, high=equity * 1.001)
    at_first = performance_stats(ts, equity, flows=first, low=equity * 0.995, high=equity * 1.001)
    without = performance_stats(ts, equity, low=equity * 0.995, high=equity * 1.001)

    # Assert: identical, to the bit; the returns are the equity's
    assert zero == without and at_first == without
    assert flow_adjusted_index(equity, np.zeros(200)).returns.tolist() == (equity[1:] / equity[:-1] - 1.0).tolist()


def test_equity_through_zero_keeps_its_drawdown_and_withholds_the_return_ratios() -> None:
    # Arrange: a margin book 200k -> 150k -> 60k -> -20k -> -35k; and the boundary: equity exactly 0, and 1 over
    crossing = performance_stats(TS6[:5], [200_000.0, 150_000.0, 60_000.0, -20_000.0, -35_000.0])
    before = performance_stats(TS6[:3], [200_000.0, 150_000.0, 60_000.0])
    at_zero = performance_stats(TS6[:3], [200_000.0, 150_000.0, 0.0])
    one_over = performance_stats(TS6[:3], [200_000.0, 150_000.0, 1.0])

    # Assert: peak 200,000 to trough -35,000; the returns are not defined once equity is <= 0
    assert crossing.max_drawdown.value == pytest.approx(-35_000.0 / 200_000.0 - 1.0, rel=1e-12)
    assert crossing.max_drawdown.reason is None
    for ratio in (*crossing.ratios, crossing.annual_return, crossing.annual_volatility):
        assert ratio.value is None and "equity was <= 0" in (ratio.reason or "")
    assert "equity was <= 0" in (crossing.reason or "")
    assert before.max_drawdown.value == pytest.approx(-0.7, rel=1e-12) and before.sharpe.value is not None
    assert at_zero.max_drawdown.value == -1.0 and at_zero.annual_return.value is None
    assert one_over.max_drawdown.value == pytest.approx(1.0 / 200_000.0 - 1.0, rel=1e-12)
    assert one_over.annual_return.value is not None and one_over.reason is None


def test_equity_through_zero_with_a_flow_beside_it() -> None:
    # Arrange: 200k -> -20k (a loss of 220k), then 100k deposited with no P&L: the index is the loss's
    s = performance_stats(TS6[:3], [200_000.0, -20_000.0, 80_000.0], flows=[0.0, 0.0, 100_000.0])

    # Assert: the deposit is not a recovery
    assert s.max_drawdown.value == pytest.approx(-1.1, rel=1e-12)


def test_a_window_that_starts_at_or_below_zero_has_no_drawdown_and_says_why() -> None:
    s = performance_stats(TS6[:3], [0.0, 100.0, 120.0])
    assert s.max_drawdown.value is None and "at the start of the window" in (s.max_drawdown.reason or "")
    assert performance_stats(TS6[:3], [1.0, 100.0, 50.0]).max_drawdown.value == pytest.approx(-0.5)


def test_the_drawdown_stands_where_no_time_is_measured() -> None:
    s = performance_stats([5.0, 5.0, 5.0], [100.0, 80.0, 90.0])
    assert s.sharpe.value is None and "same time" in (s.reason or "")
    assert s.max_drawdown.value == pytest.approx(-0.2, rel=1e-12)


# -- the monitor, a book sync and the Performance page (real Redis) --------------------------------------------


def _bar(store: Store, settings: Settings, clock: Clock, monitor: Monitor, aaa: float) -> float:
    """One bar (AAA at ``aaa``) processed by ``monitor``; main's equity."""
    assert StreamDaemon(store, settings, IterableFeed([]), clock=clock, interval=0).process_bar(
        Bar(clock.t, {"AAA": aaa})
    )
    monitor.process_available()
    snap = store.read_snapshot("main")
    assert snap is not None
    return float(snap["equity"])


def _sync(store: Store, settings: Settings, tmp_path: Path, now: float, cash: str, aaa_cost: str = "100") -> list[str]:
    """Sync main to AAA 1000 @ ``aaa_cost``, BBB 2000 @ 50 and ``cash``; the lines the sync printed."""
    path = tmp_path / "sync.csv"
    path.write_text(
        f"portfolio_id,ticker,qty,avg_price,account_type,cash\nmain,AAA,1000,{aaa_cost},,\nmain,BBB,2000,50,,\n"
        f"main,,,,cash,{cash}\n"
    )
    lines: list[str] = []
    book.sync(store, settings, book.read_book(path, settings.universe.assets), dry_run=False, create=False,
              now=now, actor="backoffice", out=lines.append)  # fmt: skip
    return lines


def _withdraw(store: Store, settings: Settings, tmp_path: Path, cash: str, now: float) -> None:
    assert _sync(store, settings, tmp_path, now, cash) == [f"main: cash: 1000000.00 -> {cash}"]


@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "per-portfolio"])
def test_a_withdrawal_by_sync_is_no_loss_on_the_page_a_price_move_beside_it_is_its_return(
    seeded_store: Store, settings: Settings, tmp_path: Path, vectorised: bool
) -> None:
    # Arrange: two bars at AAA 100, the back office withdraws 500,000, then AAA 110 (+10,000) and 99 (-11,000)
    clock = Clock(WED)
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0, vectorised=vectorised)
    equity = [_bar(seeded_store, settings, clock, monitor, 100.0)]
    clock.t += 60
    equity.append(_bar(seeded_store, settings, clock, monitor, 100.0))
    _withdraw(seeded_store, settings, tmp_path, "500000.00", clock.t)
    for aaa in (110.0, 99.0):
        clock.t += 60
        equity.append(_bar(seeded_store, settings, clock, monitor, aaa))
    assert equity == [E0, E0, E0 - 500_000.0 + 10_000.0, E0 - 500_000.0 - 1_000.0]

    # Act
    s = performance_view(Desk(seeded_store.client, settings, clock=clock), "main", 1_800.0).stats

    # Assert: the returns are 0, +10,000 on 1,200,000 and -11,000 on 710,000; the drawdown is the last one
    r = np.array([0.0, 10_000.0 / E0, -11_000.0 / 710_000.0])
    assert s.observations == 3
    assert s.max_drawdown.value == pytest.approx(r[-1], rel=1e-12)
    p = s.periods_per_year
    assert p is not None
    assert s.annual_volatility.value == pytest.approx(float(r.std()) * math.sqrt(p), rel=1e-9)
    assert s.kelly.value == pytest.approx(float(r.mean()) / float(r.var()), rel=1e-9)
    snap = seeded_store.read_snapshot("main")
    assert snap is not None and snap["drawdown"]["max"] == pytest.approx(s.max_drawdown.value, rel=1e-12)


@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "per-portfolio"])
def test_a_deposit_by_sync_is_no_gain_on_the_page_and_is_in_the_flow_ledger(
    seeded_store: Store, settings: Settings, tmp_path: Path, vectorised: bool
) -> None:
    # Arrange: a bar at AAA 100, the back office deposits 300,000, then AAA 99 (-1,000 on 1,500,000)
    clock = Clock(WED)
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0, vectorised=vectorised)
    equity = [_bar(seeded_store, settings, clock, monitor, 100.0)]
    assert _sync(seeded_store, settings, tmp_path, clock.t, "1300000.00") == ["main: cash: 1000000.00 -> 1300000.00"]
    for aaa in (100.0, 99.0):
        clock.t += 60
        equity.append(_bar(seeded_store, settings, clock, monitor, aaa))
    assert equity == [E0, E0 + 300_000.0, E0 + 299_000.0]

    # Act
    s = performance_view(Desk(seeded_store.client, settings, clock=clock), "main", 1_800.0).stats

    # Assert: the deposit is no return; the fall is -1,000 on 1,500,000, the monitor's drawdown too
    assert seeded_store.read_flows("main", WED, clock.t) == [(WED, 300_000.0)]
    assert s.max_drawdown.value == pytest.approx(-1_000.0 / 1_500_000.0, rel=1e-12)
    snap = seeded_store.read_snapshot("main")
    assert snap is not None and snap["drawdown"]["max"] == pytest.approx(s.max_drawdown.value, rel=1e-12)
    p = s.periods_per_year
    assert p is not None
    assert s.annual_return.value == pytest.approx((1.0 - 1_000.0 / 1_500_000.0) ** (p / 2) - 1.0, rel=1e-9)


@pytest.mark.parametrize("cost", ["90", "110"], ids=["basis-down", "basis-up"])
@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "per-portfolio"])
def test_a_sync_that_only_corrects_a_cost_basis_is_no_return_and_no_drawdown(
    seeded_store: Store, settings: Settings, tmp_path: Path, vectorised: bool, cost: str
) -> None:
    # Arrange: prices flat; the back office restates AAA's cost basis (the P&L moves by -+10,000, equity does not)
    clock = Clock(WED)
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0, vectorised=vectorised)
    equity = [_bar(seeded_store, settings, clock, monitor, 100.0)]
    clock.t += 60
    equity.append(_bar(seeded_store, settings, clock, monitor, 100.0))
    assert _sync(seeded_store, settings, tmp_path, clock.t, "1000000.00", cost) == [
        f"main: position:AAA: 1000 @ 100.0 -> 1000 @ {cost}"]  # fmt: skip
    for _ in range(3):
        clock.t += 60
        equity.append(_bar(seeded_store, settings, clock, monitor, 100.0))
    snap = seeded_store.read_snapshot("main")
    assert (
        equity == [E0] * 5 and snap is not None and snap["pnl"]["total"] == pytest.approx(100_000 - 1000 * float(cost))
    )

    # Act
    s = performance_view(Desk(seeded_store.client, settings, clock=clock), "main", 1_800.0).stats

    # Assert: no flow booked, no return, no drawdown, as the monitor says
    assert seeded_store.read_flows("main", 0.0, clock.t + 1) == []
    assert s.annual_return.value == 0.0 and s.max_drawdown.value == 0.0 and s.annual_volatility.value == 0.0
    assert s.kelly.value is None and snap["drawdown"]["max"] == 0.0


@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "per-portfolio"])
def test_a_fee_is_a_loss_on_the_page_equal_to_the_monitors(
    seeded_store: Store, settings: Settings, vectorised: bool
) -> None:
    # Arrange: two bars at AAA 100; main buys 500 AAA at 100 (fee: 500 x 0.01 = 5.00); two more bars at 100
    clock = Clock(WED)
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0, vectorised=vectorised)
    desk = Desk(seeded_store.client, settings, clock=clock)
    equity = [_bar(seeded_store, settings, clock, monitor, 100.0)]
    clock.t += 60
    equity.append(_bar(seeded_store, settings, clock, monitor, 100.0))
    result = desk.risk_manager("main").execute_trade("AAA", 500, "BUY", client_order_id="fee-1")
    assert result["status"] == "FILLED", result
    for _ in range(2):
        clock.t += 60
        equity.append(_bar(seeded_store, settings, clock, monitor, 100.0))
    assert equity == [E0, E0, E0 - 5.0, E0 - 5.0]

    # Act
    s = performance_view(desk, "main", 1_800.0).stats

    # Assert: the fee is a return of -5 / E0 and the drawdown, exactly the monitor's
    snap = seeded_store.read_snapshot("main")
    assert snap is not None and snap["drawdown"]["max"] == pytest.approx(-5.0 / E0, rel=1e-12)
    assert s.max_drawdown.value == pytest.approx(snap["drawdown"]["max"], rel=1e-12)
    r = np.array([0.0, -5.0 / E0, 0.0])
    assert s.kelly.value == pytest.approx(float(r.mean()) / float(r.var()), rel=1e-9)
    assert seeded_store.read_flows("main", 0.0, clock.t + 1) == []


def test_a_withdrawal_inside_a_downsampled_bucket_is_no_drawdown_a_dip_after_it_is(
    seeded_store: Store, settings: Settings, tmp_path: Path
) -> None:
    # Arrange: a bar every 15 s for 10 minutes; in minute 5 the sync withdraws 500,000 after the first bar,
    # AAA dips to 95 on the third (-5,000 on the 700,000 left) and is back at 100 on the fourth
    clock = Clock(WED)
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0)
    for k in range(40):
        clock.t = WED + 15 * k
        _bar(seeded_store, settings, clock, monitor, 95.0 if k == 22 else 100.0)
        if k == 20:
            _withdraw(seeded_store, settings, tmp_path, "500000.00", clock.t)
    desk = Desk(seeded_store.client, settings, clock=clock)

    # Act: the 1-day window (a downsampled tier: one point a minute) and the 30-minute one (every point)
    day = performance_view(desk, "main", 86_400.0).stats
    raw = performance_view(desk, "main", 1_800.0).stats
    buckets = history_frame(desk, "main", 86_400.0)

    # Assert: the bucket holds both sides of the flow; neither window counts the flow, both the dip
    assert len(buckets) == 10 and buckets["equity_high"].max() == E0 and buckets["equity_low"].min() == 695_000.0
    dip = 695_000.0 / 700_000.0 - 1.0
    assert day.max_drawdown.value == pytest.approx(dip, rel=1e-9)
    assert raw.max_drawdown.value == pytest.approx(dip, rel=1e-12)
    assert day.annual_return.value == pytest.approx(0.0, abs=1e-12)
    assert raw.annual_return.value == pytest.approx(0.0, abs=1e-12)


def test_a_margin_book_through_zero_keeps_its_drawdown_on_the_page(seeded_store: Store, settings: Settings) -> None:
    # Arrange: the history of hedge, 200k to -35k, one point a minute
    t0 = WED
    for i, e in enumerate([200_000.0, 150_000.0, 60_000.0, -20_000.0, -35_000.0]):
        seeded_store.record_snapshot("hedge", {"version": i}, {"ts": t0 + 60 * i, "equity": e}, ts=t0 + 60 * i,
                                     retention_seconds=3600, max_points=1000)  # fmt: skip
    desk = Desk(seeded_store.client, settings, clock=lambda: t0 + 240)

    # Act
    s = performance_view(desk, "hedge", 1_800.0).stats

    # Assert
    assert s.max_drawdown.value == pytest.approx(-1.175, rel=1e-12)
    assert s.sharpe.value is None and "equity was <= 0" in (s.sharpe.reason or "")


# -- the flow ledger (engine/store/monitoring.py) ----------------------------------------------------------------


def test_shift_peaks_books_the_flow_in_the_ledger_as_exact_decimal_text_in_its_listed_key(store: Store) -> None:
    keys = PortfolioKeys("desk-1")

    # Act: a flow before any observation (no peaks to shift: still booked), two equal flows at one time,
    # a shift without a time (books nothing), and one in a caller's MULTI
    assert store.shift_peaks("desk-1", -0.1, ts=100.0) is False
    store.update_peaks("desk-1", 1000.0, "2024-03-06", "2024-03-04")
    assert store.shift_peaks("desk-1", 250.5, ts=160.0) is True
    assert store.shift_peaks("desk-1", 250.5, ts=160.0) is True
    assert store.shift_peaks("desk-1", 7.0) is True
    with store.client.pipeline(transaction=True) as pipe:
        assert store.shift_peaks("desk-1", -3.0, pipe, ts=220.0) is None
        pipe.execute()

    # Assert: the window is [start, end): a flow at the start is in it, one at the end is not
    assert store.read_flows("desk-1", 100.0, 220.0) == [(100.0, -0.1), (160.0, 250.5), (160.0, 250.5)]
    assert store.read_flows("desk-1", np.nextafter(100.0, 200.0), 220.0) == [(160.0, 250.5), (160.0, 250.5)]
    assert store.read_flows("desk-1", 160.0, np.nextafter(220.0, 300.0))[-1] == (220.0, -3.0)
    assert store.read_flows("desk-1", 220.0, 220.0) == []
    members = store.client.zrange(keys.flows, 0, -1)
    assert len(members) == 4 and all(b'"flow":"' in m for m in members) and b'"flow":"-0.1"' in members[0]
    written = {k.decode() for k in store.client.scan_iter(match="pf:{desk-1}:*", count=1000)}
    assert written == {keys.peaks, keys.flows} and written <= set(keys.all())
    with pytest.raises(ValueError, match="finite"):
        store.shift_peaks("desk-1", 1.0, ts=math.inf)
    store.client.zadd(keys.flows, {'{"ts": 300.0}': 300.0})
    with pytest.raises(CorruptDataError):
        store.read_flows("desk-1", 250.0, 400.0)


# -- CSV export -------------------------------------------------------------------------------------------------


def test_an_empty_export_is_one_row_of_its_time_and_blanks() -> None:
    as_of = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC).timestamp()
    empty = pd.DataFrame(columns=["ticker", "qty", "price", "cost"])
    one = pd.DataFrame({"ticker": ["AAA"], "cost": [1234.0]})

    rows = list(csv.DictReader(io.StringIO(csv_bytes(empty, kinds={"cost": "money"}, as_of=as_of).decode())))
    single = list(csv.DictReader(io.StringIO(csv_bytes(one, as_of=as_of).decode())))
    bare = csv_bytes(empty).decode()

    assert rows == [{AS_OF_COLUMN: "2023-11-14 22:13:20", "ticker": "", "qty": "", "price": "", "cost": ""}]
    assert single == [{AS_OF_COLUMN: "2023-11-14 22:13:20", "ticker": "AAA", "cost": "1234.0"}]
    assert bare == "ticker,qty,price,cost\r\n"  # no time asked: the header alone, as before
    assert csv_bytes(pd.DataFrame(), as_of=as_of).decode() == f"{AS_OF_COLUMN}\r\n2023-11-14 22:13:20\r\n"


def test_the_page_module_still_exports_the_band_series() -> None:
    ts, equity, version, low, high = performance.equity_band_series(
        [{"ts": 2.0, "equity": 5.0, "pnl.total": 1.0}, {"ts": 1.0, "equity": 4.0, "equity_low": 3.0}]
    )
    assert ts.tolist() == [1.0, 2.0] and low[0] == 3.0 and math.isnan(high[0]) and math.isnan(version[0])
    assert performance.equity_series([{"ts": 2.0, "equity": 5.0}, {"ts": 1.0, "equity": 4.0}])[1].tolist() == [4.0, 5.0]
