"""The Audit page (``dashboard/screens/audit.py``): every fill, refused execution, refused check, trading-state
change, rule change, limit change, acknowledgement and automated action of the desk, merged into one
time-ordered table, filtered by portfolio, actor, kind and time window, exported as CSV with its as-of time.

Where each kind is recorded (read by time by :meth:`engine.store.AuditStore.read_audit_trail`)::

    fill, refused order          pf:{id}:trades     ExecutionResult records (status FILLED / REJECTED)
    refused check                pf:{id}:checks     action "check_refused" (:func:`record_refused_check`, the
                                                    Trade page's Check with the signed-in identity; a stream of
                                                    its own, bounded, so checks never displace a change)
    trading state                pf:{id}:audit      action "set_trading_state" (System page, automated responses)
                                 rd:audit           HALT ALL / REDUCE ALL: one row per portfolio it listed
    limit change                 pf:{id}:audit      action "set_limits" (before / after of the changed limits)
    rule change                  rd:audit           records with a rule_id (before / after of the rule)
    acknowledgement, resolution  pf:{id}:alert_log  ACKNOWLEDGED, and RESOLVED by a person (not the system)
    automated action             pf:{id}:audit      automated_response / automated_step / automated_order
                                                    (actor ``auto:<rule id>``)
    maintenance                  both               warm-up seed, book sync, market reload, reset

A re-seed, ``--reset`` and ``--sync`` keep every one of these streams (only ``--reset --wipe-audit`` deletes
them). The page reads every record of the chosen window that Redis still holds, however many newer records sit
in the same stream (a flood of fills, refusals or automated steps never hides the limit change or HALT that
explains the day); only past :data:`~engine.store.audit.AUDIT_READ_CAP` records in all does it stop, and then it
says which streams it cut and from when (:func:`cut_note`). The pure part (:func:`entries_from_trail`,
:func:`filter_entries`, :func:`audit_frame`, :func:`audit_csv`) takes plain records and is tested directly; the
page only lays it out.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

import pandas as pd
import redis

from engine.errors import StoreError
from engine.records import AlertStatus, Clock, DecisionStatus, ExecutionStatus, OrderIntent
from engine.store import GLOBAL_AUDIT_KEY, AuditTrail, PortfolioKeys
from engine.store.audit import AUDIT_PAGE, AUDIT_READ_CAP, CHECK_REFUSED_ACTION, ArchiveState
from engine.store.limits import LIMITS_ACTION
from logic.access import Identity
from logic.lifecycle import SYSTEM_ACTOR
from logic.views.common import Desk, portfolio_ids
from logic.views.export import csv_bytes
from logic.views.limits import LIMIT_FIELDS

LOGGER = logging.getLogger(__name__)

AUDIT_CLOCK_SLACK = 300.0
"""Seconds the stream ids are read back before the window's start: a record's time is the writer's clock, its
stream id Redis's (milliseconds), so a record dated up to this far ahead of its id is still found."""
AUDIT_MAX_ROWS = 2000
"""At most this many rows (the newest) after filtering; the page says when more matched."""
FIRM_WIDE = "firm-wide"
"""The portfolio column of records that concern no single portfolio (rule edits, warm-up runs)."""
AUDIT_COLUMNS = ("time", "portfolio", "actor", "kind", "summary", "detail")
AUDIT_WINDOWS: dict[str, float | None] = {
    "Last hour": 3600.0,
    "Last 24 hours": 86_400.0,
    "Last 7 days": 7 * 86_400.0,
    "Last 30 days": 30 * 86_400.0,
    "Everything kept": None,
}
"""Time windows the page offers (seconds back from now on the desk's clock; None: no bound)."""
AUDIT_DEFAULT_WINDOW = "Last 7 days"
DEFAULT_CURRENCY = "USD"
"""The currency money is shown in when the settings name none."""
ARROW = " → "
FIRM_ACTION_LABELS = {"halt_all": "HALT ALL", "reduce_all": "REDUCE ALL"}
TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
SYNC_ACTION = "sync"
"""A book sync's record of one changed field (engine/book.py ``apply_sync``: ``field``, ``before``, ``after``)."""
CAPITAL_FLOW_ACTION = "capital_flow"
"""A book sync's capital flow (engine/book.py ``apply_sync``: ``flow``, ``cash``, ``positions`` ticker -> qty,
price)."""


