"""One Redis connection for the cluster bus: commands pipelined in order, replies matched
first in first out, and pub/sub messages handed to a callback as they are parsed.

Why not redis-py here, when the session store uses it: the bus needs three things its
pool and its PubSub do not give. Order: every PUBLISH of a node goes over one connection,
so Redis delivers one node's pushes to a user in the order they were made (a pool sends
them over whichever connection is free). Batching: commands made in one loop iteration
leave in one write, and a subscriber's messages are parsed in one pass over what one
read returned (redis-py's PubSub builds a dict per message and awaits per message).
Knowing when a SUBSCRIBE took effect: its confirmation resolves a future, so a login can
wait until the pushes for its user reach this node before it reads the inbox.

Parsing is hiredis' (the same C reader redis-py uses); what is written here is the
framing of commands, the FIFO of replies and the reconnect, about what nats.py does for
its own protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import hiredis

from server.cluster.errors import ClusterUnavailable

#: What a command argument may be.
Arg = bytes | str | int | float

#: Seconds to wait for a connection to open before calling Redis unreachable.
CONNECT_TIMEOUT = 2.0


@dataclass(frozen=True)
class RedisAddress:
    """Where the cluster's Redis is, from a ``redis://[[user]:password@]host[:port][/db]``
    URL."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """The parts of `url`; ValueError (naming what is wrong) for anything else."""
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError(f"a cluster URL starts with redis://, not {url!r}")
        if not parts.hostname:
            raise ValueError(f"the cluster URL {url!r} names no host")
        path = parts.path.strip("/")
        try:
            db = int(path) if path else 0
            port = parts.port or 6379
        except ValueError:
            raise ValueError(
                f"the cluster URL {url!r} needs a numeric port and database (redis://HOST:PORT/DB)"
            ) from None
        if db < 0:
            raise ValueError(f"the cluster URL's database must be 0 or more, not {db}")
        return cls(
            host=parts.hostname,
            port=port,
            db=db,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
        )

    def __str__(self) -> str:
        return f"{self.host}:{self.port}/{self.db}"


def encode_command(args: tuple[Arg, ...]) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes):
            data = arg
        else:
            data = str(arg).encode()
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(b"\r\n")
    return b"".join(out)


class RespConnection(asyncio.Protocol):
    """A connected Redis socket. `command` queues a command and returns the future of its
    reply; a reply that is a pub/sub message (``message``, ``subscribe``...) when no
    command waits goes to `on_push`. `closed` resolves when the connection is gone."""

    def __init__(self, on_push: Callable[[list[bytes]], None] | None = None) -> None:
        self.on_push = on_push
        self.transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader()
        self._waiting: deque[asyncio.Future[object]] = deque()
        self._out: list[bytes] = []
        self._loop = asyncio.get_event_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        #: A subscriber's connection: replies to (un)subscribe come as push arrays, and
        #: `expect_confirmations` counts how many each command makes.
        self.subscriber = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(ClusterUnavailable(f"Redis sent what is not RESP: {exc}"))
                if self.transport is not None:
                    self.transport.abort()
                return
            if reply is False:
                return
            if self.subscriber and isinstance(reply, list) and reply and reply[0] == b"message":
                if self.on_push is not None:
                    self.on_push(reply)
                continue
            if waiting:
                future = waiting.popleft()
                if not future.done():
                    if isinstance(reply, hiredis.ReplyError):
                        future.set_exception(ClusterUnavailable(f"Redis refused: {reply}"))
                    else:
                        future.set_result(reply)
            elif self.on_push is not None and isinstance(reply, list):
                self.on_push(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection to Redis lost: {exc}" if exc else "connection to Redis closed"
        self._fail(ClusterUnavailable(reason))
        if not self.closed.done():
            self.closed.set_result(None)

    def _fail(self, error: ClusterUnavailable) -> None:
        waiting, self._waiting = self._waiting, deque()
        for future in waiting:
            if not future.done():
                future.set_exception(error)
        self.transport = None

    # -- commands -------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def command(self, *args: Arg) -> asyncio.Future[object]:
        """Queue `args` for the next write (all commands of one iteration go in one write)
        and return the future of its reply; ClusterUnavailable at once when not connected."""
        future: asyncio.Future[object] = self._loop.create_future()
        if not self.up:
            future.set_exception(ClusterUnavailable("not connected to Redis"))
            return future
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(encode_command(args))
        self._waiting.append(future)
        return future

    def send(self, *args: Arg, replies: int) -> list[asyncio.Future[object]]:
        """Queue a command that gets `replies` replies (SUBSCRIBE of n channels gets n)."""
        first = self.command(*args)
        more = []
        for _ in range(replies - 1):
            future: asyncio.Future[object] = self._loop.create_future()
            if first.done():  # not connected: the same error for each
                future.set_exception(ClusterUnavailable("not connected to Redis"))
            else:
                self._waiting.append(future)
            more.append(future)
        return [first, *more]

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_connection(
    address: RedisAddress,
    on_push: Callable[[list[bytes]], None] | None = None,
    *,
    subscriber: bool = False,
) -> RespConnection:
    """A RespConnection to `address`, authenticated, on its database (a subscriber's
    database does not matter: channels are server-wide, so the bus puts the database
    number in every channel name instead)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _, conn = await loop.create_connection(
                lambda: RespConnection(on_push), address.host, address.port
            )
    except (OSError, TimeoutError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "timed out"
        raise ClusterUnavailable(f"Redis at {address} is unreachable: {reason}") from None
    try:
        if address.password is not None:
            auth: tuple[Arg, ...] = (
                ("AUTH", address.username, address.password)
                if address.username
                else ("AUTH", address.password)
            )
            await conn.command(*auth)
        if not subscriber and address.db:
            await conn.command("SELECT", address.db)
    except BaseException:
        conn.close()
        raise
    conn.subscriber = subscriber
    return conn


async def close_connection(conn: RespConnection | None) -> None:
    if conn is None:
        return
    conn.close()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait([conn.closed], timeout=1.0)
