"""Escalation policies (``[escalation]`` in riskdesk.toml) and the escalation state of one alert.

Policies
--------
One policy per severity, each an ordered list of levels; a level says after how long (since the alert
triggered, or since escalation restarted) whom to tell and by which channels::

    [escalation]
    ack_timeout_seconds = 1800   # acknowledged, still active this long after: escalation restarts (0 = never)

    [[escalation.CRITICAL]]      # level 1: at once
    delay_seconds = 0
    recipients = ["desk"]
    channels = ["log", "email", "sms"]

    [[escalation.CRITICAL]]      # level 2: nobody acknowledged within 5 minutes
    delay_seconds = 300
    recipients = ["head_of_risk"]
    channels = ["email", "sms"]

A severity without a policy uses ``[[escalation.default]]`` when given, else a single ``log`` level. Delays
must not decrease from one level to the next; recipients must be named in ``[notifications.recipients]``.

State (kept in the alert record, field ``escalation``; pure functions here, persistence in logic/alerts.py)
-----------------------------------------------------------------------------------------------------------
``{"cycle", "started_at", "level", "max_level", "next_at"}``: ``level`` is the last level notified in this
cycle (-1 = none yet), ``max_level`` the highest ever (the resolved message goes to everyone told),
``next_at`` when the next level is due (None = stopped: acknowledged, inhibited, resolved or no more levels).
Acknowledging stops it; resolving cancels it; the acknowledge timeout starts a new cycle at level 1 whose
first message is the *acknowledged-reminder*.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import ConfigError
from notifications.config import CHANNELS

SEVERITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")


@dataclass(frozen=True)
class EscalationLevel:
    delay_seconds: float
    recipients: tuple[str, ...]
    channels: tuple[str, ...]


@dataclass(frozen=True)
class EscalationPolicy:
    levels: tuple[EscalationLevel, ...]

    def delay(self, level: int) -> float:
        return self.levels[level].delay_seconds


DEFAULT_POLICY = EscalationPolicy((EscalationLevel(0.0, (), ("log",)),))
"""Without any configuration every alert is written to the log at once, and nothing else."""


@dataclass(frozen=True)
class EscalationConfig:
    policies: Mapping[str, EscalationPolicy]
    default: EscalationPolicy = DEFAULT_POLICY
    ack_timeout_seconds: float = 0.0
    """0 = an acknowledged alert never re-escalates."""

    def policy(self, severity: str) -> EscalationPolicy:
        return self.policies.get(severity, self.default)


def escalation_config(extra: Mapping[str, Any], recipients: Collection[str]) -> EscalationConfig:
    """Parse ``settings.extra["escalation"]``; ``recipients`` are the names notifications knows.

    Raises
    ------
    ConfigError
        Unknown key or channel, unknown recipient, decreasing or negative delays, an empty policy.
    """
    raw = extra.get("escalation", {}) or {}
    if not isinstance(raw, Mapping):
        raise ConfigError("escalation: expected a table")
    known = {"ack_timeout_seconds", "default", *SEVERITIES}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"escalation: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
    ack_timeout = raw.get("ack_timeout_seconds", 0.0)
    if (
        isinstance(ack_timeout, bool)
        or not isinstance(ack_timeout, int | float)
        or not math.isfinite(ack_timeout)
        or ack_timeout < 0
    ):
        raise ConfigError(f"escalation.ack_timeout_seconds must be a number >= 0, got {ack_timeout!r}")
    policies = {s: _policy(raw[s], f"escalation.{s}", recipients) for s in SEVERITIES if s in raw}
    default = (
        _policy(raw["default"], "escalation.default", recipients) if "default" in raw else DEFAULT_POLICY
    )
    return EscalationConfig(policies=policies, default=default, ack_timeout_seconds=float(ack_timeout))


def _policy(raw: Any, where: str, recipients: Collection[str]) -> EscalationPolicy:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: expected a non-empty array of levels ([[{where}]] tables)")
    levels = []
    previous = 0.0
    for i, level in enumerate(raw):
        lw = f"{where}[{i}]"
        if not isinstance(level, Mapping):
            raise ConfigError(f"{lw}: expected a table")
        unknown = set(level) - {"delay_seconds", "recipients", "channels"}
        if unknown:
            raise ConfigError(
                f"{lw}: unknown setting(s) {sorted(unknown)}; known: delay_seconds, recipients, channels"
            )
        delay = level.get("delay_seconds", 0.0)
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not math.isfinite(delay)
            or delay < 0
        ):
            raise ConfigError(f"{lw}.delay_seconds must be a number >= 0, got {delay!r}")
        if delay < previous:
            raise ConfigError(
                f"{lw}.delay_seconds ({delay}) is shorter than the previous level's ({previous}): "
                "delays count from the trigger and must not decrease"
            )
        previous = float(delay)
        names = _names(level.get("recipients", []), f"{lw}.recipients")
        missing = [n for n in names if n not in recipients]
        if missing:
            raise ConfigError(
                f"{lw}.recipients: {missing} not defined in [notifications.recipients] "
                f"(defined: {sorted(recipients)})"
            )
        channels = _names(level.get("channels", ["log"]), f"{lw}.channels")
        bad = [c for c in channels if c not in CHANNELS]
        if bad or not channels:
            raise ConfigError(f"{lw}.channels: {bad or 'empty'}; expected some of {list(CHANNELS)}")
        if not names and any(c != "log" for c in channels):
            raise ConfigError(f"{lw}: channels {channels} need recipients")
        levels.append(EscalationLevel(float(delay), tuple(names), tuple(channels)))
    return EscalationPolicy(tuple(levels))


def _names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: expected an array of names")
    return list(dict.fromkeys(value))


# -- state of one alert --------------------------------------------------------------------------------------


def start(alert: dict[str, Any], policy: EscalationPolicy, now: float, cycle: int = 0) -> None:
    """Begin (or, with ``cycle`` > 0, restart) escalation at ``now``: level 1 is due after its delay."""
    previous = alert.get("escalation") or {}
    alert["escalation"] = {
        "cycle": cycle,
        "started_at": now,
        "level": -1,
        "max_level": int(previous.get("max_level", -1)),
        "next_at": now + policy.delay(0),
    }


def due_levels(alert: dict[str, Any], policy: EscalationPolicy, now: float) -> list[int]:
    """Levels (0-based) whose time has come and that have not been notified in this cycle.

    After a long outage several levels may be due at once; each is returned so everyone is told.
    """
    esc = alert.get("escalation") or {}
    if esc.get("next_at") is None or now < esc["next_at"]:
        return []
    out = []
    level = int(esc["level"]) + 1
    while level < len(policy.levels) and esc["started_at"] + policy.delay(level) <= now:
        out.append(level)
        level += 1
    return out


def mark_notified(alert: dict[str, Any], policy: EscalationPolicy, level: int) -> None:
    """Record that ``level`` was notified and schedule the next one (or stop after the last)."""
    esc = alert["escalation"]
    esc["level"] = level
    esc["max_level"] = max(int(esc.get("max_level", -1)), level)
    following = level + 1
    esc["next_at"] = esc["started_at"] + policy.delay(following) if following < len(policy.levels) else None


def stop(alert: dict[str, Any]) -> None:
    """No further level (acknowledged, inhibited or resolved)."""
    esc = alert.get("escalation")
    if esc is not None:
        esc["next_at"] = None


def resume(alert: dict[str, Any], policy: EscalationPolicy, now: float) -> None:
    """After an inhibition ends: continue with the next level, on its schedule but not in the past."""
    esc = alert.get("escalation")
    if esc is None:
        start(alert, policy, now)
        return
    following = int(esc["level"]) + 1
    if following < len(policy.levels):
        esc["next_at"] = max(now, esc["started_at"] + policy.delay(following))


def event_kind(alert: Mapping[str, Any], level: int) -> str:
    """Template of a level's message: first level ``triggered`` (``acknowledged_reminder`` after an
    acknowledge timeout), later levels ``escalated``."""
    if level == 0:
        return (
            "triggered"
            if int((alert.get("escalation") or {}).get("cycle", 0)) == 0
            else "acknowledged_reminder"
        )
    return "escalated"


def notified_levels(alert: Mapping[str, Any], policy: EscalationPolicy) -> list[int]:
    """Every level told about the alert so far (the audience of reminders and of the resolved message)."""
    top = int((alert.get("escalation") or {}).get("max_level", -1))
    return list(range(min(top, len(policy.levels) - 1) + 1))
