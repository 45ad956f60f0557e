"""The journal's typed failures: a caller must be able to tell "refuse to start, the data
on disk is damaged" from "this process can no longer promise durability" from "you used
it wrong", because each calls for a different reaction."""

from __future__ import annotations

from pathlib import Path


class JournalError(Exception):
    """Base of every error the journal raises on purpose."""


class JournalCorrupt(JournalError):
    """Damage that recovery must not paper over: a bad record before the last whole one,
    a missing stretch of sequence numbers, an unreadable header or snapshot. Opening
    stops here, because skipping the damage could drop appends that were acknowledged."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"{path}: offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class JournalLocked(JournalError):
    """Another open journal (in this process or another) holds the directory: two
    writers would interleave records and break the sequence."""


class JournalClosed(JournalError):
    """The journal was closed; nothing more can be appended or snapshotted."""


class JournalFailed(JournalError):
    """A write or fsync failed. After a failed fsync the kernel may have dropped the dirty
    pages and reported the error once, so a retry could "succeed" without the data: the
    journal refuses every later append instead, and the process should restart and let
    recovery decide what is on disk."""