class AuditKind(StrEnum):
    """What an audit row records (the page's kind filter)."""

    FILL = "fill"
    REFUSED_ORDER = "refused order"
    REFUSED_CHECK = "refused check"
    TRADING_STATE = "trading state"
    RULE_CHANGE = "rule change"
    LIMIT_CHANGE = "limit change"
    ACKNOWLEDGEMENT = "acknowledgement"
    RESOLUTION = "resolution"
    AUTOMATED = "automated action"
    CORPORATE_ACTION = "corporate action"
    MAINTENANCE = "maintenance"


@dataclass(frozen=True)
class AuditEntry:
    """One row of the audit trail."""

    ts: float
    portfolio: str
    """A portfolio id, or :data:`FIRM_WIDE`."""
    actor: str
    kind: AuditKind
    summary: str
    """What happened, in one line; before → after for limit, rule and trading-state changes."""
    detail: str
    """Why (the reason, the refusal messages, the note) and identifiers."""
    source: str
    """The stream and entry id the row was read from (``pf:{main}:audit#1700000000000-0``)."""


@dataclass(frozen=True)
class AuditFilter:
    """Which rows to show; an empty set means every value."""

    portfolios: frozenset[str] = frozenset()
    actors: frozenset[str] = frozenset()
    kinds: frozenset[AuditKind] = frozenset()
    since: float | None = None
    """Inclusive lower bound of the time (epoch seconds)."""
    until: float | None = None
    """Inclusive upper bound of the time."""

    def matches(self, entry: AuditEntry) -> bool:
        return (
            (not self.portfolios or entry.portfolio in self.portfolios)
            and (not self.actors or entry.actor in self.actors)
            and (not self.kinds or entry.kind in self.kinds)
            and (self.since is None or entry.ts >= self.since)
            and (self.until is None or entry.ts <= self.until)
        )


@dataclass(frozen=True)
class AuditView:
    as_of: float
    """The desk's clock when the trail was read (the CSV names it)."""
    entries: tuple[AuditEntry, ...]
    """The rows shown, newest first."""
    table: pd.DataFrame
    """:data:`AUDIT_COLUMNS`, time as UTC text (one row per entry)."""
    matched: int
    """Rows that matched the filter (more than shown when over :data:`AUDIT_MAX_ROWS`)."""
    portfolios: tuple[str, ...]
    actors: tuple[str, ...]
    kinds: tuple[str, ...]
    filters: AuditFilter = field(default_factory=AuditFilter)
    archive_note: str = ""
    """Where the records older than Redis keeps are archived (:func:`archive_note`); empty without an archive."""
    cut_note: str = ""
    """Which streams were read only in part, and from when (:func:`cut_note`); empty when every record of the
    window that Redis holds was read."""


# -- formatting (the audit's own; money in the settings' currency with thousands separators) -----------------


def currency_of(desk: Desk) -> str:
    """The currency the settings name (``dashboard.currency`` or ``currency`` when a build has one), else USD."""
    for holder in (getattr(desk.settings, "dashboard", None), desk.settings):
        value = getattr(holder, "currency", None)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return DEFAULT_CURRENCY


def fmt_money(value: Any, currency: str) -> str:
    """``USD 1,234.50``; a dash when not a number."""
    number = _decimal(value)
    return "–" if number is None else f"{currency} {number:,.2f}"


def fmt_qty(value: Any) -> str:
    number = _decimal(value)
    if number is None:
        return "–" if value is None else str(value)
    return f"{number:,.0f}" if number == number.to_integral_value() else f"{number:,}"


