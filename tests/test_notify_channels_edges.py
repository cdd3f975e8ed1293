"""Channel edges: a Twilio (or proxy) that never answers, a rule's severity edited while its alert is active in a
real Alertmanager, values rendered too coarsely to tell from their threshold, and the escalated page after an
acknowledge timeout. Real parts throughout: a listening socket that never answers, Debian's
``prometheus-alertmanager``, aiosmtpd, the real Twilio client."""

from __future__ import annotations

import email
import email.policy
import math
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.errors import ConfigError
from engine.store import Store
from logic.alerts import build_alert_engine
from notifications.alertmanager import AlertmanagerChannel
from notifications.channels import Message, SmsChannel, TransientDeliveryError
from notifications.config import TWILIO_MAX_TIMEOUT_SECONDS, notification_config, twilio_from_env
from notifications.delivery import CHANNEL_TIMEOUT_BUDGET_SECONDS, build_channels
from notifications.render import (
    BASIS_POINTS_BELOW,
    MAX_EXTRA_DECIMALS,
    SAME_ABS_TOL,
    SAME_REL_TOL,
    Renderer,
    format_metric,
)
from notifications.service import build_notifier

from .alerts_support import T0, TWILIO_ENV, SimClock, SleepRecorder, rule, smtp_server, snapshot, webhook_server
from .prom_support import alertmanager, get_json, wait_until
from .test_notifications import engine_with

# -- Twilio that never answers -------------------------------------------------------------------------------


def test_twilio_timeout_defaults_to_10_s_and_is_bounded_by_the_per_attempt_lease_budget() -> None:
    assert TWILIO_MAX_TIMEOUT_SECONDS <= CHANNEL_TIMEOUT_BUDGET_SECONDS
    assert twilio_from_env(TWILIO_ENV).timeout == 10.0  # type: ignore[union-attr]
    for raw, expected in (("15", 15.0), ("0.001", 0.001), ("1", 1.0)):
        assert twilio_from_env({**TWILIO_ENV, "TWILIO_TIMEOUT": raw}).timeout == expected  # type: ignore[union-attr]
    for raw in ("15.001", "16", "0", "-1", "nan", "inf", "ten"):
        with pytest.raises(ConfigError, match="TWILIO_TIMEOUT"):
            twilio_from_env({**TWILIO_ENV, "TWILIO_TIMEOUT": raw})


def test_the_sms_channel_built_for_the_notifier_gives_the_twilio_http_client_the_timeout() -> None:
    config = notification_config({}, {**TWILIO_ENV, "TWILIO_TIMEOUT": "2.5"})
    sms = build_channels(config)["sms"]
    assert isinstance(sms, SmsChannel)
    assert sms.client.http_client.timeout == 2.5


@pytest.fixture
def silent_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A loopback socket that accepts connections (the kernel's backlog) and never answers, as HTTPS proxy."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    proxy = f"http://127.0.0.1:{hole.getsockname()[1]}"
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, proxy)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield hole
    finally:
        hole.close()


def test_a_twilio_that_never_answers_fails_the_send_as_transient_instead_of_blocking(
    silent_proxy: socket.socket,
) -> None:
    channel = SmsChannel(twilio_from_env({**TWILIO_ENV, "TWILIO_TIMEOUT": "1"}))  # type: ignore[arg-type]
    outcome: dict[str, Any] = {}

    def send() -> None:
        started = time.monotonic()
        try:
            outcome["sid"] = channel.send("+15550100001", Message("s", "b", "short", "CRITICAL"))
        except Exception as exc:  # noqa: BLE001 - the test inspects whatever came out
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - started

    worker = threading.Thread(target=send, daemon=True)  # the old code never returns: the thread is left behind
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the send still blocks after 60 s with TWILIO_TIMEOUT=1"
    error = outcome.get("error")
    assert isinstance(error, TransientDeliveryError), outcome
    assert outcome["took"] < 60
    assert TWILIO_ENV["TWILIO_ACCOUNT_SID"] not in str(error) and TWILIO_ENV["TWILIO_AUTH_TOKEN"] not in str(error)


# -- Alertmanager: severity edited while the alert is active -------------------------------------------------


def am_alerts(base: str) -> list[tuple[str, str]]:
    """(severity, state) of the var_breach alerts Alertmanager holds active (sorted)."""
    alerts = get_json(f"{base}/api/v2/alerts")
    return sorted(
        (a["labels"]["severity"], a["status"]["state"]) for a in alerts if a["labels"]["rule"] == "var_breach"
    )


