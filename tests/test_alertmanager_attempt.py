"""One Alertmanager attempt is bounded by ``[notifications.alertmanager] timeout_seconds`` as a whole.

An attempt reads the portfolio's alerts back (``GET``) and then posts (``POST``); before the fix each request
had the whole timeout, so a slow or hung Alertmanager held the notifier up to twice the configured bound. These
tests run a real HTTP server on loopback that answers each request after a scripted delay, and time the
attempt and count the requests it made.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from engine.errors import ConfigError
from engine.records import Channel
from engine.store import Store
from notifications.alertmanager import READ_SHARE, AlertmanagerChannel
from notifications.channels import Message, TransientDeliveryError
from notifications.config import notification_config
from notifications.delivery import build_channels

from .alerts_support import T0, rule, snapshot
from .test_notifications import engine_with

TIMEOUT = 2.0
"""The attempt's bound in these tests (seconds)."""
SLACK = 0.6
"""What an attempt may run past its bound on a loaded machine (thread start, socket set-up): far less than the
second ``TIMEOUT`` the old code allowed."""
VAR_CRIT = rule("var_breach", "var.utilization", ">=", 1.0, "CRITICAL", description="VaR above its limit")


class Script:
    """What the server does: seconds before answering each ``GET`` / ``POST`` (one per request, then 0), or a
    read answered byte by byte ``trickle`` seconds apart; records the methods it was asked."""

    def __init__(
        self, gets: list[float] | None = None, posts: list[float] | None = None, trickle: float = 0.0, pad: int = 0
    ) -> None:
        self.gets = list(gets or [])
        self.posts = list(posts or [])
        self.trickle = trickle
        self.pad = pad
        """Blanks inside the read's JSON list (more bytes to trickle)."""
        self.seen: list[str] = []
        self.posted: list[Any] = []


@contextmanager
def slow_alertmanager(script: Script) -> Iterator[str]:
    """A real HTTP server on loopback playing ``script``; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            script.seen.append("GET")
            time.sleep(script.gets.pop(0) if script.gets else 0.0)
            body = b"[" + b" " * script.pad + b"]"
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for byte in body:
                    time.sleep(script.trickle)
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
            except OSError:
                pass  # the client gave up: its timeout, the point of the test

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            script.seen.append("POST")
            script.posted.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
            time.sleep(script.posts.pop(0) if script.posts else 0.0)
            try:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def message() -> Message:
    event = {"rule_id": "var_breach", "severity": "CRITICAL", "status": "TRIGGERED", "triggered_at": T0, "ts": T0}
    return Message("s", "b", "x", "CRITICAL", {"portfolio_id": "main", "events": [event]})


def attempt(base: str) -> tuple[float, str | None, Exception | None]:
    """One ``send`` with ``TIMEOUT``: (seconds it took, provider id, error)."""
    start = time.monotonic()
    try:
        provider_id = AlertmanagerChannel(timeout=TIMEOUT).send(base, message())
    except TransientDeliveryError as exc:
        return time.monotonic() - start, None, exc
    return time.monotonic() - start, provider_id, None


def test_an_attempt_whose_two_answers_together_come_just_inside_the_timeout_is_delivered() -> None:
    script = Script(gets=[0.35 * TIMEOUT], posts=[0.35 * TIMEOUT])
    with slow_alertmanager(script) as base:
        elapsed, provider_id, error = attempt(base)
    assert error is None and provider_id == "HTTP 200, 1 alert(s)"
    assert script.seen == ["GET", "POST"] and len(script.posted) == 1
    assert 0.7 * TIMEOUT <= elapsed < TIMEOUT


def test_an_attempt_whose_two_answers_together_come_just_past_the_timeout_fails_at_the_timeout() -> None:
    """Each answer alone is well inside the timeout (the old code delivered, in 1.2 timeouts); together they
    are past it, so the post is cut off when the attempt's time is up and the attempt is retried."""
    script = Script(gets=[0.6 * TIMEOUT], posts=[0.6 * TIMEOUT])
    with slow_alertmanager(script) as base:
        elapsed, provider_id, error = attempt(base)
    assert provider_id is None and isinstance(error, TransientDeliveryError)
    assert script.seen == ["GET", "POST"]
    assert TIMEOUT <= elapsed < TIMEOUT + SLACK


