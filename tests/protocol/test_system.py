"""protocol/system.py: the system IDs come from the schema and agree with the committed
table, and the Error and GoAway frames it builds decode as docs/protocol.md says."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol import system
from protocol.frame import Flags, FrameDecoder
from protocol.id_table import parse_id_table
from protocol.proto import system_pb2

TABLE = parse_id_table((Path(system.__file__).parent / "message_ids.txt").read_text())

#: Each constant and the message it names.
NAMED = {
    "PING_ID": system_pb2.Ping,
    "PONG_ID": system_pb2.Pong,
    "ERROR_ID": system_pb2.Error,
    "HELLO_ID": system_pb2.Hello,
    "WELCOME_ID": system_pb2.Welcome,
    "LOGIN_ID": system_pb2.LoginRequest,
    "LOGIN_REPLY_ID": system_pb2.LoginReply,
    "REFRESH_ID": system_pb2.RefreshTokenRequest,
    "LOGOUT_ID": system_pb2.LogoutRequest,
    "LOGOUT_REPLY_ID": system_pb2.LogoutReply,
    "RESUME_ID": system_pb2.ResumeRequest,
    "RESUME_REPLY_ID": system_pb2.ResumeReply,
    "PUSH_ACK_ID": system_pb2.PushAck,
    "ECHO_ID": system_pb2.EchoRequest,
    "ECHO_REPLY_ID": system_pb2.EchoReply,
    "DESCRIBE_ID": system_pb2.DescribeRequest,
    "DESCRIBE_REPLY_ID": system_pb2.DescribeReply,
    "GOAWAY_ID": system_pb2.GoAway,
}


@pytest.mark.parametrize("name", sorted(NAMED))
def test_each_id_is_the_committed_one(name: str) -> None:
    msg_id = getattr(system, name)
    assert TABLE[msg_id] == NAMED[name].DESCRIPTOR.full_name


def test_every_id_constant_is_checked() -> None:
    constants = {n for n in dir(system) if n.endswith("_ID") and n.isupper()}
    assert constants == set(NAMED)


def test_a_message_without_an_id_is_refused() -> None:
    with pytest.raises(ValueError, match=r"system\.MessageId declares no tickwire\.msg_id"):
        system.system_id(system_pb2.MessageId)


def _one_frame(data: bytes) -> tuple[int, int, int, bytes]:
    decoder = FrameDecoder()
    frames = decoder.feed(data)
    assert len(frames) == 1 and not decoder.buffered and decoder.error is None
    msg_id, flags, seq, payload = frames[0]
    return msg_id, flags, seq, payload


def test_error_frame_answering_a_request() -> None:
    msg_id, flags, seq, payload = _one_frame(system.error_frame(4, "no handler", 300, 77))
    assert (msg_id, flags, seq) == (system.ERROR_ID, Flags.ERROR | Flags.RESPONSE, 77)
    error = system_pb2.Error.FromString(payload)
    assert (error.code, error.message, error.request_msg_id) == (4, "no handler", 300)


def test_error_frame_answering_nothing_has_no_response_flag() -> None:
    msg_id, flags, seq, payload = _one_frame(system.error_frame(9, "too slow"))
    assert (msg_id, flags, seq) == (system.ERROR_ID, Flags.ERROR, 0)
    assert system_pb2.Error.FromString(payload).code == 9


def test_goaway_frame_is_an_unsequenced_push() -> None:
    msg_id, flags, seq, payload = _one_frame(system.goaway_frame(20, "bye", 1500))
    assert (msg_id, flags, seq) == (system.GOAWAY_ID, Flags.PUSH, 0)
    goaway = system_pb2.GoAway.FromString(payload)
    assert (goaway.reason, goaway.message, goaway.reconnect_after_ms) == (20, "bye", 1500)
