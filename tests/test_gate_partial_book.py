"""The pre-trade gate's VaR and equity figures while a held ticker has no usable price, on a real redis-server.

The book then counts that position as 0: its VaR is the priced positions' alone and its equity a partial one, so
no figure of it is the book's. The order is refused ``MISSING_PRICE`` ("risk cannot be computed") with no
``VAR_LIMIT`` / ``STRESSED_VAR`` reason made of the partial book, ``equity_after``, ``var_before``, ``var_after``,
``delta_var`` and ``marginal_var`` are None (the ticket shows the dash with the reason), no reason says the order
is or is not a hedge (REDUCING's with hedges allowed: its effect on the VaR is unknown) and nothing stored
changes. The same book fully priced gets its figures back, checked against the delta-normal closed form
``z_c · sqrt(xᵀΣx) · sqrt(bars_per_day)`` at the limit's boundary.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from engine.records import Decision, DecisionStatus, ExecutionStatus
from engine.store import Store
from logic.views.trade import deltas_frame, impact_frame

from .conftest import TEST_CONFIG, store_contents
from .test_dashboard import app_env, assert_clean, frame_with, joined, open_page, submit_ticket
from .test_gate_partial_equity import Desk, desk, unprice

__all__ = ["app_env", "desk"]  # the fixtures, imported for pytest

BARS_PER_DAY = TEST_CONFIG["model"]["bars_per_day"]
NO_FEES = {"fees": {"per_share": "0", "bps": "0", "minimum": "0"}}
# CCC 1000 x 200 = 200,000 is the largest holding; AAA 500 x 100 = 50,000; equity 350,000 priced
BIG = {"id": "big", "account_type": "cash", "cash": "100000.00", "holdings": {"CCC": 1000, "AAA": 500}}
BOOK_FIGURES = ("equity_after", "var_before", "var_after", "delta_var", "marginal_var")


def codes(decision: Decision) -> list[str]:
    """The decision's reason codes in order; every reason says why in a non-empty sentence."""
    assert all(isinstance(r.message, str) and r.message for r in decision.reasons), decision.reasons
    return [r.code.value for r in decision.reasons]


def exposures(store: Store, holdings: dict[str, float]) -> np.ndarray:
    """Dollar exposures at the seeded prices (AAA 100, BBB 50, CCC 200, DDD 25) in the market's order."""
    snap = store.read_market()
    x = np.zeros(len(snap.tickers))
    for ticker, qty in holdings.items():
        x[snap.tickers.index(ticker)] = qty * TEST_CONFIG["universe"]["assets"][ticker]["price"]
    return x


def closed_form_var(store: Store, holdings: dict[str, float], confidence: float = 0.95) -> float:
    x, cov = exposures(store, holdings), store.read_market().cov
    return float(stats.norm.ppf(confidence) * math.sqrt(x @ cov @ x) * math.sqrt(BARS_PER_DAY))


def single_position_var(store: Store, ticker: str, dollars: float, confidence: float = 0.95) -> float:
    """z · sigma · |x| · sqrt(h): one position's VaR (sigma the one-bar volatility, h the bars in a day)."""
    snap = store.read_market()
    i = snap.tickers.index(ticker)
    return float(stats.norm.ppf(confidence) * math.sqrt(snap.cov[i, i]) * abs(dollars) * math.sqrt(BARS_PER_DAY))


def assert_no_book_figures(decision: Decision) -> None:
    assert {name: getattr(decision, name) for name in BOOK_FIGURES} == dict.fromkeys(BOOK_FIGURES)
    assert decision.concentration_after is None and decision.margin_level_after is None


def test_a_book_missing_its_largest_price_is_refused_missing_price_alone_though_its_priced_part_breaches_var(
    desk: Desk, store: Store
) -> None:
    # Arrange: limits the priced part alone (AAA 600 after the order, CCC counted 0) breaches: its VaR
    # z·sigma·60,000·sqrt(390) ~ 1,243 and stressed VaR ~ 2,487 are above 1,100, so the old gate added
    # VAR_LIMIT and STRESSED_VAR next to MISSING_PRICE
    limits = {"var_limit": 1100, "stressed_var_limit": 1100}
    rm = desk(BIG, {"limits": limits})
    partial_after = single_position_var(store, "AAA", 600 * 100.0)
    assert partial_after > 1100 > single_position_var(store, "AAA", 500 * 100.0)
    unprice(store, "CCC")
    client = store.client
    before = store_contents(client)

    # Act
    d = rm.check("AAA", 100, "BUY")

    # Assert: the one risk reason, no figure of the partial book, the order's own figures still there, and
    # nothing written by a check
    assert d.status == DecisionStatus.REJECTED and codes(d) == ["MISSING_PRICE"]
    assert d.reasons[0].message == "no usable price for held CCC: risk cannot be computed"
    assert_no_book_figures(d)
    assert d.cash_after == pytest.approx(100_000.0 - 10_000.0 - 1.0, abs=1e-9)  # the fee is 1.00 (the minimum)
    assert d.notional == 10_000.0 and d.position_after == 600 and d.max_qty_allowed == 0
    assert d.var_limit == 1100.0  # the limit itself is no figure of the book: still shown
    assert store_contents(client) == before


