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
from engine import corporate_actions
from engine.corporate_actions import (
    AVG_PRICE_QUANTUM,
    MAX_SPLIT_TERM,
    SplitConflictError,
    SplitError,
    SplitRepeatedError,
    apply_split,
    parse_ratio,
    restate_backtest,
    restated_avg_price,
    restated_cap,
    split_position,
)
from engine.feeds import Bar, IterableFeed
from engine.records import Position, ReasonCode
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings, settings_from_dict
from engine.settings_types import MAX_QUANTITY
from engine.store import GLOBAL_AUDIT_KEY, PortfolioKeys, Store
from engine.stream import StreamDaemon
from logic import decisions
from logic.backtest import BacktestConfig, Backtester, Track
from logic.monitor import Monitor
from logic.risk_manager import RiskManager
from tests.conftest import TEST_CONFIG, merge, store_contents, to_toml

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
        apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, reason="2-for-1 ex-date", now=T0 + 90)
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

    result = apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, now=T0 + 90)

    assert result.market_applied and set(result.books) == {"main"} and result.marked == ["hedge", "main"]
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

    # -1000 shares -> -125
    result = apply_split(store, "DDD", Fraction(1, 8), settings=settings, actor=ACTOR, now=T0 + 30)

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

    # 1000 -> 333 + 1/3 share at 300
    result = apply_split(store, "AAA", Fraction(1, 3), settings=settings, actor=ACTOR, now=T0 + 30)

    main = store.read_portfolio("main")
    assert main.positions["AAA"].qty == 333 and main.cash == Decimal("1000000.00") + Decimal("100.00")
    assert result.books["main"]["cash_in_lieu"] == "100.00"
    after = _figures(store, settings, T0 + 30)
    assert after["main"]["equity"] == pytest.approx(before["main"]["equity"], abs=1e-9)  # 1/3 x 300 = 100.00
    assert after["main"]["pnl.total"] == pytest.approx(before["main"]["pnl.total"], abs=1e-9)


def test_a_rerun_of_the_same_split_id_changes_nothing_and_another_split_under_it_is_refused(store: Store) -> None:
    settings = _settings(merge(TEST_CONFIG, {}))
    warmup.seed(store, settings, now=T0)
    apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, split_id="AAA-2024", now=T0 + 30)
    contents = store_contents(store.client)

    again = apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, split_id="AAA-2024", now=T0 + 60)

    assert not again.changed and again.lines() == ["split AAA-2024 was already applied; nothing changed"]
    assert store_contents(store.client) == contents
    assert store.read_portfolio("main").positions["AAA"].qty == 2000
    with pytest.raises(SplitConflictError) as info:
        apply_split(store, "AAA", Fraction(3), settings=settings, actor=ACTOR, split_id="AAA-2024", now=T0 + 60)
    assert info.value.code == "SPLIT_CONFLICT"


def test_a_run_interrupted_after_the_market_completes_only_the_books_not_yet_split(store: Store) -> None:
    """On a Redis Cluster the market and each book commit one after the other: a rerun finishes the job."""
    settings = _settings(merge(TEST_CONFIG, {}))
    warmup.seed(store, settings, now=T0)
    hedge_before = store.read_portfolio("hedge")
    apply_split(store, "CCC", Fraction(2), settings=settings, actor=ACTOR, split_id="CCC-2", now=T0 + 30)
    # undo the hedge book's part as if its slot's MULTI had not run
    keys = PortfolioKeys("hedge")
    store.write_position("hedge", "CCC", hedge_before.positions["CCC"])
    store.client.delete(keys.splits)
    price_after = _aaa_like(store, "CCC")

    again = apply_split(store, "CCC", Fraction(2), settings=settings, actor=ACTOR, split_id="CCC-2", now=T0 + 60)

    assert not again.market_applied and set(again.books) == {"hedge"}
    assert _aaa_like(store, "CCC") == price_after == 100.0  # the market is not split twice
    assert store.read_portfolio("hedge").positions["CCC"] == Position(600, Decimal("100"), Decimal(0))


def _aaa_like(store: Store, ticker: str) -> float:
    snap = store.read_market()
    return float(snap.prices[snap.tickers.index(ticker)])


