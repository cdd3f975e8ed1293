"""Outbound channels: ``log``, ``email`` (SMTP), ``sms`` (Twilio) and ``webhook`` (JSON POST).

A channel sends one rendered :class:`Message` to one address and either returns (delivered) or raises::

    DeliveryError                 base; ``transient`` says whether a retry may succeed
    ├── TransientDeliveryError    SMTP 4xx, connection refused or reset, timeouts, HTTP 429 and 5xx
    └── PermanentDeliveryError    SMTP 5xx, HTTP 4xx other than 429, a malformed address

Retries, backoff, rate limits, grouping and the delivery log are not the channels' business: see
:mod:`notifications.delivery`.
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Protocol
from urllib.parse import urlsplit

from engine.records import Channel as ChannelName
from engine.records import Severity
from notifications.config import SmtpConfig, TwilioConfig
from notifications.masking import mask_text, mask_url

LOGGER_NAME = "riskdesk.notifications"
TWILIO_HTTP_LOGGER = "twilio.http_client"
"""The Twilio client logs every request URL (``/Accounts/<SID>/...``) at INFO here: kept at WARNING."""
SMS_MAX_CHARS = 1600
"""Twilio refuses a body longer than this; longer texts are cut with an ellipsis."""


class DeliveryError(Exception):
    transient = False

    def __init__(self, message: str, *, code: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after
        """Seconds the server asked us to wait (HTTP ``Retry-After``), when it said so."""


class TransientDeliveryError(DeliveryError):
    transient = True


class PermanentDeliveryError(DeliveryError):
    transient = False


@dataclass(frozen=True)
class Message:
    """One rendered notification: a subject and a body (email, log, webhook), a short text (SMS)."""

    subject: str
    body: str
    short: str
    severity: str = Severity.LOW
    payload: Mapping[str, Any] = field(default_factory=dict)
    """Machine-readable content for the webhook (portfolio, events)."""


class Channel(Protocol):
    name: str

    def send(self, address: str, message: Message) -> str | None:
        """Deliver or raise a :class:`DeliveryError`; may return the provider's message id."""
        ...


class LogChannel:
    """Writes every message to the ``riskdesk.notifications`` logger; needs no configuration."""

    name: str = ChannelName.LOG

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(LOGGER_NAME)

    def send(self, address: str, message: Message) -> str | None:
        level = logging.WARNING if message.severity in (Severity.HIGH, Severity.CRITICAL) else logging.INFO
        self.logger.log(level, "%s\n%s", message.subject, message.body)
        return None


PLAINTEXT_AUTH_REFUSED = (
    "refusing to send the SMTP login in clear: SMTP_SECURITY=none with SMTP_USER set; use starttls or ssl, "
    "or set SMTP_ALLOW_PLAINTEXT_AUTH=1 for a trusted local relay"
)


class EmailChannel:
    """SMTP via smtplib: STARTTLS (default), implicit TLS (``ssl``) or plain (``none``, a local relay)."""

    name: str = ChannelName.EMAIL

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    def build(self, address: str, message: Message) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = message.subject
        msg["From"] = self.config.sender
        msg["To"] = address
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = make_msgid(domain="riskdesk")
        msg["X-Riskdesk-Severity"] = message.severity
        msg.set_content(message.body)
        return msg

    def send(self, address: str, message: Message) -> str | None:
        if self.config.plaintext_auth_refused:
            raise PermanentDeliveryError(PLAINTEXT_AUTH_REFUSED)
        if "@" not in address:
            raise PermanentDeliveryError(f"not an email address: {address!r}")
        email = self.build(address, message)
        try:
            client = self._connect()
            try:
                client.send_message(email)
            except BaseException:
                client.close()
                raise
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _reply in exc.recipients.values()]
            refused = exc.recipients.items()
            detail = "; ".join(f"{rcpt}: {code} {_text(reply)}" for rcpt, (code, reply) in refused)
            worst = min(codes) if all(400 <= c < 500 for c in codes) else max(codes)
            raise _smtp_error(worst, detail) from exc
        except smtplib.SMTPResponseException as exc:
            raise _smtp_error(exc.smtp_code, _text(exc.smtp_error)) from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise PermanentDeliveryError(f"SMTP server does not support a required extension: {exc}") from exc
        except (smtplib.SMTPException, OSError) as exc:  # disconnects, refused connections, timeouts, TLS
            raise TransientDeliveryError(f"SMTP {self.config.host}:{self.config.port}: {exc!r}") from exc
        try:  # the server took the message (250 to its DATA): how the goodbye goes changes nothing, and a
            client.quit()  # failure there must not send it again (smtplib's context manager raised a 4xx QUIT)
        except (smtplib.SMTPException, OSError):
            client.close()
        return str(email["Message-ID"])

    def _connect(self) -> smtplib.SMTP:
        cfg = self.config
        context = None
        if cfg.security != "none":
            context = ssl.create_default_context(cafile=cfg.ca_file or None)
        client: smtplib.SMTP
        if cfg.security == "ssl":
            client = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout, context=context)
        else:
            client = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
        try:
            if cfg.security == "starttls":
                client.ehlo()
                client.starttls(context=context)
                client.ehlo()
            if cfg.user:
                client.login(cfg.user, cfg.password or "")
        except BaseException:
            client.close()
            raise
        return client


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _smtp_error(code: int, detail: str) -> DeliveryError:
    """SMTP reply classes: 4xx is a transient negative completion (retry), 5xx a permanent one."""
    message = f"SMTP {code} {detail}".strip()
    if 400 <= code < 500:
        return TransientDeliveryError(message, code=code)
    return PermanentDeliveryError(message, code=code)


