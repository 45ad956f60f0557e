"""The store's errors: callers catch these, whichever backend is configured.

A handler or the session layer must not need to know whether Redis is behind the store,
so no backend lets its own exceptions (``redis.exceptions.*``, ``OSError``) escape; each
is translated into one of the classes below with a message an operator can act on.
Wrong *arguments* (a ``str`` value, a negative TTL) are programming errors and raise the
usual ``TypeError``/``ValueError`` instead.
"""

from __future__ import annotations


class StoreError(Exception):
    """Any failure of the store; the base to catch when the kind does not matter."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached (refused, timed out, lost): retrying later may work.

    The message names the backend and its address, e.g. ``redis at 127.0.0.1:6390 is
    unreachable: Connection refused``, because the first thing an operator asks is which
    server the node was talking to.
    """

    def __init__(self, backend: str, address: str, reason: str) -> None:
        super().__init__(f"{backend} at {address} is unreachable: {reason}")
        self.backend = backend
        self.address = address
        self.reason = reason


class StoreTypeError(StoreError):
    """The key holds another kind of value than the operation needs (``hget`` on a string,
    ``incr`` on a non-integer): a bug or a key clash between two users of the store, never
    something a retry fixes."""
