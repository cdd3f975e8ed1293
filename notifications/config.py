"""The ``[notifications]`` settings section and the channel secrets from the environment.

``riskdesk.toml`` holds only what is not secret: timing (group window, repeat interval), retries, the
per-recipient rate limit and the recipients (name -> address per channel). Connection secrets come from the
environment, or from a file named by ``<NAME>_FILE`` (Docker/Kubernetes secrets style), never from the file::

    SMTP_HOST, SMTP_PORT, SMTP_USER, SMTP_PASSWORD, SMTP_SECURITY (starttls | ssl | none), SMTP_FROM,
    SMTP_TIMEOUT, SMTP_CA_FILE (extra CA bundle for a private relay), SMTP_ALLOW_PLAINTEXT_AUTH (1: allow
    SMTP_USER's login with SMTP_SECURITY=none; without it such email is skipped, the login never sent in clear)
    TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM, TWILIO_TIMEOUT (seconds, default 10, at most 15)
    RISKDESK_WEBHOOK_URL (or any variable a recipient names with ``webhook = "env:NAME"``)

The ``alertmanager`` channel posts to the Alertmanager whose base URL a recipient gives
(``ops = { alertmanager = "http://127.0.0.1:9093" }``); ``[notifications.alertmanager]`` sets how long a
firing alert stays active there without news from Riskdesk (notifications/alertmanager.py).

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

import os
from collections.abc import Mapping
from dataclasses import field, fields
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, SecretStr
from pydantic.dataclasses import dataclass

from engine.errors import ConfigError
from engine.records import Channel
from engine.settings import CONFIG, Flag, Seconds, Table, at_least, validate_config

CHANNELS: tuple[str, ...] = tuple(c.value for c in Channel)
"""Every channel name a policy or recipient may use (:class:`engine.records.Channel`, as plain strings)."""

ADDRESSED_CHANNELS: tuple[str, ...] = tuple(c.value for c in Channel if c is not Channel.LOG)
"""Channels that need a recipient address (``log`` does not)."""

DEFAULT_WEBHOOK_ENV = "RISKDESK_WEBHOOK_URL"

SmtpSecurity = Literal["starttls", "ssl", "none"]
SMTP_DEFAULT_PORTS: Mapping[str, int] = {"starttls": 587, "ssl": 465, "none": 25}
TWILIO_DEFAULT_TIMEOUT_SECONDS = 10.0
TWILIO_MAX_TIMEOUT_SECONDS = 15.0
"""``TWILIO_TIMEOUT`` may not exceed what the flush lease budgets per attempt
(:data:`notifications.delivery.CHANNEL_TIMEOUT_BUDGET_SECONDS`): a hung Twilio or proxy then fails the
attempt (transient, retried) before the lease the notifier renewed for the message runs out."""


def _address(value: Any) -> Any:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value.strip()


Address = Annotated[str, BeforeValidator(_address)]


@dataclass(frozen=True, config=CONFIG)
class RetryPolicy:
    """Retries of transient failures. Within a flush, bounded: ``max_attempts``, waiting ``backoff *
    multiplier**(attempt-1)``, capped. A message whose attempts all failed transiently stays queued and is tried
    again by a later flush, ``requeue_seconds`` after the failure, doubling per failure up to
    ``max_requeue_seconds``, until ``give_up_seconds`` after its first failure (notifications/retry.py)."""

    max_attempts: Annotated[int, at_least(1)] = 3
    backoff_seconds: Seconds = 1.0
    backoff_multiplier: Annotated[Seconds, Field(ge=1)] = 2.0
    max_backoff_seconds: Seconds = 30.0
    requeue_seconds: Seconds = 30.0
    max_requeue_seconds: Seconds = 900.0
    give_up_seconds: Seconds = 86400.0

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (2, 3, ...)."""
        return min(self.max_backoff_seconds, self.backoff_seconds * self.backoff_multiplier ** (attempt - 2))

    def requeue_delay(self, failures: int) -> float:
        """Seconds from a message's ``failures``-th transient failure (1, 2, ...) to its next try."""
        return min(self.max_requeue_seconds, self.requeue_seconds * 2.0 ** (failures - 1))


@dataclass(frozen=True, config=CONFIG)
class RateLimit:
    max_messages: Annotated[int, at_least(0)] = 20
    per_seconds: Seconds = 3600.0

    @property
    def enabled(self) -> bool:
        return self.max_messages > 0 and self.per_seconds > 0


@dataclass(frozen=True, config=CONFIG)
class RecipientAddresses:
    """One ``[notifications.recipients]`` entry as written: an address (or ``env:NAME``) per channel."""

    email: Address | None = None
    sms: Address | None = None
    webhook: Address | None = None
    alertmanager: Address | None = None
    """An Alertmanager's base URL (``http://host:9093``), or ``env:NAME``."""

    def items(self) -> list[tuple[str, str]]:
        return [(c, a) for c in ADDRESSED_CHANNELS if (a := getattr(self, c)) is not None]


