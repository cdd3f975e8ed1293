"""Every portfolio's live limits in one call (engine/store/limits_batch.py, logic/batch.py ``read_limits``)
against the per-portfolio reads (``live_limits(batched=False)``: one :meth:`Store.limits_or` each)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

import warmup
from engine import reload
from engine.errors import CorruptDataError, StoreError
from engine.settings import Limits, Settings
from engine.store import PortfolioKeys, Store
from engine.store.limits import limits_token
from engine.store.limits_batch import LIMITS_UNCHANGED, read_limits_batch
from logic.batch import PortfolioLookup, live_limits, read_limits
from logic.risk_manager import RiskManager

PIDS = ["hedge", "main"]


def _comparable(limits: dict[str, Limits | Exception]) -> dict[str, Any]:
    return {pid: (type(v), str(v)) if isinstance(v, Exception) else v for pid, v in limits.items()}


def _assert_same_as_per_portfolio(store: Store, settings: Settings, memo: dict[Any, Any]) -> dict[str, Any]:
    lookup = PortfolioLookup(settings)
    reference = live_limits(store, PIDS, lookup, {}, batched=False)
    batched = read_limits(store, PIDS, lookup, memo)
    assert _comparable(batched) == _comparable(reference)
    return batched


def test_the_batched_read_equals_the_per_portfolio_reads_and_reuses_unchanged_limits(
    store: Store, settings: Settings
) -> None:
    # Arrange: main has live limits (version 1), hedge none (the settings' apply)
    warmup.seed(store, settings)
    store.client.delete(PortfolioKeys("hedge").limits)
    store.client.delete(PortfolioKeys("main").limits)
    store.seed_limits("main", settings.limits_for("main"), actor="test", now=1.0)
    memo: dict[Any, Any] = {}

    # Act: two reads, then a change
    first = _assert_same_as_per_portfolio(store, settings, memo)
    second = _assert_same_as_per_portfolio(store, settings, memo)
    store.change_limits(
        "main", {"var_limit": Decimal("12345")}, actor="ops", reason="test", now=2.0, fallback=settings.limits
    )
    changed = _assert_same_as_per_portfolio(store, settings, memo)

    # Assert: the unchanged record was not decoded again; the change is seen at once
    assert first["hedge"] == settings.limits_for("hedge")
    assert second["main"] is first["main"]
    assert changed["main"].var_limit == Decimal("12345") and memo[("limits", "main")].version == 2


def test_the_script_sends_only_what_the_caller_does_not_hold(store: Store, settings: Settings) -> None:
    warmup.seed(store, settings)
    store.client.delete(PortfolioKeys("hedge").limits)
    store.seed_limits("main", settings.limits_for("main"), actor="test", now=1.0)
    rev = store.read_limits("main").rev  # type: ignore[union-attr]

    replies = read_limits_batch(store, PIDS, ["", limits_token(1, rev)])
    fresh = read_limits_batch(store, ["main"], [""])
    stale = read_limits_batch(store, ["main"], [limits_token(7, rev)])
    other_record = read_limits_batch(store, ["main"], [limits_token(1, "a-record-from-before-a-reset")])

    assert replies == [None, LIMITS_UNCHANGED]
    assert fresh[0][0] == b"1" and fresh[0][1] == rev.encode() and fresh[0][2].startswith(b"{")
    assert stale == other_record == fresh
    with pytest.raises(ValueError):
        read_limits_batch(store, PIDS, [""])


def test_a_reader_that_held_version_1_reads_the_new_version_1_written_after_a_reset(
    store: Store, settings: Settings
) -> None:
    # Arrange: both readers (batched, tracked; per portfolio) hold a loose version 1
    warmup.seed(store, settings)
    fallback = settings.limits_for("main")
    store.change_limits("main", {"var_limit": "90000"}, actor="alice", reason="loose", now=1.0, fallback=fallback)
    lookup = PortfolioLookup(settings)
    batched_memo: dict[Any, Any] = {}
    single_memo: dict[Any, Any] = {}
    assert read_limits(store, PIDS, lookup, batched_memo)["main"].var_limit == Decimal("90000")  # type: ignore
    assert store.limits_or("main", fallback, single_memo).var_limit == Decimal("90000")

    # Act: the store is reset (the record deleted), and a tighter change is version 1 again
    reload.reset_store(store, keep_audit=True, now=2.0, actor="warmup")
    warmup.seed(store, settings)
    store.change_limits("main", {"var_limit": "100"}, actor="bob", reason="tight", now=3.0, fallback=fallback)

    # Assert: both follow the new record although its version is the one they held
    assert store.read_limits("main").version == 1  # type: ignore[union-attr]
    assert read_limits(store, PIDS, lookup, batched_memo)["main"].var_limit == Decimal("100")  # type: ignore
    assert store.limits_or("main", fallback, single_memo).var_limit == Decimal("100")


@pytest.mark.parametrize(
    "damage",
    [
        {"json": "not json"},  # the limits do not decode
        {"json": '{"var_limit": -5}'},  # they do not validate
        {"version": "x"},  # the version is not a number
    ],
)
def test_a_corrupt_limits_record_is_the_per_portfolio_reads_typed_error(
    store: Store, settings: Settings, damage: dict[str, str]
) -> None:
    warmup.seed(store, settings)
    store.seed_limits("main", settings.limits_for("main"), actor="test", now=1.0)
    memo: dict[Any, Any] = {}
    _assert_same_as_per_portfolio(store, settings, memo)

    fields: dict[Any, Any] = {"version": "9", **damage}
    store.client.hset(PortfolioKeys("main").limits, mapping=fields)
    broken = _assert_same_as_per_portfolio(store, settings, memo)

    assert isinstance(broken["main"], CorruptDataError) and not isinstance(broken["hedge"], Exception)


@pytest.mark.parametrize("memo_holds_it", [False, True], ids=["first-read", "after-a-good-read"])
def test_a_limits_record_that_lost_its_version_is_corrupt_not_absent(
    store: Store, settings: Settings, memo_holds_it: bool
) -> None:
    # "no record" means the settings' limits, which may be looser than the live ones: a record that is there
    # without its version must fail closed like any other damage
    warmup.seed(store, settings)
    store.seed_limits("main", settings.limits_for("main"), actor="test", now=1.0)
    memo: dict[Any, Any] = {}
    if memo_holds_it:
        _assert_same_as_per_portfolio(store, settings, memo)
    store.client.hdel(PortfolioKeys("main").limits, "version")

    broken = _assert_same_as_per_portfolio(store, settings, memo)

    assert isinstance(broken["main"], CorruptDataError) and "version" in str(broken["main"])
    assert isinstance(broken["hedge"], Limits)
    store.client.delete(PortfolioKeys("main").limits)  # no record at all: the settings' limits again
    assert _assert_same_as_per_portfolio(store, settings, memo)["main"] == settings.limits_for("main")


def test_a_limits_key_of_the_wrong_type_fails_only_its_portfolio(store: Store, settings: Settings) -> None:
    warmup.seed(store, settings)
    store.client.delete(PortfolioKeys("main").limits)
    store.client.set(PortfolioKeys("main").limits, "a string")

    limits = _assert_same_as_per_portfolio(store, settings, {})

    assert isinstance(limits["main"], StoreError) and "WRONGTYPE" in str(limits["main"])
    assert isinstance(limits["hedge"], Limits)


@pytest.mark.slow
def test_the_batched_read_on_a_redis_cluster_equals_the_per_portfolio_reads(
    cluster_store: Store, settings: Settings
) -> None:
    warmup.seed(cluster_store, settings)
    cluster_store.seed_limits("main", settings.limits_for("main"), actor="test", now=1.0)
    memo: dict[Any, Any] = {}

    first = _assert_same_as_per_portfolio(cluster_store, settings, memo)
    second = _assert_same_as_per_portfolio(cluster_store, settings, memo)
    cluster_store.change_limits(
        "main", {"var_limit": Decimal("777")}, actor="ops", reason="test", now=2.0, fallback=settings.limits
    )
    changed = _assert_same_as_per_portfolio(cluster_store, settings, memo)

    assert second["main"] is first["main"] and changed["main"].var_limit == Decimal("777")


@pytest.mark.slow
def test_on_a_redis_cluster_a_new_version_1_after_a_reset_reaches_the_gate_and_the_batched_read(
    cluster_store: Store, settings: Settings
) -> None:
    now = 1_700_000_000.0
    warmup.seed(cluster_store, settings, now=now)
    gate = RiskManager(cluster_store.client, "main", settings, clock=lambda: now)
    memo: dict[Any, Any] = {}
    gate.set_limits({"max_order_notional": "1000000"}, "alice", "loose")
    assert gate.check("AAA", 10, "BUY").approved
    _assert_same_as_per_portfolio(cluster_store, settings, memo)

    reload.reset_store(cluster_store, keep_audit=True, now=now, actor="warmup")
    warmup.seed(cluster_store, settings, now=now)
    cluster_store.change_limits(
        "main", {"max_order_notional": "100"}, actor="bob", reason="tight", now=now, fallback=settings.limits
    )

    assert {r.code.value for r in gate.check("AAA", 10, "BUY").reasons} == {"MAX_NOTIONAL"}  # 10 x 100 > 100
    assert _assert_same_as_per_portfolio(cluster_store, settings, memo)["main"].max_order_notional == 100


def test_a_record_written_before_tokens_is_cached_by_its_version_until_its_next_write(
    store: Store, settings: Settings
) -> None:
    warmup.seed(store, settings)
    store.seed_limits("main", settings.limits_for("main"), actor="test", now=1.0)
    store.client.hdel(PortfolioKeys("main").limits, "rev")  # as an older release wrote it
    memo: dict[Any, Any] = {}

    first = _assert_same_as_per_portfolio(store, settings, memo)
    second = _assert_same_as_per_portfolio(store, settings, memo)
    store.change_limits("main", {"var_limit": "4321"}, actor="ops", reason="test", now=2.0, fallback=settings.limits)
    changed = _assert_same_as_per_portfolio(store, settings, memo)

    assert second["main"] is first["main"] and changed["main"].var_limit == Decimal("4321")
    assert store.read_limits("main").rev != ""  # type: ignore[union-attr]  # the write gave it a token
