from protocol.proto import options_pb2 as _options_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class LegacyRequest(_message.Message):
    __slots__ = ("fill",)
    FILL_FIELD_NUMBER: _ClassVar[int]
    fill: bool
    def __init__(self, fill: _Optional[bool] = ...) -> None: ...

class LegacyReply(_message.Message):
    __slots__ = ("code",)
    CODE_FIELD_NUMBER: _ClassVar[int]
    code: int
    def __init__(self, code: _Optional[int] = ...) -> None: ...
