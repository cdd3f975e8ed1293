"""Automated responses through the real RiskManager: circuit breakers, position reduction (largest losers
first), audit and their own alert; re-runs after a crash change nothing twice."""

from __future__ import annotations

import dataclasses
import math
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

import warmup
from engine.records import OrderIntent, Position
from engine.store import PortfolioKeys, Store
from logic.actions import ResponseRunner, margin_response_spec, parse_action, plan_margin_sell_down, plan_reduction
from logic.risk_manager import RiskManager
from notifications.service import build_delivering_engine

from .alerts_support import T0, SimClock, SleepRecorder, delivered_events, rule, snapshot
from .conftest import store_contents

DD_HALT = rule(
    "drawdown_halt",
    "drawdown.daily",
    "<=",
    -0.05,
    "CRITICAL",
    description="Daily drawdown beyond 5%",
    actions=["set_state:HALTED"],
)
DD_REDUCE = rule(
    "drawdown_reduce",
    "drawdown.daily",
    "<=",
    -0.03,
    "HIGH",
    description="Daily drawdown beyond 3%",
    actions=["set_state:REDUCING"],
)

POSITIONS = [  # main's seeded book (AAA 1000 @ 100, BBB 2000 @ 50) with AAA the loser
    {
        "ticker": "AAA",
        "qty": 1000,
        "avg_price": 105.0,
        "last": 100.0,
        "market_value": 100_000.0,
        "weight": 0.1,
        "unrealized_pnl": -5_000.0,
        "realized_pnl": 0.0,
        "mfe": 0.0,
        "mae": -5_000.0,
    },
    {
        "ticker": "BBB",
        "qty": 2000,
        "avg_price": 49.0,
        "last": 50.0,
        "market_value": 100_000.0,
        "weight": 0.1,
        "unrealized_pnl": 2_000.0,
        "realized_pnl": 0.0,
        "mfe": 2_000.0,
        "mae": 0.0,
    },
]




