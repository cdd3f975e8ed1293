"""The Alerts page's action panel, feed and counts, and the System page's kill switch and monitors, under
Streamlit's AppTest against a real seeded Redis (the setup of tests/test_dashboard.py).

What a head of risk relies on here: Resolve closes the alert the picker shows (also after it was acknowledged);
an open alert is listed and counted however long ago it fired; a halt is lifted only after a confirmation; and a
dead monitor among those sharing the portfolios is named, not hidden behind the shared heartbeat.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from engine.clocks import ClockMode, MarketClock
from engine.feeds import Bar, IterableFeed
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings
from engine.store import Store
from engine.store.keys import MONITORS_KEY
from engine.stream import StreamDaemon
from logic import views
from logic.alerts import build_alert_engine
from logic.monitor import DEFAULT_CLAIM_IDLE_SECONDS, Monitor
from logic.views.common import monitor_members
from logic.views.system import StateChange

from .alerts_support import SimClock, rule, snapshot
from .conftest import TEST_CONFIG, merge
from .e2e_stack import toml_dumps

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
TIMEOUT = 30.0
SHARDED = {"monitor": {"shard_portfolios": True}}
"""Settings of monitors that share the portfolios (logic/shards.py)."""


# -- helpers -------------------------------------------------------------------------------------------------


def point_app_at(monkeypatch: pytest.MonkeyPatch, url: str, tmp_path: Path, override: dict[str, Any]) -> None:
    config = tmp_path / "riskdesk.toml"
    config.write_text(toml_dumps(merge(TEST_CONFIG, override)), encoding="utf-8")
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("RISKDESK_CONFIG", str(config))
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture
def app_env(
    redis_server: EmbeddedRedis, seeded_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[dict[str, Any]], None]]:
    """The app pointed at the seeded store; call the fixture's value with settings overrides to change them."""
    point_app_at(monkeypatch, redis_server.url, tmp_path, {})
    yield lambda override: point_app_at(monkeypatch, redis_server.url, tmp_path, override)
    st.cache_resource.clear()


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state["refresh"] = "Paused"
    at.switch_page(f"screens/{page}.py")
    return at.run()


def joined(elements: Any) -> str:
    return "\n".join(str(e.value) for e in elements).replace("\\", "")


def metric(at: AppTest, label: str) -> str:
    for m in at.metric:
        if m.label == label:
            return str(m.value)
    raise AssertionError(f"no metric {label!r}; have {[m.label for m in at.metric]}")


def frame_with(at: AppTest, column: str) -> Any:
    for df in at.dataframe:
        if column in df.value.columns:
            return df.value
    raise AssertionError(f"no table with a {column!r} column")


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def statuses(store: Store) -> dict[str, str]:
    return {rule_id: a["status"] for rule_id, a in store.read_active_alerts("main").items()}


def trigger_two_alerts(store: Store, settings: Settings) -> None:
    """Two TRIGGERED alerts on main, from rules whose threshold every snapshot passes (the real monitor)."""
    engine = build_alert_engine(store, settings)
    engine.add_rule(rule("a_conc", "concentration.hhi", ">=", 0.0, "HIGH"), "tester")
    engine.add_rule(rule("b_var", "var.utilization", ">=", 0.0, "CRITICAL"), "tester")
    Monitor(store, settings, alert_engine=engine).refresh()
    assert statuses(store) == {"a_conc": "TRIGGERED", "b_var": "TRIGGERED"}


# -- Alerts: the action panel --------------------------------------------------------------------------------


def test_resolve_after_acknowledge_closes_the_alert_the_picker_showed_not_another(
    app_env: Any, seeded_store: Store, settings: Settings
) -> None:
    trigger_two_alerts(seeded_store, settings)
    at = open_page("alerts")
    assert_clean(at)
    picker = at.selectbox(key="al_target")
    assert len(picker.options) == 2
    picker.select_index(1)  # not the first: a reset of the picker would land on the other alert
    at.run()
    chosen = at.selectbox(key="al_target").value
    other = next(r for r in ("a_conc", "b_var") if r != chosen[1])

    at.button(key="FormSubmitter:alert_action_form-Acknowledge").click().run()
    assert_clean(at)
    assert f"Alert main · {chosen[1]} acknowledged." in joined(at.success)
    assert statuses(seeded_store) == {chosen[1]: "ACKNOWLEDGED", other: "TRIGGERED"}
    assert at.selectbox(key="al_target").value == chosen  # still the alert just acknowledged

    at.button(key="FormSubmitter:alert_action_form-Resolve").click().run()
    assert_clean(at)
    assert f"Alert main · {chosen[1]} resolved." in joined(at.success)
    assert statuses(seeded_store) == {other: "TRIGGERED"}  # the other one is still open, untouched


