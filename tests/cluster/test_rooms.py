"""Rooms across the nodes of a cluster, on a real redis-server with real clients: a
broadcast reaches the members on every node once, membership is the cluster's (joins,
leaves, logouts, dead nodes pruned), and a Redis outage leaves local members served."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import msgspec

from client_sdk import AsyncClient
from client_sdk.client import Push
from examples.chat import chat_pb2
from examples.chat.chat_pb2 import JoinReply, JoinRequest, LeaveRequest, Line, SayRequest
from examples.chat.service import make_app
from protocol.registry import system_registry
from server.auth import MemoryUsers
from server.cluster.rooms import room_key
from server.server import Server
from tests.conftest import StartNode, wait_for
from tests.store.redisproc import RedisProcess

USERS = MemoryUsers({name: "pw" for name in ("alice", "bob", "carol", "dave")})


class Member:
    """A logged-in client and the Lines pushed to it."""

    def __init__(self, client: AsyncClient, user: str, node: Server) -> None:
        self.client = client
        self.user = user
        self.node = node
        self.lines: list[str] = []
        self.seqs: list[int] = []
        client.on_push(Line, self._line)

    def _line(self, push: Push) -> None:
        assert isinstance(push.message, Line)
        self.lines.append(push.message.text)
        self.seqs.append(push.seq)

    async def join(self, room: str) -> None:
        assert isinstance(await self.client.request(JoinRequest(room=room)), JoinReply)

    def session(self) -> object:
        [session] = self.node.sessions.local_sessions(self.user)
        return session


@asynccontextmanager
async def members(placement: list[tuple[str, Server]]) -> AsyncIterator[list[Member]]:
    async with AsyncExitStack() as stack:
        found = []
        for user, node in placement:
            client = await stack.enter_async_context(
                await AsyncClient.connect(*node.address, registry=system_registry([chat_pb2]))
            )
            await client.login(user, "pw")
            found.append(Member(client, user, node))
        yield found


async def three_nodes(start_node: StartNode, **config: object) -> list[Server]:
    nodes = [
        await start_node(make_app(history=0), node_id=node, authenticator=USERS, **config)
        for node in ("a", "b", "c")
    ]
    await wait_for(lambda: all(len(n.cluster.live) == 3 for n in nodes if n.cluster))
    return nodes


async def settled(*nodes: Server) -> None:
    for node in nodes:
        assert node.pusher.cluster_rooms is not None
        await node.pusher.cluster_rooms.settled()


def counts(found: list[Member]) -> Callable[[], list[int]]:
    return lambda: [len(m.lines) for m in found]


async def test_a_broadcast_reaches_the_members_on_every_node_once(start_node: StartNode) -> None:
    a, b, c = await three_nodes(start_node)
    room = f"room-{uuid.uuid4().hex[:8]}"
    placement = [("alice", a), ("dave", a), ("bob", b), ("carol", c)]
    async with members(placement) as found:
        alice, dave, bob, carol = found
        for member in found:
            await member.join(room)
        await settled(a, b, c)
        assert c.pusher.cluster_rooms is not None and b.pusher.cluster_rooms is not None
        published = c.pusher.cluster_rooms.published
        received = b.pusher.cluster_rooms.received
        # Said on c: every member, on every node, once (the sayer's own line included).
        await carol.client.request(SayRequest(room=room, text="one"))
        await carol.client.request(SayRequest(room=room, text="two"))
        await wait_for(lambda: counts(found)() == [2, 2, 2, 2])
        for member in found:
            assert member.lines == ["one", "two"]
        # One PUBLISH each, however many nodes; each other node heard each once.
        assert c.pusher.cluster_rooms.published == published + 2
        assert b.pusher.cluster_rooms.received == received + 2

        # Excluding a user skips their sessions on whichever node they are.
        assert a.room(room).broadcast(Line(text="not bob"), exclude="bob") == 2
        # Excluding a session skips that session only.
        a.room(room).broadcast(Line(text="not alice"), exclude=alice.session())  # type: ignore[arg-type]
        a.room(room).broadcast(Line(text="end"))  # one origin: one order
        await wait_for(lambda: all(m.lines[-1:] == ["end"] for m in found))
        assert alice.lines[2:] == ["not bob", "end"]
        assert dave.lines[2:] == ["not bob", "not alice", "end"]
        assert bob.lines[2:] == ["not alice", "end"]
        assert carol.lines[2:] == ["not bob", "not alice", "end"]


async def test_a_broadcast_to_everyone_reaches_every_node(start_node: StartNode) -> None:
    a, b, c = await three_nodes(start_node)
    async with members([("alice", a), ("bob", b), ("carol", c)]) as found:
        assert b.broadcast(Line(text="all")) == 1
        await wait_for(lambda: all(m.lines == ["all"] for m in found))


async def test_counts_and_users_are_the_clusters(start_node: StartNode) -> None:
    a, b, c = await three_nodes(start_node)
    room = f"room-{uuid.uuid4().hex[:8]}"
    placement = [("alice", a), ("dave", a), ("bob", b), ("carol", c)]
    async with members(placement) as found:
        bob, carol = found[2:]
        for member in found:
            await member.join(room)
        # The sync answers are this node's, the awaited ones the cluster's.
        assert len(b.room(room)) == 1 and b.room(room).user_ids() == {"bob"}
        await wait_for_count(b, room, 4)
        assert await b.room(room).all_user_ids() == {"alice", "bob", "carol", "dave"}
        every = await c.room(room).all_members()
        assert sorted(every.values()) == [
            ("alice", "a"),
            ("bob", "b"),
            ("carol", "c"),
            ("dave", "a"),
        ]

        # Leaving, and logging out, take the membership out of Redis.
        await bob.client.request(LeaveRequest(room=room))
        await wait_for_count(a, room, 3)
        await carol.client.logout()
        await wait_for_count(a, room, 2)
        assert await a.room(room).all_user_ids() == {"alice", "dave"}
        # Its last local member gone, c no longer hears the room.
        await wait_for(lambda: c.cluster is not None and not c.cluster.bus.subscribed("r", room))
        assert a.cluster is not None and a.cluster.bus.subscribed("r", room)


async def wait_for_count(node: Server, room: str, wanted: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while (count := await node.room(room).count()) != wanted:
        assert loop.time() < deadline, f"{room} has {count} members, not {wanted}"
        await asyncio.sleep(0.02)


async def test_members_of_a_dead_node_are_pruned(start_node: StartNode) -> None:
    a, b, c = await three_nodes(start_node)
    room = f"room-{uuid.uuid4().hex[:8]}"
    async with members([("alice", a), ("bob", b), ("carol", c)]) as found:
        for member in found:
            await member.join(room)
        await wait_for_count(a, room, 3)
        # As after kill -9: no goodbye, no more heartbeats, its fields left in Redis.
        assert c.cluster is not None and c.cluster.nodes._task is not None
        c.cluster.nodes._task.cancel()
        await wait_for(lambda: a.cluster is not None and a.cluster.live == ["a", "b"])
        assert await a.room(room).all_user_ids() == {"alice", "bob"}
        assert a.pusher.cluster_rooms is not None and a.pusher.cluster_rooms.pruned == 1
        assert a.cluster is not None

        async def fields() -> set[str]:
            assert a.cluster is not None
            raw = await a.cluster.bus.command("HGETALL", room_key(room))
            assert isinstance(raw, list)
            return {msgspec.msgpack.decode(v)[0] for v in raw[1::2]}

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while "carol" in await fields():
            assert loop.time() < deadline
            await asyncio.sleep(0.02)
        assert await fields() == {"alice", "bob"}


async def test_local_members_are_served_while_redis_is_down(
    start_node: StartNode, own_redis: RedisProcess
) -> None:
    a = await start_node(
        make_app(history=0), node_id="a", authenticator=USERS, cluster_url=own_redis.url
    )
    b = await start_node(
        make_app(history=0), node_id="b", authenticator=USERS, cluster_url=own_redis.url
    )
    room = f"room-{uuid.uuid4().hex[:8]}"
    async with members([("alice", a), ("dave", a), ("bob", b)]) as found:
        alice, dave, bob = found
        for member in found:
            await member.join(room)
        await settled(a, b)
        own_redis.halt()
        await wait_for(lambda: a.cluster is not None and not a.cluster.up)
        rooms = a.pusher.cluster_rooms
        assert rooms is not None
        failures = rooms.failures
        # No exception: the local members get it, the rest is counted.
        assert a.room(room).broadcast(Line(text="local")) == 2
        await wait_for(lambda: alice.lines == ["local"] and dave.lines == ["local"])
        assert rooms.failures == failures + 1
        assert bob.lines == []
        # A join works locally, and reaches Redis once it is back.
        other = f"other-{uuid.uuid4().hex[:8]}"
        assert a.room(other).join(alice.session())  # type: ignore[arg-type]
        assert len(a.room(other)) == 1
        own_redis.restart()
        await wait_for(lambda: a.cluster is not None and a.cluster.up)
        await wait_for_count(b, other, 1)
        assert await b.room(room).all_user_ids() == {"alice", "bob", "dave"}


async def test_a_latest_value_broadcast_stays_latest_value_on_other_nodes(
    start_node: StartNode,
) -> None:
    a, b, c = await three_nodes(start_node)
    for node in (a, b, c):
        node.pusher.latest_value(Line, lambda line: (line.room, line.user))
    room = f"room-{uuid.uuid4().hex[:8]}"
    async with members([("alice", a), ("bob", b)]) as found:
        for member in found:
            await member.join(room)
        await settled(a, b)
        a.room(room).broadcast(Line(room=room, user="x", text="price"))
        await wait_for(lambda: all(m.lines == ["price"] for m in found))
        # Unsequenced (seq 0) on the other node too: not buffered, not replayed.
        assert [m.seqs for m in found] == [[0], [0]]
        [session] = b.sessions.local_sessions("bob")
        assert len(session.pushes) == 0


async def test_a_leave_keeps_a_membership_another_node_holds(start_node: StartNode) -> None:
    a, b, _ = await three_nodes(start_node)
    room = f"room-{uuid.uuid4().hex[:8]}"
    async with members([("alice", a)]) as found:
        [alice] = found
        await alice.join(room)
        await wait_for_count(b, room, 1)
        session = alice.session()
        sid = session.session_id  # type: ignore[attr-defined]
        assert b.cluster is not None
        # As if the session had been resumed on b and joined there meanwhile.
        await b.cluster.bus.command(
            "HSET", room_key(room), sid, msgspec.msgpack.encode(["alice", "b"])
        )
        assert a.room(room).leave(session)  # type: ignore[arg-type]
        assert len(a.room(room)) == 0
        # a's removal is on the same ordered connection as this read: it has run.
        assert a.cluster is not None
        await a.cluster.bus.command("PING")
        assert await a.room(room).all_members() == {sid: ("alice", "b")}
        # And a leave on the node the field names removes it.
        await b.cluster.bus.command(
            "HSET", room_key(room), sid, msgspec.msgpack.encode(["alice", "a"])
        )
        a.room(room).join(session)  # type: ignore[arg-type]
        a.room(room).leave(session)  # type: ignore[arg-type]
        await a.cluster.bus.command("PING")
        assert await a.room(room).count() == 0
