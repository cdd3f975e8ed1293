"""A restarted replay continues where it stopped (engine/feeds.py ``ReplayFeed.resume_after``, used by
``python -m engine.stream --feed replay``): ``make stop && make demo`` used to play the whole file again on top of
the market it had written, so every figure moved across the restart (issue 14)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.feeds import ReplayFeed
from engine.redis_server import EmbeddedRedis
from engine.store import Store

from .test_stream import DECAY, ROOT, TICKERS, daemon_env, write_config

ROWS = [
    [100.0, 50.0, 200.0, 25.0], [101.0, 49.0, 202.0, 25.5], [99.5, 48.5, 199.0, 26.0],
    [100.5, 48.0, 201.0, 25.2], [102.0, 49.5, 203.5, 24.8], [101.0, 50.5, 202.0, 25.1],
]  # fmt: skip


def write_bars(tmp_path: Path) -> Path:
    csv = tmp_path / "bars.csv"
    csv.write_text(
        "date," + ",".join(TICKERS) + "\n"
        + "".join(f"2024-03-01T10:{i:02d}:00," + ",".join(map(repr, row)) + "\n" for i, row in enumerate(ROWS))
    )  # fmt: skip
    return csv


def replay(csv: Path, url: str, config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "engine.stream", "--feed", "replay", "--file", str(csv), "--interval", "0", *extra],
        cwd=ROOT, env=daemon_env(url, config), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def test_resume_after_drops_the_bars_up_to_and_including_the_one_at_that_time(tmp_path: Path) -> None:
    feed = ReplayFeed(write_bars(tmp_path))
    times = [b.ts for b in feed.bars]
    assert feed.resume_after(times[2]) == 3
    assert [b.ts for b in feed.bars] == times[3:]
    assert not any(b.reset for b in feed.bars)  # the return from the dropped bar's stored prices is kept


def test_resume_after_a_time_not_in_the_file_drops_nothing(tmp_path: Path) -> None:
    feed = ReplayFeed(write_bars(tmp_path))
    times = [b.ts for b in feed.bars]
    assert feed.resume_after(times[2] + 1.0) == 0  # between two bars: the store's last bar is not from here
    assert feed.resume_after(times[-1] + 60.0) == 0
    assert [b.ts for b in feed.bars] == times and feed.bars[0].reset


def test_a_replay_stopped_and_started_again_ends_on_the_market_of_one_uninterrupted_replay(
    seeded_store: Store, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    # Arrange
    csv, config = write_bars(tmp_path), write_config(tmp_path)
    start = seeded_store.read_market()
    # Act: three bars, a stop, then the same command again, then once more after the file has ended
    replay(csv, redis_server.url, config, "--ticks", "3")
    assert seeded_store.read_market_version() == 3
    second = replay(csv, redis_server.url, config)
    ended = seeded_store.read_market()
    third = replay(csv, redis_server.url, config)
    # Assert: the closed form of one replay (row 0 anchors: no return against the seeded prices)
    prices = np.array(ROWS)
    cov = start.cov.copy()
    for t in range(1, len(ROWS)):
        r = np.log(prices[t] / prices[t - 1])
        cov = DECAY * cov + (1 - DECAY) * np.outer(r, r)
    assert ended.version == len(ROWS)
    np.testing.assert_array_equal(ended.prices, prices[-1])
    np.testing.assert_allclose(ended.cov, cov, rtol=1e-10, atol=0)
    assert [e.reset for e in seeded_store.read_ticks()] == [True] + [False] * (len(ROWS) - 1)
    assert "holds its first 3 of 6 bars" in second.stderr + second.stdout
    # the ended replay started again reads nothing: the market is the same, to the byte
    after = seeded_store.read_market()
    assert after.version == ended.version and after.ts == ended.ts
    np.testing.assert_array_equal(after.cov, ended.cov)
    assert "holds its first 6 of 6 bars" in third.stderr + third.stdout


@pytest.mark.parametrize("written", ["split", "reload"])
def test_a_replay_stopped_for_a_split_or_a_reload_resumes_after_its_last_bar_the_next_one_anchoring(
    seeded_store: Store, redis_server: EmbeddedRedis, tmp_path: Path, written: str
) -> None:
    """The split procedure: stop the daemon, apply the split, start it again. The split writes a market version of
    its own (no tick), and the restart played the file again from its first row: the pre-split prices against the
    doubled books, and the file's last pre-split print to its first post-split one as a -50% return. It resumes
    after its last bar; as the market was written since (a split, a history reload: AAA at 70), the first bar
    resumed anchors: no return from the prices written since."""
    from fractions import Fraction

    from engine import reload
    from engine.corporate_actions import apply_split
    from engine.settings import load_settings

    config = write_config(tmp_path)
    settings = load_settings(config, env={})
    csv = tmp_path / "bars.csv"
    rows = [[100.0, 50.0, 200.0, 25.0], [100.5, 49.5, 201.0, 25.5], [101.0, 49.0, 202.0, 25.2],
            [50.6, 49.5, 203.0, 25.1], [50.4, 50.0, 202.5, 25.3]]  # AAA 2-for-1 after row 2  # fmt: skip
    csv.write_text("date," + ",".join(TICKERS) + "\n" + "".join(
        f"2024-03-01T10:{i:02d}:00," + ",".join(map(repr, row)) + "\n" for i, row in enumerate(rows)
    ))  # fmt: skip
    start = seeded_store.read_market()
    replay(csv, redis_server.url, config, "--ticks", "3")
    if written == "split":
        apply_split(seeded_store, "AAA", Fraction(2), settings=settings, actor="ops", now=2e9)
        assert seeded_store.read_market().prices[0] == 50.5
    else:
        market = seeded_store.read_market()
        prices = market.prices.copy()
        prices[0] = 70.0
        reload.reload_market(seeded_store, settings, market.tickers, prices, market.cov, now=2e9, actor="ops",
                             detail={})  # fmt: skip
    assert seeded_store.read_market_version() == 4
    reloaded = seeded_store.read_market().cov
    second = replay(csv, redis_server.url, config)

    assert "holds its first 3 of 5 bars" in second.stderr + second.stdout
    ticks = seeded_store.read_ticks()
    expected = [(1, 100.0, True), (2, 100.5, False), (3, 101.0, False), (5, 50.6, True), (6, 50.4, False)]
    assert [(e.version, float(e.prices[0]), e.reset) for e in ticks] == expected  # version 4: the split's
    prices = np.array(rows)
    cov = start.cov.copy() if written == "split" else reloaded.copy()
    for t in (1, 2, 4) if written == "split" else (4,):  # rows 0 and 3 anchor (log returns: a split moves none)
        r = np.log(prices[t] / prices[t - 1])
        cov = DECAY * cov + (1 - DECAY) * np.outer(r, r)
    np.testing.assert_allclose(seeded_store.read_market().cov, cov, rtol=1e-10, atol=0)
