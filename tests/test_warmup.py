"""Warm-up against a real Redis: seeding, idempotency, history, growing the universe, bad input."""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

import warmup
from engine import math_logic
from engine.settings import Settings
from engine.store import MARKET_KEY, SCHEMA_VERSION, Store, encode_array

from .conftest import TEST_CONFIG, merge, store_contents, to_toml


def test_seeding_an_empty_store_writes_market_matrix_and_portfolios(store: Store, settings: Settings) -> None:
    changed = warmup.seed(store, settings, now=1_000.0)

    assert changed
    assert store.schema_version() == SCHEMA_VERSION
    snap = store.read_market()
    assert snap.version == 0 and snap.tickers == ("AAA", "BBB", "CCC", "DDD")
    vols = np.array([0.20, 0.30, 0.25, 0.40]) / math.sqrt(390 * 252)
    rho = 0.3
    expected = np.outer(vols, vols) * rho
    np.fill_diagonal(expected, vols**2)
    np.testing.assert_allclose(snap.cov, expected, rtol=1e-12)
    np.testing.assert_array_equal(snap.prices, [100.0, 50.0, 200.0, 25.0])
    main = store.read_portfolio("main")
    assert main.cash == Decimal("1000000.00")
    assert {t: p.qty for t, p in main.positions.items()} == {"AAA": 1000, "BBB": 2000}
    assert main.positions["BBB"].avg_price == Decimal("50.0")
    assert store.read_portfolio("hedge").positions["DDD"].qty == -1000
    assert store.read_trading_state("main").state == "ACTIVE"
    _, tickers, stressed = store.read_stressed()
    assert tickers == snap.tickers
    assert np.linalg.eigvalsh(stressed).min() >= -1e-18
    corr = math_logic.correlation_from_covariance(stressed)
    assert corr[~np.eye(4, dtype=bool)].min() >= 0.6 - 1e-12
    np.testing.assert_allclose(np.sqrt(np.diag(stressed)), 2.0 * vols, rtol=1e-9)


def test_running_the_warmup_twice_changes_nothing_the_second_time(store: Store, settings: Settings) -> None:
    warmup.seed(store, settings, now=1_000.0)
    before = store_contents(store.client)

    changed = warmup.seed(store, settings, now=2_000.0)

    assert changed == []
    assert store_contents(store.client) == before


def test_a_portfolio_added_to_the_settings_is_seeded_without_touching_the_others(
    store: Store, settings: Settings, make_settings
) -> None:
    warmup.seed(store, settings, now=1_000.0)
    store.client.hset("pf:{main}:state", "cash", "123.45")  # a trade happened meanwhile
    grown = make_settings(
        {"portfolios": [*TEST_CONFIG["portfolios"], {"id": "new", "cash": "10.00", "holdings": {"CCC": 1}}]}
    )

    changed = warmup.seed(store, grown, now=2_000.0)

    assert changed == ["portfolio new"]
    assert store.read_portfolio("main").cash == Decimal("123.45")
    assert store.read_portfolio("new").positions["CCC"].qty == 1


def test_add_ticker_grows_the_matrix_and_keeps_holdings_and_the_old_block(store: Store, settings: Settings) -> None:
    warmup.seed(store, settings, now=1_000.0)
    old = store.read_market()
    main_before = store.read_portfolio("main")

    version = warmup.add_ticker(store, settings, "EEE", 80.0, 0.35, now=1_500.0)

    new = store.read_market()
    assert version == old.version + 1 == new.version
    assert new.tickers == (*old.tickers, "EEE")
    assert new.cov[:4, :4].tobytes() == old.cov.tobytes()
    vol = 0.35 / math.sqrt(390 * 252)
    assert new.cov[4, 4] == pytest.approx(vol**2, rel=1e-12)
    np.testing.assert_allclose(new.cov[4, :4], 0.3 * np.sqrt(np.diag(old.cov)) * vol, rtol=1e-12)
    assert np.array_equal(new.cov, new.cov.T)
    assert store.read_portfolio("main") == main_before
    assert store.read_reference_prices()["EEE"] == 80.0
    assert store.read_stressed()[1] == new.tickers