def fmt_pct(value: Any) -> str:
    """A fraction as a percentage, at most two decimals, trailing zeros dropped (0.2 -> ``20%``)."""
    number = _decimal(value)
    if number is None:
        return "–"
    text = f"{number * 100:,.2f}".rstrip("0").rstrip(".")
    return f"{text}%"


def fmt_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime(TIME_FORMAT)


def fmt_limit(name: str, value: Any, currency: str) -> str:
    """A limit's value as the Limits page names its unit: money, %, shares, yes/no; "none" when unset."""
    if value is None:
        return "none"
    kind = LIMIT_FIELDS.get(name, ("", "", "text"))[2]
    if isinstance(value, bool) or kind == "bool":
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {fmt_qty(v)}" for k, v in sorted(value.items())) or "none"
    if kind == "money":
        return fmt_money(value, currency)
    if kind == "ratio":
        return fmt_pct(value)
    if kind in ("int", "float"):
        return fmt_qty(value)
    return str(value)


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def _ts(record: Mapping[str, Any]) -> float:
    """The record's time; its stream id's milliseconds when it has none."""
    try:
        ts = float(record.get("ts"))  # type: ignore[arg-type]
        if math.isfinite(ts):
            return ts
    except (TypeError, ValueError):
        pass
    try:
        return int(str(record.get("id", "0")).split("-")[0]) / 1000.0
    except ValueError:
        return 0.0


def _reasons(record: Mapping[str, Any]) -> tuple[str, str]:
    """(codes, messages) of a decision's reasons."""
    reasons = [r for r in record.get("reasons") or [] if isinstance(r, Mapping)]
    codes = ", ".join(str(r.get("code", "")) for r in reasons)
    messages = "; ".join(str(r.get("message", "")) for r in reasons)
    return codes, messages


def _order(record: Mapping[str, Any]) -> str:
    """``BUY 7 AAPL`` from a fill or a decision, ``SELL 7 AAPL (liquidation-only)`` for such an order."""
    part = record.get("fill") or record.get("decision") or record
    intent = (record.get("decision") or record).get("intent")
    kind = " (liquidation-only)" if intent == OrderIntent.LIQUIDATION else ""
    return f"{part.get('side') or '?'} {fmt_qty(part.get('qty'))} {part.get('ticker') or '?'}{kind}"


def _changes(
    before: Mapping[str, Any], after: Mapping[str, Any], show: Any, label: Mapping[str, str] | None = None
) -> str:
    """``name: before → after; ...`` of the fields that differ (``label`` renames the fields)."""
    names = [n for n in dict.fromkeys([*after, *before]) if before.get(n) != after.get(n)]
    label = label or {}
    return "; ".join(f"{label.get(n, n)}: {show(n, before.get(n))}{ARROW}{show(n, after.get(n))}" for n in names)


BOOKKEEPING = ("ts", "actor", "action", "id", "reason")
"""Fields of a record that have their own column (or none): left out of a generic summary."""


def _scalars(record: Mapping[str, Any], skip: Sequence[str] = ()) -> str:
    """``name value, ...`` of a record's plain fields (a generic summary of a record without its own form)."""
    return ", ".join(
        f"{k} {v}"
        for k, v in record.items()
        if k not in BOOKKEEPING and k not in skip and v is not None and not isinstance(v, Mapping | list)
    )


# -- records -> rows ------------------------------------------------------------------------------------------


