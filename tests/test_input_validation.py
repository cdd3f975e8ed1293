"""Input that looks like a number or a name but is not the one meant: the Limits form's decimal comma, exponents
and underscores, position limits on tickers that do not exist (or lower-cased by an environment override),
absurd quantities and money in a book file, and identifiers that look identical (case, homoglyphs).

Every bound is tested exactly at it (accepted) and one unit over (refused)."""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import warmup
from engine import book
from engine.errors import ConfigError
from engine.records import DecisionStatus, ReasonCode, Role
from engine.settings import Limits, Settings, load_settings, settings_from_dict, valid_symbol, validate_config
from engine.settings_types import MAX_MONEY, MAX_QUANTITY, TICKER_KEYED_TABLES, unwrap_type
from engine.store import LimitsChangeError, PortfolioKeys, Store
from logic.access import identity_from_claims, local_identity
from logic.limits import position_cap
from logic.risk_manager import RiskManager
from logic.views import Desk, InputError, change_limits, limits_view
from logic.views.limits import parse_limit

from .conftest import TEST_CONFIG, merge, store_contents, to_toml

NOW = 1_700_000_000.0
ROOT = Path(__file__).resolve().parent.parent
BASE_LIMITS = {f.name: getattr(Limits(), f.name) for f in dataclasses.fields(Limits)}
MONEY_LIMITS = ("var_limit", "max_order_notional", "stressed_var_limit", "max_daily_loss")
SHARE_LIMITS = ("max_order_qty", "max_position_qty")


def limits_with(**changes: Any) -> Limits:
    return validate_config(Limits, {**BASE_LIMITS, **changes}, "limits")


# -- the Limits form ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("max_gross_leverage", "1,5"),  # was read as 15: ten times looser
        ("price_sanity_factor", "1,5"),  # was 15
        ("var_limit", "2,5"),  # was 25
        ("max_order_notional", "1,5"),
        ("max_concentration", "0,25"),
        ("price_collar_pct", "0,05"),
        ("var_limit", "1,00"),  # not a group of three
        ("var_limit", "1,0000"),
        ("max_order_qty", "1,5"),
        ("max_gross_leverage", "1,500"),  # 1.5 or 1500? a multiple takes no thousands separator
        ("stale_price_seconds", "1,000"),
    ],
)
def test_a_decimal_comma_is_refused_with_a_clear_message(name: str, text: str) -> None:
    with pytest.raises(InputError, match="use a point for decimals"):
        parse_limit(name, text)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("var_limit", "1,000,000.50", Decimal("1000000.50")),
        ("var_limit", "25,000", Decimal("25000")),
        ("max_order_notional", "999", Decimal("999")),
        ("max_order_qty", "12,345", 12345),
        ("max_position_qty", "1,000", 1000),
        ("max_gross_leverage", "1.5", 1.5),
        ("max_concentration", ".25", 0.25),
        ("price_sanity_factor", "15", 15.0),
    ],
)
def test_thousands_groups_are_read_in_money_and_share_counts(name: str, text: str, expected: Any) -> None:
    value = parse_limit(name, text)

    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("var_limit", "1e999"),
        ("var_limit", "1E3"),
        ("var_limit", "inf"),
        ("var_limit", "NaN"),
        ("var_limit", "Infinity"),
        ("max_position_qty", "1_000"),
        ("max_gross_leverage", "1e3"),
        ("max_gross_leverage", "-inf"),
        ("var_limit", "1 000"),
        ("var_limit", "$500"),
    ],
)
def test_exponents_underscores_and_non_finite_values_are_refused(name: str, text: str) -> None:
    with pytest.raises(InputError, match="is not a number"):
        parse_limit(name, text)


def test_a_float_limit_too_long_to_be_finite_is_refused_and_a_share_count_must_be_whole() -> None:
    with pytest.raises(InputError, match="too large"):
        parse_limit("max_gross_leverage", "9" * 400)  # float("9" * 400) is inf
    with pytest.raises(InputError, match="whole number"):
        parse_limit("max_order_qty", "1,000.5")


