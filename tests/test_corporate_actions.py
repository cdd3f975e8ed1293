"""Stock splits (engine/corporate_actions.py, ``warmup.py --split``): the market and the books restated so that a
split is not a return, with equity, P&L, drawdowns and VaR unchanged and the next print accepted at ~0 return."""

from __future__ import annotations

from dataclasses import replace
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import warmup
from engine.corporate_actions import (
    MAX_SPLIT_TERM,
    SplitConflictError,
    SplitError,
    apply_split,
    parse_ratio,
    split_position,
)
from engine.feeds import Bar, IterableFeed
from engine.records import Position, ReasonCode
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings, settings_from_dict
from engine.store import GLOBAL_AUDIT_KEY, PortfolioKeys, Store
from engine.stream import StreamDaemon
from logic.monitor import Monitor
from logic.risk_manager import RiskManager
from tests.conftest import TEST_CONFIG, merge, store_contents

T0 = 1_700_000_000.0
ACTOR = warmup.ACTOR
BASE = {"AAA": 100.0, "BBB": 50.0, "CCC": 200.0, "DDD": 25.0}


def _settings(cfg: dict[str, Any]) -> Settings:
    return settings_from_dict(cfg)


def _figures(store: Store, settings: Settings, now: float) -> dict[str, dict[str, float]]:
    """Equity, P&L, drawdowns, exposures and VaR of every book, as the monitor computes them."""
    monitor = Monitor(store, settings, lambda: now, idle_refresh_seconds=0)
    out: dict[str, dict[str, float]] = {}
    for pid, snap in monitor.refresh().items():
        flat: dict[str, float] = {}
        for name in ("equity", "cash", "market_value", "gross_exposure", "net_exposure"):
            flat[name] = float(snap[name])
        for section in ("pnl", "drawdown", "var"):
            for key, value in snap[section].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    flat[f"{section}.{key}"] = float(value)
        out[pid] = flat
    return out


def _aaa(store: Store) -> tuple[float, float]:
    snap = store.read_market()
    i = snap.tickers.index("AAA")
    return float(snap.prices[i]), float(snap.cov[i, i])


# -- the ratio ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2", Fraction(2)), ("1/10", Fraction(1, 10)), ("0.1", Fraction(1, 10)), ("3:2", Fraction(3, 2)),
     ("1.5", Fraction(3, 2)), (str(MAX_SPLIT_TERM), Fraction(1000)), (f"1/{MAX_SPLIT_TERM}", Fraction(1, 1000))],
)  # fmt: skip
def test_a_ratio_is_read_exactly_up_to_its_largest_term(text: str, expected: Fraction) -> None:
    assert parse_ratio(text) == expected


@pytest.mark.parametrize(
    "text", ["0", "-2", "nan", "inf", "-inf", "abc", "", "1", "1/1", "1001", "1/1001", "0.1234", "2/0"]
)
def test_a_non_positive_non_number_one_for_one_or_absurd_ratio_is_refused_with_a_code(text: str) -> None:
    with pytest.raises(SplitError) as info:
        parse_ratio(text)
    assert info.value.code == "SPLIT_INVALID"


# -- one position ------------------------------------------------------------------------------------------------


def test_a_whole_split_keeps_the_cost_basis_and_pays_no_cash() -> None:
    out = split_position(Position(1000, Decimal("100.0")), Fraction(2), Decimal("50.0"))

    assert out.position == Position(2000, Decimal("50"), Decimal(0))
    assert out.cash_in_lieu == 0 and out.realized == 0 and out.fraction == 0


def test_a_fraction_is_paid_in_cash_at_the_adjusted_price_to_the_cent_and_its_gain_realized() -> None:
    # 1-for-3 of 1000 shares bought at 90, adjusted price 300.01: 333 shares and 1/3 share in cash
    out = split_position(Position(1000, Decimal("90"), Decimal("5")), Fraction(1, 3), Decimal("300.01"))

    cash = (Decimal("300.01") / 3).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)  # 100.003... -> 100.00
    assert out.cash_in_lieu == cash == Decimal("100.00")
    assert out.position is not None and out.position.qty == 333
    assert out.position.avg_price == Decimal("270")
    assert out.realized == cash - Decimal("270") / 3 == Decimal("10.00")  # the fraction's cost basis is 90
    assert out.position.realized_pnl == Decimal("15.00")
    assert out.fraction == Fraction(1, 3)


