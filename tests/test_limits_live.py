"""Live, audited limits (issue 14): a change made through the API applies to the gate, the monitor and the pages
without a restart, each change is one audit record with before/after, and a bad value writes nothing."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
import streamlit as st
from streamlit.testing.v1 import AppTest

import warmup
from engine.errors import CorruptDataError
from engine.records import DecisionStatus, ExecutionStatus, ReasonCode, Role
from engine.settings import Settings, settings_from_dict
from engine.store import LimitsChangeError, PortfolioKeys, Store
from logic.access import AccessDenied, Identity, local_identity
from logic.monitor import Monitor
from logic.risk_manager import RiskManager
from logic.views import Desk, change_limits, limits_view

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
    rm.set_limits({"var_limit": "40000", "max_order_qty": 500}, "alice", "desk review")

    records = seeded.limits_changes("main")
    assert len(records) == 1
    record = records[0]
    assert record["actor"] == "alice" and record["reason"] == "desk review" and record["version"] == 1
    assert record["before"] == {"var_limit": "20000", "max_order_qty": 100000}  # only the changed fields
    assert record["after"] == {"var_limit": "40000", "max_order_qty": 500}
    stored = seeded.read_limits("main")
    assert stored is not None and stored.version == 1 and stored.limits.var_limit == Decimal("40000")
    assert stored.actor == "alice" and stored.ts == NOW
    assert seeded.read_limits("hedge") is None  # the other portfolio is untouched


@pytest.mark.parametrize(
    ("changes", "actor", "reason"),
    [
        ({"max_concentration": 1.01}, "alice", "r"),  # above its bound (le=1)
        ({"max_concentration": 0}, "alice", "r"),  # at its exclusive bound (gt=0)
        ({"var_limit": "-1"}, "alice", "r"),
        ({"var_limit": "lots"}, "alice", "r"),
        ({"max_order_qty": 1.5}, "alice", "r"),  # not a whole number
        ({"no_such_limit": 1}, "alice", "r"),
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
    with pytest.raises(AccessDenied):
        change_limits(desk, "main", form, who, "tighter")
    assert store_contents(redis_client) == before
    manager = Identity("https://idp.test", "risk-1", roles=frozenset({Role.RISK_MANAGER}))
    assert change_limits(desk, "main", form, manager, "tighter") == 1
    stored = seeded.read_limits("main")
    assert stored is not None and stored.actor == "https://idp.test|risk-1"


def test_a_change_at_its_bound_is_accepted(seeded: Store, desk_settings: Settings) -> None:
    rm = gate(seeded, desk_settings)
    assert rm.set_limits({"max_concentration": 1.0}, "alice", "le=1: exactly at the bound") == 1


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
    assert list(view.history["changes"]) == ["var_limit: 20000 -> 45000"]


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

        at.text_input(key="lim_max_concentration").set_value("0.25")
        at.text_input(key="lim_reason").set_value("tighter")
        at.button[0].click().run()  # the form's submit button

        assert not at.exception
        assert "version 1" in " ".join(s.value for s in at.success)
        stored = seeded_store.read_limits("main")
        assert stored is not None and stored.limits.max_concentration == 0.25
        assert stored.actor == local_identity().actor  # no login configured: the local operator, never a typed name

        at.text_input(key="lim_max_concentration").set_value("2")  # above 1: refused, nothing written
        at.text_input(key="lim_reason").set_value("typo")
        at.button[0].click().run()
        assert at.error and seeded_store.read_limits("main").version == 1  # type: ignore[union-attr]
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