@pytest.mark.parametrize("name", MONEY_LIMITS)
def test_money_limits_are_bounded_at_max_money(name: str) -> None:
    assert MAX_MONEY == Decimal(10**15)
    at = parse_limit(name, "1,000,000,000,000,000")

    assert getattr(limits_with(**{name: at}), name) == MAX_MONEY
    with pytest.raises(ConfigError, match=f"{name}: must be at most 1,000,000,000,000,000"):
        limits_with(**{name: parse_limit(name, "1,000,000,000,000,000.01")})


@pytest.mark.parametrize("name", SHARE_LIMITS)
def test_share_limits_are_bounded_at_max_quantity(name: str) -> None:
    assert MAX_QUANTITY == 10**12
    assert getattr(limits_with(**{name: parse_limit(name, "1,000,000,000,000")}), name) == MAX_QUANTITY
    with pytest.raises(ConfigError, match=name):
        limits_with(**{name: parse_limit(name, "1,000,000,000,001")})


def test_position_limits_are_bounded_at_max_quantity() -> None:
    assert limits_with(position_limits={"AAA": MAX_QUANTITY}).position_limits["AAA"] == MAX_QUANTITY
    with pytest.raises(ConfigError, match="position_limits"):
        limits_with(position_limits={"AAA": MAX_QUANTITY + 1})


def test_a_decimal_comma_on_the_live_form_writes_nothing_and_the_bound_applies_live(store: Store) -> None:
    settings = settings_from_dict(TEST_CONFIG)
    warmup.seed(store, settings, now=NOW)
    desk = Desk(store.client, settings, clock=lambda: NOW)
    who = local_identity()
    seen = limits_view(desk, "main")
    before = store_contents(store.client)

    with pytest.raises(InputError, match="use a point for decimals"):
        change_limits(desk, "main", {"max_gross_leverage": "1,5"}, who, "typo", seen)
    with pytest.raises(LimitsChangeError, match="at most 1,000,000,000,000,000"):
        change_limits(desk, "main", {"var_limit": "1,000,000,000,000,000.01"}, who, "too loose", seen)

    assert store_contents(store.client) == before
    assert change_limits(desk, "main", {"var_limit": "1,000,000,000,000,000"}, who, "at the bound", seen) == 1
    assert limits_view(desk, "main").limits.var_limit == MAX_MONEY


# -- position limits on the universe -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"limits": {"position_limits": {"aaa": 100}}}, "did you mean 'AAA' for 'aaa'"),
        ({"limits": {"position_limits": {"ZZZ": 5}}}, "'ZZZ'"),
    ],
)
def test_a_global_position_limit_on_a_ticker_outside_the_universe_is_refused(
    override: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match="limits.position_limits") as err:
        settings_from_dict(merge(TEST_CONFIG, override))

    assert message in str(err.value) and "not in the universe" in str(err.value)


def test_a_portfolios_own_position_limit_on_an_unknown_ticker_is_refused() -> None:
    cfg = copy.deepcopy(TEST_CONFIG)
    cfg["portfolios"][1]["limits"] = {"position_limits": {"EEE": 10}}

    with pytest.raises(ConfigError, match=r"portfolios hedge: limits.position_limits: \['EEE'\] not in the universe"):
        settings_from_dict(cfg)


