"""The audit trail's archive: ``python -m engine.archive`` copies the older records of every audit stream to
append-only JSON Lines files, fsyncs them, and only then trims exactly those records from Redis.

Usage: python -m engine.archive [--config FILE] [--once] [--interval SECONDS] [--log-level INFO]

Why: Redis memory is not the place for years of audit trail, and a blind ``XADD ... MAXLEN`` deletes the oldest
records of who changed a limit or acknowledged an alert. No append trims an audit stream any more
(engine/store/audit.py); this daemon is the only thing that does, and only what it has archived durably.

Streams (:meth:`engine.store.AuditStore.archived_stream_keys`): ``rd:audit`` and each portfolio's ``trades``,
``audit``, ``checks``, ``alert_log`` and ``deliveries``. A record stays in Redis while it is at most
``archive.keep_seconds`` old (by its stream id's time) and among the newest ``archive.keep_entries`` of its stream
(the refused-check, delivery and trade logs: at most their own bounds too, :func:`engine.store.audit.redis_bound`);
past either bound it is archived.

Layout (``archive.directory``, default ``<redis.data_dir>/archive``)::

    <directory>/<stream>/<YYYY-MM-DD>.jsonl   one line per entry, oldest first, in the UTC day of its id:
                                              {"id": "<ms>-<seq>", "stream": "<key>", "record": {...}}
                                              ("fields" with the raw field values, as text, instead of "record"
                                              for an entry that is not one JSON record)
    <directory>/.lock                         held (flock) by the run in progress

``<stream>`` is the key with ``:`` as ``_`` and the braces dropped (``pf:{main}:trades`` -> ``pf_main_trades``,
``rd:audit`` -> ``rd_audit``); any other character outside ``[A-Za-z0-9._-]`` becomes ``_``.

One run, per stream, under the lock (:meth:`Archiver.run_once`):

1. The archive's last id is the id of the last complete line of the stream's newest file: the files are the
   truth, nothing else is trusted. A torn last line (a crash in the middle of a write, never fsynced, so never
   trimmed) is cut off: its entry is still in Redis and is written again.
2. Entries at or before that id still in Redis (a crash after the fsync, before the trim) must each be in the
   archive, line for line; the files holding them are fsynced and then they are trimmed. One that the archive
   lacks (a directory shared with another store) stops that stream with an :class:`ArchiveError`, trimming
   nothing of it.
3. The due entries after that id, oldest first, in batches: appended to their day files, flushed and fsynced
   (and the folder too when a file is new), then ``XTRIM MINID`` just past the last one written. An entry
   appended meanwhile has a greater id: never trimmed unarchived.

So a crash anywhere neither loses nor duplicates a record, and a second run with nothing due changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from engine.daemon import (
    Backoff,
    add_daemon_arguments,
    configure_logging,
    connect_for_daemon,
    failure_log_level,
    stop_on_signals,
)
from engine.errors import RiskdeskError, StoreError
from engine.records import Clock
from engine.settings import ArchiveConfig, Settings, load_settings
from engine.store import Store
from engine.store.audit import StreamEntry, parse_stream_id, redis_bound

LOGGER = logging.getLogger("riskdesk.archive")

HEARTBEAT_COMPONENT = "archive"
"""The archiver's heartbeat (``hb:archive``), written after every run that did not fail (wall time): the System
page's liveness of the process that keeps the audit streams' memory bounded."""

ARCHIVE_FOLDER = "archive"
"""The archive's folder under ``redis.data_dir`` when ``archive.directory`` is unset."""
BATCH_ENTRIES = 10_000
"""Entries read, written, fsynced and trimmed at a time (bounds the memory of a first run on a long stream)."""
LOCK_FILE = ".lock"
SUFFIX = ".jsonl"
TAIL_CHUNK_BYTES = 64 * 1024


class ArchiveError(RiskdeskError):
    """The archive cannot take a stream's records safely (nothing of that stream was trimmed)."""

    code = "ARCHIVE_FAILED"
    fix = "read the message: the archive directory must belong to this store alone and hold only the archiver's files"


class ArchiveBusyError(ArchiveError):
    code = "ARCHIVE_BUSY"
    fix = "another archiver is running on this directory; wait for it (the daemon retries at its next run)"