def test_an_alert_that_fired_again_behind_the_page_is_not_acknowledged_by_a_click_on_the_old_one(
    app_env: Any, seeded_store: Store, settings: Settings
) -> None:
    """The page showed b_var's alert; it cleared and fired again (a new alert) before the click. Acknowledge must
    not silence the new breach nobody has seen: refused ALERT_CHANGED, nothing written; after the page shows the
    new alert, Acknowledge acts on it."""
    clock = SimClock()
    engine = build_alert_engine(seeded_store, settings, clock)
    engine.add_rule(rule("b_var", "var.utilization", ">=", 0.0, "CRITICAL"), "tester")
    engine.evaluate("main", snapshot(now=clock.now, var__utilization=0.5), clock.now)
    first = seeded_store.read_active_alerts("main")["b_var"]["alert_id"]
    at = open_page("alerts")
    assert_clean(at)
    assert at.selectbox(key="al_target").value == ("main", "b_var")

    clock.advance(10)  # behind the page: clear (no clear period), then breach again
    engine.evaluate("main", snapshot(now=clock.now, var__utilization=-0.5), clock.now)
    clock.advance(10)
    engine.evaluate("main", snapshot(now=clock.now, var__utilization=0.5), clock.now)
    second = seeded_store.read_active_alerts("main")["b_var"]
    assert second["alert_id"] != first and second["status"] == "TRIGGERED"

    at.button(key="FormSubmitter:alert_action_form-Acknowledge").click().run()
    assert_clean(at)
    assert "fired again since it was shown" in joined(at.error) + joined(at.warning)
    assert seeded_store.read_active_alerts("main")["b_var"] == second  # untouched

    at.button(key="FormSubmitter:alert_action_form-Acknowledge").click().run()  # the page now shows the new one
    assert_clean(at)
    assert "Alert main · b_var acknowledged." in joined(at.success)
    acknowledged = seeded_store.read_active_alerts("main")["b_var"]
    assert (acknowledged["alert_id"], acknowledged["status"]) == (second["alert_id"], "ACKNOWLEDGED")


def test_the_picker_label_names_the_alert_without_its_state(
    app_env: Any, seeded_store: Store, settings: Settings
) -> None:
    trigger_two_alerts(seeded_store, settings)
    at = open_page("alerts")
    assert sorted(at.selectbox(key="al_target").options) == ["main · a_conc", "main · b_var"]


# -- Alerts: an old open alert -------------------------------------------------------------------------------


def age_alert(store: Store, rule_id: str, seconds: float) -> None:
    """Make the active alert ``rule_id`` of main look as if it fired ``seconds`` ago."""
    alerts = store.read_active_alerts("main")
    alerts[rule_id]["triggered_at"] = time.time() - seconds
    store.write_active_alerts("main", alerts)


def test_an_open_critical_alert_older_than_the_window_is_listed_and_counted(
    app_env: Any, seeded_store: Store, settings: Settings
) -> None:
    trigger_two_alerts(seeded_store, settings)
    age_alert(seeded_store, "b_var", 86_400.0 + 3600.0)  # fired 25 h ago (Friday), never acknowledged
    at = open_page("alerts")
    assert_clean(at)
    assert at.selectbox(key="al_window").value == "24 h"  # the default window
    feed = frame_with(at, "rule_id")
    assert sorted(feed["rule_id"]) == ["a_conc", "b_var"]
    assert (metric(at, "Active"), metric(at, "Unacknowledged"), metric(at, "Critical active")) == ("2", "2", "1")


def test_the_headline_counts_ignore_the_feeds_filters(app_env: Any, seeded_store: Store, settings: Settings) -> None:
    trigger_two_alerts(seeded_store, settings)
    at = open_page("alerts")
    at.multiselect(key="al_sev").set_value(["LOW"]).run()  # no active alert is LOW
    assert_clean(at)
    assert "No alert matches the filters." in joined(at.caption)
    assert (metric(at, "Active"), metric(at, "Critical active")) == ("2", "1")


def resolve_at(engine: Any, clock: SimClock, now: float) -> dict[str, Any]:
    """Trigger then clear ``var_warning`` on main; the resolved alert as listed."""
    engine.evaluate("main", snapshot(now=now - 1, var__utilization=0.9), now - 1)
    clock.now = now
    engine.evaluate("main", snapshot(now=now, var__utilization=0.1), now)
    return next(a for a in engine.list_alerts("main", status="RESOLVED") if a.get("resolved_at") == now)