def test_a_hung_read_is_given_up_at_its_share_of_the_timeout_and_the_page_is_posted() -> None:
    """The read (the optional look for former severities) may use READ_SHARE of the attempt; a hung one is given
    up there and the page goes out in the time left, saying the former severities were not checked."""
    script = Script(gets=[TIMEOUT + 2 * SLACK + 0.5])
    with slow_alertmanager(script) as base:
        elapsed, provider_id, error = attempt(base)
    assert error is None and provider_id is not None
    assert provider_id.startswith("HTTP 200, 1 alert(s)") and "the read timed out" in provider_id
    assert script.seen == ["GET", "POST"] and len(script.posted) == 1
    assert READ_SHARE * TIMEOUT <= elapsed < READ_SHARE * TIMEOUT + SLACK


def test_a_read_slow_on_every_try_still_lets_the_page_through_within_the_timeout() -> None:
    """A slow but healthy Alertmanager: the read answers past its share, the post promptly. Before the share,
    the read took the post's time and every retry failed the same way: the page never went out."""
    script = Script(gets=[0.7 * TIMEOUT], posts=[0.4 * TIMEOUT])
    with slow_alertmanager(script) as base:
        elapsed, provider_id, error = attempt(base)
    assert error is None and provider_id is not None and "the read timed out" in provider_id
    assert script.seen == ["GET", "POST"] and len(script.posted) == 1
    assert 0.9 * TIMEOUT <= elapsed < TIMEOUT


def test_a_post_that_hangs_after_a_prompt_read_is_cut_off_at_the_timeout_not_a_second_one_later() -> None:
    script = Script(gets=[0.0], posts=[TIMEOUT + 2 * SLACK + 0.5])
    with slow_alertmanager(script) as base:
        elapsed, _, error = attempt(base)
    assert isinstance(error, TransientDeliveryError) and script.seen == ["GET", "POST"]
    assert TIMEOUT <= elapsed < TIMEOUT + SLACK


def test_a_read_finished_only_past_the_deadline_fails_the_attempt_before_anything_is_posted() -> None:
    """The read's answer trickles in (each socket wait well inside the timeout, the whole past it): the
    attempt's time is spent, so it posts nothing rather than a request the deadline no longer covers."""
    script = Script(trickle=0.4 * TIMEOUT, pad=1)  # three bytes, each within the read's share: 1.2 timeouts
    with slow_alertmanager(script) as base:
        elapsed, provider_id, error = attempt(base)
    assert provider_id is None and isinstance(error, TransientDeliveryError)
    assert "ran out before the post; nothing posted" in str(error)
    assert script.seen == ["GET"] and script.posted == []
    assert TIMEOUT <= elapsed < 1.2 * TIMEOUT + SLACK


def test_the_configured_timeout_reaches_the_channel_and_must_be_positive() -> None:
    config = notification_config({"notifications": {"alertmanager": {"timeout_seconds": 2.5}}}, {})
    channel = build_channels(config)[Channel.ALERTMANAGER]
    assert isinstance(channel, AlertmanagerChannel) and channel.timeout == 2.5
    with pytest.raises(ConfigError, match="timeout_seconds"):
        notification_config({"notifications": {"alertmanager": {"timeout_seconds": 0}}}, {})


def test_the_notifier_retries_an_attempt_that_timed_out_and_the_record_counts_both_attempts(
    store: Store, make_settings: Any
) -> None:
    script = Script(posts=[TIMEOUT + 2 * SLACK + 0.5])  # the first attempt's post hangs, the retry's answers
    with slow_alertmanager(script) as base:
        notifications = {"recipients": {"desk": {"alertmanager": base}}, "alertmanager": {"timeout_seconds": TIMEOUT}}
        engine, sleep, _ = engine_with(store, make_settings, {}, ["alertmanager"], rules=[VAR_CRIT],
                                       notifications=notifications)  # fmt: skip
        engine.evaluate("main", snapshot(var__utilization=1.5), T0)
        start = time.monotonic()
        engine.tick(T0)
        elapsed = time.monotonic() - start
    (record,) = engine.delivery_log("main")
    assert record["channel"] == Channel.ALERTMANAGER
    assert (record["status"], record["attempts"]) == ("delivered", 2)
    assert script.seen == ["GET", "POST", "GET", "POST"]
    assert len(script.posted) == 2  # the hung post's body had arrived (Alertmanager deduplicates the same alert)
    assert len(sleep.calls) == 1
    assert elapsed < TIMEOUT + SLACK
