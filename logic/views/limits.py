"""The Limits page: each limit of a portfolio with its unit, the live version, who changed it last, the change
history (before/after), and the change form's parsing.

The live limits are the store's (engine/store/limits.py) when a change was ever made, else the settings'
(version 0). A change goes through :meth:`logic.risk_manager.RiskManager.set_limits` (validated as the settings
are, one audit record in the same transaction) and applies to every gate, monitor and page from its next check
or tick. A change is made against the :class:`LimitsView` the user saw: only the fields that differ from what it
showed are changed, and the store refuses the change (``LIMITS_CHANGED``, nothing written) when the limits moved
since that version, so a stale form never reverts a colleague's change.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pandas as pd

from engine.records import Action
from engine.settings import Limits
from logic.access import Identity, authorize
from logic.views import fmt
from logic.views.common import Desk, InputError, records_frame

LIMIT_FIELDS: dict[str, tuple[str, str, str]] = {
    # name: (label, unit, kind) -- kind: money, int, float, ratio, bool, text
    "var_limit": ("VaR limit", "USD", "money"),
    "var_confidence": ("VaR confidence", "fraction (0.95 = 95%)", "ratio"),
    "var_horizon_days": ("VaR horizon", "days", "float"),
    "max_concentration": ("Max concentration", "fraction of equity", "ratio"),
    "max_order_notional": ("Max order notional", "USD", "money"),
    "max_order_qty": ("Max order quantity", "shares", "int"),
    "price_collar_pct": ("Price collar", "fraction of the reference price", "ratio"),
    "price_sanity_factor": ("Price sanity factor", "x the reference (2 to 1000; never waived)", "float"),
    "stale_price_seconds": ("Stale price after", "seconds", "float"),
    "max_orders_per_minute": ("Max orders per minute", "orders", "int"),
    "collar_reference": ("Collar reference", "session_open or rolling:N", "text"),
    "outside_session": ("Outside the session", "reject or allow", "text"),
    "max_gross_leverage": ("Max gross leverage", "x equity (blank: none)", "float"),
    "stressed_var_limit": ("Stressed VaR limit", "USD (blank: none)", "money"),
    "max_daily_loss": ("Max daily loss", "USD (blank: none)", "money"),
    "max_position_qty": ("Max position", "shares (blank: none)", "int"),
    "min_margin_level_after": ("Min margin level after", "% (margin accounts)", "float"),
    "reducing_allows_hedges": ("REDUCING allows hedges", "yes/no", "bool"),
    "order_id_retention_days": ("Order id retention", "days", "float"),
}
"""Every editable limit: label, unit and how its text is read (``position_limits`` is shown, not edited here)."""

HISTORY_COLUMNS = ("ts", "version", "actor", "reason", "changes")

PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d+)?|\.\d+)")
"""A number as the form takes it: digits, a point for decimals. No exponent (``1e999`` is a typo, not a limit),
no underscores, no ``inf``/``nan``."""
GROUPED_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+")
"""A money amount or a share count may also group its digits by three with commas (``1,000,000.50``)."""


@dataclass(frozen=True)
class LimitsView:
    portfolio_id: str
    version: int
    """0: the settings' limits (never changed live)."""
    rev: str
    """The stored record's token ("" at version 0): with the version, which limits this view showed."""
    actor: str
    reason: str
    ts: float | None
    limits: Limits
    table: pd.DataFrame
    """limit, value, unit (one row per limit)."""
    values: Mapping[str, str]
    """name -> the value as the form shows it (text; blank for an unset optional limit)."""
    history: pd.DataFrame
    """The changes, newest first: ts, version, actor, reason, changes ("name: before -> after; ...")."""
    history_empty: str
    """What the page says when ``history`` is empty: "never changed" only at version 0."""

    def widget_key(self, name: str) -> str:
        """The form widget of limit ``name`` for these limits: a new version (or record) is a new widget, so the
        form starts again from the values it shows."""
        return f"lim_{name}_v{self.version}_{self.rev[:12]}"


def live_limits(desk: Desk, portfolio_id: str) -> Limits:
    """The limits every process uses now: the store's, else the settings'."""
    return desk.store.limits_or(portfolio_id, desk.settings.limits_for(portfolio_id))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {v}" for k, v in sorted(value.items())) or "(none)"
    return str(value)


def _shown(value: Any, kind: str, currency: str) -> str:
    """A limit as the table shows it: money with the currency and separators, ratios also in %."""
    if value is None:
        return "none"
    if kind == "money":
        return fmt.money(value, currency, cents=Decimal(str(value)) % 1 != 0)
    if kind == "ratio":
        return f"{value:g} ({fmt.pct(value)})"
    if kind == "int":
        return fmt.qty(value)
    return _text(value)


