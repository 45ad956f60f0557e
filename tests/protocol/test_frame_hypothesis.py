"""Hypothesis over `FrameDecoder`: what it promises a hostile peer (docs/protocol.md,
"Frame" and "Fatal framing errors") must hold for any bytes, cut into reads anywhere.

The example-based tests in test_frame.py pin particular inputs; these search the space a
peer controls (the bytes and where the reads split them) for one that breaks a promise:
feed never raises, holds only bytes actually received (never an announced size, never
more than one incomplete frame), yields the same frames however the stream is cut, and
stops for good at the first bad length with a documented code.
"""

from __future__ import annotations

import itertools
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import CLOSING_CODES, ErrorCode, RemoteProtocolError
from protocol.frame import HEADER_SIZE, MIN_LENGTH, Frame, FrameDecoder, encode_frame

#: Small limits make random bytes announce in-range lengths often enough to matter.
max_frames = st.integers(min_value=MIN_LENGTH, max_value=96)

frames = st.builds(
    Frame,
    msg_id=st.integers(0, 0xFFFF),
    flags=st.integers(0, 0xFF),
    seq=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=80),
)


@st.composite
def hostile_streams(draw: st.DrawFn) -> bytes:
    """Valid frames, raw garbage and hand-made lengths (too small, too large, the
    largest allowed, u32 max) in any order: what a peer can put on the wire."""
    parts = draw(
        st.lists(
            st.one_of(
                frames.map(lambda f: encode_frame(*f)),
                st.binary(max_size=40),
                st.sampled_from([0, 1, 6, 7, 8, 97, 1 << 20, 0xFFFFFFFF]).map(
                    lambda n: struct.pack(">I", n)
                ),
            ),
            max_size=12,
        )
    )
    return b"".join(parts)


@st.composite
def cuts(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """`data` split at arbitrary points into reads (empty reads included)."""
    points = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def reference(data: bytes, max_frame: int) -> tuple[list[Frame], ErrorCode | None]:
    """The stream parsed whole, straight from the frame format: the frames before the
    first out-of-range length, and that length's code."""
    out: list[Frame] = []
    pos = 0
    while len(data) - pos >= 4:
        (length,) = struct.unpack_from(">I", data, pos)
        if length < MIN_LENGTH:
            return out, ErrorCode.BAD_FRAME
        if length > max_frame:
            return out, ErrorCode.FRAME_TOO_LARGE
        if len(data) - pos < 4 + length:
            break
        msg_id, flags, seq = struct.unpack_from(">HBI", data, pos + 4)
        out.append(Frame(msg_id, flags, seq, data[pos + HEADER_SIZE : pos + 4 + length]))
        pos += 4 + length
    return out, None


@settings(max_examples=400, deadline=None)
@given(st.data(), hostile_streams(), max_frames, st.booleans())
def test_any_split_of_any_bytes_decodes_as_the_whole_stream(
    data: st.DataObject, stream: bytes, max_frame: int, named: bool
) -> None:
    """Whatever the reads, the frames and the error are those of the stream parsed whole;
    nothing but a RemoteProtocolError with a closing framing code is ever reported."""
    decoder = FrameDecoder(max_frame, named=named)
    got: list[tuple[int, int, int, bytes]] = []
    for chunk in data.draw(cuts(stream)):
        got.extend(decoder.feed(chunk))  # raising here fails the test: feed never raises
    want, code = reference(stream, max_frame)
    assert [tuple(f) for f in got] == [tuple(f) for f in want]
    assert all(type(f) is (Frame if named else tuple) for f in got)
    if code is None:
        assert decoder.error is None
    else:
        assert isinstance(decoder.error, RemoteProtocolError)
        assert decoder.error.code == code
        assert decoder.error.code in CLOSING_CODES


@settings(max_examples=400, deadline=None)
@given(st.data(), hostile_streams(), max_frames)
def test_only_bytes_received_are_held_and_never_a_whole_frame(
    data: st.DataObject, stream: bytes, max_frame: int
) -> None:
    """After every read the decoder holds exactly the received bytes not yet handed out
    as frames (never room for an announced length), less than one largest frame."""
    decoder = FrameDecoder(max_frame)
    received = consumed = 0
    for chunk in data.draw(cuts(stream)):
        frames_out = decoder.feed(chunk)
        received += len(chunk)
        consumed += sum(4 + MIN_LENGTH + len(f.payload) for f in frames_out)
        if decoder.error is not None:
            assert decoder.buffered == 0
            break
        assert decoder.buffered == received - consumed
        assert decoder.buffered < 4 + max_frame


@settings(max_examples=300, deadline=None)
@given(st.data(), st.lists(frames, max_size=10), st.integers(MIN_LENGTH + 80, 1 << 20))
def test_frames_encoded_come_back_equal_whatever_the_split(
    data: st.DataObject, sent: list[Frame], max_frame: int
) -> None:
    stream = b"".join(encode_frame(*f) for f in sent)
    decoder = FrameDecoder(max_frame)
    got: list[Frame] = []
    for chunk in data.draw(cuts(stream)):
        got.extend(decoder.feed(chunk))
    assert got == sent
    assert decoder.error is None
    assert decoder.buffered == 0


@settings(max_examples=300, deadline=None)
@given(
    st.data(),
    st.lists(frames, max_size=4),
    st.one_of(st.integers(0, MIN_LENGTH - 1), st.integers(97, 0xFFFFFFFF)),
    st.binary(max_size=60),
    st.lists(st.binary(max_size=60), max_size=5),
)
def test_a_bad_length_is_judged_on_its_four_bytes_and_the_error_is_sticky(
    data: st.DataObject,
    before: list[Frame],
    bad_length: int,
    tail: bytes,
    later: list[bytes],
) -> None:
    """The error is set by the read that completes the bad length's 4 bytes, whatever
    follows; the frames before it are returned; every later read returns nothing and
    leaves the same error in place."""
    max_frame = 96
    head = b"".join(encode_frame(*f) for f in before)
    bad = struct.pack(">I", bad_length)
    decoder = FrameDecoder(max_frame)
    got: list[Frame] = []
    for chunk in data.draw(cuts(head + bad)):
        got.extend(decoder.feed(chunk))
    assert got == before
    error = decoder.error
    assert error is not None
    want = ErrorCode.BAD_FRAME if bad_length < MIN_LENGTH else ErrorCode.FRAME_TOO_LARGE
    assert error.code == want
    for chunk in [tail, *later, head]:
        assert decoder.feed(chunk) == []
        assert decoder.error is error
        assert decoder.buffered == 0
