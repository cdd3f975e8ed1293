"""The notifications config keeps its credentials out of every repr, str and log line."""

from __future__ import annotations

from notifications.config import notification_config, smtp_from_env, twilio_from_env

SMTP_PASSWORD = "hunter2-smtp-password"
TWILIO_TOKEN = "tw-auth-token-0123456789"
WEBHOOK_URL = "https://hooks.example.com/services/T000/B000/XXXXSECRET"
ENV = {
    "SMTP_HOST": "mail.example.com",
    "SMTP_USER": "risk@example.com",
    "SMTP_PASSWORD": SMTP_PASSWORD,
    "TWILIO_ACCOUNT_SID": "AC123",
    "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
    "TWILIO_FROM": "+15550000",
    "RISKDESK_WEBHOOK_URL": WEBHOOK_URL,
}


def test_no_repr_or_str_of_the_config_shows_a_credential() -> None:
    config = notification_config(
        {"notifications": {"recipients": {"desk": {"webhook": "env:RISKDESK_WEBHOOK_URL"}}}}, env=ENV
    )
    smtp, twilio = smtp_from_env(ENV), twilio_from_env(ENV)

    shown = " ".join(f(obj) for obj in (config, smtp, twilio, config.recipients["desk"]) for f in (repr, str))

    assert SMTP_PASSWORD not in shown and TWILIO_TOKEN not in shown and WEBHOOK_URL not in shown
    assert "mail.example.com" in shown and "AC123" in shown


def test_the_channels_still_read_the_credentials_in_clear() -> None:
    smtp, twilio = smtp_from_env(ENV), twilio_from_env(ENV)
    config = notification_config(
        {"notifications": {"recipients": {"desk": {"webhook": "env:RISKDESK_WEBHOOK_URL"}}}}, env=ENV
    )

    assert smtp is not None and smtp.password == SMTP_PASSWORD
    assert twilio is not None and twilio.auth_token == TWILIO_TOKEN
    assert config.recipients["desk"].addresses == {"webhook": WEBHOOK_URL}
