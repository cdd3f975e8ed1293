"""The store against a real redis-server: codec round trips, corruption, schema guard, consistency."""

from __future__ import annotations

import json
import math
import struct
from decimal import Decimal

import numpy as np
import pytest

import engine.store.keys as store_keys
from engine.errors import CorruptDataError, SchemaMismatchError, StoreEmptyError
from engine.records import MarketSnapshot, PortfolioState, Position, TradingState, TradingStatus
from engine.settings import Limits
from engine.store import (
    MARKET_KEY,
    SCHEMA_KEY,
    Excursion,
    PortfolioKeys,
    Store,
    decode_array,
    encode_array,
)
from engine.store.codec import (
    EXCURSION_DTYPE,
    POSITION_FLOATS,
    ComponentShares,
    PositionRows,
    decode_excursion,
    decode_snapshot,
    decode_symmetric,
    encode_excursion,
    encode_snapshot,
    encode_symmetric,
    hash_from_flat,
)
from engine.store.tick_state import _decimal_rows

from .conftest import store_contents


def _snapshot(n: int, version: int = 7, seed: int = 0) -> MarketSnapshot:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    return MarketSnapshot(
        version=version,
        ts=1_700_000_000.25,
        tickers=tuple(f"T{i}" for i in range(n)),
        prices=rng.uniform(10, 500, n),
        price_ts=np.full(n, 1_700_000_000.0),
        cov=a @ a.T / n,
    )


def test_a_500_by_500_matrix_round_trips_bit_exact_through_redis(store: Store) -> None:
    snap = _snapshot(500)
    store.write_market(snap)

    back = store.read_market()

    assert back.version == 7 and back.ts == snap.ts and back.tickers == snap.tickers
    assert back.cov.tobytes() == snap.cov.tobytes()
    assert back.prices.tobytes() == snap.prices.tobytes()
    assert back.cov.flags.writeable and back.cov.flags.c_contiguous


@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 64, 501])
def test_a_symmetric_matrix_packs_to_its_upper_triangle_and_mirrors_back_bit_exact(n: int) -> None:
    cov = _snapshot(n, seed=n).cov if n else np.zeros((0, 0))

    blob = encode_symmetric(cov)
    back = decode_symmetric(blob, n=n)

    header = 4 + 4 + 4 + 16  # magic, dtype tag, ndim, two uint64 dimensions
    assert len(blob) == header + 8 * n * (n + 1) // 2
    assert len(blob) - header <= (len(encode_array(cov)) - header) // 2 + 8 * n  # half the full matrix + diagonal
    assert back.tobytes() == cov.tobytes()
    assert back.flags.writeable and back.flags.c_contiguous


def test_the_snapshot_stores_the_packed_triangle_and_still_reads_a_full_matrix_from_an_older_store(
    store: Store,
) -> None:
    snap = _snapshot(30)
    store.write_market(snap)
    stored = store.client.hget(MARKET_KEY, "cov")

    assert stored[:4] == b"RDU1" and len(stored) == 28 + 8 * 30 * 31 // 2
    store.client.hset(MARKET_KEY, "cov", encode_array(snap.cov))  # the layout written before packing

    assert store.read_market().cov.tobytes() == snap.cov.tobytes()


def test_a_matrix_one_ulp_from_symmetric_is_refused_and_the_store_is_unchanged(store: Store) -> None:
    store.write_market(_snapshot(4, version=1))
    before = store_contents(store.client)
    snap = _snapshot(4, version=2)
    snap.cov[0, 3] = np.nextafter(snap.cov[0, 3], np.inf)

    with pytest.raises(ValueError, match="not exactly symmetric"):
        store.write_market(snap)
    with pytest.raises(ValueError, match="square"):
        encode_symmetric(np.zeros((2, 3)))

    assert store_contents(store.client) == before


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda good: good[:-3], id="truncated"),
        pytest.param(lambda good: good + b"\x00" * 8, id="too long"),
        pytest.param(lambda good: good[:4] + b"<f4\x00" + good[8:], id="wrong dtype tag"),
        pytest.param(lambda good: good[:12] + struct.pack("<2Q", 3, 3) + good[28:], id="wrong size"),
        pytest.param(lambda good: good[:12] + struct.pack("<2Q", 4, 5) + good[28:], id="not square"),
        pytest.param(lambda good: good[:20], id="header only"),
    ],
)
def test_a_malformed_packed_matrix_raises_the_typed_error(store: Store, payload) -> None:
    snap = _snapshot(4)
    store.write_market(snap)
    store.client.hset(MARKET_KEY, "cov", payload(encode_symmetric(snap.cov)))

    with pytest.raises(CorruptDataError) as info:
        store.read_market()

    assert info.value.code == "STORE_CORRUPT"


