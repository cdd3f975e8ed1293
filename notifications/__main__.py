"""``python -m notifications``: the delivery daemon. Flushes every portfolio's outbox about once a second.

Usage: python -m notifications [--config FILE] [--interval SECONDS] [--log-level INFO]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from engine.daemon import add_daemon_arguments, configure_logging, stop_on_signals
from engine.errors import RiskdeskError
from engine.metrics import serve
from engine.redis_server import connect
from engine.settings import load_settings
from engine.store import Store
from notifications.service import FLUSH_INTERVAL_SECONDS, build_notifier, run

LOGGER = logging.getLogger("riskdesk.notifications")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m notifications", description=__doc__.split("\n\n")[0])
    add_daemon_arguments(parser)
    parser.add_argument("--interval", type=float, default=FLUSH_INTERVAL_SECONDS, metavar="SECONDS")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    stop = stop_on_signals(LOGGER)
    try:
        settings = load_settings(args.config)
        store = Store(connect(settings))
        notifier = build_notifier(store, settings)
        serve(notifier.metrics.registry, settings.metrics.address, settings.metrics.notifications_port, "notifications")
    except RiskdeskError as exc:
        print(f"notifications: error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    written = run(notifier, stop, max(0.05, args.interval))
    print(f"notifications: {written} delivery records written", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
