"""Errors a handler may raise on purpose; anything else becomes INTERNAL."""

from __future__ import annotations

from protocol.errors import FIRST_APPLICATION_CODE, ErrorCode


class HandlerError(Exception):
    """Answer the request with an Error frame carrying `code` and `message`.

    Handlers raise it for expected failures: an application code (100-65535) or a
    protocol code such as RATE_LIMITED. The message goes on the wire as is.
    """

    def __init__(self, code: int, message: str = "") -> None:
        if not (isinstance(code, ErrorCode) or code >= FIRST_APPLICATION_CODE) or code > 0xFFFF:
            raise ValueError(
                f"error code {code} is neither a protocol ErrorCode nor an application code "
                f"({FIRST_APPLICATION_CODE}-65535)"
            )
        super().__init__(message or str(code))
        self.code = int(code)
        self.message = message
