"""Every wire error code maps to its own SDK exception, all catchable as ServerError."""

from __future__ import annotations

from client_sdk import errors
from protocol.errors import ErrorCode


def test_every_protocol_code_has_its_own_exception_class() -> None:
    classes = set()
    for code in ErrorCode:
        exc = errors.server_error(code, "m", 10)
        assert isinstance(exc, errors.ServerError)
        assert type(exc) is not errors.ServerError, code.name
        assert exc.code == code and exc.request_msg_id == 10
        assert code.name in str(exc)
        classes.add(type(exc))
    assert len(classes) == len(ErrorCode)
    assert isinstance(errors.server_error(ErrorCode.DECODE_ERROR, ""), errors.DecodeFailed)


def test_application_codes_are_plain_server_errors() -> None:
    exc = errors.server_error(4321, "no funds")
    assert type(exc) is errors.ServerError
    assert exc.code == 4321 and "APPLICATION(4321)" in str(exc)
