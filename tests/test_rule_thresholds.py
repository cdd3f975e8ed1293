"""Alert rules whose threshold follows the portfolio's live limits (``limits.<field>``), per-rule routing,
inhibition named on the alert and the default clear period, on a real Redis."""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine.settings import DEFAULT_CLEAR_SECONDS, AlertRule, Limits, load_settings
from engine.store import Store
from logic import analytics
from logic.lifecycle import public_alert
from logic.rules import (
    RuleValidationError,
    applying_rules,
    limit_reference,
    resolve_rule,
    resolve_threshold,
    validate_rule,
)
from notifications.render import Renderer
from notifications.service import build_delivering_engine

from .alerts_support import T0, SimClock, SleepRecorder, rule, snapshot

ROOT = Path(__file__).resolve().parent.parent
CONC = rule("conc", "concentration.largest_share", ">", "limits.max_concentration", "MEDIUM")


def make_engine(store: Store, make_settings: Any, rules: list[dict[str, Any]], clock: SimClock, **extra: Any):
    notifications = {"group_wait_seconds": 0, "group_interval_seconds": 0, **extra.pop("notifications", {})}
    settings = make_settings(
        {"alert_rules": rules, "notifications": notifications, "escalation": extra.pop("escalation", {})}
    )
    return settings, build_delivering_engine(store, settings, clock=clock, env={}, sleep=SleepRecorder())


def set_limits(store: Store, settings: Any, changes: dict[str, Any], now: float = T0) -> None:
    store.change_limits(
        "main", changes, actor="alice", reason="test", now=now, fallback=settings.limits_for("main")
    )  # fmt: skip


def active(engine: Any) -> dict[str, dict[str, Any]]:
    return {a["rule_id"]: a for a in engine.active_alerts("main")}


# -- validation and resolution (pure) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threshold": "limits.max_concentraton"}, r"may follow; did you mean 'limits.max_concentration'"),
        ({"threshold": "limits.var_limit"}, r"'limits.var_limit' is a money limit but metric .* is a fraction"),
        ({"threshold_fraction": 0}, r"threshold_fraction must not be 0"),
        ({"threshold_fraction": math.inf}, r"threshold_fraction must be a finite number"),
        ({"threshold": 0.3, "threshold_fraction": 0.8}, r"threshold_fraction applies only to a limits.<field>"),
        ({"channels": ["pager"]}, r"channels: 'pager' is not a channel"),
        ({"recipients": ["bad name!"]}, r"recipients: 'bad name!' is not a recipient name"),
        ({"channels": ["log"], "recipients": ["desk"]}, r"recipients need a channel other than log"),
    ],
)  # fmt: skip
def test_a_limit_threshold_is_validated_with_a_clear_message(change: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleValidationError, match=message) as err:
        validate_rule({**CONC, **change})
    assert err.value.code == "RULE_INVALID"


def test_resolve_threshold_is_the_live_limit_times_the_fraction() -> None:
    limits = Limits(max_concentration=0.2, var_limit=Decimal("40000"), stressed_var_limit=None)
    conc = validate_rule(CONC)
    var80 = validate_rule(rule("v80", "var.var95", ">=", "limits.var_limit", "MEDIUM", threshold_fraction=0.8))
    stressed = validate_rule(rule("s", "var.stressed_var99", ">", "limits.stressed_var_limit", "HIGH"))
    fixed = validate_rule(rule("f", "leverage", ">", 2.5, "LOW"))
    assert resolve_threshold(conc, limits) == 0.2
    assert resolve_threshold(var80, limits) == 0.8 * 40000.0
    assert resolve_threshold(stressed, limits) is None  # no such limit: the rule does not apply
    assert resolve_rule(stressed, limits) is None
    assert resolve_threshold(conc, None) is None
    assert resolve_threshold(fixed, None) == 2.5 and resolve_rule(fixed, None) is fixed
    resolved = resolve_rule(var80, limits)
    assert resolved is not None and resolved.threshold == 32000.0 and resolved.threshold_fraction == 1.0
    assert limit_reference(var80) == "0.8 x limits.var_limit"
    assert limit_reference(conc) == "limits.max_concentration" and limit_reference(fixed) is None


