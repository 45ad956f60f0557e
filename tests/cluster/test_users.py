"""Pushes to users across nodes, on a real redis-server with real SDK clients: a push
made on one node reaches the user's sessions on another, in order; one no node can
deliver goes to the inbox; a Redis outage leaves local pushes working and fails the
remote ones with ClusterUnavailable."""

from __future__ import annotations

import asyncio

import pytest

from client_sdk import AsyncClient, Push
from protocol.proto.system_pb2 import LoginReply, LoginRequest, LogoutRequest, ResumeRequest
from server import App, Server
from server.auth import MemoryUsers
from server.cluster import ClusterUnavailable
from tests.clients import PASSWORDS, Connect
from tests.conftest import StartNode, wait_for
from tests.integration.rawclient import RawPeer
from tests.integration.testapp import app_registry, make_app
from tests.proto import testapp_pb2 as pb
from tests.store.redisproc import RedisProcess

USERS = MemoryUsers(PASSWORDS)


def push_app() -> App:
    app = make_app()
    app.latest_value(pb.UnorderedSleepRequest, key=lambda m: m.tag)
    return app


def collect(client: AsyncClient) -> list[Push]:
    got: list[Push] = []
    for kind in (pb.SleepReply, pb.UnorderedSleepRequest):
        client.on_push(kind, got.append)
    return got


def tags(pushes: list[Push]) -> list[int]:
    return [p.message.tag for p in pushes]  # type: ignore[attr-defined]


async def nodes(start_node: StartNode, *ids: str, **config: object) -> list[Server]:
    return [
        await start_node(push_app(), node_id=node_id, authenticator=USERS, **config)
        for node_id in ids
    ]


async def test_a_push_from_another_node_arrives_in_order(
    start_node: StartNode, clients: Connect
) -> None:
    a, b = await nodes(start_node, "a", "b")
    got = collect(await clients(a, "alice"))
    assert b.push("alice", pb.SleepReply(tag=1)) == 0  # none of alice's sessions is on b
    await wait_for(lambda: tags(got) == [1])
    for tag in range(2, 202):
        b.push("alice", pb.SleepReply(tag=tag))
    await wait_for(lambda: len(got) == 201)
    assert tags(got) == list(range(1, 202))
    assert [p.seq for p in got] == list(range(1, 202))
    assert b.user_push is not None and a.user_push is not None
    assert b.user_push.published == 201 and b.user_push.inbox_fallbacks == 0
    assert a.user_push.delivered == 201


async def test_a_latest_value_push_crosses_nodes(start_node: StartNode, clients: Connect) -> None:
    a, b = await nodes(start_node, "a", "b")
    got = collect(await clients(a, "alice"))
    b.push("alice", pb.UnorderedSleepRequest(tag=7))
    await wait_for(lambda: tags(got) == [7])
    assert got[0].seq == 0


async def test_multicast_reaches_users_on_every_node(
    start_node: StartNode, clients: Connect
) -> None:
    a, b, c = await nodes(start_node, "a", "b", "c")
    got_alice = collect(await clients(a, "alice"))
    got_bob = collect(await clients(b, "bob"))
    got_carol = collect(await clients(c, "carol"))
    assert c.multicast(["alice", "bob", "carol"], pb.SleepReply(tag=5)) == 1
    await wait_for(lambda: tags(got_alice) == [5] and tags(got_bob) == [5])
    assert tags(got_carol) == [5]


async def test_a_user_offline_everywhere_gets_the_push_at_the_next_login(
    start_node: StartNode, clients: Connect
) -> None:
    a, b = await nodes(start_node, "a", "b")
    assert b.push("carol", pb.SleepReply(tag=3)) == 0
    assert b.user_push is not None
    await wait_for(lambda: b.user_push is not None and b.user_push.inbox_fallbacks == 1)
    await b.pusher.drain_offline(timeout=2.0)
    client = await AsyncClient.connect(*a.address, registry=app_registry())
    try:
        got = collect(client)
        reply = await client.request(LoginRequest(user="carol", password="c"))
        assert isinstance(reply, LoginReply)
        await wait_for(lambda: tags(got) == [3])
    finally:
        await client.close()


