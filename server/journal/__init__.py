"""A durable journal: append-only segments of CRC-checked records, synced by group commit
before an append is acknowledged, replayed at start after the latest snapshot.

    journal = await Journal.open("data/orders")
    replay = journal.replay()                 # before the first append
    state = load(replay.snapshot)             # None on a new journal
    for seq, body in replay.records:
        state.apply(seq, body)
    seq = await journal.append(encode(order))  # returns once synced
    await journal.snapshot(state.encode())     # replay starts after this next time
    await journal.close()

Standalone: it imports nothing else of the server. docs/journal.md has the file format,
the recovery rules and the measured cost of fsync.
"""

from server.journal.errors import (
    JournalClosed,
    JournalCorrupt,
    JournalError,
    JournalFailed,
    JournalLocked,
)
from server.journal.journal import Journal, Replay
from server.journal.stats import JournalStats

__all__ = [
    "Journal",
    "JournalClosed",
    "JournalCorrupt",
    "JournalError",
    "JournalFailed",
    "JournalLocked",
    "JournalStats",
    "Replay",
]