class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way catches it."""


@pytest.fixture
def seeded(store: Store, settings: Any) -> Store:
    warmup.seed(store, settings, now=T0)
    return store


def build(store: Store, make_settings: Any, clock: SimClock, rules: list[dict[str, Any]], factory: Any = None):
    settings = make_settings(
        {"alert_rules": rules, "notifications": {"group_wait_seconds": 0, "group_interval_seconds": 0}}
    )
    return build_delivering_engine(
        store, settings, clock=clock, risk_manager_factory=factory, env={}, sleep=SleepRecorder()
    ), settings


def test_plan_reduction_takes_the_largest_losers_first_until_the_fraction_of_gross_is_cut() -> None:
    positions = [
        {"ticker": "W", "qty": 100, "last": 10.0, "unrealized_pnl": 50.0},
        {"ticker": "L1", "qty": -300, "last": 20.0, "unrealized_pnl": -900.0},  # a losing short
        {"ticker": "L2", "qty": 200, "last": 30.0, "unrealized_pnl": -100.0},
        {"ticker": "N", "qty": 0, "last": 5.0, "unrealized_pnl": 0.0},
        {"ticker": "X", "qty": 10, "last": None, "unrealized_pnl": -1e6},  # no price: cannot be planned
    ]
    gross = 100 * 10 + 300 * 20 + 200 * 30
    legs = plan_reduction(positions, 0.5)
    assert [(leg["ticker"], leg["side"], leg["qty"]) for leg in legs] == [
        ("L1", "BUY", 300),
        ("L2", "SELL", 17),
    ]
    cut = sum(leg["notional"] for leg in legs)
    assert 0.5 * gross <= cut < 0.5 * gross + 30.0  # at least the target, less than one more share over
    assert [leg["ticker"] for leg in plan_reduction(positions, 1.0)] == ["L1", "L2", "W"]
    assert sum(leg["notional"] for leg in plan_reduction(positions, 1.0)) == gross
    with pytest.raises(ValueError):
        plan_reduction(positions, 0.0)


@pytest.mark.parametrize("text", ["set_state:ACTIVE", "halt", "reduce:0", "reduce:nan", "reduce:x", "sell:0.5"])
def test_parse_action_refuses_what_an_automated_response_may_not_do(text: str) -> None:
    with pytest.raises(ValueError, match="expected 'set_state:REDUCING'"):
        parse_action(text)


def test_drawdown_beyond_the_circuit_breaker_halts_trading_audited_and_shown_as_an_alert(
    seeded: Store, make_settings: Any
) -> None:
    clock = SimClock(T0 + 5)
    engine, settings = build(seeded, make_settings, clock, [DD_REDUCE, DD_HALT])
    engine.evaluate("main", snapshot(now=clock.now, drawdown__daily=-0.06, positions=POSITIONS), clock.now)

    state = seeded.read_trading_state("main")
    assert (state.state, state.actor) == ("HALTED", "auto:drawdown_halt")
    assert "Daily drawdown beyond 5%" in state.reason and "-0.06" in state.reason
    audit = seeded.read_stream_json(PortfolioKeys("main").audit, count=10, newest_first=False)
    responses = [a for a in audit if a["action"] == "automated_response"]
    assert [(a["rule_id"], a["response"], a["ok"]) for a in responses] == [
        ("drawdown_halt", "set_state:HALTED", True),
        ("drawdown_reduce", "set_state:REDUCING", True),
    ]
    assert "already HALTED" in responses[1]["summary"]  # never loosened to REDUCING
    assert [a["state"] for a in audit if a["action"] == "set_trading_state"] == ["HALTED"]

    active = {a["rule_id"]: a for a in engine.active_alerts("main")}
    assert active["action:drawdown_halt"]["summary"] == "trading state set to HALTED (was ACTIVE)"
    assert active["action:drawdown_halt"]["severity"] == "CRITICAL"
    engine.tick(clock.now)
    notified = {e["rule_id"] for e in delivered_events(engine)}
    assert {"drawdown_halt", "action:drawdown_halt", "action:drawdown_reduce"} <= notified

    decision = RiskManager(seeded.client, "main", settings, clock).execute_trade("AAA", 10, "BUY", actor="trader")
    assert decision["status"] == "REJECTED"
    assert "TRADING_HALTED" in [r["code"] for r in decision["reasons"]]

    engine.evaluate("main", snapshot(now=clock.now + 1, drawdown__daily=-0.01), clock.now + 1)
    assert seeded.read_trading_state("main").state == "HALTED"  # only a human lifts a circuit breaker
    assert "action:drawdown_halt" in {a["rule_id"] for a in engine.active_alerts("main")}


def test_margin_critical_reduces_positions_largest_losers_first_through_the_execution_path(
    seeded: Store, make_settings: Any
) -> None:
    clock = SimClock(T0 + 5)
    reduce_rule = rule("margin_critical", "var.utilization", ">=", 1.0, "CRITICAL", actions=["reduce:0.6"])
    engine, _ = build(seeded, make_settings, clock, [reduce_rule])
    engine.evaluate("main", snapshot(now=clock.now, var__utilization=1.3, positions=POSITIONS), clock.now)

    positions = seeded.read_portfolio("main").positions
    assert "AAA" not in positions and positions["BBB"].qty == 1600  # 60% of $200k: AAA (the loser), 400 BBB
    (alert,) = [a for a in engine.active_alerts("main") if a["rule_id"] == "action:margin_critical"]
    assert alert["summary"].startswith("reduce:0.6: 2 of 2 legs filled: SELL 1000 AAA FILLED, SELL 400 BBB FILLED")
    trades = RiskManager(seeded.client, "main", None, clock).trade_log(10)
    assert sorted(t["client_order_id"] for t in trades if t["status"] == "FILLED") == [
        f"{alert['source_alert_id']}-0-0-c0",  # leg 0's child 0: a leg within the caps is one order
        f"{alert['source_alert_id']}-0-1-c0",
    ]
    assert {t["actor"] for t in trades} == {"auto:margin_critical"}


def test_a_crash_during_a_reduction_is_finished_by_the_next_engine_without_trading_twice(
    seeded: Store, make_settings: Any
) -> None:
    clock = SimClock(T0 + 5)
    reduce_rule = rule("cut", "var.utilization", ">=", 1.0, "CRITICAL", actions=["reduce:0.6", "set_state:REDUCING"])
    _, settings = build(seeded, make_settings, clock, [reduce_rule])

    class DiesAfterFirstFill:
        def __init__(self, portfolio_id: str) -> None:
            self.rm = RiskManager(seeded.client, portfolio_id, settings, clock)

        def __getattr__(self, name: str) -> Any:  # reads (the book, the limits) go to the real RiskManager
            return getattr(self.rm, name)

        def tighten_trading_state(self, state: str, reason: str, actor: str) -> Any:
            return self.rm.tighten_trading_state(state, reason, actor)

        def execute_trade(
            self,
            ticker: str,
            qty: int,
            side: str,
            client_order_id: str | None = None,
            actor: str = "trader",
            intent: OrderIntent = OrderIntent.TRADE,
            *,
            automation: object = None,
        ) -> dict[str, Any]:
            assert intent == OrderIntent.LIQUIDATION  # every automated leg is liquidation-only
            result = self.rm.execute_trade(
                ticker, qty, side, client_order_id=client_order_id, actor=actor, intent=intent, automation=automation
            )
            raise Crash(f"died after {result['status']} {ticker}")

    first, _ = build(seeded, make_settings, clock, [reduce_rule], factory=DiesAfterFirstFill)
    with pytest.raises(Crash):
        first.evaluate("main", snapshot(now=clock.now, var__utilization=1.3, positions=POSITIONS), clock.now)
    assert "AAA" not in seeded.read_portfolio("main").positions
    assert len(seeded.read_json_hash(Store.actions_key("main"))) == 2  # both actions still to be done

    second, _ = build(seeded, make_settings, clock, [reduce_rule])  # the restarted monitor, real RiskManager
    second.tick(clock.now + 1)
    second.tick(clock.now + 2)
    positions = seeded.read_portfolio("main").positions
    assert positions["BBB"].qty == 1600 and "AAA" not in positions
    fills = [t for t in RiskManager(seeded.client, "main", settings, clock).trade_log(20) if t["status"] == "FILLED"]
    assert sorted((t["fill"]["ticker"], t["fill"]["qty"]) for t in fills) == [("AAA", 1000), ("BBB", 400)]
    assert seeded.read_trading_state("main").state == "REDUCING"
    assert seeded.read_json_hash(Store.actions_key("main")) == {}
    audit = seeded.read_stream_json(PortfolioKeys("main").audit, count=20)
    assert sum(a["action"] == "automated_response" for a in audit) == 2
    (action_alert,) = [a for a in second.active_alerts("main") if a["kind"] == "action"]
    assert "2 of 2 legs filled" in action_alert["summary"] and "REDUCING" in action_alert["summary"]


def state_changes(store: Store, count: int) -> list[dict[str, Any]]:
    """The newest trading-state change records among ``main``'s last ``count`` audit records, newest first."""
    records = store.read_stream_json(PortfolioKeys("main").audit, count=count)
    return [a for a in records if a["action"] == "set_trading_state"]


