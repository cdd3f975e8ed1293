"""Tracked reads in bounded script calls (engine/store/tracking.py ``TRACKED_SCRIPT_KEYS``): Redis 6.2 re-remembers
every key of a tracked script after each command it runs, so one script over every book of 1,000 portfolios held
the server for over a second. The replies are the same as one script's; what each call names is checked on the
server's own SLOWLOG (every command logged, with its key count). Real Redis."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import redis

from engine.records import PortfolioState, Position, TradingState, TradingStatus
from engine.store import PORTFOLIOS_KEY, Store
from engine.store.portfolio_reader import _READ_BOOKS_LUA, TRACKED_BOOKS, PortfolioReader
from engine.store.tracking import TRACKED_SCRIPT_KEYS, KeyTracker, TrackedReplies
from tests.test_portfolio_reader import _assert_same_as_plain, _comparable
from tests.test_tracking import _SCRIPT, _same


def _calls(client: redis.Redis, source: str) -> list[tuple[int, list[bytes]]]:
    """The calls of the script ``source`` the server logged since :func:`_log_every_command`, oldest first: the
    number of keys each named, and its first key names (SLOWLOG keeps 32 arguments of a command)."""
    sha = client.script_load(source).encode()
    logged = [e["command"].split() for e in reversed(client.slowlog_get(10_000))]
    return [(int(c[2]), c[3:]) for c in logged if c[:2] == [b"EVALSHA", sha]]


def _key_counts(client: redis.Redis, source: str) -> list[int]:
    return [count for count, _ in _calls(client, source)]


def _log_every_command(client: redis.Redis) -> None:
    client.config_set("slowlog-max-len", 10_000)
    client.config_set("slowlog-log-slower-than", 0)
    client.slowlog_reset()


@pytest.fixture
def logged(redis_client: redis.Redis) -> Any:
    before = {k: redis_client.config_get(k)[k] for k in ("slowlog-max-len", "slowlog-log-slower-than")}
    yield redis_client
    for k, v in before.items():
        redis_client.config_set(k, v)


@pytest.mark.parametrize(
    ("count", "calls"),
    [(TRACKED_SCRIPT_KEYS, [TRACKED_SCRIPT_KEYS]), (TRACKED_SCRIPT_KEYS + 1, [TRACKED_SCRIPT_KEYS, 1])],
    ids=["the-bound-one-call", "one-over-two-calls"],
)  # fmt: skip
def test_tracked_replies_read_at_most_the_bound_of_keys_per_call_and_match_one_script(
    logged: redis.Redis, count: int, calls: list[int]
) -> None:
    # Arrange: one more or exactly the bound of keys, each a hash the script reads
    keys = [f"t:{{c{i}}}" for i in range(count)]
    for i, key in enumerate(keys):
        logged.hset(key, "v", f"x{i}")
    args = [f"a{i}" for i in range(count)]
    tracked = TrackedReplies(_SCRIPT)
    _log_every_command(logged)

    # Act
    got = tracked.read(logged, keys, args)

    # Assert: the calls named the keys in order, at most the bound each; the replies equal one direct script's
    assert _key_counts(logged, _SCRIPT) == calls
    direct = list(logged.eval(_SCRIPT, count, *keys, *args))  # type: ignore[arg-type]
    assert got is not None and _same(got, direct) and got[-1] == f"x{count - 1}:a{count - 1}".encode()

    # Act 2: one key written since: read again alone
    logged.hset(keys[-1], "v", "new")
    _log_every_command(logged)
    again = tracked.read(logged, keys, args)

    # Assert 2
    assert _key_counts(logged, _SCRIPT) == [1]
    assert again is not None and again[-1] == f"new:a{count - 1}".encode() and again[:-1] == got[:-1]
    tracked.close()


def _add_portfolios(store: Store, count: int) -> list[str]:
    """``count`` more portfolios, each a cash book with one position and a trading state (ids ``b000``...)."""
    ids = [f"b{i:03d}" for i in range(count)]
    for i, pid in enumerate(ids):
        book = {"CCC": Position(i + 1, Decimal("199.5"))}
        store.write_portfolio(PortfolioState(pid, "cash", Decimal(1000 + i), book))
        store.write_trading_state(pid, TradingStatus(TradingState.ACTIVE, "new", "ops", 1.0))
    return ids


@pytest.mark.parametrize(
    ("extra", "calls"), [(TRACKED_BOOKS - 2, [3 * TRACKED_BOOKS + 1]), (TRACKED_BOOKS - 1, [3 * TRACKED_BOOKS, 3 + 1])],
    ids=["the-bound-one-call", "one-over-two-calls"],
)  # fmt: skip
def test_the_tracked_book_reader_reads_at_most_the_bound_of_portfolios_per_call_the_registry_with_the_last(
    seeded_store: Store, logged: redis.Redis, extra: int, calls: list[int]
) -> None:
    # Arrange: the two seeded portfolios and ``extra`` more: exactly the bound of portfolios, or one more
    _add_portfolios(seeded_store, extra)
    reader = PortfolioReader()
    _log_every_command(logged)

    # Act: a first read (the reader holds nothing: every book is read)
    bundles = _assert_same_as_plain(seeded_store, reader)

    # Assert: whole portfolios per call (three keys each), the registry (one more key) named by the last call, first
    assert len(bundles) == extra + 2 and all(b.error is None for b in bundles.values())
    assert _key_counts(logged, _READ_BOOKS_LUA) == calls
    named = [names for _, names in _calls(logged, _READ_BOOKS_LUA)]
    assert named[-1][0] == PORTFOLIOS_KEY.encode() and all(PORTFOLIOS_KEY.encode() not in n for n in named[:-1])
    reader.close()


def test_a_portfolio_registered_between_two_calls_of_a_read_is_read_by_its_repeat(
    seeded_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: more portfolios than one call reads; another client registers one more after the first call
    _add_portfolios(seeded_store, TRACKED_BOOKS)
    reader = PortfolioReader()
    evaluate = KeyTracker.eval
    added: list[str] = []

    def register_after_the_first_call(self: KeyTracker, source: str, keys: list[Any], args: list[Any]) -> Any:
        reply = evaluate(self, source, keys, args)
        if not added:
            added.append("late")
            seeded_store.write_portfolio(PortfolioState("late", "cash", Decimal("7"), {}))
            seeded_store.write_trading_state("late", TradingStatus(TradingState.ACTIVE, "new", "ops", 1.0))
        return reply

    monkeypatch.setattr(KeyTracker, "eval", register_after_the_first_call)
    known = sorted(seeded_store.portfolio_ids())

    # Act: the caller knows the registry of before
    bundles = seeded_store.read_portfolio_bundles(known_ids=known, reader=reader)

    # Assert: the registry read with the last call differed: the read was repeated, and holds the new portfolio
    assert added and sorted(bundles) == sorted([*known, "late"])
    assert bundles["late"].state is not None and bundles["late"].state.cash == Decimal("7")
    monkeypatch.setattr(KeyTracker, "eval", evaluate)
    assert {p: b.state for p, b in bundles.items()} == {
        p: b.state for p, b in seeded_store.read_portfolio_bundles().items()
    }
    reader.close()


def _registering_after_calls(
    store: Store, monkeypatch: pytest.MonkeyPatch, count: int, removed: str | None = None
) -> list[str]:
    """After each of the next ``count`` script calls through a tracker another client registers one portfolio
    (``late0``, ...), or, with ``removed``, removes that one after the first call; returns the ids registered."""
    evaluate = KeyTracker.eval
    done: list[str] = []

    def spy(self: KeyTracker, source: str, keys: list[Any], args: list[Any]) -> Any:
        reply = evaluate(self, source, keys, args)
        if removed is not None and not done:
            done.append(removed)
            store.client.srem(PORTFOLIOS_KEY, removed)
        elif removed is None and len(done) < count:
            pid = f"late{len(done)}"
            done.append(pid)
            store.write_portfolio(PortfolioState(pid, "cash", Decimal(len(done)), {}))
            store.write_trading_state(pid, TradingStatus(TradingState.ACTIVE, "new", "ops", 1.0))
        return reply

    monkeypatch.setattr(KeyTracker, "eval", spy)
    return done


def test_registrations_outpacing_every_repeat_leave_their_portfolios_to_the_next_read(
    seeded_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: more portfolios than one call reads; a registration after every call of the read (an onboarding
    # faster than the read's repeats)
    _add_portfolios(seeded_store, TRACKED_BOOKS)
    before = sorted(seeded_store.portfolio_ids())
    reader = PortfolioReader()
    late = _registering_after_calls(seeded_store, monkeypatch, 10)

    # Act: the read; then, the registrations over, the next
    first = seeded_store.read_portfolio_bundles(known_ids=before, reader=reader)
    monkeypatch.undo()
    second = seeded_store.read_portfolio_bundles(reader=reader)

    # Assert: no error; the first read holds every portfolio registered before it and some registered during it
    # (not the last: registered after its last call), each with its book; the next holds every one, as the plain
    # read does
    assert len(late) > 2 and set(before) < set(first) < set(before) | set(late)
    assert all(b.error is None and b.state is not None for b in first.values())
    assert sorted(second) == sorted([*before, *late])
    assert _comparable(second) == _comparable(seeded_store.read_portfolio_bundles())
    reader.close()


def test_a_portfolio_removed_between_two_calls_is_dropped_without_reading_again(
    seeded_store: Store, logged: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: two calls' worth of portfolios; the first one is removed from the registry after the first call
    extra = _add_portfolios(seeded_store, TRACKED_BOOKS)
    reader = PortfolioReader()
    _registering_after_calls(seeded_store, monkeypatch, 0, removed=extra[0])
    _log_every_command(logged)

    # Act
    bundles = seeded_store.read_portfolio_bundles(known_ids=sorted(seeded_store.portfolio_ids()), reader=reader)

    # Assert: the registry read with the last call no longer holds it: dropped, and no call was repeated
    assert extra[0] not in bundles and len(bundles) == TRACKED_BOOKS + 1
    assert len(_key_counts(logged, _READ_BOOKS_LUA)) == 2
    reader.close()


def test_an_untracked_repeat_reads_every_book_again_so_one_registered_anew_comes_with_its_new_book(
    seeded_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: "extra" registered after the caller read the registry, so an untracked reader (one script a read)
    # repeats; between the two attempts "hedge" is removed and registered again with another book
    seeded_store.write_portfolio(PortfolioState("extra", "cash", Decimal("5"), {}))
    seeded_store.write_trading_state("extra", TradingStatus(TradingState.ACTIVE, "new", "ops", 1.0))
    reader = PortfolioReader(tracking=False)
    read_one = PortfolioReader._read_one
    calls: list[int] = []

    def between(self: PortfolioReader, store: Store, ids: list[str], *args: Any, **kwargs: Any) -> Any:
        reply = read_one(self, store, ids, *args, **kwargs)
        if not calls:
            seeded_store.client.srem(PORTFOLIOS_KEY, "hedge")
            seeded_store.write_portfolio(PortfolioState("hedge", "cash", Decimal("777"), {}))
        calls.append(len(ids))
        return reply

    monkeypatch.setattr(PortfolioReader, "_read_one", between)

    # Act
    bundles = seeded_store.read_portfolio_bundles(known_ids=["hedge", "main"], reader=reader)

    # Assert: the repeat read every book again: "hedge" as it is now, as the plain read has it
    assert calls == [2, 3]
    hedge = bundles["hedge"].state
    assert hedge is not None and hedge.cash == Decimal("777") and hedge.positions == {}
    monkeypatch.undo()
    assert _comparable(bundles) == _comparable(seeded_store.read_portfolio_bundles())
