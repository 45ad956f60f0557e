"""Handler registration: an `App` maps request types to handlers and builds their chains.

A handler takes ``(ctx, request)`` and returns the reply message (or None for no reply).
Three kinds, chosen at registration, never guessed per call:

- plain ``def``: called inline by whoever drains the connection's mailbox (no task, no await);
- ``async def``: awaited by one of the server's long-lived consumers;
- ``blocking=True``: a plain ``def`` that may block; run in the server's thread pool and
  awaited by a consumer.

``ordered=False`` lets a handler's frames run concurrently with the frames that follow them
on the same connection (their replies may overtake); by default a connection's frames are
answered in arrival order (docs/protocol.md, "Responses and order").

Handlers are private: before a login, their messages get UNAUTHENTICATED. ``public=True``
(per handler, or for a whole ``App(public=True)``) opens one to anonymous connections;
Ping, Echo, Describe, Hello, Login and Resume are public.

``rate="20/s", burst=40`` (per handler, or for every handler of an ``App(rate=...)``) puts
a token bucket in front of a handler, counted per user by default (``per="connection"``
or ``"message"``); past it, requests get RATE_LIMITED with the wait (server/ratelimit.py).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Awaitable, Callable, Hashable, Iterable
from enum import Enum
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.message import Message

from protocol.registry import MessageRegistry, declared_id
from server.ratelimit import Limit, Per

if TYPE_CHECKING:
    from server.connection import Connection
    from server.middleware import Middleware
    from server.server import Server
    from server.sessions import Session
    from server.store import Store

M = TypeVar("M", bound=Message)
SyncHandler = Callable[["Context", Any], Message | None]
AsyncHandler = Callable[["Context", Any], Awaitable[Message | None]]
Handler = SyncHandler | AsyncHandler
#: A request's owner key (a symbol, a match id): the node that owns it runs the handler.
OwnerKey = Callable[[Any], Hashable]


class Kind(Enum):
    SYNC = "sync"
    ASYNC = "async"
    BLOCKING = "blocking"


class Context:
    """What a handler knows about the frame it is handling."""

    __slots__ = ("after_reply", "arrived", "conn", "flags", "msg_id", "seq")

    #: For awaited handlers: called right after the reply is queued, before the
    #: connection's next frame runs (the session layer releases held pushes with it).
    after_reply: Callable[[], None] | None

    #: For awaited handlers: when the frame arrived (time.monotonic), so the handler
    #: deadline counts the time it waited in queues; 0.0 for sync ones (run at once).
    arrived: float

    def __init__(self, conn: Connection, msg_id: int, flags: int, seq: int) -> None:
        # One is built per awaited frame: keep it to six stores.
        self.conn = conn
        self.msg_id = msg_id
        self.flags = flags
        self.seq = seq
        self.after_reply = None
        self.arrived = 0.0

    @property
    def server(self) -> Server:
        return self.conn.server

    @property
    def cache(self) -> Store:
        """The server's store, namespaced to the app that handles this message."""
        return self.conn.server.cache_for(self.msg_id)

    @property
    def peer(self) -> Any:
        return self.conn.peer

    @property
    def session(self) -> Session | None:
        """The logged-in session of this connection; never None in a private handler."""
        return self.conn.session

    def push(self, message: Message) -> None:
        """Push `message` to this connection's session. It goes out in this connection's
        next write, ahead of this handler's own reply (after it for a reply_first one)."""
        session = self.conn.session
        if session is None:
            raise RuntimeError("ctx.push needs a logged-in session: pushes are per session")
        self.conn.server.pusher.to_sessions((session,), message)


