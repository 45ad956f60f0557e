"""Building journal files byte by byte, for the recovery tests that damage them."""

from __future__ import annotations

from pathlib import Path

from server.journal.files import segment_path
from server.journal.format import encode_record, encode_segment_header


def body_of(seq: int) -> bytes:
    """A record body that says which seq it was appended as, of varying length."""
    return f"order {seq} ".encode() + b"q" * (seq % 7)


def write_segment(directory: Path, first_seq: int, count: int) -> tuple[Path, list[int]]:
    """A segment of `count` records from `first_seq`; returns it and each record's
    offset."""
    data = bytearray(encode_segment_header(first_seq))
    offsets = []
    for seq in range(first_seq, first_seq + count):
        offsets.append(len(data))
        data += encode_record(seq, body_of(seq))
    path = segment_path(directory, first_seq)
    path.write_bytes(bytes(data))
    return path, offsets