def _config_file(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    path = tmp_path / "riskdesk.toml"
    path.write_text(to_toml(cfg))
    return path


def test_an_env_override_of_a_position_limit_keeps_the_tickers_case_and_caps_it(store: Store, tmp_path: Path) -> None:
    settings = load_settings(
        _config_file(tmp_path, TEST_CONFIG), env={"RISKDESK__LIMITS__POSITION_LIMITS__AAA": "1200"}
    )

    assert dict(settings.limits.position_limits) == {"AAA": 1200}
    assert position_cap(settings.limits_for("main"), "AAA") == 1200
    # the gate applies it at its boundary: main holds 1000 AAA, so 200 more reach the cap and 201 pass it
    warmup.seed(store, settings, now=NOW)
    rm = RiskManager(store.client, "main", settings, clock=lambda: NOW)
    assert rm.check("AAA", 200, "BUY").status == DecisionStatus.APPROVED
    refused = rm.check("AAA", 201, "BUY")
    assert {r.code for r in refused.reasons} == {ReasonCode.POSITION_LIMIT}


def test_an_env_override_names_an_existing_key_case_aside_and_a_lower_case_ticker_is_refused(tmp_path: Path) -> None:
    file = _config_file(tmp_path, merge(TEST_CONFIG, {"limits": {"position_limits": {"AAA": 50}}}))

    # one key of the table equal but for case: that key is the one set
    settings = load_settings(file, env={"RISKDESK__LIMITS__POSITION_LIMITS__aaa": "70"})
    assert dict(settings.limits.position_limits) == {"AAA": 70}
    # a scenario name from the environment (upper-case by convention) still finds the file's "crash"
    settings = load_settings(file, env={"RISKDESK__STRESS_SCENARIOS__CRASH__DESCRIPTION": '"renamed"'})
    assert settings.stress_scenarios["crash"].description == "renamed" and "CRASH" not in settings.stress_scenarios
    # field names are read case-insensitively, as before
    assert load_settings(file, env={"RISKDESK__Limits__Var_Limit": "1234"}).limits.var_limit == Decimal(1234)
    with pytest.raises(ConfigError, match="did you mean 'BBB' for 'bbb'"):
        load_settings(_config_file(tmp_path, TEST_CONFIG), env={"RISKDESK__LIMITS__POSITION_LIMITS__bbb": "5"})


# -- the book file -----------------------------------------------------------------------------------------------

HEADER = "portfolio_id,ticker,qty,avg_price,account_type,cash\n"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("main,AAA,1e30,100,,", "qty '1e30': write it in digits"),
        ("main,AAA,1_000,100,,", "qty '1_000': write it in digits"),
        ("main,AAA,1E3,100,,", "write it in digits"),
        ("main,AAA,1000000000001,100,,", "qty '1000000000001' is over 1,000,000,000,000 shares"),
        ("hedge,DDD,-1000000000001,25,,", "is over 1,000,000,000,000 shares"),
        ("main,AAA,1000,1e400,,", "avg_price '1e400': write it in digits"),
        ("main,AAA,1000,1000000000000000.01,,", "avg_price '1000000000000000.01' is over 1,000,000,000,000,000"),
        ("main,,,,cash,1e400", "cash '1e400': write it in digits"),
        ("main,,,,cash,1000000000000000.01", "cash '1000000000000000.01' is over 1,000,000,000,000,000"),
        ("main,,,,cash,1_000", "write it in digits"),
    ],
)
def test_absurd_book_numbers_are_refused_with_a_coded_error_before_anything_is_written(
    store: Store, settings: Settings, tmp_path: Path, row: str, message: str
) -> None:
    warmup.seed(store, settings, now=NOW)
    before = store_contents(store.client)
    path = tmp_path / "book.csv"
    path.write_text(HEADER + row + "\n")

    with pytest.raises(book.BookError) as err:
        book.sync(store, settings, book.read_book(path, settings.universe.tickers), dry_run=False, create=False,
                  now=NOW + 1, actor="test")  # fmt: skip

    assert err.value.code == "BOOK_INVALID" and f"{path}:2:" in str(err.value) and message in str(err.value)
    assert store_contents(store.client) == before