@pytest.mark.slow
@pytest.mark.parametrize(("before", "after"), [("MEDIUM", "CRITICAL"), ("CRITICAL", "MEDIUM")])
def test_a_severity_edited_mid_alert_leaves_no_ghost_alert_in_alertmanager(
    store: Store, make_settings: Any, tmp_path: Path, before: str, after: str
) -> None:
    var = rule("var_breach", "var.utilization", ">=", 1.0, before, description="VaR above its limit")
    with alertmanager(tmp_path) as base:
        engine, _, clock = engine_with(store, make_settings, {}, ["alertmanager"], rules=[var],
                                       notifications={"recipients": {"desk": {"alertmanager": base}}})  # fmt: skip
        engine.evaluate("main", snapshot(var__utilization=1.5), T0)
        engine.tick(T0)
        wait_until(lambda: am_alerts(base) == [(before, "active")], 30, f"the {before} alert in Alertmanager")

        engine.update_rule("var_breach", {"severity": after}, "alice", "market stress")
        for t in (T0 + 5, T0 + 10):  # raised: level 1 is told again at the new severity; lowered: nobody
            clock.now = t
            engine.evaluate("main", snapshot(now=t, var__utilization=1.5), t)
            engine.tick(t)
        if after == "CRITICAL":
            wait_until(lambda: am_alerts(base) == [(after, "active")], 30, "only the CRITICAL alert left active")

        clock.now = T0 + 15
        engine.evaluate("main", snapshot(now=T0 + 15, var__utilization=0.5), T0 + 15)
        engine.tick(T0 + 15)
        assert "var_breach" not in store.read_active_alerts("main")
        wait_until(lambda: am_alerts(base) == [], 30, "no var_breach alert active under any severity")
    delivered = engine.delivery_log("main", channel="alertmanager", status="delivered")
    assert delivered[0]["events"][0]["kind"] == "resolved"
    ended = [r["events"][0]["kind"] for r in delivered if "ended 1 under a former severity" in str(r["provider_id"])]
    assert ended == (["triggered"] if after == "CRITICAL" else ["resolved"])  # the first post after the edit


