from protocol.proto import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Ping(_message.Message):
    __slots__ = ("client_time_ns",)
    CLIENT_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    client_time_ns: int
    def __init__(self, client_time_ns: _Optional[int] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("client_time_ns", "server_time_ns")
    CLIENT_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    client_time_ns: int
    server_time_ns: int
    def __init__(self, client_time_ns: _Optional[int] = ..., server_time_ns: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "request_msg_id")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_MSG_ID_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    request_msg_id: int
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., request_msg_id: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol_version", "client_name", "accept_compression")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    client_name: str
    accept_compression: bool
    def __init__(self, protocol_version: _Optional[int] = ..., client_name: _Optional[str] = ..., accept_compression: _Optional[bool] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("protocol_version", "server_name", "max_frame", "heartbeat_interval_ms", "session_ttl_s", "compression_offered", "idle_timeout_ms", "ping_interval_ms", "max_outstanding_pings", "auth_timeout_ms", "frame_timeout_ms", "session_max_frame")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    SESSION_TTL_S_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_OFFERED_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    PING_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTSTANDING_PINGS_FIELD_NUMBER: _ClassVar[int]
    AUTH_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    SESSION_MAX_FRAME_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    server_name: str
    max_frame: int
    heartbeat_interval_ms: int
    session_ttl_s: int
    compression_offered: bool
    idle_timeout_ms: int
    ping_interval_ms: int
    max_outstanding_pings: int
    auth_timeout_ms: int
    frame_timeout_ms: int
    session_max_frame: int
    def __init__(self, protocol_version: _Optional[int] = ..., server_name: _Optional[str] = ..., max_frame: _Optional[int] = ..., heartbeat_interval_ms: _Optional[int] = ..., session_ttl_s: _Optional[int] = ..., compression_offered: _Optional[bool] = ..., idle_timeout_ms: _Optional[int] = ..., ping_interval_ms: _Optional[int] = ..., max_outstanding_pings: _Optional[int] = ..., auth_timeout_ms: _Optional[int] = ..., frame_timeout_ms: _Optional[int] = ..., session_max_frame: _Optional[int] = ...) -> None: ...

class LoginRequest(_message.Message):
    __slots__ = ("user", "password", "device")
    USER_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    user: str
    password: str
    device: str
    def __init__(self, user: _Optional[str] = ..., password: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class LoginReply(_message.Message):
    __slots__ = ("user_id", "session_id", "token", "expires_at_ms", "session_ttl_s")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SESSION_TTL_S_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    session_id: str
    token: str
    expires_at_ms: int
    session_ttl_s: int
    def __init__(self, user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., token: _Optional[str] = ..., expires_at_ms: _Optional[int] = ..., session_ttl_s: _Optional[int] = ...) -> None: ...

class RefreshTokenRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LogoutRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LogoutReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("token", "last_push_seq")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LAST_PUSH_SEQ_FIELD_NUMBER: _ClassVar[int]
    token: str
    last_push_seq: int
    def __init__(self, token: _Optional[str] = ..., last_push_seq: _Optional[int] = ...) -> None: ...

class ResumeReply(_message.Message):
    __slots__ = ("user_id", "session_id", "expires_at_ms", "session_ttl_s", "push_gap", "last_push_seq")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SESSION_TTL_S_FIELD_NUMBER: _ClassVar[int]
    PUSH_GAP_FIELD_NUMBER: _ClassVar[int]
    LAST_PUSH_SEQ_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    session_id: str
    expires_at_ms: int
    session_ttl_s: int
    push_gap: bool
    last_push_seq: int
    def __init__(self, user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., expires_at_ms: _Optional[int] = ..., session_ttl_s: _Optional[int] = ..., push_gap: _Optional[bool] = ..., last_push_seq: _Optional[int] = ...) -> None: ...

class PushAck(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class EchoRequest(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class EchoReply(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MessageId(_message.Message):
    __slots__ = ("id", "full_name")
    ID_FIELD_NUMBER: _ClassVar[int]
    FULL_NAME_FIELD_NUMBER: _ClassVar[int]
    id: int
    full_name: str
    def __init__(self, id: _Optional[int] = ..., full_name: _Optional[str] = ...) -> None: ...

class DescribeReply(_message.Message):
    __slots__ = ("file_descriptor_set", "ids")
    FILE_DESCRIPTOR_SET_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    file_descriptor_set: bytes
    ids: _containers.RepeatedCompositeFieldContainer[MessageId]
    def __init__(self, file_descriptor_set: _Optional[bytes] = ..., ids: _Optional[_Iterable[_Union[MessageId, _Mapping]]] = ...) -> None: ...

class GoAway(_message.Message):
    __slots__ = ("reason", "message", "reconnect_after_ms")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    reason: int
    message: str
    reconnect_after_ms: int
    def __init__(self, reason: _Optional[int] = ..., message: _Optional[str] = ..., reconnect_after_ms: _Optional[int] = ...) -> None: ...