def test_the_other_checks_of_the_order_still_run_on_a_partial_book(desk: Desk, store: Store) -> None:
    rm = desk(BIG, {"limits": {"var_limit": 1, "stressed_var_limit": 1}})
    unprice(store, "CCC")
    # cash: 1,001 x 100 + fee 10.01 > 100,000
    assert codes(rm.check("AAA", 1001, "BUY")) == ["INSUFFICIENT_CASH", "MISSING_PRICE"]
    assert codes(rm.check("AAA", 501, "SELL")) == ["OVERSELL", "MISSING_PRICE"]
    assert codes(rm.check("DDD", 1, "SELL")) == ["SHORT_NOT_ALLOWED", "MISSING_PRICE"]
    for d in (rm.check("AAA", 1001, "BUY"), rm.check("AAA", 100, "SELL")):  # a cut: refused, no VaR waived or not
        assert_no_book_figures(d)
    assert codes(rm.check("AAA", 100, "SELL")) == ["MISSING_PRICE"]


def test_the_fully_priced_book_gets_its_figures_back_and_its_var_limit_holds_exactly_at_the_boundary(
    desk: Desk, store: Store
) -> None:
    # Arrange: the gate's VaR after buying 100 AAA, checked against the closed form, is the limit
    probe = desk(BIG, NO_FEES).check("AAA", 100, "BUY")
    var_before = closed_form_var(store, {"CCC": 1000, "AAA": 500})
    var_after = closed_form_var(store, {"CCC": 1000, "AAA": 600})
    assert probe.var_before == pytest.approx(var_before, rel=1e-10)
    assert probe.var_after == pytest.approx(var_after, rel=1e-10)
    assert probe.delta_var == pytest.approx(var_after - var_before, rel=1e-8)
    x, cov, i = exposures(store, {"CCC": 1000, "AAA": 500}), store.read_market().cov, store.read_market().tickers
    marginal = float(stats.norm.ppf(0.95)) * (cov @ x)[i.index("AAA")] / math.sqrt(x @ cov @ x)
    assert probe.marginal_var == pytest.approx(marginal * math.sqrt(BARS_PER_DAY), rel=1e-10)
    assert probe.equity_after == 350_000.0  # no fees: cash 90,000 + AAA 60,000 + CCC 200,000
    assert probe.var_after is not None
    rm = desk(BIG, {**NO_FEES, "limits": {"var_limit": repr(probe.var_after)}})

    # Act / Assert: exactly at the limit approved, one share over refused VAR_LIMIT and sized back to 100
    at = rm.check("AAA", 100, "BUY")
    over = rm.check("AAA", 101, "BUY")
    assert at.approved and at.var_after == probe.var_after
    assert codes(over) == ["VAR_LIMIT"] and over.max_qty_allowed == 100
    assert over.var_after == pytest.approx(closed_form_var(store, {"CCC": 1000, "AAA": 601}), rel=1e-10)

    # the feed loses CCC: both sides of the boundary refused for the missing price alone, with no figure
    unprice(store, "CCC")
    for qty in (100, 101):
        d = rm.check("AAA", qty, "BUY")
        assert codes(d) == ["MISSING_PRICE"] and d.max_qty_allowed == 0
        assert_no_book_figures(d)


def test_in_reducing_a_partial_book_is_refused_for_its_missing_price_never_judged_a_hedge_or_not(
    desk: Desk, store: Store
) -> None:
    # Arrange: a margin book in REDUCING with hedges allowed; a short of 100 DDD (correlation 0.3 with the
    # longs) lowers the VaR of the book, and would lower the priced part's too (AAA alone); a buy of DDD would not
    book = {**BIG, "account_type": "margin", "initial_margin": 0.5, "maintenance_margin": 0.25}
    strict = desk(book, {"limits": {"reducing_allows_hedges": False}})  # the same book, no hedge allowance
    rm = desk(book, {"limits": {"reducing_allows_hedges": True}})
    rm.set_trading_state("REDUCING", "drawdown", "risk-manager")
    hedge = rm.check("DDD", 100, "SELL")
    assert hedge.approved and hedge.delta_var is not None and hedge.delta_var < 0
    assert codes(rm.check("DDD", 100, "BUY")) == ["REDUCING_ONLY"]
    assert codes(strict.check("DDD", 100, "SELL")) == ["REDUCING_ONLY"]
    partial = closed_form_var(store, {"AAA": 500, "DDD": -100}) - closed_form_var(store, {"AAA": 500})
    assert partial < 0  # what the old gate read as "a hedge" on the partial book

    # Act: the feed loses CCC
    unprice(store, "CCC")
    sell, buy = rm.check("DDD", 100, "SELL"), rm.check("DDD", 100, "BUY")

    # Assert: both refused for the missing price alone: whether either lowers the book's VaR is unknown, so no
    # reason says it does (a hedge waved through on the partial VaR) or does not (REDUCING_ONLY's "or lower the VaR")
    for d in (sell, buy):
        assert not d.approved and codes(d) == ["MISSING_PRICE"]
        assert_no_book_figures(d)
    # without the hedge allowance REDUCING's rule needs no VaR: it still speaks
    assert codes(strict.check("DDD", 100, "SELL")) == ["MISSING_PRICE", "REDUCING_ONLY"]


