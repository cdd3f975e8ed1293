"""What every Riskdesk daemon does on the way in: the same command-line options for its settings file and log
level, log lines in one format, a Redis client without redis-py's own retries, and a stop on SIGTERM / SIGINT.

The stream daemon (``python -m engine.stream``), the monitor (``python -m logic.monitor``) and the delivery
daemon (``python -m notifications``) call these from their ``main``; nothing here runs at import time.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from typing import Final

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from engine.redis_server import connect
from engine.settings import Settings

LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""One format for every daemon, so their logs interleave readably."""

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
"""The choices of ``--log-level``."""

BACKOFF_INITIAL_SECONDS: Final = 0.05
"""A daemon's first wait after a failed Redis operation; doubles on every further failure."""
BACKOFF_MAX_SECONDS: Final = 5.0
"""Longest wait between two attempts while Redis is unreachable."""
FAILURES_PER_WARNING: Final = 20
"""A daemon that keeps failing logs its first failure and every this-many-th after as a warning, the rest at
DEBUG (:func:`failure_log_level`)."""


class Backoff:
    """A daemon's capped exponential wait between failed Redis operations: :data:`BACKOFF_INITIAL_SECONDS`, twice
    as long after each further failure up to :data:`BACKOFF_MAX_SECONDS`, back to the start after a success."""

    def __init__(self) -> None:
        self.delay = BACKOFF_INITIAL_SECONDS
        """The next wait (seconds)."""

    def reset(self) -> None:
        self.delay = BACKOFF_INITIAL_SECONDS

    def wait(self, stop: threading.Event) -> bool:
        """Wait :attr:`delay`, or until ``stop`` is set (True then); the next wait is twice as long, capped."""
        stopped = stop.wait(self.delay)
        self.delay = min(BACKOFF_MAX_SECONDS, self.delay * 2)
        return stopped


def failure_log_level(failures: int) -> int:
    """WARNING for the first failure and every :data:`FAILURES_PER_WARNING`-th after, DEBUG for the others: an
    outage is reported without a line every backoff step."""
    return logging.WARNING if failures % FAILURES_PER_WARNING == 1 else logging.DEBUG


def add_daemon_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and ``--log-level``, the options every daemon takes."""
    parser.add_argument("--config", help="settings file (default: $RISKDESK_CONFIG or riskdesk.toml)")
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS)


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` in :data:`LOG_FORMAT` (a no-op when the root logger is already set up)."""
    logging.basicConfig(level=level, format=LOG_FORMAT)


def install_signal_handlers(
    stop: Callable[[], None], logger: logging.Logger | None = None, doing: str = "stopping"
) -> None:
    """Call ``stop`` on SIGTERM and SIGINT, logging ``received SIGTERM: <doing>`` to ``logger``."""
    out = logger or logging.getLogger("riskdesk.daemon")

    def handler(signum: int, _frame: object) -> None:
        out.info("received %s: %s", signal.Signals(signum).name, doing)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def stop_on_signals(logger: logging.Logger, doing: str = "stopping") -> threading.Event:
    """An event that SIGTERM and SIGINT set: the daemon's loop waits on it and ends once it is set."""
    stop = threading.Event()
    install_signal_handlers(stop.set, logger, doing)
    return stop


def connect_for_daemon(settings: Settings) -> redis.Redis:
    """A client whose failures surface at once: the daemons run their own backoff, and redis-py's default
    retry of a whole MULTI/EXEC after a broken connection could apply a committed transaction twice."""
    client = connect(settings)
    client.set_retry(Retry(NoBackoff(), 0))
    return client
