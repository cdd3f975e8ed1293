"""Crisis controls at their edges: a re-triggered reduce rule does not trade again for the same breach, the
automation's liquidation orders have their own order-rate budget, and a person lifts only the trading state
their page showed.

Real parts throughout: a real Redis (tests/conftest.py), the real alert engine and RiskManager, the System page
under Streamlit's AppTest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import warmup
from engine.records import OrderIntent
from engine.store import MarketSnapshot, PortfolioKeys, Store
from engine.store.portfolio import TradingStateConflictError
from logic import lifecycle, views
from logic.access import local_identity
from logic.action_orders import AUTO_ACTOR_PREFIX, AUTOMATION
from logic.actions import ResponseRunner
from logic.checks import AUTOMATION_RATE_MULTIPLE, automation_order
from logic.lifecycle import MANUAL_RESOLVE_REARM_SECONDS, REARM_WORSENING_FRACTION, rerun_refusal
from logic.risk_manager import RiskManager
from notifications.service import build_delivering_engine

from .alerts_support import T0, SimClock, SleepRecorder, delivered_events, rule, snapshot
from .conftest import TEST_CONFIG
from .e2e_stack import toml_dumps

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"

# main's seeded book: AAA 1000 @ 100 (the loser here), BBB 2000 @ 50
AAA = {"ticker": "AAA", "qty": 1000, "avg_price": 105.0, "last": 100.0, "market_value": 100_000.0, "weight": 0.1,
       "unrealized_pnl": -5_000.0, "realized_pnl": 0.0, "mfe": 0.0, "mae": -5_000.0}  # fmt: skip
BBB = {"ticker": "BBB", "qty": 2000, "avg_price": 49.0, "last": 50.0, "market_value": 100_000.0, "weight": 0.1,
       "unrealized_pnl": 2_000.0, "realized_pnl": 0.0, "mfe": 2_000.0, "mae": 0.0}  # fmt: skip
DD_CUT = rule("dd_cut", "drawdown.daily", "<=", -0.05, "HIGH", description="drawdown cut", actions=["reduce:0.5"])


@pytest.fixture
def seeded(store: Store, settings: Any) -> Store:
    warmup.seed(store, settings, now=T0)
    return store


# -- 1. a re-triggered trade action runs again only on a materially worse metric ------------------------------


def test_materially_worse_is_a_quarter_further_in_the_breach_direction_exactly_at_the_bar() -> None:
    """Closed form: step = 0.25 * max(|threshold|, |last|); dyadic numbers, so the bar is exact in binary."""
    assert REARM_WORSENING_FRACTION == 0.25
    falling = {"value": -0.5, "alert_id": "a1"}  # threshold -0.25, last run at -0.5: bar -0.5 - 0.125 = -0.625
    assert rerun_refusal("<=", -0.25, falling, -0.625) is None  # exactly at the bar: re-runs
    assert rerun_refusal("<", -0.25, falling, -0.75) is None
    why = rerun_refusal("<=", -0.25, falling, -0.6249999)  # one hair short of the bar
    assert why is not None and "not materially worse than -0.5" in why and "<= -0.625" in why
    assert rerun_refusal("<=", -0.25, falling, -0.5) is not None  # unchanged: the three-resolves case
    assert rerun_refusal("<=", -0.25, falling, -0.4) is not None  # better
    rising = {"value": 1.0, "alert_id": "a2"}  # threshold 0.5 (|last| larger): bar 1.0 + 0.25 = 1.25
    assert rerun_refusal(">=", 0.5, rising, 1.25) is None
    assert ">= 1.25" in (rerun_refusal(">", 0.5, rising, 1.2499999) or "")
    big_threshold = {"value": -120.0, "alert_id": "a3"}  # threshold -200 dominates: step 50, bar -170
    assert rerun_refusal("<", -200.0, big_threshold, -170.0) is None
    assert rerun_refusal("<", -200.0, big_threshold, -169.0) is not None
    zero = {"value": 0.0, "alert_id": "a4"}  # both 0: any worsening re-runs
    assert rerun_refusal("<=", 0.0, zero, -1e-9) is None and rerun_refusal("<=", 0.0, zero, 0.0) is not None
    assert "no direction" in (rerun_refusal("==", 1.0, {"value": 1.0}, 1.0) or "")
    assert "cannot be compared" in (rerun_refusal("<=", -0.25, falling, None) or "")  # stale: proves nothing


def _build(store: Store, make_settings: Any, clock: SimClock, rules: list[dict[str, Any]]) -> Any:
    settings = make_settings(
        {"alert_rules": rules, "notifications": {"group_wait_seconds": 0, "group_interval_seconds": 0}}
    )
    factory = lambda pid: RiskManager(store.client, pid, settings, clock)  # noqa: E731
    return build_delivering_engine(
        store, settings, clock=clock, risk_manager_factory=factory, env={}, sleep=SleepRecorder()
    )


def _book(store: Store) -> dict[str, int]:
    return {t: p.qty for t, p in store.read_portfolio("main").positions.items() if p.qty}


def _held(store: Store) -> list[dict[str, Any]]:
    """The snapshot's positions as the book now holds them (what the monitor would publish)."""
    rows = {"AAA": AAA, "BBB": BBB}
    return [{**rows[t], "qty": q, "market_value": q * rows[t]["last"]} for t, q in _book(store).items()]