def _trade_entry(pid: str, r: Mapping[str, Any], source: str, currency: str) -> AuditEntry:
    actor = str(r.get("actor") or "")
    if r.get("status") == ExecutionStatus.FILLED and isinstance(r.get("fill"), Mapping):
        fill = r["fill"]
        summary = (
            f"{_order(r)} @ {fmt_money(fill.get('price'), currency)} · notional "
            f"{fmt_money(fill.get('notional'), currency)} · fees {fmt_money(fill.get('fees'), currency)}"
        )
        pnl = _decimal(fill.get("realized_pnl"))
        if pnl:
            summary += f" · realized P&L {fmt_money(pnl, currency)}"
        detail = f"trade {fill.get('trade_id', '?')}; order {r.get('client_order_id') or '–'}"
        return AuditEntry(_ts(r), pid, actor, AuditKind.FILL, summary, detail, source)
    codes, messages = _reasons(r)
    summary = f"{_order(r)} refused: {codes or 'no reason recorded'}"
    detail = messages + (f" (order {r['client_order_id']})" if r.get("client_order_id") else "")
    return AuditEntry(_ts(r), pid, actor, AuditKind.REFUSED_ORDER, summary, detail, source)


def _portfolio_audit_entry(pid: str, r: Mapping[str, Any], source: str, currency: str) -> AuditEntry:
    actor, action, ts = str(r.get("actor") or ""), str(r.get("action") or ""), _ts(r)
    reason = str(r.get("reason") or "")
    if action == CHECK_REFUSED_ACTION:
        codes, messages = _reasons(r)
        return AuditEntry(ts, pid, actor, AuditKind.REFUSED_CHECK, f"check of {_order(r)} refused: {codes}",
                          messages, source)  # fmt: skip
    if action == "set_trading_state":
        summary = f"{r.get('previous') or '?'}{ARROW}{r.get('state') or '?'}"
        return AuditEntry(ts, pid, actor, AuditKind.TRADING_STATE, summary, reason, source)
    if action == LIMITS_ACTION:
        changes = _changes(
            r.get("before") or {},
            r.get("after") or {},
            lambda n, v: fmt_limit(n, v, currency),
            {n: spec[0] for n, spec in LIMIT_FIELDS.items()},  # the Limits page's labels
        )
        summary = f"{changes} (version {r.get('version', '?')})"
        return AuditEntry(ts, pid, actor, AuditKind.LIMIT_CHANGE, summary, reason, source)
    if action.startswith("automated_"):
        return AuditEntry(ts, pid, actor, AuditKind.AUTOMATED, _automated_summary(action, r), reason or
                          f"rule {r.get('rule_id', '?')}, alert {r.get('alert_id', '?')}", source)  # fmt: skip
    if action in CORPORATE_ACTIONS:
        summary = _corporate_summary(r, currency, book=True)
        return AuditEntry(ts, pid, actor, AuditKind.CORPORATE_ACTION, summary, reason, source)
    if action == SYNC_ACTION:
        return AuditEntry(ts, pid, actor, AuditKind.MAINTENANCE, _sync_summary(r, currency), reason, source)
    if action == CAPITAL_FLOW_ACTION:
        return AuditEntry(ts, pid, actor, AuditKind.MAINTENANCE, _flow_summary(r, currency), reason, source)
    extra = _scalars(r)
    return AuditEntry(ts, pid, actor, AuditKind.MAINTENANCE, f"{action or 'record'}" + (f": {extra}" if extra else ""),
                      reason, source)  # fmt: skip


CORPORATE_ACTIONS = ("split", "dividend")
"""The ``action`` of the records of engine/corporate_actions.py and engine/dividends.py."""


