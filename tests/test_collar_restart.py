"""The collar reference re-anchors at the first session open after a stream-daemon restart, as without one
(engine/collar.py ``CollarAnchor.seed``, called by engine/stream.py when it loads the market)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

import warmup
from engine.clocks import ClockMode
from engine.collar import CollarAnchor
from engine.feeds import Bar, IterableFeed
from engine.sessions import MarketCalendar
from engine.settings import Settings
from engine.store import Store
from engine.stream import StreamDaemon

NY = ZoneInfo("America/New_York")
BASE = {"AAA": 100.0, "BBB": 50.0, "CCC": 200.0, "DDD": 25.0}
OVERRIDE = {"market": {"calendar": "XNYS"}, "monitor": {"timezone": "America/New_York"}}


def ny(*a: int) -> float:
    return datetime(*a, tzinfo=NY).timestamp()  # type: ignore[misc]


def bar(t: float, aaa: float) -> Bar:
    return Bar(t, {**BASE, "AAA": aaa})


# Friday close 100; Tuesday (after MLK day) trades up to 108 and closes there; Wednesday opens at 109
TUESDAY = [bar(ny(2019, 1, 18, 15, 59), 100.0), bar(ny(2019, 1, 22, 9, 31), 104.0), bar(ny(2019, 1, 22, 15, 59), 108.0)]
WEDNESDAY = [bar(ny(2019, 1, 23, 9, 31), 109.0), bar(ny(2019, 1, 23, 9, 32), 111.0)]


def _run(store: Store, settings: Settings, bars: list[Bar]) -> None:
    StreamDaemon(store, settings, IterableFeed(bars), interval=0, clock_mode=ClockMode.REPLAY).run()


@pytest.mark.parametrize("evening", [[], [bar(ny(2019, 1, 22, 17, 0), 108.0)]], ids=["at-close", "after-hours"])
def test_a_daemon_restarted_between_sessions_re_anchors_at_the_next_open_as_one_that_never_stopped(
    store: Store, make_settings: Callable[..., Settings], evening: list[Bar]
) -> None:
    # Arrange
    settings = make_settings(OVERRIDE)
    warmup.seed(store, settings, now=ny(2019, 1, 18, 15, 0))
    _run(store, settings, TUESDAY + evening + WEDNESDAY)
    straight = store.read_reference_prices()
    store.client.flushdb()
    warmup.seed(store, settings, now=ny(2019, 1, 18, 15, 0))
    # Act: the daemon is restarted overnight
    _run(store, settings, TUESDAY + evening)
    assert store.read_reference_prices()["AAA"] == 100.0  # Friday's close, anchored at Tuesday's open
    _run(store, settings, WEDNESDAY)
    # Assert: Tuesday's close, exactly as without the restart
    assert store.read_reference_prices() == straight
    assert straight["AAA"] == 108.0


def test_a_restart_inside_a_session_keeps_the_reference_and_the_next_open_uses_that_sessions_close() -> None:
    cal = MarketCalendar("XNYS", NY, 0)
    anchor = CollarAnchor(cal)
    anchor.seed(ny(2019, 1, 22, 11, 0), np.array([104.0]), np.array([ny(2019, 1, 22, 11, 0)]))
    out, state = anchor.propose(ny(2019, 1, 22, 11, 1), np.array([105.0]))
    assert out is None  # same session: the stored reference stays
    anchor.commit(state)
    out, state = anchor.propose(ny(2019, 1, 23, 9, 31), np.array([106.0]))
    assert out is not None and float(out[0]) == 105.0


def test_a_seeded_state_is_ignored_by_a_bar_older_than_the_snapshot_and_a_held_state_is_not_replaced() -> None:
    cal = MarketCalendar("XNYS", NY, 0)
    anchor = CollarAnchor(cal)
    anchor.seed(ny(2019, 1, 23, 10, 0), np.array([104.0]), np.array([ny(2019, 1, 23, 10, 0)]))
    out, _ = anchor.propose(ny(2019, 1, 18, 10, 0), np.array([90.0]))  # a bar before the seeded snapshot
    assert out is None  # as with no memory
    held = anchor.state
    anchor.seed(ny(2019, 1, 25, 10, 0), np.array([1.0]), np.array([0.0]))
    assert anchor.state is held
