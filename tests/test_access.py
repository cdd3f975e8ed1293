"""Who may do what (issue 13): the role matrix of :func:`logic.access.authorize` at its boundaries, identities
from the identity provider's claims and ``[access]``, every state-changing view refusing a role before it
touches the store (byte-for-byte unchanged), the audit actor being the identity's, the local operator mode in
the sidebar, the Host-header check and the launcher refusing a public address without login."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from engine.errors import AccessDenied, ConfigError
from engine.records import Action, OrderIntent, Role
from engine.redis_server import EmbeddedRedis
from engine.settings import AccessConfig, Settings, settings_from_dict
from engine.store import GLOBAL_AUDIT_KEY, PortfolioKeys, Store
from logic import access, views
from logic.access import (
    ROLE_ACTIONS,
    Identity,
    authorize,
    host_allowed,
    is_loopback,
    local_identity,
    login_configured,
)
from logic.alerts import build_alert_engine
from logic.monitor import Monitor

from .conftest import TEST_CONFIG, merge, store_contents, to_toml

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "dashboard" / "app.py"
ISSUER = "https://idp.desk.test"
AUTH = {
    "redirect_uri": "https://riskdesk.desk.test/oauth2callback",
    "cookie_secret": "0123456789abcdef0123456789abcdef",
    "client_id": "riskdesk",
    "client_secret": "client-secret-value",
    "server_metadata_url": "https://idp.desk.test/.well-known/openid-configuration",
}
NAMED = {
    "redirect_uri": AUTH["redirect_uri"],
    "cookie_secret": AUTH["cookie_secret"],
    **{name: {k: AUTH[k] for k in access.PROVIDER_KEYS} for name in ("microsoft", "okta")},
}
"""An [auth] section with two named providers ([auth.microsoft], [auth.okta]) and no default one."""
BAD_QUOTE = "\n".join(["[auth]", *(f'{k} = "{v}"' for k, v in AUTH.items() if k != "client_secret"),
                        'client_secret = "client-secret"value"', ""])  # fmt: skip
"""The reviewer's case: a valid-looking [auth] section with one stray quote, which TOML cannot parse."""


def identity_from_claims(access_config: AccessConfig, claims: dict[str, Any]) -> Identity:
    """:func:`logic.access.identity_from_claims` on a sign-in that lasts (a token issued now, expiring in an
    hour): these tests are about the grants; tests/test_access_sessions.py tests where a sign-in ends."""
    now = int(time.time())
    return access.identity_from_claims(access_config, {"iat": now, "exp": now + 3600, **claims})


def secrets_file(directory: Path, text: str) -> Path:
    path = directory / ".streamlit" / "secrets.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def who(*roles: Role, portfolios: tuple[str, ...] = (), sub: str = "u-1") -> Identity:
    return Identity(ISSUER, sub, f"{sub}@desk.test", roles=frozenset(roles), portfolios=frozenset(portfolios))


VIEWER = who(Role.VIEWER, sub="viewer-1")
TRADER = who(Role.TRADER, portfolios=("main",), sub="trader-1")
RISK = who(Role.RISK_MANAGER, sub="risk-1")
ADMIN = who(Role.ADMIN, sub="admin-1")

# the expected matrix, written out here (not derived from ROLE_ACTIONS): role -> allowed actions, anywhere
EXPECTED: dict[Role, set[Action]] = {
    Role.VIEWER: set(),
    Role.TRADER: set(),  # portfolio-scoped: see the trader tests
    Role.RISK_MANAGER: {
        Action.LIQUIDATE,
        Action.ACKNOWLEDGE,
        Action.RESOLVE,
        Action.TRADING_STATE,
        Action.FIRM_SWITCH,
        Action.EDIT_RULES,
        Action.EDIT_LIMITS,
    },
    Role.ADMIN: set(Action),
}


def skip_if_this_checkout_configures_login() -> None:
    """The tests of local mode and of broken login files need a checkout without its own login secrets."""
    if (ROOT / ".streamlit" / "secrets.toml").exists():
        pytest.skip("this checkout configures login in .streamlit/secrets.toml")


def point_the_dashboard_at(monkeypatch: pytest.MonkeyPatch, redis_url: str, config: Path, *, home: Path) -> None:
    """The dashboard under test reads this Redis, this settings file and the secrets under ``home``
    (Streamlit reads ~/.streamlit/secrets.toml)."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("RISKDESK_CONFIG", str(config))
    monkeypatch.setenv("HOME", str(home))


# -- the matrix ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("identity", [VIEWER, RISK, ADMIN], ids=lambda i: sorted(i.roles)[0])
@pytest.mark.parametrize("action", list(Action))

def test_authorize_matrix(identity: Identity, action: Action) -> None:
    (role,) = identity.roles
    for pid in (None, "main", "hedge"):
        if action in EXPECTED[role]:
            authorize(identity, action, pid)
            assert identity.can(action, pid)
        else:
            with pytest.raises(AccessDenied) as err:
                authorize(identity, action, pid)
            assert err.value.code == "ACCESS_DENIED" and identity.email in str(err.value)
            assert not identity.can(action, pid)


def test_a_trader_trades_and_acknowledges_only_the_listed_portfolios() -> None:
    for action in (Action.TRADE, Action.ACKNOWLEDGE):
        authorize(TRADER, action, "main")  # listed: allowed
        with pytest.raises(AccessDenied, match="on portfolio hedge"):
            authorize(TRADER, action, "hedge")  # unlisted: refused
        with pytest.raises(AccessDenied):
            authorize(TRADER, action, None)  # no portfolio named: refused (fail closed)
    for action in set(Action) - {Action.TRADE, Action.ACKNOWLEDGE}:
        with pytest.raises(AccessDenied):
            authorize(TRADER, action, "main")
    everywhere = who(Role.TRADER, portfolios=("*",))
    authorize(everywhere, Action.TRADE, "hedge")
    with pytest.raises(AccessDenied):
        authorize(who(Role.TRADER), Action.TRADE, "main")  # a trader with no portfolio listed trades nothing


def test_roles_add_up_and_nobody_is_refused_by_a_second_role() -> None:
    both = who(Role.TRADER, Role.RISK_MANAGER, portfolios=("main",))
    authorize(both, Action.TRADE, "main")
    authorize(both, Action.TRADING_STATE, "hedge")
    authorize(both, Action.ACKNOWLEDGE, "hedge")  # the risk manager's acknowledgement is not portfolio-scoped
    with pytest.raises(AccessDenied):
        authorize(both, Action.TRADE, "hedge")


def test_no_identity_and_no_role_are_refused() -> None:
    for action in Action:
        with pytest.raises(AccessDenied, match="sign in"):
            authorize(None, action, "main")
        with pytest.raises(AccessDenied, match="roles: none"):
            authorize(who(), action, "main")


def test_a_refusal_reads_as_a_plain_message_with_its_fix() -> None:
    with pytest.raises(AccessDenied) as err:
        authorize(VIEWER, Action.TRADE, "main")
    problem = views.problem_from_exception(err.value)
    assert (problem.code, problem.title) == ("ACCESS_DENIED", "Not allowed for your role")
    assert "may not trade on portfolio main" in problem.detail and "[access]" in problem.fix


def test_the_matrix_in_the_module_is_the_documented_one() -> None:
    assert {r: set(a) for r, a in ROLE_ACTIONS.items()} == {**EXPECTED, Role.TRADER: {Action.TRADE, Action.ACKNOWLEDGE}}


def test_actor_is_issuer_and_subject_or_the_local_os_user() -> None:
    assert TRADER.actor == f"{ISSUER}|trader-1"
    local = local_identity("ops")
    assert (local.actor, local.local, local.roles) == ("local:ops", True, frozenset(Role))
    for action in Action:
        authorize(local, action, "any-portfolio")


def test_the_local_operator_is_the_os_account_not_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    account = pwd.getpwuid(os.getuid()).pw_name
    for name in ("USER", "LOGNAME", "LNAME", "USERNAME"):
        monkeypatch.setenv(name, "alice-the-admin")
    local = local_identity()
    assert (local.subject, local.actor) == (account, f"local:{account}")
    assert "alice-the-admin" not in local.actor


def test_the_local_operator_without_a_password_entry_is_the_numeric_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_entry(uid: int) -> Any:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)  # a container's arbitrary uid
    monkeypatch.setenv("USER", "alice-the-admin")
    assert local_identity().actor == f"local:{os.getuid()}"


# -- identities from the identity provider's claims --------------------------------------------------------------


def access_settings(access: dict[str, Any]) -> AccessConfig:
    return settings_from_dict(merge(TEST_CONFIG, {"access": access})).access


def test_identity_from_claims_maps_email_case_insensitively_and_groups_and_adds_them_up() -> None:
    access = access_settings(
        {
            "users": {"Alice@Desk.test": {"roles": ["trader"], "portfolios": ["main"]}},
            "groups": {"risk": {"roles": ["risk_manager"]}, "hedgers": {"roles": ["trader"], "portfolios": ["hedge"]}},
        }
    )
    claims = {"iss": ISSUER, "sub": "a-7", "email": "alice@desk.TEST", "name": "Alice", "groups": ["hedgers"]}
    alice = identity_from_claims(access, claims)
    assert (alice.actor, alice.email, alice.name) == (f"{ISSUER}|a-7", "alice@desk.TEST", "Alice")
    assert (alice.roles, alice.portfolios) == (frozenset({Role.TRADER}), frozenset({"main", "hedge"}))
    risk = identity_from_claims(access, {"iss": ISSUER, "sub": "r-1", "email": "r@desk.test", "groups": "risk"})
    assert risk.roles == frozenset({Role.RISK_MANAGER})
    stranger = identity_from_claims(access, {"iss": ISSUER, "sub": "s-1", "email": "s@elsewhere.test"})
    assert stranger.roles == frozenset()  # no grant, no role: fail closed
    with pytest.raises(AccessDenied, match="issuer or subject"):
        identity_from_claims(access, {"iss": ISSUER, "email": "alice@desk.test"})


@pytest.mark.parametrize("other", ["viewer", "risk_manager"])
@pytest.mark.parametrize("listed", ["hedge", "*"])
def test_portfolios_another_grant_lists_never_widen_a_traders_portfolios(other: str, listed: str) -> None:
    """Alice trades ``main``; a group of another role listing ``hedge`` (or every portfolio) must not let her
    trade it: a grant's portfolios scope its own trader role (they were merged across grants, and she traded)."""
    access = access_settings(
        {
            "users": {"alice@desk.test": {"roles": ["trader"], "portfolios": ["main"]}},
            "groups": {"desk": {"roles": [other], "portfolios": [listed]}},
        }
    )
    claims = {"iss": ISSUER, "sub": "a-1", "email": "alice@desk.test", "groups": ["desk"]}
    alice = identity_from_claims(access, claims)
    assert (alice.roles, alice.portfolios) == (frozenset({Role.TRADER, Role(other)}), frozenset({"main"}))
    assert authorize(alice, Action.TRADE, "main") is alice
    with pytest.raises(AccessDenied, match="may not trade on portfolio hedge"):
        authorize(alice, Action.TRADE, "hedge")


