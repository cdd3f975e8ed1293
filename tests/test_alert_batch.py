"""logic/alert_batch.py: a tick's alerts evaluated together leave exactly the state of one-by-one evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

import logic.alert_batch
import warmup
from engine.settings import Settings, load_settings
from engine.store import PortfolioKeys, Store
from logic.alerts import build_alert_engine
from logic.rules import ACTION_RULE_PREFIX

from .alerts_support import T0, SimClock, snapshot

ROOT = Path(__file__).resolve().parent.parent
PIDS = [f"b{k:02d}" for k in range(24)]
VOLATILE = ("alert_id", "action_id", "source_alert_id")


def _shipped() -> Settings:
    return load_settings(ROOT / "riskdesk.toml", env={})


def _snapshots(now: float, step: int) -> dict[str, dict[str, Any]]:
    """Snapshots that trigger, hold, clear and go stale differently per portfolio and step (the shipped rules
    without actions: VaR warning and breach, concentration, margin level, stale data)."""
    out = {}
    for k, pid in enumerate(PIDS):
        utilization = [0.5, 0.85, 1.2, 0.95][(k + step) % 4]
        share = [0.1, 0.4][(k // 2 + step) % 2]
        margin = [None, 120.0, 300.0][(k + 2 * step) % 3]
        market_ts = now - (120.0 if (k + step) % 7 == 0 else 0.0)
        out[pid] = snapshot(
            pid, now, market_ts=market_ts, var__utilization=utilization, concentration__largest_share=share,
            margin__level=margin,
        )  # fmt: skip
    return out


def _strip(node: Any, volatile: tuple[str, ...] = VOLATILE) -> Any:
    """``node`` without its ``volatile`` fields (random ids), at every depth."""
    if isinstance(node, dict):
        return {k: _strip(v, volatile) for k, v in node.items() if k not in volatile}
    if isinstance(node, list):
        return [_strip(v, volatile) for v in node]
    return node


def _state(store: Store) -> dict[str, Any]:
    out = {}
    for pid in PIDS:
        keys = PortfolioKeys(pid)
        out[pid] = {
            "alerts": _strip(store.read_active_alerts(pid)),
            "timers": store.read_json_hash(Store.alert_eval_key(pid)),
            "log": [(r["event"], r["rule_id"]) for r in store.read_stream_json(keys.alert_log, count=1000)],
            "outbox": len(store.read_field_names(Store.outbox_key(pid))),
        }
    return out


def _fresh(client: redis.Redis) -> tuple[Store, SimClock, Any]:
    """A freshly seeded store (the shipped settings), a clock at T0 and an alert engine on them."""
    client.flushdb()
    store = Store(client)
    settings = _shipped()
    warmup.seed(store, settings)
    clock = SimClock(T0)
    return store, clock, build_alert_engine(store, settings, clock)


def _run(client: redis.Redis, batched: bool) -> tuple[dict[str, Any], list[dict[str, list[Any]]]]:
    store, clock, engine = _fresh(client)
    transitions = []
    for step, dt in enumerate((0.0, 5.0, 11.0, 20.0, 45.0, 100.0)):
        now = clock.advance(dt)
        snaps = _snapshots(now, step)
        if batched:
            got = engine.evaluate_many(snaps, now)
        else:
            got = {pid: t for pid, snap in snaps.items() if (t := engine.evaluate(pid, snap, now))}
        transitions.append({pid: _strip(t) for pid, t in got.items() if t})
    return _state(store), transitions


@pytest.mark.parametrize("per_range", [125, 5])  # one range; five ranges of 5 (the last of 4), two at a time
def test_a_batch_of_snapshots_leaves_the_state_of_one_by_one_evaluation(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, per_range: int
) -> None:
    monkeypatch.setattr(logic.alert_batch, "ALERT_BATCH_PORTFOLIOS", per_range)
    # Act: the same six ticks of 24 portfolios, batched and one by one, each on a fresh store
    batched_state, batched_transitions = _run(redis_client, batched=True)
    single_state, single_transitions = _run(redis_client, batched=False)

    # Assert: the same alerts, timers, history and notifications, and the same transitions reported
    assert batched_state == single_state
    assert batched_transitions == single_transitions
    assert any(s["alerts"] for s in batched_state.values())  # some alerts are active at the end
    assert sum(len(s["log"]) for s in batched_state.values()) > len(PIDS)  # and many transitions happened


@pytest.mark.parametrize("per_range", [125, 5])
def test_a_conflicting_write_during_the_batch_falls_back_to_one_by_one(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, per_range: int
) -> None:
    monkeypatch.setattr(logic.alert_batch, "ALERT_BATCH_PORTFOLIOS", per_range)
    # Arrange: the batch's WATCH is broken by a write to one portfolio's timers between its read and its MULTI
    store = Store(redis_client)
    settings = _shipped()
    warmup.seed(store, settings)
    engine = build_alert_engine(store, settings, SimClock(T0))
    original = engine.planner.plan_evaluation
    touched: list[str] = []

    def plan_and_interfere(pid: str, *args: Any, **kwargs: Any) -> Any:
        if not touched:
            touched.append(pid)
            redis_client.hset(Store.alert_eval_key(pid), "someone", "{}")
        return original(pid, *args, **kwargs)

    engine.planner.plan_evaluation = plan_and_interfere  # type: ignore[method-assign]
    one_by_one: list[str] = []
    evaluate = engine.evaluate

    def counted(pid: str, *args: Any, **kwargs: Any) -> Any:
        one_by_one.append(pid)
        return evaluate(pid, *args, **kwargs)

    engine.evaluate = counted  # type: ignore[method-assign]

    # Act
    got = engine.evaluate_many(_snapshots(T0, 2), T0)

    # Assert: every portfolio was still evaluated (one by one after the conflict)
    fresh = _snapshots(T0, 2).items()
    breaching = [pid for pid, s in fresh if s["var"]["utilization"] >= 1.0 and s["market_ts"] == T0]
    assert breaching and all(pid in got for pid in breaching)
    for pid in breaching:
        assert "var_breach" in store.read_active_alerts(pid)
    # the interfering timer was seen: only an evaluation that read after the write drops it (no such rule)
    assert "someone" not in store.read_json_hash(Store.alert_eval_key(touched[0]))
    # only the conflicting range went one by one, each of its portfolios once (one range: all of them; ranges of
    # 5: two at most, as two run at once and the first planning of each may be the one that interferes)
    assert touched[0] in one_by_one and len(set(one_by_one)) == len(one_by_one)
    assert len(one_by_one) == len(PIDS) if per_range >= len(PIDS) else len(one_by_one) <= 2 * per_range


class _Forgetful(dict):  # type: ignore[type-arg]
    """An engine's ``quiet`` that remembers nothing: every portfolio is planned at every evaluation."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def _run_with_ticks(client: redis.Redis, skip_quiet: bool) -> tuple[dict[str, Any], int]:
    """Six ticks of snapshots, each followed by three timers ticks (the last past the stale-data limit); returns
    the state and the number of portfolios planned."""
    store, clock, engine = _fresh(client)
    if not skip_quiet:
        engine.quiet = _Forgetful()
    planned = [0]
    original = engine.planner.plan_evaluation

    def counted(*args: Any, **kwargs: Any) -> Any:
        planned[0] += 1
        return original(*args, **kwargs)

    engine.planner.plan_evaluation = counted  # type: ignore[method-assign]
    for step, dt in enumerate((0.0, 5.0, 11.0, 20.0, 45.0, 100.0)):
        now = clock.advance(dt)
        engine.evaluate_many(_snapshots(now, step), now)
        engine.tick(now + 2.0)
        engine.tick(now + 3.0)
        engine.tick(now + 61.0)
    return _state(store), planned[0]