def test_the_header_read_returns_prices_without_the_matrix(store: Store) -> None:
    snap = _snapshot(20)
    store.write_market(snap)

    header = store.read_market_header()

    assert not hasattr(header, "cov")
    np.testing.assert_array_equal(header.prices, snap.prices)
    assert store.read_market_version() == 7


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda good: good[:-3], id="truncated"),
        pytest.param(lambda good: good + b"\x00" * 8, id="too long"),
        pytest.param(lambda good: good[:4] + b"<f4\x00" + good[8:], id="wrong dtype tag"),
        pytest.param(lambda good: b"XXXX" + good[4:], id="bad magic"),
        pytest.param(lambda good: good[:12] + struct.pack("<2Q", 3, 3) + good[28:], id="wrong shape"),
        pytest.param(lambda good: good[:10], id="header only"),
        pytest.param(lambda good: b"", id="empty"),
    ],
)
def test_a_malformed_matrix_raises_the_typed_error_naming_the_fix(store: Store, payload) -> None:
    snap = _snapshot(4)
    store.write_market(snap)
    good = encode_array(snap.cov)
    store.client.hset(MARKET_KEY, "cov", payload(good))

    with pytest.raises(CorruptDataError) as info:
        store.read_market()

    assert info.value.code == "STORE_CORRUPT"
    assert "warmup.py" in str(info.value)


# Pickle payloads written as literal bytes (the project imports no pickle): unpickling the first would run
# ``exec(...)`` and exit; the second is a pickled Decimal. The codec must refuse both without executing them.
PICKLED_EXEC = (
    b"\x80\x04\x95G\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x04exec\x94\x93\x94"
    b"\x8c+import sys; sys.exit('pickle was executed')\x94\x85\x94R\x94."
)
PICKLED_DECIMAL = (
    b"\x80\x04\x95\x1f\x00\x00\x00\x00\x00\x00\x00\x8c\x07decimal\x94\x8c\x07Decimal\x94\x93\x94"
    b"\x8c\x011\x94\x85\x94R\x94."
)


@pytest.mark.parametrize("field", ["cov", "prices", "price_ts", "tickers", "version", "ts"])
def test_a_pickled_payload_in_any_market_field_is_refused_and_never_executed(store: Store, field: str) -> None:
    store.write_market(_snapshot(3))
    store.client.hset(MARKET_KEY, field, PICKLED_EXEC)

    with pytest.raises(CorruptDataError):
        store.read_market()


def test_a_pickled_payload_in_portfolio_keys_is_refused(store: Store) -> None:
    keys = PortfolioKeys("main")
    state = PortfolioState("main", "cash", Decimal("100.00"), {"AAA": Position(5, Decimal("10.5"))})
    store.write_portfolio(state)
    store.client.hset(keys.positions, "AAA", PICKLED_EXEC)

    with pytest.raises(CorruptDataError):
        store.read_portfolio("main")

    store.write_portfolio(state)
    store.client.hset(keys.state, "cash", PICKLED_DECIMAL)
    with pytest.raises(CorruptDataError):
        store.read_portfolio("main")


def test_a_portfolio_round_trips_with_exact_money(store: Store) -> None:
    state = PortfolioState(
        "main",
        "margin",
        Decimal("1000000.10"),
        {
            "AAA": Position(-300, Decimal("101.333333333333333333"), Decimal("-0.01")),
            "BBB": Position(7, Decimal("0.1")),
        },
        realized_pnl=Decimal("0.30"),
        fees_paid=Decimal("12.345"),
        updated_at=12.5,
    )
    store.write_portfolio(state)

    back = store.read_portfolio("main")

    assert back == state
    assert store.portfolio_ids() == ["main"]


