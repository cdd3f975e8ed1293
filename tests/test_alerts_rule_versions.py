"""Optimistic concurrency of the rules editor: an edit, removal or reset is made against the version of the rule
its author saw; a rule that moved since (a colleague's edit, removal, reset) is refused with ``RULES_CHANGED`` and
nothing is written, a form sends only the fields its author edited, and the Alerts page renders a new form for a
new version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import streamlit as st

import warmup
from engine.records import Role
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings, settings_from_dict
from engine.store import GLOBAL_AUDIT_KEY, Store
from logic.access import Identity
from logic.alerts import AlertEngine, build_alert_engine
from logic.rules import RuleExistsError, RulesConflictError, rule_to_dict
from logic.views import Desk, InputError
from logic.views.alerts import RULE_FORM_FIELDS, RuleForm, rule_form, save_rule

from .conftest import TEST_CONFIG, merge, store_contents, to_toml
from .test_dashboard import LOCAL_ACTOR, assert_clean, joined, open_page, rule_key

LEV = {"id": "lev", "metric": "leverage", "op": ">", "threshold": 2.5, "severity": "MEDIUM"}
CONFIG = merge(TEST_CONFIG, {"alert_rules": [LEV]})
SAVE = "FormSubmitter:rule_form-Save rule"
REMOVE = "FormSubmitter:rule_form-Remove rule"
ALICE = Identity("https://idp.test", "alice", roles=frozenset({Role.RISK_MANAGER}))
BOB = Identity("https://idp.test", "bob", roles=frozenset({Role.RISK_MANAGER}))
DD = {"id": "dd", "metric": "drawdown.daily", "op": ">=", "threshold": 0.05, "severity": "HIGH"}


@pytest.fixture
def rules_settings() -> Settings:
    return settings_from_dict(CONFIG)


@pytest.fixture
def engine(store: Store, rules_settings: Settings) -> AlertEngine:
    warmup.seed(store, rules_settings)
    return build_alert_engine(store, rules_settings)


@pytest.fixture
def page_env(
    redis_server: EmbeddedRedis, engine: AlertEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AlertEngine]:
    config = tmp_path / "riskdesk.toml"
    config.write_text(to_toml(CONFIG), encoding="utf-8")
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("RISKDESK_CONFIG", str(config))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield engine
    st.cache_resource.clear()


def rule_edits(store: Store) -> list[dict[str, Any]]:
    """The rule edits of the global audit stream, newest first."""
    return [r for r in store.read_stream_json(GLOBAL_AUDIT_KEY, count=100) if "rule_id" in r]


def edited_fields(record: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """field -> (before, after) of the fields an audited rule edit changed."""
    before, after = record["before"], record["after"]
    return {name: (before[name], after[name]) for name in after if before[name] != after[name]}


def posted(form: RuleForm, **edits: Any) -> dict[str, Any]:
    """What the page posts on save: every field of the form as it was rendered, with the author's ``edits``."""
    return {**{name: form.values.get(name) for name in RULE_FORM_FIELDS}, **edits}


def token(engine: AlertEngine, rule_id: str) -> tuple[int, str]:
    row = next(r for r in engine.list_rules() if r["id"] == rule_id)
    return row["version"], row["rev"]


# -- the rule book: the check is made inside the edit's WATCH transaction ------------------------------------------


def test_an_edit_against_the_rules_current_version_is_accepted_and_one_behind_is_refused_writing_nothing(
    engine: AlertEngine, store: Store, redis_client: redis.Redis
) -> None:
    # Arrange: the settings' rule is version 0 until its first edit; each edit is the next version with a new rev
    assert token(engine, "lev") == (0, "")
    engine.update_rule("lev", {"threshold": 3.0}, "bob", expected_version=0, expected_rev="")  # exactly current
    first = token(engine, "lev")
    engine.update_rule("lev", {"severity": "HIGH"}, "carol", expected_version=1, expected_rev=first[1])
    second = token(engine, "lev")
    assert (first[0], second[0]) == (1, 2) and first[1] and second[1] != first[1]
    before = store_contents(redis_client)

    # Act / Assert: every other version (one behind, the settings', ahead, or version 2 with another rev) is refused
    for expected, rev in ((1, first[1]), (1, None), (0, ""), (3, None), (2, first[1])):
        with pytest.raises(RulesConflictError) as err:
            engine.update_rule("lev", {"op": ">="}, "alice", expected_version=expected, expected_rev=rev)
        assert err.value.code == "RULES_CHANGED"
        assert "changed by carol since you opened it" in err.value.detail and "reload" in err.value.detail
    assert store_contents(redis_client) == before

    rule = engine.update_rule("lev", {"op": ">="}, "alice", expected_version=2, expected_rev=second[1])
    assert (rule.op, rule.severity, rule.threshold, token(engine, "lev")[0]) == (">=", "HIGH", 3.0, 3)


