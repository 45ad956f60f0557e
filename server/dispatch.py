"""The producer/consumer pool between connections and handlers.

Rules this module keeps:

- Producers are connections. A read that finds its connection idle (nothing queued or
  running, writes not paused, fewer than `mailbox_limit` frames, room under `max_pending`)
  runs at once, from data_received: queueing frames only to run them a moment later in
  the same order costs a mailbox, a ready queue and a call_soon, and buys nothing.
- Otherwise each decoded frame goes into its connection's mailbox, and a connection with
  work is put once on the `ready` queue. One drain per event-loop iteration (a single
  ``call_soon``, not one per frame) takes the ready connections in turn and runs their
  frames in arrival order. Either way a run stops at the first frame that must be
  awaited, or once writes pause, and the frames after it wait in the mailbox. A plain ``def``
  handler is called right there, inline. An ``async def`` or blocking handler takes the
  connection to one of `consumers` long-lived tasks, which awaits it and then goes on with
  that connection's next frames. So a connection's frames are answered in order, different
  connections proceed in parallel, and at most `consumers` handlers are awaited at once.
- Fairness: a consumer awaits at most `FAIR_TURN` frames of one connection in a row
  while other connections wait for a consumer; then it puts the connection back at the
  tail of the queue and takes the next one, so a connection pipelining slow requests
  cannot hold a consumer (and with 64 such connections, all of them). A drain turn runs
  one connection's sync frames up to its first awaited one: at most `mailbox_limit`
  frames, since reading stops there.
- Each read queued in a mailbox carries its arrival time (`Mailbox.arrivals`), and an
  awaited frame's Context gets it (`Context.arrived`), so the handler deadline counts the
  time the frame waited in the mailbox and the consumer queue: a request already past
  its deadline is answered TIMEOUT without running (middleware.Deadline).
- Handlers declared unordered are handed to a consumer on their own and the connection's
  next frames do not wait for them.
- A sync route whose chain is only the default layers (`Route.fused`) is called directly;
  the dispatcher counts the call and turns an exception into an Error reply itself, with
  the very function ErrorRecovery uses (middleware.handler_failed).
- Replies produced while draining one connection are written with one ``write`` (or one
  per 256 KiB, so a pause_writing can take effect in the middle of a long mailbox).
- A sync handler's Context is reused for the connection's next frame only when the
  refcount shows the handler kept no reference to it.
- A reply_first handler's reply goes in `conn.out` ahead of what was queued for the
  connection while it ran (its pushes): `Connection.reply_hold` marks the place, and a
  flush meanwhile (an awaited handler's, at the end of an iteration) writes only what
  is before it. No extra write: the held bytes leave with the reply.
- Backpressure: a connection whose mailbox holds `mailbox_limit` frames, or whose queued
  payloads and partial frame reach its input budget (`Connection.input_budget`), stops
  being read until it drains; a connection whose transport asks us to pause writing is not
  drained until it resumes; once `max_pending` frames or `max_input_total` bytes are
  queued server-wide, or a frame would take its connection past its budget, new frames
  are answered OVERLOADED (in their place in the order, payload dropped) instead of being
  queued. Byte counts are kept where frames are queued (submit) and where a run puts
  frames back (run_connection's rest), never per frame run.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from operator import length_hint
from sys import getrefcount
from time import monotonic
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError, Message

from protocol.errors import ErrorCode
from protocol.frame import HEADER, MIN_LENGTH, RESERVED_FLAGS, Flags, Frame
from protocol.proto.system_pb2 import Error
from protocol.system import ERROR_ID, MAX_ERROR_TEXT, clip_text, error_frame
from server import fastpath
from server.app import Context, Route
from server.middleware import INTERNAL_MESSAGE, SYNC_FAILURES, handler_failed

if TYPE_CHECKING:
    from server.connection import Connection
    from server.outbox import Outbox
    from server.stats import Stats

log = logging.getLogger("tickwire.dispatch")

_pack_header = HEADER.pack
_RESPONSE = int(Flags.RESPONSE)
_ERROR = int(Flags.ERROR)
#: Flags a client may not send: reserved bits; RESPONSE, ERROR and PUSH, which only the
#: server sends; and COMPRESSED, valid only once a handshake agreed on it (none offers it yet).
_REQUEST_BAD_FLAGS = RESERVED_FLAGS | int(
    Flags.COMPRESSED | Flags.RESPONSE | Flags.ERROR | Flags.PUSH
)
#: Internal flag value (outside u8, so never from the wire) for "answer OVERLOADED".
_OVERLOADED = 0x100
#: One test on the hot path catches both: a flag the client may not send, or OVERLOADED.
_NOT_RUNNABLE = _REQUEST_BAD_FLAGS | _OVERLOADED

AsyncWork = tuple[Route, Context, Message]

#: What a connection may queue past its input budget: the read that reached the budget
#: (uvloop reads at most 256 KiB at a time), which is in memory anyway. Reading pauses at
#: the budget, so a connection sheds only a read larger than this; the server sheds at its
#: own budget, with no slack.
READ_SLACK = 256 * 1024

#: The text of the INTERNAL answering a reply too large for max_frame.
OVERSIZED_MESSAGE = "reply too large for max_frame"


#: Awaited frames of one connection a consumer runs in a row while others wait for it.
FAIR_TURN = 4


class Mailbox(deque[Frame]):
    """A connection's queued frames, and when each read's frames arrived: `arrivals`
    holds [frames, time.monotonic()] per queued read, oldest first, covering the
    mailbox front to back (frames put back after a run are the oldest, still covered)."""

    __slots__ = ("arrivals",)

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: deque[list[Any]] = deque()

    def arrived(self, index: int) -> float:
        """When the frame at `index` of the mailbox (as it was when a run took it) arrived."""
        for count, stamp in self.arrivals:
            if index < count:
                return float(stamp)
            index -= count
        return monotonic()  # not stamped (not queued through submit): count from now

    def taken(self, frames: int) -> None:
        """Forget the arrival times of the first `frames` frames (run or refused)."""
        arrivals = self.arrivals
        while frames > 0 and arrivals:
            head = arrivals[0]
            if head[0] > frames:
                head[0] -= frames
                return
            frames -= head[0]
            arrivals.popleft()


#: The refcount of a reused Context nobody kept; anything above means a handler kept it.
#: run_connection is interpreted Python, so it takes the figure fastpath measures when
#: it runs interpreted (the compiled build counts differently).
_UNKEPT = (fastpath.load_pure() if fastpath.COMPILED else fastpath).UNKEPT
FLUSH_BYTES = fastpath.FLUSH_BYTES


class Dispatcher:
    def __init__(
        self,
        routes: dict[int, Route],
        message_id: Callable[[type[Message]], int | None],
        stats: Stats,
        outbox: Outbox,
        *,
        consumers: int,
        mailbox_limit: int,
        max_pending: int,
        max_input_total: int = 1 << 62,
        max_output_total: int = 1 << 62,
        max_frame: int = 0xFFFFFFFF,
        fast_path: str = "auto",
    ) -> None:
        self.routes = routes
        #: The read fast path, called as run_read(dispatcher, conn, data) from
        #: Connection.data_received; `build` says which build of it runs.
        loaded = fastpath.load(fast_path)
        self.run_read: Callable[[Dispatcher, Connection, bytes], int] = loaded.run_read
        self.build = "compiled" if loaded.COMPILED else "interpreted"
        #: A reply class's message ID, from the registry in use (it follows a reload).
        self._id_of = message_id
        self.stats = stats
        self.mailbox_limit = mailbox_limit
        self.resume_below = max(1, mailbox_limit // 2)
        self.max_pending = max_pending
        #: Largest reply body that fits a frame the peer accepts (max_frame holds both
        #: ways: docs/protocol.md, "Frame"); a bigger reply becomes an INTERNAL error instead.
        self.max_body = max_frame - MIN_LENGTH
        self.pending = 0
        #: Server-wide input budget: payload bytes in mailboxes, plus partial frames in
        #: decoders (Connection.data_received counts those).
        self.max_input_total = max_input_total
        self.queued_bytes = 0
        self.partial_bytes = 0
        #: Connections whose reading paused because a partial frame grew while the server
        #: was over its input budget; resumed once it is back under it.
        self.parked: list[Connection] = []
        #: Server-wide output budget: bytes waiting for write-paused connections
        #: (Connection._count_output keeps it).
        self.max_output_total = max_output_total
        self.output_bytes = 0
        #: Routes whose oversized reply has been logged: one line per route, not per request.
        self._oversized_logged: set[str] = set()
        self.ready: deque[Connection] = deque()
        self._drain_scheduled = False
        #: Where run_read's replies wait for the end of the loop iteration.
        self.outbox = outbox
        # Work for consumers: ordered connections paused on an awaited frame, and
        # unordered frames that run on their own.
        self._ordered: deque[tuple[Connection, AsyncWork]] = deque()
        self._unordered: deque[tuple[Connection, AsyncWork]] = deque()
        self._idle: deque[asyncio.Future[None]] = deque()
        self._consumer_count = consumers
        self._consumers: list[asyncio.Task[None]] = []
        self.busy = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._consumers = [
            loop.create_task(self._consume(), name=f"tickwire-consumer-{i}")
            for i in range(self._consumer_count)
        ]

    async def stop(self) -> None:
        for task in self._consumers:
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        self._consumers = []

    @property
    def in_flight(self) -> int:
        """Frames queued plus handlers being awaited: zero means every reply has been written."""
        return self.pending + self.busy

    # -- producer side (called from Connection.data_received) ---------------------------

    def submit(self, conn: Connection, frames: list[Frame]) -> None:
        count = len(frames)
        if (
            not conn.scheduled
            and not conn.mailbox
            and not conn.write_paused
            and not conn.closing
            and count < self.mailbox_limit
            and self.pending + count <= self.max_pending
        ):
            # Nothing of this connection is queued or running, so these frames are next in
            # its order: run them now, from data_received, instead of queueing them for the
            # drain (mailbox, ready queue, call_soon). run_connection stops at the first
            # frame that must be awaited or cannot go on (writes paused, closed) and puts
            # the rest in the mailbox, as the path below would have queued them. A read
            # that would fill the mailbox, or the server's queue, takes the path below, so
            # it pauses reading or is answered OVERLOADED.
            self.pending += count
            conn.scheduled = True
            work = self.run_connection(conn, frames)
            if work is not None:
                self._ordered.append((conn, work))
                self._wake()
            return
        # Connection.mailbox is typed as the deque it is; this module makes them all Mailboxes.
        mailbox: Mailbox | None = conn.mailbox  # type: ignore[assignment]
        if mailbox is None:
            mailbox = conn.mailbox = Mailbox()
        size = 0
        for frame in frames:
            size += len(frame[3])
        room = self.max_pending - self.pending
        # Bytes this read may queue: what is left of the connection's budget (its partial
        # frame included) plus one read, and of the server's.
        byte_room = min(
            conn.input_budget + READ_SLACK - conn.queued_bytes - conn.partial,
            self.max_input_total - self.queued_bytes - self.partial_bytes,
        )
        if count > room or size > byte_room:
            kept = 0
            size = 0
            for frame in frames:
                if kept == room or size + len(frame[3]) > byte_room:
                    break
                size += len(frame[3])
                kept += 1
            self.stats.overloaded += count - kept
            conn.pause_reading()  # at its budget (or the server at its own)
            # Answered in their place, not run: keep (msg_id, seq), drop the payload.
            frames = frames[:kept] + [
                Frame(msg_id, _OVERLOADED, seq, b"") for msg_id, _, seq, _ in frames[kept:]
            ]
        mailbox.extend(frames)
        mailbox.arrivals.append([count, monotonic()])
        self.pending += count
        conn.queued_bytes += size
        self.queued_bytes += size
        if (
            len(mailbox) >= self.mailbox_limit
            or conn.queued_bytes + conn.partial >= conn.input_budget
        ):
            conn.pause_reading()
        if not conn.scheduled:
            self._schedule(conn)

    def reschedule(self, conn: Connection) -> None:
        """Put a connection back on the ready queue (its writes resumed, say)."""
        if conn.mailbox and not conn.scheduled:
            self._schedule(conn)

    def _schedule(self, conn: Connection) -> None:
        conn.scheduled = True
        self.ready.append(conn)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        ready = self.ready
        while ready:
            conn = ready.popleft()
            work = self.run_connection(conn)
            if work is not None:
                self._ordered.append((conn, work))
                self._wake()

    # -- the per-connection run ---------------------------------------------------------

    def run_connection(
        self, conn: Connection, batch: list[Frame] | None = None
    ) -> AsyncWork | None:
        """Run `conn`'s frames in order until none is left or a frame must be awaited.
        Returns that awaited frame's work (the connection stays scheduled), else None.

        The frames are `batch` when submit runs a fresh read inline (the mailbox is empty
        then), else the mailbox's. Either way they are taken out as one list and walked
        with a list iterator, which costs less per frame than deque.popleft; whatever is
        not run (after an awaited frame, or once writes pause or the connection closes)
        goes back into the mailbox, in order. Nothing can add to the mailbox meanwhile:
        only data_received does, and it does not run during a handler.
        """
        mailbox: Mailbox | None = conn.mailbox  # type: ignore[assignment]
        # Where an awaited frame's arrival time comes from: the mailbox's stamps, or now
        # for a fresh read run inline.
        stamped = batch is None and mailbox is not None
        # Payload bytes of the frames taken from the mailbox (none for a fresh read).
        taken = 0
        if batch is None:
            # The mailbox is None when everything so far ran inline (a consumer calls back
            # after an awaited frame that had no successors).
            batch = [*mailbox] if mailbox else []
            if mailbox:
                mailbox.clear()
                taken = conn.queued_bytes
        queued = len(batch)
        frames = iter(batch)
        out = conn.out
        append = out.append
        get_route = self.routes.get
        pack = _pack_header
        not_runnable = _NOT_RUNNABLE
        min_length = MIN_LENGTH
        response = _RESPONSE
        unkept = _UNKEPT
        refcount = getrefcount
        max_body = self.max_body
        work: AsyncWork | None = None
        out_bytes = 0
        rest: list[Frame] | None = None
        for frame in frames:
            if conn.write_paused or conn.closing:
                rest = [frame, *frames]
                break
            msg_id, flags, seq, payload = frame
            route = get_route(msg_id)
            if route is None or flags & not_runnable:
                conn.refused += 1  # ran no handler: does not stop the auth timeout
                append(self._refuse(msg_id, flags, seq))
                continue
            try:
                msg = route.parse(payload)
            except DecodeError:
                conn.refused += 1
                append(self._undecodable(route, seq, payload))
                continue
            if route.awaited:
                own = Context(conn, msg_id, flags, seq)
                if stamped:
                    index = queued - length_hint(frames) - 1
                    own.arrived = mailbox.arrived(index)  # type: ignore[union-attr]
                else:
                    own.arrived = monotonic()
                if route.ordered:
                    work = (route, own, msg)
                    rest = [*frames]
                    break
                self._unordered.append((conn, (route, own, msg)))
                self._wake()
                continue
            if route.reply_first:
                data = self._reply_first(conn, route, msg, msg_id, flags, seq)
                if data is None:
                    continue
                out_bytes += len(data)
                if out_bytes >= FLUSH_BYTES:
                    conn.flush()
                    out_bytes = 0
                continue
            # A sync handler is done with its Context when it returns, unless it kept a
            # reference; the refcount tells, and only an unkept one is reused.
            ctx = conn.ctx
            if ctx is None:
                ctx = conn.ctx = Context(conn, msg_id, flags, seq)
            else:
                ctx.msg_id = msg_id
                ctx.flags = flags
                ctx.seq = seq
            reply: Any
            if route.fused:
                # The default layers, inline (Route.fused): count, call, recover.
                route.calls += 1
                try:
                    reply = route.handler(ctx, msg)
                except SYNC_FAILURES as exc:
                    reply = handler_failed(route, exc)
            else:
                try:
                    reply = route.call(ctx, msg)
                except SYNC_FAILURES as exc:  # a layer outside ErrorRecovery raised; go on
                    reply = self._layer_failed(route, ctx, exc)
            if refcount(ctx) > unkept:
                conn.ctx = None
            if type(reply) is route.reply_type and seq:
                # The common case, inline: the route's usual reply type, id known.
                try:
                    body = reply.SerializeToString()
                except Exception:  # a proto2 reply missing a required field, say
                    append(self.unencodable(route, seq))
                    continue
                size = len(body)
                if size > max_body:
                    append(self.oversized(route, seq, size))
                    continue
                out_bytes += size
                append(pack(min_length + size, route.reply_id, response, seq) + body)
            elif reply is not None:
                data = self.encode_reply(reply, seq, route)
                if data is None:
                    continue
                append(data)
                out_bytes += len(data)
            else:
                continue
            if out_bytes >= FLUSH_BYTES:
                # Write in slices, so pause_writing can stop us before the transport
                # buffer grows by a whole mailbox of replies.
                conn.flush()
                out_bytes = 0
        left = 0
        if rest:
            left = len(rest)
            if mailbox is None:
                mailbox = conn.mailbox = Mailbox()
            if taken:
                self._requeued(conn, batch, taken, left)
            else:
                rest = self._queue_rest(conn, rest)
            mailbox.extend(rest)
        elif taken:
            conn.queued_bytes = 0
            self.queued_bytes -= taken
            if self.parked:
                self._unpark()
        if stamped:
            mailbox.taken(queued - left)  # type: ignore[union-attr]
        elif left:
            mailbox.arrivals.append([left, monotonic()])  # type: ignore[union-attr]
        self.pending -= queued - left
        if out:
            conn.flush()
        if work is None:
            # Done, closed, or writes paused (resume_writing reschedules it).
            conn.scheduled = False
            if not left and (conn.fatal is not None or conn.eof):
                conn.mailbox_drained()
        if (
            conn.reading_paused
            and left < self.resume_below
            and conn.queued_bytes <= conn.input_budget // 2
            and not conn.parked
        ):
            conn.resume_reading()
        return work

    # -- byte budgets -------------------------------------------------------------------

    def _queue_rest(self, conn: Connection, rest: list[Frame]) -> list[Frame]:
        """What of a read run inline (submit) goes into the mailbox: the frames after an
        awaited one, or after writes paused. They are counted as submit counts what it
        queues, and past the connection's or the server's budget answered OVERLOADED."""
        size = 0
        for frame in rest:
            size += len(frame[3])
        room = min(
            conn.input_budget + READ_SLACK - conn.partial,
            self.max_input_total - self.queued_bytes - self.partial_bytes,
        )
        if size > room:
            kept = 0
            size = 0
            for frame in rest:
                if size + len(frame[3]) > room:
                    break
                size += len(frame[3])
                kept += 1
            self.stats.overloaded += len(rest) - kept
            conn.pause_reading()  # at its budget (or the server at its own)
            rest = rest[:kept] + [
                Frame(msg_id, _OVERLOADED, seq, b"") for msg_id, _, seq, _ in rest[kept:]
            ]
        conn.queued_bytes = size
        self.queued_bytes += size
        if size + conn.partial >= conn.input_budget:
            conn.pause_reading()
        return rest

    def _requeued(self, conn: Connection, batch: list[Frame], taken: int, left: int) -> None:
        """Count the payload bytes of the `left` frames a run put back in the mailbox (the
        tail of `batch`, of which `taken` bytes were queued before). It sums the shorter
        side, the frames run or the frames left, so draining a mailbox one awaited frame
        at a time costs a frame's length per run, not the whole mailbox's."""
        ran = len(batch) - left
        if ran < left:
            done = 0
            for frame in batch[:ran]:
                done += len(frame[3])
            rest_bytes = taken - done
        else:
            rest_bytes = 0
            for frame in batch[ran:]:
                rest_bytes += len(frame[3])
        conn.queued_bytes = rest_bytes
        self.queued_bytes += rest_bytes - taken
        if rest_bytes >= conn.input_budget:
            conn.pause_reading()
        elif rest_bytes < taken and self.parked:
            self._unpark()

    def over_input_total(self) -> bool:
        return self.queued_bytes + self.partial_bytes > self.max_input_total

    def park(self, conn: Connection) -> None:
        """Stop reading `conn`, whose partial frame grew while the server is over its
        input budget, until the server is back under it."""
        if not conn.parked and not conn.closing:
            conn.parked = True
            conn.pause_reading()
            self.parked.append(conn)

    def _unpark(self) -> None:
        # Under the budget, not under some lower mark: a parked connection's own partial
        # frame counts, and it can only complete by reading.
        if self.queued_bytes + self.partial_bytes >= self.max_input_total:
            return
        parked = self.parked
        self.parked = []
        for conn in parked:
            conn.parked = False
            if not conn.mailbox:
                conn.resume_reading()

    def release_input(self, conn: Connection) -> None:
        """Give back what a closed connection counted in the server-wide input total."""
        self.queued_bytes -= conn.queued_bytes
        self.partial_bytes -= conn.partial
        conn.queued_bytes = conn.partial = 0
        if conn.parked:
            conn.parked = False
            self.parked.remove(conn)
        if self.parked:
            self._unpark()

    def _reply_first(
        self, conn: Connection, route: Route, msg: Message, msg_id: int, flags: int, seq: int
    ) -> bytes | None:
        """Run a sync reply_first handler: what it pushes to this connection waits in
        `out` behind the place its reply then takes (Connection.reply_hold keeps a
        flush from writing it first). Off the inline path, which it would cost a test per
        frame; its Context is its own. Returns the reply frame queued, if any."""
        ctx = Context(conn, msg_id, flags, seq)
        conn.reply_hold = len(conn.out)
        reply: Any
        try:
            try:
                reply = route.call(ctx, msg)
            except SYNC_FAILURES as exc:
                reply = self._layer_failed(route, ctx, exc)
            data = None if reply is None else self.encode_reply(reply, seq, route)
            if data is not None and not conn.closing:
                conn.out.insert(conn.reply_hold, data)
            return data
        finally:
            conn.reply_hold = -1

    @staticmethod
    def _layer_failed(route: Route, ctx: Context, exc: BaseException) -> Error:
        log.error("the chain of %s raised", route.name, exc_info=exc)
        route.errors += 1
        return Error(code=ErrorCode.INTERNAL, message=INTERNAL_MESSAGE, request_msg_id=ctx.msg_id)

    def _refuse(self, msg_id: int, flags: int, seq: int) -> bytes:
        """The Error frame for a frame that cannot run: bad flags, OVERLOADED, no handler."""
        if flags == _OVERLOADED:
            code, text = ErrorCode.OVERLOADED, "server is over its queue limit"
        elif flags & _REQUEST_BAD_FLAGS:
            code = ErrorCode.BAD_FLAGS
            text = f"flags 0x{flags:02x} are reserved or not valid on a request"
        else:
            code, text = ErrorCode.UNKNOWN_MESSAGE, f"no handler for message id {msg_id}"
        self.stats.count_error(code)
        return error_frame(code, text, msg_id, seq)

    def _undecodable(self, route: Route, seq: int, payload: bytes) -> bytes:
        self.stats.count_error(ErrorCode.DECODE_ERROR)
        return error_frame(
            ErrorCode.DECODE_ERROR,
            f"payload of {len(payload)} bytes is not a valid {route.name}",
            route.msg_id,
            seq,
        )

    def _internal(
        self, route: Route, seq: int, why: str, *args: object, exc_info: bool = False
    ) -> bytes:
        """INTERNAL for a handler result that cannot be sent: the log says why, the wire
        says nothing of the handler's internals."""
        log.error("handler for %s " + why, route.name, *args, exc_info=exc_info)
        route.errors += 1
        self.stats.count_error(ErrorCode.INTERNAL)
        return error_frame(ErrorCode.INTERNAL, INTERNAL_MESSAGE, route.msg_id, seq)

    def unencodable(self, route: Route, seq: int) -> bytes:
        """INTERNAL for a reply whose SerializeToString raised; call it from the except
        block, so the log line carries the encoder's exception."""
        return self._internal(route, seq, "returned a reply that cannot be encoded", exc_info=True)

    def oversized(self, route: Route, seq: int, size: int) -> bytes:
        """INTERNAL, with the text OVERSIZED_MESSAGE, for a reply larger than max_frame
        allows. It is logged once per route, then counted (Stats.oversized_replies): a peer
        that can make a handler's reply grow must not make the log grow with it."""
        route.errors += 1
        self.stats.oversized_replies += 1
        self.stats.count_error(ErrorCode.INTERNAL)
        if route.name not in self._oversized_logged:
            self._oversized_logged.add(route.name)
            log.error(
                "handler for %s returned a %d-byte reply; max_frame allows %d "
                "(logged once per message type; Stats.oversized_replies counts every one)",
                route.name,
                size,
                self.max_body,
            )
        return error_frame(ErrorCode.INTERNAL, OVERSIZED_MESSAGE, route.msg_id, seq)

    def encode_reply(self, reply: Any, seq: int, route: Route) -> bytes | None:
        """The frame for a handler's return value: its reply, an Error (ERROR flag), or for a
        notification (seq 0) nothing, unless it failed, then an unsolicited Error. Never
        raises: whatever a handler returned, the drain and the consumers go on."""
        cls = type(reply)
        msg_id = self._id_of(cls) if isinstance(reply, Message) else None
        if msg_id is None:
            name = getattr(getattr(cls, "DESCRIPTOR", None), "full_name", cls.__qualname__)
            return self._internal(route, seq, "returned %s, not a registered message", name)
        if msg_id == ERROR_ID:
            self.stats.count_error(reply.code)
            if len(reply.message) * 4 > MAX_ERROR_TEXT:
                reply.message = clip_text(reply.message)
            flags = _ERROR | _RESPONSE if seq else _ERROR
        elif not seq:
            return None
        else:
            flags = _RESPONSE
            # Learn the route's usual reply type, so the next one takes the inline path.
            route.reply_type = cls
            route.reply_id = msg_id
        try:
            payload: bytes = reply.SerializeToString()
        except Exception:  # a proto2 message missing required fields, say
            return self.unencodable(route, seq)
        if len(payload) > self.max_body:
            return self.oversized(route, seq, len(payload))
        return _pack_header(MIN_LENGTH + len(payload), msg_id, flags, seq) + payload

    # -- consumer side ------------------------------------------------------------------

    def _wake(self) -> None:
        idle = self._idle
        while idle:
            waiter = idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        ordered = self._ordered
        unordered = self._unordered
        item: AsyncWork | None = None
        while True:
            if not ordered and not unordered:
                # Hold nothing of the last item while idle: its connection may have closed,
                # and must be freed by reference counting (docs/internet.md).
                conn = work = None
                item = None
                waiter: asyncio.Future[None] = loop.create_future()
                self._idle.append(waiter)
                await waiter
                continue
            if ordered:
                conn, work = ordered.popleft()
                item = work
                turn = FAIR_TURN
                while item is not None:
                    if conn.closing:  # gone while it waited: run nothing more for it
                        self.run_connection(conn)
                        break
                    await self._run_awaited(conn, item, ordered=True)
                    item = self.run_connection(conn)
                    turn -= 1
                    if item is not None and turn <= 0 and ordered:
                        # Others are waiting: back to the tail (still scheduled, so its
                        # new frames queue behind this one).
                        ordered.append((conn, item))
                        break
            else:
                conn, work = unordered.popleft()
                if conn.closing:
                    continue
                await self._run_awaited(conn, work, ordered=False)
                if conn.out:
                    conn.flush()

    async def _run_awaited(self, conn: Connection, work: AsyncWork, *, ordered: bool) -> None:
        route, ctx, msg = work
        # A reply_first handler (always ordered): from here until its reply is queued,
        # flushes write only what `out` held before it, across its awaits too; pushes to
        # this connection meanwhile, the handler's or anyone's, wait behind its reply.
        first = route.reply_first and not conn.closing
        if first:
            conn.reply_hold = len(conn.out)
        self.busy += 1
        try:
            reply = await route.call(ctx, msg)
        except asyncio.CancelledError:
            if first:
                conn.reply_hold = -1
            raise
        except Exception as exc:  # a layer outside ErrorRecovery raised; keep the consumer
            reply = self._layer_failed(route, ctx, exc)
        finally:
            self.busy -= 1
        try:
            if conn.closing or reply is None:
                return
            data = self.encode_reply(reply, ctx.seq, route)
            if data is None:
                return
            if first:
                conn.out.insert(conn.reply_hold, data)
            else:
                conn.out.append(data)
        finally:
            if first:
                conn.reply_hold = -1
            # Right behind the reply, before the connection's next frame runs: a Login's
            # or Resume's held pushes (Context.after_reply).
            hook = ctx.after_reply
            if hook is not None:
                ctx.after_reply = None
                hook()
