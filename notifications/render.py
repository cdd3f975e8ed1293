"""Render notification events with the Jinja2 templates under ``notifications/templates/``.

One template per event kind (``triggered.j2``, ``escalated.j2``, ``acknowledged_reminder.j2``,
``resolved.j2``), each with three blocks: ``subject``, ``body`` (email, log, webhook) and ``short`` (SMS).
Several events for one recipient within a group window become one message through ``digest.j2``.

An *event* is the plain dict built by ``logic/alerts.py``::

    {"event_id", "kind", "portfolio_id", "ts", "level", "repeat", "alert": {alert_id, rule_id, severity,
     description, metric, op, threshold, value, unit, status, stale, triggered_at, acknowledged_by, ...}}

Values are formatted for humans by the ``metric`` filter according to the metric's ``unit``: ``money``
($1,234.56), ``fraction`` (12.34%; 5.0 bp below 1%), ``percent`` (already in percent points: 150.00%),
``ratio`` (1.52x), ``seconds`` (45 s), ``count`` and ``number``. ``value | metric(unit, threshold)`` and
``threshold | metric(unit, value)`` show the two at one precision fine enough to tell them apart.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from engine.records import SEVERITY_RANK, Severity
from notifications.channels import Message

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
KINDS = ("triggered", "escalated", "acknowledged_reminder", "resolved")
SEVERITY_ORDER = SEVERITY_RANK
"""Kept for callers that import it from here; the ranking is :data:`engine.records.SEVERITY_RANK`."""
DIGEST_MAX_SECTIONS = 20
"""A digest shows this many events in full and counts the rest (a storm must not make a 1 MB email)."""


BASIS_POINTS_BELOW = 0.01
"""A fraction below 1% (and its threshold, when shown beside it) reads in basis points: ``5.0 bp``."""
MAX_EXTRA_DECIMALS = 6
"""A value and its threshold get up to this many more decimals than usual until they read differently."""
SAME_REL_TOL = 1e-9
SAME_ABS_TOL = 1e-12
"""A value and its threshold this close (``math.isclose``) are float dust apart, not a breach by a hair: they get
no extra decimals (``100.00% (>= 100.00%)`` for 1.0000000000000002 against 1.0, not eight identical decimals)."""
Formatter = Callable[[float, int], str]
MIN_SIGNIFICANT = 2
"""A fraction or ratio never shows fewer significant digits than this (a 0.5 bp threshold is not ``1 bp``)."""


def money(value: Any, decimals: int = 2) -> str:
    if not _finite(value):
        return str(value)
    text = f"{float(value):z,.{decimals}f}"  # ``z``: what rounds to zero reads $0.00, never -$0.00
    return f"-${text[1:]}" if text.startswith("-") else f"${text}"


def percent(value: Any, digits: int = 2) -> str:
    """A fraction as percent: 0.1234 -> 12.34%."""
    return f"{float(value) * 100:z.{digits}f}%" if _finite(value) else str(value)


def format_metric(value: Any, unit: str = "number", versus: Any = None) -> str:
    """``value`` for humans in its metric's ``unit``; ``versus`` (its threshold, or the value beside a threshold)
    is formatted with it: both get the same scale and enough decimals to read differently when they differ.

    Rounding is monotone, so once the two texts differ they also show which one is larger: a breach never
    reads ``2.0% (> 2.0%)`` or ``0.1% (> 0.1%)`` (a 6 bp drawdown against a 5 bp limit). What rounds to zero reads
    without a sign (``0.00%``, never ``-0.00%`` beside ``0.00%``).
    """
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if not _finite(value):
        return str(value)
    v = float(value)
    other = float(versus) if _finite(versus) else None
    if unit in ("fraction", "percent"):
        scale = 1.0 if unit == "fraction" else 0.01  # ``percent`` metrics are already in percent points
        return _fraction(v * scale, None if other is None else other * scale)
    if unit == "ratio":
        return _paired(v, other, 2, lambda x, d: f"{x:z,.{d}f}x", significant=True)
    if unit == "money":
        return _paired(v, other, 2, money)
    if unit == "seconds":
        return duration(v)
    if unit == "count":
        return f"{int(v):d}"
    return _paired(v, other, 4, lambda x, d: f"{x:z,.{d}g}")


def _fraction(v: float, other: float | None) -> str:
    """Percent with two decimals, or basis points when both numbers are below 1% (and not both zero)."""
    largest = max(abs(v), abs(other) if other is not None else 0.0)
    if 0 < largest < BASIS_POINTS_BELOW:
        bp = None if other is None else other * 1e4
        return _paired(v * 1e4, bp, 0, lambda x, d: f"{x:z,.{d}f} bp", significant=True)
    pct = None if other is None else other * 100
    return _paired(v * 100, pct, 2, lambda x, d: f"{x:z,.{d}f}%", significant=True)


def _paired(v: float, other: float | None, base: int, fmt: Formatter, significant: bool = False) -> str:
    """``fmt(v, digits)`` with ``base`` digits, more for :data:`MIN_SIGNIFICANT` of the larger number
    (``significant``), more again while ``v`` and ``other`` would read the same though they differ; never more
    than ``base`` + :data:`MAX_EXTRA_DECIMALS`.

    Numbers within :data:`SAME_REL_TOL` / :data:`SAME_ABS_TOL` of each other count as equal (float dust), and
    when even the most digits do not tell two numbers apart they are shown at the usual precision: extra digits
    that read the same tell a reader nothing. The digits depend on both numbers symmetrically, so a value and its
    threshold formatted each ``versus`` the other come out at the same precision."""
    digits, top = base, base + MAX_EXTRA_DECIMALS
    largest = max(abs(v), abs(other) if other is not None else 0.0)
    if significant and largest > 0:  # by the larger one: float dust beside a threshold gets no 300 decimals
        digits = min(top, max(base, MIN_SIGNIFICANT - 1 - math.floor(math.log10(largest))))
    if other is not None and not math.isclose(v, other, rel_tol=SAME_REL_TOL, abs_tol=SAME_ABS_TOL):
        more = digits
        while more < top and fmt(v, more) == fmt(other, more):
            more += 1
        if fmt(v, more) != fmt(other, more):
            digits = more
    return fmt(v, digits)


def duration(seconds: Any) -> str:
    if not _finite(seconds):
        return str(seconds)
    s = float(seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def timestamp(epoch: Any, tz: str = "UTC") -> str:
    if not _finite(epoch):
        return "-"
    try:
        from zoneinfo import ZoneInfo

        zone: dt.tzinfo = ZoneInfo(tz)
    except Exception:  # an unknown zone name must not stop a notification
        zone = dt.UTC
    return dt.datetime.fromtimestamp(float(epoch), tz=zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class Renderer:
    """Turns the events queued for one recipient into one :class:`Message`."""

    def __init__(self, template_dir: Path = TEMPLATE_DIR, timezone: str = "UTC") -> None:
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(template_dir)),
            autoescape=False,  # plain-text email, SMS and log lines; nothing here is HTML
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        self.timezone = timezone
        self.env.filters.update(
            money=money,
            percent=percent,
            metric=format_metric,
            duration=duration,
            ts=lambda e: timestamp(e, self.timezone),
        )

    def render_event(self, event: Mapping[str, Any]) -> tuple[str, str, str]:
        """(subject, body, short) of one event."""
        kind = event.get("kind")
        if kind not in KINDS:
            raise ValueError(f"unknown notification kind {kind!r}; expected one of {KINDS}")
        template = self.env.get_template(f"{kind}.j2")
        context = template.new_context({"e": event, "a": event["alert"]})
        parts = []
        for block in ("subject", "body", "short"):
            text = "".join(template.blocks[block](context)).strip()
            parts.append(" ".join(text.split()) if block != "body" else text)
        return parts[0], parts[1], parts[2]

    def render(self, portfolio_id: str, events: Sequence[Mapping[str, Any]]) -> Message:
        """One message for ``events`` (one event: its own template; several: the digest)."""
        if not events:
            raise ValueError("nothing to render")
        severity = max(
            (e["alert"].get("severity", Severity.LOW) for e in events), key=lambda s: SEVERITY_ORDER.get(s, 0)
        )
        payload = {"portfolio_id": portfolio_id, "events": [_event_summary(e) for e in events]}
        if len(events) == 1:
            subject, body, short = self.render_event(events[0])
            return Message(subject, body, short, severity, payload)
        ordered = sorted(
            events, key=lambda e: (-SEVERITY_ORDER.get(e["alert"].get("severity"), 0), e.get("ts", 0))
        )
        shown = ordered[:DIGEST_MAX_SECTIONS]
        sections = [self.render_event(e) for e in shown]
        counts = Counter(e["kind"] for e in events)
        template = self.env.get_template("digest.j2")
        context = template.new_context(
            {
                "portfolio_id": portfolio_id,
                "severity": severity,
                "count": len(events),
                "counts": dict(counts),
                "sections": sections,
                "hidden": len(events) - len(shown),
            }
        )
        subject = " ".join("".join(template.blocks["subject"](context)).split())
        body = "".join(template.blocks["body"](context)).strip()
        short = " ".join("".join(template.blocks["short"](context)).split())
        return Message(subject, body, short, severity, payload)


def _event_summary(event: Mapping[str, Any]) -> dict[str, Any]:
    alert = event["alert"]
    keys = ("alert_id", "rule_id", "severity", "metric", "op", "threshold", "value", "status", "description")
    times = ("triggered_at", "resolved_at")  # the alertmanager channel's startsAt / endsAt
    return {
        "event_id": event.get("event_id"),
        "kind": event.get("kind"),
        "ts": event.get("ts"),
        "level": event.get("level"),
        **{k: alert.get(k) for k in keys + times},
    }
