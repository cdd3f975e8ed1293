"""warmup --positions / --sync (engine/book.py), --history on a seeded store and --reset (engine/reload.py)."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

import warmup
from engine.store import GLOBAL_AUDIT_KEY, PortfolioKeys, Store
from logic.monitor import Monitor
from logic.risk_manager import RiskManager

from .conftest import TEST_CONFIG, store_contents, to_toml

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
        "trades", "audit", "positions", "orders", "trading_state")}  # fmt: skip
    epoch, version = store.read_market_epoch(), store.read_market_version()
    assert redis_client.exists(keys.peaks)

    code, out, err = cli("--history", str(_daily_history(tmp_path)))

    assert code == 0, err
    after = store_contents(redis_client)
    for key, value in kept.items():
        if key.endswith(b":audit") and b"{" not in key:
            continue
        assert after[key] == value, key
    assert store.read_market_epoch() == epoch + 1 and store.read_market_version() == version + 1
    assert not redis_client.exists(keys.peaks)  # drawdowns restart from the new market
    assert _audit(redis_client, GLOBAL_AUDIT_KEY)[-1]["action"] == "load_history"
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


def test_no_return_is_computed_across_a_market_reload_and_the_monitor_restarts_the_peaks(
    seeded_store: Store, settings, redis_client
) -> None:
    from engine import reload
    from engine.feeds import Bar, IterableFeed
    from engine.stream import StreamDaemon

    daemon = StreamDaemon(seeded_store, settings, IterableFeed([]), interval=0)
    assert daemon.process_bar(Bar(1.0, {"AAA": 101.0}))
    monitor = Monitor(seeded_store, settings, clock=time.time)
    monitor.refresh()
    tickers = seeded_store.read_market().tickers
    new_cov = np.diag([1e-6, 2e-6, 3e-6, 4e-6])
    reload.reload_market(seeded_store, settings, tickers, np.array([50.0, 20.0, 80.0, 10.0]), new_cov,
                         now=time.time(), actor="test", detail={})  # fmt: skip
    Monitor(seeded_store, settings, clock=time.time).refresh()  # the new market's first equity
    redis_client.hset(PortfolioKeys("main").peaks, "max_peak", "1e12")  # a stale peak the reset tick must drop

    assert daemon.process_bar(Bar(2.0, {"AAA": 51.0}))

    event = seeded_store.last_tick()
    assert event is not None and event.reset
    np.testing.assert_array_equal(seeded_store.read_market().cov, new_cov)  # no return 101 -> 51 in the matrix
    snapshots = monitor.process_tick(None, event)
    assert snapshots["main"]["drawdown"]["max"] == 0.0
    assert daemon.process_bar(Bar(3.0, {"AAA": 52.0}))
    assert not seeded_store.last_tick().reset  # only the first bar of the new epoch
