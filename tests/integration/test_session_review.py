"""Defects a review of sessions and push reproduced, each pinned by a test: push order
around Login/Resume, offline order on Redis, pushes across a restart, stale Refresh and
Logout, saves after the end, the user index TTL, half-done logins, room handles, the
auth timeout, peer text in log lines."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from client_sdk import AsyncClient, InternalError, Unauthenticated
from protocol.errors import ErrorCode
from protocol.frame import encode_frame
from protocol.proto.system_pb2 import (
    LoginReply,
    LoginRequest,
    LogoutRequest,
    RefreshTokenRequest,
    ResumeReply,
    ResumeRequest,
)
from server import Server, ServerConfig
from server.errors import HandlerError
from server.logs import JsonFormatter, TextFormatter
from tests.conftest import StartServer, wait_for
from tests.integration.rawclient import RawPeer
from tests.integration.test_push import PASSWORDS, USERS, push_app, raw_login
from tests.integration.testapp import app_registry
from tests.proto import testapp_pb2 as pb


def tag_of(payload: bytes) -> int:
    return pb.SleepReply.FromString(payload).tag


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


async def test_refresh_and_logout_from_a_connection_the_session_left_are_refused(
    start_server: StartServer,
) -> None:
    server = await start_server(authenticator=USERS)
    old = await AsyncClient.connect(*server.address)
    reply = await old.request(LoginRequest(user="alice", password="a"))
    assert isinstance(reply, LoginReply)
    [session] = server.sessions.local_sessions("alice")
    old_conn = session.conn
    assert old_conn is not None
    new = await AsyncClient.connect(*server.address)
    await new.request(ResumeRequest(token=reply.token))
    for stale in (
        server.sessions.refresh(session, old_conn),
        server.sessions.logout(session, old_conn),
    ):
        with pytest.raises(HandlerError) as caught:
            await stale
        assert caught.value.code == ErrorCode.UNAUTHENTICATED
    assert await server.sessions.user_of_token(reply.token) == "alice"  # not rotated away
    assert server.sessions.local_sessions("alice") == [session]  # not logged out
    await new.close()
    await old.close()


async def test_saving_an_ended_session_writes_nothing(start_server: StartServer) -> None:
    server = await start_server(authenticator=USERS)
    client = await AsyncClient.connect(*server.address)
    reply = await client.request(LoginRequest(user="alice", password="a"))
    assert isinstance(reply, LoginReply)
    [session] = server.sessions.local_sessions("alice")
    await client.request(LogoutRequest())
    session.data["late"] = 1
    await session.save()
    assert server.store is not None
    assert not await server.store.exists(f"tw:session:{reply.session_id}")
    await client.close()


async def test_the_user_index_outlives_a_session_kept_alive_by_refresh(
    start_server: StartServer,
) -> None:
    server = await start_server(authenticator=USERS, token_ttl=0.6, session_ttl=0.3)
    client = await AsyncClient.connect(*server.address)
    await client.request(LoginRequest(user="alice", password="a"))
    for _ in range(8):  # 1.6 s: past the login's token_ttl + session_ttl
        await asyncio.sleep(0.2)
        await client.request(RefreshTokenRequest())
    assert len(await server.sessions.sessions_of("alice")) == 1
    assert await server.sessions.remove_user("alice") == 1
    await client.close()


async def test_a_login_that_fails_half_way_leaves_no_session(start_server: StartServer) -> None:
    server = await start_server(authenticator=USERS)
    assert server.store is not None
    # The user index holds a string: the login's sadd fails after the token and the
    # session record were written.
    await server.store.set("tw:user:alice", b"not a set")
    client = await AsyncClient.connect(*server.address)
    with pytest.raises(InternalError):
        await client.request(LoginRequest(user="alice", password="a"))
    await server.sessions.flush()
    assert server.sessions.live == {} and server.sessions.waiting == {}
    assert sorted(await server.store.scan_prefix("tw:")) == ["tw:user:alice"]
    await client.close()


async def test_room_handles_share_members_and_empty_rooms_cost_nothing(
    start_server: StartServer,
) -> None:
    server = await start_server(push_app(), authenticator=USERS)
    assert server.room("nobody").broadcast(pb.SleepReply(tag=1)) == 0
    assert "nobody" not in server.room("other") and len(server.room("nobody")) == 0
    assert server.pushes.room_members == {}  # no room was made by those calls
    client = await AsyncClient.connect(*server.address)
    await client.request(LoginRequest(user="alice", password="a"))
    [session] = server.sessions.local_sessions("alice")
    lobby = server.room("lobby")  # a handle kept across leave and join
    lobby.join(session)
    lobby.leave(session)
    lobby.join(session)
    assert session in server.room("lobby")
    await client.request(LogoutRequest())
    assert session not in lobby and server.pushes.room_members == {}
    assert lobby.broadcast(pb.SleepReply(tag=2)) == 0
    await client.close()


async def test_unknown_messages_do_not_stop_the_auth_timeout(start_server: StartServer) -> None:
    server = await start_server(authenticator=USERS, auth_timeout=0.3, sweep_interval=0.05)
    peer = await RawPeer.connect(server.address)
    try:
        peer.send_frame(999, 0, 1)  # unknown ID: answered, but no handler ran
        peer.send_frame(10, 0, 2, b"\xff\xff")  # undecodable Echo: same
        frames = await peer.read_until_closed()
        assert frames[-1].msg_id == 3
        from protocol.proto.system_pb2 import Error

        assert Error.FromString(frames[-1].payload).code == ErrorCode.AUTH_TIMEOUT
    finally:
        await peer.close()


def test_peer_text_cannot_forge_or_flood_log_lines() -> None:
    forged = "mallory\n2026-01-01T00:00:00.000Z INFO tickwire.sessions: login user=admin"
    record = logging.makeLogRecord(
        {"name": "tickwire.sessions", "msg": "login refused", "levelname": "INFO", "levelno": 20}
    )
    record.user = forged
    record.blob = "x" * 1_000_000
    text = TextFormatter().format(record)
    assert "\n" not in text and "user='mallory\\n2026" in text
    assert len(text) < 1000
    assert len(JsonFormatter().format(record)) < 1000


async def test_a_login_by_request_and_a_resume_with_no_token_are_distinct_errors(
    start_server: StartServer,
) -> None:
    server = await start_server(authenticator=USERS)
    client = await AsyncClient.connect(*server.address)
    with pytest.raises(Unauthenticated, match="token unknown"):
        await client.request(ResumeRequest(token=""))
    with pytest.raises(Unauthenticated, match="wrong user name"):
        await client.request(LoginRequest(user="alice", password=PASSWORDS["bob"]))
    await client.close()


async def test_a_bad_offline_item_does_not_stall_the_inbox_writer(
    start_server: StartServer,
) -> None:
    server = await start_server(push_app(), authenticator=USERS)
    with pytest.raises(TypeError, match="user ids are str"):
        server.push(42, pb.SleepReply(tag=1))  # type: ignore[arg-type]
    assert server.offline is not None
    server.offline.put([42], 1001, b"")  # type: ignore[list-item]  # what the check keeps out
    server.push("alice", pb.SleepReply(tag=2))
    await server.flush_pushes()
    assert server.offline.lost == 1 and len(server.offline) == 0
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


async def test_saving_a_waiting_session_keeps_its_session_ttl(start_server: StartServer) -> None:
    server = await start_server(authenticator=USERS, session_ttl=1, token_ttl=60)
    client = await AsyncClient.connect(*server.address)
    reply = await client.request(LoginRequest(user="alice", password="a"))
    assert isinstance(reply, LoginReply)
    [session] = server.sessions.local_sessions("alice")
    await client.close()
    await wait_for(lambda: bool(server.sessions.waiting))
    await server.sessions.flush()
    await session.save()
    assert server.store is not None
    left = await server.store.ttl(f"tw:session:{reply.session_id}")
    assert left is not None and left <= 1


async def test_a_handover_carries_unacknowledged_pushes_to_the_successor(tmp_path: Any) -> None:
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


async def test_server_code_can_log_out_a_waiting_session(start_server: StartServer) -> None:
    server = await start_server(authenticator=USERS)
    client = await AsyncClient.connect(*server.address)
    reply = await client.request(LoginRequest(user="alice", password="a"))
    assert isinstance(reply, LoginReply)
    [session] = server.sessions.local_sessions("alice")
    await client.close()
    await wait_for(lambda: bool(server.sessions.waiting))
    await server.sessions.logout(session)
    assert await server.sessions.user_of_token(reply.token) is None
    assert server.sessions.waiting == {}


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
