from protocol.proto import options_pb2 as _options_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SleepRequest(_message.Message):
    __slots__ = ("ms", "tag")
    MS_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    ms: int
    tag: int
    def __init__(self, ms: _Optional[int] = ..., tag: _Optional[int] = ...) -> None: ...

class SleepReply(_message.Message):
    __slots__ = ("tag",)
    TAG_FIELD_NUMBER: _ClassVar[int]
    tag: int
    def __init__(self, tag: _Optional[int] = ...) -> None: ...

class FailRequest(_message.Message):
    __slots__ = ("notify_only",)
    NOTIFY_ONLY_FIELD_NUMBER: _ClassVar[int]
    notify_only: bool
    def __init__(self, notify_only: _Optional[bool] = ...) -> None: ...

class BlockingRequest(_message.Message):
    __slots__ = ("ms",)
    MS_FIELD_NUMBER: _ClassVar[int]
    ms: int
    def __init__(self, ms: _Optional[int] = ...) -> None: ...

class BlockingReply(_message.Message):
    __slots__ = ("thread_name",)
    THREAD_NAME_FIELD_NUMBER: _ClassVar[int]
    thread_name: str
    def __init__(self, thread_name: _Optional[str] = ...) -> None: ...

class UnorderedSleepRequest(_message.Message):
    __slots__ = ("ms", "tag")
    MS_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    ms: int
    tag: int
    def __init__(self, ms: _Optional[int] = ..., tag: _Optional[int] = ...) -> None: ...

class AppErrorRequest(_message.Message):
    __slots__ = ("code",)
    CODE_FIELD_NUMBER: _ClassVar[int]
    code: int
    def __init__(self, code: _Optional[int] = ...) -> None: ...

class NoteRequest(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class BigRequest(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class BigReply(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class GateRequest(_message.Message):
    __slots__ = ("tag",)
    TAG_FIELD_NUMBER: _ClassVar[int]
    tag: int
    def __init__(self, tag: _Optional[int] = ...) -> None: ...

class OwnTimeoutRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