def test_each_holding_book_and_the_desk_get_one_audit_record_naming_the_actor_ratio_and_before_after(
    store: Store,
) -> None:
    settings = _settings(merge(TEST_CONFIG, {}))
    warmup.seed(store, settings, now=T0)

    apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, reason="ex-date", split_id="s1", now=T0 + 30)

    main = [r for r in store.read_stream_json(PortfolioKeys("main").audit) if r.get("action") == "split"]
    hedge = [r for r in store.read_stream_json(PortfolioKeys("hedge").audit) if r.get("action") == "split"]
    desk = [r for r in store.read_stream_json(GLOBAL_AUDIT_KEY) if r.get("action") == "split"]
    assert len(main) == len(desk) == 1
    assert hedge == []  # hedge holds no AAA: no audit record (it had one saying 0 -> 0)
    rec = main[0]
    assert rec["actor"] == ACTOR and ACTOR.startswith("warmup:local:")
    assert (rec["ratio"], rec["ratio_text"], rec["reason"]) == ("2", "2-for-1", "ex-date")
    assert (rec["qty_before"], rec["qty_after"]) == (1000, 2000)
    assert (rec["avg_price_before"], rec["avg_price_after"]) == ("100.0", "50.0")
    assert (rec["price_before"], rec["price_after"]) == (100.0, 50.0)
    assert desk[0]["portfolios"] == ["main"] and desk[0]["market_restated"] is True


def test_an_unknown_ticker_is_refused_and_nothing_is_written(store: Store) -> None:
    settings = _settings(merge(TEST_CONFIG, {}))
    warmup.seed(store, settings, now=T0)
    contents = store_contents(store.client)

    with pytest.raises(SplitError) as info:
        apply_split(store, "ZZZ", Fraction(2), settings=settings, actor=ACTOR, now=T0 + 30)

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


@pytest.mark.parametrize("action", [["--split", "AAA", "2"], ["--dividend", "AAA", "0.25"]])
@pytest.mark.parametrize("other", [["--price", "50"], ["--vol", "0.3"], ["--yes"], ["--sync"],
                                   ["--add-ticker", "NEW"]])  # fmt: skip
def test_the_command_refuses_a_corporate_action_with_an_option_it_would_ignore(
    action: list[str], other: list[str], store: Store, config_file: Path, redis_server: EmbeddedRedis,
    monkeypatch: Any, capsys: Any,
) -> None:  # fmt: skip
    warmup.seed(store, _settings(merge(TEST_CONFIG, {})), now=T0)
    contents = store_contents(store.client)

    status, out, err = _main([*action, *other], config_file, redis_server.url, monkeypatch, capsys)

    assert status == 2 and f"{action[0]} runs alone" in err and out == ""
    assert store_contents(store.client) == contents


@pytest.mark.parametrize("option", [["--price", "50"], ["--vol", "0.3"]])
def test_the_command_refuses_a_price_or_vol_without_a_ticker_to_add(
    option: list[str], store: Store, config_file: Path, redis_server: EmbeddedRedis, monkeypatch: Any, capsys: Any
) -> None:
    warmup.seed(store, _settings(merge(TEST_CONFIG, {})), now=T0)
    contents = store_contents(store.client)

    status, out, err = _main(option, config_file, redis_server.url, monkeypatch, capsys)

    assert status == 2 and "--price and --vol go with --add-ticker" in err and out == ""
    assert store_contents(store.client) == contents


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


# -- a second split of the same ticker (SPLIT_REPEATED) ----------------------------------------------------------

MIDNIGHT = T0 - (T0 % 86400) + 86400
"""The first UTC midnight after T0: the default split id changes across it."""


def _print_aaa(store: Store, price_ts: float, *, aaa: bool = True) -> None:
    """A bar as the stream daemon writes it: a new snapshot version, the printed tickers' price times moved
    (``aaa`` False: only the other tickers printed)."""
    snap = store.read_market()
    stamps = snap.price_ts.copy()
    for i, ticker in enumerate(snap.tickers):
        if ticker != "AAA" or aaa:
            stamps[i] = price_ts
    store.write_market(replace(snap, version=snap.version + 1, ts=price_ts, price_ts=stamps))