def _halt_after_the_first_read(gate: RiskManager, human: RiskManager) -> list[str]:
    """Make a risk manager's HALT land right after ``gate``'s first read of the trading state (wherever the
    automation reads it: the store's read is under every one); returns the states ``gate`` read."""
    read = gate.store.read_trading_state
    seen: list[str] = []

    def read_then_halt(*args: Any, **kwargs: Any) -> Any:
        status = read(*args, **kwargs)
        seen.append(status.state)
        if len(seen) == 1:
            human.set_trading_state("HALTED", "rogue algo: stop everything", "https://idp|rm-carol")
        return status

    gate.store.read_trading_state = read_then_halt  # type: ignore[method-assign]
    return seen


def test_a_halt_landing_between_the_automations_read_and_write_is_never_loosened_to_reducing(
    seeded: Store, settings: Any
) -> None:
    # Arrange: ACTIVE; the automation's REDUCING reads ACTIVE, then a risk manager's HALT lands
    human = RiskManager(seeded.client, "main", settings, clock=lambda: T0)
    gate = RiskManager(seeded.client, "main", settings, clock=lambda: T0 + 1)
    seen = _halt_after_the_first_read(gate, human)
    runner = ResponseRunner(lambda pid: gate)

    # Act
    outcome = runner.run(
        "main",
        {"action_id": "a1", "action": "set_state:REDUCING", "actor": "auto:dd_breaker", "reason": "drawdown breaker"},
    )

    # Assert: the write was re-compared with the HALT and not made; the outcome and the audit agree
    assert seen == ["ACTIVE", "HALTED"]
    state = seeded.read_trading_state("main")
    assert (state.state, state.actor) == ("HALTED", "https://idp|rm-carol")
    assert outcome.ok and outcome.summary == "trading state already HALTED: REDUCING not needed"
    assert outcome.details == {"previous": "HALTED", "state": "HALTED", "changed": False}
    changes = state_changes(seeded, 20)
    assert [(a["actor"], a["previous"], a["state"]) for a in changes] == [("https://idp|rm-carol", "ACTIVE", "HALTED")]


