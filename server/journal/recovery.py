"""What opening a journal finds on disk, and the repairs it may make on its own.

The one repair is cutting a torn tail off the last segment: a crash mid-write leaves a
partial batch there, and none of it was acknowledged (an append returns only after its
batch is written and synced). Damage anywhere else, or damage in the last segment with
whole records after it, is not a torn write but lost or corrupted acknowledged data, so
it raises JournalCorrupt instead of being skipped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

from server.journal.errors import JournalCorrupt
from server.journal.files import (
    SEGMENT_SUFFIX,
    SNAPSHOT_SUFFIX,
    numbered,
    remove_temporaries,
    sync_directory,
)
from server.journal.format import (
    decode_segment_header,
    decode_snapshot,
    scan,
    whole_record_after,
)

log = logging.getLogger("tickwire.journal")


class Segment(NamedTuple):
    first_seq: int
    path: Path


class Recovered(NamedTuple):
    #: The seq the snapshot covers, 0 without one.
    snapshot_seq: int
    snapshot: Path | None
    #: The segments holding records after the snapshot, oldest first.
    segments: list[Segment]
    #: The seq of the last whole record (the snapshot's when no record follows it).
    last_seq: int
    #: The size of the last segment after any cut (0 without segments).
    last_size: int
    #: Bytes cut off a torn tail.
    truncated: int


def recover(directory: Path, durable: bool) -> Recovered:
    """Verify the journal in `directory` and cut a torn tail; JournalCorrupt for damage
    it may not repair."""
    remove_temporaries(directory)
    snapshot_seq, snapshot = _latest_snapshot(directory)
    segments = _uncovered_segments(directory, snapshot_seq)
    if not segments:
        return Recovered(snapshot_seq, snapshot, [], snapshot_seq, 0, 0)
    due = snapshot_seq + 1
    first = segments[0]
    if (first.first_seq > due) if snapshot else (first.first_seq != 1):
        raise JournalCorrupt(
            first.path, 0, f"records {due}..{first.first_seq - 1} are missing before it"
        )
    last_seq = 0
    last_size = 0
    truncated = 0
    for index, segment in enumerate(segments):
        is_last = index == len(segments) - 1
        data = segment.path.read_bytes()
        try:
            header_seq = decode_segment_header(data)
        except ValueError as exc:
            raise JournalCorrupt(segment.path, 0, str(exc)) from None
        if header_seq != segment.first_seq:
            raise JournalCorrupt(
                segment.path, 0, f"header names seq {header_seq}, the file name another"
            )
        if index and segment.first_seq != last_seq + 1:
            raise JournalCorrupt(
                segment.path, 0, f"starts at seq {segment.first_seq}, {last_seq + 1} was due"
            )
        found = scan(data, segment.first_seq)
        last_seq, last_size = found.last_seq, found.end
        if found.damage is None:
            continue
        if not is_last:
            raise JournalCorrupt(segment.path, found.end, found.damage)
        later = whole_record_after(data, found.end, found.last_seq)
        if later is not None:
            raise JournalCorrupt(
                segment.path,
                found.end,
                f"{found.damage}, with a whole record after it at offset {later}",
            )
        truncated = len(data) - found.end
        _truncate(segment.path, found.end, durable)
        log.warning(
            "journal %s: cut a torn tail of %d bytes at offset %d (%s); seq %d is the last",
            segment.path,
            truncated,
            found.end,
            found.damage,
            found.last_seq,
        )
    return Recovered(snapshot_seq, snapshot, segments, last_seq, last_size, truncated)


def _latest_snapshot(directory: Path) -> tuple[int, Path | None]:
    """The newest snapshot, verified; older ones (left by a crash before their removal)
    are removed. A damaged newest one is JournalCorrupt rather than a fallback to an
    older one: the segments that older one would need may be gone."""
    found = numbered(directory, SNAPSHOT_SUFFIX)
    if not found:
        return 0, None
    seq, path = found[-1]
    try:
        covered, _ = decode_snapshot(path.read_bytes())
    except ValueError as exc:
        raise JournalCorrupt(path, 0, str(exc)) from None
    if covered != seq:
        raise JournalCorrupt(path, 0, f"covers seq {covered}, the file name another")
    for _, older in found[:-1]:
        older.unlink()
    return seq, path


def _uncovered_segments(directory: Path, snapshot_seq: int) -> list[Segment]:
    """The segments holding any record after the snapshot; the others are removed (a
    crash between a snapshot and their removal leaves them)."""
    segments = [Segment(seq, path) for seq, path in numbered(directory, SEGMENT_SUFFIX)]
    kept = []
    for index, segment in enumerate(segments):
        following = segments[index + 1] if index + 1 < len(segments) else None
        if following is not None and following.first_seq <= snapshot_seq + 1:
            segment.path.unlink()
        else:
            kept.append(segment)
    return kept


def _truncate(path: Path, size: int, durable: bool) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    if durable:
        sync_directory(path.parent)
