"""Idempotent requests: a resend of the same key gets the first reply, not a second run.

A trading client that lost its connection right after sending NewOrderSingle cannot know
whether the order was placed; FIX's answer is to resend it with the same ClOrdID and let
the venue recognise it. ``@app.handler(X, idempotent=lambda msg: msg.cl_ord_id)`` does
that in the framework (docs/server.md, "Idempotent requests"):

- The first request with a key claims it in the store (SET NX, a "running" record whose
  TTL covers the handler's deadline), runs, and writes its reply (or its error) under the
  key with the handler's TTL **before** the reply is written to the client: a client that
  saw the reply can count on a resend seeing it too.
- A resend finds the record and gets the stored reply (the same message, byte for byte)
  or the same error. While the first still runs, a resend on the same node waits for it;
  on another node it polls the store until the record is written, for at most the
  handler deadline.
- Keys are per user (a key of alice never answers bob) and per message type; the store
  keeps them `ttl` seconds. What a peer can make the store hold is its request rate times
  the TTL, so an idempotent handler should have a rate limit.
- An answer that says the handler did not run (OVERLOADED, RATE_LIMITED, a request that
  waited in a queue past its deadline) releases the key, so a resend runs. Anything else,
  TIMEOUT after running included, is kept: the handler may have had its effect.
- The store unreachable: the request is refused (OVERLOADED, from the store's breaker)
  rather than run without the guarantee.

The store's durability is the guarantee's: Redis with AOF, or the memory store with its
append-only log (docs/store.md). An app that journals its state can keep its own map of
keys beside it (examples/trade does), so a restart that lost the store still recognises
a resend.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from google.protobuf.message import Message

from protocol.errors import ErrorCode
from protocol.proto.system_pb2 import Error
from server.app import Kind, Route
from server.errors import DeadlineExceeded, HandlerError

if TYPE_CHECKING:
    from server.app import Context
    from server.server import Server

#: A key longer than this is refused (DECODE_ERROR): it is part of a store key.
MAX_KEY_BYTES = 256
#: How often a resend polls for the first request's record when that runs on another node.
POLL_INTERVAL = 0.01

_RUNNING = 0
_REPLY = 1
_ERROR = 2
_NONE = 3

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple[int, int, bytes]).decode

#: The record that claims a key while its first request runs.
_CLAIM = _encode((_RUNNING, 0, b""))
#: The record of an answer the handler's outcome cannot give (INTERNAL, no text).
_INTERNAL = (_ERROR, int(ErrorCode.INTERNAL), b"")
#: Answers that say the handler did not run (with a TIMEOUT that is not a
#: DeadlineExceeded: a request that waited its deadline in a queue): the key is
#: released for a resend.
_NOT_RUN = frozenset({ErrorCode.OVERLOADED, ErrorCode.RATE_LIMITED})


def key_text(route: Route, value: Any) -> str:
    """The request's idempotency key as text; HandlerError when it is unusable."""
    if isinstance(value, bytes):
        value = value.hex()
    elif isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise HandlerError(
            ErrorCode.DECODE_ERROR, f"{route.name} needs an idempotency key: it is empty"
        )
    if len(value.encode()) > MAX_KEY_BYTES:
        raise HandlerError(
            ErrorCode.DECODE_ERROR,
            f"{route.name}: the idempotency key is longer than {MAX_KEY_BYTES} bytes",
        )
    return value