def _fresh_prices(store: Store, now: float) -> None:
    """Stamp every price of the market snapshot ``now`` (the same prices: the cut trades at the seeded ones)."""
    snap = store.read_market()
    store.write_market(
        MarketSnapshot(
            version=snap.version + 1, ts=now, tickers=snap.tickers, prices=snap.prices.copy(),
            price_ts=np.full_like(snap.price_ts, now), cov=snap.cov,
        )
    )  # fmt: skip


def _responses(store: Store, action: str) -> list[dict[str, Any]]:
    audit = store.read_stream_json(PortfolioKeys("main").audit, count=1000, newest_first=False)
    return [a for a in audit if a["action"] == action and a.get("rule_id") == "dd_cut"]


def test_manual_resolves_on_an_unchanged_breach_re_alert_but_never_sell_again(
    seeded: Store, make_settings: Any
) -> None:
    clock = SimClock(T0 + 5)
    engine = _build(seeded, make_settings, clock, [DD_CUT])
    engine.evaluate("main", snapshot(now=clock.now, drawdown__daily=-0.0625, positions=[AAA, BBB]), clock.now)
    assert _book(seeded) == {"BBB": 2000}  # half of $200k gross: AAA, the loser, first
    assert len(_responses(seeded, "automated_response")) == 1

    for n in range(3):  # three "looked at it" resolves on the same drawdown
        engine.resolve("main", "dd_cut", "risk-officer", "looked at it")
        clock.advance(MANUAL_RESOLVE_REARM_SECONDS + 1)
        engine.evaluate("main", snapshot(now=clock.now, drawdown__daily=-0.0625, positions=_held(seeded)), clock.now)
        (alert,) = [a for a in engine.active_alerts("main") if a["rule_id"] == "dd_cut"]  # it re-fired
        assert alert["status"] == "TRIGGERED"
        assert _book(seeded) == {"BBB": 2000}, f"resolve {n + 1} sold again"
        assert len(_responses(seeded, "automated_response")) == 1
        assert alert["actions_skipped"][0]["action"] == "reduce:0.5"
        assert "not materially worse than -0.0625" in alert["actions_skipped"][0]["why"]
        skipped = _responses(seeded, "automated_response_skipped")
        assert len(skipped) == n + 1
        assert skipped[-1]["actor"] == "auto:dd_cut" and skipped[-1]["alert_id"] == alert["alert_id"]
        assert skipped[-1]["summary"].startswith("reduce:0.5 not re-run: value -0.0625 is not materially worse")
        assert skipped[-1]["details"]["last_run"]["resolved_by"] == "risk-officer"
    log = seeded.read_stream_json(PortfolioKeys("main").alert_log, count=1)[0]
    assert log["event"] == "TRIGGERED" and "reduce:0.5 not re-run" in log["note"]
    engine.tick(clock.now)
    told = [e for e in delivered_events(engine) if e["rule_id"] == "dd_cut" and e["kind"] == "triggered"]
    assert len(told) == 4  # the alert itself still re-fires and notifies every time

    # one hair short of materially worse (bar: -0.0625 - 0.25 * 0.0625 = -0.078125): still no trade
    engine.resolve("main", "dd_cut", "risk-officer", "looked again")
    clock.advance(MANUAL_RESOLVE_REARM_SECONDS + 1)
    engine.evaluate("main", snapshot(now=clock.now, drawdown__daily=-0.078, positions=_held(seeded)), clock.now)
    assert _book(seeded) == {"BBB": 2000} and len(_responses(seeded, "automated_response")) == 1

    # exactly at the bar: the cut runs again, saying why and whose resolve re-armed it
    engine.resolve("main", "dd_cut", "head-of-risk", "still bad")
    clock.advance(MANUAL_RESOLVE_REARM_SECONDS + 1)
    _fresh_prices(seeded, clock.now)  # the gate trades only on fresh prices
    engine.evaluate("main", snapshot(now=clock.now, drawdown__daily=-0.078125, positions=_held(seeded)), clock.now)
    assert _book(seeded) == {"BBB": 1000}  # half of the $100k then held
    ran = _responses(seeded, "automated_response")
    assert len(ran) == 2 and ran[-1]["ok"] and ran[-1]["actor"] == "auto:dd_cut"
    trades = RiskManager(seeded.client, "main", None, clock).trade_log(1)
    assert trades[0]["actor"] == "auto:dd_cut"
    (alert,) = [a for a in engine.active_alerts("main") if a["rule_id"] == "dd_cut"]
    assert "actions_skipped" not in alert and alert["acted"]["value"] == -0.078125


