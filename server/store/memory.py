"""The embedded store: the default, for one node that needs no Redis to run.

Why it is built the way it is:

- **Expiry by a timing wheel, not a scan.** Each key with a TTL is also filed in a
  bucket of width ``sweep_interval`` by its deadline. The sweep (one task) pops only the
  buckets whose whole span has passed, so its cost is proportional to what expired, not
  to the size of the store: 100,000 live sessions cost nothing per sweep. Every read
  also checks the deadline, so an expired key is never returned between sweeps.
- **Monotonic deadlines at run time, wall-clock ones on disk.** A wall-clock jump must
  not expire every session at once, so deadlines are kept on ``time.monotonic``; the
  snapshot converts them to absolute wall-clock times, because a monotonic clock means
  nothing after a restart, and the restore converts them back, dropping the ones that
  passed while the node was down.
- **LRU by an OrderedDict** (``move_to_end`` and ``popitem(last=False)`` are O(1)),
  maintained only when ``max_keys`` is set, so an uncapped store pays nothing for it.
- **Snapshots are columnar msgpack** (all keys, all values, the expiring keys' times),
  so both writing and reading are mostly C loops in msgspec and ``dict``/``zip``,
  behind a header with the payload's length and CRC-32: a truncated or damaged file is
  recognised as such, reported, and skipped rather than half-loaded.

- **An optional append-only log** (``append_only``) for what a snapshot interval would
  lose to a crash: each write appends a small msgpack record to a list on the loop, and
  a task writes and fsyncs the list every ``append_fsync`` seconds in a thread, as
  Redis' ``appendfsync everysec``. A snapshot turns the log over (generations named in
  the snapshot), so no rewrite is ever needed and no record is ever replayed twice.

Every operation is O(1) (plus the size of what it is given or returns) except
:meth:`MemoryStore.sweep`, :meth:`MemoryStore.snapshot`, the restore and
:meth:`MemoryStore.scan_prefix`. No operation awaits, so each one is atomic with respect
to the event loop, which is what makes ``compare_and_set`` atomic here.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import re
import struct
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from glob import escape as glob_escape
from pathlib import Path
from typing import Final

import msgspec

from server.store.base import (
    DEFAULT_SCAN_LIMIT,
    Batch,
    BatchResult,
    Store,
    check_fields,
    check_ttl,
    check_value,
)
from server.store.errors import StoreError, StoreTypeError

log = logging.getLogger("tickwire.store")

Value = bytes | dict[str, bytes] | set[bytes]

#: Snapshot file header: magic, payload length, CRC-32 of the payload.
SNAPSHOT_MAGIC: Final = b"TWSTORE\x01"
SNAPSHOT_HEADER: Final = struct.Struct("<8sQI")
SNAPSHOT_VERSION: Final = 1

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
#: What Redis' INCR accepts: a plain decimal integer, no sign but '-', no spaces or zeros
#: in front; Python's int() would also take " 1", "+1" and "1_0".
_DECIMAL: Final = re.compile(rb"-?[1-9][0-9]{0,18}|0")


class Snapshot(msgspec.Struct):
    """The snapshot payload (msgpack). Columnar so that encoding and restoring stay in C:
    ``keys[i]`` holds ``values[i]``; the order is least to most recently used, so a
    capped store restores its LRU order too. ``expires`` has only the keys with a TTL,
    at absolute wall-clock times (Unix seconds)."""

    version: int
    written_at: float
    keys: list[str]
    values: list[bytes | dict[str, bytes] | set[bytes]]
    expires: dict[str, float]
    #: The first append-only file generation whose operations came after this instant
    #: (0: the store logged none).
    aof_generation: int = 0


_encoder = msgspec.msgpack.Encoder()
#: Append-only log records: a u32 big-endian length, then one msgpack array.
_AOF_LENGTH: Final = struct.Struct(">I")
_aof_encode = msgspec.msgpack.Encoder().encode
_aof_decode = msgspec.msgpack.Decoder().decode
_decoder = msgspec.msgpack.Decoder(Snapshot)


def _kind(value: Value) -> str:
    if type(value) is bytes:
        return "a string"
    return "a hash" if type(value) is dict else "a set"


def _wrong_kind(op: str, key: str, value: Value) -> StoreTypeError:
    return StoreTypeError(f"{op} on key {key!r}, which holds {_kind(value)}")


def encode_snapshot(snapshot: Snapshot) -> bytes:
    """The bytes of a snapshot file: header (magic, length, CRC-32) then the payload."""
    payload = _encoder.encode(snapshot)
    return SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, len(payload), zlib.crc32(payload)) + payload


def decode_snapshot(raw: bytes) -> Snapshot:
    """Parse a snapshot file, or raise ValueError saying what is wrong with it."""
    if len(raw) < SNAPSHOT_HEADER.size:
        raise ValueError(
            f"truncated: {len(raw)} bytes, shorter than the {SNAPSHOT_HEADER.size}-byte header"
        )
    magic, length, crc = SNAPSHOT_HEADER.unpack_from(raw)
    if magic != SNAPSHOT_MAGIC:
        raise ValueError(f"not a tickwire store snapshot (starts with {raw[:8]!r})")
    payload = memoryview(raw)[SNAPSHOT_HEADER.size :]
    if len(payload) < length:
        raise ValueError(f"truncated: the header announces {length} bytes, {len(payload)} follow")
    if len(payload) > length:
        raise ValueError(f"{len(payload) - length} unexpected bytes after the snapshot")
    if zlib.crc32(payload) != crc:
        raise ValueError("corrupt: the CRC-32 of the data does not match the header")
    try:
        snapshot = _decoder.decode(payload)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ValueError(f"corrupt: {exc}") from None
    if snapshot.version != SNAPSHOT_VERSION:
        raise ValueError(f"snapshot version {snapshot.version}, this build reads only 1")
    if len(snapshot.keys) != len(snapshot.values):
        raise ValueError(f"corrupt: {len(snapshot.keys)} keys but {len(snapshot.values)} values")
    return snapshot


def _write_atomic(path: Path, blob: bytes) -> None:
    """Write through a temporary file in the same folder and rename it over `path`, so a
    crash mid-write leaves the previous snapshot whole rather than a truncated one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # The rename itself is durable only once the folder is synced; best effort.
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so a rename or an unlink in it survives a power loss; best effort."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _record(operation: tuple[object, ...]) -> bytes:
    payload = _aof_encode(operation)
    return _AOF_LENGTH.pack(len(payload)) + payload