def _corporate_summary(r: Mapping[str, Any], currency: str, *, book: bool) -> str:
    """A split or a dividend as the warm-up printed it: the market's (``book`` False: the ticker's terms, its last
    price restated, the books it touched) or one book's (its position restated, or the cash it received)."""
    action, ticker = str(r.get("action")), str(r.get("ticker") or "?")
    head = f"{action} {r.get(f'{action}_id') or '?'}: "
    if action == "split" and book:
        lieu = _decimal(r.get("cash_in_lieu"))
        return head + (
            f"{ticker} {fmt_qty(r.get('qty_before'))} @ {fmt_qty(r.get('avg_price_before'))}{ARROW}"
            f"{fmt_qty(r.get('qty_after'))} @ {fmt_qty(r.get('avg_price_after'))}"
        ) + (f"; cash in lieu {fmt_money(lieu, currency)}" if lieu else "")  # fmt: skip
    if action == "dividend" and book:
        cash, before, after = (fmt_money(r.get(k), currency) for k in ("cash", "cash_before", "cash_after"))
        return head + (
            f"{fmt_qty(r.get('qty'))} {ticker} × {currency} {r.get('amount', '?')} = {cash} received; "
            f"cash {before}{ARROW}{after}"
        )  # fmt: skip
    terms = r.get("ratio_text") if action == "split" else f"{r.get('amount', '?')} a share"
    books = r.get("portfolios")
    named = ", ".join(str(p) for p in books) if isinstance(books, list) and books else "none"
    return head + (
        f"{ticker} {terms}, last price {fmt_qty(r.get('price_before'))}{ARROW}{fmt_qty(r.get('price_after'))}; "
        f"books {named}"
    )  # fmt: skip


def _sync_summary(r: Mapping[str, Any], currency: str) -> str:
    """``sync position:BBB: 2000 @ 50.0 → (none)``: one field a book sync changed (engine/book.py's ``Change``;
    cash in the currency, "(none)" for a field that was or is now absent)."""
    name = str(r.get("field") or "?")

    def show(value: Any) -> str:
        if value is None or value == "":
            return "(none)"
        return fmt_money(value, currency) if name == "cash" else str(value)

    return f"{SYNC_ACTION} {name}: {show(r.get('before'))}{ARROW}{show(r.get('after'))}"


def _flow_summary(r: Mapping[str, Any], currency: str) -> str:
    """``capital_flow USD -250,000.00: cash USD -100,000.00; AAA -500 @ USD 100.00 = USD -50,000.00; ...``: what
    a book sync moved in or out (engine/book.py's ``capital_flow``: the flow is the cash change plus each
    quantity change at its price)."""
    raw = r.get("positions")
    moves: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    parts = [f"cash {fmt_money(r.get('cash'), currency)}"]
    for ticker, move in sorted(moves.items()):
        move = move if isinstance(move, Mapping) else {}
        qty, price = _decimal(move.get("qty")), _decimal(move.get("price"))
        value = fmt_money(qty * price, currency) if qty is not None and price is not None else "–"
        parts.append(f"{ticker} {fmt_qty(move.get('qty'))} @ {fmt_money(move.get('price'), currency)} = {value}")
    return f"{CAPITAL_FLOW_ACTION} {fmt_money(r.get('flow'), currency)}: " + "; ".join(parts)


def _automated_summary(action: str, r: Mapping[str, Any]) -> str:
    response = r.get("response") or "response"
    if action == "automated_response":
        outcome = "done" if r.get("ok") else "failed"
        return f"{response} ({outcome}): {r.get('summary') or ''}".rstrip(": ")
    if action == "automated_order":
        status = r.get("status") or "?"
        return f"{response} order {_order(r)}: {status}"
    step = r.get("step") or "step"
    extra = _scalars(r, ("step", "response", "rule_id", "alert_id", "action_id"))
    return f"{response} step {step}" + (f": {extra}" if extra else "")


def _alert_entry(pid: str, r: Mapping[str, Any], source: str) -> AuditEntry | None:
    event, actor = r.get("event"), str(r.get("actor") or "")
    if event == AlertStatus.ACKNOWLEDGED:
        kind, verb = AuditKind.ACKNOWLEDGEMENT, "acknowledged"
    elif event == AlertStatus.RESOLVED and actor and actor != SYSTEM_ACTOR:
        kind, verb = AuditKind.RESOLUTION, "resolved"
    else:
        return None  # triggers, escalations, automatic clears: the Alerts page's history
    summary = f"{verb} alert {r.get('rule_id', '?')} ({r.get('severity', '?')})"
    return AuditEntry(_ts(r), pid, actor, kind, summary, str(r.get("note") or ""), source)