def test_a_breach_that_clears_ends_the_episode_and_a_new_one_cuts_again(seeded: Store, make_settings: Any) -> None:
    clock = SimClock(T0 + 5)
    engine = _build(seeded, make_settings, clock, [DD_CUT])  # clear_seconds 0: resolves on the first clear value
    engine.evaluate("main", snapshot(now=clock.now, drawdown__daily=-0.0625, positions=[AAA, BBB]), clock.now)
    engine.resolve("main", "dd_cut", "risk-officer", "looked at it")
    clock.advance(1)
    engine.evaluate("main", snapshot(now=clock.now, drawdown__daily=-0.01, positions=_held(seeded)), clock.now)
    clock.advance(MANUAL_RESOLVE_REARM_SECONDS)
    _fresh_prices(seeded, clock.now)
    engine.evaluate("main", snapshot(now=clock.now, drawdown__daily=-0.0625, positions=_held(seeded)), clock.now)
    assert _book(seeded) == {"BBB": 1000}  # a new episode: the same drawdown cuts again
    assert len(_responses(seeded, "automated_response")) == 2 and not _responses(seeded, "automated_response_skipped")


# -- 2. the automation's liquidation orders have their own order-rate budget ----------------------------------


def _gate(store: Store, make_settings: Any, limit: int) -> tuple[RiskManager, Any]:
    settings = make_settings({"limits": {"max_orders_per_minute": limit}})
    warmup.seed(store, settings, now=T0)
    return RiskManager(store.client, "main", settings, clock=lambda: T0), settings


def _codes(result: dict[str, Any]) -> list[str]:
    return [r["code"] for r in result["reasons"]]


def test_traders_at_their_limit_do_not_lock_out_a_flatten_nor_does_it_use_their_budget(
    store: Store, make_settings: Any
) -> None:
    rm, settings = _gate(store, make_settings, 3)
    for _ in range(2):
        assert rm.execute_trade("AAA", 1, "BUY", actor="trader")["status"] == "FILLED"
    runner = ResponseRunner(lambda pid: RiskManager(store.client, pid, settings, clock=lambda: T0))
    out = runner.run(
        "main",
        {"action_id": "a1", "action": "flatten", "actor": "auto:dd_flatten", "reason": "drawdown",
         "rule_id": "dd_flatten", "alert_id": "x"},
        None,
    )  # fmt: skip
    assert out.ok, out.summary
    assert _book(store) == {}
    keys = PortfolioKeys("main")
    assert store.client.zcard(keys.rate) == 2 and store.client.zcard(keys.auto_rate) == 2
    # the traders' budget is untouched by the flatten: their 3rd order (exactly at the limit) passes...
    assert rm.execute_trade("AAA", 1, "BUY", actor="trader")["status"] == "FILLED"
    # ...and a 4th (one over) is refused
    refused = rm.execute_trade("AAA", 1, "BUY", actor="trader")
    assert refused["status"] == "REJECTED" and _codes(refused) == ["RATE_LIMIT"]
    assert "3 orders in the last minute (limit 3)" in refused["reasons"][0]["message"]
    # the automation still cuts after the traders used up theirs
    cut = rm.execute_trade(
        "AAA", 1, "SELL", actor="auto:dd_flatten", intent=OrderIntent.LIQUIDATION, automation=AUTOMATION
    )
    assert cut["status"] == "FILLED"


