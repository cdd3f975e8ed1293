"""Shared widgets of the dashboard: the desk handle, the sidebar, live fragments, error messages, gauges,
heatmaps, traffic lights and tables with CSV export.

Pages call these with view models from :mod:`logic.views`; nothing here reads Redis keys or computes risk.
Text that comes from the store (tickers, alert descriptions, reasons) is shown with ``st.text``, in tables or
with Markdown escaped by :func:`md`: never as raw HTML.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from streamlit.errors import StreamlitSecretNotFoundError

from engine.errors import AccessDenied, ConfigError
from engine.records import Action, Severity, TradingState
from engine.settings import AccessConfig, DashboardConfig, _resolve_config_path, load_settings
from logic import access, views
from logic.access import Identity
from logic.views import fmt
from logic.views.export import csv_bytes
from logic.views.memo import Memo, array_key

log = logging.getLogger("riskdesk.dashboard")

REFRESH_CHOICES: dict[str, float | None] = {
    "Paused": None,
    "1 s": 1.0,
    "2 s": 2.0,
    "5 s": 5.0,
    "10 s": 10.0,
    "30 s": 30.0,
}
"""Live-refresh intervals offered in the sidebar; ``None`` pauses every live fragment."""

PORTFOLIO_KEY = "portfolio"
REFRESH_KEY = "refresh"

LIGHT_COLOURS = {"green": "green", "amber": "orange", "red": "red", "grey": "gray"}
SEVERITY_COLOURS: dict[str, str] = {
    Severity.LOW: "#5b9bd5",
    Severity.MEDIUM: "#f0ad4e",
    Severity.HIGH: "#e8743b",
    Severity.CRITICAL: "#d9534f",
}
FIGURES = Memo(256)
"""Plotly figures by everything drawn in them: building one (plotly validates every property) costs more than
the rest of a page, and every session on the same tick draws the same gauges and curves."""

STATE_COLOURS: dict[str, str] = {
    TradingState.ACTIVE: "green",
    TradingState.REDUCING: "orange",
    TradingState.HALTED: "red",
}


# -- the desk ------------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def desk() -> views.Desk:
    """One :class:`~logic.views.Desk` per dashboard process (settings and Redis from the environment)."""
    return views.Desk.from_env()


def desk_or_none() -> views.Desk | None:
    """The desk, or None when it cannot be built (the sidebar says why)."""
    try:
        return desk()
    except Exception:  # noqa: BLE001 - shown by the guarded sidebar
        return None


# -- who is signed in -----------------------------------------------------------------------------------------


class AccessTable:
    """``[access]`` as the settings file says it now: re-read whenever the file's bytes change, so removing a
    user (or a role) from ``[access]`` takes effect on that user's next interaction, without a restart.

    :func:`desk` keeps the settings the process started with (one per process); roles must not: an admin revokes
    a login by editing riskdesk.toml. Each call reads the file (a few KB: cheap next to a page run) and compares
    its bytes with those the table was parsed from; only a change parses and validates the whole file again
    (:func:`~engine.settings.load_settings`, with the same ``RISKDESK__*`` overrides). Bytes, not the mtime: an
    edit within the file system's mtime resolution, or a copy that keeps the mtime, is still seen. A file that
    cannot be read or no longer validates raises :class:`~engine.errors.ConfigError` on every call until it is
    fixed: nobody may act meanwhile (fail closed), as a broken file refuses to start the dashboard."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._source: tuple[str, bytes] | None = None
        self._access: AccessConfig | None = None

    def current(self) -> AccessConfig:
        path = _resolve_config_path(None, os.environ)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the settings file {path} for [access]: {exc}") from exc
        source = (str(path), raw)
        with self._lock:
            if self._source == source and self._access is not None:
                return self._access
        access_now = load_settings(path).access  # a file changed since `raw` was read differs next call: re-read
        with self._lock:
            self._source, self._access = source, access_now
        return access_now


