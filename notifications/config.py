"""The ``[notifications]`` settings section and the channel secrets from the environment.

``riskdesk.toml`` holds only what is not secret: timing (group window, repeat interval), retries, the
per-recipient rate limit and the recipients (name -> address per channel). Connection secrets come from the
environment, or from a file named by ``<NAME>_FILE`` (Docker/Kubernetes secrets style), never from the file::

    SMTP_HOST, SMTP_PORT, SMTP_USER, SMTP_PASSWORD, SMTP_SECURITY (starttls | ssl | none), SMTP_FROM,
    SMTP_TIMEOUT, SMTP_CA_FILE (extra CA bundle for a private relay)
    TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM
    RISKDESK_WEBHOOK_URL (or any variable a recipient names with ``webhook = "env:NAME"``)

Any recipient address may be written ``"env:NAME"`` to read it from the environment (a Slack webhook URL is
a secret). A channel whose secrets are missing is *not configured*: deliveries to it are recorded as
``skipped`` in the delivery log, and the ``log`` channel always works.

Example::

    [notifications]
    group_wait_seconds = 5          # a new group waits this long to collect sibling alerts
    group_interval_seconds = 60     # then at most one message per recipient and portfolio per interval
    repeat_interval_seconds = 3600  # remind about an alert still active and unacknowledged (0 = never)
    sms_fallback = true             # a CRITICAL email that cannot be delivered goes out by SMS
    [notifications.retry]
    max_attempts = 3
    backoff_seconds = 1.0
    backoff_multiplier = 2.0
    max_backoff_seconds = 30.0
    [notifications.rate_limit]
    max_messages = 20               # per recipient address and channel ...
    per_seconds = 3600              # ... in this sliding window (over it: held back and grouped)
    [notifications.recipients]
    desk = { email = "risk-desk@example.com", sms = "+15550100", webhook = "env:RISKDESK_WEBHOOK_URL" }
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

CHANNELS = ("log", "email", "sms", "webhook")
"""Every channel name a policy or recipient may use."""

ADDRESSED_CHANNELS = ("email", "sms", "webhook")
"""Channels that need a recipient address (``log`` does not)."""

DEFAULT_WEBHOOK_ENV = "RISKDESK_WEBHOOK_URL"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of transient failures: waits ``backoff * multiplier**(attempt-1)``, capped."""

    max_attempts: int = 3
    backoff_seconds: float = 1.0
    backoff_multiplier: float = 2.0
    max_backoff_seconds: float = 30.0

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (2, 3, ...)."""
        return min(self.max_backoff_seconds, self.backoff_seconds * self.backoff_multiplier ** (attempt - 2))


@dataclass(frozen=True)
class RateLimit:
    max_messages: int = 20
    per_seconds: float = 3600.0

    @property
    def enabled(self) -> bool:
        return self.max_messages > 0 and self.per_seconds > 0


@dataclass(frozen=True)
class Recipient:
    name: str
    addresses: Mapping[str, str] = field(default_factory=dict)
    """Channel -> address (email address, E.164 phone number, webhook URL), secrets already resolved."""
    unresolved: Mapping[str, str] = field(default_factory=dict)
    """Channel -> ``env:NAME`` reference whose variable is not set (the address is unusable)."""


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    security: str
    """``starttls`` (default, port 587), ``ssl`` (implicit TLS, port 465) or ``none`` (a local relay)."""
    sender: str
    user: str | None = None
    password: str | None = None
    timeout: float = 10.0
    ca_file: str | None = None


@dataclass(frozen=True)
class TwilioConfig:
    account_sid: str
    auth_token: str
    sender: str


@dataclass(frozen=True)
class NotificationConfig:
    group_wait_seconds: float = 0.0
    group_interval_seconds: float = 60.0
    repeat_interval_seconds: float = 3600.0
    sms_fallback: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rate_limit: RateLimit = field(default_factory=RateLimit)
    recipients: Mapping[str, Recipient] = field(default_factory=dict)
    smtp: SmtpConfig | None = None
    twilio: TwilioConfig | None = None

    def channel_configured(self, channel: str) -> bool:
        if channel == "email":
            return self.smtp is not None
        if channel == "sms":
            return self.twilio is not None
        return channel in ("log", "webhook")


_TOP_KEYS = {
    "group_wait_seconds",
    "group_interval_seconds",
    "repeat_interval_seconds",
    "sms_fallback",
    "retry",
    "rate_limit",
    "recipients",
}


def notification_config(extra: Mapping[str, Any], env: Mapping[str, str] | None = None) -> NotificationConfig:
    """Parse ``settings.extra["notifications"]`` and the channel secrets of ``env`` (default ``os.environ``).

    Raises
    ------
    ConfigError
        For an unknown key, a negative or non-finite duration or an unknown channel of a recipient. An
        ``env:`` address whose variable is unset leaves that address out (deliveries to it are logged as
        ``skipped`` with the variable's name) rather than stopping the monitor.
    """
    env = os.environ if env is None else env
    raw = extra.get("notifications", {}) or {}
    where = "notifications"
    _mapping(raw, where)
    _no_unknown(raw, _TOP_KEYS, where)
    retry_raw = _mapping(raw.get("retry", {}), f"{where}.retry")
    _no_unknown(
        retry_raw,
        {"max_attempts", "backoff_seconds", "backoff_multiplier", "max_backoff_seconds"},
        f"{where}.retry",
    )
    retry = RetryPolicy(
        max_attempts=_int(retry_raw.get("max_attempts", 3), f"{where}.retry.max_attempts", minimum=1),
        backoff_seconds=_number(retry_raw, "backoff_seconds", 1.0, f"{where}.retry"),
        backoff_multiplier=_number(retry_raw, "backoff_multiplier", 2.0, f"{where}.retry"),
        max_backoff_seconds=_number(retry_raw, "max_backoff_seconds", 30.0, f"{where}.retry"),
    )
    if retry.backoff_multiplier < 1:
        raise ConfigError(f"{where}.retry.backoff_multiplier must be >= 1")
    rl_raw = _mapping(raw.get("rate_limit", {}), f"{where}.rate_limit")
    _no_unknown(rl_raw, {"max_messages", "per_seconds"}, f"{where}.rate_limit")
    rate_limit = RateLimit(
        max_messages=_int(rl_raw.get("max_messages", 20), f"{where}.rate_limit.max_messages", minimum=0),
        per_seconds=_number(rl_raw, "per_seconds", 3600.0, f"{where}.rate_limit"),
    )
    recipients: dict[str, Recipient] = {}
    for name, addresses in _mapping(raw.get("recipients", {}), f"{where}.recipients").items():
        rw = f"{where}.recipients.{name}"
        _mapping(addresses, rw)
        _no_unknown(addresses, set(ADDRESSED_CHANNELS), rw)
        resolved, unresolved = {}, {}
        for channel, address in addresses.items():
            if not isinstance(address, str) or not address.strip():
                raise ConfigError(f"{rw}.{channel}: expected a non-empty string")
            value = _resolve_address(address.strip(), env)
            if value:
                resolved[channel] = value
            else:
                unresolved[channel] = address.strip()
        recipients[str(name)] = Recipient(str(name), resolved, unresolved)
    sms_fallback = raw.get("sms_fallback", True)
    if not isinstance(sms_fallback, bool):
        raise ConfigError(f"{where}.sms_fallback: expected true or false")
    return NotificationConfig(
        group_wait_seconds=_number(raw, "group_wait_seconds", 0.0, where),
        group_interval_seconds=_number(raw, "group_interval_seconds", 60.0, where),
        repeat_interval_seconds=_number(raw, "repeat_interval_seconds", 3600.0, where),
        sms_fallback=sms_fallback,
        retry=retry,
        rate_limit=rate_limit,
        recipients=recipients,
        smtp=smtp_from_env(env),
        twilio=twilio_from_env(env),
    )


def secret(env: Mapping[str, str], name: str) -> str | None:
    """``env[name]``, else the stripped contents of the file named by ``env[name + "_FILE"]``, else None."""
    value = env.get(name)
    if value:
        return value
    path = env.get(f"{name}_FILE")
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path}: cannot read the secrets file ({exc})") from exc
        return text or None
    return None


def smtp_from_env(env: Mapping[str, str]) -> SmtpConfig | None:
    """SMTP settings from ``SMTP_*`` variables; None when ``SMTP_HOST`` is unset (email not configured)."""
    host = secret(env, "SMTP_HOST")
    if not host:
        return None
    security = (secret(env, "SMTP_SECURITY") or "starttls").lower()
    if security not in ("starttls", "ssl", "none"):
        raise ConfigError(f"SMTP_SECURITY={security!r}: expected starttls, ssl or none")
    default_port = {"starttls": 587, "ssl": 465, "none": 25}[security]
    port_raw = secret(env, "SMTP_PORT")
    try:
        port = int(port_raw) if port_raw else default_port
    except ValueError as exc:
        raise ConfigError(f"SMTP_PORT={port_raw!r} is not a port number") from exc
    if not 0 < port < 65536:
        raise ConfigError(f"SMTP_PORT={port} is out of range")
    sender = secret(env, "SMTP_FROM")
    user = secret(env, "SMTP_USER")
    if not sender:
        sender = user if user and "@" in user else f"riskdesk@{host}"
    timeout_raw = secret(env, "SMTP_TIMEOUT")
    try:
        timeout = float(timeout_raw) if timeout_raw else 10.0
    except ValueError as exc:
        raise ConfigError(f"SMTP_TIMEOUT={timeout_raw!r} is not a number") from exc
    return SmtpConfig(
        host=host,
        port=port,
        security=security,
        sender=sender,
        user=user,
        password=secret(env, "SMTP_PASSWORD"),
        timeout=timeout,
        ca_file=secret(env, "SMTP_CA_FILE"),
    )


def twilio_from_env(env: Mapping[str, str]) -> TwilioConfig | None:
    """Twilio credentials; None unless all of account SID, auth token and sender number are set."""
    sid, token, sender = (secret(env, n) for n in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM"))
    if not (sid and token and sender):
        return None
    return TwilioConfig(account_sid=sid, auth_token=token, sender=sender)


def _resolve_address(address: str, env: Mapping[str, str]) -> str:
    """The address itself, or for ``env:NAME`` the variable's value ("" when unset)."""
    if address.startswith("env:"):
        return secret(env, address[4:]) or ""
    return address


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table")
    return value


def _no_unknown(value: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = set(value) - known
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")


def _number(table: Mapping[str, Any], key: str, default: float, where: str) -> float:
    return _seconds(table.get(key, default), f"{where}.{key}")


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}: must be a finite number >= 0, got {value!r}")
    return float(value)


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{where}: must be >= {minimum}, got {value}")
    return value
