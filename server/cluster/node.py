"""A node of a cluster (``server.cluster``): its bus, its directory, who owns a key, and
requests from node to node.

Every message between nodes is one msgpack array ``[kind, origin node, body]``. On a
node's own channel (``n:<node>``) the kinds are ``req`` (``[call id, method, body]``),
``rep`` (``[call id, code, body or error text]``: code 0 is an answer) and whatever the
features register with :meth:`Cluster.on_node` (a kick, a handover). A request is
answered by the coroutine served under its method name (:meth:`Cluster.serve`).

A request to a node that is not in the view, or whose PUBLISH reached nobody (it died
since the last heartbeat), fails at once with NodeGone; one whose node leaves the view
while it waits fails then; one with no answer in time fails with CallTimeout. At most
`max_inbound` requests from other nodes run here at once; past that they are answered
OVERLOADED rather than queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from protocol.errors import CLOSING_CODES, ErrorCode
from server.cluster import ring
from server.cluster.bus import Bus, Malformed, envelope, fields
from server.cluster.errors import CallTimeout, ClusterError, NodeGone, RemoteError
from server.cluster.nodes import Directory, NodeInfo
from server.cluster.resp import RedisAddress
from server.errors import HandlerError

log = logging.getLogger("tickwire.cluster")

_encode = msgspec.msgpack.Encoder().encode

#: A served method: (origin node, body) -> the answer's body.
Method = Callable[[str, Any], Awaitable[Any]]
#: A node-channel message handler: (origin node, body).
NodeHandler = Callable[[str, Any], None]

#: Requests from other nodes running here at once, past which they get OVERLOADED.
MAX_INBOUND = 10_000


class Cluster:
    """This node's membership of the cluster at `url`."""

    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        heartbeat: float = 1.0,
        ttl: float = 2.0,
        call_timeout: float = 5.0,
        max_inbound: int = MAX_INBOUND,
    ) -> None:
        self.address = RedisAddress.parse(url)
        self.node_id = node_id
        self.call_timeout = call_timeout
        self.max_inbound = max_inbound
        self.bus = Bus(self.address)
        self.started_ms = time.time_ns() // 1_000_000
        #: Filled in by the server at start: what this node's record says.
        self.describe: Callable[[], NodeInfo] = lambda: NodeInfo(id=self.node_id)
        self.nodes = Directory(
            self.bus, node_id, lambda: self.describe(), heartbeat=heartbeat, ttl=ttl
        )
        self.draining = False
        self._methods: dict[str, Method] = {}
        self._node_handlers: dict[str, NodeHandler] = {}
        self._all_handlers: dict[str, Callable[[bytes], None]] = {"bye": self._bye}
        self._calls: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._ids = itertools.count(1)
        self._inbound: set[asyncio.Task[None]] = set()
        self.bus.handlers["n"] = self._on_node_channel
        self.bus.handlers["all"] = self._on_all_channel
        self.bus.on_up.append(self.nodes.beat_soon)
        self.nodes.listeners.append(self._view_changed)
        # Plain counters for /metrics.
        self.calls = 0
        self.calls_failed = 0
        self.served = 0
        self.shed = 0

    # -- lifecycle --------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and subscribe this node's channels (before the server accepts anyone:
        a login subscribes its user's channel). ClusterUnavailable when the cluster's
        Redis cannot be reached: the node does not start."""
        await self.bus.start()
        try:
            await self.bus.subscribe("n", self.node_id)
            for name in self._all_handlers:
                await self.bus.subscribe("all", name)
        except BaseException:
            await self.bus.stop()
            raise

    async def register(self) -> None:
        """Join the directory (once the server listens: the record says where)."""
        await self.nodes.start()

    def drain(self) -> None:
        """This node is stopping: it says so at once (owned keys move off it)."""
        self.draining = True
        self.nodes.beat_soon()

    async def stop(self) -> None:
        await self.nodes.stop()
        for task in list(self._inbound):
            task.cancel()
        await asyncio.gather(*self._inbound, return_exceptions=True)
        for node, future in list(self._calls.values()):
            if not future.done():
                future.set_exception(NodeGone(node))
        await self.bus.stop()

    @property
    def up(self) -> bool:
        return self.bus.up

    # -- who owns what -----------------------------------------------------------------

    @property
    def live(self) -> list[str]:
        return self.nodes.live

    def owner(self, key: str) -> str:
        """The live node that owns `key` (draining nodes own nothing while any other
        node is up)."""
        view = self.nodes.view
        candidates = [node for node, info in view.items() if not info.draining]
        if self.draining and self.node_id in candidates:
            candidates.remove(self.node_id)
        found = ring.owner(key, candidates or list(view))
        return found if found is not None else self.node_id

    # -- messages ---------------------------------------------------------------------------

    def on_node(self, kind: str, handler: NodeHandler) -> None:
        """Handle `kind` messages sent to this node with :meth:`send`."""
        self._node_handlers[kind] = handler

    def on_all(self, name: str, handler: Callable[[bytes], None]) -> None:
        """Handle what :meth:`publish_all` sends under `name` (before start)."""
        self._all_handlers[name] = handler

    def send(self, node: str, kind: str, body: Any) -> asyncio.Future[object]:
        """Send a `kind` message to `node` (its future: how many received it, 0 or 1)."""
        return self.bus.publish("n", node, _encode([kind, self.node_id, body]))

    def publish_all(self, name: str, data: bytes) -> asyncio.Future[object]:
        return self.bus.publish("all", name, data)

    def _on_node_channel(self, name: str, data: bytes) -> None:
        kind, origin, body = envelope(data)
        if kind == "rep":
            call_id, code, answer = fields(body, int, int, object)
            entry = self._calls.get(call_id)
            if entry is None or entry[1].done():
                return  # it timed out
            if code:
                entry[1].set_exception(_remote_error(code, answer))
            else:
                entry[1].set_result(answer)
        elif kind == "req":
            self._serve_request(origin, body)
        else:
            handler = self._node_handlers.get(kind)
            if handler is None:
                raise Malformed(f"message of unknown kind {kind!r} from {origin}")
            handler(origin, body)

    def _on_all_channel(self, name: str, data: bytes) -> None:
        handler = self._all_handlers.get(name)
        if handler is not None:
            handler(data)

    def _bye(self, data: bytes) -> None:
        self.nodes.forget(data.decode(errors="replace"))  # a name not in the view: no-op

    def _view_changed(self, joined: set[str], left: set[str]) -> None:
        if left:
            for node, future in list(self._calls.values()):
                if node in left and not future.done():
                    future.set_exception(NodeGone(node))

    # -- requests ------------------------------------------------------------------------

    def serve(self, method: str, handler: Method) -> None:
        """Answer requests for `method` with ``await handler(origin, body)``; a
        HandlerError it raises is the caller's error (its code and text)."""
        self._methods[method] = handler

    async def request(
        self, node: str, method: str, body: Any, *, timeout: float | None = None
    ) -> Any:
        """Ask `node` to run `method` with `body` and return its answer. NodeGone,
        CallTimeout, RemoteError (its handler's error), ClusterUnavailable."""
        self.calls += 1
        timeout = self.call_timeout if timeout is None else timeout
        try:
            if node == self.node_id:
                handler = self._methods.get(method)
                if handler is None:
                    raise RemoteError(ErrorCode.INTERNAL, f"no method {method!r} on {node}")
                async with asyncio.timeout(timeout):
                    return await handler(self.node_id, body)
            if not self.nodes.alive(node):
                raise NodeGone(node)
            call_id = next(self._ids)
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._calls[call_id] = (node, future)
            try:
                async with asyncio.timeout(timeout):
                    received = await self.send(node, "req", [call_id, method, body])
                    if not received:
                        raise NodeGone(node)
                    return await future
            finally:
                del self._calls[call_id]
        except TimeoutError:
            self.calls_failed += 1
            raise CallTimeout(node, timeout) from None
        except ClusterError:
            self.calls_failed += 1
            raise

    def _serve_request(self, origin: str, body: Any) -> None:
        # Checked here: past this point a bad field would fail in a task, not the bus.
        call_id, method, payload = fields(body, int, str, object)
        if len(self._inbound) >= self.max_inbound:
            self.shed += 1
            self._answer(origin, call_id, int(ErrorCode.OVERLOADED), f"node {self.node_id} is busy")
            return
        task = asyncio.get_running_loop().create_task(
            self._run_request(origin, call_id, method, payload)
        )
        self._inbound.add(task)
        task.add_done_callback(self._inbound.discard)

    async def _run_request(self, origin: str, call_id: int, method: str, payload: Any) -> None:
        handler = self._methods.get(method)
        self.served += 1
        if handler is None:
            self._answer(origin, call_id, int(ErrorCode.INTERNAL), f"no method {method!r}")
            return
        try:
            answer = await handler(origin, payload)
        except HandlerError as exc:
            self._answer(origin, call_id, int(exc.code), exc.message)
        except Exception:
            log.exception("cluster: %s from %s failed", method, origin)
            self._answer(
                origin, call_id, int(ErrorCode.INTERNAL), f"{method} failed on {self.node_id}"
            )
        else:
            self._answer(origin, call_id, 0, answer)

    def _answer(self, origin: str, call_id: int, code: int, body: Any) -> None:
        with contextlib.suppress(ClusterError):
            self.send(origin, "rep", [call_id, code, body]).add_done_callback(_ignore)


def _remote_error(code: int, text: Any) -> RemoteError:
    try:
        known = ErrorCode(code)
    except ValueError:
        known = None
    if known is not None and known in CLOSING_CODES:
        known = ErrorCode.INTERNAL  # closing a connection is the local server's call
    return RemoteError(int(known) if known is not None else code, str(text))


def _ignore(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()
