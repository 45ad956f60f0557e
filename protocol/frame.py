"""The frame codec of the wire protocol, sans-I/O.

Rules this module keeps (see docs/protocol.md, "Frame"):

- A frame is ``length u32 | msg_id u16 | flags u8 | seq u32 | payload``, big-endian;
  ``length`` counts the 7 header bytes after it plus the payload.
- ``length`` is checked against ``[7, max_frame]`` as soon as its 4 bytes are in, before
  anything else of that frame is buffered: a peer can never make us allocate what it merely
  announced. Only bytes actually received are ever held (at most one frame's worth).
- A length outside that range cannot be skipped safely, so the decoder stops for good and
  exposes the error; frames decoded before it in the same chunk are still returned, so
  their replies go out before the error and the close.
- Reserved flag bits do not break framing; the decoder hands such frames on and the
  dispatcher answers BAD_FLAGS (the connection stays open).
"""

from __future__ import annotations

import struct
from enum import IntFlag
from typing import NamedTuple

from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

HEADER = struct.Struct(">IHBI")
HEADER_SIZE = HEADER.size  # 11
#: ``length`` of a frame with an empty payload: msg_id + flags + seq.
MIN_LENGTH = 7
DEFAULT_MAX_FRAME = 1 << 20
MAX_MSG_ID = 0xFFFF
MAX_SEQ = 0xFFFFFFFF

_LENGTH = struct.Struct(">I")


class Flags(IntFlag):
    NONE = 0
    RESPONSE = 0x01
    ERROR = 0x02
    PUSH = 0x04
    COMPRESSED = 0x08


RESERVED_FLAGS = 0xF0


class Frame(NamedTuple):
    msg_id: int
    flags: int
    seq: int
    payload: bytes


def encode_frame(msg_id: int, flags: int, seq: int, payload: bytes = b"") -> bytes:
    """One frame's bytes. Raises LocalProtocolError on values the header cannot carry."""
    try:
        return HEADER.pack(MIN_LENGTH + len(payload), msg_id, flags, seq) + payload
    except struct.error as exc:
        raise LocalProtocolError(
            f"cannot frame msg_id={msg_id} flags={flags} seq={seq} "
            f"payload={len(payload)} bytes: {exc}"
        ) from None


#: Builds a Frame without NamedTuple's Python-level __new__ (docs/bench.md, "Figures behind
#: the server's design").
_tuple_new = tuple.__new__


class FrameDecoder:
    """Incremental decoder: feed it byte chunks of any size, get whole frames back.

    `feed` never raises on peer input. After a fatal error, `error` is set, the frames
    before it have been returned, and every later `feed` returns nothing.
    """

    __slots__ = ("_buf", "_need", "error", "max_frame", "named")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, *, named: bool = True) -> None:
        if max_frame < MIN_LENGTH:
            raise LocalProtocolError(f"max_frame must be at least {MIN_LENGTH}, got {max_frame}")
        self.max_frame = max_frame
        #: False: frames come as plain ``(msg_id, flags, seq, payload)`` tuples, which cost
        #: less to build and unpack than Frame (the server's hot path); same fields, order.
        self.named = named
        self.error: RemoteProtocolError | None = None
        self._buf = bytearray()
        #: Bytes `_buf` must hold before parsing is worth trying again: the whole pending
        #: frame once its length is known, else the 4 length bytes.
        self._need = 0

    @property
    def buffered(self) -> int:
        """Bytes held for a frame that has not fully arrived yet."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        if self.error is not None:
            return []
        buf = self._buf
        if buf:
            # A frame is pending: only bytes received are held, never the announced size,
            # and nothing is parsed again until the pending frame can be complete.
            buf += data
            if len(buf) < self._need:
                return []
            data = bytes(buf)
            buf.clear()
        elif type(data) is not bytes:
            data = bytes(data)
        frames: list[Frame] = []
        append = frames.append
        unpack_header = HEADER.unpack_from
        new_frame = _tuple_new
        named = self.named
        max_frame = self.max_frame
        end_of_data = len(data)
        pos = 0
        # Common case first: a whole header is here, one unpack gives every field.
        while end_of_data - pos >= HEADER_SIZE:
            length, msg_id, flags, seq = unpack_header(data, pos)
            if length > max_frame or length < MIN_LENGTH:
                self._fail(length)
                return frames
            end = pos + 4 + length
            if end > end_of_data:
                break
            if named:
                append(new_frame(Frame, (msg_id, flags, seq, data[pos + HEADER_SIZE : end])))
            else:
                append((msg_id, flags, seq, data[pos + HEADER_SIZE : end]))  # type: ignore[arg-type]
            pos = end
        rest = end_of_data - pos
        if rest:
            if rest >= 4:
                # The length is judged as soon as its 4 bytes are in (docs/protocol.md, "Frame").
                length = _LENGTH.unpack_from(data, pos)[0]
                if length > max_frame or length < MIN_LENGTH:
                    self._fail(length)
                    return frames
                self._need = 4 + length
            else:
                self._need = 4
            self._buf = bytearray(data[pos:])
        return frames

    def _fail(self, length: int) -> None:
        if length > self.max_frame:
            self.error = RemoteProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"frame length {length} exceeds max_frame {self.max_frame}",
            )
        else:
            self.error = RemoteProtocolError(
                ErrorCode.BAD_FRAME, f"frame length {length} is below the minimum of 7"
            )
        self._buf = bytearray()
