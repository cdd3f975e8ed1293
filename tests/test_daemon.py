"""engine/daemon.py: the daemons' shared backoff between failed Redis operations and its log level."""

from __future__ import annotations

import logging
import threading

from engine.daemon import (
    BACKOFF_INITIAL_SECONDS,
    BACKOFF_MAX_SECONDS,
    FAILURES_PER_WARNING,
    Backoff,
    failure_log_level,
)


def test_backoff_doubles_from_its_start_up_to_its_cap_and_a_reset_starts_again() -> None:
    stop = threading.Event()
    stop.set()  # every wait returns at once, and says it was stopped
    backoff = Backoff()
    waits = []
    for _ in range(12):
        waits.append(backoff.delay)
        assert backoff.wait(stop) is True
    assert waits[:4] == [BACKOFF_INITIAL_SECONDS * 2**k for k in range(4)]
    assert waits == [min(BACKOFF_MAX_SECONDS, BACKOFF_INITIAL_SECONDS * 2**k) for k in range(12)]
    assert waits[-1] == BACKOFF_MAX_SECONDS and backoff.delay == BACKOFF_MAX_SECONDS  # the cap holds
    backoff.reset()
    assert backoff.delay == BACKOFF_INITIAL_SECONDS


def test_an_unstopped_backoff_waits_its_delay_and_says_so() -> None:
    backoff = Backoff()
    assert backoff.wait(threading.Event()) is False
    assert backoff.delay == 2 * BACKOFF_INITIAL_SECONDS


def test_the_first_failure_and_every_twentieth_after_are_warnings_the_others_debug() -> None:
    assert FAILURES_PER_WARNING == 20
    levels = {n: failure_log_level(n) for n in (1, 2, 20, 21, 22, 41)}
    assert levels == {1: logging.WARNING, 2: logging.DEBUG, 20: logging.DEBUG, 21: logging.WARNING,
                      22: logging.DEBUG, 41: logging.WARNING}  # fmt: skip
