"""Opening a damaged journal: a torn tail of the last segment is cut, anything that could
hold acknowledged records is JournalCorrupt naming the file and the offset."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from server.journal import Journal, JournalCorrupt
from server.journal.files import segment_path, snapshot_path
from server.journal.format import SEGMENT_HEADER_SIZE, encode_snapshot
from tests.journal.helpers import body_of, write_segment


async def reopen(directory: Path) -> tuple[list[tuple[int, bytes]], int, int]:
    """The records after opening, the bytes cut, and the seq the next append gets."""
    journal = await Journal.open(directory)
    try:
        records = list(journal.replay().records)
        return records, journal.truncated, await journal.append(b"next")
    finally:
        await journal.close()


def flip(path: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def expected(first: int, last: int) -> list[tuple[int, bytes]]:
    return [(seq, body_of(seq)) for seq in range(first, last + 1)]


async def test_a_torn_tail_is_cut_at_every_offset_of_the_last_record(tmp_path: Path) -> None:
    path, offsets = write_segment(tmp_path, 1, 10)
    whole = path.read_bytes()
    last = offsets[-1]
    for cut in range(last, len(whole)):
        path.write_bytes(whole[:cut])
        records, truncated, following = await reopen(tmp_path)
        assert records == expected(1, 9), cut
        assert truncated == cut - last
        assert following == 10  # the torn record's seq was never acknowledged
        path.write_bytes(whole)  # undo the cut and the append
    path.write_bytes(whole)
    records, truncated, following = await reopen(tmp_path)
    assert (records, truncated, following) == (expected(1, 10), 0, 11)


async def test_the_cut_is_logged_with_its_size(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, offsets = write_segment(tmp_path, 1, 3)
    path.write_bytes(path.read_bytes()[: offsets[-1] + 7])
    with caplog.at_level(logging.WARNING, logger="tickwire.journal"):
        await reopen(tmp_path)
    assert f"cut a torn tail of 7 bytes at offset {offsets[-1]}" in caplog.text


async def test_a_bit_flip_in_the_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    path, offsets = write_segment(tmp_path, 1, 5)
    flip(path, offsets[-1] + 22)
    records, truncated, _ = await reopen(tmp_path)
    assert records == expected(1, 4) and truncated > 0


async def test_damage_before_the_last_record_of_the_last_segment_is_corrupt(
    tmp_path: Path,
) -> None:
    path, offsets = write_segment(tmp_path, 1, 5)
    flip(path, offsets[2] + 25)
    with pytest.raises(JournalCorrupt) as caught:
        await Journal.open(tmp_path)
    assert caught.value.path == path and caught.value.offset == offsets[2]
    assert "whole record after it" in str(caught.value)
    assert path.read_bytes() != b""  # nothing was cut


async def test_damage_in_an_earlier_segment_is_corrupt(tmp_path: Path) -> None:
    first, offsets = write_segment(tmp_path, 1, 5)
    write_segment(tmp_path, 6, 5)
    flip(first, offsets[-1] + 21)  # even its last record: it was synced before the roll
    with pytest.raises(JournalCorrupt) as caught:
        await Journal.open(tmp_path)
    assert caught.value.path == first and caught.value.offset == offsets[-1]
    assert "CRC" in caught.value.reason


async def test_an_earlier_segment_cut_short_is_corrupt(tmp_path: Path) -> None:
    first, offsets = write_segment(tmp_path, 1, 5)
    write_segment(tmp_path, 6, 5)
    first.write_bytes(first.read_bytes()[: offsets[-1] + 3])
    with pytest.raises(JournalCorrupt) as caught:
        await Journal.open(tmp_path)
    assert caught.value.path == first and caught.value.offset == offsets[-1]


async def test_a_missing_segment_is_corrupt(tmp_path: Path) -> None:
    write_segment(tmp_path, 1, 5)
    write_segment(tmp_path, 6, 5)
    third, _ = write_segment(tmp_path, 11, 5)
    segment_path(tmp_path, 6).unlink()
    with pytest.raises(JournalCorrupt) as caught:
        await Journal.open(tmp_path)
    assert caught.value.path == third and "6 was due" in caught.value.reason


async def test_a_journal_missing_its_start_is_corrupt(tmp_path: Path) -> None:
    write_segment(tmp_path, 6, 5)
    with pytest.raises(JournalCorrupt, match=r"records 1\.\.5 are missing"):
        await Journal.open(tmp_path)


async def test_a_damaged_segment_header_is_corrupt(tmp_path: Path) -> None:
    path, _ = write_segment(tmp_path, 1, 5)
    flip(path, 9)
    with pytest.raises(JournalCorrupt) as caught:
        await Journal.open(tmp_path)
    assert caught.value.offset == 0 and "header" in caught.value.reason


async def test_a_damaged_snapshot_is_corrupt(tmp_path: Path) -> None:
    write_segment(tmp_path, 1, 5)
    snap = snapshot_path(tmp_path, 3)
    snap.write_bytes(encode_snapshot(3, b"state"))
    flip(snap, 34)
    with pytest.raises(JournalCorrupt) as caught:
        await Journal.open(tmp_path)
    assert caught.value.path == snap


async def test_temporary_files_of_a_crash_are_removed(tmp_path: Path) -> None:
    write_segment(tmp_path, 1, 2)
    leftover = tmp_path / ".00000000000000000002.snap.tmp"
    leftover.write_bytes(b"half a snapshot")
    records, _, _ = await reopen(tmp_path)
    assert records == expected(1, 2) and not leftover.exists()


def recovered_after(data: bytes) -> tuple[list[tuple[int, bytes]], int] | str:
    """Open a journal whose only segment holds `data`: (records, next seq), or the
    JournalCorrupt reason."""
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        segment_path(directory, 1).write_bytes(data)

        async def run() -> tuple[list[tuple[int, bytes]], int] | str:
            try:
                journal = await Journal.open(directory)
            except JournalCorrupt as exc:
                return exc.reason
            try:
                return list(journal.replay().records), await journal.append(b"next")
            finally:
                await journal.close()

        return uvloop.run(run())


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=8),
    cut=st.integers(min_value=0),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)), max_size=3),
)
def test_any_damage_to_the_tail_loses_only_the_last_record(
    count: int, cut: int, flips: list[tuple[int, int]]
) -> None:
    """Cut the last record anywhere and flip bits anywhere in what is left of it: the
    records before it always come back whole, and the next append follows them."""
    with tempfile.TemporaryDirectory() as folder:
        path, offsets = write_segment(Path(folder), 1, count)
        whole = path.read_bytes()
    last = offsets[-1]
    data = bytearray(whole[: last + cut % (len(whole) - last + 1)])
    for position, mask in flips:
        if len(data) > last:
            data[last + position % (len(data) - last)] ^= mask
    intact = bytes(data) == whole
    result = recovered_after(bytes(data))
    assert not isinstance(result, str), result
    records, following = result
    kept = count if intact else count - 1
    assert records == expected(1, kept)
    assert following == kept + 1


def test_a_fresh_journal_has_only_a_header(tmp_path: Path) -> None:
    async def run() -> None:
        async with await Journal.open(tmp_path) as journal:
            assert list(journal.replay().records) == []

    uvloop.run(run())
    assert segment_path(tmp_path, 1).stat().st_size == SEGMENT_HEADER_SIZE
