"""Cash dividends on their ex-date (engine/dividends.py, ``warmup.py --dividend``): the price drop booked as cash,
so the ex-date changes no equity, daily P&L or drawdown, enters the model as no return and scores no phantom
exceedance in the backtest."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import warmup
from engine import dividends
from engine.dividends import (
    DividendConflictError,
    DividendError,
    DividendRepeatedError,
    apply_dividend,
    dividend_cash,
    parse_amount,
)
from engine.feeds import Bar, IterableFeed
from engine.math_logic import update_covariance_ewma
from engine.records import Position
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings
from engine.store import GLOBAL_AUDIT_KEY, PortfolioKeys, Store
from engine.stream import StreamDaemon
from logic.backtest import Backtester, Track
from tests.conftest import TEST_CONFIG, merge, store_contents
from tests.test_corporate_actions import (
    ACTOR,
    BASE,
    MIDNIGHT,
    T0,
    _fed_backtester,
    _figures,
    _main,
    _print_aaa,
    _settings,
    _store_backtest,
)

HOLDS_AAA_SHORT = {"portfolios": [
    TEST_CONFIG["portfolios"][0],
    {**TEST_CONFIG["portfolios"][1], "holdings": {"CCC": 300, "DDD": -1000, "AAA": -200}},
]}  # fmt: skip
"""Both books hold AAA: main 1000 long, hedge 200 short."""


def _price(store: Store, ticker: str) -> float:
    snap = store.read_market()
    return float(snap.prices[snap.tickers.index(ticker)])


def _equity(store: Store, pid: str) -> Decimal:
    """cash + sum qty x price, in decimal on the stored prices' written form: computed here, not by the monitor."""
    book, snap = store.read_portfolio(pid), store.read_market()
    held = sum(
        (Decimal(p.qty) * Decimal(repr(float(snap.prices[snap.tickers.index(t)]))) for t, p in book.positions.items()),
        Decimal(0),
    )
    return book.cash + held


def _book_keys(store: Store, pid: str) -> dict[bytes, Any]:
    prefix = f"pf:{{{pid}}}:".encode()
    return {k: v for k, v in store_contents(store.client).items() if k.startswith(prefix)}


def _dividend(store: Store, settings: Settings, ticker: str, amount: str, **kwargs: Any) -> dividends.DividendResult:
    return apply_dividend(store, ticker, Decimal(amount), settings=settings, actor=ACTOR, **{"now": T0 + 30, **kwargs})


# -- the cash ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("qty", "amount", "cash"),
    [(333, "0.2325", "77.42"), (-333, "0.2325", "-77.42"), (2, "0.0125", "0.02"), (6, "0.0125", "0.08"),
     (1000, "0.25", "250.00"), (1, "0.004", "0.00")],
)  # fmt: skip
def test_the_cash_of_a_dividend_is_qty_times_amount_rounded_half_even_to_the_cent(
    qty: int, amount: str, cash: str
) -> None:
    # 77.4225 -> 77.42; 0.025 -> 0.02 and 0.075 -> 0.08 (half to even, not half up)
    assert dividend_cash(qty, Decimal(amount)) == Decimal(cash)
    assert str(dividend_cash(qty, Decimal(amount))) == cash


def test_a_long_receives_qty_x_amount_in_cash_and_realized_pnl_and_its_equity_is_continuous(
    store: Store, make_settings: Any
) -> None:
    settings = make_settings({"portfolios": [{**TEST_CONFIG["portfolios"][0], "holdings": {"AAA": 333}},
                                             TEST_CONFIG["portfolios"][1]]})  # fmt: skip
    warmup.seed(store, settings, now=T0)
    equity0 = _equity(store, "main")

    result = _dividend(store, settings, "AAA", "0.2325")

    main = store.read_portfolio("main")
    assert main.cash == Decimal("1000000.00") + Decimal("77.42")  # 333 x 0.2325 = 77.4225, to the cent
    assert main.realized_pnl == Decimal("77.42")
    assert main.positions["AAA"] == Position(333, Decimal("100.0"), Decimal("77.42"))  # average price unchanged
    assert _price(store, "AAA") == 99.7675 and store.read_reference_prices()["AAA"] == 99.7675
    # equity moves by the cent rounding only: 77.42 received, 333 x 0.2325 = 77.4225 off the price
    assert _equity(store, "main") - equity0 == Decimal("-0.0025")
    assert result.market_applied and set(result.books) == {"main"}
    assert "  main: AAA 333 shares, dividend received 77.42, cash 1000000.00 -> 1000077.42" in result.lines()


