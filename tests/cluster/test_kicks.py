"""Sessions across nodes: a newer login, `remove_user` and a Resume on one node end the
session another node holds (a ``kick`` on its channel), with real SDK clients on two
in-process nodes sharing one redis-server."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from client_sdk import Overloaded, SessionReplaced, Unauthenticated
from client_sdk.client import Push
from protocol.errors import ErrorCode
from protocol.proto.system_pb2 import ResumeReply, ResumeRequest
from server import Server
from server.auth import MemoryUsers
from server.errors import HandlerError
from server.sessions import Session
from tests.clients import Connect, login
from tests.conftest import StartNode, wait_for
from tests.integration.testapp import make_app
from tests.proto import testapp_pb2 as pb
from tests.store.redisproc import RedisProcess

USERS = MemoryUsers({"alice": "pw-a", "bob": "pw-b", "carol": "pw-c"})


async def two_nodes(start_node: StartNode, **config: Any) -> tuple[Server, Server]:
    a = await start_node(make_app(), node_id="a", authenticator=USERS, **config)
    b = await start_node(make_app(), node_id="b", authenticator=USERS, **config)
    await wait_for(
        lambda: all(n.cluster is not None and n.cluster.live == ["a", "b"] for n in (a, b))
    )
    return a, b


def refuse_handovers(node: Server) -> None:
    """`node` answers no handover (busy, say): a Resume elsewhere rebuilds the session
    from the store and kicks it here."""

    async def busy(origin: str, body: Any) -> None:
        raise HandlerError(ErrorCode.OVERLOADED, "busy")

    assert node.cluster is not None
    node.cluster.serve("handover.rooms", busy)


async def test_a_login_on_one_node_replaces_the_session_on_another(
    start_node: StartNode, clients: Connect
) -> None:
    a, b = await two_nodes(start_node)
    first, second = await clients(a), await clients(b)
    old = await login(first)
    started = time.monotonic()
    new = await login(second)
    closed = await asyncio.wait_for(first.wait_closed(), 5)
    assert time.monotonic() - started < 1.0
    assert isinstance(closed.error, SessionReplaced)
    assert first.goaway is not None and first.goaway.reason == ErrorCode.SESSION_REPLACED
    assert first.goaway.message == "the same user logged in elsewhere"
    await wait_for(lambda: not a.sessions.all_sessions())
    assert [i.session_id for i in await b.sessions.sessions_of("alice")] == [new.session_id]
    # The replaced session's token is dead on either node.
    with pytest.raises(Unauthenticated):
        await (await clients(a)).request(ResumeRequest(token=old.token))


async def test_a_login_replaces_a_session_waiting_on_another_node(
    start_node: StartNode, clients: Connect
) -> None:
    a, b = await two_nodes(start_node)
    first = await clients(a)
    await login(first)
    released: list[tuple[Session, bool]] = []
    a.sessions.on_release.append(lambda s, handed_over: released.append((s, handed_over)))
    await first.close()
    await wait_for(lambda: len(a.sessions.waiting) == 1)
    await login(await clients(b))
    # Node a stops buffering for it: the waiting session ended there.
    await wait_for(lambda: not a.sessions.waiting)
    assert [handed_over for _, handed_over in released] == [False]


async def test_reject_refuses_a_login_while_another_node_holds_the_user(
    start_node: StartNode, clients: Connect
) -> None:
    a, b = await two_nodes(start_node, duplicate_login="reject")
    first, second = await clients(a), await clients(b)
    await login(first)
    with pytest.raises(Unauthenticated, match="already logged in elsewhere"):
        await login(second)
    assert not first.closed
    await first.close()
    await wait_for(lambda: len(a.sessions.waiting) == 1)
    # A waiting session is replaced, and node a drops it.
    reply = await login(second)
    await wait_for(lambda: not a.sessions.waiting)
    assert [i.session_id for i in await b.sessions.sessions_of("alice")] == [reply.session_id]


async def test_remove_user_closes_the_users_connections_on_every_node(
    start_node: StartNode, clients: Connect
) -> None:
    a, b = await two_nodes(start_node, duplicate_login="allow")
    on_a, on_b, bob = await clients(a), await clients(b), await clients(b)
    await login(on_a)
    await login(on_b)
    await login(bob, "bob", "pw-b")
    assert await a.sessions.remove_user("alice") == 2
    for client in (on_a, on_b):
        closed = await asyncio.wait_for(client.wait_closed(), 5)
        assert isinstance(closed.error, SessionReplaced)
        assert client.goaway is not None
        assert client.goaway.message == "the session was ended by the server"
    assert await b.sessions.sessions_of("alice") == []
    await wait_for(lambda: not b.sessions.local_sessions("alice"))
    assert not bob.closed and len(b.sessions.local_sessions("bob")) == 1


async def test_resume_on_another_node_drops_the_old_connection_and_pushes_go_on(
    start_node: StartNode, clients: Connect
) -> None:
    a, b = await two_nodes(start_node)
    old = await clients(a)
    reply = await login(old)
    released: list[tuple[Session, bool]] = []
    a.sessions.on_release.append(lambda s, handed_over: released.append((s, handed_over)))
    a.push("alice", pb.SleepReply(tag=1))

    new = await clients(b)
    got: list[Push] = []
    new.on_push(pb.SleepReply, got.append)
    resumed = await new.request(ResumeRequest(token=reply.token, last_push_seq=0))
    assert isinstance(resumed, ResumeReply)
    assert resumed.session_id == reply.session_id
    assert not resumed.push_gap  # node a handed its pushes over
    closed = await asyncio.wait_for(old.wait_closed(), 5)
    assert isinstance(closed.error, SessionReplaced)
    assert old.goaway is not None
    assert old.goaway.message == "session resumed on another connection"
    await wait_for(lambda: not a.sessions.all_sessions())
    assert [handed_over for _, handed_over in released] == [True]
    info = await b.sessions.by_token(reply.token)
    assert info is not None and info.node == "b" and info.connected

    assert b.push("alice", pb.SleepReply(tag=2)) == 1
    await wait_for(lambda: len(got) == 2)
    assert [(p.seq, p.message.tag) for p in got] == [(1, 1), (2, 2)]  # type: ignore[attr-defined]
    assert a.push("alice", pb.SleepReply(tag=3)) == 0  # node a holds nothing any more


async def test_resume_on_another_node_ends_the_session_waiting_there(
    start_node: StartNode, clients: Connect
) -> None:
    a, b = await two_nodes(start_node)
    old = await clients(a)
    reply = await login(old)
    await old.close()
    await wait_for(lambda: len(a.sessions.waiting) == 1)
    resumed = await (await clients(b)).request(ResumeRequest(token=reply.token))
    assert isinstance(resumed, ResumeReply)
    await wait_for(lambda: not a.sessions.waiting)
    assert len(b.sessions.local_sessions("alice")) == 1


async def test_a_session_on_a_vanished_node_does_not_fail_the_login(
    start_node: StartNode, clients: Connect
) -> None:
    a, b = await two_nodes(start_node)
    old = await login(await clients(a))
    await a.stop(timeout=1.0)
    await wait_for(lambda: b.cluster is not None and b.cluster.live == ["b"])
    # A record naming a node that never existed, as a crash would leave behind.
    assert b.store is not None
    await b.store.hset(
        "tw:session:ghost-sid", {"user": b"alice", "token": b"x", "node": b"ghost", "conn": b"7"}
    )
    await b.store.sadd("tw:user:alice", b"ghost-sid")

    new = await login(await clients(b))
    assert [i.session_id for i in await b.sessions.sessions_of("alice")] == [new.session_id]
    with pytest.raises(Unauthenticated):
        await (await clients(b)).request(ResumeRequest(token=old.token))


async def test_a_malformed_kick_is_ignored_with_a_warning(
    start_node: StartNode, clients: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await two_nodes(start_node)
    client = await clients(a)
    reply = await login(client)
    assert b.cluster is not None
    caplog.set_level(logging.WARNING, "tickwire.cluster")
    for body in (["x"], [reply.session_id, "closed"], [7, "replaced"]):
        assert await b.cluster.send("a", "kick", body) == 1
    # A kick for a reason another node may not give ends nothing.
    await wait_for(lambda: caplog.text.count("malformed kick from b") == 3)
    assert not client.closed and len(a.sessions.local_sessions("alice")) == 1


async def test_the_old_node_does_not_overwrite_a_record_resumed_elsewhere(
    start_node: StartNode, clients: Connect
) -> None:
    """Until its kick comes, the old node still holds the session under the same token:
    its disconnect and stop writes must not mark the moved record disconnected or clean."""
    a, b = await two_nodes(start_node)
    assert a.cluster is not None and b.store is not None
    old = await clients(a)
    reply = await login(old)
    refuse_handovers(a)
    a.cluster.on_node("kick", lambda origin, body: None)  # the kick is late, say
    resumed = await (await clients(b)).request(ResumeRequest(token=reply.token))
    assert isinstance(resumed, ResumeReply)
    await old.close()
    await wait_for(lambda: len(a.sessions.waiting) == 1)
    await a.sessions.flush()
    await a.stop(timeout=1.0)
    info = await b.sessions.by_token(reply.token)
    assert info is not None and info.node == "b" and info.connected
    record = await b.store.hgetall("tw:session:" + reply.session_id)
    assert record.get("pclean") != b"1"


async def test_a_login_that_cannot_reach_the_other_node_fails_typed(
    start_node: StartNode,
    clients: Connect,
    own_redis: RedisProcess,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The cluster's Redis down, the store up: the old session cannot be ended where it
    lives, so the login is refused (OVERLOADED) rather than leave two connections on."""
    a, b = await two_nodes(
        start_node, cluster_url=own_redis.url, store="redis", redis_url=redis_url
    )
    assert b.cluster is not None
    first = await clients(a)
    old = await login(first)
    own_redis.halt()
    await wait_for(lambda: b.cluster is not None and not b.cluster.up)
    second = await clients(b)
    with pytest.raises(Overloaded):
        await login(second)
    assert not first.closed
    assert [i.session_id for i in await b.sessions.sessions_of("alice")] == [old.session_id]
    assert "Traceback" not in caplog.text

    own_redis.restart()
    await wait_for(lambda: all(n.cluster is not None and n.cluster.up for n in (a, b)))
    await wait_for(lambda: b.cluster is not None and b.cluster.live == ["a", "b"])
    channel = b.cluster.bus.channel("n", "a")

    async def subscribed() -> bool:
        assert b.cluster is not None
        reply = await b.cluster.bus.command("PUBSUB", "NUMSUB", channel)
        return reply == [channel, 1]  # type: ignore[comparison-overlap]

    for _ in range(100):  # until node a has subscribed its channel again
        if await subscribed():
            break
        await asyncio.sleep(0.02)
    await login(second)
    closed = await asyncio.wait_for(first.wait_closed(), 5)
    assert isinstance(closed.error, SessionReplaced)


