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

Lifecycle: ``@app.on_start`` / ``@app.on_stop`` hooks, ``@app.every`` timers, and
``@app.on_reload`` with ``app.state`` for a handler reload; the server runs them
(server/timers.py, docs/server.md "Lifecycle and timers").
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from enum import Enum
from types import ModuleType, SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.message import Message

from protocol.registry import MessageRegistry, declared_id
from server.ratelimit import Limit, Per
from server.timers import check_every

if TYPE_CHECKING:
    from server.connection import Connection
    from server.middleware import Middleware
    from server.server import Server
    from server.sessions import Session
    from server.stateful_rooms import StatefulRoom
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
        "idempotent",
        "idempotent_ttl",
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
        idempotent: Callable[[Any], Any] | None = None,
        idempotent_ttl: float | None = None,
        reply_first: bool = False,
    ) -> None:
        self.request = request
        #: The request's idempotency key: a resend with the same key gets the first reply
        #: (server/idempotency.py); kept `idempotent_ttl` s (None: idempotency_ttl).
        self.idempotent = idempotent
        self.idempotent_ttl = idempotent_ttl
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


#: A lifecycle hook or a timer body: fn(server), sync or async.
ServerHook = Callable[["Server"], Awaitable[None] | None]


@dataclass(frozen=True)
class TimerSpec:
    """An `@app.every` declaration; the server makes the timer at start and at a reload."""

    interval: float
    fn: ServerHook
    jitter: float
    align: bool
    name: str | None


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
        reloadable: bool = True,
        reply_first: bool = False,
    ) -> None:
        self.name = name
        #: The default of `handler(reply_first=...)` for this app's handlers.
        self.reply_first = reply_first
        #: False: a handler reload is refused while this app is served (its state cannot
        #: be handed to new code); a restart is the way to new code.
        self.reloadable = reloadable
        #: The app's state: a reload hands the old app's `state` to the new app of the
        #: same name (module globals are made afresh by the re-import; this is not).
        self.state: Any = SimpleNamespace()
        self.start_hooks: list[ServerHook] = []
        self.stop_hooks: list[ServerHook] = []
        #: Called as (server, old app) on the new app at a handler reload.
        self.reload_hooks: list[Callable[[Server, App], Awaitable[None] | None]] = []
        self.timers: list[TimerSpec] = []
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
        #: Authoritative room types by name (server/stateful_rooms.py).
        self.room_types: dict[str, type[StatefulRoom]] = {}

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
        idempotent: Callable[[Any], Any] | None = None,
        idempotent_ttl: float | None = None,
        reply_first: bool | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated function as the handler of `request` messages. With
        `owner` (a function of the request giving its key), a cluster runs it on the
        key's owner node, forwarding it from whichever node the client is on. With
        `idempotent` (a function of the request giving its key, a client order ID say),
        a resend of the same key by the same user gets the first reply instead of a
        second run, for `idempotent_ttl` seconds (server/idempotency.py). With
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
                idempotent=idempotent,
                idempotent_ttl=idempotent_ttl,
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
        idempotent: Callable[[Any], Any] | None = None,
        idempotent_ttl: float | None = None,
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
        is_public = self.public if public is None else public
        if idempotent is not None and is_public:
            raise ValueError(
                f"{request.DESCRIPTOR.full_name}: an idempotent handler needs a login (its "
                "keys are the user's)"
            )
        if idempotent_ttl is not None and idempotent_ttl <= 0:
            raise ValueError(f"{request.DESCRIPTOR.full_name}: idempotent_ttl must be > 0")
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
            is_public,
            limit,
            owner,
            idempotent,
            idempotent_ttl,
            first,
        )
        self.routes[request] = route
        return route

    def room_type(
        self,
        name: str,
        cls: type[StatefulRoom],
        *,
        room_of: Callable[[Any], str] | None = None,
        rate: str | None = None,
        burst: int | None = None,
    ) -> None:
        """Declare an authoritative room type (server/stateful_rooms.py): each message
        type its class marks with ``@room_message`` gets a handler here that runs the
        method in the sender's room. `room_of` (a function of the message giving the
        room id) lets a user sit in several rooms of the type, and makes each room an
        owned key in a cluster; without it a user's messages go to their one room of the
        type."""
        from server.stateful_rooms import StatefulRooms, is_sync

        if name in self.room_types:
            raise ValueError(f"room type {name!r} is declared twice in {self.name}")
        methods = StatefulRooms.messages_of(cls)
        if not methods:
            raise ValueError(f"{cls.__qualname__} marks no method with @room_message")
        self.room_types[name] = cls
        owner = None if room_of is None else _room_key(room_of)
        for message_type, method_name in methods.items():
            self.add_handler(
                message_type,
                _room_handler(name, method_name, room_of, sync=is_sync(cls)),
                owner=owner,
                rate=rate,
                burst=burst,
            )

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

    def on_start(self, hook: ServerHook) -> ServerHook:
        """Call `hook(server)` (sync or async) when the server starts: its store and
        cluster are up, it accepts no connection yet, so handlers may rely on what the
        hook loads. Apps in order, each app's hooks in the order added; one that raises
        or outlasts `hook_timeout` fails the start."""
        self.start_hooks.append(hook)
        return hook

    def on_stop(self, hook: ServerHook) -> ServerHook:
        """Call `hook(server)` when the server stops: after its timers ended and its
        in-flight handlers finished, before connections get GoAway and the store and
        cluster close (so it can still push and save). Apps in reverse order, hooks in
        reverse order; what one raises is logged and the stop goes on."""
        self.stop_hooks.append(hook)
        return hook

    def on_reload(
        self, hook: Callable[[Server, App], Awaitable[None] | None]
    ) -> Callable[[Server, App], Awaitable[None] | None]:
        """Call `hook(server, old_app)` on the new app at a handler reload, after every
        timer of the old code ended and `app.state` was handed over: restart the
        timers the old code made with `server.every`/`call_later` from the state. A
        reload with such timers running is refused unless an app declares this hook."""
        self.reload_hooks.append(hook)
        return hook

    def every(
        self,
        interval: float,
        *,
        jitter: float = 0.0,
        align: bool = False,
        name: str | None = None,
    ) -> Callable[[ServerHook], ServerHook]:
        """Run the decorated `fn(server)` (sync or async) every `interval` seconds while
        the server runs, from after the on_start hooks to before the on_stop ones. A run
        due while the previous one is still awaited is skipped (an overrun); `jitter`
        delays each run by up to that many seconds; `align` puts runs on multiples of
        `interval` of the wall clock."""
        check_every(interval, jitter)

        def declare(fn: ServerHook) -> ServerHook:
            self.timers.append(TimerSpec(interval, fn, jitter, align, name))
            return fn

        return declare

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
                route.idempotent,
                route.idempotent_ttl,
                route.reply_first,
            )
            fresh.app_name = app.name
            routes.append((app, fresh))
    return routes


def _room_handler(
    type_name: str, method_name: str, room_of: Callable[[Any], str] | None, *, sync: bool
) -> Callable[..., Any]:
    if sync:

        def room_message_sync(ctx: Context, msg: Any) -> Message | None:
            rooms = ctx.server.stateful_rooms
            return rooms.dispatch_sync(type_name, method_name, room_of, ctx, msg)

        room_message_sync.__qualname__ = f"{type_name}.{method_name}"
        return room_message_sync

    async def room_message(ctx: Context, msg: Any) -> Message | None:
        rooms = ctx.server.stateful_rooms
        return await rooms.dispatch(type_name, method_name, room_of, ctx, msg)

    room_message.__qualname__ = f"{type_name}.{method_name}"
    return room_message


def _room_key(room_of: Callable[[Any], str]) -> Callable[[Any], str]:
    return lambda msg: f"room:{room_of(msg)}"