ACCESS = AccessTable()
"""The process's ``[access]`` (:class:`AccessTable`): every run resolves roles from the file as it is now."""

LOCAL_MODE_MESSAGE = "Local operator mode: no login configured; bound to 127.0.0.1"


def login_configured() -> bool:
    """Whether login (OpenID Connect via ``st.login``) is configured: a complete ``[auth]`` section in the
    ``secrets.toml`` files Streamlit reads (``secrets.files``), or in secrets handed to Streamlit otherwise
    (``AppTest.secrets``). False only when there is no ``[auth]`` section at all; raises
    :class:`~engine.errors.ConfigError` naming the file and the problem when a secrets file cannot be read or
    parsed or ``[auth]`` is incomplete (:func:`logic.access.login_configured`): never the local operator by
    accident."""
    files = st.get_option("secrets.files")
    if access.login_configured(files):
        return True
    try:  # the files hold no [auth]; secrets that reach Streamlit another way still count
        auth = st.secrets.to_dict().get("auth")
    except StreamlitSecretNotFoundError as exc:
        if any(Path(f).exists() for f in files):  # one Streamlit cannot load (changed since it was read above)
            raise ConfigError(f"Streamlit cannot load its secrets: {exc}", fix=access.LOGIN_FIX) from exc
        return False  # no secrets at all
    if auth is None:
        return False
    problem = access.auth_problem(auth)
    if problem is not None:
        raise ConfigError(f"the [auth] section of Streamlit's secrets {problem}", fix=access.LOGIN_FIX)
    return True


def login_configured_or_stop() -> bool:
    """:func:`login_configured`, or stop the page with the error when the login configuration is broken (no
    identity, no widget)."""
    try:
        return login_configured()
    except ConfigError as exc:
        log.error("refused to serve: %s", exc)
        st.error(f"Refused: the login configuration is broken: {md(exc.detail)}", icon=":material/block:")
        st.info(f"Fix: {md(exc.fix)}")
        st.stop()


def identity() -> Identity | None:
    """The identity every state-changing action runs as: with login configured, the signed-in user (``st.user``:
    issuer, subject, e-mail) with the roles ``[access]`` grants now (:data:`ACCESS`, re-read when the file
    changes), None when nobody is signed in; without login, the local operator with every role (the dashboard is
    bound to the loopback interface then). None, too, when the login configuration is broken
    (:func:`login_configured` raises), when the settings file's ``[access]`` cannot be read, and when the
    sign-in is over (older than ``access.max_session_seconds``): nobody may act
    then (:func:`require_login` says why)."""
    return _signed_in()[0]


def _signed_in() -> tuple[Identity | None, str | None]:
    """:func:`identity`, and why it is None when someone is signed in (a page shows it), else None."""
    try:
        configured = login_configured()
    except ConfigError as exc:
        log.error("no identity: %s", exc)
        return None, None
    if not configured:
        return access.local_identity(), None
    if not st.user.is_logged_in:
        return None, None
    try:
        return access.identity_from_claims(ACCESS.current(), st.user.to_dict()), None
    except (ConfigError, AccessDenied) as exc:
        log.warning("no identity for a signed-in user: %s", exc)
        return None, str(exc)


def host_guard(d: views.Desk | None) -> None:
    """Stop the page when the login configuration is broken, when the dashboard is served beyond the loopback
    interface without login, or when the request's ``Host`` header is not this dashboard's (DNS rebinding):
    app-level checks on the WebSocket's headers, run before any widget exists, so a foreign page gets no data
    and no callbacks. Runs without headers (AppTest, no HTTP request) are let through (:func:`require_login`
    stops them on a broken login configuration)."""
    headers = st.context.headers
    if not headers:
        return
    exposed = access.exposure_problem(st.get_option("server.address"), login_configured_or_stop())
    if exposed is not None:  # e.g. a plain `streamlit run --server.address 0.0.0.0` without login
        log.warning("refused to serve: %s", exposed)
        st.error(exposed, icon=":material/block:")
        st.stop()
    host = headers.get("Host")
    cfg = d.settings.dashboard if d is not None else DashboardConfig()
    if not access.host_allowed(host, cfg.address, cfg.allowed_hosts):
        log.warning("refused a request for foreign host %r", host)
        st.error(
            f"Refused: this dashboard does not answer for host {md(host or '(none)')}. Open it by the address "
            "it is served on, or add the name to `dashboard.allowed_hosts` in riskdesk.toml.",
            icon=":material/block:",
        )
        st.stop()


