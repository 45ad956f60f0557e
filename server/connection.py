"""The connection adapter: an asyncio.Protocol that feeds bytes to the decoder and the
decoded frames to the dispatcher, writes what the dispatcher produced, and closes with a
typed reason. It holds no protocol logic of its own.

Memory per idle connection is kept small on purpose (slots, the mailbox and the decoder's
buffer empty until used): one process is meant to hold tens of thousands of them.

What a connection may make the server hold is bounded in bytes (docs/internet.md, "Byte
budgets"): its input (mailbox payloads plus the decoder's partial frame) by
`input_budget`, its output (the transport's buffer plus output held while writes are
paused) by `output_budget`; both are smaller before login. A closed connection is freed
by reference counting alone (docs/internet.md, "Freed on close"): connection_lost breaks
every reference it takes part in.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from protocol.errors import ErrorCode, RemoteProtocolError
from protocol.frame import Frame, FrameDecoder
from protocol.system import error_frame, goaway_frame

if TYPE_CHECKING:
    from server.app import Context
    from server.config import ServerConfig
    from server.server import Server
    from server.sessions import Session

log = logging.getLogger("tickwire.connection")


class CloseReason(StrEnum):
    """Why a connection ended; logged and counted (Stats.close_reasons)."""

    PEER_CLOSED = "peer_closed"
    CONNECTION_LOST = "connection_lost"
    BAD_FRAME = "bad_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    SERVER_SHUTDOWN = "server_shutdown"
    IDLE_TIMEOUT = "idle_timeout"
    SLOW_CONSUMER = "slow_consumer"
    SESSION_REPLACED = "session_replaced"
    AUTH_TIMEOUT = "auth_timeout"
    #: A frame began and did not finish within frame_timeout; sent as IDLE_TIMEOUT.
    FRAME_TIMEOUT = "frame_timeout"
    #: max_outstanding_pings server Pings went unanswered; sent as IDLE_TIMEOUT.
    PING_TIMEOUT = "ping_timeout"

    @classmethod
    def for_code(cls, code: int) -> CloseReason:
        return cls(ErrorCode(code).name.lower())


#: Input a lingering close (close_with) reads and drops before it gives up and aborts.
LINGER_BYTES = 16 << 20


class Budgets:
    """The byte limits of one connection, with a session and without, derived once from
    the config (docs/internet.md, "Byte budgets"). Each input budget fits at least one
    frame of its limit, so no frame the limit allows is refused for want of room."""

    __slots__ = (
        "frame",
        "high_water",
        "input",
        "latest_parked",
        "latest_queue",
        "output",
        "prelogin_frame",
        "prelogin_high_water",
        "prelogin_input",
        "prelogin_output",
    )

    def __init__(self, config: ServerConfig) -> None:
        self.frame = config.max_frame
        self.prelogin_frame = min(config.prelogin_max_frame, config.max_frame)
        self.input = max(config.max_input_bytes, self.frame)
        self.prelogin_input = max(min(config.prelogin_input_bytes, self.input), self.prelogin_frame)
        self.output = config.slow_consumer_bytes
        self.prelogin_output = min(config.prelogin_output_bytes, self.output)
        #: Transport buffer sizes above which it asks us to stop writing: far enough
        #: below the output budget that a write slice (FLUSH_BYTES) after it still fits.
        self.high_water = min(1 << 20, self.output // 2)
        self.prelogin_high_water = min(self.high_water, self.prelogin_output // 8)
        #: Queued bytes above which latest-value pushes wait (0: only once writes
        #: pause), and the bytes of them one connection may have waiting (server/push.py).
        self.latest_queue = config.latest_queue_bytes
        self.latest_parked = config.latest_parked_bytes


class Connection(asyncio.Protocol):
    __slots__ = (
        "__weakref__",
        "auth_tick",
        "close_reason",
        "closing",
        "closing_tick",
        "ctx",
        "decoder",
        "dispatcher",
        "eof",
        "fatal",
        "flush_pending",
        "frames",
        "held",
        "held_bytes",
        "id",
        "input_budget",
        "latest",
        "latest_bytes",
        "latest_gate",
        "lingered",
        "mailbox",
        "opened_tick",
        "out",
        "out_counted",
        "output_budget",
        "parked",
        "partial",
        "partial_tick",
        "pinged",
        "pinged_rx",
        "queued_bytes",
        "reading_paused",
        "refused",
        "reply_hold",
        "rx_tick",
        "scheduled",
        "server",
        "session",
        "stats",
        "transport",
        "write_paused",
        "write_paused_tick",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.dispatcher = server.dispatcher
        self.stats = server.stats
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        budgets = server.budgets
        self.decoder = FrameDecoder(budgets.prelogin_frame, named=False)
        #: Payload bytes of the frames in the mailbox (kept by the Dispatcher), and the
        #: decoder's partial frame as last counted in the server-wide input total.
        self.queued_bytes = 0
        self.partial = 0
        #: The input and output bytes this connection may make the server hold now: the
        #: pre-login figures until a session is set (set_session).
        self.input_budget = budgets.prelogin_input
        self.output_budget = budgets.prelogin_output
        #: While writes are paused, output is held in `out` instead of being written:
        #: `held` is how many of its items are counted and `held_bytes` their size,
        #: `out_counted` the bytes (held plus the transport's buffer) this connection
        #: adds to the server-wide total.
        self.held = 0
        self.held_bytes = 0
        self.out_counted = 0
        #: Reading paused for the server-wide input budget (Dispatcher.parked).
        self.parked = False
        #: Bytes read and dropped during a lingering close (close_with).
        self.lingered = 0
        self.mailbox: deque[Frame] | None = None
        self.out: list[bytes] = []
        self.scheduled = False
        #: On the Outbox's list of connections to write at the end of this iteration
        #: (set and cleared by the Outbox only: server/outbox.py).
        self.flush_pending = False
        self.reading_paused = False
        self.write_paused = False
        #: The connection is ending: set by close_with, by a half-close once answered, and
        #: by connection_lost. From then on nothing more runs or is queued for it, though
        #: its transport may still be writing what it was given.
        self.closing = False
        self.close_reason: CloseReason | None = None
        self.fatal: RemoteProtocolError | None = None
        #: The peer half-closed: close once what it already sent has been answered.
        self.eof = False
        #: The Context reused across this connection's sync handlers (see Dispatcher).
        self.ctx: Context | None = None
        self.rx_tick = self.opened_tick = server.tick
        #: The logged-in session (server/sessions.py), None before login and after logout.
        self.session: Session | None = None
        #: Frames received, and how many of them ran no handler (the auth gate refused
        #: them, or they were unknown, undecodable, badly flagged, shed): more frames than
        #: refusals means a public handler ran, which stops the auth timeout.
        self.frames = 0
        self.refused = 0
        #: Latest-value pushes waiting, by key, while too much is queued for the peer
        #: (writes paused, or over latest_queue_bytes), and their bytes; None while
        #: latest values go straight to `out` (server/push.py).
        self.latest: dict[Any, bytes] | None = None
        self.latest_bytes = 0
        #: This connection's kernel holds at most latest_queue_bytes unsent
        #: (TCP_NOTSENT_LOWAT) and its transport's high-water mark is 1 byte, so the
        #: transport's pause_writing says the queue is over that bound (latest values
        #: wait) and its resume_writing that it is under again (they go): see
        #: _gate_latest.
        self.latest_gate = False
        #: Where in `out` a reply_first handler's reply goes (-1: none running): what
        #: is queued behind it (the handler's pushes) is not written until the reply is.
        self.reply_hold = -1
        #: Sequence number of this connection in the server's life: ties open and close lines.
        self.id = 0
        self.write_paused_tick = 0
        self.closing_tick = 0
        #: Kept by the sweep alone (Server.sweep_once): the last tick it saw a session
        #: here, the tick it first saw the pending frame unfinished (-1: none pending),
        #: and the server Pings sent since the whole frame stamped `pinged_rx`.
        self.auth_tick = self.opened_tick
        self.partial_tick = -1
        self.pinged = 0
        self.pinged_rx = self.rx_tick

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport does not subclass asyncio.Transport, but has its methods.
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=self.server.budgets.prelogin_high_water)
        self.server.attach(self)

    def data_received(self, data: bytes) -> None:
        self.stats.bytes_in += len(data)
        # The fast path runs what it can of the read straight from the bytes; the decoder
        # and submit take the rest (usually nothing).
        dispatcher = self.dispatcher
        used = dispatcher.run_read(dispatcher, self, data)
        if used:
            # Only whole frames count as heard from (idle timeout, heartbeats): a byte at
            # a time must not keep a connection alive.
            self.rx_tick = self.server.tick
            if used == len(data):
                return
            data = data[used:]
        elif self.closing:
            # A lingering close (close_with): what the peer still sends is dropped, up to
            # LINGER_BYTES; a peer that keeps pouring past that is not reading anyway.
            self.lingered += len(data)
            if self.lingered > LINGER_BYTES:
                self.transport.abort()
            return
        decoder = self.decoder
        frames = decoder.feed(data)
        buffered = decoder.buffered
        grew = buffered - self.partial
        if grew:
            self.partial = buffered
            dispatcher.partial_bytes += grew
        if frames:
            self.rx_tick = self.server.tick
            self.frames += len(frames)
            self.stats.frames_in += len(frames)
            dispatcher.submit(self, frames)
        if grew > 0:
            if self.queued_bytes + buffered >= self.input_budget:
                # The mailbox and the partial frame fill this connection's budget: stop
                # reading until the mailbox drains (Dispatcher.run_connection resumes it).
                self.pause_reading()
            elif dispatcher.over_input_total():
                dispatcher.park(self)
        if decoder.error is not None and self.fatal is None:
            # Nothing after a framing error can be trusted: stop reading, answer the frames
            # before it, then send the error and close (mailbox_drained does the last part).
            self.fatal = decoder.error
            self.transport.pause_reading()
            if not self.scheduled:
                self.mailbox_drained()

    def eof_received(self) -> bool | None:
        """The peer will send nothing more (a half-close). Requests it already sent still
        get their replies: close once the mailbox has drained, not now."""
        if self.closing:
            return None  # a lingering close (close_with) ends here
        if self.out:
            # Output waiting for the end of the iteration (server/outbox.py) goes now:
            # returning None below closes the transport.
            self.flush(hold=False)
        if not self.scheduled and not self.mailbox:
            return None  # nothing owed: close our side too
        self.eof = True
        return True

    def pause_writing(self) -> None:
        if self.latest_gate:
            # The transport's buffer is no longer empty: latest_queue_bytes wait in the
            # kernel. Latest values wait from now on; writes pause only past the
            # session's high-water mark (here, or in a later flush).
            self.server.pusher.hold_latest(self)
            if self.transport.get_write_buffer_size() <= self.server.budgets.high_water:
                return
        self._pause_writes()

    def _pause_writes(self) -> None:
        # The peer is not reading what we send. The dispatcher stops draining this
        # connection, which soon stops reading it; output made meanwhile (pushes) is held in
        # `out` (flush); the sweep cuts it off (SLOW_CONSUMER) if it stays like that
        # for slow_consumer_timeout.
        self.write_paused = True
        self.write_paused_tick = self.server.tick
        self.stats.writes_paused += 1
        self.server.pusher.hold_latest(self)

    def resume_writing(self) -> None:
        self.write_paused = False
        self._uncount_output()
        if self.out:
            self.flush()  # what was held while paused goes first, in its order
        if self.latest is not None and not (
            self.latest_gate and self.transport.get_write_buffer_size()
        ):
            # Room again (for a gated connection: its transport's buffer is empty, so
            # at most latest_queue_bytes wait in the kernel): the newest of each key.
            self.server.pusher.release_latest(self)
        self.dispatcher.reschedule(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        dispatcher = self.dispatcher
        mailbox = self.mailbox
        if mailbox:
            dispatcher.pending -= len(mailbox)
            mailbox.clear()
        if self.close_reason is None:
            self.close_reason = (
                CloseReason.PEER_CLOSED if exc is None else CloseReason.CONNECTION_LOST
            )
        self.server.detach(self)
        # Give back what this connection counted in the server-wide budgets, and drop
        # every reference that could close a cycle through it (its Context points back
        # at it; a session is taken off by detach above), so that reference counting
        # alone frees it and its buffers (docs/internet.md, "Freed on close").
        dispatcher.release_input(self)
        self._uncount_output()
        self.out.clear()
        self.held = self.held_bytes = 0
        self.ctx = None
        if self.latest is not None:
            self.server.pusher.forget_latest(self)
        self.reply_hold = -1
        self.decoder = _CLOSED_DECODER

    # -- called by the dispatcher ------------------------------------------------------

    def flush(self, *, hold: bool = True) -> None:
        """Write what the dispatcher gathered for this connection, in one write.

        While writes are paused (and `hold`), the output stays in `out` instead: what the
        transport holds stays near its high-water mark, so the closing SLOW_CONSUMER frame
        queued behind it reaches a peer that reads at all (close_with drops what was held).
        """
        out = self.out
        if self.closing:
            out.clear()
            return
        if self.write_paused and hold:
            self._count_output()
            return
        before = self.reply_hold
        if before < 0:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
        else:
            # A reply_first handler is running: what was queued before it goes, what it
            # (or anyone) queued since waits for its reply (Dispatcher).
            if not before:
                return
            data = b"".join(out[:before])
            del out[:before]
            self.reply_hold = 0
        self.held = self.held_bytes = 0
        self.stats.bytes_out += len(data)
        transport = self.transport
        transport.write(data)
        # The transport calls pause_writing from inside write() once its buffer passes the
        # high-water mark, so only then can it also be past the output budget.
        if self.write_paused:
            self._count_output()
        elif (
            self.latest is not None
            and self.latest_gate
            and transport.get_write_buffer_size() > self.server.budgets.high_water
        ):
            # A gated connection's transport said pause_writing at its first buffered
            # byte; the session's high-water mark is checked here from then on.
            self._pause_writes()
            self._count_output()

    def _count_output(self) -> None:
        """Count this paused connection's output (what its transport has yet to send,
        plus what `out` holds) in the server-wide total, and cut it off when it passes its
        own budget or the server's. Only the items added to `out` since the last count
        are measured."""
        out = self.out
        if self.held < len(out):
            added = 0
            for item in out[self.held :]:
                added += len(item)
            self.held = len(out)
            self.held_bytes += added
        counted = self.transport.get_write_buffer_size() + self.held_bytes
        dispatcher = self.dispatcher
        dispatcher.output_bytes += counted - self.out_counted
        self.out_counted = counted
        if counted > self.output_budget:
            self.close_with(
                ErrorCode.SLOW_CONSUMER,
                f"the client reads too slowly; {counted} bytes wait for it, over its limit "
                f"of {self.output_budget}",
            )
        elif dispatcher.output_bytes > dispatcher.max_output_total:
            self.close_with(
                ErrorCode.SLOW_CONSUMER,
                "the client reads too slowly and the server's output budget is spent",
            )

    def _uncount_output(self) -> None:
        if self.out_counted:
            self.dispatcher.output_bytes -= self.out_counted
            self.out_counted = 0

    def set_session(self, session: Session | None) -> None:
        """Set the logged-in session (server/sessions.py), and with it the limits that
        apply: the full frame limit and budgets with a session, the pre-login ones
        without (docs/internet.md, "Byte budgets")."""
        self.session = session
        budgets = self.server.budgets
        if session is None:
            frame, high = budgets.prelogin_frame, budgets.prelogin_high_water
            self.input_budget = budgets.prelogin_input
            self.output_budget = budgets.prelogin_output
        else:
            frame, high = budgets.frame, budgets.high_water
            self.input_budget = budgets.input
            self.output_budget = budgets.output
        if self.closing:
            return
        # A partial frame already announced keeps the limit it was judged by.
        self.decoder.max_frame = frame
        gate = session is not None and self._gate_latest(budgets.latest_queue)
        self.latest_gate = gate
        self.transport.set_write_buffer_limits(high=1 if gate else high)
        if not gate and self.latest is not None and not self.write_paused:
            self.server.pusher.release_latest(self)

    def _gate_latest(self, bound: int) -> bool:
        """Bound the kernel's unsent bytes on this socket to `bound` (TCP_NOTSENT_LOWAT:
        past it a write leaves the rest in the transport's buffer), so that a byte in
        the transport's buffer means `bound` bytes wait for the peer. With the
        transport's high-water mark at 1 byte (low-water 0), its own pause_writing and
        resume_writing then say when latest values must wait and when they may go: no
        syscall, no test per write on a connection that keeps up, no timer. Only where
        the apps push latest-value types: the cap makes a slow reader's writes pause
        sooner. False (latest values wait only once writes pause) without the option
        (not Linux or macOS) or a socket, or with `bound` 0."""
        if not bound or not self.server.pusher.latest_keys:
            return False
        option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
        sock = self.transport.get_extra_info("socket")
        if option is None or sock is None:
            return False
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, bound)
        except (OSError, AttributeError):
            return False
        return True

    def mailbox_drained(self) -> None:
        """Called when the mailbox empties while a framing error or a half-close waits:
        everything owed has been answered, so now the connection ends."""
        if self.fatal is not None:
            self.close_with(self.fatal.code, self.fatal.message)
        elif self.eof and not self.closing:
            # The replies were flushed (or held, writes paused) just before this call;
            # closing lets them drain.
            if self.out:
                self.flush(hold=False)
            self.closing = True
            self.closing_tick = self.server.tick
            self.close_reason = CloseReason.PEER_CLOSED
            self.transport.close()

    def pause_reading(self) -> None:
        if not self.reading_paused and not self.closing:
            self.reading_paused = True
            self.stats.reads_paused += 1
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        # Not while draining for a stop: what is unread stays unread.
        if (
            self.reading_paused
            and not self.closing
            and self.fatal is None
            and self.server.accepting
        ):
            self.reading_paused = False
            self.stats.reads_resumed += 1
            self.transport.resume_reading()

    # -- closing ------------------------------------------------------------------------

    def close_with(
        self,
        code: int,
        message: str,
        *,
        goaway: bool = False,
        reconnect_after_ms: int = 0,
    ) -> None:
        """Send the closing Error (or GoAway) frame, then close: the typed way to end.

        The frame goes after whatever is already buffered, so a slow reader still gets it;
        a peer that reads nothing at all is aborted by the sweep after `close_grace`.
        """
        if self.closing:
            return
        self.close_reason = CloseReason.for_code(code)
        self.stats.count_error(code)
        if code == ErrorCode.SLOW_CONSUMER:
            # Output held for a peer that does not read is dropped, so the closing frame
            # comes right after what the transport already has (flush).
            self.out.clear()
            self.held = self.held_bytes = 0
        frame = (
            goaway_frame(code, message, reconnect_after_ms)
            if goaway
            else error_frame(code, message, 0, 0)
        )
        self.closing = True
        self.closing_tick = self.server.tick
        transport = self.transport
        if self.out:
            self.out.append(frame)
            frame = b"".join(self.out)
            self.out.clear()
        transport.write(frame)
        if (self.reading_paused or self.fatal is not None) and transport.can_write_eof():
            # Unread input may wait in the socket, and closing a socket with unread input
            # makes the kernel send RST and drop what it has not sent yet: this frame, most
            # of the time. So linger as nginx does (lingering_close): send FIN after the
            # frame, read and drop what the peer still sends until it closes its side
            # (eof_received), or the sweep aborts it after close_grace.
            transport.write_eof()
            transport.resume_reading()
        else:
            transport.close()

    @property
    def peer_ip(self) -> str:
        peer = self.peer
        return str(peer[0]) if peer else ""

    @property
    def peer(self) -> Any:
        return self.transport.get_extra_info("peername") if self.transport else None

    def __repr__(self) -> str:
        return f"<Connection {self.peer} closing={self.closing}>"


class TLSConnection(Connection):
    """A connection on a TLS listener; where uvloop's TLS transport differs from TCP.

    Its peer address is kept from the start: the TLS transport stops answering
    get_extra_info("peername") once it is closed, and the close is when the per-address
    count and the log line need it.

    TLS has no half-close: uvloop ends the connection once the peer's close_notify
    arrives, whatever eof_received returns, and drops (with a warning past the fifth)
    anything written after it. So the output gathered so far goes out, the connection
    counts as closed by its peer, and nothing more is written; requests still queued get
    no reply, as with a peer that reset the connection.
    """

    __slots__ = ("_peer",)

    def __init__(self, server: Server) -> None:
        super().__init__(server)
        self._peer: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._peer = transport.get_extra_info("peername")
        super().connection_made(transport)

    @property
    def peer(self) -> Any:
        return self._peer

    def _gate_latest(self, bound: int) -> bool:
        """Not over TLS: the TLS layer buffers on its own between the connection and the
        socket, so its buffer size does not say what the kernel holds; latest values
        wait once writes pause."""
        return False

    def eof_received(self) -> bool | None:
        if self.out:
            self.flush(hold=False)
        if not self.closing:
            self.closing = True
            self.closing_tick = self.server.tick
            self.close_reason = CloseReason.PEER_CLOSED
        return None


#: What a closed connection's `decoder` points at: the real one, and its partial frame,
#: go with the close.
_CLOSED_DECODER = FrameDecoder(named=False)
