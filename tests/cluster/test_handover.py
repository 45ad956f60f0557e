"""A Resume on another node takes the session over from the node that holds it: its
unacknowledged pushes (with their sequence numbers), its data and its rooms, with every
push made meanwhile delivered exactly once (server/cluster/handover.py). Real SDK clients
on in-process nodes sharing one real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec

from client_sdk import SessionReplaced
from client_sdk.client import Push
from protocol.proto.system_pb2 import ResumeReply, ResumeRequest
from server import Server
from server.auth import MemoryUsers
from server.cluster.rooms import room_key
from server.sessions import Session
from tests.clients import Connect, login
from tests.conftest import StartNode, wait_for
from tests.integration.testapp import make_app
from tests.proto import testapp_pb2 as pb

USERS = MemoryUsers({"alice": "pw-a"})


async def nodes(start_node: StartNode, *names: str) -> list[Server]:
    started = [await start_node(make_app(), node_id=name, authenticator=USERS) for name in names]
    await wait_for(
        lambda: all(n.cluster is not None and n.cluster.live == sorted(names) for n in started)
    )
    return started


def held(node: Server) -> Session:
    [session] = node.sessions.all_sessions()
    return session


def tags(pushes: list[Push]) -> list[tuple[int, int]]:
    return [(p.seq, p.message.tag) for p in pushes]  # type: ignore[attr-defined]


async def test_pushes_data_and_rooms_move_with_the_session(
    start_node: StartNode, clients: Connect
) -> None:
    a, b, c = await nodes(start_node, "a", "b", "c")
    old = await clients(a, ack_delay=60.0, ack_every=1000)  # acknowledges nothing here
    reply = await login(old)
    session = held(a)
    session.data["score"] = 7  # not written to the store yet
    a.room("lobby").join(session)
    assert a.pusher.cluster_rooms is not None
    await a.pusher.cluster_rooms.settled()
    left: list[str] = []
    a.apps[0].on_room_left(lambda server, name, s: left.append(name))
    released: list[bool] = []
    a.sessions.on_release.append(lambda s, handed_over: released.append(handed_over))
    for tag in (1, 2, 3):
        a.push("alice", pb.SleepReply(tag=tag))

    new = await clients(b)
    got: list[Push] = []
    new.on_push(pb.SleepReply, got.append)
    resumed = await new.request(ResumeRequest(token=reply.token, last_push_seq=1))
    assert isinstance(resumed, ResumeReply)
    assert not resumed.push_gap
    assert resumed.last_push_seq == 3
    await wait_for(lambda: len(got) == 2)
    assert tags(got) == [(2, 2), (3, 3)]  # replayed with the numbers node a gave them

    closed = await asyncio.wait_for(old.wait_closed(), 5)
    assert isinstance(closed.error, SessionReplaced)
    moved = held(b)
    assert moved.data == {"score": 7}
    assert moved.rooms == {"lobby"}
    assert released == [True] and left == []  # moved, not ended: no room-left hook
    assert not a.sessions.all_sessions() and not a.pusher.room_members
    assert a.handovers is not None and a.handovers.given == 1
    assert b.handovers is not None and b.handovers.taken == 1
    assert b.store is not None
    raw = await b.cluster.bus.command("HGETALL", room_key("lobby"))  # type: ignore[union-attr]
    assert raw == [reply.session_id.encode(), msgspec.msgpack.encode(["alice", "b"])]

    # The room's broadcasts from another node reach it on its new node.
    c.room("lobby").broadcast(pb.SleepReply(tag=4))
    await wait_for(lambda: len(got) == 3)
    assert tags(got)[-1] == (4, 4)


async def test_a_waiting_session_moves_with_its_pushes(
    start_node: StartNode, clients: Connect
) -> None:
    a, b = await nodes(start_node, "a", "b")
    old = await clients(a)
    reply = await login(old)
    await old.close()
    await wait_for(lambda: len(a.sessions.waiting) == 1)
    a.push("alice", pb.SleepReply(tag=1))  # buffered for the Resume

    new = await clients(b)
    got: list[Push] = []
    new.on_push(pb.SleepReply, got.append)
    resumed = await new.request(ResumeRequest(token=reply.token, last_push_seq=0))
    assert isinstance(resumed, ResumeReply) and not resumed.push_gap
    await wait_for(lambda: len(got) == 1)
    assert tags(got) == [(1, 1)]
    assert not a.sessions.waiting


async def test_pushes_made_during_the_move_arrive_exactly_once(
    start_node: StartNode, clients: Connect
) -> None:
    """Pushes to the user from the old node, a third one and the new node itself, and
    room broadcasts from the new node, keep coming while the session moves: with what the
    old client saw and what the new one gets, each arrives once, in each sender's order."""
    a, b, c = await nodes(start_node, "a", "b", "c")
    old = await clients(a)
    reply = await login(old)
    a.room("r").join(held(a))
    assert a.pusher.cluster_rooms is not None
    await a.pusher.cluster_rooms.settled()
    seen_old: list[Push] = []
    old.on_push(pb.SleepReply, seen_old.append)

    senders: dict[str, Callable[[int], Any]] = {
        "a": lambda i: a.push("alice", pb.SleepReply(tag=i)),
        "c": lambda i: c.push("alice", pb.SleepReply(tag=100_000 + i)),
        "b": lambda i: b.room("r").broadcast(pb.SleepReply(tag=200_000 + i)),
        "b-user": lambda i: b.push("alice", pb.SleepReply(tag=300_000 + i)),
    }
    sent = 0
    stop = asyncio.Event()

    async def send() -> None:
        nonlocal sent
        while not stop.is_set():
            for push in senders.values():
                push(sent)
            sent += 1
            await asyncio.sleep(0)

    sender = asyncio.get_running_loop().create_task(send())
    try:
        await wait_for(lambda: sent >= 50)
        new = await clients(b)
        got: list[Push] = []
        new.on_push(pb.SleepReply, got.append)
        resumed = await new.request(
            ResumeRequest(token=reply.token, last_push_seq=old.last_push_seq)
        )
        assert isinstance(resumed, ResumeReply) and not resumed.push_gap
        await wait_for(lambda: sent >= 200)
    finally:
        stop.set()
        await sender
    await wait_for(lambda: len({p.seq for p in seen_old + got}) >= 4 * sent)

    by_seq: dict[int, int] = {}
    for push in seen_old + got:
        tag = push.message.tag  # type: ignore[attr-defined]
        assert by_seq.setdefault(push.seq, tag) == tag  # one message per sequence number
    assert sorted(by_seq) == list(range(1, 4 * sent + 1))  # no gap, nothing extra
    ordered = [by_seq[seq] for seq in sorted(by_seq)]
    for base in (0, 100_000, 200_000, 300_000):
        assert [t - base for t in ordered if base <= t < base + 100_000] == list(range(sent))
    assert a.handovers is not None and a.handovers.given == 1