def require_login() -> Identity:
    """The signed-in identity, or stop the page with a login button (login configured, nobody signed in) or
    with a message (signed in, but ``[access]`` grants no role), or with the error when the login configuration
    is broken."""
    login_configured_or_stop()
    who, why = _signed_in()
    if who is None and why is not None:  # signed in, but the sign-in is over or [access] cannot be read
        st.title("Riskdesk")
        st.error(f"Refused: {md(why)}", icon=":material/block:")
        login_buttons()
        st.button("Log out", on_click=st.logout, key="logout_refused")
        st.stop()
    if who is None:
        st.title("Riskdesk")
        st.info("Sign in with the desk's identity provider to use the dashboard.", icon=":material/lock:")
        login_buttons()
        st.stop()
    if not who.roles:
        st.error(
            f"Signed in as {md(who.email or who.subject)}, but no role is granted to this login.",
            icon=":material/block:",
        )
        st.info("Ask an admin to map your e-mail or group to a role in `[access]` of riskdesk.toml.")
        st.button("Log out", on_click=st.logout, key="logout_norole")
        st.stop()
    return who


def login_buttons() -> None:
    """One login button per provider of the ``[auth]`` section Streamlit reads (:func:`access.login_providers`):
    "Log in" for the default provider, "Log in with <name>" for each ``[auth.<name>]``."""
    try:
        auth = st.secrets.to_dict().get("auth")
    except StreamlitSecretNotFoundError:
        auth = None
    for provider in access.login_providers(auth) or [None]:
        st.button(
            "Log in" if provider is None else f"Log in with {provider}",
            type="primary",
            on_click=st.login,
            args=() if provider is None else (provider,),
            icon=":material/login:",
            key="login_button" if provider is None else f"login_button_{provider}",
        )


def identity_sidebar(who: Identity) -> None:
    """Say who the pages act as, and offer logout (or say that this is the local operator mode)."""
    with st.sidebar:
        if who.local:
            st.badge("Local operator", icon=":material/person:", color="orange")
            st.caption(f"{LOCAL_MODE_MESSAGE}. Acting as {md(who.actor)} with every role.")
            return
        st.caption(f"Signed in as **{md(who.label)}**")
        st.button("Log out", on_click=st.logout, key="logout_button", icon=":material/logout:")


def can(action: Action, portfolio_id: str | None = None) -> bool:
    """Whether the current identity may take ``action`` (for hiding controls; the views check again)."""
    who = identity()
    return who is not None and who.can(action, portfolio_id)


def refused(action: Action, portfolio_id: str | None = None) -> bool:
    """Show why the current identity may not take ``action`` and return True, or return False when it may."""
    if can(action, portfolio_id):
        return False
    label = access.ACTION_LABELS.get(action, str(action))
    where = f" on {md(portfolio_id)}" if portfolio_id else ""
    st.info(f"Your role does not allow you to {label}{where}.", icon=":material/lock:")
    return True


# -- sidebar: portfolio and refresh --------------------------------------------------------------------------