class SmsChannel:
    """Twilio Programmable Messaging through the official ``twilio.rest.Client``.

    ``http_client`` (a ``twilio.http.HttpClient``) is injectable: tests pass one that records requests and
    answers without opening a socket. Without one the channel builds Twilio's own ``TwilioHttpClient`` with
    ``config.timeout`` (``TWILIO_TIMEOUT``): the Twilio client's default waits forever, so a Twilio or proxy
    that accepts the connection and never answers would block the notifier's flush for good. A timeout is a
    ``requests`` exception, an ``OSError``: it fails the attempt as a :class:`TransientDeliveryError`.
    """

    name: str = ChannelName.SMS

    def __init__(self, config: TwilioConfig, http_client: Any = None) -> None:
        from twilio.http.http_client import TwilioHttpClient  # imported here: only processes that send SMS
        from twilio.rest import Client

        logging.getLogger(TWILIO_HTTP_LOGGER).setLevel(logging.WARNING)
        self.config = config
        if http_client is None:
            http_client = TwilioHttpClient(timeout=config.timeout, logger=logging.getLogger(TWILIO_HTTP_LOGGER))
        self.client = Client(config.account_sid, config.auth_token, http_client=http_client)
        self.secrets = (config.account_sid, config.auth_token)

    def send(self, address: str, message: Message) -> str | None:
        from twilio.base.exceptions import TwilioException

        if not address.startswith("+") or not address[1:].isdigit():
            raise PermanentDeliveryError(f"not an E.164 phone number: {address!r}")
        body = message.short
        if len(body) > SMS_MAX_CHARS:
            body = body[: SMS_MAX_CHARS - 1] + "…"
        try:
            sent = self.client.messages.create(to=address, from_=self.config.sender, body=body)
        except (TwilioException, OSError) as exc:  # requests' ConnectionError and Timeout are OSErrors
            status = getattr(exc, "status", None)  # Twilio REST and RFC 9457 service errors carry it
            if not isinstance(status, int):
                raise TransientDeliveryError(mask_text(f"Twilio: {exc!r}", self.secrets)) from exc
            detail = getattr(exc, "msg", None) or getattr(exc, "detail", None) or getattr(exc, "title", "")
            code = getattr(exc, "code", None)
            text = f"Twilio HTTP {status}: {detail}" + (f" (code {code})" if code and code != status else "")
            text = mask_text(text, self.secrets)
            if status == 429 or status >= 500:
                raise TransientDeliveryError(text, code=status) from exc
            raise PermanentDeliveryError(text, code=status) from exc
        return getattr(sent, "sid", None)


Opener = Callable[..., Any]


class WebhookChannel:
    """POST the message as JSON (``{"text": ..., "subject": ..., "severity": ..., "events": [...]}``).

    ``text`` makes it a valid Slack incoming-webhook payload; other receivers read the structured fields.
    """

    name: str = ChannelName.WEBHOOK

    def __init__(self, timeout: float = 10.0, opener: Opener | None = None) -> None:
        self.timeout = timeout
        self.opener = opener or urllib.request.urlopen

    def send(self, address: str, message: Message) -> str | None:
        if urlsplit(address).scheme not in ("http", "https"):
            raise PermanentDeliveryError(f"webhook URL must be http(s): {mask_address('webhook', address)}")
        payload = {
            "text": escape_chat_text(f"{message.subject}\n{message.body}"),
            "subject": message.subject,
            "severity": message.severity,
            **dict(message.payload),
        }
        request = urllib.request.Request(
            address,
            data=json.dumps(payload, allow_nan=False, default=str).encode("utf-8"),
            headers={"Content-Type": "application/json", "User-Agent": "riskdesk-notifier"},
            method="POST",
        )
        try:
            with self.opener(request, timeout=self.timeout) as response:
                status = getattr(response, "status", 200)
        except urllib.error.HTTPError as exc:
            retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            text = f"HTTP {exc.code} from {mask_address('webhook', address)}"
            if exc.code == 429 or exc.code >= 500:
                raise TransientDeliveryError(text, code=exc.code, retry_after=retry_after) from exc
            raise PermanentDeliveryError(text, code=exc.code) from exc
        except (urllib.error.URLError, OSError) as exc:
            detail = mask_text(repr(exc), [address])
            raise TransientDeliveryError(f"webhook {mask_address('webhook', address)}: {detail}") from exc
        return f"HTTP {status}"


def _retry_after(raw: str | None) -> float | None:
    try:
        return max(0.0, float(raw)) if raw else None
    except ValueError:
        return None  # an HTTP date: ignore it, our own backoff applies


def escape_chat_text(text: str) -> str:
    """Slack/Mattermost control characters escaped (``&`` first): ``<!channel>`` is shown, never a mention.

    Both tools parse ``<...>`` in a message's text as mentions and links and ask for exactly these three
    escapes (https://api.slack.com/reference/surfaces/formatting#escaping).
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mask_address(channel: str, address: str) -> str:
    """What the delivery log may show: a webhook URL carries its secret in the path, so keep only the host."""
    if channel in ("webhook", "alertmanager") and address:
        return mask_url(address)
    return address