async def test_a_node_that_does_not_hold_the_session_leaves_it_to_the_store(
    start_node: StartNode, clients: Connect
) -> None:
    """The record names node a, which does not hold the session (it lost it, say): the
    new node builds it from the store, saying pushes may be lost."""
    a, b = await nodes(start_node, "a", "b")
    old = await clients(a)
    reply = await login(old)
    session = held(a)
    a.sessions.live.pop(session.session_id)
    a.sessions._by_user.clear()  # gone from node a without a word to the store
    resumed = await (await clients(b)).request(ResumeRequest(token=reply.token))
    assert isinstance(resumed, ResumeReply) and resumed.push_gap
    assert b.handovers is not None and b.handovers.fallbacks == 1
    assert held(b).session_id == reply.session_id


async def test_the_move_releases_every_extra_subscription(
    start_node: StartNode, clients: Connect
) -> None:
    a, b = await nodes(start_node, "a", "b")
    old = await clients(a)
    reply = await login(old)
    a.room("r").join(held(a))
    assert a.cluster is not None and b.cluster is not None
    await a.pusher.cluster_rooms.settled()  # type: ignore[union-attr]
    resumed = await (await clients(b)).request(ResumeRequest(token=reply.token))
    assert isinstance(resumed, ResumeReply)
    await wait_for(lambda: not a.cluster.bus.taps and not b.cluster.bus.taps)  # type: ignore[union-attr]
    channels = (("u", "alice"), ("r", "r"))
    await wait_for(lambda: not any(a.cluster.bus.subscribed(*c) for c in channels))  # type: ignore[union-attr]
    for kind, name in channels:
        assert b.cluster.bus._counts[b.cluster.bus.channel(kind, name)] == 1
