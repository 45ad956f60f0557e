"""The Server: builds the registry and handler chains from its apps, listens, and stops.

As in uvicorn, `ServerConfig` is apart from `Server`, and `Server.start` can take a socket
it is handed (what a hot restart needs) instead of binding one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import resource
import signal
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from google.protobuf.message import Message

from protocol.errors import ErrorCode
from protocol.registry import system_registry
from server.app import App, Context, Kind, Route, all_routes
from server.config import ServerConfig
from server.connection import CloseReason, Connection
from server.dispatch import Dispatcher
from server.middleware import Counters, Deadline, ErrorRecovery, Middleware, compose
from server.stats import Stats
from server.system_handlers import system_app

log = logging.getLogger("tickwire.server")


class Server:
    def __init__(
        self,
        *apps: App,
        config: ServerConfig | None = None,
        middleware: list[Middleware] | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        self.apps = [system_app(), *apps]
        self.registry = system_registry()
        for app in self.apps:
            app.register_messages(self.registry)
        self.routes: dict[int, Route] = {}
        for route in all_routes(self.apps):
            route.msg_id = self.registry.id_of(route.request)
            self.routes[route.msg_id] = route
        self.describe_reply = self.registry.describe()
        #: Outermost first; app layers go inside these, the deadline innermost.
        self.middleware: list[Middleware] = (
            middleware if middleware is not None else [ErrorRecovery(), Counters()]
        )
        self.stats = Stats()
        id_by_class = self.registry._id_by_class
        self.dispatcher = Dispatcher(
            self.routes,
            id_by_class.get,
            self.stats,
            consumers=self.config.consumers,
            mailbox_limit=self.config.mailbox_limit,
            max_pending=self.config.max_pending,
        )
        self.connections: set[Connection] = set()
        #: Advanced by the sweep; connections stamp it when they receive (idle timeout).
        self.tick = 0
        #: Transport buffer size above which the transport asks us to stop writing.
        self.write_high_water = min(1 << 20, self.config.slow_consumer_bytes // 2)
        self.executor: ThreadPoolExecutor | None = None
        self._listeners: list[asyncio.Server] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self.accepting = False

    # -- building chains --------------------------------------------------------------

    def _build_chains(self) -> None:
        for app in self.apps:
            layers = [*self.middleware, *app.middleware, Deadline(self.config.handler_timeout)]
            for route in app.routes.values():
                route.call = compose(route, layers, self._innermost(route))

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
        loop = asyncio.get_running_loop()
        raise_open_file_limit()
        self.executor = ThreadPoolExecutor(
            self.config.blocking_threads, thread_name_prefix="tickwire-blocking"
        )
        self._build_chains()
        self.dispatcher.start(loop)
        if sock is not None:
            listener = await loop.create_server(
                lambda: Connection(self), sock=sock, backlog=self.config.backlog
            )
        else:
            listener = await loop.create_server(
                lambda: Connection(self),
                self.config.host,
                self.config.port,
                backlog=self.config.backlog,
                reuse_address=True,
            )
        self._listeners.append(listener)
        self.accepting = True
        self._sweeper = loop.create_task(self._sweep(), name="tickwire-sweep")

    @property
    def address(self) -> tuple[str, int]:
        """The first bound (host, port): with port 0 in the config, the one the OS chose."""
        sockname = self._listeners[0].sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def serve_forever(self) -> None:
        await self._stopped.wait()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let queued frames and awaited handlers finish (bounded by
        `timeout`), tell every connection GoAway SERVER_SHUTDOWN, and close.
        """
        if self._stopped.is_set():
            return
        self.accepting = False
        for listener in self._listeners:
            listener.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.dispatcher.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.close_with(ErrorCode.SERVER_SHUTDOWN, "server is shutting down", goaway=True)
        for listener in self._listeners:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(listener.wait_closed(), max(0.1, deadline - loop.time()))
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.dispatcher.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()

    # -- connections --------------------------------------------------------------------

    def attach(self, conn: Connection) -> None:
        self.stats.connections_opened += 1
        if len(self.connections) >= self.config.max_connections:
            conn.close_with(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"server is at its limit of {self.config.max_connections} connections",
            )
            self.stats.connections_closed += 1
            self.stats.close_reasons[CloseReason.TOO_MANY_CONNECTIONS] += 1
            return
        self.connections.add(conn)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("open %s", conn.peer)

    def detach(self, conn: Connection) -> None:
        if conn not in self.connections:
            return  # refused at attach, already counted
        self.connections.discard(conn)
        self.stats.connections_closed += 1
        reason = conn.close_reason or CloseReason.CONNECTION_LOST
        self.stats.close_reasons[reason] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("close %s reason=%s", conn.peer, reason)

    async def _sweep(self) -> None:
        """One timer for every connection's idle timeout, instead of a call_later each."""
        interval = self.config.sweep_interval
        idle_ticks = (
            math.ceil(self.config.idle_timeout / interval) if self.config.idle_timeout else 0
        )
        while True:
            await asyncio.sleep(interval)
            self.tick += 1
            if not idle_ticks:
                continue
            limit = self.tick - idle_ticks
            for conn in [c for c in self.connections if c.rx_tick <= limit]:
                conn.close_with(
                    ErrorCode.IDLE_TIMEOUT,
                    f"nothing received for {self.config.idle_timeout:g} s",
                )

    # -- introspection ----------------------------------------------------------------

    def route_stats(self) -> dict[str, dict[str, int]]:
        return {r.name: {"calls": r.calls, "errors": r.errors} for r in self.routes.values()}


def raise_open_file_limit() -> None:
    """Lift the soft RLIMIT_NOFILE to the hard one: each connection is a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(
    *apps: App,
    config: ServerConfig | None = None,
    on_started: Callable[[Server], Awaitable[None] | None] | None = None,
) -> int:
    """Run a server in the foreground on uvloop until SIGINT or SIGTERM; returns the exit code."""
    import uvloop

    config = config or ServerConfig()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        server = Server(*apps, config=config)
        await server.start()
        host, port = server.address
        log.info("tickwire listening on %s:%d", host, port)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if on_started is not None:
            result = on_started(server)
            if result is not None:
                await result
        await stop.wait()
        log.info("stopping: %d connections", len(server.connections))
        await server.stop()
        log.info("stopped")
        return 0

    return uvloop.run(main())
