"""Owned keys and node-to-node calls (docs/scaling.md, "Owned keys and node-to-node
calls").

A handler declared with an owner key, ``@app.handler(pb.NewOrder, owner=lambda m:
m.symbol)``, runs on the one live node that owns the key (rendezvous hashing over the
live, non-draining nodes: server/cluster/ring.py). A request that arrives elsewhere is
forwarded over the bus (one ``req`` to the owner, one ``rep`` back), and its reply or
error is written on the client's own connection. The client's connection awaits the
forward like any awaited handler, so the frames behind it wait: the reply comes back in
the client's order.

On the owner, the handler sees a :class:`RemoteContext`: `ctx.session` carries the
caller's user and session ids (the session itself lives on the client's node), and
`ctx.push` pushes to the user wherever they are.

Each node keeps the set of keys it owns and has served (or that an app declared with
``app.own_keys``). When the view changes, keys whose owner is now another node are
released (``app.on_key_released(fn(server, key, new_owner))``: hand off or drop state),
and declared keys this node now owns are acquired (``app.on_key_acquired(fn(server,
key))``: load state); a key is also acquired the first time this node serves it.

``server.call(node or key, msg)`` runs the handler of `msg`'s type on a node by id, or
on the owner of a key, and returns its reply: the same request, without a client.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from protocol.errors import ErrorCode
from server.app import Context, Route
from server.cluster.errors import RemoteError

if TYPE_CHECKING:
    from server.server import Server

log = logging.getLogger("tickwire.cluster")

#: The most keys one node remembers owning (each an acquire hook's state in the app);
#: past it, the oldest are released as if they had moved.
MAX_OWNED_KEYS = 1_000_000


class RemoteSession:
    """Who sent a forwarded request: the caller's user and session, which live on the
    node the client is connected to."""

    __slots__ = ("node", "session_id", "user_id")

    def __init__(self, user_id: str, session_id: str, node: str) -> None:
        self.user_id = user_id
        self.session_id = session_id
        self.node = node

    def __repr__(self) -> str:
        return f"<RemoteSession {self.session_id} user={self.user_id!r} on {self.node}>"


class RemoteCaller:
    """What a RemoteContext has in place of a connection."""

    __slots__ = ("id", "peer", "server", "session")

    def __init__(self, server: Server, session: RemoteSession | None, origin: str) -> None:
        self.server = server
        self.session = session
        self.peer = ("node", origin)
        self.id = 0


class RemoteContext(Context):
    """A handler's context on the owner of a forwarded request (or of a server.call)."""

    __slots__ = ()

    def push(self, message: Message) -> None:
        session = self.conn.session
        if session is None:
            raise RuntimeError("ctx.push needs a caller's session; server.call has none")
        self.conn.server.push(session.user_id, message)


