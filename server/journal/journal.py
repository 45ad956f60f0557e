"""The journal: appends acknowledged only once on disk, written in groups.

Why it is built the way it is:

- **Group commit.** An fsync costs the same for one record as for a thousand, so appends
  are not synced one by one: every append joins the open batch, and one task writes and
  syncs batches one at a time. While a batch's fsync is in flight, new appends gather in
  the next batch, so under load each fsync covers as many appends as arrived during the
  previous one, and an idle journal still syncs a lone append at once (no timer).
- **One dedicated writer thread.** write() and fdatasync() block, so they run in a
  single-thread executor owned by the journal: the loop keeps serving while the disk
  works, the open segment has exactly one user (no lock), and a slow snapshot, written
  on a second thread, never holds back an fsync.
- **Bounded.** Bytes appended and not yet acknowledged are capped (`max_pending`); an
  append over the cap waits, first come first served, so a disk slower than the
  producers pushes back instead of growing memory.
- **Acknowledged means synced.** An append returns after its batch's fdatasync; kill -9
  then loses only appends whose await had not returned. A failed write or fsync fails
  the journal for good (JournalFailed), since the kernel may already have dropped the
  pages it could not write.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, NamedTuple, Self

from server.journal.errors import JournalClosed, JournalCorrupt, JournalError, JournalFailed
from server.journal.files import (
    SegmentWriter,
    lock,
    segment_path,
    snapshot_path,
    sync_directory,
    write_atomic,
)
from server.journal.format import (
    MAX_BODY,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    decode_snapshot,
    encode_snapshot,
    iter_records,
)
from server.journal.recovery import Recovered, Segment, recover
from server.journal.stats import JournalStats

DEFAULT_SEGMENT_SIZE: Final = 64 << 20
DEFAULT_MAX_RECORD: Final = 4 << 20
DEFAULT_MAX_PENDING: Final = 16 << 20


class Replay(NamedTuple):
    """What a journal held when it was opened."""

    #: The state the latest snapshot recorded, or None without a snapshot.
    snapshot: bytes | None
    #: The last seq that state covers (0 without a snapshot).
    snapshot_seq: int
    #: (seq, body) of every record after the snapshot, in order; read as iterated.
    records: Iterator[tuple[int, bytes]]


class _Batch:
    """Appends written by one write() and covered by one fsync; they share one future."""

    __slots__ = ("bodies", "first_seq", "future", "size")

    def __init__(self, first_seq: int, future: asyncio.Future[None]) -> None:
        self.first_seq = first_seq
        self.future = future
        self.bodies: list[bytes] = []
        self.size = 0


class Journal:
    """An append-only, fsynced log of opaque records with snapshots. Open it with
    `await Journal.open(directory)`; one open journal per directory (JournalLocked)."""

    def __init__(
        self,
        directory: Path,
        recovered: Recovered,
        writer: SegmentWriter,
        segments: list[Segment],
        lock_fd: int,
        writer_thread: ThreadPoolExecutor,
        *,
        max_record: int,
        max_pending: int,
        fsync: bool,
        sync: Literal["batch", "always"],
    ) -> None:
        self.directory = directory
        self.max_record = max_record
        self.max_pending = max_pending
        self.fsync = fsync
        self.sync = sync
        #: Bytes cut off a torn tail when opening.
        self.truncated = recovered.truncated
        self._recovered = recovered
        self._writer = writer
        self._segments = segments
        self._lock_fd = lock_fd
        self._writer_thread = writer_thread
        self._side_thread = ThreadPoolExecutor(1, thread_name_prefix="journal-snapshot")
        self._loop = asyncio.get_running_loop()
        self._next_seq = max(recovered.last_seq, recovered.snapshot_seq) + 1
        self._durable_seq = self._next_seq - 1
        self._snapshot_seq = recovered.snapshot_seq
        self._snapshot_file = recovered.snapshot
        self._stats = JournalStats()
        self._queue: deque[_Batch] = deque()
        self._open_batch: _Batch | None = None
        self._inflight: _Batch | None = None
        self._pending = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._wake = asyncio.Event()
        self._snapshot_lock = asyncio.Lock()
        self._closing = False
        self._closed = False
        self._failure: BaseException | None = None
        self._touched = False
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"journal {directory}")

    @classmethod
    async def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        max_record: int = DEFAULT_MAX_RECORD,
        max_pending: int = DEFAULT_MAX_PENDING,
        fsync: bool = True,
        sync: Literal["batch", "always"] = "batch",
    ) -> Journal:
        """Open (creating it if need be) the journal in `directory`, verify it and cut a
        torn tail. `fsync=False` writes without syncing: an append then survives kill -9
        (the page cache keeps it) but not a power cut. `sync="always"` gives every append
        its own fsync, which only measures what group commit saves."""
        if segment_size <= SEGMENT_HEADER_SIZE:
            raise ValueError(f"segment_size must be over {SEGMENT_HEADER_SIZE}")
        if not 0 <= max_record <= MAX_BODY:
            raise ValueError(f"max_record must be 0..{MAX_BODY}")
        if max_pending < max_record + RECORD_HEADER_SIZE:
            raise ValueError("max_pending must hold at least one record of max_record bytes")
        if sync not in ("batch", "always"):
            raise ValueError(f"sync must be 'batch' or 'always', not {sync!r}")
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        thread = ThreadPoolExecutor(1, thread_name_prefix="journal-write")
        try:
            lock_fd = await loop.run_in_executor(thread, lock, path)
            try:
                recovered = await loop.run_in_executor(thread, recover, path, fsync)
                writer, segments = await loop.run_in_executor(
                    thread, _open_writer, path, recovered, segment_size, fsync
                )
            except BaseException:
                os.close(lock_fd)
                raise
        except BaseException:
            thread.shutdown(wait=False)
            raise
        return cls(
            path,
            recovered,
            writer,
            segments,
            lock_fd,
            thread,
            max_record=max_record,
            max_pending=max_pending,
            fsync=fsync,
            sync=sync,
        )

    @property
    def last_seq(self) -> int:
        """The seq of the latest append, acknowledged or not."""
        return self._next_seq - 1

    @property
    def durable_seq(self) -> int:
        """The seq up to which every append is acknowledged."""
        return self._durable_seq

    @property
    def snapshot_seq(self) -> int:
        return self._snapshot_seq

    @property
    def stats(self) -> JournalStats:
        """A copy of the counters, taken now."""
        return replace(
            self._stats, batch_sizes=dict(self._stats.batch_sizes), pending_bytes=self._pending
        )

    async def append(self, body: bytes) -> int:
        """Append one record; return its seq once it is written and synced.

        Cancelling the await does not take the record back: it may still be written, and
        then replayed, like any append whose await had not returned at a crash.
        """
        self._check_usable()
        if len(body) > self.max_record:
            raise ValueError(f"record of {len(body)} bytes is over max_record {self.max_record}")
        self._touched = True
        size = len(body) + RECORD_HEADER_SIZE
        if self._waiters or (self._pending and self._pending + size > self.max_pending):
            await self._wait_for_room(size)
            self._check_usable()
        else:
            self._pending += size
        seq = self._next_seq
        self._next_seq = seq + 1
        batch = self._open_batch
        if batch is None:
            batch = _Batch(seq, self._loop.create_future())
            self._queue.append(batch)
            if self.sync == "batch":
                self._open_batch = batch
            self._wake.set()
        batch.bodies.append(body)
        batch.size += size
        await asyncio.shield(batch.future)
        return seq

    async def flush(self) -> None:
        """Wait until every append made so far is acknowledged."""
        target = self._queue[-1] if self._queue else self._inflight
        if target is not None:
            await asyncio.shield(target.future)
        if self._failure is not None:
            raise self._failed()

    async def snapshot(self, state: bytes, seq: int | None = None) -> int:
        """Record `state` as covering every record up to `seq` (by default the latest
        append) and remove the segments it makes unnecessary; returns the covered seq.

        The records up to `seq` are synced first, so a snapshot never covers a record the
        journal could lose: replay after it starts right at seq + 1.
        """
        self._check_usable()
        covered = self.last_seq if seq is None else seq
        if not self._snapshot_seq <= covered <= self.last_seq:
            raise ValueError(
                f"a snapshot must cover a seq in {self._snapshot_seq}..{self.last_seq}, "
                f"not {covered}"
            )
        self._touched = True
        async with self._snapshot_lock:
            await self.flush()
            if covered < self._snapshot_seq:
                raise ValueError(f"a later snapshot (seq {self._snapshot_seq}) was taken")
            new = snapshot_path(self.directory, covered)
            try:
                await self._loop.run_in_executor(
                    self._side_thread, _write_snapshot, new, covered, state, self.fsync
                )
            except OSError as exc:
                raise JournalError(f"snapshot {new} could not be written: {exc}") from exc
            stale = [self._snapshot_file] if self._snapshot_file not in (None, new) else []
            self._snapshot_seq, self._snapshot_file = covered, new
            # Never the open segment: the writer thread holds it.
            keep = 0
            while (
                keep + 1 < len(self._segments) and self._segments[keep + 1].first_seq <= covered + 1
            ):
                stale.append(self._segments[keep].path)
                keep += 1
            del self._segments[:keep]
            await self._loop.run_in_executor(
                self._side_thread, _remove, [p for p in stale if p is not None], self.fsync
            )
        return covered

    def replay(self) -> Replay:
        """The snapshot and the records after it, as the journal was when opened. Reads
        files as it goes, blocking: it belongs to start-up, before the first append."""
        if self._touched:
            raise JournalError("replay reads the journal as opened: call it before appending")
        state = None
        if self._snapshot_file is not None:
            try:
                _, state = decode_snapshot(self._snapshot_file.read_bytes())
            except ValueError as exc:
                raise JournalCorrupt(self._snapshot_file, 0, str(exc)) from None
        return Replay(state, self._snapshot_seq, self._records(list(self._segments)))

    def _records(self, segments: list[Segment]) -> Iterator[tuple[int, bytes]]:
        last = self._recovered.last_seq
        due = self._recovered.snapshot_seq + 1
        for index, segment in enumerate(segments):
            if due > last:
                return
            data = segment.path.read_bytes()
            for record in iter_records(data, segment.first_seq):
                if record.seq > last:
                    return
                if record.seq >= due:
                    yield record.seq, record.body
                    due = record.seq + 1
            following = segments[index + 1].first_seq if index + 1 < len(segments) else last + 1
            if due < following:
                raise JournalCorrupt(segment.path, 0, f"seq {due} is gone since the journal opened")

    async def close(self) -> None:
        """Write and sync every pending append, then release the directory."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        with contextlib.suppress(JournalError):
            await self.flush()
        with contextlib.suppress(BaseException):
            await self._flusher
        async with self._snapshot_lock:
            self._closed = True
        try:
            await self._loop.run_in_executor(self._writer_thread, self._writer.close)
        finally:
            self._writer_thread.shutdown(wait=False)
            self._side_thread.shutdown(wait=False)
            os.close(self._lock_fd)
        if self._failure is not None:
            raise self._failed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failed()
        if self._closing:
            raise JournalClosed(f"journal {self.directory} is closed")

    def _failed(self) -> JournalFailed:
        error = JournalFailed(f"journal {self.directory} failed: {self._failure}")
        error.__cause__ = self._failure
        return error

    async def _wait_for_room(self, size: int) -> None:
        """Queue for `size` bytes under max_pending; they are reserved on return."""
        self._stats.backpressure_waits += 1
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append((size, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._pending -= size  # granted, then cancelled: hand the room back
                self._grant_room()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove((size, waiter))
            raise

    def _grant_room(self) -> None:
        while self._waiters:
            size, waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if self._pending and self._pending + size > self.max_pending:
                return
            self._waiters.popleft()
            self._pending += size
            waiter.set_result(None)

    async def _flush_loop(self) -> None:
        """Write and sync the queued batches one after the other, for the journal's life."""
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                batch = self._queue.popleft()
                if batch is self._open_batch:
                    self._open_batch = None
                self._inflight = batch
                written = await self._loop.run_in_executor(
                    self._writer_thread,
                    self._writer.write,
                    batch.first_seq,
                    batch.bodies,
                    self.fsync,
                )
                self._inflight = None
                if written.rolled_to is not None:
                    self._stats.rolls += 1
                    self._segments.append(
                        Segment(written.rolled_to, segment_path(self.directory, written.rolled_to))
                    )
                count = len(batch.bodies)
                self._stats.count_batch(count, written.size, written.sync_seconds, self.fsync)
                self._durable_seq = batch.first_seq + count - 1
                self._pending -= batch.size
                batch.future.set_result(None)
                self._grant_room()
        except BaseException as exc:
            self._fail(exc if isinstance(exc, Exception) else JournalClosed("journal stopped"))
            if not isinstance(exc, Exception):
                raise

    def _fail(self, cause: BaseException) -> None:
        self._failure = cause
        batches = [self._inflight, *self._queue] if self._inflight else list(self._queue)
        self._inflight = None
        self._queue.clear()
        self._open_batch = None
        for batch in batches:
            if not batch.future.done():
                batch.future.set_exception(self._failed())
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(self._failed())


def _open_writer(
    directory: Path, recovered: Recovered, segment_size: int, durable: bool
) -> tuple[SegmentWriter, list[Segment]]:
    """A writer on the last segment, or on a new one when there is none or the snapshot
    is ahead of it (only possible without fsync, after a power cut)."""
    segments = list(recovered.segments)
    if segments and recovered.last_seq >= recovered.snapshot_seq:
        last = segments[-1]
        return SegmentWriter(directory, last.first_seq, recovered.last_size, segment_size), segments
    first_seq = max(recovered.last_seq, recovered.snapshot_seq) + 1
    writer = SegmentWriter.create(directory, first_seq, segment_size, durable)
    segments.append(Segment(first_seq, segment_path(directory, first_seq)))
    return writer, segments


def _write_snapshot(path: Path, seq: int, state: bytes, durable: bool) -> None:
    write_atomic(path, encode_snapshot(seq, state), durable)


def _remove(paths: list[Path], durable: bool) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if paths and durable:
        sync_directory(paths[0].parent)