def test_a_missing_portfolio_or_market_raises_store_empty_with_the_warmup_fix(store: Store) -> None:
    with pytest.raises(StoreEmptyError, match="warmup.py"):
        store.read_portfolio("nope")
    with pytest.raises(StoreEmptyError):
        store.read_market()
    with pytest.raises(StoreEmptyError):
        store.require_schema()


def test_a_store_written_by_another_layout_version_is_refused(store: Store) -> None:
    store.client.set(SCHEMA_KEY, 999)

    with pytest.raises(SchemaMismatchError) as info:
        store.require_schema()

    assert info.value.code == "SCHEMA_MISMATCH"


def test_nan_or_non_numeric_money_is_corrupt(store: Store) -> None:
    store.write_portfolio(PortfolioState("main", "cash", Decimal("1"), {}))
    for bad in (b"NaN", b"Infinity", b"12,5", b"\xff"):
        store.client.hset(PortfolioKeys("main").state, "cash", bad)
        with pytest.raises(CorruptDataError):
            store.read_portfolio("main")


def test_an_unknown_trading_state_is_corrupt_so_callers_fail_closed(store: Store) -> None:
    store.write_trading_state("main", TradingStatus("ACTIVE", "ok", "me", 1.0))
    assert store.read_trading_state("main").state == "ACTIVE"

    store.client.hset(PortfolioKeys("main").trading_state, "state", "YOLO")

    with pytest.raises(CorruptDataError):
        store.read_trading_state("main")


def test_portfolio_keys_share_one_hash_tag() -> None:
    keys = PortfolioKeys("desk-1")
    assert all(key.startswith("pf:{desk-1}:") for key in keys.all())
    assert len(set(keys.all())) == len(keys.all())


