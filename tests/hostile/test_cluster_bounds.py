"""The cluster's bounds against a hostile or broken peer, on a real redis-server: a flood
of node-to-node requests past `max_inbound`, owned keys past their cap, and garbage
published on the bus's channels by a plain Redis client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
import redis.asyncio

from client_sdk import AsyncClient
from examples.chat import chat_pb2
from examples.chat.chat_pb2 import JoinReply, JoinRequest, Line
from examples.chat.service import make_app as chat_app
from protocol.errors import ErrorCode
from protocol.registry import system_registry
from server import App, Context, Server
from server.auth import MemoryUsers
from server.cluster import Cluster, RemoteError
from tests.conftest import StartNode, wait_for
from tests.integration.testapp import app_registry
from tests.proto import testapp_pb2 as pb

StartCluster = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def start_cluster(redis_url: str) -> AsyncIterator[StartCluster]:
    """A bare Cluster (no Server around it) on the test's Redis, stopped after."""
    started: list[Cluster] = []

    async def start(node_id: str, **options: Any) -> Cluster:
        cluster = Cluster(redis_url, node_id, heartbeat=0.1, ttl=0.5, **options)
        await cluster.connect()
        await cluster.register()
        started.append(cluster)
        return cluster

    yield start
    for cluster in reversed(started):
        await cluster.stop()


# -- requests past max_inbound --------------------------------------------------------------


async def test_requests_past_max_inbound_are_answered_busy_and_hold_no_task(
    start_cluster: StartCluster, redis_url: str
) -> None:
    a = await start_cluster("a")
    b = await start_cluster("b", max_inbound=4)
    release = asyncio.Event()

    async def hold(origin: str, body: Any) -> Any:
        await release.wait()
        return body

    b.serve("hold", hold)
    await wait_for(lambda: a.live == ["a", "b"])
    calls = [asyncio.ensure_future(a.request("b", "hold", i, timeout=30)) for i in range(10)]
    await wait_for(lambda: sum(call.done() for call in calls) == 6)
    assert len(b._inbound) == 4 and b.shed == 6
    refused = [call.exception() for call in calls if call.done()]
    for error in refused:
        assert isinstance(error, RemoteError)
        assert error.code == ErrorCode.OVERLOADED and error.message == "node b is busy"

    # Not a node at all: requests published straight on b's channel, none awaiting an
    # answer. Each is answered busy (to a channel nobody hears); none costs a task.
    flood = redis.asyncio.from_url(redis_url)
    try:
        request = msgspec.msgpack.encode(["req", "flood", [1, "hold", None]])
        for _ in range(500):
            assert await flood.publish(b.bus.channel("n", "b"), request) == 1
    finally:
        await flood.aclose()
    await wait_for(lambda: b.shed == 506)
    assert len(b._inbound) == 4

    held = [i for i, call in enumerate(calls) if not call.done()]
    release.set()
    assert await asyncio.gather(*(calls[i] for i in held)) == held
    await wait_for(lambda: not b._inbound)
    assert await a.request("b", "hold", "again") == "again"


# -- owned keys past their cap --------------------------------------------------------------


def keyed_app(events: list[tuple[str, str]]) -> App:
    """NoteRequest(text=key) runs on the key's owner; the hooks record what moves."""
    app = App("keyed", public=True)
    app.add_module(pb)

    @app.handler(pb.NoteRequest, owner=lambda msg: msg.text)
    def note(ctx: Context, msg: pb.NoteRequest) -> pb.SleepReply:
        return pb.SleepReply(tag=len(ctx.server.owned.keys))

    @app.on_key_acquired
    def acquired(server: Server, key: str) -> None:
        events.append(("acquired", key))

    @app.on_key_released
    def released(server: Server, key: str, new_owner: str) -> None:
        events.append(("released", f"{key}->{new_owner}"))

    return app


async def test_owned_keys_past_the_cap_release_the_oldest(start_node: StartNode) -> None:
    events: list[tuple[str, str]] = []
    a = await start_node(keyed_app(events), node_id="a")
    a.owned.max_keys = 3
    async with await AsyncClient.connect(*a.address, registry=app_registry()) as client:
        # A peer naming a new key with every request: the node remembers 3 at most.
        for i in range(200):
            reply = await client.request(pb.NoteRequest(text=f"k{i}"))
            assert isinstance(reply, pb.SleepReply) and reply.tag <= 3
            assert len(a.owned.keys) <= 3
        assert list(a.owned.keys) == ["k197", "k198", "k199"]
        assert a.owned.evicted == 197
        # Released to make room, with this node as the new owner: still served here, and
        # acquired again by its next request (making room in turn).
        assert events[:4] == [
            ("acquired", "k0"),
            ("acquired", "k1"),
            ("acquired", "k2"),
            ("released", "k0->a"),
        ]
        del events[:]
        reply = await client.request(pb.NoteRequest(text="k0"))
        assert isinstance(reply, pb.SleepReply) and reply.tag == 3
        assert events == [("released", "k197->a"), ("acquired", "k0")]
        assert list(a.owned.keys) == ["k198", "k199", "k0"]


