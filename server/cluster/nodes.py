"""Discovery: which nodes are alive, where they listen, how loaded they are.

Each node writes ``tw:{nodes}:node:<id>`` (its NodeInfo, msgpack) with a TTL of
`ttl` seconds every `heartbeat` seconds, and keeps its id in the set ``tw:{nodes}:ids``;
each heartbeat also reads every id's record, so a node sees the others at the same pace
it announces itself. A node that stops heartbeating (kill -9) loses its record when the
TTL runs out, and at the next heartbeat of each other node it is gone from that node's
view (within `ttl + heartbeat`: 3 s by default) and its id is taken out of the set. A
node that stops cleanly deletes its record and says goodbye on the ``all`` channel, so
the others drop it at once.

The ``{nodes}`` hash tag puts every key of the directory in one Redis Cluster slot, so
the multi-key MGET works on a Redis Cluster as on one Redis.

While Redis is unreachable the view stays as it was (a node cannot tell a dead peer from
a dead Redis); the first heartbeat after the outage registers the node again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgspec

from server.cluster.bus import Bus
from server.cluster.errors import ClusterUnavailable
from server.cluster.resp import RedisAddress, close_connection, open_connection

log = logging.getLogger("tickwire.cluster")

IDS_KEY = "tw:{nodes}:ids"
NODE_KEY = "tw:{nodes}:node:"


class NodeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A node as the directory has it (what `tickwire nodes` lists)."""

    id: str
    #: Where clients reach it (the listening address).
    host: str = ""
    port: int = 0
    pid: int = 0
    started_ms: int = 0
    #: When this record was written (unix ms): how fresh the load figures are.
    heartbeat_ms: int = 0
    connections: int = 0
    sessions: int = 0
    #: Stopping: it takes no new owned keys and clients should go elsewhere.
    draining: bool = False


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(NodeInfo).decode

#: Called with (nodes that joined, nodes that left) whenever the view changes.
ViewListener = Callable[[set[str], set[str]], None]


def _parse(records: list[object]) -> list[NodeInfo]:
    nodes = []
    for raw in records:
        if isinstance(raw, bytes):
            try:
                nodes.append(_decode(raw))
            except msgspec.DecodeError:
                log.warning("cluster directory: a node record is not readable; skipped")
    return nodes


class Directory:
    """This node's registration and its view of the others (``server.cluster.nodes``)."""

    def __init__(
        self,
        bus: Bus,
        node_id: str,
        describe: Callable[[], NodeInfo],
        *,
        heartbeat: float = 1.0,
        ttl: float = 2.0,
    ) -> None:
        self.bus = bus
        self.node_id = node_id
        self.describe = describe
        self.heartbeat = heartbeat
        self.ttl = ttl
        #: The live nodes by id, this one included.
        self.view: dict[str, NodeInfo] = {}
        self.listeners: list[ViewListener] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.beats = 0

    @property
    def live(self) -> list[str]:
        """The live node ids, sorted."""
        return sorted(self.view)

    def alive(self, node_id: str) -> bool:
        return node_id in self.view

    async def start(self) -> None:
        """Register now (a start that cannot reach Redis fails), then heartbeat."""
        await self.beat()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="tickwire-cluster-heartbeat"
        )

    async def stop(self) -> None:
        """Stop heartbeating, delete this node's record and say goodbye."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(ClusterUnavailable):
            await asyncio.gather(
                self.bus.command("DEL", NODE_KEY + self.node_id),
                self.bus.command("SREM", IDS_KEY, self.node_id),
                self.bus.publish("all", "bye", self.node_id.encode()),
            )

    def beat_soon(self) -> None:
        """Heartbeat now rather than at the next interval (the load or draining changed,
        or Redis came back)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.beat()
            except ClusterUnavailable:
                pass  # the bus reports the outage; the view stays
            except Exception:
                log.exception("cluster heartbeat failed")

    async def beat(self) -> None:
        """Write this node's record, then read everyone's."""
        bus = self.bus
        info = self.describe()
        _, _, ids = await asyncio.gather(
            bus.command("SET", NODE_KEY + self.node_id, _encode(info), "PX", int(self.ttl * 1000)),
            bus.command("SADD", IDS_KEY, self.node_id),
            bus.command("SMEMBERS", IDS_KEY),
        )
        names = sorted(raw.decode() for raw in ids) if isinstance(ids, list) else []
        records = await bus.command("MGET", *(NODE_KEY + name for name in names))
        found = {info.id: info for info in _parse(records if isinstance(records, list) else [])}
        gone = [name for name in names if name not in found]
        if gone:
            bus.command("SREM", IDS_KEY, *gone).add_done_callback(_ignore)
        self.beats += 1
        self._set_view(found)

    def forget(self, node_id: str) -> None:
        """A node said goodbye: out of the view now, not at the next heartbeat."""
        if node_id != self.node_id and node_id in self.view:
            view = dict(self.view)
            del view[node_id]
            self._set_view(view)

    def _set_view(self, view: dict[str, NodeInfo]) -> None:
        if self.node_id not in view:
            view[self.node_id] = self.describe()
        joined = set(view) - set(self.view)
        left = set(self.view) - set(view)
        self.view = view
        if joined or left:
            log.info(
                "cluster: %d nodes%s%s",
                len(view),
                f"; joined {', '.join(sorted(joined))}" if joined else "",
                f"; left {', '.join(sorted(left))}" if left else "",
            )
            for listener in self.listeners:
                try:
                    listener(joined, left)
                except Exception:
                    log.exception("cluster view listener %r raised", listener)


def _ignore(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()


async def read_nodes(url: str) -> list[NodeInfo]:
    """The live nodes of the cluster at `url`, sorted by id (`tickwire nodes`)."""
    address = RedisAddress.parse(url)
    conn = await open_connection(address)
    try:
        ids = await conn.command("SMEMBERS", IDS_KEY)
        names = sorted(raw.decode() for raw in ids) if isinstance(ids, list) else []
        if not names:
            return []
        records = await conn.command("MGET", *(NODE_KEY + name for name in names))
        nodes = _parse(records if isinstance(records, list) else [])
    finally:
        await close_connection(conn)
    return sorted(nodes, key=lambda info: info.id)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