def test_encode_array_refuses_scalars_and_decode_checks_expected_shape() -> None:
    with pytest.raises(ValueError):
        encode_array(np.float64(1.0))
    blob = encode_array(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(decode_array(blob), np.arange(6.0).reshape(2, 3))
    with pytest.raises(CorruptDataError):
        decode_array(blob, shape=(3, 2))


def test_audit_records_read_back_newest_first(store: Store) -> None:
    key = PortfolioKeys("main").audit
    for i in range(5):
        store.append_audit(key, {"n": i, "amount": Decimal("1.10")})

    records = store.read_stream_json(key, count=3)

    assert [r["n"] for r in records] == [4, 3, 2]
    assert records[0]["amount"] == "1.10"


def _write_through_every_portfolio_method(store: Store, portfolio_id: str) -> None:
    """Every Store write that touches a portfolio's keys, once each."""
    keys = PortfolioKeys(portfolio_id)
    state = PortfolioState(portfolio_id, "cash", Decimal("1000.00"), {"AAA": Position(5, Decimal("10.5"))})
    store.write_portfolio(state)
    store.write_portfolio_state(state)
    store.write_position(portfolio_id, "BBB", Position(1, Decimal("2")))
    store.write_trading_state(portfolio_id, TradingStatus(TradingState.ACTIVE, "ok", "test", 1.0))
    store.append_audit(keys.audit, {"event": "test"})
    store.append_check_record(portfolio_id, {"ts": 1.0, "actor": "test", "reasons": []})
    store.seed_limits(portfolio_id, Limits(), actor="test", now=1.0)
    store.change_limits(portfolio_id, {"var_limit": "1"}, actor="test", reason="test", now=1.0, fallback=Limits())
    with store.client.pipeline(transaction=True) as pipe:
        store.write_fill(
            state, "AAA", Position(6, Decimal("10.5")), {"fill": 1},
            trade_id="t1", client_order_id="o1", ts=1_700_000_000.0, rate_window_seconds=60.0, pipe=pipe,
        )  # fmt: skip
        store.write_fill(  # an automated liquidation fill: its own rate window (auto_rate)
            state, "AAA", Position(5, Decimal("10.5")), {"fill": 2},
            trade_id="t2", client_order_id="o2", ts=1_700_000_000.0, rate_window_seconds=60.0, pipe=pipe,
            automated=True,
        )  # fmt: skip
        pipe.execute()
    store.append_trade_record(portfolio_id, {"rejected": True})
    store.record_snapshot(
        portfolio_id, {"version": 1}, {"equity": 1.0}, ts=1_700_000_000.0, retention_seconds=3600, max_points=10
    )
    store.update_peaks(portfolio_id, 1000.0, "2023-11-14", "2023-W46")
    store.shift_peaks(portfolio_id, -1.0, ts=1_700_000_000.0)  # a book sync's capital flow (the flow ledger)
    store.update_marks(portfolio_id, {"AAA": (1, 3.0)})
    store.write_active_alerts(portfolio_id, {"rule": {"status": "TRIGGERED"}})
    store.append_alert_log(portfolio_id, {"rule": "r"})
    store.write_alert_eval(portfolio_id, {"rule": {"pending_since": 1.0}})
    store.write_pending_actions(portfolio_id, {"a1": {"action": "halt"}})
    store.write_outbox(portfolio_id, {"d1": {"channel": "log"}})
    store.write_notify_state(portfolio_id, {"log:x": {"last_sent": 1.0}})
    store.append_delivery(portfolio_id, {"delivery": "d1"})
    store.write_backtest(portfolio_id, {"bar": 0}, {"tracks": {}}, version=1, token="t1", ring=np.zeros((2, 1)))
    store.append_backtest_observations(portfolio_id, [{"track": "bar", "pnl": 1.0}], maxlen=10)
    store.record_split("AAA-2-for-1", {"ticker": "AAA"}, portfolio_id)
    store.record_dividend("AAA-div-0.25", {"ticker": "AAA"}, portfolio_id)


def test_every_key_the_store_writes_for_a_portfolio_is_listed_by_portfolio_keys_all(store: Store) -> None:
    keys = PortfolioKeys("desk-1")

    _write_through_every_portfolio_method(store, "desk-1")

    written = {k.decode() for k in store.client.scan_iter(match="pf:{desk-1}:*", count=1000)}
    assert written == set(keys.all())


def test_the_key_table_docstring_lists_every_portfolio_key() -> None:
    doc = store_keys.__doc__ or ""
    for key in PortfolioKeys("<id>").all():
        assert f"\n    {key} " in doc, key


def test_the_old_static_key_helpers_delegate_to_portfolio_keys() -> None:
    keys = PortfolioKeys("main")

    assert Store.peaks_key("main") == keys.peaks
    assert Store.alert_eval_key("main") == keys.alert_eval
    assert Store.actions_key("main") == keys.actions
    assert Store.outbox_key("main") == keys.outbox
    assert Store.notify_state_key("main") == keys.notify_state


def test_alert_and_notification_hashes_round_trip_through_their_typed_methods(store: Store) -> None:
    keys = PortfolioKeys("main")
    pairs = [
        (store.write_active_alerts, store.read_active_alerts, store.delete_active_alerts, keys.alerts),
        (store.write_alert_eval, store.read_alert_eval, store.delete_alert_eval, keys.alert_eval),
        (store.write_pending_actions, store.read_pending_actions, store.delete_pending_actions, keys.actions),
        (store.write_outbox, store.read_outbox, store.delete_outbox, keys.outbox),
    ]
    for write, read, delete, key in pairs:
        write("main", {"a": {"n": 1}, "b": {"amount": Decimal("1.10")}})

        assert read("main") == {"a": {"n": 1}, "b": {"amount": "1.10"}}
        assert store.read_json_hash(key) == read("main")

        delete("main", ["a"])
        assert read("main") == {"b": {"amount": "1.10"}}
    assert store.read_outbox_ids("main") == ["b"]
    store.write_notify_state("main", {"log:desk": {"last_sent_at": 2.5}})
    assert store.read_notify_state("main") == {"log:desk": {"last_sent_at": 2.5}}
    assert store.alert_watch_keys("main") == (keys.alerts, keys.alert_eval)


def test_a_flat_hgetall_reply_becomes_its_hash_and_a_torn_one_is_refused(store: Store) -> None:
    store.client.hset("h", mapping={"a": "1", "b": "2"})
    flat = store.client.eval("return redis.call('HGETALL', KEYS[1])", 1, "h")
    assert hash_from_flat(flat) == store.client.hgetall("h") == {b"a": b"1", b"b": b"2"}
    assert hash_from_flat(None) == {} == hash_from_flat([])
    with pytest.raises(ValueError):
        hash_from_flat([b"a", b"1", b"b"])


def _snapshot_with(positions: list[dict[str, object]], components: object = None) -> dict[str, object]:
    held = {p["ticker"]: 0.5 + i for i, p in enumerate(reversed(positions))}  # not in the positions' order
    return {"portfolio_id": "main", "ts": 1_800_000_000.25, "version": 7, "equity": 1.5e6, "positions": positions,
            "component_var": held if components is None else components, "backtest": None}  # fmt: skip


def _position(ticker: str, qty: int, **floats: float | None) -> dict[str, object]:
    row: dict[str, object] = {"ticker": ticker, "qty": qty}
    for i, name in enumerate(POSITION_FLOATS):
        row[name] = floats.get(name, 0.1 * (i + 1) + qty)
    return row


def test_a_snapshot_stores_its_position_figures_as_float64_and_reads_back_the_same_dicts() -> None:
    # Arrange: awkward floats, a null price and weight (a position without a usable price), a big quantity
    positions = [
        _position("AAA", 3, avg_price=0.1, last=1e-300, market_value=-2.5e15, weight=1 / 3),
        _position("BBB", -(2**62), last=None, weight=None, unrealized_pnl=-0.0),
        _position("Ω-CC", 0, mfe=float("inf"), mae=float("nan")),  # not finite: null, as JSON writes it
    ]
    snap = _snapshot_with(positions, {"Ω-CC": 0.1, "AAA": -2.5e-300})  # components: market order, not sorted

    # Act
    raw = encode_snapshot(snap)
    back = decode_snapshot(raw, "k")

    # Assert: the head is plain JSON (what the Lua scripts read), the figures bit-exact, inf and NaN null
    head, meta, block = raw.split(b"\0", 2)
    assert b'"version":7' in head and b"positions" not in head and b"component_var" not in head
    assert json.loads(meta) == [["AAA", "BBB", "Ω-CC"], [3, -(2**62), 0], [2, 0]]
    assert len(block) == 3 * 8 * len(POSITION_FLOATS) + 2 * 8
    want = [dict(p) for p in positions]
    want[2]["mfe"] = want[2]["mae"] = None
    assert back == {**snap, "positions": want}
    assert list(back["component_var"].items()) == [("Ω-CC", 0.1), ("AAA", -2.5e-300)]
    assert struct.unpack("<d", struct.pack("<d", back["positions"][0]["weight"])) == (1 / 3,)
    rows = PositionRows.from_dicts(positions)
    assert rows is not None and rows == want and len(rows) == 3 and list(rows)[1]["last"] is None
    shares = ComponentShares(["Ω-CC", "AAA"], [2, 0], struct.pack("<2d", 0.1, -2.5e-300))
    assert shares == snap["component_var"] and list(shares) == ["Ω-CC", "AAA"]
    assert encode_snapshot({**snap, "positions": rows, "component_var": shares}) == raw
    unindexed = ComponentShares(["Ω-CC", "AAA"], None, struct.pack("<2d", 0.1, -2.5e-300))
    assert encode_snapshot({**snap, "component_var": unindexed}) == raw



@pytest.mark.parametrize(
    "positions",
    [
        [],
        [{"ticker": "AAA", "qty": 5}],  # not the full schema
        [{**_position("AAA", 5), "extra": 1}],
        [_position("AAA", 5, avg_price="1.5")],  # type: ignore[arg-type]
        [{**_position("AAA", 5), "qty": 5.0}],  # a float quantity
        [{**_position("AAA", 5), "qty": True}],
        [_position("AAA", 5, last=2**60 + 1)],  # an integer float64 does not hold exactly
    ],
)
def test_a_snapshot_whose_positions_are_not_of_the_schema_is_stored_as_plain_json(positions: list[dict]) -> None:
    snap = _snapshot_with(positions, {})
    raw = encode_snapshot(snap)
    assert b"\0" not in raw
    assert json.loads(raw) == snap == decode_snapshot(raw, "k")


@pytest.mark.parametrize(
    "components",
    [
        {"AAA": 1.0, "ZZZ": 2.0},  # a ticker not among the positions
        {"AAA": math.nan},
        {"AAA": "1.0"},
        {"AAA": 2**60 + 1},
        "AAA",
    ],
)
def test_a_snapshot_whose_component_var_is_not_of_the_schema_is_stored_as_plain_json(components: object) -> None:
    snap = _snapshot_with([_position("AAA", 3)], components)
    rows = PositionRows.from_dicts(snap["positions"])  # type: ignore[arg-type]
    raw = encode_snapshot({**snap, "positions": rows})
    assert b"\0" not in raw
    null = {k: None if v != v else v for k, v in components.items()} if isinstance(components, dict) else components
    assert json.loads(raw) == {**snap, "component_var": null}  # NaN written as null
    snap.pop("component_var")
    assert json.loads(encode_snapshot(snap)) == snap  # none at all


@pytest.mark.parametrize(
    "mangle",
    [
        lambda raw: raw[:-1],  # a truncated float
        lambda raw: raw + b"\0",
        lambda raw: raw.replace(b'[["AAA"],[3],[0]]', b'[["AAA"],[3.0],[0]]'),
        lambda raw: raw.replace(b'[["AAA"],[3],[0]]', b'[["AAA","B"],[3,1],[0]]'),
        lambda raw: raw.replace(b'[["AAA"],[3],[0]]', b'[["AAA"],[3],[1]]'),  # no such position
        lambda raw: raw.replace(b'[["AAA"],[3],[0]]', b'[["AAA"],[3],[0,0]]'),
        lambda raw: raw.replace(b'[["AAA"],[3],[0]]', b'[["AAA"],[3],[]]'),  # the floats' count is off
        lambda raw: raw.replace(b'[["AAA"],[3],[0]]', b'[["AAA"],[3]]'),
        lambda raw: raw.replace(b'[["AAA"],[3],[0]]', b'{"AAA":3}'),
        lambda raw: raw.replace(b'[["AAA"],[3],[0]]', b"[[1],[3],[0]]"),
        lambda raw: raw.split(b"\0")[0] + b"\0" + b'[["AAA"],[3],[0]]',  # no second NUL
        lambda raw: raw.replace(b'"version":7', b'"positions":[],"version":7'),
        lambda raw: raw.replace(b'"version":7', b'"component_var":{},"version":7'),
        lambda raw: raw.replace(b'"version":7', b'"version":'),
    ],
)
def test_a_corrupt_stored_snapshot_raises_the_typed_error(store: Store, mangle) -> None:
    raw = encode_snapshot(_snapshot_with([_position("AAA", 3)]))
    assert mangle(raw) != raw
    store.client.set(PortfolioKeys("main").snapshot, mangle(raw))
    with pytest.raises(CorruptDataError):
        store.read_snapshot("main")


def test_a_plain_json_snapshot_of_an_older_store_still_reads(store: Store) -> None:
    snap = _snapshot_with([_position("AAA", 3)])
    store.client.set(PortfolioKeys("main").snapshot, json.dumps(snap))
    assert store.read_snapshot("main") == snap


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        encode_excursion(1, 3.0, -1.0)[:-1],  # truncated: neither form
        encode_excursion(0, 3.0, -1.0),
        encode_excursion(2, 3.0, -1.0),
        encode_excursion(1, -3.0, -1.0),
        encode_excursion(-1, 3.0, 1.0),
        encode_excursion(1, math.nan, -1.0),
        encode_excursion(1, 3.0, -math.inf),
        b'{"side": 1, "mfe": 3.0}',
        b'{"side": 3, "mfe": 3.0, "mae": -1.0}',
    ],
)
def test_a_corrupt_excursion_record_raises_the_typed_error(store: Store, raw: bytes) -> None:
    store.client.hset(PortfolioKeys("main").marks, "AAA", raw)
    with pytest.raises(CorruptDataError):
        store.read_marks("main")


