"""Appending, group commit, backpressure, rolling and closing, on real files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.journal import Journal, JournalClosed, JournalLocked
from server.journal.files import SEGMENT_SUFFIX, numbered
from tests.journal.helpers import body_of


async def replayed(directory: Path, **options: object) -> list[tuple[int, bytes]]:
    journal = await Journal.open(directory, **options)  # type: ignore[arg-type]
    try:
        return list(journal.replay().records)
    finally:
        await journal.close()


async def test_appends_come_back_in_order_with_their_seqs(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        seqs = [await journal.append(body_of(n)) for n in range(1, 51)]
    assert seqs == list(range(1, 51))
    assert await replayed(tmp_path) == [(n, body_of(n)) for n in range(1, 51)]


async def test_seqs_continue_after_reopening(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        await journal.append(b"a")
        await journal.append(b"b")
    async with await Journal.open(tmp_path) as journal:
        assert list(journal.replay().records) == [(1, b"a"), (2, b"b")]
        assert await journal.append(b"c") == 3
    assert await replayed(tmp_path) == [(1, b"a"), (2, b"b"), (3, b"c")]


async def test_empty_and_large_bodies_round_trip(tmp_path: Path) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB
    async with await Journal.open(tmp_path) as journal:
        await journal.append(b"")
        await journal.append(big)
        with pytest.raises(ValueError, match="max_record"):
            await journal.append(b"x" * (journal.max_record + 1))
    assert await replayed(tmp_path) == [(1, b""), (2, big)]


async def test_segments_roll_at_the_size_limit(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path, segment_size=1024) as journal:
        for n in range(1, 201):
            await journal.append(body_of(n))
        assert journal.stats.rolls > 1
    segments = numbered(tmp_path, SEGMENT_SUFFIX)
    assert len(segments) > 2
    firsts = [first for first, _ in segments]
    assert firsts[0] == 1 and firsts == sorted(firsts)
    for _, path in segments[:-1]:
        # A segment passes the limit by at most one batch: here one record per batch.
        assert 1024 <= path.stat().st_size < 1024 + 64
    assert await replayed(tmp_path, segment_size=1024) == [(n, body_of(n)) for n in range(1, 201)]


async def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        seqs = await asyncio.gather(*(journal.append(body_of(n)) for n in range(1000)))
        stats = journal.stats
    assert sorted(seqs) == list(range(1, 1001))
    assert stats.appends == 1000
    assert stats.fsyncs < stats.appends
    assert stats.appends_per_fsync > 1
    assert sum(stats.batch_sizes.values()) == stats.writes == stats.fsyncs
    bodies = dict(await replayed(tmp_path))
    assert bodies == {seq: body_of(n) for n, seq in enumerate(seqs)}


async def test_sync_always_gives_each_append_its_fsync(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path, sync="always") as journal:
        await asyncio.gather(*(journal.append(b"x") for _ in range(50)))
        stats = journal.stats
    assert stats.fsyncs == stats.appends == 50
    assert stats.batch_sizes == {1: 50}


async def test_without_fsync_it_writes_but_never_syncs(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path, fsync=False) as journal:
        await asyncio.gather(*(journal.append(b"x") for _ in range(100)))
        stats = journal.stats
    assert stats.fsyncs == 0 and stats.appends == 100 and stats.writes >= 1
    assert len(await replayed(tmp_path)) == 100


async def test_appends_over_max_pending_wait_their_turn(tmp_path: Path) -> None:
    body = b"z" * 980  # 1,000 bytes framed
    async with await Journal.open(tmp_path, max_record=1000, max_pending=4000) as journal:
        highest = 0

        async def watch() -> None:
            nonlocal highest
            while True:
                highest = max(highest, journal.stats.pending_bytes)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        seqs = await asyncio.gather(*(journal.append(body) for _ in range(100)))
        watcher.cancel()
        stats = journal.stats
    assert sorted(seqs) == list(range(1, 101))
    assert stats.backpressure_waits > 0
    assert 0 < highest <= 4000
    assert stats.pending_bytes == 0
    # First come, first served: the waiters got their seqs in the order they called.
    assert seqs == list(range(1, 101))


async def test_close_writes_what_is_pending(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path)
    tasks = [asyncio.create_task(journal.append(body_of(n))) for n in range(1, 301)]
    await asyncio.sleep(0)  # every append queued, none acknowledged yet
    assert journal.durable_seq == 0 and journal.last_seq == 300
    await journal.close()
    assert [t.result() for t in tasks] == list(range(1, 301))
    with pytest.raises(JournalClosed):
        await journal.append(b"late")
    assert len(await replayed(tmp_path)) == 300


async def test_a_cancelled_append_is_still_written(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path) as journal:
        task = asyncio.create_task(journal.append(b"cancelled"))
        await asyncio.sleep(0)
        task.cancel()
        assert await journal.append(b"next") == 2
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await replayed(tmp_path) == [(1, b"cancelled"), (2, b"next")]


async def test_one_open_journal_per_directory(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path):
        with pytest.raises(JournalLocked):
            await Journal.open(tmp_path)
    async with await Journal.open(tmp_path):  # released by close
        pass


async def test_a_smaller_max_record_still_reads_larger_records(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path, max_record=1 << 20) as journal:
        await journal.append(b"b" * 5000)
    assert await replayed(tmp_path, max_record=100) == [(1, b"b" * 5000)]