def sidebar_state(d: views.Desk) -> list[str]:
    """Settle what the sidebar's widgets will show before the page runs: the portfolio (the one chosen, else the
    first; none when there is none) and the live-refresh interval (the settings' default on a session's first
    run). Returns the portfolio ids for :func:`sidebar`.

    The page runs before the widgets are drawn (``dashboard/app.py``), so its first chart goes to the browser
    first and the large charting script is fetched before the widgets' own scripts."""
    ids = views.portfolio_ids(d)
    if st.session_state.get(PORTFOLIO_KEY) not in ids:
        st.session_state.pop(PORTFOLIO_KEY, None)
        if ids:
            st.session_state[PORTFOLIO_KEY] = ids[0]  # what the selectbox would show first
    if REFRESH_KEY not in st.session_state:
        st.session_state[REFRESH_KEY] = _default_refresh(d.settings.dashboard.refresh_seconds)
    return ids


def sidebar(d: views.Desk, ids: list[str]) -> None:
    """Portfolio selector and live-refresh interval, shared by every page (widgets keep their values); their
    values were settled by :func:`sidebar_state`."""
    with st.sidebar:
        st.selectbox("Portfolio", ids, key=PORTFOLIO_KEY, help="every page shows this portfolio")
        st.selectbox(
            "Live refresh",
            list(REFRESH_CHOICES),
            key=REFRESH_KEY,
            help="how often live parts update; typing in a form is never interrupted",
        )
        clock = views.clock_caption(d)
        if clock is not None:  # model time is not wall time: say so on every page
            st.badge("Demo clock" if clock.startswith("Compressed") else "Replay", icon=":material/speed:",
                     color="orange")  # fmt: skip
            st.caption(md(clock))


def _default_refresh(seconds: float) -> str:
    for label, value in REFRESH_CHOICES.items():
        if value is not None and value >= seconds:
            return label
    return "Paused"


def portfolio() -> str | None:
    return st.session_state.get(PORTFOLIO_KEY)


def refresh_seconds() -> float | None:
    return REFRESH_CHOICES.get(st.session_state.get(REFRESH_KEY, "Paused"))


# -- live fragments and error handling -----------------------------------------------------------------------


def live(render: Callable[..., None], *args: Any) -> None:
    """Run ``render(*args)`` as a fragment that reruns on its own at the sidebar's interval.

    Only the fragment reruns, so widgets outside it (the trade ticket, the rules editor, the kill switch
    reason) keep what the user is typing. Errors inside become a message (see :func:`guard`).
    """

    @functools.wraps(render)
    def guarded(*inner: Any) -> None:
        with guard():
            render(*inner)

    st.fragment(guarded, run_every=refresh_seconds())(*args)


@contextmanager
def guard() -> Iterator[None]:
    """Show any error raised inside as a plain message with its fix; log the traceback, never show it.

    ``st.rerun`` and ``st.stop`` raise BaseException subclasses and pass through.
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - the page must never show a traceback
        log.exception("dashboard view failed")
        show_problem(views.problem_from_exception(exc))


def show_problem(problem: views.Problem) -> None:
    st.error(f"**{md(problem.title)}** — {md(problem.detail)}", icon=":material/error:")
    # the fix is our own advice (engine/errors.py, logic/views/common.py), written in Markdown on purpose
    st.info(f"**How to fix:** {problem.fix}", icon=":material/build:")


def health_gate(d: views.Desk) -> bool:
    """Say plainly when the store cannot be used (and how to fix it) or a daemon is stale.

    Returns False when there is nothing to show, True otherwise (warnings do not hide the data).
    """
    health = views.check_health(d)
    if health.problem is not None:
        show_problem(health.problem)
        return False
    for warning in health.warnings:
        st.warning(md(warning), icon=":material/schedule:")
    return True


def selected_portfolio(d: views.Desk, *, healthy: bool = False) -> str | None:
    """The sidebar's portfolio, or None once :func:`health_gate` has said why the page has nothing to show:
    no portfolio selected, or (with ``healthy``) a store that cannot be used. The start of a portfolio page."""
    pid = portfolio()
    if pid is None or (healthy and not views.check_health(d).ok):
        health_gate(d)
        return None
    return pid


def act(action: Callable[[], Any], result_key: str) -> None:
    """Run a button callback's action, storing its result or its problem in session state."""
    try:
        st.session_state[result_key] = {"ok": True, "value": action()}
    except Exception as exc:  # noqa: BLE001 - shown as a message on the next run
        log.exception("dashboard action failed")
        st.session_state[result_key] = {"ok": False, "problem": views.problem_from_exception(exc)}


