"""Rooms are bounded: a session may be in max_rooms_per_session rooms at most, and a
session that ends in many rooms leaves them a chunk per loop iteration."""

from __future__ import annotations

import asyncio

import pytest

from client_sdk import AsyncClient, Overloaded
from examples.chat import chat_pb2
from examples.chat.chat_pb2 import JoinReply, JoinRequest, LeaveRequest
from examples.chat.service import make_app
from protocol.errors import ErrorCode
from protocol.registry import MessageRegistry, system_registry
from server.auth import MemoryUsers
from server.push import RoomLimit
from server.server import ROOMS_PER_ITERATION
from server.sessions import EndReason
from tests.conftest import StartServer, wait_for

USERS = MemoryUsers({"alice": "a", "bob": "b"})


def chat_registry() -> MessageRegistry:
    return system_registry([chat_pb2])


async def test_a_join_past_the_cap_is_refused_with_overloaded(start_server: StartServer) -> None:
    server = await start_server(make_app(), authenticator=USERS, max_rooms_per_session=2)
    async with await AsyncClient.connect(*server.address, registry=chat_registry()) as client:
        await client.login("alice", "a")
        for name in ("one", "two"):
            assert isinstance(await client.request(JoinRequest(room=name)), JoinReply)
        with pytest.raises(Overloaded) as refused:
            await client.request(JoinRequest(room="three"))
        assert refused.value.code == ErrorCode.OVERLOADED
        assert "2 rooms" in refused.value.message and "leave one" in refused.value.message
        assert "three" not in server.pusher.room_members
        # Joining a room it is in already is no new room; leaving one makes room.
        assert isinstance(await client.request(JoinRequest(room="one")), JoinReply)
        await client.request(LeaveRequest(room="two"))
        assert isinstance(await client.request(JoinRequest(room="three")), JoinReply)
        [session] = server.sessions.local_sessions("alice")
        assert session.rooms == {"one", "three"}


async def test_room_join_raises_room_limit_for_server_code(start_server: StartServer) -> None:
    server = await start_server(make_app(), authenticator=USERS, max_rooms_per_session=1)
    async with await AsyncClient.connect(*server.address, registry=chat_registry()) as client:
        await client.login("alice", "a")
        [session] = server.sessions.local_sessions("alice")
        assert server.room("a").join(session)
        with pytest.raises(RoomLimit) as refused:
            server.room("b").join(session)
        assert refused.value.limit == 1


async def test_a_session_in_many_rooms_leaves_them_a_chunk_per_iteration(
    start_server: StartServer,
) -> None:
    rooms = 5 * ROOMS_PER_ITERATION + 3
    server = await start_server(make_app(), authenticator=USERS, max_rooms_per_session=rooms)
    async with (
        await AsyncClient.connect(*server.address, registry=chat_registry()) as alice,
        await AsyncClient.connect(*server.address, registry=chat_registry()) as bob,
    ):
        await alice.login("alice", "a")
        await bob.login("bob", "b")
        [session] = server.sessions.local_sessions("alice")
        [other] = server.sessions.local_sessions("bob")
        names = [f"r{i}" for i in range(rooms)]
        for name in names:
            server.room(name).join(session)
        server.room(names[0]).join(other)
        left: list[str] = []
        server._room_left.append(lambda _server, name, _session: left.append(name))

        server._session_ended(session, EndReason.LOGOUT)
        # This iteration did one chunk, hooks included; the rest follow, one per turn.
        assert len(left) == ROOMS_PER_ITERATION
        still = sum(1 for name in names if name in server.pusher.room_members)
        assert still == rooms - ROOMS_PER_ITERATION + (names[0] in left)  # bob keeps r0
        await asyncio.sleep(0)
        assert len(left) == 2 * ROOMS_PER_ITERATION
        await wait_for(lambda: len(left) == rooms)
        assert sorted(left) == sorted(names)
        assert list(server.pusher.room_members) == [names[0]]  # bob stays in r0
        assert not session.rooms
