"""The Server: builds the registry and handler chains from its apps, listens, and stops.

As in uvicorn, `ServerConfig` is apart from `Server`, and `Server.start` can take a socket
it is handed (what a hot restart needs) instead of binding one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import resource
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any, NamedTuple

from google.protobuf.message import Message

from protocol.errors import ErrorCode
from protocol.frame import Flags, encode_frame
from protocol.proto.system_pb2 import Ping
from protocol.registry import system_registry
from protocol.system import PING_ID
from server.app import App, Context, Kind, Route, all_routes
from server.auth import Authenticator, UsersFile
from server.cluster import Cluster, NodeInfo
from server.cluster.handover import Handovers
from server.cluster.kicks import Kicks
from server.cluster.owned import OwnedKeys
from server.cluster.rooms import ClusterRooms
from server.cluster.users import UserPush
from server.config import ServerConfig
from server.connection import Budgets, CloseReason, Connection, TLSConnection
from server.dispatch import Dispatcher
from server.idempotency import Idempotency, make_awaitable
from server.inbox import Inbox
from server.logs import ConnectionLog
from server.metrics import MetricsEndpoint, Timing
from server.middleware import (
    AuthGate,
    Counters,
    Deadline,
    ErrorRecovery,
    Middleware,
    compose_fusable,
)
from server.outbox import Outbox
from server.push import OfflineQueue, Pusher, Room
from server.ratelimit import Limit, LoginThrottle, RateLimit
from server.sessions import (
    DuplicateLogin,
    EndReason,
    Session,
    SessionManager,
    default_node_id,
)
from server.stateful_rooms import StatefulRoom, StatefulRooms
from server.stats import Stats
from server.store import BreakerStore, MemoryStore, Store, StoreError, open_store
from server.system_handlers import system_app
from server.timers import HookError, ReloadRefused, Timer, Timers, describe, run_hook
from server.tls import HandshakeFailures, HandshakeGate, quiet_handshake_errors, server_context

log = logging.getLogger("tickwire.server")

#: Open files kept back from connections for the server's own use: the listening socket,
#: the store's connection pool, log files, the metrics listener, a restart's handover.
#: A connection past the rest still gets its TOO_MANY_CONNECTIONS from one of them.
FD_RESERVE = 128

#: Rooms an ended session leaves per loop iteration (with their room-left hooks), so a
#: session in many rooms does not hold the loop (docs/internet.md, "Rooms").
ROOMS_PER_ITERATION = 256

#: Seconds the "out of open files" warning stays quiet after it was written (doubling
#: while the shortage lasts).
FILES_BACKOFF = 10

#: The cap when neither the config (max_connections = 0) nor the open-file limit (none)
#: names one.
DERIVED_CAP = 1_000_000


class PreparedApps(NamedTuple):
    """What serving a set of apps takes, built before any of it replaces the server's."""

    apps: list[App]
    registry: Any
    app_routes: list[tuple[App, Route]]
    routes: dict[int, Route]
    describe_reply: Any
    latest: dict[Any, Any]
    room_left: list[Callable[[Server, str, Session], None]]
    room_types: dict[str, type[StatefulRoom]]