def test_a_short_pays_the_dividend_in_lieu_and_its_equity_is_continuous(store: Store, settings: Settings) -> None:
    warmup.seed(store, settings, now=T0)
    equity0 = _equity(store, "hedge")

    result = _dividend(store, settings, "DDD", "0.37")

    hedge = store.read_portfolio("hedge")
    assert hedge.cash == Decimal("200000.00") - Decimal("370.00")  # -1000 x 0.37
    assert hedge.realized_pnl == Decimal("-370.00") and hedge.positions["DDD"].realized_pnl == Decimal("-370.00")
    assert hedge.positions["DDD"].qty == -1000 and _price(store, "DDD") == 24.63
    assert _equity(store, "hedge") == equity0
    assert "  hedge: DDD -1000 shares, dividend paid in lieu -370.00, cash 200000.00 -> 199630.00" in result.lines()


def test_a_book_without_the_ticker_is_untouched_byte_for_byte(store: Store, settings: Settings) -> None:
    warmup.seed(store, settings, now=T0)
    hedge0 = _book_keys(store, "hedge")  # hedge holds CCC and DDD, no AAA

    result = _dividend(store, settings, "AAA", "0.50")

    assert _book_keys(store, "hedge") == hedge0
    assert store.read_dividend(result.dividend_id, "hedge") is None
    assert result.marked == ["main"] and not [line for line in result.lines() if line.startswith("  hedge")]
    assert store.read_dividend(result.dividend_id)["portfolios"] == ["main"]  # type: ignore[index]


# -- refusals ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "amount",
    [Decimal(0), Decimal("-0.25"), Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("100"),
     Decimal("100.00"), Decimal("100.01"), 0.25, Decimal("1E-30"), Decimal("0.0000001"), Decimal("0.2500001")],
)  # fmt: skip
def test_a_bad_amount_is_refused_with_its_code_and_the_store_is_unchanged(
    store: Store, settings: Settings, amount: Any
) -> None:
    warmup.seed(store, settings, now=T0)  # AAA at 100: exactly the price would leave a price of 0
    contents = store_contents(store.client)

    with pytest.raises(DividendError) as info:  # forced: not the large amount's refusal, the price's own
        apply_dividend(store, "AAA", amount, settings=settings, actor=ACTOR, now=T0 + 30, force=True)

    assert info.value.code == "DIVIDEND_INVALID"
    assert store_contents(store.client) == contents


def test_one_cent_under_the_price_is_booked_and_leaves_a_price_of_one_cent(store: Store, settings: Settings) -> None:
    warmup.seed(store, settings, now=T0)

    _dividend(store, settings, "AAA", "99.99", force=True)  # forced: at least a quarter of the price

    assert _price(store, "AAA") == 0.01
    assert store.read_portfolio("main").cash == Decimal("1000000.00") + Decimal("99990.00")


@pytest.mark.parametrize("case", ["unknown", "no price", "reference at the amount"])
def test_an_unknown_ticker_one_without_a_price_or_below_its_collar_reference_is_refused(
    store: Store, settings: Settings, case: str
) -> None:
    warmup.seed(store, settings, now=T0)
    ticker = "ZZZ" if case == "unknown" else "AAA"
    snap = store.read_market()
    if case == "no price":
        store.write_market(replace(snap, prices=np.where(np.array(snap.tickers) == "AAA", np.nan, snap.prices)))
    if case == "reference at the amount":
        reference = store.read_reference_prices()
        prices = np.array([0.5 if t == "AAA" else p for t, p in reference.items()])
        store.write_reference_prices(tuple(reference), prices, T0)
    contents = store_contents(store.client)

    with pytest.raises(DividendError, match={"unknown": "not in the universe", "no price": "no valid last price",
                                             "reference at the amount": "collar reference"}[case]):  # fmt: skip
        _dividend(store, settings, ticker, "0.5")

    assert store_contents(store.client) == contents


