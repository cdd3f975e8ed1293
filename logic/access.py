"""Who may do what: the signed-in :class:`Identity`, its roles from ``[access]``, and :func:`authorize`.

Roles (:class:`~engine.records.Role`)::

    viewer        read every page, change nothing
    trader        trade the portfolios listed for them, acknowledge alerts of those portfolios
    risk_manager  trading states (HALT, REDUCE, ACTIVE) and HALT ALL / REDUCE ALL, rules, limits, acknowledge,
                  resolve, liquidation-only orders (any portfolio: they may only shrink a position, and pass
                  HALTED); no other trading
    admin         everything, on every portfolio, and the user mapping

Every state-changing function of :mod:`logic.views` takes an :class:`Identity`, calls :func:`authorize` before
it calls the engine and records :attr:`Identity.actor` (``issuer|subject``, never a typed name) as the actor.
A sign-in lasts at most ``access.max_session_seconds`` from its ID token's ``iat`` (:func:`session_problem`;
the token's ``exp`` is checked at sign-in); the roles come from ``[access]`` as it is at each use (the dashboard
re-reads it).
With no identity provider configured the dashboard runs as :func:`local_identity`: the operator at the machine,
with every role, bound to the loopback interface only. Whether one is configured is :func:`login_configured`, and
it fails closed: a secrets file that cannot be read or parsed, or an incomplete ``[auth]`` section, is a
:class:`~engine.errors.ConfigError`, never the local operator mode. No Streamlit, no Redis; the only I/O is
reading the secrets files in :func:`login_configured` and the process's OS account in :func:`local_identity`.
"""

from __future__ import annotations

import math
import os
import pwd
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.errors import AccessDenied, ConfigError
from engine.network import LOOPBACK_NAMES, is_loopback
from engine.records import Action, Clock, Role
from engine.settings import AccessConfig

ALL_PORTFOLIOS = "*"

ROLE_ACTIONS: Mapping[Role, frozenset[Action]] = {
    Role.VIEWER: frozenset(),
    Role.TRADER: frozenset({Action.TRADE, Action.ACKNOWLEDGE}),
    Role.RISK_MANAGER: frozenset(
        {
            Action.LIQUIDATE,
            Action.ACKNOWLEDGE,
            Action.RESOLVE,
            Action.TRADING_STATE,
            Action.FIRM_SWITCH,
            Action.EDIT_RULES,
            Action.EDIT_LIMITS,
        }
    ),
    Role.ADMIN: frozenset(Action),
}
"""The actions each role allows; a trader's are limited to their portfolios (:data:`PORTFOLIO_SCOPED`)."""

PORTFOLIO_SCOPED: Mapping[Role, frozenset[Action]] = {Role.TRADER: frozenset({Action.TRADE, Action.ACKNOWLEDGE})}
"""Actions a role may take only on the portfolios listed for the user (``"*"``: all)."""

ACTION_LABELS: Mapping[Action, str] = {
    Action.TRADE: "trade",
    Action.LIQUIDATE: "send liquidation-only orders",
    Action.ACKNOWLEDGE: "acknowledge alerts",
    Action.RESOLVE: "resolve alerts",
    Action.TRADING_STATE: "change a trading state",
    Action.FIRM_SWITCH: "HALT ALL / REDUCE ALL",
    Action.EDIT_RULES: "change alert rules",
    Action.EDIT_LIMITS: "change limits",
    Action.MANAGE_USERS: "manage users",
}


SECRETS_FILE = ".streamlit/secrets.toml"
"""Where Streamlit reads the ``[auth]`` (OpenID Connect login) section: under the user's home and the project."""
SHARED_AUTH_KEYS = ("redirect_uri", "cookie_secret")
"""What every ``[auth]`` section needs, each a non-empty string."""
PROVIDER_KEYS = ("client_id", "client_secret", "server_metadata_url")
"""What a provider needs, each a non-empty string: in ``[auth]`` itself (Streamlit's default provider) or in an
``[auth.<name>]`` table of its own (a named provider, ``st.login("<name>")``)."""
AUTH_KEYS = SHARED_AUTH_KEYS + PROVIDER_KEYS
"""What an ``[auth]`` section with the default provider needs."""
NOT_A_PROVIDER = frozenset({"client_kwargs"})
"""Tables of ``[auth]`` that are not named providers (the default provider's ``client_kwargs``)."""
LOGIN_FIX = (
    f'correct {SECRETS_FILE} (an [auth] section needs {", ".join(AUTH_KEYS)}, or {", ".join(SHARED_AUTH_KEYS)} and '
    f'an [auth.<provider>] section with {", ".join(PROVIDER_KEYS)}; README, "Login and roles"), or remove the '
    "file (or its [auth] section) for the local operator mode"
)


