"""The async client: one connection, many requests in flight, pushes, clean close.

It speaks the wire protocol (docs/protocol.md) through the same sans-I/O codec as the
server and never imports the server. Requests written in one event-loop iteration go out in
one write, as replies do on the server side, so a pipelining client does not pay a syscall
per request. The push bookkeeping (what was delivered, what to drop, when to acknowledge)
is the sans-I/O PushLedger (client_sdk/ledger.py); this module does the I/O around it.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import os
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from google.protobuf.message import DecodeError, Message

from client_sdk.errors import (
    ClientError,
    ConnectionClosed,
    ServerError,
    Unauthenticated,
    UnexpectedReply,
    server_error,
)
from client_sdk.ledger import ACK_DELAY, ACK_EVERY, PushGap, PushLedger, Verdict
from client_sdk.tls import lost_reason, resolve, tls_error
from protocol.errors import (
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    closes_connection,
)
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
    LoginReply,
    LoginRequest,
    LogoutReply,
    Ping,
    Pong,
    PushAck,
    ResumeReply,
    ResumeRequest,
    Welcome,
)
from protocol.registry import MessageRegistry, system_registry
from protocol.system import (
    DESCRIBE_ID,
    GOAWAY_ID,
    HELLO_ID,
    LOGIN_ID,
    LOGIN_REPLY_ID,
    LOGOUT_ID,
    LOGOUT_REPLY_ID,
    PING_ID,
    PONG_ID,
    PROTOCOL_VERSION,
    PUSH_ACK_ID,
    REFRESH_ID,
    RESUME_ID,
    RESUME_REPLY_ID,
)

log = logging.getLogger("tickwire.client")
M = TypeVar("M", bound=Message)
_RESPONSE = int(Flags.RESPONSE)
_ERROR = int(Flags.ERROR)
_PUSH = int(Flags.PUSH)
#: Closes after which reconnecting would only repeat them: the session lives on another
#: connection now (two devices would kick each other forever), or this client never
#: logged in (the server would close the next connection for the same reason).
_FINAL_CODES = frozenset({ErrorCode.SESSION_REPLACED, ErrorCode.AUTH_TIMEOUT})
#: auto_refresh renews the token at this fraction of its remaining lifetime.
_REFRESH_AT = 0.8
#: auto_refresh: the wait before trying again after a refresh the connection lost.
_REFRESH_RETRY = 1.0


class Push(NamedTuple):
    """A server-initiated message: `seq` is its place in the session's push sequence."""

    message: Message
    msg_id: int
    seq: int


PushCallback = Callable[[Push], Any]
#: A server's (host, port).
Address = tuple[str, int]


PushGapCallback = Callable[[PushGap], Awaitable[None] | None]


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
#: Hears why the session ended: the refused Resume's Unauthenticated, SessionReplaced...
SessionLostCallback = Callable[[ClientError], Awaitable[None] | None]


@dataclass(frozen=True)
class Session:
    """The session a login (or resume) gave this client. `token` is what Resume takes on
    a new connection; it is left out of the repr so that logging a Session leaks nothing."""

    user_id: str
    session_id: str
    token: str = field(repr=False)
    #: Unix time (ms) after which the token is refused; refresh_token() before then.
    expires_at_ms: int
    #: How long the server keeps the session after its connection is lost.
    session_ttl_s: int

    @classmethod
    def of(cls, reply: LoginReply) -> Session:
        """The session a LoginReply (from a login or a token refresh) describes."""
        return cls(
            reply.user_id, reply.session_id, reply.token, reply.expires_at_ms, reply.session_ttl_s
        )


class ConnState(enum.Enum):
    """Where the client's connection is in its life; one value replaces a set of flags.

    CONNECTING -> OPEN (connect() returned). OPEN -> DOWN when the connection ends or the
    server announces it will (a closing Error, a GoAway): requests in flight fail. From
    DOWN, once the transport is gone, RECONNECTING (with a Reconnect policy, unless the
    close is final) or CLOSED. RECONNECTING -> RESTORING when a new connection is made,
    RESTORING -> OPEN once the session is restored and the on_reconnect callbacks ran;
    a drop meanwhile goes back to RECONNECTING. Any state -> CLOSED on close(), a final
    close, or when the policy's attempts run out; CLOSED is for good.
    """

    #: connect() is still opening the first connection.
    CONNECTING = "connecting"
    #: Requests go straight out.
    OPEN = "open"
    #: The connection ended (or the server said it is ending it) and nothing reconnects
    #: yet: requests wait, notify() raises; the transport's end decides what follows.
    DOWN = "down"
    #: No connection: the reconnect loop waits out its backoff or connects.
    RECONNECTING = "reconnecting"
    #: A new connection: the session is resumed and the on_reconnect callbacks run. Only
    #: their requests (the reconnect task's) go out; the others wait for OPEN.
    RESTORING = "restoring"
    #: For good: every request raises the reason wait_closed() returns.
    CLOSED = "closed"


#: The states with a connection to write on.
_LIVE = frozenset({ConnState.CONNECTING, ConnState.OPEN, ConnState.RESTORING})
#: The states in which the connection is gone, for a reason (`_reason`).
_GONE = frozenset({ConnState.DOWN, ConnState.RECONNECTING, ConnState.CLOSED})


