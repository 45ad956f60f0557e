"""The fuzz targets of `make fuzz` import and run, and their checks catch what they are
for: `make fuzz` is not part of `make test`, so without this they could rot unnoticed
(a renamed API, a check that can no longer fail)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuzz import run, targets
from fuzz.wire import Exchange, LogWatch, check_answers, expected_close
from protocol.errors import ErrorCode
from protocol.frame import Flags, Frame, encode_frame
from protocol.proto.system_pb2 import EchoRequest, Error
from protocol.registry import system_registry
from protocol.system import error_frame

ECHO = encode_frame(10, 0, 1, EchoRequest(data=b"hi").SerializeToString())
SAMPLES = [
    b"",
    b"\x00",
    b"\x00\x00" + ECHO,
    b"\x00\x03" + ECHO + encode_frame(999, 0, 2) + encode_frame(1, 0x10, 3),
    b"\x00\x01" + ECHO + b"\x7f\x00\x00\x00garbage after the bad length",
    b"\x00\x00\x00\x00\x00\x03",  # length 3: BAD_FRAME
    b"\x00\x05" + encode_frame(10, 0, 4, b"\xff\xff\xff"),  # undecodable payload
    b"\x00\x00" + encode_frame(20, 0, 5),  # Describe, the largest public reply
    b"\x00\x00" + ECHO[:9],  # a partial frame, then the half-close
]


def test_the_decoder_target_runs_and_catches_a_wrong_decoder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for data in SAMPLES:
        targets.decoder(data)
    # A decoder that dropped its error would break the stickiness check.
    monkeypatch.setattr(targets.FrameDecoder, "feed", lambda self, data: [])
    with pytest.raises(AssertionError):
        targets.decoder(b"\x00\x00" + ECHO)


@pytest.fixture(scope="module")
def live() -> Iterator[targets.LiveTarget]:
    target = targets.LiveTarget()
    yield target
    target.close()


def test_the_live_target_runs_over_a_real_server(live: targets.LiveTarget) -> None:
    for data in SAMPLES:
        live(data)
    # Each sample went over a connection of its own and reached the server's checks.
    stats = live.server.stats
    assert stats.connections_opened >= len(SAMPLES) + 1
    for code in (ErrorCode.BAD_FRAME, ErrorCode.FRAME_TOO_LARGE, ErrorCode.DECODE_ERROR):
        assert stats.errors[code] >= 1, code.name


def test_the_answer_checks_refuse_what_the_protocol_does_not_allow() -> None:
    registry = system_registry()
    sent, owed, _ = expected_close(ECHO, 1 << 20)
    assert owed is None and len(sent) == 1
    echo_reply = Frame(11, int(Flags.RESPONSE), 1, b"")
    check_answers(sent, None, Exchange([echo_reply], "eof"), registry)
    wrong = [
        # answered twice
        Exchange([echo_reply, echo_reply], "eof"),
        # answered a seq nobody sent
        Exchange([echo_reply._replace(seq=2)], "eof"),
        # a closing code that was not owed
        Exchange([_error(ErrorCode.FRAME_TOO_LARGE)], "eof"),
        # a code the protocol does not define
        Exchange([_error(42, seq=1)], "eof"),
        # left open after the half-close
        Exchange([echo_reply], "open"),
        # a frame after the closing one
        Exchange([_error(ErrorCode.IDLE_TIMEOUT), echo_reply], "eof"),
    ]
    for got in wrong:
        with pytest.raises(AssertionError):
            check_answers(sent, None, got, registry)
    with pytest.raises(AssertionError):  # owed FRAME_TOO_LARGE, got nothing
        check_answers([], ErrorCode.FRAME_TOO_LARGE, Exchange([], "eof"), registry)


def _error(code: int, seq: int = 0) -> Frame:
    flags = int(Flags.ERROR | (Flags.RESPONSE if seq else 0))
    payload = error_frame(code, "x", seq=seq)[11:]
    assert Error.FromString(payload).code == code
    return Frame(3, flags, seq, payload)


def test_a_logged_traceback_fails_the_watch() -> None:
    watch = LogWatch()
    watch.check()
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("fuzz-test").addHandler(watch)
        logging.getLogger("fuzz-test").warning("handled", exc_info=True)
    with pytest.raises(AssertionError, match="handled"):
        watch.check()


def test_the_hypothesis_engine_keeps_a_crashing_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make fuzz` without atheris: a failure exits 1 with the input kept."""

    def fails_on_long(data: bytes) -> None:
        assert len(data) < 3, "long input"

    monkeypatch.setattr(targets, "decoder", fails_on_long)
    assert run.main(["decoder", "--seconds", "30", "--engine", "hypothesis",
                     "--crashes", str(tmp_path)]) == 1  # fmt: skip
    kept = list(tmp_path.iterdir())
    assert len(kept) == 1 and len(kept[0].read_bytes()) == 3
    monkeypatch.undo()
    assert run.main(["decoder", "--seconds", "1", "--engine", "hypothesis",
                     "--crashes", str(tmp_path / "none")]) == 0  # fmt: skip
