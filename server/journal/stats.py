"""The journal's counters: where its time and its fsyncs go."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class JournalStats:
    """Counted since open. Read `Journal.stats` for a copy taken at that moment."""

    #: Appends acknowledged (their batch written and, when syncing, synced).
    appends: int = 0
    #: Bytes written to segments: record frames and new segments' headers.
    bytes: int = 0
    #: Batches written, one write() each.
    writes: int = 0
    fsyncs: int = 0
    #: Seconds the writer thread spent in fdatasync, in all and at most.
    fsync_seconds: float = 0.0
    fsync_max_seconds: float = 0.0
    #: Appends per batch, by power-of-two bucket: key b counts batches of b to 2b-1.
    batch_sizes: dict[int, int] = field(default_factory=dict)
    #: Appends that waited because `max_pending` bytes were already queued.
    backpressure_waits: int = 0
    #: Bytes appended and not yet acknowledged, at the moment of the copy.
    pending_bytes: int = 0
    #: Segments rolled to since open.
    rolls: int = 0

    @property
    def appends_per_fsync(self) -> float:
        """The group commit's amortisation: 1.0 means one fsync per append."""
        return self.appends / self.fsyncs if self.fsyncs else 0.0

    @property
    def fsync_mean_seconds(self) -> float:
        return self.fsync_seconds / self.fsyncs if self.fsyncs else 0.0

    def count_batch(self, appends: int, size: int, sync_seconds: float, synced: bool) -> None:
        self.appends += appends
        self.bytes += size
        self.writes += 1
        bucket = 1 << (appends.bit_length() - 1)
        self.batch_sizes[bucket] = self.batch_sizes.get(bucket, 0) + 1
        if synced:
            self.fsyncs += 1
            self.fsync_seconds += sync_seconds
            self.fsync_max_seconds = max(self.fsync_max_seconds, sync_seconds)