class _Wire(asyncio.Protocol):
    """The asyncio side of AsyncClient: bytes in, frames to the client. One per
    connection: after a reconnect, the old one's late events are ignored."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        #: The transport's write buffer is full (pause_writing): requests wait for room.
        self.paused = False

    @property
    def current(self) -> bool:
        return self.client._wire is self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client._wire = self

    def data_received(self, data: bytes) -> None:
        if not self.current:
            return
        client = self.client
        frames = client._decoder.feed(data)
        for frame in frames:
            client._on_frame(frame)
        if client._decoder.error is not None:
            client._drop_connection(f"server broke the protocol: {client._decoder.error}")

    def pause_writing(self) -> None:
        if self.current:
            self.paused = True
            self.client._sync_events()

    def resume_writing(self) -> None:
        if self.current:
            self.paused = False
            self.client._sync_events()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.current:
            return
        self.client._wire = None
        self.client._fail(
            ConnectionClosed(
                "connection closed" if exc is None else f"connection lost: {lost_reason(exc)}"
            )
        )


class AsyncClient:
    """Connect with ``await AsyncClient.connect(host, port)`` or ``async with``."""

    def __init__(
        self,
        registry: MessageRegistry | None = None,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        ack_delay: float = ACK_DELAY,
        ack_every: int = ACK_EVERY,
    ) -> None:
        self._ledger = PushLedger(ack_delay, ack_every)
        self.registry = registry or system_registry()
        self._decoder = FrameDecoder(max_frame)
        self._wire: _Wire | None = None
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._reply_hooks: dict[int, Callable[[Frame], None]] = {}
        self._next_seq = 1
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._push_callbacks: dict[type[Message], list[PushCallback]] = {}
        self._observers: list[Callable[[Frame], Any]] = []
        self._push_queues: list[asyncio.Queue[Push | None]] = []
        self._state = ConnState.CONNECTING
        #: Why the connection is gone (in the _GONE states): why it ended, or once CLOSED
        #: why the client is done.
        self._reason: ConnectionClosed | None = None
        # Derived from the state and the wire in _sync_events only, for the waiters:
        # requests waiting for a connection (set in OPEN and CLOSED), requests waiting
        # for room in the write buffer, and wait_closed().
        self._usable = asyncio.Event()
        self._writable = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._sync_events()
        #: Every address of the server (one cluster's nodes), the connect() one first,
        #: and the index of the one the client is on (or trying).
        self._addresses: list[Address] = [("", 0)]
        self._at = 0
        #: TLS for every connection of this client, reconnects included (None: plaintext).
        self._tls: ssl.SSLContext | None = None
        self._server_hostname: str | None = None
        self._connect_timeout = 10.0
        self._reconnect: Reconnect | None = None
        #: The reconnect loop, running in RECONNECTING and RESTORING.
        self._reconnect_task: asyncio.Task[None] | None = None
        self._reconnect_callbacks: list[ReconnectCallback] = []
        #: Connections re-established so far.
        self.reconnects = 0
        #: Requests sent again after a reconnect (request(..., resend=True)).
        self.resent = 0
        #: The GoAway the server sent before closing, if it did.
        self.goaway: GoAway | None = None
        #: Unsolicited Error frames (seq 0), newest last: failed notifications, closes.
        self.errors: list[ServerError] = []
        #: Pushes of a type this client's registry does not know (skipped, not fatal).
        self.unknown_pushes = 0
        #: The server's Welcome, once hello() has run.
        self.welcome: Welcome | None = None
        self._max_request = 0
        #: The logged-in session (login, resume), None when there is none.
        self.session: Session | None = None
        #: The one PushAck scheduled (call_soon or call_at) and the ledger's ack_due it
        #: was scheduled for.
        self._ack_handle: asyncio.Handle | None = None
        self._ack_at: float | None = None
        self._push_gap_callbacks: list[PushGapCallback] = []
        #: PushAck frames sent.
        self.acks_sent = 0
        self._credentials: tuple[str, str, str] | None = None
        self._auto_refresh = False
        self._refresher: asyncio.Task[None] | None = None
        self._session_lost_callbacks: list[SessionLostCallback] = []
        #: The wait the server asked for when it last refused to restore the session.
        self._retry_after = 0.0
        self._callback_tasks: set[asyncio.Task[None]] = set()

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
        ack_delay: float = ACK_DELAY,
        ack_every: int = ACK_EVERY,
        tls: bool | ssl.SSLContext = False,
        tls_ca: str | os.PathLike[str] | None = None,
        server_hostname: str | None = None,
        fallbacks: Iterable[Address] = (),
    ) -> AsyncClient:
        """Connect once (failing here if the server is not there); with `reconnect`, the
        client then gets its connection back by itself whenever it drops. `ack_delay` and
        `ack_every` batch the automatic push acknowledgements (see on_push).

        `fallbacks` are other (host, port) addresses of the same server, the other nodes
        of its cluster: the first connect tries them in turn when `host`:`port` does not
        answer, and a reconnect that fails on the current address tries the next one, so
        that a node killed outright costs its clients a Resume on another node, not their
        session. An address given twice (the cluster's whole list, say) counts once.

        `tls=True` speaks TLS, trusting the system's CAs, or only those in the PEM file
        `tls_ca` (given alone, it implies TLS); `tls=` an SSLContext uses that one (a
        client certificate, say: client_sdk.tls_context). The certificate must name
        `server_hostname`, by default the host of the address connected to. A failed
        handshake raises TLSError."""
        client = cls(registry, max_frame=max_frame, ack_delay=ack_delay, ack_every=ack_every)
        client._addresses = list(dict.fromkeys([(host, port), *_addresses(fallbacks)]))
        client._tls = resolve(tls, tls_ca)
        client._server_hostname = server_hostname
        client._connect_timeout = timeout
        client._reconnect = reconnect
        await client._open_any()
        if client._state is ConnState.CONNECTING:  # not dropped already
            client._set_state(ConnState.OPEN)
        return client

    async def _open_any(self) -> None:
        """The first connection: each address in turn until one answers; when none does,
        the first address's error, with every address and its error in its notes (the
        error alone need not name its address)."""
        failures: list[OSError] = []
        for _ in self._addresses:
            try:
                await self._open()
                return
            except OSError as exc:  # TimeoutError and TLSError included
                if len(self._addresses) == 1:
                    raise
                failures.append(exc)
                log.info("connect to %s:%d failed: %s", *self.address, exc or type(exc).__name__)
                self._next_address()
        first = failures[0]
        for (host, port), error in zip(self._addresses, failures, strict=True):
            first.add_note(f"tried {host}:{port}: {error or type(error).__name__}")
        raise first

    @property
    def address(self) -> Address:
        """The (host, port) this client is connected to, or is trying while reconnecting:
        with fallbacks, the node it moved to."""
        return self._addresses[self._at]

    @property
    def addresses(self) -> tuple[Address, ...]:
        """Every address the client may connect to, connect()'s first, then the fallbacks."""
        return tuple(self._addresses)

    def _next_address(self) -> None:
        """Move on to the next address (after the last, the first again)."""
        self._at = (self._at + 1) % len(self._addresses)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder(self._decoder.max_frame)
        host, port = self.address
        if self._tls is None:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(lambda: _Wire(self), host, port)
            return
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(
                    lambda: _Wire(self),
                    host,
                    port,
                    ssl=self._tls,
                    server_hostname=self._server_hostname or host,
                )
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
            raise tls_error(exc, host, port) from None

    def on_reconnect(self, callback: ReconnectCallback) -> None:
        """Run `callback(client)` (sync or async) each time the connection is back, after
        the session was resumed and before requests waiting for the connection go out."""
        self._reconnect_callbacks.append(callback)

    def on_session_lost(self, callback: SessionLostCallback) -> None:
        """Run `callback(reason)` (sync or async) when the session ends without logout():
        a Resume the server refused (`Unauthenticated`; with `remember`, only when logging
        in again failed too), or the same user logging in elsewhere (`SessionReplaced`).
        `client.session` is None by then."""
        self._session_lost_callbacks.append(callback)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def state(self) -> ConnState:
        """Where the connection is in its life (see ConnState)."""
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is ConnState.CLOSED

    @property
    def connected(self) -> bool:
        """The connection is up and ready: false while reconnecting (the session is
        being resumed, say) and once closed."""
        return self._state is ConnState.OPEN

    async def close(self) -> None:
        """Flush what is queued, close, and fail requests still waiting."""
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            self._send_ack()  # what the application got needs no replay
            self._flush()
            transport.close()
        self._fail(ConnectionClosed("client closed the connection"), final=True)
        await self._closed_event.wait()
        # Nothing of this client may outlive close(): callbacks still running, the
        # reconnect loop, the token refresher.
        current = asyncio.current_task()
        leftovers = [
            task
            for task in (*self._callback_tasks, self._reconnect_task, self._refresher)
            if task is not None and task is not current and not task.done()
        ]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.gather(*leftovers, return_exceptions=True)

    async def wait_closed(self) -> ConnectionClosed:
        await self._closed_event.wait()
        return self._gone()

    # -- requests -------------------------------------------------------------------

    async def request(
        self, message: Message, *, timeout: float | None = 30.0, resend: bool = False
    ) -> Message:
        """Send `message` and return the typed reply; an Error reply raises ServerError.

        `resend`: the server handles this request idempotently (a handler declared with
        ``idempotent=``, keyed by something in the message), so when the connection drops
        before the reply, the request is sent again once the Reconnect policy has resumed
        the session, instead of failing with ConnectionClosed; a resend answers with the
        first run's reply. `timeout` covers every attempt. Without a Reconnect policy, or
        once the client has closed for good, the ConnectionClosed is raised."""
        msg_id = self.registry.id_of(message)
        payload = message.SerializeToString()
        if not resend:
            frame = await self.roundtrip(msg_id, payload, timeout=timeout)
        else:
            frame = await self._resending(msg_id, payload, timeout)
        try:
            return self.registry.decode(frame.msg_id, frame.payload)
        except RemoteProtocolError as exc:
            raise UnexpectedReply(f"reply to seq {frame.seq}: {exc.message}") from None

    async def _resending(self, msg_id: int, payload: bytes, timeout: float | None) -> Frame:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                return await self.roundtrip(msg_id, payload, timeout=left)
            except ConnectionClosed:
                if self._reconnect is None or self.closed:
                    raise
                # The reconnect loop resumes the session; roundtrip waits for it.
                self.resent += 1

    async def roundtrip(
        self,
        msg_id: int,
        payload: bytes,
        *,
        timeout: float | None = 30.0,
        raise_errors: bool = True,
        on_reply: Callable[[Frame], None] | None = None,
    ) -> Frame:
        """Send one request frame and return its reply frame undecoded. An Error reply
        raises ServerError, or with `raise_errors=False` comes back as the frame (tools
        that show every reply's header). For tools that work below the registry.

        `on_reply(frame)` runs the moment the reply arrives, before any frame after it is
        handled (the caller resumes only later): for state that later frames depend on."""
        state = self._state
        if state is ConnState.CLOSED:
            raise self._gone()
        if asyncio.current_task() is self._reconnect_task:
            # The reconnect loop's own requests (the Resume, on_reconnect callbacks') go
            # straight out while RESTORING; on a connection that dropped again they fail
            # now, so the loop goes on, instead of writing into nothing.
            if state is ConnState.RECONNECTING:
                raise self._gone()
        elif state is not ConnState.OPEN and state is not ConnState.CONNECTING:
            # Down, reconnecting, or the session is being restored: wait for OPEN within
            # the request's own timeout.
            async with asyncio.timeout(timeout):
                while self._state is not ConnState.OPEN:
                    await self._usable.wait()
                    if self._state is ConnState.CLOSED:
                        raise self._gone()
        if not self._writable.is_set():
            # The server is not reading: wait for room, within the request's own timeout;
            # a connection that ends meanwhile wakes us (see _sync_events).
            async with asyncio.timeout(timeout):
                await self._writable.wait()
            if self._state in _GONE:
                raise self._gone()
        limit = self._max_request_now()
        if limit and MIN_LENGTH + len(payload) > limit:
            raise LocalProtocolError(
                f"a {len(payload)}-byte payload passes the server's max_frame "
                f"({limit}); the server would close the connection"
            )
        seq = self._take_seq()
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        if on_reply is not None:
            self._reply_hooks[seq] = on_reply
        self._send(encode_frame(msg_id, 0, seq, payload))
        try:
            async with asyncio.timeout(timeout):
                frame = await future
        finally:
            self._pending.pop(seq, None)
            self._reply_hooks.pop(seq, None)
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
        if self._state in _GONE:
            raise self._gone()
        self._send(encode_frame(self.registry.id_of(message), 0, 0, message.SerializeToString()))

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (debugging, protocol tests)."""
        if self._state is ConnState.CLOSED:
            raise self._gone()
        self._send(data)

    async def ping(self, *, timeout: float | None = 10.0) -> float:
        """Round-trip time in seconds."""
        start = time.perf_counter_ns()
        ping = Ping(client_time_ns=time.time_ns()).SerializeToString()
        await self.roundtrip(PING_ID, ping, timeout=timeout)
        return (time.perf_counter_ns() - start) / 1e9

    async def hello(self, client_name: str = "", *, timeout: float | None = 10.0) -> Welcome:
        """The handshake: tell the server who we are, learn its limits. Afterwards a request
        bigger than the server's max_frame fails here, before it is sent, instead of
        costing the connection (FRAME_TOO_LARGE closes it)."""
        hello = Hello(protocol_version=PROTOCOL_VERSION, client_name=client_name)
        frame = await self.roundtrip(HELLO_ID, hello.SerializeToString(), timeout=timeout)
        self.welcome = Welcome.FromString(frame.payload)
        self._max_request = self.welcome.max_frame
        return self.welcome

    def _max_request_now(self) -> int:
        """The server's frame limit as of hello(), 0 before it: a session lifts the
        pre-login limit to Welcome's session_max_frame (a server without that field
        answers 0 there, and max_frame stands)."""
        welcome = self.welcome
        if welcome is not None and self.session is not None and welcome.session_max_frame:
            return welcome.session_max_frame
        return self._max_request

    async def describe(
        self, *, adopt: bool = False, timeout: float | None = 30.0
    ) -> MessageRegistry:
        """The server's schema as a registry of dynamic classes; `adopt` makes it this
        client's registry, so messages the client has no code for can be sent by name."""
        # By its fixed ID (docs/protocol.md, "Fixed IDs"), so it works whatever this
        # client's registry holds.
        frame = await self.roundtrip(DESCRIBE_ID, b"", timeout=timeout)
        registry = MessageRegistry.from_describe(DescribeReply.FromString(frame.payload))
        if adopt:
            self.registry = registry
        return registry

    # -- sessions ---------------------------------------------------------------------

    async def login(
        self,
        user: str,
        password: str,
        device: str = "",
        *,
        remember: bool = False,
        auto_refresh: bool = False,
        timeout: float | None = 10.0,
    ) -> LoginReply:
        """Log in; the session is kept in `client.session`. Wrong credentials (or a second
        login refused by the server's duplicate_login policy) raise Unauthenticated.

        `remember` keeps the credentials in memory, so that when a reconnect's Resume is
        refused the client logs in again instead of losing the session. `auto_refresh`
        renews the token at 80% of its lifetime.
        """
        request = LoginRequest(user=user, password=password, device=device)
        was_attached = self._detach_acks()

        def new_session(frame: Frame) -> None:
            if not frame.flags & _ERROR:
                # Pushes right behind the reply are the new session's, numbered anew.
                self._ledger.logged_in()
                self._arm_ack()

        try:
            reply = await self._system_call(
                LOGIN_ID,
                request,
                LoginReply,
                LOGIN_REPLY_ID,
                timeout=timeout,
                on_reply=new_session,
            )
        except BaseException:
            # Refused or failed: the server kept whatever session this connection had.
            if self.session is not None:
                self._ledger.refused(was_attached)
            raise
        self._credentials = (user, password, device) if remember else None
        self._auto_refresh = auto_refresh
        self._set_session(Session.of(reply))
        return reply

    async def refresh_token(self, *, timeout: float | None = 10.0) -> LoginReply:
        """A new token for the session (the old one is refused from now on)."""
        reply = await self._system_call(
            REFRESH_ID, None, LoginReply, LOGIN_REPLY_ID, timeout=timeout
        )
        self._set_session(Session.of(reply))
        return reply

    async def logout(self, *, timeout: float | None = 10.0) -> LogoutReply:
        """End the session; the connection stays open, unauthenticated. `client.session`
        and remembered credentials are dropped even if the request fails."""
        self._detach_acks()
        try:
            return await self._system_call(
                LOGOUT_ID, None, LogoutReply, LOGOUT_REPLY_ID, timeout=timeout
            )
        finally:
            self._credentials = None
            self._auto_refresh = False
            self._set_session(None)

    async def resume(
        self, token: str, last_push_seq: int | None = None, *, timeout: float | None = 10.0
    ) -> ResumeReply:
        """Continue a session on this connection with its token (a client with a
        Reconnect policy does this by itself after a reconnect). A refused token raises
        Unauthenticated.

        `last_push_seq` is the last push the application got; the server replays those
        after it. By default: this client's `last_push_seq` when `token` is its own
        session's, else 0 (everything the server still holds). Pushes of this client's
        own session that the replay repeats are dropped, not handed over twice."""
        if last_push_seq is None:
            own = self.session is not None and self.session.token == token
            last_push_seq = self._ledger.last_seq if own else 0
        seen = last_push_seq
        request = ResumeRequest(token=token, last_push_seq=seen)
        # No acknowledgement ahead of it: the Resume's last_push_seq is one already.
        was_attached = self._detach_acks(send=False)

        def resumed(frame: Frame) -> None:
            # Pushes the server replays come right behind the reply: count from what we
            # asked for, unless this is the session we were counting already.
            if frame.flags & _ERROR or frame.msg_id != RESUME_REPLY_ID:
                return
            try:
                reply = ResumeReply.FromString(frame.payload)
            except DecodeError:
                return  # _system_call raises UnexpectedReply
            gap = self._ledger.resumed(
                asked=seen,
                ours=self.session is not None and self.session.session_id == reply.session_id,
                push_gap=reply.push_gap,
                server_last=reply.last_push_seq,
                now=asyncio.get_running_loop().time(),
            )
            if gap is not None:
                self._report_gap(gap)
            self._arm_ack()

        try:
            reply = await self._system_call(
                RESUME_ID,
                request,
                ResumeReply,
                RESUME_REPLY_ID,
                timeout=timeout,
                on_reply=resumed,
            )
        except Unauthenticated:
            if self.session is not None and self.session.token == token:
                self._set_session(None)  # that session is gone
            elif self.session is not None:
                self._ledger.refused(was_attached)  # the connection keeps its session
            raise
        except BaseException:
            if self.session is not None:
                self._ledger.refused(was_attached)
            raise
        self._set_session(
            Session(
                reply.user_id, reply.session_id, token, reply.expires_at_ms, reply.session_ttl_s
            )
        )
        return reply

    @property
    def last_push_seq(self) -> int:
        """The highest push sequence handed to the application in this session (what a
        Resume sends)."""
        return self._ledger.last_seq

    @property
    def push_gap(self) -> bool:
        """True after a Resume whose reply said some pushes are gone (see on_push_gap);
        reset by the next Resume or Login."""
        return self._ledger.gap

    @property
    def duplicate_pushes(self) -> int:
        """Reliable pushes dropped because the application had them already (a replay)."""
        return self._ledger.duplicates

    def on_push_gap(self, callback: PushGapCallback) -> None:
        """Run `callback(gap)` (sync or async) when a Resume's reply says some pushes
        after the last one the application got are gone for good (the server's buffer
        dropped them): the application should re-sync its state. A sync callback runs
        before the replayed pushes are handed over; `client.push_gap` is True until the
        next Resume or Login."""
        self._push_gap_callbacks.append(callback)

    def _report_gap(self, gap: PushGap) -> None:
        log.warning("pushes %d..%d may be missing (push_gap)", gap.seen + 1, gap.last_push_seq)
        for callback in self._push_gap_callbacks:
            try:
                result = callback(gap)
            except Exception:
                log.exception("push-gap callback %r raised", callback)
                continue
            if inspect.isawaitable(result):
                self._spawn(self._logged(result, callback))

    def _detach_acks(self, *, send: bool = True) -> bool:
        """A Login, Resume or Logout is about to go out: acknowledge what the current
        session's application got (ahead of it), then send no acknowledgement until its
        reply says which session this connection has. An ack sent behind the request
        would be applied by the server to the new session and drop its pushes unsent.
        Returns whether acks were on (to restore them if the request is refused)."""
        if send:
            self._send_ack()
        was = self._ledger.detach()
        self._arm_ack()
        return was

    # -- acknowledgements -------------------------------------------------------------

    def _arm_ack(self) -> None:
        """Keep the one scheduled PushAck in step with the ledger's ack_due, after any
        event that may have moved it. Due already: after the frames being handled (a
        burst read in one go costs one ack); later: a timer."""
        due = self._ledger.ack_due
        if due == self._ack_at:
            return
        if self._ack_handle is not None:
            self._ack_handle.cancel()
            self._ack_handle = None
        self._ack_at = due
        if due is not None:
            loop = asyncio.get_running_loop()
            if due <= loop.time():
                self._ack_handle = loop.call_soon(self._send_ack)
            else:
                self._ack_handle = loop.call_at(due, self._send_ack)

    def _send_ack(self) -> None:
        """Acknowledge every push handed to the application so far (one seq-0 PushAck),
        if the ledger has something new to acknowledge on this connection."""
        seq = self._ledger.take_ack()
        self._arm_ack()
        if seq is None or self._state not in _LIVE or self._transport is None:
            return
        self.acks_sent += 1
        self._send(encode_frame(PUSH_ACK_ID, 0, 0, PushAck(seq=seq).SerializeToString()))

    async def _system_call(
        self,
        msg_id: int,
        request: Message | None,
        reply_type: type[M],
        reply_id: int,
        *,
        timeout: float | None,
        on_reply: Callable[[Frame], None] | None = None,
    ) -> M:
        """A protocol message by its fixed ID (so it works whatever the registry holds,
        an adopted one included), its reply checked and decoded."""
        payload = b"" if request is None else request.SerializeToString()
        frame = await self.roundtrip(msg_id, payload, timeout=timeout, on_reply=on_reply)
        name = reply_type.DESCRIPTOR.full_name
        if frame.msg_id != reply_id:
            raise UnexpectedReply(
                f"reply to seq {frame.seq}: expected {name} ({reply_id}), got msg_id {frame.msg_id}"
            )
        try:
            return reply_type.FromString(frame.payload)
        except DecodeError:
            raise UnexpectedReply(f"reply to seq {frame.seq}: undecodable {name}") from None

    def _set_session(self, session: Session | None) -> None:
        # The push sequence is reset when the reply arrives (login, resume), not here:
        # pushes right behind the reply were counted before the caller resumed.
        if session is None:
            self._ledger.forget()
            self._arm_ack()
        self.session = session
        self._schedule_refresh()

    def _schedule_refresh(self) -> None:
        current = asyncio.current_task()
        if self._refresher is not None and self._refresher is not current:
            self._refresher.cancel()
        self._refresher = None
        if self._auto_refresh and self.session is not None and not self.closed:
            self._refresher = asyncio.get_running_loop().create_task(
                self._refresh_later(self.session), name="tickwire-refresh"
            )

    async def _refresh_later(self, session: Session) -> None:
        """auto_refresh: renew the token at 80% of its remaining lifetime; after a refresh
        the connection lost, try again shortly (until the token has expired)."""
        await asyncio.sleep(max(0.0, _REFRESH_AT * (session.expires_at_ms / 1000 - time.time())))
        while self.session is session and not self.closed:
            try:
                await self.refresh_token(timeout=30.0)
                return  # refresh_token scheduled the next one
            except (ConnectionClosed, TimeoutError) as exc:
                if session.expires_at_ms / 1000 <= time.time():
                    log.warning("token expired before it could be refreshed: %s", exc)
                    return
                log.info("token refresh failed, trying again: %s", exc)
                await asyncio.sleep(_REFRESH_RETRY)
            except ClientError as exc:
                log.warning("token refresh refused: %s", exc)
                return

    def _lose_session(self, reason: ClientError) -> list[Awaitable[None]]:
        """The session ended without logout(): drop it and the credentials, tell the
        on_session_lost callbacks; returns what async ones still have to run."""
        self._credentials = None
        self._auto_refresh = False
        self._set_session(None)
        pending: list[Awaitable[None]] = []
        for callback in self._session_lost_callbacks:
            try:
                result = callback(reason)
            except Exception:
                log.exception("session-lost callback %r raised", callback)
                continue
            if inspect.isawaitable(result):
                pending.append(self._logged(result, callback))
        return pending

    @staticmethod
    async def _logged(result: Awaitable[None], callback: object) -> None:
        try:
            await result
        except Exception:
            log.exception("callback %r raised", callback)

    async def _restore_session(self) -> bool:
        """On a reconnected connection, before anything else: Resume the session, or log
        in again with remembered credentials. False when the connection is not usable
        (dropped meanwhile, or no answer): the reconnect loop tries again."""
        session = self.session
        if session is None and self._credentials is None:
            return True
        timeout = self._connect_timeout
        reason: ClientError | None = None
        try:
            if session is not None:
                try:
                    await self.resume(session.token, self._ledger.last_seq, timeout=timeout)
                    log.info("resumed session %s", session.session_id)
                    return True
                except Unauthenticated as exc:
                    reason = exc
                    log.info("session %s not resumed: %s", session.session_id, exc)
            if self._credentials is not None:
                user, password, device = self._credentials
                try:
                    await self.login(
                        user,
                        password,
                        device,
                        remember=True,
                        auto_refresh=self._auto_refresh,
                        timeout=timeout,
                    )
                    log.info("logged in again as %s", user)
                    return True
                except Unauthenticated as exc:
                    reason = exc
        except ConnectionClosed:
            return False  # dropped again: the loop starts over
        except (TimeoutError, ClientError) as exc:
            # No usable answer (Overloaded, a timeout...): the session may well be alive,
            # so drop this connection and try again later rather than lose it; no sooner
            # than the server asked ("retry after N ms": a store outage, a busy login).
            self._retry_after = getattr(exc, "retry_after", None) or 0.0
            self._drop_connection(f"could not restore the session: {exc or 'timed out'}")
            return False
        assert reason is not None
        for pending in self._lose_session(reason):
            await pending
        return self._state is ConnState.RESTORING

    def _drop_connection(self, why: str) -> None:
        self._fail(ConnectionClosed(why))
        if self._transport is not None:
            self._transport.abort()

    # -- pushes -----------------------------------------------------------------------

    def on_frame(self, observer: Callable[[Frame], Any]) -> None:
        """Call `observer(frame)` for every frame no request is waiting for: pushes,
        unsolicited Errors, GoAway, and replies that arrive after their request timed out
        (tools such as the REPL show them all)."""
        self._observers.append(observer)

    def on_push(self, message_type: type[Message], callback: PushCallback) -> None:
        """Call `callback(push)` for every push of `message_type` (in the event loop).

        In a session from login() or resume(), each reliable push (seq > 0) is handed
        over once, in sequence order, and acknowledged without user code (batched: one
        PushAck at most `ack_delay` after a push, or after `ack_every` pushes); one the
        application got already (a replay after a Resume) is dropped and counted in
        `duplicate_pushes`. Latest-value pushes (seq 0) pass straight through."""
        self._push_callbacks.setdefault(message_type, []).append(callback)

    async def pushes(self) -> AsyncIterator[Push]:
        """Every push from now on, in order, until the connection closes."""
        if self.closed:
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
        transport = self._transport
        if not out or transport is None or transport.is_closing():
            out.clear()
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        transport.write(data)

    def _on_frame(self, frame: Frame) -> None:
        flags = frame.flags
        if flags & _RESPONSE:
            future = self._pending.get(frame.seq)
            if future is not None and not future.done():
                hook = self._reply_hooks.pop(frame.seq, None)
                if hook is not None:
                    try:
                        hook(frame)
                    except Exception:
                        log.exception("reply hook %r raised", hook)
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
        if frame.msg_id == PING_ID and not frame.seq:
            self._answer_ping(frame)
            return
        if frame.msg_id == GOAWAY_ID:
            try:
                self.goaway = GoAway.FromString(frame.payload)
            except DecodeError:
                self._broken(frame, "GoAway")
                return
            error = server_error(self.goaway.reason, self.goaway.message)
            self._fail(ConnectionClosed("server sent GoAway", error))
            return
        seq = frame.seq
        if self._ledger.push(seq, asyncio.get_running_loop().time()) is Verdict.DUPLICATE:
            return
        # Acknowledged as handed over below, whatever the callbacks do (one that raises
        # is logged; the push is not delivered again either).
        self._arm_ack()
        try:
            message = self.registry.decode(frame.msg_id, frame.payload)
        except RemoteProtocolError as exc:
            # A newer server may push types this client predates; one odd push must not
            # cost the connection or the frames after it (nor be replayed forever).
            self.unknown_pushes += 1
            log.warning("skipped push seq %d: %s", seq, exc)
            return
        push = Push(message, frame.msg_id, seq)
        for callback in self._push_callbacks.get(type(message), ()):
            try:
                callback(push)
            except Exception:
                log.exception("push callback %r raised", callback)
        for queue in self._push_queues:
            queue.put_nowait(push)

    def _answer_ping(self, frame: Frame) -> None:
        """A server heartbeat (docs/protocol.md, "Server heartbeats"): answer with a Pong
        notification at once, whatever else the application is doing, so an idle but
        healthy client is never cut for silence."""
        try:
            ping = Ping.FromString(frame.payload)
        except DecodeError:
            self._broken(frame, "Ping")
            return
        pong = Pong(client_time_ns=ping.client_time_ns).SerializeToString()
        self._send(encode_frame(PONG_ID, 0, 0, pong))

    def _fail(self, exc: ConnectionClosed, *, final: bool = False) -> None:
        """The connection ended (or is about to: a closing Error, a GoAway): record the
        first reason and fail every request waiting on it. Whether the client is done
        is decided once the transport is really gone, or at once when `final` (close())."""
        state = self._state
        if state in _LIVE:
            self._reason = exc
            # A drop while RESTORING leaves the reconnect loop, already running, to go on.
            self._set_state(
                ConnState.RECONNECTING if state is ConnState.RESTORING else ConnState.DOWN
            )
            # The session is not on a connection until the next Login/Resume reply.
            self._ledger.detach()
            self._arm_ack()
            if exc.code == ErrorCode.SESSION_REPLACED and exc.error is not None:
                # Ours lives on another connection now; it is not coming back here.
                for pending in self._lose_session(exc.error):
                    self._spawn(pending)
        reason = self._gone()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(reason)
        self._pending.clear()
        self._reply_hooks.clear()
        self._out.clear()
        transport = self._transport
        if transport is None or transport.is_closing() or exc.error is None:
            if final or self._reconnect is None or self._final() or self.closed:
                self._finish()
            elif self._state is ConnState.DOWN:
                self._set_state(ConnState.RECONNECTING)
                self._reconnect_task = asyncio.get_running_loop().create_task(
                    self._reconnect_loop(), name="tickwire-reconnect"
                )

    def _final(self) -> bool:
        """The server closed for a reason a reconnect would only repeat (_FINAL_CODES)."""
        return self._reason is not None and self._reason.code in _FINAL_CODES

    def _gone(self) -> ConnectionClosed:
        """Why the connection is gone (in the _GONE states): what requests raise."""
        assert self._reason is not None
        return self._reason

    @property
    def _transport(self) -> asyncio.Transport | None:
        """The current connection's transport (None while there is none)."""
        return None if self._wire is None else self._wire.transport

    def _set_state(self, state: ConnState) -> None:
        self._state = state
        self._sync_events()

    def _sync_events(self) -> None:
        """The Events waiters await, derived here and only here from the state and the
        current wire: a connection to send on (set in OPEN, and in CLOSED so that waiters
        wake to raise), room in its write buffer (set too once the connection is gone,
        for the same reason), and the end."""
        state = self._state
        _toggle(self._usable, state is ConnState.OPEN or state is ConnState.CLOSED)
        wire = self._wire
        _toggle(self._writable, state not in _LIVE or wire is None or not wire.paused)
        _toggle(self._closed_event, state is ConnState.CLOSED)

    def _spawn(self, awaitable: Awaitable[None]) -> None:
        async def run() -> None:
            await awaitable

        task = asyncio.get_running_loop().create_task(run())
        self._callback_tasks.add(task)
        task.add_done_callback(self._callback_tasks.discard)

    def _finish(self, reason: ConnectionClosed | None = None) -> None:
        """Closed for good: nothing reconnects, iterators end, waiters wake."""
        if self._state is not ConnState.CLOSED:
            self._reason = reason or self._reason or ConnectionClosed("connection closed")
            self._set_state(ConnState.CLOSED)
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        for queue in self._push_queues:
            queue.put_nowait(None)

    async def _reconnect_loop(self) -> None:
        policy = self._reconnect
        assert policy is not None
        delay = policy.initial
        if self.goaway is not None and self.goaway.reconnect_after_ms:
            delay = self.goaway.reconnect_after_ms / 1000
        tries = 0
        try:
            while policy.attempts is None or tries < policy.attempts:
                await asyncio.sleep(max(policy.jittered(delay), self._retry_after))
                self._retry_after = 0.0
                tries += 1
                try:
                    await self._open()
                except OSError as exc:  # TimeoutError and TLSError included
                    log.info(
                        "reconnect attempt %d to %s:%d failed: %s",
                        tries,
                        *self.address,
                        exc or type(exc).__name__,
                    )
                    # The same address first each time the connection is lost (a GoAway's
                    # server may come back at once), then the others in turn.
                    self._next_address()
                    delay = min(max(delay, policy.initial) * 2, policy.maximum)
                    continue
                if self.closed:
                    # Closed for good while it connected (close(), a final close).
                    if self._transport is not None:
                        self._transport.close()
                    return
                self._back_up()
                # The session goes first, then the callbacks: their requests see the
                # connection up, while requests that waited for it are released only
                # afterwards.
                if not await self._restore_session():
                    if self.closed:
                        return
                    # A node that accepts but does not answer (hung, overloaded) is no
                    # better than one that refuses: the next try goes elsewhere.
                    self._next_address()
                    delay = min(max(delay, policy.initial) * 2, policy.maximum)
                    continue
                for callback in self._reconnect_callbacks:
                    try:
                        result = callback(self)
                        if result is not None:
                            await result
                    except Exception:
                        log.exception("reconnect callback %r raised", callback)
                if self._state is ConnState.RESTORING:
                    self._set_state(ConnState.OPEN)
                    return
                if self.closed:
                    return  # closed for good meanwhile (SessionReplaced, say)
                # It dropped again while the callbacks ran: start over from the short wait.
                delay = policy.initial
            where = ", ".join(f"{host}:{port}" for host, port in self._addresses)
            self._finish(
                ConnectionClosed(
                    f"gave up reconnecting to {where} after {tries} attempts (last: {self._reason})"
                )
            )
        finally:
            self._reconnect_task = None
            if self._state is ConnState.RECONNECTING or self._state is ConnState.RESTORING:
                # Only an exception escaping the loop gets here: without the loop nothing
                # would ever leave these states, and requests would wait for nothing.
                self._finish()

    def _back_up(self) -> None:
        self.reconnects += 1
        self.goaway = None
        self._reason = None
        self._set_state(ConnState.RESTORING)
        log.info("reconnected to %s:%d (%d)", *self.address, self.reconnects)


def _addresses(given: Iterable[Address]) -> list[Address]:
    """`fallbacks` checked, as (host, port) tuples: a bare "host:port" string or a
    mistyped port would otherwise fail only at the reconnect that needs it."""
    found: list[Address] = []
    for item in given:
        if isinstance(item, str) or len(item) != 2:
            raise ValueError(f"fallbacks take (host, port) pairs, not {item!r}")
        host, port = item
        if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"fallbacks take (host, port) pairs, not {item!r}")
        found.append((host, port))
    return found


def _toggle(event: asyncio.Event, on: bool) -> None:
    if on:
        event.set()
    else:
        event.clear()
