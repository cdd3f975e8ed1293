"""engine/store/market_write.py: the stream daemon's bar, checked against the stored version and epoch and written
in one round trip; and the tick events that name their tickers by a rev (engine/store/market.py), on a real Redis.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import redis

from engine.errors import CorruptDataError
from engine.records import MarketSnapshot
from engine.redis_server import EmbeddedRedis, connect
from engine.store import (
    EPOCH_KEY,
    MARKET_KEY,
    MONITOR_GROUP,
    TICKS_KEY,
    UNIVERSES_KEY,
    MarketWrite,
    Store,
    TickEvent,
    encode_json,
    universe_rev,
)

from .conftest import store_contents

TICKERS = ("AAA", "BBB", "CCC")


def _snapshot(version: int, seed: int = 0) -> MarketSnapshot:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((3, 3))
    return MarketSnapshot(version, 1_700_000_000.0 + version, TICKERS, rng.uniform(10, 100, 3), np.full(3, 1.0),
                          a @ a.T)  # fmt: skip


def _bar_write(store: Store, version: int) -> MarketWrite:
    write = store.market_write()
    store.write_market(_snapshot(version, seed=version), write, tickers=False)
    event = TickEvent(version, 1.0, TICKERS, np.array([1.0, 2.0, 3.0]), token=f"t{version}")
    store.publish_tick(event, 100, write, tickers_rev=universe_rev(encode_json(list(TICKERS))))
    store.write_heartbeat("stream", {"ts": 1.0, "version": version}, write)
    return write


def test_a_bar_written_when_the_store_holds_the_expected_version_and_epoch(store: Store) -> None:
    # Arrange
    store.write_market(_snapshot(4))
    # Act
    done = store.commit_market_write(_bar_write(store, 5), 4, 0)
    # Assert: the snapshot of version 5 (tickers kept), its tick event and the heartbeat
    assert done is True
    back = store.read_market()
    assert back.version == 5 and back.tickers == TICKERS
    np.testing.assert_array_equal(back.cov, _snapshot(5, seed=5).cov)
    [event] = store.read_ticks()
    assert (event.version, event.tickers, event.token) == (5, TICKERS, "t5")
    assert store.read_heartbeat("stream") == {"ts": "1.0", "version": "5"}


@pytest.mark.parametrize(("version", "epoch"), [(3, 0), (5, 0), (4, 1)], ids=["older", "newer", "other epoch"])
def test_a_bar_for_another_version_or_epoch_writes_nothing(store: Store, version: int, epoch: int) -> None:
    # Arrange
    store.write_market(_snapshot(4))
    before = store_contents(store.client)
    # Act
    done = store.commit_market_write(_bar_write(store, version + 1), version, epoch)
    # Assert
    assert done is False
    assert store_contents(store.client) == before


def test_a_bar_after_a_reseed_of_the_same_version_is_refused_by_the_epoch(store: Store) -> None:
    # Arrange: a re-seed writes version 0 again, in a new epoch
    store.write_market(_snapshot(0))
    store.bump_market_epoch()
    # Act
    done = store.commit_market_write(_bar_write(store, 1), 0, 0)
    # Assert
    assert done is False and store.read_market().version == 0 and store.client.get(EPOCH_KEY) == b"1"
    assert store.commit_market_write(_bar_write(store, 1), 0, 1) is True


def test_a_bar_on_an_empty_store_writes_nothing(store: Store) -> None:
    assert store.commit_market_write(_bar_write(store, 1), 0, 0) is False
    assert not store.client.exists(MARKET_KEY, TICKS_KEY)


def test_only_market_writes_run_in_the_script(store: Store) -> None:
    # Arrange
    store.write_market(_snapshot(4))
    write = store.market_write()
    write.execute_command("FLUSHALL", "x")
    # Act / Assert
    with pytest.raises(redis.ResponseError, match="not a market write"):
        store.commit_market_write(write, 4, 0)
    assert store.read_market().version == 4


def test_the_bar_commits_through_the_daemons_client_with_a_large_matrix(redis_server: EmbeddedRedis) -> None:
    # Arrange: connect() packs large arguments without hiredis (engine/redis_server.py)
    store = Store(connect(redis_server.url))
    store.client.flushall()
    n = 300
    rng = np.random.default_rng(3)
    a = rng.standard_normal((n, n))
    tickers = tuple(f"T{i}" for i in range(n))
    store.write_market(MarketSnapshot(1, 1.0, tickers, np.ones(n), np.ones(n), a @ a.T))
    snap = MarketSnapshot(2, 2.0, tickers, np.full(n, 2.0), np.ones(n), a.T @ a)
    write = store.market_write()
    store.write_market(snap, write, tickers=False)
    # Act
    done = store.commit_market_write(write, 1, 0)
    # Assert
    back = store.read_market()
    assert done and back.version == 2 and back.tickers == tickers
    assert back.cov.tobytes() == snap.cov.tobytes()
    store.client.flushall()
    store.client.close()


# -- tick events: tickers named by a rev -------------------------------------------------------------------------


def test_write_market_records_the_tickers_under_their_rev(store: Store) -> None:
    store.write_market(_snapshot(1))
    rev = universe_rev(encode_json(list(TICKERS)))
    assert store.client.hget(MARKET_KEY, "tickers_rev") == rev.encode()
    assert store.client.hget(UNIVERSES_KEY, rev) == encode_json(list(TICKERS)).encode()
    assert store.universe(rev) == TICKERS


def test_an_event_naming_its_tickers_by_rev_carries_no_list_and_decodes_to_it(store: Store) -> None:
    # Arrange
    store.write_market(_snapshot(1))
    rev = universe_rev(encode_json(list(TICKERS)))
    event = TickEvent(2, 5.0, TICKERS, np.array([1.0, 2.0, 3.0]), bar_ts=4.0, token="x", rejected=1)
    store.ensure_tick_group(MONITOR_GROUP)
    # Act
    store.publish_tick(event, 100, tickers_rev=rev)
    # Assert
    entries: Any = store.client.xrange(TICKS_KEY)
    [(_, raw)] = entries
    assert b"tickers" not in raw and raw[b"tickers_rev"] == rev.encode()
    [back] = store.read_ticks()
    assert (back.version, back.ts, back.tickers, back.bar_ts, back.token, back.rejected) == (2, 5.0, TICKERS, 4.0,
                                                                                             "x", 1)  # fmt: skip
    [(_, grouped)] = store.read_tick_group(MONITOR_GROUP, "m")
    assert grouped is not None and grouped.tickers == TICKERS


def test_an_event_listing_its_tickers_as_before_still_decodes(store: Store) -> None:
    event = TickEvent(2, 5.0, TICKERS, np.array([1.0, 2.0, 3.0]))
    store.publish_tick(event, 100)  # no rev: the list, as every event before the revs
    entries: Any = store.client.xrange(TICKS_KEY)
    [(_, raw)] = entries
    assert raw[b"tickers"] == encode_json(list(TICKERS)).encode()
    [back] = store.read_ticks()
    assert back.tickers == TICKERS and back.prices.tolist() == [1.0, 2.0, 3.0]


def test_an_event_naming_a_rev_the_store_lacks_is_a_coded_error_or_skipped(store: Store) -> None:
    # Arrange
    store.ensure_tick_group(MONITOR_GROUP)
    store.publish_tick(TickEvent(1, 1.0, TICKERS, np.ones(3)), 100, tickers_rev="0123456789abcdef")
    # Act / Assert
    with pytest.raises(CorruptDataError, match="no universe"):
        store.read_ticks()
    [(_, skipped)] = store.read_tick_group(MONITOR_GROUP, "m")
    assert skipped is None  # the monitor acknowledges and skips it


def test_a_universe_entry_of_another_list_is_refused(store: Store) -> None:
    rev = universe_rev(encode_json(["ZZZ"]))
    store.client.hset(UNIVERSES_KEY, rev, encode_json(list(TICKERS)))
    with pytest.raises(CorruptDataError, match="another rev"):
        store.universe(rev)


# -- which tickers had a new price in the bar (TickEvent.observed, the field ``missing``) --------------------------


def test_an_event_with_a_ticker_without_a_new_price_carries_the_bitmask_of_the_missing_and_decodes_to_its_mask(
    store: Store,
) -> None:
    # Arrange: ten tickers (two bytes of mask), the second and the tenth without a new price
    tickers = tuple(f"T{i}" for i in range(10))
    observed = np.ones(10, dtype=bool)
    observed[[1, 9]] = False
    event = TickEvent(3, 5.0, tickers, np.arange(1.0, 11.0), observed=observed)
    # Act
    store.publish_tick(event, 100)
    # Assert
    entries: Any = store.client.xrange(TICKS_KEY)
    [(_, raw)] = entries
    assert raw[b"missing"] == bytes([0b00000010, 0b00000010])  # bit i of byte i // 8: ticker i has no new price
    [back] = store.read_ticks()
    assert back.observed is not None and back.observed.tolist() == observed.tolist()


def test_an_event_where_every_ticker_had_a_new_price_is_the_entry_of_before(store: Store) -> None:
    # Arrange: the same bar with no mask, with an all-True one, and as an entry written before the field
    plain = TickEvent(2, 5.0, TICKERS, np.array([1.0, 2.0, 3.0]), token="x")
    every = TickEvent(2, 5.0, TICKERS, np.array([1.0, 2.0, 3.0]), token="x", observed=np.ones(3, dtype=bool))
    # Act
    fields = plain.to_fields(), every.to_fields()
    store.publish_tick(every, 100)
    # Assert
    assert fields[0] == fields[1] and "missing" not in fields[0]
    assert list(fields[0]) == ["version", "ts", "bar_ts", "tickers", "prices", "token", "reset", "rejected"]
    [back] = store.read_ticks()
    assert back.observed is None  # every ticker observed: an old entry reads the same way


def test_a_malformed_missing_field_is_a_coded_error_and_a_wrong_mask_is_refused(store: Store) -> None:
    fields = {k.encode(): (v if isinstance(v, bytes) else str(v).encode())
              for k, v in TickEvent(1, 1.0, TICKERS, np.ones(3)).to_fields().items()}  # fmt: skip
    for bad in (b"", b"\x01\x00", b"\x08"):  # no byte, a byte too many, a bit past the third ticker
        with pytest.raises(CorruptDataError, match="missing"):
            TickEvent.from_fields(b"1-0", {**fields, b"missing": bad})
    assert TickEvent.from_fields(b"1-0", {**fields, b"missing": b"\x04"}).observed.tolist() == [True, True, False]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="observed"):
        TickEvent(1, 1.0, TICKERS, np.ones(3), observed=np.array([1, 0, 1])).to_fields()
