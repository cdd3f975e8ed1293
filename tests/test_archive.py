"""The audit trail's archive (engine/archive.py): older records of every audit stream go to append-only JSON Lines
files, fsynced, and only then leave Redis; no append trims an audit stream any more. Real Redis throughout; a crash
is a real client whose XTRIM fails, a concurrent desk process a second real client."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from engine import archive
from engine.archive import ArchiveFiles, Archiver, archive_directory, stream_folder
from engine.errors import ConfigError
from engine.redis_server import EmbeddedRedis
from engine.settings import ArchiveConfig, load_settings, settings_from_dict
from engine.store import GLOBAL_AUDIT_KEY, PortfolioKeys, Store
from engine.store import audit as store_audit
from engine.store import notifications as store_notifications
from engine.store import trading as store_trading
from engine.store.book import AUDIT_TRAIL_SUFFIXES
from engine.store.keys import ARCHIVE_KEY

from .conftest import TEST_CONFIG, merge, to_toml

YEAR = 365 * 86_400.0
"""A keep_seconds that leaves the age rule out of a test about the count rule."""


def config(**overrides: Any) -> ArchiveConfig:
    return ArchiveConfig(**{"keep_seconds": YEAR, "keep_entries": 1_000_000, **overrides})


def archived(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """Stream key -> every archived line (parsed), in file order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for folder in sorted(p for p in directory.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.jsonl")):
            for line in path.read_bytes().splitlines():
                row = json.loads(line)
                out.setdefault(row["stream"], []).append(row)
    return out


def in_redis(client: redis.Redis, key: str) -> list[tuple[str, dict[str, Any]]]:
    """(id, record) of every entry of a stream, oldest first."""
    return [(i.decode(), json.loads(f[b"json"])) for i, f in client.xrange(key)]


def append_records(store: Store, n: int, start: int = 0) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """``n`` records on each kind of audit stream through the store's own appends; stream -> (id, record)."""
    keys = PortfolioKeys("main")
    for i in range(start, start + n):
        store.append_audit(GLOBAL_AUDIT_KEY, {"ts": float(i), "actor": "risk-1", "action": "rule_changed", "n": i})
        store.append_audit(keys.audit, {"ts": float(i), "actor": "risk-1", "action": "set_limits", "n": i})
        store.append_trade_record("main", {"ts": float(i), "status": "REJECTED", "n": i, "note": "qty → 0 ü"})
        store.append_alert_log("main", {"ts": float(i), "event": "ACKNOWLEDGED", "actor": "t-7", "n": i})
    return {k: in_redis(store.client, k) for k in (GLOBAL_AUDIT_KEY, keys.audit, keys.trades, keys.alert_log)}


def as_rows(entries: list[tuple[str, dict[str, Any]]], key: str) -> list[dict[str, Any]]:
    return [{"id": i, "stream": key, "record": r} for i, r in entries]


class TrimFailsOnce(redis.Redis):
    """A real client whose ``fail_on``-th XTRIM fails as a dropped connection does: the archiver dies after its
    file write and fsync, before its trim."""

    fail_on = 1
    calls = 0

    def xtrim(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.fail_on:
            raise redis.ConnectionError("connection lost before the trim")
        return super().xtrim(*args, **kwargs)


class AppendsBeforeTrim(redis.Redis):
    """A real client that lets a desk process (another real client) append to the stream being archived just
    before each trim, i.e. between the archiver's read and its trim."""

    desk: Store
    appended: list[str]

    def xtrim(self, name: Any, *args: Any, **kwargs: Any) -> Any:
        key = name.decode() if isinstance(name, bytes) else name
        self.desk.append_audit(key, {"actor": "risk-1", "action": "set_trading_state", "late": True})
        self.appended.append(self.desk.client.xrevrange(key, count=1)[0][0].decode())
        return super().xtrim(name, *args, **kwargs)


# -- the archive run -------------------------------------------------------------------------------------------


def test_a_stream_beyond_its_bound_is_archived_line_for_line_and_a_second_run_changes_nothing(
    store: Store, tmp_path: Path
) -> None:
    # Arrange: 250 records on each audit stream, 40 kept in Redis; batches of 64 (several per stream)
    appended = append_records(store, 250)
    archiver = Archiver(store, config(keep_entries=40), tmp_path, batch=64)

    # Act
    run = archiver.run_once()

    # Assert: each archived record in exactly one line, in order, as appended; Redis holds exactly the newest 40
    lines = archived(tmp_path)
    assert set(lines) == set(appended)
    for key, entries in appended.items():
        assert lines[key] == as_rows(entries[:210], key)
        assert in_redis(store.client, key) == entries[210:]
        assert run.archived[key] == 210
    assert lines[PortfolioKeys("main").trades][0]["record"]["note"] == "qty → 0 ü"
    files = {p: p.read_bytes() for p in tmp_path.rglob("*.jsonl")}
    streams = {k: store.client.xrange(k) for k in appended}

    again = archiver.run_once()

    assert again.archived == {} and again.recovered == {} and again.errors == {}
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.jsonl")} == files
    assert {k: store.client.xrange(k) for k in appended} == streams


def test_a_crash_between_the_file_write_and_the_trim_neither_duplicates_nor_loses_on_the_next_run(
    redis_server: EmbeddedRedis, store: Store, tmp_path: Path
) -> None:
    appended = append_records(store, 30)
    dying = TrimFailsOnce.from_url(redis_server.url)
    dying.fail_on = 2  # the first stream's first batch is trimmed, its second batch written but not trimmed
    with pytest.raises(redis.ConnectionError):
        Archiver(Store(dying), config(keep_entries=5), tmp_path, batch=10).run_once()
    first = min(appended)  # streams are archived in key order
    assert len(archived(tmp_path)[first]) == 20  # two batches on disk
    assert len(in_redis(store.client, first)) == 20  # only the first batch left Redis

    run = Archiver(store, config(keep_entries=5), tmp_path, batch=10).run_once()

    assert run.recovered == {first: 10}
    lines = archived(tmp_path)
    for key, entries in appended.items():
        assert lines[key] == as_rows(entries[:25], key)  # each once, none missing
        assert in_redis(store.client, key) == entries[25:]


def test_a_torn_line_left_by_a_crash_during_the_write_is_cut_off_and_its_record_written_again(
    store: Store, tmp_path: Path
) -> None:
    key = GLOBAL_AUDIT_KEY
    appended = append_records(store, 6)[key]
    Archiver(store, config(keep_entries=3), tmp_path).run_once()
    append_records(store, 2, start=6)
    entries = in_redis(store.client, key)
    path = next((tmp_path / stream_folder(key)).glob("*.jsonl"))
    torn = json.dumps(as_rows(entries[:1], key)[0], separators=(",", ":"))[:25].encode()
    with path.open("ab") as f:  # a write cut short: no newline, never fsynced, never trimmed
        f.write(torn)

    Archiver(store, config(keep_entries=3), tmp_path).run_once()

    assert archived(tmp_path)[key] == as_rows(appended[:3] + entries[:2], key)
    assert in_redis(store.client, key) == entries[2:]


def test_a_record_appended_between_the_read_and_the_trim_is_not_trimmed(
    redis_server: EmbeddedRedis, store: Store, tmp_path: Path
) -> None:
    key = PortfolioKeys("main").audit
    for n in range(5):
        store.append_audit(key, {"actor": "risk-1", "action": "set_limits", "n": n})
    before = in_redis(store.client, key)
    racing = AppendsBeforeTrim.from_url(redis_server.url)
    racing.desk, racing.appended = store, []

    Archiver(Store(racing), config(keep_entries=2), tmp_path).run_once()

    assert len(racing.appended) == 1
    assert archived(tmp_path)[key] == as_rows(before[:3], key)
    kept = in_redis(store.client, key)
    assert [i for i, _ in kept] == [before[3][0], before[4][0], racing.appended[0]]  # 2 kept + the late one
    assert kept[-1][1]["late"] is True


def test_entries_the_archive_lacks_at_or_before_its_last_id_are_never_trimmed(store: Store, tmp_path: Path) -> None:
    # Arrange: the archive already holds records up to some id; the stream holds an older one it lacks (a
    # directory shared with another store, or a server whose clock went back)
    key = GLOBAL_AUDIT_KEY
    append_records(store, 4)
    Archiver(store, config(keep_entries=1), tmp_path).run_once()
    store.client.delete(key)
    store.client.xadd(key, {"json": json.dumps({"n": "foreign"}).encode()}, id="1-1")
    store.client.xadd(key, {"json": json.dumps({"n": "next"}).encode()}, id="2-1")
    folder = tmp_path / stream_folder(key)
    files = {p: p.read_bytes() for p in folder.glob("*.jsonl")}

    run = Archiver(store, config(keep_entries=0), tmp_path).run_once()

    assert "1-1" in run.errors[key] and "another store" in run.errors[key]
    assert [i for i, _ in in_redis(store.client, key)] == ["1-1", "2-1"]  # nothing of that stream trimmed
    assert {p: p.read_bytes() for p in folder.glob("*.jsonl")} == files  # nor written
    assert run.archived[PortfolioKeys("main").audit] == 1  # the other streams went on


# -- the keep rule's boundaries --------------------------------------------------------------------------------


def _ms(stream_id: str) -> int:
    return int(stream_id.split("-")[0])


def test_a_record_exactly_keep_seconds_old_stays_and_one_a_millisecond_older_is_archived(
    store: Store, tmp_path: Path
) -> None:
    key = PortfolioKeys("main").alert_log
    for n in range(3):
        store.append_alert_log("main", {"event": "ACKNOWLEDGED", "n": n})
        time.sleep(0.005)
    entries = in_redis(store.client, key)
    ms = [_ms(i) for i, _ in entries]
    assert ms[0] < ms[1] < ms[2] - 1
    keep = 60.0

    def at(now_ms: int) -> Archiver:
        return Archiver(store, config(keep_seconds=keep), tmp_path, clock=lambda: now_ms / 1000.0)

    at(ms[1] + 60_000).run_once()  # the second record is exactly 60 s old: kept; the first is older

    assert archived(tmp_path)[key] == as_rows(entries[:1], key)
    assert in_redis(store.client, key) == entries[1:]

    at(ms[1] + 60_001).run_once()  # now a millisecond over: archived; the third is younger

    assert archived(tmp_path)[key] == as_rows(entries[:2], key)
    assert in_redis(store.client, key) == entries[2:]


def test_a_stream_of_exactly_keep_entries_stays_whole_and_one_more_archives_the_oldest(
    store: Store, tmp_path: Path
) -> None:
    key = GLOBAL_AUDIT_KEY
    for n in range(5):
        store.append_audit(key, {"action": "seed", "n": n})
    archiver = Archiver(store, config(keep_entries=5), tmp_path)

    archiver.run_once()

    assert not (tmp_path / stream_folder(key)).exists()  # nothing due: no file written
    assert len(in_redis(store.client, key)) == 5
    store.append_audit(key, {"action": "seed", "n": 5})
    entries = in_redis(store.client, key)

    archiver.run_once()

    assert archived(tmp_path)[key] == as_rows(entries[:1], key)
    assert in_redis(store.client, key) == entries[1:]


def test_the_refused_check_delivery_and_trade_logs_keep_at_most_their_own_bounds_after_archiving(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_audit, "CHECK_LOG_MAXLEN", 3)
    monkeypatch.setattr(store_notifications, "DELIVERY_LOG_MAXLEN", 4)
    monkeypatch.setattr(store_trading, "TRADE_LOG_MAXLEN", 5)
    keys = PortfolioKeys("main")
    for n in range(10):
        store.append_check_record("main", {"actor": "viewer-1", "reasons": [], "n": n})
        store.append_delivery("main", {"delivery": f"d{n}"})
        store.append_trade_record("main", {"status": "REJECTED", "n": n})
        store.append_audit(keys.audit, {"action": "set_limits", "n": n})

    Archiver(store, config(keep_entries=6), tmp_path).run_once()

    kept = {k: store.client.xlen(k) for k in (keys.checks, keys.deliveries, keys.trades, keys.audit)}
    assert kept == {keys.checks: 3, keys.deliveries: 4, keys.trades: 5, keys.audit: 6}
    assert {k: len(v) for k, v in archived(tmp_path).items()} == {k: 10 - n for k, n in kept.items()}


def test_every_log_a_reset_keeps_is_archived(store: Store) -> None:
    assert {f":{s}" for s in store_audit.ARCHIVED_SOURCES} == set(AUDIT_TRAIL_SUFFIXES)
    keys = PortfolioKeys("gone")  # a portfolio no longer registered still has its logs archived
    store.append_audit(GLOBAL_AUDIT_KEY, {"action": "seed"})
    for source in store_audit.ARCHIVED_SOURCES:
        store.append_audit(getattr(keys, source), {"n": 1})
    store.append_backtest_observations("gone", [{"track": "bar"}], maxlen=10)  # not an audit record

    assert store.archived_stream_keys() == sorted(
        [GLOBAL_AUDIT_KEY, *(getattr(keys, s) for s in store_audit.ARCHIVED_SOURCES)]
    )


# -- the appends no longer trim --------------------------------------------------------------------------------


def test_appending_past_the_old_maxlen_of_the_change_streams_trims_nothing(store: Store) -> None:
    n = 100_500  # the old bound was MAXLEN ~ 100,000
    with store.client.pipeline(transaction=False) as pipe:
        for i in range(n):
            store.append_audit(GLOBAL_AUDIT_KEY, {"n": i}, pipe)
        pipe.execute()

    assert store.client.xlen(GLOBAL_AUDIT_KEY) == n
    assert json.loads(store.client.xrange(GLOBAL_AUDIT_KEY, count=1)[0][1][b"json"])["n"] == 0


def test_appending_past_the_check_delivery_and_trade_log_bounds_trims_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from decimal import Decimal

    from engine.records import PortfolioState, Position

    monkeypatch.setattr(store_audit, "CHECK_LOG_MAXLEN", 100)
    monkeypatch.setattr(store_notifications, "DELIVERY_LOG_MAXLEN", 100)
    monkeypatch.setattr(store_trading, "TRADE_LOG_MAXLEN", 100)
    state = PortfolioState("main", "cash", Decimal("1000.00"), {})
    for n in range(1_000):
        store.append_check_record("main", {"n": n})
        store.append_delivery("main", {"n": n})
        store.append_trade_record("main", {"n": n})
        with store.client.pipeline(transaction=True) as pipe:
            store.write_fill(
                state, "AAA", Position(n + 1, Decimal("10")), {"n": n}, trade_id=f"t{n}", client_order_id=None,
                ts=1_700_000_000.0 + n, rate_window_seconds=60.0, pipe=pipe,
            )  # fmt: skip
            pipe.execute()

    keys = PortfolioKeys("main")
    assert store.client.xlen(keys.checks) == 1_000
    assert store.client.xlen(keys.deliveries) == 1_000
    assert store.client.xlen(keys.trades) == 2_000


# -- settings, directory and the daemon's entry ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"directory": 5}, r"settings\.archive\.directory: .*string"),
        ({"directory": " "}, r"settings\.archive\.directory: .*non-empty path"),
        ({"keep_seconds": -1}, r"settings\.archive\.keep_seconds: must be a finite number >= 0"),
        ({"keep_seconds": "30d"}, r"settings\.archive\.keep_seconds: expected a number"),
        ({"keep_entries": -1}, r"settings\.archive\.keep_entries: .*greater than or equal to 0"),
        ({"interval_seconds": 0}, r"settings\.archive\.interval_seconds: .*greater than 0"),
        ({"keep": 5}, r"settings\.archive: unknown setting"),
    ],
)
def test_bad_archive_settings_are_refused_naming_the_setting(override: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_dict(merge(TEST_CONFIG, {"archive": override}))


def test_the_archive_defaults_to_a_folder_of_the_stores_data_dir_and_follows_the_environment(tmp_path: Path) -> None:
    file = tmp_path / "riskdesk.toml"
    file.write_text(to_toml(merge(TEST_CONFIG, {"redis": {"data_dir": "var/demo"}})))

    settings = load_settings(file, env={})
    env = {"RISKDESK__ARCHIVE__DIRECTORY": '"/srv/audit"', "RISKDESK__ARCHIVE__KEEP_ENTRIES": "7"}
    moved = load_settings(file, env=env)

    assert archive_directory(settings, tmp_path) == tmp_path / "var/demo/archive"
    assert archive_directory(moved, tmp_path) == Path("/srv/audit") and moved.archive.keep_entries == 7
    assert settings.archive == ArchiveConfig()
    assert stream_folder("pf:{main}:alert_log") == "pf_main_alert_log" and stream_folder("rd:audit") == "rd_audit"


def test_once_from_the_command_line_archives_and_records_where(
    redis_server: EmbeddedRedis, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    appended = append_records(store, 3)
    file = tmp_path / "riskdesk.toml"
    target = tmp_path / "audit-archive"
    file.write_text(to_toml(merge(TEST_CONFIG, {"archive": {"directory": str(target), "keep_seconds": 0.0}})))
    monkeypatch.setenv("REDIS_URL", redis_server.url)

    assert archive.main(["--config", str(file), "--once"], clock=lambda: time.time() + 1.0) == 0

    assert f"12 records archived to {target}" in capsys.readouterr().out
    assert {k: len(v) for k, v in archived(target).items()} == {k: 3 for k in appended}
    assert all(store.client.xlen(k) == 0 for k in appended)
    state = store.read_archive_state()
    assert state is not None and state.directory == str(target) and state.archived == 12
    assert store.client.exists(ARCHIVE_KEY)


def test_two_archivers_on_one_directory_never_run_at_once(store: Store, tmp_path: Path) -> None:
    first = Archiver(store, config(), tmp_path)
    with first.locked():
        with pytest.raises(archive.ArchiveBusyError):
            Archiver(store, config(), tmp_path).run_once()


def test_the_last_archived_id_is_read_from_the_files(tmp_path: Path) -> None:
    files = ArchiveFiles(tmp_path)
    assert files.last_id("rd:audit") is None
    folder = tmp_path / "rd_audit"
    folder.mkdir()
    (folder / "2024-01-01.jsonl").write_text('{"id":"1704067200000-0","stream":"rd:audit","record":{}}\n')
    (folder / "2024-01-02.jsonl").write_text("")  # created by a run that died before writing

    assert files.last_id("rd:audit") == "1704067200000-0"


@pytest.mark.slow
def test_on_a_redis_cluster_every_portfolios_streams_are_archived(cluster_store: Store, tmp_path: Path) -> None:
    pids = ("main", "hedge", "p3", "p4")  # spread over the masters by their hash tags
    for pid in pids:
        for n in range(12):
            cluster_store.append_audit(PortfolioKeys(pid).audit, {"n": n})
            cluster_store.append_check_record(pid, {"n": n})
    cluster_store.append_audit(GLOBAL_AUDIT_KEY, {"action": "seed"})

    run = Archiver(cluster_store, config(keep_entries=4), tmp_path, batch=5).run_once()

    keys = [getattr(PortfolioKeys(pid), s) for pid in pids for s in ("audit", "checks")]
    assert run.archived == {k: 8 for k in keys} and run.errors == {}
    assert {k: len(v) for k, v in archived(tmp_path).items()} == {k: 8 for k in keys}
    assert {k: cluster_store.client.xlen(k) for k in keys} == {k: 4 for k in keys}
    assert cluster_store.client.xlen(GLOBAL_AUDIT_KEY) == 1


def test_an_entry_that_is_not_one_json_record_is_archived_with_its_raw_fields(store: Store, tmp_path: Path) -> None:
    key = PortfolioKeys("main").audit
    store.client.xadd(key, {"json": b"{not json"})
    store.client.xadd(key, {"a": b"1", "b": "caf\u00e9".encode()})

    Archiver(store, config(keep_entries=0), tmp_path).run_once()

    rows = archived(tmp_path)[key]
    assert [r.get("fields") for r in rows] == [{"json": "{not json"}, {"a": "1", "b": "caf\u00e9"}]
    assert store.client.xlen(key) == 0


def test_the_daemon_loop_beats_after_each_run_on_its_clock(store: Store, tmp_path: Path) -> None:
    """``hb:archive`` after every run (the System page's liveness of the archiver): dated on its clock, with the
    records archived so far."""
    import threading

    append_records(store, 5)
    stop = threading.Event()
    now = time.time()
    archiver = Archiver(store, config(keep_entries=2), tmp_path, clock=lambda: now)
    runs = []

    def once(event: threading.Event | None = None) -> Any:
        runs.append(archiver_run(event))
        stop.set()  # one run, then the loop ends
        return runs[-1]

    archiver_run, archiver.run_once = archiver.run_once, once  # type: ignore[method-assign]
    archive.run(archiver, stop, interval=0.01)
    beat = store.read_heartbeat(archive.HEARTBEAT_COMPONENT)
    assert beat is not None and float(beat["ts"]) == now
    assert int(beat["archived"]) == runs[0].total > 0 and int(beat["stream_errors"]) == 0