# -- text ----------------------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~$:])")


def md(text: object) -> str:
    """Escape Markdown (links, emphasis, colour and icon directives, HTML-looking tags) in store text.

    Newlines become spaces, so no line-start syntax (headings, lists) can form either.
    """
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def currency() -> str:
    """The currency code of every money figure (``dashboard.currency``; USD when the settings cannot be read)."""
    d = desk_or_none()
    return d.settings.dashboard.currency if d is not None else fmt.DEFAULT_CURRENCY


def when(ts: float | None) -> str:
    """An epoch time for Markdown (captions, markdown): ``2026-11-30 05\\:20\\:00 UTC``, shown with its colons.

    The colons are escaped because Streamlit's frontend reads ``:20:`` in a time as an emoji shortcode and then
    downloads and runs its emoji plugin (about 265 kB of script) for that text: on the Overview that was part of
    every first load, for the time in the trading-state caption."""
    return md(fmt.when(ts))


def money(value: float | None, signed: bool = False, cents: bool = False) -> str:
    """``USD 1,234,568`` (the settings' currency, whole units; ``signed``: ``USD +1,234``), ``—`` if unknown."""
    return fmt.money(value, currency(), signed=signed, cents=cents)


def number(value: float | None) -> str:
    """Thousands separators and two decimals; ``—`` if unknown."""
    return fmt.number(value)


def pct(value: float | None, digits: int = 2) -> str:
    return fmt.pct(value, digits)


# -- widgets -------------------------------------------------------------------------------------------------


def traffic_light(label: str, level: str, detail: str) -> None:
    """A coloured dot, the area and one line of detail (level: green, amber, red or grey)."""
    colour = LIGHT_COLOURS.get(level, "gray")
    with st.container(border=True):
        st.markdown(f":{colour}[●] **{md(label)}** · :{colour}[{md(level.upper())}]")
        st.caption(md(detail))


def state_badge(state: str, reason: str, actor: str, ts: float | None) -> None:
    colour = STATE_COLOURS.get(state, "gray")
    st.markdown(f"Trading state: :{colour}-background[**{md(state)}**]")
    st.caption(f"{md(reason) or 'no reason recorded'} — by {md(actor) or 'nobody recorded'} at {when(ts)}")


GAUGE_NUMBER_PX = 26
"""Font size of a gauge's number: ``USD -889M`` fits the narrowest gauge column (a quarter of a wide page)."""


def gauge(title: str, value: float, limit: float | None, key: str, suffix: str = "") -> None:
    """A dial from 0 with the limit drawn as a red line; the bar turns amber at 80% and red past the limit.

    The number is SI-formatted (``USD 1.51M``, the exact figure is in the metric above it) at a fixed size, so
    it never clips in a narrow column."""
    unit = currency()
    key_ = ("gauge", title, value, limit, suffix, unit)
    chart(cached_figure(key_, lambda: _gauge_figure(title, value, limit, suffix, unit)), key=key)


def _gauge_figure(title: str, value: float, limit: float | None, suffix: str, unit: str) -> go.Figure:
    top = max(limit * 1.25 if limit else 0.0, value * 1.1, 1.0)
    colour = "#2ca02c"
    if limit:
        colour = "#d62728" if value > limit else ("#ff9f1a" if value >= 0.8 * limit else "#2ca02c")
    fig = go.Figure(
        go.Indicator(
            mode="gauge+number",
            value=value,
            number={
                "valueformat": ".3~s",
                "prefix": f"{unit} ",
                "suffix": suffix,
                "font": {"size": GAUGE_NUMBER_PX},
            },
            title={"text": title, "font": {"size": 14}},
            gauge={
                "axis": {"range": [0, top], "tickformat": "~s", "nticks": 5},
                "bar": {"color": colour},
                **({"threshold": {"line": {"color": "red", "width": 3}, "value": limit}} if limit else {}),
            },
        )
    )
    fig.update_layout(height=190, margin={"l": 24, "r": 24, "t": 40, "b": 10})
    return fig