@pytest.mark.parametrize(
    ("symbol", "price", "vol", "message"),
    [("AAA", 10.0, 0.2, "already"), ("EEE", -1.0, 0.2, "price"), ("EEE", 10.0, float("nan"), "vol"),
     ("bad symbol!", 10.0, 0.2, "invalid")],
)  # fmt: skip
def test_add_ticker_refuses_bad_input_and_changes_nothing(store, settings, symbol, price, vol, message) -> None:
    warmup.seed(store, settings, now=1_000.0)
    before = store_contents(store.client)

    with pytest.raises(warmup.WarmupError, match=message):
        warmup.add_ticker(store, settings, symbol, price, vol)

    assert store_contents(store.client) == before


def test_add_ticker_keeps_the_matrix_psd_when_the_target_correlation_cannot_hold(
    store: Store, settings: Settings
) -> None:
    warmup.seed(store, settings, now=1_000.0)
    snap = store.read_market()
    vols = np.sqrt(np.diag(snap.cov))
    corr = np.eye(4)
    corr[0, 1] = corr[1, 0] = -0.95  # AAA and BBB became strongly anti-correlated
    cov = corr * np.outer(vols, vols)
    store.client.hset(MARKET_KEY, "cov", encode_array(cov))
    vol = 0.35 / math.sqrt(390 * 252)
    # premise: the constant-correlation row (0.9 with every ticker) would make the matrix indefinite
    naive = np.zeros((5, 5))
    naive[:4, :4] = cov
    naive[4, 4] = vol**2
    naive[4, :4] = naive[:4, 4] = 0.9 * vols * vol
    assert np.linalg.eigvalsh(naive).min() < 0

    warmup.add_ticker(store, make_high_rho(settings), "EEE", 80.0, 0.35, now=1_500.0)

    grown = store.read_market().cov
    assert np.linalg.eigvalsh(grown).min() >= -1e-18
    assert grown[:4, :4].tobytes() == cov.tobytes()
    assert grown[4, 4] == pytest.approx(vol**2, rel=1e-12)


def make_high_rho(settings: Settings) -> Settings:
    from dataclasses import replace

    return replace(settings, universe=replace(settings.universe, correlation=0.9))


def _write_history(path: Path, prices: np.ndarray, tickers: list[str]) -> None:
    lines = ["date," + ",".join(tickers)]
    for i, row in enumerate(prices):
        lines.append(f"2026-01-01T{9 + i // 60:02d}:{i % 60:02d}:00," + ",".join(repr(float(p)) for p in row))
    path.write_text("\n".join(lines) + "\n")


