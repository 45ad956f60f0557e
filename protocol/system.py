"""The protocol's own messages: their wire IDs, the protocol version, and the two frames
either side may build without a registry (Error and GoAway).

The IDs are read from the ``(tickwire.msg_id)`` options of protocol/proto/system.proto, so
the schema stays the one place they are written down (docs/protocol.md lists them). The
server, the SDK, the tools and the bench import them from here, never as literals.
"""

from __future__ import annotations

from google.protobuf.message import Message

from protocol.frame import HEADER, MIN_LENGTH, Flags
from protocol.proto import system_pb2
from protocol.registry import declared_id

#: The wire protocol version this package speaks (Hello/Welcome.protocol_version). A new
#: version is a new contract: docs/protocol.md, "Handshake".
PROTOCOL_VERSION = 1


def system_id(message_type: type[Message]) -> int:
    """The wire ID system.proto declares for one of the protocol's messages."""
    msg_id = declared_id(message_type.DESCRIPTOR)
    if msg_id is None:
        raise ValueError(f"{message_type.DESCRIPTOR.full_name} declares no tickwire.msg_id")
    return msg_id


PING_ID = system_id(system_pb2.Ping)
PONG_ID = system_id(system_pb2.Pong)
ERROR_ID = system_id(system_pb2.Error)
HELLO_ID = system_id(system_pb2.Hello)
WELCOME_ID = system_id(system_pb2.Welcome)
LOGIN_ID = system_id(system_pb2.LoginRequest)
LOGIN_REPLY_ID = system_id(system_pb2.LoginReply)
REFRESH_ID = system_id(system_pb2.RefreshTokenRequest)
LOGOUT_ID = system_id(system_pb2.LogoutRequest)
LOGOUT_REPLY_ID = system_id(system_pb2.LogoutReply)
RESUME_ID = system_id(system_pb2.ResumeRequest)
RESUME_REPLY_ID = system_id(system_pb2.ResumeReply)
PUSH_ACK_ID = system_id(system_pb2.PushAck)
ECHO_ID = system_id(system_pb2.EchoRequest)
ECHO_REPLY_ID = system_id(system_pb2.EchoReply)
DESCRIBE_ID = system_id(system_pb2.DescribeRequest)
DESCRIBE_REPLY_ID = system_id(system_pb2.DescribeReply)
GOAWAY_ID = system_id(system_pb2.GoAway)

#: Most UTF-8 bytes of text an Error or GoAway frame carries: longer text (an error
#: message quoting what a peer sent, say) is cut to this, so such a frame stays under
#: MAX_ERROR_FRAME and fits every frame limit the server accepts.
MAX_ERROR_TEXT = 256
#: An Error frame's largest size: the header, then code and request_msg_id (a tag and a
#: varint of at most 3 bytes each, u16 values) and the text (a tag, a 2-byte length).
MAX_ERROR_FRAME = HEADER.size + 4 + 4 + 3 + MAX_ERROR_TEXT
_ELLIPSIS = "\u2026"


def clip_text(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (at a character boundary, marked with an
    ellipsis). Short text, the usual case, is returned as is without being encoded."""
    if len(text) * 4 <= limit:
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", "ignore") + _ELLIPSIS


_ERROR = int(Flags.ERROR)
_ERROR_RESPONSE = int(Flags.ERROR | Flags.RESPONSE)
_PUSH = int(Flags.PUSH)
_pack = HEADER.pack


def error_frame(code: int, message: str, request_msg_id: int = 0, seq: int = 0) -> bytes:
    """An Error frame: ERROR|RESPONSE answering request `seq`, or ERROR alone (seq 0) for
    an error that answers no request, such as the one sent before a close."""
    payload = system_pb2.Error(
        code=code, message=clip_text(message), request_msg_id=request_msg_id
    ).SerializeToString()
    flags = _ERROR_RESPONSE if seq else _ERROR
    return _pack(MIN_LENGTH + len(payload), ERROR_ID, flags, seq) + payload


def goaway_frame(reason: int, message: str, reconnect_after_ms: int = 0) -> bytes:
    """A GoAway frame. It goes as a PUSH with seq 0: it takes no place in the push
    sequence (docs/protocol.md, "GoAway")."""
    payload = system_pb2.GoAway(
        reason=reason, message=clip_text(message), reconnect_after_ms=reconnect_after_ms
    ).SerializeToString()
    return _pack(MIN_LENGTH + len(payload), GOAWAY_ID, _PUSH, 0) + payload