async def test_a_resume_back_on_a_node_with_a_stale_copy_rebuilds_it_from_the_store(
    start_node: StartNode, clients: Connect
) -> None:
    """The session moved a -> b, and a's kick never came: a Resume back on a must not
    take a's stale copy (its pushes stopped when b took over) but b's, which b hands
    over."""
    a, b = await two_nodes(start_node)
    assert a.cluster is not None
    first = await clients(a)
    reply = await login(first)
    refuse_handovers(a)
    a.cluster.on_node("kick", lambda origin, body: None)  # b's kick is lost
    second = await clients(b)
    assert isinstance(await second.request(ResumeRequest(token=reply.token)), ResumeReply)
    assert len(a.sessions.live) == 1  # the stale copy
    b.push("alice", pb.SleepReply(tag=1))  # pushed on b only

    third = await clients(a)
    got: list[Push] = []
    third.on_push(pb.SleepReply, got.append)
    back = await third.request(ResumeRequest(token=reply.token, last_push_seq=1))
    assert isinstance(back, ResumeReply) and not back.push_gap
    for old in (first, second):
        closed = await asyncio.wait_for(old.wait_closed(), 5)
        assert isinstance(closed.error, SessionReplaced)
    await wait_for(lambda: not b.sessions.all_sessions())
    info = await a.sessions.by_token(reply.token)
    assert info is not None and info.node == "a" and info.connected
    assert a.push("alice", pb.SleepReply(tag=2)) == 1
    await wait_for(lambda: len(got) == 1)
    assert got[0].seq == 2  # on from what the client saw on b, not from a's stale copy