def archive_directory(settings: Settings, root: Path | None = None) -> Path:
    """The archive's root: ``archive.directory``, else ``<redis.data_dir>/archive``; a relative path is taken
    against ``root`` (default: the working directory, the repository for the launcher's daemons)."""
    path = Path(settings.archive.directory or Path(settings.redis.data_dir) / ARCHIVE_FOLDER)
    return path if path.is_absolute() else (root or Path.cwd()) / path


def stream_folder(key: str) -> str:
    """The folder name of a stream's files (see the module docstring)."""
    name = "".join("_" if c == ":" else c if c.isascii() and (c.isalnum() or c in "._-") else "_"
                   for c in key.replace("{", "").replace("}", ""))  # fmt: skip
    return name.lstrip(".") or "_"


def encode_line(key: str, entry: StreamEntry) -> bytes:
    """The archive line of one entry (ASCII JSON and a newline): the record decoded when the entry is one JSON
    record (``json`` field, as every Riskdesk append writes it), else its raw fields as text."""
    line: dict[str, Any] = {"id": entry.id, "stream": key}
    try:
        if set(entry.fields) != {"json"}:
            raise ValueError("not one JSON record")
        line["record"] = json.loads(entry.fields["json"].decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError among them
        line["fields"] = {k: v.decode("utf-8", "backslashreplace") for k, v in entry.fields.items()}
    return (json.dumps(line, separators=(",", ":")) + "\n").encode("ascii")


def _day(stream_id: str) -> str:
    ms, _ = parse_stream_id(stream_id)
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC).strftime("%Y-%m-%d")


def _fsync_dir(path: Path) -> None:
    """Make a new file's (or folder's) name durable: fsync the folder that holds it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArchiveFiles:
    """The append-only files of one archive directory (see the module docstring for the layout)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, key: str) -> Path:
        return self.root / stream_folder(key)

    def day_files(self, key: str) -> list[Path]:
        """The stream's files, oldest day first."""
        folder = self.folder(key)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX) and p.is_file())

    def last_id(self, key: str) -> str | None:
        """The id of the stream's last archived entry (the last complete line of its newest non-empty file), None
        when nothing is archived. A torn last line is cut off first (see the module docstring)."""
        for path in reversed(self.day_files(key)):
            line = self._repaired_last_line(path)
            if line is None:
                continue
            try:
                stream_id = json.loads(line)["id"]
                parse_stream_id(stream_id)
            except (ValueError, KeyError, TypeError) as exc:
                raise ArchiveError(f"{path}: its last line is not an archive line ({exc})") from exc
            return str(stream_id)
        return None

    @staticmethod
    def _repaired_last_line(path: Path) -> bytes | None:
        """The file's last complete line (None when it has none), after cutting off bytes past its last newline."""
        with path.open("rb+") as f:
            size = f.seek(0, os.SEEK_END)
            pos, buf = size, b""
            while True:
                end = buf.rfind(b"\n")
                start = buf.rfind(b"\n", 0, end) if end >= 0 else -1
                if start >= 0 or (end >= 0 and pos == 0):
                    complete = pos + end + 1
                    line = buf[start + 1 : end]
                    break
                if pos == 0:
                    complete, line = 0, b""
                    break
                step = min(TAIL_CHUNK_BYTES, pos)
                pos -= step
                f.seek(pos)
                buf = f.read(step) + buf
            if complete < size:
                LOGGER.warning("%s: cutting off %d bytes of a torn last line (its entry is still in Redis)",
                               path, size - complete)  # fmt: skip
                f.truncate(complete)
                f.flush()
                os.fsync(f.fileno())
        return line if complete else None

    def append(self, key: str, entries: Sequence[StreamEntry]) -> None:
        """Append the entries (oldest first, all after the archive's last id) to their day files; each file is
        flushed and fsynced (its folder too when the file is new) before this returns. On a failed write the
        file is cut back to its size before it."""
        by_day: dict[str, list[bytes]] = {}
        for entry in entries:
            by_day.setdefault(_day(entry.id), []).append(encode_line(key, entry))
        folder = self.folder(key)
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            _fsync_dir(folder.parent)
        for day, lines in by_day.items():
            path = folder / f"{day}{SUFFIX}"
            new = not path.exists()
            with path.open("ab") as f:
                before = f.tell()
                try:
                    f.write(b"".join(lines))
                    f.flush()
                    os.fsync(f.fileno())
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.ftruncate(f.fileno(), before)
                    raise
            if new:
                _fsync_dir(folder)

    def verify(self, key: str, entries: Sequence[StreamEntry]) -> None:
        """Check that every entry is in the archive exactly as :func:`encode_line` writes it, then fsync the files
        holding them (a run that crashed before its fsync may have left them in the page cache only). Raises
        :class:`ArchiveError` naming the first one that is not."""
        wanted: dict[str, dict[str, bytes]] = {}
        for entry in entries:
            wanted.setdefault(_day(entry.id), {})[entry.id] = encode_line(key, entry)
        for day, lines in wanted.items():
            path = self.folder(key) / f"{day}{SUFFIX}"
            found: dict[str, bytes] = {}
            if path.is_file():
                with path.open("rb") as f:
                    for line in f:
                        stream_id = _line_id(line)
                        if stream_id in lines:
                            found[stream_id] = line
                    os.fsync(f.fileno())
            for stream_id, line in lines.items():
                if found.get(stream_id) != line:
                    what = "holds another record under" if stream_id in found else "lacks"
                    raise ArchiveError(
                        f"{key}: entry {stream_id} is at or before the archive's last id, but {path} {what} it: "
                        "is this directory shared with another store? Nothing of this stream was trimmed"
                    )