def cached_figure(key: Hashable, build: Callable[[], go.Figure]) -> go.Figure:
    """The figure ``build()`` draws, built once per ``key`` in this process (:data:`FIGURES`).

    ``key`` must name everything the figure shows (values, labels, limits: use
    :func:`~logic.views.memo.array_key` for arrays), so a new tick or a changed limit draws a new figure; the
    figure is shared, so nothing may change it after ``build`` (``st.plotly_chart`` only reads it).
    """
    return FIGURES.get(key, build)


def frame_key(df: pd.DataFrame, columns: Sequence[str]) -> tuple[Any, ...]:
    """A figure key of a frame's ``columns`` (their names and every value; missing columns count as absent)."""
    present = [c for c in columns if c in df]
    return (tuple(present), len(df), *array_key(*(df[c].to_numpy() for c in present)))


def chart(fig: go.Figure, key: str) -> None:
    st.plotly_chart(fig, key=key, config={"displaylogo": False})


def heatmap(
    matrix: pd.DataFrame,
    title: str,
    key: str,
    zmin: float | None = None,
    zmax: float | None = None,
    colorscale: str = "RdBu_r",
    fmt: str = ".2f",
) -> None:
    z = matrix.to_numpy()
    x, y = tuple(str(c) for c in matrix.columns), tuple(str(i) for i in matrix.index)

    def build() -> go.Figure:
        fig = go.Figure(
            go.Heatmap(z=z, x=list(x), y=list(y), zmin=zmin, zmax=zmax, colorscale=colorscale,
                       texttemplate="%{z:" + fmt + "}")
        )  # fmt: skip
        fig.update_layout(title=title, height=max(300, 28 * len(matrix) + 120), margin={"t": 40, "b": 10})
        fig.update_yaxes(autorange="reversed")
        return fig

    chart(cached_figure(("heatmap", *array_key(z), x, y, title, zmin, zmax, colorscale, fmt), build), key=key)


def bars(labels: Sequence[str], values: Sequence[float], title: str, key: str, x_title: str = "") -> None:
    names, figures = tuple(str(s) for s in labels), tuple(float(v) for v in values)

    def build() -> go.Figure:
        colours = ["#d62728" if v > 0 else "#2ca02c" for v in figures]
        fig = go.Figure(go.Bar(x=list(figures), y=list(names), orientation="h", marker_color=colours))
        fig.update_layout(title=title, height=max(260, 24 * len(names) + 100), margin={"t": 40, "b": 10})
        fig.update_xaxes(title=x_title)
        fig.update_yaxes(autorange="reversed")
        return fig

    chart(cached_figure(("bars", names, figures, title, x_title), build), key=key)