def test_book_numbers_exactly_at_their_bounds_are_synced_with_the_exact_capital_flow(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    warmup.seed(store, settings, now=NOW)
    path = tmp_path / "book.csv"
    path.write_text(HEADER + "main,AAA,1000000000000,1000000000000000,,\nmain,,,,cash,1000000000000000\n"
                    "hedge,DDD,-1000000000000,25.00,,\n")  # fmt: skip
    prices = dict(zip(*[store.read_market_header().tickers, store.read_market_header().prices.tolist()], strict=True))

    book.sync(store, settings, book.read_book(path, settings.universe.tickers), dry_run=False, create=False,
              now=NOW + 1, actor="test")  # fmt: skip

    main = store.read_portfolio("main")
    assert main.positions["AAA"].qty == MAX_QUANTITY and main.positions["AAA"].avg_price == MAX_MONEY
    assert main.cash == MAX_MONEY and "BBB" not in main.positions
    assert store.read_portfolio("hedge").positions["DDD"].qty == -MAX_QUANTITY
    audit = [json.loads(f[b"json"]) for _, f in store.client.xrange(PortfolioKeys("main").audit)]
    (flow,) = [r for r in audit if r.get("action") == "capital_flow"]
    # the equity change: the cash change plus each quantity change at its stored price, finite and exact
    expected = float(MAX_MONEY - Decimal("1000000.00")) + (MAX_QUANTITY - 1000) * prices["AAA"] - 2000 * prices["BBB"]
    assert flow["flow"] == pytest.approx(expected, rel=1e-12)


# -- identifiers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("symbol", ["AAA", "BRK.B", "main_1", "x-y", "a" * 32, "0", "hedge"])
def test_ascii_ids_stay_valid(symbol: str) -> None:
    assert valid_symbol(symbol)


@pytest.mark.parametrize(
    "symbol",
    ["m\u0430in", "\uff21\uff21\uff21", "\u0661\u0662", "caf\u00e9", "a" * 33, "", "a b", "a}:x{b", "AAA\n"],
)
def test_non_ascii_lookalikes_and_bad_ids_are_refused(symbol: str) -> None:
    assert not valid_symbol(symbol)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["portfolios"].append({"id": "MAIN", "cash": "1"}), "portfolio ids must be unique (case aside)"),
        (lambda c: c["portfolios"].append({"id": "main", "cash": "1"}), "portfolio ids must be unique"),
        (lambda c: c["portfolios"].append({"id": "m\u0430in", "cash": "1"}), "invalid portfolio id"),
        (lambda c: c["universe"]["assets"].update(aaa=c["universe"]["assets"]["AAA"]), "tickers must be unique"),
        (lambda c: c["universe"]["assets"].update({"\uff21\uff21\uff21": {"price": 1.0, "annual_vol": 0.2}}),
         "invalid ticker symbol"),
    ],
)  # fmt: skip
def test_settings_refuse_lookalike_portfolio_ids_and_tickers(mutate: Any, message: str) -> None:
    cfg = copy.deepcopy(TEST_CONFIG)
    mutate(cfg)

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings_from_dict(cfg)


def test_holdings_and_cash_in_the_settings_are_bounded() -> None:
    at = copy.deepcopy(TEST_CONFIG)
    at["portfolios"][0]["holdings"]["AAA"] = MAX_QUANTITY
    at["portfolios"][0]["cash"] = "1000000000000000"
    settings = settings_from_dict(at)
    assert settings.portfolio("main").holdings["AAA"] == MAX_QUANTITY and settings.portfolio("main").cash == MAX_MONEY

    over = copy.deepcopy(at)
    over["portfolios"][1]["holdings"]["DDD"] = -(MAX_QUANTITY + 1)
    with pytest.raises(ConfigError, match="holding DDD -1000000000001 over 1,000,000,000,000 shares"):
        settings_from_dict(over)
    over = copy.deepcopy(at)
    over["portfolios"][0]["cash"] = "1000000000000000.01"
    with pytest.raises(ConfigError, match="cash: must be at most 1,000,000,000,000,000"):
        settings_from_dict(over)


def test_the_shipped_settings_file_stays_valid() -> None:
    settings = load_settings(ROOT / "riskdesk.toml", env={})

    assert settings.portfolio_ids and all(valid_symbol(t) for t in settings.universe.tickers)


