"""warmup --positions / --sync (engine/book.py), --history on a seeded store and --reset (engine/reload.py)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

import warmup
from engine import book
from engine.feeds import Bar, IterableFeed
from engine.settings import Settings
from engine.store import GLOBAL_AUDIT_KEY, PortfolioKeys, Store
from engine.stream import StreamDaemon
from logic.monitor import Monitor
from logic.risk_manager import RiskManager

from .conftest import TEST_CONFIG, store_contents, to_toml
from .test_monitor import Clock

WED = datetime(2024, 3, 6, 15, 0, tzinfo=UTC).timestamp()
"""A Wednesday, 10:00 in New York: inside an XNYS session."""

BOOK = """portfolio_id,ticker,qty,avg_price,account_type,cash
main,AAA,1000,92.50,,
main,BBB,2000,55.125,,
main,,,,cash,750000.00
hedge,CCC,300,210,,
hedge,DDD,-1000,22.75,,
"""


@pytest.fixture
def cli(redis_server, redis_client, tmp_path: Path, monkeypatch, capsys):
    """Run ``warmup.main`` against the test Redis with TEST_CONFIG; returns (exit code, stdout, stderr)."""
    config = tmp_path / "riskdesk.toml"
    config.write_text(to_toml(TEST_CONFIG))
    monkeypatch.setenv("REDIS_URL", redis_server.url)

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = warmup.main(["--config", str(config), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _audit(client, key: str) -> list[dict]:
    return [json.loads(fields[b"json"]) for _, fields in client.xrange(key)]


def test_positions_with_cost_basis_give_the_right_unrealized_pnl_from_the_first_snapshot(
    cli, store: Store, settings, tmp_path: Path
) -> None:
    book = _write(tmp_path, "book.csv", BOOK)

    code, out, err = cli("--positions", str(book))

    assert code == 0, err
    main = store.read_portfolio("main")
    assert main.cash == Decimal("750000.00")
    assert main.positions["BBB"].avg_price == Decimal("55.125")
    snapshots = Monitor(store, settings, clock=time.time).refresh()
    prices = dict(zip(store.read_market_header().tickers, store.read_market_header().prices.tolist(), strict=True))
    rows = [line.split(",") for line in BOOK.splitlines()[1:] if line.split(",")[1]]
    assert len(rows) == 4
    for pid, ticker, qty, cost, *_ in rows:
        position = next(p for p in snapshots[pid]["positions"] if p["ticker"] == ticker)
        assert position["unrealized_pnl"] == pytest.approx(int(qty) * (prices[ticker] - float(cost)), rel=1e-12)
    expected_main = 1000 * (prices["AAA"] - 92.5) + 2000 * (prices["BBB"] - 55.125)
    assert snapshots["main"]["pnl"]["unrealized"] == pytest.approx(expected_main, rel=1e-12)


def test_sync_dry_run_prints_the_diff_and_changes_nothing(cli, redis_client, tmp_path: Path) -> None:
    assert cli()[0] == 0
    before = store_contents(redis_client)

    code, out, _ = cli("--sync", "--dry-run", "--positions", str(_write(tmp_path, "book.csv", BOOK)))

    assert code == 0
    assert "would change main: cash: 1000000.00 -> 750000.00" in out
    assert store_contents(redis_client) == before


def test_sync_applies_exactly_the_printed_diff_and_audits_each_change(
    cli, redis_client, store: Store, tmp_path: Path
) -> None:
    assert cli()[0] == 0
    book = _write(tmp_path, "book.csv", "portfolio_id,ticker,qty,avg_price,cash\nmain,AAA,1200,99.5,\nmain,,,,900000\n")
    hedge_before = {k: v for k, v in store_contents(redis_client).items() if b"{hedge}" in k}
    _, dry, _ = cli("--sync", "--dry-run", "--positions", str(book))

    code, out, _ = cli("--sync", "--positions", str(book))

    printed = out.strip().splitlines()
    assert code == 0 and [f"would change {line}" for line in printed] == dry.strip().splitlines()
    assert printed == [
        "main: cash: 1000000.00 -> 900000",
        "main: position:AAA: 1000 @ 100.0 -> 1200 @ 99.5",
        "main: position:BBB: 2000 @ 50.0 -> (none)",
    ]
    main = store.read_portfolio("main")
    assert main.cash == Decimal("900000")
    assert dict(main.positions) == {"AAA": main.positions["AAA"]} and main.positions["AAA"].qty == 1200
    records = [r for r in _audit(redis_client, PortfolioKeys("main").audit) if r["action"] == "sync"]
    assert [f"main: {r['field']}: {r['before'] or '(none)'} -> {r['after'] or '(none)'}" for r in records] == printed
    # a portfolio the file does not name is never touched
    assert {k: v for k, v in store_contents(redis_client).items() if b"{hedge}" in k} == hedge_before
    # applied: a second run has nothing to do
    assert cli("--sync", "--positions", str(book))[1].strip() == "nothing to change"


def test_sync_from_the_settings_applies_an_edited_portfolio_entry(cli, redis_client, store, tmp_path: Path) -> None:
    assert cli()[0] == 0
    edited = dict(TEST_CONFIG, portfolios=[dict(TEST_CONFIG["portfolios"][0], holdings={"AAA": 1500})])
    config = _write(tmp_path, "edited.toml", to_toml(edited))

    code = warmup.main(["--config", str(config), "--sync"])

    assert code == 0
    main = store.read_portfolio("main")
    assert main.positions["AAA"].qty == 1500 and main.positions["AAA"].avg_price == Decimal("100.0")
    assert "BBB" not in main.positions
    assert store.read_portfolio("hedge").positions["DDD"].qty == -1000


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("portfolio_id,ticker,qty,avg_price\nmain,ZZZ,1,10\n", 2, "not in the universe"),
        ("portfolio_id,ticker,qty,avg_price\nmain,AAA,-5,10\n", 2, "short AAA in a cash account"),
        ("portfolio_id,ticker,qty,avg_price\nmain,AAA,nan,10\n", 2, "whole number"),
        ("portfolio_id,ticker,qty,avg_price\nmain,AAA,1.5,10\n", 2, "whole number"),
        ("portfolio_id,ticker,qty,avg_price\nmain,AAA,5,-10\n", 2, "must be > 0"),
        ("portfolio_id,ticker,qty,avg_price\nmain,AAA,5,NaN\n", 2, "finite"),
        ("portfolio_id,ticker,qty,avg_price\nmain,AAA,5,10\nmain,AAA,6,10\n", 3, "twice"),
        ("portfolio_id,ticker,qty\nmain,AAA,5\n", 1, "header"),
        ("portfolio_id,ticker,qty,avg_price\nmain,AAA,5\n", 2, "expected 4 fields"),
        ("portfolio_id,ticker,qty,avg_price,cash\nmain,,,,-1\n", 2, "must be >= 0"),
        ("portfolio_id,ticker,qty,avg_price\nnewbook,AAA,5,10\n", 2, "--create"),
    ],
)
def test_bad_book_input_exits_2_with_file_line_and_leaves_the_store_unchanged(
    cli, redis_client, tmp_path: Path, text: str, line: int, message: str
) -> None:
    assert cli()[0] == 0
    before = store_contents(redis_client)
    path = _write(tmp_path, "bad.csv", text)

    code, _, err = cli("--sync", "--positions", str(path))

    assert code == 2 and f"{path}:{line}:" in err and message in err
    assert store_contents(redis_client) == before


def test_sync_creates_an_unknown_portfolio_only_with_create(cli, store: Store, tmp_path: Path) -> None:
    assert cli()[0] == 0
    path = _write(tmp_path, "new.csv", "portfolio_id,ticker,qty,avg_price,cash\nnewbook,AAA,5,10,\nnewbook,,,,1000\n")

    code, out, _ = cli("--sync", "--create", "--positions", str(path))

    assert code == 0 and "newbook: new portfolio" in out
    assert store.read_portfolio("newbook").positions["AAA"].avg_price == Decimal("10")
    assert store.read_trading_state("newbook").state == "ACTIVE"


def test_bad_positions_on_an_empty_store_write_nothing(cli, redis_client, tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.csv", "portfolio_id,ticker,qty,avg_price\nmain,AAA,-5,10\n")

    code, _, err = cli("--positions", str(path))

    assert code == 2 and f"{path}:2:" in err
    assert redis_client.dbsize() == 0


def _daily_history(tmp_path: Path, seed: int = 5) -> Path:
    rng = np.random.default_rng(seed)
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, size=(60, 4)), axis=0))
    days = np.datetime64("2024-01-01") + np.arange(120)
    days = [d for d in days if np.is_busday(d)][:60]
    lines = ["date,AAA,BBB,CCC,DDD"] + [
        f"{d},{','.join(repr(float(p)) for p in row)}" for d, row in zip(days, closes, strict=True)
    ]
    return _write(tmp_path, "daily.csv", "\n".join(lines) + "\n")


def test_history_on_a_seeded_store_keeps_books_trades_and_audit_and_starts_a_new_epoch(
    cli, redis_client, store: Store, settings, tmp_path: Path
) -> None:
    assert cli()[0] == 0
    assert RiskManager(redis_client, "main", settings).execute_trade("AAA", 10, "BUY")["status"] == "FILLED"
    Monitor(store, settings, clock=time.time).refresh()
    keys = PortfolioKeys("main")
    kept = {k: v for k, v in store_contents(redis_client).items() if k.decode().split(":")[-1] in (
        "trades", "audit", "positions", "orders", "trading_state", "peaks", "marks")}  # fmt: skip
    epoch, version = store.read_market_epoch(), store.read_market_version()
    assert keys.peaks.encode() in kept and keys.marks.encode() in kept

    code, out, err = cli("--history", str(_daily_history(tmp_path)))

    assert code == 0, err
    after = store_contents(redis_client)
    for key, value in kept.items():
        if key.endswith(b":audit") and b"{" not in key:
            continue
        assert after[key] == value, key
    assert store.read_market_epoch() == epoch + 1 and store.read_market_version() == version + 1
    # the P&L references, the drawdown record and the excursions are the book's: kept byte for byte (above)
    assert {k: v for k, v in _audit(redis_client, GLOBAL_AUDIT_KEY)[-1].items() if k in ("action", "peaks")} == {
        "action": "load_history", "peaks": "kept"}  # fmt: skip
    assert store.read_portfolio("main").positions["AAA"].qty == 1010


def test_reset_keeps_the_audit_trail_unless_wipe_audit(cli, redis_client, store: Store, settings) -> None:
    assert cli()[0] == 0
    assert RiskManager(redis_client, "main", settings).execute_trade("AAA", 10, "BUY")["status"] == "FILLED"
    store.append_check_record("main", {"ts": 1.0, "actor": "local:ops", "reasons": []})  # a refused check
    trail = {k: v for k, v in store_contents(redis_client).items() if k.endswith((b":audit", b":checks", b":trades"))}
    assert PortfolioKeys("main").checks.encode() in trail

    assert cli("--reset", "--yes")[0] == 0

    after = store_contents(redis_client)
    for key, (_, _, entries) in trail.items():
        assert after[key][2][: len(entries)] == entries  # the old records are all still there, in order
    assert _audit(redis_client, GLOBAL_AUDIT_KEY)[-2]["action"] == "reset"

    assert cli("--reset", "--yes", "--wipe-audit")[0] == 0

    assert not redis_client.exists(PortfolioKeys("main").trades)
    assert not redis_client.exists(PortfolioKeys("main").checks)
    assert [r["action"] for r in _audit(redis_client, GLOBAL_AUDIT_KEY)] == ["reset", "seed"]


@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "per-portfolio"])
def test_a_market_reload_computes_no_return_across_and_keeps_the_day_open_peaks_and_worst_drawdown(
    seeded_store: Store, settings, vectorised: bool
) -> None:
    from engine import reload

    # Arrange: main (1,000,000 cash, 1000 AAA, 2000 BBB) down 4.675% on the day, just inside a 5% breaker
    clock = Clock(WED)
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0, vectorised=vectorised)
    daemon = StreamDaemon(seeded_store, settings, IterableFeed([]), clock=clock, interval=0)
    e0, e1 = 1_000_000.0 + 1000 * 100.0 + 2000 * 50.0, 1_000_000.0 + 1000 * 70.0 + 2000 * 36.95
    for k, (aaa, bbb) in enumerate(((100.0, 50.0), (70.0, 36.95))):
        clock.t = WED + 60 * k
        assert daemon.process_bar(Bar(clock.t, {"AAA": aaa, "BBB": bbb}))
        monitor.process_available()
    before = seeded_store.read_snapshot("main")
    assert before is not None and before["drawdown"]["daily"] == pytest.approx(e1 / e0 - 1, rel=1e-12)
    market = seeded_store.read_market()
    new_cov = np.diag([1e-6, 2e-6, 3e-6, 4e-6])

    # Act: reload the same prices with a new matrix; the stream's next bar is the new epoch's reset bar
    reload.reload_market(seeded_store, settings, market.tickers, market.prices, new_cov, now=clock.t, actor="ops",
                         detail={})  # fmt: skip
    clock.t += 60
    assert daemon.process_bar(Bar(clock.t, {"AAA": 70.0}))
    event = seeded_store.last_tick()
    assert event is not None and event.reset
    np.testing.assert_array_equal(seeded_store.read_market().cov, new_cov)  # no return across the two markets
    monitor.process_available()
    same = seeded_store.read_snapshot("main")

    # Assert: nothing moved: daily P&L, daily / weekly / all-time drawdown are the book's, as before the reload
    assert same is not None and same["equity"] == pytest.approx(e1, rel=1e-12)
    assert same["pnl"]["daily"] == pytest.approx(e1 - e0, rel=1e-12)
    assert same["drawdown"] == pytest.approx({k: e1 / e0 - 1 for k in ("daily", "weekly", "max")}, rel=1e-12)

    # Act: a reload that re-marks AAA at 60 (and the bar after it carries that price on)
    reload.reload_market(seeded_store, settings, market.tickers,
                         np.where(np.array(market.tickers) == "AAA", 60.0, seeded_store.read_market().prices),
                         new_cov, now=clock.t, actor="ops", detail={})  # fmt: skip
    clock.t += 60
    assert daemon.process_bar(Bar(clock.t, {"AAA": 60.0}))
    monitor.process_available()
    remarked = seeded_store.read_snapshot("main")

    # Assert: the re-mark shows as P&L against the references kept (engine/reload.py), one more tick goes on
    e2 = 1_000_000.0 + 1000 * 60.0 + 2000 * 36.95
    assert remarked is not None and remarked["pnl"]["daily"] == pytest.approx(e2 - e0, rel=1e-12)
    assert remarked["drawdown"] == pytest.approx({k: e2 / e0 - 1 for k in ("daily", "weekly", "max")}, rel=1e-12)
    assert daemon.process_bar(Bar(clock.t + 60, {"AAA": 61.0}))
    assert not seeded_store.last_tick().reset  # only the first bar of the new epoch


# -- capital flows (engine/book.py) -----------------------------------------------------------------------------


def _sync(store: Store, settings: Settings, tmp_path: Path, rows: str, now: float) -> list[str]:
    """Apply ``rows`` (book CSV rows under the full header) with ``--sync``; returns the lines it printed."""
    path = _write(tmp_path, "sync.csv", "portfolio_id,ticker,qty,avg_price,account_type,cash\n" + rows)
    lines: list[str] = []
    book.sync(store, settings, book.read_book(path, settings.universe.assets), dry_run=False, create=False,
              now=now, actor="backoffice", out=lines.append)  # fmt: skip
    return lines


def _bar(store: Store, settings: Settings, clock: Clock, monitor: Monitor, aaa: float) -> dict[str, Any]:
    """One bar (AAA at ``aaa``) at ``clock`` processed by ``monitor``; main's snapshot."""
    assert StreamDaemon(store, settings, IterableFeed([]), clock=clock, interval=0).process_bar(
        Bar(clock.t, {"AAA": aaa})
    )
    monitor.process_available()
    snap = store.read_snapshot("main")
    assert snap is not None
    return snap