class Idempotency:
    """The layer: wraps each route declared idempotent (server/server.py places it inside
    the auth gate and the rate limits, outside the app's layers and the deadline)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        #: Requests running here by store key: a resend on this node waits for them.
        self._running: dict[str, asyncio.Future[tuple[int, int, bytes]]] = {}
        # Plain counters for /metrics: first runs, resends answered from the store.
        self.first = 0
        self.repeated = 0

    def wrap(self, route: Route, call_next: Callable[..., Any]) -> Callable[..., Any]:
        key_of = route.idempotent
        if key_of is None:
            return call_next
        server = self.server
        ttl = route.idempotent_ttl or server.config.idempotency_ttl
        msg_id = route.msg_id
        call: Callable[[Context, Any], Awaitable[Message | None]] = call_next

        async def once(ctx: Context, msg: Any) -> Message | None:
            session = ctx.session
            if session is None:  # the gate lets no anonymous request reach this
                raise HandlerError(ErrorCode.UNAUTHENTICATED, f"{route.name} needs a login")
            key = f"tw:idem:{{{session.user_id}}}:{msg_id}:{key_text(route, key_of(msg))}"
            store = server.store
            assert store is not None
            running = self._running.get(key)
            if running is not None:
                self.repeated += 1
                return self._answer(await asyncio.shield(running), route)
            deadline = server.config.handler_timeout or 60.0
            if not await store.set(key, _CLAIM, ttl=deadline + ttl_margin(deadline), nx=True):
                self.repeated += 1
                return self._answer(await self._stored(key, deadline), route)
            self.first += 1
            future: asyncio.Future[tuple[int, int, bytes]] = (
                asyncio.get_running_loop().create_future()
            )
            self._running[key] = future
            try:
                try:
                    reply = await call(ctx, msg)
                except HandlerError as exc:
                    ran = exc.code not in _NOT_RUN and (
                        exc.code != ErrorCode.TIMEOUT or isinstance(exc, DeadlineExceeded)
                    )
                    record = (_ERROR, exc.code, exc.message.encode())
                    await self._settle(key, record, ran, ttl, exc)
                    raise
                except asyncio.CancelledError:
                    future.set_result(_INTERNAL)  # a stop: the claim runs out by itself
                    raise
                except BaseException:
                    # Unknown: it may have had its effect. Kept as the error it answers.
                    await self._settle(key, _INTERNAL, True, ttl)
                    raise
                record = self._record(reply)
                await self._settle(
                    key, record, record[0] != _ERROR or record[1] not in _NOT_RUN, ttl
                )
                return reply
            finally:
                del self._running[key]
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved: a resend may never come

        return once

    async def _settle(
        self,
        key: str,
        record: tuple[int, int, bytes],
        ran: bool,
        ttl: float,
        raised: HandlerError | None = None,
    ) -> None:
        """Keep the first answer under `key` for resends, or free the key when the handler
        did not run (a resend may run it); either way resends waiting here get it: the
        HandlerError it `raised`, when it did not run, else the record."""
        store = self.server.store
        assert store is not None
        if ran:
            await store.set(key, _encode(record), ttl=ttl)
        else:
            await store.delete(key)
        future = self._running[key]
        if raised is not None and not ran:
            future.set_exception(raised)
        else:
            future.set_result(record)

    async def _stored(self, key: str, deadline: float) -> tuple[int, int, bytes]:
        """The first request's record, once it is written (it runs on another node, or it
        ran before a restart): polled, for at most the handler deadline."""
        store = self.server.store
        assert store is not None
        give_up = time.monotonic() + deadline
        while True:
            raw = await store.get(key)
            if raw is None:
                # Released (it did not run) or expired meanwhile: this one may run.
                raise HandlerError(
                    ErrorCode.OVERLOADED,
                    "the first request with this key did not run; retry after 0 ms",
                )
            record = _decode(raw)
            if record[0] != _RUNNING:
                return record
            if time.monotonic() > give_up:
                raise HandlerError(
                    ErrorCode.TIMEOUT, "the first request with this key is still running"
                )
            await asyncio.sleep(POLL_INTERVAL)

    def _record(self, reply: Message | None) -> tuple[int, int, bytes]:
        if reply is None:
            return (_NONE, 0, b"")
        if isinstance(reply, Error):
            return (_ERROR, reply.code, reply.message.encode())
        reply_id = self.server.message_id(type(reply))
        if reply_id is None:
            return _INTERNAL  # answered INTERNAL anyway
        return (_REPLY, reply_id, reply.SerializeToString())

    def _answer(self, record: tuple[int, int, bytes], route: Route) -> Message | None:
        state, number, body = record
        if state == _NONE:
            return None
        if state == _ERROR:
            return Error(code=number, message=body.decode(), request_msg_id=route.msg_id)
        return self.server.registry.decode(number, body)


def ttl_margin(deadline: float) -> float:
    """How long a "running" claim outlives the deadline: a node that died mid-request
    leaves it, and the key frees itself after that."""
    return max(5.0, deadline)


def make_awaitable(route: Route, inner: Callable[..., Any]) -> Callable[..., Any]:
    """An idempotent route is awaited (the store is): a sync handler runs inside an
    async call."""
    if route.kind is not Kind.SYNC:
        return inner

    async def run(ctx: Context, msg: Any) -> Message | None:
        result: Message | None = inner(ctx, msg)
        return result

    return run