def test_an_automated_halt_landing_after_a_human_reducing_still_tightens_and_names_what_it_replaced(
    seeded: Store, settings: Any
) -> None:
    human = RiskManager(seeded.client, "main", settings, clock=lambda: T0)
    gate = RiskManager(seeded.client, "main", settings, clock=lambda: T0 + 1)
    read = gate.store.read_trading_state
    landed: list[bool] = []

    def read_then_reduce(*args: Any, **kwargs: Any) -> Any:
        status = read(*args, **kwargs)
        if not landed:
            landed.append(True)
            human.set_trading_state("REDUCING", "desk review", "https://idp|rm-carol")
        return status

    gate.store.read_trading_state = read_then_reduce  # type: ignore[method-assign]

    outcome = ResponseRunner(lambda pid: gate).run(
        "main", {"action_id": "a2", "action": "set_state:HALTED", "actor": "auto:dd_halt", "reason": "breaker"}
    )

    assert outcome.summary == "trading state set to HALTED (was REDUCING)"
    assert seeded.read_trading_state("main").state == "HALTED"
    newest = state_changes(seeded, 5)
    assert [(a["actor"], a["previous"], a["state"]) for a in newest[:2]] == [
        ("auto:dd_halt", "REDUCING", "HALTED"),
        ("https://idp|rm-carol", "ACTIVE", "REDUCING"),
    ]


@pytest.mark.parametrize(
    ("held", "wanted", "written"),
    [
        ("ACTIVE", "REDUCING", True),
        ("REDUCING", "REDUCING", False),  # as strict: nothing written
        ("REDUCING", "HALTED", True),
        ("HALTED", "HALTED", False),
        ("HALTED", "REDUCING", False),  # stricter: never loosened
    ],
)
def test_an_automated_state_change_writes_only_a_stricter_state(
    seeded: Store, settings: Any, redis_client: Any, held: str, wanted: str, written: bool
) -> None:
    rm = RiskManager(seeded.client, "main", settings, clock=lambda: T0)
    rm.set_trading_state(held, "set up", "tester")
    before = store_contents(redis_client)

    outcome = ResponseRunner(lambda pid: rm).run(
        "main", {"action_id": "a3", "action": f"set_state:{wanted}", "actor": "auto:rule", "reason": "breach"}
    )

    assert outcome.ok and outcome.details["changed"] is written
    assert seeded.read_trading_state("main").state == (wanted if written else held)
    if not written:
        assert store_contents(redis_client) == before  # not even an audit record
        assert outcome.summary == f"trading state already {held}: {wanted} not needed"