class OwnedKeys:
    """Forwarding, calls and the owned-key hooks of one node (``server.owned``)."""

    def __init__(self, server: Server, *, max_keys: int = MAX_OWNED_KEYS) -> None:
        self.server = server
        #: Keys this node owns and has served or declared, in the order acquired.
        self.keys: dict[str, None] = {}
        #: The most keys remembered; past it the oldest is released to make room.
        self.max_keys = max_keys
        #: Keys released to make room (each still owned here: the next request for it
        #: acquires it again).
        self.evicted = 0
        self.forwarded = 0
        self.served_here = 0
        cluster = server.cluster
        if cluster is not None:
            cluster.serve("owned", self._serve_owned)
            cluster.serve("call", self._serve_call)
            cluster.nodes.listeners.append(self._view_changed)

    # -- the route's innermost call ------------------------------------------------------

    def wrap(self, route: Route, inner: Callable[[Context, Any], Any]) -> Callable[..., Any]:
        """The innermost call of an owned route: run here when this node owns the key,
        else forward to the owner."""
        key_of = route.owner
        assert key_of is not None
        server = self.server

        async def owned(ctx: Context, msg: Message) -> Message | None:
            key = str(key_of(msg))
            cluster = server.cluster
            node = cluster.owner(key) if cluster is not None else server.node_id
            if node == server.node_id:
                self.served_here += 1
                self.acquire(key)
                reply: Message | None = await _run(inner, ctx, msg)
                return reply
            self.forwarded += 1
            session = ctx.session
            assert cluster is not None
            answer = await cluster.request(
                node,
                "owned",
                [
                    route.msg_id,
                    msg.SerializeToString(),
                    session.user_id if session is not None else "",
                    session.session_id if session is not None else "",
                    ctx.seq,
                ],
            )
            return self._reply(answer)

        return owned

    def _reply(self, answer: Any) -> Message | None:
        if answer is None:
            return None
        msg_id, payload = answer
        return self.server.registry.decode(msg_id, payload)

    async def _serve_owned(self, origin: str, body: Any) -> Any:
        msg_id, payload, user_id, session_id, seq = body
        server = self.server
        route = server.routes.get(msg_id)
        if route is None or route.owner is None:
            raise RemoteError(ErrorCode.UNKNOWN_MESSAGE, f"no owned handler for {msg_id}")
        msg = route.parse(payload)
        key = str(route.owner(msg))
        cluster = server.cluster
        if cluster is not None and cluster.owner(key) != server.node_id:
            # The views disagree for a heartbeat (a node just joined or left): serving it
            # here anyway keeps the request alive; the next one goes to the new owner.
            log.debug("serving %s for key %r that this node no longer owns", route.name, key)
        self.acquire(key)
        session = RemoteSession(user_id, session_id, origin) if user_id else None
        return await self._run_remote(route, msg, session, origin, seq)

    async def _serve_call(self, origin: str, body: Any) -> Any:
        msg_id, payload = body
        route = self.server.routes.get(msg_id)
        if route is None:
            raise RemoteError(ErrorCode.UNKNOWN_MESSAGE, f"no handler for message {msg_id}")
        return await self._run_remote(route, route.parse(payload), None, origin, 0)

    async def _run_remote(
        self, route: Route, msg: Message, session: RemoteSession | None, origin: str, seq: int
    ) -> Any:
        server = self.server
        caller = RemoteCaller(server, session, origin)
        ctx = RemoteContext(caller, route.msg_id, 0, seq)  # type: ignore[arg-type]
        inner = server._innermost(route)
        reply = await _run(inner, ctx, msg)
        if reply is None:
            return None
        msg_id, data = server.registry.encode(reply)
        return [msg_id, data]

    # -- calls ---------------------------------------------------------------------------

    async def call(
        self, target: str, message: Message, *, timeout: float | None = None
    ) -> Message | None:
        server = self.server
        msg_id = server.message_id(type(message))
        if msg_id is None or msg_id not in server.routes:
            raise ValueError(f"{type(message).__qualname__} has no handler on this server")
        cluster = server.cluster
        if cluster is None:
            node = server.node_id
        else:
            node = target if target in cluster.nodes.view else cluster.owner(target)
        if cluster is None or node == server.node_id:
            route = server.routes[msg_id]
            async with asyncio.timeout(timeout or server.config.cluster_call_timeout):
                answer = await self._run_remote(route, message, None, server.node_id, 0)
        else:
            answer = await cluster.request(
                node, "call", [msg_id, message.SerializeToString()], timeout=timeout
            )
        return self._reply(answer)

    # -- keys moving ---------------------------------------------------------------------

    def acquire(self, key: str) -> None:
        keys = self.keys
        if key in keys:
            return
        keys[key] = None
        while len(keys) > self.max_keys:
            oldest = next(iter(keys))
            del keys[oldest]
            self.evicted += 1
            self._fire_released(oldest, self.server.node_id)
        for app in self.server.apps:
            for hook in app.key_acquired:
                _fire(hook, self.server, key)

    def _fire_released(self, key: str, new_owner: str) -> None:
        for app in self.server.apps:
            for hook in app.key_released:
                _fire(hook, self.server, key, new_owner)

    def _view_changed(self, joined: set[str], left: set[str]) -> None:
        self.rebalance()

    def rebalance(self) -> None:
        """Release the keys that moved away, acquire the declared ones that moved here."""
        server = self.server
        cluster = server.cluster
        if cluster is None:
            return
        for key in list(self.keys):
            new_owner = cluster.owner(key)
            if new_owner != server.node_id:
                del self.keys[key]
                self._fire_released(key, new_owner)
        for app in server.apps:
            for declared in app.declared_keys:
                try:
                    names = [str(name) for name in declared()]
                except Exception:
                    log.exception("own_keys function %r raised", declared)
                    continue
                for name in names:
                    if cluster.owner(name) == server.node_id:
                        self.acquire(name)


async def _run(inner: Callable[[Context, Any], Any], ctx: Context, msg: Message) -> Any:
    result = inner(ctx, msg)
    if inspect.isawaitable(result):
        result = await result
    return result


def _fire(hook: Callable[..., Awaitable[None] | None], *args: Any) -> None:
    try:
        result = hook(*args)
    except Exception:
        log.exception("owned-key hook %r raised", hook)
        return
    if inspect.isawaitable(result):

        async def run() -> None:
            try:
                await result
            except Exception:
                log.exception("owned-key hook %r raised", hook)

        task = asyncio.get_running_loop().create_task(run())
        _hook_tasks.add(task)
        task.add_done_callback(_hook_tasks.discard)


#: Async hooks running: referenced until done, so none is collected half-way.
_hook_tasks: set[asyncio.Task[None]] = set()