def test_an_excursion_record_is_17_bytes_and_an_older_json_one_reads_the_same(store: Store) -> None:
    store.update_marks("main", {"AAA": (1, 3.0), "BBB": (-1, -2.5)})
    stored = store.client.hgetall(PortfolioKeys("main").marks)
    assert {len(v) for v in stored.values()} == {EXCURSION_DTYPE.itemsize}
    assert decode_excursion(stored[b"BBB"], "k") == (-1, 0.0, -2.5)
    store.client.hset(PortfolioKeys("main").marks, "BBB", '{"side":-1,"mfe":0.5,"mae":-2.5}')
    assert store.read_marks("main")["BBB"] == Excursion(-1, 0.5, -2.5)
    merged = store.update_marks("main", {"AAA": (1, 1.0), "BBB": (-1, 0.75)})  # the JSON one merges as before
    assert merged is not None and merged["BBB"] == Excursion(-1, 0.75, -2.5) and merged["AAA"] == Excursion(1, 3.0, 0.0)
    assert len(store.client.hget(PortfolioKeys("main").marks, "BBB") or b"") == EXCURSION_DTYPE.itemsize


def test_the_vectorised_tick_formats_peaks_as_the_shortest_decimals_that_read_back_bit_exact() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.standard_normal((40, 6)) * 10.0 ** rng.integers(-300, 300, (40, 6)),
                             [[0.0, -0.0, 1e16, 1e-7, 0.1, 5e-324]]])  # fmt: skip
    rows = _decimal_rows(values)
    assert [[float(v) for v in row] for row in rows] == values.tolist()
    # the same decimal as repr's (its shortest round trip), maybe written with another exponent form
    decimals = [[Decimal(v.decode()) for v in row] for row in rows]
    assert decimals == [[Decimal(repr(v)) for v in row] for row in values.tolist()]
    odd = values[:2].copy()
    odd[0, 5], odd[1, 0] = np.nan, -np.inf  # what float() reads as repr writes it; the finite ones as above
    got = _decimal_rows(odd)
    assert (got[0][5], got[1][0]) == ("nan", "-inf")
    assert [[float(v) for v in row] for row in got][0][:5] == odd[0, :5].tolist()
    assert [[float(v) for v in row] for row in got][1][1:] == odd[1, 1:].tolist()
    assert got[0][:5] == rows[0][:5] and got[1][1:] == rows[1][1:]
    assert _decimal_rows(np.zeros((0, 6))) == []


def test_a_capital_flow_shifts_every_equity_reference_but_the_worst_drawdown_and_creates_nothing(
    store: Store,
) -> None:
    key = PortfolioKeys("main").peaks
    assert store.shift_peaks("main", -100.0) is False and not store.client.exists(key)  # no observation yet
    store.update_peaks("main", 1000.0, "2024-03-06", "2024-03-04")
    store.update_peaks("main", 900.0, "2024-03-06", "2024-03-04", market_open=False)  # after the close
    before = store.client.hgetall(key)

    assert store.shift_peaks("main", -100.0) is True

    after = store.client.hgetall(key)
    for name in (b"day_open", b"day_peak", b"week_peak", b"max_peak", b"last", b"close"):
        assert float(after[name]) == float(before[name]) - 100.0, name
    assert (float(after[b"close"]), float(after[b"last"])) == (900.0, 800.0)
    assert {k: v for k, v in after.items() if k in (b"day", b"week", b"max_dd")} == {
        k: v for k, v in before.items() if k in (b"day", b"week", b"max_dd")}  # fmt: skip
    assert after[b"owner"] != before[b"owner"]
    with pytest.raises(ValueError, match="finite"):
        store.shift_peaks("main", math.nan)