def test_seeding_from_a_history_file_uses_its_ewma_covariance_and_last_prices(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(7)
    returns = rng.normal(0, 0.001, size=(120, 4))
    prices = 100 * np.exp(np.cumsum(returns, axis=0))
    csv_path = tmp_path / "h.csv"
    # columns in another order than the universe: the warm-up must realign them
    _write_history(csv_path, prices[:, [2, 0, 3, 1]], ["CCC", "AAA", "DDD", "BBB"])

    warmup.seed(store, settings, history=warmup.read_history(csv_path, settings), now=1.0)

    snap = store.read_market()
    log_returns = np.diff(np.log(prices), axis=0)
    expected = math_logic.ewma_covariance_from_returns(log_returns, decay=0.94)
    np.testing.assert_allclose(snap.cov, expected, rtol=1e-9)
    # independent check of the recursion's tail: the last step is lambda*S + (1-lambda) r r^T
    before_last = math_logic.ewma_covariance_from_returns(log_returns[:-1], decay=0.94)
    r = log_returns[-1]
    np.testing.assert_allclose(snap.cov, 0.94 * before_last + 0.06 * np.outer(r, r), rtol=1e-9)
    np.testing.assert_allclose(snap.prices, prices[-1], rtol=1e-12)


def _run_main(args: list[str], config: Path, redis_url: str, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    code = warmup.main(["--config", str(config), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_command_line_seeds_then_says_nothing_changed(redis_server, redis_client, config_file, monkeypatch, capsys):
    code, out, _ = _run_main([], config_file, redis_server.url, monkeypatch, capsys)
    assert code == 0 and "seeded" in out

    code, out, _ = _run_main([], config_file, redis_server.url, monkeypatch, capsys)
    assert code == 0 and "nothing changed" in out


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        (None, "not found"),
        ("date,AAA,BBB,CCC,DDD\n1,1,2,3,4\n2,1,2,x,4\n3,1,2,3,4\n", "not a number"),
        ("date,AAA,BBB,CCC,DDD\n1,1,2,3,4\n2,1,-2,3,4\n3,1,2,3,4\n", "positive"),
        ("date,AAA,BBB,CCC,ZZZ\n1,1,2,3,4\n2,1,2,3,4\n3,1,2,3,4\n", "not in the universe"),
        ("date,AAA,BBB,CCC,DDD\n1,1,2,3\n2,1,2,3,4\n3,1,2,3,4\n", "fields"),
    ],
)
def test_bad_history_input_exits_non_zero_with_a_clear_message(
    redis_server, redis_client, config_file, tmp_path, monkeypatch, capsys, csv_text, message
):
    path = tmp_path / "hist.csv"
    if csv_text is not None:
        path.write_text(csv_text)

    code, _, err = _run_main(["--history", str(path)], config_file, redis_server.url, monkeypatch, capsys)

    assert code == 2
    assert message in err
    assert redis_client.dbsize() == 0


def test_reset_needs_confirmation_off_a_terminal_and_reseeds_with_yes(
    redis_server, redis_client, config_file, monkeypatch, capsys
):
    _run_main([], config_file, redis_server.url, monkeypatch, capsys)
    redis_client.hset("pf:{main}:state", "cash", "1.00")

    code, _, err = _run_main(["--reset"], config_file, redis_server.url, monkeypatch, capsys)
    assert code == 2 and "--yes" in err
    assert redis_client.hget("pf:{main}:state", "cash") == b"1.00"

    code, out, _ = _run_main(["--reset", "--yes"], config_file, redis_server.url, monkeypatch, capsys)
    assert code == 0 and "deleted" in out
    assert redis_client.hget("pf:{main}:state", "cash") == b"1000000.00"


def test_add_ticker_from_the_command_line_and_its_errors(redis_server, redis_client, config_file, monkeypatch, capsys):
    _run_main([], config_file, redis_server.url, monkeypatch, capsys)

    code, out, _ = _run_main(
        ["--add-ticker", "EEE", "--price", "10", "--vol", "0.3"], config_file, redis_server.url, monkeypatch, capsys
    )
    assert code == 0 and "EEE" in out

    code, _, err = _run_main(["--add-ticker", "FFF", "--price", "-1", "--vol", "0.3"], config_file,
                             redis_server.url, monkeypatch, capsys)  # fmt: skip
    assert code == 2 and "WARMUP_INPUT" in err


def test_an_unreachable_store_is_reported_not_raised(tmp_path, config_file, monkeypatch, capsys) -> None:
    code, _, err = _run_main([], config_file, f"unix://{tmp_path}/none.sock", monkeypatch, capsys)
    assert code == 2
    assert "STORE_UNAVAILABLE" in err


def test_the_seed_settings_of_the_test_config_round_trip_through_toml(tmp_path: Path) -> None:
    from engine.settings import load_settings

    path = tmp_path / "c.toml"
    path.write_text(to_toml(merge(TEST_CONFIG, {})))
    assert load_settings(path, env={}).portfolio_ids == ("main", "hedge")