def test_timers_ticks_that_skip_quiet_portfolios_leave_the_state_of_planning_every_one(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: transactions of 5 portfolios (24 portfolios: 5 of them)
    monkeypatch.setattr(logic.alert_batch, "ALERT_BATCH_PORTFOLIOS", 5)

    # Act: the same snapshots and timers ticks, quiet portfolios skipped or planned every time
    skipping, planned_skipping = _run_with_ticks(redis_client, skip_quiet=True)
    planning, planned_all = _run_with_ticks(redis_client, skip_quiet=False)

    # Assert: the same alerts, timers, history and notifications; quiet portfolios were skipped, others not
    assert skipping == planning
    assert planned_all == 6 * 4 * len(PIDS) and len(PIDS) < planned_skipping < planned_all
    assert sum(len(s["log"]) for s in skipping.values()) > len(PIDS)  # many transitions happened


def _pending_then_timers(client: redis.Redis, every: float, after: float) -> tuple[Any, dict[str, Any]]:
    """VaR at 85% of its limit from T0 (the shipped ``var_warning``: 10 s pending), evaluated as a tick at
    T0 + 9.75, then a timers run ``after`` seconds later with the background period ``every``; the engine and
    the active alerts of the portfolio."""
    store, clock, engine = _fresh(client)
    engine.timers_every = every
    pid = PIDS[0]
    engine.evaluate_many({pid: snapshot(pid, T0, var__utilization=0.85)}, T0)
    engine.evaluate_many({pid: snapshot(pid, T0 + 9.75, var__utilization=0.85)}, T0 + 9.75)
    engine.tick(T0 + 9.75 + after)
    return engine, store.read_active_alerts(pid)


def test_a_timers_run_skips_a_portfolio_a_tick_planned_less_than_one_period_before(redis_client: redis.Redis) -> None:
    # Act / Assert: the pending period completes at T0 + 10; a run 0.375 s after the tick's planning (under the
    # 0.5 s period) leaves it to the next run, one exactly a period after plans it and the alert triggers
    _, under = _pending_then_timers(redis_client, every=0.5, after=0.375)
    assert under == {}
    _, at = _pending_then_timers(redis_client, every=0.5, after=0.5)
    assert set(at) == {"var_warning"} and at["var_warning"]["triggered_at"] == T0 + 10.25
    # a tick called directly (no background period) skips nothing, as before
    _, direct = _pending_then_timers(redis_client, every=0.0, after=0.375)
    assert set(direct) == {"var_warning"} and direct["var_warning"]["triggered_at"] == T0 + 10.125


def test_only_the_very_snapshot_planned_at_a_time_before_now_is_skipped(redis_client: redis.Redis) -> None:
    # Arrange: a tick planned PIDS[0]'s snapshot at T0 + 9.75 (the engine holds it)
    engine, _ = _pending_then_timers(redis_client, every=0.5, after=0.375)
    pid = PIDS[0]
    held = engine.planned[pid][1]

    # Assert: that snapshot within a period after is skipped; an equal copy (another snapshot read since), a
    # time before the planning (the clock went back: a replay restarted) or a whole period after is not
    assert logic.alert_batch.recently_planned(engine, {pid: held}, T0 + 10.0) == {pid}
    assert logic.alert_batch.recently_planned(engine, {pid: dict(held)}, T0 + 10.0) == set()
    assert logic.alert_batch.recently_planned(engine, {pid: held}, T0 + 9.5) == set()
    assert logic.alert_batch.recently_planned(engine, {pid: held}, T0 + 10.25) == set()


def test_a_range_whose_planning_fails_goes_one_by_one_and_the_other_ranges_actions_run(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: ranges of 5 (two at a time); the first portfolio's stored timer of var_warning is JSON but not an
    # object (its planning fails), and a portfolio of the second range breaches VaR (var_breach sets REDUCING)
    monkeypatch.setattr(logic.alert_batch, "ALERT_BATCH_PORTFOLIOS", 5)
    store, _, engine = _fresh(redis_client)
    pids, broken, breaching = PIDS[:10], PIDS[0], PIDS[7]
    redis_client.hset(Store.alert_eval_key(broken), "var_warning", '"x"')
    snaps = {pid: snapshot(pid, T0, var__utilization=1.2 if pid == breaching else 0.5) for pid in pids}

    # Act: the broken portfolio's own evaluation reports its error
    with pytest.raises(AttributeError):
        engine.evaluate_many(snaps, T0)

    # Assert: the breach triggered and its automated action ran: none left queued, its outcome on record (the
    # action's own alert: these test portfolios have no trading state to set); the broken record is left as it was
    alerts = store.read_active_alerts(breaching)
    assert "var_breach" in alerts and f"{ACTION_RULE_PREFIX}var_breach" in alerts
    assert store.read_pending_actions(breaching) == {}
    assert redis_client.hget(Store.alert_eval_key(broken), "var_warning") == b'"x"'


def test_closing_the_timers_thread_lets_a_direct_tick_skip_nothing_again(redis_client: redis.Redis) -> None:
    # Arrange: a background period set, then the thread stopped
    store, _, engine = _fresh(redis_client)
    engine.start_background(0.5)
    engine.close()
    pid = PIDS[0]
    engine.evaluate_many({pid: snapshot(pid, T0, var__utilization=0.85)}, T0)
    engine.evaluate_many({pid: snapshot(pid, T0 + 9.75, var__utilization=0.85)}, T0 + 9.75)

    # Act: a direct tick 0.375 s after the tick's planning, the pending period (10 s) complete
    engine.tick(T0 + 10.125)

    # Assert
    assert "var_warning" in store.read_active_alerts(pid)