class Route:
    """One registered handler; `call` is its composed middleware chain (set by the server)."""

    __slots__ = (
        "app_name",
        "awaited",
        "call",
        "calls",
        "errors",
        "fused",
        "handler",
        "kind",
        "limit",
        "msg_id",
        "name",
        "ordered",
        "owner",
        "parse",
        "public",
        "reply_first",
        "reply_id",
        "reply_type",
        "request",
    )

    def __init__(
        self,
        request: type[Message],
        handler: Handler,
        kind: Kind,
        ordered: bool,
        public: bool = False,
        limit: Limit | None = None,
        owner: OwnerKey | None = None,
        reply_first: bool = False,
    ) -> None:
        self.request = request
        #: The reply goes out ahead of the pushes the handler made to its connection
        #: (the Dispatcher holds them until the reply is queued).
        self.reply_first = reply_first
        #: The request's owner key: in a cluster the handler runs on the key's owner
        #: node (server/cluster/owned.py).
        self.owner = owner
        #: The handler's own rate limit (the app's applies when None); see server/ratelimit.py.
        self.limit = limit
        #: Runs without a session (the auth gate lets it through before login).
        self.public = public
        self.app_name = ""
        self.parse = request.FromString
        #: The reply type this handler returned last, and its id: the dispatcher's fast path.
        self.reply_type: Any = None
        self.reply_id = 0
        self.name: str = request.DESCRIPTOR.full_name
        self.msg_id = 0
        self.handler = handler
        self.kind = kind
        #: True when a consumer must await the chain (async and blocking handlers).
        self.awaited = kind is not Kind.SYNC
        self.ordered = ordered
        self.call: Any = None
        #: Set by the server when `call` would only count and recover (the default layers):
        #: the dispatcher then calls `handler` itself and does both inline, saving two calls
        #: per frame (see middleware.compose_fusable). False keeps `call`.
        self.fused = False
        #: Plain integer counters, read by stats and the metrics exporter.
        self.calls = 0
        self.errors = 0