# -- garbage on the bus -----------------------------------------------------------------------

USERS = MemoryUsers({"alice": "pw"})

#: What a plain Redis client publishes on each channel: none of it is a message of the
#: channel it lands on.
GARBAGE = [
    b"\xc1",  # not msgpack
    msgspec.msgpack.encode(7),
    msgspec.msgpack.encode(["req", "x", [1]]),
    msgspec.msgpack.encode(["req", "x", ["1", "m", None]]),
    msgspec.msgpack.encode(["rep", "x", [[1], 0, None]]),  # an unhashable call id
    msgspec.msgpack.encode(["what", "x", None]),
    msgspec.msgpack.encode(["room", "x", [1, "text", None, False]]),
    msgspec.msgpack.encode(["room", "x", [1, b"", ["z", "q"], False]]),
    msgspec.msgpack.encode(["everyone", "x", [1, b"", "no"]]),
    msgspec.msgpack.encode(["push", "x", [1, b"", "yes", False]]),
    # A latest-value push whose payload is no message of its ID.
    msgspec.msgpack.encode(["room", "x", [0xFFFF, b"\xff\xff", None, True]]),
    msgspec.msgpack.encode(["push", "x", [0xFFFF, b"\xff\xff", True, False]]),
]


async def test_garbage_on_any_bus_channel_is_dropped_counted_and_logged_once(
    start_node: StartNode, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    a = await start_node(chat_app(history=0), node_id="a", authenticator=USERS)
    b = await start_node(chat_app(history=0), node_id="b", authenticator=USERS)
    assert a.cluster is not None and b.cluster is not None
    assert a.pusher.cluster_rooms is not None
    await wait_for(lambda: a.cluster is not None and a.cluster.live == ["a", "b"])

    async def ping(origin: str, body: Any) -> Any:
        return body

    a.cluster.serve("ping", ping)
    registry = system_registry([chat_pb2])
    async with await AsyncClient.connect(*a.address, registry=registry) as alice:
        await alice.login("alice", "pw")
        lines: list[str] = []
        alice.on_push(Line, lambda push: lines.append(push.message.text))  # type: ignore[attr-defined]
        assert isinstance(await alice.request(JoinRequest(room="lobby")), JoinReply)
        await a.pusher.cluster_rooms.settled()

        caplog.set_level(logging.WARNING, "tickwire.cluster")
        bus = a.cluster.bus
        channels = [
            bus.channel("n", "a"),
            bus.channel("u", "alice"),
            bus.channel("r", "lobby"),
            bus.channel("all", "everyone"),
        ]
        raw = redis.asyncio.from_url(redis_url)
        try:
            for channel in channels:
                for junk in GARBAGE:
                    assert await raw.publish(channel, junk) >= 1
            # A goodbye that names no node forgets none.
            assert await raw.publish(bus.channel("all", "bye"), b"\xff\xfe") == 2
        finally:
            await raw.aclose()

        # Every one dropped and counted (b hears the everyone channel too).
        await wait_for(lambda: bus.malformed == len(channels) * len(GARBAGE))
        await wait_for(lambda: b.cluster is not None and b.cluster.bus.malformed == len(GARBAGE))
        assert a.user_push is not None and a.user_push.failures == len(GARBAGE)
        dropped = [r for r in caplog.records if "dropped a message" in r.getMessage()]
        assert len(dropped) == 2  # one line per node for the whole burst
        assert a.cluster.live == ["a", "b"]

        # And every channel still serves: a call, a push, a room, everyone.
        assert await b.cluster.request("a", "ping", "pong") == "pong"
        b.push("alice", Line(text="push"))
        await wait_for(lambda: lines == ["push"])
        b.room("lobby").broadcast(Line(text="room"))
        await wait_for(lambda: lines == ["push", "room"])
        b.broadcast(Line(text="everyone"))
        await wait_for(lambda: lines == ["push", "room", "everyone"])