def test_a_custom_groups_claim_is_read() -> None:
    access = access_settings({"groups_claim": "roles", "groups": {"desk-admins": {"roles": ["admin"]}}})
    admin = identity_from_claims(access, {"iss": ISSUER, "sub": "x", "roles": ["desk-admins"], "groups": []})
    assert admin.roles == frozenset({Role.ADMIN})


ABSENT = object()


@pytest.mark.parametrize(
    ("email_verified", "by_email"),
    [
        (True, True),
        ("true", True),  # some providers send it as a string
        ("TRUE", True),
        (ABSENT, True),  # Entra ID never sends it: the e-mail counts, as documented
        (False, False),
        ("false", False),
        ("no", False),
        ("", False),
        (0, False),
        (1, False),  # only true is true
    ],
)
def test_an_email_the_provider_has_not_verified_maps_no_role(email_verified: Any, by_email: bool) -> None:
    access = access_settings(
        {
            "users": {"alice@desk.test": {"roles": ["admin"], "portfolios": ["*"]}},
            "groups": {"desk": {"roles": ["viewer"]}},
        }
    )
    claims = {"iss": ISSUER, "sub": "mallory-1", "email": "Alice@Desk.test", "groups": ["desk"]}
    if email_verified is not ABSENT:
        claims["email_verified"] = email_verified
    mallory = identity_from_claims(access, claims)
    if by_email:
        assert (mallory.roles, mallory.portfolios) == (frozenset({Role.ADMIN, Role.VIEWER}), frozenset())
    else:  # the group still grants its role; the unverified e-mail grants nothing
        assert (mallory.roles, mallory.portfolios) == (frozenset({Role.VIEWER}), frozenset())
        with pytest.raises(AccessDenied):
            authorize(mallory, Action.EDIT_LIMITS)
    assert mallory.email == "Alice@Desk.test"  # still shown to the user


def test_a_null_email_verified_is_not_absent_and_maps_no_role() -> None:
    access = access_settings({"users": {"alice@desk.test": {"roles": ["trader"], "portfolios": ["main"]}}})
    claims = {"iss": ISSUER, "sub": "a-1", "email": "alice@desk.test", "email_verified": None}
    assert identity_from_claims(access, claims).roles == frozenset()  # present and not true
    del claims["email_verified"]
    assert identity_from_claims(access, claims).roles == frozenset({Role.TRADER})  # absent: the e-mail counts


@pytest.mark.parametrize(
    ("groups", "roles"),
    [
        ("risk-managers", {Role.RISK_MANAGER}),  # a string is one group name
        ("not risk-managers", set()),  # not split on spaces ...
        ("x,risk-managers", set()),  # ... nor on commas
        (" risk-managers", set()),  # nor trimmed: group names compare exactly
        ("", set()),
        (["not", "risk-managers"], {Role.RISK_MANAGER}),  # a list (what OIDC providers send): each item
        (["not risk-managers"], set()),
        ({"risk-managers": True}, set()),  # not a list of names
        (None, set()),
    ],
)
def test_a_string_groups_claim_is_one_group_name(groups: Any, roles: set[Role]) -> None:
    access = access_settings({"groups": {"risk-managers": {"roles": ["risk_manager"]}}})
    bob = identity_from_claims(access, {"iss": ISSUER, "sub": "bob", "email": "bob@desk.test", "groups": groups})
    assert bob.roles == frozenset(roles)