def test_the_same_split_run_again_after_midnight_utc_is_refused_naming_the_first(store: Store) -> None:
    """diffrev_inputs_splittwice.py: ``--split AAA 2`` at 23:50 and again at 00:10 UTC, no print in between, was
    two splits (1000 -> 2000 -> 4000 shares, price 100 -> 25)."""
    settings = _settings(merge(TEST_CONFIG, {}))
    warmup.seed(store, settings, now=MIDNIGHT - 3600)
    first = apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, now=MIDNIGHT - 600)
    contents = store_contents(store.client)

    for split_id in (None, "AAA-another-id"):  # the next day's default id, or an id of its own: no print since
        with pytest.raises(SplitRepeatedError) as info:
            apply_split(
                store, "AAA", Fraction(2), settings=settings, actor=ACTOR, split_id=split_id, now=MIDNIGHT + 600
            )
        assert info.value.code == "SPLIT_REPEATED"
        assert (
            first.split_id in str(info.value) and "no print since" in str(info.value) and "--force" in str(info.value)
        )
    assert store_contents(store.client) == contents  # nothing written
    assert store.read_portfolio("main").positions["AAA"].qty == 2000 and _aaa(store)[0] == 50.0


def test_a_print_of_other_tickers_is_no_print_of_the_split_one_and_a_print_after_needs_an_id_of_its_own(
    store: Store,
) -> None:
    settings = _settings(merge(TEST_CONFIG, {}))
    warmup.seed(store, settings, now=T0)
    apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, split_id="AAA-1", now=T0 + 30)
    _print_aaa(store, T0 + 60, aaa=False)  # the market version moved, AAA's price time did not: boundary

    with pytest.raises(SplitRepeatedError, match="no print since"):
        apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, split_id="AAA-2", now=T0 + 90)

    _print_aaa(store, T0 + 120)  # AAA printed: a later split is possible, but not under the default id
    with pytest.raises(SplitRepeatedError, match="has printed since.*own --split-id"):
        apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, now=T0 + 150)
    assert store.read_portfolio("main").positions["AAA"].qty == 2000

    again = apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, split_id="AAA-2", now=T0 + 150)

    assert again.market_applied and store.read_portfolio("main").positions["AAA"].qty == 4000
    # another ticker is not held back by AAA's splits
    assert apply_split(store, "BBB", Fraction(2), settings=settings, actor=ACTOR, now=T0 + 150).market_applied


def test_force_splits_a_ticker_again_before_it_prints_and_says_so_in_the_audit(store: Store) -> None:
    settings = _settings(merge(TEST_CONFIG, {}))
    warmup.seed(store, settings, now=T0)
    apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, split_id="AAA-1", now=T0 + 30)

    result = apply_split(
        store, "AAA", Fraction(3), settings=settings, actor=ACTOR, split_id="AAA-2", force=True, now=T0 + 60
    )

    assert result.market_applied and store.read_portfolio("main").positions["AAA"].qty == 6000
    assert _aaa(store)[0] == pytest.approx(100.0 / 6, rel=1e-15)
    desk = [r for r in store.read_stream_json(GLOBAL_AUDIT_KEY) if r.get("action") == "split"]
    assert [r["forced"] for r in desk] == [True, False]  # newest first


# -- share-denominated limits ------------------------------------------------------------------------------------


def _caps(store: Store, settings: Settings, ticker: str) -> dict[str, int | None]:
    return {
        pid: store.limits_or(pid, settings.limits_for(pid)).position_limits.get(ticker) for pid in ("main", "hedge")
    }