def test_the_rules_applying_to_a_portfolio_follow_its_limits_and_the_rules_kept_or_not() -> None:
    """applying_rules keeps its answer per portfolio while the rules and the limits are the same (equal, not only
    the same objects), and answers anew for another portfolio, other limits or other rules."""
    var80 = validate_rule(rule("v80", "var.var95", ">=", "limits.var_limit", "MEDIUM", threshold_fraction=0.8))
    stressed = validate_rule(rule("s", "var.stressed_var99", ">", "limits.stressed_var_limit", "HIGH"))
    crit = validate_rule(rule("c", "leverage", ">", 2.5, "CRITICAL"))
    other = validate_rule({**rule("o", "equity", "<", 1.0, "LOW"), "portfolios": ["other"]})
    rules = (var80, stressed, crit, other)

    def limits(var_limit: str, stressed_limit: str | None = None) -> Limits:
        return Limits(var_limit=Decimal(var_limit), stressed_var_limit=None if stressed_limit is None else
                      Decimal(stressed_limit))  # fmt: skip

    first = applying_rules(rules, limits("40000"), "main")
    assert [r.id for r in first.ordered] == ["c", "v80"]  # most severe first; unset limit, other desk: out
    assert first.by_id["v80"].threshold == 32000.0 and first.refs == {"v80": "0.8 x limits.var_limit", "c": None}
    assert applying_rules(list(rules), limits("40000"), "main") is first  # equal rules and limits: kept
    moved = applying_rules(rules, limits("40000.01"), "main")  # one cent more: resolved anew
    assert moved.by_id["v80"].threshold == pytest.approx(0.8 * 40000.01, rel=1e-15)
    assert [r.id for r in applying_rules(rules, limits("40000", "9"), "main").ordered] == ["c", "s", "v80"]
    assert [r.id for r in applying_rules(rules, limits("40000"), "other").ordered] == ["c", "v80", "o"]
    assert [r.id for r in applying_rules(rules[:2], limits("40000"), "main").ordered] == ["v80"]


def test_a_rule_clears_after_60_data_seconds_by_default() -> None:
    data = {k: v for k, v in CONC.items() if k != "clear_seconds"}
    assert validate_rule(data).clear_seconds == DEFAULT_CLEAR_SECONDS == 60.0
    assert AlertRule(id="x", metric="equity", op="<", threshold=1.0, severity="LOW").clear_seconds == 60.0


# -- evaluation against the store's limits -------------------------------------------------------------------


def test_exactly_at_the_limit_holds_and_one_unit_over_fires(store: Store, make_settings: Any) -> None:
    clock = SimClock()
    settings, engine = make_engine(store, make_settings, [CONC], clock)
    limit = settings.limits_for("main").max_concentration
    engine.evaluate("main", snapshot(concentration__largest_share=limit), T0)
    assert active(engine) == {}
    engine.evaluate("main", snapshot(now=T0 + 1, concentration__largest_share=limit + 0.0001), T0 + 1)
    alert = active(engine)["conc"]
    assert alert["threshold"] == limit and alert["threshold_ref"] == "limits.max_concentration"


def test_a_limit_change_moves_the_rule_at_the_next_evaluation_without_a_restart(
    store: Store, make_settings: Any
) -> None:
    clock = SimClock()
    settings, engine = make_engine(store, make_settings, [CONC], clock)
    set_limits(store, settings, {"max_concentration": 0.2})
    engine.evaluate("main", snapshot(concentration__largest_share=0.2), T0)
    assert active(engine) == {}  # at the new limit
    engine.evaluate("main", snapshot(now=T0 + 1, concentration__largest_share=0.2001), T0 + 1)
    assert active(engine)["conc"]["threshold"] == 0.2

    set_limits(store, settings, {"max_concentration": 0.3}, now=T0 + 2)  # looser: the same figure is clear
    engine.evaluate("main", snapshot(now=T0 + 2, concentration__largest_share=0.2001), T0 + 2)
    assert active(engine) == {}

    set_limits(store, settings, {"max_concentration": 0.25}, now=T0 + 3)
    engine.evaluate("main", snapshot(now=T0 + 3, concentration__largest_share=0.2501), T0 + 3)
    assert active(engine)["conc"]["threshold"] == 0.25
    set_limits(store, settings, {"max_concentration": 0.24}, now=T0 + 4)  # an active alert follows the limit
    engine.evaluate("main", snapshot(now=T0 + 4, concentration__largest_share=0.2501), T0 + 4)
    assert active(engine)["conc"]["threshold"] == 0.24


def test_a_rule_on_an_unset_limit_never_fires_until_the_limit_is_set(store: Store, make_settings: Any) -> None:
    clock = SimClock()
    stressed = rule("stressed", "var.stressed_var99", ">", "limits.stressed_var_limit", "HIGH")
    loss = rule("loss", "pnl.daily", "<=", "limits.max_daily_loss", "HIGH", threshold_fraction=-1.0)
    settings, engine = make_engine(store, make_settings, [stressed, loss], clock)
    big = snapshot(var__stressed_var99=1e9, pnl__daily=-1e9)
    engine.evaluate("main", big, T0)
    assert active(engine) == {}
    set_limits(store, settings, {"stressed_var_limit": "14000", "max_daily_loss": "5000"})
    engine.evaluate("main", snapshot(now=T0 + 1, var__stressed_var99=14000.0, pnl__daily=-4999.99), T0 + 1)
    assert active(engine) == {}  # exactly at the stressed limit; a loss just under the loss limit
    engine.evaluate("main", snapshot(now=T0 + 2, var__stressed_var99=14000.01, pnl__daily=-5000.0), T0 + 2)
    got = active(engine)
    assert (got["stressed"]["threshold"], got["loss"]["threshold"]) == (14000.0, -5000.0)
    assert got["loss"]["threshold_ref"] == "-1 x limits.max_daily_loss"


