"""What a peer may see on the wire, judged against docs/protocol.md: shared by the fuzz
targets and the Hypothesis tests over a live connection (tests/hostile/).

`expected_close` parses the stream the peer sent as the server must (the frame format
alone), so the checks know whether the server owes a framing error and which; `exchange`
sends the stream over a real socket, half-closes and reads until the server closes;
`check_answers` holds the answers to the promises: every frame a reply, a push or an
Error with a documented code, a closing code only last and only when owed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from protocol.errors import (
    CLOSING_CODES,
    FIRST_APPLICATION_CODE,
    ErrorCode,
    closes_connection,
)
from protocol.frame import HEADER_SIZE, MIN_LENGTH, Flags, Frame, FrameDecoder
from protocol.proto.system_pb2 import Error
from protocol.registry import MessageRegistry
from protocol.system import ERROR_ID

__all__ = [
    "Exchange",
    "LogWatch",
    "check_answers",
    "exchange",
    "expected_close",
    "reads_of",
    "split",
    "upto",
]


def expected_close(stream: bytes, max_frame: int) -> tuple[list[Frame], ErrorCode | None, int]:
    """The frames of `stream` before its first out-of-range length, that length's code
    (None when every length is in range), and how many bytes of `stream` the server reads
    before it stops: everything, or up to the end of the bad length's 4 bytes."""
    out: list[Frame] = []
    pos = 0
    while len(stream) - pos >= 4:
        (length,) = struct.unpack_from(">I", stream, pos)
        if length < MIN_LENGTH:
            return out, ErrorCode.BAD_FRAME, pos + 4
        if length > max_frame:
            return out, ErrorCode.FRAME_TOO_LARGE, pos + 4
        if len(stream) - pos < 4 + length:
            break
        msg_id, flags, seq = struct.unpack_from(">HBI", stream, pos + 4)
        out.append(Frame(msg_id, flags, seq, stream[pos + HEADER_SIZE : pos + 4 + length]))
        pos += 4 + length
    return out, None, len(stream)


def reads_of(stream: bytes, step: int) -> list[bytes]:
    """`stream` cut into reads of `step` bytes (0: one read)."""
    if step <= 0:
        return [stream]
    return [stream[i : i + step] for i in range(0, len(stream), step)]


def split(data: bytes) -> tuple[int, list[bytes]]:
    """A fuzzer's bytes as (max_frame, reads): the first byte picks max_frame (7 + n, so
    random lengths land in range often), the second the size of each read (0: one read),
    the rest is the stream."""
    if len(data) < 2:
        return MIN_LENGTH + 64, [data]
    return MIN_LENGTH + data[0], reads_of(data[2:], data[1])


def upto(reads: list[bytes], size: int) -> list[bytes]:
    """`reads` cut after their first `size` bytes.

    Past a bad length the server reads nothing more: bytes sent after it would stay
    unread and turn the server's close into a reset, which may drop the closing frame on
    its way to us (expected_close says where the server stops)."""
    kept: list[bytes] = []
    for chunk in reads:
        if size <= 0:
            break
        kept.append(chunk[:size])
        size -= len(chunk)
    return kept


@dataclass
class Exchange:
    """What came back on one connection: the frames, and how it ended."""

    frames: list[Frame] = field(default_factory=list)
    #: "eof": the server closed cleanly; "reset": it reset the connection; "open": it
    #: neither closed nor answered within the wait (a stuck connection).
    ended: str = "open"