def test_a_split_restates_the_live_position_limits_so_the_gate_caps_the_same_holding(store: Store) -> None:
    """diffrev_inputs_store.py: with position_limits AAA 1500 and 1000 held, a 2-for-1 left the cap at 1500 while
    the book held 2000: every AAA buy refused (the cap twice as tight)."""
    settings = _settings(merge(TEST_CONFIG, {"limits": {"position_limits": {"AAA": 1500}}}))
    warmup.seed(store, settings, now=T0)

    result = apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, split_id="s2", now=T0 + 1)

    assert _caps(store, settings, "AAA") == {"main": 3000, "hedge": 3000}
    assert result.limits == {"main": (1500, 3000, 1), "hedge": (1500, 3000, 1)}
    rm = RiskManager(store.client, "main", settings, clock=lambda: T0 + 1)
    assert rm.check("AAA", 1000, "BUY").status == "APPROVED"  # 2000 + 1000 = 3000: at the cap
    assert {r.code for r in rm.check("AAA", 1001, "BUY").reasons} == {ReasonCode.POSITION_LIMIT}
    # one set_limits audit record per portfolio naming the split (hedge holds no AAA: no split record, a limits one)
    for pid in ("main", "hedge"):
        changes = store.limits_changes(pid)
        assert len(changes) == 1 and "split s2" in changes[0]["reason"] and changes[0]["actor"] == ACTOR
        assert changes[0]["after"]["position_limits"] == {"AAA": 3000}
    assert [r for r in store.read_stream_json(PortfolioKeys("hedge").audit) if r.get("action") == "split"] == []
    assert "  hedge: live position limit AAA 1500 -> 3000 shares (limits version 1)" in result.lines()
    # a rerun of the id restates nothing twice
    apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, split_id="s2", now=T0 + 2)
    assert _caps(store, settings, "AAA") == {"main": 3000, "hedge": 3000}


def test_a_reverse_split_floors_a_stored_position_limit_and_fails_closed_at_its_boundary(store: Store) -> None:
    """1-for-10 of a 1505-share cap: 150.5 floored to 150 (never 151: the cap is not loosened); left unrestated it
    was ten times looser (fails open)."""
    settings = _settings(merge(TEST_CONFIG, {}))
    warmup.seed(store, settings, now=T0)
    stored = store.change_limits(
        "main",
        {"position_limits": {"AAA": 1505, "BBB": 4000}},
        actor="rm",
        reason="caps",
        now=T0,
        fallback=settings.limits_for("main"),
    )

    apply_split(store, "AAA", Fraction(1, 10), settings=settings, actor=ACTOR, split_id="r10", now=T0 + 1)

    live = store.read_limits("main")
    assert live is not None and live.version == stored.version + 1
    assert dict(live.limits.position_limits) == {"AAA": 150, "BBB": 4000}  # BBB untouched
    assert store.limits_changes("main")[0]["before"] == {"position_limits": {"AAA": 1505, "BBB": 4000}}
    assert _caps(store, settings, "AAA")["hedge"] is None  # hedge had no cap on AAA: no record created
    assert store.read_limits("hedge") is None
    rm = RiskManager(store.client, "main", settings, clock=lambda: T0 + 1)
    assert store.read_portfolio("main").positions["AAA"].qty == 100
    assert rm.check("AAA", 50, "BUY").status == "APPROVED"  # 150: at the cap
    assert {r.code for r in rm.check("AAA", 51, "BUY").reasons} == {ReasonCode.POSITION_LIMIT}