async def test_a_node_does_not_deliver_its_own_publication_twice(
    start_node: StartNode, clients: Connect
) -> None:
    a, b = await nodes(start_node, "a", "b", duplicate_login="allow")
    on_a, on_b = collect(await clients(a, "alice")), collect(await clients(b, "alice"))
    # Under "allow", a publishes even though alice has a session here: b may hold another.
    for tag in (1, 2, 3):
        assert a.push("alice", pb.SleepReply(tag=tag)) == 1
    await wait_for(lambda: len(on_b) == 3)
    assert a.user_push is not None and a.user_push.published == 3
    # The marker that a's copies came back to a: a push from b, after them on the bus.
    b.push("alice", pb.SleepReply(tag=4))
    await wait_for(lambda: len(on_a) == 4)
    assert tags(on_a) == [1, 2, 3, 4] and tags(on_b) == [1, 2, 3, 4]
    assert [p.seq for p in on_a] == [1, 2, 3, 4]


async def test_without_allow_a_user_held_here_is_not_published(
    start_node: StartNode, clients: Connect
) -> None:
    (a,) = await nodes(start_node, "a")
    got = collect(await clients(a, "alice"))
    assert a.push("alice", pb.SleepReply(tag=1)) == 1
    await wait_for(lambda: tags(got) == [1])
    assert a.user_push is not None and a.user_push.published == 0


async def test_redis_down_local_pushes_arrive_remote_ones_raise(
    start_node: StartNode, clients: Connect, own_redis: RedisProcess
) -> None:
    a, b = await nodes(start_node, "a", "b", cluster_url=own_redis.url)
    got_alice = collect(await clients(a, "alice"))
    await clients(b, "bob")
    own_redis.halt()
    await wait_for(lambda: a.cluster is not None and not a.cluster.up)
    assert a.push("alice", pb.SleepReply(tag=1)) == 1
    await wait_for(lambda: tags(got_alice) == [1])
    with pytest.raises(ClusterUnavailable):
        a.push("bob", pb.SleepReply(tag=2))
    # A multicast delivers locally first, then raises for the remote user.
    with pytest.raises(ClusterUnavailable):
        a.multicast(["alice", "bob"], pb.SleepReply(tag=3))
    await wait_for(lambda: tags(got_alice) == [1, 3])
    assert a.user_push is not None and a.user_push.failures == 2
    own_redis.restart()
    await wait_for(lambda: a.cluster is not None and a.cluster.up)


async def test_the_channel_is_unsubscribed_after_logout(
    start_node: StartNode, clients: Connect
) -> None:
    (a,) = await nodes(start_node, "a", duplicate_login="allow")
    assert a.cluster is not None
    bus = a.cluster.bus
    phone, laptop = await clients(a, "alice"), await clients(a, "alice")
    assert bus.subscribed("u", "alice")
    await phone.request(LogoutRequest())
    await asyncio.sleep(0)
    assert bus.subscribed("u", "alice")  # the laptop still holds a session
    await laptop.request(LogoutRequest())
    await wait_for(lambda: not bus.subscribed("u", "alice"))


async def test_a_malformed_message_on_a_user_channel_is_counted_and_skipped(
    start_node: StartNode, clients: Connect
) -> None:
    a, b = await nodes(start_node, "a", "b")
    got = collect(await clients(a, "alice"))
    assert b.cluster is not None and a.user_push is not None
    for junk in (b"\xc1", b"\x93\xa4push\xa1b\x01", b"\x91\x01"):
        assert await b.cluster.bus.publish("u", "alice", junk) == 1
    b.push("alice", pb.SleepReply(tag=1))
    await wait_for(lambda: tags(got) == [1])
    assert a.user_push.failures == 3


async def test_a_session_waiting_for_its_resume_gets_the_pushes_of_another_node(
    start_node: StartNode,
) -> None:
    a, b = await nodes(start_node, "a", "b")
    peer = await RawPeer.connect(a.address)
    body = LoginRequest(user="alice", password="a").SerializeToString()
    peer.send_frame(6, 0, 1, body)
    [reply] = await peer.read_frames(1)
    token = LoginReply.FromString(reply.payload).token
    await peer.close()
    await wait_for(lambda: not a.sessions.local_sessions("alice"))
    assert a.cluster is not None and a.cluster.bus.subscribed("u", "alice")
    for tag in (1, 2):
        assert b.push("alice", pb.SleepReply(tag=tag)) == 0
    assert a.user_push is not None
    await wait_for(lambda: a.user_push is not None and a.user_push.delivered == 2)
    again = await RawPeer.connect(a.address)
    try:
        again.send_frame(13, 0, 1, ResumeRequest(token=token).SerializeToString())
        resumed, *pushes = await again.read_frames(3)
        assert resumed.msg_id == 14
        assert [(f.seq, pb.SleepReply.FromString(f.payload).tag) for f in pushes] == [
            (1, 1),
            (2, 2),
        ]
    finally:
        await again.close()
    assert b.user_push is not None and b.user_push.inbox_fallbacks == 0