def test_the_automations_budget_is_ten_times_the_limit_exactly_at_it_passes_one_over_refused(
    store: Store, make_settings: Any
) -> None:
    rm, _ = _gate(store, make_settings, 3)
    budget = AUTOMATION_RATE_MULTIPLE * 3
    assert budget == 30
    for n in range(budget):  # the 30th (exactly at the budget) passes
        result = rm.execute_trade(
            "BBB", 1, "SELL", actor="auto:runaway", intent=OrderIntent.LIQUIDATION, automation=AUTOMATION
        )
        assert result["status"] == "FILLED", (n, result["reasons"])
    refused = rm.execute_trade(
        "BBB", 1, "SELL", actor="auto:runaway", intent="liquidation", automation=AUTOMATION
    )  # the 31st
    assert refused["status"] == "REJECTED" and _codes(refused) == ["RATE_LIMIT"]
    assert "30 automated liquidation orders in the last minute" in refused["reasons"][0]["message"]
    assert "budget 30" in refused["reasons"][0]["message"]
    assert _book(store)["BBB"] == 2000 - budget
    assert store.client.zcard(PortfolioKeys("main").rate) == 0  # none of it counted against the traders
    assert rm.execute_trade("AAA", 1, "BUY", actor="trader")["status"] == "FILLED"


@pytest.mark.parametrize(
    ("actor", "intent", "grant"),
    [("risk-manager", OrderIntent.LIQUIDATION, None), ("auto:dd_cut", OrderIntent.TRADE, AUTOMATION)],
    ids=["human-liquidation", "automation-trade-intent"],
)
def test_anything_but_the_automations_liquidation_is_a_traders_order_for_the_throttle(
    store: Store, make_settings: Any, actor: str, intent: OrderIntent, grant: object
) -> None:
    rm, _ = _gate(store, make_settings, 3)
    assert not automation_order(actor, intent, grant)
    for _ in range(2):
        assert rm.execute_trade("AAA", 1, "BUY", actor="trader")["status"] == "FILLED"
    third = rm.execute_trade("BBB", 1, "SELL", actor=actor, intent=intent, automation=grant)  # 3rd: at it
    assert third["status"] == "FILLED"
    assert store.client.zcard(PortfolioKeys("main").rate) == 3 and not store.client.exists(
        PortfolioKeys("main").auto_rate
    )
    refused = rm.execute_trade("BBB", 1, "SELL", actor=actor, intent=intent, automation=grant)  # 4th: one over
    assert refused["status"] == "REJECTED" and _codes(refused) == ["RATE_LIMIT"]


def test_the_automation_prefix_is_the_one_the_alert_engine_gives_its_actors() -> None:
    assert lifecycle.AUTO_ACTOR_PREFIX is AUTO_ACTOR_PREFIX == "auto:"  # one definition (logic/action_orders.py)
    assert automation_order("auto:x", "Liquidation ", AUTOMATION)
    assert not automation_order("autox", OrderIntent.LIQUIDATION, AUTOMATION)
    assert not automation_order(None, OrderIntent.LIQUIDATION, AUTOMATION)
    assert not automation_order("auto:x", OrderIntent.LIQUIDATION)  # the name alone grants nothing


# -- 3. a person lifts only the trading state their page showed -----------------------------------------------


def test_lifting_a_reducing_that_became_halted_meanwhile_is_refused_and_writes_nothing(
    seeded: Store, settings: Any
) -> None:
    rm = RiskManager(seeded.client, "main", settings, clock=lambda: T0)
    rm.tighten_trading_state("REDUCING", "alert var_warn: VaR > 80% limit", "auto:var_warn")
    desk = views.Desk(seeded.client, settings)
    shown = views.trading_state_view(desk, "main").state  # what the page rendered
    rm.tighten_trading_state("HALTED", "alert dd_halt: drawdown -6%", "auto:dd_halt")  # lands meanwhile
    audit_key = PortfolioKeys("main").audit
    before = seeded.client.xlen(audit_key)
    with pytest.raises(TradingStateConflictError) as caught:
        views.change_trading_state(desk, "main", "ACTIVE", f"lifting {shown}", local_identity(), shown)
    assert caught.value.code == "TRADING_STATE_CHANGED"
    message = str(caught.value)
    assert "is HALTED, not REDUCING as shown" in message and "by auto:dd_halt" in message and "drawdown -6%" in message
    assert seeded.read_trading_state("main").state == "HALTED"
    assert seeded.client.xlen(audit_key) == before  # nothing written
    # against the state it does show, the change goes through (and is audited with what it replaced)
    views.change_trading_state(desk, "main", "ACTIVE", "reviewed the halt", local_identity(), "HALTED")
    assert seeded.read_trading_state("main").state == "ACTIVE"
    last = seeded.read_stream_json(audit_key, count=1)[0]
    assert (last["previous"], last["state"], last["reason"]) == ("HALTED", "ACTIVE", "reviewed the halt")


