"""The async client: one connection, many requests in flight, pushes, clean close.

It speaks PROTOCOL.md through the same sans-I/O codec as the server and never imports the
server. Requests written in one event-loop iteration go out in one write, as replies do on
the server side, so a pipelining client does not pay a syscall per request.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from google.protobuf.message import DecodeError, Message

from client_sdk.errors import ConnectionClosed, ServerError, UnexpectedReply, server_error
from protocol.errors import LocalProtocolError, RemoteProtocolError, closes_connection
from protocol.frame import (
    DEFAULT_MAX_FRAME,
    MAX_SEQ,
    MIN_LENGTH,
    Flags,
    Frame,
    FrameDecoder,
    encode_frame,
)
from protocol.proto.system_pb2 import (
    DescribeReply,
    Error,
    GoAway,
    Hello,
    Ping,
    Welcome,
)
from protocol.registry import MessageRegistry, system_registry

log = logging.getLogger("tickwire.client")
M = TypeVar("M", bound=Message)
_RESPONSE = int(Flags.RESPONSE)
_ERROR = int(Flags.ERROR)
_PUSH = int(Flags.PUSH)
_GOAWAY_ID = 30
_HELLO_ID = 4
PROTOCOL_VERSION = 1
_PING_ID = 1
_DESCRIBE_ID = 20
_ERROR_ID = 3


class Push(NamedTuple):
    """A server-initiated message: `seq` is its place in the session's push sequence."""

    message: Message
    msg_id: int
    seq: int


PushCallback = Callable[[Push], Any]


@dataclass(frozen=True)
class Reconnect:
    """How AsyncClient gets its connection back after it drops or the server says GoAway.

    The first attempt waits the GoAway's reconnect_after_ms when there was one, else
    `initial`; each failed attempt doubles the wait up to `maximum`. Every wait is
    jittered (half fixed, half random) so a thousand clients dropped together do not
    come back in one wave. `attempts` bounds the tries (None: keep trying); when they
    run out the client closes for good.
    """

    initial: float = 0.05
    maximum: float = 5.0
    attempts: int | None = None

    def jittered(self, delay: float) -> float:
        return delay / 2 + random.uniform(0, delay / 2)


ReconnectCallback = Callable[["AsyncClient"], Awaitable[None] | None]