@dataclass(frozen=True)
class Identity:
    """Who is acting: the identity provider's ``issuer`` and ``subject`` (stable), the e-mail and name shown,
    the roles and the portfolios a trader may trade (``"*"``: all). ``local`` marks the local operator."""

    issuer: str
    subject: str
    email: str = ""
    name: str = ""
    roles: frozenset[Role] = frozenset()
    portfolios: frozenset[str] = frozenset()
    local: bool = False

    @property
    def actor(self) -> str:
        """What the audit trail records: ``issuer|subject``, or ``local:<os user>`` for the local operator."""
        if self.local:
            return f"local:{self.subject}"
        return f"{self.issuer}|{self.subject}"

    @property
    def label(self) -> str:
        """What a page shows: the e-mail (or name, or subject) and the roles."""
        who = self.email or self.name or self.subject
        roles = ", ".join(sorted(self.roles)) or "no role"
        return f"{who} ({roles})"

    def can(self, action: Action, portfolio_id: str | None = None) -> bool:
        """Whether :func:`authorize` would allow ``action`` (on ``portfolio_id``); for hiding what is refused."""
        try:
            authorize(self, action, portfolio_id)
        except AccessDenied:
            return False
        return True


def authorize(identity: Identity | None, action: Action, portfolio_id: str | None = None) -> Identity:
    """Raise :class:`~engine.errors.AccessDenied` unless one of ``identity``'s roles allows ``action`` (on
    ``portfolio_id``, for the actions a trader may take only on their portfolios); nobody signed in (None) is
    refused. Returns the identity. Call it before the engine."""
    if identity is None:
        raise AccessDenied(f"sign in to {ACTION_LABELS.get(action, action)}")
    action = Action(action)
    for role in identity.roles:
        if action not in ROLE_ACTIONS.get(role, frozenset()):
            continue
        if action not in PORTFOLIO_SCOPED.get(role, frozenset()):
            return identity
        if portfolio_id is not None and (ALL_PORTFOLIOS in identity.portfolios or portfolio_id in identity.portfolios):
            return identity
    where = f" on portfolio {portfolio_id}" if portfolio_id is not None else ""
    raise AccessDenied(
        f"{identity.email or identity.name or identity.subject} may not {ACTION_LABELS.get(action, action)}{where}"
        f" (roles: {', '.join(sorted(identity.roles)) or 'none'})"
    )


SIGN_IN_AGAIN = "sign in again (log out, then log in with the desk's identity provider)"
"""The fix of a sign-in that is over (:func:`session_problem`)."""


def session_problem(claims: Mapping[str, Any], max_session_seconds: float, now: float) -> str | None:
    """Why the sign-in behind ``claims`` (the ID token's, as ``st.user`` holds them) is over at ``now`` (wall
    clock, Unix seconds), or None while it lasts.

    Streamlit's login cookie lasts 30 days and keeps the claims of the ID token it was made from, never renewed:
    without this check a stolen or forgotten session would act for a month. The sign-in lasts at most
    ``max_session_seconds`` (``access.max_session_seconds``, default 12 h: a trading day) after the token's
    ``iat`` (at exactly that age it still lasts; one second more and it is over). A token without a numeric
    ``iat`` (required of every OpenID Connect ID token) ends it too: fail closed, a sign-in of unknown age gets
    no time. The token's ``exp`` is checked when the user signs in (the login library validates it), not after:
    Streamlit never renews the token, so ending the session at ``exp`` would sign every user out after the
    provider's token lifetime (often one hour) in the middle of a trading day, whatever the desk's maximum; a
    revoked login loses its role at once anyway (``[access]`` is read on every interaction)."""
    iat = _numeric_date(claims.get("iat"))
    if iat is None:
        return "your sign-in has no valid issue time (the ID token's iat claim)"
    if now - iat > max_session_seconds:
        return (
            f"your sign-in of {_utc(iat)} is older than the desk's maximum session of {max_session_seconds:g} s "
            "(access.max_session_seconds)"
        )
    return None