@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "per-portfolio"])
def test_a_withdrawal_and_a_transfer_out_recorded_by_sync_are_not_pnl_the_references_move_by_the_flow(
    seeded_store: Store, settings: Settings, redis_client, tmp_path: Path, vectorised: bool
) -> None:
    # Arrange: main is 1,000,000 cash, 1000 AAA @ 100, 2000 BBB @ 50; AAA falls to 90 (a real loss of 10,000)
    clock = Clock(WED)
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0, vectorised=vectorised)
    e0 = 1_000_000.0 + 1000 * 100.0 + 2000 * 50.0
    _bar(seeded_store, settings, clock, monitor, 100.0)
    clock.t += 60
    down = _bar(seeded_store, settings, clock, monitor, 90.0)
    worst = seeded_store.read_peaks("main")
    assert worst is not None and worst.max_drawdown == pytest.approx((e0 - 10_000) / e0 - 1, rel=1e-12)

    # Act: the back office withdraws 100,000 of cash and transfers 200 AAA out (at the mark, 90: 18,000)
    lines = _sync(seeded_store, settings, tmp_path,
                  "main,AAA,800,100,,\nmain,BBB,2000,50,,\nmain,,,,cash,900000.00\n", clock.t)  # fmt: skip

    # Assert: the diff holds the two real changes only; every reference moved by the flow, the worst
    # drawdown so far stays; the flow is audited with its parts
    flow = -100_000.0 - 200 * 90.0
    assert lines == ["main: cash: 1000000.00 -> 900000.00", "main: position:AAA: 1000 @ 100.0 -> 800 @ 100"]
    shifted = seeded_store.read_peaks("main")
    assert shifted is not None
    for name in ("day_open", "day_peak", "week_peak", "max_peak"):
        assert getattr(shifted, name) == getattr(worst, name) + flow, name
    assert shifted.max_drawdown == worst.max_drawdown
    raw = redis_client.hmget(PortfolioKeys("main").peaks, ["last", "close"])
    assert [float(v) for v in raw] == [e0 - 10_000 + flow] * 2
    records = [r for r in _audit(redis_client, PortfolioKeys("main").audit) if r["action"] == "capital_flow"]
    assert [(r["flow"], r["cash"], r["positions"], r["actor"]) for r in records] == [
        (flow, -100_000.0, {"AAA": {"qty": -200, "price": 90.0}}, "backoffice")]  # fmt: skip

    # Act / Assert: prices unchanged: the day's P&L is still the market's -10,000, the drawdowns are the
    # remaining book's against its shifted peak (1,082,000), the all-time record the worse of the two
    clock.t += 60
    after = _bar(seeded_store, settings, clock, monitor, 90.0)
    e2 = 900_000.0 + 800 * 90.0 + 2000 * 50.0
    assert after["equity"] == pytest.approx(e2, rel=1e-15)
    assert after["pnl"]["daily"] == pytest.approx(down["pnl"]["daily"], rel=1e-9)
    assert after["pnl"]["daily"] == pytest.approx(e2 - (e0 + flow), rel=1e-9)
    assert after["drawdown"]["daily"] == pytest.approx(e2 / (e0 + flow) - 1, rel=1e-9)
    assert after["drawdown"]["weekly"] == pytest.approx(e2 / (e0 + flow) - 1, rel=1e-9)
    assert after["drawdown"]["max"] == pytest.approx(min(worst.max_drawdown, e2 / (e0 + flow) - 1), rel=1e-9)
    # and the book moves on from there: AAA back to 99 on 800 shares
    clock.t += 60
    up = _bar(seeded_store, settings, clock, monitor, 99.0)
    e3 = 900_000.0 + 800 * 99.0 + 2000 * 50.0
    assert up["pnl"]["daily"] == pytest.approx(e3 - (e0 + flow), rel=1e-9)
    assert up["drawdown"]["daily"] == pytest.approx(e3 / (e0 + flow) - 1, rel=1e-9)