@pytest.mark.parametrize("limit", [0.2, 0.3])
def test_the_default_concentration_rule_and_light_follow_the_limit(limit: float) -> None:
    settings = load_settings(ROOT / "riskdesk.toml")
    limits = Limits(max_concentration=limit)
    rules = settings.alert_rules
    conc = next(r for r in rules if r.id == "concentration")
    assert resolve_threshold(conc, limits) == limit
    for share, over in ((limit, False), (limit + 0.0001, True)):
        snap = snapshot(concentration__largest_share=share)
        light = {x.area: x for x in analytics.traffic_lights(rules, snap, "main", (), limits)}["Concentration"]
        breached = analytics.compare(share, conc.op, resolve_threshold(conc, limits) or math.nan)
        assert breached is over
        assert (light.level == "red") is over and light.level != "green"  # at the limit: amber (80%+)


# -- routing and inhibition ----------------------------------------------------------------------------------

RECIPIENTS = {"desk": {"email": "desk@test.local"}, "boss": {"email": "boss@test.local"}}
ESCALATION = {"MEDIUM": [{"delay_seconds": 0, "recipients": ["desk"], "channels": ["log", "email"]}]}


def sent(engine: Any) -> set[tuple[str, str, str]]:
    """(rule id, channel, recipient) of every notification recorded (delivered or skipped without SMTP)."""
    return {
        (e["rule_id"], r["channel"], r["recipient"])
        for r in engine.delivery_log("main", count=1000)
        for e in r["events"]
    }


def test_a_rules_own_channels_and_recipients_route_its_alerts(store: Store, make_settings: Any) -> None:
    clock = SimClock()
    own = rule("own", "leverage", ">", 0.05, "MEDIUM", channels=["email"], recipients=["boss"])
    default = rule("default", "equity", ">", 1.0, "MEDIUM")
    _, engine = make_engine(
        store, make_settings, [own, default], clock,
        notifications={"recipients": RECIPIENTS}, escalation=ESCALATION,
    )  # fmt: skip
    engine.evaluate("main", snapshot(), T0)
    engine.tick(T0)
    assert sent(engine) == {("own", "email", "boss"), ("default", "log", "log"), ("default", "email", "desk")}
    assert active(engine)["own"]["route"] == {"channels": ["email"], "recipients": ["boss"]}
    assert active(engine)["default"]["route"] is None


def test_an_edited_route_applies_to_the_rule_and_resolved_goes_to_those_told(store: Store, make_settings: Any) -> None:
    clock = SimClock()
    own = rule("own", "leverage", ">", 0.05, "MEDIUM", recipients=["boss"])  # channels from the policy
    _, engine = make_engine(
        store, make_settings, [own], clock, notifications={"recipients": RECIPIENTS}, escalation=ESCALATION
    )
    engine.evaluate("main", snapshot(), T0)
    engine.tick(T0)
    engine.evaluate("main", snapshot(now=T0 + 1, leverage=0.01), T0 + 1)
    engine.tick(T0 + 1)
    kinds = {
        (e["kind"], r["channel"], r["recipient"]) for r in engine.delivery_log("main", count=1000) for e in r["events"]
    }
    assert kinds == {
        ("triggered", "log", "log"), ("triggered", "email", "boss"),
        ("resolved", "log", "log"), ("resolved", "email", "boss"),
    }  # fmt: skip


def test_inhibition_names_the_critical_rule_on_the_alert_and_in_its_history(store: Store, make_settings: Any) -> None:
    clock = SimClock()
    warn = rule("var_warning", "var.utilization", ">=", 0.8, "MEDIUM")
    crit = rule("var_breach", "var.utilization", ">=", 1.0, "CRITICAL")
    _, engine = make_engine(store, make_settings, [warn, crit], clock)
    engine.evaluate("main", snapshot(var__utilization=1.2), T0)
    got = active(engine)
    assert got["var_warning"]["inhibited"] and got["var_warning"]["inhibited_by"] == "var_breach"
    assert got["var_breach"]["inhibited_by"] is None
    notes = [r["note"] for r in engine.alert_history("main") if r["event"] == "INHIBITED"]
    assert len(notes) == 1 and notes[0].startswith("inhibited by var_breach")
    engine.evaluate("main", snapshot(now=T0 + 1, var__utilization=0.9), T0 + 1)
    got = active(engine)
    assert not got["var_warning"]["inhibited"] and got["var_warning"]["inhibited_by"] is None