@dataclass(frozen=True, config=CONFIG)
class DeliveryPolicy:
    """Grouping, reminders, SMS fallback, retries and rate limit: the part of ``[notifications]`` taken as
    written, shared by :class:`NotificationsTable` and :class:`NotificationConfig` (defaults spelled once)."""

    group_wait_seconds: Seconds = 0.0
    group_interval_seconds: Seconds = 60.0
    repeat_interval_seconds: Seconds = 3600.0
    sms_fallback: Flag = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rate_limit: RateLimit = field(default_factory=RateLimit)

    def policy(self) -> dict[str, Any]:
        """The :class:`DeliveryPolicy` fields of this object, by name (to build another subclass from it)."""
        return {f.name: getattr(self, f.name) for f in fields(DeliveryPolicy)}


@dataclass(frozen=True, config=CONFIG)
class AlertmanagerSettings:
    """``[notifications.alertmanager]``: how Riskdesk alerts are posted to an Alertmanager."""

    active_for_seconds: Annotated[Seconds, Field(gt=0)] = 86_400.0
    """A firing alert is posted with ``endsAt`` this far ahead; every escalation or reminder posts it again
    (extending it), its resolution posts the real ``endsAt``. If Riskdesk stops (and never resolves it), the
    alert expires in Alertmanager after this long."""
    timeout_seconds: Annotated[Seconds, Field(gt=0)] = 10.0


@dataclass(frozen=True, config=CONFIG)
class NotificationsTable(DeliveryPolicy):
    """The ``[notifications]`` table as written in riskdesk.toml (validated; addresses not yet resolved)."""

    recipients: Table[RecipientAddresses] = field(default_factory=dict)
    alertmanager: AlertmanagerSettings = field(default_factory=AlertmanagerSettings)


