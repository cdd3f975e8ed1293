"""The monitor's cached read of every portfolio (engine/store/portfolio_reader.py) against the plain read.

The plain :meth:`Store.read_portfolio_bundles` (one MULTI, everything decoded) is the reference: after every
kind of write the reader must return equal bundles, the same typed errors, and reuse only what did not change.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest

import warmup
from engine.errors import CorruptDataError, StoreEmptyError
from engine.records import PortfolioState, Position, TradingState, TradingStatus
from engine.settings import Settings
from engine.store import PORTFOLIOS_KEY, PortfolioBundle, PortfolioKeys, Store
from engine.store.portfolio import new_positions_rev
from engine.store.portfolio_reader import PortfolioReader
from logic.risk_manager import RiskManager


def _comparable(bundles: dict[str, PortfolioBundle]) -> dict[str, Any]:
    """Bundles as comparable values: exceptions compare by identity, so an error is its type and message."""
    return {
        pid: (b.state, b.trading_state, None if b.error is None else (type(b.error), str(b.error)))
        for pid, b in bundles.items()
    }


def _assert_same_as_plain(store: Store, reader: PortfolioReader, **kwargs: Any) -> dict[str, PortfolioBundle]:
    plain = store.read_portfolio_bundles(**kwargs)
    cached = store.read_portfolio_bundles(reader=reader, **kwargs)
    assert list(cached) == list(plain)
    assert _comparable(cached) == _comparable(plain)
    return cached


def test_the_reader_returns_the_plain_reads_bundles_and_reuses_an_unchanged_book(seeded_store: Store) -> None:
    # Arrange
    reader = PortfolioReader()

    # Act: two reads with nothing written between them
    first = _assert_same_as_plain(seeded_store, reader)
    second = _assert_same_as_plain(seeded_store, reader)

    # Assert: both portfolios read, and the second read returned the very objects decoded by the first
    assert sorted(first) == ["hedge", "main"]
    assert first["main"].state is not None and first["main"].state.positions["AAA"].qty == 1000
    assert all(second[pid] is first[pid] for pid in first)


def test_a_fill_is_seen_by_the_reader_and_only_the_filled_book_is_decoded_again(
    seeded_store: Store, settings: Settings
) -> None:
    reader = PortfolioReader()
    before = _assert_same_as_plain(seeded_store, reader)

    result = RiskManager(seeded_store.client, "main", settings).execute_trade("AAA", 10, "BUY", actor="trader")
    after = _assert_same_as_plain(seeded_store, reader)

    assert result["status"] == "FILLED"
    main = after["main"].state
    assert main is not None and main.positions["AAA"].qty == 1010
    assert main.cash < before["main"].state.cash  # type: ignore[union-attr]
    assert after["hedge"] is before["hedge"]


def test_a_deposit_is_seen_and_the_held_positions_are_reused(seeded_store: Store) -> None:
    reader = PortfolioReader()
    before = _assert_same_as_plain(seeded_store, reader)
    old = before["main"].state
    assert old is not None

    # a cash change writes the state hash only: positions_rev stays, the positions are not sent again
    seeded_store.write_portfolio_state(PortfolioState(**{**old.__dict__, "cash": old.cash + Decimal("250.50")}))
    after = _assert_same_as_plain(seeded_store, reader)

    new = after["main"].state
    assert new is not None and new.cash == old.cash + Decimal("250.50")
    assert new.positions is old.positions


def test_a_trading_state_change_is_seen_by_the_reader(seeded_store: Store, settings: Settings) -> None:
    reader = PortfolioReader()
    before = _assert_same_as_plain(seeded_store, reader)

    RiskManager(seeded_store.client, "hedge", settings).set_trading_state("HALTED", "risk review", "ops")
    after = _assert_same_as_plain(seeded_store, reader)

    hedge = after["hedge"].trading_state
    assert hedge is not None and hedge.state == TradingState.HALTED and hedge.reason == "risk review"
    assert after["hedge"].state is before["hedge"].state  # the book did not change
    assert after["main"] is before["main"]


def test_a_portfolio_added_to_and_removed_from_the_registry_is_read_and_forgotten(seeded_store: Store) -> None:
    reader = PortfolioReader()
    _assert_same_as_plain(seeded_store, reader, known_ids=["hedge", "main"])

    # added while the caller still knows the old registry: the read is repeated with the registered ids
    added = PortfolioState("extra", "cash", Decimal("5000"), {"CCC": Position(3, Decimal("199.5"))})
    seeded_store.write_portfolio(added)
    seeded_store.write_trading_state("extra", TradingStatus(TradingState.ACTIVE, "new", "ops", 1.0))
    grown = _assert_same_as_plain(seeded_store, reader, known_ids=["hedge", "main"])
    assert sorted(grown) == ["extra", "hedge", "main"] and grown["extra"].state == added

    # removed: gone from the result and from what the reader holds
    seeded_store.client.srem(PORTFOLIOS_KEY, "hedge")
    shrunk = _assert_same_as_plain(seeded_store, reader, known_ids=["extra", "hedge", "main"])
    assert sorted(shrunk) == ["extra", "main"]
    assert sorted(reader._entries) == ["extra", "main"]


def test_a_shard_reads_only_its_portfolios(seeded_store: Store) -> None:
    reader = PortfolioReader()
    seen: list[list[str]] = []

    def select(ids: list[str]) -> list[str]:
        seen.append(ids)
        return [pid for pid in ids if pid == "hedge"]

    bundles = _assert_same_as_plain(seeded_store, reader, select=select)

    assert list(bundles) == ["hedge"] and seen[-1] == ["hedge", "main"]


def test_a_corrupt_positions_hash_is_a_typed_error_and_the_repaired_book_is_read_again(seeded_store: Store) -> None:
    # Arrange: the reader holds main's book
    reader = PortfolioReader()
    good = _assert_same_as_plain(seeded_store, reader)["main"].state
    assert good is not None
    keys = PortfolioKeys("main")

    # Act 1: a position that does not decode, written with a new positions_rev (as every positions write is)
    seeded_store.client.hset(keys.positions, "AAA", b"\x80not json")
    new_positions_rev(seeded_store.client, "main")
    broken = _assert_same_as_plain(seeded_store, reader)

    # Assert 1: main fails with the store's typed error, hedge is unaffected
    assert broken["main"].state is None and isinstance(broken["main"].error, CorruptDataError)
    assert broken["hedge"].error is None

    # the error is not cached: the next read reports it again
    again = _assert_same_as_plain(seeded_store, reader)
    assert isinstance(again["main"].error, CorruptDataError)

    # Act 2: the book is repaired
    seeded_store.write_portfolio(good)
    repaired = _assert_same_as_plain(seeded_store, reader)

    # Assert 2: the repaired book, equal to what was stored
    assert repaired["main"].error is None and repaired["main"].state == good


def test_a_corrupt_state_or_missing_hash_is_the_plain_reads_typed_error(seeded_store: Store) -> None:
    reader = PortfolioReader()
    _assert_same_as_plain(seeded_store, reader)
    keys = PortfolioKeys("main")

    seeded_store.client.hset(keys.state, "cash", "not-a-number")
    seeded_store.client.delete(PortfolioKeys("hedge").trading_state)
    bundles = _assert_same_as_plain(seeded_store, reader)
    assert isinstance(bundles["main"].error, CorruptDataError)
    assert isinstance(bundles["hedge"].error, StoreEmptyError)

    seeded_store.client.delete(keys.state)  # registered, no state
    bundles = _assert_same_as_plain(seeded_store, reader)
    assert isinstance(bundles["main"].error, StoreEmptyError)


def test_a_key_of_the_wrong_type_fails_only_its_portfolio(seeded_store: Store) -> None:
    reader = PortfolioReader()
    seeded_store.client.delete(PortfolioKeys("main").positions)
    seeded_store.client.set(PortfolioKeys("main").positions, "a string")

    bundles = seeded_store.read_portfolio_bundles(reader=reader)

    # the plain MULTI raises for the whole read; the reader fails closed on that portfolio only
    assert isinstance(bundles["main"].error, CorruptDataError) and "WRONGTYPE" in str(bundles["main"].error)
    assert bundles["hedge"].error is None and bundles["hedge"].state is not None


def test_hashes_holding_a_nul_byte_are_read_and_their_changes_seen(seeded_store: Store) -> None:
    reader = PortfolioReader()
    seeded_store.write_trading_state("main", TradingStatus(TradingState.REDUCING, "a\0b", "c", 1.0))
    first = _assert_same_as_plain(seeded_store, reader)

    seeded_store.write_trading_state("main", TradingStatus(TradingState.REDUCING, "a", "b\0c", 1.0))
    second = _assert_same_as_plain(seeded_store, reader)

    assert first["main"].trading_state.reason == "a\0b"  # type: ignore[union-attr]
    assert second["main"].trading_state.reason == "a"  # type: ignore[union-attr]
    assert _assert_same_as_plain(seeded_store, reader)["main"] is second["main"]  # unchanged: the same bundle


def test_bytes_moved_from_the_trading_state_to_the_state_are_not_taken_as_unchanged(seeded_store: Store) -> None:
    # the fingerprint is the two hashes' dumps end to end, led by the first one's length: a change that keeps
    # their joined bytes alike still differs
    reader = PortfolioReader()
    seeded_store.write_trading_state("main", TradingStatus(TradingState.REDUCING, "xy", "c", 1.0))
    seeded_store.client.hset(PortfolioKeys("main").state, "note", "a")
    first = _assert_same_as_plain(seeded_store, reader)

    seeded_store.write_trading_state("main", TradingStatus(TradingState.REDUCING, "y", "c", 1.0))
    seeded_store.client.hset(PortfolioKeys("main").state, "note", "ax")
    second = _assert_same_as_plain(seeded_store, reader)

    assert second["main"] is not first["main"] and second["main"].trading_state.reason == "y"  # type: ignore[union-attr]


@pytest.mark.slow
def test_the_reader_on_a_redis_cluster_matches_the_plain_read(cluster_store: Store, settings: Settings) -> None:
    # Arrange: the test portfolios, whose keys live on different masters
    warmup.seed(cluster_store, settings)
    reader = PortfolioReader()
    before = _assert_same_as_plain(cluster_store, reader)
    assert all(b.error is None for b in before.values())

    # Act: the masters forget the script (a restart), a fill, a trading-state change and a corrupt book
    cluster_store.client.script_flush()
    assert RiskManager(cluster_store.client, "main", settings).execute_trade("AAA", 5, "SELL")["status"] == "FILLED"
    RiskManager(cluster_store.client, "hedge", settings).set_trading_state("REDUCING", "review", "ops")
    filled = _assert_same_as_plain(cluster_store, reader)
    unchanged = _assert_same_as_plain(cluster_store, reader)
    good = filled["hedge"].state
    cluster_store.client.hset(PortfolioKeys("hedge").positions, "CCC", b"{}")
    new_positions_rev(cluster_store.client, "hedge")
    broken = _assert_same_as_plain(cluster_store, reader)
    assert good is not None
    cluster_store.write_portfolio(good)
    repaired = _assert_same_as_plain(cluster_store, reader)

    # Assert
    assert filled["main"].state.positions["AAA"].qty == 995  # type: ignore[union-attr]
    assert filled["hedge"].trading_state.state == TradingState.REDUCING  # type: ignore[union-attr]
    assert all(unchanged[pid] is filled[pid] for pid in filled)
    assert isinstance(broken["hedge"].error, CorruptDataError)
    assert repaired["hedge"].state == good


# -- tracking: Redis tells the reader which books were written (engine/store/tracking.py) -------------------------


def _calls(client: Any, command: str) -> int:
    """How many times the server ran ``command`` (scripts' inner calls included) since its stats were reset."""
    stats = client.info("commandstats").get(f"cmdstat_{command}")
    return 0 if stats is None else int(stats["calls"])


def test_with_nothing_written_the_tracked_reader_sends_no_script_and_returns_what_it_holds(
    seeded_store: Store,
) -> None:
    client = seeded_store.client
    reader = PortfolioReader()
    first = _assert_same_as_plain(seeded_store, reader)

    client.config_resetstat()
    second = seeded_store.read_portfolio_bundles(reader=reader)

    assert (_calls(client, "evalsha"), _calls(client, "dump")) == (0, 0)
    assert list(second) == list(first) and all(second[pid] is first[pid] for pid in first)


def test_a_write_by_any_client_is_reported_and_only_that_book_is_read_again(seeded_store: Store) -> None:
    # Arrange: the reader holds both books
    client = seeded_store.client
    reader = PortfolioReader()
    before = _assert_same_as_plain(seeded_store, reader)

    # Act: a raw write to main's trading-state hash by another connection (not through the store's code)
    client.hset(PortfolioKeys("main").trading_state, "reason", "typed by an operator")
    client.config_resetstat()
    after = seeded_store.read_portfolio_bundles(reader=reader)

    # Assert: one script over main alone (its two hashes dumped), the change seen, hedge reused
    assert (_calls(client, "evalsha"), _calls(client, "dump")) == (1, 2)
    assert after["main"].trading_state.reason == "typed by an operator"  # type: ignore[union-attr]
    assert after["hedge"] is before["hedge"]
    assert _comparable(after) == _comparable(seeded_store.read_portfolio_bundles())


def test_a_flushed_database_is_seen_though_no_key_is_named(seeded_store: Store) -> None:
    reader = PortfolioReader()
    _assert_same_as_plain(seeded_store, reader)

    seeded_store.client.flushall()  # Redis pushes one invalidation naming no key

    assert seeded_store.read_portfolio_bundles() == {}
    assert seeded_store.read_portfolio_bundles(reader=reader) == {}


def _assert_every_book_read_again(store: Store, reader: PortfolioReader, pid: str, cash: str) -> None:
    """The reader's next read checks every book again (two DUMPs each) and sees ``pid``'s cash written meanwhile."""
    client = store.client
    client.config_resetstat()
    after = store.read_portfolio_bundles(reader=reader)

    assert _calls(client, "dump") == 2 * len(after)
    assert after[pid].state.cash == Decimal(cash)  # type: ignore[union-attr]
    assert _comparable(after) == _comparable(store.read_portfolio_bundles())


def test_a_killed_tracking_connection_makes_the_reader_read_everything_again(seeded_store: Store) -> None:
    # Arrange: the reader holds both books; then its connection is killed (every other client's too) and main
    # is written while no connection tracks it: no invalidation is ever sent
    client = seeded_store.client
    reader = PortfolioReader()
    _assert_same_as_plain(seeded_store, reader)
    client.client_kill_filter(_type="normal", skipme=True)
    client.hset(PortfolioKeys("main").state, "cash", "123.45")

    _assert_every_book_read_again(seeded_store, reader, "main", "123.45")


def test_a_connection_reopened_behind_the_trackers_back_makes_the_reader_read_everything_again(
    seeded_store: Store,
) -> None:
    # Arrange: redis-py opens the tracked connection again by itself (as after a dropped socket): the new
    # connection tracks nothing, so the write below is never pushed
    client = seeded_store.client
    reader = PortfolioReader()
    _assert_same_as_plain(seeded_store, reader)
    tracker = reader._tracker
    assert tracker is not None
    tracker._connection.disconnect()
    tracker._connection.connect()
    client.hset(PortfolioKeys("main").state, "cash", "99")

    _assert_every_book_read_again(seeded_store, reader, "main", "99")


def test_a_restarted_server_makes_the_reader_read_everything_again(fresh_redis: Any, settings: Settings) -> None:
    # Arrange: the reader holds the books of a server that then restarts from its AOF (a new server hands out
    # client ids from 1 again: the reader must not take the new connection for the one it tracked on)
    store = Store(fresh_redis.client())
    warmup.seed(store, settings)
    reader = PortfolioReader()
    _assert_same_as_plain(store, reader)
    fresh_redis.client().bgrewriteaof()
    _wait_for_rewrite(fresh_redis.client())
    fresh_redis.stop()
    fresh_redis.start()
    fresh_redis.client().hset(PortfolioKeys("hedge").state, "cash", "7.5")

    _assert_every_book_read_again(store, reader, "hedge", "7.5")


def _wait_for_rewrite(client: Any, limit_seconds: float = 30.0) -> None:
    deadline = time.monotonic() + limit_seconds
    while client.info("persistence")["aof_rewrite_in_progress"] and time.monotonic() < deadline:
        time.sleep(0.02)


def test_an_untracked_reader_matches_the_plain_read_and_checks_every_book(seeded_store: Store) -> None:
    client = seeded_store.client
    reader = PortfolioReader(tracking=False)
    first = _assert_same_as_plain(seeded_store, reader)

    client.config_resetstat()
    second = _assert_same_as_plain(seeded_store, reader)

    assert _calls(client, "dump") == 2 * len(second)  # the fingerprint of each book, every read
    assert all(second[pid] is first[pid] for pid in first)
