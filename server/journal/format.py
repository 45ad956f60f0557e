"""The bytes on disk, free of I/O: segment headers, record frames, snapshot headers.

docs/journal.md describes the same layout byte by byte; every integer is little-endian
and every checksum is CRC-32 (IEEE 802.3 polynomial, as `zlib.crc32` computes it: in the
standard library, C speed, and it releases the GIL on large buffers).

A record frame starts with a 4-byte marker although its position is known from the one
before: after damage in the middle of the last segment, recovery searches for the marker
to tell a torn tail (nothing whole after the damage) from lost acknowledged records
(whole records after it), and `bytes.find` makes that search cheap.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import Final, NamedTuple

VERSION: Final = 1

SEGMENT_MAGIC: Final = b"TWJL"
#: magic, version, flags, first sequence number, CRC-32 of the 16 bytes before it, reserved.
_SEGMENT_HEADER: Final = struct.Struct("<4sHHQII")
SEGMENT_HEADER_SIZE: Final = _SEGMENT_HEADER.size  # 24

RECORD_MAGIC: Final = b"\xa5TWR"
#: marker, body length, CRC-32 over (length, seq, body), sequence number.
_RECORD_HEADER: Final = struct.Struct("<4sIIQ")
_LENGTH_SEQ: Final = struct.Struct("<IQ")
RECORD_HEADER_SIZE: Final = _RECORD_HEADER.size  # 20
#: A body's length is a u32.
MAX_BODY: Final = 0xFFFF_FFFF

SNAPSHOT_MAGIC: Final = b"TWJS"
#: magic, version, flags, covered sequence number, body length, CRC-32, reserved.
_SNAPSHOT_HEADER: Final = struct.Struct("<4sHHQQII")
SNAPSHOT_HEADER_SIZE: Final = _SNAPSHOT_HEADER.size  # 32


def _crc(length: int, seq: int, body: bytes | memoryview) -> int:
    return zlib.crc32(body, zlib.crc32(_LENGTH_SEQ.pack(length, seq)))


def encode_segment_header(first_seq: int) -> bytes:
    head = struct.pack("<4sHHQ", SEGMENT_MAGIC, VERSION, 0, first_seq)
    return _SEGMENT_HEADER.pack(SEGMENT_MAGIC, VERSION, 0, first_seq, zlib.crc32(head), 0)


def decode_segment_header(data: bytes | memoryview) -> int:
    """The first sequence number a segment header names; ValueError saying what is wrong
    with it otherwise."""
    if len(data) < SEGMENT_HEADER_SIZE:
        raise ValueError(f"segment header cut at {len(data)} of {SEGMENT_HEADER_SIZE} bytes")
    magic, version, flags, first_seq, crc, _ = _SEGMENT_HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC:
        raise ValueError(f"not a journal segment (magic {bytes(magic)!r})")
    if zlib.crc32(data[:16]) != crc:
        raise ValueError("segment header fails its CRC")
    if version != VERSION:
        raise ValueError(f"segment version {version}, this build reads only {VERSION}")
    if flags:
        raise ValueError(f"unknown segment flags {flags:#x}")
    return int(first_seq)


def encode_record(seq: int, body: bytes) -> bytes:
    length = len(body)
    return _RECORD_HEADER.pack(RECORD_MAGIC, length, _crc(length, seq, body), seq) + body


class Record(NamedTuple):
    seq: int
    #: Where the frame starts in its segment.
    offset: int
    body: bytes


class Scan(NamedTuple):
    """How far a segment's records verify."""

    #: The offset just past the last whole record (where appending goes on).
    end: int
    #: The sequence number of the last whole record (first_seq - 1 for none).
    last_seq: int
    #: Why scanning stopped before the end of the data, or None for a clean end.
    damage: str | None


def _frame_at(data: bytes, offset: int) -> tuple[int, int, int] | str:
    """(seq, body start, body end) of the frame at `offset`, or why there is none."""
    if len(data) - offset < RECORD_HEADER_SIZE:
        return f"record header cut at {len(data) - offset} of {RECORD_HEADER_SIZE} bytes"
    magic, length, crc, seq = _RECORD_HEADER.unpack_from(data, offset)
    if magic != RECORD_MAGIC:
        return "no record marker"
    start = offset + RECORD_HEADER_SIZE
    end = start + length
    if end > len(data):
        return f"record body cut at {len(data) - start} of {length} bytes"
    if _crc(length, seq, memoryview(data)[start:end]) != crc:
        return "record fails its CRC"
    return seq, start, end


def iter_records(data: bytes, first_seq: int) -> Iterator[Record]:
    """The whole records of a segment's bytes, in order, stopping at the first one that
    does not verify or does not carry the next sequence number."""
    offset = SEGMENT_HEADER_SIZE
    expected = first_seq
    while offset < len(data):
        frame = _frame_at(data, offset)
        if isinstance(frame, str) or frame[0] != expected:
            return
        seq, start, end = frame
        yield Record(seq, offset, data[start:end])
        offset = end
        expected += 1


def scan(data: bytes, first_seq: int) -> Scan:
    """Verify a segment's records from the header on (the header is checked apart)."""
    offset = SEGMENT_HEADER_SIZE
    expected = first_seq
    while offset < len(data):
        frame = _frame_at(data, offset)
        if isinstance(frame, str):
            return Scan(offset, expected - 1, frame)
        seq, _, end = frame
        if seq != expected:
            return Scan(offset, expected - 1, f"record has seq {seq} where {expected} was due")
        offset = end
        expected += 1
    return Scan(offset, expected - 1, None)


def whole_record_after(data: bytes, offset: int, after_seq: int) -> int | None:
    """The offset of a whole, verifying record past `offset` whose seq is above
    `after_seq`, or None: what tells damage with acknowledged records behind it from a
    torn tail."""
    position = data.find(RECORD_MAGIC, offset + 1)
    while position != -1:
        frame = _frame_at(data, position)
        if not isinstance(frame, str) and frame[0] > after_seq:
            return position
        position = data.find(RECORD_MAGIC, position + 1)
    return None


def encode_snapshot(seq: int, body: bytes) -> bytes:
    head = struct.pack("<4sHHQQ", SNAPSHOT_MAGIC, VERSION, 0, seq, len(body))
    crc = zlib.crc32(body, zlib.crc32(head))
    return _SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, VERSION, 0, seq, len(body), crc, 0) + body


def decode_snapshot(data: bytes) -> tuple[int, bytes]:
    """(covered seq, state) of a snapshot file's bytes; ValueError saying what is wrong
    with them otherwise."""
    if len(data) < SNAPSHOT_HEADER_SIZE:
        raise ValueError(f"snapshot header cut at {len(data)} of {SNAPSHOT_HEADER_SIZE} bytes")
    magic, version, flags, seq, length, crc, _ = _SNAPSHOT_HEADER.unpack_from(data)
    if magic != SNAPSHOT_MAGIC:
        raise ValueError(f"not a journal snapshot (magic {bytes(magic)!r})")
    if version != VERSION:
        raise ValueError(f"snapshot version {version}, this build reads only {VERSION}")
    if flags:
        raise ValueError(f"unknown snapshot flags {flags:#x}")
    if len(data) != SNAPSHOT_HEADER_SIZE + length:
        raise ValueError(f"snapshot holds {len(data) - SNAPSHOT_HEADER_SIZE} of {length} bytes")
    body = data[SNAPSHOT_HEADER_SIZE:]
    if zlib.crc32(body, zlib.crc32(data[:24])) != crc:
        raise ValueError("snapshot fails its CRC")
    return int(seq), body