@pytest.mark.parametrize(
    "access",
    [
        {"users": {"a@b": {"roles": ["superuser"]}}},  # unknown role
        {"users": {"a@b": {"roles": []}}},  # a grant without a role
        {"users": {"a@b": {"roles": ["viewer"], "extra": 1}}},  # unknown key
        {"user": {}},  # misspelled table
    ],
)
def test_invalid_access_settings_are_a_config_error(access: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        access_settings(access)


# -- views: refused before the store changes; the audit carries the identity ------------------------------------


@pytest.fixture
def desk(seeded_store: Store, settings: Settings) -> views.Desk:
    return views.Desk(seeded_store.client, settings)


def alert_fired(store: Store, settings: Settings) -> None:
    engine = build_alert_engine(store, settings)
    engine.add_rule(
        {"id": "var_used", "metric": "var.utilization", "op": ">=", "threshold": 0.0, "severity": "LOW"}, "setup"
    )
    Monitor(store, settings, alert_engine=engine).refresh()
    assert store.read_active_alerts("main")["var_used"]["status"] == "TRIGGERED"


LIQUIDATION = OrderIntent.LIQUIDATION
RULE = {"id": "lev", "metric": "leverage", "op": ">", "threshold": 2.5, "severity": "HIGH"}


def state_changes(desk: views.Desk, identity: Identity, pid: str) -> list[tuple[str, Any]]:
    return [
        ("trade", lambda: views.execute_ticket(desk, pid, "AAA", "BUY", 10, "acc-1", identity)),
        ("liquidate", lambda: views.execute_ticket(desk, pid, "AAA", "SELL", 10, "acc-l", identity, LIQUIDATION)),
        ("state", lambda: views.change_trading_state(desk, pid, "HALTED", "drill", identity)),
        ("halt all", lambda: views.firm_switch(desk, "HALT ALL", identity, "drill")),
        ("reduce all", lambda: views.firm_switch(desk, "REDUCE ALL", identity, "drill")),
        ("save rule", lambda: views.save_rule(desk, RULE, identity, "new")),
        ("remove rule", lambda: views.remove_rule(desk, "var_used", identity, "x")),
        ("reset rule", lambda: views.reset_rule(desk, "var_used", identity, "x")),
        ("acknowledge", lambda: views.acknowledge_alert(desk, pid, "var_used", identity, "x")),
        ("resolve", lambda: views.resolve_alert(desk, pid, "var_used", identity, "x")),
    ]


def test_a_viewer_is_refused_every_state_change_and_the_store_is_unchanged(
    desk: views.Desk, seeded_store: Store, settings: Settings
) -> None:
    alert_fired(seeded_store, settings)
    before = store_contents(seeded_store.client)
    for name, change in state_changes(desk, VIEWER, "main"):
        with pytest.raises(AccessDenied):
            change()
        assert store_contents(seeded_store.client) == before, name


def test_a_trader_is_refused_on_an_unlisted_portfolio_and_beyond_trading(
    desk: views.Desk, seeded_store: Store, settings: Settings
) -> None:
    alert_fired(seeded_store, settings)
    before = store_contents(seeded_store.client)
    changes = state_changes(desk, TRADER, "hedge")
    changes += [c for c in state_changes(desk, TRADER, "main") if c[0] not in ("trade", "acknowledge")]
    for name, change in changes:
        with pytest.raises(AccessDenied):
            change()
        assert store_contents(seeded_store.client) == before, name


def test_a_trader_trades_a_listed_portfolio_as_their_identity(desk: views.Desk, seeded_store: Store) -> None:
    result = views.execute_ticket(desk, "main", "AAA", "BUY", 10, "acc-2", TRADER)
    assert result["status"] == "FILLED", result
    (trade,) = views.blotter_frame(desk, "main").to_dict("records")[:1]
    assert trade["actor"] == TRADER.actor == f"{ISSUER}|trader-1"


def test_a_risk_manager_halts_edits_rules_and_resolves_under_their_identity(
    desk: views.Desk, seeded_store: Store, settings: Settings
) -> None:
    alert_fired(seeded_store, settings)
    views.change_trading_state(desk, "main", "HALTED", "drill", RISK)
    assert seeded_store.read_trading_state("main").actor == RISK.actor
    views.save_rule(desk, RULE, RISK, "new desk rule")
    assert seeded_store.read_stream_json(GLOBAL_AUDIT_KEY, count=1)[0]["actor"] == RISK.actor
    acked = views.acknowledge_alert(desk, "main", "var_used", RISK, "looking")
    assert acked["acknowledged_by"] == RISK.actor
    resolved = views.resolve_alert(desk, "main", "var_used", RISK, "done")
    assert resolved["resolved_by"] == RISK.actor
    views.firm_switch(desk, "HALT ALL", RISK, "drill")
    firm_audit = [r for r in seeded_store.read_stream_json(GLOBAL_AUDIT_KEY, count=10) if r.get("action") == "halt_all"]
    assert firm_audit and firm_audit[0]["actor"] == RISK.actor
    audit = seeded_store.read_stream_json(PortfolioKeys("main").audit, count=10)
    assert {r["actor"] for r in audit if r.get("action") == "set_trading_state"} >= {RISK.actor}
    with pytest.raises(AccessDenied):  # but does not trade
        views.execute_ticket(desk, "main", "AAA", "SELL", 1, "acc-3", RISK)


def test_a_risk_manager_de_risks_a_halted_book_with_liquidation_only_orders_only(
    desk: views.Desk, seeded_store: Store
) -> None:
    """On a bad day the desk is HALTED and the risk manager cuts the position by hand: a liquidation-only order
    passes (under their identity, marked as such in the blotter); one share past flat, a growing order or an
    ordinary order does not, and a refused one changes nothing."""
    views.change_trading_state(desk, "main", "HALTED", "bad day", RISK)
    assert seeded_store.read_portfolio("main").positions["AAA"].qty == 1000
    assert views.order_types(RISK, "main") == ["Trade", "Liquidation-only"]
    assert views.order_types(TRADER, "main") == views.order_types(VIEWER, "main") == views.order_types(None, "main")
    assert views.order_types(TRADER, "main") == ["Trade"]
    assert views.ticket_action(LIQUIDATION) is Action.LIQUIDATE and views.ticket_action("trade") is Action.TRADE

    book = seeded_store.read_portfolio("main")
    flip = views.check_ticket(desk, "main", "AAA", "SELL", 1001, RISK, LIQUIDATION)  # one share past flat
    grow = views.check_ticket(desk, "main", "AAA", "BUY", 1, RISK, LIQUIDATION)
    plain = views.check_ticket(desk, "main", "AAA", "SELL", 1, RISK)  # an ordinary order in HALTED
    assert "LIQUIDATION_ONLY" in {r["code"] for r in flip["reasons"]} and flip["max_qty_allowed"] == 1000
    assert [r["code"] for r in grow["reasons"]] == ["LIQUIDATION_ONLY"]
    assert [r["code"] for r in plain["reasons"]] == ["TRADING_HALTED"]
    checks = seeded_store.read_stream_json(PortfolioKeys("main").checks, count=10)
    assert sorted(c["intent"] for c in checks) == ["liquidation", "liquidation", "trade"]  # each refusal audited
    refused = {e.summary for e in views.audit_view(desk).entries if e.kind == views.AuditKind.REFUSED_CHECK}
    assert "check of SELL 1,001 AAA (liquidation-only) refused: OVERSELL, LIQUIDATION_ONLY" in refused
    assert "check of SELL 1 AAA refused: TRADING_HALTED" in refused
    with pytest.raises(AccessDenied, match="may not trade on portfolio main"):
        views.execute_ticket(desk, "main", "AAA", "SELL", 1, "rm-plain", RISK)
    with pytest.raises(AccessDenied, match="may not send liquidation-only orders on portfolio main"):
        views.execute_ticket(desk, "main", "AAA", "SELL", 1, "tr-liq", TRADER, LIQUIDATION)
    for spelled in ("LIQUIDATION", " liquidation", "Liquidation"):  # the gate reads these as liquidation-only too
        assert views.ticket_action(spelled) is Action.LIQUIDATE
        with pytest.raises(AccessDenied, match="may not send liquidation-only orders on portfolio main"):
            views.execute_ticket(desk, "main", "AAA", "SELL", 1, f"tr-{spelled.strip()}", TRADER, spelled)
    assert seeded_store.read_portfolio("main") == book  # a trader got through HALTED with "LIQUIDATION"
    flipped = views.execute_ticket(desk, "main", "AAA", "SELL", 1001, "rm-flip", RISK, LIQUIDATION)
    assert flipped["status"] == "REJECTED" and "LIQUIDATION_ONLY" in {r["code"] for r in flipped["reasons"]}
    assert seeded_store.read_portfolio("main") == book  # refused: the book as it was

    result = views.execute_ticket(desk, "main", "AAA", "SELL", 1000, "rm-flat", RISK, LIQUIDATION)  # exactly flat
    assert result["status"] == "FILLED", result
    assert seeded_store.read_portfolio("main").positions.get("AAA") is None or (
        seeded_store.read_portfolio("main").positions["AAA"].qty == 0
    )
    assert seeded_store.read_trading_state("main").state == "HALTED"  # de-risking does not lift the halt
    latest = views.blotter_frame(desk, "main").iloc[0]
    assert (latest["status"], latest["intent"], latest["actor"], latest["qty"]) == (
        "FILLED", "liquidation", RISK.actor, 1000
    )


# -- local operator mode, Host header, binding --------------------------------------------------------------------


def test_local_mode_says_so_in_the_sidebar_and_acts_as_the_local_operator(
    redis_server: EmbeddedRedis, seeded_store: Store, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("RISKDESK_CONFIG", str(config_file))
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(str(APP), default_timeout=30).run()
    finally:
        st.cache_resource.clear()
    assert not at.exception, [e.value for e in at.exception]
    sidebar = "\n".join(c.value for c in at.sidebar.caption)
    assert "Local operator mode: no login configured; bound to 127.0.0.1" in sidebar
    assert "local\\:" in sidebar  # the actor, Markdown-escaped
    assert not [b for b in at.button if b.key == "login_button"]


@pytest.fixture
def fresh_secrets() -> Iterator[None]:
    """Streamlit's secrets singleton forgets what it parsed before and after the test (it caches a parse)."""
    st.secrets._reset()
    yield
    st.secrets._reset()


def run_app(at_secrets: dict[str, Any] | None = None, user: dict[str, Any] | None = None) -> AppTest:
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(str(APP), default_timeout=30)
        if at_secrets is not None:
            at.secrets.update(at_secrets)
        if user is not None:
            at.user = user  # what st.user holds (the ID token's claims)
        return at.run()
    finally:
        st.cache_resource.clear()


@pytest.mark.usefixtures("fresh_secrets")
@pytest.mark.parametrize(
    ("secrets", "mode"),
    [
        (None, "local"),  # no secrets file: the local operator (make run's default)
        ("[other]\nx = 1\n", "local"),  # a readable file without [auth]
        (to_toml({"auth": AUTH}), "login"),  # login configured: sign in first
        (to_toml({"auth": NAMED}), "login"),  # named providers only: one button each
        (BAD_QUOTE, "refused"),  # the reviewer's file: one stray quote
        ('[auth]\nclient_id = "riskdesk"\n', "refused"),  # an incomplete [auth]
    ],
)
def test_the_dashboard_on_a_broken_secrets_file_refuses_and_grants_no_identity(
    redis_server: EmbeddedRedis,
    seeded_store: Store,
    config_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    secrets: str | None,
    mode: str,
) -> None:
    from dashboard import components as ui

    skip_if_this_checkout_configures_login()
    point_the_dashboard_at(monkeypatch, redis_server.url, config_file, home=tmp_path)
    path = secrets_file(tmp_path, secrets) if secrets is not None else None
    at = run_app()
    assert not at.exception, [e.value for e in at.exception]
    errors = "\n".join(e.value for e in at.error)
    sidebar = "\n".join(c.value for c in at.sidebar.caption)
    login_button = [b.label for b in at.button if b.key.startswith("login_button")]
    if mode == "local":
        assert "Local operator mode" in sidebar and not login_button and not errors
        assert ui.identity() == local_identity()
        return
    assert "Local operator mode" not in sidebar and not at.sidebar.caption
    if mode == "login":
        assert not errors  # nobody signed in: identity() was None
        named = "microsoft" in (secrets or "")
        assert login_button == (["Log in with microsoft", "Log in with okta"] if named else ["Log in"])
        return
    assert not login_button and not at.button  # no widget at all
    assert "the login configuration is broken" in errors and str(path) in errors.replace("\\", "")
    assert ui.identity() is None  # and a callback acting meanwhile is nobody: refused by the views
    with pytest.raises(AccessDenied, match="sign in"):
        authorize(ui.identity(), Action.TRADE, "main")


@pytest.mark.usefixtures("fresh_secrets")
@pytest.mark.parametrize(("auth", "login"), [(AUTH, True), ({"client_id": "riskdesk"}, False)])
def test_the_dashboard_checks_an_auth_section_handed_to_streamlit_without_a_file(
    redis_server: EmbeddedRedis,
    seeded_store: Store,
    config_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    auth: dict[str, str],
    login: bool,
) -> None:
    skip_if_this_checkout_configures_login()
    point_the_dashboard_at(monkeypatch, redis_server.url, config_file, home=tmp_path)  # no secrets file anywhere
    # AppTest.secrets: what st.secrets holds, no file behind it (st.user does not see it: say nobody signed in)
    at = run_app({"auth": auth}, user={"is_logged_in": False})
    assert not at.exception, [e.value for e in at.exception]
    assert not at.sidebar.caption  # never the local operator
    assert bool([b for b in at.button if b.key == "login_button"]) is login
    errors = "\n".join(e.value for e in at.error)
    assert ("the login configuration is broken" in errors) is not login


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:8501", True),
        ("localhost:8501", True),
        ("LOCALHOST", True),
        ("[::1]:8501", True),
        ("desk.internal:8501", True),  # listed in allowed_hosts
        ("evil.example:8501", False),
        ("127.0.0.1.evil.example", False),
        ("desk.internal.evil.example", False),
        ("", False),
        (None, False),
    ],
)
def test_host_allowed(host: str | None, allowed: bool) -> None:
    assert host_allowed(host, "127.0.0.1", ("desk.internal",)) is allowed


