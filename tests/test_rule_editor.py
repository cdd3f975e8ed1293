"""The Alerts page's rule editor (streamlit AppTest): a threshold following a live limit, per-rule channels
and recipients defaulting from the escalation policy, a 60 s clear period by default, the last changed rule at
the top, and inhibition shown on the alert."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import streamlit as st

from engine.redis_server import EmbeddedRedis
from engine.settings import DEFAULT_CLEAR_SECONDS, Settings, settings_from_dict
from engine.store import GLOBAL_AUDIT_KEY, Store

from .conftest import TEST_CONFIG
from .e2e_stack import toml_dumps
from .test_dashboard import LOCAL_ACTOR, assert_clean, frame_with, joined, open_page, rule_key

NEW = "rule_+ new rule_"
SAVE = "FormSubmitter:rule_form-Save rule"
CONFIG: dict[str, Any] = {
    **copy.deepcopy(TEST_CONFIG),
    "notifications": {"recipients": {"desk": {"email": "desk@test.local"}, "boss": {"email": "boss@test.local"}}},
    "escalation": {
        "MEDIUM": [{"delay_seconds": 0, "recipients": ["desk"], "channels": ["log", "email"]}],
        "CRITICAL": [{"delay_seconds": 0, "recipients": ["desk"], "channels": ["log", "email"]}],
    },
}


@pytest.fixture
def editor_env(
    redis_server: EmbeddedRedis, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Store, Settings]]:
    import warmup

    settings = settings_from_dict(CONFIG)
    warmup.seed(store, settings)
    config = tmp_path / "riskdesk.toml"
    config.write_text(toml_dumps(CONFIG), encoding="utf-8")
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("RISKDESK_CONFIG", str(config))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield store, settings
    st.cache_resource.clear()


def engine_of(store: Store, settings: Settings) -> Any:
    from logic.alerts import build_alert_engine

    return build_alert_engine(store, settings)


def test_a_new_rule_defaults_to_a_60_s_clear_period_and_the_policys_routing(
    editor_env: tuple[Store, Settings],
) -> None:
    store, settings = editor_env
    at = open_page("alerts")
    assert at.number_input(key=NEW + "clear_seconds").value == DEFAULT_CLEAR_SECONDS == 60.0
    channels = at.multiselect(key=NEW + "channels")
    assert channels.value == [] and "log, email" in channels.placeholder  # empty: the MEDIUM policy's
    assert "desk" in at.multiselect(key=NEW + "recipients").placeholder
    at.text_input(key=NEW + "id").input("lev")
    at.selectbox(key=NEW + "metric").set_value("leverage")
    at.selectbox(key=NEW + "op").set_value(">")
    at.number_input(key=NEW + "threshold").set_value(2.5)
    at.button(key=SAVE).click().run()
    assert_clean(at)
    rule = engine_of(store, settings).get_rule("lev")
    assert (rule.threshold, rule.clear_seconds, rule.channels, rule.recipients) == (2.5, 60.0, (), ())
    row = frame_with(at, "source").set_index("id").loc["lev"]
    assert row["channels"] == "policy: log, email" and row["recipients"] == "policy: desk"


def test_the_editor_saves_a_limit_threshold_and_its_own_channels_and_recipients(
    editor_env: tuple[Store, Settings],
) -> None:
    store, settings = editor_env
    at = open_page("alerts")
    at.text_input(key=NEW + "id").input("conc80")
    at.selectbox(key=NEW + "metric").set_value("concentration.largest_share")
    at.selectbox(key=NEW + "op").set_value(">")
    at.selectbox(key=NEW + "threshold_source").set_value("limits.max_concentration")
    at.number_input(key=NEW + "threshold_fraction").set_value(0.8)
    at.multiselect(key=NEW + "channels").set_value(["email"])
    at.multiselect(key=NEW + "recipients").set_value(["boss"])
    at.button(key=SAVE).click().run()
    assert_clean(at)
    assert "Rule conc80 saved" in joined(at.success)
    rule = engine_of(store, settings).get_rule("conc80")
    assert (rule.threshold, rule.threshold_fraction) == ("limits.max_concentration", 0.8)
    assert ([str(c) for c in rule.channels], rule.recipients) == (["email"], ("boss",))
    row = frame_with(at, "source").set_index("id").loc["conc80"]
    assert row["threshold"] == "0.8 x limits.max_concentration"
    assert (row["channels"], row["recipients"]) == ("email", "boss")

    # a unit mismatch is refused with the rule's coded message; nothing stored
    at.selectbox(key="rule_pick").set_value("conc80").run()
    at.selectbox(key=rule_key(store, settings, "conc80", "threshold_source")).set_value("limits.var_limit")
    at.button(key=SAVE).click().run()
    assert_clean(at)
    assert "money limit but metric" in joined(at.error)
    assert engine_of(store, settings).get_rule("conc80").threshold == "limits.max_concentration"


def test_a_new_or_edited_rule_is_listed_first(editor_env: tuple[Store, Settings]) -> None:
    store, settings = editor_env
    engine = engine_of(store, settings)
    for n in range(3):
        engine.add_rule({"id": f"r{n}", "metric": "leverage", "op": ">", "threshold": 1.0 + n, "severity": "LOW"}, "t")
    at = open_page("alerts")
    assert list(frame_with(at, "source")["id"])[:3] == ["r2", "r1", "r0"]
    at.selectbox(key="rule_pick").set_value("r0").run()
    at.number_input(key=rule_key(store, settings, "r0", "threshold")).set_value(5.0)
    at.button(key=SAVE).click().run()
    assert_clean(at)
    table = frame_with(at, "source")
    assert list(table["id"])[:3] == ["r0", "r2", "r1"]
    assert table.iloc[0]["changed_by"] == LOCAL_ACTOR
    audit = store.read_stream_json(GLOBAL_AUDIT_KEY, count=1)[0]
    assert (audit["rule_id"], audit["after"]["threshold"]) == ("r0", 5.0)


def test_an_inhibited_alert_says_by_which_rule_on_the_alerts_page(editor_env: tuple[Store, Settings]) -> None:
    from logic.monitor import Monitor

    store, settings = editor_env
    engine = engine_of(store, settings)
    engine.add_rule({"id": "lev_warn", "metric": "leverage", "op": ">=", "threshold": 0.0, "severity": "MEDIUM"}, "t")
    engine.add_rule({"id": "lev_crit", "metric": "leverage", "op": ">=", "threshold": 0.0, "severity": "CRITICAL"}, "t")
    Monitor(store, settings, alert_engine=engine).refresh()
    assert store.read_active_alerts("main")["lev_warn"]["inhibited_by"] == "lev_crit"
    at = open_page("alerts")
    assert_clean(at)
    feed = frame_with(at, "inhibition").set_index("rule_id")
    assert feed.loc["lev_warn", "inhibition"] == "inhibited by lev_crit"
    assert feed.loc["lev_crit", "inhibition"] == ""


def test_the_stress_tab_shows_the_stressed_limit_and_what_the_figure_is_computed_from(
    editor_env: tuple[Store, Settings],
) -> None:
    from .test_dashboard import metric, open_risk_tab

    at = open_risk_tab("Stress")
    assert_clean(at)
    # the portfolio sets none: a dash with the reason in the tooltip, no VaR limit stands in
    assert metric(at, "Stressed VaR limit") == "—"
    shown = next(m for m in at.metric if m.label == "Stressed VaR limit")
    assert "none set" in shown.help
    text = joined(at.markdown)
    assert "seed: the settings" in text and "bars a day" in text and "last changed" in text