def test_since_thins_out_resolved_alerts_at_its_boundary_and_never_active_ones(
    store: Store, make_settings: Any
) -> None:
    clock = SimClock()
    rules = [
        rule("var_warning", "var.utilization", ">=", 0.8, "MEDIUM"),
        rule("hhi", "concentration.hhi", ">=", 0.4, "HIGH"),
    ]
    engine = build_alert_engine(store, make_settings({"alert_rules": rules}), clock)
    old = clock.now
    engine.evaluate("main", snapshot(now=old, concentration__hhi=0.9), old)  # fires now and stays open
    resolved = resolve_at(engine, clock, old + 1000.0)
    t = resolved["resolved_at"]
    listed = {a["rule_id"] for a in engine.list_alerts("main", since=t)}
    assert listed == {"hhi", "var_warning"}  # resolved exactly at since: kept; active from long before: kept
    listed = {a["rule_id"] for a in engine.list_alerts("main", since=t + 1)}
    assert listed == {"hhi"}  # one second later: the resolved one goes, the open one stays


def test_the_limit_cuts_resolved_alerts_first_and_never_an_active_one(store: Store, make_settings: Any) -> None:
    clock = SimClock()
    rules = [
        rule("var_warning", "var.utilization", ">=", 0.8, "MEDIUM"),
        rule("hhi", "concentration.hhi", ">=", 0.4, "HIGH"),
    ]
    engine = build_alert_engine(store, make_settings({"alert_rules": rules}), clock)
    engine.evaluate("main", snapshot(concentration__hhi=0.9), clock.now)  # the oldest alert, and open
    for k in range(1, 4):  # three resolved alerts, each newer than the open one
        resolve_at(engine, clock, clock.now + 100.0 * k)
    everything = engine.list_alerts("main")
    assert [a["status"] for a in everything].count("RESOLVED") == 3 and len(everything) == 4
    assert engine.list_alerts("main", limit=4) == everything  # at the limit: nothing cut
    cut = engine.list_alerts("main", limit=3)  # one over: the oldest resolved goes, not the oldest (open) alert
    assert [a["alert_id"] for a in cut] == [a["alert_id"] for a in everything if a is not everything[2]]
    assert cut[-1]["rule_id"] == "hhi" and cut[-1]["status"] == "TRIGGERED"
    assert [a["rule_id"] for a in engine.list_alerts("main", limit=1)] == ["hhi"]  # room for none resolved


# -- System: the kill switch ---------------------------------------------------------------------------------

RANK = {"ACTIVE": 0, "REDUCING": 1, "HALTED": 2}
"""How restrictive each state is (an independent statement of the order the page confirms lifts by)."""


@pytest.mark.parametrize("shown", ["ACTIVE", "REDUCING", "HALTED", None])
@pytest.mark.parametrize("new", ["ACTIVE", "REDUCING", "HALTED"])
def test_a_change_lifts_exactly_when_the_new_state_is_less_restrictive_than_the_shown_one(
    shown: str | None, new: str
) -> None:
    lifts = StateChange("main", new, "why", shown).lifts
    assert lifts == (RANK[new] < RANK[shown or "HALTED"])  # a state not shown counts as HALTED


def set_state(store: Store, settings: Settings, state: str) -> None:
    views.Desk(store.client, settings).risk_manager("main").set_trading_state(state, "set up", "tester")


def apply(at: AppTest, state: str, reason: str) -> AppTest:
    at.radio(key="ts_new_state").set_value(state)
    at.text_input(key="ts_reason").input(reason)
    return at.button(key="FormSubmitter:trading_state_form-Apply").click().run()


def test_lifting_a_halt_waits_for_its_confirmation_then_clears_the_form(
    app_env: Any, seeded_store: Store, settings: Settings
) -> None:
    set_state(seeded_store, settings, "HALTED")
    at = apply(open_page("system"), "ACTIVE", "breaker reviewed")
    assert_clean(at)
    assert seeded_store.read_trading_state("main").state == "HALTED"  # one click changes nothing
    assert "Lift main from HALTED to ACTIVE?" in joined(at.warning) and not at.success
    at.button(key="ts_confirm").click().run()
    assert_clean(at)
    state = seeded_store.read_trading_state("main")
    assert (state.state, state.reason) == ("ACTIVE", "breaker reviewed")
    assert "Trading state is now ACTIVE." in joined(at.success)
    assert at.text_input(key="ts_reason").value == ""  # the next change states its own reason
    assert at.radio(key="ts_new_state").value == "HALTED"  # back to the form's default
    assert not [b for b in at.button if b.key == "ts_confirm"]