def limits_view(desk: Desk, portfolio_id: str) -> LimitsView:
    stored = desk.store.read_limits(portfolio_id)
    limits = stored.limits if stored is not None else desk.settings.limits_for(portfolio_id)
    rows, values = [], {}
    currency = desk.settings.dashboard.currency
    for name, (label, unit, kind) in LIMIT_FIELDS.items():
        value = getattr(limits, name)
        values[name] = _text(value)
        rows.append({"limit": label, "value": _shown(value, kind, currency), "unit": unit})
    rows.append({"limit": "Position limits", "value": _text(limits.position_limits), "unit": "shares per ticker"})
    records = desk.store.limits_changes(portfolio_id)
    for r in records:
        r["changes"] = _changes_text(r.get("before") or {}, r.get("after") or {})
    history = records_frame(records)
    history = history[[c for c in HISTORY_COLUMNS if c in history.columns]] if not history.empty else history
    version = stored.version if stored is not None else 0
    return LimitsView(
        portfolio_id=portfolio_id,
        version=version,
        rev=stored.rev if stored is not None else "",
        actor=stored.actor if stored is not None else "settings",
        reason=stored.reason if stored is not None else "the settings file (never changed live)",
        ts=stored.ts if stored is not None else None,
        limits=limits,
        table=pd.DataFrame(rows, columns=["limit", "value", "unit"]),
        values=values,
        history=history,
        history_empty=(
            "No limit changed live yet."
            if version == 0
            else f"Version {version}: its change records are not in the live store (see the Audit page)."
        ),
    )


def _changes_text(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """``name: before -> after; ...`` of the fields that changed. The first live change records every field (all
    of them became live from the store): those it left as they were are listed after the changed ones."""
    changed = [n for n in after if n not in before or before[n] != after[n]]
    kept = [n for n in after if n in before and before[n] == after[n]]
    text = "; ".join(f"{n}: {_text(before.get(n)) or 'none'} -> {_text(after[n]) or 'none'}" for n in changed)
    if kept:
        listed = ", ".join(f"{n} = {_text(after[n]) or 'none'}" for n in kept)
        text += f"{'; ' if text else ''}stored as they were: {listed}"
    return text


def parse_limit(name: str, text: Any) -> Any:
    """The form's text for limit ``name`` as the value the settings take; :class:`InputError` if unreadable."""
    if name not in LIMIT_FIELDS:
        raise InputError(f"unknown limit {name!r}")
    label, _unit, kind = LIMIT_FIELDS[name]
    raw = "" if text is None else str(text).strip()
    field_type = {f.name: f for f in dataclasses.fields(Limits)}[name]
    if raw == "":
        if field_type.default is None:
            return None
        raise InputError(f"{label}: a value is required")
    if kind in ("money", "int", "float", "ratio"):
        return _number(label, kind, raw)
    if kind == "bool":
        if raw.lower() in ("yes", "true", "1"):
            return True
        if raw.lower() in ("no", "false", "0"):
            return False
        raise InputError(f"{label}: say yes or no")
    return raw


def _number(label: str, kind: str, raw: str) -> Decimal | int | float:
    """``raw`` read strictly as a number of ``kind``; :class:`InputError` otherwise.

    A comma is only ever a thousands separator between groups of three digits, and only in money and share counts:
    ``1,5`` typed for 1.5 (a decimal comma) used to lose its comma and become 15, a limit ten times looser than
    meant, so it is refused, as is any comma in a multiple or a fraction (``1,500`` there is as likely 1.5 as
    1500). Exponents, underscores and non-finite values are refused: a limit is written out in digits."""
    grouped = kind in ("money", "int")
    if not (GROUPED_NUMBER if grouped else PLAIN_NUMBER).fullmatch(raw):
        if "," in raw:
            where = "commas only between groups of three digits (1,000,000)" if grouped else "no thousands separator"
            raise InputError(f"{label}: {raw!r}: use a point for decimals (1.5), {where}")
        raise InputError(f"{label}: {raw!r} is not a number: write it in digits, with a point for decimals "
                         "(no exponent, no underscores)")  # fmt: skip
    digits = raw.replace(",", "")
    if kind == "money":
        return Decimal(digits)
    if kind == "int":
        if "." in digits:
            raise InputError(f"{label}: {raw!r} must be a whole number")
        return int(digits)
    value = float(digits)
    if not math.isfinite(value):
        raise InputError(f"{label}: {raw!r} is too large")
    return value


def form_changes(seen: LimitsView, form: Mapping[str, Any]) -> dict[str, Any]:
    """The limits the user changed on the form (name -> typed value): the fields whose text differs from what
    ``seen`` showed (not from the live values, which may have moved since)."""
    return {
        name: parse_limit(name, text)
        for name, text in form.items()
        if ("" if text is None else str(text)).strip() != seen.values.get(name)
    }


def change_limits(
    desk: Desk, portfolio_id: str, form: Mapping[str, Any], identity: Identity | None, reason: str, seen: LimitsView
) -> int:
    """Apply the form (name -> text), filled in on ``seen`` (the :class:`LimitsView` the page rendered), as one
    audited change for ``identity`` (a risk manager or an admin; refused with AccessDenied before anything is
    written otherwise); returns the new version. Only the fields that differ from what ``seen`` showed change.
    A reason is required; a bad value is refused with nothing written; so is a change made on limits that moved
    since ``seen`` (:class:`engine.store.LimitsConflictError`, ``LIMITS_CHANGED``: reload). The audit actor is
    ``identity.actor``."""
    who = authorize(identity, Action.EDIT_LIMITS)
    if seen.portfolio_id != portfolio_id:
        raise InputError(f"the form shows the limits of {seen.portfolio_id}, not of {portfolio_id}: reload")
    reason = (reason or "").strip()
    if not reason:
        raise InputError("a reason is required to change a limit")
    changes = form_changes(seen, form)
    if not changes:
        raise InputError("no limit changed")
    manager = desk.risk_manager(portfolio_id)
    return int(manager.set_limits(changes, who.actor, reason, expected_version=seen.version, expected_rev=seen.rev))
