"""Helpers of the alerts, escalation and notification tests: snapshots, a clock, real local servers.

- :func:`snapshot` builds a monitor snapshot (the documented schema) with dotted-path overrides.
- :class:`SimClock` is the injected clock; :class:`SleepRecorder` the injected backoff sleep (never sleeps).
- :class:`SmtpServer` runs a real aiosmtpd server on a free loopback port whose replies to DATA are scripted.
- :class:`RecordingTwilioHttpClient` is a real ``twilio.http.HttpClient`` that records each request and
  answers with scripted statuses instead of opening a socket.
- :class:`WebhookServer` is a real HTTP server on loopback answering scripted statuses.
"""

from __future__ import annotations

import copy
import json
import logging
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from twilio.http import HttpClient
from twilio.http.response import Response

T0 = 1_700_000_000.0
"""A fixed start of simulated time (2023-11-14 22:13:20 UTC)."""

TWILIO_ENV = {
    "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
    "TWILIO_AUTH_TOKEN": "secret-token",
    "TWILIO_FROM": "+15550009999",
}


def snapshot(portfolio_id: str = "main", now: float = T0, **overrides: Any) -> dict[str, Any]:
    """A snapshot shaped like logic/snapshot.py's; ``var__utilization=1.2`` sets ``var.utilization``."""
    snap: dict[str, Any] = {
        "portfolio_id": portfolio_id,
        "ts": now,
        "version": 1,
        "market_ts": now,
        "equity": 1_000_000.0,
        "cash": 900_000.0,
        "market_value": 100_000.0,
        "gross_exposure": 100_000.0,
        "net_exposure": 100_000.0,
        "leverage": 0.1,
        "pnl": {"unrealized": 0.0, "realized": 0.0, "daily": 0.0, "total": 0.0},
        "var": {
            "var95": 5_000.0,
            "var99": 7_000.0,
            "cvar95": 6_000.0,
            "cvar99": 8_000.0,
            "stressed_var99": 14_000.0,
            "limit": 20_000.0,
            "confidence": 0.95,
            "utilization": 0.25,
            "horizon_days": 1.0,
            "stressed_limit_var": 9_900.0,
            "stressed_limit": None,
            "stressed_utilization": None,
        },
        "drawdown": {"daily": 0.0, "weekly": 0.0, "max": 0.0},
        "concentration": {"hhi": 0.5, "largest_share": 0.06, "largest_ticker": "AAA"},
        "margin": {"level": None, "used": 0.0, "maintenance": 0.0},
        "data": {"market_age_seconds": 0.0, "missing_prices": []},
        "trading_state": "ACTIVE",
        "positions": [],
        "var_method": "normal",
        "component_var": {},
        "backtest": None,
    }
    for key, value in overrides.items():
        node = snap
        parts = key.split("__")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = copy.deepcopy(value)
    return snap


class SimClock:
    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass
class SleepRecorder:
    calls: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def rule(rule_id: str, metric: str, op: str, threshold: float | str, severity: str, **extra: Any) -> dict[str, Any]:
    """A rule's fields; ``clear_seconds`` is 0 unless given (the tests written before the 60 s default clear
    period, ``engine.settings.DEFAULT_CLEAR_SECONDS``, resolve at once; tests of the default omit the helper)."""
    return {"id": rule_id, "metric": metric, "op": op, "threshold": threshold, "severity": severity,
            "clear_seconds": 0.0, **extra}  # fmt: skip


def delivered_events(engine: Any, portfolio_id: str = "main", channel: str = "log") -> list[dict[str, Any]]:
    """Events carried by delivered messages of one channel, oldest first."""
    records = engine.delivery_log(portfolio_id, count=100_000, channel=channel, status="delivered")
    return [e for r in reversed(records) for e in r["events"]]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- SMTP ----------------------------------------------------------------------------------------------------