def test_a_book_file_refuses_portfolio_ids_that_differ_only_in_case(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    warmup.seed(store, settings, now=NOW)
    before = store_contents(store.client)
    twins = tmp_path / "twins.csv"
    twins.write_text(HEADER + "main,AAA,5,10,,\nMAIN,BBB,5,10,,\n")
    with pytest.raises(book.BookError, match=f"{twins}:3: portfolio id 'MAIN' differs from 'main' only in case"):
        book.read_book(twins, settings.universe.tickers)

    upper = tmp_path / "upper.csv"
    upper.write_text(HEADER + "MAIN,AAA,5,10,,\nMAIN,,,,cash,1000\n")
    with pytest.raises(book.BookError, match=f"{upper}:2: portfolio 'MAIN' differs from 'main' only in case"):
        book.sync(store, settings, book.read_book(upper, settings.universe.tickers), dry_run=False, create=True,
                  now=NOW + 1, actor="test")  # fmt: skip
    with pytest.raises(book.BookError, match="only in case"):
        book.check_book(settings, book.read_book(upper, settings.universe.tickers))
    assert store_contents(store.client) == before


# -- environment overrides of tables that are not keyed by ticker --------------------------------------------------


def _claims(groups: list[str]) -> dict[str, Any]:
    return {"iss": "idp", "sub": "u1", "email": "t@x", "groups": groups, "iat": NOW - 10, "exp": NOW + 3600}


def test_an_env_override_adding_an_access_group_lower_cases_it_and_grants_the_idp_group(tmp_path: Path) -> None:
    """diffrev_inputs_envgroups.py: RISKDESK__ACCESS__GROUPS__TRADERS__ROLES made a group ``TRADERS`` (every part
    of the name was lower-cased before tickers kept their case): a member of the IdP group ``traders`` got no
    role."""
    env = {
        "RISKDESK__ACCESS__GROUPS__TRADERS__ROLES": '["trader"]',
        "RISKDESK__ACCESS__GROUPS__TRADERS__PORTFOLIOS": '["*"]',
    }

    settings = load_settings(_config_file(tmp_path, TEST_CONFIG), env=env)

    assert list(settings.access.groups) == ["traders"]
    ident = identity_from_claims(settings.access, _claims(["traders"]), clock=lambda: NOW)
    assert ident.roles == {Role.TRADER} and ident.portfolios == {"*"}


def test_an_env_override_of_a_group_the_file_names_keeps_the_files_case(tmp_path: Path) -> None:
    cfg = merge(TEST_CONFIG, {"access": {"groups": {"Risk_Managers": {"roles": ["trader"], "portfolios": ["main"]}}}})

    settings = load_settings(
        _config_file(tmp_path, cfg), env={"RISKDESK__ACCESS__GROUPS__RISK_MANAGERS__ROLES": '["risk_manager"]'}
    )

    assert list(settings.access.groups) == ["Risk_Managers"]  # the existing key, matched case aside
    ident = identity_from_claims(settings.access, _claims(["Risk_Managers"]), clock=lambda: NOW)
    assert ident.roles == {Role.RISK_MANAGER}


def test_an_env_override_keeps_a_tickers_case_in_shocks_and_lower_cases_a_new_scenario_name(tmp_path: Path) -> None:
    env = {
        "RISKDESK__STRESS_SCENARIOS__ROTATION__SHOCKS__BBB": "-0.05",
        "RISKDESK__STRESS_SCENARIOS__SQUEEZE__DESCRIPTION": '"DDD squeeze"',
        "RISKDESK__STRESS_SCENARIOS__SQUEEZE__SHOCKS__DDD": "0.3",
    }

    settings = load_settings(_config_file(tmp_path, TEST_CONFIG), env=env)

    assert dict(settings.stress_scenarios["rotation"].shocks) == {"AAA": -0.1, "DDD": 0.1, "BBB": -0.05}
    assert set(settings.stress_scenarios) == {"crash", "rotation", "squeeze"}
    assert dict(settings.stress_scenarios["squeeze"].shocks) == {"DDD": 0.3}


def _tables(tp: Any, path: str = "") -> dict[str, Any]:
    """Every ``Table`` field reachable from the settings type ``tp`` (by dotted path), with its field name."""
    out: dict[str, Any] = {}
    if not (dataclasses.is_dataclass(tp) and isinstance(tp, type)):
        return out
    for name, hint in typing.get_type_hints(tp, include_extras=True).items():
        inner = unwrap_type(hint)
        if typing.get_origin(inner) is tuple:
            inner = unwrap_type(typing.get_args(inner)[0])
        if typing.get_origin(inner) in (Mapping, dict):
            out[f"{path}{name}"] = name
            inner = unwrap_type(typing.get_args(inner)[-1])
        out.update(_tables(inner, f"{path}{name}."))
    return out


def test_every_settings_table_is_classified_as_keyed_by_ticker_or_not() -> None:
    """A new table must say whether an env override keeps its keys' case (tickers) or lower-cases them."""
    tables = _tables(Settings)
    not_tickers = {"stress_scenarios", "extra", "access.users", "access.groups"}

    assert set(tables) == {
        "universe.assets", "limits.position_limits", "portfolios.holdings", "portfolios.limits.position_limits",
        "stress_scenarios.shocks", *not_tickers,
    }  # fmt: skip
    assert {tables[p] for p in tables if p not in not_tickers} == TICKER_KEYED_TABLES
    assert not {tables[p] for p in not_tickers} & TICKER_KEYED_TABLES
