"""The live progress display of a run (rich Live, on stderr).

Workers send their running counts every 250 ms over the pipes they already have (see
`bench.load.report_progress`); the parent sums them into a `Snapshot` and hands it to a
`ProgressSink`. `LiveProgress` draws it: phase (warm-up, measuring, finishing), elapsed
of total (or replies of --requests), current replies/s, and errors. The display is
transient: it disappears when the run ends and the result tables take its place.
"""

from __future__ import annotations

from typing import Protocol

import msgspec
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.text import Text


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """All workers' counts at one moment of a run."""

    #: Seconds since the measured window opened; negative during warm-up.
    since_window_s: float
    #: Replies (or scenario iterations) per second over about the last second, warm-up
    #: included.
    rate: float
    answered: int
    #: Replies counted in the measured window so far.
    replies: int
    errors: int
    sent: int
    #: The measured window is over; the workers are closing and reporting.
    finishing: bool = False


class ProgressSink(Protocol):
    def begin(
        self, label: str, *, warmup: float, duration: float | None, requests: int | None
    ) -> None: ...

    def update(self, snapshot: Snapshot) -> None: ...

    def end(self) -> None: ...


def describe(
    snapshot: Snapshot, *, warmup: float, duration: float | None, requests: int | None
) -> tuple[str, float, float]:
    """(status line, completed, total) for one snapshot: what the display shows."""
    t = snapshot.since_window_s
    if snapshot.finishing:
        phase = "finishing"
    elif t < 0:
        phase = f"warm-up {max(0.0, warmup + t):.1f}/{warmup:.1f} s"
    else:
        phase = "measuring"
    parts = [phase]
    if requests is not None:
        parts.append(f"{snapshot.replies:,}/{requests:,} replies, {max(0.0, t):.1f} s")
        completed, total = float(snapshot.replies), float(max(1, requests))
    else:
        length = duration or 0.0
        parts.append(f"{min(max(0.0, t), length):.1f}/{length:.1f} s")
        completed, total = min(max(0.0, t), length), max(length, 1e-9)
    parts.append(f"{snapshot.rate:,.0f} replies/s")
    parts.append(f"{snapshot.errors:,} errors")
    return "  ".join(parts), completed, total


class LiveProgress:
    """A `ProgressSink` drawn with rich Live on `console` (stderr)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._live: Live | None = None
        self._label = ""
        self._warmup = 0.0
        self._duration: float | None = None
        self._requests: int | None = None

    def begin(
        self, label: str, *, warmup: float, duration: float | None, requests: int | None
    ) -> None:
        self._label = label
        self._warmup = warmup
        self._duration = duration
        self._requests = requests
        self._live = Live(
            Text(f"{label}: connecting", style="dim"),
            console=self._console,
            auto_refresh=False,
            transient=True,
        )
        self._live.start()

    def update(self, snapshot: Snapshot) -> None:
        if self._live is None:
            return
        line, completed, total = describe(
            snapshot, warmup=self._warmup, duration=self._duration, requests=self._requests
        )
        style = "red" if snapshot.errors else ""
        bar = ProgressBar(total=total, completed=completed, width=40)
        self._live.update(
            Group(Text.assemble((f"{self._label}  ", "bold"), (line, style)), bar), refresh=True
        )

    def end(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
