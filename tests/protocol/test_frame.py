"""The frame codec against docs/protocol.md, "Frame".

The decoder is fed by whatever chunks TCP happens to deliver, so the core property is that
the chunking never changes the frames; the error rows are the ones the decoder itself
owns (length out of range), judged before anything of the frame is buffered.
"""

from __future__ import annotations

import struct
import tracemalloc
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.frame import (
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    MIN_LENGTH,
    RESERVED_FLAGS,
    Flags,
    Frame,
    FrameDecoder,
    encode_frame,
)

frames_st = st.lists(
    st.builds(
        Frame,
        msg_id=st.integers(0, 0xFFFF),
        flags=st.integers(0, 0xFF),
        seq=st.integers(0, 0xFFFFFFFF),
        payload=st.binary(max_size=2000),
    ),
    max_size=8,
)


def wire(frames: list[Frame]) -> bytes:
    return b"".join(encode_frame(*f) for f in frames)


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[Frame]:
    out: list[Frame] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def header(length: int) -> bytes:
    """Only the 4-byte length field, for frames the encoder refuses to build."""
    return struct.pack(">I", length)


def assert_clean(decoder: FrameDecoder) -> None:
    assert decoder.error is None
    assert decoder.buffered == 0


# -- layout ---------------------------------------------------------------------------


def test_layout_is_byte_exact() -> None:
    # length 9 = 7 + len("hi") | msg_id 10 | flags RESPONSE | seq 7 | "hi"
    assert encode_frame(10, 1, 7, b"hi") == bytes.fromhex("00000009 000a 01 00000007 6869")
    # big-endian on every field, empty payload gives length 7
    assert encode_frame(0x1234, 0x03, 0xDEADBEEF) == bytes.fromhex("00000007 1234 03 deadbeef")
    assert encode_frame(0xFFFF, 0xFF, 0xFFFFFFFF, b"\x00") == bytes.fromhex(
        "00000008 ffff ff ffffffff 00"
    )


def test_hand_built_bytes_decode() -> None:
    data = bytes.fromhex("00000009 000b 05 01020304 6f6b")
    decoder = FrameDecoder()
    assert decoder.feed(data) == [Frame(11, Flags.RESPONSE | Flags.PUSH, 0x01020304, b"ok")]
    assert_clean(decoder)


def test_constants_match_spec() -> None:
    assert HEADER_SIZE == 11
    assert MIN_LENGTH == 7
    assert DEFAULT_MAX_FRAME == 1024 * 1024
    assert (Flags.RESPONSE, Flags.ERROR, Flags.PUSH, Flags.COMPRESSED) == (1, 2, 4, 8)
    assert RESERVED_FLAGS == 0xF0


def test_payload_is_bytes_not_a_view() -> None:
    # A view into the decoder's buffer would change under the handler when the buffer is reused.
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00")
    (frame,) = decoder.feed(encode_frame(1, 0, 1, b"abc")[2:])
    assert type(frame.payload) is bytes


@pytest.mark.parametrize(
    ("msg_id", "flags", "seq"),
    [
        (0x10000, 0, 0),
        (-1, 0, 0),
        (1, 0x100, 0),
        (1, -1, 0),
        (1, 0, 0x1_0000_0000),
        (1, 0, -1),
    ],
)
def test_encode_refuses_values_the_header_cannot_carry(msg_id: int, flags: int, seq: int) -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(msg_id, flags, seq, b"")


def test_encode_accepts_the_extremes() -> None:
    assert len(encode_frame(0xFFFF, 0xFF, 0xFFFFFFFF)) == HEADER_SIZE
    assert len(encode_frame(0, 0, 0)) == HEADER_SIZE


# -- chunking never changes the frames -------------------------------------------------

SETTINGS = settings(max_examples=150, deadline=None)


@SETTINGS
@given(frames=frames_st)
def test_fed_whole(frames: list[Frame]) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(wire(frames)) == frames
    assert_clean(decoder)


@settings(max_examples=40, deadline=None)
@given(frames=frames_st)
def test_fed_byte_by_byte(frames: list[Frame]) -> None:
    data = wire(frames)
    decoder = FrameDecoder()
    assert feed_all(decoder, [data[i : i + 1] for i in range(len(data))]) == frames
    assert_clean(decoder)


@SETTINGS
@given(frames=frames_st, data=st.data())
def test_fed_at_random_splits(frames: list[Frame], data: st.DataObject) -> None:
    raw = wire(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=20), label="split points"))
    bounds = [0, *cuts, len(raw)]
    chunks = [raw[a:b] for a, b in pairwise(bounds)]
    decoder = FrameDecoder()
    assert feed_all(decoder, chunks) == frames
    assert_clean(decoder)


@SETTINGS
@given(frames=frames_st, data=st.data())
def test_chunk_types_are_interchangeable(frames: list[Frame], data: st.DataObject) -> None:
    # asyncio hands bytes; buffered protocols and tests hand bytearray or memoryview.
    raw = wire(frames)
    cut = data.draw(st.integers(0, len(raw)))
    decoder = FrameDecoder()
    got = decoder.feed(bytearray(raw[:cut])) + decoder.feed(memoryview(raw)[cut:])
    assert got == frames
    assert_clean(decoder)