def aof_file(path: Path, generation: int) -> Path:
    """The append-only file of one generation, beside the snapshot."""
    return path.with_name(f"{path.name}.aof.{generation}")


def _appended_files(path: Path) -> list[tuple[int, Path]]:
    prefix = path.name + ".aof."
    found = []
    for entry in path.parent.glob(glob_escape(prefix) + "*"):
        suffix = entry.name[len(prefix) :]
        if suffix.isdigit():
            found.append((int(suffix), entry))
    found.sort()
    return found


def _append(file: Path, records: list[bytes]) -> None:
    """Append the records and fsync them (and the folder, for a new file)."""
    new = not file.exists()
    with open(file, "ab") as f:
        f.write(b"".join(records))
        f.flush()
        os.fsync(f.fileno())
    if new:
        _sync_folder(file.parent)


def _remove_appended_before(path: Path, generation: int) -> None:
    for gen, file in _appended_files(path):
        if gen < generation:
            with contextlib.suppress(FileNotFoundError):
                file.unlink()


def _unlink_marker(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        clean_marker(path).unlink()


def clean_marker(path: Path) -> Path:
    """The file that says the snapshot at `path` was written by a clean stop."""
    return path.with_name(path.name + ".clean")


class MemoryBatch(Batch):
    """The memory store's batch: the store's own write code, called directly with the
    arguments checked once, at queue time. A batch through the async methods cost
    twice the five single calls it replaces (a coroutine, a closure and a second check
    per operation), and a login here is short enough for that to show. No call
    suspends, so the batch is also atomic on the event loop."""

    __slots__ = ("_calls", "_store")

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self._store = store
        self._calls: list[tuple[Callable[..., BatchResult], tuple[object, ...]]] = []

    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        self._calls.append((self._store._set, (key, value, ttl)))

    def _hset(self, key: str, fields: dict[str, bytes]) -> None:
        self._calls.append((self._store._hset, (key, fields)))

    def _expire(self, key: str, ttl: float | None) -> None:
        self._calls.append((self._store._expire, (key, ttl)))

    def _sadd(self, key: str, members: list[bytes]) -> None:
        self._calls.append((self._store._sadd, (key, members)))

    def _srem(self, key: str, members: list[bytes]) -> None:
        self._calls.append((self._store._srem, (key, members)))

    def _delete(self, keys: list[str]) -> None:
        self._calls.append((self._store._delete, (keys,)))

    async def _run(self) -> list[BatchResult]:
        results: list[BatchResult] = []
        failed: StoreError | None = None
        for call, args in self._calls:
            try:
                results.append(call(*args))
            except StoreError as exc:  # the rule of every batch: the others still run
                if failed is None:
                    failed = exc
        if failed is not None:
            raise failed
        return results


class MemoryStore(Store):
    """The in-process store. Build it with ``await MemoryStore.open(...)`` (or construct,
    then ``await start()``), which restores the snapshot and starts the sweep and
    snapshot tasks; ``close()`` stops them and writes the final snapshot.

    `path`: the snapshot file (None: nothing is persisted). `snapshot_interval`: seconds
    between snapshots, written only when something changed (0: only on close).
    `max_keys`: cap on the number of keys; a new key beyond it evicts the least recently
    used one (None: no cap). `sweep_interval`: period of the expiry sweep; an expired
    key's memory is reclaimed at most about two periods after it expires. `clock` and
    `wall_clock` exist for tests.

    Counters: ``evictions`` (keys dropped by the cap), ``expired`` (keys removed because
    their TTL passed), ``snapshots`` (files written). ``restore_error`` says why the
    snapshot found at start was not loaded (None when it was, or there was none);
    ``snapshot_error`` why the last periodic snapshot failed (None once one succeeds).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        snapshot_interval: float = 60.0,
        max_keys: int | None = None,
        sweep_interval: float = 1.0,
        append_only: bool = False,
        append_fsync: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if max_keys is not None and max_keys < 1:
            raise ValueError(f"max_keys must be at least 1 or None, not {max_keys}")
        if not sweep_interval > 0:
            raise ValueError(f"sweep_interval must be > 0, not {sweep_interval}")
        if not snapshot_interval >= 0:
            raise ValueError(f"snapshot_interval must be >= 0, not {snapshot_interval}")
        if append_only and path is None:
            raise ValueError("append_only needs a snapshot path (its log lives beside it)")
        if not append_fsync > 0:
            raise ValueError(f"append_fsync must be > 0, not {append_fsync}")
        self.path = Path(path) if path is not None else None
        self.snapshot_interval = float(snapshot_interval)
        self.max_keys = max_keys
        self.sweep_interval = float(sweep_interval)
        self.append_only = append_only
        self.append_fsync = float(append_fsync)
        self._clock = clock
        self._wall_clock = wall_clock

        self._data: OrderedDict[str, Value] = OrderedDict()
        self._expires: dict[str, float] = {}  # key -> deadline on `clock`
        self._buckets: dict[int, set[str]] = {}  # int(deadline // sweep_interval) -> keys
        self._swept = int(clock() // self.sweep_interval)  # buckets below it are empty
        self._lru = max_keys is not None

        self.evictions = 0
        self.expired = 0
        self.snapshots = 0
        self.restore_error: str | None = None
        self._restored_clean = True
        #: Records of the writes not yet in the append-only file; None: none are logged
        #: (off, not started yet, or handed over).
        self._aof: list[bytes] | None = None
        #: The append-only file generation new records go to.
        self._aof_gen = 0
        #: Why the last append-only write failed (None once one succeeds).
        self.append_error: str | None = None
        #: Records replayed from append-only files at start.
        self.replayed = 0
        self.snapshot_error: str | None = None
        self._changes = 0  # write operations so far; a snapshot is due when it moved
        self._saved_changes = 0
        self._snapshot_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryStore(path={self.path}, keys={len(self._data)})"

    def __len__(self) -> int:
        """Keys held, including expired ones the sweep has not reached yet."""
        return len(self._data)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        snapshot_interval: float = 60.0,
        max_keys: int | None = None,
        sweep_interval: float = 1.0,
        append_only: bool = False,
        append_fsync: float = 1.0,
    ) -> MemoryStore:
        """A started store, with the snapshot at `path` restored if there is one (and
        the append-only files after it replayed)."""
        store = cls(
            path,
            snapshot_interval=snapshot_interval,
            max_keys=max_keys,
            sweep_interval=sweep_interval,
            append_only=append_only,
            append_fsync=append_fsync,
        )
        await store.start()
        return store

    async def start(self) -> None:
        """Restore the snapshot (replacing the contents) and start the background tasks.

        A snapshot that cannot be read is logged at WARNING, kept aside as
        ``<path>.corrupt`` so the next snapshot does not overwrite the evidence, and
        skipped: the store starts empty rather than not at all.
        """
        if self._started:
            raise RuntimeError("MemoryStore.start() called twice")
        self._started = True
        if self.path is not None:
            await self._restore(self.path)
            await self._replay_appended(self.path)
        self._tasks.append(asyncio.create_task(self._sweep_loop(), name="store-sweep"))
        if self.path is not None and self.snapshot_interval > 0:
            self._tasks.append(asyncio.create_task(self._snapshot_loop(), name="store-snapshot"))
        if self.append_only:
            self._aof = []
            self._tasks.append(asyncio.create_task(self._append_loop(), name="store-append"))

    async def close(self) -> None:
        """Stop the tasks and write the final snapshot (when there is a path). A final
        snapshot that cannot be written raises StoreError: the caller is shutting down
        and this is its last chance to learn that the state is not saved."""
        if self._closed:
            return
        self._closed = True
        # A periodic snapshot may be writing in a worker thread: cancelling its task would
        # not stop the thread, and the final snapshot would race it on the same file.
        async with self._snapshot_lock:
            for task in self._tasks:
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        # Never started means never restored: writing now would replace a snapshot on
        # disk with an empty store.
        if self.path is not None and self._started:
            await self.snapshot(clean=True)

    @property
    def restored_clean(self) -> bool:
        """Whether the snapshot restored at start was written by a clean stop (or a
        handover) and no process has started from it since: see :meth:`_restore`."""
        return self._restored_clean

    # -- internals -------------------------------------------------------------------

    def _bucket(self, deadline: float) -> int:
        return int(deadline // self.sweep_interval)

    def _unexpire(self, key: str) -> float | None:
        deadline = self._expires.pop(key, None)
        if deadline is not None:
            bucket = self._buckets.get(self._bucket(deadline))
            if bucket is not None:
                bucket.discard(key)
        return deadline

    def _set_deadline(self, key: str, deadline: float) -> None:
        self._unexpire(key)
        self._expires[key] = deadline
        b = self._bucket(deadline)
        bucket = self._buckets.get(b)
        if bucket is None:
            self._buckets[b] = {key}
        else:
            bucket.add(key)

    def _expire_now(self, key: str) -> None:
        del self._data[key]
        self._unexpire(key)
        self.expired += 1

    def _live(self, key: str) -> Value | None:
        """The key's value unless absent or expired (an expired one is removed here);
        refreshes its recency when the store is capped."""
        value = self._data.get(key)
        if value is None:
            return None
        deadline = self._expires.get(key)
        if deadline is not None and deadline <= self._clock():
            self._expire_now(key)
            return None
        if self._lru:
            self._data.move_to_end(key)
        return value

    def _put(self, key: str, value: Value) -> None:
        """Store a value under a key, making room first if it is a new key in a full
        store. The key's expiry is left alone."""
        data = self._data
        if key in data:
            data[key] = value
            if self._lru:
                data.move_to_end(key)
            return
        if self.max_keys is not None:
            while len(data) >= self.max_keys:
                old, _ = data.popitem(last=False)
                self._unexpire(old)
                self.evictions += 1
        data[key] = value

    # -- strings ---------------------------------------------------------------------

    def batch(self) -> Batch:
        """The writes run directly, without a coroutine each (see MemoryBatch)."""
        return MemoryBatch(self)

    async def get(self, key: str) -> bytes | None:
        value = self._live(key)
        if value is None:
            return None
        if type(value) is not bytes:
            raise _wrong_kind("get", key, value)
        return value

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, nx: bool = False
    ) -> bool:
        value = check_value(value)
        if ttl is not None:
            ttl = check_ttl(ttl)
        if nx and self._live(key) is not None:
            return False
        return self._set(key, value, ttl)

    def _set(self, key: str, value: bytes, ttl: float | None) -> bool:
        self._write(key, value, ttl)
        return True

    def _write(self, key: str, value: bytes, ttl: float | None) -> None:
        self._put(key, value)
        if ttl is None:
            if key in self._expires:
                self._unexpire(key)
        else:
            self._set_deadline(key, self._clock() + ttl)
        self._changes += 1
        if self._aof is not None:
            at = None if ttl is None else self._wall_clock() + ttl
            self._aof.append(_record(("s", key, value, at)))

    async def incr(self, key: str, amount: int = 1) -> int:
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise TypeError(f"amount must be an int, not {type(amount).__name__}")
        if not _INT64_MIN <= amount <= _INT64_MAX:
            raise ValueError(f"amount {amount} does not fit 64 bits")
        current = self._live(key)
        if current is None:
            number = amount
        elif type(current) is not bytes:
            raise _wrong_kind("incr", key, current)
        elif _DECIMAL.fullmatch(current) is None or not (
            _INT64_MIN <= (number := int(current)) <= _INT64_MAX
        ):
            raise StoreTypeError(f"incr on key {key!r}: its value is not a 64-bit integer")
        else:
            number += amount
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise StoreError(f"incr on key {key!r}: the result would overflow 64 bits")
        value = b"%d" % number
        self._put(key, value)
        self._changes += 1
        if self._aof is not None:
            self._aof.append(_record(("v", key, value)))
        return number

    async def compare_and_set(
        self, key: str, expected: bytes | None, value: bytes, *, ttl: float | None = None
    ) -> bool:
        value = check_value(value)
        if expected is not None:
            expected = check_value(expected, "expected")
        if ttl is not None:
            ttl = check_ttl(ttl)
        current = self._live(key)
        if current is not None and type(current) is not bytes:
            raise _wrong_kind("compare_and_set", key, current)
        if current != expected:
            return False
        self._write(key, value, ttl)
        return True

    # -- any key ---------------------------------------------------------------------

    async def delete(self, *keys: str) -> int:
        return self._delete(keys)

    def _delete(self, keys: Sequence[str]) -> int:
        removed = 0
        now = self._clock()
        for key in keys:
            if self._data.pop(key, None) is None:
                continue
            deadline = self._unexpire(key)
            if deadline is not None and deadline <= now:
                self.expired += 1  # it was gone already; Redis would not count it either
            else:
                removed += 1
        if removed:
            self._changes += 1
            if self._aof is not None:
                self._aof.append(_record(("d", list(keys))))
        return removed

    async def exists(self, key: str) -> bool:
        return self._live(key) is not None

    async def expire(self, key: str, ttl: float | None) -> bool:
        return self._expire(key, None if ttl is None else check_ttl(ttl))

    def _expire(self, key: str, ttl: float | None) -> bool:
        if self._live(key) is None:
            return False
        if ttl is None:
            self._unexpire(key)
        else:
            self._set_deadline(key, self._clock() + ttl)
        self._changes += 1
        if self._aof is not None:
            at = None if ttl is None else self._wall_clock() + ttl
            self._aof.append(_record(("e", key, at)))
        return True

    async def ttl(self, key: str) -> float | None:
        if self._live(key) is None:
            return None
        deadline = self._expires.get(key)
        if deadline is None:
            return None
        return max(deadline - self._clock(), 0.0)

    async def scan_prefix(self, prefix: str, *, limit: int = DEFAULT_SCAN_LIMIT) -> list[str]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        now = self._clock()
        expires = self._expires
        found: list[str] = []
        for key in self._data:
            if key.startswith(prefix):
                deadline = expires.get(key)
                if deadline is None or deadline > now:
                    found.append(key)
                    if len(found) >= limit:
                        break
        return found

    # -- hashes ----------------------------------------------------------------------

    async def hset(self, key: str, mapping: dict[str, bytes]) -> int:
        return self._hset(key, check_fields(mapping))

    def _hset(self, key: str, fields: dict[str, bytes]) -> int:
        if not fields:
            return 0
        current = self._live(key)
        if current is None:
            self._put(key, fields)
            new = len(fields)
        elif type(current) is not dict:
            raise _wrong_kind("hset", key, current)
        else:
            new = sum(1 for field in fields if field not in current)
            current.update(fields)
        self._changes += 1
        if self._aof is not None:
            self._aof.append(_record(("h", key, fields)))
        return new

    async def hget(self, key: str, field: str) -> bytes | None:
        current = self._live(key)
        if current is None:
            return None
        if type(current) is not dict:
            raise _wrong_kind("hget", key, current)
        return current.get(field)

    async def hgetall(self, key: str) -> dict[str, bytes]:
        current = self._live(key)
        if current is None:
            return {}
        if type(current) is not dict:
            raise _wrong_kind("hgetall", key, current)
        return dict(current)

    async def hdel(self, key: str, *fields: str) -> int:
        return self._hdel(key, fields)

    def _hdel(self, key: str, fields: Sequence[str]) -> int:
        if not fields:
            return 0
        current = self._live(key)
        if current is None:
            return 0
        if type(current) is not dict:
            raise _wrong_kind("hdel", key, current)
        removed = 0
        for field in fields:
            if current.pop(field, None) is not None:
                removed += 1
        if not current:
            del self._data[key]
            self._unexpire(key)
        if removed:
            self._changes += 1
            if self._aof is not None:
                self._aof.append(_record(("x", key, list(fields))))
        return removed

    # -- sets ------------------------------------------------------------------------

    async def sadd(self, key: str, *members: bytes) -> int:
        return self._sadd(key, [check_value(m, "member") for m in members])

    def _sadd(self, key: str, members: list[bytes]) -> int:
        if not members:
            return 0
        new_members = set(members)
        current = self._live(key)
        if current is None:
            self._put(key, new_members)
            added = len(new_members)
        elif type(current) is not set:
            raise _wrong_kind("sadd", key, current)
        else:
            before = len(current)
            current |= new_members
            added = len(current) - before
        self._changes += 1
        if self._aof is not None:
            self._aof.append(_record(("a", key, list(members))))
        return added

    async def srem(self, key: str, *members: bytes) -> int:
        return self._srem(key, [check_value(m, "member") for m in members])

    def _srem(self, key: str, gone: list[bytes]) -> int:
        if not gone:
            return 0
        current = self._live(key)
        if current is None:
            return 0
        if type(current) is not set:
            raise _wrong_kind("srem", key, current)
        before = len(current)
        current.difference_update(gone)
        removed = before - len(current)
        if not current:
            del self._data[key]
            self._unexpire(key)
        if removed:
            self._changes += 1
            if self._aof is not None:
                self._aof.append(_record(("r", key, list(gone))))
        return removed

    async def smembers(self, key: str) -> builtins.set[bytes]:
        current = self._live(key)
        if current is None:
            return set()
        if type(current) is not set:
            raise _wrong_kind("smembers", key, current)
        return set(current)

    async def sismember(self, key: str, member: bytes) -> bool:
        member = check_value(member, "member")
        current = self._live(key)
        if current is None:
            return False
        if type(current) is not set:
            raise _wrong_kind("sismember", key, current)
        return member in current

    # -- expiry ----------------------------------------------------------------------

    def sweep(self) -> int:
        """Remove the keys whose bucket has wholly passed; returns how many. The sweep
        task calls it every `sweep_interval`; keys that expired within the current
        bucket wait for the next sweep (reads never return them meanwhile)."""
        upto = int(self._clock() // self.sweep_interval)
        if upto <= self._swept:
            return 0
        buckets = self._buckets
        if upto - self._swept <= len(buckets):
            due = [b for b in range(self._swept, upto) if b in buckets]
        else:  # the loop stalled or the sweep is called rarely: look at the buckets instead
            due = [b for b in buckets if b < upto]
        self._swept = upto
        removed = 0
        data, expires = self._data, self._expires
        for b in due:
            for key in buckets.pop(b):
                # Filed by its deadline, so every key in a passed bucket has expired.
                del expires[key]
                del data[key]
                removed += 1
        self.expired += removed
        return removed

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                self.sweep()
            except Exception:  # a bug here must not end expiry for good
                log.exception("store sweep failed")

    # -- snapshots -------------------------------------------------------------------

    def _snapshot_bytes(self, aof_generation: int = 0) -> bytes:
        wall_now = self._wall_clock()
        offset = wall_now - self._clock()
        return encode_snapshot(
            Snapshot(
                version=SNAPSHOT_VERSION,
                written_at=wall_now,
                keys=list(self._data),
                values=list(self._data.values()),
                # Expired-but-unswept keys keep their (past) time, so the restore drops
                # them rather than bringing them back without an expiry.
                expires={k: d + offset for k, d in self._expires.items()},
                aof_generation=aof_generation,
            )
        )

    async def snapshot(self, *, clean: bool = False) -> None:
        """Write the snapshot now. The contents are encoded on the loop, in one go, so
        the file is one consistent instant; the write and fsync run in a thread. Raises
        StoreError when it cannot be written (the previous file is then left whole).

        `clean`: this process writes nothing more after it (a stop, a handover), so the
        next start may trust what the file says was saved cleanly; a marker file
        ``<path>.clean`` says so (see :meth:`_restore`)."""
        if self.path is None:
            raise StoreError("this MemoryStore has no snapshot path")
        path = self.path
        async with self._snapshot_lock:
            changes = self._changes
            # The append-only log turns over at the same instant: what was logged before
            # goes into the old generation's file, the snapshot names the new one, and
            # the files before it are deleted once the snapshot is on disk.
            pending = self._aof
            old_gen = self._aof_gen
            self._aof_gen += 1
            if pending is not None:
                self._aof = []
            blob = self._snapshot_bytes(self._aof_gen)
            try:
                if not clean:
                    # First: the file about to replace the vouched one is not vouched for.
                    await asyncio.to_thread(_unlink_marker, path)
                if pending:
                    await asyncio.to_thread(_append, aof_file(path, old_gen), pending)
                await asyncio.to_thread(_write_atomic, path, blob)
                await asyncio.to_thread(_remove_appended_before, path, self._aof_gen)
                if clean:
                    await asyncio.to_thread(_write_atomic, clean_marker(path), b"")
            except OSError as exc:
                raise StoreError(
                    f"cannot write the store snapshot {path}: {exc.strerror or exc}"
                ) from None
            self._saved_changes = max(self._saved_changes, changes)
            self.snapshots += 1
        log.debug("store snapshot written", extra={"path": str(path), "bytes": len(blob)})

    def release_snapshot(self) -> None:
        """Write the snapshot file no more (periodically or at close): another process
        owns it now. A zero-downtime restart calls this once the successor, which
        restored from the file, serves; the old process's last changes must not then
        overwrite the successor's snapshots. The append-only log stops too: the
        successor starts its own."""
        self.path = None
        self._aof = None

    async def flush_appended(self) -> None:
        """Write and fsync the writes logged since the last flush (the append task does
        this every `append_fsync` seconds)."""
        path = self.path
        if not self._aof or path is None:
            return
        async with self._snapshot_lock:
            pending = self._aof
            if not pending or self.path is None:
                return
            self._aof = []
            try:
                await asyncio.to_thread(_append, aof_file(path, self._aof_gen), pending)
            except OSError as exc:
                reason = f"cannot append to {aof_file(path, self._aof_gen)}: {exc.strerror or exc}"
                if self.append_error is None:
                    log.warning("store writes not logged: %s", reason)
                self.append_error = reason
            else:
                if self.append_error is not None:
                    log.info("store append-only log written again")
                self.append_error = None

    async def _append_loop(self) -> None:
        while True:
            await asyncio.sleep(self.append_fsync)
            if self.path is None:
                return
            try:
                await self.flush_appended()
            except Exception:  # a bug here must not end the log for good
                log.exception("store append failed")

    async def _replay_appended(self, path: Path) -> None:
        """Apply the append-only files the restored snapshot has not seen, in order:
        what happened after it, up to the last fsync. New records go to a generation
        above every file found, so a torn record at the end of one is never followed by
        good ones in the same file."""
        found = await asyncio.to_thread(_appended_files, path)
        if not found:
            return
        start = self._aof_gen
        applied = 0
        for gen, file in found:
            if gen < start:
                continue
            raw = await asyncio.to_thread(file.read_bytes)
            count, problem = self._replay(raw)
            applied += count
            if problem is not None:
                log.warning(
                    "store append-only file %s: %s; replayed what came before", file, problem
                )
        self._aof_gen = max(start, found[-1][0] + 1)
        self.replayed = applied
        if applied:
            # A clean close leaves no log behind: these are a running process's last
            # writes, so nothing restored is vouched for (see _restore).
            self._restored_clean = False
        if applied:
            log.info(
                "store append-only log replayed", extra={"path": str(path), "records": applied}
            )

    def _replay(self, raw: bytes) -> tuple[int, str | None]:
        """Apply the records of one file; returns how many, and what stopped it early."""
        view = memoryview(raw)
        at = 0
        count = 0
        size = _AOF_LENGTH.size
        while at < len(raw):
            if at + size > len(raw):
                return count, f"a torn record at byte {at}"
            (length,) = _AOF_LENGTH.unpack_from(raw, at)
            if at + size + length > len(raw):
                return count, f"a torn record at byte {at}"
            try:
                record = _aof_decode(view[at + size : at + size + length])
                self._apply(record)
            except (msgspec.DecodeError, ValueError, TypeError, IndexError, StoreError) as exc:
                return count, f"an unreadable record at byte {at} ({exc})"
            at += size + length
            count += 1
        return count, None

    def _apply(self, record: list[object]) -> None:
        """One logged write, again. Times are wall-clock: a deadline that passed while
        the node was down removes the key, as the snapshot's restore drops it."""
        op, key = record[0], record[1]
        wall_now = self._wall_clock()
        if op == "s":
            value, at = record[2], record[3]
            if at is not None and at <= wall_now:  # type: ignore[operator]
                self._delete([key])  # type: ignore[list-item]
            else:
                ttl = None if at is None else at - wall_now  # type: ignore[operator]
                self._write(key, value, ttl)  # type: ignore[arg-type]
        elif op == "v":
            self._put(key, record[2])  # type: ignore[arg-type]
        elif op == "h":
            self._hset(key, record[2])  # type: ignore[arg-type]
        elif op == "x":
            self._hdel(key, record[2])  # type: ignore[arg-type]
        elif op == "a":
            self._sadd(key, record[2])  # type: ignore[arg-type]
        elif op == "r":
            self._srem(key, record[2])  # type: ignore[arg-type]
        elif op == "d":
            self._delete(key)  # type: ignore[arg-type]
        elif op == "e":
            at = record[2]
            if at is not None and at <= wall_now:  # type: ignore[operator]
                self._delete([key])  # type: ignore[list-item]
            else:
                self._expire(key, None if at is None else at - wall_now)  # type: ignore[arg-type,operator]
        else:
            raise ValueError(f"unknown operation {op!r}")

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(self.snapshot_interval)
            if self.path is None:
                return
            if self._changes == self._saved_changes:
                continue
            try:
                await self.snapshot()
            except StoreError as exc:
                self.snapshot_error = str(exc)
                log.warning("store snapshot failed: %s", exc)
            except Exception:
                log.exception("store snapshot failed")
            else:
                self.snapshot_error = None

    async def _restore(self, path: Path) -> None:
        """Load the snapshot at `path`. The clean marker beside it is consumed here: if
        this process is killed, the next start finds the same snapshot without it, and
        knows that whatever this process did after the snapshot is lost."""
        marker = clean_marker(path)
        try:
            marker.unlink()
        except FileNotFoundError:
            self._restored_clean = False
        except OSError as exc:
            self._restored_clean = False
            log.warning("cannot remove the clean marker %s: %s", marker, exc.strerror or exc)
        else:
            _sync_folder(path.parent)
        try:
            raw = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            self._restored_clean = True  # a first start: nothing to distrust
            return
        except OSError as exc:
            self._restore_failed(path, f"cannot read it: {exc.strerror or exc}", move=False)
            return
        try:
            snapshot = decode_snapshot(raw)
        except ValueError as exc:
            self._restore_failed(path, str(exc), move=True)
            return
        kept, dropped = self.load(snapshot)
        log.info(
            "store snapshot restored",
            extra={"path": str(path), "keys": kept, "expired": dropped},
        )

    def _restore_failed(self, path: Path, reason: str, *, move: bool) -> None:
        if move:
            aside = path.with_name(path.name + ".corrupt")
            try:
                os.replace(path, aside)
            except OSError:
                pass
            else:
                reason = f"{reason} (kept as {aside.name})"
        self.restore_error = f"snapshot {path} skipped: {reason}"
        log.warning("store starts empty: %s", self.restore_error)

    def load(self, snapshot: Snapshot) -> tuple[int, int]:
        """Replace the contents with a decoded snapshot; returns (keys kept, keys dropped
        because their expiry passed). Expiry times move from the wall clock back to the
        monotonic one."""
        data: OrderedDict[str, Value] = OrderedDict(
            zip(snapshot.keys, snapshot.values, strict=True)
        )
        self._aof_gen = snapshot.aof_generation
        self._data = data
        self._expires = {}
        self._buckets = {}
        wall_now = self._wall_clock()
        mono_now = self._clock()
        self._swept = int(mono_now // self.sweep_interval)
        offset = mono_now - wall_now
        dropped = 0
        expires, buckets, width = self._expires, self._buckets, self.sweep_interval
        for key, at in snapshot.expires.items():
            if key not in data:
                continue
            if at <= wall_now:
                del data[key]
                dropped += 1
                continue
            deadline = at + offset
            expires[key] = deadline
            b = int(deadline // width)
            bucket = buckets.get(b)
            if bucket is None:
                buckets[b] = {key}
            else:
                bucket.add(key)
        if self.max_keys is not None:
            while len(data) > self.max_keys:
                old, _ = data.popitem(last=False)
                self._unexpire(old)
                self.evictions += 1
        return len(data), dropped
