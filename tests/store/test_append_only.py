"""The memory store's append-only log: every kind of write comes back after a crash (a
store never closed), across a snapshot's turnover, past a torn last record, and keys
whose TTL ran out while the node was down stay gone."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from server.store import MemoryStore, StoreError, open_store
from server.store.memory import aof_file


def contents(store: MemoryStore) -> tuple[dict[str, object], set[str]]:
    """What the store holds: every key's value, and which keys have a TTL."""
    return dict(store._data), set(store._expires)


async def write_everything(store: MemoryStore) -> None:
    await store.set("plain", b"1")
    await store.set("short", b"x", ttl=3600)
    await store.set("gone", b"x")
    await store.delete("gone")
    assert await store.incr("count", 5) == 5
    await store.incr("count")
    await store.hset("h", {"a": b"1", "b": b"2"})
    await store.hdel("h", "a")
    await store.sadd("s", b"m1", b"m2", b"m3")
    await store.srem("s", b"m2")
    await store.set("later", b"y")
    await store.expire("later", 7200)
    await store.expire("short", None)
    assert await store.compare_and_set("cas", None, b"v", ttl=100)
    batch = store.batch()
    batch.set("b1", b"1", ttl=50)
    batch.sadd("bs", b"x")
    batch.delete("plain")
    await batch.run()


async def test_every_write_comes_back_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "store.snap"
    first = await MemoryStore.open(path, snapshot_interval=0, append_only=True)
    await write_everything(first)
    await first.flush_appended()
    expected = contents(first)
    # `first` is killed: never closed, no final snapshot.
    second = await MemoryStore.open(path, snapshot_interval=0, append_only=True)
    try:
        assert contents(second) == expected
        assert second.replayed > 0 and not second.restored_clean
        ttl = await second.ttl("later")
        assert ttl is not None and 7000 < ttl <= 7200  # the deadline, not a new TTL
    finally:
        second.release_snapshot()
        await second.close()


async def test_a_snapshot_turns_the_log_over(tmp_path: Path) -> None:
    path = tmp_path / "store.snap"
    first = await MemoryStore.open(path, snapshot_interval=0, append_only=True)
    await first.set("before", b"1")
    await first.incr("n")
    await first.flush_appended()
    await first.snapshot()
    # The snapshot holds what the old file had; the old file is gone.
    assert [p.name for p in tmp_path.glob("store.snap.aof.*")] == []
    await first.incr("n")
    await first.set("after", b"2")
    await first.flush_appended()
    assert aof_file(path, 1).exists()
    second = await MemoryStore.open(path, snapshot_interval=0, append_only=True)
    try:
        assert await second.get("before") == b"1" and await second.get("after") == b"2"
        assert await second.get("n") == b"2"  # incremented once by the log, not twice
        assert second.replayed == 2
    finally:
        second.release_snapshot()
        await second.close()


async def test_a_torn_last_record_is_reported_and_what_came_before_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store.snap"
    first = await MemoryStore.open(path, snapshot_interval=0, append_only=True)
    await first.set("a", b"1")
    await first.set("b", b"2")
    await first.flush_appended()
    file = aof_file(path, 0)
    raw = file.read_bytes()
    file.write_bytes(raw[:-3])  # the crash tore the last record
    caplog.set_level(logging.WARNING, logger="tickwire.store")
    second = await MemoryStore.open(path, snapshot_interval=0, append_only=True)
    assert await second.get("a") == b"1" and await second.get("b") is None
    assert any("torn record" in r.getMessage() for r in caplog.records)
    # New writes go to a new file, never after the torn record.
    await second.set("c", b"3")
    await second.flush_appended()
    assert aof_file(path, 1).exists()
    third = await MemoryStore.open(path, snapshot_interval=0, append_only=True)
    try:
        assert await third.get("a") == b"1" and await third.get("c") == b"3"
    finally:
        third.release_snapshot()
        await third.close()


async def test_a_ttl_that_ran_out_while_down_stays_gone(tmp_path: Path) -> None:
    path = tmp_path / "store.snap"
    now = [1_000_000.0]
    first = MemoryStore(path, snapshot_interval=0, append_only=True, wall_clock=lambda: now[0])
    await first.start()
    await first.set("brief", b"1", ttl=10)
    await first.set("long", b"1", ttl=1000)
    await first.set("later", b"1")
    await first.expire("later", 10)
    await first.flush_appended()
    now[0] += 100  # the node was down 100 s
    second = MemoryStore(path, snapshot_interval=0, append_only=True, wall_clock=lambda: now[0])
    await second.start()
    try:
        assert await second.get("brief") is None and await second.get("later") is None
        assert await second.get("long") == b"1"
    finally:
        second.release_snapshot()
        await second.close()


async def test_without_it_nothing_is_logged(tmp_path: Path) -> None:
    path = tmp_path / "store.snap"
    store = await MemoryStore.open(path, snapshot_interval=0)
    await store.set("a", b"1")
    await store.flush_appended()
    assert list(tmp_path.glob("*.aof.*")) == []
    await store.close()


async def test_a_clean_close_leaves_no_log_behind(tmp_path: Path) -> None:
    path = tmp_path / "store.snap"
    store = await MemoryStore.open(path, snapshot_interval=0, append_only=True)
    await store.set("a", b"1")
    await store.close()
    assert list(tmp_path.glob("*.aof.*")) == []
    again = await MemoryStore.open(path, snapshot_interval=0, append_only=True)
    assert await again.get("a") == b"1" and again.replayed == 0
    await again.close()


async def test_it_needs_a_snapshot_path() -> None:
    with pytest.raises(StoreError, match="snapshot path"):
        await open_store("memory", append_only=True)
