"""The push ledger: which reliable pushes of the session the application has had, and
when to acknowledge them.

docs/protocol.md ("Pushes: sequence, acknowledgement, replay") is the contract: the server
numbers a session's reliable pushes 1, 2, 3... (never reusing one within the session, so
there is no wraparound to handle), replays those after the Resume's `last_push_seq`, and
keeps each until a PushAck covers it. This module holds the client's side of that
bookkeeping and nothing else: no asyncio, no socket, no clock (callers pass `now` in,
in whatever monotonic unit their timer takes). The AsyncClient feeds it what arrives and
does what it decides; its tests drive it directly (tests/test_client_ledger.py).
"""

from __future__ import annotations

import enum
from typing import NamedTuple

#: Default PushAck batching: one acknowledgement at most this long after the first push
#: it covers, or as soon as this many pushes wait for one (whichever comes first).
ACK_DELAY = 0.05
ACK_EVERY = 64


class Verdict(enum.Enum):
    """What to do with a push that arrived."""

    #: Hand it to the application (callbacks, iterators).
    DELIVER = "deliver"
    #: The application had it already in this session (a replay): drop it.
    DUPLICATE = "duplicate"


class PushGap(NamedTuple):
    """A Resume's reply said some pushes are gone: of those after `seen` (the last one
    this client handed to the application) up to `last_push_seq` (the server's newest),
    some were dropped from the server's bounded buffer and will never arrive. The
    application should re-sync its state (fetch it afresh) rather than rely on pushes."""

    seen: int
    last_push_seq: int


class PushLedger:
    """The push sequence of the session this client logged in or resumed itself.

    Two things decide what happens to a reliable push (seq > 0):

    - `tracking`: the session is one the SDK knows (its Login/Resume reply went through
      `logged_in`/`resumed`). Only then are pushes deduplicated and acknowledged; a
      session from a hand-sent LoginRequest is the application's business.
    - `attached`: that session is on the current connection (its reply came on it).
      Acknowledgements wait while it is not: one sent behind a Login or Resume would be
      applied by the server to whatever session the reply brings.

    Acknowledgements are batched: `ack_due` is when the next one should go out (None:
    nothing to acknowledge). It is set `ack_delay` after the first push it covers, or to
    the push's own time once `ack_every` pushes wait (a due time not after `now` means
    "as soon as this batch of frames is handled"). The caller sends one when due by
    calling `take_ack`, which answers the seq to put in the PushAck.
    """

    def __init__(self, ack_delay: float = ACK_DELAY, ack_every: int = ACK_EVERY) -> None:
        if ack_delay < 0 or ack_every < 1:
            raise ValueError("ack_delay must be >= 0 and ack_every >= 1")
        self.ack_delay = ack_delay
        self.ack_every = ack_every
        #: The highest reliable push sequence handed to the application in the session.
        self.last_seq = 0
        #: The highest sequence a PushAck went out for since the session was attached.
        self.acked_seq = 0
        self.tracking = False
        self.attached = False
        #: The last Resume's reply said pushes are missing; cleared by the next Resume
        #: or Login.
        self.gap = False
        #: Reliable pushes dropped because the application had them already.
        self.duplicates = 0
        #: When the next PushAck should go out, in the caller's clock; None: none due.
        self.ack_due: float | None = None

    # -- events -------------------------------------------------------------------

    def push(self, seq: int, now: float) -> Verdict:
        """A push frame with sequence `seq` arrived at `now`.

        A reliable push counts as handed over once delivered, whatever the application's
        callbacks do with it: it is acknowledged, never delivered again. Latest-value
        pushes (seq 0) are outside the sequence and always delivered. Outside a tracked
        session nothing is dropped, but `last_seq` still follows the highest seq, since
        it is what a Resume names by default."""
        if not seq:
            return Verdict.DELIVER
        if self.tracking and seq <= self.last_seq:
            self.duplicates += 1
            return Verdict.DUPLICATE
        if seq > self.last_seq:
            self.last_seq = seq
        if self.tracking:
            self._want_ack(now)
        return Verdict.DELIVER

    def logged_in(self) -> None:
        """A LoginReply arrived on this connection: a new session, whose pushes (its
        offline inbox first) are numbered from 1 again."""
        self._track(0)
        self.gap = False

    def resumed(
        self, *, asked: int, ours: bool, push_gap: bool, server_last: int, now: float
    ) -> PushGap | None:
        """A ResumeReply arrived on this connection; the replay comes right behind it.

        `asked` is the `last_push_seq` the Resume sent; `ours` whether the reply names the
        session this client already holds. For the session being tracked the count goes
        on from what was handed over (a replay repeating it is dropped); for any other,
        from `asked`. Acknowledgements sent on the old connection may never have arrived,
        so one is due again. Returns the gap when the reply reports one."""
        self._track(self.last_seq if self.tracking and ours else asked)
        self.gap = push_gap
        if self.last_seq:
            self._want_ack(now)
        return PushGap(self.last_seq, server_last) if push_gap else None

    def detach(self) -> bool:
        """The session is leaving this connection (a Login, Resume or Logout is about to
        go out, or the connection ended): no acknowledgement until a reply attaches one
        again. Returns whether it was attached, for `refused`."""
        was = self.attached
        self.attached = False
        self.ack_due = None
        return was

    def refused(self, was_attached: bool) -> None:
        """The Login or Resume that detached it was refused or failed: the connection
        keeps the session it had, acknowledged as it was (unless a reply attached one
        meanwhile)."""
        if not self.attached:
            self.attached = was_attached

    def forget(self) -> None:
        """There is no session any more (logout, a session lost): count from 0, track
        nothing, acknowledge nothing."""
        self.last_seq = 0
        self.tracking = self.attached = False
        self.ack_due = None

    def take_ack(self) -> int | None:
        """An acknowledgement goes out now (it was due, or the session is about to leave
        the connection): the seq it covers, or None when there is nothing new to
        acknowledge on this connection."""
        self.ack_due = None
        if not self.attached or self.last_seq <= self.acked_seq:
            return None
        self.acked_seq = self.last_seq
        return self.last_seq

    # -- internals ----------------------------------------------------------------

    def _track(self, last_seq: int) -> None:
        self.last_seq = last_seq
        self.acked_seq = 0
        self.tracking = self.attached = True
        self.ack_due = None

    def _want_ack(self, now: float) -> None:
        if not self.attached:
            return
        if self.last_seq - self.acked_seq >= self.ack_every:
            # Due at once: the caller sends it after the frames in hand, so a burst
            # read in one go costs one acknowledgement.
            if self.ack_due is None or self.ack_due > now:
                self.ack_due = now
        elif self.ack_due is None:
            self.ack_due = now + self.ack_delay