def test_a_quarter_of_the_price_or_more_needs_force_and_a_millionth_of_a_dollar_is_the_finest_amount(
    store: Store, settings: Settings
) -> None:
    warmup.seed(store, settings, now=T0)  # AAA at 100
    contents = store_contents(store.client)
    with pytest.raises(DividendError, match="typo") as info:  # exactly a quarter: refused
        _dividend(store, settings, "AAA", "25")
    assert info.value.code == "DIVIDEND_INVALID" and store_contents(store.client) == contents

    _dividend(store, settings, "AAA", "24.999999", dividend_id="under")  # a millionth under: booked
    assert _price(store, "AAA") == pytest.approx(75.000001, rel=1e-15)
    _dividend(store, settings, "BBB", "12.5", dividend_id="special", force=True)  # half of BBB's 50, forced
    assert _price(store, "BBB") == 37.5


def test_an_empty_dividend_id_is_refused_not_taken_for_the_default(store: Store, settings: Settings) -> None:
    """An empty id would have counted as one of its own (no repeat check) yet booked under the default id."""
    warmup.seed(store, settings, now=T0)
    contents = store_contents(store.client)
    for empty in ("", "  "):
        with pytest.raises(DividendError, match="empty dividend id"):
            _dividend(store, settings, "AAA", "0.25", dividend_id=empty)
    assert store_contents(store.client) == contents


def test_a_ticker_whose_collar_reference_is_nan_is_booked_and_its_reference_left_as_it_is(
    store: Store, settings: Settings
) -> None:
    warmup.seed(store, settings, now=T0)
    reference = store.read_reference_prices()
    store.write_reference_prices(tuple(reference), np.array([np.nan if t == "AAA" else p for t, p in
                                                             reference.items()]), T0)  # fmt: skip

    _dividend(store, settings, "AAA", "0.25")

    assert _price(store, "AAA") == 99.75 and np.isnan(store.read_reference_prices()["AAA"])
    assert store.read_portfolio("main").cash == Decimal("1000000.00") + Decimal("250.00")


def test_a_split_of_a_ticker_whose_collar_reference_is_nan_is_applied_and_the_reference_left_as_it_is(
    store: Store, settings: Settings
) -> None:
    """It raised a ValueError (Fraction of NaN) out of the command before: the split's and the dividend's
    reference rule is one (engine/corporate_actions.py ``reference_of``)."""
    from fractions import Fraction

    from engine.corporate_actions import apply_split

    warmup.seed(store, settings, now=T0)
    reference = store.read_reference_prices()
    store.write_reference_prices(tuple(reference), np.array([np.nan if t == "AAA" else p for t, p in
                                                             reference.items()]), T0)  # fmt: skip

    apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, now=T0 + 30)

    assert _price(store, "AAA") == 50.0 and np.isnan(store.read_reference_prices()["AAA"])


def test_a_rerun_books_the_quantity_held_at_the_ex_date_not_one_a_fill_changed_since(
    store: Store, make_settings: Any
) -> None:
    """On a Redis Cluster the market's slot commits first: a fill can land before a book's slot does, and the
    retry (or a rerun) must book what the book held at the ex-date, recorded with the market."""
    settings = make_settings(HOLDS_AAA_SHORT)
    warmup.seed(store, settings, now=T0)
    main0 = store.read_portfolio("main")
    _dividend(store, settings, "AAA", "0.25", dividend_id="d")
    assert store.read_dividend("d")["entitled"] == {"main": 1000, "hedge": -200}  # type: ignore[index]
    store.write_portfolio_state(main0)  # main's part undone, as if its slot had not run ...
    store.write_position("main", "AAA", replace(main0.positions["AAA"], qty=0))  # ... and a fill closed AAA
    store.client.delete(PortfolioKeys("main").dividends)

    again = _dividend(store, settings, "AAA", "0.25", dividend_id="d", now=T0 + 60)

    assert set(again.books) == {"main"} and again.books["main"]["qty"] == 1000
    main = store.read_portfolio("main")
    assert main.cash == Decimal("1000000.00") + Decimal("250.00") and main.realized_pnl == Decimal("250.00")