@contextmanager
def alertmanager_reads(status: int) -> Iterator[tuple[list[str], str]]:
    """A loopback server answering every GET with ``status`` and every POST with 200; yields (methods, URL)."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            seen.append("GET")
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"[]")

        def do_POST(self) -> None:  # noqa: N802
            seen.append("POST")
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield seen, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def am_message() -> Message:
    event = {"rule_id": "var_breach", "severity": "CRITICAL", "status": "TRIGGERED", "triggered_at": T0, "ts": T0}
    return Message("s", "b", "x", "CRITICAL", {"portfolio_id": "main", "events": [event]})


def test_an_alertmanager_that_refuses_the_read_still_gets_the_alert_and_the_record_says_so() -> None:
    with alertmanager_reads(403) as (seen, base):
        provider_id = AlertmanagerChannel().send(base, am_message())
    assert seen == ["GET", "POST"]
    assert provider_id == "HTTP 200, 1 alert(s) (former severities not checked: HTTP 403 to the read)"
    with webhook_server() as (posted, url):  # http.server without do_GET: 501 Not Implemented
        provider_id = AlertmanagerChannel().send(url.split("/hooks/")[0], am_message())
    assert len(posted) == 1 and provider_id is not None and "HTTP 501 to the read" in provider_id


def test_an_alertmanager_failing_the_read_with_503_fails_the_attempt_as_transient_before_posting() -> None:
    with alertmanager_reads(503) as (seen, base), pytest.raises(TransientDeliveryError, match="HTTP 503"):
        AlertmanagerChannel().send(base, am_message())
    assert seen == ["GET"]


# -- values and thresholds rendered apart --------------------------------------------------------------------


def metric_event(metric: str, op: str, threshold: float, value: float, kind: str = "triggered") -> dict[str, Any]:
    alert = {
        "alert_id": "a1", "rule_id": "r", "severity": "HIGH", "description": "", "metric": metric, "op": op,
        "threshold": threshold, "value": value, "unit": "fraction", "stale": False, "triggered_at": T0,
        "kind": "metric",
    }  # fmt: skip
    return {"event_id": "e", "kind": kind, "portfolio_id": "main", "ts": T0, "level": 0, "alert": alert}


@pytest.mark.parametrize(
    ("op", "threshold", "value", "value_text", "threshold_text"),
    [
        (">", 0.0005, 0.0006, "6.0 bp", "5.0 bp"),  # was 0.1% (> 0.1%)
        (">", 0.02, 0.02004, "2.004%", "2.000%"),  # was 2.0% (> 2.0%)
        (">=", 1.0, 0.9996, "99.96%", "100.00%"),  # was 100.0% (>= 100.0%)
        (">", 0.0099, 0.00992, "99.2 bp", "99.0 bp"),  # both under 1%: basis points, one more decimal
        (">", 0.0099, 0.01, "1.00%", "0.99%"),  # the value at 1% exactly: both in percent
    ],
)
def test_a_value_and_its_threshold_read_apart_in_the_email_and_the_sms(
    op: str, threshold: float, value: float, value_text: str, threshold_text: str
) -> None:
    message = Renderer().render("main", [metric_event("drawdown.daily", op, threshold, value)])
    assert f"drawdown.daily = {value_text} ({op} {threshold_text})" in message.short
    assert f"Condition:   drawdown.daily {op} {threshold_text}\n" in message.body
    assert f"Value:       {value_text}\n" in message.body


def test_basis_points_start_one_basis_point_under_one_percent() -> None:
    assert format_metric(BASIS_POINTS_BELOW, "fraction") == "1.00%"
    assert format_metric(BASIS_POINTS_BELOW - 0.0001, "fraction") == "99 bp"
    assert format_metric(-0.0005, "fraction") == "-5.0 bp"
    assert format_metric(0.00005, "fraction") == "0.50 bp"  # two significant digits: a half-bp threshold
    assert format_metric(0.0, "fraction") == "0.00%"
    assert format_metric(0.5, "percent", 0.4) == "50 bp"  # ``percent`` metrics are in percent points


def test_extra_decimals_stop_at_the_cap() -> None:
    base = 2  # percent decimals
    at_cap = 0.02 + 10.0 ** -(base + MAX_EXTRA_DECIMALS + 2)  # differs in the last decimal the cap allows
    assert format_metric(at_cap, "fraction", 0.02) == "2." + "0" * (base + MAX_EXTRA_DECIMALS - 1) + "1%"
    beyond = 0.02 + 10.0 ** -(base + MAX_EXTRA_DECIMALS + 3)  # one decimal past the cap: reads the same
    assert format_metric(beyond, "fraction", 0.02) == format_metric(0.02, "fraction", beyond)


def test_float_dust_beside_a_threshold_gets_no_extra_decimals() -> None:
    """A utilization computed at its limit comes out 1.0000000000000002: it reads like its threshold at the usual
    precision, not as eight identical decimals that suggest a difference they cannot show."""
    for value, unit, threshold, text in (
        (1.0000000000000002, "fraction", 1.0, "100.00%"),
        (0.1 + 0.2, "fraction", 0.3, "30.00%"),
        (2.0000000000000004, "ratio", 2.0, "2.00x"),
        (1e6 + 1e-9, "money", 1e6, "$1,000,000.00"),
        (0.02 + 10.0 ** -(2 + MAX_EXTRA_DECIMALS + 3), "fraction", 0.02, "2.00%"),  # 5e-10 relative: dust
    ):
        assert value != threshold
        assert format_metric(value, unit, threshold) == format_metric(threshold, unit, value) == text


def test_the_float_dust_tolerance_ends_at_one_part_in_a_billion() -> None:
    """Money is not rescaled before the comparison, so the boundary is exact: the largest value ``isclose`` to
    $1,048,576 (2**20) reads like it; the next float up reads apart, by its extra decimals."""
    threshold = 2.0**20
    edge = threshold * (1 + SAME_REL_TOL)
    while math.isclose(threshold, math.nextafter(edge, math.inf), rel_tol=SAME_REL_TOL, abs_tol=SAME_ABS_TOL):
        edge = math.nextafter(edge, math.inf)
    while not math.isclose(threshold, edge, rel_tol=SAME_REL_TOL, abs_tol=SAME_ABS_TOL):
        edge = math.nextafter(edge, -math.inf)
    over = math.nextafter(edge, math.inf)
    # independently: the edge is one part in a billion of the larger number, to within the float spacing
    assert abs(Fraction(edge - threshold) / Fraction(edge) - Fraction(1, 10**9)) < Fraction(1, 10**15)
    assert format_metric(edge, "money", threshold) == format_metric(threshold, "money", edge) == "$1,048,576.00"
    assert format_metric(over, "money", threshold) == "$1,048,576.001"
    assert format_metric(threshold, "money", over) == "$1,048,576.000"


def test_numbers_the_capped_decimals_cannot_tell_apart_read_at_the_usual_precision() -> None:
    """$0.000000006 against $0.000000001 differ in the last of the 2 + 6 decimals allowed; $0.000000004 does not
    (both round to $0.00000000), so it reads at the usual two decimals, like the value it cannot be told from."""
    assert (format_metric(6e-9, "money", 1e-9), format_metric(1e-9, "money", 6e-9)) == ("$0.00000001", "$0.00000000")
    assert format_metric(4e-9, "money", 1e-9) == format_metric(1e-9, "money", 4e-9) == "$0.00"


NUMBER = re.compile(r"^(-?[\d,]+(?:\.\d+)?)( bp|%)$")


def parsed(text: str) -> tuple[float, float]:
    """The fraction a rendered text stands for, and half its last digit (the rounding bound)."""
    match = NUMBER.match(text)
    assert match, text
    digits, suffix = match.group(1).replace(",", ""), match.group(2)
    decimals = len(digits.partition(".")[2])
    scale = 1e-4 if suffix == " bp" else 1e-2
    return float(digits) * scale, 0.5 * 10.0**-decimals * scale


@settings(max_examples=300, deadline=None)
@example(2.0, 2.0 - 2.1e-9)  # apart by more than one part in a billion of 2: reads apart
@example(2.0, 2.0 - 1.9e-9)  # by less: float dust, and not required to
@example(0.0, -0.0)
@example(-4e-129, 0.0)  # rounds to zero: reads 0.00%, not -0.00%
@given(
    st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False),
    st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False),
)
def test_rendered_value_and_threshold_differ_keep_their_order_and_stay_within_half_a_digit(v: float, t: float) -> None:
    value_text, threshold_text = format_metric(v, "fraction", t), format_metric(t, "fraction", v)
    (pv, ev), (pt, et) = parsed(value_text), parsed(threshold_text)
    assert ev == et  # one precision for both
    assert math.isclose(pv, v, abs_tol=ev * 1.000001) and math.isclose(pt, t, abs_tol=et * 1.000001)
    assert (pv <= pt) if v <= t else (pv >= pt)  # rounding is monotone, even where the texts read alike
    # the cap resolves 1e-10 in percent, 1e-10 in basis points; closer than SAME_REL_TOL is float dust (the margin:
    # the comparison is made on the percent or basis-point figures, rounded once more)
    if abs(v - t) >= max(1e-9, SAME_REL_TOL * 1.000001 * max(abs(v), abs(t))):
        assert value_text != threshold_text
        assert (pv < pt) == (v < t)
    elif v == t:  # 0.0 and -0.0 too
        assert value_text == threshold_text


# -- the escalated page after an acknowledge timeout ---------------------------------------------------------


def bodies(server: Any) -> dict[str, str]:
    out = {}
    for envelope in server.messages:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        out[envelope.rcpt_tos[0]] = msg.get_body().get_content()  # type: ignore[union-attr]
    return out


def test_the_escalated_page_after_an_acknowledge_timeout_says_who_acknowledged_it_and_when(
    store: Store, make_settings: Any
) -> None:
    crit = rule("var_breach", "var.utilization", ">=", 1.0, "CRITICAL", description="VaR above its limit")
    with smtp_server() as (server, env):
        settings_ = make_settings({
            "alert_rules": [crit],
            "notifications": {"group_wait_seconds": 0, "group_interval_seconds": 0,
                              "recipients": {"desk": {"email": "desk@test.local"},
                                             "head": {"email": "head@test.local"}}},
            "escalation": {"ack_timeout_seconds": 600, "CRITICAL": [
                {"delay_seconds": 0, "recipients": ["desk"], "channels": ["email"]},
                {"delay_seconds": 300, "recipients": ["head"], "channels": ["email"]}]},
        })  # fmt: skip
        clock = SimClock()
        notifier = build_notifier(store, settings_, clock, env=env, sleep=SleepRecorder())
        engine = build_alert_engine(store, settings_, clock, recipients=notifier.config.recipients.keys())

        def at(t: float) -> None:
            clock.now = T0 + t
            engine.evaluate("main", snapshot("main", now=T0 + t, var__utilization=1.5), T0 + t)
            engine.tick(T0 + t)
            notifier.flush(T0 + t, ["main"])

        at(0)
        clock.now = T0 + 60
        engine.acknowledge("main", "var_breach", "alice", "hedging now")
        at(660)  # the acknowledge timeout (T0 + 660): level 1 is reminded, level 2 due 300 s later
        at(960)
        head = bodies(server)["head@test.local"]
    assert "Acknowledged by alice at 2023-11-14 22:14:20 UTC, still active 15 min later" in head
    assert "Nobody has acknowledged" not in head


def test_an_escalated_page_never_acknowledged_still_says_nobody_acknowledged_it() -> None:
    event = metric_event("var.utilization", ">=", 1.0, 1.5, kind="escalated")
    event.update(ts=T0 + 300, level=1, acknowledged_by=None, acknowledged_at=None)
    _, body, short = Renderer().render_event(event)
    assert "Nobody has acknowledged this alert since 2023-11-14 22:13:20 UTC (5 min)." in body
    assert "unacknowledged for 5 min" in short
    acked = {**event, "acknowledged_by": "bob", "acknowledged_at": T0 + 60}
    _, body, short = Renderer().render_event(acked)
    assert "Acknowledged by bob at 2023-11-14 22:14:20 UTC, still active 4 min later" in body
    assert "acked by bob 4 min ago, still active" in short and "unacknowledged" not in short
