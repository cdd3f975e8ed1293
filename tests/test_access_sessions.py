"""Where a sign-in ends and what it may do on its next interaction: roles follow ``[access]`` as the settings file
says it now (revoking or downgrading a login needs no dashboard restart), a sign-in ends
``access.max_session_seconds`` after its ID token's ``iat`` (boundaries with an injected clock; the token's ``exp``
is the login library's check at sign-in, never renewed by Streamlit), and warmup.py
records the OS account that ran it as the actor of its book syncs, capital flows, limit syncs and resets."""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import warmup
from engine.errors import AccessDenied, ConfigError
from engine.records import Action, Role, TradingState
from engine.redis_server import EmbeddedRedis
from engine.settings import AccessConfig, settings_from_dict
from engine.store import GLOBAL_AUDIT_KEY, PortfolioKeys, Store
from logic.access import authorize, identity_from_claims, session_problem

from .conftest import TEST_CONFIG, merge, to_toml

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
T0 = 1_800_000_000  # the token's iat: a fixed instant, so every boundary is exact
TWELVE_HOURS = 12 * 3600
THIRTY_DAYS = 30 * 86_400


def access_settings(access: dict[str, Any]) -> AccessConfig:
    return settings_from_dict(merge(TEST_CONFIG, {"access": access})).access


ADMIN_ALICE = {"users": {"alice@desk.test": {"roles": ["admin"], "portfolios": ["*"]}}}


def claims(iat: Any = T0, exp: Any = T0 + THIRTY_DAYS, **more: Any) -> dict[str, Any]:
    out = {"iss": ISSUER, "sub": "alice-1", "email": "alice@desk.test", **more}
    for name, value in (("iat", iat), ("exp", exp)):
        if value is not None:
            out[name] = value
    return out


def at(now: float) -> Any:
    return lambda: now


# -- the settings ------------------------------------------------------------------------------------------------


def test_the_maximum_session_is_twelve_hours_by_default() -> None:
    assert access_settings({}).max_session_seconds == TWELVE_HOURS == 43_200


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (60, True),  # one minute: the shortest
        (59, False),
        (THIRTY_DAYS, True),  # Streamlit's login cookie lasts 30 days: the longest that means anything
        (THIRTY_DAYS + 1, False),
        (0, False),
        (-1, False),
        (3600.0, False),  # whole seconds only
        ("3600", False),
        (True, False),
    ],
)
def test_the_maximum_session_is_bounds_checked(value: Any, valid: bool) -> None:
    if valid:
        assert access_settings({"max_session_seconds": value}).max_session_seconds == value
    else:
        with pytest.raises(ConfigError, match="max_session_seconds"):
            access_settings({"max_session_seconds": value})


# -- exp and iat at their boundaries -------------------------------------------------------------------------------


def test_a_sign_in_outlives_its_tokens_exp_up_to_the_desks_maximum_session() -> None:
    """Streamlit never renews the ID token: a one-hour token's ``exp`` must not sign a trader out an hour into
    the day; the desk's maximum session (12 h by default) ends it."""
    access = access_settings(ADMIN_ALICE)
    token = claims(iat=T0, exp=T0 + 3600)  # an ID token of one hour, as most providers issue
    for now in (T0 + 3599, T0 + 3600, T0 + 3601, T0 + TWELVE_HOURS):  # around exp, and exactly the maximum age
        assert identity_from_claims(access, token, clock=at(now)).roles == frozenset({Role.ADMIN})
    with pytest.raises(AccessDenied, match="maximum session") as refused:
        identity_from_claims(access, token, clock=at(T0 + TWELVE_HOURS + 1))
    assert "sign in again" in refused.value.fix
    assert session_problem(token, TWELVE_HOURS, T0 + TWELVE_HOURS) is None
    over = (
        "your sign-in of 2027-01-15 08:00:00 UTC is older than the desk's maximum session of 43200 s "
        "(access.max_session_seconds)"
    )  # T0, as `date -u -d @1800000000` says
    assert session_problem(token, TWELVE_HOURS, T0 + TWELVE_HOURS + 1) == over


