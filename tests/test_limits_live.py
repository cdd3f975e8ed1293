"""Live, audited limits (issue 14): a change made through the API applies to the gate, the monitor and the pages
without a restart, each change is one audit record with before/after, and a bad value writes nothing."""

from __future__ import annotations

import math
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
import streamlit as st
from streamlit.testing.v1 import AppTest

import warmup
from engine import reload
from engine import settings as settings_module
from engine.errors import ConfigError, CorruptDataError
from engine.records import DecisionStatus, ExecutionStatus, ReasonCode, Role
from engine.settings import Limits, Settings, load_settings, settings_from_dict
from engine.store import LimitsChangeError, LimitsConflictError, PortfolioKeys, Store, decode_json, encode_json
from engine.store.limits import limits_data
from logic.access import AccessDenied, Identity, local_identity
from logic.batch import PortfolioLookup, live_limits, read_limits
from logic.monitor import Monitor
from logic.risk_manager import RiskManager
from logic.views import Desk, InputError, change_limits, limits_view

from .conftest import TEST_CONFIG, merge, store_contents, to_toml
from .test_monitor import _sim_ticks

NOW = 1_700_000_000.0
NO_FEES = {"fees": {"per_share": "0", "bps": "0", "minimum": "0"}}
APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"


def gate(store: Store, settings: Settings, pid: str = "main") -> RiskManager:
    return RiskManager(store.client, pid, settings, clock=lambda: NOW)


@pytest.fixture
def desk_settings() -> Settings:
    return settings_from_dict(merge(TEST_CONFIG, NO_FEES))


@pytest.fixture
def seeded(store: Store, desk_settings: Settings) -> Store:
    warmup.seed(store, desk_settings, now=NOW)
    return store


def codes(decision: Any) -> set[str]:
    return {r.code.value for r in decision.reasons}


def json_data(data: Any) -> Any:
    """``data`` as an audit record holds it (through the store's JSON codec)."""
    return decode_json(encode_json(data))


def page_key(store: Store, name: str) -> str:
    """The key of limit ``name``'s widget on the Limits page of ``main`` as it stands in ``store`` now."""
    return limits_view(Desk(store.client, settings_from_dict(TEST_CONFIG), clock=lambda: NOW), "main").widget_key(name)


RISK_MANAGER = Identity("https://idp.test", "alice", roles=frozenset({Role.RISK_MANAGER}))
COLLEAGUE = Identity("https://idp.test", "bob", roles=frozenset({Role.RISK_MANAGER}))


def test_a_concentration_change_applies_to_a_running_gate_at_its_boundary(
    seeded: Store, desk_settings: Settings
) -> None:
    rm = gate(seeded, desk_settings)
    # main: 1000 AAA @ 100 + 2000 BBB @ 50, cash 1M -> equity 1.2M; buying q AAA: (1000 + q) x 100 / 1.2M
    assert rm.check("AAA", 2001, "BUY").approved  # the settings' 0.5 lets 25.0008% through

    version = rm.set_limits({"max_concentration": 0.25}, "alice", "tighter after the review")

    assert version == 1
    other = gate(seeded, desk_settings)  # a second process, built before or after: the same rule
    for manager in (rm, other):
        at = manager.check("AAA", 2000, "BUY")
        assert at.status == DecisionStatus.APPROVED and at.concentration_after == pytest.approx(0.25, rel=1e-15)
        assert codes(manager.check("AAA", 2001, "BUY")) == {ReasonCode.CONCENTRATION.value}
    # and back: the next change is the next version, the running gate follows again
    assert other.set_limits({"max_concentration": 0.5}, "bob", "review undone") == 2
    assert rm.check("AAA", 2001, "BUY").approved


def test_a_var_limit_change_applies_to_execution_without_a_rebuild(seeded: Store, desk_settings: Settings) -> None:
    rm = gate(seeded, desk_settings)
    probe = rm.check("AAA", 100, "BUY")
    assert probe.var_after is not None
    seeded.change_limits(
        "main", {"var_limit": repr(probe.var_after)}, actor="alice", reason="cap at the probe",
        now=NOW, fallback=desk_settings.limits_for("main"),
    )  # fmt: skip

    refused = rm.execute("AAA", 101, "BUY", client_order_id="over")
    filled = rm.execute("AAA", 100, "BUY", client_order_id="at")

    assert refused.status.value == "REJECTED" and ReasonCode.VAR_LIMIT.value in {r.code.value for r in refused.reasons}
    assert filled.status.value == "FILLED"


