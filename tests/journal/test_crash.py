"""kill -9 a real writer process mid-stream: every acknowledged append survives, and the
seqs go on after the last one. And a real write error fails the journal for good."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import uvloop

from server.journal import Journal

ROOT = Path(__file__).resolve().parents[2]


class Run:
    """One writer process, whose output is read as it goes."""

    def __init__(self, directory: Path, *options: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.journal.writer", str(directory), *options],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.stdout = self.process.stdout
        opened = self.stdout.readline().split()
        assert opened[0] == "opened", opened
        self.opened_last, self.opened_snapshot = int(opened[1]), int(opened[2])
        self.acked: dict[int, str] = {}
        self.other: list[str] = []

    def _take(self, line: str) -> None:
        if not line.endswith("\n"):
            return  # cut by the kill: never part of the acknowledgement
        word, _, rest = line.rstrip("\n").partition(" ")
        if word == "ack":
            seq, _, body = rest.partition(" ")
            self.acked[int(seq)] = body
        else:
            self.other.append(line.rstrip("\n"))

    def kill_after(self, acks: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < acks:
            assert time.monotonic() < deadline, f"only {len(self.acked)} acks"
            line = self.stdout.readline()
            assert line, f"the writer exited: {self.process.wait()}"
            self._take(line)
        os.kill(self.process.pid, signal.SIGKILL)
        self.finish()
        assert self.process.returncode == -signal.SIGKILL

    def finish(self) -> None:
        for line in self.stdout:  # what it printed before it died
            self._take(line)
        self.process.wait(timeout=30)


def reopened(directory: Path) -> tuple[bytes | None, int, dict[int, bytes], int]:
    """Snapshot, its seq, the records after it and the next append's seq."""

    async def run() -> tuple[bytes | None, int, dict[int, bytes], int]:
        async with await Journal.open(directory, segment_size=256 << 10) as journal:
            replay = journal.replay()
            records = dict(replay.records)
            return replay.snapshot, replay.snapshot_seq, records, await journal.append(b"x")

    return uvloop.run(run())


def test_acknowledged_appends_survive_kill_9_and_seqs_continue(tmp_path: Path) -> None:
    first = Run(tmp_path)
    assert first.opened_last == 0
    first.kill_after(3000)
    second = Run(tmp_path)
    # It reopened at or past every seq the first run acknowledged, and goes on from there.
    assert second.opened_last >= max(first.acked)
    second.kill_after(2000)
    assert min(second.acked) == second.opened_last + 1
    snapshot, snapshot_seq, records, following = reopened(tmp_path)
    assert (snapshot, snapshot_seq) == (None, 0)
    # Every acknowledged order is there, under the seq its ack named; no gap anywhere.
    for seq, body in {**first.acked, **second.acked}.items():
        assert records[seq] == body.encode()
    assert sorted(records) == list(range(1, len(records) + 1))
    assert len(records) >= max(second.acked)
    assert following == len(records) + 1


def test_kill_9_between_snapshots_replays_snapshot_and_the_rest(tmp_path: Path) -> None:
    run = Run(tmp_path, "--snapshot-every", "500", "--tasks", "32")
    run.kill_after(5000)
    snapshot, snapshot_seq, records, following = reopened(tmp_path)
    assert snapshot_seq >= 4500  # several snapshots were taken, the last one is used
    assert snapshot == f"orders up to {snapshot_seq}".encode()
    for seq, body in run.acked.items():
        assert seq <= snapshot_seq or records[seq] == body.encode()
    assert sorted(records) == list(range(snapshot_seq + 1, snapshot_seq + 1 + len(records)))
    assert following == snapshot_seq + len(records) + 1


def test_a_failed_write_fails_the_journal_for_good(tmp_path: Path) -> None:
    run = Run(tmp_path, "--file-limit", str(64 << 10))
    run.finish()
    assert run.process.returncode == 0
    assert [line.split(" ", 1)[0] for line in run.other] == ["failed", "refused"]
    assert "File too large" in run.other[0]
    assert run.acked  # some appends fit under the limit
    _, _, records, following = reopened(tmp_path)
    for seq, body in run.acked.items():
        assert records[seq] == body.encode()
    assert following == len(records) + 1