@dataclass(frozen=True, config=CONFIG)
class Recipient:
    name: str
    addresses: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Channel -> address (email address, E.164 phone number, webhook URL), secrets already resolved; left out
    of the repr because an address read from the environment (a webhook URL) is a secret."""
    unresolved: Mapping[str, str] = field(default_factory=dict)
    """Channel -> ``env:NAME`` reference whose variable is not set (the address is unusable)."""


@dataclass(frozen=True, config=CONFIG)
class SmtpConfig:
    host: str
    port: Annotated[int, Field(gt=0, lt=65536)]
    security: SmtpSecurity
    """``starttls`` (default, port 587), ``ssl`` (implicit TLS, port 465) or ``none`` (a local relay)."""
    sender: str
    user: str | None = None
    password_secret: SecretStr | None = None
    """The password; a ``SecretStr`` so that no repr or log line shows it (read it as :attr:`password`)."""
    timeout: float = 10.0
    ca_file: str | None = None
    allow_plaintext_auth: bool = False
    """``SMTP_ALLOW_PLAINTEXT_AUTH=1``: send the login over ``security = "none"`` (a trusted local relay)."""

    @property
    def plaintext_auth_refused(self) -> bool:
        """A login would cross the wire in clear and nobody allowed it: email is refused (skipped)."""
        return self.security == "none" and bool(self.user) and not self.allow_plaintext_auth

    @property
    def password(self) -> str | None:
        """The password in clear, for the SMTP login only."""
        return None if self.password_secret is None else self.password_secret.get_secret_value()


@dataclass(frozen=True, config=CONFIG)
class TwilioConfig:
    account_sid: str
    auth_token_secret: SecretStr
    """The auth token; a ``SecretStr`` so that no repr or log line shows it (read it as :attr:`auth_token`)."""
    sender: str
    timeout: Annotated[float, Field(gt=0, le=TWILIO_MAX_TIMEOUT_SECONDS)] = TWILIO_DEFAULT_TIMEOUT_SECONDS
    """Seconds the Twilio HTTP client waits to connect and for each read: without one a Twilio (or proxy) that
    accepts the connection and never answers would hold the notifier, every portfolio and channel, for good."""

    @property
    def auth_token(self) -> str:
        """The auth token in clear, for the Twilio client only."""
        return self.auth_token_secret.get_secret_value()


@dataclass(frozen=True, config=CONFIG)
class NotificationConfig(DeliveryPolicy):
    """The ``[notifications]`` section ready to use: addresses resolved, channel secrets from the environment."""

    recipients: Table[Recipient] = field(default_factory=dict)
    smtp: SmtpConfig | None = None
    twilio: TwilioConfig | None = None
    alertmanager: AlertmanagerSettings = field(default_factory=AlertmanagerSettings)

    def secrets(self) -> tuple[str, ...]:
        """Every credential this configuration holds (masked out of error texts and log lines)."""
        values: list[str | None] = [
            a for r in self.recipients.values() for c, a in r.addresses.items() if c == Channel.WEBHOOK
        ]
        values += [_url_password(a) for r in self.recipients.values() for a in r.addresses.values()]
        if self.twilio is not None:
            values += [self.twilio.account_sid, self.twilio.auth_token]
        if self.smtp is not None:
            values.append(self.smtp.password)
        return tuple(v for v in values if v)

    def channel_configured(self, channel: str) -> bool:
        if channel == Channel.EMAIL:
            return self.smtp is not None
        if channel == Channel.SMS:
            return self.twilio is not None
        return channel in (Channel.LOG, Channel.WEBHOOK, Channel.ALERTMANAGER)


def notification_config(extra: Mapping[str, Any], env: Mapping[str, str] | None = None) -> NotificationConfig:
    """Parse ``settings.extra["notifications"]`` and the channel secrets of ``env`` (default ``os.environ``).

    Raises
    ------
    ConfigError
        For an unknown key, a negative or non-finite duration or an unknown channel of a recipient, naming each
        by its path (``notifications.retry.max_attempts: must be >= 1, got 0``). An ``env:`` address whose
        variable is unset leaves that address out (deliveries to it are logged as ``skipped`` with the
        variable's name) rather than stopping the monitor.
    """
    env = os.environ if env is None else env
    table = validate_config(NotificationsTable, extra.get("notifications", {}) or {}, "notifications")
    recipients: dict[str, Recipient] = {}
    for name, addresses in table.recipients.items():
        resolved, unresolved = {}, {}
        for channel, address in addresses.items():
            value = _resolve_address(address, env)
            if value:
                resolved[channel] = value
            else:
                unresolved[channel] = address
        recipients[str(name)] = Recipient(str(name), resolved, unresolved)
    return NotificationConfig(
        **table.policy(), recipients=recipients, smtp=smtp_from_env(env), twilio=twilio_from_env(env),
        alertmanager=table.alertmanager,
    )  # fmt: skip


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
    if security not in SMTP_DEFAULT_PORTS:
        raise ConfigError(f"SMTP_SECURITY={security!r}: expected starttls, ssl or none")
    port_raw = secret(env, "SMTP_PORT")
    try:
        port = int(port_raw) if port_raw else SMTP_DEFAULT_PORTS[security]
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
    password = secret(env, "SMTP_PASSWORD")
    return SmtpConfig(
        host=host,
        port=port,
        security=security,  # type: ignore[arg-type]  # checked against SMTP_DEFAULT_PORTS above
        sender=sender,
        user=user,
        password_secret=None if password is None else SecretStr(password),
        timeout=timeout,
        ca_file=secret(env, "SMTP_CA_FILE"),
        allow_plaintext_auth=(secret(env, "SMTP_ALLOW_PLAINTEXT_AUTH") or "").lower() in ("1", "true", "yes"),
    )


def twilio_from_env(env: Mapping[str, str]) -> TwilioConfig | None:
    """Twilio credentials; None unless all of account SID, auth token and sender number are set.

    Raises
    ------
    ConfigError
        ``TWILIO_TIMEOUT`` is not a number, or not in (0, :data:`TWILIO_MAX_TIMEOUT_SECONDS`].
    """
    sid, token, sender = (secret(env, n) for n in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM"))
    if not (sid and token and sender):
        return None
    timeout_raw = secret(env, "TWILIO_TIMEOUT")
    try:
        timeout = float(timeout_raw) if timeout_raw else TWILIO_DEFAULT_TIMEOUT_SECONDS
    except ValueError as exc:
        raise ConfigError(f"TWILIO_TIMEOUT={timeout_raw!r} is not a number") from exc
    if not 0 < timeout <= TWILIO_MAX_TIMEOUT_SECONDS:  # also refuses nan
        raise ConfigError(f"TWILIO_TIMEOUT={timeout_raw}: must be > 0 and <= {TWILIO_MAX_TIMEOUT_SECONDS:g} seconds")
    return TwilioConfig(account_sid=sid, auth_token_secret=SecretStr(token), sender=sender, timeout=timeout)


def _url_password(address: str) -> str | None:
    """The password of a ``scheme://user:password@host`` address (an Alertmanager behind basic auth)."""
    return urlsplit(address).password if "://" in address else None


def _resolve_address(address: str, env: Mapping[str, str]) -> str:
    """The address itself, or for ``env:NAME`` the variable's value ("" when unset)."""
    if address.startswith("env:"):
        return secret(env, address[4:]) or ""
    return address