def test_each_change_is_one_audit_record_with_before_after_actor_and_reason(
    seeded: Store, desk_settings: Settings
) -> None:
    rm = gate(seeded, desk_settings)
    rm.set_limits({"max_concentration": 0.4}, "ops", "the first live change")  # stores every limit
    rm.set_limits({"var_limit": "40000", "max_order_qty": 500}, "alice", "desk review")

    records = seeded.limits_changes("main")
    assert len(records) == 2
    record = records[0]
    assert record["actor"] == "alice" and record["reason"] == "desk review" and record["version"] == 2
    assert record["before"] == {"var_limit": "20000", "max_order_qty": 100000}  # only the changed fields
    assert record["after"] == {"var_limit": "40000", "max_order_qty": 500}
    audit = seeded.read_stream_json(PortfolioKeys("main").audit)[0]  # the same record on the audit stream
    assert {k: v for k, v in audit.items() if k != "id"} == {k: v for k, v in record.items() if k != "id"}
    stored = seeded.read_limits("main")
    assert stored is not None and stored.version == 2 and stored.limits.var_limit == Decimal("40000")
    assert stored.actor == "alice" and stored.ts == NOW
    assert seeded.read_limits("hedge") is None  # the other portfolio is untouched


def test_the_first_live_change_audits_every_limit_that_became_live(
    seeded: Store, desk_settings: Settings, tmp_path: Path
) -> None:
    # the dashboard's process runs with an override the gate's process does not have
    config = tmp_path / "riskdesk.toml"
    config.write_text(to_toml(merge(TEST_CONFIG, NO_FEES)))
    dash_settings = load_settings(str(config), env={"RISKDESK__LIMITS__VAR_LIMIT": "75000"})
    desk = Desk(seeded.client, dash_settings, clock=lambda: NOW)
    seen = limits_view(desk, "main")

    change_limits(desk, "main", {**seen.values, "max_concentration": "0.45"}, RISK_MANAGER, "a little tighter", seen)

    (record,) = seeded.limits_changes("main")
    stored = seeded.read_limits("main")
    assert stored is not None and record["version"] == stored.version == 1
    assert record["before"] == json_data(limits_data(dash_settings.limits_for("main")))  # every field, as it was
    assert record["after"] == json_data(limits_data(stored.limits))  # every field that is live now
    assert record["before"]["var_limit"] == record["after"]["var_limit"] == "75000"  # the override, on record
    assert record["before"]["max_concentration"] == 0.5 and record["after"]["max_concentration"] == 0.45
    history = limits_view(desk, "main").history
    assert history["changes"][0].startswith("max_concentration: 0.5 -> 0.45; stored as they were: var_limit = 75000")


@pytest.mark.parametrize(
    ("changes", "actor", "reason"),
    [
        ({"max_concentration": 1.01}, "alice", "r"),  # above its bound (le=1)
        ({"max_concentration": 0}, "alice", "r"),  # at its exclusive bound (gt=0)
        ({"var_limit": "-1"}, "alice", "r"),
        ({"var_limit": "lots"}, "alice", "r"),
        ({"max_order_qty": 1.5}, "alice", "r"),  # not a whole number
        ({"no_such_limit": 1}, "alice", "r"),
        ({"position_limits": {"aaa": 5}}, "alice", "r"),  # not a ticker (tickers are exact): the cap would not apply
        ({"position_limits": {"AAA": 5, "ZZZ": 5}}, "alice", "r"),  # one outside the universe spoils the change
        ({"var_limit": "40000"}, "", "r"),  # no actor
        ({"var_limit": "40000"}, "alice", "  "),  # no reason
        ({}, "alice", "r"),
    ],
)
def test_a_bad_change_is_refused_with_a_code_and_the_store_unchanged(
    seeded: Store, desk_settings: Settings, redis_client: redis.Redis, changes: dict[str, Any], actor: str,
    reason: str,
) -> None:  # fmt: skip
    rm = gate(seeded, desk_settings)
    rm.set_limits({"var_limit": "30000"}, "alice", "a first change")  # a record exists: it must not move
    before = store_contents(redis_client)

    with pytest.raises(LimitsChangeError) as err:
        rm.set_limits(changes, actor, reason)

    assert err.value.code == "LIMITS_INVALID"
    assert store_contents(redis_client) == before
    assert rm.limits.var_limit == Decimal("30000")


@pytest.mark.parametrize("roles", [set(), {Role.VIEWER}, {Role.TRADER}])
def test_only_a_risk_manager_or_admin_changes_limits_from_the_dashboard_and_a_refusal_writes_nothing(
    seeded: Store, desk_settings: Settings, redis_client: redis.Redis, roles: set[Role]
) -> None:
    desk = Desk(redis_client, desk_settings, clock=lambda: NOW)
    form = {"max_concentration": "0.25"}
    before = store_contents(redis_client)
    who = Identity("https://idp.test", "u1", roles=frozenset(roles), portfolios=frozenset({"main"}))
    seen = limits_view(desk, "main")
    with pytest.raises(AccessDenied):
        change_limits(desk, "main", form, who, "tighter", seen)
    assert store_contents(redis_client) == before
    manager = Identity("https://idp.test", "risk-1", roles=frozenset({Role.RISK_MANAGER}))
    assert change_limits(desk, "main", form, manager, "tighter", seen) == 1
    stored = seeded.read_limits("main")
    assert stored is not None and stored.actor == "https://idp.test|risk-1"