def test_an_edit_of_a_rule_removed_since_it_was_read_is_refused_and_never_adds_it_back(
    engine: AlertEngine, store: Store, redis_client: redis.Redis
) -> None:
    engine.add_rule(DD, "carol")
    seen = token(engine, "dd")
    engine.remove_rule("dd", "bob", "obsolete")
    before = store_contents(redis_client)

    with pytest.raises(RulesConflictError, match="removed by bob since you opened it at version 1"):
        engine.update_rule("dd", {"threshold": 0.06}, "alice", expected_version=seen[0], expected_rev=seen[1])
    assert store_contents(redis_client) == before

    # added again under the same id: version 1 again, but another rule; the old form is still refused
    engine.add_rule({**DD, "threshold": 0.5}, "carol")
    assert token(engine, "dd")[0] == seen[0]
    with pytest.raises(RulesConflictError, match="added again by carol"):
        engine.update_rule("dd", {"threshold": 0.06}, "alice", expected_version=seen[0], expected_rev=seen[1])
    assert engine.get_rule("dd").threshold == 0.5


def test_a_removal_or_reset_against_a_version_a_colleague_has_moved_is_refused_writing_nothing(
    engine: AlertEngine, store: Store, redis_client: redis.Redis
) -> None:
    engine.update_rule("lev", {"threshold": 4.0}, "bob", "tighter")  # version 1: alice's page still shows 0
    before = store_contents(redis_client)

    with pytest.raises(RulesConflictError, match="changed by bob"):
        engine.remove_rule("lev", "alice", expected_version=0, expected_rev="")
    with pytest.raises(RulesConflictError, match="changed by bob"):
        engine.reset_rule("lev", "alice", expected_version=0, expected_rev="")
    assert store_contents(redis_client) == before

    version, rev = token(engine, "lev")
    engine.remove_rule("lev", "alice", expected_version=version, expected_rev=rev)
    assert [r["source"] for r in engine.list_rules() if r["id"] == "lev"] == ["removed"]


# -- the view: a form is made against the rule it showed, and sends only what its author edited --------------------


def test_a_stale_rule_form_is_refused_and_a_reloaded_one_changes_only_the_field_its_author_edited(
    engine: AlertEngine, store: Store, rules_settings: Settings, redis_client: redis.Redis
) -> None:
    # Arrange: both risk managers open rule lev; bob raises its severity, posting his whole form
    desk = Desk(redis_client, rules_settings)
    alice_saw, bob_saw = rule_form(desk, "lev"), rule_form(desk, "lev")
    save_rule(desk, posted(bob_saw, severity="CRITICAL"), BOB, "page the desk", seen=bob_saw)
    before = store_contents(redis_client)

    # Act / Assert: alice posts the form she opened before (every field): refused, nothing written
    with pytest.raises(RulesConflictError) as err:
        save_rule(desk, posted(alice_saw, threshold=3.0), ALICE, "less noise", seen=alice_saw)
    assert err.value.code == "RULES_CHANGED" and "changed by https://idp.test|bob" in err.value.detail
    assert store_contents(redis_client) == before

    # ... she reloads and posts the whole form again with her one edit: only that field changes, audited as hers
    reloaded = rule_form(desk, "lev")
    assert (reloaded.version, reloaded.values["severity"]) == (1, "CRITICAL")
    save_rule(desk, posted(reloaded, threshold=3.0), ALICE, "less noise", seen=reloaded)
    rule = engine.get_rule("lev")
    assert (rule.severity, rule.threshold) == ("CRITICAL", 3.0)
    last = rule_edits(store)[0]
    assert (last["actor"], edited_fields(last)) == (ALICE.actor, {"threshold": (2.5, 3.0)})

    with pytest.raises(InputError, match="nothing changed"):  # the form as shown changes nothing
        latest = rule_form(desk, "lev")
        save_rule(desk, posted(latest), ALICE, "r", seen=latest)


def test_a_limit_rules_form_sends_only_the_fraction_its_author_edited_and_a_new_rule_form_never_overwrites(
    engine: AlertEngine, store: Store, rules_settings: Settings, redis_client: redis.Redis
) -> None:
    engine.add_rule({**DD, "id": "var80", "metric": "var.var95", "threshold": "limits.var_limit",
                     "threshold_fraction": 0.8}, "carol")  # fmt: skip
    desk = Desk(redis_client, rules_settings)
    seen = rule_form(desk, "var80")
    save_rule(desk, posted(seen, threshold_fraction=0.9), ALICE, "r", seen=seen)
    assert edited_fields(rule_edits(store)[0]) == {"threshold_fraction": (0.8, 0.9)}

    # the empty form with a taken id: refused (edit that rule instead), nothing written
    before = store_contents(redis_client)
    new = rule_form(desk, None)
    with pytest.raises(RuleExistsError):
        save_rule(
            desk, {**posted(new), **rule_to_dict(engine.get_rule("lev")), "severity": "LOW"}, ALICE, "r", seen=new
        )
    assert store_contents(redis_client) == before


