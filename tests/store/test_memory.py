"""What only the memory backend has: LRU cap, the sweep, snapshots and their restore."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

import server.store.memory as memory_module
from server.store import MemoryStore, Store, StoreError, open_store
from server.store.memory import SNAPSHOT_HEADER, Snapshot, decode_snapshot, encode_snapshot
from tests.conftest import wait_for

# -- LRU cap -----------------------------------------------------------------------------


async def test_lru_evicts_the_least_recently_used_key() -> None:
    store = MemoryStore(max_keys=3)
    await store.set("a", b"1")
    await store.set("b", b"2")
    await store.set("c", b"3")
    assert await store.get("a") == b"1"  # a is now the most recent; b the least
    await store.set("d", b"4")
    assert store.evictions == 1
    assert len(store) == 3
    assert await store.get("b") is None
    assert [await store.get(k) for k in "acd"] == [b"1", b"3", b"4"]


async def test_lru_recency_is_refreshed_by_every_kind_of_access() -> None:
    store = MemoryStore(max_keys=4)
    await store.set("s", b"1")
    await store.hset("h", {"f": b"1"})
    await store.sadd("m", b"1")
    await store.set("x", b"1")
    # Touch all but x, each by a different operation: x becomes the least recent.
    await store.set("s", b"2")  # write
    await store.hget("h", "f")  # hash read
    await store.sismember("m", b"1")  # set read
    await store.set("new", b"1")
    assert not await store.exists("x")
    await store.exists("s")
    await store.incr("cnt")  # evicts the least recent now: h
    assert not await store.exists("h")
    assert store.evictions == 2
    assert sorted(await store.scan_prefix("")) == ["cnt", "m", "new", "s"]


async def test_lru_eviction_order_over_many_keys() -> None:
    store = MemoryStore(max_keys=100)
    for i in range(100):
        await store.set(f"k{i}", b"v", ttl=60 if i % 2 else None)
    for i in range(0, 100, 3):  # refresh every third key
        await store.get(f"k{i}")
    for i in range(50):
        await store.set(f"new{i}", b"v")
    refreshed = {f"k{i}" for i in range(0, 100, 3)}
    untouched = [f"k{i}" for i in range(100) if f"k{i}" not in refreshed]
    evicted = set(untouched[:50])
    for i in range(100):
        assert await store.exists(f"k{i}") == (f"k{i}" not in evicted), i
    assert store.evictions == 50
    assert len(store._expires) == sum(1 for k in store._expires if k not in evicted)


async def test_an_uncapped_store_never_evicts() -> None:
    store = MemoryStore()
    for i in range(5000):
        await store.set(f"k{i}", b"v")
    assert len(store) == 5000
    assert store.evictions == 0


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        MemoryStore(max_keys=0)
    with pytest.raises(ValueError):
        MemoryStore(sweep_interval=0)
    with pytest.raises(ValueError):
        MemoryStore(snapshot_interval=-1)


async def test_ttls_beyond_what_redis_counts_are_refused_on_memory_too() -> None:
    store = await MemoryStore.open()
    with pytest.raises(ValueError, match="at most"):
        await store.set("k", b"v", ttl=1e16)
    await store.close()


# -- sweep -------------------------------------------------------------------------------


async def test_sweep_task_removes_expired_keys_nobody_reads() -> None:
    store = await MemoryStore.open(sweep_interval=0.05)
    try:
        for i in range(200):
            await store.set(f"t{i}", b"v", ttl=0.1)
        await store.hset("h", {"f": b"v"})
        await store.expire("h", 0.1)
        await store.set("keep", b"v")
        await store.set("later", b"v", ttl=60)
        await wait_for(lambda: len(store) == 2, timeout=5)
        assert store.expired == 201
        assert store._expires.keys() == {"later"}
        assert sum(len(b) for b in store._buckets.values()) == 1
    finally:
        await store.close()


async def test_sweep_spares_keys_whose_expiry_changed() -> None:
    now = [1000.0]
    store = MemoryStore(sweep_interval=1.0, clock=lambda: now[0])
    await store.set("persisted", b"v", ttl=2)
    await store.set("extended", b"v", ttl=2)
    await store.set("rewritten", b"v", ttl=2)
    await store.set("deleted", b"v", ttl=2)
    await store.set("expiring", b"v", ttl=2)
    await store.expire("persisted", None)
    await store.expire("extended", 100)
    await store.set("rewritten", b"w")
    await store.delete("deleted")
    now[0] += 1.5
    assert store.sweep() == 0  # nothing has expired yet
    now[0] += 2.0
    assert store.sweep() == 1
    assert sorted(await store.scan_prefix("")) == ["extended", "persisted", "rewritten"]
    now[0] += 200
    assert store.sweep() == 1
    assert sorted(await store.scan_prefix("")) == ["persisted", "rewritten"]


async def test_sweep_after_a_long_stall_looks_at_buckets_not_ticks() -> None:
    now = [0.0]
    store = MemoryStore(sweep_interval=0.001, clock=lambda: now[0])
    await store.set("a", b"v", ttl=1)
    await store.set("b", b"v", ttl=10_000)
    now[0] = 5_000.0  # five million ticks later
    assert store.sweep() == 1
    assert len(store) == 1
    now[0] = 20_000.0
    assert store.sweep() == 1
    assert len(store) == 0


async def test_a_read_never_returns_an_expired_key_before_the_sweep() -> None:
    now = [0.0]
    store = MemoryStore(sweep_interval=1000, clock=lambda: now[0])
    await store.set("k", b"v", ttl=1)
    now[0] = 1.0
    assert len(store) == 1  # not swept
    assert await store.get("k") is None
    assert len(store) == 0  # removed by the read
    assert store.expired == 1


# -- snapshots ---------------------------------------------------------------------------


async def _fill(store: MemoryStore) -> None:
    await store.set("plain", b"v")
    await store.set("bin", bytes(range(256)))
    await store.set("ttl", b"v", ttl=3600)
    await store.hset("session:1", {"user": b"42", "node": b"n1", "empty": b""})
    await store.expire("session:1", 1800)
    await store.sadd("user:42:sessions", b"1", b"2")
    await store.incr("counter", 7)


async def test_snapshot_and_restore_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "store.snap"
    store = await MemoryStore.open(path, snapshot_interval=0)
    await _fill(store)
    await store.close()
    assert path.exists()

    restored = await MemoryStore.open(path)
    try:
        assert restored.restore_error is None
        assert await restored.get("plain") == b"v"
        assert await restored.get("bin") == bytes(range(256))
        assert await restored.hgetall("session:1") == {"user": b"42", "node": b"n1", "empty": b""}
        assert await restored.smembers("user:42:sessions") == {b"1", b"2"}
        assert await restored.incr("counter") == 8
        assert await restored.ttl("plain") is None
        left = await restored.ttl("ttl")
        assert left is not None and 3590 < left <= 3600
        left = await restored.ttl("session:1")
        assert left is not None and 1790 < left <= 1800
    finally:
        await restored.close()


async def test_restore_drops_entries_that_expired_while_down(tmp_path: Path) -> None:
    path = tmp_path / "store.snap"
    store = await MemoryStore.open(path, snapshot_interval=0)
    await store.set("short", b"v", ttl=0.2)
    await store.set("long", b"v", ttl=3600)
    await store.hset("h", {"f": b"v"})
    await store.expire("h", 0.2)
    await store.set("forever", b"v")
    await store.close()
    written_at = time.time()

    await wait_for(lambda: time.time() > written_at + 0.25)
    restored = await MemoryStore.open(path)
    assert sorted(await restored.scan_prefix("")) == ["forever", "long"]
    assert len(restored) == 2  # dropped at restore, not merely hidden
    await restored.close()


async def test_expiry_is_absolute_wall_clock_time(tmp_path: Path) -> None:
    """A node down for an hour comes back with an hour less on every TTL."""
    path = tmp_path / "store.snap"
    store = await MemoryStore.open(path, snapshot_interval=0)
    await store.set("day", b"v", ttl=86_400)
    await store.set("minute", b"v", ttl=60)
    await store.close()

    later = MemoryStore(path, wall_clock=lambda: time.time() + 3600)
    await later.start()
    assert not await later.exists("minute")
    left = await later.ttl("day")
    assert left is not None and 82_700 < left <= 82_800
    await later.close()


async def test_snapshot_keeps_expired_but_unswept_keys_expired(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "store.snap"
    store = MemoryStore(path, snapshot_interval=0, sweep_interval=1000, clock=lambda: now[0])
    await store.start()
    await store.set("k", b"v", ttl=1)
    now[0] = 2.0
    await store.close()  # k is expired but still held: it must not come back immortal
    restored = await MemoryStore.open(path)
    assert not await restored.exists("k")
    await restored.close()


async def test_restore_keeps_lru_order_and_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "store.snap"
    store = await MemoryStore.open(path, max_keys=10, snapshot_interval=0)
    for i in range(10):
        await store.set(f"k{i}", b"v", ttl=60)
    await store.get("k0")
    await store.close()

    smaller = await MemoryStore.open(path, max_keys=5)
    assert smaller.evictions == 5
    assert sorted(await smaller.scan_prefix("")) == ["k0", "k6", "k7", "k8", "k9"]
    assert len(smaller._expires) == 5
    await smaller.set("new", b"v")
    assert not await smaller.exists("k6")
    await smaller.close()


async def test_periodic_snapshot_only_when_changed(tmp_path: Path) -> None:
    path = tmp_path / "store.snap"
    store = await MemoryStore.open(path, snapshot_interval=0.05)
    try:
        await store.set("k", b"v")
        await wait_for(lambda: path.exists())
        await wait_for(lambda: store.snapshots >= 1)
        written = store.snapshots
        mtime = path.stat().st_mtime_ns
        await asyncio.sleep(0.3)  # six intervals with nothing changed: nothing written
        assert store.snapshots == written
        assert path.stat().st_mtime_ns == mtime
        await store.set("k2", b"v")
        await wait_for(lambda: store.snapshots > written)
        assert decode_snapshot(path.read_bytes()).keys == ["k", "k2"]
    finally:
        await store.close()


async def test_close_waits_for_a_periodic_snapshot_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = memory_module._write_atomic
    writing = threading.Event()

    def slow_write(path: Path, blob: bytes) -> None:
        writing.set()
        time.sleep(0.3)  # a big snapshot's write and fsync
        real(path, blob)

    monkeypatch.setattr(memory_module, "_write_atomic", slow_write)
    path = tmp_path / "store.snap"
    store = await MemoryStore.open(path, snapshot_interval=0.05)
    await store.set("k", b"v1")
    while not writing.is_set():
        await asyncio.sleep(0.01)
    await store.set("k", b"v2")
    # close() waits for the periodic write under way, then writes its own: no StoreError
    # from two writes of one file at once, and the last value is the one kept.
    await store.close()
    reopened: Store = await MemoryStore.open(path)
    assert await reopened.get("k") == b"v2"
    await reopened.close()


async def test_snapshot_on_close_without_any_interval(tmp_path: Path) -> None:
    path = tmp_path / "store.snap"
    store = await MemoryStore.open(path, snapshot_interval=3600)
    await store.set("k", b"v")
    assert not path.exists()
    await store.close()
    assert path.exists()
    assert decode_snapshot(path.read_bytes()).keys == ["k"]
    # no temporary file left behind; the marker says the stop was clean
    assert sorted(os.listdir(tmp_path)) == ["store.snap", "store.snap.clean"]
    await store.close()  # twice is harmless


async def test_a_store_never_started_does_not_overwrite_the_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "store.snap"
    store = await MemoryStore.open(path, snapshot_interval=0)
    await store.set("k", b"v")
    await store.close()
    before = path.read_bytes()
    await MemoryStore(path).close()
    assert path.read_bytes() == before


async def test_snapshot_write_failure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    store = await MemoryStore.open(blocker / "store.snap", snapshot_interval=0.05)
    await store.set("k", b"v")
    with caplog.at_level(logging.WARNING, logger="tickwire.store"):
        await wait_for(lambda: store.snapshot_error is not None)
    assert "cannot write the store snapshot" in (store.snapshot_error or "")
    assert "store snapshot failed" in caplog.text
    with pytest.raises(StoreError, match="cannot write the store snapshot"):
        await store.close()


async def test_snapshot_needs_a_path() -> None:
    with pytest.raises(StoreError):
        await MemoryStore().snapshot()


# -- bad snapshots -----------------------------------------------------------------------


def _valid_snapshot() -> bytes:
    return encode_snapshot(
        Snapshot(
            version=1,
            written_at=time.time(),
            keys=["a", "h"],
            values=[b"1", {"f": b"v"}],
            expires={"a": time.time() + 3600},
        )
    )


def _with_crc(payload: bytes) -> bytes:
    return SNAPSHOT_HEADER.pack(b"TWSTORE\x01", len(payload), zlib.crc32(payload)) + payload


def _flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :]


BAD_SNAPSHOTS: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty": (lambda: b"", "truncated"),
    "short header": (lambda: _valid_snapshot()[:10], "truncated"),
    "truncated data": (lambda: _valid_snapshot()[:-7], "truncated"),
    "trailing bytes": (lambda: _valid_snapshot() + b"xx", "unexpected bytes"),
    "flipped byte": (lambda: _flip(_valid_snapshot(), SNAPSHOT_HEADER.size + 5), "CRC-32"),
    "not a snapshot": (lambda: b"hello world, this is not msgpack at all", "not a tickwire"),
    "not msgpack": (lambda: _with_crc(b"\xc1\xc1\xc1"), "corrupt"),
    "wrong shape": (lambda: _with_crc(b"\x93\x01\x02\x03"), "corrupt"),
    "future version": (
        lambda: _with_crc(
            msgspec.msgpack.encode(
                Snapshot(version=9, written_at=0.0, keys=[], values=[], expires={})
            )
        ),
        "version 9",
    ),
    "keys and values differ": (
        lambda: _with_crc(
            msgspec.msgpack.encode(
                Snapshot(version=1, written_at=0.0, keys=["a", "b"], values=[b""], expires={})
            )
        ),
        "2 keys but 1 values",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SNAPSHOTS))
async def test_bad_snapshot_is_reported_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    make, reason = BAD_SNAPSHOTS[case]
    path = tmp_path / "store.snap"
    raw = make()
    path.write_bytes(raw)
    with caplog.at_level(logging.WARNING, logger="tickwire.store"):
        store = await MemoryStore.open(path, snapshot_interval=0)
    try:
        assert store.restore_error is not None
        assert reason in store.restore_error
        assert str(path) in store.restore_error
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and reason in warnings[0].getMessage()
        assert len(store) == 0
        await store.set("k", b"v")  # and it works
        # The bad file is kept aside for a post-mortem, not overwritten by the next snapshot.
        assert (tmp_path / "store.snap.corrupt").read_bytes() == raw
    finally:
        await store.close()
    assert decode_snapshot(path.read_bytes()).keys == ["k"]


async def test_valid_snapshot_fixture_restores(tmp_path: Path) -> None:
    path = tmp_path / "store.snap"
    path.write_bytes(_valid_snapshot())
    store = await MemoryStore.open(path)
    assert store.restore_error is None
    assert await store.hgetall("h") == {"f": b"v"}
    await store.close()


async def test_missing_snapshot_is_a_first_start(tmp_path: Path) -> None:
    store = await MemoryStore.open(tmp_path / "none.snap")
    assert store.restore_error is None
    assert len(store) == 0
    await store.close()


async def test_unreadable_snapshot_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "store.snap"
    path.mkdir()  # a folder where the file should be: reading it fails
    store = await MemoryStore.open(path, snapshot_interval=0)
    assert store.restore_error is not None and "cannot read it" in store.restore_error
    store._started = False  # nothing to save, and the path cannot take a file anyway
    await store.close()


async def test_start_twice_is_refused() -> None:
    store = await MemoryStore.open()
    with pytest.raises(RuntimeError):
        await store.start()
    await store.close()


# -- scale -------------------------------------------------------------------------------


async def test_restores_100k_sessions(tmp_path: Path) -> None:
    """The session layer's worst case at its target size: a hash per session plus a
    token key with a TTL. Timing is measured by tests/store/bench_store.py, not here."""
    path = tmp_path / "store.snap"
    store = MemoryStore(path, snapshot_interval=0)
    await store.start()
    for i in range(100_000):
        await store.hset(
            f"s:{i}",
            {"u": b"%d" % i, "n": b"node-1", "c": b"conn-%d" % i, "t": b"1700000000", "d": b"{}"},
        )
        await store.set(f"t:{i:032x}", b"s:%d" % i, ttl=3600)
    await store.close()

    restored = await MemoryStore.open(path)
    assert len(restored) == 200_000
    assert await restored.hget("s:99999", "c") == b"conn-99999"
    left = await restored.ttl(f"t:{12345:032x}")
    assert left is not None and 3500 < left <= 3600
    await restored.close()


# -- factory -----------------------------------------------------------------------------


async def test_open_store_memory(tmp_path: Path) -> None:
    path = tmp_path / "s.snap"
    store = await open_store(
        "memory", snapshot_path=path, snapshot_interval=0, max_keys=2, sweep_interval=0.5
    )
    assert isinstance(store, MemoryStore)
    assert store.max_keys == 2
    assert store.sweep_interval == 0.5
    await store.set("k", b"v")
    await store.close()
    assert path.exists()


async def test_open_store_rejects_an_unknown_kind() -> None:
    with pytest.raises(ValueError):
        await open_store("sqlite")  # type: ignore[arg-type]


async def test_only_a_clean_stop_vouches_for_its_snapshot(tmp_path: Path) -> None:
    """A snapshot written at close() leaves a marker that the next start consumes, so a
    crash of that next process (no close) leaves a snapshot nobody vouches for."""
    path = tmp_path / "store.snap"
    first = await MemoryStore.open(path, snapshot_interval=0)
    await first.set("k", b"1")
    await first.close()
    second = await MemoryStore.open(path, snapshot_interval=0)
    assert second.restored_clean and await second.get("k") == b"1"
    assert not (tmp_path / "store.snap.clean").exists()  # consumed at start
    # `second` is "killed": never closed. The next start sees the same file, unvouched.
    third = await MemoryStore.open(path, snapshot_interval=0)
    assert not third.restored_clean and await third.get("k") == b"1"
    await third.close()
    await second.snapshot()  # a periodic snapshot vouches for nothing either
    fourth = await MemoryStore.open(path, snapshot_interval=0)
    assert not fourth.restored_clean
    fourth.release_snapshot()
    await fourth.close()


async def test_a_first_start_has_nothing_to_distrust(tmp_path: Path) -> None:
    store = await MemoryStore.open(tmp_path / "none.snap")
    assert store.restored_clean
    await store.close()