def test_cancelling_a_lift_leaves_the_halt_and_writes_nothing(
    app_env: Any, seeded_store: Store, settings: Settings
) -> None:
    set_state(seeded_store, settings, "REDUCING")
    at = apply(open_page("system"), "ACTIVE", "VaR back under")
    assert "Lift main from REDUCING to ACTIVE?" in joined(at.warning)
    at.button(key="ts_cancel").click().run()
    assert_clean(at)
    assert seeded_store.read_trading_state("main").state == "REDUCING"
    assert not [b for b in at.button if b.key == "ts_confirm"] and not at.success


def test_a_stricter_or_the_same_state_applies_at_once(app_env: Any, seeded_store: Store, settings: Settings) -> None:
    set_state(seeded_store, settings, "REDUCING")
    at = apply(open_page("system"), "REDUCING", "same again")  # the boundary: not less restrictive
    assert "Trading state is now REDUCING." in joined(at.success)
    assert seeded_store.read_trading_state("main").reason == "same again"
    at = apply(at, "HALTED", "desk review")
    assert seeded_store.read_trading_state("main").state == "HALTED"
    assert not [b for b in at.button if b.key == "ts_confirm"]


def test_a_lift_without_a_reason_is_refused_before_any_confirmation(
    app_env: Any, seeded_store: Store, settings: Settings
) -> None:
    set_state(seeded_store, settings, "HALTED")
    at = apply(open_page("system"), "ACTIVE", "   ")
    assert_clean(at)
    assert "reason is required" in joined(at.error)
    assert not [b for b in at.button if b.key == "ts_confirm"]
    assert seeded_store.read_trading_state("main").state == "HALTED"


def test_a_confirmed_lift_is_refused_when_the_state_moved_after_it_was_asked(
    app_env: Any, seeded_store: Store, settings: Settings
) -> None:
    set_state(seeded_store, settings, "REDUCING")
    at = apply(open_page("system"), "ACTIVE", "VaR back under")
    rm = views.Desk(seeded_store.client, settings).risk_manager("main")
    rm.tighten_trading_state("HALTED", "alert dd_halt", "auto:dd_halt")  # the automation halts meanwhile
    at.run()
    assert "is HALTED now, not REDUCING" in joined(at.error)
    at.button(key="ts_confirm").click().run()
    assert_clean(at)
    assert seeded_store.read_trading_state("main").state == "HALTED"
    assert "auto:dd_halt" in joined(at.error)


# -- System: the monitors sharing the portfolios -------------------------------------------------------------


def test_monitor_members_are_live_up_to_the_claim_time_and_stale_one_second_past_it(
    store: Store, make_settings: Any
) -> None:
    desk = views.Desk(store.client, make_settings(SHARDED))
    wall = 1_800_000_000.0
    claim = DEFAULT_CLAIM_IDLE_SECONDS
    store.client.zadd(MONITORS_KEY, {"a": wall, "b": wall - claim, "c": wall - claim - 1})
    members = {m.consumer: (m.age_seconds, m.live) for m in monitor_members(desk, wall)}
    assert members == {"a": (0.0, True), "b": (claim, True), "c": (claim + 1, False)}


def test_without_sharing_a_leftover_membership_is_not_shown(store: Store, make_settings: Any) -> None:
    desk = views.Desk(store.client, make_settings())
    store.client.zadd(MONITORS_KEY, {"gone": 1.0})
    assert monitor_members(desk, 1_800_000_000.0) == ()


def test_the_system_page_names_a_dead_monitor_the_shared_heartbeat_hides(
    app_env: Any, seeded_store: Store, make_settings: Any
) -> None:
    app_env(SHARDED)
    now = time.time()
    seeded_store.write_heartbeat("monitor", {"ts": now, "consumer": "a", "ticks_processed": 7})  # a beats on
    seeded_store.client.zadd(MONITORS_KEY, {"a": now, "b": now - 120.0})  # b died two minutes ago
    at = open_page("system")
    assert_clean(at)
    assert metric(at, "Live monitors") == "1 of 2"
    monitors = frame_with(at, "last beat age (s)")
    rows = {r["monitor"]: r for _, r in monitors.iterrows()}
    assert (rows["a"]["state"], rows["b"]["state"]) == ("live", "stale")
    assert rows["b"]["last beat age (s)"] >= 120.0 and rows["b"]["stale after (s)"] == DEFAULT_CLAIM_IDLE_SECONDS
    warnings = joined(at.warning)
    assert "Monitor b stale" in warnings and "1 of 2 monitors live" in warnings and "Monitor a stale" not in warnings
    assert "monitor that beat last (a)" in joined(at.caption)
    health = views.check_health(views.Desk(seeded_store.client, make_settings(SHARDED)))
    (stale,) = [w for w in health.warnings if w.startswith("Monitor ")]
    assert stale.startswith("Monitor b stale") and "--consumer b" in stale  # how to bring it back