def _line_id(line: bytes) -> str | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value.get("id") if isinstance(value, dict) else None


@dataclass
class ArchiveRun:
    """What one run did."""

    archived: dict[str, int] = field(default_factory=dict)
    """Stream -> entries written to the archive and trimmed from Redis."""
    recovered: dict[str, int] = field(default_factory=dict)
    """Stream -> entries already archived (by a run that stopped before its trim) now trimmed."""
    errors: dict[str, str] = field(default_factory=dict)
    """Stream -> why it was skipped (nothing of it trimmed)."""

    @property
    def total(self) -> int:
        return sum(self.archived.values())


class Archiver:
    """Moves the due records of every audit stream from Redis to the archive (see the module docstring).

    ``store`` and ``clock`` are injected (the tests pass a real Redis and a fixed clock); ``batch`` bounds how
    many entries one read, write and trim hold."""

    def __init__(
        self,
        store: Store,
        config: ArchiveConfig,
        directory: Path,
        clock: Clock = time.time,
        batch: int = BATCH_ENTRIES,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.store = store
        self.config = config
        self.files = ArchiveFiles(directory.absolute())
        self.clock = clock
        self.batch = batch

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock (:data:`LOCK_FILE`, flock): one run at a time per archive, whichever process
        runs it; raises :class:`ArchiveBusyError` at once when another holds it."""
        self.files.root.mkdir(parents=True, exist_ok=True)
        with (self.files.root / LOCK_FILE).open("a") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ArchiveBusyError(f"{self.files.root} is locked by another archiver") from None
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def keep_entries(self, key: str) -> int:
        """How many of the stream's newest records stay in Redis (``archive.keep_entries``, or the stream's own
        bound when lower)."""
        bound = redis_bound(key)
        return self.config.keep_entries if bound is None else min(self.config.keep_entries, bound)

    def run_once(self, stop: threading.Event | None = None) -> ArchiveRun:
        """One pass over every audit stream (under the directory's lock); a stream that cannot be archived safely
        is skipped and named in :attr:`ArchiveRun.errors`, the others go on. Redis and file-system errors raise.
        """
        stop = stop or threading.Event()
        run = ArchiveRun()
        with self.locked():
            now_ms = round(self.clock() * 1000.0)
            cutoff_ms = now_ms - round(self.config.keep_seconds * 1000.0)
            keys = self.store.archived_stream_keys()
            for head in self.store.stream_heads(keys):
                if stop.is_set():
                    break
                try:
                    self._archive_stream(head.key, head.length, head.oldest, cutoff_ms, run, stop)
                except ArchiveError as exc:
                    LOGGER.error("%s: %s", head.key, exc)
                    run.errors[head.key] = str(exc)
            self.store.write_archive_state(
                str(self.files.root), self.config.keep_seconds, self.config.keep_entries, run.total, now_ms / 1000.0
            )
        return run

    def _due(self, length: int, oldest: str | None, keep: int, cutoff_ms: int) -> bool:
        return oldest is not None and (length > keep or parse_stream_id(oldest)[0] < cutoff_ms)

    def _archive_stream(
        self, key: str, length: int, oldest: str | None, cutoff_ms: int, run: ArchiveRun, stop: threading.Event
    ) -> None:
        keep = self.keep_entries(key)
        if not self._due(length, oldest, keep, cutoff_ms):
            return  # the common case: no file is read
        last = self.files.last_id(key)
        if last is not None and oldest is not None and parse_stream_id(oldest) <= parse_stream_id(last):
            recovered = self._trim_archived(key, last)
            if recovered:
                run.recovered[key] = recovered
            length = self.store.stream_length(key)
        due_by_count = max(0, length - keep)
        while not stop.is_set():
            entries = self.store.read_stream_entries(key, after=last, count=self.batch)
            take = 0
            while take < len(entries) and (take < due_by_count or parse_stream_id(entries[take].id)[0] < cutoff_ms):
                take += 1
            if take == 0:
                return
            self.files.append(key, entries[:take])
            last = entries[take - 1].id
            self.store.trim_stream_through(key, last)  # after the fsync: only what is archived
            run.archived[key] = run.archived.get(key, 0) + take
            due_by_count -= take
            if take < len(entries) or len(entries) < self.batch:
                return

    def _trim_archived(self, key: str, last: str) -> int:
        """Trim the entries at or before ``last`` still in Redis, once each is found in the archive."""
        trimmed = 0
        while True:
            entries = self.store.read_stream_entries(key, through=last, count=self.batch)
            if not entries:
                return trimmed
            self.files.verify(key, entries)
            self.store.trim_stream_through(key, entries[-1].id)
            trimmed += len(entries)


def run(archiver: Archiver, stop: threading.Event, interval: float) -> int:
    """Run :meth:`Archiver.run_once` every ``interval`` seconds until ``stop`` is set; a failed run (Redis
    unreachable, a full disk) is retried with the daemons' backoff. Returns the records archived."""
    backoff, failures, total = Backoff(), 0, 0
    while not stop.is_set():
        try:
            done = archiver.run_once(stop)
        except (redis.RedisError, StoreError, OSError, ArchiveBusyError) as exc:
            failures += 1
            LOGGER.log(failure_log_level(failures), "archive run failed: %s", exc)
            if backoff.wait(stop):
                break
            continue
        failures = 0
        backoff.reset()
        total += done.total
        beat = {"ts": archiver.clock(), "pid": os.getpid(), "archived": total, "stream_errors": len(done.errors)}
        try:
            archiver.store.write_heartbeat(HEARTBEAT_COMPONENT, beat)
        except (redis.RedisError, StoreError) as exc:  # the next run tries again; its failure is logged there
            LOGGER.warning("archive heartbeat not written: %s", exc)
        if done.total or done.recovered:
            LOGGER.info("archived %d records of %d streams (%d trimmed after a stopped run)", done.total,
                        len(done.archived), sum(done.recovered.values()))  # fmt: skip
        if stop.wait(interval):
            break
    return total


def main(argv: Sequence[str] | None = None, *, clock: Clock = time.time) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.archive", description=__doc__.split("\n\n")[0])
    add_daemon_arguments(parser)
    parser.add_argument("--once", action="store_true", help="one run, then exit (0: every stream archived)")
    parser.add_argument("--interval", type=float, metavar="SECONDS", help="default: archive.interval_seconds")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        settings = load_settings(args.config)
        store = Store(connect_for_daemon(settings))
        archiver = Archiver(store, settings.archive, archive_directory(settings), clock)
        if args.once:
            done = archiver.run_once()
            print(f"archive: {done.total} records archived to {archiver.files.root}", flush=True)
            return 1 if done.errors else 0
    except (RiskdeskError, redis.RedisError, OSError) as exc:
        code = getattr(exc, "code", type(exc).__name__)
        print(f"archive: error [{code}]: {exc}", file=sys.stderr)
        return 2
    stop = stop_on_signals(LOGGER)
    interval = args.interval if args.interval is not None else settings.archive.interval_seconds
    LOGGER.info("archiving the audit trail to %s every %g s", archiver.files.root, interval)
    total = run(archiver, stop, max(0.05, interval))
    print(f"archive: {total} records archived", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