@pytest.mark.parametrize("max_age", [TWELVE_HOURS, 3600, 60])
def test_a_sign_in_lasts_exactly_the_maximum_session_and_not_a_second_more(max_age: int) -> None:
    access = access_settings({**ADMIN_ALICE, "max_session_seconds": max_age})
    token = claims(iat=T0, exp=T0 + THIRTY_DAYS)  # a provider whose tokens outlive the desk's maximum
    assert identity_from_claims(access, token, clock=at(T0 + max_age)).roles == frozenset({Role.ADMIN})
    with pytest.raises(AccessDenied, match="maximum session") as refused:
        identity_from_claims(access, token, clock=at(T0 + max_age + 1))
    assert f"{max_age} s" in refused.value.detail and "access.max_session_seconds" in refused.value.detail


def test_the_reviewers_case_a_token_expired_thirty_days_ago_on_the_wall_clock() -> None:
    access = access_settings(ADMIN_ALICE)
    now = time.time()
    with pytest.raises(AccessDenied, match="maximum session"):
        identity_from_claims(access, claims(iat=now - 31 * 86_400, exp=now - THIRTY_DAYS))  # default clock: wall
    assert identity_from_claims(access, claims(iat=now - 60, exp=now + 3600)).roles == frozenset({Role.ADMIN})


@pytest.mark.parametrize(
    ("token", "what"),
    [
        (claims(iat=None), "issue time"),  # no iat: the session's age is unknown
        (claims(iat=True), "issue time"),  # a bool is not a NumericDate
        (claims(iat=str(T0)), "issue time"),  # nor a string
        (claims(iat=float("inf")), "issue time"),
        (claims(iat=float("nan")), "issue time"),
    ],
)
def test_a_token_without_a_valid_iat_is_no_identity(token: dict[str, Any], what: str) -> None:
    with pytest.raises(AccessDenied, match=what):
        identity_from_claims(access_settings(ADMIN_ALICE), token, clock=at(T0 + 1))


def test_an_ended_sign_in_is_refused_before_any_grant_is_looked_at() -> None:
    ended = claims(iat=T0, exp=T0 + 10)
    for grants in (ADMIN_ALICE, {}):  # granted or not: an ended sign-in is no identity, not a role-less one
        with pytest.raises(AccessDenied, match="maximum session"):
            identity_from_claims(access_settings(grants), ended, clock=at(T0 + TWELVE_HOURS + 1))
    assert identity_from_claims(access_settings({}), ended, clock=at(T0 + TWELVE_HOURS)).roles == frozenset()
    with pytest.raises(AccessDenied, match="sign in"):  # and nothing may act without an identity
        authorize(None, Action.FIRM_SWITCH)


# -- the dashboard: roles from [access] as it is now ---------------------------------------------------------------