@pytest.mark.parametrize(
    ("spoil", "previous"),
    [
        (lambda c, k: c.delete(k.trading_state), "MISSING"),
        (lambda c, k: c.hset(k.trading_state, "state", "PARTY"), "UNREADABLE"),
        (lambda c, k: c.set(k.trading_state, "ACTIVE"), "UNREADABLE"),
    ],
    ids=["missing", "unknown state", "wrong type"],
)
def test_an_unreadable_state_counts_as_halted_for_the_automation_which_writes_nothing(
    seeded: Store, settings: Any, redis_client: Any, spoil: Any, previous: str
) -> None:
    rm = RiskManager(seeded.client, "main", settings, clock=lambda: T0)
    spoil(redis_client, PortfolioKeys("main"))
    before = store_contents(redis_client)

    outcome = ResponseRunner(lambda pid: rm).run(
        "main", {"action_id": "a4", "action": "set_state:HALTED", "actor": "auto:rule", "reason": "breach"}
    )

    assert outcome.ok and outcome.details == {"previous": previous, "state": "HALTED", "changed": False}
    assert outcome.summary == f"trading state already {previous}, counted as HALTED: HALTED not needed"
    assert store_contents(redis_client) == before


def test_without_a_risk_manager_the_action_is_reported_as_not_executed(store: Store, make_settings: Any) -> None:
    clock = SimClock(T0)
    engine, _ = build(store, make_settings, clock, [DD_HALT], factory=None)
    engine.responses.factory = None  # a deployment where no RiskManager could be wired
    engine.evaluate("main", snapshot(drawdown__daily=-0.2), T0)
    (alert,) = [a for a in engine.active_alerts("main") if a["kind"] == "action"]
    assert alert["severity"] == "CRITICAL" and not alert["ok"] and "NOT executed" in alert["summary"]
    assert math.isclose(alert["value"], -0.2)


# -- the margin sell-down ------------------------------------------------------------------------------------

MARGIN_WARNING = rule("margin_warning", "margin.level", "<", 150.0, "HIGH", description="Margin below 150%")
LEVERED = {"AAA": 2000, "BBB": 4000, "CCC": 500, "DDD": -2000}
"""A margin book at the seed prices (AAA 100, BBB 50, CCC 200, DDD 25): gross $550k."""


def margin_critical(fraction: float) -> dict[str, Any]:
    return rule(
        "margin_critical", "margin.level", "<", 120.0, "CRITICAL", description="Margin below 120%",
        actions=[f"reduce:{fraction}"],
    )  # fmt: skip


def lever(store: Store, level: float) -> tuple[float, float]:
    """Rewrite ``hedge`` (initial margin 50%) as LEVERED with the cash that puts its margin level at
    ``level`` percent; returns (equity, gross)."""
    prices = dict(zip(store.read_market().tickers, store.read_market().prices.tolist(), strict=True))
    value = sum(q * prices[t] for t, q in LEVERED.items())
    gross = sum(abs(q) * prices[t] for t, q in LEVERED.items())
    equity = level / 100.0 * 0.5 * gross
    old = store.read_portfolio("hedge")
    store.write_portfolio(
        dataclasses.replace(
            old,
            cash=Decimal(repr(round(equity - value, 2))),
            positions={t: Position(q, Decimal(repr(prices[t]))) for t, q in LEVERED.items()},
        )
    )
    return equity, gross