def test_a_change_at_its_bound_is_accepted(seeded: Store, desk_settings: Settings) -> None:
    rm = gate(seeded, desk_settings)
    assert rm.set_limits({"max_concentration": 1.0}, "alice", "le=1: exactly at the bound") == 1
    assert rm.set_limits({"position_limits": {"AAA": 5}}, "alice", "a universe ticker") == 2


def test_a_ticker_added_at_run_time_may_be_given_a_position_cap(seeded: Store, desk_settings: Settings) -> None:
    import warmup

    rm = gate(seeded, desk_settings)
    with pytest.raises(LimitsChangeError):
        rm.set_limits({"position_limits": {"EEE": 50}}, "alice", "not listed yet")
    warmup.add_ticker(seeded, desk_settings, "EEE", 40.0, 0.3, now=NOW)
    assert rm.set_limits({"position_limits": {"EEE": 50}}, "alice", "a ticker added at run time") == 1


def test_corrupt_stored_limits_fail_closed_and_a_missing_record_uses_the_settings(
    seeded: Store, desk_settings: Settings, redis_client: redis.Redis
) -> None:
    rm = gate(seeded, desk_settings)
    assert rm.check("AAA", 10, "BUY").approved  # no record: the settings' limits
    key = PortfolioKeys("main").limits
    redis_client.hset(key, mapping={"version": 7, "json": '{"var_limit": "not money"}'})

    refused = rm.check("AAA", 10, "BUY")
    assert refused.status == DecisionStatus.REJECTED
    assert ReasonCode.STORE_CORRUPT.value in codes(refused)
    assert rm.execute("AAA", 10, "BUY", client_order_id="c1").status.value == "REJECTED"

    redis_client.hset(key, "json", "{not json")
    assert ReasonCode.STORE_CORRUPT.value in codes(rm.check("AAA", 10, "BUY"))
    redis_client.delete(key)
    assert rm.check("AAA", 10, "BUY").approved


def test_a_live_limits_record_that_lost_its_version_fails_closed_instead_of_using_the_settings(
    seeded: Store, desk_settings: Settings, redis_client: redis.Redis
) -> None:
    rm = gate(seeded, desk_settings)
    rm.set_limits({"max_order_notional": "500"}, "alice", "tighter than the file")
    assert codes(rm.check("AAA", 10, "BUY")) == {ReasonCode.MAX_NOTIONAL.value}  # 10 x 100 > 500
    redis_client.hdel(PortfolioKeys("main").limits, "version")  # json still there: damaged, not absent
    trade_log = PortfolioKeys("main").trades.encode()
    damaged = {k: v for k, v in store_contents(redis_client).items() if k != trade_log}

    for n, manager in enumerate((rm, gate(seeded, desk_settings))):  # one that held version 1, and a fresh one
        refused = manager.check("AAA", 10, "BUY")
        assert refused.status == DecisionStatus.REJECTED
        assert ReasonCode.STORE_CORRUPT.value in codes(refused)
        result = manager.execute("AAA", 10, "BUY", client_order_id=f"lost-version-{n}")
        assert result.status == ExecutionStatus.REJECTED
    after = store_contents(redis_client)
    assert {k: v for k, v in after.items() if k != trade_log} == damaged  # nothing booked, nothing repaired
    assert all(b'"status":"REJECTED"' in entry[b"json"] for _, entry in after[trade_log][2])  # only refusals
    with pytest.raises(CorruptDataError):
        seeded.limits_or("main", desk_settings.limits_for("main"))