def _global_entries(r: Mapping[str, Any], source: str) -> list[AuditEntry]:
    actor, action, ts = str(r.get("actor") or ""), str(r.get("action") or ""), _ts(r)
    reason = str(r.get("reason") or "")
    if "rule_id" in r:
        before, after = r.get("before") or {}, r.get("after") or {}
        rule = r.get("rule_id")
        verb = action.removeprefix("rule_") or "changed"
        if action == "rule_added" or not before:
            what = ", ".join(f"{k} {after.get(k)}" for k in ("metric", "op", "threshold", "severity") if k in after)
            summary = f"rule {rule} added: {what}"
        elif action == "rule_removed" or not after:
            summary = f"rule {rule} removed"
        else:
            summary = f"rule {rule} {verb}: " + (_changes(before, after, lambda _n, v: str(v)) or "no change")
        return [AuditEntry(ts, FIRM_WIDE, actor, AuditKind.RULE_CHANGE, summary, reason, source)]
    if action in CORPORATE_ACTIONS:
        summary = _corporate_summary(r, DEFAULT_CURRENCY, book=False)
        return [AuditEntry(ts, FIRM_WIDE, actor, AuditKind.CORPORATE_ACTION, summary, reason, source)]
    if action in FIRM_ACTION_LABELS and isinstance(r.get("portfolios"), Mapping):
        out = []
        for pid, change in sorted(r["portfolios"].items()):
            before, after = change.get("previous", "?"), change.get("state", "?")
            summary = f"{before}{ARROW}{after} ({FIRM_ACTION_LABELS[action]})"
            if before == after:
                summary = f"{after} kept ({FIRM_ACTION_LABELS[action]})"
            out.append(AuditEntry(ts, str(pid), actor, AuditKind.TRADING_STATE, summary, reason, source))
        return out
    extra = _scalars(r)
    summary = (action or "record") + (f": {extra}" if extra else "")
    return [AuditEntry(ts, FIRM_WIDE, actor, AuditKind.MAINTENANCE, summary, reason, source)]


def entries_from_trail(trail: AuditTrail, currency: str = DEFAULT_CURRENCY) -> list[AuditEntry]:
    """Every audit row of ``trail``, newest first (ties: the order of the sources, then stream order)."""
    out: list[AuditEntry] = []
    for r in trail.global_records:
        out.extend(_global_entries(r, f"{GLOBAL_AUDIT_KEY}#{r.get('id', '')}"))
    for pid, sources in trail.portfolios.items():
        keys = PortfolioKeys(pid)
        for r in sources.get("trades", []):
            out.append(_trade_entry(pid, r, f"{keys.trades}#{r.get('id', '')}", currency))
        for r in sources.get("audit", []):
            out.append(_portfolio_audit_entry(pid, r, f"{keys.audit}#{r.get('id', '')}", currency))
        for r in sources.get("checks", []):  # refused checks (older stores may also hold some in "audit")
            out.append(_portfolio_audit_entry(pid, r, f"{keys.checks}#{r.get('id', '')}", currency))
        for r in sources.get("alert_log", []):
            entry = _alert_entry(pid, r, f"{keys.alert_log}#{r.get('id', '')}")
            if entry is not None:
                out.append(entry)
    out.sort(key=lambda e: (e.ts, e.source.rsplit("#", 1)[-1]), reverse=True)
    return out


def filter_entries(entries: Iterable[AuditEntry], filters: AuditFilter) -> list[AuditEntry]:
    return [e for e in entries if filters.matches(e)]


def audit_frame(entries: Sequence[AuditEntry]) -> pd.DataFrame:
    """The rows as the page shows them (and the CSV writes them): :data:`AUDIT_COLUMNS`, time as UTC text."""
    rows = [
        {"time": fmt_time(e.ts), "portfolio": e.portfolio, "actor": e.actor or "–", "kind": str(e.kind),
         "summary": e.summary, "detail": e.detail or "–"}
        for e in entries
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(AUDIT_COLUMNS))