# -- idempotence and repeats -------------------------------------------------------------------------------------


def test_a_rerun_of_the_same_id_changes_nothing_and_another_amount_under_it_is_refused(
    store: Store, settings: Settings
) -> None:
    warmup.seed(store, settings, now=T0)
    _dividend(store, settings, "AAA", "0.25", dividend_id="AAA-q1")
    contents = store_contents(store.client)

    again = _dividend(store, settings, "AAA", "0.250", dividend_id="AAA-q1", now=T0 + 60)

    assert not again.changed and again.lines() == ["dividend AAA-q1 was already applied; nothing changed"]
    assert store_contents(store.client) == contents
    with pytest.raises(DividendConflictError) as info:
        _dividend(store, settings, "AAA", "0.30", dividend_id="AAA-q1", now=T0 + 60)
    assert info.value.code == "DIVIDEND_CONFLICT" and store_contents(store.client) == contents


def test_a_run_interrupted_after_the_market_books_only_the_books_not_yet_booked(
    store: Store, make_settings: Any
) -> None:
    """On a Redis Cluster the market and each book commit one after the other: a rerun finishes the job."""
    settings = make_settings(HOLDS_AAA_SHORT)
    warmup.seed(store, settings, now=T0)
    hedge0 = store.read_portfolio("hedge")
    _dividend(store, settings, "AAA", "0.25", dividend_id="d")
    store.write_portfolio_state(hedge0)  # undo the hedge book's part as if its slot's MULTI had not run
    store.write_position("hedge", "AAA", hedge0.positions["AAA"])
    store.client.delete(PortfolioKeys("hedge").dividends)

    again = _dividend(store, settings, "AAA", "0.25", dividend_id="d", now=T0 + 60)

    assert not again.market_applied and set(again.books) == {"hedge"}
    assert _price(store, "AAA") == 99.75  # the price is not lowered twice
    assert store.read_portfolio("hedge").cash == Decimal("200000.00") - Decimal("50.00")
    assert store.read_portfolio("main").cash == Decimal("1000000.00") + Decimal("250.00")  # booked once


def test_a_second_dividend_with_no_print_since_is_refused_and_forced_is_booked(
    store: Store, settings: Settings
) -> None:
    """The same command after midnight UTC (a new default id) or under another id, no AAA print in between."""
    warmup.seed(store, settings, now=MIDNIGHT - 3600)
    first = _dividend(store, settings, "AAA", "0.25", now=MIDNIGHT - 600)
    contents = store_contents(store.client)

    for dividend_id in (None, "AAA-another-id"):
        with pytest.raises(DividendRepeatedError) as info:
            _dividend(store, settings, "AAA", "0.25", dividend_id=dividend_id, now=MIDNIGHT + 600)
        assert info.value.code == "DIVIDEND_REPEATED"
        assert first.dividend_id in str(info.value) and "no print since" in str(info.value)
    assert store_contents(store.client) == contents

    forced = _dividend(store, settings, "AAA", "0.25", dividend_id="AAA-2", force=True, now=MIDNIGHT + 600)

    assert forced.market_applied and _price(store, "AAA") == 99.5
    assert store.read_portfolio("main").cash == Decimal("1000000.00") + Decimal("500.00")
    desk = [r for r in store.read_stream_json(GLOBAL_AUDIT_KEY) if r.get("action") == "dividend"]
    assert [r["forced"] for r in desk] == [True, False]  # newest first


def test_after_a_print_a_new_dividend_needs_an_id_of_its_own(store: Store, settings: Settings) -> None:
    warmup.seed(store, settings, now=T0)
    _dividend(store, settings, "AAA", "0.25", dividend_id="AAA-q1")
    _print_aaa(store, T0 + 60)

    with pytest.raises(DividendRepeatedError, match="has printed since.*own --dividend-id"):
        _dividend(store, settings, "AAA", "0.25", now=T0 + 90)

    assert _dividend(store, settings, "AAA", "0.25", dividend_id="AAA-q2", now=T0 + 90).market_applied
    assert _price(store, "AAA") == 99.5


# -- what the desk sees ------------------------------------------------------------------------------------------