class _Wire(asyncio.Protocol):
    """The asyncio side of AsyncClient: bytes in, frames to the client. One per
    connection: after a reconnect, the old one's late events are ignored."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.transport: asyncio.BaseTransport | None = None

    @property
    def current(self) -> bool:
        return self.transport is not None and self.client._transport is self.transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.client._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.current:
            return
        client = self.client
        frames = client._decoder.feed(data)
        for frame in frames:
            client._on_frame(frame)
        if client._decoder.error is not None:
            client._fail(ConnectionClosed(f"server broke the protocol: {client._decoder.error}"))
            if client._transport is not None:
                client._transport.abort()

    def pause_writing(self) -> None:
        if self.current:
            self.client._writable.clear()

    def resume_writing(self) -> None:
        if self.current:
            self.client._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.current:
            return
        self.client._transport = None
        self.client._fail(
            ConnectionClosed("connection closed" if exc is None else f"connection lost: {exc}")
        )


class AsyncClient:
    """Connect with ``await AsyncClient.connect(host, port)`` or ``async with``."""

    def __init__(
        self,
        registry: MessageRegistry | None = None,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self.registry = registry or system_registry()
        self._decoder = FrameDecoder(max_frame)
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._next_seq = 1
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._push_callbacks: dict[type[Message], list[PushCallback]] = {}
        self._observers: list[Callable[[Frame], Any]] = []
        self._push_queues: list[asyncio.Queue[Push | None]] = []
        #: Why the current connection ended (None while it is up).
        self._down: ConnectionClosed | None = None
        self._up = asyncio.Event()
        self._up.set()
        #: Set when the client is closed for good (by close(), or no reconnect).
        self._closed: ConnectionClosed | None = None
        self._closed_event = asyncio.Event()
        self._address: tuple[str, int] = ("", 0)
        self._connect_timeout = 10.0
        self._reconnect: Reconnect | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._reconnect_callbacks: list[ReconnectCallback] = []
        self._user_closed = False
        #: Connections re-established so far.
        self.reconnects = 0
        #: The GoAway the server sent before closing, if it did.
        self.goaway: GoAway | None = None
        #: Unsolicited Error frames (seq 0), newest last: failed notifications, closes.
        self.errors: list[ServerError] = []
        #: Pushes of a type this client's registry does not know (skipped, not fatal).
        self.unknown_pushes = 0
        #: The server's Welcome, once hello() has run.
        self.welcome: Welcome | None = None
        self._max_request = 0

    # -- connecting and closing -----------------------------------------------------

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        registry: MessageRegistry | None = None,
        *,
        timeout: float = 10.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        reconnect: Reconnect | None = None,
    ) -> AsyncClient:
        """Connect once (failing here if the server is not there); with `reconnect`, the
        client then gets its connection back by itself whenever it drops."""
        client = cls(registry, max_frame=max_frame)
        client._address = (host, port)
        client._connect_timeout = timeout
        client._reconnect = reconnect
        await client._open()
        return client

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder(self._decoder.max_frame)
        async with asyncio.timeout(self._connect_timeout):
            await loop.create_connection(lambda: _Wire(self), *self._address)

    def on_reconnect(self, callback: ReconnectCallback) -> None:
        """Run `callback(client)` (sync or async) each time the connection is back, before
        requests waiting for it go out: where a session gets resumed."""
        self._reconnect_callbacks.append(callback)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def close(self) -> None:
        """Flush what is queued, close, and fail requests still waiting."""
        self._user_closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            self._flush()
            transport.close()
        self._fail(ConnectionClosed("client closed the connection"))
        self._finish()
        await self._closed_event.wait()

    async def wait_closed(self) -> ConnectionClosed:
        await self._closed_event.wait()
        assert self._closed is not None
        return self._closed

    # -- requests -------------------------------------------------------------------

    async def request(self, message: Message, *, timeout: float | None = 30.0) -> Message:
        """Send `message` and return the typed reply; an Error reply raises ServerError."""
        msg_id = self.registry.id_of(message)
        frame = await self.roundtrip(msg_id, message.SerializeToString(), timeout=timeout)
        try:
            return self.registry.decode(frame.msg_id, frame.payload)
        except RemoteProtocolError as exc:
            raise UnexpectedReply(f"reply to seq {frame.seq}: {exc.message}") from None

    async def roundtrip(
        self,
        msg_id: int,
        payload: bytes,
        *,
        timeout: float | None = 30.0,
        raise_errors: bool = True,
    ) -> Frame:
        """Send one request frame and return its reply frame undecoded. An Error reply
        raises ServerError, or with `raise_errors=False` comes back as the frame (tools
        that show every reply's header). For tools that work below the registry."""
        if self._closed is not None:
            raise self._closed
        # Reconnecting, or the reconnect callbacks (a Resume) still run: wait for the
        # connection within the request's own timeout. The callbacks' own requests come
        # from the reconnect task and go straight out.
        if (
            self._down is not None or not self._up.is_set()
        ) and asyncio.current_task() is not self._reconnecting:
            async with asyncio.timeout(timeout):
                while self._down is not None or not self._up.is_set():
                    await self._up.wait()
                    if self._closed is not None:
                        raise self._closed
                    if self._down is not None:
                        self._up.clear()  # dropped again: wait for the next one
        if not self._writable.is_set():
            # The server is not reading: wait for room, within the request's own timeout;
            # a connection that ends meanwhile wakes us (see _fail).
            async with asyncio.timeout(timeout):
                await self._writable.wait()
            if self._closed is not None:
                raise self._closed
            if self._down is not None:
                raise self._down
        if self._max_request and MIN_LENGTH + len(payload) > self._max_request:
            raise LocalProtocolError(
                f"a {len(payload)}-byte payload passes the server's max_frame "
                f"({self._max_request}); the server would close the connection"
            )
        seq = self._take_seq()
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        self._send(encode_frame(msg_id, 0, seq, payload))
        try:
            async with asyncio.timeout(timeout):
                frame = await future
        finally:
            self._pending.pop(seq, None)
        if raise_errors and frame.flags & _ERROR:
            try:
                err = Error.FromString(frame.payload)
            except DecodeError:
                raise UnexpectedReply(f"reply to seq {seq}: undecodable Error payload") from None
            raise server_error(err.code, err.message, err.request_msg_id)
        return frame

    async def call(
        self, message: Message, reply_type: type[M], *, timeout: float | None = 30.0
    ) -> M:
        """`request` with the reply's type checked, for typed code."""
        reply = await self.request(message, timeout=timeout)
        if not isinstance(reply, reply_type):
            raise TypeError(
                f"expected {reply_type.DESCRIPTOR.full_name}, got {reply.DESCRIPTOR.full_name}"
            )
        return reply

    def notify(self, message: Message) -> None:
        """Send a one-way message (seq 0): no reply; a failure arrives in `errors`. While
        the connection is down it raises: a notification is not queued for later."""
        if self._closed is not None:
            raise self._closed
        if self._down is not None:
            raise self._down
        self._send(encode_frame(self.registry.id_of(message), 0, 0, message.SerializeToString()))

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (debugging, protocol tests)."""
        if self._closed is not None:
            raise self._closed
        self._send(data)

    async def ping(self, *, timeout: float | None = 10.0) -> float:
        """Round-trip time in seconds."""
        start = time.perf_counter_ns()
        ping = Ping(client_time_ns=time.time_ns()).SerializeToString()
        await self.roundtrip(_PING_ID, ping, timeout=timeout)
        return (time.perf_counter_ns() - start) / 1e9

    async def hello(self, client_name: str = "", *, timeout: float | None = 10.0) -> Welcome:
        """The handshake: tell the server who we are, learn its limits. Afterwards a request
        bigger than the server's max_frame fails here, before it is sent, instead of
        costing the connection (FRAME_TOO_LARGE closes it)."""
        hello = Hello(protocol_version=PROTOCOL_VERSION, client_name=client_name)
        frame = await self.roundtrip(_HELLO_ID, hello.SerializeToString(), timeout=timeout)
        self.welcome = Welcome.FromString(frame.payload)
        self._max_request = self.welcome.max_frame
        return self.welcome

    async def describe(
        self, *, adopt: bool = False, timeout: float | None = 30.0
    ) -> MessageRegistry:
        """The server's schema as a registry of dynamic classes; `adopt` makes it this
        client's registry, so messages the client has no code for can be sent by name."""
        # By its fixed ID (PROTOCOL.md), so it works whatever this client's registry holds.
        frame = await self.roundtrip(_DESCRIBE_ID, b"", timeout=timeout)
        registry = MessageRegistry.from_describe(DescribeReply.FromString(frame.payload))
        if adopt:
            self.registry = registry
        return registry

    # -- pushes -----------------------------------------------------------------------

    def on_frame(self, observer: Callable[[Frame], Any]) -> None:
        """Call `observer(frame)` for every frame no request is waiting for: pushes,
        unsolicited Errors, GoAway, and replies that arrive after their request timed out
        (tools such as the REPL show them all)."""
        self._observers.append(observer)

    def on_push(self, message_type: type[Message], callback: PushCallback) -> None:
        """Call `callback(push)` for every push of `message_type` (in the event loop)."""
        self._push_callbacks.setdefault(message_type, []).append(callback)

    async def pushes(self) -> AsyncIterator[Push]:
        """Every push from now on, in order, until the connection closes."""
        if self._closed is not None:
            return  # closed for good: no push will come
        queue: asyncio.Queue[Push | None] = asyncio.Queue()
        self._push_queues.append(queue)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item
        finally:
            self._push_queues.remove(queue)

    # -- internals --------------------------------------------------------------------

    def _take_seq(self) -> int:
        seq = self._next_seq
        while seq in self._pending:
            seq = seq + 1 if seq < MAX_SEQ else 1
        self._next_seq = seq + 1 if seq < MAX_SEQ else 1
        return seq

    def _send(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out or self._transport is None or self._transport.is_closing():
            out.clear()
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._transport.write(data)

    def _on_frame(self, frame: Frame) -> None:
        flags = frame.flags
        if flags & _RESPONSE:
            future = self._pending.get(frame.seq)
            if future is not None and not future.done():
                future.set_result(frame)
                return
        self._observe(frame)
        if flags & _RESPONSE:
            return  # a late reply (its request timed out): only observers see it
        if flags & _PUSH:
            self._on_push(frame)
            return
        if flags & _ERROR:
            try:
                err = Error.FromString(frame.payload)
            except DecodeError:
                self._broken(frame, "Error")
                return
            error = server_error(err.code, err.message, err.request_msg_id)
            self.errors.append(error)
            if closes_connection(err.code):
                self._fail(ConnectionClosed("server closed the connection", error))

    def _observe(self, frame: Frame) -> None:
        for observer in self._observers:
            try:
                observer(frame)
            except Exception:
                log.exception("frame observer %r raised", observer)

    def _broken(self, frame: Frame, what: str) -> None:
        """The server sent a protocol message we cannot parse: nothing after it can be
        trusted, so the connection ends, with a reason instead of a traceback."""
        self._fail(
            ConnectionClosed(
                f"server sent an undecodable {what} (msg_id {frame.msg_id}, "
                f"{len(frame.payload)} bytes)"
            )
        )
        if self._transport is not None:
            self._transport.abort()

    def _on_push(self, frame: Frame) -> None:
        if frame.msg_id == _GOAWAY_ID:
            try:
                self.goaway = GoAway.FromString(frame.payload)
            except DecodeError:
                self._broken(frame, "GoAway")
                return
            error = server_error(self.goaway.reason, self.goaway.message)
            self._fail(ConnectionClosed("server sent GoAway", error))
            return
        try:
            message = self.registry.decode(frame.msg_id, frame.payload)
        except RemoteProtocolError as exc:
            # A newer server may push types this client predates; one odd push must not
            # cost the connection or the frames after it.
            self.unknown_pushes += 1
            log.warning("skipped push seq %d: %s", frame.seq, exc)
            return
        push = Push(message, frame.msg_id, frame.seq)
        for callback in self._push_callbacks.get(type(message), ()):
            try:
                callback(push)
            except Exception:
                log.exception("push callback %r raised", callback)
        for queue in self._push_queues:
            queue.put_nowait(push)

    def _fail(self, exc: ConnectionClosed) -> None:
        """The connection ended (or is about to: a closing Error, a GoAway): record the
        first reason and fail every request waiting on it. Whether the client is done
        is decided once the transport is really gone."""
        if self._down is None:
            self._down = exc
            self._up.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._down)
        self._pending.clear()
        self._out.clear()
        self._writable.set()  # wake requests waiting for room; they see the connection gone
        if self._transport is None or self._transport.is_closing() or exc.error is None:
            if self._reconnect is None or self._user_closed:
                self._finish()
            elif self._reconnecting is None:
                self._reconnecting = asyncio.get_running_loop().create_task(
                    self._reconnect_loop(), name="tickwire-reconnect"
                )

    def _finish(self, reason: ConnectionClosed | None = None) -> None:
        """Closed for good: nothing reconnects, iterators end, waiters wake."""
        if self._closed is None:
            self._closed = reason or self._down or ConnectionClosed("connection closed")
        for queue in self._push_queues:
            queue.put_nowait(None)
        self._up.set()  # wake requests waiting for a connection; they see _closed
        self._closed_event.set()

    async def _reconnect_loop(self) -> None:
        policy = self._reconnect
        assert policy is not None
        delay = policy.initial
        if self.goaway is not None and self.goaway.reconnect_after_ms:
            delay = self.goaway.reconnect_after_ms / 1000
        tries = 0
        try:
            while policy.attempts is None or tries < policy.attempts:
                await asyncio.sleep(policy.jittered(delay))
                tries += 1
                try:
                    await self._open()
                except (OSError, TimeoutError) as exc:
                    log.info("reconnect attempt %d to %s:%d failed: %s", tries, *self._address, exc)
                    delay = min(max(delay, policy.initial) * 2, policy.maximum)
                    continue
                self._back_up()
                # Callbacks (a Resume) go first: their requests see the connection up,
                # while requests that waited for it are released only afterwards.
                for callback in self._reconnect_callbacks:
                    try:
                        result = callback(self)
                        if result is not None:
                            await result
                    except Exception:
                        log.exception("reconnect callback %r raised", callback)
                if self._down is None:
                    self._up.set()
                    return
                # It dropped again while the callbacks ran: start over from the short wait.
                delay = policy.initial
            self._finish(
                ConnectionClosed(
                    f"gave up reconnecting to {self._address[0]}:{self._address[1]} after "
                    f"{tries} attempts (last: {self._down})"
                )
            )
        finally:
            self._reconnecting = None

    def _back_up(self) -> None:
        self.reconnects += 1
        self.goaway = None
        self._down = None
        self._writable.set()
        log.info("reconnected to %s:%d (%d)", *self._address, self.reconnects)