@pytest.fixture
def dashboard(
    redis_server: EmbeddedRedis, seeded_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A dashboard with login configured (secrets under a private HOME), reading the returned settings file."""
    if (ROOT / ".streamlit" / "secrets.toml").exists():
        pytest.skip("this checkout configures login in .streamlit/secrets.toml")
    config = tmp_path / "riskdesk.toml"
    config.write_text(to_toml(merge(TEST_CONFIG, {"access": ADMIN_ALICE})))
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text(to_toml({"auth": AUTH}))
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("RISKDESK_CONFIG", str(config))
    monkeypatch.setenv("HOME", str(tmp_path))
    st.secrets._reset()
    st.cache_resource.clear()
    try:
        yield config
    finally:
        st.cache_resource.clear()
        st.secrets._reset()


def signed_in(user: dict[str, Any]) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=30)
    at.user = {"is_logged_in": True, **user}
    return at


def fresh(**more: Any) -> dict[str, Any]:
    now = int(time.time())
    return claims(iat=now - 60, exp=now + 3600, **more)


def shown(at: AppTest) -> tuple[str, str]:
    assert not at.exception, [e.value for e in at.exception]
    return "\n".join(c.value for c in at.sidebar.caption), "\n".join(e.value for e in at.error)


def rewrite_keeping_mtime(config: Path, data: dict[str, Any]) -> None:
    """Write ``data`` and put the old modification time back: a change the mtime alone would not show."""
    before = config.stat()
    config.write_text(to_toml(data))
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_a_login_removed_from_access_loses_its_role_on_the_next_run_without_a_restart(
    dashboard: Path, keep_mtime: bool
) -> None:
    at = signed_in(fresh())
    sidebar, errors = shown(at.run())
    assert "Signed in as" in sidebar and "admin" in sidebar and not errors
    revoked = merge(TEST_CONFIG, {"access": {"users": {"bob@desk.test": {"roles": ["admin"]}}}})
    if keep_mtime:
        rewrite_keeping_mtime(dashboard, revoked)
    else:
        dashboard.write_text(to_toml(revoked))
    sidebar, errors = shown(at.run())  # the same session, the same process: the user's next interaction
    assert "no role is granted" in errors and not sidebar


def test_a_downgraded_admin_is_refused_an_admin_action_from_a_page_drawn_while_admin(
    dashboard: Path, seeded_store: Store
) -> None:
    at = signed_in(fresh())
    at.switch_page("screens/firm.py").run()
    sidebar, errors = shown(at)
    assert "(admin)" in sidebar and not errors
    at.text_input(key="firm_reason").input("drill")
    at.button(key="firm_HALT ALL").click().run()
    assert at.button(key="firm_confirm")  # the admin was asked to confirm ...
    viewer = {"users": {"alice@desk.test": {"roles": ["viewer"]}}}
    dashboard.write_text(to_toml(merge(TEST_CONFIG, {"access": viewer})))  # ... and is downgraded meanwhile
    before = {pid: seeded_store.client.dump(PortfolioKeys(pid).trading_state) for pid in ("main", "hedge")}
    firm_audit = seeded_store.client.xlen(GLOBAL_AUDIT_KEY)
    at.button(key="firm_confirm").click().run()  # the button drawn while admin: its callback runs as viewer
    sidebar, _ = shown(at)
    assert "(viewer)" in sidebar
    result = at.session_state["firm_result"]
    assert result["ok"] is False and "may not HALT ALL / REDUCE ALL" in result["problem"].detail
    after = {pid: seeded_store.client.dump(PortfolioKeys(pid).trading_state) for pid in ("main", "hedge")}
    assert after == before  # byte for byte: nothing halted
    assert seeded_store.read_trading_state("main").state == TradingState.ACTIVE
    assert seeded_store.client.xlen(GLOBAL_AUDIT_KEY) == firm_audit
    infos = "\n".join(i.value for i in at.info)
    assert "Your role does not allow you to HALT ALL / REDUCE ALL" in infos
    assert "firm_confirm" not in [b.key for b in at.button]  # and nothing to confirm any more


def test_a_role_granted_while_running_takes_effect_on_the_next_run(dashboard: Path) -> None:
    dashboard.write_text(to_toml(TEST_CONFIG))  # alice has no grant yet
    at = signed_in(fresh())
    _, errors = shown(at.run())
    assert "no role is granted" in errors
    risk = {"groups": {"risk": {"roles": ["risk_manager"]}}}
    dashboard.write_text(to_toml(merge(TEST_CONFIG, {"access": risk})))
    at.user = {"is_logged_in": True, **fresh(groups=["risk"])}
    sidebar, errors = shown(at.run())
    assert "(risk\\_manager)" in sidebar and not errors  # the role, Markdown-escaped


def test_a_settings_file_broken_while_running_refuses_every_signed_in_user_until_fixed(dashboard: Path) -> None:
    good = dashboard.read_text()
    at = signed_in(fresh())
    assert "(admin)" in shown(at.run())[0]
    dashboard.write_text(good.replace("access = {", "acess = {", 1))  # a typo while editing [access]
    sidebar, errors = shown(at.run())
    assert "Refused" in errors and "acess" in errors and not sidebar  # fail closed: nobody may act
    dashboard.write_text(good)
    sidebar, errors = shown(at.run())
    assert "(admin)" in sidebar and not errors


@pytest.mark.parametrize(
    ("iat_ago", "exp_in", "max_session", "refused"),
    [
        (31 * 86_400, -30 * 86_400, None, "maximum session"),  # the reviewer's token: expired 30 days ago
        (60, -3000, None, None),  # a one-hour token past its exp, signed in an hour ago: still signed in
        (13 * 3600, 86_400, None, "maximum session"),  # a day-long token, signed in 13 h ago: over the 12 h
        (3 * 3600, 86_400, 7200, "maximum session"),  # the desk's own maximum of 2 h
        (60, 3600, None, None),  # a fresh sign-in
    ],
)
def test_the_dashboard_asks_an_ended_sign_in_to_sign_in_again(
    dashboard: Path, iat_ago: int, exp_in: int, max_session: int | None, refused: str | None
) -> None:
    if max_session is not None:
        dashboard.write_text(
            to_toml(merge(TEST_CONFIG, {"access": {**ADMIN_ALICE, "max_session_seconds": max_session}}))
        )
    now = int(time.time())
    at = signed_in(claims(iat=now - iat_ago, exp=now + exp_in)).run()
    sidebar, errors = shown(at)
    if refused is None:
        assert "(admin)" in sidebar and not errors
        return
    assert refused in errors and "sign in again" in errors and not sidebar
    assert [b.label for b in at.button] == ["Log in", "Log out"]  # and nothing else of the dashboard


# -- warmup.py: the OS account that ran it ---------------------------------------------------------------------


def test_warmup_records_the_os_account_that_ran_it_for_syncs_capital_flows_limits_and_resets(
    redis_server: EmbeddedRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = "warmup:local:" + pwd.getpwuid(os.getuid()).pw_name  # the password database, not $USER
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("USER", "someone-else")
    monkeypatch.setenv("LOGNAME", "someone-else")
    config = tmp_path / "riskdesk.toml"
    config.write_text(to_toml(TEST_CONFIG))
    assert warmup.main(["--config", str(config)]) == 0
    book = tmp_path / "book.csv"
    book.write_text("portfolio_id,ticker,qty,avg_price,account_type,cash\nmain,AAA,500,100,,\nmain,,,,cash,900000.00\n")
    store = Store(warmup.connect(warmup.load_settings(str(config))))
    try:
        live = warmup.load_settings(str(config)).limits_for("main")  # a live limit, as the Limits page stores it
        store.change_limits("main", {"max_order_qty": 10}, actor="alice", reason="live", now=time.time(), fallback=live)
        config.write_text(to_toml(merge(TEST_CONFIG, {"limits": {"max_order_qty": 50}})))
        assert warmup.main(["--config", str(config), "--sync", "--positions", str(book)]) == 0
        trail = store.read_audit_trail(["main"], 100).portfolios["main"]["audit"]
        by_action = {r["action"]: r for r in trail}
        flow = by_action["capital_flow"]  # the $250k withdrawal: cash -100k, AAA -500 @ 100, BBB -2000 @ 50
        assert flow["actor"] == expected
        assert {r["actor"] for r in trail if r["action"] == "sync"} == {expected}
        assert store.limits_changes("main")[0]["actor"] == expected
        assert warmup.main(["--config", str(config), "--reset", "--yes"]) == 0
        resets = [r for r in store.read_audit_trail([], 100).global_records if r.get("action") == "reset"]
        assert [r["actor"] for r in resets] == [expected]
    finally:
        store.client.close()
