"""Automated de-risking responses (flatten, reduce:<fraction>, the margin sell-down) on a bad day, through the real
RiskManager on a real redis-server: a missing price is never reported as done, legs above the per-order caps go
as child orders within them (idempotent across a crash), and a fixed plan is clipped to the book it runs on."""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

import warmup
from engine.records import OrderIntent, Position
from engine.settings import settings_from_dict
from engine.store import MarketSnapshot, PortfolioKeys, PortfolioState, Store
from logic.action_orders import AUTOMATION
from logic.actions import ResponseRunner, child_order_id, plan_reduction
from logic.risk_manager import RiskManager

from .conftest import TEST_CONFIG, merge

NOW = 1_700_000_000.0

Desk = Callable[..., RiskManager]


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way catches it."""


@pytest.fixture
def desk(store: Store) -> Desk:
    def build(portfolio_id: str = "main", override: dict[str, Any] | None = None) -> RiskManager:
        settings = settings_from_dict(merge(TEST_CONFIG, override or {}))
        if store.schema_version() is None:
            warmup.seed(store, settings, now=NOW)
        return RiskManager(store.client, portfolio_id, settings, clock=lambda: NOW)

    return build


def set_prices(store: Store, prices: dict[str, float]) -> None:
    snap = store.read_market()
    new, price_ts = snap.prices.copy(), snap.price_ts.copy()
    for ticker, price in prices.items():
        new[snap.tickers.index(ticker)] = price
        price_ts[snap.tickers.index(ticker)] = NOW
    store.write_market(
        MarketSnapshot(
            version=snap.version + 1, ts=NOW, tickers=snap.tickers, prices=new, price_ts=price_ts, cov=snap.cov
        )
    )


def set_positions(store: Store, portfolio_id: str, positions: dict[str, int], cash: str | None = None) -> None:
    state = store.read_portfolio(portfolio_id)
    held = {t: Position(qty=q, avg_price=Decimal(100)) for t, q in positions.items()}
    new_cash = Decimal(cash) if cash is not None else state.cash
    store.write_portfolio(PortfolioState(**{**state.__dict__, "positions": held, "cash": new_cash}))


def held(store: Store, portfolio_id: str = "main") -> dict[str, int]:
    return {t: p.qty for t, p in store.read_portfolio(portfolio_id).positions.items() if p.qty}


def pending(action: str, action_id: str = "a1", **extra: Any) -> dict[str, Any]:
    return {
        "action_id": action_id, "action": action, "actor": "auto:breaker", "reason": "crisis", "rule_id": "breaker",
        "alert_id": "x", **extra,
    }  # fmt: skip


def sell(ticker: str, qty: int) -> dict[str, Any]:
    """One leg of a reduce plan as ``plan_reduction`` writes it (fixed when the rule fired)."""
    return {"ticker": ticker, "side": "SELL", "qty": qty, "notional": 0.0, "unrealized_pnl": 0.0}


def fills(rm: RiskManager) -> list[tuple[str, int]]:
    """(client order id, shares) of every fill, oldest first."""
    log = reversed(rm.trade_log(1000))
    return [(t["client_order_id"], t["fill"]["qty"]) for t in log if t["status"] == "FILLED"]


def orders_audited(store: Store, portfolio_id: str = "main") -> list[dict[str, Any]]:
    records = store.read_stream_json(PortfolioKeys(portfolio_id).audit, count=1000, newest_first=False)
    return [r for r in records if r["action"] == "automated_order"]


def run(rm: RiskManager, item: dict[str, Any], portfolio_id: str = "main") -> Any:
    """Run one pending action through the real RiskManager, auditing its steps and orders like the engine."""
    keys = PortfolioKeys(portfolio_id)
    return ResponseRunner(lambda pid: rm).run(portfolio_id, item, lambda r: rm.store.append_audit(keys.audit, r))


# -- a missing price is never "done" ------------------------------------------------------------------------


def test_a_flatten_with_every_price_missing_is_not_ok_names_them_and_sends_nothing(desk: Desk, store: Store) -> None:
    rm = desk()
    set_prices(store, {"AAA": float("nan"), "BBB": float("nan")})
    outcome = run(rm, pending("flatten"))
    assert not outcome.ok
    assert outcome.details["unpriced"] == ["AAA", "BBB"]
    assert "NOT PRICED" in outcome.summary and "AAA, BBB" in outcome.summary
    assert held(store) == {"AAA": 1000, "BBB": 2000} and orders_audited(store) == [] and fills(rm) == []


def test_a_flatten_with_one_price_missing_sends_the_priced_leg_to_the_gate_and_is_still_not_ok(
    desk: Desk, store: Store
) -> None:
    rm = desk()
    set_prices(store, {"AAA": float("nan")})
    outcome = run(rm, pending("flatten"))
    assert not outcome.ok and outcome.details["unpriced"] == ["AAA"]
    assert [o["ticker"] for o in orders_audited(store)] == ["BBB"]  # the gate decides BBB; AAA is never sent
    assert held(store)["AAA"] == 1000
    assert "AAA" not in [leg["ticker"] for leg in outcome.details["legs"]]  # no leg sized without a price


def test_a_reduce_planned_without_prices_is_not_ok_and_names_the_unpriced_positions(desk: Desk, store: Store) -> None:
    rm = desk()
    set_prices(store, {"AAA": float("nan"), "BBB": float("nan")})
    rows = [{"ticker": "AAA", "qty": 1000, "last": None}, {"ticker": "BBB", "qty": 2000, "last": None}]
    plan = plan_reduction(rows, 0.5)
    assert plan == []  # nothing could be sized when the rule fired
    outcome = run(rm, pending("reduce:0.5", plan=plan))
    assert not outcome.ok and outcome.details["unpriced"] == ["AAA", "BBB"]
    assert "NOT executed" in outcome.summary and "AAA, BBB" in outcome.summary
    assert held(store) == {"AAA": 1000, "BBB": 2000}


def test_a_reduce_whose_plan_came_out_empty_while_positions_are_held_is_not_ok(desk: Desk, store: Store) -> None:
    rm = desk()  # the prices are back by the time it runs, the plan (fixed at the trigger) is still empty
    outcome = run(rm, pending("reduce:0.5", plan=[]))
    assert not outcome.ok and "no leg was planned" in outcome.summary and "AAA, BBB" in outcome.summary


def test_a_reduce_on_a_truly_flat_book_is_ok(desk: Desk, store: Store) -> None:
    rm = desk()
    set_positions(store, "main", {})
    outcome = run(rm, pending("reduce:0.5", plan=[]))
    assert outcome.ok and "the book is flat" in outcome.summary


def margin_spec() -> dict[str, Any]:
    return {"warning_level": 150.0, "warning_op": "<", "critical_level": 120.0, "fraction": 0.5,
            "gross_at_trigger": 160_000.0, "budget": 80_000.0}  # fmt: skip


@pytest.mark.parametrize("missing", [["CCC", "DDD"], ["DDD"]])
def test_a_sell_down_never_counts_a_level_it_cannot_read_as_reached(
    desk: Desk, store: Store, missing: list[str]
) -> None:
    rm = desk("hedge")
    set_positions(store, "hedge", {"CCC": 300, "DDD": -4000}, cash="128000.00")
    # 128 000 + 300 x 200 - 4 000 x 25 = 88 000 equity on 160 000 gross at 50%: 110%
    assert rm.get_dashboard_metrics().attrs["totals"]["margin_level"] == pytest.approx(110.0)
    set_prices(store, dict.fromkeys(missing, float("nan")))
    # with DDD alone missing the short counts as worth 0: 188 000 / (0.5 x 60 000) = 627%, which is no level
    outcome = run(rm, pending("reduce:0.5", margin=margin_spec()), "hedge")
    assert not outcome.ok and outcome.details["reached"] is False
    assert outcome.details["margin_level_after"] is None and outcome.details["unpriced"] == missing
    assert "FAILED" in outcome.summary and ", ".join(missing) in outcome.summary
    assert held(store, "hedge") == {"CCC": 300, "DDD": -4000} and fills(rm) == []


def test_a_sell_down_on_a_flat_margin_book_has_nothing_to_restore(desk: Desk, store: Store) -> None:
    rm = desk("hedge")
    set_positions(store, "hedge", {})
    outcome = run(rm, pending("reduce:0.5", margin=margin_spec()), "hedge")
    assert outcome.ok and outcome.details["reached"] is True and "the book is flat" in outcome.summary


# -- legs above the per-order caps go as child orders within them ----------------------------------------------


@pytest.mark.parametrize(
    ("max_qty", "children"),
    [(2000, [2000]), (1999, [1999, 1]), (2001, [2000]), (500, [500, 500, 500, 500]), (667, [667, 667, 666])],
)
def test_a_leg_is_split_at_the_live_max_order_qty(desk: Desk, store: Store, max_qty: int, children: list[int]) -> None:
    rm = desk()
    rm.set_limits({"max_order_qty": max_qty}, "risk-officer", "fat-finger cap")  # the live limits, not settings
    outcome = run(rm, pending("reduce:1", plan=[sell("BBB", 2000)]))
    assert outcome.ok, outcome.summary
    assert fills(rm) == [(child_order_id("a1-0", k), q) for k, q in enumerate(children)]
    assert "BBB" not in held(store)
    audited = orders_audited(store)
    assert [(o["qty"], o["intent"], o["actor"]) for o in audited] == [
        (q, OrderIntent.LIQUIDATION.value, "auto:breaker") for q in children
    ]
    assert (f"in {len(children)} orders" in outcome.summary) is (len(children) > 1)


@pytest.mark.parametrize(
    ("price", "cap", "qty", "children"),
    [
        (50.0, "100000", 2000, [2000]),  # notional exactly at the cap: one order
        (50.0, "99999.99", 2000, [1999, 1]),  # a cent under it: 1999 x 50 = 99 950
        (33.33, "100000", 7000, [3000, 3000, 1000]),  # 3000 x 33.33 = 99 990, 3001 x 33.33 = 100 023.33
        (50.0, "123456", 8000, [2469, 2469, 2469, 593]),  # 2469 x 50 = 123 450
    ],
)
def test_a_leg_is_split_at_the_live_max_order_notional_on_the_fill_price(
    desk: Desk, store: Store, price: float, cap: str, qty: int, children: list[int]
) -> None:
    rm = desk()
    set_positions(store, "main", {"BBB": qty})
    set_prices(store, {"BBB": price})
    rm.set_limits({"max_order_notional": cap}, "risk-officer", "notional cap")
    outcome = run(rm, pending("reduce:1", plan=[sell("BBB", qty)]))
    assert outcome.ok, outcome.summary
    assert [q for _, q in fills(rm)] == children
    for q in children:  # independent check: each child within the cap, and the full children one share short of it
        assert Decimal(repr(price)) * q <= Decimal(cap)
    assert Decimal(repr(price)) * (children[0] + 1) > Decimal(cap)
    assert "BBB" not in held(store)


def test_a_position_over_the_shipped_notional_cap_is_flattened_in_orders_of_one_million(
    desk: Desk, store: Store
) -> None:
    rm = desk()
    rm.set_limits({"max_order_notional": "1000000", "max_order_qty": 1_000_000}, "risk-officer", "shipped caps")
    set_positions(store, "main", {"AAA": 30_001})  # $3,000,100 at 100
    outcome = run(rm, pending("flatten"))
    assert outcome.ok, outcome.summary
    assert fills(rm) == [("a1-AAA-c0", 10_000), ("a1-AAA-c1", 10_000), ("a1-AAA-c2", 10_000), ("a1-AAA-c3", 1)]
    assert held(store) == {}


def test_the_leg_stops_at_the_first_refused_child_and_reports_what_was_filled(desk: Desk, store: Store) -> None:
    rm = desk()
    rm.set_limits({"max_order_qty": 500}, "risk-officer", "fat-finger cap")
    trader = desk()

    class TraderSellsMeanwhile:
        """The real RiskManager; a trader sells 300 BBB right after the automation's second child fills."""

        def __init__(self) -> None:
            self.sent = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(rm, name)

        def execute_trade(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            result = rm.execute_trade(*args, **kwargs)
            self.sent += 1
            if self.sent == 2:
                assert trader.execute_trade("BBB", 300, "SELL", client_order_id="t1", actor="trader")["status"] == (
                    "FILLED"
                )
            return result

    control = TraderSellsMeanwhile()
    outcome = ResponseRunner(lambda pid: control).run("main", pending("reduce:1", plan=[sell("BBB", 2000)]), None)
    assert not outcome.ok
    assert control.sent == 4  # c0, c1, c2 filled (200 left), c3 (500) refused, no further child sent
    assert held(store)["BBB"] == 200  # never oversold or flipped
    (refused,) = outcome.details["refused"]
    assert (refused["ticker"], refused["filled"], refused["qty"]) == ("BBB", 1500, 500)
    assert "OVERSELL" in refused["codes"]
    assert "1500 of 2000 filled in 4 orders" in outcome.summary and "REFUSED: SELL 500 BBB" in outcome.summary
    assert [cid for cid, _ in fills(rm)] == ["a1-0-c0", "a1-0-c1", "t1", "a1-0-c2"]


# -- re-runs after a crash: each child id fills once ----------------------------------------------------------------


@pytest.mark.parametrize("action", ["reduce:1", "flatten"])
def test_a_crash_between_children_is_finished_by_a_rerun_without_trading_twice(
    desk: Desk, store: Store, action: str
) -> None:
    rm = desk()
    rm.set_limits({"max_order_qty": 500}, "risk-officer", "fat-finger cap")
    set_positions(store, "main", {"BBB": 2000})

    class DiesAfterTwoFills:
        def __init__(self) -> None:
            self.filled = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(rm, name)

        def execute_trade(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            result = rm.execute_trade(*args, **kwargs)
            self.filled += result["status"] == "FILLED"
            if self.filled == 2:
                raise Crash("died")
            return result

    item = pending(action, plan=[sell("BBB", 2000)]) if action != "flatten" else pending(action)
    with pytest.raises(Crash):
        ResponseRunner(lambda pid: DiesAfterTwoFills()).run("main", item, None)
    assert held(store) == {"BBB": 1000}

    outcome = run(desk(), item)  # the restarted engine, the same pending action
    assert outcome.ok, outcome.summary
    leg = "a1-0" if action != "flatten" else "a1-BBB"
    assert fills(rm) == [(child_order_id(leg, k), 500) for k in range(4)]  # each child once, 2000 in all
    assert held(store) == {}
    if action != "flatten":
        assert "1000 filled by an earlier run" in outcome.summary

    again = run(desk(), item)  # a third run of a finished action trades nothing
    assert again.ok and len(fills(rm)) == 4 and held(store) == {}


# -- a fixed plan is clipped to the book it runs on --------------------------------------------------------------


def test_two_reductions_on_one_bar_the_second_is_clipped_to_what_is_left(desk: Desk, store: Store) -> None:
    rm = desk()
    set_positions(store, "main", {"AAA": 4000, "BBB": 8000}, cash="200000.00")
    rows = [{"ticker": "AAA", "qty": 4000, "last": 100.0, "unrealized_pnl": -1000.0},
            {"ticker": "BBB", "qty": 8000, "last": 50.0, "unrealized_pnl": -3000.0}]  # fmt: skip
    plans = [plan_reduction(rows, 0.3), plan_reduction(rows, 0.3)]  # both fixed from the same snapshot
    assert plans[0] == plans[1] and [(leg["ticker"], leg["qty"]) for leg in plans[0]] == [("BBB", 4800)]

    first = run(rm, pending("reduce:0.3", "dd", plan=plans[0]))
    assert first.ok and held(store) == {"AAA": 4000, "BBB": 3200}
    second = run(rm, pending("reduce:0.3", "var", plan=plans[1]))
    assert second.ok, second.summary
    assert "clipped from 4800 to the 3200 held" in second.summary
    assert held(store) == {"AAA": 4000} and fills(rm)[-1] == ("var-0-c0", 3200)

    third = run(rm, pending("reduce:0.3", "mdd", plan=plans[0]))  # flat now: nothing sent, and said
    assert third.ok and "SKIPPED" in third.summary and "flat now" in third.summary
    assert len(fills(rm)) == 2 and [o["client_order_id"] for o in orders_audited(store)] == ["dd-0-c0", "var-0-c0"]


def test_a_leg_whose_position_flipped_since_the_trigger_is_skipped_not_sent(desk: Desk, store: Store) -> None:
    rm = desk("hedge")  # a margin account: DDD is short now, the plan (from a long) says SELL
    outcome = run(rm, pending("reduce:0.5", plan=[sell("DDD", 500), sell("CCC", 100)]), "hedge")
    assert outcome.ok, outcome.summary
    assert "SELL 500 DDD SKIPPED (now -1000: a SELL would grow it, nothing sent)" in outcome.summary
    assert held(store, "hedge") == {"CCC": 200, "DDD": -1000}
    assert [o["ticker"] for o in orders_audited(store, "hedge")] == ["CCC"]


# -- a child refused by the fat-finger caps alone is sized again, under the next child id ------------------------


class MovesBeforeEachOrder:
    """The real RiskManager; before each order reaches the gate the market prints the next price of ``prices``
    (the last one stays), or the risk officer's ``limits`` change lands."""

    def __init__(self, rm: RiskManager, store: Store, prices: list[float], limits: dict[str, Any] | None = None):
        self.rm, self.store, self.prices, self.limits, self.sent = rm, store, prices, limits, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rm, name)

    def execute_trade(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self.prices:
            set_prices(self.store, {"BBB": self.prices[min(self.sent, len(self.prices) - 1)]})
        if self.limits and self.sent == 0:
            self.rm.set_limits(self.limits, "risk-officer", "cap lowered meanwhile")
        self.sent += 1
        return self.rm.execute_trade(*args, **kwargs)


def test_a_one_cent_uptick_past_the_notional_cap_re_sizes_the_child_and_the_short_is_covered(
    desk: Desk, store: Store
) -> None:
    rm = desk("hedge")
    rm.set_limits({"max_order_notional": 10_000}, "risk-officer", "cap")
    set_positions(store, "hedge", {"BBB": -2000})  # 200 x 50.00 = 10,000: the book's price sizes children of 200
    control = MovesBeforeEachOrder(rm, store, [50.01])
    outcome = ResponseRunner(lambda pid: control).run("hedge", pending("flatten"), None)
    assert outcome.ok, outcome.summary
    assert held(store, "hedge") == {}
    # 200 x 50.01 = 10,002 refused; floor(10,000 / 50.01) = 199: ten children of 199 and one of 10 (2000 in all)
    assert Decimal("50.01") * 200 > 10_000 >= Decimal("50.01") * 199
    assert fills(rm) == [(child_order_id("a1-BBB", k), 199) for k in range(1, 11)] + [("a1-BBB-c11", 10)]
    log = list(reversed(rm.trade_log(1000)))
    assert (log[0]["client_order_id"], log[0]["status"]) == ("a1-BBB-c0", "REJECTED")  # c0 never sent again
    assert [r["code"] for r in log[0]["reasons"]] == ["MAX_NOTIONAL"]
    assert len({r["client_order_id"] for r in log}) == len(log) == 12
    assert "2000 of 2000 filled in 12 orders; 1 sent again smaller after a fat-finger cap refusal" in outcome.summary


@pytest.mark.parametrize(
    ("last_price", "filled"),
    [(53.06, True), (54.12, False)],  # the third re-sized child (188) fills at 53.06 (9,975.28), not at 54.12
)
def test_re_sizing_is_bounded_at_three_children_in_a_row(
    desk: Desk, store: Store, last_price: float, filled: bool
) -> None:
    from logic.action_orders import MAX_CHILD_RESIZES

    assert MAX_CHILD_RESIZES == 3
    rm = desk("hedge")
    rm.set_limits({"max_order_notional": 10_000}, "risk-officer", "cap")
    set_positions(store, "hedge", {"BBB": -400})
    # a squeeze: every re-size (the refusal's max_qty_allowed) is overtaken by the next print
    control = MovesBeforeEachOrder(rm, store, [51.00, 52.02, 53.06, last_price])
    outcome = ResponseRunner(lambda pid: control).run("hedge", pending("flatten"), None)
    sizes = [math.floor(Decimal(10_000) / Decimal(repr(p))) for p in (51.00, 52.02, 53.06)]
    assert sizes == [196, 192, 188]
    sent = [(r["client_order_id"], r["decision"]["qty"], r["status"]) for r in reversed(rm.trade_log(1000))]
    assert sent[:4] == [
        ("a1-BBB-c0", 200, "REJECTED"), ("a1-BBB-c1", 196, "REJECTED"), ("a1-BBB-c2", 192, "REJECTED"),
        ("a1-BBB-c3", 188, "FILLED" if filled else "REJECTED"),
    ]  # fmt: skip
    if filled:  # a fill starts the count again: the rest is sized at 53.06 and filled
        assert outcome.ok, outcome.summary
        assert held(store, "hedge") == {} and [q for _, q in fills(rm)] == [188, 188, 24]
    else:  # the fourth refusal in a row stops the leg, reported like any refusal
        assert not outcome.ok and control.sent == 4 and fills(rm) == []
        assert held(store, "hedge") == {"BBB": -400}
        (refused,) = outcome.details["refused"]
        assert refused["codes"] == ["MAX_NOTIONAL"] and refused["qty"] == 400
        assert "0 of 400 filled in 4 orders" in outcome.summary


def test_a_child_refused_by_a_max_order_qty_lowered_meanwhile_is_re_sized_to_it(desk: Desk, store: Store) -> None:
    rm = desk()
    rm.set_limits({"max_order_qty": 500}, "risk-officer", "cap")
    control = MovesBeforeEachOrder(rm, store, [], limits={"max_order_qty": 300})  # lands before the first child
    outcome = ResponseRunner(lambda pid: control).run("main", pending("reduce:1", plan=[sell("BBB", 2000)]), None)
    assert outcome.ok, outcome.summary
    log = list(reversed(rm.trade_log(1000)))
    first = (log[0]["client_order_id"], log[0]["status"], [r["code"] for r in log[0]["reasons"]])
    assert first == ("a1-0-c0", "REJECTED", ["BAD_QUANTITY"])
    assert [o["qty"] for o in outcome.details["legs"][0]["orders"]] == [500, *[300] * 6, 200]
    assert fills(rm) == [(child_order_id("a1-0", k), 300) for k in range(1, 7)] + [("a1-0-c7", 200)]
    assert "BBB" not in held(store)


def test_a_rerun_after_a_re_sized_child_counts_the_fill_past_the_refused_id(desk: Desk, store: Store) -> None:
    rm = desk()
    rm.set_limits({"max_order_notional": 10_000}, "risk-officer", "cap")
    inner = MovesBeforeEachOrder(rm, store, [50.01])

    class DiesAfterFirstFill:
        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

        def execute_trade(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            result = inner.execute_trade(*args, **kwargs)
            if result["status"] == "FILLED":
                raise Crash("died")
            return result

    item = pending("reduce:0.5", plan=[sell("BBB", 1000)], created_at=NOW)
    with pytest.raises(Crash):
        ResponseRunner(lambda pid: DiesAfterFirstFill()).run("main", item, None)
    assert fills(rm) == [("a1-0-c1", 199)]  # c0 (200 at 50.01) refused, c1 filled
    outcome = run(desk(), item)
    assert outcome.ok, outcome.summary
    assert held(store) == {"AAA": 1000, "BBB": 1000}  # 1000 sold in all, never 1199
    assert [cid for cid, _ in fills(rm)] == [child_order_id("a1-0", k) for k in range(1, 7)]
    assert "199 filled by an earlier run" in outcome.summary


# -- a re-run counts fills whose idempotency records are gone, or were written under the pre-child leg id -------


@pytest.mark.parametrize("plan_qty", [1000, 1500])
def test_a_rerun_of_a_leg_the_pre_child_code_sent_under_the_bare_leg_id_never_sells_it_twice(
    desk: Desk, store: Store, plan_qty: int
) -> None:
    rm = desk()
    item = pending("reduce:0.5", plan=[sell("BBB", plan_qty)], created_at=NOW)
    # yesterday's code sent the whole leg as one order under the leg id, then the process died
    old = rm.execute_trade("BBB", 1000, "SELL", client_order_id="a1-0", actor="auto:breaker",
                           intent=OrderIntent.LIQUIDATION, automation=AUTOMATION)  # fmt: skip
    assert old["status"] == "FILLED"
    outcome = run(desk(), item)
    assert outcome.ok, outcome.summary
    assert held(store) == {"AAA": 1000, "BBB": 2000 - plan_qty}
    assert fills(rm) == [("a1-0", 1000)] + ([("a1-0-c0", 500)] if plan_qty > 1000 else [])
    assert "1000 filled by an earlier run" in outcome.summary


@pytest.mark.parametrize("created_at", [NOW, None])
def test_a_rerun_after_the_idempotency_records_were_pruned_reads_the_trade_log(
    desk: Desk, store: Store, created_at: float | None
) -> None:
    rm = desk()
    rm.set_limits({"max_order_qty": 250}, "risk-officer", "cap")
    extra = {"created_at": created_at} if created_at is not None else {}
    item = pending("reduce:0.5", plan=[sell("BBB", 1000)], **extra)

    class DiesAfterTwoFills:
        filled = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(rm, name)

        def execute_trade(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            result = rm.execute_trade(*args, **kwargs)
            DiesAfterTwoFills.filled += result["status"] == "FILLED"
            if DiesAfterTwoFills.filled == 2:
                raise Crash("died")
            return result

    with pytest.raises(Crash):
        ResponseRunner(lambda pid: DiesAfterTwoFills()).run("main", item, None)
    assert held(store)["BBB"] == 1500
    assert store.prune_order_ids("main", NOW + 1) == 2  # the housekeeping: both children's records are gone
    assert store.read_order("main", "a1-0-c0") is None
    outcome = run(desk(), item)
    assert outcome.ok, outcome.summary
    assert held(store) == {"AAA": 1000, "BBB": 1000}  # 1000 sold in all
    assert fills(rm) == [(child_order_id("a1-0", k), 250) for k in range(4)]  # c0, c1 never sent again
