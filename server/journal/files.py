"""The journal's directory: file names, the lock, durable creation and removal, and the
writer of the open segment. Everything here blocks; the journal runs it on its own
threads, never on the event loop.

Layout of a journal directory::

    LOCK                            flock'ed by the one open journal
    00000000000000000001.seg        a segment, named by the first seq it holds
    00000000000000004097.seg
    00000000000000003000.snap       the snapshot, named by the last seq it covers
    .*.tmp                          a file being written; removed at open
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Final, NamedTuple

from server.journal.errors import JournalLocked
from server.journal.format import encode_record, encode_segment_header

SEGMENT_SUFFIX: Final = ".seg"
SNAPSHOT_SUFFIX: Final = ".snap"
LOCK_NAME: Final = "LOCK"

#: fdatasync skips the inode's timestamps but still writes the size an append changes,
#: which is all a reader needs; where the platform lacks it, fsync.
_datasync = getattr(os, "fdatasync", os.fsync)


def segment_path(directory: Path, first_seq: int) -> Path:
    return directory / f"{first_seq:020d}{SEGMENT_SUFFIX}"


def snapshot_path(directory: Path, seq: int) -> Path:
    return directory / f"{seq:020d}{SNAPSHOT_SUFFIX}"


def numbered(directory: Path, suffix: str) -> list[tuple[int, Path]]:
    """The files named `<number><suffix>`, by number; other names are left alone."""
    found = []
    for entry in directory.iterdir():
        stem = entry.name.removesuffix(suffix)
        if entry.name.endswith(suffix) and stem.isdigit():
            found.append((int(stem), entry))
    found.sort()
    return found


def lock(directory: Path) -> int:
    """Hold the directory for this journal until the returned descriptor is closed (or the
    process dies, which is what lets a restart after kill -9 open it again)."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalLocked(f"{directory} is held by another open journal") from None
    return fd


def sync_directory(directory: Path) -> None:
    """fsync a directory, so that a file created, renamed or removed in it stays so
    after a power cut (the file's own fsync does not cover its name)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_temporaries(directory: Path) -> None:
    for entry in directory.glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()


def write_atomic(path: Path, data: bytes, durable: bool) -> None:
    """Write `data` under a temporary name and rename it to `path`: a crash leaves either
    no file or the whole one, never a part under the real name."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        sync_directory(path.parent)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Written(NamedTuple):
    """What one batch cost the writer thread."""

    #: Bytes written (frames, plus a new segment's header).
    size: int
    #: Seconds spent in fdatasync (0 when not syncing).
    sync_seconds: float
    #: The first seq of the segment a roll opened before this batch, or None.
    rolled_to: int | None


class SegmentWriter:
    """Appends batches to the open segment and rolls to a new one at `segment_size`.

    Used from one thread only. A batch is never split across segments, so a segment
    ends on a batch boundary and may pass `segment_size` by at most one batch.
    """

    def __init__(self, directory: Path, first_seq: int, size: int, segment_size: int) -> None:
        self.directory = directory
        self.segment_size = segment_size
        self.first_seq = first_seq
        self.size = size
        self._fd = os.open(segment_path(directory, first_seq), os.O_WRONLY | os.O_APPEND)

    @classmethod
    def create(
        cls, directory: Path, first_seq: int, segment_size: int, durable: bool
    ) -> SegmentWriter:
        """A writer on a new, empty segment, whose header is on disk before it returns."""
        header = encode_segment_header(first_seq)
        write_atomic(segment_path(directory, first_seq), header, durable)
        return cls(directory, first_seq, len(header), segment_size)

    def write(self, first_seq: int, bodies: list[bytes], sync: bool) -> Written:
        rolled_to = None
        extra = 0
        if self.size >= self.segment_size and first_seq > self.first_seq:
            # The segment's records were synced with their own batches.
            os.close(self._fd)
            self._fd = -1
            new = SegmentWriter.create(self.directory, first_seq, self.segment_size, sync)
            self._fd, self.first_seq, self.size = new._fd, new.first_seq, new.size
            rolled_to = first_seq
            extra = new.size
        data = b"".join([encode_record(seq, body) for seq, body in enumerate(bodies, first_seq)])
        _write_all(self._fd, data)
        self.size += len(data)
        took = 0.0
        if sync:
            started = time.perf_counter()
            _datasync(self._fd)
            took = time.perf_counter() - started
        return Written(len(data) + extra, took, rolled_to)

    def sync(self) -> None:
        _datasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