async def test_a_node_back_from_an_outage_ends_the_sessions_taken_meanwhile(
    start_node: StartNode,
    clients: Connect,
    own_redis: RedisProcess,
    redis_url: str,
) -> None:
    """A kick sent while a node re-subscribes reaches nobody (here: node a drops it).
    When a's bus is back from an outage it re-checks what it holds against the store and
    ends the session its record says b took, and the one a newer login replaced."""
    a, b = await two_nodes(
        start_node, cluster_url=own_redis.url, store="redis", redis_url=redis_url
    )
    assert a.kicks is not None and a.cluster is not None
    moved, replaced = await clients(a), await clients(a)
    moved_reply = await login(moved)
    await login(replaced, "bob", "pw-b")
    refuse_handovers(a)
    a.cluster.on_node("kick", lambda origin, body: None)  # every kick to a is missed
    resumed = await (await clients(b)).request(ResumeRequest(token=moved_reply.token))
    assert isinstance(resumed, ResumeReply)
    await login(await clients(b), "bob", "pw-b")  # replaces bob's session on a
    kept = await clients(a)
    await login(kept, "carol", "pw-c")  # its record is a's: it stays
    assert len(a.sessions.live) == 3

    own_redis.halt()
    await wait_for(lambda: a.cluster is not None and not a.cluster.up)
    own_redis.restart()
    for old in (moved, replaced):
        closed = await asyncio.wait_for(old.wait_closed(), 10)
        assert isinstance(closed.error, SessionReplaced)
    assert a.kicks.rechecked == 2
    assert [s.user_id for s in a.sessions.all_sessions()] == ["carol"]
    assert not kept.closed