def window_filter(
    now: float,
    window: str | None,
    portfolios: Iterable[str] = (),
    actors: Iterable[str] = (),
    kinds: Iterable[str] = (),
) -> AuditFilter:
    """The filter of the page's widgets: ``window`` is a label of :data:`AUDIT_WINDOWS` (None: no bound)."""
    span = AUDIT_WINDOWS.get(window) if window is not None else None
    return AuditFilter(
        portfolios=frozenset(portfolios),
        actors=frozenset(actors),
        kinds=frozenset(AuditKind(k) for k in kinds),
        since=None if span is None else now - span,
    )


def read_since_ms(since: float | None, now: float, wall_now: float) -> int | None:
    """The oldest stream id (milliseconds) that can hold a record dated at or after ``since`` (None: no bound).

    Stream ids are Redis's write time, records are dated on the desk's clock: the read starts
    :data:`AUDIT_CLOCK_SLACK` earlier, and earlier still by however far the desk's clock (``now``, the market's
    in a replay) is ahead of the wall clock. Reading earlier only reads more: the window itself is applied to
    each record's own time (:meth:`AuditFilter.matches`)."""
    if since is None:
        return None
    return max(0, math.floor((since - AUDIT_CLOCK_SLACK - max(0.0, now - wall_now)) * 1000.0))


def cut_note(trail: AuditTrail, cap: int = AUDIT_READ_CAP) -> str:
    """The page's warning when the read stopped at its cap: each stream cut and the time of the oldest record
    read from it (older records of the window were not read); empty when nothing was cut."""
    if not trail.cut:
        return ""
    parts = []
    for key, oldest in sorted(trail.cut.items()):
        try:
            when = fmt_time(int(oldest.split("-")[0]) / 1000.0)
        except ValueError:
            when = oldest
        parts.append(f"`{key}` before {when}")
    return (
        f"**Not every record of this window was read**: the page reads at most {cap:,} records at a time, and "
        f"these streams were read back only to the time given, their older records of the window are not shown: "
        f"{'; '.join(parts)}. Narrow the time window or the portfolios to see them."
    )


def audit_view(
    desk: Desk,
    filters: AuditFilter | None = None,
    cap: int | None = None,
    wall: Clock = time.time,
    page: int = AUDIT_PAGE,
) -> AuditView:
    """The merged audit trail of every portfolio of the store, filtered; newest first. Every record of the
    filter's window that Redis holds is read (:func:`read_since_ms`), at most ``cap`` in all (None:
    :data:`AUDIT_READ_CAP`, read when called; the view's :attr:`~AuditView.cut_note` says what a cut left out),
    ``page`` entries per stream read. ``wall``: the wall
    clock the archiver's last run is judged by (:func:`archive_note`; the archiver runs on wall time, also in a
    replay)."""
    filters = filters or AuditFilter()
    cap = AUDIT_READ_CAP if cap is None else cap
    now = desk.clock()
    wall_now = wall()
    pids = portfolio_ids(desk)
    since_ms = read_since_ms(filters.since, now, wall_now)
    wanted = [p for p in pids if not filters.portfolios or p in filters.portfolios]  # rd:audit is always read
    trail = desk.store.read_audit_trail(wanted, cap, since_ms=since_ms, page=page)
    entries = entries_from_trail(trail, currency_of(desk))
    shown = filter_entries(entries, filters)
    archive = desk.store.read_archive_state()
    return AuditView(
        as_of=now,
        entries=tuple(shown[:AUDIT_MAX_ROWS]),
        table=audit_frame(shown[:AUDIT_MAX_ROWS]),
        matched=len(shown),
        portfolios=(*pids, FIRM_WIDE),
        actors=tuple(sorted({e.actor for e in entries if e.actor})),
        kinds=tuple(str(k) for k in AuditKind),
        filters=filters,
        archive_note=archive_note(archive, wall_now, desk.settings.archive.interval_seconds),
        cut_note=cut_note(trail, cap),
    )