def margin_level(store: Store, fees_of: Any = None) -> float:
    """Equity / (50% of gross) x 100 from the stored book and prices, computed here."""
    market = store.read_market()
    prices = dict(zip(market.tickers, market.prices.tolist(), strict=True))
    book = store.read_portfolio("hedge")
    value = sum(p.qty * prices[t] for t, p in book.positions.items())
    gross = sum(abs(p.qty) * prices[t] for t, p in book.positions.items())
    return (float(book.cash) + value) / (0.5 * gross) * 100.0


def component_order(store: Store) -> list[str]:
    """Held tickers by component VaR, largest first: x_i (Σx)_i, the ranking of z x_i (Σx)_i / σ."""
    market = store.read_market()
    prices = dict(zip(market.tickers, market.prices.tolist(), strict=True))
    x = np.array([LEVERED.get(t, 0) * prices[t] for t in market.tickers])
    component = x * (market.cov @ x)
    return [market.tickers[i] for i in np.argsort(-component) if x[i] != 0]


def margin_snapshot(level: float, gross: float, now: float) -> dict[str, Any]:
    return snapshot("hedge", now=now, margin__level=level, gross_exposure=gross)


def test_margin_below_critical_sells_the_largest_risk_contributor_just_past_the_warning_level(
    seeded: Store, make_settings: Any
) -> None:
    clock = SimClock(T0 + 5)
    equity, gross = lever(seeded, 110.0)
    engine, settings = build(seeded, make_settings, clock, [MARGIN_WARNING, margin_critical(0.5)])
    engine.evaluate("hedge", margin_snapshot(110.0, gross, clock.now), clock.now)

    first = component_order(seeded)[0]
    trades = [t for t in RiskManager(seeded.client, "hedge", settings, clock).trade_log(20)]
    assert [(t["status"], t["fill"]["ticker"], t["actor"]) for t in trades] == [
        ("FILLED", first, "auto:margin_critical")
    ]  # one leg: the largest contributor alone covers the cut
    sold = trades[0]["fill"]["qty"]
    assert margin_level(seeded) >= 150.0
    # the fewest shares: one share fewer (with its own fee) would have left the level below the warning
    price = float(trades[0]["fill"]["price"])
    fee = max(0.01 * (sold - 1), 1.0)
    assert 100.0 * (equity - fee) / (0.5 * (gross - (sold - 1) * price)) < 150.0
    (alert,) = [a for a in engine.active_alerts("hedge") if a["rule_id"] == "action:margin_critical"]
    assert alert["ok"] and "back above the warning level 150%" in alert["summary"]
    audit = seeded.read_stream_json(PortfolioKeys("hedge").audit, count=50, newest_first=False)
    orders = [a for a in audit if a["action"] == "automated_order"]
    assert [(o["ticker"], o["qty"], o["intent"], o["status"], o["rule_id"]) for o in orders] == [
        (first, sold, "liquidation", "FILLED", "margin_critical")
    ]
    steps = [a["step"] for a in audit if a["action"] == "automated_step"]
    assert steps == ["plan", "measure"]
    (outcome,) = [a for a in audit if a["action"] == "automated_response"]
    assert outcome["ok"] and outcome["details"]["margin_level_after"] >= 150.0


def test_the_warning_level_is_read_from_the_rules_not_assumed(seeded: Store, make_settings: Any) -> None:
    clock = SimClock(T0 + 5)
    _, gross = lever(seeded, 110.0)
    warning_at_130 = {**MARGIN_WARNING, "threshold": 130.0}
    engine, _ = build(seeded, make_settings, clock, [warning_at_130, margin_critical(0.5)])
    engine.evaluate("hedge", margin_snapshot(110.0, gross, clock.now), clock.now)
    assert 130.0 <= margin_level(seeded) < 131.0  # just past 130, far from 150


