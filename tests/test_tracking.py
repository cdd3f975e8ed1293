"""Reads that ask Redis what changed (engine/store/tracking.py): a tracked script's replies against the script
run directly, after every kind of write, and what each read sends."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from engine.store.tracking import KeyTracker, TrackedReplies

# one reply per key: the hash field 'v' of KEYS[i] suffixed with ARGV[i], an error for a key of the wrong type
_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.pcall('HGET', key, 'v')
  if type(v) == 'table' then out[i] = v else out[i] = (v or 'none') .. ':' .. (ARGV[i] or '') end
end
return out
"""
KEYS = [f"t:{{k{i}}}" for i in range(5)]


def _calls(client: Any, command: str) -> int:
    stats = client.info("commandstats").get(f"cmdstat_{command}")
    return 0 if stats is None else int(stats["calls"])


def _direct(client: redis.Redis, args: list[str]) -> list[Any]:
    return list(client.eval(_SCRIPT, len(KEYS), *KEYS, *args))  # type: ignore[arg-type]


def _same(a: list[Any], b: list[Any]) -> bool:
    """Equal replies; errors compare by type and message."""

    def norm(r: Any) -> Any:
        return (type(r), str(r)) if isinstance(r, Exception) else r

    return [norm(r) for r in a] == [norm(r) for r in b]


@pytest.fixture
def seeded(redis_client: redis.Redis) -> redis.Redis:
    for i, key in enumerate(KEYS):
        redis_client.hset(key, "v", f"x{i}")
    return redis_client


def test_replies_match_the_script_and_only_written_keys_are_read_again(seeded: redis.Redis) -> None:
    # Arrange
    tracked = TrackedReplies(_SCRIPT)
    args = ["a"] * len(KEYS)
    first = tracked.read(seeded, KEYS, args)
    assert first is not None and _same(first, _direct(seeded, args))

    # Act 1: nothing written
    seeded.config_resetstat()
    again = tracked.read(seeded, KEYS, args)
    idle = (_calls(seeded, "evalsha"), _calls(seeded, "hget"))

    # Act 2: two keys written by another client, one of them deleted
    seeded.hset(KEYS[1], "v", "changed")
    seeded.delete(KEYS[3])
    seeded.config_resetstat()
    after = tracked.read(seeded, KEYS, args)
    written = (_calls(seeded, "evalsha"), _calls(seeded, "hget"))

    # Assert
    assert again == first and idle == (0, 0)
    assert after is not None and _same(after, _direct(seeded, args))
    assert after[1] == b"changed:a" and after[3] == b"none:a"
    assert written == (1, 2)


def test_a_changed_argument_reads_that_key_again(seeded: redis.Redis) -> None:
    tracked = TrackedReplies(_SCRIPT)
    tracked.read(seeded, KEYS, ["a"] * len(KEYS))

    seeded.config_resetstat()
    args = ["a", "a", "b", "a", "a"]
    replies = tracked.read(seeded, KEYS, args)
    read = _calls(seeded, "hget")

    assert replies is not None and _same(replies, _direct(seeded, args)) and replies[2] == b"x2:b"
    assert read == 1


def test_an_error_reply_is_read_again_until_it_clears(seeded: redis.Redis) -> None:
    # Arrange: a key of the wrong type answers an error in its own slot
    seeded.delete(KEYS[0])
    seeded.set(KEYS[0], "not a hash")
    tracked = TrackedReplies(_SCRIPT)
    args = [""] * len(KEYS)
    broken = tracked.read(seeded, KEYS, args)
    assert broken is not None and isinstance(broken[0], redis.ResponseError)

    # Act: read again with nothing written, then after the repair
    seeded.config_resetstat()
    still = tracked.read(seeded, KEYS, args)
    reread = _calls(seeded, "hget")
    seeded.delete(KEYS[0])
    seeded.hset(KEYS[0], "v", "fixed")
    repaired = tracked.read(seeded, KEYS, args)

    # Assert: the error is never held (read again each time), the repair is seen
    assert still is not None and isinstance(still[0], redis.ResponseError) and reread == 1
    assert repaired is not None and repaired[0] == b"fixed:"


def test_a_flush_a_killed_connection_or_new_keys_read_everything_that_is_not_known(seeded: redis.Redis) -> None:
    tracked = TrackedReplies(_SCRIPT)
    args = [""] * len(KEYS)
    tracked.read(seeded, KEYS, args)

    seeded.flushall()  # one push naming no key
    seeded.config_resetstat()
    flushed = tracked.read(seeded, KEYS, args)
    after_flush = _calls(seeded, "hget")

    tracked.read(seeded, KEYS, args)
    seeded.client_kill_filter(_type="normal", skipme=True)  # the tracked connection dies: pushes are lost
    seeded.hset(KEYS[4], "v", "late")
    seeded.config_resetstat()
    killed = tracked.read(seeded, KEYS, args)
    after_kill = _calls(seeded, "hget")

    more = [*KEYS, "t:{new}"]
    seeded.config_resetstat()
    grown = tracked.read(seeded, more, [*args, ""])
    after_growth = _calls(seeded, "hget")

    assert flushed == [b"none:"] * len(KEYS) and after_flush == len(KEYS)
    assert killed is not None and killed[4] == b"late:" and after_kill == len(KEYS)
    assert grown is not None and grown[-1] == b"none:" and after_growth == 1


def test_without_tracking_the_caller_reads_itself(seeded: redis.Redis) -> None:
    assert TrackedReplies(_SCRIPT, tracking=False).read(seeded, KEYS, [""] * len(KEYS)) is None


def test_a_tracker_reports_the_keys_written_since_its_reads_once(seeded: redis.Redis) -> None:
    # Arrange
    tracker = KeyTracker(seeded)
    assert tracker.changes() is None  # nothing tracked yet: read everything
    tracker.eval(_SCRIPT, KEYS[:2], [])

    # Act: a write before the next call, and one after it
    seeded.hset(KEYS[0], "v", "1")
    seeded.hset(KEYS[2], "v", "not read: not reported")
    first = tracker.changes()
    seeded.hset(KEYS[0], "v", "2")  # not read again since the report: no longer tracked
    second = tracker.changes()
    tracker.close()

    # Assert
    assert first == {KEYS[0].encode()}
    assert second == set()


def test_a_server_refusing_client_tracking_is_read_in_full_every_time(seeded: redis.Redis, redis_server: Any) -> None:
    # Arrange: an ACL user who may run scripts and read keys but not CLIENT (as a locked-down deployment)
    seeded.acl_setuser("reader", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-client"])
    limited = redis.Redis(unix_socket_path=str(redis_server.socket_path), username="reader", password="pw", protocol=3)
    tracked = TrackedReplies(_SCRIPT)
    args = [""] * len(KEYS)
    try:
        first = tracked.read(limited, KEYS, args)
        seeded.config_resetstat()
        second = tracked.read(limited, KEYS, args)
        reads = _calls(seeded, "hget")
        refused = tracked._tracker.refused if tracked._tracker is not None else None
    finally:
        tracked.close()
        limited.close()
        seeded.acl_deluser("reader")

    # Assert: the same replies, every key read each time, and the refusal recorded
    assert first is not None and second == first and first[0] == b"x0:"
    assert reads == len(KEYS)
    assert refused is not None and "no permissions" in refused
