"""Settings: the shipped riskdesk.toml loads, env overrides apply, bad values are refused with clear errors."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.settings import load_settings, settings_from_dict

from .conftest import TEST_CONFIG, merge

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_settings_file_loads_and_is_frozen() -> None:
    settings = load_settings(ROOT / "riskdesk.toml", env={})

    assert settings.portfolio_ids == ("main", "hedge")
    assert settings.model.ewma_decay == 0.94 and settings.model.bars_per_day == 390
    assert isinstance(settings.portfolio("main").cash, Decimal)
    assert settings.limits_for("hedge").var_limit == Decimal("40000")
    assert settings.limits_for("hedge").var_confidence == settings.limits.var_confidence
    with pytest.raises(AttributeError):
        settings.model.ewma_decay = 0.5  # type: ignore[misc]


def test_environment_overrides_win_over_the_file() -> None:
    env = {
        "RISKDESK__LIMITS__VAR_LIMIT": "75000",
        "RISKDESK__MODEL__EWMA_DECAY": "0.97",
        "REDIS_URL": "redis://:secret@127.0.0.1:6390/2",
    }

    settings = load_settings(ROOT / "riskdesk.toml", env=env)

    assert settings.limits.var_limit == Decimal("75000")
    assert settings.limits_for("main").var_limit == Decimal("75000")
    assert settings.model.ewma_decay == 0.97
    assert settings.redis.url == "redis://:secret@127.0.0.1:6390/2"


def test_money_from_a_float_literal_is_exact() -> None:
    settings = settings_from_dict(merge(TEST_CONFIG, {"fees": {"per_share": 0.1}}))
    assert settings.fees.per_share == Decimal("0.1")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"model": {"ewma_decay": 1.0}}, "ewma_decay"),
        ({"model": {"ewma_decay": 0.0}}, "ewma_decay"),
        ({"limits": {"var_confidence": 1.5}}, "var_confidence"),
        ({"limits": {"var_limit": -1}}, "var_limit"),
        ({"limits": {"bogus": 1}}, "unknown setting"),
        ({"universe": {"assets": {"BAD": {"price": -5.0, "annual_vol": 0.2}}}}, "price"),
        ({"portfolios": [{"id": "x", "cash": "10", "holdings": {"ZZZ": 5}}]}, "outside the universe"),
        ({"portfolios": [{"id": "x", "cash": "10", "holdings": {"AAA": -5}}]}, "short"),
        ({"portfolios": [{"id": "x", "cash": "NaN"}]}, "finite"),
        ({"portfolios": [{"id": "x", "cash": "10", "account_type": "crypto"}]}, "not one of"),
        ({"model": {"bars_per_day": "many"}}, "integer"),
    ],
)
def test_bad_settings_are_refused_with_a_message_naming_the_setting(override, message) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_dict(merge(TEST_CONFIG, override))


def test_a_missing_or_malformed_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits\nvar_limit = ")
    with pytest.raises(ConfigError, match="TOML"):
        load_settings(bad, env={})


def test_no_limit_or_universe_constant_is_repeated_outside_the_settings() -> None:
    """The defaults live in riskdesk.toml, engine/settings.py and engine/defaults.py only."""
    offenders = []
    for path in list((ROOT / "engine").glob("*.py")) + list((ROOT / "logic").glob("*.py")):
        if path.name in ("settings.py", "math_logic.py", "defaults.py"):
            continue  # defaults.py is the one home of model defaults; the other two import it
        text = path.read_text()
        for needle in ("0.94", "= 390", "AAPL"):
            if needle in text:
                offenders.append(f"{path.name}: {needle}")
    assert offenders == []


def test_an_error_names_the_setting_by_its_path_and_every_bad_setting_is_reported() -> None:
    override = {
        "portfolios": [
            {"id": "x", "cash": "10"},
            {"id": "y", "cash": "10", "limits": {"var_limit": 0}},
        ],
        "model": {"bars_per_day": 0},
    }

    with pytest.raises(ConfigError) as caught:
        settings_from_dict(merge(TEST_CONFIG, override))

    assert "settings.portfolios[1].limits.var_limit:" in caught.value.detail
    assert "settings.model.bars_per_day:" in caught.value.detail
    assert "portfolios[0]" not in caught.value.detail


def test_a_bad_global_limit_is_reported_once_not_again_for_every_portfolio() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(merge(TEST_CONFIG, {"limits": {"var_limit": -1, "bogus": 1}}))

    assert caught.value.detail.count("var_limit:") == 1 and caught.value.detail.count("['bogus']") == 1
    assert caught.value.detail.startswith("settings.limits")


def test_an_environment_override_is_validated_like_the_file() -> None:
    with pytest.raises(ConfigError, match=r"settings\.model\.bars_per_day: .*integer"):
        load_settings(ROOT / "riskdesk.toml", env={"RISKDESK__MODEL__BARS_PER_DAY": "many"})


def test_tables_of_other_components_are_kept_verbatim_in_extra() -> None:
    settings = settings_from_dict(merge(TEST_CONFIG, {"escalation": {"ack_timeout_seconds": 5}}))

    assert settings.extra["escalation"] == {"ack_timeout_seconds": 5}


def test_alert_rules_are_checked_when_the_settings_load() -> None:
    rule = {"id": "r", "metric": "var.var95", "op": "=>", "threshold": 1.0, "severity": "URGENT"}

    with pytest.raises(ConfigError) as caught:
        settings_from_dict(merge(TEST_CONFIG, {"alert_rules": [rule]}))

    assert "settings.alert_rules[0].op: '=>' is not one of" in caught.value.detail
    assert "settings.alert_rules[0].severity: 'URGENT' is not one of" in caught.value.detail


def test_replace_revalidates_and_keeps_the_settings_frozen() -> None:
    settings = load_settings(ROOT / "riskdesk.toml", env={})

    changed = replace(settings, universe=replace(settings.universe, correlation=0.9))

    assert changed.universe.correlation == 0.9 and changed.universe.assets == settings.universe.assets
    with pytest.raises(ValueError, match="correlation"):
        replace(settings.universe, correlation=1.5)
    with pytest.raises(TypeError):
        settings.universe.assets["NEW"] = settings.universe.assets["AAPL"]  # type: ignore[index]


def test_the_backtest_zone_minimum_defaults_to_the_basel_250_and_is_refused_outside_1_to_250() -> None:
    assert settings_from_dict(TEST_CONFIG).model.backtest_zone_min_observations == 250
    assert load_settings(ROOT / "riskdesk.toml", env={}).model.backtest_zone_min_observations == 250
    for ok in (1, 249, 250):
        settings = settings_from_dict(merge(TEST_CONFIG, {"model": {"backtest_zone_min_observations": ok}}))
        assert settings.model.backtest_zone_min_observations == ok
    for bad in (0, -1, 251):
        with pytest.raises(ConfigError, match=(
            r"settings\.model\.backtest_zone_min_observations: must be between 1 and 250 \(the backtest's rolling "
            rf"window of observations\), got {bad}"
        )):  # fmt: skip
            settings_from_dict(merge(TEST_CONFIG, {"model": {"backtest_zone_min_observations": bad}}))
    for wrong in (2.5, "5", True):
        with pytest.raises(ConfigError, match=r"settings\.model\.backtest_zone_min_observations: .*integer"):
            settings_from_dict(merge(TEST_CONFIG, {"model": {"backtest_zone_min_observations": wrong}}))
    env = {"RISKDESK__MODEL__BACKTEST_ZONE_MIN_OBSERVATIONS": "20"}
    assert load_settings(ROOT / "riskdesk.toml", env=env).model.backtest_zone_min_observations == 20
