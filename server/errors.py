"""Errors a handler may raise on purpose; anything else becomes INTERNAL."""

from __future__ import annotations

from protocol.errors import FIRST_APPLICATION_CODE, ErrorCode, closes_connection
from protocol.system import clip_text


def retry_text(seconds: float) -> str:
    """A wait as every retry hint on the wire says it (RATE_LIMITED, OVERLOADED), so the
    SDK reads one form into `retry_after`: whole milliseconds, rounded up, at least 1."""
    return f"retry after {max(1, int(seconds * 1000 + 0.999))} ms"


class HandlerError(Exception):
    """Answer the request with an Error frame carrying `code` and `message`.

    Handlers raise it for expected failures: an application code (100-65535) or one of
    the protocol's codes that leave the connection open (RATE_LIMITED, say). Codes that
    close the connection are refused: ending a connection is the server's call.

    `message` is cut to MAX_ERROR_TEXT bytes (protocol/system.py): it often quotes what the
    peer sent (a room name, say), and the Error frame must fit any frame limit.
    """

    def __init__(self, code: int, message: str = "") -> None:
        code = int(code)
        if code >= FIRST_APPLICATION_CODE:
            if code > 0xFFFF:
                raise ValueError(f"error code {code} does not fit the wire's u16")
        elif code not in ErrorCode._value2member_map_:
            raise ValueError(
                f"error code {code} is neither a protocol ErrorCode nor an application code "
                f"({FIRST_APPLICATION_CODE}-65535)"
            )
        elif closes_connection(code):
            raise ValueError(
                f"{ErrorCode(code).name} closes the connection; a handler cannot answer with it"
            )
        message = clip_text(message)
        super().__init__(message or str(code))
        self.code = code
        self.message = message


class DeadlineExceeded(HandlerError):
    """An awaited handler ran past the server's handler_timeout."""

    def __init__(self, name: str, seconds: float) -> None:
        super().__init__(ErrorCode.TIMEOUT, f"{name} did not finish within {seconds:g} s")