def test_the_next_print_at_the_ex_price_enters_the_model_as_a_zero_return(store: Store) -> None:
    """With the shipped jump filter: the stream daemon's EWMA update after the dividend is the update with r = 0
    for AAA, not ln((P - D) / P)."""
    settings = _settings({**merge(TEST_CONFIG, {}), "stream": {}})
    warmup.seed(store, settings, now=T0)
    StreamDaemon(store, settings, IterableFeed([Bar(T0 + 60, dict(BASE))]), interval=0, clock=lambda: T0 + 60).run()
    cov0 = store.read_market().cov.copy()
    apply_dividend(store, "AAA", Decimal("2"), settings=settings, actor=ACTOR, now=T0 + 90)
    assert np.array_equal(store.read_market().cov, cov0)  # the dividend itself is no return

    bar = {**BASE, "AAA": 98.0, "BBB": 50.0 * 1.0002}
    stats = StreamDaemon(store, settings, IterableFeed([Bar(T0 + 120, bar)]), interval=0, clock=lambda: T0 + 120).run()

    assert stats.bars_written == 1 and stats.prices_rejected == 0
    zero = update_covariance_ewma(cov0.copy(), [0.0, np.log(1.0002), 0.0, 0.0], settings.model.ewma_decay)
    phantom = update_covariance_ewma(cov0.copy(), [np.log(0.98), np.log(1.0002), 0.0, 0.0], settings.model.ewma_decay)
    np.testing.assert_allclose(store.read_market().cov, zero, rtol=1e-12, atol=0)
    assert not np.allclose(store.read_market().cov, phantom, rtol=1e-3)


def test_the_monitors_equity_daily_pnl_and_drawdowns_are_unchanged_across_the_ex_date(
    store: Store, make_settings: Any
) -> None:
    settings = make_settings(HOLDS_AAA_SHORT)
    warmup.seed(store, settings, now=T0)
    before = _figures(store, settings, T0 + 30)

    _dividend(store, settings, "AAA", "1.50")

    after = _figures(store, settings, T0 + 30)
    assert after["main"]["cash"] == before["main"]["cash"] + 1500.0
    assert after["hedge"]["cash"] == before["hedge"]["cash"] - 300.0
    for pid in ("main", "hedge"):
        names = ["equity", "pnl.daily", "pnl.total"] + [n for n in before[pid] if n.startswith("drawdown.")]
        assert len(names) > 3 and "pnl.daily" in before[pid]
        for name in names:  # a phantom loss (gain) of 1,500 (300) without the dividend booked
            assert after[pid][name] == pytest.approx(before[pid][name], abs=1e-6), (pid, name)
        assert after[pid]["pnl.realized"] == before[pid]["pnl.realized"] + (1500.0 if pid == "main" else -300.0)


def test_each_holding_book_and_the_desk_get_one_audit_record(store: Store, settings: Settings) -> None:
    warmup.seed(store, settings, now=T0)

    _dividend(store, settings, "AAA", "0.25", reason="Q1", dividend_id="q1")

    main = [r for r in store.read_stream_json(PortfolioKeys("main").audit) if r.get("action") == "dividend"]
    hedge = [r for r in store.read_stream_json(PortfolioKeys("hedge").audit) if r.get("action") == "dividend"]
    desk = [r for r in store.read_stream_json(GLOBAL_AUDIT_KEY) if r.get("action") == "dividend"]
    assert len(main) == len(desk) == 1 and hedge == []
    rec = main[0]
    assert (rec["actor"], rec["reason"], rec["amount"], rec["qty"]) == (ACTOR, "Q1", "0.25", 1000)
    assert (rec["price_before"], rec["price_after"]) == (100.0, 99.75)
    assert (rec["cash_before"], rec["cash_after"], rec["cash"]) == ("1000000.00", "1000250.00", "250.00")
    assert desk[0]["portfolios"] == ["main"] and desk[0]["market_adjusted"] is True
    market = store.read_dividend("q1")
    assert market is not None and (market["reference_before"], market["reference_after"]) == (100.0, 99.75)