async def exchange(
    address: tuple[str, int],
    reads: list[bytes],
    *,
    half_close: bool = True,
    until: Callable[[list[Frame]], bool] | None = None,
    timeout: float = 10.0,
) -> Exchange:
    """Send `reads` one write each (each drained before the next, so the server sees them
    as separate reads where the network allows), half-close unless told not to, and read
    until the server closes, `until(frames so far)` holds (the connection is then left
    "open"), or `timeout` passes."""
    reader, writer = await asyncio.open_connection(*address)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    result = Exchange()
    decoder = FrameDecoder(max_frame=0xFFFFFFFF)
    try:
        with contextlib.suppress(ConnectionError):
            for chunk in reads:
                if chunk:
                    writer.write(chunk)
                    await writer.drain()
            if half_close and writer.can_write_eof():
                writer.write_eof()
        try:
            async with asyncio.timeout(timeout):
                while data := await reader.read(1 << 16):
                    result.frames.extend(decoder.feed(data))
                    if until is not None and until(result.frames):
                        return result
            result.ended = "eof"
        except ConnectionResetError:
            result.ended = "reset"
        except TimeoutError:
            result.ended = "open"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    return result


def check_answers(
    sent: list[Frame],
    owed: ErrorCode | None,
    got: Exchange,
    registry: MessageRegistry,
    *,
    half_closed: bool = True,
) -> None:
    """Raise AssertionError (a crash, to a fuzzer) when what came back breaks
    docs/protocol.md: a frame that is neither a reply, a push nor an Error with a
    documented code; an answer to a request never sent; a closing code that was not
    owed, not last, or missing when owed; a connection left open after a half-close."""
    asked = Counter(f.seq for f in sent if f.seq)
    answered: Counter[int] = Counter()
    closing: int | None = None
    for frame in got.frames:
        msg_id, flags, seq, payload = frame
        assert closing is None, f"frame {frame!r} after the closing code {closing}"
        if flags & Flags.ERROR:
            assert msg_id == ERROR_ID, f"ERROR flag on msg_id {msg_id}"
            error = Error()
            try:
                error.ParseFromString(payload)
            except DecodeError:
                raise AssertionError(f"undecodable Error payload {payload!r}") from None
            code = error.code
            assert code in ErrorCode.__members__.values() or code >= FIRST_APPLICATION_CODE, (
                f"undocumented error code {code} ({error.message!r})"
            )
            if closes_connection(code):
                assert seq == 0 and not flags & Flags.RESPONSE, f"closing Error {frame!r}"
                closing = code
                continue
            if flags & Flags.RESPONSE:
                assert seq, f"Error answering seq 0: {frame!r}"
                answered[seq] += 1
            else:
                assert seq == 0, f"unsolicited Error with seq {seq}: {frame!r}"
            continue
        message_type = registry.class_of(msg_id)
        assert message_type is not None, f"frame of unregistered type {msg_id}: {frame!r}"
        if flags & Flags.PUSH:
            pass
        elif flags == Flags.RESPONSE:
            answered[seq] += 1
        else:
            raise AssertionError(f"frame with flags {flags:#04x} from the server: {frame!r}")
        try:
            message_type.FromString(payload)
        except DecodeError:
            raise AssertionError(f"undecodable {message_type.__name__}: {frame!r}") from None
    for seq, count in answered.items():
        assert count <= asked[seq], f"seq {seq} answered {count} times, asked {asked[seq]}"
    if owed is not None:
        assert closing == owed, f"owed a closing {owed.name}, got {closing} ({got.ended})"
        assert got.ended in ("eof", "reset"), "the connection stayed open after its closing code"
    else:
        assert closing is None or closing not in (
            ErrorCode.BAD_FRAME,
            ErrorCode.FRAME_TOO_LARGE,
        ), f"framing error {closing} on a well-framed stream"
        assert closing is None or closing in CLOSING_CODES
        if half_closed:
            assert got.ended == "eof", f"after a half-close the connection ended: {got.ended}"
        elif closing is None:
            assert got.ended == "open", f"closed with no closing code: {got.ended}"


class LogWatch(logging.Handler):
    """Collects every log record with a traceback or at ERROR and above, from any logger:
    a hostile peer must never produce one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is not None or record.levelno >= logging.ERROR:
            self.bad.append(record)

    def check(self) -> None:
        if self.bad:
            record = self.bad[0]
            raise AssertionError(
                f"the server logged {record.levelname} {record.name}: "
                f"{record.getMessage()} ({len(self.bad)} such records)"
                + (f"\n{self.format(record)}" if record.exc_info else "")
            )