# -- the Alerts page -------------------------------------------------------------------------------------------


def test_the_alerts_page_refuses_a_rule_form_opened_before_a_colleagues_edit_and_then_shows_the_new_version(
    page_env: AlertEngine, store: Store, rules_settings: Settings
) -> None:
    engine = page_env
    at = open_page("alerts")
    at.selectbox(key="rule_pick").set_value("lev").run()
    opened = rule_key(store, rules_settings, "lev", "threshold")
    # bob, in another session, raises the severity after alice's form was rendered
    engine.update_rule("lev", {"severity": "CRITICAL"}, BOB.actor, "page the desk")
    before = store_contents(store.client)

    at.number_input(key=opened).set_value(3.0)
    at.button(key=SAVE).click().run()

    assert_clean(at)
    assert not at.success
    assert "changed by https://idp.test|bob since you opened it at version 0" in joined(at.error)
    assert "reload" in joined(at.info)  # the error's fix
    assert store_contents(store.client) == before
    # the re-run shows version 1: a new form, with bob's severity
    assert "Version 1" in joined(at.caption)
    assert at.selectbox(key=rule_key(store, rules_settings, "lev", "severity")).value == "CRITICAL"

    at.number_input(key=rule_key(store, rules_settings, "lev", "threshold")).set_value(3.0)
    at.button(key=SAVE).click().run()

    assert_clean(at)
    assert "Rule lev saved" in joined(at.success)
    rule = engine.get_rule("lev")
    assert (rule.severity, rule.threshold) == ("CRITICAL", 3.0)
    last = rule_edits(store)[0]
    assert (last["actor"], edited_fields(last)) == (LOCAL_ACTOR, {"threshold": (2.5, 3.0)})


def test_the_alerts_page_never_adds_back_a_rule_removed_since_its_form_opened_nor_removes_an_unseen_edit(
    page_env: AlertEngine, store: Store, rules_settings: Settings
) -> None:
    engine = page_env
    engine.add_rule(DD, "carol")
    at = open_page("alerts")
    at.selectbox(key="rule_pick").set_value("dd").run()
    opened = rule_key(store, rules_settings, "dd", "threshold")
    engine.remove_rule("dd", BOB.actor, "obsolete")
    before = store_contents(store.client)

    at.number_input(key=opened).set_value(0.06)
    at.button(key=SAVE).click().run()

    assert_clean(at)
    assert "removed by https://idp.test|bob" in joined(at.error) and not at.success
    assert store_contents(store.client) == before
    assert "dd" not in {r.id for r in engine.rulebook.rules()}

    # a removal from a form opened before a colleague's edit is refused too
    at.selectbox(key="rule_pick").set_value("lev").run()
    engine.update_rule("lev", {"threshold": 4.0}, BOB.actor, "tighter")
    at.button(key=REMOVE).click().run()

    assert_clean(at)
    assert "changed by https://idp.test|bob" in joined(at.error)
    assert engine.get_rule("lev").threshold == 4.0


def test_the_rule_form_starts_again_from_a_new_version_when_one_comes_in(
    page_env: AlertEngine, store: Store, rules_settings: Settings
) -> None:
    engine = page_env
    at = open_page("alerts")
    at.selectbox(key="rule_pick").set_value("lev").run()
    at.number_input(key=rule_key(store, rules_settings, "lev", "threshold")).set_value(9.0)  # typed, never saved
    engine.update_rule("lev", {"severity": "HIGH", "threshold": 4.0}, BOB.actor, "tighter")

    at.run()  # a refresh

    assert_clean(at)
    assert at.selectbox(key=rule_key(store, rules_settings, "lev", "severity")).value == "HIGH"
    assert at.number_input(key=rule_key(store, rules_settings, "lev", "threshold")).value == 4.0
    assert "Version 1 · last changed by https\\://idp.test\\|bob" in "\n".join(str(c.value) for c in at.caption)


def test_a_stale_rule_edit_is_refused_writing_nothing_on_a_redis_cluster(cluster_store: Store) -> None:
    from logic.rules import RuleBook

    book = RuleBook(cluster_store, [], clock=lambda: 99.0)
    book.add(DD, "carol")
    book.update("dd", {"threshold": 0.04}, "bob", expected_version=1, expected_rev=None)
    version, rev = next((r["version"], r["rev"]) for r in book.list_rules() if r["id"] == "dd")
    rules_version = cluster_store.read_rules_version()

    with pytest.raises(RulesConflictError, match="changed by bob"):
        book.update("dd", {"severity": "LOW"}, "alice", expected_version=1, expected_rev=None)
    assert cluster_store.read_rules_version() == rules_version and book.get("dd").severity == "HIGH"

    book.update("dd", {"severity": "LOW"}, "alice", expected_version=version, expected_rev=rev)
    assert (book.get("dd").severity, book.get("dd").threshold) == ("LOW", 0.04)
