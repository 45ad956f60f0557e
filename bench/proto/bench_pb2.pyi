from protocol.proto import options_pb2 as _options_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class FanoutJoin(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FanoutJoinReply(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: int
    def __init__(self, members: _Optional[int] = ...) -> None: ...

class FanoutTrigger(_message.Message):
    __slots__ = ("count", "size")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    count: int
    size: int
    def __init__(self, count: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class FanoutTriggerReply(_message.Message):
    __slots__ = ("members", "broadcasts")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    BROADCASTS_FIELD_NUMBER: _ClassVar[int]
    members: int
    broadcasts: int
    def __init__(self, members: _Optional[int] = ..., broadcasts: _Optional[int] = ...) -> None: ...

class FanoutPush(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class FanoutStats(_message.Message):
    __slots__ = ("reset",)
    RESET_FIELD_NUMBER: _ClassVar[int]
    reset: bool
    def __init__(self, reset: _Optional[bool] = ...) -> None: ...

class FanoutStatsReply(_message.Message):
    __slots__ = ("fanout_us", "broadcasts", "reliable_pushes", "slow_consumer_closes", "writes_paused", "members", "bytes_out", "connections", "closing", "pending_bytes", "pending_bytes_max")
    FANOUT_US_FIELD_NUMBER: _ClassVar[int]
    BROADCASTS_FIELD_NUMBER: _ClassVar[int]
    RELIABLE_PUSHES_FIELD_NUMBER: _ClassVar[int]
    SLOW_CONSUMER_CLOSES_FIELD_NUMBER: _ClassVar[int]
    WRITES_PAUSED_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    CLOSING_FIELD_NUMBER: _ClassVar[int]
    PENDING_BYTES_FIELD_NUMBER: _ClassVar[int]
    PENDING_BYTES_MAX_FIELD_NUMBER: _ClassVar[int]
    fanout_us: bytes
    broadcasts: int
    reliable_pushes: int
    slow_consumer_closes: int
    writes_paused: int
    members: int
    bytes_out: int
    connections: int
    closing: int
    pending_bytes: int
    pending_bytes_max: int
    def __init__(self, fanout_us: _Optional[bytes] = ..., broadcasts: _Optional[int] = ..., reliable_pushes: _Optional[int] = ..., slow_consumer_closes: _Optional[int] = ..., writes_paused: _Optional[int] = ..., members: _Optional[int] = ..., bytes_out: _Optional[int] = ..., connections: _Optional[int] = ..., closing: _Optional[int] = ..., pending_bytes: _Optional[int] = ..., pending_bytes_max: _Optional[int] = ...) -> None: ...