def _numeric_date(value: Any) -> float | None:
    """A JWT NumericDate (a finite JSON number of seconds), or None for anything else (a bool, a string)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def identity_from_claims(access: AccessConfig, claims: Mapping[str, Any], clock: Clock = time.time) -> Identity:
    """The :class:`Identity` of a signed-in user from the identity provider's claims (``iss``, ``sub``, ``email``,
    ``email_verified``, ``name`` and the ``access.groups_claim``): the union of the grants of their e-mail
    (case-insensitive) and of each of their groups. A user matching no grant gets no role.

    A sign-in that is over at ``clock()`` (the wall clock, never a replay's market clock) is no identity: it is
    older than ``access.max_session_seconds`` (:func:`session_problem`); that raises
    :class:`~engine.errors.AccessDenied` with the fix to sign in again, before any grant is looked at.

    The e-mail maps roles only when the provider vouches for it: a token whose ``email_verified`` is present and
    not true (``false``, ``"false"``, null, ...) gets no grant by e-mail (anyone could set an admin's address on an
    account of their own), only by group; the e-mail is still shown. A token without ``email_verified`` is taken
    as it comes: some providers (Entra ID) never send the claim, so there the provider must only issue e-mails it
    controls. The groups claim is a list of group names, as OpenID Connect providers send it; a single string is
    one group name, never split (``"not risk-managers"`` is not the group ``risk-managers``)."""
    issuer, subject = str(claims.get("iss") or ""), str(claims.get("sub") or "")
    if not issuer or not subject:
        raise AccessDenied("the identity provider's token has no issuer or subject")
    problem = session_problem(claims, access.max_session_seconds, clock())
    if problem is not None:
        raise AccessDenied(problem, fix=SIGN_IN_AGAIN)
    email = str(claims.get("email") or "").strip()
    grants = []
    users = {k.strip().lower(): v for k, v in access.users.items()}
    if email and _email_trusted(claims) and email.lower() in users:
        grants.append(users[email.lower()])
    for group in _groups(claims.get(access.groups_claim)):
        if group in access.groups:
            grants.append(access.groups[group])
    return Identity(
        issuer=issuer,
        subject=subject,
        email=email,
        name=str(claims.get("name") or ""),
        roles=frozenset(r for g in grants for r in g.roles),
        # a grant's portfolios scope that grant's trader role only: a viewer's or a risk manager's grant listing
        # portfolios never lets the trader role of another grant trade them
        portfolios=frozenset(p for g in grants if Role.TRADER in g.roles for p in g.portfolios),
    )


def _email_trusted(claims: Mapping[str, Any]) -> bool:
    """Whether the e-mail may map roles: no ``email_verified`` claim (see :func:`identity_from_claims`), or one
    that is true (``true``, or the string ``"true"`` some providers send); null, false or anything else is not."""
    if "email_verified" not in claims:
        return True
    verified = claims["email_verified"]
    if isinstance(verified, str):
        return verified.strip().lower() == "true"
    return verified is True


def _groups(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list | tuple | set | frozenset):
        return [str(v) for v in value]
    return []


def local_identity(user: str | None = None) -> Identity:
    """The local operator (no identity provider configured): every role, every portfolio; the actor is
    ``local:<os user>``, the account this process runs as (from the password database, not ``$USER`` or
    ``$LOGNAME``, which whoever starts the process can set to any name)."""
    if user is None:
        user = os_user()
    return Identity(
        issuer="local",
        subject=user,
        name=user,
        roles=frozenset(Role),
        portfolios=frozenset({ALL_PORTFOLIOS}),
        local=True,
    )


def os_user() -> str:
    """The name of the OS account this process runs as; its numeric uid when the account has no entry in the
    password database (a container's arbitrary uid)."""
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# -- is login configured? --------------------------------------------------------------------------------------


def login_configured(secrets_files: Iterable[str | os.PathLike[str]]) -> bool:
    """Whether Streamlit's OpenID Connect login is configured in ``secrets_files`` (the ``secrets.toml`` files
    ``streamlit run`` reads, in its order: a later file's top-level tables replace an earlier one's).

    False only when login is genuinely absent: no file exists, or none has an ``[auth]`` section; that is the
    local operator mode. True when the ``[auth]`` section in effect is complete (:func:`auth_problem`). Raises
    :class:`~engine.errors.ConfigError`, naming the file and the problem, when a file exists but cannot be read
    or parsed (it may hold the ``[auth]`` section), when the ``[auth]`` section is incomplete or invalid, or
    when an entry is not a ``.toml`` file (a secrets directory, which this check does not read): a broken login
    configuration must not turn every visitor into the local operator with every role."""
    auth: Any = None
    auth_file = ""
    for entry in secrets_files:
        path = Path(entry)
        if path.suffix != ".toml":
            raise ConfigError(
                f"secrets path {path} is not a .toml file: Riskdesk reads the login configuration from "
                "secrets.toml files only",
                fix=LOGIN_FIX,
            )
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the secrets file {path}: {exc}", fix=LOGIN_FIX) from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"cannot parse the secrets file {path}: {exc}", fix=LOGIN_FIX) from exc
        if "auth" in data:
            auth, auth_file = data["auth"], str(path)
    if auth is None:
        return False
    problem = auth_problem(auth)
    if problem is not None:
        raise ConfigError(f"the [auth] section of {auth_file} {problem}", fix=LOGIN_FIX)
    return True


def auth_problem(auth: Any) -> str | None:
    """What is wrong with an ``[auth]`` section, or None when ``st.login`` can use it: a table with each of
    :data:`SHARED_AUTH_KEYS` a non-empty string, ``redirect_uri`` ending in ``/oauth2callback``, and at least one
    provider (:func:`login_providers`), each complete (:data:`PROVIDER_KEYS`): the default one when any of its
    keys is in ``[auth]`` itself, and every ``[auth.<name>]`` table."""
    if not isinstance(auth, Mapping):
        return f"is not a table (auth = {type(auth).__name__})"
    named = _named_providers(auth)
    missing = _missing(auth, SHARED_AUTH_KEYS)
    if not named or any(key in auth for key in PROVIDER_KEYS):  # the default provider, complete or not at all
        missing += _missing(auth, PROVIDER_KEYS)
    if missing:
        return f"lacks {', '.join(missing)} (each a non-empty string)"
    for name, table in named.items():
        if "_" in name:
            return f"names a provider [auth.{name}] with an underscore, which Streamlit's login refuses"
        lacking = _missing(table, PROVIDER_KEYS)
        if lacking:
            return f"has a provider [auth.{name}] that lacks {', '.join(lacking)} (each a non-empty string)"
    if not str(auth["redirect_uri"]).rstrip().endswith("/oauth2callback"):
        return "has a redirect_uri that does not end in /oauth2callback"
    return None


def login_providers(auth: Any) -> list[str | None]:
    """The providers a complete ``[auth]`` section (:func:`auth_problem` None) offers, in order: None for the
    default one (``st.login()``: its keys in ``[auth]`` itself, or an ``[auth.default]`` table), then the name of
    each other ``[auth.<name>]`` table (``st.login("<name>")``)."""
    if not isinstance(auth, Mapping):
        return []
    named = [name for name in _named_providers(auth) if name != "default"]
    default = "default" in auth or not _missing(auth, PROVIDER_KEYS)
    return [None, *named] if default else list(named)


def _named_providers(auth: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in auth.items() if isinstance(v, Mapping) and k not in NOT_A_PROVIDER}


def _missing(table: Any, keys: Iterable[str]) -> list[str]:
    """The ``keys`` that ``table`` lacks or holds as anything but a non-empty string."""
    if not isinstance(table, Mapping):
        return list(keys)
    return [key for key in keys if not isinstance(table.get(key), str) or not table[key].strip()]


# -- binding and the Host header -------------------------------------------------------------------------------


def host_name(host_header: str) -> str:
    """The host of a ``Host`` header without its port (``[::1]:8501`` -> ``::1``), lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host


def host_allowed(host_header: str | None, address: str, allowed_hosts: Iterable[str] = ()) -> bool:
    """Whether a request's ``Host`` header names this dashboard: the loopback names, the bound ``address``
    (unless it is a wildcard) or one of ``allowed_hosts``. Anything else (a DNS-rebinding page's own domain)
    is refused; a missing header is refused."""
    if not host_header:
        return False
    host = host_name(host_header)
    allowed = set(LOOPBACK_NAMES) | {host_name(h) for h in allowed_hosts}
    if address not in ("0.0.0.0", "::", ""):
        allowed.add(host_name(address))
    return host in allowed


def exposure_problem(address: str | None, login_configured: bool) -> str | None:
    """Why a dashboard bound to ``address`` (``server.address``; None or "" = every interface) must not serve
    pages, or None: without login configured only the loopback interface may be served."""
    if login_configured or (address and is_loopback(address)):
        return None
    where = address or "every interface"
    return (
        f"Refused: no login is configured and the dashboard is bound to {where}. Bind it to 127.0.0.1 "
        "(`server.address` in .streamlit/config.toml, `dashboard.address` in riskdesk.toml) or configure login "
        f"(an [auth] section in {SECRETS_FILE}, see README)."
    )

