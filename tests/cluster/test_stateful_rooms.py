"""An authoritative room in a cluster (server/stateful_rooms.py with `room_of`): it runs
on its key's owner node, and a player connected to another node plays in it, its
messages forwarded to the owner and the room's pushes reaching it."""

from __future__ import annotations

from typing import Any

from client_sdk import AsyncClient
from examples.game import game_pb2 as pb
from examples.game.service import make_app
from protocol.registry import system_registry
from server.auth import MemoryUsers
from tests.conftest import StartNode, wait_for

USERS = MemoryUsers({"alice": "a", "bob": "b"})


async def test_a_player_on_another_node_plays_in_the_owners_room(
    start_node: StartNode,
) -> None:
    a = await start_node(make_app(), node_id="a", authenticator=USERS)
    b = await start_node(make_app(), node_id="b", authenticator=USERS)
    await wait_for(
        lambda: all(n.cluster is not None and n.cluster.live == ["a", "b"] for n in (a, b))
    )
    assert a.cluster is not None
    room_id = next(f"m{i}" for i in range(100) if a.cluster.owner(f"room:m{i}") == "a")
    room = await a.stateful_rooms.create("match", room_id, {"seed": 1, "players": ["alice", "bob"]})
    clients: list[AsyncClient] = []
    try:
        states: dict[str, list[Any]] = {"alice": [], "bob": []}
        for user, node in (("alice", a), ("bob", b)):
            client = await AsyncClient.connect(*node.address, registry=system_registry([pb]))
            await client.login(user, USERS.users[user])
            client.on_push(pb.MatchState, lambda push, u=user: states[u].append(push.message))
            clients.append(client)
        for user in ("alice", "bob"):
            await a.stateful_rooms.join(room_id, user)
        bob = clients[1]
        bob.notify(pb.Input(match_id=room_id, seq=1, dx=1, dy=0))
        await wait_for(
            lambda: any(
                p.user == "bob" and p.input_seq == 1 for s in states["bob"] for p in s.players
            )
        )
        reply = await bob.request(pb.ChatRequest(match_id=room_id, text="hi"))
        assert isinstance(reply, pb.ChatReply)
        assert b.owned.forwarded >= 2  # the input and the chat went to node a
        assert b.stateful_rooms.get(room_id) is None  # the room lives on its owner only
        assert room.seats["bob"].connected
    finally:
        for client in clients:
            await client.close()