@pytest.mark.parametrize(
    ("shares", "ratio", "expected"),
    [(20, Fraction(1, 10), 2), (29, Fraction(1, 10), 2), (19, Fraction(1, 10), 1), (5, Fraction(1, 10), 1),
     (1501, Fraction(3, 2), 2251), (MAX_QUANTITY // 2, Fraction(2), MAX_QUANTITY - MAX_QUANTITY % 2),
     (MAX_QUANTITY // 2 + 1, Fraction(2), MAX_QUANTITY)],
)  # fmt: skip
def test_a_restated_share_limit_is_floored_at_least_one_share_and_at_most_the_bound(
    shares: int, ratio: Fraction, expected: int
) -> None:
    assert restated_cap(shares, ratio) == expected


def test_the_command_lists_what_must_be_restated_by_hand_and_refuses_a_repeat_unless_forced(
    store: Store, tmp_path: Path, redis_server: EmbeddedRedis, monkeypatch: Any, capsys: Any
) -> None:
    cfg = merge(TEST_CONFIG, {"limits": {"position_limits": {"AAA": 1500}, "max_position_qty": 50_000}})
    config = tmp_path / "riskdesk.toml"
    config.write_text(to_toml(cfg))
    warmup.seed(store, _settings(cfg), now=T0)

    code, out, _ = _main(["--split", "AAA", "2", "--split-id", "a"], config, redis_server.url, monkeypatch, capsys)

    assert code == 0
    assert "main: live position limit AAA 1500 -> 3000 shares" in out
    assert (
        "[limits] position_limits.AAA = 1500 -> 3000" in out
        and "[[portfolios]] main holdings.AAA = 1000 -> 2000" in out
    )
    assert "before the next `warmup.py --sync`" in out
    assert "main: max_order_qty 100000 (shares of any ticker) not restated" in out
    assert "max_position_qty" not in out  # AAA has a position limit of its own: max_position_qty is not its cap
    repeat = _main(["--split", "AAA", "2", "--split-id", "b"], config, redis_server.url, monkeypatch, capsys)
    assert repeat[0] == 2 and "[SPLIT_REPEATED]" in repeat[2] and "'a'" in repeat[2]
    forced = _main(["--split", "AAA", "2", "--split-id", "b", "--force"], config, redis_server.url, monkeypatch, capsys)
    assert forced[0] == 0 and store.read_portfolio("main").positions["AAA"].qty == 4000
    stray = _main(["--force"], config, redis_server.url, monkeypatch, capsys)
    assert stray[0] == 2 and "--force go with --split" in stray[2]


# -- the arithmetic ----------------------------------------------------------------------------------------------


def test_a_three_for_one_keeps_the_average_price_to_the_fills_eight_decimals() -> None:
    """diffrev_inputs_store.py: 33.33333333333333333333333333 (28 digits), cost basis 99999.99999999999999999999999."""
    out = split_position(Position(1000, Decimal("100")), Fraction(3), Decimal("33.33333333333333"))

    assert out.position is not None and str(out.position.avg_price) == "33.33333333"
    assert AVG_PRICE_QUANTUM == decisions.AVG_PRICE_QUANTUM  # the precision of a fill's average price
    drift = abs(Fraction(1000 * 100) - out.position.qty * Fraction(out.position.avg_price))
    assert drift == Fraction("0.00001") <= out.position.qty * Fraction(AVG_PRICE_QUANTUM) / 2
    # an exact quotient keeps its written form
    assert str(split_position(Position(1000, Decimal("100.0")), Fraction(2), Decimal(50)).position.avg_price) == "50.0"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("avg", "expected"),
    [("1.00000001", "0.50000000"), ("1.00000003", "0.50000002"), ("1.00000002", "0.50000001"), ("3", "1.5")],
)
def test_a_restated_average_price_rounds_half_even_at_the_eighth_decimal(avg: str, expected: str) -> None:
    assert str(restated_avg_price(Decimal(avg), Fraction(2))) == expected


def test_the_realized_pnl_of_a_cash_in_lieu_is_booked_to_the_cent() -> None:
    # 10 shares at 10.006, 1-for-3: 3 shares and 1/3 share paid 10.00 at 30.00; its exact cost is 10.006
    out = split_position(Position(10, Decimal("10.006")), Fraction(1, 3), Decimal("30.00"))

    assert out.cash_in_lieu == Decimal("10.00") and out.fraction == Fraction(1, 3)
    assert str(out.realized) == "-0.01"  # -0.006 to the cent (half even); was -0.006
    assert out.position is not None and out.position.avg_price == Decimal("30.018")


def test_a_book_without_the_ticker_gets_no_output_line_and_no_audit_record(store: Store) -> None:
    settings = _settings(merge(TEST_CONFIG, {}))
    warmup.seed(store, settings, now=T0)

    result = apply_split(store, "CCC", Fraction(2), settings=settings, actor=ACTOR, split_id="c2", now=T0 + 30)

    assert set(result.books) == {"hedge"} and result.marked == ["hedge", "main"]
    assert not [line for line in result.lines() if line.startswith("  main:")]
    assert [r for r in store.read_stream_json(PortfolioKeys("main").audit) if r.get("action") == "split"] == []
    assert store.read_split("c2", "main") is not None  # still marked: a rerun does nothing there


# -- the continuous VaR backtest ---------------------------------------------------------------------------------


def _fed_backtester(rng_seed: int = 7) -> tuple[Backtester, np.ndarray]:
    """A real backtester of main's book (AAA 1000, BBB 2000) past its burn-in, its last bar at the seeded prices
    (AAA 100, BBB 50) with both tracks' forecasts open."""
    bt = Backtester(["AAA", "BBB"], BacktestConfig(window=60, seed_rows=10, horizon_bars=3))
    rng = np.random.default_rng(rng_seed)
    q = np.array([1000.0, 2000.0])
    path = np.array([100.0, 50.0]) * np.exp(np.cumsum(rng.normal(0, 0.001, (99, 2)), axis=0))[::-1]
    for k, p in enumerate([*path, np.array([100.0, 50.0])]):
        bt.step(p, q, f"b{k}")
    assert bt.ready and set(bt.pending) == {Track.BAR, Track.LIMIT}
    return bt, q


def _store_backtest(store: Store, pid: str, bt: Backtester, version: int, token: str = "runner-1") -> None:
    """As the backtest runner writes it (logic/backtest_monitor.py ``BacktestBooks.write``)."""
    store.write_backtest(pid, bt.store_state(), {}, version, token, cov=bt.cov, ring=bt.ring())


def test_a_split_restates_the_backtest_so_the_next_bar_is_no_hit_and_no_return(store: Store) -> None:
    """diffrev_btm_split.py: the split bar at P/2 against the stored P with the pre-split quantity was a P&L of
    about -48,700 against a VaR of about 525 (a hit of every method) and a -69 % return in the covariance. Now the
    restated backtest and one never split, fed the equivalent bars, give the same P&L, covariance and VaR."""
    settings = _settings(merge(TEST_CONFIG, {}))
    warmup.seed(store, settings, now=T0)
    bt, q = _fed_backtester()
    control = Backtester.from_dict(bt.to_dict())  # the same backtest, never split
    version = store.read_market_version()
    _store_backtest(store, "main", bt, version)

    result = apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, split_id="s", now=T0 + 30)

    state, stored_version, token = store.read_backtest_state("main")  # type: ignore[misc]
    assert stored_version == version and token != "runner-1"  # the runner reloads it; no bar is skipped or redone
    split = Backtester.from_dict(state)
    assert split.last_prices is not None and split.last_prices.tolist() == [50.0, 50.0] == [_aaa(store)[0], 50.0]
    for track in Track:
        assert split.pending[track].qty.tolist() == [2000.0, 2000.0]
        assert split.pending[track].prices.tolist() == (control.pending[track].prices / [2.0, 1.0]).tolist()
        assert split.pending[track].var == control.pending[track].var
    np.testing.assert_array_equal(split.cov, control.cov)
    np.testing.assert_array_equal(split.window, control.window)
    assert "  main: backtest restated: AAA last price / 2, 2 open forecast(s) in post-split shares" in "\n".join(
        result.lines()
    )
    assert store.read_split("s", "main")["backtest"] == "restated"  # type: ignore[index]
    # the next bars: AAA up 0.05 % a bar, at post-split prices (the split) and pre-split prices (the control)
    for k, move in enumerate([1.0005, 1.001, 1.0015, 1.002]):
        closed = split.step([100.0 * move / 2, 50.0], [2000.0, 2000.0], f"a{k}", observed=[True, True])
        expected = control.step([100.0 * move, 50.0], q, f"a{k}", observed=[True, True])
        assert [(o.track, o.pnl, o.hit) for o in closed] == [(o.track, o.pnl, o.hit) for o in expected]
        assert all(not hit for o in closed for hit in o.hit.values())  # was a hit of every method
        assert closed[0].track is Track.BAR and closed[0].pnl == pytest.approx(1000 * 100.0 * 0.0005, rel=1e-9)
        assert split.cov[0, 0] == pytest.approx(control.cov[0, 0], rel=1e-12, abs=0)  # was x250 the variance
        np.testing.assert_allclose(split.cov, control.cov, rtol=1e-12, atol=0)
        for track in Track:
            for method, var in control.pending[track].var.items():
                assert split.pending[track].var[method] == pytest.approx(var, rel=1e-12)
    assert {m: s.exceedances for m, s in split.summary().items()} == {
        m: s.exceedances for m, s in control.summary().items()
    }


def test_a_rerun_of_the_split_does_not_restate_the_backtest_twice(store: Store) -> None:
    settings = _settings(merge(TEST_CONFIG, {}))
    warmup.seed(store, settings, now=T0)
    _store_backtest(store, "main", _fed_backtester()[0], store.read_market_version())
    apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, split_id="s", now=T0 + 30)
    contents = store_contents(store.client)

    again = apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, split_id="s", now=T0 + 60)

    assert not again.changed and store_contents(store.client) == contents
    state = store.read_backtest_state("main")[0]  # type: ignore[index]
    assert state["last_prices"] == [50.0, 50.0] and state["pending"]["bar"]["qty"] == [2000.0, 2000.0]