class Server:
    def __init__(
        self,
        *apps: App,
        config: ServerConfig | None = None,
        middleware: list[Middleware] | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        #: Who a LoginRequest's credentials belong to; without one (and no users_file in
        #: the config) every login is refused, and only public handlers can be used.
        self.authenticator: Authenticator | None = authenticator
        if authenticator is None and self.config.users_file:
            threads = self.config.login_threads or min(8, os.cpu_count() or 1)
            # Checks in the pool hold consumers; a pool that could hold all of them would
            # never fill, and the consumer queue would grow instead: keep 8 back.
            room = max(0, self.config.consumers - threads - 8)
            self.authenticator = UsersFile(
                self.config.users_file,
                threads=threads,
                queue=min(self.config.login_queue, room),
            )
        #: Failed logins per name and address (a layer on the Login route; it outlives
        #: a handler reload, as the apps' rate buckets do not).
        self.login_throttle = LoginThrottle(
            user_failures=self.config.login_user_failures,
            address_failures=self.config.login_address_failures,
            lockout=self.config.login_lockout,
            lockout_max=self.config.login_lockout_max,
        )
        config = self.config
        #: This node's name (in the session records, and in the cluster).
        self.node_id = config.node_id or default_node_id()
        #: The cluster this node is part of (cluster_url), None on its own.
        self.cluster: Cluster | None = None
        if config.cluster_url:
            self.cluster = Cluster(
                config.cluster_url,
                self.node_id,
                heartbeat=config.cluster_heartbeat,
                ttl=config.cluster_node_ttl,
                call_timeout=config.cluster_call_timeout,
            )
            self.cluster.describe = self._describe_node
        #: Owned keys, forwarding and server.call (server/cluster/owned.py).
        self.owned = OwnedKeys(self)
        self.sessions = SessionManager(
            session_ttl=self.config.session_ttl,
            token_ttl=self.config.token_ttl,
            duplicate_login=DuplicateLogin(self.config.duplicate_login),
            node=self.node_id,
            push_buffer=self.config.push_buffer,
        )
        self.sessions.on_end = self._session_ended
        #: Authoritative rooms: state, seats, ticks (server/stateful_rooms.py).
        self.stateful_rooms = StatefulRooms(self)
        #: With a cluster: sessions held by other nodes end there (server/cluster/kicks.py).
        self.kicks: Kicks | None = None
        if self.cluster is not None:
            self.kicks = Kicks(self.cluster, self.sessions)
        #: Replies of the read fast path and pushes wait here for the end of the loop
        #: iteration: one write per connection (server/outbox.py).
        self.outbox = Outbox()
        #: Push to sessions, users, rooms, everyone (server/push.py).
        self.pusher = Pusher(self.sessions, self.outbox, self.message_id)
        #: With a cluster: pushes to users held on other nodes (server/cluster/users.py).
        self.user_push: UserPush | None = None
        if self.cluster is not None:
            self.user_push = UserPush(
                self.cluster,
                self.pusher,
                self.sessions,
                lambda: self.registry,
                every_node=self.sessions.duplicate_login is DuplicateLogin.ALLOW,
            )
            # Rooms span the nodes; its handlers are registered before the cluster
            # connects (it subscribes the "everyone" channel then).
            self.pusher.cluster_rooms = ClusterRooms(
                self.cluster, self.pusher, lambda: self.registry
            )
        #: With a cluster: a Resume here takes the session over from the node that holds
        #: it, pushes and rooms included (server/cluster/handover.py).
        self.handovers: Handovers | None = None
        if self.cluster is not None:
            self.handovers = Handovers(self.cluster, self.sessions, self.pusher, self.user_push)
        #: Reliable pushes for users with no session here, kept in the store (at start).
        self.inbox: Inbox | None = None
        #: Every timer of the apps (server/timers.py): a stop and a reload end them.
        self.timers = Timers(self.config.max_timers)
        #: Held by a handler reload from its first import to its last hook.
        self.reload_lock = asyncio.Lock()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # at start
        self.apps: list[App] = []
        self.registry = system_registry()
        self.routes: dict[int, Route] = {}
        self._app_routes: list[tuple[App, Route]] = []
        self.describe_reply = self.registry.describe()
        self._set_apps(apps)
        #: Outermost first; app layers go inside these, the deadline innermost.
        self.middleware: list[Middleware] = (
            middleware if middleware is not None else [ErrorRecovery(), Counters()]
        )
        self.timing: Timing | None = None
        self.metrics: MetricsEndpoint | None = None
        if self.config.metrics:
            self.timing = Timing()
            self.middleware = [*self.middleware, self.timing]
            self.metrics = MetricsEndpoint(self, self.timing)
        self.stats = Stats()
        #: Every connection's byte limits, with and without a session (server/connection.py).
        self.budgets = Budgets(self.config)
        self.dispatcher = Dispatcher(
            self.routes,
            self.message_id,
            self.stats,
            self.outbox,
            consumers=self.config.consumers,
            mailbox_limit=self.config.mailbox_limit,
            max_pending=self.config.max_pending,
            max_input_total=self.config.max_input_bytes_total,
            max_output_total=self.config.max_output_bytes_total,
            max_frame=self.config.max_frame,
            fast_path=self.config.fast_path,
        )
        self.connections: set[Connection] = set()
        #: Open connections per peer IP, kept only when max_connections_per_ip is set.
        self.per_ip: dict[str, int] = {}
        #: config.max_connections (0: derived), set at start to what the open-file limit
        #: allows.
        self.max_connections = self.config.max_connections or DERIVED_CAP
        #: Connection open and close lines, summed under a flood (server/logs.py).
        self.conn_log = ConnectionLog(log, self.config.log_flood)
        #: The open-file limit in force (set at start), and the state of the watch for
        #: running out (`_watch_open_files`): a descriptor to duplicate (the listening
        #: socket's), the tick before which it stays quiet, its back-off in seconds.
        self.open_files = 0
        self._probe_fd = -1
        self._files_quiet_until = 0
        self._files_backoff = FILES_BACKOFF
        #: Advanced by the sweep; connections stamp it when they receive (idle timeout).
        self.tick = 0
        self.executor: ThreadPoolExecutor | None = None
        self._listeners: list[asyncio.Server] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self.metrics_address: tuple[str, int] | None = None
        #: The (host, port) the listener got, kept after it closes (the node's record).
        self._bound: tuple[str, int] | None = None
        #: Opened by start(): sessions, tokens and every app's ctx.cache live here.
        self.store: Store | None = None
        #: The same store as its circuit breaker (state and counters for the metrics).
        self.breaker: BreakerStore | None = None
        self._caches: dict[str, Store] = {}
        self.accepting = False
        self._gate = AuthGate()
        #: Resends of idempotent requests answered from the store (server/idempotency.py).
        self.idempotency = Idempotency(self)
        #: Failed TLS handshakes, counted and logged at most once per interval.
        self.tls_failures = HandshakeFailures()
        #: TLS handshakes in flight: they count against max_connections with the
        #: connections (a peer is a Connection only once its handshake is done). One
        #: handshake past the cap is let through, so that a client meeting a full server
        #: hears TOO_MANY_CONNECTIONS from attach, as over plaintext, not a bare close.
        self.tls_handshakes = HandshakeGate(
            lambda in_flight: len(self.connections) + in_flight <= self.max_connections
        )

    # -- building chains --------------------------------------------------------------

    def _set_apps(self, apps: tuple[App, ...] | list[App], *, chains: bool = False) -> None:
        self._commit_apps(self._prepare_apps(apps, chains=chains))

    def _prepare_apps(
        self, apps: tuple[App, ...] | list[App], *, chains: bool = False
    ) -> PreparedApps:
        """Build the registry, routes (and with `chains`, their middleware chains) of `apps`
        plus the system app, all on locals: if anything raises (duplicate IDs, two
        handlers for a type, a layer's wrap), nothing of the server has changed."""
        all_apps = [system_app(), *apps]
        registry = system_registry()
        for app in all_apps:
            app.register_messages(registry)
        app_routes = all_routes(all_apps)
        routes: dict[int, Route] = {}
        for _, route in app_routes:
            route.msg_id = registry.id_of(route.request)
            routes[route.msg_id] = route
        if chains:
            self._build_chains(app_routes)
        room_types: dict[str, type[StatefulRoom]] = {}
        for app in all_apps:
            for name, cls in app.room_types.items():
                if name in room_types:
                    raise ValueError(f"room type {name!r} is declared by two apps")
                room_types[name] = cls
        self.stateful_rooms.check_types(room_types)
        return PreparedApps(
            all_apps,
            registry,
            app_routes,
            routes,
            registry.describe(),
            {t: key for app in all_apps for t, key in app.latest.items()},
            [hook for app in all_apps for hook in app.room_left],
            room_types,
        )

    def _commit_apps(self, prepared: PreparedApps) -> None:
        # Live rooms move to the new classes of their types (checked when prepared).
        self.stateful_rooms.use_types(prepared.room_types)
        self.pusher.latest_keys = prepared.latest
        self._room_left = prepared.room_left
        self.apps, self.registry, self._app_routes, self.routes = (
            prepared.apps,
            prepared.registry,
            prepared.app_routes,
            prepared.routes,
        )
        self.describe_reply = prepared.describe_reply

    def swap_apps(self, *apps: App) -> None:
        """Serve `apps`' handlers from now on, without touching a connection. Routes only:
        `reload_apps` is the handler reload (timers, hooks and app state too).

        Frames already being awaited finish on their old handlers; the next frame of every
        connection meets the new ones. Counters carry over per message type. On any error
        the old apps stay in place and the error propagates.
        """
        self._swap(self._prepare_apps(apps, chains=True))

    def _swap(self, prepared: PreparedApps) -> None:
        old = {route.name: route for route in self.routes.values()}
        self._commit_apps(prepared)
        for route in self.routes.values():
            before = old.get(route.name)
            if before is not None:
                route.calls, route.errors = before.calls, before.errors
        self.dispatcher.routes = self.routes

    def message_id(self, cls: type[Message]) -> int | None:
        """The message ID of `cls` in the registry in use, None if it has none. The
        dispatcher and the Pusher are handed this, so they follow a handler reload."""
        return self.registry._id_by_class.get(cls)

    def _build_chains(self, app_routes: list[tuple[App, Route]]) -> None:
        config = self.config
        deadline = Deadline(config.handler_timeout)
        # Inside the gate, so a refused anonymous frame spends no token; every layer here
        # returns call_next for a route it has nothing to do with (Route.fused stays).
        limits: list[Middleware] = [self.login_throttle]
        if config.conn_rate:
            per_conn = Limit.of(config.conn_rate, config.conn_burst, "connection")
            limits.append(RateLimit(per_conn, shared=True))
        by_app = {id(app): RateLimit(app.limit) for app, _ in app_routes}
        key_hooks = any(
            app.key_acquired or app.key_released or app.declared_keys for app, _ in app_routes
        )
        for app, route in app_routes:
            # The gate is not in self.middleware: a custom list must not drop it.
            layers = [
                *self.middleware,
                self._gate,
                *limits,
                by_app[id(app)],
                self.idempotency,
                *app.middleware,
                deadline,
            ]
            inner = self._innermost(route)
            if route.idempotent is not None:
                # The store is awaited: so is the chain (server/idempotency.py).
                route.awaited = True
                inner = make_awaitable(route, inner)
            if route.owner is not None and (self.cluster is not None or key_hooks):
                # Run on the key's owner: awaited, as a forward is (server/cluster/owned.py).
                # Alone, with no app listening for keys, every key is this node's and
                # there is nothing to do: the route keeps its own kind.
                route.awaited = True
                inner = self.owned.wrap(route, inner)
            route.call, route.fused = compose_fusable(route, layers, inner)

    def _innermost(self, route: Route) -> Callable[[Context, Any], Any]:
        if route.kind is not Kind.BLOCKING:
            return route.handler
        handler: Callable[[Context, Message], Message | None] = route.handler  # type: ignore[assignment]
        executor = self.executor

        async def in_thread(ctx: Context, msg: Message) -> Message | None:
            loop = asyncio.get_running_loop()
            result: Message | None = await loop.run_in_executor(executor, handler, ctx, msg)
            return result

        return in_thread

    # -- lifecycle --------------------------------------------------------------------

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on `config.host:port`, or on `sock` when handed one."""
        # Before anything starts: unreadable or mismatched TLS files raise ConfigError.
        tls_context = server_context(
            self.config.tls_cert,
            self.config.tls_key,
            self.config.tls_ca,
            min_version=self.config.tls_min_version,
            failures=self.tls_failures,
            gate=self.tls_handshakes,
        )
        loop = asyncio.get_running_loop()
        config = self.config
        self.open_files = raise_open_file_limit()
        self.max_connections = connection_cap(config.max_connections, self.open_files)
        log.info(
            "connection cap %d",
            self.max_connections,
            extra={"open_files": self.open_files, "reserve": FD_RESERVE},
        )
        # First: a store that cannot be reached fails the start, before we accept anyone.
        backend = await open_store(
            config.store_backend,
            redis_url=config.store_url,
            snapshot_path=config.store_snapshot_path or None,
            snapshot_interval=config.store_snapshot_interval,
            max_keys=config.store_max_keys or None,
            append_only=config.store_append_only,
            append_fsync=config.store_append_fsync,
        )
        # Every store call from here on (sessions, inbox, ctx.cache) goes through the
        # circuit breaker: a store that stops answering costs requests nothing.
        self.store = self.breaker = BreakerStore(
            backend,
            failures=config.store_breaker_failures,
            probe_interval=config.store_breaker_probe_interval,
        )
        self.breaker.on_recovery.append(self.sessions.store_recovered)
        self.pusher.max_rooms = config.max_rooms_per_session
        self.sessions.bind(self.store)
        self.inbox = Inbox(self.store, max_per_user=config.inbox_max, ttl=config.inbox_ttl)
        self.pusher.offline_queue = OfflineQueue(self.inbox, loop)
        self.loop = loop
        if self.cluster is not None:
            try:
                await self.cluster.connect()
            except BaseException:
                await self.store.close()
                raise
        self.outbox.start(loop)
        self.executor = ThreadPoolExecutor(
            self.config.blocking_threads, thread_name_prefix="tickwire-blocking"
        )
        self._build_chains(self._app_routes)
        self.dispatcher.start(loop)
        self.timers.start(loop)
        try:
            # Before the listener: handlers may rely on what the hooks load.
            await self._start_apps()
        except BaseException:
            await self._unwind_start()
            raise
        # A plaintext listener gets no TLS argument at all, and so the very code it ran
        # before TLS existed; TLSConnection differs only where uvloop's TLS transport
        # does. A closing TLS connection waits for the peer's close_notify no longer
        # than any closing connection waits for its peer to read (close_grace).
        tls: dict[str, Any] = {}
        protocol: type[Connection] = Connection
        if tls_context is not None:
            quiet_handshake_errors(loop, self.tls_failures)
            tls = {
                "ssl": tls_context,
                "ssl_handshake_timeout": config.tls_handshake_timeout,
                "ssl_shutdown_timeout": config.close_grace,
            }
            protocol = TLSConnection
        if sock is not None:
            listener = await loop.create_server(
                lambda: protocol(self), sock=sock, backlog=self.config.backlog, **tls
            )
        else:
            listener = await loop.create_server(
                lambda: protocol(self),
                self.config.host,
                self.config.port,
                backlog=self.config.backlog,
                reuse_address=True,
                **tls,
            )
        if tls_context is not None:
            log.info(
                "TLS %s+ with %s%s",
                config.tls_min_version,
                config.tls_cert,
                f"; client certificates signed by {config.tls_ca} required"
                if config.tls_ca
                else "",
            )
        self._listeners.append(listener)
        self._probe_fd = listener.sockets[0].fileno()
        self._bound = self.address
        if self.metrics is not None:
            self.metrics_address = await self.metrics.start(
                self.config.metrics_host, self.config.metrics_port
            )
            log.info("metrics on http://%s:%d/metrics", *self.metrics_address)
        self.accepting = True
        self._sweeper = loop.create_task(self._sweep(), name="tickwire-sweep")
        if self.cluster is not None:
            await self.cluster.register()
            self.owned.rebalance()
            log.info(
                "node %s of the cluster at %s (%d live nodes)",
                self.node_id,
                self.cluster.address,
                len(self.cluster.live),
            )

    # -- app lifecycle and timers -----------------------------------------------------

    def call_later(
        self, delay: float, fn: Callable[..., Any], *args: Any, name: str | None = None
    ) -> Timer:
        """Run `fn(*args)` (sync or async) once, `delay` seconds from now, as a timer the
        server owns: a stop or a handler reload ends it cleanly (server/timers.py).
        TooManyTimers past `max_timers`; `name` labels its metrics (default: fn's name)."""
        return self.timers.call_later(delay, fn, *args, name=name)

    def every(
        self,
        interval: float,
        fn: Callable[..., Any],
        *args: Any,
        jitter: float = 0.0,
        align: bool = False,
        name: str | None = None,
    ) -> Timer:
        """Run `fn(*args)` every `interval` seconds until its handle's `cancel()`, the
        stop, or a handler reload (which `@app.on_reload` restarts it after). A run due
        while the previous one is still awaited is skipped and counted as an overrun."""
        return self.timers.every(interval, fn, *args, jitter=jitter, align=align, name=name)

    async def _start_apps(self) -> None:
        """Every app's on_start hooks, apps in order, then the apps' `@app.every` timers.
        A hook that fails ends the timers made so far and runs the on_stop hooks of the
        apps whose on_start hooks all ran, then raises HookError."""
        started: list[App] = []
        for app in self.apps:
            try:
                for hook in app.start_hooks:
                    await run_hook(
                        hook,
                        (self,),
                        app=app.name,
                        kind="on_start",
                        timeout=self.config.hook_timeout,
                    )
            except HookError:
                await self.timers.stop(self.config.hook_timeout)
                await self._run_stop_hooks(started)
                raise
            started.append(app)
        for app in self.apps:
            self._start_declared(app)

    def _start_declared(self, app: App) -> None:
        for spec in app.timers:
            self.timers.every(
                spec.interval,
                spec.fn,
                self,
                jitter=spec.jitter,
                align=spec.align,
                name=spec.name or describe(spec.fn),
                declared=True,
            )

    async def _stop_apps(self) -> None:
        """End every timer (bodies in progress finish, up to hook_timeout), then the
        authoritative rooms (their on_dispose, players still connected), then the on_stop
        hooks, apps in reverse order."""
        await self.timers.stop(self.config.hook_timeout)
        try:
            async with asyncio.timeout(self.config.hook_timeout):
                await self.stateful_rooms.stop()
        except TimeoutError:
            log.error("rooms not disposed within hook_timeout (%g s)", self.config.hook_timeout)
        await self._run_stop_hooks(self.apps)

    async def _run_stop_hooks(self, apps: list[App]) -> None:
        for app in reversed(apps):
            for hook in reversed(app.stop_hooks):
                try:
                    await run_hook(
                        hook,
                        (self,),
                        app=app.name,
                        kind="on_stop",
                        timeout=self.config.hook_timeout,
                    )
                except HookError as exc:
                    log.error("%s; the stop goes on", exc, exc_info=exc.__cause__)

    async def _unwind_start(self) -> None:
        """Close what a start opened before one of its steps failed."""
        await self.timers.stop(self.config.hook_timeout)
        await self.dispatcher.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        await self._close_backends()

    async def _close_backends(self) -> None:
        """The cluster, then the store (the memory store's final snapshot sees all the
        handlers did): the last steps of a stop, or of a start that failed."""
        if self.cluster is not None:
            await self.cluster.stop()
        if self.store is not None:
            try:
                await self.store.close()
            except StoreError as exc:
                log.error("store did not close cleanly: %s", exc)
        self._stopped.set()

    def reload_refusal(self) -> str | None:
        """Why a handler reload cannot replace the apps served now, or None."""
        for app in self.apps:
            if not app.reloadable:
                return (
                    f"app {app.name!r} is declared App(reloadable=False): its state cannot "
                    "be handed to new code; restart the server instead (SIGHUP)"
                )
        return None

    async def reload_apps(self, *apps: App) -> None:
        """`replace_apps` under `reload_lock`: one reload at a time."""
        async with self.reload_lock:
            await self.replace_apps(*apps)

    async def replace_apps(self, *apps: App) -> None:
        """Serve `apps`, new code of the apps served now, with never two generations of
        timers. In order: build the new routes (an error here changes nothing); end
        every timer of the old generation (bodies in progress finish, up to
        hook_timeout); hand each old app's `state` to the new app of its name; swap the
        routes; run the new apps' on_reload hooks (on_start for an app new by name,
        on_stop for an old one gone); start the new apps' `@app.every` timers.

        ReloadRefused, with nothing changed, when an old app is not reloadable, or when
        timers made by `server.every`/`call_later` run and no new app has an on_reload
        hook to make them again. A hook that fails at this point is logged: the new code
        serves anyway. The caller holds `reload_lock` (a reload that imports the new
        code holds it from before the import: server/reload.py)."""
        refusal = self.reload_refusal()
        if refusal is not None:
            raise ReloadRefused(refusal)
        prepared = self._prepare_apps(apps, chains=True)
        timers = self.timers
        made = [t for t in timers.live if not t.declared]
        if made and not any(app.reload_hooks for app in apps):
            names = ", ".join(sorted({t.name for t in made})[:5])
            raise ReloadRefused(
                f"{len(made)} timers made with server.every/call_later are running "
                f"({names}) and no app declares @app.on_reload to make them again "
                "in the new code; they would stop. Declare one, or restart instead"
            )
        timeout = self.config.hook_timeout
        await timers.stop(timeout, generation=timers.generation)
        timers.generation += 1
        old_apps = {app.name: app for app in self.apps}
        for app in apps:
            old = old_apps.get(app.name)
            if old is not None:
                app.state = old.state
        self._swap(prepared)
        new_names = {app.name for app in apps}
        gone = [old for name, old in old_apps.items() if name not in new_names and name != "system"]
        await self._run_stop_hooks(gone)
        for app in apps:
            old = old_apps.get(app.name)
            hooks: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = (
                [("on_start", hook, (self,)) for hook in app.start_hooks]
                if old is None
                else [("on_reload", hook, (self, old)) for hook in app.reload_hooks]
            )
            for kind, hook, args in hooks:
                try:
                    await run_hook(hook, args, app=app.name, kind=kind, timeout=timeout)
                except HookError as exc:
                    log.error(
                        "reload: %s; the new handlers serve anyway", exc, exc_info=exc.__cause__
                    )
        for app in apps:
            self._start_declared(app)

    def _describe_node(self) -> NodeInfo:
        """This node's record in the cluster's directory."""
        host, port = self._bound or (self.config.host, self.config.port)
        return NodeInfo(
            id=self.node_id,
            host=host,
            port=port,
            pid=os.getpid(),
            started_ms=self.cluster.started_ms if self.cluster is not None else 0,
            heartbeat_ms=time.time_ns() // 1_000_000,
            connections=len(self.connections),
            sessions=len(self.sessions.live),
            draining=not self.accepting and bool(self._listeners),
        )

    async def before_handover(self) -> None:
        """A successor is about to start and restore the memory store's snapshot: write it
        now, so sessions made since the last periodic snapshot come along."""
        store = self.backend
        if isinstance(store, MemoryStore) and store.path is not None:
            await self.sessions.flush()
            # The successor resumes these sessions: their unacknowledged pushes go along.
            await self.sessions.save_pushes(self.sessions.all_sessions())
            # Clean: the successor may trust the pushes saved with each session.
            await store.snapshot(clean=True)

    def after_handover(self) -> None:
        """The successor serves: the snapshot file is its own from now on."""
        store = self.backend
        if isinstance(store, MemoryStore):
            store.release_snapshot()

    @property
    def backend(self) -> Store | None:
        """The store behind the breaker (a MemoryStore or a RedisStore), once started."""
        return self.breaker.base if self.breaker is not None else None

    # -- push -------------------------------------------------------------------------

    def push(self, user_id: str, message: Message) -> int:
        """Push `message` to every session of `user_id` (connected, or waiting for a Resume
        that will replay it), on this node and, with a cluster, on the others. With none
        anywhere, a reliable push goes to the user's offline inbox, delivered at the next
        login. Returns the sessions reached on this node; ClusterUnavailable (after the
        local deliveries) when the push needed the cluster's Redis and it is down."""
        return self.pusher.to_users((user_id,), message)

    def multicast(self, user_ids: Iterable[str], message: Message) -> int:
        """`push` to several users, encoded once; the offline ones share one stored body."""
        return self.pusher.to_users(user_ids, message)

    def broadcast(self, message: Message) -> int:
        """Push `message` to every session, on every node of a cluster (one PUBLISH for
        the others; while Redis is unreachable, this node's only, the miss counted).
        Returns the sessions reached on this node."""
        pusher = self.pusher
        encoded = pusher.encode(message)
        count = pusher.to_sessions(pusher.sessions.all_sessions(), message, encoded)
        if pusher.cluster_rooms is not None:
            latest = type(message) in pusher.latest_keys
            pusher.cluster_rooms.publish_everyone(*encoded, latest)
        return count

    def room(self, name: str) -> Room:
        """A handle on the room `name`: join, leave, members, broadcast. In a cluster it
        spans the nodes (its sync answers are this node's, its awaited ones everyone's)."""
        return self.pusher.room(name)

    async def call(
        self, target: str, message: Message, *, timeout: float | None = None
    ) -> Message | None:
        """Run the handler of `message`'s type on the node `target` (a live node id) or on
        the owner of the key `target`, and return its reply. NodeGone, CallTimeout,
        RemoteError (the handler's error), ClusterUnavailable; without a cluster, it runs
        here."""
        return await self.owned.call(target, message, timeout=timeout)

    async def where(self, user_id: str) -> list[tuple[str, int]]:
        """(node id, connection id) of each connected session of the user, on any node
        (the store has them: every node of a cluster shares it)."""
        return await self.sessions.where(user_id)

    async def inbox_settled(self, user_id: str) -> None:
        """Wait until every offline push queued so far for the user is in the inbox."""
        await self.pusher.inbox_settled(user_id)

    def _session_ended(self, session: Session, reason: EndReason) -> None:
        if session.rooms:
            # The session object keeps its old set; a join it could still make starts
            # a new one, which the chunks below never touch.
            names = iter(session.rooms)
            session.rooms = set()
            self._leave_rooms(session, names)
        # Replaced by a newer login, or never resumed: what it was pushed and never
        # acknowledged reaches the user at the next login. A logout or a removal asked
        # for the session to end, pushes included.
        if reason in (EndReason.REPLACED, EndReason.EXPIRED, EndReason.FAILED):
            self.pusher.keep_unacked(session)

    def _leave_rooms(self, session: Session, names: Iterator[str]) -> None:
        """Take an ended session out of its rooms, ROOMS_PER_ITERATION at a time: a
        session in thousands of rooms (each with its room-left hooks, a broadcast in the
        chat example) must not hold the loop for all of them at once."""
        leave = self.pusher.leave
        hooks = self._room_left
        done = 0
        for name in islice(names, ROOMS_PER_ITERATION):
            done += 1
            leave(name, session)
            for hook in hooks:
                try:
                    hook(self, name, session)
                except Exception:
                    log.exception("room-left hook %r raised", hook)
        if done == ROOMS_PER_ITERATION:
            self.loop.call_soon(self._leave_rooms, session, names)

    async def flush_pushes(self, timeout: float | None = None) -> None:
        """Wait until the offline-inbox writes queued so far are done."""
        await self.pusher.drain_offline(timeout)

    def listening_socket(self) -> Any:
        """The listening socket (what a restart hands to the successor)."""
        return self._listeners[0].sockets[0]

    @property
    def address(self) -> tuple[str, int]:
        """The first bound (host, port): with port 0 in the config, the one the OS chose."""
        sockname = self._listeners[0].sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def serve_forever(self) -> None:
        await self._stopped.wait()

    async def stop(self, timeout: float = 5.0, *, reconnect_after_ms: int = 0) -> None:
        """Drain and close, within `timeout`: stop accepting and stop reading (readiness goes
        false), let queued frames and awaited handlers finish and their replies flush, tell
        every connection GoAway SERVER_SHUTDOWN, then close; abort whatever is left.

        Requests still unread in a socket get no reply: the client sees GoAway, and its
        unanswered requests fail with ConnectionClosed, so it knows to retry elsewhere.
        """
        if self._stopped.is_set():
            return
        self.accepting = False
        for listener in self._listeners:
            listener.close()
        if self.cluster is not None:
            self.cluster.drain()
        for conn in self.connections:
            conn.pause_reading()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._work_can_progress() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        # Timers end and on_stop hooks run while the connections are still open and the
        # store and cluster up (they may push and save); their time is not the drain's.
        began = loop.time()
        await self._stop_apps()
        deadline += loop.time() - began
        for conn in list(self.connections):
            conn.close_with(
                ErrorCode.SERVER_SHUTDOWN,
                "server is shutting down",
                goaway=True,
                reconnect_after_ms=reconnect_after_ms,
            )
        # Give peers the rest of the timeout to read their GoAway, then abort the rest.
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.transport.abort()
        # Aborted transports report connection_lost on the next loop iteration.
        await asyncio.sleep(0)
        for conn in list(self.connections):
            self.sessions.connection_closed(conn)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.metrics is not None:
            await self.metrics.stop()
        await self.dispatcher.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        # Sessions that lost their connection are written as disconnected, with their data;
        # what they were pushed but never acknowledged goes to their users' inboxes.
        await self.sessions.flush(timeout=max(1.0, deadline - loop.time()))
        held = self.sessions.all_sessions()
        await self.sessions.save_pushes(held)
        for session in held:
            self.pusher.keep_unacked(session)
        await self.flush_pushes(timeout=max(1.0, deadline - loop.time()))
        await self._close_backends()

    def _work_can_progress(self) -> bool:
        """True while a handler runs or a connection that can still be written has frames
        queued; a peer that stopped reading cannot hold a stop up."""
        if self.dispatcher.busy:
            return True
        return any(c.mailbox and not c.write_paused and not c.closing for c in self.connections)

    # -- connections --------------------------------------------------------------------

    def attach(self, conn: Connection) -> None:
        """Admit a new connection, or refuse it with TOO_MANY_CONNECTIONS."""
        self.stats.connections_opened += 1
        conn.id = self.stats.connections_opened
        self.connections.add(conn)
        self.conn_log.opened(conn.id, conn.peer)
        limit = self.config.max_connections_per_ip
        if limit:
            ip = conn.peer_ip
            if not (self.config.trust_loopback and is_loopback(ip)):
                count = self.per_ip.get(ip, 0) + 1
                self.per_ip[ip] = count
                if count > limit:
                    conn.close_with(
                        ErrorCode.TOO_MANY_CONNECTIONS,
                        f"address {ip} is at its limit of {limit} connections",
                    )
                    return
        if len(self.connections) > self.max_connections:
            self._watch_open_files()
            conn.close_with(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"server is at its limit of {self.max_connections} connections",
            )
            return

    def detach(self, conn: Connection) -> None:
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        if self.config.max_connections_per_ip:
            ip = conn.peer_ip
            if not (self.config.trust_loopback and is_loopback(ip)):
                left = self.per_ip.get(ip, 1) - 1
                if left > 0:
                    self.per_ip[ip] = left
                else:
                    self.per_ip.pop(ip, None)
        self.stats.connections_closed += 1
        self.sessions.connection_closed(conn)
        reason = conn.close_reason or CloseReason.CONNECTION_LOST
        self.stats.close_reasons[reason] += 1
        self.conn_log.closed(conn.id, conn.peer, reason)

    async def _sweep(self) -> None:
        """One timer for every connection's timeouts, instead of a call_later each."""
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            self.tick += 1
            try:
                self.sessions.expire_waiting()
                self.sweep_once()
                self._watch_open_files()
            except Exception:  # one bad tick must not end every timeout for good
                log.exception("connection sweep failed")

    def sweep_once(self) -> None:
        """Every per-connection deadline, judged in whole ticks: a deadline of N ticks is
        met only after N full sweep intervals have passed, so never early and at most
        about one interval late. One pass over the connections per tick instead of a
        timer each keeps the per-frame path free of timer work."""
        config = self.config
        interval = config.sweep_interval

        def ticks(seconds: float) -> int:
            return math.ceil(seconds / interval)

        tick = self.tick
        idle_before = tick - ticks(config.idle_timeout) if config.idle_timeout else -1
        stall_before = tick - ticks(config.slow_consumer_timeout)
        grace_before = tick - ticks(config.close_grace)
        auth_before = tick - ticks(config.auth_timeout) if config.auth_timeout else -1
        frame_before = tick - ticks(config.frame_timeout) if config.frame_timeout else -1
        ping_ticks = ticks(config.ping_interval) if config.ping_interval else 0
        max_pings = config.max_outstanding_pings
        for conn in list(self.connections):
            if conn.closing:
                if conn.closing_tick < grace_before:
                    conn.transport.abort()
                continue
            # First, as it holds whatever the peer does: sending, pipelining or reading
            # nothing, a connection without a login goes at the auth timeout.
            if conn.session is not None:
                conn.auth_tick = tick
            elif max(conn.opened_tick, conn.auth_tick) < auth_before and not (
                conn.frames > conn.refused and self._anonymous_allowed(conn)
            ):
                conn.close_with(
                    ErrorCode.AUTH_TIMEOUT, f"no login within {config.auth_timeout:g} s"
                )
                continue
            if conn.write_paused:
                if conn.write_paused_tick < stall_before:
                    conn.close_with(
                        ErrorCode.SLOW_CONSUMER,
                        f"the client read nothing for {config.slow_consumer_timeout:g} s",
                    )
                # The slow-consumer rule judges it: a Ping would join what it leaves unread.
                continue
            if conn.reading_paused or conn.mailbox:
                # The server owes this peer: what it sent waits on our side, so its
                # silence is ours, not its own.
                conn.rx_tick = tick
                conn.partial_tick = -1
                continue
            if conn.decoder.buffered:
                if conn.partial_tick < 0 or conn.rx_tick > conn.partial_tick:
                    # A frame began since the last look (or a whole one arrived since).
                    conn.partial_tick = tick
                elif conn.partial_tick < frame_before:
                    conn.close_with(
                        ErrorCode.IDLE_TIMEOUT,
                        f"a frame was not finished within {config.frame_timeout:g} s",
                    )
                    conn.close_reason = CloseReason.FRAME_TIMEOUT
                    continue
            else:
                conn.partial_tick = -1
            if conn.rx_tick < idle_before:
                conn.close_with(
                    ErrorCode.IDLE_TIMEOUT,
                    f"no whole frame received for {config.idle_timeout:g} s",
                )
                continue
            if ping_ticks:
                if conn.pinged_rx != conn.rx_tick:
                    conn.pinged_rx = conn.rx_tick
                    conn.pinged = 0
                if tick - conn.rx_tick >= ping_ticks * (conn.pinged + 1):
                    if conn.pinged >= max_pings:
                        conn.close_with(
                            ErrorCode.IDLE_TIMEOUT,
                            f"{conn.pinged} pings unanswered ({config.ping_interval:g} s apart)",
                        )
                        conn.close_reason = CloseReason.PING_TIMEOUT
                    else:
                        conn.pinged += 1
                        conn.out.append(server_ping())
                        self.outbox.mark(conn)
        self.conn_log.flush()

    def _watch_open_files(self) -> None:
        """Say once per burst when the process is out of descriptors.

        uvloop (libuv) meets EMFILE/ENFILE on accept with its reserved-descriptor trick:
        it accepts and at once closes the waiting connections, and tells no one, so those
        peers get a bare reset. The cap (FD_RESERVE below the limit) keeps connections
        from getting there; descriptors held by anything else still can. So each sweep,
        and each refusal at the cap, duplicates a descriptor: when that fails, the next
        accept fails the same way. One warning, then quiet for a back-off that starts at
        10 s and doubles (up to 5 minutes) while it lasts; a look that finds room after
        the quiet time ends the burst.
        """
        if self._probe_fd < 0:
            return
        try:
            os.close(os.dup(self._probe_fd))
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                return
            why = errno.errorcode[exc.errno]
        else:
            if self.tick >= self._files_quiet_until:
                self._files_backoff = FILES_BACKOFF
            return
        if self.tick < self._files_quiet_until:
            return
        log.warning(
            "out of open files (%s, limit %d): new connections are reset by the kernel "
            "instead of answered TOO_MANY_CONNECTIONS; next report in %d s at the soonest",
            why,
            self.open_files,
            self._files_backoff,
            extra={"connections": len(self.connections), "cap": self.max_connections},
        )
        self._files_quiet_until = self.tick + math.ceil(
            self._files_backoff / self.config.sweep_interval
        )
        self._files_backoff = min(self._files_backoff * 2, 300)

    def _anonymous_allowed(self, conn: Connection) -> bool:
        """Whether a connection that ran a public handler may stay without a login: the
        app allows anonymous use, or the peer is this host's own (trust_loopback)."""
        config = self.config
        return config.anonymous or (config.trust_loopback and is_loopback(conn.peer_ip))

    def cache_for(self, msg_id: int) -> Store:
        """The store as the app that handles `msg_id` sees it: keys under ``app:<name>:``,
        so two apps never read each other's cache."""
        if self.store is None:
            raise RuntimeError("the server has not started: no store yet")
        route = self.routes.get(msg_id)
        name = route.app_name if route is not None else "system"
        cache = self._caches.get(name)
        if cache is None:
            cache = self._caches[name] = self.store.namespaced(f"app:{name}:")
        return cache

    # -- introspection ----------------------------------------------------------------

    def route_stats(self) -> dict[str, dict[str, int]]:
        return {r.name: {"calls": r.calls, "errors": r.errors} for r in self.routes.values()}


def raise_open_file_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard one (each connection is a descriptor) and
    return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_cap(max_connections: int, open_files: int) -> int:
    """The connections the server can hold: what the open-file limit fits (less
    FD_RESERVE) when `max_connections` is 0, else `max_connections` unless that limit
    fits fewer. Past what the process can open, a new client would get a bare reset from
    the kernel, never TOO_MANY_CONNECTIONS, and nothing would say why: so the cap comes
    down to what fits, and the start log says so when the config asked for more."""
    if open_files == resource.RLIM_INFINITY:
        return max_connections or DERIVED_CAP
    fits = max(1, open_files - FD_RESERVE)
    if not max_connections:
        return fits
    if max_connections <= fits:
        return max_connections
    log.warning(
        "max_connections is %d, but the open-file limit (%d, of which %d are kept for the "
        "server itself) fits %d: connections past %d get TOO_MANY_CONNECTIONS",
        max_connections,
        open_files,
        FD_RESERVE,
        fits,
        fits,
    )
    return fits


_PUSH = int(Flags.PUSH)


def server_ping() -> bytes:
    """A server heartbeat: Ping as a PUSH with seq 0, outside the push sequence like
    GoAway (docs/protocol.md, "Server heartbeats"); `client_time_ns` carries the
    server's clock, which the Pong copies back."""
    return encode_frame(PING_ID, _PUSH, 0, Ping(client_time_ns=time.time_ns()).SerializeToString())


def is_loopback(ip: str) -> bool:
    """Whether `ip` (as a transport's peername gives it) is this host's own."""
    return ip.startswith(("127.", "::ffff:127.")) or ip == "::1"