def test_a_sell_down_capped_by_its_fraction_says_it_did_not_reach_the_warning_level(
    seeded: Store, make_settings: Any
) -> None:
    clock = SimClock(T0 + 5)
    _, gross = lever(seeded, 110.0)
    engine, settings = build(seeded, make_settings, clock, [MARGIN_WARNING, margin_critical(0.1)])
    engine.evaluate("hedge", margin_snapshot(110.0, gross, clock.now), clock.now)

    fills = [t["fill"] for t in RiskManager(seeded.client, "hedge", settings, clock).trade_log(20)]
    assert 0 < sum(float(f["notional"]) for f in fills) <= 0.1 * gross  # never more than the fraction
    assert 110.0 < margin_level(seeded) < 150.0
    (alert,) = [a for a in engine.active_alerts("hedge") if a["rule_id"] == "action:margin_critical"]
    assert not alert["ok"] and alert["severity"] == "CRITICAL"
    assert "still below the warning level 150%" in alert["summary"]
    assert "the configured fraction is sold" in alert["summary"]


def test_a_refused_leg_fails_the_response_naming_the_leg_and_its_reason(seeded: Store, make_settings: Any) -> None:
    clock = SimClock(T0 + 5)
    _, gross = lever(seeded, 110.0)
    engine, _ = build(seeded, make_settings, clock, [MARGIN_WARNING, margin_critical(0.5)])
    clock.advance(3600)  # the prices are an hour old: every order is refused (fail closed on stale data)
    engine.evaluate("hedge", margin_snapshot(110.0, gross, clock.now), clock.now)

    (alert,) = [a for a in engine.active_alerts("hedge") if a["rule_id"] == "action:margin_critical"]
    first = component_order(seeded)[0]
    assert not alert["ok"] and "FAILED" in alert["summary"]
    assert "REFUSED: SELL" in alert["summary"] and first in alert["summary"] and "STALE" in alert["summary"]
    audit = seeded.read_stream_json(PortfolioKeys("hedge").audit, count=50)
    (outcome,) = [a for a in audit if a["action"] == "automated_response"]
    assert [r["ticker"] for r in outcome["details"]["refused"]] == [first]
    assert seeded.read_portfolio("hedge").positions[first].qty == LEVERED[first]  # nothing traded


def test_plan_margin_sell_down_matches_the_closed_form_and_takes_hedges_last() -> None:
    rows = [
        {"ticker": "H", "qty": -100, "last": 10.0, "component_var": -50.0},  # a hedge
        {"ticker": "R1", "qty": 100, "last": 100.0, "component_var": 900.0},
        {"ticker": "R2", "qty": 1000, "last": 20.0, "component_var": 400.0},
    ]
    equity, gross, m = 15_000.0, 31_000.0, 0.5  # level 96.8%
    legs = plan_margin_sell_down(rows, equity, gross, m, 150.0, budget=1e9)
    # G' <= 100 E / (m T) = 20 000: cut 11 000 = all of R1 (10 000) then 50 shares of R2 (1 000) + the cushion
    assert [(leg["ticker"], leg["side"], leg["qty"]) for leg in legs] == [("R1", "SELL", 100), ("R2", "SELL", 51)]
    fee = lambda shares, price: 1.0  # noqa: E731 - one dollar a fill
    legs = plan_margin_sell_down(rows, equity, gross, m, 150.0, budget=1e9, fee=fee)
    left_e, left_g = equity - len(legs), gross - sum(leg["notional"] for leg in legs)
    assert 100 * left_e / (m * left_g) >= 150.0
    assert 100 * left_e / (m * (left_g + 20.0)) < 150.0  # one R2 share fewer would not do
    assert [leg["ticker"] for leg in plan_margin_sell_down(rows, equity, gross, m, 150.0, budget=10_000.0)] == ["R1"]
    everything = plan_margin_sell_down(rows, -1.0, gross, m, 150.0, budget=1e9)
    assert [leg["ticker"] for leg in everything] == ["R1", "R2", "H"]  # equity <= 0: the level cannot be met