def test_an_absent_unreadable_or_unrelated_backtest_is_left_alone_and_said_so(store: Store) -> None:
    settings = _settings(merge(TEST_CONFIG, {}))
    warmup.seed(store, settings, now=T0)
    damaged = _fed_backtester()[0].store_state()
    damaged = {**damaged, "last_prices": [100.0]}  # one price for two tickers
    store.write_backtest("main", damaged, {}, 1, "runner-1")
    hedge = Backtester(["CCC", "DDD"], BacktestConfig(window=60, seed_rows=10))
    hedge.step([200.0, 25.0], [300.0, -1000.0], "b0")
    _store_backtest(store, "hedge", hedge, 1)
    keys_main, keys_hedge = PortfolioKeys("main"), PortfolioKeys("hedge")
    raw_main, raw_hedge = store.client.hgetall(keys_main.backtest), store.client.hgetall(keys_hedge.backtest)

    result = apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, split_id="s", now=T0 + 30)

    assert store.read_portfolio("main").positions["AAA"].qty == 2000  # the book is split all the same
    assert store.client.hgetall(keys_main.backtest) == raw_main
    assert store.client.hgetall(keys_hedge.backtest) == raw_hedge
    lines = "\n".join(result.lines())
    assert "  main: backtest unreadable (last_prices is not a list of 2 numbers): left as it is" in lines
    assert "  hedge:" not in lines  # its backtest does not model AAA
    assert store.read_split("s", "main")["backtest"].startswith("unreadable")  # type: ignore[index]
    assert store.read_split("s", "hedge")["backtest"] == "not modelled"  # type: ignore[index]
    # not JSON at all, and no backtest stored
    store.client.hset(keys_main.backtest, "state", b"{not json")
    other = apply_split(store, "BBB", Fraction(2), settings=settings, actor=ACTOR, split_id="b", now=T0 + 40)
    assert store.client.hget(keys_main.backtest, "state") == b"{not json"
    assert any(line.startswith("  main: backtest unreadable (") for line in other.lines())
    store.client.delete(keys_hedge.backtest)
    third = apply_split(store, "CCC", Fraction(2), settings=settings, actor=ACTOR, split_id="c", now=T0 + 50)
    assert "  hedge: no backtest stored: nothing to restate for CCC" in third.lines()
    assert store.read_split("c", "hedge")["backtest"] == "absent"  # type: ignore[index]