def test_a_cost_basis_correction_moves_no_equity_and_a_one_cent_withdrawal_moves_the_references_one_cent(
    seeded_store: Store, settings: Settings, redis_client, tmp_path: Path
) -> None:
    clock = Clock(WED)
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0)
    e0 = 1_000_000.0 + 1000 * 100.0 + 2000 * 50.0
    _bar(seeded_store, settings, clock, monitor, 100.0)
    key = PortfolioKeys("main").peaks
    stored = redis_client.hgetall(key)

    # Act / Assert: a cost basis corrected (no flow at all): the references are untouched, no flow audited
    assert _sync(seeded_store, settings, tmp_path, "main,AAA,1000,95.5,,\nmain,BBB,2000,50,,\n", clock.t) == [
        "main: position:AAA: 1000 @ 100.0 -> 1000 @ 95.5"]  # fmt: skip
    assert redis_client.hgetall(key) == stored
    assert not [r for r in _audit(redis_client, PortfolioKeys("main").audit) if r["action"] == "capital_flow"]

    # Act / Assert: one cent withdrawn: every reference moves by exactly one cent, and the day's P&L stays 0
    _sync(seeded_store, settings, tmp_path, "main,AAA,1000,95.5,,\nmain,BBB,2000,50,,\nmain,,,,,999999.99\n",
          clock.t)  # fmt: skip
    peaks = seeded_store.read_peaks("main")
    assert peaks is not None
    assert (peaks.day_open, peaks.day_peak, peaks.week_peak, peaks.max_peak) == (e0 + -0.01,) * 4
    assert redis_client.hget(key, "owner") != stored[b"owner"]  # the vectorised monitor reloads it
    clock.t += 60
    snap = _bar(seeded_store, settings, clock, monitor, 100.0)
    assert snap["pnl"]["daily"] == pytest.approx(0.0, abs=1e-9)
    assert snap["drawdown"] == {"daily": 0.0, "weekly": 0.0, "max": 0.0}


