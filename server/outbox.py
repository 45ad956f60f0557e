"""The write path's one owner: output waits in each connection's `out` list and leaves
in one write per connection at the end of the loop iteration.

Who puts bytes in `conn.out` and hands the connection to `Outbox.mark`: the read fast
path (server/fastpath.py, once per read) and the Pusher (once per member reached).
`Dispatcher.run_connection`, the consumers, `close_with` and `eof_received` write the
connection themselves (`Connection.flush`), which sends whatever was marked first, so
the order on the wire holds whoever writes.

Why wait for the end of the iteration: writes made back to back, after all of an
iteration's reads, let a client find several replies per wakeup, and a member of ten
rooms that all broadcast in one iteration costs one ``write``, not ten (docs/bench.md,
"Figures behind the server's design").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.connection import Connection


class Outbox:
    """The connections with output to write at the end of this loop iteration.

    A connection is on the list at most once: `Connection.flush_pending` says it is, so
    marking costs one attribute test once it is there. The first mark of an iteration
    schedules the one `flush` (a ``call_soon``), whoever makes it.
    """

    __slots__ = ("_after", "_loop", "_scheduled", "marked")

    def __init__(self) -> None:
        #: The connections `flush` writes next, in the order they were marked.
        self.marked: list[Connection] = []
        self._scheduled = False
        self._after: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def mark(self, conn: Connection) -> None:
        """Write `conn`'s output (`conn.out`) at the end of this loop iteration."""
        if not conn.flush_pending:
            conn.flush_pending = True
            self.marked.append(conn)
            if not self._scheduled:
                self._schedule()

    def after_flush(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the next flush has written every marked connection (the
        Pusher times its fan-outs up to there)."""
        self._after.append(callback)
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        self._scheduled = True
        assert self._loop is not None, "Outbox.start was not called"
        self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every marked connection once, then call the `after_flush` callbacks."""
        self._scheduled = False
        marked = self.marked
        self.marked = []
        for conn in marked:
            conn.flush_pending = False
            if conn.out:
                conn.flush()
        if self._after:
            after = self._after
            self._after = []
            for callback in after:
                callback()