def test_host_allowed_admits_the_bound_address_but_not_any_host_for_a_wildcard() -> None:
    assert host_allowed("10.1.2.3:8501", "10.1.2.3")
    assert not host_allowed("10.1.2.4:8501", "10.1.2.3")
    assert not host_allowed("evil.example", "0.0.0.0")


@pytest.mark.parametrize(
    ("address", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
     ("10.0.0.1", False), ("::", False), ("desk.example", False)],
)  # fmt: skip
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def run_launcher(tmp_path: Path, address: str, home: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "riskdesk.toml"
    data = merge(TEST_CONFIG, {"dashboard": {"address": address, "port": 1}, "redis": {"data_dir": str(tmp_path)}})
    config.write_text(to_toml(data))
    env = {**os.environ, "HOME": str(home), "RISKDESK_CONFIG": str(config)}
    env.pop("REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "launcher.py", "start", "--config", str(config)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if done.returncode == 0:  # started after all (the test then fails): stop what it started, by its PID files
        subprocess.run(
            [sys.executable, "launcher.py", "stop", "--config", str(config)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    return done


def test_the_launcher_refuses_a_public_address_without_login_naming_the_setting(tmp_path: Path) -> None:
    skip_if_this_checkout_configures_login()
    done = run_launcher(tmp_path, "0.0.0.0", tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "dashboard.address = '0.0.0.0'" in done.stderr and "[auth]" in done.stderr
    assert not list(tmp_path.glob("run/*.pid")), "nothing may have been started"


def test_login_configured_reads_the_auth_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import launcher

    home, project = tmp_path / "home", tmp_path / "project"
    monkeypatch.setenv("HOME", str(home))
    assert not launcher.login_configured(project)  # no secrets file at all: the local operator mode
    secrets_file(project, "[other]\nx = 1\n")
    assert not launcher.login_configured(project)  # readable, no [auth]: the local operator mode
    secrets_file(project, to_toml({"auth": AUTH}))
    assert launcher.login_configured(project)
    settings = settings_from_dict(merge(TEST_CONFIG, {"dashboard": {"address": "0.0.0.0"}}))
    launcher.check_binding(settings, project)  # login configured: a public address is allowed
    secrets_file(project, "[other]\nx = 1\n")
    secrets_file(home, to_toml({"auth": AUTH}))
    assert launcher.login_configured(project)  # ~/.streamlit/secrets.toml counts too, as for streamlit run


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (BAD_QUOTE, "cannot parse the secrets file"),
        ("[auth\n", "cannot parse the secrets file"),
        ('[auth]\nclient_id = "riskdesk"\n', "lacks redirect_uri, cookie_secret, client_secret, server_metadata_url"),
        ("[auth]\n", "lacks redirect_uri, cookie_secret, client_id, client_secret, server_metadata_url"),
        (to_toml({"auth": {**AUTH, "cookie_secret": " "}}), "lacks cookie_secret"),
        (to_toml({"auth": {**AUTH, "client_secret": 42}}), "lacks client_secret"),
        (to_toml({"auth": {**AUTH, "redirect_uri": "https://riskdesk.desk.test/"}}), "does not end in /oauth2callback"),
        (to_toml({"auth": {**NAMED, "okta": {"client_id": "x"}}}), "provider [auth.okta] that lacks client_secret"),
        (to_toml({"auth": {**NAMED, "client_id": "x"}}), "lacks client_secret, server_metadata_url"),
        (to_toml({"auth": {**NAMED, "my_idp": NAMED["okta"]}}), "[auth.my_idp] with an underscore"),
        (to_toml({"auth": {k: v for k, v in NAMED.items() if k == "redirect_uri"}}), "lacks cookie_secret, client_id"),
        ('auth = "on"\n', "is not a table"),
    ],
)  # fmt: skip
def test_a_broken_secrets_file_is_an_error_naming_the_file_never_the_local_operator(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = secrets_file(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        login_configured([tmp_path / "absent.toml", path])
    assert str(path) in str(err.value) and problem in str(err.value)
    assert "client-secret" not in str(err.value)  # the message never quotes the secrets


def test_named_providers_are_login_and_each_is_offered(tmp_path: Path) -> None:
    assert login_configured([secrets_file(tmp_path, to_toml({"auth": NAMED}))])
    assert access.login_providers(NAMED) == ["microsoft", "okta"]
    assert access.login_providers(AUTH) == [None]
    both = {**AUTH, "okta": NAMED["okta"], "client_kwargs": {"prompt": "login"}}  # client_kwargs: not a provider
    assert access.auth_problem(both) is None and access.login_providers(both) == [None, "okta"]
    explicit = {**NAMED, "default": NAMED["okta"]}  # [auth.default] is the default provider: st.login()
    assert access.login_providers(explicit) == [None, "microsoft", "okta"]


def test_a_secrets_file_that_cannot_be_read_is_an_error(tmp_path: Path) -> None:
    undecodable = tmp_path / "latin1.toml"
    undecodable.write_bytes(b'[auth]\nclient_id = "caf\xe9"\n')
    directory = tmp_path / "dir.toml"
    directory.mkdir()  # read_text fails with an OSError (IsADirectoryError), as an unreadable file would
    for path in (undecodable, directory):
        with pytest.raises(ConfigError, match=f"cannot read the secrets file {path}"):
            login_configured([path])
    with pytest.raises(ConfigError, match="not a .toml file"):
        login_configured([tmp_path])  # a secrets directory: not read here, so not taken as "no login"


def test_a_broken_file_refuses_even_when_another_configures_login(tmp_path: Path) -> None:
    good = secrets_file(tmp_path / "home", to_toml({"auth": AUTH}))
    broken = secrets_file(tmp_path / "project", "[other\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        login_configured([good, broken])
    incomplete = secrets_file(tmp_path / "project", '[auth]\nclient_id = "x"\n')  # replaces the home [auth]
    with pytest.raises(ConfigError, match=f"{incomplete}.*lacks"):
        login_configured([good, incomplete])


def test_the_launcher_refuses_to_start_on_a_broken_secrets_file_naming_it(tmp_path: Path) -> None:
    skip_if_this_checkout_configures_login()
    home = tmp_path / "home"
    path = secrets_file(home, BAD_QUOTE)
    done = run_launcher(tmp_path, "127.0.0.1", home)  # loopback: refused all the same
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error [CONFIG_INVALID]: cannot parse the secrets file" in done.stderr and str(path) in done.stderr
    assert "client-secret" not in done.stderr + done.stdout
    assert not list(tmp_path.rglob("*.pid")), "nothing may have been started, Redis included"


@pytest.mark.parametrize(
    ("address", "login", "refused"),
    [
        ("127.0.0.1", False, False),
        ("localhost", False, False),
        ("::1", False, False),
        ("0.0.0.0", False, True),
        ("", False, True),  # Streamlit's default: every interface
        (None, False, True),
        ("10.1.2.3", False, True),
        ("0.0.0.0", True, False),  # with login configured, any address
    ],
)
def test_without_login_only_the_loopback_interface_is_served(address: str | None, login: bool, refused: bool) -> None:
    problem = access.exposure_problem(address, login)
    assert (problem is not None) == refused
    if refused:
        assert "server.address" in problem and "[auth]" in problem  # type: ignore[operator]


@pytest.mark.usefixtures("fresh_secrets")
@pytest.mark.parametrize(("email_verified", "admin"), [(True, True), (False, False), (ABSENT, True)])
def test_the_dashboard_grants_no_role_on_an_unverified_email(
    redis_server: EmbeddedRedis,
    seeded_store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    email_verified: Any,
    admin: bool,
) -> None:
    skip_if_this_checkout_configures_login()
    config = tmp_path / "riskdesk.toml"
    config.write_text(to_toml(merge(TEST_CONFIG, {"access": {"users": {"alice@desk.test": {"roles": ["admin"]}}}})))
    point_the_dashboard_at(monkeypatch, redis_server.url, config, home=tmp_path)
    secrets_file(tmp_path, to_toml({"auth": AUTH}))
    user = {"is_logged_in": True, "iss": ISSUER, "sub": "mallory-1", "email": "alice@desk.test"}
    user.update(iat=int(time.time()), exp=int(time.time()) + 3600)  # a sign-in that lasts (ID tokens carry both)
    if email_verified is not ABSENT:
        user["email_verified"] = email_verified
    at = run_app(user=user)
    assert not at.exception, [e.value for e in at.exception]
    errors = "\n".join(e.value for e in at.error)
    sidebar = "\n".join(c.value for c in at.sidebar.caption)
    if admin:
        assert "Signed in as" in sidebar and "admin" in sidebar and "no role is granted" not in errors
    else:
        assert "no role is granted" in errors and not sidebar
