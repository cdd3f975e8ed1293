"""The Audit page reads by time: every record of the chosen window that Redis still holds is shown however many
newer records sit in the same stream (a flood of automated steps never hides the limit change that explains the
day), streams are read in pages, a read past its cap names each stream it cut and from when, and a book sync's
rows say what moved (engine/store/audit.py ``read_audit_trail``, logic/views/audit.py)."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import warmup
from engine import book
from engine.records import Role
from engine.settings import Settings
from engine.store import PortfolioKeys, Store
from engine.store import audit as store_audit
from engine.store.codec import encode_json
from logic import views
from logic.access import Identity
from logic.views import audit as view_audit
from logic.views.audit import AuditKind, audit_view, fmt_time, window_filter

from .conftest import TEST_CONFIG, merge, to_toml

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
RISK = Identity("https://idp.example", "risk-1", email="r@example.com", roles=frozenset({Role.RISK_MANAGER}))
WEEK = 7 * 86_400.0
MAIN = PortfolioKeys("main")
STREAMS = 1 + 2 * len(store_audit.PORTFOLIO_SOURCES)
"""Streams one read covers on the seeded store: rd:audit and four of each of its two portfolios."""


def xadd(store: Store, key: str, ms: int, record: dict[str, Any], seq: int = 0) -> str:
    """Append ``record`` under the explicit stream id ``<ms>-<seq>`` (what Redis writes at that millisecond)."""
    entry_id = f"{ms}-{seq}"
    store.client.xadd(key, {"json": encode_json(record)}, id=entry_id)
    return entry_id


def step(ts: float, n: int) -> dict[str, Any]:
    return {"ts": ts, "actor": "auto:dd", "action": "automated_step", "step": "measure", "round": n}


def xrevrange_calls(store: Store) -> int:
    stats = store.client.info("commandstats")
    return int(stats.get("cmdstat_xrevrange", {}).get("calls", 0))


@pytest.fixture
def live_desk(store: Store, settings: Settings) -> views.Desk:
    """A seeded store and a desk on the wall clock (stream ids and record times on the same clock, as live)."""
    warmup.seed(store, settings, now=time.time() - 7200)
    return views.Desk(store.client, settings, clock=time.time)


def test_a_limit_change_stays_in_its_window_under_more_newer_records_than_a_page(live_desk: views.Desk) -> None:
    seen = views.limits_view(live_desk, "main")
    views.change_limits(live_desk, "main", {"var_limit": "15000"}, RISK, "tighten after loss", seen)
    flood = store_audit.AUDIT_PAGE + 1  # the old read stopped at the newest 2,000 of each stream
    with live_desk.store.client.pipeline(transaction=False) as pipe:
        for n in range(flood):
            live_desk.store.append_audit(MAIN.audit, step(time.time() - 1800, n), pipe)
        pipe.execute()

    for window in ("Last 7 days", "Everything kept"):
        av = audit_view(live_desk, window_filter(time.time(), window, kinds=[AuditKind.LIMIT_CHANGE]))
        assert av.matched == 1 and av.cut_note == "", window
        (row,) = av.entries
        assert row.actor == RISK.actor and row.detail == "tighten after loss"
        assert "VaR limit: USD 20,000.00 → USD 15,000.00" in row.summary
    steps = audit_view(live_desk, window_filter(time.time(), "Last hour", kinds=[AuditKind.AUTOMATED]))
    assert steps.matched == flood  # every one of them, across two pages of the stream


def test_the_store_reads_from_exactly_the_window_start_millisecond(store: Store) -> None:
    start = 1_700_000_000_000
    older = xadd(store, MAIN.audit, start - 1, step((start - 1) / 1000, 0))
    first = xadd(store, MAIN.audit, start, step(start / 1000, 1))
    second = xadd(store, MAIN.audit, start, step(start / 1000, 2), seq=1)
    newest = xadd(store, MAIN.audit, start + 5, step((start + 5) / 1000, 3))

    trail = store.read_audit_trail(["main"], since_ms=start)
    assert [r["id"] for r in trail.portfolios["main"]["audit"]] == [newest, second, first]
    assert trail.cut == {} and trail.since_ms == start
    one_ms_earlier = store.read_audit_trail(["main"], since_ms=start - 1)
    assert [r["id"] for r in one_ms_earlier.portfolios["main"]["audit"]] == [newest, second, first, older]


def test_a_record_exactly_at_the_window_start_is_shown_and_one_ms_before_is_not(live_desk: views.Desk) -> None:
    live_desk.store.client.delete(MAIN.audit)  # the seed's records (written now): these are older
    now = time.time()
    since = now - WEEK
    # written when they are dated (stream id = their time, as live): one at the start, one a millisecond before
    xadd(live_desk.store, MAIN.audit, math.floor(since * 1000) - 1, step(since - 0.001, 0))
    xadd(live_desk.store, MAIN.audit, math.floor(since * 1000), step(since, 1))
    xadd(live_desk.store, MAIN.audit, math.floor(since * 1000) + 60_000, step(since + 60, 2))
    with live_desk.store.client.pipeline(transaction=False) as pipe:  # a flood after them, more than a page
        for n in range(store_audit.AUDIT_PAGE + 1):
            live_desk.store.append_audit(MAIN.audit, step(now - 10, 100 + n), pipe)
        pipe.execute()

    f = window_filter(now, "Last 7 days", portfolios=["main"], kinds=[AuditKind.AUTOMATED])
    assert f.since == since
    assert audit_view(live_desk, f).matched == store_audit.AUDIT_PAGE + 3  # the flood, rounds 2 and 1
    older = audit_view(live_desk, dataclasses.replace(f, until=now - 3600))  # the rows past the newest 2,000
    assert [e.summary for e in older.entries] == ["response step measure: round 2", "response step measure: round 1"]
    assert older.entries[-1].ts == since


def test_a_window_with_more_records_than_one_page_is_read_whole_in_pages(store: Store) -> None:
    start = 1_700_000_000_000
    for n in range(10):  # before the window: never read
        xadd(store, MAIN.audit, start - 1000 + n, step(0, n))
    ids = [xadd(store, MAIN.audit, start + n, step((start + n) / 1000, n)) for n in range(50)]
    store.client.config_resetstat()

    trail = store.read_audit_trail(["main", "hedge"], since_ms=start, page=7)

    assert [r["id"] for r in trail.portfolios["main"]["audit"]] == ids[::-1]
    assert trail.cut == {}
    # 50 records in pages of 7: seven full pages and one of 1 for the stream; one (empty) page for the other 8
    assert xrevrange_calls(store) == 8 + (STREAMS - 1)
    store.client.config_resetstat()
    store.read_audit_trail(["main", "hedge"], since_ms=start)  # the normal case: one page per stream
    assert xrevrange_calls(store) == STREAMS


def test_a_read_exactly_at_its_cap_is_whole_and_one_under_names_the_stream_it_cut(store: Store) -> None:
    start = 1_700_000_000_000
    ids = [xadd(store, MAIN.audit, start + 1000 * n, step(start / 1000 + n, n)) for n in range(30)]
    hedge = xadd(store, PortfolioKeys("hedge").audit, start, step(start / 1000, 0))

    whole = store.read_audit_trail(["main", "hedge"], 31, since_ms=start, page=5)
    assert len(whole.portfolios["main"]["audit"]) == 30 and whole.cut == {}

    cut = store.read_audit_trail(["main", "hedge"], 30, since_ms=start, page=5)
    read = [r["id"] for r in cut.portfolios["main"]["audit"]]
    assert read == ids[::-1][: len(read)] and len(read) == 29  # the newest, in order, the cap in all
    assert [r["id"] for r in cut.portfolios["hedge"]["audit"]] == [hedge]
    assert cut.cut == {MAIN.audit: ids[1]}  # the oldest read; ids[0] in range, not read

    note = view_audit.cut_note(cut, 30)
    assert f"`{MAIN.audit}` before {fmt_time(start / 1000 + 1)}" in note
    assert "hedge" not in note and "30 records" in note
    assert view_audit.cut_note(whole, 31) == ""


def test_the_page_says_which_stream_it_cut_and_from_when(
    redis_server: Any, store: Store, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warmup.seed(store, settings, now=time.time() - 7200)
    store.client.delete(MAIN.audit)  # the seed's records (written now): these are a minute older
    now_ms = int(time.time() * 1000)
    ids = [xadd(store, MAIN.audit, now_ms - 60_000 + n, step(now_ms / 1000 - 60, n)) for n in range(40)]
    config = tmp_path / "riskdesk.toml"
    config.write_text(to_toml(merge(TEST_CONFIG, {})), encoding="utf-8")
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("RISKDESK_CONFIG", str(config))
    monkeypatch.setattr(view_audit, "AUDIT_READ_CAP", 20)
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(str(APP), default_timeout=30.0)
        at.session_state["refresh"] = "Paused"
        at.session_state["au_window"] = "Last hour"
        at.switch_page("screens/audit.py")
        at.run()
        assert not at.exception and not at.error
        (warning,) = [w.value for w in at.warning if "Not every record" in w.value]
        cut_at = store.read_audit_trail(["main", "hedge"], 20).cut[MAIN.audit]
        assert cut_at in ids[1:]
        assert "Not every record of this window was read" in warning and "at most 20 records" in warning
        assert f"`{MAIN.audit}` before {fmt_time(int(cut_at.split('-')[0]) / 1000)}" in warning
    finally:
        st.cache_resource.clear()


def test_a_sync_row_says_before_and_after_and_a_capital_flow_row_what_moved(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    warmup.seed(store, settings, now=1_000.0)  # main: cash 1,000,000, AAA 1000 @ 100, BBB 2000 @ 50
    path = tmp_path / "book.csv"
    path.write_text("portfolio_id,ticker,qty,avg_price,account_type,cash\nmain,AAA,500,100,,\nmain,,,,cash,900000\n")
    book.sync(store, settings, book.read_book(path, settings.universe.assets), dry_run=False, create=False,
              now=2_000.0, actor="backoffice", out=lambda _line: None)  # fmt: skip
    desk = views.Desk(store.client, settings, clock=lambda: 3_000.0)

    rows = {e.summary for e in audit_view(desk, views.AuditFilter(actors=frozenset({"backoffice"}))).entries}

    # flow = cash change + each quantity change at its price: -100,000 + (-500 x 100) + (-2,000 x 50) = -250,000
    assert rows == {
        "sync cash: USD 1,000,000.00 → USD 900,000.00",
        "sync position:AAA: 1000 @ 100.0 → 500 @ 100",
        "sync position:BBB: 2000 @ 50.0 → (none)",
        "capital_flow USD -250,000.00: cash USD -100,000.00; AAA -500 @ USD 100.00 = USD -50,000.00; "
        "BBB -2,000 @ USD 50.00 = USD -100,000.00",
    }


def _fill_every_stream(store: Store, start: int, per_stream: int) -> list[str]:
    """``per_stream`` records in each of the read's streams (rd:audit, then main's and hedge's sources, the read's
    order), one millisecond apart; returns the stream keys in that order."""
    sources = store_audit.PORTFOLIO_SOURCES
    keys = ["rd:audit"] + [getattr(PortfolioKeys(pid), s) for pid in ("main", "hedge") for s in sources]
    for key in keys:
        for n in range(per_stream):
            xadd(store, key, start + n, step((start + n) / 1000, n))
    return keys


@pytest.mark.parametrize("limit", [2 * STREAMS + 4, 2 * STREAMS - 1, 2 * STREAMS, 3 * STREAMS - 1, 3 * STREAMS])
def test_the_last_round_reads_at_most_the_cap_and_cuts_every_stream_it_left(store: Store, limit: int) -> None:
    """9 streams of 3 records each: round one reads ``limit // 9`` of each; once fewer records are left to read
    than streams, only the first streams get one more, so exactly ``limit`` records are read (one over the cap
    used to read a record from every stream); a stream with records left is named in the cut."""
    start = 1_700_000_000_000
    keys = _fill_every_stream(store, start, 3)
    trail = store.read_audit_trail(["main", "hedge"], limit, since_ms=start, page=100)
    by_key = {"rd:audit": trail.global_records} | {
        getattr(PortfolioKeys(pid), s): trail.portfolios[pid][s]
        for pid in ("main", "hedge")
        for s in store_audit.PORTFOLIO_SOURCES
    }
    assert sum(len(v) for v in by_key.values()) == min(limit, 3 * STREAMS)
    # independent count: limit // 9 each, and one more for the first limit % 9 streams (3 at most)
    expected = {key: min(3, limit // STREAMS + (1 if i < limit % STREAMS else 0)) for i, key in enumerate(keys)}
    assert {key: len(v) for key, v in by_key.items()} == expected
    for key, records in by_key.items():  # the newest of each stream, newest first
        assert [r["id"] for r in records] == [f"{start + 2 - n}-0" for n in range(expected[key])]
    assert trail.cut == {key: f"{start + 3 - n}-0" for key, n in expected.items() if n < 3}


@pytest.mark.parametrize("limit", [1, STREAMS - 1, STREAMS])
def test_a_cap_under_the_number_of_streams_reads_the_cap_and_cuts_the_unread_streams_above_their_newest(
    store: Store, limit: int
) -> None:
    start = 1_700_000_000_000
    keys = _fill_every_stream(store, start, 2)
    trail = store.read_audit_trail(["main", "hedge"], limit, since_ms=start)
    read = len(trail.global_records) + sum(len(v) for p in trail.portfolios.values() for v in p.values())
    assert read == limit
    # read: the first ``limit`` streams, their newest record (cut at it); unread: cut just above their newest
    assert trail.cut == {key: f"{start + 1}-0" if i < limit else f"{start + 1}-1" for i, key in enumerate(keys)}
    note = view_audit.cut_note(trail, limit)
    assert all(f"`{key}`" in note for key in keys)