@pytest.mark.parametrize(("behind", "warned"), [(0, False), (1, True)])
def test_a_backtest_whose_runner_has_bars_to_feed_is_restated_with_a_warning(
    store: Store, behind: int, warned: bool
) -> None:
    """The runner's last bar exactly at the newest tick: no warning; one version behind: the queued bar is at the
    pre-split price, said so."""
    settings = _settings({**merge(TEST_CONFIG, {}), "stream": {}})
    warmup.seed(store, settings, now=T0)
    StreamDaemon(store, settings, IterableFeed([Bar(T0 + 60, dict(BASE))]), interval=0, clock=lambda: T0 + 60).run()
    newest = store.last_tick()
    assert newest is not None
    _store_backtest(store, "main", _fed_backtester()[0], newest.version - behind)

    result = apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, split_id="s", now=T0 + 90)

    line = result.backtests["main"]
    assert line.startswith("backtest restated: AAA")
    assert ("WARNING" in line) is warned
    if warned:
        assert f"last bar fed is market version {newest.version - 1}, the newest tick {newest.version}" in line


def test_restate_backtest_divides_prices_and_multiplies_quantities_of_the_ticker_only() -> None:
    bt = _fed_backtester()[0]
    state = bt.store_state()

    out = restate_backtest(state, "BBB", Fraction(1, 3))

    assert out is not None
    new, forecasts = out
    assert forecasts == 2 and new["last_prices"] == [100.0, 150.0]
    for track in ("bar", "limit"):
        before, after = state["pending"][track], new["pending"][track]
        assert after["qty"] == [1000.0, float(Fraction(2000) / 3)] and after["prices"][0] == before["prices"][0]
        assert after["prices"][1] == before["prices"][1] * 3 and after["var"] == before["var"]
        # the value held is unchanged: q x P = (q / 3) x (3 P)
        assert after["qty"][1] * after["prices"][1] == pytest.approx(before["qty"][1] * before["prices"][1], rel=1e-15)
    assert state["last_prices"] == [100.0, 50.0]  # the input is not modified
    assert restate_backtest(state, "CCC", Fraction(2)) is None
    fresh = Backtester(["AAA"], BacktestConfig(window=60, seed_rows=10)).store_state()
    assert restate_backtest(fresh, "AAA", Fraction(2)) == ({**fresh, "pending": {}}, 0)  # nothing fed yet