def test_a_short_fraction_is_bought_in_and_a_book_below_one_share_goes_flat() -> None:
    short = split_position(Position(-25, Decimal("20")), Fraction(1, 10), Decimal("210"))
    tiny = split_position(Position(7, Decimal("20")), Fraction(1, 10), Decimal("210"))

    assert short.position is not None and short.position.qty == -2  # towards zero: -2.5 -> -2
    assert short.cash_in_lieu == Decimal("-105.00")  # the short pays for its half share
    assert short.realized == Decimal("-105.00") + Decimal("100")  # -0.5 x (210 - 200)
    assert tiny.position == Position(0, Decimal(0), Decimal("147.00") - Decimal("140"))
    assert tiny.cash_in_lieu == Decimal("147.00")


# -- the store ---------------------------------------------------------------------------------------------------


def _post_split_day(store: Store, settings: Settings, aaa: float, *, split: bool) -> tuple[Any, Any, float]:
    """Seed, one bar at the pre-split prices, the split (or not), then four bars of AAA from ``aaa`` up by
    0.02 % a bar, with the shipped jump filter: the daemon's stats, the AAA ``BUY 10`` decision and the VaR."""
    warmup.seed(store, settings, now=T0)
    StreamDaemon(store, settings, IterableFeed([Bar(T0 + 60, dict(BASE))]), interval=0, clock=lambda: T0 + 60).run()
    if split:
        apply_split(store, "AAA", Fraction(2), actor=ACTOR, reason="2-for-1 ex-date", now=T0 + 90)
    bars = [Bar(T0 + 60 * k, {**BASE, "AAA": aaa * (1 + 0.0002 * (k - 2))}) for k in range(2, 6)]
    stats = StreamDaemon(store, settings, IterableFeed(bars), interval=0, clock=lambda: T0 + 400).run()
    rm = RiskManager(store.client, "main", settings, clock=lambda: T0 + 400)
    buy = rm.check("AAA", 10, "BUY")
    return stats, buy, float(rm.check("BBB", 1, "BUY").var_before)


def test_the_reproduction_a_split_applied_before_the_next_print_is_not_a_return(store: Store) -> None:
    """review_input_split.py: a 2-for-1 split of AAA, then prints at ~50 with the shipped jump filter, against
    the same day without a split (prints at ~100): the same returns, so the same matrix and VaR."""
    settings = _settings({**merge(TEST_CONFIG, {}), "stream": {}})
    _, control_buy, control_var = _post_split_day(store, settings, 100.0, split=False)
    control_cov = store.read_market().cov
    store.client.flushall()

    stats, buy, var = _post_split_day(store, settings, 50.0, split=True)

    assert stats.prices_rejected == 0 and stats.bars_written == 4  # no jump refused
    assert _aaa(store)[0] == pytest.approx(50.0 * 1.0006, rel=1e-12)
    np.testing.assert_allclose(store.read_market().cov, control_cov, rtol=1e-9)  # was AAA vol x250
    assert buy.status == control_buy.status == "APPROVED", buy.reasons  # was PRICE_COLLAR and VAR_LIMIT
    assert var == pytest.approx(control_var, rel=1e-9)  # was 259,267 against 4,222
    assert store.read_portfolio("main").positions["AAA"] == Position(2000, Decimal("50.0"), Decimal(0))


def test_equity_pnl_drawdowns_var_and_the_matrix_are_unchanged_by_the_split_itself(store: Store) -> None:
    settings = _settings({**merge(TEST_CONFIG, {}), "stream": {}})
    warmup.seed(store, settings, now=T0)
    StreamDaemon(store, settings, IterableFeed([Bar(T0 + 60, dict(BASE))]), interval=0, clock=lambda: T0 + 60).run()
    price0, var0 = _aaa(store)
    window0 = store.read_standardized()
    stressed0 = store.read_stressed()[2]
    version0 = store.read_market_version()
    before = _figures(store, settings, T0 + 90)

    result = apply_split(store, "AAA", Fraction(2), actor=ACTOR, now=T0 + 90)

    assert result.market_applied and set(result.books) == {"main", "hedge"}
    assert _aaa(store) == (price0 / 2, var0) and store.read_market_version() == version0 + 1
    assert store.read_reference_prices()["AAA"] == 50.0
    window1 = store.read_standardized()
    assert np.array_equal(window1.values, window0.values, equal_nan=True) and window1.rows == window0.rows
    assert np.array_equal(store.read_stressed()[2], stressed0)
    after = _figures(store, settings, T0 + 90)
    for pid in before:
        assert after[pid].keys() == before[pid].keys()
        for name, value in before[pid].items():
            assert after[pid][name] == pytest.approx(value, abs=1e-9), (pid, name)