def table(
    df: pd.DataFrame,
    key: str,
    filename: str,
    *,
    height: Any = "auto",
    column_config: dict[str, Any] | None = None,
    empty: str | None = None,
    colours: dict[str, dict[str, str]] | None = None,
    kinds: dict[str, str] | None = None,
    totals: pd.DataFrame | None = None,
) -> None:
    """A read-only table with an "Export CSV" button (the export does not rerun the page).

    Every column is formatted by its kind (:mod:`logic.views.fmt`: money with the currency, ratios in %, ...;
    ``kinds`` overrides the kind a column's name gives), is wide enough for its longest value and its header,
    and shows ``—`` where a figure is missing (the column's help says why). A pixel ``height`` shrinks to the
    rows there are (no empty padding rows). The CSV carries the time it was read, is rounded to the unit shown
    and, with ``totals`` (the same table with the screen's totals row), has that row too. With ``empty`` set,
    an empty table is replaced by that sentence. ``colours`` maps a column to ``{cell value: background
    colour}`` (e.g. severities).
    """
    if empty is not None and df.empty:
        st.caption(empty)
        return
    config, column_kinds = table_config(df, column_config, kinds)
    shown: Any = df
    if colours:
        shown = df.style
        for column, palette in colours.items():
            if column in df:
                shown = shown.map(lambda v, p=palette: _cell_colour(p.get(v)), subset=[column])
    if isinstance(height, int):
        height = fmt.table_height(len(df), fmt.rows_for_height(height))
    st.dataframe(
        shown,
        hide_index=True,
        height=height,
        column_config=config,
        key=f"{key}_table",
        placeholder=fmt.DASH,
    )
    d = desk_or_none()
    as_of = d.clock() if d is not None else None
    st.download_button(
        "Export CSV",
        # built on click, not on every run; formula cells neutralised (OWASP CSV injection)
        data=lambda: csv_bytes(df if totals is None else totals, kinds=column_kinds, as_of=as_of),
        file_name=filename,
        mime="text/csv",
        key=f"{key}_csv",
        on_click="ignore",
        icon=":material/download:",
    )


def table_config(
    df: pd.DataFrame, given: dict[str, Any] | None = None, kinds: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Streamlit column configurations for every column of ``df`` (format, label, width, help) from the kinds
    of :mod:`logic.views.fmt`, keeping a page's own label; and the kind of each column (for the CSV)."""
    code = currency()
    config: dict[str, Any] = {}
    column_kinds: dict[str, str] = {}
    for column in df.columns:
        name = str(column)
        series = df[column]
        kind = fmt.column_kind(name, series, kinds)
        if fmt.printf_format(kind) is not None and not pd.api.types.is_numeric_dtype(series):
            kind = fmt.TEXT  # e.g. a version column of text
        column_kinds[name] = kind
        own = dict((given or {}).get(name) or {})
        label = str(own.get("label") or fmt.LABELS.get(name, name))
        if kind == fmt.TIME:
            label = label if "UTC" in label else f"{label} (UTC)"
        help_text = own.get("help")
        if help_text is None and series.isna().any():
            help_text = f"{fmt.DASH}: {fmt.MISSING_REASONS.get(name, 'not available')}"
        chars = fmt.longest_text(label, series, kind, code)
        if _own_format(own) and kind != fmt.TEXT:  # a page's own number format: room for 10 characters
            chars = max(chars, len(label), OWN_FORMAT_CHARS)
        width = fmt.column_width(chars)
        if kind == fmt.TIME:
            config[name] = st.column_config.DatetimeColumn(
                label, format="YYYY-MM-DD HH:mm:ss", width=width, help=help_text
            )
        elif kind == fmt.BOOL:
            config[name] = st.column_config.CheckboxColumn(label, width=width, help=help_text)
        elif (number_format := _own_format(own) or fmt.printf_format(kind, code)) is not None and (
            pd.api.types.is_numeric_dtype(series)
        ):
            config[name] = st.column_config.NumberColumn(label, format=number_format, width=width, help=help_text)
        else:
            config[name] = st.column_config.TextColumn(label, width=width, help=help_text)
    return config, column_kinds


OWN_FORMAT_CHARS = 10
"""Room for a number in a page's own format (``%.4g`` writes at most ``-1.235e+05``)."""


def _own_format(config: dict[str, Any]) -> str | None:
    """The number format a page chose for a column (e.g. ``%.4g`` for alert values of mixed units)."""
    type_config = config.get("type_config") or {}
    value = type_config.get("format") if isinstance(type_config, dict) else None
    return str(value) if value else None


def _cell_colour(colour: str | None) -> str:
    return f"background-color: {colour}; color: #ffffff; font-weight: 600" if colour else ""
