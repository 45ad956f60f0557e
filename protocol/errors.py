"""The error codes of the wire protocol (docs/protocol.md, "Error codes") and the two
kinds of protocol error.

Following h11, errors split by whose fault they are:

- `RemoteProtocolError`: the peer broke the protocol. It carries the `ErrorCode` to send
  on the wire, and whether the connection must be closed after it.
- `LocalProtocolError`: this side misused the API (an ID out of range, a payload too big
  to frame). Nothing is sent; it is a bug in the caller.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    BAD_FRAME = 1
    FRAME_TOO_LARGE = 2
    BAD_FLAGS = 3
    UNKNOWN_MESSAGE = 4
    DECODE_ERROR = 5
    UNAUTHENTICATED = 6
    RATE_LIMITED = 7
    OVERLOADED = 8
    TIMEOUT = 9
    INTERNAL = 10
    TOO_MANY_CONNECTIONS = 11
    SESSION_REPLACED = 12
    SERVER_SHUTDOWN = 13
    AUTH_TIMEOUT = 14
    IDLE_TIMEOUT = 15
    SLOW_CONSUMER = 16


#: Codes after which the sender closes the connection (docs/protocol.md, "Error codes",
#: "connection" column).
CLOSING_CODES: frozenset[int] = frozenset(
    {
        ErrorCode.BAD_FRAME,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.TOO_MANY_CONNECTIONS,
        ErrorCode.SESSION_REPLACED,
        ErrorCode.SERVER_SHUTDOWN,
        ErrorCode.AUTH_TIMEOUT,
        ErrorCode.IDLE_TIMEOUT,
        ErrorCode.SLOW_CONSUMER,
    }
)

#: First code free for applications; 17-99 are reserved for future protocol versions.
FIRST_APPLICATION_CODE = 100


def code_name(code: int) -> str:
    """The table name of a code, or APPLICATION(n) for an application code."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"APPLICATION({code})" if code >= FIRST_APPLICATION_CODE else f"UNKNOWN({code})"


def closes_connection(code: int) -> bool:
    return code in CLOSING_CODES


class ProtocolError(Exception):
    """Base of every protocol error."""


class LocalProtocolError(ProtocolError):
    """This side misused the protocol API; nothing goes on the wire."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; `code` is what to answer with."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @property
    def fatal(self) -> bool:
        """True when the connection cannot continue after this error."""
        return closes_connection(self.code)


class RegistryError(LocalProtocolError):
    """A message type could not be registered (duplicate ID or name, ID out of range)."""