# -- System page: a live feed that ended is a stopped feed, not a finished replay ------------------------------------


def _stream_status(store: Store, settings: Settings, clock: SimClock) -> views.DaemonStatus:
    desk = views.Desk(store.client, settings, clock=MarketClock(store, wall=clock))
    return {d.name: d for d in views.daemon_statuses(desk)}["stream"]


def _run_to_the_end(store: Store, settings: Settings, clock: Callable[[], float], mode: ClockMode) -> None:
    """The stream daemon plays three bars (one a second, dated by ``clock``, or 6 Mar 2019 in a replay) until
    its feed has no more: a broker connection that closed, or a replay file's end."""
    t0 = clock() if mode is not ClockMode.REPLAY else 1_551_880_800.0  # 6 Mar 2019 14:00 UTC
    prices = store.read_market_header().tickers
    snap = store.read_market()
    bars = [Bar(t0 + i, {t: float(snap.prices[j]) * (1 + 1e-4 * i) for j, t in enumerate(prices)}) for i in range(3)]
    StreamDaemon(store, settings, IterableFeed(bars), clock=clock, interval=0, clock_mode=mode).run()


@pytest.mark.parametrize("mode", [ClockMode.LIVE, ClockMode.COMPRESSED])
def test_a_live_feed_that_ended_is_stale_after_exactly_the_limit_like_a_dead_daemon(
    seeded_store: Store, settings: Settings, mode: ClockMode
) -> None:
    # Arrange / Act: the feed's iterator ends (its connection closed)
    clock = SimClock(1_800_000_000.0)
    _run_to_the_end(seeded_store, settings, clock, mode)
    # Assert: no "ended" written; the heartbeat of its last bar ages on the wall clock
    beat = seeded_store.read_heartbeat("stream") or {}
    assert (beat["feed_state"], beat["clock"], float(beat["wall_ts"])) == ("running", str(mode), clock.now)
    limit = views.common._stale_after(settings)
    clock.advance(limit)
    status = _stream_status(seeded_store, settings, clock)
    assert (status.state, status.age_seconds) == ("running", limit)
    clock.advance(1.0)
    status = _stream_status(seeded_store, settings, clock)
    assert (status.state, status.age_seconds) == ("stale", limit + 1.0)
    assert "stopped writing heartbeats" in status.fix and "make run" in status.fix and "replay" not in status.fix


def test_an_ended_heartbeat_of_a_live_clock_is_judged_by_its_age_and_only_a_replays_is_finished(
    seeded_store: Store, settings: Settings
) -> None:
    # Arrange: an "ended" beat as a daemon before this fix wrote it for a live feed, and a replay's
    clock = SimClock(1_800_000_000.0)
    limit = views.common._stale_after(settings)
    beat = {"ts": clock.now, "wall_ts": clock.now, "feed_state": "ended", "run": "r1"}
    seeded_store.write_heartbeat("stream", {**beat, "clock": "live"})
    # Act / Assert: running up to the limit, stale one second over, never "finished"
    assert _stream_status(seeded_store, settings, SimClock(clock.now + limit)).state == "running"
    assert _stream_status(seeded_store, settings, SimClock(clock.now + limit + 1.0)).state == "stale"
    seeded_store.write_heartbeat("stream", {**beat, "clock": "replay"})
    assert _stream_status(seeded_store, settings, SimClock(clock.now + limit + 1.0)).state == "finished"


@pytest.mark.parametrize(
    ("mode", "shown", "not_shown"),
    [
        (ClockMode.LIVE, "Stream daemon stale (last heartbeat", "finished its replay"),
        (ClockMode.REPLAY, "Stream daemon finished its replay (last bar 2019-03-06 14:00 UTC)", "stopped writing"),
    ],
)
def test_the_system_page_says_a_stopped_live_feed_is_stale_and_only_a_replay_finished(
    app_env: Any, seeded_store: Store, settings: Settings, mode: ClockMode, shown: str, not_shown: str
) -> None:
    # Arrange: the feed ended an hour ago on the wall clock
    _run_to_the_end(seeded_store, settings, lambda: time.time() - 3600.0, mode)
    # Act
    at = open_page("system")
    # Assert
    assert_clean(at)
    warnings = joined(at.warning)
    assert shown in warnings and not_shown not in warnings, warnings
    restart = "start it with `make run`" if mode is ClockMode.LIVE else "start another with"
    assert restart in warnings, warnings