def test_flatten_closes_every_position_with_liquidation_orders(seeded: Store, make_settings: Any) -> None:
    clock = SimClock(T0 + 5)
    halt_and_flatten = {**DD_HALT, "actions": ["set_state:HALTED", "flatten"]}
    engine, _ = build(seeded, make_settings, clock, [halt_and_flatten])
    engine.evaluate("main", snapshot(now=clock.now, drawdown__daily=-0.06), clock.now)
    audit = seeded.read_stream_json(PortfolioKeys("main").audit, count=50, newest_first=False)
    orders = [a for a in audit if a["action"] == "automated_order"]
    assert {(o["ticker"], o["side"], o["qty"], o["intent"]) for o in orders} == {
        ("AAA", "SELL", 1000, "liquidation"),
        ("BBB", "SELL", 2000, "liquidation"),
    }
    assert seeded.read_trading_state("main").state == "HALTED"


def test_flatten_in_halted_leaves_the_book_flat(seeded: Store, make_settings: Any) -> None:
    clock = SimClock(T0 + 5)
    halt_and_flatten = {**DD_HALT, "actions": ["set_state:HALTED", "flatten"]}
    engine, _ = build(seeded, make_settings, clock, [halt_and_flatten])
    engine.evaluate("main", snapshot(now=clock.now, drawdown__daily=-0.06), clock.now)
    assert all(p.qty == 0 for p in seeded.read_portfolio("main").positions.values())
    (alert,) = [a for a in engine.active_alerts("main") if a["kind"] == "action"]
    assert alert["ok"] and "2 of 2 legs filled" in alert["summary"]


def test_the_warning_level_is_the_highest_margin_rule_and_without_one_the_critical_level_itself() -> None:
    spec = margin_response_spec(0.25, 120.0, "<", [(150.0, "<"), (140.0, "<"), (300.0, ">")], 1000.0)
    assert (spec["warning_level"], spec["warning_op"], spec["budget"]) == (150.0, "<", 250.0)
    assert margin_response_spec(0.5, 120.0, "<", [(150.0, "<"), (150.0, "<=")], 10.0)["warning_op"] == "<="
    alone = margin_response_spec(1.0, 120.0, "<", [], 10.0)
    assert (alone["warning_level"], alone["critical_level"]) == (120.0, 120.0)


def test_a_margin_rule_queues_a_sell_down_aimed_at_the_warning_level_not_a_fixed_plan(
    seeded: Store, make_settings: Any
) -> None:
    clock = SimClock(T0 + 5)
    engine, _ = build(seeded, make_settings, clock, [MARGIN_WARNING, margin_critical(0.25)])
    changes = engine.planner.plan_evaluation(
        "hedge", margin_snapshot(110.0, 80_000.0, clock.now), clock.now, {}, {}, engine.rulebook.rules()
    )
    (pending,) = changes.actions.values()
    assert "plan" not in pending
    assert pending["margin"] == {
        "warning_level": 150.0,
        "warning_op": "<",
        "critical_level": 120.0,
        "fraction": 0.25,
        "gross_at_trigger": 80_000.0,
        "budget": 20_000.0,
    }


def test_drawdown_halt_and_margin_critical_together_halt_then_sell_down_while_halted(
    seeded: Store, make_settings: Any
) -> None:
    clock = SimClock(T0 + 5)
    _, gross = lever(seeded, 110.0)
    halt = {**DD_HALT, "portfolios": ["hedge"]}
    engine, _ = build(seeded, make_settings, clock, [halt, MARGIN_WARNING, margin_critical(0.5)])
    crash = margin_snapshot(110.0, gross, clock.now)
    crash["drawdown"]["daily"] = -0.3
    engine.evaluate("hedge", crash, clock.now)
    assert seeded.read_trading_state("hedge").state == "HALTED"
    assert margin_level(seeded) >= 150.0
    audit = seeded.read_stream_json(PortfolioKeys("hedge").audit, count=50, newest_first=False)
    kinds = [a["action"] for a in audit]
    assert kinds.index("set_trading_state") < kinds.index("automated_order")
    assert all(a["status"] == "FILLED" for a in audit if a["action"] == "automated_order")