@pytest.fixture
def app_env(redis_server: Any, seeded_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    config = tmp_path / "riskdesk.toml"
    config.write_text(toml_dumps(TEST_CONFIG), encoding="utf-8")
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("RISKDESK_CONFIG", str(config))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield seeded_store
    st.cache_resource.clear()


def test_the_kill_switch_page_refuses_to_lift_a_halt_it_never_showed(app_env: Store, settings: Any) -> None:
    rm = RiskManager(app_env.client, "main", settings)
    rm.tighten_trading_state("REDUCING", "alert var_warn", "auto:var_warn")
    at = AppTest.from_file(str(APP), default_timeout=30.0)
    at.session_state["refresh"] = "Paused"
    at.switch_page("screens/system.py")
    at.run()
    rm.tighten_trading_state("HALTED", "alert dd_halt: drawdown -6%", "auto:dd_halt")  # after the page rendered
    at.radio(key="ts_new_state").set_value("ACTIVE")
    at.text_input(key="ts_reason").input("lifting REDUCING: VaR back under")
    at.button(key="FormSubmitter:trading_state_form-Apply").click()
    at.run()
    at.button(key="ts_confirm").click()  # a lift waits for its confirmation (made against the state shown)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = "\n".join(str(e.value) for e in at.error).replace("\\", "")
    assert app_env.read_trading_state("main").state == "HALTED"  # the halt it never showed stands
    assert "is HALTED, not REDUCING as shown" in shown and "auto:dd_halt" in shown
    assert at.session_state["ts_shown_state"] == "HALTED"  # what the page shows now
    # the page now shows HALTED: lifting it from there is the person's informed decision
    at.text_input(key="ts_reason").input("reviewed the halt")
    at.button(key="FormSubmitter:trading_state_form-Apply").click()
    at.run()
    assert app_env.read_trading_state("main").state == "HALTED"  # not before the confirmation
    at.button(key="ts_confirm").click()
    at.run()
    assert not at.error, [e.value for e in at.error]
    assert app_env.read_trading_state("main").state == "ACTIVE"


# -- 4. the emergency stop is never refused; a lift only of the state the person saw -------------------------

RANK = {"ACTIVE": 0, "REDUCING": 1, "HALTED": 2}
"""How restrictive each state is, stated independently of the code (a missing or unreadable state: HALTED)."""


def _put_state(store: Store, settings: Any, state: str) -> None:
    """Store ``state``: a trading state, ``UNREADABLE`` (a corrupt hash) or ``MISSING`` (no key)."""
    key = PortfolioKeys("main").trading_state
    store.client.delete(key)
    if state == "UNREADABLE":
        store.client.hset(key, mapping={"state": "BOGUS", "reason": "corrupted", "actor": "?", "ts": "0"})
    elif state != "MISSING":
        RiskManager(store.client, "main", settings, clock=lambda: T0).set_trading_state(state, "set up", "tester")


def _stored(store: Store) -> str:
    raw = store.client.hget(PortfolioKeys("main").trading_state, "state")
    return "MISSING" if raw is None else raw.decode()


@pytest.mark.parametrize("shown", ["ACTIVE", "REDUCING", "HALTED", "UNREADABLE", "MISSING"])
def test_a_deliberate_change_is_refused_exactly_when_it_loosens_a_stored_state_the_person_did_not_see(
    seeded: Store, settings: Any, shown: str
) -> None:
    """Every (stored, asked) pair against one shown state. The oracle: written iff HALTED (the emergency stop),
    or at least as strict as the stored state (the boundary: equal goes through), or the stored state is the
    one shown (a lift the person saw, confirmed on the page); else refused TRADING_STATE_CHANGED, nothing
    written. Unreadable and missing rank as HALTED."""
    desk = views.Desk(seeded.client, settings)
    audit_key = PortfolioKeys("main").audit
    for stored in ("ACTIVE", "REDUCING", "HALTED", "UNREADABLE", "MISSING"):
        for new in ("ACTIVE", "REDUCING", "HALTED"):
            _put_state(seeded, settings, stored)
            before = seeded.client.xlen(audit_key)
            written = new == "HALTED" or RANK[new] >= RANK.get(stored, 2) or stored == shown
            case = f"shown {shown}, stored {stored}, asked {new}"
            if written:
                views.change_trading_state(desk, "main", new, case, local_identity(), shown)
                assert _stored(seeded) == new, case
                last = seeded.read_stream_json(audit_key, count=1)[0]
                assert (last["previous"], last["state"], last["reason"]) == (stored, new, case)
            else:
                with pytest.raises(TradingStateConflictError) as caught:
                    views.change_trading_state(desk, "main", new, case, local_identity(), shown)
                assert caught.value.code == "TRADING_STATE_CHANGED", case
                assert f"is {stored}, not {shown} as shown" in str(caught.value), case
                assert _stored(seeded) == ("BOGUS" if stored == "UNREADABLE" else stored), case
                assert seeded.client.xlen(audit_key) == before, case


def _page() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=30.0)
    at.session_state["refresh"] = "Paused"
    at.switch_page("screens/system.py")
    at.run()
    return at


