"""The replay file feed of the stream daemon (``python -m engine.stream --feed replay --file CSV``): the file's
bars with the bar scale derived from the whole file, stamped at their session closes for a file of dates, and
resumed after the last bar the store holds when the daemon is started again (README "Feeds")."""

from __future__ import annotations

import argparse
import logging
import math

import numpy as np

from engine.clocks import STREAM_COMPONENT, stamp_daily_closes, wall_sleep
from engine.errors import FeedError
from engine.feeds import Bar, Feed, ReplayFeed
from engine.price_filter import BarScaleMismatch, replay_bar_scale
from engine.sessions import market_calendar
from engine.settings import Settings
from engine.store import Store

log = logging.getLogger("riskdesk.stream")


def replay_feed(args: argparse.Namespace, settings: Settings, store: Store) -> Feed:
    """The feed of ``--feed replay --file CSV`` (``args.file``, ``args.bar_model_bars``): the file's bars, their
    bar scale, stamped at their session closes for a file of dates, resumed after the last bar the store holds
    (README "Feeds")."""
    if not args.file:
        raise FeedError("--feed replay needs --file CSV", fix="pass the CSV of bars to replay with --file")
    feed = ReplayFileFeed(args.file, universe=store.read_market_header().tickers)
    # the bar scale from the whole file's own timestamps: before the session stamping (an early close is no
    # whole number of days) and before a restart drops rows (engine/price_filter.py, "Bar scale")
    given = getattr(args, "bar_model_bars", None)
    if given is not None and not (math.isfinite(given) and given > 0):
        raise FeedError(f"--bar-model-bars must be a positive number, got {given}")
    scale = float(given) if given is not None else replay_bar_scale(settings, feed.bars, path=str(args.file))
    feed.bar_model_bars = scale
    sessions = market_calendar(settings).sessions
    if sessions is not None:  # a file of dates: each bar is its session's close (engine/clocks.py)
        feed.bars = stamp_daily_closes(feed.bars, sessions)
    last = store.last_tick()  # a restart: resume after the file's last bar the store holds (engine/feeds.py)
    # on its market, or on one written since without a tick (a split, an added ticker, a history reload: a version
    # each; a re-seed drops the ticks): then the first bar resumed anchors, no return from the prices written since
    version = store.read_market_version() or 0
    if last is not None and last.version <= version and (done := feed.resume_after(last.bar_ts)):
        check_resumed_scale(store, scale, str(args.file))
        written = last.version < version
        if written and feed.bars:
            feed.bars[0] = Bar(feed.bars[0].ts, feed.bars[0].prices, reset=True)
        log.info("replay %s: the store holds its first %d of %d bars; resuming after them%s", args.file, done,
                 done + len(feed), " (market written since: the next bar anchors)" if written else "")  # fmt: skip
    return feed


class ReplayFileFeed(ReplayFeed):
    """The feed of ``--feed replay``: a :class:`~engine.feeds.ReplayFeed` that carries the bar scale its
    builder derived from the whole file (read by :meth:`engine.price_filter.PriceFilter.for_feed`)."""

    bar_model_bars: float | None = None


def check_resumed_scale(store: Store, scale: float, path: str) -> None:
    """A resumed replay must scale its returns as its first run did: the stream heartbeat's
    ``feed_bar_model_bars`` (written with every bar) is that run's; a different one is refused."""
    raw = (store.read_heartbeat(STREAM_COMPONENT) or {}).get("feed_bar_model_bars")
    try:
        before = float(raw) if raw is not None else math.nan
    except ValueError:
        before = math.nan
    if math.isfinite(before) and before > 0 and before != scale:
        raise BarScaleMismatch(
            f"{path}: the store holds this replay's first rows written at {before:g} model bars per row, "
            f"this run would write {scale:g}: the covariance would mix two scales"
        )


def replay_interval(feed: Feed, speed: float) -> float:
    """Wall seconds per bar of a replay played at ``speed`` x its data's time: the median step between its
    bars / ``speed`` (0: as fast as possible). A weekend gap waits one ordinary step."""
    bars = getattr(feed, "bars", [])
    steps = np.diff([float(b.ts) for b in bars]) if len(bars) > 1 else np.empty(0)
    return wall_sleep(float(np.median(steps)) if steps.size else 0.0, speed)
