"""Server push over real sockets: sequence numbers, acknowledgement, replay after a
Resume, the offline inbox, rooms, broadcast, latest-value conflation and slow consumers.

Frames are read with the raw peer where their order on the wire is the point (a push
must come after the LoginReply, a replay before anything new).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from client_sdk import AsyncClient, Push, SlowConsumer
from protocol.frame import Flags, Frame, encode_frame
from protocol.proto.system_pb2 import (
    LoginReply,
    LoginRequest,
    LogoutRequest,
    PushAck,
    ResumeReply,
    ResumeRequest,
)
from server import App, Context, Server, ServerConfig
from server.auth import MemoryUsers
from tests.clients import PASSWORDS, Connect
from tests.conftest import StartServer, wait_for
from tests.integration.rawclient import RawPeer
from tests.integration.testapp import app_registry
from tests.proto import testapp_pb2 as pb

USERS = MemoryUsers(PASSWORDS)
PUSH = int(Flags.PUSH)


def push_app() -> App:
    """NoteRequest pushes SleepReply(tag=len(text)) to the caller and answers tag 999;
    UnorderedSleepRequest is pushed latest-value, keyed by its tag."""
    app = App("pushes")

    @app.handler(pb.NoteRequest)
    def note(ctx: Context, msg: pb.NoteRequest) -> pb.SleepReply:
        ctx.push(pb.SleepReply(tag=len(msg.text)))
        return pb.SleepReply(tag=999)

    @app.handler(pb.GateRequest)
    def join(ctx: Context, msg: pb.GateRequest) -> pb.SleepReply:
        assert ctx.session is not None
        ctx.server.room(f"room{msg.tag}").join(ctx.session)
        return pb.SleepReply(tag=msg.tag)

    app.latest_value(pb.UnorderedSleepRequest, key=lambda m: m.tag)
    return app


def collect(client: AsyncClient) -> list[Push]:
    got: list[Push] = []
    for kind in (pb.SleepReply, pb.UnorderedSleepRequest, pb.BigReply):
        client.on_push(kind, got.append)
    return got


async def raw_login(peer: RawPeer, user: str, seq: int = 1) -> list[Frame]:
    body = LoginRequest(user=user, password=PASSWORDS[user]).SerializeToString()
    peer.send_frame(6, 0, seq, body)
    return await peer.read_frames(1)


def tags(pushes: list[Push]) -> list[int]:
    return [p.message.tag for p in pushes]  # type: ignore[attr-defined]


async def test_ctx_push_goes_to_the_caller_ahead_of_the_reply(
    start_server: StartServer,
) -> None:
    server = await start_server(push_app(), authenticator=USERS)
    peer = await RawPeer.connect(server.address)
    try:
        await raw_login(peer, "alice")
        peer.send_frame(1007, 0, 2, pb.NoteRequest(text="hello").SerializeToString())
        push, reply = await peer.read_frames(2)
        assert push.flags == PUSH and push.seq == 1 and push.msg_id == 1001
        assert pb.SleepReply.FromString(push.payload).tag == 5
        assert reply.seq == 2 and pb.SleepReply.FromString(reply.payload).tag == 999
    finally:
        await peer.close()


async def test_push_to_a_user_is_sequenced_per_session(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(push_app(), authenticator=USERS, duplicate_login="allow")
    phone, laptop = await clients(server, "alice"), await clients(server, "alice")
    got_phone, got_laptop = collect(phone), collect(laptop)
    for tag in (1, 2, 3):
        assert server.push("alice", pb.SleepReply(tag=tag)) == 2
    await wait_for(lambda: len(got_phone) == 3 and len(got_laptop) == 3)
    assert [p.seq for p in got_phone] == [1, 2, 3] and tags(got_phone) == [1, 2, 3]
    assert [p.seq for p in got_laptop] == [1, 2, 3]


async def test_push_ack_forgets_what_was_acknowledged(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(push_app(), authenticator=USERS)
    client = await clients(server, "alice")
    got = collect(client)
    for tag in range(5):
        server.push("alice", pb.SleepReply(tag=tag))
    await wait_for(lambda: len(got) == 5)
    [session] = server.sessions.local_sessions("alice")
    assert [seq for seq, _, _ in session.pushes.entries()] == [1, 2, 3, 4, 5]
    client.notify(PushAck(seq=3))
    await wait_for(lambda: [seq for seq, _, _ in session.pushes.entries()] == [4, 5])


async def test_resume_replays_what_was_missed_after_the_reply_then_new_pushes(
    start_server: StartServer, store_config: dict[str, Any]
) -> None:
    server = await start_server(push_app(), authenticator=USERS, **store_config)
    peer = await RawPeer.connect(server.address)
    [login] = await raw_login(peer, "alice")
    token = LoginReply.FromString(login.payload).token
    server.push("alice", pb.SleepReply(tag=1))
    server.push("alice", pb.SleepReply(tag=2))
    assert [f.seq for f in await peer.read_frames(2)] == [1, 2]
    await peer.close()
    await wait_for(lambda: not server.sessions.local_sessions("alice"))
    for tag in (3, 4):  # the session waits for its Resume: buffered for the replay
        assert server.push("alice", pb.SleepReply(tag=tag)) == 1

    again = await RawPeer.connect(server.address)
    try:
        again.send_frame(13, 0, 1, ResumeRequest(token=token, last_push_seq=2).SerializeToString())
        server.push("alice", pb.SleepReply(tag=5))  # new, while the Resume is handled
        reply, *pushes = await again.read_frames(4)
        resumed = ResumeReply.FromString(reply.payload)
        assert reply.msg_id == 14 and not resumed.push_gap and resumed.last_push_seq >= 4
        assert [(f.seq, pb.SleepReply.FromString(f.payload).tag) for f in pushes] == [
            (3, 3),
            (4, 4),
            (5, 5),
        ]
        # last_push_seq=2 acknowledged 1 and 2: the buffer holds only what came after.
        [session] = server.sessions.local_sessions("alice")
        assert [seq for seq, _, _ in session.pushes.entries()] == [3, 4, 5]
    finally:
        await again.close()


async def test_resume_past_the_buffer_reports_a_gap(start_server: StartServer) -> None:
    server = await start_server(push_app(), authenticator=USERS, push_buffer=2)
    peer = await RawPeer.connect(server.address)
    [login] = await raw_login(peer, "alice")
    token = LoginReply.FromString(login.payload).token
    await peer.close()
    await wait_for(lambda: not server.sessions.local_sessions("alice"))
    for tag in range(1, 6):
        server.push("alice", pb.SleepReply(tag=tag))
    again = await RawPeer.connect(server.address)
    try:
        again.send_frame(13, 0, 1, ResumeRequest(token=token, last_push_seq=0).SerializeToString())
        reply, *pushes = await again.read_frames(3)
        resumed = ResumeReply.FromString(reply.payload)
        assert resumed.push_gap and resumed.last_push_seq == 5
        assert [f.seq for f in pushes] == [4, 5]  # what the buffer still held, in order
    finally:
        await again.close()


async def test_offline_pushes_wait_in_the_inbox_and_come_after_the_login_reply(
    start_server: StartServer, store_config: dict[str, Any]
) -> None:
    server = await start_server(push_app(), authenticator=USERS, **store_config)
    assert server.multicast(["alice", "bob", "carol"], pb.SleepReply(tag=7)) == 0
    server.push("alice", pb.SleepReply(tag=8))
    await server.flush_pushes()
    assert server.store is not None
    bodies = await server.store.scan_prefix("tw:body:")
    assert len(bodies) == 2  # one body for the three-user multicast, one for the push
    # Latest-value pushes are never stored for later.
    server.push("alice", pb.UnorderedSleepRequest(tag=1, ms=1))
    await server.flush_pushes()
    assert len(await server.store.scan_prefix("tw:body:")) == 2

    peer = await RawPeer.connect(server.address)
    try:
        reply, first, second = await raw_login(peer, "alice") + await peer.read_frames(2)
        assert reply.msg_id == 7 and reply.flags == int(Flags.RESPONSE)
        assert [(f.flags, f.seq) for f in (first, second)] == [(PUSH, 1), (PUSH, 2)]
        assert [pb.SleepReply.FromString(f.payload).tag for f in (first, second)] == [7, 8]
    finally:
        await peer.close()
    assert server.inbox is not None and await server.inbox.count("alice") == 0
    assert await server.inbox.count("bob") == 1


async def test_pushes_during_a_logout_reach_the_next_login(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(push_app(), authenticator=USERS)
    client = await clients(server, "alice")
    await client.request(LogoutRequest())
    server.push("alice", pb.SleepReply(tag=42))
    await server.flush_pushes()
    got = collect(client)
    await client.request(LoginRequest(user="alice", password="a"))
    await wait_for(lambda: tags(got) == [42])


async def test_a_replaced_sessions_unacknowledged_pushes_reach_the_new_login(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(push_app(), authenticator=USERS)
    old = await clients(server, "alice")
    got_old = collect(old)
    server.push("alice", pb.SleepReply(tag=1))
    server.push("alice", pb.SleepReply(tag=2))
    await wait_for(lambda: len(got_old) == 2)
    old.notify(PushAck(seq=1))
    await asyncio.sleep(0.05)
    new = await clients(server)
    got_new = collect(new)
    await new.request(LoginRequest(user="alice", password="a"))
    await wait_for(lambda: tags(got_new) == [2])  # 1 was acknowledged; 2 was not


async def test_a_session_that_never_resumes_leaves_its_pushes_in_the_inbox(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(
        push_app(), authenticator=USERS, session_ttl=0.2, sweep_interval=0.05
    )
    client = await clients(server, "alice")
    await client.close()
    await wait_for(lambda: not server.sessions.local_sessions("alice"))
    server.push("alice", pb.SleepReply(tag=9))  # buffered for a Resume that never comes
    await wait_for(lambda: not server.sessions.waiting)
    await server.flush_pushes()
    assert server.inbox is not None and await server.inbox.count("alice") == 1


async def test_rooms_broadcast_to_members_with_exclude_and_members_leave_when_they_end(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(push_app(), authenticator=USERS)
    alice, bob, carol = (
        await clients(server, "alice"),
        await clients(server, "bob"),
        await clients(server, "carol"),
    )
    got = {name: collect(c) for name, c in (("alice", alice), ("bob", bob), ("carol", carol))}
    for client in (alice, bob, carol):
        await client.request(pb.GateRequest(tag=1))
    room = server.room("room1")
    assert room.user_ids() == {"alice", "bob", "carol"} and len(room) == 3
    assert room.broadcast(pb.SleepReply(tag=10), exclude="alice") == 2
    await wait_for(lambda: tags(got["bob"]) == [10] and tags(got["carol"]) == [10])
    await bob.request(LogoutRequest())
    assert room.user_ids() == {"alice", "carol"}
    assert room.broadcast(pb.SleepReply(tag=11)) == 2
    await wait_for(lambda: tags(got["alice"]) == [11] and tags(got["carol"]) == [10, 11])
    assert tags(got["bob"]) == [10]
    assert server.broadcast(pb.SleepReply(tag=12)) == 2  # everyone logged in


async def test_latest_value_pushes_conflate_while_a_client_lags(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(
        push_app(), authenticator=USERS, slow_consumer_bytes=64 << 20, slow_consumer_timeout=60
    )
    client = await clients(server, "alice")
    got = collect(client)
    [session] = server.sessions.local_sessions("alice")
    conn = session.conn
    assert conn is not None and client._transport is not None
    client._transport.pause_reading()
    # Fill the socket buffers with reliable pushes until the server's writes pause.
    filler = pb.BigReply(data=b"x" * 65536)
    while not conn.write_paused:
        server.push("alice", filler)
        await asyncio.sleep(0)
    for ms in range(1, 101):
        server.push("alice", pb.UnorderedSleepRequest(tag=1, ms=ms))
        server.push("alice", pb.UnorderedSleepRequest(tag=2, ms=1000 + ms))
    assert server.pusher.conflated == 198  # two keys, one value each kept
    client._transport.resume_reading()
    latest = lambda: [p.message for p in got if isinstance(p.message, pb.UnorderedSleepRequest)]  # noqa: E731
    await wait_for(lambda: len(latest()) == 2, timeout=20)
    assert sorted((m.tag, m.ms) for m in latest()) == [(1, 100), (2, 1100)]
    assert all(p.seq == 0 for p in got if isinstance(p.message, pb.UnorderedSleepRequest))


async def test_a_member_that_stops_reading_is_cut_off_while_others_keep_receiving(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(
        push_app(), authenticator=USERS, slow_consumer_bytes=1 << 20, slow_consumer_timeout=60
    )
    stalled, reader = await clients(server, "alice"), await clients(server, "bob")
    got = collect(reader)
    for client in (stalled, reader):
        await client.request(pb.GateRequest(tag=2))
    assert stalled._transport is not None
    [session] = server.sessions.local_sessions("alice")
    conn = session.conn
    assert conn is not None
    stalled._transport.pause_reading()
    room = server.room("room2")
    body = pb.BigReply(data=b"y" * 16384)
    sent = 0
    while not conn.closing and sent < 2000:
        room.broadcast(body)
        sent += 1
        await asyncio.sleep(0)
    stalled._transport.resume_reading()
    closed = await asyncio.wait_for(stalled.wait_closed(), 10)
    assert isinstance(closed.error, SlowConsumer)
    assert sent < 2000  # cut off long before the sender gave up
    await wait_for(lambda: len(got) == sent, timeout=20)
    assert [p.seq for p in got] == list(range(1, sent + 1))


async def test_pushing_an_unregistered_type_is_refused(start_server: StartServer) -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    server = await start_server(push_app(), authenticator=USERS)
    with pytest.raises(ValueError, match="no message ID"):
        server.push("alice", Timestamp(seconds=1))


async def test_an_inbox_longer_than_the_push_buffer_is_delivered_whole(
    start_server: StartServer, clients: Connect
) -> None:
    server = await start_server(push_app(), authenticator=USERS, push_buffer=2)
    for tag in range(1, 6):
        server.push("alice", pb.SleepReply(tag=tag))
    await server.flush_pushes()
    client = await clients(server)
    got = collect(client)
    await client.request(LoginRequest(user="alice", password="a"))
    await wait_for(lambda: tags(got) == [1, 2, 3, 4, 5])
    assert [p.seq for p in got] == [1, 2, 3, 4, 5]


def tag_of(payload: bytes) -> int:
    return pb.SleepReply.FromString(payload).tag


async def test_offline_pushes_come_before_pushes_made_during_the_login(
    start_server: StartServer, store_config: dict[str, Any]
) -> None:
    server = await start_server(push_app(), authenticator=USERS, **store_config)
    for tag in (1, 2, 3):
        server.push("alice", pb.SleepReply(tag=tag))
    await server.flush_pushes()
    stop = asyncio.Event()

    async def feed() -> None:
        # A steady feed, not a flood: a flood outruns push_buffer while the login's
        # store writes are awaited, and the buffer keeps only its newest pushes.
        tag = 100
        while not stop.is_set():
            server.push("alice", pb.SleepReply(tag=tag))
            tag += 1
            await asyncio.sleep(0.001)

    feeder = asyncio.ensure_future(feed())
    await asyncio.sleep(0.01)
    peer = await RawPeer.connect(server.address)
    try:
        [reply] = await raw_login(peer, "alice")
        frames = await peer.read_frames(20)
    finally:
        stop.set()
        await feeder
        await peer.close()
    assert reply.msg_id == 7
    assert [f.seq for f in frames] == list(range(1, 21))
    tags = [tag_of(f.payload) for f in frames]
    assert tags[:3] == [1, 2, 3] and tags[3:] == sorted(tags[3:]) and tags[3] >= 100


async def test_offline_pushes_keep_their_order_on_redis(
    start_server: StartServer, redis_url: str
) -> None:
    server = await start_server(push_app(), authenticator=USERS, store="redis", redis_url=redis_url)
    for tag in range(1, 201):
        server.push("alice", pb.SleepReply(tag=tag))
    await server.flush_pushes()
    peer = await RawPeer.connect(server.address)
    try:
        await raw_login(peer, "alice")
        frames = await peer.read_frames(200)
    finally:
        await peer.close()
    assert [tag_of(f.payload) for f in frames] == list(range(1, 201))


async def test_a_bad_offline_item_does_not_stall_the_inbox_writer(
    start_server: StartServer,
) -> None:
    server = await start_server(push_app(), authenticator=USERS)
    with pytest.raises(TypeError, match="user ids are str"):
        server.push(42, pb.SleepReply(tag=1))  # type: ignore[arg-type]
    assert server.pusher.offline_queue is not None
    server.pusher.offline_queue.put([42], 1001, b"")  # type: ignore[list-item]  # what the check keeps out
    server.push("alice", pb.SleepReply(tag=2))
    await server.flush_pushes()
    assert server.pusher.offline_queue.lost == 1 and len(server.pusher.offline_queue) == 0
    peer = await RawPeer.connect(server.address)
    try:
        await raw_login(peer, "alice")
        [push] = await peer.read_frames(1)
        assert tag_of(push.payload) == 2
    finally:
        await peer.close()


async def test_an_unreadable_inbox_does_not_fail_the_login(start_server: StartServer) -> None:
    server = await start_server(push_app(), authenticator=USERS)
    assert server.store is not None
    await server.store.set("tw:inbox:u:alice", b"not a hash")  # take() fails on it
    client = await AsyncClient.connect(*server.address, registry=app_registry())
    reply = await client.request(LoginRequest(user="alice", password="a"))
    assert isinstance(reply, LoginReply)
    assert isinstance(await client.request(pb.NoteRequest(text="x")), pb.SleepReply)
    assert [s.session_id for s in server.sessions.local_sessions("alice")] == [reply.session_id]
    await client.close()


async def test_a_push_of_a_request_pipelined_behind_the_login_precedes_its_reply(
    start_server: StartServer,
) -> None:
    server = await start_server(push_app(), authenticator=USERS)
    peer = await RawPeer.connect(server.address)
    try:
        login = LoginRequest(user="alice", password="a").SerializeToString()
        peer.send(
            encode_frame(6, 0, 1, login)
            + encode_frame(1007, 0, 2, pb.NoteRequest(text="abc").SerializeToString())
        )
        frames = await peer.read_frames(3)
        assert [(f.msg_id, f.flags, f.seq) for f in frames] == [
            (7, 1, 1),  # LoginReply
            (1001, 4, 1),  # the note's push, seq 1 of the new session
            (1001, 1, 2),  # the note's reply
        ]
    finally:
        await peer.close()


async def test_pushes_during_a_resume_are_neither_lost_nor_left_in_the_inbox(
    start_server: StartServer, store_config: dict[str, Any]
) -> None:
    server = await start_server(push_app(), authenticator=USERS, **store_config)
    peer = await RawPeer.connect(server.address)
    [reply] = await raw_login(peer, "alice")
    token = LoginReply.FromString(reply.payload).token
    await peer.close()
    await wait_for(lambda: not server.sessions.local_sessions("alice"))
    stop = asyncio.Event()
    pushed = 0

    async def feed() -> None:
        nonlocal pushed
        while not stop.is_set():
            pushed += 1
            server.push("alice", pb.SleepReply(tag=pushed))
            await asyncio.sleep(0)

    feeder = asyncio.ensure_future(feed())
    again = await RawPeer.connect(server.address)
    try:
        again.send_frame(13, 0, 1, ResumeRequest(token=token).SerializeToString())
        [resumed] = await again.read_frames(1)
        assert resumed.msg_id == 14 and not ResumeReply.FromString(resumed.payload).push_gap
        await asyncio.sleep(0.05)
        stop.set()
        await feeder
        frames = await again.read_frames(pushed)
    finally:
        stop.set()
        await again.close()
    assert [tag_of(f.payload) for f in frames] == list(range(1, pushed + 1))
    assert server.inbox is not None and await server.inbox.count("alice") == 0


async def test_a_huge_last_push_seq_cannot_break_pushes(redis_url: str) -> None:
    config = ServerConfig(host="127.0.0.1", port=0, store="redis", redis_url=redis_url)
    a, b = (Server(push_app(), config=config, authenticator=USERS) for _ in range(2))
    await a.start()
    await b.start()
    try:
        peer = await RawPeer.connect(a.address)
        [reply] = await raw_login(peer, "alice")
        token = LoginReply.FromString(reply.payload).token
        await peer.close()
        await wait_for(lambda: not a.sessions.local_sessions("alice"))
        await a.sessions.flush()
        other = await RawPeer.connect(b.address)
        other.send_frame(
            13, 0, 1, ResumeRequest(token=token, last_push_seq=2**64 - 1).SerializeToString()
        )
        [resumed] = await other.read_frames(1)
        assert resumed.msg_id == 14
        assert b.broadcast(pb.SleepReply(tag=1)) == 1  # no struct.error in the fan-out
        [push] = await other.read_frames(1)
        assert push.seq <= b.config.push_buffer + 1
        await other.close()
    finally:
        await a.stop(timeout=1)
        await b.stop(timeout=1)


async def test_a_resume_after_a_restart_replays_with_the_original_sequence_once(
    redis_url: str,
) -> None:
    config = ServerConfig(host="127.0.0.1", port=0, store="redis", redis_url=redis_url)
    first = Server(push_app(), config=config, authenticator=USERS)
    await first.start()
    peer = await RawPeer.connect(first.address)
    [reply] = await raw_login(peer, "alice")
    token = LoginReply.FromString(reply.payload).token
    first.push("alice", pb.SleepReply(tag=1))
    first.push("alice", pb.SleepReply(tag=2))
    await peer.read_frames(2)  # seen, not acknowledged
    await first.stop(timeout=1)
    await peer.close()

    second = Server(push_app(), config=config, authenticator=USERS)
    await second.start()
    again = await RawPeer.connect(second.address)
    try:
        again.send_frame(13, 0, 1, ResumeRequest(token=token, last_push_seq=1).SerializeToString())
        resumed, replayed = await again.read_frames(2)
        assert not ResumeReply.FromString(resumed.payload).push_gap
        assert (replayed.seq, tag_of(replayed.payload)) == (2, 2)  # its own seq, not a new one
        second.push("alice", pb.SleepReply(tag=3))
        [new] = await again.read_frames(1)
        assert (new.seq, tag_of(new.payload)) == (3, 3)  # push 2 was not delivered twice
        assert second.inbox is not None and await second.inbox.count("alice") == 0
    finally:
        await again.close()
        await second.stop(timeout=1)


async def test_a_handover_carries_unacknowledged_pushes_to_the_successor(tmp_path: Path) -> None:
    config = ServerConfig(
        host="127.0.0.1", port=0, store_snapshot_path=str(tmp_path / "store.snap")
    )
    old = Server(push_app(), config=config, authenticator=USERS)
    await old.start()
    peer = await RawPeer.connect(old.address)
    [reply] = await raw_login(peer, "alice")
    token = LoginReply.FromString(reply.payload).token
    for tag in (1, 2, 3):
        old.push("alice", pb.SleepReply(tag=tag))
    await peer.read_frames(3)  # seen, never acknowledged
    await peer.close()
    await wait_for(lambda: bool(old.sessions.waiting))
    await old.before_handover()
    new = Server(push_app(), config=config, authenticator=USERS)
    await new.start()
    old.after_handover()
    await old.stop(timeout=1)
    again = await RawPeer.connect(new.address)
    try:
        again.send_frame(13, 0, 1, ResumeRequest(token=token).SerializeToString())
        resumed, *replayed = await again.read_frames(4)
        assert not ResumeReply.FromString(resumed.payload).push_gap
        assert [(f.seq, tag_of(f.payload)) for f in replayed] == [(1, 1), (2, 2), (3, 3)]
    finally:
        await again.close()
        await new.stop(timeout=1)


async def test_room_handles_share_members_and_empty_rooms_cost_nothing(
    start_server: StartServer,
) -> None:
    server = await start_server(push_app(), authenticator=USERS)
    assert server.room("nobody").broadcast(pb.SleepReply(tag=1)) == 0
    assert "nobody" not in server.room("other") and len(server.room("nobody")) == 0
    assert server.pusher.room_members == {}  # no room was made by those calls
    client = await AsyncClient.connect(*server.address)
    await client.request(LoginRequest(user="alice", password="a"))
    [session] = server.sessions.local_sessions("alice")
    lobby = server.room("lobby")  # a handle kept across leave and join
    lobby.join(session)
    lobby.leave(session)
    lobby.join(session)
    assert session in server.room("lobby")
    await client.request(LogoutRequest())
    assert session not in lobby and server.pusher.room_members == {}
    assert lobby.broadcast(pb.SleepReply(tag=2)) == 0
    await client.close()