def _apply(at: AppTest, state: str, reason: str) -> AppTest:
    at.radio(key="ts_new_state").set_value(state)
    at.text_input(key="ts_reason").input(reason)
    at.button(key="FormSubmitter:trading_state_form-Apply").click()
    return at.run()


def test_the_page_halts_after_the_automation_tightened_to_reducing_meanwhile(app_env: Store, settings: Any) -> None:
    at = _page()
    assert at.session_state["ts_shown_state"] == "ACTIVE"
    RiskManager(app_env.client, "main", settings).tighten_trading_state("REDUCING", "alert var_warn", "auto:var_warn")
    _apply(at, "HALTED", "desk emergency")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert app_env.read_trading_state("main").state == "HALTED"
    last = app_env.read_stream_json(PortfolioKeys("main").audit, count=1)[0]
    assert (last["previous"], last["state"], last["reason"]) == ("REDUCING", "HALTED", "desk emergency")
    assert at.session_state["ts_shown_state"] == "HALTED"


def test_the_page_refuses_a_reducing_that_would_lift_a_halt_it_never_showed(app_env: Store, settings: Any) -> None:
    """Shown ACTIVE, asked REDUCING (stricter than shown: no confirmation), but the automation HALTED meanwhile:
    REDUCING would loosen the halt, so it is refused and the halt stands."""
    at = _page()
    RiskManager(app_env.client, "main", settings).tighten_trading_state("HALTED", "alert dd_halt", "auto:dd_halt")
    _apply(at, "REDUCING", "slow down")
    shown = "\n".join(str(e.value) for e in at.error).replace("\\", "")
    assert "is HALTED, not ACTIVE as shown" in shown and "auto:dd_halt" in shown
    assert app_env.read_trading_state("main").state == "HALTED"


def test_an_unreadable_state_is_shown_as_such_and_the_page_halt_repairs_it(app_env: Store, settings: Any) -> None:
    at = _page()
    assert at.session_state["ts_shown_state"] == "ACTIVE"
    key = PortfolioKeys("main").trading_state
    app_env.client.hset(key, "state", "BOGUS")  # corrupted after the page rendered
    at.run()  # reload: the read fails
    assert at.session_state["ts_shown_state"] == "UNREADABLE"  # never the ACTIVE an earlier run showed
    assert any("unknown trading state 'BOGUS'" in str(e.value) for e in at.error)
    for attempt in range(2):  # the halt goes through at once, and again (nothing sticks from a refusal)
        _apply(at, "HALTED", f"emergency halt {attempt}")
        assert not at.error, [e.value for e in at.error]
        assert app_env.client.hget(key, "state") == b"HALTED"
        last = app_env.read_stream_json(PortfolioKeys("main").audit, count=1)[0]
        assert last["previous"] == ("UNREADABLE" if attempt == 0 else "HALTED")
    assert at.session_state["ts_shown_state"] == "HALTED"


def test_a_missing_state_is_shown_as_missing_and_a_confirmed_lift_of_it_repairs_the_key(
    app_env: Store, settings: Any
) -> None:
    at = _page()
    app_env.client.delete(PortfolioKeys("main").trading_state)
    at.run()
    assert at.session_state["ts_shown_state"] == "MISSING"
    _apply(at, "ACTIVE", "re-seeded by hand")
    assert _stored(app_env) == "MISSING"  # a lift waits for its confirmation
    at.button(key="ts_confirm").click()
    at.run()
    assert not at.error, [e.value for e in at.error]
    assert app_env.read_trading_state("main").state == "ACTIVE"
    assert app_env.read_stream_json(PortfolioKeys("main").audit, count=1)[0]["previous"] == "MISSING"