def test_a_sync_to_the_same_numbers_written_otherwise_changes_nothing_and_one_cent_of_cost_is_a_change(
    seeded_store: Store, settings: Settings, redis_client, tmp_path: Path
) -> None:
    # Arrange: stored as seeded: cash 1000000.00, AAA 1000 @ 100.0, BBB 2000 @ 50.0
    before = store_contents(redis_client)

    # Act / Assert: the same values in other decimal forms are no change: nothing printed, written or audited
    same = "main,AAA,1000,100,,\nmain,BBB,2000,50.000,,\nmain,,,,cash,1000000\n"
    assert _sync(seeded_store, settings, tmp_path, same, WED) == ["nothing to change"]
    assert store_contents(redis_client) == before

    # Act / Assert: one cent of cost more is a change, the only one, and no flow
    assert _sync(seeded_store, settings, tmp_path, "main,AAA,1000,100.01,,\nmain,BBB,2000,50,,\n", WED) == [
        "main: position:AAA: 1000 @ 100.0 -> 1000 @ 100.01"]  # fmt: skip
    actions = [r["action"] for r in _audit(redis_client, PortfolioKeys("main").audit)]
    assert actions.count("sync") == 1 and "capital_flow" not in actions
    assert seeded_store.read_portfolio("main").positions["AAA"].avg_price == Decimal("100.01")


