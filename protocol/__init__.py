"""tickwire's wire protocol, sans-I/O: frames, error codes, the message registry.

Nothing here imports asyncio or socket; a client in another language needs only
docs/protocol.md and the .proto files under protocol/proto.
"""

from protocol.errors import (
    CLOSING_CODES,
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RegistryError,
    RemoteProtocolError,
    closes_connection,
    code_name,
)
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
from protocol.registry import MessageRegistry, declared_id, system_registry

__all__ = [
    "CLOSING_CODES",
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "MIN_LENGTH",
    "RESERVED_FLAGS",
    "ErrorCode",
    "Flags",
    "Frame",
    "FrameDecoder",
    "LocalProtocolError",
    "MessageRegistry",
    "ProtocolError",
    "RegistryError",
    "RemoteProtocolError",
    "closes_connection",
    "code_name",
    "declared_id",
    "encode_frame",
    "system_registry",
]
