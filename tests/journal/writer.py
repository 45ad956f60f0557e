"""A process that appends to a journal until it is killed, for the crash tests.

    python -m tests.journal.writer DIR [--tasks 16] [--snapshot-every N] [--file-limit BYTES]

Prints `opened LAST SNAPSHOT_SEQ` once the journal is open, then `ack SEQ BODY` for each
append after its await returned: every printed seq is acknowledged, so a kill -9 at any
moment must leave it in the journal. With --snapshot-every it snapshots `orders up to
SEQ` that often. With --file-limit (RLIMIT_FSIZE, SIGXFSZ ignored) writes past that size
fail with EFBIG, a real I/O error: it prints `failed MESSAGE` for the first JournalFailed
and `refused MESSAGE` for an append after it, and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys

import uvloop

from server.journal import Journal, JournalFailed


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(directory: str, tasks: int, snapshot_every: int, limited: bool) -> None:
    journal = await Journal.open(directory, segment_size=256 << 10)
    replay = journal.replay()
    for _ in replay.records:
        pass
    say(f"opened {journal.last_seq} {replay.snapshot_seq}")
    failed = asyncio.Event()

    async def client(name: int) -> None:
        count = 0
        while not failed.is_set():
            count += 1
            body = f"order {name}-{count}"
            try:
                seq = await journal.append(body.encode())
            except JournalFailed as exc:
                if not failed.is_set():
                    failed.set()
                    say(f"failed {exc}")
                return
            say(f"ack {seq} {body}")
            if snapshot_every and seq % snapshot_every == 0:
                covered = journal.last_seq
                await journal.snapshot(f"orders up to {covered}".encode(), seq=covered)

    await asyncio.gather(*(client(n) for n in range(tasks)))
    if limited:
        try:
            await journal.append(b"after the failure")
        except JournalFailed as exc:
            say(f"refused {exc}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--snapshot-every", type=int, default=0)
    parser.add_argument("--file-limit", type=int, default=0)
    args = parser.parse_args()
    if args.file_limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.file_limit, args.file_limit))
    uvloop.run(main(args.directory, args.tasks, args.snapshot_every, bool(args.file_limit)))
