"""Escalation policies (``[escalation]`` in riskdesk.toml) and the escalation state of one alert.

Policies
--------
One policy per severity, each an ordered list of levels; a level says after how long (since the alert
triggered, or since escalation restarted or resumed, see :func:`resume`) whom to tell and by which channels::

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

State (kept in the alert record, field ``escalation``; pure functions here, persistence in logic/lifecycle.py)
--------------------------------------------------------------------------------------------------------------
``{"cycle", "started_at", "level", "max_level", "next_at", "told"}``: ``level`` is the last level notified in
this cycle (-1 = none yet), ``max_level`` the highest ever, ``next_at`` when the next level is due (None =
stopped: acknowledged, inhibited, resolved or no more levels), ``told`` the (channel, recipient name) pairs told
about the alert so far, as they were routed then (``{"pairs": [[channel, name], ...]}``): the resolved message
goes to them (:func:`audience`), each by the channel that told them, whatever the routing says by then.
Acknowledging stops it; resolving cancels it; the acknowledge timeout starts a new cycle at level 1 whose
first message is the *acknowledged-reminder*. An inhibited alert tells nobody; when the inhibition ends,
:func:`resume` continues from a point that pages one level, not every level missed meanwhile.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, field_validator
from pydantic.dataclasses import dataclass

from engine.records import AlertStatus, Channel, Severity
from engine.settings import CONFIG, Seconds, Text, validate_config

SEVERITIES: tuple[str, ...] = tuple(Severity)
"""Severities a policy may be given for (:class:`engine.records.Severity`), lowest first."""


def _unique(names: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(names))


def _non_empty_array(what: str) -> BeforeValidator:
    # before the items are validated: an empty array is one error, not one more beside the items' errors
    def check(value: Any) -> Any:
        if not isinstance(value, list | tuple) or not value:
            raise ValueError(f"expected a non-empty array of {what}")
        return value

    return BeforeValidator(check)


@dataclass(frozen=True, config=CONFIG)
class EscalationLevel:
    """One level of a policy: after ``delay_seconds`` (from the trigger) tell ``recipients`` by ``channels``."""

    delay_seconds: Seconds = 0.0
    recipients: Annotated[tuple[Annotated[Text, Field(min_length=1)], ...], AfterValidator(_unique)] = ()
    channels: Annotated[tuple[Channel, ...], _non_empty_array("channels"), AfterValidator(_unique)] = (Channel.LOG,)

    @field_validator("recipients")
    @classmethod
    def _recipients_are_known(cls, names: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        known = (info.context or {}).get("recipients")
        missing = [n for n in names if known is not None and n not in known]
        if missing:
            raise ValueError(f"{missing} not defined in [notifications.recipients] (defined: {sorted(known or ())})")
        return names

    @field_validator("channels")
    @classmethod
    def _someone_is_reachable(cls, channels: tuple[Channel, ...], info: ValidationInfo) -> tuple[Channel, ...]:
        """A level whose recipients have no address for any of its channels would page nobody: the outbox entries
        could only be dropped. Refused here, at load, rather than found out during an incident. Checked only
        when every recipient's addresses are known (``context["addresses"]``: name -> channels it has an
        address for, from ``[notifications.recipients]``); ``log`` reaches the log, never a person."""
        addresses = (info.context or {}).get("addresses")
        names = info.data.get("recipients") or ()
        paging = [c for c in channels if c != Channel.LOG]
        if addresses is None or not names or not paging or any(n not in addresses for n in names):
            return channels
        if not any(c in addresses[n] for n in names for c in paging):
            have = {n: sorted(addresses[n]) for n in names}
            raise ValueError(
                f"{[str(c) for c in paging]} reach nobody: no recipient of this level has an address for them "
                f"(addresses: {have}); add one in [notifications.recipients] or change the level's channels"
            )
        return channels

    def __post_init__(self) -> None:
        if not self.recipients and any(c != Channel.LOG for c in self.channels):
            raise ValueError(f"channels {[str(c) for c in self.channels]} need recipients")


def _delays_do_not_decrease(levels: tuple[EscalationLevel, ...]) -> tuple[EscalationLevel, ...]:
    for i in range(1, len(levels)):
        previous, delay = levels[i - 1].delay_seconds, levels[i].delay_seconds
        if delay < previous:
            raise ValueError(
                f"[{i}].delay_seconds ({delay}) is shorter than the previous level's ({previous}): "
                "delays count from the trigger and must not decrease"
            )
    return levels


Levels = Annotated[tuple[EscalationLevel, ...], _non_empty_array("levels"), AfterValidator(_delays_do_not_decrease)]
"""A policy as written: a non-empty array of ``[[escalation.<SEVERITY>]]`` tables, delays not decreasing."""


@dataclass(frozen=True, config=CONFIG)
class EscalationPolicy:
    levels: Levels

    def delay(self, level: int) -> float:
        return self.levels[level].delay_seconds


DEFAULT_POLICY = EscalationPolicy((EscalationLevel(0.0, (), (Channel.LOG,)),))
"""Without any configuration every alert is written to the log at once, and nothing else."""


@dataclass(frozen=True, config=CONFIG)
class EscalationTable:
    """The ``[escalation]`` table as written: the acknowledge timeout and a policy per severity (or default).

    The field names are the :class:`~engine.records.Severity` values, so the table's keys are the severities.
    """

    ack_timeout_seconds: Seconds = 0.0
    """0 = an acknowledged alert never re-escalates."""
    default: Levels | None = None
    LOW: Levels | None = None
    MEDIUM: Levels | None = None
    HIGH: Levels | None = None
    CRITICAL: Levels | None = None


@dataclass(frozen=True, config=CONFIG)
class EscalationConfig:
    policies: Mapping[str, EscalationPolicy]
    """Severity -> its policy (keys are :class:`~engine.records.Severity` members)."""
    default: EscalationPolicy = DEFAULT_POLICY
    ack_timeout_seconds: Seconds = 0.0
    """0 = an acknowledged alert never re-escalates."""

    def policy(self, severity: str) -> EscalationPolicy:
        return self.policies.get(severity, self.default)


def _addressed_channels(extra: Mapping[str, Any]) -> dict[str, frozenset[str]] | None:
    """Recipient name -> the channels ``[notifications.recipients]`` gives it an address for (an ``env:NAME``
    counts: whether the variable is set is a run-time matter, recorded as ``skipped``); None when the table is
    not there to read (the caller named the recipients itself)."""
    section = extra.get("notifications")
    table = section.get("recipients") if isinstance(section, Mapping) else None
    if not isinstance(table, Mapping):
        return None
    return {
        str(name): frozenset(str(c) for c, a in entry.items() if isinstance(a, str) and a.strip())
        for name, entry in table.items()
        if isinstance(entry, Mapping)
    }


def escalation_config(extra: Mapping[str, Any], recipients: Collection[str]) -> EscalationConfig:
    """Parse ``settings.extra["escalation"]``; ``recipients`` are the names notifications knows.

    Raises
    ------
    ConfigError
        Unknown key or channel, unknown recipient, decreasing or negative delays, an empty policy, a level whose
        recipients have no address for any of its channels (it would page nobody), each named by its path
        (``escalation.HIGH[0].recipients: ['nobody'] not defined in [notifications.recipients]``).
    """
    table = validate_config(
        EscalationTable,
        extra.get("escalation", {}) or {},
        "escalation",
        context={"recipients": frozenset(recipients), "addresses": _addressed_channels(extra)},
    )
    policies: dict[str, EscalationPolicy] = {
        s: EscalationPolicy(levels) for s in Severity if (levels := getattr(table, s.value)) is not None
    }
    default = EscalationPolicy(table.default) if table.default is not None else DEFAULT_POLICY
    return EscalationConfig(policies=policies, default=default, ack_timeout_seconds=table.ack_timeout_seconds)


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
    if "told" in previous:
        alert["escalation"]["told"] = previous["told"]


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
    """Record that ``level`` was notified (and whom it told, :func:`record_told`) and schedule the next one (or
    stop after the last)."""
    esc = alert["escalation"]
    record_told(alert, message_pairs(policy.levels[level].recipients, policy.levels[level].channels))
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
    """After an inhibition ends (or the rule's severity was lowered, ``policy`` then the new severity's):
    continue where the escalation stopped, from ``now``.

    - An acknowledged alert stays stopped: acknowledging stops escalation, and its acknowledge timeout
      restarts it.
    - An alert whose acknowledge timeout passed while it was inhibited (TRIGGERED again, in a cycle that began
      before the acknowledgement) starts now the cycle the timeout could not start: level 1 is told the
      acknowledged-reminder, the other levels follow on their delays.
    - Otherwise the next level is due on its schedule but not in the past, and the levels after it keep their
      spacing from it: after an inhibition longer than several delays the next level is told, not every level
      missed meanwhile at once.

    Notes
    -----
    The schedule then counts from ``started_at = due - delay(next level)``, so :func:`due_levels` and
    :func:`mark_notified` keep working on it unchanged.
    """
    esc = alert.get("escalation")
    if esc is None:
        start(alert, policy, now)
        return
    if alert.get("status") == AlertStatus.ACKNOWLEDGED:
        return
    acknowledged_at = alert.get("acknowledged_at")
    if acknowledged_at is not None and esc["started_at"] <= acknowledged_at:
        start(alert, policy, now, cycle=int(esc.get("cycle", 0)) + 1)
        return
    following = int(esc["level"]) + 1
    if following >= len(policy.levels):  # every level told (``policy`` may be shorter than the one that did)
        esc["next_at"] = None
        return
    due = max(now, esc["started_at"] + policy.delay(following))
    esc["started_at"] = due - policy.delay(following)
    esc["next_at"] = due


def event_kind(alert: Mapping[str, Any], level: int) -> str:
    """Template of a level's message: first level ``triggered`` (``acknowledged_reminder`` after an
    acknowledge timeout), later levels ``escalated``."""
    if level == 0:
        return "triggered" if int((alert.get("escalation") or {}).get("cycle", 0)) == 0 else "acknowledged_reminder"
    return "escalated"


def notified_levels(alert: Mapping[str, Any], policy: EscalationPolicy) -> list[int]:
    """Every level told about the alert so far (the audience of reminders, routed as ``policy`` says now)."""
    top = int((alert.get("escalation") or {}).get("max_level", -1))
    return list(range(min(top, len(policy.levels) - 1) + 1))


def message_pairs(recipients: Collection[str], channels: Collection[str]) -> list[tuple[Channel, str]]:
    """(channel, recipient name) pairs of one message to ``recipients`` by ``channels``: ``log`` once (as
    recipient ``log``), every other channel once per distinct recipient."""
    pairs: list[tuple[Channel, str]] = []
    names = [str(n) for n in dict.fromkeys(recipients)]
    for channel in dict.fromkeys(Channel(c) for c in channels):
        if channel is Channel.LOG:
            pairs.append((channel, Channel.LOG.value))
        else:
            pairs.extend((channel, name) for name in names)
    return pairs


def level_pairs(policy: EscalationPolicy, levels: Collection[int]) -> list[tuple[Channel, str]]:
    """Everyone ``levels`` of ``policy`` tell, each by its own level's channels (no recipient gets a channel
    only another level uses)."""
    told = [message_pairs(policy.levels[k].recipients, policy.levels[k].channels) for k in levels]
    return list(dict.fromkeys(p for pairs in told for p in pairs))


def record_told(alert: dict[str, Any], pairs: Collection[tuple[str, str]]) -> None:
    """Add ``pairs`` (channel, recipient name: a message just queued about ``alert``) to those told about it."""
    esc = alert.setdefault("escalation", {})
    told = [tuple(p) for p in _told_pairs(esc.get("told"))]
    esc["told"] = {"pairs": [list(p) for p in dict.fromkeys([*told, *((str(c), str(n)) for c, n in pairs)])]}


def _told_pairs(told: Any) -> list[tuple[Channel, str]]:
    """The pairs of a ``told`` record; one stored as ``{"recipients", "channels"}`` (before the pairs were kept)
    is every recipient by every channel, as it was then."""
    if not isinstance(told, Mapping):
        return []
    if "pairs" in told:
        return [(Channel(c), str(n)) for c, n in told.get("pairs") or ()]
    return message_pairs(told.get("recipients") or (), told.get("channels") or ())


def audience(alert: Mapping[str, Any], policy: EscalationPolicy) -> list[tuple[Channel, str]]:
    """(channel, recipient name) pairs of the resolved message: everyone told about the alert, by the channel
    that told them (:func:`record_told`), not whoever the routing names now. An alert stored before that record
    existed falls back to the levels told (:func:`notified_levels`) as ``policy`` routes them."""
    told = (alert.get("escalation") or {}).get("told")
    if told is not None:
        return _told_pairs(told)
    return level_pairs(policy, notified_levels(alert, policy))


# -- a rule's own routing ------------------------------------------------------------------------------------


def route_of(channels: Collection[str], recipients: Collection[str]) -> dict[str, list[str]] | None:
    """The routing an alert record keeps for its rule's own ``channels`` / ``recipients`` (None: neither set,
    the severity's policy applies as written)."""
    if not channels and not recipients:
        return None
    return {"channels": [str(c) for c in channels], "recipients": [str(r) for r in recipients]}


def routed_policy(policy: EscalationPolicy, route: Mapping[str, Any] | None) -> EscalationPolicy:
    """``policy`` with its first level told by the rule's own channels and recipients (``route``, see
    :func:`route_of`); a part the rule leaves empty comes from that first level. Later levels (escalation
    when nobody acknowledges) stay the policy's. A channel other than ``log`` needs recipients: without any,
    only ``log`` is kept."""
    if not route:
        return policy
    first = policy.levels[0]
    recipients = tuple(route.get("recipients") or ()) or first.recipients
    channels = tuple(Channel(c) for c in (route.get("channels") or ())) or first.channels
    if not recipients:
        channels = tuple(c for c in channels if c == Channel.LOG) or (Channel.LOG,)
    level = EscalationLevel(first.delay_seconds, recipients, channels)
    return EscalationPolicy((level, *policy.levels[1:]))
