"""Rooms that span the nodes of a cluster (``server.pusher.cluster_rooms``).

A room's local members stay in the pusher (server/push.py): a broadcast reaches them
with no Redis at all. What crosses nodes:

- **Membership** in the hash ``tw:room:{<name>}``: field session id, value msgpack
  ``[user id, node id]``. A join writes its field (fire and forget: a join is sync and
  must not wait for Redis); a leave removes it only while it still names this node, as a
  session resumed on another node joins there and its field names that node.
- **Broadcasts** on the channel ``r:<name>``, which each node with a local member
  subscribes (once, however many members): one PUBLISH of
  ``["room", origin, [msg_id, payload, exclude, latest]]`` per broadcast, which Redis
  hands once to each such node; the origin skips its own (its members had it already).
- **Everyone**: ``all:everyone`` carries ``["everyone", origin, [msg_id, payload, latest]]``.

`exclude` is None, ``["s", session id]`` or ``["u", user id]``; `latest` says the push
is latest-value, whose key each receiving node computes from the decoded message, as for
pushes to users (server/cluster/users.py). A message on these channels that is not such
an envelope is dropped and counted by the bus (``bus.malformed``).

The hash has no TTL: the fields of a node that died without leaving are dropped from the
answers of :meth:`ClusterRooms.members` (their node is not in the directory's view) and
removed from Redis as they are found (once the node's record is gone too). Broadcasts do
not read the hash: they follow the channel subscriptions, so a stale or missing field
only skews the cluster-wide answers. While Redis is unreachable local members still get
every broadcast; the remote part is counted in `failures`, not raised, and the bus
writes this node's memberships again when it is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from server.cluster.bus import Malformed, envelope, fields
from server.cluster.errors import ClusterError
from server.cluster.nodes import NODE_KEY
from server.cluster.users import deliver

if TYPE_CHECKING:
    from protocol.registry import MessageRegistry
    from server.cluster.node import Cluster
    from server.push import Pusher
    from server.sessions import Session

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode

#: Remove a member's field only while it names the given node (KEYS[1] the room's hash,
#: ARGV[1] the session id, ARGV[2] the node): a session resumed elsewhere re-joined there.
_REMOVE_IF_NODE = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and cmsgpack.unpack(v)[2] == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

#: An exclusion on the wire: ["s", session id], ["u", user id] or None.
Exclude = list[str] | None


def room_key(name: str) -> str:
    return f"tw:room:{{{name}}}"


#: The body of an ``everyone`` message: [msg_id, payload, latest].
EVERYONE_FIELDS = (int, bytes, bool)


def room_body(body: Any) -> tuple[int, bytes, Exclude, bool]:
    """A ``room`` message's body, ``[msg_id, payload, exclude, latest]``, checked;
    Malformed otherwise (this node's handler and a handover read it alike)."""
    msg_id, payload, exclude, latest = fields(body, int, bytes, object, bool)
    if exclude is not None:
        what, _ = fields(exclude, str, str)
        if what not in ("s", "u"):
            raise Malformed(f"exclusion {exclude!r:.100}")
    return msg_id, payload, exclude, latest


class ClusterRooms:
    """The cross-node part of this node's rooms."""

    def __init__(
        self, cluster: Cluster, pusher: Pusher, registry: Callable[[], MessageRegistry]
    ) -> None:
        self.cluster = cluster
        self.pusher = pusher
        #: The registry in use (it follows a handler reload): decodes latest values.
        self.registry = registry
        self.node_id = cluster.node_id
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        cluster.bus.handlers["r"] = self._on_room
        cluster.on_all("everyone", self._on_everyone)
        cluster.bus.on_up.append(self._rejoin_all)
        # Plain counters for /metrics.
        self.published = 0
        self.received = 0
        self.failures = 0
        self.pruned = 0

    # -- membership ---------------------------------------------------------------------

    def joined(self, name: str, session: Session, first: bool) -> None:
        """`session` joined `name` here (`first`: the room's first local member)."""
        self._write(name, session)
        if first:
            task = asyncio.get_running_loop().create_task(self._subscribe(name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def left(self, name: str, session: Session, last: bool) -> None:
        """`session` left `name` here (`last`: no local member is left)."""
        self._fire("EVAL", _REMOVE_IF_NODE, 1, room_key(name), session.session_id, self.node_id)
        if last:
            # After a subscribe task the join may just have made (tasks start in order):
            # its count goes up before this takes it down.
            asyncio.get_running_loop().call_soon(self.cluster.bus.unsubscribe, "r", name)

    async def settled(self) -> None:
        """Return once the room channels this node's joins asked for are subscribed (or
        failed): a join returns before Redis confirmed its channel, so a broadcast from
        another node in between does not reach the joined member."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _write(self, name: str, session: Session) -> None:
        value = _encode([session.user_id, self.node_id])
        self._fire("HSET", room_key(name), session.session_id, value)

    async def _subscribe(self, name: str) -> None:
        try:
            await self.cluster.bus.subscribe("r", name)
        except ClusterError:
            self.failures += 1  # counted by the bus: its reconnect subscribes it

    def _rejoin_all(self) -> None:
        """Redis is back: write this node's memberships again (what was written during
        the outage was lost; a Redis that restarted empty lost everything)."""
        task = asyncio.get_running_loop().create_task(self._rejoin())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _rejoin(self) -> None:
        # This node's record first: another node prunes a member only while the record
        # of the member's node is missing, which it is in a Redis that restarted empty.
        try:
            await self.cluster.nodes.beat()
        except ClusterError:
            self.failures += 1
            return  # down again: the next reconnect calls this again
        for name, members in self.pusher.room_members.items():
            for session in members.values():
                self._write(name, session)

    def _fire(self, *args: bytes | str | int) -> None:
        try:
            future = self.cluster.bus.command(*args)
        except ClusterError:
            self.failures += 1
            return
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[object]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.failures += 1

    async def members(self, name: str) -> dict[str, tuple[str, str]]:
        """Every member of `name` in the cluster: session id -> (user id, node id).
        Members of nodes gone from the view are left out and removed from Redis.
        ClusterUnavailable while Redis is unreachable."""
        raw = await self.cluster.bus.command("HGETALL", room_key(name))
        assert isinstance(raw, list)
        view = self.cluster.nodes.view
        found: dict[str, tuple[str, str]] = {}
        gone: set[str] = set()
        stale: list[tuple[str, str]] = []
        for i in range(0, len(raw), 2):
            sid = raw[i].decode()
            user_id, node = _decode(raw[i + 1])
            if node in view or node == self.node_id:
                found[sid] = (user_id, node)
            else:
                gone.add(node)
                stale.append((sid, node))
        if stale:
            # A node can be missing from this view and alive (the view is a heartbeat
            # old; after a Redis restart each node's record is back only once it beat):
            # its members are left out of the answer, but removed only if its record is
            # gone too.
            dead = [
                node
                for node in sorted(gone)
                if not await self.cluster.bus.command("EXISTS", NODE_KEY + node)
            ]
            for sid, node in stale:
                if node in dead:
                    self.pruned += 1
                    self._fire("EVAL", _REMOVE_IF_NODE, 1, room_key(name), sid, node)
        return found

    # -- broadcasts ------------------------------------------------------------------------

    def publish(
        self, name: str, msg_id: int, payload: bytes, exclude: Exclude, latest: bool
    ) -> None:
        """One PUBLISH of a broadcast for the other nodes' members of `name`."""
        try:
            data = _encode(["room", self.node_id, [msg_id, payload, exclude, latest]])
            self.cluster.bus.publish("r", name, data).add_done_callback(self._done)
        except ClusterError:
            self.failures += 1
            return
        self.published += 1

    def publish_everyone(self, msg_id: int, payload: bytes, latest: bool) -> None:
        try:
            data = _encode(["everyone", self.node_id, [msg_id, payload, latest]])
            self.cluster.publish_all("everyone", data).add_done_callback(self._done)
        except ClusterError:
            self.failures += 1
            return
        self.published += 1

    def _on_room(self, name: str, data: bytes) -> None:
        kind, origin, body = envelope(data)
        msg_id, payload, exclude, latest = room_body(body)
        if kind != "room":
            raise Malformed(f"a {kind!r} message on a room channel")
        if origin == self.node_id:
            return
        self.received += 1
        found = self.pusher.room_members.get(name)
        if not found:
            return
        members: Iterable[Session] = found.values()
        if exclude is not None:
            what, value = exclude
            if what == "u":
                members = [s for s in members if s.user_id != value]
            else:
                members = [s for s in members if s.session_id != value]
        deliver(self.pusher, self.registry(), members, msg_id, payload, latest)

    def _on_everyone(self, data: bytes) -> None:
        kind, origin, body = envelope(data)
        msg_id, payload, latest = fields(body, *EVERYONE_FIELDS)
        if kind != "everyone":
            raise Malformed(f"a {kind!r} message on all:everyone")
        if origin == self.node_id:
            return
        self.received += 1
        sessions = self.pusher.sessions.all_sessions()
        deliver(self.pusher, self.registry(), sessions, msg_id, payload, latest)