def _span(seconds: float) -> str:
    """``30 days``, ``12 hours``, ``90 seconds``: the largest whole unit."""
    for unit, size in (("day", 86_400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n:,} {unit}{'s' if n != 1 else ''}"
    return f"{seconds:g} seconds"


ARCHIVE_LATE_RUNS = 3
"""Runs the archiver may miss (``archive.interval_seconds`` each) before the page says it is not running."""


def archive_note(state: ArchiveState | None, now: float, interval_seconds: float) -> str:
    """The page's caption on retention: what Redis keeps and the directory the archiver (engine/archive.py)
    writes the older records to, and a warning when its last run is more than :data:`ARCHIVE_LATE_RUNS`
    intervals before ``now`` (wall time); empty when no archiver has run on this store."""
    if state is None:
        return ""
    note = (
        f"Older records are archived to `{state.directory}` (append-only, one JSON Lines file per stream and UTC "
        f"day); Redis keeps each stream's last {_span(state.keep_seconds)}, at most its newest "
        f"{state.keep_entries:,} records."
    )
    late = now - state.last_run
    if late > ARCHIVE_LATE_RUNS * interval_seconds:
        note += (
            f" **The archiver last ran {late:,.0f} s ago** (every {interval_seconds:g} s): until it runs again "
            "nothing is archived and the audit streams grow in Redis. Fix: start `python -m engine.archive` "
            "(`make run` starts it)."
        )
    return note


def audit_csv(view: AuditView) -> bytes:
    """The shown rows as CSV: a first line ``# Riskdesk audit trail as of <time>`` (with the filters), then
    the table exactly as shown (times to the second, money rounded to the cent in the summaries)."""
    f = view.filters
    parts = [
        f"portfolios {', '.join(sorted(f.portfolios))}" if f.portfolios else "",
        f"actors {', '.join(sorted(f.actors))}" if f.actors else "",
        f"kinds {', '.join(sorted(f.kinds))}" if f.kinds else "",
        f"since {fmt_time(f.since)}" if f.since is not None else "",
        f"until {fmt_time(f.until)}" if f.until is not None else "",
    ]
    filters = "; ".join(p for p in parts if p) or "none"
    head = f"# Riskdesk audit trail as of {fmt_time(view.as_of)} (filters: {filters}; {len(view.entries)} rows)\r\n"
    return head.encode("utf-8") + csv_bytes(view.table)


# -- recording a refused check ---------------------------------------------------------------------------------


def record_refused_check(
    desk: Desk,
    portfolio_id: str,
    decision: Mapping[str, Any],
    identity: Identity,
    asked: Mapping[str, Any] | None = None,
) -> bool:
    """Append a refused pre-trade check made from the dashboard to the portfolio's refused-check stream
    (``pf:{id}:checks``, bounded, apart from the stream of changes) with ``identity.actor``; an approved decision
    records nothing. ``asked`` is the ticket as typed (ticker, side, intent,
    qty), recorded where the decision has none (a quantity the gate refused as malformed). Returns whether a
    record was written: a store that cannot be written is logged and the check's answer still shown (it is
    refused either way)."""
    if decision.get("status") == DecisionStatus.APPROVED:
        return False
    asked = asked or {}

    def part(name: str) -> Any:
        value = decision.get(name)
        if value is None and asked.get(name) is not None:
            value = asked[name] if isinstance(asked[name], int | float | str) else repr(asked[name])
        return value

    record = {
        "ts": desk.clock(),
        "actor": identity.actor,
        "ticker": part("ticker"),
        "side": part("side"),
        "qty": part("qty"),
        "intent": part("intent"),
        "reasons": list(decision.get("reasons") or []),
        "market_version": decision.get("market_version"),
    }
    try:
        desk.store.append_check_record(portfolio_id, record)
    except (StoreError, redis.RedisError):
        LOGGER.exception("could not record a refused check of %s", portfolio_id)
        return False
    return True