def test_a_notification_shows_the_resolved_threshold_and_the_limit_it_came_from(
    store: Store, make_settings: Any
) -> None:
    clock = SimClock()
    settings, engine = make_engine(store, make_settings, [CONC], clock)
    set_limits(store, settings, {"max_concentration": 0.2})
    engine.evaluate("main", snapshot(concentration__largest_share=0.25), T0)
    alert = active(engine)["conc"]
    event = {
        "kind": "triggered", "portfolio_id": "main", "ts": T0, "level": 0, "repeat": False, "channels": ["log"],
        "acknowledged_by": None, "acknowledged_at": None, "alert": public_alert(alert),
    }  # fmt: skip
    _, body, _ = Renderer().render_event(event)
    assert "Condition:   concentration.largest_share > 20.00% (limits.max_concentration)" in body, body


@pytest.mark.parametrize(
    ("threshold", "fraction", "message"),
    [
        ("limits.bogus", 1.0, r"threshold 'limits.bogus': a number or limits.<a field of \[limits\]>"),
        ("0.3", 1.0, r"threshold '0.3': a number or limits"),
        ("limits.var_limit", 0.0, r"threshold_fraction must not be 0"),
        (0.3, 0.5, r"threshold_fraction applies only to a limits.<field> threshold"),
    ],
)
def test_the_settings_file_refuses_a_bad_limit_threshold(
    make_settings: Any, threshold: Any, fraction: float, message: str
) -> None:
    from engine.errors import ConfigError

    bad = rule("x", "var.var95", ">", threshold, "LOW", threshold_fraction=fraction)
    with pytest.raises(ConfigError, match=message):
        make_settings({"alert_rules": [bad]})


def test_a_resolved_alert_is_told_to_those_told_it_fired_not_to_the_route_edited_since(
    store: Store, make_settings: Any
) -> None:
    # Arrange: the rule's own recipient (boss) was told; then the rule is routed to the desk instead
    clock = SimClock()
    own = rule("own", "leverage", ">", 0.05, "MEDIUM", recipients=["boss"])
    _, engine = make_engine(
        store, make_settings, [own], clock, notifications={"recipients": RECIPIENTS}, escalation=ESCALATION
    )
    engine.evaluate("main", snapshot(), T0)
    engine.tick(T0)
    engine.update_rule("own", {"recipients": ["desk"]}, actor="ops")
    engine.evaluate("main", snapshot(now=T0 + 1), T0 + 1)
    assert active(engine)["own"]["route"] == {"channels": [], "recipients": ["desk"]}
    # Act: it resolves
    engine.evaluate("main", snapshot(now=T0 + 2, leverage=0.01), T0 + 2)
    engine.tick(T0 + 2)
    # Assert: the boss learns it resolved; the desk, never told it fired, is not told it resolved
    assert {(e["kind"], r["channel"], r["recipient"]) for r in engine.delivery_log("main") for e in r["events"]} == {
        ("triggered", "log", "log"), ("triggered", "email", "boss"),
        ("resolved", "log", "log"), ("resolved", "email", "boss"),
    }  # fmt: skip


def test_whoever_a_reminder_reached_is_told_that_the_alert_resolved(store: Store, make_settings: Any) -> None:
    # Arrange: told the boss; routed to the desk; a reminder 1000 s after the first message reaches the desk
    clock = SimClock()
    own = rule("own", "leverage", ">", 0.05, "MEDIUM", recipients=["boss"])
    _, engine = make_engine(
        store, make_settings, [own], clock, escalation=ESCALATION,
        notifications={"recipients": RECIPIENTS, "repeat_interval_seconds": 1000},
    )  # fmt: skip
    engine.evaluate("main", snapshot(), T0)
    engine.tick(T0)
    engine.update_rule("own", {"recipients": ["desk"]}, actor="ops")
    for seconds in (999, 1000, 1001):
        engine.evaluate("main", snapshot(now=T0 + seconds), T0 + seconds)
        engine.tick(T0 + seconds)
    emails = [(r["recipient"], r["ts"] - T0) for r in reversed(engine.delivery_log("main", channel="email"))]
    assert emails == [("boss", 0.0), ("desk", 1000.0)]
    # Act: it resolves
    engine.evaluate("main", snapshot(now=T0 + 1002, leverage=0.01), T0 + 1002)
    engine.tick(T0 + 1002)
    # Assert: both were told of it, both are told it resolved
    emails = engine.delivery_log("main", channel="email")
    assert {r["recipient"] for r in emails if r["events"][0]["kind"] == "resolved"} == {"boss", "desk"}