# -- 5. only a cut that was done counts as the episode's last run ----------------------------------------------


def _stamp_prices(store: Store, now: float, tickers: tuple[str, ...]) -> None:
    """Stamp ``tickers``' prices ``now`` (the others keep their seeded, stale, time)."""
    snap = store.read_market()
    price_ts = snap.price_ts.copy()
    for i, t in enumerate(snap.tickers):
        if t in tickers:
            price_ts[i] = now
    store.write_market(
        MarketSnapshot(
            version=snap.version + 1, ts=now, tickers=snap.tickers, prices=snap.prices.copy(), price_ts=price_ts,
            cov=snap.cov,
        )
    )  # fmt: skip


def _acted(store: Store, engine: Any) -> tuple[Any, Any]:
    """The episode's last run as the active dd_cut alert and the rule's tracker hold it."""
    alerts = [a for a in engine.active_alerts("main") if a["rule_id"] == "dd_cut"]
    tracker = store.read_json_hash(Store.alert_eval_key("main")).get("dd_cut") or {}
    return (alerts[0].get("acted") if alerts else None), tracker.get("acted")


def _refire(store: Store, engine: Any, clock: SimClock, value: float, fresh: bool) -> None:
    engine.resolve("main", "dd_cut", "risk-officer", "retry")
    clock.advance(MANUAL_RESOLVE_REARM_SECONDS + 1)
    if fresh:
        _fresh_prices(store, clock.now)
    engine.evaluate("main", snapshot(now=clock.now, drawdown__daily=value, positions=_held(store)), clock.now)


def test_a_cut_the_gate_refused_is_no_run_and_a_resolve_retries_it_at_the_same_value(
    seeded: Store, make_settings: Any
) -> None:
    clock = SimClock(T0 + 100_000)  # prices seeded at T0: stale now, the gate refuses the cut
    engine = _build(seeded, make_settings, clock, [DD_CUT])
    engine.evaluate("main", snapshot(now=clock.now, drawdown__daily=-0.0625, positions=[AAA, BBB]), clock.now)
    first = _responses(seeded, "automated_response")
    assert len(first) == 1 and not first[0]["ok"] and "STALE_PRICE" in first[0]["summary"]
    assert _book(seeded) == {"AAA": 1000, "BBB": 2000}
    assert _acted(seeded, engine) == (None, None)  # nothing was done: no reference to be worse than
    _refire(seeded, engine, clock, -0.0625, fresh=True)  # prices back: the same drawdown
    assert _book(seeded) == {"BBB": 2000}  # retried: half of $200k, AAA (the loser) first
    ran = _responses(seeded, "automated_response")
    assert len(ran) == 2 and ran[-1]["ok"] and not _responses(seeded, "automated_response_skipped")
    alert_acted, tracker_acted = _acted(seeded, engine)
    assert alert_acted == tracker_acted
    assert alert_acted["value"] == -0.0625 and alert_acted["actions"] == ["reduce:0.5"]
    assert "pending" not in alert_acted and "previous" not in alert_acted
    _refire(seeded, engine, clock, -0.0625, fresh=True)  # this run was done: the same loss is not cut again
    assert _book(seeded) == {"BBB": 2000} and len(_responses(seeded, "automated_response")) == 2
    assert len(_responses(seeded, "automated_response_skipped")) == 1


