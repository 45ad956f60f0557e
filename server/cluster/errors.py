"""What a cross-node operation raises. Local work never does: a node whose Redis is gone
still serves its own connections, rooms and requests."""

from __future__ import annotations

from protocol.errors import ErrorCode
from server.errors import HandlerError


class ClusterError(HandlerError):
    """A cross-node operation failed. A HandlerError, so one raised out of a handler is the
    client's answer (OVERLOADED unless a subclass says otherwise), never a traceback."""

    def __init__(self, message: str, code: int = ErrorCode.OVERLOADED) -> None:
        super().__init__(code, message)


class ClusterUnavailable(ClusterError):
    """The cluster's Redis cannot be reached: cross-node operations fail fast until it
    comes back (the node reconnects by itself)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class NodeGone(ClusterError):
    """The node a call was addressed to is not (or no longer) a live member."""

    def __init__(self, node: str) -> None:
        super().__init__(f"node {node!r} is not a live member of the cluster")
        self.node = node


class CallTimeout(ClusterError):
    """A node-to-node call got no answer in time (the node may still run it)."""

    def __init__(self, node: str, timeout: float) -> None:
        super().__init__(
            f"node {node!r} did not answer within {timeout:g} s", code=ErrorCode.TIMEOUT
        )
        self.node = node
        self.timeout = timeout


class RemoteError(ClusterError):
    """The other node answered with an error (its handler raised): the code and text it
    gave, so a forwarded request's client sees what a local one would."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message, code=code)