def test_a_capital_flow_committed_after_the_monitor_read_the_books_never_meets_the_old_book(
    seeded_store: Store, settings: Settings, tmp_path: Path
) -> None:
    # Arrange: a vectorised monitor that holds main's state; the sync will commit right after its next read of
    # the books, before it merges them (the window between reading a book and merging its peaks)
    clock = Clock(WED)
    monitor = Monitor(seeded_store, settings, clock=clock, idle_refresh_seconds=0)
    for _ in range(2):
        _bar(seeded_store, settings, clock, monitor, 100.0)
        clock.t += 60
    read = monitor._read_bundles
    synced: list[str] = []

    def read_then_sync() -> Any:
        bundles = read()
        if not synced:
            rows = "main,AAA,1000,100,,\nmain,BBB,2000,50,,\nmain,,,,,900000.00\n"
            synced.extend(_sync(seeded_store, settings, tmp_path, rows, clock.t))
        return bundles

    monitor._read_bundles = read_then_sync  # type: ignore[method-assign]
    assert StreamDaemon(seeded_store, settings, IterableFeed([]), clock=clock, interval=0).process_bar(
        Bar(clock.t, {"AAA": 100.0})
    )

    # Act: what Monitor.run does: a tick that fails on a conflict is redone from the store
    for _ in range(2):
        try:
            monitor.process_available()
            break
        except redis.WatchError as exc:
            monitor._on_store_error(exc)
    clock.t += 60
    snap = _bar(seeded_store, settings, clock, monitor, 100.0)

    # Assert: the withdrawal (prices unchanged) is no P&L and no drawdown, on the tick it landed in and after
    assert synced == ["main: cash: 1000000.00 -> 900000.00"]
    assert snap["equity"] == 1_100_000.0
    assert snap["pnl"]["daily"] == pytest.approx(0.0, abs=1e-9)
    assert snap["drawdown"] == {"daily": 0.0, "weekly": 0.0, "max": 0.0}
    history = seeded_store.read_history("main")
    assert [p["pnl.daily"] for p in history] == pytest.approx([0.0] * len(history), abs=1e-9)
