"""Every portfolio's live limits in one call (engine/store/limits_batch.py, logic/batch.py ``read_limits``)
against the per-portfolio reads (``live_limits(batched=False)``: one :meth:`Store.limits_or` each)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

import warmup
from engine.errors import CorruptDataError, StoreError
from engine.settings import Limits, Settings
from engine.store import PortfolioKeys, Store
from engine.store.limits_batch import LIMITS_UNCHANGED, read_limits_batch
from logic.batch import PortfolioLookup, live_limits, read_limits

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
    assert changed["main"].var_limit == Decimal("12345") and memo[("limits", "main")][0] == 2


def test_the_script_sends_only_what_the_caller_does_not_hold(store: Store, settings: Settings) -> None:
    warmup.seed(store, settings)
    store.client.delete(PortfolioKeys("hedge").limits)
    store.seed_limits("main", settings.limits_for("main"), actor="test", now=1.0)

    replies = read_limits_batch(store, PIDS, ["", "1"])
    fresh = read_limits_batch(store, ["main"], [""])
    stale = read_limits_batch(store, ["main"], ["7"])

    assert replies == [None, LIMITS_UNCHANGED]
    assert fresh[0][0] == b"1" and fresh[0][1].startswith(b"{") and stale[0][0] == b"1"
    with pytest.raises(ValueError):
        read_limits_batch(store, PIDS, [""])


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
