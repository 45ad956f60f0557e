"""Snapshots: replay starts after the latest one, and the segments it covers go."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.journal import Journal, JournalError
from server.journal.files import SEGMENT_SUFFIX, SNAPSHOT_SUFFIX, numbered, segment_path
from tests.journal.helpers import body_of


async def test_replay_gives_the_snapshot_then_the_records_after_it(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        for n in range(1, 11):
            await journal.append(body_of(n))
        assert await journal.snapshot(b"state at 10") == 10
        for n in range(11, 14):
            await journal.append(body_of(n))
    async with await Journal.open(tmp_path) as journal:
        replay = journal.replay()
        assert (replay.snapshot, replay.snapshot_seq) == (b"state at 10", 10)
        assert list(replay.records) == [(n, body_of(n)) for n in range(11, 14)]
        assert await journal.append(b"more") == 14


async def test_a_journal_without_snapshot_replays_from_the_start(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        await journal.append(b"a")
    async with await Journal.open(tmp_path) as journal:
        replay = journal.replay()
        assert (replay.snapshot, replay.snapshot_seq) == (None, 0)
        assert list(replay.records) == [(1, b"a")]


async def test_a_snapshot_removes_covered_segments_and_older_snapshots(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path, segment_size=512) as journal:
        for n in range(1, 101):
            await journal.append(body_of(n))
        before = numbered(tmp_path, SEGMENT_SUFFIX)
        await journal.snapshot(b"first", seq=40)
        await journal.snapshot(b"second", seq=60)
        after = [first for first, _ in numbered(tmp_path, SEGMENT_SUFFIX)]
        assert [seq for seq, _ in numbered(tmp_path, SNAPSHOT_SUFFIX)] == [60]
    assert len(before) > 3
    # Kept: the segment holding 61 and every later one; all earlier are gone.
    holding = max(first for first, _ in before if first <= 61)
    assert after == [first for first, _ in before if first >= holding]
    async with await Journal.open(tmp_path, segment_size=512) as journal:
        replay = journal.replay()
        assert replay.snapshot == b"second"
        assert list(replay.records) == [(n, body_of(n)) for n in range(61, 101)]


async def test_a_snapshot_of_everything_keeps_only_the_open_segment(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path, segment_size=256) as journal:
        for n in range(1, 51):
            await journal.append(body_of(n))
        await journal.snapshot(b"all")
        assert len(numbered(tmp_path, SEGMENT_SUFFIX)) == 1
    async with await Journal.open(tmp_path, segment_size=256) as journal:
        replay = journal.replay()
        assert (replay.snapshot, list(replay.records)) == (b"all", [])
        assert await journal.append(b"51") == 51


async def test_a_snapshot_waits_for_the_records_it_covers(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        tasks = [asyncio.create_task(journal.append(body_of(n))) for n in range(1, 101)]
        await asyncio.sleep(0)
        assert journal.durable_seq < 100
        assert await journal.snapshot(b"s") == 100
        assert journal.durable_seq == 100 and all(t.done() for t in tasks)


async def test_segments_left_by_a_crash_after_a_snapshot_are_removed(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path, segment_size=256) as journal:
        for n in range(1, 41):
            await journal.append(body_of(n))
        kept = {p.name: p.read_bytes() for _, p in numbered(tmp_path, SEGMENT_SUFFIX)}
        await journal.snapshot(b"s")
    for name, data in kept.items():  # as if the process died before removing them
        (tmp_path / name).write_bytes(data)
    async with await Journal.open(tmp_path, segment_size=256) as journal:
        assert list(journal.replay().records) == []
        assert [p.name for _, p in numbered(tmp_path, SEGMENT_SUFFIX)] == [max(kept)]


async def test_a_snapshot_must_cover_an_appended_seq(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        await journal.append(b"a")
        with pytest.raises(ValueError, match=r"0\.\.1"):
            await journal.snapshot(b"s", seq=2)
        await journal.snapshot(b"s", seq=1)
        with pytest.raises(ValueError, match=r"1\.\.1"):
            await journal.snapshot(b"s", seq=0)


async def test_replay_belongs_before_the_first_append(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        await journal.append(b"a")
        with pytest.raises(JournalError, match="before appending"):
            journal.replay()


async def test_without_segments_a_snapshot_starts_the_next_one_after_it(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        for n in range(1, 6):
            await journal.append(body_of(n))
        await journal.snapshot(b"five")
    segment_path(tmp_path, 1).unlink()  # no record after the snapshot is needed
    async with await Journal.open(tmp_path) as journal:
        assert journal.replay().snapshot == b"five"
        assert await journal.append(b"six") == 6
    assert segment_path(tmp_path, 6).exists()
