"""The middleware chain: onion layers around every handler, composed once at startup.

A layer is an object with ``wrap(route, call_next) -> call``. The server builds each
route's chain when it starts, outermost layer first, so a frame costs one plain call per
layer and no list walking. For a sync route `call_next` is a plain function; for an
async or blocking route it is a coroutine function, and the layer must return the same
kind (`route.awaited` tells which).

Default layers, outermost first: `ErrorRecovery` (a handler that raises gets an Error
reply, never a dead connection), `Counters` (calls per message type), `AuthGate` (private
handlers need a session; the server always adds it, whatever middleware it is given),
then `Deadline` for awaited routes when a handler timeout is set. Later layers (rate
limits) slot in through `App.add_middleware`.

A layer with nothing to do for a route returns `call_next` itself, so the route pays
nothing for it: the gate does that for public routes, the deadline for sync ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import TYPE_CHECKING, Any, Protocol

from google.protobuf.message import Message

from protocol.errors import ErrorCode
from protocol.proto.system_pb2 import Error
from server.errors import DeadlineExceeded, HandlerError

if TYPE_CHECKING:
    from server.app import Context, Route

log = logging.getLogger("tickwire.handler")

Call = Callable[["Context", Any], Any]
SyncCall = Callable[["Context", Any], Message | None]
AsyncCall = Callable[["Context", Any], Awaitable[Message | None]]

#: What the wire says for an unexpected exception: nothing of the handler's internals.
INTERNAL_MESSAGE = "internal error"


class Middleware(Protocol):
    def wrap(self, route: Route, call_next: Call) -> Call: ...


def compose(route: Route, layers: list[Middleware], inner: Call) -> Call:
    """The route's chain: ``layers[0]`` outermost, `inner` (the handler's call) innermost."""
    return compose_fusable(route, layers, inner)[0]


def compose_fusable(route: Route, layers: list[Middleware], inner: Call) -> tuple[Call, bool]:
    """The route's chain, as `compose` builds it, and whether the dispatcher may skip it.

    It may (True) when the route is sync, `inner` is its handler, and the chain does
    nothing but what the dispatcher can do inline (`Route.fused`): exactly one
    `ErrorRecovery` and one `Counters` wrapped the call, and every other layer returned
    `call_next` unchanged (`Deadline` on a sync route, an auth layer on a public route).
    Exact types only: a subclass may change what the layer does. Any layer that wraps
    keeps the composed chain, so fusing never changes behaviour, only saves the calls.
    """
    call = inner
    wrapped_by: list[type[Middleware]] = []
    for layer in reversed(layers):
        outer = layer.wrap(route, call)
        if outer is not call:
            wrapped_by.append(type(layer))
        call = outer
    fusable = (
        not route.awaited
        and inner is route.handler
        and len(wrapped_by) == 2
        and set(wrapped_by) == {ErrorRecovery, Counters}
    )
    return call, fusable


def error_reply(code: int, message: str, request_msg_id: int) -> Error:
    return Error(code=code, message=message, request_msg_id=request_msg_id)


#: What a sync handler's failure is caught as: any Exception, and CancelledError, a
#: BaseException that sync code can only raise by mistake (nothing can cancel code that
#: does not await; a future's result() raises it, say). Let through, it would escape the
#: dispatcher's loops. Async handlers catch Exception only: there, CancelledError is a
#: real cancellation (a stop) and must go on up.
SYNC_FAILURES = (Exception, asyncio.CancelledError)


def handler_failed(route: Route, exc: BaseException) -> Error:
    """`ErrorRecovery`'s answer to a handler that raised; also the fused path's
    (`Route.fused`), so the two cannot drift apart. A HandlerError keeps its code and
    message; anything else is logged with its traceback and answered INTERNAL."""
    route.errors += 1
    if isinstance(exc, HandlerError):
        return error_reply(exc.code, exc.message, route.msg_id)
    log.error("handler for %s raised", route.name, exc_info=exc)
    return error_reply(ErrorCode.INTERNAL, INTERNAL_MESSAGE, route.msg_id)


class ErrorRecovery:
    """Turns a raised exception into an Error reply; unexpected ones are logged with traceback."""

    def wrap(self, route: Route, call_next: Call) -> Call:
        if route.awaited:
            acall: AsyncCall = call_next

            async def recover_async(ctx: Context, msg: Any) -> Message | None:
                try:
                    return await acall(ctx, msg)
                except Exception as exc:
                    return handler_failed(route, exc)

            return recover_async

        scall: SyncCall = call_next

        def recover(ctx: Context, msg: Any) -> Message | None:
            try:
                return scall(ctx, msg)
            except SYNC_FAILURES as exc:
                return handler_failed(route, exc)

        return recover


class Counters:
    """Counts calls per message type in a plain integer on the route (read by stats)."""

    def wrap(self, route: Route, call_next: Call) -> Call:
        if route.awaited:
            acall: AsyncCall = call_next

            async def count_async(ctx: Context, msg: Any) -> Message | None:
                route.calls += 1
                return await acall(ctx, msg)

            return count_async

        scall: SyncCall = call_next

        def count(ctx: Context, msg: Any) -> Message | None:
            route.calls += 1
            return scall(ctx, msg)

        return count


class Deadline:
    """Bounds awaited requests by `seconds` from their arrival; the reply becomes TIMEOUT
    (via ErrorRecovery).

    The clock starts when the frame arrived (`Context.arrived`), not when a consumer took
    it: a request that waited its whole deadline in a queue (the mailbox, the consumer
    queue) is answered TIMEOUT without running, since its client has given up on it by
    then and running it would only delay the requests behind it; one that waited part of
    it gets the rest. Time in the password pool's queue is inside the handler, so it
    counts too. Sync handlers run inline and cannot be interrupted, so they pass through
    untouched. A blocking handler's thread runs on after its deadline; only its late
    result is dropped.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def wrap(self, route: Route, call_next: Call) -> Call:
        if not route.awaited or self.seconds <= 0:
            return call_next
        acall: AsyncCall = call_next
        seconds = self.seconds

        name = route.name
        queued_text = f"{name} waited in a queue past its {seconds:g} s deadline; not run"

        async def bounded(ctx: Context, msg: Any) -> Message | None:
            left = seconds
            if ctx.arrived:
                left -= monotonic() - ctx.arrived
                if left <= 0:
                    raise HandlerError(ErrorCode.TIMEOUT, queued_text)
            # Only this layer's own timeout becomes TIMEOUT; a TimeoutError the handler
            # raised itself (a socket, a database) stays an INTERNAL error.
            try:
                async with asyncio.timeout(left) as scope:
                    return await acall(ctx, msg)
            except TimeoutError:
                if scope.expired():
                    raise DeadlineExceeded(name, seconds) from None
                raise

        return bounded


class AuthGate:
    """Private handlers need a logged-in session: without one, the frame is answered
    UNAUTHENTICATED (the connection stays open) and never reaches the handler.

    Public routes are not wrapped at all. A refusal is counted on the connection, which is
    how the auth timeout tells a connection that only knocks on private doors from one
    that speaks public messages.
    """

    def wrap(self, route: Route, call_next: Call) -> Call:
        if route.public:
            return call_next
        text = f"{route.name} needs a logged-in session: send LoginRequest or ResumeRequest"

        def refuse(ctx: Context) -> Error:
            ctx.conn.refused += 1
            return error_reply(ErrorCode.UNAUTHENTICATED, text, route.msg_id)

        if route.awaited:
            acall: AsyncCall = call_next

            async def gated_async(ctx: Context, msg: Any) -> Message | None:
                if ctx.conn.session is None:
                    return refuse(ctx)
                return await acall(ctx, msg)

            return gated_async

        scall: SyncCall = call_next

        def gated(ctx: Context, msg: Any) -> Message | None:
            if ctx.conn.session is None:
                return refuse(ctx)
            return scall(ctx, msg)

        return gated