def test_partial_frame_is_held_until_complete() -> None:
    data = encode_frame(10, 0, 1, b"x" * 100)
    decoder = FrameDecoder()
    assert decoder.feed(data[:50]) == []
    assert decoder.buffered == 50
    assert decoder.feed(data[50:]) == [Frame(10, 0, 1, b"x" * 100)]
    assert_clean(decoder)


# -- length out of range ---------------------------------------------------------------

GOOD = Frame(10, 0, 1, b"before")
LATER = Frame(11, 1, 2, b"after")


@pytest.mark.parametrize("length", range(MIN_LENGTH))
def test_length_below_7_is_bad_frame(length: int) -> None:
    decoder = FrameDecoder()
    chunk = encode_frame(*GOOD) + header(length) + b"\x00" * 16 + encode_frame(*LATER)
    assert decoder.feed(chunk) == [GOOD]
    assert isinstance(decoder.error, RemoteProtocolError)
    assert decoder.error.code == ErrorCode.BAD_FRAME
    assert decoder.error.fatal
    assert decoder.buffered == 0
    # Framing is lost for good: nothing after it may be read as a frame.
    assert decoder.feed(encode_frame(*LATER)) == []
    assert decoder.error.code == ErrorCode.BAD_FRAME


@pytest.mark.parametrize("max_frame", [MIN_LENGTH, 100, DEFAULT_MAX_FRAME])
def test_length_above_max_frame_is_too_large(max_frame: int) -> None:
    decoder = FrameDecoder(max_frame=max_frame)
    chunk = encode_frame(*GOOD[:3], b"") + header(max_frame + 1) + b"\x00" * 64
    assert decoder.feed(chunk) == [Frame(GOOD.msg_id, GOOD.flags, GOOD.seq, b"")]
    assert decoder.error is not None
    assert decoder.error.code == ErrorCode.FRAME_TOO_LARGE
    assert decoder.error.fatal
    assert decoder.buffered == 0
    assert decoder.feed(encode_frame(*LATER)) == []


def test_default_max_frame_applies() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(header(DEFAULT_MAX_FRAME + 1)) == []
    assert decoder.error is not None
    assert decoder.error.code == ErrorCode.FRAME_TOO_LARGE


@pytest.mark.parametrize("max_frame", [100, DEFAULT_MAX_FRAME])
def test_length_exactly_max_frame_is_accepted(max_frame: int) -> None:
    frame = Frame(12, 0, 3, b"\xab" * (max_frame - MIN_LENGTH))
    data = encode_frame(*frame)
    assert struct.unpack(">I", data[:4])[0] == max_frame
    decoder = FrameDecoder(max_frame=max_frame)
    assert decoder.feed(data) == [frame]
    assert_clean(decoder)


def test_length_exactly_7_is_an_empty_payload() -> None:
    decoder = FrameDecoder()
    data = bytes.fromhex("00000007 0014 00 00000009")
    assert decoder.feed(data + data) == [Frame(20, 0, 9, b""), Frame(20, 0, 9, b"")]
    assert_clean(decoder)


@pytest.mark.parametrize(
    ("length", "code"),
    [(101, ErrorCode.FRAME_TOO_LARGE), (0xFFFFFFFF, ErrorCode.FRAME_TOO_LARGE)]
    + [(n, ErrorCode.BAD_FRAME) for n in range(MIN_LENGTH)],
)
def test_length_is_judged_as_soon_as_its_4_bytes_arrive(length: int, code: ErrorCode) -> None:
    decoder = FrameDecoder(max_frame=100)
    head = header(length)
    assert decoder.feed(head[:3]) == []
    assert decoder.error is None
    assert decoder.feed(head[3:]) == []
    assert decoder.error is not None
    assert decoder.error.code == code


def test_announced_size_is_never_allocated() -> None:
    # max_frame this high lets a 2 GiB announcement pass the limit check, so the only thing
    # between the peer and a 2 GiB allocation is that the decoder buffers what it received.
    decoder = FrameDecoder(max_frame=0xFFFFFFFF)
    announced = header(2**31) + b"\x00\x0a\x00\x00\x00\x00\x01" + b"z" * 100
    more = b"z" * 1000
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        first = decoder.feed(announced)
        second = decoder.feed(more)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert first == [] and second == []
    assert decoder.error is None
    assert decoder.buffered == len(announced) + len(more)
    assert peak < 1 << 20, f"feeding {decoder.buffered} bytes peaked at {peak} bytes"


# -- flags -----------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [0x10, 0x20, 0x40, 0x80, 0xF0, 0xFF])
def test_reserved_flags_do_not_break_framing(flags: int) -> None:
    # BAD_FLAGS keeps the connection open, so the decoder must keep framing after it.
    decoder = FrameDecoder()
    odd = Frame(10, flags, 5, b"x")
    assert decoder.feed(encode_frame(*odd) + encode_frame(*LATER)) == [odd, LATER]
    assert_clean(decoder)