def test_the_backtest_is_restated_so_a_horizon_spanning_the_ex_date_scores_the_total_return(
    store: Store, settings: Settings
) -> None:
    warmup.seed(store, settings, now=T0)
    bt, q = _fed_backtester()
    control = Backtester.from_dict(bt.to_dict())  # the same backtest, never restated
    _store_backtest(store, "main", bt, store.read_market_version())

    result = _dividend(store, settings, "AAA", "2")

    state, _, token = store.read_backtest_state("main")  # type: ignore[misc]
    assert token != "runner-1"  # the runner reloads it
    restated = Backtester.from_dict(state)
    assert restated.last_prices is not None and restated.last_prices.tolist() == [98.0, 50.0]
    for track in Track:
        assert restated.pending[track].prices.tolist() == (control.pending[track].prices - [2.0, 0.0]).tolist()
        assert restated.pending[track].qty.tolist() == q.tolist()
    np.testing.assert_array_equal(restated.cov, control.cov)
    np.testing.assert_array_equal(restated.window, control.window)
    assert "backtest restated: AAA last price and 2 open forecast(s)' start price - 2" in result.backtests["main"]
    starts = {track: control.pending[track].prices - [2.0, 0.0] for track in Track}
    closed, ends = [], {}
    for k, move in enumerate([1.0005, 1.001, 1.0015]):  # AAA from its ex price 98 up
        ends[f"x{k}"] = np.array([98.0 * move, 50.0])
        closed += restated.step(ends[f"x{k}"], q, f"x{k}", observed=[True, True])
    bar = [o for o in closed if o.track is Track.BAR][0]
    assert bar.pnl == pytest.approx(1000 * 98.0 * 0.0005, rel=1e-9) and not any(bar.hit.values())
    limit = [o for o in closed if o.track is Track.LIMIT][0]  # opened before the ex-date, closed after it
    # price change + dividend: q (end - (start - D)), not the phantom q (end - start)
    assert limit.pnl == pytest.approx(float(q @ (ends[limit.end] - starts[Track.LIMIT])), rel=1e-12)
    assert not any(limit.hit.values())


# -- the command line --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["AAA", "0"], ["AAA", "abc"], ["AAA", "nan"], ["AAA", "100"], ["ZZZ", "1"],
                                  ["aa a", "1"]])  # fmt: skip
def test_the_command_refuses_a_bad_dividend_with_its_code(
    args: list[str], store: Store, config_file: Path, redis_server: EmbeddedRedis, monkeypatch: Any, capsys: Any
) -> None:
    warmup.seed(store, _settings(merge(TEST_CONFIG, {})), now=T0)
    contents = store_contents(store.client)

    status, out, err = _main(["--dividend", *args], config_file, redis_server.url, monkeypatch, capsys)

    assert status == 2 and "warmup: error [DIVIDEND_INVALID]" in err and out == ""
    assert store_contents(store.client) == contents


def test_the_command_books_once_says_so_on_a_rerun_and_refuses_a_repeat(
    store: Store, config_file: Path, redis_server: EmbeddedRedis, monkeypatch: Any, capsys: Any
) -> None:
    warmup.seed(store, _settings(merge(TEST_CONFIG, {})), now=T0)
    argv = ["--dividend", "AAA", "0.25", "--reason", "Q1 dividend", "--dividend-id", "AAA-q1"]

    first = _main(argv, config_file, redis_server.url, monkeypatch, capsys)
    second = _main(argv, config_file, redis_server.url, monkeypatch, capsys)
    repeat = _main(["--dividend", "AAA", "0.25"], config_file, redis_server.url, monkeypatch, capsys)
    stray = _main(["--dividend-id", "x"], config_file, redis_server.url, monkeypatch, capsys)

    assert first[0] == 0
    assert "warmup: dividend AAA-q1: AAA 0.25 a share, last price 100 -> 99.75" in first[1]
    assert "warmup:   main: AAA 1000 shares, dividend received 250.00, cash 1000000.00 -> 1000250.00" in first[1]
    assert "[[portfolios]] main cash = 1000000.00" in first[1]  # the settings file to edit by hand
    assert second[0] == 0 and second[1] == "warmup: dividend AAA-q1 was already applied; nothing changed\n"
    assert repeat[0] == 2 and "[DIVIDEND_REPEATED]" in repeat[2] and "'AAA-q1'" in repeat[2]
    assert stray[0] == 2 and "--dividend-id and --force go with --split or --dividend" in stray[2]
    assert store.read_portfolio("main").cash == Decimal("1000250.00")