def test_equity_pnl_drawdowns_and_var_are_unchanged_by_a_reverse_split_with_a_short(store: Store) -> None:
    settings = _settings(merge(TEST_CONFIG, {}))
    warmup.seed(store, settings, now=T0)
    before = _figures(store, settings, T0 + 30)

    result = apply_split(store, "DDD", Fraction(1, 8), actor=ACTOR, now=T0 + 30)  # -1000 shares -> -125

    assert store.read_portfolio("hedge").positions["DDD"] == Position(-125, Decimal("200.0"), Decimal(0))
    assert result.books["hedge"]["cash_in_lieu"] == "0"
    after = _figures(store, settings, T0 + 30)
    for pid in before:
        for name, value in before[pid].items():
            assert after[pid][name] == pytest.approx(value, abs=1e-9), (pid, name)


def test_a_fraction_moves_equity_by_the_cent_rounding_of_its_cash_in_lieu_only(store: Store) -> None:
    settings = _settings(merge(TEST_CONFIG, {}))
    warmup.seed(store, settings, now=T0)
    before = _figures(store, settings, T0 + 30)

    result = apply_split(store, "AAA", Fraction(1, 3), actor=ACTOR, now=T0 + 30)  # 1000 -> 333 + 1/3 share at 300

    main = store.read_portfolio("main")
    assert main.positions["AAA"].qty == 333 and main.cash == Decimal("1000000.00") + Decimal("100.00")
    assert result.books["main"]["cash_in_lieu"] == "100.00"
    after = _figures(store, settings, T0 + 30)
    assert after["main"]["equity"] == pytest.approx(before["main"]["equity"], abs=1e-9)  # 1/3 x 300 = 100.00
    assert after["main"]["pnl.total"] == pytest.approx(before["main"]["pnl.total"], abs=1e-9)


def test_a_rerun_of_the_same_split_id_changes_nothing_and_another_split_under_it_is_refused(store: Store) -> None:
    settings = _settings(merge(TEST_CONFIG, {}))
    warmup.seed(store, settings, now=T0)
    apply_split(store, "AAA", Fraction(2), actor=ACTOR, split_id="AAA-2024", now=T0 + 30)
    contents = store_contents(store.client)

    again = apply_split(store, "AAA", Fraction(2), actor=ACTOR, split_id="AAA-2024", now=T0 + 60)

    assert not again.changed and again.lines() == ["split AAA-2024 was already applied; nothing changed"]
    assert store_contents(store.client) == contents
    assert store.read_portfolio("main").positions["AAA"].qty == 2000
    with pytest.raises(SplitConflictError) as info:
        apply_split(store, "AAA", Fraction(3), actor=ACTOR, split_id="AAA-2024", now=T0 + 60)
    assert info.value.code == "SPLIT_CONFLICT"


def test_a_run_interrupted_after_the_market_completes_only_the_books_not_yet_split(store: Store) -> None:
    """On a Redis Cluster the market and each book commit one after the other: a rerun finishes the job."""
    settings = _settings(merge(TEST_CONFIG, {}))
    warmup.seed(store, settings, now=T0)
    hedge_before = store.read_portfolio("hedge")
    apply_split(store, "CCC", Fraction(2), actor=ACTOR, split_id="CCC-2", now=T0 + 30)
    # undo the hedge book's part as if its slot's MULTI had not run
    keys = PortfolioKeys("hedge")
    store.write_position("hedge", "CCC", hedge_before.positions["CCC"])
    store.client.delete(keys.splits)
    price_after = _aaa_like(store, "CCC")

    again = apply_split(store, "CCC", Fraction(2), actor=ACTOR, split_id="CCC-2", now=T0 + 60)

    assert not again.market_applied and set(again.books) == {"hedge"}
    assert _aaa_like(store, "CCC") == price_after == 100.0  # the market is not split twice
    assert store.read_portfolio("hedge").positions["CCC"] == Position(600, Decimal("100"), Decimal(0))


def _aaa_like(store: Store, ticker: str) -> float:
    snap = store.read_market()
    return float(snap.prices[snap.tickers.index(ticker)])


