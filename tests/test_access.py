"""Who may do what (issue 13): the role matrix of :func:`logic.access.authorize` at its boundaries, identities
from the identity provider's claims and ``[access]``, every state-changing view refusing a role before it
touches the store (byte-for-byte unchanged), the audit actor being the identity's, the local operator mode in
the sidebar, the Host-header check and the launcher refusing a public address without login."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from engine.errors import AccessDenied, ConfigError
from engine.records import Action, Role
from engine.redis_server import EmbeddedRedis
from engine.settings import AccessConfig, Settings, settings_from_dict
from engine.store import GLOBAL_AUDIT_KEY, PortfolioKeys, Store
from logic import access, views
from logic.access import (
    ROLE_ACTIONS,
    Identity,
    authorize,
    host_allowed,
    identity_from_claims,
    is_loopback,
    local_identity,
)
from logic.alerts import build_alert_engine
from logic.monitor import Monitor

from .conftest import TEST_CONFIG, merge, store_contents, to_toml

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "dashboard" / "app.py"
ISSUER = "https://idp.desk.test"


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
        Action.ACKNOWLEDGE,
        Action.RESOLVE,
        Action.TRADING_STATE,
        Action.FIRM_SWITCH,
        Action.EDIT_RULES,
        Action.EDIT_LIMITS,
    },
    Role.ADMIN: set(Action),
}


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


def test_a_custom_groups_claim_is_read() -> None:
    access = access_settings({"groups_claim": "roles", "groups": {"desk-admins": {"roles": ["admin"]}}})
    admin = identity_from_claims(access, {"iss": ISSUER, "sub": "x", "roles": ["desk-admins"], "groups": []})
    assert admin.roles == frozenset({Role.ADMIN})


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


RULE = {"id": "lev", "metric": "leverage", "op": ">", "threshold": 2.5, "severity": "HIGH"}


def state_changes(desk: views.Desk, identity: Identity, pid: str) -> list[tuple[str, Any]]:
    return [
        ("trade", lambda: views.execute_ticket(desk, pid, "AAA", "BUY", 10, "acc-1", identity)),
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
    return subprocess.run(
        [sys.executable, "launcher.py", "start", "--config", str(config)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_the_launcher_refuses_a_public_address_without_login_naming_the_setting(tmp_path: Path) -> None:
    if (ROOT / ".streamlit" / "secrets.toml").exists():
        pytest.skip("this checkout configures login in .streamlit/secrets.toml")
    done = run_launcher(tmp_path, "0.0.0.0", tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "dashboard.address = '0.0.0.0'" in done.stderr and "[auth]" in done.stderr
    assert not list(tmp_path.glob("run/*.pid")), "nothing may have been started"


def test_login_configured_reads_the_auth_section(tmp_path: Path) -> None:
    import launcher

    assert not launcher.login_configured(tmp_path) or (Path.home() / launcher.SECRETS_FILE).exists()
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / launcher.SECRETS_FILE).write_text("[other]\nx = 1\n")
    assert not launcher.login_configured(tmp_path) or (Path.home() / launcher.SECRETS_FILE).exists()
    (tmp_path / launcher.SECRETS_FILE).write_text('[auth]\nclient_id = "x"\n')
    assert launcher.login_configured(tmp_path)
    settings = settings_from_dict(merge(TEST_CONFIG, {"dashboard": {"address": "0.0.0.0"}}))
    launcher.check_binding(settings, tmp_path)  # login configured: a public address is allowed


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

