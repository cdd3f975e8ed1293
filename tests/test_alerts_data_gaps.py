"""Missing data under the ``keep`` policy holds an alert's state, but time without data is not time seen clear:
a clear period running when the data goes missing starts over when it comes back, on the batched path as on
the one-by-one path, and resolves exactly at ``clear_seconds`` of data seen clear, not one tick before."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from engine.store import Store
from logic.alerts import AlertEngine, build_alert_engine

from .alerts_support import T0, SimClock, rule, snapshot

CLEAR = 60.0
VAR_HI = rule("var_hi", "var.var95", ">=", 10_000.0, "HIGH", clear_seconds=CLEAR)


def _evaluator(engine: AlertEngine, batched: bool) -> Callable[[dict[str, Any], float], Any]:
    if batched:
        return lambda snap, now: engine.evaluate_many({"main": snap}, now)
    return lambda snap, now: engine.evaluate("main", snap, now)


def _active(engine: AlertEngine) -> dict[str, Any]:
    return {a["rule_id"]: a for a in engine.active_alerts("main")}


@pytest.mark.parametrize("batched", [False, True], ids=["one_by_one", "batched"])
def test_a_gap_of_missing_var_restarts_the_clear_period_so_the_breach_does_not_resolve_on_the_first_clear_value(
    store: Store, make_settings: Any, batched: bool
) -> None:
    # Arrange: a breach, then clear at +10 s (clear period starts), then a minute of var95 null (data missing)
    clock = SimClock(T0)
    engine = build_alert_engine(store, make_settings({"alert_rules": [VAR_HI]}), clock)
    evaluate = _evaluator(engine, batched)
    evaluate(snapshot(now=T0, var__var95=12_000.0), T0)
    evaluate(snapshot(now=T0 + 10, var__var95=9_000.0), T0 + 10)
    for k in range(11, 70):
        evaluate(snapshot(now=T0 + k, var__var95=None), T0 + k)
        engine.tick(T0 + k + 0.5)
    during_gap = _active(engine)["var_hi"]

    # Act: the first clear value after the gap, 60 s after the clear period first started
    evaluate(snapshot(now=T0 + 70, var__var95=9_000.0), T0 + 70)
    after_gap = _active(engine).get("var_hi")
    # ... then clear data for the full clear period: one tick before it, exactly at it
    evaluate(snapshot(now=T0 + 129.999, var__var95=9_000.0), T0 + 129.999)
    one_tick_before = _active(engine).get("var_hi")
    evaluate(snapshot(now=T0 + 130, var__var95=9_000.0), T0 + 130)

    # Assert: held while data was missing (shown stale, no clear period), the clear period restarted at +70
    assert during_gap["status"] == "TRIGGERED" and during_gap["stale"] is True
    assert during_gap["clear_since"] is None
    assert after_gap is not None and after_gap["clear_since"] == T0 + 70 and after_gap["stale"] is False
    assert one_tick_before is not None
    assert _active(engine) == {}
    resolved = engine.alert_history("main", count=1)[0]
    assert (resolved["event"], resolved["note"]) == ("RESOLVED", "clear for 60 s")


@pytest.mark.parametrize("batched", [False, True], ids=["one_by_one", "batched"])
def test_a_gap_of_missing_data_keeps_a_pending_breach_and_a_breach_seen_again_fires_on_schedule(
    store: Store, make_settings: Any, batched: bool
) -> None:
    # Arrange: a breach needing 30 s pending; var95 null for 20 s in between
    pending = rule("var_hi", "var.var95", ">=", 10_000.0, "HIGH", pending_seconds=30.0, clear_seconds=CLEAR)
    engine = build_alert_engine(store, make_settings({"alert_rules": [pending]}), SimClock(T0))
    evaluate = _evaluator(engine, batched)
    evaluate(snapshot(now=T0, var__var95=12_000.0), T0)
    for k in range(1, 21):
        evaluate(snapshot(now=T0 + k, var__var95=None), T0 + k)

    # Act: the breach seen again one tick before the pending period ends, then exactly at it
    evaluate(snapshot(now=T0 + 29.999, var__var95=12_000.0), T0 + 29.999)
    before = _active(engine)
    evaluate(snapshot(now=T0 + 30, var__var95=12_000.0), T0 + 30)

    # Assert: a gap neither fires a false alert nor delays a real one
    assert before == {}
    alert = _active(engine)["var_hi"]
    assert alert["breach_since"] == T0 and alert["stale"] is False and alert["value"] == 12_000.0
