"""Exceptions the SDK raises: one class per wire error code, so callers can catch exactly
``except Overloaded`` and retry, while ``except ServerError`` catches them all."""

from __future__ import annotations

import re

from protocol.errors import ErrorCode, code_name

#: How the server says when to try again, in RATE_LIMITED and OVERLOADED messages.
_RETRY = re.compile(r"retry after (\d+) ms")


class ClientError(Exception):
    """Base of everything the SDK raises on purpose."""


class ServerError(ClientError):
    """The server answered a request with an Error frame."""

    code: int = 0

    def __init__(self, code: int, message: str, request_msg_id: int = 0) -> None:
        name = code_name(code)
        # Application codes already carry their number: APPLICATION(150), not twice.
        label = name if name.endswith(f"({code})") else f"{name} ({code})"
        super().__init__(f"{label}: {message}")
        self.code = code
        self.message = message
        self.request_msg_id = request_msg_id
        found = _RETRY.search(message)
        #: Seconds the server asked the client to wait before trying again ("retry after
        #: N ms" in the message: RATE_LIMITED, OVERLOADED), else None.
        self.retry_after: float | None = int(found.group(1)) / 1000 if found else None


class BadFrame(ServerError):
    code = ErrorCode.BAD_FRAME


class FrameTooLarge(ServerError):
    code = ErrorCode.FRAME_TOO_LARGE


class BadFlags(ServerError):
    code = ErrorCode.BAD_FLAGS


class UnknownMessage(ServerError):
    code = ErrorCode.UNKNOWN_MESSAGE


class DecodeFailed(ServerError):
    code = ErrorCode.DECODE_ERROR


class Unauthenticated(ServerError):
    code = ErrorCode.UNAUTHENTICATED


class RateLimited(ServerError):
    """Over a rate limit or a login lockout: `retry_after` says how long to wait."""

    code = ErrorCode.RATE_LIMITED


class Overloaded(ServerError):
    code = ErrorCode.OVERLOADED


class HandlerTimeout(ServerError):
    code = ErrorCode.TIMEOUT


class InternalError(ServerError):
    code = ErrorCode.INTERNAL


class TooManyConnections(ServerError):
    code = ErrorCode.TOO_MANY_CONNECTIONS


class SessionReplaced(ServerError):
    code = ErrorCode.SESSION_REPLACED


class ServerShutdown(ServerError):
    code = ErrorCode.SERVER_SHUTDOWN


class AuthTimeout(ServerError):
    code = ErrorCode.AUTH_TIMEOUT


class IdleTimeout(ServerError):
    code = ErrorCode.IDLE_TIMEOUT


class SlowConsumer(ServerError):
    code = ErrorCode.SLOW_CONSUMER


_BY_CODE: dict[int, type[ServerError]] = {
    cls.code: cls
    for cls in (
        BadFrame,
        FrameTooLarge,
        BadFlags,
        UnknownMessage,
        DecodeFailed,
        Unauthenticated,
        RateLimited,
        Overloaded,
        HandlerTimeout,
        InternalError,
        TooManyConnections,
        SessionReplaced,
        ServerShutdown,
        AuthTimeout,
        IdleTimeout,
        SlowConsumer,
    )
}


def server_error(code: int, message: str, request_msg_id: int = 0) -> ServerError:
    """The typed exception for an Error frame (application codes get plain ServerError)."""
    return _BY_CODE.get(code, ServerError)(code, message, request_msg_id)


class UnexpectedReply(ClientError):
    """The server answered with a message type this client's registry does not know
    (describe(adopt=True) learns the server's schema)."""


class ConnectionClosed(ClientError):
    """The connection ended; `error` holds the server's closing Error or GoAway, if any."""

    def __init__(self, message: str, error: ServerError | None = None) -> None:
        super().__init__(message if error is None else f"{message}: {error}")
        self.error = error

    @property
    def code(self) -> int | None:
        return self.error.code if self.error is not None else None


class TLSError(ClientError, ConnectionError):
    """The TLS handshake with the server failed. `reason` is OpenSSL's name for it
    (CERTIFICATE_VERIFY_FAILED, WRONG_VERSION_NUMBER...); the message says what it most
    likely means. It is a ConnectionError too, so code that handles a failed connect
    (``except OSError``) handles this one."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason
