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
import struct
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from protocol.errors import ErrorCode
from protocol.proto.system_pb2 import Error, GoAway
from protocol.registry import declared_id

_BODY_HEADER = struct.Struct(">HBI")  # msg_id, flags, seq: what `length` counts before the payload
_LENGTH = struct.Struct(">I")
_MIN_LENGTH = 7
_MAX_FRAME = 1 << 20
_RESPONSE = 0x01
_ERROR = 0x02
_MAX_SEQ = 0xFFFFFFFF

M = TypeVar("M", bound=Message)


def msg_id_of(message_type: type[Message]) -> int:
    """The wire id system.proto declares for `message_type`."""
    msg_id = declared_id(message_type.DESCRIPTOR)
    if msg_id is None:
        raise ValueError(f"{message_type.__name__} declares no tickwire.msg_id")
    return msg_id


_ERROR_ID = msg_id_of(Error)
_GOAWAY_ID = msg_id_of(GoAway)


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
    """One connection: `call` sends a request and returns its decoded reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._seq = 0

    @classmethod
    async def connect(cls, host: str, port: int, *, timeout: float = 10.0) -> FrameClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        return cls(reader, writer)

    async def call(self, request: Message, reply_type: type[M]) -> M:
        """Send `request`, return the reply of type `reply_type` to it.

        Raises ServerError for an Error answer, Closed when the connection ends first,
        WireError for anything else (a reply of another type or seq, an unsolicited
        frame: this client never has anything else in flight).
        """
        self._seq = self._seq + 1 if self._seq < _MAX_SEQ else 1
        seq = self._seq
        payload = request.SerializeToString()
        header = _LENGTH.pack(_MIN_LENGTH + len(payload)) + _BODY_HEADER.pack(
            msg_id_of(type(request)), 0, seq
        )
        try:
            self._writer.write(header + payload)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise Closed(f"write failed: {type(exc).__name__}: {exc}") from None
        msg_id, flags, got_seq, body = await self._read_frame()
        if msg_id == _GOAWAY_ID:
            away = _parse(GoAway, body)
            raise Closed(f"GoAway {code_name(away.reason)}: {away.message}")
        if msg_id == _ERROR_ID and flags & _ERROR:
            error = _parse(Error, body)
            if got_seq == seq:
                raise ServerError(error.code, error.message)
            raise Closed(f"Error {code_name(error.code)}: {error.message}")
        if got_seq != seq or not flags & _RESPONSE:
            raise WireError(
                f"expected the reply to seq {seq}, got msg_id={msg_id} flags={flags} seq={got_seq}"
            )
        if msg_id != msg_id_of(reply_type):
            raise WireError(f"expected a {reply_type.__name__}, got msg_id={msg_id}")
        return _parse(reply_type, body)

    async def _read_frame(self) -> tuple[int, int, int, bytes]:
        try:
            (length,) = _LENGTH.unpack(await self._reader.readexactly(4))
            if not _MIN_LENGTH <= length <= _MAX_FRAME:
                raise WireError(f"frame length {length} out of range")
            rest = await self._reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise Closed("the server closed the connection") from None
        except (ConnectionError, OSError) as exc:
            raise Closed(f"read failed: {type(exc).__name__}: {exc}") from None
        msg_id, flags, seq = _BODY_HEADER.unpack_from(rest)
        return msg_id, flags, seq, rest[_MIN_LENGTH:]

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


def _parse(message_type: type[M], body: bytes) -> M:
    try:
        return message_type.FromString(body)
    except DecodeError as exc:
        raise WireError(f"undecodable {message_type.__name__}: {exc}") from None