def test_a_limit_tightened_while_an_order_is_re_checked_applies_to_that_order(
    seeded: Store, desk_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    rm, other = gate(seeded, desk_settings), gate(seeded, desk_settings)
    checkers = []
    checker_for = rm.checker_for

    def tightened_meanwhile(view: Any) -> Any:  # after the execution's WATCH and read, before its EXEC
        if not checkers:
            other.set_limits({"max_order_notional": "500"}, "bob", "tighter, at that very moment")
        checkers.append(checker_for(view))
        return checkers[-1]

    monkeypatch.setattr(rm, "checker_for", tightened_meanwhile)

    result = rm.execute("AAA", 10, "BUY", client_order_id="racing")  # 10 x 100 = 1,000 > 500

    assert result.status == ExecutionStatus.REJECTED and len(checkers) == 2  # the EXEC aborted; re-checked
    assert {r.code for r in result.reasons} == {ReasonCode.MAX_NOTIONAL}
    assert seeded.read_portfolio("main").positions["AAA"].qty == 1000  # TEST_CONFIG's holding, unchanged


def test_the_monitors_next_snapshot_uses_the_new_var_limit(seeded: Store, desk_settings: Settings) -> None:
    monitor = Monitor(seeded, desk_settings)
    _sim_ticks(seeded, desk_settings, 1)
    monitor.process_available()
    first = seeded.read_snapshot("main")
    assert first is not None and first["var"]["limit"] == pytest.approx(20000.0)

    gate(seeded, desk_settings).set_limits({"var_limit": "40000"}, "alice", "more room")
    _sim_ticks(seeded, desk_settings, 1, seed=2)
    monitor.process_available()

    second = seeded.read_snapshot("main")
    assert second is not None and second["var"]["limit"] == pytest.approx(40000.0)
    # utilization: the VaR at the limit's confidence (0.95, one day) over the new limit
    assert second["var"]["utilization"] == pytest.approx(second["var"]["var95"] / 40000.0, rel=1e-9)
    assert first["var"]["utilization"] == pytest.approx(first["var"]["var95"] / 20000.0, rel=1e-9)


def test_the_views_show_the_live_limits_version_and_history(seeded: Store, desk_settings: Settings) -> None:
    desk = Desk(seeded.client, desk_settings, clock=lambda: NOW)
    view = limits_view(desk, "main")
    assert view.version == 0 and view.values["var_limit"] == "20000" and view.history.empty

    gate(seeded, desk_settings).set_limits({"var_limit": "45000"}, "carol", "quarterly")

    view = limits_view(desk, "main")
    assert view.version == 1 and view.actor == "carol" and view.values["var_limit"] == "45000"
    assert view.history["changes"][0].startswith("var_limit: 20000 -> 45000; stored as they were: ")
    gate(seeded, desk_settings).set_limits({"var_limit": "44000"}, "dan", "a bit less")
    assert list(limits_view(desk, "main").history["changes"])[0] == "var_limit: 45000 -> 44000"


def test_sync_applies_a_file_change_through_the_same_path_with_an_audit_record(
    redis_server: Any, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    config = tmp_path / "riskdesk.toml"
    config.write_text(to_toml(TEST_CONFIG))
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    assert warmup.main(["--config", str(config)]) == 0
    settings = settings_from_dict(TEST_CONFIG)
    rm = gate(store, settings)
    rm.set_limits({"max_order_qty": 10}, "alice", "live change")  # a record exists now
    capsys.readouterr()

    config.write_text(to_toml(merge(TEST_CONFIG, {"limits": {"max_order_qty": 50}})))
    assert warmup.main(["--config", str(config), "--sync", "--dry-run"]) == 0
    assert "would change main: limits.max_order_qty: 10 -> 50" in capsys.readouterr().out
    assert store.read_limits("main").version == 1  # type: ignore[union-attr]
    assert warmup.main(["--config", str(config), "--sync"]) == 0

    stored = store.read_limits("main")
    assert stored is not None and stored.version == 2 and stored.limits.max_order_qty == 50
    record = store.limits_changes("main")[0]
    assert record["before"] == {"max_order_qty": 10} and record["after"] == {"max_order_qty": 50}
    assert record["actor"] == warmup.ACTOR
    # the running gate (built with the old settings object) follows at its boundary; warmup.main stamped the
    # prices with the wall clock, so the gate reads that clock too (at NOW they would be years in the future)
    rm = RiskManager(store.client, "main", settings, clock=time.time)
    assert rm.check("AAA", 50, "BUY").approved
    assert codes(rm.check("AAA", 51, "BUY")) == {ReasonCode.BAD_QUANTITY.value}
    assert warmup.main(["--config", str(config), "--sync"]) == 0
    assert store.read_limits("main").version == 2  # type: ignore[union-attr]  # nothing left to sync


def test_the_limits_page_changes_a_limit_and_shows_the_new_version(
    redis_server: Any, seeded_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "riskdesk.toml"
    config.write_text(to_toml(TEST_CONFIG), encoding="utf-8")
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("RISKDESK_CONFIG", str(config))
    st.cache_resource.clear()
    st.cache_data.clear()
    try:
        at = AppTest.from_file(str(APP), default_timeout=30.0)
        at.session_state["refresh"] = "Paused"
        at.switch_page("screens/limits.py")
        at.run()
        assert not at.exception
        assert "Version 0" in " ".join(c.value for c in at.caption)

        at.text_input(key=page_key(seeded_store, "max_concentration")).set_value("0.25")
        at.text_input(key="lim_reason").set_value("tighter")
        at.button[0].click().run()  # the form's submit button

        assert not at.exception
        assert "version 1" in " ".join(s.value for s in at.success)
        stored = seeded_store.read_limits("main")
        assert stored is not None and stored.limits.max_concentration == 0.25
        assert stored.actor == local_identity().actor  # no login configured: the local operator, never a typed name

        at.text_input(key=page_key(seeded_store, "max_concentration")).set_value("2")  # above 1: refused
        at.text_input(key="lim_reason").set_value("typo")
        at.button[0].click().run()
        assert at.error and seeded_store.read_limits("main").version == 1  # type: ignore[union-attr]

        # the price-sanity band (never waived: logic/checks.py) is edited here too, within its bounds
        at.text_input(key=page_key(seeded_store, "max_concentration")).set_value("0.25")
        at.text_input(key=page_key(seeded_store, "price_sanity_factor")).set_value("20")
        at.text_input(key="lim_reason").set_value("a split is due")
        at.button[0].click().run()
        assert not at.exception and not at.error
        stored = seeded_store.read_limits("main")
        assert stored is not None and (stored.version, stored.limits.price_sanity_factor) == (2, 20.0)
    finally:
        st.cache_resource.clear()


@pytest.mark.parametrize("limit", [0.2, 0.3])
def test_the_concentration_light_and_the_gate_agree(seeded: Store, desk_settings: Settings, limit: float) -> None:
    from logic import analytics
    from logic.analytics import LIMIT_AMBER_FRACTION

    rm = gate(seeded, desk_settings)
    # main: AAA 1000 @ 100 + BBB 2000 @ 50, cash 1M, equity 1.2M: buy AAA to 3200 shares -> AAA ~ 320k/1.2M
    assert rm.execute("AAA", 2200, "BUY", client_order_id="grow").status.value == "FILLED"
    rm.set_limits({"max_concentration": limit}, "alice", f"limit {limit}")
    monitor = Monitor(seeded, desk_settings)
    _sim_ticks(seeded, desk_settings, 1)
    monitor.process_available()
    snap = seeded.read_snapshot("main")
    assert snap is not None
    share = snap["concentration"]["largest_share"]
    assert snap["concentration"]["largest_ticker"] == "AAA" and 0.3 * LIMIT_AMBER_FRACTION < share < 0.3
    live = seeded.limits_or("main", desk_settings.limits_for("main"))
    lights = {light.area: light for light in analytics.traffic_lights([], snap, "main", (), live)}
    rm = RiskManager(seeded.client, "main", desk_settings, clock=time.time)  # the simulated bar's clock

    refused = codes(rm.check("AAA", 1, "BUY")) == {ReasonCode.CONCENTRATION.value}
    if limit == 0.2:  # above the limit: the gate refuses to grow it and the light is red
        assert refused and lights["Concentration"].level == "red"
    else:  # below it, within 80% of it: the gate lets a share through and the light warns amber
        assert rm.check("AAA", 1, "BUY").approved and lights["Concentration"].level == "amber"
    assert not (refused and lights["Concentration"].level == "green")


def test_limit_lights_turn_exactly_at_the_limit() -> None:
    from engine.settings import Limits
    from logic.analytics import LIMIT_AMBER_FRACTION, limit_breaches

    limits = Limits(max_concentration=0.25)

    def level(share: float) -> str:
        snap = {"concentration": {"largest_share": share}, "var": {"utilization": 0.0}}
        return next(lvl for area, lvl, _ in limit_breaches(snap, limits) if area == "Concentration")

    assert level(0.25) == "amber" and level(0.25 + 1e-12) == "red"  # the gate passes a trade ending at it
    assert level(0.25 * LIMIT_AMBER_FRACTION) == "amber" and level(0.25 * LIMIT_AMBER_FRACTION - 1e-12) == "green"


# -- a reset does not bring back limits a long-running reader cached (version 1 again) ---------------------------


def test_a_long_running_gate_and_monitor_follow_a_new_version_1_written_after_a_reset(
    seeded: Store, desk_settings: Settings
) -> None:
    # Arrange: a gate and the monitor's readers that hold a loose version 1 from before the reset
    long_running = gate(seeded, desk_settings)
    lookup = PortfolioLookup(desk_settings)
    batched: dict[Any, Any] = {}  # the monitor's limits memo (tracked, batched read)
    per_portfolio: dict[Any, Any] = {}  # the monitor's per-portfolio path and the alert engine's
    long_running.set_limits({"max_order_notional": "1000000"}, "alice", "big block day")
    assert long_running.check("AAA", 5000, "BUY").approved  # 500,000 of AAA
    assert read_limits(seeded, ["main"], lookup, batched)["main"].max_order_notional == Decimal("1000000")  # type: ignore
    live_limits(seeded, ["main"], lookup, per_portfolio, batched=False)

    # Act: `warmup.py --reset` while they run, then a tightening stored as version 1 again
    reload.reset_store(seeded, keep_audit=True, now=NOW, actor="warmup")
    warmup.seed(seeded, desk_settings, now=NOW)
    version = gate(seeded, desk_settings).set_limits({"max_order_notional": "100"}, "bob", "kill big orders")

    # Assert: the version repeats, the limits every reader uses do not
    assert version == 1
    refused = long_running.check("AAA", 5000, "BUY")
    assert codes(refused) == {ReasonCode.MAX_NOTIONAL.value}
    execution = long_running.execute("AAA", 5000, "BUY", client_order_id="after-the-tightening")
    assert execution.status == ExecutionStatus.REJECTED
    assert seeded.read_portfolio("main").positions["AAA"].qty == 1000  # nothing filled
    assert read_limits(seeded, ["main"], lookup, batched)["main"].max_order_notional == Decimal("100")  # type: ignore
    assert live_limits(seeded, ["main"], lookup, per_portfolio, batched=False)["main"].max_order_notional == 100  # type: ignore


def test_a_limits_record_rewritten_at_the_same_version_by_hand_is_still_read_again(
    seeded: Store, desk_settings: Settings, redis_client: redis.Redis
) -> None:
    # the token is the version and the rev: a record whose version moved without a new rev is read again too
    rm = gate(seeded, desk_settings)
    rm.set_limits({"max_order_notional": "500"}, "alice", "tight")
    assert codes(rm.check("AAA", 10, "BUY")) == {ReasonCode.MAX_NOTIONAL.value}
    redis_client.hset(PortfolioKeys("main").limits, mapping={"version": 9, "json": '{"var_limit": "not money"}'})

    assert ReasonCode.STORE_CORRUPT.value in codes(rm.check("AAA", 10, "BUY"))


# -- optimistic concurrency: a change is made against the version its author saw ---------------------------------


def test_a_change_against_the_current_version_is_accepted_and_one_behind_is_refused_writing_nothing(
    seeded: Store, desk_settings: Settings, redis_client: redis.Redis
) -> None:
    fallback = desk_settings.limits_for("main")

    def change(changes: dict[str, Any], actor: str, expected: int, rev: str | None = None) -> Any:
        return seeded.change_limits(
            "main", changes, actor=actor, reason="test", now=NOW, fallback=fallback, expected_version=expected,
            expected_rev=rev,
        )  # fmt: skip

    first = change({"var_limit": "5000"}, "bob", expected=0)  # no record: version 0 is current
    second = change({"max_order_qty": 500}, "carol", expected=1, rev=first.rev)  # exactly the current one
    assert (first.version, second.version) == (1, 2)
    before = store_contents(redis_client)

    for expected, rev in ((1, None), (1, first.rev), (0, None), (3, None), (2, first.rev)):
        with pytest.raises(LimitsConflictError) as err:
            change({"max_concentration": 0.4}, "alice", expected=expected, rev=rev)
        assert err.value.code == "LIMITS_CHANGED"
        assert "changed by carol" in err.value.detail and f"at version {expected}" in err.value.detail

    assert store_contents(redis_client) == before
    assert change({"max_concentration": 0.4}, "alice", expected=2, rev=second.rev).version == 3


def test_a_change_against_a_version_from_before_a_reset_is_refused(seeded: Store, desk_settings: Settings) -> None:
    fallback = desk_settings.limits_for("main")
    old = seeded.change_limits("main", {"var_limit": "9000"}, actor="a", reason="r", now=NOW, fallback=fallback)
    reload.reset_store(seeded, keep_audit=True, now=NOW, actor="warmup")
    warmup.seed(seeded, desk_settings, now=NOW)
    with pytest.raises(LimitsConflictError, match="the store was reset"):  # version 0 now, not the 1 seen
        seeded.change_limits(
            "main", {"var_limit": "8000"}, actor="a", reason="r", now=NOW, fallback=fallback, expected_version=1,
            expected_rev=old.rev,
        )  # fmt: skip
    new = seeded.change_limits("main", {"var_limit": "100"}, actor="b", reason="r", now=NOW, fallback=fallback)
    before = seeded.read_limits("main")

    with pytest.raises(LimitsConflictError, match="a new record of that version"):  # version 1 again, not the same
        seeded.change_limits(
            "main", {"var_limit": "8000"}, actor="a", reason="r", now=NOW, fallback=fallback, expected_version=1,
            expected_rev=old.rev,
        )  # fmt: skip

    assert new.version == 1 and seeded.read_limits("main") == before


def test_a_stale_form_is_refused_and_a_reloaded_one_changes_only_the_field_its_author_edited(
    seeded: Store, desk_settings: Settings, redis_client: redis.Redis
) -> None:
    # Arrange: both risk managers open the page at version 0; bob tightens the VaR limit
    desk = Desk(redis_client, desk_settings, clock=lambda: NOW)
    alice_saw, bob_saw = limits_view(desk, "main"), limits_view(desk, "main")
    assert change_limits(desk, "main", {**bob_saw.values, "var_limit": "5000"}, COLLEAGUE, "VaR breach", bob_saw) == 1
    before = store_contents(redis_client)

    # Act / Assert: alice submits the form she opened before: refused, nothing written
    with pytest.raises(LimitsConflictError) as err:
        change_limits(desk, "main", {**alice_saw.values, "max_concentration": "0.4"}, RISK_MANAGER, "review", alice_saw)
    assert err.value.code == "LIMITS_CHANGED" and "changed by https://idp.test|bob" in err.value.detail
    assert store_contents(redis_client) == before

    # ... she reloads and submits the whole form again with her one edit: only that field changes
    reloaded = limits_view(desk, "main")
    version = change_limits(desk, "main", {**reloaded.values, "max_concentration": "0.4"}, RISK_MANAGER, "review",
                            reloaded)  # fmt: skip
    stored = seeded.read_limits("main")
    assert version == 2 and stored is not None
    assert stored.limits.var_limit == Decimal("5000") and stored.limits.max_concentration == 0.4
    record = seeded.limits_changes("main")[0]
    assert (record["actor"], record["before"], record["after"]) == (
        RISK_MANAGER.actor,
        {"max_concentration": 0.5},
        {"max_concentration": 0.4},
    )
    with pytest.raises(InputError, match="no limit changed"):  # the form as shown changes nothing
        change_limits(
            desk, "main", dict(limits_view(desk, "main").values), RISK_MANAGER, "r", limits_view(desk, "main")
        )


def _limits_page(store: Store, server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    config = tmp_path / "riskdesk.toml"
    config.write_text(to_toml(TEST_CONFIG), encoding="utf-8")
    monkeypatch.setenv("REDIS_URL", server.url)
    monkeypatch.setenv("RISKDESK_CONFIG", str(config))
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(str(APP), default_timeout=30.0)
    at.session_state["refresh"] = "Paused"
    at.switch_page("screens/limits.py")
    at.run()
    assert not at.exception
    return at


def test_the_limits_page_refuses_a_form_opened_before_a_colleagues_change_and_then_shows_the_new_version(
    redis_server: Any, seeded_store: Store, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        at = _limits_page(seeded_store, redis_server, tmp_path, monkeypatch)
        opened = page_key(seeded_store, "max_concentration")
        # bob, in another session, tightens the VaR limit after alice's page was rendered
        RiskManager(seeded_store.client, "main", settings).set_limits({"var_limit": "5000"}, "bob", "VaR breach")
        before = store_contents(seeded_store.client)

        at.text_input(key=opened).set_value("0.4")
        at.text_input(key="lim_reason").set_value("concentration review")
        at.button[0].click().run()

        assert not at.exception and not at.success
        shown = " ".join(e.value for e in at.error)
        assert "changed by bob since you opened them at version 0" in shown
        assert "reload" in " ".join(i.value for i in at.info)  # the error's fix
        assert store_contents(seeded_store.client) == before
        # the re-run shows version 1: a new form with its values
        assert "Version 1" in " ".join(c.value for c in at.caption)
        assert at.text_input(key=page_key(seeded_store, "var_limit")).value == "5000"

        at.text_input(key=page_key(seeded_store, "max_concentration")).set_value("0.4")
        at.text_input(key="lim_reason").set_value("concentration review")
        at.button[0].click().run()

        assert not at.exception and "version 2" in " ".join(s.value for s in at.success)
        stored = seeded_store.read_limits("main")
        assert stored is not None and stored.limits.var_limit == Decimal("5000")
        assert stored.limits.max_concentration == 0.4
        record = seeded_store.limits_changes("main")[0]
        assert (record["before"], record["after"]) == ({"max_concentration": 0.5}, {"max_concentration": 0.4})
    finally:
        st.cache_resource.clear()


def test_the_limits_page_resets_its_form_when_a_new_version_comes_in(
    redis_server: Any, seeded_store: Store, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        at = _limits_page(seeded_store, redis_server, tmp_path, monkeypatch)
        at.text_input(key=page_key(seeded_store, "var_limit")).set_value("30000")  # typed, never submitted
        RiskManager(seeded_store.client, "main", settings).set_limits({"var_limit": "5000"}, "bob", "VaR breach")

        at.run()  # a refresh

        assert at.text_input(key=page_key(seeded_store, "var_limit")).value == "5000"
    finally:
        st.cache_resource.clear()


# -- bounds that catch typos switching a fail-closed control off -------------------------------------------------

BOUNDS = [
    # (limit, accepted at its bound, refused one unit beyond it)
    ("var_confidence", 0.8, math.nextafter(0.8, 0.0)),
    ("var_confidence", math.nextafter(1.0, 0.0), 1.0),
    ("stale_price_seconds", 86_400.0, math.nextafter(86_400.0, math.inf)),
    ("stale_price_seconds", 86_400.0, 86_401.0),
    ("price_collar_pct", 0.5, math.nextafter(0.5, 1.0)),
    ("order_id_retention_days", 1.0, math.nextafter(1.0, 0.0)),
    ("min_margin_level_after", 100.0, math.nextafter(100.0, 0.0)),
    ("min_margin_level_after", 0.0, math.nextafter(0.0, 1.0)),  # 0: no floor; anything else below 100 is a typo
    ("max_orders_per_minute", 100_000, 100_001),
    ("price_sanity_factor", 2.0, math.nextafter(2.0, 0.0)),
    ("price_sanity_factor", 1000.0, math.nextafter(1000.0, math.inf)),
]
TYPOS = [
    ("var_confidence", 0.5),  # VaR 0: the VaR limit never binds
    ("var_confidence", 0.05),  # the tail probability for 95%: VaR negative
    ("stale_price_seconds", 1e9),
    ("price_collar_pct", 10.0),  # "10%"
    ("order_id_retention_days", 0.00001),
    ("min_margin_level_after", 1.5),  # "150%"
    ("max_orders_per_minute", 1_000_000_000),
    ("price_sanity_factor", 1.1),  # "10%": would refuse, unwaivably, moves the collar is there to judge
    ("price_sanity_factor", 1e9),  # never refuses: the control switched off
]


@pytest.mark.parametrize(("name", "at", "beyond"), BOUNDS, ids=[f"{b[0]}={b[1]!r}" for b in BOUNDS])
def test_a_bounded_limit_is_accepted_at_its_bound_and_refused_one_unit_beyond_writing_nothing(
    seeded: Store, desk_settings: Settings, redis_client: redis.Redis, name: str, at: Any, beyond: Any
) -> None:
    rm = gate(seeded, desk_settings)
    assert getattr(Limits(**{name: at}), name) == at  # the settings file takes it
    with pytest.raises(ConfigError, match=f"limits.{name}: must be"):
        settings_from_dict(merge(TEST_CONFIG, {"limits": {name: beyond}}))
    rm.set_limits({"var_limit": "30000"}, "alice", "a record exists: it must not move")
    before = store_contents(redis_client)

    with pytest.raises(LimitsChangeError, match=f"{name}: must be") as err:
        rm.set_limits({name: beyond}, "alice", "one unit beyond")

    assert err.value.code == "LIMITS_INVALID" and store_contents(redis_client) == before
    rm.set_limits({name: at}, "alice", "exactly at the bound")  # (a no-op where the settings hold it already)
    assert getattr(seeded.read_limits("main").limits, name) == at  # type: ignore[union-attr]


@pytest.mark.parametrize(("name", "typo"), TYPOS, ids=[f"{t[0]}={t[1]!r}" for t in TYPOS])
def test_a_typo_that_would_switch_a_control_off_is_refused_with_its_bound(
    seeded: Store, desk_settings: Settings, redis_client: redis.Redis, name: str, typo: Any
) -> None:
    before = store_contents(redis_client)
    with pytest.raises(LimitsChangeError, match=f"limits\\[main\\].{name}: must be"):
        gate(seeded, desk_settings).set_limits({name: typo}, "alice", "typo")
    assert store_contents(redis_client) == before


def test_every_shipped_config_and_benchmark_loads_within_the_bounds() -> None:
    root = Path(__file__).resolve().parent.parent
    for path in [root / "riskdesk.toml", *sorted((root / "configs").glob("*.toml"))]:
        load_settings(path, env={})
    from benchmarks import bench_contention, bench_risk_manager

    bench_contention.bench_settings()
    bench_risk_manager.bench_settings(5)
    assert settings_module.MIN_VAR_CONFIDENCE <= Limits().var_confidence  # the defaults too


# -- the change history is its own log, not a window of the busy audit stream ------------------------------------


def test_the_change_history_survives_more_automated_records_than_the_audit_window(
    seeded: Store, desk_settings: Settings, redis_client: redis.Redis
) -> None:
    from engine.store.limits import AUDIT_SCAN

    gate(seeded, desk_settings).set_limits({"var_limit": "5000"}, "bob", "breach")
    pipe = redis_client.pipeline(transaction=False)
    for i in range(AUDIT_SCAN + 1):  # days of automated steps on the same audit stream
        seeded.append_audit(
            PortfolioKeys("main").audit, {"ts": NOW + i, "actor": "auto:m", "action": "automated_step"}, pipe
        )
    pipe.execute()

    view = limits_view(Desk(redis_client, desk_settings, clock=lambda: NOW), "main")

    assert view.version == 1 and len(view.history) == 1 and view.history["actor"][0] == "bob"


def test_the_page_never_says_never_changed_above_version_0(seeded: Store, desk_settings: Settings) -> None:
    desk = Desk(seeded.client, desk_settings, clock=lambda: NOW)
    assert limits_view(desk, "main").history_empty == "No limit changed live yet."
    seeded.seed_limits("main", desk_settings.limits_for("main"), actor="tool", now=NOW)  # version 1, no record

    view = limits_view(desk, "main")

    assert view.version == 1 and view.history.empty
    assert "No limit changed" not in view.history_empty and "Version 1" in view.history_empty


def test_changes_made_before_the_change_log_existed_are_still_found_on_the_audit_stream(
    seeded: Store, desk_settings: Settings
) -> None:
    gate(seeded, desk_settings).set_limits({"var_limit": "5000"}, "bob", "breach")
    seeded.client.delete(PortfolioKeys("main").limits_log)  # as a store written before the log (and the rev)
    seeded.client.hdel(PortfolioKeys("main").limits, "rev")

    (record,) = seeded.limits_changes("main")

    assert record["actor"] == "bob" and record["version"] == 1


def test_the_limits_page_says_never_changed_only_at_version_0(
    redis_server: Any, seeded_store: Store, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        at = _limits_page(seeded_store, redis_server, tmp_path, monkeypatch)
        assert "No limit changed live yet." in [c.value for c in at.caption]
        seeded_store.seed_limits("main", settings.limits_for("main"), actor="tool", now=NOW)  # version 1, no record

        at.run()

        captions = " ".join(c.value for c in at.caption)
        assert "Version 1" in captions and "No limit changed" not in captions
    finally:
        st.cache_resource.clear()