class App:
    """A set of handlers and the message types they speak."""

    def __init__(
        self,
        name: str = "app",
        *,
        public: bool = False,
        rate: str | None = None,
        burst: int | None = None,
        per: Per = "user",
        reply_first: bool = False,
    ) -> None:
        self.name = name
        #: The default of `handler(reply_first=...)` for this app's handlers.
        self.reply_first = reply_first
        #: The default of `handler(public=...)` for this app's handlers.
        self.public = public
        #: The rate limit of every handler that declares none (each its own buckets).
        self.limit: Limit | None = None if rate is None else Limit.of(rate, burst, per)
        self.routes: dict[type[Message], Route] = {}
        self.modules: list[ModuleType] = []
        self.middleware: list[Middleware] = []
        #: Push types delivered latest-value, with their key functions (server/push.py).
        self.latest: dict[type[Message], Callable[[Any], Hashable]] = {}
        #: Called as (server, room name, session) when a session ends while in a room.
        self.room_left: list[Callable[[Server, str, Session], None]] = []
        #: Owned-key hooks: (server, key) when this node takes a key on, (server, key,
        #: new owner) when a key moves away; functions naming keys to own up front.
        self.key_acquired: list[Callable[..., Any]] = []
        self.key_released: list[Callable[..., Any]] = []
        self.declared_keys: list[Callable[[], Iterable[Hashable]]] = []

    def handler(
        self,
        request: type[M],
        *,
        blocking: bool = False,
        ordered: bool = True,
        public: bool | None = None,
        rate: str | None = None,
        burst: int | None = None,
        per: Per = "user",
        owner: OwnerKey | None = None,
        reply_first: bool | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated function as the handler of `request` messages. With
        `owner` (a function of the request giving its key), a cluster runs it on the
        key's owner node, forwarding it from whichever node the client is on. With
        `reply_first` (default: the app's), its reply reaches the client ahead of the
        pushes it made to its own connection (an order's ack before its fill)."""

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add_handler(
                request,
                fn,
                blocking=blocking,
                ordered=ordered,
                public=public,
                rate=rate,
                burst=burst,
                per=per,
                owner=owner,
                reply_first=reply_first,
            )
            return fn

        return register

    def add_handler(
        self,
        request: type[Message],
        fn: Callable[..., Any],
        *,
        blocking: bool = False,
        ordered: bool = True,
        public: bool | None = None,
        rate: str | None = None,
        burst: int | None = None,
        per: Per = "user",
        owner: OwnerKey | None = None,
        reply_first: bool | None = None,
    ) -> Route:
        if declared_id(request.DESCRIPTOR) is None:
            raise ValueError(
                f"{request.DESCRIPTOR.full_name} declares no (tickwire.msg_id) option; "
                "only messages with an ID can be requests"
            )
        if request in self.routes:
            raise ValueError(f"{request.DESCRIPTOR.full_name} already has a handler in {self.name}")
        is_async = inspect.iscoroutinefunction(fn)
        if blocking and is_async:
            raise ValueError(f"handler {fn.__qualname__} is async; blocking=True is for plain def")
        kind = Kind.BLOCKING if blocking else Kind.ASYNC if is_async else Kind.SYNC
        limit = None if rate is None else Limit.of(rate, burst, per)
        if owner is not None and not ordered:
            raise ValueError(
                f"{request.DESCRIPTOR.full_name}: an owned handler is ordered (its reply "
                "comes back in the client's order)"
            )
        # The app's default leaves unordered handlers alone; asked for one, it is refused.
        first = self.reply_first and ordered if reply_first is None else reply_first
        if first and not ordered:
            raise ValueError(
                f"{request.DESCRIPTOR.full_name}: a reply_first handler is ordered (the "
                "connection's output waits for its reply, so nothing may run beside it)"
            )
        route = Route(
            request,
            fn,
            kind,
            ordered,
            self.public if public is None else public,
            limit,
            owner,
            first,
        )
        self.routes[request] = route
        return route

    def add_module(self, module: ModuleType) -> None:
        """Declare a generated ``_pb2`` module whose messages (replies, pushes) this app sends."""
        self.modules.append(module)

    def latest_value(self, message_type: type[Message], key: Callable[[Any], Hashable]) -> None:
        """Push `message_type` latest-value: unsequenced, and while a client lags a newer
        message with the same `key(msg)` replaces the one not yet sent. Everything else
        this app pushes is reliable (sequenced, acknowledged, replayed)."""
        if declared_id(message_type.DESCRIPTOR) is None:
            raise ValueError(f"{message_type.DESCRIPTOR.full_name} declares no message ID")
        self.latest[message_type] = key
        self.add_module_of(message_type)

    def add_module_of(self, message_type: type[Message]) -> None:
        module = sys.modules.get(message_type.__module__)
        if module is not None and module not in self.modules:
            self.modules.append(module)

    def on_room_left(
        self, callback: Callable[[Server, str, Session], None]
    ) -> Callable[[Server, str, Session], None]:
        """Call `callback(server, room_name, session)` (a plain function, on the loop)
        for each room a session was in when it ended: logout, replaced by a newer login,
        never resumed, removed. A session's own `room.leave` does not call it. Usable as
        a decorator; what it raises is logged."""
        self.room_left.append(callback)
        return callback

    def on_key_acquired(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        """Call `callback(server, key)` when this node takes on an owned key (it served
        it first, or a declared key moved here): load its state. Usable as a decorator;
        a coroutine function runs as a task."""
        self.key_acquired.append(callback)
        return callback

    def on_key_released(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        """Call `callback(server, key, new_owner)` when an owned key moves to another
        node (one joined or left): hand its state off or drop it."""
        self.key_released.append(callback)
        return callback

    def own_keys(self, keys: Callable[[], Iterable[Hashable]]) -> None:
        """Keys to own from the start (an order book's symbols): each is acquired by
        its owner when the node starts and whenever the live nodes change."""
        self.declared_keys.append(keys)

    def add_middleware(self, middleware: Middleware) -> None:
        """Add a layer inside the server's default ones; layers run in the order added."""
        self.middleware.append(middleware)

    def register_messages(self, registry: MessageRegistry) -> None:
        """Register every message with an ID from the modules and files this app touches."""
        for module in self.modules:
            registry.register_module(module)
        for request in self.routes:
            registry.register_file(request.DESCRIPTOR.file)


def all_routes(apps: Iterable[App]) -> list[tuple[App, Route]]:
    """Fresh routes for one server, so two servers built from one App share no state."""
    routes: list[tuple[App, Route]] = []
    seen: dict[type[Message], str] = {}
    for app in apps:
        for request, route in app.routes.items():
            if request in seen:
                raise ValueError(
                    f"{request.DESCRIPTOR.full_name} has a handler in both {seen[request]} "
                    f"and {app.name}"
                )
            seen[request] = app.name
            fresh = Route(
                request,
                route.handler,
                route.kind,
                route.ordered,
                route.public,
                route.limit,
                route.owner,
                route.reply_first,
            )
            fresh.app_name = app.name
            routes.append((app, fresh))
    return routes