def test_parse_amount_reads_the_amount_exactly() -> None:
    assert parse_amount(" 0.2325 ") == Decimal("0.2325")
    with pytest.raises(DividendError):
        parse_amount("1/4")


# -- Redis Cluster -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["store", "cluster_store"])
def test_a_dividend_retried_after_a_watch_conflict_books_each_book_once_and_audits_the_whole_run(
    request: pytest.FixtureRequest, backend: str, make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write to the second book between the dividend's read and its EXEC (first attempt only). One Redis: the
    MULTI aborts whole and the retry books everything. A Redis Cluster: the market's and the first book's slots
    commit, the second's fails, the retry books only that book; the result and the one ``rd:audit`` record still
    say everything the run did."""
    store: Store = request.getfixturevalue(backend)
    settings = make_settings(HOLDS_AAA_SHORT)
    warmup.seed(store, settings, now=T0)
    other = Store(store.client)
    real = dividends._book_dividend
    booked: list[str] = []

    def book_with_a_write_meanwhile(store_: Store, pipe: Any, state: Any, *args: Any, **kwargs: Any) -> Any:
        booked.append(state.portfolio_id)
        if len(booked) == 2:
            other.client.hset(PortfolioKeys(state.portfolio_id).state, "updated_at", str(T0 + 1))
        return real(store_, pipe, state, *args, **kwargs)

    monkeypatch.setattr(dividends, "_book_dividend", book_with_a_write_meanwhile)

    result = _dividend(store, settings, "AAA", "0.25", dividend_id="D1")

    assert booked[2:] == ([booked[1]] if backend == "cluster_store" else booked[:2])
    assert result.market_applied and set(result.books) == {"main", "hedge"}
    assert _price(store, "AAA") == 99.75
    assert store.read_portfolio("main").cash == Decimal("1000250.00")
    assert store.read_portfolio("hedge").cash == Decimal("199950.00")
    desk = [r for r in store.read_stream_json(GLOBAL_AUDIT_KEY) if r.get("action") == "dividend"]
    assert len(desk) == 1 and desk[0]["market_adjusted"] is True and desk[0]["portfolios"] == ["hedge", "main"]


# -- a stream daemon running across the restatement ---------------------------------------------------------


@pytest.mark.parametrize("action", ["dividend", "split"])
def test_a_daemon_running_across_a_restatement_anchors_the_next_open_at_the_restated_close(
    store: Store, action: str
) -> None:
    """The daemon reloads the restated market (its version was bumped) with its collar memory of the session
    before: that memory is restated too, so the next open's reference is the restated close, not the old one
    written back (a trade at the ex price was refused PRICE_COLLAR all session)."""
    from fractions import Fraction

    from engine.corporate_actions import apply_split
    from logic.risk_manager import RiskManager

    settings = _settings({**merge(TEST_CONFIG, {"market": {"calendar": "24/7"}}), "stream": {}})
    warmup.seed(store, settings, now=T0)
    now = {"t": T0 + 60}
    after = 88.0 if action == "dividend" else 50.0

    def bars() -> Any:
        yield Bar(T0 + 60, dict(BASE))  # the last bar before the restatement (AAA 100)
        if action == "dividend":
            apply_dividend(store, "AAA", Decimal("12"), settings=settings, actor=ACTOR, now=T0 + 90)
        else:
            apply_split(store, "AAA", Fraction(2), settings=settings, actor=ACTOR, now=T0 + 90)
        now["t"] = MIDNIGHT + 60
        yield Bar(MIDNIGHT + 60, {**BASE, "AAA": after})  # the next day's first bar, at the restated price

    StreamDaemon(store, settings, IterableFeed(bars()), interval=0, clock=lambda: now["t"]).run()

    assert store.read_reference_prices()["AAA"] == pytest.approx(after, rel=1e-12)
    decision = RiskManager(store.client, "main", settings, clock=lambda: MIDNIGHT + 60).check("AAA", 10, "BUY")
    assert decision.status == "APPROVED", decision.reasons