@pytest.mark.parametrize(
    "damage",
    [{"tickers": "AAA"}, {"last_prices": [100.0, -1.0]}, {"last_prices": [100.0, True]}, {"pending": []},
     {"pending": {"bar": {"qty": [1.0, 2.0], "prices": [1.0]}}}, {"pending": {"bar": {"qty": [1.0, None],
     "prices": [1.0, 2.0]}}}],
)  # fmt: skip
def test_restate_backtest_refuses_a_state_not_of_the_backtest_shape(damage: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        restate_backtest({**_fed_backtester()[0].store_state(), **damage}, "AAA", Fraction(2))


@pytest.mark.parametrize("backend", ["store", "cluster_store"])
def test_a_split_retried_after_a_watch_conflict_reports_and_audits_everything_its_run_did(
    request: pytest.FixtureRequest, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write to the second book between the split's read and its EXEC (first attempt only). One Redis: the
    MULTI aborts whole and the retry does everything. A Redis Cluster: the market's and the first book's slots
    commit, the second's fails, and the retry restates only that book: its result and the one ``rd:audit``
    record must still name the market and both restated limits (what the run did, not its last attempt)."""
    store: Store = request.getfixturevalue(backend)
    settings = _settings(merge(TEST_CONFIG, {"limits": {"position_limits": {"AAA": 5000}}}))
    warmup.seed(store, settings, now=T0)
    other = Store(store.client)  # a concurrent writer (its own calls, not the split's WATCHed connection)
    real = corporate_actions._restate_book
    restated: list[str] = []

    def restate_with_a_write_meanwhile(store_: Store, pipe: Any, state: Any, *args: Any, **kwargs: Any) -> Any:
        restated.append(state.portfolio_id)
        if len(restated) == 2:  # the first attempt, its second book: a write to that book lands meanwhile
            other.client.hset(PortfolioKeys(state.portfolio_id).state, "updated_at", str(T0 + 1))
        return real(store_, pipe, state, *args, **kwargs)

    monkeypatch.setattr(corporate_actions, "_restate_book", restate_with_a_write_meanwhile)

    result = apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, split_id="S1", now=T0 + 30)

    conflicted = restated[1]
    assert len(restated) == (3 if backend == "cluster_store" else 4)  # the cluster retries the conflicted book only
    assert restated[2:] == ([conflicted] if backend == "cluster_store" else restated[:2])
    assert result.market_applied is True
    assert set(result.books) == {"main"} and result.books["main"]["qty_after"] == 2000  # hedge holds no AAA
    assert result.limits == {"hedge": (5000, 10000, 1), "main": (5000, 10000, 1)}
    assert sorted(result.marked) == ["hedge", "main"]
    assert result.lines()[0].startswith("split S1: AAA 2-for-1, last price 100 -> 50")
    desk = [r for r in store.read_stream_json(GLOBAL_AUDIT_KEY) if r.get("action") == "split"]
    assert len(desk) == 1
    assert desk[0]["market_restated"] is True and desk[0]["portfolios"] == ["main"]
    assert desk[0]["position_limits_restated"] == {"hedge": [5000, 10000], "main": [5000, 10000]}
    assert _aaa(store)[0] == 50.0 and store.read_portfolio("main").positions["AAA"].qty == 2000
    live = {pid: store.read_limits(pid) for pid in ("main", "hedge")}
    assert {pid: stored.limits.position_limits["AAA"] for pid, stored in live.items() if stored is not None} == {
        "main": 10000,
        "hedge": 10000,
    }