class ScriptedSmtpHandler:
    """aiosmtpd handler: answers DATA with the next scripted reply (then 250), keeps accepted messages; answers
    QUIT with ``quit_reply``."""

    def __init__(self, replies: Iterable[str] = (), quit_reply: str = "221 Bye") -> None:
        self.replies = list(replies)
        self.quit_reply = quit_reply
        self.messages: list[Any] = []
        self.attempts = 0
        self.logins: list[str] = []

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        return self.quit_reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.attempts += 1
        reply = self.replies.pop(0) if self.replies else "250 Message accepted"
        if reply.startswith("250"):
            self.messages.append(envelope)
        return reply


@contextmanager
def smtp_server(
    replies: Iterable[str] = (),
    *,
    tls: str | None = None,
    cert_dir: Path | None = None,
    credentials: tuple[str, str] | None = None,
    quit_reply: str = "221 Bye",
) -> Iterator[tuple[ScriptedSmtpHandler, dict[str, str]]]:
    """A real SMTP server on 127.0.0.1:<free port>; yields the handler and the SMTP_* environment for it.

    ``tls="starttls"`` requires STARTTLS, ``tls="ssl"`` speaks implicit TLS (certificate made in
    ``cert_dir`` by :func:`self_signed_certificate`); ``credentials`` requires AUTH with that user/password;
    ``quit_reply`` is the answer to QUIT.
    """
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    handler = ScriptedSmtpHandler(replies, quit_reply)
    kwargs: dict[str, Any] = {}
    env = {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_SECURITY": tls or "none",
        "SMTP_FROM": "riskdesk@test.local",
        "SMTP_TIMEOUT": "5",
    }
    if tls is not None:
        assert cert_dir is not None
        cert, key = self_signed_certificate(cert_dir)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        env["SMTP_CA_FILE"] = str(cert)
        if tls == "starttls":
            kwargs.update(tls_context=context, require_starttls=True)
        else:
            kwargs.update(ssl_context=context)
    if credentials is not None:
        user, password = credentials

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
            ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
                user.encode(),
                password.encode(),
            )
            handler.logins.append(data.login.decode() if isinstance(data, LoginPassword) else repr(data))
            return AuthResult(success=ok, handled=False)  # not handled: the server answers 235 or 535 itself

        # with implicit TLS aiosmtpd does not know the transport is encrypted: allow AUTH on it explicitly
        kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=tls != "ssl")
        env.update(SMTP_USER=user, SMTP_PASSWORD=password)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    try:
        env["SMTP_PORT"] = str(controller.port)
        yield handler, env
    finally:
        controller.stop()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (made with the openssl command line tool)."""
    cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


# -- Twilio --------------------------------------------------------------------------------------------------


class RecordingTwilioHttpClient(HttpClient):
    """The Twilio client's HTTP layer, replaced: records requests, answers scripted statuses, no socket."""

    def __init__(self, statuses: Iterable[int] = ()) -> None:
        super().__init__(logger=logging.getLogger("tests.twilio"), is_async=False)
        self.statuses = list(statuses)
        self.requests: list[dict[str, Any]] = []

    def request(
        self,
        method: str,
        uri: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        self.requests.append({"method": method, "uri": uri, "data": dict(data or {}), "auth": auth})
        status = self.statuses.pop(0) if self.statuses else 201
        if status >= 400:
            body = {"code": 20000 + status, "message": f"scripted {status}", "status": status}
        else:
            data = data or {}
            body = {
                "sid": f"SM{len(self.requests):032d}",
                "to": data.get("To"),
                "from": data.get("From"),
                "body": data.get("Body"),
                "status": "queued",
                "account_sid": TWILIO_ENV["TWILIO_ACCOUNT_SID"],
            }
        return Response(status, json.dumps(body))

    @property
    def sent(self) -> list[dict[str, Any]]:
        return [r["data"] for r in self.requests]


# -- webhook -------------------------------------------------------------------------------------------------


@contextmanager
def webhook_server(statuses: Iterable[int] = ()) -> Iterator[tuple[list[dict[str, Any]], str]]:
    """A real HTTP server on loopback yielding (JSON bodies received, URL); scripted statuses, then 200."""
    script = list(statuses)
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length", 0))
            received.append(json.loads(self.rfile.read(length)))
            status = script.pop(0) if script else 200
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", "7")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received, f"http://127.0.0.1:{server.server_address[1]}/hooks/T000/B000/secret"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
