"""Server counters: plain integers bumped on the hot path, read by whoever reports them.

Nothing here formats or locks; the metrics exporter (a later issue) reads these fields.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


class Stats:
    __slots__ = (
        "bytes_in",
        "bytes_out",
        "close_reasons",
        "connections_closed",
        "connections_opened",
        "errors",
        "frames_in",
        "overloaded",
        "oversized_replies",
        "reads_paused",
        "reads_resumed",
        "writes_paused",
    )

    def __init__(self) -> None:
        self.connections_opened = 0
        self.connections_closed = 0
        self.frames_in = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.overloaded = 0
        #: Replies too large for max_frame, answered INTERNAL (logged once per route).
        self.oversized_replies = 0
        self.reads_paused = 0
        self.reads_resumed = 0
        self.writes_paused = 0
        #: Error frames sent, by code.
        self.errors: Counter[int] = Counter()
        #: Closed connections, by typed reason (CloseReason value).
        self.close_reasons: Counter[str] = Counter()

    def count_error(self, code: int) -> None:
        self.errors[code] += 1

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = dict(value) if isinstance(value, Counter) else value
        return out
