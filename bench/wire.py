"""A minimal request/reply client over raw frames, for the session benches (login, restore).

Why not the client SDK: these benches must measure the server, not a client library that
changes under them, and must see every frame the server sends (an Error, a GoAway, a
frame with the wrong seq) as what it is. One request at a time per connection, which is
all a login or a resume needs; at a few thousand logins per second, asyncio streams cost
the generator little next to what a login costs the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from protocol.errors import ErrorCode
from protocol.frame import DEFAULT_MAX_FRAME, HEADER, HEADER_SIZE, MAX_SEQ, MIN_LENGTH, Flags
from protocol.proto.system_pb2 import Error, GoAway
from protocol.registry import MessageRegistry, system_registry
from protocol.system import ERROR_ID, GOAWAY_ID

_RESPONSE = int(Flags.RESPONSE)
_ERROR = int(Flags.ERROR)

M = TypeVar("M", bound=Message)

#: The protocol's own messages: what a FrameClient knows unless given more.
_SYSTEM = system_registry()


def code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"code {code}"


class WireError(Exception):
    """The server did not answer the request as the protocol says it must."""


class ServerError(WireError):
    """The server answered the request with an Error frame."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code_name(code)}: {message}")
        self.code = code


class Closed(WireError):
    """The connection ended (an EOF, a reset, or a closing Error or GoAway first)."""


class FrameClient:
    """One connection: `call` sends a request and returns its decoded reply.

    `registry` gives the wire IDs of the messages sent and expected: the protocol's own
    by default, an application's too when the bench serves one (bench.fanout).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        registry: MessageRegistry | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._registry = registry or _SYSTEM
        self._seq = 0

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = 10.0,
        registry: MessageRegistry | None = None,
    ) -> FrameClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        return cls(reader, writer, registry)

    async def call(self, request: Message, reply_type: type[M]) -> M:
        """Send `request`, return the reply of type `reply_type` to it.

        Raises ServerError for an Error answer, Closed when the connection ends first,
        WireError for anything else (a reply of another type or seq, an unsolicited
        frame: this client never has anything else in flight).
        """
        self._seq = self._seq + 1 if self._seq < MAX_SEQ else 1
        seq = self._seq
        payload = request.SerializeToString()
        header = HEADER.pack(MIN_LENGTH + len(payload), self._registry.id_of(request), 0, seq)
        try:
            self._writer.write(header + payload)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise Closed(f"write failed: {type(exc).__name__}: {exc}") from None
        msg_id, flags, got_seq, body = await self._read_frame()
        if msg_id == GOAWAY_ID:
            away = _parse(GoAway, body)
            raise Closed(f"GoAway {code_name(away.reason)}: {away.message}")
        if msg_id == ERROR_ID and flags & _ERROR:
            error = _parse(Error, body)
            if got_seq == seq:
                raise ServerError(error.code, error.message)
            raise Closed(f"Error {code_name(error.code)}: {error.message}")
        if got_seq != seq or not flags & _RESPONSE:
            raise WireError(
                f"expected the reply to seq {seq}, got msg_id={msg_id} flags={flags} seq={got_seq}"
            )
        if msg_id != self._registry.id_of(reply_type):
            raise WireError(f"expected a {reply_type.__name__}, got msg_id={msg_id}")
        return _parse(reply_type, body)

    async def _read_frame(self) -> tuple[int, int, int, bytes]:
        try:
            length, msg_id, flags, seq = HEADER.unpack(await self._reader.readexactly(HEADER_SIZE))
            if not MIN_LENGTH <= length <= DEFAULT_MAX_FRAME:
                raise WireError(f"frame length {length} out of range")
            body = await self._reader.readexactly(length - MIN_LENGTH)
        except asyncio.IncompleteReadError:
            raise Closed("the server closed the connection") from None
        except (ConnectionError, OSError) as exc:
            raise Closed(f"read failed: {type(exc).__name__}: {exc}") from None
        return msg_id, flags, seq, body

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


def _parse(message_type: type[M], body: bytes) -> M:
    try:
        return message_type.FromString(body)
    except DecodeError as exc:
        raise WireError(f"undecodable {message_type.__name__}: {exc}") from None