def test_a_refused_execution_on_a_partial_book_leaves_the_stored_book_exact(desk: Desk, store: Store) -> None:
    rm = desk(BIG, {"limits": {"var_limit": 1100}})
    unprice(store, "CCC")
    state = store.read_portfolio("big")

    result = rm.execute("AAA", 100, "BUY", client_order_id="partial-1")

    assert result.status == ExecutionStatus.REJECTED and result.fill is None
    assert [r.code.value for r in result.decision.reasons] == ["MISSING_PRICE"]
    assert_no_book_figures(result.decision)
    after = store.read_portfolio("big")
    assert after == state and str(after.cash) == "100000.00"
    assert {t: p.qty for t, p in after.positions.items()} == {"CCC": 1000, "AAA": 500}


def test_the_what_if_basket_of_a_partial_book_shows_no_var(desk: Desk, store: Store) -> None:
    rm = desk(BIG)
    priced = rm.what_if([{"ticker": "AAA", "qty": 100, "side": "BUY"}])
    assert priced["var_before"] == pytest.approx(closed_form_var(store, {"CCC": 1000, "AAA": 500}), rel=1e-10)
    assert priced["var_after"] == pytest.approx(closed_form_var(store, {"CCC": 1000, "AAA": 600}), rel=1e-10)

    unprice(store, "CCC")
    basket = rm.what_if([{"ticker": "AAA", "qty": 100, "side": "BUY"}])

    assert basket["status"] == "REJECTED"
    assert basket["var_before"] is None and basket["var_after"] is None and basket["delta_var"] is None
    (d,) = basket["decisions"]
    assert [r["code"] for r in d["reasons"]] == ["MISSING_PRICE"]
    assert all(d[name] is None for name in BOOK_FIGURES)


def test_the_ticket_frames_show_the_dash_with_the_reason_for_the_book_figures(desk: Desk, store: Store) -> None:
    rm = desk(BIG)
    unprice(store, "CCC")
    decision = rm.check("AAA", 100, "BUY").to_dict()

    deltas = deltas_frame(decision).set_index("figure")
    impact = impact_frame(decision).set_index("figure")["value"]

    assert deltas.loc["VaR 95% (1 day)", ["before", "after", "change"]].isna().all()
    assert deltas.loc["Cash", "after"] == pytest.approx(89_999.0)
    why = "— (no data: no usable price for held CCC: risk cannot be computed)"
    assert impact["Equity after"] == why and impact["Marginal VaR (per unit of exposure)"] == why
    assert "Concentration after" not in impact.index  # not a figure of the whole book only: left out as before
    assert impact["Notional"] == "USD 10,000.00"


# -- the Trade page --------------------------------------------------------------------------------------------


def test_the_trade_page_ticket_of_a_partial_book_shows_no_var_before_or_after(app_env: Store) -> None:
    # Arrange: TEST_CONFIG's main book (AAA 1000, BBB 2000), checked priced first
    at = open_page("trade")
    at = submit_ticket(at, "AAA", "BUY", 100)
    assert_clean(at)
    priced = frame_with(at, "before").set_index("figure")
    var_row = priced.loc["VaR 95% (1 day)"]
    assert var_row["before"] == pytest.approx(closed_form_var(app_env, {"AAA": 1000, "BBB": 2000}), rel=1e-10)
    assert var_row["after"] == pytest.approx(closed_form_var(app_env, {"AAA": 1100, "BBB": 2000}), rel=1e-10)

    # Act: the feed loses BBB and the same ticket is checked again
    unprice(app_env, "BBB")
    at.button(key="FormSubmitter:ticket_form-Check").click()
    at = at.run()

    # Assert: refused for the missing price, the VaR row's figures the dash (NaN) with the reason in the help,
    # the book's figures in the impact table the dash with the reason, no number for any of them
    assert_clean(at)
    assert "REJECTED" in joined(at.error)
    assert list(frame_with(at, "code")["code"]) == ["MISSING_PRICE"]
    deltas = frame_with(at, "before").set_index("figure")
    assert deltas.loc["VaR 95% (1 day)", ["before", "after", "change"]].isna().all()
    assert not deltas.loc["Cash", ["before", "after"]].isna().any()  # the order's own figures are still shown
    table = next(df for df in at.dataframe if "before" in df.value.columns)
    assert "no data: no usable price for held BBB" in str(table.proto)
    impact = frame_with(at, "value").set_index("figure")["value"]
    for label in ("Equity after", "Marginal VaR (per unit of exposure)"):
        assert impact[label].startswith("— (no data: no usable price for held BBB"), impact[label]
    assert not [b for b in at.button if b.key == "tk_execute"]