def test_each_book_and_the_desk_get_one_audit_record_naming_the_actor_ratio_and_before_after(store: Store) -> None:
    settings = _settings(merge(TEST_CONFIG, {}))
    warmup.seed(store, settings, now=T0)

    apply_split(store, "AAA", Fraction(2), actor=ACTOR, reason="ex-date", split_id="s1", now=T0 + 30)

    main = [r for r in store.read_stream_json(PortfolioKeys("main").audit) if r.get("action") == "split"]
    hedge = [r for r in store.read_stream_json(PortfolioKeys("hedge").audit) if r.get("action") == "split"]
    desk = [r for r in store.read_stream_json(GLOBAL_AUDIT_KEY) if r.get("action") == "split"]
    assert len(main) == len(hedge) == len(desk) == 1
    rec = main[0]
    assert rec["actor"] == ACTOR and ACTOR.startswith("warmup:local:")
    assert (rec["ratio"], rec["ratio_text"], rec["reason"]) == ("2", "2-for-1", "ex-date")
    assert (rec["qty_before"], rec["qty_after"]) == (1000, 2000)
    assert (rec["avg_price_before"], rec["avg_price_after"]) == ("100.0", "50.0")
    assert (rec["price_before"], rec["price_after"]) == (100.0, 50.0)
    assert (hedge[0]["qty_before"], hedge[0]["qty_after"]) == (0, 0)
    assert desk[0]["portfolios"] == ["hedge", "main"] and desk[0]["market_restated"] is True


def test_an_unknown_ticker_is_refused_and_nothing_is_written(store: Store) -> None:
    settings = _settings(merge(TEST_CONFIG, {}))
    warmup.seed(store, settings, now=T0)
    contents = store_contents(store.client)

    with pytest.raises(SplitError) as info:
        apply_split(store, "ZZZ", Fraction(2), actor=ACTOR, now=T0 + 30)

    assert info.value.code == "SPLIT_INVALID"
    assert store_contents(store.client) == contents


# -- the command line --------------------------------------------------------------------------------------------


def _main(args: list[str], config: Path, url: str, monkeypatch: Any, capsys: Any) -> tuple[int, str, str]:
    monkeypatch.setenv("REDIS_URL", url)
    code = warmup.main(["--config", str(config), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("args", [["AAA", "0"], ["AAA", "nan"], ["AAA", "1001"], ["ZZZ", "2"], ["aa a", "2"]])
def test_the_command_refuses_a_bad_split_with_its_code(
    args: list[str], store: Store, config_file: Path, redis_server: EmbeddedRedis, monkeypatch: Any, capsys: Any
) -> None:
    warmup.seed(store, _settings(merge(TEST_CONFIG, {})), now=T0)

    status, _, err = _main(["--split", *args], config_file, redis_server.url, monkeypatch, capsys)

    assert status == 2 and "[SPLIT_INVALID]" in err
    assert store.read_portfolio("main").positions["AAA"].qty == 1000


def test_the_command_splits_once_and_says_so_on_a_rerun(
    store: Store, config_file: Path, redis_server: EmbeddedRedis, monkeypatch: Any, capsys: Any
) -> None:
    warmup.seed(store, _settings(merge(TEST_CONFIG, {})), now=T0)
    argv = ["--split", "AAA", "1/10", "--reason", "reverse split", "--split-id", "AAA-r10"]

    first = _main(argv, config_file, redis_server.url, monkeypatch, capsys)
    second = _main(argv, config_file, redis_server.url, monkeypatch, capsys)

    assert first[0] == 0 and "AAA 1-for-10, last price 100 -> 1000" in first[1]
    assert "main: AAA 1000 @ 100.0 -> 100 @ 1000" in first[1]
    assert second[0] == 0 and "already applied; nothing changed" in second[1]
    assert store.read_portfolio("main").positions["AAA"].qty == 100
    assert np.isclose(_aaa_like(store, "AAA"), 1000.0)


def test_a_price_sanity_refusal_points_a_split_at_warmup_split_not_at_the_sanity_factor(store: Store) -> None:
    settings = _settings(merge(TEST_CONFIG, {}))
    warmup.seed(store, settings, now=T0)
    snap = store.read_market()
    prices = snap.prices.copy()
    prices[snap.tickers.index("AAA")] = 100.0 / 20  # a 20-for-1 split left unrestated: 20x off the reference
    store.write_market(replace(snap, version=snap.version + 1, prices=prices))

    decision = RiskManager(store.client, "main", settings, clock=lambda: T0 + 1).check("AAA", 1, "BUY")

    sanity = [r.message for r in decision.reasons if r.code == ReasonCode.PRICE_SANITY]
    assert len(sanity) == 1 and "python warmup.py --split TICKER RATIO" in sanity[0]