def test_a_refused_rerun_gives_the_reference_back_to_the_run_before_it(seeded: Store, make_settings: Any) -> None:
    """Run 1 cuts at -0.0625 (fresh prices). The re-run at -0.078125 (exactly materially worse: the bar is
    -0.0625 - 0.25 * 0.0625) is refused (stale prices): the reference is -0.0625 again, not none and not
    -0.078125, so -0.078 (one hair short of the bar) still does not cut and -0.078125 does."""
    clock = SimClock(T0 + 5)
    engine = _build(seeded, make_settings, clock, [DD_CUT])
    engine.evaluate("main", snapshot(now=clock.now, drawdown__daily=-0.0625, positions=[AAA, BBB]), clock.now)
    assert _book(seeded) == {"BBB": 2000}
    run1 = _acted(seeded, engine)[0]
    clock.advance(100_000)  # stale prices
    _refire(seeded, engine, clock, -0.078125, fresh=False)
    ran = _responses(seeded, "automated_response")
    assert len(ran) == 2 and not ran[-1]["ok"] and _book(seeded) == {"BBB": 2000}
    alert_acted, tracker_acted = _acted(seeded, engine)
    assert alert_acted == tracker_acted
    assert (alert_acted["value"], alert_acted["alert_id"]) == (-0.0625, run1["alert_id"])
    _refire(seeded, engine, clock, -0.078, fresh=True)  # one hair short of the bar over -0.0625
    assert _book(seeded) == {"BBB": 2000} and len(_responses(seeded, "automated_response")) == 2
    _refire(seeded, engine, clock, -0.078125, fresh=True)  # exactly at it
    assert _book(seeded) == {"BBB": 1000}
    assert _responses(seeded, "automated_response")[-1]["ok"]
    assert _acted(seeded, engine)[0]["value"] == -0.078125


def test_a_partly_done_flatten_is_no_run_and_a_resolve_finishes_it(seeded: Store, make_settings: Any) -> None:
    """Decision: a partial fill is no run (the cut stopped half-way); the retry sells only what is left."""
    flatten = rule("dd_cut", "drawdown.daily", "<=", -0.05, "HIGH", description="drawdown flatten",
                   actions=["flatten"])  # fmt: skip
    clock = SimClock(T0 + 100_000)
    engine = _build(seeded, make_settings, clock, [flatten])
    _stamp_prices(seeded, clock.now, ("AAA",))  # BBB's price stays stale: its leg is refused
    engine.evaluate("main", snapshot(now=clock.now, drawdown__daily=-0.0625, positions=[AAA, BBB]), clock.now)
    ran = _responses(seeded, "automated_response")
    assert len(ran) == 1 and not ran[0]["ok"] and "1 of 2 legs filled" in ran[0]["summary"]
    assert _book(seeded) == {"BBB": 2000}
    assert _acted(seeded, engine) == (None, None)
    _refire(seeded, engine, clock, -0.0625, fresh=True)
    assert _book(seeded) == {}
    assert _responses(seeded, "automated_response")[-1]["ok"]
    assert _acted(seeded, engine)[0]["value"] == -0.0625


def test_a_reduce_that_cut_part_of_the_book_is_a_run_and_a_resolve_never_sells_its_filled_legs_again(
    seeded: Store, make_settings: Any
) -> None:
    """AAA (the loser, first in the plan) stays stale: its leg is refused every time. The BBB leg that filled is a
    run of the episode: resolving at the same drawdown re-alerts but sells no more BBB (it sold another slice at
    each resolve before: a fraction of the book then held, again and again)."""
    cut = rule("dd_cut", "drawdown.daily", "<=", -0.05, "HIGH", description="cut", actions=["reduce:0.75"])
    clock = SimClock(T0 + 100_000)
    engine = _build(seeded, make_settings, clock, [cut])
    _stamp_prices(seeded, clock.now, ("BBB",))
    engine.evaluate("main", snapshot(now=clock.now, drawdown__daily=-0.0625, positions=[AAA, BBB]), clock.now)
    first = _responses(seeded, "automated_response")
    assert len(first) == 1 and not first[0]["ok"] and "STALE_PRICE" in first[0]["summary"]
    after_first = _book(seeded)
    assert after_first["AAA"] == 1000 and 0 < after_first["BBB"] < 2000, first[0]["summary"]
    assert _acted(seeded, engine)[0]["value"] == -0.0625
    for _ in range(3):
        engine.resolve("main", "dd_cut", "risk-officer", "looked at it")
        clock.advance(MANUAL_RESOLVE_REARM_SECONDS + 1)
        _stamp_prices(seeded, clock.now, ("BBB",))
        engine.evaluate("main", snapshot(now=clock.now, drawdown__daily=-0.0625, positions=_held(seeded)), clock.now)
        assert _book(seeded) == after_first
    assert len(_responses(seeded, "automated_response")) == 1
    # a materially worse drawdown (25% further) cuts again
    engine.resolve("main", "dd_cut", "risk-officer", "worse now")
    clock.advance(MANUAL_RESOLVE_REARM_SECONDS + 1)
    _stamp_prices(seeded, clock.now, ("BBB",))
    engine.evaluate("main", snapshot(now=clock.now, drawdown__daily=-0.078125, positions=_held(seeded)), clock.now)
    assert _book(seeded).get("BBB", 0) < after_first["BBB"]
